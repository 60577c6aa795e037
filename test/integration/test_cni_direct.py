#!/usr/bin/python3
"""signet chained after bridge + host-local, invoked directly as a runtime does.

Real netns, real bridge/host-local from containernetworking-plugins, real
signetd. For cniVersion 0.4.0, 1.0.0 and 1.1.0: ADD passes prevResult through
and registers the pod; CHECK; DEL (twice, without prevResult, with signetd
down); the CNI error codes; STATUS and GC (1.1.0); labels from a Pod manifest;
signetd restart; 50 pods in parallel.
"""

import json
import os
import shutil
import sys
from pathlib import Path

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (CNI_BIN_DIR, SUPPORTED_BY_SIGNET, ChainError, Network, Signetd,  # noqa: E402
                     bridge_ports, cni_exec, k8s_args, main, netns_addrs, netns_list,
                     parallel, require_root_and_tools, require_signet_binaries, result_ips)


class Pod:
    """One sandbox attached through a chain."""

    def __init__(self, run, chain, namespace="default", name=None, ifname="eth0",
                 with_namespace_arg=True):
        self.run = run
        self.chain = chain
        self.ns_name, self.netns = run.netns_add()
        self.cid = run.container_id()
        self.uid = run.uid()
        self.namespace = namespace
        self.name = name or f"pod-{self.ns_name}"
        self.ifname = ifname
        self.args = k8s_args(namespace if with_namespace_arg else None, self.name, self.uid, self.cid)
        self.result = None
        self.calls = []

    def add(self):
        self.result, self.calls = self.chain.add(self.cid, self.netns, self.ifname, self.args)
        return self.result

    def check(self, prev=None):
        return self.chain.check(self.cid, self.netns, self.ifname, self.args,
                                prev if prev is not None else self.result)

    def delete(self, best_effort=False):
        return self.chain.delete(self.cid, self.netns, self.ifname, self.args, self.result,
                                 best_effort=best_effort)

    def sandbox_mac(self):
        for itf in (self.result or {}).get("interfaces", []):
            if itf.get("name") == self.ifname and itf.get("sandbox") == self.netns:
                return itf.get("mac")
        return None


def signet_conf(version, net, socket, prev=None, **extra):
    c = {"cniVersion": version, "name": net.name, "type": "signet", "socket": socket}
    if prev is not None:
        p = dict(prev)
        p["cniVersion"] = version
        c["prevResult"] = p
    c.update(extra)
    return c


def check_registration(t, d, pod, net, label):
    reg = d.pod(pod.cid, pod.ifname)
    if not t.check(f"{label}: pod registered in signetctl pods", reg is not None,
                   f"containerID {pod.cid} not in {[p.get('containerID') for p in d.pods()]}"):
        return None
    want = {
        "containerID": pod.cid, "ifname": pod.ifname, "netns": pod.netns,
        "namespace": pod.namespace, "name": pod.name, "uid": pod.uid,
        "infraContainerID": pod.cid, "network": net.name,
    }
    for k, v in want.items():
        t.equal(f"{label}: registration {k}", reg.get(k), v)
    t.equal(f"{label}: registration ips", sorted(reg.get("ips") or []), sorted(result_ips(pod.result)))
    mac = pod.sandbox_mac()
    if mac:
        t.equal(f"{label}: registration mac", (reg.get("mac") or "").lower(), mac.lower())
    return reg


def check_error(t, label, call, code):
    t.check(f"{label}: exit status non-zero", call.rc != 0, call)
    t.equal(f"{label}: CNI error code", call.code, code)
    t.check(f"{label}: error JSON has msg", isinstance(call.json, dict) and bool(call.json.get("msg")),
            call.stdout)


def body(t, run):
    require_root_and_tools()
    bins = require_signet_binaries(t)
    plugin = str(bins["signet"])
    cni_path = [CNI_BIN_DIR, str(bins["signet"].parent)]
    d = Signetd(run, bins).start()
    t.check("signetd ready (/readyz 200)", True)
    st = d.status()
    t.check("signetctl status: ready", st.get("ready") is True, st)
    t.equal("signetctl status: pods == 0 at start", st.get("pods"), 0)

    # ---- VERSION -------------------------------------------------------
    c = cni_exec(plugin, "VERSION", {"cniVersion": "1.0.0"})
    t.check("VERSION exits 0", c.ok, c)
    sup = (c.json or {}).get("supportedVersions") or []
    for v in SUPPORTED_BY_SIGNET:
        t.check(f"VERSION supportedVersions lists {v}", v in sup, c.stdout)
    t.check("VERSION cniVersion is a supported version",
            (c.json or {}).get("cniVersion") in SUPPORTED_BY_SIGNET, c.stdout)

    # ---- per version: ADD / CHECK / DEL ----------------------------------
    for v in SUPPORTED_BY_SIGNET:
        L = f"[{v}]"
        net = Network(run, version=v, signet_socket=d.socket)
        ch = net.chain(cni_path)
        pod = Pod(run, ch, namespace="ns-a", name=f"web-{v.replace('.', '')}")
        try:
            pod.add()
        except ChainError as e:
            t.check(f"{L} ADD through bridge+host-local+signet", False, e)
            continue
        if ch.downgraded:
            t.note(f"{L} {sorted(ch.downgraded)} from Debian's containernetworking-plugins does not "
                   f"support {v}; it ran at its highest 1.x version and its result was relabelled "
                   f"{v} (identical schema) before signet saw it")
        t.check(f"{L} ADD through bridge+host-local+signet", True)
        sig = pod.calls[-1]
        sent_prev = json.loads(sig.stdin)["prevResult"]
        t.equal(f"{L} signet ADD stdout JSON-equal to prevResult", sig.json, sent_prev)
        t.equal(f"{L} signet ADD result cniVersion", (sig.json or {}).get("cniVersion"), v)
        t.check(f"{L} sandbox eth0 has the result's address",
                set(netns_addrs(pod.ns_name, "eth0")) == set(result_ips(pod.result)),
                (netns_addrs(pod.ns_name, "eth0"), result_ips(pod.result)))
        check_registration(t, d, pod, net, L)

        try:
            calls = pod.check()
            t.check(f"{L} CHECK through the chain after ADD succeeds", all(x.ok for x in calls), calls)
        except ChainError as e:
            t.check(f"{L} CHECK through the chain after ADD succeeds", False, e)

        try:
            pod.delete()
            t.check(f"{L} DEL through the chain succeeds", True)
        except ChainError as e:
            t.check(f"{L} DEL through the chain succeeds", False, e)
        t.check(f"{L} registration gone after DEL", d.pod(pod.cid) is None, d.pods())
        t.equal(f"{L} no host-local lease left", net.leases(), [])
        t.equal(f"{L} no veth left on the bridge", bridge_ports(net.bridge), [])
        try:
            pod.delete()
            t.check(f"{L} second DEL through the chain succeeds", True)
        except ChainError as e:
            t.check(f"{L} second DEL through the chain succeeds", False, e)
        c = cni_exec(plugin, "DEL", signet_conf(v, net, d.socket), containerid=pod.cid,
                     netns=pod.netns, ifname="eth0", args=pod.args)
        t.check(f"{L} signet DEL without prevResult (unknown pod) succeeds", c.ok, c)
        run.netns_del(pod.ns_name)

    # ---- DEL without prevResult removes a live registration -------------
    v = "1.0.0"
    net = Network(run, version=v, signet_socket=d.socket)
    ch = net.chain(cni_path)
    pod = Pod(run, ch, namespace="ns-a")
    pod.add()
    t.check("DEL-no-prevResult: registered after ADD", d.pod(pod.cid) is not None)
    c = cni_exec(plugin, "DEL", signet_conf(v, net, d.socket), containerid=pod.cid,
                 netns=pod.netns, ifname="eth0", args=pod.args)
    t.check("DEL-no-prevResult: signet DEL without prevResult succeeds", c.ok, c)
    t.check("DEL-no-prevResult: registration removed", d.pod(pod.cid) is None, d.pods())
    pod.delete()
    run.netns_del(pod.ns_name)

    # ---- error codes ------------------------------------------------------
    pod = Pod(run, ch, namespace="ns-a")
    prev, _ = ch.add(pod.cid, pod.netns, "eth0", pod.args, upto=1)   # bridge only
    pod.result = prev
    env = dict(containerid=pod.cid, netns=pod.netns, ifname="eth0", args=pod.args)
    check_error(t, "ADD without prevResult", cni_exec(plugin, "ADD", signet_conf(v, net, d.socket), **env), 7)
    check_error(t, "ADD with undecodable JSON",
                cni_exec(plugin, "ADD", b'{"cniVersion": "1.0.0", "name": ', **env), 6)
    check_error(t, "ADD with unsupported cniVersion 99.0.0",
                cni_exec(plugin, "ADD", signet_conf("99.0.0", net, d.socket, prev), **env), 1)
    check_error(t, "ADD without CNI_CONTAINERID",
                cni_exec(plugin, "ADD", signet_conf(v, net, d.socket, prev), unset=("CNI_CONTAINERID",),
                         **{k: x for k, x in env.items() if k != "containerid"}), 4)
    t.check("failed ADDs registered nothing", d.pod(pod.cid) is None, d.pods())

    # CHECK with a prevResult that differs from the registration -> 102
    c = cni_exec(plugin, "ADD", signet_conf(v, net, d.socket, prev), **env)
    t.check("ADD (signet only) succeeds", c.ok, c)
    other = json.loads(json.dumps(prev))
    other["ips"][0]["address"] = "10.255.255.77/24"
    c = cni_exec(plugin, "CHECK", signet_conf(v, net, d.socket, other), **env)
    check_error(t, "CHECK with prevResult different from the registration", c, 102)
    c = cni_exec(plugin, "CHECK", signet_conf(v, net, d.socket, prev), **env)
    t.check("CHECK with the right prevResult succeeds", c.ok, c)

    # signetd down
    rc = d.stop()
    t.equal("signetd exits 0 on SIGTERM", rc, 0)
    pod2 = Pod(run, ch, namespace="ns-a")
    prev2, _ = ch.add(pod2.cid, pod2.netns, "eth0", pod2.args, upto=1)
    pod2.result = prev2
    c = cni_exec(plugin, "ADD", signet_conf(v, net, d.socket, prev2, timeoutSeconds=3),
                 containerid=pod2.cid, netns=pod2.netns, ifname="eth0", args=pod2.args)
    check_error(t, "ADD with signetd down", c, 11)
    c = cni_exec(plugin, "STATUS", signet_conf("1.1.0", net, d.socket),
                 unset=("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS"))
    check_error(t, "STATUS with signetd down", c, 50)
    c = cni_exec(plugin, "DEL", signet_conf(v, net, d.socket, prev2),
                 containerid=pod2.cid, netns=pod2.netns, ifname="eth0", args=pod2.args)
    t.check("DEL with signetd down succeeds", c.ok, c)
    c = cni_exec(plugin, "DEL", signet_conf(v, net, d.socket), containerid=pod2.cid,
                 netns=pod2.netns, ifname="eth0", args=pod2.args)
    t.check("DEL without prevResult with signetd down succeeds", c.ok, c)
    pod2.delete()
    run.netns_del(pod2.ns_name)

    # signetd loses its registrations (fresh state) -> CHECK 102
    shutil.rmtree(d.state_dir)
    d.state_dir.mkdir()
    d.start()
    t.check("signetd restarted with empty state", d.pod(pod.cid) is None, d.pods())
    c = cni_exec(plugin, "CHECK", signet_conf(v, net, d.socket, prev), **env)
    check_error(t, "CHECK after signetd lost the registration", c, 102)
    c = cni_exec(plugin, "DEL", signet_conf(v, net, d.socket, prev), **env)
    t.check("DEL of a registration signetd does not know succeeds", c.ok, c)
    pod.delete()
    run.netns_del(pod.ns_name)

    # ---- STATUS / GC (1.1.0) ---------------------------------------------
    c = cni_exec(plugin, "STATUS", signet_conf("1.1.0", net, d.socket),
                 unset=("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS"))
    t.check("STATUS (1.1.0) with signetd ready succeeds", c.ok, c)
    t.check("STATUS prints nothing or nothing but whitespace on success", c.stdout.strip() == "", c.stdout)

    gnet = Network(run, version="1.1.0", signet_socket=d.socket)
    gch = gnet.chain(cni_path)
    onet = Network(run, version="1.1.0", signet_socket=d.socket)
    och = onet.chain(cni_path)
    gpods = [Pod(run, gch, namespace="ns-gc") for _ in range(3)]
    opod = Pod(run, och, namespace="ns-gc")
    for p in gpods + [opod]:
        p.add()
    t.check("GC: 4 pods registered before GC",
            all(d.pod(p.cid) is not None for p in gpods + [opod]), d.pods())
    keep = gpods[0]
    c = cni_exec(plugin, "GC", signet_conf("1.1.0", gnet, d.socket, **{
        "cni.dev/valid-attachments": [{"containerID": keep.cid, "ifname": "eth0"}]}),
        unset=("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS"))
    t.check("GC (1.1.0) succeeds", c.ok, c)
    t.check("GC keeps the valid attachment", d.pod(keep.cid) is not None, d.pods())
    t.check("GC removes the attachments not listed",
            all(d.pod(p.cid) is None for p in gpods[1:]),
            [p.get("containerID") for p in d.pods()])
    t.check("GC leaves other networks' attachments alone", d.pod(opod.cid) is not None,
            [p.get("containerID") for p in d.pods()])
    for p in gpods + [opod]:
        p.delete()
        run.netns_del(p.ns_name)

    # ---- labels from a Pod manifest after signetctl sync -----------------
    lnet = Network(run, version="1.0.0", signet_socket=d.socket)
    lpod = Pod(run, lnet.chain(cni_path), namespace="ns-lbl", name="web-1")
    lpod.add()
    reg = d.pod(lpod.cid)
    t.check("labels: before the manifest the pod has no object",
            reg is not None and reg.get("hasObject") is False, reg)
    (d.manifest_dir / "ns-lbl.yaml").write_text(f"""\
apiVersion: v1
kind: Namespace
metadata:
  name: ns-lbl
  labels:
    team: blue
---
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: ns-lbl
  uid: {lpod.uid}
  labels:
    app: web
    tier: frontend
spec:
  containers:
  - name: c
    image: example/web
    ports:
    - name: http
      containerPort: 8080
      protocol: TCP
""")
    s = d.sync()
    t.check("signetctl sync exits 0", s.returncode == 0, (s.returncode, s.stdout, s.stderr))
    words = s.stdout.split()
    applied = int(words[-1]) if len(words) >= 3 and words[-1].isdigit() else None
    t.check("signetctl sync prints 'applied version N'",
            applied is not None and "applied version" in s.stdout, s.stdout)
    reg = d.pod(lpod.cid) or {}
    t.equal("labels: hasObject after sync", reg.get("hasObject"), True)
    t.equal("labels: pod labels from the manifest", reg.get("labels"), {"app": "web", "tier": "frontend"})
    t.equal("labels: containerPorts from the manifest", reg.get("containerPorts"),
            [{"name": "http", "containerPort": 8080, "protocol": "TCP"}])
    if applied is not None:
        t.check("labels: pod appliedVersion >= synced version",
                isinstance(reg.get("appliedVersion"), int) and reg["appliedVersion"] >= applied, reg)
        st = d.status()
        t.check("status appliedVersion >= synced version",
                isinstance(st.get("appliedVersion"), int) and st["appliedVersion"] >= applied, st)
    lpod.delete()
    run.netns_del(lpod.ns_name)

    # ---- restart keeps registrations, drops one whose netns vanished -----
    rnet = Network(run, version="1.0.0", signet_socket=d.socket)
    rch = rnet.chain(cni_path)
    r1, r2 = Pod(run, rch, namespace="ns-r"), Pod(run, rch, namespace="ns-r")
    r1.add()
    r2.add()
    before = d.pod(r1.cid)
    t.equal("restart: signetd exits 0 on SIGTERM", d.stop(), 0)
    run.netns_del(r2.ns_name)
    t.check("restart: r2's netns deleted while signetd is down", r2.ns_name not in netns_list())
    d.start()
    after = d.pod(r1.cid)
    t.check("restart: r1 still registered after restart", after is not None, d.pods())
    if before and after:
        for k in ("containerID", "ifname", "netns", "namespace", "name", "uid", "ips", "mac"):
            t.equal(f"restart: r1 {k} unchanged", after.get(k), before.get(k))
    t.check("restart: r2 (netns gone) dropped", d.pod(r2.cid) is None, d.pods())
    try:
        r2.delete()
        t.check("restart: chain DEL of r2 with its netns gone succeeds", True)
    except ChainError as e:
        t.check("restart: chain DEL of r2 with its netns gone succeeds", False, e)
    r1.delete()
    run.netns_del(r1.ns_name)
    t.equal("restart: no lease left", rnet.leases(), [])

    # ---- 50 pods in parallel --------------------------------------------
    N = 50
    pnet = Network(run, version="1.0.0", signet_socket=d.socket)
    pch = pnet.chain(cni_path)
    pods = [Pod(run, pch, namespace="ns-par", name=f"p-{i}") for i in range(N)]
    res = parallel(lambda p: p.add(), pods, workers=25)
    errs = [(p.name, r) for p, r in res if isinstance(r, Exception)]
    t.check(f"parallel: {N} ADDs succeed", not errs, errs[:3])
    regs = {p["containerID"]: p for p in d.pods()}
    t.equal(f"parallel: all {N} registered after ADD", sum(p.cid in regs for p in pods), N)
    wrong = [p.name for p in pods if p.cid in regs and p.result is not None
             and sorted(regs[p.cid].get("ips") or []) != sorted(result_ips(p.result))]
    t.equal("parallel: every registration has its own pod's ips", wrong, [])
    ips = [a for p in pods if p.result for a in result_ips(p.result)]
    t.equal("parallel: all addresses distinct", len(set(ips)), len(ips))
    res = parallel(lambda p: p.delete(), pods, workers=25)
    errs = [(p.name, r) for p, r in res if isinstance(r, Exception)]
    t.check(f"parallel: {N} DELs succeed", not errs, errs[:3])
    regs = {p["containerID"] for p in d.pods()}
    t.equal("parallel: 0 registered after DEL", sum(p.cid in regs for p in pods), 0)
    t.equal("parallel: no veth left on the bridge", bridge_ports(pnet.bridge), [])
    t.equal("parallel: no host-local lease left", pnet.leases(), [])
    for p in pods:
        run.netns_del(p.ns_name)
    left = set(netns_list()) & {p.ns_name for p in pods}
    t.equal("parallel: no netns left", sorted(left), [])

    st = d.status()
    t.equal("signetctl status: pods == 0 at the end", st.get("pods"), 0)
    t.equal("signetctl pods empty at the end", d.pods(), [])
    t.equal("signetd exits 0 on SIGTERM at the end", d.stop(), 0)
    t.equal("no netns of this run left", [x for x in run.leftovers() if x.startswith("netns")], [])


if __name__ == "__main__":
    main("test_cni_direct", body)
