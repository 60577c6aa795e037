#include "signet/api.h"

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
    if (id.empty() || id.size() > 1024) return false;
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
