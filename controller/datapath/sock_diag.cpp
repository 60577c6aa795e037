#include "datapath/sock_diag.h"

#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "nft/netns.h"

namespace signet::handshake {

std::vector<uint8_t> build_tcp_lookup(const SocketTuple& t, uint32_t seq) {
    std::vector<uint8_t> buf(NLMSG_SPACE(sizeof(inet_diag_req_v2)), 0);
    auto* nlh = reinterpret_cast<nlmsghdr*>(buf.data());
    nlh->nlmsg_len = NLMSG_LENGTH(sizeof(inet_diag_req_v2));
    nlh->nlmsg_type = SOCK_DIAG_BY_FAMILY;
    nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
    nlh->nlmsg_seq = seq;
    inet_diag_req_v2 req{};
    req.sdiag_family = t.family == Family::ipv4 ? AF_INET : AF_INET6;
    req.sdiag_protocol = IPPROTO_TCP;
    req.idiag_states = ~0U;
    // The kernel looks the socket up as for a segment from dst to src:
    // src/sport are the local end, dst/dport the remote one.
    req.id.idiag_sport = htons(t.local_port);
    req.id.idiag_dport = htons(t.remote_port);
    const size_t n = t.family == Family::ipv4 ? 4 : 16;
    std::memcpy(req.id.idiag_src, t.local.data(), n);
    std::memcpy(req.id.idiag_dst, t.remote.data(), n);
    req.id.idiag_if = 0;
    req.id.idiag_cookie[0] = INET_DIAG_NOCOOKIE;
    req.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;
    std::memcpy(NLMSG_DATA(nlh), &req, sizeof req);
    return buf;
}

std::optional<uint8_t> parse_tcp_lookup_answer(std::span<const uint8_t> msg) {
    if (msg.size() < NLMSG_LENGTH(sizeof(inet_diag_msg))) return std::nullopt;
    nlmsghdr h;
    std::memcpy(&h, msg.data(), sizeof h);
    if (h.nlmsg_type != SOCK_DIAG_BY_FAMILY || h.nlmsg_len < NLMSG_LENGTH(sizeof(inet_diag_msg)) ||
        h.nlmsg_len > msg.size())
        return std::nullopt;
    inet_diag_msg m;
    std::memcpy(&m, msg.data() + NLMSG_HDRLEN, sizeof m);
    return m.idiag_state;
}

Result<std::optional<uint8_t>> tcp_socket_state(nft::NlSocket& sock, const SocketTuple& t) {
    std::vector<uint8_t> req;
    std::optional<uint8_t> state;
    Status st = sock.query(
        [&](uint32_t seq) {
            req = build_tcp_lookup(t, seq);
            return std::span<const uint8_t>(req);
        },
        [&](const nlmsghdr* nlh) {
            auto s = parse_tcp_lookup_answer({reinterpret_cast<const uint8_t*>(nlh), nlh->nlmsg_len});
            if (s) state = s;
            return true;
        },
        [&] { state.reset(); }, std::chrono::milliseconds(500));
    if (!st) {
        if (st.error().code == ENOENT) return std::optional<uint8_t>{};
        return st.error();
    }
    return state;
}

}  // namespace signet::handshake
