#!/usr/bin/python3
"""signet driven by containerd's CRI path, as kubelet drives it.

A private containerd 1.6 (own config, root, state, socket; network namespaces
mounted under its own state dir) runs the CNI chain bridge + host-local +
signet for pod sandboxes created through the CRI gRPC API
(runtime.v1.RuntimeService, spoken by test/runtimes/cri/cri.py). The sandbox
("pause") image is built offline from busybox-static and imported with ctr.

Checks:
* RunPodSandbox for 3 pods: each is registered in signetd with the namespace,
  name and uid of PodSandboxConfig.metadata, infraContainerID = sandbox id, the
  netns containerd made, the IP that bridge/host-local gave (the same one CRI
  reports) and the labels of the Pod manifest;
* what containerd sent the plugin: K8S_POD_NAMESPACE/NAME/UID/INFRA_CONTAINER_ID
  in CNI_ARGS, ADD with prevResult;
* StopPodSandbox: DEL with prevResult, registration gone;
  RemovePodSandbox: a second DEL without prevResult (and without a netns) that
  succeeds;
* with signetd down RunPodSandbox fails, the plugin answered ADD with CNI
  error code 11, and containerd's cleanup (DEL) left no sandbox, netns, veth
  or IP lease; after signetd is back, the retry works;
* at the end nothing is left: no sandboxes, netns, veths, leases,
  registrations; then everything this test made is removed (containerd, its
  shims, mounts, cgroups, bridge, signetd, temp dirs) even on failure.

The plugin is reached through a thin logging wrapper (cni/bin/signet in the
temp dir) that records each call's CNI_COMMAND, CNI_ARGS, CNI_NETNS, whether
stdin had a prevResult, the exit code and the output, then passes stdin,
environment, output and exit code through unchanged.

Exit: 0 pass, 1 fail, 77 skip (not root, or containerd/runc/grpc missing).
Environment: SIGNET_BUILD_DIR (default <repo>/build), SIGNET_CNI_BIN_DIR
(default /usr/lib/cni), SIGNET_TEST_KEEP=1 keeps the temp dir.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path

sys.dont_write_bytecode = True  # do not leave __pycache__ in the source tree
REPO = Path(__file__).resolve().parents[2]
CRI_DIR = REPO / "test" / "runtimes" / "cri"
sys.path.insert(0, str(CRI_DIR))
import build_pause_image  # noqa: E402
import cri  # noqa: E402

NAME = "containerd CRI + bridge + signet"
SKIP = 77
CNI_BIN_DIR = os.environ.get("SIGNET_CNI_BIN_DIR", "/usr/lib/cni")
BUILD_DIR = Path(os.environ.get("SIGNET_BUILD_DIR", REPO / "build"))
KEEP = os.environ.get("SIGNET_TEST_KEEP") == "1"
PAUSE_IMAGE = "localhost/signet-pause:test"
NODE = "node-cri"
CNI_ERR_TRY_AGAIN_LATER = 11


def log(msg: str) -> None:
    print(msg, flush=True)


def short(x, limit=1500) -> str:
    s = x if isinstance(x, str) else repr(x)
    s = s.strip()
    return s if len(s) <= limit else s[:limit] + f"... [{len(s) - limit} more chars]"


class Skip(Exception):
    pass


class Fatal(Exception):
    pass


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed: list[str] = []

    def check(self, what: str, cond, detail=None) -> bool:
        if cond:
            self.passed += 1
            log(f"PASS {what}")
        else:
            self.failed.append(what)
            log(f"FAIL {what}" + ("" if detail is None else f" -- {short(detail)}"))
        return bool(cond)

    def equal(self, what: str, got, want) -> bool:
        return self.check(what, got == want, f"got {got!r}, want {want!r}")

    def require(self, what: str, cond, detail=None) -> None:
        if not self.check(what, cond, detail):
            raise Fatal(what)


def loud(msg: str) -> None:
    bar = "!" * 78
    log(f"{bar}\n!!! {msg}\n{bar}")


def sh(*argv, check=False, timeout=30) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout,
                          check=check)


# --------------------------------------------------------------------------
# small helpers

class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 2.0):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


def readyz(sock: str) -> int | str:
    c = UnixHTTP(sock, 1.0)
    try:
        c.request("GET", "/readyz", headers={"Host": "x"})
        r = c.getresponse()
        r.read()
        return r.status
    except OSError as e:
        return str(e)
    finally:
        c.close()


def used_ipv4_networks() -> list:
    nets = []
    for cmd in (("ip", "-4", "-j", "addr", "show"), ("ip", "-4", "-j", "route", "show", "table", "all")):
        try:
            data = json.loads(sh(*cmd).stdout or "[]")
        except json.JSONDecodeError:
            continue
        for e in data:
            for a in e.get("addr_info", []):
                try:
                    nets.append(ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False))
                except (KeyError, ValueError):
                    pass
            dst = e.get("dst", "")
            if dst and dst != "default":
                try:
                    nets.append(ipaddress.ip_network(dst if "/" in dst else dst + "/32", strict=False))
                except ValueError:
                    pass
    return nets


def pick_subnet() -> ipaddress.IPv4Network:
    """A free 10.X.Y.0/24 (X in 201..239, away from the 10.244/16 the other tests use)."""
    used = used_ipv4_networks()
    rnd = random.Random(os.getpid() ^ int(time.time() * 1000))
    for _ in range(500):
        net = ipaddress.ip_network(f"10.{rnd.randint(201, 239)}.{rnd.randint(0, 255)}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise Fatal("no free 10.x.y.0/24 subnet found")


def bridge_ports(bridge: str) -> list[str]:
    p = sh("ip", "-j", "link", "show", "master", bridge)
    if p.returncode != 0:
        return []
    try:
        return [l["ifname"] for l in json.loads(p.stdout or "[]")]
    except json.JSONDecodeError:
        return []


def netns_ipv4(netns_path: str, ifname: str = "eth0") -> list[str]:
    p = sh("nsenter", f"--net={netns_path}", "ip", "-4", "-j", "addr", "show", "dev", ifname)
    if p.returncode != 0:
        return []
    out = []
    for l in json.loads(p.stdout or "[]"):
        for a in l.get("addr_info", []):
            out.append(f"{a['local']}/{a['prefixlen']}")
    return out


def parse_cni_args(s: str) -> dict[str, str]:
    out = {}
    for kv in (s or "").split(";"):
        if "=" in kv:
            k, v = kv.split("=", 1)
            out[k] = v
    return out


# --------------------------------------------------------------------------
# the logging wrapper put in front of the real plugin

WRAPPER = r'''#!/usr/bin/python3
# Thin logging wrapper around the real signet CNI plugin (made by test_containerd_cri.py).
import json, os, subprocess, sys, time
REAL = @REAL@
LOG = @LOG@
stdin = sys.stdin.buffer.read()
try:
    conf = json.loads(stdin or b"{}")
except ValueError:
    conf = {}
t0 = time.monotonic()
p = subprocess.run([REAL], input=stdin, capture_output=True, env=os.environ)
rec = {
    "command": os.environ.get("CNI_COMMAND"),
    "containerID": os.environ.get("CNI_CONTAINERID"),
    "netns": os.environ.get("CNI_NETNS"),
    "ifname": os.environ.get("CNI_IFNAME"),
    "args": os.environ.get("CNI_ARGS"),
    "path": os.environ.get("CNI_PATH"),
    "cniVersion": conf.get("cniVersion") if isinstance(conf, dict) else None,
    "hasPrevResult": isinstance(conf, dict) and "prevResult" in conf,
    "rc": p.returncode,
    "stdout": p.stdout.decode(errors="replace"),
    "stderr": p.stderr.decode(errors="replace")[-2000:],
    "ms": round((time.monotonic() - t0) * 1000, 1),
}
with open(LOG, "a") as f:
    f.write(json.dumps(rec) + "\n")
sys.stdout.buffer.write(p.stdout)
sys.stderr.buffer.write(p.stderr)
sys.exit(p.returncode)
'''


def read_calls(path: str) -> list[dict]:
    try:
        return [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()]
    except (OSError, json.JSONDecodeError):
        return []


# --------------------------------------------------------------------------
# the run: everything it creates, and how to remove it

class Run:
    def __init__(self, t: Checks):
        self.t = t
        self.tag = uuid.uuid4().hex[:6]
        self.base = tempfile.mkdtemp(prefix=f"sgcri-{self.tag}-", dir="/tmp")
        self.bridge = f"sgcri{self.tag}"
        self.net_name = f"signet-cri-{self.tag}"
        self.cgroup_parent = f"/signet-cri-{self.tag}"
        self.containerd = None
        self.signetd: subprocess.Popen | None = None
        self.signetd_logs: list[str] = []
        self.sandboxes: set[str] = set()      # created and not yet removed
        self.all_sandboxes: set[str] = set()  # every id ever returned
        self.problems: list[str] = []
        # host paths containerd or libcni create when absent; removed again only if we made them
        self.host_dirs = [d for d in ("/run/containerd/s", "/run/containerd",
                                      "/var/lib/cni/results", "/var/lib/cni")
                          if not os.path.exists(d)]

    # ---- signetd ---------------------------------------------------------
    def start_signetd(self, bins, manifest_dir, sock, state, timeout=20.0) -> None:
        logp = os.path.join(self.base, f"signetd.{len(self.signetd_logs)}.log")
        self.signetd_logs.append(logp)
        with open(logp, "wb") as lf:
            self.signetd = subprocess.Popen(
                [str(bins["signetd"]), "--node-name", NODE, "--source", f"dir:{manifest_dir}",
                 "--socket", sock, "--state-dir", state, "--log-level", "debug"],
                stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.signetd.poll() is not None:
                raise Fatal(f"signetd exited {self.signetd.returncode} before ready:\n"
                            + tail(logp))
            last = readyz(sock)
            if last == 200:
                return
            time.sleep(0.02)
        raise Fatal(f"signetd not ready in {timeout}s (last /readyz: {last}):\n" + tail(logp))

    def stop_signetd(self, timeout=10.0) -> int | None:
        p = self.signetd
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
                self.problems.append(f"signetd pid {p.pid} ignored SIGTERM for {timeout}s")
        self.signetd = None
        return p.returncode

    # ---- cleanup ---------------------------------------------------------
    def close(self) -> None:
        c = self.containerd
        if c is not None:
            ids = c.known_ids() | self.all_sandboxes
            # polite first: what kubelet would do
            if c.proc is not None and c.proc.poll() is None and self.sandboxes:
                try:
                    with c.client(timeout=20) as cl:
                        for sid in list(self.sandboxes):
                            for fn in (cl.stop_pod_sandbox, cl.remove_pod_sandbox):
                                try:
                                    fn(sid)
                                except Exception as e:  # noqa: BLE001
                                    self.problems.append(f"cleanup {fn.__name__}({sid[:12]}): {e}")
                except Exception as e:  # noqa: BLE001
                    self.problems.append(f"cleanup CRI client: {e}")
            try:
                c.stop()
            except Exception as e:  # noqa: BLE001
                self.problems.append(f"stopping containerd: {e}")
            # leftover containers (runc state under our own root) and shims
            runc_root = os.path.join(c.state, "runc")
            if os.path.isdir(runc_root):
                for nsdir in Path(runc_root).iterdir():
                    for ctr in (nsdir.iterdir() if nsdir.is_dir() else []):
                        self.problems.append(f"container {ctr.name[:12]} left running; killed")
                        sh("runc", "--root", str(nsdir), "delete", "--force", ctr.name)
            killed = c.kill_shims()
            if killed:
                self.problems.append(f"containerd shims left running: {killed}; killed")
                time.sleep(0.2)
            left = cri.unmount_all_under(self.base)
            if left:
                self.problems.append(f"still mounted under {self.base}: {left}")
            ids |= c.known_ids()
            for p in c.remove_host_leftovers(ids):
                self.problems.append(f"left outside the temp dir: {p}; removed")
        self.stop_signetd()
        # veths left on our bridge, then the bridge
        for port in bridge_ports(self.bridge):
            sh("ip", "link", "del", "dev", port)
        sh("ip", "link", "del", "dev", self.bridge)
        # cgroups (runc makes <parent>/pod<uid>/<id> in every hierarchy; v1, hybrid or v2)
        cg = Path("/sys/fs/cgroup")
        for h in [cg] + [d for d in cg.iterdir() if d.is_dir()]:
            top = h / self.cgroup_parent.lstrip("/")
            if top.is_dir():
                for d in sorted((p for p in top.rglob("*") if p.is_dir()),
                                key=lambda p: -len(p.parts)) + [top]:
                    try:
                        d.rmdir()
                    except OSError as e:
                        self.problems.append(f"cgroup {d}: {e}")
        # libcni's result cache (containerd does not let us move it)
        cache = Path("/var/lib/cni/results")
        if cache.is_dir():
            for f in cache.glob(f"{self.net_name}-*"):
                self.problems.append(f"libcni cache entry left: {f}")
                f.unlink(missing_ok=True)
        for d in self.host_dirs:  # listed deepest first
            try:
                os.rmdir(d)
            except OSError:
                pass
        if KEEP:
            log(f"NOTE SIGNET_TEST_KEEP=1: kept {self.base}")
        else:
            shutil.rmtree(self.base, ignore_errors=True)
            if os.path.exists(self.base):
                self.problems.append(f"could not remove {self.base}")

    def dump_logs(self) -> None:
        c = self.containerd
        if c is not None:
            log("----- containerd log (tail) -----\n" + c.log_tail(60))
        for p in self.signetd_logs:
            log(f"----- {os.path.basename(p)} (tail) -----\n" + tail(p, 60))
        calls = os.path.join(self.base, "plugin-calls.jsonl")
        if os.path.exists(calls):
            log("----- plugin calls -----\n" + tail(calls, 40))


def tail(path: str, lines: int = 60) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------
# the test

PODS = [
    {"namespace": "cri-x", "name": "web-a", "labels": {"app": "web", "tier": "frontend"}},
    {"namespace": "cri-x", "name": "db-b", "labels": {"app": "db"}},
    {"namespace": "cri-y", "name": "client-c", "labels": {"role": "client", "pod": "c"}},
]
DOWN_POD = {"namespace": "cri-y", "name": "late-d", "labels": {"pod": "d"}}


def manifests(pods: list[dict]) -> str:
    docs = []
    for ns in sorted({p["namespace"] for p in pods}):
        docs.append({"apiVersion": "v1", "kind": "Namespace",
                     "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}}})
    for p in pods:
        docs.append({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": p["name"], "namespace": p["namespace"], "uid": p["uid"],
                                  "labels": p["labels"]},
                     "spec": {"nodeName": NODE,
                              "containers": [{"name": "c", "image": "example/app",
                                              "ports": [{"name": "http", "containerPort": 80,
                                                         "protocol": "TCP"}]}]}})
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}, indent=1)


def preflight() -> tuple[dict, str]:
    if os.geteuid() != 0:
        raise Skip("not running as root: containerd, network namespaces and bridges need root")
    missing = []
    for tool, pkg in (("containerd", "containerd"), ("ctr", "containerd"),
                      ("containerd-shim-runc-v2", "containerd"), ("runc", "runc"),
                      ("ip", "iproute2"), ("nsenter", "util-linux")):
        if not shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin"):
            missing.append(f"{tool} (apt-get install {pkg})")
    for p in ("bridge", "host-local", "loopback"):
        if not os.access(os.path.join(CNI_BIN_DIR, p), os.X_OK):
            missing.append(f"{CNI_BIN_DIR}/{p} (apt-get install containernetworking-plugins)")
    try:
        import grpc  # noqa: F401
    except ImportError:
        missing.append("python module grpc (apt-get install python3-grpcio)")
    bb = build_pause_image.find_busybox()
    if not bb or not build_pause_image.is_static(bb):
        missing.append("a static busybox (apt-get install busybox-static)")
    if missing:
        raise Skip("missing: " + "; ".join(missing))
    return {"signet": BUILD_DIR / "cni-plugin" / "signet",
            "signetd": BUILD_DIR / "controller" / "signetd",
            "signetctl": BUILD_DIR / "controller" / "signetctl"}, bb


def body(t: Checks, run: Run) -> None:
    bins, _ = preflight()
    absent = [str(p) for p in bins.values() if not os.access(p, os.X_OK)]
    if absent:
        loud("signet binaries missing (meson setup build && ninja -C build): " + ", ".join(absent))
    t.require("signet binaries exist in SIGNET_BUILD_DIR", not absent, absent)

    base = run.base
    subnet = pick_subnet()
    ipam_dir = os.path.join(base, "ipam")
    calls_log = os.path.join(base, "plugin-calls.jsonl")
    s_dir = os.path.join(base, "s")
    m_dir = os.path.join(s_dir, "manifests")
    s_state = os.path.join(s_dir, "state")
    s_sock = os.path.join(s_dir, "signetd.sock")
    for d in (m_dir, s_state, ipam_dir):
        os.makedirs(d, exist_ok=True)

    for p in PODS + [DOWN_POD]:
        p["uid"] = str(uuid.uuid4())
    Path(m_dir, "pods.json").write_text(manifests(PODS + [DOWN_POD]))

    def ctl(*args, timeout=30):
        return sh(bins["signetctl"], "--socket", s_sock, *args, timeout=timeout)

    def registrations() -> list[dict]:
        p = ctl("pods", "-o", "json")
        if p.returncode != 0:
            raise Fatal(f"signetctl pods -o json exited {p.returncode}: {p.stdout} {p.stderr}")
        try:
            return json.loads(p.stdout).get("pods", [])
        except (json.JSONDecodeError, AttributeError) as e:
            raise Fatal(f"signetctl pods -o json printed no JSON ({e}): {p.stdout!r}") from None

    def reg_of(sid: str) -> list[dict]:
        return [r for r in registrations()
                if r.get("containerID") == sid or r.get("infraContainerID") == sid]

    # ---- signetd ---------------------------------------------------------
    run.start_signetd(bins, m_dir, s_sock, s_state)
    t.check("signetd ready (/readyz 200)", True)
    s = ctl("sync")
    t.check("signetctl sync after start exits 0", s.returncode == 0, (s.returncode, s.stdout, s.stderr))

    # ---- containerd ------------------------------------------------------
    wrapper = os.path.join(base, "signet-wrapper")
    Path(wrapper).write_text(WRAPPER.replace("@REAL@", repr(str(bins["signet"])))
                             .replace("@LOG@", repr(calls_log)))
    os.chmod(wrapper, 0o755)
    conflist = {
        "cniVersion": "1.0.0",
        "name": run.net_name,
        "plugins": [
            {"type": "bridge", "bridge": run.bridge, "isGateway": True, "ipMasq": False,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": str(subnet)}]],
                      "dataDir": ipam_dir}},
            {"type": "signet", "socket": s_sock},
        ],
    }
    c = cri.Containerd(os.path.join(base, "c"), conflist=conflist, sandbox_image=PAUSE_IMAGE,
                       cni_plugins={"bridge": f"{CNI_BIN_DIR}/bridge",
                                    "host-local": f"{CNI_BIN_DIR}/host-local",
                                    "loopback": f"{CNI_BIN_DIR}/loopback",
                                    "signet": wrapper})
    run.containerd = c
    t0 = time.monotonic()
    try:
        c.start()
    except RuntimeError as e:
        raise Fatal(str(e)) from None
    t.check(f"private containerd up ({time.monotonic() - t0:.1f}s)", True)
    cl = c.client(timeout=60)
    v = cl.version()
    t.check("CRI Version answers runtime.v1 from containerd",
            v["runtimeName"] == "containerd" and v["runtimeApiVersion"] == "v1", v)
    log(f"NOTE runtime {v['runtimeName']} {v['runtimeVersion']}, CRI {v['runtimeApiVersion']}")

    tar = os.path.join(base, "pause.tar")
    build_pause_image.build(tar, PAUSE_IMAGE)
    try:
        c.import_image(tar)
    except RuntimeError as e:
        raise Fatal(str(e)) from None
    img = cl.image_status(PAUSE_IMAGE)
    t.require("pause image (busybox-static) imported and seen by CRI",
              img is not None and PAUSE_IMAGE in img["repoTags"], img)

    netns_dir = os.path.join(c.state, "io.containerd.grpc.v1.cri", "netns")

    def leases() -> list[str]:
        d = Path(ipam_dir, run.net_name)
        return sorted(f.name for f in d.iterdir()
                      if f.name != "lock" and not f.name.startswith("last_reserved_ip")) \
            if d.is_dir() else []

    def netns_files() -> list[str]:
        return sorted(os.listdir(netns_dir)) if os.path.isdir(netns_dir) else []

    def run_pod(p: dict, attempt: int = 0) -> str:
        return cl.run_pod_sandbox(name=p["name"], namespace=p["namespace"], uid=p["uid"],
                                  attempt=attempt, hostname=p["name"],
                                  labels={"io.kubernetes.pod.name": p["name"],
                                          "io.kubernetes.pod.namespace": p["namespace"],
                                          "io.kubernetes.pod.uid": p["uid"]},
                                  cgroup_parent=f"{run.cgroup_parent}/pod{p['uid']}")

    def check_registered(p: dict, sid: str, label: str) -> None:
        st = cl.pod_sandbox_status(sid, verbose=True)
        t.equal(f"{label}: CRI sandbox ready", st["state"], "SANDBOX_READY")
        spec = (st["info"].get("info") or {}).get("runtimeSpec") or {}
        netns = next((n.get("path") for n in spec.get("linux", {}).get("namespaces", [])
                      if n.get("type") == "network"), None)
        cri_ips = st["ips"]
        regs = reg_of(sid)
        if not t.check(f"{label}: registered in signetd (signetctl pods)", len(regs) == 1,
                       f"{len(regs)} registrations for {sid[:12]}; all: {registrations()}"):
            return
        r = regs[0]
        want = {"namespace": p["namespace"], "name": p["name"], "uid": p["uid"],
                "infraContainerID": sid, "containerID": sid, "ifname": "eth0", "netns": netns}
        for k, w in want.items():
            t.equal(f"{label}: registration {k}", r.get(k), w)
        ips = r.get("ips") or []
        t.check(f"{label}: registered ips are the CRI pod IP from {subnet}",
                len(ips) == 1 and ips[0].split("/")[0] in cri_ips
                and ipaddress.ip_interface(ips[0]).network == subnet, (ips, cri_ips))
        t.check(f"{label}: the pod's eth0 carries that address",
                netns is not None and netns_ipv4(netns) == ips, (netns, netns_ipv4(netns or "-"), ips))
        t.equal(f"{label}: labels from the Pod manifest", r.get("labels"), p["labels"])

    # ---- 3 pods through RunPodSandbox ------------------------------------
    sids: list[str] = []
    for p in PODS:
        label = f"pod {p['namespace']}/{p['name']}"
        t0 = time.monotonic()
        try:
            sid = run_pod(p)
        except cri.CRIError as e:
            t.check(f"{label}: RunPodSandbox succeeds", False, e)
            sids.append("")
            continue
        run.sandboxes.add(sid)
        run.all_sandboxes.add(sid)
        sids.append(sid)
        t.check(f"{label}: RunPodSandbox succeeds ({time.monotonic() - t0:.2f}s)", True)
        check_registered(p, sid, label)

    calls = read_calls(calls_log)
    adds = [x for x in calls if x["command"] == "ADD"]
    for p, sid in zip(PODS, sids):
        if not sid:
            continue
        label = f"pod {p['namespace']}/{p['name']}"
        mine = [x for x in adds if x["containerID"] == sid]
        if not t.check(f"{label}: containerd ran signet ADD once", len(mine) == 1, mine):
            continue
        a = mine[0]
        args = parse_cni_args(a["args"])
        t.equal(f"{label}: CNI_ARGS K8S_POD_* as kubelet's runtime sets them",
                {k: args.get(k) for k in ("K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_UID",
                                          "K8S_POD_INFRA_CONTAINER_ID")},
                {"K8S_POD_NAMESPACE": p["namespace"], "K8S_POD_NAME": p["name"],
                 "K8S_POD_UID": p["uid"], "K8S_POD_INFRA_CONTAINER_ID": sid})
        t.check(f"{label}: ADD had prevResult and exited 0", a["hasPrevResult"] and a["rc"] == 0, a)
        if p is PODS[0]:
            log(f"NOTE observed ADD: CNI_ARGS={a['args']} CNI_NETNS={a['netns']} "
                f"CNI_IFNAME={a['ifname']} cniVersion={a['cniVersion']}")

    # ---- Stop (DEL with prevResult) and Remove (DEL without) -------------
    for p, sid in zip(PODS, sids):
        if not sid:
            continue
        label = f"pod {p['namespace']}/{p['name']}"
        n0 = len(read_calls(calls_log))
        try:
            cl.stop_pod_sandbox(sid)
            ok, err = True, None
        except cri.CRIError as e:
            ok, err = False, e
        t.check(f"{label}: StopPodSandbox succeeds", ok, err)
        stop_calls = [x for x in read_calls(calls_log)[n0:] if x["containerID"] == sid]
        t.check(f"{label}: stop ran DEL with prevResult, exit 0",
                [(x["command"], x["hasPrevResult"], x["rc"]) for x in stop_calls] == [("DEL", True, 0)],
                stop_calls)
        t.check(f"{label}: registration gone after StopPodSandbox", reg_of(sid) == [], reg_of(sid))
        t.equal(f"{label}: CRI state after stop", cl.pod_sandbox_status(sid)["state"],
                "SANDBOX_NOTREADY")

        n1 = len(read_calls(calls_log))
        try:
            cl.remove_pod_sandbox(sid)
            ok, err = True, None
            run.sandboxes.discard(sid)
        except cri.CRIError as e:
            ok, err = False, e
        t.check(f"{label}: RemovePodSandbox succeeds", ok, err)
        rm_calls = [x for x in read_calls(calls_log)[n1:] if x["containerID"] == sid]
        t.check(f"{label}: remove ran a second DEL without prevResult, exit 0",
                [(x["command"], x["hasPrevResult"], x["rc"]) for x in rm_calls] == [("DEL", False, 0)],
                rm_calls)
        if p is PODS[0] and stop_calls and rm_calls:
            log(f"NOTE observed DEL on stop: netns={stop_calls[0]['netns']!r} prevResult=yes; "
                f"DEL on remove: netns={rm_calls[0]['netns']!r} prevResult=no "
                f"CNI_ARGS={rm_calls[0]['args']}")
        t.check(f"{label}: still no registration after RemovePodSandbox", reg_of(sid) == [])
        try:
            cl.pod_sandbox_status(sid)
            gone = False
        except cri.CRIError as e:
            gone = "NotFound" in str(e.code) or "not found" in e.details
        t.check(f"{label}: CRI no longer knows the sandbox", gone)

    # ---- signetd down: RunPodSandbox fails, containerd cleans up ---------
    rc = run.stop_signetd()
    t.check("signetd stops on SIGTERM with exit 0", rc == 0, rc)
    ports0, netns0, leases0 = bridge_ports(run.bridge), netns_files(), leases()
    n0 = len(read_calls(calls_log))
    label = f"pod {DOWN_POD['namespace']}/{DOWN_POD['name']} (signetd down)"
    try:
        sid = run_pod(DOWN_POD)
        run.sandboxes.add(sid)
        run.all_sandboxes.add(sid)
        t.check(f"{label}: RunPodSandbox fails", False, f"it succeeded: {sid}")
    except cri.CRIError as e:
        t.check(f"{label}: RunPodSandbox fails", True)
        log(f"NOTE containerd said: {short(e.details, 400)}")
    down_calls = read_calls(calls_log)[n0:]
    add = [x for x in down_calls if x["command"] == "ADD"]
    code = None
    if add:
        try:
            code = json.loads(add[0]["stdout"]).get("code")
        except (json.JSONDecodeError, AttributeError):
            pass
    t.check(f"{label}: plugin ADD failed with CNI error code {CNI_ERR_TRY_AGAIN_LATER}",
            len(add) == 1 and add[0]["rc"] != 0 and code == CNI_ERR_TRY_AGAIN_LATER, add)
    dels = [x for x in down_calls if x["command"] == "DEL"]
    t.check(f"{label}: containerd's cleanup DEL reached signet and succeeded with signetd down",
            len(dels) >= 1 and all(x["rc"] == 0 for x in dels), down_calls)
    if add and dels:
        log("NOTE failed-ADD sequence: " + ", ".join(
            f"{x['command']}(prevResult={'yes' if x['hasPrevResult'] else 'no'}, rc={x['rc']})"
            for x in down_calls))
    listed = [sb for sb in cl.list_pod_sandbox() if sb["metadata"]["name"] == DOWN_POD["name"]]
    t.check(f"{label}: containerd kept no sandbox", listed == [], listed)
    t.equal(f"{label}: no netns left", netns_files(), netns0)
    t.equal(f"{label}: no veth left on the bridge", bridge_ports(run.bridge), ports0)
    t.equal(f"{label}: no IP lease left", leases(), leases0)

    # ---- signetd back: the retry (as kubelet would, next attempt) works --
    run.start_signetd(bins, m_dir, s_sock, s_state)
    s = ctl("sync")
    t.check("signetd restarted and synced", s.returncode == 0, (s.returncode, s.stdout, s.stderr))
    label = f"pod {DOWN_POD['namespace']}/{DOWN_POD['name']} (retry)"
    try:
        sid = run_pod(DOWN_POD, attempt=1)
        run.sandboxes.add(sid)
        run.all_sandboxes.add(sid)
        t.check(f"{label}: RunPodSandbox succeeds after signetd is back", True)
        check_registered(DOWN_POD, sid, label)
        cl.stop_pod_sandbox(sid)
        t.check(f"{label}: registration gone after StopPodSandbox", reg_of(sid) == [], reg_of(sid))
        cl.remove_pod_sandbox(sid)
        run.sandboxes.discard(sid)
        t.check(f"{label}: RemovePodSandbox succeeds", True)
    except cri.CRIError as e:
        t.check(f"{label}: CRI calls succeed after signetd is back", False, e)

    # ---- nothing left ----------------------------------------------------
    t.equal("end: CRI lists no sandboxes", cl.list_pod_sandbox(), [])
    t.equal("end: no registrations in signetd", registrations(), [])
    t.equal("end: no netns left in containerd's state dir", netns_files(), [])
    t.equal("end: no veth left on the bridge", bridge_ports(run.bridge), [])
    t.equal("end: no host-local leases left", leases(), [])
    t.check("end: every plugin call exited 0 except the ADD with signetd down",
            [x for x in read_calls(calls_log) if x["rc"] != 0] == add[:1],
            [x for x in read_calls(calls_log) if x["rc"] != 0])
    cl.close()


def main() -> int:
    t = Checks()
    log(f"=== {NAME} (pid {os.getpid()})")
    started = time.monotonic()

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    code = 0
    run = None
    try:
        preflight()
        run = Run(t)
        body(t, run)
    except Skip as e:
        loud(f"SKIP {NAME}: {e}")
        code = SKIP
    except Fatal as e:
        log(f"FATAL: required check failed, stopping: {e}")
        code = 1
    except KeyboardInterrupt as e:
        log(f"FATAL: interrupted ({e})")
        t.failed.append(f"interrupted ({e})")
        code = 1
    except Exception:  # noqa: BLE001
        log("FATAL: unexpected exception:\n" + traceback.format_exc())
        code = 1
    if code == 0 and t.failed:
        code = 1
    if run is not None:
        if code == 1:
            run.dump_logs()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            run.close()
        except Exception as e:  # noqa: BLE001
            run.problems.append(f"close: {e!r}\n{traceback.format_exc()}")
        for prob in run.problems:
            log(f"FAIL cleanup: {prob}")
            t.failed.append(f"cleanup: {prob}")
            if code == 0:
                code = 1
    verdict = {0: "PASS", 1: "FAIL", SKIP: "SKIP"}[code]
    log(f"=== {NAME}: {verdict} in {time.monotonic() - started:.1f}s")
    for f in t.failed:
        log(f"    failed: {f}")
    log(f"{t.passed} passed, {len(t.failed)} failed")
    return code


if __name__ == "__main__":
    sys.exit(main())
