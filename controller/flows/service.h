// signet: the node's flow records, from kernel events to the API, the
// exporters and the graph. Turns each conntrack event or logged denied packet
// of a local pod into a Record: direction, peer (pod, node or address, from
// the cluster view), verdict and the policy rule that decided it (the
// policy query's compact check, cached per policy version: policy/query.h).
#pragma once

#include <rapidjson/document.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <functional>
#include <map>
#include <set>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "../flows/audit_log.h"
#include "../flows/collector.h"
#include "../flows/flow_table.h"
#include "../ipc/server.h"
#include "../pods/registry.h"
#include "../source/source.h"
#include "../policy/query.h"

namespace signet::flows {

class FlowService {
public:
    struct Context {
        std::string node_name;
        const source::Source* source = nullptr;
        const pods::Registry* registry = nullptr;
        policy::Query* policy = nullptr;  // the policy in force (the controller's query)
        const std::vector<std::string>* node_addresses = nullptr;
        // The Service whose frontend (address, protocol, port) the node
        // judges after kube-proxy's translation: a pod's connection to one is
        // decided there, on the backend (docs/policy.md, "Services").
        std::function<std::optional<cache::ObjectKey>(const policy::Ip&, uint8_t, uint16_t)> service_frontend;
        // The identity handshake's mode for a namespace's pods (a static
        // string; null: the node runs no handshake). Unset: none.
        std::function<const char*(const std::string& ns)> handshake_mode;
    };
    // Called with each export interval's aggregates and pod events.
    using Exporter = std::function<void(const std::vector<flows::Aggregate>&, const std::vector<flows::PodEvent>&)>;

    FlowService(boost::asio::io_context& io, Context ctx, bool collect);
    ~FlowService();

    void set_exporter(Exporter e, std::chrono::milliseconds interval);
    void stop();

    // A registration appeared (ADD, or recovered at start) / went away.
    void pod_started(const std::string& key, const api::PodRecord& rec, bool recovered);
    void pod_stopped(const std::string& key, const api::PodRecord& rec);
    // The cluster view changed: cached peer lookups are stale (the policy
    // query drops its own answers when the policy changes).
    void source_changed();

    // GET /v1/flows?after=N&namespace=NS&pod=NS/NAME&verdict=allowed|denied&limit=N
    ipc::Response query(const ipc::Request& req) const;
    // The graph page's JSON (pods, peers, edges over the window).
    std::string graph_json();
    void status(rapidjson::Value& out, rapidjson::Document::AllocatorType& a) const;

    const flows::FlowTable& table() const { return table_; }
    // The current interval's aggregates and pod events, taken now (at shutdown).
    std::pair<std::vector<flows::Aggregate>, std::vector<flows::PodEvent>> take_interval_now() {
        return {table_.take_interval(), table_.take_pod_events()};
    }
    const flows::Collector* collector() const { return collector_.get(); }
    // Denied connections as JSON lines (signetd --audit-log): every denied record goes to it.
    void set_audit_log(std::unique_ptr<flows::AuditLog> log) { audit_ = std::move(log); }
    const flows::AuditLog* audit_log() const { return audit_.get(); }
    // Prometheus series by pod name as well as by workload (signetd --metrics-pod-labels).
    void set_pod_series(bool on) { table_.set_pod_series(on); }

    // Fed by the collector; public for tests.
    void on_conntrack(const std::string& key, const std::vector<nft::CtEvent>& events);
    void on_denied(const std::string& key, const std::vector<nft::LoggedPacket>& packets);

private:
    struct PeerInfo {
        flows::PeerKind kind = flows::PeerKind::address;
        std::string namespace_, name;
    };
    PeerInfo peer_of(const std::string& ip);
    // The workload of a local pod (cache::workload_of), kept while it is local.
    const cache::Workload& workload_of(const std::string& ns, const std::string& name);
    flows::Decision decide(const flows::FlowKey& key, const policy::Ip& peer_ip);
    void schedule_export();

    Context ctx_;
    flows::FlowTable table_;
    std::unique_ptr<flows::Collector> collector_;
    std::map<std::string, std::string> attach_errors_;  // key -> why flows are not collected
    std::set<std::string> started_;                     // registrations seen started
    // Peer index (ip -> pod), rebuilt lazily after a source change.
    std::unordered_map<std::string, cache::ObjectKey> ip_index_;
    bool index_dirty_ = true;
    // Start times of open connections by conntrack id (bounded), for durations
    // when conntrack timestamps are off (they are turned on at attach).
    std::unordered_map<uint64_t, int64_t> open_since_;
    std::map<cache::ObjectKey, cache::Workload> workloads_;
    cache::Workload unknown_workload_;
    std::unique_ptr<flows::AuditLog> audit_;
    Exporter exporter_;
    std::chrono::milliseconds export_interval_{10000};
    boost::asio::steady_timer export_timer_;
    uint64_t exports_ = 0;
};

}  // namespace signet::flows
