// The enforcer against the in-memory backend: which changes re-check
// conntrack (only narrowing ones), what gets cut, and that the tables of a
// change all get written.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "../../controller/core/enforcer.h"
#include "../../controller/nft/fake_backend.h"
#include "../../controller/policy/addr.h"

using namespace signet;
using nft::FakeBackend;

namespace {

cache::Pod make_pod(const std::string& name, const std::string& label, const std::string& ip) {
    cache::Pod p;
    p.namespace_ = "x";
    p.name = name;
    p.uid = "x-" + name;
    p.node_name = "node1";
    p.labels = {{"pod", label}};
    p.pod_ips = {ip};
    p.phase = "Running";
    return p;
}

// Ingress to pod=server on TCP 80 from pods labelled pod=<from>.
cache::NetworkPolicy allow_from(const std::string& from) {
    cache::NetworkPolicy p;
    p.namespace_ = "x";
    p.name = "allow";
    p.pod_selector = cache::LabelSelector{{{"pod", "server"}}, {}};
    p.policy_types = {cache::PolicyType::Ingress};
    cache::Peer peer{cache::LabelSelector{{{"pod", from}}, {}}, std::nullopt, std::nullopt};
    p.ingress.push_back(cache::IngressRule{std::vector<cache::Peer>{peer},
                                           std::vector<cache::PolicyPort>{{cache::Protocol::TCP, int32_t{80}, std::nullopt}}});
    return p;
}

nft::CtEntry tcp_conn(const char* src, uint16_t sport, const char* dst, uint16_t dport) {
    nft::CtEntry e;
    auto s = policy::parse_ip(src), d = policy::parse_ip(dst);
    REQUIRE(s.ok());
    REQUIRE(d.ok());
    e.orig = nft::CtTuple{nft::Family::v4, s->addr, d->addr, nft::kTcp, sport, dport};
    e.reply = nft::CtTuple{nft::Family::v4, d->addr, s->addr, nft::kTcp, dport, sport};
    e.tcp_state = 3;  // ESTABLISHED
    return e;
}

struct World {
    cache::Snapshot snap;
    core::Records records;
    FakeBackend* fake = nullptr;
    std::vector<std::string> reports;
    std::unique_ptr<core::Enforcer> enforcer;

    World() {
        snap.put(cache::Namespace{"x", {{"kubernetes.io/metadata.name", "x"}}});
        snap.put(make_pod("server", "server", "10.0.0.2"));
        snap.put(make_pod("a", "a", "10.0.0.3"));
        snap.put(make_pod("b", "b", "10.0.0.4"));
        snap.put(allow_from("a"));
        api::PodRecord rec;
        rec.reg.container_id = "c1";
        rec.reg.ifname = "eth0";
        rec.reg.netns = "/fake/server";
        rec.reg.namespace_ = "x";
        rec.reg.name = "server";
        rec.reg.ips = {"10.0.0.2/24"};
        records["c1/eth0"] = rec;
        auto be = std::make_unique<FakeBackend>();
        fake = be.get();
        enforcer = std::make_unique<core::Enforcer>(std::move(be), [this](const std::string& m) { reports.push_back(m); });
        enforcer->reset(snap, records, {"192.0.2.1"});
        REQUIRE(enforcer->programmed("c1/eth0"));
        // An established connection from a, allowed now.
        fake->ct_entries["/fake/server"] = {tcp_conn("10.0.0.3", 40000, "10.0.0.2", 80)};
    }
    void change(const cache::Object& obj) {
        snap.put(obj);
        cache::Delta d;
        d.note(obj);
        enforcer->source_changed(snap, d, records);
    }
};

}  // namespace

TEST_CASE("enforcer: a widening change writes sets only and does not re-check conntrack") {
    World w;
    size_t ct_before = w.fake->count(FakeBackend::Call::conntrack);
    // A second pod labelled a appears: the server's peer set grows.
    w.change(make_pod("a2", "a", "10.0.0.5"));
    CHECK(w.fake->count(FakeBackend::Call::conntrack) == ct_before);
    REQUIRE_FALSE(w.fake->calls.empty());
    CHECK(w.fake->calls.back().kind == FakeBackend::Call::apply);
    CHECK(w.fake->calls.back().incremental);
    CHECK(w.fake->ct_entries["/fake/server"].size() == 1);
    CHECK(w.enforcer->programmed("c1/eth0"));
    // Only the peer set that grew is written, and it is a hash set (pod
    // addresses: no rbtree); the node's set and the rest are left alone.
    CHECK(w.fake->calls.back().sets_written == 1);
    CHECK(w.fake->calls.back().hash_sets_written == 1);
    const nft::PodRuleset& t = w.fake->tables.at("/fake/server");
    for (const auto& entry : t.sets) {
        const std::string& name = entry.first;  // (not a structured binding: clang 14 cannot capture one in INFO)
        const auto& set = entry.second;
        INFO(name);
        CHECK_FALSE(set.interval);  // podSelector peers and the node's addresses only
    }
}

TEST_CASE("enforcer: an ipBlock peer keeps an interval set, pod peers a hash set") {
    World w;
    cache::NetworkPolicy p = allow_from("b");
    p.name = "allow-block";
    auto net = cache::parse_cidr("203.0.113.0/24"), hole = cache::parse_cidr("203.0.113.128/25");
    REQUIRE(net);
    REQUIRE(hole);
    cache::Peer block{std::nullopt, std::nullopt, cache::IpBlock{*net, {*hole}}};
    p.ingress[0].from->push_back(block);
    w.change(p);
    const nft::PodRuleset& t = w.fake->tables.at("/fake/server");
    size_t interval = 0, hash = 0;
    for (const auto& [name, set] : t.sets) (set.interval ? interval : hash)++;
    CHECK(interval >= 1);  // the rule with the ipBlock (mixed with pods: interval)
    CHECK(hash >= 3);      // allow-from-a's peers, node_v4, node_v6
}

TEST_CASE("enforcer: a narrowing change re-checks conntrack and cuts what is no longer allowed") {
    World w;
    // An established connection from b too (it got in before; now the policy names a only).
    w.fake->ct_entries["/fake/server"].push_back(tcp_conn("10.0.0.4", 40001, "10.0.0.2", 80));
    size_t ct_before = w.fake->count(FakeBackend::Call::conntrack);
    w.change(allow_from("b"));  // a loses access, b gains it
    CHECK(w.fake->count(FakeBackend::Call::conntrack) == ct_before + 1);
    REQUIRE(w.fake->ct_entries["/fake/server"].size() == 1);
    CHECK(w.fake->ct_entries["/fake/server"][0] == tcp_conn("10.0.0.4", 40001, "10.0.0.2", 80));
    bool reported = false;
    for (const auto& r : w.reports) reported = reported || r.find("cut incoming TCP connection 10.0.0.3:40000") == 0;
    CHECK(reported);
    rapidjson::Document d;
    w.enforcer->status(d, d.GetAllocator());
    CHECK(d["cutConnections"].GetUint64() == 1);
    CHECK(d["programLatency"]["changes"].GetUint64() >= 2);
}

TEST_CASE("enforcer: a pod whose peer moves away by label loses its connection") {
    World w;
    // Relabelling a (same IP) narrows the set: the connection from 10.0.0.3 is cut.
    w.change(make_pod("a", "other", "10.0.0.3"));
    CHECK(w.fake->ct_entries["/fake/server"].empty());
}

TEST_CASE("enforcer: a failed write is reported, retried, and counted as not applied") {
    World w;
    w.fake->fail_next(make_error(EIO, "injected"), 1);
    w.change(make_pod("a2", "a", "10.0.0.5"));
    CHECK_FALSE(w.enforcer->programmed("c1/eth0"));
    CHECK(w.enforcer->has_failures());
    w.enforcer->retry_failed(w.records);
    CHECK(w.enforcer->programmed("c1/eth0"));
    CHECK_FALSE(w.enforcer->has_failures());
}

// Audit mode (docs/policy.md, "Audit mode"): the table says audit; while it
// does nothing is cut; audit -> enforce is a rewrite that re-checks conntrack
// and cuts what the policy does not allow.
TEST_CASE("enforcer: audit mode: the table audits, nothing is cut, and audit -> enforce cuts") {
    World w;
    bool audit = true;
    w.enforcer->set_audit([&audit](const api::PodRecord&) { return audit; });
    // An established connection from b, not allowed by the policy (it got in while auditing).
    w.fake->ct_entries["/fake/server"].push_back(tcp_conn("10.0.0.4", 40001, "10.0.0.2", 80));
    w.enforcer->reprogram({cache::ObjectKey{"x", "server"}}, w.records);
    REQUIRE(w.fake->tables.count("/fake/server"));
    CHECK(w.fake->tables["/fake/server"].audit);
    CHECK_FALSE(w.fake->calls.back().incremental);  // a structure change: the table is replaced
    CHECK(w.fake->ct_entries["/fake/server"].size() == 2);
    // A narrowing policy change while auditing cuts nothing either.
    w.change(allow_from("c"));
    CHECK(w.fake->tables["/fake/server"].audit);
    CHECK(w.fake->ct_entries["/fake/server"].size() == 2);
    // Back to enforce: the rewrite re-checks conntrack; neither a nor b is allowed by allow-from-c.
    w.change(allow_from("b"));  // b allowed again (still auditing): nothing cut
    CHECK(w.fake->ct_entries["/fake/server"].size() == 2);
    audit = false;
    size_t ct_before = w.fake->count(FakeBackend::Call::conntrack);
    w.enforcer->reprogram({cache::ObjectKey{"x", "server"}}, w.records);
    CHECK_FALSE(w.fake->tables["/fake/server"].audit);
    CHECK(w.fake->count(FakeBackend::Call::conntrack) == ct_before + 1);
    REQUIRE(w.fake->ct_entries["/fake/server"].size() == 1);  // a's connection cut, b's kept
    CHECK(w.fake->ct_entries["/fake/server"][0] == tcp_conn("10.0.0.4", 40001, "10.0.0.2", 80));
}
