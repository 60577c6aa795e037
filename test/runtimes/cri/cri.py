#!/usr/bin/python3
"""A tiny CRI (Kubernetes Container Runtime Interface) client, and a private containerd.

There is no crictl in Debian, so this speaks ``runtime.v1.RuntimeService``
itself, the way kubelet does: gRPC over containerd's unix socket (Debian's
``python3-grpcio``), with the handful of protobuf messages it needs encoded
and decoded by hand below (no generated code, no protoc).

Field numbers are those of k8s.io/cri-api ``pkg/apis/runtime/v1/api.proto``
as compiled into Debian's containerd 1.6.20 (read from the file descriptor
that the containerd binary registers):

    PodSandboxMetadata   name=1 uid=2 namespace=3 attempt=4(uint32)
    PodSandboxConfig     metadata=1 hostname=2 log_directory=3 dns_config=4
                         port_mappings=5 labels=6(map) annotations=7(map) linux=8
    RunPodSandboxRequest config=1 runtime_handler=2;  Response pod_sandbox_id=1
    Stop/RemovePodSandboxRequest pod_sandbox_id=1;    Responses empty
    PodSandboxStatusRequest pod_sandbox_id=1 verbose=2(bool)
    PodSandboxStatusResponse status=1 info=2(map<string,string>)
    PodSandboxStatus     id=1 metadata=2 state=3(enum: 0 READY, 1 NOTREADY)
                         created_at=4 network=5 linux=6 labels=7 annotations=8
                         runtime_handler=9
    PodSandboxNetworkStatus ip=1 additional_ips=2(PodIP{ip=1})
    ListPodSandboxRequest filter=1;  ListPodSandboxResponse items=1(PodSandbox)
    PodSandbox           id=1 metadata=2 state=3 created_at=4 labels=5
                         annotations=6 runtime_handler=7
    VersionRequest version=1;  VersionResponse version=1 runtime_name=2
                         runtime_version=3 runtime_api_version=4

Command line (for poking at a containerd by hand):

    cri.py -a SOCKET version
    cri.py -a SOCKET runp NAMESPACE NAME UID [key=value label ...]
    cri.py -a SOCKET inspectp ID       (PodSandboxStatus, verbose)
    cri.py -a SOCKET stopp ID | rmp ID | pods
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SERVICE = "/runtime.v1.RuntimeService/"
IMAGE_SERVICE = "/runtime.v1.ImageService/"

# --------------------------------------------------------------------------
# protobuf wire format (proto3, the subset CRI needs)

WT_VARINT, WT_I64, WT_LEN, WT_I32 = 0, 1, 2, 5


def _varint(n: int) -> bytes:
    if n < 0:
        n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(field: int, wt: int) -> bytes:
    return _varint((field << 3) | wt)


def f_str(field: int, s: str | bytes | None) -> bytes:
    """A string/bytes field; proto3 omits empty values."""
    if not s:
        return b""
    b = s.encode() if isinstance(s, str) else s
    return _key(field, WT_LEN) + _varint(len(b)) + b


def f_msg(field: int, body: bytes | None, *, always: bool = False) -> bytes:
    """An embedded message field (present even if empty when always=True)."""
    if body is None or (not body and not always):
        return b""
    return _key(field, WT_LEN) + _varint(len(body)) + body


def f_uint(field: int, n: int | bool | None) -> bytes:
    if not n:
        return b""
    return _key(field, WT_VARINT) + _varint(int(n))


def f_map(field: int, m: dict | None) -> bytes:
    """map<string,string>: repeated entry messages {key=1, value=2}."""
    out = b""
    for k, v in sorted((m or {}).items()):
        out += f_msg(field, f_str(1, k) + f_str(2, v), always=True)
    return out


def decode(buf: bytes) -> dict[int, list]:
    """Decode one message level: {field: [int | bytes, ...]} in wire order."""
    out: dict[int, list] = {}
    i, n = 0, len(buf)

    def varint() -> int:
        nonlocal i
        shift = result = 0
        while True:
            if i >= n:
                raise ValueError("truncated varint")
            b = buf[i]
            i += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    while i < n:
        key = varint()
        field, wt = key >> 3, key & 7
        if wt == WT_VARINT:
            val = varint()
        elif wt == WT_LEN:
            ln = varint()
            if i + ln > n:
                raise ValueError("truncated length-delimited field")
            val = bytes(buf[i:i + ln])
            i += ln
        elif wt == WT_I64:
            val = int.from_bytes(buf[i:i + 8], "little")
            i += 8
        elif wt == WT_I32:
            val = int.from_bytes(buf[i:i + 4], "little")
            i += 4
        else:
            raise ValueError(f"unsupported wire type {wt}")
        out.setdefault(field, []).append(val)
    return out


def _s(d: dict, f: int) -> str:
    v = d.get(f)
    return v[-1].decode() if v else ""


def _i(d: dict, f: int) -> int:
    v = d.get(f)
    return v[-1] if v else 0


def _m(d: dict, f: int) -> dict:
    v = d.get(f)
    return decode(v[-1]) if v else {}


def _map(d: dict, f: int) -> dict[str, str]:
    out = {}
    for entry in d.get(f, []):
        e = decode(entry)
        out[_s(e, 1)] = _s(e, 2)
    return out


# --------------------------------------------------------------------------
# messages

def enc_metadata(name: str, uid: str, namespace: str, attempt: int = 0) -> bytes:
    return f_str(1, name) + f_str(2, uid) + f_str(3, namespace) + f_uint(4, attempt)


def dec_metadata(d: dict) -> dict:
    return {"name": _s(d, 1), "uid": _s(d, 2), "namespace": _s(d, 3), "attempt": _i(d, 4)}


def enc_pod_sandbox_config(*, name: str, namespace: str, uid: str, attempt: int = 0,
                           hostname: str = "", log_directory: str = "",
                           labels: dict | None = None, annotations: dict | None = None,
                           cgroup_parent: str = "", dns_servers=(), dns_searches=(),
                           dns_options=()) -> bytes:
    """PodSandboxConfig as kubelet fills it for an ordinary (pod-network) pod."""
    dns = b"".join(f_str(1, s) for s in dns_servers) + \
        b"".join(f_str(2, s) for s in dns_searches) + \
        b"".join(f_str(3, s) for s in dns_options)
    # LinuxPodSandboxConfig{cgroup_parent=1, security_context=2{namespace_options=1
    # {network=1 pid=2 ipc=3: POD=0}}}: the POD namespace mode is the zero value,
    # so an empty NamespaceOption means "own network namespace", as kubelet sends.
    sec = f_msg(1, b"", always=True)
    linux = f_str(1, cgroup_parent) + f_msg(2, sec, always=True)
    return (f_msg(1, enc_metadata(name, uid, namespace, attempt), always=True)
            + f_str(2, hostname) + f_str(3, log_directory)
            + f_msg(4, dns)
            + f_map(6, labels) + f_map(7, annotations)
            + f_msg(8, linux, always=True))


def dec_pod_sandbox_status(d: dict) -> dict:
    net = _m(d, 5)
    ips = [_s(net, 1)] if _s(net, 1) else []
    for extra in net.get(2, []):
        ips.append(_s(decode(extra), 1))
    return {
        "id": _s(d, 1),
        "metadata": dec_metadata(_m(d, 2)),
        "state": "SANDBOX_NOTREADY" if _i(d, 3) == 1 else "SANDBOX_READY",
        "createdAt": _i(d, 4),
        "ips": ips,
        "labels": _map(d, 7),
        "annotations": _map(d, 8),
        "runtimeHandler": _s(d, 9),
    }


def dec_pod_sandbox(d: dict) -> dict:
    return {
        "id": _s(d, 1),
        "metadata": dec_metadata(_m(d, 2)),
        "state": "SANDBOX_NOTREADY" if _i(d, 3) == 1 else "SANDBOX_READY",
        "createdAt": _i(d, 4),
        "labels": _map(d, 5),
        "annotations": _map(d, 6),
        "runtimeHandler": _s(d, 7),
    }


# --------------------------------------------------------------------------
# client

class CRIError(Exception):
    """A CRI call returned a gRPC error status."""

    def __init__(self, method: str, code, details: str):
        super().__init__(f"{method}: {code}: {details}")
        self.method = method
        self.code = code
        self.details = details


def _grpc():
    try:
        import grpc  # Debian: python3-grpcio
    except ImportError as e:  # pragma: no cover - reported by the caller
        raise ImportError("python3-grpcio is not installed (apt-get install python3-grpcio)") from e
    return grpc


class CRIClient:
    def __init__(self, socket_path: str, timeout: float = 60.0):
        grpc = _grpc()
        self._grpc = grpc
        self.socket_path = socket_path
        self.timeout = timeout
        self.channel = grpc.insecure_channel(
            "unix://" + os.path.abspath(socket_path),
            options=[("grpc.enable_http_proxy", 0)])

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def call(self, method: str, request: bytes, timeout: float | None = None,
             service: str = SERVICE) -> dict[int, list]:
        fn = self.channel.unary_unary(service + method,
                                      request_serializer=lambda b: b,
                                      response_deserializer=lambda b: b)
        try:
            raw = fn(request, timeout=timeout or self.timeout)
        except self._grpc.RpcError as e:
            raise CRIError(method, e.code(), e.details()) from None
        return decode(raw)

    def wait_ready(self, timeout: float = 20.0) -> None:
        grpc = self._grpc
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    # RuntimeService
    def version(self) -> dict:
        d = self.call("Version", f_str(1, "v1"))
        return {"version": _s(d, 1), "runtimeName": _s(d, 2), "runtimeVersion": _s(d, 3),
                "runtimeApiVersion": _s(d, 4)}

    def run_pod_sandbox(self, *, runtime_handler: str = "", timeout: float | None = None,
                        **config) -> str:
        req = f_msg(1, enc_pod_sandbox_config(**config), always=True) + f_str(2, runtime_handler)
        return _s(self.call("RunPodSandbox", req, timeout), 1)

    def stop_pod_sandbox(self, sandbox_id: str, timeout: float | None = None) -> None:
        self.call("StopPodSandbox", f_str(1, sandbox_id), timeout)

    def remove_pod_sandbox(self, sandbox_id: str, timeout: float | None = None) -> None:
        self.call("RemovePodSandbox", f_str(1, sandbox_id), timeout)

    def pod_sandbox_status(self, sandbox_id: str, verbose: bool = True) -> dict:
        d = self.call("PodSandboxStatus", f_str(1, sandbox_id) + f_uint(2, verbose))
        st = dec_pod_sandbox_status(_m(d, 1))
        info = _map(d, 2)
        st["info"] = {}
        for k, v in info.items():
            try:
                st["info"][k] = json.loads(v)
            except json.JSONDecodeError:
                st["info"][k] = v
        return st

    def list_pod_sandbox(self) -> list[dict]:
        d = self.call("ListPodSandbox", b"")
        return [dec_pod_sandbox(decode(item)) for item in d.get(1, [])]

    # ImageService
    def image_status(self, image: str) -> dict | None:
        """ImageStatus(ImageSpec{image=1}) → Image{id=1, repo_tags=2} or None."""
        d = self.call("ImageStatus", f_msg(1, f_str(1, image), always=True),
                      service=IMAGE_SERVICE)
        img = _m(d, 1)
        if not img:
            return None
        return {"id": _s(img, 1), "repoTags": [t.decode() for t in img.get(2, [])]}


# --------------------------------------------------------------------------
# a private containerd

def render_config(template: str | Path, **values) -> str:
    text = Path(template).read_text()
    for k, v in values.items():
        text = text.replace(f"@{k.upper()}@", str(v))
    if "@" in "".join(l.split("#")[0] for l in text.splitlines()):
        left = [l for l in text.splitlines() if "@" in l.split("#")[0]]
        raise ValueError(f"unfilled placeholders in containerd config: {left}")
    return text


def mounts_under(prefix: str) -> list[str]:
    """Mount points at or below prefix, deepest first."""
    prefix = os.path.realpath(prefix).rstrip("/")
    out = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                mp = line.split()[4].encode().decode("unicode_escape")
                if mp == prefix or mp.startswith(prefix + "/"):
                    out.append(mp)
    except OSError:
        pass
    return sorted(set(out), key=lambda p: (-p.count("/"), p))


def unmount_all_under(prefix: str) -> list[str]:
    """Unmount everything below prefix (lazily if busy); return what stayed mounted."""
    for _ in range(5):
        mps = mounts_under(prefix)
        if not mps:
            return []
        for mp in mps:
            subprocess.run(["umount", mp], capture_output=True)
    for mp in mounts_under(prefix):
        subprocess.run(["umount", "-l", mp], capture_output=True)
    return mounts_under(prefix)


class Containerd:
    """containerd run privately: own config, root, state, socket, CNI dirs, all in one temp dir.

    Layout under base (kept short: unix socket paths are limited to 107 bytes):
      c.toml, d.sock (+.ttrpc), root/, state/ (runc root, netns mounts), tmp/,
      cni/bin (symlinks to the plugins), cni/conf (the conflist), log
    """

    def __init__(self, base: str, *, cni_plugins: dict[str, str], conflist: dict | None,
                 sandbox_image: str = "localhost/signet-pause:test",
                 template: str | Path = HERE / "containerd.toml.in",
                 snapshotter: str = "overlayfs", log_level: str = "info"):
        self.base = os.path.abspath(base)
        self.config = os.path.join(self.base, "c.toml")
        self.socket = os.path.join(self.base, "d.sock")
        self.root = os.path.join(self.base, "root")
        self.state = os.path.join(self.base, "state")
        self.tmp = os.path.join(self.base, "tmp")
        self.cni_bin = os.path.join(self.base, "cni", "bin")
        self.cni_conf = os.path.join(self.base, "cni", "conf")
        self.log_path = os.path.join(self.base, "containerd.log")
        self.sandbox_image = sandbox_image
        self.proc: subprocess.Popen | None = None
        self._log = None
        for d in (self.root, self.state, self.tmp, self.cni_bin, self.cni_conf):
            os.makedirs(d, exist_ok=True)
        for name, target in cni_plugins.items():
            link = os.path.join(self.cni_bin, name)
            if os.path.lexists(link):
                os.unlink(link)
            os.symlink(target, link)
        if conflist is not None:
            self.write_conflist(conflist)
        runc = shutil.which("runc") or "/usr/sbin/runc"
        Path(self.config).write_text(render_config(
            template, root=self.root, state=self.state, tmp=self.tmp, socket=self.socket,
            log_level=log_level, sandbox_image=sandbox_image, cni_bin_dir=self.cni_bin,
            cni_conf_dir=self.cni_conf, snapshotter=snapshotter, runc=runc))

    def write_conflist(self, conflist: dict) -> str:
        path = os.path.join(self.cni_conf, "10-%s.conflist" % conflist["name"])
        tmp = path + ".tmp"
        Path(tmp).write_text(json.dumps(conflist, indent=2))
        os.replace(tmp, path)
        return path

    def start(self, timeout: float = 30.0) -> "Containerd":
        self._log = open(self.log_path, "ab")
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TMPDIR": self.tmp}
        self.proc = subprocess.Popen(["containerd", "--config", self.config],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited {self.proc.returncode} at start:\n"
                                   + self.log_tail())
            if os.path.exists(self.socket):
                try:
                    with CRIClient(self.socket, timeout=5) as c:
                        c.version()
                    return self
                except CRIError:
                    pass
            time.sleep(0.1)
        raise RuntimeError("containerd's CRI service did not answer in time:\n" + self.log_tail())

    def client(self, timeout: float = 60.0) -> CRIClient:
        return CRIClient(self.socket, timeout=timeout)

    def ctr(self, *args, timeout: float = 60.0) -> subprocess.CompletedProcess:
        return subprocess.run(["ctr", "-a", self.socket, "-n", "k8s.io", *args],
                              capture_output=True, text=True, timeout=timeout)

    def import_image(self, tarball: str) -> None:
        p = self.ctr("images", "import", tarball, timeout=120)
        if p.returncode != 0:
            raise RuntimeError(f"ctr images import failed ({p.returncode}): {p.stdout}{p.stderr}")

    def log_tail(self, lines: int = 80) -> str:
        try:
            text = Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._log:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def known_ids(self) -> set[str]:
        """Ids of every container/sandbox this containerd has state for (also after a crash)."""
        ids: set[str] = set()
        for d in (os.path.join(self.state, "io.containerd.grpc.v1.cri", "sandboxes"),
                  os.path.join(self.root, "io.containerd.grpc.v1.cri", "sandboxes"),
                  os.path.join(self.state, "io.containerd.runtime.v2.task", "k8s.io")):
            if os.path.isdir(d):
                ids.update(os.listdir(d))
        return ids

    def shim_socket(self, container_id: str, namespace: str = "k8s.io") -> str:
        """Where containerd 1.6 puts a shim's socket: /run/containerd/s/sha256(address/ns/id)
        (hard-coded under /run/containerd whatever the config says)."""
        import hashlib
        h = hashlib.sha256(os.path.join(self.socket, namespace, container_id).encode()).hexdigest()
        return os.path.join("/run/containerd/s", h)

    def remove_host_leftovers(self, ids) -> list[str]:
        """Remove what containerd/libcni leave outside our dirs for the given ids when a shim
        or containerd was killed: shim sockets and libcni cache entries. Returns what was removed."""
        removed = []
        for cid in ids:
            paths = [self.shim_socket(cid),
                     f"/var/lib/cni/results/cni-loopback-{cid}-lo"]
            for p in paths:
                if os.path.lexists(p):
                    try:
                        os.unlink(p)
                        removed.append(p)
                    except OSError:
                        pass
        return removed

    def shim_pids(self) -> list[int]:
        """containerd-shim-runc-v2 processes serving this containerd (by its -address)."""
        pids = []
        for p in Path("/proc").iterdir():
            if not p.name.isdigit():
                continue
            try:
                argv = (p / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and os.path.basename(argv[0].decode(errors="replace")).startswith(
                    "containerd-shim") and self.socket.encode() in argv:
                pids.append(int(p.name))
        return pids

    def kill_shims(self) -> list[int]:
        """SIGKILL the shims of this containerd (only those whose -address is our socket)."""
        pids = self.shim_pids()
        for pid in pids:
            try:
                os.killpg(pid, signal.SIGKILL)  # shim and its container processes
            except OSError:
                pass
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        return pids


# --------------------------------------------------------------------------
# command line

def _main(argv: list[str]) -> int:
    import argparse
    ap = argparse.ArgumentParser(description="tiny CRI client (runtime.v1)")
    ap.add_argument("-a", "--address", required=True, help="CRI unix socket")
    ap.add_argument("--timeout", type=float, default=60)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("version")
    r = sub.add_parser("runp")
    r.add_argument("namespace")
    r.add_argument("name")
    r.add_argument("uid")
    r.add_argument("labels", nargs="*", help="key=value")
    for c in ("inspectp", "stopp", "rmp"):
        sub.add_parser(c).add_argument("id")
    sub.add_parser("pods")
    a = ap.parse_args(argv)
    try:
        with CRIClient(a.address, a.timeout) as c:
            if a.cmd == "version":
                out = c.version()
            elif a.cmd == "runp":
                labels = dict(kv.split("=", 1) for kv in a.labels)
                out = {"id": c.run_pod_sandbox(name=a.name, namespace=a.namespace, uid=a.uid,
                                               hostname=a.name, labels=labels)}
            elif a.cmd == "inspectp":
                out = c.pod_sandbox_status(a.id, verbose=True)
            elif a.cmd == "stopp":
                c.stop_pod_sandbox(a.id)
                out = {"stopped": a.id}
            elif a.cmd == "rmp":
                c.remove_pod_sandbox(a.id)
                out = {"removed": a.id}
            else:
                out = c.list_pod_sandbox()
    except CRIError as e:
        print(f"cri: {e}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
