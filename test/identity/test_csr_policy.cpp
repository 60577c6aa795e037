// The CSR signer's approval decision and the CertificateSigningRequest
// parser (controller/identity/csr_policy.cpp), and Authority::from_pem.
#include <doctest/doctest.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "identity/authority.h"
#include "identity/crypto.h"
#include "identity/csr_policy.h"
#include "helpers.h"
#include "signet/fsutil.h"

using namespace signet::identity;
using namespace signet::identity::csr;

namespace {

const std::string kTd = "test.local";

std::string node_csr(const std::string& node, const std::string& td = kTd) {
    auto key = generate_p256_key();
    REQUIRE(key.ok());
    auto pem = make_csr(key->get(), td, node);
    REQUIRE_MESSAGE(pem.ok(), pem.error().message);
    return *pem;
}

std::string rsa_csr(const std::string& node) {
    PKey key(EVP_RSA_gen(2048));
    REQUIRE(key);
    X509ReqPtr req(X509_REQ_new());
    X509_NAME* name = X509_REQ_get_subject_name(req.get());
    X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>(kTd.c_str()), -1, -1, 0);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>(node.c_str()), -1, -1, 0);
    X509_REQ_set_pubkey(req.get(), key.get());
    REQUIRE(X509_REQ_sign(req.get(), key.get(), EVP_sha256()) > 0);
    BIO* bio = BIO_new(BIO_s_mem());
    PEM_write_bio_X509_REQ(bio, req.get());
    char* data = nullptr;
    long n = BIO_get_mem_data(bio, &data);
    std::string out(data, static_cast<size_t>(n));
    BIO_free(bio);
    return out;
}

// A request signed by one key that carries another key: no proof of possession.
std::string forged_csr(const std::string& node) {
    auto a = generate_p256_key();
    auto b = generate_p256_key();
    REQUIRE((a.ok() && b.ok()));
    X509ReqPtr req(X509_REQ_new());
    X509_NAME* name = X509_REQ_get_subject_name(req.get());
    X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>(kTd.c_str()), -1, -1, 0);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>(node.c_str()), -1, -1, 0);
    X509_REQ_set_pubkey(req.get(), a->get());
    REQUIRE(X509_REQ_sign(req.get(), a->get(), EVP_sha256()) > 0);
    X509_REQ_set_pubkey(req.get(), b->get());  // after signing: the signature no longer matches
    BIO* bio = BIO_new(BIO_s_mem());
    // i2d re-encodes: the signature covers the old key
    PEM_write_bio_X509_REQ(bio, req.get());
    char* data = nullptr;
    long n = BIO_get_mem_data(bio, &data);
    std::string out(data, static_cast<size_t>(n));
    BIO_free(bio);
    return out;
}

CsrObject request(const std::string& user, std::vector<std::string> groups, const std::string& pem) {
    CsrObject c;
    c.name = "csr-1";
    c.uid = "u-1";
    c.signer_name = std::string(kSignerName);
    c.username = user;
    c.groups = std::move(groups);
    c.usages = {"digital signature", "key agreement", "client auth", "server auth"};
    c.request_pem = pem;
    return c;
}

const std::vector<std::string> kNodeGroups = {"system:nodes", "system:authenticated"};

}  // namespace

TEST_CASE("csr: a node's own request passes, pending the Node object") {
    auto v = decide(request("system:node:worker-1", kNodeGroups, node_csr("worker-1")), kTd);
    CHECK(v.action == Action::CheckNode);
    CHECK(v.node == "worker-1");
    CHECK(with_node(v, true).action == Action::CheckNode);
    auto d = with_node(v, false);
    CHECK(d.action == Action::Deny);
    CHECK(d.reason == "NoSuchNode");
    CHECK(d.message == "no Node object worker-1");
}

TEST_CASE("csr: requestors that are not nodes are denied") {
    auto v = decide(request("system:serviceaccount:x:y", {"system:serviceaccounts"}, node_csr("worker-1")), kTd);
    CHECK(v.action == Action::Deny);
    CHECK(v.message == "requestor system:serviceaccount:x:y is not a node");
    v = decide(request("system:node:worker-1", {"system:authenticated"}, node_csr("worker-1")), kTd);
    CHECK(v.action == Action::Deny);
    CHECK(v.message == "requestor system:node:worker-1 is not in group system:nodes");
    CHECK(decide(request("system:node:", kNodeGroups, node_csr("worker-1")), kTd).action == Action::Deny);
    CHECK(decide(request("", kNodeGroups, node_csr("worker-1")), kTd).message == "requestor (none) is not a node");
    CHECK(decide(request("system:node:Bad_Name", kNodeGroups, node_csr("worker-1")), kTd).action == Action::Deny);
}

TEST_CASE("csr: the node agent's service account, its token bound to a pod on the node, asks for that node only") {
    const std::string kAgent = "system:serviceaccount:signet-system:signet";
    const std::vector<std::string> agents = {kAgent};
    const std::vector<std::string> sa_groups = {"system:serviceaccounts", "system:serviceaccounts:signet-system",
                                                "system:authenticated"};
    auto c = request(kAgent, sa_groups, node_csr("worker-1"));
    c.extra = {{"authentication.kubernetes.io/pod-name", {"signet-abcde"}},
               {std::string(kNodeNameExtra), {"worker-1"}}};
    auto v = decide(c, kTd, agents);
    CHECK(v.action == Action::CheckNode);
    CHECK(v.node == "worker-1");
    CHECK(with_node(v, false).reason == "NoSuchNode");

    // Not a listed node agent: denied whatever it carries.
    v = decide(c, kTd);
    CHECK(v.action == Action::Deny);
    CHECK(v.message == "requestor " + kAgent + " is not a node");
    CHECK(decide(c, kTd, {"system:serviceaccount:signet-system:other"}).action == Action::Deny);

    // Bound to worker-1, asking for worker-2.
    auto other = request(kAgent, sa_groups, node_csr("worker-2"));
    other.extra = c.extra;
    v = decide(other, kTd, agents);
    CHECK(v.action == Action::Deny);
    CHECK(v.reason == "SubjectMismatch");
    CHECK(v.message == "subject CN=worker-2 does not match requestor worker-1");

    // No node claim (a legacy Secret token, an older API server): denied.
    auto unbound = request(kAgent, sa_groups, node_csr("worker-1"));
    v = decide(unbound, kTd, agents);
    CHECK(v.action == Action::Deny);
    CHECK(v.reason == "RequestorNotANode");
    CHECK(v.message.find("carries no node binding") != std::string::npos);
    unbound.extra = {{std::string(kNodeNameExtra), {}}};
    CHECK(decide(unbound, kTd, agents).action == Action::Deny);
    unbound.extra = {{std::string(kNodeNameExtra), {"worker-1", "worker-2"}}};
    CHECK(decide(unbound, kTd, agents).message == "requestor " + kAgent + " is bound to several nodes");
    unbound.extra = {{std::string(kNodeNameExtra), {"Bad_Name"}}};
    CHECK(decide(unbound, kTd, agents).reason == "RequestorNotANode");
    // The node claim means nothing for any other requestor.
    auto sa = request("system:serviceaccount:x:y", sa_groups, node_csr("worker-1"));
    sa.extra = c.extra;
    CHECK(decide(sa, kTd, agents).message == "requestor system:serviceaccount:x:y is not a node");
}

TEST_CASE("csr: the subject must be exactly the requestor in the trust domain") {
    auto v = decide(request("system:node:worker-1", kNodeGroups, node_csr("worker-2")), kTd);
    CHECK(v.action == Action::Deny);
    CHECK(v.reason == "SubjectMismatch");
    CHECK(v.message == "subject CN=worker-2 does not match requestor worker-1");
    v = decide(request("system:node:worker-1", kNodeGroups, node_csr("worker-1", "other.domain")), kTd);
    CHECK(v.action == Action::Deny);
    CHECK(v.message == "subject O=other.domain is not the trust domain test.local");
}

TEST_CASE("csr: key type, proof of possession and readability") {
    auto v = decide(request("system:node:worker-1", kNodeGroups, rsa_csr("worker-1")), kTd);
    CHECK(v.action == Action::Deny);
    CHECK(v.message == "the CSR's key is not ECDSA P-256");
    v = decide(request("system:node:worker-1", kNodeGroups, forged_csr("worker-1")), kTd);
    CHECK(v.action == Action::Deny);
    CHECK(v.message.find("does not verify") != std::string::npos);
    v = decide(request("system:node:worker-1", kNodeGroups, "not a csr"), kTd);
    CHECK(v.action == Action::Deny);
    CHECK(v.message.find("cannot be read") != std::string::npos);
}

TEST_CASE("csr: usages outside a node certificate's are denied") {
    auto c = request("system:node:worker-1", kNodeGroups, node_csr("worker-1"));
    c.usages.push_back("cert sign");
    auto v = decide(c, kTd);
    CHECK(v.action == Action::Deny);
    CHECK(v.reason == "UsageNotAllowed");
}

TEST_CASE("csr: other signers are ignored, finished requests skipped") {
    auto c = request("system:serviceaccount:x:y", {}, "junk");
    c.signer_name = "kubernetes.io/kube-apiserver-client";
    CHECK(decide(c, kTd).action == Action::Ignore);
    c = request("system:node:worker-1", kNodeGroups, node_csr("worker-1"));
    c.denied = true;
    CHECK(decide(c, kTd).action == Action::Done);
    c.denied = false;
    c.certificate_pem = "x";
    CHECK(decide(c, kTd).action == Action::Done);
    c.certificate_pem.clear();
    c.approved = true;  // approved, not issued (a restart between the two): checked again, then signed
    CHECK(decide(c, kTd).action == Action::CheckNode);
    c.malformed = "spec.request is not base64";
    CHECK(decide(c, kTd).action == Action::Deny);
}

TEST_CASE("csr: parsing CertificateSigningRequest objects") {
    const std::string pem = node_csr("worker-1");
    const std::string text = R"({"kind":"CertificateSigningRequest","apiVersion":"certificates.k8s.io/v1",
      "metadata":{"name":"signet-worker-1-abcd","uid":"1234","resourceVersion":"17"},
      "spec":{"request":")" + base64_encode(pem) + R"(","signerName":"signet.dev/node","expirationSeconds":3600,
        "usages":["digital signature","key agreement","client auth","server auth"],
        "username":"system:node:worker-1","groups":["system:nodes","system:authenticated"],
        "extra":{"authentication.kubernetes.io/node-name":["worker-1"],"x":[]}},
      "status":{"conditions":[{"type":"Denied","status":"True","reason":"X","message":"no"}]}})";
    auto c = parse_csr_json(text);
    REQUIRE_MESSAGE(c.ok(), c.error().message);
    CHECK(c->name == "signet-worker-1-abcd");
    CHECK(c->uid == "1234");
    CHECK(c->resource_version == "17");
    CHECK(c->request_pem == pem);
    CHECK(c->username == "system:node:worker-1");
    CHECK(c->groups.size() == 2);
    REQUIRE(c->extra.size() == 2);
    CHECK(c->extra[0].first == "authentication.kubernetes.io/node-name");
    CHECK(c->extra[0].second == std::vector<std::string>{"worker-1"});
    CHECK(c->extra[1].second.empty());
    CHECK(c->expiration_seconds == 3600);
    CHECK(granted_seconds(*c) == 3600);
    CHECK(c->denied);
    CHECK(c->denied_message == "X: no");
    CHECK(c->malformed.empty());

    CHECK_FALSE(parse_csr_json("[]").ok());
    CHECK_FALSE(parse_csr_json(R"({"metadata":{}})").ok());
    CHECK_FALSE(parse_csr_json("{").ok());
    auto m = parse_csr_json(R"({"metadata":{"name":"x"},"spec":{"signerName":"signet.dev/node","request":"%%%"}})");
    REQUIRE(m.ok());
    CHECK(m->malformed == "spec.request is not base64");
    auto x = parse_csr_json(R"({"metadata":{"name":"x"},"spec":{"signerName":"signet.dev/node","request":"","extra":{"k":"v"}}})");
    REQUIRE(x.ok());
    CHECK(x->malformed == "spec.extra holds a value that is not a list of strings");
    x = parse_csr_json(R"({"metadata":{"name":"x"},"spec":{"signerName":"signet.dev/node","request":"","extra":[]}})");
    REQUIRE(x.ok());
    CHECK(x->malformed == "spec.extra is not a map");
    m = parse_csr_json(R"({"metadata":{"name":"x"},"spec":{"signerName":"signet.dev/node","request":"","groups":"g"}})");
    REQUIRE(m.ok());
    CHECK_FALSE(m->malformed.empty());
    m = parse_csr_json(R"({"metadata":{"name":"x"},"spec":{"signerName":"signet.dev/node","request":"","expirationSeconds":999999}})");
    REQUIRE(m.ok());
    CHECK(granted_seconds(*m) == kMaxExpirationSeconds);
}

TEST_CASE("csr: base64") {
    for (std::string s : {"", "f", "fo", "foo", "foob", "fooba", "foobar"}) CHECK(base64_decode(base64_encode(s)) == s);
    CHECK(base64_encode("foobar") == "Zm9vYmFy");
    CHECK(base64_encode("fo") == "Zm8=");
    CHECK_FALSE(base64_decode("Zm8").has_value());
    CHECK_FALSE(base64_decode("Z=m8").has_value());
    CHECK_FALSE(base64_decode("Zm8=Zm8=").has_value());
}

TEST_CASE("authority: from_pem (a Secret's ca.key and ca.crt) signs node CSRs") {
    AuthorityOptions o;
    o.trust_domain = kTd;
    auto ca = Authority::create(o);
    REQUIRE(ca.ok());
    signet::identity::test::TempDir dir;
    REQUIRE(ca->save(dir.path()).ok());
    auto key_pem = signet::fs::read_file(dir / "ca.key");
    REQUIRE(key_pem.ok());
    const std::string crt = cert_pem(ca->certificate());
    auto a = Authority::from_pem(*key_pem, crt);
    REQUIRE_MESSAGE(a.ok(), a.error().message);
    CHECK(a->trust_domain() == kTd);
    CHECK(a->bundle_pem() == crt);
    auto signed_pem = a->sign_csr(node_csr("worker-1"), "worker-1");
    REQUIRE_MESSAGE(signed_pem.ok(), signed_pem.error().message);
    auto bundle = TrustBundle::from_pem(crt);
    REQUIRE(bundle.ok());
    auto certs = parse_certs_pem(*signed_pem);
    REQUIRE(certs.ok());
    CHECK(bundle->verify_node(certs->front().get(), {}, Clock::now()).ok());

    CHECK_FALSE(Authority::from_pem("junk", crt).ok());
    AuthorityOptions o2;
    o2.trust_domain = kTd;
    auto other = Authority::create(o2);
    REQUIRE(other.ok());
    auto mismatch = Authority::from_pem(*key_pem, cert_pem(other->certificate()));
    REQUIRE_FALSE(mismatch.ok());
    CHECK(mismatch.error().message.find("does not match") != std::string::npos);
}
