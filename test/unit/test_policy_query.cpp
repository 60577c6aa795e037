// Unit tests: the policy query (controller/policy/query.h). Its compact
// check gives the same verdict as explain()'s side for the same flow, what
// decided it as the flow records name it, from the cache the second time,
// and the new answer once the policy changed (a changed() of its owner, or
// the Enforcer's own after a source change).
#include <doctest/doctest.h>

#include <optional>
#include <string>
#include <vector>

#include "../../controller/cache/objects.h"
#include "../../controller/core/enforcer.h"
#include "../../controller/nft/fake_backend.h"
#include "../../controller/policy/addr.h"
#include "../../controller/policy/compiler.h"
#include "../../controller/policy/query.h"

using namespace signet;
using namespace signet::policy;

namespace {

Ip ip(const char* s) {
    auto r = parse_ip(s);
    REQUIRE(r.ok());
    return *r;
}

cache::Pod pod(const std::string& ns, const std::string& name, cache::Labels labels, const std::string& addr,
               bool host = false) {
    cache::Pod p;
    p.namespace_ = ns;
    p.name = name;
    p.uid = ns + "-" + name;
    p.node_name = "node1";
    p.labels = std::move(labels);
    p.pod_ips = {addr};
    p.host_network = host;
    p.phase = "Running";
    return p;
}

cache::LabelSelector sel(cache::Labels l) { return cache::LabelSelector{std::move(l), {}}; }

cache::PolicyPort tcp(int32_t port) { return cache::PolicyPort{cache::Protocol::TCP, port, std::nullopt}; }

// namespaces x (team=blue) and y; y/a is served on TCP 80 to x's pod=b and to
// 203.0.113.0/25; x/c may send nothing; x/host runs in the host network.
cache::Snapshot model() {
    cache::Snapshot s;
    s.put(cache::Namespace{"x", {{"kubernetes.io/metadata.name", "x"}, {"team", "blue"}}});
    s.put(cache::Namespace{"y", {{"kubernetes.io/metadata.name", "y"}}});
    s.put(pod("y", "a", {{"pod", "a"}}, "10.1.1.1"));
    s.put(pod("x", "b", {{"pod", "b"}}, "10.1.0.2"));
    s.put(pod("x", "c", {{"pod", "c"}}, "10.1.0.3"));
    s.put(pod("x", "host", {{"pod", "host"}}, "192.168.1.20", true));
    cache::NetworkPolicy web;
    web.namespace_ = "y";
    web.name = "allow-web";
    web.pod_selector = sel({{"pod", "a"}});
    web.policy_types = {cache::PolicyType::Ingress};
    cache::Peer from_b{sel({{"pod", "b"}}), sel({{"team", "blue"}}), std::nullopt};
    cache::Peer from_block{std::nullopt, std::nullopt,
                           cache::IpBlock{*cache::parse_cidr("203.0.113.0/24"), {*cache::parse_cidr("203.0.113.128/25")}}};
    web.ingress.push_back(cache::IngressRule{std::vector<cache::Peer>{from_b}, std::vector<cache::PolicyPort>{tcp(80)}});
    web.ingress.push_back(cache::IngressRule{std::vector<cache::Peer>{from_block}, std::vector<cache::PolicyPort>{tcp(80)}});
    s.put(web);
    cache::NetworkPolicy deny;
    deny.namespace_ = "x";
    deny.name = "egress-deny";
    deny.pod_selector = sel({{"pod", "c"}});
    deny.policy_types = {cache::PolicyType::Egress};
    s.put(deny);
    return s;
}

ConnKey key(bool ingress, ObjectKey local, std::optional<ObjectKey> peer, const char* peer_ip, uint16_t port,
            uint8_t proto = nft::kTcp) {
    return ConnKey{ingress, std::move(local), std::move(peer), ip(peer_ip), proto, port};
}

// explain()'s answer for the side `k` asks about.
Result<SideVerdict> explained(const Query& q, const ConnKey& k) {
    Endpoint local = Endpoint::pod(k.local.namespace_, k.local.name);
    Endpoint peer = k.peer_pod ? Endpoint::pod_at(k.peer_pod->namespace_, k.peer_pod->name, to_string(k.peer_ip))
                               : Endpoint::address(to_string(k.peer_ip));
    auto ex = k.ingress ? q.explain(peer, local, k.proto, k.port) : q.explain(local, peer, k.proto, k.port);
    if (!ex) return ex.error();
    const auto& side = k.ingress ? ex->ingress : ex->egress;
    REQUIRE(side);
    return *side;
}

// The compact verdict agrees with explain: allowed, isolated, and what decided it.
void same_as_explain(Query& q, const ConnKey& k) {
    CAPTURE(k.ingress);
    CAPTURE(k.local.name);
    CAPTURE(to_string(k.peer_ip));
    CAPTURE(k.port);
    const ConnVerdict v = q.check(k);
    auto side = explained(q, k);
    REQUIRE(v.answered == side.ok());
    if (!side) return;
    CHECK(v.allowed == side->allowed);
    CHECK(v.isolated == side->isolated);
    if (side->isolated && side->allowed && !side->rules.empty()) {
        CHECK(q.label(v.by) == side->rules.front().policy_namespace + "/" + side->rules.front().policy_name);
        CHECK(v.rule == side->rules.front().rule_index);
    } else if (side->isolated && side->allowed) {
        CHECK(q.label(v.by) == side->reason);
        CHECK(v.rule == -1);
    } else {
        CHECK(v.by == 0);
        CHECK(q.label(v.by).empty());
    }
}

Compiler compiled(const cache::Snapshot& s) {
    Compiler c;
    c.reset(s, {{"y", "a", {}}, {"x", "c", {}}, {"y", "ghost", {"10.1.1.9"}}}, {"192.168.1.10"});
    return c;
}

}  // namespace

TEST_CASE("policy query: the compact check answers as explain does") {
    Compiler c = compiled(model());
    Query q(c);
    const ObjectKey a{"y", "a"}, b{"x", "b"}, cc{"x", "c"}, host{"x", "host"}, ghost{"y", "ghost"};
    const std::vector<ConnKey> cases = {
        key(true, a, b, "10.1.0.2", 80),                   // allowed by rule 0 (a pod peer)
        key(true, a, b, "10.1.0.2", 81),                   // wrong port: default deny
        key(true, a, cc, "10.1.0.3", 80),                  // not selected by rule 0
        key(true, a, std::nullopt, "10.1.0.2", 80),        // b's address alone: not a pod, no ipBlock
        key(true, a, std::nullopt, "203.0.113.7", 80),     // rule 1: the ipBlock
        key(true, a, std::nullopt, "203.0.113.200", 80),   // in the except
        key(true, a, std::nullopt, "192.168.1.10", 22),    // from the node's own address
        key(true, a, b, "10.1.0.2", 80, nft::kUdp),        // another protocol
        key(false, a, b, "10.1.0.2", 80),                  // a's egress: not isolated
        key(false, cc, a, "10.1.1.1", 80),                 // c's egress: isolated, no rule
        key(false, cc, std::nullopt, "8.8.8.8", 53, nft::kUdp),
        key(true, cc, host, "192.168.1.20", 80),           // a hostNetwork peer
        key(true, ghost, b, "10.1.0.2", 80),               // a local pod with no object: fail closed
        key(true, a, ObjectKey{"x", "nope"}, "10.1.0.9", 80),  // a pod not known: not answered
        key(true, ObjectKey{"y", "nope"}, b, "10.1.0.2", 80),
        key(true, a, std::nullopt, "fd00::1", 80),         // IPv6, outside every block
    };
    for (const auto& k : cases) same_as_explain(q, k);

    // The verdicts the flow records and the datapath rely on, spelled out.
    CHECK(q.check(cases[0]).allowed);
    CHECK(q.label(q.check(cases[0]).by) == "y/allow-web");
    CHECK(q.check(cases[0]).rule == 0);
    CHECK(q.check(cases[4]).rule == 1);
    CHECK_FALSE(q.check(cases[3]).allowed);
    CHECK(q.label(q.check(cases[6]).by).find("node") != std::string::npos);
    CHECK_FALSE(q.check(cases[12]).allowed);
    CHECK_FALSE(q.check(cases[13]).answered);
    CHECK_FALSE(q.check(cases[13]).allowed);
}

TEST_CASE("policy query: the second ask is a cache hit; an IPv4 key with stray bytes is the same key") {
    Compiler c = compiled(model());
    Query q(c);
    const ConnKey k = key(true, {"y", "a"}, ObjectKey{"x", "b"}, "10.1.0.2", 80);
    CHECK(q.check(k).allowed);
    CHECK(q.stats().misses == 1);
    CHECK(q.stats().hits == 0);
    CHECK(q.check(k).allowed);
    CHECK(q.stats().misses == 1);
    CHECK(q.stats().hits == 1);
    CHECK(q.stats().entries == 1);
    ConnKey stray = k;
    stray.peer_ip.addr.bytes[12] = 0x7f;
    CHECK(q.check(stray).allowed);
    CHECK(q.stats().hits == 2);
    CHECK(q.stats().entries == 1);
    // Another port is another key.
    CHECK_FALSE(q.check(key(true, {"y", "a"}, ObjectKey{"x", "b"}, "10.1.0.2", 81)).allowed);
    CHECK(q.stats().misses == 2);
}

TEST_CASE("policy query: bounded; full, it starts again") {
    Compiler c = compiled(model());
    Query q(c, 4);
    for (uint16_t port = 1; port <= 10; ++port) (void)q.check(key(true, {"y", "a"}, ObjectKey{"x", "b"}, "10.1.0.2", port));
    CHECK(q.stats().entries <= 4);
    CHECK(q.stats().evictions >= 2);
    CHECK(q.stats().misses == 10);
}

TEST_CASE("policy query: a new version drops the cached answers") {
    cache::Snapshot s = model();
    Compiler c = compiled(s);
    Query q(c);
    const ConnKey k = key(true, {"y", "a"}, ObjectKey{"x", "c"}, "10.1.0.3", 80);
    CHECK_FALSE(q.check(k).allowed);
    // allow-web now admits pod=c too.
    cache::NetworkPolicy web = s.policies.at({"y", "allow-web"});
    web.ingress[0].from->at(0).pod_selector = cache::LabelSelector{{}, {}};
    (void)c.put_policy(web);
    // Until its owner says so the query answers from its cache (the owner
    // calls changed() with every change of the compiler)...
    CHECK_FALSE(q.check(k).allowed);
    const uint64_t v0 = q.version();
    q.changed();
    CHECK(q.version() == v0 + 1);
    CHECK(q.stats().entries == 0);
    // ...then the new answer, the same as explain's.
    CHECK(q.check(k).allowed);
    same_as_explain(q, k);
    // The policy gone: a is not isolated any more.
    (void)c.remove_policy({"y", "allow-web"});
    q.changed();
    const ConnVerdict v = q.check(k);
    CHECK(v.allowed);
    CHECK_FALSE(v.isolated);
    CHECK(v.by == 0);
    same_as_explain(q, k);
}

TEST_CASE("policy query: the Enforcer lent the query changes its version with every change of the policy") {
    cache::Snapshot s = model();
    api::PodRecord rec;
    rec.reg.container_id = "c1";
    rec.reg.ifname = "eth0";
    rec.reg.netns = "/fake/a";
    rec.reg.namespace_ = "y";
    rec.reg.name = "a";
    rec.reg.ips = {"10.1.1.1/24"};
    core::Records records{{"c1/eth0", rec}};
    core::Enforcer enforcer(std::make_unique<nft::FakeBackend>(), [](const std::string&) {});
    Query q(enforcer.compiler());
    enforcer.set_query(&q);
    enforcer.reset(s, records, {"192.168.1.10"});
    const uint64_t after_reset = q.version();
    CHECK(after_reset >= 1);
    const ConnKey from_c = key(true, {"y", "a"}, ObjectKey{"x", "c"}, "10.1.0.3", 80);
    CHECK_FALSE(q.check(from_c).allowed);
    CHECK(q.check(from_c).isolated);

    // The source changes: allow-web removed.
    s.policies.erase({"y", "allow-web"});
    cache::Delta delta;
    delta.policies.insert({"y", "allow-web"});
    enforcer.source_changed(s, delta, records);
    CHECK(q.version() > after_reset);
    CHECK(q.check(from_c).allowed);
    same_as_explain(q, from_c);

    // The node's addresses change: traffic from the new one is always allowed.
    cache::NetworkPolicy lock;
    lock.namespace_ = "y";
    lock.name = "lock";
    lock.pod_selector = sel({{"pod", "a"}});
    lock.policy_types = {cache::PolicyType::Ingress};
    s.put(lock);
    cache::Delta d2;
    d2.policies.insert({"y", "lock"});
    enforcer.source_changed(s, d2, records);
    const ConnKey from_new_node = key(true, {"y", "a"}, std::nullopt, "192.168.1.11", 22);
    CHECK_FALSE(q.check(from_new_node).allowed);
    const uint64_t before = q.version();
    enforcer.node_addresses_changed({"192.168.1.11"}, records);
    CHECK(q.version() > before);
    CHECK(q.check(from_new_node).allowed);
    same_as_explain(q, from_new_node);
}
