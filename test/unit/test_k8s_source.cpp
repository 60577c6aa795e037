// Unit tests: the Kubernetes source's construction and its behaviour with no
// reachable API server (the protocol itself is tested against
// test/apiserver by test/integration/test_k8s_source.py).
#include <doctest/doctest.h>

#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <filesystem>
#include <fstream>

#include "../../controller/source/kubernetes/kubernetes_source.h"
#include "signet/json.h"

using namespace signet;
using namespace signet::source;

TEST_CASE("kubernetes source: configuration errors come from the factory") {
    KubernetesOptions o;
    o.kubeconfig = "/nonexistent/kubeconfig";
    auto s = make_kubernetes_source(o, nullptr);
    REQUIRE_FALSE(s.ok());
    CHECK(s.error().message.find("/nonexistent/kubeconfig") != std::string::npos);
    KubernetesOptions ic;
    ic.in_cluster.host = "10.96.0.1";
    ic.in_cluster.port = "443";
    ic.in_cluster.token_file = "/nonexistent/token";
    auto t = make_kubernetes_source(ic, nullptr);
    REQUIRE_FALSE(t.ok());
    CHECK(t.error().message.find("/nonexistent/token") != std::string::npos);
}

TEST_CASE("kubernetes source: unreachable API is reported, refresh fails, stop is prompt") {
    char tmpl[] = "/tmp/signet-k8s-src-XXXXXX";
    std::filesystem::path dir = ::mkdtemp(tmpl);
    // A port nobody listens on: bind, read the port, close.
    std::ofstream(dir / "kubeconfig") << "current-context: c\n"
                                         "contexts: [{name: c, context: {cluster: k}}]\n"
                                         "clusters: [{name: k, cluster: {server: 'http://127.0.0.1:1'}}]\n";
    // The loop outlives the source (its timers belong to the loop).
    boost::asio::io_context io;
    KubernetesOptions o;
    o.kubeconfig = dir / "kubeconfig";
    o.backoff_initial = std::chrono::milliseconds(20);
    o.backoff_max = std::chrono::milliseconds(50);
    std::vector<std::string> reports;
    std::mutex mu;
    auto s = make_kubernetes_source(o, [&](const std::string& m) {
        std::lock_guard lk(mu);
        reports.push_back(m);
    });
    REQUIRE(s.ok());
    auto& src = **s;
    int changes = 0;
    REQUIRE(src.start(io, [&] { ++changes; }).ok());
    bool refreshed = false;
    Status result;
    src.refresh([&](Status st) {
        refreshed = true;
        result = st;
    });
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!refreshed && std::chrono::steady_clock::now() < until) io.run_for(std::chrono::milliseconds(50));
    REQUIRE(refreshed);
    CHECK_FALSE(result.ok());
    CHECK_FALSE(src.ready());
    CHECK(changes == 0);
    rapidjson::Document d;
    rapidjson::Value st;
    src.status(st, d.GetAllocator());
    CHECK(std::string(st["kind"].GetString()) == "kubernetes");
    CHECK(std::string(st["server"].GetString()) == "http://127.0.0.1:1");
    {
        std::lock_guard lk(mu);
        CHECK_FALSE(reports.empty());
    }
    auto t0 = std::chrono::steady_clock::now();
    src.stop();
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(2));
    std::filesystem::remove_all(dir);
}
