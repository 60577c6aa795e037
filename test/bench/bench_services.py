#!/usr/bin/python3
"""Connection setup through a ClusterIP Service: kube-proxy alone vs. signet's
judge after the translation (issue #12; docs/policy.md, "Services").

bench_services.py BUILD_DIR [--skip-no-flows] [--no-cross-node]

The two-node harness (test/integration/twonode.py: node netns with the real CNI
chain, a signetd per node told its node netns) with kube-proxy's iptables-mode
rules (test/kubeproxy/kubeproxy.py) for two ClusterIP Services, port 80 -> 8080:

    bench-a  10.96.47.20  -> srv  on node-a (client and backend on one node)
    bench-b  10.96.47.21  -> srvb on node-b (across the wire; second figure)

Clients on node-a: `cli` (no policy selects it: not egress-isolated) and `iso`
(egress-isolated; its policy allows app in (srv, srvb) on 8080). The backends
are not isolated. Configurations, measured in the same run, in interleaved
rounds (a b c d, then d c b a, ...):

  a  plain         both signetd stopped, every pod's and node's signet table
                   deleted: kube-proxy's rules only (client `iso`)
  b  signet        signetd --services judge, client `cli`: its Service
                   connections are not queued at the node
  c  signet judge  the same signetd, client `iso`: every new Service connection
                   goes through node-a's NFQUEUE 3473 (inet signet_node)
  d  judge, no flows   as c with signetd --no-flows

test/bench/bench_connect times connect() (SYN, SYN-ACK, ACK) from the client's
netns and closes with RST: N sequential connects (latency p50/p90/p99, rate),
then 4 concurrent clients (total rate). Per configuration the figures are the
median over the rounds, and the ratios to plain. Also shown: how many of the
connections node-a's judge counted (status.services.connections) per
configuration. Prints numbers only; the one check is that no connect failed.
Exits 77 (SKIP, loudly) without root, iptables-restore/-save, nft or the
reference CNI plugins. About 30 s.
"""
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "integration"))
sys.path.insert(0, str(HERE.parent / "kubeproxy"))
import harness  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_SVC_ROUNDS", "6"))
N_SERIAL = int(os.environ.get("BENCH_SVC_CONNECTIONS", "1500"))
N_PARALLEL = int(os.environ.get("BENCH_SVC_PARALLEL_CONNECTIONS", "3000"))
N_WARMUP = 100
PARALLEL = 4
SVC_PORT = 80
SERVICES = {"a": ("bench-a", "10.96.47.20", "srv"), "b": ("bench-b", "10.96.47.21", "srvb")}

COMMAND = shlex.join([sys.executable] + sys.argv)


def log(msg=""):
    print(msg, flush=True)


def body(t: harness.Test, run: harness.Run):
    log(f"command: {COMMAND}")
    harness.require_root_and_tools("ip", "nft", "sysctl", "iptables-restore", "iptables-save")
    import kubeproxy  # noqa: E402
    import twonode  # noqa: E402
    from twonode import NODE_A, NODE_B, NS, PORT  # noqa: E402

    bins = harness.require_signet_binaries(t)
    tool = harness.build_dir() / "test" / "bench" / "bench_connect"
    t.require("bench_connect is built", tool.exists(), str(tool))
    p = harness.sh(str(bins["signetd"]), "--help", check=False)
    t.require("signetd knows --node-netns and --services", "--node-netns" in p.stdout and "--services" in p.stdout)
    no_flows = "--skip-no-flows" not in sys.argv
    cross = "--no-cross-node" not in sys.argv
    t0 = time.monotonic()

    tn = twonode.TwoNodes(t, run, bins, ipv6=False)
    for n in tn.nodes.values():
        n.d.log_level = "info"  # the harness default (debug) would log in the judge's path
    base_flags = ["--services", "judge"]
    tn.start(None, node_netns=True, extra=base_flags)
    tn.objects.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                       "metadata": {"name": "iso-egress", "namespace": NS},
                       "spec": {"podSelector": {"matchLabels": {"app": "iso"}}, "policyTypes": ["Egress"],
                                "egress": [{"to": [{"podSelector": {"matchExpressions": [
                                    {"key": "app", "operator": "In", "values": ["srv", "srvb"]}]}}],
                                    "ports": [{"protocol": "TCP", "port": PORT}]}]}})
    pods = [("cli", NODE_A), ("iso", NODE_A), ("srv", NODE_A)] + ([("srvb", NODE_B)] if cross else [])
    tn.add_pods(pods)
    for p in tn.pods.values():
        t.require(f"pod {p.name} has an IPv4 address", p.ip4, p.result)
    svcs = {k: v for k, v in SERVICES.items() if cross or k == "a"}
    for _, (name, cip, backend) in svcs.items():
        tn.pods[backend].labels["svc"] = name
        tn.objects.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS},
                           "spec": {"type": "ClusterIP", "clusterIP": cip, "clusterIPs": [cip],
                                    "selector": {"svc": name},
                                    "ports": [{"name": "http", "protocol": "TCP", "port": SVC_PORT,
                                               "targetPort": PORT}]}})
    tn.write_view()
    tn.sync()

    for _, (_, _, backend) in svcs.items():
        srv = subprocess.Popen(["ip", "netns", "exec", tn.pods[backend].netns, str(tool), "serve", str(PORT)],
                               stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, start_new_session=True)
        run.own_process(srv, f"bench_connect server in {backend}")
        t.require(f"server ready in {backend}", srv.stdout.readline().strip() == "ready")

    # kube-proxy (iptables mode, through iptables-nft or legacy, whichever is installed) on
    # node-a, where the clients are: DNAT happens there; node-b only routes the backend's side.
    node_a = tn.nodes[NODE_A]
    kp = kubeproxy.KubeProxy("iptables", node_a.netns,
                             kubeproxy.Node(ips=[node_a.gw4, twonode.WIRE4[0]], cluster_cidr="10.244.0.0/16"))
    kp.prepare_node()
    kp.sync([kubeproxy.Service(NS, name, cip, ports=[kubeproxy.ServicePort("http", "TCP", SVC_PORT, PORT)],
                               endpoints={"http": [kubeproxy.Endpoint(tn.pods[backend].ip4, PORT,
                                                                      tn.pods[backend].node.name == NODE_A)]})
             for _, (name, cip, backend) in svcs.items()])
    run.on_cleanup("kube-proxy rules in node-a", kp.remove)
    iptables_mode = kubeproxy.iptables_backend() or "?"

    def svc_counters():
        st = tn.status(NODE_A).get("services") or {}
        c = st.get("connections") or {}
        return st, c.get("allowed", 0), c.get("denied", 0)

    st, _, _ = svc_counters()
    t.require("node-a judges Service connections at the node (status.services.judgedAtNode)",
              st.get("judgedAtNode") is True, st)
    t.require("node-a judges exactly its 1 egress-isolated pod (iso)", st.get("judgedPods") == 1, st)

    # ---- the configurations ---------------------------------------------------------------
    state = {"running": True, "flags": list(base_flags)}

    def signet_tables(netns):
        p = harness.sh("ip", "netns", "exec", netns, "nft", "-j", "list", "tables", check=False)
        try:
            items = json.loads(p.stdout)["nftables"]
        except (json.JSONDecodeError, KeyError):
            return []
        return [(i["table"]["family"], i["table"]["name"]) for i in items
                if "table" in i and i["table"]["name"].startswith("signet")]

    def all_netns():
        return [n.netns for n in tn.nodes.values()] + [p.netns for p in tn.pods.values()]

    def go_plain():
        for n in tn.nodes.values():
            if n.d.running:
                n.d.stop()
        for ns in all_netns():
            for fam, name in signet_tables(ns):
                harness.sh("ip", "netns", "exec", ns, "nft", "delete", "table", fam, name)
        left = {ns: signet_tables(ns) for ns in all_netns()}
        t.require("plain: no signet table left in any pod or node netns", not any(left.values()), left)
        state["running"], state["flags"] = False, None

    def go_signet(flags):
        if state["running"] and state["flags"] == flags:
            return
        tn.start(None, node_netns=True, extra=flags)
        tn.sync()
        deadline = time.monotonic() + 10
        while True:
            st = tn.status(NODE_A).get("services") or {}
            ok = st.get("judgedAtNode") is True and st.get("judgedPods") == 1 and \
                all(signet_tables(ns) for ns in [node_a.netns] + [p.netns for p in tn.pods.values()])
            if ok or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        t.require(f"signetd {' '.join(flags)}: reprogrammed (every pod's table and node-a's signet_node, "
                  f"judging iso)", ok, st)
        state["running"], state["flags"] = True, list(flags)

    configs = [
        ("a", "plain (kube-proxy only)", "iso", go_plain),
        ("b", "signet, client not isolated", "cli", lambda: go_signet(base_flags)),
        ("c", "signet, isolated: judged", "iso", lambda: go_signet(base_flags)),
    ]
    if no_flows:
        configs.append(("d", "judged, signetd --no-flows", "iso", lambda: go_signet(base_flags + ["--no-flows"])))

    failures = {}
    judged = {}

    def connect(client, cip, n, conc):
        p = harness.sh("ip", "netns", "exec", tn.pods[client].netns, str(tool), "connect", cip, str(SVC_PORT),
                       str(n), str(conc), check=False, timeout=120)
        try:
            return json.loads(p.stdout.strip().splitlines()[-1])
        except (json.JSONDecodeError, IndexError):
            t.require(f"bench_connect output ({client} -> {cip})", False, p.stdout + p.stderr)

    results = {}  # (config, svc, kind) -> [result per round]
    for rnd in range(ROUNDS):
        # Alternate the order (a b c d, d c b a, ...): what runs first or last in a round shares out.
        for key, _, client, setup in (configs if rnd % 2 == 0 else configs[::-1]):
            setup()
            for sk, (_, cip, _) in svcs.items():
                before = svc_counters()[1] if state["running"] else None
                connect(client, cip, N_WARMUP, 1)
                for kind, n, conc in (("serial", N_SERIAL, 1), ("parallel", N_PARALLEL, PARALLEL)):
                    r = connect(client, cip, n, conc)
                    results.setdefault((key, sk, kind), []).append(r)
                    failures[(key, sk)] = failures.get((key, sk), 0) + r["failures"]
                    if r["failures"]:
                        t.note(f"round {rnd + 1} {key} -> {SERVICES[sk][0]} {kind}: {json.dumps(r)}")
                if before is not None:
                    judged[(key, sk)] = judged.get((key, sk), 0) + svc_counters()[1] - before
    if not state["running"]:
        go_signet(base_flags)  # leave node-a as the harness found it (signetd up) for the cleanup's CNI DELs
    elapsed = time.monotonic() - t0

    # ---- the table -------------------------------------------------------------------------
    med = lambda rs, f: statistics.median(r[f] for r in rs)  # noqa: E731
    log("")
    log(f"=== connect() through a ClusterIP Service (kube-proxy iptables mode, iptables-{iptables_mode}), "
        f"node-a's client pod -> backend; {ROUNDS} interleaved rounds (" + " ".join(c[0] for c in configs) +
        f", then reversed, ...), median over rounds; {N_SERIAL} sequential connects, then {N_PARALLEL} over {PARALLEL} "
        f"concurrent clients, per round; RST close")
    log(f"    command: {COMMAND}")
    log(f"    signetd: --node-netns NODE_NETNS --services judge [--no-flows] --log-level info (handshake off); "
        f"machine: {os.cpu_count()} CPUs, load average at the end {os.getloadavg()[0]:.2f}; "
        f"total {elapsed:.0f} s")
    for key, label, client, _ in configs:
        log(f"      {key}  {label:<30} client {client}")
    for sk, (name, cip, backend) in svcs.items():
        where = "same node" if tn.pods[backend].node.name == NODE_A else "backend on node-b"
        log("")
        log(f"  Service {NS}/{name} {cip}:{SVC_PORT} -> {backend} :{PORT} ({where})")
        log(f"    {'config':<34} {'p50 µs':>8} {'p90 µs':>8} {'p99 µs':>8} {'seq c/s':>8} "
            f"{f'{PARALLEL}x c/s':>8} {'failed':>6} {'judged':>7}   {'p50/plain':>9} {'seq/plain':>9} "
            f"{f'{PARALLEL}x/plain':>9}")
        base = None
        for key, label, _, _ in configs:
            s, pr = results[(key, sk, "serial")], results[(key, sk, "parallel")]
            row = (med(s, "median_us"), med(s, "p90_us"), med(s, "p99_us"), med(s, "rate"), med(pr, "rate"))
            base = base or row
            jd = judged.get((key, sk))
            log(f"    {key + '  ' + label:<34} {row[0]:8.1f} {row[1]:8.1f} {row[2]:8.1f} {row[3]:8.0f} {row[4]:8.0f} "
                f"{failures[(key, sk)]:6d} {'-' if jd is None else jd:>7}   {row[0] / base[0]:9.2f} "
                f"{row[3] / base[3]:9.2f} {row[4] / base[4]:9.2f}")
        extra = {k: (med(results[(k, sk, 'serial')], 'median_us') - med(results[('a', sk, 'serial')], 'median_us'))
                 for k, _, _, _ in configs if k != "a"}
        log("    added p50 latency vs plain: " + ", ".join(f"{k} {v:+.1f} µs" for k, v in extra.items()))
        log("    per-round p50 µs (drift): " + "; ".join(
            f"{k} " + "/".join(f"{r['median_us']:.0f}" for r in results[(k, sk, 'serial')]) for k, _, _, _ in configs))
    per = ROUNDS * (N_WARMUP + N_SERIAL + N_PARALLEL)
    log(f"    judged = connections node-a's judge allowed (status.services.connections) while the configuration "
        f"ran, of {per} made (all rounds, warm-up included); '-': signetd not running.")
    log("    A few fewer than made: a new SYN whose 4-tuple (client port reused) still has a live conntrack entry in "
        "node-a (an earlier connection's, e.g. from a plain round) that the kernel reopens is not `ct state new`, "
        "so the node table does not queue it.")
    log("")

    total = sum(failures.values())
    t.check(f"no connect failed ({total} failed: " +
            ", ".join(f"{k}/{SERVICES[s][0]} {v}" for (k, s), v in sorted(failures.items())) + ")", total == 0)


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    flags = [a for a in sys.argv[1:] if a.startswith("--")]
    if len(args) != 1 or any(f not in ("--skip-no-flows", "--no-cross-node") for f in flags):
        print("usage: bench_services.py BUILD_DIR [--skip-no-flows] [--no-cross-node]", file=sys.stderr)
        sys.exit(2)
    os.environ["SIGNET_BUILD_DIR"] = str(Path(args[0]).resolve())
    harness.main("bench_services", body)


if __name__ == "__main__":
    main()
