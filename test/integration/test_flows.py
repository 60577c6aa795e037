#!/usr/bin/python3
"""Flow records end to end: real connections between netns pods, allowed and
denied, seen by signetd through each pod netns's conntrack events (with byte
accounting) and the deny rules' NFLOG, and shown by `signetctl flows` with
the peer pod, the verdict and the policy rule (or default deny) that decided.

Real parts: netns pods through bridge + host-local + signet, signetd with a
manifest folder, nftables, conntrack events and nfnetlink_log in the pods' netns."""
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

PAYLOAD = 5000


def body(t: harness.Test, run: harness.Run):
    harness.require_root_and_tools("ip", "nft")
    bins = harness.require_signet_binaries(t)
    d = harness.Signetd(run, bins, node="flows-node")
    # Denied connections as JSON lines on stdout (the harness sends stdout and
    # stderr to signetd's log file: the audit lines are the ones that are JSON).
    # Flow series by pod name too (--metrics-pod-labels).
    d.extra_args = ["--audit-log", "stdout", "--metrics-address", "127.0.0.1:0", "--metrics-pod-labels"]
    d.start()
    mdir = d.manifest_dir
    objs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}]
    for app in ("web", "api", "db"):
        objs.append({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": app, "namespace": "shop", "labels": {"app": app}},
                     "spec": {"containers": [{"name": "c", "image": "x"}]}})
    objs.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                 "metadata": {"name": "api-from-web", "namespace": "shop"},
                 "spec": {"podSelector": {"matchLabels": {"app": "api"}}, "policyTypes": ["Ingress"],
                          "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                                       "ports": [{"protocol": "TCP", "port": 8080}]}]}})
    (mdir / "objects.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))
    t.require("sync after writing the objects", d.sync().returncode == 0)

    net = harness.Network(run, version="1.0.0", signet_socket=d.socket)
    chain = net.chain(["/usr/lib/cni", str(bins["signet"].parent)])
    pods = harness.add_pods(run, chain, "shop", ("web", "api", "db"))
    t.note("pods: " + ", ".join(f"{a}={p['ip']}" for a, p in pods.items()))
    st = d.status()
    t.equal("flows: every pod's netns is read", st.get("flows", {}).get("attachments"), 3)
    t.equal("flows: nothing failed to attach", st.get("flows", {}).get("notCollecting"), [])

    srv = subprocess.Popen(["ip", "netns", "exec", pods["api"]["netns"], "/usr/bin/python3", "-c", harness.ECHO_SERVER, "8080"],
                           stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    run.own_process(srv, "echo server in api")
    t.require("echo server ready", srv.stdout.readline().strip() == "ready")

    def connect(app, timeout="2"):
        p = harness.sh("ip", "netns", "exec", pods[app]["netns"], "/usr/bin/python3", "-c", harness.ECHO_CLIENT,
                       pods["api"]["ip"], "8080", str(PAYLOAD), timeout, check=False, timeout=30)
        return p.stdout.strip()

    def end_entries(*apps, port="8080"):
        """A close is recorded when conntrack ends the entry (its DESTROY event
        carries the counters): for a TCP connection closed with FINs, after
        TIME_WAIT's two minutes in conntrack. The test ends the entries now, as
        `conntrack -D` does (docs/flows.md)."""
        for app in apps:
            harness.sh("ip", "netns", "exec", pods[app]["netns"], "conntrack", "-D", "-p", "tcp", "--dport", port,
                       check=False)

    t.equal("web -> api:8080 allowed, echo complete", connect("web"), "ok")
    t.check("db -> api:8080 denied", connect("db", "1.5").startswith("fail"))
    end_entries("web", "api")

    def flows(*args):
        p = d.ctl("flows", "-o", "json", "--limit", "1000", *args)
        t.check(f"signetctl flows {' '.join(args)} exits 0", p.returncode == 0, p.stderr)
        return json.loads(p.stdout)["flows"] if p.returncode == 0 else []

    def find(records, **want):
        out = []
        for r in records:
            ok = True
            for k, v in want.items():
                got = r
                for part in k.split("__"):
                    got = got.get(part) if isinstance(got, dict) else None
                if got != v:
                    ok = False
                    break
            if ok:
                out.append(r)
        return out

    # Events arrive asynchronously (read every 10 ms while a pod is busy; a
    # close is reported when conntrack ends the entry). Poll, bounded.
    deadline = time.monotonic() + 10
    while True:
        recs = flows()
        closed_in = find(recs, event="close", direction="ingress", pod="shop/api", peer__pod="shop/web")
        denied_in = find(recs, event="denied", direction="ingress", pod="shop/api", peer__pod="shop/db")
        if (closed_in and denied_in) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    t.note(f"{len(recs)} flow records")

    opened = find(recs, event="open", direction="ingress", pod="shop/api", peer__pod="shop/web")
    t.check("api's netns: the allowed connection from web was opened", len(opened) >= 1, json.dumps(recs)[:2000])
    if opened:
        o = opened[0]
        t.equal("open: verdict allowed", o["verdict"], "allowed")
        t.equal("open: decided by shop/api-from-web", o["policy"], "shop/api-from-web")
        t.equal("open: rule 0", o["rule"], 0)
        t.equal("open: TCP/8080", (o["proto"], o["port"]), (6, 8080))
        t.equal("open: peer address is web's", o["peer"]["address"], pods["web"]["ip"])
    t.check("api's netns: the connection from web closed", len(closed_in) >= 1, json.dumps(recs)[:2000])
    if closed_in:
        c = closed_in[0]["counts"]
        t.check(f"close: bytes in >= payload ({c['bytesIn']})", c["bytesIn"] >= PAYLOAD, json.dumps(c))
        t.check(f"close: bytes out >= payload echoed ({c['bytesOut']})", c["bytesOut"] >= PAYLOAD, json.dumps(c))
        t.check("close: packets both ways", c["packetsIn"] > 0 and c["packetsOut"] > 0, json.dumps(c))
    egress = find(recs, event="close", direction="egress", pod="shop/web", peer__pod="shop/api")
    t.check("web's netns: its own side of the connection, egress", len(egress) >= 1, json.dumps(recs)[:2000])
    if egress:
        t.equal("web egress: not isolated, policy none", egress[0]["policy"], "none")
        t.check("web egress: bytes out >= payload", egress[0]["counts"]["bytesOut"] >= PAYLOAD)
    t.check("api's netns: db's attempt recorded as denied", len(denied_in) >= 1, json.dumps(recs)[:2000])
    if denied_in:
        x = denied_in[0]
        t.equal("denied: verdict", x["verdict"], "denied")
        t.equal("denied: default deny", x["policy"], "default-deny")
        t.equal("denied: TCP/8080", (x["proto"], x["port"]), (6, 8080))
    t.equal("no allowed record from db", find(recs, pod="shop/api", peer__pod="shop/db", verdict="allowed"), [])

    # The audit log on stdout: one line per denied attempt, however many
    # SYNs it sent (db's connect waited 1.5 s: its SYN was sent again).
    audit = []
    for line in d.log_path().read_text(errors="replace").splitlines():
        if line.startswith('{"time":'):
            try:
                audit.append(json.loads(line))
            except ValueError:
                t.check(f"audit log: a line that is not JSON: {line[:200]!r}", False)
    from_db = [r for r in audit if r.get("remote", {}).get("pod") == "db"]
    t.note(f"audit log: {len(audit)} line(s); denied records of db's attempt: {len(denied_in)}")
    t.check("audit log on stdout: exactly one line for db's denied connect", len(from_db) == 1, json.dumps(audit)[:2000])
    if from_db and denied_in:
        a, x = from_db[0], denied_in[0]
        t.equal("audit log: the flow record's policy and rule", (a["policy"], a["rule"]), (x["policy"], x["rule"]))
        t.equal("audit log: the flow record's addresses", (a["src"], a["dst"]), (x["src"], x["dst"]))
        t.equal("audit log: local pod", (a["local"]["namespace"], a["local"]["pod"]), ("shop", "api"))
        t.equal("audit log: a bare pod is its own workload", (a["local"]["workloadKind"], a["local"]["workload"]),
                ("Pod", "api"))
        t.equal("audit log: node, direction, verdict", (a["node"], a["direction"], a["verdict"]),
                ("flows-node", "ingress", "denied"))
        t.equal("audit log: remote", (a["remote"]["kind"], a["remote"]["namespace"], a["remote"]["address"]),
                ("pod", "shop", pods["db"]["ip"]))
        t.equal("audit log: TCP/8080", (a["protocol"], a["port"]), ("TCP", 8080))

    # /metrics with --metrics-pod-labels: the pod's name besides its workload.
    port = d.status()["outputs"]["metricsPort"]
    text = harness.sh("curl", "-sf", f"http://127.0.0.1:{port}/metrics", check=False).stdout
    want = ('signet_flow_connections_total{local_namespace="shop",local_workload_kind="Pod",local_workload="api",'
            'local_pod="api",direction="ingress",verdict="denied",policy="default-deny"}')
    t.check("/metrics --metrics-pod-labels: local_pod besides the workload", want in text, text[-2000:])

    # Filters.
    only_denied = flows("--verdict", "denied")
    t.check("--verdict denied: only denied records", only_denied and all(r["verdict"] == "denied" for r in only_denied))
    of_db = flows("--pod", "shop/db")
    t.check("--pod shop/db: only records involving db",
            of_db and all("shop/db" in (r["pod"], r["peer"].get("pod")) for r in of_db))
    t.equal("--namespace other: nothing", flows("--namespace", "other"), [])
    p = d.ctl("flows", "--verdict", "maybe")
    t.equal("--verdict maybe: usage error", p.returncode, 2)

    # The text table.
    text = d.ctl("flows").stdout
    t.check("text: header", text.startswith("TIME"), text[:300])
    t.check("text: the denied attempt with its policy", "shop/db -> shop/api" in text and "default-deny" in text,
            text[-1500:])
    t.check("text: the allowed connection with its rule", "shop/web -> shop/api" in text and
            "shop/api-from-web#0" in text, text[-1500:])

    # --follow prints what comes next: the records so far, then the new ones.
    before = max((r["seq"] for r in flows("--pod", "shop/web")), default=0)
    fol = subprocess.Popen([str(bins["signetctl"]), "--socket", str(d.socket), "flows", "--follow", "-o", "json",
                            "--pod", "shop/web"], stdout=subprocess.PIPE, text=True, start_new_session=True)
    run.own_process(fol, "signetctl flows --follow")
    seen = []

    def read_follow():  # every line as it comes (select() on a buffered pipe misses lines already read ahead)
        for line in fol.stdout:
            if line.strip().startswith("{"):
                seen.append(json.loads(line))
    reader = threading.Thread(target=read_follow, daemon=True)
    reader.start()
    time.sleep(0.3)
    t.equal("a second web -> api connection", connect("web"), "ok")
    end_entries("web")
    new_close = lambda: [r for r in list(seen) if r.get("event") == "close" and r.get("seq", 0) > before]
    harness.wait_until(new_close, timeout=8.0, step=0.1)
    fol.terminate()
    reader.join(5)
    t.check("--follow: the records before it, then the new connection's close", new_close()
            and any(r.get("seq", 0) <= before for r in seen), json.dumps(seen)[:1500])

    st = d.status()["flows"]
    t.check("status: records counted", st["records"] >= 5, json.dumps(st))
    t.equal("status: no kernel overruns", st["dropped"]["kernelOverruns"], 0)

    # A bounded load (issue #14): 4,000 connections web -> db (db is not
    # isolated) from 4 concurrent clients, each closed with an RST. Not one
    # may fail, every one gets its open record on both sides, and nothing is
    # lost on the way from the kernel (status.flows.lost).
    tool = harness.build_dir() / "test" / "bench" / "bench_connect"
    t.require("bench_connect is built", tool.exists(), str(tool))
    load_port, n_load = 7000, 4000
    ls = subprocess.Popen(["ip", "netns", "exec", pods["db"]["netns"], str(tool), "serve", str(load_port)],
                          stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    run.own_process(ls, "bench_connect server in db")
    t.require("load server ready", ls.stdout.readline().strip() == "ready")
    lost0 = st.get("lost", {}).get("total")
    t0 = time.monotonic()
    p = harness.sh("ip", "netns", "exec", pods["web"]["netns"], str(tool), "connect", pods["db"]["ip"],
                   str(load_port), str(n_load), "4", check=False, timeout=60)
    r = json.loads(p.stdout.strip().splitlines()[-1]) if p.stdout.strip() else {}
    t.note(f"load: {json.dumps(r)} in {time.monotonic() - t0:.1f} s")
    t.equal("load: no connect failed", r.get("failures"), 0)

    def opens(pod, direction):
        recs = flows("--pod", pod, "--limit", "10000")
        return sum(1 for x in recs if x["event"] == "open" and x["pod"] == pod and x["direction"] == direction
                   and x["port"] == load_port)
    deadline = time.monotonic() + 10
    while True:
        got = (opens("shop/web", "egress"), opens("shop/db", "ingress"))
        if got == (n_load, n_load) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    t.equal("load: an open record per connection, egress at web and ingress at db", got, (n_load, n_load))
    st = d.status()["flows"]
    t.check("load: no flow record lost (status.flows.lost.total 0 before and after)",
            (lost0, st.get("lost", {}).get("total")) == (0, 0), json.dumps(st.get("lost")))
    t.check("load: events read in batches (recvmmsg)", st.get("reads", {}).get("batches", 0) > 0, json.dumps(st))


if __name__ == "__main__":
    harness.main("test_flows", body)
