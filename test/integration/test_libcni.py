#!/usr/bin/python3
"""signet driven by libcni (the library every Go runtime uses).

Builds test/runtimes/cnitool (Debian's libcni source, offline) into the temp
dir, then ADD / CHECK / CHECK-after-the-registration-vanished / DEL through
bridge + host-local + signet for every spec version this libcni implements
(0.4.0, 1.0.0; 1.1.0 only if Debian's libcni knows it). A spy in front of the
signet binary records what libcni really sends, so the test can see that
CHECK and DEL carry the prevResult that libcni cached on ADD.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (CNI_BIN_DIR, REPO, SUPPORTED_BY_SIGNET, Network, Signetd,  # noqa: E402
                     bridge_ports, cni_exec, k8s_args, main, netns_addrs, require_root_and_tools,
                     require_signet_binaries, result_ips, skip,
                     make_spy, spy_calls)

LIBCNI_SRC = Path("/usr/share/gocode/src/github.com/containernetworking/cni/libcni")
CNITOOL_SRC = REPO / "test" / "runtimes" / "cnitool"


def build_cnitool(t, run) -> Path:
    if shutil.which("go") is None:
        skip("Go compiler missing (apt-get install golang-go)")
    if not LIBCNI_SRC.is_dir():
        skip(f"libcni source missing at {LIBCNI_SRC} (apt-get install golang-github-appc-cni-dev)")
    out = run.tmp / "cnitool"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(run.tmp),
        "GO111MODULE": "off",
        "GOPATH": f"{run.tmp}/gopath:/usr/share/gocode",
        "GOCACHE": str(run.tmp / "gocache"),
        "GOFLAGS": "",
        "CGO_ENABLED": "0",
    }
    p = subprocess.run(["go", "build", "-o", str(out), "."], cwd=CNITOOL_SRC, env=env,
                       capture_output=True, text=True, timeout=180)
    t.require("cnitool builds against Debian's libcni", p.returncode == 0, p.stderr + p.stdout)
    return out


class CniTool:
    def __init__(self, run, binary, cni_path):
        self.binary = binary
        self.cache = run.mkdtemp("cnicache")
        self.cni_path = ":".join(str(p) for p in cni_path)

    def __call__(self, cmd, confdir, net, cid, netns, ifname="eth0", args=""):
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_PATH": self.cni_path,
               "CNI_ARGS": args}
        p = subprocess.run([str(self.binary), "-cache-dir", self.cache, cmd, str(confdir), net,
                            cid, netns, ifname], env=env, capture_output=True, text=True, timeout=120)
        try:
            out = json.loads(p.stdout) if p.stdout.strip() else None
        except json.JSONDecodeError:
            out = None
        return p.returncode, out, p

    def cache_file(self, net, cid, ifname="eth0") -> Path:
        return Path(self.cache) / "results" / f"{net}-{cid}-{ifname}"


def body(t, run):
    require_root_and_tools()
    tool_bin = build_cnitool(t, run)
    p = subprocess.run([str(tool_bin), "version"], capture_output=True, text=True)
    info = json.loads(p.stdout)
    libcni_versions = info["supportedVersions"]
    t.note(f"Debian's libcni implements spec {info['current']} (supports {libcni_versions})")
    versions = [v for v in SUPPORTED_BY_SIGNET if v in libcni_versions]
    for v in SUPPORTED_BY_SIGNET:
        if v not in libcni_versions:
            t.loud(f"cniVersion {v} NOT tested through libcni: Debian's libcni "
                   f"(golang-github-appc-cni-dev, spec {info['current']}) does not implement it "
                   f"(test_cni_direct covers {v} by direct invocation)")

    # ---- baseline: libcni + bridge + host-local, no signet ----------------
    net = Network(run, version="1.0.0", with_signet=False)
    confdir = run.mkdtemp("netd")
    net.write(confdir)
    tool = CniTool(run, tool_bin, [CNI_BIN_DIR])
    ns, nspath = run.netns_add()
    cid = run.container_id()
    rc, res, pr = tool("add", confdir, net.name, cid, nspath, "eth0", k8s_args("default", "base"))
    t.require("baseline (no signet): libcni ADD bridge+host-local", rc == 0, pr.stdout + pr.stderr)
    t.check("baseline: sandbox has the result's address",
            set(netns_addrs(ns, "eth0")) == set(result_ips(res)), (netns_addrs(ns, "eth0"), res))
    rc, _, pr = tool("check", confdir, net.name, cid, nspath, "eth0", k8s_args("default", "base"))
    t.check("baseline: libcni CHECK", rc == 0, pr.stdout + pr.stderr)
    rc, _, pr = tool("del", confdir, net.name, cid, nspath, "eth0", k8s_args("default", "base"))
    t.check("baseline: libcni DEL", rc == 0, pr.stdout + pr.stderr)
    t.equal("baseline: no lease left", net.leases(), [])
    run.netns_del(ns)

    # ---- with signet ----------------------------------------------------
    bins = require_signet_binaries(t)
    d = Signetd(run, bins).start()
    spybin, spydir = make_spy(run, bins["signet"])
    tool = CniTool(run, tool_bin, [CNI_BIN_DIR, spybin])

    for v in versions:
        L = f"[libcni {v}]"
        net = Network(run, version=v, signet_socket=d.socket)
        confdir = run.mkdtemp("netd")
        net.write(confdir)
        ns, nspath = run.netns_add()
        cid, uid = run.container_id(), run.uid()
        args = k8s_args("ns-lib", f"lib-{v.replace('.', '')}", uid, cid)

        rc, res, pr = tool("add", confdir, net.name, cid, nspath, "eth0", args)
        if not t.check(f"{L} ADD bridge+host-local+signet", rc == 0 and isinstance(res, dict),
                       pr.stdout + pr.stderr):
            tool("del", confdir, net.name, cid, nspath, "eth0", args)
            continue
        t.equal(f"{L} result cniVersion", res.get("cniVersion"), v)
        t.check(f"{L} sandbox has the result's address",
                set(netns_addrs(ns, "eth0")) == set(result_ips(res)), (netns_addrs(ns, "eth0"), res))
        reg = d.pod(cid)
        if t.check(f"{L} registered in signetctl pods", reg is not None, d.pods()):
            for k, want in (("namespace", "ns-lib"), ("name", f"lib-{v.replace('.', '')}"),
                            ("uid", uid), ("netns", nspath), ("ifname", "eth0"), ("network", net.name)):
                t.equal(f"{L} registration {k}", reg.get(k), want)
            t.equal(f"{L} registration ips", sorted(reg.get("ips") or []), sorted(result_ips(res)))
        t.check(f"{L} libcni cached the result", tool.cache_file(net.name, cid).is_file(),
                list(Path(tool.cache).rglob("*")))
        adds = [r["stdin"] or {} for r in spy_calls(spydir, cid) if r["cmd"] == "ADD"]
        t.check(f"{L} signet ADD got bridge's result as prevResult",
                len(adds) == 1 and adds[0].get("prevResult", {}).get("ips") == res.get("ips"), adds)

        rc, out, pr = tool("check", confdir, net.name, cid, nspath, "eth0", args)
        t.check(f"{L} CHECK passes", rc == 0, pr.stdout + pr.stderr)
        checks = [r["stdin"] or {} for r in spy_calls(spydir, cid) if r["cmd"] == "CHECK"]
        t.check(f"{L} CHECK reached signet with the cached prevResult",
                len(checks) == 1 and (checks[0].get("prevResult") or {}).get("ips") == res.get("ips"),
                checks)

        # the registration vanishes behind libcni's back
        c = cni_exec(bins["signet"], "DEL",
                     {"cniVersion": v, "name": net.name, "type": "signet", "socket": d.socket},
                     containerid=cid, netns=nspath, ifname="eth0", args=args)
        t.check(f"{L} registration removed behind libcni's back", c.ok and d.pod(cid) is None,
                (c, d.pods()))
        rc, out, pr = tool("check", confdir, net.name, cid, nspath, "eth0", args)
        t.check(f"{L} CHECK after the registration vanished fails", rc != 0, pr.stdout + pr.stderr)
        t.equal(f"{L} ... with signet's CNI error code 102",
                ((out or {}).get("error") or {}).get("code"), 102)

        rc, out, pr = tool("del", confdir, net.name, cid, nspath, "eth0", args)
        t.check(f"{L} DEL passes", rc == 0, pr.stdout + pr.stderr)
        dels = [r["stdin"] or {} for r in spy_calls(spydir, cid) if r["cmd"] == "DEL"]
        t.check(f"{L} DEL reached signet with the cached prevResult",
                len(dels) == 1 and (dels[-1].get("prevResult") or {}).get("ips") == res.get("ips"),
                dels)
        t.check(f"{L} libcni removed its cache entry on DEL",
                not tool.cache_file(net.name, cid).exists())
        t.check(f"{L} not registered after DEL", d.pod(cid) is None, d.pods())
        t.equal(f"{L} no lease left", net.leases(), [])
        t.equal(f"{L} no veth left on the bridge", bridge_ports(net.bridge), [])
        run.netns_del(ns)

    # ---- libcni ADD with signetd down ----------------------------------
    v = "1.0.0"
    net = Network(run, version=v, signet_socket=d.socket, signet_extra={"timeoutSeconds": 3})
    confdir = run.mkdtemp("netd")
    net.write(confdir)
    t.equal("signetd exits 0 on SIGTERM", d.stop(), 0)
    ns, nspath = run.netns_add()
    cid = run.container_id()
    args = k8s_args("ns-lib", "down", run.uid(), cid)
    rc, out, pr = tool("add", confdir, net.name, cid, nspath, "eth0", args)
    t.check("[signetd down] libcni ADD fails", rc != 0, pr.stdout + pr.stderr)
    t.equal("[signetd down] ... with code 11 (try again later)",
            ((out or {}).get("error") or {}).get("code"), 11)
    rc, out, pr = tool("del", confdir, net.name, cid, nspath, "eth0", args)
    t.check("[signetd down] libcni DEL (as the runtime does after a failed ADD) passes", rc == 0,
            pr.stdout + pr.stderr)
    t.equal("[signetd down] no lease left", net.leases(), [])
    t.equal("[signetd down] no veth left on the bridge", bridge_ports(net.bridge), [])
    run.netns_del(ns)
    t.equal("no netns of this run left", [x for x in run.leftovers() if x.startswith("netns")], [])


if __name__ == "__main__":
    main("test_libcni", body)
