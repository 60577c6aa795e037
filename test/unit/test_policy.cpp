// Unit tests: the policy compiler (controller/policy): address helpers,
// golden IR for NetworkPolicy semantics, IR evaluation, explain, and
// incremental updates against full rebuilds.
#include <doctest/doctest.h>

#include <rapidjson/document.h>

#include <algorithm>
#include <random>
#include <regex>
#include <string>
#include <vector>

#include "../../controller/cache/objects.h"
#include "../../controller/nft/ruleset.h"
#include "../../controller/policy/addr.h"
#include "../../controller/policy/compiler.h"

using namespace signet;
using namespace signet::policy;
using cache::Cidr;
using cache::IpBlock;
using cache::LabelSelector;
using cache::NetworkPolicy;
using cache::Peer;
using cache::PolicyPort;
using cache::PolicyType;
using cache::Protocol;
using cache::Requirement;
using nft::Family;

namespace {

Ip ip(const char* s) {
    auto r = parse_ip(s);
    REQUIRE(r.ok());
    return *r;
}

nft::Range rng(const char* a, const char* b) { return {ip(a).addr, ip(b).addr}; }

Cidr cidr(const char* s) {
    auto r = cache::parse_cidr(s);
    REQUIRE(r.ok());
    return *r;
}

std::string ranges_str(Family f, const std::vector<nft::Range>& v) {
    std::string out;
    for (const auto& r : v) out += (out.empty() ? "" : " ") + to_string(f, r);
    return out;
}

cache::Namespace ns(const std::string& name, cache::Labels labels = {}) {
    labels[std::string(cache::kNamespaceNameLabel)] = name;
    return cache::Namespace{name, labels};
}

cache::Pod pod(const std::string& n, const std::string& name, cache::Labels labels, std::vector<std::string> ips,
               std::vector<api::ContainerPort> ports = {}, bool host = false) {
    cache::Pod p;
    p.namespace_ = n;
    p.name = name;
    p.uid = n + "-" + name;
    p.node_name = "node1";
    p.labels = std::move(labels);
    p.pod_ips = std::move(ips);
    p.container_ports = std::move(ports);
    p.host_network = host;
    p.phase = "Running";
    return p;
}

LabelSelector sel(cache::Labels l) { return LabelSelector{std::move(l), {}}; }

Peer pod_peer(cache::Labels l) { return Peer{sel(std::move(l)), std::nullopt, std::nullopt}; }
Peer ns_peer(cache::Labels l) { return Peer{std::nullopt, sel(std::move(l)), std::nullopt}; }
Peer both_peer(cache::Labels nsl, cache::Labels pl) { return Peer{sel(std::move(pl)), sel(std::move(nsl)), std::nullopt}; }
Peer block_peer(const char* c, std::vector<const char*> except = {}) {
    IpBlock b{cidr(c), {}};
    for (auto* e : except) b.except.push_back(cidr(e));
    return Peer{std::nullopt, std::nullopt, b};
}

PolicyPort tcp(int32_t p, std::optional<int32_t> end = std::nullopt) { return PolicyPort{Protocol::TCP, p, end}; }
PolicyPort udp(int32_t p) { return PolicyPort{Protocol::UDP, p, std::nullopt}; }
PolicyPort named(const char* n, Protocol pr = Protocol::TCP) { return PolicyPort{pr, std::string(n), std::nullopt}; }

NetworkPolicy netpol(const std::string& n, const std::string& name, LabelSelector target,
                     std::vector<PolicyType> types) {
    NetworkPolicy p;
    p.namespace_ = n;
    p.name = name;
    p.pod_selector = std::move(target);
    p.policy_types = std::move(types);
    return p;
}

cache::IngressRule in_rule(std::optional<std::vector<Peer>> from, std::optional<std::vector<PolicyPort>> ports = {}) {
    return cache::IngressRule{std::move(from), std::move(ports)};
}
cache::EgressRule eg_rule(std::optional<std::vector<Peer>> to, std::optional<std::vector<PolicyPort>> ports = {}) {
    return cache::EgressRule{std::move(to), std::move(ports)};
}

// A readable rendering of a rule set with set contents inline (set names are hashes).
std::string dump(const nft::PodRuleset& rs) {
    std::string out;
    auto set_str = [&](const std::string& name, Family f) {
        if (name.empty()) return std::string("-");
        auto it = rs.sets.find(name);
        if (it == rs.sets.end()) return std::string("MISSING");
        if (it->second.family != f) return std::string("BADFAMILY");
        return "{" + ranges_str(f, it->second.elements) + "}";
    };
    for (const auto* d : {&rs.ingress, &rs.egress}) {
        out += d == &rs.ingress ? "ingress" : "egress";
        out += d->isolated ? " isolated\n" : " open\n";
        for (const nft::Rule& r : d->rules) {
            out += "  " + r.origin.policy_namespace + "/" + r.origin.policy_name + "#" +
                   std::to_string(r.origin.rule_index) + " ";
            if (r.any_peer)
                out += "any";
            else
                out += "v4" + set_str(r.set_v4, Family::v4) + " v6" + set_str(r.set_v6, Family::v6);
            out += " ports";
            if (r.ports.empty()) out += " all";
            for (const auto& p : r.ports)
                out += " " + std::string(proto_name(p.proto)) + "/" + std::to_string(p.first) +
                       (p.first != p.last ? "-" + std::to_string(p.last) : "");
            out += "\n";
        }
    }
    return out;
}

// The conformance-style model: namespaces x, y, z; pods a, b, c.
cache::Snapshot model() {
    cache::Snapshot s;
    s.put(ns("x", {{"team", "blue"}}));
    s.put(ns("y", {{"team", "red"}}));
    s.put(ns("z", {{"team", "red"}}));
    const char* names[] = {"a", "b", "c"};
    int nsi = 0;
    for (const char* n : {"x", "y", "z"}) {
        for (int i = 0; i < 3; ++i) {
            std::string v4 = "10.0." + std::to_string(nsi) + "." + std::to_string(i + 1);
            std::string v6 = "fd00::" + std::to_string(nsi) + ":" + std::to_string(i + 1);
            s.put(pod(n, names[i], {{"pod", names[i]}}, {v4, v6},
                      {{"serve-80-tcp", 80, "TCP"}, {"serve-81-udp", 81, "UDP"}}));
        }
        ++nsi;
    }
    return s;
}

Compiler make(const cache::Snapshot& s, std::vector<LocalPod> locals = {{"x", "a", {}}},
              std::vector<std::string> node = {"192.168.1.10", "fd99::10"}) {
    Compiler c;
    c.reset(s, locals, node);
    return c;
}

std::string compiled(const Compiler& c, const char* n = "x", const char* name = "a") {
    auto r = c.compile({n, name});
    REQUIRE(r.ok());
    return dump(*r);
}

}  // namespace

// ---------------------------------------------------------------------------

TEST_CASE("policy addr: parse_ip accepts plain and CIDR forms") {
    CHECK(ip("10.1.2.3").family == Family::v4);
    CHECK(ip("10.1.2.3").addr.bytes[0] == 10);
    CHECK(ip("10.1.2.3").addr.bytes[3] == 3);
    CHECK(ip("10.1.2.3").addr.bytes[4] == 0);
    CHECK(ip("10.1.2.3/24") == ip("10.1.2.3"));
    CHECK(ip("fd00::5/64").family == Family::v6);
    CHECK(to_string(ip("fd00::5/64")) == "fd00::5");
    CHECK_FALSE(parse_ip("").ok());
    CHECK_FALSE(parse_ip("10.1.2").ok());
    CHECK_FALSE(parse_ip("10.1.2.3/33").ok());
    CHECK_FALSE(parse_ip("x/y").ok());
}

TEST_CASE("policy addr: CIDR ranges") {
    CHECK(to_string(Family::v4, to_range(cidr("10.0.0.0/8"))) == "10.0.0.0-10.255.255.255");
    CHECK(to_string(Family::v4, to_range(cidr("10.1.2.3/32"))) == "10.1.2.3");
    CHECK(to_string(Family::v4, to_range(cidr("0.0.0.0/0"))) == "0.0.0.0-255.255.255.255");
    CHECK(to_string(Family::v6, to_range(cidr("fd00::/120"))) == "fd00::-fd00::ff");
    CHECK(to_string(Family::v6, to_range(cidr("::/0"))) == "::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
    CHECK(to_string(Family::v6, to_range(cidr("fd00::7/128"))) == "fd00::7");
    auto fr = parse_cidr_range("10.1.0.0/16");
    REQUIRE(fr.ok());
    CHECK(fr->family == Family::v4);
    CHECK_FALSE(parse_cidr_range("10.1.0.0").ok());
}

TEST_CASE("policy addr: except subtraction") {
    auto blk = [](const char* c, std::vector<const char*> ex) {
        IpBlock b{cidr(c), {}};
        for (auto* e : ex) b.except.push_back(cidr(e));
        return ranges_str(family_of(b.cidr), ip_block_ranges(b));
    };
    CHECK(blk("10.0.0.0/24", {}) == "10.0.0.0-10.0.0.255");
    CHECK(blk("10.0.0.0/24", {"10.0.0.128/25"}) == "10.0.0.0-10.0.0.127");
    CHECK(blk("10.0.0.0/24", {"10.0.0.0/25"}) == "10.0.0.128-10.0.0.255");
    CHECK(blk("10.0.0.0/24", {"10.0.0.16/28"}) == "10.0.0.0-10.0.0.15 10.0.0.32-10.0.0.255");
    CHECK(blk("10.0.0.0/24", {"10.0.0.16/28", "10.0.0.20/30", "10.0.0.32/28"}) ==
          "10.0.0.0-10.0.0.15 10.0.0.48-10.0.0.255");
    CHECK(blk("10.0.0.0/24", {"10.0.0.0/24"}) == "");  // except equal to the block
    CHECK(blk("10.0.0.5/32", {"10.0.0.5/32"}) == "");
    CHECK(blk("10.0.0.5/32", {}) == "10.0.0.5");
    CHECK(blk("0.0.0.0/0", {"10.0.0.0/8"}) == "0.0.0.0-9.255.255.255 11.0.0.0-255.255.255.255");
    CHECK(blk("0.0.0.0/0", {"0.0.0.0/1"}) == "128.0.0.0-255.255.255.255");
    CHECK(blk("0.0.0.0/0", {"128.0.0.0/1"}) == "0.0.0.0-127.255.255.255");
    CHECK(blk("0.0.0.0/0", {"0.0.0.0/32", "255.255.255.255/32"}) == "0.0.0.1-255.255.255.254");
    CHECK(blk("fd00::/64", {"fd00::/65"}) == "fd00::8000:0:0:0-fd00::ffff:ffff:ffff:ffff");
    CHECK(blk("fd00::1/128", {"fd00::1/128"}) == "");
    CHECK(blk("::/0", {"::/1"}) == "8000::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
    CHECK(blk("::/0", {"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"}) ==
          "::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe");
    // Excepts of the other family are ignored.
    CHECK(blk("10.0.0.0/30", {"fd00::/8"}) == "10.0.0.0-10.0.0.3");
}

TEST_CASE("policy addr: merging ranges") {
    std::vector<nft::Range> v{rng("10.0.0.5", "10.0.0.9"), rng("10.0.0.1", "10.0.0.3"), rng("10.0.0.4", "10.0.0.4"),
                              rng("10.0.0.20", "10.0.0.30"), rng("10.0.0.25", "10.0.0.26"),
                              rng("10.0.0.10", "10.0.0.10")};
    merge_ranges(Family::v4, v);
    CHECK(ranges_str(Family::v4, v) == "10.0.0.1-10.0.0.10 10.0.0.20-10.0.0.30");
    std::vector<nft::Range> top{rng("255.255.255.255", "255.255.255.255"), rng("255.255.255.254", "255.255.255.254"),
                                rng("0.0.0.0", "0.0.0.0")};
    merge_ranges(Family::v4, top);
    CHECK(ranges_str(Family::v4, top) == "0.0.0.0 255.255.255.254-255.255.255.255");
    std::vector<nft::Range> v6{rng("fd00::2", "fd00::2"), rng("fd00::1", "fd00::1"), rng("fd00::4", "fd00::4"),
                               rng("fd00::2", "fd00::3")};
    merge_ranges(Family::v6, v6);
    CHECK(ranges_str(Family::v6, v6) == "fd00::1-fd00::4");
    std::vector<nft::Range> empty;
    merge_ranges(Family::v6, empty);
    CHECK(empty.empty());
    CHECK(contains(v, ip("10.0.0.7").addr));
    CHECK(contains(v, ip("10.0.0.30").addr));
    CHECK_FALSE(contains(v, ip("10.0.0.11").addr));
    CHECK_FALSE(contains(v, ip("10.0.0.0").addr));
    CHECK_FALSE(contains(empty, ip("10.0.0.0").addr));
    nft::Addr a = ip("10.0.0.255").addr;
    CHECK(next_addr(Family::v4, a));
    CHECK(to_string(Family::v4, a) == "10.0.1.0");
    nft::Addr m = ip("255.255.255.255").addr;
    CHECK_FALSE(next_addr(Family::v4, m));
    nft::Addr z = ip("::").addr;
    CHECK_FALSE(prev_addr(Family::v6, z));
}

TEST_CASE("policy compile: no policy, node sets, unknown and hostNetwork pods") {
    auto s = model();
    s.put(pod("x", "host", {{"pod", "host"}}, {"192.168.1.10"}, {}, true));
    auto c = make(s, {{"x", "a", {}}, {"x", "host", {}}, {"x", "ghost", {"10.0.9.9"}}});
    auto rs = c.compile({"x", "a"});
    REQUIRE(rs.ok());
    CHECK(dump(*rs) == "ingress open\negress open\n");
    REQUIRE(rs->sets.count("node_v4"));
    REQUIRE(rs->sets.count("node_v6"));
    CHECK(ranges_str(Family::v4, rs->sets.at("node_v4").elements) == "192.168.1.10");
    CHECK(ranges_str(Family::v6, rs->sets.at("node_v6").elements) == "fd99::10");
    CHECK(rs->sets.size() == 2);
    // A registered pod without its object yet: fail closed.
    CHECK(compiled(c, "x", "ghost") == "ingress isolated\negress isolated\n");
    // hostNetwork: out of scope, even when a policy selects it.
    c.put_policy(netpol("x", "deny", {}, {PolicyType::Ingress, PolicyType::Egress}));
    CHECK(compiled(c, "x", "host") == "ingress open\negress open\n");
    CHECK_FALSE(c.compile({"x", "nope"}).ok());
    CHECK(c.compile({"x", "nope"}).error().code == ENOENT);
}

TEST_CASE("policy compile: deny all, ingress and egress independent") {
    auto s = model();
    s.put(netpol("x", "deny-in", {}, {PolicyType::Ingress}));
    auto c = make(s);
    CHECK(compiled(c) == "ingress isolated\negress open\n");
    c.put_policy(netpol("x", "deny-out", {}, {PolicyType::Egress}));
    CHECK(compiled(c) == "ingress isolated\negress isolated\n");
    // A policy in another namespace or not selecting the pod changes nothing.
    auto other = make(model());
    other.put_policy(netpol("y", "deny-in", {}, {PolicyType::Ingress}));
    other.put_policy(netpol("x", "deny-b", sel({{"pod", "b"}}), {PolicyType::Ingress}));
    CHECK(compiled(other) == "ingress open\negress open\n");
}

TEST_CASE("policy compile: peers by pod selector, namespace selector, both, ipBlock; empty selectors") {
    auto s = model();
    auto p = netpol("x", "p", sel({{"pod", "a"}}), {PolicyType::Ingress});
    p.ingress.push_back(in_rule(std::vector<Peer>{pod_peer({{"pod", "b"}})}));             // x/b only
    p.ingress.push_back(in_rule(std::vector<Peer>{ns_peer({{"team", "red"}})}));           // all of y, z
    p.ingress.push_back(in_rule(std::vector<Peer>{both_peer({{"team", "red"}}, {{"pod", "c"}})}));  // y/c, z/c
    p.ingress.push_back(in_rule(std::vector<Peer>{pod_peer({})}));                          // all of x
    p.ingress.push_back(in_rule(std::vector<Peer>{ns_peer({})}));                           // everything
    p.ingress.push_back(in_rule(std::vector<Peer>{block_peer("172.16.0.0/16", {"172.16.1.0/24"}),
                                                  block_peer("2001:db8::/64")}));
    p.ingress.push_back(in_rule(std::nullopt));                  // from absent: any peer
    p.ingress.push_back(in_rule(std::vector<Peer>{}));           // from: [] : any peer
    s.put(p);
    auto c = make(s);
    CHECK(compiled(c) ==
          "ingress isolated\n"
          "  x/p#0 v4{10.0.0.2} v6{fd00::2} ports all\n"
          "  x/p#1 v4{10.0.1.1-10.0.1.3 10.0.2.1-10.0.2.3} v6{fd00::1:1-fd00::1:3 fd00::2:1-fd00::2:3} ports all\n"
          "  x/p#2 v4{10.0.1.3 10.0.2.3} v6{fd00::1:3 fd00::2:3} ports all\n"
          "  x/p#3 v4{10.0.0.1-10.0.0.3} v6{fd00::1-fd00::3} ports all\n"
          "  x/p#4 v4{10.0.0.1-10.0.0.3 10.0.1.1-10.0.1.3 10.0.2.1-10.0.2.3} "
          "v6{fd00::1-fd00::3 fd00::1:1-fd00::1:3 fd00::2:1-fd00::2:3} ports all\n"
          "  x/p#5 v4{172.16.0.0-172.16.0.255 172.16.2.0-172.16.255.255} v6{2001:db8::-2001:db8::ffff:ffff:ffff:ffff} "
          "ports all\n"
          "  x/p#6 any ports all\n"
          "  x/p#7 any ports all\n"
          "egress open\n");
}

TEST_CASE("policy compile: matchExpressions In/NotIn/Exists/DoesNotExist") {
    auto s = model();
    s.put(pod("x", "d", {{"pod", "d"}, {"legacy", "yes"}}, {"10.0.0.4"}));
    auto mk = [](Requirement::Op op, std::vector<std::string> values) {
        LabelSelector ls;
        ls.match_expressions.push_back(Requirement{op == Requirement::Exists || op == Requirement::DoesNotExist
                                                       ? "legacy"
                                                       : "pod",
                                                   op, std::move(values)});
        return Peer{ls, std::nullopt, std::nullopt};
    };
    auto p = netpol("x", "p", sel({{"pod", "a"}}), {PolicyType::Ingress});
    p.ingress.push_back(in_rule(std::vector<Peer>{mk(Requirement::In, {"b", "c"})}));
    p.ingress.push_back(in_rule(std::vector<Peer>{mk(Requirement::NotIn, {"b", "c"})}));
    p.ingress.push_back(in_rule(std::vector<Peer>{mk(Requirement::Exists, {})}));
    p.ingress.push_back(in_rule(std::vector<Peer>{mk(Requirement::DoesNotExist, {})}));
    s.put(p);
    auto c = make(s);
    CHECK(compiled(c) ==
          "ingress isolated\n"
          "  x/p#0 v4{10.0.0.2-10.0.0.3} v6{fd00::2-fd00::3} ports all\n"
          "  x/p#1 v4{10.0.0.1 10.0.0.4} v6{fd00::1} ports all\n"
          "  x/p#2 v4{10.0.0.4} v6{} ports all\n"
          "  x/p#3 v4{10.0.0.1-10.0.0.3} v6{fd00::1-fd00::3} ports all\n"
          "egress open\n");
}

TEST_CASE("policy compile: hostNetwork, address-less and terminated pods are not peers") {
    auto s = model();
    s.put(pod("x", "host", {{"pod", "b"}}, {"192.168.1.10"}, {}, true));
    s.put(pod("x", "pending", {{"pod", "b"}}, {}));
    auto done = pod("x", "done", {{"pod", "b"}}, {"10.0.0.77"});
    done.phase = "Succeeded";
    s.put(done);
    auto p = netpol("x", "p", {}, {PolicyType::Ingress});
    p.ingress.push_back(in_rule(std::vector<Peer>{pod_peer({{"pod", "b"}})}));
    s.put(p);
    auto c = make(s);
    CHECK(compiled(c) == "ingress isolated\n  x/p#0 v4{10.0.0.2} v6{fd00::2} ports all\negress open\n");
    // Once it has an address, the pending pod is a peer.
    auto a = c.put_pod(pod("x", "pending", {{"pod", "b"}}, {"10.0.0.3"}));
    CHECK(a.pods.count({"x", "a"}));
    CHECK(compiled(c) == "ingress isolated\n  x/p#0 v4{10.0.0.2-10.0.0.3} v6{fd00::2} ports all\negress open\n");
}

TEST_CASE("policy compile: local IP override") {
    auto s = model();
    auto p = netpol("x", "p", {}, {PolicyType::Ingress});
    p.ingress.push_back(in_rule(std::vector<Peer>{pod_peer({{"pod", "b"}})}));
    s.put(p);
    auto c = make(s, {{"x", "a", {}}, {"x", "b", {"10.9.9.9/24"}}});
    CHECK(compiled(c) == "ingress isolated\n  x/p#0 v4{10.9.9.9} v6{} ports all\negress open\n");
    auto a = c.remove_local_pod({"x", "b"});
    CHECK(a.pods.count({"x", "a"}));
    CHECK(compiled(c) == "ingress isolated\n  x/p#0 v4{10.0.0.2} v6{fd00::2} ports all\negress open\n");
}

TEST_CASE("policy compile: ports, endPort, protocols, named ingress ports") {
    auto s = model();
    auto p = netpol("x", "p", {}, {PolicyType::Ingress});
    p.ingress.push_back(in_rule(std::nullopt, std::vector<PolicyPort>{tcp(80), udp(53), tcp(8000, 8080)}));
    p.ingress.push_back(in_rule(std::nullopt, std::vector<PolicyPort>{PolicyPort{Protocol::SCTP, std::nullopt, {}}}));
    p.ingress.push_back(in_rule(std::nullopt, std::vector<PolicyPort>{named("serve-80-tcp")}));
    p.ingress.push_back(in_rule(std::nullopt, std::vector<PolicyPort>{named("serve-81-udp", Protocol::UDP)}));
    // Named port with the wrong protocol or unknown name resolves to nothing: the rule matches nothing.
    p.ingress.push_back(in_rule(std::nullopt, std::vector<PolicyPort>{named("serve-81-udp", Protocol::TCP)}));
    p.ingress.push_back(in_rule(std::nullopt, std::vector<PolicyPort>{named("nope")}));
    p.ingress.push_back(in_rule(std::nullopt, std::vector<PolicyPort>{named("nope"), tcp(9)}));
    p.ingress.push_back(in_rule(std::nullopt, std::vector<PolicyPort>{}));  // ports: [] = all
    s.put(p);
    auto c = make(s);
    CHECK(compiled(c) ==
          "ingress isolated\n"
          "  x/p#0 any ports TCP/80 TCP/8000-8080 UDP/53\n"
          "  x/p#1 any ports SCTP/0-65535\n"
          "  x/p#2 any ports TCP/80\n"
          "  x/p#3 any ports UDP/81\n"
          "  x/p#6 any ports TCP/9\n"
          "  x/p#7 any ports all\n"
          "egress open\n");
}

TEST_CASE("policy compile: named egress ports resolve per destination pod") {
    auto s = model();
    s.put(pod("y", "web1", {{"app", "web"}}, {"10.0.5.1"}, {{"http", 8080, "TCP"}}));
    s.put(pod("y", "web2", {{"app", "web"}}, {"10.0.5.2"}, {{"http", 8080, "TCP"}}));
    s.put(pod("y", "web3", {{"app", "web"}}, {"10.0.5.3", "fd00::5:3"}, {{"http", 9090, "TCP"}}));
    s.put(pod("y", "web4", {{"app", "web"}}, {"10.0.5.4"}, {{"other", 80, "TCP"}}));  // no "http": no match
    auto p = netpol("x", "p", {}, {PolicyType::Egress});
    p.egress.push_back(eg_rule(std::vector<Peer>{ns_peer({{"team", "red"}})}, std::vector<PolicyPort>{named("http"), udp(53)}));
    // ipBlock peers with a named port: nothing (no pod to resolve against).
    p.egress.push_back(eg_rule(std::vector<Peer>{block_peer("10.0.0.0/8")}, std::vector<PolicyPort>{named("http")}));
    s.put(p);
    auto c = make(s);
    auto rs = c.compile({"x", "a"});
    REQUIRE(rs.ok());
    std::string out = dump(*rs);
    CHECK(out ==
          "ingress open\n"
          "egress isolated\n"
          "  x/p#0 v4{10.0.1.1-10.0.1.3 10.0.2.1-10.0.2.3 10.0.5.1-10.0.5.4} "
          "v6{fd00::1:1-fd00::1:3 fd00::2:1-fd00::2:3 fd00::5:3} ports UDP/53\n"
          "  x/p#0 v4{10.0.5.1-10.0.5.2} v6{} ports TCP/8080\n"
          "  x/p#0 v4{10.0.5.3} v6{fd00::5:3} ports TCP/9090\n");  // rule #1 matches nothing: not emitted
    // Distinct groups of one rule get distinct, stable set names.
    CHECK(rs->egress.rules[1].set_v4 != rs->egress.rules[2].set_v4);
    CHECK(rs->egress.rules[1].origin == rs->egress.rules[2].origin);

    // `to` absent with a named port: every pod that has the port, wherever it is.
    auto q = netpol("x", "q", sel({{"pod", "b"}}), {PolicyType::Egress});
    q.egress.push_back(eg_rule(std::nullopt, std::vector<PolicyPort>{named("http"), tcp(443)}));
    c.put_policy(q);
    CHECK(compiled(c, "x", "a") == out);
    c.put_local_pod({"x", "b", {}});
    CHECK(compiled(c, "x", "b") ==
          "ingress open\n"
          "egress isolated\n"
          "  x/p#0 v4{10.0.1.1-10.0.1.3 10.0.2.1-10.0.2.3 10.0.5.1-10.0.5.4} "
          "v6{fd00::1:1-fd00::1:3 fd00::2:1-fd00::2:3 fd00::5:3} ports UDP/53\n"
          "  x/p#0 v4{10.0.5.1-10.0.5.2} v6{} ports TCP/8080\n"
          "  x/p#0 v4{10.0.5.3} v6{fd00::5:3} ports TCP/9090\n"
          "  x/q#0 any ports TCP/443\n"
          "  x/q#0 v4{10.0.5.1-10.0.5.2} v6{} ports TCP/8080\n"
          "  x/q#0 v4{10.0.5.3} v6{fd00::5:3} ports TCP/9090\n");
}

TEST_CASE("policy compile: set names are short, stable and structure-preserving") {
    auto s = model();
    auto p = netpol("a-rather-long-namespace-name-for-testing", "an-even-longer-policy-name-that-goes-on-and-on",
                    {}, {PolicyType::Ingress, PolicyType::Egress});
    s.put(ns(p.namespace_));
    s.put(pod(p.namespace_, "t", {}, {"10.7.0.1"}));
    p.ingress.push_back(in_rule(std::vector<Peer>{ns_peer({})}));
    p.egress.push_back(eg_rule(std::vector<Peer>{pod_peer({}), block_peer("fd00::/8")}, std::vector<PolicyPort>{named("http"), tcp(1)}));
    for (int i = 0; i < 12; ++i) p.ingress.push_back(in_rule(std::vector<Peer>{block_peer("10.0.0.0/8")}));
    s.put(p);
    s.put(pod(p.namespace_, "w", {}, {"10.7.0.2"}, {{"http", 80, "TCP"}}));
    auto c = make(s, {{p.namespace_, "t", {}}});
    auto rs = c.compile({p.namespace_, "t"});
    REQUIRE(rs.ok());
    std::regex ok("[a-z0-9_]{1,32}");
    for (const auto& kv : rs->sets) CHECK_MESSAGE(std::regex_match(kv.first, ok), kv.first);
    CHECK(rs->sets.size() == 2 + 2 + 2 + 2 + 12);

    // A pod appearing in a selected namespace: same structure, new elements.
    auto a = c.put_pod(pod("x", "new", {{"pod", "new"}}, {"10.0.0.50"}));
    CHECK(a.pods.count({p.namespace_, "t"}));
    auto rs2 = c.compile({p.namespace_, "t"});
    REQUIRE(rs2.ok());
    CHECK(rs2->same_structure(*rs));
    CHECK_FALSE(*rs2 == *rs);
    // Rebuilding from scratch gives the same names.
    auto fresh = make(c.snapshot(), {{p.namespace_, "t", {}}});
    CHECK(*fresh.compile({p.namespace_, "t"}) == *rs2);
    // A pod with a new number for the named port: a new group, a new structure.
    c.put_pod(pod(p.namespace_, "w2", {}, {"10.7.0.3"}, {{"http", 81, "TCP"}}));
    auto rs3 = c.compile({p.namespace_, "t"});
    REQUIRE(rs3.ok());
    CHECK_FALSE(rs3->same_structure(*rs2));
}

TEST_CASE("policy ruleset: same_structure") {
    nft::PodRuleset a;
    a.ingress.isolated = true;
    a.ingress.rules.push_back(nft::Rule{false, "s4", "", {}, {"x", "p", 0}});
    a.sets["s4"] = nft::AddrSet{Family::v4, {rng("10.0.0.1", "10.0.0.1")}};
    nft::PodRuleset b = a;
    CHECK(a.same_structure(b));
    b.sets["s4"].elements.clear();
    CHECK(a.same_structure(b));
    b.sets["s4"].family = Family::v6;
    CHECK_FALSE(a.same_structure(b));
    b = a;
    b.sets["s5"] = {};
    CHECK_FALSE(a.same_structure(b));
    b = a;
    b.ingress.rules[0].ports.push_back({nft::kTcp, 1, 1});
    CHECK_FALSE(a.same_structure(b));
    b = a;
    b.egress.isolated = true;
    CHECK_FALSE(a.same_structure(b));
}

TEST_CASE("policy allows: evaluation of the IR") {
    nft::PodRuleset rs;
    rs.sets["node_v4"] = nft::AddrSet{Family::v4, {rng("192.168.1.10", "192.168.1.10")}};
    rs.sets["node_v6"] = nft::AddrSet{Family::v6, {}};
    rs.sets["s4"] = nft::AddrSet{Family::v4, {rng("10.0.0.1", "10.0.0.5")}};
    rs.sets["s6"] = nft::AddrSet{Family::v6, {rng("fd00::1", "fd00::1")}};
    // Not isolated: everything.
    CHECK(allows(rs, true, ip("1.2.3.4"), nft::kTcp, 1));
    CHECK(allows(rs, false, ip("1.2.3.4"), 1, 0));
    rs.ingress.isolated = true;
    CHECK_FALSE(allows(rs, true, ip("1.2.3.4"), nft::kTcp, 80));
    CHECK(allows(rs, true, ip("192.168.1.10"), nft::kTcp, 80));        // node
    CHECK(allows(rs, false, ip("1.2.3.4"), nft::kTcp, 80));            // egress open
    rs.ingress.rules.push_back(nft::Rule{false, "s4", "s6", {{nft::kTcp, 80, 80}, {nft::kUdp, 1000, 2000}}, {}});
    CHECK(allows(rs, true, ip("10.0.0.3"), nft::kTcp, 80));
    CHECK_FALSE(allows(rs, true, ip("10.0.0.3"), nft::kTcp, 81));
    CHECK_FALSE(allows(rs, true, ip("10.0.0.3"), nft::kUdp, 80));
    CHECK(allows(rs, true, ip("10.0.0.5"), nft::kUdp, 1000));
    CHECK(allows(rs, true, ip("10.0.0.1"), nft::kUdp, 2000));
    CHECK_FALSE(allows(rs, true, ip("10.0.0.1"), nft::kUdp, 2001));
    CHECK_FALSE(allows(rs, true, ip("10.0.0.6"), nft::kTcp, 80));
    CHECK_FALSE(allows(rs, true, ip("10.0.0.1"), nft::kSctp, 80));
    CHECK_FALSE(allows(rs, true, ip("10.0.0.1"), 1, 0));              // ICMP: rule has ports
    CHECK(allows(rs, true, ip("fd00::1"), nft::kTcp, 80));
    CHECK_FALSE(allows(rs, true, ip("fd00::2"), nft::kTcp, 80));
    // v4 bytes as v6 do not match the v4 set (families are kept apart).
    Ip fake{Family::v6, ip("10.0.0.1").addr};
    CHECK_FALSE(allows(rs, true, fake, nft::kTcp, 80));
    rs.ingress.rules.push_back(nft::Rule{true, "", "", {{nft::kSctp, 0, 65535}}, {}});
    CHECK(allows(rs, true, ip("8.8.8.8"), nft::kSctp, 9));
    CHECK_FALSE(allows(rs, true, ip("8.8.8.8"), nft::kTcp, 9));
    rs.ingress.rules.push_back(nft::Rule{false, "s4", "", {}, {}});
    CHECK(allows(rs, true, ip("10.0.0.2"), 1, 0));                     // no ports: every protocol
    CHECK_FALSE(allows(rs, true, ip("fd00::5"), 1, 0));
    rs.egress.isolated = true;
    CHECK_FALSE(allows(rs, false, ip("192.168.1.10"), nft::kTcp, 80));  // node rule is ingress only
}

TEST_CASE("policy explain: allowed, denied, not isolated, outside IP, errors") {
    auto s = model();
    auto p = netpol("y", "allow-web", sel({{"pod", "a"}}), {PolicyType::Ingress});
    p.ingress.push_back(in_rule(std::vector<Peer>{both_peer({{"team", "blue"}}, {{"pod", "b"}})},
                                std::vector<PolicyPort>{named("serve-80-tcp")}));
    p.ingress.push_back(in_rule(std::vector<Peer>{block_peer("203.0.113.0/24", {"203.0.113.128/25"})},
                                std::vector<PolicyPort>{tcp(80)}));
    s.put(p);
    auto e = netpol("x", "egress-deny", sel({{"pod", "c"}}), {PolicyType::Egress});
    s.put(e);
    auto c = make(s);

    auto ok = c.explain(Endpoint::pod("x", "b"), Endpoint::pod("y", "a"), nft::kTcp, 80);
    REQUIRE(ok.ok());
    CHECK(ok->allowed);
    REQUIRE(ok->egress);
    CHECK_FALSE(ok->egress->isolated);
    CHECK(ok->egress->reason.find("not isolated") != std::string::npos);
    REQUIRE(ok->ingress);
    CHECK(ok->ingress->isolated);
    REQUIRE(ok->ingress->rules.size() == 1);
    CHECK(ok->ingress->rules[0] == nft::Origin{"y", "allow-web", 0});
    CHECK(ok->text() ==
          "TCP port 80 from x/b to y/a: ALLOWED\n"
          "  egress of x/b: allowed (not isolated: no NetworkPolicy selects it for egress)\n"
          "  ingress of y/a: allowed (allowed by a rule of a policy selecting it)\n"
          "    selected by: y/allow-web\n"
          "    allowed by: y/allow-web ingress rule 0\n");

    auto denied = c.explain(Endpoint::pod("x", "a"), Endpoint::pod("y", "a"), nft::kTcp, 80);
    REQUIRE(denied.ok());
    CHECK_FALSE(denied->allowed);
    CHECK(denied->ingress->reason.find("default deny") != std::string::npos);
    CHECK(denied->text().find("DENIED") != std::string::npos);
    // Wrong port for the named port.
    CHECK_FALSE(c.explain(Endpoint::pod("x", "b"), Endpoint::pod("y", "a"), nft::kTcp, 81)->allowed);
    // Egress denial at the source.
    auto eg = c.explain(Endpoint::pod("x", "c"), Endpoint::pod("y", "b"), nft::kTcp, 80);
    REQUIRE(eg.ok());
    CHECK_FALSE(eg->allowed);
    CHECK_FALSE(eg->egress->allowed);
    CHECK(eg->ingress->allowed);

    // Outside addresses: ipBlock with except; node address.
    auto out1 = c.explain(Endpoint::address("203.0.113.7"), Endpoint::pod("y", "a"), nft::kTcp, 80);
    REQUIRE(out1.ok());
    CHECK(out1->allowed);
    CHECK_FALSE(out1->egress);
    CHECK(out1->ingress->rules == std::vector<nft::Origin>{{"y", "allow-web", 1}});
    CHECK(out1->text().find("egress of 203.0.113.7: not a pod") != std::string::npos);
    CHECK_FALSE(c.explain(Endpoint::address("203.0.113.200"), Endpoint::pod("y", "a"), nft::kTcp, 80)->allowed);
    auto node = c.explain(Endpoint::address("192.168.1.10"), Endpoint::pod("y", "a"), nft::kTcp, 22);
    REQUIRE(node.ok());
    CHECK(node->allowed);
    CHECK(node->ingress->reason.find("node") != std::string::npos);
    auto to_out = c.explain(Endpoint::pod("x", "c"), Endpoint::address("8.8.8.8"), nft::kUdp, 53);
    REQUIRE(to_out.ok());
    CHECK_FALSE(to_out->allowed);
    CHECK_FALSE(to_out->ingress);

    // JSON.
    rapidjson::Document d;
    d.Parse(ok->json().c_str());
    REQUIRE_FALSE(d.HasParseError());
    CHECK(d["allowed"].GetBool());
    CHECK(std::string(d["protocol"].GetString()) == "TCP");
    CHECK(d["port"].GetInt() == 80);
    CHECK(d["ingress"]["rules"][0]["rule"].GetInt() == 0);
    CHECK(std::string(d["ingress"]["rules"][0]["policy"].GetString()) == "y/allow-web");
    CHECK(std::string(d["ingress"]["policies"][0].GetString()) == "y/allow-web");
    CHECK(d["egress"]["isolated"].GetBool() == false);
    rapidjson::Document d2;
    d2.Parse(out1->json().c_str());
    CHECK(d2["egress"].IsNull());

    // Errors.
    auto unknown = c.explain(Endpoint::pod("x", "nope"), Endpoint::pod("y", "a"), nft::kTcp, 80);
    REQUIRE_FALSE(unknown.ok());
    CHECK(unknown.error().code == ENOENT);
    CHECK(c.explain(Endpoint::address("999.1.1.1"), Endpoint::pod("y", "a"), nft::kTcp, 80).error().code == EINVAL);
}

TEST_CASE("policy explain: endpoints and protocols parse") {
    auto a = parse_endpoint("x/a");
    REQUIRE(a.ok());
    CHECK(a->is_pod());
    CHECK(a->to_string() == "x/a");
    auto b = parse_endpoint("10.0.0.1");
    REQUIRE(b.ok());
    CHECK_FALSE(b->is_pod());
    CHECK(parse_endpoint("fd00::1").ok());
    CHECK_FALSE(parse_endpoint("x/").ok());
    CHECK_FALSE(parse_endpoint("/a").ok());
    CHECK_FALSE(parse_endpoint("10.0.0.0/8").ok());
    CHECK_FALSE(parse_endpoint("nonsense").ok());
    CHECK(parse_proto("tcp") == nft::kTcp);
    CHECK(parse_proto("UDP") == nft::kUdp);
    CHECK(parse_proto("sctp") == nft::kSctp);
    CHECK(parse_proto("17") == nft::kUdp);
    CHECK_FALSE(parse_proto("256").has_value());
    CHECK_FALSE(parse_proto("foo").has_value());
}

// ---------------------------------------------------------------------------
// Randomized: incremental updates == full rebuild; unreported pods unchanged;
// the IR (allows) agrees with explain's semantic evaluation.

namespace {

struct Gen {
    std::mt19937 rng{12345};
    int pick(int n) { return static_cast<int>(rng() % static_cast<unsigned>(n)); }
    bool coin(int pct = 50) { return pick(100) < pct; }

    std::vector<std::string> nss{"n0", "n1", "n2", "n3"};
    int ip_seq = 1;

    cache::Labels labels() {
        cache::Labels l;
        if (coin(70)) l["app"] = std::string(1, static_cast<char>('a' + pick(3)));
        if (coin(40)) l["tier"] = coin() ? "fe" : "be";
        return l;
    }
    LabelSelector selector() {
        LabelSelector s;
        int k = pick(5);
        if (k == 1) s.match_labels["app"] = std::string(1, static_cast<char>('a' + pick(3)));
        if (k == 2) s.match_labels["tier"] = coin() ? "fe" : "be";
        if (k == 3) s.match_expressions.push_back({"app", coin() ? Requirement::In : Requirement::NotIn, {"a", "b"}});
        if (k == 4) s.match_expressions.push_back({"tier", coin() ? Requirement::Exists : Requirement::DoesNotExist, {}});
        return s;
    }
    LabelSelector ns_selector() {
        LabelSelector s;
        int k = pick(3);
        if (k == 1) s.match_labels["env"] = coin() ? "prod" : "dev";
        if (k == 2) s.match_labels[std::string(cache::kNamespaceNameLabel)] = nss[static_cast<size_t>(pick(4))];
        return s;
    }
    cache::Namespace make_ns(const std::string& name) {
        cache::Labels l;
        if (coin(70)) l["env"] = coin() ? "prod" : "dev";
        return ns(name, l);
    }
    cache::Pod make_pod(const std::string& n, const std::string& name) {
        std::vector<std::string> ips;
        int v = ip_seq++;
        if (!coin(10)) ips.push_back("10.1." + std::to_string(v / 250) + "." + std::to_string(v % 250 + 1));
        if (coin(30) && !ips.empty()) ips.push_back("fd00::" + std::to_string(v));
        std::vector<api::ContainerPort> ports;
        if (coin(60)) ports.push_back({"http", coin() ? 80 : 8080, "TCP"});
        if (coin(30)) ports.push_back({"dns", 53, "UDP"});
        auto p = pod(n, name, labels(), ips, ports, coin(5));
        if (coin(3)) p.phase = "Failed";
        return p;
    }
    Peer peer() {
        switch (pick(6)) {
            case 0: return Peer{selector(), std::nullopt, std::nullopt};
            case 1: return Peer{std::nullopt, ns_selector(), std::nullopt};
            case 2: return Peer{selector(), ns_selector(), std::nullopt};
            case 3: return block_peer("10.1.0.0/24", {"10.1.0.0/28"});
            case 4: return block_peer("172.16.0.0/16", {"172.16.1.0/24"});
            default: return block_peer("fd00::/112", {"fd00::/124"});
        }
    }
    std::optional<std::vector<Peer>> peers() {
        if (coin(20)) return std::nullopt;
        std::vector<Peer> v;
        int n = 1 + pick(2);
        for (int i = 0; i < n; ++i) v.push_back(peer());
        return v;
    }
    std::optional<std::vector<PolicyPort>> ports() {
        if (coin(30)) return std::nullopt;
        std::vector<PolicyPort> v;
        int n = 1 + pick(2);
        for (int i = 0; i < n; ++i) {
            switch (pick(6)) {
                case 0: v.push_back(tcp(80)); break;
                case 1: v.push_back(tcp(8000, 8080)); break;
                case 2: v.push_back(udp(53)); break;
                case 3: v.push_back(named("http")); break;
                case 4: v.push_back(named("dns", Protocol::UDP)); break;
                default: v.push_back(PolicyPort{Protocol::UDP, std::nullopt, std::nullopt}); break;
            }
        }
        return v;
    }
    NetworkPolicy make_policy(const std::string& n, const std::string& name) {
        std::vector<PolicyType> types;
        int t = pick(3);
        if (t != 1) types.push_back(PolicyType::Ingress);
        if (t != 0) types.push_back(PolicyType::Egress);
        auto p = netpol(n, name, selector(), types);
        int ni = pick(3), ne = pick(3);
        for (int i = 0; i < ni; ++i) p.ingress.push_back(in_rule(peers(), ports()));
        for (int i = 0; i < ne; ++i) p.egress.push_back(eg_rule(peers(), ports()));
        return p;
    }
};

std::map<ObjectKey, nft::PodRuleset> compile_all(const Compiler& c) {
    std::map<ObjectKey, nft::PodRuleset> out;
    for (const ObjectKey& k : c.local_pods()) {
        auto r = c.compile(k);
        REQUIRE(r.ok());
        out[k] = *r;
    }
    return out;
}

}  // namespace

TEST_CASE("policy incremental: random changes match a full rebuild") {
    Gen g;
    cache::Snapshot snap;
    for (const auto& n : g.nss) snap.put(g.make_ns(n));
    for (int i = 0; i < 40; ++i) snap.put(g.make_pod(g.nss[static_cast<size_t>(g.pick(4))], "p" + std::to_string(i)));
    for (int i = 0; i < 8; ++i) snap.put(g.make_policy(g.nss[static_cast<size_t>(g.pick(4))], "np" + std::to_string(i)));
    std::vector<LocalPod> locals;
    for (const auto& [k, p] : snap.pods)
        if (g.coin(25)) locals.push_back({k.namespace_, k.name, g.coin(30) ? std::vector<std::string>{"10.200.0." + std::to_string(locals.size() + 1)} : std::vector<std::string>{}});
    const std::vector<std::string> node{"192.168.1.10"};
    Compiler inc;
    inc.reset(snap, locals, node);
    auto before = compile_all(inc);
    const cache::Snapshot initial = snap;
    const std::vector<LocalPod> initial_locals = locals;
    int checked_pairs = 0, structure_same = 0, delta_checks = 0;
    // A third compiler follows the changes as a source reports them: batches
    // of changed keys (update(snapshot, delta)), flushed every few steps.
    Compiler dlt;
    dlt.reset(snap, locals, node);
    cache::Delta pending;
    auto flush_delta = [&] {
        (void)dlt.update(snap, pending);
        pending = {};
    };

    for (int step = 0; step < 300; ++step) {
        Affected a;
        int op = g.pick(12);
        std::string n = g.nss[static_cast<size_t>(g.pick(4))];
        if (op <= 3) {
            auto p = g.make_pod(n, "p" + std::to_string(g.pick(60)));
            snap.put(p);
            a = inc.put_pod(p);
            pending.pods.insert({p.namespace_, p.name});
        } else if (op == 4) {
            ObjectKey k{n, "p" + std::to_string(g.pick(60))};
            snap.pods.erase(k);
            a = inc.remove_pod(k);
            pending.pods.insert(k);
        } else if (op <= 6) {
            auto p = g.make_policy(n, "np" + std::to_string(g.pick(12)));
            snap.put(p);
            a = inc.put_policy(p);
            pending.policies.insert({p.namespace_, p.name});
        } else if (op == 7) {
            ObjectKey k{n, "np" + std::to_string(g.pick(12))};
            snap.policies.erase(k);
            a = inc.remove_policy(k);
            pending.policies.insert(k);
        } else if (op == 8) {
            auto ns_obj = g.make_ns(n);
            snap.put(ns_obj);
            a = inc.put_namespace(ns_obj);
            pending.namespaces.insert(n);
        } else if (op == 9) {
            snap.namespaces.erase(n);
            a = inc.remove_namespace(n);
            pending.namespaces.insert(n);
        } else if (op == 10) {
            LocalPod lp{n, "p" + std::to_string(g.pick(60)), {}};
            if (g.coin()) lp.ips.push_back("10.200.1." + std::to_string(step % 250 + 1));
            auto it = std::find_if(locals.begin(), locals.end(), [&](const LocalPod& l) { return l.namespace_ == lp.namespace_ && l.name == lp.name; });
            if (it != locals.end()) *it = lp; else locals.push_back(lp);
            a = inc.put_local_pod(lp);
            flush_delta();  // local pods go to the compiler directly, after the source's changes
            (void)dlt.put_local_pod(lp);
        } else {
            if (locals.empty()) continue;
            size_t i = static_cast<size_t>(g.pick(static_cast<int>(locals.size())));
            ObjectKey k{locals[i].namespace_, locals[i].name};
            locals.erase(locals.begin() + static_cast<long>(i));
            a = inc.remove_local_pod(k);
            flush_delta();
            (void)dlt.remove_local_pod(k);
        }
        CHECK(inc.snapshot() == snap);
        auto after = compile_all(inc);
        // Local pods not reported are unchanged.
        for (const auto& kv_ : after) {  // no structured bindings: lambdas (CHECK_MESSAGE) capture them
            const auto& k = kv_.first;
            const auto& rs = kv_.second;
            auto b = before.find(k);
            if (b != before.end() && !a.pods.count(k)) {
                CHECK_MESSAGE(b->second == rs, "step " << step << " op " << op << ": " << k.namespace_ << "/" << k.name << " changed but not reported");
            }
            if (b != before.end() && a.pods.count(k) && b->second.same_structure(rs)) ++structure_same;
        }
        // Same as a rebuild from scratch.
        Compiler full;
        full.reset(snap, locals, node);
        auto rebuilt = compile_all(full);
        REQUIRE(after.size() == rebuilt.size());
        for (const auto& kv_ : after) {  // no structured bindings: lambdas (CHECK_MESSAGE) capture them
            const auto& k = kv_.first;
            const auto& rs = kv_.second;
            CHECK_MESSAGE(rs == rebuilt.at(k), "step " << step << " op " << op << ": " << k.namespace_ << "/" << k.name << "\n" << dump(rs) << "vs rebuilt\n" << dump(rebuilt.at(k)));
        }
        before = std::move(after);
        if (step % 3 == 0) {
            flush_delta();
            CHECK_MESSAGE(compile_all(dlt) == before, "step " << step << ": update(snapshot, delta) differs from the incremental calls");
            ++delta_checks;
        }

        // Every few steps: the IR agrees with explain, for pods and outside addresses.
        if (step % 10 != 0) continue;
        for (const auto& kv_ : before) {  // no structured bindings: lambdas (CHECK_MESSAGE) capture them
            const auto& lk = kv_.first;
            const auto& rs = kv_.second;
            auto lp = inc.snapshot().pods.find(lk);
            if (lp == inc.snapshot().pods.end() || lp->second.host_network) continue;
            std::vector<std::pair<Endpoint, Ip>> peers;
            for (const auto& kv_ : inc.snapshot().pods) {  // no structured bindings: lambdas (CHECK_MESSAGE) capture them
                const auto& pk = kv_.first;
                const auto& p = kv_.second;
                if (p.host_network || p.phase == "Failed") continue;
                auto lit = std::find_if(locals.begin(), locals.end(), [&](const LocalPod& l) { return l.namespace_ == pk.namespace_ && l.name == pk.name; });
                std::vector<std::string> ips = (lit != locals.end() && !lit->ips.empty()) ? lit->ips : p.pod_ips;
                for (const auto& s : ips) peers.push_back({Endpoint::pod_at(pk.namespace_, pk.name, s), ip(s.c_str())});
            }
            for (const char* out : {"172.16.0.9", "172.16.1.9", "10.1.0.3", "8.8.8.8", "fd00::ff", "fd00::3"}) {
                // 10.1.0.3/fd00::3 may be pod addresses too; only use them when they are not.
                bool used = false;
                for (const auto& [e, pip] : peers) used = used || pip == ip(out);
                if (!used) peers.push_back({Endpoint::address(out), ip(out)});
            }
            for (const auto& kv_ : peers) {  // no structured bindings: lambdas (CHECK_MESSAGE) capture them
                const auto& ep = kv_.first;
                const auto& pip = kv_.second;
                for (auto [proto, port] : std::vector<std::pair<uint8_t, uint16_t>>{{nft::kTcp, 80}, {nft::kTcp, 8080}, {nft::kTcp, 8001}, {nft::kUdp, 53}, {nft::kUdp, 80}, {nft::kSctp, 80}}) {
                    auto in = inc.explain(ep, Endpoint::pod(lk.namespace_, lk.name), proto, port);
                    REQUIRE(in.ok());
                    CHECK_MESSAGE(allows(rs, true, pip, proto, port) == in->ingress->allowed,
                                  "ingress " << in->text() << dump(rs) << " peer " << to_string(pip));
                    auto eg = inc.explain(Endpoint::pod(lk.namespace_, lk.name), ep, proto, port);
                    REQUIRE(eg.ok());
                    CHECK_MESSAGE(allows(rs, false, pip, proto, port) == eg->egress->allowed,
                                  "egress " << eg->text() << dump(rs) << " peer " << to_string(pip));
                    ++checked_pairs;
                }
            }
        }
    }
    // update(): the snapshot diff applied at once gives the same as a rebuild.
    Compiler upd;
    upd.reset(initial, initial_locals, node);
    for (const LocalPod& lp : initial_locals) (void)upd.remove_local_pod({lp.namespace_, lp.name});
    for (const LocalPod& lp : locals) (void)upd.put_local_pod(lp);
    (void)upd.update(snap);
    CHECK(upd.snapshot() == snap);
    CHECK(compile_all(upd) == before);
    CHECK(upd.update(snap).empty());
    CHECK(checked_pairs > 1000);
    CHECK(delta_checks >= 90);
    CHECK(structure_same > 0);
    MESSAGE("pairs cross-checked: " << checked_pairs << ", membership-only updates: " << structure_same);
}
