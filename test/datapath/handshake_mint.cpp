// handshake_mint: mints one identity token with chosen credentials, for the
// attack tests (test/integration/test_handshake_attacks.py). Prints the token
// as lowercase hex on stdout (one line); errors on stderr, exit 1 (2: usage).
//
//   handshake_mint CREDENTIALS --role client|server --src IP --dst IP --sport N --dport N --isn N
//                  [--server-isn N] --namespace NS --pod NAME --uid UUID
//                  [--signed (default) | --fingerprint-only | --mac-with-peer-cert FILE]
//                  [--issued-at-ms N] [--validity-ms N]
//
// CREDENTIALS is one of
//   --creds DIR          node.key, node.crt and trust-bundle.pem as `signetctl authority issue`
//                        (or signetd --authority) left them; loaded (and verified) at now
//   --authority CA_DIR --node NAME [--cert-not-before-s-ago N] [--cert-validity-s N]
//                        a node certificate issued in memory by that authority (e.g. one
//                        that expired: --cert-not-before-s-ago 172800 --cert-validity-s 3600)
//
// --src/--dst/--sport/--dport/--isn are the connection's client -> server view
// (the binding is always written client -> server), whatever the role.
// --mac-with-peer-cert FILE: a MAC token under the pair key shared with the
// node whose certificate (PEM) is FILE (verified against the credentials'
// trust bundle).
#include <arpa/inet.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "identity/authority.h"
#include "identity/crypto.h"
#include "identity/pair_keys.h"
#include "identity/token.h"

using namespace signet::identity;
using signet::Error;
using signet::Result;

namespace {

int usage(const std::string& msg) {
    std::fprintf(stderr, "handshake_mint: %s\n(see the comment at the top of test/datapath/handshake_mint.cpp)\n",
                 msg.c_str());
    return 2;
}

int fail(const std::string& msg) {
    std::fprintf(stderr, "handshake_mint: %s\n", msg.c_str());
    return 1;
}

std::optional<std::string> read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return std::nullopt;
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

bool parse_u64(const std::string& s, uint64_t max, uint64_t& out) {
    if (s.empty()) return false;
    char* end = nullptr;
    errno = 0;
    unsigned long long v = std::strtoull(s.c_str(), &end, 10);
    if (errno != 0 || *end != '\0' || v > max) return false;
    out = v;
    return true;
}

}  // namespace

int main(int argc, char** argv) {
    static const std::vector<std::string> with_value = {
        "--creds", "--authority", "--node", "--cert-not-before-s-ago", "--cert-validity-s", "--role", "--src", "--dst",
        "--sport", "--dport", "--isn", "--server-isn", "--namespace", "--pod", "--uid", "--mac-with-peer-cert",
        "--issued-at-ms", "--validity-ms"};
    static const std::vector<std::string> switches = {"--signed", "--fingerprint-only"};
    std::map<std::string, std::string> f;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        bool known = false;
        for (const auto& w : with_value)
            if (a == w) {
                if (i + 1 >= argc) return usage(a + " needs a value");
                f[a] = argv[++i];
                known = true;
            }
        for (const auto& s : switches)
            if (a == s) {
                f[a] = "1";
                known = true;
            }
        if (!known) return usage("unknown argument " + a);
    }
    auto need = [&](const char* k) -> const std::string* {
        auto it = f.find(k);
        return it == f.end() ? nullptr : &it->second;
    };
    for (const char* k : {"--role", "--src", "--dst", "--sport", "--dport", "--isn", "--namespace", "--pod", "--uid"})
        if (!need(k)) return usage(std::string("missing ") + k);
    if (!!need("--creds") == !!need("--authority")) return usage("give exactly one of --creds DIR, --authority CA_DIR");

    const TimePoint now = Clock::now();

    // ---- the credentials
    NodeCredentials creds;
    std::optional<TrustBundle> bundle;
    if (const auto* dir = need("--creds")) {
        auto b = TrustBundle::load(*dir + "/trust-bundle.pem");
        if (!b) return fail("trust bundle: " + b.error().message);
        bundle = *b;
        auto c = NodeCredentials::load(*dir, *bundle, now);
        if (!c) return fail("credentials in " + *dir + ": " + c.error().message);
        creds = std::move(*c);
    } else {
        const std::string ca_dir = *need("--authority");
        const auto* node = need("--node");
        if (!node) return usage("--authority needs --node NAME");
        auto ca = Authority::load(ca_dir);
        if (!ca) return fail("authority " + ca_dir + ": " + ca.error().message);
        IssueOptions io;
        uint64_t v = 0;
        if (const auto* s = need("--cert-validity-s")) {
            if (!parse_u64(*s, 100000000, v) || v == 0) return usage("bad --cert-validity-s");
            io.validity = std::chrono::seconds(v);
        }
        if (const auto* s = need("--cert-not-before-s-ago")) {
            if (!parse_u64(*s, 100000000, v)) return usage("bad --cert-not-before-s-ago");
            io.not_before = now - std::chrono::seconds(v);
        }
        auto c = ca->issue(*node, io);
        if (!c) return fail("issue: " + c.error().message);
        creds = std::move(*c);
        auto b = TrustBundle::from_pem(ca->bundle_pem());
        if (!b) return fail("trust bundle: " + b.error().message);
        bundle = *b;
    }

    // ---- the binding
    ConnBinding bind;
    const std::string src = *need("--src"), dst = *need("--dst");
    if (inet_pton(AF_INET, src.c_str(), bind.client_addr.data()) == 1 &&
        inet_pton(AF_INET, dst.c_str(), bind.server_addr.data()) == 1) {
        bind.ipv6 = false;
    } else if (inet_pton(AF_INET6, src.c_str(), bind.client_addr.data()) == 1 &&
               inet_pton(AF_INET6, dst.c_str(), bind.server_addr.data()) == 1) {
        bind.ipv6 = true;
    } else {
        return usage("--src/--dst: two IPv4 or two IPv6 addresses");
    }
    uint64_t n = 0;
    if (!parse_u64(*need("--sport"), 65535, n)) return usage("bad --sport");
    bind.client_port = static_cast<uint16_t>(n);
    if (!parse_u64(*need("--dport"), 65535, n)) return usage("bad --dport");
    bind.server_port = static_cast<uint16_t>(n);
    if (!parse_u64(*need("--isn"), 0xffffffffu, n)) return usage("bad --isn");
    bind.client_isn = static_cast<uint32_t>(n);
    if (const auto* s = need("--server-isn")) {
        if (!parse_u64(*s, 0xffffffffu, n)) return usage("bad --server-isn");
        bind.server_isn = static_cast<uint32_t>(n);
    }

    Role role;
    if (*need("--role") == "client") role = Role::client;
    else if (*need("--role") == "server") role = Role::server;
    else return usage("--role client|server");

    PodClaim pod;
    pod.pod_namespace = *need("--namespace");
    pod.pod_name = *need("--pod");
    auto uid = parse_pod_uid(*need("--uid"));
    if (!uid) return usage("bad --uid (8-4-4-4-12 lowercase hex)");
    pod.pod_uid = *uid;

    MintOptions mo;
    if (const auto* s = need("--validity-ms")) {
        if (!parse_u64(*s, kMaxValidityMs, n) || n == 0) return usage("bad --validity-ms");
        mo.validity = std::chrono::milliseconds(n);
    }
    TimePoint issued = now;
    if (const auto* s = need("--issued-at-ms")) {
        if (!parse_u64(*s, UINT64_MAX, n)) return usage("bad --issued-at-ms");
        issued = TimePoint(std::chrono::duration_cast<Clock::duration>(std::chrono::milliseconds(n)));
    }

    Result<Bytes> token = Error{};
    if (const auto* peer_file = need("--mac-with-peer-cert")) {
        auto pem = read_file(*peer_file);
        if (!pem) return fail("cannot read " + *peer_file);
        auto certs = parse_certs_pem(*pem);
        if (!certs || certs->empty()) return fail("peer certificate: " + (certs ? std::string("empty") : certs.error().message));
        X509* peer = certs->front().get();
        auto id = bundle->verify_node(peer, {}, now);
        if (!id) return fail("peer certificate does not verify: " + id.error().message);
        PairKeyCache cache(creds);
        auto key = cache.add(peer, *id);
        if (!key) return fail("pair key: " + key.error().message);
        token = make_mac_token(**key, role, bind, pod, issued, mo);
    } else {
        mo.include_certificate = !need("--fingerprint-only");
        token = make_signed_token(creds, role, bind, pod, issued, mo);
    }
    if (!token) return fail("mint: " + token.error().message);
    std::printf("%s\n", hex(*token).c_str());
    return 0;
}
