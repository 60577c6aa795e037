// Internal: the compiler's indexes. Not part of the public API.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "compiler.h"

namespace signet::policy {

namespace detail {

uint64_t fnv1a(std::string_view s, uint64_t h = 14695981039346656037ULL);
std::string hex(uint64_t v, int digits);
uint8_t proto_number(cache::Protocol p);
void resolve_named(const std::string& name, cache::Protocol proto, const std::vector<api::ContainerPort>& ports,
                   std::vector<nft::PortRange>& out);

// A distinct peer selector: podSelector alone (in fixed_ns), or with a namespaceSelector.
struct Selector {
    uint32_t id = 0;
    std::string key;
    std::string fixed_ns;
    std::optional<cache::LabelSelector> ns_sel;
    cache::LabelSelector pod_sel;
    int refs = 0;
    std::set<ObjectKey> members;      // eligible pods selected
    std::vector<nft::Addr> v4, v6;    // their addresses, sorted (duplicates kept: one per member address)
    std::vector<nft::Range> r4, r6;   // the same as merged ranges (refreshed by CompilerState::flush)
};

// What the index keeps of each pod object.
struct PodInfo {
    std::string ns;
    cache::Labels labels;
    std::vector<api::ContainerPort> ports;
    std::vector<Ip> ips;          // effective: CNI (local) or status.podIPs
    bool host_network = false;
    bool eligible = false;        // may be a peer: not hostNetwork, has addresses, not terminated
    std::vector<uint32_t> sels;   // selectors it is a member of, sorted
};

struct PeerRef {
    bool is_block = false;
    int64_t sel = -1;                  // selector id when not a block
    nft::Family block_family = nft::Family::v4;
    std::vector<nft::Range> block;     // ipBlock minus except
};

struct RuleInfo {
    bool any_peer = true;              // from/to absent or empty
    std::vector<PeerRef> peers;
    int64_t any_sel = -1;              // egress, any peer, named ports: the all-pods selector
};

struct PolicyInfo {
    std::string prefix;                // 12 hex digits of hash(namespace/name)
    bool ingress_on = false, egress_on = false;
    std::vector<RuleInfo> ingress, egress;
    std::vector<uint32_t> sel_ids;     // acquired selectors (with repeats)
};

}  // namespace detail

struct CompilerState {
    cache::Snapshot snap;
    std::map<ObjectKey, std::vector<Ip>> locals;
    std::map<std::string, std::set<std::string>> locals_by_ns;
    nft::AddrSet node_v4{nft::Family::v4, {}, false}, node_v6{nft::Family::v6, {}, false};  // hash sets

    std::map<ObjectKey, detail::PodInfo> pods;
    std::map<std::string, std::set<std::string>> pods_by_ns;

    std::map<uint32_t, detail::Selector> sels;
    std::map<std::string, uint32_t> sel_by_key;
    uint32_t next_sel_id = 0;
    std::map<std::string, std::set<uint32_t>> fixed_by_ns;       // podSelector-only selectors by namespace
    std::set<uint32_t> ns_selectors;                             // selectors with a namespaceSelector
    std::map<std::string, std::set<uint32_t>> ns_sel_matching;   // namespace -> ns selectors matching it
    std::map<uint32_t, std::set<ObjectKey>> sel_users;           // selector -> policies using it

    std::set<uint32_t> dirty;                                    // selectors whose r4/r6 are stale

    std::map<ObjectKey, detail::PolicyInfo> pols;
    std::map<std::string, std::set<std::string>> pols_by_ns;

    cache::Labels ns_labels(const std::string& ns) const;
    void ensure_ns(const std::string& ns);
    std::vector<Ip> effective_ips(const ObjectKey& key, const cache::Pod* pod) const;
    bool selector_matches(uint32_t id, const detail::Selector& sel, const detail::PodInfo& info) const;
    void add_member(detail::Selector& sel, const ObjectKey& key, const detail::PodInfo& info);
    void remove_member(detail::Selector& sel, const ObjectKey& key, const std::vector<Ip>& ips);
    std::set<uint32_t> refresh_pod(const ObjectKey& key, bool* self_changed);
    uint32_t acquire_selector(const std::string& fixed_ns, const std::optional<cache::LabelSelector>& ns_sel,
                              const cache::LabelSelector& pod_sel);
    void release_selector(uint32_t id);
    detail::PolicyInfo register_policy(const cache::NetworkPolicy& p);
    void unregister_policy(const detail::PolicyInfo& info);
    bool policy_selects(const cache::NetworkPolicy& p, const ObjectKey& local) const;
    void users_of(const std::set<uint32_t>& changed, std::set<ObjectKey>& out) const;
    void add_policy(const ObjectKey& key);
    void drop_policy(const ObjectKey& key);
    void selected_locals(const cache::NetworkPolicy& p, std::set<ObjectKey>& out) const;
    Affected namespace_changed(const std::string& ns);
    void set_nodes(const std::vector<std::string>& addrs);
    void flush();  // refreshes the ranges of dirty selectors

    void emit_rule(nft::PodRuleset& rs, const cache::NetworkPolicy& p, const detail::PolicyInfo& info, bool ingress,
                   size_t index, const detail::RuleInfo& rule,
                   const std::optional<std::vector<cache::PolicyPort>>& ports, const detail::PodInfo& self) const;
    nft::PodRuleset compile_pod(const ObjectKey& key) const;
};

}  // namespace signet::policy
