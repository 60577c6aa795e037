#include <doctest/doctest.h>
#include <unistd.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <chrono>
#include <future>
#include <optional>
#include <string>

#include "core/controller.h"
#include "nft/fake_backend.h"
#include "source/dir_source.h"
#include "signet/fsutil.h"
#include "signet/json.h"

using namespace signet;

namespace {

struct TempDir {
    std::string path;
    TempDir() {
        char t[] = "/tmp/signet-ctl-XXXXXX";
        path = ::mkdtemp(t);
    }
    ~TempDir() { std::system(("rm -rf '" + path + "'").c_str()); }
};

struct Harness {
    TempDir dir;
    boost::asio::io_context io;
    std::unique_ptr<core::Controller> ctl;
    nft::FakeBackend* backend = nullptr;  // owned by ctl
    // The tests register their own process's netns (no root needed), which
    // signetd refuses as the node's own: cleared unless a test wants them.
    std::vector<pods::HostNetns> host_netns;
    std::string node_netns;
    std::chrono::milliseconds unprotected_grace{30000};
    std::string health_address, metrics_address;  // the listeners (off unless a test sets them)

    explicit Harness(bool refuse_host_netns = false, std::string health = {}, std::string metrics = {})
        : health_address(std::move(health)), metrics_address(std::move(metrics)) {
        if (refuse_host_netns) host_netns = pods::default_host_netns();
        REQUIRE(fs::make_dirs(dir.path + "/manifests").ok());
        write("pods.yaml", R"(apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: shop
  labels: {app: web, tier: front}
spec:
  containers:
  - name: c
    image: x
    ports:
    - {name: http, containerPort: 8080}
)");
        start();
    }
    void start() {
        core::Options o;
        o.node_name = "node-1";
        o.collect_flows = false;  // the fake netns is the test process's own
        o.socket_path = dir.path + "/api.sock";
        o.state_dir = dir.path + "/state";
        auto src = std::make_unique<source::DirSource>(dir.path + "/manifests", [](const std::string&) {});
        o.node_addresses = [] { return std::vector<std::string>{"192.0.2.1"}; };
        o.host_netns = host_netns;
        o.node_netns = node_netns;
        o.unprotected_grace = unprotected_grace;
        o.health_address = health_address;
        o.metrics_address = metrics_address;
        auto fake = std::make_unique<nft::FakeBackend>();
        backend = fake.get();
        ctl = std::make_unique<core::Controller>(io, o, std::move(src), std::move(fake));
        REQUIRE(ctl->start().ok());
    }
    void write(const std::string& name, const std::string& text) {
        REQUIRE(fs::write_atomic(dir.path + "/manifests/" + name, text, 0644).ok());
    }
    // GET on one of the TCP listeners from another thread, while this one
    // runs the controller's loop: "STATUS BODY".
    std::string http_get(uint16_t port, const std::string& path) {
        auto fut = std::async(std::launch::async, [port, path] {
            boost::asio::io_context cio;
            boost::asio::ip::tcp::socket s(cio);
            s.connect({boost::asio::ip::make_address("127.0.0.1"), port});
            std::string req = "GET " + path + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
            boost::asio::write(s, boost::asio::buffer(req));
            std::string all;
            boost::system::error_code ec;
            boost::asio::read(s, boost::asio::dynamic_buffer(all), ec);
            size_t end = all.find("\r\n\r\n");
            return all.substr(9, 3) + " " + (end == std::string::npos ? std::string() : all.substr(end + 4));
        });
        for (int i = 0; i < 500 && fut.wait_for(std::chrono::seconds(0)) != std::future_status::ready; ++i)
            io.run_one_for(std::chrono::milliseconds(10));
        REQUIRE(fut.wait_for(std::chrono::seconds(0)) == std::future_status::ready);
        return fut.get();
    }
    ipc::Response call(const std::string& method, const std::string& path, const std::string& body = {}) {
        ipc::Request req;
        req.method = method;
        size_t q = path.find('?');
        req.path = path.substr(0, q);
        if (q != std::string::npos) req.query = path.substr(q + 1);
        size_t pos = 1;
        while (pos < req.path.size()) {
            size_t s = req.path.find('/', pos);
            req.segments.push_back(req.path.substr(pos, s == std::string::npos ? std::string::npos : s - pos));
            if (s == std::string::npos) break;
            pos = s + 1;
        }
        req.body = body;
        std::optional<ipc::Response> got;
        ctl->handle(req, [&](ipc::Response r) { got = std::move(r); });
        for (int i = 0; i < 200 && !got; ++i) io.run_one_for(std::chrono::milliseconds(20));
        REQUIRE(got.has_value());
        return *got;
    }
};

const char* kReg = R"({"containerID":"c0ffee","ifname":"eth0","netns":"/proc/self/ns/net","network":"net",
  "namespace":"shop","name":"web","uid":"u1","ips":["10.9.0.2/24"]})";

}  // namespace

TEST_CASE("--health-address serves /healthz and /readyz only (kubelet's httpGet probes); the metrics listener has /readyz too") {
    Harness h(false, "127.0.0.1:0", "127.0.0.1:0");
    REQUIRE(h.ctl->health_port() != 0);
    REQUIRE(h.ctl->metrics_port() != 0);
    CHECK(h.ctl->health_port() != h.ctl->metrics_port());
    CHECK(h.http_get(h.ctl->health_port(), "/healthz") == "200 ok\n");
    REQUIRE(h.call("POST", "/v1/sync").status == 200);  // the source's snapshot is in force: ready
    REQUIRE(h.ctl->ready());
    CHECK(h.http_get(h.ctl->health_port(), "/readyz") == "200 ok\n");
    CHECK(h.http_get(h.ctl->metrics_port(), "/readyz") == "200 ok\n");
    CHECK(h.http_get(h.ctl->health_port(), "/metrics").rfind("404 ", 0) == 0);  // probes only
    CHECK(h.http_get(h.ctl->health_port(), "/graph").rfind("404 ", 0) == 0);
    CHECK(h.http_get(h.ctl->metrics_port(), "/metrics").rfind("200 ", 0) == 0);
}

TEST_CASE("register resolves labels from the source; sync applies edits") {
    Harness h;
    CHECK(h.call("GET", "/readyz").status == 200);
    auto reg = h.call("POST", "/v1/pods", kReg);
    REQUIRE(reg.status == 200);
    auto rec = json::parse(reg.body);
    REQUIRE(rec.ok());
    CHECK(std::string((*rec)["labels"]["app"].GetString()) == "web");
    CHECK((*rec)["containerPorts"][0]["containerPort"].GetInt() == 8080);
    CHECK((*rec)["hasObject"].GetBool());

    auto status = json::parse(h.call("GET", "/v1/status").body);
    uint64_t v1 = (*status)["appliedVersion"].GetUint64();
    CHECK(v1 == (*status)["sourceVersion"].GetUint64());

    h.write("pods.yaml", R"(apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: api}}
spec: {containers: [{name: c, image: x}]}
)");
    auto sync = h.call("POST", "/v1/sync?timeout=5s");
    REQUIRE(sync.status == 200);
    auto s = json::parse(sync.body);
    CHECK((*s)["appliedVersion"].GetUint64() > v1);
    auto one = json::parse(h.call("GET", "/v1/pods/c0ffee/eth0").body);
    CHECK(std::string((*one)["labels"]["app"].GetString()) == "api");
    CHECK_FALSE((*one)["labels"].HasMember("tier"));

    // An invalid file keeps the last good objects and is reported.
    h.write("pods.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop, labels: [oops]}\n");
    auto sync2 = json::parse(h.call("POST", "/v1/sync").body);
    REQUIRE(sync2.ok());
    CHECK((*sync2)["source"]["fileErrors"].Size() == 1);
    auto still = json::parse(h.call("GET", "/v1/pods/c0ffee/eth0").body);
    CHECK(std::string((*still)["labels"]["app"].GetString()) == "api");

    // A pod with no Pod object has no labels.
    h.write("pods.yaml", "");
    h.call("POST", "/v1/sync");
    auto none = json::parse(h.call("GET", "/v1/pods/c0ffee/eth0").body);
    CHECK((*none)["labels"].MemberCount() == 0);
    CHECK_FALSE((*none)["hasObject"].GetBool());
}

TEST_CASE("registry survives a controller restart; delete is idempotent") {
    Harness h;
    REQUIRE(h.call("POST", "/v1/pods", kReg).status == 200);
    h.ctl->stop();
    h.ctl.reset();
    h.start();
    auto list = json::parse(h.call("GET", "/v1/pods").body);
    REQUIRE((*list)["pods"].Size() == 1);
    CHECK(std::string((*list)["pods"][0]["containerID"].GetString()) == "c0ffee");

    CHECK(h.call("DELETE", "/v1/pods/c0ffee/eth0").status == 200);
    auto again = json::parse(h.call("DELETE", "/v1/pods/c0ffee/eth0").body);
    CHECK_FALSE((*again)["removed"].GetBool());
    CHECK(h.call("GET", "/v1/pods/c0ffee/eth0").status == 404);
}

TEST_CASE("bad requests get clear errors") {
    Harness h;
    CHECK(h.call("POST", "/v1/pods", "{").status == 400);
    CHECK(h.call("POST", "/v1/pods", R"({"containerID":"x"})").status == 400);
    auto nons = h.call("POST", "/v1/pods", R"({"containerID":"c1","ifname":"eth0","netns":"/nonexistent","name":"p"})");
    CHECK(nons.status == 400);
    CHECK(nons.body.find("/nonexistent") != std::string::npos);
    CHECK(h.call("GET", "/v2/anything").status == 404);
    CHECK(h.call("PUT", "/v1/status").status == 405);
    CHECK(h.call("POST", "/v1/sync?timeout=forever").status == 400);
    CHECK(h.call("POST", "/v1/gc", R"({"network":"net"})").status == 400);
}

TEST_CASE("a registration's netns must be a pod's: the node's own, other namespaces and other files are refused with CNI code 4") {
    Harness h(true);
    auto refused = [&](const std::string& netns, const std::string& why) {
        std::string body = kReg;
        body.replace(body.find("/proc/self/ns/net"), 17, netns);
        auto r = h.call("POST", "/v1/pods", body);
        CHECK_MESSAGE(r.status == 400, netns);
        auto d = json::parse(r.body);
        REQUIRE(d.ok());
        CHECK_MESSAGE(std::string((*d)["error"].GetString()).find(why) != std::string::npos, r.body);
        CHECK_MESSAGE((*d)["cniCode"].GetInt() == 4, r.body);
    };
    refused("/proc/self/ns/net", "signetd's own network namespace");
    refused("/proc/thread-self/ns/net", "signetd's own network namespace");
    refused("/proc/1/ns/net", "/proc/1/ns/net");  // PID 1's (root), or unreadable (not root): refused either way
    refused("/proc/self/ns/uts", "not a network namespace");
    refused("/etc/hostname", "not a namespace");
    refused("/nonexistent/netns", "does not exist");
    refused("relative/netns", "not an absolute path");
    CHECK(h.call("GET", "/v1/pods/c0ffee/eth0").status == 404);
    auto st = json::parse(h.call("GET", "/v1/status").body);
    CHECK((*st)["counters"]["registrations"].GetUint64() == 0);
}

TEST_CASE("the node's netns (--node-netns) is refused as a pod's, whatever its path") {
    Harness h;
    h.ctl->stop();
    h.ctl.reset();
    h.node_netns = "/proc/thread-self/ns/net";  // the test's own netns under another name
    h.start();
    auto r = h.call("POST", "/v1/pods", kReg);
    CHECK(r.status == 400);
    CHECK(r.body.find("the node's network namespace (--node-netns)") != std::string::npos);
    CHECK(r.body.find("\"cniCode\":4") != std::string::npos);
}

TEST_CASE("registration: namespace and pod names as Kubernetes has them, with clear errors and CNI code 4") {
    Harness h;
    auto with = [&](const std::string& field, const std::string& value) {
        auto doc = json::parse(kReg);
        REQUIRE(doc.ok());
        doc->RemoveMember(field.c_str());
        doc->AddMember(json::str(field, doc->GetAllocator()), json::str(value, doc->GetAllocator()), doc->GetAllocator());
        return h.call("POST", "/v1/pods", json::to_string(*doc));
    };
    for (const std::string& ns : {std::string("Shop"), std::string("shop_1"), std::string("-shop"), std::string("a.b"),
                                  std::string(64, 'a')}) {
        auto r = with("namespace", ns);
        CHECK_MESSAGE(r.status == 400, ns);
        CHECK_MESSAGE(r.body.find("namespace: ") != std::string::npos, r.body);
        CHECK(r.body.find("\"cniCode\":4") != std::string::npos);
    }
    for (const std::string& name : {std::string("Web"), std::string("web_1"), std::string("web."), std::string("a..b"),
                                    std::string(254, 'a'), std::string("a/b")}) {
        auto r = with("name", name);
        CHECK_MESSAGE(r.status == 400, name);
        CHECK_MESSAGE(r.body.find("name: ") != std::string::npos, r.body);
    }
    CHECK(with("uid", "u\n1").status == 400);
    CHECK(with("infraContainerID", "-x").status == 400);
    CHECK(with("namespace", std::string(63, 'a')).status == 200);
    CHECK(with("name", "web-1.v2").status == 200);
    // Names reaching the read endpoints are checked too.
    CHECK(h.call("GET", "/v1/policies/Shop/web").status == 400);
    CHECK(h.call("GET", "/v1/policies/shop/web_1").status == 400);
    auto ex = h.call("GET", "/v1/explain?from=shop/Web&to=10.0.0.1&port=80");
    CHECK(ex.status == 400);
    CHECK(ex.body.find("from: pod name") != std::string::npos);
    CHECK(h.call("GET", "/v1/explain?from=10.0.0.2&to=Shop/web&port=80").status == 400);
}

TEST_CASE("GC through the API") {
    Harness h;
    REQUIRE(h.call("POST", "/v1/pods", kReg).status == 200);
    std::string other = kReg;
    other.replace(other.find("c0ffee"), 6, "beef01");
    REQUIRE(h.call("POST", "/v1/pods", other).status == 200);
    auto gc = json::parse(h.call("POST", "/v1/gc", R"({"network":"net","validAttachments":[{"containerID":"beef01","ifname":"eth0"}]})").body);
    REQUIRE((*gc)["removed"].Size() == 1);
    CHECK(std::string((*gc)["removed"][0].GetString()) == "c0ffee/eth0");
}

TEST_CASE("sync without the API (what SIGHUP does): the source read afresh and in force before done") {
    Harness h;
    REQUIRE(h.call("POST", "/v1/pods", kReg).status == 200);
    h.write("pods.yaml", R"(apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: db}}
spec: {containers: [{name: c, image: x}]}
)");
    std::optional<Status> done;
    h.ctl->sync([&](Status st) { done = st; });
    for (int i = 0; i < 250 && !done; ++i) h.io.run_one_for(std::chrono::milliseconds(20));
    REQUIRE(done.has_value());
    CHECK(done->ok());
    auto status = json::parse(h.call("GET", "/v1/status").body);
    CHECK((*status)["appliedVersion"].GetUint64() == (*status)["sourceVersion"].GetUint64());
    auto one = json::parse(h.call("GET", "/v1/pods/c0ffee/eth0").body);
    CHECK(std::string((*one)["labels"]["app"].GetString()) == "db");
}

TEST_CASE("JSON nested without bound is refused before it is parsed, never crashes signetd") {
    // 200,000 levels: a recursive parser (or writer) would overflow the stack.
    const std::string deep = std::string(200000, '[') + std::string(200000, ']');
    auto p = json::parse(deep);
    REQUIRE_FALSE(p.ok());
    CHECK(p.error().message.find("nested deeper than") != std::string::npos);
    CHECK_FALSE(json::check_depth(std::string(json::kMaxDepth + 1, '[')).ok());
    CHECK(json::check_depth(std::string(json::kMaxDepth, '[')).ok());
    CHECK(json::check_depth(R"({"a":"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\"["})")
              .ok());  // brackets inside strings (and an escaped quote) do not count
    Harness h;
    auto r = h.call("POST", "/v1/pods", std::string(100000, '{') + "\"a\":1" + std::string(100000, '}'));
    CHECK(r.status == 400);
    CHECK(h.call("GET", "/readyz").status == 200);  // still serving
}

TEST_CASE("unprotected pods with a manifest folder: only Pods that name this node and say Running; no Event, no API") {
    Harness h;
    h.ctl->stop();
    h.ctl.reset();
    h.unprotected_grace = std::chrono::milliseconds(0);
    h.write("more.yaml", R"(apiVersion: v1
kind: Pod
metadata: {name: lost, namespace: shop}
spec: {nodeName: node-1, containers: [{name: c, image: x}]}
status: {phase: Running, podIP: 10.9.0.7}
---
apiVersion: v1
kind: Pod
metadata: {name: elsewhere, namespace: shop}
spec: {nodeName: node-2, containers: [{name: c, image: x}]}
status: {phase: Running}
---
apiVersion: v1
kind: Pod
metadata: {name: host, namespace: shop}
spec: {nodeName: node-1, hostNetwork: true, containers: [{name: c, image: x}]}
status: {phase: Running}
---
apiVersion: v1
kind: Pod
metadata: {name: chained, namespace: shop}
spec: {nodeName: node-1, containers: [{name: c, image: x}]}
status: {phase: Running}
)");
    h.start();
    REQUIRE(h.call("POST", "/v1/sync?timeout=5s").status == 200);
    // "web" (pods.yaml) has neither nodeName nor phase: never checked.
    REQUIRE(h.call("POST", "/v1/pods", R"({"containerID":"c1","ifname":"eth0","netns":"/proc/self/ns/net",
      "network":"net","namespace":"shop","name":"chained"})").status == 200);
    auto u = json::parse(h.call("GET", "/v1/unprotected").body);
    REQUIRE(u.ok());
    CHECK((*u)["checked"].GetBool());
    CHECK((*u)["count"].GetUint64() == 1);
    CHECK_FALSE((*u)["events"].GetBool());
    REQUIRE((*u)["pods"].Size() == 1);
    const auto& p = (*u)["pods"][0];
    CHECK(std::string(p["name"].GetString()) == "lost");
    CHECK(std::string(p["ips"][0].GetString()) == "10.9.0.7");
    CHECK(std::string(p["event"].GetString()) == "off");
    auto st = json::parse(h.call("GET", "/v1/status").body);
    CHECK((*st)["unprotected"]["count"].GetUint64() == 1);
    CHECK(std::string((*st)["startupTaint"]["state"].GetString()) == "off");
    CHECK(h.ctl->metrics_text().find("\nsignet_unprotected_pods 1\n") != std::string::npos);
    CHECK(h.call("POST", "/v1/unprotected").status == 405);

    // Registered later: gone from the report.
    REQUIRE(h.call("POST", "/v1/pods", R"({"containerID":"c2","ifname":"eth0","netns":"/proc/self/ns/net",
      "network":"net","namespace":"shop","name":"lost"})").status == 200);
    auto after = json::parse(h.call("GET", "/v1/unprotected").body);
    CHECK((*after)["count"].GetUint64() == 0);
    CHECK(h.ctl->metrics_text().find("\nsignet_unprotected_pods 0\n") != std::string::npos);
}

TEST_CASE("/metrics: flow series by workload, kept across a rollout, gone with the workload's last pod") {
    Harness h;
    h.write("deploy.yaml", R"(apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata:
    name: api-5d8c7b9f4-aaaaa
    namespace: shop
    labels: {app: api, pod-template-hash: 5d8c7b9f4}
    ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: api-5d8c7b9f4, uid: r1, controller: true}]
  spec: {containers: [{name: c, image: x}]}
- apiVersion: v1
  kind: Pod
  metadata:
    name: api-6f7d8c9b5-bbbbb
    namespace: shop
    labels: {app: api, pod-template-hash: 6f7d8c9b5}
    ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: api-6f7d8c9b5, uid: r2, controller: true}]
  spec: {containers: [{name: c, image: x}]}
)");
    REQUIRE(h.call("POST", "/v1/sync").status == 200);
    auto reg = [&](const std::string& cid, const std::string& name, const std::string& ip) {
        return h.call("POST", "/v1/pods",
                      R"({"containerID":")" + cid + R"(","ifname":"eth0","netns":"/proc/self/ns/net","network":"net",
                      "namespace":"shop","name":")" + name + R"(","uid":"u-)" + cid + R"(","ips":[")" + ip + R"(/24"]})");
    };
    auto denied = [&](const std::string& cid, uint8_t last) {
        nft::LoggedPacket p;
        p.prefix = "signet ingress";
        p.tuple.family = nft::Family::v4;
        p.tuple.src.bytes = {192, 0, 2, 77};
        p.tuple.dst.bytes = {10, 9, 0, last};
        p.tuple.proto = 6;
        p.tuple.sport = 40000;
        p.tuple.dport = 8080;
        p.length = 60;
        h.ctl->flows().on_denied(api::key(cid, "eth0"), {p});
    };
    const std::string series =
        R"(signet_flow_connections_total{local_namespace="shop",local_workload_kind="Deployment",local_workload="api",)"
        R"(direction="ingress",verdict="denied",policy="none"} )";
    REQUIRE(reg("old", "api-5d8c7b9f4-aaaaa", "10.9.0.2").status == 200);
    denied("old", 2);
    REQUIRE(reg("new", "api-6f7d8c9b5-bbbbb", "10.9.0.3").status == 200);  // the rollout's new pod
    denied("new", 3);
    std::string text = h.ctl->metrics_text();
    CHECK(text.find(series + "2") != std::string::npos);
    CHECK(text.find("local_pod=") == std::string::npos);
    CHECK(text.find("signet_cni_add_seconds_count 2") != std::string::npos);
    CHECK(text.find("process_open_fds ") != std::string::npos);
    // The old pod goes: the workload's counter goes on.
    REQUIRE(h.call("DELETE", "/v1/pods/old/eth0").status == 200);
    text = h.ctl->metrics_text();
    CHECK(text.find(series + "2") != std::string::npos);
    // The last one goes: so do its series.
    REQUIRE(h.call("DELETE", "/v1/pods/new/eth0").status == 200);
    text = h.ctl->metrics_text();
    CHECK(text.find("local_workload=\"api\"") == std::string::npos);
}
