"""Two signet nodes on one machine, for the cross-node handshake tests
(test_handshake_nodes.py, test_handshake_attacks.py). Python 3 stdlib only.

Topology (every name below is private to a netns, so parallel runs never clash)::

    host netns: signetd node-a, signetd node-b (own sockets, state dirs, credentials;
                one shared manifest folder = the cluster view); reach pods by netns path
    node netns A (sgt-PID-N)                      node netns B
      sgbr0 10.244.X.1/24, fd53:47:P:1::1/64        sgbr0 10.244.Y.1/24, fd53:47:P:2::1/64
        veths of pods a, d                            veths of pods b, c
      wire-a 192.168.255.1/30, fd53:ffff::1/64 ==== wire-b 192.168.255.2/30, fd53:ffff::2/64
      route 10.244.Y.0/24 via 192.168.255.2         route 10.244.X.0/24 via 192.168.255.1

Each node's pods are made by the real CNI chain (bridge + host-local + signet)
run *inside* the node netns: the chain's CNI_PATH is a per-node folder whose
`bridge` is a script running the real bridge plugin under `ip netns exec NODE`
(so the bridge, the host ends of the veths and the gateway addresses land in
the node netns; bridge calls host-local from there). `host-local` and `signet`
are symlinks: host-local only touches files, signet only talks to its signetd
over a unix socket (not netns-bound), and signetd opens the pod netns by path
(/run/netns/...), wherever the bridge put its veth.

Raw packets: built here (IPv4/IPv6 + TCP SYN with or without the signet option
kind 253 / ExID 0x5347, token as payload, checksums computed), sent from a
netns through an IPPROTO_RAW socket opened inside it; captured on a netns's
interface with AF_PACKET. scapy is not needed (and is not installed here).
"""
from __future__ import annotations

import ctypes
import ipaddress
import json
import os
import random
import select
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import harness

NODE_A, NODE_B = "node-a", "node-b"
NS = "x"  # the pods' Kubernetes namespace
PORT = 8080
WIRE4 = ("192.168.255.1", "192.168.255.2")
WIRE6 = ("fd53:ffff::1", "fd53:ffff::2")
OPT_KIND, OPT_EXID = 253, 0x5347

CLONE_NEWNET = 0x40000000
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
_libc = ctypes.CDLL(None, use_errno=True)
_netns_lock = threading.Lock()


# --------------------------------------------------------------------------
# netns entry for this thread

class InNetns:
    """Enter a named netns on this thread (setns), back on exit. Sockets made
    inside stay in that netns. Serialized: one netns switch at a time."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        _netns_lock.acquire()
        self.home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                e = ctypes.get_errno()
                raise OSError(e, f"setns {self.name}: {os.strerror(e)}")
        except BaseException:
            os.close(self.home)
            _netns_lock.release()
            raise
        finally:
            os.close(fd)
        return self

    def __exit__(self, *exc):
        try:
            if _libc.setns(self.home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back home")
        finally:
            os.close(self.home)
            _netns_lock.release()


# --------------------------------------------------------------------------
# packets

def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def signet_option(token_len: int, version: int = 1, flags: int = 0) -> bytes:
    """The 8-byte marker: kind 253, len 8, ExID 0x5347, version, flags, token length (BE)."""
    return struct.pack("!BBHBBH", OPT_KIND, 8, OPT_EXID, version, flags, token_len)


LINUX_SYN_OPTIONS = (struct.pack("!BBH", 2, 4, 1460) + bytes([1, 1, 4, 2]) + bytes([1, 3, 3, 7]))  # MSS, SACK-perm, WS


def tcp_segment(src: str, dst: str, sport: int, dport: int, seq: int, *, flags: int = 0x02, ack: int = 0,
                options: bytes = LINUX_SYN_OPTIONS, payload: bytes = b"", window: int = 64240) -> bytes:
    """A whole IP packet (IPv4 or IPv6 after the addresses) with a TCP segment, checksums right."""
    assert len(options) % 4 == 0
    v6 = ":" in src
    off = (20 + len(options)) // 4
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack, off << 4, flags, window, 0, 0) + options + payload
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    if v6:
        pseudo = s + d + struct.pack("!IxxxB", len(tcp), 6)
    else:
        pseudo = s + d + struct.pack("!xBH", 6, len(tcp))
    c = _csum(pseudo + tcp)
    tcp = tcp[:16] + struct.pack("!H", c) + tcp[18:]
    if v6:
        return struct.pack("!IHBB", 6 << 28, len(tcp), 6, 64) + s + d + tcp
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), random.randrange(65536), 0x4000, 64, 6, 0, s, d)
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    return ip + tcp


def syn(src, dst, sport, dport, isn, token: bytes | None = None, *, declared_len: int | None = None) -> bytes:
    """A SYN like Linux's; with `token`: the signet option first and the token as payload
    (declared_len: what the option says, default the token's length)."""
    if token is None:
        return tcp_segment(src, dst, sport, dport, isn)
    opt = signet_option(len(token) if declared_len is None else declared_len)
    return tcp_segment(src, dst, sport, dport, isn, options=opt + LINUX_SYN_OPTIONS, payload=token)


class Seg:
    """A parsed IP/TCP packet (what the tests need of it)."""

    def __init__(self, pkt: bytes):
        self.raw = pkt
        self.ok = False
        if len(pkt) >= 20 and pkt[0] >> 4 == 4 and pkt[9] == 6:
            ihl = (pkt[0] & 15) * 4
            self.v6 = False
            self.src = socket.inet_ntop(socket.AF_INET, pkt[12:16])
            self.dst = socket.inet_ntop(socket.AF_INET, pkt[16:20])
            self.l4 = ihl
        elif len(pkt) >= 40 and pkt[0] >> 4 == 6 and pkt[6] == 6:
            self.v6 = True
            self.src = socket.inet_ntop(socket.AF_INET6, pkt[8:24])
            self.dst = socket.inet_ntop(socket.AF_INET6, pkt[24:40])
            self.l4 = 40
        else:
            return
        t = pkt[self.l4:]
        if len(t) < 20:
            return
        self.sport, self.dport, self.seq, self.ack = struct.unpack("!HHII", t[:12])
        self.doff = (t[12] >> 4) * 4
        self.flags = t[13]
        self.options = t[20:self.doff]
        self.payload = t[self.doff:]
        self.ok = True

    @property
    def is_syn(self):
        return self.ok and self.flags & 0x12 == 0x02 and not self.flags & 0x04

    @property
    def is_synack(self):
        return self.ok and self.flags & 0x12 == 0x12

    def signet_option(self):
        """(version, flags, token length) of the signet option, or None."""
        o = self.options
        i = 0
        while i < len(o):
            k = o[i]
            if k == 0:
                break
            if k == 1:
                i += 1
                continue
            if i + 1 >= len(o) or o[i + 1] < 2:
                break
            ln = o[i + 1]
            if k == OPT_KIND and ln == 8 and struct.unpack("!H", o[i + 2:i + 4])[0] == OPT_EXID:
                return o[i + 4], o[i + 5], struct.unpack("!H", o[i + 6:i + 8])[0]
            i += ln
        return None

    def with_sport(self, sport: int) -> bytes:
        """The same packet from another source port, TCP checksum recomputed."""
        p = bytearray(self.raw)
        t = self.l4
        struct.pack_into("!H", p, t, sport)
        struct.pack_into("!H", p, t + 16, 0)
        seg = bytes(p[t:])
        s, d = ipaddress.ip_address(self.src).packed, ipaddress.ip_address(self.dst).packed
        pseudo = (s + d + struct.pack("!IxxxB", len(seg), 6)) if self.v6 else (s + d + struct.pack("!xBH", 6, len(seg)))
        struct.pack_into("!H", p, t + 16, _csum(pseudo + seg))
        return bytes(p)

    def __repr__(self):
        if not self.ok:
            return f"<not TCP {self.raw[:16].hex()}>"
        fl = "".join(c for c, b in zip("FSRPAU", (1, 2, 4, 8, 16, 32)) if self.flags & b)
        o = self.signet_option()
        return (f"<{self.src}:{self.sport} -> {self.dst}:{self.dport} {fl} seq={self.seq} "
                f"payload={len(self.payload)}{' signet-opt=' + repr(o) if o else ''}>")


def send_raw(netns: str, pkt: bytes) -> None:
    """Send a whole IP packet from inside `netns` (IPPROTO_RAW: the header as given)."""
    seg = Seg(pkt)
    fam = socket.AF_INET6 if seg.v6 else socket.AF_INET
    with InNetns(netns):
        s = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_RAW)
    try:
        s.sendto(pkt, (seg.dst, 0))
    finally:
        s.close()


class Capture:
    """AF_PACKET capture of IP packets on one interface of a netns, in a thread.
    Records (time, direction 'in'|'out', Seg) of TCP packets."""

    def __init__(self, netns: str, ifname: str):
        with InNetns(netns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
            self.sock.bind((ifname, 0))
        self.packets: list[tuple[float, str, Seg]] = []
        self._stop = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self):
        while not self._stop:
            r, _, _ = select.select([self.sock], [], [], 0.1)
            if not r:
                continue
            try:
                data, addr = self.sock.recvfrom(65535)
            except OSError:
                return
            seg = Seg(data)
            if seg.ok:
                with self._lock:
                    self.packets.append((time.monotonic(), "out" if addr[2] == PACKET_OUTGOING else "in", seg))

    def find(self, pred, since: float = 0.0) -> list[Seg]:
        with self._lock:
            return [s for t, _, s in self.packets if t >= since and pred(s)]

    def wait_for(self, pred, timeout: float, since: float = 0.0) -> Seg | None:
        deadline = time.monotonic() + timeout
        while True:
            got = self.find(pred, since)
            if got:
                return got[0]
            if time.monotonic() > deadline:
                return None
            time.sleep(0.02)

    def close(self):
        self._stop = True
        self._thread.join(1)
        self.sock.close()


# --------------------------------------------------------------------------
# the two nodes

def signetd_knows_handshake(bins) -> bool:
    p = harness.sh(bins["signetd"], "--help", check=False)
    return "--handshake" in (p.stdout + p.stderr)


def handshake_of(status: dict) -> dict:
    h = status.get("handshake")
    return h if isinstance(h, dict) else {}


class Node:
    def __init__(self, name: str, netns: str, wire: str, subnet4, subnet6, gw4, gw6, signetd, cni_dir):
        self.name, self.netns, self.wire = name, netns, wire
        self.subnet4, self.subnet6, self.gw4, self.gw6 = subnet4, subnet6, gw4, gw6
        self.d = signetd
        self.cni_dir = cni_dir
        self.chain: harness.Chain | None = None


class Pod:
    def __init__(self, name, node: Node, labels, uid, netns, path, cid, ips, result):
        self.name, self.node, self.labels, self.uid = name, node, labels, uid
        self.netns, self.path, self.cid, self.result = netns, path, cid, result
        self.ip4 = next((i for i in ips if ":" not in i), None)
        self.ip6 = next((i for i in ips if ":" in i), None)

    def ip(self, v6=False):
        return self.ip6 if v6 else self.ip4


class TwoNodes:
    """Builds the topology; `start(mode)` (re)starts both signetd; `add_pods` runs the CNI
    chains and writes the cluster view. Everything is registered with the Run."""

    def __init__(self, t: harness.Test, run: harness.Run, bins: dict, *, ipv6: bool = True):
        self.t, self.run, self.bins = t, run, bins
        self.ipv6 = ipv6
        self.tmp = Path(run.mkdtemp("twonode"))
        self.manifests = self.tmp / "manifests"
        self.manifests.mkdir()
        self.objects: list[dict] = []
        self.pods: dict[str, Pod] = {}
        self.mode: str | None = None
        ctl = str(bins["signetctl"])
        # One cluster authority, on no node (signetd refuses ca.key in --authority
        # without --allow-ca-key): each node gets credentials issued beforehand.
        self.ca = self.tmp / "ca"
        p = harness.sh(ctl, "authority", "init", self.ca, "--trust-domain", "test.local", check=False)
        t.require("signetctl authority init (the cluster authority)", p.returncode == 0, p.stdout + p.stderr)
        self.creds_a = self.tmp / "creds-node-a"
        self.creds_b = self.tmp / "creds-node-b"
        for node, out in ((NODE_A, self.creds_a), (NODE_B, self.creds_b)):
            p = harness.sh(ctl, "authority", "issue", self.ca, "--node", node, "--out", out, check=False)
            t.require(f"signetctl authority issue --node {node}", p.returncode == 0, p.stdout + p.stderr)

        pid = os.getpid() & 0xFFFF
        self.nodes: dict[str, Node] = {}
        for i, (name, adir) in enumerate(((NODE_A, self.creds_a), (NODE_B, self.creds_b))):
            ns, _ = run.netns_add()
            s4 = run.alloc_subnet()
            s6 = ipaddress.ip_network(f"fd53:47:{pid:x}:{i + 1}::/64")
            d = harness.Signetd(run, bins, node=name, manifest_dir=self.manifests)
            d.authority = adir
            cni_dir = Path(run.mkdtemp(f"cni-{name}"))
            (cni_dir / "bridge").write_text(
                f"#!/bin/sh\nexec /usr/sbin/ip netns exec {ns} {harness.CNI_BIN_DIR}/bridge \"$@\"\n")
            (cni_dir / "bridge").chmod(0o755)
            os.symlink(f"{harness.CNI_BIN_DIR}/host-local", cni_dir / "host-local")
            os.symlink(str(Path(bins["signet"]).resolve()), cni_dir / "signet")
            self.nodes[name] = Node(name, ns, "wire-a" if i == 0 else "wire-b", s4, s6,
                                    str(s4.network_address + 1), str(s6.network_address + 1), d, cni_dir)
        a, b = self.nodes[NODE_A], self.nodes[NODE_B]
        for n in (a, b):
            for k, v in (("net.ipv4.ip_forward", 1), ("net.ipv6.conf.all.forwarding", 1),
                         ("net.ipv6.conf.default.accept_dad", 0), ("net.ipv6.conf.all.accept_dad", 0),
                         ("net.ipv4.conf.all.rp_filter", 0), ("net.ipv4.conf.default.rp_filter", 0)):
                harness.sh("ip", "netns", "exec", n.netns, "sysctl", "-qw", f"{k}={v}")
        harness.sh("ip", "-n", a.netns, "link", "add", "wire-a", "type", "veth", "peer", "name", "wire-b",
                   "netns", b.netns)
        for n, w4, w6, other in ((a, WIRE4[0], WIRE6[0], b), (b, WIRE4[1], WIRE6[1], a)):
            harness.sh("ip", "-n", n.netns, "addr", "add", f"{w4}/30", "dev", n.wire)
            harness.sh("ip", "-n", n.netns, "addr", "add", f"{w6}/64", "dev", n.wire, "nodad")
            harness.sh("ip", "-n", n.netns, "link", "set", n.wire, "up")
            peer4 = WIRE4[1] if n is a else WIRE4[0]
            peer6 = WIRE6[1] if n is a else WIRE6[0]
            harness.sh("ip", "-n", n.netns, "route", "add", str(other.subnet4), "via", peer4)
            harness.sh("ip", "-n", n.netns, "-6", "route", "add", str(other.subnet6), "via", peer6)
        t.note(f"node-a: netns {a.netns}, pods {a.subnet4} {a.subnet6}; node-b: netns {b.netns}, "
               f"pods {b.subnet4} {b.subnet6}; wire {WIRE4[0]} <-> {WIRE4[1]}")

    # signetd ---------------------------------------------------------------
    def start(self, mode: str | None, *, node_netns: bool = False, extra: list[str] = ()) -> None:
        """(Re)start both signetd with --handshake MODE (None: without the flag); with
        node_netns, each is told its node netns (--node-netns: where kube-proxy translates
        Services); `extra` flags go to both."""
        for n in self.nodes.values():
            if n.d.running:
                n.d.stop()
            n.d.extra_args = ["--authority", f"dir:{n.d.authority}"]
            if mode is not None:
                n.d.extra_args += ["--handshake", mode]
            if node_netns:
                n.d.extra_args += ["--node-netns", f"/run/netns/{n.netns}"]
            n.d.extra_args += list(extra)
            n.d.start()
        self.mode = mode

    def status(self, node: str) -> dict:
        return self.nodes[node].d.status()

    def sync(self) -> None:
        for n in self.nodes.values():
            p = n.d.sync()
            self.t.require(f"{n.name}: signetctl sync", p.returncode == 0, p.stdout + p.stderr)

    # cluster view ------------------------------------------------------------
    def write_view(self) -> None:
        items = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS, "labels": {"team": "x"}}}]
        for p in self.pods.values():
            status = {"phase": "Running"}
            ips = [i for i in (p.ip4, p.ip6) if i]
            if ips:
                status["podIP"] = ips[0]
                status["podIPs"] = [{"ip": i} for i in ips]
            items.append({"apiVersion": "v1", "kind": "Pod",
                          "metadata": {"name": p.name, "namespace": NS, "uid": p.uid, "labels": p.labels},
                          "spec": {"nodeName": p.node.name,
                                   "containers": [{"name": "c", "image": "x",
                                                   "ports": [{"name": "echo", "containerPort": PORT}]}]},
                          "status": status})
        items += self.objects
        f = self.manifests / "cluster.json"
        tmp = self.manifests / ".cluster.json.tmp"
        tmp.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}, indent=1))
        os.rename(tmp, f)

    def add_policy(self, name: str, target_app: str, from_apps: list[str], ip_blocks: list[str] = ()) -> None:
        """Ingress to app=target_app on PORT from pods app in from_apps (podSelector) and
        from the ip_blocks (ipBlock peers)."""
        peers = [{"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": from_apps}]}}]
        peers += [{"ipBlock": {"cidr": c}} for c in ip_blocks]
        self.objects.append({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"podSelector": {"matchLabels": {"app": target_app}}, "policyTypes": ["Ingress"],
                     "ingress": [{"from": peers, "ports": [{"protocol": "TCP", "port": PORT}]}]}})

    def chain_for(self, node: str, *, with_signet: bool = True) -> harness.Chain:
        """The CNI chain of a node's pods: the real bridge plugin (run inside the node netns,
        bridge sgbr0, the node's gateway, hairpin on), host-local with the node's subnets and a
        default route through the gateway (so a ClusterIP is routed to the node), and signet
        talking to this node's signetd (with_signet=False: the bridge alone)."""
        n = self.nodes[node]
        ranges = [[{"subnet": str(n.subnet4), "gateway": n.gw4}]]
        routes = [{"dst": "0.0.0.0/0"}]
        if self.ipv6:
            ranges.append([{"subnet": str(n.subnet6), "gateway": n.gw6}])
            routes.append({"dst": "::/0"})
        plugins = [{"type": "bridge", "bridge": "sgbr0", "isGateway": True, "ipMasq": False, "hairpinMode": True,
                    "ipam": {"type": "host-local", "ranges": ranges, "routes": routes,
                             "dataDir": self.run.mkdtemp("ipam")}}]
        if with_signet:
            plugins.append({"type": "signet", "socket": n.d.socket})
        conflist = {"cniVersion": "1.0.0", "name": f"signet-{n.name}", "plugins": plugins}
        return harness.Chain(conflist, [str(n.cni_dir)])

    def add_pods(self, spec: list[tuple[str, str]]) -> None:
        """spec: [(pod name, node name)], label app=<pod name>. Pods are announced (without
        addresses) first, as the API server would before the CNI ADD; then each node's
        chain runs; then the view gets status.podIPs, and both nodes sync."""
        for name, node in spec:
            self.pods[name] = Pod(name, self.nodes[node], {"app": name}, self.run.uid(), None, None, None, [], None)
        self.write_view()
        self.sync()
        for n in self.nodes.values():
            n.chain = self.chain_for(n.name)
        for name, node in spec:
            p = self.pods[name]
            n = self.nodes[node]
            netns, path = self.run.netns_add()
            p.netns, p.path = netns, path
            harness.sh("ip", "netns", "exec", netns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
                       "net.ipv6.conf.default.accept_dad=0")
            p.cid = self.run.container_id()
            args = harness.k8s_args(NS, name, p.uid, p.cid)
            try:
                res, _ = n.chain.add(p.cid, path, "eth0", args)
            except harness.ChainError as e:
                self.t.require(f"CNI ADD of pod {name} on {node} (in the node netns)", False, repr(e))
            p.result = res
            ips = [a.split("/")[0] for a in harness.result_ips(res)]
            p.ip4 = next((i for i in ips if ":" not in i), None)
            p.ip6 = next((i for i in ips if ":" in i), None)
            self.run.on_cleanup(f"CNI DEL {name}", lambda c=n.chain, p=p, a=args:
                                c.delete(p.cid, p.path, "eth0", a, p.result, best_effort=True))
        self.write_view()
        self.sync()
        self.t.note("pods: " + ", ".join(f"{p.name}@{p.node.name}={p.ip4},{p.ip6}" for p in self.pods.values()))

    # traffic ---------------------------------------------------------------
    def serve(self, pod: str) -> None:
        p = self.pods[pod]
        srv = subprocess.Popen(["ip", "netns", "exec", p.netns, "/usr/bin/python3", "-c", harness.ECHO_SERVER, str(PORT)],
                               stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, start_new_session=True)
        self.run.own_process(srv, f"echo server in {pod}")
        self.t.require(f"echo server ready in {pod}", srv.stdout.readline().strip() == "ready")

    def netns_of(self, who: str) -> str:
        """A pod's netns, or a node's (who = "node-a" / "node-b": a peer that is not a pod)."""
        return self.nodes[who].netns if who in self.nodes else self.pods[who].netns

    def connect(self, frm: str, to: str, v6=False, timeout=1.5, nbytes=3000) -> str:
        """'ok', 'short N' or 'fail <Exception>' (python3 in the client's netns; frm: a pod
        or a node name)."""
        p = harness.sh("ip", "netns", "exec", self.netns_of(frm), "/usr/bin/python3", "-c", harness.ECHO_CLIENT,
                       self.pods[to].ip(v6), str(PORT), str(nbytes), str(timeout), check=False, timeout=30)
        return (p.stdout.strip() or f"fail (no output; rc {p.returncode}: {p.stderr.strip()[-300:]})")

    def matrix(self, cases: list[tuple[str, str, bool, bool]]) -> dict:
        """cases: [(from, to, v6, want_allowed)] run concurrently; returns {(from, to, v6): result}."""
        res = harness.parallel(lambda c: self.connect(c[0], c[1], c[2]), cases, workers=len(cases))
        return {(c[0], c[1], c[2]): (r if isinstance(r, str) else f"fail {r!r}") for c, r in res}

    def flows(self, node: str) -> list[dict]:
        p = self.nodes[node].d.ctl("flows", "-o", "json", "--limit", "1000")
        if p.returncode != 0:
            return []
        try:
            return json.loads(p.stdout).get("flows", [])
        except json.JSONDecodeError:
            return []

    def log_tails(self, lines=40) -> str:
        return "\n".join(f"--- {n.name} signetd log (last {lines} lines):\n{n.d.log_tail(lines)}"
                         for n in self.nodes.values())


def find(records, **want):
    """Flow records matching every key (a__b: nested)."""
    out = []
    for r in records:
        ok = True
        for k, v in want.items():
            got = r
            for part in k.split("__"):
                got = got.get(part) if isinstance(got, dict) else None
            if got != v:
                ok = False
                break
        if ok:
            out.append(r)
    return out


# --------------------------------------------------------------------------
# did a SYN reach the server's TCP stack?

class SynProbe:
    """An nftables table of the test's own in a server pod's netns: a chain at the
    input hook, priority 100 (after signet's chains at priority 0), with one
    counting rule per source port. A SYN counted there was accepted by signet's
    queue verdict and reached the pod's TCP stack."""

    TABLE = "sgt_probe"

    def __init__(self, netns: str):
        self.netns = netns
        harness.sh("ip", "netns", "exec", netns, "nft", "-f", "-", input=(
            f"table inet {self.TABLE} {{\n"
            "  chain in { type filter hook input priority 100; policy accept; }\n"
            "}\n"))

    def watch(self, sport: int, tag: str, any_segment: bool = False) -> None:
        """Counts the SYNs from `sport` (any_segment: every segment from it)."""
        match = [] if any_segment else ["tcp", "flags", "&", "(syn|ack)", "==", "syn"]
        harness.sh("ip", "netns", "exec", self.netns, "nft", "add", "rule", "inet", self.TABLE, "in",
                   "tcp", "sport", str(sport), *match, "counter", "comment", f"\"{tag}\"")

    def count(self, tag: str) -> int | None:
        p = harness.sh("ip", "netns", "exec", self.netns, "nft", "-j", "list", "chain", "inet", self.TABLE, "in",
                       check=False)
        try:
            items = json.loads(p.stdout)["nftables"]
        except (json.JSONDecodeError, KeyError):
            return None
        for it in items:
            r = it.get("rule")
            if r and r.get("comment") == tag:
                for e in r.get("expr", []):
                    if "counter" in e:
                        return e["counter"]["packets"]
        return None


def mint(bins_dir: Path, **kw) -> bytes:
    """handshake_mint with --key value arguments (key underscores -> dashes; True: a switch)."""
    argv = [str(bins_dir / "test" / "datapath" / "handshake_mint")]
    for k, v in kw.items():
        if v is False or v is None:
            continue
        argv.append("--" + k.replace("_", "-"))
        if v is not True:
            argv.append(str(v))
    p = harness.sh(*argv, check=False)
    if p.returncode != 0:
        raise harness.Fatal(f"handshake_mint failed ({p.returncode}): {p.stderr.strip()}\n  {' '.join(argv)}")
    return bytes.fromhex(p.stdout.strip())
