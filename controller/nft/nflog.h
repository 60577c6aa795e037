// signet: denied connection attempts as the kernel logs them. The default-deny
// rules of each pod's table log (rate-limited) to an NFLOG group before they
// drop; the controller reads that group in the pod's netns over nfnetlink_log.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "nft/conntrack.h"
#include "nft/netns.h"
#include "signet/result.h"

struct nlmsghdr;

namespace signet::nft {

// The NFLOG group of the deny-log rules, and the bytes of each packet copied.
inline constexpr uint16_t kDenyLogGroup = 3471;
inline constexpr uint32_t kDenyLogSnaplen = 128;
// The log rule's prefix: "signet-deny ingress" / "signet-deny egress".
inline constexpr const char* kDenyLogPrefix = "signet-deny ";
// An audit-mode pod's table (PodRuleset::audit) logs what its policy would
// drop with this prefix ("signet-audit ingress" / "signet-audit egress"),
// same group and rate, and accepts it: recorded as verdict audit-denied.
inline constexpr const char* kAuditLogPrefix = "signet-audit ";
// At most this many denied packets a second per pod and direction are logged
// (the rest are still dropped and counted): a flood cannot swamp signetd.
inline constexpr uint64_t kDenyLogRate = 50;
inline constexpr uint32_t kDenyLogBurst = 50;

struct LoggedPacket {
    std::string prefix;
    CtTuple tuple;        // from the packet's headers; ports 0 when absent
    uint32_t length = 0;  // the packet's length on the wire (IP total length)
    uint8_t tcp_flags = 0;
};

// Parser of kernel bytes (fuzzed): NFULNL_MSG_PACKET messages of a datagram.
// Malformed or non-IP ones are skipped. Returns the number of messages seen.
size_t nflog_parse_buffer(std::span<const uint8_t> bytes, std::vector<LoggedPacket>& out);

// Parses an IPv4/IPv6 packet's addresses, protocol and ports (no checksums).
std::optional<LoggedPacket> parse_ip_packet(std::span<const uint8_t> packet);

// A socket bound to NFLOG `group` in the netns (non-blocking), copying
// kDenyLogSnaplen bytes of each packet, flushed per packet.
Result<NlSocket> nflog_bind(const Netns& ns, uint16_t group = kDenyLogGroup);

}  // namespace signet::nft
