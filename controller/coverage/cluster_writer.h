// What signetd writes to the Kubernetes API about its node (issue #15): a
// Warning Event on each unprotected Pod (coverage/unprotected.h), and the
// removal of the startup taint from its own Node once it enforces
// (--remove-startup-taint; docs/install.md, "Keeping pods off a node until
// signet is ready").
//
// The request bodies are pure functions (unit-tested); ClusterWriter runs the
// requests on a worker thread of its own over one kube::Api (blocking calls),
// and calls back on the controller's io_context. RBAC: events create (and
// patch), nodes get and patch (manifests/10-rbac.yaml).
#pragma once

#include <rapidjson/document.h>

#include <boost/asio/io_context.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "coverage/unprotected.h"
#include "kube/client.h"
#include "signet/result.h"

namespace signet::coverage {

// The taint operators put on a node at registration (kubelet
// --register-with-taints=node.signet.dev/agent-not-ready:NoSchedule), which
// signetd removes once it enforces there.
inline constexpr const char* kStartupTaint = "node.signet.dev/agent-not-ready";
inline constexpr const char* kUnprotectedReason = "SignetUnprotected";

// "2026-12-07T22:35:02Z" (metav1.Time).
std::string rfc3339_seconds(int64_t unix_seconds);

// The Event's name: derived from the pod's name and UID, so that a second
// signetd (a restart) reporting the same pod gets 409 AlreadyExists instead of
// a second Event. At most 253 bytes, a DNS-1123 subdomain as the pod name is.
std::string unprotected_event_name(const std::string& pod, const std::string& uid);

// A core/v1 Event (POST /api/v1/namespaces/NS/events) on the Pod: type
// Warning, reason SignetUnprotected, a message that says what to do.
std::string unprotected_event(const UnprotectedPod& pod, const std::string& node, int64_t now_unix);

// The JSON patch (RFC 6902, application/json-patch+json) that removes every
// taint with `key` from the Node `node` (a Node object as GET returns it),
// keeping the others: a "test" of spec.taints as read, then a "replace". A
// concurrent change of the taints fails the test (422), and the caller reads
// the Node again. nullopt: no taint has that key. An error: not a Node.
Result<std::optional<std::string>> taint_removal_patch(const rapidjson::Value& node, const std::string& key);

class ClusterWriter {
public:
    using Report = std::function<void(const std::string&)>;  // from the worker thread (serialized)
    ClusterWriter(boost::asio::io_context& io, std::unique_ptr<kube::Api> api, Report report);
    ~ClusterWriter();
    ClusterWriter(const ClusterWriter&) = delete;
    ClusterWriter& operator=(const ClusterWriter&) = delete;

    void start();
    // Stops the worker: a request under way returns ECANCELED, queued ones
    // are dropped, no callback runs after this returns.
    void stop();

    // POSTs `event_json` into `ns`. `done` runs on the io_context: ok when
    // created, or when it exists already (409: reported before); EACCES for
    // 403 (RBAC), EINVAL for another 4xx (both: not worth retrying), EIO for
    // the rest (retry later).
    void post_event(const std::string& ns, std::string event_json, std::function<void(Status)> done);

    // Removes every taint `key` from Node `node`: GET, then PATCH with the
    // guarded JSON patch, read again and retried at once on a conflict (409,
    // 422 from the failed test), up to 5 times in a row; any other failure is
    // reported and retried after a back-off (1 s doubling to 30 s) until it
    // works or stop(). `done` runs once on the io_context: true when a taint
    // was removed, false when the Node had none.
    void remove_taint(const std::string& node, const std::string& key, std::function<void(bool)> done);

    uint64_t attempts() const;  // taint removal attempts so far (any thread)

private:
    struct Job {
        std::chrono::steady_clock::time_point not_before;
        std::function<void()> run;
    };
    void run();
    void enqueue(Job job);
    // On the io_context, unless this writer is gone by then.
    void post(std::function<void()> fn);
    Result<bool> try_remove_taint(const std::string& node, const std::string& key);

    boost::asio::io_context& io_;
    std::unique_ptr<kube::Api> api_;
    Report report_;
    std::shared_ptr<int> alive_ = std::make_shared<int>(0);
    std::thread thread_;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::deque<Job> jobs_;
    bool stopping_ = false;
    bool started_ = false;
    uint64_t attempts_ = 0;
};

}  // namespace signet::coverage
