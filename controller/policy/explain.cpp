// explain: the verdict for a flow and the policies and rules that decide it,
// evaluated on policy semantics (identities), independently of the IR.
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <cerrno>
#include <charconv>

#include "compiler.h"
#include "compiler_state.h"

namespace signet::policy {

using cache::NetworkPolicy;
using cache::PolicyPort;
using detail::PodInfo;

Result<Endpoint> parse_endpoint(std::string_view text) {
    if (auto slash = text.find('/'); slash != std::string_view::npos && text.find(':') == std::string_view::npos &&
                                     !cache::parse_cidr(text).ok()) {
        std::string ns(text.substr(0, slash)), name(text.substr(slash + 1));
        if (ns.empty() || name.empty() || name.find('/') != std::string::npos)
            return make_error(EINVAL, "invalid endpoint \"" + std::string(text) + "\": expected namespace/name or an IP address");
        return Endpoint::pod(std::move(ns), std::move(name));
    }
    if (text.find('/') != std::string_view::npos || !parse_ip(text).ok())
        return make_error(EINVAL, "invalid endpoint \"" + std::string(text) + "\": expected namespace/name or an IP address");
    return Endpoint::address(std::string(text));
}

std::string_view proto_name(uint8_t proto) {
    switch (proto) {
        case nft::kTcp: return "TCP";
        case nft::kUdp: return "UDP";
        case nft::kSctp: return "SCTP";
        case 1: return "ICMP";
        case 58: return "ICMPv6";
        default: return "other";
    }
}

std::optional<uint8_t> parse_proto(std::string_view s) {
    std::string u;
    for (char c : s) u += static_cast<char>(c >= 'a' && c <= 'z' ? c - 'a' + 'A' : c);
    if (u == "TCP") return nft::kTcp;
    if (u == "UDP") return nft::kUdp;
    if (u == "SCTP") return nft::kSctp;
    if (u == "ICMP") return uint8_t{1};
    if (u == "ICMPV6") return uint8_t{58};
    unsigned v = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (!s.empty() && ec == std::errc() && end == s.data() + s.size() && v <= 255) return static_cast<uint8_t>(v);
    return std::nullopt;
}

namespace {

struct Party {
    bool is_pod = false;
    ObjectKey key;
    const PodInfo* info = nullptr;  // null: a local pod whose object is unknown, or an address
    std::vector<Ip> ips;
};

std::string key_str(const ObjectKey& k) { return k.namespace_ + "/" + k.name; }

bool in_block(const cache::IpBlock& block, const std::vector<Ip>& ips) {
    nft::Family f = family_of(block.cidr);
    std::vector<nft::Range> ranges;
    bool computed = false;
    for (const Ip& ip : ips) {
        if (ip.family != f) continue;
        if (!computed) {
            ranges = ip_block_ranges(block);
            computed = true;
        }
        if (contains(ranges, ip.addr)) return true;
    }
    return false;
}

// Whether `rule` of `p` (for the pod `self`, in direction `ingress`) allows the flow with `other`.
bool rule_allows(const CompilerState& s, const NetworkPolicy& p, const std::optional<std::vector<cache::Peer>>& peers,
                 const std::optional<std::vector<PolicyPort>>& ports, bool ingress, const PodInfo& self,
                 const Party& other, uint8_t proto, uint16_t port) {
    bool any_peer = !peers || peers->empty();
    bool other_pod = other.is_pod && other.info && !other.info->host_network;
    bool by_selector = false, by_block = false;
    if (!any_peer) {
        for (const cache::Peer& peer : *peers) {
            if (peer.ip_block) {
                if (in_block(*peer.ip_block, other.ips)) by_block = true;
            } else if (other_pod && (peer.pod_selector || peer.namespace_selector)) {
                bool ns_ok = peer.namespace_selector
                                 ? cache::matches(*peer.namespace_selector, s.ns_labels(other.key.namespace_))
                                 : other.key.namespace_ == p.namespace_;
                if (ns_ok && cache::matches(peer.pod_selector.value_or(cache::LabelSelector{}), other.info->labels))
                    by_selector = true;
            }
        }
    }
    bool peer_ok = any_peer || by_selector || by_block;
    if (!peer_ok) return false;
    if (!ports || ports->empty()) return true;
    for (const PolicyPort& pp : *ports) {
        if (detail::proto_number(pp.protocol) != proto) continue;
        if (!pp.port) return true;
        if (const auto* n = std::get_if<int32_t>(&*pp.port)) {
            if (port >= *n && port <= pp.end_port.value_or(*n)) return true;
            continue;
        }
        // A named port: the destination pod's container port. For egress the
        // destination must be a pod selected as such (not by an ipBlock).
        const std::string& name = std::get<std::string>(*pp.port);
        std::vector<nft::PortRange> resolved;
        if (ingress) {
            detail::resolve_named(name, pp.protocol, self.ports, resolved);
        } else {
            if (!other_pod || !(any_peer || by_selector)) continue;
            detail::resolve_named(name, pp.protocol, other.info->ports, resolved);
        }
        for (const nft::PortRange& r : resolved)
            if (r.first == port) return true;
    }
    return false;
}

SideVerdict judge(const CompilerState& s, const Party& self, bool ingress, const Party& other, uint8_t proto,
                  uint16_t port) {
    SideVerdict v;
    v.pod = key_str(self.key);
    v.ingress = ingress;
    const char* dir = ingress ? "ingress" : "egress";
    if (!self.info) {
        v.isolated = true;
        v.reason = "its Pod object is not known yet: default deny (fail closed)";
        return v;
    }
    if (self.info->host_network) {
        v.allowed = true;
        v.reason = "hostNetwork pod: out of scope, not enforced";
        return v;
    }
    auto n = s.pols_by_ns.find(self.key.namespace_);
    if (n != s.pols_by_ns.end()) {
        for (const std::string& name : n->second) {
            ObjectKey pk{self.key.namespace_, name};
            const NetworkPolicy& p = s.snap.policies.at(pk);
            if (!(ingress ? p.affects_ingress() : p.affects_egress())) continue;
            if (!cache::matches(p.pod_selector, self.info->labels)) continue;
            v.policies.push_back(pk);
            if (ingress) {
                for (size_t i = 0; i < p.ingress.size(); ++i)
                    if (rule_allows(s, p, p.ingress[i].from, p.ingress[i].ports, true, *self.info, other, proto, port))
                        v.rules.push_back({p.namespace_, p.name, static_cast<int>(i)});
            } else {
                for (size_t i = 0; i < p.egress.size(); ++i)
                    if (rule_allows(s, p, p.egress[i].to, p.egress[i].ports, false, *self.info, other, proto, port))
                        v.rules.push_back({p.namespace_, p.name, static_cast<int>(i)});
            }
        }
    }
    v.isolated = !v.policies.empty();
    if (ingress) {
        for (const Ip& ip : other.ips) {
            const nft::AddrSet& node = ip.family == nft::Family::v4 ? s.node_v4 : s.node_v6;
            if (contains(node.elements, ip.addr)) {
                v.allowed = true;
                v.reason = "from the node's own address " + to_string(ip) + ": always allowed";
                return v;
            }
        }
    }
    if (!v.isolated) {
        v.allowed = true;
        v.reason = std::string("not isolated: no NetworkPolicy selects it for ") + dir;
    } else if (!v.rules.empty()) {
        v.allowed = true;
        v.reason = "allowed by a rule of a policy selecting it";
    } else {
        v.reason = "default deny: selected for " + std::string(dir) + " and no rule allows this flow";
    }
    return v;
}

// A pod of the cluster view, or a local pod whose object is not known yet
// (no info: judged fail closed), with all its addresses. ENOENT otherwise.
Result<Party> pod_party(const CompilerState& s, const ObjectKey& key) {
    Party party;
    party.is_pod = true;
    party.key = key;
    auto it = s.pods.find(key);
    if (it != s.pods.end()) {
        party.info = &it->second;
        party.ips = it->second.ips;
    } else if (auto l = s.locals.find(key); l != s.locals.end()) {
        party.ips = l->second;
    } else {
        return make_error(ENOENT, "pod " + key.namespace_ + "/" + key.name + " not found");
    }
    return party;
}

}  // namespace

Result<Explanation> Compiler::explain(const Endpoint& from, const Endpoint& to, uint8_t proto, uint16_t port) const {
    const CompilerState& s = *s_;
    auto resolve = [&](const Endpoint& e) -> Result<Party> {
        Party party;
        if (e.is_pod()) {
            auto pod = pod_party(s, ObjectKey{e.namespace_, e.name});
            if (!pod) return pod.error();
            party = std::move(*pod);
            if (!e.ip.empty()) {
                auto ip = parse_ip(e.ip);
                if (!ip) return ip.error();
                party.ips = {*ip};
            }
        } else {
            auto ip = parse_ip(e.ip);
            if (!ip) return ip.error();
            party.ips.push_back(*ip);
        }
        return party;
    };
    auto src = resolve(from);
    if (!src) return src.error();
    auto dst = resolve(to);
    if (!dst) return dst.error();

    Explanation ex;
    ex.from = from.to_string();
    ex.to = to.to_string();
    ex.proto = proto;
    ex.port = port;
    ex.allowed = true;
    if (src->is_pod) {
        ex.egress = judge(s, *src, false, *dst, proto, port);
        ex.allowed = ex.allowed && ex.egress->allowed;
    }
    if (dst->is_pod) {
        ex.ingress = judge(s, *dst, true, *src, proto, port);
        ex.allowed = ex.allowed && ex.ingress->allowed;
    }
    return ex;
}

Result<SideVerdict> Compiler::judge_side(const ObjectKey& local, bool ingress, const std::optional<ObjectKey>& peer_pod,
                                         const Ip& peer_ip, uint8_t proto, uint16_t port) const {
    const CompilerState& s = *s_;
    // The parties explain resolves for Endpoint::pod(local) and
    // Endpoint::pod_at(peer, ip) or Endpoint::address(ip): the same answer.
    auto self = pod_party(s, local);
    if (!self) return self.error();
    Party other;
    if (peer_pod) {
        auto pod = pod_party(s, *peer_pod);
        if (!pod) return pod.error();
        other = std::move(*pod);
    }
    other.ips = {peer_ip};
    return judge(s, *self, ingress, other, proto, port);
}

namespace {

std::string origin_str(const nft::Origin& o, bool ingress) {
    return o.policy_namespace + "/" + o.policy_name + " " + (ingress ? "ingress" : "egress") + " rule " +
           std::to_string(o.rule_index);
}

}  // namespace

std::string Explanation::text() const {
    std::string out = std::string(proto_name(proto));
    if (proto == nft::kTcp || proto == nft::kUdp || proto == nft::kSctp) out += " port " + std::to_string(port);
    out += " from " + from + " to " + to + ": " + (allowed ? "ALLOWED" : "DENIED") + "\n";
    for (const auto* side : {&egress, &ingress}) {
        bool is_ingress = side == &ingress;
        if (!*side) {
            out += std::string("  ") + (is_ingress ? "ingress of " + to : "egress of " + from) +
                   ": not a pod, not judged here\n";
            continue;
        }
        const SideVerdict& v = **side;
        out += "  " + std::string(is_ingress ? "ingress of " : "egress of ") + v.pod + ": " +
               (v.allowed ? "allowed" : "denied") + " (" + v.reason + ")\n";
        if (!v.policies.empty()) {
            out += "    selected by:";
            for (size_t i = 0; i < v.policies.size(); ++i)
                out += (i ? ", " : " ") + v.policies[i].namespace_ + "/" + v.policies[i].name;
            out += "\n";
        }
        for (const nft::Origin& o : v.rules) out += "    allowed by: " + origin_str(o, is_ingress) + "\n";
    }
    return out;
}

void Explanation::to_json(rapidjson::Value& out, rapidjson::Document::AllocatorType& alloc) const {
    auto str = [&](std::string_view s) {
        return rapidjson::Value(s.data(), static_cast<rapidjson::SizeType>(s.size()), alloc);
    };
    out.SetObject();
    out.AddMember("allowed", allowed, alloc);
    out.AddMember("from", str(from), alloc);
    out.AddMember("to", str(to), alloc);
    out.AddMember("protocol", str(proto_name(proto)), alloc);
    out.AddMember("protocol_number", proto, alloc);
    out.AddMember("port", port, alloc);
    auto side = [&](const std::optional<SideVerdict>& sv) {
        rapidjson::Value v;
        if (!sv) return v;  // null
        v.SetObject();
        v.AddMember("pod", str(sv->pod), alloc);
        v.AddMember("direction", str(sv->ingress ? "ingress" : "egress"), alloc);
        v.AddMember("allowed", sv->allowed, alloc);
        v.AddMember("isolated", sv->isolated, alloc);
        v.AddMember("reason", str(sv->reason), alloc);
        rapidjson::Value pols(rapidjson::kArrayType);
        for (const ObjectKey& k : sv->policies) pols.PushBack(str(k.namespace_ + "/" + k.name), alloc);
        v.AddMember("policies", pols, alloc);
        rapidjson::Value rules(rapidjson::kArrayType);
        for (const nft::Origin& o : sv->rules) {
            rapidjson::Value r(rapidjson::kObjectType);
            r.AddMember("policy", str(o.policy_namespace + "/" + o.policy_name), alloc);
            r.AddMember("rule", o.rule_index, alloc);
            rules.PushBack(r, alloc);
        }
        v.AddMember("rules", rules, alloc);
        return v;
    };
    out.AddMember("egress", side(egress), alloc);
    out.AddMember("ingress", side(ingress), alloc);
}

std::string Explanation::json() const {
    rapidjson::Document d;
    to_json(d, d.GetAllocator());
    rapidjson::StringBuffer buf;
    rapidjson::Writer<rapidjson::StringBuffer> w(buf);
    d.Accept(w);
    return std::string(buf.GetString(), buf.GetSize());
}

}  // namespace signet::policy
