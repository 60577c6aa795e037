#include "signet/api.h"

#include <cstdio>

#include "signet/json.h"

namespace signet::api {

using rapidjson::Value;
using Alloc = rapidjson::Document::AllocatorType;

std::string key(std::string_view container_id, std::string_view ifname) {
    std::string k(container_id);
    k += '/';
    k += ifname;
    return k;
}

bool valid_container_id(std::string_view id) {
    // CNI spec: must not be empty; alphanumerics plus underscore, dot and hyphen, starting alphanumeric.
    // At most 256 bytes: runtimes use 64 hex digits (containerd, CRI-O, podman), cnitool 28.
    if (id.empty() || id.size() > 256) return false;
    auto alnum = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); };
    if (!alnum(id[0])) return false;
    for (char c : id)
        if (!alnum(c) && c != '_' && c != '.' && c != '-') return false;
    return true;
}

bool valid_ifname(std::string_view n) {
    // Linux rules (and libcni's): 1..15 bytes, not "." or "..", no '/', ':' or whitespace.
    if (n.empty() || n.size() > 15 || n == "." || n == "..") return false;
    for (unsigned char c : n)
        if (c == '/' || c == ':' || c <= ' ' || c == 0x7f) return false;
    return true;
}

namespace {
bool lower_alnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

// Shows a user-supplied value in a message: quoted, bounded, control bytes escaped.
std::string shown(std::string_view s) {
    std::string out = "'";
    for (size_t i = 0; i < s.size() && i < 80; ++i) {
        unsigned char c = static_cast<unsigned char>(s[i]);
        if (c < 0x20 || c == 0x7f || c == '\\') {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\x%02x", c);
            out += buf;
        } else {
            out += static_cast<char>(c);
        }
    }
    if (s.size() > 80) out += "...";
    return out + "'";
}
}  // namespace

bool valid_dns1123_label(std::string_view s) {
    if (s.empty() || s.size() > 63) return false;
    if (!lower_alnum(s.front()) || !lower_alnum(s.back())) return false;
    for (char c : s)
        if (!lower_alnum(c) && c != '-') return false;
    return true;
}

bool valid_dns1123_subdomain(std::string_view s) {
    if (s.empty() || s.size() > 253) return false;
    while (true) {
        size_t dot = s.find('.');
        if (!valid_dns1123_label(s.substr(0, dot))) return false;
        if (dot == std::string_view::npos) return true;
        s.remove_prefix(dot + 1);
    }
}

std::string namespace_problem(std::string_view ns) {
    if (valid_dns1123_label(ns)) return {};
    if (ns.empty()) return "must not be empty";
    if (ns.size() > 63) return shown(ns) + " is longer than 63 characters (a namespace is a DNS-1123 label)";
    return shown(ns) + " is not a DNS-1123 label (lower case letters, digits and '-', starting and ending with a "
                       "letter or digit), as Kubernetes requires of a namespace";
}

std::string pod_name_problem(std::string_view name) {
    if (valid_dns1123_subdomain(name)) return {};
    if (name.empty()) return "must not be empty";
    if (name.size() > 253) return shown(name) + " is longer than 253 characters (a pod name is a DNS-1123 subdomain)";
    return shown(name) + " is not a DNS-1123 subdomain (lower case letters, digits, '-' and '.', each dot-separated "
                         "part starting and ending with a letter or digit), as Kubernetes requires of a pod name";
}

Status validate_pod_identity(const PodRegistration& r) {
    if (auto p = namespace_problem(r.namespace_); !p.empty()) return make_error(400, "namespace: " + p);
    if (auto p = pod_name_problem(r.name); !p.empty()) return make_error(400, "name: " + p);
    if (r.uid.size() > 128) return make_error(400, "uid: longer than 128 characters");
    for (char c : r.uid)
        if (!lower_alnum(c) && !(c >= 'A' && c <= 'Z') && c != '-' && c != '.' && c != '_')
            return make_error(400, "uid: " + shown(r.uid) + " has characters other than letters, digits, '-', '.' and '_'");
    if (!r.infra_container_id.empty() && !valid_container_id(r.infra_container_id))
        return make_error(400, "infraContainerID: " + shown(r.infra_container_id) + " is not a valid container ID");
    return {};
}

static void put(Value& o, const char* k, std::string_view s, Alloc& a) {
    o.AddMember(Value(k, a), json::str(s, a), a);
}

void to_json(const PodRegistration& r, Value& o, Alloc& a) {
    o.SetObject();
    put(o, "containerID", r.container_id, a);
    put(o, "ifname", r.ifname, a);
    put(o, "netns", r.netns, a);
    put(o, "network", r.network, a);
    put(o, "namespace", r.namespace_, a);
    put(o, "name", r.name, a);
    put(o, "uid", r.uid, a);
    put(o, "infraContainerID", r.infra_container_id, a);
    Value ips(rapidjson::kArrayType);
    for (const auto& ip : r.ips) ips.PushBack(json::str(ip, a), a);
    o.AddMember("ips", ips, a);
    put(o, "mac", r.mac, a);
}

Result<PodRegistration> registration_from_json(const Value& v) {
    if (!v.IsObject()) return make_error(400, "registration must be a JSON object");
    PodRegistration r;
    auto req = [&](const char* k, std::string& dst) -> Status {
        auto s = json::get_string(v, k, "");
        if (!s) return make_error(400, s.error().message);
        dst = std::move(*s);
        return {};
    };
    auto opt = [&](const char* k, std::string& dst) -> Status {
        const Value* f = json::find(v, k);
        if (f == nullptr || f->IsNull()) return {};
        if (!f->IsString()) return make_error(400, std::string(k) + ": must be a string");
        dst.assign(f->GetString(), f->GetStringLength());
        return {};
    };
    for (auto st : {req("containerID", r.container_id), req("ifname", r.ifname), req("netns", r.netns),
                    req("name", r.name), opt("network", r.network), opt("namespace", r.namespace_),
                    opt("uid", r.uid), opt("infraContainerID", r.infra_container_id), opt("mac", r.mac)}) {
        if (!st) return st.error();
    }
    if (r.namespace_.empty()) r.namespace_ = "default";
    if (!valid_container_id(r.container_id)) return make_error(400, "containerID: invalid container ID");
    if (!valid_ifname(r.ifname)) return make_error(400, "ifname: invalid interface name");
    if (r.netns.empty()) return make_error(400, "netns: must not be empty");
    if (r.name.empty()) return make_error(400, "name: must not be empty");
    if (const Value* ips = json::find(v, "ips"); ips != nullptr && !ips->IsNull()) {
        if (!ips->IsArray()) return make_error(400, "ips: must be an array of strings");
        for (const auto& ip : ips->GetArray()) {
            if (!ip.IsString()) return make_error(400, "ips: must be an array of strings");
            r.ips.emplace_back(ip.GetString(), ip.GetStringLength());
        }
    }
    return r;
}

void to_json(const PodRecord& r, Value& o, Alloc& a) {
    to_json(r.reg, o, a);
    o.AddMember("registeredAt", Value(static_cast<int64_t>(r.registered_at)), a);
    o.AddMember("netnsInode", Value(static_cast<uint64_t>(r.netns_inode)), a);
    o.AddMember("hasObject", Value(r.has_object), a);
    Value labels(rapidjson::kObjectType);
    for (const auto& [k, val] : r.labels) labels.AddMember(json::str(k, a), json::str(val, a), a);
    o.AddMember("labels", labels, a);
    Value ports(rapidjson::kArrayType);
    for (const auto& p : r.container_ports) {
        Value e(rapidjson::kObjectType);
        if (!p.name.empty()) put(e, "name", p.name, a);
        e.AddMember("containerPort", Value(p.port), a);
        put(e, "protocol", p.protocol, a);
        ports.PushBack(e, a);
    }
    o.AddMember("containerPorts", ports, a);
    o.AddMember("appliedVersion", Value(static_cast<uint64_t>(r.applied_version)), a);
}

Result<PodRecord> record_from_json(const Value& v) {
    auto reg = registration_from_json(v);
    if (!reg) return reg.error();
    PodRecord r;
    r.reg = std::move(*reg);
    if (const Value* t = json::find(v, "registeredAt"); t != nullptr && t->IsInt64()) r.registered_at = t->GetInt64();
    // Labels and ports are re-resolved from the source; they are informational here.
    auto labels = json::get_string_map(v, "labels", "");
    if (labels) r.labels = std::move(*labels);
    if (const Value* n = json::find(v, "netnsInode"); n != nullptr && n->IsUint64()) r.netns_inode = n->GetUint64();
    if (const Value* h = json::find(v, "hasObject"); h != nullptr && h->IsBool()) r.has_object = h->GetBool();
    if (const Value* p = json::find(v, "containerPorts"); p != nullptr && p->IsArray()) {
        for (const auto& e : p->GetArray()) {
            if (!e.IsObject()) continue;
            ContainerPort cp;
            if (auto n = json::opt_string(e, "name")) cp.name = *n;
            if (const Value* n = json::find(e, "containerPort"); n != nullptr && n->IsInt()) cp.port = n->GetInt();
            if (auto pr = json::opt_string(e, "protocol")) cp.protocol = *pr;
            r.container_ports.push_back(std::move(cp));
        }
    }
    if (const Value* av = json::find(v, "appliedVersion"); av != nullptr && av->IsUint64())
        r.applied_version = av->GetUint64();
    return r;
}

void to_json(const GcRequest& r, Value& o, Alloc& a) {
    o.SetObject();
    put(o, "network", r.network, a);
    Value arr(rapidjson::kArrayType);
    for (const auto& at : r.valid) {
        Value e(rapidjson::kObjectType);
        put(e, "containerID", at.container_id, a);
        put(e, "ifname", at.ifname, a);
        arr.PushBack(e, a);
    }
    o.AddMember("validAttachments", arr, a);
}

Result<GcRequest> gc_from_json(const Value& v) {
    if (!v.IsObject()) return make_error(400, "GC request must be a JSON object");
    GcRequest r;
    auto net = json::get_string(v, "network", "");
    if (!net) return make_error(400, net.error().message);
    r.network = *net;
    const Value* arr = json::find(v, "validAttachments");
    if (arr == nullptr || !arr->IsArray()) return make_error(400, "validAttachments: must be an array");
    for (const auto& e : arr->GetArray()) {
        auto id = json::get_string(e, "containerID", "validAttachments[]");
        auto ifn = json::get_string(e, "ifname", "validAttachments[]");
        if (!id) return make_error(400, id.error().message);
        if (!ifn) return make_error(400, ifn.error().message);
        r.valid.push_back({*id, *ifn});
    }
    return r;
}

}  // namespace signet::api
