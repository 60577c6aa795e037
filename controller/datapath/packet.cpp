// signet handshake, packet layer. See packet.h and docs/handshake.md.
#include "datapath/packet.h"

#include <cstdio>
#include <cstring>
#include <string>

namespace signet::handshake {

namespace {

constexpr uint8_t kProtoTcp = 6;
constexpr uint8_t kV6HopByHop = 0, kV6Routing = 43, kV6Fragment = 44, kV6Esp = 50, kV6Ah = 51, kV6NoNext = 59,
                  kV6DestOpts = 60;

uint16_t be16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }
uint32_t be32(const uint8_t* p) {
    return static_cast<uint32_t>(p[0]) << 24 | static_cast<uint32_t>(p[1]) << 16 | static_cast<uint32_t>(p[2]) << 8 |
           p[3];
}
void put16(uint8_t* p, uint16_t v) {
    p[0] = static_cast<uint8_t>(v >> 8);
    p[1] = static_cast<uint8_t>(v);
}
uint16_t swap16(uint16_t v) { return static_cast<uint16_t>(v << 8 | v >> 8); }

template <typename... Args>
Error fail(int code, const char* fmt, Args... args) {
    char buf[200];
    std::snprintf(buf, sizeof buf, fmt, args...);
    return make_error(code, buf);
}

const char* v6_header_name(uint8_t nh) {
    switch (nh) {
        case kV6HopByHop: return "hop-by-hop options";
        case kV6Routing: return "routing";
        case kV6DestOpts: return "destination options";
        default: return "?";
    }
}

Status parse_tcp_options(const uint8_t* t, size_t doff, TcpOptions& out) {
    size_t i = 20;
    while (i < doff) {
        const uint8_t kind = t[i];
        if (kind == 0) break;  // EOL: the rest is padding
        if (kind == 1) {       // NOP
            ++i;
            continue;
        }
        if (i + 1 >= doff)
            return fail(errc::malformed, "TCP option kind %u at offset %zu: truncated (no length byte)", kind, i);
        const size_t len = t[i + 1];
        if (len < 2) return fail(errc::malformed, "TCP option kind %u at offset %zu: length %zu < 2", kind, i, len);
        if (i + len > doff)
            return fail(errc::malformed, "TCP option kind %u at offset %zu: length %zu overflows the %zu-byte header",
                        kind, i, len, doff);
        const uint8_t* o = t + i;
        switch (kind) {
            case 2:
                if (len != 4) return fail(errc::malformed, "TCP MSS option length %zu != 4", len);
                out.mss = be16(o + 2);
                break;
            case 3:
                if (len != 3) return fail(errc::malformed, "TCP window scale option length %zu != 3", len);
                out.window_scale = o[2];
                break;
            case 4:
                if (len != 2) return fail(errc::malformed, "TCP SACK-permitted option length %zu != 2", len);
                out.sack_permitted = true;
                break;
            case 5:
                if (len < 10 || (len - 2) % 8 != 0)
                    return fail(errc::malformed, "TCP SACK option length %zu is not 2 + 8n", len);
                out.sack_blocks = static_cast<uint8_t>((len - 2) / 8);
                break;
            case 8:
                if (len != 10) return fail(errc::malformed, "TCP timestamps option length %zu != 10", len);
                out.timestamps = TcpTimestamps{be32(o + 2), be32(o + 6)};
                break;
            case kTokenOptionKind:
                if (len >= 4 && be16(o + 2) == kTokenExId) {
                    if (len != kTokenOptionLen)
                        return fail(errc::malformed, "signet option (kind 253, ExID 0x%04x) length %zu != %u",
                                    kTokenExId, len, kTokenOptionLen);
                    if (out.token) return fail(errc::malformed, "duplicate signet option at offset %zu", i);
                    out.token = TokenOption{o[4], o[5], be16(o + 6), static_cast<uint16_t>(i)};
                } else {
                    ++out.other;
                }
                break;
            default:
                ++out.other;
                break;
        }
        i += len;
    }
    return {};
}

// The unfolded sum of `len` bytes at `offset` of a region whose word
// alignment starts at 0: bytes at an odd offset are low-order bytes.
uint64_t sum_at(const uint8_t* base, size_t offset, size_t len) {
    const uint16_t s = csum::fold(csum::sum({base + offset, len}));
    return (offset & 1) ? swap16(s) : s;
}

// A checksum field the incremental update cannot map back exactly: the
// one's-complement "negative zero" that no correct sender produces.
bool non_canonical(uint16_t field, TcpChecksum mode) {
    return mode == TcpChecksum::partial ? field == 0x0000 : field == 0xFFFF;
}

// The TCP checksum field after the segment changed: in partial mode only the
// pseudo-header length moves; otherwise every removed/added word counts.
uint16_t new_tcp_field(const Packet& p, uint32_t old_len, uint32_t new_len, uint64_t removed, uint64_t added) {
    if (p.checksum_mode == TcpChecksum::partial) {
        const uint64_t acc = uint64_t{p.tcp_checksum_field} + static_cast<uint16_t>(~csum::fold(old_len)) + new_len;
        return csum::fold(acc);
    }
    return csum::adjust(p.tcp_checksum_field, removed + old_len, added + new_len);
}

void set_ip_length(const Packet& p, uint8_t* out, size_t new_size) {
    if (p.family == Family::ipv4) {
        const uint16_t old_total = be16(p.bytes.data() + 2);
        const auto new_total = static_cast<uint16_t>(new_size);
        put16(out + 2, new_total);
        put16(out + 10, csum::update(be16(p.bytes.data() + 10), old_total, new_total));
    } else {
        put16(out + 4, static_cast<uint16_t>(new_size - 40));
    }
}

}  // namespace

// ---- checksums ------------------------------------------------------------

uint64_t csum::sum(std::span<const uint8_t> data, uint64_t initial) {
    uint64_t acc = initial;
    const uint8_t* p = data.data();
    size_t n = data.size();
    for (; n >= 4; p += 4, n -= 4) acc += be32(p);  // 2^16 == 1 (mod 0xffff): 32-bit words sum as two 16-bit ones
    if (n >= 2) {
        acc += be16(p);
        p += 2;
        n -= 2;
    }
    if (n == 1) acc += static_cast<uint64_t>(p[0]) << 8;
    return acc;
}

uint16_t csum::fold(uint64_t s) {
    while (s >> 16) s = (s & 0xFFFF) + (s >> 16);
    return static_cast<uint16_t>(s);
}

uint16_t csum::internet_checksum(std::span<const uint8_t> data) { return static_cast<uint16_t>(~fold(sum(data))); }

uint64_t csum::pseudo_header(Family family, const std::array<uint8_t, 16>& src, const std::array<uint8_t, 16>& dst,
                             uint32_t tcp_length) {
    const size_t alen = family == Family::ipv4 ? 4 : 16;
    uint64_t acc = sum({src.data(), alen});
    acc = sum({dst.data(), alen}, acc);
    return acc + kProtoTcp + (tcp_length >> 16) + (tcp_length & 0xFFFF);
}

uint16_t csum::tcp_checksum(Family family, const std::array<uint8_t, 16>& src, const std::array<uint8_t, 16>& dst,
                            std::span<const uint8_t> segment) {
    uint64_t acc = pseudo_header(family, src, dst, static_cast<uint32_t>(segment.size()));
    if (segment.size() < 18) return static_cast<uint16_t>(~fold(sum(segment, acc)));
    acc = sum(segment.first(16), acc);
    acc = sum(segment.subspan(18), acc);
    return static_cast<uint16_t>(~fold(acc));
}

uint16_t csum::update(uint16_t checksum, uint16_t old_word, uint16_t new_word) {
    const uint64_t acc = uint64_t{static_cast<uint16_t>(~checksum)} + static_cast<uint16_t>(~old_word) + new_word;
    return static_cast<uint16_t>(~fold(acc));
}

uint16_t csum::adjust(uint16_t checksum, uint64_t removed, uint64_t added) {
    const uint64_t acc =
        uint64_t{static_cast<uint16_t>(~checksum)} + static_cast<uint16_t>(~fold(removed)) + uint64_t{fold(added)};
    return static_cast<uint16_t>(~fold(acc));
}

// ---- parse ------------------------------------------------------------------

Result<Packet> parse(std::span<const uint8_t> bytes, const ParseOptions& options) {
    if (bytes.empty()) return make_error(errc::malformed, "empty packet");
    const uint8_t* b = bytes.data();
    const size_t size = bytes.size();
    Packet p;
    p.bytes = bytes;
    p.checksum_mode = options.tcp_checksum;

    const unsigned version = b[0] >> 4;
    if (version == 4) {
        p.family = Family::ipv4;
        if (size < 20) return fail(errc::malformed, "truncated IPv4 header: %zu bytes, 20 needed", size);
        const size_t ihl = (b[0] & 0x0Fu) * 4u;
        if (ihl < 20) return fail(errc::malformed, "bad IPv4 IHL: %zu bytes < 20", ihl);
        if (ihl > size) return fail(errc::malformed, "IPv4 IHL %zu exceeds the %zu-byte packet", ihl, size);
        const size_t total = be16(b + 2);
        if (total != size)
            return fail(errc::malformed, "IPv4 total length %zu != packet size %zu", total, size);
        const uint16_t frag = be16(b + 6);
        if ((frag & 0x2000) || (frag & 0x1FFF))
            return fail(errc::fragmented, "fragmented SYN refused: IPv4 fragment (MF %u, offset %u)",
                        (frag >> 13) & 1u, (frag & 0x1FFFu) * 8u);
        if (b[9] != kProtoTcp) return fail(errc::unsupported, "IPv4 protocol %u is not TCP", b[9]);
        if (options.verify_ipv4_checksum && csum::fold(csum::sum(bytes.first(ihl))) != 0xFFFF)
            return fail(errc::bad_checksum, "bad IPv4 header checksum 0x%04x", be16(b + 10));
        std::memcpy(p.src.data(), b + 12, 4);
        std::memcpy(p.dst.data(), b + 16, 4);
        p.tcp_offset = ihl;
    } else if (version == 6) {
        p.family = Family::ipv6;
        if (size < 40) return fail(errc::malformed, "truncated IPv6 header: %zu bytes, 40 needed", size);
        const size_t plen = be16(b + 4);
        if (plen == 0 && size > 40)
            return make_error(errc::unsupported, "IPv6 payload length 0 (jumbogram) unsupported");
        if (40 + plen != size)
            return fail(errc::malformed, "IPv6 payload length %zu != packet size %zu - 40", plen, size);
        uint8_t next = b[6];
        size_t off = 40;
        size_t count = 0;
        while (next != kProtoTcp) {
            switch (next) {
                case kV6HopByHop:
                case kV6Routing:
                case kV6DestOpts: {
                    if (next == kV6HopByHop && off != 40)
                        return fail(errc::malformed, "IPv6 hop-by-hop options header at offset %zu, not first", off);
                    if (count == kMaxIpv6ExtensionHeaders)
                        return fail(errc::unsupported, "more than %zu IPv6 extension headers",
                                    kMaxIpv6ExtensionHeaders);
                    if (off + 2 > size)
                        return fail(errc::malformed, "truncated IPv6 %s header at offset %zu", v6_header_name(next),
                                    off);
                    const size_t len = (size_t{b[off + 1]} + 1) * 8;
                    if (off + len > size)
                        return fail(errc::malformed, "IPv6 %s header at offset %zu: %zu bytes overflow the packet",
                                    v6_header_name(next), off, len);
                    if (next == kV6Routing && b[off + 3] != 0)
                        return fail(errc::unsupported,
                                    "IPv6 routing header with %u segments left: the final destination (TCP "
                                    "pseudo-header) is not the IPv6 destination",
                                    b[off + 3]);
                    next = b[off];
                    off += len;
                    ++count;
                    break;
                }
                case kV6Fragment:
                    return fail(errc::fragmented, "fragmented SYN refused: IPv6 fragment header at offset %zu", off);
                case kV6NoNext: return make_error(errc::unsupported, "IPv6 no next header: no TCP segment");
                case kV6Esp:
                case kV6Ah: return fail(errc::unsupported, "IPv6 %s header: TCP not visible", next == kV6Esp ? "ESP" : "AH");
                default: return fail(errc::unsupported, "IPv6 next header %u unsupported (not TCP)", next);
            }
        }
        std::memcpy(p.src.data(), b + 8, 16);
        std::memcpy(p.dst.data(), b + 24, 16);
        p.tcp_offset = off;
    } else {
        return fail(errc::malformed, "IP version %u: neither 4 nor 6", version);
    }

    const size_t seg = size - p.tcp_offset;
    if (seg < 20) return fail(errc::malformed, "truncated TCP header: %zu bytes, 20 needed", seg);
    const uint8_t* t = b + p.tcp_offset;
    const size_t doff = (t[12] >> 4) * 4u;
    if (doff < 20) return fail(errc::malformed, "bad TCP data offset: %zu bytes < 20", doff);
    if (doff > seg) return fail(errc::malformed, "TCP data offset %zu exceeds the %zu-byte segment", doff, seg);
    p.tcp_header_len = doff;
    p.sport = be16(t);
    p.dport = be16(t + 2);
    p.seq = be32(t + 4);
    p.ack = be32(t + 8);
    p.flags = t[13];
    p.window = be16(t + 14);
    p.tcp_checksum_field = be16(t + 16);
    if (auto st = parse_tcp_options(t, doff, p.options); !st) return st.error();
    p.payload = bytes.subspan(p.tcp_offset + doff);
    if (options.tcp_checksum == TcpChecksum::verify) {
        const uint64_t acc =
            csum::sum(p.tcp_segment(), csum::pseudo_header(p.family, p.src, p.dst, static_cast<uint32_t>(seg)));
        if (csum::fold(acc) != 0xFFFF)
            return fail(errc::bad_checksum, "bad TCP checksum 0x%04x (expected 0x%04x)", p.tcp_checksum_field,
                        csum::tcp_checksum(p.family, p.src, p.dst, p.tcp_segment()));
    }
    return p;
}

// ---- classification -----------------------------------------------------------

Segment classify(const Packet& p) {
    if (p.has(tcp_flag::rst) || p.has(tcp_flag::fin)) return Segment::other;
    if (p.has(tcp_flag::syn)) return p.has(tcp_flag::ack) ? Segment::syn_ack : Segment::syn;
    if (p.has(tcp_flag::ack) && p.payload.empty()) return Segment::ack;
    return Segment::other;
}

const char* to_string(Segment s) {
    switch (s) {
        case Segment::syn: return "SYN";
        case Segment::syn_ack: return "SYN-ACK";
        case Segment::ack: return "ACK";
        case Segment::other: return "other";
    }
    return "?";
}

Binding binding(const Packet& p) { return Binding{p.family, p.src, p.dst, p.sport, p.dport, p.seq, p.ack}; }

bool is_handshake_final_ack(const Packet& p, uint32_t client_isn, uint32_t server_isn) {
    return classify(p) == Segment::ack && p.seq == client_isn + 1 && p.ack == server_isn + 1;
}

// ---- token rewriting ------------------------------------------------------------

size_t tokened_size(const Packet& p, size_t token_len) { return p.bytes.size() + kTokenOptionLen + token_len; }

Result<size_t> add_token_into(const Packet& p, std::span<const uint8_t> token, std::span<uint8_t> out) {
    const Segment s = classify(p);
    if (s != Segment::syn && s != Segment::syn_ack && s != Segment::ack)
        return fail(errc::invalid, "add_token: a token rides only on a SYN, SYN-ACK or bare ACK, not on %s",
                    to_string(s));
    if (p.options.token) return make_error(errc::already_tokened, "add_token: the segment already carries a signet option");
    if (!p.payload.empty())
        return fail(errc::has_payload,
                    "add_token: the %s already carries %zu payload bytes (TCP Fast Open?): no token added",
                    to_string(s), p.payload.size());
    if (token.empty()) return make_error(errc::invalid, "add_token: empty token");
    const size_t opt_bytes = p.tcp_header_len - 20;
    if (opt_bytes + kTokenOptionLen > kMaxTcpOptionBytes)
        return fail(errc::no_space,
                    "add_token: no room for the %u-byte signet option: %zu of %zu TCP option bytes in use",
                    kTokenOptionLen, opt_bytes, kMaxTcpOptionBytes);
    const size_t size = p.bytes.size();
    const size_t new_size = tokened_size(p, token.size());
    const size_t ip_len = p.family == Family::ipv4 ? new_size : new_size - 40;
    if (ip_len > 0xFFFF)
        return fail(errc::too_big, "add_token: %zu token bytes make the IP %s length %zu > 65535", token.size(),
                    p.family == Family::ipv4 ? "total" : "payload", ip_len);
    if (out.size() < new_size)
        return fail(errc::too_big, "add_token: the tokened packet needs %zu bytes, %zu available", new_size,
                    out.size());
    if (p.family == Family::ipv4 && be16(p.bytes.data() + 10) == 0xFFFF)
        return make_error(errc::invalid, "add_token: non-canonical IPv4 header checksum 0xffff");
    if (non_canonical(p.tcp_checksum_field, p.checksum_mode))
        return fail(errc::invalid, "add_token: non-canonical TCP checksum field 0x%04x", p.tcp_checksum_field);

    const uint8_t* b = p.bytes.data();
    uint8_t* o = out.data();
    const size_t to = p.tcp_offset;
    const size_t hl = p.tcp_header_len;
    std::memcpy(o, b, to + 20);
    uint8_t* opt = o + to + 20;
    opt[0] = kTokenOptionKind;
    opt[1] = kTokenOptionLen;
    put16(opt + 2, kTokenExId);
    opt[4] = kTokenVersion;
    opt[5] = 0;
    put16(opt + 6, static_cast<uint16_t>(token.size()));
    std::memcpy(o + to + 20 + kTokenOptionLen, b + to + 20, opt_bytes);
    std::memcpy(o + to + hl + kTokenOptionLen, token.data(), token.size());

    const uint16_t old_w = be16(b + to + 12);
    const auto new_w = static_cast<uint16_t>(((hl + kTokenOptionLen) / 4) << 12 | (old_w & 0x0FFF));
    put16(o + to + 12, new_w);
    set_ip_length(p, o, new_size);
    const auto old_len = static_cast<uint32_t>(size - to);
    const auto new_len = static_cast<uint32_t>(new_size - to);
    // The inserted option and the appended token start at even offsets, and
    // the options after the insertion move by 8 bytes: their sum is unchanged.
    const uint64_t added = csum::sum(token, csum::sum({opt, kTokenOptionLen}, new_w));
    put16(o + to + 16, new_tcp_field(p, old_len, new_len, old_w, added));
    return new_size;
}

Result<std::vector<uint8_t>> add_token(const Packet& p, std::span<const uint8_t> token, size_t max_len) {
    const size_t n = tokened_size(p, token.size());
    if (n > max_len)
        return fail(errc::too_big, "add_token: the tokened packet would be %zu bytes > max_len %zu", n, max_len);
    std::vector<uint8_t> out(n);
    auto r = add_token_into(p, token, out);
    if (!r) return r.error();
    return out;
}

Result<StrippedInto> strip_token_into(const Packet& p, std::span<uint8_t> out) {
    const Segment s = classify(p);
    // A tokened bare ACK (the final ACK's proof) classifies as `other`: an ACK with payload.
    const bool tokened_ack = p.has(tcp_flag::ack) && !p.has(tcp_flag::syn) && !p.has(tcp_flag::fin) &&
                             !p.has(tcp_flag::rst);
    if (s != Segment::syn && s != Segment::syn_ack && !tokened_ack)
        return fail(errc::invalid, "strip_token: a token rides only on a SYN, SYN-ACK or bare ACK, not on %s",
                    to_string(s));
    if (!p.options.token) return make_error(errc::no_token, "strip_token: no signet option in the segment");
    const TokenOption tok = *p.options.token;
    if (tok.version != kTokenVersion)
        return fail(errc::unsupported, "strip_token: signet option version %u unsupported (want %u)", tok.version,
                    kTokenVersion);
    if (tok.token_len != p.payload.size())
        return fail(errc::malformed, "strip_token: the signet option declares %u token bytes, the payload has %zu",
                    tok.token_len, p.payload.size());
    if (tok.token_len == 0) return make_error(errc::malformed, "strip_token: the signet option declares an empty token");
    const size_t size = p.bytes.size();
    const size_t new_size = size - kTokenOptionLen - tok.token_len;
    if (out.size() < new_size)
        return fail(errc::too_big, "strip_token: the packet needs %zu bytes, %zu available", new_size, out.size());

    const uint8_t* b = p.bytes.data();
    uint8_t* o = out.data();
    const size_t to = p.tcp_offset;
    const size_t hl = p.tcp_header_len;
    std::memcpy(o, b, to + tok.offset);
    std::memcpy(o + to + tok.offset, b + to + tok.offset + kTokenOptionLen, hl - tok.offset - kTokenOptionLen);

    const uint16_t old_w = be16(b + to + 12);
    const auto new_w = static_cast<uint16_t>(((hl - kTokenOptionLen) / 4) << 12 | (old_w & 0x0FFF));
    put16(o + to + 12, new_w);
    set_ip_length(p, o, new_size);
    const auto old_len = static_cast<uint32_t>(size - to);
    const auto new_len = static_cast<uint32_t>(new_size - to);
    const uint64_t removed = csum::sum(p.payload, sum_at(b + to, tok.offset, kTokenOptionLen) + old_w);
    put16(o + to + 16, new_tcp_field(p, old_len, new_len, removed, new_w));
    return StrippedInto{new_size, p.payload};
}

Result<Stripped> strip_token(const Packet& p) {
    Stripped r;
    r.packet.resize(p.bytes.size());
    auto into = strip_token_into(p, r.packet);
    if (!into) return into.error();
    r.packet.resize(into->size);
    r.token = into->token;
    return r;
}

}  // namespace signet::handshake
