// Micro-benchmark of the identity operations on the connection path:
// median and p99 per operation (µs), and what one core could do.
//   build/test/identity/bench_identity [iterations]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

#include "identity/token.h"

using namespace signet::identity;
using Steady = std::chrono::steady_clock;

namespace {

struct Stats {
    double median, p99, mean;
};

Stats measure(int iterations, const std::function<void(int)>& op) {
    std::vector<double> us;
    us.reserve(static_cast<size_t>(iterations));
    // Warm up on indices past the measured ones (tokens are single-use).
    for (int i = 0; i < std::min(iterations / 10 + 1, 200); ++i) op(iterations + i);
    for (int i = 0; i < iterations; ++i) {
        auto t0 = Steady::now();
        op(i);
        us.push_back(std::chrono::duration<double, std::micro>(Steady::now() - t0).count());
    }
    double sum = 0;
    for (double v : us) sum += v;
    std::sort(us.begin(), us.end());
    return {us[us.size() / 2], us[std::min(us.size() - 1, us.size() * 99 / 100)], sum / static_cast<double>(us.size())};
}

void row(const char* name, const Stats& s) { std::printf("%-44s %9.2f %9.2f %9.2f\n", name, s.median, s.p99, s.mean); }

void must(bool ok, const char* what) {
    if (!ok) {
        std::fprintf(stderr, "bench_identity: %s failed\n", what);
        std::exit(1);
    }
}

}  // namespace

int main(int argc, char** argv) {
    const int n = argc > 1 ? std::atoi(argv[1]) : 5000;
    auto ca = Authority::create({});
    must(ca.ok(), "authority");
    auto bundle = TrustBundle::from_pem(ca->bundle_pem());
    auto a = ca->issue("node-a"), b = ca->issue("node-b");
    must(bundle.ok() && a.ok() && b.ok(), "issue");
    const TimePoint now = Clock::now();

    ConnBinding syn;
    syn.client_addr = {10, 244, 1, 7};
    syn.server_addr = {10, 244, 2, 9};
    syn.client_port = 43512;
    syn.server_port = 8080;
    syn.client_isn = 0x8badf00d;
    PodClaim pod{"default", "web-6f9c7b8d5-x2x4z", *parse_pod_uid("3f2a1c9e-5b7d-4e8f-9a0b-1c2d3e4f5a6b")};

    PairKeyCache at_a(*a, 1 << 16), at_b(*b, 1 << 16);
    auto key_ab = at_a.add(b->cert.get(), b->identity);
    must(key_ab.ok() && at_b.add(a->cert.get(), a->identity).ok(), "pair keys");

    std::printf("identity micro-benchmark, %d iterations per row (µs)\n", n);
    std::printf("%-44s %9s %9s %9s\n", "operation", "median", "p99", "mean");

    // Fresh replay caches sized for the run: every token is new.
    auto verify_ctx = [&](ReplayCache& replay, PairKeyCache& keys) {
        VerifyContext ctx;
        ctx.bundle = &*bundle;
        ctx.pair_keys = &keys;
        ctx.replay = &replay;
        return ctx;
    };

    Bytes signed_tok;
    row("ECDSA P-256 sign (signed token, with cert)", measure(n, [&](int) {
            auto t = make_signed_token(*a, Role::client, syn, pod, now);
            must(t.ok(), "sign");
            signed_tok = std::move(*t);
        }));
    {
        // Signature verify alone: the sender's certificate is cached (by reference).
        MintOptions ref;
        ref.include_certificate = false;
        std::vector<Bytes> toks;
        for (int i = 0; i < n + 200; ++i) toks.push_back(*make_signed_token(*a, Role::client, syn, pod, now, ref));
        ReplayCache replay(static_cast<size_t>(n) * 2 + 1000);
        VerifyContext ctx = verify_ctx(replay, at_b);
        row("ECDSA verify (signed token, cert cached)", measure(n, [&](int i) {
                auto v = verify_token(toks[static_cast<size_t>(i)], Role::client, syn, now, ctx);
                if (!v) std::fprintf(stderr, "%s\n", v.error().message.c_str());
                must(v.ok(), "verify");
            }));
    }
    {
        // First contact: chain verify + signature verify + ECDH/HKDF into the cache.
        const int m = std::max(n / 5, 50);
        std::vector<Bytes> toks;
        for (int i = 0; i < m + 200; ++i) toks.push_back(*make_signed_token(*a, Role::client, syn, pod, now));
        ReplayCache replay(static_cast<size_t>(m) * 2 + 1000);
        row("first contact: chain+sig verify+ECDH+HKDF", measure(m, [&](int i) {
                PairKeyCache fresh(*b, 4);
                VerifyContext ctx = verify_ctx(replay, fresh);
                must(verify_token(toks[static_cast<size_t>(i)], Role::client, syn, now, ctx).ok(), "first contact");
            }));
        X509* leaf = a->cert.get();
        row("  of which: certificate chain verify", measure(m, [&](int) {
                must(bundle->verify_node(leaf, {}, now).ok(), "chain");
            }));
        row("  of which: ECDH + HKDF (pair key)", measure(m, [&](int) {
                must(derive_pair_key(b->key.get(), b->identity, X509_get0_pubkey(leaf), a->identity).ok(), "ecdh");
            }));
    }

    std::vector<Bytes> macs;
    const Stats mint = measure(n, [&](int) {
        auto t = make_mac_token(**key_ab, Role::client, syn, pod, now);
        must(t.ok(), "mac");
        macs.push_back(std::move(*t));
    });
    row("MAC token create", mint);
    ReplayCache replay(static_cast<size_t>(n) * 4 + 1000);
    VerifyContext ctx = verify_ctx(replay, at_b);
    const Stats check = measure(n, [&](int i) {
        must(verify_token(macs[static_cast<size_t>(i)], Role::client, syn, now, ctx).ok(), "mac verify");
    });
    row("MAC token verify (incl. parse, replay cache)", check);
    row("parse (MAC token)", measure(n, [&](int i) { must(parse(macs[static_cast<size_t>(i)]).ok(), "parse"); }));
    row("parse (signed token with cert)", measure(n, [&](int) { must(parse(signed_tok).ok(), "parse"); }));

    std::printf("\nsizes: MAC token %zu bytes, signed token %zu bytes with the certificate\n", macs[0].size(),
                signed_tok.size());
    // One connection costs each side one MAC token made and one verified
    // (SYN: client makes, server verifies; SYN-ACK: the other way round).
    const double per_conn = mint.mean + check.mean;
    std::printf("one core, MAC tokens: ~%.0f connections/s per side (create + verify = %.2f µs mean)\n",
                1e6 / per_conn, per_conn);
    return 0;
}
