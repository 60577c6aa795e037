#!/usr/bin/python3
"""A test Kubernetes API server speaking the real list/watch protocol.

Python 3 standard library only (YAML manifests additionally need PyYAML,
Debian's python3-yaml, when present; JSON always works).

It serves Namespaces, Pods, NetworkPolicies (networking.k8s.io/v1), Nodes
and Services the way kube-apiserver 1.29 does:

* ``GET /api/v1/pods?limit=N&continue=T`` -> ``PodList`` with
  ``metadata.resourceVersion``, ``continue`` and ``remainingItemCount``; list
  items carry no kind/apiVersion, as in real responses; an expired continue
  token is ``410 Gone`` (reason Expired);
* ``GET /api/v1/pods?watch=true&resourceVersion=RV&allowWatchBookmarks=true
  &timeoutSeconds=S`` -> ``200``, ``Transfer-Encoding: chunked``, one JSON
  event per line (ADDED, MODIFIED, DELETED, BOOKMARK, ERROR); a
  resourceVersion older than the compaction point is an ERROR event with a
  410 Status (or, with fault ``gone_mode="http"``, an HTTP 410);
* authentication (bearer tokens, client certificates over TLS) -> ``401``;
  authorization (per-resource denial) -> ``403`` with the real Status body.

Objects get uid, resourceVersion (one global counter, like etcd's
revision), creationTimestamp, generation and managedFields as the real
server fills them. Services get the defaults the real server sets: a
ClusterIP from 10.96.0.0/12 when none is given (kept on later applies, as
``kubectl apply`` keeps it), ``clusterIPs``, ``ipFamilies``, port protocol
and ``targetPort``, node ports from 30000-32767 for NodePort and
LoadBalancer Services, and an empty ``status.loadBalancer``.

Use it in-process (``Store`` + ``ApiServer``; ``stop()``/``start()`` again is
a server restart with the same data, like etcd surviving it) or as a
process::

    apiserver.py [--port N] [--fixtures DIR] [--manifests DIR] [--tls-dir DIR]
                 [--token T ...] [--write-kubeconfig FILE]

which prints one JSON line ``{"url": ..., "control": ...}`` when serving.
``--manifests DIR`` follows a folder of manifests (``*.yaml``, ``*.yml``,
``*.json``, as ``kubectl apply -f`` takes them): files created, changed or
removed become watch events within ~100 ms. That is how a harness that
writes manifest files (test/conformance) can use the API source unchanged.

Control API (plain JSON over the same port, no auth; see CONTROL below):
``POST /_control/apply`` (object, list of objects or a List),
``/_control/delete`` ``{"kind","namespace","name"}``, ``/_control/fault``
(merge fault settings), ``/_control/compact``, ``/_control/drop``,
``/_control/bulk_pods``, ``GET /_control/requests``, ``/_control/state``,
``POST /_control/scan`` (ingest the followed manifest folder now).

Single objects, ConfigMap create/update (the signer's trust bundle) and the CSR API (signet's node certificates; added for
test/integration/test_csr_signer.py, nothing above changed):

* ``GET /api/v1/nodes/NAME``, ``GET /api/v1/namespaces/NS/{secrets,configmaps,
  pods}/NAME`` (and any other resource above by name) -> the object or a
  ``404 NotFound`` Status;
* CertificateSigningRequests (certificates.k8s.io/v1, cluster-scoped): list
  and watch like the other resources, ``POST`` (create: ``name`` or
  ``generateName``; ``spec.username``, ``spec.groups`` and ``spec.uid`` are
  set by the server from the authenticated caller, as kube-apiserver does;
  ``409 AlreadyExists``; ``422 Invalid`` without signerName/request),
  ``GET .../NAME``, ``PUT .../NAME/approval`` (only status.conditions
  Approved/Denied change; both at once is ``422``) and ``PUT .../NAME/status``
  (certificate and other conditions; a certificate only on an approved
  request; Approved/Denied kept from the stored object); a PUT whose
  metadata.resourceVersion is not the stored one is ``409 Conflict``;
* users: ``--token T`` (or fault ``tokens``) maps a token to a user name
  or to ``{"username": U, "groups": [...], "extra": {K: [V]}}`` (extra as a
  pod-bound token's node claim, copied into a CSR's ``spec.extra``); groups default as the real
  authenticators set them (service accounts: ``system:serviceaccounts``,
  ``system:serviceaccounts:NS``; ``system:node:*``: ``system:nodes``; all:
  ``system:authenticated``); client certificates: CN = user, O = groups.
  ``--user TOKEN=USERNAME[@GROUP,...]`` adds one such mapping.

Events and PATCH (signetd's writes about its node, issue #15; added for
test/integration/test_unprotected.py, nothing above changed):

* ``POST /api/v1/namespaces/NS/events`` creates a core/v1 Event (``201``;
  ``409 AlreadyExists`` for a name taken; ``422 Invalid`` when
  ``involvedObject.namespace`` is not NS, as kube-apiserver validates it);
  events are listed and watched like the other resources, and
  ``GET /_control/objects?resource=events`` returns them;
* ``PATCH`` of any object above by name, with ``Content-Type``
  ``application/json-patch+json`` (RFC 6902: add, remove, replace, test; a
  failed ``test`` is ``422``) or ``application/merge-patch+json`` (RFC 7386);
  a patched ``metadata.resourceVersion`` that is not the stored one is
  ``409 Conflict`` (the precondition kube-apiserver applies); any other
  content type (strategic merge patch included) is ``415``. Each PATCH is in
  the request log with its ``contentType`` and ``body``. In-process, fault
  ``before_patch`` (a list of callables ``f(store, resource, ns, name)``;
  each PATCH first pops and runs one) makes a concurrent change land between
  a client's read and its patch.
"""

from __future__ import annotations

import argparse
import base64
import copy
import datetime
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent

# resource -> (group, version, kind, namespaced)
RESOURCES = {
    "namespaces": ("", "v1", "Namespace", False),
    "pods": ("", "v1", "Pod", True),
    "networkpolicies": ("networking.k8s.io", "v1", "NetworkPolicy", True),
    "nodes": ("", "v1", "Node", False),
    "services": ("", "v1", "Service", True),
    # The CSR API of signet's node certificates, and the objects its signer and
    # clients read (GET by name; list/watch work as for the others).
    "certificatesigningrequests": ("certificates.k8s.io", "v1", "CertificateSigningRequest", False),
    "secrets": ("", "v1", "Secret", True),
    "configmaps": ("", "v1", "ConfigMap", True),
    # What signetd writes: Events on unprotected pods (POST), the Node's startup taint (PATCH).
    "events": ("", "v1", "Event", True),
}
KIND_TO_RESOURCE = {v[2]: k for k, v in RESOURCES.items()}
DEFAULT_USER = "system:serviceaccount:kube-system:signet"


def user_info(user) -> dict:
    """{"username", "groups", "uid"} of an authenticated user (a name or a dict)."""
    if isinstance(user, dict):
        name = user.get("username", "")
        groups = list(user.get("groups") or [])
    else:
        name, groups = str(user), []
    if not (isinstance(user, dict) and "groups" in user):
        if name.startswith("system:serviceaccount:"):
            ns = name.split(":")[2]
            groups = ["system:serviceaccounts", f"system:serviceaccounts:{ns}"]
        elif name.startswith("system:node:"):
            groups = ["system:nodes"]
    if name != "system:anonymous" and "system:authenticated" not in groups:
        groups.append("system:authenticated")
    info = {"username": name, "groups": groups, "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, "user:" + name))}
    if isinstance(user, dict) and user.get("extra"):
        # What the authenticator adds, e.g. a pod-bound service account
        # token's {"authentication.kubernetes.io/node-name": [NODE]}.
        info["extra"] = {k: list(v) for k, v in user["extra"].items()}
    return info


def api_version_of(resource: str) -> str:
    g, v, _, _ = RESOURCES[resource]
    return f"{g}/{v}" if g else v


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_body(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    d = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
         "message": message, "reason": reason, "code": code}
    if details is not None:
        d["details"] = details
    return d


class Gone(Exception):
    pass


# --------------------------------------------------------------------------
# the object store (etcd + watch cache)

class Store:
    """Objects by resource, one global resourceVersion, an event history per
    resource, compaction. Thread-safe; waiters are woken on every change."""

    def __init__(self, start_rv: int = 1000):
        self.cond = threading.Condition()
        self.rv = start_rv
        self.objects: dict[str, dict[tuple, dict]] = {r: {} for r in RESOURCES}
        self.history: dict[str, list] = {r: [] for r in RESOURCES}  # (rv, type, obj)
        self.compacted = 0  # watches from an RV below this get 410
        self.list_snapshots: dict[str, tuple] = {}
        self.faults = {
            "forbidden": [],          # resources answered with 403 (list and watch)
            "tokens": None,           # accepted bearer tokens; None = anything (and no auth) is accepted
            "client_cert_users": True,  # a verified client certificate authenticates (CN)
            "delay": 0.0,             # seconds before any API answer (slow server)
            "gone_mode": "event",     # "event": 200 + ERROR 410 event; "http": HTTP 410
            "bookmark_interval": 1.0,  # seconds between bookmarks (when allowWatchBookmarks)
            "malformed": {},          # resource -> count of malformed events to inject in watches
            "drop_partial": False,    # /_control/drop writes half an event before closing
            "list_status": {},        # resource -> HTTP status forced on lists (e.g. 500)
            "before_patch": [],       # callables f(store, resource, ns, name): one runs before each PATCH
        }
        self.requests: list[dict] = []
        self.drop_generation = 0

    # ---- helpers
    @staticmethod
    def key(resource: str, obj: dict) -> tuple:
        md = obj.get("metadata") or {}
        if RESOURCES[resource][3]:
            return (md.get("namespace") or "default", md["name"])
        return ("", md["name"])

    def _bump(self) -> int:
        self.rv += 1
        return self.rv

    def _record(self, resource: str, typ: str, obj: dict) -> None:
        self.history[resource].append((int(obj["metadata"]["resourceVersion"]), typ, obj))
        self.cond.notify_all()

    # ---- mutations
    def apply(self, obj: dict, keep_meta: bool = False) -> dict:
        """Creates or replaces an object (kubectl apply/replace semantics)."""
        obj = copy.deepcopy(obj)
        kind = obj.get("kind")
        if kind not in KIND_TO_RESOURCE:
            raise ValueError(f"unsupported kind {kind!r}")
        resource = KIND_TO_RESOURCE[kind]
        # kind and apiVersion first, as the real server serializes them
        obj = {"kind": kind, "apiVersion": api_version_of(resource),
               **{k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}}
        md = obj.setdefault("metadata", {})
        if not md.get("name"):
            raise ValueError("metadata.name is required")
        if RESOURCES[resource][3]:
            md.setdefault("namespace", "default")
        else:
            md.pop("namespace", None)
        if resource == "namespaces":
            md.setdefault("labels", {})["kubernetes.io/metadata.name"] = md["name"]
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            obj.setdefault("status", {"phase": "Active"})
        if resource == "pods":
            obj.setdefault("status", {"phase": "Pending", "qosClass": "BestEffort"})
        with self.cond:
            k = self.key(resource, obj)
            old = self.objects[resource].get(k)
            if resource == "services":
                self._default_service(obj, old)
            if old is not None:
                md["uid"] = old["metadata"]["uid"]
                md["creationTimestamp"] = old["metadata"]["creationTimestamp"]
                if "generation" in old["metadata"]:
                    gen = old["metadata"]["generation"]
                    md["generation"] = gen + (1 if obj.get("spec") != old.get("spec") else 0)
            else:
                if not keep_meta or "uid" not in md:
                    md["uid"] = str(uuid.uuid4())
                if not keep_meta or "creationTimestamp" not in md:
                    md["creationTimestamp"] = now_rfc3339()
                if resource in ("networkpolicies",):
                    md.setdefault("generation", 1)
            if "managedFields" not in md:
                md["managedFields"] = [{
                    "manager": "kubectl-client-side-apply", "operation": "Update",
                    "apiVersion": obj["apiVersion"], "time": now_rfc3339(), "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:metadata": {"f:labels": {k2: {} for k2 in (md.get("labels") or {})}}}}]
            md["resourceVersion"] = str(self._bump())
            self.objects[resource][k] = obj
            self._record(resource, "MODIFIED" if old is not None else "ADDED", obj)
            return obj

    def _default_service(self, obj: dict, old: dict | None) -> None:
        """What kube-apiserver fills in a Service (under self.cond): a ClusterIP
        from 10.96.0.0/12 and node ports from 30000-32767 when absent (an
        update keeps the ones allocated before), and the other defaults."""
        spec = obj.setdefault("spec", {})
        old_spec = (old or {}).get("spec") or {}
        typ = spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        for p in spec.get("ports") or []:
            if isinstance(p, dict):
                p.setdefault("protocol", "TCP")
                if "port" in p and not p.get("targetPort"):
                    p["targetPort"] = p["port"]
        obj.setdefault("status", {"loadBalancer": {}})
        if typ == "ExternalName":
            return
        spec.setdefault("internalTrafficPolicy", "Cluster")
        if not spec.get("clusterIP"):
            spec["clusterIP"] = (spec.get("clusterIPs") or [None])[0] or old_spec.get("clusterIP") or self._free_ip()
        if not spec.get("clusterIPs"):
            spec["clusterIPs"] = (old_spec.get("clusterIPs") if old_spec.get("clusterIP") == spec["clusterIP"]
                                  else None) or [spec["clusterIP"]]
        if spec["clusterIP"] != "None":
            spec.setdefault("ipFamilies", ["IPv6" if ":" in ip else "IPv4" for ip in spec["clusterIPs"]])
            spec.setdefault("ipFamilyPolicy", "SingleStack" if len(spec["clusterIPs"]) == 1 else "PreferDualStack")
        if typ in ("NodePort", "LoadBalancer"):
            before = {(p.get("name"), p.get("port")): p.get("nodePort") for p in old_spec.get("ports") or []
                      if isinstance(p, dict)}
            for p in spec.get("ports") or []:
                if isinstance(p, dict) and not p.get("nodePort"):
                    p["nodePort"] = before.get((p.get("name"), p.get("port"))) or self._free_node_port()

    def _services(self):
        return [s.get("spec") or {} for s in self.objects["services"].values()]

    def _free_ip(self) -> str:
        used = {ip for s in self._services() for ip in (s.get("clusterIPs") or [s.get("clusterIP")])}
        for n in range(10 * 256 + 1, 16 * 65536):  # 10.96.10.1 onwards: fixtures and tests name low ones
            ip = f"10.{96 + (n >> 16)}.{(n >> 8) & 255}.{n & 255}"
            if n & 255 not in (0, 255) and ip not in used:
                return ip
        raise ValueError("service CIDR 10.96.0.0/12 is full")

    def _free_node_port(self) -> int:
        used = {p.get("nodePort") for s in self._services() for p in s.get("ports") or [] if isinstance(p, dict)}
        for port in range(30000, 32768):
            if port not in used:
                return port
        raise ValueError("node port range 30000-32767 is full")

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        resource = KIND_TO_RESOURCE[kind]
        k = ((namespace or "default") if RESOURCES[resource][3] else "", name)
        with self.cond:
            old = self.objects[resource].pop(k, None)
            if old is None:
                return False
            gone = copy.deepcopy(old)
            gone["metadata"]["resourceVersion"] = str(self._bump())
            self._record(resource, "DELETED", gone)
            return True

    def compact(self) -> int:
        """Forgets the history: watches from an older RV get 410 Gone."""
        with self.cond:
            self.compacted = self._bump()  # etcd compacts up to its current revision
            for r in RESOURCES:
                self.history[r] = []
            self.list_snapshots.clear()
            self.cond.notify_all()
            return self.compacted

    def load_fixtures(self, folder: Path) -> None:
        """Loads recorded List responses (namespaces.json, pods.json, ...)."""
        for resource in RESOURCES:
            f = Path(folder) / f"{resource}.json"
            if not f.exists():
                continue
            lst = json.loads(f.read_text())
            for item in lst.get("items", []):
                item = dict(item)
                item["kind"] = RESOURCES[resource][2]
                self.apply(item, keep_meta=True)

    # ---- single objects (GET by name, the CSR API's create and subresource updates)
    def get(self, resource: str, namespace: str, name: str) -> dict | None:
        k = ((namespace or "default") if RESOURCES[resource][3] else "", name)
        with self.cond:
            o = self.objects[resource].get(k)
            return copy.deepcopy(o) if o is not None else None

    def create(self, resource: str, obj: dict) -> dict:
        """POST: a new object (KeyError when the name exists); server-set metadata."""
        obj = copy.deepcopy(obj)
        obj = {"kind": RESOURCES[resource][2], "apiVersion": api_version_of(resource),
               **{k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}}
        md = obj.setdefault("metadata", {})
        with self.cond:
            if not md.get("name") and md.get("generateName"):
                md["name"] = md["generateName"] + uuid.uuid4().hex[:5]
            k = self.key(resource, obj)
            if k in self.objects[resource]:
                raise KeyError(md["name"])
            md["uid"] = str(uuid.uuid4())
            md["creationTimestamp"] = now_rfc3339()
            md["resourceVersion"] = str(self._bump())
            self.objects[resource][k] = obj
            self._record(resource, "ADDED", obj)
            return copy.deepcopy(obj)

    def update(self, resource: str, namespace: str, name: str, mutate, expected_rv: str | None) -> dict:
        """PUT: mutate(stored copy) -> new object, under optimistic concurrency.
        KeyError: not found; ValueError("conflict"): resourceVersion differs."""
        k = ((namespace or "default") if RESOURCES[resource][3] else "", name)
        with self.cond:
            old = self.objects[resource].get(k)
            if old is None:
                raise KeyError(name)
            if expected_rv and expected_rv != old["metadata"]["resourceVersion"]:
                raise ValueError("conflict")
            new = mutate(copy.deepcopy(old))
            new["metadata"]["resourceVersion"] = str(self._bump())
            self.objects[resource][k] = new
            self._record(resource, "MODIFIED", new)
            return copy.deepcopy(new)

    # ---- reads
    def list(self, resource: str, limit: int, cont: str | None) -> dict:
        with self.cond:
            if cont:
                try:
                    tok = json.loads(base64.urlsafe_b64decode(cont.encode() + b"==="))
                    snap = self.list_snapshots[tok["id"]]
                except Exception:
                    raise Gone()
                rv, items = snap
                start = tok["start"]
                if rv < self.compacted:
                    raise Gone()
            else:
                rv = self.rv
                items = [self.objects[resource][k] for k in sorted(self.objects[resource])]
                start = 0
            page = items[start:start + limit] if limit > 0 else items[start:]
            out = {"kind": RESOURCES[resource][2] + "List", "apiVersion": api_version_of(resource),
                   "metadata": {"resourceVersion": str(rv)}, "items": []}
            for it in page:
                it = dict(it)  # list items carry no kind/apiVersion, as kube-apiserver writes them
                it.pop("kind", None)
                it.pop("apiVersion", None)
                out["items"].append(it)
            nxt = start + len(page)
            if limit > 0 and nxt < len(items):
                sid = uuid.uuid4().hex
                self.list_snapshots[sid] = (rv, items)
                out["metadata"]["continue"] = base64.urlsafe_b64encode(
                    json.dumps({"id": sid, "start": nxt, "rv": rv}).encode()).decode().rstrip("=")
                out["metadata"]["remainingItemCount"] = len(items) - nxt
            return out

    def events_after(self, resource: str, rv: int) -> list:
        if rv < self.compacted:
            raise Gone()
        return [e for e in self.history[resource] if e[0] > rv]

    def current(self, resource: str) -> list:
        return [self.objects[resource][k] for k in sorted(self.objects[resource])]

    # ---- faults / log
    def set_faults(self, **kw) -> None:
        with self.cond:
            self.faults.update(kw)
            self.cond.notify_all()

    def drop_watches(self) -> None:
        with self.cond:
            self.drop_generation += 1
            self.cond.notify_all()

    def log_request(self, entry: dict) -> None:
        with self.cond:
            self.requests.append(entry)
            if len(self.requests) > 5000:
                del self.requests[:1000]

    def requests_for(self, resource: str | None = None, watch: bool | None = None) -> list:
        with self.cond:
            out = list(self.requests)
        if resource:
            out = [r for r in out if r["resource"] == resource]
        if watch is not None:
            out = [r for r in out if r["watch"] == watch]
        return out


def synthetic_pod(namespace: str, name: str, ip: str, labels: dict, node: str = "kind-worker") -> dict:
    """A Pod as a Deployment's ReplicaSet creates it, scheduled and running."""
    return {
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": namespace, "labels": labels, "generateName": name[:-5],
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name[:-6],
                                          "uid": "1b2c3d4e-aaaa-4bbb-8ccc-0123456789ab", "controller": True,
                                          "blockOwnerDeletion": True}]},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1.4.2",
                                 "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                                           {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}],
                                 "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
                                 "terminationMessagePath": "/dev/termination-log",
                                 "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"}],
                 "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
                 "serviceAccountName": "default", "serviceAccount": "default", "nodeName": node,
                 "securityContext": {}, "schedulerName": "default-scheduler", "priority": 0,
                 "enableServiceLinks": True, "preemptionPolicy": "PreemptLowerPriority"},
        "status": {"phase": "Running", "hostIP": "172.18.0.3", "hostIPs": [{"ip": "172.18.0.3"}],
                   "podIP": ip, "podIPs": [{"ip": ip}], "startTime": now_rfc3339(), "qosClass": "Burstable",
                   "conditions": [{"type": "Ready", "status": "True", "lastProbeTime": None,
                                   "lastTransitionTime": now_rfc3339()}],
                   "containerStatuses": [{"name": "app", "state": {"running": {"startedAt": now_rfc3339()}},
                                          "lastState": {}, "ready": True, "restartCount": 0,
                                          "image": "registry.example/app:1.4.2",
                                          "imageID": "registry.example/app@sha256:" + "ab" * 32,
                                          "containerID": "containerd://" + "cd" * 32, "started": True}]},
    }


def bookmark_object(resource: str, rv: int) -> dict:
    """What kube-apiserver sends as a BOOKMARK's object: only the RV is meaningful."""
    o = {"kind": RESOURCES[resource][2], "apiVersion": api_version_of(resource),
         "metadata": {"resourceVersion": str(rv), "creationTimestamp": None}}
    if resource == "pods":
        o["spec"] = {"containers": None}
        o["status"] = {}
    elif resource == "networkpolicies":
        o["spec"] = {"podSelector": {}}
    else:
        o["spec"] = {}
        o["status"] = {}
    return o


# --------------------------------------------------------------------------
# PATCH: JSON patch (RFC 6902) and JSON merge patch (RFC 7386)

class PatchError(Exception):
    """code 422 (a failed test, a path that does not exist) or 400 (a malformed patch)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def _pointer(path: str) -> list:
    if path == "":
        return []
    if not isinstance(path, str) or not path.startswith("/"):
        raise PatchError(400, f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc, parts: list):
    """The container holding the last part of `parts`, and that part (an int for lists)."""
    cur = doc
    for p in parts[:-1]:
        if isinstance(cur, dict) and p in cur:
            cur = cur[p]
        elif isinstance(cur, list) and p.isdigit() and int(p) < len(cur):
            cur = cur[int(p)]
        else:
            raise PatchError(422, f"path /{'/'.join(parts)} does not exist")
    last = parts[-1]
    if isinstance(cur, list):
        if last == "-":
            return cur, len(cur)
        if not last.isdigit():
            raise PatchError(422, f"invalid index {last!r}")
        return cur, int(last)
    if not isinstance(cur, dict):
        raise PatchError(422, f"path /{'/'.join(parts)} does not exist")
    return cur, last


def json_patch(doc: dict, ops) -> dict:
    if not isinstance(ops, list):
        raise PatchError(400, "a JSON patch is a list of operations")
    doc = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(400, f"malformed operation {op!r}")
        parts = _pointer(op["path"])
        if not parts:
            raise PatchError(422, "operations on the whole object are not supported")
        c, k = _walk(doc, parts)
        kind = op["op"]
        exists = (k in c) if isinstance(c, dict) else (k < len(c))
        if kind == "test":
            if not exists or c[k] != op.get("value"):
                raise PatchError(422, f"testing value {op['path']} failed: test failed")
        elif kind == "remove":
            if not exists:
                raise PatchError(422, f"unable to remove nonexistent key: {op['path']}")
            del c[k]
        elif kind == "replace":
            if not exists:
                raise PatchError(422, f"replace operation does not apply: doc is missing key: {op['path']}")
            c[k] = copy.deepcopy(op.get("value"))
        elif kind == "add":
            if isinstance(c, list):
                if k > len(c):
                    raise PatchError(422, f"index out of range in {op['path']}")
                c.insert(k, copy.deepcopy(op.get("value")))
            else:
                c[k] = copy.deepcopy(op.get("value"))
        else:
            raise PatchError(422, f"unsupported operation {kind!r} (test server)")
    return doc


def merge_patch(doc, patch):
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(doc) if isinstance(doc, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


# --------------------------------------------------------------------------
# HTTP

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kube-apiserver-test"
    sys_version = ""

    def log_message(self, fmt, *args):  # quiet
        if os.environ.get("APISERVER_DEBUG"):
            sys.stderr.write("apiserver: " + (fmt % args) + "\n")

    @property
    def store(self) -> Store:
        return self.server.store

    # ---- responses
    def _headers(self, code: int, length: int | None, chunked: bool = False) -> None:
        self.send_response(code)
        self.send_header("Audit-Id", str(uuid.uuid4()))
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Kubernetes-Pf-Flowschema-Uid", "3a1b2c4d-0000-4000-8000-00000000aaaa")
        self.send_header("X-Kubernetes-Pf-Prioritylevel-Uid", "3a1b2c4d-0000-4000-8000-00000000bbbb")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(length or 0))
        self.end_headers()

    def _json(self, code: int, body) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self._headers(code, len(data))
        self.wfile.write(data)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    # ---- auth
    def _authenticate(self) -> str | None:
        self.user_info = None
        tokens = self.store.faults["tokens"]
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            tok = auth[7:].strip()
            if tokens is None or tok in tokens:
                u = DEFAULT_USER if tokens is None else (tokens[tok] if isinstance(tokens, dict) else DEFAULT_USER)
                self.user_info = user_info(u)
                return self.user_info["username"]
            return None  # a wrong token is refused even when a cert is present (as the real server)
        cert = getattr(self.connection, "getpeercert", lambda: None)()
        if cert and self.store.faults["client_cert_users"]:
            orgs = [v for rdn in cert.get("subject", ()) for k, v in rdn if k == "organizationName"]
            for rdn in cert.get("subject", ()):
                for k, v in rdn:
                    if k == "commonName":
                        self.user_info = user_info({"username": v, "groups": orgs})
                        return v
        if tokens is None:
            return "system:anonymous"
        return None

    # ---- dispatch
    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_PATCH(self):
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        q = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()}
        try:
            if url.path.startswith("/_control/"):
                return self._control(method, url.path[len("/_control/"):], q)
            resource = None
            for r in RESOURCES:
                g, v, _, _ = RESOURCES[r]
                base = f"/apis/{g}/{v}/{r}" if g else f"/api/{v}/{r}"
                if url.path == base:
                    resource = r
            watch = q.get("watch") in ("true", "1")
            cert = getattr(self.connection, "getpeercert", lambda: None)()
            entry = {"method": method, "path": url.path, "query": q, "resource": resource,
                     "watch": watch, "time": time.time(),
                     "authorization": self.headers.get("Authorization", ""),
                     "clientCert": bool(cert), "userAgent": self.headers.get("User-Agent", "")}
            if method == "PATCH":
                n = int(self.headers.get("Content-Length") or 0)
                self._body_bytes = self.rfile.read(n) if n else b""
                entry["contentType"] = self.headers.get("Content-Type", "")
                entry["body"] = self._body_bytes.decode(errors="replace")
            self.store.log_request(entry)
            delay = self.store.faults["delay"]
            if delay:
                time.sleep(delay)
            user = self._authenticate()
            if user is None:
                return self._json(401, status_body(401, "Unauthorized", "Unauthorized"))
            if resource is None or method != "GET":
                if self._object_request(method, url.path, user):
                    return
                return self._json(404, status_body(404, "NotFound", "the server could not find the requested resource",
                                                   {}))
            verb = "watch" if watch else "list"
            if resource in self.store.faults["forbidden"]:
                g = RESOURCES[resource][0]
                return self._json(403, status_body(
                    403, "Forbidden",
                    f'{resource} is forbidden: User "{user}" cannot {verb} resource "{resource}" in API group "{g}" '
                    f"at the cluster scope", {"kind": resource}))
            if watch:
                return self._watch(resource, q)
            forced = self.store.faults["list_status"].get(resource)
            if forced:
                return self._json(forced, status_body(forced, "InternalError", "an error on the server (\"\") has "
                                                      "prevented the request from succeeding"))
            limit = int(q.get("limit") or 0)
            try:
                body = self.store.list(resource, limit, q.get("continue"))
            except Gone:
                return self._json(410, status_body(
                    410, "Expired",
                    "The provided continue parameter is too old to display a consistent list result. You can start "
                    "a new list without the continue parameter, or use the continue token in this response to "
                    "retrieve the remainder of the results. Continuing with the provided token results in an "
                    "inconsistent list - objects that were created, modified, or deleted between the time the first "
                    "chunk was returned and now may show up in the list."))
            return self._json(200, body)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            self.close_connection = True

    # ---- single objects and the CSR API (see the module docstring)
    def _object_request(self, method: str, path: str, user: str) -> bool:
        """Handles GET by name, CSR create and the CSR subresources. False when
        the path is none of these (the caller answers 404 as before)."""
        segs = [x for x in path.split("/") if x]
        if len(segs) >= 3 and segs[0] == "api":
            group, rest = "", segs[2:]
        elif len(segs) >= 4 and segs[0] == "apis":
            group, rest = segs[1], segs[3:]
        else:
            return False
        ns = ""
        if len(rest) >= 3 and rest[0] == "namespaces":
            ns, rest = rest[1], rest[2:]
        if not rest or rest[0] not in RESOURCES or RESOURCES[rest[0]][0] != group:
            return False
        resource, rest = rest[0], rest[1:]
        if RESOURCES[resource][3] != bool(ns) and rest:
            return False
        info = getattr(self, "user_info", None) or user_info(user)
        if method == "POST" and not rest and resource == "certificatesigningrequests":
            return self._csr_create(info) or True
        if method == "POST" and not rest and resource == "events" and ns:
            return self._event_create(ns) or True
        if method == "PATCH" and len(rest) == 1:
            return self._patch(resource, ns, rest[0], group) or True
        if method == "POST" and not rest and resource == "configmaps":
            return self._configmap_write(ns, None) or True
        if method == "PUT" and resource == "configmaps" and len(rest) == 1:
            return self._configmap_write(ns, rest[0]) or True
        if not rest or len(rest) > 2:
            return False
        name, sub = rest[0], (rest[1] if len(rest) == 2 else "")
        if method == "GET" and not sub:
            obj = self.store.get(resource, ns, name)
            if obj is None:
                self._json(404, status_body(404, "NotFound", f'{resource} "{name}" not found',
                                            {"name": name, "group": group, "kind": resource}))
            else:
                self._json(200, obj)
            return True
        if method == "PUT" and resource == "certificatesigningrequests" and sub in ("approval", "status"):
            self._csr_update(name, sub)
            return True
        if method == "GET" and resource == "certificatesigningrequests" and sub in ("approval", "status"):
            obj = self.store.get(resource, "", name)
            if obj is None:
                self._json(404, status_body(404, "NotFound", f'{resource} "{name}" not found',
                                            {"name": name, "group": group, "kind": resource}))
            else:
                self._json(200, obj)
            return True
        return False

    def _event_create(self, ns: str) -> None:
        body = self._read_body()
        if body is None:
            return self._json(400, status_body(400, "BadRequest", "the body is not a JSON object"))
        md = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
        name = md.get("name") or ""
        io = body.get("involvedObject") if isinstance(body.get("involvedObject"), dict) else {}
        if md.get("namespace", ns) != ns:
            return self._json(400, status_body(400, "BadRequest", "the namespace of the provided object does not "
                                               "match the namespace sent on the request"))
        if io.get("namespace", ns) != ns:
            return self._json(422, status_body(422, "Invalid", f'Event "{name}" is invalid: involvedObject.namespace: '
                                               "Invalid value: does not match event.namespace",
                                               {"name": name, "kind": "Event"}))
        if not name and not md.get("generateName"):
            return self._json(422, status_body(422, "Invalid", "Event is invalid: metadata.name: Required value",
                                               {"kind": "Event"}))
        body = dict(body, metadata=dict(md, namespace=ns))
        try:
            obj = self.store.create("events", body)
        except KeyError:
            return self._json(409, status_body(409, "AlreadyExists", f'events "{name}" already exists',
                                               {"name": name, "kind": "events"}))
        self._json(201, obj)

    def _patch(self, resource: str, ns: str, name: str, group: str) -> None:
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        raw = getattr(self, "_body_bytes", b"")
        if ctype not in ("application/json-patch+json", "application/merge-patch+json"):
            return self._json(415, status_body(415, "UnsupportedMediaType",
                                               f"the body of the request was in an unknown format - accepted media "
                                               f"types include: application/json-patch+json, "
                                               f"application/merge-patch+json (test server; got {ctype!r})"))
        try:
            patch = json.loads(raw or b"null")
        except ValueError as e:
            return self._json(400, status_body(400, "BadRequest", f"the patch is not JSON: {e}"))
        notfound = status_body(404, "NotFound", f'{resource} "{name}" not found',
                               {"name": name, "group": group, "kind": resource})
        with self.store.cond:
            hook = self.store.faults["before_patch"].pop(0) if self.store.faults["before_patch"] else None
        if hook is not None:
            hook(self.store, resource, ns, name)  # another client's change, just before this patch

        def mutate(old):
            if ctype == "application/json-patch+json":
                new = json_patch(old, patch)
            else:
                if not isinstance(patch, dict):
                    raise PatchError(400, "a merge patch is a JSON object")
                new = merge_patch(old, patch)
            md = new.get("metadata") if isinstance(new.get("metadata"), dict) else None
            if md is None or md.get("name") != name or md.get("uid") != old["metadata"]["uid"]:
                raise PatchError(422, "metadata.name and metadata.uid may not change")
            if md.get("resourceVersion") != old["metadata"]["resourceVersion"]:
                raise ValueError("conflict")
            return new
        try:
            obj = self.store.update(resource, ns, name, mutate, None)
        except KeyError:
            return self._json(404, notfound)
        except PatchError as e:
            reason = "Invalid" if e.code == 422 else "BadRequest"
            return self._json(e.code, status_body(e.code, reason, str(e)))
        except ValueError:
            return self._json(409, status_body(
                409, "Conflict", f'Operation cannot be fulfilled on {resource} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
                {"name": name, "kind": resource}))
        self._json(200, obj)

    def _read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(n)) if n else None
        except ValueError:
            body = None
        return body if isinstance(body, dict) else None

    def _invalid(self, name: str, msg: str) -> None:
        self._json(422, status_body(422, "Invalid",
                                    f'CertificateSigningRequest.certificates.k8s.io "{name}" is invalid: {msg}',
                                    {"name": name, "group": "certificates.k8s.io",
                                     "kind": "CertificateSigningRequest"}))

    def _csr_create(self, info: dict) -> None:
        body = self._read_body()
        if body is None:
            return self._json(400, status_body(400, "BadRequest", "the body is not a JSON object"))
        md = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
        name = md.get("name") or md.get("generateName") or ""
        spec = body.get("spec") if isinstance(body.get("spec"), dict) else None
        if spec is None or not isinstance(spec.get("signerName"), str) or not spec.get("signerName"):
            return self._invalid(name, "spec.signerName: Required value")
        try:
            base64.b64decode(spec.get("request") or "", validate=True)
            if not spec.get("request"):
                raise ValueError
        except (ValueError, TypeError):
            return self._invalid(name, "spec.request: Invalid value: the request must be a base64 PEM CSR")
        # The requestor is whoever made this call, whatever the body says.
        spec = dict(spec, username=info["username"], groups=info["groups"], uid=info["uid"])
        spec.pop("extra", None)
        if info.get("extra"):
            spec["extra"] = info["extra"]
        body = dict(body, spec=spec, status={})
        try:
            obj = self.store.create("certificatesigningrequests", body)
        except KeyError:
            return self._json(409, status_body(
                409, "AlreadyExists", f'certificatesigningrequests.certificates.k8s.io "{name}" already exists',
                {"name": name, "group": "certificates.k8s.io", "kind": "certificatesigningrequests"}))
        except Exception as e:  # noqa: BLE001 - e.g. no name
            return self._invalid(name, str(e))
        return self._json(201, obj)

    def _configmap_write(self, ns: str, name: str | None) -> None:
        """POST (name None) or PUT of a ConfigMap (the signer's trust bundle):
        201/200, 409 AlreadyExists or Conflict (stale resourceVersion), 404."""
        body = self._read_body()
        md = (body or {}).get("metadata") if isinstance((body or {}).get("metadata"), dict) else None
        if body is None or md is None or not md.get("name") or (name and md["name"] != name) or \
                md.get("namespace", ns) != ns:
            return self._json(400, status_body(400, "BadRequest", "the body is not a ConfigMap for this URL"))
        body = dict(body, metadata=dict(md, namespace=ns))
        cm = md["name"]
        details = {"name": cm, "kind": "configmaps"}
        if name is None:
            try:
                return self._json(201, self.store.create("configmaps", body))
            except KeyError:
                return self._json(409, status_body(409, "AlreadyExists", f'configmaps "{cm}" already exists', details))
        try:
            obj = self.store.update("configmaps", ns, cm,
                                    lambda old: dict(old, data=body.get("data") or {},
                                                     metadata=dict(old["metadata"],
                                                                   labels=md.get("labels") or {})),
                                    md.get("resourceVersion"))
        except KeyError:
            return self._json(404, status_body(404, "NotFound", f'configmaps "{cm}" not found', details))
        except ValueError:
            return self._json(409, status_body(409, "Conflict", f'Operation cannot be fulfilled on configmaps "{cm}": '
                                               "the object has been modified; please apply your changes to the "
                                               "latest version and try again", details))
        return self._json(200, obj)

    def _csr_update(self, name: str, sub: str) -> None:
        body = self._read_body()
        if body is None:
            return self._json(400, status_body(400, "BadRequest", "the body is not a JSON object"))
        if (body.get("metadata") or {}).get("name") not in (None, name):
            return self._json(400, status_body(400, "BadRequest", "the name of the object does not match the URL"))
        new_status = body.get("status") if isinstance(body.get("status"), dict) else {}
        conds = [c for c in (new_status.get("conditions") or []) if isinstance(c, dict)]
        problem = []

        def mutate(old: dict) -> dict:
            st = old.setdefault("status", {})
            old_conds = st.get("conditions") or []
            decisive = ("Approved", "Denied")
            if sub == "approval":
                keep = [c for c in old_conds if c.get("type") not in decisive]
                mine = [c for c in conds if c.get("type") in decisive]
                types = {c.get("type") for c in mine}
                if types == set(decisive):
                    problem.append("status.conditions: Invalid value: Approved and Denied conditions are "
                                   "mutually exclusive")
                st["conditions"] = mine + keep
            else:
                keep = [c for c in old_conds if c.get("type") in decisive]
                others = [c for c in conds if c.get("type") not in decisive]
                st["conditions"] = keep + others
                cert = new_status.get("certificate")
                if cert:
                    if st.get("certificate") and st["certificate"] != cert:
                        problem.append("status.certificate: Forbidden: updates may not modify existing certificate "
                                       "content")
                    elif not any(c.get("type") == "Approved" for c in keep):
                        problem.append("status.certificate: Forbidden: certificate can only be set if the request "
                                       "is approved")
                    else:
                        try:
                            base64.b64decode(cert, validate=True)
                        except (ValueError, TypeError):
                            problem.append("status.certificate: Invalid value: not base64")
                        st["certificate"] = cert
            if not st["conditions"]:
                st.pop("conditions")
            if problem:
                raise RuntimeError(problem[0])
            return old

        rv = (body.get("metadata") or {}).get("resourceVersion")
        try:
            obj = self.store.update("certificatesigningrequests", "", name, mutate, rv)
        except KeyError:
            return self._json(404, status_body(404, "NotFound", f'certificatesigningrequests.certificates.k8s.io '
                                               f'"{name}" not found', {"name": name, "group": "certificates.k8s.io",
                                                                       "kind": "certificatesigningrequests"}))
        except ValueError:
            return self._json(409, status_body(
                409, "Conflict", f'Operation cannot be fulfilled on certificatesigningrequests.certificates.k8s.io '
                f'"{name}": the object has been modified; please apply your changes to the latest version and '
                f'try again', {"name": name, "group": "certificates.k8s.io", "kind": "certificatesigningrequests"}))
        except RuntimeError as e:
            return self._invalid(name, str(e))
        return self._json(200, obj)

    def _watch(self, resource: str, q: dict) -> None:
        st = self.store
        rv_s = q.get("resourceVersion", "")
        timeout = float(q.get("timeoutSeconds") or 1800)
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
        with st.cond:
            try:
                if rv_s in ("", "0"):
                    # "most recent": synthetic ADDED events for what exists, then changes
                    pending = [(st.rv, "ADDED", o) for o in st.current(resource)]
                    pos = st.rv
                else:
                    pos = int(rv_s)
                    pending = st.events_after(resource, pos)
            except Gone:
                msg = f"too old resource version: {rv_s} ({st.compacted})"
                if st.faults["gone_mode"] == "http":
                    self.close_connection = True
                    return self._json(410, status_body(410, "Expired", msg))
                pending = None
            except ValueError:
                return self._json(400, status_body(400, "BadRequest", f"invalid resource version {rv_s!r}"))
            drop_gen = st.drop_generation
        self.close_connection = True  # the watch owns this connection
        self._headers(200, None, chunked=True)
        if pending is None:
            self._chunk(json.dumps({"type": "ERROR", "object": status_body(
                410, "Expired", f"too old resource version: {rv_s} ({st.compacted})")}).encode() + b"\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        deadline = time.monotonic() + timeout
        next_bookmark = time.monotonic() + st.faults["bookmark_interval"]
        self.server.track_watch(self, True)
        try:
            while True:
                for (erv, typ, obj) in pending:
                    self._chunk(json.dumps({"type": typ, "object": obj}, separators=(",", ":")).encode() + b"\n")
                    pos = max(pos, erv)
                with st.cond:
                    bad = st.faults["malformed"].get(resource, 0)
                    if bad:
                        st.faults["malformed"][resource] = bad - 1
                if bad:
                    self._chunk(b'{"type":"MODIFIED","object":{"kind":"Pod",,}}\n')
                with st.cond:
                    while True:
                        if self.server.stopping or st.drop_generation != drop_gen:
                            raise _Drop(st.faults["drop_partial"])
                        now = time.monotonic()
                        new = [e for e in st.history[resource] if e[0] > pos]
                        if new or now >= deadline or (bookmarks and now >= next_bookmark) or \
                                st.faults["malformed"].get(resource, 0):
                            break
                        st.cond.wait(min(deadline, next_bookmark if bookmarks else deadline) - now)
                    pending = new
                    cur = st.rv
                    interval = st.faults["bookmark_interval"]
                if time.monotonic() >= deadline and not pending:
                    break
                if bookmarks and time.monotonic() >= next_bookmark and not pending:
                    self._chunk(json.dumps({"type": "BOOKMARK", "object": bookmark_object(resource, cur)},
                                           separators=(",", ":")).encode() + b"\n")
                    pos = max(pos, cur)
                    next_bookmark = time.monotonic() + interval
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except _Drop as d:
            try:
                if d.partial:
                    self._chunk(b'{"type":"ADDED","object":{"kind":"Pod","apiVersion":"v1","metadata":{"na')
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        finally:
            self.server.track_watch(self, False)

    # ---- control API
    def _control(self, method: str, op: str, q: dict) -> None:
        st = self.store
        body = None
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            body = json.loads(self.rfile.read(n))
        if op == "apply":
            objs = body if isinstance(body, list) else body.get("items", []) if body.get("kind", "").endswith("List") \
                else [body]
            out = [st.apply(o) for o in objs]
            return self._json(200, {"applied": [o["metadata"]["resourceVersion"] for o in out], "rv": st.rv})
        if op == "delete":
            ok = st.delete(body["kind"], body.get("namespace", ""), body["name"])
            return self._json(200 if ok else 404, {"deleted": ok, "rv": st.rv})
        if op == "fault":
            st.set_faults(**body)
            return self._json(200, {"faults": st.faults})
        if op == "compact":
            return self._json(200, {"compacted": st.compact(), "rv": st.rv})
        if op == "drop":
            st.drop_watches()
            return self._json(200, {"dropped": True})
        if op == "bulk_pods":
            bulk_pods(st, body.get("namespace", "bulk"), int(body["count"]), body.get("prefix", "app"))
            return self._json(200, {"rv": st.rv})
        if op == "requests":
            if method == "POST":
                with st.cond:
                    st.requests.clear()
                return self._json(200, {"cleared": True})
            return self._json(200, {"requests": st.requests_for(q.get("resource"))})
        if op == "scan":
            # Ingest the followed manifest folder now (what `kubectl apply` returning means).
            follower = getattr(self.server, "follower", None)
            if follower is None:
                return self._json(404, {"error": "not following a manifest folder"})
            follower.scan()
            return self._json(200, {"rv": st.rv, "errors": follower.errors})
        if op == "objects":
            # Every stored object of one resource (e.g. the Events signetd created).
            r = q.get("resource", "")
            if r not in RESOURCES:
                return self._json(404, {"error": f"unknown resource {r!r}"})
            with st.cond:
                return self._json(200, {"items": copy.deepcopy(st.current(r)), "rv": st.rv})
        if op == "state":
            with st.cond:
                return self._json(200, {"rv": st.rv, "compacted": st.compacted,
                                        "counts": {r: len(st.objects[r]) for r in RESOURCES},
                                        "watches": len(self.server.watches)})
        return self._json(404, {"error": "unknown control operation " + op})


class _Drop(Exception):
    def __init__(self, partial: bool):
        super().__init__("drop")
        self.partial = partial


def bulk_pods(store: Store, namespace: str, count: int, prefix: str = "app") -> None:
    """Creates a namespace and `count` realistic running pods in it."""
    store.apply({"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": namespace}})
    for i in range(count):
        suffix = f"{i:05d}"
        name = f"{prefix}-7d9f8b6c4d-{suffix}"
        ip = f"10.{(i >> 16) & 255 | 64}.{(i >> 8) & 255}.{i & 255}"
        store.apply(synthetic_pod(namespace, name, ip, {"app": f"{prefix}-{i % 50}", "pod-template-hash": "7d9f8b6c4d",
                                                         "tier": "backend" if i % 3 else "frontend"},
                                  node=f"node-{i % 100}"))


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, store: Store, port: int = 0, tls: dict | None = None, host: str = "127.0.0.1"):
        self.store = store
        self.host = host
        self.port = port
        self.tls = tls
        self.stopping = False
        self.watches: set = set()
        self.conns: set = set()
        self._lock = threading.Lock()
        self._thread = None
        self._ctx = None
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(tls["cert"], tls["key"])
            if tls.get("client_ca"):
                ctx.load_verify_locations(tls["client_ca"])
                ctx.verify_mode = ssl.CERT_OPTIONAL
            ctx.set_alpn_protocols(["http/1.1"])
            self._ctx = ctx
        self._bound = False

    # ---- lifecycle
    def start(self) -> "ApiServer":
        self.stopping = False
        super().__init__((self.host, self.port), Handler)
        self.port = self.server_address[1]
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops listening and cuts every connection (a crash or restart of the real server)."""
        self.stopping = True
        with self.store.cond:
            self.store.cond.notify_all()
        self.shutdown()
        self.server_close()
        with self._lock:
            conns = list(self.conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread:
            self._thread.join(5)

    @property
    def url(self) -> str:
        return f"{'https' if self._ctx else 'http'}://{self.host}:{self.port}"

    # ---- connections
    def finish_request(self, request, client_address):
        if self._ctx:
            try:
                request.settimeout(10)
                request = self._ctx.wrap_socket(request, server_side=True)
                request.settimeout(None)
            except (ssl.SSLError, OSError):
                return  # e.g. the client refused our certificate
        with self._lock:
            self.conns.add(request)
        try:
            super().finish_request(request, client_address)
        finally:
            with self._lock:
                self.conns.discard(request)

    def shutdown_request(self, request):
        try:
            request.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        request.close()

    def handle_error(self, request, client_address):
        if os.environ.get("APISERVER_DEBUG"):
            super().handle_error(request, client_address)

    def track_watch(self, h, add: bool) -> None:
        with self._lock:
            (self.watches.add if add else self.watches.discard)(h)


# --------------------------------------------------------------------------
# test PKI with the openssl CLI

def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def make_pki(folder: Path) -> dict:
    """CA, server certificate (127.0.0.1, ::1, localhost), client certificate
    (CN=signet-node, O=system:nodes) signed by the CA, and an unrelated CA."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    f = str(folder)
    for ca in ("ca", "wrong-ca"):
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-days", "2", "-subj", f"/CN={ca}-test", cwd=f)
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\n"
                                       "extendedKeyUsage=serverAuth\n")
    (folder / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, subj, ext in (("server", "/CN=kube-apiserver", "server.ext"),
                            ("client", "/O=system:nodes/CN=signet-node", "client.ext")):
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subj, cwd=f)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "2", "-extfile", ext, cwd=f)
    return {k: str(folder / v) for k, v in {
        "ca": "ca.crt", "wrong_ca": "wrong-ca.crt", "cert": "server.crt", "key": "server.key",
        "client_cert": "client.crt", "client_key": "client.key"}.items()}


def kubeconfig(server: str, user: dict, cluster_extra: dict | None = None, context: str = "test") -> str:
    """A kubeconfig (as JSON, which is YAML) for `server` with the given user entry."""
    cluster = {"server": server, **(cluster_extra or {})}
    return json.dumps({"apiVersion": "v1", "kind": "Config", "current-context": context,
                       "clusters": [{"name": "test-cluster", "cluster": cluster}],
                       "users": [{"name": "test-user", "user": user}],
                       "contexts": [{"name": context, "context": {"cluster": "test-cluster", "user": "test-user"}}],
                       "preferences": {}}, indent=1)


# --------------------------------------------------------------------------
# following a folder of manifests

def parse_manifest_text(text: str, name: str) -> list[dict]:
    if name.endswith(".json"):
        docs = [json.loads(text)]
    else:
        try:
            import yaml  # PyYAML (Debian: python3-yaml); optional
        except ImportError:
            raise RuntimeError(f"{name}: YAML needs PyYAML (python3-yaml); JSON manifests work without it")
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    out = []
    for d in docs:
        if not isinstance(d, dict):
            continue
        if str(d.get("kind", "")).endswith("List") and isinstance(d.get("items"), list):
            out.extend(d["items"])
        else:
            out.append(d)
    return [o for o in out if isinstance(o, dict) and o.get("kind") in KIND_TO_RESOURCE]


class ManifestFollower:
    """Mirrors a folder of manifests into the store (poll, 100 ms)."""

    def __init__(self, store: Store, folder: Path, interval: float = 0.1):
        self.store, self.folder, self.interval = store, Path(folder), interval
        self.seen: dict[str, float] = {}
        self.owned: dict[tuple, dict] = {}  # (kind, ns, name) -> object as last applied
        self.errors: dict[str, str] = {}
        self._stop = threading.Event()
        self._scan_lock = threading.Lock()  # the poll thread and /_control/scan
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.scan()
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()

    def _run(self):
        while not self._stop.wait(self.interval):
            try:
                self.scan()
            except Exception as e:  # keep following
                sys.stderr.write(f"apiserver: manifests: {e}\n")

    def scan(self) -> None:
        with self._scan_lock:
            self._scan()

    def _scan(self) -> None:
        files = {}
        for p in sorted(self.folder.iterdir()) if self.folder.is_dir() else []:
            if p.name.startswith(".") or p.name.endswith("~") or p.suffix not in (".yaml", ".yml", ".json"):
                continue
            st = p.stat()
            files[p.name] = (st.st_mtime_ns, st.st_size)
        if files == self.seen:
            return
        self.seen = files
        want: dict[tuple, dict] = {}
        for name in files:
            try:
                for o in parse_manifest_text((self.folder / name).read_text(), name):
                    o = dict(o, _file=name)
                    md = o.get("metadata") or {}
                    ns = (md.get("namespace") or "default") if RESOURCES[KIND_TO_RESOURCE[o["kind"]]][3] else ""
                    want[(o["kind"], ns, md.get("name"))] = o
                self.errors.pop(name, None)
            except Exception as e:
                self.errors[name] = str(e)
                # keep what this file had: reuse the previously owned objects
                for k, o in self.owned.items():
                    if o.get("_file") == name:
                        want[k] = o
        for k, o in want.items():
            if self.owned.get(k) != o:
                self.store.apply({kk: vv for kk, vv in o.items() if kk != "_file"})
        for k in list(self.owned):
            if k not in want:
                self.store.delete(k[0], k[1], k[2])
        self.owned = want


# --------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--fixtures", help="folder of recorded List responses (namespaces.json, pods.json, ...)")
    ap.add_argument("--manifests", help="folder of manifests to follow")
    ap.add_argument("--tls-dir", help="make a test PKI here and serve HTTPS (client certificates accepted)")
    ap.add_argument("--token", action="append", help="accepted bearer token (repeatable); default: no auth")
    ap.add_argument("--user", action="append", default=[],
                    help="TOKEN=USERNAME[@GROUP,...]: an accepted token and its user (repeatable)")
    ap.add_argument("--bookmark-interval", type=float, default=1.0)
    ap.add_argument("--write-kubeconfig", help="write a kubeconfig for this server here")
    a = ap.parse_args()
    store = Store()
    store.faults["bookmark_interval"] = a.bookmark_interval
    if a.token:
        store.faults["tokens"] = {t: DEFAULT_USER for t in a.token}
    for spec in a.user:
        tok, _, who = spec.partition("=")
        uname, _, groups = who.partition("@")
        store.faults["tokens"] = store.faults["tokens"] or {}
        store.faults["tokens"][tok] = {"username": uname, "groups": [g for g in groups.split(",") if g]} \
            if groups else uname
    if a.fixtures:
        store.load_fixtures(Path(a.fixtures))
    tls = None
    if a.tls_dir:
        pki = make_pki(Path(a.tls_dir))
        tls = {"cert": pki["cert"], "key": pki["key"], "client_ca": pki["ca"]}
    srv = ApiServer(store, a.port, tls, a.host).start()
    follower = ManifestFollower(store, Path(a.manifests)).start() if a.manifests else None
    srv.follower = follower
    if a.write_kubeconfig:
        user = {"token": a.token[0]} if a.token else {}
        extra = {"certificate-authority": pki["ca"]} if tls else {}
        Path(a.write_kubeconfig).write_text(kubeconfig(srv.url, user, extra))
    print(json.dumps({"url": srv.url, "control": srv.url.replace("https", "http") if not tls else srv.url}),
          flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        if follower:
            follower.stop()
        srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
