// signet: the narrow interface between the controller core and the kernel's
// nftables. The core programs each local pod through a Backend; tests use
// FakeBackend (fake_backend.h), the daemon uses NetlinkBackend.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "nft/conntrack.h"
#include "nft/netns.h"
#include "nft/ruleset.h"
#include "signet/result.h"

namespace signet::nft {

enum class Dir : uint8_t { ingress, egress };

// Packets accepted by the nft rules emitted for one Origin in one direction
// (summed over families and port ranges).
struct RuleCounter {
    Dir direction = Dir::ingress;
    Origin origin;
    uint64_t packets = 0;
    uint64_t bytes = 0;
    bool operator==(const RuleCounter&) const = default;
};

struct Counters {
    std::vector<RuleCounter> accepts;  // in rule order, ingress first
    // Default-deny drops (denied attempts) per direction.
    uint64_t ingress_drop_packets = 0;
    uint64_t ingress_drop_bytes = 0;
    uint64_t egress_drop_packets = 0;
    uint64_t egress_drop_bytes = 0;
    // Audit mode: what the default deny would have dropped, accepted (the
    // counted accept "signet <chain> audit-accept") per direction.
    uint64_t ingress_audit_packets = 0;
    uint64_t egress_audit_packets = 0;
    bool operator==(const Counters&) const = default;
};

class Backend {
public:
    virtual ~Backend() = default;

    // True when calls for different Netns handles may run concurrently (the
    // enforcer then writes the tables of a change in parallel).
    virtual bool concurrent() const { return false; }

    // Makes the pod's table equal to `desired`. `current` is what the caller
    // believes is installed (nullptr: unknown, e.g. after a restart). When
    // `current` has the same structure only set elements are changed,
    // otherwise the whole table is replaced; either way in one atomic batch.
    // Established connections survive both (they are accepted by conntrack
    // state, not by the replaced rules).
    virtual Status apply(Netns& ns, const PodRuleset& desired, const PodRuleset* current) = 0;

    // Deletes the pod's table; succeeds when there is none.
    virtual Status remove(Netns& ns) = 0;

    virtual Result<bool> table_exists(Netns& ns) = 0;

    // The node's table (kNodeTableName in the node's netns): written whole,
    // in one atomic batch; removal succeeds when there is none.
    virtual Status apply_node(Netns& ns, const NodeRuleset& desired) = 0;
    virtual Status remove_node(Netns& ns) = 0;

    virtual Result<Counters> counters(Netns& ns) = 0;

    // Opens the pod's netns (the fake returns a detached handle).
    virtual Result<Netns> open(const std::string& path) = 0;

    // The netns's conntrack entries, and removal of one (to cut an
    // established connection that the policy no longer allows).
    virtual Result<std::vector<CtEntry>> conntrack(Netns& ns) = 0;
    virtual Status conntrack_delete(Netns& ns, const CtTuple& orig) = 0;
};

}  // namespace signet::nft
