// signet identity: small OpenSSL 3 helpers shared by the authority, the
// node-pair keys and the tokens. RAII owners for OpenSSL objects, SHA-256,
// randomness, and the OpenSSL error queue as text. Internal to identity/.
#pragma once

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "signet/result.h"

namespace signet::identity {

struct PkeyFree { void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); } };
struct X509Free { void operator()(X509* p) const { X509_free(p); } };
struct X509ReqFree { void operator()(X509_REQ* p) const { X509_REQ_free(p); } };
struct MdCtxFree { void operator()(EVP_MD_CTX* p) const { EVP_MD_CTX_free(p); } };
struct PkeyCtxFree { void operator()(EVP_PKEY_CTX* p) const { EVP_PKEY_CTX_free(p); } };
struct MacCtxFree { void operator()(EVP_MAC_CTX* p) const { EVP_MAC_CTX_free(p); } };

using PKey = std::unique_ptr<EVP_PKEY, PkeyFree>;
using X509Ptr = std::unique_ptr<X509, X509Free>;
using X509ReqPtr = std::unique_ptr<X509_REQ, X509ReqFree>;
using MdCtxPtr = std::unique_ptr<EVP_MD_CTX, MdCtxFree>;
using PkeyCtxPtr = std::unique_ptr<EVP_PKEY_CTX, PkeyCtxFree>;
using MacCtxPtr = std::unique_ptr<EVP_MAC_CTX, MacCtxFree>;

using Bytes = std::vector<uint8_t>;
using Sha256 = std::array<uint8_t, 32>;

// Takes the whole OpenSSL error queue (oldest first) as one line, and clears it.
std::string openssl_errors();

// make_error(code, what + ": " + OpenSSL's error text).
Error ossl_error(int code, const std::string& what);

// SHA-256 of the concatenation of `parts`.
Sha256 sha256(std::initializer_list<std::span<const uint8_t>> parts);

// Fills `out` from the OpenSSL CSPRNG; false when it cannot.
bool random_bytes(std::span<uint8_t> out);

// Constant-time equality of two byte strings of the same length.
bool equal_ct(std::span<const uint8_t> a, std::span<const uint8_t> b);

// The fetched (once, process-wide) SHA-256 and HMAC implementations.
const EVP_MD* sha256_md();
EVP_MAC* hmac_mac();

// Shared-ownership copy of an EVP_PKEY (up-ref).
std::shared_ptr<EVP_PKEY> share_pkey(EVP_PKEY* key);

inline std::span<const uint8_t> as_bytes(std::string_view s) {
    return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

std::string hex(std::span<const uint8_t> bytes);

}  // namespace signet::identity
