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
    // Accounting (net.netfilter.nf_conntrack_acct=1), 0 when absent.
    uint64_t orig_packets = 0, orig_bytes = 0, reply_packets = 0, reply_bytes = 0;
    // Timestamps (net.netfilter.nf_conntrack_timestamp=1; DESTROY events), unix ns, 0 when absent.
    uint64_t start_ns = 0, stop_ns = 0;
    bool operator==(const CtEntry&) const = default;
};

// A conntrack event as the kernel multicasts it (NFNLGRP_CONNTRACK_NEW /
// _DESTROY): a new connection, or the end of one with its final counters
// (with accounting on) and its start and stop times (with timestamps on).
struct CtEvent {
    // Update: a state change (TCP: to FIN_WAIT, TIME_WAIT, CLOSE, ...); no counters.
    enum Kind : uint8_t { New, Update, Destroy } kind = New;
    CtEntry entry;
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

// Parser of kernel bytes (fuzzed): event messages (IPCTNL_MSG_CT_NEW or
// IPCTNL_MSG_CT_DELETE) in a datagram; malformed ones skipped. Returns the
// number of messages seen.
size_t ct_parse_events(std::span<const uint8_t> bytes, std::vector<CtEvent>& out);

// One entry by its original-direction tuple (with its counters). ENOENT when gone.
Result<CtEntry> ct_get(Netns& ns, const CtTuple& orig, uint16_t zone = 0);

// The conntrack event groups a subscription takes (NFNLGRP_CONNTRACK_*).
// Every group subscribed costs the kernel one message per event of that kind
// in the packet path: UPDATE is several per TCP connection (SYN_RECV,
// ESTABLISHED, FIN_WAIT, TIME_WAIT, ...), NEW and DESTROY one each.
enum CtGroup : unsigned { kCtGroupNew = 1, kCtGroupUpdate = 2, kCtGroupDestroy = 4 };

struct CtSubscribeOptions {
    unsigned groups = kCtGroupNew | kCtGroupDestroy;
    int receive_buffer = 4 << 20;  // SO_RCVBUFFORCE (bytes)
    // NETLINK_NO_ENOBUFS: an overflow drops the messages that do not fit and
    // nothing else; the socket keeps its state and the loss is counted exactly
    // by the kernel (socket_drops()). Without it recv() fails once with
    // ENOBUFS per overflow, which says that something was lost, not how much.
    bool no_enobufs = true;
};

// A socket subscribed to the netns's conntrack events (non-blocking; read it
// when its fd is readable).
Result<NlSocket> ct_subscribe(const Netns& ns, const CtSubscribeOptions& opts = {});

// Messages the kernel dropped at this socket because its receive buffer was
// full (SO_MEMINFO, SK_MEMINFO_DROPS): events lost. Any socket.
Result<uint64_t> socket_drops(int fd);

// Turns on conntrack accounting (packets/bytes per direction) in the netns:
// net.netfilter.nf_conntrack_acct=1, and, with `timestamps`, the start and
// stop times of entries (nf_conntrack_timestamp=1, carried by DESTROY events).
// Connections opened before keep none.
Status ct_enable_accounting(const Netns& ns, bool timestamps = false);

}  // namespace signet::nft
