// The flow table: aggregation, bounds and what is counted when a bound is hit.
#include <doctest/doctest.h>

#include "../../controller/core/controller.h"
#include "export/flow_points.h"
#include "../../controller/flows/flow_table.h"

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

}  // namespace

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
