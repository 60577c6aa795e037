// The objects signetd's Kubernetes source reads (Namespaces, Pods,
// NetworkPolicies, Nodes, Services): their API paths and the decoding of one API
// object into the typed cache objects. Pure code: fuzzed with the watch
// stream by test/fuzz/fuzz_k8s_watch.cpp.
#pragma once

#include <rapidjson/document.h>

#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "../../cache/objects.h"
#include "kube/watch_stream.h"
#include "signet/result.h"

namespace signet::source::k8s {

// A Node reduced to what signet needs.
struct NodeInfo {
    std::string name;
    std::vector<std::string> internal_ips;  // status.addresses[type=InternalIP]
    bool operator==(const NodeInfo&) const = default;
};
Result<NodeInfo> decode_node(const rapidjson::Value& obj);

// Every resource is listed and watched (one reflector each); the source is
// ready once each has been listed. Loops run over 0..kResourceCount-1.
enum class Resource { Namespaces = 0, Pods = 1, NetworkPolicies = 2, Nodes = 3, Services = 4 };
inline constexpr int kResourceCount = 5;
std::string_view resource_name(Resource r);   // "namespaces", "pods", "networkpolicies", "nodes", "services"
std::string_view resource_path(Resource r);   // "/api/v1/pods", "/apis/networking.k8s.io/v1/networkpolicies", ...
std::string_view resource_kind(Resource r);   // "Pod", ...
// Whether objects of `r` live in a namespace (Pods, NetworkPolicies, Services).
bool is_namespaced(Resource r);

using Item = std::variant<cache::Namespace, cache::Pod, cache::NetworkPolicy, NodeInfo, cache::Service>;

// Decodes one API object of resource `r` (the typed decoders of manifest.h,
// plus kind/apiVersion checks when present).
Result<Item> decode_item(Resource r, const rapidjson::Value& obj);

}  // namespace signet::source::k8s
