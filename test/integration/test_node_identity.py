#!/usr/bin/python3
"""signetd's node identity (`--authority dir:DIR`) with real certificates:

* with the cluster authority (ca.key) in DIR it refuses to start, saying why
  and what to do, unless --allow-ca-key says it is a one-machine setup
  (issue #13, item 4);
* with the cluster authority in DIR and --allow-ca-key, signetd makes its node
  key on the node (0600), gets it signed, reuses it across restarts, and
  shows it in status;
* with credentials issued beforehand (`signetctl authority issue`, no CA key on
  the node) it loads them;
* it refuses to start, with the reason, when the certificate names another
  node, does not chain to the trust bundle, or the key does not match;
* no private key material ever reaches the log."""
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402


def mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def body(t: harness.Test, run: harness.Run):
    bins = harness.require_signet_binaries(t)
    ctl = str(bins["signetctl"])
    tmp = Path(run.mkdtemp("identity"))
    ca, other_ca, pre = tmp / "ca", tmp / "other-ca", tmp / "pre"

    p = harness.sh(ctl, "authority", "init", str(ca), "--trust-domain", "test.local", check=False)
    t.require("signetctl authority init", p.returncode == 0, p.stdout + p.stderr)
    t.equal("ca.key is 0600", mode(ca / "ca.key"), 0o600)
    p = harness.sh(ctl, "authority", "init", str(ca), check=False)
    t.check("authority init refuses to overwrite", p.returncode != 0 and "exist" in (p.stdout + p.stderr).lower(),
            p.stdout + p.stderr)

    def refused(node, adir, what, want, extra=(), code=None):
        sd = harness.Signetd(run, bins, node=node)
        argv = [str(bins["signetd"]), "--node-name", node, "--source", f"dir:{sd.manifest_dir}", "--socket",
                sd.socket, "--state-dir", str(sd.state_dir), "--authority", f"dir:{adir}", "--no-flows", *extra]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        wants = [want] if isinstance(want, str) else want
        t.check(f"refused: {what} (exit {p.returncode})",
                p.returncode != 0 and (code is None or p.returncode == code) and all(w in p.stderr for w in wants),
                p.stderr[-1500:])
        return sd

    # The CA key on a node makes it a CA: refused unless --allow-ca-key (one machine).
    sd = refused("node-a", ca, "ca.key in --authority dir: without --allow-ca-key",
                 [f"{ca}/ca.key", "any node's certificate", "signetctl authority issue", "kubernetes-csr",
                  "--allow-ca-key"], code=2)
    t.check("refused: no node key made", not (sd.state_dir / "identity" / "node.key").exists())
    p = harness.sh(str(bins["signetd"]), "--help", check=False)
    t.check("signetd --help documents --allow-ca-key", "--allow-ca-key" in p.stdout, p.stdout[-3000:])

    # Authority mode (one machine: --allow-ca-key): signetd issues its own certificate.
    d = harness.Signetd(run, bins, node="node-a")
    d.extra_args = ["--authority", f"dir:{ca}", "--allow-ca-key", "--no-flows"]
    d.start()
    st = d.status().get("identity", {})
    t.equal("status: authority mode", st.get("mode"), "authority")
    t.equal("status: the certificate names this node", st.get("node"), "node-a")
    t.equal("status: trust domain", st.get("trustDomain"), "test.local")
    t.equal("status: one certificate issued", st.get("issued"), 1)
    fp = st.get("fingerprint", "")
    t.check("status: a SHA-256 fingerprint", len(fp) == 64, fp)
    key = d.state_dir / "identity" / "node.key"
    t.equal("node key made on the node, 0600", mode(key), 0o600)
    p = harness.sh("openssl", "x509", "-in", str(d.state_dir / "identity" / "node.crt"), "-noout", "-subject",
                   "-ext", "subjectAltName", check=False)
    t.check("node.crt: CN=node-a, O=test.local, spiffe URI",
            "node-a" in p.stdout and "test.local" in p.stdout and "spiffe://test.local/node/node-a" in p.stdout,
            p.stdout + p.stderr)
    p = harness.sh("openssl", "verify", "-CAfile", str(ca / "trust-bundle.pem"),
                   str(d.state_dir / "identity" / "node.crt"), check=False)
    t.check("openssl verifies node.crt against the trust bundle", p.returncode == 0, p.stdout + p.stderr)
    d.stop()
    d.start()
    st = d.status()["identity"]
    t.equal("restart: the same certificate is reused", st.get("fingerprint"), fp)
    t.equal("restart: nothing issued", st.get("issued"), 0)
    d.stop()

    # Pre-issued mode: no CA key on the node.
    p = harness.sh(ctl, "authority", "issue", str(ca), "--node", "node-b", "--out", str(pre), check=False)
    t.require("signetctl authority issue", p.returncode == 0, p.stdout + p.stderr)
    t.check("issued dir: no CA key", not (pre / "ca.key").exists())
    t.equal("issued node.key is 0600", mode(pre / "node.key"), 0o600)
    d2 = harness.Signetd(run, bins, node="node-b")
    d2.extra_args = ["--authority", f"dir:{pre}", "--no-flows"]
    d2.start()  # no --allow-ca-key needed: no ca.key in the folder
    st = d2.status()["identity"]
    t.equal("pre-issued: mode", st.get("mode"), "pre-issued")
    t.equal("pre-issued: node", st.get("node"), "node-b")
    t.equal("pre-issued: nothing issued here", st.get("issued"), 0)
    d2.stop()

    refused("node-c", pre, "a certificate for another node", "names node 'node-b', not 'node-c'")
    p = harness.sh(ctl, "authority", "init", str(other_ca), "--trust-domain", "test.local", check=False)
    t.require("a second authority", p.returncode == 0, p.stdout + p.stderr)
    foreign = tmp / "foreign"
    shutil.copytree(pre, foreign)
    shutil.copy(other_ca / "trust-bundle.pem", foreign / "trust-bundle.pem")
    refused("node-b", foreign, "a certificate from another authority", "--authority")
    swapped = tmp / "swapped"
    shutil.copytree(pre, swapped)
    os.unlink(swapped / "node.key")
    p = harness.sh(ctl, "authority", "issue", str(ca), "--node", "node-b", "--out", str(tmp / "pre2"), check=False)
    t.require("a second node-b key", p.returncode == 0, p.stdout + p.stderr)
    shutil.copy(tmp / "pre2" / "node.key", swapped / "node.key")
    os.chmod(swapped / "node.key", 0o600)
    refused("node-b", swapped, "a key that is not the certificate's", "--authority")

    logs = "".join(Path(x).read_text(errors="replace") for x in
                   [*(d.dir.glob("signetd.*.log")), *(d2.dir.glob("signetd.*.log"))])
    t.check("no key material in the logs", "PRIVATE KEY" not in logs and "BEGIN" not in logs)
    t.check("the log names the node certificate", "node certificate for node-a" in logs, logs[-2000:])


if __name__ == "__main__":
    harness.main("test_node_identity", body)
