#!/usr/bin/python3
"""signetd restarts lose no connection, with the identity handshake in enforce
mode (issue #15, "Rolling the handshake out"; docs/upgrade-uninstall.md).

Two nodes (test/integration/twonode.py), one signetd each, `--handshake
enforce`: pods a and c on node-a, b on node-b; policies admit a to b (across
the wire) and a to c (on one node). Clients in a connect in a loop to b and
to c, each connection: connect() with a 3 s timeout (which covers the
kernel's SYN retransmissions at 1 s and 3 s), 64 bytes out, their echo back
(3 s), close. A long-lived connection a -> b echoes every 50 ms throughout.
Meanwhile each node's signetd is restarted three ways, one after the other:

    stop-start   SIGTERM, its exit waited for, start (systemctl restart, an
                 upgrade's pod replacement); twice
    kill-9       SIGKILL, start (a crash)

Checks: no connect and no echo failed in any loop (a connection caught
mid-handshake by the restart included), the long-lived connection never
missed an echo, and both signetd counted no lost handshake segment. Prints
per restart the window in which new SYNs waited (from the stop to the first
connection that completed after it) and the slowest connect around it.
"""
import json
import subprocess
import sys
import threading
import time

import harness
import twonode

NODE_A, NODE_B = twonode.NODE_A, twonode.NODE_B

# In the client's netns: connect in a loop until stdin closes; one JSON line
# per connection: {"t": start, "ms": total, "ok": bool, "err": "..."}.
LOOP = r"""
import json, os, select, socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
payload = os.urandom(64)
print("ready", flush=True)
while True:
    r, _, _ = select.select([sys.stdin], [], [], 0)
    if r and not sys.stdin.readline():
        break
    t0 = time.time()
    rec = {"t": t0}
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(3.0)
        s.connect((host, port))
        rec["connect_ms"] = (time.time() - t0) * 1000
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            b = s.recv(4096)
            if not b:
                raise ConnectionError(f"closed after {len(got)} bytes")
            got += b
        if got != payload:
            raise ValueError("echo differs")
        rec["ok"] = True
    except Exception as e:
        rec["ok"] = False
        rec["err"] = repr(e)
    finally:
        s.close()
    rec["ms"] = (time.time() - t0) * 1000
    print(json.dumps(rec), flush=True)
    time.sleep(0.001)  # a busy client, not a flood that starves both cores
"""

# In the client's netns: one connection, an echo every 50 ms until stdin
# closes; one JSON line per echo.
HOLD = r"""
import json, select, socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.settimeout(3.0)
print("ready", flush=True)
n = 0
while True:
    r, _, _ = select.select([sys.stdin], [], [], 0.05)
    if r and not sys.stdin.readline():
        break
    n += 1
    msg = f"ping {n}\n".encode()
    t0 = time.time()
    try:
        s.sendall(msg)
        got = b""
        while not got.endswith(b"\n"):
            b = s.recv(4096)
            if not b:
                raise ConnectionError("closed")
            got += b
        print(json.dumps({"t": t0, "ok": got == msg, "ms": (time.time() - t0) * 1000}), flush=True)
    except Exception as e:
        print(json.dumps({"t": t0, "ok": False, "err": repr(e)}), flush=True)
        break
"""


class Loop:
    def __init__(self, run, netns: str, program: str, host: str, port: int, what: str):
        self.what = what
        self.p = subprocess.Popen(["ip", "netns", "exec", netns, "/usr/bin/python3", "-c", program, host, str(port)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  start_new_session=True)
        run.own_process(self.p, what)
        first = self.p.stdout.readline().strip()
        if first != "ready":
            raise harness.Fatal(f"{what}: {first!r} {self.p.stderr.read()[-500:]}")
        self.recs: list[dict] = []
        # Read as it comes: a full pipe would stall the loop itself.
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.p.stdout:
            try:
                self.recs.append(json.loads(line))
            except json.JSONDecodeError:
                pass

    def finish(self) -> list[dict]:
        self.p.stdin.close()
        self.p.wait(30)
        self.reader.join(10)
        if not self.recs:
            self.recs.append({"t": 0, "ok": False, "err": f"no output: {self.p.stderr.read()[-500:]}"})
        return self.recs


def body(t: harness.Test, run: harness.Run):
    harness.require_root_and_tools("ip", "nft", "conntrack")
    bins = harness.require_signet_binaries(t)
    if not twonode.signetd_knows_handshake(bins):
        t.check("signetd accepts --handshake enforce", False, "signetd --help lists no --handshake flag")
        raise harness.Fatal("no handshake engine in signetd")
    tn = twonode.TwoNodes(t, run, bins, ipv6=False)
    tn.start("enforce")
    tn.add_policy("to-b", "b", ["a"])
    tn.add_policy("to-c", "c", ["a"])
    tn.add_pods([("a", NODE_A), ("c", NODE_A), ("b", NODE_B)])
    P = tn.pods
    tn.serve("b")
    tn.serve("c")
    t.require("a -> b through the handshake before the restarts", tn.connect("a", "b") == "ok")
    t.require("a -> c through the handshake before the restarts", tn.connect("a", "c") == "ok")

    hold = Loop(run, P["a"].netns, HOLD, P["b"].ip4, twonode.PORT, "long-lived a -> b")
    loops = [Loop(run, P["a"].netns, LOOP, P[to].ip4, twonode.PORT, f"loop a -> {to}") for to in ("b", "c", "b")]
    time.sleep(1.0)
    restarts = []  # (node, kind, t_stop, t_ready)
    for node in (NODE_A, NODE_B):
        d = tn.nodes[node].d
        for kind in ("stop-start", "stop-start again", "kill-9"):
            t_stop = time.time()
            if kind == "kill-9":
                d.proc.kill()
                d.proc.wait()
                run.disown_process(d.proc)
                d.proc = None
            else:
                d.stop()  # SIGTERM, and its exit waited for, as a service manager's stop does
            d.start()
            restarts.append((node, kind, t_stop, time.time()))
            time.sleep(2.0)
    time.sleep(1.0)
    held = hold.finish()
    results = {l.what + f" #{i}": l.finish() for i, l in enumerate(loops)}

    total = sum(len(r) for r in results.values())
    failed = [(w, r) for w, recs in results.items() for r in recs if not r.get("ok")]
    for w, r in failed[:20]:
        t.note(f"FAILED {w} at +{r['t'] - restarts[0][2]:.3f}s: {r.get('err')} ({r.get('ms', 0):.0f} ms)")
    for node, kind, t_stop, t_ready in restarts:
        # Connections whose SYN went out while signetd was down wait for the
        # kernel's SYN retransmission (1 s); the slowest of them is the window.
        during = [r.get("connect_ms", r["ms"]) for recs in results.values() for r in recs
                  if t_stop <= r["t"] <= t_ready]
        around = [r.get("connect_ms", r["ms"]) for recs in results.values() for r in recs
                  if t_stop - 3 <= r["t"] <= t_ready + 2]
        t.note(f"{node} {kind}: signetd down {1000 * (t_ready - t_stop):.0f} ms (stop to ready); "
               f"{len(during)} connects started meanwhile, the slowest took {max(during, default=0):.0f} ms; "
               f"slowest connect from 3 s before to 2 s after: {max(around, default=0):.0f} ms")
    def phase(ts):  # which restart a connection started after
        return next((f"{n} {k} +{ts - t0:.2f}s" for n, k, t0, _ in reversed(restarts) if ts >= t0), "before")
    t.check(f"no connection failed across {len(restarts)} restarts ({total} connections: connect, echo, close)",
            not failed and total > 0,
            f"{len(failed)} failed: " + "; ".join(f"{w} ({phase(r['t'])}): {r.get('err')} after {r.get('ms', 0):.0f} ms"
                                                   for w, r in failed[:6]))
    held_bad = [r for r in held if not r.get("ok")]
    t.check(f"the long-lived connection echoed throughout ({len(held)} echoes)", not held_bad and len(held) > 20,
            json.dumps(held_bad[:3]))
    recovered = {}
    for node in (NODE_A, NODE_B):
        h = twonode.handshake_of(tn.status(node))
        drops, c = h.get("drops", {}), h.get("counters", {})
        recovered[node] = (c.get("recovered_server", 0), c.get("recovered_client", 0))
        t.note(f"{node} (since its last start): recovered as server {recovered[node][0]}, as client "
               f"{recovered[node][1]}; refused {json.dumps(h.get('refused'))}; drops {json.dumps(drops)}")
        # Segments a server held while a client caught by its own restart recovered (its
        # bare ACK or data, before the proof the recovery brings) are the only loss allowed:
        # TCP sent them again.
        t.check(f"{node}: no handshake segment lost since its last start (but segments held for a proof "
                "while a connection caught by a restart recovered)",
                drops.get("lost", 0) - drops.get("held_for_proof", 0) == 0, json.dumps(drops))


if __name__ == "__main__":
    harness.main("restart", body)
