// Identity tokens, node-pair keys, the replay cache
// (controller/identity/token.cpp, pair_keys.cpp, replay_cache.cpp).
#include <doctest/doctest.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>

#include "fixed_keys.h"
#include "helpers.h"
#include "identity/token.h"

using namespace signet::identity;
using namespace std::chrono_literals;

namespace {

int code(TokenError e) { return static_cast<int>(e); }

struct World {
    Authority ca;
    TrustBundle bundle;
    NodeCredentials a, b, c;
};

World& world() {
    static World* w = [] {
        auto ca = Authority::create({});
        REQUIRE(ca.ok());
        auto bundle = TrustBundle::from_pem(ca->bundle_pem());
        REQUIRE(bundle.ok());
        auto a = ca->issue("node-a"), b = ca->issue("node-b"), c = ca->issue("node-c");
        REQUIRE((a.ok() && b.ok() && c.ok()));
        return new World{std::move(*ca), std::move(*bundle), std::move(*a), std::move(*b), std::move(*c)};
    }();
    return *w;
}

ConnBinding syn_binding() {
    ConnBinding c;
    c.client_addr = {10, 244, 1, 7};
    c.server_addr = {10, 244, 2, 9};
    c.client_port = 43512;
    c.server_port = 8080;
    c.client_isn = 0x8badf00d;
    return c;
}

ConnBinding synack_binding() {
    ConnBinding c = syn_binding();
    c.server_isn = 0x1234abcd;
    return c;
}

PodClaim pod() {
    PodClaim p;
    p.pod_namespace = "default";
    p.pod_name = "web-6f9c7b8d5-x2x4z";
    p.pod_uid = *parse_pod_uid("3f2a1c9e-5b7d-4e8f-9a0b-1c2d3e4f5a6b");
    return p;
}

// The receiver (node-b) and what it keeps.
struct Receiver {
    PairKeyCache keys;
    ReplayCache replay;
    VerifyContext ctx;
    explicit Receiver(const NodeCredentials& self = world().b) : keys(self) {
        ctx.bundle = &world().bundle;
        ctx.pair_keys = &keys;
        ctx.replay = &replay;
    }
    signet::Result<VerifiedToken> verify(const Bytes& t, Role role, const ConnBinding& b, TimePoint now) {
        return verify_token(t, role, b, now, ctx);
    }
};

std::shared_ptr<const PairKey> key_a_to_b() {
    auto k = PairKeyCache(world().a).add(world().b.cert.get(), world().b.identity);
    REQUIRE(k.ok());
    return *k;
}

Bytes mac_token(TimePoint now, Role role = Role::client, const ConnBinding& b = syn_binding(), const MintOptions& o = {}) {
    auto t = make_mac_token(*key_a_to_b(), role, b, pod(), now, o);
    REQUIRE_MESSAGE(t.ok(), t.error().message);
    return *t;
}

Bytes signed_token(TimePoint now, const NodeCredentials& from, bool with_cert = true, Role role = Role::client) {
    MintOptions o;
    o.include_certificate = with_cert;
    auto t = make_signed_token(from, role, role == Role::client ? syn_binding() : synack_binding(), pod(), now, o);
    REQUIRE_MESSAGE(t.ok(), t.error().message);
    return *t;
}

// A hand-built token: header for `type` (zero key id, zero time fields set
// sensibly), the given raw field bytes, and a zero trailer.
Bytes raw_token(TokenType type, const Bytes& fields) {
    Bytes b = {1, static_cast<uint8_t>(type), 0, 0, 1, 0};
    for (int i = 0; i < 8; ++i) b.push_back(0);
    b.push_back(0x13);
    b.push_back(0x88);  // 5000 ms
    b.resize(b.size() + 16 + 4, 0x5a);
    if (type == TokenType::mac) b.resize(b.size() + 8, 0);
    b.insert(b.end(), fields.begin(), fields.end());
    b.resize(b.size() + (type == TokenType::mac ? kMacSize : kSignatureSize), 0);
    b[2] = static_cast<uint8_t>(b.size() >> 8);
    b[3] = static_cast<uint8_t>(b.size());
    return b;
}

Bytes field(uint8_t tag, const std::string& v) {
    Bytes b(2 + v.size());
    b[0] = tag;
    b[1] = static_cast<uint8_t>(v.size());
    std::copy(v.begin(), v.end(), b.begin() + 2);
    return b;
}

Bytes uid_field() {
    Bytes b = {0x03, 16};
    for (int i = 0; i < 16; ++i) b.push_back(static_cast<uint8_t>(i + 1));
    return b;
}

Bytes cat(std::initializer_list<Bytes> parts) {
    Bytes out;
    for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
    return out;
}

}  // namespace

TEST_CASE("pair keys: the same on both sides, different for different peers") {
    World& w = world();
    PairKeyCache at_a(w.a), at_b(w.b), at_c(w.c);
    auto ab = at_a.add(w.b.cert.get(), w.b.identity);
    auto ba = at_b.add(w.a.cert.get(), w.a.identity);
    auto ac = at_a.add(w.c.cert.get(), w.c.identity);
    auto ca = at_c.add(w.a.cert.get(), w.a.identity);
    REQUIRE((ab.ok() && ba.ok() && ac.ok() && ca.ok()));
    CHECK((*ab)->secret_for_tests() == (*ba)->secret_for_tests());
    CHECK((*ab)->id == (*ba)->id);
    CHECK((*ac)->secret_for_tests() == (*ca)->secret_for_tests());
    CHECK((*ab)->secret_for_tests() != (*ac)->secret_for_tests());
    CHECK((*ab)->id != (*ac)->id);
    CHECK((*ab)->peer.node_name == "node-b");
    CHECK((*ba)->peer.node_name == "node-a");

    // Lookups by fingerprint and key id; expiry with the certificates.
    const TimePoint now = Clock::now();
    CHECK(at_a.by_fingerprint(w.b.identity.fingerprint, now) == *ab);
    CHECK(at_a.by_key_id((*ab)->id, now) == *ab);
    CHECK(at_a.by_key_id(KeyId{}, now) == nullptr);
    CHECK(at_a.by_key_id((*ab)->id, w.b.identity.not_after + 1s) == nullptr);
    CHECK(at_a.size() == 1);  // the expired entry is gone
}

TEST_CASE("pair key cache: bounded, least recently used goes first") {
    World& w = world();
    PairKeyCache cache(w.a, 2);
    const TimePoint now = Clock::now();
    REQUIRE(cache.add(w.b.cert.get(), w.b.identity).ok());
    REQUIRE(cache.add(w.c.cert.get(), w.c.identity).ok());
    CHECK(cache.by_fingerprint(w.b.identity.fingerprint, now) != nullptr);  // b is now the most recent
    REQUIRE(cache.add(w.a.cert.get(), w.a.identity).ok());                  // evicts c
    CHECK(cache.size() == 2);
    CHECK(cache.by_fingerprint(w.c.identity.fingerprint, now) == nullptr);
    CHECK(cache.by_fingerprint(w.b.identity.fingerprint, now) != nullptr);
    cache.clear();
    CHECK(cache.size() == 0);
}

TEST_CASE("MAC token round trip, sizes, claims") {
    const TimePoint now = Clock::now();
    Bytes t = mac_token(now);
    CHECK(t.size() < 120);
    MESSAGE("MAC token: " << t.size() << " bytes");
    auto parsed = parse(t);
    REQUIRE(parsed.ok());
    CHECK(*encode(*parsed) == t);
    CHECK(parsed->type == TokenType::mac);
    CHECK(parsed->pod_name == "web-6f9c7b8d5-x2x4z");

    Receiver r;
    REQUIRE(r.keys.add(world().a.cert.get(), world().a.identity).ok());
    auto v = r.verify(t, Role::client, syn_binding(), now);
    REQUIRE_MESSAGE(v.ok(), v.error().message);
    CHECK(v->claims.trust_domain == "cluster.local");
    CHECK(v->claims.node_name == "node-a");
    CHECK(v->claims.pod_namespace == "default");
    CHECK(v->claims.pod_name == "web-6f9c7b8d5-x2x4z");
    CHECK(pod_uid_string(v->claims.pod_uid) == "3f2a1c9e-5b7d-4e8f-9a0b-1c2d3e4f5a6b");
    CHECK(v->type == TokenType::mac);

    // The server's answer in the SYN-ACK, bound to both ISNs.
    auto back = make_mac_token(*v->pair_key, Role::server, synack_binding(), pod(), now);
    REQUIRE(back.ok());
    Receiver at_a(world().a);
    REQUIRE(at_a.keys.add(world().b.cert.get(), world().b.identity).ok());
    auto va = at_a.verify(*back, Role::server, synack_binding(), now);
    REQUIRE_MESSAGE(va.ok(), va.error().message);
    CHECK(va->claims.node_name == "node-b");

    // The final ACK's proof: the same on both sides.
    CHECK(ack_proof(*v->pair_key, synack_binding(), v->nonce, va->nonce) ==
          ack_proof(*va->pair_key, synack_binding(), v->nonce, va->nonce));
    CHECK(ack_proof(*v->pair_key, synack_binding(), v->nonce, va->nonce) !=
          ack_proof(*v->pair_key, syn_binding(), v->nonce, va->nonce));
}

TEST_CASE("signed token round trip: certificate, then by reference; the receiver learns the pair key") {
    const TimePoint now = Clock::now();
    Bytes with_cert = signed_token(now, world().a);
    Bytes by_ref = signed_token(now, world().a, false);
    MESSAGE("signed token: " << with_cert.size() << " bytes with the certificate, " << by_ref.size() << " by reference");
    CHECK(with_cert.size() < 800);
    CHECK(by_ref.size() < 200);
    CHECK(*encode(*parse(with_cert)) == with_cert);
    CHECK(*encode(*parse(by_ref)) == by_ref);

    Receiver r;
    auto unknown = r.verify(by_ref, Role::client, syn_binding(), now);
    REQUIRE_FALSE(unknown.ok());
    CHECK(unknown.error().code == code(TokenError::unknown_certificate));

    auto v = r.verify(with_cert, Role::client, syn_binding(), now);
    REQUIRE_MESSAGE(v.ok(), v.error().message);
    CHECK(v->claims.node_name == "node-a");
    CHECK(v->type == TokenType::signed_first_contact);
    REQUIRE(v->pair_key);
    CHECK(v->pair_key->id == key_a_to_b()->id);  // both sides now hold the same key
    CHECK(r.keys.size() == 1);

    auto v2 = r.verify(by_ref, Role::client, syn_binding(), now);
    REQUIRE_MESSAGE(v2.ok(), v2.error().message);
    // ... and a MAC token from a now verifies.
    CHECK(r.verify(mac_token(now), Role::client, syn_binding(), now).ok());
}

TEST_CASE("forged signatures and MACs are rejected") {
    const TimePoint now = Clock::now();
    SUBCASE("a flipped byte in the signature") {
        Bytes t = signed_token(now, world().a);
        t[t.size() - 10] ^= 0x01;
        Receiver r;
        auto v = r.verify(t, Role::client, syn_binding(), now);
        REQUIRE_FALSE(v.ok());
        CHECK(v.error().code == code(TokenError::bad_signature));
        CHECK(r.keys.size() == 0);  // nothing learnt from a forgery
        CHECK(r.replay.size() == 0);
    }
    SUBCASE("node-c's key with node-a's certificate") {
        NodeCredentials forger;
        forger.key = PKey(EVP_PKEY_dup(world().c.key.get()));
        forger.chain_der = world().a.chain_der;
        forger.identity = world().a.identity;
        auto t = make_signed_token(forger, Role::client, syn_binding(), pod(), now);
        REQUIRE(t.ok());
        Receiver r;
        auto v = r.verify(*t, Role::client, syn_binding(), now);
        REQUIRE_FALSE(v.ok());
        CHECK(v.error().code == code(TokenError::bad_signature));
    }
    SUBCASE("a changed claim under a valid signature") {
        Bytes t = signed_token(now, world().a);
        auto p = parse(t);
        REQUIRE(p.ok());
        p->pod_name = "admin-0";
        Receiver r;
        auto v = r.verify(*encode(*p), Role::client, syn_binding(), now);
        REQUIRE_FALSE(v.ok());
        CHECK(v.error().code == code(TokenError::bad_signature));
    }
    SUBCASE("every byte of a MAC token matters") {
        Bytes t = mac_token(now);
        Receiver r;
        REQUIRE(r.keys.add(world().a.cert.get(), world().a.identity).ok());
        for (size_t i = 0; i < t.size(); ++i) {
            Bytes f = t;
            f[i] ^= 0x01;
            auto v = r.verify(f, Role::client, syn_binding(), now);
            CHECK_MESSAGE(!v.ok(), "byte " << i);
            if (i >= t.size() - kMacSize) CHECK(v.error().code == code(TokenError::bad_mac));
        }
        CHECK(r.verify(t, Role::client, syn_binding(), now).ok());
    }
    SUBCASE("a MAC under another pair's key") {
        auto k = PairKeyCache(world().c).add(world().b.cert.get(), world().b.identity);
        REQUIRE(k.ok());
        auto t = make_mac_token(**k, Role::client, syn_binding(), pod(), now);
        REQUIRE(t.ok());
        Receiver r;  // knows only node-a
        REQUIRE(r.keys.add(world().a.cert.get(), world().a.identity).ok());
        auto v = r.verify(*t, Role::client, syn_binding(), now);
        REQUIRE_FALSE(v.ok());
        CHECK(v.error().code == code(TokenError::unknown_key_id));
        // The right key id with a wrong key: copy a's key id into c's token.
        auto p = parse(*t);
        p->key_id = key_a_to_b()->id;
        auto forged = encode(*p);
        auto v2 = r.verify(*forged, Role::client, syn_binding(), now);
        REQUIRE_FALSE(v2.ok());
        CHECK(v2.error().code == code(TokenError::bad_mac));
    }
}

TEST_CASE("truncation at every length, trailing bytes, oversize") {
    const TimePoint now = Clock::now();
    for (const Bytes& t : {mac_token(now), signed_token(now, world().a), signed_token(now, world().a, false)}) {
        for (size_t n = 0; n < t.size(); ++n) {
            auto p = parse(std::span<const uint8_t>(t.data(), n));
            REQUIRE_FALSE(p.ok());
            CHECK_MESSAGE(p.error().code == code(TokenError::truncated), "length " << n << ": " << p.error().message);
        }
        Bytes longer = t;
        longer.push_back(0);
        auto p = parse(longer);
        REQUIRE_FALSE(p.ok());
        CHECK(p.error().code == code(TokenError::trailing_bytes));
        longer.resize(kMaxTokenSize + 1, 0);
        CHECK(parse(longer).error().code == code(TokenError::too_large));
    }
}

TEST_CASE("malformed fields: unknown version/type/role/flags, duplicates, order, lengths, names") {
    const Bytes ns = field(0x01, "default"), name = field(0x02, "web-1"), uid = uid_field();
    REQUIRE(parse(raw_token(TokenType::mac, cat({ns, name, uid}))).ok());
    auto err = [](const Bytes& b) { return parse(b).error().code; };

    Bytes v2 = raw_token(TokenType::mac, cat({ns, name, uid}));
    v2[0] = 2;
    CHECK(err(v2) == code(TokenError::bad_version));
    CHECK(err(Bytes{0}) == code(TokenError::bad_version));
    Bytes t3 = raw_token(TokenType::mac, cat({ns, name, uid}));
    t3[1] = 3;
    CHECK(err(t3) == code(TokenError::bad_type));
    Bytes role = raw_token(TokenType::mac, cat({ns, name, uid}));
    role[4] = 0;
    CHECK(err(role) == code(TokenError::bad_role));
    Bytes flags = raw_token(TokenType::mac, cat({ns, name, uid}));
    flags[5] = 0x80;
    CHECK(err(flags) == code(TokenError::bad_flags));
    Bytes validity = raw_token(TokenType::mac, cat({ns, name, uid}));
    validity[14] = validity[15] = 0;
    CHECK(err(validity) == code(TokenError::bad_validity));
    validity[14] = 0xff;
    CHECK(err(validity) == code(TokenError::bad_validity));

    CHECK(err(raw_token(TokenType::mac, cat({ns, ns, name, uid}))) == code(TokenError::duplicate_field));
    CHECK(err(raw_token(TokenType::mac, cat({name, ns, uid}))) == code(TokenError::duplicate_field));
    CHECK(err(raw_token(TokenType::mac, cat({ns, uid}))) == code(TokenError::missing_field));
    CHECK(err(raw_token(TokenType::mac, cat({ns, name, uid, field(0x04, "x")}))) == code(TokenError::unknown_field));
    CHECK(err(raw_token(TokenType::mac, cat({ns, name, uid, field(0x7f, "")}))) == code(TokenError::unknown_field));
    // Certificate fields belong to signed tokens only.
    Bytes ref = {0x10, 32};
    ref.resize(34, 0xee);
    CHECK(err(raw_token(TokenType::mac, cat({ns, name, uid, ref}))) == code(TokenError::unknown_field));
    CHECK(parse(raw_token(TokenType::signed_first_contact, cat({ns, name, uid, ref}))).ok());
    CHECK(err(raw_token(TokenType::signed_first_contact, cat({ns, name, uid}))) == code(TokenError::missing_field));
    Bytes cert = {0x80, 0, 3, 1, 2, 3};
    CHECK(err(raw_token(TokenType::signed_first_contact, cat({ns, name, uid, ref, cert}))) == code(TokenError::duplicate_field));
    Bytes big_cert = {0x80, 0x03, 0xe9};  // 1001 bytes
    big_cert.resize(3 + 1001, 0);
    CHECK(err(raw_token(TokenType::signed_first_contact, cat({ns, name, uid, big_cert}))) == code(TokenError::bad_field_length));
    Bytes short_ref = {0x10, 31};
    short_ref.resize(33, 0);
    CHECK(err(raw_token(TokenType::signed_first_contact, cat({ns, name, uid, short_ref}))) == code(TokenError::bad_field_length));

    // Lengths: oversized, overrunning, wrong fixed size.
    CHECK(err(raw_token(TokenType::mac, cat({field(0x01, std::string(64, 'a')), name, uid}))) == code(TokenError::bad_field_length));
    CHECK(err(raw_token(TokenType::mac, cat({ns, field(0x02, std::string(254, 'a')), uid}))) == code(TokenError::bad_field_length));
    Bytes overrun = raw_token(TokenType::mac, cat({ns, name, uid}));
    overrun[44 + 1] = 200;  // the namespace's length runs into the MAC
    CHECK(err(overrun) == code(TokenError::bad_field_length));
    Bytes uid15 = {0x03, 15};
    uid15.resize(17, 1);
    CHECK(err(raw_token(TokenType::mac, cat({ns, name, uid15}))) == code(TokenError::bad_field_length));

    // Names: Kubernetes rules, so no invalid UTF-8, no upper case, no NUL.
    CHECK(err(raw_token(TokenType::mac, cat({field(0x01, "Default"), name, uid}))) == code(TokenError::bad_name));
    CHECK(err(raw_token(TokenType::mac, cat({field(0x01, "d\xff"), name, uid}))) == code(TokenError::bad_name));
    CHECK(err(raw_token(TokenType::mac, cat({field(0x01, ""), name, uid}))) == code(TokenError::bad_name));
    CHECK(err(raw_token(TokenType::mac, cat({ns, field(0x02, std::string("we\0b", 4)), uid}))) == code(TokenError::bad_name));
    CHECK(err(raw_token(TokenType::mac, cat({ns, field(0x02, "caf\xc3\xa9"), uid}))) == code(TokenError::bad_name));
    Bytes zero_uid = {0x03, 16};
    zero_uid.resize(18, 0);
    CHECK(err(raw_token(TokenType::mac, cat({ns, name, zero_uid}))) == code(TokenError::bad_name));

    // The length field itself.
    Bytes small = raw_token(TokenType::mac, cat({ns, name, uid}));
    small[3] = static_cast<uint8_t>(small[3] - 1);
    CHECK(err(small) == code(TokenError::trailing_bytes));
    // encode refuses what parse refuses.
    Token bad;
    bad.pod_namespace = "Default";
    bad.pod_name = "x";
    bad.pod_uid[0] = 1;
    bad.validity_ms = 5;
    bad.auth.assign(kMacSize, 0);
    CHECK(encode(bad).error().code == code(TokenError::bad_name));
}

TEST_CASE("binding: wrong port, address, ISN, role are rejected") {
    const TimePoint now = Clock::now();
    Bytes t = mac_token(now);
    Receiver r;
    REQUIRE(r.keys.add(world().a.cert.get(), world().a.identity).ok());
    auto expect_mismatch = [&](ConnBinding b) {
        auto v = r.verify(t, Role::client, b, now);
        REQUIRE_FALSE(v.ok());
        CHECK(v.error().code == code(TokenError::binding_mismatch));
    };
    ConnBinding b = syn_binding();
    b.client_port++;
    expect_mismatch(b);
    b = syn_binding();
    b.server_port = 8081;
    expect_mismatch(b);
    b = syn_binding();
    b.client_addr[3] = 8;
    expect_mismatch(b);
    b = syn_binding();
    b.server_addr[0] = 192;
    expect_mismatch(b);
    b = syn_binding();
    b.client_isn ^= 1;
    expect_mismatch(b);
    b = syn_binding();
    b.ipv6 = true;  // same first bytes, other family
    expect_mismatch(b);
    expect_mismatch(synack_binding());  // a server ISN the token did not cover

    // The SYN-ACK token: bound to the server ISN too.
    Bytes s = mac_token(now, Role::server, synack_binding());
    ConnBinding other = synack_binding();
    *other.server_isn ^= 0x100;
    auto v = r.verify(s, Role::server, other, now);
    REQUIRE_FALSE(v.ok());
    CHECK(v.error().code == code(TokenError::binding_mismatch));

    // A client token reflected as a server token, and the other way round.
    auto w1 = r.verify(t, Role::server, syn_binding(), now);
    REQUIRE_FALSE(w1.ok());
    CHECK(w1.error().code == code(TokenError::wrong_role));
    CHECK(r.verify(s, Role::client, synack_binding(), now).error().code == code(TokenError::wrong_role));

    CHECK(r.verify(t, Role::client, syn_binding(), now).ok());
    CHECK(r.verify(s, Role::server, synack_binding(), now).ok());

    // IPv6 bindings.
    ConnBinding v6;
    v6.ipv6 = true;
    v6.client_addr = {0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    v6.server_addr = {0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2};
    v6.client_port = 1;
    v6.server_port = 2;
    Bytes t6 = mac_token(now, Role::client, v6);
    CHECK(r.verify(t6, Role::client, v6, now).ok());
    v6.server_addr[15] = 3;
    CHECK(r.verify(t6, Role::client, v6, now).error().code == code(TokenError::binding_mismatch));
}

TEST_CASE("replay, expiry, clock skew, validity bound") {
    const TimePoint now = Clock::now();
    Receiver r;
    REQUIRE(r.keys.add(world().a.cert.get(), world().a.identity).ok());
    Bytes t = mac_token(now);
    REQUIRE(r.verify(t, Role::client, syn_binding(), now).ok());
    auto again = r.verify(t, Role::client, syn_binding(), now + 1s);
    REQUIRE_FALSE(again.ok());
    CHECK(again.error().code == code(TokenError::replay));

    // Validity 5 s + skew 2 s: accepted up to 7 s after issue, not later.
    const int64_t issued = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
    const TimePoint t0{std::chrono::milliseconds(issued)};
    CHECK(r.verify(mac_token(now), Role::client, syn_binding(), t0 + 7s).ok());
    auto late = r.verify(mac_token(now), Role::client, syn_binding(), t0 + 7s + 1ms);
    REQUIRE_FALSE(late.ok());
    CHECK(late.error().code == code(TokenError::expired));
    // Issued in the future: 2 s of skew is tolerated, more is not.
    CHECK(r.verify(mac_token(now), Role::client, syn_binding(), t0 - 2s).ok());
    auto early = r.verify(mac_token(now), Role::client, syn_binding(), t0 - 2s - 1ms);
    REQUIRE_FALSE(early.ok());
    CHECK(early.error().code == code(TokenError::not_yet_valid));
    // The sender may not choose a longer life than the receiver accepts.
    MintOptions longer;
    longer.validity = 20s;
    auto lt = r.verify(mac_token(now, Role::client, syn_binding(), longer), Role::client, syn_binding(), now);
    REQUIRE_FALSE(lt.ok());
    CHECK(lt.error().code == code(TokenError::validity_too_long));

    // The replay cache forgets a token once it could no longer be accepted.
    ReplayCache small(2);
    ReplayCache::Key k1{1}, k2{2}, k3{3};
    CHECK(small.insert(k1, now + 1s, now) == ReplayCache::Outcome::fresh);
    CHECK(small.insert(k1, now + 1s, now) == ReplayCache::Outcome::replay);
    CHECK(small.insert(k2, now + 5s, now) == ReplayCache::Outcome::fresh);
    CHECK(small.insert(k3, now + 5s, now) == ReplayCache::Outcome::full);  // fails closed
    CHECK(small.insert(k3, now + 5s, now + 1s) == ReplayCache::Outcome::fresh);  // k1 expired
    CHECK(small.insert(k1, now + 9s, now + 1s) == ReplayCache::Outcome::full);
}

TEST_CASE("replay recorded by the receiver once admitted: checked at verification, one step to insert") {
    const TimePoint now = Clock::now();
    Receiver r;
    REQUIRE(r.keys.add(world().a.cert.get(), world().a.identity).ok());
    r.ctx.record_replay = false;
    const Bytes t = mac_token(now);
    // Verified, not recorded: a receiver whose policy refuses the connection keeps nothing.
    auto v1 = r.verify(t, Role::client, syn_binding(), now);
    REQUIRE_MESSAGE(v1.ok(), v1.error().message);
    CHECK(r.replay.size() == 0);
    auto v2 = r.verify(t, Role::client, syn_binding(), now);  // again: nothing was admitted yet
    REQUIRE(v2.ok());
    // Admitted: recorded for the sender's node. The second copy, verified
    // before the first was recorded, is refused when it is recorded in turn.
    CHECK(record_replay(r.replay, *v1, now).ok());
    CHECK(r.replay.held_by(v1->claims.node_name) == 1);
    auto again = record_replay(r.replay, *v2, now);
    REQUIRE_FALSE(again.ok());
    CHECK(again.error().code == code(TokenError::replay));
    // And a third copy is refused at verification already.
    auto v3 = r.verify(t, Role::client, syn_binding(), now);
    REQUIRE_FALSE(v3.ok());
    CHECK(v3.error().code == code(TokenError::replay));
    // The entry lives until the token could no longer be accepted.
    // (issued_at is `now` in whole ms: 5 s validity + 2 s skew later, plus 1 ms.)
    CHECK(v1->replay_until > now + 7s);
    CHECK(v1->replay_until <= now + 7s + 1ms);
}

TEST_CASE("replay cache: a quota per owner (the sender's node)") {
    const TimePoint now = Clock::now();
    ReplayCache c(4, 2);
    CHECK(c.insert(ReplayCache::Key{1}, now + 5s, now, "node-a") == ReplayCache::Outcome::fresh);
    CHECK(c.insert(ReplayCache::Key{2}, now + 5s, now, "node-a") == ReplayCache::Outcome::fresh);
    CHECK(c.insert(ReplayCache::Key{3}, now + 5s, now, "node-a") == ReplayCache::Outcome::owner_full);
    CHECK(c.insert(ReplayCache::Key{1}, now + 5s, now, "node-b") == ReplayCache::Outcome::replay);  // whoever recorded it
    CHECK(c.insert(ReplayCache::Key{4}, now + 5s, now, "node-b") == ReplayCache::Outcome::fresh);
    CHECK(c.insert(ReplayCache::Key{5}, now + 9s, now, "node-b") == ReplayCache::Outcome::fresh);
    CHECK(c.insert(ReplayCache::Key{6}, now + 9s, now, "node-c") == ReplayCache::Outcome::full);
    CHECK(c.held_by("node-a") == 2);
    CHECK(c.contains(ReplayCache::Key{2}, now));
    // Past their time node-a's entries go, and its quota with them.
    CHECK_FALSE(c.contains(ReplayCache::Key{2}, now + 5s));
    CHECK(c.held_by("node-a") == 0);
    CHECK(c.insert(ReplayCache::Key{3}, now + 10s, now + 5s, "node-a") == ReplayCache::Outcome::fresh);
    CHECK(c.size() == 2);
}

TEST_CASE("trust domains, chains, certificates in signed tokens") {
    const TimePoint now = Clock::now();
    // node-x of another cluster whose CA this receiver also trusts.
    auto other = Authority::create(AuthorityOptions{"other.example", kDefaultCaValidity, std::nullopt});
    REQUIRE(other.ok());
    auto x = other->issue("node-x");
    REQUIRE(x.ok());
    auto both = TrustBundle::from_pem(world().ca.bundle_pem() + other->bundle_pem());
    REQUIRE(both.ok());

    Receiver r;
    Bytes tx = signed_token(now, *x);
    auto v = r.verify(tx, Role::client, syn_binding(), now);  // bundle without other.example's CA
    REQUIRE_FALSE(v.ok());
    CHECK(v.error().code == code(TokenError::chain_not_to_bundle));

    r.ctx.bundle = &*both;
    auto w = r.verify(tx, Role::client, syn_binding(), now);  // chains, but its trust domain is not accepted here
    REQUIRE_FALSE(w.ok());
    CHECK(w.error().code == code(TokenError::wrong_trust_domain));
    CHECK(r.keys.size() == 0);

    r.ctx.accepted_trust_domains = {"cluster.local", "other.example"};
    auto ok = r.verify(signed_token(now, *x), Role::client, syn_binding(), now);
    REQUIRE_MESSAGE(ok.ok(), ok.error().message);
    CHECK(ok->claims.trust_domain == "other.example");
    CHECK(ok->claims.node_name == "node-x");

    // An expired node certificate.
    IssueOptions past;
    past.not_before = now - 48h;
    auto old = world().ca.issue("node-a", past);
    REQUIRE(old.ok());
    auto e = r.verify(signed_token(now, *old), Role::client, syn_binding(), now);
    REQUIRE_FALSE(e.ok());
    CHECK(e.error().code == code(TokenError::certificate_expired));

    // Garbage where the certificate goes.
    auto p = parse(signed_token(now, world().a));
    REQUIRE(p.ok());
    p->certificate = {0x30, 0x03, 0x02, 0x01, 0x01};
    auto g = r.verify(*encode(*p), Role::client, syn_binding(), now);
    REQUIRE_FALSE(g.ok());
    CHECK(g.error().code == code(TokenError::bad_certificate));
}

TEST_CASE("the receiver's cluster view decides which pods a node may vouch for") {
    const TimePoint now = Clock::now();
    Receiver r;
    REQUIRE(r.keys.add(world().a.cert.get(), world().a.identity).ok());
    r.ctx.pod_on_node = [](const Claims& c, const ConnBinding& b) {
        return c.node_name == "node-a" && c.pod_name == "web-1" && b.client_addr[3] == 7;
    };
    auto v = r.verify(mac_token(now), Role::client, syn_binding(), now);  // claims web-6f9c..., not on node-a
    REQUIRE_FALSE(v.ok());
    CHECK(v.error().code == code(TokenError::pod_not_on_node));
    CHECK(r.replay.size() == 0);
}

TEST_CASE("pod uids") {
    auto u = parse_pod_uid("3F2A1C9E-5B7D-4E8F-9A0B-1C2D3E4F5A6B");
    REQUIRE(u);
    CHECK(pod_uid_string(*u) == "3f2a1c9e-5b7d-4e8f-9a0b-1c2d3e4f5a6b");
    CHECK_FALSE(parse_pod_uid("3f2a1c9e5b7d-4e8f-9a0b-1c2d3e4f5a6b-"));
    CHECK_FALSE(parse_pod_uid("3f2a1c9e-5b7d-4e8f-9a0b-1c2d3e4f5a6"));
    CHECK_FALSE(parse_pod_uid("3f2a1c9e-5b7d-4e8f-9a0b-1c2d3e4f5a6g"));
}

// Writes the fuzz corpus seeds (test/fuzz/corpus/token/) when
// SIGNET_TOKEN_CORPUS_OUT names a folder: tokens from node-a to node-b made
// with the fixed keys at the fuzz target's clock, and malformed variants.
TEST_CASE("fuzz corpus seeds") {
    const char* out = std::getenv("SIGNET_TOKEN_CORPUS_OUT");
    if (!out) return;
    const TimePoint now{std::chrono::milliseconds(testkeys::kNowMs)};
    auto bundle = TrustBundle::from_pem(testkeys::kCaPem);
    REQUIRE(bundle.ok());
    auto a = NodeCredentials::from_pem(testkeys::kNodeAKey, testkeys::kNodeACert, *bundle, now);
    auto b = NodeCredentials::from_pem(testkeys::kNodeBKey, testkeys::kNodeBCert, *bundle, now);
    REQUIRE((a.ok() && b.ok()));
    auto key = PairKeyCache(*a).add(b->cert.get(), b->identity);
    REQUIRE(key.ok());
    ConnBinding syn;
    syn.client_addr = {10, 0, 0, 1};
    syn.server_addr = {10, 0, 1, 2};
    syn.client_port = 40000;
    syn.server_port = 80;
    syn.client_isn = 0x01020304;
    ConnBinding synack = syn;
    synack.server_isn = 0x0a0b0c0d;
    auto write = [&](const std::string& name, const Bytes& bytes) {
        std::ofstream f(std::string(out) + "/" + name, std::ios::binary);
        f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    };
    MintOptions ref;
    ref.include_certificate = false;
    write("mac-client.bin", *make_mac_token(**key, Role::client, syn, pod(), now));
    write("mac-server.bin", *make_mac_token(**key, Role::server, synack, pod(), now));
    write("signed-cert.bin", *make_signed_token(*a, Role::client, syn, pod(), now));
    write("signed-ref.bin", *make_signed_token(*a, Role::client, syn, pod(), now, ref));
    write("signed-server.bin", *make_signed_token(*a, Role::server, synack, pod(), now));
    Bytes bad = *make_mac_token(**key, Role::client, syn, pod(), now);
    bad.back() ^= 1;
    write("mac-bad-mac.bin", bad);
    Bytes trunc = *make_signed_token(*a, Role::client, syn, pod(), now);
    trunc.resize(trunc.size() / 2);
    write("signed-truncated.bin", trunc);
    write("raw-duplicate.bin", raw_token(TokenType::mac, cat({field(1, "a"), field(1, "a"), field(2, "b"), uid_field()})));
    write("raw-v2.bin", Bytes{2, 2, 0, 4});
}

// The fuzz target's valid seeds really verify (so fuzzing reaches the
// success path), at its fixed clock, as node-b.
TEST_CASE("the fuzz corpus's valid seeds verify with the fixed keys") {
    const TimePoint now{std::chrono::milliseconds(testkeys::kNowMs)};
    auto bundle = TrustBundle::from_pem(testkeys::kCaPem);
    REQUIRE(bundle.ok());
    auto a = NodeCredentials::from_pem(testkeys::kNodeAKey, testkeys::kNodeACert, *bundle, now);
    auto b = NodeCredentials::from_pem(testkeys::kNodeBKey, testkeys::kNodeBCert, *bundle, now);
    REQUIRE((a.ok() && b.ok()));
    ConnBinding syn;
    syn.client_addr = {10, 0, 0, 1};
    syn.server_addr = {10, 0, 1, 2};
    syn.client_port = 40000;
    syn.server_port = 80;
    syn.client_isn = 0x01020304;
    ConnBinding synack = syn;
    synack.server_isn = 0x0a0b0c0d;
    for (auto seed : std::initializer_list<std::pair<const char*, Role>>{
             {"mac-client.bin", Role::client}, {"mac-server.bin", Role::server}, {"signed-cert.bin", Role::client},
             {"signed-ref.bin", Role::client}, {"signed-server.bin", Role::server}}) {
        // Not a structured binding: the CHECK macros' lambdas capture these (clang 14).
        const char* name = seed.first;
        Role role = seed.second;
        std::ifstream f(std::string(SIGNET_TOKEN_CORPUS) + "/" + name, std::ios::binary);
        REQUIRE_MESSAGE(f, name);
        Bytes bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
        PairKeyCache keys(*b);
        REQUIRE(keys.add(a->cert.get(), a->identity).ok());
        ReplayCache replay;
        VerifyContext ctx;
        ctx.bundle = &*bundle;
        ctx.pair_keys = &keys;
        ctx.replay = &replay;
        auto v = verify_token(bytes, role, role == Role::server ? synack : syn, now, ctx);
        CHECK_MESSAGE(v.ok(), name << ": " << (v.ok() ? "" : v.error().message));
    }
}

// issue #13, item 4: the pair keys (and the peer certificates they were
// verified from) belong to the trust bundle that vouched for them. When the
// bundle loses a CA, that CA's nodes are refused at the next token, not when
// their pair keys expire.
TEST_CASE("a bundle without the peer's CA refuses its next MAC token at once") {
    auto ca_a = Authority::create({}), ca_b = Authority::create({});
    REQUIRE((ca_a.ok() && ca_b.ok()));
    auto a = ca_a->issue("node-a"), b = ca_b->issue("node-b");
    REQUIRE((a.ok() && b.ok()));
    auto both = TrustBundle::from_pem(ca_a->bundle_pem() + ca_b->bundle_pem());
    auto both_again = TrustBundle::from_pem(ca_a->bundle_pem() + ca_b->bundle_pem());
    auto only_b = TrustBundle::from_pem(ca_b->bundle_pem());
    REQUIRE((both.ok() && both_again.ok() && only_b.ok()));

    const TimePoint now = Clock::now();
    PairKeyCache keys(*b);
    ReplayCache replay;
    VerifyContext ctx;
    ctx.bundle = &*both;
    ctx.pair_keys = &keys;
    ctx.replay = &replay;
    // First contact: node-a's signed token; then MAC tokens under the pair key.
    auto first = make_signed_token(*a, Role::client, syn_binding(), pod(), now);
    REQUIRE(first.ok());
    auto v = verify_token(*first, Role::client, syn_binding(), now, ctx);
    REQUIRE_MESSAGE(v.ok(), v.error().message);
    auto key = PairKeyCache(*a).add(b->cert.get(), b->identity);
    REQUIRE(key.ok());
    auto mac = [&](TimePoint at) {
        auto t = make_mac_token(**key, Role::client, syn_binding(), pod(), at);
        REQUIRE(t.ok());
        return *t;
    };
    auto ok = verify_token(mac(now + 1ms), Role::client, syn_binding(), now + 1ms, ctx);
    CHECK_MESSAGE(ok.ok(), (ok.ok() ? "" : ok.error().message));
    // The same CAs read again (a reload of an unchanged file): nothing forgotten.
    ctx.bundle = &*both_again;
    ok = verify_token(mac(now + 2ms), Role::client, syn_binding(), now + 2ms, ctx);
    CHECK_MESSAGE(ok.ok(), (ok.ok() ? "" : ok.error().message));

    // node-a's CA leaves the bundle: its very next MAC token is refused.
    ctx.bundle = &*only_b;
    auto r = verify_token(mac(now + 3ms), Role::client, syn_binding(), now + 3ms, ctx);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == code(TokenError::unknown_key_id));
    // Nor does a signed token by certificate reference, or with the certificate, get in.
    MintOptions by_ref;
    by_ref.include_certificate = false;
    auto ref = make_signed_token(*a, Role::client, syn_binding(), pod(), now + 4ms, by_ref);
    REQUIRE(ref.ok());
    r = verify_token(*ref, Role::client, syn_binding(), now + 4ms, ctx);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == code(TokenError::unknown_certificate));
    auto full = make_signed_token(*a, Role::client, syn_binding(), pod(), now + 5ms);
    REQUIRE(full.ok());
    r = verify_token(*full, Role::client, syn_binding(), now + 5ms, ctx);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == code(TokenError::chain_not_to_bundle));
    CHECK(keys.size() == 0);
}

// issue #13, item 4: a signed token whose certificate (of the cluster's own
// CA) lives longer than a day is refused with its own reason.
TEST_CASE("a signed token with a certificate over 24 h: certificate_lifetime_too_long") {
    signet::identity::test::TempDir tmp;
    REQUIRE(init_authority(tmp / "ca", {}).ok());
    auto ca = Authority::load(tmp / "ca");
    auto bundle = TrustBundle::from_pem(ca->bundle_pem());
    REQUIRE(bundle.ok());
    auto b = ca->issue("node-b");
    REQUIRE(b.ok());
    const TimePoint now = Clock::now();
    NodeCredentials a;
    auto key = generate_p256_key();
    REQUIRE(key.ok());
    a.key = std::move(*key);
    a.cert = signet::identity::test::hand_signed_node_cert(tmp / "ca", a.key.get(), "node-a", now - 1h, now + 24h * 30);
    a.chain_der = cert_der(a.cert.get());
    a.identity = NodeIdentity{"cluster.local", "node-a", fingerprint(a.cert.get()), cert_not_before(a.cert.get()),
                              cert_not_after(a.cert.get())};
    auto t = make_signed_token(a, Role::client, syn_binding(), pod(), now);
    REQUIRE(t.ok());
    PairKeyCache keys(*b);
    ReplayCache replay;
    VerifyContext ctx;
    ctx.bundle = &*bundle;
    ctx.pair_keys = &keys;
    ctx.replay = &replay;
    auto r = verify_token(*t, Role::client, syn_binding(), now, ctx);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == code(TokenError::certificate_lifetime_too_long));
    CHECK(std::string(to_string(TokenError::certificate_lifetime_too_long)) == "certificate_lifetime_too_long");
    CHECK(keys.size() == 0);
}
