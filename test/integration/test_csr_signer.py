#!/usr/bin/python3
"""Node certificates from the Kubernetes CSR API (signer signet.dev/node):
`signetd --csr-signer` and `signetd --authority kubernetes-csr` against the
test API server (test/apiserver), which sets each CSR's requestor from the
bearer token as kube-apiserver does.

* the signer reads the CA from a Secret; two node signetds (worker-1,
  worker-2) get certificates that `openssl verify` accepts, keys 0600;
* CSRs from a service account, for a node without a Node object, and one
  whose subject names another node are Denied with the reason (and a node
  signetd whose CSR is denied reports why); another signer's CSR is left
  alone; malformed CSR objects are denied, and the signer keeps running;
* renewal (--csr-expiration 30s): a new key and certificate replace the old
  ones at two thirds of the lifetime without a restart;
* restarts: the signer touches nothing already decided; a node reuses its
  valid certificate;
* `signetctl status -o json` shows identity mode kubernetes-csr; no private
  key in any log."""
import base64
import json
import os
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "apiserver"))
import harness  # noqa: E402
import apiserver as A  # noqa: E402

TD = "test.local"
CSR_PATH = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
TOKENS = {
    "signer-token": "system:serviceaccount:signet-system:signet-signer",
    "worker-1-token": "system:node:worker-1",
    "worker-2-token": "system:node:worker-2",
    "worker-9-token": "system:node:worker-9",
    "sa-token": "system:serviceaccount:x:y",
    # signetd's own service account (the DaemonSet's), its token bound to a
    # pod on worker-2 as kubelet's projected tokens are (Kubernetes >= 1.30),
    # and one without that binding (a legacy Secret token).
    "agent-token": {"username": "system:serviceaccount:signet-system:signet",
                    "extra": {"authentication.kubernetes.io/node-name": ["worker-2"]}},
    "agent-unbound-token": "system:serviceaccount:signet-system:signet",
}


def mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)



def wait_until(pred, timeout=20.0, step=0.1):
    return harness.wait_until(pred, timeout, step)


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def make_csr(tmp: Path, cn: str, org: str = TD) -> str:
    key, csr = tmp / f"{cn}-{time.monotonic_ns()}.key", tmp / f"{cn}-{time.monotonic_ns()}.csr"
    harness.sh("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
               "-keyout", key, "-out", csr, "-subj", f"/O={org}/CN={cn}")
    return csr.read_text()


def post_csr(url: str, token: str, name: str, csr_pem: str, signer="signet.dev/node") -> dict:
    body = {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
            "metadata": {"name": name},
            "spec": {"request": b64(csr_pem), "signerName": signer, "expirationSeconds": 3600,
                     "usages": ["digital signature", "key agreement", "client auth", "server auth"],
                     # what a client claims here is overwritten by the server
                     "username": "system:node:worker-1", "groups": ["system:nodes"]}}
    req = urllib.request.Request(url + CSR_PATH, data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def conditions(obj: dict | None) -> dict:
    return {c.get("type"): c for c in ((obj or {}).get("status") or {}).get("conditions") or []}


class Signer:
    def __init__(self, run: harness.Run, bins: dict, kubeconfig: Path):
        self.run, self.bins, self.kubeconfig = run, bins, kubeconfig
        self.dir = Path(run.mkdtemp("signer"))
        self.proc = None
        self.starts = 0
        # --health-address (the Deployment's probes): a free loopback port.
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.health_port = s.getsockname()[1]

    def probe(self, path: str) -> int:
        """GET path on the probe listener: the HTTP status, 0 when it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}{path}", timeout=3) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return 0

    def log_path(self) -> Path:
        return self.dir / f"signer.{self.starts}.log"

    def start(self):
        self.starts += 1
        logf = open(self.log_path(), "wb")
        self.proc = subprocess.Popen([str(self.bins["signetd"]), "--csr-signer", "--kubeconfig", str(self.kubeconfig),
                                      "--log-level", "debug", "--health-address", f"127.0.0.1:{self.health_port}"], stdout=logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        logf.close()
        self.run.own_process(self.proc, f"signer#{self.starts}")
        self.run.own_log(self.log_path())
        return self

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.run.disown_process(self.proc)
        rc, self.proc = self.proc.returncode, None
        return rc

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.dir.glob("signer.*.log")))


def body(t: harness.Test, run: harness.Run):
    bins = harness.require_signet_binaries(t)
    if os.geteuid() != 0:
        harness.skip("signetd (node mode) needs root")
    ctl = str(bins["signetctl"])
    tmp = Path(run.mkdtemp("csr"))

    # ---- the cluster: API server, CA Secret, trust bundle ConfigMap, Nodes
    ca = tmp / "ca"
    p = harness.sh(ctl, "authority", "init", str(ca), "--trust-domain", TD, check=False)
    t.require("signetctl authority init", p.returncode == 0, p.stdout + p.stderr)
    store = A.Store()
    store.faults["tokens"] = dict(TOKENS)
    srv = A.ApiServer(store, 0).start()
    run.on_cleanup("test API server", srv.stop)
    store.apply({"kind": "Secret", "apiVersion": "v1", "type": "Opaque",
                 "metadata": {"name": "signet-ca", "namespace": "signet-system"},
                 "data": {"ca.key": b64((ca / "ca.key").read_bytes()), "ca.crt": b64((ca / "ca.crt").read_bytes())}})
    for n in ("worker-1", "worker-2"):
        store.apply({"kind": "Node", "apiVersion": "v1", "metadata": {"name": n},
                     "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.10"}]}})
    kc = {}
    for tok, user in TOKENS.items():
        kc[tok] = tmp / f"{tok}.kubeconfig"
        kc[tok].write_text(A.kubeconfig(srv.url, {"token": tok}))

    def csr(name):
        return store.get("certificatesigningrequests", "", name)

    def all_csrs():
        return store.current("certificatesigningrequests")

    # Another signer's request, there before the signer starts: never touched.
    post_csr(srv.url, "worker-1-token", "kubelet-serving-1", make_csr(tmp, "system:node:worker-1", "system:nodes"),
             signer="kubernetes.io/kubelet-serving")

    signer = Signer(run, bins, kc["signer-token"]).start()
    t.check("signer: /readyz 200 once the CA is loaded and the requests listed (--health-address)",
            wait_until(lambda: signer.probe("/readyz") == 200, 20), signer.log()[-2000:])
    t.equal("signer: /healthz", signer.probe("/healthz"), 200)
    # The signer publishes the trust bundle the nodes read (no one else may
    # write it): the CA Secret has no trust-bundle.pem, so its ca.crt.
    cm = wait_until(lambda: store.get("configmaps", "signet-system", "signet-trust-bundle"), 20)
    t.check("signer: created the trust bundle ConfigMap signet-system/signet-trust-bundle", bool(cm),
            signer.log()[-2000:])
    t.equal("signer: the bundle is the CA Secret's certificate",
            ((cm or {}).get("data") or {}).get("trust-bundle.pem"), (ca / "ca.crt").read_text())
    t.equal("signer: nothing else on the probe listener", signer.probe("/metrics"), 404)

    # ---- two nodes get their certificates: worker-1 with the node's own
    # credentials (system:node:worker-1), worker-2 as the manifests run it,
    # with signetd's service account (its token bound to a pod on worker-2)
    nodes = {}
    requestor = {"worker-1": "system:node:worker-1", "worker-2": "system:serviceaccount:signet-system:signet"}
    for n, tok, extra in (("worker-1", "worker-1-token", ["--csr-expiration", "30s"]), ("worker-2", "agent-token", [])):
        d = harness.Signetd(run, bins, node=n)
        d.extra_args = ["--authority", "kubernetes-csr", "--kubeconfig", str(kc[tok]), "--no-flows", *extra]
        d.start()
        nodes[n] = d

    def identity(d):
        return d.status().get("identity", {})

    for n, d in nodes.items():
        st = wait_until(lambda d=d: identity(d).get("node") and identity(d), 30)
        t.require(f"{n}: certificate obtained from the CSR API", bool(st),
                  json.dumps(identity(d)) + "\n" + d.log_tail(40) + "\nsigner:\n" + signer.log()[-3000:])
        t.equal(f"{n}: status identity mode", st.get("mode"), "kubernetes-csr")
        t.equal(f"{n}: status names the node", st.get("node"), n)
        t.equal(f"{n}: trust domain from the bundle's CA", st.get("trustDomain"), TD)
        t.equal(f"{n}: one certificate issued", st.get("issued"), 1)
        t.equal(f"{n}: status shows the CSR issued", (st.get("csr") or {}).get("phase"), "issued")
        own = d.state_dir / "identity"
        t.equal(f"{n}: node.key is 0600", mode(own / "node.key"), 0o600)
        t.check(f"{n}: no node.key.new left", not (own / "node.key.new").exists())
        p = harness.sh("openssl", "verify", "-CAfile", str(ca / "trust-bundle.pem"), str(own / "node.crt"), check=False)
        t.check(f"{n}: openssl verify -CAfile accepts node.crt", p.returncode == 0, p.stdout + p.stderr)
        p = harness.sh("openssl", "x509", "-in", str(own / "node.crt"), "-noout", "-subject", "-ext", "subjectAltName",
                       check=False)
        t.check(f"{n}: node.crt is CN={n}, O={TD}, spiffe://{TD}/node/{n}",
                f"CN = {n}" in p.stdout and f"O = {TD}" in p.stdout and f"spiffe://{TD}/node/{n}" in p.stdout,
                p.stdout + p.stderr)
        obj = csr(st["csr"]["name"])
        t.check(f"{n}: its CSR is Approved and carries the certificate",
                "Approved" in conditions(obj) and (obj.get("status") or {}).get("certificate"), obj)
        t.equal(f"{n}: the server set spec.username from the token", obj["spec"].get("username"), requestor[n])
    fp2 = identity(nodes["worker-2"])["fingerprint"]

    # ---- requests the signer must deny
    post_csr(srv.url, "sa-token", "from-sa", make_csr(tmp, "worker-1"))
    post_csr(srv.url, "agent-token", "agent-other-node", make_csr(tmp, "worker-1"))
    post_csr(srv.url, "agent-unbound-token", "agent-unbound", make_csr(tmp, "worker-1"))
    post_csr(srv.url, "worker-9-token", "no-such-node", make_csr(tmp, "worker-9"))
    post_csr(srv.url, "worker-1-token", "other-subject", make_csr(tmp, "worker-2"))
    post_csr(srv.url, "worker-1-token", "wrong-domain", make_csr(tmp, "worker-1", "other.domain"))
    # Malformed objects (put straight into the store, as a broken client could not).
    store.apply({"kind": "CertificateSigningRequest", "apiVersion": "certificates.k8s.io/v1",
                 "metadata": {"name": "malformed-request"},
                 "spec": {"signerName": "signet.dev/node", "request": "%%% not base64",
                          "username": "system:node:worker-1", "groups": ["system:nodes"]}})
    store.apply({"kind": "CertificateSigningRequest", "apiVersion": "certificates.k8s.io/v1",
                 "metadata": {"name": "malformed-spec"}, "spec": "nonsense"})
    want = {
        "from-sa": "requestor system:serviceaccount:x:y is not a node",
        "agent-other-node": "subject CN=worker-1 does not match requestor worker-2",
        "agent-unbound": "requestor system:serviceaccount:signet-system:signet carries no node binding",
        "no-such-node": "no Node object worker-9",
        "other-subject": "subject CN=worker-2 does not match requestor worker-1",
        "wrong-domain": f"subject O=other.domain is not the trust domain {TD}",
        "malformed-request": "malformed CertificateSigningRequest",
    }
    for name, msg in want.items():
        obj = wait_until(lambda name=name: "Denied" in conditions(csr(name)) and csr(name), 20)
        cond = conditions(obj).get("Denied", {})
        t.check(f"denied: {name}: {msg}", msg in cond.get("message", ""), obj)
        t.check(f"denied: {name}: no certificate", not ((obj or {}).get("status") or {}).get("certificate"), obj)
    # "spec": "nonsense" has no signerName: not provably ours, so only logged.
    t.check("malformed object without a signer name: left alone", not conditions(csr("malformed-spec")),
            csr("malformed-spec"))
    t.check("another signer's CSR is left alone", not conditions(csr("kubelet-serving-1")) and
            not (csr("kubelet-serving-1").get("status") or {}).get("certificate"), csr("kubelet-serving-1"))
    t.check("the signer survived the malformed objects", signer.proc.poll() is None, signer.log()[-2000:])

    # A node whose request is denied says why.
    d9 = harness.Signetd(run, bins, node="worker-9")
    d9.extra_args = ["--authority", "kubernetes-csr", "--kubeconfig", str(kc["worker-9-token"]), "--no-flows"]
    d9.start()
    st9 = wait_until(lambda: "no Node object worker-9" in identity(d9).get("lastError", "") and identity(d9), 20)
    t.check("worker-9: status lastError says the CSR was denied and why", bool(st9), identity(d9))
    t.check("worker-9: no certificate", not identity(d9).get("node"), identity(d9))
    d9.stop()

    # ---- renewal without restart (worker-1: 30 s certificates, renewed after ~20 s)
    d1 = nodes["worker-1"]
    st = identity(d1)
    fp1, pid1 = st["fingerprint"], d1.proc.pid
    key1 = (d1.state_dir / "identity" / "node.key").read_bytes()
    st = wait_until(lambda: identity(d1).get("fingerprint") not in (None, fp1) and identity(d1), 45, 0.5)
    t.require("worker-1: renewed without a restart", bool(st), json.dumps(identity(d1)) + "\n" + d1.log_tail(30))
    t.equal("worker-1: same process", d1.proc.pid, pid1)
    t.check("worker-1: two certificates issued", st.get("issued", 0) >= 2, st)
    t.check("worker-1: renewed before the old one expired (two thirds)",
            "renewed this node's certificate" in d1.log_path().read_text(errors="replace"), d1.log_tail(20))
    own1 = d1.state_dir / "identity"
    t.check("worker-1: a new key with the new certificate", (own1 / "node.key").read_bytes() != key1)
    t.equal("worker-1: renewed node.key is 0600", mode(own1 / "node.key"), 0o600)
    p = harness.sh("openssl", "verify", "-CAfile", str(ca / "trust-bundle.pem"), str(own1 / "node.crt"), check=False)
    t.check("worker-1: openssl verify accepts the renewed certificate", p.returncode == 0, p.stdout + p.stderr)
    p = harness.sh("openssl", "x509", "-in", str(own1 / "node.crt"), "-noout", "-pubkey", check=False)
    q = harness.sh("openssl", "pkey", "-in", str(own1 / "node.key"), "-pubout", check=False)
    t.check("worker-1: node.key matches node.crt", p.stdout and p.stdout == q.stdout, p.stdout + q.stdout)

    # ---- restarts (worker-1 stopped first: its renewals would add CSRs meanwhile)
    d1.stop()
    decided = {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in all_csrs()}
    t.equal("signer stops cleanly on SIGTERM", signer.stop(), 0)
    # A trust bundle changed behind the signer's back is put right at start.
    store.apply({"kind": "ConfigMap", "apiVersion": "v1",
                 "metadata": {"name": "signet-trust-bundle", "namespace": "signet-system"},
                 "data": {"trust-bundle.pem": "stale", "other": "kept"}})
    signer.start()
    cm = wait_until(lambda: (store.get("configmaps", "signet-system", "signet-trust-bundle") or {}).get("data", {})
                    .get("trust-bundle.pem") != "stale" and store.get("configmaps", "signet-system",
                                                                       "signet-trust-bundle"), 20)
    t.equal("restarted signer: the trust bundle is the CA's again (PUT), other keys kept",
            ((cm or {}).get("data") or {}), {"trust-bundle.pem": (ca / "ca.crt").read_text(), "other": "kept"})
    post_csr(srv.url, "sa-token", "after-restart", make_csr(tmp, "worker-1"))
    ok = wait_until(lambda: "Denied" in conditions(csr("after-restart")), 20)
    t.check("restarted signer decides new requests", ok, signer.log()[-2000:])
    changed = [n for n, rv in decided.items() if csr(n)["metadata"]["resourceVersion"] != rv]
    t.check("restarted signer leaves decided requests alone", not changed, changed)
    d2 = nodes["worker-2"]
    d2.stop()
    d2.start()
    st = wait_until(lambda: identity(d2).get("node") and identity(d2), 10)
    t.equal("worker-2 restart: the valid certificate is reused", (st or {}).get("fingerprint"), fp2)
    t.equal("worker-2 restart: nothing requested", (st or {}).get("issued"), 0)

    for d in nodes.values():
        d.stop()
    signer.stop()
    logs = signer.log() + "".join(Path(x).read_text(errors="replace") for d in (*nodes.values(), d9)
                                  for x in d.dir.glob("signetd.*.log"))
    t.check("no private key material in any log", "PRIVATE KEY" not in logs and "BEGIN" not in logs)
    t.check("the signer logs its decisions", "denied CertificateSigningRequest from-sa" in logs and
            "approved and signed CertificateSigningRequest" in logs, signer.log()[-2000:])


if __name__ == "__main__":
    harness.main("test_csr_signer", body)
