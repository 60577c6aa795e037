// signet identity: the identity token a node puts into a pod's SYN (and the
// peer's node into the SYN-ACK), its wire format, and its verification.
// docs/handshake.md has the byte tables; in short (big-endian):
//
//   0  version (1)   1  type (1 signed, 2 MAC)   2  length (u16, whole token)
//   4  role (1 client/SYN, 2 server/SYN-ACK)     5  flags (0)
//   6  issued_at (u64, Unix ms)   14 validity (u16 ms)   16 nonce (16)
//   32 binding tag (4: SHA-256(canonical binding)[0..4))
//   36 key id (8, MAC tokens only)
//   fields: tag (1) + length (1; 2 for tags >= 0x80) + value, tags strictly
//           increasing: 0x01 namespace, 0x02 pod name, 0x03 pod uid (16),
//           signed only: 0x10 certificate fingerprint (32) | 0x80 certificate (DER)
//   trailer: MAC tokens HMAC-SHA256[0..16) ; signed tokens ECDSA P-256 r||s (64)
//
// The MAC / signature covers a label, the canonical connection binding (as
// the receiver observed it, never taken from the token) and every token byte
// before the trailer.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "identity/authority.h"
#include "identity/pair_keys.h"
#include "identity/replay_cache.h"

namespace signet::identity {

constexpr uint8_t kTokenVersion = 1;
constexpr size_t kMaxTokenSize = 1200;
constexpr size_t kMacSize = 16;
constexpr size_t kSignatureSize = 64;
constexpr size_t kMaxCertificateSize = 1000;
constexpr uint16_t kMaxValidityMs = 30000;

enum class TokenType : uint8_t { signed_first_contact = 1, mac = 2 };
enum class Role : uint8_t { client = 1, server = 2 };  // client: in the SYN; server: in the SYN-ACK

using Nonce = std::array<uint8_t, 16>;
using BindingTag = std::array<uint8_t, 4>;
using PodUid = std::array<uint8_t, 16>;

// Why a token was refused. Error::code of parse/verify is one of these.
enum class TokenError : int {
    // parse
    truncated = 1,           // shorter than its header or its length field says
    trailing_bytes,          // longer than its length field says
    too_large,               // over kMaxTokenSize
    bad_version,
    bad_type,
    bad_role,
    bad_flags,
    bad_validity,            // 0 or over kMaxValidityMs
    bad_field_length,        // a field overruns the token, or has the wrong/oversized length
    unknown_field,           // a tag this version/type does not define
    duplicate_field,         // a tag repeated, or out of order
    missing_field,
    bad_name,                // namespace / pod name against the Kubernetes rules; all-zero uid
    // verify
    wrong_role,              // a SYN-ACK token in a SYN or vice versa
    expired,                 // issued_at + validity + skew is past
    not_yet_valid,           // issued_at - skew is in the future
    validity_too_long,       // more than the receiver accepts
    unknown_key_id,          // MAC token: no cached pair key with this id
    unknown_certificate,     // signed token: fingerprint reference not cached
    bad_certificate,         // signed token: certificate not decodable / not a node certificate
    chain_not_to_bundle,     // signed token: certificate does not chain to the bundle
    certificate_expired,     // signed token: certificate outside its validity at `now`
    wrong_trust_domain,      // sender's trust domain not accepted here, or not its CA's
    binding_mismatch,        // made for another connection (address, port, ISN)
    bad_signature,
    bad_mac,
    pod_not_on_node,         // the cluster view says the claimed pod does not run on the sender's node
    replay,
    replay_cache_full,
    internal,
    certificate_lifetime_too_long,  // signed token: notAfter - notBefore over kMaxNodeCertLifetime (24 h + 10 min)
};
const char* to_string(TokenError e);

// The connection a token is bound to, always written client -> server
// (whichever side observes it). server_isn is known from the SYN-ACK on.
struct ConnBinding {
    bool ipv6 = false;
    std::array<uint8_t, 16> client_addr{};  // IPv4: first 4 bytes
    std::array<uint8_t, 16> server_addr{};
    uint16_t client_port = 0;
    uint16_t server_port = 0;
    uint32_t client_isn = 0;
    std::optional<uint32_t> server_isn;

    // family(1: 4|6) addr_c addr_s (4|16 each) port_c port_s (2 each)
    // isn_c (4) has_isn_s (1) [isn_s (4)]
    Bytes canonical() const;
    BindingTag tag() const;
};

// The parsed token, field by field. encode(parse(b)) == b for every b that
// parses.
struct Token {
    uint8_t version = kTokenVersion;
    TokenType type = TokenType::mac;
    Role role = Role::client;
    uint8_t flags = 0;
    uint64_t issued_at_ms = 0;
    uint16_t validity_ms = 0;
    Nonce nonce{};
    BindingTag binding_tag{};
    KeyId key_id{};                          // MAC tokens
    std::string pod_namespace;
    std::string pod_name;
    PodUid pod_uid{};
    std::optional<Fingerprint> cert_ref;     // signed: the certificate by fingerprint ...
    Bytes certificate;                       // ... or in full (DER)
    Bytes auth;                              // MAC (16) or r||s (64)

    // The bytes covered by the MAC / signature (everything before `auth`).
    size_t authenticated_size() const;
};

Result<Bytes> encode(const Token& t);
Result<Token> parse(std::span<const uint8_t> bytes);

// The pod a node speaks for.
struct PodClaim {
    std::string pod_namespace;
    std::string pod_name;
    PodUid pod_uid{};
};

// What a verified token proves: the sender node's identity from its
// certificate (or the pair key derived from it), the pod it vouches for.
struct Claims {
    std::string trust_domain;
    std::string node_name;
    std::string pod_namespace;
    std::string pod_name;
    PodUid pod_uid{};
};

struct VerifiedToken {
    Claims claims;
    TokenType type{};
    Nonce nonce{};
    Fingerprint peer_fingerprint{};
    std::shared_ptr<const PairKey> pair_key;  // the (now) cached key for the sender's node
    // Its replay-cache entry: SHA-256(nonce || canonical binding)[0..16),
    // live until the token could no longer be accepted.
    ReplayCache::Key replay_key{};
    TimePoint replay_until{};
};

struct MintOptions {
    std::chrono::milliseconds validity{5000};
    bool include_certificate = true;  // signed tokens: false to send the fingerprint only
};

// A MAC token under a cached pair key.
Result<Bytes> make_mac_token(const PairKey& key, Role role, const ConnBinding& binding, const PodClaim& pod, TimePoint now,
                             const MintOptions& opts = {});
// A signed first-contact token from this node.
Result<Bytes> make_signed_token(const NodeCredentials& self, Role role, const ConnBinding& binding, const PodClaim& pod,
                                TimePoint now, const MintOptions& opts = {});

struct VerifyContext {
    const TrustBundle* bundle = nullptr;
    PairKeyCache* pair_keys = nullptr;   // MAC tokens; signed tokens add the sender to it
    ReplayCache* replay = nullptr;
    // true: a verified token is recorded in `replay` here (its sender's node
    // the owner). false: only checked against it (a token seen before is
    // still `replay`); the caller records it with record_replay once it has
    // admitted the connection, so tokens its policy refuses fill nothing.
    bool record_replay = true;
    std::vector<std::string> accepted_trust_domains;  // empty: only pair_keys->self().trust_domain
    std::chrono::milliseconds max_skew{2000};
    std::chrono::milliseconds max_validity{10000};
    // The receiver's own cluster view: does the claimed pod run on the
    // claimed node (and own the binding's address)? Unset: not checked here.
    std::function<bool(const Claims&, const ConnBinding&)> pod_on_node;
};

// Verifies a token found in a packet of the connection `observed`, where a
// token of role `expected` belongs. Checks, in order: format, role, time,
// trust domain, binding, key/certificate, MAC/signature, pod placement,
// replay. Error::code is a TokenError.
Result<VerifiedToken> verify_token(std::span<const uint8_t> bytes, Role expected, const ConnBinding& observed,
                                   TimePoint now, VerifyContext& ctx);

// Records a token verified with ctx.record_replay = false, for its sender's
// node (whose quota of the cache it counts against). Check and insert are
// one step: a copy of the token recorded meanwhile makes this `replay`.
// Error::code is TokenError::replay or replay_cache_full.
Status record_replay(ReplayCache& cache, const VerifiedToken& v, TimePoint now);

// The final ACK's proof that the client holds the pair key: HMAC under it
// over "signet-ack-v1", the full binding (both ISNs) and both tokens' nonces.
std::array<uint8_t, 16> ack_proof(const PairKey& key, const ConnBinding& binding, const Nonce& client_nonce,
                                  const Nonce& server_nonce);

// "8-4-4-4-12" lowercase hex <-> 16 bytes.
std::optional<PodUid> parse_pod_uid(std::string_view text);
std::string pod_uid_string(const PodUid& uid);

}  // namespace signet::identity
