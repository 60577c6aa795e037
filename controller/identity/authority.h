// signet identity: the cluster authority, node keys and certificates, trust
// bundles. ECDSA P-256 throughout (docs/handshake.md says why); OpenSSL 3
// EVP APIs only. Library code: no logging; errors carry OpenSSL's text.
//
// On disk
//   authority folder: ca.key (0600), ca.crt, trust-bundle.pem (starts as ca.crt;
//                     append other CAs for rotation or other clusters)
//   node folder:      node.key (0600), node.crt, trust-bundle.pem
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "identity/crypto.h"
#include "signet/result.h"

namespace signet::identity {

using Clock = std::chrono::system_clock;
using TimePoint = Clock::time_point;
using Fingerprint = Sha256;  // SHA-256 of a certificate's DER encoding

constexpr std::chrono::hours kDefaultCaValidity{87600};   // 10 years
constexpr std::chrono::hours kDefaultNodeValidity{24};    // short: expiry is the revocation
constexpr std::chrono::minutes kCertBackdate{5};          // notBefore = now - 5 min (clock skew)
// The longest node certificate there is. Expiry is the only revocation (no
// CRL or OCSP on a SYN), so a stolen node key, or a certificate a node's
// own authority issued it, must stop working within a day:
//  - issuers grant at most kMaxNodeValidity counted from issuance, i.e.
//    notAfter - notBefore <= kMaxNodeValidity + kCertBackdate (sign_csr
//    refuses more; signetctl authority issue and the CSR signer stay within);
//  - verifiers refuse a node certificate whose notAfter - notBefore is over
//    kMaxNodeCertLifetime: that plus kCertLifetimeSlack, for an issuer that
//    backdates or rounds a little differently (CertError::lifetime_too_long).
constexpr std::chrono::hours kMaxNodeValidity{24};
constexpr std::chrono::minutes kCertLifetimeSlack{5};
constexpr std::chrono::seconds kMaxNodeCertLifetime = kMaxNodeValidity + kCertBackdate + kCertLifetimeSlack;  // 24 h 10 min

// Workload identities (docs/workload-identity.md): SPIFFE X.509-SVIDs for
// spiffe://<trust domain>/ns/<namespace>/sa/<service account>, short-lived.
constexpr std::chrono::hours kDefaultWorkloadValidity{1};
constexpr std::chrono::hours kMaxWorkloadValidity{24};
constexpr std::chrono::seconds kMaxWorkloadCertLifetime = kMaxWorkloadValidity + kCertBackdate + kCertLifetimeSlack;

// Kubernetes name rules. Namespaces are RFC 1123 labels (<= 63, [a-z0-9-],
// alphanumeric at both ends); pod and node names are RFC 1123 subdomains
// (<= 253, labels joined by dots). Trust domains follow SPIFFE: [a-z0-9._-],
// <= 253, not empty.
bool valid_dns_label(std::string_view s);
bool valid_dns_subdomain(std::string_view s);
bool valid_trust_domain(std::string_view s);

// Error codes (Error::code) of certificate checks.
enum class CertError : int {
    bad_certificate = 1,        // not decodable, or not a signet node certificate
    chain_not_to_bundle = 2,    // does not chain to any CA of the bundle
    expired = 3,
    not_yet_valid = 4,
    wrong_trust_domain = 5,     // certificate names a trust domain its CA does not own
    io = 6,                     // files: missing, unreadable, already there
    invalid_argument = 7,
    lifetime_too_long = 8,      // node certificate: notAfter - notBefore over kMaxNodeCertLifetime
};

// ---- keys and certificates ------------------------------------------------

Result<PKey> generate_p256_key();
// PKCS#8 PEM into a new file (O_EXCL: refuses an existing file), mode 0600.
Status write_new_private_key(const std::string& path, EVP_PKEY* key);
Result<PKey> load_private_key(const std::string& path);

Result<X509Ptr> parse_cert_der(std::span<const uint8_t> der);
Result<std::vector<X509Ptr>> parse_certs_pem(std::string_view pem);  // one or more
Bytes cert_der(X509* cert);
std::string cert_pem(X509* cert);
Fingerprint fingerprint(X509* cert);
TimePoint cert_not_before(X509* cert);
TimePoint cert_not_after(X509* cert);

// True when less than a third of the certificate's lifetime remains at `now`
// (or it is already expired).
bool needs_renewal(X509* cert, TimePoint now);

// A node's CSR (PEM): subject CN=<node>, O=<trust domain>, signed with `key`.
Result<std::string> make_csr(EVP_PKEY* key, const std::string& trust_domain, const std::string& node_name);

// ---- trust bundles and verification ---------------------------------------

struct NodeIdentity {
    std::string trust_domain;
    std::string node_name;
    Fingerprint fingerprint{};
    TimePoint not_before{}, not_after{};
};

struct WorkloadIdentity {
    std::string trust_domain, namespace_, service_account;
    std::string spiffe_id;  // spiffe://<trust domain>/ns/<namespace>/sa/<service account>
    TimePoint not_before{}, not_after{};
};
std::string spiffe_workload(const std::string& trust_domain, const std::string& ns, const std::string& service_account);

// The CAs a node trusts: several at once (rotation, other clusters). Each CA
// owns the trust domain of its URI SAN spiffe://<trust domain>, and may
// vouch for nodes of that trust domain only. Copies share the same store.
class TrustBundle {
public:
    static Result<TrustBundle> from_pem(std::string_view pem);
    static Result<TrustBundle> load(const std::string& path);

    size_t size() const { return anchors_ ? anchors_->size() : 0; }
    std::vector<std::string> trust_domains() const;
    // SHA-256 over the CA certificates (DER, in order): equal for bundles of
    // the same CAs, so a re-read of an unchanged file is no change. Caches of
    // what was verified against a bundle (PairKeyCache) compare it.
    const Fingerprint& digest() const { return digest_; }

    // Verifies that `leaf` (with untrusted `intermediates`) chains to one of
    // the bundle's CAs at time `at`, that it is a signet node certificate
    // (P-256 key, not a CA, keyUsage present with digitalSignature (tokens)
    // and keyAgreement (pair keys) and without keyCertSign/cRLSign, EKU
    // present with serverAuth+clientAuth, CN, O and the one URI SAN
    // agreeing, notAfter - notBefore at most kMaxNodeCertLifetime), and that
    // its trust domain is the anchoring CA's. Error::code is a CertError.
    Result<NodeIdentity> verify_node(X509* leaf, std::span<X509* const> intermediates, TimePoint at) const;
    // The same for a workload's X.509-SVID (docs/workload-identity.md): P-256,
    // not a CA, keyUsage with digitalSignature and without keyAgreement,
    // keyCertSign or cRLSign (so it is never a node certificate), EKU
    // serverAuth+clientAuth, exactly one SAN: the URI
    // spiffe://<the anchoring CA's trust domain>/ns/<namespace>/sa/<service
    // account>, lifetime at most kMaxWorkloadCertLifetime.
    Result<WorkloadIdentity> verify_workload(X509* leaf, std::span<X509* const> intermediates, TimePoint at) const;

private:
    struct Anchor {
        std::shared_ptr<X509> cert;
        std::string trust_domain;
    };
    // Verifies the chain at `at`; the anchoring CA. `what` names the leaf in errors.
    Result<const Anchor*> anchor_of(X509* leaf, std::span<X509* const> intermediates, TimePoint at,
                                    const std::string& what) const;
    std::shared_ptr<const std::vector<Anchor>> anchors_;
    std::shared_ptr<X509_STORE> store_;
    Fingerprint digest_{};
};

// A workload's key and X.509-SVID.
struct WorkloadCredentials {
    PKey key;
    X509Ptr cert;
    WorkloadIdentity identity;
};

// This node's own credentials, as issue_node (or a CSR signer) left them.
struct NodeCredentials {
    PKey key;
    X509Ptr cert;
    Bytes chain_der;  // the certificate's DER (what first-contact tokens carry)
    NodeIdentity identity;

    // Loads node.key and node.crt from `dir`; the certificate must verify
    // against `bundle` at `now` and match the key.
    static Result<NodeCredentials> load(const std::string& dir, const TrustBundle& bundle, TimePoint now);
    static Result<NodeCredentials> from_pem(std::string_view key_pem, std::string_view cert_pem, const TrustBundle& bundle,
                                            TimePoint now);
};

// ---- the authority ----------------------------------------------------------

struct AuthorityOptions {
    std::string trust_domain = "cluster.local";
    std::chrono::seconds validity = kDefaultCaValidity;
    std::optional<TimePoint> not_before;  // default: now - kCertBackdate
};

// Creates ca.key (0600), ca.crt and trust-bundle.pem in `dir` (created 0700
// if missing). Refuses when any of them already exists.
Status init_authority(const std::string& dir, const AuthorityOptions& opts);

struct IssueOptions {
    // From notBefore; at most kMaxNodeValidity + kCertBackdate (refused above).
    std::chrono::seconds validity = kDefaultNodeValidity;
    std::optional<TimePoint> not_before;  // default: now - kCertBackdate
};

struct WorkloadIssueOptions {
    // From notBefore; at most kMaxWorkloadValidity + kCertBackdate (refused above).
    std::chrono::seconds validity = kDefaultWorkloadValidity;
    std::optional<TimePoint> not_before;  // default: now - kCertBackdate
};

class Authority {
public:
    // A new authority in memory (P-256 key, self-signed CA certificate:
    // CA:TRUE pathlen:0, keyCertSign+cRLSign, URI SAN spiffe://<trust domain>).
    static Result<Authority> create(const AuthorityOptions& opts);
    static Result<Authority> load(const std::string& dir);
    // The same from PEM text (e.g. a Kubernetes Secret): the CA key, its
    // certificate, and the trust bundle ("" = the CA certificate alone).
    static Result<Authority> from_pem(std::string_view key_pem, std::string_view cert_pem,
                                      std::string_view bundle_pem = {});
    // Writes ca.key (0600), ca.crt, trust-bundle.pem; refuses existing files.
    Status save(const std::string& dir) const;

    const std::string& trust_domain() const { return trust_domain_; }
    X509* certificate() const { return cert_.get(); }
    const std::string& bundle_pem() const { return bundle_pem_; }

    // Signs a node CSR (PEM). The CSR's signature must verify (proof of
    // possession), its key must be P-256, and its subject must be CN=<node>,
    // O=<trust domain>. The certificate: subject CN=<node>, O=<trust domain>,
    // URI SAN spiffe://<trust domain>/node/<node>, EKU serverAuth+clientAuth,
    // keyUsage digitalSignature+keyAgreement, CA:FALSE, random 128-bit serial,
    // notAfter capped at the CA's. A validity over kMaxNodeValidity +
    // kCertBackdate is refused (CertError::lifetime_too_long): verifiers would
    // refuse the certificate. Returns the certificate as PEM.
    Result<std::string> sign_csr(std::string_view csr_pem, const std::string& node_name,
                                 const IssueOptions& opts = {}) const;

    // A new node key and its certificate, in memory.
    Result<NodeCredentials> issue(const std::string& node_name, const IssueOptions& opts = {}) const;

    // Signs a workload's CSR (PEM; P-256, its signature verifying: proof of
    // possession; its subject and extensions are ignored) as the X.509-SVID
    // of spiffe://<trust domain>/ns/<ns>/sa/<service account>: empty subject,
    // the URI SAN (critical), keyUsage digitalSignature, EKU
    // serverAuth+clientAuth, CA:FALSE, random serial. `validity` defaults to
    // kDefaultWorkloadValidity; over kMaxWorkloadValidity + kCertBackdate is
    // refused (lifetime_too_long). Whether the caller may have that identity
    // is the caller's to decide (the signer checks the pod). PEM.
    Result<std::string> sign_workload_csr(std::string_view csr_pem, const std::string& ns,
                                          const std::string& service_account, const WorkloadIssueOptions& opts = {}) const;
    // A new workload key and its SVID, in memory.
    Result<WorkloadCredentials> issue_workload(const std::string& ns, const std::string& service_account,
                                               const WorkloadIssueOptions& opts = {}) const;

private:
    PKey key_;
    X509Ptr cert_;
    std::string trust_domain_;
    std::string bundle_pem_;
};

// Creates node.key (0600) in `out_dir` (0700 if new), a CSR for it, has `ca`
// sign it, writes node.crt and a copy of the authority's trust-bundle.pem.
// Refuses when node.key already exists.
Status issue_node(const Authority& ca, const std::string& node_name, const std::string& out_dir,
                  const IssueOptions& opts = {});

// Creates svid.key (0600) in `out_dir` (0700 if new), has `ca` issue the
// X.509-SVID of spiffe://<td>/ns/<ns>/sa/<service account> for it, writes
// svid.crt and a copy of the authority's trust-bundle.pem. Refuses when
// svid.key already exists.
Status issue_workload_files(const Authority& ca, const std::string& ns, const std::string& service_account,
                            const std::string& out_dir, const WorkloadIssueOptions& opts = {});

}  // namespace signet::identity
