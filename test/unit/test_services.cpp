// Unit tests: Services as signet's policy sees them (controller/policy/
// services.h: frontends, backends for explain), the rule-set evaluation of a
// deferring egress (policy::allows), and the node's Service judge
// (controller/datapath/service_judge.h: the packet parser and the verdict on
// the backend) with a real compiler and policy query.
#include <doctest/doctest.h>

#include <arpa/inet.h>

#include <cstring>
#include <string>
#include <vector>

#include "../../controller/datapath/service_judge.h"
#include "../../controller/policy/compiler.h"
#include "../../controller/policy/query.h"
#include "../../controller/policy/services.h"

using namespace signet;
using namespace signet::policy;
using signet::handshake::parse_l4;

namespace {

Ip ip(const char* s) {
    auto r = parse_ip(s);
    REQUIRE(r.ok());
    return *r;
}

cache::Pod pod(const std::string& ns, const std::string& name, cache::Labels labels, const std::string& addr,
               std::vector<api::ContainerPort> ports = {}, const std::string& phase = "Running") {
    cache::Pod p;
    p.namespace_ = ns;
    p.name = name;
    p.uid = ns + "-" + name;
    p.node_name = "node1";
    p.labels = std::move(labels);
    p.pod_ips = {addr};
    p.phase = phase;
    p.container_ports = std::move(ports);
    return p;
}

cache::Service service(const std::string& ns, const std::string& name, std::vector<std::string> cluster_ips,
                       std::vector<cache::ServicePort> ports, std::optional<cache::Labels> selector) {
    cache::Service s;
    s.namespace_ = ns;
    s.name = name;
    s.cluster_ips = std::move(cluster_ips);
    s.ports = std::move(ports);
    s.selector = std::move(selector);
    return s;
}

cache::LabelSelector sel(cache::Labels l) { return cache::LabelSelector{std::move(l), {}}; }

// x/client may reach app=db on 5432 only; y/db1, y/db2 (app=db) and y/web
// (app=web) serve; Service y/db (10.96.0.20:5432 -> "pg", a named port)
// selects app=db; y/web (10.96.0.30:80 -> 8080, NodePort 30080) selects app=web.
cache::Snapshot model() {
    cache::Snapshot s;
    s.put(cache::Namespace{"x", {{"kubernetes.io/metadata.name", "x"}}});
    s.put(cache::Namespace{"y", {{"kubernetes.io/metadata.name", "y"}}});
    s.put(pod("x", "client", {{"app", "client"}}, "10.1.0.2"));
    s.put(pod("y", "db1", {{"app", "db"}}, "10.1.1.1", {{"pg", 5432, "TCP"}}));
    s.put(pod("y", "db2", {{"app", "db"}}, "10.1.2.1", {{"pg", 5432, "TCP"}}));
    s.put(pod("y", "db3", {{"app", "db"}}, "10.1.2.9", {{"pg", 5432, "TCP"}}, "Pending"));  // not a backend yet
    s.put(pod("y", "web", {{"app", "web"}}, "10.1.1.5"));
    s.put(pod("z", "db-elsewhere", {{"app", "db"}}, "10.1.3.1", {{"pg", 5432, "TCP"}}));  // another namespace
    cache::ServicePort pg{"postgres", cache::Protocol::TCP, 5432, "pg", 0};
    s.put(service("y", "db", {"10.96.0.20"}, {pg}, cache::Labels{{"app", "db"}}));
    cache::ServicePort http{"http", cache::Protocol::TCP, 80, "8080", 30080};
    auto web = service("y", "web", {"10.96.0.30", "fd00:96::30"}, {http}, cache::Labels{{"app", "web"}});
    web.type = "NodePort";
    web.external_ips = {"203.0.113.7"};
    s.put(web);
    s.put(service("y", "headless", {}, {pg}, cache::Labels{{"app", "db"}}));
    auto manual = service("y", "manual", {"10.96.0.40"}, {{"http", cache::Protocol::TCP, 80, "8080", 0}}, std::nullopt);
    s.put(manual);
    cache::NetworkPolicy egress;
    egress.namespace_ = "x";
    egress.name = "client-egress";
    egress.pod_selector = sel({{"app", "client"}});
    egress.policy_types = {cache::PolicyType::Egress};
    cache::Peer to_db{sel({{"app", "db"}}), sel({}), std::nullopt};
    egress.egress.push_back(cache::EgressRule{std::vector<cache::Peer>{to_db},
                                              std::vector<cache::PolicyPort>{{cache::Protocol::TCP, 5432, std::nullopt}}});
    s.put(egress);
    return s;
}

// An IPv4 + TCP SYN from src:sport to dst:dport.
std::vector<uint8_t> syn4(const char* src, const char* dst, uint16_t sport, uint16_t dport) {
    std::vector<uint8_t> p(40, 0);
    p[0] = 0x45;
    p[3] = 40;
    p[8] = 64;
    p[9] = 6;
    inet_pton(AF_INET, src, &p[12]);
    inet_pton(AF_INET, dst, &p[16]);
    p[20] = sport >> 8, p[21] = sport & 0xff, p[22] = dport >> 8, p[23] = dport & 0xff;
    p[32] = 0x50, p[33] = 0x02;
    return p;
}

}  // namespace

TEST_CASE("services: frontends are the ClusterIPs, externalIPs and NodePorts of Services with ports") {
    auto f = service_frontends(model().services);
    // db, web (both families, externalIP), manual; headless has none.
    CHECK(f.services == 3);
    std::vector<std::string> v4;
    for (const auto& r : f.v4) v4.push_back(to_string(nft::Family::v4, r));
    CHECK(v4 == std::vector<std::string>{"10.96.0.20", "10.96.0.30", "10.96.0.40", "203.0.113.7"});
    REQUIRE(f.v6.size() == 1);
    CHECK(to_string(nft::Family::v6, f.v6[0]) == "fd00:96::30");
    REQUIRE(f.node_ports.size() == 1);
    CHECK(f.node_ports[0] == nft::PortRange{nft::kTcp, 30080, 30080});
    // Adjacent node ports merge per protocol; an ExternalName Service has no frontend.
    std::map<cache::ObjectKey, cache::Service> more;
    auto a = service("y", "a", {}, {{"", cache::Protocol::UDP, 53, "", 30001}, {"", cache::Protocol::UDP, 54, "", 30002}},
                     std::nullopt);
    more[{"y", "a"}] = a;
    auto ext = service("y", "ext", {"10.96.9.9"}, {{"", cache::Protocol::TCP, 80, "", 0}}, std::nullopt);
    ext.type = "ExternalName";
    more[{"y", "ext"}] = ext;
    auto g = service_frontends(more);
    CHECK(g.services == 1);
    CHECK(g.v4.empty());
    REQUIRE(g.node_ports.size() == 1);
    CHECK(g.node_ports[0] == nft::PortRange{nft::kUdp, 30001, 30002});
}

TEST_CASE("services: the backends of a frontend, their target ports resolved as the endpoints controller does") {
    auto s = model();
    auto m = services_at(s, ip("10.96.0.20"), nft::kTcp, 5432, {});
    REQUIRE(m.size() == 1);
    CHECK(m[0].service == cache::ObjectKey{"y", "db"});
    CHECK(m[0].frontend == "ClusterIP");
    REQUIRE(m[0].backends.size() == 2);  // Running, same namespace, selected
    CHECK(m[0].backends[0].pod == cache::ObjectKey{"y", "db1"});
    CHECK(m[0].backends[0].port == 5432);  // the named port "pg"
    CHECK(m[0].backends[1].ip == "10.1.2.1");
    CHECK(services_at(s, ip("10.96.0.20"), nft::kTcp, 80, {}).empty());   // not its port
    CHECK(services_at(s, ip("10.96.0.20"), nft::kUdp, 5432, {}).empty()); // not its protocol
    auto web = services_at(s, ip("fd00:96::30"), nft::kTcp, 80, {});
    REQUIRE(web.size() == 1);
    CHECK(web[0].backends.empty());  // web has no IPv6 address
    auto np = services_at(s, ip("192.168.1.10"), nft::kTcp, 30080, {"192.168.1.10", "10.0.0.1"});
    REQUIRE(np.size() == 1);
    CHECK(np[0].frontend == "NodePort");
    REQUIRE(np[0].backends.size() == 1);
    CHECK(np[0].backends[0].port == 8080);
    CHECK(services_at(s, ip("192.168.1.11"), nft::kTcp, 30080, {"192.168.1.10"}).empty());  // not this node
    auto ext = services_at(s, ip("203.0.113.7"), nft::kTcp, 80, {});
    REQUIRE(ext.size() == 1);
    CHECK(ext[0].frontend == "externalIP");
    auto manual = services_at(s, ip("10.96.0.40"), nft::kTcp, 80, {});
    REQUIRE(manual.size() == 1);
    CHECK_FALSE(manual[0].has_selector);
    CHECK(manual[0].backends.empty());
}

TEST_CASE("services: a deferring egress lets frontends through to the node, and nothing else") {
    Compiler c;
    c.reset(model(), {{"x", "client", {"10.1.0.2"}}}, {"192.168.1.10"});
    auto rs = c.compile({"x", "client"});
    REQUIRE(rs.ok());
    REQUIRE(rs->egress.isolated);
    CHECK_FALSE(allows(*rs, false, ip("10.96.0.20"), nft::kTcp, 5432));  // the frontend meets the rules: refused
    auto f = service_frontends(model().services);
    rs->defer_services = true;
    rs->sets["svc_v4"] = nft::AddrSet{nft::Family::v4, f.v4};
    rs->sets["svc_v6"] = nft::AddrSet{nft::Family::v6, f.v6};
    rs->node_ports = f.node_ports;
    CHECK(allows(*rs, false, ip("10.96.0.20"), nft::kTcp, 5432));        // on to the node's table
    CHECK(allows(*rs, false, ip("192.168.1.10"), nft::kTcp, 30080));     // this node's NodePort
    CHECK_FALSE(allows(*rs, false, ip("192.168.1.10"), nft::kTcp, 22));  // the node itself: its rules
    CHECK_FALSE(allows(*rs, false, ip("10.1.1.5"), nft::kTcp, 8080));    // a pod directly: its rules
    CHECK(allows(*rs, false, ip("10.1.1.1"), nft::kTcp, 5432));
}

TEST_CASE("service judge: parse_l4 reads IPv4 and IPv6 (extension headers skipped) and refuses the malformed") {
    auto p = syn4("10.1.0.2", "10.1.1.1", 40000, 5432);
    auto t = parse_l4(p);
    REQUIRE(t.ok());
    CHECK(to_string(t->src) == "10.1.0.2");
    CHECK(to_string(t->dst) == "10.1.1.1");
    CHECK(t->proto == 6);
    CHECK(t->sport == 40000);
    CHECK(t->dport == 5432);
    std::vector<uint8_t> v6(40 + 8 + 8, 0);
    v6[0] = 0x60;
    v6[6] = 0;  // hop-by-hop, then UDP
    inet_pton(AF_INET6, "fd00::2", &v6[8]);
    inet_pton(AF_INET6, "fd00::1", &v6[24]);
    v6[40] = 17;
    v6[41] = 0;
    v6[48] = 0x12, v6[49] = 0x34, v6[50] = 0, v6[51] = 53;
    auto u = parse_l4(v6);
    REQUIRE(u.ok());
    CHECK(u->proto == 17);
    CHECK(u->sport == 0x1234);
    CHECK(u->dport == 53);
    CHECK(to_string(u->dst) == "fd00::1");
    CHECK_FALSE(parse_l4({}).ok());
    CHECK_FALSE(parse_l4(std::span<const uint8_t>(p.data(), 22)).ok());  // ports cut off
    auto frag = p;
    frag[7] = 1;  // a later fragment
    CHECK_FALSE(parse_l4(frag).ok());
    auto bad = p;
    bad[0] = 0x43;  // IHL 12 bytes
    CHECK_FALSE(parse_l4(bad).ok());
    std::vector<uint8_t> loop(40 + 8 * 9, 0);
    loop[0] = 0x60;
    for (size_t i = 0; i < 9; ++i) loop[40 + 8 * i] = 60;  // destination options, over and over
    CHECK_FALSE(parse_l4(loop).ok());
}

TEST_CASE("service judge: the client's egress judged on the backend it was translated to") {
    Compiler c;
    auto snap = model();
    c.reset(snap, {{"x", "client", {"10.1.0.2"}}}, {"192.168.1.10"});
    Query q(c);
    bool audit = false;  // the client's policy mode (docs/policy.md, "Audit mode")
    handshake::ServiceJudge judge(handshake::ServiceJudge::Context{
        &q,
        [](const Ip& a) -> std::optional<ObjectKey> {
            if (to_string(a) == "10.1.0.2") return ObjectKey{"x", "client"};
            return std::nullopt;
        },
        [&snap](const Ip& a) -> std::optional<ObjectKey> {
            for (const auto& [k, p] : snap.pods)
                if (!p.pod_ips.empty() && p.pod_ips[0] == to_string(a)) return k;
            return std::nullopt;
        },
        nullptr, [&audit](const ObjectKey&) { return audit; }});
    auto verdict = [&](std::vector<uint8_t> bytes) {
        handshake::QueuedPacket qp;
        qp.payload = bytes;
        qp.cap_len = static_cast<uint32_t>(bytes.size());
        return judge.judge(qp).verdict;
    };
    CHECK(verdict(syn4("10.1.0.2", "10.1.1.1", 40000, 5432)) == handshake::kAccept);  // db1: allowed
    CHECK(verdict(syn4("10.1.0.2", "10.1.2.1", 40001, 5432)) == handshake::kAccept);  // db2
    CHECK(verdict(syn4("10.1.0.2", "10.1.1.5", 40002, 8080)) == handshake::kDrop);    // web: not allowed
    CHECK(verdict(syn4("10.1.0.2", "10.1.1.1", 40003, 5433)) == handshake::kDrop);    // db1, other port
    CHECK(verdict(syn4("10.9.9.9", "10.1.1.1", 40004, 5432)) == handshake::kDrop);    // not a local pod
    CHECK(verdict({0x45, 0}) == handshake::kDrop);                                    // unreadable
    handshake::QueuedPacket flagged;
    flagged.malformed = true;
    CHECK(judge.judge(flagged).verdict == handshake::kDrop);
    const auto& n = judge.counters();
    CHECK(n.judged == 4);
    CHECK(n.allowed == 2);
    CHECK(n.denied == 2);
    CHECK(n.not_a_local_pod == 1);
    CHECK(n.malformed == 2);
    REQUIRE(judge.recent_denials().size() == 2);
    CHECK(judge.recent_denials()[0].client == "x/client");
    CHECK(judge.recent_denials()[0].backend == "y/web");
    CHECK(judge.recent_denials()[1].port == 5433);
    // Audit mode: what the client's policy denies is accepted and counted apart.
    audit = true;
    CHECK(verdict(syn4("10.1.0.2", "10.1.1.5", 40005, 8080)) == handshake::kAccept);  // web: audit-denied
    CHECK(verdict(syn4("10.1.0.2", "10.1.1.1", 40006, 5432)) == handshake::kAccept);  // db1: allowed
    CHECK(verdict(syn4("10.9.9.9", "10.1.1.1", 40007, 5432)) == handshake::kDrop);    // still no local pod
    CHECK(judge.counters().audit_denied == 1);
    CHECK(judge.counters().denied == 2);
    CHECK(judge.counters().allowed == 3);
}
