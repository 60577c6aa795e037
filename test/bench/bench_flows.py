#!/usr/bin/python3
"""What flow recording costs a connection: plain vs. signet without and with flows.

bench_flows.py BUILD_DIR

Two pairs of netns pods through the real CNI chain, side by side in one run:
  * plain:  bridge + host-local, no signet;
  * signet: bridge + host-local + signet; the server pod is isolated by a
            NetworkPolicy that admits the client by label. One signetd,
            restarted between configurations:
              "nftables only (--no-flows)": signetd --no-flows;
              "default (flows recorded)":   signetd as installed (flows on).
test/bench/bench_connect times connect() (SYN, SYN-ACK, ACK) from the client
and closes with RST. Each round measures every configuration once, in a
rotating order; the figures are medians over the rounds. Prints per
configuration: connect p50/p99, sequential conn/s, parallel conn/s
(PARALLEL clients), and for signet the added p50 and both ratios to plain,
and the flow-loss counters (status.flows.lost: events the kernel dropped at
signetd's sockets, truncated datagrams, ENOBUFS reports) with the records made. Asserts no timing: only that no connection
failed and, with flows on, that the open records of the measured
connections were all made and none was lost.

Also called by bench_datapath.py (the same rows, fewer rounds).

More configurations of the signet pair, each a signetd binary and environment
(e.g. the signetd of an older commit, to compare before/after in one run):
  BENCH_FLOWS_VARIANTS='LABEL|SIGNETD|VAR=VALUE,VAR=VALUE;LABEL|SIGNETD|'
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
import harness  # noqa: E402
sys.path.insert(0, str(HERE))
import benchlib  # noqa: E402

PORT = 7000
PARALLEL = 8
NO_FLOWS = "nftables only (--no-flows)"
FLOWS = "default (flows recorded)"


def log(msg=""):
    print(msg, flush=True)


def settle():
    benchlib.settle(limit=3.0, idle=0.85, window=0.3)


def flow_loss(st: dict) -> dict:
    """The flow-loss counters of signetd's status (0 when absent)."""
    f = st.get("flows", {})
    lost = f.get("lost", {})
    return {"lost": lost.get("total", f.get("dropped", {}).get("kernelOverruns", 0)),
            "records": f.get("records", 0), "ctEvents": f.get("conntrackEvents", 0)}


def compare(t: harness.Test, run: harness.Run, bins: dict, *, rounds: int, n_serial: int, n_parallel: int,
            node="bench-flows"):
    """Measures plain / --no-flows / flows (see the module's doc) and prints the rows."""
    tool = harness.build_dir() / "test" / "bench" / "bench_connect"
    t.require("bench_connect is built", tool.exists(), str(tool))
    d = harness.Signetd(run, bins, node=node, log_level="info")
    d.start()
    objs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "cbench"}}]
    for app in ("client", "server"):
        objs.append({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": app, "namespace": "cbench", "labels": {"app": app}},
                     "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]}})
    objs.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                 "metadata": {"name": "server-from-client", "namespace": "cbench"},
                 "spec": {"podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"],
                          "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                                       "ports": [{"protocol": "TCP", "port": PORT}]}]}})
    (d.manifest_dir / "objects.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))
    t.require("sync", d.sync().returncode == 0)

    pairs = {}
    for label, net in (("plain", harness.Network(run, version="1.0.0", with_signet=False)),
                       ("signet", harness.Network(run, version="1.0.0", signet_socket=d.socket))):
        chain = net.chain(["/usr/lib/cni", str(bins["signet"].parent)])
        pods = harness.add_pods(run, chain, "cbench", ("client", "server"))
        srv = subprocess.Popen(["ip", "netns", "exec", pods["server"]["netns"], str(tool), "serve", str(PORT)],
                               stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, start_new_session=True)
        run.own_process(srv, f"bench_connect server ({label})")
        t.require(f"{label}: server ready", srv.stdout.readline().strip() == "ready")
        pairs[label] = pods

    mode = {"now": None}
    own_bins = dict(d.bins)
    variants = {}  # label -> (signetd binary, environment)
    for spec in filter(None, os.environ.get("BENCH_FLOWS_VARIANTS", "").split(";")):
        label, binary, env = (spec.split("|") + ["", ""])[:3]
        variants[label] = (binary, dict(kv.split("=", 1) for kv in env.split(",") if "=" in kv))

    def signetd_with(conf):
        """conf: False (--no-flows), True (flows, this build) or a variant's label."""
        if mode["now"] == conf:
            return
        d.stop()
        d.extra_args = ["--no-flows"] if conf is False else []
        d.bins = dict(own_bins)
        env = {}
        if conf in variants:
            d.bins["signetd"] = Path(variants[conf][0])
            env = variants[conf][1]
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            d.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        t.require("sync after the restart", d.sync().returncode == 0)
        mode["now"] = conf

    def connect(pair, n, conc):
        pods = pairs[pair]
        p = harness.sh("ip", "netns", "exec", pods["client"]["netns"], str(tool), "connect",
                       pods["server"]["ip"], str(PORT), str(n), str(conc), check=False, timeout=300)
        try:
            return json.loads(p.stdout.strip().splitlines()[-1])
        except (json.JSONDecodeError, IndexError):
            t.require(f"{pair}: bench_connect output", False, p.stdout + p.stderr)

    configs = {"plain": ("plain", None), NO_FLOWS: ("signet", False), FLOWS: ("signet", True)}
    configs.update({label: ("signet", label) for label in variants})
    results = {c: {"serial": [], "parallel": []} for c in configs}
    failures = {c: 0 for c in configs}
    loss = {c: 0 for c, (_, fl) in configs.items() if fl is not None and fl is not False}
    opens_short = []

    for c, (pair, fl) in configs.items():  # warm up
        if fl is not None:
            signetd_with(fl)
        connect(pair, 200, 1)

    order = list(configs)
    for rnd in range(rounds):
        # Rotate the order: no configuration always runs first or last.
        for c in order[rnd % len(order):] + order[:rnd % len(order)]:
            pair, fl = configs[c]
            if fl is not None:
                signetd_with(fl)
            before = flow_loss(d.status()) if fl is not False and fl is not None else None
            for kind, n, conc in (("serial", n_serial, 1), ("parallel", n_parallel, PARALLEL)):
                settle()
                r = connect(pair, n, conc)
                failures[c] += r["failures"]
                results[c][kind].append(r)
            if before is not None:
                # Every measured connection opened in both pods' netns: 2 open
                # records each (egress at the client, ingress at the server).
                want = 2 * (n_serial + n_parallel)
                deadline = time.monotonic() + 5
                while True:
                    after = flow_loss(d.status())
                    made = after["records"] - before["records"]
                    if made >= want or time.monotonic() > deadline:
                        break
                    time.sleep(0.1)
                loss[c] += after["lost"] - before["lost"]
                if made < want:
                    opens_short.append((c, rnd, want, made))

    log("")
    log(f"=== connection setup: plain vs. signet (--no-flows / flows), {rounds} rounds, order rotating; "
        f"{n_serial} sequential + {n_parallel} with {PARALLEL} clients per round; medians over rounds")
    log(f"    command: {shlex.join([sys.executable] + sys.argv)}")
    log(f"    {'':<34} {'p50 µs':>8} {'p99 µs':>8} {'seq conn/s':>11} {'par conn/s':>11} "
        f"{'added p50':>10} {'seq ratio':>10} {'par ratio':>10}")
    med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
    base = results["plain"]
    out = {}
    for c in configs:
        rs = results[c]
        p50, p99 = med(rs["serial"], "median_us"), med(rs["serial"], "p99_us")
        sr, pr = med(rs["serial"], "rate"), med(rs["parallel"], "rate")
        # Ratios per round (same moment of the machine), then the median.
        s_ratio = statistics.median(a["rate"] / b["rate"] for a, b in zip(rs["serial"], base["serial"]))
        p_ratio = statistics.median(a["rate"] / b["rate"] for a, b in zip(rs["parallel"], base["parallel"]))
        added = statistics.median(a["median_us"] - b["median_us"] for a, b in zip(rs["serial"], base["serial"]))
        out[c] = {"p50": p50, "added_p50": added, "seq_ratio": s_ratio, "par_ratio": p_ratio}
        extra = "" if c == "plain" else f" {added:+9.1f}µ {s_ratio:10.2f} {p_ratio:10.2f}"
        log(f"    {c:<34} {p50:8.1f} {p99:8.1f} {sr:11.0f} {pr:11.0f}{extra}")
    # What flow recording adds on top of nftables alone (same pair, same rounds).
    fs, ns_ = results[FLOWS], results[NO_FLOWS]
    log(f"    flows over nftables only: p50 "
        f"{statistics.median(a['median_us'] - b['median_us'] for a, b in zip(fs['serial'], ns_['serial'])):+.1f} µs, "
        f"sequential rate x{statistics.median(a['rate'] / b['rate'] for a, b in zip(fs['serial'], ns_['serial'])):.2f}, "
        f"parallel rate x{statistics.median(a['rate'] / b['rate'] for a, b in zip(fs['parallel'], ns_['parallel'])):.2f}")
    log(f"    per-round serial p50 (µs): " + "; ".join(
        f"{c}: " + ", ".join(f"{r['median_us']:.1f}" for r in results[c]["serial"]) for c in configs))
    log(f"    failed connects: {json.dumps(failures)}")
    log(f"    flow records lost (status.flows.lost.total, over the measured rounds): {json.dumps(loss)}; "
        f"rounds with records missing: {opens_short or 'none'}")
    st = d.status().get("flows", {})
    log(f"    flows status ({'the last configuration' if mode['now'] is not True else 'default'}): "
        f"{json.dumps({k: st.get(k) for k in ('records', 'conntrackEvents', 'lost', 'reads')})}")
    t.check("no connect failed", all(v == 0 for v in failures.values()), json.dumps(failures))
    return out


def body(t: harness.Test, run: harness.Run):
    harness.require_root_and_tools("ip", "nft")
    bins = harness.require_signet_binaries(t)
    compare(t, run, bins, rounds=int(os.environ.get("BENCH_FLOWS_ROUNDS", "5")),
            n_serial=int(os.environ.get("BENCH_FLOWS_CONNECTIONS", "3000")),
            n_parallel=int(os.environ.get("BENCH_FLOWS_PARALLEL_CONNECTIONS", "6000")))


def main():
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        print("usage: bench_flows.py BUILD_DIR", file=sys.stderr)
        sys.exit(2)
    os.environ["SIGNET_BUILD_DIR"] = str(Path(sys.argv[1]).resolve())
    harness.main("bench_flows", body)


if __name__ == "__main__":
    main()
