// signet handshake, packet layer: parse IPv4/IPv6 + TCP handshake segments as
// NFQUEUE delivers them (whole IP packets, no link header) and rewrite them to
// carry an identity token. Pure: no kernel calls, no allocation on the parse
// path, every read bounded by the input span. See docs/handshake.md
// ("Packet layer") for the wire format and the sequence-space argument.
#pragma once

#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "signet/result.h"

namespace signet::handshake {

// Error codes (Error::code) are errno values, so the caller can act on them.
namespace errc {
inline constexpr int malformed = EBADMSG;           // truncated, inconsistent lengths, bad option, bad token option
inline constexpr int bad_checksum = EILSEQ;         // IPv4 header or TCP checksum does not verify
inline constexpr int fragmented = EPROTO;           // IPv4 fragment or IPv6 fragment header: a fragmented SYN is refused
inline constexpr int unsupported = EPROTONOSUPPORT; // not TCP, unknown/ESP/AH IPv6 header, jumbogram, routing with segments left, token version
inline constexpr int no_space = ENOSPC;             // the 40-byte TCP option area has no room for the signet option
inline constexpr int too_big = EMSGSIZE;            // result exceeds max_len / the output span / 65535
inline constexpr int has_payload = ENOTSUP;         // SYN / SYN-ACK already carries data (TCP Fast Open): no token added
inline constexpr int already_tokened = EEXIST;      // add_token on a segment that already carries the signet option
inline constexpr int no_token = ENOMSG;             // strip_token on a segment without the signet option
inline constexpr int invalid = EINVAL;              // wrong segment type, empty token, non-canonical checksum field
}  // namespace errc

enum class Family : uint8_t { ipv4 = 4, ipv6 = 6 };

namespace tcp_flag {
inline constexpr uint8_t fin = 0x01, syn = 0x02, rst = 0x04, psh = 0x08, ack = 0x10, urg = 0x20, ece = 0x40,
                         cwr = 0x80;
}

// The token's carriage (RFC 6994 shared experimental option, 8 bytes, so the
// option area stays a multiple of 4 and later options keep their alignment):
//   kind=253 | len=8 | ExID=0x5347 ("SG", 2 bytes) | version | flags=0 | token length (2 bytes, big endian)
// The token bytes themselves are the segment's payload.
inline constexpr uint8_t kTokenOptionKind = 253;
inline constexpr uint16_t kTokenExId = 0x5347;
inline constexpr uint8_t kTokenOptionLen = 8;
inline constexpr uint8_t kTokenVersion = 1;
inline constexpr size_t kMaxTcpOptionBytes = 40;
inline constexpr size_t kMaxIpv6ExtensionHeaders = 8;

// How the TCP checksum field is to be read.
enum class TcpChecksum : uint8_t {
    verify,      // complete checksum, verified by parse (default)
    unverified,  // complete checksum, not verified (updated incrementally by add/strip: a wrong one stays wrong)
    partial,     // CHECKSUM_PARTIAL (NFQUEUE NFQA_SKB_CSUMNOTREADY with NFQA_CFG_F_GSO): the field holds the
                 // folded pseudo-header sum only; add/strip adjust it for the new length, the NIC/kernel completes it
};

struct ParseOptions {
    bool verify_ipv4_checksum = true;  // the IPv4 header checksum is never offloaded: verify it unless told otherwise
    TcpChecksum tcp_checksum = TcpChecksum::verify;
};

struct TcpTimestamps {
    uint32_t value = 0, echo = 0;
    bool operator==(const TcpTimestamps&) const = default;
};

struct TokenOption {
    uint8_t version = 0;
    uint8_t flags = 0;
    uint16_t token_len = 0;
    uint16_t offset = 0;  // of the option from the start of the TCP header
};

struct TcpOptions {
    std::optional<uint16_t> mss;
    std::optional<uint8_t> window_scale;
    bool sack_permitted = false;
    uint8_t sack_blocks = 0;
    std::optional<TcpTimestamps> timestamps;
    std::optional<TokenOption> token;  // the signet option (kind 253, ExID 0x5347)
    uint8_t other = 0;                 // options of any other kind (length >= 2), counted, left untouched
};

// A parsed packet: a view into the caller's buffer (which must outlive it).
struct Packet {
    std::span<const uint8_t> bytes;  // the whole IP packet
    Family family = Family::ipv4;
    std::array<uint8_t, 16> src{}, dst{};  // IPv4 addresses in the first 4 bytes
    size_t tcp_offset = 0;                 // IPv4: IHL*4; IPv6: 40 + extension headers
    size_t tcp_header_len = 0;             // data offset * 4
    uint16_t sport = 0, dport = 0;
    uint32_t seq = 0, ack = 0;
    uint8_t flags = 0;
    uint16_t window = 0;
    uint16_t tcp_checksum_field = 0;
    TcpOptions options;
    std::span<const uint8_t> payload;
    TcpChecksum checksum_mode = TcpChecksum::verify;

    std::span<const uint8_t> tcp_segment() const { return bytes.subspan(tcp_offset); }
    std::span<const uint8_t> tcp_option_bytes() const { return bytes.subspan(tcp_offset + 20, tcp_header_len - 20); }
    bool has(uint8_t flag) const { return (flags & flag) != 0; }
};

Result<Packet> parse(std::span<const uint8_t> bytes, const ParseOptions& options = {});
// A Packet views its bytes: parsing a temporary buffer would leave it dangling.
Result<Packet> parse(std::vector<uint8_t>&& bytes, const ParseOptions& options = {}) = delete;

// Segment classes, by flags only (RST or FIN make a segment `other`).
//   syn:     SYN, no ACK           syn_ack: SYN + ACK
//   ack:     ACK only, no payload: a candidate final ACK of the handshake; confirm with is_handshake_final_ack
//   other:   everything else
enum class Segment : uint8_t { syn, syn_ack, ack, other };
Segment classify(const Packet& packet);
const char* to_string(Segment segment);

// What identifies the connection and this segment's place in it.
struct Binding {
    Family family = Family::ipv4;
    std::array<uint8_t, 16> src{}, dst{};
    uint16_t sport = 0, dport = 0;
    uint32_t seq = 0, ack = 0;
    bool operator==(const Binding&) const = default;
};
Binding binding(const Packet& packet);
// The third segment: a bare ACK whose seq is the client ISN + 1 and ack the server ISN + 1.
bool is_handshake_final_ack(const Packet& packet, uint32_t client_isn, uint32_t server_isn);

// ---- token rewriting ----------------------------------------------------

// Size of the packet add_token produces.
size_t tokened_size(const Packet& packet, size_t token_len);

// Writes `packet` + the signet option + `token` as payload into `out` (no
// allocation); returns the bytes written. Only for SYN / SYN-ACK without
// payload. Updates the IP length, the IPv4 header checksum and the TCP
// checksum incrementally (RFC 1624), so strip_token gives back the exact bytes.
Result<size_t> add_token_into(const Packet& packet, std::span<const uint8_t> token, std::span<uint8_t> out);
// Same, into a new buffer of at most max_len bytes (else errc::too_big).
Result<std::vector<uint8_t>> add_token(const Packet& packet, std::span<const uint8_t> token, size_t max_len);

struct StrippedInto {
    size_t size = 0;                 // bytes written to out
    std::span<const uint8_t> token;  // a view into the tokened packet's bytes
};
// Writes the original packet (the exact bytes before add_token) into `out`.
Result<StrippedInto> strip_token_into(const Packet& packet, std::span<uint8_t> out);

struct Stripped {
    std::vector<uint8_t> packet;
    std::span<const uint8_t> token;  // a view into the tokened packet's bytes
};
Result<Stripped> strip_token(const Packet& packet);

// ---- checksums ------------------------------------------------------------
namespace csum {
// RFC 1071: the unfolded sum of `data` as big-endian 16-bit words (odd last
// byte padded with zero), added to `initial`.
uint64_t sum(std::span<const uint8_t> data, uint64_t initial = 0);
// End-around carry down to 16 bits (not complemented).
uint16_t fold(uint64_t sum);
// ~fold(sum(data)): the Internet checksum of `data`.
uint16_t internet_checksum(std::span<const uint8_t> data);
// The TCP pseudo-header (RFC 793 / RFC 8200 8.1) sum, unfolded.
uint64_t pseudo_header(Family family, const std::array<uint8_t, 16>& src, const std::array<uint8_t, 16>& dst,
                       uint32_t tcp_length);
// The full TCP checksum of `segment` (its checksum field taken as zero).
uint16_t tcp_checksum(Family family, const std::array<uint8_t, 16>& src, const std::array<uint8_t, 16>& dst,
                      std::span<const uint8_t> segment);
// RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), for one 16-bit word changing from m to m'.
uint16_t update(uint16_t checksum, uint16_t old_word, uint16_t new_word);
// General form: HC' = ~(~HC - removed + added), with unfolded sums of the removed and added words.
uint16_t adjust(uint16_t checksum, uint64_t removed, uint64_t added);
}  // namespace csum

}  // namespace signet::handshake
