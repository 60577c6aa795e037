#!/usr/bin/python3
"""No pod silently unprotected (issue #15): signetd with --source kubernetes
against the test API server (test/apiserver), pods registered through the real
`signet` CNI plugin.

* unprotected pods: a Running pod placed on this node (spec.nodeName) that
  never came through the chain is reported after --unprotected-grace (not
  before) in `signetctl status` (text and -o json: namespace, name, IPs,
  since), GET /v1/unprotected, signet_unprotected_pods, and one Warning Event
  SignetUnprotected on the Pod; a pod registered through the chain, a
  hostNetwork pod, a Pending pod and a pod on another node are never
  reported; resyncs, pod updates and a signetd restart create no second Event
  (the restarted signetd's POST is 409, "reported before"); a pod registered
  later, and a pod deleted, leave the report;
* the startup taint: with --remove-startup-taint, node.signet.dev/agent-not-ready
  goes from this node's Node once signetd enforces, by a guarded JSON patch;
  a taint another client adds between signetd's read and its patch fails the
  patch's test, signetd reads again, and that taint stays, as do the Node's
  other taint and the other Nodes' taints; without the flag no Node is
  patched.

Needs root (pod netns for the CNI ADDs). Exit 0 pass, 1 fail, 77 skip.
"""

import json
import sys
import time
import urllib.request
from pathlib import Path

sys.dont_write_bytecode = True  # keep the source tree clean
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "apiserver"))
from harness import (Signetd, cni_exec, k8s_args, main, require_root_and_tools,  # noqa: E402
                     require_signet_binaries, unix_http_get, wait_until)
import apiserver as A  # noqa: E402

NODE = "node-u"
OTHER = "node-x"
PLAIN = "node-v"
TAINT = "node.signet.dev/agent-not-ready"
GRACE = 2.0




def pod(name, node=NODE, phase="Running", ip=None, host=False):
    o = {"kind": "Pod", "apiVersion": "v1",
         "metadata": {"name": name, "namespace": "shop", "labels": {"app": name}},
         "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]},
         "status": {"phase": phase}}
    if host:
        o["spec"]["hostNetwork"] = True
    if ip:
        o["status"].update({"podIP": ip, "podIPs": [{"ip": ip}]})
    return o


def node(name, taints):
    return {"kind": "Node", "apiVersion": "v1", "metadata": {"name": name},
            "spec": {"taints": taints},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.10"}]}}


def conf(sock, netns, ip):
    return {"cniVersion": "1.0.0", "name": "unprotnet", "type": "signet", "socket": sock,
            "prevResult": {"cniVersion": "1.0.0",
                           "interfaces": [{"name": "eth0", "mac": "0a:58:0a:fa:00:05", "sandbox": netns}],
                           "ips": [{"interface": 0, "address": ip + "/24"}]}}


def metric(d, name):
    port = d.status().get("outputs", {}).get("metricsPort")
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def body(t, run):
    require_root_and_tools("ip")
    bins = require_signet_binaries(t)
    plugin = str(bins["signet"])
    store = A.Store()
    srv = A.ApiServer(store, 0).start()
    run.on_cleanup("test API server", srv.stop)
    kc = Path(run.mkdtemp("kube")) / "kubeconfig"
    kc.write_text(A.kubeconfig(srv.url, {}))

    store.apply({"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": "shop"}})
    store.apply(node(NODE, [{"key": TAINT, "effect": "NoSchedule"},
                            {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]))
    store.apply(node(OTHER, [{"key": TAINT, "effect": "NoSchedule"}]))
    store.apply(node(PLAIN, [{"key": TAINT, "effect": "NoSchedule"}]))
    uid = {}
    for o in (pod("lost", ip="10.250.7.11"), pod("late", ip="10.250.7.12"),
              pod("host", ip="192.0.2.10", host=True), pod("remote", node=OTHER, ip="10.250.8.1"),
              pod("starting", phase="Pending"), pod("chained", phase="Pending")):
        uid[o["metadata"]["name"]] = store.apply(o)["metadata"]["uid"]

    # Another client adds a taint to this Node between signetd's read and its patch: the patch's
    # test fails (422), signetd reads again, and that taint survives.
    maintenance = {"key": "example.com/maintenance", "effect": "NoSchedule"}

    def concurrent_edit(st, resource, ns, name):
        def add(n):
            n["spec"]["taints"] = n["spec"]["taints"] + [maintenance]
            return n
        st.update(resource, ns, name, add, None)
    store.set_faults(before_patch=[concurrent_edit])
    d = Signetd(run, bins, node=NODE, source_args=["--source", "kubernetes", "--kubeconfig", str(kc)])
    d.extra_args = ["--unprotected-grace", f"{GRACE:g}s", "--metrics-address", "127.0.0.1:0", "--no-flows",
                    "--remove-startup-taint"]
    started = time.monotonic()
    d.start()

    # "chained" comes through the chain while Pending (as a real sandbox does), then runs.
    def add(name, ip):
        _, path = run.netns_add()
        cid = run.container_id()
        c = cni_exec(plugin, "ADD", conf(d.socket, path, ip), containerid=cid, netns=path,
                     args=k8s_args("shop", name, uid[name], cid))
        t.require(f"CNI ADD of shop/{name} through the signet plugin", c.ok, c)
        return cid
    add("chained", "10.250.7.13")
    store.apply(pod("chained", ip="10.250.7.13"))
    t.require("sync after the pod updates", d.sync().returncode == 0)

    st = d.status()["unprotected"]
    if time.monotonic() - started < GRACE - 0.3:
        t.check("within the grace period nothing is reported yet (pending: lost, late)",
                st["count"] == 0 and st["pending"] == 2 and st["pods"] == [], st)
    else:
        t.note("the first status came after the grace period: its check is skipped")

    # ---- past the grace period: status, API, metric, Events ------------------
    got = wait_until(lambda: (lambda u: u if u["count"] == 2 and all(p["event"] == "sent" for p in u["pods"])
                              else None)(d.status()["unprotected"]), timeout=GRACE + 10)
    t.require("after the grace period: 2 unprotected pods, both Events sent", got, d.status().get("unprotected"))
    by = {p["name"]: p for p in got["pods"]}
    t.equal("the unprotected pods are lost and late", sorted(by), ["late", "lost"])
    lost = by.get("lost", {})
    t.equal("status: namespace, IPs and UID of shop/lost", (lost.get("namespace"), lost.get("ips"), lost.get("uid")),
            ("shop", ["10.250.7.11"], uid["lost"]))
    t.check("status: since is when signetd first saw it (unix seconds, RFC 3339 too)",
            abs(lost.get("since", 0) - time.time()) < 60 and lost.get("sinceTime", "").endswith("Z"), lost)
    t.equal("status: graceSeconds and events on", (got["graceSeconds"], got["events"]), (GRACE, True))
    code, raw = unix_http_get(d.socket, "/v1/unprotected")
    api = json.loads(raw) if code == 200 else {}
    t.equal("GET /v1/unprotected: the same two pods", sorted(p["name"] for p in api.get("pods", [])), ["late", "lost"])
    text = d.ctl("status").stdout
    t.check("signetctl status names the unprotected pods and says what to do",
            "unprotected:     2 pod(s)" in text and "shop/lost  10.250.7.11  since " in text
            and "shop/late" in text and "delete them" in text, text)
    t.equal("signet_unprotected_pods 2", metric(d, "signet_unprotected_pods"), 2.0)

    def events():
        return [e for e in store.current("events") if e.get("reason") == "SignetUnprotected"]
    ev = events()
    t.equal("one Event per unprotected pod", sorted(e["involvedObject"]["name"] for e in ev), ["late", "lost"])
    e = next((e for e in ev if e["involvedObject"]["name"] == "lost"), {})
    t.check("the Event: Warning, on the Pod (namespace, uid), from signetd on this node, says to delete the pod",
            e.get("type") == "Warning" and e.get("metadata", {}).get("namespace") == "shop"
            and e.get("involvedObject", {}).get("kind") == "Pod" and e["involvedObject"].get("uid") == uid["lost"]
            and e.get("source", {}).get("host") == NODE and "Delete the pod" in e.get("message", "")
            and e.get("count") == 1, e)
    never = {"chained", "host", "remote", "starting"}
    t.check("registered, hostNetwork, Pending and other-node pods: neither reported nor an Event",
            not never & set(by) and not never & {e["involvedObject"]["name"] for e in ev}, (by, ev))

    t.check("signetd's log warns about shop/lost and says what to do",
            "unprotected pod shop/lost (10.250.7.11)" in d.log_path().read_text() and
            "delete the pod" in d.log_path().read_text())
    t.check("signetd's log: nothing resolved while both stay unprotected",
            "is no longer unprotected" not in d.log_path().read_text())
    t.check("status.startupTaint: removed once enforcing",
            wait_until(lambda: d.status()["startupTaint"]["state"] == "removed", 5), d.status().get("startupTaint"))

    # ---- once per pod: resyncs, updates, a restart -----------------------------
    store.apply(dict(pod("lost", ip="10.250.7.11"), metadata={"name": "lost", "namespace": "shop",
                                                              "labels": {"app": "lost", "v": "2"}}))
    for _ in range(2):
        d.sync()
    time.sleep(1.0)
    t.equal("resyncs and a pod update: still one Event per pod", len(events()), 2)
    d.stop()
    d.start()
    again = wait_until(lambda: (lambda u: u if u["count"] == 2 and all(p["event"] == "sent" for p in u["pods"])
                                else None)(d.status()["unprotected"]), timeout=GRACE + 10)
    t.check("after a signetd restart: reported again, its Events found made before (409)", again,
            d.status().get("unprotected"))
    posts = [r for r in store.requests_for() if r["method"] == "POST" and r["path"].endswith("/events")]
    t.equal("event POSTs: 2 before the restart, 2 after (answered 409)", len(posts), 4)
    t.equal("still one Event per pod", len(events()), 2)

    # ---- registered later, deleted: out of the report ---------------------------
    add("late", "10.250.7.12")
    t.check("shop/late registered through the chain: no longer reported",
            wait_until(lambda: [p["name"] for p in d.status()["unprotected"]["pods"]] == ["lost"], 5),
            d.status()["unprotected"])
    t.equal("signet_unprotected_pods 1", metric(d, "signet_unprotected_pods"), 1.0)
    store.delete("Pod", "shop", "lost")
    t.require("sync after deleting shop/lost", d.sync().returncode == 0)
    u = d.status()["unprotected"]
    t.check("shop/lost deleted: nothing unprotected", u["count"] == 0 and u["pods"] == [], u)
    t.equal("signet_unprotected_pods 0", metric(d, "signet_unprotected_pods"), 0.0)

    # ---- the startup taint ----------------------------------------------------------
    taints = {n: (store.get("nodes", "", n)["spec"].get("taints") or []) for n in (NODE, OTHER, PLAIN)}
    t.equal("--remove-startup-taint: this node keeps its other taint and the one added concurrently", taints[NODE],
            [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}, maintenance])
    t.equal("the other nodes' taints untouched", (taints[OTHER], taints[PLAIN]),
            ([{"key": TAINT, "effect": "NoSchedule"}], [{"key": TAINT, "effect": "NoSchedule"}]))
    patches = [r for r in store.requests_for() if r["method"] == "PATCH"]
    t.check("two PATCHes (the first failed its test after the concurrent edit), of this node only, JSON "
            "patches that test the taints read",
            len(patches) == 2 and all(p["path"] == f"/api/v1/nodes/{NODE}" and '"op":"test"' in p["body"]
                                      and p["contentType"] == "application/json-patch+json" for p in patches)
            and "example.com/maintenance" not in patches[0]["body"]
            and "example.com/maintenance" in patches[1]["body"], patches)
    ts = d.status()["startupTaint"]
    t.check("status.startupTaint: removed (the restarted signetd found it gone: absent)",
            ts["key"] == TAINT and ts["state"] == "absent", ts)
    d.stop()

    # ---- without the flag nothing is touched ------------------------------------------
    plain = Signetd(run, bins, node=PLAIN, source_args=["--source", "kubernetes", "--kubeconfig", str(kc)])
    plain.extra_args = ["--no-flows"]
    plain.start()
    t.require("sync (no flag)", plain.sync().returncode == 0)
    time.sleep(0.5)
    t.equal("without --remove-startup-taint: the Node keeps its startup taint",
            store.get("nodes", "", PLAIN)["spec"].get("taints"), [{"key": TAINT, "effect": "NoSchedule"}])
    t.equal("without the flag: no PATCH at all", len([r for r in store.requests_for() if r["method"] == "PATCH"]), 2)
    t.equal("status.startupTaint: off", plain.status()["startupTaint"]["state"], "off")
    plain.stop()


if __name__ == "__main__":
    main("test_unprotected", body)
