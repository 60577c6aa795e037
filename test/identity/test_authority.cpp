// The cluster authority, node certificates, trust bundles (controller/identity/authority.cpp).
#include <doctest/doctest.h>

#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "helpers.h"
#include "identity/authority.h"
#include "signet/fsutil.h"

using namespace signet::identity;
using namespace signet::identity::test;
using namespace std::chrono_literals;

namespace {

int code(const signet::Error& e) { return e.code; }
int code(CertError c) { return static_cast<int>(c); }

Authority make_ca(const std::string& td = "cluster.local") {
    AuthorityOptions o;
    o.trust_domain = td;
    auto a = Authority::create(o);
    REQUIRE_MESSAGE(a.ok(), a.error().message);
    return std::move(*a);
}

TrustBundle bundle_of(std::initializer_list<const Authority*> cas) {
    std::string pem;
    for (auto* c : cas) pem += c->bundle_pem();
    auto b = TrustBundle::from_pem(pem);
    REQUIRE_MESSAGE(b.ok(), b.error().message);
    return std::move(*b);
}

}  // namespace

TEST_CASE("names follow the Kubernetes rules") {
    CHECK(valid_dns_label("default"));
    CHECK(valid_dns_label("a-1"));
    CHECK_FALSE(valid_dns_label(""));
    CHECK_FALSE(valid_dns_label("-a"));
    CHECK_FALSE(valid_dns_label("a-"));
    CHECK_FALSE(valid_dns_label("Default"));
    CHECK_FALSE(valid_dns_label("a.b"));
    CHECK_FALSE(valid_dns_label(std::string(64, 'a')));
    CHECK(valid_dns_label(std::string(63, 'a')));
    CHECK(valid_dns_subdomain("ip-10-0-1-23.ec2.internal"));
    CHECK_FALSE(valid_dns_subdomain("a..b"));
    CHECK_FALSE(valid_dns_subdomain(".a"));
    CHECK_FALSE(valid_dns_subdomain("a_b"));
    CHECK_FALSE(valid_dns_subdomain("caf\xc3\xa9"));
    CHECK_FALSE(valid_dns_subdomain(std::string("a\0b", 3)));
    CHECK(valid_trust_domain("cluster.local"));
    CHECK(valid_trust_domain("prod_eu-1.example"));
    CHECK_FALSE(valid_trust_domain("Cluster.local"));
    CHECK_FALSE(valid_trust_domain("a/b"));
    CHECK_FALSE(valid_trust_domain(""));
}

TEST_CASE("authority init, load, issue, verify on disk; keys 0600; no overwrite") {
    TempDir tmp;
    const std::string ca_dir = tmp / "ca", node_dir = tmp / "node-1";
    AuthorityOptions o;
    o.trust_domain = "prod.example";
    REQUIRE(init_authority(ca_dir, o).ok());
    CHECK(file_mode(ca_dir + "/ca.key") == 0600);
    CHECK(file_mode(ca_dir) == 0700);
    CHECK(file_exists(ca_dir + "/ca.crt"));
    CHECK(file_exists(ca_dir + "/trust-bundle.pem"));
    auto key_before = signet::fs::read_file(ca_dir + "/ca.key");
    REQUIRE(key_before.ok());

    auto again = init_authority(ca_dir, o);
    REQUIRE_FALSE(again.ok());
    CHECK(again.error().message.find("refusing to overwrite") != std::string::npos);
    CHECK(*signet::fs::read_file(ca_dir + "/ca.key") == *key_before);

    auto ca = Authority::load(ca_dir);
    REQUIRE_MESSAGE(ca.ok(), ca.error().message);
    CHECK(ca->trust_domain() == "prod.example");
    CHECK(cert_not_after(ca->certificate()) - cert_not_before(ca->certificate()) == std::chrono::seconds(kDefaultCaValidity));

    REQUIRE(issue_node(*ca, "worker-1.prod", node_dir).ok());
    CHECK(file_mode(node_dir + "/node.key") == 0600);
    CHECK(file_mode(node_dir) == 0700);
    auto again_node = issue_node(*ca, "worker-1.prod", node_dir);
    REQUIRE_FALSE(again_node.ok());
    CHECK(again_node.error().message.find("refusing to overwrite") != std::string::npos);

    auto bundle = TrustBundle::load(node_dir + "/trust-bundle.pem");
    REQUIRE(bundle.ok());
    auto creds = NodeCredentials::load(node_dir, *bundle, Clock::now());
    REQUIRE_MESSAGE(creds.ok(), creds.error().message);
    CHECK(creds->identity.trust_domain == "prod.example");
    CHECK(creds->identity.node_name == "worker-1.prod");
    CHECK(creds->identity.fingerprint == fingerprint(creds->cert.get()));
    CHECK(creds->identity.not_after - creds->identity.not_before == std::chrono::seconds(kDefaultNodeValidity));
    CHECK_FALSE(needs_renewal(creds->cert.get(), Clock::now()));
}

TEST_CASE("the CSR path: proof of possession, subject, key type") {
    Authority ca = make_ca();
    auto key = generate_p256_key();
    REQUIRE(key.ok());
    auto csr = make_csr(key->get(), "cluster.local", "node-1");
    REQUIRE(csr.ok());
    CHECK(ca.sign_csr(*csr, "node-1").ok());
    CHECK_FALSE(ca.sign_csr(*csr, "node-2").ok());  // CN must be the node it is issued for
    auto other_td = make_csr(key->get(), "other.example", "node-1");
    REQUIRE(other_td.ok());
    CHECK_FALSE(ca.sign_csr(*other_td, "node-1").ok());
    CHECK_FALSE(ca.sign_csr("not a csr", "node-1").ok());
    CHECK_FALSE(make_csr(key->get(), "cluster.local", "Node_1").ok());

    // A P-384 key is refused.
    PKey p384(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-384"));
    REQUIRE(p384);
    auto csr384 = make_csr(p384.get(), "cluster.local", "node-1");
    REQUIRE(csr384.ok());
    auto r = ca.sign_csr(*csr384, "node-1");
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().message.find("P-256") != std::string::npos);

    // A tampered CSR (signature no longer verifies) is refused.
    std::string bad = *csr;
    size_t mid = bad.size() / 2;
    bad[mid] = bad[mid] == 'A' ? 'B' : 'A';
    CHECK_FALSE(ca.sign_csr(bad, "node-1").ok());
}

TEST_CASE("a certificate from another authority is rejected") {
    Authority ca1 = make_ca(), ca2 = make_ca();
    auto n = ca2.issue("node-1");
    REQUIRE(n.ok());
    auto r = bundle_of({&ca1}).verify_node(n->cert.get(), {}, Clock::now());
    REQUIRE_FALSE(r.ok());
    CHECK(code(r.error()) == code(CertError::chain_not_to_bundle));
    // A CA certificate is not a node certificate, even one of the bundle.
    auto self = bundle_of({&ca1}).verify_node(ca1.certificate(), {}, Clock::now());
    CHECK_FALSE(self.ok());
}

TEST_CASE("expired and not-yet-valid certificates are rejected; renewal at a third") {
    const TimePoint now = Clock::now();
    AuthorityOptions o;
    o.not_before = now - 24h * 7;
    auto created = Authority::create(o);
    REQUIRE(created.ok());
    Authority& ca = *created;
    TrustBundle bundle = bundle_of({&ca});
    IssueOptions past;
    past.not_before = now - 48h;
    past.validity = 24h;
    auto old = ca.issue("node-1", past);
    REQUIRE(old.ok());
    auto r = bundle.verify_node(old->cert.get(), {}, now);
    REQUIRE_FALSE(r.ok());
    CHECK(code(r.error()) == code(CertError::expired));
    CHECK(bundle.verify_node(old->cert.get(), {}, now - 36h).ok());
    CHECK(needs_renewal(old->cert.get(), now));

    IssueOptions future;
    future.not_before = now + 1h;
    auto early = ca.issue("node-1", future);
    REQUIRE(early.ok());
    auto e = bundle.verify_node(early->cert.get(), {}, now);
    REQUIRE_FALSE(e.ok());
    CHECK(code(e.error()) == code(CertError::not_yet_valid));

    IssueOptions day;
    day.not_before = now;
    day.validity = 24h;
    auto c = ca.issue("node-1", day);
    REQUIRE(c.ok());
    TimePoint start = cert_not_before(c->cert.get());
    CHECK_FALSE(needs_renewal(c->cert.get(), start));
    CHECK_FALSE(needs_renewal(c->cert.get(), start + 16h));        // exactly a third left
    CHECK(needs_renewal(c->cert.get(), start + 16h + 1s));
    CHECK(needs_renewal(c->cert.get(), start + 25h));

    // A node certificate never outlives its CA.
    AuthorityOptions shortca;
    shortca.validity = 2h;
    auto sca = Authority::create(shortca);
    REQUIRE(sca.ok());
    auto capped = sca->issue("node-1");
    REQUIRE(capped.ok());
    CHECK(cert_not_after(capped->cert.get()) == cert_not_after(sca->certificate()));
}

TEST_CASE("a bundle with two CAs accepts both (rotation, another cluster)") {
    Authority old_ca = make_ca(), new_ca = make_ca(), other = make_ca("other.example");
    TrustBundle bundle = bundle_of({&old_ca, &new_ca, &other});
    CHECK(bundle.size() == 3);
    CHECK(bundle.trust_domains() == std::vector<std::string>{"cluster.local", "cluster.local", "other.example"});
    for (const Authority* ca : {&old_ca, &new_ca, &other}) {
        auto n = ca->issue("node-1");
        REQUIRE(n.ok());
        auto id = bundle.verify_node(n->cert.get(), {}, Clock::now());
        REQUIRE_MESSAGE(id.ok(), id.error().message);
        CHECK(id->trust_domain == ca->trust_domain());
        CHECK(id->node_name == "node-1");
    }
    CHECK_FALSE(TrustBundle::from_pem("").ok());
    CHECK_FALSE(TrustBundle::from_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").ok());
}

TEST_CASE("a CA may vouch only for nodes of its own trust domain") {
    // The authority of other.example signs a certificate that claims a node
    // of cluster.local: a bundle trusting both must still refuse it.
    TempDir tmp;
    AuthorityOptions o;
    o.trust_domain = "other.example";
    REQUIRE(init_authority(tmp / "ca", o).ok());
    auto ca_key = load_private_key(tmp / "ca/ca.key");
    REQUIRE(ca_key.ok());
    auto other = Authority::load(tmp / "ca");
    REQUIRE(other.ok());
    Authority local = make_ca();
    auto node_key = generate_p256_key();
    REQUIRE(node_key.ok());

    X509Ptr cert(X509_new());
    X509_set_version(cert.get(), 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), 7);
    X509_NAME* name = X509_NAME_new();
    X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>("cluster.local"), -1, -1, 0);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>("node-1"), -1, -1, 0);
    X509_set_subject_name(cert.get(), name);
    X509_NAME_free(name);
    X509_set_issuer_name(cert.get(), X509_get_subject_name(other->certificate()));
    X509_set_pubkey(cert.get(), node_key->get());
    ASN1_TIME_set(X509_getm_notBefore(cert.get()), Clock::to_time_t(Clock::now() - 1h));
    ASN1_TIME_set(X509_getm_notAfter(cert.get()), Clock::to_time_t(Clock::now() + 1h));
    for (auto [nid, value] : std::initializer_list<std::pair<int, const char*>>{
             {NID_basic_constraints, "critical,CA:FALSE"},
             {NID_key_usage, "critical,digitalSignature,keyAgreement"},
             {NID_ext_key_usage, "serverAuth,clientAuth"},
             {NID_authority_key_identifier, "keyid:always"},
             {NID_subject_alt_name, "URI:spiffe://cluster.local/node/node-1"}}) {
        X509V3_CTX ctx;
        X509V3_set_ctx(&ctx, other->certificate(), cert.get(), nullptr, nullptr, 0);
        X509_EXTENSION* ext = X509V3_EXT_nconf_nid(nullptr, &ctx, nid, value);
        REQUIRE(ext);
        X509_add_ext(cert.get(), ext, -1);
        X509_EXTENSION_free(ext);
    }
    REQUIRE(X509_sign(cert.get(), ca_key->get(), EVP_sha256()) > 0);

    auto r = bundle_of({&local, &*other}).verify_node(cert.get(), {}, Clock::now());
    REQUIRE_FALSE(r.ok());
    CHECK(code(r.error()) == code(CertError::wrong_trust_domain));
}

// issue #13, item 4: a certificate from the cluster's own CA without the
// usages signet's issuer sets is not a node certificate. OpenSSL reports a
// missing keyUsage / extendedKeyUsage extension as "any usage": absent must
// be refused, not taken for everything.
TEST_CASE("node certificates need the keyUsage and EKU the authority sets") {
    TempDir tmp;
    const std::string ca_dir = tmp / "ca";
    REQUIRE(init_authority(ca_dir, {}).ok());
    auto ca = Authority::load(ca_dir);
    REQUIRE(ca.ok());
    TrustBundle bundle = bundle_of({&*ca});
    auto key = generate_p256_key();
    REQUIRE(key.ok());
    const TimePoint now = Clock::now();
    const std::string san = "URI:spiffe://cluster.local/node/node-1";
    auto verify = [&](const Extensions& exts) {
        X509Ptr cert = hand_signed_node_cert(ca_dir, key->get(), "node-1", now - 5min, now + 1h, &exts);
        return bundle.verify_node(cert.get(), {}, now);
    };
    auto without = [&](int nid) {
        Extensions e;
        for (const auto& x : node_extensions(san))
            if (x.first != nid) e.push_back(x);
        return e;
    };
    auto with = [&](int nid, const std::string& value) {
        Extensions e = without(nid);
        e.emplace_back(nid, value);
        return e;
    };
    // What the authority sets verifies (the control).
    auto good = verify(node_extensions(san));
    REQUIRE_MESSAGE(good.ok(), good.error().message);

    struct Case {
        const char* what;
        Extensions exts;
    };
    for (const auto& c : std::vector<Case>{
             {"no keyUsage", without(NID_key_usage)},
             {"keyUsage digitalSignature only (no keyAgreement: no pair key)", with(NID_key_usage, "critical,digitalSignature")},
             {"keyUsage keyAgreement only (no token signatures)", with(NID_key_usage, "critical,keyAgreement")},
             // (OpenSSL's strict chain check refuses this one already: chain_not_to_bundle.)
             {"keyUsage that may sign certificates",
              with(NID_key_usage, "critical,digitalSignature,keyAgreement,keyCertSign")},
             {"no extendedKeyUsage", without(NID_ext_key_usage)},
             {"EKU clientAuth only", with(NID_ext_key_usage, "clientAuth")},
             {"EKU codeSigning", with(NID_ext_key_usage, "codeSigning")},
         }) {
        auto r = verify(c.exts);
        CHECK_MESSAGE(!r.ok(), c.what);
        if (!r.ok() && c.exts != with(NID_key_usage, "critical,digitalSignature,keyAgreement,keyCertSign"))
            CHECK_MESSAGE(code(r.error()) == code(CertError::bad_certificate), c.what << ": " << r.error().message);
    }

    // What sign_csr (and so signetctl authority issue, signetd's own
    // issuance and the CSR signer) makes passes.
    auto issued = ca->issue("node-1");
    REQUIRE(issued.ok());
    auto id = bundle.verify_node(issued->cert.get(), {}, now);
    CHECK_MESSAGE(id.ok(), (id.ok() ? "" : id.error().message));
    IssueOptions csr_signer;  // what signetd --csr-signer asks for at most: 24 h after a 5-minute backdate
    csr_signer.validity = std::chrono::seconds(86400) + kCertBackdate;
    auto longest = ca->issue("node-1", csr_signer);
    REQUIRE_MESSAGE(longest.ok(), longest.error().message);
    CHECK(bundle.verify_node(longest->cert.get(), {}, now).ok());
}

// issue #13, item 4: expiry is the only revocation, so no node certificate
// lives longer than a day (plus the backdate and a small allowance).
TEST_CASE("node certificates over 24 h are neither issued nor accepted") {
    TempDir tmp;
    const std::string ca_dir = tmp / "ca";
    REQUIRE(init_authority(ca_dir, {}).ok());
    auto ca = Authority::load(ca_dir);
    REQUIRE(ca.ok());
    TrustBundle bundle = bundle_of({&*ca});
    auto key = generate_p256_key();
    REQUIRE(key.ok());
    const TimePoint now = Clock::now(), from = now - 1h;

    CHECK(kMaxNodeCertLifetime == 24h + 10min);
    // The verifier: at the cap it verifies, a second over it does not; a
    // year-long certificate of the cluster's own CA is refused with its own reason.
    X509Ptr at_cap = hand_signed_node_cert(ca_dir, key->get(), "node-1", from, from + kMaxNodeCertLifetime);
    auto ok = bundle.verify_node(at_cap.get(), {}, now);
    CHECK_MESSAGE(ok.ok(), (ok.ok() ? "" : ok.error().message));
    for (auto life : {std::chrono::seconds(kMaxNodeCertLifetime + 1s), std::chrono::seconds(48h), std::chrono::seconds(24h * 365)}) {
        X509Ptr cert = hand_signed_node_cert(ca_dir, key->get(), "node-1", from, from + life);
        auto r = bundle.verify_node(cert.get(), {}, now);
        REQUIRE_FALSE(r.ok());
        CHECK(code(r.error()) == code(CertError::lifetime_too_long));
        CHECK(r.error().message.find("lifetime") != std::string::npos);
    }

    // The issuer refuses more than 24 h (+ the backdate) and says why.
    auto csr = make_csr(key->get(), "cluster.local", "node-1");
    REQUIRE(csr.ok());
    for (auto v : {std::chrono::seconds(24h + kCertBackdate + 1s), std::chrono::seconds(24h * 365)}) {
        IssueOptions o;
        o.validity = v;
        auto r = ca->sign_csr(*csr, "node-1", o);
        REQUIRE_FALSE(r.ok());
        CHECK(code(r.error()) == code(CertError::lifetime_too_long));
        CHECK(r.error().message.find("at most 24h") != std::string::npos);
        TempDir out;
        CHECK_FALSE(issue_node(*ca, "node-1", out / "n", o).ok());
    }
    // Its default and its most stay within the cap.
    CHECK(std::chrono::seconds(kDefaultNodeValidity) <= kMaxNodeCertLifetime);
    auto d = ca->issue("node-1");
    REQUIRE(d.ok());
    CHECK(d->identity.not_after - d->identity.not_before == std::chrono::seconds(kDefaultNodeValidity));
}

TEST_CASE("a trust bundle's digest names its CAs") {
    Authority ca1 = make_ca(), ca2 = make_ca();
    TrustBundle one = bundle_of({&ca1}), one_again = bundle_of({&ca1}), both = bundle_of({&ca1, &ca2});
    CHECK(one.digest() == one_again.digest());
    CHECK(one.digest() != both.digest());
    CHECK(one.digest() != bundle_of({&ca2}).digest());
}

TEST_CASE("workload X.509-SVIDs: issued for ns/sa, verified as workloads, never taken for a node (or a node for a workload)") {
    Authority ca = make_ca("shop.test");
    TrustBundle b = bundle_of({&ca});
    auto w = ca.issue_workload("shop", "web");
    REQUIRE_MESSAGE(w.ok(), w.error().message);
    CHECK(w->identity.spiffe_id == "spiffe://shop.test/ns/shop/sa/web");
    CHECK(w->identity.not_after - w->identity.not_before <= kDefaultWorkloadValidity + kCertBackdate);
    auto id = b.verify_workload(w->cert.get(), {}, Clock::now());
    REQUIRE_MESSAGE(id.ok(), id.error().message);
    CHECK(id->namespace_ == "shop");
    CHECK(id->service_account == "web");
    CHECK(id->trust_domain == "shop.test");
    CHECK(X509_NAME_entry_count(X509_get_subject_name(w->cert.get())) == 0);  // the URI SAN is the identity
    // A workload's certificate is not a node's, and a node's is not a workload's.
    auto as_node = b.verify_node(w->cert.get(), {}, Clock::now());
    REQUIRE_FALSE(as_node.ok());
    CHECK(code(as_node.error()) == code(CertError::bad_certificate));
    auto node = ca.issue("node-1");
    REQUIRE(node.ok());
    auto node_as_workload = b.verify_workload(node->cert.get(), {}, Clock::now());
    REQUIRE_FALSE(node_as_workload.ok());
    CHECK(code(node_as_workload.error()) == code(CertError::bad_certificate));
    // Another authority's SVID: no chain; expired: refused.
    Authority other = make_ca("shop.test");
    auto foreign = other.issue_workload("shop", "web");
    REQUIRE(foreign.ok());
    CHECK(code(b.verify_workload(foreign->cert.get(), {}, Clock::now()).error()) == code(CertError::chain_not_to_bundle));
    CHECK(code(b.verify_workload(w->cert.get(), {}, Clock::now() + 2h).error()) == code(CertError::expired));
    // Lifetimes: up to 24 h issued and accepted; more refused at issuance.
    WorkloadIssueOptions day;
    day.validity = kMaxWorkloadValidity;
    auto long_lived = ca.issue_workload("shop", "web", day);
    REQUIRE(long_lived.ok());
    CHECK(b.verify_workload(long_lived->cert.get(), {}, Clock::now()).ok());
    WorkloadIssueOptions too_long;
    too_long.validity = kMaxWorkloadValidity + 1h;
    CHECK(code(ca.issue_workload("shop", "web", too_long).error()) == code(CertError::lifetime_too_long));
    // Names as Kubernetes has them.
    CHECK_FALSE(ca.issue_workload("Shop", "web").ok());
    CHECK_FALSE(ca.issue_workload("shop", "we/b").ok());
    CHECK_FALSE(ca.issue_workload("shop", "").ok());
}

TEST_CASE("workload SVIDs on disk: svid.key 0600, no overwrite") {
    TempDir dir;
    Authority ca = make_ca();
    const std::string out = dir / "web";
    REQUIRE(issue_workload_files(ca, "default", "web", out).ok());
    CHECK(file_mode(out + "/svid.key") == 0600);
    auto again = issue_workload_files(ca, "default", "web", out);
    REQUIRE_FALSE(again.ok());
    CHECK(code(again.error()) == code(CertError::io));
}
