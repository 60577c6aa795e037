#!/usr/bin/python3
"""kube-proxy's rule shapes for a test node: render, install, remove.

signet's tests need Service traffic translated exactly as a real node
translates it. This module renders what kube-proxy (iptables mode, or
nftables mode) would program on a node for a given set of Services and
their endpoints, installs it into a network namespace (the test's node
netns) and removes it again. It does not run kube-proxy; it writes the
same chains, maps and rules, read from kube-proxy's source
(pkg/proxy/iptables/proxier.go, pkg/proxy/nftables/proxier.go; see
README.md for the version).

    kubeproxy.py --selfcheck           render both modes for sample Services and
                                       check the text (no root; exit 0/1)
    kubeproxy.py --render iptables     print the sample rendering (or nftables)

Library use (Python 3 standard library only):

    svc = Service("x", "s-x-a", "10.96.0.10",
                  ports=[ServicePort("service-port-tcp-80", "TCP", 80)],
                  endpoints={"service-port-tcp-80": [Endpoint("10.244.1.2", 80, local=True)]})
    node = Node(ips=["192.168.254.1"], cluster_cidr="10.244.1.0/24", service_cidr="10.96.0.0/16")
    kp = KubeProxy("iptables", "sgt-123-4", node)   # the node netns, by name
    kp.prepare_node()        # ip_forward=1, bridge-nf-call-iptables=1 (br_netfilter)
    kp.sync([svc])           # (re)install the rules for exactly these Services
    kp.remove()              # everything it installed is gone

Scope: Service type ClusterIP and NodePort, internal and external traffic
policy Cluster, no session affinity, no LoadBalancer or externalIPs, IPv4.
Endpoints are ready ones only (the caller computes them from its pods).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field

MASQ_MARK = "0x4000"  # kube-proxy's default --iptables-masquerade-bit 14
NFT_TABLE = "kube-proxy"


# =========================================================================== the input

@dataclass
class ServicePort:
    name: str            # "" for a single unnamed port
    protocol: str        # TCP, UDP (SCTP renders too)
    port: int
    target_port: int | None = None  # informational: the caller gives endpoints with their ports
    node_port: int = 0


@dataclass
class Endpoint:
    ip: str
    port: int
    local: bool = True   # on this node (informational with traffic policy Cluster)


@dataclass
class Service:
    namespace: str
    name: str
    cluster_ip: str
    ports: list = field(default_factory=list)      # [ServicePort]
    endpoints: dict = field(default_factory=dict)  # port name -> [Endpoint]

    def port_name(self, sp: ServicePort) -> str:
        """proxy.ServicePortName.String(): "ns/name:port", or "ns/name" for an unnamed port."""
        base = f"{self.namespace}/{self.name}"
        return f"{base}:{sp.name}" if sp.name else base


@dataclass
class Node:
    ips: list                 # the node's own addresses (NodePorts answer on them)
    cluster_cidr: str         # the pods' CIDR (--cluster-cidr, detect-local-mode ClusterCIDR)
    service_cidr: str = ""    # optional: nftables mode drops traffic to unallocated ClusterIPs


# =========================================================================== names (as proxier.go computes them)

def _b32(data: str) -> str:
    return base64.b32encode(hashlib.sha256(data.encode()).digest()).decode()


def port_proto_hash(svc_port_name: str, protocol: str) -> str:
    """iptables: portProtoHash = base32(sha256(servicePortName + protocol))[:16]."""
    return _b32(svc_port_name + protocol.lower())[:16]


def svc_chain(svc_port_name: str, protocol: str) -> str:
    return "KUBE-SVC-" + port_proto_hash(svc_port_name, protocol)


def ext_chain(svc_port_name: str, protocol: str) -> str:
    return "KUBE-EXT-" + port_proto_hash(svc_port_name, protocol)


def sep_chain(svc_port_name: str, protocol: str, endpoint: str) -> str:
    """servicePortEndpointChainName: base32(sha256(servicePortName + protocol + "ip:port"))[:16]."""
    return "KUBE-SEP-" + _b32(svc_port_name + protocol.lower() + endpoint)[:16]


def _hash_and_truncate(name: str) -> str:
    """nftables: hashAndTruncate = base32(sha256(name))[:8] + "-" + name (max 240)."""
    name = _b32(name)[:8] + "-" + name
    return name if len(name) <= 240 else name[:237] + "..."


def nft_service_base(ns: str, name: str, protocol: str, port_name: str) -> str:
    return _hash_and_truncate(f"{ns}/{name}/{protocol.lower()}/{port_name}")


def nft_endpoint_base(ns: str, name: str, protocol: str, port_name: str, ip: str, port: int) -> str:
    return _hash_and_truncate(f"{ns}/{name}/{protocol.lower()}/{port_name}__{ip.replace(':', '.')}/{port}")


def probability(n: int) -> str:
    """iptables' statistic probability for 1/n, as kube-proxy formats it (%0.10f)."""
    return f"{1.0 / n:0.10f}"


def _q(s: str) -> str:
    """A comment as kube-proxy writes it: quoted when it has a space."""
    return f'"{s}"' if " " in s else s


def _port_list(services):
    for svc in services:
        for sp in svc.ports:
            yield svc, sp, [f"{e.ip}:{e.port}" for e in svc.endpoints.get(sp.name, [])]


# =========================================================================== iptables mode

# (table, source chain, extra match, comment, target): kube-proxy's iptablesJumpChains,
# installed by EnsureRule(Prepend) so each ends up first in its built-in chain.
IPTABLES_JUMPS = [
    ("filter", "INPUT", "-m conntrack --ctstate NEW", "kubernetes externally-visible service portals",
     "KUBE-EXTERNAL-SERVICES"),
    ("filter", "FORWARD", "-m conntrack --ctstate NEW", "kubernetes externally-visible service portals",
     "KUBE-EXTERNAL-SERVICES"),
    ("filter", "INPUT", "", "kubernetes health check service ports", "KUBE-NODEPORTS"),
    ("filter", "FORWARD", "-m conntrack --ctstate NEW", "kubernetes service portals", "KUBE-SERVICES"),
    ("filter", "OUTPUT", "-m conntrack --ctstate NEW", "kubernetes service portals", "KUBE-SERVICES"),
    ("filter", "FORWARD", "", "kubernetes forwarding rules", "KUBE-FORWARD"),
    ("filter", "INPUT", "-m conntrack --ctstate NEW", "kubernetes load balancer firewall", "KUBE-PROXY-FIREWALL"),
    ("filter", "OUTPUT", "-m conntrack --ctstate NEW", "kubernetes load balancer firewall", "KUBE-PROXY-FIREWALL"),
    ("filter", "FORWARD", "-m conntrack --ctstate NEW", "kubernetes load balancer firewall", "KUBE-PROXY-FIREWALL"),
    ("nat", "OUTPUT", "", "kubernetes service portals", "KUBE-SERVICES"),
    ("nat", "PREROUTING", "", "kubernetes service portals", "KUBE-SERVICES"),
    ("nat", "POSTROUTING", "", "kubernetes postrouting rules", "KUBE-POSTROUTING"),
]
IPTABLES_FILTER_CHAINS = ["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS",
                          "KUBE-PROXY-FIREWALL"]
IPTABLES_NAT_CHAINS = ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"]


def _jump_rule(extra: str, comment: str, target: str) -> str:
    return " ".join(x for x in (extra, f"-m comment --comment {_q(comment)}", f"-j {target}") if x)


def render_iptables(services: list, node: Node) -> str:
    """The iptables-restore input of one full sync (syncProxyRules): *filter then *nat,
    restored with --noflush. The jumps from the built-in chains are separate
    (render_iptables_jumps), as kube-proxy inserts them with `iptables -I`."""
    fchains = list(IPTABLES_FILTER_CHAINS)
    frules: list[str] = []
    nchains = list(IPTABLES_NAT_CHAINS)
    nrules = [
        f"-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN",
        f"-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE --random-fully",
        f"-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}",
    ]
    for svc, sp, eps in _port_list(services):
        spn = svc.port_name(sp)
        proto = sp.protocol.lower()
        svcc, extc = svc_chain(spn, proto), ext_chain(spn, proto)
        cip = (f"-m comment --comment {_q(spn + ' cluster IP')} -m {proto} -p {proto} "
               f"-d {svc.cluster_ip} --dport {sp.port}")
        if eps:
            nrules.append(f"-A KUBE-SERVICES {cip} -j {svcc}")
        else:
            frules.append(f"-A KUBE-SERVICES -m comment --comment {_q(spn + ' has no endpoints')} "
                          f"-m {proto} -p {proto} -d {svc.cluster_ip} --dport {sp.port} -j REJECT")
        if sp.node_port:
            if eps:
                nrules.append(f"-A KUBE-NODEPORTS -m comment --comment {_q(spn)} -m {proto} -p {proto} "
                              f"--dport {sp.node_port} -j {extc}")
            else:
                frules.append(f"-A KUBE-EXTERNAL-SERVICES -m comment --comment {_q(spn + ' has no endpoints')} "
                              f"-m addrtype --dst-type LOCAL -m {proto} -p {proto} --dport {sp.node_port} -j REJECT")
        if not eps:
            continue
        # internal traffic: masquerade what comes from outside the cluster CIDR
        nchains.append(svcc)
        nrules.append(f"-A {svcc} {cip} ! -s {node.cluster_cidr} -j KUBE-MARK-MASQ")
        if sp.node_port:
            nchains.append(extc)
            nrules.append(f"-A {extc} -m comment --comment "
                          f"{_q('masquerade traffic for ' + spn + ' external destinations')} -j KUBE-MARK-MASQ")
            nrules.append(f"-A {extc} -j {svcc}")
        n = len(eps)
        for i, ep in enumerate(eps):
            stat = f" -m statistic --mode random --probability {probability(n - i)}" if i < n - 1 else ""
            nrules.append(f"-A {svcc} -m comment --comment {_q(spn + ' -> ' + ep)}{stat} "
                          f"-j {sep_chain(spn, proto, ep)}")
        for ep in eps:
            sep = sep_chain(spn, proto, ep)
            nchains.append(sep)
            nrules.append(f"-A {sep} -m comment --comment {_q(spn)} -s {ep.rsplit(':', 1)[0]} -j KUBE-MARK-MASQ")
            nrules.append(f"-A {sep} -m comment --comment {_q(spn)} -m {proto} -p {proto} -j DNAT "
                          f"--to-destination {ep}")
    # the tail call to the NodePorts chain (nodePortAddresses: the node's IPs)
    for ip in node.ips:
        nrules.append('-A KUBE-SERVICES -m comment --comment '
                      '"kubernetes service nodeports; NOTE: this must be the last rule in this chain" '
                      f"-d {ip} -j KUBE-NODEPORTS")
    frules += [
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
        f'-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark {MASQ_MARK}/{MASQ_MARK} '
        "-j ACCEPT",
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack '
        "--ctstate RELATED,ESTABLISHED -j ACCEPT",
    ]
    out = ["*filter"] + [f":{c} - [0:0]" for c in fchains] + frules + ["COMMIT"]
    out += ["*nat"] + [f":{c} - [0:0]" for c in dict.fromkeys(nchains)] + nrules + ["COMMIT"]
    return "\n".join(out) + "\n"


def render_iptables_jumps() -> dict:
    """{table: ["-I CHAIN 1 <args>", ...]} in kube-proxy's order (each prepended)."""
    out: dict[str, list[str]] = {}
    for table, src, extra, comment, target in IPTABLES_JUMPS:
        out.setdefault(table, []).append(f"-I {src} 1 {_jump_rule(extra, comment, target)}")
    return out


# =========================================================================== nftables mode

def render_nftables(services: list, node: Node) -> str:
    """An `nft -f` script with kube-proxy's `ip kube-proxy` table as one full sync
    leaves it (setupNFTables + syncProxyRules); it replaces any previous table."""
    t = f"ip {NFT_TABLE}"
    L = [f'add table {t} {{ comment "rules for kube-proxy" ; }}', f"delete table {t}",
         f'add table {t} {{ comment "rules for kube-proxy" ; }}']
    L += [
        f'add set {t} cluster-ips {{ type ipv4_addr ; comment "Active ClusterIPs" ; }}',
        f'add set {t} nodeport-ips {{ type ipv4_addr ; comment "IPs that accept NodePort traffic" ; }}',
        f"add map {t} firewall-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; "
        'comment "destinations that are subject to LoadBalancerSourceRanges" ; }',
        f"add map {t} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; "
        'comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }',
        f"add map {t} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; "
        'comment "vmap to drop or reject packets to services with no endpoints" ; }',
        f"add map {t} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; "
        'comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }',
        f"add map {t} service-nodeports {{ type inet_proto . inet_service : verdict ; "
        'comment "NodePort traffic" ; }',
        f"add chain {t} cluster-ips-check",
        f"add chain {t} filter-prerouting-pre-dnat {{ type filter hook prerouting priority -110 ; }}",
        f"add chain {t} filter-output-pre-dnat {{ type filter hook output priority -110 ; }}",
        f"add chain {t} filter-forward {{ type filter hook forward priority 0 ; }}",
        f"add chain {t} filter-input {{ type filter hook input priority 0 ; }}",
        f"add chain {t} filter-output {{ type filter hook output priority 0 ; }}",
        f"add chain {t} firewall-check",
        f"add chain {t} mark-for-masquerade",
        f"add chain {t} masquerading",
        f"add chain {t} nat-output {{ type nat hook output priority -100 ; }}",
        f"add chain {t} nat-postrouting {{ type nat hook postrouting priority 100 ; }}",
        f"add chain {t} nat-prerouting {{ type nat hook prerouting priority -100 ; }}",
        f"add chain {t} nodeport-endpoints-check",
        f'add chain {t} reject-chain {{ comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }}',
        f"add chain {t} services",
        f"add chain {t} service-endpoints-check",
        f"add rule {t} cluster-ips-check ip daddr @cluster-ips reject "
        'comment "Reject traffic to invalid ports of ClusterIPs"',
    ]
    if node.service_cidr:
        L.append(f'add rule {t} cluster-ips-check ip daddr {{ {node.service_cidr} }} drop '
                 'comment "Drop traffic to unallocated ClusterIPs"')
    L += [
        f"add rule {t} filter-prerouting-pre-dnat ct state new jump firewall-check",
        f"add rule {t} filter-forward ct state new jump service-endpoints-check",
        f"add rule {t} filter-forward ct state new jump cluster-ips-check",
        f"add rule {t} filter-input ct state new jump nodeport-endpoints-check",
        f"add rule {t} filter-input ct state new jump service-endpoints-check",
        f"add rule {t} filter-output ct state new jump service-endpoints-check",
        f"add rule {t} filter-output-pre-dnat ct state new jump firewall-check",
        f"add rule {t} filter-output ct state new jump cluster-ips-check",
        f"add rule {t} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips",
        f"add rule {t} mark-for-masquerade mark set mark or {MASQ_MARK}",
        f"add rule {t} masquerading mark and {MASQ_MARK} == 0 return",
        f"add rule {t} masquerading mark set mark xor {MASQ_MARK}",
        f"add rule {t} masquerading masquerade fully-random",
        f"add rule {t} nat-output jump services",
        f"add rule {t} nat-postrouting jump masquerading",
        f"add rule {t} nat-prerouting jump services",
        f"add rule {t} nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport "
        "vmap @no-endpoint-nodeports",
        f"add rule {t} reject-chain reject",
        f"add rule {t} services ip daddr . meta l4proto . th dport vmap @service-ips",
        f"add rule {t} services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports",
        f"add rule {t} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services",
    ]
    for ip in node.ips:
        L.append(f"add element {t} nodeport-ips {{ {ip} }}")
    for svc, sp, eps in _port_list(services):
        spn = svc.port_name(sp)
        proto = sp.protocol.lower()
        base = nft_service_base(svc.namespace, svc.name, proto, sp.name)
        svcc, extc = "service-" + base, "external-" + base
        L.append(f"# {spn}")
        L.append(f"add element {t} cluster-ips {{ {svc.cluster_ip} }}")
        if not eps:
            L.append(f'add element {t} no-endpoint-services {{ {svc.cluster_ip} . {proto} . {sp.port} '
                     f'comment "{spn}" : goto reject-chain }}')
            if sp.node_port:
                L.append(f'add element {t} no-endpoint-nodeports {{ {proto} . {sp.node_port} '
                         f'comment "{spn}" : goto reject-chain }}')
            continue
        epchains = [("endpoint-" + nft_endpoint_base(svc.namespace, svc.name, proto, sp.name,
                                                     *ep.rsplit(":", 1)), ep) for ep in eps]
        # the endpoint chains exist before a rule refers to them (kube-proxy's ensureChain order)
        L += [f"add chain {t} {c}" for c, _ in epchains]
        L.append(f"add chain {t} {svcc}")
        L.append(f"add rule {t} {svcc} ip daddr {svc.cluster_ip} {proto} dport {sp.port} "
                 f"ip saddr != {node.cluster_cidr} jump mark-for-masquerade")
        vmap = " , ".join(f"{i} : goto {c}" for i, (c, _) in enumerate(epchains))
        L.append(f"add rule {t} {svcc} numgen random mod {len(epchains)} vmap {{ {vmap} }}")
        if sp.node_port:
            L.append(f"add chain {t} {extc}")
            L.append(f"add rule {t} {extc} jump mark-for-masquerade")
            L.append(f"add rule {t} {extc} goto {svcc}")
        for c, ep in epchains:
            L.append(f"add rule {t} {c} ip saddr {ep.rsplit(':', 1)[0]} jump mark-for-masquerade")
            L.append(f"add rule {t} {c} meta l4proto {proto} dnat to {ep}")
        L.append(f"add element {t} service-ips {{ {svc.cluster_ip} . {proto} . {sp.port} : goto {svcc} }}")
        if sp.node_port:
            L.append(f"add element {t} service-nodeports {{ {proto} . {sp.node_port} : goto {extc} }}")
    return "\n".join(L) + "\n"


# =========================================================================== installing

def _run(argv, input=None, check=True):
    p = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=60)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {p.returncode}: {p.stdout.strip()} {p.stderr.strip()}\n"
                           + ("--- input:\n" + _numbered(input) if input else ""))
    return p


def _numbered(text: str) -> str:
    return "\n".join(f"{i:4d} {line}" for i, line in enumerate(text.splitlines(), 1))


class KubeProxy:
    """kube-proxy's rules for one node netns (by name, as `ip netns exec` takes it;
    None: the current netns). mode: "iptables" (iptables-restore, iptables-nft here)
    or "nftables" (nft -f)."""

    def __init__(self, mode: str, netns: str | None, node: Node):
        if mode not in ("iptables", "nftables"):
            raise ValueError(f"mode {mode!r}: iptables or nftables")
        self.mode, self.netns, self.node = mode, netns, node
        self.installed = False
        self._jumps_done = False
        self.last_text = ""

    def _x(self, *argv) -> list[str]:
        return (["ip", "netns", "exec", self.netns] if self.netns else []) + list(argv)

    def prepare_node(self) -> None:
        """What kube-proxy (and the bridge network) need on the node: IPv4 forwarding and
        bridged traffic through the ip hooks (br_netfilter, bridge-nf-call-iptables=1)."""
        if not os.path.exists("/proc/sys/net/bridge/bridge-nf-call-iptables"):
            _run(["modprobe", "br_netfilter"], check=False)
        _run(self._x("sysctl", "-qw", "net.ipv4.ip_forward=1"))
        p = _run(self._x("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"), check=False)
        if p.returncode != 0:
            raise RuntimeError("cannot set net.bridge.bridge-nf-call-iptables=1 in the node netns "
                               f"(br_netfilter missing?): {p.stderr.strip()}")

    def sync(self, services: list) -> str:
        """Installs the rules for exactly these Services (a full sync); returns the text applied."""
        if self.mode == "iptables":
            text = render_iptables(services, self.node)
            _run(self._x("iptables-restore", "--noflush", "-w"), input=self._with_stale_chains_deleted(text))
            if not self._jumps_done:
                for table, lines in render_iptables_jumps().items():
                    _run(self._x("iptables-restore", "--noflush", "-w"),
                         input=f"*{table}\n" + "\n".join(lines) + "\nCOMMIT\n")
                self._jumps_done = True
        else:
            text = render_nftables(services, self.node)
            _run(self._x("nft", "-f", "-"), input=text)
        self.installed = True
        self.last_text = text
        return text

    def _kube_chains(self) -> dict:
        """{table: [KUBE-* chain, ...]} present now (iptables-save)."""
        out: dict[str, list[str]] = {}
        for table in ("filter", "nat"):
            p = _run(self._x("iptables-save", "-t", table), check=False)
            out[table] = re.findall(r"^:(KUBE-[A-Z0-9-]+) ", p.stdout, re.M)
        return out

    def _with_stale_chains_deleted(self, text: str) -> str:
        """As syncProxyRules does: service chains that exist but are no longer rendered get
        a chain line (which flushes them) and `-X` in the same restore; the rewritten
        KUBE-SERVICES no longer jumps to them."""
        head, nat = text.split("*nat\n", 1)
        want = set(re.findall(r"^:(KUBE-[A-Z0-9-]+) ", nat, re.M))
        stale = [c for c in self._kube_chains().get("nat", [])
                 if c not in want and c.split("-")[1] in ("SVC", "SEP", "EXT", "SVL", "FW")]
        if not stale:
            return text
        nat = nat.replace("COMMIT\n", "", 1)
        lines = nat.splitlines(keepends=True)
        n_chain = sum(1 for line in lines if line.startswith(":"))
        return head + "*nat\n" + "".join(lines[:n_chain]) + "".join(f":{c} - [0:0]\n" for c in stale) \
            + "".join(lines[n_chain:]) + "".join(f"-X {c}\n" for c in stale) + "COMMIT\n"

    def remove(self) -> list[str]:
        """Removes everything installed (jumps, chains, the nft table). Returns problems."""
        problems = []
        if self.mode == "nftables":
            p = _run(self._x("nft", "delete", "table", "ip", NFT_TABLE), check=False)
            if p.returncode != 0 and "No such file" not in p.stderr:
                problems.append(f"nft delete table ip {NFT_TABLE}: {p.stderr.strip()}")
        else:
            chains = self._kube_chains()
            for table, lines in render_iptables_jumps().items():
                present = _run(self._x("iptables-save", "-t", table), check=False).stdout
                body = []
                for line in lines:
                    rule = line.split(" ", 3)  # -I CHAIN 1 args
                    spec = f"-A {rule[1]} {rule[3]}"
                    if spec in present:
                        body.append(f"-D {rule[1]} {rule[3]}")
                body += [f":{c} - [0:0]" for c in chains.get(table, [])]
                body += [f"-X {c}" for c in chains.get(table, [])]
                if body:
                    p = _run(self._x("iptables-restore", "--noflush", "-w"),
                             input=f"*{table}\n" + "\n".join(body) + "\nCOMMIT\n", check=False)
                    if p.returncode != 0:
                        problems.append(f"iptables-restore (remove, {table}): {p.stderr.strip()}")
            left = {t: c for t, c in self._kube_chains().items() if c}
            if left:
                problems.append(f"KUBE-* chains left: {left}")
        self.installed = False
        self._jumps_done = False
        return problems

    def dump(self) -> str:
        """The installed rules as the kernel lists them (for failure output)."""
        if self.mode == "nftables":
            p = _run(self._x("nft", "list", "table", "ip", NFT_TABLE), check=False)
        else:
            p = _run(self._x("iptables-save"), check=False)
        return (p.stdout + p.stderr).strip()


def tools_missing(mode: str) -> list[str]:
    import shutil
    need = ["iptables-restore", "iptables-save"] if mode == "iptables" else ["nft"]
    return [t for t in need if shutil.which(t) is None]


def iptables_backend() -> str:
    """'nf_tables' or 'legacy' (from `iptables --version`), '' if absent."""
    p = subprocess.run(["iptables", "--version"], capture_output=True, text=True, check=False)
    m = re.search(r"\((nf_tables|legacy)\)", p.stdout)
    return m.group(1) if m else ""


# =========================================================================== selfcheck (no root)

def sample() -> tuple[list, Node]:
    """Upstream's proxier_test.go fixtures (ns1/svc1:p80 -> 10.180.0.1:80, cluster CIDR
    10.0.0.0/8) plus a two-endpoint NodePort Service and one without endpoints."""
    s1 = Service("ns1", "svc1", "172.30.0.41", [ServicePort("p80", "TCP", 80)],
                 {"p80": [Endpoint("10.180.0.1", 80)]})
    s2 = Service("ns2", "svc2", "172.30.0.42", [ServicePort("p80", "TCP", 80, node_port=3001),
                                                 ServicePort("p81", "UDP", 81)],
                 {"p80": [Endpoint("10.180.0.2", 80), Endpoint("10.180.0.3", 80, local=False)],
                  "p81": [Endpoint("10.180.0.2", 81), Endpoint("10.180.0.3", 81), Endpoint("10.180.0.4", 81)]})
    s3 = Service("ns3", "svc3", "172.30.0.43", [ServicePort("p80", "TCP", 80)], {})
    return [s1, s2, s3], Node(ips=["192.168.0.2"], cluster_cidr="10.0.0.0/8", service_cidr="172.30.0.0/16")


def selfcheck() -> list[str]:
    problems = []

    def want(cond, what):
        if not cond:
            problems.append(what)

    # chain names: the values upstream's own tests expect
    want(svc_chain("ns1/svc1:p80", "tcp") == "KUBE-SVC-XPGD46QRK7WJZT7O", "KUBE-SVC hash of ns1/svc1:p80 tcp")
    want(sep_chain("ns1/svc1:p80", "tcp", "10.180.0.1:80") == "KUBE-SEP-SXIVWICOYRO3J4NJ",
         "KUBE-SEP hash of ns1/svc1:p80 tcp 10.180.0.1:80")
    want(nft_service_base("ns1", "svc1", "tcp", "p80") == "ULMVA6XW-ns1/svc1/tcp/p80", "nft service chain name")
    want(nft_endpoint_base("ns1", "svc1", "tcp", "p80", "10.180.0.1", 80) == "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80",
         "nft endpoint chain name")
    want(probability(3) == "0.3333333333" and probability(2) == "0.5000000000", "statistic probabilities")

    services, node = sample()
    ipt = render_iptables(services, node)
    jumps = render_iptables_jumps()
    for line in [
        '-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 '
        "-j KUBE-SVC-XPGD46QRK7WJZT7O",
        '-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 '
        "--dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ",
        '-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" '
        "-j KUBE-SEP-SXIVWICOYRO3J4NJ",
        "-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ",
        "-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT "
        "--to-destination 10.180.0.1:80",
        "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE --random-fully",
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT',
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate '
        "RELATED,ESTABLISHED -j ACCEPT",
        '-A KUBE-SERVICES -m comment --comment "ns3/svc3:p80 has no endpoints" -m tcp -p tcp -d 172.30.0.43 '
        "--dport 80 -j REJECT",
        '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in '
        'this chain" -d 192.168.0.2 -j KUBE-NODEPORTS',
    ]:
        want(line in ipt.splitlines(), f"iptables: missing line {line!r}")
    s2 = svc_chain("ns2/svc2:p80", "tcp")
    e2 = ext_chain("ns2/svc2:p80", "tcp")
    want(f"-A KUBE-NODEPORTS -m comment --comment ns2/svc2:p80 -m tcp -p tcp --dport 3001 -j {e2}" in ipt,
         "iptables: NodePort jump to KUBE-EXT")
    want(f"-A {e2} -j {s2}" in ipt, "iptables: KUBE-EXT -> KUBE-SVC")
    stat = re.findall(rf"^-A {svc_chain('ns2/svc2:p81', 'udp')} .*$", ipt, re.M)
    want(len(stat) == 4 and "--probability 0.3333333333" in stat[1] and "--probability 0.5000000000" in stat[2]
         and "statistic" not in stat[3], f"iptables: statistic rules for 3 endpoints: {stat}")
    want("-m udp -p udp -j DNAT --to-destination 10.180.0.4:81" in ipt, "iptables: UDP DNAT")
    want(svc_chain("ns3/svc3:p80", "tcp") not in ipt,
         "iptables: no KUBE-SVC chain for a Service without endpoints")
    want(ipt.startswith("*filter\n") and ipt.count("COMMIT") == 2 and "\n*nat\n" in ipt, "iptables: two tables")
    want(ipt.index("kubernetes service nodeports") > ipt.rindex("cluster IP\" -m"), "iptables: nodeports last")
    want('-I PREROUTING 1 -m comment --comment "kubernetes service portals" -j KUBE-SERVICES' in jumps["nat"]
         and '-I OUTPUT 1 -m comment --comment "kubernetes service portals" -j KUBE-SERVICES' in jumps["nat"]
         and '-I POSTROUTING 1 -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING' in jumps["nat"]
         and '-I FORWARD 1 -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD' in jumps["filter"],
         "iptables: jumps from PREROUTING, OUTPUT, POSTROUTING, FORWARD")

    nft = render_nftables(services, node)
    for line in [
        "add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }",
        "add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }",
        "add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }",
        "add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips",
        "add rule ip kube-proxy services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports",
        "add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000",
        "add rule ip kube-proxy masquerading mark and 0x4000 == 0 return",
        "add rule ip kube-proxy masquerading masquerade fully-random",
        "add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 ip daddr 172.30.0.41 tcp dport 80 "
        "ip saddr != 10.0.0.0/8 jump mark-for-masquerade",
        "add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 numgen random mod 1 vmap "
        "{ 0 : goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 }",
        "add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 ip saddr 10.180.0.1 "
        "jump mark-for-masquerade",
        "add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 meta l4proto tcp "
        "dnat to 10.180.0.1:80",
        "add element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }",
        "add element ip kube-proxy nodeport-ips { 192.168.0.2 }",
        'add element ip kube-proxy no-endpoint-services { 172.30.0.43 . tcp . 80 comment "ns3/svc3:p80" '
        ": goto reject-chain }",
    ]:
        want(line in nft.splitlines(), f"nftables: missing line {line!r}")
    want(re.search(r"numgen random mod 3 vmap \{ 0 : goto endpoint-\S+ , 1 : goto endpoint-\S+ , "
                   r"2 : goto endpoint-\S+__10\.180\.0\.4/81 \}", nft) is not None, "nftables: numgen over 3 endpoints")
    want(re.search(r"add element ip kube-proxy service-nodeports \{ tcp \. 3001 : goto external-\S+ns2/svc2/tcp/p80 \}",
                   nft) is not None, "nftables: NodePort element")
    want("meta l4proto udp dnat to 10.180.0.4:81" in nft, "nftables: UDP dnat")
    return problems


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--selfcheck"]:
        problems = selfcheck()
        for p in problems:
            print(f"FAIL {p}")
        print(f"=== kubeproxy selfcheck: {'PASS' if not problems else 'FAIL'} ({len(problems)} problem(s))")
        return 1 if problems else 0
    if argv[:1] == ["--render"] and len(argv) == 2 and argv[1] in ("iptables", "nftables"):
        services, node = sample()
        if argv[1] == "iptables":
            print(render_iptables(services, node), end="")
            for table, lines in render_iptables_jumps().items():
                print(f"# {table} (iptables-restore --noflush)\n" + "\n".join(lines))
        else:
            print(render_nftables(services, node), end="")
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
