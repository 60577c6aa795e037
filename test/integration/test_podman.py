#!/usr/bin/python3
"""signet under podman 4.3 with its CNI backend (bridge + host-local + signet).

Private CONTAINERS_CONF / CONTAINERS_STORAGE_CONF, runc, cgroupfs, file locks,
private network_config_dir / graphroot / runroot / tmpdir, an image imported
offline from Debian's busybox-static. Podman sends ADD and DEL (with its
cached prevResult) and, when ADD fails, DEL over the whole chain.
Whatever podman leaves in /var/lib/cni, /var/lib/containers, /run/libpod and
/run/containers that this run created is removed at the end.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (CNI_BIN_DIR, Network, Signetd, bridge_ports, main, netns_list,  # noqa: E402
                     make_spy, remove_new_paths, require_root_and_tools,
                     require_signet_binaries, skip, snapshot_paths, spy_calls)
import ipaddress  # noqa: E402

GLOBAL_STATE = ["/var/lib/cni", "/var/lib/containers", "/run/libpod", "/run/containers"]
BUSYBOX = "/bin/busybox"


class Podman:
    def __init__(self, run, plugin_dirs):
        self.run = run
        T = Path(run.mkdtemp("podman"))
        self.T = T
        self.netd = T / "net.d"
        self.netd.mkdir()
        self.conf = T / "containers.conf"
        self.storage = T / "storage.conf"
        dirs = ", ".join(json.dumps(str(d)) for d in plugin_dirs)
        env_vars = ", ".join(json.dumps(x) for x in (
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            f"CONTAINERS_CONF={self.conf}", f"CONTAINERS_STORAGE_CONF={self.storage}"))
        self.conf.write_text(f"""\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[network]
network_backend = "cni"
cni_plugin_dirs = [{dirs}]
network_config_dir = "{self.netd}"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
tmp_dir = "{T}/tmp"
lock_type = "file"
conmon_env_vars = [{env_vars}]
""")
        self.storage.write_text(f"""\
[storage]
driver = "overlay"
graphroot = "{T}/graph"
runroot = "{T}/runroot"
""")
        self.env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(T),
                    "CONTAINERS_CONF": str(self.conf), "CONTAINERS_STORAGE_CONF": str(self.storage),
                    "TMPDIR": str(T)}
        self.argv = ["podman", "--root", f"{T}/graph", "--runroot", f"{T}/runroot",
                     "--tmpdir", f"{T}/tmp", "--network-config-dir", str(self.netd),
                     "--cgroup-manager", "cgroupfs", "--events-backend", "file", "--runtime", "runc"]
        run.on_cleanup("podman rm -af", self.teardown)

    def __call__(self, *args, timeout=120, check=False) -> subprocess.CompletedProcess:
        p = subprocess.run(self.argv + [str(a) for a in args], env=self.env, capture_output=True,
                           text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise RuntimeError(f"podman {' '.join(map(str, args))}: rc={p.returncode} "
                               f"{p.stdout} {p.stderr}")
        return p

    def popen(self, *args) -> subprocess.Popen:
        return subprocess.Popen(self.argv + [str(a) for a in args], env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def import_busybox(self, tag="localhost/sgt-bb:latest") -> str:
        root = self.T / "rootfs"
        (root / "bin").mkdir(parents=True)
        shutil.copy2(BUSYBOX, root / "bin" / "busybox")
        for applet in ("sh", "sleep", "ip", "cat", "ls", "true", "touch", "test", "grep"):
            os.symlink("busybox", root / "bin" / applet)
        for d in ("proc", "sys", "dev", "etc", "tmp", "sync"):
            (root / d).mkdir(exist_ok=True)
        tar = self.T / "bb.tar"
        subprocess.run(["tar", "-C", str(root), "-cf", str(tar), "."], check=True)
        self("import", "--change", 'CMD ["/bin/sh"]', tar, tag, check=True)
        return tag

    def own_processes(self) -> list[int]:
        """conmon / `podman container cleanup` processes working on this run's
        private root (they carry its path on their command line)."""
        me, out = os.getpid(), []
        key = str(self.T).encode()
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == me:
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if key in f.read():
                        out.append(int(pid))
            except OSError:
                pass
        return out

    def wait_quiet(self, timeout=20.0) -> list[int]:
        """Wait for conmon and its exit commands to finish; returns stragglers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = self.own_processes()
            if not pids:
                return []
            time.sleep(0.05)
        return self.own_processes()

    def teardown(self):
        if (self.T / "graph").exists():
            self("rm", "-af", "-t", "0", timeout=60)
        left = self.wait_quiet()
        for pid in left:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        if left:
            self.run.cleanup_problems.append(f"podman helper processes still running, killed: {left}")


def ip_in(cidr_list, addr):
    return any(c.split("/")[0] == addr for c in cidr_list)


def inet_addrs(text):
    """'a.b.c.d/n' of every 'inet' in `ip -4 -o addr` output."""
    out = []
    for line in text.splitlines():
        w = line.split()
        if "inet" in w and w.index("inet") + 1 < len(w):
            out.append(w[w.index("inet") + 1])
    return out


def wait_file(path: Path, proc: subprocess.Popen, timeout=30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


def body(t, run):
    require_root_and_tools("podman", "runc", "conmon", "tar")
    if not os.access(BUSYBOX, os.X_OK):
        skip(f"{BUSYBOX} missing (apt-get install busybox-static): no offline image possible")
    v = subprocess.run(["podman", "--version"], capture_output=True, text=True).stdout.strip()
    t.note(v)

    global_before = snapshot_paths(GLOBAL_STATE)
    netns_before = set(netns_list())

    def clean_global():
        removed = remove_new_paths(global_before, GLOBAL_STATE)
        if removed:
            print(f"NOTE removed podman state this run created: {removed}", flush=True)
    run.on_cleanup("podman global state", clean_global)   # runs after podman rm -af (LIFO)

    bins = require_signet_binaries(t) if os.environ.get("SIGNET_PODMAN_BASELINE_ONLY") != "1" else None
    plugin_dirs = [CNI_BIN_DIR]
    if bins:
        # podman finds "signet" through a recording wrapper, then the build dir
        spybin, spydir = make_spy(run, bins["signet"])
        plugin_dirs += [str(spybin), str(bins["signet"].parent)]
    pm = Podman(run, plugin_dirs)
    img = pm.import_busybox()
    t.check("busybox image imported offline", pm("image", "exists", img).returncode == 0)

    # ---- baseline: podman + bridge + host-local, no signet --------------
    base = Network(run, version="1.0.0", with_signet=False)
    base.write(pm.netd)
    name = run.name("c")
    p = pm("run", "--rm", "--network", base.name, "--name", name, img, "ip", "-4", "-o", "addr",
           "show", "eth0")
    t.require("baseline (no signet): podman run on bridge+host-local", p.returncode == 0,
              p.stdout + p.stderr)
    got = inet_addrs(p.stdout)
    t.check("baseline: container got an address in the subnet",
            len(got) == 1 and ipaddress.ip_interface(got[0]).ip in base.subnet, p.stdout)
    t.equal("baseline: lease released after --rm", base.leases(), [])
    t.equal("baseline: no veth left on the bridge", bridge_ports(base.bridge), [])
    if bins is None:
        t.loud("SIGNET_PODMAN_BASELINE_ONLY=1: signet part not run")
        return

    # ---- with signet ------------------------------------------------------
    d = Signetd(run, bins).start()
    net = Network(run, version="1.0.0", signet_socket=d.socket)
    net.write(pm.netd)

    # detached container: registered while it runs, unregistered after rm -f
    name = run.name("c")
    p = pm("run", "-d", "--network", net.name, "--name", name, img, "sleep", "300")
    t.require("podman run -d with signet in the chain", p.returncode == 0, p.stdout + p.stderr)
    cid = p.stdout.strip().splitlines()[-1]
    ins = pm("inspect", name)
    info = json.loads(ins.stdout)[0] if ins.returncode == 0 else {}
    nets = (info.get("NetworkSettings") or {}).get("Networks") or {}
    ip = (nets.get(net.name) or {}).get("IPAddress", "")
    t.check("podman inspect shows an IP on our network", bool(ip) and ipaddress.ip_address(ip) in net.subnet,
            nets)
    ex = pm("exec", name, "ip", "-4", "-o", "addr", "show", "eth0")
    t.check("container's eth0 has that IP", ip and f" {ip}/" in ex.stdout, ex.stdout + ex.stderr)
    reg = d.pod(cid)
    if t.check("signetd registered the running container (containerID = podman's id)", reg is not None,
               d.pods()):
        t.equal("registration name (K8S_POD_NAME from podman)", reg.get("name"), name)
        t.equal("registration namespace defaults to 'default'", reg.get("namespace"), "default")
        t.equal("registration ifname", reg.get("ifname"), "eth0")
        t.equal("registration network", reg.get("network"), net.name)
        t.check("registration ips hold the container's IP", ip_in(reg.get("ips") or [], ip), reg)
        sandbox = info.get("NetworkSettings", {}).get("SandboxKey", "")
        t.equal("registration netns is podman's sandbox", reg.get("netns"), sandbox)
    p = pm("rm", "-f", "-t", "0", name)
    t.check("podman rm -f", p.returncode == 0, p.stdout + p.stderr)
    t.check("unregistered after podman rm -f", d.pod(cid) is None, d.pods())
    t.equal("lease released after rm", net.leases(), [])
    t.equal("no veth left on the bridge after rm", bridge_ports(net.bridge), [])

    # podman run --rm: checked from inside while it runs
    sync = Path(run.mkdtemp("sync"))
    name = run.name("c")
    script = ("ip -4 -o addr show eth0 > /sync/addr && touch /sync/ready && "
              "i=0; while [ ! -e /sync/go ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; "
              "test -e /sync/go")
    proc = pm.popen("run", "--rm", "--network", net.name, "--name", name, "-v", f"{sync}:/sync",
                    img, "sh", "-c", script)
    try:
        ready = wait_file(sync / "ready", proc)
        t.check("podman run --rm: container started and wrote its address", ready,
                proc.stderr.read() if proc.poll() is not None else "timeout")
        addr = (sync / "addr").read_text() if ready else ""
        regs = [r for r in d.pods() if r.get("name") == name]
        t.equal("podman run --rm: exactly one registration while it runs", len(regs), 1)
        if regs:
            want = inet_addrs(addr)
            t.check("podman run --rm: the container has an address in the subnet",
                    len(want) == 1 and ipaddress.ip_interface(want[0]).ip in net.subnet, addr)
            t.equal("podman run --rm: registered ips == what the container sees on eth0",
                    sorted(regs[0].get("ips") or []), sorted(want))
    finally:
        (sync / "go").touch()
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    t.check("podman run --rm exits 0", proc.returncode == 0, (proc.returncode, out, err))
    t.check("podman run --rm: unregistered after exit", not [r for r in d.pods() if r.get("name") == name],
            d.pods())
    t.equal("podman run --rm: lease released", net.leases(), [])

    # signetd down: ADD fails (11), podman's DEL over the chain leaves nothing
    t.equal("signetd exits 0 on SIGTERM", d.stop(), 0)
    dnet = Network(run, version="1.0.0", signet_socket=d.socket, signet_extra={"timeoutSeconds": 3})
    dnet.write(pm.netd)
    name = run.name("c")
    p = pm("run", "--rm", "--network", dnet.name, "--name", name, img, "true")
    t.check("signetd down: podman run fails", p.returncode != 0, p.stdout + p.stderr)
    t.check("signetd down: podman reports the signet plugin's failure",
            "signet" in p.stderr, p.stderr)
    calls = [r for r in spy_calls(spydir) if r["stdin"] and r["stdin"].get("name") == dnet.name]
    adds = [r for r in calls if r["cmd"] == "ADD"]
    dels = [r for r in calls if r["cmd"] == "DEL"]
    t.check("signetd down: signet ADD returned CNI error code 11",
            len(adds) == 1 and adds[0]["rc"] != 0 and isinstance(adds[0]["stdout"], dict)
            and adds[0]["stdout"].get("code") == 11, adds)
    t.check("signetd down: podman then ran DEL over the chain (signet DEL succeeded)",
            len(dels) >= 1 and all(r["rc"] == 0 for r in dels), dels)
    t.equal("signetd down: podman's DEL released the lease", dnet.leases(), [])
    t.equal("signetd down: no veth left on the bridge", bridge_ports(dnet.bridge), [])
    ps = pm("ps", "-a", "--format", "{{.Names}}")
    t.check("signetd down: no container left", name not in ps.stdout.split(), ps.stdout)

    t.equal("conmon / podman cleanup processes of this run all finished", pm.wait_quiet(), [])
    left_ns = sorted(set(netns_list()) - netns_before)
    t.equal("no podman netns left", [n for n in left_ns if not n.startswith(run.prefix)], [])
    results = Path("/var/lib/cni/results")
    mine = [f.name for f in results.glob("*")
            if any(f.name.startswith(n.name + "-") for n in (base, net, dnet))] if results.is_dir() else []
    t.equal("no libcni cache entry of our networks left in /var/lib/cni/results", mine, [])


if __name__ == "__main__":
    main("test_podman", body)
