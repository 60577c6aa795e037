// The flow table: aggregation, bounds and what is counted when a bound is hit.
#include <doctest/doctest.h>

#include "../../controller/core/controller.h"
#include "export/flow_points.h"
#include "../../controller/flows/audit_log.h"
#include "../../controller/flows/flow_table.h"
#include "../../controller/nft/conntrack.h"

#include <arpa/inet.h>
#include <endian.h>
#include <libmnl/libmnl.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <netinet/in.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "signet/json.h"

using namespace signet;
using namespace signet::flows;

namespace {

Record rec(Record::Event ev, const std::string& pod, const std::string& peer, Verdict v, const std::string& policy,
           int64_t t, uint64_t bytes_in = 0) {
    Record r;
    r.event = ev;
    r.time_ns = t;
    r.key = FlowKey{"shop", pod, true, v, PeerKind::pod, "shop", peer, "10.0.0.9", 6, 80};
    r.decision.policy = policy;
    r.counts.connections = 1;
    r.counts.bytes_in = bytes_in;
    r.src = "10.0.0.9:40000";
    r.dst = "10.0.0.2:80";
    return r;
}

// A ctnetlink event as the kernel multicasts it: NEW (NLM_F_CREATE), or
// DELETE with the entry's counters (accounting) and times (timestamps).
std::vector<uint8_t> ct_event(bool destroy, uint32_t id) {
    std::vector<uint8_t> buf(2048);
    nlmsghdr* nlh = mnl_nlmsg_put_header(buf.data());
    nlh->nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8) | (destroy ? IPCTNL_MSG_CT_DELETE : IPCTNL_MSG_CT_NEW);
    nlh->nlmsg_flags = destroy ? 0 : (NLM_F_CREATE | NLM_F_EXCL);
    auto* nfg = static_cast<nfgenmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(nfgenmsg)));
    nfg->nfgen_family = AF_INET;
    nfg->version = NFNETLINK_V0;
    auto tuple = [&](uint16_t type, const char* src, const char* dst, uint16_t sp, uint16_t dp) {
        nlattr* t = mnl_attr_nest_start(nlh, type);
        nlattr* ip = mnl_attr_nest_start(nlh, CTA_TUPLE_IP);
        in_addr a{};
        inet_pton(AF_INET, src, &a);
        mnl_attr_put(nlh, CTA_IP_V4_SRC, 4, &a);
        inet_pton(AF_INET, dst, &a);
        mnl_attr_put(nlh, CTA_IP_V4_DST, 4, &a);
        mnl_attr_nest_end(nlh, ip);
        nlattr* p = mnl_attr_nest_start(nlh, CTA_TUPLE_PROTO);
        mnl_attr_put_u8(nlh, CTA_PROTO_NUM, IPPROTO_TCP);
        mnl_attr_put_u16(nlh, CTA_PROTO_SRC_PORT, htons(sp));
        mnl_attr_put_u16(nlh, CTA_PROTO_DST_PORT, htons(dp));
        mnl_attr_nest_end(nlh, p);
        mnl_attr_nest_end(nlh, t);
    };
    tuple(CTA_TUPLE_ORIG, "10.0.0.9", "10.0.0.2", 40000, 80);
    tuple(CTA_TUPLE_REPLY, "10.0.0.2", "10.0.0.9", 80, 40000);
    mnl_attr_put_u32(nlh, CTA_ID, htonl(id));
    mnl_attr_put_u32(nlh, CTA_MARK, htonl(0x42));
    if (destroy) {
        auto counters = [&](uint16_t type, uint64_t packets, uint64_t bytes) {
            nlattr* c = mnl_attr_nest_start(nlh, type);
            mnl_attr_put_u64(nlh, CTA_COUNTERS_PACKETS, htobe64(packets));
            mnl_attr_put_u64(nlh, CTA_COUNTERS_BYTES, htobe64(bytes));
            mnl_attr_nest_end(nlh, c);
        };
        counters(CTA_COUNTERS_ORIG, 7, 5300);
        counters(CTA_COUNTERS_REPLY, 6, 5200);
        nlattr* ts = mnl_attr_nest_start(nlh, CTA_TIMESTAMP);
        mnl_attr_put_u64(nlh, CTA_TIMESTAMP_START, htobe64(1'000'000'000ULL));
        mnl_attr_put_u64(nlh, CTA_TIMESTAMP_STOP, htobe64(3'500'000'000ULL));
        mnl_attr_nest_end(nlh, ts);
    }
    buf.resize(nlh->nlmsg_len);
    return buf;
}

}  // namespace

TEST_CASE("conntrack events: NEW, and DESTROY with its counters and start/stop times (no request needed)") {
    std::vector<uint8_t> both = ct_event(false, 77);
    std::vector<uint8_t> d = ct_event(true, 77);
    both.insert(both.end(), d.begin(), d.end());
    std::vector<nft::CtEvent> out;
    CHECK(nft::ct_parse_events(both, out) == 2);
    REQUIRE(out.size() == 2);
    CHECK(out[0].kind == nft::CtEvent::New);
    CHECK(out[0].entry.id == 77);
    CHECK(out[0].entry.orig.sport == 40000);
    CHECK(out[0].entry.orig.dport == 80);
    CHECK(out[0].entry.orig_bytes == 0);
    CHECK(out[0].entry.start_ns == 0);
    CHECK(out[1].kind == nft::CtEvent::Destroy);
    CHECK(out[1].entry.id == 77);
    CHECK(out[1].entry.mark == 0x42);
    CHECK(out[1].entry.orig_packets == 7);
    CHECK(out[1].entry.orig_bytes == 5300);
    CHECK(out[1].entry.reply_packets == 6);
    CHECK(out[1].entry.reply_bytes == 5200);
    CHECK(out[1].entry.start_ns == 1'000'000'000ULL);
    CHECK(out[1].entry.stop_ns == 3'500'000'000ULL);
    // A truncated DESTROY (the read buffer cut it) is skipped, never half-read.
    std::vector<nft::CtEvent> cut;
    nft::ct_parse_events(std::span<const uint8_t>(d.data(), d.size() - 8), cut);
    CHECK(cut.empty());
}

TEST_CASE("flows: an open and its close count one connection; bytes come with the close") {
    FlowTable t;
    t.add(rec(Record::open, "api", "web", Verdict::allowed, "shop/allow", 1000));
    t.add(rec(Record::close, "api", "web", Verdict::allowed, "shop/allow", 2000, 500));
    auto iv = t.take_interval();
    REQUIRE(iv.size() == 1);
    CHECK(iv[0].counts.connections == 1);
    CHECK(iv[0].counts.bytes_in == 500);
    CHECK(iv[0].first_ns == 1000);
    CHECK(iv[0].last_ns == 2000);
    CHECK(t.take_interval().empty());  // taken
    const auto& totals = t.totals();
    REQUIRE(totals.size() == 1);
    CHECK(totals.begin()->second.connections == 1);
    CHECK(totals.begin()->second.bytes_in == 500);
    CHECK(t.last_seq() == 2);
}

TEST_CASE("flows: a policy change mid-interval makes a new aggregate, not a relabelled one") {
    FlowTable t;
    t.add(rec(Record::open, "api", "web", Verdict::allowed, "none", 1));
    t.add(rec(Record::open, "api", "web", Verdict::allowed, "shop/allow", 2));
    t.add(rec(Record::open, "api", "web", Verdict::allowed, "shop/allow", 3));
    auto iv = t.take_interval();
    REQUIRE(iv.size() == 2);
    uint64_t none = 0, allow = 0;
    for (const auto& a : iv) (a.decision.policy == "none" ? none : allow) += a.counts.connections;
    CHECK(none == 1);
    CHECK(allow == 2);
}

TEST_CASE("flows: bounds hold and what does not fit is counted") {
    Limits l;
    l.records = 5;
    l.interval_keys = 3;
    l.window_keys = 3;
    l.total_keys = 2;
    l.pod_events = 1;
    FlowTable t(l);
    for (int i = 0; i < 10; ++i)
        t.add(rec(Record::denied, "api", "peer" + std::to_string(i), Verdict::denied, "default-deny", i));
    CHECK(t.ring_size() == 5);
    CHECK(t.stats().records == 10);
    CHECK(t.stats().denied_records == 10);
    CHECK(t.stats().dropped_interval == 7);
    CHECK(t.stats().dropped_window == 7);
    CHECK(t.take_interval().size() == 3);
    t.add_pod_event(PodEvent{});
    t.add_pod_event(PodEvent{});
    CHECK(t.stats().dropped_pod_events == 1);
    CHECK(t.take_pod_events().size() == 1);
    // The ring keeps the latest: seq 6..10.
    auto q = t.query(0, {}, 100);
    REQUIRE(q.size() == 5);
    CHECK(q.front()->seq == 6);
    CHECK(q.back()->seq == 10);
}

TEST_CASE("flows: query filters, after and limit") {
    FlowTable t;
    t.add(rec(Record::open, "api", "web", Verdict::allowed, "shop/allow", 1));
    t.add(rec(Record::denied, "api", "db", Verdict::denied, "default-deny", 2));
    t.add(rec(Record::open, "db", "web", Verdict::allowed, "none", 3));
    CHECK(t.query(0, {"", "", "denied"}, 100).size() == 1);
    CHECK(t.query(0, {"", "shop/db", ""}, 100).size() == 2);  // as local pod or as peer
    CHECK(t.query(0, {"other", "", ""}, 100).empty());
    CHECK(t.query(2, {}, 100).size() == 1);
    auto last = t.query(0, {}, 2);
    REQUIRE(last.size() == 2);
    CHECK(last[0]->seq == 2);  // the latest two, oldest first
}

TEST_CASE("flows: the graph window forgets what is older than it") {
    Limits l;
    l.window_ns = 100;
    FlowTable t(l);
    t.add(rec(Record::open, "api", "web", Verdict::allowed, "none", 1000));
    t.add(rec(Record::open, "api", "db", Verdict::allowed, "none", 1150));
    auto w = t.window(1200);
    REQUIRE(w.size() == 1);
    CHECK(w[0].key.peer_pod == "db");
}

TEST_CASE("flows: InfluxDB points carry the documented tags and fields") {
    FlowTable t;
    t.add(rec(Record::close, "api", "web", Verdict::allowed, "shop/allow", 5000, 42));
    PodEvent e;
    e.kind = PodEvent::stop;
    e.time_ns = 7;
    e.namespace_ = "shop";
    e.name = "web";
    e.labels = {{"b", "2"}, {"a", "1"}};
    e.ips = {"10.0.0.3", "fd00::3"};
    auto pts = exporter::flow_points("node-1", t.take_interval(), {e});
    REQUIRE(pts.size() == 2);
    auto tag = [](const exporter::Point& p, const std::string& k) {
        for (const auto& [n, v] : p.tags)
            if (n == k) return v;
        return std::string("<none>");
    };
    CHECK(pts[0].measurement == "signet_flow");
    CHECK(tag(pts[0], "policy") == "shop/allow");
    CHECK(tag(pts[0], "verdict") == "allowed");
    CHECK(tag(pts[0], "direction") == "ingress");
    CHECK(tag(pts[0], "proto") == "TCP");
    CHECK(tag(pts[0], "port") == "80");
    CHECK(tag(pts[0], "node") == "node-1");
    CHECK(exporter::validate(pts[0]).ok());
    CHECK(pts[1].measurement == "signet_pod_event");
    CHECK(tag(pts[1], "event") == "stop");
    CHECK(exporter::encode(pts[1]) ==
          "signet_pod_event,event=stop,namespace=shop,node=node-1,pod=web uid=\"\",ips=\"10.0.0.3,fd00::3\",labels=\"a=1,b=2\" 7");
}

TEST_CASE("flows: Prometheus totals by workload (a rollout keeps the series), by pod only when asked") {
    auto of = [](const std::string& pod, const std::string& kind, const std::string& workload) {
        Record r = rec(Record::open, pod, "web", Verdict::allowed, "shop/allow", 1);
        r.local_workload_kind = kind;
        r.local_workload = workload;
        return r;
    };
    FlowTable t;
    t.add(of("api-7d9f-abcde", "Deployment", "api"));
    t.add(of("api-7d9f-fghij", "Deployment", "api"));  // the rollout's new pod
    t.add(of("solo", "", ""));                         // workload unknown: the pod itself
    REQUIRE(t.totals().size() == 2);
    const auto& [k, c] = *t.totals().begin();
    CHECK(k.local_workload_kind == "Deployment");
    CHECK(k.local_workload == "api");
    CHECK(k.local_pod.empty());
    CHECK(c.connections == 2);
    CHECK(std::next(t.totals().begin())->first.local_workload_kind == "Pod");
    CHECK(std::next(t.totals().begin())->first.local_workload == "solo");
    t.forget_pod("shop", "api-7d9f-abcde");  // pod names are not in the keys: nothing goes
    CHECK(t.totals().size() == 2);
    t.forget_workload("shop", "Deployment", "api");
    CHECK(t.totals().size() == 1);

    FlowTable p;
    p.set_pod_series(true);
    p.add(of("api-7d9f-abcde", "Deployment", "api"));
    p.add(of("api-7d9f-fghij", "Deployment", "api"));
    REQUIRE(p.totals().size() == 2);
    CHECK(p.totals().begin()->first.local_pod == "api-7d9f-abcde");
    CHECK(p.totals().begin()->first.local_workload == "api");
    p.forget_pod("shop", "api-7d9f-abcde");
    REQUIRE(p.totals().size() == 1);
    CHECK(p.totals().begin()->first.local_pod == "api-7d9f-fghij");
}

TEST_CASE("workloads: the pod's controller, a Deployment's ReplicaSet by its pod-template-hash, else the pod") {
    cache::Pod pod;
    pod.namespace_ = "shop";
    pod.name = "api-5d8c7b9f4-x2x7k";
    CHECK(cache::workload_of(pod) == cache::Workload{"Pod", "api-5d8c7b9f4-x2x7k"});
    pod.owner_kind = "ReplicaSet";
    pod.owner_name = "api-5d8c7b9f4";
    CHECK(cache::workload_of(pod) == cache::Workload{"ReplicaSet", "api-5d8c7b9f4"});  // no hash label: as it is
    pod.labels["pod-template-hash"] = "5d8c7b9f4";
    CHECK(cache::workload_of(pod) == cache::Workload{"Deployment", "api"});
    pod.labels["pod-template-hash"] = "other";
    CHECK(cache::workload_of(pod) == cache::Workload{"ReplicaSet", "api-5d8c7b9f4"});
    pod.owner_name = "5d8c7b9f4";  // nothing before the hash
    pod.labels["pod-template-hash"] = "5d8c7b9f4";
    CHECK(cache::workload_of(pod) == cache::Workload{"ReplicaSet", "5d8c7b9f4"});
    pod.owner_kind = "StatefulSet";
    pod.owner_name = "db";
    CHECK(cache::workload_of(pod) == cache::Workload{"StatefulSet", "db"});
}

namespace {

struct TempDir {
    std::string path;
    TempDir() {
        char tmpl[] = "/tmp/signet-audit-XXXXXX";
        path = ::mkdtemp(tmpl);
    }
    ~TempDir() { std::filesystem::remove_all(path); }
};

std::string slurp(const std::string& path) {
    std::ifstream f(path);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

Record denied_rec(const std::string& src, int64_t t) {
    Record r = rec(Record::denied, "api", "db", Verdict::denied, "default-deny", t);
    r.src = src;
    r.local_workload_kind = "Deployment";
    r.local_workload = "api";
    return r;
}

}  // namespace

TEST_CASE("audit log: one JSON line per denied attempt, retransmissions folded, other events ignored") {
    TempDir dir;
    boost::asio::io_context io;
    AuditLogOptions o;
    o.target = dir.path + "/audit.jsonl";
    auto log = AuditLog::open(io, o, "node-1");
    REQUIRE(log);
    const int64_t t0 = 1'765'150'000'000'000'000;
    (*log)->write(denied_rec("10.0.0.9:40000", t0));
    (*log)->write(denied_rec("10.0.0.9:40000", t0 + 1'000'000'000));  // its SYN retransmitted
    (*log)->write(denied_rec("10.0.0.9:40001", t0 + 2'000'000'000));  // a new attempt
    (*log)->write(rec(Record::open, "api", "web", Verdict::allowed, "shop/allow", t0));
    (*log)->write(denied_rec("10.0.0.9:40000", t0 + 40'000'000'000));  // the same port after the window: new
    CHECK((*log)->stats().written == 3);
    CHECK((*log)->stats().duplicates == 1);
    std::string text = slurp(o.target);
    std::vector<std::string> lines;
    for (size_t pos = 0, end; (end = text.find('\n', pos)) != std::string::npos; pos = end + 1)
        lines.push_back(text.substr(pos, end - pos));
    REQUIRE(lines.size() == 3);
    auto doc = json::parse(lines[0]);
    REQUIRE(doc);
    CHECK(lines[0] == AuditLog::line(denied_rec("10.0.0.9:40000", t0), "node-1"));
    CHECK(std::string((*doc)["node"].GetString()) == "node-1");
    CHECK(std::string((*doc)["direction"].GetString()) == "ingress");
    CHECK(std::string((*doc)["verdict"].GetString()) == "denied");
    CHECK(std::string((*doc)["policy"].GetString()) == "default-deny");
    CHECK(std::string((*doc)["local"]["namespace"].GetString()) == "shop");
    CHECK(std::string((*doc)["local"]["pod"].GetString()) == "api");
    CHECK(std::string((*doc)["local"]["workload"].GetString()) == "api");
    CHECK(std::string((*doc)["remote"]["kind"].GetString()) == "pod");
    CHECK(std::string((*doc)["remote"]["pod"].GetString()) == "db");
    CHECK(std::string((*doc)["remote"]["address"].GetString()) == "10.0.0.9");
    CHECK(std::string((*doc)["protocol"].GetString()) == "TCP");
    CHECK((*doc)["port"].GetInt() == 80);
    CHECK(std::string((*doc)["time"].GetString()).substr(0, 4) == "2025");
}

TEST_CASE("audit log: bounded, never blocking: a full pipe and the rate limit drop and count lines") {
    TempDir dir;
    const std::string fifo = dir.path + "/fifo";
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    boost::asio::io_context io;
    AuditLogOptions o;
    o.target = fifo;
    CHECK_FALSE(AuditLog::open(io, o, "n"));  // no reader yet: refused, not waited for
    int reader = ::open(fifo.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    REQUIRE(reader >= 0);
    o.rate = 1e9;
    o.buffer_bytes = 8192;
    auto log = AuditLog::open(io, o, "n");
    REQUIRE(log);
    const int64_t t0 = 1'765'150'000'000'000'000;
    auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < 5000; ++i) (*log)->write(denied_rec("10.0.0.9:" + std::to_string(10000 + i), t0 + i));
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(5));
    const auto& s = (*log)->stats();
    CHECK(s.buffer_full > 0);  // the pipe (64 KiB) and the buffer (8 KiB) filled: the rest dropped
    CHECK(s.written + s.buffer_full == 5000);
    CHECK((*log)->buffered() <= 8192);
    // The reader catches up: what was buffered follows, whole lines only.
    std::string got;
    char buf[65536];
    for (int round = 0; round < 50; ++round) {
        ssize_t n;
        while ((n = ::read(reader, buf, sizeof buf)) > 0) got.append(buf, static_cast<size_t>(n));
        io.run_for(std::chrono::milliseconds(120));
        if ((*log)->buffered() == 0) {
            while ((n = ::read(reader, buf, sizeof buf)) > 0) got.append(buf, static_cast<size_t>(n));
            break;
        }
    }
    CHECK((*log)->buffered() == 0);
    size_t lines = 0;
    for (size_t pos = 0, end; (end = got.find('\n', pos)) != std::string::npos; pos = end + 1) {
        ++lines;
        CHECK(json::parse(got.substr(pos, end - pos)));
    }
    CHECK(lines == s.written);
    CHECK(!got.empty());
    CHECK(got.back() == '\n');
    ::close(reader);
    // The reader gone: a write error, counted, and signetd lives on (no SIGPIPE).
    (*log)->write(denied_rec("10.0.0.8:1", t0));
    CHECK(s.errors == 1);

    // The rate limit: a burst of one second's worth, then dropped.
    AuditLogOptions r;
    r.target = dir.path + "/rate.jsonl";
    r.rate = 10;
    auto limited = AuditLog::open(io, r, "n");
    REQUIRE(limited);
    for (int i = 0; i < 50; ++i) (*limited)->write(denied_rec("10.0.0.9:" + std::to_string(20000 + i), t0 + i));
    CHECK((*limited)->stats().written >= 10);
    CHECK((*limited)->stats().written <= 11);
    CHECK((*limited)->stats().rate_limited == 50 - (*limited)->stats().written);
}

// Audit mode (docs/policy.md): what the policy would have denied, allowed and
// recorded as a denied attempt with its own verdict, everywhere a verdict shows.
TEST_CASE("flows: the audit-denied verdict in the records, the query filter, InfluxDB and the audit log") {
    CHECK(to_string(Verdict::audit_denied) == "audit-denied");
    for (Verdict v : {Verdict::allowed, Verdict::denied, Verdict::audit_denied})
        CHECK(parse_verdict(to_string(v)) == v);
    CHECK_FALSE(parse_verdict("audit_denied").has_value());
    CHECK_FALSE(parse_verdict("").has_value());

    FlowTable t;
    t.add(rec(Record::denied, "api", "db", Verdict::denied, "default-deny", 1));
    t.add(rec(Record::denied, "api", "web", Verdict::audit_denied, "default-deny", 2));
    t.add(rec(Record::open, "api", "web", Verdict::allowed, "default-deny", 3));
    auto audited = t.query(0, {"", "", "audit-denied"}, 100);
    REQUIRE(audited.size() == 1);
    CHECK(audited[0]->key.peer_pod == "web");
    CHECK(t.query(0, {"", "", "denied"}, 100).size() == 1);  // not the audit-denied one
    CHECK(t.stats().denied_records == 2);                      // both are attempts the policy refuses

    auto pts = exporter::flow_points("node-1", t.take_interval(), {});
    bool found = false;
    for (const auto& p : pts)
        for (const auto& [n, v] : p.tags)
            if (n == "verdict" && v == "audit-denied") found = true;
    CHECK(found);

    auto doc = json::parse(AuditLog::line(rec(Record::denied, "api", "web", Verdict::audit_denied, "default-deny", 5), "n"));
    REQUIRE(doc);
    CHECK(std::string((*doc)["verdict"].GetString()) == "audit-denied");
    CHECK(std::string((*doc)["policy"].GetString()) == "default-deny");
}
