#!/usr/bin/python3
"""signetd's node-local API: who may call it, how its socket is made, and what
a registration may name (issue #13, item 5).

* the socket: mode 0660 and root's from the moment it exists at its path (it is
  made in a private directory and renamed into place: the directory never sees
  it created there, even with umask 0), with --api-group the group's;
* every caller is checked with SO_PEERCRED: uid 65534 (setpriv) is refused with
  403 even when the socket's mode would let it connect; a refusal is logged
  with pid and uid and counted (status, /metrics); with --api-group its members
  (primary or supplementary group) may read (GET), never change anything;
* CNI ADD with a netns that is not a pod's (PID 1's, signetd's own, the node's
  from --node-netns, a UTS namespace, a plain file, a missing path) fails with
  CNI code 4 (CNI_NETNS is an invalid environment variable) and registers
  nothing; the netns paths real runtimes use (/run/netns, /var/run/netns,
  /proc/PID/ns/net of a process in a pod netns) are accepted;
* namespace and pod names as Kubernetes has them: an invalid K8S_POD_NAMESPACE
  or K8S_POD_NAME is CNI code 4; POST /v1/pods refuses them too (400, cniCode
  4); a plain runtime's container name is made a valid name; signetctl refuses
  invalid NAMESPACE/POD arguments before asking signetd.
"""

import ctypes
import ctypes.util
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import urllib.request

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Signetd, cni_exec, k8s_args, main, require_root_and_tools,  # noqa: E402
                     require_signet_binaries, sh)

NOBODY = 65534

# A request to the API as another user: run under setpriv, prints {"status", "body"} or {"errno"}.
CLIENT = r"""
import json, socket, sys
path, method, target, body = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect(path)
except OSError as e:
    print(json.dumps({"errno": e.errno, "error": str(e)})); sys.exit(0)
req = f"{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}"
s.sendall(req.encode())
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
head, _, rest = data.partition(b"\r\n\r\n")
print(json.dumps({"status": int(head.split()[1]), "body": rest.decode(errors="replace")}))
"""


def as_user(uid, gid, groups=None):
    g = ["--clear-groups"] if not groups else ["--groups", ",".join(map(str, groups))]
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", *g, "--"]


def call_as(uid, gid, sock, method, target, body="", groups=None):
    p = sh(*as_user(uid, gid, groups), sys.executable, "-c", CLIENT, sock, method, target, body, check=False)
    try:
        return json.loads(p.stdout)
    except json.JSONDecodeError:
        return {"error": p.stdout + p.stderr}


def api(sock, method, target, body=""):
    """As root (this process)."""
    return call_as(0, 0, sock, method, target, body)


class Inotify:
    """Which names were created in, or moved into, a directory (libc inotify via ctypes)."""
    IN_CREATE, IN_MOVED_TO, IN_NONBLOCK = 0x100, 0x80, 0o4000

    def __init__(self, path):
        self.libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.fd = self.libc.inotify_init1(self.IN_NONBLOCK)
        if self.fd < 0 or self.libc.inotify_add_watch(self.fd, path.encode(), self.IN_CREATE | self.IN_MOVED_TO) < 0:
            raise OSError(ctypes.get_errno(), "inotify")

    def events(self):
        out = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return out
            i = 0
            while i < len(data):
                _, mask, _, n = struct.unpack_from("iIII", data, i)
                name = data[i + 16:i + 16 + n].rstrip(b"\0").decode()
                out.append((name, mask))
                i += 16 + n

    def close(self):
        os.close(self.fd)


def metric(d, name, labels):
    port = d.status().get("outputs", {}).get("metricsPort")
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def prev_result(netns, version="1.0.0", address="10.250.0.5/24"):
    return {"cniVersion": version, "interfaces": [{"name": "eth0", "mac": "0a:58:0a:fa:00:05", "sandbox": netns}],
            "ips": [{"interface": 0, "address": address}]}


def conf(sock, netns, version="1.0.0"):
    return {"cniVersion": version, "name": "apinet", "type": "signet", "socket": sock, "prevResult": prev_result(netns)}


def body(t, run):
    require_root_and_tools("setpriv")
    bins = require_signet_binaries(t)
    plugin = str(bins["signet"])
    # A socket folder every user may traverse (the run's temp dir is 0700): so
    # that only signetd's own checks stand between uid 65534 and the API.
    sockdir = tempfile.mkdtemp(prefix=f"sgt-{os.getpid()}-api-", dir="/tmp")
    run.on_cleanup(f"rm {sockdir}", lambda: shutil.rmtree(sockdir, ignore_errors=True))
    os.chmod(sockdir, 0o755)
    sock = os.path.join(sockdir, "signetd.sock")
    d = Signetd(run, bins, socket_path=sock)
    d.extra_args = ["--metrics-address", "127.0.0.1:0"]

    # ---- 1. the socket: its mode from the start ---------------------------
    watch = Inotify(sockdir)
    old = os.umask(0)  # bind() alone would make it 0777
    try:
        d.start()
    finally:
        os.umask(old)
    ev = watch.events()
    watch.close()
    st = os.lstat(sock)
    t.equal("socket mode 0660 right after start (umask 0)", oct(st.st_mode & 0o7777), oct(0o660))
    t.equal("socket owned by root:root", (st.st_uid, st.st_gid), (0, 0))
    t.check("socket never created at its path (bind in a private dir, renamed into place)",
            ("signetd.sock", Inotify.IN_CREATE) not in ev and any(n == "signetd.sock" and m & Inotify.IN_MOVED_TO
                                                                  for n, m in ev), ev)
    t.equal("no private directory left beside the socket", sorted(os.listdir(sockdir)), ["signetd.sock"])

    # ---- 2. SO_PEERCRED: uid 65534 refused even when the mode lets it in ----
    r = call_as(NOBODY, NOBODY, sock, "GET", "/v1/status")
    t.equal("uid 65534, socket 0660 root:root: connect refused by the file mode (EACCES)", r.get("errno"), 13)
    os.chmod(sock, 0o666)
    for method, target in (("GET", "/v1/status"), ("GET", "/readyz"), ("POST", "/v1/sync"),
                           ("POST", "/v1/pods"), ("DELETE", "/v1/pods/x/eth0")):
        r = call_as(NOBODY, NOBODY, sock, method, target, "{}" if method == "POST" else "")
        t.equal(f"uid 65534, socket 0666: {method} {target} -> 403", r.get("status"), 403)
    t.check("403 says who and why", "forbidden: uid 65534" in r.get("body", "") and "root only" in r.get("body", ""), r)
    p = sh(*as_user(NOBODY, NOBODY), bins["signetctl"], "--socket", sock, "status", check=False)
    t.check("signetctl status as uid 65534 fails, saying forbidden (403)",
            p.returncode == 1 and "forbidden" in p.stderr and "403" in p.stderr, (p.returncode, p.stderr))
    t.equal("root still served", api(sock, "GET", "/v1/status").get("status"), 200)
    s = d.status()
    t.equal("status: api.refused.caller counts the refusals", s.get("api", {}).get("refused", {}).get("caller"), 6)
    t.equal("/metrics: signet_api_refused_total{reason=caller}",
            metric(d, "signet_api_refused_total", {"reason": "caller"}), 6.0)
    logtext = d.log_path().read_text(errors="replace")
    t.check("a refusal is logged with pid and uid",
            "refused GET /v1/status from pid " in logtext and "uid 65534" in logtext, d.log_tail(20))
    t.equal("signetd exits 0", d.stop(), 0)

    # ---- --api-group: the group reads, never writes -----------------------
    p = sh(bins["signetd"], "--node-name", "n", "--source", f"dir:{d.manifest_dir}", "--socket", sock,
           "--state-dir", str(d.state_dir), "--api-group", "no-such-group-signet", check=False, timeout=20)
    t.check("--api-group with an unknown group: signetd exits 1 naming it",
            p.returncode == 1 and "no such group: no-such-group-signet" in p.stdout + p.stderr, p)
    d.extra_args = ["--metrics-address", "127.0.0.1:0", "--api-group", "nogroup", "--log-format", "json"]
    d.start()
    st = os.lstat(sock)
    t.equal("--api-group nogroup: socket root:nogroup 0660", (st.st_uid, st.st_gid, oct(st.st_mode & 0o7777)),
            (0, NOBODY, oct(0o660)))
    for target in ("/v1/status", "/v1/pods", "/readyz", "/healthz", "/v1/flows"):
        r = call_as(NOBODY, NOBODY, sock, "GET", target)
        t.equal(f"group member (primary gid): GET {target} -> 200", r.get("status"), 200)
    r = call_as(65533, 65533, sock, "GET", "/v1/status", groups=[NOBODY])
    t.equal("group member (supplementary group, SO_PEERGROUPS): GET /v1/status -> 200", r.get("status"), 200)
    r = call_as(65533, 65533, sock, "GET", "/v1/status")
    t.equal("not in the group: connect refused by the file mode", r.get("errno"), 13)
    for method, target in (("POST", "/v1/sync"), ("POST", "/v1/pods"), ("DELETE", "/v1/pods/x/eth0"),
                           ("POST", "/v1/gc")):
        r = call_as(NOBODY, NOBODY, sock, method, target, "{}" if method == "POST" else "")
        t.equal(f"group member: {method} {target} -> 403", r.get("status"), 403)
    t.check("403 says the group may only read", "group nogroup may only read" in r.get("body", ""), r)
    p = sh(*as_user(NOBODY, NOBODY), bins["signetctl"], "--socket", sock, "pods", check=False)
    t.equal("signetctl pods as a group member exits 0", p.returncode, 0)
    p = sh(*as_user(NOBODY, NOBODY), bins["signetctl"], "--socket", sock, "sync", check=False)
    t.check("signetctl sync as a group member fails (403)", p.returncode == 1 and "403" in p.stderr, p.stderr)
    s = d.status()
    t.equal("status: api.readGroup", s.get("api", {}).get("readGroup"), "nogroup")
    t.equal("status: api.refused.readOnly", s.get("api", {}).get("refused", {}).get("readOnly"), 5)
    t.equal("/metrics: signet_api_refused_total{reason=read_only}",
            metric(d, "signet_api_refused_total", {"reason": "read_only"}), 5.0)

    # ---- the log: --log-format json, the level changed at run time --------
    ctl = [bins["signetctl"], "--socket", sock]
    p = sh(*ctl, "log-level", check=False)
    start_level = p.stdout.strip().removeprefix("log level ")
    t.check("signetctl log-level: the level signetd started with", p.returncode == 0 and start_level in
            ("debug", "info", "warn", "error"), p)
    r = call_as(NOBODY, NOBODY, sock, "PUT", "/v1/log-level", '{"level":"debug"}')
    t.equal("group member: PUT /v1/log-level -> 403", r.get("status"), 403)
    t.equal("group member: GET /v1/log-level -> 200", call_as(NOBODY, NOBODY, sock, "GET", "/v1/log-level").get("status"),
            200)
    p = sh(*ctl, "log-level", "loud", check=False)
    t.check("signetctl log-level loud: usage error (2)", p.returncode == 2, p)
    t.equal("PUT /v1/log-level with no level -> 400", api(sock, "PUT", "/v1/log-level", "{}").get("status"), 400)
    p = sh(*ctl, "log-level", "error", check=False)
    t.check("signetctl log-level error (root): set", p.returncode == 0 and
            f"log level error (was {start_level})" in p.stdout, p)
    mark = len(d.log_path().read_text(errors="replace").splitlines())
    d.sync()
    call_as(NOBODY, NOBODY, sock, "POST", "/v1/sync", "{}")  # refused: a warn line, not written at error
    quiet = d.log_path().read_text(errors="replace").splitlines()[mark:]
    t.check("at level error no warn or info line is written", not quiet, quiet[:3])
    p = sh(*ctl, "log-level", start_level, check=False)
    t.check(f"signetctl log-level {start_level}: back", p.returncode == 0 and "(was error)" in p.stdout, p)
    lines = [l for l in d.log_path().read_text(errors="replace").splitlines() if l.strip()]
    objs, bad = [], []
    for l in lines:
        try:
            objs.append(json.loads(l))
        except json.JSONDecodeError:
            bad.append(l)
    t.check(f"--log-format json: every log line is a JSON object ({len(lines)} lines)",
            lines and not bad and all({"time", "level", "component", "msg"} <= set(o) for o in objs), bad[:3])
    t.check("the log says who changed the level, both ways",
            any(f"log level {start_level} -> error (by pid" in o.get("msg", "") for o in objs) and
            any(f"log level error -> {start_level} (by pid" in o.get("msg", "") for o in objs), lines[-5:])
    d.stop()

    # ---- 3. netns that are not a pod's ------------------------------------
    node_name, node_path = run.netns_add()
    d.extra_args = ["--node-netns", node_path]
    d.start()
    pod_name, pod_path = run.netns_add()
    holder = subprocess.Popen(["ip", "netns", "exec", pod_name, "sleep", "300"], stdin=subprocess.DEVNULL)
    run.own_process(holder, "netns holder")
    proc_path = f"/proc/{holder.pid}/ns/net"
    for _ in range(100):  # until `ip netns exec` has entered the netns and exec'd sleep
        try:
            if os.stat(proc_path).st_ino == os.stat(pod_path).st_ino and \
                    os.readlink(f"/proc/{holder.pid}/exe").endswith("sleep"):
                break
        except OSError:
            pass
        __import__("time").sleep(0.05)
    sd_pid = d.proc.pid
    refused = {
        # PID 1's (the host's); where PID 1 may not be traced (a container's init), not even readable
        "/proc/1/ns/net (PID 1's: the host's)": ("/proc/1/ns/net", "/proc/1/ns/net: "),
        "/proc/self/ns/net (signetd's own)": ("/proc/self/ns/net", "signetd's own network namespace"),
        f"/proc/{sd_pid}/ns/net (signetd's own, by pid)": (f"/proc/{sd_pid}/ns/net", "signetd's own network namespace"),
        "the node's netns (--node-netns)": (node_path, "the node's network namespace (--node-netns)"),
        "the node's netns by /var/run": (f"/var/run/netns/{node_name}", "--node-netns"),
        "a UTS namespace": (f"/proc/{holder.pid}/ns/uts", "a UTS namespace, not a network namespace"),
        "a plain file": ("/etc/hostname", "not a namespace"),
        "a missing path": ("/run/netns/sgt-no-such-netns", "does not exist"),
        "a relative path": ("run/netns/x", "not an absolute path"),
    }
    for i, (label, (path, why)) in enumerate(refused.items()):
        cid = run.container_id()
        c = cni_exec(plugin, "ADD", conf(sock, path), containerid=cid, netns=path, ifname="eth0",
                     args=k8s_args("ns-api", f"bad-{i}", run.uid(), cid))
        t.equal(f"ADD with CNI_NETNS = {label}: CNI code 4", c.code, 4)
        t.check(f"ADD with CNI_NETNS = {label}: the message says why", why in ((c.json or {}).get("details") or ""),
                c.stdout)
    t.equal("refused ADDs registered nothing", d.pods(), [])

    accepted = {"/run/netns/NAME (ip netns add)": pod_path,
                "/var/run/netns/NAME": f"/var/run/netns/{pod_name}",
                "/proc/PID/ns/net of a process in the pod's netns": proc_path}
    for label, path in accepted.items():
        cid = run.container_id()
        c = cni_exec(plugin, "ADD", conf(sock, path), containerid=cid, netns=path, ifname="eth0",
                     args=k8s_args("ns-api", "good-1", run.uid(), cid))
        t.check(f"ADD with CNI_NETNS = {label} succeeds", c.ok, c)
        reg = d.pod(cid)
        t.check(f"{label}: registered", reg is not None and reg.get("netns") == path, reg)
        c = cni_exec(plugin, "DEL", conf(sock, path), containerid=cid, netns=path, ifname="eth0",
                     args=k8s_args("ns-api", "good-1", run.uid(), cid))
        t.check(f"{label}: DEL succeeds", c.ok, c)

    # ---- 4. Kubernetes names ------------------------------------------------
    bad_args = {
        "K8S_POD_NAMESPACE=Shop": ("Shop", "web-1", "K8S_POD_NAMESPACE"),
        "K8S_POD_NAMESPACE of 64 characters": ("a" * 64, "web-1", "K8S_POD_NAMESPACE"),
        "K8S_POD_NAME=web_1": ("shop", "web_1", "K8S_POD_NAME"),
        "K8S_POD_NAME of 254 characters": ("shop", "a" * 254, "K8S_POD_NAME"),
        "K8S_POD_NAME=-web": ("shop", "-web", "K8S_POD_NAME"),
    }
    for label, (ns, name, var) in bad_args.items():
        cid = run.container_id()
        c = cni_exec(plugin, "ADD", conf(sock, pod_path), containerid=cid, netns=pod_path, ifname="eth0",
                     args=k8s_args(ns, name, run.uid(), cid))
        t.equal(f"ADD with {label}: CNI code 4", c.code, 4)
        t.check(f"ADD with {label}: msg names {var}", var in ((c.json or {}).get("msg") or ""), c.stdout)
    # The same through the API directly (a caller other than the plugin).
    for field, value, why in (("namespace", "Shop", "namespace: 'Shop' is not a DNS-1123 label"),
                              ("name", "web_1", "name: 'web_1' is not a DNS-1123 subdomain"),
                              ("name", "a" * 254, "longer than 253")):
        reg = {"containerID": run.container_id(), "ifname": "eth0", "netns": pod_path, "namespace": "shop",
               "name": "web-1"}
        reg[field] = value
        r = api(sock, "POST", "/v1/pods", json.dumps(reg))
        b = json.loads(r.get("body") or "{}")
        t.check(f"POST /v1/pods with {field} {value[:12]!r}: 400, cniCode 4, {why[:40]!r}",
                r.get("status") == 400 and b.get("cniCode") == 4 and why in b.get("error", ""), r)
    # A plain runtime (podman: K8S_POD_NAME only, its container name).
    cid = run.container_id()
    c = cni_exec(plugin, "ADD", conf(sock, pod_path), containerid=cid, netns=pod_path, ifname="eth0",
                 args=k8s_args(None, "My_App", None, cid))
    t.check("podman-style ADD with container name My_App succeeds", c.ok, c)
    t.equal("registered as default/my-app", ((d.pod(cid) or {}).get("namespace"), (d.pod(cid) or {}).get("name")),
            ("default", "my-app"))
    cni_exec(plugin, "DEL", conf(sock, pod_path), containerid=cid, netns=pod_path, ifname="eth0",
             args=k8s_args(None, "My_App", None, cid))
    t.equal("no registration left", d.pods(), [])
    # signetctl's NAMESPACE/POD arguments.
    for argv, what in ((["policies", "Shop/web"], "namespace"), (["policies", "shop/web_1"], "pod name"),
                       (["explain", "--from", "shop/Web", "--to", "10.0.0.1", "--port", "80"], "--from: pod name"),
                       (["flows", "--namespace", "Bad_NS"], "--namespace"),
                       (["flows", "--pod", "shop/x_y"], "--pod: pod name")):
        p = d.ctl(*argv)
        t.check(f"signetctl {' '.join(argv)}: usage error (2) naming {what}",
                p.returncode == 2 and what in p.stderr and "DNS-1123" in p.stderr, (p.returncode, p.stderr))
    p = d.ctl("explain", "--from", "shop/web", "--to", "10.0.0.0/8", "--port", "80")
    t.check("signetctl explain with an IPv4 CIDR endpoint is not taken for NAMESPACE/POD", p.returncode != 2, p.stderr)
    t.equal("signetd exits 0 at the end", d.stop(), 0)


if __name__ == "__main__":
    main("test_node_api", body)
