// The rule-set IR: what the policy compiler produces for one local pod and
// what the nftables programmer writes into that pod's netns. Plain values,
// comparable, so that changes can be diffed (structure vs. set membership)
// and golden-tested without root.
//
// Table layout in the pod's netns (one `inet` table named kTableName):
//
//   chain ingress  (hook input,  priority filter, policy accept)
//   chain egress   (hook output, priority filter, policy accept)
//
// each chain:
//   chain handshake_in (hook prerouting, priority -300, only with the handshake):
//      TCP segments carrying signet's option (a token or a proof) to NFQUEUE
//      3472, before conntrack sees them (the verdict strips the option)
//
//   0. [handshake on] iifname/oifname "lo" accept; [ingress] meta mark has
//      handshake bits (judged in handshake_in) accept; then TCP SYN and SYN-ACK
//      (tcp flags & (fin|syn|rst) == syn) to NFQUEUE 3472, no bypass; then
//      the segments of a connection whose proof is due / awaited (ct mark)
//   0b. [handshake enforce] TCP only: ct state invalid drop; ct state new
//      (not a SYN) drop; [ingress] an RST from the client of an authenticated
//      connection marks it closing; [egress] a FIN or RST of the local
//      server does; [ingress] the client's other segments of a closing
//      connection to NFQUEUE 3472 (packet mark 0x700: checked against the
//      pod's sockets); ct mark authenticated / by address / deferred /
//      closing accept; RST accept (a handshake in progress); TCP drop
//   1. ct state established,related accept      (replies to allowed connections)
//   2. iifname/oifname "lo" accept               (the pod talking to itself)
//   2b. icmpv6 type 133-136 accept               (router/neighbour discovery: not tracked
//                                                 by conntrack, IPv6 breaks without it)
//   3. [ingress only] ip/ip6 saddr @node_v4/@node_v6 accept   (the pod's own node)
//   4. if the direction is isolated: one `accept` rule per Rule below, then a
//      rate-limited log to NFLOG (prefix "signet-deny <chain>") and a counted
//      `drop` (default deny); in audit mode (PodRuleset::audit) the log's
//      prefix is "signet-audit <chain>" and the counted verdict `accept`.
//      Not isolated: nothing more (accept).
//
// Addresses are 16-byte values; IPv4 addresses are IPv4 (4-byte) values in
// `v4` sets and IPv6 in `v6` sets. Sets hold [first, last] inclusive ranges,
// already merged and with `except` subtracted; in the kernel a set is an
// interval set (rbtree) only where a peer is an ipBlock, and a hash set of
// single addresses otherwise (AddrSet::interval).
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <map>
#include <string>
#include <vector>

namespace signet::nft {

inline constexpr const char* kTableName = "signet";
// The NFQUEUE of the handshake in every pod netns (handshake::kHandshakeQueue).
inline constexpr uint16_t kHandshakeQueueNum = 3472;
// The chain (hook prerouting, priority -300: before conntrack) that queues
// incoming segments carrying signet's TCP option (handshake/packet.h:
// kind 253, ExID 0x5347), so tokens and proofs are stripped before conntrack
// counts their bytes and whatever conntrack thinks of the segment.
inline constexpr const char* kTokenChainName = "handshake_in";
inline constexpr uint8_t kTokenOptionKind = 253;
inline constexpr uint16_t kTokenOptionExId = 0x5347;
// Conntrack mark bits the handshake sets in a pod's netns (the netns's
// conntrack table is the pod's own: nothing else there uses marks).
// One 3-bit field, a state per connection:
inline constexpr uint32_t kCtMarkMask = 0x00000700;
inline constexpr uint32_t kCtMarkAuthenticated = 0x00000100;  // the peer pod's identity was proven (final)
inline constexpr uint32_t kCtMarkByAddress = 0x00000200;      // no token: judged by address
inline constexpr uint32_t kCtMarkPending = 0x00000300;        // client: token sent, the answer not yet judged
inline constexpr uint32_t kCtMarkProofDue = 0x00000400;       // client: server verified, the final ACK carries the proof
inline constexpr uint32_t kCtMarkAwaitProof = 0x00000500;     // server: client verified, waiting for the ACK's proof
inline constexpr uint32_t kCtMarkDeferred = 0x00000600;       // client: a Service frontend, judged at the node
// Server, enforce mode: an authenticated connection the local pod (the
// server) closed or either side reset. Its listener may accept a bare ACK
// as a new connection (SYN cookies), so the peer's segments from now on are
// checked against the pod's sockets: they pass only while the connection's
// own socket exists (the packet mark carries the same value to the queue).
inline constexpr uint32_t kCtMarkClosing = 0x00000700;
// Whether a mark says the peer pod proved its identity with a token (the
// final ACK's proof may still be on its way: nothing passes before it).
inline bool ct_mark_authenticated(uint32_t mark) {
    uint32_t m = mark & kCtMarkMask;
    return m == kCtMarkAuthenticated || m == kCtMarkProofDue || m == kCtMarkAwaitProof || m == kCtMarkClosing;
}

enum class Family : uint8_t { v4 = 4, v6 = 6 };

// An IP address in network byte order: 4 significant bytes for v4, 16 for v6.
struct Addr {
    std::array<uint8_t, 16> bytes{};
    bool operator==(const Addr&) const = default;
    auto operator<=>(const Addr&) const = default;
};

// Inclusive range of addresses of one family.
struct Range {
    Addr first;
    Addr last;
    bool operator==(const Range&) const = default;
    auto operator<=>(const Range&) const = default;
};

// Equal element lists, compared as one block of bytes (sets hold thousands
// of ranges and are compared on every change; element-wise compare was a
// memcmp call per address).
inline bool same_ranges(const std::vector<Range>& a, const std::vector<Range>& b) {
    static_assert(std::has_unique_object_representations_v<Range>, "Range must have no padding");
    return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(Range)) == 0);
}

// A named set of addresses. Elements sorted, merged, disjoint.
//
// `interval`: the kernel's set has NFT_SET_INTERVAL (an rbtree of interval
// start/end elements), needed where the peers are CIDRs or ranges (ipBlock).
// The kernel's rbtree set costs O(set size) at every commit that touches the
// table, and an element change there deletes and re-adds whole merged ranges.
// Sets that hold only single addresses (pod addresses of podSelector /
// namespaceSelector peers, the node's and the Service frontends' addresses)
// are `interval = false`: a hash set, one element per address (the merged
// ranges are expanded, so they never hold more elements than addresses the
// compiler put there), where adding or removing a pod touches one element.
// Part of the structure (PodRuleset::same_structure): a set changing kind is
// a whole-table replacement.
struct AddrSet {
    Family family = Family::v4;
    std::vector<Range> elements;
    bool interval = true;
    bool operator==(const AddrSet& o) const {
        return family == o.family && interval == o.interval && same_ranges(elements, o.elements);
    }
};

enum Proto : uint8_t { kTcp = 6, kUdp = 17, kSctp = 132 };

// Protocol and inclusive destination-port range; [0, 65535] is every port
// of that protocol (a NetworkPolicy port entry without `port`).
struct PortRange {
    uint8_t proto = kTcp;
    uint16_t first = 0;
    uint16_t last = 0;
    bool operator==(const PortRange&) const = default;
    auto operator<=>(const PortRange&) const = default;
};

// Where a rule came from, for explain and counters.
struct Origin {
    std::string policy_namespace;
    std::string policy_name;
    int rule_index = -1;  // index in spec.ingress / spec.egress
    bool operator==(const Origin&) const = default;
};

// One accept rule: the peer (by address set names, or any address), and the
// ports (empty = every protocol and port). One nft rule is emitted per
// (family present, port range) pair.
struct Rule {
    bool any_peer = false;     // no peer restriction (empty from/to)
    std::string set_v4;        // AddrSet name in PodRuleset::sets, or "" for no v4 peers
    std::string set_v6;        // same for v6
    std::vector<PortRange> ports;
    Origin origin;
    bool operator==(const Rule&) const = default;
};

struct Direction {
    bool isolated = false;  // some policy selects the pod for this direction
    std::vector<Rule> rules;
    bool operator==(const Direction&) const = default;
};

// How new TCP connections reach the identity handshake: the
// native nft `queue` expression or the xtables NFQUEUE target via nft_compat.
enum class QueueBackend { none, nft_queue, xt_nfqueue };

inline const char* to_string(QueueBackend b) {
    switch (b) {
        case QueueBackend::nft_queue: return "nft-queue";
        case QueueBackend::xt_nfqueue: return "xt-NFQUEUE (nft_compat)";
        case QueueBackend::none: break;
    }
    return "none";
}

struct PodRuleset {
    Direction ingress;
    Direction egress;
    // Named sets referenced by the rules, plus "node_v4" / "node_v6" (the node's own addresses).
    std::map<std::string, AddrSet> sets;
    // The identity handshake: when not none, each chain sends new TCP
    // connections' SYN and SYN-ACK to NFQUEUE kHandshakeQueue (3472) with this
    // backend, after the loopback rule and before `ct state established`
    // (conntrack counts a SYN-ACK as established). The controller judges them.
    QueueBackend handshake = QueueBackend::none;
    // Enforce mode (docs/handshake.md, "No TCP connection without the
    // handshake"): after the queue rules, a TCP segment passes only on a
    // connection the handshake judged (conntrack mark); `ct state invalid`,
    // `ct state new` that is not a SYN, and every other TCP segment are
    // dropped, so no TCP packet reaches the address rules.
    bool handshake_enforce = false;
    // Services (docs/policy.md, "Services"): kube-proxy translates a Service
    // frontend to a backend pod in the node's netns, after this table saw the
    // packet. With `defer_services`, an isolated egress accepts new
    // connections to a frontend here (the sets "svc_v4" / "svc_v6": ClusterIPs,
    // externalIPs, load-balancer IPs; `node_ports` on the node's own
    // addresses, sets "node_v4" / "node_v6") and the node's table judges them
    // after the translation, on the backend (NodeRuleset). Without it they
    // meet the ordinary rules: refused unless an ipBlock allows the frontend
    // (fail closed when the node cannot judge them).
    bool defer_services = false;
    std::vector<PortRange> node_ports;  // sorted, merged, per protocol
    // Audit mode (docs/policy.md, "Audit mode"): the pod's namespace (or the
    // node default) says `audit`. Everything is compiled as in enforcement,
    // but the end of an isolated chain logs what would be denied with the
    // audit prefix (nflog.h: kAuditLogPrefix, same group and rate limit) and
    // accepts it (a counted accept, comment "signet <chain> audit-accept")
    // instead of the deny-log + counted drop.
    bool audit = false;
    bool operator==(const PodRuleset&) const = default;

    // True when `other` differs only in set elements (same rules, same set
    // names and families): the programmer then updates elements in place.
    bool same_structure(const PodRuleset& other) const;
};

// The node's table (one `inet` table named kNodeTableName in the node's
// netns, where kube-proxy translates Service frontends):
//
//   chain service_judge (hook forward, priority filter - 10, policy accept)
//     ct status dnat ip saddr @judged_v4 tcp flags & (syn|ack) == syn queue num kServiceQueueNum
//     ct state new ct status dnat ip saddr @judged_v4 queue num kServiceQueueNum   (v6 alike)
//     ip saddr @judged_v4 ip daddr @svc_v4 counter drop     (a frontend nobody translated)
//     [handshake] ct status dnat ip daddr @judged_v4 <signet TCP option> queue   (the backend's SYN-ACK)
//     [handshake] ct status dnat ct mark & 0x700 == proof-due ip saddr @judged_v4 queue  (the final ACK)
//   chain service_mark (hook forward, priority filter + 10) [handshake]: mark bits -> ct mark
//
// `judged`: the addresses of the local pods whose Service connections signet
// judges here (their egress is isolated). Their new translated connections
// go to NFQUEUE kServiceQueueNum in the node's netns, without bypass (fail
// closed: nobody reading, dropped), where signetd judges the pod's egress on
// the backend (datapath/service_judge.h).
inline constexpr const char* kNodeTableName = "signet_node";
inline constexpr uint16_t kServiceQueueNum = 3473;

struct NodeRuleset {
    AddrSet judged_v4{Family::v4, {}}, judged_v6{Family::v6, {}};
    AddrSet svc_v4{Family::v4, {}}, svc_v6{Family::v6, {}};
    QueueBackend queue = QueueBackend::none;
    uint16_t queue_num = kServiceQueueNum;
    // The identity handshake's client side for the judged pods' translated
    // connections: also the backend's SYN-ACK carrying a token, and the
    // pod's segments while the final ACK's proof is due (ct mark), go to the
    // queue; a chain after the filter chains copies the verdicts' mark bits
    // to the connection's conntrack mark, as in a pod's table.
    bool handshake = false;
    bool operator==(const NodeRuleset&) const = default;
};

}  // namespace signet::nft
