// nfqueue_integration (suite integration, root): the handshake queue layer on
// a real kernel. Two netns joined by a veth pair (IPv4 + IPv6), the handshake
// queue rules (nft::add_syn_queue_rule, before `ct state established,related
// accept`) on output and input in both, a QueueReader per netns on one
// io_context thread. The client side adds a token to its SYN on output, the
// server strips and checks it on input; the same for the SYN-ACK the other
// way. Real TCP connections carry 1 MB each way; the application's view of
// its handshake (MSS, window scale, timestamps, SACK) must equal a run
// without the queue. Then: rule placement, fail closed (reader stopped),
// and a SYN without / with a wrong token dropped.
// Exit 77 only if a capability is absent (root, netns, an NFQUEUE backend).
// SIGNET_NFQ_CAPTURE=DIR writes raw queue datagrams there (fuzz seeds).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#include <signal.h>

#include "nfq_fixture.h"

using namespace nfqtest;
using namespace std::chrono_literals;

namespace {

constexpr uint16_t kQueue = hs::kHandshakeQueue;
constexpr uint16_t kPort = 7412;
constexpr size_t kBytes = 1 << 20;

struct World {
    Topology topo;
    std::unique_ptr<IoThread> io;
    TokenBook book;
    RoleCounters client_c, server_c;
    std::vector<std::string> log;
    std::unique_ptr<hs::QueueReader> client_reader, server_reader;
    int l4 = -1, l6 = -1;
    std::map<int, std::pair<TcpView, TcpView>> baseline;  // family -> (client, server)
    std::string capture_dir;
    int captured = 0;
};
World* W = nullptr;

hs::QueueReader::Options reader_options(const char* who) {
    hs::QueueReader::Options o;
    if (!W->capture_dir.empty()) {
        o.tap = [who](std::span<const uint8_t> dg) {
            if (W->captured >= 12) return;
            std::string path = W->capture_dir + "/" + who + "-" + std::to_string(W->captured++) + ".bin";
            std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(dg.data()),
                                                        static_cast<std::streamsize>(dg.size()));
        };
    }
    return o;
}

Status start_reader(std::unique_ptr<hs::QueueReader>& r, bool client) {
    return W->io->call([&]() -> Status {
        if (!r) {
            nft::Netns& ns = client ? *W->topo.client : *W->topo.server;
            r = std::make_unique<hs::QueueReader>(W->io->io, ns, kQueue,
                                                  make_handler(W->book, client, client ? W->client_c : W->server_c,
                                                               &W->log),
                                                  reader_options(client ? "client" : "server"));
        }
        return r->start();
    });
}
hs::QueueStats stats_of(std::unique_ptr<hs::QueueReader>& r) {
    return W->io->call([&] { return r->stats(); });
}

struct Conn {
    int c = -1, s = -1;
    int err = 0;
    ~Conn() {
        if (c >= 0) ::close(c);
        if (s >= 0) ::close(s);
    }
    bool ok() const { return c >= 0 && s >= 0; }
};

std::unique_ptr<Conn> connect_pair(int family, std::chrono::milliseconds timeout = 3000ms) {
    auto conn = std::make_unique<Conn>();
    const bool v6 = family == AF_INET6;
    auto acc = std::async(std::launch::async, [&] { return accept_with_timeout(v6 ? W->l6 : W->l4, timeout + 300ms); });
    conn->c = connect_in(*W->topo.client, v6 ? kV6Server : kV4Server, kPort, timeout, &conn->err);
    conn->s = acc.get();
    return conn;
}

// 1 MB client -> server, then 1 MB server -> client, both checked.
bool exchange(const Conn& conn, uint32_t seed) {
    auto up = pattern(kBytes, seed), down = pattern(kBytes, seed + 1);
    auto server = std::async(std::launch::async, [&] {
        std::vector<uint8_t> got;
        if (!read_exact(conn.s, got, kBytes) || got != up) return false;
        return write_all(conn.s, down);
    });
    std::vector<uint8_t> got;
    bool ok = write_all(conn.c, up) && read_exact(conn.c, got, kBytes) && got == down;
    return server.get() && ok;
}

void print_stats(const char* who, const hs::QueueStats& s, const RoleCounters& c) {
    MESSAGE(std::string(who) << ": packets=" << s.packets << " accepted=" << s.accepted << " dropped=" << s.dropped
                << " rewritten=" << s.rewritten << " csum_completed=" << s.checksums_completed
                << " verdict_errors=" << s.verdict_errors << " overruns=" << s.overruns << " max_batch=" << s.max_batch
                << " | syn=" << c.syn << " syn_ack=" << c.syn_ack << " other=" << c.other << " tokened=" << c.tokened
                << " stripped_ok=" << c.stripped_ok << " missing=" << c.missing << " wrong=" << c.wrong
                << " csum_partial=" << c.csum_partial << " gso=" << c.gso);
}

}  // namespace

TEST_CASE("baseline: TCP without the queue rules") {
    for (int fam : {AF_INET, AF_INET6}) {
        auto conn = connect_pair(fam);
        REQUIRE_MESSAGE(conn->ok(), "connect without queue rules: " << std::strerror(conn->err));
        CHECK(exchange(*conn, 1));
        W->baseline[fam] = {tcp_view(conn->c), tcp_view(conn->s)};
        MESSAGE((fam == AF_INET ? "IPv4" : "IPv6") << " baseline client " << W->baseline[fam].first.str()
                                                   << " / server " << W->baseline[fam].second.str());
    }
}

TEST_CASE("every SYN / SYN-ACK tokened on output, restored on input") {
    REQUIRE(W->topo.add_queue_rules(kQueue) == "");
    REQUIRE(start_reader(W->client_reader, true).ok());
    REQUIRE(start_reader(W->server_reader, false).ok());
    auto kq = kernel_queue(*W->topo.server, kQueue);
    CHECK(kq.bound);
    CHECK(kq.copy_mode == 2);  // NFQNL_COPY_PACKET
    CHECK(kq.copy_range == 0xffff - 4);  // the kernel caps the range at NFQNL_MAX_COPY_RANGE

    for (int fam : {AF_INET, AF_INET6}) {
        auto conn = connect_pair(fam);
        REQUIRE_MESSAGE(conn->ok(), "connect through the queue: " << std::strerror(conn->err));
        CHECK(exchange(*conn, 7));
        // The application's handshake is exactly what it was without the queue.
        CHECK_MESSAGE(tcp_view(conn->c) == W->baseline[fam].first, "client " << tcp_view(conn->c).str());
        CHECK_MESSAGE(tcp_view(conn->s) == W->baseline[fam].second, "server " << tcp_view(conn->s).str());
    }
    // tx checksum offload off on both veths: makes no difference at the
    // output hook (TCP always builds CHECKSUM_PARTIAL segments; the device
    // completes them, or its xmit path if it cannot), and a rewritten segment
    // arrives complete (nfqnl_mangle makes the skb CHECKSUM_NONE).
    REQUIRE(set_tx_csum(*W->topo.client, "va", false));
    REQUIRE(set_tx_csum(*W->topo.server, "vb", false));
    for (int fam : {AF_INET, AF_INET6}) {
        auto conn = connect_pair(fam);
        REQUIRE_MESSAGE(conn->ok(), "connect, tx offload off: " << std::strerror(conn->err));
        CHECK(exchange(*conn, 9));
    }
    CHECK(set_tx_csum(*W->topo.client, "va", true));
    CHECK(set_tx_csum(*W->topo.server, "vb", true));

    auto cs = stats_of(W->client_reader), ss = stats_of(W->server_reader);
    print_stats("client", cs, W->client_c);
    print_stats("server", ss, W->server_c);
    for (const auto& l : W->log) MESSAGE("handler: " << l);
    // 4 connections: 4 SYN out + 4 SYN-ACK in at the client, the reverse at the server.
    CHECK(W->client_c.syn == 4);
    CHECK(W->client_c.syn_ack == 4);
    CHECK(W->server_c.syn == 4);
    CHECK(W->server_c.syn_ack == 4);
    CHECK(W->client_c.tokened == 4);      // every SYN rewritten on the way out
    CHECK(W->server_c.stripped_ok == 4);  // ... and restored on the way in, token intact
    CHECK(W->server_c.tokened == 4);      // every SYN-ACK
    CHECK(W->client_c.stripped_ok == 4);
    CHECK(W->client_c.other + W->server_c.other == 0);  // nothing else reached the queue
    CHECK(W->client_c.errors + W->server_c.errors + W->client_c.missing + W->server_c.missing == 0);
    // Every segment at the output hook is CHECKSUM_PARTIAL (the reader completed
    // it after the rewrite); every tokened one arrived with a complete checksum.
    CHECK(W->client_c.csum_partial_output == 4);
    CHECK(W->server_c.csum_partial_output == 4);
    CHECK(W->client_c.csum_partial - W->client_c.csum_partial_output == 0);
    CHECK(W->server_c.csum_partial - W->server_c.csum_partial_output == 0);
    CHECK(cs.packets == 8);
    CHECK(ss.packets == 8);
    CHECK(cs.rewritten == 8);
    CHECK(ss.rewritten == 8);
    CHECK(cs.checksums_completed + ss.checksums_completed == W->client_c.csum_partial + W->server_c.csum_partial);
    CHECK(cs.dropped + ss.dropped + cs.verdict_errors + ss.verdict_errors + cs.overruns + ss.overruns == 0);
    // The kernel queued exactly what the readers judged, and dropped nothing.
    auto kc = kernel_queue(*W->topo.client, kQueue), ks = kernel_queue(*W->topo.server, kQueue);
    CHECK(kc.id_sequence == cs.packets);
    CHECK(ks.id_sequence == ss.packets);
    CHECK(kc.queue_dropped + kc.user_dropped + ks.queue_dropped + ks.user_dropped == 0);
    CHECK(kc.total + ks.total == 0);  // nothing left waiting
}

TEST_CASE("placement: a SYN-ACK is ct state established, so the queue rule must come first") {
    // Put `ct state established,related accept` BEFORE the queue rule on the
    // SYN-ACK's two hooks: server output and client input.
    uint64_t h1 = W->topo.insert_rule(W->topo.server_name, "output", "ct state established,related accept");
    uint64_t h2 = W->topo.insert_rule(W->topo.client_name, "input", "ct state established,related accept");
    REQUIRE(h1 != 0);
    REQUIRE(h2 != 0);
    const RoleCounters c0 = W->client_c, s0 = W->server_c;
    {
        auto conn = connect_pair(AF_INET);
        CHECK(conn->ok());
    }
    CHECK(W->client_c.syn == c0.syn + 1);          // the SYN is ct state new: still queued
    CHECK(W->server_c.syn == s0.syn + 1);
    CHECK(W->server_c.syn_ack == s0.syn_ack);      // the SYN-ACK bypassed both queue rules
    CHECK(W->client_c.syn_ack == c0.syn_ack);
    MESSAGE("with ct accept first: SYN-ACKs queued at server output " << W->server_c.syn_ack - s0.syn_ack
                                                                      << ", client input "
                                                                      << W->client_c.syn_ack - c0.syn_ack);
    W->topo.delete_rule(W->topo.server_name, "output", h1);
    W->topo.delete_rule(W->topo.client_name, "input", h2);
    {
        auto conn = connect_pair(AF_INET);
        CHECK(conn->ok());
    }
    CHECK(W->server_c.syn_ack == s0.syn_ack + 1);
    CHECK(W->client_c.syn_ack == c0.syn_ack + 1);
}

TEST_CASE("fail closed: no reader, no new connection; established ones keep working") {
    auto established = connect_pair(AF_INET);
    REQUIRE(established->ok());
    auto established6 = connect_pair(AF_INET6);
    REQUIRE(established6->ok());

    W->io->call([] {
        W->server_reader->stop();
        return 0;
    });
    CHECK_FALSE(kernel_queue(*W->topo.server, kQueue).bound);
    const uint64_t client_syn = W->client_c.syn;
    auto refused = connect_pair(AF_INET, 1200ms);
    CHECK_FALSE(refused->ok());
    CHECK(refused->err == ETIMEDOUT);  // the SYN was dropped: no RST, no answer
    CHECK(W->client_c.syn > client_syn);  // it was sent (tokened) by the client side
    // Established connections never reach the queue.
    CHECK(exchange(*established, 21));
    CHECK(exchange(*established6, 23));

    REQUIRE(start_reader(W->server_reader, false).ok());
    CHECK(kernel_queue(*W->topo.server, kQueue).bound);
    auto again = connect_pair(AF_INET);
    REQUIRE(again->ok());
    CHECK(exchange(*again, 25));
}

TEST_CASE("a SYN without a token, or with a wrong one, is dropped at the server") {
    const RoleCounters s0 = W->server_c;
    const auto st0 = stats_of(W->server_reader);
    W->io->call([] {
        W->book.client_mode = Mode::no_token;
        return 0;
    });
    auto c1 = connect_pair(AF_INET, 1200ms);
    CHECK_FALSE(c1->ok());
    CHECK(W->server_c.missing > s0.missing);
    W->io->call([] {
        W->book.client_mode = Mode::bad_token;
        return 0;
    });
    auto c2 = connect_pair(AF_INET6, 1200ms);
    CHECK_FALSE(c2->ok());
    CHECK(W->server_c.wrong > s0.wrong);
    W->io->call([] {
        W->book.client_mode = Mode::token;
        return 0;
    });
    const auto st1 = stats_of(W->server_reader);
    CHECK(st1.dropped >= st0.dropped + 2);
    CHECK(W->server_c.syn_ack == s0.syn_ack);  // the server never answered
    auto ok = connect_pair(AF_INET6);
    CHECK(ok->ok());
}

namespace {
void on_signal(int) {
    if (W) W->topo.destroy();
    ::_exit(1);
}
int skip(const std::string& why) {
    std::fprintf(stderr, "\n*** SKIP nfqueue_integration: %s ***\n\n", why.c_str());
    return 77;
}
}  // namespace

int main(int argc, char** argv) {
    if (::geteuid() != 0) return skip("not root");
    auto probe = nft::probe_kernel();
    if (!probe) return skip("kernel probe failed (no netns / nftables?): " + probe.error().message);
    if (probe->queue == nft::QueueBackend::none)
        return skip("no NFQUEUE backend: native queue: " + probe->native_queue_error +
                    "; xt NFQUEUE: " + probe->xt_nfqueue_error);
    World world;
    W = &world;
    ::signal(SIGTERM, on_signal);
    ::signal(SIGINT, on_signal);
    if (const char* d = std::getenv("SIGNET_NFQ_CAPTURE")) world.capture_dir = d;
    world.topo.backend = probe->queue;
    if (std::string err = world.topo.create(); !err.empty()) {
        if (err.find("netns") != std::string::npos) return skip(err);
        std::fprintf(stderr, "setup failed: %s\n", err.c_str());
        return 1;
    }
    world.l4 = listen_in(*world.topo.server, kV4Server, kPort);
    world.l6 = listen_in(*world.topo.server, kV6Server, kPort);
    if (world.l4 < 0 || world.l6 < 0) {
        std::fprintf(stderr, "setup failed: listen\n");
        return 1;
    }
    world.io = std::make_unique<IoThread>();
    doctest::Context ctx(argc, argv);
    int rc = ctx.run();
    world.io->call([&] {
        world.client_reader.reset();
        world.server_reader.reset();
        return 0;
    });
    world.io.reset();
    ::close(world.l4);
    ::close(world.l6);
    world.topo.destroy();
    W = nullptr;
    return rc;
}
