// nfqueue_unit (suite unit): the queue layer's pure parts — the
// NFQNL_MSG_PACKET parser on built messages (several per datagram, malformed
// ones, verdict errors, unaligned input), the verdict message layout and the
// checksum completion of a CHECKSUM_PARTIAL replacement.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <linux/netlink.h>

#include <cstring>

#include "golden.h"
#include "datapath/nfqueue.h"
#include "datapath/packet.h"

using namespace signet::handshake;

namespace {

struct Msg {
    std::vector<uint8_t> b;
    explicit Msg(uint16_t type, uint16_t queue = kHandshakeQueue) {
        b.resize(20, 0);
        uint16_t t = type, f = 0;
        std::memcpy(&b[4], &t, 2);
        std::memcpy(&b[6], &f, 2);
        b[18] = static_cast<uint8_t>(queue >> 8);
        b[19] = static_cast<uint8_t>(queue);
    }
    Msg& attr(uint16_t type, const std::vector<uint8_t>& data) {
        uint16_t len = static_cast<uint16_t>(4 + data.size());
        size_t at = b.size();
        b.resize(at + ((len + 3u) & ~3u), 0);
        std::memcpy(&b[at], &len, 2);
        std::memcpy(&b[at + 2], &type, 2);
        std::memcpy(&b[at + 4], data.data(), data.size());
        return *this;
    }
    Msg& be32(uint16_t type, uint32_t v) {
        return attr(type, {uint8_t(v >> 24), uint8_t(v >> 16), uint8_t(v >> 8), uint8_t(v)});
    }
    Msg& hdr(uint32_t id, uint16_t proto, uint8_t hook) {
        return attr(NFQA_PACKET_HDR, {uint8_t(id >> 24), uint8_t(id >> 16), uint8_t(id >> 8), uint8_t(id),
                                      uint8_t(proto >> 8), uint8_t(proto), hook});
    }
    std::vector<uint8_t> done() {
        uint32_t len = static_cast<uint32_t>(b.size());
        std::memcpy(&b[0], &len, 4);
        return b;
    }
};
constexpr uint16_t kPacketType = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET;

std::vector<uint8_t> packet_msg(uint32_t id, const std::vector<uint8_t>& pkt, uint32_t skb_info = 0) {
    Msg m(kPacketType);
    m.hdr(id, 0x0800, hook::output).be32(NFQA_IFINDEX_OUTDEV, 2);
    if (skb_info) m.be32(NFQA_SKB_INFO, skb_info);
    m.be32(NFQA_MARK, 0x42).attr(NFQA_PAYLOAD, pkt);
    return m.done();
}

}  // namespace

TEST_CASE("one packet message") {
    auto msg = packet_msg(77, golden::v4_syn, NFQA_SKB_CSUMNOTREADY);
    std::vector<QueuedPacket> out;
    auto s = nfq_parse_buffer(msg, out);
    REQUIRE(out.size() == 1);
    CHECK(s.messages == 1);
    CHECK(s.malformed == 0);
    CHECK(s.trailing_bytes == 0);
    const auto& p = out[0];
    CHECK(p.id == 77);
    CHECK(p.queue == kHandshakeQueue);
    CHECK(p.hw_protocol == 0x0800);
    CHECK(p.hook == hook::output);
    CHECK(p.outdev == 2);
    CHECK(p.mark == 0x42);
    CHECK(p.csum_partial);
    CHECK_FALSE(p.gso);
    CHECK_FALSE(p.malformed);
    CHECK_FALSE(p.truncated());
    CHECK(std::vector<uint8_t>(p.payload.begin(), p.payload.end()) == golden::v4_syn);
    // A view, not a copy.
    CHECK(p.payload.data() >= msg.data());
    CHECK(p.payload.data() + p.payload.size() <= msg.data() + msg.size());
}

TEST_CASE("several messages per datagram, unaligned, with a verdict error") {
    std::vector<uint8_t> dg = packet_msg(1, golden::v4_syn);
    auto m2 = packet_msg(2, golden::v6_syn, NFQA_SKB_GSO | NFQA_SKB_CSUM_NOTVERIFIED);
    dg.insert(dg.end(), m2.begin(), m2.end());
    // NLMSG_ERROR ENOENT answering the verdict sent with seq 9.
    std::vector<uint8_t> err(16 + 4 + 16, 0);
    uint32_t len = static_cast<uint32_t>(err.size()), seq = 9;
    uint16_t type = NLMSG_ERROR;
    int32_t code = -ENOENT;
    std::memcpy(&err[0], &len, 4);
    std::memcpy(&err[4], &type, 2);
    std::memcpy(&err[16], &code, 4);
    std::memcpy(&err[20 + 8], &seq, 4);
    dg.insert(dg.end(), err.begin(), err.end());
    std::vector<uint8_t> shifted(dg.size() + 1);
    std::memcpy(shifted.data() + 1, dg.data(), dg.size());
    std::vector<QueuedPacket> out;
    auto s = nfq_parse_buffer(std::span<const uint8_t>(shifted.data() + 1, dg.size()), out);
    CHECK(s.messages == 3);
    CHECK(s.packets == 2);
    CHECK(s.errors == 1);
    CHECK(s.first_error == ENOENT);
    CHECK(s.first_error_seq == 9);
    REQUIRE(out.size() == 2);
    CHECK(out[1].id == 2);
    CHECK(out[1].gso);
    CHECK(out[1].csum_not_verified);
    CHECK_FALSE(out[1].csum_partial);
    CHECK(out[1].payload.size() == golden::v6_syn.size());
}

TEST_CASE("malformed messages: flagged (to be dropped) when they have an id, skipped otherwise") {
    std::vector<QueuedPacket> out;
    SUBCASE("no payload") {
        auto m = Msg(kPacketType).hdr(5, 0x0800, hook::input).done();
        auto s = nfq_parse_buffer(m, out);
        REQUIRE(out.size() == 1);
        CHECK(out[0].malformed);
        CHECK(s.malformed == 1);
    }
    SUBCASE("duplicate payload") {
        auto m = Msg(kPacketType).hdr(5, 0x0800, 1).attr(NFQA_PAYLOAD, golden::v4_syn).attr(NFQA_PAYLOAD, golden::v4_syn).done();
        nfq_parse_buffer(m, out);
        REQUIRE(out.size() == 1);
        CHECK(out[0].malformed);
    }
    SUBCASE("bad mark size") {
        auto m = Msg(kPacketType).hdr(5, 0x0800, 1).attr(NFQA_MARK, {1, 2}).attr(NFQA_PAYLOAD, golden::v4_syn).done();
        nfq_parse_buffer(m, out);
        REQUIRE(out.size() == 1);
        CHECK(out[0].malformed);
    }
    SUBCASE("attribute overruns the message") {
        auto m = Msg(kPacketType).hdr(5, 0x0800, 1).attr(NFQA_PAYLOAD, golden::v4_syn).done();
        uint16_t big = 0x4000;
        std::memcpy(&m[20 + 12], &big, 2);  // the payload attribute's length
        nfq_parse_buffer(m, out);
        REQUIRE(out.size() == 1);
        CHECK(out[0].malformed);
    }
    SUBCASE("cap_len below the payload") {
        auto m = Msg(kPacketType).hdr(5, 0x0800, 1).be32(NFQA_CAP_LEN, 10).attr(NFQA_PAYLOAD, golden::v4_syn).done();
        nfq_parse_buffer(m, out);
        REQUIRE(out.size() == 1);
        CHECK(out[0].malformed);
    }
    SUBCASE("truncated packet (cap_len above the payload) is fine") {
        auto m = Msg(kPacketType).hdr(5, 0x0800, 1).be32(NFQA_CAP_LEN, 9000).attr(NFQA_PAYLOAD, golden::v4_syn).done();
        nfq_parse_buffer(m, out);
        REQUIRE(out.size() == 1);
        CHECK_FALSE(out[0].malformed);
        CHECK(out[0].truncated());
    }
    SUBCASE("short packet header: no id, nothing to judge") {
        auto m = Msg(kPacketType).attr(NFQA_PACKET_HDR, {0, 0, 0, 1}).attr(NFQA_PAYLOAD, golden::v4_syn).done();
        auto s = nfq_parse_buffer(m, out);
        CHECK(out.empty());
        CHECK(s.ignored == 1);
    }
    SUBCASE("message length beyond the datagram") {
        auto m = packet_msg(1, golden::v4_syn);
        m.resize(m.size() - 3);
        auto s = nfq_parse_buffer(m, out);
        CHECK(out.empty());
        CHECK(s.messages == 0);
        CHECK(s.trailing_bytes == m.size());
    }
    SUBCASE("every truncation of a valid datagram") {
        auto m = packet_msg(1, golden::v6_synack, NFQA_SKB_CSUMNOTREADY);
        for (size_t n = 0; n <= m.size(); ++n) {
            std::vector<uint8_t> cut(m.begin(), m.begin() + static_cast<long>(n));
            std::vector<QueuedPacket> o;
            auto s = nfq_parse_buffer(cut, o);
            CHECK(o.size() <= 1);
            if (n == m.size()) CHECK((o.size() == 1 && !o[0].malformed && s.trailing_bytes == 0));
        }
    }
}

TEST_CASE("verdict messages") {
    VerdictBatch b;
    REQUIRE(b.add(kHandshakeQueue, 11, kAccept).ok());
    REQUIRE(b.add(kHandshakeQueue, 12, kAccept, golden::v4_syn, 0x7).ok());
    REQUIRE(b.add(kHandshakeQueue, 13, kDrop).ok());
    CHECK(b.count() == 3);
    CHECK_FALSE(b.add(kHandshakeQueue, 14, 3).ok());  // NF_QUEUE: not ours to give
    std::vector<uint8_t> huge(kMaxVerdictPayload + 1);
    CHECK(b.add(kHandshakeQueue, 14, kAccept, huge).error().code == EMSGSIZE);
    CHECK(b.count() == 3);
    // Walk what was built.
    auto bytes = b.bytes();
    size_t off = 0;
    std::vector<uint32_t> ids;
    while (off < bytes.size()) {
        uint32_t len, seq;
        uint16_t type, flags;
        std::memcpy(&len, &bytes[off], 4);
        std::memcpy(&type, &bytes[off + 4], 2);
        std::memcpy(&flags, &bytes[off + 6], 2);
        std::memcpy(&seq, &bytes[off + 8], 4);
        CHECK(type == ((NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_VERDICT));
        CHECK(flags == NLM_F_REQUEST);  // no NLM_F_ACK on the hot path
        CHECK((bytes[off + 18] << 8 | bytes[off + 19]) == kHandshakeQueue);
        // NFQA_VERDICT_HDR: be32 verdict, be32 id
        uint16_t alen, atype;
        std::memcpy(&alen, &bytes[off + 20], 2);
        std::memcpy(&atype, &bytes[off + 22], 2);
        CHECK(alen == 12);
        CHECK(atype == NFQA_VERDICT_HDR);
        uint32_t id = uint32_t(bytes[off + 28]) << 24 | uint32_t(bytes[off + 29]) << 16 | uint32_t(bytes[off + 30]) << 8 |
                      bytes[off + 31];
        CHECK(id == seq);  // an error answer names the packet
        ids.push_back(id);
        if (id == 12) {
            CHECK(len == 16 + 4 + 12 + 8 + ((4 + golden::v4_syn.size() + 3) & ~size_t{3}));
            CHECK(std::memcmp(&bytes[off + 16 + 4 + 12 + 8 + 4], golden::v4_syn.data(), golden::v4_syn.size()) == 0);
        }
        off += (len + 3) & ~3u;
    }
    CHECK(ids == std::vector<uint32_t>{11, 12, 13});
    b.clear();
    CHECK(b.empty());
    CHECK(b.bytes().empty());
}

TEST_CASE("completing a CHECKSUM_PARTIAL replacement") {
    for (const auto* pkt : {&golden::v4_syn, &golden::v6_synack, &golden::v6_syn_ext}) {
        auto p = parse(*pkt);
        REQUIRE(p.ok());
        // The partial form of the packet: the field holds the folded pseudo-header sum.
        std::vector<uint8_t> partial = *pkt;
        const size_t to = p->tcp_offset;
        const uint16_t pseudo = csum::fold(csum::pseudo_header(p->family, p->src, p->dst,
                                                               static_cast<uint32_t>(pkt->size() - to)));
        partial[to + 16] = static_cast<uint8_t>(pseudo >> 8);
        partial[to + 17] = static_cast<uint8_t>(pseudo);
        // Token added in partial mode, completed by the queue layer: the checksum verifies.
        auto q = parse(partial, ParseOptions{true, TcpChecksum::partial});
        REQUIRE(q.ok());
        std::vector<uint8_t> token(100, 0xab);
        auto t = add_token(*q, token, 1500);
        REQUIRE(t.ok());
        REQUIRE(nfq_complete_checksum(*t).ok());
        auto v = parse(*t);  // verify mode
        CHECK(v.ok());
        // Stripped in partial mode and completed: the exact original bytes.
        auto tp = parse(partial, ParseOptions{true, TcpChecksum::partial});
        auto t2 = add_token(*tp, token, 1500);
        auto tq = parse(*t2, ParseOptions{true, TcpChecksum::partial});
        REQUIRE(tq.ok());
        auto s = strip_token(*tq);
        REQUIRE(s.ok());
        REQUIRE(nfq_complete_checksum(s->packet).ok());
        CHECK(s->packet == *pkt);
    }
    std::vector<uint8_t> junk{0x45, 0, 0};
    CHECK_FALSE(nfq_complete_checksum(junk).ok());
}

TEST_CASE("the kernel's queue counters (/proc/net/netfilter/nfnetlink_queue)") {
    // queue_number portid queue_total copy_mode copy_range queue_dropped user_dropped id_sequence 1
    const std::string text =
        "    7  1234     0 2 65531     0     0        0  1\n"
        " 3472 4294963284     5 2 65531    17     3   123456  1\n";
    auto st = nfq_parse_kernel_stats(text, 3472);
    REQUIRE(st.ok());
    CHECK(st->waiting == 5);
    CHECK(st->queue_dropped == 17);
    CHECK(st->user_dropped == 3);
    auto none = nfq_parse_kernel_stats(text, 9);
    REQUIRE_FALSE(none.ok());
    CHECK(none.error().code == ENOENT);
    CHECK_FALSE(nfq_parse_kernel_stats("", 3472).ok());
    auto bad = nfq_parse_kernel_stats(" 3472 x 0 2 65531 0 0 0 1\n", 3472);
    REQUIRE_FALSE(bad.ok());
    CHECK(bad.error().code == EBADMSG);
    CHECK_FALSE(nfq_parse_kernel_stats(" 3472 1 0 2\n", 3472).ok());  // too few fields
}
