#include "identity/token.h"

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>

#include <algorithm>
#include <cstring>

namespace signet::identity {
namespace {

constexpr size_t kFixedHeader = 36;   // through the binding tag
constexpr size_t kMacHeader = 44;     // + key id
constexpr uint8_t kTagNamespace = 0x01, kTagPodName = 0x02, kTagPodUid = 0x03, kTagCertRef = 0x10, kTagCert = 0x80;
constexpr std::string_view kMacLabel = "signet-token-mac-v1";
constexpr std::string_view kSigLabel = "signet-token-sig-v1";
constexpr std::string_view kAckLabel = "signet-ack-v1";

Error terr(TokenError e, std::string msg) { return make_error(static_cast<int>(e), std::move(msg)); }

size_t header_size(TokenType t) { return t == TokenType::mac ? kMacHeader : kFixedHeader; }
size_t trailer_size(TokenType t) { return t == TokenType::mac ? kMacSize : kSignatureSize; }

uint16_t get16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }
uint64_t get64(const uint8_t* p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v = v << 8 | p[i];
    return v;
}
void put16(Bytes& b, uint16_t v) {
    b.push_back(static_cast<uint8_t>(v >> 8));
    b.push_back(static_cast<uint8_t>(v));
}
void put32(Bytes& b, uint32_t v) {
    for (int i = 3; i >= 0; --i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
void put64(Bytes& b, uint64_t v) {
    for (int i = 7; i >= 0; --i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

bool all_zero(std::span<const uint8_t> b) {
    return std::all_of(b.begin(), b.end(), [](uint8_t x) { return x == 0; });
}

// The checks encode and parse share, on field values.
Status check_fields(const Token& t) {
    if (t.version != kTokenVersion) return terr(TokenError::bad_version, "unknown token version " + std::to_string(t.version));
    if (t.type != TokenType::mac && t.type != TokenType::signed_first_contact)
        return terr(TokenError::bad_type, "unknown token type " + std::to_string(static_cast<int>(t.type)));
    if (t.role != Role::client && t.role != Role::server)
        return terr(TokenError::bad_role, "unknown role " + std::to_string(static_cast<int>(t.role)));
    if (t.flags != 0) return terr(TokenError::bad_flags, "reserved flags set");
    if (t.validity_ms == 0 || t.validity_ms > kMaxValidityMs)
        return terr(TokenError::bad_validity, "validity " + std::to_string(t.validity_ms) + " ms out of range");
    if (!valid_dns_label(t.pod_namespace)) return terr(TokenError::bad_name, "invalid namespace name");
    if (!valid_dns_subdomain(t.pod_name)) return terr(TokenError::bad_name, "invalid pod name");
    if (all_zero(t.pod_uid)) return terr(TokenError::bad_name, "pod uid is zero");
    if (t.type == TokenType::mac) {
        if (t.cert_ref || !t.certificate.empty()) return terr(TokenError::unknown_field, "certificate in a MAC token");
    } else {
        if (t.cert_ref && !t.certificate.empty())
            return terr(TokenError::duplicate_field, "both a certificate and a certificate reference");
        if (!t.cert_ref && t.certificate.empty()) return terr(TokenError::missing_field, "no certificate or certificate reference");
        if (t.certificate.size() > kMaxCertificateSize) return terr(TokenError::bad_field_length, "certificate too large");
        if (t.key_id != KeyId{}) return terr(TokenError::unknown_field, "key id in a signed token");
    }
    if (t.auth.size() != trailer_size(t.type)) return terr(TokenError::bad_field_length, "authenticator of the wrong size");
    return {};
}

void put_field(Bytes& b, uint8_t tag, std::span<const uint8_t> value) {
    b.push_back(tag);
    if (tag >= 0x80) put16(b, static_cast<uint16_t>(value.size()));
    else b.push_back(static_cast<uint8_t>(value.size()));
    b.insert(b.end(), value.begin(), value.end());
}

int64_t to_ms(TimePoint t) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}

// ECDSA signatures as fixed-size r||s (IEEE P1363), not variable DER.
bool der_to_raw(std::span<const uint8_t> der, uint8_t* raw) {
    const unsigned char* p = der.data();
    ECDSA_SIG* sig = d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der.size()));
    if (!sig) return false;
    const BIGNUM *r = nullptr, *s = nullptr;
    ECDSA_SIG_get0(sig, &r, &s);
    bool ok = BN_bn2binpad(r, raw, 32) == 32 && BN_bn2binpad(s, raw + 32, 32) == 32;
    ECDSA_SIG_free(sig);
    return ok;
}

Bytes raw_to_der(std::span<const uint8_t> raw) {
    ECDSA_SIG* sig = ECDSA_SIG_new();
    BIGNUM* r = BN_bin2bn(raw.data(), 32, nullptr);
    BIGNUM* s = BN_bin2bn(raw.data() + 32, 32, nullptr);
    Bytes out;
    if (sig && r && s && ECDSA_SIG_set0(sig, r, s) == 1) {
        r = s = nullptr;  // owned by sig now
        unsigned char* der = nullptr;
        int len = i2d_ECDSA_SIG(sig, &der);
        if (len > 0) out.assign(der, der + len);
        OPENSSL_free(der);
    }
    BN_free(r);
    BN_free(s);
    ECDSA_SIG_free(sig);
    return out;
}

Result<Token> base_token(TokenType type, Role role, const ConnBinding& binding, const PodClaim& pod, TimePoint now,
                         const MintOptions& opts) {
    Token t;
    t.type = type;
    t.role = role;
    int64_t ms = to_ms(now);
    if (ms < 0) return terr(TokenError::internal, "clock before 1970");
    t.issued_at_ms = static_cast<uint64_t>(ms);
    if (opts.validity.count() <= 0 || opts.validity.count() > kMaxValidityMs)
        return terr(TokenError::bad_validity, "validity out of range");
    t.validity_ms = static_cast<uint16_t>(opts.validity.count());
    if (!random_bytes(t.nonce)) return terr(TokenError::internal, "no randomness: " + openssl_errors());
    t.binding_tag = binding.tag();
    t.pod_namespace = pod.pod_namespace;
    t.pod_name = pod.pod_name;
    t.pod_uid = pod.pod_uid;
    t.auth.assign(trailer_size(type), 0);
    return t;
}

ReplayCache::Key replay_key(const Nonce& nonce, const Bytes& canonical) {
    Sha256 h = sha256({nonce, canonical});
    ReplayCache::Key k;
    std::memcpy(k.data(), h.data(), k.size());
    return k;
}

bool accepted_domain(const VerifyContext& ctx, const std::string& td) {
    if (ctx.accepted_trust_domains.empty()) return ctx.pair_keys && ctx.pair_keys->self().trust_domain == td;
    return std::find(ctx.accepted_trust_domains.begin(), ctx.accepted_trust_domains.end(), td) !=
           ctx.accepted_trust_domains.end();
}

}  // namespace

const char* to_string(TokenError e) {
    switch (e) {
        case TokenError::truncated: return "truncated";
        case TokenError::trailing_bytes: return "trailing_bytes";
        case TokenError::too_large: return "too_large";
        case TokenError::bad_version: return "bad_version";
        case TokenError::bad_type: return "bad_type";
        case TokenError::bad_role: return "bad_role";
        case TokenError::bad_flags: return "bad_flags";
        case TokenError::bad_validity: return "bad_validity";
        case TokenError::bad_field_length: return "bad_field_length";
        case TokenError::unknown_field: return "unknown_field";
        case TokenError::duplicate_field: return "duplicate_field";
        case TokenError::missing_field: return "missing_field";
        case TokenError::bad_name: return "bad_name";
        case TokenError::wrong_role: return "wrong_role";
        case TokenError::expired: return "expired";
        case TokenError::not_yet_valid: return "not_yet_valid";
        case TokenError::validity_too_long: return "validity_too_long";
        case TokenError::unknown_key_id: return "unknown_key_id";
        case TokenError::unknown_certificate: return "unknown_certificate";
        case TokenError::bad_certificate: return "bad_certificate";
        case TokenError::chain_not_to_bundle: return "chain_not_to_bundle";
        case TokenError::certificate_expired: return "certificate_expired";
        case TokenError::wrong_trust_domain: return "wrong_trust_domain";
        case TokenError::binding_mismatch: return "binding_mismatch";
        case TokenError::bad_signature: return "bad_signature";
        case TokenError::bad_mac: return "bad_mac";
        case TokenError::pod_not_on_node: return "pod_not_on_node";
        case TokenError::replay: return "replay";
        case TokenError::replay_cache_full: return "replay_cache_full";
        case TokenError::internal: return "internal";
        case TokenError::certificate_lifetime_too_long: return "certificate_lifetime_too_long";
    }
    return "unknown";
}

Bytes ConnBinding::canonical() const {
    Bytes b;
    b.reserve(49);
    size_t alen = ipv6 ? 16 : 4;
    b.push_back(ipv6 ? 6 : 4);
    b.insert(b.end(), client_addr.begin(), client_addr.begin() + static_cast<long>(alen));
    b.insert(b.end(), server_addr.begin(), server_addr.begin() + static_cast<long>(alen));
    put16(b, client_port);
    put16(b, server_port);
    put32(b, client_isn);
    b.push_back(server_isn ? 1 : 0);
    if (server_isn) put32(b, *server_isn);
    return b;
}

BindingTag ConnBinding::tag() const {
    static constexpr std::string_view label = "signet-binding-v1";
    Bytes c = canonical();
    Sha256 h = sha256({as_bytes(label), c});
    BindingTag t;
    std::memcpy(t.data(), h.data(), t.size());
    return t;
}

size_t Token::authenticated_size() const {
    size_t n = header_size(type) + (2 + pod_namespace.size()) + (2 + pod_name.size()) + (2 + pod_uid.size());
    if (cert_ref) n += 2 + cert_ref->size();
    if (!certificate.empty()) n += 3 + certificate.size();
    return n;
}

Result<Bytes> encode(const Token& t) {
    if (auto st = check_fields(t); !st) return st.error();
    size_t total = t.authenticated_size() + t.auth.size();
    if (total > kMaxTokenSize) return terr(TokenError::too_large, "token of " + std::to_string(total) + " bytes");
    Bytes b;
    b.reserve(total);
    b.push_back(t.version);
    b.push_back(static_cast<uint8_t>(t.type));
    put16(b, static_cast<uint16_t>(total));
    b.push_back(static_cast<uint8_t>(t.role));
    b.push_back(t.flags);
    put64(b, t.issued_at_ms);
    put16(b, t.validity_ms);
    b.insert(b.end(), t.nonce.begin(), t.nonce.end());
    b.insert(b.end(), t.binding_tag.begin(), t.binding_tag.end());
    if (t.type == TokenType::mac) b.insert(b.end(), t.key_id.begin(), t.key_id.end());
    put_field(b, kTagNamespace, as_bytes(t.pod_namespace));
    put_field(b, kTagPodName, as_bytes(t.pod_name));
    put_field(b, kTagPodUid, t.pod_uid);
    if (t.cert_ref) put_field(b, kTagCertRef, *t.cert_ref);
    if (!t.certificate.empty()) put_field(b, kTagCert, t.certificate);
    b.insert(b.end(), t.auth.begin(), t.auth.end());
    if (b.size() != total) return terr(TokenError::internal, "encoded size mismatch");
    return b;
}

Result<Token> parse(std::span<const uint8_t> bytes) {
    const size_t n = bytes.size();
    const uint8_t* p = bytes.data();
    if (n < 1) return terr(TokenError::truncated, "empty token");
    if (p[0] != kTokenVersion) return terr(TokenError::bad_version, "unknown token version " + std::to_string(p[0]));
    if (n > kMaxTokenSize) return terr(TokenError::too_large, "token of " + std::to_string(n) + " bytes");
    if (n < 2) return terr(TokenError::truncated, "token truncated in its header");
    Token t;
    t.version = p[0];
    if (p[1] != static_cast<uint8_t>(TokenType::mac) && p[1] != static_cast<uint8_t>(TokenType::signed_first_contact))
        return terr(TokenError::bad_type, "unknown token type " + std::to_string(p[1]));
    t.type = static_cast<TokenType>(p[1]);
    const size_t hdr = header_size(t.type), trailer = trailer_size(t.type);
    if (n < 4) return terr(TokenError::truncated, "token truncated in its header");
    const size_t len = get16(p + 2);
    if (len > n) return terr(TokenError::truncated, "token of " + std::to_string(n) + " bytes, length field says " + std::to_string(len));
    if (len < n) return terr(TokenError::trailing_bytes, std::to_string(n - len) + " bytes after the token");
    if (len < hdr + trailer) return terr(TokenError::truncated, "token shorter than its header and trailer");
    t.role = static_cast<Role>(p[4]);
    t.flags = p[5];
    t.issued_at_ms = get64(p + 6);
    t.validity_ms = get16(p + 14);
    std::memcpy(t.nonce.data(), p + 16, 16);
    std::memcpy(t.binding_tag.data(), p + 32, 4);
    if (t.type == TokenType::mac) std::memcpy(t.key_id.data(), p + 36, 8);
    if (t.role != Role::client && t.role != Role::server)
        return terr(TokenError::bad_role, "unknown role " + std::to_string(p[4]));
    if (t.flags != 0) return terr(TokenError::bad_flags, "reserved flags set");

    size_t off = hdr;
    const size_t end = len - trailer;
    int last = -1;
    bool have_ns = false, have_pod = false, have_uid = false;
    while (off < end) {
        uint8_t tag = p[off++];
        size_t flen;
        if (tag >= 0x80) {
            if (end - off < 2) return terr(TokenError::bad_field_length, "field length overruns the token");
            flen = get16(p + off);
            off += 2;
        } else {
            if (end - off < 1) return terr(TokenError::bad_field_length, "field length overruns the token");
            flen = p[off++];
        }
        if (flen > end - off) return terr(TokenError::bad_field_length, "field overruns the token");
        if (tag == last) return terr(TokenError::duplicate_field, "field " + std::to_string(tag) + " repeated");
        if (tag < last) return terr(TokenError::duplicate_field, "field " + std::to_string(tag) + " out of order");
        last = tag;
        std::span<const uint8_t> v(p + off, flen);
        off += flen;
        switch (tag) {
            case kTagNamespace:
                if (flen > 63) return terr(TokenError::bad_field_length, "namespace longer than 63");
                t.pod_namespace.assign(v.begin(), v.end());
                have_ns = true;
                break;
            case kTagPodName:
                if (flen > 253) return terr(TokenError::bad_field_length, "pod name longer than 253");
                t.pod_name.assign(v.begin(), v.end());
                have_pod = true;
                break;
            case kTagPodUid:
                if (flen != t.pod_uid.size()) return terr(TokenError::bad_field_length, "pod uid not 16 bytes");
                std::memcpy(t.pod_uid.data(), v.data(), flen);
                have_uid = true;
                break;
            case kTagCertRef:
                if (t.type != TokenType::signed_first_contact) return terr(TokenError::unknown_field, "certificate reference in a MAC token");
                if (flen != 32) return terr(TokenError::bad_field_length, "certificate reference not 32 bytes");
                t.cert_ref.emplace();
                std::memcpy(t.cert_ref->data(), v.data(), 32);
                break;
            case kTagCert:
                if (t.type != TokenType::signed_first_contact) return terr(TokenError::unknown_field, "certificate in a MAC token");
                if (flen == 0 || flen > kMaxCertificateSize) return terr(TokenError::bad_field_length, "certificate size out of range");
                t.certificate.assign(v.begin(), v.end());
                break;
            default:
                return terr(TokenError::unknown_field, "unknown field " + std::to_string(tag));
        }
    }
    if (!have_ns || !have_pod || !have_uid) return terr(TokenError::missing_field, "namespace, pod name or pod uid missing");
    t.auth.assign(p + end, p + len);
    if (auto st = check_fields(t); !st) return st.error();
    return t;
}

Result<Bytes> make_mac_token(const PairKey& key, Role role, const ConnBinding& binding, const PodClaim& pod, TimePoint now,
                             const MintOptions& opts) {
    auto t = base_token(TokenType::mac, role, binding, pod, now, opts);
    if (!t) return t.error();
    t->key_id = key.id;
    auto bytes = encode(*t);
    if (!bytes) return bytes.error();
    const size_t covered = bytes->size() - kMacSize;
    Bytes canon = binding.canonical();
    auto mac = key.mac({as_bytes(kMacLabel), canon, std::span<const uint8_t>(bytes->data(), covered)});
    std::memcpy(bytes->data() + covered, mac.data(), kMacSize);
    return bytes;
}

Result<Bytes> make_signed_token(const NodeCredentials& self, Role role, const ConnBinding& binding, const PodClaim& pod,
                                TimePoint now, const MintOptions& opts) {
    auto t = base_token(TokenType::signed_first_contact, role, binding, pod, now, opts);
    if (!t) return t.error();
    if (opts.include_certificate) t->certificate = self.chain_der;
    else t->cert_ref = self.identity.fingerprint;
    auto bytes = encode(*t);
    if (!bytes) return bytes.error();
    const size_t covered = bytes->size() - kSignatureSize;
    Bytes canon = binding.canonical();
    MdCtxPtr ctx(EVP_MD_CTX_new());
    size_t dlen = 0;
    if (!ctx || EVP_DigestSignInit_ex(ctx.get(), nullptr, "SHA256", nullptr, nullptr, self.key.get(), nullptr) != 1 ||
        EVP_DigestSignUpdate(ctx.get(), kSigLabel.data(), kSigLabel.size()) != 1 ||
        EVP_DigestSignUpdate(ctx.get(), canon.data(), canon.size()) != 1 ||
        EVP_DigestSignUpdate(ctx.get(), bytes->data(), covered) != 1 || EVP_DigestSignFinal(ctx.get(), nullptr, &dlen) != 1)
        return terr(TokenError::internal, "cannot sign the token: " + openssl_errors());
    Bytes der(dlen);
    if (EVP_DigestSignFinal(ctx.get(), der.data(), &dlen) != 1)
        return terr(TokenError::internal, "cannot sign the token: " + openssl_errors());
    der.resize(dlen);
    if (!der_to_raw(der, bytes->data() + covered)) return terr(TokenError::internal, "cannot encode the signature: " + openssl_errors());
    return bytes;
}

Result<VerifiedToken> verify_token(std::span<const uint8_t> bytes, Role expected, const ConnBinding& observed, TimePoint now,
                                   VerifyContext& ctx) {
    if (!ctx.pair_keys || !ctx.replay || !ctx.bundle) return terr(TokenError::internal, "verify context incomplete");
    ctx.pair_keys->sync_bundle(*ctx.bundle);  // another bundle: forget what the old one vouched for
    auto parsed = parse(bytes);
    if (!parsed) return parsed.error();
    const Token& t = *parsed;
    if (t.role != expected) return terr(TokenError::wrong_role, "a token of the other side's role");
    if (std::chrono::milliseconds(t.validity_ms) > ctx.max_validity)
        return terr(TokenError::validity_too_long, "validity " + std::to_string(t.validity_ms) + " ms over the accepted maximum");
    const int64_t now_ms = to_ms(now), skew = ctx.max_skew.count();
    if (now_ms < 0 || t.issued_at_ms > static_cast<uint64_t>(now_ms + skew))
        return terr(TokenError::not_yet_valid, "issued " + std::to_string(static_cast<int64_t>(t.issued_at_ms - static_cast<uint64_t>(now_ms))) +
                                                   " ms in the future");
    const uint64_t limit = t.issued_at_ms + t.validity_ms + static_cast<uint64_t>(skew);
    if (static_cast<uint64_t>(now_ms) > limit)
        return terr(TokenError::expired, "expired " + std::to_string(static_cast<uint64_t>(now_ms) - limit) + " ms ago (skew included)");
    if (t.binding_tag != observed.tag()) return terr(TokenError::binding_mismatch, "token made for another connection");

    const Bytes canon = observed.canonical();
    const size_t covered = t.authenticated_size();
    VerifiedToken out;
    out.type = t.type;
    out.nonce = t.nonce;
    std::shared_ptr<const PairKey> key;
    X509Ptr fresh_cert;  // signed token with a certificate not seen before
    NodeIdentity sender;
    EVP_PKEY* sender_key = nullptr;

    if (t.type == TokenType::mac) {
        key = ctx.pair_keys->by_key_id(t.key_id, now);
        if (!key) return terr(TokenError::unknown_key_id, "no pair key with id " + hex(t.key_id));
        sender = key->peer;
        if (!accepted_domain(ctx, sender.trust_domain))
            return terr(TokenError::wrong_trust_domain, "trust domain " + sender.trust_domain + " not accepted here");
        auto mac = key->mac({as_bytes(kMacLabel), canon, bytes.first(covered)});
        if (!equal_ct(std::span<const uint8_t>(mac.data(), kMacSize), t.auth)) return terr(TokenError::bad_mac, "MAC does not verify");
    } else {
        if (t.cert_ref) {
            key = ctx.pair_keys->by_fingerprint(*t.cert_ref, now);
            if (!key) return terr(TokenError::unknown_certificate, "certificate " + hex(*t.cert_ref) + " not known here");
        } else {
            const Fingerprint fp = sha256({t.certificate});
            key = ctx.pair_keys->by_fingerprint(fp, now);
            if (!key) {
                auto cert = parse_cert_der(t.certificate);
                if (!cert) return terr(TokenError::bad_certificate, cert.error().message);
                auto id = ctx.bundle->verify_node(cert->get(), {}, now);
                if (!id) {
                    TokenError e = TokenError::chain_not_to_bundle;
                    switch (static_cast<CertError>(id.error().code)) {
                        case CertError::expired:
                        case CertError::not_yet_valid: e = TokenError::certificate_expired; break;
                        case CertError::wrong_trust_domain: e = TokenError::wrong_trust_domain; break;
                        case CertError::bad_certificate: e = TokenError::bad_certificate; break;
                        case CertError::lifetime_too_long: e = TokenError::certificate_lifetime_too_long; break;
                        default: break;
                    }
                    return terr(e, id.error().message);
                }
                sender = std::move(*id);
                fresh_cert = std::move(*cert);
                sender_key = X509_get0_pubkey(fresh_cert.get());
            }
        }
        if (key) {
            sender = key->peer;
            sender_key = key->peer_public.get();
        }
        if (!accepted_domain(ctx, sender.trust_domain))
            return terr(TokenError::wrong_trust_domain, "trust domain " + sender.trust_domain + " not accepted here");
        Bytes der = raw_to_der(t.auth);
        MdCtxPtr md(EVP_MD_CTX_new());
        if (der.empty() || !md || EVP_DigestVerifyInit_ex(md.get(), nullptr, "SHA256", nullptr, nullptr, sender_key, nullptr) != 1)
            return terr(TokenError::internal, "cannot verify: " + openssl_errors());
        int ok = EVP_DigestVerifyUpdate(md.get(), kSigLabel.data(), kSigLabel.size()) == 1 &&
                 EVP_DigestVerifyUpdate(md.get(), canon.data(), canon.size()) == 1 &&
                 EVP_DigestVerifyUpdate(md.get(), bytes.data(), covered) == 1 &&
                 EVP_DigestVerifyFinal(md.get(), der.data(), der.size()) == 1;
        if (!ok) {
            ERR_clear_error();
            return terr(TokenError::bad_signature, "signature does not verify");
        }
    }

    out.claims = Claims{sender.trust_domain, sender.node_name, t.pod_namespace, t.pod_name, t.pod_uid};
    out.peer_fingerprint = sender.fingerprint;
    if (ctx.pod_on_node && !ctx.pod_on_node(out.claims, observed))
        return terr(TokenError::pod_not_on_node, "pod " + t.pod_namespace + "/" + t.pod_name + " does not run on node " + sender.node_name);
    out.replay_key = replay_key(t.nonce, canon);
    out.replay_until = TimePoint(std::chrono::milliseconds(limit + 1));
    if (ctx.record_replay) {
        if (auto st = record_replay(*ctx.replay, out, now); !st) return st.error();
    } else if (ctx.replay->contains(out.replay_key, now)) {
        return terr(TokenError::replay, "token already seen");
    }
    if (fresh_cert) {
        auto k = ctx.pair_keys->add(fresh_cert.get(), sender);
        if (!k) return terr(TokenError::internal, k.error().message);
        key = *k;
    }
    out.pair_key = std::move(key);
    return out;
}

Status record_replay(ReplayCache& cache, const VerifiedToken& v, TimePoint now) {
    switch (cache.insert(v.replay_key, v.replay_until, now, v.claims.node_name)) {
        case ReplayCache::Outcome::fresh: return {};
        case ReplayCache::Outcome::replay: return terr(TokenError::replay, "token already seen");
        case ReplayCache::Outcome::full:
            return terr(TokenError::replay_cache_full, "replay cache full (" + std::to_string(cache.capacity()) + " live tokens)");
        case ReplayCache::Outcome::owner_full:
            return terr(TokenError::replay_cache_full, "node " + v.claims.node_name + " holds its quota of the replay cache (" +
                                                           std::to_string(cache.per_owner()) + " live tokens)");
    }
    return terr(TokenError::internal, "replay cache");
}

std::array<uint8_t, 16> ack_proof(const PairKey& key, const ConnBinding& binding, const Nonce& client_nonce,
                                  const Nonce& server_nonce) {
    Bytes canon = binding.canonical();
    auto mac = key.mac({as_bytes(kAckLabel), canon, client_nonce, server_nonce});
    std::array<uint8_t, 16> out;
    std::memcpy(out.data(), mac.data(), out.size());
    return out;
}

std::optional<PodUid> parse_pod_uid(std::string_view text) {
    if (text.size() != 36) return std::nullopt;
    PodUid out{};
    size_t j = 0;
    for (size_t i = 0; i < 36; ++i) {
        char c = text[i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (c != '-') return std::nullopt;
            continue;
        }
        int v;
        if (c >= '0' && c <= '9') v = c - '0';
        else if (c >= 'a' && c <= 'f') v = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') v = c - 'A' + 10;
        else return std::nullopt;
        out[j / 2] = static_cast<uint8_t>(out[j / 2] | (j % 2 ? v : v << 4));
        ++j;
    }
    return out;
}

std::string pod_uid_string(const PodUid& uid) {
    std::string h = hex(uid);
    return h.substr(0, 8) + "-" + h.substr(8, 4) + "-" + h.substr(12, 4) + "-" + h.substr(16, 4) + "-" + h.substr(20);
}

}  // namespace signet::identity
