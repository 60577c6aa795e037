// bench_connect: TCP connection setup, measured from the client.
//
//   bench_connect serve PORT                 accept and close, forever (prints "ready")
//   bench_connect connect HOST PORT N [C]    N connections over C concurrent clients:
//                                            each connect() timed until established
//                                            (SYN, SYN-ACK, ACK done), then closed
//                                            with RST (no TIME_WAIT); prints one JSON
//                                            line: count, failures, rate, latency
//                                            median/p90/p99 in microseconds
//
// Run inside network namespaces (ip netns exec) by test/bench/bench_handshake.py.
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

int usage() {
    std::fprintf(stderr, "usage: bench_connect serve PORT | connect HOST PORT N [CONCURRENCY]\n");
    return 2;
}

int serve(int port) {
    int s = ::socket(AF_INET6, SOCK_STREAM, 0);
    int one = 1, zero = 0;
    ::setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    ::setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    sockaddr_in6 a{};
    a.sin6_family = AF_INET6;
    a.sin6_port = htons(static_cast<uint16_t>(port));
    a.sin6_addr = in6addr_any;
    if (::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(s, 4096) != 0) {
        std::perror("bench_connect serve: bind/listen");
        return 1;
    }
    std::printf("ready\n");
    std::fflush(stdout);
    for (;;) {
        int c = ::accept(s, nullptr, nullptr);
        if (c >= 0) ::close(c);
    }
}

int connect_many(const char* host, int port, long n, int conc) {
    sockaddr_storage ss{};
    socklen_t len = 0;
    if (auto* a4 = reinterpret_cast<sockaddr_in*>(&ss); ::inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons(static_cast<uint16_t>(port));
        len = sizeof(sockaddr_in);
    } else if (auto* a6 = reinterpret_cast<sockaddr_in6*>(&ss); ::inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons(static_cast<uint16_t>(port));
        len = sizeof(sockaddr_in6);
    } else {
        std::fprintf(stderr, "bench_connect: bad address %s\n", host);
        return 2;
    }
    std::atomic<long> next{0}, failures{0};
    // Failures by cause: a connect() that timed out (SYN or SYN-ACK lost
    // twice), was refused (RST), or failed otherwise.
    std::atomic<long> timed_out{0}, refused{0}, reset{0}, other{0};
    std::vector<std::vector<double>> lat(static_cast<size_t>(conc));
    auto t0 = std::chrono::steady_clock::now();
    auto worker = [&](int w) {
        auto& mine = lat[static_cast<size_t>(w)];
        while (next++ < n) {
            int s = ::socket(ss.ss_family, SOCK_STREAM, 0);
            timeval tv{3, 0};
            ::setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
            auto a = std::chrono::steady_clock::now();
            int rc = ::connect(s, reinterpret_cast<sockaddr*>(&ss), len);
            auto b = std::chrono::steady_clock::now();
            if (rc == 0) {
                mine.push_back(std::chrono::duration<double, std::micro>(b - a).count());
            } else {
                const int e = errno;
                ++failures;
                if (e == EINPROGRESS || e == ETIMEDOUT || e == EAGAIN)
                    ++timed_out;
                else if (e == ECONNREFUSED)
                    ++refused;
                else if (e == ECONNRESET)
                    ++reset;
                else
                    ++other;
            }
            linger lg{1, 0};  // RST on close: no TIME_WAIT, no port exhaustion
            ::setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
            ::close(s);
        }
    };
    std::vector<std::thread> ts;
    for (int w = 0; w < conc; ++w) ts.emplace_back(worker, w);
    for (auto& t : ts) t.join();
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::vector<double> all;
    for (auto& v : lat) all.insert(all.end(), v.begin(), v.end());
    std::sort(all.begin(), all.end());
    auto pct = [&](double p) {
        if (all.empty()) return 0.0;
        size_t i = std::min(all.size() - 1, static_cast<size_t>(p * static_cast<double>(all.size())));
        return all[i];
    };
    std::printf(
        "{\"count\": %zu, \"failures\": %ld, \"seconds\": %.3f, \"rate\": %.0f, \"median_us\": %.1f, "
        "\"p90_us\": %.1f, \"p99_us\": %.1f, \"concurrency\": %d, \"timed_out\": %ld, \"refused\": %ld, "
        "\"reset\": %ld, \"other_errors\": %ld}\n",
        all.size(), failures.load(), secs, static_cast<double>(all.size()) / secs, pct(0.5), pct(0.9), pct(0.99),
        conc, timed_out.load(), refused.load(), reset.load(), other.load());
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc >= 3 && std::strcmp(argv[1], "serve") == 0) return serve(std::atoi(argv[2]));
    if (argc >= 5 && std::strcmp(argv[1], "connect") == 0)
        return connect_many(argv[2], std::atoi(argv[3]), std::atol(argv[4]), argc >= 6 ? std::atoi(argv[5]) : 1);
    return usage();
}
