#!/usr/bin/python3
"""signet-install-cni install --watch (issue #15): signet stays chained.

Network plugins rewrite their conflist when they restart (flannel, Calico,
k3s, aws-node), which drops signet's entry. The watcher, started on a temp
config folder holding a flannel-like conflist, must:

  (a) chain signet again after the file is replaced the way those plugins
      write it (temp file + rename, without signet), within a bound, every
      other byte of the file as the plugin wrote it;
  (b) likewise after an in-place rewrite (truncate + write);
  (c) chain signet into a higher-priority file another plugin drops in
      (05-calico.conflist sorts before 10-flannel.conflist);
  (d) not rewrite a file that already chains signet: its own rename is an
      event too, and so is a plugin writing the same content; inode and
      mtime stay as they are (no write loop), one log line per real change;
  (f) follow the folder when it is replaced (moved away, a new one moved in);
  (e) end promptly with status 0 on SIGTERM, the entries left in place.

Also: a folder that does not exist yet is waited for (k3s creates it late),
--uninstall-on-exit gives the original file back on SIGTERM, and --watch is
refused with uninstall or --dry-run.

No root needed: files in a temp folder only. Binaries from SIGNET_BUILD_DIR:
installer/signet-install-cni and cni-plugin/signet (its VERSION answer).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from harness import Run, Test  # noqa: E402

SOCKET = "/run/signet/signetd.sock"
BOUND = 5.0  # seconds within which a dropped entry must be back

FLANNEL = """{
  "name": "cbr0",
  "cniVersion": "0.3.1",
  "plugins": [
    {
      "type": "flannel",
      "delegate": {
        "hairpinMode": true,
        "isDefaultGateway": true
      }
    },
    {
      "type": "portmap",
      "capabilities": {
        "portMappings": true
      }
    }
  ]
}
"""

# What flannel writes after an upgrade: another field, other formatting.
FLANNEL_V2 = """{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true,"mtu":1450}},{"type":"portmap","capabilities":{"portMappings":true}}]}
"""

CALICO = """{
  "name": "k8s-pod-network",
  "cniVersion": "0.3.1",
  "plugins": [
    {"type": "calico", "log_level": "info", "datastore_type": "kubernetes",
     "ipam": {"type": "calico-ipam"}, "policy": {"type": "k8s"}},
    {"type": "portmap", "snat": true, "capabilities": {"portMappings": true}}
  ]
}
"""


def write_rename(path: Path, text: str) -> None:
    """As flannel's and calico's installers do: temp file, then rename."""
    tmp = path.parent / f".{path.name}.plugin-tmp"
    tmp.write_text(text)
    os.rename(tmp, path)


def write_in_place(path: Path, text: str) -> None:
    with open(path, "r+") as f:
        f.truncate(0)
        f.write(text)


def chains_signet(path: Path) -> bool:
    try:
        c = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    plugins = c.get("plugins") or []
    return bool(plugins) and plugins[-1] == {"type": "signet", "socket": SOCKET}


def wait_for(cond, timeout: float, step: float = 0.05) -> float | None:
    """Seconds until cond() held, or None after timeout."""
    start = time.monotonic()
    while True:
        if cond():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            return None
        time.sleep(step)


def stat_key(path: Path):
    st = os.stat(path)
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)


class Watcher:
    def __init__(self, run: Run, exe: Path, plugin: Path, conf_dir: Path, bin_dir: Path, *extra: str):
        self.log_path = Path(run.mkdtemp("watchlog")) / "install-cni.log"
        self.log_file = open(self.log_path, "w")
        run.own_log(self.log_path)
        self.argv = [str(exe), "install", "--watch", "--debounce=200ms", f"--cni-conf-dir={conf_dir}",
                     f"--cni-bin-dir={bin_dir}", f"--plugin={plugin}", f"--socket={SOCKET}", *extra]
        self.proc = subprocess.Popen(self.argv, stdout=self.log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        run.own_process(self.proc, "signet-install-cni --watch")
        self.run = run

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def count(self, what: str) -> int:
        return self.log().count(what)

    def stop(self, timeout: float = 3.0) -> tuple[int | None, float]:
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            rc = None
        took = time.monotonic() - start
        if rc is not None:
            self.run.disown_process(self.proc)
        return rc, took


def unchained(run: Run, exe: Path, path: Path) -> str:
    """The file with signet's entry taken out by the (separately tested)
    uninstall, which gives back the original bytes: so equal to what the
    plugin wrote iff the watcher changed nothing else."""
    d = Path(run.mkdtemp("unchain"))
    (d / path.name).write_bytes(path.read_bytes())
    harness.sh(exe, "uninstall", f"--cni-conf-dir={d}")
    return (d / path.name).read_text()


def body(t: Test, run: Run) -> None:
    b = harness.build_dir()
    exe = b / "installer" / "signet-install-cni"
    plugin = b / "cni-plugin" / "signet"
    for p in (exe, plugin):
        t.require(f"{p} is built", os.access(p, os.X_OK), "build it: ninja -C BUILD installer/signet-install-cni "
                  "cni-plugin/signet")

    # usage: --watch belongs to install, and writes
    for argv in (["uninstall", "--watch"], ["install", "--watch", "--dry-run"], ["install", "--watch", "--wait=5s"],
                 ["install", "--uninstall-on-exit"], ["install", "--debounce=1s"]):
        p = harness.sh(exe, *argv, "--cni-conf-dir=/nonexistent", check=False)
        t.equal(f"{' '.join(argv)} is a usage error", p.returncode, 2)

    root = Path(run.mkdtemp("cni"))
    conf = root / "net.d"
    bins = root / "bin"
    conf.mkdir()
    bins.mkdir()
    flannel = conf / "10-flannel.conflist"
    flannel.write_text(FLANNEL)

    w = Watcher(run, exe, plugin, conf, bins)
    took = wait_for(lambda: chains_signet(flannel) or w.proc.poll() is not None, BOUND)
    t.require("start: the watcher runs", w.proc.poll() is None, w.log())
    t.require("start: signet chained into 10-flannel.conflist", took is not None, w.log())
    t.equal("start: the rest of 10-flannel.conflist as it was", unchained(run, exe, flannel), FLANNEL)
    t.check("start: the plugin binary copied", os.access(bins / "signet", os.X_OK))

    # (a) the plugin rewrites its config: temp file + rename, no signet
    write_rename(flannel, FLANNEL_V2)
    took = wait_for(lambda: chains_signet(flannel), BOUND)
    t.check(f"(a) rewritten by rename: signet chained again within {BOUND:.0f}s"
            + (f" ({took:.2f}s)" if took is not None else ""), took is not None, w.log())
    t.equal("(a) the rest of the file as the plugin wrote it", unchained(run, exe, flannel), FLANNEL_V2)
    t.check("(a) logged with the file and why",
            "chained signet into " + str(flannel) + " (why: 10-flannel.conflist replaced (moved in))" in w.log(),
            w.log())

    # (b) in place: truncate + write
    write_in_place(flannel, FLANNEL)
    took = wait_for(lambda: chains_signet(flannel), BOUND)
    t.check(f"(b) rewritten in place: signet chained again within {BOUND:.0f}s"
            + (f" ({took:.2f}s)" if took is not None else ""), took is not None, w.log())
    t.equal("(b) the rest of the file as the plugin wrote it", unchained(run, exe, flannel), FLANNEL)

    # (c) another plugin drops a file that sorts first
    calico = conf / "05-calico.conflist"
    write_rename(calico, CALICO)
    took = wait_for(lambda: chains_signet(calico), BOUND)
    t.check(f"(c) 05-calico.conflist (sorts first) chained within {BOUND:.0f}s"
            + (f" ({took:.2f}s)" if took is not None else ""), took is not None, w.log())
    t.equal("(c) the rest of 05-calico.conflist as written", unchained(run, exe, calico), CALICO)
    t.check("(c) logged as the new active config",
            f"chained signet into {calico}, the active config now (was {flannel})" in w.log(), w.log())
    t.check("(c) 10-flannel.conflist keeps its entry", chains_signet(flannel))

    # (d) no write loop: the watcher's own rename of 05-calico is an event;
    # so is a plugin writing the same (chained) content in place. Neither
    # may lead to a write: inode, mtime, ctime and size stay.
    write_in_place(flannel, flannel.read_text())
    before = {p: stat_key(p) for p in (calico, flannel)}
    chained_lines = w.count("chained signet into")
    changed = wait_for(lambda: any(stat_key(p) != k for p, k in before.items()), 2.5)
    t.check("(d) no write to a config that chains signet already (2.5s: inode, mtime unchanged)",
            changed is None, {str(p): (k, stat_key(p)) for p, k in before.items()})
    t.equal("(d) no new 'chained signet' log line", w.count("chained signet into"), chained_lines)
    t.equal("(d) one 'chained signet' line per real change (start, a, b, c)", chained_lines, 4)
    t.check("(d) no temp file left in the folder", not [n for n in os.listdir(conf) if n.startswith(".")],
            os.listdir(conf))

    # (f) the folder itself replaced: moved away, a new one moved in
    new = root / "net.d.new"
    new.mkdir()
    (new / "10-flannel.conflist").write_text(FLANNEL)
    os.rename(conf, root / "net.d.old")
    os.rename(new, conf)
    took = wait_for(lambda: chains_signet(flannel), BOUND)
    t.check(f"(f) folder replaced: signet chained into the new folder's config within {BOUND:.0f}s"
            + (f" ({took:.2f}s)" if took is not None else ""), took is not None, w.log())

    # (e) SIGTERM: prompt exit 0, entries stay
    t.check("(e) still running before SIGTERM", w.proc.poll() is None, w.log())
    rc, took = w.stop()
    t.equal(f"(e) SIGTERM: exit status ({took:.2f}s)", rc, 0)
    t.check("(e) SIGTERM: ended within 2s", took < 2.0, took)
    t.check("(e) SIGTERM: signet's entry stays (default)", chains_signet(flannel))
    t.check("(e) SIGTERM logged", "received SIGTERM: stopping; signet's entry stays" in w.log(), w.log())

    # A folder that does not exist yet (k3s creates it late) is waited for.
    late_root = Path(run.mkdtemp("late"))
    late = late_root / "net.d"
    w2 = Watcher(run, exe, plugin, late, bins)
    waiting = wait_for(lambda: "waiting for the CNI config folder" in w2.log(), BOUND)
    t.check("missing folder: a log line says it is waited for", waiting is not None, w2.log())
    t.check("missing folder: still running", w2.proc.poll() is None, w2.log())
    tmp = late_root / "net.d.tmp"
    tmp.mkdir()
    (tmp / "10-flannel.conflist").write_text(FLANNEL)
    os.rename(tmp, late)
    took = wait_for(lambda: chains_signet(late / "10-flannel.conflist"), BOUND)
    t.check("missing folder: chained once it appears", took is not None, w2.log())
    rc, _ = w2.stop()
    t.equal("missing folder: SIGTERM exit status", rc, 0)

    # --uninstall-on-exit: the original bytes back on SIGTERM.
    d3 = Path(run.mkdtemp("onexit"))
    (d3 / "10-flannel.conflist").write_text(FLANNEL)
    w3 = Watcher(run, exe, plugin, d3, bins, "--uninstall-on-exit")
    took = wait_for(lambda: chains_signet(d3 / "10-flannel.conflist"), BOUND)
    t.require("--uninstall-on-exit: chained at start", took is not None, w3.log())
    rc, _ = w3.stop()
    t.equal("--uninstall-on-exit: SIGTERM exit status", rc, 0)
    t.equal("--uninstall-on-exit: the file as the plugin wrote it", (d3 / "10-flannel.conflist").read_text(),
            FLANNEL)


if __name__ == "__main__":
    harness.main("test_installer_watch", body)
