// Root integration test of controller/nft: real network namespaces, veth,
// nftables, conntrack and NFQUEUE. Exits 77 (meson: SKIP) when not root.
//
// Topology (names carry the pid; all removed at exit, also on failure):
//   netns A ("the pod", tables programmed here)  vA 10.77.0.1/24 fd77::1/64
//   netns B (peers)                               vB 10.77.0.2 .3 .9 /24, fd77::2 ::3 /64
//   netns C (NFQUEUE emission test, lo only)
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <libmnl/libmnl.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "nft/conntrack.h"
#include "nft/netlink_backend.h"

using namespace signet::nft;

namespace {

const std::string kPrefix = "signet-nft-";
std::string g_ns[3];  // A, B, C names
bool g_created = false;

int sh(const std::string& cmd) {
    int rc = std::system((cmd + " >/dev/null 2>&1").c_str());
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

void cleanup() {
    if (!g_created) return;
    g_created = false;
    for (const auto& n : g_ns) sh("ip netns del " + n);
}

void on_signal(int sig) {
    cleanup();
    signal(sig, SIG_DFL);
    raise(sig);
}

// Netns left behind by earlier runs that died hard (SIGKILL).
void remove_stale() {
    DIR* d = opendir("/var/run/netns");
    if (!d) return;
    std::vector<std::string> stale;
    while (dirent* e = readdir(d)) {
        std::string n = e->d_name;
        if (n.rfind(kPrefix, 0) != 0) continue;
        int pid = std::atoi(n.c_str() + kPrefix.size());
        if (pid > 0 && kill(pid, 0) != 0 && errno == ESRCH) stale.push_back(n);
    }
    closedir(d);
    for (const auto& n : stale) sh("ip netns del " + n);
}

bool setup_topology() {
    std::string p = std::to_string(getpid());
    g_ns[0] = kPrefix + p + "-a";
    g_ns[1] = kPrefix + p + "-b";
    g_ns[2] = kPrefix + p + "-c";
    g_created = true;
    const std::string A = g_ns[0], B = g_ns[1], C = g_ns[2];
    std::vector<std::string> steps = {
        "ip netns add " + A,
        "ip netns add " + B,
        "ip netns add " + C,
        "ip link add vA netns " + A + " type veth peer name vB netns " + B,
        "ip -n " + A + " addr add 10.77.0.1/24 dev vA",
        "ip -n " + A + " addr add fd77::1/64 dev vA nodad",
        "ip -n " + B + " addr add 10.77.0.2/24 dev vB",
        "ip -n " + B + " addr add 10.77.0.3/24 dev vB",
        "ip -n " + B + " addr add 10.77.0.9/24 dev vB",
        "ip -n " + B + " addr add fd77::2/64 dev vB nodad",
        "ip -n " + B + " addr add fd77::3/64 dev vB nodad",
        "ip -n " + A + " link set lo up",
        "ip -n " + B + " link set lo up",
        "ip -n " + C + " link set lo up",
        "ip -n " + A + " link set vA up",
        "ip -n " + B + " link set vB up",
    };
    for (const auto& s : steps) {
        if (sh(s) != 0) {
            std::fprintf(stderr, "setup failed: %s\n", s.c_str());
            return false;
        }
    }
    return true;
}

Netns open_ns(int i) {
    auto r = Netns::open("/var/run/netns/" + g_ns[i]);
    REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
    return std::move(*r);
}

// ------------------------------------------------------------ addresses, rule sets

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
Range one(Addr a) { return Range{a, a}; }

PodRuleset base_ruleset() {
    PodRuleset rs;
    rs.sets["node_v4"] = AddrSet{Family::v4, {one(v4("10.77.0.9"))}};
    rs.sets["node_v6"] = AddrSet{Family::v6, {}};
    rs.sets["peers_v4"] = AddrSet{Family::v4, {one(v4("10.77.0.2"))}};
    rs.sets["peers_v6"] = AddrSet{Family::v6, {one(v6("fd77::2"))}};
    // Edge cases: from the lowest address, up to the highest one (no end element).
    rs.sets["edge_v4"] = AddrSet{Family::v4, {Range{v4("0.0.0.0"), v4("0.0.0.9")},
                                              Range{v4("250.0.0.0"), v4("255.255.255.255")}}};
    rs.sets["edge_v6"] = AddrSet{Family::v6, {Range{v6("ff00::"), v6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")}}};
    rs.ingress.isolated = true;
    Rule web;
    web.set_v4 = "peers_v4";
    web.set_v6 = "peers_v6";
    web.ports = {PortRange{kTcp, 8000, 8001}};
    web.origin = Origin{"ns-a", "allow-web", 0};
    rs.ingress.rules.push_back(web);
    Rule edge;
    edge.set_v4 = "edge_v4";
    edge.set_v6 = "edge_v6";
    edge.ports = {PortRange{kUdp, 0, 65535}, PortRange{kTcp, 9000, 9000}};
    edge.origin = Origin{"ns-a", "edge", 1};
    rs.ingress.rules.push_back(edge);
    rs.egress.isolated = true;  // no rules: the pod may not initiate, replies still pass
    return rs;
}

// ------------------------------------------------------------ sockets in a netns

struct Fd {
    int fd = -1;
    Fd() = default;
    explicit Fd(int f) : fd(f) {}
    Fd(Fd&& o) noexcept : fd(o.fd) { o.fd = -1; }
    Fd& operator=(Fd&& o) noexcept {
        if (this != &o) {
            if (fd >= 0) close(fd);
            fd = o.fd;
            o.fd = -1;
        }
        return *this;
    }
    ~Fd() {
        if (fd >= 0) close(fd);
    }
    explicit operator bool() const { return fd >= 0; }
};

int ns_socket(const Netns& ns, int family, int type) {
    auto r = ns.run([&] { return ::socket(family, type | SOCK_CLOEXEC, 0); });
    REQUIRE(r.ok());
    REQUIRE(*r >= 0);
    return *r;
}

sockaddr_storage sockaddr_of(const char* ip, uint16_t port, socklen_t& len) {
    sockaddr_storage ss{};
    if (std::strchr(ip, ':')) {
        auto* s6 = reinterpret_cast<sockaddr_in6*>(&ss);
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(port);
        inet_pton(AF_INET6, ip, &s6->sin6_addr);
        len = sizeof(sockaddr_in6);
    } else {
        auto* s4 = reinterpret_cast<sockaddr_in*>(&ss);
        s4->sin_family = AF_INET;
        s4->sin_port = htons(port);
        inet_pton(AF_INET, ip, &s4->sin_addr);
        len = sizeof(sockaddr_in);
    }
    return ss;
}

Fd listen_on(const Netns& ns, const char* ip, uint16_t port) {
    socklen_t len;
    auto sa = sockaddr_of(ip, port, len);
    Fd s(ns_socket(ns, sa.ss_family, SOCK_STREAM));
    int one = 1;
    setsockopt(s.fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    REQUIRE(bind(s.fd, reinterpret_cast<sockaddr*>(&sa), len) == 0);
    REQUIRE(listen(s.fd, 16) == 0);
    return s;
}

bool wait_fd(int fd, short events, int ms) {
    pollfd p{fd, events, 0};
    return poll(&p, 1, ms) == 1 && (p.revents & events);
}

// Connects from `src` (bound) in netns `ns`; an invalid Fd when it does not
// complete within `ms`.
Fd connect_from(const Netns& ns, const char* src, const char* dst, uint16_t port, int ms) {
    socklen_t slen, dlen;
    auto sa = sockaddr_of(src, 0, slen);
    auto da = sockaddr_of(dst, port, dlen);
    Fd s(ns_socket(ns, da.ss_family, SOCK_STREAM | SOCK_NONBLOCK));
    REQUIRE(bind(s.fd, reinterpret_cast<sockaddr*>(&sa), slen) == 0);
    int rc = connect(s.fd, reinterpret_cast<sockaddr*>(&da), dlen);
    if (rc != 0 && errno != EINPROGRESS) return Fd();
    if (rc != 0) {
        if (!wait_fd(s.fd, POLLOUT, ms)) return Fd();
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(s.fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err != 0) return Fd();
    }
    return s;
}

bool can_connect(const Netns& ns, const char* src, const char* dst, uint16_t port, int ms = 400) {
    return static_cast<bool>(connect_from(ns, src, dst, port, ms));
}

Fd accept_one(const Fd& l, int ms = 1000) {
    if (!wait_fd(l.fd, POLLIN, ms)) return Fd();
    return Fd(accept4(l.fd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
}

// Client sends a byte, server echoes it: true when the echo comes back.
bool roundtrip(const Fd& client, const Fd& server, int ms = 600) {
    char c = 'x', got = 0;
    if (send(client.fd, &c, 1, MSG_NOSIGNAL) != 1) return false;
    if (!wait_fd(server.fd, POLLIN, ms)) return false;
    if (recv(server.fd, &got, 1, 0) != 1) return false;
    if (send(server.fd, &got, 1, MSG_NOSIGNAL) != 1) return false;
    if (!wait_fd(client.fd, POLLIN, ms)) return false;
    return recv(client.fd, &got, 1, 0) == 1 && got == 'x';
}

TableState state_of(NetlinkBackend& be, Netns& ns) {
    auto st = be.read_state(ns);
    REQUIRE_MESSAGE(st.ok(), (st.ok() ? "" : st.error().message));
    REQUIRE(st->has_value());
    return **st;
}

std::vector<uint64_t> rule_handles(const TableState& s) {
    std::vector<uint64_t> out;
    for (const auto& r : s.rules) out.push_back(r.handle);
    return out;
}

#define REQUIRE_OK(expr)                                                         \
    do {                                                                         \
        auto _st = (expr);                                                       \
        REQUIRE_MESSAGE(_st.ok(), (_st.ok() ? std::string() : _st.error().message)); \
    } while (0)

}  // namespace

// ============================================================ tests

TEST_CASE("probe: native queue refused, xt NFQUEUE usable, destroy table known") {
    auto p = probe_kernel();
    REQUIRE_MESSAGE(p.ok(), (p.ok() ? "" : p.error().message));
    MESSAGE("native queue: " << (p->native_queue_error.empty() ? "accepted" : p->native_queue_error));
    MESSAGE("destroy table supported: " << p->destroy_table);
    CHECK(p->queue == QueueBackend::xt_nfqueue);
    CHECK(!p->native_queue_error.empty());
    CHECK(probe_queue_backend() == QueueBackend::xt_nfqueue);
}

TEST_CASE("default deny, allowed peers and port ranges (v4, v6), replies, node, counters") {
    Netns A = open_ns(0), B = open_ns(1);
    NetlinkBackend be;
    PodRuleset rs = base_ruleset();
    REQUIRE_OK(be.apply(A, rs, nullptr));
    CHECK(be.table_exists(A).value());

    Fd l4_8000 = listen_on(A, "0.0.0.0", 8000), l4_8001 = listen_on(A, "0.0.0.0", 8001),
       l4_8002 = listen_on(A, "0.0.0.0", 8002);
    Fd l6_8001 = listen_on(A, "::", 18001);  // v6-only listener on another port
    (void)l6_8001;

    // allowed peer, allowed ports (SYN-ACK passes the isolated egress: ct state)
    CHECK(can_connect(B, "10.77.0.2", "10.77.0.1", 8000));
    CHECK(can_connect(B, "10.77.0.2", "10.77.0.1", 8001));
    // allowed peer, port outside the range: default deny
    CHECK_FALSE(can_connect(B, "10.77.0.2", "10.77.0.1", 8002));
    // other peer: default deny
    CHECK_FALSE(can_connect(B, "10.77.0.3", "10.77.0.1", 8000));
    // the node's own address: always allowed
    CHECK(can_connect(B, "10.77.0.9", "10.77.0.1", 8002));
    // IPv6
    Fd l6 = listen_on(A, "fd77::1", 8001);
    CHECK(can_connect(B, "fd77::2", "fd77::1", 8001));
    CHECK_FALSE(can_connect(B, "fd77::3", "fd77::1", 8001));
    // the pod may not initiate (isolated egress, no rules)
    Fd lb = listen_on(B, "10.77.0.2", 7000);
    CHECK_FALSE(can_connect(A, "10.77.0.1", "10.77.0.2", 7000));

    auto c = be.counters(A);
    REQUIRE(c.ok());
    MESSAGE("ingress drops " << c->ingress_drop_packets << ", egress drops " << c->egress_drop_packets);
    CHECK(c->ingress_drop_packets >= 3);
    CHECK(c->egress_drop_packets >= 1);
    bool found_web = false, found_edge = false;
    for (const auto& a : c->accepts) {
        if (a.origin == Origin{"ns-a", "allow-web", 0} && a.direction == Dir::ingress) {
            found_web = true;
            CHECK(a.packets >= 3);  // three accepted SYNs (v4 x2, v6)
        }
        if (a.origin == Origin{"ns-a", "edge", 1}) {
            found_edge = true;
            CHECK(a.packets == 0);
        }
    }
    CHECK(found_web);
    CHECK(found_edge);

    // The installed layout: base rules, one rule per (rule, family, port range), drop.
    auto st = state_of(be, A);
    size_t ingress = 0, egress = 0;
    for (const auto& r : st.rules) (r.chain == "ingress" ? ingress : egress)++;
    CHECK(ingress == 5 + 2 + 4 + 2);  // est, lo, nd, node_v4, node_v6; web x2; edge x4; deny-log, drop
    CHECK(egress == 5);               // est, lo, nd, deny-log, drop
    // The deny log precedes the drop, rate-limited, to the NFLOG group signetd reads.
    size_t logs = 0;
    for (const auto& r : st.rules)
        if (r.comment == "signet " + r.chain + " deny-log") {
            ++logs;
            CHECK_FALSE(r.verdict.has_value());
            CHECK_FALSE(r.has_counter);
        }
    CHECK(logs == 2);
    CHECK(st.sets.size() == 6);
    CHECK(st.interval_sets.size() == 6);  // AddrSet's default: interval sets
}

TEST_CASE("membership-only update changes verdicts without replacing the table") {
    Netns A = open_ns(0), B = open_ns(1);
    NetlinkBackend be;
    PodRuleset rs = base_ruleset();
    REQUIRE_OK(be.apply(A, rs, nullptr));
    Fd l = listen_on(A, "0.0.0.0", 8000);
    auto before = state_of(be, A);
    CHECK_FALSE(can_connect(B, "10.77.0.3", "10.77.0.1", 8000));

    // [.2] -> [.2-.3]: the old interval is deleted and a wider one with the same start added.
    PodRuleset wider = rs;
    wider.sets["peers_v4"].elements = {Range{v4("10.77.0.2"), v4("10.77.0.3")}};
    REQUIRE(wider.same_structure(rs));
    REQUIRE_OK(be.apply(A, wider, &rs));
    CHECK(be.stats().element_updates == 1);
    CHECK(be.stats().full_replaces == 1);
    auto after = state_of(be, A);
    CHECK(after.handle == before.handle);
    CHECK(rule_handles(after) == rule_handles(before));
    CHECK(can_connect(B, "10.77.0.3", "10.77.0.1", 8000));
    CHECK(can_connect(B, "10.77.0.2", "10.77.0.1", 8000));

    // [.2-.3] -> [.3], and a v6 peer removed
    PodRuleset narrower = rs;
    narrower.sets["peers_v4"].elements = {one(v4("10.77.0.3"))};
    narrower.sets["peers_v6"].elements = {};
    REQUIRE_OK(be.apply(A, narrower, &wider));
    CHECK(be.stats().element_updates == 2);
    CHECK(state_of(be, A).handle == before.handle);
    CHECK(can_connect(B, "10.77.0.3", "10.77.0.1", 8000));
    CHECK_FALSE(can_connect(B, "10.77.0.2", "10.77.0.1", 8000));
    Fd l6 = listen_on(A, "fd77::1", 8000);
    CHECK_FALSE(can_connect(B, "fd77::2", "fd77::1", 8000));

    // Nothing changed: no batch at all.
    REQUIRE_OK(be.apply(A, narrower, &narrower));
    CHECK(be.stats().unchanged == 1);

    // The caller's idea of the state is wrong (elements it thinks are there
    // are not): the element batch is refused and the table replaced instead.
    REQUIRE_OK(be.apply(A, rs, &wider));
    CHECK(be.stats().fallbacks == 1);
    CHECK(state_of(be, A).handle != before.handle);
    CHECK(can_connect(B, "10.77.0.2", "10.77.0.1", 8000));
    CHECK_FALSE(can_connect(B, "10.77.0.3", "10.77.0.1", 8000));
}

TEST_CASE("hash sets (pod addresses): element add and delete, atomic, table kept") {
    Netns A = open_ns(0), B = open_ns(1);
    NetlinkBackend be;
    PodRuleset rs = base_ruleset();
    rs.sets["node_v4"].interval = false;
    rs.sets["node_v6"].interval = false;
    rs.sets["peers_v4"].interval = false;
    rs.sets["peers_v6"].interval = false;
    REQUIRE_OK(be.apply(A, rs, nullptr));
    auto before = state_of(be, A);
    CHECK(before.sets.size() == 6);
    // Only the ipBlock-like sets are interval sets (the kernel's rbtree).
    std::vector<std::string> intervals = before.interval_sets;
    std::sort(intervals.begin(), intervals.end());
    CHECK(intervals == std::vector<std::string>{"edge_v4", "edge_v6"});
    Fd l = listen_on(A, "0.0.0.0", 8000);
    CHECK(can_connect(B, "10.77.0.2", "10.77.0.1", 8000));
    CHECK_FALSE(can_connect(B, "10.77.0.3", "10.77.0.1", 8000));
    CHECK(can_connect(B, "10.77.0.9", "10.77.0.1", 8000));  // the node (a hash set too)

    // .3 joins: [.2] -> [.2-.3] merged by the compiler, one address added in the kernel.
    PodRuleset wider = rs;
    wider.sets["peers_v4"].elements = {Range{v4("10.77.0.2"), v4("10.77.0.3")}};
    REQUIRE(wider.same_structure(rs));
    auto text = describe_update_batch(wider, rs);
    REQUIRE(text.ok());
    CHECK(*text == "add element inet signet peers_v4 { 10.77.0.3 }\n");
    REQUIRE_OK(be.apply(A, wider, &rs));
    CHECK(be.stats().element_updates == 1);
    CHECK(be.stats().full_replaces == 1);
    auto after = state_of(be, A);
    CHECK(after.handle == before.handle);
    CHECK(rule_handles(after) == rule_handles(before));
    CHECK(can_connect(B, "10.77.0.3", "10.77.0.1", 8000));
    CHECK(can_connect(B, "10.77.0.2", "10.77.0.1", 8000));

    // .2 leaves and the v6 peer too: deletions of single addresses.
    PodRuleset narrower = rs;
    narrower.sets["peers_v4"].elements = {one(v4("10.77.0.3"))};
    narrower.sets["peers_v6"].elements = {};
    REQUIRE_OK(be.apply(A, narrower, &wider));
    CHECK(be.stats().element_updates == 2);
    CHECK(state_of(be, A).handle == before.handle);
    CHECK(can_connect(B, "10.77.0.3", "10.77.0.1", 8000));
    CHECK_FALSE(can_connect(B, "10.77.0.2", "10.77.0.1", 8000));
    Fd l6 = listen_on(A, "fd77::1", 8000);
    CHECK_FALSE(can_connect(B, "fd77::2", "fd77::1", 8000));

    // The caller is wrong about the kernel: it believes [.2] (the kernel has
    // [.3]) and wants [.2-.3], so .3 is added where it already is (EEXIST:
    // elements are added with NLM_F_EXCL; deleting an absent one is ENOENT).
    // The batch is refused as a whole and the table replaced instead.
    REQUIRE_OK(be.apply(A, wider, &rs));
    CHECK(be.stats().fallbacks == 1);
    CHECK(state_of(be, A).handle != before.handle);
    CHECK(can_connect(B, "10.77.0.2", "10.77.0.1", 8000));
    CHECK(can_connect(B, "10.77.0.3", "10.77.0.1", 8000));
    REQUIRE_OK(be.apply(A, rs, &wider));  // back to [.2], element by element
    CHECK_FALSE(can_connect(B, "10.77.0.3", "10.77.0.1", 8000));

    // A set changing kind (hash -> interval) replaces the table.
    PodRuleset as_interval = rs;
    as_interval.sets["peers_v4"].interval = true;
    uint64_t handle = state_of(be, A).handle;
    REQUIRE_OK(be.apply(A, as_interval, &rs));
    CHECK(state_of(be, A).handle != handle);
    CHECK(can_connect(B, "10.77.0.2", "10.77.0.1", 8000));
}

TEST_CASE("full replace after a restart keeps an established TCP connection") {
    Netns A = open_ns(0), B = open_ns(1);
    PodRuleset rs = base_ruleset();
    {
        NetlinkBackend first;
        REQUIRE_OK(first.apply(A, rs, nullptr));
    }
    Fd l = listen_on(A, "10.77.0.1", 8001);
    Fd client = connect_from(B, "10.77.0.2", "10.77.0.1", 8001, 1000);
    REQUIRE(client);
    Fd server = accept_one(l);
    REQUIRE(server);
    REQUIRE(roundtrip(client, server));

    NetlinkBackend restarted;  // a new controller: knows nothing
    auto before = state_of(restarted, A);
    REQUIRE_OK(restarted.apply(A, rs, nullptr));
    auto after = state_of(restarted, A);
    CHECK(after.handle != before.handle);  // really replaced
    CHECK(roundtrip(client, server));

    // A structurally different rule set that no longer allows the peer at
    // all: the established connection still flows (conntrack), new ones not.
    PodRuleset other = rs;
    other.ingress.rules.erase(other.ingress.rules.begin());
    REQUIRE_OK(restarted.apply(A, other, &rs));
    CHECK(restarted.stats().full_replaces == 2);
    CHECK(roundtrip(client, server));
    CHECK_FALSE(can_connect(B, "10.77.0.2", "10.77.0.1", 8001));
}

TEST_CASE("conntrack: list shows the connection, delete cuts it") {
    Netns A = open_ns(0), B = open_ns(1);
    NetlinkBackend be;
    PodRuleset rs = base_ruleset();
    REQUIRE_OK(be.apply(A, rs, nullptr));
    Fd l = listen_on(A, "10.77.0.1", 8000);
    Fd client = connect_from(B, "10.77.0.2", "10.77.0.1", 8000, 1000);
    REQUIRE(client);
    Fd server = accept_one(l);
    REQUIRE(server);
    REQUIRE(roundtrip(client, server));

    Fd l6 = listen_on(A, "fd77::1", 8000);
    Fd client6 = connect_from(B, "fd77::2", "fd77::1", 8000, 1000);
    REQUIRE(client6);
    Fd server6 = accept_one(l6);
    REQUIRE(server6);

    auto local_port = [](const Fd& f) {
        sockaddr_storage ss{};
        socklen_t len = sizeof ss;
        getsockname(f.fd, reinterpret_cast<sockaddr*>(&ss), &len);
        return ntohs(ss.ss_family == AF_INET ? reinterpret_cast<sockaddr_in*>(&ss)->sin_port
                                             : reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
    };
    const uint16_t sport = local_port(client), sport6 = local_port(client6);
    auto list = ct_list(A);
    REQUIRE_MESSAGE(list.ok(), (list.ok() ? "" : list.error().message));
    std::optional<CtEntry> entry, entry6;
    for (const auto& e : *list) {
        if (e.orig.proto == IPPROTO_TCP && e.orig.family == Family::v4 && e.orig.src == v4("10.77.0.2") &&
            e.orig.dst == v4("10.77.0.1") && e.orig.dport == 8000 && e.orig.sport == sport)
            entry = e;
        if (e.orig.proto == IPPROTO_TCP && e.orig.family == Family::v6 && e.orig.src == v6("fd77::2") &&
            e.orig.dport == 8000 && e.orig.sport == sport6)
            entry6 = e;
    }
    REQUIRE(entry.has_value());
    REQUIRE(entry6.has_value());
    CHECK(entry->reply.src == v4("10.77.0.1"));
    CHECK(entry->reply.dport == entry->orig.sport);
    CHECK(entry->tcp_state == 3);  // TCP_CONNTRACK_ESTABLISHED

    if (const char* dir = std::getenv("SIGNET_CT_CORPUS_OUT")) {
        // Seed the fuzz corpus with what this kernel really sends.
        auto sock = A.open_socket(NETLINK_NETFILTER);
        REQUIRE(sock.ok());
        std::vector<uint8_t> req(MNL_SOCKET_BUFFER_SIZE), buf(1 << 16);
        nlmsghdr* nlh = mnl_nlmsg_put_header(req.data());
        nlh->nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8) | 1 /* IPCTNL_MSG_CT_GET */;
        nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
        nlh->nlmsg_seq = 1;
        auto* nfg = static_cast<nfgenmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(nfgenmsg)));
        nfg->nfgen_family = AF_UNSPEC;
        REQUIRE(sock->send({req.data(), nlh->nlmsg_len}).ok());
        auto n = sock->recv(buf, std::chrono::milliseconds(1000));
        REQUIRE(n.ok());
        std::string path = std::string(dir) + "/kernel-dump.bin";
        FILE* f = std::fopen(path.c_str(), "wb");
        REQUIRE(f);
        std::fwrite(buf.data(), 1, *n, f);
        std::fclose(f);
    }

    // The policy stops allowing the peer: established traffic still flows...
    PodRuleset denied = rs;
    denied.sets["peers_v4"].elements.clear();
    denied.sets["peers_v6"].elements.clear();
    REQUIRE_OK(be.apply(A, denied, &rs));
    CHECK(roundtrip(client, server));
    // ...until the controller deletes the conntrack entry.
    REQUIRE_OK(ct_delete(A, entry->orig));
    CHECK_FALSE(roundtrip(client, server, 800));
    REQUIRE_OK(ct_delete(A, entry6->orig));
    CHECK_FALSE(roundtrip(client6, server6, 800));

    auto again = ct_delete(A, entry->orig);
    CHECK_FALSE(again.ok());
    if (!again.ok()) CHECK(again.error().code == ENOENT);
    auto list2 = ct_list(A);
    REQUIRE(list2.ok());
    for (const auto& e : *list2) CHECK_FALSE(e.orig == entry->orig);
}

TEST_CASE("remove is idempotent") {
    Netns A = open_ns(0), B = open_ns(1);
    NetlinkBackend be;
    REQUIRE_OK(be.apply(A, base_ruleset(), nullptr));
    REQUIRE_OK(be.remove(A));
    CHECK_FALSE(be.table_exists(A).value());
    REQUIRE_OK(be.remove(A));
    auto c = be.counters(A);
    CHECK_FALSE(c.ok());
    Fd l = listen_on(A, "10.77.0.1", 8002);
    CHECK(can_connect(B, "10.77.0.3", "10.77.0.1", 8002));  // no table: nothing enforced

    // The add-then-delete fallback (kernels without NFT_MSG_DESTROYTABLE) works too.
    NetlinkBackend old_kernel(false);
    REQUIRE_OK(old_kernel.apply(A, base_ruleset(), nullptr));
    REQUIRE_OK(old_kernel.apply(A, base_ruleset(), nullptr));
    CHECK(old_kernel.table_exists(A).value());
    REQUIRE_OK(old_kernel.remove(A));
    REQUIRE_OK(old_kernel.remove(A));
    CHECK_FALSE(old_kernel.table_exists(A).value());
}

namespace {

signet::Status nfq_config(NlSocket& s, uint16_t queue, const std::function<void(nlmsghdr*)>& attrs) {
    std::vector<uint8_t> buf(MNL_SOCKET_BUFFER_SIZE);
    nlmsghdr* nlh = mnl_nlmsg_put_header(buf.data());
    nlh->nlmsg_type = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG;
    nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
    uint32_t seq = s.next_seq();
    nlh->nlmsg_seq = seq;
    auto* nfg = static_cast<nfgenmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(nfgenmsg)));
    nfg->nfgen_family = AF_UNSPEC;
    nfg->version = NFNETLINK_V0;
    nfg->res_id = htons(queue);
    attrs(nlh);
    return s.transact({buf.data(), nlh->nlmsg_len}, seq, seq);
}

// Waits for one queued packet; returns its IP payload.
std::optional<std::vector<uint8_t>> nfq_receive(NlSocket& s, int ms) {
    std::vector<uint8_t> buf(1 << 16);
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    while (std::chrono::steady_clock::now() < deadline) {
        auto n = s.recv(buf, std::chrono::milliseconds(ms));
        if (!n.ok() || *n == 0) return std::nullopt;
        int len = static_cast<int>(*n);
        for (auto* nlh = reinterpret_cast<const nlmsghdr*>(buf.data()); mnl_nlmsg_ok(nlh, len);
             nlh = mnl_nlmsg_next(nlh, &len)) {
            if (nlh->nlmsg_type != ((NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET)) continue;
            const auto* base = static_cast<const uint8_t*>(mnl_nlmsg_get_payload_offset(nlh, sizeof(nfgenmsg)));
            int left = static_cast<int>(static_cast<const uint8_t*>(mnl_nlmsg_get_payload_tail(nlh)) - base);
            for (auto* a = reinterpret_cast<const nlattr*>(base); mnl_attr_ok(a, left);
                 left -= MNL_ALIGN(a->nla_len),
                       a = reinterpret_cast<const nlattr*>(reinterpret_cast<const uint8_t*>(a) + MNL_ALIGN(a->nla_len))) {
                if (mnl_attr_get_type(a) == NFQA_PAYLOAD) {
                    const auto* p = static_cast<const uint8_t*>(mnl_attr_get_payload(a));
                    return std::vector<uint8_t>(p, p + mnl_attr_get_payload_len(a));
                }
            }
        }
    }
    return std::nullopt;
}

}  // namespace

TEST_CASE("SYN queue rule: native refused, xt NFQUEUE delivers the SYN, fail closed without a reader") {
    Netns C = open_ns(2);
    NetlinkBackend be;
    REQUIRE_OK(be.apply(C, PodRuleset{}, nullptr));  // table + chains, nothing isolated
    Fd l = listen_on(C, "127.0.0.1", 7777);
    CHECK(can_connect(C, "127.0.0.1", "127.0.0.1", 7777));

    auto native = add_syn_queue_rule(C, kTableName, "egress", 7, QueueBackend::nft_queue, true);
    CHECK_FALSE(native.ok());
    if (!native.ok()) MESSAGE("native queue refused: " << native.error().message);
    REQUIRE_OK(add_syn_queue_rule(C, kTableName, "egress", 7, QueueBackend::xt_nfqueue, true));
    auto st = state_of(be, C);
    bool has_queue_rule = false;
    for (const auto& r : st.rules) has_queue_rule |= r.comment == "signet handshake-queue 7";
    CHECK(has_queue_rule);

    {
        auto q = C.open_socket(NETLINK_NETFILTER);
        REQUIRE(q.ok());
        REQUIRE_OK(nfq_config(*q, 7, [](nlmsghdr* nlh) {
            nfqnl_msg_config_cmd cmd{};
            cmd.command = NFQNL_CFG_CMD_BIND;
            cmd.pf = htons(AF_INET);
            mnl_attr_put(nlh, NFQA_CFG_CMD, sizeof cmd, &cmd);
        }));
        REQUIRE_OK(nfq_config(*q, 7, [](nlmsghdr* nlh) {
            nfqnl_msg_config_params params{};
            params.copy_range = htonl(0xffff);
            params.copy_mode = NFQNL_COPY_PACKET;
            mnl_attr_put(nlh, NFQA_CFG_PARAMS, sizeof params, &params);
        }));
        // A SYN from inside the netns (the connect cannot complete: the packet
        // sits in the queue with no verdict).
        Fd c = connect_from(C, "127.0.0.1", "127.0.0.1", 7777, 50);
        CHECK_FALSE(c);
        auto pkt = nfq_receive(*q, 2000);
        REQUIRE(pkt.has_value());
        REQUIRE(pkt->size() >= 40);
        const auto* ip = reinterpret_cast<const iphdr*>(pkt->data());
        CHECK(ip->protocol == IPPROTO_TCP);
        const auto* tcp = reinterpret_cast<const tcphdr*>(pkt->data() + ip->ihl * 4);
        CHECK(tcp->syn);
        CHECK_FALSE(tcp->ack);
        CHECK(ntohs(tcp->dest) == 7777);
    }
    // No reader bound any more: no bypass flag, so SYNs are dropped (fail closed).
    CHECK_FALSE(can_connect(C, "127.0.0.1", "127.0.0.1", 7777, 300));
    REQUIRE_OK(be.remove(C));
    CHECK(can_connect(C, "127.0.0.1", "127.0.0.1", 7777));
}

int main(int argc, char** argv) {
    if (geteuid() != 0) {
        std::fprintf(stderr,
                     "\n*** SKIPPED test_nft_backend: needs root (network namespaces, nftables, conntrack, "
                     "NFQUEUE). Run it as root. ***\n\n");
        return 77;
    }
    if (sh("ip -V") != 0) {
        std::fprintf(stderr, "\n*** SKIPPED test_nft_backend: iproute2 (`ip`) is not installed. ***\n\n");
        return 77;
    }
    remove_stale();
    for (int s : {SIGINT, SIGTERM, SIGABRT, SIGHUP}) signal(s, on_signal);
    std::atexit(cleanup);
    if (!setup_topology()) {
        cleanup();
        return 1;
    }
    doctest::Context ctx(argc, argv);
    int rc = ctx.run();
    cleanup();
    return rc;
}
