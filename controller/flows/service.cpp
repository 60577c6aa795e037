#include "flows/service.h"

#include <algorithm>
#include <chrono>

#include "../nft/ruleset.h"
#include "../policy/addr.h"
#include "signet/json.h"
#include "signet/log.h"

namespace signet::flows {

using rapidjson::Value;

namespace {

constexpr const char* kLog = "flows";
constexpr size_t kMaxOpen = 65536;

int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

std::string strip_prefix(const std::string& cidr) {
    size_t slash = cidr.find('/');
    return slash == std::string::npos ? cidr : cidr.substr(0, slash);
}

std::string hostport(const std::string& addr, uint16_t port, nft::Family f) {
    return f == nft::Family::v6 ? "[" + addr + "]:" + std::to_string(port) : addr + ":" + std::to_string(port);
}

// An address as text. IPv4 by hand: inet_ntop formats it with printf, and
// this runs for every conntrack event (it was the event path's largest cost).
std::string addr_text(const policy::Ip& ip) {
    if (ip.family != nft::Family::v4) return policy::to_string(ip);
    char buf[16];
    char* p = buf;
    for (int i = 0; i < 4; ++i) {
        unsigned v = ip.addr.bytes[static_cast<size_t>(i)];
        if (v >= 100) *p++ = static_cast<char>('0' + v / 100);
        if (v >= 10) *p++ = static_cast<char>('0' + v / 10 % 10);
        *p++ = static_cast<char>('0' + v % 10);
        if (i < 3) *p++ = '.';
    }
    return std::string(buf, p);
}

flows::PodEvent pod_event(flows::PodEvent::Kind kind, const api::PodRecord& rec) {
    flows::PodEvent e;
    e.kind = kind;
    e.time_ns = now_ns();
    e.namespace_ = rec.reg.namespace_;
    e.name = rec.reg.name;
    e.uid = rec.reg.uid;
    e.labels = rec.labels;
    for (const auto& ip : rec.reg.ips) e.ips.push_back(strip_prefix(ip));
    return e;
}

}  // namespace

FlowService::FlowService(boost::asio::io_context& io, Context ctx, bool collect)
    : ctx_(std::move(ctx)), export_timer_(io) {
    if (collect)
        collector_ = std::make_unique<flows::Collector>(
            io, [this](const std::string& k, const std::vector<nft::CtEvent>& e) { on_conntrack(k, e); },
            [this](const std::string& k, const std::vector<nft::LoggedPacket>& p) { on_denied(k, p); });
}

FlowService::~FlowService() { stop(); }

void FlowService::stop() {
    export_timer_.cancel();
    if (collector_) collector_->stop();
}

void FlowService::set_exporter(Exporter e, std::chrono::milliseconds interval) {
    exporter_ = std::move(e);
    export_interval_ = interval;
    schedule_export();
}

void FlowService::schedule_export() {
    export_timer_.expires_after(export_interval_);
    export_timer_.async_wait([this](boost::system::error_code ec) {
        if (ec) return;
        auto aggregates = table_.take_interval();
        auto events = table_.take_pod_events();
        if (exporter_ && (!aggregates.empty() || !events.empty())) exporter_(aggregates, events);
        ++exports_;
        schedule_export();
    });
}

void FlowService::pod_started(const std::string& key, const api::PodRecord& rec, bool recovered) {
    started_.insert(key);
    if (collector_) {
        if (auto st = collector_->attach(key, rec.reg.netns); !st) {
            std::string why = st.error().message;
            if (attach_errors_[key] != why)
                log::warn(kLog, "no flow records for " + rec.reg.namespace_ + "/" + rec.reg.name + ": " + why);
            attach_errors_[key] = why;
        } else {
            attach_errors_.erase(key);
        }
    }
    index_dirty_ = true;
    if (recovered) return;  // it started before this signetd: not a start event
    table_.add_pod_event(pod_event(flows::PodEvent::start, rec));
}

void FlowService::pod_stopped(const std::string& key, const api::PodRecord& rec) {
    if (!started_.erase(key)) return;  // never started (its ADD failed)
    if (collector_) collector_->detach(key);
    attach_errors_.erase(key);
    index_dirty_ = true;
    table_.add_pod_event(pod_event(flows::PodEvent::stop, rec));
    bool still_local = false;
    for (const auto& [k, r] : ctx_.registry->all())
        still_local = still_local || (r.reg.namespace_ == rec.reg.namespace_ && r.reg.name == rec.reg.name);
    if (still_local) return;
    table_.forget_pod(rec.reg.namespace_, rec.reg.name);
    // The workload's series stay while another of its pods is on the node (a rollout).
    const cache::Workload w = workload_of(rec.reg.namespace_, rec.reg.name);
    workloads_.erase(cache::ObjectKey{rec.reg.namespace_, rec.reg.name});
    bool workload_local = false;
    for (const auto& [k, r] : ctx_.registry->all()) {
        if (r.reg.namespace_ != rec.reg.namespace_) continue;
        if (workload_of(r.reg.namespace_, r.reg.name) == w) {
            workload_local = true;
            break;
        }
    }
    if (!workload_local) table_.forget_workload(rec.reg.namespace_, w.kind, w.name);
    // Series made before its Pod object was seen named the pod itself.
    table_.forget_workload(rec.reg.namespace_, "Pod", rec.reg.name);
}

const cache::Workload& FlowService::workload_of(const std::string& ns, const std::string& name) {
    cache::ObjectKey key{ns, name};
    if (auto it = workloads_.find(key); it != workloads_.end()) return it->second;
    const auto& pods = ctx_.source->snapshot().pods;
    if (auto p = pods.find(key); p != pods.end()) return workloads_.emplace(key, cache::workload_of(p->second)).first->second;
    // No Pod object (yet): the pod itself, not remembered (the object may come).
    unknown_workload_ = cache::Workload{"Pod", name};
    return unknown_workload_;
}

void FlowService::source_changed() { index_dirty_ = true; }

FlowService::PeerInfo FlowService::peer_of(const std::string& ip) {
    if (index_dirty_) {
        ip_index_.clear();
        for (const auto& [k, pod] : ctx_.source->snapshot().pods) {
            if (pod.host_network) continue;
            for (const auto& a : pod.pod_ips) ip_index_[strip_prefix(a)] = k;
        }
        // What the CNI reported for local pods wins (the Pod object may lag).
        for (const auto& [k, rec] : ctx_.registry->all())
            for (const auto& a : rec.reg.ips) ip_index_[strip_prefix(a)] = cache::ObjectKey{rec.reg.namespace_, rec.reg.name};
        index_dirty_ = false;
    }
    PeerInfo p;
    if (auto it = ip_index_.find(ip); it != ip_index_.end()) {
        p.kind = flows::PeerKind::pod;
        p.namespace_ = it->second.namespace_;
        p.name = it->second.name;
    } else if (ctx_.node_addresses != nullptr &&
               std::find(ctx_.node_addresses->begin(), ctx_.node_addresses->end(), ip) != ctx_.node_addresses->end()) {
        p.kind = flows::PeerKind::node;
    }
    return p;
}

flows::Decision FlowService::decide(const flows::FlowKey& k, const policy::Ip& peer_ip) {
    flows::Decision d;
    d.policy = k.verdict != flows::Verdict::allowed ? "default-deny" : "none";
    policy::ConnKey ck;
    ck.ingress = k.ingress;
    ck.local = cache::ObjectKey{k.local_namespace, k.local_pod};
    if (k.peer_kind == flows::PeerKind::pod) ck.peer_pod = cache::ObjectKey{k.peer_namespace, k.peer_pod};
    ck.peer_ip = peer_ip;
    ck.proto = k.proto;
    ck.port = k.port;
    if (!k.ingress && k.verdict == flows::Verdict::allowed && ctx_.service_frontend)
        if (auto svc = ctx_.service_frontend(peer_ip, k.proto, k.port)) {
            // Judged at the node after the translation, on the backend.
            d.policy = "service:" + svc->namespace_ + "/" + svc->name;
            return d;
        }
    const policy::ConnVerdict v = ctx_.policy->check(ck);
    if (!v.answered) return d;
    if (!v.isolated) {
        d.policy = "none";
    } else if (k.verdict != flows::Verdict::allowed || !v.allowed) {
        d.policy = "default-deny";
    } else {
        d.policy = ctx_.policy->label(v.by);  // the first rule's policy, or why (from the node)
        d.rule = v.rule;
    }
    return d;
}

void FlowService::on_conntrack(const std::string& key, const std::vector<nft::CtEvent>& events) {
    const api::PodRecord* rec = ctx_.registry->get(key);
    if (rec == nullptr) return;
    std::vector<policy::Ip> own;
    for (const auto& text : rec->reg.ips)
        if (auto ip = policy::parse_ip(text)) own.push_back(*ip);
    int64_t now = now_ns();
    const bool timestamps = collector_ && collector_->timestamps(key);
    for (const auto& ev : events) {
        if (ev.kind == nft::CtEvent::Update) continue;  // a state change (not subscribed): nothing to record
        const nft::CtTuple& o = ev.entry.orig;
        policy::Ip src{o.family, o.src}, dst{o.family, o.dst};
        bool from_pod = std::find(own.begin(), own.end(), src) != own.end();
        bool to_pod = std::find(own.begin(), own.end(), dst) != own.end();
        if (from_pod == to_pod) continue;  // loopback or not the pod's own traffic
        bool ingress = to_pod;
        std::string src_text = addr_text(src), dst_text = addr_text(dst);
        const std::string& peer_ip = ingress ? src_text : dst_text;
        PeerInfo peer = peer_of(peer_ip);
        flows::Record r;
        r.time_ns = now;
        r.key = flows::FlowKey{rec->reg.namespace_, rec->reg.name, ingress, flows::Verdict::allowed, peer.kind,
                               peer.namespace_, peer.name, peer_ip, o.proto, o.dport};
        r.decision = decide(r.key, ingress ? src : dst);
        const cache::Workload& w = workload_of(rec->reg.namespace_, rec->reg.name);
        r.local_workload_kind = w.kind;
        r.local_workload = w.name;
        // The identity handshake marks the connections whose peer proved its
        // identity (datapath/engine.h); the mark is read per event.
        auto authenticated = [&](const nft::CtEntry& e) {
            if (!nft::ct_mark_authenticated(e.mark) || peer.kind != flows::PeerKind::pod) return;
            r.decision.authenticated = true;
            const auto& pods = ctx_.source->snapshot().pods;
            auto it = pods.find(cache::ObjectKey{peer.namespace_, peer.name});
            r.peer_node = it != pods.end() ? it->second.node_name : ctx_.node_name;
        };
        authenticated(ev.entry);
        if (ctx_.handshake_mode) r.handshake = ctx_.handshake_mode(rec->reg.namespace_);
        r.src = hostport(src_text, o.sport, o.family);
        r.dst = hostport(dst_text, o.dport, o.family);
        r.sport = o.sport;
        uint64_t id = (static_cast<uint64_t>(ev.entry.id) << 16) ^ o.sport;
        const nft::CtEntry& e = ev.entry;
        if (ev.kind == nft::CtEvent::New) {
            r.event = flows::Record::open;
            r.counts.connections = 1;
            // Without conntrack timestamps the duration comes from here (bounded).
            if (!timestamps) {
                if (open_since_.size() >= kMaxOpen) open_since_.clear();
                open_since_[id] = now;
            }
        } else {
            // DESTROY: the end of the entry, with its final counters (accounting) and,
            // with timestamps, its start and stop: no request to the kernel.
            // For TCP that is after the closing state's conntrack timeout
            // (TIME_WAIT: 120 s; CLOSE after a reset: 10 s): docs/flows.md.
            r.event = flows::Record::close;
            r.counts.connections = 1;
            // The initiator's direction is "orig": for an egress flow that is the pod.
            r.counts.packets_out = ingress ? e.reply_packets : e.orig_packets;
            r.counts.bytes_out = ingress ? e.reply_bytes : e.orig_bytes;
            r.counts.packets_in = ingress ? e.orig_packets : e.reply_packets;
            r.counts.bytes_in = ingress ? e.orig_bytes : e.reply_bytes;
            if (e.start_ns != 0 && e.stop_ns >= e.start_ns) {
                r.duration_ns = static_cast<int64_t>(e.stop_ns - e.start_ns);
            } else if (auto it = open_since_.find(id); it != open_since_.end()) {
                r.duration_ns = now - it->second;
                open_since_.erase(it);
            }
        }
        table_.add(std::move(r));
    }
}

void FlowService::on_denied(const std::string& key, const std::vector<nft::LoggedPacket>& packets) {
    const api::PodRecord* rec = ctx_.registry->get(key);
    if (rec == nullptr) return;
    int64_t now = now_ns();
    for (const auto& p : packets) {
        bool ingress = p.prefix.find("ingress") != std::string::npos;
        // An audit-mode pod's table logs what its policy would drop with its
        // own prefix, and accepts it (docs/policy.md, "Audit mode").
        const bool audit = p.prefix.rfind(nft::kAuditLogPrefix, 0) == 0;
        const nft::CtTuple& t = p.tuple;
        std::string src = policy::to_string(t.family, t.src), dst = policy::to_string(t.family, t.dst);
        std::string peer_ip = ingress ? src : dst;
        PeerInfo peer = peer_of(peer_ip);
        flows::Record r;
        r.event = flows::Record::denied;
        r.time_ns = now;
        r.key = flows::FlowKey{rec->reg.namespace_, rec->reg.name, ingress,
                               audit ? flows::Verdict::audit_denied : flows::Verdict::denied, peer.kind,
                               peer.namespace_, peer.name, peer_ip, t.proto, t.dport};
        r.decision = decide(r.key, policy::Ip{t.family, ingress ? t.src : t.dst});
        if (ctx_.handshake_mode) r.handshake = ctx_.handshake_mode(rec->reg.namespace_);
        const cache::Workload& w = workload_of(rec->reg.namespace_, rec->reg.name);
        r.local_workload_kind = w.kind;
        r.local_workload = w.name;
        r.src = hostport(src, t.sport, t.family);
        r.dst = hostport(dst, t.dport, t.family);
        r.sport = t.sport;
        r.counts.connections = 1;
        (ingress ? r.counts.packets_in : r.counts.packets_out) = 1;
        (ingress ? r.counts.bytes_in : r.counts.bytes_out) = p.length;
        if (audit_) audit_->write(r);
        table_.add(std::move(r));
    }
}

ipc::Response FlowService::query(const ipc::Request& req) const {
    flows::FlowTable::Filter f;
    f.namespace_ = ipc::query_param(req.query, "namespace");
    f.pod = ipc::query_param(req.query, "pod");
    f.verdict = ipc::query_param(req.query, "verdict");
    if (!f.verdict.empty() && !flows::parse_verdict(f.verdict))
        return ipc::json_error(400, "verdict: expected allowed, denied or audit-denied");
    uint64_t after = 0;
    size_t limit = 1000;
    auto number = [](const std::string& s, uint64_t& out) {
        if (s.empty()) return true;
        char* end = nullptr;
        errno = 0;
        unsigned long long v = std::strtoull(s.c_str(), &end, 10);
        if (errno != 0 || end == s.c_str() || *end != '\0' || s[0] == '-') return false;
        out = v;
        return true;
    };
    if (!number(ipc::query_param(req.query, "after"), after))
        return ipc::json_error(400, "after: expected a record number");
    uint64_t lim = limit;
    if (!number(ipc::query_param(req.query, "limit"), lim) || lim == 0)
        return ipc::json_error(400, "limit: expected a positive number");
    limit = static_cast<size_t>(std::min<uint64_t>(lim, 10000));
    rapidjson::Document d(rapidjson::kObjectType);
    auto& a = d.GetAllocator();
    d.AddMember("lastSeq", Value(table_.last_seq()), a);
    Value list(rapidjson::kArrayType);
    for (const flows::Record* r : table_.query(after, f, limit)) {
        Value v;
        flows::to_json(*r, v, a);
        list.PushBack(v, a);
    }
    d.AddMember("flows", list, a);
    ipc::Response resp;
    resp.status = 200;
    resp.content_type = "application/json";
    resp.body = json::to_string(d);
    return resp;
}

std::string FlowService::graph_json() {
    int64_t now = now_ns();
    rapidjson::Document d(rapidjson::kObjectType);
    auto& a = d.GetAllocator();
    d.AddMember("node", json::str(ctx_.node_name, a), a);
    d.AddMember("generatedAt", json::str(flows::rfc3339(now), a), a);
    d.AddMember("windowSeconds", Value(300), a);
    auto aggs = table_.window(now);
    // Pods: every local pod, and every pod seen as a peer.
    std::map<std::string, std::pair<cache::ObjectKey, bool>> pods;  // id -> key, local
    for (const auto& [k, rec] : ctx_.registry->all())
        pods[rec.reg.namespace_ + "/" + rec.reg.name] = {{rec.reg.namespace_, rec.reg.name}, true};
    std::map<std::string, std::pair<std::string, std::string>> peers;  // id -> kind, address
    auto peer_id = [&](const flows::FlowKey& k) -> std::string {
        if (k.peer_kind == flows::PeerKind::pod) {
            std::string id = k.peer_namespace + "/" + k.peer_pod;
            pods.emplace(id, std::make_pair(cache::ObjectKey{k.peer_namespace, k.peer_pod}, false));
            return id;
        }
        std::string id = k.peer_kind == flows::PeerKind::node ? "node" : "addr:" + k.peer_address;
        peers.emplace(id, std::make_pair(std::string(flows::to_string(k.peer_kind)), k.peer_address));
        return id;
    };
    struct Edge {
        std::string source, target;
        // Verdicts seen at each end: the responder's ingress has the last word
        // (a connection its initiator's egress let out can still be refused there).
        bool in_allowed = false, in_denied = false, out_allowed = false, out_denied = false;
        flows::Counts counts;
        std::vector<const flows::Aggregate*> flows;
    };
    std::map<std::string, Edge> edges;
    for (const auto& ag : aggs) {
        std::string local = ag.key.local_namespace + "/" + ag.key.local_pod;
        std::string other = peer_id(ag.key);
        // Edges point from the initiator to the responder.
        std::string src = ag.key.ingress ? other : local, dst = ag.key.ingress ? local : other;
        Edge& e = edges[src + ">" + dst];
        e.source = src;
        e.target = dst;
        bool ok = ag.key.verdict == flows::Verdict::allowed;
        (ag.key.ingress ? (ok ? e.in_allowed : e.in_denied) : (ok ? e.out_allowed : e.out_denied)) = true;
        e.counts.add(ag.counts);
        e.flows.push_back(&ag);
    }
    Value pl(rapidjson::kArrayType);
    const auto& snap = ctx_.source->snapshot();
    for (const auto& [id, kv] : pods) {
        Value p(rapidjson::kObjectType);
        p.AddMember("id", json::str(id, a), a);
        p.AddMember("namespace", json::str(kv.first.namespace_, a), a);
        p.AddMember("name", json::str(kv.first.name, a), a);
        Value labels(rapidjson::kObjectType);
        Value ips(rapidjson::kArrayType);
        if (auto it = snap.pods.find(kv.first); it != snap.pods.end()) {
            for (const auto& [lk, lv] : it->second.labels) labels.AddMember(json::str(lk, a), json::str(lv, a), a);
            for (const auto& ip : it->second.pod_ips) ips.PushBack(json::str(strip_prefix(ip), a), a);
        }
        p.AddMember("labels", labels, a);
        p.AddMember("ips", ips, a);
        p.AddMember("local", Value(kv.second), a);
        pl.PushBack(p, a);
    }
    d.AddMember("pods", pl, a);
    Value prl(rapidjson::kArrayType);
    for (const auto& [id, kv] : peers) {
        Value p(rapidjson::kObjectType);
        p.AddMember("id", json::str(id, a), a);
        p.AddMember("kind", json::str(kv.first, a), a);
        p.AddMember("address", json::str(kv.second, a), a);
        prl.PushBack(p, a);
    }
    d.AddMember("peers", prl, a);
    Value el(rapidjson::kArrayType);
    for (const auto& [id, e] : edges) {
        Value v(rapidjson::kObjectType);
        v.AddMember("id", json::str(id, a), a);
        v.AddMember("source", json::str(e.source, a), a);
        v.AddMember("target", json::str(e.target, a), a);
        bool seen_in = e.in_allowed || e.in_denied;
        bool allowed = seen_in ? e.in_allowed : e.out_allowed, denied = seen_in ? e.in_denied : e.out_denied;
        v.AddMember("verdict", Value(allowed && denied ? "mixed" : allowed ? "allowed" : "denied", a), a);
        v.AddMember("connections", Value(e.counts.connections), a);
        v.AddMember("packets", Value(e.counts.packets_in + e.counts.packets_out), a);
        v.AddMember("bytes", Value(e.counts.bytes_in + e.counts.bytes_out), a);
        Value fl(rapidjson::kArrayType);
        for (const flows::Aggregate* ag : e.flows) {
            Value f(rapidjson::kObjectType);
            f.AddMember("proto", json::str(std::string(policy::proto_name(ag->key.proto)), a), a);
            f.AddMember("port", Value(ag->key.port), a);
            f.AddMember("verdict", json::str(std::string(flows::to_string(ag->key.verdict)), a), a);
            f.AddMember("policy", json::str(ag->decision.policy, a), a);
            f.AddMember("rule", Value(ag->decision.rule), a);
            f.AddMember("authenticated", Value(ag->decision.authenticated), a);
            f.AddMember("connections", Value(ag->counts.connections), a);
            f.AddMember("bytes", Value(ag->counts.bytes_in + ag->counts.bytes_out), a);
            f.AddMember("lastSeen", json::str(flows::rfc3339(ag->last_ns), a), a);
            fl.PushBack(f, a);
        }
        v.AddMember("flows", fl, a);
        el.PushBack(v, a);
    }
    d.AddMember("edges", el, a);
    return json::to_string(d);
}

void FlowService::status(Value& out, rapidjson::Document::AllocatorType& a) const {
    out.SetObject();
    out.AddMember("collecting", Value(collector_ != nullptr), a);
    out.AddMember("attachments", Value(static_cast<uint64_t>(collector_ ? collector_->attachments() : 0)), a);
    const auto& s = table_.stats();
    out.AddMember("records", Value(s.records), a);
    out.AddMember("deniedRecords", Value(s.denied_records), a);
    out.AddMember("lastSeq", Value(table_.last_seq()), a);
    Value dropped(rapidjson::kObjectType);
    dropped.AddMember("interval", Value(s.dropped_interval), a);
    dropped.AddMember("window", Value(s.dropped_window), a);
    dropped.AddMember("totals", Value(s.dropped_totals), a);
    dropped.AddMember("podEvents", Value(s.dropped_pod_events), a);
    if (collector_) {
        const auto cs = collector_->stats();
        dropped.AddMember("kernelOverruns", Value(cs.overruns), a);
        out.AddMember("conntrackEvents", Value(cs.ct_events), a);
        out.AddMember("deniedPackets", Value(cs.denied_packets), a);
        // Kernel data lost before signetd could read it: conntrack events
        // (open or close records) and logged denied packets the sockets had
        // no room for, datagrams too large for the read buffer, ENOBUFS
        // reports. All 0 when nothing was lost.
        Value lost(rapidjson::kObjectType);
        lost.AddMember("conntrackEvents", Value(cs.lost_ct_events), a);
        lost.AddMember("deniedPackets", Value(cs.lost_denied_packets), a);
        lost.AddMember("truncated", Value(cs.truncated), a);
        lost.AddMember("overruns", Value(cs.overruns), a);
        lost.AddMember("total", Value(cs.lost_ct_events + cs.lost_denied_packets + cs.truncated + cs.overruns), a);
        out.AddMember("lost", lost, a);
        Value reads(rapidjson::kObjectType);
        reads.AddMember("datagrams", Value(cs.reads), a);
        reads.AddMember("batches", Value(cs.batches), a);
        out.AddMember("reads", reads, a);
    }
    out.AddMember("dropped", dropped, a);
    out.AddMember("exports", Value(exports_), a);
    Value errs(rapidjson::kArrayType);
    for (const auto& [k, why] : attach_errors_) errs.PushBack(json::str(k + ": " + why, a), a);
    out.AddMember("notCollecting", errs, a);
}

}  // namespace signet::flows
