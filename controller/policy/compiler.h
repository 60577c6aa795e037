// The policy compiler: Kubernetes NetworkPolicy (networking.k8s.io/v1)
// semantics turned into the rule-set IR (nft/ruleset.h) of each local pod,
// kept up to date incrementally as Namespaces, Pods and NetworkPolicies
// change; pure evaluation of that IR (allows); and explain (which policies
// and rules decide a flow). Pure code: no I/O, no logging, no exceptions.
//
// Indexes. Every distinct peer selector of every policy (podSelector alone in
// the policy's namespace, namespaceSelector alone, or both) is indexed once,
// with its member pods and their addresses. A pod change is matched only
// against the selectors that can select it (those of its namespace, and the
// namespace selectors that match its namespace), and the local pods whose
// rule sets reference a changed selector are reported for recompilation.
//
// Set names (`[a-z0-9_]`, at most 32 characters) are derived only from the
// policy's namespace/name, the direction, the rule index and, for egress
// named ports, the resolved port group, so a change of membership alone gives
// a rule set with the same structure (PodRuleset::same_structure).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <rapidjson/document.h>

#include "../cache/objects.h"
#include "../nft/ruleset.h"
#include "addr.h"
#include "signet/result.h"

namespace signet::policy {

using cache::ObjectKey;

// A pod running on this node, as the CNI plugin registered it. Its labels and
// container ports come from the Pod object of the same key; `ips` (what CNI
// assigned: "10.1.0.5", "10.1.0.5/24", "fd00::5/64") override the object's
// status.podIPs wherever the pod's addresses are used.
struct LocalPod {
    std::string namespace_;
    std::string name;
    std::vector<std::string> ips;
    bool operator==(const LocalPod&) const = default;
};

// What a change touched: the local pods whose rule set may differ now.
// Recompile each with Compiler::compile() and compare with what is
// programmed: same_structure() tells an element-only update from a table
// rewrite. (A pod listed may turn out unchanged.)
struct Affected {
    std::set<ObjectKey> pods;
    bool empty() const { return pods.empty(); }
    void merge(const Affected& other) { pods.insert(other.pods.begin(), other.pods.end()); }
};

// One side of a flow for explain: a pod (namespace/name) or an address.
struct Endpoint {
    std::string namespace_;  // pod, when name is set
    std::string name;
    std::string ip;          // address, when name is empty; for a pod, optionally the one address
                             // the flow uses (else ipBlocks are matched against all the pod's addresses)
    bool is_pod() const { return !name.empty(); }
    std::string to_string() const {
        return is_pod() ? namespace_ + "/" + name + (ip.empty() ? "" : " (" + ip + ")") : ip;
    }
    static Endpoint pod(std::string ns, std::string name) { return Endpoint{std::move(ns), std::move(name), {}}; }
    static Endpoint pod_at(std::string ns, std::string name, std::string ip) {
        return Endpoint{std::move(ns), std::move(name), std::move(ip)};
    }
    static Endpoint address(std::string ip) { return Endpoint{{}, {}, std::move(ip)}; }
};
// "namespace/name" (a pod) or an IPv4/IPv6 address. EINVAL otherwise.
Result<Endpoint> parse_endpoint(std::string_view text);

// The verdict of one pod's policy for one direction of a flow.
struct SideVerdict {
    std::string pod;                 // "namespace/name"
    bool ingress = false;            // direction judged: the destination's ingress or the source's egress
    bool allowed = false;
    bool isolated = false;           // some policy selects the pod for this direction
    std::string reason;              // "not isolated", "allowed by policy rules", "default deny", "from the node", ...
    std::vector<ObjectKey> policies; // the policies selecting the pod for this direction
    std::vector<nft::Origin> rules;  // the rules that allow the flow
};

struct Explanation {
    bool allowed = false;
    std::string from, to;            // as given
    uint8_t proto = nft::kTcp;
    uint16_t port = 0;
    // Egress of the source when it is a known pod; ingress of the destination when it is one.
    std::optional<SideVerdict> egress;
    std::optional<SideVerdict> ingress;

    std::string text() const;  // readable, multi-line
    void to_json(rapidjson::Value& out, rapidjson::Document::AllocatorType& alloc) const;
    std::string json() const;  // compact JSON text
};

// Pure evaluation of a rule set: whether a new connection of `proto` to
// destination port `port` with the remote end `peer` is accepted by the
// ingress (peer = source) or egress (peer = destination) chain. Mirrors the
// chain layout described in nft/ruleset.h (node addresses, isolation, rules).
bool allows(const nft::PodRuleset& rs, bool ingress, const Ip& peer, uint8_t proto, uint16_t port);

std::string_view proto_name(uint8_t proto);              // "TCP", "UDP", "SCTP", or the number
std::optional<uint8_t> parse_proto(std::string_view s);  // "tcp"/"TCP"/"6", ...

struct CompilerState;  // internal (compiler_state.h)

class Compiler {
public:
    Compiler();
    ~Compiler();
    Compiler(Compiler&&) noexcept;
    Compiler& operator=(Compiler&&) noexcept;
    Compiler(const Compiler&) = delete;
    Compiler& operator=(const Compiler&) = delete;

    // Full rebuild of every index. `node_addresses` are the node's own IPs
    // (plain or CIDR): traffic from them is always allowed on ingress.
    // Unparsable addresses are skipped (they never match anything).
    void reset(const cache::Snapshot& snapshot, const std::vector<LocalPod>& local_pods,
               const std::vector<std::string>& node_addresses);

    // Incremental updates. Each returns the local pods to recompile.
    Affected put_local_pod(const LocalPod& pod);      // registered or re-registered (new IPs)
    Affected remove_local_pod(const ObjectKey& key);
    Affected put_pod(const cache::Pod& pod);           // any pod in the cluster, added or changed
    Affected remove_pod(const ObjectKey& key);
    Affected put_namespace(const cache::Namespace& ns);
    Affected remove_namespace(const std::string& name);
    Affected put_policy(const cache::NetworkPolicy& policy);
    Affected remove_policy(const ObjectKey& key);
    Affected set_node_addresses(const std::vector<std::string>& node_addresses);
    // Brings the state to `next` by applying the differences as the calls above.
    Affected update(const cache::Snapshot& next);
    // The same, visiting only the keys in `delta` (all of them when delta.all):
    // one Pod changing among thousands costs its own selectors, not a scan.
    Affected update(const cache::Snapshot& next, const cache::Delta& delta);

    // The rule set of a registered local pod. ENOENT when not registered.
    // A local pod whose Pod object is not known yet is isolated both ways with
    // no rules (fail closed); a hostNetwork pod is not isolated (out of scope).
    Result<nft::PodRuleset> compile(const ObjectKey& local) const;
    // The rule set any pod of the snapshot would get (not necessarily local),
    // with its addresses as registered or from its object. ENOENT if unknown.
    Result<nft::PodRuleset> compile_any(const ObjectKey& pod) const;

    // Why a flow is allowed or denied, by policy semantics on identities
    // (namespace, labels; addresses for ipBlocks and outside endpoints).
    // ENOENT for a pod that is not known, EINVAL for a bad address.
    Result<Explanation> explain(const Endpoint& from, const Endpoint& to, uint8_t proto, uint16_t port) const;
    // One side of a flow as explain judges it, asked without text: the pod
    // `local`'s ingress (peer = source) or egress (peer = destination), the
    // peer being the pod `peer_pod` at `peer_ip`, or the address alone. The
    // same verdict as explain's side for Endpoint::pod(local) and
    // Endpoint::pod_at(peer_pod, peer_ip) / Endpoint::address(peer_ip).
    // ENOENT for a pod that is not known. (The query's cache, query.h.)
    Result<SideVerdict> judge_side(const ObjectKey& local, bool ingress, const std::optional<ObjectKey>& peer_pod,
                                   const Ip& peer_ip, uint8_t proto, uint16_t port) const;

    // The policies selecting a pod for a direction (sorted by namespace/name).
    std::vector<ObjectKey> selecting_policies(const ObjectKey& pod, cache::PolicyType direction) const;

    const cache::Snapshot& snapshot() const;
    std::vector<ObjectKey> local_pods() const;
    // Rough bytes held by the indexes (for the benchmark and metrics).
    size_t memory_estimate() const;
    size_t selector_count() const;

private:
    std::unique_ptr<CompilerState> s_;
};

}  // namespace signet::policy
