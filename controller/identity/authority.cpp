#include "identity/authority.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <cerrno>
#include <cstring>
#include <ctime>

#include "signet/fsutil.h"

namespace signet::identity {
namespace {

struct BioFree { void operator()(BIO* p) const { BIO_free(p); } };
struct NameFree { void operator()(X509_NAME* p) const { X509_NAME_free(p); } };
struct ExtFree { void operator()(X509_EXTENSION* p) const { X509_EXTENSION_free(p); } };
struct GensFree { void operator()(GENERAL_NAMES* p) const { GENERAL_NAMES_free(p); } };
struct StoreFree { void operator()(X509_STORE* p) const { X509_STORE_free(p); } };
struct StoreCtxFree { void operator()(X509_STORE_CTX* p) const { X509_STORE_CTX_free(p); } };
struct BnFree { void operator()(BIGNUM* p) const { BN_free(p); } };
using BioPtr = std::unique_ptr<BIO, BioFree>;
using GensPtr = std::unique_ptr<GENERAL_NAMES, GensFree>;

Error cert_error(CertError c, std::string msg) { return make_error(static_cast<int>(c), std::move(msg)); }
Error ossl(CertError c, const std::string& what) { return ossl_error(static_cast<int>(c), what); }

std::string bio_string(BIO* bio) {
    char* data = nullptr;
    long len = BIO_get_mem_data(bio, &data);
    return len > 0 ? std::string(data, static_cast<size_t>(len)) : std::string();
}

// A new file, never an existing one (O_EXCL, no symlinks), `mode` despite umask.
Status write_new_file(const std::string& path, std::string_view content, unsigned mode) {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd < 0) {
        int e = errno;
        return cert_error(CertError::io, (e == EEXIST ? "refusing to overwrite " : "cannot create ") + path + ": " +
                                             std::strerror(e));
    }
    bool ok = ::fchmod(fd, mode) == 0;
    size_t off = 0;
    while (ok && off < content.size()) {
        ssize_t n = ::write(fd, content.data() + off, content.size() - off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) ok = false;
        else off += static_cast<size_t>(n);
    }
    ok = ok && ::fsync(fd) == 0;
    int e = errno;
    ::close(fd);
    if (!ok) {
        ::unlink(path.c_str());
        return cert_error(CertError::io, "cannot write " + path + ": " + std::strerror(e));
    }
    return {};
}

bool exists(const std::string& path) {
    struct stat st {};
    return ::lstat(path.c_str(), &st) == 0;
}

bool name_char_ok(char c, bool dot) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || (dot && c == '.');
}

bool alnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

TimePoint from_time_t(time_t t) { return Clock::from_time_t(t); }

TimePoint asn1_to_time(const ASN1_TIME* t) {
    struct tm tm {};
    if (!t || ASN1_TIME_to_tm(t, &tm) != 1) return TimePoint{};
    return from_time_t(timegm(&tm));
}

time_t to_time_t(TimePoint t) { return Clock::to_time_t(t); }

// The one value of a subject attribute, or "" when absent or repeated.
std::string subject_entry(const X509_NAME* name, int nid) {
    int idx = X509_NAME_get_index_by_NID(name, nid, -1);
    if (idx < 0 || X509_NAME_get_index_by_NID(name, nid, idx) >= 0) return {};
    const ASN1_STRING* s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, idx));
    if (!s) return {};
    return std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)), static_cast<size_t>(ASN1_STRING_length(s)));
}

// Sets CN and O of a fresh name.
std::unique_ptr<X509_NAME, NameFree> make_name(const std::string& cn, const std::string& org) {
    std::unique_ptr<X509_NAME, NameFree> name(X509_NAME_new());
    if (!name) return nullptr;
    auto add = [&](const char* field, const std::string& v) {
        return X509_NAME_add_entry_by_txt(name.get(), field, MBSTRING_UTF8, reinterpret_cast<const unsigned char*>(v.c_str()),
                                          -1, -1, 0) == 1;
    };
    if (!add("O", org) || !add("CN", cn)) return nullptr;
    return name;
}

// The URI SANs of a certificate.
std::vector<std::string> uri_sans(X509* cert, bool* other_names) {
    std::vector<std::string> out;
    *other_names = false;
    GensPtr gens(static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr)));
    if (!gens) return out;
    for (int i = 0; i < sk_GENERAL_NAME_num(gens.get()); ++i) {
        const GENERAL_NAME* g = sk_GENERAL_NAME_value(gens.get(), i);
        if (g->type != GEN_URI) {
            *other_names = true;
            continue;
        }
        const ASN1_STRING* s = g->d.uniformResourceIdentifier;
        out.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)), static_cast<size_t>(ASN1_STRING_length(s)));
    }
    return out;
}

bool is_p256(EVP_PKEY* key) {
    if (!key || !EVP_PKEY_is_a(key, "EC")) return false;
    char group[64] = {};
    size_t len = 0;
    if (EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, &len) != 1) return false;
    return std::string_view(group, len) == "prime256v1";
}

Status add_ext(X509* cert, X509* issuer, int nid, const char* value) {
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
    std::unique_ptr<X509_EXTENSION, ExtFree> ext(X509V3_EXT_nconf_nid(nullptr, &ctx, nid, value));
    if (!ext || X509_add_ext(cert, ext.get(), -1) != 1)
        return ossl(CertError::invalid_argument, std::string("cannot add extension ") + OBJ_nid2sn(nid));
    return {};
}

Status set_random_serial(X509* cert) {
    uint8_t raw[16];
    if (!random_bytes(raw)) return ossl(CertError::invalid_argument, "no randomness for the serial number");
    raw[0] &= 0x7f;  // positive
    raw[0] |= 0x40;  // and exactly 16 bytes long
    std::unique_ptr<BIGNUM, BnFree> bn(BN_bin2bn(raw, sizeof raw, nullptr));
    ASN1_INTEGER* serial = X509_get_serialNumber(cert);
    if (!bn || !BN_to_ASN1_INTEGER(bn.get(), serial)) return ossl(CertError::invalid_argument, "cannot set the serial number");
    return {};
}

Status set_validity(X509* cert, TimePoint from, TimePoint to) {
    if (to <= from) return cert_error(CertError::invalid_argument, "validity must be positive");
    if (!ASN1_TIME_set(X509_getm_notBefore(cert), to_time_t(from)) || !ASN1_TIME_set(X509_getm_notAfter(cert), to_time_t(to)))
        return ossl(CertError::invalid_argument, "cannot set the validity");
    return {};
}

Result<std::string> private_key_pem(EVP_PKEY* key) {
    BioPtr bio(BIO_new(BIO_s_mem()));
    if (!bio || PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1)
        return ossl(CertError::invalid_argument, "cannot encode the private key");
    std::string pem = bio_string(bio.get());
    char* data = nullptr;
    long len = BIO_get_mem_data(bio.get(), &data);
    if (len > 0) OPENSSL_cleanse(data, static_cast<size_t>(len));
    return pem;
}

std::string spiffe_node(const std::string& td, const std::string& node) { return "spiffe://" + td + "/node/" + node; }

}  // namespace

std::string spiffe_workload(const std::string& td, const std::string& ns, const std::string& sa) {
    return "spiffe://" + td + "/ns/" + ns + "/sa/" + sa;
}

// ---- names ------------------------------------------------------------------

bool valid_dns_label(std::string_view s) {
    if (s.empty() || s.size() > 63 || !alnum(s.front()) || !alnum(s.back())) return false;
    for (char c : s)
        if (!name_char_ok(c, false)) return false;
    return true;
}

bool valid_dns_subdomain(std::string_view s) {
    if (s.empty() || s.size() > 253) return false;
    size_t start = 0;
    for (;;) {
        size_t dot = s.find('.', start);
        std::string_view label = s.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start);
        if (!valid_dns_label(label)) return false;
        if (dot == std::string_view::npos) return true;
        start = dot + 1;
    }
}

bool valid_trust_domain(std::string_view s) {
    if (s.empty() || s.size() > 253) return false;
    for (char c : s)
        if (!name_char_ok(c, true) && c != '_') return false;
    return true;
}

// ---- keys and certificates ------------------------------------------------

Result<PKey> generate_p256_key() {
    PKey key(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
    if (!key) return ossl(CertError::invalid_argument, "cannot generate a P-256 key");
    return key;
}

Status write_new_private_key(const std::string& path, EVP_PKEY* key) {
    auto pem = private_key_pem(key);
    if (!pem) return pem.error();
    Status st = write_new_file(path, *pem, 0600);
    OPENSSL_cleanse(pem->data(), pem->size());
    return st;
}

Result<PKey> load_private_key(const std::string& path) {
    auto text = fs::read_file(path, 64 << 10);
    if (!text) return cert_error(CertError::io, text.error().message);
    BioPtr bio(BIO_new_mem_buf(text->data(), static_cast<int>(text->size())));
    PKey key(bio ? PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr) : nullptr);
    OPENSSL_cleanse(text->data(), text->size());
    if (!key) return ossl(CertError::invalid_argument, "cannot read the private key " + path);
    if (!is_p256(key.get())) return cert_error(CertError::invalid_argument, path + ": not a P-256 key");
    return key;
}

Result<X509Ptr> parse_cert_der(std::span<const uint8_t> der) {
    const unsigned char* p = der.data();
    X509Ptr cert(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
    if (!cert) return ossl(CertError::bad_certificate, "cannot decode the certificate");
    if (p != der.data() + der.size()) return cert_error(CertError::bad_certificate, "bytes after the certificate");
    return cert;
}

Result<std::vector<X509Ptr>> parse_certs_pem(std::string_view pem) {
    BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
    if (!bio) return ossl(CertError::bad_certificate, "out of memory");
    std::vector<X509Ptr> out;
    while (X509* c = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) out.emplace_back(c);
    // The loop ends on "no start line" at the end of the input: expected.
    ERR_clear_error();
    if (out.empty()) return cert_error(CertError::bad_certificate, "no PEM certificate found");
    return out;
}

Bytes cert_der(X509* cert) {
    unsigned char* buf = nullptr;
    int len = i2d_X509(cert, &buf);
    if (len <= 0) return {};
    Bytes out(buf, buf + len);
    OPENSSL_free(buf);
    return out;
}

std::string cert_pem(X509* cert) {
    BioPtr bio(BIO_new(BIO_s_mem()));
    if (!bio || PEM_write_bio_X509(bio.get(), cert) != 1) return {};
    return bio_string(bio.get());
}

Fingerprint fingerprint(X509* cert) {
    Bytes der = cert_der(cert);
    return sha256({der});
}

TimePoint cert_not_before(X509* cert) { return asn1_to_time(X509_get0_notBefore(cert)); }
TimePoint cert_not_after(X509* cert) { return asn1_to_time(X509_get0_notAfter(cert)); }

bool needs_renewal(X509* cert, TimePoint now) {
    TimePoint from = cert_not_before(cert), to = cert_not_after(cert);
    if (now >= to || to <= from) return true;
    return (to - now) * 3 < (to - from);
}

Result<std::string> make_csr(EVP_PKEY* key, const std::string& trust_domain, const std::string& node_name) {
    if (!valid_trust_domain(trust_domain)) return cert_error(CertError::invalid_argument, "invalid trust domain: " + trust_domain);
    if (!valid_dns_subdomain(node_name)) return cert_error(CertError::invalid_argument, "invalid node name: " + node_name);
    X509ReqPtr req(X509_REQ_new());
    auto name = make_name(node_name, trust_domain);
    if (!req || !name || X509_REQ_set_version(req.get(), 0) != 1 || X509_REQ_set_subject_name(req.get(), name.get()) != 1 ||
        X509_REQ_set_pubkey(req.get(), key) != 1 || X509_REQ_sign(req.get(), key, sha256_md()) <= 0)
        return ossl(CertError::invalid_argument, "cannot build the CSR");
    BioPtr bio(BIO_new(BIO_s_mem()));
    if (!bio || PEM_write_bio_X509_REQ(bio.get(), req.get()) != 1) return ossl(CertError::invalid_argument, "cannot encode the CSR");
    return bio_string(bio.get());
}

// ---- the authority ----------------------------------------------------------

Result<Authority> Authority::create(const AuthorityOptions& opts) {
    if (!valid_trust_domain(opts.trust_domain))
        return cert_error(CertError::invalid_argument, "invalid trust domain: " + opts.trust_domain);
    if (opts.validity <= std::chrono::seconds(0)) return cert_error(CertError::invalid_argument, "validity must be positive");
    auto key = generate_p256_key();
    if (!key) return key.error();
    X509Ptr cert(X509_new());
    if (!cert) return ossl(CertError::invalid_argument, "out of memory");
    // A random tag in the CN keeps successive CAs of one trust domain apart
    // (rotation: old and new CA in one bundle).
    uint8_t tag[4];
    if (!random_bytes(tag)) return ossl(CertError::invalid_argument, "no randomness");
    auto name = make_name("signet authority " + opts.trust_domain + " " + hex(tag), opts.trust_domain);
    TimePoint from = opts.not_before.value_or(Clock::now() - kCertBackdate);
    if (!name || X509_set_version(cert.get(), 2) != 1 || X509_set_subject_name(cert.get(), name.get()) != 1 ||
        X509_set_issuer_name(cert.get(), name.get()) != 1 || X509_set_pubkey(cert.get(), key->get()) != 1)
        return ossl(CertError::invalid_argument, "cannot build the CA certificate");
    const std::string san = "URI:spiffe://" + opts.trust_domain;
    for (auto st : {set_random_serial(cert.get()), set_validity(cert.get(), from, from + opts.validity),
                    add_ext(cert.get(), cert.get(), NID_basic_constraints, "critical,CA:TRUE,pathlen:0"),
                    add_ext(cert.get(), cert.get(), NID_key_usage, "critical,keyCertSign,cRLSign"),
                    add_ext(cert.get(), cert.get(), NID_subject_key_identifier, "hash"),
                    add_ext(cert.get(), cert.get(), NID_subject_alt_name, san.c_str())})
        if (!st) return st.error();
    if (X509_sign(cert.get(), key->get(), sha256_md()) <= 0) return ossl(CertError::invalid_argument, "cannot sign the CA certificate");
    Authority a;
    a.key_ = std::move(*key);
    a.cert_ = std::move(cert);
    a.trust_domain_ = opts.trust_domain;
    a.bundle_pem_ = cert_pem(a.cert_.get());
    return a;
}

Status Authority::save(const std::string& dir) const {
    const std::string key_path = dir + "/ca.key", crt_path = dir + "/ca.crt", bundle_path = dir + "/trust-bundle.pem";
    for (const auto& p : {key_path, crt_path, bundle_path})
        if (exists(p)) return cert_error(CertError::io, "refusing to overwrite an existing authority: " + p + " exists");
    if (auto st = fs::make_dirs(dir, 0700); !st) return cert_error(CertError::io, st.error().message);
    if (auto st = write_new_private_key(key_path, key_.get()); !st) return st;
    Status st = write_new_file(crt_path, cert_pem(cert_.get()), 0644);
    if (st) st = write_new_file(bundle_path, bundle_pem_, 0644);
    if (!st) {
        // Leave nothing half-made (only what this call created).
        ::unlink(key_path.c_str());
        ::unlink(crt_path.c_str());
    }
    return st;
}

Status init_authority(const std::string& dir, const AuthorityOptions& opts) {
    auto a = Authority::create(opts);
    if (!a) return a.error();
    return a->save(dir);
}

Result<Authority> Authority::load(const std::string& dir) {
    Authority a;
    auto key = load_private_key(dir + "/ca.key");
    if (!key) return key.error();
    auto crt_text = fs::read_file(dir + "/ca.crt", 1 << 20);
    if (!crt_text) return cert_error(CertError::io, crt_text.error().message);
    auto certs = parse_certs_pem(*crt_text);
    if (!certs) return certs.error();
    if (certs->size() != 1) return cert_error(CertError::bad_certificate, dir + "/ca.crt: expected one certificate");
    auto bundle = fs::read_file(dir + "/trust-bundle.pem", 1 << 20);
    if (!bundle) return cert_error(CertError::io, bundle.error().message);
    a.key_ = std::move(*key);
    a.cert_ = std::move(certs->front());
    if (EVP_PKEY_eq(X509_get0_pubkey(a.cert_.get()), a.key_.get()) != 1)
        return cert_error(CertError::bad_certificate, dir + ": ca.key does not match ca.crt");
    a.trust_domain_ = subject_entry(X509_get_subject_name(a.cert_.get()), NID_organizationName);
    if (!valid_trust_domain(a.trust_domain_))
        return cert_error(CertError::bad_certificate, dir + "/ca.crt: no valid trust domain in O=");
    a.bundle_pem_ = std::move(*bundle);
    return a;
}

Result<Authority> Authority::from_pem(std::string_view key_pem, std::string_view cert_pem_text,
                                     std::string_view bundle_pem) {
    Authority a;
    BioPtr bio(BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size())));
    a.key_.reset(bio ? PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr) : nullptr);
    if (!a.key_) return ossl(CertError::invalid_argument, "cannot read the CA key");
    if (!is_p256(a.key_.get())) return cert_error(CertError::invalid_argument, "the CA key is not P-256");
    auto certs = parse_certs_pem(cert_pem_text);
    if (!certs) return certs.error();
    if (certs->size() != 1) return cert_error(CertError::bad_certificate, "expected one CA certificate");
    a.cert_ = std::move(certs->front());
    if (EVP_PKEY_eq(X509_get0_pubkey(a.cert_.get()), a.key_.get()) != 1)
        return cert_error(CertError::bad_certificate, "the CA key does not match the CA certificate");
    a.trust_domain_ = subject_entry(X509_get_subject_name(a.cert_.get()), NID_organizationName);
    if (!valid_trust_domain(a.trust_domain_))
        return cert_error(CertError::bad_certificate, "the CA certificate has no valid trust domain in O=");
    a.bundle_pem_ = bundle_pem.empty() ? cert_pem(a.cert_.get()) : std::string(bundle_pem);
    return a;
}

namespace {

// A CSR (PEM) whose key is P-256 and whose signature verifies (proof of possession).
Result<X509ReqPtr> read_csr(std::string_view csr_pem) {
    BioPtr bio(BIO_new_mem_buf(csr_pem.data(), static_cast<int>(csr_pem.size())));
    X509ReqPtr req(bio ? PEM_read_bio_X509_REQ(bio.get(), nullptr, nullptr, nullptr) : nullptr);
    if (!req) return ossl(CertError::invalid_argument, "cannot read the CSR");
    EVP_PKEY* pub = X509_REQ_get0_pubkey(req.get());
    if (!is_p256(pub)) return cert_error(CertError::invalid_argument, "the CSR's key is not P-256");
    if (X509_REQ_verify(req.get(), pub) != 1) return ossl(CertError::invalid_argument, "the CSR's signature does not verify");
    return req;
}

}  // namespace

Result<std::string> Authority::sign_csr(std::string_view csr_pem, const std::string& node_name, const IssueOptions& opts) const {
    if (!valid_dns_subdomain(node_name)) return cert_error(CertError::invalid_argument, "invalid node name: " + node_name);
    if (opts.validity <= std::chrono::seconds(0)) return cert_error(CertError::invalid_argument, "validity must be positive");
    if (opts.validity > kMaxNodeValidity + kCertBackdate)
        return cert_error(CertError::lifetime_too_long,
                          "a node certificate lives at most " + std::to_string(kMaxNodeValidity.count()) +
                              "h (expiry is its only revocation; verifiers refuse longer ones): " +
                              std::to_string(opts.validity.count()) + "s requested");
    auto read = read_csr(csr_pem);
    if (!read) return read.error();
    X509ReqPtr req = std::move(*read);
    EVP_PKEY* pub = X509_REQ_get0_pubkey(req.get());
    const X509_NAME* subj = X509_REQ_get_subject_name(req.get());
    if (subject_entry(subj, NID_commonName) != node_name || subject_entry(subj, NID_organizationName) != trust_domain_)
        return cert_error(CertError::invalid_argument, "the CSR's subject is not CN=" + node_name + ", O=" + trust_domain_);

    X509Ptr cert(X509_new());
    auto name = make_name(node_name, trust_domain_);
    if (!cert || !name || X509_set_version(cert.get(), 2) != 1 || X509_set_subject_name(cert.get(), name.get()) != 1 ||
        X509_set_issuer_name(cert.get(), X509_get_subject_name(cert_.get())) != 1 || X509_set_pubkey(cert.get(), pub) != 1)
        return ossl(CertError::invalid_argument, "cannot build the node certificate");
    TimePoint from = opts.not_before.value_or(Clock::now() - kCertBackdate);
    TimePoint to = std::min(from + opts.validity, cert_not_after(cert_.get()));
    const std::string san = "URI:" + spiffe_node(trust_domain_, node_name);
    for (auto st : {set_random_serial(cert.get()), set_validity(cert.get(), from, to),
                    add_ext(cert.get(), cert_.get(), NID_basic_constraints, "critical,CA:FALSE"),
                    add_ext(cert.get(), cert_.get(), NID_key_usage, "critical,digitalSignature,keyAgreement"),
                    add_ext(cert.get(), cert_.get(), NID_ext_key_usage, "serverAuth,clientAuth"),
                    add_ext(cert.get(), cert_.get(), NID_authority_key_identifier, "keyid:always"),
                    add_ext(cert.get(), cert_.get(), NID_subject_alt_name, san.c_str())})
        if (!st) return st.error();
    if (X509_sign(cert.get(), key_.get(), sha256_md()) <= 0) return ossl(CertError::invalid_argument, "cannot sign the node certificate");
    return cert_pem(cert.get());
}

Result<NodeCredentials> Authority::issue(const std::string& node_name, const IssueOptions& opts) const {
    auto key = generate_p256_key();
    if (!key) return key.error();
    auto csr = make_csr(key->get(), trust_domain_, node_name);
    if (!csr) return csr.error();
    auto crt = sign_csr(*csr, node_name, opts);
    if (!crt) return crt.error();
    auto certs = parse_certs_pem(*crt);
    if (!certs) return certs.error();
    NodeCredentials c;
    c.key = std::move(*key);
    c.cert = std::move(certs->front());
    c.chain_der = cert_der(c.cert.get());
    c.identity = NodeIdentity{trust_domain_, node_name, sha256({c.chain_der}), cert_not_before(c.cert.get()),
                              cert_not_after(c.cert.get())};
    return c;
}

Result<std::string> Authority::sign_workload_csr(std::string_view csr_pem, const std::string& ns,
                                                 const std::string& service_account, const WorkloadIssueOptions& opts) const {
    if (!valid_dns_label(ns)) return cert_error(CertError::invalid_argument, "invalid namespace: " + ns);
    if (!valid_dns_subdomain(service_account))
        return cert_error(CertError::invalid_argument, "invalid service account name: " + service_account);
    if (opts.validity <= std::chrono::seconds(0)) return cert_error(CertError::invalid_argument, "validity must be positive");
    if (opts.validity > kMaxWorkloadValidity + kCertBackdate)
        return cert_error(CertError::lifetime_too_long, "a workload certificate lives at most " +
                                                            std::to_string(kMaxWorkloadValidity.count()) + "h: " +
                                                            std::to_string(opts.validity.count()) + "s requested");
    auto read = read_csr(csr_pem);
    if (!read) return read.error();
    X509ReqPtr req = std::move(*read);
    EVP_PKEY* pub = X509_REQ_get0_pubkey(req.get());
    X509Ptr cert(X509_new());
    X509_NAME* empty = X509_NAME_new();
    bool built = cert && empty && X509_set_version(cert.get(), 2) == 1 && X509_set_subject_name(cert.get(), empty) == 1 &&
                 X509_set_issuer_name(cert.get(), X509_get_subject_name(cert_.get())) == 1 &&
                 X509_set_pubkey(cert.get(), pub) == 1;
    X509_NAME_free(empty);
    if (!built) return ossl(CertError::invalid_argument, "cannot build the workload certificate");
    TimePoint from = opts.not_before.value_or(Clock::now() - kCertBackdate);
    TimePoint to = std::min(from + opts.validity, cert_not_after(cert_.get()));
    // An empty subject: the SAN is critical (RFC 5280 4.2.1.6), as SPIFFE X.509-SVIDs have it.
    const std::string san = "critical,URI:" + spiffe_workload(trust_domain_, ns, service_account);
    for (auto st : {set_random_serial(cert.get()), set_validity(cert.get(), from, to),
                    add_ext(cert.get(), cert_.get(), NID_basic_constraints, "critical,CA:FALSE"),
                    add_ext(cert.get(), cert_.get(), NID_key_usage, "critical,digitalSignature"),
                    add_ext(cert.get(), cert_.get(), NID_ext_key_usage, "serverAuth,clientAuth"),
                    add_ext(cert.get(), cert_.get(), NID_authority_key_identifier, "keyid:always"),
                    add_ext(cert.get(), cert_.get(), NID_subject_alt_name, san.c_str())})
        if (!st) return st.error();
    if (X509_sign(cert.get(), key_.get(), sha256_md()) <= 0)
        return ossl(CertError::invalid_argument, "cannot sign the workload certificate");
    return cert_pem(cert.get());
}

Result<WorkloadCredentials> Authority::issue_workload(const std::string& ns, const std::string& service_account,
                                                     const WorkloadIssueOptions& opts) const {
    auto key = generate_p256_key();
    if (!key) return key.error();
    // A CSR for proof of possession; its subject is not used.
    X509ReqPtr req(X509_REQ_new());
    if (!req || X509_REQ_set_pubkey(req.get(), key->get()) != 1 || X509_REQ_sign(req.get(), key->get(), sha256_md()) <= 0)
        return ossl(CertError::invalid_argument, "cannot make the workload's CSR");
    BioPtr out(BIO_new(BIO_s_mem()));
    if (!out || PEM_write_bio_X509_REQ(out.get(), req.get()) != 1) return ossl(CertError::invalid_argument, "cannot write the CSR");
    char* data = nullptr;
    long n = BIO_get_mem_data(out.get(), &data);
    auto crt = sign_workload_csr(std::string_view(data, static_cast<size_t>(n)), ns, service_account, opts);
    if (!crt) return crt.error();
    auto certs = parse_certs_pem(*crt);
    if (!certs) return certs.error();
    WorkloadCredentials c;
    c.key = std::move(*key);
    c.cert = std::move(certs->front());
    c.identity = WorkloadIdentity{trust_domain_, ns, service_account, spiffe_workload(trust_domain_, ns, service_account),
                                  cert_not_before(c.cert.get()), cert_not_after(c.cert.get())};
    return c;
}

namespace {

// The key (a new file, 0600 from its first byte), the certificate and a copy
// of the trust bundle into `out_dir` (0700 if new); on failure neither the key
// nor the certificate is left.
Status write_credential_files(const std::string& out_dir, const std::string& key_path, const std::string& crt_path,
                              const std::string& bundle_path, EVP_PKEY* key, X509* cert, const std::string& bundle_pem) {
    if (auto st = fs::make_dirs(out_dir, 0700); !st) return cert_error(CertError::io, st.error().message);
    if (auto st = write_new_private_key(key_path, key); !st) return st;
    Status st = write_new_file(crt_path, cert_pem(cert), 0644);
    if (st) {
        if (auto w = fs::write_atomic(bundle_path, bundle_pem, 0644); !w) st = cert_error(CertError::io, w.error().message);
    }
    if (!st) {
        ::unlink(key_path.c_str());
        ::unlink(crt_path.c_str());
    }
    return st;
}

}  // namespace

Status issue_node(const Authority& ca, const std::string& node_name, const std::string& out_dir, const IssueOptions& opts) {
    if (!valid_dns_subdomain(node_name)) return cert_error(CertError::invalid_argument, "invalid node name: " + node_name);
    const std::string key_path = out_dir + "/node.key", crt_path = out_dir + "/node.crt", bundle_path = out_dir + "/trust-bundle.pem";
    for (const auto& p : {key_path, crt_path})
        if (exists(p)) return cert_error(CertError::io, "refusing to overwrite " + p);
    auto creds = ca.issue(node_name, opts);
    if (!creds) return creds.error();
    return write_credential_files(out_dir, key_path, crt_path, bundle_path, creds->key.get(), creds->cert.get(),
                                  ca.bundle_pem());
}

Status issue_workload_files(const Authority& ca, const std::string& ns, const std::string& service_account,
                            const std::string& out_dir, const WorkloadIssueOptions& opts) {
    const std::string key_path = out_dir + "/svid.key", crt_path = out_dir + "/svid.crt",
                      bundle_path = out_dir + "/trust-bundle.pem";
    for (const auto& p : {key_path, crt_path})
        if (exists(p)) return cert_error(CertError::io, "refusing to overwrite " + p);
    auto creds = ca.issue_workload(ns, service_account, opts);
    if (!creds) return creds.error();
    return write_credential_files(out_dir, key_path, crt_path, bundle_path, creds->key.get(), creds->cert.get(),
                                  ca.bundle_pem());
}

// ---- trust bundles ----------------------------------------------------------

Result<TrustBundle> TrustBundle::from_pem(std::string_view pem) {
    auto certs = parse_certs_pem(pem);
    if (!certs) return certs.error();
    auto anchors = std::make_shared<std::vector<Anchor>>();
    std::shared_ptr<X509_STORE> store(X509_STORE_new(), StoreFree{});
    if (!store) return ossl(CertError::bad_certificate, "out of memory");
    Bytes all_der;
    for (auto& c : *certs) {
        X509* cert = c.get();
        Bytes der = cert_der(cert);
        all_der.insert(all_der.end(), der.begin(), der.end());
        if (X509_check_ca(cert) != 1)
            return cert_error(CertError::bad_certificate, "trust bundle: a certificate is not a CA");
        bool other = false;
        auto uris = uri_sans(cert, &other);
        std::string td;
        if (uris.size() == 1 && uris[0].rfind("spiffe://", 0) == 0) td = uris[0].substr(9);
        if (!valid_trust_domain(td))
            return cert_error(CertError::bad_certificate, "trust bundle: a CA without one URI SAN spiffe://<trust domain>");
        if (X509_STORE_add_cert(store.get(), cert) != 1) return ossl(CertError::bad_certificate, "trust bundle: cannot add a CA");
        anchors->push_back(Anchor{std::shared_ptr<X509>(c.release(), X509Free{}), td});
    }
    TrustBundle b;
    b.anchors_ = std::move(anchors);
    b.store_ = std::move(store);
    b.digest_ = sha256({all_der});
    return b;
}

Result<TrustBundle> TrustBundle::load(const std::string& path) {
    auto text = fs::read_file(path, 4 << 20);
    if (!text) return cert_error(CertError::io, text.error().message);
    auto b = from_pem(*text);
    if (!b) return cert_error(static_cast<CertError>(b.error().code), path + ": " + b.error().message);
    return b;
}

std::vector<std::string> TrustBundle::trust_domains() const {
    std::vector<std::string> out;
    if (anchors_)
        for (const auto& a : *anchors_) out.push_back(a.trust_domain);
    return out;
}

Result<const TrustBundle::Anchor*> TrustBundle::anchor_of(X509* leaf, std::span<X509* const> intermediates,
                                                          TimePoint at, const std::string& what) const {
    if (!store_ || !leaf) return cert_error(CertError::chain_not_to_bundle, "empty trust bundle");
    struct SkFree { void operator()(STACK_OF(X509)* s) const { sk_X509_free(s); } };
    std::unique_ptr<STACK_OF(X509), SkFree> untrusted(sk_X509_new_null());
    if (!untrusted) return ossl(CertError::bad_certificate, "out of memory");
    for (X509* c : intermediates)
        if (!sk_X509_push(untrusted.get(), c)) return ossl(CertError::bad_certificate, "out of memory");
    std::unique_ptr<X509_STORE_CTX, StoreCtxFree> ctx(X509_STORE_CTX_new());
    if (!ctx || X509_STORE_CTX_init(ctx.get(), store_.get(), leaf, untrusted.get()) != 1)
        return ossl(CertError::bad_certificate, "cannot set up certificate verification");
    X509_VERIFY_PARAM* param = X509_STORE_CTX_get0_param(ctx.get());
    X509_VERIFY_PARAM_set_time(param, to_time_t(at));
    X509_VERIFY_PARAM_set_depth(param, 2);
    X509_VERIFY_PARAM_set_flags(param, X509_V_FLAG_X509_STRICT);
    if (X509_verify_cert(ctx.get()) != 1) {
        int err = X509_STORE_CTX_get_error(ctx.get());
        ERR_clear_error();
        std::string text = X509_verify_cert_error_string(err);
        if (err == X509_V_ERR_CERT_HAS_EXPIRED) return cert_error(CertError::expired, what + " expired: " + text);
        if (err == X509_V_ERR_CERT_NOT_YET_VALID) return cert_error(CertError::not_yet_valid, what + " not yet valid: " + text);
        return cert_error(CertError::chain_not_to_bundle, what + " does not chain to the trust bundle: " + text);
    }
    STACK_OF(X509)* chain = X509_STORE_CTX_get0_chain(ctx.get());
    X509* anchor = chain && sk_X509_num(chain) > 0 ? sk_X509_value(chain, sk_X509_num(chain) - 1) : nullptr;
    const Anchor* found = nullptr;
    for (const auto& a : *anchors_)
        if (anchor && X509_cmp(a.cert.get(), anchor) == 0) found = &a;
    if (!found) return cert_error(CertError::chain_not_to_bundle, what + " chains to no CA of the bundle");
    return found;
}

Result<NodeIdentity> TrustBundle::verify_node(X509* leaf, std::span<X509* const> intermediates, TimePoint at) const {
    auto anchored = anchor_of(leaf, intermediates, at, "node certificate");
    if (!anchored) return anchored.error();
    const Anchor* found = *anchored;

    // A signet node certificate, of the anchoring CA's trust domain.
    if (X509_check_ca(leaf) != 0) return cert_error(CertError::bad_certificate, "a CA certificate is not a node certificate");
    // Both usages must be there: OpenSSL reports a missing extension as
    // "every usage". keyUsage: digitalSignature (signed tokens) and
    // keyAgreement (ECDH for the pair key), never certificate or CRL signing.
    const uint32_t flags = X509_get_extension_flags(leaf);
    const uint32_t ku = X509_get_key_usage(leaf);
    if (!(flags & EXFLAG_KUSAGE) || (ku & (KU_DIGITAL_SIGNATURE | KU_KEY_AGREEMENT)) != (KU_DIGITAL_SIGNATURE | KU_KEY_AGREEMENT))
        return cert_error(CertError::bad_certificate, "node certificate lacks the keyUsage digitalSignature+keyAgreement");
    if (ku & (KU_KEY_CERT_SIGN | KU_CRL_SIGN))
        return cert_error(CertError::bad_certificate, "node certificate has the keyUsage keyCertSign or cRLSign");
    uint32_t xku = X509_get_extended_key_usage(leaf);
    if (!(flags & EXFLAG_XKUSAGE) || (xku & (XKU_SSL_SERVER | XKU_SSL_CLIENT)) != (XKU_SSL_SERVER | XKU_SSL_CLIENT))
        return cert_error(CertError::bad_certificate, "node certificate lacks the extended key usage serverAuth+clientAuth");
    if (!is_p256(X509_get0_pubkey(leaf))) return cert_error(CertError::bad_certificate, "node certificate key is not P-256");
    bool other = false;
    auto uris = uri_sans(leaf, &other);
    if (uris.size() != 1 || other) return cert_error(CertError::bad_certificate, "node certificate must have exactly one URI SAN");
    const X509_NAME* subj = X509_get_subject_name(leaf);
    NodeIdentity id;
    id.trust_domain = subject_entry(subj, NID_organizationName);
    id.node_name = subject_entry(subj, NID_commonName);
    if (!valid_trust_domain(id.trust_domain) || !valid_dns_subdomain(id.node_name) ||
        uris[0] != spiffe_node(id.trust_domain, id.node_name))
        return cert_error(CertError::bad_certificate, "node certificate subject and URI SAN disagree");
    if (id.trust_domain != found->trust_domain)
        return cert_error(CertError::wrong_trust_domain, "node certificate names trust domain " + id.trust_domain +
                                                             " but its CA owns " + found->trust_domain);
    id.fingerprint = fingerprint(leaf);
    id.not_before = cert_not_before(leaf);
    id.not_after = cert_not_after(leaf);
    if (id.not_after - id.not_before > kMaxNodeCertLifetime)
        return cert_error(CertError::lifetime_too_long,
                          "node certificate lifetime " +
                              std::to_string(std::chrono::duration_cast<std::chrono::seconds>(id.not_after - id.not_before).count()) +
                              "s is over the " + std::to_string(kMaxNodeCertLifetime.count()) +
                              "s a node certificate may have (24 h + backdating; expiry is its only revocation)");
    return id;
}

Result<WorkloadIdentity> TrustBundle::verify_workload(X509* leaf, std::span<X509* const> intermediates,
                                                      TimePoint at) const {
    auto anchored = anchor_of(leaf, intermediates, at, "workload certificate");
    if (!anchored) return anchored.error();
    const Anchor* found = *anchored;
    if (X509_check_ca(leaf) != 0) return cert_error(CertError::bad_certificate, "a CA certificate is not a workload's");
    const uint32_t flags = X509_get_extension_flags(leaf);
    const uint32_t ku = X509_get_key_usage(leaf);
    if (!(flags & EXFLAG_KUSAGE) || !(ku & KU_DIGITAL_SIGNATURE))
        return cert_error(CertError::bad_certificate, "workload certificate lacks the keyUsage digitalSignature");
    if (ku & (KU_KEY_CERT_SIGN | KU_CRL_SIGN | KU_KEY_AGREEMENT))
        return cert_error(CertError::bad_certificate,
                          "workload certificate has the keyUsage keyCertSign, cRLSign or keyAgreement (a node's)");
    const uint32_t xku = X509_get_extended_key_usage(leaf);
    if (!(flags & EXFLAG_XKUSAGE) || (xku & (XKU_SSL_SERVER | XKU_SSL_CLIENT)) != (XKU_SSL_SERVER | XKU_SSL_CLIENT))
        return cert_error(CertError::bad_certificate, "workload certificate lacks the extended key usage serverAuth+clientAuth");
    if (!is_p256(X509_get0_pubkey(leaf))) return cert_error(CertError::bad_certificate, "workload certificate key is not P-256");
    bool other = false;
    auto uris = uri_sans(leaf, &other);
    if (uris.size() != 1 || other)
        return cert_error(CertError::bad_certificate, "workload certificate must have exactly one SAN, a URI");
    // spiffe://<td>/ns/<ns>/sa/<sa>, the trust domain the anchoring CA's.
    const std::string prefix = "spiffe://" + found->trust_domain + "/ns/";
    const std::string& uri = uris[0];
    if (uri.rfind(prefix, 0) != 0)
        return cert_error(uri.rfind("spiffe://", 0) == 0 && uri.find("/ns/") != std::string::npos
                              ? CertError::wrong_trust_domain
                              : CertError::bad_certificate,
                          "workload certificate's URI SAN is not " + prefix + "<namespace>/sa/<service account>");
    const std::string rest = uri.substr(prefix.size());
    const size_t sa_at = rest.find("/sa/");
    WorkloadIdentity id;
    id.trust_domain = found->trust_domain;
    id.namespace_ = sa_at == std::string::npos ? std::string() : rest.substr(0, sa_at);
    id.service_account = sa_at == std::string::npos ? std::string() : rest.substr(sa_at + 4);
    if (!valid_dns_label(id.namespace_) || !valid_dns_subdomain(id.service_account))
        return cert_error(CertError::bad_certificate, "workload certificate's URI SAN names no valid namespace and service account");
    id.spiffe_id = uri;
    id.not_before = cert_not_before(leaf);
    id.not_after = cert_not_after(leaf);
    if (id.not_after - id.not_before > kMaxWorkloadCertLifetime)
        return cert_error(CertError::lifetime_too_long, "workload certificate lifetime over " +
                                                            std::to_string(kMaxWorkloadCertLifetime.count()) + "s");
    return id;
}

Result<NodeCredentials> NodeCredentials::from_pem(std::string_view key_pem, std::string_view cert_pem_text,
                                                  const TrustBundle& bundle, TimePoint now) {
    NodeCredentials c;
    BioPtr bio(BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size())));
    c.key.reset(bio ? PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr) : nullptr);
    if (!c.key) return ossl(CertError::invalid_argument, "cannot read the node key");
    if (!is_p256(c.key.get())) return cert_error(CertError::invalid_argument, "the node key is not P-256");
    auto certs = parse_certs_pem(cert_pem_text);
    if (!certs) return certs.error();
    if (certs->size() != 1) return cert_error(CertError::bad_certificate, "expected one node certificate");
    c.cert = std::move(certs->front());
    if (EVP_PKEY_eq(X509_get0_pubkey(c.cert.get()), c.key.get()) != 1)
        return cert_error(CertError::bad_certificate, "the node key does not match the node certificate");
    auto id = bundle.verify_node(c.cert.get(), {}, now);
    if (!id) return id.error();
    c.identity = std::move(*id);
    c.chain_der = cert_der(c.cert.get());
    return c;
}

Result<NodeCredentials> NodeCredentials::load(const std::string& dir, const TrustBundle& bundle, TimePoint now) {
    auto key = fs::read_file(dir + "/node.key", 64 << 10);
    if (!key) return cert_error(CertError::io, key.error().message);
    auto crt = fs::read_file(dir + "/node.crt", 1 << 20);
    if (!crt) {
        OPENSSL_cleanse(key->data(), key->size());
        return cert_error(CertError::io, crt.error().message);
    }
    auto c = from_pem(*key, *crt, bundle, now);
    OPENSSL_cleanse(key->data(), key->size());
    if (!c) return make_error(c.error().code, dir + ": " + c.error().message);
    return c;
}

}  // namespace signet::identity
