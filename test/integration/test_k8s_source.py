#!/usr/bin/python3
"""The Kubernetes API source against test/apiserver (the real list/watch protocol).

Drives ``signet-k8s-probe`` (the real KubernetesSource, on its own event
loop, speaking JSON lines) against an in-process test API server, over plain
HTTP and over TLS. No root needed. Exit 0 = pass, 1 = fail, 77 = skip.

Environment: ``SIGNET_BUILD_DIR`` (default <repo>/build),
``K8S_TEST_ONLY=name,name`` to run some cases.
"""

from __future__ import annotations

import json
import os
import queue
import stat
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "test" / "apiserver"))
import apiserver as A  # noqa: E402

BUILD = Path(os.environ.get("SIGNET_BUILD_DIR", REPO / "build"))
PROBE = BUILD / "controller" / "source" / "kubernetes" / "signet-k8s-probe"
FAST = ["--backoff-initial-ms", "100", "--backoff-max-ms", "1000", "--coalesce-ms", "10",
        "--refresh-grace-ms", "1500", "--refresh-timeout-ms", "15000"]

passed = 0
failed: list[str] = []
results: dict[str, object] = {}


def log(m: str) -> None:
    print(m, flush=True)


def check(what: str, cond, detail=None) -> bool:
    global passed
    if cond:
        passed += 1
        log(f"PASS {what}")
    else:
        failed.append(what)
        log(f"FAIL {what}" + ("" if detail is None else f" -- {str(detail)[:600]}"))
    return bool(cond)


def wait_until(pred, timeout=10.0, step=0.05):
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > end:
            return v
        time.sleep(step)


class Probe:
    def __init__(self, args: list[str]):
        self.p = subprocess.Popen([str(PROBE), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, bufsize=1)
        self.replies: queue.Queue = queue.Queue()
        self.reports: list[str] = []
        self.changes: list[dict] = []
        self.stderr = ""
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._err, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            try:
                m = json.loads(line)
            except ValueError:
                continue
            if "report" in m:
                self.reports.append(m["report"])
            elif m.get("event") == "change":
                self.changes.append(m)
            else:
                self.replies.put(m)

    def _err(self):
        self.stderr = self.p.stderr.read()

    def cmd(self, c: str, timeout=20.0) -> dict:
        self.p.stdin.write(c + "\n")
        self.p.stdin.flush()
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply to {c!r}; stderr: {self.stderr[-500:]}")
            m = self.replies.get(timeout=left)
            if m.get("reply") == c:
                return m

    def snap(self) -> dict:
        return self.cmd("snapshot")

    def status(self) -> dict:
        return self.cmd("status")["status"]

    def wait_snap(self, pred, timeout=10.0) -> dict | None:
        last = {}

        def f():
            nonlocal last
            last = self.snap()
            return pred(last)
        ok = wait_until(f, timeout, 0.1)
        return last if ok else None

    def reported(self, text: str) -> bool:
        return any(text in r for r in self.reports)

    def close(self):
        try:
            if self.p.poll() is None:
                self.cmd("quit", 10)
            self.p.wait(10)
        except Exception:
            self.p.kill()
            self.p.wait()
        return self.p.returncode


class Env:
    """A store, a server and a temp dir for one case."""

    def __init__(self, tmp: Path, tls=False, fixtures=True, **faults):
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.store = A.Store()
        if fixtures:
            self.store.load_fixtures(A.HERE / "fixtures")
        self.store.faults["bookmark_interval"] = 0.3
        self.store.set_faults(**faults)
        self.pki = A.make_pki(tmp / "pki") if tls else None
        self.tls = {"cert": self.pki["cert"], "key": self.pki["key"], "client_ca": self.pki["ca"]} if tls else None
        self.srv = A.ApiServer(self.store, 0, self.tls).start()
        self.probes: list[Probe] = []

    def kubeconfig(self, user=None, cluster=None, name="kubeconfig") -> str:
        extra = dict(cluster) if cluster is not None else ({"certificate-authority": self.pki["ca"]} if self.pki else {})
        p = self.tmp / name
        p.write_text(A.kubeconfig(self.srv.url, user or {}, extra))
        return str(p)

    def probe(self, *args, kubeconfig=None) -> Probe:
        a = list(args)
        if kubeconfig is not None:
            a = ["--kubeconfig", kubeconfig] + a
        pr = Probe(a + FAST)
        self.probes.append(pr)
        return pr

    def restart(self, down_for=0.0):
        self.srv.stop()
        time.sleep(down_for)
        self.srv = A.ApiServer(self.store, self.srv.port, self.tls).start()

    def close(self):
        for p in self.probes:
            p.close()
        try:
            self.srv.stop()
        except Exception:
            pass


def pods(s):
    return s.get("pods", {}) if s else {}


def services(s):
    return s.get("services", {}) if s else {}


def service(name, ns="web", **spec):
    return {"kind": "Service", "apiVersion": "v1", "metadata": {"name": name, "namespace": ns}, "spec": spec}


# --------------------------------------------------------------------------
# cases

def case_list_watch(tmp):
    e = Env(tmp)
    try:
        pr = e.probe("--page-size", "2", "--node-name", "kind-worker", kubeconfig=e.kubeconfig())
        s = pr.wait_snap(lambda s: s["ready"], 10)
        check("initial list: ready", s is not None, pr.stderr)
        if not s:
            return
        check("initial list: namespaces", sorted(s["namespaces"]) == ["default", "kube-node-lease", "kube-public",
                                                                     "kube-system", "local-path-storage", "web"],
              s["namespaces"])
        check("initial list: namespace labels", s["namespaces"]["web"]["labels"] ==
              {"env": "prod", "team": "storefront", "kubernetes.io/metadata.name": "web"}, s["namespaces"]["web"])
        check("initial list: 5 pods", len(pods(s)) == 5, list(pods(s)))
        fe = pods(s).get("web/frontend-6d4cf56db6-4r7tw", {})
        check("initial list: pod fields", fe.get("ips") == ["10.244.1.7"] and fe.get("node") == "kind-worker" and
              fe.get("labels", {}).get("app") == "frontend" and fe.get("ports") == 1, fe)
        check("initial list: policies", s["policies"] == ["web/backend-allow-frontend", "web/default-deny-egress"],
              s["policies"])
        svcs = services(s)
        check("initial list: services", sorted(svcs) == ["default/kubernetes", "kube-system/kube-dns", "web/backend",
                                                         "web/frontend"], sorted(svcs))
        check("initial list: service fields (LoadBalancer, dual-stack, named targetPort)", svcs.get("web/frontend") == {
            "type": "LoadBalancer", "clusterIPs": ["10.96.112.7", "fd00:10:96::7c1"], "externalIPs": [],
            "loadBalancerIPs": ["172.18.255.200"], "selector": {"app": "frontend"}, "internalTrafficLocal": False,
            "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": "http", "nodePort": 30080}]},
            svcs.get("web/frontend"))
        check("initial list: headless service, internalTrafficPolicy Local; no selector",
              svcs.get("web/backend", {}).get("clusterIPs") == [] and
              svcs.get("web/backend", {}).get("internalTrafficLocal") is True and
              svcs.get("default/kubernetes", {}).get("selector", 0) is None and
              svcs.get("default/kubernetes", {}).get("ports", [{}])[0].get("targetPort") == "6443",
              (svcs.get("web/backend"), svcs.get("default/kubernetes")))
        check("initial list: nodes with InternalIPs", s["nodes"] == {
            "kind-control-plane": ["172.18.0.2", "fc00:f853:ccd:e793::2"],
            "kind-worker": ["172.18.0.3", "fc00:f853:ccd:e793::3"]}, s["nodes"])
        st = pr.status()
        check("status: kind, server, connected", st["kind"] == "kubernetes" and st["server"] == e.srv.url and
              wait_until(lambda: pr.status()["connection"] == "connected", 5), st)
        check("status: local node addresses", st["node"]["internalIPs"] == ["172.18.0.3", "fc00:f853:ccd:e793::3"],
              st["node"])
        lists = [r for r in e.store.requests_for("pods", watch=False)]
        check("paginated list: limit=2 and continue used",
              len(lists) == 3 and all(r["query"].get("limit") == "2" for r in lists) and
              "continue" in lists[1]["query"] and "resourceVersion" not in lists[0]["query"],
              [r["query"] for r in lists])
        w = e.store.requests_for("pods", watch=True)
        list_rv = None
        check("watch request: resourceVersion from the list, bookmarks, timeoutSeconds",
              w and w[0]["query"].get("allowWatchBookmarks") == "true" and
              w[0]["query"].get("resourceVersion", "").isdigit() and
              300 <= int(w[0]["query"].get("timeoutSeconds", "0")) < 600, w and w[0]["query"])
        check("request: User-Agent signetd", w and w[0]["userAgent"].startswith("signetd/"), w and w[0]["userAgent"])

        # watch events
        e.store.apply(A.synthetic_pod("web", "cart-7d9f8b6c4d-00001", "10.244.1.20", {"app": "cart"}))
        s = pr.wait_snap(lambda s: "web/cart-7d9f8b6c4d-00001" in pods(s), 5)
        check("ADDED event: pod appears", s is not None)
        p = A.synthetic_pod("web", "cart-7d9f8b6c4d-00001", "10.244.1.20", {"app": "cart", "version": "v2"})
        e.store.apply(p)
        s = pr.wait_snap(lambda s: pods(s).get("web/cart-7d9f8b6c4d-00001", {}).get("labels", {}).get("version") == "v2", 5)
        check("MODIFIED event: labels updated", s is not None)
        e.store.delete("Pod", "web", "cart-7d9f8b6c4d-00001")
        s = pr.wait_snap(lambda s: "web/cart-7d9f8b6c4d-00001" not in pods(s), 5)
        check("DELETED event: pod removed", s is not None)
        e.store.apply({"kind": "NetworkPolicy", "apiVersion": "networking.k8s.io/v1",
                       "metadata": {"name": "deny-all", "namespace": "default"},
                       "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}})
        e.store.delete("Namespace", "", "local-path-storage")
        s = pr.wait_snap(lambda s: "default/deny-all" in s["policies"] and "local-path-storage" not in s["namespaces"], 5)
        check("policy and namespace events", s is not None)
        # Services: added (the server allocates the ClusterIP and node port), modified, deleted
        added = e.store.apply(service("cart", type="NodePort", selector={"app": "cart"},
                                      ports=[{"name": "http", "port": 80, "targetPort": "http"}],
                                      externalIPs=["192.0.2.10"]))
        ip, node_port = added["spec"]["clusterIP"], added["spec"]["ports"][0]["nodePort"]
        s = pr.wait_snap(lambda s: "web/cart" in services(s), 5)
        check("Service ADDED: reaches the snapshot with the allocated ClusterIP and nodePort", s is not None and
              services(s)["web/cart"] == {
                  "type": "NodePort", "clusterIPs": [ip], "externalIPs": ["192.0.2.10"], "loadBalancerIPs": [],
                  "selector": {"app": "cart"}, "internalTrafficLocal": False,
                  "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": "http",
                             "nodePort": node_port}]}, services(s).get("web/cart"))
        e.store.apply(service("cart", type="ClusterIP", selector={"app": "cart", "version": "v2"},
                              ports=[{"name": "http", "port": 80, "targetPort": 8080},
                                     {"name": "dns", "port": 53, "protocol": "UDP"}]))
        s = pr.wait_snap(lambda s: services(s).get("web/cart", {}).get("selector", {}).get("version") == "v2", 5)
        got = services(s).get("web/cart", {})
        check("Service MODIFIED: selector, type and ports updated, ClusterIP kept", s is not None and
              got["type"] == "ClusterIP" and got["clusterIPs"] == [ip] and
              [(p["name"], p["protocol"], p["port"], p["targetPort"], p["nodePort"]) for p in got["ports"]] ==
              [("http", "TCP", 80, "8080", 0), ("dns", "UDP", 53, "53", 0)], got)
        e.store.delete("Service", "web", "cart")
        s = pr.wait_snap(lambda s: "web/cart" not in services(s), 5)
        check("Service DELETED: removed from the snapshot", s is not None and "web/frontend" in services(s))
        bad = service("broken", ports=[{"name": "http", "port": 70000}])
        e.store.apply(bad)
        e.store.apply(service("fine", selector={"app": "fine"}, ports=[{"port": 443}]))
        s = pr.wait_snap(lambda s: "web/fine" in services(s), 5)
        check("malformed Service: skipped and reported, later events applied",
              s is not None and "web/broken" not in services(s) and
              pr.reported("services: skipping malformed object web/broken"), pr.reports[-3:])
        st = pr.status()["resources"]["services"]
        check("status: services watched and counted", st["state"] == "watching" and
              st["objects"] == len(services(s)) and st["events"]["added"] >= 2, st)
        # refresh(): a mutation immediately followed by refresh is visible when it returns
        e.store.apply(A.synthetic_pod("web", "sync-7d9f8b6c4d-00001", "10.244.1.21", {"app": "sync"}))
        r = pr.cmd("refresh")
        s = pr.snap()
        check("refresh(): consistent read includes the last mutation", r["ok"] and
              "web/sync-7d9f8b6c4d-00001" in pods(s), r)
        check("refresh(): origin_version reached the server's RV", int(r["version"]) >= e.store.rv - 1,
              (r["version"], e.store.rv))
        # bookmarks advance the RV of a quiet resource
        st0 = pr.status()["resources"]["nodes"]
        e.store.apply({"kind": "Namespace", "metadata": {"name": "bookmark-test"}})
        target = e.store.rv
        ok = wait_until(lambda: int(pr.status()["resources"]["nodes"]["resourceVersion"]) >= target, 5)
        st1 = pr.status()["resources"]["nodes"]
        check("BOOKMARK advances a quiet watch's resourceVersion", ok and st1["events"]["bookmarks"] >
              st0["events"]["bookmarks"] and st1["relists"] == 0, (st0, st1, target))
        check("lag is reported", 0 <= st1["lagSeconds"] < 5, st1)
        # a malformed watch event: reported, watch restarted from the last RV, no relist, no crash
        e.store.set_faults(malformed={"pods": 1})
        ok = wait_until(lambda: pr.reported("malformed watch stream"), 5)
        e.store.apply(A.synthetic_pod("web", "after-7d9f8b6c4d-00001", "10.244.1.22", {"app": "after"}))
        s = pr.wait_snap(lambda s: "web/after-7d9f8b6c4d-00001" in pods(s), 5)
        st = pr.status()["resources"]["pods"]
        check("malformed event: reported, watch resumes without relist", ok and s is not None and st["relists"] == 0,
              (pr.reports[-3:], st))
        # a malformed object (valid JSON, invalid pod): skipped and reported
        bad = A.synthetic_pod("web", "bad-7d9f8b6c4d-00001", "10.244.1.23", {"app": "bad"})
        bad["spec"]["containers"][0]["ports"][0]["containerPort"] = 70000
        e.store.apply(bad)
        e.store.apply(A.synthetic_pod("web", "good-7d9f8b6c4d-00001", "10.244.1.24", {"app": "good"}))
        s = pr.wait_snap(lambda s: "web/good-7d9f8b6c4d-00001" in pods(s), 5)
        check("malformed object: skipped and reported, later events applied",
              s is not None and "web/bad-7d9f8b6c4d-00001" not in pods(s) and
              pr.reported("skipping malformed object web/bad-7d9f8b6c4d-00001"), pr.reports[-3:])
        check("probe exits cleanly", pr.close() == 0, pr.stderr[-500:])
    finally:
        e.close()


def case_gone(tmp):
    for mode in ("event", "http"):
        e = Env(tmp / mode, gone_mode=mode)
        try:
            pr = e.probe(kubeconfig=e.kubeconfig())
            check(f"410 ({mode}): ready", pr.wait_snap(lambda s: s["ready"], 10) is not None)
            lists0 = len(e.store.requests_for("pods", watch=False))
            # changes while the server is down, and the history compacted: the watch cannot resume
            e.srv.stop()
            e.store.delete("Pod", "web", "backend-0")
            e.store.apply(A.synthetic_pod("web", "new-7d9f8b6c4d-00001", "10.244.1.30", {"app": "new"}))
            e.store.compact()
            e.srv = A.ApiServer(e.store, e.srv.port, None).start()
            s = pr.wait_snap(lambda s: "web/new-7d9f8b6c4d-00001" in pods(s) and "web/backend-0" not in pods(s)
                             and pr.status()["resources"]["pods"]["relists"] >= 1, 10)
            st = pr.status()["resources"]["pods"]
            check(f"410 ({mode}): relisted, right final state", s is not None and st["relists"] >= 1 and
                  st["expired"] >= 1 and len(e.store.requests_for("pods", watch=False)) > lists0, (st, pr.reports))
            check(f"410 ({mode}): reported", pr.reported("relisting"), pr.reports)
        finally:
            e.close()


def case_drop_resume(tmp):
    e = Env(tmp, drop_partial=True)
    try:
        pr = e.probe(kubeconfig=e.kubeconfig())
        check("drop: ready", pr.wait_snap(lambda s: s["ready"], 10) is not None)
        time.sleep(0.5)
        lists0 = len(e.store.requests_for(None, watch=False))
        last_rv = pr.status()["resources"]["pods"]["resourceVersion"]
        e.store.drop_watches()  # mid-stream, half an event written
        e.store.apply(A.synthetic_pod("web", "during-7d9f8b6c4d-00001", "10.244.1.40", {"app": "during"}))
        s = pr.wait_snap(lambda s: "web/during-7d9f8b6c4d-00001" in pods(s), 10)
        ws = [r for r in e.store.requests_for("pods", watch=True)]
        st = pr.status()
        check("drop: resumed from the last RV, no relist", s is not None and
              len(e.store.requests_for(None, watch=False)) == lists0 and
              int(ws[-1]["query"]["resourceVersion"]) >= int(last_rv) and st["resources"]["pods"]["relists"] == 0,
              (lists0, [r["query"] for r in ws[-3:]], st["resources"]["pods"]))
        check("drop: reconnects counted", st["reconnects"] >= 1, st)
        # server restart: down for 2 s while changes happen
        e.srv.stop()
        e.store.apply(A.synthetic_pod("web", "restart-7d9f8b6c4d-00001", "10.244.1.41", {"app": "restart"}))
        ok = wait_until(lambda: pr.status()["connection"] == "disconnected", 5)
        st = pr.status()
        check("restart: reported as disconnected with the error", ok and "cannot watch" in st["lastError"] or
              "cannot list" in st["lastError"] or "connection" in st["lastError"], st["lastError"])
        time.sleep(2)
        e.srv = A.ApiServer(e.store, e.srv.port, None).start()
        s = pr.wait_snap(lambda s: "web/restart-7d9f8b6c4d-00001" in pods(s), 10)
        st = pr.status()
        check("restart: reconnected with back-off, state converged", s is not None and st["reconnects"] >= 4 and
              wait_until(lambda: pr.status()["connection"] == "connected", 5), st)
        # refresh with the API down
        e.srv.stop()
        r = pr.cmd("refresh")
        check("refresh(): error when the API is unreachable", not r["ok"] and "refresh" in r["error"], r)
    finally:
        e.close()


def case_signetd_metrics(tmp):
    """The real signetd on --source kubernetes: /metrics counts its watch
    restarts per resource and reason (issue #15); a dropped watch is an error."""
    signetd = BUILD / "controller" / "signetd"
    if os.geteuid() != 0 or not signetd.exists():
        log("SKIP signetd_metrics: needs root and a built signetd")
        return
    import urllib.request
    e = Env(tmp)
    proc = None
    try:
        sock = tmp / "signetd.sock"
        logf = open(tmp / "signetd.log", "wb")
        proc = subprocess.Popen([str(signetd), "--node-name", "kind-worker", "--source", "kubernetes",
                                 "--kubeconfig", e.kubeconfig(), "--socket", str(sock), "--state-dir", str(tmp / "state"),
                                 "--metrics-address", "127.0.0.1:0", "--no-flows", "--services", "off"],
                                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        logf.close()

        def status():
            p = subprocess.run(["curl", "-sf", "--unix-socket", str(sock), "http://signetd/v1/status"],
                               capture_output=True, text=True)
            try:
                return json.loads(p.stdout) if p.returncode == 0 else None
            except ValueError:
                return None

        st = wait_until(lambda: (s := status()) and s.get("ready") and s, 20)
        signetd_log = (tmp / "signetd.log").read_text(errors="replace")[-2000:]
        if not check("signetd on the test API server: ready", bool(st), signetd_log):
            return
        port = st["outputs"]["metricsPort"]

        def metrics():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return r.read().decode()

        text = metrics()
        for res in ("namespaces", "pods", "networkpolicies", "nodes", "services"):
            for reason in ("timeout", "expired", "error"):
                want = f'signet_source_watch_restarts_total{{resource="{res}",reason="{reason}"}} '
                check(f"/metrics: watch restarts of {res} ({reason})", want in text, text[-1500:])
        def pods_errors():
            for line in metrics().splitlines():
                if line.startswith('signet_source_watch_restarts_total{resource="pods",reason="error"} '):
                    return float(line.split()[1])
            return -1.0

        before = pods_errors()
        time.sleep(0.5)  # the watches are up
        e.store.drop_watches()

        def errors():
            return pods_errors() > before

        check("/metrics: a dropped pods watch counts as an error restart", wait_until(errors, 10),
              (tmp / "signetd.log").read_text(errors="replace")[-2000:])
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        e.close()


def case_forbidden(tmp):
    e = Env(tmp, forbidden=["pods"])
    try:
        pr = e.probe(kubeconfig=e.kubeconfig({"token": "abc"}))
        ok = wait_until(lambda: pr.reported("forbidden: cannot list pods at the cluster scope"), 5)
        st = pr.status()
        check("403: reported clearly with the server's message", ok and any(
            'User \\"system:serviceaccount:kube-system:signet\\" cannot list resource' in r or
            'User "system:serviceaccount:kube-system:signet" cannot list resource' in r for r in pr.reports),
            pr.reports)
        check("403: status lastError and HTTP status", st["resources"]["pods"]["lastHttpStatus"] == 403 and
              "forbidden" in st["lastError"], st["resources"]["pods"])
        check("403: not ready", not pr.snap()["ready"])
        n = wait_until(lambda: len(e.store.requests_for("pods", watch=False)) >= 3, 5)
        check("403: retried with back-off", n, len(e.store.requests_for("pods", watch=False)))
        e.store.set_faults(forbidden=[])
        s = pr.wait_snap(lambda s: s["ready"] and len(pods(s)) == 5, 10)
        check("403: recovers once allowed", s is not None and pr.reported("API reachable again"), pr.reports)
    finally:
        e.close()


def case_forbidden_services(tmp):
    e = Env(tmp, forbidden=["services"])
    try:
        pr = e.probe(kubeconfig=e.kubeconfig({"token": "abc"}))
        ok = wait_until(lambda: pr.reported("forbidden: cannot list services at the cluster scope"), 5)
        check("403 on services: reported, not ready (the RBAC lacks services)", ok and not pr.snap()["ready"],
              pr.reports)
        e.store.set_faults(forbidden=[])
        s = pr.wait_snap(lambda s: s["ready"] and len(services(s)) == 4, 10)
        check("403 on services: recovers once allowed", s is not None)
    finally:
        e.close()


def case_tls(tmp):
    e = Env(tmp, tls=True)
    try:
        pr = e.probe(kubeconfig=e.kubeconfig())
        check("TLS: right CA (file) works", pr.wait_snap(lambda s: s["ready"], 10) is not None, pr.reports)
        pr.close()
        ca_data = __import__("base64").b64encode(Path(e.pki["ca"]).read_bytes()).decode()
        pr = e.probe(kubeconfig=e.kubeconfig(cluster={"certificate-authority-data": ca_data}, name="kc-data"))
        check("TLS: right CA (data) works", pr.wait_snap(lambda s: s["ready"], 10) is not None, pr.reports)
        pr.close()
        pr = e.probe(kubeconfig=e.kubeconfig(cluster={"certificate-authority": e.pki["wrong_ca"]}, name="kc-wrong"))
        ok = wait_until(lambda: any("certificate" in r.lower() or "SSL" in r for r in pr.reports), 5)
        check("TLS: wrong CA refused, reported", ok and not pr.snap()["ready"], pr.reports[:2])
        pr.close()
        pr = e.probe(kubeconfig=e.kubeconfig(cluster={}, name="kc-none"))
        ok = wait_until(lambda: len(pr.reports) > 0, 5)
        check("TLS: no CA (system roots) refuses the test CA", ok and not pr.snap()["ready"], pr.reports[:2])
        pr.close()
        pr = e.probe(kubeconfig=e.kubeconfig(cluster={"insecure-skip-tls-verify": True}, name="kc-insecure"))
        check("TLS: insecure-skip-tls-verify honoured", pr.wait_snap(lambda s: s["ready"], 10) is not None, pr.reports)
        pr.close()
        # client certificates: the server now requires authentication
        e.store.set_faults(tokens={"not-this": "x"})
        pr = e.probe(kubeconfig=e.kubeconfig({"client-certificate": e.pki["client_cert"],
                                              "client-key": e.pki["client_key"]}, name="kc-cert"))
        ok = pr.wait_snap(lambda s: s["ready"], 10) is not None
        reqs = e.store.requests_for("pods")
        check("client certificate (files) authenticates", ok and reqs and reqs[-1]["clientCert"], pr.reports)
        pr.close()
        b64 = lambda p: __import__("base64").b64encode(Path(p).read_bytes()).decode()  # noqa: E731
        pr = e.probe(kubeconfig=e.kubeconfig({"client-certificate-data": b64(e.pki["client_cert"]),
                                              "client-key-data": b64(e.pki["client_key"])}, name="kc-certdata"))
        check("client certificate (data) authenticates", pr.wait_snap(lambda s: s["ready"], 10) is not None,
              pr.reports)
        pr.close()
        pr = e.probe(kubeconfig=e.kubeconfig({"token": "wrong"}, name="kc-bad"))
        ok = wait_until(lambda: pr.reported("unauthorized (HTTP 401)"), 5)
        check("401 with a bad token: reported", ok, pr.reports)
        pr.close()
    finally:
        e.close()


def case_exec(tmp):
    e = Env(tmp, tls=True, tokens={"exec-token-1": A.DEFAULT_USER})
    try:
        counter = tmp / "count"
        plugin = tmp / "plugin.sh"
        plugin.write_text(f"""#!/bin/sh
n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}
[ "$FOO" = bar ] || {{ echo "FOO not passed" >&2; exit 3; }}
[ -n "$KUBERNETES_EXEC_INFO" ] || {{ echo "no KUBERNETES_EXEC_INFO" >&2; exit 4; }}
echo "$KUBERNETES_EXEC_INFO" > {tmp}/exec-info.json
printf '{{"apiVersion":"%s","kind":"ExecCredential","status":{{"token":"exec-token-%s","expirationTimestamp":"2099-01-01T00:00:00Z"}}}}' "$1" "$n"
""")
        plugin.chmod(0o755)
        for av in ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1"):
            counter.write_text("0")
            e.store.set_faults(tokens={"exec-token-1": A.DEFAULT_USER})
            user = {"exec": {"apiVersion": av, "command": "./plugin.sh", "args": [av],
                             "env": [{"name": "FOO", "value": "bar"}], "provideClusterInfo": True,
                             **({"interactiveMode": "Never"} if av.endswith("v1") else {})}}
            pr = e.probe(kubeconfig=e.kubeconfig(user, name="kc-exec"))
            check(f"exec {av}: token from the plugin works", pr.wait_snap(lambda s: s["ready"], 10) is not None,
                  pr.reports)
            info = json.loads((tmp / "exec-info.json").read_text())
            check(f"exec {av}: KUBERNETES_EXEC_INFO with cluster info",
                  info["apiVersion"] == av and info["spec"]["cluster"]["server"] == e.srv.url, info)
            # the server stops accepting token 1: 401 -> the plugin is re-run -> token 2
            e.store.set_faults(tokens={"exec-token-2": A.DEFAULT_USER})
            e.store.drop_watches()
            ok = wait_until(lambda: pr.status()["execRuns"] >= 2 and pr.status()["connection"] == "connected", 10)
            st = pr.status()
            check(f"exec {av}: 401 -> plugin re-run -> recovered", ok and counter.read_text().strip() >= "2" and
                  any(r["authorization"] == "Bearer exec-token-2" for r in e.store.requests_for("pods")),
                  (st["execRuns"], st["lastError"], pr.reports[-3:]))
            pr.close()
        # an expired credential is refreshed before use
        counter.write_text("0")
        exp_plugin = tmp / "exp.sh"
        exp_plugin.write_text(f"""#!/bin/sh
n=$(cat {counter}); n=$((n+1)); echo $n > {counter}
printf '{{"apiVersion":"client.authentication.k8s.io/v1beta1","kind":"ExecCredential","status":{{"token":"exec-token-2","expirationTimestamp":"%s"}}}}' "$(date -u -d '+1 second' +%Y-%m-%dT%H:%M:%SZ)"
""")
        exp_plugin.chmod(0o755)
        pr = e.probe(kubeconfig=e.kubeconfig({"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1",
                                                       "command": str(exp_plugin)}}, name="kc-exp"))
        pr.wait_snap(lambda s: s["ready"], 10)
        time.sleep(2.2)
        e.store.drop_watches()
        ok = wait_until(lambda: int(counter.read_text() or 0) >= 2, 5)
        check("exec: expired credential re-run before use", ok, counter.read_text())
        pr.close()
    finally:
        e.close()


def case_token_rotation(tmp):
    e = Env(tmp, tls=True, tokens={"sa-token-1": A.DEFAULT_USER})
    try:
        tok = tmp / "token"
        tok.write_text("sa-token-1\n")
        args = ["--in-cluster-token", str(tok), "--in-cluster-ca", e.pki["ca"], "--in-cluster-host", "127.0.0.1",
                "--in-cluster-port", str(e.srv.port)]
        pr = e.probe(*args)
        check("in-cluster: token file + CA works", pr.wait_snap(lambda s: s["ready"], 10) is not None, pr.reports)
        check("in-cluster: server URL", pr.status()["server"] == f"https://127.0.0.1:{e.srv.port}" and
              pr.status()["config"] == "in-cluster")
        # kubelet rotates the projected token: new file content, old token refused
        tmpf = tmp / "token.new"
        tmpf.write_text("sa-token-2\n")
        os.rename(tmpf, tok)
        e.store.set_faults(tokens={"sa-token-2": A.DEFAULT_USER})
        e.store.drop_watches()
        ok = wait_until(lambda: pr.status()["connection"] == "connected" and
                        any(r["authorization"] == "Bearer sa-token-2" for r in e.store.requests_for("pods")), 10)
        e.store.apply(A.synthetic_pod("web", "rot-7d9f8b6c4d-00001", "10.244.1.50", {"app": "rot"}))
        s = pr.wait_snap(lambda s: "web/rot-7d9f8b6c4d-00001" in pods(s), 10)
        check("token rotation: the new token is used", ok and s is not None, pr.reports[-3:])
    finally:
        e.close()


def case_scale(tmp):
    e = Env(tmp, fixtures=True)
    try:
        base = e.probe(kubeconfig=e.kubeconfig())
        base.wait_snap(lambda s: s["ready"], 10)
        rss0 = base.cmd("rss")
        base.close()
        t0 = time.monotonic()
        A.bulk_pods(e.store, "bulk", 10000)
        log(f"  (created 10,000 pods in the store in {time.monotonic() - t0:.1f} s)")
        t0 = time.monotonic()
        pr = e.probe(kubeconfig=e.kubeconfig())
        s = pr.wait_snap(lambda s: s["ready"], 120)
        dt = time.monotonic() - t0
        rss = pr.cmd("rss")
        check("10,000 pods: listed", s is not None and len(pods(s)) == 10005, len(pods(s)))
        check("10,000 pods: one change for the whole initial list", len(pr.changes) == 1, pr.changes[:3])
        results["rss"] = {"baseline_kib": rss0["rssKiB"], "pods_10k_kib": rss["rssKiB"], "pods_10k_hwm_kib":
                          rss["hwmKiB"], "list_seconds": round(dt, 2)}
        log(f"  RSS: baseline {rss0['rssKiB'] / 1024:.1f} MiB, with 10,005 pods {rss['rssKiB'] / 1024:.1f} MiB "
            f"(peak {rss['hwmKiB'] / 1024:.1f} MiB), ready after {dt:.2f} s")
        check("10,000 pods: RSS below 64 MiB", rss["rssKiB"] < 64 * 1024, rss)
        # a relist of 10,000 pods is one change
        n0 = len(pr.changes)
        e.store.delete("Pod", "bulk", "app-7d9f8b6c4d-00007")
        e.store.compact()
        e.store.drop_watches()
        s = pr.wait_snap(lambda s: pr.status()["resources"]["pods"]["relists"] >= 1 and len(pods(s)) == 10004, 60)
        time.sleep(0.3)
        check("10,000 pods: relist applied as one change", s is not None and len(pr.changes) - n0 <= 2,
              (len(pr.changes) - n0))
    finally:
        e.close()


def case_manifests(tmp):
    """The folder-following mode the conformance harness can use."""
    mdir = tmp / "manifests"
    mdir.mkdir()
    (mdir / "ns.json").write_text(json.dumps({"apiVersion": "v1", "kind": "Namespace",
                                              "metadata": {"name": "x", "labels": {"ns": "x"}}}))
    e = Env(tmp, fixtures=False)
    f = A.ManifestFollower(e.store, mdir).start()
    try:
        pr = e.probe(kubeconfig=e.kubeconfig())
        s = pr.wait_snap(lambda s: s["ready"] and "x" in s["namespaces"], 10)
        check("manifest folder: served", s is not None)
        try:
            import yaml  # noqa: F401
            (mdir / "pod.yaml").write_text("apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  namespace: x\n"
                                           "  labels:\n    pod: a\nspec:\n  containers:\n  - name: c\n"
                                           "    image: busybox\n---\napiVersion: networking.k8s.io/v1\n"
                                           "kind: NetworkPolicy\nmetadata:\n  name: p\n  namespace: x\n"
                                           "spec:\n  podSelector: {}\n---\napiVersion: v1\nkind: Service\n"
                                           "metadata:\n  name: s-x-a\n  namespace: x\nspec:\n  selector:\n"
                                           "    pod: a\n  ports:\n  - port: 80\n")
            pr.cmd("refresh")
            s = pr.wait_snap(lambda s: "x/a" in pods(s) and "x/p" in s["policies"] and "x/s-x-a" in services(s), 5)
            check("manifest folder: YAML file -> watch events (Service with an allocated ClusterIP)", s is not None
                  and len(services(s)["x/s-x-a"]["clusterIPs"]) == 1, s and services(s))
            (mdir / "pod.yaml").unlink()
            s = pr.wait_snap(lambda s: "x/a" not in pods(s) and not s["policies"] and not services(s), 5)
            check("manifest folder: removed file -> DELETED", s is not None)
        except ImportError:
            log("  (PyYAML missing: YAML part of the manifest-folder case skipped)")
    finally:
        f.stop()
        e.close()


CASES = [case_list_watch, case_gone, case_drop_resume, case_signetd_metrics, case_forbidden, case_forbidden_services, case_tls, case_exec, case_token_rotation,
         case_manifests, case_scale]


def main() -> int:
    if not PROBE.exists():
        log(f"SKIP: {PROBE} not built (build with the kubernetes source wired in)")
        return 77
    import shutil
    if not shutil.which("openssl"):
        log("SKIP: the openssl CLI is missing (Debian: openssl)")
        return 77
    only = [c for c in os.environ.get("K8S_TEST_ONLY", "").split(",") if c]
    t_all = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="signet-k8s-") as td:
        for case in CASES:
            name = case.__name__[5:]
            if only and name not in only:
                continue
            log(f"--- {name}")
            d = Path(td) / name
            d.mkdir()
            t0 = time.monotonic()
            try:
                case(d)
            except Exception:
                failed.append(name + " (exception)")
                log(f"FAIL {name} raised:\n{traceback.format_exc()}")
            log(f"    {name}: {time.monotonic() - t0:.1f} s")
    if "rss" in results:
        log("RSS " + json.dumps(results["rss"]))
    log(f"=== test_k8s_source: {'PASS' if not failed else 'FAIL'}: {passed} passed, {len(failed)} failed "
        f"in {time.monotonic() - t_all:.1f} s")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
