#!/usr/bin/python3
"""Datapath benchmark: signetd with a real manifest folder and real pods.

bench_datapath.py BUILD_DIR

Synthetic cluster (the shape of bench_policy.cpp): 50 namespaces, 5,000 Pod
objects, 1,000 NetworkPolicies (podSelector, namespaceSelector, both, ipBlock
with except, port ranges, named ports), written as a few multi-document JSON
List files in signetd's manifest folder. 100 local pods are network namespaces
created through the real CNI chain (bridge + host-local + signet) whose
namespace/name match Pod objects.

Prints: (a) registration time of the 100 pods, (b) a full resync after a
signetd restart, (c) the incremental cost of one Pod object appearing
elsewhere (20 times), (d) signetd's memory, and iperf3 TCP throughput
between two pods with signet enforcing vs. two pods on a plain bridge, and
(bench_flows.py) connection setup: plain vs. signetd --no-flows vs. the
default with flows recorded (added p50, sequential and parallel rate ratios,
flow records lost).

A benchmark: it prints figures and asserts no timings. It exits non-zero only
when something is broken (a sync fails, a pod is not programmed, ...).
Everything it creates is removed by harness.Run.

BENCH_DATAPATH_TABLES_ONLY=1 stops after (d) (no throughput, no
connection setup); BENCH_DATAPATH_SIGNETD=PATH runs another signetd binary
(before/after comparisons); BENCH_DATAPATH_INCREMENTAL=N changes (c)'s 20.
"""
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "integration"))
sys.path.insert(0, str(HERE))
import benchlib  # noqa: E402
import harness  # noqa: E402

NAMESPACES, PODS, POLICIES, LOCAL = 50, 5000, 1000, 100
INCREMENTAL = int(os.environ.get("BENCH_DATAPATH_INCREMENTAL", "20"))
ROUNDS, SECONDS = 6, 2  # iperf3: rounds of one run each, seconds per run
NODE = "bench-node"
MAX_FILE = 4 * 1024 * 1024
NS_LABEL = "kubernetes.io/metadata.name"
ENVS = ["prod", "staging", "dev"]



def writes_of(dp: dict) -> int:
    """Every batch written to a pod's table: whole replacements plus membership-only updates."""
    return dp["tableWrites"] + dp.get("setUpdates", 0)

def log(msg=""):
    print(msg, flush=True)


def ns_name(n):
    return f"ns{n}"


def ns_env(n):
    return "monitoring" if n % 10 == 9 else ENVS[n % 3]


class Rng:
    """Deterministic, tiny LCG (no dependence on Python's random across versions)."""

    def __init__(self, seed):
        self.s = seed

    def __call__(self, n):
        self.s = (self.s * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        return (self.s >> 33) % n


def local_index(i):
    """Pod object index of local pod i: spread over every namespace."""
    return i * (PODS // LOCAL) + (i % NAMESPACES)


def pod_object(ns, name, labels, *, node, ip=None, http_port=8080):
    o = {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": name, "namespace": ns, "labels": labels, "uid": f"{ns}-{name}"},
         "spec": {"nodeName": node, "containers": [{
             "name": "c", "image": "x",
             "ports": [{"name": "http", "containerPort": http_port, "protocol": "TCP"},
                       {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]}]},
         "status": {"phase": "Running"}}
    if ip:
        o["status"]["podIP"] = ip
        o["status"]["podIPs"] = [{"ip": ip}]
    return o


def make_pods(rng, local_set):
    out = []
    for i in range(PODS):
        ns = i % NAMESPACES
        labels = {"app": f"app{rng(10)}", "tier": ["fe", "be", "db"][rng(3)]}
        if rng(4) == 0:
            labels["canary"] = "true"
        local = i in local_set
        ip = None if local else f"10.{96 + i // 65536}.{i // 256 % 256}.{i % 256}"
        out.append(pod_object(ns_name(ns), f"pod{i}", labels, node=NODE if local else f"node{i % 50}",
                              ip=ip, http_port=80 if rng(5) == 0 else 8080))
    return out


def sel(labels=None, exprs=None):
    s = {}
    if labels:
        s["matchLabels"] = labels
    if exprs:
        s["matchExpressions"] = exprs
    return s


def make_policy(i, rng):
    ns = i % NAMESPACES
    app = lambda: f"app{rng(10)}"  # noqa: E731
    spec = {}
    k = i % 8
    if k == 0:    # default deny ingress
        spec = {"podSelector": {}, "policyTypes": ["Ingress"]}
    elif k == 1:  # same-namespace app to app on a number
        spec = {"podSelector": sel({"app": app()}), "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": sel({"app": app()})}],
                             "ports": [{"protocol": "TCP", "port": 8080}]}]}
    elif k == 2:  # frontends of some team's namespaces, named port (both selectors)
        spec = {"podSelector": sel({"tier": "be"}), "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": sel({"tier": "fe"}),
                                       "namespaceSelector": sel({"team": f"t{rng(5)}"})}],
                             "ports": [{"protocol": "TCP", "port": "http"}]}]}
    elif k == 3:  # egress to a namespace by name, named port
        spec = {"podSelector": sel({"app": app()}), "policyTypes": ["Egress"],
                "egress": [{"to": [{"podSelector": sel({"tier": "db"}),
                                    "namespaceSelector": sel({NS_LABEL: ns_name(rng(NAMESPACES))})}],
                            "ports": [{"protocol": "TCP", "port": "http"},
                                      {"protocol": "TCP", "port": 5432}]}]}
    elif k == 4:  # outside world with except, a port range
        spec = {"podSelector": sel({"tier": "fe"}), "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}},
                                      {"ipBlock": {"cidr": "::/0", "except": ["fd00::/8"]}}],
                             "ports": [{"protocol": "TCP", "port": 443},
                                       {"protocol": "TCP", "port": 30000, "endPort": 32767}]}]}
    elif k == 5:  # monitoring namespaces scrape metrics (namespaceSelector only)
        spec = {"podSelector": {}, "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"namespaceSelector": sel({"env": "monitoring"})}],
                             "ports": [{"protocol": "TCP", "port": "metrics"}]}]}
    elif k == 6:  # egress DNS anywhere + same namespace
        spec = {"podSelector": sel({"app": app()}), "policyTypes": ["Egress"],
                "egress": [{"ports": [{"protocol": "UDP", "port": 53}]},
                           {"to": [{"podSelector": {}}]}]}
    else:         # expressions: canaries from prod/staging namespaces
        spec = {"podSelector": sel({"app": app()}), "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": sel(exprs=[{"key": "canary", "operator": "Exists"}]),
                                       "namespaceSelector": sel(exprs=[{"key": "env", "operator": "In",
                                                                        "values": ["prod", "staging"]}])}]}]}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": f"np{i}", "namespace": ns_name(ns)}, "spec": spec}


def write_list(path: Path, items) -> int:
    data = json.dumps({"apiVersion": "v1", "kind": "List", "items": items}, separators=(",", ":"))
    if len(data) >= MAX_FILE:
        raise harness.Fatal(f"{path.name} is {len(data)} bytes, over the 4 MiB limit")
    path.write_text(data)
    return len(data)


APPLIED = re.compile(r"source version \d+ \(.*\) applied in ([0-9.]+) ms"
                     r"(?: \(compiler ([0-9.]+) ms, \d+ table\(s\) written in ([0-9.]+) ms\))?")


def last_applied_ms(d):
    """(total, compiler, table writes) in ms as signetd logged them for its
    latest source change, or None."""
    last = None
    for line in d.log_path().read_text(errors="replace").splitlines():
        m = APPLIED.search(line)
        if m:
            last = tuple(float(g) if g else 0.0 for g in m.groups())
    return last


def settle(what, limit=30.0):
    """Waits until the machine is quiet (the kernel tears network namespaces
    down in the background for seconds after a test deletes many), so that a
    timing is not taken against another test's leftovers."""
    start = time.monotonic()
    idle = benchlib.settle(limit=limit, idle=0.9)
    log(f"    (before {what}: machine {idle * 100:.0f}% idle after {time.monotonic() - start:.1f} s)")


def pct(xs, p):
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def ms(x):
    return f"{x * 1000:.1f} ms"


def proc_mem(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0])
    return out


def mem_str(pid):
    m = proc_mem(pid)
    return f"VmRSS {m['VmRSS'] / 1024:.1f} MiB, VmHWM {m['VmHWM'] / 1024:.1f} MiB"


def must(t: harness.Test, what, cond, detail=None):
    """Quiet in loops: a FAIL line (and a stop) only when cond is false."""
    if not cond:
        t.require(what, cond, detail)


def body(t: harness.Test, run: harness.Run):
    harness.require_root_and_tools("ip", "nft", "iperf3")
    bins = harness.require_signet_binaries(t)
    if os.environ.get("BENCH_DATAPATH_SIGNETD"):  # another signetd (e.g. an older commit's), same cluster
        bins = dict(bins, signetd=Path(os.environ["BENCH_DATAPATH_SIGNETD"]))
        log(f"signetd: {bins['signetd']}")
    cni_path = ["/usr/lib/cni", str(bins["signet"].parent)]
    d = harness.Signetd(run, bins, node=NODE, log_level="info")
    mdir = d.manifest_dir

    # ---- the synthetic cluster -------------------------------------------
    rng = Rng(42)
    local_set = {local_index(i) for i in range(LOCAL)}
    namespaces = [{"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": ns_name(n), "labels": {NS_LABEL: ns_name(n), "team": f"t{n % 5}",
                                                               "env": ns_env(n)}}}
                  for n in range(NAMESPACES)]
    pods = make_pods(rng, local_set)
    policies = [make_policy(i, rng) for i in range(POLICIES)]
    # iperf3 pair on the signet network: the server admits only the client.
    perf = [{"apiVersion": "v1", "kind": "Namespace",
             "metadata": {"name": "perf", "labels": {NS_LABEL: "perf"}}},
            pod_object("perf", "iperf-server", {"app": "iperf-server"}, node=NODE),
            pod_object("perf", "iperf-client", {"app": "iperf-client"}, node=NODE),
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
             "metadata": {"name": "iperf-allow-client", "namespace": "perf"},
             "spec": {"podSelector": sel({"app": "iperf-server"}), "policyTypes": ["Ingress"],
                      "ingress": [{"from": [{"podSelector": sel({"app": "iperf-client"})}],
                                   "ports": [{"protocol": "TCP", "port": 5201}]}]}}]
    sizes = {}
    sizes["00-namespaces.json"] = write_list(mdir / "00-namespaces.json", namespaces + perf)
    for k in range(4):
        f = f"10-pods-{k}.json"
        sizes[f] = write_list(mdir / f, pods[k * PODS // 4:(k + 1) * PODS // 4])
    for k in range(2):
        f = f"20-policies-{k}.json"
        sizes[f] = write_list(mdir / f, policies[k * POLICIES // 2:(k + 1) * POLICIES // 2])
    log(f"cluster: {NAMESPACES} namespaces, {PODS} pods, {POLICIES} policies (+1 namespace, 2 pods, "
        f"1 policy for iperf3) in {len(sizes)} files, largest {max(sizes.values()) / 1048576:.2f} MiB")

    t0 = time.monotonic()
    d.start(timeout=120)
    load_s = time.monotonic() - t0
    p = d.sync("120s")
    t.require("initial sync", p.returncode == 0, p.stdout + p.stderr)
    st = d.status()
    log(f"signetd start -> /readyz 200 with the cluster loaded: {ms(load_s)}  (no local pods yet)")
    log(f"signetd memory, cluster loaded, no pods: {mem_str(d.proc.pid)}")

    # ---- (a) register 100 pods through the chain ---------------------------
    net = harness.Network(run, version="1.0.0", signet_socket=d.socket)
    chain = net.chain(cni_path)
    signet_conf = net.conflist["plugins"][-1]
    signet_path = chain.plugin_path("signet")
    signet_ver = chain._version_for(signet_path)
    add_s, plugin_s = [], []
    local = {}  # "ns/name" -> (netns, ip)

    def add_pod(ns, name):
        nsname, path = run.netns_add()
        cid = run.container_id()
        args = harness.k8s_args(ns, name, run.uid(), cid)
        t0 = time.monotonic()
        prev, _ = chain.add(cid, path, "eth0", args, upto=1)  # bridge + host-local
        t1 = time.monotonic()
        c = harness.cni_exec(signet_path, "ADD", chain._conf(signet_conf, prev, signet_ver),
                             **chain._env(cid, path, "eth0", args))
        t2 = time.monotonic()
        if not c.ok:
            raise harness.Fatal(f"signet ADD {ns}/{name}: {c!r}")
        local[f"{ns}/{name}"] = (nsname, harness.result_ips(c.json)[0].split("/")[0])
        return t2 - t0, t2 - t1

    tw0 = time.monotonic()
    for i in range(LOCAL):
        idx = local_index(i)
        a, s = add_pod(ns_name(idx % NAMESPACES), f"pod{idx}")
        add_s.append(a)
        plugin_s.append(s)
    reg_total = time.monotonic() - tw0
    p = d.sync("60s")
    t.require("sync after registering the pods", p.returncode == 0, p.stdout + p.stderr)
    pods_json = d.pods()
    t.require("100 pods registered, each with its Pod object",
              sum(1 for r in pods_json if r.get("hasObject")) == LOCAL, len(pods_json))
    st = d.status()
    dp = st.get("datapath", {})
    t.require("every pod programmed, none failing",
              dp.get("programmedAttachments") == LOCAL and not dp.get("failing"), dp)

    # iperf3 pods (registered now so they do not count in (a))
    add_pod("perf", "iperf-server")
    add_pod("perf", "iperf-client")
    t.require("sync after the iperf3 pods", d.sync("60s").returncode == 0)

    log("")
    log(f"(a) register {LOCAL} pods (sequential CNI ADD bridge+host-local+signet): total {reg_total:.2f} s")
    log(f"    whole chain per pod: median {ms(statistics.median(add_s))}, p90 {ms(pct(add_s, 90))}, "
        f"max {ms(max(add_s))}")
    log(f"    signet plugin alone: median {ms(statistics.median(plugin_s))}, p90 {ms(pct(plugin_s, 90))}, "
        f"max {ms(max(plugin_s))}")
    dp = d.status()["datapath"]
    log(f"    datapath: tableWrites {dp['tableWrites']}, setUpdates {dp.get('setUpdates', 0)}, unchangedSkips {dp['unchangedSkips']}, "
        f"selectors {dp['selectors']}, compilerBytes {dp['compilerBytes']}")
    log(f"    signetd memory: {mem_str(d.proc.pid)}")

    # ---- (b) full resync after a restart ---------------------------------
    d.stop()
    t0 = time.monotonic()
    d.start(timeout=120)
    ready_s = time.monotonic() - t0
    p = d.sync("120s")
    synced_s = time.monotonic() - t0
    t.require("sync after the restart", p.returncode == 0, p.stdout + p.stderr)
    st = d.status()
    dp = st["datapath"]
    t.require("every pod programmed after the restart",
              dp.get("programmedAttachments") == LOCAL + 2 and not dp.get("failing"), dp)
    log("")
    log(f"(b) full resync (SIGTERM, start again; {LOCAL + 2} local pods):")
    log(f"    start -> /readyz 200: {ms(ready_s)}; start -> signetctl sync returned: {ms(synced_s)}")
    log(f"    datapath after: tableWrites {dp['tableWrites']}, setUpdates {dp.get('setUpdates', 0)}, unchangedSkips {dp['unchangedSkips']}, "
        f"programmedAttachments {dp['programmedAttachments']}")
    log(f"    signetd memory: {mem_str(d.proc.pid)}")

    # ---- (c) incremental: one Pod object appears elsewhere ---------------
    settle("the incremental measurement")
    base = []
    for _ in range(5):
        t0 = time.monotonic()
        must(t, "no-change sync", d.sync().returncode == 0)
        base.append(time.monotonic() - t0)
    prod_ns = [n for n in range(NAMESPACES) if ns_env(n) in ("prod", "staging")]
    inc, writes, applied = [], [], []
    dp0 = d.status()["datapath"]
    tw_start = writes_of(dp0)
    for k in range(INCREMENTAL):
        ns = ns_name(prod_ns[k % len(prod_ns)])
        obj = pod_object(ns, f"new{k}", {"app": f"app{k % 10}", "tier": "fe", "canary": "true"},
                         node="node-elsewhere", ip=f"10.250.0.{k + 1}")
        before = writes_of(d.status()["datapath"])
        t0 = time.monotonic()
        write_list(mdir / f"30-new{k}.json", [obj])
        p = d.sync()
        dt = time.monotonic() - t0
        must(t, f"sync after new pod {k}", p.returncode == 0, p.stdout + p.stderr)
        after = writes_of(d.status()["datapath"])
        inc.append(dt)
        applied.append(last_applied_ms(d))
        writes.append(after - before)
    dp1 = d.status()["datapath"]
    tw_end = writes_of(dp1)
    log("")
    log(f"(c) incremental: one new Pod object elsewhere (tier=fe, canary, prod/staging ns), "
        f"{INCREMENTAL} times; file write -> signetctl sync returned:")
    log(f"    median {ms(statistics.median(inc))}, p90 {ms(pct(inc, 90))}, max {ms(max(inc))} "
        f"(a no-change signetctl sync: median {ms(statistics.median(base))})")
    got = [a for a in applied if a is not None]
    must(t, "signetd logged the time of each change", len(got) == len(applied))
    if got:
        total = [g[0] for g in got]
        log(f"    inside signetd, object change -> every affected table written: median {statistics.median(total):.2f} ms, "
            f"p90 {pct(total, 90):.2f} ms, max {max(total):.2f} ms (target < 10 ms)")
        log(f"      of which compiler update: median {statistics.median(g[1] for g in got):.2f} ms; "
            f"table writes: median {statistics.median(g[2] for g in got):.2f} ms")
    log(f"    tables rewritten per change: median {statistics.median(writes)}, min {min(writes)}, "
        f"max {max(writes)} (of {LOCAL + 2}); table writes (whole + set-only) {tw_start} -> {tw_end}")
    log(f"    over the {INCREMENTAL} changes: whole-table writes {dp1['tableWrites'] - dp0['tableWrites']}, "
        f"set-only updates {dp1.get('setUpdates', 0) - dp0.get('setUpdates', 0)}, "
        f"conntrack checks {dp1.get('conntrackChecks', 0) - dp0.get('conntrackChecks', 0)}")

    # ---- (d) memory ------------------------------------------------------
    log("")
    log(f"(d) signetd memory at the end: {mem_str(d.proc.pid)} "
        f"(compilerBytes {d.status()['datapath']['compilerBytes']})")

    if os.environ.get("BENCH_DATAPATH_TABLES_ONLY"):  # (a) to (d) only: no iperf3, no bench_flows
        d.stop()
        return

    # ---- throughput --------------------------------------------------------
    plain = harness.Network(run, version="1.0.0", with_signet=False)
    pchain = plain.chain(cni_path)
    pl = {}
    for role in ("server", "client"):
        nsname, path = run.netns_add()
        cid = run.container_id()
        res, _ = pchain.add(cid, path, "eth0", harness.k8s_args("plain", role, run.uid(), cid))
        pl[role] = (nsname, harness.result_ips(res)[0].split("/")[0])
    pairs = {"signet": (local["perf/iperf-server"], local["perf/iperf-client"]),
             "plain": (pl["server"], pl["client"])}
    for label, ((srv_ns, _), _) in pairs.items():
        sp = subprocess.Popen(["ip", "netns", "exec", srv_ns, "iperf3", "-s", "-p", "5201", "--forceflush"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              text=True, start_new_session=True)
        run.own_process(sp, f"iperf3 server ({label})")
        line = sp.stdout.readline()
        while line and "listening" not in line.lower():
            line = sp.stdout.readline()
        t.require(f"iperf3 server ready ({label})", bool(line))
    rates = {"signet": [], "plain": []}
    settle("the throughput measurement")
    for rnd in range(ROUNDS):
        # Alternate which goes first, so neither side always gets the warmer machine.
        for label in (("signet", "plain") if rnd % 2 == 0 else ("plain", "signet")):
            (_, srv_ip), (cli_ns, _) = pairs[label]
            p = harness.sh("ip", "netns", "exec", cli_ns, "iperf3", "-c", srv_ip, "-p", "5201", "-t", str(SECONDS),
                           "-J", check=False, timeout=30)
            must(t, f"iperf3 client ({label})", p.returncode == 0, p.stdout[-1500:] + p.stderr)
            rates[label].append(json.loads(p.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9)
    # The policy really is enforced on the signet pair: a pod that is not the client is refused.
    other_ns = local[f"ns1/pod{local_index(1)}"][0]
    p = harness.sh("ip", "netns", "exec", other_ns, "iperf3", "-c", pairs["signet"][0][1], "-p", "5201",
                   "-t", "1", "--connect-timeout", "1000", check=False, timeout=30)
    t.check("enforcement: a pod that is not the client cannot reach the iperf3 server", p.returncode != 0,
            p.stdout[-500:])
    log("")
    log(f"throughput, iperf3 TCP, {SECONDS} s per run, {ROUNDS} rounds, order alternating (Gbit/s):")
    for label in ("signet", "plain"):
        log(f"    {label:6s} ({'bridge+host-local+signet, policy admits the client' if label == 'signet' else 'bridge+host-local only'}): "
            + ", ".join(f"{r:.2f}" for r in rates[label]) + f"  mean {statistics.mean(rates[label]):.2f}")
    ratio = statistics.mean(rates["signet"]) / statistics.mean(rates["plain"])
    per_round = [a / b for a, b in zip(rates["signet"], rates["plain"])]
    log(f"    ratio signet/plain: {ratio:.3f} of the means; per round median {statistics.median(per_round):.3f} "
        f"(min {min(per_round):.3f}, max {max(per_round):.3f}); target >= 0.97")
    log("")

    # ---- connection setup: what nftables and flow recording add (issue #14) ----
    # A signetd of its own (this one is stopped first: one signetd per node),
    # restarted between --no-flows and the default; bench_flows.py prints the
    # rows "nftables only (--no-flows)" and "default (flows recorded)".
    d.stop()
    import bench_flows  # noqa: E402
    bench_flows.compare(t, run, bins, rounds=int(os.environ.get("BENCH_FLOWS_ROUNDS", "3")),
                        n_serial=int(os.environ.get("BENCH_FLOWS_CONNECTIONS", "2000")),
                        n_parallel=int(os.environ.get("BENCH_FLOWS_PARALLEL_CONNECTIONS", "4000")))
    log("")


def main():
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        print("usage: bench_datapath.py BUILD_DIR", file=sys.stderr)
        sys.exit(2)
    os.environ["SIGNET_BUILD_DIR"] = str(Path(sys.argv[1]).resolve())
    if shutil.which("iperf3") is None:
        print("iperf3 is missing: apt-get install -y iperf3", file=sys.stderr)
    harness.main("bench_datapath", body)


if __name__ == "__main__":
    main()
