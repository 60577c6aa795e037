// Golden tests of controller/nft without root: the exact netlink batch the
// backend sends for a small rule set, rendered one message per line with the
// rules as libnftnl expression lists (the notation of nftables' tests/py
// `.payload` files), plus the pure helpers and the fake backend.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <arpa/inet.h>

#include <algorithm>
#include <sstream>
#include <string>
#include <vector>

#include "nft/fake_backend.h"
#include "nft/netlink_backend.h"
#include "nft/nflog.h"

using namespace signet::nft;

namespace {

Addr v4(const char* s) {
    Addr a;
    inet_pton(AF_INET, s, a.bytes.data());
    return a;
}
Addr v6(const char* s) {
    Addr a;
    inet_pton(AF_INET6, s, a.bytes.data());
    return a;
}

PodRuleset sample() {
    PodRuleset rs;
    rs.sets["node_v4"] = AddrSet{Family::v4, {Range{v4("192.168.1.10"), v4("192.168.1.10")}}};
    rs.sets["peers_v4"] = AddrSet{Family::v4, {Range{v4("10.0.0.0"), v4("10.0.0.255")},
                                               Range{v4("240.0.0.0"), v4("255.255.255.255")}}};
    rs.sets["peers_v6"] = AddrSet{Family::v6, {Range{v6("fd00::"), v6("fd00::ff")}}};
    rs.ingress.isolated = true;
    Rule r;
    r.set_v4 = "peers_v4";
    r.set_v6 = "peers_v6";
    r.ports = {{kTcp, 80, 81}, {kUdp, 53, 53}};
    r.origin = {"prod", "allow-web", 0};
    rs.ingress.rules.push_back(r);
    rs.egress.isolated = true;
    Rule any;
    any.any_peer = true;
    any.ports = {{kTcp, 0, 65535}};
    any.origin = {"prod", "egress-all-tcp", 1};
    rs.egress.rules.push_back(any);
    return rs;
}

std::vector<std::string> lines(const std::string& s) {
    std::vector<std::string> out;
    std::istringstream in(s);
    for (std::string l; std::getline(in, l);) out.push_back(l);
    return out;
}

void check_golden(const std::string& got, const std::string& want) {
    auto g = lines(got), w = lines(want);
    for (size_t i = 0; i < std::max(g.size(), w.size()); ++i) {
        INFO("line " << i + 1);
        CHECK((i < g.size() ? g[i] : "<missing>") == (i < w.size() ? w[i] : "<missing>"));
    }
}

const std::string kFull = R"GOLDEN(destroy table inet signet
add table inet signet
add set inet signet node_v4 { type ipv4_addr; flags interval; id 1 }
add element inet signet node_v4 { 192.168.1.10 (end 192.168.1.11) }
add set inet signet peers_v4 { type ipv4_addr; flags interval; id 2 }
add element inet signet peers_v4 { 10.0.0.0-10.0.0.255 (end 10.0.1.0), 240.0.0.0-255.255.255.255 (no end: max address) }
add set inet signet peers_v6 { type ipv6_addr; flags interval; id 3 }
add element inet signet peers_v6 { fd00::-fd00::ff (end fd00::100) }
add chain inet signet ingress { type filter hook input priority 0; policy accept; }
add chain inet signet egress { type filter hook output priority 0; policy accept; }
add rule inet signet ingress [ ct load state => reg 1 ] [ bitwise reg 1 = ( reg 1 & 0x00000006 ) ^ 0x00000000 ] [ cmp neq reg 1 0x00000000 ] [ immediate reg 0 accept ] comment "signet ingress base"
add rule inet signet ingress [ meta load iifname => reg 1 ] [ cmp eq reg 1 0x00006f6c 0x00000000 0x00000000 0x00000000 ] [ immediate reg 0 accept ] comment "signet ingress base"
add rule inet signet ingress [ meta load nfproto => reg 1 ] [ cmp eq reg 1 0x0000000a ] [ meta load l4proto => reg 1 ] [ cmp eq reg 1 0x0000003a ] [ payload load 1b @ transport header + 0 => reg 1 ] [ range eq reg 1 0x00000085 0x00000088 ] [ immediate reg 0 accept ] comment "signet ingress base"
add rule inet signet ingress [ meta load nfproto => reg 1 ] [ cmp eq reg 1 0x00000002 ] [ payload load 4b @ network header + 12 => reg 1 ] [ lookup reg 1 set node_v4 ] [ immediate reg 0 accept ] comment "signet ingress base"
add rule inet signet ingress [ meta load nfproto => reg 1 ] [ cmp eq reg 1 0x00000002 ] [ payload load 4b @ network header + 12 => reg 1 ] [ lookup reg 1 set peers_v4 ] [ meta load l4proto => reg 1 ] [ cmp eq reg 1 0x00000006 ] [ payload load 2b @ transport header + 2 => reg 1 ] [ range eq reg 1 0x00005000 0x00005100 ] [ counter pkts 0 bytes 0 ] [ immediate reg 0 accept ] comment "signet ingress prod/allow-web#0"
add rule inet signet ingress [ meta load nfproto => reg 1 ] [ cmp eq reg 1 0x00000002 ] [ payload load 4b @ network header + 12 => reg 1 ] [ lookup reg 1 set peers_v4 ] [ meta load l4proto => reg 1 ] [ cmp eq reg 1 0x00000011 ] [ payload load 2b @ transport header + 2 => reg 1 ] [ cmp eq reg 1 0x00003500 ] [ counter pkts 0 bytes 0 ] [ immediate reg 0 accept ] comment "signet ingress prod/allow-web#0"
add rule inet signet ingress [ meta load nfproto => reg 1 ] [ cmp eq reg 1 0x0000000a ] [ payload load 16b @ network header + 8 => reg 1 ] [ lookup reg 1 set peers_v6 ] [ meta load l4proto => reg 1 ] [ cmp eq reg 1 0x00000006 ] [ payload load 2b @ transport header + 2 => reg 1 ] [ range eq reg 1 0x00005000 0x00005100 ] [ counter pkts 0 bytes 0 ] [ immediate reg 0 accept ] comment "signet ingress prod/allow-web#0"
add rule inet signet ingress [ meta load nfproto => reg 1 ] [ cmp eq reg 1 0x0000000a ] [ payload load 16b @ network header + 8 => reg 1 ] [ lookup reg 1 set peers_v6 ] [ meta load l4proto => reg 1 ] [ cmp eq reg 1 0x00000011 ] [ payload load 2b @ transport header + 2 => reg 1 ] [ cmp eq reg 1 0x00003500 ] [ counter pkts 0 bytes 0 ] [ immediate reg 0 accept ] comment "signet ingress prod/allow-web#0"
add rule inet signet ingress [ limit rate 50/second burst 50 type packets flags 0x0 ] [ log prefix signet-deny ingress group 3471 snaplen 128 qthreshold 0 ] comment "signet ingress deny-log"
add rule inet signet ingress [ counter pkts 0 bytes 0 ] [ immediate reg 0 drop ] comment "signet ingress default-deny"
add rule inet signet egress [ ct load state => reg 1 ] [ bitwise reg 1 = ( reg 1 & 0x00000006 ) ^ 0x00000000 ] [ cmp neq reg 1 0x00000000 ] [ immediate reg 0 accept ] comment "signet egress base"
add rule inet signet egress [ meta load oifname => reg 1 ] [ cmp eq reg 1 0x00006f6c 0x00000000 0x00000000 0x00000000 ] [ immediate reg 0 accept ] comment "signet egress base"
add rule inet signet egress [ meta load nfproto => reg 1 ] [ cmp eq reg 1 0x0000000a ] [ meta load l4proto => reg 1 ] [ cmp eq reg 1 0x0000003a ] [ payload load 1b @ transport header + 0 => reg 1 ] [ range eq reg 1 0x00000085 0x00000088 ] [ immediate reg 0 accept ] comment "signet egress base"
add rule inet signet egress [ meta load l4proto => reg 1 ] [ cmp eq reg 1 0x00000006 ] [ counter pkts 0 bytes 0 ] [ immediate reg 0 accept ] comment "signet egress prod/egress-all-tcp#1"
add rule inet signet egress [ limit rate 50/second burst 50 type packets flags 0x0 ] [ log prefix signet-deny egress group 3471 snaplen 128 qthreshold 0 ] comment "signet egress deny-log"
add rule inet signet egress [ counter pkts 0 bytes 0 ] [ immediate reg 0 drop ] comment "signet egress default-deny"
)GOLDEN";

const std::string kUpdate = R"GOLDEN(delete element inet signet peers_v4 { 10.0.0.0-10.0.0.127 (end 10.0.0.128) }
add element inet signet peers_v4 { 10.0.0.0-10.0.0.255 (end 10.0.1.0) }
)GOLDEN";

}  // namespace

TEST_CASE("golden: full table batch") {
    auto got = describe_full_batch(sample(), true);
    REQUIRE(got.ok());
    check_golden(*got, kFull);
}

// Audit mode: the same table, but the end of each isolated chain logs with
// the audit prefix (same group, snaplen and rate limit) and accepts.
TEST_CASE("golden: audit mode logs with its own prefix and accepts instead of dropping") {
    PodRuleset rs = sample();
    rs.audit = true;
    auto got = describe_full_batch(rs, true);
    REQUIRE(got.ok());
    std::string want = kFull;
    auto replace = [&](const std::string& from, const std::string& to) {
        auto at = want.find(from);
        REQUIRE(at != std::string::npos);
        want.replace(at, from.size(), to);
    };
    for (const char* chain : {"ingress", "egress"}) {
        const std::string c = chain;
        replace("[ log prefix signet-deny " + c + " group 3471 snaplen 128 qthreshold 0 ] comment \"signet " + c +
                    " deny-log\"",
                "[ log prefix signet-audit " + c + " group 3471 snaplen 128 qthreshold 0 ] comment \"signet " + c +
                    " audit-log\"");
        replace("[ counter pkts 0 bytes 0 ] [ immediate reg 0 drop ] comment \"signet " + c + " default-deny\"",
                "[ counter pkts 0 bytes 0 ] [ immediate reg 0 accept ] comment \"signet " + c + " audit-accept\"");
    }
    check_golden(*got, want);
    CHECK(got->find(" drop ") == std::string::npos);
    CHECK(std::string(kAuditLogPrefix) == "signet-audit ");
    // Switching the mode is a structure change (a full replace), not an element update.
    CHECK_FALSE(rs.same_structure(sample()));
    // A pod that is not isolated has no default deny, so nothing to audit either.
    PodRuleset open;
    open.audit = true;
    auto o = describe_full_batch(open, true);
    REQUIRE(o.ok());
    CHECK(o->find("audit") == std::string::npos);
}

TEST_CASE("golden: without NFT_MSG_DESTROYTABLE the delete is made idempotent") {
    auto got = describe_full_batch(sample(), false);
    REQUIRE(got.ok());
    auto l = lines(*got);
    REQUIRE(l.size() >= 3);
    CHECK(l[0] == "add table inet signet");
    CHECK(l[1] == "delete table inet signet");
    CHECK(l[2] == "add table inet signet");
}

TEST_CASE("golden: membership-only update sends only element changes") {
    PodRuleset desired = sample(), current = sample();
    current.sets["peers_v4"].elements = {Range{v4("10.0.0.0"), v4("10.0.0.127")},
                                         Range{v4("240.0.0.0"), v4("255.255.255.255")}};
    REQUIRE(desired.same_structure(current));
    auto got = describe_update_batch(desired, current);
    REQUIRE(got.ok());
    check_golden(*got, kUpdate);
    auto none = describe_update_batch(desired, desired);
    REQUIRE(none.ok());
    CHECK(none->empty());
}

// Pod-address sets are hash sets (no NFT_SET_INTERVAL: no rbtree): one
// element per address, and a membership change sends only the addresses
// that differ, even where the compiler's merged ranges changed shape.
PodRuleset hash_sample() {
    PodRuleset rs = sample();
    rs.sets["node_v4"].interval = false;
    rs.sets["peers_v4"] = AddrSet{Family::v4, {Range{v4("10.0.0.1"), v4("10.0.0.3")}, Range{v4("10.0.0.9"), v4("10.0.0.9")}},
                                  false};
    rs.sets["peers_v6"] = AddrSet{Family::v6, {Range{v6("fd00::1"), v6("fd00::1")}}, false};
    return rs;
}

const std::string kHashSets = R"GOLDEN(add set inet signet node_v4 { type ipv4_addr; id 1 }
add element inet signet node_v4 { 192.168.1.10 }
add set inet signet peers_v4 { type ipv4_addr; id 2 }
add element inet signet peers_v4 { 10.0.0.1, 10.0.0.2, 10.0.0.3, 10.0.0.9 }
add set inet signet peers_v6 { type ipv6_addr; id 3 }
add element inet signet peers_v6 { fd00::1 }
)GOLDEN";

const std::string kHashUpdate = R"GOLDEN(delete element inet signet peers_v4 { 10.0.0.2 }
delete element inet signet peers_v6 { fd00::1 }
add element inet signet peers_v4 { 10.0.0.4, 10.0.0.8 }
)GOLDEN";

TEST_CASE("golden: pod-address sets are hash sets, updated address by address") {
    auto got = describe_full_batch(hash_sample(), true);
    REQUIRE(got.ok());
    std::string sets;
    for (const auto& l : lines(*got))
        if (l.rfind("add set ", 0) == 0 || l.rfind("add element ", 0) == 0) sets += l + "\n";
    check_golden(sets, kHashSets);
    // The rules refer to the sets as before (lookups by name and id).
    CHECK(got->find("[ lookup reg 1 set peers_v4 ]") != std::string::npos);

    // [.1-.3, .9] -> [.1, .3-.4, .8-.9], the v6 peer gone, the node unchanged:
    // two merged ranges changed shape, three addresses differ.
    PodRuleset current = hash_sample(), desired = hash_sample();
    desired.sets["peers_v4"].elements = {Range{v4("10.0.0.1"), v4("10.0.0.1")}, Range{v4("10.0.0.3"), v4("10.0.0.4")},
                                         Range{v4("10.0.0.8"), v4("10.0.0.9")}};
    desired.sets["peers_v6"].elements.clear();
    REQUIRE(desired.same_structure(current));
    auto upd = describe_update_batch(desired, current);
    REQUIRE(upd.ok());
    check_golden(*upd, kHashUpdate);

    // A set that changes kind (hash <-> interval) is a structural change.
    PodRuleset other = hash_sample();
    other.sets["peers_v4"].interval = true;
    CHECK_FALSE(other.same_structure(current));
    CHECK_FALSE(other == current);
}

TEST_CASE("ranges_minus: what of a is not in b, on ranges") {
    auto R = [](const char* a, const char* b) { return Range{v4(a), v4(b)}; };
    std::vector<Range> a = {R("10.0.0.0", "10.0.0.255"), R("10.0.2.0", "10.0.2.9"), R("255.255.255.250", "255.255.255.255")};
    std::vector<Range> b = {R("9.0.0.0", "10.0.0.3"), R("10.0.0.10", "10.0.0.10"), R("10.0.0.250", "10.0.2.1"),
                            R("255.255.255.255", "255.255.255.255")};
    auto d = ranges_minus(Family::v4, a, b);
    REQUIRE(d.size() == 4);
    CHECK(d[0] == R("10.0.0.4", "10.0.0.9"));
    CHECK(d[1] == R("10.0.0.11", "10.0.0.249"));
    CHECK(d[2] == R("10.0.2.2", "10.0.2.9"));
    CHECK(d[3] == R("255.255.255.250", "255.255.255.254"));
    CHECK(ranges_minus(Family::v4, a, a).empty());
    CHECK(ranges_minus(Family::v4, a, {}) == a);
    CHECK(ranges_minus(Family::v4, {}, b).empty());
    CHECK(ranges_minus(Family::v4, b, {R("0.0.0.0", "255.255.255.255")}).empty());
}

TEST_CASE("golden: SYN / SYN-ACK queue rule, both backends, no bypass") {
    const std::string match =
        "[ meta load l4proto => reg 1 ] [ cmp eq reg 1 0x00000006 ] "
        "[ payload load 1b @ transport header + 13 => reg 1 ] "
        "[ bitwise reg 1 = ( reg 1 & 0x00000007 ) ^ 0x00000000 ] [ cmp eq reg 1 0x00000002 ]";
    CHECK(describe_syn_queue_rule("signet", "ingress", 3, QueueBackend::nft_queue) ==
          "add rule inet signet ingress " + match + " [ queue num 3 ] comment \"signet handshake-queue 3\"");
    CHECK(describe_syn_queue_rule("signet", "ingress", 3, QueueBackend::xt_nfqueue) ==
          "add rule inet signet ingress " + match +
              " [ target name NFQUEUE rev 3 ] comment \"signet handshake-queue 3\"");
}

TEST_CASE("invalid rule sets are refused before anything is sent") {
    PodRuleset rs = sample();
    rs.ingress.rules[0].set_v4 = "nope";
    CHECK_FALSE(describe_full_batch(rs).ok());
    rs = sample();
    rs.ingress.rules[0].set_v4 = "peers_v6";  // wrong family
    CHECK_FALSE(describe_full_batch(rs).ok());
    rs = sample();
    rs.ingress.rules[0].ports = {{kTcp, 90, 80}};
    CHECK_FALSE(describe_full_batch(rs).ok());
}

TEST_CASE("rule comments carry the origin") {
    Origin o{"team-a", "allow-db", 7};
    auto c = rule_comment(Dir::egress, o);
    CHECK(c == "signet egress team-a/allow-db#7");
    auto p = parse_rule_comment(c);
    REQUIRE(p.has_value());
    CHECK(p->first == Dir::egress);
    CHECK(p->second == o);
    CHECK_FALSE(parse_rule_comment("signet ingress default-deny").has_value());
    CHECK_FALSE(parse_rule_comment("signet ingress base").has_value());
    CHECK_FALSE(parse_rule_comment("other ingress a/b#1").has_value());
    CHECK_FALSE(parse_rule_comment("signet ingress a/b#x").has_value());
    Origin longname{"ns", std::string(300, 'n'), 1};
    auto lc = rule_comment(Dir::ingress, longname);
    CHECK(lc.size() <= 250);
    CHECK(parse_rule_comment(lc).has_value());
}

TEST_CASE("normalize_ranges sorts, merges overlapping and adjacent ranges, handles the top") {
    auto r = normalize_ranges(Family::v4, {Range{v4("10.0.0.5"), v4("10.0.0.9")}, Range{v4("10.0.0.0"), v4("10.0.0.4")},
                                           Range{v4("10.0.1.0"), v4("10.0.1.0")},
                                           Range{v4("255.255.255.0"), v4("255.255.255.255")},
                                           Range{v4("255.255.255.255"), v4("255.255.255.255")}});
    REQUIRE(r.size() == 3);
    CHECK(r[0] == Range{v4("10.0.0.0"), v4("10.0.0.9")});
    CHECK(r[1] == Range{v4("10.0.1.0"), v4("10.0.1.0")});
    CHECK(r[2] == Range{v4("255.255.255.0"), v4("255.255.255.255")});
    auto r6 = normalize_ranges(Family::v6, {Range{v6("::"), v6("::1")}, Range{v6("::2"), v6("::2")}});
    REQUIRE(r6.size() == 1);
    CHECK(r6[0] == Range{v6("::"), v6("::2")});
}

TEST_CASE("fake backend records calls") {
    FakeBackend fake;
    Netns ns = Netns::detached("/var/run/netns/pod-1");
    PodRuleset a = sample(), b = sample();
    b.sets["peers_v4"].elements.clear();
    CHECK(fake.apply(ns, a, nullptr).ok());
    CHECK(fake.apply(ns, b, &a).ok());
    REQUIRE(fake.calls.size() == 2);
    CHECK_FALSE(fake.calls[0].incremental);
    CHECK(fake.calls[1].incremental);
    CHECK(fake.tables.at(ns.path()) == b);
    fake.fail_next(signet::make_error(5, "boom"));
    CHECK_FALSE(fake.remove(ns).ok());
    CHECK(fake.remove(ns).ok());
    CHECK_FALSE(fake.table_exists(ns).value());
    CHECK(fake.count(FakeBackend::Call::apply) == 2);
    // A detached handle never reaches the kernel.
    CHECK_FALSE(ns.nfnl().ok());
}

TEST_CASE("deny log: IP packets parsed to the 5-tuple, malformed ones refused") {
    auto hex = [](const char* h) {
        std::vector<uint8_t> out;
        for (size_t i = 0; h[i] != '\0' && h[i + 1] != '\0'; i += 2) out.push_back(static_cast<uint8_t>(std::stoi(std::string(h + i, 2), nullptr, 16)));
        return out;
    };
    auto v4 = hex("4500003c1c4640004006b1e60a0000020a0000039c4a1f90a6f2c1f500000000a002faf0fe300000020405b40402080a0001020304050607");
    auto p = signet::nft::parse_ip_packet(v4);
    REQUIRE(p.has_value());
    CHECK(p->tuple.family == signet::nft::Family::v4);
    CHECK(p->tuple.proto == 6);
    CHECK(p->tuple.sport == 40010);
    CHECK(p->tuple.dport == 8080);
    CHECK(p->length == 60);
    CHECK(p->tcp_flags == 0x02);  // SYN
    CHECK(p->tuple.src.bytes[3] == 2);
    CHECK(p->tuple.dst.bytes[3] == 3);
    // Truncated before the ports: addresses and protocol, no ports.
    auto cut = signet::nft::parse_ip_packet(std::span<const uint8_t>(v4.data(), 21));
    REQUIRE(cut.has_value());
    CHECK(cut->tuple.dport == 0);
    CHECK_FALSE(signet::nft::parse_ip_packet(std::span<const uint8_t>(v4.data(), 19)).has_value());
    v4[0] = 0x43;  // IHL 12 bytes < 20
    CHECK_FALSE(signet::nft::parse_ip_packet(v4).has_value());
    // IPv6 with a hop-by-hop header before TCP.
    std::vector<uint8_t> v6 = hex("6000000000300040");
    v6.resize(40);
    v6[23] = 1;
    v6[39] = 2;
    auto hbh = hex("0600000000000000");  // next header TCP, length 8
    v6.insert(v6.end(), hbh.begin(), hbh.end());
    auto tcp = hex("9c4a0050a6f2c1f500000000a002faf0fe300000");
    v6.insert(v6.end(), tcp.begin(), tcp.end());
    auto q = signet::nft::parse_ip_packet(v6);
    REQUIRE(q.has_value());
    CHECK(q->tuple.family == signet::nft::Family::v6);
    CHECK(q->tuple.proto == 6);
    CHECK(q->tuple.dport == 80);
    CHECK_FALSE(signet::nft::parse_ip_packet(std::vector<uint8_t>{0x70, 0, 0, 0}).has_value());  // version 7
}

TEST_CASE("golden: with the handshake, tokens and proofs are queued before conntrack, judged ones accepted") {
    PodRuleset rs = sample();
    rs.handshake = QueueBackend::xt_nfqueue;
    auto got = describe_full_batch(rs);
    REQUIRE(got.ok());
    auto l = lines(*got);
    auto has = [&](const std::string& want) { return std::find(l.begin(), l.end(), want) != l.end(); };
    // A chain at prerouting, priority raw (-300), queues every TCP segment whose
    // option 253 carries signet's ExID 0x5347, whatever conntrack thinks of it.
    CHECK(has("add chain inet signet handshake_in { type filter hook prerouting priority -300; policy accept; }"));
    CHECK(has("add rule inet signet handshake_in [ meta load l4proto => reg 1 ] [ cmp eq reg 1 0x00000006 ] "
              "[ exthdr load tcpopt 2b @ 253 + 2 => reg 1 ] [ cmp eq reg 1 0x00004753 ] "
              "[ target name NFQUEUE rev 3 ] comment \"signet handshake-token 3472\""));
    // The ingress chain accepts what that verdict marked, before it queues SYNs.
    auto judged = std::find_if(l.begin(), l.end(), [](const std::string& s) {
        return s.find("add rule inet signet ingress") == 0 && s.find("signet handshake-judged") != std::string::npos;
    });
    auto syn = std::find_if(l.begin(), l.end(), [](const std::string& s) {
        return s.find("add rule inet signet ingress") == 0 && s.find("signet handshake-queue") != std::string::npos;
    });
    REQUIRE(judged != l.end());
    REQUIRE(syn != l.end());
    CHECK(judged < syn);
    CHECK(*judged ==
          "add rule inet signet ingress [ meta load mark => reg 1 ] "
          "[ bitwise reg 1 = ( reg 1 & 0x00000700 ) ^ 0x00000000 ] [ cmp neq reg 1 0x00000000 ] "
          "[ immediate reg 0 accept ] comment \"signet handshake-judged\"");
    // Not in egress: the verdicts on the pod's own segments are final there.
    CHECK(std::none_of(l.begin(), l.end(), [](const std::string& s) {
        return s.find("add rule inet signet egress") == 0 && s.find("handshake-judged") != std::string::npos;
    }));
}

TEST_CASE("golden: enforce mode: no TCP segment reaches the address rules; closing connections are checked") {
    PodRuleset rs = sample();
    rs.handshake = QueueBackend::xt_nfqueue;
    CHECK_FALSE(describe_full_batch(rs)->find("handshake-not-syn") != std::string::npos);  // without: none
    rs.handshake_enforce = true;
    auto got = describe_full_batch(rs);
    REQUIRE(got.ok());
    auto l = lines(*got);
    auto order_of = [&](const std::string& chain, std::vector<std::string>& rules) {
        std::vector<std::string> order;
        for (const auto& s : l) {
            if (s.find("add rule inet signet " + chain + " ") != 0) continue;
            auto c = s.find("comment \"");
            order.push_back(c == std::string::npos ? "" : s.substr(c + 9, s.size() - c - 10));
            rules.push_back(s);
        }
        return order;
    };
    std::vector<std::string> rules;
    const auto order = order_of("ingress", rules);
    auto at = [&](const std::string& comment) { return std::find(order.begin(), order.end(), comment) - order.begin(); };
    const std::string t = "signet ingress handshake-";
    // After the queue rules, before `ct state established` and every address rule.
    CHECK(at("signet handshake-proof 3472") < at(t + "not-syn"));
    CHECK(at(t + "not-syn") < at(t + "closing"));
    CHECK(at(t + "closing") < at(t + "judged"));
    CHECK(at(t + "judged") < at(t + "reset"));
    CHECK(at(t + "reset") < at(t + "closed-check 3472"));
    CHECK(std::find(order.begin() + at(t + "closed-check 3472"), order.end(), "signet ingress base") != order.end());
    CHECK(std::count(order.begin(), order.end(), t + "judged") == 3);  // authenticated, address, deferred
    // `ct state new` drops only what no judged segment made (mark 0).
    CHECK(rules[at(t + "not-syn")].find("[ ct load mark => reg 1 ] [ bitwise reg 1 = ( reg 1 & 0x00000700 ) ^ "
                                        "0x00000000 ] [ cmp eq reg 1 0x00000000 ]") != std::string::npos);
    // The rest of TCP (closing, invalid, unjudged) goes to the queue with the packet mark 0x700:
    // it passes only to a socket of its own (the engine's lookup), never to a listener.
    CHECK(rules[at(t + "closed-check 3472")] ==
          "add rule inet signet ingress [ meta load l4proto => reg 1 ] [ cmp eq reg 1 0x00000006 ] "
          "[ meta load mark => reg 1 ] [ bitwise reg 1 = ( reg 1 & 0xfffff8ff ) ^ 0x00000700 ] "
          "[ meta set mark with reg 1 ] [ target name NFQUEUE rev 3 ] comment \"signet ingress handshake-closed-check 3472\"");
    // Egress: only the local server's FIN or RST (ct direction reply) marks it closing; the
    // pod's own segments are not dropped (a TIME_WAIT socket's challenge ACK must get out).
    std::vector<std::string> erules;
    const auto eorder = order_of("egress", erules);
    CHECK(std::count_if(eorder.begin(), eorder.end(), [](const std::string& c) {
              return c.find("handshake-") != std::string::npos && c.find("handshake-queue") == std::string::npos &&
                     c.find("handshake-proof") == std::string::npos;
          }) == 1);
    auto closing = std::find_if(l.begin(), l.end(), [](const std::string& s) {
        return s.find("signet egress handshake-closing") != std::string::npos;
    });
    REQUIRE(closing != l.end());
    CHECK(closing->find("[ bitwise reg 1 = ( reg 1 & 0x00000005 ) ^ 0x00000000 ] [ cmp neq reg 1 0x00000000 ] "
                        "[ ct load direction => reg 1 ] [ cmp eq reg 1 0x00000001 ]") != std::string::npos);
    CHECK(closing->find("[ ct load mark => reg 1 ] [ bitwise reg 1 = ( reg 1 & 0xfffff8ff ) ^ 0x00000700 ] "
                        "[ ct set mark with reg 1 ]") != std::string::npos);
    // Deferred Service connections' mark is copied to conntrack in the pod's table.
    CHECK(std::any_of(l.begin(), l.end(), [](const std::string& s) {
        return s.find("add rule inet signet ingress_mark") == 0 && s.find("^ 0x00000600 ] [ ct set mark") != std::string::npos;
    }));
}

namespace {
const std::string kNode = R"GOLDEN(destroy table inet signet_node
add table inet signet_node
add set inet signet_node judged_v4 { type ipv4_addr; flags interval; id 1 }
add element inet signet_node judged_v4 { 10.244.1.2-10.244.1.3 (end 10.244.1.4) }
add set inet signet_node judged_v6 { type ipv6_addr; flags interval; id 2 }
add set inet signet_node svc_v4 { type ipv4_addr; flags interval; id 3 }
add element inet signet_node svc_v4 { 10.96.0.10 (end 10.96.0.11) }
add set inet signet_node svc_v6 { type ipv6_addr; flags interval; id 4 }
add chain inet signet_node service_judge { type filter hook forward priority -10; policy accept; }
add rule inet signet_node service_judge [ meta load nfproto => reg 1 ] [ cmp eq reg 1 0x00000002 ] [ ct load status => reg 1 ] [ bitwise reg 1 = ( reg 1 & 0x00000020 ) ^ 0x00000000 ] [ cmp neq reg 1 0x00000000 ] [ payload load 4b @ network header + 12 => reg 1 ] [ lookup reg 1 set judged_v4 ] [ meta load l4proto => reg 1 ] [ cmp eq reg 1 0x00000006 ] [ payload load 1b @ transport header + 13 => reg 1 ] [ bitwise reg 1 = ( reg 1 & 0x00000012 ) ^ 0x00000000 ] [ cmp eq reg 1 0x00000002 ] [ target name NFQUEUE rev 3 ] comment "signet service-judge-syn 3473"
add rule inet signet_node service_judge [ meta load nfproto => reg 1 ] [ cmp eq reg 1 0x00000002 ] [ ct load state => reg 1 ] [ bitwise reg 1 = ( reg 1 & 0x00000008 ) ^ 0x00000000 ] [ cmp neq reg 1 0x00000000 ] [ ct load status => reg 1 ] [ bitwise reg 1 = ( reg 1 & 0x00000020 ) ^ 0x00000000 ] [ cmp neq reg 1 0x00000000 ] [ payload load 4b @ network header + 12 => reg 1 ] [ lookup reg 1 set judged_v4 ] [ target name NFQUEUE rev 3 ] comment "signet service-judge 3473"
add rule inet signet_node service_judge [ meta load nfproto => reg 1 ] [ cmp eq reg 1 0x00000002 ] [ payload load 4b @ network header + 12 => reg 1 ] [ lookup reg 1 set judged_v4 ] [ payload load 4b @ network header + 16 => reg 1 ] [ lookup reg 1 set svc_v4 ] [ counter pkts 0 bytes 0 ] [ immediate reg 0 drop ] comment "signet service-untranslated"
add rule inet signet_node service_judge [ meta load nfproto => reg 1 ] [ cmp eq reg 1 0x0000000a ] [ ct load status => reg 1 ] [ bitwise reg 1 = ( reg 1 & 0x00000020 ) ^ 0x00000000 ] [ cmp neq reg 1 0x00000000 ] [ payload load 16b @ network header + 8 => reg 1 ] [ lookup reg 1 set judged_v6 ] [ meta load l4proto => reg 1 ] [ cmp eq reg 1 0x00000006 ] [ payload load 1b @ transport header + 13 => reg 1 ] [ bitwise reg 1 = ( reg 1 & 0x00000012 ) ^ 0x00000000 ] [ cmp eq reg 1 0x00000002 ] [ target name NFQUEUE rev 3 ] comment "signet service-judge-syn 3473"
add rule inet signet_node service_judge [ meta load nfproto => reg 1 ] [ cmp eq reg 1 0x0000000a ] [ ct load state => reg 1 ] [ bitwise reg 1 = ( reg 1 & 0x00000008 ) ^ 0x00000000 ] [ cmp neq reg 1 0x00000000 ] [ ct load status => reg 1 ] [ bitwise reg 1 = ( reg 1 & 0x00000020 ) ^ 0x00000000 ] [ cmp neq reg 1 0x00000000 ] [ payload load 16b @ network header + 8 => reg 1 ] [ lookup reg 1 set judged_v6 ] [ target name NFQUEUE rev 3 ] comment "signet service-judge 3473"
add rule inet signet_node service_judge [ meta load nfproto => reg 1 ] [ cmp eq reg 1 0x0000000a ] [ payload load 16b @ network header + 8 => reg 1 ] [ lookup reg 1 set judged_v6 ] [ payload load 16b @ network header + 24 => reg 1 ] [ lookup reg 1 set svc_v6 ] [ counter pkts 0 bytes 0 ] [ immediate reg 0 drop ] comment "signet service-untranslated"
)GOLDEN";
}  // namespace

TEST_CASE("golden: the node's table queues the judged pods' translated connections, drops untranslated frontends") {
    NodeRuleset n;
    n.queue = QueueBackend::xt_nfqueue;
    n.judged_v4.elements = {Range{v4("10.244.1.2"), v4("10.244.1.3")}};
    n.svc_v4.elements = {Range{v4("10.96.0.10"), v4("10.96.0.10")}};
    auto got = describe_node_batch(n, true);
    REQUIRE(got.ok());
    check_golden(*got, kNode);
    // With the identity handshake: the backend's SYN-ACK token and the final ACK
    // (proof due) of the judged pods' translated connections are queued too, and a
    // chain copies the verdicts' mark bits to conntrack.
    n.handshake = true;
    auto hs = describe_node_batch(n, true);
    REQUIRE(hs.ok());
    std::vector<std::string> added;
    auto base = lines(*got);
    for (const auto& l : lines(*hs))
        if (std::find(base.begin(), base.end(), l) == base.end()) added.push_back(l);
    const std::vector<std::string> want_added = {
        R"GOLDEN(add rule inet signet_node service_judge [ meta load nfproto => reg 1 ] [ cmp eq reg 1 0x00000002 ] [ ct load status => reg 1 ] [ bitwise reg 1 = ( reg 1 & 0x00000020 ) ^ 0x00000000 ] [ cmp neq reg 1 0x00000000 ] [ payload load 4b @ network header + 16 => reg 1 ] [ lookup reg 1 set judged_v4 ] [ meta load l4proto => reg 1 ] [ cmp eq reg 1 0x00000006 ] [ exthdr load tcpopt 2b @ 253 + 2 => reg 1 ] [ cmp eq reg 1 0x00004753 ] [ target name NFQUEUE rev 3 ] comment "signet service-handshake-token 3473")GOLDEN",
        R"GOLDEN(add rule inet signet_node service_judge [ meta load nfproto => reg 1 ] [ cmp eq reg 1 0x00000002 ] [ ct load status => reg 1 ] [ bitwise reg 1 = ( reg 1 & 0x00000020 ) ^ 0x00000000 ] [ cmp neq reg 1 0x00000000 ] [ ct load mark => reg 1 ] [ bitwise reg 1 = ( reg 1 & 0x00000700 ) ^ 0x00000000 ] [ cmp eq reg 1 0x00000400 ] [ payload load 4b @ network header + 12 => reg 1 ] [ lookup reg 1 set judged_v4 ] [ target name NFQUEUE rev 3 ] comment "signet service-handshake-proof 3473")GOLDEN",
        R"GOLDEN(add rule inet signet_node service_judge [ meta load nfproto => reg 1 ] [ cmp eq reg 1 0x0000000a ] [ ct load status => reg 1 ] [ bitwise reg 1 = ( reg 1 & 0x00000020 ) ^ 0x00000000 ] [ cmp neq reg 1 0x00000000 ] [ payload load 16b @ network header + 24 => reg 1 ] [ lookup reg 1 set judged_v6 ] [ meta load l4proto => reg 1 ] [ cmp eq reg 1 0x00000006 ] [ exthdr load tcpopt 2b @ 253 + 2 => reg 1 ] [ cmp eq reg 1 0x00004753 ] [ target name NFQUEUE rev 3 ] comment "signet service-handshake-token 3473")GOLDEN",
        R"GOLDEN(add rule inet signet_node service_judge [ meta load nfproto => reg 1 ] [ cmp eq reg 1 0x0000000a ] [ ct load status => reg 1 ] [ bitwise reg 1 = ( reg 1 & 0x00000020 ) ^ 0x00000000 ] [ cmp neq reg 1 0x00000000 ] [ ct load mark => reg 1 ] [ bitwise reg 1 = ( reg 1 & 0x00000700 ) ^ 0x00000000 ] [ cmp eq reg 1 0x00000400 ] [ payload load 16b @ network header + 8 => reg 1 ] [ lookup reg 1 set judged_v6 ] [ target name NFQUEUE rev 3 ] comment "signet service-handshake-proof 3473")GOLDEN",
        R"GOLDEN(add chain inet signet_node service_mark { type filter hook forward priority 10; policy accept; })GOLDEN",
        R"GOLDEN(add rule inet signet_node service_mark [ meta load mark => reg 1 ] [ bitwise reg 1 = ( reg 1 & 0x00000700 ) ^ 0x00000100 ] [ cmp eq reg 1 0x00000000 ] [ ct load mark => reg 1 ] [ bitwise reg 1 = ( reg 1 & 0xfffff8ff ) ^ 0x00000100 ] [ ct set mark with reg 1 ] comment "signet handshake-mark")GOLDEN",
        R"GOLDEN(add rule inet signet_node service_mark [ meta load mark => reg 1 ] [ bitwise reg 1 = ( reg 1 & 0x00000700 ) ^ 0x00000200 ] [ cmp eq reg 1 0x00000000 ] [ ct load mark => reg 1 ] [ bitwise reg 1 = ( reg 1 & 0xfffff8ff ) ^ 0x00000200 ] [ ct set mark with reg 1 ] comment "signet handshake-mark")GOLDEN",
        R"GOLDEN(add rule inet signet_node service_mark [ meta load mark => reg 1 ] [ bitwise reg 1 = ( reg 1 & 0x00000700 ) ^ 0x00000300 ] [ cmp eq reg 1 0x00000000 ] [ ct load mark => reg 1 ] [ bitwise reg 1 = ( reg 1 & 0xfffff8ff ) ^ 0x00000300 ] [ ct set mark with reg 1 ] comment "signet handshake-mark")GOLDEN",
        R"GOLDEN(add rule inet signet_node service_mark [ meta load mark => reg 1 ] [ bitwise reg 1 = ( reg 1 & 0x00000700 ) ^ 0x00000400 ] [ cmp eq reg 1 0x00000000 ] [ ct load mark => reg 1 ] [ bitwise reg 1 = ( reg 1 & 0xfffff8ff ) ^ 0x00000400 ] [ ct set mark with reg 1 ] comment "signet handshake-mark")GOLDEN",
        R"GOLDEN(add rule inet signet_node service_mark [ meta load mark => reg 1 ] [ bitwise reg 1 = ( reg 1 & 0x00000700 ) ^ 0x00000500 ] [ cmp eq reg 1 0x00000000 ] [ ct load mark => reg 1 ] [ bitwise reg 1 = ( reg 1 & 0xfffff8ff ) ^ 0x00000500 ] [ ct set mark with reg 1 ] comment "signet handshake-mark")GOLDEN"};
    CHECK(added == want_added);
    NodeRuleset none;  // no queue backend: refused, never a table that cannot judge
    CHECK_FALSE(describe_node_batch(none, true).ok());
}

TEST_CASE("golden: an isolated egress defers Service frontends and this node's NodePorts, before its rules") {
    PodRuleset rs = sample();
    rs.defer_services = true;
    rs.sets["svc_v4"] = AddrSet{Family::v4, {Range{v4("10.96.0.10"), v4("10.96.0.10")}}};
    rs.node_ports = {{kTcp, 30080, 30080}, {kUdp, 30000, 30002}};
    auto got = describe_full_batch(rs, true);
    REQUIRE(got.ok());
    std::vector<std::string> deferred;
    size_t first_deferred = 0, first_rule = 0, i = 0;
    for (const auto& l : lines(*got)) {
        ++i;
        if (l.find("service-deferred") != std::string::npos) {
            deferred.push_back(l);
            if (!first_deferred) first_deferred = i;
        }
        if (!first_rule && l.find("egress prod/egress-all-tcp#1") != std::string::npos) first_rule = i;
    }
    const std::vector<std::string> want = {
        R"GOLDEN(add rule inet signet egress [ meta load nfproto => reg 1 ] [ cmp eq reg 1 0x00000002 ] [ payload load 4b @ network header + 16 => reg 1 ] [ lookup reg 1 set svc_v4 ] [ immediate reg 0 accept ] comment "signet egress service-deferred")GOLDEN",
        R"GOLDEN(add rule inet signet egress [ meta load nfproto => reg 1 ] [ cmp eq reg 1 0x00000002 ] [ payload load 4b @ network header + 16 => reg 1 ] [ lookup reg 1 set node_v4 ] [ meta load l4proto => reg 1 ] [ cmp eq reg 1 0x00000006 ] [ payload load 2b @ transport header + 2 => reg 1 ] [ cmp eq reg 1 0x00008075 ] [ immediate reg 0 accept ] comment "signet egress service-deferred")GOLDEN",
        R"GOLDEN(add rule inet signet egress [ meta load nfproto => reg 1 ] [ cmp eq reg 1 0x00000002 ] [ payload load 4b @ network header + 16 => reg 1 ] [ lookup reg 1 set node_v4 ] [ meta load l4proto => reg 1 ] [ cmp eq reg 1 0x00000011 ] [ payload load 2b @ transport header + 2 => reg 1 ] [ range eq reg 1 0x00003075 0x00003275 ] [ immediate reg 0 accept ] comment "signet egress service-deferred")GOLDEN"};
    CHECK(deferred == want);
    CHECK(first_deferred > 0);
    CHECK(first_deferred < first_rule);
    // Not isolated, or not deferring: no such rule.
    rs.defer_services = false;
    auto plain = describe_full_batch(rs, true);
    REQUIRE(plain.ok());
    CHECK(plain->find("service-deferred") == std::string::npos);
    // A different structure (a full write), not a membership change.
    PodRuleset a = sample(), b = sample();
    b.defer_services = true;
    CHECK_FALSE(a.same_structure(b));
}
