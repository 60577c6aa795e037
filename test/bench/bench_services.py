#!/usr/bin/python3
"""Connection setup through a ClusterIP Service: kube-proxy alone vs. signet's
judge after the translation (issue #12; docs/policy.md, "Services").

bench_services.py BUILD_DIR [--skip-no-flows] [--no-cross-node] [--skip-handshake]

The two-node harness (test/integration/twonode.py: node netns with the real CNI
chain, a signetd per node told its node netns) with kube-proxy's iptables-mode
rules (test/kubeproxy/kubeproxy.py) for two ClusterIP Services, port 80 -> 8080:

    bench-a  10.96.47.20  -> srv  on node-a (client and backend on one node)
    bench-b  10.96.47.21  -> srvb on node-b (across the wire; second figure)

Clients on node-a: `cli` (no policy selects it: not egress-isolated) and `iso`
(egress-isolated; its policy allows app in (srv, srvb) on 8080). The backends
are not isolated. Configurations, measured in the same run, in interleaved
rounds (a b c d e f, then f e d c b a, ...):

  a  plain         both signetd stopped, every pod's and node's signet table
                   deleted: kube-proxy's rules only (client `iso`)
  b  signet        signetd --services judge, client `cli`: its Service
                   connections are not queued at the node
  c  signet judge  the same signetd, client `iso`: every new Service connection
                   goes through node-a's NFQUEUE 3473 (inet signet_node)
  d  judge, no flows   as c with signetd --no-flows
  e  handshake enforce signetd --handshake enforce --services judge (node
                   credentials from one authority, --authority dir:...),
                   client `iso`: every new Service connection is deferred in
                   the pod's netns, judged at node-a's NFQUEUE 3473 which adds
                   the client token for the translated connection, verified at
                   the backend's node (node-a for bench-a, node-b for bench-b),
                   the SYN-ACK's server token verified and stripped at node-a,
                   and the final ACK's proof added there and checked by the
                   backend (docs/handshake.md, "Tokens through Services")
  f  enforce, no flows as e with signetd --no-flows

test/bench/bench_connect times connect() (SYN, SYN-ACK, ACK) from the client's
netns and closes with RST: N sequential connects (latency p50/p90/p99, rate),
then 4 concurrent clients (total rate). Per configuration the figures are the
median over the rounds, and the ratios to plain. Also shown: how many of the
connections node-a's judge counted (status.services.connections) per
configuration; for e and f the handshake's own counters of both nodes
(signetctl status -o json -> handshake: counters, refused, drops), summed over
the configuration's measurement blocks (read before and after each block, so
signetd restarts between configurations do not matter). After the tables, one
line per Service: the added p50 vs kube-proxy only without the handshake (c)
and with it (e). Prints numbers; the checks are that no connect failed (a
failure is also printed loudly) and that no handshake segment was lost
(handshake.drops.lost 0 on both nodes). --skip-handshake (or a signetd without
--handshake) leaves out e and f. Exits 77 (SKIP, loudly) without root,
iptables-restore/-save, nft or the reference CNI plugins. About 50 s
(BENCH_SVC_ROUNDS, BENCH_SVC_CONNECTIONS, BENCH_SVC_PARALLEL_CONNECTIONS).
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
# Six configurations (two with the handshake, ~3x plain per connect): 1200 + 2400 per round keep the run
# near 50 s, and under 90 s on 2 busy CPUs (1500 + 3000 took 80 s at load 5).
N_SERIAL = int(os.environ.get("BENCH_SVC_CONNECTIONS", "1200"))
N_PARALLEL = int(os.environ.get("BENCH_SVC_PARALLEL_CONNECTIONS", "2400"))
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
    handshake = "--skip-handshake" not in sys.argv
    if handshake and not twonode.signetd_knows_handshake(bins):
        log("!!! signetd has no --handshake: configurations e and f (handshake enforce) left out")
        handshake = False
    t0 = time.monotonic()
    load0 = " ".join(f"{x:.2f}" for x in os.getloadavg())

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
    state = {"running": True, "mode": None, "flags": list(base_flags)}
    pods_on_a = sum(1 for p in tn.pods.values() if p.node.name == NODE_A)

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
        state["running"], state["mode"], state["flags"] = False, None, None

    def go_signet(flags, mode=None):
        if state["running"] and state["flags"] == flags and state["mode"] == mode:
            return
        tn.start(mode, node_netns=True, extra=flags)
        tn.sync()
        # Without the handshake node-a judges its one egress-isolated pod (iso); with it, every
        # local pod (each one's Service connections get their client token at the node).
        want = pods_on_a if mode else 1
        deadline = time.monotonic() + 10
        while True:
            st = tn.status(NODE_A).get("services") or {}
            hs = {n: twonode.handshake_of(tn.status(n)).get("mode") for n in tn.nodes} if mode else {}
            ok = st.get("judgedAtNode") is True and st.get("judgedPods") == want and \
                all(m == mode for m in hs.values()) and \
                all(signet_tables(ns) for ns in [node_a.netns] + [p.netns for p in tn.pods.values()])
            if ok or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        t.require(f"signetd {'--handshake ' + mode + ' ' if mode else ''}{' '.join(flags)}: reprogrammed "
                  f"(every pod's table and node-a's signet_node, judging {want} pod(s))", ok,
                  {"services": st, "handshake modes": hs})
        state["running"], state["mode"], state["flags"] = True, mode, list(flags)

    configs = [
        ("a", "plain (kube-proxy only)", "iso", go_plain),
        ("b", "signet, client not isolated", "cli", lambda: go_signet(base_flags)),
        ("c", "signet, isolated: judged", "iso", lambda: go_signet(base_flags)),
    ]
    if no_flows:
        configs.append(("d", "judged, signetd --no-flows", "iso", lambda: go_signet(base_flags + ["--no-flows"])))
    hs_keys = set()
    if handshake:
        configs.append(("e", "handshake enforce, isolated", "iso", lambda: go_signet(base_flags, "enforce")))
        hs_keys.add("e")
        if no_flows:
            configs.append(("f", "enforce, signetd --no-flows", "iso",
                            lambda: go_signet(base_flags + ["--no-flows"], "enforce")))
            hs_keys.add("f")

    failures = {}
    judged = {}
    hs_delta = {}  # (config, node) -> {"counters": {..}, "refused": {..}, "drops": {..}}: summed per block
    hs_restarted = []

    def hs_snapshot():
        return {n: twonode.handshake_of(tn.status(n)) for n in tn.nodes}

    def hs_add(key, before, after):
        for n in tn.nodes:
            acc = hs_delta.setdefault((key, n), {"counters": {}, "refused": {}, "drops": {}})
            for part in acc:
                b, a = before[n].get(part) or {}, after[n].get(part) or {}
                for k, v in a.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        d = v - (b.get(k) or 0)
                        if d < 0:  # counters never go down but across a restart
                            hs_restarted.append(f"{key} {n} {part}.{k} {b.get(k)} -> {v}")
                            d = v
                        acc[part][k] = acc[part].get(k, 0) + d

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
                hs_before = hs_snapshot() if key in hs_keys else None
                connect(client, cip, N_WARMUP, 1)
                for kind, n, conc in (("serial", N_SERIAL, 1), ("parallel", N_PARALLEL, PARALLEL)):
                    r = connect(client, cip, n, conc)
                    results.setdefault((key, sk, kind), []).append(r)
                    failures[(key, sk)] = failures.get((key, sk), 0) + r["failures"]
                    if r["failures"]:
                        t.note(f"round {rnd + 1} {key} -> {SERVICES[sk][0]} {kind}: {json.dumps(r)}")
                if before is not None:
                    judged[(key, sk)] = judged.get((key, sk), 0) + svc_counters()[1] - before
                if hs_before is not None:
                    hs_add(key, hs_before, hs_snapshot())
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
    log(f"    signetd: --node-netns NODE_NETNS --authority dir:... --services judge [--no-flows] --log-level info; "
        f"a-d without --handshake (off), e-f --handshake enforce; "
        f"machine: {os.cpu_count()} CPUs, load average (1/5/15 min) at the start {load0}, at the end "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; total {elapsed:.0f} s")
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
        f"ran, of {per} made (all rounds, warm-up included); '-': signetd not running. The node's table queues "
        f"every SYN of a judged pod's translated connection, so a few more than made are SYNs judged twice "
        f"(retransmitted).")

    # ---- failed connects, the handshake's counters, the summary ---------------------------------
    log("")
    per_cfg = {key: sum(v for (k, _), v in failures.items() if k == key) for key, _, _, _ in configs}
    log("  failed connects per configuration (must be 0): " +
        ", ".join(f"{k} {v}" for k, v in per_cfg.items()) + f"  (of {per * len(svcs)} each)")
    for k, v in per_cfg.items():
        if v:
            log(f"  !!!!! FAILED CONNECTS: configuration {k} had {v} failed connect(s): " +
                ", ".join(f"{SERVICES[s][0]} {n}" for (kk, s), n in sorted(failures.items()) if kk == k and n) +
                " !!!!!")
    lost_total = 0
    for key, label, _, _ in configs:
        if key not in hs_keys:
            continue
        log(f"  handshake counters, {key} ({label}), summed over its measurement blocks "
            f"(signetctl status -o json -> handshake):")
        for n in tn.nodes:
            acc = hs_delta.get((key, n)) or {"counters": {}, "refused": {}, "drops": {}}
            c, dr = acc["counters"], acc["drops"]
            lost_total += dr.get("lost", 0)
            refused = {k: v for k, v in acc["refused"].items() if v}
            log(f"    {n}: deferred to node {c.get('deferred_to_node', 0)}, tokens added {c.get('tokens_added', 0)} "
                f"(MAC {c.get('tokens_added_mac', 0)}, signed {c.get('tokens_added_signed', 0)}), verified "
                f"{c.get('verified', 0)} (MAC {c.get('verified_mac', 0)}, signed {c.get('verified_signed', 0)}), "
                f"admitted on proven identity {c.get('accepted_authenticated', 0)} / by address "
                f"{c.get('accepted_by_address', 0)}, proofs sent {c.get('proofs_sent', 0)}, verified "
                f"{c.get('proofs_verified', 0)}, denied {c.get('denied', 0)}, refused {json.dumps(refused)}")
            log(f"    {n}: drops lost {dr.get('lost', 0)} (kernel_queue_full {dr.get('kernel_queue_full', 0)}, "
                f"kernel_socket_full {dr.get('kernel_socket_full', 0)}, socket_overruns {dr.get('socket_overruns', 0)}, "
                f"verdict_errors {dr.get('verdict_errors', 0)}, handler_errors {dr.get('handler_errors', 0)}, "
                f"rewrite_failed {dr.get('rewrite_failed', 0)}, limits {dr.get('limits', 0)}, internal "
                f"{dr.get('internal', 0)}, held_for_proof {dr.get('held_for_proof', 0)}), refused "
                f"{dr.get('refused', 0)}, denied {dr.get('denied', 0)}, discarded {dr.get('discarded', 0)}, "
                f"malformed_messages {dr.get('malformed_messages', 0)}")
            if dr.get("lost", 0):
                log(f"  !!!!! HANDSHAKE SEGMENTS LOST: {key} on {n}: handshake.drops.lost {dr['lost']} !!!!!")
    if hs_restarted:
        log("  !!!!! a handshake counter went down during a measurement block (signetd restarted?): " +
            "; ".join(hs_restarted[:6]))
    log("")
    for sk, (name, cip, backend) in svcs.items():
        p50 = {k: med(results[(k, sk, "serial")], "median_us") for k, _, _, _ in configs}
        line = f"  Service {NS}/{name}: added p50 vs kube-proxy only: without handshake {p50['c'] - p50['a']:+.1f} µs (c)"
        if "e" in p50:
            line += f", with handshake enforce {p50['e'] - p50['a']:+.1f} µs (e)"
        log(line)
    log("")

    total = sum(failures.values())
    t.check(f"no connect failed ({total} failed: " +
            ", ".join(f"{k}/{SERVICES[s][0]} {v}" for (k, s), v in sorted(failures.items())) + ")", total == 0)
    if hs_keys:
        t.check(f"no handshake segment lost (handshake.drops.lost summed over "
                f"{', '.join(sorted(hs_keys))} and both nodes: {lost_total})", lost_total == 0)
        t.check("handshake counters did not go down within a measurement block", not hs_restarted, hs_restarted[:6])


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    flags = [a for a in sys.argv[1:] if a.startswith("--")]
    if len(args) != 1 or any(f not in ("--skip-no-flows", "--no-cross-node", "--skip-handshake") for f in flags):
        print("usage: bench_services.py BUILD_DIR [--skip-no-flows] [--no-cross-node] [--skip-handshake]",
              file=sys.stderr)
        sys.exit(2)
    os.environ["SIGNET_BUILD_DIR"] = str(Path(args[0]).resolve())
    harness.main("bench_services", body)


if __name__ == "__main__":
    main()
