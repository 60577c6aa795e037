#!/usr/bin/python3
"""Memory benchmark: signetd's RSS with 10,000 Pod objects (issue #14).

bench_memory.py BUILD_DIR

The synthetic cluster of bench_datapath.py scaled to BENCH_MEMORY_PODS Pod
objects (default 10,000) in 50 namespaces with BENCH_MEMORY_POLICIES
NetworkPolicies (default 2,000), written as JSON List files in signetd's
manifest folder; signetd runs as an operator would: the identity handshake
on (`--handshake permissive`, a built-in authority made by `signetctl
authority init`, `--allow-ca-key` on this one machine) and flows recorded
(the default). BENCH_MEMORY_LOCAL local pods (default 20) are network
namespaces registered through the real CNI chain (bridge + host-local +
signet), each matching a Pod object, so that their tables are compiled and
programmed; a pair of them then makes BENCH_MEMORY_CONNECTIONS TCP
connections (default 2,000) so that flow records exist.

Prints VmRSS and VmHWM (from /proc/PID/status) at each step against the
64 MiB target, and the controller's own accounting (compilerBytes). A
benchmark: it prints figures and asserts nothing about them; it exits
non-zero only when something is broken. BENCH_MEMORY_SIGNETD=PATH runs
another signetd binary (e.g. an older commit's) with the same cluster.
"""
import os
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "integration"))
sys.path.insert(0, str(HERE))
import harness  # noqa: E402
import bench_datapath as bd  # noqa: E402

PODS = int(os.environ.get("BENCH_MEMORY_PODS", "10000"))
POLICIES = int(os.environ.get("BENCH_MEMORY_POLICIES", "2000"))
LOCAL = int(os.environ.get("BENCH_MEMORY_LOCAL", "20"))
CONNECTIONS = int(os.environ.get("BENCH_MEMORY_CONNECTIONS", "2000"))
TARGET_MIB = 64
NODE = "bench-node"

CONNECT = r"""
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ok = 0
for i in range(n):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((host, port)); ok += 1
    except OSError:
        pass
    s.close()
print(ok, flush=True)
"""

SERVE = r"""
import socket
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("0.0.0.0", 7000)); l.listen(4096)
print("listening", flush=True)
while True:
    c, _ = l.accept(); c.close()
"""


def mem(pid):
    m = bd.proc_mem(pid)
    rss, hwm = m["VmRSS"] / 1024, m["VmHWM"] / 1024
    return rss, f"VmRSS {rss:.1f} MiB, VmHWM {hwm:.1f} MiB (target {TARGET_MIB} MiB: " \
                f"{'within' if rss <= TARGET_MIB else 'OVER'})"


def body(t: harness.Test, run: harness.Run):
    harness.require_root_and_tools("ip", "nft")
    bins = harness.require_signet_binaries(t)
    if os.environ.get("BENCH_MEMORY_SIGNETD"):
        bins = dict(bins, signetd=Path(os.environ["BENCH_MEMORY_SIGNETD"]))
    cni_path = ["/usr/lib/cni", str(bins["signet"].parent)]
    ca = Path(run.mkdtemp("ca")) / "authority"
    p = harness.sh(bins["signetctl"], "authority", "init", str(ca), "--trust-domain", "bench.test", check=False)
    t.require("signetctl authority init", p.returncode == 0, p.stdout + p.stderr)

    d = harness.Signetd(run, bins, node=NODE, log_level="info")
    d.extra_args = ["--authority", f"dir:{ca}", "--allow-ca-key", "--handshake", "permissive"]
    mdir = d.manifest_dir

    bd.PODS, bd.LOCAL = PODS, LOCAL
    rng = bd.Rng(42)
    local_set = {bd.local_index(i) for i in range(LOCAL)}
    namespaces = [{"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": bd.ns_name(n), "labels": {bd.NS_LABEL: bd.ns_name(n), "team": f"t{n % 5}",
                                                                  "env": bd.ns_env(n)}}}
                  for n in range(bd.NAMESPACES)]
    pods = bd.make_pods(rng, local_set)
    policies = [bd.make_policy(i, rng) for i in range(POLICIES)]
    conn = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "conn", "labels": {bd.NS_LABEL: "conn"}}},
            bd.pod_object("conn", "server", {"app": "server"}, node=NODE),
            bd.pod_object("conn", "client", {"app": "client"}, node=NODE),
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
             "metadata": {"name": "allow-client", "namespace": "conn"},
             "spec": {"podSelector": bd.sel({"app": "server"}), "policyTypes": ["Ingress"],
                      "ingress": [{"from": [{"podSelector": bd.sel({"app": "client"})}],
                                   "ports": [{"protocol": "TCP", "port": 7000}]}]}}]
    bd.write_list(mdir / "00-namespaces.json", namespaces + conn)
    files = max(1, PODS // 2000)
    for k in range(files):
        bd.write_list(mdir / f"10-pods-{k}.json", pods[k * PODS // files:(k + 1) * PODS // files])
    pfiles = max(1, POLICIES // 500)
    for k in range(pfiles):
        bd.write_list(mdir / f"20-policies-{k}.json", policies[k * POLICIES // pfiles:(k + 1) * POLICIES // pfiles])
    bd.log(f"cluster: {bd.NAMESPACES} namespaces, {PODS} pods, {POLICIES} policies; signetd "
           f"{bins['signetd']} --handshake permissive, flows recorded")

    t0 = time.monotonic()
    d.start(timeout=300)
    p = d.sync("300s")
    t.require("initial sync", p.returncode == 0, p.stdout + p.stderr)
    bd.log(f"loaded and synced in {time.monotonic() - t0:.1f} s")
    pid = d.proc.pid
    _, s = mem(pid)
    bd.log(f"(1) cluster loaded, no local pods:        {s}")

    net = harness.Network(run, version="1.0.0", signet_socket=d.socket)
    chain = net.chain(cni_path)
    local = {}

    def add_pod(ns, name):
        nsname, path = run.netns_add()
        cid = run.container_id()
        res, _ = chain.add(cid, path, "eth0", harness.k8s_args(ns, name, run.uid(), cid))
        local[f"{ns}/{name}"] = (nsname, harness.result_ips(res)[0].split("/")[0])

    for i in range(LOCAL):
        idx = bd.local_index(i)
        add_pod(bd.ns_name(idx % bd.NAMESPACES), f"pod{idx}")
    add_pod("conn", "server")
    add_pod("conn", "client")
    p = d.sync("120s")
    t.require("sync after registering the pods", p.returncode == 0, p.stdout + p.stderr)
    dp = d.status().get("datapath", {})
    t.require("every pod programmed, none failing",
              dp.get("programmedAttachments") == LOCAL + 2 and not dp.get("failing"), dp)
    _, s = mem(pid)
    bd.log(f"(2) {LOCAL + 2} local pods registered:        {s}")

    (srv_ns, srv_ip), (cli_ns, _) = local["conn/server"], local["conn/client"]
    import subprocess
    sp = subprocess.Popen(["ip", "netns", "exec", srv_ns, sys.executable, "-c", SERVE], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    run.own_process(sp, "tcp server")
    t.require("server listening", "listening" in sp.stdout.readline())
    p = harness.sh("ip", "netns", "exec", cli_ns, sys.executable, "-c", CONNECT, srv_ip, "7000", str(CONNECTIONS),
                   check=False, timeout=600)
    ok = int(p.stdout.strip() or 0) if p.returncode == 0 else 0
    t.require("connections made", ok > 0, p.stdout + p.stderr)
    time.sleep(1)
    st = d.status()
    _, s = mem(pid)
    bd.log(f"(3) after {ok} of {CONNECTIONS} connections (flows recorded): {s}")
    bd.log(f"    compilerBytes {st.get('datapath', {}).get('compilerBytes')}, "
           f"flows {st.get('flows', {}).get('records', st.get('flows', {}).get('total', '?'))}")
    d.stop()


def main():
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        print("usage: bench_memory.py BUILD_DIR", file=sys.stderr)
        sys.exit(2)
    os.environ["SIGNET_BUILD_DIR"] = str(Path(sys.argv[1]).resolve())
    if shutil.which("ip") is None:
        print("ip (iproute2) is missing", file=sys.stderr)
    harness.main("bench_memory", body)


if __name__ == "__main__":
    main()
