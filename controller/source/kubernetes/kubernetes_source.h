// signetd --source kubernetes: Namespaces, Pods, NetworkPolicies, Nodes and
// Services read from the Kubernetes API, one kube::Reflector per resource (list +
// watch as client-go's reflector does it: kube/reflector.h).
//
// Threads: one reflector thread per resource and one for refresh(); decoded
// objects are queued and applied on the controller's io_context in batches
// (a relist of 10,000 pods is one change). snapshot(), nodes(), ready(),
// status() and on_change belong to the loop thread. `report` is called from
// the libcurl threads (serialized; never concurrently with itself).
#pragma once

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <thread>
#include <vector>

#include "../source.h"
#include "kube/client.h"
#include "kube/reflector.h"
#include "resources.h"

namespace signet::source {

struct KubernetesOptions {
    std::string kubeconfig;  // empty = in-cluster configuration
    std::string context;     // kubeconfig context; empty = current-context
    std::string node_name;   // this node (its addresses are shown in the status)
    kube::InClusterPaths in_cluster;  // overridable for tests

    int page_size = 500;                                  // list limit=
    std::chrono::seconds watch_timeout{300};              // timeoutSeconds is random in [t, 2t), as client-go
    std::chrono::milliseconds backoff_initial{800};       // client-go's reflector: 800 ms ...
    std::chrono::milliseconds backoff_max{30000};         // ... doubling, jittered, capped at 30 s
    std::chrono::milliseconds coalesce{20};               // events within this window are one change
    std::chrono::milliseconds refresh_grace{2000};        // then a watch still behind relists
    std::chrono::milliseconds refresh_timeout{30000};
    size_t max_event_bytes = kube::kMaxEventBytes;
};

class KubernetesSource final : public Source {
public:
    using Report = std::function<void(const std::string&)>;
    // Validates the configuration (reads the kubeconfig, finds in-cluster
    // settings); no network access until start().
    static Result<std::unique_ptr<KubernetesSource>> create(const KubernetesOptions& opts, Report report);
    ~KubernetesSource() override;

    Status start(boost::asio::io_context& io, std::function<void()> on_change) override;
    void stop() override;
    void refresh(std::function<void(Status)> done) override;
    const cache::Snapshot& snapshot() const override { return snapshot_; }
    cache::Delta take_delta() override { return std::exchange(delta_, {}); }
    bool ready() const override { return ready_; }
    // The highest resourceVersion applied over all resources ("" before the first list).
    std::string origin_version() const override;
    void status(rapidjson::Value& out, rapidjson::Document::AllocatorType& alloc) const override;

    // Nodes by name (name and InternalIP addresses), and this node when known.
    const std::map<std::string, k8s::NodeInfo>& nodes() const { return nodes_; }
    const k8s::NodeInfo* local_node() const;
    // The resourceVersion applied for one resource (loop thread).
    std::string applied_version(k8s::Resource r) const { return applied_rv_[static_cast<int>(r)]; }

    // Another client of the source's server and credentials, for requests
    // of the caller's own (signetd's writes: Events, the startup taint).
    std::unique_ptr<kube::Api> new_client() const { return make_api_(); }

    // Builds the API clients: one per reflector and one for refresh().
    using ApiFactory = std::function<std::unique_ptr<kube::Api>()>;
    // For tests: the source over `make_api`'s clients (recorded answers)
    // instead of the kubeconfig's server.
    static std::unique_ptr<KubernetesSource> with_api(const KubernetesOptions& opts, ApiFactory make_api, Report report);

private:
    struct Update;
    struct Watcher;
    struct PendingRefresh;

    KubernetesSource(const KubernetesOptions& opts, kube::ClientConfig cfg, ApiFactory make_api, Report report);

    // libcurl threads
    void run_refresher();
    void push(Update u);
    void emit(const std::string& msg);

    // loop thread
    void schedule_drain();
    void drain();
    void check_refreshes();

    KubernetesOptions opts_;
    kube::ClientConfig cfg_;
    std::unique_ptr<kube::KubeClient> client_;  // the kubeconfig's (null over recorded answers)
    ApiFactory make_api_;
    Report report_;
    std::mutex report_mu_;

    boost::asio::io_context* io_ = nullptr;
    std::function<void()> on_change_;
    std::shared_ptr<int> alive_ = std::make_shared<int>(0);
    std::atomic<bool> stopping_{false};
    bool started_ = false;
    std::mutex wait_mu_;
    std::condition_variable wait_cv_;

    std::vector<std::unique_ptr<Watcher>> watchers_;

    std::mutex queue_mu_;
    std::vector<Update> queue_;

    // refresh worker
    std::thread refresher_;
    std::unique_ptr<kube::Api> refresh_api_;
    uint64_t refresh_requested_ = 0;  // under wait_mu_
    uint64_t refresh_served_ = 0;

    // loop thread state
    cache::Snapshot snapshot_;
    cache::Delta delta_;  // keys changed since take_delta()
    std::map<std::string, k8s::NodeInfo> nodes_;
    std::string applied_rv_[k8s::kResourceCount];
    bool listed_[k8s::kResourceCount] = {};
    bool ready_ = false;
    uint64_t batches_ = 0;
    std::unique_ptr<boost::asio::steady_timer> drain_timer_;
    bool drain_scheduled_ = false;
    std::vector<PendingRefresh> refreshes_;
    uint64_t next_refresh_id_ = 0;
    std::unique_ptr<boost::asio::steady_timer> refresh_timer_;
};

// The factory signetd's main calls for `--source kubernetes`.
Result<std::unique_ptr<Source>> make_kubernetes_source(const KubernetesOptions& opts,
                                                       std::function<void(const std::string&)> report);

}  // namespace signet::source
