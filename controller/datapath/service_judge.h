// Services, judged after kube-proxy's translation (docs/policy.md,
// "Services"). kube-proxy rewrites a Service frontend (ClusterIP, NodePort,
// externalIP, load-balancer IP) to a backend pod in the node's netns, after
// the client pod's own table saw the packet. The client's table lets new
// connections to frontends through (PodRuleset::defer_services); the node's
// table (nft::NodeRuleset) sends the translated ones of the judged pods to
// NFQUEUE 3473 in the node's netns, and this judge gives the verdict: the
// client pod's egress policy on the backend (address, pod, protocol, port),
// as if the client had connected to the backend directly.
//
// Fail closed: a packet that cannot be read, from an address that is no
// local pod, is dropped (so is everything queued while nobody reads: no
// bypass). Pure code over the policy query; the queue binding is the
// caller's (tests call judge() with packets they built; fuzz_service_judge).
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <span>
#include <string>

#include "datapath/nfqueue.h"
#include "policy/addr.h"
#include "policy/query.h"
#include "signet/result.h"

namespace signet::handshake {

// The addresses, protocol and ports of an IP packet's first fragment.
struct L4Tuple {
    policy::Ip src, dst;
    uint8_t proto = 0;
    uint16_t sport = 0, dport = 0;  // 0 for protocols without ports (ICMP)
    uint8_t tcp_flags = 0;          // TCP only
};
// IPv4 (options skipped) or IPv6 (hop-by-hop, routing, destination options
// skipped); TCP, UDP, SCTP ports. EBADMSG: truncated or malformed; a
// non-first fragment has no ports (EBADMSG: conntrack reassembles before
// the forward hook, so one never arrives here).
Result<L4Tuple> parse_l4(std::span<const uint8_t> packet);

class ServiceJudge {
public:
    struct Context {
        policy::Query* policy = nullptr;
        // The local pod at an address (the client), and any pod at an address
        // (the backend: this node's or another's).
        std::function<std::optional<policy::ObjectKey>(const policy::Ip&)> local_pod;
        std::function<std::optional<policy::ObjectKey>(const policy::Ip&)> pod_at;
        // With the identity handshake on: its client side at the node
        // (HandshakeEngine::judge_at_node), which judges TCP itself; nullopt
        // from it: not TCP, judged here.
        std::function<std::optional<Decision>(const QueuedPacket&)> tcp_handshake;
        // Audit mode (docs/policy.md): whether the client pod audits instead
        // of enforcing; what its policy denies is then accepted and counted
        // (audit_denied), as denials here are counted. Unset: enforce.
        std::function<bool(const policy::ObjectKey&)> audit;
    };
    explicit ServiceJudge(Context ctx) : ctx_(std::move(ctx)) {}

    Decision judge(const QueuedPacket& p);

    struct Counters {
        uint64_t judged = 0, allowed = 0, denied = 0;
        uint64_t audit_denied = 0;     // denied by the policy, accepted in audit mode
        uint64_t not_a_local_pod = 0;  // the source is no local pod (dropped)
        uint64_t malformed = 0;        // unreadable packet (dropped)
        uint64_t handshake_segments = 0;  // SYN-ACKs and final ACKs of the handshake at the node
    };
    const Counters& counters() const { return counters_; }

    // The last denials (at most 32), newest last, for status and logs.
    struct Denial {
        std::string client, backend;  // "ns/name", backend "ns/name" or the address
        std::string backend_ip;
        uint8_t proto = 0;
        uint16_t port = 0;
        bool isolated = true;
    };
    const std::deque<Denial>& recent_denials() const { return denials_; }

private:
    Context ctx_;
    Counters counters_;
    std::deque<Denial> denials_;
};

}  // namespace signet::handshake
