#include "identity/pair_keys.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#include <algorithm>
#include <cstring>

namespace signet::identity {
namespace {

constexpr int kErr = 1;

EVP_KDF* hkdf() {
    static EVP_KDF* kdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
    return kdf;
}

void append_side(Bytes& info, const NodeIdentity& id) {
    info.push_back(static_cast<uint8_t>(id.node_name.size()));
    info.insert(info.end(), id.node_name.begin(), id.node_name.end());
    info.insert(info.end(), id.fingerprint.begin(), id.fingerprint.end());
}

}  // namespace

std::array<uint8_t, 32> PairKey::mac(std::initializer_list<std::span<const uint8_t>> parts) const {
    std::array<uint8_t, 32> out{};
    MacCtxPtr ctx(EVP_MAC_CTX_dup(keyed_.get()));
    size_t len = 0;
    bool ok = ctx != nullptr;
    for (auto p : parts) ok = ok && EVP_MAC_update(ctx.get(), p.data(), p.size()) == 1;
    ok = ok && EVP_MAC_final(ctx.get(), out.data(), &len, out.size()) == 1 && len == out.size();
    if (!ok) std::abort();  // out of memory: never hand out a predictable MAC
    return out;
}

Result<std::shared_ptr<const PairKey>> derive_pair_key(EVP_PKEY* own_key, const NodeIdentity& own, EVP_PKEY* peer_public,
                                                       const NodeIdentity& peer) {
    if (own.node_name.size() > 255 || peer.node_name.size() > 255) return make_error(kErr, "node name too long");
    PkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, own_key, nullptr));
    std::array<uint8_t, 32> z{};
    size_t zlen = z.size();
    if (!ctx || EVP_PKEY_derive_init(ctx.get()) != 1 || EVP_PKEY_derive_set_peer_ex(ctx.get(), peer_public, 1) != 1 ||
        EVP_PKEY_derive(ctx.get(), z.data(), &zlen) != 1 || zlen != z.size())
        return ossl_error(kErr, "ECDH with the peer's key failed");

    Bytes info;
    static constexpr std::string_view label = "signet pair key v1";
    info.insert(info.end(), label.begin(), label.end());
    bool own_first = std::lexicographical_compare(own.fingerprint.begin(), own.fingerprint.end(), peer.fingerprint.begin(),
                                                  peer.fingerprint.end());
    append_side(info, own_first ? own : peer);
    append_side(info, own_first ? peer : own);

    auto key = std::make_shared<PairKey>();
    std::unique_ptr<EVP_KDF_CTX, decltype(&EVP_KDF_CTX_free)> kctx(EVP_KDF_CTX_new(hkdf()), EVP_KDF_CTX_free);
    static char digest[] = "SHA256";
    static char salt[] = "signet-pair-salt-v1";
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, z.data(), z.size()),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, salt, sizeof salt - 1),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info.data(), info.size()),
        OSSL_PARAM_construct_end(),
    };
    bool ok = kctx && EVP_KDF_derive(kctx.get(), key->key_.data(), key->key_.size(), params) == 1;
    OPENSSL_cleanse(z.data(), z.size());
    if (!ok) return ossl_error(kErr, "HKDF failed");

    static constexpr std::string_view kid_label = "signet-pair-kid-v1";
    Sha256 kid = sha256({as_bytes(kid_label), key->key_});
    std::memcpy(key->id.data(), kid.data(), key->id.size());

    char sha[] = "SHA256";
    OSSL_PARAM mparams[] = {OSSL_PARAM_construct_utf8_string("digest", sha, 0), OSSL_PARAM_construct_end()};
    key->keyed_ = std::shared_ptr<EVP_MAC_CTX>(EVP_MAC_CTX_new(hmac_mac()), MacCtxFree{});
    if (!key->keyed_ || EVP_MAC_init(key->keyed_.get(), key->key_.data(), key->key_.size(), mparams) != 1)
        return ossl_error(kErr, "cannot key HMAC-SHA256");
    key->self = own;
    key->peer = peer;
    key->peer_public = share_pkey(peer_public);
    key->not_after = std::min(own.not_after, peer.not_after);
    return std::shared_ptr<const PairKey>(std::move(key));
}

size_t PairKeyCache::FpHash::operator()(const Fingerprint& f) const {
    size_t h;
    std::memcpy(&h, f.data(), sizeof h);
    return h;
}

size_t PairKeyCache::KidHash::operator()(const KeyId& k) const {
    size_t h;
    std::memcpy(&h, k.data(), sizeof h);
    return h;
}

PairKeyCache::PairKeyCache(const NodeCredentials& self, size_t capacity)
    : own_key_(share_pkey(self.key.get())), self_(self.identity), capacity_(std::max<size_t>(capacity, 1)) {}

Result<std::shared_ptr<const PairKey>> PairKeyCache::add(X509* peer_cert, const NodeIdentity& peer) {
    if (!own_key_) return make_error(kErr, "no node key");
    auto key = derive_pair_key(own_key_.get(), self_, X509_get0_pubkey(peer_cert), peer);
    if (!key) return key.error();
    std::lock_guard lock(mu_);
    if (auto it = by_fp_.find(peer.fingerprint); it != by_fp_.end()) erase_locked(it->second);
    lru_.push_front(*key);
    by_fp_[peer.fingerprint] = lru_.begin();
    by_kid_[(*key)->id] = lru_.begin();
    while (lru_.size() > capacity_) erase_locked(std::prev(lru_.end()));
    return key;
}

void PairKeyCache::erase_locked(List::iterator it) {
    by_fp_.erase((*it)->peer.fingerprint);
    if (auto k = by_kid_.find((*it)->id); k != by_kid_.end() && k->second == it) by_kid_.erase(k);
    lru_.erase(it);
}

std::shared_ptr<const PairKey> PairKeyCache::touch_locked(List::iterator it, TimePoint now) {
    if (now >= (*it)->not_after) {
        erase_locked(it);
        return nullptr;
    }
    lru_.splice(lru_.begin(), lru_, it);
    return *it;
}

std::shared_ptr<const PairKey> PairKeyCache::by_fingerprint(const Fingerprint& fp, TimePoint now) {
    std::lock_guard lock(mu_);
    auto it = by_fp_.find(fp);
    return it == by_fp_.end() ? nullptr : touch_locked(it->second, now);
}

std::shared_ptr<const PairKey> PairKeyCache::by_key_id(const KeyId& id, TimePoint now) {
    std::lock_guard lock(mu_);
    auto it = by_kid_.find(id);
    return it == by_kid_.end() ? nullptr : touch_locked(it->second, now);
}

size_t PairKeyCache::size() const {
    std::lock_guard lock(mu_);
    return lru_.size();
}

void PairKeyCache::clear() {
    std::lock_guard lock(mu_);
    by_fp_.clear();
    by_kid_.clear();
    lru_.clear();
}

bool PairKeyCache::sync_bundle(const TrustBundle& bundle) {
    std::lock_guard lock(mu_);
    if (bundle_digest_ == bundle.digest()) return false;
    const bool changed = bundle_digest_.has_value();
    bundle_digest_ = bundle.digest();
    if (!changed) return false;
    by_fp_.clear();
    by_kid_.clear();
    lru_.clear();
    return true;
}

}  // namespace signet::identity
