#include "identity/crypto.h"

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/rand.h>

namespace signet::identity {

std::string openssl_errors() {
    std::string out;
    unsigned long e;
    while ((e = ERR_get_error()) != 0) {
        char buf[256];
        ERR_error_string_n(e, buf, sizeof buf);
        if (!out.empty()) out += "; ";
        out += buf;
    }
    return out.empty() ? "no OpenSSL error reported" : out;
}

Error ossl_error(int code, const std::string& what) { return make_error(code, what + ": " + openssl_errors()); }

const EVP_MD* sha256_md() {
    static EVP_MD* md = EVP_MD_fetch(nullptr, "SHA256", nullptr);
    return md;
}

EVP_MAC* hmac_mac() {
    static EVP_MAC* mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
    return mac;
}

Sha256 sha256(std::initializer_list<std::span<const uint8_t>> parts) {
    Sha256 out{};
    MdCtxPtr ctx(EVP_MD_CTX_new());
    unsigned int len = 0;
    bool ok = ctx && EVP_DigestInit_ex(ctx.get(), sha256_md(), nullptr) == 1;
    for (auto p : parts) ok = ok && EVP_DigestUpdate(ctx.get(), p.data(), p.size()) == 1;
    ok = ok && EVP_DigestFinal_ex(ctx.get(), out.data(), &len) == 1 && len == out.size();
    // SHA-256 cannot fail short of memory exhaustion; never return a
    // predictable value as if it were a digest.
    if (!ok) std::abort();
    return out;
}

bool random_bytes(std::span<uint8_t> out) {
    return out.empty() || RAND_bytes(out.data(), static_cast<int>(out.size())) == 1;
}

bool equal_ct(std::span<const uint8_t> a, std::span<const uint8_t> b) {
    return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::shared_ptr<EVP_PKEY> share_pkey(EVP_PKEY* key) {
    if (!key || EVP_PKEY_up_ref(key) != 1) return nullptr;
    return std::shared_ptr<EVP_PKEY>(key, PkeyFree{});
}

std::string hex(std::span<const uint8_t> bytes) {
    static const char* digits = "0123456789abcdef";
    std::string out;
    out.reserve(bytes.size() * 2);
    for (uint8_t b : bytes) {
        out += digits[b >> 4];
        out += digits[b & 15];
    }
    return out;
}

}  // namespace signet::identity
