// signet: the node's flow records. Pure bookkeeping, fed by the controller
// with conntrack events (allowed connections) and logged denied packets, and
// read by the API (`signetctl flows`), the exporters and the graph page.
//
// Memory is bounded whatever the load: a ring of the latest records, and
// per-key aggregates (export interval, graph window, Prometheus totals) each
// capped; what does not fit is counted, never stored.
#pragma once

#include <rapidjson/document.h>

#include <compare>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace signet::flows {

// audit_denied: the policy would have denied the connection, but the pod's
// namespace is in audit mode (docs/policy.md, "Audit mode"): it was allowed
// and recorded. Recorded like a denied attempt (Record::denied events).
enum class Verdict : uint8_t { allowed, denied, audit_denied };
enum class PeerKind : uint8_t { pod, address, node };

std::string_view to_string(Verdict v);
// "allowed" / "denied" / "audit-denied" (to_string's names); nullopt otherwise.
std::optional<Verdict> parse_verdict(std::string_view s);
// "2026-11-24T22:00:00.123Z" (UTC, milliseconds).
std::string rfc3339(int64_t unix_ns);
std::string_view to_string(PeerKind k);

// What flows are aggregated by: one local pod, one direction, one peer, one
// protocol and destination port, one verdict.
struct FlowKey {
    std::string local_namespace, local_pod;
    bool ingress = false;
    Verdict verdict = Verdict::allowed;
    PeerKind peer_kind = PeerKind::address;
    std::string peer_namespace, peer_pod;  // pod peers
    std::string peer_address;              // the peer's address (every kind)
    uint8_t proto = 0;
    uint16_t port = 0;                     // destination port (0: none)
    auto operator<=>(const FlowKey&) const = default;
    bool operator==(const FlowKey&) const = default;
};

// Why a flow was allowed or denied.
struct Decision {
    std::string policy;  // "NS/NAME" of the rule that allowed it, "default-deny", "none" (pod not isolated), or
                         // "service:NS/NAME" (to a Service frontend: judged at the node, on the backend)
    int rule = -1;       // index of the rule in the policy's ingress/egress list
    bool authenticated = false;  // the peer proved its identity (identity handshake)
    bool operator==(const Decision&) const = default;
};

struct Counts {
    uint64_t connections = 0;  // connections opened (allowed) or attempts logged (denied)
    uint64_t packets_out = 0, bytes_out = 0;  // from the local pod
    uint64_t packets_in = 0, bytes_in = 0;    // to the local pod
    void add(const Counts& o);
};

// One entry of `signetctl flows`.
struct Record {
    enum Event : uint8_t { open, close, denied } event = open;
    uint64_t seq = 0;
    int64_t time_ns = 0;       // unix ns
    FlowKey key;
    Decision decision;
    std::string src, dst;      // "addr:port" of the connection's initiator and responder
    uint16_t sport = 0;
    Counts counts;             // close: the connection's totals; denied: the packet
    int64_t duration_ns = 0;   // close: how long it was open (0 when its start was not seen)
    std::string peer_node;     // authenticated: the node that vouched for the peer pod
    // The identity handshake's mode for the local pod (its namespace's
    // signet.dev/handshake, else the node's): "off", "permissive", "enforce";
    // null on a node that runs no handshake.
    const char* handshake = nullptr;
    // The local pod's workload (cache::workload_of; "" = unknown: the pod itself),
    // what the Prometheus totals are labelled by.
    std::string local_workload_kind, local_workload;
};

struct PodEvent {
    enum Kind : uint8_t { start, stop } kind = start;
    int64_t time_ns = 0;
    std::string namespace_, name, uid;
    std::map<std::string, std::string> labels;
    std::vector<std::string> ips;
};

// A flow key's aggregate over a period.
struct Aggregate {
    FlowKey key;
    Decision decision;
    Counts counts;
    std::string src, dst;  // a sample (the latest)
    int64_t first_ns = 0, last_ns = 0;
};

struct Limits {
    size_t records = 10000;          // ring of the latest records
    size_t interval_keys = 20000;    // distinct keys per export interval
    size_t window_keys = 20000;      // distinct keys in the graph window
    size_t total_keys = 20000;       // distinct (pod, direction, verdict, policy) Prometheus series
    size_t pod_events = 10000;       // pod events waiting for export
    int64_t window_ns = 300'000'000'000;  // graph window: 5 minutes
};

class FlowTable {
public:
    explicit FlowTable(Limits limits = {}) : limits_(limits) {}

    // A record: appended to the ring and added to every aggregate.
    void add(Record r);
    void add_pod_event(PodEvent e);

    // Records with seq > after, matching the filter, at most `limit` (the latest ones).
    struct Filter {
        std::string namespace_;  // local or peer namespace
        std::string pod;         // "NS/NAME" (local or peer)
        std::string verdict;     // "allowed" / "denied" / ""
    };
    std::vector<const Record*> query(uint64_t after, const Filter& f, size_t limit) const;
    uint64_t last_seq() const { return next_seq_ - 1; }

    // The export interval's aggregates and pod events, taken (the next interval starts empty).
    std::vector<Aggregate> take_interval();
    std::vector<PodEvent> take_pod_events();

    // The graph window's aggregates (older ones pruned first).
    std::vector<Aggregate> window(int64_t now_ns);

    // Cumulative totals for Prometheus, by (local workload, direction,
    // verdict, policy), and by the local pod's name too with
    // set_pod_series(true) (signetd --metrics-pod-labels): without it a
    // rollout does not make new series.
    struct TotalKey {
        std::string local_namespace, local_workload_kind, local_workload;
        std::string local_pod;  // "" unless pod series are on
        bool ingress = false;
        Verdict verdict = Verdict::allowed;
        std::string policy;
        auto operator<=>(const TotalKey&) const = default;
    };
    void set_pod_series(bool on) { pod_series_ = on; }
    bool pod_series() const { return pod_series_; }
    const std::map<TotalKey, Counts>& totals() const { return totals_; }
    // A pod gone from the node: its own series go (pod series on).
    void forget_pod(const std::string& ns, const std::string& name);
    // The last local pod of a workload gone: the workload's series go.
    void forget_workload(const std::string& ns, const std::string& kind, const std::string& name);

    struct Stats {
        uint64_t records = 0, denied_records = 0;
        uint64_t dropped_interval = 0, dropped_window = 0, dropped_totals = 0, dropped_pod_events = 0;
    };
    const Stats& stats() const { return stats_; }
    size_t ring_size() const { return ring_.size(); }

private:
    // Aggregates are kept per flow key and deciding policy: a change of policy
    // mid-interval gives a new series, not a relabelled old one.
    using AggKey = std::pair<FlowKey, std::string>;
    static void merge(std::map<AggKey, Aggregate>& into, const Record& r, size_t cap, uint64_t& dropped);

    Limits limits_;
    uint64_t next_seq_ = 1;
    std::deque<Record> ring_;
    std::map<AggKey, Aggregate> interval_, window_;
    std::map<TotalKey, Counts> totals_;
    bool pod_series_ = false;
    std::vector<PodEvent> pod_events_;
    Stats stats_;
};

// JSON of a record (the API's and `signetctl flows -o json`'s shape).
void to_json(const Record& r, rapidjson::Value& out, rapidjson::Document::AllocatorType& a);

}  // namespace signet::flows
