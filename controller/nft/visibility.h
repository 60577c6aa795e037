// Can signet see the node's Service translation? (docs/policy.md, "Services")
//
// kube-proxy translates Service frontends in the node's netns, and signet's
// node table judges the translated connections there. On a bridge network
// that works only with bridge netfilter on: without
// net.bridge.bridge-nf-call-iptables=1 (kube-proxy's own requirement) frames
// between pods of one bridge bypass the node's netfilter, and so does the
// return half of a translated connection. signetd then does not judge
// Service connections at the node at all: an egress-isolated pod's Service
// connections are refused in its own table (fail closed), and status says why.
#pragma once

#include <string>
#include <vector>

#include "nft/netns.h"
#include "signet/result.h"

namespace signet::nft {

struct Visibility {
    std::vector<std::string> bridges;  // bridge devices in the netns
    // kube-proxy's ipvs mode (its dummy device kube-ipvs0 holds the
    // frontends): the translation happens on the input hook and the
    // packets leave without the forward hook, where signet judges them.
    bool ipvs = false;
    int bridge_nf_call_iptables = -1;  // the sysctl's value; -1: absent (br_netfilter not loaded)
    int bridge_nf_call_ip6tables = -1;
    // "" when signet sees translated traffic; otherwise why not (for status and logs).
    std::string problem() const;
};

// Reads the bridges (rtnetlink) and the bridge-nf sysctls inside `ns`.
Result<Visibility> read_visibility(const Netns& ns);

}  // namespace signet::nft
