// signet handshake: which TCP socket of a pod's netns a segment would reach
// (sock_diag: SOCK_DIAG_BY_FAMILY, one exact lookup, no dump).
//
// Enforce mode marks an authenticated connection "closing" once its server
// closed or either side reset it (nft/ruleset.h, kCtMarkClosing); the peer's
// later segments come to the engine, which lets one through only while the
// connection's own socket still exists. When it is gone the segment would
// reach the listener, which takes a bare ACK whose SYN cookie checks out as
// a new connection: a copy of the handshake's ACK, replayed after the
// close, would open one without a handshake.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "datapath/packet.h"
#include "signet/result.h"

namespace signet::nft {
class NlSocket;
}

namespace signet::handshake {

// A TCP 4-tuple as the pod sees it.
struct SocketTuple {
    Family family = Family::ipv4;
    std::array<uint8_t, 16> local{}, remote{};  // IPv4 in the first 4 bytes
    uint16_t local_port = 0, remote_port = 0;   // host order
};

// The TCP states sock_diag reports (include/net/tcp_states.h).
inline constexpr uint8_t kTcpStateListen = 10;

// The inet_diag request for `t` (exact lookup: the kernel answers with the
// socket a segment from remote to local would reach — the connection's own,
// its TIME_WAIT, or the listener — or ENOENT).
std::vector<uint8_t> build_tcp_lookup(const SocketTuple& t, uint32_t seq);

// The state of the socket in one answer message (an inet_diag_msg);
// nullopt: not such a message.
std::optional<uint8_t> parse_tcp_lookup_answer(std::span<const uint8_t> msg);

// The state of the socket the netns of `sock` (a NETLINK_SOCK_DIAG socket)
// would hand a segment of `t` to; nullopt: no socket at all.
Result<std::optional<uint8_t>> tcp_socket_state(nft::NlSocket& sock, const SocketTuple& t);

}  // namespace signet::handshake
