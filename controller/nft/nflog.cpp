#include "nflog.h"

#include <arpa/inet.h>
#include <libmnl/libmnl.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_log.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

namespace signet::nft {

namespace {

constexpr uint16_t kUlogPacket = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET;
constexpr uint16_t kUlogConfig = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG;

uint16_t be16_at(std::span<const uint8_t> b, size_t off) {
    return static_cast<uint16_t>((b[off] << 8) | b[off + 1]);
}

}  // namespace

std::optional<LoggedPacket> parse_ip_packet(std::span<const uint8_t> p) {
    LoggedPacket out;
    if (p.empty()) return std::nullopt;
    size_t l4 = 0;
    uint8_t version = p[0] >> 4;
    if (version == 4) {
        if (p.size() < 20) return std::nullopt;
        size_t ihl = static_cast<size_t>(p[0] & 0x0f) * 4;
        if (ihl < 20 || ihl > p.size()) return std::nullopt;
        out.tuple.family = Family::v4;
        out.tuple.proto = p[9];
        std::memcpy(out.tuple.src.bytes.data(), p.data() + 12, 4);
        std::memcpy(out.tuple.dst.bytes.data(), p.data() + 16, 4);
        out.length = be16_at(p, 2);
        // A non-first fragment has no transport header.
        if ((be16_at(p, 6) & 0x1fff) != 0) return out;
        l4 = ihl;
    } else if (version == 6) {
        if (p.size() < 40) return std::nullopt;
        out.tuple.family = Family::v6;
        std::memcpy(out.tuple.src.bytes.data(), p.data() + 8, 16);
        std::memcpy(out.tuple.dst.bytes.data(), p.data() + 24, 16);
        out.length = static_cast<uint32_t>(be16_at(p, 4)) + 40;
        uint8_t next = p[6];
        size_t off = 40;
        // Hop-by-hop, routing, destination options: skip (bounded).
        for (int i = 0; i < 8 && (next == 0 || next == 43 || next == 60); ++i) {
            if (off + 8 > p.size()) {
                out.tuple.proto = next;
                return out;
            }
            size_t len = (static_cast<size_t>(p[off + 1]) + 1) * 8;
            next = p[off];
            off += len;
        }
        out.tuple.proto = next;
        if (next == 44) return out;  // a fragment: ports only in the first, not worth the chase
        l4 = off;
    } else {
        return std::nullopt;
    }
    uint8_t proto = out.tuple.proto;
    if ((proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP) && l4 + 4 <= p.size()) {
        out.tuple.sport = be16_at(p, l4);
        out.tuple.dport = be16_at(p, l4 + 2);
        if (proto == IPPROTO_TCP && l4 + 14 <= p.size()) out.tcp_flags = p[l4 + 13];
    }
    return out;
}

size_t nflog_parse_buffer(std::span<const uint8_t> bytes, std::vector<LoggedPacket>& out) {
    return for_each_nlmsg(bytes, [&](const nlmsghdr* nlh, size_t len) {
        size_t attrs_off = NLMSG_HDRLEN + MNL_ALIGN(sizeof(nfgenmsg));
        if (nlh->nlmsg_type != kUlogPacket || len < attrs_off) return;
        std::string prefix;
        std::span<const uint8_t> payload;
        const auto* attr = reinterpret_cast<const nlattr*>(reinterpret_cast<const uint8_t*>(nlh) + attrs_off);
        int rest = static_cast<int>(len - attrs_off);
        while (rest >= static_cast<int>(sizeof(nlattr)) && mnl_attr_ok(attr, rest)) {
            uint16_t type = mnl_attr_get_type(attr);
            const auto* data = static_cast<const uint8_t*>(mnl_attr_get_payload(attr));
            size_t dlen = mnl_attr_get_payload_len(attr);
            if (type == NFULA_PREFIX)
                prefix.assign(reinterpret_cast<const char*>(data), strnlen(reinterpret_cast<const char*>(data), dlen));
            if (type == NFULA_PAYLOAD) payload = {data, dlen};
            int step = static_cast<int>(MNL_ALIGN(attr->nla_len));
            if (step <= 0 || step > rest) break;
            rest -= step;
            attr = reinterpret_cast<const nlattr*>(reinterpret_cast<const uint8_t*>(attr) + step);
        }
        if (auto pkt = parse_ip_packet(payload)) {
            pkt->prefix = std::move(prefix);
            out.push_back(std::move(*pkt));
        }
    });
}

Result<NlSocket> nflog_bind(const Netns& ns, uint16_t group) {
    auto sock = ns.open_socket(NETLINK_NETFILTER);
    if (!sock) return sock.error();
    auto config = [&](auto&& add_attrs) -> Status {
        std::vector<uint8_t> buf(MNL_SOCKET_BUFFER_SIZE);
        nlmsghdr* nlh = mnl_nlmsg_put_header(buf.data());
        nlh->nlmsg_type = kUlogConfig;
        nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
        uint32_t seq = sock->next_seq();
        nlh->nlmsg_seq = seq;
        auto* nfg = static_cast<nfgenmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(nfgenmsg)));
        nfg->nfgen_family = AF_UNSPEC;
        nfg->version = NFNETLINK_V0;
        nfg->res_id = htons(group);
        add_attrs(nlh);
        return sock->transact(std::span<const uint8_t>(buf.data(), nlh->nlmsg_len), seq, seq);
    };
    auto fail = [&](const Status& st, const char* what) {
        return make_error(st.error().code, std::string("NFLOG group ") + std::to_string(group) + ": " + what +
                                               " in netns " + ns.path() + ": " + st.error().message);
    };
    if (Status st = config([](nlmsghdr* nlh) {
            nfulnl_msg_config_cmd cmd{NFULNL_CFG_CMD_BIND};
            mnl_attr_put(nlh, NFULA_CFG_CMD, sizeof cmd, &cmd);
        });
        !st)
        return fail(st, "bind");
    if (Status st = config([](nlmsghdr* nlh) {
            nfulnl_msg_config_mode mode{};
            mode.copy_range = htonl(kDenyLogSnaplen);
            mode.copy_mode = NFULNL_COPY_PACKET;
            mnl_attr_put(nlh, NFULA_CFG_MODE, sizeof mode, &mode);
            mnl_attr_put_u32(nlh, NFULA_CFG_QTHRESH, htonl(1));     // deliver each packet at once
            mnl_attr_put_u32(nlh, NFULA_CFG_TIMEOUT, htonl(10));    // or after 100 ms at most
        });
        !st)
        return fail(st, "configure");
    int size = 1 << 19;
    (void)::setsockopt(sock->fd(), SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size);
    return std::move(*sock);
}

}  // namespace signet::nft
