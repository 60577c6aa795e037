#!/usr/bin/python3
"""Flows leave signetd for operators, end to end, checked by real consumers:

* a real InfluxDB 1.x server (Debian's influxd, started here on loopback)
  receives every flow aggregate and pod event signetd exports, with the
  right tags and counts (queried back with InfluxQL); stopped mid-run, it
  gets everything signetd buffered once it is back;
* /metrics on signetd's metrics address passes `promtool check metrics`
  and carries the flows' counters by policy;
* with --audit-log FILE, db's denied connect to api (its SYN retransmitted)
  is exactly one JSON line naming node, direction, both pods, protocol,
  port and the deciding default deny; every line is valid JSON;
* the graph page (/graph) in real headless Chromium draws the pods of the
  run and the allowed (green) and denied (red) edges between them; a
  screenshot is kept in <build>/test-artifacts/graph-e2e.png.

Real parts: netns pods through bridge + host-local + signet, signetd with a
manifest folder, conntrack events and NFLOG in the pods' netns, influxd,
promtool, chromium. Root. Exit 77 (loud) only when a tool is absent."""
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

HERE = Path(__file__).resolve().parent
ALLOWED, DENIED = "#2e7d32", "#c62828"

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Influxd:
    """Debian's influxd 1.x on loopback only, with its data in a temp folder."""

    def __init__(self, run: harness.Run):
        self.run = run
        self.dir = Path(run.mkdtemp("influxd"))
        self.http_port, self.rpc_port = free_port(), free_port()
        self.conf = self.dir / "influxdb.conf"
        self.conf.write_text(harness.influxd_config(self.dir, self.http_port, self.rpc_port))

        self.proc = None

    def start(self):
        self.log = open(self.dir / "influxd.log", "ab")
        self.proc = subprocess.Popen(["/usr/bin/influxd", "-config", str(self.conf)], stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.run.own_process(self.proc, "influxd")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/ping", timeout=1) as r:
                    if r.status == 204:
                        return self
            except OSError:
                time.sleep(0.1)
        raise harness.Fatal("influxd did not answer /ping within 20 s: " +
                            (self.dir / "influxd.log").read_text(errors="replace")[-2000:])

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc:
            self.run.disown_process(self.proc)
        self.proc = None

    def query(self, q: str, db="signet") -> list[dict]:
        url = f"http://127.0.0.1:{self.http_port}/query?" + urllib.parse.urlencode({"db": db, "q": q})
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=10) as r:
                res = json.loads(r.read())["results"][0]
        except urllib.error.HTTPError as e:
            raise harness.Fatal(f"InfluxQL {q!r}: HTTP {e.code}: {e.read()[:500]!r}")
        if "error" in res:
            raise harness.Fatal(f"InfluxQL error for {q!r}: {res['error']}")
        rows = []
        for s in res.get("series", []):
            for v in s["values"]:
                row = dict(zip(s["columns"], v))
                row.update(s.get("tags", {}))
                rows.append(row)
        return rows


def load_metrics_helpers():
    """The Chromium runner and the #signet-drawn reader of the graph page's own test."""
    path = HERE.parent / "metrics" / "test_metrics_http.py"
    spec = importlib.util.spec_from_file_location("signet_graph_page_test", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["signet_graph_page_test"] = mod
    spec.loader.exec_module(mod)
    return mod


def body(t: harness.Test, run: harness.Run):
    harness.require_root_and_tools("ip", "nft")
    for tool in ("/usr/bin/influxd", "/usr/bin/promtool", "/usr/bin/chromium"):
        if not os.access(tool, os.X_OK):
            t.loud(f"{tool} is missing: flows to InfluxDB, /metrics and the graph page are NOT checked "
                   f"(bash scripts/install-deps.sh installs it)")
            raise harness.SkipTest(f"{tool} missing")
    bins = harness.require_signet_binaries(t)
    influx = Influxd(run).start()
    run.on_cleanup("stop influxd", influx.stop)
    influx.query("CREATE DATABASE signet")

    d = harness.Signetd(run, bins, node="obs-node")
    audit_path = Path(run.mkdtemp("audit")) / "denied.jsonl"
    d.extra_args = ["--influxdb", f"http://127.0.0.1:{influx.http_port}/?db=signet&flush=200ms",
                    "--flow-export-interval", "500ms", "--metrics-address", "127.0.0.1:0", "--graph",
                    "--audit-log", str(audit_path)]
    d.start()
    mdir = d.manifest_dir
    objs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}]
    for app in ("web", "api", "db"):
        md = {"name": app, "namespace": "shop", "labels": {"app": app}}
        if app == "api":
            # A Deployment's pod: its ReplicaSet is named <deployment>-<pod-template-hash>.
            md["labels"]["pod-template-hash"] = "5d8c7b9f4"
            md["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api-5d8c7b9f4",
                                      "uid": "0b5e3f4c-0000-4000-8000-000000000001", "controller": True,
                                      "blockOwnerDeletion": True}]
        objs.append({"apiVersion": "v1", "kind": "Pod", "metadata": md,
                     "spec": {"containers": [{"name": "c", "image": "x"}]}})
    objs.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                 "metadata": {"name": "api-from-web", "namespace": "shop"},
                 "spec": {"podSelector": {"matchLabels": {"app": "api"}}, "policyTypes": ["Ingress"],
                          "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                                       "ports": [{"protocol": "TCP", "port": 8080}]}]}})
    (mdir / "objects.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))
    t.require("sync after writing the objects", d.sync().returncode == 0)
    port = d.status()["outputs"]["metricsPort"]
    t.require("metrics listener bound", port > 0)

    net = harness.Network(run, version="1.0.0", signet_socket=d.socket)
    chain = net.chain(["/usr/lib/cni", str(bins["signet"].parent)])
    pods = harness.add_pods(run, chain, "shop", ("web", "api", "db"))
    srv = subprocess.Popen(["ip", "netns", "exec", pods["api"]["netns"], "/usr/bin/python3", "-c", harness.ECHO_SERVER, "8080"],
                           stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    run.own_process(srv, "echo server in api")
    t.require("echo server ready", srv.stdout.readline().strip() == "ready")

    def connect(app, n=4000, timeout="2"):
        return harness.sh("ip", "netns", "exec", pods[app]["netns"], "/usr/bin/python3", "-c", harness.ECHO_CLIENT,
                          pods["api"]["ip"], "8080", str(n), timeout, check=False, timeout=30).stdout.strip()

    for _ in range(3):
        t.equal("web -> api allowed", connect("web"), "ok")
    t.check("db -> api denied", connect("db", timeout="1.2").startswith("fail"))
    # Bytes come with the close record, made when conntrack ends the entry
    # (after TIME_WAIT's two minutes): end them now (docs/flows.md).
    for app in ("web", "api"):
        harness.sh("ip", "netns", "exec", pods[app]["netns"], "conntrack", "-D", "-p", "tcp", "--dport", "8080",
                   check=False)

    def poll(what, fn, seconds=15):
        deadline = time.monotonic() + seconds
        while True:
            got = fn()
            if got or time.monotonic() > deadline:
                return got
            time.sleep(0.3)

    # ---- InfluxDB: flows with their tags and counts, and pod events.
    allowed_q = ("SELECT sum(connections) AS c, sum(bytes_in) AS b FROM signet_flow WHERE local_pod='api' "
                 "AND peer_pod='web' AND verdict='allowed' AND direction='ingress' AND \"policy\"='shop/api-from-web' "
                 "AND proto='TCP' AND port='8080' AND node='obs-node'")
    # The opens may be exported an interval before the closes (with the bytes): wait for both.
    allowed = poll("allowed flows", lambda: [r for r in influx.query(allowed_q) if (r.get("b") or 0) >= 12000]) \
        or influx.query(allowed_q)
    t.check("InfluxDB: the allowed connections web -> api, with their policy", bool(allowed), str(allowed))
    if allowed:
        t.equal("InfluxDB: 3 allowed connections", allowed[0]["c"], 3)
        t.check(f"InfluxDB: bytes into api >= 3 x 4000 ({allowed[0]['b']})", allowed[0]["b"] >= 12000)
    denied = poll("denied flows", lambda: influx.query(
        "SELECT sum(connections) AS c FROM signet_flow WHERE local_pod='api' AND peer_pod='db' "
        "AND verdict='denied' AND \"policy\"='default-deny' AND peer_kind='pod' AND peer_namespace='shop'"))
    t.check("InfluxDB: db's denied attempts, default deny", bool(denied) and denied[0]["c"] >= 1, str(denied))
    starts = poll("pod events", lambda: [r for r in influx.query(
        "SELECT * FROM signet_pod_event WHERE event='start' AND namespace='shop'") if r])
    t.equal("InfluxDB: a start event per pod", sorted(r["pod"] for r in starts), ["api", "db", "web"])
    if starts:
        web = [r for r in starts if r["pod"] == "web"]
        t.check("InfluxDB: start event carries IPs and labels",
                web and web[0]["ips"] == pods["web"]["ip"] and web[0]["labels"] == "app=web", str(web))

    # ---- InfluxDB down: signetd buffers; once it is back, nothing is missing.
    influx.stop()
    for _ in range(4):
        t.equal("web -> api while InfluxDB is down", connect("web"), "ok")
    poll("exporter notices the outage", lambda: d.status()["outputs"]["influxdb"]["batchesFailed"] > 0, 10)
    st = d.status()["outputs"]["influxdb"]
    t.check("exporter: failures counted and points buffered while InfluxDB is down",
            st["batchesFailed"] > 0 and st["buffered"] > 0, json.dumps(st))
    influx.start()
    total = poll("after the outage", lambda: [r for r in influx.query(
        "SELECT sum(connections) AS c FROM signet_flow WHERE local_pod='api' AND peer_pod='web' "
        "AND verdict='allowed'") if r["c"] == 7], 30)
    t.check("InfluxDB after the outage: all 7 allowed connections (3 before, 4 during)", bool(total),
            str(influx.query("SELECT sum(connections) AS c FROM signet_flow WHERE local_pod='api' AND "
                             "peer_pod='web' AND verdict='allowed'")))
    st = d.status()["outputs"]["influxdb"]
    t.equal("exporter: nothing dropped", st["dropped"], 0)

    # ---- /metrics: promtool, and the counters by policy.
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    p = subprocess.run(["/usr/bin/promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    t.check("promtool check metrics: no problems", p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(),
            p.stdout + p.stderr)
    # Workload labels, none that kube-prometheus sets itself (namespace, pod, node).
    api = 'local_namespace="shop",local_workload_kind="Deployment",local_workload="api",direction="ingress"'
    want = f'signet_flow_connections_total{{{api},verdict="denied",policy="default-deny"}}'
    t.check("/metrics: api's denied connections by policy, labelled by its Deployment", want in text, text[-3000:])
    want = f'signet_flow_connections_total{{{api},verdict="allowed",policy="shop/api-from-web"}} 7'
    t.check("/metrics: api's 7 allowed connections by policy", want in text, text[-3000:])
    want = ('signet_flow_connections_total{local_namespace="shop",local_workload_kind="Pod",local_workload="web",'
            'direction="egress",verdict="allowed",policy="none"}')
    t.check("/metrics: a pod no controller owns is its own workload", want in text, text[-3000:])
    samples = [l for l in text.splitlines() if l and not l.startswith("#")]
    clashing = [l for l in samples if "{" in l and
                {"namespace", "pod", "node"} & set(re.findall(r'[{,]([a-zA-Z_]\w*)="', l.split("}", 1)[0]))]
    t.equal("/metrics: no namespace, pod or node label (kube-prometheus' target labels)", clashing, [])
    t.check("/metrics: no pod names without --metrics-pod-labels", "local_pod=" not in text)
    t.check("/metrics: the programming latency histogram", "signet_nft_program_seconds_count" in text)
    t.check("/metrics: the exporter's buffer", "signet_influxdb_buffered_points" in text)
    # New series (issue #15): CNI ADD latency, process_*, the audit log's counters.
    adds = [l for l in samples if l.startswith("signet_cni_add_seconds_count ")]
    t.check("/metrics: the CNI ADD latency histogram counts the 3 ADDs",
            adds and float(adds[0].split()[1]) >= 3, str(adds))
    t.check("/metrics: the CNI ADD latency histogram has its buckets",
            'signet_cni_add_seconds_bucket{le="+Inf"}' in text)
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_virtual_memory_bytes",
                 "process_open_fds", "process_max_fds", "process_start_time_seconds"):
        got = [l for l in samples if l.startswith(name + " ")]
        t.check(f"/metrics: {name}", got and float(got[0].split()[1]) > 0, str(got))
    t.check("/metrics: audit log lines written", any(l.startswith("signet_audit_log_lines_total ") and
                                                     float(l.split()[1]) >= 1 for l in samples))
    t.check("/metrics: audit log drops by reason", 'signet_audit_log_dropped_total{reason="buffer_full"} 0' in text)

    # ---- The audit log: one line for db's denied connect, valid JSON throughout.
    lines = audit_path.read_text().splitlines() if audit_path.exists() else []
    parsed = []
    for l in lines:
        try:
            parsed.append(json.loads(l))
        except ValueError:
            t.check(f"audit log: a line that is not JSON: {l[:200]!r}", False)
    t.note(f"audit log: {len(lines)} line(s)")
    from_db = [r for r in parsed if r.get("remote", {}).get("pod") == "db"]
    t.check("audit log: exactly one line for db's denied connect (its SYN retransmission folded)",
            len(from_db) == 1, "\n".join(lines)[:3000])
    if from_db:
        r = from_db[0]
        t.equal("audit log: node", r.get("node"), "obs-node")
        t.equal("audit log: direction", r.get("direction"), "ingress")
        t.equal("audit log: verdict", r.get("verdict"), "denied")
        t.equal("audit log: deciding policy", (r.get("policy"), r.get("rule")), ("default-deny", -1))
        t.equal("audit log: local pod and workload", r.get("local"),
                {"namespace": "shop", "pod": "api", "workloadKind": "Deployment", "workload": "api"})
        t.equal("audit log: remote pod", (r["remote"].get("kind"), r["remote"].get("namespace"),
                                          r["remote"].get("address")), ("pod", "shop", pods["db"]["ip"]))
        t.equal("audit log: protocol and port", (r.get("protocol"), r.get("port")), ("TCP", 8080))
        t.equal("audit log: destination", r.get("dst"), f'{pods["api"]["ip"]}:8080')
        t.check("audit log: time is RFC 3339 UTC", str(r.get("time", "")).endswith("Z") and "T" in r.get("time", ""))
    t.check("audit log: only denied connections", all(r.get("verdict") == "denied" for r in parsed))

    # ---- The graph page in headless Chromium.
    g = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/graph", timeout=5).read())
    ids = {p["id"] for p in g["pods"]}
    t.check("graph JSON: the three pods", {"shop/web", "shop/api", "shop/db"} <= ids, json.dumps(g)[:1500])
    edges = {e["id"]: e for e in g["edges"]}
    t.equal("graph JSON: web -> api allowed", edges.get("shop/web>shop/api", {}).get("verdict"), "allowed")
    t.equal("graph JSON: db -> api denied", edges.get("shop/db>shop/api", {}).get("verdict"), "denied")
    helpers = load_metrics_helpers()
    chrome = helpers.Chromium(t, run)
    r = chrome(f"http://127.0.0.1:{port}/graph", "--virtual-time-budget=7000", "--dump-dom", "--window-size=1280,900")
    t.require("chromium --dump-dom", r.returncode == 0 and "<body" in r.stdout, r.stderr[-2000:])
    _, lines = helpers.drawn_of(r.stdout)
    drawn = "\n".join(lines)
    for pod in ("shop/web", "shop/api", "shop/db"):
        t.check(f"graph page: pod {pod} drawn in namespace shop", f"node {pod} parent=shop" in drawn, drawn[:2000])
    web_edge = [l for l in lines if l.startswith("edge shop/web>shop/api ")]
    db_edge = [l for l in lines if l.startswith("edge shop/db>shop/api ")]
    t.check("graph page: web -> api drawn in the allowed colour", web_edge and f"color={ALLOWED}" in web_edge[0],
            drawn[:2000])
    t.check("graph page: db -> api drawn in the denied colour", db_edge and f"color={DENIED}" in db_edge[0],
            drawn[:2000])
    art = Path(os.environ["SIGNET_BUILD_DIR"]) / "test-artifacts"
    art.mkdir(parents=True, exist_ok=True)
    shot = art / "graph-e2e.png"
    r = chrome(f"http://127.0.0.1:{port}/graph", "--virtual-time-budget=5000", "--window-size=1280,900",
               f"--screenshot={shot}", "--hide-scrollbars")
    t.check("graph page screenshot saved", r.returncode == 0 and shot.is_file() and shot.stat().st_size > 5000,
            r.stderr[-1500:])
    t.note(f"screenshot: {shot}")

    # ---- A pod stops: its stop event reaches InfluxDB.
    chain.delete(pods["db"]["cid"], pods["db"]["path"], "eth0", harness.k8s_args("shop", "db"), pods["db"]["result"])
    stops = poll("stop event", lambda: influx.query(
        "SELECT * FROM signet_pod_event WHERE event='stop' AND pod='db'"))
    t.check("InfluxDB: db's stop event", bool(stops), str(stops))
    # Its workload (the pod itself) had no other pod on the node: its series went with it.
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    t.check("/metrics: db's series gone with its last pod", 'local_workload="db"' not in text, text[-2000:])
    t.check("/metrics: api's series stay", 'local_workload="api"' in text, text[-2000:])


if __name__ == "__main__":
    harness.main("test_observability", body)
