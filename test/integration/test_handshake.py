#!/usr/bin/python3
"""The identity handshake on one node, end to end: signetd --handshake
enforce with a real authority, netns pods through the real CNI chain, new TCP
connections judged on the proven identity (tokens in SYN / SYN-ACK via
NFQUEUE, checked and stripped), conntrack marks and authenticated flow
records, the queue failing closed while signetd is down, and established
connections surviving a restart. (Two nodes and the attacks:
test_handshake_nodes.py, test_handshake_attacks.py.)"""
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

PAYLOAD = 20000

# A client that keeps one connection open: sends a line per request on stdin
# ("ping" -> echoes), prints "connected" / "echo ok" / "fail ...".
HOLD_CLIENT = r"""
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
except OSError as e:
    print("fail", type(e).__name__, flush=True); sys.exit(0)
print("connected", flush=True)
for line in sys.stdin:
    try:
        s.sendall(b"y" * 1000)
        got = 0
        while got < 1000:
            d = s.recv(65536)
            if not d: break
            got += len(d)
        print("echo ok" if got == 1000 else f"echo short {got}", flush=True)
    except OSError as e:
        print("fail", type(e).__name__, flush=True)
"""


# N connections from one fixed source port, each closed with an RST right
# after connect(); prints "N ok" or the first failure.
REUSE_CLIENT = r"""
import socket, struct, sys, time
host, port, sport, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for i in range(n):
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.settimeout(3)
    s.bind(("", sport))
    try:
        s.connect((host, port))
    except OSError as e:
        print(f"connection {i}: {type(e).__name__} {e}", flush=True); sys.exit(0)
    s.close()
print(f"{n} ok", flush=True)
"""


def body(t: harness.Test, run: harness.Run):
    harness.require_root_and_tools("ip", "nft")
    bins = harness.require_signet_binaries(t)
    ca = Path(run.mkdtemp("ca")) / "authority"
    p = harness.sh(bins["signetctl"], "authority", "init", str(ca), "--trust-domain", "hs.test", check=False)
    t.require("signetctl authority init", p.returncode == 0, p.stdout + p.stderr)

    d = harness.Signetd(run, bins, node="hs-node")
    # One machine: the authority's folder itself (ca.key there needs --allow-ca-key).
    d.extra_args = ["--authority", f"dir:{ca}", "--allow-ca-key", "--handshake", "enforce", "--metrics-address", "127.0.0.1:0",
                    "--handshake-memory", "64"]
    d.start()
    st = d.status()
    t.equal("status: handshake mode", st.get("handshake", {}).get("mode"), "enforce")

    objs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}]
    for app in ("web", "api", "db"):
        objs.append({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": app, "namespace": "shop", "labels": {"app": app}},
                     "spec": {"nodeName": "hs-node", "containers": [{"name": "c", "image": "x"}]}})
    objs.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                 "metadata": {"name": "api-from-web", "namespace": "shop"},
                 "spec": {"podSelector": {"matchLabels": {"app": "api"}}, "policyTypes": ["Ingress"],
                          "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                                       "ports": [{"protocol": "TCP", "port": 8080}]}]}})
    (d.manifest_dir / "objects.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))
    t.require("sync after writing the objects", d.sync().returncode == 0)

    net = harness.Network(run, version="1.0.0", signet_socket=d.socket)
    chain = net.chain(["/usr/lib/cni", str(bins["signet"].parent)])
    pods = harness.add_pods(run, chain, "shop", ("web", "api", "db"))
    t.note("pods: " + ", ".join(f"{a}={p['ip']}" for a, p in pods.items()))

    ruleset = harness.sh("ip", "netns", "exec", pods["api"]["netns"], "nft", "list", "table", "inet", "signet").stdout
    t.check("api's table: SYN/SYN-ACK to NFQUEUE 3472 before `ct state established`",
            "3472" in ruleset and ruleset.find("3472") < ruleset.find("established"), ruleset[:1500])
    hs = d.status().get("handshake", {})
    t.equal("a queue reader per pod", hs.get("queue", {}).get("readers"), 3)
    t.equal("no queue errors", hs.get("queue", {}).get("errors"), [])

    srv = subprocess.Popen(["ip", "netns", "exec", pods["api"]["netns"], "/usr/bin/python3", "-c",
                            harness.ECHO_SERVER, "8080"],
                           stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    run.own_process(srv, "echo server in api")
    t.require("echo server ready", srv.stdout.readline().strip() == "ready")

    def connect(app, timeout="3"):
        p = harness.sh("ip", "netns", "exec", pods[app]["netns"], "/usr/bin/python3", "-c", harness.ECHO_CLIENT,
                       pods["api"]["ip"], "8080", str(PAYLOAD), timeout, check=False, timeout=30)
        return p.stdout.strip()

    t.equal("web -> api:8080 allowed on web's proven identity, echo complete", connect("web"), "ok")
    t.check("db -> api:8080 denied", connect("db", "1.5").startswith("fail"))
    t.equal("web -> api:8080 again (MAC token under the node-pair key)", connect("web"), "ok")
    hs = d.status().get("handshake", {})
    c = hs.get("counters", {})
    t.note("handshake status: " + json.dumps(hs))
    t.check("first contact: a signed token added and verified",
            c.get("tokens_added_signed", 0) >= 1 and c.get("verified_signed", 0) >= 1, json.dumps(c))
    t.check("then MAC tokens", c.get("tokens_added_mac", 0) >= 1 and c.get("verified_mac", 0) >= 1, json.dumps(c))
    t.check("connections admitted on proven identity (both sides)",
            c.get("accepted_authenticated", 0) >= 4, json.dumps(c))
    t.check("db's attempt denied on its proven identity", c.get("denied", 0) >= 1, json.dumps(c))
    t.equal("nothing refused", hs.get("refused"), {})
    t.equal("no reader errors", (hs.get("queue", {}).get("handler_errors"), hs.get("queue", {}).get("malformed")),
            (0, 0))

    # Flow records: the connection is marked authenticated in both netns. Its
    # close record comes when conntrack ends the entry (after TIME_WAIT's two
    # minutes): web's entries are ended now (docs/flows.md).
    harness.sh("ip", "netns", "exec", pods["web"]["netns"], "conntrack", "-D", "-p", "tcp", "--dport", "8080",
               check=False)
    deadline = time.monotonic() + 10
    recs = []
    while time.monotonic() < deadline:
        p = d.ctl("flows", "-o", "json", "--limit", "1000")
        recs = json.loads(p.stdout)["flows"] if p.returncode == 0 else []
        ing = [r for r in recs if r.get("event") == "open" and r.get("pod") == "shop/api"
               and r.get("direction") == "ingress" and r.get("peer", {}).get("pod") == "shop/web"]
        den = [r for r in recs if r.get("verdict") == "denied" and r.get("pod") == "shop/api"
               and r.get("peer", {}).get("pod") == "shop/db"]
        closed = [r for r in recs if r.get("event") == "close" and r.get("pod") == "shop/web"]
        if ing and den and closed:
            break
        time.sleep(0.2)
    t.check("flow: web -> api open recorded", bool(ing), json.dumps(recs)[:1500])
    if ing:
        t.equal("flow: authenticated", ing[0].get("authenticated"), True)
        t.equal("flow: peer identity", ing[0].get("peer_identity"),
                {"node": "hs-node", "namespace": "shop", "pod": "web"})
    # The client side proves the server at the SYN-ACK, after conntrack reported
    # the connection open: its close record carries the mark.
    egr = [r for r in recs if r.get("event") == "close" and r.get("pod") == "shop/web"
           and r.get("direction") == "egress" and r.get("peer", {}).get("pod") == "shop/api"]
    t.check("flow: web's egress side, at close, authenticated too", bool(egr) and egr[0].get("authenticated") is True,
            json.dumps(egr)[:800])
    t.check("flow: db's denied attempt recorded", bool(den), json.dumps(recs)[:1500])

    # One source port over and over, each connection closed with an RST at
    # once (no TIME_WAIT): every one reuses the 4-tuple of a conntrack entry in
    # CLOSE state on both ends, and the client's RST races the final ACK's
    # proof (issue #18: such connections were reset under load).
    p = harness.sh("ip", "netns", "exec", pods["web"]["netns"], "/usr/bin/python3", "-c", REUSE_CLIENT,
                   pods["api"]["ip"], "8080", "41000", "150", check=False, timeout=120)
    t.equal("150 connections from one source port, each reset at once: all connect", p.stdout.strip(), "150 ok")
    hs = d.status().get("handshake", {})
    t.equal("no handshake segment lost", hs.get("drops", {}).get("lost"), 0)
    t.equal("nothing refused", hs.get("refused"), {})
    text = d.ctl("status").stdout
    t.check("signetctl status shows the handshake's drops", "handshake drops: 0 lost" in text, text)

    # /metrics: the handshake's counters, drops by kind and place; promtool accepts them.
    port = d.status().get("outputs", {}).get("metricsPort")
    metrics = harness.sh("curl", "-sf", f"http://127.0.0.1:{port}/metrics", check=False).stdout
    for name in ("signet_handshake_segments_total", "signet_handshake_tokens_total", "signet_handshake_drops_total",
                 "signet_handshake_connections_total", "signet_handshake_proofs_total",
                 "signet_handshake_deferred_to_node_total", "signet_handshake_closing_checked_total",
                 "signet_handshake_queue_packets_total", "signet_handshake_queue_rewritten_total",
                 "signet_handshake_queue_overruns_total"):
        t.check(f"/metrics has {name}", f"# TYPE {name} counter" in metrics, metrics[:600])
    for name in ("signet_handshake_queue_waiting", "signet_handshake_queue_readers", "signet_handshake_queue_max_batch",
                 "signet_handshake_state_entries"):
        t.check(f"/metrics has {name}", f"# TYPE {name} gauge" in metrics, metrics[:600])
    # The status-only counters of before issue #15, now series: they agree with status.
    hs_status = d.status().get("handshake", {})
    q = hs_status.get("queue", {})
    def value(series):
        for line in metrics.splitlines():
            if line.startswith(series + " "):
                return float(line.split()[1])
        return None
    acc = value('signet_handshake_queue_packets_total{verdict="accepted"}')
    t.check("/metrics: queue packets accepted (tokens went through the queues)", acc is not None and acc > 0 and
            acc <= q.get("accepted", 0), (acc, q.get("accepted")))
    rw = value("signet_handshake_queue_rewritten_total")
    t.check("/metrics: queue packets rewritten (tokens added and stripped)", rw is not None and rw > 0, rw)
    t.check("/metrics: one queue reader per pod netns", (value("signet_handshake_queue_readers") or 0) >= 2,
            value("signet_handshake_queue_readers"))
    t.check("/metrics: the handshake's memory budget (--handshake-memory 64)",
            "signet_handshake_memory_limit_bytes 67108864" in metrics and
            'signet_handshake_memory_bytes{part="replay_cache"}' in metrics, metrics[-3000:])
    mem = d.status().get("handshake", {}).get("memory", {})
    t.check("status: handshake.memory within its limit",
            mem.get("limit_bytes") == 64 << 20 and 0 < mem.get("used_bytes", 0) <= mem["limit_bytes"], json.dumps(mem))
    t.check("/metrics: no handshake segment lost",
            'signet_handshake_drops_total{kind="lost",place="kernel_queue_full"} 0' in metrics, metrics[-3000:])
    if Path("/usr/bin/promtool").exists():
        pc = subprocess.run(["/usr/bin/promtool", "check", "metrics"], input=metrics, capture_output=True, text=True)
        t.check("promtool check metrics", pc.returncode == 0, pc.stdout + pc.stderr)

    c = d.status().get("handshake", {}).get("counters", {})
    t.check("every admitted connection's final ACK carried the proof, and it verified",
            c.get("proofs_sent", 0) >= 2 and c.get("proofs_verified") == c.get("proofs_sent"), json.dumps(c))

    # The final ACK's proof lost on the way: the server holds the client's data
    # (its socket stays in SYN-RECV), retransmits its SYN-ACK, and the client's
    # kernel answers with an ACK that gets the proof again.
    web = pods["web"]["netns"]
    harness.sh("ip", "netns", "exec", web, "nft", "-f", "-", input=(
        "table inet t_lose_proof {\n chain out {\n type filter hook output priority 100;\n"
        " ip length 76 tcp flags == ack counter drop\n }\n}\n"))
    held0 = c.get("held_for_proof", 0)
    lost = subprocess.Popen(["ip", "netns", "exec", web, "/usr/bin/python3", "-c", harness.ECHO_CLIENT,
                             pods["api"]["ip"], "8080", "1000", "15"],
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    run.own_process(lost, "client whose proof is lost")
    deadline = time.monotonic() + 5
    syn_recv = ""
    while time.monotonic() < deadline:
        syn_recv = harness.sh("ip", "netns", "exec", pods["api"]["netns"], "ss", "-tnH", "state", "syn-recv",
                              check=False).stdout.strip()
        held = d.status().get("handshake", {}).get("counters", {}).get("held_for_proof", 0)
        if syn_recv and held > held0:
            break
        time.sleep(0.05)
    dropped = harness.sh("ip", "netns", "exec", web, "nft", "list", "table", "inet", "t_lose_proof").stdout
    t.check("the proof-carrying final ACK was lost (dropped in web's netns)", "packets 1 " in dropped
            or "packets 2 " in dropped, dropped)
    t.check("without the proof the server's socket stays in SYN-RECV", bool(syn_recv), syn_recv)
    t.check("and the client's data is held (dropped until the proof)", held > held0)
    harness.sh("ip", "netns", "exec", web, "nft", "delete", "table", "inet", "t_lose_proof")
    out = lost.communicate(timeout=20)[0].strip()
    t.equal("after the server's SYN-ACK retransmission the proof arrives: the echo completes", out, "ok")

    # A controller restart: established connections live on, new ones wait
    # (fail closed) while no reader is bound, and work again after.
    hold = subprocess.Popen(["ip", "netns", "exec", pods["web"]["netns"], "/usr/bin/python3", "-c", HOLD_CLIENT,
                             pods["api"]["ip"], "8080"],
                            stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True, start_new_session=True)
    run.own_process(hold, "long-lived client in web")
    t.require("long-lived connection up", hold.stdout.readline().strip() == "connected")

    def ping():
        hold.stdin.write("ping\n")
        hold.stdin.flush()
        return hold.stdout.readline().strip()

    t.equal("long-lived connection echoes", ping(), "echo ok")
    for app, want in (("api", "mark=256"), ("web", "mark=256")):
        ct = harness.sh("ip", "netns", "exec", pods[app]["netns"], "conntrack", "-L", "-p", "tcp", "--dport", "8080",
                        check=False).stdout
        t.check(f"{app}'s conntrack entry of the connection carries the authenticated mark (0x100)",
                want in ct, ct)
    d.stop()
    t.equal("signetd down: the established connection still echoes", ping(), "echo ok")
    t.check("signetd down: a new connection fails (no reader: the queue drops, fail closed)",
            connect("web", "1.5").startswith("fail"))
    d.start()
    t.equal("signetd back: the established connection still echoes", ping(), "echo ok")
    t.equal("signetd back: new connections work again", connect("web"), "ok")
    t.check("signetd back: db still denied", connect("db", "1.5").startswith("fail"))
    hold.stdin.close()
    hold.wait(5)


if __name__ == "__main__":
    harness.main("test_handshake", body)
