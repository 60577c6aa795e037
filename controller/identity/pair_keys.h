// signet identity: node-pair keys. After the first contact between two nodes
// (a signed token, its certificate verified), both derive the same key:
//
//   Z      = ECDH(own P-256 key, peer certificate's P-256 key)       (32 bytes, x)
//   (A, B) = the two nodes ordered by certificate fingerprint
//   info   = "signet pair key v1" || len(A.node) || A.node || A.fp || len(B.node) || B.node || B.fp
//   key    = HKDF-SHA256(IKM = Z, salt = "signet-pair-salt-v1", info, L = 32)
//   key id = SHA-256("signet-pair-kid-v1" || key)[0..8)
//
// so that later connections cost an HMAC-SHA256, not a signature. The cache
// is bounded (LRU) and keyed by the peer's certificate fingerprint, with a
// second index by key id (what MAC tokens carry). Thread-safe.
#pragma once

#include <array>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <unordered_map>

#include "identity/authority.h"

namespace signet::identity {

using KeyId = std::array<uint8_t, 8>;
using MacKey = std::array<uint8_t, 32>;
struct PairKey;

Result<std::shared_ptr<const PairKey>> derive_pair_key(EVP_PKEY* own_key, const NodeIdentity& own, EVP_PKEY* peer_public,
                                                       const NodeIdentity& peer);

struct PairKey {
    KeyId id{};
    NodeIdentity self;                        // this node
    NodeIdentity peer;                        // the other node, as its certificate (verified) says
    std::shared_ptr<EVP_PKEY> peer_public;    // the peer certificate's key (signed tokens by reference)
    TimePoint not_after{};                    // the earlier of the two certificates' notAfter

    // HMAC-SHA256 under the pair key over the concatenation of `parts`.
    std::array<uint8_t, 32> mac(std::initializer_list<std::span<const uint8_t>> parts) const;

    // For tests only: the raw key (never logged, never serialized).
    const MacKey& secret_for_tests() const { return key_; }

private:
    friend Result<std::shared_ptr<const PairKey>> derive_pair_key(EVP_PKEY*, const NodeIdentity&, EVP_PKEY*,
                                                                  const NodeIdentity&);
    MacKey key_{};
    std::shared_ptr<EVP_MAC_CTX> keyed_;  // HMAC context keyed once; each MAC works on a copy
};

// ECDH + HKDF as above. `own` and `peer` are the verified identities of the
// two certificates (their fingerprints and node names enter the info).
Result<std::shared_ptr<const PairKey>> derive_pair_key(EVP_PKEY* own_key, const NodeIdentity& own, EVP_PKEY* peer_public,
                                                       const NodeIdentity& peer);

class PairKeyCache {
public:
    // `self`: this node's credentials (key and certificate identity).
    explicit PairKeyCache(const NodeCredentials& self, size_t capacity = 4096);

    // Derives and caches the key shared with a peer whose certificate
    // (`peer_cert`, identity `peer`) the caller has verified. Replaces an
    // entry for the same fingerprint.
    Result<std::shared_ptr<const PairKey>> add(X509* peer_cert, const NodeIdentity& peer);

    // Lookups mark the entry recently used; entries past not_after are
    // dropped and not returned.
    std::shared_ptr<const PairKey> by_fingerprint(const Fingerprint& fp, TimePoint now);
    std::shared_ptr<const PairKey> by_key_id(const KeyId& id, TimePoint now);

    const NodeIdentity& self() const { return self_; }
    size_t size() const;
    void clear();  // e.g. when the trust bundle or this node's certificate changes

    // Every key here was derived from a peer certificate verified against a
    // trust bundle. The first call remembers `bundle` (its digest); a later
    // call with a bundle of other CAs clears the cache (pair keys and, with
    // them, the verified peer certificates they are indexed by), so a CA
    // removed from the bundle stops vouching at once, not when its nodes'
    // pair keys expire. verify_token calls it with its context's bundle.
    // Returns true when it cleared.
    bool sync_bundle(const TrustBundle& bundle);

private:
    struct FpHash {
        size_t operator()(const Fingerprint& f) const;
    };
    struct KidHash {
        size_t operator()(const KeyId& k) const;
    };
    using List = std::list<std::shared_ptr<const PairKey>>;

    void erase_locked(List::iterator it);
    std::shared_ptr<const PairKey> touch_locked(List::iterator it, TimePoint now);

    std::shared_ptr<EVP_PKEY> own_key_;
    NodeIdentity self_;
    size_t capacity_;
    mutable std::mutex mu_;
    List lru_;  // most recently used first
    std::unordered_map<Fingerprint, List::iterator, FpHash> by_fp_;
    std::unordered_map<KeyId, List::iterator, KidHash> by_kid_;
    std::optional<Fingerprint> bundle_digest_;  // the bundle the entries were verified against
};

}  // namespace signet::identity
