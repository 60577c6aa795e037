// Identity tokens (controller/identity/token.cpp): parse must never crash
// or leak, parse∘encode is the identity on every input that parses, and
// verify — as node-b, with fixed keys (test/identity/fixed_keys.h), a fixed
// clock, both roles — never crashes and accepts only well-formed tokens.
// Seeds: valid MAC / signed tokens from node-a, made by identity_unit_tests
// with SIGNET_TOKEN_CORPUS_OUT set, and malformed variants.
#include <cstdint>
#include <cstdlib>
#include <memory>

#include "../identity/fixed_keys.h"
#include "identity/token.h"

using namespace signet::identity;

namespace {

struct Fixture {
    TrustBundle bundle;
    NodeCredentials a, b;
};

const Fixture& fixture() {
    static const Fixture* f = [] {
        const TimePoint now{std::chrono::milliseconds(testkeys::kNowMs)};
        auto bundle = TrustBundle::from_pem(testkeys::kCaPem);
        if (!bundle) std::abort();
        auto a = NodeCredentials::from_pem(testkeys::kNodeAKey, testkeys::kNodeACert, *bundle, now);
        auto b = NodeCredentials::from_pem(testkeys::kNodeBKey, testkeys::kNodeBCert, *bundle, now);
        if (!a || !b) std::abort();
        return new Fixture{std::move(*bundle), std::move(*a), std::move(*b)};
    }();
    return *f;
}

ConnBinding binding(bool with_server_isn) {
    ConnBinding c;
    c.client_addr = {10, 0, 0, 1};
    c.server_addr = {10, 0, 1, 2};
    c.client_port = 40000;
    c.server_port = 80;
    c.client_isn = 0x01020304;
    if (with_server_isn) c.server_isn = 0x0a0b0c0d;
    return c;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::span<const uint8_t> in(data, size);
    if (auto t = parse(in)) {
        auto again = encode(*t);
        if (!again || again->size() != size || !std::equal(again->begin(), again->end(), data)) __builtin_trap();
    }
    const Fixture& f = fixture();
    const TimePoint now{std::chrono::milliseconds(testkeys::kNowMs)};
    PairKeyCache keys(f.b, 8);
    if (!keys.add(f.a.cert.get(), f.a.identity)) __builtin_trap();
    ReplayCache replay(16);
    VerifyContext ctx;
    ctx.bundle = &f.bundle;
    ctx.pair_keys = &keys;
    ctx.replay = &replay;
    for (Role role : {Role::client, Role::server}) {
        auto v = verify_token(in, role, binding(role == Role::server), now, ctx);
        if (v && (v->claims.trust_domain != "cluster.local" || !v->pair_key || !parse(in))) __builtin_trap();
        // A second look at the same token is always a replay.
        if (v && verify_token(in, role, binding(role == Role::server), now, ctx).error().code !=
                     static_cast<int>(TokenError::replay))
            __builtin_trap();
    }
    return 0;
}
