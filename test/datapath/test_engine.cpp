// The identity handshake's state machine (datapath/engine), without
// root: two nodes' engines in one process (engine_world.h), segments built
// here and relayed between them as the wire would. SYN -> SYN-ACK -> ACK with
// a signed first contact, then MAC tokens; the final ACK's proof; the
// refusals (no token, spoofed source, replay, policy, bad or missing proof,
// unexpected token, rate limit); an RST that overtakes the proof; data before
// the proof; and the invariant the queue rules rely on: whatever an engine
// accepts on the way in carries no signet option. On the world's clock, held
// still and moved by the tests: the rate limit refilling, handshakes in
// flight expiring, tokens outside their validity window.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "engine_world.h"

using namespace signet;
using namespace signet::testing;
namespace hk = signet::handshake::hook;

namespace {

constexpr uint8_t kPre = hk::prerouting, kIn = hk::input, kOut = hk::output;

uint64_t refused(Node& n, const std::string& reason) {
    const auto& r = n.engine->counters().refused;
    auto it = r.find(reason);
    return it == r.end() ? 0 : it->second;
}

// One connection a -> b through both engines, step by step.
struct Conn {
    Conn(World& world, uint16_t sp, uint32_t c, uint32_t srv) : w(world), sport(sp), cisn(c), sisn(srv) {}
    World& w;
    uint16_t sport;
    uint32_t cisn, sisn;
    std::string client = "a", client_ip = "10.0.0.1";
    Verdict syn_out, syn_in, synack_out, synack_in, ack_out, ack_in;

    std::vector<uint8_t> syn() const { return segment(client_ip, "10.0.1.1", sport, kPort, cisn, 0, tcpf::syn); }
    std::vector<uint8_t> synack() const {
        return segment("10.0.1.1", client_ip, kPort, sport, sisn, cisn + 1, tcpf::syn | tcpf::ack);
    }
    std::vector<uint8_t> ack() const {
        return segment(client_ip, "10.0.1.1", sport, kPort, cisn + 1, sisn + 1, tcpf::ack);
    }
    // Runs the handshake up to (and with) `steps` of: 1 SYN out, 2 SYN in, 3
    // SYN-ACK out, 4 SYN-ACK in, 5 ACK out, 6 ACK in.
    void run(int steps = 6) {
        if (steps >= 1) syn_out = w.judge(client, kOut, syn());
        if (steps >= 2) syn_in = w.judge("b", has_option(syn_out.bytes) ? kPre : kIn, syn_out.bytes);
        if (steps >= 3) synack_out = w.judge("b", kOut, synack());
        if (steps >= 4) synack_in = w.judge(client, has_option(synack_out.bytes) ? kPre : kIn, synack_out.bytes);
        if (steps >= 5) ack_out = w.judge(client, kOut, ack());
        if (steps >= 6) ack_in = w.judge("b", has_option(ack_out.bytes) ? kPre : kIn, ack_out.bytes);
    }
};

}  // namespace

TEST_CASE("a -> b: signed first contact, then MAC tokens; the proof; marks; nothing with the option gets in") {
    World w;
    Node& A = w.node_a();
    Node& B = w.node_b();
    Conn c{w, 40000, 1000, 900000};
    c.run();
    CHECK(c.syn_out.accepted);
    CHECK(has_option(c.syn_out.bytes));  // the client token rides the SYN
    CHECK(c.syn_out.mark == nft::kCtMarkPending);
    CHECK(c.syn_in.accepted);
    CHECK(c.syn_in.bytes == c.syn());  // stripped: the server's stack sees the SYN as it was sent
    CHECK(c.syn_in.mark == nft::kCtMarkAwaitProof);
    CHECK(c.synack_out.accepted);
    CHECK(has_option(c.synack_out.bytes));
    CHECK(c.synack_in.accepted);
    CHECK(c.synack_in.bytes == c.synack());
    CHECK(c.synack_in.mark == nft::kCtMarkProofDue);
    CHECK(c.ack_out.accepted);
    CHECK(has_option(c.ack_out.bytes));  // the proof
    CHECK(c.ack_out.mark == nft::kCtMarkAuthenticated);
    CHECK(c.ack_in.accepted);
    CHECK(c.ack_in.bytes == c.ack());
    CHECK(c.ack_in.mark == nft::kCtMarkAuthenticated);
    CHECK(A.engine->counters().tokens_added_signed == 1);
    CHECK(B.engine->counters().verified_signed == 1);
    CHECK(B.engine->counters().proofs_verified == 1);
    // Data after the proof passes, marked.
    auto data = w.judge("b", kIn, segment("10.0.0.1", "10.0.1.1", 40000, kPort, 1001, 900001, tcpf::ack | tcpf::psh, {1, 2, 3}));
    CHECK(data.accepted);

    // The second connection: MAC tokens under the node-pair key, both ways.
    Conn d{w, 40001, 5000, 700000};
    d.run();
    CHECK(d.ack_in.accepted);
    CHECK(d.ack_in.bytes == d.ack());
    CHECK(A.engine->counters().tokens_added_mac == 1);
    CHECK(B.engine->counters().verified_mac == 1);
    CHECK(B.engine->counters().tokens_added_mac == 1);
    CHECK(A.engine->counters().verified_mac == 1);
    CHECK(A.engine->counters().accepted_authenticated == 2);
    CHECK(B.engine->counters().accepted_authenticated == 2);
    CHECK(A.engine->drops().lost() == 0);
    CHECK(B.engine->drops().lost() == 0);
    CHECK(B.engine->counters().refused.empty());
}

// The engines of a World start with the clock: past the first seconds, no
// handshake of a previous process is recovered (kRecoveryWindow).
constexpr auto kPastRecovery = std::chrono::seconds(11);

TEST_CASE("refusals: no token, spoofed source, replay, policy, unexpected token") {
    World w;
    w.clock().advance(kPastRecovery);
    Node& A = w.node_a();
    Node& B = w.node_b();
    // A tokenless SYN from a's address: in enforce mode a pod's address proves nothing.
    auto bare = w.judge("b", kIn, segment("10.0.0.1", "10.0.1.1", 41000, kPort, 1, 0, tcpf::syn));
    CHECK_FALSE(bare.accepted);
    CHECK(refused(B, "no_token") == 1);
    // Pod c sends a SYN with a's address.
    auto spoof = w.judge("c", kOut, segment("10.0.0.1", "10.0.1.1", 41001, kPort, 1, 0, tcpf::syn));
    CHECK_FALSE(spoof.accepted);
    CHECK(refused(A, "spoofed_source") == 1);
    // Replay: the same tokened SYN twice.
    Conn c{w, 41002, 77, 88};
    c.run(2);
    REQUIRE(c.syn_in.accepted);
    auto again = w.judge("b", kPre, c.syn_out.bytes);
    CHECK_FALSE(again.accepted);
    CHECK(refused(B, "replay") == 1);
    // c is not admitted by to-b: its proven identity is judged and denied.
    Conn fromc{w, 41003, 5, 6};
    fromc.client = "c";
    fromc.client_ip = "10.0.0.3";
    fromc.run(2);
    CHECK(fromc.syn_out.accepted);  // c's egress is open: the token is added
    CHECK_FALSE(fromc.syn_in.accepted);
    CHECK(B.engine->counters().denied == 1);
    // A SYN-ACK with a token on a connection a sent none on (b's real
    // SYN-ACK token, moved to other ports).
    Conn full{w, 41004, 10, 20};
    full.run(3);
    auto moved = full.synack_out.bytes;
    REQUIRE(has_option(moved));
    moved[22] = static_cast<uint8_t>(41005 >> 8);
    moved[23] = static_cast<uint8_t>(41005 & 0xff);
    refix(moved);
    CHECK_FALSE(w.judge("a", kPre, moved).accepted);
    CHECK(refused(A, "unexpected_token") == 1);
    CHECK(A.engine->drops().lost() == 0);
    CHECK(B.engine->drops().lost() == 0);
}

TEST_CASE("the final ACK's proof: wrong, missing, held data, repeated, after the client's RST") {
    World w;
    w.clock().advance(kPastRecovery);
    Node& B = w.node_b();
    // Wrong proof: one byte of the proof flipped.
    Conn c{w, 42000, 100, 200};
    c.run(5);
    auto bad = c.ack_out.bytes;
    bad.back() ^= 0x01;
    refix(bad);
    auto r = w.judge("b", kPre, bad);
    CHECK_FALSE(r.accepted);
    CHECK(refused(B, "bad_proof") == 1);
    // Data before the proof is held (dropped); the proof then passes; a repeated proof is stripped.
    auto early = w.judge("b", kIn, segment("10.0.0.1", "10.0.1.1", 42000, kPort, 101, 201, tcpf::ack | tcpf::psh, {9}));
    CHECK_FALSE(early.accepted);
    CHECK(B.engine->counters().held_for_proof == 1);
    auto good = w.judge("b", kPre, c.ack_out.bytes);
    CHECK(good.accepted);
    CHECK(good.bytes == c.ack());
    auto repeat = w.judge("b", kPre, c.ack_out.bytes);
    CHECK(repeat.accepted);
    CHECK(repeat.bytes == c.ack());  // never with the option
    // A proof with no handshake behind it: a's real proof, on other ports.
    auto stray_proof = c.ack_out.bytes;
    stray_proof[20] = static_cast<uint8_t>(42001 >> 8);
    stray_proof[21] = static_cast<uint8_t>(42001 & 0xff);
    refix(stray_proof);
    auto nr = w.judge("b", kPre, stray_proof);
    CHECK_FALSE(nr.accepted);
    CHECK(refused(B, "no_proof") == 1);
    // A segment whose checksum is wrong is refused as malformed, never passed.
    auto broken = c.ack_out.bytes;
    broken.back() ^= 0x01;
    CHECK_FALSE(w.judge("b", kPre, broken).accepted);
    CHECK(refused(B, "malformed_packet") == 1);
    // The client's RST overtakes its proof: the RST passes, the proof behind it is discarded.
    Conn q{w, 42002, 500, 600};
    q.run(5);
    auto rst = w.judge("b", kIn, segment("10.0.0.1", "10.0.1.1", 42002, kPort, 501, 601, tcpf::rst | tcpf::ack));
    CHECK(rst.accepted);
    auto late = w.judge("b", kPre, q.ack_out.bytes);
    CHECK_FALSE(late.accepted);
    CHECK(B.engine->counters().proof_after_reset == 1);
    CHECK(B.engine->drops().discarded == 1);
    CHECK(B.engine->drops().lost() == 1);  // the held data segment above
}

TEST_CASE("first-contact rate limit: signed tokens from one address beyond the burst are refused") {
    handshake::HandshakeEngine::Context tweak;
    tweak.first_contact_burst = 1;
    tweak.first_contact_rate = 0.001;
    World w(tweak);
    Node& B = w.node_b();
    // Until a has verified b's token it knows no pair key: every SYN is signed.
    Conn c1{w, 43000, 1, 2}, c2{w, 43001, 3, 4};
    c1.run(2);
    c2.run(2);
    CHECK(c1.syn_in.accepted);
    CHECK_FALSE(c2.syn_in.accepted);
    CHECK(refused(B, "rate_limited") == 1);
    CHECK(B.engine->drops().limits == 1);
}

TEST_CASE("first-contact rate limit: the bucket refills with time, and is forgotten when idle") {
    handshake::HandshakeEngine::Context tweak;
    tweak.first_contact_burst = 1;
    tweak.first_contact_rate = 1;  // per second
    World w(tweak);
    Node& B = w.node_b();
    Conn c1{w, 44000, 1, 2}, c2{w, 44001, 3, 4}, c3{w, 44002, 5, 6}, c4{w, 44003, 7, 8}, c5{w, 44004, 9, 10};
    c1.run(2);
    CHECK(c1.syn_in.accepted);
    c2.run(2);  // the same instant: the bucket is empty
    CHECK_FALSE(c2.syn_in.accepted);
    w.clock().advance(std::chrono::milliseconds(500));
    c3.run(2);  // half a token
    CHECK_FALSE(c3.syn_in.accepted);
    CHECK(refused(B, "rate_limited") == 2);
    w.clock().advance(std::chrono::milliseconds(500));
    c4.run(2);  // one token again
    CHECK(c4.syn_in.accepted);
    CHECK(refused(B, "rate_limited") == 2);
    // Idle for over 10 s the bucket is swept; the next one starts full.
    w.clock().advance(std::chrono::seconds(11));
    B.engine->expire();
    c5.run(2);
    CHECK(c5.syn_in.accepted);
    CHECK(B.engine->counters().verified_signed == 3);
    CHECK(B.engine->drops().limits == 2);
}

TEST_CASE("handshakes in flight expire: the server's after 10 s, the client's after 30 s") {
    World w;
    Node& A = w.node_a();
    Node& B = w.node_b();
    // The server waits 10 s for the proof after its SYN-ACK: then no handshake is in flight.
    Conn late{w, 45000, 100, 200};
    late.run(5);
    REQUIRE(has_option(late.ack_out.bytes));
    w.clock().advance(std::chrono::seconds(11));
    B.engine->expire();
    CHECK_FALSE(w.judge("b", kPre, late.ack_out.bytes).accepted);
    CHECK(refused(B, "no_proof") == 1);
    // Within the 10 s the proof is awaited still.
    Conn in_time{w, 45001, 300, 400};
    in_time.run(5);
    w.clock().advance(std::chrono::seconds(9));
    B.engine->expire();
    auto proof = w.judge("b", kPre, in_time.ack_out.bytes);
    CHECK(proof.accepted);
    CHECK(proof.bytes == in_time.ack());
    CHECK(B.engine->counters().proofs_verified == 1);

    // The client keeps its SYN's entry 30 s (retransmissions refresh it):
    // a SYN-ACK with a token after that was not asked for.
    Conn slow{w, 45002, 500, 600};
    slow.run(3);
    REQUIRE(has_option(slow.synack_out.bytes));
    w.clock().advance(std::chrono::seconds(31));
    A.engine->expire();
    CHECK_FALSE(w.judge("a", kPre, slow.synack_out.bytes).accepted);
    CHECK(refused(A, "unexpected_token") == 1);
    // Within them (and within the token's validity) it verifies.
    Conn ok{w, 45003, 700, 800};
    ok.run(3);
    w.clock().advance(std::chrono::seconds(6));
    A.engine->expire();
    auto answer = w.judge("a", kPre, ok.synack_out.bytes);
    CHECK(answer.accepted);
    CHECK(answer.mark == nft::kCtMarkProofDue);
}

TEST_CASE("tokens outside their validity window: expired (5 s + 2 s skew), not yet valid (over 2 s ahead)") {
    World w;
    Node& B = w.node_b();
    Conn old{w, 46000, 1, 2};
    old.run(1);
    REQUIRE(has_option(old.syn_out.bytes));
    w.clock().advance(std::chrono::seconds(8));
    CHECK_FALSE(w.judge("b", kPre, old.syn_out.bytes).accepted);
    CHECK(refused(B, "expired") == 1);
    // Within the window it verifies.
    Conn fresh{w, 46001, 3, 4};
    fresh.run(1);
    w.clock().advance(std::chrono::milliseconds(6900));
    CHECK(w.judge("b", kPre, fresh.syn_out.bytes).accepted);
    // Made by a clock 3 s ahead of the verifier's.
    Conn ahead{w, 46002, 5, 6};
    ahead.run(1);
    w.clock().wall -= std::chrono::seconds(3);
    CHECK_FALSE(w.judge("b", kPre, ahead.syn_out.bytes).accepted);
    CHECK(refused(B, "not_yet_valid") == 1);
    CHECK(B.engine->drops().refused == 2);
    CHECK(B.engine->drops().lost() == 0);
}

TEST_CASE("through a Service: the pod's SYN to the frontend is deferred; the node adds the token after the translation") {
    handshake::HandshakeEngine::Context tweak;
    tweak.service_frontend = [](const policy::Ip& ip, uint16_t port) {
        return policy::to_string(ip) == "10.96.0.10" && port == 80;
    };
    World w(tweak);
    Node& A = w.node_a();
    Node& B = w.node_b();
    const uint32_t cisn = 5000, sisn = 700000;
    // In a's netns: the SYN to the frontend passes untouched (no token, no verdict on policy).
    auto to_vip = segment("10.0.0.1", "10.96.0.10", 41000, 80, cisn, 0, tcpf::syn);
    Verdict pod_syn = w.judge("a", kOut, to_vip);
    CHECK(pod_syn.accepted);
    CHECK_FALSE(pod_syn.rewritten);
    CHECK(pod_syn.mark == nft::kCtMarkDeferred);
    CHECK(A.engine->counters().deferred_to_node == 1);
    // In node-a's netns, after kube-proxy's DNAT to b (10.0.1.1:kPort): the client token.
    auto at_node = [&](const std::vector<uint8_t>& bytes, uint32_t mark = 0) {
        handshake::QueuedPacket q;
        q.hook = hk::forward;
        q.payload = bytes;
        q.cap_len = static_cast<uint32_t>(bytes.size());
        q.mark = mark;
        auto d = A.engine->judge_at_node(q);
        REQUIRE(d.has_value());
        Verdict v;
        v.accepted = d->verdict == handshake::kAccept;
        v.rewritten = !d->replacement.empty();
        v.bytes = v.rewritten ? d->replacement : bytes;
        v.mark = d->mark.value_or(0);
        return v;
    };
    auto syn = segment("10.0.0.1", "10.0.1.1", 41000, kPort, cisn, 0, tcpf::syn);
    Verdict node_syn = at_node(syn);
    CHECK(node_syn.accepted);
    CHECK(has_option(node_syn.bytes));
    CHECK(node_syn.mark == nft::kCtMarkPending);
    // b verifies it as any token, answers with its own.
    Verdict syn_in = w.judge("b", kPre, node_syn.bytes);
    CHECK(syn_in.accepted);
    CHECK(syn_in.bytes == syn);
    Verdict synack_out = w.judge("b", kOut, segment("10.0.1.1", "10.0.0.1", kPort, 41000, sisn, cisn + 1, tcpf::syn | tcpf::ack));
    REQUIRE(has_option(synack_out.bytes));
    // Back at node-a (still from b's address): verified and stripped, the proof due.
    Verdict node_synack = at_node(synack_out.bytes);
    CHECK(node_synack.accepted);
    CHECK_FALSE(has_option(node_synack.bytes));
    CHECK(node_synack.mark == nft::kCtMarkProofDue);
    // In a's netns the SYN-ACK (now from the frontend again) has no token: it passes.
    Verdict pod_synack = w.judge("a", kIn, segment("10.96.0.10", "10.0.0.1", 80, 41000, sisn, cisn + 1, tcpf::syn | tcpf::ack));
    CHECK(pod_synack.accepted);
    // The final ACK gets the proof at the node, b verifies it.
    Verdict node_ack = at_node(segment("10.0.0.1", "10.0.1.1", 41000, kPort, cisn + 1, sisn + 1, tcpf::ack));
    CHECK(has_option(node_ack.bytes));
    CHECK(node_ack.mark == nft::kCtMarkAuthenticated);
    Verdict ack_in = w.judge("b", kPre, node_ack.bytes);
    CHECK(ack_in.accepted);
    CHECK(B.engine->counters().proofs_verified == 1);
    // Masqueraded by kube-proxy (mark 0x4000: hairpin, NodePort): no token, its bits kept.
    Verdict masq = at_node(segment("10.0.0.1", "10.0.1.1", 41001, kPort, 9000, 0, tcpf::syn), 0x4000);
    CHECK(masq.accepted);
    CHECK_FALSE(has_option(masq.bytes));
    CHECK(masq.mark == (0x4000u | nft::kCtMarkByAddress));
    // A SYN from an address that is no local pod of this node is refused.
    Verdict stranger = at_node(segment("10.0.9.9", "10.0.1.1", 41002, kPort, 9100, 0, tcpf::syn));
    CHECK_FALSE(stranger.accepted);
    // Not TCP: not the handshake's (the Service judge decides).
    std::vector<uint8_t> udp = syn;
    udp[9] = 17;
    handshake::QueuedPacket q;
    q.payload = udp;
    q.cap_len = static_cast<uint32_t>(udp.size());
    CHECK_FALSE(A.engine->judge_at_node(q).has_value());
}

TEST_CASE("first contact both ways at once: no MAC token to a node that has not seen our certificate yet") {
    World w;
    Node& A = w.node_a();
    Node& B = w.node_b();
    // b opens to a: its signed token teaches node-a node-b's certificate...
    Verdict b_syn = w.judge("b", kOut, segment("10.0.1.1", "10.0.0.1", 42000, kPort, 100, 0, tcpf::syn));
    REQUIRE(has_option(b_syn.bytes));
    Verdict b_syn_in = w.judge("a", kPre, b_syn.bytes);
    CHECK(b_syn_in.accepted);
    // ...but before node-b has a's answer, a opens to b: node-b does not hold the pair key
    // yet, so a's token must be signed (a MAC token would be refused: unknown_key_id).
    Conn c{w, 43000, 2000, 800000};
    c.run(2);
    CHECK(c.syn_in.accepted);
    CHECK(refused(B, "unknown_key_id") == 0);
    CHECK(A.engine->counters().tokens_added_signed == 1);
    CHECK(A.engine->counters().tokens_added_mac == 0);
    c.run();
    CHECK(c.ack_in.accepted);
    // Once node-b answered a signed token of node-a's, MAC tokens follow.
    Conn d{w, 43001, 3000, 810000};
    d.run();
    CHECK(d.ack_in.accepted);
    CHECK(A.engine->counters().tokens_added_mac == 1);
}

namespace {

// The handshake section of an engine's status.
rapidjson::Document status_of(Node& n) {
    rapidjson::Document d;
    n.engine->status(d, d.GetAllocator());
    return d;
}

uint64_t replay_entries(Node& n) { return status_of(n)["replay_cache"].GetUint64(); }

// a SYN with a token of node-a's claiming `claim` (as a compromised node-a could make).
std::vector<uint8_t> syn_claiming(Node& from, const identity::PodClaim& claim, const std::string& src, uint16_t sport,
                                  uint32_t isn, identity::TimePoint now) {
    auto bare = segment(src, "10.0.1.1", sport, kPort, isn, 0, tcpf::syn);
    auto p = handshake::parse(bare, handshake::ParseOptions{false, handshake::TcpChecksum::unverified});
    REQUIRE(p.ok());
    identity::ConnBinding b;
    b.client_addr = p->src;
    b.server_addr = p->dst;
    b.client_port = sport;
    b.server_port = kPort;
    b.client_isn = isn;
    auto tok = identity::make_signed_token(*from.identity->credentials(), identity::Role::client, b, claim, now);
    REQUIRE(tok.ok());
    std::vector<uint8_t> out(handshake::tokened_size(*p, tok->size()));
    auto n = handshake::add_token_into(*p, *tok, out);
    REQUIRE(n.ok());
    out.resize(*n);
    return out;
}

}  // namespace

TEST_CASE("replay cache: tokens of connections the policy refuses fill nothing; replays are still refused") {
    // The smallest budget: a replay cache of 74,898 entries, 9,362 per peer node.
    handshake::HandshakeEngine::Context tweak;
    tweak.memory_limit = handshake::kMinHandshakeMemory;
    World w(tweak);
    Node& A = w.node_a();
    Node& B = w.node_b();
    const auto& lim = B.engine->limits();
    REQUIRE(lim.replay_entries == 74898);
    REQUIRE(lim.replay_per_node == 9362);
    Conn first{w, 30000, 1, 2};
    first.run();  // the pair key: c's tokens are MAC tokens, not rate-limited
    REQUIRE(first.ack_in.accepted);
    CHECK(replay_entries(B) == 1);
    // c's egress is open, so node-a makes it a valid token for every SYN;
    // b's ingress refuses c. More SYNs than the whole cache holds, within
    // the tokens' life (the clock stands still).
    const uint32_t flood = static_cast<uint32_t>(lim.replay_entries) + 100;
    uint32_t denied = 0;
    for (uint32_t i = 0; i < flood; ++i) {
        const uint16_t sport = static_cast<uint16_t>(1024 + i % 60000);
        auto out = w.judge("c", kOut, segment("10.0.0.3", "10.0.1.1", sport, kPort, 1000 + i, 0, tcpf::syn));
        REQUIRE(has_option(out.bytes));
        if (!w.judge("b", kPre, out.bytes).accepted) ++denied;
    }
    CHECK(denied == flood);
    CHECK(B.engine->counters().denied == flood);
    CHECK(B.engine->counters().verified_mac == flood);
    CHECK(refused(B, "replay_cache_full") == 0);
    CHECK(replay_entries(B) == 1);  // only the admitted connection's token
    // a still gets in.
    Conn after{w, 30001, 3, 4};
    after.run();
    CHECK(after.syn_in.accepted);
    CHECK(after.ack_in.accepted);
    CHECK(refused(B, "replay_cache_full") == 0);
    // Replays are refused as before: a's admitted SYN again, and its SYN-ACK
    // again at node-a (after they were recorded).
    CHECK_FALSE(w.judge("b", kPre, after.syn_out.bytes).accepted);
    CHECK(refused(B, "replay") == 1);
    CHECK_FALSE(w.judge("a", kPre, after.synack_out.bytes).accepted);
    CHECK(refused(A, "replay") == 1);
    // A refused token sent again is refused again (denied: it was never admitted).
    auto c_syn = w.judge("c", kOut, segment("10.0.0.3", "10.0.1.1", 29999, kPort, 5, 0, tcpf::syn));
    CHECK_FALSE(w.judge("b", kPre, c_syn.bytes).accepted);
    CHECK_FALSE(w.judge("b", kPre, c_syn.bytes).accepted);
    CHECK(B.engine->counters().denied == flood + 2);
    CHECK(B.engine->drops().lost() == 0);
}

TEST_CASE("replay cache: one peer node holds at most its quota") {
    handshake::HandshakeEngine::Context tweak;
    tweak.memory_limit = handshake::kMinHandshakeMemory;
    World w(tweak);
    Node& B = w.node_b();
    const size_t quota = B.engine->limits().replay_per_node;
    Conn first{w, 1999, 1, 2};
    first.run();  // the pair key: MAC tokens from now on (not rate-limited)
    REQUIRE(first.ack_in.accepted);
    // a's SYNs, admitted, each recorded for node-a, until node-a holds its quota.
    for (uint32_t i = 0; i < quota + 9; ++i) {
        auto out = w.judge("a", kOut, segment("10.0.0.1", "10.0.1.1", static_cast<uint16_t>(2000 + i), kPort, 7 + i, 0, tcpf::syn));
        w.judge("b", has_option(out.bytes) ? kPre : kIn, out.bytes);
    }
    CHECK(replay_entries(B) == quota);
    CHECK(refused(B, "replay_cache_full") == 10);
    // Once the first tokens could no longer be accepted (5 s + 2 s skew) their entries go.
    w.clock().advance(std::chrono::seconds(8));
    Conn later{w, 1500, 9, 10};
    later.run(2);
    CHECK(later.syn_in.accepted);
    CHECK(replay_entries(B) == 1);
}

TEST_CASE("first-contact limit per peer node: many addresses of one node share its budget") {
    handshake::HandshakeEngine::Context tweak;
    tweak.first_contact_burst = 2;  // per address
    tweak.first_contact_rate = 0.001;
    tweak.first_contact_node_burst = 3;  // per node, whatever its pods' addresses
    tweak.first_contact_node_rate = 0.001;
    World w(tweak);
    Node& B = w.node_b();
    // Until node-b answers, node-a signs every SYN (first contact).
    Conn a1{w, 47000, 1, 2}, a2{w, 47001, 3, 4};
    a1.run(2);
    a2.run(2);
    CHECK(a1.syn_in.accepted);
    CHECK(a2.syn_in.accepted);
    // c's address has its own 2, but node-a has 1 left: verified (and denied
    // by b's policy), then refused before verification.
    Conn c1{w, 47002, 5, 6}, c2{w, 47003, 7, 8};
    c1.client = c2.client = "c";
    c1.client_ip = c2.client_ip = "10.0.0.3";
    c1.run(2);
    CHECK(B.engine->counters().denied == 1);
    c2.run(2);
    CHECK_FALSE(c2.syn_in.accepted);
    CHECK(refused(B, "rate_limited") == 1);
    CHECK(B.engine->counters().verified_signed == 3);
    // A forger naming node-a's certificate cannot use up node-a's budget:
    // only tokens that verify are charged. (Here: one with a bad signature.)
    w.clock().advance(std::chrono::seconds(3000));  // every bucket full again (0.001/s)
    auto forge = [&](const std::string& pod, const std::string& ip, uint16_t sport) {
        auto f = w.judge(pod, kOut, segment(ip, "10.0.1.1", sport, kPort, 9, 0, tcpf::syn)).bytes;
        REQUIRE(has_option(f));
        f[f.size() - 1] ^= 1;  // the signature's last byte
        refix(f);
        return f;
    };
    auto fa = forge("a", "10.0.0.1", 47004), fc = forge("c", "10.0.0.3", 47005);
    for (int i = 0; i < 2; ++i) {  // each address's 2: 4 forgeries, more than node-a's 3
        CHECK_FALSE(w.judge("b", kPre, fa).accepted);
        CHECK_FALSE(w.judge("b", kPre, fc).accepted);
    }
    CHECK(refused(B, "bad_signature") == 4);
    CHECK(refused(B, "rate_limited") == 1);
    w.clock().advance(std::chrono::seconds(1000));  // one token per address again
    Conn a3{w, 47006, 11, 12};
    a3.run(2);  // verified: node-a's bucket is untouched by the forgeries
    CHECK(a3.syn_in.accepted);
    CHECK(B.engine->counters().verified_signed == 4);
}

TEST_CASE("a client opening 120,000 short connections in 30 s: completed handshakes make room, none refused") {
    // b admits a on two ports: 120,000 distinct connections (ports 1024..61023 to each).
    World w({}, [](cache::Snapshot& s) {
        cache::NetworkPolicy p = s.policies.at({"x", "to-b"});
        p.ingress[0].ports = std::vector<cache::PolicyPort>{{cache::Protocol::TCP, int32_t{kPort}, int32_t{kPort + 1}}};
        s.put(p);
    });
    Node& A = w.node_a();
    Node& B = w.node_b();
    constexpr uint32_t kConns = 120000;
    uint32_t ok = 0;
    for (uint32_t i = 0; i < kConns; ++i) {
        const uint16_t sport = static_cast<uint16_t>(1024 + i % 60000);
        const uint16_t dport = static_cast<uint16_t>(kPort + i / 60000);
        const uint32_t cisn = 1000 + i, sisn = 5000000 + i;
        auto syn = w.judge("a", kOut, segment("10.0.0.1", "10.0.1.1", sport, dport, cisn, 0, tcpf::syn));
        auto syn_in = w.judge("b", kPre, syn.bytes);
        auto synack = w.judge("b", kOut, segment("10.0.1.1", "10.0.0.1", dport, sport, sisn, cisn + 1, tcpf::syn | tcpf::ack));
        auto synack_in = w.judge("a", kPre, synack.bytes);
        auto ack = w.judge("a", kOut, segment("10.0.0.1", "10.0.1.1", sport, dport, cisn + 1, sisn + 1, tcpf::ack));
        auto ack_in = w.judge("b", kPre, ack.bytes);
        if (syn.accepted && syn_in.accepted && synack_in.accepted && ack_in.accepted && has_option(ack.bytes)) ++ok;
        if (i % 4 == 3) w.clock().advance(std::chrono::milliseconds(1));  // 4,000 a second: 30 s in all
        if (i % 20000 == 0) {  // the sweep timer's work (every 5 s)
            A.engine->expire();
            B.engine->expire();
        }
    }
    CHECK(ok == kConns);
    CHECK(refused(A, "pending_full") == 0);
    CHECK(A.engine->counters().proofs_sent == kConns);
    CHECK(A.engine->counters().pending_evicted_done > 0);
    CHECK(A.engine->counters().pending_evicted_live == 0);
    CHECK(status_of(A)["pending"].GetUint64() <= 100000);
    CHECK(A.engine->drops().lost() == 0);
    CHECK(B.engine->drops().lost() == 0);
}

TEST_CASE("client handshakes in flight: room is made from completed ones first, then the oldest live one") {
    handshake::HandshakeEngine::Context tweak;
    tweak.memory_limit = handshake::kMinHandshakeMemory;
    World w(tweak);
    w.clock().advance(kPastRecovery);
    Node& A = w.node_a();
    const size_t room = A.engine->limits().pending_entries;
    REQUIRE(room < 100000);
    Conn done{w, 48000, 1, 2};
    done.run(5);  // completed on a's side: the proof sent
    REQUIRE(has_option(done.ack_out.bytes));
    w.clock().advance(std::chrono::milliseconds(1));
    Conn live{w, 48001, 3, 4};
    live.run(3);  // b answered; its SYN-ACK not at node-a yet: the oldest live handshake
    w.clock().advance(std::chrono::milliseconds(1));
    // Fill the rest of the node's budget with SYNs nobody answers.
    REQUIRE(status_of(A)["pending"].GetUint64() == 2);
    for (uint32_t i = 0; i < room - 2; ++i)
        w.judge("a", kOut, segment("10.0.0.1", "10.0.1.1", static_cast<uint16_t>(10000 + i), kPort, 100 + i, 0, tcpf::syn));
    const auto before = A.engine->counters();
    CHECK(before.pending_evicted_done == 0);
    // Two more: the completed entry goes first, then the oldest live one (its SYN-ACK is then unexpected).
    CHECK(w.judge("a", kOut, segment("10.0.0.1", "10.0.1.1", 60000, kPort, 1, 0, tcpf::syn)).accepted);
    CHECK(A.engine->counters().pending_evicted_done == 1);
    CHECK(A.engine->counters().pending_evicted_live == before.pending_evicted_live);
    CHECK(w.judge("a", kOut, segment("10.0.0.1", "10.0.1.1", 60001, kPort, 1, 0, tcpf::syn)).accepted);
    CHECK(A.engine->counters().pending_evicted_live == before.pending_evicted_live + 1);
    CHECK_FALSE(w.judge("a", kPre, live.synack_out.bytes).accepted);
    CHECK(refused(A, "unexpected_token") == 1);
    CHECK(refused(A, "pending_full") == 0);
}

TEST_CASE("the memory budget: parts from --handshake-memory, in status") {
    handshake::HandshakeEngine::Context tweak;
    tweak.memory_limit = size_t{64} << 20;
    World w(tweak);
    Node& B = w.node_b();
    const auto l = handshake::HandshakeEngine::limits_for(tweak.memory_limit);
    CHECK(l.memory == tweak.memory_limit);
    CHECK(l.replay_entries * identity::ReplayCache::kEntryBytes <= l.memory / 2);
    CHECK(l.pending_entries < 100000);
    CHECK(l.pending_per_table == l.pending_entries);
    CHECK(handshake::HandshakeEngine::limits_for(1).memory == handshake::kMinHandshakeMemory);
    // --handshake-memory MIB
    CHECK(handshake::parse_handshake_memory("64") == size_t{64} << 20);
    CHECK(handshake::parse_handshake_memory("16") == handshake::kMinHandshakeMemory);
    CHECK(handshake::parse_handshake_memory("65536") == handshake::kMaxHandshakeMemory);
    for (const char* bad : {"15", "65537", "", "64M", "-1", " 64", "1e3", "99999999999999999999999"})
        CHECK_MESSAGE(!handshake::parse_handshake_memory(bad), bad);
    const auto d = handshake::HandshakeEngine::limits_for(handshake::kDefaultHandshakeMemory);
    CHECK(d.replay_entries == size_t{1} << 20);
    CHECK(d.replay_per_node == size_t{1} << 17);
    CHECK(d.pending_per_table == 100000);
    CHECK(d.address_buckets == 100000);
    CHECK(d.pair_keys == 4096);
    Conn c{w, 49000, 1, 2};
    c.run();
    auto st = status_of(B);
    REQUIRE(st.HasMember("memory"));
    const auto& m = st["memory"];
    CHECK(m["limit_bytes"].GetUint64() == tweak.memory_limit);
    CHECK(m["replay_cache_bytes"].GetUint64() == identity::ReplayCache::kEntryBytes);
    CHECK(m["pair_keys_bytes"].GetUint64() > 0);
    CHECK(m["used_bytes"].GetUint64() == B.engine->memory().used());
    CHECK(m["limits"]["replay_cache"].GetUint64() == l.replay_entries);
}

TEST_CASE("a finished pod's address reused by a live pod: the live pod is the answer, never the dead one") {
    // zz-job ran on node-a with 10.0.0.1 and Succeeded; a has the address now.
    auto finished = [](cache::Snapshot& s) {
        cache::Pod job = World::pod("zz-job", "node-a", "10.0.0.1");
        job.uid = "6b1f0c2e-0000-4000-8000-0000000000ff";
        job.labels = {{"app", "job"}};
        job.phase = "Succeeded";
        s.put(job);
    };
    {
        World w({}, finished);
        Node& A = w.node_a();
        Node& B = w.node_b();
        Conn c{w, 50000, 1, 2};
        c.run();
        CHECK(c.syn_in.accepted);  // a's token: a runs on node-a with that address
        CHECK(c.ack_in.accepted);
        CHECK(refused(B, "pod_not_on_node") == 0);
        // A token claiming the finished pod (a compromised node-a) is refused.
        identity::PodClaim job{"x", "zz-job", *identity::parse_pod_uid("6b1f0c2e-0000-4000-8000-0000000000ff")};
        auto forged = syn_claiming(A, job, "10.0.0.1", 50001, 3, w.clock().wall);
        CHECK_FALSE(w.judge("b", kPre, forged).accepted);
        CHECK(refused(B, "pod_not_on_node") == 1);
    }
    {
        // Permissive: a tokenless SYN from the address is judged as a (admitted), not as zz-job.
        handshake::HandshakeEngine::Context tweak;
        tweak.mode = handshake::HandshakeMode::permissive;
        World w(tweak, finished);
        Node& B = w.node_b();
        auto bare = w.judge("b", kIn, segment("10.0.0.1", "10.0.1.1", 50002, kPort, 1, 0, tcpf::syn));
        CHECK(bare.accepted);
        CHECK(bare.mark == nft::kCtMarkByAddress);
        CHECK(B.engine->counters().denied == 0);
    }
}

TEST_CASE("per-namespace modes: the label signet.dev/handshake over the node's default") {
    auto label = [](const std::string& value) {
        return [value](cache::Snapshot& s) {
            s.put(cache::Namespace{"x", {{"kubernetes.io/metadata.name", "x"}, {handshake::kHandshakeModeLabel, value}}});
        };
    };
    handshake::HandshakeEngine::Context permissive;
    permissive.mode = handshake::HandshakeMode::permissive;
    const auto tokenless = segment("10.0.0.1", "10.0.1.1", 52000, kPort, 1, 0, tcpf::syn);
    {
        // No label: the node's default (permissive) judges a tokenless SYN as the pod at the address.
        World w(permissive);
        CHECK(w.node_b().engine->mode_of_namespace("x").mode == handshake::HandshakeMode::permissive);
        CHECK_FALSE(w.node_b().engine->mode_of_namespace("x").from_label);
        CHECK(w.judge("b", kIn, tokenless).accepted);
    }
    {
        // enforce by label on a permissive node: the same SYN proves nothing.
        World w(permissive, label("enforce"));
        Node& B = w.node_b();
        auto m = B.engine->mode_of_namespace("x");
        CHECK(m.mode == handshake::HandshakeMode::enforce);
        CHECK(m.from_label);
        CHECK(B.engine->table_mode("c-b/eth0") == handshake::HandshakeMode::enforce);
        CHECK_FALSE(w.judge("b", kIn, tokenless).accepted);
        CHECK(refused(B, "no_token") == 1);
        // And the handshake still runs between the pods.
        Conn c{w, 52001, 5, 6};
        c.run();
        CHECK(c.syn_in.accepted);
        CHECK(c.ack_in.accepted);
    }
    {
        // off by label: no queue is bound for the namespace's pods, and status counts them.
        World w(permissive, label("off"));
        Node& B = w.node_b();
        CHECK(B.engine->table_mode("c-b/eth0") == handshake::HandshakeMode::off);
        CHECK(B.queues.handlers.count("/fake/netns/b") == 0);
        rapidjson::Document d;
        rapidjson::Value st;
        B.engine->status(st, d.GetAllocator());
        CHECK(st["pods_by_mode"]["off"].GetUint64() == 1);
        CHECK(st["namespaces"]["x"]["mode"] == "off");
    }
    {
        // A value that is not a mode: the default applies, and the problem is said.
        World w(permissive, label("strict"));
        auto m = w.node_b().engine->mode_of_namespace("x");
        CHECK(m.mode == handshake::HandshakeMode::permissive);
        CHECK_FALSE(m.from_label);
        CHECK(m.problem.find("not off, permissive or enforce") != std::string::npos);
    }
}

TEST_CASE("across a restart: handshakes caught between SYN and proof complete, nothing else is let in") {
    {
        World w;
        Node& B = w.node_b();
        // The server's signetd restarts after its SYN-ACK went out: the new one
        // has no nonces to check the proof against. It admits the connection on
        // the previous verdict (the "awaiting proof" mark only it could set) and
        // today's policy, and strips the proof.
        Conn c{w, 53000, 10, 20};
        c.run(5);
        REQUIRE(has_option(c.ack_out.bytes));
        w.restart_engine(B);
        // Before conntrack (prerouting): stripped, passed unmarked, for
        // conntrack and the pod's table to decide...
        auto pre = w.judge("b", kPre, c.ack_out.bytes);
        CHECK(pre.accepted);
        CHECK(pre.bytes == c.ack());  // the pod never sees the proof
        CHECK(pre.mark == 0);
        CHECK(B.engine->counters().recovered_server == 0);
        // ...which queue it again at input on the "awaiting proof" mark: recovered.
        auto in = w.judge("b", kIn, pre.bytes);
        CHECK(in.accepted);
        CHECK(in.mark == nft::kCtMarkAuthenticated);
        CHECK(B.engine->counters().recovered_server == 1);
        // From c's address (not allowed by the policy): denied, not recovered.
        auto from_c = w.judge("b", kIn, segment("10.0.0.3", "10.0.1.1", 53001, kPort, 5, 6, tcpf::ack));
        CHECK_FALSE(from_c.accepted);
        CHECK(B.engine->counters().recovered_server == 1);
        // Past the recovery window: a missing handshake is no_proof again.
        w.clock().advance(kPastRecovery);
        Conn late{w, 53002, 30, 40};
        late.run(5);
        w.restart_engine(B);
        w.clock().advance(kPastRecovery);
        CHECK_FALSE(w.judge("b", kPre, late.ack_out.bytes).accepted);
        CHECK(refused(B, "no_proof") == 1);
    }
    {
        // A pod registered after the restart has no handshakes of the
        // previous process: a proof without a handshake is no_proof at once.
        World w;
        Conn c{w, 53200, 10, 20};
        c.run(5);
        auto stray = c.ack_out.bytes;
        stray[20] = static_cast<uint8_t>(53201 >> 8);
        stray[21] = static_cast<uint8_t>(53201 & 0xff);
        refix(stray);
        CHECK_FALSE(w.judge("b", kPre, stray).accepted);
        CHECK(refused(w.node_b(), "no_proof") == 1);
    }
    {
        World w;
        Node& A = w.node_a();
        Node& B = w.node_b();
        // The client's signetd restarts after its SYN went out: the server's
        // retransmitted SYN-ACK (a fresh token) is verified afresh, and the
        // proof goes with a zero client nonce, which the server accepts.
        Conn c{w, 53100, 50, 60};
        c.run(3);
        REQUIRE(has_option(c.synack_out.bytes));
        w.restart_engine(A);
        auto again = w.judge("b", kOut, c.synack());  // b's kernel retransmits
        REQUIRE(has_option(again.bytes));
        auto in = w.judge("a", kPre, again.bytes);
        CHECK(in.accepted);
        CHECK(in.bytes == c.synack());
        CHECK(A.engine->counters().recovered_client == 1);
        auto proof = w.judge("a", kOut, c.ack());
        REQUIRE(has_option(proof.bytes));
        auto done = w.judge("b", kPre, proof.bytes);
        CHECK(done.accepted);
        CHECK(done.bytes == c.ack());
        CHECK(B.engine->counters().proofs_verified >= 1);
        // A wrong proof with the zero nonce is still refused.
        Conn d{w, 53101, 70, 80};
        d.run(3);
        w.restart_engine(A);
        auto d_in = w.judge("a", kPre, w.judge("b", kOut, d.synack()).bytes);
        REQUIRE(d_in.accepted);
        auto bad = w.judge("a", kOut, d.ack()).bytes;
        bad.back() ^= 0x01;
        refix(bad);
        CHECK_FALSE(w.judge("b", kPre, bad).accepted);
        CHECK(refused(B, "bad_proof") == 1);
        CHECK(A.engine->drops().lost() == 0);
        CHECK(B.engine->drops().lost() == 0);
    }
}

// Audit mode (docs/policy.md, "Audit mode"): what the policy refuses is
// admitted as an allowed connection would be, and reported audit-denied once;
// the identity's refusals stay refusals.
TEST_CASE("audit mode: a policy refusal is admitted and reported audit-denied once; security refusals stay") {
    std::vector<nft::LoggedPacket> reported;
    handshake::HandshakeEngine::Context audit;
    audit.policy_mode = policy::PolicyMode::audit;  // the node's default
    audit.on_denied = [&](const std::string&, const nft::LoggedPacket& p) { reported.push_back(p); };
    World w(audit);
    w.clock().advance(kPastRecovery);
    Node& A = w.node_a();
    Node& B = w.node_b();
    // c is not admitted by to-b: its proven identity is judged, denied, and
    // admitted in audit mode; the handshake completes (authenticated).
    Conn fromc{w, 43000, 5, 6};
    fromc.client = "c";
    fromc.client_ip = "10.0.0.3";
    fromc.run();
    CHECK(fromc.syn_in.accepted);
    CHECK(fromc.syn_in.mark == nft::kCtMarkAwaitProof);
    CHECK(fromc.ack_in.accepted);
    CHECK(fromc.ack_in.mark == nft::kCtMarkAuthenticated);
    CHECK(B.engine->counters().denied == 0);
    CHECK(B.engine->counters().audit_denied == 1);
    REQUIRE(reported.size() == 1);
    CHECK(reported[0].prefix == "signet-audit ingress");
    CHECK(reported[0].tuple.dport == kPort);
    // a -> b is allowed: nothing reported.
    Conn ok{w, 43001, 50, 60};
    ok.run();
    CHECK(ok.ack_in.accepted);
    CHECK(reported.size() == 1);
    // Security refusals in audit mode too: a tokenless SYN from a pod's
    // address (enforce handshake), a spoofed source, a replayed token.
    CHECK_FALSE(w.judge("b", kIn, segment("10.0.0.1", "10.0.1.1", 43002, kPort, 1, 0, tcpf::syn)).accepted);
    CHECK(refused(B, "no_token") == 1);
    CHECK_FALSE(w.judge("c", kOut, segment("10.0.0.1", "10.0.1.1", 43003, kPort, 1, 0, tcpf::syn)).accepted);
    CHECK(refused(A, "spoofed_source") == 1);
    Conn r{w, 43004, 77, 88};
    r.run(2);
    REQUIRE(r.syn_in.accepted);
    CHECK_FALSE(w.judge("b", kPre, r.syn_out.bytes).accepted);
    CHECK(refused(B, "replay") == 1);
    CHECK(B.engine->counters().audit_denied == 1);

    // The namespace's label enforce over the node's audit default: refused again.
    World e(audit, [](cache::Snapshot& s) {
        s.put(cache::Namespace{"x", {{"kubernetes.io/metadata.name", "x"}, {policy::kPolicyModeLabel, "enforce"}}});
    });
    e.clock().advance(kPastRecovery);
    Conn denied{e, 43005, 5, 6};
    denied.client = "c";
    denied.client_ip = "10.0.0.3";
    denied.run(2);
    CHECK_FALSE(denied.syn_in.accepted);
    CHECK(e.node_b().engine->counters().denied == 1);
    CHECK(e.node_b().engine->counters().audit_denied == 0);
}
