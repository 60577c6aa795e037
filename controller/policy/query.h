// The question the datapath (the handshake engine), the flow service and the
// API ask of the policy in force: what does it say about a connection, and
// which rule decides? Two ways to ask:
//
//   check(ConnKey)  the compact query of the per-packet and per-flow paths:
//                   one side of one connection in binary (no text built),
//                   answered from a bounded cache of the current policy
//                   version, so a hot connection costs one hash lookup;
//   explain()       the human-facing answer (signetctl explain, the API):
//                   both sides, every policy and rule, the reasons as text.
//                   Not cached.
//
// check() gives the same verdict as explain()'s side for the same flow (the
// compiler judges both the same way: Compiler::judge_side).
//
// Owned by the Controller, over the Enforcer's compiler; lent to the
// Enforcer, which calls changed() whenever it changes the compiler's state
// (a new snapshot, a local pod added or gone, the node's addresses): every
// cached answer is of the version before and is dropped. Lent to the flow
// service and the handshake engine, which need nothing of core/.
//
// Threads: the event loop's only, like everything that asks it and the
// compiler changes it reports (docs/architecture.md, the threads table). The
// cache is not locked.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "addr.h"
#include "compiler.h"
#include "signet/result.h"

namespace signet::policy {

// One side of a new connection: the local pod's ingress (the peer is the
// source) or its egress (the peer is the destination). The peer is a pod (its
// identity, proven by a token or taken from its address) at `peer_ip`, or the
// address alone (judged by ipBlocks and the node's own addresses only).
struct ConnKey {
    bool ingress = false;
    ObjectKey local;
    std::optional<ObjectKey> peer_pod;
    Ip peer_ip;  // for IPv4 the last 12 bytes are 0, as parse_ip makes them
    uint8_t proto = nft::kTcp;
    uint16_t port = 0;  // the destination port
    bool operator==(const ConnKey&) const = default;
};

struct ConnKeyHash {
    size_t operator()(const ConnKey& k) const;
};

// The compact answer. `by` names what decided an allowed side of an isolated
// pod: the first rule allowing it (`by` its policy, "namespace/name", and
// `rule` its index) or, with no rule, the reason (traffic from the node's own
// address). An id, the text is Query::label(by): valid until the next
// changed().
struct ConnVerdict {
    bool answered = false;  // false: a pod not known to the compiler (then never allowed)
    bool allowed = false;
    bool isolated = false;  // some policy selects the local pod for this direction
    uint32_t by = 0;        // 0: nothing (not isolated, or denied)
    int rule = -1;
};

class Query {
public:
    static constexpr size_t kDefaultCapacity = 65536;
    explicit Query(const Compiler& compiler, size_t capacity = kDefaultCapacity);
    Query(const Query&) = delete;
    Query& operator=(const Query&) = delete;

    // The policy's verdict on one side of a connection (cached).
    ConnVerdict check(const ConnKey& key);
    // The text of a verdict's `by` ("" for 0).
    const std::string& label(uint32_t id) const;

    // Both sides of a flow, every policy and rule, with reasons (not cached).
    Result<Explanation> explain(const Endpoint& from, const Endpoint& to, uint8_t proto, uint16_t port) const {
        return compiler_.explain(from, to, proto, port);
    }

    // The compiler's state changed: a new policy version, the cache dropped.
    void changed();
    uint64_t version() const { return version_; }

    struct Stats {
        uint64_t hits = 0, misses = 0;
        uint64_t evictions = 0;  // the cache emptied because it was full
        uint64_t versions = 0;   // changed() calls
        size_t entries = 0;
    };
    Stats stats() const;

private:
    uint32_t intern(const std::string& text);

    const Compiler& compiler_;
    size_t capacity_;
    uint64_t version_ = 0;
    std::unordered_map<ConnKey, ConnVerdict, ConnKeyHash> cache_;
    // Labels of this version by id (index + 1), and their ids by text.
    std::vector<std::string> labels_;
    std::unordered_map<std::string, uint32_t> label_ids_;
    uint64_t hits_ = 0, misses_ = 0, evictions_ = 0;
};

}  // namespace signet::policy
