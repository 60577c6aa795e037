// Shared helpers of the identity tests: a temporary folder, file modes, node
// certificates signed by hand (extensions and lifetime of the test's choice).
#pragma once

#include <sys/stat.h>
#include <unistd.h>

#include <openssl/x509v3.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "identity/authority.h"

namespace signet::identity::test {

class TempDir {
public:
    TempDir() {
        std::string tmpl = (std::filesystem::temp_directory_path() / "signet-identity-XXXXXX").string();
        if (!::mkdtemp(tmpl.data())) std::abort();
        path_ = tmpl;
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    const std::string& path() const { return path_; }
    std::string operator/(const std::string& name) const { return path_ + "/" + name; }

private:
    std::string path_;
};

inline unsigned file_mode(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return 0xffffffff;
    return st.st_mode & 07777;
}

inline bool file_exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

// The extensions Authority::sign_csr sets on a node certificate.
using Extensions = std::vector<std::pair<int, std::string>>;
inline Extensions node_extensions(const std::string& san) {
    return {{NID_basic_constraints, "critical,CA:FALSE"},
            {NID_key_usage, "critical,digitalSignature,keyAgreement"},
            {NID_ext_key_usage, "serverAuth,clientAuth"},
            {NID_authority_key_identifier, "keyid:always"},
            {NID_subject_alt_name, san}};
}

// A node certificate for `node_key`, signed by hand with the authority saved
// in `ca_dir` (init_authority / Authority::save): subject CN=<node>,
// O=<trust domain>, the given validity and extensions (default: the
// authority's own, URI SAN spiffe://<td>/node/<node>).
inline X509Ptr hand_signed_node_cert(const std::string& ca_dir, EVP_PKEY* node_key, const std::string& node, TimePoint not_before,
                                     TimePoint not_after, const Extensions* exts = nullptr) {
    auto ca_key = load_private_key(ca_dir + "/ca.key");
    auto ca = Authority::load(ca_dir);
    if (!ca_key || !ca) std::abort();
    const std::string td = ca->trust_domain();
    X509Ptr cert(X509_new());
    X509_set_version(cert.get(), 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), 4242);
    X509_NAME* name = X509_NAME_new();
    X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>(td.c_str()), -1, -1, 0);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>(node.c_str()), -1, -1, 0);
    X509_set_subject_name(cert.get(), name);
    X509_NAME_free(name);
    X509_set_issuer_name(cert.get(), X509_get_subject_name(ca->certificate()));
    X509_set_pubkey(cert.get(), node_key);
    ASN1_TIME_set(X509_getm_notBefore(cert.get()), Clock::to_time_t(not_before));
    ASN1_TIME_set(X509_getm_notAfter(cert.get()), Clock::to_time_t(not_after));
    const Extensions defaults = node_extensions("URI:spiffe://" + td + "/node/" + node);
    for (const auto& [nid, value] : exts ? *exts : defaults) {
        X509V3_CTX ctx;
        X509V3_set_ctx(&ctx, ca->certificate(), cert.get(), nullptr, nullptr, 0);
        X509_EXTENSION* ext = X509V3_EXT_nconf_nid(nullptr, &ctx, nid, value.c_str());
        if (!ext) std::abort();
        X509_add_ext(cert.get(), ext, -1);
        X509_EXTENSION_free(ext);
    }
    if (X509_sign(cert.get(), ca_key->get(), EVP_sha256()) <= 0) std::abort();
    return cert;
}

}  // namespace signet::identity::test
