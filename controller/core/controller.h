// The node controller's core: ties the source (object cache), the pod
// registry and the API together on one Boost.Asio event loop.
//
// Versions: every change of the source's object set bumps sourceVersion.
// A pod's appliedVersion is the source version last applied to it; the
// controller's appliedVersion is the version applied to every local pod.
// Callers that need a change in force wait for appliedVersion (sync), never
// sleep.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <map>
#include <set>
#include <memory>
#include <optional>
#include <string>

#include "../ipc/server.h"
#include "../nft/backend.h"
#include "enforcer.h"
#include "flows/service.h"
#include "datapath/engine.h"
#include "datapath/node_services.h"
#include "credentials/node_identity.h"
#include "export/influx.h"
#include "metrics/http_listener.h"
#include "../pods/registry.h"
#include "coverage/cluster_writer.h"
#include "coverage/unprotected.h"
#include "../source/source.h"
#include "../policy/mode.h"
#include "signet/result.h"

namespace signet::core {

using credentials::NodeIdentity;
using flows::FlowService;
using handshake::HandshakeEngine;
using handshake::HandshakeMode;
using handshake::parse_handshake_mode;

struct Options {
    std::string node_name;
    std::string socket_path;
    std::string state_dir;
    std::chrono::milliseconds sweep_interval{5000};
    std::chrono::milliseconds retry_interval{1000};  // reprogramming of failed pods
    std::string queue_backend = "unknown";           // what the kernel probe found (for status)
    // The node's own addresses; empty = read them from the host's interfaces.
    std::function<std::vector<std::string>()> node_addresses = host_addresses;
    // Flow records from each pod netns's conntrack events and denied-packet log.
    bool collect_flows = true;
    // Flow export to InfluxDB (none when unset), every export_interval.
    std::optional<exporter::InfluxConfig> influx;
    std::chrono::milliseconds export_interval{10000};
    // The read-only metrics listener ("" = off) and whether it serves the graph page.
    std::string metrics_address;
    bool graph = false;
    // Flow series by pod name as well as by workload (--metrics-pod-labels; off: a rollout makes no new series).
    bool metrics_pod_labels = false;
    // Denied connections as JSON lines (--audit-log stdout|FILE; none when unset).
    std::optional<flows::AuditLogOptions> audit_log;
    // The probe listener ("" = off): /healthz and /readyz only, for kubelet's
    // httpGet probes on a loopback address, whatever --metrics-address is.
    std::string health_address;
    // --authority dir:DIR: this node's identity credentials ("" = none).
    std::string authority_dir;
    // --authority kubernetes-csr: how the CSR is made and where the API is.
    credentials::CsrClientOptions csr;
    // --policy-mode: the node's default policy mode (docs/policy.md, "Audit
    // mode"); a namespace's signet.dev/policy-mode label overrides it.
    policy::PolicyMode policy_mode = policy::PolicyMode::enforce;
    // --handshake: the identity handshake on new TCP connections, and how the
    // kernel queues them (the probe's answer).
    HandshakeMode handshake = HandshakeMode::off;
    nft::QueueBackend handshake_queue = nft::QueueBackend::none;
    // Enforce mode's TCP rules (docs/handshake.md, "No TCP connection without
    // the handshake"): on by default; --no-handshake-strict-tcp turns them off
    // (`handshake_strict_tcp_set` records that it was said).
    bool handshake_strict_tcp = true;
    bool handshake_strict_tcp_set = false;
    size_t handshake_memory = handshake::kDefaultHandshakeMemory;  // --handshake-memory (bytes)
    // Services (docs/policy.md, "Services"): judge connections to Service
    // frontends after kube-proxy's translation, in the node's netns
    // (`node_netns`: a path; "" = signetd's own). Needs a queue backend
    // (`service_queue`, the kernel probe's answer; none: not judged there, so
    // refused by isolated egress, fail closed).
    bool services = true;
    std::string node_netns;
    nft::QueueBackend service_queue = nft::QueueBackend::none;
    // --api-group NAME|GID: members may read the API (GET); only root may
    // change anything (docs/api.md, "Who may call"). "" = root only.
    std::string api_group;
    // Network namespaces never registered as a pod's: signetd's own and PID
    // 1's; node_netns is added at start (pods/registry.h).
    std::vector<pods::HostNetns> host_netns = pods::default_host_netns();
    // Unprotected pods (coverage/unprotected.h): a Running pod placed on this
    // node counts once it has gone this long without a registration
    // (--unprotected-grace).
    std::chrono::milliseconds unprotected_grace{30000};
    // The Kubernetes API signetd writes to (Events on unprotected pods, the
    // startup taint): a client per call, null = none (--source dir).
    std::function<std::unique_ptr<kube::Api>()> cluster_api;
    // --remove-startup-taint: the taint key removed from this node's Node once
    // signetd enforces ("" = off; needs cluster_api).
    std::string startup_taint;
};

class Controller {
public:
    Controller(boost::asio::io_context& io, Options opts, std::unique_ptr<source::Source> source,
               std::unique_ptr<nft::Backend> backend);
    ~Controller();

    // Loads the registry, reads the source, starts the watch and the API.
    Status start();
    void stop();

    uint64_t source_version() const { return source_version_; }
    uint64_t applied_version() const;
    bool ready() const { return ready_; }
    FlowService& flows() { return *flows_; }
    // The Prometheus exposition (what GET /metrics serves).
    std::string metrics_text() const;
    uint16_t metrics_port() const;  // 0 when the listener is off
    uint16_t health_port() const;   // 0 when --health-address is off

    // The API entry point (also used by tests without a socket).
    void handle(const ipc::Request& req, ipc::Responder respond);
    // What `signetctl sync` (POST /v1/sync) and SIGHUP do: read the source
    // afresh, then call `done` once all of it is in force in every local pod.
    void sync(std::function<void(Status)> done);

private:
    struct SyncWaiter {
        uint64_t target;
        std::shared_ptr<boost::asio::steady_timer> timer;
        ipc::Responder respond;
    };

    void on_source_change();
    Status start_outputs();
    void stop_outputs();
    void apply_all();
    void resolve(api::PodRecord& rec) const;
    void persist();
    void notify_waiters();
    void sweep();
    void refresh_node_addresses();
    void schedule_sweep();
    // Unprotected pods: compared after every change of the source or the
    // registry, and when the earliest grace period ends; Events sent.
    void check_unprotected();
    void unprotected_status(rapidjson::Value& out, rapidjson::Document::AllocatorType& a) const;
    // The startup taint: removed once ready and every pod applied.
    void maybe_remove_startup_taint();

    ipc::Response status_json() const;
    void handle_register(const ipc::Request& req, ipc::Responder& respond);
    void handle_gc(const ipc::Request& req, ipc::Responder& respond);
    void handle_pods(ipc::Responder& respond);
    void handle_pod(const std::string& method, const std::string& key, ipc::Responder& respond);
    void handle_sync(const ipc::Request& req, ipc::Responder respond);
    void handle_explain(const ipc::Request& req, ipc::Responder& respond);
    // Services at the node (datapath/node_services.h): checked at start, each ADD and sweep.
    void check_services() { services_->check(enforcing_); }
    void explain_identity(const policy::Endpoint& from, const policy::Endpoint& to, uint16_t port,
                          rapidjson::Document& d, std::string& text);
    void handle_policies(const ipc::Request& req, ipc::Responder& respond);
    // A registration is gone (DEL, GC, dead netns).
    void forget(const std::string& key, const api::PodRecord& gone, bool remove_table);
    void schedule_retry();
    // Answers `respond` once every local pod has `target` applied, or 504 after `timeout`.
    void wait_applied(uint64_t target, std::chrono::milliseconds timeout, ipc::Responder respond);

    boost::asio::io_context& io_;
    Options opts_;
    std::unique_ptr<source::Source> source_;
    pods::Registry registry_;
    Enforcer enforcer_;
    // The policy query over the enforcer's compiler (its cache per policy
    // version): lent to the enforcer, the flow service and the handshake engine.
    policy::Query policy_;
    bool enforcing_ = false;  // the enforcer has the source's first complete snapshot
    std::vector<std::string> node_addresses_;
    std::unique_ptr<FlowService> flows_;
    std::unique_ptr<exporter::InfluxExporter> influx_;
    std::unique_ptr<metrics::HttpListener> listener_;
    std::unique_ptr<metrics::HttpListener> health_listener_;
    std::unique_ptr<NodeIdentity> identity_;
    std::unique_ptr<HandshakeEngine> handshake_;
    std::unique_ptr<handshake::NodeServices> services_;
    // Audit mode per local pod (registry key) as last given to the enforcer:
    // a namespace's label change rewrites the pods whose mode it changed.
    std::map<std::string, bool> audited_;
    bool audit_of(const api::PodRecord& rec) const;
    std::set<cache::ObjectKey> refresh_policy_modes();
    ipc::Server server_;
    boost::asio::steady_timer sweep_timer_;
    boost::asio::steady_timer retry_timer_;
    coverage::UnprotectedTracker unprotected_;
    boost::asio::steady_timer unprotected_timer_;
    std::unique_ptr<coverage::ClusterWriter> cluster_;  // null: no API to write to
    uint64_t unprotected_events_ = 0;                     // Events created (or found made before)
    enum class TaintState { off, waiting, removing, removed, absent } taint_ = TaintState::off;
    bool ready_ = false;
    bool stopped_ = false;
    uint64_t source_version_ = 0;
    std::map<uint64_t, SyncWaiter> waiters_;  // by id
    uint64_t next_waiter_ = 0;
    int64_t started_at_ = 0;
    uint64_t registrations_ = 0, unregistrations_ = 0, swept_ = 0;
    // A CNI ADD: from its registration request read to the pod's table in force.
    Histogram cni_add_latency_;
};

}  // namespace signet::core
