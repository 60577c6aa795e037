// Services, as signet's policy sees them (docs/policy.md, "Services"):
// NetworkPolicy applies to a connection after kube-proxy translated a Service
// frontend to a backend pod, so signet needs two things of a Service:
//
//  - its frontends (the addresses and ports kube-proxy translates on a node):
//    a pod's table lets connections to them through to the node's table,
//    which judges them after the translation (nft::PodRuleset::defer_services);
//  - its backends, for `signetctl explain --to FRONTEND`: the pods its
//    selector picks, with the target port resolved as the endpoints
//    controller resolves it (a number, or a container port's name).
//
// Pure code over the cache's objects.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "addr.h"
#include "../cache/objects.h"
#include "../nft/ruleset.h"

namespace signet::policy {

struct ServiceFrontends {
    // ClusterIPs, externalIPs and load-balancer IPs of every Service with at
    // least one port (sorted, merged).
    std::vector<nft::Range> v4, v6;
    // NodePorts (on the node's own addresses), merged per protocol.
    std::vector<nft::PortRange> node_ports;
    size_t services = 0;  // Services that have frontends
    bool operator==(const ServiceFrontends&) const = default;
};

ServiceFrontends service_frontends(const std::map<cache::ObjectKey, cache::Service>& services);

struct ServiceBackend {
    cache::ObjectKey pod;
    std::string ip;     // the pod's address of the frontend's family
    uint16_t port = 0;  // the target port on the pod (0: its named port is not on this pod)
};

struct ServiceMatch {
    cache::ObjectKey service;
    cache::ServicePort port;
    std::string frontend;  // "ClusterIP", "NodePort", "externalIP", "LoadBalancer"
    std::vector<ServiceBackend> backends;
    bool has_selector = true;  // false: backends are managed by hand (EndpointSlices signet does not read)
};

// The Services whose frontend is `addr` `proto`/`port` (a NodePort when
// `addr` is one of `node_addresses`), with their backends: Running pods of
// the Service's namespace that its selector picks and that have an address
// of the frontend's family.
std::vector<ServiceMatch> services_at(const cache::Snapshot& snapshot, const Ip& addr, uint8_t proto, uint16_t port,
                                      const std::vector<std::string>& node_addresses);

}  // namespace signet::policy
