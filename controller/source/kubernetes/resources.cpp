#include "resources.h"

#include <cerrno>

#include "../manifest.h"
#include "signet/json.h"

namespace signet::source::k8s {

using rapidjson::Value;
using kube::object_ref;

std::string_view resource_name(Resource r) {
    switch (r) {
        case Resource::Namespaces: return "namespaces";
        case Resource::Pods: return "pods";
        case Resource::NetworkPolicies: return "networkpolicies";
        case Resource::Nodes: return "nodes";
        case Resource::Services: return "services";
    }
    return "?";
}

std::string_view resource_path(Resource r) {
    switch (r) {
        case Resource::Namespaces: return "/api/v1/namespaces";
        case Resource::Pods: return "/api/v1/pods";
        case Resource::NetworkPolicies: return "/apis/networking.k8s.io/v1/networkpolicies";
        case Resource::Nodes: return "/api/v1/nodes";
        case Resource::Services: return "/api/v1/services";
    }
    return "/";
}

std::string_view resource_kind(Resource r) {
    switch (r) {
        case Resource::Namespaces: return "Namespace";
        case Resource::Pods: return "Pod";
        case Resource::NetworkPolicies: return "NetworkPolicy";
        case Resource::Nodes: return "Node";
        case Resource::Services: return "Service";
    }
    return "?";
}

bool is_namespaced(Resource r) { return r != Resource::Namespaces && r != Resource::Nodes; }

Result<NodeInfo> decode_node(const Value& obj) {
    if (!obj.IsObject()) return make_error(EINVAL, "not an object");
    auto ref = object_ref(obj);
    if (!ref) return ref.error();
    NodeInfo n;
    n.name = ref->name;
    const Value* st = json::find(obj, "status");
    const Value* addrs = st ? json::find(*st, "addresses") : nullptr;
    if (addrs && !addrs->IsNull()) {
        if (!addrs->IsArray()) return make_error(EINVAL, "status.addresses: must be a list");
        for (rapidjson::SizeType i = 0; i < addrs->Size(); ++i) {
            const Value& a = (*addrs)[i];
            auto type = json::opt_string(a, "type");
            auto addr = json::opt_string(a, "address");
            if (!type || !addr)
                return make_error(EINVAL, "status.addresses[" + std::to_string(i) + "]: needs type and address strings");
            if (*type != "InternalIP") continue;
            if (!cache::is_ip_address(*addr))
                return make_error(EINVAL, "status.addresses[" + std::to_string(i) + "].address: not an IP address: '" +
                                              *addr + "'");
            n.internal_ips.push_back(*addr);
        }
    }
    return n;
}

Result<Item> decode_item(Resource r, const Value& obj) {
    if (!obj.IsObject()) return make_error(EINVAL, "not an object");
    if (auto k = json::opt_string(obj, "kind"); k && !k->empty() && *k != resource_kind(r))
        return make_error(EINVAL, "kind: expected " + std::string(resource_kind(r)) + ", got " + *k);
    auto wrap = [](auto res) -> Result<Item> {
        if (!res) return res.error();
        return Item(std::move(*res));
    };
    switch (r) {
        case Resource::Namespaces: return wrap(decode_namespace(obj));
        case Resource::Pods: return wrap(decode_pod(obj));
        case Resource::NetworkPolicies: return wrap(decode_network_policy(obj));
        case Resource::Nodes: return wrap(decode_node(obj));
        case Resource::Services: return wrap(decode_service(obj));
    }
    return make_error(EINVAL, "unknown resource");
}

}  // namespace signet::source::k8s
