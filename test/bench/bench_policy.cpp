// Benchmarks the policy compiler on a synthetic cluster: 50 namespaces,
// 5,000 pods, 1,000 NetworkPolicies (pod/namespace selectors, both, ipBlocks
// with except, numeric, range and named ports), 100 local pods.
//
// bench_policy [--namespaces N] [--pods N] [--policies N] [--local N] [--iterations N]
//
// Prints: index build time, full compile of every local pod, the incremental
// cost of one pod appearing (and disappearing) elsewhere including the
// recompilation of the local pods it affects, and memory.
#include <algorithm>
#include <time.h>

#include <chrono>
#include <map>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "../../controller/cache/objects.h"
#include "../../controller/policy/compiler.h"

using namespace signet;
using namespace signet::policy;
using Clock = std::chrono::steady_clock;

namespace {

double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

// This thread's CPU time: per-operation figures are not inflated by preemption on a busy machine.
double cpu_us() {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) * 1e6 + static_cast<double>(ts.tv_nsec) / 1e3;
}

long rss_kib() {
    std::ifstream f("/proc/self/status");
    std::string line;
    while (std::getline(f, line))
        if (line.rfind("VmRSS:", 0) == 0) return std::atol(line.c_str() + 6);
    return -1;
}

cache::LabelSelector sel(cache::Labels l) { return cache::LabelSelector{std::move(l), {}}; }

struct Params {
    int namespaces = 50, pods = 5000, policies = 1000, local = 100, iterations = 2000;
};

std::string ns_name(int i) { return "ns" + std::to_string(i); }

cache::Pod make_pod(int ns, int i, std::mt19937& rng) {
    cache::Pod p;
    p.namespace_ = ns_name(ns);
    p.name = "pod" + std::to_string(i);
    p.uid = p.namespace_ + "-" + p.name;
    p.node_name = "node" + std::to_string(i % 50);
    p.phase = "Running";
    p.labels = {{"app", "app" + std::to_string(rng() % 10)}, {"tier", std::vector<std::string>{"fe", "be", "db"}[rng() % 3]}};
    if (rng() % 4 == 0) p.labels["canary"] = "true";
    p.container_ports = {{"http", rng() % 5 == 0 ? 80 : 8080, "TCP"}, {"metrics", 9090, "TCP"}};
    if (rng() % 10 == 0) p.container_ports.push_back({"dns", 53, "UDP"});
    p.pod_ips = {"10." + std::to_string(i / 65536 % 256) + "." + std::to_string(i / 256 % 256) + "." + std::to_string(i % 256)};
    if (i % 5 == 0) p.pod_ips.push_back("fd00::" + std::to_string(i));
    return p;
}

cache::NetworkPolicy make_policy(int ns, int i, const Params& prm, std::mt19937& rng) {
    using cache::PolicyType;
    cache::NetworkPolicy p;
    p.namespace_ = ns_name(ns);
    p.name = "np" + std::to_string(i);
    auto app = [&] { return "app" + std::to_string(rng() % 10); };
    auto tcp = [](int32_t port) { return cache::PolicyPort{cache::Protocol::TCP, port, std::nullopt}; };
    auto named = [](const char* n) { return cache::PolicyPort{cache::Protocol::TCP, std::string(n), std::nullopt}; };
    auto ipb = [](const char* c, const char* e) {
        cache::IpBlock b{*cache::parse_cidr(c), {}};
        if (e) b.except.push_back(*cache::parse_cidr(e));
        return cache::Peer{std::nullopt, std::nullopt, b};
    };
    switch (i % 8) {
        case 0:  // default deny ingress
            p.policy_types = {PolicyType::Ingress};
            break;
        case 1:  // same-namespace app to app on a number
            p.pod_selector = sel({{"app", app()}});
            p.policy_types = {PolicyType::Ingress};
            p.ingress.push_back({std::vector<cache::Peer>{{sel({{"app", app()}}), std::nullopt, std::nullopt}},
                                 std::vector<cache::PolicyPort>{tcp(8080)}});
            break;
        case 2:  // frontends of some team's namespaces, named port
            p.pod_selector = sel({{"tier", "be"}});
            p.policy_types = {PolicyType::Ingress};
            p.ingress.push_back(
                {std::vector<cache::Peer>{{sel({{"tier", "fe"}}), sel({{"team", "t" + std::to_string(rng() % 5)}}), std::nullopt}},
                 std::vector<cache::PolicyPort>{named("http")}});
            break;
        case 3:  // egress to a namespace by name, named port (resolved per destination)
            p.pod_selector = sel({{"app", app()}});
            p.policy_types = {PolicyType::Egress};
            p.egress.push_back(
                {std::vector<cache::Peer>{{sel({{"tier", "db"}}),
                                           sel({{std::string(cache::kNamespaceNameLabel), ns_name(static_cast<int>(rng() % static_cast<unsigned>(prm.namespaces)))}}),
                                           std::nullopt}},
                 std::vector<cache::PolicyPort>{named("http"), tcp(5432)}});
            break;
        case 4:  // outside world with except
            p.pod_selector = sel({{"tier", "fe"}});
            p.policy_types = {PolicyType::Ingress};
            p.ingress.push_back({std::vector<cache::Peer>{ipb("0.0.0.0/0", "10.0.0.0/8"), ipb("::/0", "fd00::/8")},
                                 std::vector<cache::PolicyPort>{tcp(443), cache::PolicyPort{cache::Protocol::TCP, 30000, 32767}}});
            break;
        case 5:  // monitoring namespace scrapes metrics
            p.policy_types = {PolicyType::Ingress};
            p.ingress.push_back({std::vector<cache::Peer>{{std::nullopt, sel({{"env", "monitoring"}}), std::nullopt}},
                                 std::vector<cache::PolicyPort>{named("metrics")}});
            break;
        case 6:  // egress DNS anywhere + same namespace
            p.pod_selector = sel({{"app", app()}});
            p.policy_types = {PolicyType::Egress};
            p.egress.push_back({std::nullopt, std::vector<cache::PolicyPort>{{cache::Protocol::UDP, 53, std::nullopt}}});
            p.egress.push_back({std::vector<cache::Peer>{{cache::LabelSelector{}, std::nullopt, std::nullopt}}, std::nullopt});
            break;
        default: {  // expressions: canaries from prod namespaces
            cache::LabelSelector s;
            s.match_expressions.push_back({"canary", cache::Requirement::Exists, {}});
            p.pod_selector = sel({{"app", app()}});
            p.policy_types = {PolicyType::Ingress};
            cache::LabelSelector nsel;
            nsel.match_expressions.push_back({"env", cache::Requirement::In, {"prod", "staging"}});
            p.ingress.push_back({std::vector<cache::Peer>{{s, nsel, std::nullopt}}, std::nullopt});
        }
    }
    return p;
}

}  // namespace

int main(int argc, char** argv) {
    Params prm;
    for (int i = 1; i + 1 < argc; i += 2) {
        int v = std::atoi(argv[i + 1]);
        if (!std::strcmp(argv[i], "--namespaces")) prm.namespaces = v;
        else if (!std::strcmp(argv[i], "--pods")) prm.pods = v;
        else if (!std::strcmp(argv[i], "--policies")) prm.policies = v;
        else if (!std::strcmp(argv[i], "--local")) prm.local = v;
        else if (!std::strcmp(argv[i], "--iterations")) prm.iterations = v;
        else {
            std::fprintf(stderr, "usage: bench_policy [--namespaces N] [--pods N] [--policies N] [--local N] [--iterations N]\n");
            return 2;
        }
    }
    std::mt19937 rng(42);
    cache::Snapshot snap;
    const char* envs[] = {"prod", "staging", "dev", "monitoring"};
    for (int n = 0; n < prm.namespaces; ++n) {
        cache::Namespace ns{ns_name(n), {{std::string(cache::kNamespaceNameLabel), ns_name(n)},
                                        {"team", "t" + std::to_string(n % 5)},
                                        {"env", envs[n % 10 == 9 ? 3 : n % 3]}}};
        snap.put(ns);
    }
    for (int i = 0; i < prm.pods; ++i) snap.put(make_pod(i % prm.namespaces, i, rng));
    for (int i = 0; i < prm.policies; ++i) snap.put(make_policy(i % prm.namespaces, i, prm, rng));
    std::vector<LocalPod> locals;
    for (int i = 0; i < prm.local; ++i) {
        int idx = (i * (prm.pods / std::max(prm.local, 1))) % prm.pods;
        locals.push_back({ns_name(idx % prm.namespaces), "pod" + std::to_string(idx), {}});
    }
    long rss0 = rss_kib();

    auto t0 = Clock::now();
    Compiler c;
    c.reset(snap, locals, {"192.168.0.1", "fd99::1"});
    double build_ms = ms_since(t0);

    t0 = Clock::now();
    size_t rules = 0, elements = 0, sets = 0;
    for (const LocalPod& lp : locals) {
        auto rs = c.compile({lp.namespace_, lp.name});
        if (!rs) return 1;
        rules += rs->ingress.rules.size() + rs->egress.rules.size();
        sets += rs->sets.size();
        for (const auto& [n, s] : rs->sets) elements += s.elements.size();
    }
    double compile_ms = ms_since(t0);

    // Incremental: a pod appears elsewhere (then goes away again); compute the
    // affected local pods and their new rule sets.
    std::vector<double> add_us, del_us, index_us;
    size_t affected_total = 0, structure_changes = 0;
    for (int it = 0; it < prm.iterations; ++it) {
        cache::Pod p = make_pod(static_cast<int>(rng() % static_cast<unsigned>(prm.namespaces)), prm.pods + it, rng);
        p.name = "new" + std::to_string(it);
        p.pod_ips = {"10.250." + std::to_string(it / 256 % 256) + "." + std::to_string(it % 256)};
        double t = cpu_us();
        Affected a = c.put_pod(p);
        index_us.push_back(cpu_us() - t);
        for (const ObjectKey& k : a.pods) {
            auto rs = c.compile(k);
            if (!rs) return 1;
        }
        add_us.push_back(cpu_us() - t);
        affected_total += a.pods.size();
        t = cpu_us();
        Affected d = c.remove_pod({p.namespace_, p.name});
        for (const ObjectKey& k : d.pods) {
            auto rs = c.compile(k);
            if (!rs) return 1;
        }
        del_us.push_back(cpu_us() - t);
    }
    // Structure vs membership for a sample.
    for (int it = 0; it < 50; ++it) {
        cache::Pod p = make_pod(static_cast<int>(rng() % static_cast<unsigned>(prm.namespaces)), prm.pods + it, rng);
        p.name = "probe" + std::to_string(it);
        p.pod_ips = {"10.251.0." + std::to_string(it + 1)};
        std::map<ObjectKey, nft::PodRuleset> before;
        for (const LocalPod& lp : locals) before[{lp.namespace_, lp.name}] = *c.compile({lp.namespace_, lp.name});
        Affected a = c.put_pod(p);
        for (const ObjectKey& k : a.pods)
            if (!c.compile(k)->same_structure(before[k])) ++structure_changes;
        (void)c.remove_pod({p.namespace_, p.name});
    }
    auto pct = [](std::vector<double> v, double q) {
        std::sort(v.begin(), v.end());
        return v.empty() ? 0.0 : v[static_cast<size_t>(q * static_cast<double>(v.size() - 1))];
    };
    auto mean = [](const std::vector<double>& v) {
        double s = 0;
        for (double x : v) s += x;
        return v.empty() ? 0.0 : s / static_cast<double>(v.size());
    };
    long rss1 = rss_kib();

    std::printf("cluster: %d namespaces, %d pods, %d policies, %d local pods, %zu distinct peer selectors\n",
                prm.namespaces, prm.pods, prm.policies, prm.local, c.selector_count());
    std::printf("index build (reset):          %.2f ms\n", build_ms);
    std::printf("full compile, all local pods: %.2f ms (%zu rules, %zu sets, %zu set elements)\n", compile_ms, rules,
                sets, elements);
    std::printf("(per-operation figures below are this thread's CPU time)\n");
    std::printf("incremental pod add + recompile affected:    mean %.1f us, p50 %.1f us, p99 %.1f us, max %.1f us "
                "(avg %.2f local pods affected)\n",
                mean(add_us), pct(add_us, 0.5), pct(add_us, 0.99), pct(add_us, 1.0),
                static_cast<double>(affected_total) / std::max(prm.iterations, 1));
    std::printf("  of which index update (put_pod alone):      mean %.1f us, p50 %.1f us, p99 %.1f us, max %.1f us\n",
                mean(index_us), pct(index_us, 0.5), pct(index_us, 0.99), pct(index_us, 1.0));
    std::printf("incremental pod delete + recompile affected: mean %.1f us, p50 %.1f us, p99 %.1f us, max %.1f us\n",
                mean(del_us), pct(del_us, 0.5), pct(del_us, 0.99), pct(del_us, 1.0));
    std::printf("structure changes in 50 sampled pod adds: %zu (the rest are set-element updates)\n", structure_changes);
    std::printf("memory: indexes ~%.1f MiB (estimate), process RSS growth %.1f MiB (incl. the input snapshot)\n",
                static_cast<double>(c.memory_estimate()) / 1048576.0, static_cast<double>(rss1 - rss0) / 1024.0);
    return 0;
}
