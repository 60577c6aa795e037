#!/usr/bin/env python3
"""Checks signet's Kubernetes manifests without an API server.

Usage: validate.py [SOURCE_ROOT]   (default: two folders up from this file)

What it checks, for every manifests/*.yaml (not manifests/examples/):
  - each document parses (Debian's python3-yaml) and has apiVersion, kind and
    metadata.name; namespaced kinds are in signet-system; names are unique;
  - kustomization.yaml lists exactly the numbered files;
  - the DaemonSet: selector matches the template labels, containers have a
    name and an image, probes, resources, every mount's volume exists and every
    volume is used, the host paths signet needs are there (netns with
    HostToContainer propagation), capabilities are "drop ALL" plus a justified
    few, $(VAR) references resolve, ConfigMap keys exist, the flags passed to
    signetd and signet-install-cni are flags those programs accept, and the
    binaries it runs are where the Dockerfile puts them; signet-install-cni
    runs once as an init container and keeps running as a container with
    `install --watch` (issue #15: re-chains signet when the network plugin
    rewrites its config), both with the installer's capabilities only;
    nodeSelector kubernetes.io/os: linux; signetd has no CPU limit (CFS
    throttling delays queued SYNs), memory request = limit >=
    --handshake-memory + 128Mi, httpGet probes (no exec) on its loopback
    --health-address (liveness /healthz, readiness /readyz), the handshake
    permissive with --authority kubernetes-csr, and no kubelet kubeconfig,
    PKI or --kubeconfig/--csr-kubeconfig (its own service account);
  - the signer Deployment: Linux nodes, httpGet probes on --health-address;
  - the trust bundle ConfigMap: the same namespace in the code's default,
    the docs and the manifests; node agents may get it; only the signer's
    Role may write ConfigMaps (update limited to the bundle by name), and it
    publishes where the nodes read; the Dockerfile's runtime stage installs
    no curl;
  - RBAC: no wildcards; the node agent's read rules cover exactly the API
    paths the Kubernetes source requests (grepped from
    controller/source/kubernetes/, or a fixed list when that folder has none)
    with list+watch, and nothing more; approve/sign live only in the signer's
    role, bound to another ServiceAccount;
  - kubectl (when installed) accepts each file offline
    (`kubectl label --local -f FILE -o json KEY-`) and `kubectl kustomize`
    builds the same objects.
Exit status 0 when everything holds; 1 with one line per problem otherwise.
"""
import json
import os
import re
import shutil
import subprocess
import sys

try:
    import yaml
except ImportError:
    print("validate.py: needs PyYAML: apt-get install python3-yaml", file=sys.stderr)
    sys.exit(1)

ROOT = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", ".."))
MANIFESTS = os.path.join(ROOT, "manifests")
NAMESPACE = "signet-system"
NAMESPACED = {"ServiceAccount", "ConfigMap", "DaemonSet", "Deployment", "Service", "Role", "RoleBinding", "Secret"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass",
                  "CustomResourceDefinition"}

# Used when controller/source/kubernetes/ does not (yet) show the paths it
# requests: what the Kubernetes source is specified to watch (DESIGN.md).
FALLBACK_READS = {("", "namespaces"), ("", "pods"), ("", "nodes"), ("", "services"),
                  ("networking.k8s.io", "networkpolicies")}
# The node certificate (certificates.k8s.io CSR API, signer signet.dev/node).
NODE_CSR_RULE = ("certificates.k8s.io", "certificatesigningrequests", frozenset({"create", "get", "watch"}))
# The node agent's only writes besides its CSR (issue #15), each with the file
# that makes the request (checked to name the path): one Event per
# unprotected pod, and the startup taint's removal from its own Node.
NODE_WRITES = {("", "events"): ({"create", "patch"}, "controller/coverage/cluster_writer.cpp", '/events"'),
               ("", "nodes"): ({"patch"}, "controller/coverage/cluster_writer.cpp", '"/api/v1/nodes/"')}
# Capabilities the node agent may hold, with the reason (see 30-daemonset.yaml).
ALLOWED_CAPS = {
    "NET_ADMIN": "nftables, conntrack and NFQUEUE netlink in pod netns",
    "SYS_ADMIN": "setns() into pod netns",
    "SYS_PTRACE": "only with hostPID, to open /proc/PID/ns/net of other processes",
}
INIT_ALLOWED_CAPS = {"CHOWN"}
REQUIRED_HOST_PATHS = {"/run/signet", "/var/lib/signet", "/opt/cni/bin", "/etc/cni/net.d", "/var/run/netns"}

problems = []


def problem(where, msg):
    problems.append(f"{where}: {msg}")


def load_documents():
    files = sorted(f for f in os.listdir(MANIFESTS)
                   if f.endswith((".yaml", ".yml")) and f != "kustomization.yaml"
                   and os.path.isfile(os.path.join(MANIFESTS, f)))
    docs = []
    for f in files:
        path = os.path.join(MANIFESTS, f)
        try:
            with open(path) as fh:
                loaded = [d for d in yaml.safe_load_all(fh) if d is not None]
        except yaml.YAMLError as e:
            problem(f, f"does not parse: {e}")
            continue
        if not loaded:
            problem(f, "holds no document")
        for i, d in enumerate(loaded):
            docs.append((f"{f}[{i}]", f, d))
    return files, docs


def check_strings(where, value, what):
    """YAML 1.1 turns yes/no/on/1.0 into bools and numbers: maps that must
    hold strings are checked."""
    if value is None:
        return
    if not isinstance(value, dict):
        problem(where, f"{what} must be a map")
        return
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            problem(where, f"{what}.{k}: {v!r} is not a string (quote it)")


def check_common(docs):
    seen = {}
    for where, _, d in docs:
        if not isinstance(d, dict):
            problem(where, "not a mapping")
            continue
        for field in ("apiVersion", "kind"):
            if not isinstance(d.get(field), str) or not d.get(field):
                problem(where, f"{field} missing")
        meta = d.get("metadata") or {}
        name = meta.get("name")
        if not isinstance(name, str) or not name:
            problem(where, "metadata.name missing")
        kind = d.get("kind")
        ns = meta.get("namespace")
        if kind in NAMESPACED and ns != NAMESPACE:
            problem(where, f"{kind} must be in namespace {NAMESPACE}, not {ns!r}")
        if kind in CLUSTER_SCOPED and ns is not None:
            problem(where, f"{kind} is cluster-scoped: no metadata.namespace")
        if kind not in NAMESPACED | CLUSTER_SCOPED:
            problem(where, f"unexpected kind {kind!r}")
        check_strings(where, meta.get("labels"), "metadata.labels")
        check_strings(where, meta.get("annotations"), "metadata.annotations")
        key = (kind, ns, name)
        if key in seen:
            problem(where, f"duplicate {kind} {name} (also {seen[key]})")
        seen[key] = where


def check_kustomization(files):
    path = os.path.join(MANIFESTS, "kustomization.yaml")
    if not os.path.exists(path):
        problem("kustomization.yaml", "missing")
        return
    with open(path) as fh:
        k = yaml.safe_load(fh)
    resources = k.get("resources") or []
    numbered = [f for f in files if re.match(r"^\d\d-", f)]
    if resources != numbered:
        problem("kustomization.yaml", f"resources {resources} must be exactly the numbered files {numbered}, in order")
    for f in files:
        if not re.match(r"^\d\d-", f):
            problem(f, "manifest files are numbered (NN-name.yaml)")


def flags_of(source_file, usage_marker):
    """The --flags a program's usage text lists."""
    path = os.path.join(ROOT, source_file)
    if not os.path.exists(path):
        return None
    text = open(path).read()
    start = text.find(usage_marker)
    end = text.find(')"', start)
    if start < 0 or end < 0:
        return None
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", text[start:end]))


def check_container(where, c, env_names, configmaps, allowed_caps, is_init, host_pid):
    cw = f"{where} container {c.get('name')!r}"
    for field in ("name", "image"):
        if not c.get(field):
            problem(cw, f"{field} missing")
    res = c.get("resources") or {}
    for part in ("requests", "limits"):
        for r in ("cpu", "memory"):
            if r == "cpu" and part == "limits" and not is_init:
                # signetd: no CPU limit. CFS throttling would hold the SYNs
                # queued in NFQUEUE for the rest of the period.
                if r in (res.get(part) or {}):
                    problem(cw, "no CPU limit on signetd: CFS throttling delays the SYNs it holds")
                continue
            if r not in (res.get(part) or {}):
                problem(cw, f"resources.{part}.{r} missing")
    env = c.get("env") or []
    names = {e.get("name") for e in env}
    for e in env:
        if "value" in e and not isinstance(e["value"], str):
            problem(cw, f"env {e.get('name')}: value {e['value']!r} is not a string")
        ref = ((e.get("valueFrom") or {}).get("configMapKeyRef")) or None
        if ref:
            cm = configmaps.get(ref.get("name"))
            if cm is None:
                problem(cw, f"env {e.get('name')}: no ConfigMap {ref.get('name')!r}")
            elif ref.get("key") not in (cm.get("data") or {}):
                problem(cw, f"env {e.get('name')}: ConfigMap {ref.get('name')} has no key {ref.get('key')!r}")
    for a in (c.get("command") or []) + (c.get("args") or []):
        for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", str(a)):
            if var not in names:
                problem(cw, f"$({var}) is not an env var of this container")
    sc = c.get("securityContext") or {}
    if sc.get("privileged"):
        problem(cw, "must not be privileged: it gets named capabilities")
    if sc.get("allowPrivilegeEscalation") is not False:
        problem(cw, "allowPrivilegeEscalation: false expected")
    if sc.get("readOnlyRootFilesystem") is not True:
        problem(cw, "readOnlyRootFilesystem: true expected")
    caps = sc.get("capabilities") or {}
    if caps.get("drop") != ["ALL"]:
        problem(cw, "capabilities.drop must be [ALL]")
    added = set(caps.get("add") or [])
    for cap in sorted(added - allowed_caps):
        problem(cw, f"capability {cap} is not one signet needs")
    if "SYS_PTRACE" in added and not host_pid:
        problem(cw, "SYS_PTRACE is only needed with hostPID")
    if not is_init:
        for needed in ("NET_ADMIN", "SYS_ADMIN"):
            if needed not in added:
                problem(cw, f"capability {needed} missing")
        check_probes(cw, c, host_network=True)
        check_memory(cw, c)


def flag_value(c, flag):
    """The value of --flag=V (or --flag V) in a container's args, else None."""
    args = [str(a) for a in c.get("args") or []]
    for i, a in enumerate(args):
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
        if a == flag and i + 1 < len(args):
            return args[i + 1]
    return None


def check_probes(cw, c, host_network):
    """httpGet probes on signetd's --health-address (no curl forked in the
    container): liveness /healthz, readiness /readyz, on its port; with host
    networking the address must be loopback and the probe's host too."""
    addr = flag_value(c, "--health-address")
    if not addr:
        problem(cw, "--health-address missing (the probes' listener)")
        return
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
    if host_network and host not in ("127.0.0.1", "::1"):
        problem(cw, f"--health-address {addr}: with hostNetwork it must be a loopback address")
    for probe, path in (("startupProbe", None), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        p = c.get(probe)
        if not p:
            if probe != "startupProbe":
                problem(cw, f"{probe} missing")
            continue
        if "exec" in p:
            problem(cw, f"{probe}: exec probes fork a program in the container: use httpGet on --health-address")
            continue
        g = p.get("httpGet")
        if not g:
            problem(cw, f"{probe}: httpGet expected")
            continue
        if path and g.get("path") != path:
            problem(cw, f"{probe}: path {g.get('path')!r}, expected {path}")
        pport = ports.get(g["port"]) if isinstance(g.get("port"), str) else g.get("port")
        if str(pport) != port:
            problem(cw, f"{probe}: port {g.get('port')!r} is not --health-address's {port}")
        if host_network and g.get("host") != host:
            problem(cw, f"{probe}: host {g.get('host')!r}: with hostNetwork kubelet must ask {host} "
                        "(the pod's address is the node's)")


def mebibytes(q):
    m = re.match(r"^(\d+)(Mi|Gi)$", str(q))
    if not m:
        return None
    return int(m.group(1)) * (1024 if m.group(2) == "Gi" else 1)


def check_memory(cw, c):
    """signetd's memory limit covers its handshake budget plus the measured
    RSS without it (46 MiB at a 10,000-pod relist's peak) with headroom:
    limit >= --handshake-memory + 128Mi; request = limit."""
    res = c.get("resources") or {}
    limit = mebibytes((res.get("limits") or {}).get("memory"))
    request = mebibytes((res.get("requests") or {}).get("memory"))
    hs = flag_value(c, "--handshake-memory")
    budget = int(hs) if hs and hs.isdigit() else 256  # signetd's default
    if limit is None:
        problem(cw, "memory limit must be in Mi or Gi")
        return
    if limit < budget + 128:
        problem(cw, f"memory limit {limit}Mi is below --handshake-memory {budget} MiB + 128Mi")
    if request != limit:
        problem(cw, f"memory request {request}Mi should equal the limit {limit}Mi")


def image_paths(dockerfile):
    """The files the image's last stage gets from `COPY --from=...` lines."""
    if not dockerfile:
        return None
    text = dockerfile.replace("\\\n", " ")
    last = text.rfind("\nFROM ")
    paths = set()
    for line in text[last:].splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] == "COPY" and words[1].startswith("--from="):
            dest = words[-1]
            for src in words[2:-1]:
                paths.add(dest + os.path.basename(src) if dest.endswith("/") else dest)
    return paths


def check_daemonset(docs, files_text):
    by_kind = {}
    for where, _, d in docs:
        by_kind.setdefault(d.get("kind"), []).append((where, d))
    configmaps = {d["metadata"]["name"]: d for _, d in by_kind.get("ConfigMap", [])}
    for where, cm in by_kind.get("ConfigMap", []):
        check_strings(where, cm.get("data"), "data")
    sas = {d["metadata"]["name"] for _, d in by_kind.get("ServiceAccount", [])}
    dss = by_kind.get("DaemonSet", [])
    if len(dss) != 1:
        problem("manifests", f"expected exactly one DaemonSet, found {len(dss)}")
        return
    where, ds = dss[0]
    spec = ds.get("spec") or {}
    sel = ((spec.get("selector") or {}).get("matchLabels")) or {}
    tmpl = spec.get("template") or {}
    labels = ((tmpl.get("metadata") or {}).get("labels")) or {}
    if not sel:
        problem(where, "spec.selector.matchLabels missing")
    for k, v in sel.items():
        if labels.get(k) != v:
            problem(where, f"selector {k}={v} does not match the template labels")
    us = spec.get("updateStrategy") or {}
    if us.get("type") != "RollingUpdate" or (us.get("rollingUpdate") or {}).get("maxUnavailable") != 1:
        problem(where, "updateStrategy must be RollingUpdate with maxUnavailable 1")
    pod = tmpl.get("spec") or {}
    if pod.get("hostNetwork") is not True:
        problem(where, "hostNetwork: true expected (signetd must not depend on the CNI chain it is in)")
    if pod.get("priorityClassName") != "system-node-critical":
        problem(where, "priorityClassName: system-node-critical expected")
    if not any(t.get("operator") == "Exists" and not t.get("key") and not t.get("effect")
               for t in pod.get("tolerations") or []):
        problem(where, "a toleration {operator: Exists} for every taint is expected")
    if pod.get("serviceAccountName") not in sas:
        problem(where, f"serviceAccountName {pod.get('serviceAccountName')!r} is not a ServiceAccount here")
    host_pid = pod.get("hostPID") is True
    if (pod.get("nodeSelector") or {}).get("kubernetes.io/os") != "linux":
        problem(where, "nodeSelector kubernetes.io/os: linux expected")
    volumes = {v.get("name"): v for v in pod.get("volumes") or []}
    # signetd's identity is its own service account and the CSR flow: no
    # kubelet credentials on the node agent.
    for v in volumes.values():
        hp = (v.get("hostPath") or {}).get("path", "")
        if hp.startswith(("/etc/kubernetes", "/var/lib/kubelet")):
            problem(where, f"volume {v.get('name')}: hostPath {hp}: the kubelet's kubeconfig or PKI must not be "
                           "mounted (signetd uses its own service account)")
    used = set()
    inits = pod.get("initContainers") or []
    containers = pod.get("containers") or []
    if not containers:
        problem(where, "no containers")
    def installs(c):
        return "signet-install-cni" in " ".join(c.get("command") or [])
    if not any(installs(c) for c in inits):
        problem(where, "an init container running signet-install-cni is expected")
    watchers = [c for c in containers if installs(c)]
    if not any((c.get("args") or [])[:1] == ["install"] and "--watch" in (c.get("args") or []) for c in watchers):
        problem(where, "a container running signet-install-cni install --watch is expected (it chains signet "
                       "again when the network plugin rewrites its config)")
    names = [c.get("name") for c in inits + containers]
    if len(names) != len(set(names)):
        problem(where, f"container names repeat: {names}")
    for c in inits + containers:
        # The installer (init container and watcher) needs none of signetd's
        # capabilities nor its probes.
        is_installer = c in inits or installs(c)
        check_container(where, c, None, configmaps,
                        INIT_ALLOWED_CAPS if is_installer else set(ALLOWED_CAPS), is_installer, host_pid)
        for m in c.get("volumeMounts") or []:
            used.add(m.get("name"))
            if m.get("name") not in volumes:
                problem(where, f"container {c.get('name')}: mount {m.get('name')!r} has no volume")
            vol = volumes.get(m.get("name")) or {}
            hp = (vol.get("hostPath") or {}).get("path", "")
            if hp.endswith("/netns") and m.get("mountPropagation") != "HostToContainer":
                problem(where, f"container {c.get('name')}: netns mount needs mountPropagation: HostToContainer")
    for name in volumes:
        if name not in used:
            problem(where, f"volume {name!r} is not mounted anywhere")
    host_paths = {(v.get("hostPath") or {}).get("path") for v in volumes.values() if v.get("hostPath")}
    for p in sorted(REQUIRED_HOST_PATHS - host_paths):
        problem(where, f"hostPath {p} missing")

    # The handshake out of the box: permissive, node certificates by the CSR
    # flow with signetd's own credentials.
    signetd = next((c for c in containers if not installs(c)), None)
    if signetd is not None:
        if flag_value(signetd, "--authority") != "kubernetes-csr":
            problem(where, "signetd: --authority=kubernetes-csr expected (node certificates from the CSR signer)")
        hs = flag_value(signetd, "--handshake") or ""
        m = re.fullmatch(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", hs)
        if m:
            ref = next(((e.get("valueFrom") or {}).get("configMapKeyRef") for e in signetd.get("env") or []
                        if e.get("name") == m.group(1)), None) or {}
            hs = ((configmaps.get(ref.get("name")) or {}).get("data") or {}).get(ref.get("key"), "")
        if hs != "permissive":
            problem(where, f"signetd: --handshake must be permissive out of the box, is {hs!r}")
        for flag in ("--kubeconfig", "--csr-kubeconfig"):
            if flag_value(signetd, flag) is not None:
                problem(where, f"signetd: {flag}: signetd uses its own service account (in-cluster)")

    # Flags and binaries agree with the programs and the image.
    known = {
        "signetd": flags_of("controller/main.cpp", "Usage: signetd"),
        "signet-install-cni": flags_of("installer/main.cpp", "Usage: signet-install-cni"),
    }
    installed = image_paths(files_text.get("Dockerfile", ""))
    for c in inits + containers:
        cmd = c.get("command") or []
        if not cmd:
            problem(where, f"container {c.get('name')}: command missing")
            continue
        prog = os.path.basename(cmd[0])
        if installed is not None and cmd[0] not in installed:
            problem(where, f"container {c.get('name')}: the Dockerfile does not install {cmd[0]}")
        flags = known.get(prog)
        if flags is None:
            continue
        for a in c.get("args") or []:
            if str(a).startswith("--"):
                flag = str(a).split("=", 1)[0]
                if flag not in flags:
                    problem(where, f"container {c.get('name')}: {prog} has no flag {flag}")
        for a in (c.get("args") or []) + ["".join(cmd)]:
            if str(a).startswith("--plugin=") and installed is not None and str(a).split("=", 1)[1] not in installed:
                problem(where, f"the Dockerfile does not install {str(a).split('=', 1)[1]}")


def check_signer(docs):
    """The signer Deployment: Linux nodes, httpGet probes on --health-address."""
    deps = [(w, d) for w, _, d in docs if d.get("kind") == "Deployment"]
    for where, d in deps:
        pod = ((d.get("spec") or {}).get("template") or {}).get("spec") or {}
        if (pod.get("nodeSelector") or {}).get("kubernetes.io/os") != "linux":
            problem(where, "nodeSelector kubernetes.io/os: linux expected")
        for c in pod.get("containers") or []:
            check_probes(f"{where} container {c.get('name')!r}", c, host_network=pod.get("hostNetwork") is True)


def check_trust_bundle(docs):
    """The trust bundle: one namespace in code, manifests and docs; node
    agents read it, no signet identity writes it."""
    code = open(os.path.join(ROOT, "controller", "credentials", "csr_client.h")).read()
    m = re.search(r'trust_bundle_configmap = "([^"/]+)/([^"]+)"', code)
    if not m:
        problem("csr_client.h", "no default trust_bundle_configmap found")
        return
    ns, name = m.group(1), m.group(2)
    if ns != NAMESPACE:
        problem("csr_client.h", f"the trust bundle's default namespace {ns} is not the manifests' {NAMESPACE}")
    for doc in ("docs/handshake.md", "docs/install.md", "manifests/40-signer.yaml", "controller/main.cpp"):
        text = open(os.path.join(ROOT, doc)).read()
        for other in re.findall(r"([a-z0-9-]+)/" + re.escape(name), text):
            if other != ns:
                problem(doc, f"names the trust bundle {other}/{name}, the code reads {ns}/{name}")
    # Who is bound to which Role (RoleBindings here).
    holders = {}
    for _, _, b in docs:
        if b.get("kind") == "RoleBinding":
            holders.setdefault((b.get("roleRef") or {}).get("name"), []).extend(
                s.get("name") for s in b.get("subjects") or [])
    readers, writers = set(), set()
    for where, _, d in docs:
        if d.get("kind") not in ("Role", "ClusterRole"):
            continue
        rname = d["metadata"]["name"]
        for r in d.get("rules") or []:
            if "configmaps" not in (r.get("resources") or []):
                continue
            verbs = set(r.get("verbs") or [])
            names = r.get("resourceNames") or []
            writes = verbs - {"get", "list", "watch"}
            scoped = d.get("kind") == "Role" and d["metadata"].get("namespace") == ns
            if writes:
                subjects = holders.get(rname, []) if scoped else []
                if not scoped or subjects != ["signet-signer"]:
                    problem(where, f"{rname} may write ConfigMaps ({sorted(writes)}): only the signer's Role in "
                                   f"{ns} may (it publishes the trust bundle)")
                elif writes - {"create"} and names != [name]:
                    problem(where, f"{rname}: {sorted(writes - {'create'})} on ConfigMaps must be limited to "
                                   f"resourceNames [{name}]")
                else:
                    writers.add(rname)
            if scoped and name in names and "get" in verbs:
                readers.add(rname)
    if not any("signet" in holders.get(r, []) for r in readers):
        problem("rbac", f"the node agent (signet) cannot get the ConfigMap {ns}/{name}")
    if not writers:
        problem("rbac", f"the signer cannot write the trust bundle {ns}/{name}")
    # The signer publishes where the nodes read.
    signer = next((d for _, _, d in docs if d.get("kind") == "Deployment"), None)
    if signer is not None:
        for c in signer["spec"]["template"]["spec"].get("containers") or []:
            v = flag_value(c, "--trust-bundle-configmap")
            if v is not None and v.split(":")[0] != f"{ns}/{name}":
                problem("40-signer.yaml", f"the signer publishes the trust bundle to {v}, the nodes read {ns}/{name}")


def api_reads_from_code():
    """(group, resource) pairs the Kubernetes source requests."""
    folder = os.path.join(ROOT, "controller", "source", "kubernetes")
    found = set()
    if os.path.isdir(folder):
        for f in sorted(os.listdir(folder)):
            if not f.endswith((".cpp", ".h")):
                continue
            text = open(os.path.join(folder, f)).read()
            for path in re.findall(r'"(/apis?/[^"\s?]*)', text):
                segs = [s for s in path.split("/") if s]
                if segs[0] == "api" and len(segs) >= 3:
                    group, rest = "", segs[2:]
                elif segs[0] == "apis" and len(segs) >= 4:
                    group, rest = segs[1], segs[3:]
                else:
                    continue
                if len(rest) >= 3 and rest[0] == "namespaces":
                    rest = rest[2:]  # /namespaces/NS/RESOURCE
                if rest and re.match(r"^[a-z]+$", rest[0]):
                    found.add((group, rest[0]))
    return found


def check_rbac(docs):
    by_kind = {}
    for where, _, d in docs:
        by_kind.setdefault(d.get("kind"), []).append((where, d))
    roles = {d["metadata"]["name"]: (w, d) for w, d in by_kind.get("ClusterRole", [])}
    for w, d in by_kind.get("ClusterRole", []) + by_kind.get("Role", []):
        for i, r in enumerate(d.get("rules") or []):
            for field in ("verbs", "resources", "apiGroups"):
                if "*" in (r.get(field) or []):
                    problem(w, f"rules[{i}].{field}: no wildcards")
            if "nonResourceURLs" in r:
                problem(w, f"rules[{i}]: nonResourceURLs are not needed")
    bindings = {}
    for w, b in by_kind.get("ClusterRoleBinding", []):
        ref = b.get("roleRef") or {}
        if ref.get("kind") != "ClusterRole" or ref.get("name") not in roles:
            problem(w, f"roleRef {ref} is not a ClusterRole here")
            continue
        for s in b.get("subjects") or []:
            if s.get("kind") != "ServiceAccount" or s.get("namespace") != NAMESPACE:
                problem(w, f"subject {s} is not a ServiceAccount in {NAMESPACE}")
            bindings.setdefault(s.get("name"), []).append(ref["name"])

    ds = [d for _, d in by_kind.get("DaemonSet", [])]
    if not ds:
        return
    node_sa = ds[0]["spec"]["template"]["spec"].get("serviceAccountName")
    rules = []
    for role in bindings.get(node_sa, []):
        rules += roles[role][1].get("rules") or []
    if not rules:
        problem("rbac", f"ServiceAccount {node_sa} is bound to no ClusterRole")
        return

    code = api_reads_from_code()
    if code:
        wanted = code
        origin = "controller/source/kubernetes/"
    else:
        wanted = FALLBACK_READS
        origin = "the fixed list in validate.py (no API paths found in controller/source/kubernetes/)"
    print(f"validate.py: API reads from {origin}: " + ", ".join(sorted(f"{g or 'core'}/{r}" for g, r in wanted)))

    granted = {}
    for r in rules:
        if r.get("resourceNames"):
            problem("rbac", f"node agent rule {r} is restricted by resourceNames: not expected")
        for g in r.get("apiGroups") or []:
            for res in r.get("resources") or []:
                granted.setdefault((g, res), set()).update(r.get("verbs") or [])
    csr = (NODE_CSR_RULE[0], NODE_CSR_RULE[1])
    for key in sorted(wanted):
        verbs = granted.get(key, set())
        for v in ("list", "watch"):
            if v not in verbs:
                problem("rbac", f"node agent lacks {v} on {key[0] or 'core'}/{key[1]}, which the source requests")
    for key, (verbs, source, needle) in NODE_WRITES.items():
        try:
            requested = needle in open(os.path.join(ROOT, source)).read()
        except OSError:
            requested = False
        if not requested:
            problem("rbac", f"{source} does not request {key[1]} ({needle}): the write rule is not needed")
        if not verbs <= granted.get(key, set()):
            problem("rbac", f"node agent lacks {sorted(verbs)} on {key[0] or 'core'}/{key[1]}, which {source} requests")
    for key, verbs in sorted(granted.items()):
        if key == csr:
            if verbs != set(NODE_CSR_RULE[2]):
                problem("rbac", f"node agent CSR verbs {sorted(verbs)} must be exactly {sorted(NODE_CSR_RULE[2])}")
            continue
        if key in NODE_WRITES:
            verbs = verbs - NODE_WRITES[key][0]
            if not verbs:
                continue
        if key not in wanted:
            problem("rbac", f"node agent may read {key[0] or 'core'}/{key[1]}, which the code does not request")
            continue
        extra = verbs - {"get", "list", "watch"}
        if extra:
            problem("rbac", f"node agent has verbs {sorted(extra)} on {key[1]}: read-only expected")
    if csr not in granted:
        problem("rbac", "node agent cannot create its certificatesigningrequest")
    for key in granted:
        if key[1] in ("signers", "certificatesigningrequests/approval", "certificatesigningrequests/status"):
            problem("rbac", f"node agent must not hold {key[1]}: that is the signer's")

    # The signer: approve/sign on signet.dev/node only, in its own role and SA.
    signer_roles = [name for name, (_, d) in roles.items()
                    if any("signers" in (r.get("resources") or []) for r in d.get("rules") or [])]
    if len(signer_roles) != 1:
        problem("rbac", f"expected one ClusterRole with the signer rights, found {signer_roles}")
    for name in signer_roles:
        w, d = roles[name]
        for r in d.get("rules") or []:
            if "signers" in (r.get("resources") or []):
                if r.get("resourceNames") != ["signet.dev/node"] or set(r.get("verbs") or []) != {"approve", "sign"}:
                    problem(w, f"signers rule must be approve+sign on resourceNames [signet.dev/node]: {r}")
        holders = [sa for sa, rs in bindings.items() if name in rs]
        if node_sa in holders or not holders:
            problem(w, f"{name} must be bound to its own ServiceAccount, not {holders}")


def check_kubectl(files, docs):
    kubectl = shutil.which("kubectl")
    if not kubectl:
        print("validate.py: kubectl not found: offline kubectl checks skipped")
        return
    for f in files:
        count = sum(1 for _, src, _ in docs if src == f)
        try:
            out = subprocess.run([kubectl, "label", "--local", "-f", os.path.join(MANIFESTS, f), "-o", "json",
                                  "signet.dev/validate-"], capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            problem(f, "kubectl label --local timed out")
            continue
        if out.returncode != 0:
            problem(f, "kubectl does not accept it: " + out.stderr.strip().splitlines()[-1] if out.stderr.strip()
                    else "kubectl failed")
            continue
        objs = []
        dec = json.JSONDecoder()
        text = out.stdout.strip()
        pos = 0
        while pos < len(text):
            obj, end = dec.raw_decode(text, pos)
            objs.append(obj)
            pos = end
            while pos < len(text) and text[pos].isspace():
                pos += 1
        # One object is printed as itself; several as a List.
        if len(objs) == 1 and objs[0].get("kind") == "List":
            objs = objs[0].get("items") or []
        if len(objs) != count:
            problem(f, f"kubectl read {len(objs)} objects, the YAML has {count}")
    out = subprocess.run([kubectl, "kustomize", MANIFESTS], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        problem("kustomization.yaml", "kubectl kustomize fails: " + out.stderr.strip())
        return
    built = sorted((d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(out.stdout) if d)
    mine = sorted((d["kind"], d["metadata"]["name"]) for _, _, d in docs)
    if built != mine:
        problem("kustomization.yaml", f"kubectl kustomize builds {built}, the files hold {mine}")


def check_image(dockerfile):
    """The runtime stage installs no curl: the probes are httpGet."""
    text = dockerfile.replace("\\\n", " ")
    last = text[text.rfind("\nFROM "):]
    for line in last.splitlines():
        if line.startswith("RUN") and re.search(r"\bcurl\b", line):
            problem("Dockerfile", "the runtime stage installs curl: nothing needs it (httpGet probes)")


def main():
    files, docs = load_documents()
    files_text = {}
    if os.path.exists(os.path.join(ROOT, "Dockerfile")):
        files_text["Dockerfile"] = open(os.path.join(ROOT, "Dockerfile")).read()
    else:
        problem("Dockerfile", "missing")
    check_common(docs)
    check_kustomization(files)
    check_daemonset(docs, files_text)
    check_signer(docs)
    check_rbac(docs)
    check_trust_bundle(docs)
    check_image(files_text.get("Dockerfile", ""))
    check_kubectl(files, docs)
    for p in problems:
        print("FAIL " + p)
    print(f"validate.py: {len(docs)} objects in {len(files)} files, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
