#include "watch_stream.h"

#include <cerrno>

#include "../manifest.h"
#include "signet/json.h"

namespace signet::source::k8s {

using rapidjson::Value;

Status JsonStreamSplitter::feed(std::string_view data, const std::function<Status(std::string_view)>& on_value) {
    size_t start = 0;  // start of the unconsumed part of `data` belonging to the current value
    for (size_t i = 0; i < data.size(); ++i) {
        char c = data[i];
        if (depth_ == 0) {
            if (c == ' ' || c == '\n' || c == '\r' || c == '\t') {
                start = i + 1;
                continue;
            }
            if (c != '{') {
                char hex[8];
                std::snprintf(hex, sizeof hex, "0x%02x", static_cast<unsigned char>(c));
                return make_error(EBADMSG, std::string("watch stream: unexpected byte ") + hex + " between events");
            }
            depth_ = 1;
            start = i;
            continue;
        }
        if (in_string_) {
            if (escape_) escape_ = false;
            else if (c == '\\') escape_ = true;
            else if (c == '"') in_string_ = false;
        } else if (c == '"') {
            in_string_ = true;
        } else if (c == '{' || c == '[') {
            ++depth_;
        } else if (c == '}' || c == ']') {
            if (--depth_ == 0) {
                std::string_view piece = data.substr(start, i + 1 - start);
                if (buf_.size() + piece.size() > max_)
                    return make_error(EFBIG, "watch stream: an event larger than " + std::to_string(max_) + " bytes");
                Status st;
                if (buf_.empty()) {
                    st = on_value(piece);
                } else {
                    buf_.append(piece);
                    std::string value;
                    value.swap(buf_);
                    st = on_value(value);
                }
                start = i + 1;
                if (!st) return st;
            }
        }
    }
    if (depth_ > 0 && start < data.size()) {
        if (buf_.size() + (data.size() - start) > max_)
            return make_error(EFBIG, "watch stream: an event larger than " + std::to_string(max_) + " bytes");
        buf_.append(data.substr(start));
    }
    return {};
}

void JsonStreamSplitter::reset() {
    buf_.clear();
    buf_.shrink_to_fit();
    depth_ = 0;
    in_string_ = escape_ = false;
}

ApiStatus parse_api_status(std::string_view body, int http_status) {
    ApiStatus s;
    s.code = http_status;
    auto doc = json::parse(body);
    if (doc && doc->IsObject()) {
        const Value& d = *doc;
        if (auto k = json::opt_string(d, "kind"); k && *k == "Status") {
            if (const Value* c = json::find(d, "code"); c && c->IsInt()) s.code = c->GetInt();
            s.reason = json::opt_string(d, "reason").value_or("");
            s.message = json::opt_string(d, "message").value_or("");
            return s;
        }
    }
    std::string t(body.substr(0, 500));
    while (!t.empty() && (t.back() == '\n' || t.back() == ' ' || t.back() == '\r')) t.pop_back();
    s.message = t;
    return s;
}

std::string_view resource_name(Resource r) {
    switch (r) {
        case Resource::Namespaces: return "namespaces";
        case Resource::Pods: return "pods";
        case Resource::NetworkPolicies: return "networkpolicies";
        case Resource::Nodes: return "nodes";
    }
    return "?";
}

std::string_view resource_path(Resource r) {
    switch (r) {
        case Resource::Namespaces: return "/api/v1/namespaces";
        case Resource::Pods: return "/api/v1/pods";
        case Resource::NetworkPolicies: return "/apis/networking.k8s.io/v1/networkpolicies";
        case Resource::Nodes: return "/api/v1/nodes";
    }
    return "/";
}

std::string_view resource_kind(Resource r) {
    switch (r) {
        case Resource::Namespaces: return "Namespace";
        case Resource::Pods: return "Pod";
        case Resource::NetworkPolicies: return "NetworkPolicy";
        case Resource::Nodes: return "Node";
    }
    return "?";
}

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

Result<ObjectRef> object_ref(const Value& obj) {
    const Value* md = json::find(obj, "metadata");
    if (!md || !md->IsObject()) return make_error(EINVAL, "metadata: required");
    ObjectRef r;
    auto name = json::opt_string(*md, "name");
    if (!name || name->empty()) return make_error(EINVAL, "metadata.name: required");
    r.name = *name;
    r.namespace_ = json::opt_string(*md, "namespace").value_or("");
    r.resource_version = json::opt_string(*md, "resourceVersion").value_or("");
    return r;
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
    }
    return make_error(EINVAL, "unknown resource");
}

Result<WatchEvent> parse_watch_event(std::string_view text) {
    WatchEvent ev;
    ev.doc.Parse(text.data(), text.size());
    if (ev.doc.HasParseError())
        return make_error(EBADMSG, "watch event: invalid JSON at offset " + std::to_string(ev.doc.GetErrorOffset()));
    if (!ev.doc.IsObject()) return make_error(EBADMSG, "watch event: not an object");
    auto type = json::opt_string(ev.doc, "type");
    if (!type) return make_error(EBADMSG, "watch event: no type");
    if (*type == "ADDED") ev.type = WatchEvent::Added;
    else if (*type == "MODIFIED") ev.type = WatchEvent::Modified;
    else if (*type == "DELETED") ev.type = WatchEvent::Deleted;
    else if (*type == "BOOKMARK") ev.type = WatchEvent::Bookmark;
    else if (*type == "ERROR") ev.type = WatchEvent::Error;
    else return make_error(EBADMSG, "watch event: unknown type '" + type->substr(0, 40) + "'");
    const Value* o = json::find(ev.doc, "object");
    if (!o || !o->IsObject()) return make_error(EBADMSG, "watch event: no object");
    ev.object = o;
    return ev;
}

}  // namespace signet::source::k8s
