#include "flow_table.h"

#include <algorithm>
#include <cstdio>
#include <ctime>

#include "signet/json.h"

namespace signet::flows {

using rapidjson::Value;

std::string rfc3339(int64_t ns) {
    time_t secs = static_cast<time_t>(ns / 1'000'000'000);
    tm t{};
    gmtime_r(&secs, &t);
    char buf[96];
    std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", t.tm_year + 1900, t.tm_mon + 1, t.tm_mday,
                  t.tm_hour, t.tm_min, t.tm_sec, static_cast<int>((ns / 1'000'000) % 1000));
    return buf;
}

std::string_view to_string(Verdict v) {
    switch (v) {
        case Verdict::allowed: return "allowed";
        case Verdict::denied: return "denied";
        case Verdict::audit_denied: return "audit-denied";
    }
    return "denied";
}

std::optional<Verdict> parse_verdict(std::string_view s) {
    for (Verdict v : {Verdict::allowed, Verdict::denied, Verdict::audit_denied})
        if (to_string(v) == s) return v;
    return std::nullopt;
}

std::string_view to_string(PeerKind k) {
    switch (k) {
        case PeerKind::pod: return "pod";
        case PeerKind::node: return "node";
        case PeerKind::address: break;
    }
    return "address";
}

void Counts::add(const Counts& o) {
    connections += o.connections;
    packets_out += o.packets_out;
    bytes_out += o.bytes_out;
    packets_in += o.packets_in;
    bytes_in += o.bytes_in;
}

void FlowTable::merge(std::map<AggKey, Aggregate>& into, const Record& r, size_t cap, uint64_t& dropped) {
    AggKey key{r.key, r.decision.policy};
    auto it = into.find(key);
    if (it == into.end()) {
        if (into.size() >= cap) {
            ++dropped;
            return;
        }
        it = into.emplace(std::move(key), Aggregate{r.key, r.decision, {}, {}, {}, r.time_ns, r.time_ns}).first;
    }
    Aggregate& a = it->second;
    a.decision = r.decision;
    a.counts.add(r.counts);
    a.src = r.src;
    a.dst = r.dst;
    a.first_ns = std::min(a.first_ns, r.time_ns);
    a.last_ns = std::max(a.last_ns, r.time_ns);
}

void FlowTable::add(Record r) {
    r.seq = next_seq_++;
    ++stats_.records;
    if (r.event == Record::denied) ++stats_.denied_records;
    // An open carries one connection and no bytes yet; a close carries the
    // bytes and must not count the connection twice.
    Record agg = r;
    if (r.event == Record::close) agg.counts.connections = 0;
    merge(interval_, agg, limits_.interval_keys, stats_.dropped_interval);
    merge(window_, agg, limits_.window_keys, stats_.dropped_window);
    TotalKey tk{r.key.local_namespace,
                r.local_workload.empty() ? std::string("Pod") : r.local_workload_kind,
                r.local_workload.empty() ? r.key.local_pod : r.local_workload,
                pod_series_ ? r.key.local_pod : std::string(),
                r.key.ingress,
                r.key.verdict,
                r.decision.policy};
    auto t = totals_.find(tk);
    if (t == totals_.end()) {
        if (totals_.size() >= limits_.total_keys)
            ++stats_.dropped_totals;
        else
            totals_.emplace(tk, agg.counts);
    } else {
        t->second.add(agg.counts);
    }
    ring_.push_back(std::move(r));
    while (ring_.size() > limits_.records) ring_.pop_front();
}

void FlowTable::add_pod_event(PodEvent e) {
    if (pod_events_.size() >= limits_.pod_events) {
        ++stats_.dropped_pod_events;
        return;
    }
    pod_events_.push_back(std::move(e));
}

std::vector<const Record*> FlowTable::query(uint64_t after, const Filter& f, size_t limit) const {
    auto matches = [&](const Record& r) {
        const FlowKey& k = r.key;
        if (!f.verdict.empty() && to_string(k.verdict) != f.verdict) return false;
        if (!f.namespace_.empty() && k.local_namespace != f.namespace_ && k.peer_namespace != f.namespace_)
            return false;
        if (!f.pod.empty() && k.local_namespace + "/" + k.local_pod != f.pod &&
            (k.peer_kind != PeerKind::pod || k.peer_namespace + "/" + k.peer_pod != f.pod))
            return false;
        return true;
    };
    std::vector<const Record*> out;
    for (auto it = ring_.rbegin(); it != ring_.rend() && it->seq > after && out.size() < limit; ++it)
        if (matches(*it)) out.push_back(&*it);
    std::reverse(out.begin(), out.end());
    return out;
}

std::vector<Aggregate> FlowTable::take_interval() {
    std::vector<Aggregate> out;
    out.reserve(interval_.size());
    for (auto& [k, a] : interval_) out.push_back(std::move(a));
    interval_.clear();
    return out;
}

std::vector<PodEvent> FlowTable::take_pod_events() { return std::exchange(pod_events_, {}); }

std::vector<Aggregate> FlowTable::window(int64_t now_ns) {
    std::vector<Aggregate> out;
    for (auto it = window_.begin(); it != window_.end();) {
        if (it->second.last_ns < now_ns - limits_.window_ns) {
            it = window_.erase(it);
        } else {
            out.push_back(it->second);
            ++it;
        }
    }
    return out;
}

void FlowTable::forget_pod(const std::string& ns, const std::string& name) {
    if (name.empty()) return;
    for (auto it = totals_.begin(); it != totals_.end();)
        it = it->first.local_namespace == ns && it->first.local_pod == name ? totals_.erase(it) : std::next(it);
}

void FlowTable::forget_workload(const std::string& ns, const std::string& kind, const std::string& name) {
    for (auto it = totals_.begin(); it != totals_.end();)
        it = it->first.local_namespace == ns && it->first.local_workload_kind == kind &&
                     it->first.local_workload == name
                 ? totals_.erase(it)
                 : std::next(it);
}

void to_json(const Record& r, Value& out, rapidjson::Document::AllocatorType& a) {
    out.SetObject();
    const FlowKey& k = r.key;
    out.AddMember("seq", Value(r.seq), a);
    out.AddMember("time", json::str(rfc3339(r.time_ns), a), a);
    const char* ev = r.event == Record::open ? "open" : r.event == Record::close ? "close" : "denied";
    out.AddMember("event", Value(ev, a), a);
    out.AddMember("direction", Value(k.ingress ? "ingress" : "egress", a), a);
    out.AddMember("verdict", json::str(std::string(to_string(k.verdict)), a), a);
    out.AddMember("pod", json::str(k.local_namespace + "/" + k.local_pod, a), a);
    Value peer(rapidjson::kObjectType);
    peer.AddMember("kind", json::str(std::string(to_string(k.peer_kind)), a), a);
    if (k.peer_kind == PeerKind::pod) peer.AddMember("pod", json::str(k.peer_namespace + "/" + k.peer_pod, a), a);
    peer.AddMember("address", json::str(k.peer_address, a), a);
    out.AddMember("peer", peer, a);
    out.AddMember("proto", Value(k.proto), a);
    out.AddMember("port", Value(k.port), a);
    out.AddMember("src", json::str(r.src, a), a);
    out.AddMember("dst", json::str(r.dst, a), a);
    out.AddMember("policy", json::str(r.decision.policy, a), a);
    out.AddMember("rule", Value(r.decision.rule), a);
    out.AddMember("authenticated", Value(r.decision.authenticated), a);
    if (r.handshake != nullptr) out.AddMember("handshake", Value(rapidjson::StringRef(r.handshake)), a);
    if (r.decision.authenticated && k.peer_kind == PeerKind::pod) {
        Value id(rapidjson::kObjectType);
        id.AddMember("node", json::str(r.peer_node, a), a);
        id.AddMember("namespace", json::str(k.peer_namespace, a), a);
        id.AddMember("pod", json::str(k.peer_pod, a), a);
        out.AddMember("peer_identity", id, a);
    }
    Value c(rapidjson::kObjectType);
    c.AddMember("packetsOut", Value(r.counts.packets_out), a);
    c.AddMember("bytesOut", Value(r.counts.bytes_out), a);
    c.AddMember("packetsIn", Value(r.counts.packets_in), a);
    c.AddMember("bytesIn", Value(r.counts.bytes_in), a);
    out.AddMember("counts", c, a);
    if (r.event == Record::close) out.AddMember("durationSeconds", Value(static_cast<double>(r.duration_ns) / 1e9), a);
}

}  // namespace signet::flows
