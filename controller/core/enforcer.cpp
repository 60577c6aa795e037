#include "enforcer.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>

#include "signet/json.h"

namespace signet::core {

using rapidjson::Value;
using cache::ObjectKey;

namespace {

ObjectKey object_key(const api::PodRecord& rec) { return ObjectKey{rec.reg.namespace_, rec.reg.name}; }

std::string key_text(const ObjectKey& k) { return k.namespace_ + "/" + k.name; }

// Every range of `of` inside one range of `by`; both sorted and disjoint
// (AddrSet's invariant), so one merge-like pass: O(n + m).
bool covered_all(const std::vector<nft::Range>& by, const std::vector<nft::Range>& of) {
    size_t j = 0;
    for (const auto& r : of) {
        while (j < by.size() && by[j].last < r.first) ++j;
        if (j == by.size() || r.first < by[j].first || by[j].last < r.last) return false;
    }
    return true;
}

// True when `next` allows everything `cur` allowed: same rules, and every set
// element of `cur` still covered. Then no established connection can have
// become disallowed and conntrack need not be re-checked.
bool only_widens(const nft::PodRuleset& cur, const nft::PodRuleset& next) {
    if (!next.same_structure(cur)) return false;
    for (const auto& [name, set] : cur.sets) {
        auto it = next.sets.find(name);
        if (it == next.sets.end()) return false;
        if (nft::same_ranges(it->second.elements, set.elements)) continue;  // the common case: an untouched set
        if (!covered_all(it->second.elements, set.elements)) return false;
    }
    return true;
}

void put(Value& o, const char* k, const std::string& v, rapidjson::Document::AllocatorType& a) {
    o.AddMember(Value(k, a), json::str(v, a), a);
}

}  // namespace

std::vector<std::string> host_addresses() {
    std::vector<std::string> out;
    ifaddrs* ifa = nullptr;
    if (::getifaddrs(&ifa) != 0) return out;
    for (ifaddrs* p = ifa; p != nullptr; p = p->ifa_next) {
        if (p->ifa_addr == nullptr) continue;
        char buf[INET6_ADDRSTRLEN] = {};
        if (p->ifa_addr->sa_family == AF_INET) {
            inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(p->ifa_addr)->sin_addr, buf, sizeof buf);
        } else if (p->ifa_addr->sa_family == AF_INET6) {
            const auto* a6 = reinterpret_cast<sockaddr_in6*>(p->ifa_addr);
            if (IN6_IS_ADDR_LINKLOCAL(&a6->sin6_addr)) continue;  // not routable to pods
            inet_ntop(AF_INET6, &a6->sin6_addr, buf, sizeof buf);
        } else {
            continue;
        }
        out.emplace_back(buf);
    }
    ::freeifaddrs(ifa);
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
    return out;
}

Enforcer::Enforcer(std::unique_ptr<nft::Backend> backend, Report report)
    : backend_(std::move(backend)), report_(std::move(report)) {}

policy::LocalPod Enforcer::local_of(const ObjectKey& key, const Records& records) const {
    policy::LocalPod lp{key.namespace_, key.name, {}};
    for (const auto& [k, rec] : records)
        if (object_key(rec) == key) lp.ips.insert(lp.ips.end(), rec.reg.ips.begin(), rec.reg.ips.end());
    return lp;
}

void Enforcer::reset(const cache::Snapshot& snapshot, const Records& records,
                     const std::vector<std::string>& node_addresses) {
    std::set<ObjectKey> keys;
    for (const auto& [k, rec] : records) keys.insert(object_key(rec));
    std::vector<policy::LocalPod> locals;
    for (const auto& k : keys) locals.push_back(local_of(k, records));
    compiler_.reset(snapshot, locals, node_addresses);
    policy_changed();
    policy::Affected all;
    all.pods = keys;
    program(all, records);
}

void Enforcer::source_changed(const cache::Snapshot& snapshot, const cache::Delta& delta, const Records& records) {
    auto t0 = std::chrono::steady_clock::now();
    policy::Affected affected = compiler_.update(snapshot, delta);
    last_update_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    policy_changed();
    program(affected, records);
}

Status Enforcer::pod_added(const std::string& key, const Records& records) {
    auto it = records.find(key);
    if (it == records.end()) return make_error(ENOENT, "no registration " + key);
    policy::Affected affected = compiler_.put_local_pod(local_of(object_key(it->second), records));
    policy_changed();
    affected.pods.erase(object_key(it->second));
    // This pod first: the ADD waits for it. Then the others whose peer sets changed.
    Status own;
    for (const auto& [k, rec] : records) {
        if (object_key(rec) != object_key(it->second)) continue;
        // A new attachment's netns was just set up by the runtime: it has no
        // connections to re-check (and a conntrack dump walks the kernel's
        // whole table: ~10 ms).
        bool fresh = k == key && pods_.count(k) == 0;
        Status st = program_one(k, rec, fresh);
        if (k == key) own = st;
    }
    program(affected, records);
    return own;
}

void Enforcer::pod_removed(const std::string& key, const api::PodRecord& gone, bool remove_table,
                           const Records& records) {
    auto it = pods_.find(key);
    if (it != pods_.end()) {
        if (remove_table && it->second.netns) {
            if (auto st = backend_->remove(*it->second.netns); !st)
                report_("cannot remove the table of " + key + ": " + st.error().message);
        }
        pods_.erase(it);
        sync_node();
    }
    ObjectKey ok = object_key(gone);
    policy::LocalPod rest = local_of(ok, records);
    bool still_local = false;
    for (const auto& [k, rec] : records) still_local = still_local || object_key(rec) == ok;
    policy::Affected affected = still_local ? compiler_.put_local_pod(rest) : compiler_.remove_local_pod(ok);
    policy_changed();
    program(affected, records);
}

void Enforcer::set_services(bool defer, const policy::ServiceFrontends& frontends, const Records& records) {
    if (defer == defer_services_ && frontends == frontends_) return;
    defer_services_ = defer;
    frontends_ = frontends;
    if (records.empty()) {
        sync_node();
        return;
    }
    // Every isolated egress changes (its deferral rules or their sets).
    policy::Affected all;
    for (const auto& [k, rec] : records) all.pods.insert(object_key(rec));
    program(all, records);
}

void Enforcer::sync_node(const std::vector<Job>* widen) {
    if (node_netns_path_.empty()) return;
    nft::NodeRuleset want;
    want.queue = node_queue_;
    want.handshake = handshake_ != nft::QueueBackend::none;
    size_t judged = 0;
    if (defer_services_) {
        std::vector<const std::vector<std::string>*> lists;
        for (const auto& [k, st] : pods_)
            if (!st.ips.empty()) lists.push_back(&st.ips), ++judged;
        // Before tables that may start deferring are written: the node judges
        // their pods already (a connection let through there is never unjudged
        // here; judging a pod that ends up not deferring costs only time).
        if (widen != nullptr)
            for (const Job& j : *widen) lists.push_back(&j.rec->reg.ips);
        for (const auto* ips : lists)
            for (const auto& text : *ips) {
                auto ip = policy::parse_ip(text);
                if (!ip) continue;
                (ip->family == nft::Family::v4 ? want.judged_v4 : want.judged_v6)
                    .elements.push_back(nft::Range{ip->addr, ip->addr});
            }
        want.svc_v4.elements = frontends_.v4;
        want.svc_v6.elements = frontends_.v6;
    }
    judged_pods_ = judged;
    if (node_written_ && *node_written_ == want && node_error_.empty()) return;
    if (!node_netns_) {
        auto ns = backend_->open(node_netns_path_);
        if (!ns) {
            node_error_ = "cannot open the node's netns " + node_netns_path_ + ": " + ns.error().message;
            report_(node_error_);
            return;
        }
        node_netns_.emplace(std::move(*ns));
    }
    // Nothing deferred: no table (no queue rules, no untranslated-frontend drops).
    Status st = defer_services_ ? backend_->apply_node(*node_netns_, want) : backend_->remove_node(*node_netns_);
    if (!st) {
        node_written_.reset();
        node_netns_.reset();
        std::string msg = "cannot write the node's table (Service judging): " + st.error().message;
        if (msg != node_error_) report_(msg);
        node_error_ = msg;
        return;
    }
    if (!node_error_.empty()) report_("the node's table is written again");
    node_error_.clear();
    node_written_ = want;
}

void Enforcer::cut_node_disallowed() {
    if (!defer_services_ || !node_netns_ || query_ == nullptr) return;
    std::map<policy::Ip, ObjectKey> judged, pods;
    for (const auto& [k, st] : pods_)
        for (const auto& text : st.ips)
            if (auto ip = policy::parse_ip(text)) judged[*ip] = st.pod;
    if (judged.empty()) return;
    for (const auto& [k, pod] : compiler_.snapshot().pods)
        for (const auto& a : pod.pod_ips)
            if (auto ip = policy::parse_ip(a)) pods[*ip] = k;
    auto entries = backend_->conntrack(*node_netns_);
    if (!entries) {
        report_("cannot read the node's conntrack (Service connections): " + entries.error().message);
        return;
    }
    constexpr uint32_t kDstNat = 1u << 5;  // IPS_DST_NAT
    constexpr uint8_t kTcpTimeWait = 7, kTcpClose = 8;
    for (const auto& e : *entries) {
        if (!(e.status & kDstNat)) continue;
        if (e.orig.proto == nft::kTcp && (e.tcp_state == kTcpTimeWait || e.tcp_state == kTcpClose)) continue;
        policy::Ip client{e.orig.family, e.orig.src}, backend{e.reply.family, e.reply.src};
        auto cp = judged.find(client);
        if (cp == judged.end()) continue;
        policy::ConnKey key;
        key.ingress = false;
        key.local = cp->second;
        if (auto bp = pods.find(backend); bp != pods.end()) key.peer_pod = bp->second;
        key.peer_ip = backend;
        key.proto = e.orig.proto;
        key.port = e.reply.sport;
        auto v = query_->check(key);
        if (v.answered && v.allowed) continue;
        if (auto del = backend_->conntrack_delete(*node_netns_, e.orig); del || del.error().code == ENOENT) {
            ++cut_total_;
            report_("cut " + std::string(policy::proto_name(e.orig.proto)) + " Service connection " +
                    policy::to_string(client) + ":" + std::to_string(e.orig.sport) + " -> " +
                    policy::to_string(policy::Ip{e.orig.family, e.orig.dst}) + ":" + std::to_string(e.orig.dport) +
                    " (backend " + policy::to_string(backend) + ":" + std::to_string(e.reply.sport) + ") of " +
                    key.local.namespace_ + "/" + key.local.name + ": no longer allowed by policy");
        }
    }
}

void Enforcer::node_addresses_changed(const std::vector<std::string>& addresses, const Records& records) {
    policy::Affected affected = compiler_.set_node_addresses(addresses);
    policy_changed();
    program(affected, records);
}

void Enforcer::retry_failed(const Records& records) {
    for (const auto& [k, rec] : records) {
        auto it = pods_.find(k);
        if (it != pods_.end() && !it->second.error.empty()) (void)program_one(k, rec);
    }
}

void Enforcer::program(const policy::Affected& affected, const Records& records) {
    if (affected.empty()) return;
    auto t0 = std::chrono::steady_clock::now();
    std::vector<Job> jobs;
    for (const auto& [k, rec] : records)
        if (affected.pods.count(object_key(rec)) > 0) jobs.push_back(prepare(k, rec, false));
    if (jobs.empty()) return;
    sync_node(&jobs);
    write_all(jobs);
    bool narrowed = false;
    for (Job& j : jobs) {
        narrowed = narrowed || (j.ct_checked && j.st->rules && !j.st->ips.empty());
        (void)finish(j);
    }
    sync_node();
    if (narrowed) cut_node_disallowed();
    program_latency_.observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    last_program_pods_ = jobs.size();
}

Status Enforcer::program_one(const std::string& key, const api::PodRecord& rec, bool fresh) {
    std::vector<Job> jobs;
    jobs.push_back(prepare(key, rec, fresh));
    sync_node(&jobs);
    Job& job = jobs.front();
    write(job);
    Status st = finish(job);
    sync_node();
    return st;
}

// On the loop thread: everything that touches the map of pods or opens a netns.
Enforcer::Job Enforcer::prepare(const std::string& key, const api::PodRecord& rec, bool fresh) {
    Job job;
    job.key = &key;
    job.rec = &rec;
    job.st = &pods_[key];
    job.fresh = fresh;
    if (handshake_ != nft::QueueBackend::none)
        job.hs = handshake_of_ ? handshake_of_(key, rec) : PodHandshake{true, handshake_enforce_};
    job.audit = audit_of_ && audit_of_(rec);
    if (!job.st->netns) {
        auto ns = backend_->open(rec.reg.netns);
        if (!ns) {
            job.error = ns.error();
            return job;
        }
        job.st->netns.emplace(std::move(*ns));
    }
    return job;
}

// Any thread: this job's own PodState, the backend (for its own netns), the
// compiler read-only (compile is const and nothing writes it meanwhile) and
// pure functions. What it finds is kept in the job for finish().
void Enforcer::write(Job& job) {
    if (job.error) return;
    auto rs = compiler_.compile(object_key(*job.rec));
    if (!rs) {
        job.error = rs.error();
        return;
    }
    job.desired = std::move(*rs);
    job.desired->handshake = job.hs.on ? handshake_ : nft::QueueBackend::none;
    job.desired->handshake_enforce = job.hs.on && job.hs.strict;
    job.desired->audit = job.audit;
    if (defer_services_ && job.desired->egress.isolated) {
        // Service frontends go on to the node's table (docs/policy.md).
        job.desired->defer_services = true;
        // Single addresses (ClusterIPs, external and load-balancer IPs): hash sets.
        job.desired->sets["svc_v4"] = nft::AddrSet{nft::Family::v4, frontends_.v4, false};
        job.desired->sets["svc_v6"] = nft::AddrSet{nft::Family::v6, frontends_.v6, false};
        job.desired->node_ports = frontends_.node_ports;
    }
    PodState& st = *job.st;
    const nft::PodRuleset* cur = st.rules ? &*st.rules : nullptr;
    if (cur != nullptr && *cur == *job.desired) {
        job.outcome = Job::Unchanged;
        return;
    }
    bool check_conntrack = !job.fresh && (cur == nullptr || !only_widens(*cur, *job.desired));
    bool members_only = cur != nullptr && job.desired->same_structure(*cur);
    if (auto applied = backend_->apply(*st.netns, *job.desired, cur); !applied) {
        st.netns.reset();  // reopen next time: the netns or its socket may be what failed
        job.error = applied.error();
        return;
    }
    job.outcome = members_only ? Job::SetUpdate : Job::FullWrite;
    st.rules = std::move(*job.desired);
    job.desired.reset();
    // An audit-mode table lets everything through: nothing is cut. Turning
    // audit off is a structure change (not only_widens): the re-check runs.
    if (check_conntrack && !st.rules->audit) cut_disallowed(job);
}

void Enforcer::write_all(std::vector<Job>& jobs) {
    size_t workers = backend_->concurrent() ? std::min<size_t>(jobs.size(), kWriters) : 1;
    if (workers <= 1) {
        for (Job& j : jobs) write(j);
        return;
    }
    // The kernel work of one table is short but not free (a commit, a netlink
    // round trip, sometimes a conntrack dump): spread the tables of a change.
    std::atomic<size_t> next{0};
    auto run = [&] {
        for (size_t i = next++; i < jobs.size(); i = next++) write(jobs[i]);
    };
    std::vector<std::thread> threads;
    threads.reserve(workers - 1);
    for (size_t t = 1; t < workers; ++t) threads.emplace_back(run);
    run();
    for (auto& t : threads) t.join();
}

// On the loop thread again: counters, errors, reports.
Status Enforcer::finish(Job& job) {
    PodState& st = *job.st;
    const std::string& key = *job.key;
    const api::PodRecord& rec = *job.rec;
    for (const std::string& m : job.reports) report_(m);
    cut_total_ += job.cut;
    st.cut += job.cut;
    ct_checks_ += job.ct_checked ? 1 : 0;
    if (job.error) {
        ++failures_;
        std::string msg = "cannot program " + key + " (" + rec.reg.namespace_ + "/" + rec.reg.name +
                          "): " + job.error->message;
        if (st.error != msg) report_(msg);
        st.error = msg;
        st.rules.reset();  // the table's content is unknown now: the next write replaces it whole
        return make_error(job.error->code, msg);
    }
    switch (job.outcome) {
        case Job::Unchanged: ++unchanged_; break;
        case Job::SetUpdate: ++set_updates_; break;
        case Job::FullWrite: ++full_programs_; break;
    }
    if (job.outcome != Job::Unchanged && !st.error.empty()) report_("programmed " + key + " again");
    st.error.clear();
    st.ips.clear();
    st.pod = object_key(rec);
    // Judged at the node: an isolated egress that defers, and with the
    // identity handshake every pod (the client side of its Service
    // connections' handshake happens there).
    if (st.rules && (st.rules->defer_services || (defer_services_ && st.rules->handshake != nft::QueueBackend::none)))
        st.ips = rec.reg.ips;
    return {};
}

void Enforcer::cut_disallowed(Job& job) {
    PodState& st = *job.st;
    const api::PodRecord& rec = *job.rec;
    std::vector<policy::Ip> own;
    for (const auto& text : rec.reg.ips)
        if (auto ip = policy::parse_ip(text)) own.push_back(*ip);
    auto entries = backend_->conntrack(*st.netns);
    if (!entries) {
        job.reports.push_back("cannot read conntrack of " + rec.reg.namespace_ + "/" + rec.reg.name + ": " +
                              entries.error().message);
        return;
    }
    job.ct_checked = true;
    for (const auto& e : *entries) {
        // A closed TCP connection (TIME_WAIT, CLOSE) carries no traffic: nothing to cut.
        constexpr uint8_t kTcpTimeWait = 7, kTcpClose = 8;
        if (e.orig.proto == nft::kTcp && (e.tcp_state == kTcpTimeWait || e.tcp_state == kTcpClose)) continue;
        policy::Ip src{e.orig.family, e.orig.src}, dst{e.orig.family, e.orig.dst};
        bool from_pod = std::find(own.begin(), own.end(), src) != own.end();
        bool to_pod = std::find(own.begin(), own.end(), dst) != own.end();
        if (from_pod == to_pod) continue;  // the pod talking to itself, or not the pod's traffic
        bool ingress = to_pod;
        const policy::Ip& peer = ingress ? src : dst;
        if (policy::allows(*st.rules, ingress, peer, e.orig.proto, e.orig.dport)) continue;
        if (auto del = backend_->conntrack_delete(*st.netns, e.orig); del || del.error().code == ENOENT) {
            ++job.cut;
            job.reports.push_back("cut " + std::string(ingress ? "incoming" : "outgoing") + " " +
                                  std::string(policy::proto_name(e.orig.proto)) + " connection " +
                                  policy::to_string(src) + ":" + std::to_string(e.orig.sport) + " -> " +
                                  policy::to_string(dst) + ":" + std::to_string(e.orig.dport) + " of " +
                                  rec.reg.namespace_ + "/" + rec.reg.name + ": no longer allowed by policy");
        } else {
            job.reports.push_back("cannot cut a connection of " + rec.reg.namespace_ + "/" + rec.reg.name + ": " +
                                  del.error().message);
        }
    }
}

bool Enforcer::programmed(const std::string& key) const {
    auto it = pods_.find(key);
    return it != pods_.end() && it->second.rules.has_value() && it->second.error.empty();
}

bool Enforcer::has_failures() const {
    for (const auto& [k, st] : pods_)
        if (!st.error.empty()) return true;
    return false;
}

Status Enforcer::describe_pod(const ObjectKey& pod, const Records& records, Value& out,
                              rapidjson::Document::AllocatorType& a) {
    auto rs = compiler_.compile_any(pod);
    if (!rs) return rs.error();
    out.SetObject();
    put(out, "pod", key_text(pod), a);
    bool local = false;
    PodState* st = nullptr;
    for (const auto& [k, rec] : records)
        if (object_key(rec) == pod) {
            local = true;
            auto it = pods_.find(k);
            if (it != pods_.end() && it->second.netns) st = &it->second;
        }
    out.AddMember("local", local, a);
    // Audit mode (docs/policy.md): what the pod's table holds now.
    if (st != nullptr && st->rules) put(out, "policyMode", st->rules->audit ? "audit" : "enforce", a);
    std::optional<nft::Counters> counters;
    if (st != nullptr) {
        if (auto c = backend_->counters(*st->netns); c) counters = *c;
    }
    for (bool ingress : {true, false}) {
        const nft::Direction& d = ingress ? rs->ingress : rs->egress;
        Value dir(rapidjson::kObjectType);
        dir.AddMember("isolated", d.isolated, a);
        Value pols(rapidjson::kArrayType);
        for (const auto& p : compiler_.selecting_policies(pod, ingress ? cache::PolicyType::Ingress : cache::PolicyType::Egress))
            pols.PushBack(json::str(key_text(p), a), a);
        dir.AddMember("policies", pols, a);
        Value rules(rapidjson::kArrayType);
        for (const auto& r : d.rules) {
            Value rule(rapidjson::kObjectType);
            put(rule, "policy", r.origin.policy_namespace + "/" + r.origin.policy_name, a);
            rule.AddMember("rule", r.origin.rule_index, a);
            std::string peers;
            if (r.any_peer) {
                peers = "any";
            } else {
                for (const auto* name : {&r.set_v4, &r.set_v6}) {
                    if (name->empty()) continue;
                    auto s = rs->sets.find(*name);
                    if (s == rs->sets.end()) continue;
                    for (const auto& e : s->second.elements) {
                        if (!peers.empty()) peers += ", ";
                        peers += policy::to_string(s->second.family, e);
                    }
                }
                if (peers.empty()) peers = "none";
            }
            put(rule, "peers", peers, a);
            std::string ports;
            for (const auto& p : r.ports) {
                if (!ports.empty()) ports += ", ";
                ports += std::string(policy::proto_name(p.proto)) + "/";
                ports += p.first == 0 && p.last == 65535 ? std::string("*")
                         : p.first == p.last            ? std::to_string(p.first)
                                                        : std::to_string(p.first) + "-" + std::to_string(p.last);
            }
            put(rule, "ports", ports.empty() ? "all" : ports, a);
            if (counters) {
                uint64_t packets = 0;
                for (const auto& c : counters->accepts)
                    if (c.origin == r.origin && (c.direction == nft::Dir::ingress) == ingress) packets += c.packets;
                rule.AddMember("packets", Value(static_cast<uint64_t>(packets)), a);
            }
            rules.PushBack(rule, a);
        }
        dir.AddMember("rules", rules, a);
        if (counters)
            dir.AddMember("deniedPackets",
                          Value(static_cast<uint64_t>(ingress ? counters->ingress_drop_packets : counters->egress_drop_packets)), a);
        if (counters)
            dir.AddMember("auditDeniedPackets",
                          Value(static_cast<uint64_t>(ingress ? counters->ingress_audit_packets : counters->egress_audit_packets)), a);
        out.AddMember(Value(ingress ? "ingress" : "egress", a), dir, a);
    }
    if (st != nullptr) {
        out.AddMember("cutConnections", Value(static_cast<uint64_t>(st->cut)), a);
        put(out, "error", st->error, a);
    }
    return {};
}

Enforcer::Stats Enforcer::stats() const {
    Stats s{full_programs_, set_updates_, unchanged_, failures_, cut_total_, ct_checks_, 0, 0};
    for (const auto& [k, st] : pods_) {
        if (st.rules && st.error.empty()) ++s.programmed;
        if (!st.error.empty()) ++s.failing;
    }
    return s;
}

void Enforcer::status(Value& out, rapidjson::Document::AllocatorType& a) const {
    out.SetObject();
    uint64_t programmed = 0;
    Value failing(rapidjson::kArrayType);
    for (const auto& [k, st] : pods_) {
        if (st.rules && st.error.empty()) ++programmed;
        if (!st.error.empty()) failing.PushBack(json::str(st.error, a), a);
    }
    out.AddMember("programmedAttachments", Value(programmed), a);
    out.AddMember("failing", failing, a);
    out.AddMember("tableWrites", Value(full_programs_), a);  // whole-table replacements
    out.AddMember("setUpdates", Value(set_updates_), a);     // membership-only batches
    out.AddMember("unchangedSkips", Value(unchanged_), a);
    out.AddMember("programFailures", Value(failures_), a);
    out.AddMember("conntrackChecks", Value(ct_checks_), a);
    out.AddMember("cutConnections", Value(cut_total_), a);
    Value lat(rapidjson::kObjectType);
    lat.AddMember("changes", Value(program_latency_.count()), a);
    lat.AddMember("lastSeconds", Value(program_latency_.last()), a);
    lat.AddMember("lastAttachments", Value(last_program_pods_), a);
    lat.AddMember("medianBoundSeconds", Value(program_latency_.quantile_bound(0.5)), a);
    lat.AddMember("p99BoundSeconds", Value(program_latency_.quantile_bound(0.99)), a);
    out.AddMember("programLatency", lat, a);
    out.AddMember("selectors", Value(static_cast<uint64_t>(compiler_.selector_count())), a);
    out.AddMember("compilerBytes", Value(static_cast<uint64_t>(compiler_.memory_estimate())), a);
}

}  // namespace signet::core
