#!/usr/bin/python3
"""Audit mode (docs/policy.md, "Audit mode"): a namespace labelled
signet.dev/policy-mode=audit with a policy that isolates a pod. A connection
the policy denies succeeds, and is recorded once with verdict audit-denied
and the default deny that would have refused it: in the flow records, on
/metrics and in the audit log (--audit-log). Then one label change switches
the namespace to enforce: the pod's table is rewritten, the established
connection the policy does not allow is cut, a new one fails and is recorded
as denied.

Real parts: netns pods through bridge + host-local + signet, signetd with a
manifest folder, nftables, conntrack and nfnetlink_log in the pods' netns."""
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

# The echo server and the long-lived client of test_enforcement (the same cut to observe).
from test_enforcement import CLIENT, SERVER  # noqa: E402


def objects(mode):
    ns = {"apiVersion": "v1", "kind": "Namespace",
          "metadata": {"name": "shop", "labels": {"signet.dev/policy-mode": mode}}}
    objs = [ns]
    for app in ("web", "api", "db"):
        objs.append({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": app, "namespace": "shop", "labels": {"app": app}},
                     "spec": {"containers": [{"name": "c", "image": "x"}]}})
    objs.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                 "metadata": {"name": "api-from-web", "namespace": "shop"},
                 "spec": {"podSelector": {"matchLabels": {"app": "api"}}, "policyTypes": ["Ingress"],
                          "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                                       "ports": [{"protocol": "TCP", "port": 8080}]}]}})
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": objs})


def body(t: harness.Test, run: harness.Run):
    harness.require_root_and_tools("ip", "nft", "conntrack")
    bins = harness.require_signet_binaries(t)
    d = harness.Signetd(run, bins, node="audit-node")
    d.extra_args = ["--audit-log", "stdout", "--metrics-address", "127.0.0.1:0"]
    d.start()
    mdir = d.manifest_dir
    (mdir / "objects.json").write_text(objects("audit"))
    t.require("sync after writing the objects", d.sync().returncode == 0)

    net = harness.Network(run, version="1.0.0", signet_socket=d.socket)
    chain = net.chain(["/usr/lib/cni", str(bins["signet"].parent)])
    pods = harness.add_pods(run, chain, "shop", ("web", "api", "db"))
    t.note("pods: " + ", ".join(f"{a}={p['ip']}" for a, p in pods.items()))

    st = d.status()
    t.equal("status: node default enforce", st.get("policyMode", {}).get("default"), "enforce")
    t.equal("status: shop audits", st.get("policyMode", {}).get("auditNamespaces"), ["shop"])
    text = d.ctl("status").stdout
    t.check("signetctl status names the audit namespace", "audit: shop" in text, text)
    table = harness.sh("ip", "netns", "exec", pods["api"]["netns"], "nft", "list", "table", "inet", "signet",
                       check=False).stdout
    t.check("api's table logs with the audit prefix", 'prefix "signet-audit ingress"' in table, table)
    t.check("api's table drops nothing by policy", "drop" not in table, table)

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

    def flows(*args):
        p = d.ctl("flows", "-o", "json", "--limit", "1000", *args)
        t.check(f"signetctl flows {' '.join(args)} exits 0", p.returncode == 0, p.stderr)
        return json.loads(p.stdout)["flows"] if p.returncode == 0 else []

    def wait_for(what, fn, secs=10):
        deadline = time.monotonic() + secs
        while True:
            got = fn()
            if got or time.monotonic() > deadline:
                return got
            time.sleep(0.2)

    # explain: the policy's verdict (exit 3: denied), and that audit mode lets it through.
    p = d.ctl("explain", "--from", "shop/db", "--to", "shop/api", "--port", "8080/TCP")
    t.equal("explain db -> api: exit status says the policy's verdict (denied)", p.returncode, 3)
    t.check("explain db -> api: says audit mode allows and records it", "audit mode" in p.stdout, p.stdout)

    # Audit: the connection the policy denies succeeds, and is recorded once.
    db_conn, state = client("db")
    t.equal("audit: db connects to api (the policy would deny it)", state, "connected")
    t.equal("audit: echo over db's connection", ping(db_conn), "ok")
    web_conn, state = client("web")
    t.equal("audit: web connects (allowed by the policy)", state, "connected")

    def audited():
        return [r for r in flows("--verdict", "audit-denied") if r.get("peer", {}).get("pod") == "shop/db"]
    recs = wait_for("the audit-denied record", audited)
    t.equal("audit: exactly one audit-denied record of db's connection", len(recs), 1)
    if recs:
        r = recs[0]
        t.equal("audit-denied record: local pod, direction", (r["pod"], r["direction"]), ("shop/api", "ingress"))
        t.equal("audit-denied record: the default deny that would have refused it", r["policy"], "default-deny")
        t.equal("audit-denied record: TCP/8080", (r["proto"], r["port"]), (6, 8080))
    t.equal("audit: no denied record", [r for r in flows("--verdict", "denied")], [])
    # The connection itself (conntrack) was allowed: its open record says so,
    # with the default deny that would have refused it (docs/policy.md).
    opened = wait_for("db's open record", lambda: [r for r in flows("--pod", "shop/db") if r["event"] == "open"
                                                     and r["pod"] == "shop/api"])
    t.check("audit: db's connection opened, verdict allowed, policy default-deny",
            len(opened) == 1 and (opened[0]["verdict"], opened[0]["policy"]) == ("allowed", "default-deny"), opened)
    t.equal("audit: no audit-denied record of web's connection",
            [r for r in flows("--verdict", "audit-denied") if r.get("peer", {}).get("pod") == "shop/web"], [])

    pol = json.loads(d.ctl("policies", "shop/api", "-o", "json").stdout)
    t.equal("policies shop/api: policy mode audit", pol.get("policyMode"), "audit")
    t.check("policies shop/api: the audit-accept rule counted db's SYN, nothing denied",
            pol["ingress"].get("auditDeniedPackets", 0) >= 1 and pol["ingress"].get("deniedPackets") == 0, pol)
    text = d.ctl("policies", "shop/api").stdout
    t.check("policies text: audited, not denied", "audit-denied" in text and "packets denied" not in text, text)

    port = d.status()["outputs"]["metricsPort"]
    metrics = harness.sh("curl", "-sf", f"http://127.0.0.1:{port}/metrics", check=False).stdout
    line = [m for m in metrics.splitlines() if m.startswith("signet_flow_connections_total{")
            and 'local_workload="api"' in m and 'verdict="audit-denied"' in m]
    t.check("/metrics: signet_flow_connections_total{verdict=\"audit-denied\",policy=\"default-deny\"} 1",
            len(line) == 1 and 'policy="default-deny"' in line[0] and line[0].endswith(" 1"), "\n".join(line))

    def audit_lines():
        out = []
        for ln in d.log_path().read_text(errors="replace").splitlines():
            if ln.startswith('{"time":'):
                out.append(json.loads(ln))
        return out
    lines = wait_for("the audit log line", lambda: [a for a in audit_lines() if a.get("verdict") == "audit-denied"], 5)
    t.equal("audit log: one audit-denied line", len(lines), 1)
    if lines:
        a = lines[0]
        t.equal("audit log: db -> api, default deny",
                (a["remote"].get("pod"), a["local"]["pod"], a["policy"], a["direction"]),
                ("db", "api", "default-deny", "ingress"))

    # Enforce: one label change. The table is rewritten; db's established
    # connection (not allowed by the policy) is cut; web's stays.
    (mdir / "objects.json").write_text(objects("enforce"))
    t.require("sync after the label change", d.sync().returncode == 0)
    t.equal("status: no namespace audits", d.status().get("policyMode", {}).get("auditNamespaces"), [])
    table = harness.sh("ip", "netns", "exec", pods["api"]["netns"], "nft", "list", "table", "inet", "signet",
                       check=False).stdout
    t.check("enforce: api's table drops again", 'prefix "signet-deny ingress"' in table and "drop" in table, table)
    t.equal("policies shop/api: policy mode enforce",
            json.loads(d.ctl("policies", "shop/api", "-o", "json").stdout).get("policyMode"), "enforce")
    got = ping(db_conn)
    t.check("enforce: db's established connection is cut", got in ("fail", "closed"), got)
    t.equal("enforce: web's established connection still echoes", ping(web_conn), "ok")
    t.check("status counts the cut connection", d.status()["datapath"]["cutConnections"] >= 1)
    _, state = client("db")
    t.equal("enforce: a new db connection fails", state.split(" ")[0], "connect-failed")
    denied = wait_for("the denied record",
                      lambda: [r for r in flows("--verdict", "denied") if r.get("peer", {}).get("pod") == "shop/db"])
    t.check("enforce: db's attempt recorded as denied (default deny)",
            denied and all(r["policy"] == "default-deny" and r["pod"] == "shop/api" for r in denied), denied)
    t.equal("enforce: still the one audit-denied record", len(audited()), 1)
    p = d.ctl("explain", "--from", "shop/db", "--to", "shop/api", "--port", "8080/TCP")
    t.check("enforce: explain no longer speaks of audit mode", p.returncode == 3 and "audit mode" not in p.stdout,
            p.stdout)


if __name__ == "__main__":
    harness.main("test_audit_mode", body)
