// Unit tests: unprotected pods (the comparison of the source's pods on this
// node with the registry), the Event and taint-removal bodies, and the
// writer's requests against recorded answers (issue #15). The whole path
// against test/apiserver: test/integration/test_unprotected.py.
#include <doctest/doctest.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <optional>

#include "coverage/cluster_writer.h"
#include "coverage/unprotected.h"
#include "kube_fake.h"
#include "signet/json.h"

using namespace signet;
using coverage::UnprotectedTracker;

namespace {

cache::Pod pod(const std::string& ns, const std::string& name, const std::string& node = "node-1",
               const std::string& phase = "Running", bool host = false, const std::string& uid = "") {
    cache::Pod p;
    p.namespace_ = ns;
    p.name = name;
    p.uid = uid.empty() ? "uid-" + name : uid;
    p.node_name = node;
    p.phase = phase;
    p.host_network = host;
    p.pod_ips = {"10.1.0.7"};
    return p;
}

std::map<cache::ObjectKey, cache::Pod> pods(std::initializer_list<cache::Pod> list) {
    std::map<cache::ObjectKey, cache::Pod> m;
    for (const auto& p : list) m[{p.namespace_, p.name}] = p;
    return m;
}

api::PodRecord record(const std::string& ns, const std::string& name, const std::string& uid = "") {
    api::PodRecord r;
    r.reg.container_id = "c-" + name;
    r.reg.ifname = "eth0";
    r.reg.namespace_ = ns;
    r.reg.name = name;
    r.reg.uid = uid;
    return r;
}

std::map<std::string, api::PodRecord> registry(std::initializer_list<api::PodRecord> list) {
    std::map<std::string, api::PodRecord> m;
    for (const auto& r : list) m[api::key(r.reg.container_id, r.reg.ifname)] = r;
    return m;
}

testing::Exchange answer(const std::string& method, long status, const std::string& body) {
    testing::Exchange e;
    e.method = method;
    e.status = status;
    e.chunks = {body};
    return e;
}

}  // namespace

TEST_CASE("unprotected: only Running, non-hostNetwork pods placed on this node must be registered") {
    CHECK(coverage::must_be_registered(pod("a", "web"), "node-1"));
    CHECK_FALSE(coverage::must_be_registered(pod("a", "web", "node-2"), "node-1"));
    CHECK_FALSE(
        coverage::must_be_registered(pod("a", "web", ""), "node-1"));  // not scheduled (or a manifest without nodeName)
    CHECK_FALSE(coverage::must_be_registered(pod("a", "web", "node-1", "Pending"), "node-1"));
    CHECK_FALSE(coverage::must_be_registered(pod("a", "web", "node-1", "Succeeded"), "node-1"));
    CHECK_FALSE(coverage::must_be_registered(pod("a", "web", "node-1", ""), "node-1"));  // a manifest without status
    CHECK_FALSE(coverage::must_be_registered(pod("a", "web", "node-1", "Running", true), "node-1"));
    CHECK_FALSE(coverage::must_be_registered(pod("a", "web"), ""));
}

TEST_CASE("unprotected: a registration matches by namespace and name") {
    auto p = pod("a", "web", "node-1", "Running", false, "u-1");
    CHECK(coverage::is_registered(p, registry({record("a", "web")})));
    CHECK(coverage::is_registered(p, registry({record("a", "web", "u-1")})));
    // Another UID: a static pod (the kubelet's UID, not the mirror Pod's), or
    // an earlier pod of that name whose registration the sweep drops with its netns.
    CHECK(coverage::is_registered(p, registry({record("a", "web", "u-0")})));
    CHECK_FALSE(coverage::is_registered(p, registry({record("b", "web", "u-1")})));
    CHECK_FALSE(coverage::is_registered(p, registry({record("a", "web2")})));
    CHECK(coverage::is_registered(pod("default", "x"), registry({record("", "x")})));  // no K8S_POD_NAMESPACE: default
}

TEST_CASE("unprotected: the grace period, then reported once; registered, other-node and hostNetwork pods never") {
    UnprotectedTracker t(std::chrono::milliseconds(30000));
    auto src = pods({pod("shop", "lost"), pod("shop", "ok"), pod("shop", "host", "node-1", "Running", true),
                     pod("shop", "elsewhere", "node-2"), pod("shop", "starting", "node-1", "Pending")});
    auto reg = registry({record("shop", "ok")});
    const int64_t t0 = 1'000'000;
    auto c = t.update(src, reg, "node-1", t0);
    CHECK(c.reported.empty());
    CHECK(t.tracked().size() == 1);
    CHECK(t.unprotected() == 0);
    CHECK(t.pending() == 1);
    REQUIRE(t.next_deadline());
    CHECK(*t.next_deadline() == t0 + 30000);

    c = t.update(src, reg, "node-1", t0 + 29999);
    CHECK(c.reported.empty());
    c = t.update(src, reg, "node-1", t0 + 30000);
    REQUIRE(c.reported.size() == 1);
    CHECK(c.reported[0] == cache::ObjectKey{"shop", "lost"});
    const auto& u = t.tracked().at({"shop", "lost"});
    CHECK(u.reported);
    CHECK(u.since_ms == t0);
    CHECK(u.ips == std::vector<std::string>{"10.1.0.7"});
    CHECK(t.unprotected() == 1);
    CHECK_FALSE(t.next_deadline());

    // Later updates keep it, and do not report it again.
    c = t.update(src, reg, "node-1", t0 + 60000);
    CHECK(c.reported.empty());
    CHECK(c.resolved.empty());
    CHECK(t.unprotected() == 1);
    CHECK(t.tracked().at({"shop", "lost"}).since_ms == t0);

    // Registered later: resolved, forgotten.
    auto reg2 = registry({record("shop", "ok"), record("shop", "lost")});
    c = t.update(src, reg2, "node-1", t0 + 61000);
    REQUIRE(c.resolved.size() == 1);
    CHECK(c.resolved[0].name == "lost");
    CHECK(t.tracked().empty());
    CHECK(t.unprotected() == 0);
}

TEST_CASE(
    "unprotected: a pod leaving the node, stopping or deleted is resolved; a new pod of the same name starts over") {
    UnprotectedTracker t(std::chrono::milliseconds(0));
    const int64_t t0 = 5000;
    auto c = t.update(pods({pod("a", "x"), pod("a", "y"), pod("a", "z")}), {}, "node-1", t0);
    CHECK(c.reported.size() == 3);  // grace 0: at once
    c = t.update(pods({pod("a", "x", "node-1", "Succeeded"), pod("a", "y", "node-1", "Running", false, "uid-y2")}), {},
                 "node-1", t0 + 1000);
    // x stopped, z deleted, y is another pod now (new UID): all three resolved, the new y reported afresh.
    CHECK(c.resolved.size() == 3);
    REQUIRE(c.reported.size() == 1);
    CHECK(t.tracked().at({"a", "y"}).uid == "uid-y2");
    CHECK(t.tracked().at({"a", "y"}).since_ms == t0 + 1000);
}

TEST_CASE("unprotected: a pod within its grace period that gets registered is never reported") {
    UnprotectedTracker t(std::chrono::milliseconds(30000));
    auto src = pods({pod("a", "new")});
    auto c = t.update(src, {}, "node-1", 0);
    CHECK(t.pending() == 1);
    c = t.update(src, registry({record("a", "new", "uid-new")}), "node-1", 10000);
    CHECK(c.reported.empty());
    CHECK(c.resolved.empty());  // never reported: nothing to say
    CHECK(t.tracked().empty());
}

TEST_CASE("unprotected: the Event on the Pod") {
    coverage::UnprotectedPod u;
    u.namespace_ = "shop";
    u.name = "web-7d9f8b6c4d-x2x9z";
    u.uid = "1B2C3D4E-aaaa-4bbb-8ccc-0123456789ab";
    u.since_ms = 1'765'000'000'000;
    auto doc = json::parse(coverage::unprotected_event(u, "node-1", 1'765'000'100));
    REQUIRE(doc.ok());
    const auto& d = *doc;
    CHECK(json::opt_string(d, "kind") == "Event");
    CHECK(json::opt_string(d, "apiVersion") == "v1");
    CHECK(json::opt_string(d, "type") == "Warning");
    CHECK(json::opt_string(d, "reason") == "SignetUnprotected");
    const auto* md = json::find(d, "metadata");
    REQUIRE(md != nullptr);
    CHECK(json::opt_string(*md, "namespace") == "shop");
    CHECK(json::opt_string(*md, "name") == "web-7d9f8b6c4d-x2x9z.signet-unprotected-1b2c3d4e");
    const auto* io = json::find(d, "involvedObject");
    REQUIRE(io != nullptr);
    CHECK(json::opt_string(*io, "kind") == "Pod");
    CHECK(json::opt_string(*io, "namespace") == "shop");
    CHECK(json::opt_string(*io, "name") == u.name);
    CHECK(json::opt_string(*io, "uid") == u.uid);
    CHECK(json::opt_string(d, "firstTimestamp") == "2025-12-06T05:48:20Z");
    CHECK(json::opt_string(d, "lastTimestamp") == "2025-12-06T05:48:20Z");
    CHECK(json::opt_string(*json::find(d, "source"), "host") == "node-1");
    CHECK(json::opt_string(d, "message")->find("Delete the pod") != std::string::npos);

    // Names stay DNS-1123 subdomains of at most 253 bytes.
    std::string longname(250, 'a');
    auto n = coverage::unprotected_event_name(longname, "abc");
    CHECK(n.size() <= 253);
    CHECK(cache::is_dns1123_subdomain(n));
    CHECK(coverage::unprotected_event_name("web", "") == "web.signet-unprotected");
}

TEST_CASE("startup taint: the patch removes only signet's taint, guarded by a test of the taints read") {
    auto node = json::parse(R"({"kind":"Node","metadata":{"name":"n1","resourceVersion":"7"},"spec":{"taints":[
        {"key":"node.signet.dev/agent-not-ready","effect":"NoSchedule"},
        {"key":"dedicated","value":"gpu","effect":"NoSchedule"},
        {"key":"node.signet.dev/agent-not-ready","effect":"NoExecute"}]}})");
    REQUIRE(node.ok());
    auto p = coverage::taint_removal_patch(*node, coverage::kStartupTaint);
    REQUIRE(p.ok());
    REQUIRE(p->has_value());
    auto patch = json::parse(**p);
    REQUIRE(patch.ok());
    REQUIRE(patch->IsArray());
    REQUIRE(patch->Size() == 2);
    const auto& test = (*patch)[0];
    const auto& replace = (*patch)[1];
    CHECK(json::opt_string(test, "op") == "test");
    CHECK(json::opt_string(test, "path") == "/spec/taints");
    CHECK(json::find(test, "value")->Size() == 3);
    CHECK(json::opt_string(replace, "op") == "replace");
    const auto* kept = json::find(replace, "value");
    REQUIRE(kept->Size() == 1);
    CHECK(json::opt_string((*kept)[0], "key") == "dedicated");
    CHECK(json::opt_string((*kept)[0], "value") == "gpu");

    auto none = json::parse(R"({"kind":"Node","spec":{"taints":[{"key":"dedicated","effect":"NoSchedule"}]}})");
    auto q = coverage::taint_removal_patch(*none, coverage::kStartupTaint);
    REQUIRE(q.ok());
    CHECK_FALSE(q->has_value());
    auto bare = json::parse(R"({"kind":"Node","metadata":{"name":"n1"}})");
    CHECK_FALSE(coverage::taint_removal_patch(*bare, coverage::kStartupTaint)->has_value());
    auto bad = json::parse(R"({"kind":"Node","spec":{"taints":"x"}})");
    CHECK_FALSE(coverage::taint_removal_patch(*bad, coverage::kStartupTaint).ok());
    auto arr = json::parse("[]");
    CHECK_FALSE(coverage::taint_removal_patch(*arr, coverage::kStartupTaint).ok());
}

TEST_CASE("cluster writer: taint removal reads again after a failed test, events: created, existing, forbidden") {
    auto server = testing::FakeServer::make();
    const std::string tainted =
        R"({"kind":"Node","metadata":{"name":"node-1"},"spec":{"taints":[{"key":"node.signet.dev/agent-not-ready","effect":"NoSchedule"},{"key":"other","effect":"NoSchedule"}]}})";
    const std::string clean =
        R"({"kind":"Node","metadata":{"name":"node-1"},"spec":{"taints":[{"key":"other","effect":"NoSchedule"}]}})";
    server->script("/api/v1/nodes/node-1",
                   {answer("GET", 200, tainted),
                    answer("PATCH", 422, R"({"kind":"Status","code":422,"reason":"Invalid","message":"test failed"})"),
                    answer("GET", 200, tainted), answer("PATCH", 200, clean), answer("GET", 200, clean)});
    server->script(
        "/api/v1/namespaces/shop/events",
        {answer("POST", 201, "{}"), answer("POST", 409, R"({"kind":"Status","code":409,"reason":"AlreadyExists"})"),
         answer("POST", 403, R"({"kind":"Status","code":403,"reason":"Forbidden","message":"no"})"),
         answer("POST", 500, "{}")});
    boost::asio::io_context io;
    auto work = boost::asio::make_work_guard(io);  // run_for waits for the writer's callbacks
    std::vector<std::string> reports;
    coverage::ClusterWriter w(io, server->client(), [&](const std::string& m) { reports.push_back(m); });
    w.start();
    std::optional<bool> removed, again;
    std::vector<Status> events;
    w.remove_taint("node-1", coverage::kStartupTaint, [&](bool r) { removed = r; });
    for (int i = 0; i < 4; ++i) w.post_event("shop", "{}", [&](Status st) { events.push_back(st); });
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while ((!removed || events.size() < 4) && std::chrono::steady_clock::now() < until)
        io.run_for(std::chrono::milliseconds(20));
    INFO("requests: " << [&] {
        std::string a;
        for (auto& r : server->requests()) a += r + "\n";
        return a;
    }());
    INFO("reports: " << [&] {
        std::string a;
        for (auto& r : reports) a += r + "\n";
        return a;
    }());
    REQUIRE(removed);
    CHECK(*removed);
    REQUIRE(events.size() == 4);
    CHECK(events[0].ok());
    CHECK(events[1].ok());  // 409: reported before (a restarted signetd)
    REQUIRE_FALSE(events[2].ok());
    CHECK(events[2].error().code == EACCES);
    REQUIRE_FALSE(events[3].ok());
    CHECK(events[3].error().code == EIO);
    // The taint already gone: nothing patched.
    w.remove_taint("node-1", coverage::kStartupTaint, [&](bool r) { again = r; });
    until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!again && std::chrono::steady_clock::now() < until) io.run_for(std::chrono::milliseconds(20));
    REQUIRE(again);
    CHECK_FALSE(*again);
    w.stop();
    CHECK(server->mismatches().empty());
    auto reqs = server->requests();
    size_t patches = 0;
    for (const auto& r : reqs)
        if (r.rfind("PATCH /api/v1/nodes/node-1 ", 0) == 0) {
            ++patches;
            CHECK(r.find(R"("op":"test")") != std::string::npos);
        }
    CHECK(patches == 2);
    CHECK(w.attempts() == 3);
    CHECK(reports.empty());
}
