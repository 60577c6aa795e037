#!/usr/bin/python3
"""Connections through Services, judged after kube-proxy's translation (issue #12).

Two signet nodes (twonode.py: node netns joined by a wire, the real CNI chain
inside each), each signetd told its node netns (--node-netns), and in each node
netns kube-proxy's real iptables-mode rules (test/kubeproxy/kubeproxy.py:
KUBE-SERVICES, KUBE-SVC-* with statistic, KUBE-SEP-* DNAT, masquerade) for one
ClusterIP Service `web` (port 80 -> 8080) with two backends, w1 on node-a and
w2 on node-b, and its NodePort.

    ns x:  ok, no, w1 on node-a;  w2, other on node-b
    policy egress-ok:  ok may reach app in (w1, w2) on 8080 (egress-isolated)
    policy egress-no:  no may reach app=other on 8080 only (egress-isolated)
    policy web-in:     w1, w2 accept 8080 from app in (ok, no)

1. `--services judge` (the default): ok -> ClusterIP:80 connects, every time,
   to both backends (kube-proxy's random choice covers both); no -> ClusterIP:80
   is refused by its egress (judged at node-a after the translation, on the
   backend); ok -> node-a's NodePort connects; a backend reaching its own
   Service (hairpin) connects. status.services says judgedAtNode and counts the
   verdicts; `signetctl explain --to CLUSTERIP --port 80` lists both backends.
2. Fail closed: bridge-nf-call-iptables=0 in node-a's netns (signet cannot see
   the translation of bridged traffic): status.services says why, and ok ->
   ClusterIP is refused (its egress meets the frontend itself).
3. `--handshake enforce`: the same through the Service, the client's token made
   at node-a after the translation (bound to the backend), verified by the
   backend's node; hairpin and NodePort (masqueraded) pass tokenless.
4. `--services off`: the frontend is an address like any other: ok's isolated
   egress refuses it (what every isolated pod got before signet judged Services).
"""
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "kubeproxy"))
import harness  # noqa: E402
import kubeproxy  # noqa: E402
import twonode  # noqa: E402
from twonode import NODE_A, NODE_B, NS, PORT  # noqa: E402

CLUSTER_IP = "10.96.47.10"
SVC_PORT = 80
NODE_PORT = 30080

WHO_SERVER = r"""
import socket, sys, threading
name = sys.argv[2].encode()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(128)
print("ready", flush=True)
def serve(c):
    try:
        while c.recv(16):
            c.sendall(name)
    except OSError:
        pass
    finally:
        c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

WHO_CLIENT = r"""
import socket, sys
out = []
for i in range(int(sys.argv[3])):
    try:
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[4]))
        s.sendall(b"who"); out.append(s.recv(64).decode() or "empty"); s.close()
    except OSError as e:
        out.append("fail:" + type(e).__name__)
print(" ".join(out), flush=True)
"""


# One connection held open: the server's name, then on each stdin line "again", one more
# exchange (or "fail:..." when the connection no longer carries data).
HOLD_CLIENT = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
s.sendall(b"who"); print(s.recv(64).decode() or "empty", flush=True)
for line in sys.stdin:
    try:
        s.settimeout(3)
        s.sendall(b"who"); d = s.recv(64)
        print(d.decode() if d else "fail:closed", flush=True)
    except OSError as e:
        print("fail:" + type(e).__name__, flush=True)
"""


def who(tn, frm, ip, port, n=1, timeout=1.5):
    p = harness.sh("ip", "netns", "exec", tn.netns_of(frm), "/usr/bin/python3", "-c", WHO_CLIENT, ip, str(port),
                   str(n), str(timeout), check=False, timeout=60)
    return p.stdout.split()


def services_status(tn, node):
    return tn.status(node).get("services") or {}


def wait_judged(tn, want: bool, timeout=10.0):
    """Waits until node-a's status.services.judgedAtNode is `want` (its checks run at
    each ADD and every 5 s sweep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and bool(services_status(tn, NODE_A).get("judgedAtNode")) != want:
        time.sleep(0.5)


def body(t: harness.Test, run: harness.Run):
    harness.require_root_and_tools("ip", "nft", "sysctl", "iptables-restore")
    bins = harness.require_signet_binaries(t)
    missing = kubeproxy.tools_missing("iptables")
    if missing:
        harness.skip("kube-proxy's iptables mode needs " + ", ".join(missing))
    p = harness.sh(str(bins["signetd"]), "--help", check=False)
    t.require("signetd knows --node-netns and --services", "--node-netns" in p.stdout and "--services" in p.stdout)

    tn = twonode.TwoNodes(t, run, bins, ipv6=False)
    tn.start("off", node_netns=True)
    # Egress policies on the clients, ingress on the backends.
    def policy(name, sel, types, spec):
        tn.objects.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                           "metadata": {"name": name, "namespace": NS},
                           "spec": {"podSelector": {"matchLabels": {"app": sel}}, "policyTypes": types, **spec}})
    to_apps = lambda apps: [{"to": [{"podSelector": {"matchExpressions": [
        {"key": "app", "operator": "In", "values": apps}]}}], "ports": [{"protocol": "TCP", "port": PORT}]}]
    policy("egress-ok", "ok", ["Egress"], {"egress": to_apps(["w1", "w2"])})
    policy("egress-no", "no", ["Egress"], {"egress": to_apps(["other"])})
    # The backends admit the clients and each other by label, and node-a's wire address: a
    # NodePort connection is masqueraded by kube-proxy (its KUBE-EXT chain), so a backend on
    # the other node sees node-a, not the client (upstream's semantics).
    for w in ("w1", "w2"):
        policy(f"web-in-{w}", w, ["Ingress"], {"ingress": [{"from": [
            {"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["ok", "no", "w1", "w2"]}]}},
            {"ipBlock": {"cidr": "192.168.255.0/30"}}], "ports": [{"protocol": "TCP", "port": PORT}]}]})
    tn.add_pods([("ok", NODE_A), ("no", NODE_A), ("w1", NODE_A), ("w2", NODE_B), ("other", NODE_B)])
    for p in tn.pods.values():
        t.require(f"pod {p.name} has an IPv4 address", p.ip4, p.result)
    for w in ("w1", "w2"):
        tn.pods[w].labels["role"] = "web"
    tn.objects.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": NS},
                       "spec": {"type": "NodePort", "clusterIP": CLUSTER_IP, "clusterIPs": [CLUSTER_IP],
                                "selector": {"role": "web"},
                                "ports": [{"name": "http", "protocol": "TCP", "port": SVC_PORT, "targetPort": PORT,
                                           "nodePort": NODE_PORT}]}})
    tn.write_view()
    tn.sync()

    for w in ("w1", "w2", "other"):
        srv = harness.subprocess.Popen(
            ["ip", "netns", "exec", tn.pods[w].netns, "/usr/bin/python3", "-c", WHO_SERVER, str(PORT), w],
            stdout=harness.subprocess.PIPE, stdin=harness.subprocess.DEVNULL, text=True, start_new_session=True)
        run.own_process(srv, f"who server in {w}")
        t.require(f"server ready in {w}", srv.stdout.readline().strip() == "ready")

    # kube-proxy (iptables mode) on both nodes: the same Service, both endpoints.
    cluster_cidr = "10.244.0.0/16"
    proxies = {}
    for name, n in tn.nodes.items():
        node_ips = [n.gw4, twonode.WIRE4[0] if name == NODE_A else twonode.WIRE4[1]]
        kp = kubeproxy.KubeProxy("iptables", n.netns, kubeproxy.Node(ips=node_ips, cluster_cidr=cluster_cidr))
        kp.prepare_node()
        svc = kubeproxy.Service(NS, "web", CLUSTER_IP,
                                ports=[kubeproxy.ServicePort("http", "TCP", SVC_PORT, PORT, NODE_PORT)],
                                endpoints={"http": [kubeproxy.Endpoint(tn.pods["w1"].ip4, PORT, name == NODE_A),
                                                    kubeproxy.Endpoint(tn.pods["w2"].ip4, PORT, name == NODE_B)]})
        kp.sync([svc])
        run.on_cleanup(f"kube-proxy rules in {name}", kp.remove)
        proxies[name] = kp
    t.note("kube-proxy iptables rules installed in both node netns")
    node_a = tn.nodes[NODE_A]

    # ---- 1. judged at the node ---------------------------------------------------
    st = services_status(tn, NODE_A)
    t.check("judge: node-a status.services.judgedAtNode", st.get("judgedAtNode") is True, st)
    t.check("judge: node-a judges its 2 egress-isolated pods", st.get("judgedPods") == 2, st)
    got = who(tn, "ok", CLUSTER_IP, SVC_PORT, n=16)
    t.check("judge: ok -> ClusterIP:80 connects every time", got and all(g in ("w1", "w2") for g in got), got)
    t.check("judge: ... and reaches both backends (node-a's w1 and node-b's w2)", {"w1", "w2"} <= set(got), got)
    got = who(tn, "no", CLUSTER_IP, SVC_PORT, n=4, timeout=1.0)
    t.check("judge: no -> ClusterIP:80 refused (its egress allows only app=other)",
            got and all(g.startswith("fail") for g in got), got)
    got = who(tn, "no", tn.pods["other"].ip4, PORT, n=1)
    t.check("judge: no -> other directly still connects", got == ["other"], got)
    got = who(tn, "ok", tn.pods["w2"].ip4, PORT, n=1)
    t.check("judge: ok -> w2 directly still connects", got == ["w2"], got)
    got = who(tn, "ok", node_a.gw4, NODE_PORT, n=8)
    if not t.check("judge: ok -> node-a's NodePort connects", got and all(g in ("w1", "w2") for g in got), got):
        t.note("ok's table:\n" + harness.sh("ip", "netns", "exec", tn.pods["ok"].netns, "nft", "list", "ruleset",
                                             check=False).stdout[-4000:])
        t.note("node-a's table:\n" + harness.sh("ip", "netns", "exec", node_a.netns, "nft", "list", "table", "inet",
                                                 "signet_node", check=False).stdout[-3000:])
    got = who(tn, "no", node_a.gw4, NODE_PORT, n=2, timeout=1.0)
    t.check("judge: no -> node-a's NodePort refused by its egress", got and all(g.startswith("fail") for g in got), got)
    got = who(tn, "w1", CLUSTER_IP, SVC_PORT, n=8)
    t.check("judge: w1 -> its own Service connects (hairpin to itself, or w2)",
            got and all(g in ("w1", "w2") for g in got), got)
    st = services_status(tn, NODE_A)
    c = st.get("connections") or {}
    t.check("judge: node-a counted allowed and denied Service connections", c.get("allowed", 0) >= 16 and
            c.get("denied", 0) >= 1, st)
    t.check("judge: the denial names the client and a backend",
            any(d.get("client") == f"{NS}/no" and d.get("backend") in (f"{NS}/w1", f"{NS}/w2")
                for d in st.get("recentDenials", [])), st.get("recentDenials"))
    recs, deadline = [], time.monotonic() + 8
    while time.monotonic() < deadline:
        recs = [r for r in tn.flows(NODE_A) if r.get("pod") == f"{NS}/ok" and r.get("direction") == "egress"
                and str(r.get("dst", "")).startswith(CLUSTER_IP + ":")]
        if recs:
            break
        time.sleep(0.25)
    t.check("flows: ok's connections to the ClusterIP are recorded as decided at the node for Service x/web",
            recs and all(r.get("policy") == f"service:{NS}/web" for r in recs), recs[:3])
    p = node_a.d.ctl("explain", "--from", f"{NS}/no", "--to", CLUSTER_IP, "--port", str(SVC_PORT), "-o", "json")
    t.check("explain --to CLUSTERIP for x/no exits 3 (denied by the backends)", p.returncode == 3, p.stderr)
    ex = json.loads(p.stdout) if p.returncode in (0, 3) else {}
    svcs = ex.get("services") or []
    t.check("explain --to CLUSTERIP: the Service and both backends, each denied for x/no",
            len(svcs) == 1 and len(svcs[0].get("backends", [])) == 2 and
            all(b.get("allowed") is False for b in svcs[0]["backends"]), p.stdout[-1500:] + p.stderr)
    p = node_a.d.ctl("explain", "--from", f"{NS}/ok", "--to", CLUSTER_IP, "--port", str(SVC_PORT))
    t.check("explain --to CLUSTERIP (text): backends allowed for x/ok",
            p.returncode == 0 and "Service x/web" in p.stdout and p.stdout.count("ALLOWED") >= 2, p.stdout + p.stderr)

    # A policy change that no longer allows the backend cuts the established Service
    # connection (the node's conntrack entry of the translated connection is re-checked).
    held = harness.subprocess.Popen(
        ["ip", "netns", "exec", tn.pods["ok"].netns, "/usr/bin/python3", "-c", HOLD_CLIENT, CLUSTER_IP, str(SVC_PORT)],
        stdout=harness.subprocess.PIPE, stdin=harness.subprocess.PIPE, text=True, start_new_session=True)
    run.own_process(held, "held Service connection in ok")
    first = held.stdout.readline().strip()
    t.check("cut: a Service connection from ok is established", first in ("w1", "w2"), first)
    narrowed = next(o for o in tn.objects if o.get("metadata", {}).get("name") == "egress-ok")
    narrowed["spec"]["egress"] = to_apps(["other"])
    tn.write_view()
    tn.sync()
    held.stdin.write("again\n")
    held.stdin.flush()
    second = held.stdout.readline().strip()
    t.check("cut: after egress-ok no longer allows the backends, the connection is cut", second.startswith("fail"),
            second)
    held.kill()
    narrowed["spec"]["egress"] = to_apps(["w1", "w2"])
    tn.write_view()
    tn.sync()
    got = who(tn, "ok", CLUSTER_IP, SVC_PORT, n=2)
    t.check("cut: allowed again once the policy is back", got and all(g in ("w1", "w2") for g in got), got)

    # ---- 2. fail closed: the node cannot see the translation -------------------------
    harness.sh("ip", "netns", "exec", node_a.netns, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0")
    tn.sync()  # a sync runs the check now (it also runs every 5 s)
    wait_judged(tn, False)
    st = services_status(tn, NODE_A)
    t.check("fail closed: status.services.judgedAtNode false with the reason",
            st.get("judgedAtNode") is False and "bridge-nf-call-iptables" in st.get("reason", ""), st)
    got = who(tn, "ok", CLUSTER_IP, SVC_PORT, n=3, timeout=1.0)
    t.check("fail closed: ok -> ClusterIP:80 refused", got and all(g.startswith("fail") for g in got), got)
    harness.sh("ip", "netns", "exec", node_a.netns, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1")
    tn.sync()
    wait_judged(tn, True)
    got = who(tn, "ok", CLUSTER_IP, SVC_PORT, n=4)
    t.check("fail closed: judged again once bridge-nf-call-iptables=1", got and all(g in ("w1", "w2") for g in got), got)

    # kube-proxy in ipvs mode (its kube-ipvs0 device; a veth stands in for the dummy, which
    # this kernel lacks): it translates where signet does not judge: fail closed, and say so.
    harness.sh("ip", "-n", node_a.netns, "link", "add", "kube-ipvs0", "type", "veth", "peer", "name", "kipvs-peer")
    tn.sync()
    wait_judged(tn, False)
    st = services_status(tn, NODE_A)
    t.check("ipvs mode: status.services.judgedAtNode false, the reason names ipvs",
            st.get("judgedAtNode") is False and "ipvs" in st.get("reason", ""), st)
    got = who(tn, "ok", CLUSTER_IP, SVC_PORT, n=2, timeout=1.0)
    t.check("ipvs mode: ok -> ClusterIP:80 refused (fail closed)", got and all(g.startswith("fail") for g in got), got)
    harness.sh("ip", "-n", node_a.netns, "link", "del", "kube-ipvs0")
    tn.sync()
    wait_judged(tn, True)
    got = who(tn, "ok", CLUSTER_IP, SVC_PORT, n=2)
    t.check("ipvs mode: judged again once kube-ipvs0 is gone", got and all(g in ("w1", "w2") for g in got), got)

    # ---- 3. the identity handshake (enforce) through the Service ------------------------
    # The client side of the handshake runs at node-a after the translation: the token is
    # bound to the translated connection and node-b (or node-a) verifies it as usual.
    tn.start("enforce", node_netns=True)
    tn.sync()
    wait_judged(tn, True)
    got = who(tn, "ok", CLUSTER_IP, SVC_PORT, n=16)
    t.check("enforce: ok -> ClusterIP:80 connects every time", got and all(g in ("w1", "w2") for g in got), got)
    t.check("enforce: ... to both backends", {"w1", "w2"} <= set(got), got)
    got = who(tn, "no", CLUSTER_IP, SVC_PORT, n=3, timeout=1.0)
    t.check("enforce: no -> ClusterIP:80 refused", got and all(g.startswith("fail") for g in got), got)
    got = who(tn, "ok", tn.pods["w2"].ip4, PORT, n=2)
    t.check("enforce: ok -> w2 directly connects (handshake in the pods' netns)", got == ["w2", "w2"], got)
    got = who(tn, "w1", CLUSTER_IP, SVC_PORT, n=8)
    t.check("enforce: w1 -> its own Service connects (hairpin tokenless from the node, or w2 with a token)",
            got and all(g in ("w1", "w2") for g in got), got)
    got = who(tn, "ok", node_a.gw4, NODE_PORT, n=6)
    t.check("enforce: ok -> node-a's NodePort connects (masqueraded: no token, the node's address)",
            got and all(g in ("w1", "w2") for g in got), got)
    hb = tn.status(NODE_B).get("handshake") or {}
    cb = hb.get("counters") or {}
    t.check("enforce: node-b verified tokens of Service connections and their proofs",
            cb.get("verified", 0) > 0 and cb.get("proofs_verified", 0) > 0, hb)
    ha = tn.status(NODE_A).get("handshake") or {}
    t.check("enforce: node-a's pods deferred their SYNs to the node", (ha.get("counters") or {}).get("deferred_to_node", 0) > 0,
            ha)
    drops = (ha.get("drops") or {})
    t.check("enforce: node-a lost no handshake segment", drops.get("lost", 0) == 0, drops)

    # ---- 4. --services off ---------------------------------------------------------
    tn.start("off", node_netns=True, extra=["--services", "off"])
    tn.sync()
    st = services_status(tn, NODE_A)
    t.check("off: status.services.judgedAtNode false", st.get("judgedAtNode") is False, st)
    got = who(tn, "ok", CLUSTER_IP, SVC_PORT, n=2, timeout=1.0)
    t.check("off: ok -> ClusterIP:80 refused by its isolated egress (the frontend is an address)",
            got and all(g.startswith("fail") for g in got), got)
    got = who(tn, "ok", tn.pods["w1"].ip4, PORT, n=1)
    t.check("off: ok -> w1 directly connects", got == ["w1"], got)
    if t.failed:
        t.note(tn.log_tails(60))
        for name, kp in proxies.items():
            t.note(f"--- kube-proxy rules in {name}:\n{kp.dump()[-3000:]}")


if __name__ == "__main__":
    harness.main("test_service_judge", body)
