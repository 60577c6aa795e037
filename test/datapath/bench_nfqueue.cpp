// bench_nfqueue: what the handshake queue costs a new connection. Two netns
// over a veth pair (as nfqueue_integration); a client thread that entered the
// client netns connects to the server netns and closes (RST, no TIME_WAIT) in
// a loop; the server thread accepts and closes. Three modes side by side:
//   a  no queue rules
//   b  queue rules (SYN / SYN-ACK, output and input, both netns), readers
//      parse and accept unchanged
//   c  readers add / strip-and-check a 100-byte token
// Prints connections per second and connect latency (median, p99), and the
// ratios to mode a.   usage: bench_nfqueue [CONNECTIONS_PER_MODE (3000)] [SECONDS_CAP_PER_MODE (15)]
#include <sched.h>

#include <algorithm>
#include <deque>
#include <mutex>

#include "nfq_fixture.h"

using namespace nfqtest;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

constexpr uint16_t kPort = 7413;

struct Result_ {
    size_t ok = 0, failed = 0;
    double seconds = 0, median_us = 0, p99_us = 0, mean_us = 0;
};

Result_ run_mode(const Topology& topo, size_t n, std::chrono::seconds cap, size_t threads = 1) {
    Result_ r;
    std::vector<double> lat;
    lat.reserve(n);
    std::mutex mu;
    std::vector<std::thread> clients;
    for (size_t t = 0; t < threads; ++t) clients.emplace_back([&, per = n / threads] {
        Result_ mine;
        std::vector<double> my_lat;
        if (::setns(topo.client->fd(), CLONE_NEWNET) != 0) return;
        Addr a = make_addr(kV4Server, kPort);
        auto run = [&](size_t count, bool record) {
            const auto start = Clock::now();
            for (size_t i = 0; i < count; ++i) {
                if (Clock::now() - start > cap) break;
                int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
                linger l{1, 0};
                ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
                const auto t0 = Clock::now();
                int rc = ::connect(fd, reinterpret_cast<sockaddr*>(&a.ss), a.len);
                int e = 0;
                if (rc != 0 && errno == EINPROGRESS) {
                    pollfd p{fd, POLLOUT, 0};
                    if (::poll(&p, 1, 3000) <= 0) {
                        e = ETIMEDOUT;
                    } else {
                        socklen_t sl = sizeof e;
                        ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &sl);
                    }
                } else if (rc != 0) {
                    e = errno;
                }
                const auto t1 = Clock::now();
                ::close(fd);
                if (!record) continue;
                if (e == 0) {
                    ++mine.ok;
                    my_lat.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
                } else {
                    ++mine.failed;
                }
            }
            return std::chrono::duration<double>(Clock::now() - start).count();
        };
        run(std::min<size_t>(200, per), false);  // warm-up
        mine.seconds = run(per, true);
        std::lock_guard<std::mutex> g(mu);
        r.ok += mine.ok;
        r.failed += mine.failed;
        r.seconds = std::max(r.seconds, mine.seconds);
        lat.insert(lat.end(), my_lat.begin(), my_lat.end());
    });
    for (auto& c : clients) c.join();
    if (!lat.empty()) {
        std::sort(lat.begin(), lat.end());
        r.median_us = lat[lat.size() / 2];
        r.p99_us = lat[std::min(lat.size() - 1, lat.size() * 99 / 100)];
        double sum = 0;
        for (double x : lat) sum += x;
        r.mean_us = sum / static_cast<double>(lat.size());
    }
    return r;
}

}  // namespace

int main(int argc, char** argv) {
    auto number = [&](int i, unsigned long fallback) -> unsigned long {
        if (argc <= i) return fallback;
        char* end = nullptr;
        unsigned long v = std::strtoul(argv[i], &end, 10);
        if (end == argv[i] || *end != '\0' || v == 0) {
            std::fprintf(stderr, "usage: bench_nfqueue [CONNECTIONS_PER_MODE (3000)] [SECONDS_CAP_PER_MODE (15)]\n");
            std::exit(2);
        }
        return v;
    };
    const size_t n = number(1, 3000);
    const auto cap = std::chrono::seconds(number(2, 15));
    if (::geteuid() != 0) {
        std::fprintf(stderr, "bench_nfqueue: needs root (netns, nftables)\n");
        return 77;
    }
    auto probe = nft::probe_kernel();
    if (!probe || probe->queue == nft::QueueBackend::none) {
        std::fprintf(stderr, "bench_nfqueue: no NFQUEUE backend on this kernel\n");
        return 77;
    }
    Topology topo;
    topo.backend = probe->queue;
    if (std::string err = topo.create(); !err.empty()) {
        std::fprintf(stderr, "bench_nfqueue: setup: %s\n", err.c_str());
        return 1;
    }
    int lfd = listen_in(*topo.server, kV4Server, kPort);
    if (lfd < 0) return 1;
    std::atomic<bool> stop{false};
    // The server never closes first (a TIME_WAIT on its side would stall a
    // reused client port for a second): it keeps the last 256 accepted sockets
    // and closes older ones, long reset by the client's RST close by then.
    std::thread server([&] {
        std::deque<int> open;
        while (!stop) {
            pollfd p{lfd, POLLIN, 0};
            if (::poll(&p, 1, 50) <= 0) continue;
            int fd = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
            if (fd < 0) continue;
            open.push_back(fd);
            if (open.size() > 256) {
                ::close(open.front());
                open.pop_front();
            }
        }
        for (int fd : open) ::close(fd);
    });

    IoThread io;
    TokenBook book;
    book.tag = "signet-bench-tk!";
    book.random_len = 100 - book.tag.size();  // 100-byte token
    RoleCounters cc, sc;
    hs::QueueReader creader(io.io, *topo.client, hs::kHandshakeQueue, make_handler(book, true, cc));
    hs::QueueReader sreader(io.io, *topo.server, hs::kHandshakeQueue, make_handler(book, false, sc));

    struct Row {
        const char* name;
        Result_ r;
        hs::QueueStats cs, ss;
    };
    std::vector<Row> rows;
    rows.push_back({"a  no queue rules", run_mode(topo, n, cap), {}, {}});

    if (std::string err = topo.add_queue_rules(hs::kHandshakeQueue); !err.empty()) {
        std::fprintf(stderr, "bench_nfqueue: %s\n", err.c_str());
        stop = true;
        server.join();
        return 1;
    }
    bool started = io.call([&] { return creader.start().ok() && sreader.start().ok(); });
    if (!started) {
        std::fprintf(stderr, "bench_nfqueue: cannot start the readers\n");
        stop = true;
        server.join();
        return 1;
    }
    io.call([&] {
        book.client_mode = book.server_mode = Mode::passthrough;
        return 0;
    });
    auto c0 = io.call([&] { return creader.stats(); });
    auto s0 = io.call([&] { return sreader.stats(); });
    Row b{"b  queue, unchanged", run_mode(topo, n, cap), {}, {}};
    b.cs = io.call([&] { return creader.stats(); });
    b.ss = io.call([&] { return sreader.stats(); });
    rows.push_back(b);
    io.call([&] {
        book.client_mode = book.server_mode = Mode::token;
        return 0;
    });
    Row c{"c  queue, 100-byte token", run_mode(topo, n, cap), {}, {}};
    c.cs = io.call([&] { return creader.stats(); });
    c.ss = io.call([&] { return sreader.stats(); });
    rows.push_back(c);
    Row c8{"c8 token, 8 clients", run_mode(topo, n, cap, 8), {}, {}};
    c8.cs = io.call([&] { return creader.stats(); });
    c8.ss = io.call([&] { return sreader.stats(); });
    (void)c0;
    (void)s0;
    io.call([&] {
        creader.stop();
        sreader.stop();
        return 0;
    });
    rows.push_back(c8);
    stop = true;
    server.join();
    ::close(lfd);

    std::printf("bench_nfqueue: %zu connections per mode (IPv4, connect + RST close, one at a time), %s backend\n\n", n,
                topo.backend == nft::QueueBackend::xt_nfqueue ? "xt NFQUEUE" : "nft queue");
    std::printf("%-26s %7s %6s %9s %11s %9s %9s %10s %10s\n", "mode", "ok", "fail", "conn/s", "median us", "p99 us",
                "mean us", "x conn/s", "x median");
    for (const auto& row : rows) {
        const Result_& base = rows[0].r;
        const double cps = row.r.seconds > 0 ? static_cast<double>(row.r.ok) / row.r.seconds : 0;
        const double base_cps = base.seconds > 0 ? static_cast<double>(base.ok) / base.seconds : 0;
        std::printf("%-26s %7zu %6zu %9.0f %11.1f %9.1f %9.1f %10.2f %10.2f\n", row.name, row.r.ok, row.r.failed, cps,
                    row.r.median_us, row.r.p99_us, row.r.mean_us, base_cps > 0 ? cps / base_cps : 0,
                    base.median_us > 0 ? row.r.median_us / base.median_us : 0);
    }
    std::printf("(c8: 8 client threads at once, to show verdict batching; its latency includes queueing behind the\n"
                " other clients' handshakes on the one reader thread)\n");
    std::printf("largest verdict batch: %lu (client), %lu (server) with 8 clients\n", (unsigned long)c8.cs.max_batch,
                (unsigned long)c8.ss.max_batch);
    std::printf("\nreaders (cumulative b+c): client packets=%lu rewritten=%lu dropped=%lu max_batch=%lu errors=%lu "
                "overruns=%lu | server packets=%lu rewritten=%lu dropped=%lu max_batch=%lu errors=%lu overruns=%lu\n",
                (unsigned long)c.cs.packets, (unsigned long)c.cs.rewritten, (unsigned long)c.cs.dropped,
                (unsigned long)c.cs.max_batch, (unsigned long)c.cs.verdict_errors, (unsigned long)c.cs.overruns,
                (unsigned long)c.ss.packets, (unsigned long)c.ss.rewritten, (unsigned long)c.ss.dropped,
                (unsigned long)c.ss.max_batch, (unsigned long)c.ss.verdict_errors, (unsigned long)c.ss.overruns);
    std::printf("handler: client syn=%lu syn_ack=%lu other=%lu stripped_ok=%lu missing=%lu wrong=%lu | server syn=%lu "
                "syn_ack=%lu other=%lu stripped_ok=%lu missing=%lu wrong=%lu\n",
                (unsigned long)cc.syn, (unsigned long)cc.syn_ack, (unsigned long)cc.other,
                (unsigned long)cc.stripped_ok, (unsigned long)cc.missing, (unsigned long)cc.wrong,
                (unsigned long)sc.syn, (unsigned long)sc.syn_ack, (unsigned long)sc.other,
                (unsigned long)sc.stripped_ok, (unsigned long)sc.missing, (unsigned long)sc.wrong);
    return 0;
}
