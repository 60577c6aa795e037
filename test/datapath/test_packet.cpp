// Unit tests of the handshake packet layer (controller/datapath/packet.h):
// golden packets, token round trips, checksums against full recomputation,
// and every class of malformed input.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cstring>
#include <random>
#include <string>

#include "golden.h"
#include "datapath/packet.h"

using namespace signet::handshake;
using Bytes = std::vector<uint8_t>;

namespace {

const ParseOptions kLax{false, TcpChecksum::unverified};

uint16_t rd16(const Bytes& b, size_t off) { return static_cast<uint16_t>(b[off] << 8 | b[off + 1]); }
void wr16(Bytes& b, size_t off, uint16_t v) {
    b[off] = static_cast<uint8_t>(v >> 8);
    b[off + 1] = static_cast<uint8_t>(v);
}

// Naive RFC 1071 reference: 16-bit words, 32-bit accumulator folded at the end.
uint16_t naive_checksum(const Bytes& d) {
    uint32_t s = 0;
    for (size_t i = 0; i + 1 < d.size(); i += 2) s += static_cast<uint32_t>(d[i] << 8 | d[i + 1]);
    if (d.size() % 2) s += static_cast<uint32_t>(d.back() << 8);
    while (s >> 16) s = (s & 0xFFFF) + (s >> 16);
    return static_cast<uint16_t>(~s);
}

// Recomputes the IP length fields and both checksums from scratch (the packet
// has no IPv6 extension headers).
void refix(Bytes& b) {
    if (b[0] >> 4 == 4) {
        const size_t ihl = (b[0] & 0x0F) * 4u;
        wr16(b, 2, static_cast<uint16_t>(b.size()));
        wr16(b, 10, 0);
        wr16(b, 10, csum::internet_checksum({b.data(), ihl}));
        std::array<uint8_t, 16> s{}, d{};
        std::memcpy(s.data(), &b[12], 4);
        std::memcpy(d.data(), &b[16], 4);
        wr16(b, ihl + 16, csum::tcp_checksum(Family::ipv4, s, d, std::span<const uint8_t>(b).subspan(ihl)));
    } else {
        wr16(b, 4, static_cast<uint16_t>(b.size() - 40));
        std::array<uint8_t, 16> s{}, d{};
        std::memcpy(s.data(), &b[8], 16);
        std::memcpy(d.data(), &b[24], 16);
        wr16(b, 56, csum::tcp_checksum(Family::ipv6, s, d, std::span<const uint8_t>(b).subspan(40)));
    }
}

// Replaces the TCP options (and payload) of a packet without extension headers.
Bytes with_options(const Bytes& pkt, const Bytes& opts, const Bytes& payload = {}) {
    REQUIRE(opts.size() % 4 == 0);
    const size_t to = pkt[0] >> 4 == 4 ? (pkt[0] & 0x0F) * 4u : 40;
    Bytes b(pkt.begin(), pkt.begin() + static_cast<long>(to + 20));
    b.insert(b.end(), opts.begin(), opts.end());
    b.insert(b.end(), payload.begin(), payload.end());
    b[to + 12] = static_cast<uint8_t>(((20 + opts.size()) / 4) << 4 | (b[to + 12] & 0x0F));
    refix(b);
    return b;
}

const Bytes kLinuxOpts = {0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0x01, 0x02,
                          0x03, 0x04, 0x00, 0x00, 0x00, 0x00, 0x01, 0x03, 0x03, 0x07};

int code_of(const Bytes& b, const ParseOptions& o = {}) {
    auto r = parse(b, o);
    return r ? 0 : r.error().code;
}
std::string msg_of(const Bytes& b, const ParseOptions& o = {}) {
    auto r = parse(b, o);
    return r ? std::string("ok") : r.error().message;
}

Bytes token_of(size_t n, uint8_t seed = 7) {
    Bytes t(n);
    for (size_t i = 0; i < n; ++i) t[i] = static_cast<uint8_t>(seed + i * 13);
    return t;
}

struct Named {
    const char* name;
    const Bytes* bytes;
};
const Named kHandshake[] = {{"v4_syn", &golden::v4_syn},         {"v4_synack", &golden::v4_synack},
                            {"v6_syn", &golden::v6_syn},         {"v6_synack", &golden::v6_synack},
                            {"v6_syn_ext", &golden::v6_syn_ext}};

}  // namespace

TEST_CASE("csum: RFC 1071 example and the naive reference") {
    const Bytes rfc = {0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7};
    CHECK(csum::fold(csum::sum(rfc)) == 0xddf2);
    CHECK(csum::internet_checksum(rfc) == static_cast<uint16_t>(~0xddf2));
    std::mt19937 rng(42);
    for (size_t n = 0; n < 300; ++n) {
        Bytes d(n);
        for (auto& x : d) x = static_cast<uint8_t>(rng());
        CHECK(csum::internet_checksum(d) == naive_checksum(d));
    }
    Bytes ones(70000, 0xFF);  // accumulator does not overflow on a maximal packet
    CHECK(csum::internet_checksum(ones) == naive_checksum(ones));
}

TEST_CASE("csum: RFC 1624 incremental update equals full recomputation") {
    std::mt19937 rng(1624);
    for (int iter = 0; iter < 2000; ++iter) {
        Bytes d(2 * (1 + rng() % 40));
        for (auto& x : d) x = static_cast<uint8_t>(rng());
        const uint16_t before = csum::internet_checksum(d);
        const size_t w = 2 * (rng() % (d.size() / 2));
        const uint16_t old_word = rd16(d, w);
        const auto new_word = static_cast<uint16_t>(iter < 10 ? 0 : rng());
        wr16(d, w, new_word);
        const uint16_t full = csum::internet_checksum(d);
        const uint16_t inc = csum::update(before, old_word, new_word);
        // Equal as one's-complement values; the incremental form never yields
        // 0xffff where the full one yields 0x0000 (RFC 1624 section 3).
        CHECK(inc == full);
        // adjust: several words at once.
        const uint16_t inc2 = csum::adjust(before, old_word, new_word);
        CHECK(inc2 == full);
    }
}

TEST_CASE("parse: golden IPv4 SYN with Linux options") {
    auto p = parse(golden::v4_syn);
    REQUIRE_MESSAGE(p.ok(), p.error().message);
    CHECK(p->family == Family::ipv4);
    CHECK(p->tcp_offset == 20);
    CHECK(p->tcp_header_len == 40);
    CHECK(p->sport == 40000);
    CHECK(p->dport == 8080);
    CHECK(p->seq == 0x11223344);
    CHECK(p->ack == 0);
    CHECK(p->flags == tcp_flag::syn);
    CHECK(p->window == 64240);
    CHECK(p->options.mss == 1460);
    CHECK(p->options.window_scale == 7);
    CHECK(p->options.sack_permitted);
    REQUIRE(p->options.timestamps);
    CHECK(p->options.timestamps->value == 0x01020304);
    CHECK(p->options.timestamps->echo == 0);
    CHECK(!p->options.token);
    CHECK(p->options.other == 0);
    CHECK(p->payload.empty());
    CHECK(classify(*p) == Segment::syn);
    const Binding b = binding(*p);
    CHECK(b.family == Family::ipv4);
    CHECK(b.src[0] == 10);
    CHECK(b.src[3] == 1);
    CHECK(b.dst[3] == 2);
    CHECK(b.sport == 40000);
    CHECK(b.seq == 0x11223344);
}

TEST_CASE("parse: golden SYN-ACKs, IPv6, extension headers, full option area, final ACK") {
    auto sa = parse(golden::v4_synack);
    REQUIRE(sa.ok());
    CHECK(classify(*sa) == Segment::syn_ack);
    CHECK(sa->ack == 0x11223345);
    CHECK(sa->options.timestamps->echo == 0x01020304);

    auto v6 = parse(golden::v6_syn);
    REQUIRE(v6.ok());
    CHECK(v6->family == Family::ipv6);
    CHECK(v6->tcp_offset == 40);
    CHECK(v6->options.mss == 1440);
    CHECK(v6->src[0] == 0xfd);
    CHECK(v6->src[15] == 1);
    CHECK(v6->dst[15] == 2);
    CHECK(classify(*v6) == Segment::syn);

    auto v6sa = parse(golden::v6_synack);
    REQUIRE(v6sa.ok());
    CHECK(classify(*v6sa) == Segment::syn_ack);

    auto ext = parse(golden::v6_syn_ext);
    REQUIRE_MESSAGE(ext.ok(), ext.error().message);
    CHECK(ext->tcp_offset == 56);
    CHECK(ext->dport == 443);

    auto full = parse(golden::v4_syn_full);
    REQUIRE(full.ok());
    CHECK(full->tcp_header_len == 60);
    CHECK(full->options.other == 1);  // MD5
    CHECK(full->options.mss == 1460);

    auto ack = parse(golden::v4_ack);
    REQUIRE(ack.ok());
    CHECK(classify(*ack) == Segment::ack);
    CHECK(is_handshake_final_ack(*ack, 0x11223344, 0xa1b2c3d4));
    CHECK(!is_handshake_final_ack(*ack, 0x11223344, 0xa1b2c3d5));
    CHECK(!is_handshake_final_ack(*sa, 0x11223344, 0xa1b2c3d4));
}

TEST_CASE("classify: RST, FIN and data make `other`") {
    Bytes b = golden::v4_syn;
    b[33] = tcp_flag::syn | tcp_flag::rst;
    refix(b);
    CHECK(classify(*parse(b)) == Segment::other);
    b[33] = tcp_flag::syn | tcp_flag::fin;
    refix(b);
    CHECK(classify(*parse(b)) == Segment::other);
    Bytes data = with_options(golden::v4_ack, {0x01, 0x01, 0x01, 0x01}, {1, 2, 3});
    data[33] = tcp_flag::ack | tcp_flag::psh;
    refix(data);
    CHECK(classify(*parse(data)) == Segment::other);
}

TEST_CASE("add_token then strip_token gives back the exact bytes; checksums verify") {
    for (const auto& g : kHandshake) {
        for (size_t n : {1, 2, 3, 4, 63, 64, 255, 256, 1000, 1400}) {
            CAPTURE(g.name);
            CAPTURE(n);
            auto p = parse(*g.bytes);
            REQUIRE(p.ok());
            const Bytes token = token_of(n);
            auto added = add_token(*p, token, 2000);
            REQUIRE_MESSAGE(added.ok(), added.error().message);
            const Bytes& t = *added;
            CHECK(t.size() == g.bytes->size() + 8 + n);

            // Checksums verify (parse with verification), and the incremental
            // TCP / IPv4 checksums equal a full recomputation.
            auto q = parse(t);
            REQUIRE_MESSAGE(q.ok(), q.error().message);
            Bytes recomputed = t;
            if (p->family == Family::ipv4 || p->tcp_offset == 40) {
                refix(recomputed);
                CHECK(recomputed == t);
            }
            CHECK(csum::tcp_checksum(q->family, q->src, q->dst, q->tcp_segment()) == q->tcp_checksum_field);

            // The option: first in the option area, wire layout as documented.
            const size_t o = q->tcp_offset + 20;
            CHECK(t[o] == 253);
            CHECK(t[o + 1] == 8);
            CHECK(rd16(t, o + 2) == 0x5347);
            CHECK(t[o + 4] == 1);
            CHECK(t[o + 5] == 0);
            CHECK(rd16(t, o + 6) == n);
            REQUIRE(q->options.token);
            CHECK(q->options.token->token_len == n);
            CHECK(q->options.token->offset == 20);

            // The application's view is unchanged.
            CHECK(q->tcp_header_len == p->tcp_header_len + 8);
            CHECK(binding(*q) == binding(*p));
            CHECK(classify(*q) == classify(*p));
            CHECK(q->window == p->window);
            CHECK(q->options.mss == p->options.mss);
            CHECK(q->options.window_scale == p->options.window_scale);
            CHECK(q->options.sack_permitted == p->options.sack_permitted);
            CHECK(q->options.timestamps == p->options.timestamps);
            CHECK(Bytes(q->payload.begin(), q->payload.end()) == token);

            auto s = strip_token(*q);
            REQUIRE_MESSAGE(s.ok(), s.error().message);
            CHECK(s->packet == *g.bytes);
            CHECK(Bytes(s->token.begin(), s->token.end()) == token);
        }
    }
}

TEST_CASE("add_token_into / strip_token_into: caller buffers, exact sizes") {
    auto p = parse(golden::v6_syn);
    REQUIRE(p.ok());
    const Bytes token = token_of(100);
    Bytes out(tokened_size(*p, token.size()));
    auto n = add_token_into(*p, token, out);
    REQUIRE(n.ok());
    CHECK(*n == out.size());
    Bytes small(out.size() - 1);
    CHECK(add_token_into(*p, token, small).error().code == errc::too_big);
    auto q = parse(out);
    REQUIRE(q.ok());
    Bytes back(golden::v6_syn.size());
    auto s = strip_token_into(*q, back);
    REQUIRE(s.ok());
    CHECK(s->size == back.size());
    CHECK(back == golden::v6_syn);
    Bytes tiny(golden::v6_syn.size() - 1);
    CHECK(strip_token_into(*q, tiny).error().code == errc::too_big);
}

TEST_CASE("add_token: full 40-byte option area -> ENOSPC, options untouched") {
    auto p = parse(golden::v4_syn_full);
    REQUIRE(p.ok());
    auto r = add_token(*p, token_of(32), 1500);
    REQUIRE(!r.ok());
    CHECK(r.error().code == ENOSPC);
    CHECK(r.error().message.find("no room") != std::string::npos);
    // 36 bytes of options in use: still no room for 8.
    Bytes opts36(kLinuxOpts);
    opts36.insert(opts36.end(), {0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01,
                                 0x01, 0x01, 0x01, 0x01});
    const Bytes b36 = with_options(golden::v4_syn, opts36);
    auto p36 = parse(b36);
    REQUIRE(p36.ok());
    CHECK(add_token(*p36, token_of(4), 1500).error().code == ENOSPC);
    // 32 bytes in use: exactly fits.
    opts36.resize(32);
    Bytes b32 = with_options(golden::v4_syn, opts36);
    auto p32 = parse(b32);
    REQUIRE(p32.ok());
    auto ok = add_token(*p32, token_of(4), 1500);
    REQUIRE(ok.ok());
    CHECK(parse(*ok)->tcp_header_len == 60);
    CHECK(strip_token(*parse(*ok))->packet == b32);
}

TEST_CASE("add_token: refusals with actionable codes") {
    auto syn = parse(golden::v4_syn);
    REQUIRE(syn.ok());
    CHECK(add_token(*syn, token_of(100), 100).error().code == EMSGSIZE);   // max_len
    CHECK(add_token(*syn, token_of(40), 108).ok());                       // exactly max_len
    CHECK(add_token(*syn, {}, 1500).error().code == EINVAL);              // empty token
    CHECK(add_token(*syn, token_of(65536), 200000).error().code == EMSGSIZE);  // IPv4 total length
    auto v6 = parse(golden::v6_syn);
    CHECK(add_token(*v6, token_of(65535 - 40 - 8 + 1), 200000).error().code == EMSGSIZE);
    CHECK(add_token(*v6, token_of(65535 - 40 - 8), 200000).ok());  // payload length exactly 65535

    // A bare ACK takes a token (the final ACK's proof) and gives it back exactly;
    // an ACK with data, a FIN or a RST does not.
    auto ack = parse(golden::v4_ack);
    auto r = add_token(*ack, token_of(16), 1500);
    REQUIRE(r.ok());
    auto tokened = parse(*r);
    REQUIRE(tokened.ok());
    CHECK(tokened->payload.size() == 16);
    auto back = strip_token(*tokened);
    REQUIRE(back.ok());
    CHECK(back->packet == golden::v4_ack);
    CHECK(back->token.size() == 16);
    Bytes data_ack = with_options(golden::v4_ack, {}, {1, 2, 3});
    auto pd = parse(data_ack);
    REQUIRE(pd.ok());
    auto rd = add_token(*pd, token_of(10), 1500);
    CHECK(rd.error().code == EINVAL);
    CHECK(rd.error().message.find("other") != std::string::npos);

    // TCP Fast Open: a SYN with data.
    Bytes tfo = with_options(golden::v4_syn, kLinuxOpts, {'G', 'E', 'T'});
    auto pt = parse(tfo);
    REQUIRE(pt.ok());
    auto rt = add_token(*pt, token_of(10), 1500);
    CHECK(rt.error().code == ENOTSUP);
    CHECK(rt.error().message.find("Fast Open") != std::string::npos);

    // Already tokened.
    auto once = add_token(*syn, token_of(10), 1500);
    auto twice = add_token(*parse(*once), token_of(10), 1500);
    CHECK(twice.error().code == EEXIST);

    // Non-canonical checksum fields (only reachable without verification).
    Bytes bad = golden::v4_syn;
    wr16(bad, 36, 0xFFFF);
    CHECK(add_token(*parse(bad, kLax), token_of(10), 1500).error().code == EINVAL);
    Bytes badip = golden::v4_syn;
    wr16(badip, 10, 0xFFFF);
    CHECK(add_token(*parse(badip, kLax), token_of(10), 1500).error().code == EINVAL);
}

TEST_CASE("add/strip keep a wrong checksum exactly as wrong (unverified mode)") {
    for (uint16_t field : {0x0000, 0x0001, 0x1234, 0xfffe}) {
        Bytes b = golden::v6_synack;
        wr16(b, 56, field);
        auto p = parse(b, kLax);
        REQUIRE(p.ok());
        CHECK(parse(b).error().code == errc::bad_checksum);
        auto t = add_token(*p, token_of(77), 1500);
        REQUIRE(t.ok());
        auto s = strip_token(*parse(*t, kLax));
        REQUIRE(s.ok());
        CHECK(s->packet == b);
    }
}

TEST_CASE("partial checksums (CHECKSUM_PARTIAL): the completed checksum is right, strip is exact") {
    for (const auto& g : kHandshake) {
        CAPTURE(g.name);
        Bytes b = *g.bytes;
        auto full = parse(b);
        REQUIRE(full.ok());
        const size_t to = full->tcp_offset;
        // What the kernel leaves for the NIC: the folded pseudo-header sum.
        const auto seg_len = static_cast<uint32_t>(b.size() - to);
        wr16(b, to + 16, csum::fold(csum::pseudo_header(full->family, full->src, full->dst, seg_len)));
        auto p = parse(b, ParseOptions{true, TcpChecksum::partial});
        REQUIRE(p.ok());
        auto t = add_token(*p, token_of(333), 1500);
        REQUIRE(t.ok());
        // Complete it as the NIC / skb_checksum_help would.
        Bytes done = *t;
        wr16(done, to + 16, csum::internet_checksum(std::span<const uint8_t>(done).subspan(to)));
        REQUIRE_MESSAGE(parse(done).ok(), parse(done).error().message);
        auto s = strip_token(*parse(*t, ParseOptions{true, TcpChecksum::partial}));
        REQUIRE(s.ok());
        CHECK(s->packet == b);
    }
}

TEST_CASE("strip_token: the option anywhere, at an odd offset too") {
    const Bytes token = token_of(21);
    // Signet option after the Linux options.
    Bytes opt = {253, 8, 0x53, 0x47, 1, 0, 0, 21};
    Bytes opts(kLinuxOpts);
    opts.insert(opts.end(), opt.begin(), opt.end());
    const Bytes tail = with_options(golden::v4_syn, opts, token);
    auto p = parse(tail);
    REQUIRE_MESSAGE(p.ok(), p.error().message);
    CHECK(p->options.token->offset == 40);
    auto s = strip_token(*p);
    REQUIRE(s.ok());
    CHECK(s->packet == golden::v4_syn);

    // NOP, signet option at offset 21 (odd), then MSS, SACK-permitted, TS, WS.
    Bytes odd = {0x01};
    odd.insert(odd.end(), opt.begin(), opt.end());
    const Bytes rest = {0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0x01, 0x02, 0x03,
                        0x04, 0x00, 0x00, 0x00, 0x00, 0x03, 0x03, 0x07};
    odd.insert(odd.end(), rest.begin(), rest.end());
    Bytes expect_opts = {0x01};
    expect_opts.insert(expect_opts.end(), rest.begin(), rest.end());
    for (bool v6 : {false, true}) {
        const Bytes& base = v6 ? golden::v6_synack : golden::v4_synack;
        const Bytes bo = with_options(base, odd, token);
        auto po = parse(bo);
        REQUIRE_MESSAGE(po.ok(), po.error().message);
        CHECK(po->options.token->offset == 21);
        auto so = strip_token(*po);
        REQUIRE(so.ok());
        CHECK(so->packet == with_options(base, expect_opts));
        CHECK(parse(so->packet).ok());
    }
}

TEST_CASE("strip_token: absent or inconsistent option") {
    auto syn = parse(golden::v4_syn);
    auto none = strip_token(*syn);
    CHECK(none.error().code == ENOMSG);

    Bytes t = *add_token(*syn, token_of(30), 1500);
    const size_t o = 20 + 20;
    Bytes wrong_len = t;
    wr16(wrong_len, o + 6, 29);
    refix(wrong_len);
    auto r = strip_token(*parse(wrong_len));
    CHECK(r.error().code == EBADMSG);
    CHECK(r.error().message.find("declares 29") != std::string::npos);

    Bytes zero = t;
    wr16(zero, o + 6, 0);
    zero.resize(zero.size() - 30);
    refix(zero);
    CHECK(strip_token(*parse(zero)).error().code == EBADMSG);

    Bytes version = t;
    version[o + 4] = 2;
    refix(version);
    CHECK(strip_token(*parse(version)).error().code == EPROTONOSUPPORT);

    Bytes ack = t;  // a bare ACK carries a token (the final ACK's proof) ...
    ack[33] = tcp_flag::ack;
    refix(ack);
    CHECK(strip_token(*parse(ack)).ok());
    Bytes fin = t;  // ... a FIN never does
    fin[33] = tcp_flag::ack | tcp_flag::fin;
    refix(fin);
    CHECK(strip_token(*parse(fin)).error().code == EINVAL);

    // Another RFC 6994 experiment on kind 253 is not ours.
    Bytes other = t;
    wr16(other, o + 2, 0x1234);
    refix(other);
    auto po = parse(other);
    REQUIRE(po.ok());
    CHECK(!po->options.token);
    CHECK(po->options.other == 1);
    CHECK(strip_token(*po).error().code == ENOMSG);
}

TEST_CASE("malformed: every truncation of every golden packet") {
    const Bytes* all[] = {&golden::v4_syn, &golden::v4_synack, &golden::v6_syn,   &golden::v6_synack,
                          &golden::v4_syn_full, &golden::v6_syn_ext, &golden::v4_ack};
    for (const Bytes* g : all) {
        for (size_t n = 0; n < g->size(); ++n) {
            CAPTURE(n);
            Bytes b(g->begin(), g->begin() + static_cast<long>(n));
            CHECK(code_of(b, kLax) == EBADMSG);
            // The same prefix with the IP length fields agreeing: the TCP /
            // extension-header checks must catch it.
            if (n >= 1 && (b[0] >> 4) == 4 && n >= 20) {
                wr16(b, 2, static_cast<uint16_t>(n));
                CHECK(code_of(b, kLax) == EBADMSG);
            } else if (n >= 40 && (b[0] >> 4) == 6) {
                wr16(b, 4, static_cast<uint16_t>(n - 40));
                const int c = code_of(b, kLax);
                CHECK((c == EBADMSG || (n == 40 && c != 0)));
            }
        }
    }
    CHECK(msg_of({}) == "empty packet");
    CHECK(msg_of(Bytes(golden::v4_syn.begin(), golden::v4_syn.begin() + 19)).find("truncated IPv4 header") == 0);
    CHECK(msg_of(Bytes(golden::v6_syn.begin(), golden::v6_syn.begin() + 39)).find("truncated IPv6 header") == 0);
}

TEST_CASE("malformed: IP layer") {
    Bytes b = golden::v4_syn;
    b[0] = 0x44;  // IHL 16 bytes
    CHECK(msg_of(b, kLax).find("bad IPv4 IHL") == 0);
    b = golden::v4_ack;
    b[0] = 0x4f;  // IHL 60 > 52
    CHECK(msg_of(b, kLax).find("IPv4 IHL 60 exceeds") == 0);
    b = golden::v4_syn;
    b[0] = 0x55;
    CHECK(msg_of(b, kLax).find("IP version 5") == 0);
    b = golden::v4_syn;
    wr16(b, 2, 61);
    CHECK(msg_of(b, kLax).find("IPv4 total length 61 != packet size 60") == 0);
    wr16(b, 2, 59);
    CHECK(code_of(b, kLax) == EBADMSG);
    b = golden::v4_syn;
    b.push_back(0);  // trailing byte beyond total length
    CHECK(code_of(b, kLax) == EBADMSG);
    b = golden::v4_syn;
    b[6] = 0x20;  // MF
    CHECK(code_of(b, kLax) == errc::fragmented);
    CHECK(msg_of(b, kLax).find("fragmented SYN") == 0);
    b = golden::v4_syn;
    wr16(b, 6, 0x0001);  // offset 8
    CHECK(code_of(b, kLax) == errc::fragmented);
    b = golden::v4_syn;
    b[9] = 17;
    CHECK(code_of(b, kLax) == EPROTONOSUPPORT);
    b = golden::v4_syn;
    b[8] = 63;  // TTL changed, header checksum not
    CHECK(code_of(b) == errc::bad_checksum);
    CHECK(msg_of(b).find("bad IPv4 header checksum") == 0);
    CHECK(code_of(b, ParseOptions{false, TcpChecksum::verify}) == 0);

    b = golden::v6_syn;
    wr16(b, 4, 41);
    CHECK(msg_of(b, kLax).find("IPv6 payload length 41") == 0);
    b = golden::v6_syn;
    wr16(b, 4, 0);
    CHECK(code_of(b, kLax) == EPROTONOSUPPORT);  // jumbogram
    b = golden::v6_syn;
    b[6] = 17;
    CHECK(code_of(b, kLax) == EPROTONOSUPPORT);
    b[6] = 59;
    CHECK(msg_of(b, kLax).find("no next header") != std::string::npos);
    b[6] = 50;
    CHECK(msg_of(b, kLax).find("ESP") != std::string::npos);
}

TEST_CASE("malformed: IPv6 extension headers") {
    const Bytes& g = golden::v6_syn_ext;  // 40 + hop-by-hop(8) + dest opts(8) + TCP
    Bytes b = g;
    b[41] = 10;  // hop-by-hop length 88 bytes: overflows
    CHECK(msg_of(b, kLax).find("IPv6 hop-by-hop options header at offset 40") == 0);
    b = g;
    b[49] = 5;  // destination options of 48 bytes at 48: swallows the TCP header
    CHECK(code_of(b, kLax) != 0);
    b[49] = 6;
    CHECK(msg_of(b, kLax).find("overflow") != std::string::npos);
    b = g;
    b[48] = 0;  // dest opts -> hop-by-hop: not first
    CHECK(msg_of(b, kLax).find("not first") != std::string::npos);
    b = g;
    b[48] = 44;  // -> fragment header
    CHECK(code_of(b, kLax) == errc::fragmented);
    b = g;
    b[6] = 44;
    CHECK(msg_of(b, kLax).find("fragmented SYN") == 0);
    b = g;
    b[40] = 43;  // the second header becomes a routing header: [next 6, len 0, type 1, segments left 4, ...]
    CHECK(code_of(b, kLax) == EPROTONOSUPPORT);
    CHECK(msg_of(b, kLax).find("segments left") != std::string::npos);
    b[51] = 0;  // no segments left: the IPv6 destination is final
    CHECK(code_of(b) == 0);

    // A long chain of destination options headers: bounded.
    Bytes chain(g.begin(), g.begin() + 40);
    chain[6] = 60;
    for (int i = 0; i < 9; ++i) chain.insert(chain.end(), {60, 0, 1, 4, 0, 0, 0, 0});
    chain[chain.size() - 8] = 6;
    chain.insert(chain.end(), g.begin() + 56, g.end());
    wr16(chain, 4, static_cast<uint16_t>(chain.size() - 40));
    CHECK(msg_of(chain, kLax).find("more than 8 IPv6 extension headers") == 0);
    // ... and 8 are fine (checksum still right: extension headers are not in it).
    chain.erase(chain.begin() + 40, chain.begin() + 48);
    wr16(chain, 4, static_cast<uint16_t>(chain.size() - 40));
    auto p8 = parse(chain);
    REQUIRE_MESSAGE(p8.ok(), p8.error().message);
    auto t8 = add_token(*p8, token_of(50), 1500);
    REQUIRE(t8.ok());
    CHECK(strip_token(*parse(*t8))->packet == chain);
    // Truncated extension header (no length byte).
    Bytes cut(g.begin(), g.begin() + 41);
    wr16(cut, 4, 1);
    CHECK(msg_of(cut, kLax).find("truncated IPv6 hop-by-hop") == 0);
}

TEST_CASE("malformed: TCP header and options") {
    Bytes b = golden::v4_syn;
    b[32] = 0x40;  // data offset 16
    CHECK(msg_of(b, kLax).find("bad TCP data offset") == 0);
    b[32] = 0xf0;  // 60 > 40
    CHECK(msg_of(b, kLax).find("TCP data offset 60 exceeds") == 0);

    auto opt_err = [](Bytes opts) { return msg_of(with_options(golden::v4_syn, opts), kLax); };
    CHECK(opt_err({0x02, 0x00, 0x05, 0xb4}).find("length 0 < 2") != std::string::npos);
    CHECK(opt_err({0x02, 0x01, 0x05, 0xb4}).find("length 1 < 2") != std::string::npos);
    CHECK(opt_err({0x01, 0x01, 0x22, 0x05}).find("overflows") != std::string::npos);
    CHECK(opt_err({0x01, 0x01, 0x01, 0x22}).find("no length byte") != std::string::npos);
    CHECK(opt_err({0x02, 0x03, 0x05, 0x01}).find("MSS option length 3") != std::string::npos);
    CHECK(opt_err({0x03, 0x04, 0x07, 0x01}).find("window scale") != std::string::npos);
    CHECK(opt_err({0x04, 0x03, 0x00, 0x01}).find("SACK-permitted") != std::string::npos);
    CHECK(opt_err({0x05, 0x06, 0x00, 0x00, 0x00, 0x00, 0x01, 0x01}).find("SACK option") != std::string::npos);
    CHECK(opt_err({0x08, 0x08, 0, 0, 0, 0, 0, 0}).find("timestamps") != std::string::npos);
    CHECK(opt_err({253, 6, 0x53, 0x47, 1, 0, 1, 1}).find("signet option") != std::string::npos);
    CHECK(opt_err({253, 8, 0x53, 0x47, 1, 0, 0, 0, 253, 8, 0x53, 0x47, 1, 0, 0, 0}).find("duplicate") !=
          std::string::npos);
    // EOL ends the walk: garbage after it is padding.
    CHECK(opt_err({0x02, 0x04, 0x05, 0xb4, 0x00, 0xff, 0x00, 0xff}) == "ok");
    // Unknown kinds with a sane length are skipped and counted.
    const Bytes unk = with_options(golden::v4_syn, {0x1e, 0x04, 0xaa, 0xbb, 0x99, 0x02, 0x01, 0x01});
    auto p = parse(unk);
    REQUIRE(p.ok());
    CHECK(p->options.other == 2);

    b = golden::v4_syn;
    b.back() ^= 1;  // window scale 7 -> 6: TCP checksum breaks
    b[59] = 6;
    CHECK(code_of(b) == errc::bad_checksum);
    CHECK(msg_of(b).find("bad TCP checksum") == 0);
    CHECK(code_of(b, ParseOptions{true, TcpChecksum::unverified}) == 0);
    CHECK(code_of(b, ParseOptions{true, TcpChecksum::partial}) == 0);
    b = golden::v6_syn;
    b[10] ^= 0x40;  // source address is in the pseudo-header
    CHECK(code_of(b) == errc::bad_checksum);
}
