#include "nft/visibility.h"

#include <libmnl/libmnl.h>
#include <linux/if_link.h>
#include <linux/rtnetlink.h>

#include <cstring>
#include <fstream>

namespace signet::nft {

namespace {

int read_int(const char* path) {
    std::ifstream in(path);
    int v = -1;
    if (!(in >> v)) return -1;
    return v;
}

}  // namespace

std::string Visibility::problem() const {
    if (ipvs)
        return "kube-proxy runs in ipvs mode (device kube-ipvs0): it translates Service frontends on the input "
               "hook, where signet does not judge them (iptables and nftables modes are supported)";
    if (bridges.empty()) return "";
    std::string names;
    for (size_t i = 0; i < bridges.size() && i < 4; ++i) names += (i ? ", " : "") + bridges[i];
    if (bridges.size() > 4) names += ", ...";
    if (bridge_nf_call_iptables < 0)
        return "bridge netfilter is off (module br_netfilter not loaded) on a node with bridges (" + names +
               "): kube-proxy's translation of traffic between pods of one bridge is not seen";
    if (bridge_nf_call_iptables != 1)
        return "net.bridge.bridge-nf-call-iptables=" + std::to_string(bridge_nf_call_iptables) +
               " on a node with bridges (" + names + "): kube-proxy needs it set to 1, and so does signet";
    return "";
}

Result<Visibility> read_visibility(const Netns& ns) {
    Visibility v;
    Status err;
    Status ran = ns.run_inside([&] {
        // The sysctls of the netns this thread is in.
        v.bridge_nf_call_iptables = read_int("/proc/sys/net/bridge/bridge-nf-call-iptables");
        v.bridge_nf_call_ip6tables = read_int("/proc/sys/net/bridge/bridge-nf-call-ip6tables");
        auto sock = NlSocket::open(NETLINK_ROUTE);
        if (!sock) {
            err = sock.error();
            return;
        }
        Status q = sock->query(
            [&](uint32_t seq) {
                static thread_local char buf[64];
                std::memset(buf, 0, sizeof buf);
                nlmsghdr* nlh = mnl_nlmsg_put_header(buf);
                nlh->nlmsg_type = RTM_GETLINK;
                nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
                nlh->nlmsg_seq = seq;
                auto* ifm = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifinfomsg)));
                ifm->ifi_family = AF_UNSPEC;
                return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(buf), nlh->nlmsg_len);
            },
            [&](const nlmsghdr* nlh) {
                if (nlh->nlmsg_type != RTM_NEWLINK) return true;
                struct Link {
                    std::string name, kind;
                } link;
                mnl_attr_parse(
                    nlh, sizeof(ifinfomsg),
                    [](const nlattr* a, void* data) {
                        auto* l = static_cast<Link*>(data);
                        uint16_t type = mnl_attr_get_type(a);
                        if (type == IFLA_IFNAME && mnl_attr_validate(a, MNL_TYPE_NUL_STRING) >= 0) {
                            l->name = mnl_attr_get_str(a);
                        } else if (type == IFLA_LINKINFO && mnl_attr_validate(a, MNL_TYPE_NESTED) >= 0) {
                            mnl_attr_parse_nested(
                                a,
                                [](const nlattr* n, void* d) {
                                    if (mnl_attr_get_type(n) == IFLA_INFO_KIND) {
                                        const char* p = static_cast<const char*>(mnl_attr_get_payload(n));
                                        static_cast<Link*>(d)->kind.assign(p, strnlen(p, mnl_attr_get_payload_len(n)));
                                    }
                                    return MNL_CB_OK;
                                },
                                l);
                        }
                        return MNL_CB_OK;
                    },
                    &link);
                if (link.kind == "bridge" && !link.name.empty()) v.bridges.push_back(link.name);
                if (link.name == "kube-ipvs0") v.ipvs = true;
                return true;
            },
            [&] { v.bridges.clear(); });
        if (!q) err = q;
    });
    if (!ran) return ran.error();
    if (!err) return err.error();
    return v;
}

}  // namespace signet::nft
