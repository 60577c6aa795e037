#include "compiler.h"

#include <algorithm>
#include <tuple>
#include <cerrno>
#include <cstdio>

#include "compiler_state.h"

namespace signet::policy {

using cache::LabelSelector;
using cache::Labels;
using cache::NetworkPolicy;
using cache::Pod;
using cache::PolicyPort;
using cache::PolicyType;
using detail::PeerRef;
using detail::PodInfo;
using detail::PolicyInfo;
using detail::RuleInfo;
using detail::Selector;

namespace detail {

uint64_t fnv1a(std::string_view s, uint64_t h) {
    for (unsigned char c : s) {
        h ^= c;
        h *= 1099511628211ULL;
    }
    return h;
}

std::string hex(uint64_t v, int digits) {
    static const char* kHex = "0123456789abcdef";
    std::string out(static_cast<size_t>(digits), '0');
    for (int i = digits - 1; i >= 0; --i, v >>= 4) out[static_cast<size_t>(i)] = kHex[v & 0xf];
    return out;
}

uint8_t proto_number(cache::Protocol p) {
    switch (p) {
        case cache::Protocol::TCP: return nft::kTcp;
        case cache::Protocol::UDP: return nft::kUdp;
        case cache::Protocol::SCTP: return nft::kSctp;
    }
    return nft::kTcp;
}

// The numbers a named port has on a pod (name and protocol must match).
void resolve_named(const std::string& name, cache::Protocol proto, const std::vector<api::ContainerPort>& ports,
                   std::vector<nft::PortRange>& out) {
    std::string_view p = cache::to_string(proto);
    for (const api::ContainerPort& cp : ports) {
        if (cp.name == name && cp.protocol == p && cp.port > 0 && cp.port <= 65535)
            out.push_back({proto_number(proto), static_cast<uint16_t>(cp.port), static_cast<uint16_t>(cp.port)});
    }
}

std::string selector_key(const std::string& fixed_ns, const std::optional<LabelSelector>& ns_sel,
                         const LabelSelector& pod_sel) {
    std::string k = ns_sel ? "N:" + cache::to_string(*ns_sel) : "P:" + fixed_ns;
    k += '|';
    k += cache::to_string(pod_sel);
    return k;
}

}  // namespace detail

using namespace detail;

// ---------------------------------------------------------------------------
// State helpers

Labels CompilerState::ns_labels(const std::string& ns) const {
    auto it = snap.namespaces.find(ns);
    if (it != snap.namespaces.end()) return it->second.labels;
    return Labels{{std::string(cache::kNamespaceNameLabel), ns}};
}

void CompilerState::ensure_ns(const std::string& ns) {
    if (ns_sel_matching.count(ns)) return;
    auto& m = ns_sel_matching[ns];
    Labels labels = ns_labels(ns);
    for (uint32_t id : ns_selectors)
        if (cache::matches(*sels.at(id).ns_sel, labels)) m.insert(id);
}

std::vector<Ip> CompilerState::effective_ips(const ObjectKey& key, const Pod* pod) const {
    std::vector<Ip> out;
    auto l = locals.find(key);
    if (l != locals.end() && !l->second.empty()) {
        out = l->second;
    } else if (pod) {
        for (const std::string& s : pod->pod_ips)
            if (auto ip = parse_ip(s)) out.push_back(*ip);
    }
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
    return out;
}

bool CompilerState::selector_matches(uint32_t id, const Selector& sel, const PodInfo& info) const {
    if (!info.eligible) return false;
    const std::string& ns = info.ns;
    if (sel.ns_sel) {
        auto it = ns_sel_matching.find(ns);
        if (it == ns_sel_matching.end() || !it->second.count(id)) return false;
    } else if (sel.fixed_ns != ns) {
        return false;
    }
    return cache::matches(sel.pod_sel, info.labels);
}

void CompilerState::add_member(Selector& sel, const ObjectKey& key, const PodInfo& info) {
    sel.members.insert(key);
    dirty.insert(sel.id);
    for (const Ip& ip : info.ips) {
        auto& v = ip.family == nft::Family::v4 ? sel.v4 : sel.v6;
        v.insert(std::upper_bound(v.begin(), v.end(), ip.addr, addr_less), ip.addr);
    }
}

void CompilerState::remove_member(Selector& sel, const ObjectKey& key, const std::vector<Ip>& ips) {
    sel.members.erase(key);
    dirty.insert(sel.id);
    for (const Ip& ip : ips) {
        auto& v = ip.family == nft::Family::v4 ? sel.v4 : sel.v6;
        auto it = std::lower_bound(v.begin(), v.end(), ip.addr, addr_less);
        if (it != v.end() && *it == ip.addr) v.erase(it);
    }
}

// Recomputes one pod's index entry from the snapshot and local registrations;
// returns the selectors whose members or member data changed.
std::set<uint32_t> CompilerState::refresh_pod(const ObjectKey& key, bool* self_changed) {
    std::set<uint32_t> changed;
    auto it = snap.pods.find(key);
    auto old_it = pods.find(key);
    PodInfo old;
    bool had = old_it != pods.end();
    if (had) old = std::move(old_it->second);

    if (it == snap.pods.end()) {
        if (had) {
            for (uint32_t id : old.sels) {
                remove_member(sels.at(id), key, old.ips);
                changed.insert(id);
            }
            pods.erase(old_it);
            if (self_changed) *self_changed = true;
        }
        return changed;
    }

    const Pod& pod = it->second;
    ensure_ns(pod.namespace_);
    PodInfo info;
    info.ns = pod.namespace_;
    info.ips = effective_ips(key, &pod);
    info.eligible = !pod.host_network && !info.ips.empty() && !cache::is_terminal(pod);
    info.labels = pod.labels;
    info.ports = pod.container_ports;
    info.host_network = pod.host_network;
    if (info.eligible) {
        auto consider = [&](uint32_t id) {
            if (selector_matches(id, sels.at(id), info)) info.sels.push_back(id);
        };
        if (auto f = fixed_by_ns.find(pod.namespace_); f != fixed_by_ns.end())
            for (uint32_t id : f->second) consider(id);
        if (auto n = ns_sel_matching.find(pod.namespace_); n != ns_sel_matching.end())
            for (uint32_t id : n->second) consider(id);
        std::sort(info.sels.begin(), info.sels.end());
    }
    bool data_changed = !had || old.ips != info.ips || old.ports != info.ports;
    if (self_changed)
        *self_changed = data_changed || old.labels != info.labels || old.host_network != info.host_network;

    // Old-only: removed; new-only: added; both: re-added when ips/ports changed.
    size_t i = 0, j = 0;
    while (i < old.sels.size() || j < info.sels.size()) {
        if (j == info.sels.size() || (i < old.sels.size() && old.sels[i] < info.sels[j])) {
            remove_member(sels.at(old.sels[i]), key, old.ips);
            changed.insert(old.sels[i++]);
        } else if (i == old.sels.size() || info.sels[j] < old.sels[i]) {
            add_member(sels.at(info.sels[j]), key, info);
            changed.insert(info.sels[j++]);
        } else {
            if (data_changed) {
                Selector& s = sels.at(info.sels[j]);
                remove_member(s, key, old.ips);
                add_member(s, key, info);
                changed.insert(info.sels[j]);
            }
            ++i;
            ++j;
        }
    }
    pods[key] = std::move(info);
    return changed;
}

uint32_t CompilerState::acquire_selector(const std::string& fixed_ns, const std::optional<LabelSelector>& ns_sel,
                                 const LabelSelector& pod_sel) {
    std::string key = selector_key(fixed_ns, ns_sel, pod_sel);
    if (auto it = sel_by_key.find(key); it != sel_by_key.end()) {
        ++sels.at(it->second).refs;
        return it->second;
    }
    uint32_t id = next_sel_id++;
    Selector& sel = sels[id];
    sel.id = id;
    sel.key = key;
    sel.fixed_ns = ns_sel ? std::string() : fixed_ns;
    sel.ns_sel = ns_sel;
    sel.pod_sel = pod_sel;
    sel.refs = 1;
    sel_by_key[key] = id;

    auto scan_ns = [&](const std::string& ns) {
        auto p = pods_by_ns.find(ns);
        if (p == pods_by_ns.end()) return;
        for (const std::string& name : p->second) {
            ObjectKey k{ns, name};
            PodInfo& info = pods.at(k);
            if (selector_matches(id, sel, info)) {
                add_member(sel, k, info);
                info.sels.insert(std::upper_bound(info.sels.begin(), info.sels.end(), id), id);
            }
        }
    };
    if (ns_sel) {
        ns_selectors.insert(id);
        for (auto& [ns, set] : ns_sel_matching) {
            if (cache::matches(*ns_sel, ns_labels(ns))) {
                set.insert(id);
                scan_ns(ns);
            }
        }
    } else {
        fixed_by_ns[fixed_ns].insert(id);
        scan_ns(fixed_ns);
    }
    return id;
}

void CompilerState::release_selector(uint32_t id) {
    Selector& sel = sels.at(id);
    if (--sel.refs > 0) return;
    for (const ObjectKey& k : sel.members) {
        auto& v = pods.at(k).sels;
        auto it = std::lower_bound(v.begin(), v.end(), id);
        if (it != v.end() && *it == id) v.erase(it);
    }
    if (sel.ns_sel) {
        ns_selectors.erase(id);
        for (auto& [ns, set] : ns_sel_matching) set.erase(id);
    } else {
        auto f = fixed_by_ns.find(sel.fixed_ns);
        f->second.erase(id);
        if (f->second.empty()) fixed_by_ns.erase(f);
    }
    sel_by_key.erase(sel.key);
    dirty.erase(id);
    sels.erase(id);
}

PolicyInfo CompilerState::register_policy(const NetworkPolicy& p) {
    PolicyInfo info;
    info.prefix = hex(fnv1a(p.namespace_ + "/" + p.name), 12);
    info.ingress_on = p.affects_ingress();
    info.egress_on = p.affects_egress();
    auto build = [&](const std::optional<std::vector<cache::Peer>>& peers,
                     const std::optional<std::vector<PolicyPort>>& ports, bool egress) {
        RuleInfo r;
        bool has_named = false;
        if (ports)
            for (const PolicyPort& pp : *ports)
                if (pp.port && std::holds_alternative<std::string>(*pp.port)) has_named = true;
        if (peers && !peers->empty()) {
            r.any_peer = false;
            for (const cache::Peer& peer : *peers) {
                PeerRef ref;
                if (peer.ip_block) {
                    ref.block_family = family_of(peer.ip_block->cidr);
                    ref.block = ip_block_ranges(*peer.ip_block);
                    ref.is_block = true;
                } else if (peer.pod_selector || peer.namespace_selector) {
                    ref.sel = static_cast<int64_t>(acquire_selector(
                        p.namespace_, peer.namespace_selector, peer.pod_selector.value_or(LabelSelector{})));
                    info.sel_ids.push_back(static_cast<uint32_t>(ref.sel));
                } else {
                    continue;  // an empty peer is rejected by validation; it matches nothing here
                }
                r.peers.push_back(std::move(ref));
            }
        } else if (egress && has_named) {
            // `to` absent with a named port: every pod that has the port.
            r.any_sel = static_cast<int64_t>(acquire_selector({}, LabelSelector{}, LabelSelector{}));
            info.sel_ids.push_back(static_cast<uint32_t>(r.any_sel));
        }
        return r;
    };
    if (info.ingress_on)
        for (const auto& rule : p.ingress) info.ingress.push_back(build(rule.from, rule.ports, false));
    if (info.egress_on)
        for (const auto& rule : p.egress) info.egress.push_back(build(rule.to, rule.ports, true));
    return info;
}

void CompilerState::unregister_policy(const PolicyInfo& info) {
    for (uint32_t id : info.sel_ids) release_selector(id);
}

bool CompilerState::policy_selects(const NetworkPolicy& p, const ObjectKey& local) const {
    auto it = pods.find(local);
    if (it == pods.end() || it->second.host_network) return false;
    return cache::matches(p.pod_selector, it->second.labels);
}

void CompilerState::users_of(const std::set<uint32_t>& changed, std::set<ObjectKey>& out) const {
    if (changed.empty()) return;
    std::set<ObjectKey> seen_policies;
    for (uint32_t id : changed) {
        auto s = sel_users.find(id);
        if (s == sel_users.end()) continue;
        for (const ObjectKey& pk : s->second) {
            if (!seen_policies.insert(pk).second) continue;
            const NetworkPolicy& p = snap.policies.at(pk);
            auto l = locals_by_ns.find(p.namespace_);
            if (l == locals_by_ns.end()) continue;
            for (const std::string& name : l->second) {
                ObjectKey lk{p.namespace_, name};
                if (policy_selects(p, lk)) out.insert(lk);
            }
        }
    }
}

void CompilerState::add_policy(const ObjectKey& key) {
    PolicyInfo info = register_policy(snap.policies.at(key));
    for (uint32_t id : info.sel_ids) sel_users[id].insert(key);
    pols_by_ns[key.namespace_].insert(key.name);
    pols[key] = std::move(info);
}

void CompilerState::drop_policy(const ObjectKey& key) {
    auto it = pols.find(key);
    if (it == pols.end()) return;
    for (uint32_t id : it->second.sel_ids) {
        auto u = sel_users.find(id);
        if (u != sel_users.end()) {
            u->second.erase(key);
            if (u->second.empty()) sel_users.erase(u);
        }
    }
    unregister_policy(it->second);
    pols.erase(it);
    auto n = pols_by_ns.find(key.namespace_);
    if (n != pols_by_ns.end()) {
        n->second.erase(key.name);
        if (n->second.empty()) pols_by_ns.erase(n);
    }
}

void CompilerState::selected_locals(const NetworkPolicy& p, std::set<ObjectKey>& out) const {
    auto l = locals_by_ns.find(p.namespace_);
    if (l == locals_by_ns.end()) return;
    for (const std::string& name : l->second) {
        ObjectKey lk{p.namespace_, name};
        if (policy_selects(p, lk)) out.insert(lk);
    }
}

void CompilerState::flush() {
    for (uint32_t id : dirty) {
        auto it = sels.find(id);
        if (it == sels.end()) continue;
        Selector& sel = it->second;
        for (auto [addrs, ranges, family] : {std::tuple{&sel.v4, &sel.r4, nft::Family::v4},
                                             std::tuple{&sel.v6, &sel.r6, nft::Family::v6}}) {
            ranges->clear();
            ranges->reserve(addrs->size());
            for (const nft::Addr& a : *addrs) ranges->push_back({a, a});
            merge_ranges(family, *ranges);
        }
    }
    dirty.clear();
}

// ---------------------------------------------------------------------------
// Compilation

namespace {

std::string rule_prefix(const PolicyInfo& info, bool ingress, size_t index) {
    return std::string(ingress ? "i" : "e") + info.prefix + "_r" + std::to_string(index);
}

nft::AddrSet materialize(nft::Family family, const std::vector<const std::vector<nft::Range>*>& parts) {
    nft::AddrSet set;
    set.family = family;
    if (parts.size() == 1) {
        set.elements = *parts[0];
        return set;
    }
    size_t n = 0;
    for (auto* r : parts) n += r->size();
    set.elements.reserve(n);
    for (auto* r : parts) set.elements.insert(set.elements.end(), r->begin(), r->end());
    merge_ranges(family, set.elements);
    return set;
}

void sort_unique(std::vector<nft::PortRange>& v) {
    std::sort(v.begin(), v.end());
    v.erase(std::unique(v.begin(), v.end()), v.end());
}

}  // namespace

void CompilerState::emit_rule(nft::PodRuleset& rs, const NetworkPolicy& p, const PolicyInfo& info, bool ingress,
                      size_t index, const RuleInfo& rule, const std::optional<std::vector<PolicyPort>>& ports,
                      const PodInfo& self) const {
    nft::Direction& dir = ingress ? rs.ingress : rs.egress;
    nft::Origin origin{p.namespace_, p.name, static_cast<int>(index)};
    bool all_ports = !ports || ports->empty();
    std::vector<nft::PortRange> numeric;
    std::vector<const PolicyPort*> named;
    if (!all_ports) {
        for (const PolicyPort& pp : *ports) {
            uint8_t proto = proto_number(pp.protocol);
            if (!pp.port) {
                numeric.push_back({proto, 0, 65535});
            } else if (const auto* n = std::get_if<int32_t>(&*pp.port)) {
                int32_t last = pp.end_port.value_or(*n);
                if (*n < 1 || *n > 65535 || last < *n || last > 65535) continue;  // invalid: matches nothing
                numeric.push_back({proto, static_cast<uint16_t>(*n), static_cast<uint16_t>(last)});
            } else if (ingress) {
                resolve_named(std::get<std::string>(*pp.port), pp.protocol, self.ports, numeric);
            } else {
                named.push_back(&pp);
            }
        }
        sort_unique(numeric);
    }
    std::string base = rule_prefix(info, ingress, index);

    // The rule over all its peers with the numeric (and, for ingress, resolved named) ports.
    if (all_ports || !numeric.empty()) {
        nft::Rule r;
        r.origin = origin;
        r.ports = numeric;
        if (rule.any_peer) {
            r.any_peer = true;
        } else {
            std::vector<const std::vector<nft::Range>*> p4, p6;
            bool blocks = false;  // an ipBlock peer: an interval set; pods only: a hash set
            for (const PeerRef& ref : rule.peers) {
                if (ref.is_block) {
                    blocks = true;
                    (ref.block_family == nft::Family::v4 ? p4 : p6).push_back(&ref.block);
                } else {
                    const Selector& s = sels.at(static_cast<uint32_t>(ref.sel));
                    p4.push_back(&s.r4);
                    p6.push_back(&s.r6);
                }
            }
            if (!p4.empty()) {
                r.set_v4 = base + "_4";
                nft::AddrSet& s4 = rs.sets[r.set_v4] = materialize(nft::Family::v4, p4);
                s4.interval = blocks;
            }
            if (!p6.empty()) {
                r.set_v6 = base + "_6";
                nft::AddrSet& s6 = rs.sets[r.set_v6] = materialize(nft::Family::v6, p6);
                s6.interval = blocks;
            }
        }
        dir.rules.push_back(std::move(r));
    }

    // Egress named ports: resolved against each destination pod; pods are
    // grouped by what the names resolve to.
    if (!named.empty()) {
        std::vector<const std::set<ObjectKey>*> member_sets;
        if (rule.any_peer) {
            if (rule.any_sel >= 0) member_sets.push_back(&sels.at(static_cast<uint32_t>(rule.any_sel)).members);
        } else {
            for (const PeerRef& ref : rule.peers)
                if (!ref.is_block) member_sets.push_back(&sels.at(static_cast<uint32_t>(ref.sel)).members);
        }
        std::map<std::vector<nft::PortRange>, std::vector<Ip>> groups;
        auto visit = [&](const ObjectKey& k) {
            const PodInfo& pi = pods.at(k);
            std::vector<nft::PortRange> resolved;
            for (const PolicyPort* pp : named)
                resolve_named(std::get<std::string>(*pp->port), pp->protocol, pi.ports, resolved);
            if (resolved.empty()) return;
            sort_unique(resolved);
            auto& g = groups[resolved];
            g.insert(g.end(), pi.ips.begin(), pi.ips.end());
        };
        if (member_sets.size() == 1) {
            for (const ObjectKey& k : *member_sets[0]) visit(k);
        } else if (member_sets.size() > 1) {
            std::set<ObjectKey> all;
            for (auto* m : member_sets) all.insert(m->begin(), m->end());
            for (const ObjectKey& k : all) visit(k);
        }
        for (auto& [ports_key, ips] : groups) {
            std::string key;
            for (const nft::PortRange& pr : ports_key)
                key += std::to_string(pr.proto) + ":" + std::to_string(pr.first) + "-" + std::to_string(pr.last) + ",";
            std::string gname = base + "_g" + hex(fnv1a(key), 8);
            nft::Rule r;
            r.origin = origin;
            r.ports = ports_key;
            r.set_v4 = gname + "_4";
            r.set_v6 = gname + "_6";
            nft::AddrSet s4{nft::Family::v4, {}, false}, s6{nft::Family::v6, {}, false};  // pod addresses: hash sets
            for (const Ip& ip : ips) (ip.family == nft::Family::v4 ? s4 : s6).elements.push_back({ip.addr, ip.addr});
            merge_ranges(nft::Family::v4, s4.elements);
            merge_ranges(nft::Family::v6, s6.elements);
            rs.sets[r.set_v4] = std::move(s4);
            rs.sets[r.set_v6] = std::move(s6);
            dir.rules.push_back(std::move(r));
        }
    }
}

nft::PodRuleset CompilerState::compile_pod(const ObjectKey& key) const {
    nft::PodRuleset rs;
    rs.sets["node_v4"] = node_v4;
    rs.sets["node_v6"] = node_v6;
    auto it = pods.find(key);
    if (it == pods.end()) {
        // Registered, but its Pod object is not known yet: fail closed.
        rs.ingress.isolated = rs.egress.isolated = true;
        return rs;
    }
    const PodInfo& self = it->second;
    if (self.host_network) return rs;
    auto n = pols_by_ns.find(key.namespace_);
    if (n == pols_by_ns.end()) return rs;
    for (const std::string& name : n->second) {
        ObjectKey pk{key.namespace_, name};
        const NetworkPolicy& p = snap.policies.at(pk);
        if (!cache::matches(p.pod_selector, self.labels)) continue;
        const PolicyInfo& info = pols.at(pk);
        if (info.ingress_on) {
            rs.ingress.isolated = true;
            for (size_t i = 0; i < p.ingress.size(); ++i)
                emit_rule(rs, p, info, true, i, info.ingress[i], p.ingress[i].ports, self);
        }
        if (info.egress_on) {
            rs.egress.isolated = true;
            for (size_t i = 0; i < p.egress.size(); ++i)
                emit_rule(rs, p, info, false, i, info.egress[i], p.egress[i].ports, self);
        }
    }
    return rs;
}

// ---------------------------------------------------------------------------
// Compiler

namespace {

// Refreshes the selectors' cached ranges when a mutator returns.
struct FlushGuard {
    CompilerState& s;
    ~FlushGuard() { s.flush(); }
};

}  // namespace

Compiler::Compiler() : s_(std::make_unique<CompilerState>()) {}
Compiler::~Compiler() = default;
Compiler::Compiler(Compiler&&) noexcept = default;
Compiler& Compiler::operator=(Compiler&&) noexcept = default;

namespace {

std::vector<Ip> parse_ips(const std::vector<std::string>& texts) {
    std::vector<Ip> out;
    for (const std::string& t : texts)
        if (auto ip = parse_ip(t)) out.push_back(*ip);
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
    return out;
}

}  // namespace

void CompilerState::set_nodes(const std::vector<std::string>& addrs) {
    node_v4 = nft::AddrSet{nft::Family::v4, {}, false};  // single addresses: hash sets
    node_v6 = nft::AddrSet{nft::Family::v6, {}, false};
    for (const Ip& ip : parse_ips(addrs))
        (ip.family == nft::Family::v4 ? node_v4 : node_v6).elements.push_back({ip.addr, ip.addr});
    merge_ranges(nft::Family::v4, node_v4.elements);
    merge_ranges(nft::Family::v6, node_v6.elements);
}

void Compiler::reset(const cache::Snapshot& snapshot, const std::vector<LocalPod>& local_pods,
                     const std::vector<std::string>& node_addresses) {
    s_ = std::make_unique<CompilerState>();
    CompilerState& s = *s_;
    s.snap = snapshot;
    s.set_nodes(node_addresses);
    for (const LocalPod& lp : local_pods) {
        ObjectKey k{lp.namespace_, lp.name};
        s.locals[k] = parse_ips(lp.ips);
        s.locals_by_ns[k.namespace_].insert(k.name);
    }
    for (const auto& [name, ns] : s.snap.namespaces) s.ensure_ns(name);
    for (const auto& [key, pod] : s.snap.pods) {
        s.pods_by_ns[key.namespace_].insert(key.name);
        s.refresh_pod(key, nullptr);  // no selectors exist yet: just the pod's data
    }
    for (const auto& [key, p] : s.snap.policies) s.add_policy(key);
    s.flush();
}

Affected Compiler::put_local_pod(const LocalPod& pod) {
    FlushGuard flush_guard{*s_};
    CompilerState& s = *s_;
    ObjectKey k{pod.namespace_, pod.name};
    std::vector<Ip> ips = parse_ips(pod.ips);
    Affected a;
    auto it = s.locals.find(k);
    bool is_new = it == s.locals.end();
    if (!is_new && it->second == ips) return a;
    s.locals[k] = std::move(ips);
    s.locals_by_ns[k.namespace_].insert(k.name);
    s.users_of(s.refresh_pod(k, nullptr), a.pods);
    a.pods.insert(k);
    return a;
}

Affected Compiler::remove_local_pod(const ObjectKey& key) {
    FlushGuard flush_guard{*s_};
    CompilerState& s = *s_;
    Affected a;
    auto it = s.locals.find(key);
    if (it == s.locals.end()) return a;
    s.locals.erase(it);
    auto n = s.locals_by_ns.find(key.namespace_);
    n->second.erase(key.name);
    if (n->second.empty()) s.locals_by_ns.erase(n);
    s.users_of(s.refresh_pod(key, nullptr), a.pods);
    return a;
}

Affected Compiler::put_pod(const cache::Pod& pod) {
    FlushGuard flush_guard{*s_};
    CompilerState& s = *s_;
    ObjectKey k{pod.namespace_, pod.name};
    Affected a;
    auto it = s.snap.pods.find(k);
    if (it != s.snap.pods.end() && it->second == pod) return a;
    s.snap.pods[k] = pod;
    s.pods_by_ns[k.namespace_].insert(k.name);
    bool self_changed = false;
    s.users_of(s.refresh_pod(k, &self_changed), a.pods);
    if (self_changed && s.locals.count(k)) a.pods.insert(k);
    return a;
}

Affected Compiler::remove_pod(const ObjectKey& key) {
    FlushGuard flush_guard{*s_};
    CompilerState& s = *s_;
    Affected a;
    if (!s.snap.pods.erase(key)) return a;
    auto n = s.pods_by_ns.find(key.namespace_);
    n->second.erase(key.name);
    if (n->second.empty()) s.pods_by_ns.erase(n);
    s.users_of(s.refresh_pod(key, nullptr), a.pods);
    if (s.locals.count(key)) a.pods.insert(key);
    return a;
}

Affected CompilerState::namespace_changed(const std::string& ns) {
    Affected a;
    ensure_ns(ns);
    auto& matching = ns_sel_matching[ns];
    Labels labels = ns_labels(ns);
    std::set<uint32_t> now;
    for (uint32_t id : ns_selectors)
        if (cache::matches(*sels.at(id).ns_sel, labels)) now.insert(id);
    if (now == matching) return a;
    matching = std::move(now);
    auto p = pods_by_ns.find(ns);
    if (p == pods_by_ns.end()) return a;
    std::vector<std::string> names(p->second.begin(), p->second.end());
    for (const std::string& name : names) users_of(refresh_pod({ns, name}, nullptr), a.pods);
    return a;
}

Affected Compiler::put_namespace(const cache::Namespace& ns) {
    FlushGuard flush_guard{*s_};
    CompilerState& s = *s_;
    auto it = s.snap.namespaces.find(ns.name);
    if (it != s.snap.namespaces.end() && it->second == ns) return {};
    s.snap.namespaces[ns.name] = ns;
    return s.namespace_changed(ns.name);
}

Affected Compiler::remove_namespace(const std::string& name) {
    FlushGuard flush_guard{*s_};
    CompilerState& s = *s_;
    if (!s.snap.namespaces.erase(name)) return {};
    Affected a = s.namespace_changed(name);
    if (!s.pods_by_ns.count(name)) s.ns_sel_matching.erase(name);
    return a;
}

Affected Compiler::put_policy(const cache::NetworkPolicy& policy) {
    FlushGuard flush_guard{*s_};
    CompilerState& s = *s_;
    ObjectKey k{policy.namespace_, policy.name};
    Affected a;
    auto it = s.snap.policies.find(k);
    if (it != s.snap.policies.end()) {
        if (it->second == policy) return a;
        s.selected_locals(it->second, a.pods);
        s.drop_policy(k);
    }
    s.snap.policies[k] = policy;
    s.add_policy(k);
    s.selected_locals(policy, a.pods);
    return a;
}

Affected Compiler::remove_policy(const ObjectKey& key) {
    FlushGuard flush_guard{*s_};
    CompilerState& s = *s_;
    Affected a;
    auto it = s.snap.policies.find(key);
    if (it == s.snap.policies.end()) return a;
    s.selected_locals(it->second, a.pods);
    s.drop_policy(key);
    s.snap.policies.erase(key);
    return a;
}

Affected Compiler::set_node_addresses(const std::vector<std::string>& node_addresses) {
    CompilerState& s = *s_;
    nft::AddrSet old4 = s.node_v4, old6 = s.node_v6;
    s.set_nodes(node_addresses);
    Affected a;
    if (old4 == s.node_v4 && old6 == s.node_v6) return a;
    for (const auto& [k, ips] : s.locals) a.pods.insert(k);
    return a;
}

Affected Compiler::update(const cache::Snapshot& next) {
    CompilerState& s = *s_;
    Affected a;
    for (const auto& [name, ns] : next.namespaces) a.merge(put_namespace(ns));
    {
        std::vector<ObjectKey> gone;
        for (const auto& [k, p] : s.snap.pods)
            if (!next.pods.count(k)) gone.push_back(k);
        for (const ObjectKey& k : gone) a.merge(remove_pod(k));
    }
    for (const auto& [k, p] : next.pods) a.merge(put_pod(p));
    {
        std::vector<ObjectKey> gone;
        for (const auto& [k, p] : s.snap.policies)
            if (!next.policies.count(k)) gone.push_back(k);
        for (const ObjectKey& k : gone) a.merge(remove_policy(k));
    }
    for (const auto& [k, p] : next.policies) a.merge(put_policy(p));
    {
        std::vector<std::string> gone;
        for (const auto& [name, ns] : s.snap.namespaces)
            if (!next.namespaces.count(name)) gone.push_back(name);
        for (const std::string& name : gone) a.merge(remove_namespace(name));
    }
    return a;
}

Affected Compiler::update(const cache::Snapshot& next, const cache::Delta& delta) {
    if (delta.all) return update(next);
    Affected a;
    // The order of update(): namespaces first, pods, policies, then namespaces gone.
    for (const std::string& name : delta.namespaces)
        if (auto it = next.namespaces.find(name); it != next.namespaces.end()) a.merge(put_namespace(it->second));
    for (const ObjectKey& k : delta.pods)
        a.merge(next.pods.count(k) ? put_pod(next.pods.at(k)) : remove_pod(k));
    for (const ObjectKey& k : delta.policies)
        a.merge(next.policies.count(k) ? put_policy(next.policies.at(k)) : remove_policy(k));
    for (const std::string& name : delta.namespaces)
        if (!next.namespaces.count(name)) a.merge(remove_namespace(name));
    return a;
}

Result<nft::PodRuleset> Compiler::compile(const ObjectKey& local) const {
    if (!s_->locals.count(local))
        return make_error(ENOENT, "pod " + local.namespace_ + "/" + local.name + " is not a local pod");
    return s_->compile_pod(local);
}

Result<nft::PodRuleset> Compiler::compile_any(const ObjectKey& pod) const {
    if (!s_->pods.count(pod) && !s_->locals.count(pod))
        return make_error(ENOENT, "pod " + pod.namespace_ + "/" + pod.name + " not found");
    return s_->compile_pod(pod);
}

std::vector<ObjectKey> Compiler::selecting_policies(const ObjectKey& pod, cache::PolicyType direction) const {
    std::vector<ObjectKey> out;
    const CompilerState& s = *s_;
    auto it = s.pods.find(pod);
    if (it == s.pods.end() || it->second.host_network) return out;
    auto n = s.pols_by_ns.find(pod.namespace_);
    if (n == s.pols_by_ns.end()) return out;
    for (const std::string& name : n->second) {
        ObjectKey pk{pod.namespace_, name};
        const NetworkPolicy& p = s.snap.policies.at(pk);
        bool on = direction == PolicyType::Ingress ? p.affects_ingress() : p.affects_egress();
        if (on && cache::matches(p.pod_selector, it->second.labels)) out.push_back(pk);
    }
    return out;
}

const cache::Snapshot& Compiler::snapshot() const { return s_->snap; }

std::vector<ObjectKey> Compiler::local_pods() const {
    std::vector<ObjectKey> out;
    for (const auto& [k, ips] : s_->locals) out.push_back(k);
    return out;
}

size_t Compiler::selector_count() const { return s_->sels.size(); }

size_t Compiler::memory_estimate() const {
    const CompilerState& s = *s_;
    size_t b = sizeof(CompilerState);
    auto labels_size = [](const Labels& l) {
        size_t n = 0;
        for (const auto& [k, v] : l) n += 64 + k.size() + v.size();
        return n;
    };
    for (const auto& [k, p] : s.snap.pods)
        b += 96 + sizeof(Pod) + k.namespace_.size() + k.name.size() + labels_size(p.labels) +
             p.container_ports.size() * sizeof(api::ContainerPort) + p.pod_ips.size() * 48;
    for (const auto& [k, info] : s.pods)
        b += 96 + sizeof(PodInfo) + labels_size(info.labels) + info.ips.size() * sizeof(Ip) +
             info.sels.size() * 4 + info.ports.size() * sizeof(api::ContainerPort);
    b += s.snap.policies.size() * (96 + sizeof(NetworkPolicy) + 512);  // rough
    for (const auto& [id, sel] : s.sels)
        b += 96 + sizeof(Selector) + sel.key.size() + sel.members.size() * 80 +
             (sel.v4.size() + sel.v6.size()) * sizeof(nft::Addr);
    for (const auto& [k, info] : s.pols) {
        b += 96 + sizeof(PolicyInfo);
        for (const auto* rules : {&info.ingress, &info.egress})
            for (const RuleInfo& r : *rules)
                for (const PeerRef& ref : r.peers) b += sizeof(PeerRef) + ref.block.size() * sizeof(nft::Range);
    }
    return b;
}

}  // namespace signet::policy
