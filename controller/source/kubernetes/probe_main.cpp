// signet-k8s-probe: runs the Kubernetes source alone and speaks JSON lines.
// A debugging tool ("what does signetd see from this API server?") and the
// driver of test/integration/test_k8s_source.py.
//
//   signet-k8s-probe [--kubeconfig FILE [--context NAME]] [--node-name NAME]
//                    [--in-cluster-token FILE --in-cluster-ca FILE --in-cluster-host H --in-cluster-port P]
//                    [--page-size N] [--watch-timeout S] [--backoff-initial-ms N] [--backoff-max-ms N]
//                    [--coalesce-ms N] [--refresh-grace-ms N] [--refresh-timeout-ms N]
//
// stdin, one command a line: status | snapshot | refresh | rss | quit.
// stdout, one JSON object a line: {"reply": CMD, ...}, {"event": "change", ...}, {"report": MSG}.
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <mutex>
#include <string>
#include <thread>

#include "kubernetes_source.h"
#include "signet/json.h"

using namespace signet;

namespace {

std::mutex out_mu;

void print(const rapidjson::Value& v) {
    std::lock_guard lk(out_mu);
    std::fputs((json::to_string(v) + "\n").c_str(), stdout);
    std::fflush(stdout);
}

uint64_t proc_status_kib(const char* field) {
    std::ifstream in("/proc/self/status");
    std::string line;
    size_t n = std::strlen(field);
    while (std::getline(in, line))
        if (line.compare(0, n, field) == 0 && line.size() > n && line[n] == ':') return std::stoull(line.substr(n + 1));
    return 0;
}

void add_labels(rapidjson::Value& o, const cache::Labels& labels, rapidjson::Document::AllocatorType& a,
                const char* field = "labels") {
    rapidjson::Value l(rapidjson::kObjectType);
    for (const auto& [k, v] : labels) l.AddMember(json::str(k, a), json::str(v, a), a);
    o.AddMember(rapidjson::StringRef(field), l, a);
}

rapidjson::Value string_list(const std::vector<std::string>& items, rapidjson::Document::AllocatorType& a) {
    rapidjson::Value out(rapidjson::kArrayType);
    for (const auto& s : items) out.PushBack(json::str(s, a), a);
    return out;
}

// A Service as the snapshot holds it (selector null when it has none).
rapidjson::Value service_json(const cache::Service& s, rapidjson::Document::AllocatorType& a) {
    rapidjson::Value o(rapidjson::kObjectType);
    o.AddMember("type", json::str(s.type, a), a);
    o.AddMember("clusterIPs", string_list(s.cluster_ips, a), a);
    o.AddMember("externalIPs", string_list(s.external_ips, a), a);
    o.AddMember("loadBalancerIPs", string_list(s.load_balancer_ips, a), a);
    rapidjson::Value ports(rapidjson::kArrayType);
    for (const auto& p : s.ports) {
        rapidjson::Value po(rapidjson::kObjectType);
        po.AddMember("name", json::str(p.name, a), a);
        po.AddMember("protocol", json::str(std::string(cache::to_string(p.protocol)), a), a);
        po.AddMember("port", static_cast<unsigned>(p.port), a);
        po.AddMember("targetPort", json::str(p.target_port, a), a);
        po.AddMember("nodePort", static_cast<unsigned>(p.node_port), a);
        ports.PushBack(po, a);
    }
    o.AddMember("ports", ports, a);
    if (s.selector) add_labels(o, *s.selector, a, "selector");
    else o.AddMember("selector", rapidjson::Value(rapidjson::kNullType), a);
    o.AddMember("internalTrafficLocal", s.internal_traffic_local, a);
    return o;
}

}  // namespace

int main(int argc, char** argv) {
    source::KubernetesOptions opts;
    auto need = [&](int& i) -> std::string {
        if (i + 1 >= argc) {
            std::fprintf(stderr, "%s needs a value\n", argv[i]);
            std::exit(2);
        }
        return argv[++i];
    };
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--kubeconfig") opts.kubeconfig = need(i);
        else if (a == "--context") opts.context = need(i);
        else if (a == "--node-name") opts.node_name = need(i);
        else if (a == "--in-cluster-token") opts.in_cluster.token_file = need(i);
        else if (a == "--in-cluster-ca") opts.in_cluster.ca_file = need(i);
        else if (a == "--in-cluster-host") opts.in_cluster.host = need(i);
        else if (a == "--in-cluster-port") opts.in_cluster.port = need(i);
        else if (a == "--page-size") opts.page_size = std::stoi(need(i));
        else if (a == "--watch-timeout") opts.watch_timeout = std::chrono::seconds(std::stoi(need(i)));
        else if (a == "--backoff-initial-ms") opts.backoff_initial = std::chrono::milliseconds(std::stoi(need(i)));
        else if (a == "--backoff-max-ms") opts.backoff_max = std::chrono::milliseconds(std::stoi(need(i)));
        else if (a == "--coalesce-ms") opts.coalesce = std::chrono::milliseconds(std::stoi(need(i)));
        else if (a == "--refresh-grace-ms") opts.refresh_grace = std::chrono::milliseconds(std::stoi(need(i)));
        else if (a == "--refresh-timeout-ms") opts.refresh_timeout = std::chrono::milliseconds(std::stoi(need(i)));
        else {
            std::fprintf(stderr, "unknown flag %s\n", a.c_str());
            return 2;
        }
    }
    auto report = [](const std::string& msg) {
        rapidjson::Document d(rapidjson::kObjectType);
        d.AddMember("report", json::str(msg, d.GetAllocator()), d.GetAllocator());
        print(d);
    };
    auto created = source::KubernetesSource::create(opts, report);
    if (!created) {
        std::fprintf(stderr, "signet-k8s-probe: %s\n", created.error().message.c_str());
        return 1;
    }
    auto& src = **created;
    boost::asio::io_context io;
    auto guard = boost::asio::make_work_guard(io);
    uint64_t changes = 0;
    auto st = src.start(io, [&] {
        ++changes;
        rapidjson::Document d(rapidjson::kObjectType);
        auto& a = d.GetAllocator();
        d.AddMember("event", "change", a);
        d.AddMember("changes", changes, a);
        d.AddMember("version", json::str(src.origin_version(), a), a);
        d.AddMember("namespaces", static_cast<uint64_t>(src.snapshot().namespaces.size()), a);
        d.AddMember("pods", static_cast<uint64_t>(src.snapshot().pods.size()), a);
        d.AddMember("policies", static_cast<uint64_t>(src.snapshot().policies.size()), a);
        d.AddMember("services", static_cast<uint64_t>(src.snapshot().services.size()), a);
        d.AddMember("nodes", static_cast<uint64_t>(src.nodes().size()), a);
        print(d);
    });
    if (!st) {
        std::fprintf(stderr, "signet-k8s-probe: %s\n", st.error().message.c_str());
        return 1;
    }
    std::thread input([&] {
        std::string line;
        while (std::getline(std::cin, line)) {
            boost::asio::post(io, [&, line] {
                rapidjson::Document d(rapidjson::kObjectType);
                auto& a = d.GetAllocator();
                d.AddMember("reply", json::str(line, a), a);
                if (line == "status") {
                    rapidjson::Value s;
                    src.status(s, a);
                    d.AddMember("status", s, a);
                    d.AddMember("changes", changes, a);
                } else if (line == "snapshot") {
                    const auto& snap = src.snapshot();
                    d.AddMember("ready", src.ready(), a);
                    d.AddMember("version", json::str(src.origin_version(), a), a);
                    rapidjson::Value nss(rapidjson::kObjectType), pods(rapidjson::kObjectType),
                        pols(rapidjson::kArrayType), nodes(rapidjson::kObjectType), svcs(rapidjson::kObjectType);
                    for (const auto& [name, ns] : snap.namespaces) {
                        rapidjson::Value o(rapidjson::kObjectType);
                        add_labels(o, ns.labels, a);
                        nss.AddMember(json::str(name, a), o, a);
                    }
                    for (const auto& [key, p] : snap.pods) {
                        rapidjson::Value o(rapidjson::kObjectType);
                        add_labels(o, p.labels, a);
                        rapidjson::Value ips(rapidjson::kArrayType);
                        for (const auto& ip : p.pod_ips) ips.PushBack(json::str(ip, a), a);
                        o.AddMember("ips", ips, a);
                        o.AddMember("node", json::str(p.node_name, a), a);
                        o.AddMember("phase", json::str(p.phase, a), a);
                        o.AddMember("ports", static_cast<uint64_t>(p.container_ports.size()), a);
                        pods.AddMember(json::str(key.namespace_ + "/" + key.name, a), o, a);
                    }
                    for (const auto& [key, p] : snap.policies) pols.PushBack(json::str(key.namespace_ + "/" + key.name, a), a);
                    for (const auto& [key, s] : snap.services)
                        svcs.AddMember(json::str(key.namespace_ + "/" + key.name, a), service_json(s, a), a);
                    for (const auto& [name, n] : src.nodes()) {
                        rapidjson::Value ips(rapidjson::kArrayType);
                        for (const auto& ip : n.internal_ips) ips.PushBack(json::str(ip, a), a);
                        nodes.AddMember(json::str(name, a), ips, a);
                    }
                    d.AddMember("namespaces", nss, a);
                    d.AddMember("pods", pods, a);
                    d.AddMember("policies", pols, a);
                    d.AddMember("nodes", nodes, a);
                    d.AddMember("services", svcs, a);
                } else if (line == "refresh") {
                    auto t0 = std::chrono::steady_clock::now();
                    src.refresh([&, t0](Status r) {
                        rapidjson::Document rd(rapidjson::kObjectType);
                        auto& ra = rd.GetAllocator();
                        rd.AddMember("reply", "refresh", ra);
                        rd.AddMember("ok", r.ok(), ra);
                        rd.AddMember("error", json::str(r ? "" : r.error().message, ra), ra);
                        rd.AddMember("version", json::str(src.origin_version(), ra), ra);
                        rd.AddMember("seconds",
                                     std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), ra);
                        print(rd);
                    });
                    return;
                } else if (line == "rss") {
                    d.AddMember("rssKiB", proc_status_kib("VmRSS"), a);
                    d.AddMember("hwmKiB", proc_status_kib("VmHWM"), a);
                    d.AddMember("pods", static_cast<uint64_t>(src.snapshot().pods.size()), a);
                } else if (line == "quit") {
                    src.stop();
                    guard.reset();
                    io.stop();
                    d.AddMember("ok", true, a);
                } else {
                    d.AddMember("error", "unknown command", a);
                }
                print(d);
            });
            if (line == "quit") return;
        }
        boost::asio::post(io, [&] {
            src.stop();
            guard.reset();
            io.stop();
        });
    });
    io.run();
    src.stop();
    input.join();
    return 0;
}
