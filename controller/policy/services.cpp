#include "services.h"

#include <algorithm>
#include <charconv>


namespace signet::policy {

namespace {

uint8_t proto_of(cache::Protocol p) {
    switch (p) {
        case cache::Protocol::TCP: return nft::kTcp;
        case cache::Protocol::UDP: return nft::kUdp;
        case cache::Protocol::SCTP: return nft::kSctp;
    }
    return nft::kTcp;
}

std::vector<nft::Range> merged(std::vector<nft::Range> r) {
    std::sort(r.begin(), r.end(), [](const nft::Range& a, const nft::Range& b) { return a.first.bytes < b.first.bytes; });
    std::vector<nft::Range> out;
    for (const auto& x : r) {
        if (!out.empty() && out.back().last.bytes >= x.first.bytes) {
            if (x.last.bytes > out.back().last.bytes) out.back().last = x.last;
            continue;
        }
        out.push_back(x);
    }
    return out;
}

std::vector<nft::PortRange> merged_ports(std::vector<nft::PortRange> p) {
    std::sort(p.begin(), p.end());
    std::vector<nft::PortRange> out;
    for (const auto& x : p) {
        if (!out.empty() && out.back().proto == x.proto && static_cast<uint32_t>(out.back().last) + 1 >= x.first) {
            out.back().last = std::max(out.back().last, x.last);
            continue;
        }
        out.push_back(x);
    }
    return out;
}

// The target port of `sp` on `pod` (0 when a named port is not declared there).
uint16_t target_on(const cache::ServicePort& sp, const cache::Pod& pod) {
    if (sp.target_port.empty()) return sp.port;
    uint32_t n = 0;
    auto [p, ec] = std::from_chars(sp.target_port.data(), sp.target_port.data() + sp.target_port.size(), n);
    if (ec == std::errc() && p == sp.target_port.data() + sp.target_port.size()) return n <= 65535 ? static_cast<uint16_t>(n) : 0;
    for (const auto& cp : pod.container_ports)
        if (cp.name == sp.target_port && cp.protocol == cache::to_string(sp.protocol) && cp.port > 0 && cp.port <= 65535)
            return static_cast<uint16_t>(cp.port);
    return 0;
}

bool selected(const cache::Labels& selector, const cache::Labels& labels) {
    for (const auto& [k, v] : selector) {
        auto it = labels.find(k);
        if (it == labels.end() || it->second != v) return false;
    }
    return true;
}

}  // namespace

ServiceFrontends service_frontends(const std::map<cache::ObjectKey, cache::Service>& services) {
    ServiceFrontends f;
    std::vector<nft::Range> v4, v6;
    std::vector<nft::PortRange> node_ports;
    for (const auto& [key, svc] : services) {
        if (svc.ports.empty() || svc.type == "ExternalName") continue;
        bool any = false;
        auto add = [&](const std::string& text) {
            auto ip = parse_ip(text);
            if (!ip) return;
            (ip->family == nft::Family::v4 ? v4 : v6).push_back(nft::Range{ip->addr, ip->addr});
            any = true;
        };
        for (const auto& a : svc.cluster_ips) add(a);
        for (const auto& a : svc.external_ips) add(a);
        for (const auto& a : svc.load_balancer_ips) add(a);
        for (const auto& p : svc.ports)
            if (p.node_port != 0) {
                node_ports.push_back(nft::PortRange{proto_of(p.protocol), p.node_port, p.node_port});
                any = true;
            }
        if (any) ++f.services;
    }
    f.v4 = merged(std::move(v4));
    f.v6 = merged(std::move(v6));
    f.node_ports = merged_ports(std::move(node_ports));
    return f;
}

std::vector<ServiceMatch> services_at(const cache::Snapshot& snapshot, const Ip& addr, uint8_t proto, uint16_t port,
                                      const std::vector<std::string>& node_addresses) {
    bool on_node = false;
    for (const auto& a : node_addresses)
        if (auto ip = parse_ip(a); ip && *ip == addr) on_node = true;
    std::vector<ServiceMatch> out;
    for (const auto& [key, svc] : snapshot.services) {
        auto is = [&](const std::vector<std::string>& list) {
            for (const auto& a : list)
                if (auto ip = parse_ip(a); ip && *ip == addr) return true;
            return false;
        };
        const char* kind = is(svc.cluster_ips)          ? "ClusterIP"
                           : is(svc.external_ips)       ? "externalIP"
                           : is(svc.load_balancer_ips)  ? "LoadBalancer"
                                                        : nullptr;
        for (const auto& sp : svc.ports) {
            if (proto_of(sp.protocol) != proto) continue;
            const char* how = nullptr;
            if (kind && sp.port == port) how = kind;
            else if (on_node && sp.node_port != 0 && sp.node_port == port) how = "NodePort";
            if (!how) continue;
            ServiceMatch m;
            m.service = key;
            m.port = sp;
            m.frontend = how;
            m.has_selector = svc.selector.has_value();
            if (svc.selector && !svc.selector->empty()) {
                for (const auto& [pk, pod] : snapshot.pods) {
                    if (pk.namespace_ != key.namespace_ || pod.phase != "Running" || !selected(*svc.selector, pod.labels))
                        continue;
                    for (const auto& a : pod.pod_ips) {
                        auto ip = parse_ip(a);
                        if (!ip || ip->family != addr.family) continue;
                        m.backends.push_back(ServiceBackend{pk, to_string(*ip), target_on(sp, pod)});
                        break;
                    }
                }
            }
            out.push_back(std::move(m));
        }
    }
    return out;
}

}  // namespace signet::policy
