// The object model: typed copies of exactly the parts of Kubernetes
// Namespaces, Pods, Services (v1) and NetworkPolicies (networking.k8s.io/v1)
// that signet uses, their validation as the API server does it, and label-selector
// matching with upstream semantics.
//
// Everything here is a pure value: no I/O, no logging. Validation functions
// return an Error (code EINVAL) whose message starts with the field path
// relative to the object root, e.g.
//   "spec.ingress[0].from[1].ipBlock.except[0]: must be a strict subset of cidr".
#pragma once

#include <array>
#include <compare>
#include <cstdint>
#include <map>
#include <set>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "signet/api.h"
#include "signet/result.h"

namespace signet::cache {

using Labels = std::map<std::string, std::string>;

// ---------------------------------------------------------------------------
// Label selectors (metav1.LabelSelector)

struct Requirement {
    enum Op { In, NotIn, Exists, DoesNotExist };
    std::string key;
    Op op = In;
    std::vector<std::string> values;
    bool operator==(const Requirement&) const = default;
};

struct LabelSelector {
    Labels match_labels;
    std::vector<Requirement> match_expressions;
    bool operator==(const LabelSelector&) const = default;

    // No matchLabels and no matchExpressions: selects everything.
    bool empty() const { return match_labels.empty() && match_expressions.empty(); }
};

// Upstream semantics: every matchLabels pair and every requirement must hold
// (AND). In: key present with a listed value. NotIn: key absent, or its value
// not listed. Exists: key present. DoesNotExist: key absent. The empty
// selector matches every label set. (A *missing* selector, e.g. an absent
// peer podSelector, is modelled as std::nullopt by the caller, not here.)
bool matches(const LabelSelector& selector, const Labels& labels);

// "In", "NotIn", "Exists", "DoesNotExist" (case-sensitive, as upstream).
std::optional<Requirement::Op> parse_operator(std::string_view text);
std::string_view to_string(Requirement::Op op);
// kubectl-style rendering: "app=web,tier in (a,b),!legacy"; "" when empty.
std::string to_string(const LabelSelector& selector);

// ---------------------------------------------------------------------------
// Namespaces and Pods

// The label the API server adds to every namespace.
inline constexpr std::string_view kNamespaceNameLabel = "kubernetes.io/metadata.name";
// The namespace of namespaced objects that do not name one (kubectl without -n).
inline constexpr std::string_view kDefaultNamespace = "default";

struct Namespace {
    std::string name;
    Labels labels;  // always includes kubernetes.io/metadata.name=<name>
    bool operator==(const Namespace&) const = default;
};

struct Pod {
    std::string namespace_;
    std::string name;
    std::string uid;
    std::string node_name;
    bool host_network = false;
    Labels labels;
    std::vector<api::ContainerPort> container_ports;  // spec.containers[*].ports[*] (not initContainers)
    std::vector<std::string> pod_ips;                 // status.podIPs[*].ip, else status.podIP
    std::string phase;                                // status.phase, may be empty
    // metadata.ownerReferences: the managing controller's (controller: true)
    // kind and name; empty for a pod no controller owns.
    std::string owner_kind, owner_name;
    bool operator==(const Pod&) const = default;
};

// The workload a pod belongs to, as metrics label it (docs/metrics.md): its
// controller, with a ReplicaSet named <deployment>-<pod-template-hash> (the
// pod's label) taken as that Deployment, as is common practice; a pod no
// controller owns is its own workload (kind "Pod").
struct Workload {
    std::string kind, name;
    bool operator==(const Workload&) const = default;
};
Workload workload_of(const Pod& pod);

// A pod whose containers have all ended for good (phase Succeeded or Failed,
// e.g. a finished Job's): it is no peer of anything, and the address it still
// reports may already be another pod's. The one rule for the policy compiler
// and the handshake's cluster view.
inline bool is_terminal(const Pod& pod) { return pod.phase == "Succeeded" || pod.phase == "Failed"; }

// ---------------------------------------------------------------------------
// NetworkPolicy (networking.k8s.io/v1)

enum class Protocol { TCP, UDP, SCTP };
enum class PolicyType { Ingress, Egress };

std::optional<Protocol> parse_protocol(std::string_view text);  // "TCP", "UDP", "SCTP"
std::string_view to_string(Protocol p);
std::optional<PolicyType> parse_policy_type(std::string_view text);  // "Ingress", "Egress"
std::string_view to_string(PolicyType t);

// An IPv4 or IPv6 prefix. Host bits are cleared on parsing ("10.1.2.3/8" is
// 10.0.0.0/8, as Go's net.ParseCIDR returns it).
struct Cidr {
    int family = 4;                     // 4 or 6
    std::array<uint8_t, 16> address{};  // network byte order; IPv4 uses the first 4 bytes
    int prefix_len = 0;
    bool operator==(const Cidr&) const = default;
    auto operator<=>(const Cidr&) const = default;

    // Whether `other` lies entirely inside this prefix (same family, longer or equal prefix).
    bool contains(const Cidr& other) const;
    std::string to_string() const;  // canonical: "10.0.0.0/8", "2001:db8::/32"
};

// Parses "a.b.c.d/n" or "x:y::z/n". No leading zeros in IPv4 octets; prefix 0..32 / 0..128.
Result<Cidr> parse_cidr(std::string_view text);
// Whether text is a single IPv4 or IPv6 address.
bool is_ip_address(std::string_view text);

struct IpBlock {
    Cidr cidr;
    std::vector<Cidr> except;
    bool operator==(const IpBlock&) const = default;
};

// A peer: pod selector and/or namespace selector, or an ipBlock alone.
// Absent (nullopt) and empty ({}) selectors differ, as upstream:
//  - podSelector only: pods in the policy's namespace;
//  - namespaceSelector only: all pods in the selected namespaces;
//  - both: the selected pods in the selected namespaces.
struct Peer {
    std::optional<LabelSelector> pod_selector;
    std::optional<LabelSelector> namespace_selector;
    std::optional<IpBlock> ip_block;
    bool operator==(const Peer&) const = default;
};

// A port is a number or the name of a container port (resolved per pod).
using PortValue = std::variant<int32_t, std::string>;

struct PolicyPort {
    Protocol protocol = Protocol::TCP;
    std::optional<PortValue> port;    // nullopt: all ports of the protocol
    std::optional<int32_t> end_port;  // only with a numeric port; range [port, end_port]
    bool operator==(const PolicyPort&) const = default;
};

// `from`/`to`/`ports`: nullopt when the field is absent, an empty vector
// when it is given as []. Upstream gives both the same meaning (the rule
// matches all peers / all ports); the difference is kept for display.
struct IngressRule {
    std::optional<std::vector<Peer>> from;
    std::optional<std::vector<PolicyPort>> ports;
    bool operator==(const IngressRule&) const = default;
};

struct EgressRule {
    std::optional<std::vector<Peer>> to;
    std::optional<std::vector<PolicyPort>> ports;
    bool operator==(const EgressRule&) const = default;
};

struct NetworkPolicy {
    std::string namespace_;
    std::string name;
    LabelSelector pod_selector;  // an absent spec.podSelector is the empty selector (all pods)
    // Normalized: de-duplicated, Ingress before Egress, never empty. When
    // spec.policyTypes is absent or empty it is inferred as upstream does:
    // Ingress always, Egress when spec.egress has at least one rule.
    std::vector<PolicyType> policy_types;
    bool policy_types_inferred = false;
    std::vector<IngressRule> ingress;
    std::vector<EgressRule> egress;
    bool operator==(const NetworkPolicy&) const = default;

    bool affects_ingress() const;
    bool affects_egress() const;
};

// Upstream defaulting of policyTypes (SetDefaults_NetworkPolicy), applied to
// `explicit_types` as read from the manifest (possibly empty).
std::vector<PolicyType> effective_policy_types(const std::vector<PolicyType>& explicit_types,
                                               const std::vector<EgressRule>& egress);

// ---------------------------------------------------------------------------
// Services (v1): their frontends (the addresses and ports kube-proxy
// translates) and their selector. No EndpointSlices: a Service's backends are
// the pods its selector picks (see docs/policy.md).

struct ServicePort {
    std::string name;
    Protocol protocol = Protocol::TCP;
    uint16_t port = 0;
    std::string target_port;  // as written: a number ("8080") or a container port name; "" = same as port
    uint16_t node_port = 0;   // 0 = none
    bool operator==(const ServicePort&) const = default;
};

struct Service {
    std::string namespace_;
    std::string name;
    std::string type = "ClusterIP";              // ClusterIP | NodePort | LoadBalancer | ExternalName
    std::vector<std::string> cluster_ips;        // spec.clusterIPs, else spec.clusterIP; "None" (headless) -> empty
    std::vector<std::string> external_ips;       // spec.externalIPs
    std::vector<std::string> load_balancer_ips;  // status.loadBalancer.ingress[*].ip
    std::vector<ServicePort> ports;
    std::optional<Labels> selector;              // nullopt = no selector (manual endpoints)
    bool internal_traffic_local = false;         // spec.internalTrafficPolicy == Local
    bool operator==(const Service&) const = default;
};

// The values of Service.type.
bool is_service_type(std::string_view text);

// ---------------------------------------------------------------------------
// Any object, and a snapshot of all of them

using Object = std::variant<Namespace, Pod, NetworkPolicy, Service>;

struct ObjectKey {
    std::string namespace_;
    std::string name;
    bool operator==(const ObjectKey&) const = default;
    auto operator<=>(const ObjectKey&) const = default;
};

std::string_view kind_of(const Object& obj);  // "Namespace", "Pod", "NetworkPolicy", "Service"
// "name" for namespaces, "namespace/name" otherwise.
std::string display_name(const Object& obj);

// All objects of a source. std::map everywhere: iteration order is
// deterministic (sorted by name / (namespace, name)).
struct Snapshot {
    std::map<std::string, Namespace> namespaces;
    std::map<ObjectKey, Pod> pods;
    std::map<ObjectKey, NetworkPolicy> policies;
    std::map<ObjectKey, Service> services;
    bool operator==(const Snapshot&) const = default;

    // Inserts or replaces; returns true when an object of the same kind and
    // name was already present (it is replaced).
    bool put(const Object& obj);
    bool empty() const { return namespaces.empty() && pods.empty() && policies.empty() && services.empty(); }
    size_t size() const { return namespaces.size() + pods.size() + policies.size() + services.size(); }
};

// What changed in a snapshot since its consumer last looked: the keys to
// read again (present in the snapshot: added or changed; absent: removed).
// `all`: anything may have changed (a relist, a first read); compare everything.
struct Delta {
    bool all = false;
    std::set<std::string> namespaces;
    std::set<ObjectKey> pods;
    std::set<ObjectKey> policies;
    std::set<ObjectKey> services;

    void note(const Object& obj);
    void merge(const Delta& other);
    bool empty() const {
        return !all && namespaces.empty() && pods.empty() && policies.empty() && services.empty();
    }
    // True when `a` and `b` hold the same objects under every key noted here.
    bool same_in(const Snapshot& a, const Snapshot& b) const;
};

// ---------------------------------------------------------------------------
// Validation (k8s.io/apimachinery validation rules)

// RFC 1123 label: [a-z0-9]([-a-z0-9]*[a-z0-9])?, at most 63 characters.
bool is_dns1123_label(std::string_view s);
// RFC 1123 subdomain: dot-separated labels, at most 253 characters.
bool is_dns1123_subdomain(std::string_view s);
// Label key: [prefix/]name; prefix a DNS-1123 subdomain, name 1..63 characters
// of [A-Za-z0-9_.-] starting and ending alphanumeric. "" when valid, else why.
std::string check_label_key(std::string_view key);
// Label value: empty, or 1..63 characters as a key's name part. "" when valid, else why.
std::string check_label_value(std::string_view value);
// IANA service name as used for named ports: 1..15 of [a-z0-9-], at least one
// letter, no leading/trailing or doubled '-'.
bool is_port_name(std::string_view s);

// Each returns the first problem found, its message prefixed with `path`
// (or with the field path from the object root for whole objects).
Status validate_labels(const Labels& labels, std::string_view path);
Status validate(const LabelSelector& selector, std::string_view path);
Status validate(const Namespace& ns);
Status validate(const Pod& pod);
Status validate(const NetworkPolicy& policy);
Status validate(const Service& service);
Status validate(const Object& obj);

}  // namespace signet::cache
