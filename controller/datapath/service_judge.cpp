#include "datapath/service_judge.h"

#include <cerrno>
#include <cstring>

namespace signet::handshake {

namespace {

uint16_t be16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }

bool has_ports(uint8_t proto) { return proto == 6 || proto == 17 || proto == 132 || proto == 136; }  // TCP UDP SCTP UDP-Lite

}  // namespace

Result<L4Tuple> parse_l4(std::span<const uint8_t> pkt) {
    if (pkt.empty()) return make_error(EBADMSG, "empty packet");
    L4Tuple t;
    size_t l4 = 0;
    const int version = pkt[0] >> 4;
    if (version == 4) {
        if (pkt.size() < 20) return make_error(EBADMSG, "IPv4 header truncated");
        size_t ihl = static_cast<size_t>(pkt[0] & 0x0f) * 4;
        if (ihl < 20 || ihl > pkt.size()) return make_error(EBADMSG, "IPv4 header length invalid");
        uint16_t frag = be16(&pkt[6]);
        if ((frag & 0x1fff) != 0) return make_error(EBADMSG, "IPv4 fragment after the first");
        t.src.family = t.dst.family = nft::Family::v4;
        std::memcpy(t.src.addr.bytes.data(), &pkt[12], 4);
        std::memcpy(t.dst.addr.bytes.data(), &pkt[16], 4);
        t.proto = pkt[9];
        l4 = ihl;
    } else if (version == 6) {
        if (pkt.size() < 40) return make_error(EBADMSG, "IPv6 header truncated");
        t.src.family = t.dst.family = nft::Family::v6;
        std::memcpy(t.src.addr.bytes.data(), &pkt[8], 16);
        std::memcpy(t.dst.addr.bytes.data(), &pkt[24], 16);
        uint8_t next = pkt[6];
        size_t off = 40;
        for (int hops = 0; hops < 8; ++hops) {
            if (next == 0 || next == 43 || next == 60) {  // hop-by-hop, routing, destination options
                if (off + 8 > pkt.size()) return make_error(EBADMSG, "IPv6 extension header truncated");
                size_t len = (static_cast<size_t>(pkt[off + 1]) + 1) * 8;
                next = pkt[off];
                off += len;
                if (off > pkt.size()) return make_error(EBADMSG, "IPv6 extension header truncated");
                continue;
            }
            if (next == 44) {  // fragment
                if (off + 8 > pkt.size()) return make_error(EBADMSG, "IPv6 fragment header truncated");
                if ((be16(&pkt[off + 2]) & 0xfff8) != 0) return make_error(EBADMSG, "IPv6 fragment after the first");
                next = pkt[off];
                off += 8;
                continue;
            }
            break;
        }
        if (next == 0 || next == 43 || next == 44 || next == 60)
            return make_error(EBADMSG, "IPv6: more than 8 extension headers");
        t.proto = next;
        l4 = off;
    } else {
        return make_error(EBADMSG, "not an IP packet (version " + std::to_string(version) + ")");
    }
    if (has_ports(t.proto)) {
        if (l4 + 4 > pkt.size()) return make_error(EBADMSG, "transport header truncated");
        t.sport = be16(&pkt[l4]);
        t.dport = be16(&pkt[l4 + 2]);
        if (t.proto == 6 && l4 + 14 <= pkt.size()) t.tcp_flags = pkt[l4 + 13];
    }
    return t;
}

Decision ServiceJudge::judge(const QueuedPacket& p) {
    Decision d;
    d.verdict = kDrop;
    if (p.malformed) {
        ++counters_.malformed;
        return d;
    }
    auto t = parse_l4(p.payload);
    if (!t) {
        ++counters_.malformed;
        return d;
    }
    if (ctx_.tcp_handshake && t->proto == 6) {
        auto hd = ctx_.tcp_handshake(p);
        if (hd) {
            // Connections are counted at their SYN; the rest is the handshake's.
            if ((t->tcp_flags & 0x12) == 0x02) {
                ++counters_.judged;
                ++(hd->verdict == kAccept ? counters_.allowed : counters_.denied);
            } else {
                ++counters_.handshake_segments;
            }
            return *hd;
        }
    }
    auto client = ctx_.local_pod ? ctx_.local_pod(t->src) : std::nullopt;
    if (!client) {
        // The rules queue only the judged pods' addresses: a pod gone meanwhile.
        ++counters_.not_a_local_pod;
        return d;
    }
    ++counters_.judged;
    policy::ConnKey k;
    k.ingress = false;
    k.local = *client;
    k.peer_pod = ctx_.pod_at ? ctx_.pod_at(t->dst) : std::nullopt;
    k.peer_ip = t->dst;
    k.proto = t->proto;
    k.port = t->dport;
    auto v = ctx_.policy ? ctx_.policy->check(k) : policy::ConnVerdict{};
    if (v.answered && v.allowed) {
        ++counters_.allowed;
        d.verdict = kAccept;
        return d;
    }
    if (ctx_.audit && ctx_.audit(*client)) {
        ++counters_.audit_denied;
        d.verdict = kAccept;
        return d;
    }
    ++counters_.denied;
    Denial den;
    den.client = client->namespace_ + "/" + client->name;
    den.backend_ip = policy::to_string(t->dst);
    den.backend = k.peer_pod ? k.peer_pod->namespace_ + "/" + k.peer_pod->name : den.backend_ip;
    den.proto = t->proto;
    den.port = t->dport;
    den.isolated = v.isolated;
    if (denials_.size() >= 32) denials_.pop_front();
    denials_.push_back(std::move(den));
    return d;
}

}  // namespace signet::handshake
