#!/usr/bin/python3
"""Enforcement end to end, beyond the conformance matrix: signetctl explain and
policies, denied-attempt counters, an established connection cut within a
second when a policy change stops allowing it, and a signetd restart that
keeps an allowed established connection alive.

Real parts: netns pods through bridge + host-local + signet, signetd with a
manifest folder, nftables and conntrack in the pods' netns."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

SERVER = r"""
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(64)
print("ready", flush=True)
def serve(c):
    while True:
        d = c.recv(4096)
        if not d: break
        c.sendall(d)
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# One long-lived connection; each input line sends a byte and reports the echo.
CLIENT = r"""
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
    print("connected", flush=True)
except OSError as e:
    print("connect-failed", e, flush=True); sys.exit(0)
for line in sys.stdin:
    try:
        s.settimeout(1.0); s.sendall(b"x"); d = s.recv(16)
        print("ok" if d else "closed", flush=True)
    except OSError as e:
        print("fail", type(e).__name__, flush=True)
"""


def policy(name, ns, target, from_app, port):
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"podSelector": {"matchLabels": {"app": target}}, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": from_app}}}],
                                  "ports": [{"protocol": "TCP", "port": port}]}]}}


def body(t: harness.Test, run: harness.Run):
    harness.require_root_and_tools("ip", "nft")
    bins = harness.require_signet_binaries(t)
    d = harness.Signetd(run, bins, node="enforce-node").start()
    mdir = d.manifest_dir
    objs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"team": "retail"}}}]
    for app in ("web", "api", "db"):
        objs.append({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": app, "namespace": "shop", "labels": {"app": app}},
                     "spec": {"containers": [{"name": "c", "image": "x",
                                              "ports": [{"name": "http", "containerPort": 8080}]}]}})
    (mdir / "objects.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))
    t.require("sync after writing the objects", d.sync().returncode == 0)

    net = harness.Network(run, version="1.0.0", signet_socket=d.socket)
    chain = net.chain(["/usr/lib/cni", str(bins["signet"].parent)])
    pods = harness.add_pods(run, chain, "shop", ("web", "api", "db"))
    t.note("pods: " + ", ".join(f"{a}={p['ip']}" for a, p in pods.items()))

    srv = subprocess.Popen(["ip", "netns", "exec", pods["api"]["netns"], "/usr/bin/python3", "-c", SERVER, "8080"],
                           stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    run.own_process(srv, "echo server in api")
    t.require("echo server ready", srv.stdout.readline().strip() == "ready")

    def client(app):
        p = subprocess.Popen(["ip", "netns", "exec", pods[app]["netns"], "/usr/bin/python3", "-c", CLIENT,
                              pods["api"]["ip"], "8080"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, start_new_session=True)
        run.own_process(p, f"client in {app}")
        return p, p.stdout.readline().strip()

    def ping(p):
        p.stdin.write("x\n")
        p.stdin.flush()
        return p.stdout.readline().split(" ")[0].strip()

    def explain(frm, to, port="8080/TCP"):
        # The exit status says the verdict: 0 allowed, 3 denied.
        p = d.ctl("explain", "--from", frm, "--to", to, "--port", port, "-o", "json")
        t.check(f"explain {frm} -> {to} ({port}) exits 0 or 3", p.returncode in (0, 3), p.stderr)
        e = json.loads(p.stdout) if p.returncode in (0, 3) else {}
        if e:
            t.equal(f"explain {frm} -> {to} ({port}): exit status {p.returncode} says the verdict",
                    p.returncode, 0 if e.get("allowed") else 3)
        return e

    # No policy: allowed, not isolated.
    e = explain("shop/web", "shop/api")
    t.equal("no policy: web -> api allowed", e.get("allowed"), True)
    text = d.ctl("explain", "--from", "shop/web", "--to", "shop/api", "--port", "8080/TCP").stdout
    t.check("explain text says not isolated", "not isolated" in text, text)
    conn, state = client("web")
    t.equal("no policy: web connects to api", state, "connected")
    t.equal("no policy: echo over the connection", ping(conn), "ok")

    # Allow only web on 8080: the established connection keeps working, db is denied.
    (mdir / "np.json").write_text(json.dumps(policy("api-from-web", "shop", "api", "web", 8080)))
    t.require("sync after the allow-web policy", d.sync().returncode == 0)
    t.equal("allow-web: established web connection still echoes", ping(conn), "ok")
    e = explain("shop/web", "shop/api")
    t.equal("allow-web: explain web -> api allowed", e.get("allowed"), True)
    t.check("allow-web: explain names the policy", "api-from-web" in json.dumps(e), e)
    e = explain("shop/db", "shop/api")
    t.equal("allow-web: explain db -> api denied", e.get("allowed"), False)
    t.equal("allow-web: explain web -> api on 9090 denied", explain("shop/web", "shop/api", "9090/TCP").get("allowed"), False)
    _, state = client("db")
    t.equal("allow-web: db cannot connect", state.split(" ")[0], "connect-failed")
    _, state = client("web")
    t.equal("allow-web: a new web connection is accepted by the rule", state, "connected")
    pol = json.loads(d.ctl("policies", "shop/api", "-o", "json").stdout)
    t.equal("policies shop/api: ingress isolated", pol["ingress"]["isolated"], True)
    t.equal("policies shop/api: the policy in force", pol["ingress"]["policies"], ["shop/api-from-web"])
    t.check("policies shop/api: denied attempts counted", pol["ingress"].get("deniedPackets", 0) >= 1, pol)
    # The first connection was established before the policy (conntrack accepts it);
    # the new one's SYN went through the rule.
    t.check("policies shop/api: the rule's accepted packets counted",
            pol["ingress"]["rules"] and pol["ingress"]["rules"][0].get("packets", 0) >= 1, pol)
    text = d.ctl("policies", "shop/api").stdout
    t.check("policies text lists the rule and the denials", "api-from-web" in text and "denied" in text, text)

    # A restart of signetd keeps the allowed established connection and the policy.
    d.stop()
    t.equal("signetd down: established connection still echoes", ping(conn), "ok")
    d.start()
    t.equal("after restart: established connection still echoes", ping(conn), "ok")
    _, state = client("db")
    t.equal("after restart: db still cannot connect", state.split(" ")[0], "connect-failed")

    # Now allow only db: the established web connection must be cut within a second.
    (mdir / "np.json").write_text(json.dumps(policy("api-from-web", "shop", "api", "db", 8080)))
    t0 = time.monotonic()
    t.require("sync after switching the policy to db", d.sync().returncode == 0)
    got = ping(conn)
    dt = time.monotonic() - t0
    t.check("switched policy: the web connection is cut", got in ("fail", "closed"), got)
    t.check(f"switched policy: cut within a second of the change ({dt:.2f}s incl. a 1 s probe)", dt < 2.5, dt)
    st = d.status()
    t.check("status counts the cut connection", st["datapath"]["cutConnections"] >= 1, st["datapath"])
    pol = json.loads(d.ctl("policies", "shop/api", "-o", "json").stdout)
    t.check("policies shop/api counts the cut connection", pol.get("cutConnections", 0) >= 1, pol)
    _, state = client("db")
    t.equal("switched policy: db connects now", state, "connected")
    _, state = client("web")
    t.equal("switched policy: web cannot connect", state.split(" ")[0], "connect-failed")

    # Outside peers by IP, and a bad request.
    e = explain("192.0.2.10", "shop/api")
    t.equal("explain from an outside IP: denied", e.get("allowed"), False)
    p = d.ctl("explain", "--from", "shop/nope", "--to", "shop/api", "--port", "80")
    t.check("explain with an unknown pod fails clearly", p.returncode == 1 and "nope" in p.stderr, p.stderr)


if __name__ == "__main__":
    harness.main("test_enforcement", body)
