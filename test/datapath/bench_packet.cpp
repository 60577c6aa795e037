// bench_packet: ns/op of the handshake packet layer (median over samples).
//   bench_packet [samples] [iterations per sample]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

#include "golden.h"
#include "datapath/packet.h"

using namespace signet::handshake;

static volatile size_t g_sink;

static double median_ns(int samples, int iters, const std::function<size_t()>& op) {
    std::vector<double> ns;
    for (int s = 0; s < samples; ++s) {
        size_t acc = 0;
        const auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < iters; ++i) acc += op();
        const auto t1 = std::chrono::steady_clock::now();
        g_sink = acc;
        ns.push_back(std::chrono::duration<double, std::nano>(t1 - t0).count() / iters);
    }
    std::nth_element(ns.begin(), ns.begin() + static_cast<long>(ns.size() / 2), ns.end());
    return ns[ns.size() / 2];
}

int main(int argc, char** argv) {
    const int samples = argc > 1 ? std::atoi(argv[1]) : 101;
    const int iters = argc > 2 ? std::atoi(argv[2]) : 5000;
    std::vector<uint8_t> token(256);
    for (size_t i = 0; i < token.size(); ++i) token[i] = static_cast<uint8_t>(i * 7);
    std::printf("%-28s %10s\n", "operation (token 256 B)", "ns/op");
    for (const auto* name : {"v4_syn", "v6_syn"}) {
        const std::vector<uint8_t>& pkt = name[1] == '4' ? golden::v4_syn : golden::v6_syn;
        auto p = *parse(pkt);
        std::vector<uint8_t> tokened(tokened_size(p, token.size()));
        (void)*add_token_into(p, token, tokened);
        auto q = *parse(tokened);
        std::vector<uint8_t> out(pkt.size() + 512);
        const ParseOptions lax{true, TcpChecksum::unverified};
        struct Row { const char* op; std::function<size_t()> f; };
        const Row rows[] = {
            {"parse (verify)", [&] { return parse(pkt)->tcp_header_len; }},
            {"parse (no TCP verify)", [&] { return parse(pkt, lax)->tcp_header_len; }},
            {"parse tokened (verify)", [&] { return parse(tokened)->tcp_header_len; }},
            {"add_token_into", [&] { return *add_token_into(p, token, out); }},
            {"add_token (vector)", [&] { return add_token(p, token, 1500)->size(); }},
            {"strip_token_into", [&] { return strip_token_into(q, out)->size; }},
            {"strip_token (vector)", [&] { return strip_token(q)->packet.size(); }},
        };
        std::printf("%s (%zu bytes)\n", name, pkt.size());
        for (const auto& r : rows) std::printf("  %-26s %10.1f\n", r.op, median_ns(samples, iters, r.f));
    }
    return 0;
}
