// The one list + watch loop (kube/reflector.h) on recorded API answers
// (kube_fake.h): by itself, and through both of its users, the Kubernetes
// source and the CSR signer. Recorded streams: list pages with a continue
// token, events cut across reads, a bookmark, a 410 ERROR event mid-stream,
// a dropped connection, HTTP errors.
#include <doctest/doctest.h>

#include <unistd.h>

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "identity/authority.h"
#include "identity/csr_policy.h"
#include "kube/reflector.h"
#include "kube_fake.h"
#include "signer/csr_signer.h"
#include "signet/json.h"
#include "source/kubernetes/kubernetes_source.h"

// Scripts name only the fields that matter (designated initializers).
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

using namespace signet;
using namespace signet::testing;
using namespace std::chrono_literals;

namespace {

std::string pod(const std::string& name, const std::string& rv, const std::string& app = "web") {
    return R"({"kind":"Pod","apiVersion":"v1","metadata":{"name":")" + name + R"(","namespace":"x","resourceVersion":")" +
           rv + R"(","labels":{"app":")" + app + R"("}},"spec":{"containers":[{"name":"c","image":"i"}]}})";
}

std::string service(const std::string& name, const std::string& rv, const std::string& ip, const std::string& app,
                    int port = 80) {
    return R"({"kind":"Service","apiVersion":"v1","metadata":{"name":")" + name + R"(","namespace":"x","resourceVersion":")" +
           rv + R"("},"spec":{"type":"ClusterIP","clusterIP":")" + ip + R"(","clusterIPs":[")" + ip +
           R"("],"selector":{"app":")" + app + R"("},"ports":[{"name":"http","protocol":"TCP","port":)" +
           std::to_string(port) + R"(,"targetPort":"http"}]},"status":{"loadBalancer":{}}})";
}

bool contains(const std::vector<std::string>& v, const std::string& needle) {
    for (const auto& s : v)
        if (s.find(needle) != std::string::npos) return true;
    return false;
}

size_t count_of(const std::vector<std::string>& v, const std::string& needle) {
    size_t n = 0;
    for (const auto& s : v) n += s.find(needle) != std::string::npos;
    return n;
}

template <class F>
bool eventually(F f, std::chrono::milliseconds limit = 10s) {
    auto end = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < end) {
        if (f()) return true;
        std::this_thread::sleep_for(2ms);
    }
    return f();
}

// Records what the reflector hands over. Objects named "bad" are malformed.
struct Recorder : kube::ReflectorHandler {
    mutable std::mutex mu;
    std::vector<std::string> log;
    void add(std::string s) {
        std::lock_guard lk(mu);
        log.push_back(std::move(s));
    }
    std::vector<std::string> seen() const {
        std::lock_guard lk(mu);
        return log;
    }
    Status on_list_start() override {
        add("list-start");
        return {};
    }
    bool on_list_item(const rapidjson::Value& obj, size_t index) override {
        auto ref = kube::object_ref(obj);
        if (!ref || ref->name == "bad") return false;
        add("item " + ref->name + " #" + std::to_string(index));
        return true;
    }
    void on_listed(const std::string& rv) override { add("listed @" + rv); }
    Result<bool> on_event(const kube::WatchEvent& ev, const std::string& rv) override {
        static const char* names[] = {"ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"};
        std::string name = "-";
        if (auto ref = kube::object_ref(*ev.object)) name = ref->name;
        if (name == "bad") return false;
        add(std::string(names[ev.type]) + " " + name + " @" + rv);
        return true;
    }
    void report(const std::string& msg) override { add("report " + msg); }
};

kube::ReflectorOptions pods_options() {
    kube::ReflectorOptions o;
    o.what = "pods";
    o.path = "/api/v1/pods";
    o.page_size = 2;
    o.backoff_initial = 1ms;
    o.backoff_max = 5ms;
    return o;
}

struct Running {
    kube::Reflector& r;
    std::thread t;
    explicit Running(kube::Reflector& ref) : r(ref), t([this] { r.run(); }) {}
    ~Running() {
        r.stop();
        t.join();
    }
};

}  // namespace

TEST_CASE("reflector: pages, bookmark, 410 mid-stream, dropped connection, resume from the last version") {
    auto server = FakeServer::make();
    const std::string stream1 = event("ADDED", pod("d", "11")) + bookmark("15") + gone_event();
    server->script("/api/v1/pods",
                   {
                       {.query = "?limit=2", .chunks = {list_body("9", {pod("a", "5"), pod("b", "6")}, "c 1/x")}},
                       {.query = "?limit=2&continue=c%201%2Fx", .chunks = {list_body("10", {pod("c", "7"), pod("bad", "8")})}},
                       {.query = "resourceVersion=10&", .chunks = cut(stream1, 7)},
                       {.query = "?limit=2", .chunks = {list_body("20", {pod("a", "5")})}},
                       {.query = "resourceVersion=20&",
                        .chunks = {event("MODIFIED", pod("a", "21", "db"))},
                        .transport_error = "Connection reset by peer"},
                       {.query = "resourceVersion=21&",
                        .chunks = cut(event("DELETED", pod("a", "22")) + event("ADDED", pod("bad", "23")), 5),
                        .hold = true},
                   });
    auto api = server->client();
    Recorder rec;
    kube::Reflector refl(pods_options(), *api, rec);
    {
        Running run(refl);
        REQUIRE(eventually([&] { return contains(rec.seen(), "DELETED a @22") && refl.stats().malformed >= 2; }));
    }
    CHECK(server->mismatches().empty());
    auto log = rec.seen();
    INFO(doctest::toString(log.size()));
    // The first list: two pages, the malformed item skipped, consistent at the last page's version.
    CHECK(log[0] == "list-start");
    CHECK(log[1] == "item a #0");
    CHECK(log[2] == "item b #1");
    CHECK(log[3] == "item c #2");
    CHECK(log[4] == "listed @10");
    // The stream, cut into 7-byte reads: the event, the bookmark, then 410.
    CHECK(log[5] == "ADDED d @11");
    CHECK(log[6] == "BOOKMARK - @15");
    CHECK(log[7].find("report watch: too old resource version (410 Gone: too old resource version: 10 (15)); relisting") == 0);
    CHECK(log[8] == "list-start");
    CHECK(log[9] == "item a #0");
    CHECK(log[10] == "listed @20");
    CHECK(log[11] == "MODIFIED a @21");
    CHECK(log[12] == "report watch connection lost: Connection reset by peer (resuming from resourceVersion 21)");
    CHECK(log[13] == "report API reachable again");
    CHECK(log[14] == "DELETED a @22");
    auto st = refl.stats();
    CHECK(st.state == "stopped");
    CHECK(st.lists == 2);
    CHECK(st.relists == 1);
    CHECK(st.expired == 1);
    CHECK(st.reconnects == 1);
    CHECK(st.added == 1);
    CHECK(st.modified == 1);
    CHECK(st.deleted == 1);
    CHECK(st.bookmarks == 1);
    CHECK(st.malformed == 2);  // one listed, one watched
    CHECK(st.watch_rv == "23");
}

TEST_CASE("reflector: an error is reported once, the list is retried, recovery is reported") {
    auto server = FakeServer::make();
    const std::string forbidden =
        R"({"kind":"Status","apiVersion":"v1","status":"Failure","message":"pods is forbidden: User \"x\" cannot list resource \"pods\"","reason":"Forbidden","code":403})";
    server->script("/api/v1/pods", {
                                       {.query = "?limit=2", .status = 403, .chunks = {forbidden}},
                                       {.query = "?limit=2", .status = 403, .chunks = {forbidden}},
                                       {.query = "?limit=2", .status = 0, .transport_error = "Connection refused"},
                                       {.query = "?limit=2", .chunks = {list_body("3", {})}},
                                       {.query = "watch=true", .status = 410, .chunks = {R"({"kind":"Status","code":410,"reason":"Expired","message":"too old"})"}},
                                       {.query = "?limit=2", .chunks = {list_body("4", {})}},
                                       {.query = "resourceVersion=4&", .status = 500, .chunks = {"oops"}},
                                       {.query = "resourceVersion=4&", .chunks = {bookmark("5")}, .hold = true},
                                   });
    auto api = server->client();
    Recorder rec;
    kube::Reflector refl(pods_options(), *api, rec);
    {
        Running run(refl);
        REQUIRE(server->wait_for("resourceVersion=4&", 2));
        REQUIRE(eventually([&] { return refl.stats().state == "watching"; }));
    }
    CHECK(server->mismatches().empty());
    auto log = rec.seen();
    CHECK(count_of(log, "report forbidden: cannot list pods at the cluster scope (HTTP 403): pods is forbidden") == 1);
    CHECK(count_of(log, "report cannot list pods: cannot reach https://recorded.test/api/v1/pods?limit=2: Connection refused") == 1);
    CHECK(count_of(log, "report watch: 410 Gone: too old; relisting") == 1);
    CHECK(count_of(log, "report HTTP 500 on watch /api/v1/pods: oops") == 1);
    CHECK(count_of(log, "report API reachable again") == 2);
    CHECK(count_of(log, "listed @") == 2);
    auto st = refl.stats();
    CHECK(st.lists == 2);
    CHECK(st.expired == 1);
    CHECK(st.reconnects == 1);
    CHECK(st.last_error.empty());
}

TEST_CASE("reflector: relist() ends a watch and lists again after its delay; stop() ends a list in back-off") {
    auto server = FakeServer::make();
    server->script("/api/v1/pods", {
                                       {.query = "?limit=2", .chunks = {list_body("1", {pod("a", "1")})}},
                                       {.query = "resourceVersion=1&", .hold = true},
                                       {.query = "?limit=2", .chunks = {list_body("2", {})}},
                                       {.query = "resourceVersion=2&", .hold = true},
                                   });
    auto api = server->client();
    Recorder rec;
    kube::Reflector refl(pods_options(), *api, rec);
    Running run(refl);
    REQUIRE(server->wait_for("resourceVersion=1&"));
    auto asked = std::chrono::steady_clock::now();
    refl.relist(50ms);
    REQUIRE(server->wait_for("?limit=2", 2));
    CHECK(std::chrono::steady_clock::now() - asked >= 45ms);
    REQUIRE(server->wait_for("resourceVersion=2&"));
    CHECK(contains(rec.seen(), "listed @2"));
    CHECK(refl.stats().relists == 1);
}

TEST_CASE("kubernetes source: recorded streams (410 mid-stream, bookmark, dropped connection) reach the snapshot") {
    auto server = FakeServer::make();
    auto hold_after = [](const std::string& list) {
        return std::vector<Exchange>{{.query = "?limit=", .chunks = {list}}, {.query = "watch=true", .hold = true}};
    };
    server->script("/api/v1/namespaces",
                   hold_after(list_body("1", {R"({"kind":"Namespace","metadata":{"name":"x","labels":{"t":"1"}}})"})));
    server->script("/apis/networking.k8s.io/v1/networkpolicies", hold_after(list_body("1", {})));
    server->script("/api/v1/nodes", hold_after(list_body("1", {})));
    // Services: listed, then added, modified (a malformed one skipped in between) and deleted by watch events.
    server->script("/api/v1/services",
                   {
                       {.query = "?limit=", .chunks = {list_body("30", {service("web", "29", "10.96.0.5", "web")})}},
                       {.query = "resourceVersion=30&",
                        .chunks = cut(event("ADDED", service("db", "31", "10.96.0.6", "db")) +
                                          event("MODIFIED", service("web", "32", "10.96.0.5", "web", 70000)) +
                                          event("MODIFIED", service("web", "33", "10.96.0.5", "web2", 8080)) +
                                          event("ADDED", service("tmp", "34", "10.96.0.7", "tmp")) +
                                          event("DELETED", service("tmp", "35", "10.96.0.7", "tmp")),
                                      17),
                        .hold = true},
                   });
    server->script("/api/v1/pods",
                   {
                       {.query = "?limit=", .chunks = {list_body("10", {pod("a", "5"), pod("b", "6")})}},
                       {.query = "resourceVersion=10&", .chunks = cut(event("ADDED", pod("c", "11")) + bookmark("12") + gone_event(), 13)},
                       {.query = "?limit=", .chunks = {list_body("20", {pod("a", "5"), pod("c", "11"), pod("e", "19")})}},
                       {.query = "resourceVersion=20&",
                        .chunks = {event("MODIFIED", pod("a", "21", "db"))},
                        .transport_error = "Connection reset by peer"},
                       {.query = "resourceVersion=21&", .chunks = {event("DELETED", pod("c", "22"))}, .hold = true},
                   });
    source::KubernetesOptions opts;
    opts.backoff_initial = 1ms;
    opts.backoff_max = 5ms;
    std::vector<std::string> reports;
    std::mutex rmu;
    // The loop outlives the source (the source's timers belong to it).
    boost::asio::io_context io;
    auto work = boost::asio::make_work_guard(io);  // the reflectors' threads post to it
    auto src = source::KubernetesSource::with_api(
        opts, [server] { return server->client(); },
        [&](const std::string& m) {
            std::lock_guard lk(rmu);
            reports.push_back(m);
        });
    int changes = 0;
    REQUIRE(src->start(io, [&] { ++changes; }).ok());
    auto done = [&] {
        const auto& pods = src->snapshot().pods;
        auto a = pods.find({"x", "a"});
        const auto& svcs = src->snapshot().services;
        auto web = svcs.find({"x", "web"});
        return src->ready() && src->applied_version(source::k8s::Resource::Pods) == "22" && pods.size() == 2 &&
               a != pods.end() && a->second.labels.at("app") == "db" && pods.count({"x", "e"}) == 1 &&
               src->applied_version(source::k8s::Resource::Services) == "35" && svcs.size() == 2 &&
               web != svcs.end() && web->second.ports.at(0).port == 8080 && svcs.count({"x", "db"}) == 1;
    };
    auto end = std::chrono::steady_clock::now() + 10s;
    while (!done() && std::chrono::steady_clock::now() < end) io.run_for(5ms);
    CHECK(done());
    CHECK(changes >= 1);
    rapidjson::Document doc;
    doc.SetObject();
    rapidjson::Value st;
    src->status(st, doc.GetAllocator());
    const auto& p = st["resources"]["pods"];
    CHECK(p["expired"].GetUint64() == 1);
    CHECK(p["relists"].GetUint64() == 1);
    CHECK(p["reconnects"].GetUint64() == 1);
    CHECK(p["events"]["bookmarks"].GetUint64() == 1);
    CHECK(std::string(st["connection"].GetString()) == "connected");
    const auto& s = st["resources"]["services"];
    CHECK(s["objects"].GetUint64() == 2);
    CHECK(s["events"]["added"].GetUint64() == 2);
    CHECK(s["events"]["deleted"].GetUint64() == 1);
    const cache::Service& web = src->snapshot().services.at({"x", "web"});
    CHECK(web.cluster_ips == std::vector<std::string>{"10.96.0.5"});
    CHECK(*web.selector == cache::Labels{{"app", "web2"}});
    CHECK(web.ports.at(0).target_port == "http");
    // The source's delta names the Services that changed.
    cache::Delta delta = src->take_delta();
    CHECK(delta.services.count({"x", "web"}) == 1);
    src->stop();
    CHECK(server->mismatches().empty());
    std::lock_guard lk(rmu);
    CHECK(contains(reports, "services: skipping malformed object x/web in a watch event"));
    CHECK(contains(reports, "pods: watch: too old resource version (410 Gone"));
    CHECK(contains(reports, "pods: watch connection lost: Connection reset by peer (resuming from resourceVersion 21)"));
}

namespace {

std::string csr_object(const std::string& name, const std::string& uid, const std::string& rv, const std::string& user,
                       const std::string& request_pem, const std::string& signer = "signet.dev/node",
                       const std::string& status = "{}") {
    return R"({"metadata":{"name":")" + name + R"(","uid":")" + uid + R"(","resourceVersion":")" + rv +
           R"("},"spec":{"request":")" + identity::csr::base64_encode(request_pem) + R"(","signerName":")" + signer +
           R"(","username":")" + user +
           R"(","groups":["system:nodes","system:authenticated"],"usages":["digital signature","key agreement","client auth","server auth"]},"status":)" +
           status + "}";
}

std::string read_file(const std::filesystem::path& p) {
    std::ifstream in(p);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

}  // namespace

TEST_CASE("csr signer: recorded streams (410 mid-stream, dropped connection) drive its decisions") {
    // A real authority, served as the CA Secret.
    char tmpl[] = "/tmp/signet-reflector-ca-XXXXXX";
    std::filesystem::path dir = ::mkdtemp(tmpl);
    struct Cleanup {
        std::filesystem::path d;
        ~Cleanup() { std::filesystem::remove_all(d); }
    } cleanup{dir};
    auto ca = identity::Authority::create({});
    REQUIRE(ca.ok());
    REQUIRE(ca->save((dir / "ca").string()).ok());
    const std::string secret = R"({"kind":"Secret","data":{"ca.key":")" +
                               identity::csr::base64_encode(read_file(dir / "ca" / "ca.key")) + R"(","ca.crt":")" +
                               identity::csr::base64_encode(read_file(dir / "ca" / "ca.crt")) + R"("}})";
    auto key1 = identity::generate_p256_key();
    auto key4 = identity::generate_p256_key();
    REQUIRE((key1.ok() && key4.ok()));
    auto req1 = identity::make_csr(key1->get(), "cluster.local", "n1");
    auto req4 = identity::make_csr(key4->get(), "cluster.local", "n2");
    REQUIRE((req1.ok() && req4.ok()));

    const std::string kCsr = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
    auto echo = [](const std::string& body) { return body; };
    auto server = FakeServer::make();
    server->script("/api/v1/namespaces/signet-system/secrets/signet-ca",
                   {{.chunks = {secret}}, {.chunks = {secret}}});
    // The trust bundle: missing at the first look, so the signer creates it
    // (once: at the relist it knows it is published).
    server->script("/api/v1/namespaces/signet-system/configmaps/signet-trust-bundle",
                   {{.status = 404, .chunks = {R"({"kind":"Status","code":404,"reason":"NotFound"})"}}});
    server->script("/api/v1/namespaces/signet-system/configmaps", {{.method = "POST", .status = 201, .reply = echo}});
    server->script("/api/v1/nodes/n1", {{.chunks = {R"({"kind":"Node","metadata":{"name":"n1"}})"}}});
    server->script("/api/v1/nodes/n2", {{.status = 404, .chunks = {R"({"kind":"Status","code":404,"reason":"NotFound"})"}}});
    server->script(kCsr + "/csr1", {{.method = "PUT", .query = "/approval", .reply = echo},
                                    {.method = "PUT", .query = "/status", .reply = echo}});
    server->script(kCsr + "/csr3", {{.method = "PUT", .query = "/approval", .reply = echo}});
    server->script(kCsr + "/csr4", {{.method = "PUT", .query = "/approval", .reply = echo}});
    const std::string issued =
        R"({"conditions":[{"type":"Approved","status":"True"}],"certificate":"LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t"})";
    const std::string denied = R"({"conditions":[{"type":"Denied","status":"True"}]})";
    server->script(
        kCsr,
        {
            {.query = "?limit=500",
             .chunks = {list_body("30", {csr_object("csr1", "u1", "28", "system:node:n1", *req1),
                                         csr_object("other", "u2", "29", "system:node:n1", *req1, "example.com/other")})}},
            {.query = "resourceVersion=30&",
             .chunks = cut(event("ADDED", csr_object("csr3", "u3", "31", "system:serviceaccount:x:y", *req1)) + gone_event(), 64)},
            {.query = "?limit=500",
             .chunks = {list_body("40", {csr_object("csr1", "u1", "33", "system:node:n1", *req1, "signet.dev/node", issued),
                                         csr_object("csr3", "u3", "34", "system:serviceaccount:x:y", *req1, "signet.dev/node", denied)})}},
            {.query = "resourceVersion=40&", .chunks = {bookmark("41", "CertificateSigningRequest")},
             .transport_error = "Connection reset by peer"},
            {.query = "resourceVersion=41&", .chunks = {event("ADDED", csr_object("csr4", "u4", "42", "system:node:n2", *req4))},
             .hold = true},
        });
    signer::CsrSignerOptions opts;
    opts.backoff_initial = 1ms;
    opts.backoff_max = 5ms;
    auto signer = signer::CsrSigner::with_api(opts, server->client(), server->client());
    std::thread t([&] { signer->run(); });
    bool finished = server->wait_for("PUT " + kCsr + "/csr4/approval");
    signer->stop();
    t.join();
    REQUIRE(finished);
    CHECK(server->mismatches().empty());
    auto st = signer->stats();
    CHECK(st.approved == 1);  // csr1
    CHECK(st.denied == 2);    // csr3 (not a node), csr4 (no Node n2)
    auto reqs = server->requests();
    CHECK(count_of(reqs, "GET /api/v1/namespaces/signet-system/secrets/signet-ca") == 2);  // the CA re-read at the relist
    CHECK(count_of(reqs, "PUT " + kCsr + "/csr1/status") == 1);
    CHECK(count_of(reqs, "POST /api/v1/namespaces/signet-system/configmaps") == 1);  // the bundle, published once
    CHECK(contains(reqs, R"("name":"signet-trust-bundle","namespace":"signet-system")"));
    CHECK(contains(reqs, R"("data":{"trust-bundle.pem":"-----BEGIN CERTIFICATE-----)"));
    CHECK(contains(reqs, "\"certificate\":\"LS0t"));  // the issued certificate, base64 PEM
    CHECK(contains(reqs, "RequestorNotANode"));
    CHECK(contains(reqs, "NoSuchNode"));
    CHECK(count_of(reqs, "PUT " + kCsr + "/other") == 0);  // another signer's request is never touched
}
