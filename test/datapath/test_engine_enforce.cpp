// Enforce mode's engine side (issue #13, item 1), without root: the
// segments the pod's table queues once an authenticated connection is
// closing (kCtMarkClosing) pass only while the connection's own socket
// exists; a repeated final-ACK proof likewise; a Service frontend's
// connection is marked deferred (the pod's table lets it pass); a SYN
// crossing the pod's own SYN on the same ports (simultaneous open) is
// refused. The pods' socket lookups are the test's (engine_world.h).
#include <doctest/doctest.h>

#include <fstream>

#include "engine_world.h"

using namespace signet;
using namespace signet::testing;
namespace hk = signet::handshake::hook;

namespace {

constexpr uint8_t kPreE = hk::prerouting, kInE = hk::input, kOutE = hk::output;
constexpr uint8_t kEstablished = 1, kTimeWait = 6;

uint64_t refused_of(Node& n, const std::string& reason) {
    const auto& r = n.engine->counters().refused;
    auto it = r.find(reason);
    return it == r.end() ? 0 : it->second;
}

// a (10.0.0.1:sport) -> b (10.0.1.1:kPort), the whole handshake; returns the final ACK as it left a.
std::vector<uint8_t> run_handshake(World& w, uint16_t sport, uint32_t cisn, uint32_t sisn) {
    auto syn_out = w.judge("a", kOutE, segment("10.0.0.1", "10.0.1.1", sport, kPort, cisn, 0, tcpf::syn));
    REQUIRE(syn_out.accepted);
    REQUIRE(w.judge("b", kPreE, syn_out.bytes).accepted);
    auto synack_out =
        w.judge("b", kOutE, segment("10.0.1.1", "10.0.0.1", kPort, sport, sisn, cisn + 1, tcpf::syn | tcpf::ack));
    REQUIRE(w.judge("a", kPreE, synack_out.bytes).accepted);
    auto ack_out = w.judge("a", kOutE, segment("10.0.0.1", "10.0.1.1", sport, kPort, cisn + 1, sisn + 1, tcpf::ack));
    REQUIRE(has_option(ack_out.bytes));
    REQUIRE(w.judge("b", kPreE, ack_out.bytes).accepted);
    return ack_out.bytes;
}

}  // namespace

TEST_CASE("enforce: a closing connection's segments pass only while its socket exists") {
    World w;
    Node& B = w.node_b();
    run_handshake(w, 43000, 1000, 2000);
    std::optional<uint8_t> state = kEstablished;
    handshake::SocketTuple asked;
    B.queues.socket_state = [&](const handshake::SocketTuple& t) {
        asked = t;
        return Result<std::optional<uint8_t>>(state);
    };
    auto ack = segment("10.0.0.1", "10.0.1.1", 43000, kPort, 1002, 2002, tcpf::ack);
    // The server's socket is still there (its FIN not yet acknowledged): passes, still closing.
    auto v = w.judge("b", kInE, ack, nft::kCtMarkClosing);
    CHECK(v.accepted);
    CHECK(v.mark == nft::kCtMarkClosing);
    CHECK(asked.local_port == kPort);  // looked up as the pod sees it: local b:8080, remote a:43000
    CHECK(asked.remote_port == 43000);
    CHECK(asked.local[0] == 10);
    CHECK(asked.local[2] == 1);
    CHECK(asked.remote[2] == 0);
    // Its TIME_WAIT socket: the kernel answers that one, no connection from it.
    state = kTimeWait;
    CHECK(w.judge("b", kInE, ack, nft::kCtMarkClosing).accepted);
    // Gone: only the listener (SYN cookies would take a bare ACK as a new connection), or nothing.
    state = handshake::kTcpStateListen;
    CHECK_FALSE(w.judge("b", kInE, ack, nft::kCtMarkClosing).accepted);
    auto with_data = segment("10.0.0.1", "10.0.1.1", 43000, kPort, 1001, 2001, tcpf::ack | tcpf::psh, {'x'});
    CHECK_FALSE(w.judge("b", kInE, with_data, nft::kCtMarkClosing).accepted);
    state = std::nullopt;
    CHECK_FALSE(w.judge("b", kInE, ack, nft::kCtMarkClosing).accepted);
    CHECK(B.engine->counters().closed_discarded == 3);
    // A lookup that fails is not a pass (fail closed).
    B.queues.socket_state = [](const handshake::SocketTuple&) {
        return Result<std::optional<uint8_t>>(make_error(EIO, "netlink broke"));
    };
    CHECK_FALSE(w.judge("b", kInE, ack, nft::kCtMarkClosing).accepted);
    CHECK(B.engine->counters().closed_discarded == 4);
    CHECK(B.engine->drops().discarded == 4);
    CHECK(B.engine->counters().refused.empty());  // nothing lost, nothing refused: the connection was gone
    CHECK(B.engine->counters().closing_checked == 6);
    // Without the closing mark the same ACK is the server_ack path (proof already verified: passes).
    B.queues.socket_state = [](const handshake::SocketTuple&) {
        return Result<std::optional<uint8_t>>(std::optional<uint8_t>{kEstablished});
    };
    CHECK(w.judge("b", kInE, ack).accepted);
}

TEST_CASE("enforce: the final ACK's proof replayed after the close is refused; while the socket lives it is stripped") {
    World w;
    Node& B = w.node_b();
    auto proof_ack = run_handshake(w, 43100, 5000, 6000);
    auto again = w.judge("b", kPreE, proof_ack);  // the client answered a retransmitted SYN-ACK
    CHECK(again.accepted);
    CHECK_FALSE(has_option(again.bytes));
    B.queues.socket_state = [](const handshake::SocketTuple&) {
        return Result<std::optional<uint8_t>>(std::optional<uint8_t>{handshake::kTcpStateListen});
    };
    CHECK_FALSE(w.judge("b", kPreE, proof_ack).accepted);
    CHECK(B.engine->counters().closed_discarded == 1);
}

TEST_CASE("enforce: simultaneous open (a SYN crossing the pod's own SYN on the same ports) is refused") {
    World w;
    Node& A = w.node_a();
    Node& B = w.node_b();
    // a:9000 -> b:9001 and b:9001 -> a:9000 at once.
    auto a_syn = w.judge("a", kOutE, segment("10.0.0.1", "10.0.1.1", 9000, 9001, 111, 0, tcpf::syn));
    auto b_syn = w.judge("b", kOutE, segment("10.0.1.1", "10.0.0.1", 9001, 9000, 222, 0, tcpf::syn));
    REQUIRE(a_syn.accepted);
    REQUIRE(b_syn.accepted);
    CHECK_FALSE(w.judge("b", kPreE, a_syn.bytes).accepted);
    CHECK_FALSE(w.judge("a", kPreE, b_syn.bytes).accepted);
    CHECK(refused_of(A, "simultaneous_open") == 1);
    CHECK(refused_of(B, "simultaneous_open") == 1);
    // An ordinary connection from another port is not affected.
    run_handshake(w, 43200, 7000, 8000);
}

TEST_CASE("a trust bundle of other CAs: the client drops its pair keys at once (a signed token, not a MAC one)") {
    World w;
    Node& A = w.node_a();
    run_handshake(w, 43300, 100, 200);  // first contact: signed
    run_handshake(w, 43301, 300, 400);  // MAC under the pair key
    CHECK(A.engine->counters().tokens_added_mac == 1);
    const auto signed_before = A.engine->counters().tokens_added_signed;
    // The bundle file now names another CA (the cluster's was removed): node-a re-reads it.
    identity::AuthorityOptions o;
    o.trust_domain = "datapath.test";
    auto other = identity::Authority::create(o);
    REQUIRE(other.ok());
    {
        std::ofstream f(w.dir() / "ca" / "trust-bundle.pem", std::ios::trunc);
        f << other->bundle_pem();
    }
    REQUIRE(A.identity->reload_bundle());
    auto syn = w.judge("a", kOutE, segment("10.0.0.1", "10.0.1.1", 43302, kPort, 500, 0, tcpf::syn));
    CHECK(syn.accepted);
    CHECK(A.engine->counters().tokens_added_mac == 1);  // no MAC token under a key the bundle no longer vouches for
    CHECK(A.engine->counters().tokens_added_signed == signed_before + 1);
}
