// Pods on this node that never came through the CNI chain (issue #15): the
// Running, non-hostNetwork pods the source places here (spec.nodeName ==
// this node) compared with the pod registry. A pod started before signet was
// chained, or while a network plugin's rewrite had dropped signet's entry,
// has no table in its netns: nothing is enforced for it, and only this
// comparison notices.
//
// Pure values: the tracker is fed the source's pods, the registry and the
// time, and says which pods are unprotected (past the grace period) and
// which just became so. The controller reports them (status, metric, an
// Event on the Pod); docs/troubleshooting.md, "Unprotected pods".
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "cache/objects.h"
#include "signet/api.h"

namespace signet::coverage {

// Whether the chain must have registered `pod` by now: placed on `node`
// (spec.nodeName), phase Running, not hostNetwork. A manifest folder's pods
// qualify only when they say so (nodeName and status.phase written out), as
// a folder that mirrors a cluster does; others are never checked.
bool must_be_registered(const cache::Pod& pod, const std::string& node);

// Whether one of `registered` is `pod`'s: same namespace and name. Not the
// UID: a static pod's sandbox is registered with the kubelet's UID for it,
// which is not its mirror Pod's metadata.uid; and a registration left by an
// earlier pod of the same name goes with its netns (the sweep, every 5 s),
// well within the grace period.
bool is_registered(const cache::Pod& pod, const std::map<std::string, api::PodRecord>& registered);

struct UnprotectedPod {
    std::string namespace_;
    std::string name;
    std::string uid;
    std::vector<std::string> ips;  // status.podIPs
    int64_t since_ms = 0;          // unix ms: when signetd first saw it Running here without a registration
    bool reported = false;         // past the grace period: counted, shown, an Event is due

    // The Event on the Pod (the controller's bookkeeping; pending = not asked yet).
    enum class Event { pending, sending, sent, failed };
    Event event = Event::pending;
    int64_t event_retry_ms = 0;  // pending: not before this unix ms (after a failed attempt)
    std::string event_error;     // failed, or the last attempt's error
};

class UnprotectedTracker {
public:
    explicit UnprotectedTracker(std::chrono::milliseconds grace) : grace_(grace) {}

    struct Change {
        std::vector<cache::ObjectKey> reported;  // past the grace period in this update
        std::vector<UnprotectedPod> resolved;    // reported before, and registered, gone or no longer Running now
    };
    // Compares the source's pods with the registry at `now_ms` (unix ms). A
    // pod is tracked from the first update that sees it Running here without
    // a registration, and reported once that lasted `grace`; it is forgotten
    // as soon as it is registered, leaves the node or stops Running.
    Change update(const std::map<cache::ObjectKey, cache::Pod>& pods,
                  const std::map<std::string, api::PodRecord>& registered, const std::string& node, int64_t now_ms);

    // Every tracked pod (within the grace period too), by namespace/name.
    const std::map<cache::ObjectKey, UnprotectedPod>& tracked() const { return pods_; }
    std::map<cache::ObjectKey, UnprotectedPod>& tracked_mut() { return pods_; }
    // Pods past the grace period (the count in status and signet_unprotected_pods).
    size_t unprotected() const;
    // Tracked pods still within the grace period.
    size_t pending() const { return pods_.size() - unprotected(); }
    // When the earliest pending pod's grace ends (unix ms), if any is pending.
    std::optional<int64_t> next_deadline() const;
    std::chrono::milliseconds grace() const { return grace_; }

private:
    std::chrono::milliseconds grace_;
    std::map<cache::ObjectKey, UnprotectedPod> pods_;
};

}  // namespace signet::coverage
