#include "coverage/unprotected.h"

#include <algorithm>

namespace signet::coverage {

bool must_be_registered(const cache::Pod& pod, const std::string& node) {
    return !node.empty() && pod.node_name == node && !pod.host_network && pod.phase == "Running";
}

bool is_registered(const cache::Pod& pod, const std::map<std::string, api::PodRecord>& registered) {
    for (const auto& [k, rec] : registered) {
        const std::string& ns = rec.reg.namespace_.empty() ? std::string(cache::kDefaultNamespace) : rec.reg.namespace_;
        if (ns == pod.namespace_ && rec.reg.name == pod.name) return true;
    }
    return false;
}

UnprotectedTracker::Change UnprotectedTracker::update(const std::map<cache::ObjectKey, cache::Pod>& pods,
                                                      const std::map<std::string, api::PodRecord>& registered,
                                                      const std::string& node, int64_t now_ms) {
    Change change;
    // The registry by namespace/name: it holds this node's pods only (tens),
    // the source may hold the whole cluster's.
    std::map<cache::ObjectKey, std::map<std::string, api::PodRecord>> by_name;
    for (const auto& [k, rec] : registered) {
        cache::ObjectKey key{rec.reg.namespace_.empty() ? std::string(cache::kDefaultNamespace) : rec.reg.namespace_,
                             rec.reg.name};
        by_name[key].emplace(k, rec);
    }
    static const std::map<std::string, api::PodRecord> kNone;
    std::map<cache::ObjectKey, UnprotectedPod> next;
    for (const auto& [key, pod] : pods) {
        if (!must_be_registered(pod, node)) continue;
        auto r = by_name.find(key);
        if (is_registered(pod, r == by_name.end() ? kNone : r->second)) continue;
        auto old = pods_.find(key);
        UnprotectedPod u;
        if (old != pods_.end() && old->second.uid == pod.uid)
            u = old->second;  // still the same pod
        else
            u.since_ms = now_ms;
        u.namespace_ = pod.namespace_;
        u.name = pod.name;
        u.uid = pod.uid;
        u.ips = pod.pod_ips;
        if (!u.reported && now_ms - u.since_ms >= grace_.count()) {
            u.reported = true;
            change.reported.push_back(key);
        }
        next.emplace(key, std::move(u));
    }
    for (auto& [key, u] : pods_) {
        auto n = next.find(key);
        if (u.reported && (n == next.end() || n->second.uid != u.uid)) change.resolved.push_back(std::move(u));
    }
    pods_ = std::move(next);
    return change;
}

size_t UnprotectedTracker::unprotected() const {
    return static_cast<size_t>(
        std::count_if(pods_.begin(), pods_.end(), [](const auto& p) { return p.second.reported; }));
}

std::optional<int64_t> UnprotectedTracker::next_deadline() const {
    std::optional<int64_t> best;
    for (const auto& [key, u] : pods_)
        if (!u.reported && (!best || u.since_ms + grace_.count() < *best)) best = u.since_ms + grace_.count();
    return best;
}

}  // namespace signet::coverage
