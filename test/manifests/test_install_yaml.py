#!/usr/bin/env python3
"""install.yaml (repository root) is what `kubectl kustomize manifests`
renders, and `kubectl apply --dry-run=client --validate=false -f` takes it.

Usage: test_install_yaml.py [SOURCE_ROOT]

1. `kubectl kustomize manifests` is compared with install.yaml (after its
   header comment): the same text passes; the same objects rendered
   differently (another kubectl's kustomize) pass with a note; anything else
   fails: install.yaml is stale, run scripts/render-install.sh.
2. `kubectl apply --dry-run=client --validate=false -f install.yaml`. kubectl
   needs API discovery even for a client-side dry run, and no API server can
   run here: a stub on 127.0.0.1 (a temporary kubeconfig points at it)
   answers /version and discovery with the resources kube-apiserver 1.32
   serves for the groups signet uses, and 404 NotFound to the GET of each object (nothing
   exists yet); any other request fails the test (a client dry run writes
   nothing). kubectl must report each object "created (dry run)".

Exit status: 0 pass, 1 fail, 77 (meson: skipped) only when kubectl is not
installed, said loudly.
"""
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading

try:
    import yaml
except ImportError:
    print("test_install_yaml.py: needs PyYAML: apt-get install python3-yaml", file=sys.stderr)
    sys.exit(1)

ROOT = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", ".."))
INSTALL = os.path.join(ROOT, "install.yaml")

# What kube-apiserver 1.32 lists for these groups (name, kind, namespaced).
DISCOVERY = {
    ("", "v1"): [("namespaces", "Namespace", False), ("serviceaccounts", "ServiceAccount", True),
                 ("configmaps", "ConfigMap", True), ("secrets", "Secret", True), ("services", "Service", True),
                 ("pods", "Pod", True), ("nodes", "Node", False)],
    ("apps", "v1"): [("daemonsets", "DaemonSet", True), ("deployments", "Deployment", True)],
    ("rbac.authorization.k8s.io", "v1"): [("clusterroles", "ClusterRole", False),
                                          ("clusterrolebindings", "ClusterRoleBinding", False),
                                          ("roles", "Role", True), ("rolebindings", "RoleBinding", True)],
    ("scheduling.k8s.io", "v1"): [("priorityclasses", "PriorityClass", False)],
    ("networking.k8s.io", "v1"): [("networkpolicies", "NetworkPolicy", True)],
    ("certificates.k8s.io", "v1"): [("certificatesigningrequests", "CertificateSigningRequest", False)],
}
VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL: " + msg)


def ok(msg):
    print("PASS: " + msg)


class Stub(http.server.BaseHTTPRequestHandler):
    unexpected = []
    gets = []

    def log_message(self, *a):
        pass

    def reply(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/version":
            return self.reply(200, {"major": "1", "minor": "32", "gitVersion": "v1.32.0", "platform": "linux/amd64"})
        if path == "/api":
            return self.reply(200, {"kind": "APIVersions", "versions": ["v1"],
                                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                                                    "serverAddress": "127.0.0.1:6443"}]})
        if path == "/apis":
            groups = []
            for g, v in DISCOVERY:
                if g:
                    gv = {"groupVersion": f"{g}/{v}", "version": v}
                    groups.append({"name": g, "versions": [gv], "preferredVersion": gv})
            return self.reply(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        for (g, v), resources in DISCOVERY.items():
            base = f"/api/{v}" if not g else f"/apis/{g}/{v}"
            if path == base:
                return self.reply(200, {"kind": "APIResourceList", "apiVersion": "v1",
                                        "groupVersion": v if not g else f"{g}/{v}",
                                        "resources": [{"name": n, "singularName": k.lower(), "namespaced": ns,
                                                       "kind": k, "verbs": VERBS} for n, k, ns in resources]})
            if path.startswith(base + "/"):
                # GET of an object: nothing exists yet.
                Stub.gets.append(path)
                name = path.rsplit("/", 1)[1]
                return self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                        "message": f"\"{name}\" not found", "reason": "NotFound",
                                        "details": {"name": name}, "code": 404})
        if path.startswith("/openapi/") or path.startswith("/swagger"):
            # The OpenAPI schema: older kubectl (Debian's 1.20) fetches it even
            # with --validate=false; a read, answered "none here".
            Stub.gets.append(path)
            return self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                                    "code": 404})
        Stub.unexpected.append("GET " + self.path)
        self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                         "code": 404})

    def _write(self):
        Stub.unexpected.append(f"{self.command} {self.path}")
        self.reply(405, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 405,
                         "message": "the test stub accepts no writes"})

    do_POST = do_PUT = do_PATCH = do_DELETE = _write


def documents(text):
    return [d for d in yaml.safe_load_all(text) if d is not None]


def key(d):
    md = d.get("metadata") or {}
    return (d.get("apiVersion"), d.get("kind"), md.get("namespace"), md.get("name"))


def main():
    kubectl = shutil.which("kubectl")
    if not kubectl:
        print("=" * 72)
        print("SKIPPED: test_install_yaml.py: kubectl is not installed, so install.yaml is NOT checked")
        print("against manifests/. Debian 12's kubernetes-client package provides it")
        print("(scripts/install-deps.sh installs it when no kubectl is on PATH).")
        print("=" * 72)
        return 77
    ver = subprocess.run([kubectl, "version", "--client"], capture_output=True, text=True)
    print("kubectl: " + " ".join(ver.stdout.split()))
    if not os.path.exists(INSTALL):
        fail("install.yaml is missing: run scripts/render-install.sh")
        return 1

    # 1. The committed file is the kustomization's rendering.
    with open(INSTALL) as f:
        committed = f.read()
    lines = committed.splitlines(keepends=True)
    body = "".join(lines[next((i for i, l in enumerate(lines) if not l.startswith("#")), len(lines)):])
    r = subprocess.run([kubectl, "kustomize", os.path.join(ROOT, "manifests")], capture_output=True, text=True,
                       timeout=120)
    if r.returncode != 0:
        fail("kubectl kustomize manifests: " + r.stderr.strip())
        return 1
    rendered = r.stdout
    if rendered.strip() == body.strip():
        ok(f"install.yaml is exactly `kubectl kustomize manifests` ({len(documents(body))} objects)")
    else:
        mine = sorted((key(d), json.dumps(d, sort_keys=True)) for d in documents(body))
        theirs = sorted((key(d), json.dumps(d, sort_keys=True)) for d in documents(rendered))
        if mine == theirs:
            ok("install.yaml holds the same objects as `kubectl kustomize manifests` "
               "(rendered differently by this kubectl's kustomize)")
        else:
            a, b = dict(mine), dict(theirs)
            diff = sorted({k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}, key=str)
            fail("install.yaml is stale: it differs from `kubectl kustomize manifests` in "
                 + ", ".join(f"{k[1]} {k[2] + '/' if k[2] else ''}{k[3]}" for k in diff)
                 + ": run scripts/render-install.sh and commit install.yaml")

    # 2. kubectl apply --dry-run=client takes it (API discovery from the stub).
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            kc = os.path.join(tmp, "kubeconfig")
            with open(kc, "w") as f:
                f.write(yaml.safe_dump({
                    "apiVersion": "v1", "kind": "Config", "current-context": "stub",
                    "clusters": [{"name": "stub", "cluster": {"server": f"http://127.0.0.1:{srv.server_port}"}}],
                    "users": [{"name": "stub", "user": {"token": "not-a-real-token"}}],
                    "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "stub"}}]}))
            env = dict(os.environ, KUBECONFIG=kc, HOME=tmp, KUBECACHEDIR=os.path.join(tmp, "cache"))
            r = subprocess.run([kubectl, "apply", "--dry-run=client", "--validate=false", "-f", INSTALL],
                               capture_output=True, text=True, timeout=120, env=env)
    finally:
        srv.shutdown()
    out = r.stdout.strip().splitlines()
    n = len(documents(body))
    created = [l for l in out if l.endswith("created (dry run)")]
    if r.returncode != 0:
        fail(f"kubectl apply --dry-run=client --validate=false -f install.yaml: exit {r.returncode}: "
             + (r.stderr.strip() or r.stdout.strip())[-2000:])
    elif len(created) != n:
        fail(f"kubectl apply --dry-run=client: {len(created)} objects created (dry run), install.yaml has {n}:\n"
             + r.stdout + r.stderr)
    else:
        ok(f"kubectl apply --dry-run=client --validate=false -f install.yaml: {n} objects created (dry run)")
        for l in out:
            print("    " + l)
    if Stub.unexpected:
        fail("kubectl made requests a client-side dry run should not: " + ", ".join(Stub.unexpected))
    print(f"test_install_yaml.py: {len(failures)} problem(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
