#!/usr/bin/python3
"""Integration-test harness for signet: real netns, real CNI plugins, real signetd.

Python 3 standard library only. Conventions for test scripts:

* each test file is an executable script; exit status 0 = pass, 1 = fail,
  77 = skip (a LOUD reason is printed: not root, a tool missing, ...);
* one output line per check: ``PASS <what>`` or ``FAIL <what> -- <detail>``;
* everything created by a run (netns, bridges and their veths, processes,
  host-local leases, temp dirs) is registered with a :class:`Run` and removed
  when it closes, also on failure, on an exception and on SIGTERM/SIGINT.

Environment:

* ``SIGNET_BUILD_DIR``: meson build dir holding ``cni-plugin/signet``,
  ``controller/signetd`` and ``controller/signetctl`` (default: ``<repo>/build``);
* ``SIGNET_CNI_BIN_DIR``: reference CNI plugins (default ``/usr/lib/cni``);
* ``SIGNET_TEST_KEEP=1``: keep the temp dir (for debugging; netns, links and
  processes are still removed).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import http.client
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from pathlib import Path

SKIP = 77
REPO = Path(__file__).resolve().parents[2]
CNI_BIN_DIR = os.environ.get("SIGNET_CNI_BIN_DIR", "/usr/lib/cni")
SUPPORTED_BY_SIGNET = ("0.4.0", "1.0.0", "1.1.0")


def log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------
# test outcome

class SkipTest(Exception):
    """The capability the test needs is truly absent on this machine."""


class Fatal(Exception):
    """A required step failed; later checks cannot run."""


class Test:
    """Counts checks; prints one line per check."""

    def __init__(self, name: str):
        self.name = name
        self.passed = 0
        self.failed: list[str] = []
        self._lock = threading.Lock()

    def check(self, what: str, cond, detail=None) -> bool:
        with self._lock:
            if cond:
                self.passed += 1
                log(f"PASS {what}")
            else:
                self.failed.append(what)
                d = "" if detail is None else f" -- {_short(detail)}"
                log(f"FAIL {what}{d}")
        return bool(cond)

    def require(self, what: str, cond, detail=None) -> None:
        if not self.check(what, cond, detail):
            raise Fatal(what)

    def equal(self, what: str, got, want) -> bool:
        r = repr(got)
        shown = f"{what} (= {r})" if got == want and len(r) <= 60 else what
        return self.check(shown, got == want, f"got {got!r}, want {want!r}")

    def note(self, msg: str) -> None:
        log(f"NOTE {msg}")

    def loud(self, msg: str) -> None:
        bar = "!" * 78
        log(f"{bar}\n!!! {msg}\n{bar}")


def _short(x, limit=1500) -> str:
    s = x if isinstance(x, str) else repr(x)
    s = s.strip()
    return s if len(s) <= limit else s[:limit] + f"... [{len(s) - limit} more chars]"


def skip(reason: str) -> None:
    raise SkipTest(reason)


def require_root_and_tools(*tools: str) -> None:
    if os.geteuid() != 0:
        skip("not running as root: network namespaces, bridges and veths need root")
    for t in ("ip",) + tools:
        if shutil.which(t) is None and not os.path.exists(t):
            skip(f"required tool {t!r} is not installed")
    for p in ("bridge", "host-local"):
        if not os.access(os.path.join(CNI_BIN_DIR, p), os.X_OK):
            skip(f"reference CNI plugin {p!r} not found in {CNI_BIN_DIR} "
                 "(apt-get install containernetworking-plugins)")


def main(name: str, body) -> None:
    """Run body(test, run) and exit 0/1/77. Never returns."""
    test = Test(name)
    log(f"=== {name} (pid {os.getpid()})")
    code = 0
    run = None
    try:
        run = Run(test)
        body(test, run)
    except SkipTest as e:
        test.loud(f"SKIP {name}: {e}")
        code = SKIP
    except Fatal as e:
        log(f"FATAL: required check failed, stopping: {e}")
        code = 1
    except KeyboardInterrupt:
        log("FATAL: interrupted (signal)")
        code = 1
    except Exception:  # noqa: BLE001 - report everything
        log("FATAL: unexpected exception:\n" + traceback.format_exc())
        code = 1
    if code == 0 and test.failed:
        code = 1
    if run is not None and code == 1:
        run.dump_logs()
    if run is not None:
        try:
            run.close()
        except BaseException as e:  # noqa: BLE001
            run.cleanup_problems.append(f"close: {e!r}")
        for leak in run.cleanup_problems:
            log(f"FAIL cleanup: {leak}")
            code = 1 if code != SKIP else code
    verdict = {0: "PASS", 1: "FAIL", SKIP: "SKIP"}[code]
    log(f"=== {name}: {verdict} ({test.passed} passed, {len(test.failed)} failed)")
    if test.failed:
        for f in test.failed:
            log(f"    failed: {f}")
    sys.stdout.flush()
    os._exit(code)


# --------------------------------------------------------------------------
# small utilities


def wait_until(pred, timeout=10.0, step=0.05):
    """Calls pred() until it returns something true or `timeout` seconds
    passed; returns its last value."""
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > end:
            return v
        time.sleep(step)

def sh(*argv, check=True, timeout=60, input=None, env=None) -> subprocess.CompletedProcess:
    p = subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                       timeout=timeout, input=input, env=env)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} exited {p.returncode}: "
                           f"{p.stdout.strip()} {p.stderr.strip()}")
    return p


def netns_list() -> list[str]:
    p = sh("ip", "netns", "list", check=False)
    return [line.split()[0] for line in p.stdout.splitlines() if line.strip()]


def links() -> dict[str, dict]:
    p = sh("ip", "-j", "link", "show", check=False)
    try:
        return {l["ifname"]: l for l in json.loads(p.stdout or "[]")}
    except json.JSONDecodeError:
        return {}


def link_exists(name: str) -> bool:
    return sh("ip", "link", "show", "dev", name, check=False).returncode == 0


def bridge_ports(bridge: str) -> list[str]:
    p = sh("ip", "-j", "link", "show", "master", bridge, check=False)
    if p.returncode != 0:
        return []
    return [l["ifname"] for l in json.loads(p.stdout or "[]")]


def netns_links(netns: str) -> list[str]:
    p = sh("ip", "-n", netns, "-j", "link", "show", check=False)
    if p.returncode != 0:
        return []
    return [l["ifname"] for l in json.loads(p.stdout or "[]")]


def netns_addrs(netns: str, ifname: str) -> list[str]:
    p = sh("ip", "-n", netns, "-j", "addr", "show", "dev", ifname, check=False)
    if p.returncode != 0:
        return []
    out = []
    for l in json.loads(p.stdout or "[]"):
        for a in l.get("addr_info", []):
            if a.get("family") == "inet":
                out.append(f"{a['local']}/{a['prefixlen']}")
    return out


def mounts_under(root) -> list[str]:
    """Mount points at or below root, deepest first (from /proc/self/mountinfo)."""
    root = str(root).rstrip("/")
    out = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                mp = line.split()[4].encode().decode("unicode_escape")
                if mp == root or mp.startswith(root + "/"):
                    out.append(mp)
    except OSError:
        pass
    return sorted(set(out), key=len, reverse=True)


def snapshot_paths(roots) -> set[str]:
    """Every path below the given roots (to remove later what a run created)."""
    out = set()
    for r in roots:
        if not os.path.lexists(r):
            continue
        out.add(r)
        for dirpath, dirnames, filenames in os.walk(r):
            for n in dirnames + filenames:
                out.add(os.path.join(dirpath, n))
    return out


def remove_new_paths(before: set[str], roots) -> list[str]:
    """Remove paths below roots that are not in `before` (deepest first)."""
    removed = []
    for p in sorted(snapshot_paths(roots) - before, key=len, reverse=True):
        try:
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            else:
                os.unlink(p)
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed


def used_ipv4_networks() -> list[ipaddress.IPv4Network]:
    nets = []
    p = sh("ip", "-4", "-j", "addr", "show", check=False)
    for l in json.loads(p.stdout or "[]"):
        for a in l.get("addr_info", []):
            try:
                nets.append(ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False))
            except (KeyError, ValueError):
                pass
    p = sh("ip", "-4", "-j", "route", "show", "table", "all", check=False)
    for r in json.loads(p.stdout or "[]"):
        dst = r.get("dst", "")
        if dst and dst != "default":
            try:
                nets.append(ipaddress.ip_network(dst if "/" in dst else dst + "/32", strict=False))
            except ValueError:
                pass
    return nets


def result_ips(result: dict) -> list[str]:
    """Addresses of a CNI result (0.4.0/1.x: ips[].address)."""
    return [ip["address"] for ip in result.get("ips", [])]


def ips_of_interface(result: dict, ifname: str, netns: str) -> list[str]:
    """Addresses that the result assigns to the sandbox interface ifname."""
    ifaces = result.get("interfaces", [])
    idx = {i for i, itf in enumerate(ifaces)
           if itf.get("name") == ifname and itf.get("sandbox") == netns}
    out = []
    for ip in result.get("ips", []):
        if "interface" not in ip or ip["interface"] in idx:
            out.append(ip["address"])
    return out


def version_tuple(v: str) -> tuple:
    return tuple(int(x) for x in v.split("."))


# --------------------------------------------------------------------------
# unix-socket HTTP (for /readyz)

class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 2.0):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


def unix_http_get(sock_path: str, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    c = _UnixHTTPConnection(sock_path, timeout)
    try:
        c.request("GET", path, headers={"Host": "x"})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


# --------------------------------------------------------------------------
# signet binaries

def build_dir() -> Path:
    return Path(os.environ.get("SIGNET_BUILD_DIR", REPO / "build"))


def signet_binaries() -> dict[str, Path]:
    b = build_dir()
    return {
        "signet": b / "cni-plugin" / "signet",
        "signetd": b / "controller" / "signetd",
        "signetctl": b / "controller" / "signetctl",
    }


def require_signet_binaries(test: Test) -> dict[str, Path]:
    """Missing binaries are a FAILURE (the build should have made them), not a skip."""
    bins = signet_binaries()
    missing = [str(p) for p in bins.values() if not os.access(p, os.X_OK)]
    if missing:
        test.loud("signet binaries missing (build them: meson setup build && ninja -C build): "
                  + ", ".join(missing))
        test.require("signet binaries exist in SIGNET_BUILD_DIR", False, missing)
    return bins


# --------------------------------------------------------------------------
# CNI invocation

class CniCall:
    def __init__(self, argv0, command, rc, stdout, stderr, stdin):
        self.plugin = argv0
        self.command = command
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr
        self.stdin = stdin
        try:
            self.json = json.loads(stdout) if stdout.strip() else None
        except json.JSONDecodeError:
            self.json = None

    @property
    def ok(self) -> bool:
        return self.rc == 0

    @property
    def code(self):
        """CNI error code from the error JSON on stdout, or None."""
        if isinstance(self.json, dict) and "code" in self.json:
            return self.json["code"]
        return None

    def __repr__(self):
        return (f"<{os.path.basename(str(self.plugin))} {self.command} rc={self.rc} "
                f"stdout={_short(self.stdout, 600)!r} stderr={_short(self.stderr, 600)!r}>")


def cni_exec(plugin, command: str, config=None, *, containerid="", netns="", ifname="eth0",
             args="", path: str = CNI_BIN_DIR, env_extra: dict | None = None,
             unset: tuple = (), timeout: float = 60) -> CniCall:
    """Run one CNI plugin like a runtime does: CNI_* env + config on stdin."""
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": containerid,
        "CNI_NETNS": netns,
        "CNI_IFNAME": ifname,
        "CNI_ARGS": args,
        "CNI_PATH": path,
    }
    if env_extra:
        env.update(env_extra)
    for k in unset:
        env.pop(k, None)
    if config is None:
        stdin = b""
    elif isinstance(config, (bytes, bytearray)):
        stdin = bytes(config)
    elif isinstance(config, str):
        stdin = config.encode()
    else:
        stdin = json.dumps(config).encode()
    p = subprocess.run([str(plugin)], input=stdin, capture_output=True, env=env, timeout=timeout)
    return CniCall(plugin, command, p.returncode, p.stdout.decode(errors="replace"),
                   p.stderr.decode(errors="replace"), stdin)


def k8s_args(namespace=None, name=None, uid=None, infra=None) -> str:
    parts = ["IgnoreUnknown=1"]
    if namespace is not None:
        parts.append(f"K8S_POD_NAMESPACE={namespace}")
    if name is not None:
        parts.append(f"K8S_POD_NAME={name}")
    if uid is not None:
        parts.append(f"K8S_POD_UID={uid}")
    if infra is not None:
        parts.append(f"K8S_POD_INFRA_CONTAINER_ID={infra}")
    return ";".join(parts)


class ChainError(Exception):
    def __init__(self, index: int, call: CniCall):
        super().__init__(f"plugin #{index} {call!r}")
        self.index = index
        self.call = call


_version_cache: dict[str, list[str]] = {}
_version_lock = threading.Lock()


def plugin_supported_versions(path: str) -> list[str]:
    with _version_lock:
        if path not in _version_cache:
            c = cni_exec(path, "VERSION", {"cniVersion": "0.4.0"})
            _version_cache[path] = (c.json or {}).get("supportedVersions", []) if c.ok else []
        return _version_cache[path]


class Chain:
    """Runs a conflist's plugins as libcni does (buildOneConfig: name,
    cniVersion and prevResult injected; ADD in order, CHECK/DEL with the final
    result, DEL in reverse).

    Debian's reference plugins (1.1.1) stop at spec 1.0.0. For a 1.1.0 list
    the harness runs such a plugin at its highest version >= 1.0.0 and relabels
    its result as 1.1.0 (the 1.0.0 and 1.1.0 result schemas are identical);
    ``self.downgraded`` records where that happened so tests can say so.
    """

    def __init__(self, conflist: dict, cni_path: list[str]):
        self.conflist = conflist
        self.cni_path = [str(p) for p in cni_path]
        self.downgraded: set[str] = set()

    def plugin_path(self, type_: str) -> str:
        for d in self.cni_path:
            p = os.path.join(d, type_)
            if os.access(p, os.X_OK):
                return p
        raise FileNotFoundError(f"CNI plugin {type_!r} not found in {self.cni_path}")

    def _conf(self, plugin: dict, prev, version: str):
        c = dict(plugin)
        c["name"] = self.conflist["name"]
        c["cniVersion"] = version
        if prev is not None:
            p = dict(prev)
            p["cniVersion"] = version
            c["prevResult"] = p
        return c

    def _version_for(self, path: str) -> str:
        want = self.conflist["cniVersion"]
        sup = plugin_supported_versions(path)
        if want in sup or not sup:
            return want
        if version_tuple(want) >= (1, 0, 0):
            best = max((v for v in sup if version_tuple(v) >= (1, 0, 0)),
                       key=version_tuple, default=None)
            if best:
                self.downgraded.add(os.path.basename(path))
                return best
        return want

    def _env(self, containerid, netns, ifname, args):
        return dict(containerid=containerid, netns=netns, ifname=ifname, args=args,
                    path=":".join(self.cni_path))

    def add(self, containerid, netns, ifname="eth0", args="", upto=None) -> tuple[dict, list[CniCall]]:
        """ADD through the chain; returns (final result, calls). Raises ChainError."""
        want = self.conflist["cniVersion"]
        prev, calls = None, []
        plugins = self.conflist["plugins"][:upto]
        for i, pl in enumerate(plugins):
            path = self.plugin_path(pl["type"])
            v = self._version_for(path)
            c = cni_exec(path, "ADD", self._conf(pl, prev, v),
                         **self._env(containerid, netns, ifname, args))
            calls.append(c)
            if not c.ok or not isinstance(c.json, dict):
                raise ChainError(i, c)
            prev = dict(c.json)
            prev["cniVersion"] = want
        return prev, calls

    def check(self, containerid, netns, ifname, args, prev) -> list[CniCall]:
        calls = []
        for i, pl in enumerate(self.conflist["plugins"]):
            path = self.plugin_path(pl["type"])
            c = cni_exec(path, "CHECK", self._conf(pl, prev, self._version_for(path)),
                         **self._env(containerid, netns, ifname, args))
            calls.append(c)
            if not c.ok:
                raise ChainError(i, c)
        return calls

    def delete(self, containerid, netns, ifname, args, prev, best_effort=False) -> list[CniCall]:
        calls = []
        plugins = self.conflist["plugins"]
        for i in range(len(plugins) - 1, -1, -1):
            path = self.plugin_path(plugins[i]["type"])
            c = cni_exec(path, "DEL", self._conf(plugins[i], prev, self._version_for(path)),
                         **self._env(containerid, netns, ifname, args))
            calls.append(c)
            if not c.ok and not best_effort:
                raise ChainError(i, c)
        return calls


# --------------------------------------------------------------------------
# networks

class Network:
    """A bridge + host-local (+ signet) conflist with a unique bridge name,
    a free 10.244.X.0/24 subnet and a private host-local dataDir."""

    def __init__(self, run: "Run", *, version: str, signet_socket=None, with_signet=True,
                 name=None, signet_extra: dict | None = None):
        self.run = run
        self.name = name or run.name("net")
        self.bridge = run.name("br")
        self.subnet = run.alloc_subnet()
        self.data_dir = run.mkdtemp("ipam")
        run.own_bridge(self.bridge)
        plugins = [{
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": True,
            "ipMasq": False,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": str(self.subnet)}]],
                "dataDir": self.data_dir,
            },
        }]
        if with_signet:
            s = {"type": "signet"}
            if signet_socket is not None:
                s["socket"] = str(signet_socket)
            if signet_extra:
                s.update(signet_extra)
            plugins.append(s)
        self.conflist = {"cniVersion": version, "name": self.name, "plugins": plugins}

    def chain(self, cni_path) -> Chain:
        return Chain(self.conflist, cni_path)

    def write(self, directory) -> Path:
        p = Path(directory) / f"{self.name}.conflist"
        p.write_text(json.dumps(self.conflist, indent=2))
        return p

    def leases(self) -> list[str]:
        d = Path(self.data_dir) / self.name
        if not d.is_dir():
            return []
        return sorted(f.name for f in d.iterdir()
                      if f.name != "lock" and not f.name.startswith("last_reserved_ip"))


# --------------------------------------------------------------------------
# signetd

class Signetd:
    def __init__(self, run: "Run", bins: dict, *, node="node-1", manifest_dir=None, state_dir=None,
                 socket_path=None, log_level="debug", source_args=None):
        self.run = run
        self.bins = bins
        self.node = node
        self.dir = Path(run.mkdtemp("signetd"))
        self.manifest_dir = Path(manifest_dir or self.dir / "manifests")
        self.manifest_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir = Path(state_dir or self.dir / "state")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.socket = str(socket_path or self.dir / "signetd.sock")
        self.log_level = log_level
        # Default: the manifest folder; e.g. ["--source", "kubernetes", "--kubeconfig", F] instead.
        self.source_args = source_args
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.extra_args: list[str] = []  # more signetd flags (outputs, ...)

    def log_path(self) -> Path:
        return self.dir / f"signetd.{self.starts}.log"

    def start(self, timeout=20.0) -> "Signetd":
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("signetd already running")
        self.starts += 1
        logf = open(self.log_path(), "wb")
        source = self.source_args or ["--source", f"dir:{self.manifest_dir}"]
        argv = [str(self.bins["signetd"]), "--node-name", self.node, *source, "--socket", self.socket,
                "--state-dir", str(self.state_dir)]
        if self.log_level:
            argv += ["--log-level", self.log_level]
        argv += self.extra_args
        self.proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        logf.close()
        self.run.own_process(self.proc, f"signetd#{self.starts}")
        self.run.own_log(self.log_path())
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                raise Fatal(f"signetd exited with {rc} before becoming ready; log:\n"
                            + self.log_tail())
            try:
                status, body = unix_http_get(self.socket, "/readyz", timeout=1.0)
                if status == 200:
                    return self
                last = f"/readyz -> {status} {body[:200]!r}"
            except OSError as e:
                last = f"/readyz: {e}"
            time.sleep(0.01)
        raise Fatal(f"signetd not ready after {timeout}s ({last}); log:\n" + self.log_tail())

    def stop(self, timeout=10.0) -> int | None:
        p = self.proc
        if p is None:
            return None
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
                self.run.cleanup_problems.append(f"signetd pid {p.pid} ignored SIGTERM for {timeout}s")
        self.run.disown_process(p)
        self.proc = None
        return p.returncode

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines=200) -> str:
        try:
            text = self.log_path().read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def ctl(self, *args, timeout=30) -> subprocess.CompletedProcess:
        return sh(self.bins["signetctl"], "--socket", self.socket, *args, check=False,
                  timeout=timeout)

    def pods(self) -> list[dict]:
        p = self.ctl("pods", "-o", "json")
        if p.returncode != 0:
            raise Fatal(f"signetctl pods failed rc={p.returncode}: {p.stdout} {p.stderr}")
        try:
            return json.loads(p.stdout)["pods"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise Fatal(f"signetctl pods -o json: unparsable output ({e}): {p.stdout!r}")

    def pod(self, containerid: str, ifname: str = "eth0") -> dict | None:
        for p in self.pods():
            if p.get("containerID") == containerid and p.get("ifname", ifname) == ifname:
                return p
        return None

    def status(self) -> dict:
        p = self.ctl("status", "-o", "json")
        if p.returncode != 0:
            raise Fatal(f"signetctl status failed rc={p.returncode}: {p.stdout} {p.stderr}")
        return json.loads(p.stdout)

    def sync(self, timeout="20s") -> subprocess.CompletedProcess:
        return self.ctl("sync", "--timeout", timeout, timeout=60)


# --------------------------------------------------------------------------
# the run: names + cleanup registry

class Run:
    """Owns every resource a test creates, and removes all of it on close.

    Cleanup order: processes (SIGTERM, then SIGKILL), registered callbacks
    (LIFO), netns, links (bridges; veth pairs die with their netns), temp dirs.
    A final sweep removes any netns or link whose name starts with this run's
    prefix. Idempotent; also runs from atexit and on SIGTERM/SIGINT/SIGHUP.
    """

    def __init__(self, test: Test | None = None):
        self.test = test
        self.pid = os.getpid()
        self.prefix = f"sgt-{self.pid}-"
        self._n = 0
        self._lock = threading.Lock()
        self._callbacks: list[tuple[str, callable]] = []
        self._netns: list[str] = []
        self._links: list[str] = []
        self._procs: list[tuple[subprocess.Popen, str]] = []
        self._logs: list[Path] = []
        self._subnets: set[int] = set()
        self.cleanup_problems: list[str] = []
        self.closed = False
        self.tmp = Path(tempfile.mkdtemp(prefix=f"sgt-{self.pid}-", dir="/tmp"))
        atexit.register(self.close)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            try:
                signal.signal(sig, self._on_signal)
            except ValueError:  # not main thread
                pass

    def _on_signal(self, signum, frame):
        log(f"received signal {signum}: cleaning up")
        raise KeyboardInterrupt()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # names -------------------------------------------------------------
    def name(self, kind: str = "") -> str:
        """Unique name, usable as interface/netns/network name (<= 15 chars)."""
        with self._lock:
            self._n += 1
            n = f"{self.prefix}{self._n}"
        if len(n) > 15:
            raise RuntimeError(f"name {n!r} longer than 15 chars")
        return n

    def uid(self) -> str:
        return str(uuid.uuid4())

    def container_id(self) -> str:
        return uuid.uuid4().hex + uuid.uuid4().hex[:32]

    def alloc_subnet(self) -> ipaddress.IPv4Network:
        used = used_ipv4_networks()
        start = (self.pid * 7) % 250
        with self._lock:
            for k in range(250):
                x = (start + k) % 250 + 1
                net = ipaddress.ip_network(f"10.244.{x}.0/24")
                if x in self._subnets or any(net.overlaps(u) for u in used if u.prefixlen > 0):
                    continue
                self._subnets.add(x)
                return net
        raise Fatal("no free 10.244.X.0/24 subnet on this host")

    # temp dirs ---------------------------------------------------------
    def mkdtemp(self, kind: str = "d") -> str:
        return tempfile.mkdtemp(prefix=f"{kind}-", dir=self.tmp)

    # registrations -----------------------------------------------------
    def on_cleanup(self, what: str, fn) -> None:
        with self._lock:
            self._callbacks.append((what, fn))

    def own_process(self, proc: subprocess.Popen, what: str) -> None:
        with self._lock:
            self._procs.append((proc, what))

    def disown_process(self, proc) -> None:
        with self._lock:
            self._procs = [(p, w) for p, w in self._procs if p is not proc]

    def own_log(self, path: Path) -> None:
        with self._lock:
            self._logs.append(Path(path))

    def own_bridge(self, name: str) -> None:
        with self._lock:
            self._links.append(name)

    def netns_add(self, name: str | None = None) -> tuple[str, str]:
        """Create a netns; returns (name, path). lo is brought up."""
        name = name or self.name("ns")
        with self._lock:
            self._netns.append(name)
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name, f"/run/netns/{name}"

    def netns_del(self, name: str) -> None:
        sh("ip", "netns", "del", name, check=False)

    # logs --------------------------------------------------------------
    def dump_logs(self) -> None:
        for p in self._logs:
            try:
                text = p.read_text(errors="replace").splitlines()
            except OSError:
                continue
            log(f"----- {p} (last {min(len(text), 300)} of {len(text)} lines)")
            for line in text[-300:]:
                log(f"  | {line}")
            log(f"----- end of {p}")

    # leak report (before close) ------------------------------------------
    def leftovers(self) -> list[str]:
        out = [f"netns {n}" for n in netns_list() if n.startswith(self.prefix)]
        out += [f"link {n}" for n in links() if n.startswith(self.prefix)]
        return out

    # cleanup -------------------------------------------------------------
    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for proc, what in list(self._procs):
            try:
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGTERM)
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        os.kill(proc.pid, signal.SIGKILL)
                        proc.wait(5)
                        self.cleanup_problems.append(f"{what} (pid {proc.pid}) needed SIGKILL")
            except Exception as e:  # noqa: BLE001
                self.cleanup_problems.append(f"stopping {what}: {e}")
        self._procs.clear()
        for what, fn in reversed(self._callbacks):
            try:
                fn()
            except Exception as e:  # noqa: BLE001
                self.cleanup_problems.append(f"cleanup step {what!r}: {e}")
        self._callbacks.clear()
        for n in set(self._netns) | {n for n in netns_list() if n.startswith(self.prefix)}:
            sh("ip", "netns", "del", n, check=False)
        for l in set(self._links) | {l for l in links() if l.startswith(self.prefix)}:
            if link_exists(l):
                sh("ip", "link", "del", l, check=False)
        for m in mounts_under(self.tmp):
            sh("umount", "-l", m, check=False)
        if os.environ.get("SIGNET_TEST_KEEP") == "1":
            log(f"NOTE keeping {self.tmp} (SIGNET_TEST_KEEP=1)")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
        left = self.leftovers()
        if left:
            self.cleanup_problems.append("could not remove: " + ", ".join(left))


def parallel(fn, items, workers=16):
    """Run fn(item) on threads; returns list of (item, result or exception)."""
    out = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as ex:
        futs = {ex.submit(fn, it): it for it in items}
        for f in concurrent.futures.as_completed(futs):
            it = futs[f]
            try:
                out.append((it, f.result()))
            except Exception as e:  # noqa: BLE001
                out.append((it, e))
    return out


# --------------------------------------------------------------------------
# spy: records what a runtime really sends to a plugin

def make_spy(run: Run, real, name: str = "signet") -> tuple[Path, Path]:
    """A wrapper named `name` in a fresh dir that records CNI_COMMAND,
    CNI_CONTAINERID, stdin, stdout and exit status of every call, then behaves
    exactly like `real`. Returns (bin dir to put in CNI_PATH, calls dir)."""
    bindir = Path(run.mkdtemp("spybin"))
    calls = Path(run.mkdtemp("spycalls"))
    spy = bindir / name
    spy.write_text(f"""#!/bin/sh
f=$(mktemp -p {calls} call.XXXXXX) || exit 99
printf '%s %s\\n' "$CNI_COMMAND" "$CNI_CONTAINERID" > "$f.cmd"
cat > "$f.stdin"
{real} < "$f.stdin" > "$f.stdout"
rc=$?
echo $rc > "$f.rc"
cat "$f.stdout"
exit $rc
""")
    spy.chmod(0o755)
    return bindir, calls


def spy_calls(calls_dir: Path, cid: str | None = None) -> list[dict]:
    """Recorded calls in order: {cmd, cid, stdin (parsed or None), stdout (parsed or raw), rc}."""
    out = []
    for f in sorted(Path(calls_dir).glob("*.cmd"), key=lambda p: p.stat().st_mtime_ns):
        cmd, _, c = f.read_text().strip().partition(" ")
        if cid is not None and c != cid:
            continue
        base = str(f)[:-4]
        rec = {"cmd": cmd, "cid": c, "stdin": None, "stdout": None, "rc": None}
        try:
            rec["stdin"] = json.loads(Path(base + ".stdin").read_text())
        except (OSError, json.JSONDecodeError):
            pass
        try:
            raw = Path(base + ".stdout").read_text()
            try:
                rec["stdout"] = json.loads(raw) if raw.strip() else None
            except json.JSONDecodeError:
                rec["stdout"] = raw
        except OSError:
            pass
        try:
            rec["rc"] = int(Path(base + ".rc").read_text().strip())
        except (OSError, ValueError):
            pass
        out.append(rec)
    return out

# --------------------------------------------------------------------------
# Helpers shared by the flow tests

# An echo server, dual stack on [::]:PORT: python3 -c ECHO_SERVER PORT;
# prints "ready" once listening.
ECHO_SERVER = r"""
import socket, sys, threading
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[1]))); s.listen(128)
print("ready", flush=True)
def serve(c):
    while True:
        d = c.recv(65536)
        if not d: break
        c.sendall(d)
    c.close()
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# python3 -c ECHO_CLIENT HOST PORT NBYTES TIMEOUT: connects, sends NBYTES,
# reads the echo, closes; prints ok, "short N" or "fail ERROR".
ECHO_CLIENT = r"""
import socket, sys
n = int(sys.argv[3])
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[4]))
    s.sendall(b"x" * n)
    got = 0
    while got < n:
        d = s.recv(65536)
        if not d: break
        got += len(d)
    s.close()
    print("ok" if got == n else f"short {got}", flush=True)
except OSError as e:
    print("fail", type(e).__name__, flush=True)
"""


def influxd_config(data_dir, http_port: int, rpc_port: int) -> str:
    """A config for Debian's influxd 1.x listening on loopback only (never
    every interface, its default), with its data under data_dir."""
    return f"""reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"
[meta]
  dir = "{data_dir}/meta"
[data]
  dir = "{data_dir}/data"
  wal-dir = "{data_dir}/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:{http_port}"
  log-enabled = false
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
[logging]
  level = "warn"
"""


def add_pods(run: "Run", chain: Chain, namespace: str, apps) -> dict[str, dict]:
    """One netns pod per app, named namespace/app, through the CNI chain (ADD
    now, DEL at cleanup). Returns {app: {netns, path, cid, ip, result}}."""
    pods = {}
    for app in apps:
        name, path = run.netns_add()
        cid = run.container_id()
        res, _ = chain.add(cid, path, "eth0", k8s_args(namespace, app, run.uid(), cid))
        pods[app] = {"netns": name, "path": path, "cid": cid, "ip": result_ips(res)[0].split("/")[0], "result": res}
        run.on_cleanup(f"CNI DEL {namespace}/{app}", lambda c=cid, p=path, r=res, a=app:
                       chain.delete(c, p, "eth0", k8s_args(namespace, a), r, best_effort=True))
    return pods
