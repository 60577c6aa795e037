// signet: the conntrack table of a pod's netns over ctnetlink (libmnl):
// list entries, delete one. The controller deletes the entries of
// established connections that a policy change no longer allows.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "nft/netns.h"
#include "nft/ruleset.h"
#include "signet/result.h"

struct nlmsghdr;

namespace signet::nft {

struct CtTuple {
    Family family = Family::v4;
    Addr src;  // 4 significant bytes for v4
    Addr dst;
    uint8_t proto = 0;   // IPPROTO_*
    uint16_t sport = 0;  // host byte order; 0 for protocols without ports
    uint16_t dport = 0;
    bool operator==(const CtTuple&) const = default;
};

struct CtEntry {
    CtTuple orig;
    CtTuple reply;
    uint32_t mark = 0;
    uint16_t zone = 0;
    uint32_t id = 0;
    uint32_t status = 0;     // IPS_* bits
    uint8_t tcp_state = 0;   // TCP_CONNTRACK_* (0 when not TCP or absent)
    bool operator==(const CtEntry&) const = default;
};

// All conntrack entries (IPv4 and IPv6) of the netns. Uses ns.nfnl().
Result<std::vector<CtEntry>> ct_list(Netns& ns);

// Deletes the entry whose original-direction tuple is `orig` (in `zone`).
// ENOENT when there is none.
Status ct_delete(Netns& ns, const CtTuple& orig, uint16_t zone = 0);

// Parser of kernel bytes (fuzzed): one ctnetlink IPCTNL_MSG_CT_NEW message.
// nullopt when it is not one or is malformed (missing/short tuples).
// `len` bounds the bytes readable at nlh (may exceed nlh->nlmsg_len).
std::optional<CtEntry> ct_parse_message(const nlmsghdr* nlh, size_t len);

// A buffer of netlink messages as recv() returns it; malformed messages are
// skipped. Returns the number of messages seen.
size_t ct_parse_buffer(std::span<const uint8_t> bytes, std::vector<CtEntry>& out);

}  // namespace signet::nft
