#!/usr/bin/python3
"""NetworkPolicy conformance: the model, the truth tables, a reference
evaluator, the manifest writer and the real cluster (netns pods + signetd).

Modelled on the upstream Kubernetes e2e tests (test/e2e/network/netpol/ in
kubernetes/kubernetes): namespaces x, y, z labelled ``ns=<name>``; pods a, b,
c labelled ``pod=<name>``, each serving TCP and UDP on ports 80 and 81 with
container ports named ``serve-80-tcp``, ``serve-80-udp``, ``serve-81-tcp``,
``serve-81-udp``; a case states the policies and the expected 9x9 truth
table (Reachability: ExpectPeer / ExpectAllIngress / ExpectAllEgress) per
port and protocol, and the prober fills the observed table.

Loopback (a pod probing its own IP) follows upstream's ``ignoreLoopback =
true``: it is probed and printed but never decides pass/fail (upstream
issue 95879: the semantics are undefined; in signet a pod reaching its own IP
goes over ``lo`` inside its netns, which the datapath always accepts).

Python 3 standard library only; reuses test/integration/harness.py.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "integration"))
sys.path.insert(0, str(HERE.parent / "kubeproxy"))
import harness  # noqa: E402  (the integration-test library: netns, CNI chain, signetd, cleanup)
import kubeproxy  # noqa: E402  (kube-proxy's rule shapes, for --via-service)
import twonode  # noqa: E402  (the two-node topology, for --nodes 2)

NAMESPACES = ("x", "y", "z")
POD_NAMES = ("a", "b", "c")
PORTS = (80, 81)
PROTOCOLS = ("TCP", "UDP")
ALL_PODS = tuple(f"{n}/{p}" for n in NAMESPACES for p in POD_NAMES)
NS_NAME_LABEL = "kubernetes.io/metadata.name"
NODE = "node"  # the host (root netns): the pods' own node


def default_ns_labels(ns: str) -> dict:
    return {"ns": ns}


def default_pod_labels(pod: str) -> dict:
    return {"pod": pod.split("/")[1]}


# --via-service: every pod behind its own ClusterIP Service, as upstream's e2e model has it
SERVICE_CIDR = "10.96.0.0/16"
NODE_IP = "192.168.254.1"   # the node's own address in its netns (on the link with the default route)
NODE_NAME = "conformance-node"

# --nodes 2: the model's pods over twonode.py's two nodes, every namespace on both and every
# pod name on both: x/a x/c y/b z/a z/c on node-a, x/b y/a y/c z/b on node-b
NODE_UPLINK_IPS = {twonode.NODE_A: "192.168.254.1", twonode.NODE_B: "192.168.254.2"}
TWO_NODE_CLUSTER_CIDR = "10.244.0.0/16"  # both nodes' pod subnets (harness.Run.alloc_subnet: 10.244.X.0/24)


def two_node_placement() -> dict:
    """podstr -> node name: pod i of namespace j on node-a when i + j is even."""
    return {f"{ns}/{p}": (twonode.NODE_A if (i + j) % 2 == 0 else twonode.NODE_B)
            for j, ns in enumerate(NAMESPACES) for i, p in enumerate(POD_NAMES)}


def service_name(podstr: str) -> str:
    ns, name = podstr.split("/")
    return f"s-{ns}-{name}"


def service_port_name(port_: int, proto: str) -> str:
    """Upstream's KubeServicePort: service-port-<protocol>-<port>."""
    return f"service-port-{proto.lower()}-{port_}"


def cluster_ips() -> dict:
    """A fixed ClusterIP per model pod's Service, from SERVICE_CIDR (the node netns is private to the run)."""
    net = ipaddress.ip_network(SERVICE_CIDR)
    return {p: str(net.network_address + 10 + i) for i, p in enumerate(ALL_PODS)}


def service_obj(podstr: str, cluster_ip: str) -> dict:
    ns, name = podstr.split("/")
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": service_name(podstr), "namespace": ns},
            "spec": {"type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                     "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                     "selector": default_pod_labels(podstr),
                     "ports": [{"name": service_port_name(p, pr), "protocol": pr, "port": p, "targetPort": p}
                               for p in PORTS for pr in PROTOCOLS]}}


def endpoint_slice_obj(podstr: str, backends: list, node_of: dict | None = None) -> dict:
    """What the EndpointSlice controller writes for the Service: backends = [(podstr, ip)]
    (node_of: podstr -> the node it runs on; default NODE_NAME)."""
    ns, _ = podstr.split("/")
    svc = service_name(podstr)
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{svc}-ep", "namespace": ns,
                         "labels": {"kubernetes.io/service-name": svc,
                                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True, "serving": True, "terminating": False},
                           "nodeName": (node_of or {}).get(b, NODE_NAME),
                           "targetRef": {"kind": "Pod", "namespace": b.split("/")[0], "name": b.split("/")[1]}}
                          for b, ip in backends],
            "ports": [{"name": service_port_name(p, pr), "protocol": pr, "port": p}
                      for p in PORTS for pr in PROTOCOLS]}


def service_backends(st: "State", podstr: str) -> list:
    """The Service's endpoints as the EndpointSlice controller computes them: the pods of
    its namespace whose labels match its selector (pod=<name>), with their IPv4 address."""
    ns = podstr.split("/")[0]
    sel_ = default_pod_labels(podstr)
    return [(p, ip_of(st, p, 4)) for p in ALL_PODS
            if p.split("/")[0] == ns and p in st.pod_ips
            and all(st.pod_labels[p].get(k) == v for k, v in sel_.items())]


def add_uplink(netns: str, ip: str) -> None:
    """A node's own address on a link holding its default route (a real node's uplink): the
    node's connections to a ClusterIP need a route before kube-proxy's DNAT. A veth pair with
    both ends in the node netns (the dummy driver is not everywhere)."""
    harness.sh("ip", "-n", netns, "link", "add", "nodeif0", "type", "veth", "peer", "name", "nodeif1")
    harness.sh("ip", "-n", netns, "addr", "add", f"{ip}/24", "dev", "nodeif0")
    harness.sh("ip", "-n", netns, "link", "set", "nodeif1", "up")
    harness.sh("ip", "-n", netns, "link", "set", "nodeif0", "up")
    harness.sh("ip", "-n", netns, "route", "add", "default", "dev", "nodeif0")


def signetd_has_node_netns(bins) -> bool:
    p = harness.sh(bins["signetd"], "--help", check=False)
    return "--node-netns" in (p.stdout + p.stderr)


def container_ports() -> list[dict]:
    """Upstream's model: one container per port and protocol."""
    return [{"name": f"serve-{p}-{proto.lower()}", "containerPort": p, "protocol": proto}
            for p in PORTS for proto in PROTOCOLS]


# =========================================================================== truth tables

@dataclass(frozen=True)
class Peer:
    """Matches pods by namespace and/or pod name; empty matches all (upstream's Peer)."""
    ns: str = ""
    pod: str = ""

    def matches(self, podstr: str) -> bool:
        n, p = podstr.split("/")
        return (not self.ns or self.ns == n) and (not self.pod or self.pod == p)


class TruthTable:
    def __init__(self, froms, tos, default: bool | None):
        self.froms = list(froms)
        self.tos = list(tos)
        self.values: dict[str, dict[str, bool]] = {
            f: ({t: default for t in self.tos} if default is not None else {}) for f in self.froms}

    def set(self, frm: str, to: str, v: bool) -> None:
        if frm not in self.values or to not in self.tos:
            raise KeyError(f"{frm} -> {to} is not in the model")
        self.values[frm][to] = bool(v)

    def get(self, frm: str, to: str):
        return self.values[frm].get(to)

    def complete(self) -> bool:
        return all(t in self.values[f] for f in self.froms for t in self.tos)


class Reachability:
    """Expected connectivity over the model's pods (upstream's Reachability)."""

    def __init__(self, default: bool = True, pods=ALL_PODS):
        self.pods = list(pods)
        self.expected = TruthTable(self.pods, self.pods, default)

    def expect(self, frm: str, to: str, v: bool) -> "Reachability":
        self.expected.set(frm, to, v)
        return self

    def expect_all_ingress(self, pod: str, v: bool) -> "Reachability":
        for f in self.pods:
            self.expected.set(f, pod, v)
        return self

    def expect_all_egress(self, pod: str, v: bool) -> "Reachability":
        for t in self.pods:
            self.expected.set(pod, t, v)
        return self

    def expect_peer(self, frm: Peer, to: Peer, v: bool) -> "Reachability":
        for f in self.pods:
            if frm.matches(f):
                for t in self.pods:
                    if to.matches(t):
                        self.expected.set(f, t, v)
        return self

    def allow_loopback(self) -> "Reachability":
        for p in self.pods:
            self.expected.set(p, p, True)
        return self

    def copy(self) -> "Reachability":
        r = Reachability(True, self.pods)
        for f in self.pods:
            for t in self.pods:
                r.expected.set(f, t, self.expected.get(f, t))
        return r


def R(default: bool = True) -> Reachability:
    return Reachability(default)


@dataclass
class Observation:
    ok: bool
    detail: str = ""  # "timeout", "refused", a wrong reply, ...
    ms: float = 0.0


@dataclass
class Comparison:
    port: int
    proto: str
    expected: TruthTable
    observed: dict  # (from, to) -> Observation
    ignore_loopback: bool = True

    def wrong(self) -> list[tuple[str, str]]:
        out = []
        for f in self.expected.froms:
            for t in self.expected.tos:
                if self.ignore_loopback and f == t:
                    continue
                if self.expected.get(f, t) != self.observed[(f, t)].ok:
                    out.append((f, t))
        return out

    def counts(self) -> tuple[int, int, int]:
        w = len(self.wrong())
        n = len(self.expected.froms) * len(self.expected.tos)
        ign = sum(1 for f in self.expected.froms if f in self.expected.tos) if self.ignore_loopback else 0
        return n - ign - w, w, ign

    def render(self) -> str:
        """Expected and observed grids side by side (upstream's '.' allowed,
        'X' blocked); in the observed grid a wrong cell is marked '!' after
        its observed value, a loopback cell (ignored) is shown in parentheses."""
        wrong = set(self.wrong())
        tos = self.expected.tos
        w = max(4, max(len(t) for t in tos) + 1)
        fw = max(len(f) for f in self.expected.froms) + 1

        def grid(cell):
            rows = ["-".ljust(fw) + "".join(t.ljust(w) for t in tos)]
            for f in self.expected.froms:
                rows.append(f.ljust(fw) + "".join(cell(f, t).ljust(w) for t in tos))
            return rows

        def exp_cell(f, t):
            v = self.expected.get(f, t)
            return "?" if v is None else ("." if v else "X")

        def obs_cell(f, t):
            o = self.observed.get((f, t))
            m = "?" if o is None else ("." if o.ok else "X")
            if (f, t) in wrong:
                return m + "!"
            if self.ignore_loopback and f == t:
                return f"({m})"
            return m

        left, right = grid(exp_cell), grid(obs_cell)
        lw = max(len(x) for x in left) + 4
        right_title = "observed ('!' = wrong, '(.)' = loopback, ignored)"
        out = ["expected".ljust(lw) + right_title]
        out += [a.ljust(lw) + b for a, b in zip(left, right)]
        right_n, wrong_n, ign = self.counts()
        out.append(f"correct: {right_n}, wrong: {wrong_n}, loopback ignored: {ign}")
        for f, t in sorted(wrong):
            o = self.observed[(f, t)]
            e = "allowed" if self.expected.get(f, t) else "blocked"
            got = "ALLOWED" if o.ok else f"BLOCKED ({o.detail})"
            out.append(f"  WRONG {f} -> {t} {self.proto}/{self.port}: expected {e}, observed {got}")
        return "\n".join(out)


# =========================================================================== policy builders

def sel(labels: dict | None = None, exprs: list | None = None) -> dict:
    """A label selector; sel() is the empty selector (selects everything)."""
    s = {}
    if labels:
        s["matchLabels"] = dict(labels)
    if exprs:
        s["matchExpressions"] = list(exprs)
    return s


def expr(key: str, op: str, values=None) -> dict:
    e = {"key": key, "operator": op}
    if values is not None:
        e["values"] = list(values)
    return e


def peer(pods: dict | None = None, nss: dict | None = None, cidr: str | None = None,
         except_: list | None = None) -> dict:
    """A NetworkPolicyPeer: podSelector and/or namespaceSelector, or ipBlock."""
    p = {}
    if pods is not None:
        p["podSelector"] = pods
    if nss is not None:
        p["namespaceSelector"] = nss
    if cidr is not None:
        p["ipBlock"] = {"cidr": cidr}
        if except_:
            p["ipBlock"]["except"] = list(except_)
    return p


def port(p=None, proto: str | None = None, end: int | None = None) -> dict:
    d = {}
    if proto is not None:
        d["protocol"] = proto
    if p is not None:
        d["port"] = p
    if end is not None:
        d["endPort"] = end
    return d


def ingress_rule(frm: list | None = None, ports: list | None = None) -> dict:
    r = {}
    if frm is not None:
        r["from"] = frm
    if ports is not None:
        r["ports"] = ports
    return r


def egress_rule(to: list | None = None, ports: list | None = None) -> dict:
    r = {}
    if to is not None:
        r["to"] = to
    if ports is not None:
        r["ports"] = ports
    return r


def netpol(name: str, ns: str, pod_selector: dict | None = None, ingress: list | None = None,
           egress: list | None = None, types: list | None = None) -> dict:
    """A networking.k8s.io/v1 NetworkPolicy. ingress=[] / egress=[] is a deny
    for that direction; policyTypes follows the directions given unless
    `types` says otherwise (as upstream's SetSpecIngressRules/SetSpecEgressRules)."""
    spec: dict = {"podSelector": pod_selector if pod_selector is not None else {}}
    if types is None:
        types = (["Ingress"] if ingress is not None else []) + (["Egress"] if egress is not None else [])
    if types:
        spec["policyTypes"] = list(types)
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def namespace_obj(ns: str, labels: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": dict(labels)}}


def pod_obj(podstr: str, labels: dict, node: str | None = None, ips: list | None = None) -> dict:
    """The Pod object (node: spec.nodeName; ips: status.podIPs, as the kubelet reports them:
    with two nodes each signetd learns the other node's pods from them)."""
    ns, name = podstr.split("/")
    containers = [{
        "name": f"cont-{cp['containerPort']}-{cp['protocol'].lower()}",
        "image": "registry.k8s.io/e2e-test-images/agnhost:2.53",
        "ports": [dict(cp)],
    } for cp in container_ports()]
    obj = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": ns, "labels": dict(labels)},
           "spec": {"terminationGracePeriodSeconds": 0, "containers": containers}}
    if node:
        obj["spec"] = {"nodeName": node, **obj["spec"]}
    if ips:
        obj["status"] = {"phase": "Running", "podIP": ips[0], "podIPs": [{"ip": i} for i in ips]}
    return obj


# =========================================================================== YAML (as kubectl apply -f takes it)

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]*$")
_YAML11_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"}


def _key(k: str) -> str:
    return k if _PLAIN_KEY.match(k) and k.lower() not in _YAML11_WORDS else json.dumps(k)


def _inline(v) -> str:
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "null"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)  # a double-quoted YAML scalar
    if isinstance(v, dict) and not v:
        return "{}"
    if isinstance(v, list) and not v:
        return "[]"
    raise TypeError(f"cannot inline {v!r}")


def _emit(obj, ind: int) -> list[str]:
    pad = " " * ind
    lines: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{_key(k)}:")
                lines += _emit(v, ind + 2 if isinstance(v, dict) else ind)
            else:
                lines.append(f"{pad}{_key(k)}: {_inline(v)}")
    elif isinstance(obj, list):
        for item in obj:
            if isinstance(item, (dict, list)) and item:
                sub = _emit(item, ind + 2)
                sub[0] = pad + "- " + sub[0][ind + 2:]
                lines += sub
            else:
                lines.append(f"{pad}- {_inline(item)}")
    else:
        lines.append(pad + _inline(obj))
    return lines


def to_yaml(*docs: dict) -> str:
    return "---\n".join("\n".join(_emit(d, 0)) + "\n" for d in docs)


# =========================================================================== reference evaluator

@dataclass
class State:
    """What the source holds: namespace labels, pod labels, pod IPs, policies."""
    ns_labels: dict = field(default_factory=lambda: {n: default_ns_labels(n) for n in NAMESPACES})
    pod_labels: dict = field(default_factory=lambda: {p: default_pod_labels(p) for p in ALL_PODS})
    pod_ips: dict = field(default_factory=dict)  # podstr -> [ip, ...]
    policies: dict = field(default_factory=dict)  # (ns, name) -> NetworkPolicy dict

    def full_ns_labels(self, ns: str) -> dict:
        return {**self.ns_labels.get(ns, {}), NS_NAME_LABEL: ns}


def selector_matches(s: dict, labels: dict) -> bool:
    for k, v in (s.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in s.get("matchExpressions") or []:
        k, op, vals = e["key"], e["operator"], e.get("values") or []
        if op == "In" and not (k in labels and labels[k] in vals):
            return False
        if op == "NotIn" and (k in labels and labels[k] in vals):
            return False
        if op == "Exists" and k not in labels:
            return False
        if op == "DoesNotExist" and k in labels:
            return False
    return True


def _ip_in_block(ip: str, block: dict) -> bool:
    a = ipaddress.ip_address(ip)
    net = ipaddress.ip_network(block["cidr"], strict=False)
    if a.version != net.version or a not in net:
        return False
    for ex in block.get("except") or []:
        en = ipaddress.ip_network(ex, strict=False)
        if en.version == a.version and a in en:
            return False
    return True


def _peer_matches(st: State, pol_ns: str, p: dict, who: str | None, who_ip: str) -> bool:
    """who: the peer pod (podstr) or None for a non-pod address (the node)."""
    if "ipBlock" in p:
        return _ip_in_block(who_ip, p["ipBlock"])
    if who is None:
        return False
    ns = who.split("/")[0]
    if "namespaceSelector" in p:
        if not selector_matches(p["namespaceSelector"], st.full_ns_labels(ns)):
            return False
    elif ns != pol_ns:
        return False
    if "podSelector" in p and not selector_matches(p["podSelector"], st.pod_labels[who]):
        return False
    return True


def _ports_match(ports, dst_pod: str | None, port_: int, proto: str) -> bool:
    """dst_pod None: the destination is a plain address, where a named port names nothing."""
    if not ports:
        return True
    for pp in ports:
        if pp.get("protocol", "TCP") != proto:
            continue
        if "port" not in pp:
            return True
        v = pp["port"]
        if isinstance(v, int):
            if v <= port_ <= pp.get("endPort", v):
                return True
        elif dst_pod is not None:  # named: resolved on the destination pod's container ports
            for cp in container_ports():
                if cp["name"] == v and cp["protocol"] == proto and cp["containerPort"] == port_:
                    return True
    return False


def _types(pol: dict) -> list:
    spec = pol["spec"]
    if spec.get("policyTypes"):
        return spec["policyTypes"]
    return ["Ingress"] + (["Egress"] if spec.get("egress") else [])


def _direction_allows(st: State, target: str, direction: str, other: str | None, other_ip: str,
                      dst_pod: str, port_: int, proto: str) -> bool:
    ns = target.split("/")[0]
    selecting = [p for (pns, _), p in st.policies.items()
                 if pns == ns and direction in _types(p)
                 and selector_matches(p["spec"].get("podSelector") or {}, st.pod_labels[target])]
    if not selecting:
        return True
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for p in selecting:
        for rule in p["spec"].get(key) or []:
            if not _ports_match(rule.get("ports"), dst_pod, port_, proto):
                continue
            peers = rule.get(peers_key)
            if not peers or any(_peer_matches(st, ns, pe, other, other_ip) for pe in peers):
                return True
    return False


def ip_of(st: State, pod: str, family: int = 4) -> str:
    return next(i for i in st.pod_ips[pod] if ipaddress.ip_address(i).version == family)


def evaluate(st: State, src: str, dst: str, port_: int, proto: str, family: int = 4) -> bool:
    """Whether src (a podstr, or NODE) reaches pod dst on port/proto over IPv4
    or IPv6 under the policies in st, by the NetworkPolicy API's rules
    (networking.k8s.io/v1)."""
    if proto not in ("TCP", "UDP"):
        raise ValueError(proto)
    if src == NODE:
        return True  # traffic from the pod's own node is always allowed
    dst_ip, src_ip = ip_of(st, dst, family), ip_of(st, src, family)
    if not _direction_allows(st, src, "Egress", dst, dst_ip, dst, port_, proto):
        return False
    return _direction_allows(st, dst, "Ingress", src, src_ip, dst, port_, proto)


def evaluate_table(st: State, port_: int, proto: str, family: int = 4) -> Reachability:
    r = Reachability(True)
    for f in ALL_PODS:
        for t in ALL_PODS:
            r.expect(f, t, evaluate(st, f, t, port_, proto, family))
    return r


# The Namespace label that sets the identity handshake's mode of a namespace's pods
# (docs/handshake.md, "Modes").
HANDSHAKE_MODE_LABEL = "signet.dev/handshake"


def tokenless_side(modes: dict, default: str, src: str, dst: str, proto: str) -> str | None:
    """With per-namespace handshake modes: which side of a TCP connection between pods
    judges its peer as a plain address (no pod identity), or None. A namespace whose
    handshake is off sends and checks no token; a side in enforce mode then sees a
    tokenless segment from a pod's address, which proves nothing: "dst" (its ingress
    judges the client's address) or "src" (its egress judges the server's address).
    Permissive judges a tokenless peer as the pod at its address: as without the
    handshake. Same-pod connections (loopback) take no handshake."""
    if proto != "TCP" or src == dst or NODE in (src, dst):
        return None
    ms, md = modes.get(src.split("/")[0], default), modes.get(dst.split("/")[0], default)
    if ms == "off" and md == "enforce":
        return "dst"
    if md == "off" and ms == "enforce":
        return "src"
    return None


def evaluate_with_modes(st: State, src: str, dst: str, port_: int, proto: str, family: int,
                        modes: dict, default: str) -> bool:
    """evaluate(), where the side tokenless_side() names judges its peer by address only."""
    side = tokenless_side(modes, default, src, dst, proto)
    if side is None:
        return evaluate(st, src, dst, port_, proto, family)
    dst_ip, src_ip = ip_of(st, dst, family), ip_of(st, src, family)
    egress_peer = None if side == "src" else dst
    ingress_peer = None if side == "dst" else src
    # An egress judged on a plain address resolves no named port (no pod to name it).
    if not _direction_allows(st, src, "Egress", egress_peer, dst_ip, egress_peer, port_, proto):
        return False
    return _direction_allows(st, dst, "Ingress", ingress_peer, src_ip, dst, port_, proto)


def uses_ipblock(st: State) -> bool:
    return '"ipBlock"' in json.dumps(list(st.policies.values()))


def fake_ips(subnet: str = "10.244.77.0/24", subnet6: str = "fd00:10:244:77::/64") -> dict:
    net, net6 = ipaddress.ip_network(subnet), ipaddress.ip_network(subnet6)
    return {p: [str(net.network_address + 2 + i), str(net6.network_address + 2 + i)]
            for i, p in enumerate(ALL_PODS)}


# =========================================================================== the case API

@dataclass
class Check:
    port: int
    proto: str
    reach: Reachability
    node_allowed: bool | None = None  # also probe node -> every pod; None: don't


@dataclass
class Step:
    """Mutations, then (after `signetctl sync`) the checks."""
    what: str = ""
    apply: list = field(default_factory=list)     # NetworkPolicy dicts to create/update
    delete: list = field(default_factory=list)    # (ns, name) of policies to delete
    pod_labels: dict = field(default_factory=dict)  # podstr -> full label set
    ns_labels: dict = field(default_factory=dict)   # ns -> full label set (the name label is automatic)
    checks: list = field(default_factory=list)


@dataclass
class Case:
    name: str
    build: object  # fn(model) -> list[Step]
    upstream: str = ""  # the upstream e2e test it replays ("" = signet's own)
    doc: str = ""


class ModelView:
    """What a case may ask of the running model: pod IPs (from CNI results)."""

    def __init__(self, ips: dict):
        self.ips = ips

    def ip(self, pod: str) -> str:
        return self.ips[pod][0]

    def cidr(self, pod: str) -> str:
        a = ipaddress.ip_address(self.ip(pod))
        return f"{a}/{32 if a.version == 4 else 128}"

    def large_cidr(self, pod: str) -> str:
        """The /4 holding the pod's IP (upstream's makeLargeCIDRForIP)."""
        a = ipaddress.ip_address(self.ip(pod))
        return str(ipaddress.ip_network(f"{a}/4", strict=False))


def apply_step(st: State, step: Step) -> None:
    for ns, name in step.delete:
        st.policies.pop((ns, name), None)
    for pol in step.apply:
        st.policies[(pol["metadata"]["namespace"], pol["metadata"]["name"])] = pol
    st.pod_labels.update({k: dict(v) for k, v in step.pod_labels.items()})
    st.ns_labels.update({k: dict(v) for k, v in step.ns_labels.items()})


def selfcheck(cases: list[Case], log=print) -> list[str]:
    """Replays every case on the reference evaluator: each hand-written table
    (upstream's expectations) must agree with the NetworkPolicy rules, so a
    typo in a table is found without any datapath. Also checks that the YAML
    writer round-trips (when PyYAML happens to be installed)."""
    problems = []
    ips = fake_ips()
    for c in cases:
        st = State(pod_ips=ips)
        try:
            steps = c.build(ModelView(ips))
        except Exception as e:  # noqa: BLE001
            problems.append(f"{c.name}: building the case failed: {e!r}")
            continue
        for i, step in enumerate(steps):
            apply_step(st, step)
            for chk in step.checks:
                for fam in ((4,) if uses_ipblock(st) else (4, 6)):
                    model = evaluate_table(st, chk.port, chk.proto, fam)
                    for f in ALL_PODS:
                        for t in ALL_PODS:
                            if f == t:
                                continue
                            if model.expected.get(f, t) != chk.reach.expected.get(f, t):
                                problems.append(
                                    f"{c.name} step {i + 1} {chk.proto}/{chk.port} IPv{fam}: table says "
                                    f"{f}->{t} {chk.reach.expected.get(f, t)}, the rules say "
                                    f"{model.expected.get(f, t)}")
            for pol in step.apply:
                problems += _yaml_roundtrip(pol, c.name)
    return problems


def _yaml_roundtrip(obj: dict, what: str) -> list[str]:
    try:
        import yaml  # optional; only for this check
    except ImportError:
        return []
    back = yaml.safe_load(to_yaml(obj))
    return [] if back == obj else [f"{what}: YAML writer does not round-trip {obj!r}: {back!r}"]


# =========================================================================== the real cluster

class Agent:
    """A long-running podagent.py probe process; probes are JSON lines."""

    def __init__(self, run: harness.Run, name: str, netns: str | None):
        argv = ([] if netns is None else ["ip", "netns", "exec", netns]) + [
            sys.executable, "-u", str(HERE / "podagent.py"), "probe", "--name", name]
        self.name = name
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1,
                                     start_new_session=True)
        run.own_process(self.proc, f"probe agent {name}")
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._results: dict[int, dict] = {}
        self._ready = False
        self._dead = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            line = line.strip()
            with self._cv:
                if line == "ready":
                    self._ready = True
                else:
                    try:
                        r = json.loads(line)
                        self._results[r["id"]] = r
                    except (json.JSONDecodeError, KeyError, TypeError):
                        pass
                self._cv.notify_all()
        with self._cv:
            self._dead = True
            self._cv.notify_all()

    def wait_ready(self, timeout=10.0) -> None:
        with self._cv:
            if not self._cv.wait_for(lambda: self._ready or self._dead, timeout) or not self._ready:
                err = self.proc.stderr.read() if self._dead else ""
                raise harness.Fatal(f"probe agent {self.name} did not start: {err}")

    def send(self, reqs: list[dict]) -> None:
        if self._dead:
            raise harness.Fatal(f"probe agent {self.name} died")
        self.proc.stdin.write("".join(json.dumps(r) + "\n" for r in reqs))
        self.proc.stdin.flush()

    def collect(self, ids: list[int], deadline: float) -> dict[int, dict]:
        with self._cv:
            self._cv.wait_for(lambda: self._dead or all(i in self._results for i in ids),
                              max(0.0, deadline - time.monotonic()))
            return {i: self._results.pop(i) for i in ids if i in self._results}


class Cluster:
    """signetd + x, y, z / a, b, c as real netns pods behind bridge + host-local + signet."""

    def __init__(self, test: harness.Test, run: harness.Run, *, probe_timeout: float = 1.0,
                 ipv6: bool = False, log=harness.log, source: str = "dir", handshake: str = "off",
                 via_service: str | None = None, node_netns_flag: bool = True, with_signet: bool = True,
                 nodes: int = 1, warm_up: bool = True, ns_modes: dict | None = None,
                 signetd_args: list | None = None):
        self.source = source
        self.signetd_args = list(signetd_args or [])  # more signetd flags (one node: e.g. --policy-mode audit)
        self.warm_up = warm_up  # --nodes 2 with the handshake: first contact between the nodes, one at a time
        # nodes=2: the pods over twonode.py's two node netns (joined by a wire, one signetd each,
        # one manifest folder); pod -> node in self.placement
        self.nodes = nodes
        self.tn: twonode.TwoNodes | None = None
        self.placement: dict = two_node_placement() if nodes == 2 else {}
        self.daemons: list = []  # every signetd (one per node)
        self.node_netnses: dict = {}  # node name -> its netns (--via-service or --nodes 2)
        self.kps: dict = {}  # node name -> kubeproxy.KubeProxy
        # --via-service MODE: pods in a node netns behind kube-proxy's rules (MODE: iptables or
        # nftables); every probe goes to the destination pod's ClusterIP.
        self.via_service = via_service
        self.node_netns_flag = node_netns_flag  # pass signetd --node-netns (False: measuring a signetd without it)
        # False: the pods' CNI chain leaves out the signet plugin, so signetd enforces nothing on them
        # (--via-service --emulate-datapath: the stand-in datapath alone judges, to test the suite)
        self.with_signet = with_signet
        self.node_netns: str | None = None
        self.kp: kubeproxy.KubeProxy | None = None
        self.cluster_ips = cluster_ips() if via_service else {}
        self._backends: dict = {}
        self.handshake = handshake  # signetd --handshake (with an authority of the run's own)
        # ns -> handshake mode of its pods (the Namespace label signet.dev/handshake; others: the
        # node's default, --handshake)
        self.ns_modes: dict = dict(ns_modes or {})
        self.apiserver_url: str | None = None
        self.test = test
        self.run = run
        self.log = log
        self.probe_timeout = probe_timeout
        self.families = (4, 6) if ipv6 else (4,)
        self.bins = harness.require_signet_binaries(test)
        self.state = State()
        self.pods: dict[str, dict] = {}  # podstr -> {netns, path, cid, uid, args, result}
        self.agents: dict[str, Agent] = {}
        self._ids = 0
        self._id_lock = threading.Lock()
        self.d: harness.Signetd | None = None
        self.net: harness.Network | None = None
        self.chain: harness.Chain | None = None
        self.chains: dict = {}  # --nodes 2: node name -> its pods' CNI chain
        self._deleted = False

    # -------------------------------------------------------------- manifests
    @property
    def mdir(self) -> Path:
        return self.d.manifest_dir

    def _write(self, fname: str, text: str) -> None:
        tmp = self.mdir / f".{fname}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.write_text(text)
        os.rename(tmp, self.mdir / fname)

    @staticmethod
    def policy_file(ns: str, name: str) -> str:
        return f"np-{ns}-{name}.yaml"

    def write_ns(self, ns: str, labels: dict) -> None:
        self.state.ns_labels[ns] = dict(labels)
        # --namespace-modes: the handshake mode label rides along on every write (no case
        # selects on it; the reference evaluator never sees it).
        written = dict(labels)
        if ns in self.ns_modes:
            written[HANDSHAKE_MODE_LABEL] = self.ns_modes[ns]
        self._write(f"ns-{ns}.yaml", to_yaml(namespace_obj(ns, written)))

    def write_pod(self, podstr: str, labels: dict) -> None:
        self.state.pod_labels[podstr] = dict(labels)
        ns, name = podstr.split("/")
        if self.nodes == 2:
            obj = pod_obj(podstr, labels, self.placement[podstr], self.state.pod_ips.get(podstr))
        else:
            obj = pod_obj(podstr, labels)
        self._write(f"pod-{ns}-{name}.yaml", to_yaml(obj))

    def write_policy(self, pol: dict) -> None:
        ns, name = pol["metadata"]["namespace"], pol["metadata"]["name"]
        self.state.policies[(ns, name)] = pol
        self._write(self.policy_file(ns, name), to_yaml(pol))

    def delete_policy(self, ns: str, name: str) -> None:
        self.state.policies.pop((ns, name), None)
        try:
            os.unlink(self.mdir / self.policy_file(ns, name))
        except FileNotFoundError:
            pass

    def apply_step(self, step: Step) -> None:
        for ns, name in step.delete:
            self.delete_policy(ns, name)
        for pol in step.apply:
            self.write_policy(pol)
        for p, labels in step.pod_labels.items():
            self.write_pod(p, labels)
        for ns, labels in step.ns_labels.items():
            self.write_ns(ns, labels)
        self.sync_services()

    def reset(self) -> None:
        """Back to the model: no policies, default labels."""
        for f in self.mdir.glob("np-*.yaml"):
            f.unlink()
        self.state.policies.clear()
        for ns in NAMESPACES:
            if self.state.ns_labels.get(ns) != default_ns_labels(ns):
                self.write_ns(ns, default_ns_labels(ns))
        for p in ALL_PODS:
            if self.state.pod_labels.get(p) != default_pod_labels(p):
                self.write_pod(p, default_pod_labels(p))
        self.sync_services()

    def policies_text(self) -> str:
        files = sorted(self.mdir.glob("np-*.yaml"))
        if not files:
            return "(no NetworkPolicy in force)"
        return "\n".join(f"# {f.name}\n{f.read_text()}" for f in files)

    def _apiserver_scan(self) -> None:
        """Kubernetes source: the test API server ingests the folder now (as `kubectl apply` returning)."""
        import urllib.request
        req = urllib.request.Request(self.apiserver_url + "/_control/scan", data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            doc = json.loads(r.read())
        if doc.get("errors"):
            raise harness.Fatal(f"test API server rejected manifests: {doc['errors']}")

    def _start_apiserver(self, folder: Path) -> list[str]:
        kc = Path(self.run.mkdtemp("kubeconfig")) / "kubeconfig"
        server = Path(__file__).resolve().parent.parent / "apiserver" / "apiserver.py"
        proc = subprocess.Popen(["/usr/bin/python3", str(server), "--manifests", str(folder),
                                 "--write-kubeconfig", str(kc), "--bookmark-interval", "0.2"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                start_new_session=True, text=True)
        self.run.own_process(proc, "test API server")
        line = proc.stdout.readline()
        if not line:
            raise harness.Fatal("the test API server did not start")
        self.apiserver_url = json.loads(line)["url"]
        return ["--source", "kubernetes", "--kubeconfig", str(kc)]

    def sync(self) -> tuple[bool, str]:
        """`signetctl sync`: returns once the source as written is programmed."""
        if self.source == "kubernetes":
            self._apiserver_scan()
        t0 = time.monotonic()
        # every node's signetd (two nodes: both, at once; each reads the same folder)
        res = harness.parallel(self._sync_one, self.daemons or [self.d], workers=2)
        dt = time.monotonic() - t0
        for d, r in res:
            if isinstance(r, Exception):
                r = (False, repr(r))
            if not r[0]:
                return False, (f"{d.node}: " if self.nodes == 2 else "") + r[1]
        return True, f"{dt * 1000:.0f} ms"

    @staticmethod
    def _sync_one(d) -> tuple[bool, str]:
        p = d.ctl("sync", "-o", "json", "--timeout", "20s", timeout=60)
        if p.returncode != 0:
            return False, f"signetctl sync rc={p.returncode}: {p.stdout.strip()} {p.stderr.strip()}"
        try:
            doc = json.loads(p.stdout)
        except json.JSONDecodeError:
            return False, f"signetctl sync -o json: unparsable: {p.stdout!r}"
        errs = (doc.get("source") or {}).get("fileErrors") or doc.get("fileErrors") or []
        if errs:
            return False, f"signetd rejected manifest files: {json.dumps(errs)}"
        if doc.get("appliedVersion") != doc.get("sourceVersion", doc.get("appliedVersion")):
            return False, f"sync returned before applying: {json.dumps(doc)}"
        return True, "ok"

    # -------------------------------------------------------------- setup
    def setup(self) -> None:
        t0 = time.monotonic()
        if self.nodes == 2:
            self._setup_two_nodes()
        else:
            self._setup_one_node()
        for p in ALL_PODS:
            ips = [a.split("/")[0] for a in harness.ips_of_interface(self.pods[p]["result"], "eth0",
                                                                      self.pods[p]["path"])]
            self.state.pod_ips[p] = sorted(ips, key=lambda a: ipaddress.ip_address(a).version)
        fams = "+".join(f"IPv{f}" for f in self.families)
        self.test.require(f"every pod got {fams} addresses from its CNI result",
                          all({ipaddress.ip_address(a).version for a in self.state.pod_ips[p]} == set(self.families)
                              for p in ALL_PODS), self.state.pod_ips)
        if self.nodes == 2:
            # the kubelet reports the pods' IPs: each node learns the other's pods from status.podIPs
            for p in ALL_PODS:
                self.write_pod(p, self.state.pod_labels[p])
            ok, detail = self.sync()
            self.test.require("both signetd took the pods' status.podIPs", ok, detail)

        # servers and probe agents
        servers = {}
        for p in ALL_PODS:
            argv = ["ip", "netns", "exec", self.pods[p]["netns"], sys.executable, "-u",
                    str(HERE / "podagent.py"), "serve", "--name", p]
            sp = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
            self.run.own_process(sp, f"server {p}")
            servers[p] = sp
            self.agents[p] = Agent(self.run, p, self.pods[p]["netns"])
        if self.nodes == 2:
            # the node row: a probe to a pod comes from that pod's own node (node_agent())
            for name, ns in self.node_netnses.items():
                self.agents[f"{NODE}@{name}"] = Agent(self.run, f"{NODE}@{name}", ns)
        else:
            self.agents[NODE] = Agent(self.run, NODE, self.node_netns)  # the pods' node: the host, or the node netns
        for p, sp in servers.items():
            line = sp.stdout.readline().strip()
            self.test.require(f"server in {p} listening on TCP+UDP 80, 81", line == "ready",
                              sp.stderr.read() if line != "ready" else None)
        for a in self.agents.values():
            a.wait_ready()

        if self.via_service:
            self._start_kube_proxy()
        if self.nodes == 2 and self.handshake != "off" and self.with_signet and self.warm_up:
            self._first_contact()
        if not self.with_signet:
            self.log("NOTE the pods' CNI chain has no signet plugin: signetd enforces nothing on them")
            self.log(f"NOTE model up in {time.monotonic() - t0:.1f}s: " + self._pods_line())
            return
        for d in (self.daemons or [self.d]):
            local = [p for p in ALL_PODS if self.nodes == 1 or self.placement[p] == d.node]
            pods = {(r.get("namespace"), r.get("name")): r for r in d.pods()}
            on = f" on {d.node}" if self.nodes == 2 else ""
            missing = [p for p in local if tuple(p.split("/")) not in pods]
            self.test.require(f"signetd{on} registered its {len(local)} pods", not missing, missing)
            wrong = [p for p in local if pods[tuple(p.split("/"))].get("labels") != default_pod_labels(p)]
            self.test.require(f"signetd{on} resolved the pods' labels from the Pod objects", not wrong,
                              {p: pods[tuple(p.split('/'))].get("labels") for p in wrong})
        self.log(f"NOTE model up in {time.monotonic() - t0:.1f}s: " + self._pods_line())

    def _first_contact(self) -> None:
        """--nodes 2 with the handshake: one TCP connection node-a -> node-b, then one back,
        one at a time, before the cases, so each signetd has verified the other's signed
        token (and holds the pair key) before the first matrix. The first matrix otherwise
        races: a node that has verified one token from its peer makes MAC tokens for its next
        SYNs to that peer, while the peer may not yet hold this node's key; it refuses them
        (handshake.refused.unknown_key_id) and only the SYN retransmitted a second later (a
        signed token again) gets through, after the probe timeout. --no-first-contact
        leaves this out to show it."""
        a = next(p for p in ALL_PODS if self.placement[p] == twonode.NODE_A)
        b = next(p for p in ALL_PODS if self.placement[p] == twonode.NODE_B)
        for frm, to in ((a, b), (b, a)):
            got = []
            for _ in range(3):  # a dropped SYN is retransmitted after 1 s: give it time
                o = self.probe([(frm, to, 80, "TCP", 4)])[(frm, to, 80, "TCP", 4)]
                got.append("ok" if o.ok else o.detail)
                if o.ok:
                    break
            self.log(f"NOTE first contact {frm} ({self.placement[frm]}) -> {to} ({self.placement[to]}) TCP/80: "
                     + ", ".join(got))

    def _pods_line(self) -> str:
        return ", ".join(f"{p}={','.join(self.state.pod_ips[p])}"
                         + (f"@{self.placement[p]}" if self.nodes == 2 else "") for p in ALL_PODS)

    def _authority_args(self) -> list[str]:
        if self.handshake == "off":
            return []
        ca = Path(self.run.mkdtemp("authority")) / "ca"
        p = harness.sh(self.bins["signetctl"], "authority", "init", str(ca), "--trust-domain", "conformance.test",
                       check=False)
        self.test.require("signetctl authority init", p.returncode == 0, p.stdout + p.stderr)
        # One node (--nodes 2 goes through twonode.py, whose nodes hold no CA key).
        return ["--authority", f"dir:{ca}", "--allow-ca-key", "--handshake", self.handshake]

    def _register_pods(self) -> None:
        for p in ALL_PODS:
            name, path = self.run.netns_add()
            cid = self.run.container_id()
            uid = self.run.uid()
            ns, pod = p.split("/")
            self.pods[p] = {"netns": name, "path": path, "cid": cid, "uid": uid,
                            "args": harness.k8s_args(ns, pod, uid, cid), "result": None,
                            "chain": self.chain if self.nodes == 1 else self.chains[self.placement[p]]}
        self.run.on_cleanup("CNI DEL of the conformance pods", lambda: self.teardown(best_effort=True))

        def add(p):
            info = self.pods[p]
            res, _ = info["chain"].add(info["cid"], info["path"], "eth0", info["args"])
            info["result"] = res
            return res

        errors = [(p, r) for p, r in harness.parallel(add, ALL_PODS, workers=9) if isinstance(r, Exception)]
        where = " on their nodes (the chain run in each node netns)" if self.nodes == 2 else ""
        self.test.require(f"CNI ADD (bridge + host-local{' + signet' if self.with_signet else ''}) "
                          f"for the 9 pods{where}", not errors,
                          "; ".join(f"{p}: {e}" for p, e in errors))

    def _setup_one_node(self) -> None:
        extra = self._authority_args()
        if self.via_service:
            self._make_node()
            if self.node_netns_flag:
                extra += ["--node-netns", f"/run/netns/{self.node_netns}"]
        if self.source == "kubernetes":
            folder = Path(self.run.mkdtemp("manifests"))
            self.d = harness.Signetd(self.run, self.bins, node=NODE_NAME, manifest_dir=folder,
                                     source_args=self._start_apiserver(folder))
        else:
            self.d = harness.Signetd(self.run, self.bins, node=NODE_NAME)
        self.d.extra_args = extra + self.signetd_args
        self.d.start()
        self.daemons = [self.d]
        for ns in NAMESPACES:
            self.write_ns(ns, default_ns_labels(ns))
        for p in ALL_PODS:
            self.write_pod(p, default_pod_labels(p))
        ok, detail = self.sync()
        self.test.require("signetd took the model's Namespaces and Pods", ok, detail)

        self.net = harness.Network(self.run, version="1.0.0", signet_socket=self.d.socket)
        if 6 in self.families:  # dual-stack: a second host-local range, IPv6 ULA
            x = self.net.subnet.network_address.packed[2]
            self.net.conflist["plugins"][0]["ipam"]["ranges"].append(
                [{"subnet": f"fd00:5e:{os.getpid() % 0xffff:x}:{x:x}::/64"}])
        if self.via_service:
            # the bridge in the node netns, and the pods' default route through it (a ClusterIP is
            # routed to the node, where kube-proxy's rules translate it)
            self.net.conflist["plugins"][0]["isDefaultGateway"] = True
            # hairpin on the pods' bridge ports, as kubelet's networks set it up: with
            # bridge-nf-call-iptables a pod's connection to its own ClusterIP is DNATed at the
            # bridge back to the port it came in on (kube-proxy's hairpin case)
            self.net.conflist["plugins"][0]["hairpinMode"] = True
            if not self.with_signet:
                self.net.conflist["plugins"] = self.net.conflist["plugins"][:1]
            self.chain = self.net.chain([self.cni_dir])
        else:
            self.chain = self.net.chain([harness.CNI_BIN_DIR, str(self.bins["signet"].parent)])
        self._register_pods()

    def _setup_two_nodes(self) -> None:
        """twonode.py's topology: two node netns joined by a wire veth, each with its own bridge
        (sgbr0), pod subnet, routes to the other's subnet over the wire, and signetd (node-a,
        node-b: own socket, state dir and credentials from one cluster authority; both read
        the same manifest folder and are told their node netns). The pods' chain runs the
        real bridge plugin inside their node's netns, with hairpin and a default route via
        the node (twonode.TwoNodes.chain_for)."""
        self.tn = twonode.TwoNodes(self.test, self.run, self.bins, ipv6=6 in self.families)
        self.node_netnses = {name: n.netns for name, n in self.tn.nodes.items()}
        self.d = self.tn.nodes[twonode.NODE_A].d  # the manifest folder's owner; both read it
        self.daemons = [n.d for n in self.tn.nodes.values()]
        for name, n in self.tn.nodes.items():
            if self.via_service:
                add_uplink(n.netns, NODE_UPLINK_IPS[name])
        self.tn.start(None if self.handshake == "off" else self.handshake,
                      node_netns=self.node_netns_flag)
        for ns in NAMESPACES:
            self.write_ns(ns, default_ns_labels(ns))
        for p in ALL_PODS:
            self.write_pod(p, default_pod_labels(p))  # spec.nodeName, no addresses yet (before the CNI ADD)
        ok, detail = self.sync()
        self.test.require("both signetd took the model's Namespaces and Pods", ok, detail)
        self.chains = {name: self.tn.chain_for(name, with_signet=self.with_signet) for name in self.tn.nodes}
        self._register_pods()
        self.log("NOTE --nodes 2: " + ", ".join(
            f"{name} (netns {n.netns}, pods {n.subnet4}"
            + (f" {n.subnet6}" if 6 in self.families else "") + "): "
            + " ".join(p for p in ALL_PODS if self.placement[p] == name)
            for name, n in self.tn.nodes.items())
            + f"; wire {twonode.WIRE4[0]} <-> {twonode.WIRE4[1]}")

    # -------------------------------------------------------------- --via-service
    def _make_node(self) -> None:
        """The node netns: the pods' bridge and kube-proxy's rules live here, as on a real node.
        Its own address is on a link holding the default route (a real node's uplink):
        traffic the node sends to a ClusterIP needs a route before kube-proxy's DNAT."""
        self.node_netns, _ = self.run.netns_add()
        n = self.node_netns
        for k, v in (("net.ipv4.ip_forward", 1), ("net.ipv4.conf.all.rp_filter", 0),
                     ("net.ipv4.conf.default.rp_filter", 0)):
            harness.sh("ip", "netns", "exec", n, "sysctl", "-qw", f"{k}={v}")
        add_uplink(n, NODE_IP)
        # the CNI chain runs the real bridge plugin inside the node netns (as test/integration/twonode.py)
        self.cni_dir = Path(self.run.mkdtemp("cni-node"))
        (self.cni_dir / "bridge").write_text(
            f"#!/bin/sh\nexec /usr/sbin/ip netns exec {n} {harness.CNI_BIN_DIR}/bridge \"$@\"\n")
        (self.cni_dir / "bridge").chmod(0o755)
        os.symlink(f"{harness.CNI_BIN_DIR}/host-local", self.cni_dir / "host-local")
        os.symlink(str(Path(self.bins["signet"]).resolve()), self.cni_dir / "signet")
        self.node_netnses = {NODE_NAME: n}
        self.log(f"NOTE --via-service {self.via_service}: node netns {n} (node IP {NODE_IP}), "
                 f"Services from {SERVICE_CIDR}")

    def _start_kube_proxy(self) -> None:
        # each node's kube-proxy knows every Service and all its endpoints, local and remote
        for name, netns in self.node_netnses.items():
            if self.nodes == 2:
                node = kubeproxy.Node(ips=[NODE_UPLINK_IPS[name]], cluster_cidr=TWO_NODE_CLUSTER_CIDR,
                                      service_cidr=SERVICE_CIDR)
            else:
                node = kubeproxy.Node(ips=[NODE_IP], cluster_cidr=str(self.net.subnet), service_cidr=SERVICE_CIDR)
            kp = kubeproxy.KubeProxy(self.via_service, netns, node)
            self.kps[name] = kp

            def remove(kp=kp, name=name):
                self.run.cleanup_problems.extend(f"kube-proxy rules ({name}): {p}" for p in kp.remove())
            self.run.on_cleanup(f"kube-proxy rules in the node netns {netns}", remove)
            kp.prepare_node()
        self.kp = next(iter(self.kps.values()))
        self._backends = {}
        self.sync_services(force=True)
        ok, detail = self.sync()
        self.test.require("signetd took the Services and EndpointSlices (sync without file errors)", ok, detail)
        self.log("NOTE ClusterIPs: " + ", ".join(f"{service_name(p)}={self.cluster_ips[p]}" for p in ALL_PODS))

    def services(self, node: str | None = None) -> list:
        """kube-proxy's view (on `node`): each model pod's Service with its current endpoints."""
        out = []
        for p in ALL_PODS:
            ns, _ = p.split("/")
            ports, eps = [], {}
            for port_ in PORTS:
                for proto in PROTOCOLS:
                    name = service_port_name(port_, proto)
                    ports.append(kubeproxy.ServicePort(name, proto, port_, target_port=port_))
                    eps[name] = [kubeproxy.Endpoint(ip, port_, local=self.placement.get(b, node) == node)
                                 for b, ip in self._backends[p]]
            out.append(kubeproxy.Service(ns, service_name(p), self.cluster_ips[p], ports, eps))
        return out

    def sync_services(self, force: bool = False) -> None:
        """With --via-service: recompute every Service's endpoints from the pods' labels (as the
        EndpointSlice controller would); write changed Services and EndpointSlices to the
        manifest folder and resync kube-proxy's rules (every node's) when anything changed."""
        if not self.via_service or not self.kps:
            return
        backends = {p: service_backends(self.state, p) for p in ALL_PODS}
        if backends == self._backends and not force:
            return
        changed = [p for p in ALL_PODS if backends[p] != self._backends.get(p)]
        self._backends = backends
        for p in changed:
            ns, name = p.split("/")
            self._write(f"svc-{ns}-{name}.yaml",
                        to_yaml(service_obj(p, self.cluster_ips[p]),
                                endpoint_slice_obj(p, backends[p], self.placement or None)))
        for name, kp in self.kps.items():
            kp.sync(self.services(name))

    def kube_proxy_rules(self) -> str:
        if not self.kps:
            return "(no kube-proxy rules)"
        return "\n".join((f"# {name} ({kp.netns})\n" if len(self.kps) > 1 else "") + kp.dump()
                         for name, kp in self.kps.items())

    def teardown(self, best_effort: bool = True) -> None:
        if self._deleted or (self.chain is None and not self.chains):
            return
        self._deleted = True
        todo = [p for p in self.pods if self.pods[p]["result"] is not None]

        def delete(p):
            i = self.pods[p]
            return i["chain"].delete(i["cid"], i["path"], "eth0", i["args"], i["result"],
                                     best_effort=best_effort)

        for p, r in harness.parallel(delete, todo, workers=9):
            if isinstance(r, Exception):
                self.run.cleanup_problems.append(f"CNI DEL {p}: {r}")

    # -------------------------------------------------------------- probing
    def dest_ip(self, pod: str, family: int = 4) -> str:
        """Where a probe to `pod` connects: its pod IP, or with --via-service its Service's ClusterIP."""
        if self.via_service and family == 4:
            return self.cluster_ips[pod]
        return ip_of(self.state, pod, family)

    def _next_id(self) -> int:
        with self._id_lock:
            self._ids += 1
            return self._ids

    def agent_for(self, frm: str, to: str) -> str:
        """The agent that probes from `frm` to `to`. The node row is the destination pod's own
        node: with --nodes 2 that is node-a's or node-b's agent (traffic from another node is
        not "from the pod's node": only an ipBlock allows it)."""
        if frm == NODE and self.nodes == 2:
            return f"{NODE}@{self.placement[to]}"
        return frm

    def probe(self, items: list[tuple[str, str, int, str, int]]) -> dict:
        """items: (from, to, port, proto, family); from is a podstr or NODE.
        All run at once; returns {item: Observation}."""
        by_agent: dict[str, list] = {}
        keys = {}
        for it in items:
            frm, to, port_, proto, fam = it
            i = self._next_id()
            keys[i] = it
            by_agent.setdefault(self.agent_for(frm, to), []).append(
                {"id": i, "ip": self.dest_ip(to, fam), "port": port_, "proto": proto,
                 "timeout": self.probe_timeout})
        for a, reqs in by_agent.items():
            self.agents[a].send(reqs)
        deadline = time.monotonic() + self.probe_timeout + 10
        out = {}
        for a, reqs in by_agent.items():
            got = self.agents[a].collect([r["id"] for r in reqs], deadline)
            for r in reqs:
                it = keys[r["id"]]
                res = got.get(r["id"])
                if res is None:
                    out[it] = Observation(False, "agent gave no answer")
                elif res.get("ok") and res.get("reply") != it[1]:
                    out[it] = Observation(False, f"answered by {res.get('reply')!r}, not {it[1]}", res.get("ms", 0))
                else:
                    out[it] = Observation(bool(res.get("ok")), res.get("error", ""), res.get("ms", 0))
        return out

    def probe_matrix(self, combos: list[tuple[int, str]], with_node: bool = False,
                     families: tuple | None = None) -> dict:
        """Every pod (and the node) to every pod, for each (port, proto) and
        address family; keys (from, to, port, proto, family)."""
        fams = families or self.families
        items = [(f, t, p, pr, fa) for fa in fams for p, pr in combos for f in ALL_PODS for t in ALL_PODS]
        if with_node:
            items += [(NODE, t, p, pr, fa) for fa in fams for p, pr in combos for t in ALL_PODS]
        return self.probe(items)

    # -------------------------------------------------------------- debugging aids
    def pods_json(self) -> str:
        """`signetctl pods -o json`, one compact line per pod (model pods by name); with two
        nodes each node's, headed by its name."""
        out = []
        for d in (self.daemons or [self.d]):
            if self.nodes == 2:
                out.append(f"# {d.node}")
            p = d.ctl("pods", "-o", "json")
            try:
                pods = json.loads(p.stdout)["pods"]
            except (json.JSONDecodeError, KeyError, TypeError):
                out.append(p.stdout.strip() or p.stderr.strip())
                continue
            pods.sort(key=lambda r: (str(r.get("namespace")), str(r.get("name"))))
            out += [json.dumps(r, sort_keys=True, separators=(",", ":")) for r in pods]
        return "\n".join(out)

    def nft_ruleset(self, pod: str) -> str:
        p = harness.sh("ip", "netns", "exec", self.pods[pod]["netns"], "nft", "list", "ruleset", check=False)
        return (p.stdout + p.stderr).strip() or "(empty ruleset)"
