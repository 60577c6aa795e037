// PodRuleset::same_structure (declared in nft/ruleset.h) and the pure
// evaluation of a rule set.
#include <algorithm>

#include "../nft/ruleset.h"
#include "addr.h"
#include "compiler.h"

namespace signet::nft {

bool PodRuleset::same_structure(const PodRuleset& other) const {
    if (!(ingress == other.ingress) || !(egress == other.egress) || handshake != other.handshake || handshake_enforce != other.handshake_enforce ||
        audit != other.audit || defer_services != other.defer_services || node_ports != other.node_ports)
        return false;
    if (sets.size() != other.sets.size()) return false;
    auto a = sets.begin();
    auto b = other.sets.begin();
    for (; a != sets.end(); ++a, ++b) {
        if (a->first != b->first || a->second.family != b->second.family || a->second.interval != b->second.interval)
            return false;
    }
    return true;
}

}  // namespace signet::nft

namespace signet::policy {

namespace {

bool in_set(const nft::PodRuleset& rs, const std::string& name, const Ip& peer) {
    if (name.empty()) return false;
    auto it = rs.sets.find(name);
    if (it == rs.sets.end() || it->second.family != peer.family) return false;
    return contains(it->second.elements, peer.addr);
}

}  // namespace

bool allows(const nft::PodRuleset& rs, bool ingress, const Ip& peer, uint8_t proto, uint16_t port) {
    const nft::Direction& dir = ingress ? rs.ingress : rs.egress;
    if (!dir.isolated) return true;
    if (ingress && in_set(rs, peer.family == nft::Family::v4 ? "node_v4" : "node_v6", peer)) return true;
    if (!ingress && rs.defer_services) {
        // A Service frontend: judged by the node's table after translation, not here.
        if (in_set(rs, peer.family == nft::Family::v4 ? "svc_v4" : "svc_v6", peer)) return true;
        if (in_set(rs, peer.family == nft::Family::v4 ? "node_v4" : "node_v6", peer))
            for (const nft::PortRange& pr : rs.node_ports)
                if (pr.proto == proto && port >= pr.first && port <= pr.last) return true;
    }
    for (const nft::Rule& rule : dir.rules) {
        bool peer_ok = rule.any_peer || in_set(rs, peer.family == nft::Family::v4 ? rule.set_v4 : rule.set_v6, peer);
        if (!peer_ok) continue;
        if (rule.ports.empty()) return true;
        for (const nft::PortRange& pr : rule.ports)
            if (pr.proto == proto && port >= pr.first && port <= pr.last) return true;
    }
    return false;
}

}  // namespace signet::policy
