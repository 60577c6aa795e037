// signetctl authority init | issue (controller/ctl/authority.cpp).
#include <doctest/doctest.h>

#include "ctl/authority.h"
#include "helpers.h"
#include "identity/authority.h"
#include "signet/fsutil.h"

using signet::ctl::authority_command;
using namespace signet::identity;
using namespace signet::identity::test;

TEST_CASE("signetctl authority init / issue") {
    TempDir tmp;
    const std::string ca = tmp / "ca", node = tmp / "node";
    CHECK(authority_command({"--help"}) == 0);
    CHECK(authority_command({}) == 2);
    CHECK(authority_command({"frobnicate"}) == 2);
    CHECK(authority_command({"init"}) == 2);
    CHECK(authority_command({"init", ca, "--validity", "10y"}) == 2);
    CHECK(authority_command({"init", ca, "--trust-domain", "Bad/Domain"}) == 2);
    CHECK(authority_command({"init", ca, "--color", "red"}) == 2);
    CHECK_FALSE(file_exists(ca + "/ca.key"));

    REQUIRE(authority_command({"init", ca, "--trust-domain=prod.example", "--validity", "8760h"}) == 0);
    CHECK(file_mode(ca + "/ca.key") == 0600);
    auto a = Authority::load(ca);
    REQUIRE(a.ok());
    CHECK(a->trust_domain() == "prod.example");
    CHECK(cert_not_after(a->certificate()) - cert_not_before(a->certificate()) == std::chrono::hours(8760));
    CHECK(authority_command({"init", ca}) == 1);  // refuses to overwrite

    CHECK(authority_command({"issue", ca, "--out", node}) == 2);
    CHECK(authority_command({"issue", ca, "--node", "Node_1", "--out", node}) == 2);
    CHECK(authority_command({"issue", tmp / "nowhere", "--node", "n1", "--out", node}) == 1);
    // issue #13, item 4: a node certificate lives at most 24 h (verifiers refuse longer ones).
    CHECK(authority_command({"issue", ca, "--node", "n1", "--out", node, "--validity", "25h"}) == 2);
    CHECK(authority_command({"issue", ca, "--node", "n1", "--out", node, "--validity", "8760h"}) == 2);
    CHECK_FALSE(file_exists(node + "/node.key"));
    REQUIRE(authority_command({"issue", ca, "--node", "n1", "--out", node, "--validity=12h"}) == 0);
    CHECK(file_mode(node + "/node.key") == 0600);
    auto bundle = TrustBundle::load(node + "/trust-bundle.pem");
    REQUIRE(bundle.ok());
    auto creds = NodeCredentials::load(node, *bundle, Clock::now());
    REQUIRE_MESSAGE(creds.ok(), creds.error().message);
    CHECK(creds->identity.node_name == "n1");
    CHECK(creds->identity.not_after - creds->identity.not_before == std::chrono::hours(12));
    CHECK(authority_command({"issue", ca, "--node", "n1", "--out", node}) == 1);  // refuses to overwrite
    // The default (24 h) and the most verify.
    REQUIRE(authority_command({"issue", ca, "--node", "n2", "--out", tmp / "n2"}) == 0);
    REQUIRE(authority_command({"issue", ca, "--node", "n3", "--out", tmp / "n3", "--validity", "24h"}) == 0);
    for (const char* n : {"n2", "n3"}) {
        auto c = NodeCredentials::load(tmp / n, *bundle, Clock::now());
        REQUIRE_MESSAGE(c.ok(), c.error().message);
        CHECK(c->identity.not_after - c->identity.not_before == std::chrono::hours(24));
    }
}

TEST_CASE("signetctl authority issue-workload") {
    TempDir tmp;
    const std::string ca = tmp / "ca", w = tmp / "web";
    REQUIRE(authority_command({"init", ca, "--trust-domain", "prod.example"}) == 0);
    CHECK(authority_command({"issue-workload", ca, "--namespace", "shop", "--out", w}) == 2);  // no --service-account
    CHECK(authority_command({"issue-workload", ca, "--namespace", "Shop", "--service-account", "web", "--out", w}) == 2);
    CHECK(authority_command({"issue-workload", ca, "--namespace", "shop", "--service-account", "web", "--out", w,
                             "--validity", "25h"}) == 2);
    CHECK(authority_command({"issue-workload", tmp / "nowhere", "--namespace", "shop", "--service-account", "web",
                             "--out", w}) == 1);
    CHECK_FALSE(file_exists(w + "/svid.key"));
    REQUIRE(authority_command({"issue-workload", ca, "--namespace", "shop", "--service-account", "web", "--out", w,
                               "--validity", "30m"}) == 0);
    CHECK(file_mode(w + "/svid.key") == 0600);
    auto bundle = TrustBundle::load(w + "/trust-bundle.pem");
    REQUIRE(bundle.ok());
    auto pem = signet::fs::read_file(w + "/svid.crt");
    REQUIRE(pem.ok());
    auto certs = parse_certs_pem(*pem);
    REQUIRE(certs.ok());
    auto id = bundle->verify_workload(certs->front().get(), {}, Clock::now());
    REQUIRE_MESSAGE(id.ok(), id.error().message);
    CHECK(id->spiffe_id == "spiffe://prod.example/ns/shop/sa/web");
    CHECK(id->not_after - id->not_before == std::chrono::minutes(30));
    CHECK(authority_command({"issue-workload", ca, "--namespace", "shop", "--service-account", "web", "--out", w}) == 1);
}
