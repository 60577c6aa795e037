// The controller's outputs for operators besides its API: flow points for
// InfluxDB, the Prometheus exposition, and the metrics/graph listener.
#include <algorithm>

#include "controller.h"
#include "export/flow_points.h"
#include "metrics/exposition.h"
#include "metrics/process.h"
#include "signet/json.h"
#include "signet/log.h"

namespace signet::core {

namespace {

constexpr const char* kLog = "controller";

}  // namespace

Status Controller::start_outputs() {
    flows_->set_pod_series(opts_.metrics_pod_labels);
    if (opts_.audit_log) {
        auto audit = flows::AuditLog::open(io_, *opts_.audit_log, opts_.node_name);
        if (!audit) return audit.error();
        log::info(kLog, "denied connections as JSON lines to " + opts_.audit_log->target + " (at most " +
                            std::to_string(static_cast<uint64_t>(opts_.audit_log->rate)) + " a second)");
        flows_->set_audit_log(std::move(*audit));
    }
    if (opts_.influx) {
        influx_ = std::make_unique<exporter::InfluxExporter>(*opts_.influx);
        influx_->start();
        std::string node = opts_.node_name;
        flows_->set_exporter(
            [this, node](const std::vector<flows::Aggregate>& aggs, const std::vector<flows::PodEvent>& events) {
                influx_->submit(exporter::flow_points(node, aggs, events));
            },
            opts_.export_interval);
        log::info(kLog, "exporting flows to " + exporter::describe(*opts_.influx) + " every " +
                            std::to_string(opts_.export_interval.count()) + " ms");
    }
    if (!opts_.metrics_address.empty()) {
        metrics::Handlers h;
        h.metrics = [this] { return metrics_text(); };
        if (opts_.graph) h.graph_json = [this] { return flows_->graph_json(); };
        // The same readiness as the API socket's /readyz, for kubelet's httpGet probes.
        h.ready = [this] { return ready_; };
        listener_ = std::make_unique<metrics::HttpListener>(io_, std::move(h));
        if (auto st = listener_->listen(opts_.metrics_address); !st) return st;
        log::info(kLog, "metrics on " + opts_.metrics_address + " (port " + std::to_string(listener_->port()) +
                            ")" + (opts_.graph ? ", graph page at /graph" : ""));
    }
    if (!opts_.health_address.empty()) {
        // No /metrics, no graph: /healthz (the event loop answers) and /readyz.
        metrics::Handlers h;
        h.ready = [this] { return ready_; };
        health_listener_ = std::make_unique<metrics::HttpListener>(io_, std::move(h));
        if (auto st = health_listener_->listen(opts_.health_address); !st) return st;
        log::info(kLog, "probes (/healthz, /readyz) on " + opts_.health_address + " (port " +
                            std::to_string(health_listener_->port()) + ")");
    }
    return {};
}

void Controller::stop_outputs() {
    if (listener_) listener_->stop();
    if (health_listener_) health_listener_->stop();
    if (influx_) {
        // What the last interval gathered goes out before the exporter stops.
        auto aggs = flows_->take_interval_now();
        if (!aggs.first.empty() || !aggs.second.empty())
            influx_->submit(exporter::flow_points(opts_.node_name, aggs.first, aggs.second));
        influx_->stop();
    }
}

uint16_t Controller::metrics_port() const { return listener_ ? listener_->port() : 0; }
uint16_t Controller::health_port() const { return health_listener_ ? health_listener_->port() : 0; }

std::string Controller::metrics_text() const {
    metrics::Writer w;
    using L = std::vector<metrics::Label>;
    w.family("signet_build_info", "gauge", "signetd's version (always 1)");
    // node_name, not node: the ServiceMonitor sets node as a target label.
    w.sample("signet_build_info", L{{"version", SIGNET_VERSION}, {"node_name", opts_.node_name}}, 1);
    w.family("signet_ready", "gauge", "1 when signetd enforces a complete snapshot of its source");
    w.sample("signet_ready", {}, ready_ ? 1 : 0);
    w.family("signet_pod_attachments", "gauge", "Registered pod attachments on this node");
    w.sample("signet_pod_attachments", {}, static_cast<double>(registry_.size()));
    // Unprotected pods (issue #15; docs/troubleshooting.md, "Unprotected pods").
    w.family("signet_unprotected_pods", "gauge",
             "Running pods on this node that never came through the CNI chain (no table: nothing enforced), "
             "past the grace period (--unprotected-grace)");
    w.sample("signet_unprotected_pods", {}, static_cast<double>(unprotected_.unprotected()));
    w.family("signet_source_version", "gauge", "Changes of the source's object set since signetd started");
    w.sample("signet_source_version", {}, static_cast<double>(source_version_));
    w.family("signet_applied_version", "gauge", "The source version in force in every local pod's table");
    w.sample("signet_applied_version", {}, static_cast<double>(applied_version()));
    w.family("signet_source_objects", "gauge", "Objects in the source's snapshot, by kind");
    const auto& snap = source_->snapshot();
    w.sample("signet_source_objects", L{{"kind", "Namespace"}}, static_cast<double>(snap.namespaces.size()));
    w.sample("signet_source_objects", L{{"kind", "Pod"}}, static_cast<double>(snap.pods.size()));
    w.sample("signet_source_objects", L{{"kind", "NetworkPolicy"}}, static_cast<double>(snap.policies.size()));

    // The source's watch streams (Kubernetes): seconds since each last delivered an event.
    {
        rapidjson::Document sd;
        rapidjson::Value st;
        source_->status(st, sd.GetAllocator());
        const auto* res = json::find(st, "resources");
        if (res != nullptr && res->IsObject()) {
            w.family("signet_source_seconds_since_event", "gauge",
                     "Seconds since the source's watch of a resource last delivered an event or bookmark (-1: none yet)");
            for (auto it = res->MemberBegin(); it != res->MemberEnd(); ++it) {
                const auto* lag = json::find(it->value, "lagSeconds");
                if (lag != nullptr && lag->IsNumber())
                    w.sample("signet_source_seconds_since_event", L{{"resource", it->name.GetString()}}, lag->GetDouble());
            }
            w.family("signet_source_watch_restarts_total", "counter",
                     "Watches of the source restarted, by resource and reason (timeout: the server ended it at its "
                     "timeoutSeconds, normal; expired: 410 Gone, relisted; error: the connection failed, resumed "
                     "after a back-off)");
            for (auto it = res->MemberBegin(); it != res->MemberEnd(); ++it)
                for (const auto& [field, reason] : {std::pair{"timeouts", "timeout"}, std::pair{"expired", "expired"},
                                                    std::pair{"reconnects", "error"}}) {
                    const auto* n = json::find(it->value, field);
                    if (n != nullptr && n->IsNumber())
                        w.sample("signet_source_watch_restarts_total",
                                 L{{"resource", it->name.GetString()}, {"reason", reason}}, n->GetDouble());
                }
        }
    }

    // The API socket's access policy (docs/api.md, "Who may call").
    {
        auto r = server_.refusals();
        w.family("signet_api_refused_total", "counter",
                 "API requests refused by the caller check (SO_PEERCRED), by reason (caller: neither root nor "
                 "--api-group; read_only: an --api-group member asking to change something)");
        w.sample("signet_api_refused_total", L{{"reason", "caller"}}, static_cast<double>(r.caller));
        w.sample("signet_api_refused_total", L{{"reason", "read_only"}}, static_cast<double>(r.read_only));
    }

    // CNI ADD: the plugin waits for this before the pod's sandbox goes on.
    w.family("signet_cni_add_seconds", "histogram",
             "CNI ADD: from the plugin's registration request read by signetd to the pod's table in force "
             "(successful ADDs)");
    w.histogram("signet_cni_add_seconds", {}, cni_add_latency_);

    // The datapath.
    auto es = enforcer_.stats();
    w.family("signet_nft_program_seconds", "histogram",
             "Time from a change to every affected pod table written (compile + one nftables batch per pod)");
    w.histogram("signet_nft_program_seconds", {}, enforcer_.program_latency());
    w.family("signet_nft_batches_total", "counter", "nftables batches written into pod tables, by kind");
    w.sample("signet_nft_batches_total", L{{"kind", "table"}}, static_cast<double>(es.table_writes));
    w.sample("signet_nft_batches_total", L{{"kind", "set_elements"}}, static_cast<double>(es.set_updates));
    w.family("signet_nft_program_failures_total", "counter", "Failed attempts to program a pod table (retried)");
    w.sample("signet_nft_program_failures_total", {}, static_cast<double>(es.failures));
    w.family("signet_nft_failing_attachments", "gauge", "Pod attachments whose table is not in force now");
    w.sample("signet_nft_failing_attachments", {}, static_cast<double>(es.failing));
    w.family("signet_conntrack_cut_total", "counter",
             "Established connections cut because a change no longer allowed them");
    w.sample("signet_conntrack_cut_total", {}, static_cast<double>(es.cut));

    // Services judged after kube-proxy's translation (docs/policy.md).
    {
        bool judged = services_->bound() && services_->problem().empty() && enforcer_.services_deferred() &&
                      enforcer_.node_table_error().empty();
        w.family("signet_services_judged_at_node", "gauge",
                 "1 when Service connections are judged after kube-proxy's translation; 0: isolated egress refuses "
                 "them (fail closed; signetctl status says why)");
        w.sample("signet_services_judged_at_node", {}, judged ? 1.0 : 0.0);
        w.family("signet_services_judged_pods", "gauge", "Local pods whose Service connections the node's table judges");
        w.sample("signet_services_judged_pods", {}, static_cast<double>(enforcer_.judged_pods()));
        if (const auto* judge = services_->judge()) {
            const auto& c = judge->counters();
            w.family("signet_service_connections_total", "counter",
                     "New translated Service connections judged at the node, by verdict");
            w.sample("signet_service_connections_total", L{{"verdict", "allowed"}}, static_cast<double>(c.allowed));
            w.sample("signet_service_connections_total", L{{"verdict", "denied"}}, static_cast<double>(c.denied));
            w.sample("signet_service_connections_total", L{{"verdict", "audit-denied"}}, static_cast<double>(c.audit_denied));
            w.family("signet_service_drops_total", "counter",
                     "Queued Service packets dropped before judging, by reason");
            w.sample("signet_service_drops_total", L{{"reason", "not_a_local_pod"}}, static_cast<double>(c.not_a_local_pod));
            w.sample("signet_service_drops_total", L{{"reason", "malformed"}}, static_cast<double>(c.malformed));
        }
    }

    // The identity handshake.
    if (handshake_) {
        const auto& c = handshake_->counters();
        w.family("signet_handshake_segments_total", "counter", "Segments the handshake judged (SYN, SYN-ACK, the final ACK)");
        w.sample("signet_handshake_segments_total", {}, static_cast<double>(c.segments));
        w.family("signet_handshake_tokens_total", "counter", "Tokens added to and verified on this node's segments, by kind");
        w.sample("signet_handshake_tokens_total", L{{"op", "added"}, {"kind", "mac"}}, static_cast<double>(c.tokens_added_mac));
        w.sample("signet_handshake_tokens_total", L{{"op", "added"}, {"kind", "signed"}},
                 static_cast<double>(c.tokens_added_signed));
        w.sample("signet_handshake_tokens_total", L{{"op", "verified"}, {"kind", "mac"}}, static_cast<double>(c.verified_mac));
        w.sample("signet_handshake_tokens_total", L{{"op", "verified"}, {"kind", "signed"}},
                 static_cast<double>(c.verified_signed));
        w.family("signet_handshake_connections_total", "counter",
                 "New connections the handshake judged (per side), by outcome");
        w.sample("signet_handshake_connections_total", L{{"outcome", "authenticated"}},
                 static_cast<double>(c.accepted_authenticated));
        w.sample("signet_handshake_connections_total", L{{"outcome", "by_address"}},
                 static_cast<double>(c.accepted_by_address));
        w.sample("signet_handshake_connections_total", L{{"outcome", "denied"}}, static_cast<double>(c.denied));
        w.family("signet_handshake_proofs_total", "counter", "Final-ACK proofs sent and verified");
        w.sample("signet_handshake_proofs_total", L{{"op", "sent"}}, static_cast<double>(c.proofs_sent));
        w.sample("signet_handshake_proofs_total", L{{"op", "verified"}}, static_cast<double>(c.proofs_verified));
        const auto qv = handshake_->queue_view();
        const auto& d = qv.drops;
        w.family("signet_handshake_drops_total", "counter",
                 "Handshake segments signet dropped, by kind (lost: legitimate segments signet failed to pass, "
                 "0 under a sane load; refused: bad tokens; denied: policy; discarded: behind the client's RST) "
                 "and place");
        auto drop = [&](const char* kind, const char* place, uint64_t n) {
            w.sample("signet_handshake_drops_total", L{{"kind", kind}, {"place", place}}, static_cast<double>(n));
        };
        drop("lost", "kernel_queue_full", d.kernel_queue_full);
        drop("lost", "kernel_socket_full", d.kernel_socket_full);
        drop("lost", "verdict_error", d.verdict_errors);
        drop("lost", "handler_error", d.handler_errors);
        drop("lost", "rewrite_failed", d.rewrite_failed);
        drop("lost", "limits", d.limits);
        drop("lost", "internal", d.internal);
        drop("lost", "held_for_proof", d.held_for_proof);
        drop("refused", "token", d.refused);
        drop("refused", "malformed_message", d.malformed_messages);
        drop("denied", "policy", d.denied);
        drop("discarded", "after_reset", d.discarded);
        w.family("signet_handshake_refused_total", "counter", "Segments the handshake refused, by reason");
        for (const auto& [reason, n] : c.refused)
            w.sample("signet_handshake_refused_total", L{{"reason", reason}}, static_cast<double>(n));
        w.family("signet_handshake_pending_evicted_total", "counter",
                 "Handshakes in flight given up to make room, by state (done: completed, kept for a retransmission; "
                 "live: the oldest still open)");
        w.sample("signet_handshake_pending_evicted_total", L{{"state", "done"}}, static_cast<double>(c.pending_evicted_done));
        w.sample("signet_handshake_pending_evicted_total", L{{"state", "live"}}, static_cast<double>(c.pending_evicted_live));
        w.family("signet_handshake_deferred_to_node_total", "counter",
                 "Client SYNs to a Service frontend whose handshake is left to the node's table (after kube-proxy's "
                 "translation)");
        w.sample("signet_handshake_deferred_to_node_total", {}, static_cast<double>(c.deferred_to_node));
        w.family("signet_handshake_closing_checked_total", "counter",
                 "Enforce mode: segments of closing authenticated connections checked against the pod's sockets "
                 "(those whose socket was gone are in signet_handshake_drops_total{kind=\"discarded\"})");
        w.sample("signet_handshake_closing_checked_total", {}, static_cast<double>(c.closing_checked));
        w.family("signet_handshake_recovered_total", "counter",
                 "Connections caught between SYN and proof by a restart of signetd, completed in the new one's first "
                 "seconds, by the local pod's side (docs/handshake.md, \"Across a restart\")");
        w.sample("signet_handshake_recovered_total", L{{"side", "server"}}, static_cast<double>(c.recovered_server));
        w.sample("signet_handshake_recovered_total", L{{"side", "client"}}, static_cast<double>(c.recovered_client));
        w.family("signet_handshake_queue_packets_total", "counter",
                 "Packets the handshake's kernel queues gave signetd, by verdict (accepted includes rewritten)");
        w.sample("signet_handshake_queue_packets_total", L{{"verdict", "accepted"}}, static_cast<double>(qv.queue.accepted));
        w.sample("signet_handshake_queue_packets_total", L{{"verdict", "dropped"}}, static_cast<double>(qv.queue.dropped));
        w.family("signet_handshake_queue_rewritten_total", "counter",
                 "Accepted queue packets sent on with a rewrite (a token added or stripped)");
        w.sample("signet_handshake_queue_rewritten_total", {}, static_cast<double>(qv.queue.rewritten));
        w.family("signet_handshake_queue_overruns_total", "counter",
                 "ENOBUFS reports on the queue sockets (each stands for segments in "
                 "signet_handshake_drops_total{place=\"kernel_socket_full\"})");
        w.sample("signet_handshake_queue_overruns_total", {}, static_cast<double>(d.socket_overruns));
        w.family("signet_handshake_queue_waiting", "gauge", "Packets waiting in the kernel queues for a verdict now");
        w.sample("signet_handshake_queue_waiting", {}, static_cast<double>(qv.kernel.waiting));
        w.family("signet_handshake_queue_readers", "gauge", "Kernel queues bound (one per pod netns with the handshake)");
        w.sample("signet_handshake_queue_readers", {}, static_cast<double>(qv.readers));
        w.family("signet_handshake_queue_max_batch", "gauge", "Most queue packets judged in one wake-up since start");
        w.sample("signet_handshake_queue_max_batch", {}, static_cast<double>(qv.queue.max_batch));
        const auto e = handshake_->entries();
        w.family("signet_handshake_state_entries", "gauge", "The handshake state's entries now, by part");
        w.sample("signet_handshake_state_entries", L{{"part", "pending"}}, static_cast<double>(e.pending));
        w.sample("signet_handshake_state_entries", L{{"part", "replay_cache"}}, static_cast<double>(e.replay_cache));
        w.sample("signet_handshake_state_entries", L{{"part", "buckets"}}, static_cast<double>(e.buckets));
        w.sample("signet_handshake_state_entries", L{{"part", "pair_keys"}}, static_cast<double>(e.pair_keys));
        const auto m = handshake_->memory();
        w.family("signet_handshake_memory_limit_bytes", "gauge", "The handshake state's memory budget (--handshake-memory)");
        w.sample("signet_handshake_memory_limit_bytes", {}, static_cast<double>(m.limit));
        w.family("signet_handshake_memory_bytes", "gauge", "The handshake state's estimated memory, by part");
        w.sample("signet_handshake_memory_bytes", L{{"part", "replay_cache"}}, static_cast<double>(m.replay_cache));
        w.sample("signet_handshake_memory_bytes", L{{"part", "pending"}}, static_cast<double>(m.pending));
        w.sample("signet_handshake_memory_bytes", L{{"part", "buckets"}}, static_cast<double>(m.buckets));
        w.sample("signet_handshake_memory_bytes", L{{"part", "pair_keys"}}, static_cast<double>(m.pair_keys));
    }

    // Flows. Labels that kube-prometheus does not set itself (namespace and
    // pod would become exported_namespace, exported_pod): the local pod's
    // namespace and workload, and its name only with --metrics-pod-labels.
    const auto& totals = flows_->table().totals();
    auto flow_labels = [](const flows::FlowTable::TotalKey& k) {
        L l{{"local_namespace", k.local_namespace},
            {"local_workload_kind", k.local_workload_kind},
            {"local_workload", k.local_workload}};
        if (!k.local_pod.empty()) l.push_back({"local_pod", k.local_pod});
        l.push_back({"direction", k.ingress ? "ingress" : "egress"});
        l.push_back({"verdict", std::string(flows::to_string(k.verdict))});
        l.push_back({"policy", k.policy});
        return l;
    };
    w.family("signet_flow_connections_total", "counter",
             "Connections of local pods (allowed: opened; denied: attempts logged, rate-limited), by workload "
             "(and pod with --metrics-pod-labels), direction, verdict and deciding policy");
    for (const auto& [k, c] : totals)
        w.sample("signet_flow_connections_total", flow_labels(k), static_cast<double>(c.connections));
    w.family("signet_flow_bytes_total", "counter",
             "Bytes of closed connections of local pods, by workload, direction, verdict, policy and way (out of / "
             "into the pod)");
    for (const auto& [k, c] : totals) {
        L out = flow_labels(k), in = out;
        out.push_back({"way", "out"});
        in.push_back({"way", "in"});
        w.sample("signet_flow_bytes_total", out, static_cast<double>(c.bytes_out));
        w.sample("signet_flow_bytes_total", in, static_cast<double>(c.bytes_in));
    }
    const auto& fs = flows_->table().stats();
    w.family("signet_flow_records_total", "counter", "Flow records made (open, close, denied)");
    w.sample("signet_flow_records_total", {}, static_cast<double>(fs.records));
    w.family("signet_flow_dropped_total", "counter", "Flow data not kept because a bound was reached, by what");
    w.sample("signet_flow_dropped_total", L{{"what", "interval_keys"}}, static_cast<double>(fs.dropped_interval));
    w.sample("signet_flow_dropped_total", L{{"what", "window_keys"}}, static_cast<double>(fs.dropped_window));
    w.sample("signet_flow_dropped_total", L{{"what", "series"}}, static_cast<double>(fs.dropped_totals));
    w.sample("signet_flow_dropped_total", L{{"what", "pod_events"}}, static_cast<double>(fs.dropped_pod_events));
    if (const auto* col = flows_->collector()) {
        const auto cs = col->stats();
        w.sample("signet_flow_dropped_total", L{{"what", "kernel_overruns"}}, static_cast<double>(cs.overruns));
        // Kernel data lost before signetd read it (status: flows.lost).
        w.family("signet_flow_events_lost_total", "counter",
                 "Kernel events lost before signetd read them (socket buffer full, datagram truncated), by source");
        w.sample("signet_flow_events_lost_total", L{{"source", "conntrack"}}, static_cast<double>(cs.lost_ct_events));
        w.sample("signet_flow_events_lost_total", L{{"source", "nflog"}}, static_cast<double>(cs.lost_denied_packets));
        w.sample("signet_flow_events_lost_total", L{{"source", "truncated"}}, static_cast<double>(cs.truncated));
        w.sample("signet_flow_events_lost_total", L{{"source", "enobufs"}}, static_cast<double>(cs.overruns));
    }

    // The audit log of denied connections (--audit-log).
    if (const auto* audit = flows_->audit_log()) {
        const auto& as = audit->stats();
        w.family("signet_audit_log_lines_total", "counter", "Denied connections written to the audit log (--audit-log)");
        w.sample("signet_audit_log_lines_total", {}, static_cast<double>(as.written));
        w.family("signet_audit_log_dropped_total", "counter",
                 "Denied connections not written to the audit log, by reason (rate_limited: above --audit-log-rate; "
                 "buffer_full: the reader is behind; error: the write failed)");
        w.sample("signet_audit_log_dropped_total", L{{"reason", "rate_limited"}}, static_cast<double>(as.rate_limited));
        w.sample("signet_audit_log_dropped_total", L{{"reason", "buffer_full"}}, static_cast<double>(as.buffer_full));
        w.sample("signet_audit_log_dropped_total", L{{"reason", "error"}}, static_cast<double>(as.errors));
        w.family("signet_audit_log_duplicates_total", "counter",
                 "Retransmissions of a denied attempt already written (same pod, addresses, ports, protocol within "
                 "30 s)");
        w.sample("signet_audit_log_duplicates_total", {}, static_cast<double>(as.duplicates));
    }

    // The InfluxDB exporter.
    if (influx_) {
        auto s = influx_->stats();
        w.family("signet_influxdb_points_total", "counter", "Points given to the InfluxDB exporter, by outcome");
        w.sample("signet_influxdb_points_total", L{{"outcome", "submitted"}}, static_cast<double>(s.submitted));
        w.sample("signet_influxdb_points_total", L{{"outcome", "written"}}, static_cast<double>(s.written));
        w.sample("signet_influxdb_points_total", L{{"outcome", "dropped"}}, static_cast<double>(s.dropped));
        w.sample("signet_influxdb_points_total", L{{"outcome", "rejected"}}, static_cast<double>(s.rejected));
        w.sample("signet_influxdb_points_total", L{{"outcome", "invalid"}}, static_cast<double>(s.invalid));
        w.family("signet_influxdb_buffered_points", "gauge", "Points waiting for InfluxDB (bounded)");
        w.sample("signet_influxdb_buffered_points", {}, static_cast<double>(s.buffered));
        w.family("signet_influxdb_batches_total", "counter", "Write requests to InfluxDB, by outcome");
        w.sample("signet_influxdb_batches_total", L{{"outcome", "ok"}}, static_cast<double>(s.batches_ok));
        w.sample("signet_influxdb_batches_total", L{{"outcome", "failed"}}, static_cast<double>(s.batches_failed));
        w.family("signet_influxdb_last_success_timestamp_seconds", "gauge", "Unix time of the last accepted write");
        w.sample("signet_influxdb_last_success_timestamp_seconds", {}, static_cast<double>(s.last_success_unix));
    }
    // The standard process collector's set, from /proc/self.
    metrics::write_process_metrics(w, metrics::read_process_stats());
    std::string text = w.take();
    return text;
}

}  // namespace signet::core
