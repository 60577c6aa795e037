#!/usr/bin/env python3
"""Real kernels' handshake packets through the packet layer.

Two network namespaces joined by a veth pair (IPv4 and IPv6). A listener in
netns B, a connect() from netns A; an AF_PACKET socket on B's veth captures
the SYN and SYN-ACK exactly as the kernel built them (with PACKET_AUXDATA, so
we know whether the TCP checksum is complete or CHECKSUM_PARTIAL). Two rounds:
tx checksum offload off (complete checksums) and on (partial checksums, as
NFQUEUE with NFQA_CFG_F_GSO would deliver them).

Each packet goes through handshake_packet_check (parse, add token, verify
checksums, strip, compare byte for byte); then scapy (python3-scapy) parses the
tokened packet, recomputes its checksums and must find the signet option and
the token, with every field of the original unchanged.

usage: test_kernel_packets.py HANDSHAKE_PACKET_CHECK
Exit 77 (meson: SKIP) only when a capability is truly absent.
"""
import ctypes
import fcntl
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time

CLONE_NEWNET = 0x40000000
SIOCETHTOOL = 0x8946
ETHTOOL_GTXCSUM, ETHTOOL_STXCSUM = 0x16, 0x17
SOL_PACKET, PACKET_AUXDATA = 263, 8
TP_STATUS_CSUMNOTREADY = 8
ETH_P_ALL = 0x0003
TOKEN = bytes(range(1, 200)) + b"signet"  # 205 bytes: odd length on purpose

failures = []


def skip(why):
    print("\n*** SKIP test_kernel_packets: %s ***\n" % why, flush=True)
    sys.exit(77)


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL: " + what, flush=True)


def sh(*args):
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


libc = ctypes.CDLL(None, use_errno=True)


class InNetns:
    """Create sockets inside a named netns (setns on this thread, then back)."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.home = os.open("/proc/self/ns/net", os.O_RDONLY)
        fd = os.open("/run/netns/" + self.name, os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns " + self.name)
        finally:
            os.close(fd)

    def __exit__(self, *exc):
        libc.setns(self.home, CLONE_NEWNET)
        os.close(self.home)


def set_tx_csum(ifname, on):
    """ethtool -K IF tx on|off, without ethtool: SIOCETHTOOL/ETHTOOL_STXCSUM."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        val = ctypes.create_string_buffer(struct.pack("II", ETHTOOL_STXCSUM, 1 if on else 0))
        ifr = bytearray(struct.pack("16sP", ifname.encode(), ctypes.addressof(val)).ljust(40, b"\0"))
        fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifr)
        get = ctypes.create_string_buffer(struct.pack("II", ETHTOOL_GTXCSUM, 0))
        ifr = bytearray(struct.pack("16sP", ifname.encode(), ctypes.addressof(get)).ljust(40, b"\0"))
        fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifr)
        return struct.unpack("II", get.raw[:8])[1] != 0
    finally:
        s.close()


def tcp_view(pkt):
    """(family, tcp offset) of a captured IP packet without extension headers, or None."""
    if len(pkt) >= 20 and pkt[0] >> 4 == 4 and pkt[9] == 6:
        return 4, (pkt[0] & 15) * 4
    if len(pkt) >= 40 and pkt[0] >> 4 == 6 and pkt[6] == 6:
        return 6, 40
    return None


def handshake_round(ns_a, ns_b, offload):
    """Connect A -> B over IPv4 and IPv6; return the captured [(family, kind, bytes, csum_not_ready)]."""
    with InNetns(ns_a):
        got_a = set_tx_csum("va", offload)
    with InNetns(ns_b):
        got_b = set_tx_csum("vb", offload)
        cap = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        cap.bind(("vb", 0))
        cap.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        l4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        l4.bind(("10.77.0.2", 0))
        l4.listen(4)
        l6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        l6.bind(("fd77::2", 0))
        l6.listen(4)
    check(got_a == offload and got_b == offload, "tx checksum offload %s on both veths" % ("on" if offload else "off"))
    ports = {l4.getsockname()[1], l6.getsockname()[1]}
    clients = []
    with InNetns(ns_a):
        for fam, addr in ((socket.AF_INET, ("10.77.0.2", l4.getsockname()[1])),
                          (socket.AF_INET6, ("fd77::2", l6.getsockname()[1]))):
            c = socket.socket(fam, socket.SOCK_STREAM)
            c.settimeout(5)
            c.connect(addr)
            clients.append(c)

    found = {}
    deadline = time.monotonic() + 5
    while len(found) < 4 and time.monotonic() < deadline:
        r, _, _ = select.select([cap], [], [], 0.2)
        if not r:
            continue
        data, anc, _, _ = cap.recvmsg(65536, socket.CMSG_SPACE(32))
        status = 0
        for level, typ, cdata in anc:
            if level == SOL_PACKET and typ == PACKET_AUXDATA:
                status = struct.unpack_from("I", cdata)[0]
        v = tcp_view(data)
        if not v:
            continue
        fam, off = v
        sport, dport = struct.unpack_from("!HH", data, off)
        flags = data[off + 13]
        if not (ports & {sport, dport}) or not flags & 0x02:
            continue
        kind = "SYN-ACK" if flags & 0x10 else "SYN"
        found.setdefault((fam, kind), (fam, kind, bytes(data), bool(status & TP_STATUS_CSUMNOTREADY)))
    for s in clients + [l4, l6, cap]:
        s.close()
    check(len(found) == 4, "captured IPv4/IPv6 SYN and SYN-ACK (got %s)" % sorted(found))
    return [found[k] for k in sorted(found)]


def scapy_check(original, tokened, tool_view, label):
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.packet import Raw

    cls = IP if original[0] >> 4 == 4 else IPv6
    o = cls(original)
    t = cls(tokened)
    ot, tt = o[TCP], t[TCP]
    # The tool saw what scapy sees in the kernel's packet.
    check(int(tool_view["sport"]) == ot.sport and int(tool_view["dport"]) == ot.dport, label + ": ports")
    check(int(tool_view["seq"]) == ot.seq and int(tool_view["ack"]) == ot.ack, label + ": seq/ack")
    check(int(tool_view["window"]) == ot.window, label + ": window")
    opts = dict((k, v) for k, v in ot.options if isinstance(k, str))
    check(int(tool_view["mss"]) == opts.get("MSS", -1), label + ": MSS")
    check(int(tool_view["wscale"]) == opts.get("WScale", -1), label + ": window scale")
    check(int(tool_view["sack_permitted"]) == (1 if "SAckOK" in opts else 0), label + ": SACK-permitted")
    if "Timestamp" in opts:
        check((int(tool_view["tsval"]), int(tool_view["tsecr"])) == opts["Timestamp"], label + ": timestamps")

    # scapy recomputes the checksums of the tokened packet: they must match.
    rebuilt = t.copy()
    del rebuilt[TCP].chksum
    if cls is IP:
        del rebuilt[IP].chksum
    rebuilt = cls(bytes(rebuilt))
    check(rebuilt[TCP].chksum == tt.chksum, "%s: scapy's TCP checksum 0x%04x == ours 0x%04x"
          % (label, rebuilt[TCP].chksum, tt.chksum))
    if cls is IP:
        check(rebuilt[IP].chksum == t[IP].chksum, label + ": IPv4 header checksum")
        check(t[IP].len == len(tokened), label + ": IPv4 total length")
    else:
        check(t[IPv6].plen == len(tokened) - 40, label + ": IPv6 payload length")
    # Our option first, the kernel's options after it unchanged; the token as payload.
    exp = b"\x53\x47\x01\x00" + struct.pack("!H", len(TOKEN))
    check(tt.options and tt.options[0] == (253, exp), "%s: signet option %r" % (label, tt.options[:1]))
    check(tt.options[1:] == ot.options, label + ": the kernel's options unchanged")
    check(Raw in t and bytes(t[Raw]) == TOKEN, label + ": token is the payload")
    check((tt.sport, tt.dport, tt.seq, tt.ack, tt.flags, tt.window) ==
          (ot.sport, ot.dport, ot.seq, ot.ack, ot.flags, ot.window), label + ": TCP header fields")


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    tool = sys.argv[1]
    if os.geteuid() != 0:
        skip("needs root (network namespaces, veth, AF_PACKET)")
    if not shutil.which("ip"):
        skip("no `ip` (iproute2)")
    try:
        import scapy.layers.inet  # noqa: F401
    except ImportError:
        skip("python3-scapy is not installed")

    ns_a = "signet-pkt-%d-a" % os.getpid()
    ns_b = "signet-pkt-%d-b" % os.getpid()
    created = []
    try:
        for ns in (ns_a, ns_b):
            r = subprocess.run(["ip", "netns", "add", ns], stderr=subprocess.PIPE, text=True)
            if r.returncode != 0:
                skip("cannot create a network namespace: " + r.stderr.strip())
            created.append(ns)
        sh("ip", "-n", ns_a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", ns_b)
        for ns, dev, n in ((ns_a, "va", 1), (ns_b, "vb", 2)):
            sh("ip", "-n", ns, "addr", "add", "10.77.0.%d/24" % n, "dev", dev)
            sh("ip", "-n", ns, "addr", "add", "fd77::%d/64" % n, "dev", dev, "nodad")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "set", dev, "up")

        with tempfile.TemporaryDirectory(prefix="signet-pkt-") as tmp:
            checked = 0
            for offload in (False, True):
                packets = handshake_round(ns_a, ns_b, offload)
                partial = [p for p in packets if p[3]]
                if offload:
                    check(len(partial) > 0, "offload on: some capture has a CHECKSUM_PARTIAL TCP checksum")
                else:
                    check(not partial, "offload off: every TCP checksum complete")
                for fam, kind, data, not_ready in packets:
                    label = "IPv%d %s (%s checksum)" % (fam, kind, "partial" if not_ready else "complete")
                    src = os.path.join(tmp, "in.bin")
                    dst = os.path.join(tmp, "out.bin")
                    with open(src, "wb") as f:
                        f.write(data)
                    r = subprocess.run([tool, "partial" if not_ready else "complete", src, dst, TOKEN.hex()],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                    check(r.returncode == 0, "%s: handshake_packet_check: %s" % (label, r.stderr.strip()))
                    if r.returncode != 0:
                        continue
                    view = dict(line.split("=", 1) for line in r.stdout.split())
                    check(view["segment"] == kind, "%s: classified as %s" % (label, view["segment"]))
                    check(int(view["header_len"]) == 40, "%s: Linux's 20 bytes of options (header %s)"
                          % (label, view["header_len"]))
                    with open(dst, "rb") as f:
                        tokened = f.read()
                    scapy_check(data, tokened, view, label)
                    checked += 1
                    print("ok: %s, %d bytes -> %d bytes with token, stripped back exactly"
                          % (label, len(data), len(tokened)), flush=True)
            check(checked == 8, "8 kernel packets checked (got %d)" % checked)
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
    if failures:
        print("%d check(s) failed" % len(failures))
        return 1
    print("all kernel packets passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
