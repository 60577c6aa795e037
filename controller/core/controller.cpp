#include "controller.h"

#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <optional>
#include <set>

#include "signet/duration.h"
#include "signet/fsutil.h"
#include "signet/json.h"
#include "signet/log.h"

namespace signet::core {

namespace asio = boost::asio;
using rapidjson::Value;

namespace {
constexpr const char* kLog = "controller";
constexpr auto kMaxSyncWait = std::chrono::minutes(10);

ipc::Response json_response(int status, const rapidjson::Document& d) {
    return ipc::Response{status, json::to_string(d, true) + "\n", "application/json"};
}

// A registration refused for a value the CNI runtime put in the plugin's
// environment (CNI_NETNS, CNI_ARGS): 400, and the CNI error code the plugin
// returns for it (4: invalid environment variables; docs/cni-plugin.md).
ipc::Response registration_error(const std::string& message) {
    rapidjson::Document d(rapidjson::kObjectType);
    d.AddMember("error", json::str(message, d.GetAllocator()), d.GetAllocator());
    d.AddMember(rapidjson::StringRef(api::kCniCodeField), 4, d.GetAllocator());
    return ipc::Response{400, json::to_string(d) + "\n", "application/json"};
}

int64_t unix_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

// ?timeout= of POST /v1/sync (signet/duration.h: a unit is required).
bool parse_timeout(const std::string& text, std::chrono::milliseconds* out) {
    auto d = parse_duration(text, std::chrono::milliseconds(1), std::chrono::hours(24));
    if (!d) return false;
    *out = *d;
    return true;
}
}  // namespace

Controller::Controller(asio::io_context& io, Options opts, std::unique_ptr<source::Source> source,
                       std::unique_ptr<nft::Backend> backend)
    : io_(io),
      opts_(std::move(opts)),
      source_(std::move(source)),
      registry_(opts_.state_dir + "/pods.json", pods::netns_alive),
      enforcer_(std::move(backend), [](const std::string& m) { log::warn("datapath", m); }),
      policy_(enforcer_.compiler()),
      flows_(std::make_unique<FlowService>(
          io,
          FlowService::Context{opts_.node_name, source_.get(), &registry_, &policy_, &node_addresses_,
                               [this](const policy::Ip& ip, uint8_t proto,
                                      uint16_t port) -> std::optional<cache::ObjectKey> {
                                   if (!services_) return std::nullopt;
                                   const auto* svc = services_->frontend(ip, proto, port);
                                   return svc ? std::optional<cache::ObjectKey>(*svc) : std::nullopt;
                               },
                               [this](const std::string& ns) -> const char* {
                                   if (!handshake_) return nullptr;
                                   return to_string(handshake_->mode_of_namespace(ns).mode);
                               }},
          opts_.collect_flows)),
      server_(io, [this](const ipc::Request& r, ipc::Responder resp) { handle(r, std::move(resp)); }),
      sweep_timer_(io),
      retry_timer_(io),
      unprotected_(opts_.unprotected_grace),
      unprotected_timer_(io) {
    enforcer_.set_query(&policy_);
    enforcer_.set_audit([this](const api::PodRecord& rec) {
        bool audit = audit_of(rec);
        audited_[rec.reg.namespace_ + "/" + rec.reg.name] = audit;
        return audit;
    });
}

// Audit mode (docs/policy.md): the pod's namespace's signet.dev/policy-mode
// label, else the node's --policy-mode.
bool Controller::audit_of(const api::PodRecord& rec) const {
    return policy::policy_mode_of(source_->snapshot(), rec.reg.namespace_, opts_.policy_mode).mode ==
           policy::PolicyMode::audit;
}

// After a change of the source: the local pods whose policy mode changed
// (a namespace's label set, changed or removed), to be rewritten like any
// policy change (audit -> enforce cuts what the policy does not allow).
std::set<cache::ObjectKey> Controller::refresh_policy_modes() {
    std::set<cache::ObjectKey> changed;
    std::map<std::string, bool> seen;
    for (const auto& [k, rec] : registry_.all()) {
        const std::string id = rec.reg.namespace_ + "/" + rec.reg.name;
        auto it = audited_.find(id);
        if (it == audited_.end()) continue;  // not written yet: its first table takes the mode
        bool now = audit_of(rec);
        seen[id] = it->second;
        if (now == it->second) continue;
        log::info(kLog, "policy mode of " + id + ": " + (it->second ? "audit" : "enforce") + " -> " +
                            (now ? "audit" : "enforce"));
        changed.insert(cache::ObjectKey{rec.reg.namespace_, rec.reg.name});
    }
    audited_ = std::move(seen);  // forget pods gone (the enforcer records the new modes as it writes)
    return changed;
}

Controller::~Controller() { stop(); }

Status Controller::start() {
    started_at_ = std::time(nullptr);
    if (auto st = fs::make_dirs(opts_.state_dir, 0700); !st) return st;
    auto dropped = registry_.load();
    if (!dropped) {
        // A corrupt state file was moved aside: start empty, say so loudly.
        log::error(kLog, "pod registry: " + dropped.error().message);
    } else {
        for (const auto& k : *dropped) log::info(kLog, "dropped registration " + k + ": its netns is gone");
        log::info(kLog, "recovered " + std::to_string(registry_.size()) + " registered pod(s) from " +
                            registry_.state_file());
    }

    if (!opts_.authority_dir.empty()) {
        identity_ = std::make_unique<NodeIdentity>(io_, opts_.node_name, opts_.authority_dir, opts_.state_dir, opts_.csr);
        if (auto st = identity_->start(); !st) return st;
    }
    if (opts_.handshake != HandshakeMode::off) {
        if (!identity_)
            return make_error(EINVAL, std::string("--handshake ") + to_string(opts_.handshake) +
                                          " needs this node's identity credentials (--authority)");
        if (!identity_->has_credentials())  // kubernetes-csr: the certificate comes later
            log::warn(kLog, "identity handshake: no node certificate yet: until it is issued this node's pods "
                            "send no tokens (peers in enforce mode judge them by address) and tokens they "
                            "receive are refused");
        if (opts_.handshake_queue == nft::QueueBackend::none)
            return make_error(ENOTSUP, "--handshake needs NFQUEUE: the kernel offers neither the nft `queue` "
                                       "expression nor the xt NFQUEUE target");
        // Per pod: its namespace's mode (signet.dev/handshake), else the node's.
        enforcer_.set_handshake(opts_.handshake_queue, [this](const std::string& key, const api::PodRecord&) {
            HandshakeMode m = handshake_ ? handshake_->table_mode(key) : opts_.handshake;
            return Enforcer::PodHandshake{m != HandshakeMode::off,
                                          m == HandshakeMode::enforce && opts_.handshake_strict_tcp};
        });
        if (opts_.handshake_strict_tcp_set && opts_.handshake != HandshakeMode::enforce)
            log::warn(kLog, "--no-handshake-strict-tcp has no effect without --handshake enforce");
        else if (opts_.handshake == HandshakeMode::enforce && !opts_.handshake_strict_tcp)
            log::warn(kLog, "--no-handshake-strict-tcp: enforce mode admits TCP segments the handshake never "
                            "judged (SYN-cookie ACKs, replays after the close); docs/handshake.md");
        HandshakeEngine::Context hc;
        hc.node_name = opts_.node_name;
        hc.mode = opts_.handshake;
        hc.policy_mode = opts_.policy_mode;
        hc.source = source_.get();
        hc.registry = &registry_;
        hc.policy = &policy_;
        hc.identity = identity_.get();
        hc.node_addresses = &node_addresses_;
        hc.memory_limit = opts_.handshake_memory;
        hc.on_denied = [this](const std::string& key, const nft::LoggedPacket& p) { flows_->on_denied(key, {p}); };
        // Service frontends whose handshake happens at the node (docs/policy.md).
        hc.service_frontend = [this](const policy::Ip& ip, uint16_t port) {
            return services_ && services_->tcp_frontend(ip, port);
        };
        handshake_ = std::make_unique<HandshakeEngine>(io_, std::move(hc));
        log::info(kLog, std::string("identity handshake: ") + to_string(opts_.handshake) + " (NFQUEUE " +
                            std::to_string(handshake::kHandshakeQueue) + " via " + nft::to_string(opts_.handshake_queue) +
                            ")");
    }
    node_addresses_ = opts_.node_addresses();
    handshake::NodeServices::Context sc;
    sc.io = &io_;
    sc.enabled = opts_.services;
    sc.node_netns = opts_.node_netns;
    sc.queue = opts_.service_queue;
    sc.source = source_.get();
    sc.registry = &registry_;
    sc.policy = &policy_;
    sc.node_addresses = &node_addresses_;
    sc.set_node = [this](const std::string& path, nft::QueueBackend q) { enforcer_.set_node(path, q); };
    sc.audit = [this](const policy::ObjectKey& pod) {
        return policy::policy_mode_of(source_->snapshot(), pod.namespace_, opts_.policy_mode).mode ==
               policy::PolicyMode::audit;
    };
    sc.apply = [this](bool defer, const policy::ServiceFrontends& f) { enforcer_.set_services(defer, f, registry_.all()); };
    sc.tcp_handshake = [this](const handshake::QueuedPacket& q) -> std::optional<handshake::Decision> {
        if (!handshake_) return std::nullopt;
        return handshake_->judge_at_node(q);
    };
    services_ = std::make_unique<handshake::NodeServices>(std::move(sc));
    services_->start();
    ipc::AccessPolicy access;
    if (!opts_.api_group.empty()) {
        auto gid = ipc::resolve_group(opts_.api_group);
        if (!gid) return make_error(gid.error().code, "--api-group: " + gid.error().message);
        access.read_group = *gid;
        access.read_group_name = opts_.api_group;
    }
    server_.set_access(access);
    if (!opts_.node_netns.empty()) opts_.host_netns.push_back({opts_.node_netns, "the node's network namespace (--node-netns)"});
    // Serve first: until the source has a complete snapshot, /readyz says 503
    // and ADD gets "try again later"; the tables already in the pods' netns
    // keep enforcing what they had, and established connections live on.
    if (auto st = server_.listen(opts_.socket_path); !st) return st;
    if (auto st = start_outputs(); !st) return st;
    if (opts_.cluster_api) {
        cluster_ = std::make_unique<coverage::ClusterWriter>(io_, opts_.cluster_api(),
                                                             [](const std::string& m) { log::warn(kLog, m); });
        cluster_->start();
    }
    if (!opts_.startup_taint.empty()) {
        if (!cluster_) return make_error(EINVAL, "removing the startup taint needs the Kubernetes API (--source kubernetes)");
        taint_ = TaintState::waiting;
        log::info(kLog, "startup taint " + opts_.startup_taint + ": removed from node " + opts_.node_name +
                            " once signetd enforces");
    }
    if (auto st = source_->start(io_, [this] { on_source_change(); }); !st) return st;
    schedule_sweep();
    schedule_retry();
    log::info(kLog, "serving " + opts_.socket_path + " (node " + opts_.node_name + ", source version " +
                        std::to_string(source_version_) + ")");
    return {};
}

void Controller::stop() {
    if (stopped_) return;
    stopped_ = true;
    ready_ = false;
    server_.stop();
    stop_outputs();
    flows_->stop();
    if (handshake_) handshake_->stop();
    if (services_) services_->stop();
    if (identity_) identity_->stop();
    source_->stop();
    sweep_timer_.cancel();
    retry_timer_.cancel();
    unprotected_timer_.cancel();
    if (cluster_) cluster_->stop();
    for (auto& [id, w] : waiters_) {
        w.timer->cancel();
        w.respond(ipc::json_error(503, "signetd is shutting down"));
    }
    waiters_.clear();
}

uint64_t Controller::applied_version() const {
    uint64_t v = source_version_;
    for (const auto& [k, rec] : registry_.all()) v = std::min(v, rec.applied_version);
    return v;
}

void Controller::on_source_change() {
    ++source_version_;
    cache::Delta delta = source_->take_delta();  // taken every time, so it never grows unbounded
    flows_->source_changed();
    // Pods whose namespace's handshake mode changed (signet.dev/handshake):
    // a queue turned on is bound now, before the tables are rewritten; one
    // turned off goes after (commit_modes, below).
    std::set<cache::ObjectKey> mode_changed;
    if (handshake_) {
        handshake_->source_changed();
        mode_changed = handshake_->refresh_modes();
    }
    services_->pods_changed();
    if (enforcing_) {
        auto t0 = std::chrono::steady_clock::now();
        uint64_t changes = enforcer_.program_latency().count();
        enforcer_.source_changed(source_->snapshot(), delta, registry_.all());
        for (const auto& pod : refresh_policy_modes()) mode_changed.insert(pod);
        if (!mode_changed.empty()) enforcer_.reprogram(mode_changed, registry_.all());
        double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        char buf[160];
        if (enforcer_.program_latency().count() == changes)
            std::snprintf(buf, sizeof buf, "%.2f ms (no table affected)", ms);
        else
            std::snprintf(buf, sizeof buf, "%.2f ms (compiler %.2f ms, %llu table(s) written in %.2f ms)", ms,
                          enforcer_.last_update_seconds() * 1e3,
                          static_cast<unsigned long long>(enforcer_.last_program_attachments()),
                          enforcer_.program_latency().last() * 1e3);
        log::info("source", "source version " + std::to_string(source_version_) + " (" + source_->origin_version() +
                                ") applied in " + buf);
        if (delta.all || !delta.services.empty()) check_services();
    } else if (source_->ready()) {
        // First complete snapshot: program every recovered pod (replacing the
        // tables a previous signetd left, without touching established connections).
        if (handshake_)  // bound before the tables with queue rules are written
            for (const auto& [k, rec] : registry_.all()) handshake_->pod_started(k, rec, true);
        // The pods' first tables defer Service frontends already (after a
        // restart, as the tables before it did).
        check_services();
        if (services_->bound()) enforcer_.configure_services(services_->defer_now(), services_->frontends());
        enforcer_.reset(source_->snapshot(), registry_.all(), node_addresses_);
        for (const auto& [k, rec] : registry_.all()) flows_->pod_started(k, rec, true);
        enforcing_ = true;
        ready_ = true;
        log::info(kLog, "enforcing: " + std::to_string(registry_.size()) + " registered pod(s), source version " +
                            std::to_string(source_version_));
    }
    if (handshake_) handshake_->commit_modes();
    apply_all();
}

void Controller::resolve(api::PodRecord& rec) const {
    const auto& pods = source_->snapshot().pods;
    auto it = pods.find(cache::ObjectKey{rec.reg.namespace_, rec.reg.name});
    const cache::Pod* pod = it == pods.end() ? nullptr : &it->second;
    rec.has_object = pod != nullptr;
    rec.labels = pod ? pod->labels : std::map<std::string, std::string>{};
    rec.container_ports = pod ? pod->container_ports : std::vector<api::ContainerPort>{};
}

void Controller::apply_all() {
    bool changed = false;
    for (auto& [k, rec] : registry_.all_mut()) {
        api::PodRecord before = rec;
        resolve(rec);
        // Applied means: the pod's table holds the rules for this version.
        if (enforcing_ && enforcer_.programmed(k)) rec.applied_version = source_version_;
        // applied_version is not persisted state worth an fsync: source
        // versions start again at 1 with every signetd.
        changed = changed || before.labels != rec.labels || before.container_ports != rec.container_ports ||
                  before.has_object != rec.has_object;
    }
    if (changed) persist();
    notify_waiters();
    check_unprotected();
    maybe_remove_startup_taint();
}

void Controller::check_unprotected() {
    if (stopped_ || !source_->ready()) return;  // an incomplete snapshot would report pods it has not read yet
    const int64_t now = unix_ms();
    auto change = unprotected_.update(source_->snapshot().pods, registry_.all(), opts_.node_name, now);
    using Event = coverage::UnprotectedPod::Event;
    auto& tracked = unprotected_.tracked_mut();
    for (const auto& key : change.reported) {
        const auto& u = tracked.at(key);
        std::string ips;
        for (const auto& ip : u.ips) ips += (ips.empty() ? "" : ",") + ip;
        log::warn(kLog, "unprotected pod " + key.namespace_ + "/" + key.name + " (" + (ips.empty() ? "no IP" : ips) +
                            "): Running on this node for " + std::to_string((now - u.since_ms) / 1000) +
                            " s without a registration through the CNI chain: its netns has no signet table, "
                            "nothing is enforced for it; delete the pod to have it recreated through the chain");
    }
    for (const auto& u : change.resolved)
        log::info(kLog, "pod " + u.namespace_ + "/" + u.name + " is no longer unprotected (registered, gone or not Running)");
    std::optional<int64_t> wake = unprotected_.next_deadline();
    for (auto& [key, u] : tracked) {
        if (!u.reported || u.event != Event::pending || !cluster_) continue;
        if (u.event_retry_ms > now) {
            wake = std::min(wake.value_or(u.event_retry_ms), u.event_retry_ms);
            continue;
        }
        u.event = Event::sending;
        std::string uid = u.uid;
        cluster_->post_event(key.namespace_, coverage::unprotected_event(u, opts_.node_name, now / 1000),
                             [this, key = key, uid](Status st) {
                                 if (st) ++unprotected_events_;
                                 auto it = unprotected_.tracked_mut().find(key);
                                 if (it == unprotected_.tracked_mut().end() || it->second.uid != uid) return;
                                 auto& p = it->second;
                                 const std::string who = key.namespace_ + "/" + key.name;
                                 if (st) {
                                     p.event = Event::sent;
                                     p.event_error.clear();
                                     log::info(kLog, std::string("Event ") + coverage::kUnprotectedReason +
                                                         " created on pod " + who);
                                     return;
                                 }
                                 p.event_error = st.error().message;
                                 if (st.error().code == EACCES || st.error().code == EINVAL) {
                                     p.event = Event::failed;
                                     log::warn(kLog, "cannot create the Event on unprotected pod " + who + ": " +
                                                         p.event_error +
                                                         (st.error().code == EACCES
                                                              ? " (RBAC: signetd's ClusterRole needs create on "
                                                                "events; or the namespace is being deleted)"
                                                              : ""));
                                     return;
                                 }
                                 p.event = Event::pending;
                                 p.event_retry_ms = unix_ms() + 30000;
                                 log::warn(kLog, "cannot create the Event on unprotected pod " + who + ": " +
                                                     p.event_error + "; trying again in 30 s");
                                 check_unprotected();  // arms the timer for the retry
                             });
    }
    if (wake) {
        unprotected_timer_.expires_after(std::chrono::milliseconds(std::max<int64_t>(*wake - now, 0) + 10));
        unprotected_timer_.async_wait([this](boost::system::error_code ec) {
            if (ec || stopped_) return;
            check_unprotected();
        });
    }
}

void Controller::unprotected_status(rapidjson::Value& out, rapidjson::Document::AllocatorType& a) const {
    using Event = coverage::UnprotectedPod::Event;
    out.SetObject();
    out.AddMember("checked", source_->ready(), a);
    out.AddMember("graceSeconds", static_cast<double>(unprotected_.grace().count()) / 1000.0, a);
    out.AddMember("count", static_cast<uint64_t>(unprotected_.unprotected()), a);
    out.AddMember("pending", static_cast<uint64_t>(unprotected_.pending()), a);
    out.AddMember("events", cluster_ != nullptr, a);
    out.AddMember("eventsCreated", static_cast<uint64_t>(unprotected_events_), a);
    Value list(rapidjson::kArrayType);
    for (const auto& [key, u] : unprotected_.tracked()) {
        if (!u.reported) continue;
        Value p(rapidjson::kObjectType);
        p.AddMember("namespace", json::str(u.namespace_, a), a);
        p.AddMember("name", json::str(u.name, a), a);
        p.AddMember("uid", json::str(u.uid, a), a);
        Value ips(rapidjson::kArrayType);
        for (const auto& ip : u.ips) ips.PushBack(json::str(ip, a), a);
        p.AddMember("ips", ips, a);
        p.AddMember("since", static_cast<int64_t>(u.since_ms / 1000), a);
        p.AddMember("sinceTime", json::str(coverage::rfc3339_seconds(u.since_ms / 1000), a), a);
        const char* ev = !cluster_ ? "off"
                         : u.event == Event::sent ? "sent"
                         : u.event == Event::failed ? "failed"
                         : u.event == Event::sending ? "sending"
                                                     : "pending";
        p.AddMember("event", rapidjson::StringRef(ev), a);
        if (!u.event_error.empty()) p.AddMember("eventError", json::str(u.event_error, a), a);
        list.PushBack(p, a);
    }
    out.AddMember("pods", list, a);
}

void Controller::maybe_remove_startup_taint() {
    if (taint_ != TaintState::waiting || !cluster_ || stopped_ || !ready_ || applied_version() < source_version_) return;
    taint_ = TaintState::removing;
    log::info(kLog, "enforcing: removing the startup taint " + opts_.startup_taint + " from node " + opts_.node_name);
    cluster_->remove_taint(opts_.node_name, opts_.startup_taint, [this](bool removed) {
        taint_ = removed ? TaintState::removed : TaintState::absent;
        log::info(kLog, removed ? "removed the startup taint " + opts_.startup_taint + " from node " + opts_.node_name +
                                      ": pods may be scheduled here"
                                : "node " + opts_.node_name + " has no startup taint " + opts_.startup_taint +
                                      ": nothing to remove");
    });
}

void Controller::persist() {
    if (auto st = registry_.save(); !st) log::error(kLog, "cannot persist the pod registry: " + st.error().message);
}

void Controller::notify_waiters() {
    uint64_t applied = applied_version();
    for (auto it = waiters_.begin(); it != waiters_.end();) {
        if (applied >= it->second.target) {
            it->second.timer->cancel();
            rapidjson::Document d(rapidjson::kObjectType);
            d.AddMember("appliedVersion", Value(static_cast<uint64_t>(applied)), d.GetAllocator());
            d.AddMember("sourceVersion", Value(static_cast<uint64_t>(source_version_)), d.GetAllocator());
            Value src;
            source_->status(src, d.GetAllocator());
            d.AddMember("source", src, d.GetAllocator());
            it->second.respond(json_response(200, d));
            it = waiters_.erase(it);
        } else {
            ++it;
        }
    }
}

void Controller::schedule_sweep() {
    sweep_timer_.expires_after(opts_.sweep_interval);
    sweep_timer_.async_wait([this](boost::system::error_code ec) {
        if (ec || stopped_) return;
        sweep();
        schedule_sweep();
    });
}

void Controller::sweep() {
    std::map<std::string, api::PodRecord> before = registry_.all();
    auto removed = registry_.sweep();
    for (const auto& k : removed) {
        log::info(kLog, "dropped registration " + k + ": its netns is gone");
        forget(k, before.at(k), false);
    }
    swept_ += removed.size();
    refresh_node_addresses();
    if (!removed.empty()) persist();
    check_services();
    apply_all();
}

// The node's addresses (traffic from them is always allowed in; NodePorts):
// re-read every sweep and at each ADD (the first pod on a bridge brings the
// bridge's gateway address with it), applied to every table when changed.
void Controller::refresh_node_addresses() {
    if (!enforcing_) return;
    auto addrs = opts_.node_addresses();
    if (addrs == node_addresses_) return;
    node_addresses_ = std::move(addrs);
    log::info(kLog, "node addresses changed");
    enforcer_.node_addresses_changed(node_addresses_, registry_.all());
}

void Controller::forget(const std::string& key, const api::PodRecord& gone, bool remove_table) {
    services_->pods_changed();
    flows_->pod_stopped(key, gone);
    if (handshake_) handshake_->pod_stopped(key);
    if (enforcing_) enforcer_.pod_removed(key, gone, remove_table, registry_.all());
}

void Controller::schedule_retry() {
    retry_timer_.expires_after(opts_.retry_interval);
    retry_timer_.async_wait([this](boost::system::error_code ec) {
        if (ec || stopped_) return;
        if (enforcing_ && enforcer_.has_failures()) {
            enforcer_.retry_failed(registry_.all());
            apply_all();
        }
        schedule_retry();
    });
}

ipc::Response Controller::status_json() const {
    rapidjson::Document d(rapidjson::kObjectType);
    auto& a = d.GetAllocator();
    d.AddMember("ready", ready_, a);
    d.AddMember("node", json::str(opts_.node_name, a), a);
    d.AddMember("version", json::str(SIGNET_VERSION, a), a);
    d.AddMember("startedAt", Value(static_cast<int64_t>(started_at_)), a);
    d.AddMember("sourceVersion", Value(static_cast<uint64_t>(source_version_)), a);
    d.AddMember("appliedVersion", Value(static_cast<uint64_t>(applied_version())), a);
    d.AddMember("pods", Value(static_cast<uint64_t>(registry_.size())), a);
    Value src;
    source_->status(src, a);
    const auto& snap = source_->snapshot();
    src.AddMember("ready", source_->ready(), a);
    src.AddMember("originVersion", json::str(source_->origin_version(), a), a);
    src.AddMember("namespaces", Value(static_cast<uint64_t>(snap.namespaces.size())), a);
    src.AddMember("podObjects", Value(static_cast<uint64_t>(snap.pods.size())), a);
    src.AddMember("networkPolicies", Value(static_cast<uint64_t>(snap.policies.size())), a);
    d.AddMember("source", src, a);
    {  // Audit mode (docs/policy.md): the node's default and the namespaces that set theirs.
        Value pm(rapidjson::kObjectType);
        pm.AddMember("default", Value(policy::to_string(opts_.policy_mode), a), a);
        Value audit(rapidjson::kArrayType), labelled(rapidjson::kObjectType);
        for (const auto& [name, ns] : snap.namespaces) {
            auto m = policy::policy_mode_of(snap, name, opts_.policy_mode);
            if (m.mode == policy::PolicyMode::audit) audit.PushBack(json::str(name, a), a);
            if (!ns.labels.count(policy::kPolicyModeLabel)) continue;
            Value e(rapidjson::kObjectType);
            e.AddMember("mode", Value(policy::to_string(m.mode), a), a);
            if (!m.problem.empty()) e.AddMember("problem", json::str(m.problem, a), a);
            labelled.AddMember(json::str(name, a), e, a);
        }
        pm.AddMember("auditNamespaces", audit, a);
        pm.AddMember("labelled", labelled, a);
        d.AddMember("policyMode", pm, a);
    }
    Value dp;
    enforcer_.status(dp, a);
    dp.AddMember("enforcing", enforcing_, a);
    dp.AddMember("queueBackend", json::str(opts_.queue_backend, a), a);
    d.AddMember("datapath", dp, a);
    Value svc;
    services_->status(svc, a, enforcer_.services_deferred(), enforcer_.judged_pods(), enforcer_.node_table_error());
    d.AddMember("services", svc, a);
    Value fl;
    flows_->status(fl, a);
    d.AddMember("flows", fl, a);
    Value outputs(rapidjson::kObjectType);
    outputs.AddMember("metricsAddress", json::str(opts_.metrics_address, a), a);
    outputs.AddMember("metricsPort", Value(static_cast<uint64_t>(metrics_port())), a);
    outputs.AddMember("healthAddress", json::str(opts_.health_address, a), a);
    outputs.AddMember("healthPort", Value(static_cast<uint64_t>(health_port())), a);
    outputs.AddMember("graph", Value(opts_.graph && !opts_.metrics_address.empty()), a);
    if (influx_) {
        auto s = influx_->stats();
        Value ix(rapidjson::kObjectType);
        ix.AddMember("target", json::str(exporter::describe(*opts_.influx), a), a);
        ix.AddMember("submitted", Value(s.submitted), a);
        ix.AddMember("written", Value(s.written), a);
        ix.AddMember("buffered", Value(s.buffered), a);
        ix.AddMember("dropped", Value(s.dropped), a);
        ix.AddMember("rejected", Value(s.rejected), a);
        ix.AddMember("batchesFailed", Value(s.batches_failed), a);
        ix.AddMember("lastError", json::str(s.last_error, a), a);
        outputs.AddMember("influxdb", ix, a);
    }
    d.AddMember("outputs", outputs, a);
    if (identity_) {
        Value id;
        identity_->status(id, a);
        d.AddMember("identity", id, a);
    }
    if (handshake_) {
        Value hs;
        handshake_->status(hs, a);
        d.AddMember("handshake", hs, a);
    }
    Value counters(rapidjson::kObjectType);
    counters.AddMember("registrations", Value(static_cast<uint64_t>(registrations_)), a);
    counters.AddMember("unregistrations", Value(static_cast<uint64_t>(unregistrations_)), a);
    counters.AddMember("sweptDeadNetns", Value(static_cast<uint64_t>(swept_)), a);
    d.AddMember("counters", counters, a);
    Value unprotected;
    unprotected_status(unprotected, a);
    d.AddMember("unprotected", unprotected, a);
    Value taint(rapidjson::kObjectType);
    static const char* const kTaintStates[] = {"off", "waiting", "removing", "removed", "absent"};
    taint.AddMember("key", json::str(opts_.startup_taint, a), a);
    taint.AddMember("state", rapidjson::StringRef(kTaintStates[static_cast<int>(taint_)]), a);
    taint.AddMember("attempts", Value(static_cast<uint64_t>(cluster_ ? cluster_->attempts() : 0)), a);
    d.AddMember("startupTaint", taint, a);
    Value api_v(rapidjson::kObjectType);
    api_v.AddMember("socket", json::str(opts_.socket_path, a), a);
    api_v.AddMember("readGroup", json::str(opts_.api_group, a), a);
    auto refused = server_.refusals();
    Value rf(rapidjson::kObjectType);
    rf.AddMember("caller", Value(refused.caller), a);
    rf.AddMember("readOnly", Value(refused.read_only), a);
    api_v.AddMember("refused", rf, a);
    d.AddMember("api", api_v, a);
    return json_response(200, d);
}

void Controller::handle(const ipc::Request& req, ipc::Responder respond) {
    const auto& s = req.segments;
    const std::string& m = req.method;
    if (s.size() == 1 && (s[0] == "readyz" || s[0] == "healthz")) {
        if (m != "GET" && m != "HEAD") return respond(ipc::json_error(405, "use GET"));
        if (s[0] == "healthz" || ready_) return respond(ipc::Response{200, "ok\n", "text/plain"});
        return respond(ipc::Response{503, "not ready\n", "text/plain"});
    }
    if (s.size() < 2 || s[0] != "v1") return respond(ipc::json_error(404, "no such endpoint: " + req.path));
    const std::string& what = s[1];

    if (what == "status" && s.size() == 2) {
        if (m != "GET") return respond(ipc::json_error(405, "use GET"));
        return respond(status_json());
    }
    if (what == "unprotected" && s.size() == 2) {
        if (m != "GET") return respond(ipc::json_error(405, "use GET"));
        rapidjson::Document d;
        unprotected_status(d, d.GetAllocator());
        return respond(json_response(200, d));
    }
    if (what == "sync" && s.size() == 2) {
        if (m != "POST") return respond(ipc::json_error(405, "use POST"));
        return handle_sync(req, std::move(respond));
    }
    if (what == "explain" && s.size() == 2) {
        if (m != "GET") return respond(ipc::json_error(405, "use GET"));
        return handle_explain(req, respond);
    }
    if (what == "policies" && s.size() == 4) {
        if (m != "GET") return respond(ipc::json_error(405, "use GET"));
        return handle_policies(req, respond);
    }
    if (what == "log-level" && s.size() == 2) {
        // The log level at run time: GET reads it; PUT {"level": "debug"} sets it (root: PUT changes things).
        rapidjson::Document d(rapidjson::kObjectType);
        if (m == "PUT") {
            auto body = json::parse(req.body);
            if (!body) return respond(ipc::json_error(400, body.error().message));
            auto text = json::opt_string(*body, "level");
            log::Level level;
            if (!text || !log::parse_level(*text, &level))
                return respond(ipc::json_error(400, "the body needs \"level\": debug, info, warn or error"));
            const log::Level before = log::level();
            // Said at the old level and at the new one: whichever is quieter still shows it.
            const std::string said = std::string("log level ") + log::to_string(before) + " -> " +
                                     log::to_string(level) + " (by pid " + std::to_string(req.peer.pid) + ")";
            if (before <= log::Level::warn) {
                log::warn(kLog, said);
                log::set_level(level);
            } else {
                log::set_level(level);
                log::write(std::max(level, log::Level::warn), kLog, said);
            }
            d.AddMember("previous", rapidjson::StringRef(log::to_string(before)), d.GetAllocator());
        } else if (m != "GET") {
            return respond(ipc::json_error(405, "use GET or PUT"));
        }
        d.AddMember("level", rapidjson::StringRef(log::to_string(log::level())), d.GetAllocator());
        return respond(ipc::Response{200, json::to_string(d) + "\n", "application/json"});
    }
    if (what == "gc" && s.size() == 2) {
        if (m != "POST") return respond(ipc::json_error(405, "use POST"));
        return handle_gc(req, respond);
    }
    if (what == "flows" && s.size() == 2) {
        if (m != "GET") return respond(ipc::json_error(405, "use GET"));
        return respond(flows_->query(req));
    }
    if (what == "pods" && s.size() == 2) {
        if (m == "GET") return handle_pods(respond);
        if (m == "POST") return handle_register(req, respond);
        return respond(ipc::json_error(405, "use GET or POST"));
    }
    if (what == "pods" && s.size() == 4) {
        if (m == "GET" || m == "DELETE") return handle_pod(m, api::key(s[2], s[3]), respond);
        return respond(ipc::json_error(405, "use GET or DELETE"));
    }
    return respond(ipc::json_error(404, "no such endpoint: " + req.path));
}

void Controller::handle_gc(const ipc::Request& req, ipc::Responder& respond) {
    auto doc = json::parse(req.body);
    if (!doc) return respond(ipc::json_error(400, doc.error().message));
    auto gc = api::gc_from_json(*doc);
    if (!gc) return respond(ipc::json_error(400, gc.error().message));
    std::map<std::string, api::PodRecord> before = registry_.all();
    auto removed = registry_.gc(*gc);
    for (const auto& k : removed) forget(k, before.at(k), true);
    rapidjson::Document d(rapidjson::kObjectType);
    Value list(rapidjson::kArrayType);
    for (const auto& k : removed) {
        log::info(kLog, "GC removed registration " + k + " (network " + gc->network + ")");
        list.PushBack(json::str(k, d.GetAllocator()), d.GetAllocator());
    }
    d.AddMember("removed", list, d.GetAllocator());
    if (!removed.empty()) {
        unregistrations_ += removed.size();
        persist();
        apply_all();
    }
    respond(json_response(200, d));
}

void Controller::handle_pods(ipc::Responder& respond) {
    rapidjson::Document d(rapidjson::kObjectType);
    Value list(rapidjson::kArrayType);
    for (const auto& [k, rec] : registry_.all()) {
        Value v;
        api::to_json(rec, v, d.GetAllocator());
        list.PushBack(v, d.GetAllocator());
    }
    d.AddMember("pods", list, d.GetAllocator());
    respond(json_response(200, d));
}

void Controller::handle_pod(const std::string& method, const std::string& key, ipc::Responder& respond) {
    if (method == "GET") {
        const api::PodRecord* rec = registry_.get(key);
        if (rec == nullptr) return respond(ipc::json_error(404, "no registration " + key));
        rapidjson::Document d;
        api::to_json(*rec, d, d.GetAllocator());
        return respond(json_response(200, d));
    }
    std::optional<api::PodRecord> gone;  // DELETE
    if (const api::PodRecord* rec = registry_.get(key)) gone = *rec;
    bool removed = registry_.remove(key);
    if (removed) {
        ++unregistrations_;
        log::info(kLog, "unregistered " + key);
        forget(key, *gone, true);
        persist();
        apply_all();
    }
    rapidjson::Document d(rapidjson::kObjectType);
    d.AddMember("removed", removed, d.GetAllocator());
    respond(json_response(200, d));
}

void Controller::handle_register(const ipc::Request& req, ipc::Responder& respond) {
    const auto received = std::chrono::steady_clock::now();
    if (!ready_) return respond(ipc::json_error(503, "signetd is not ready: the source has no complete snapshot yet"));
    auto doc = json::parse(req.body);
    if (!doc) return respond(ipc::json_error(400, doc.error().message));
    auto reg = api::registration_from_json(*doc);
    if (!reg) return respond(ipc::json_error(400, reg.error().message));
    if (auto st = api::validate_pod_identity(*reg); !st) return respond(registration_error(st.error().message));
    auto inode = pods::pod_netns_inode(reg->netns, opts_.host_netns);
    if (!inode) {
        log::warn(kLog, "refused registration " + api::key(reg->container_id, reg->ifname) + " from pid " +
                            std::to_string(req.peer.pid) + ": " + inode.error().message);
        return respond(registration_error(inode.error().message));
    }

    api::PodRecord rec;
    rec.reg = std::move(*reg);
    rec.registered_at = std::time(nullptr);
    rec.netns_inode = *inode;
    std::string key = api::key(rec.reg.container_id, rec.reg.ifname);
    if (const api::PodRecord* old = registry_.get(key); old != nullptr && old->reg.netns == rec.reg.netns)
        rec.registered_at = old->registered_at;  // a repeated ADD
    resolve(rec);
    std::optional<api::PodRecord> previous;
    if (const api::PodRecord* old = registry_.get(key)) previous = *old;
    registry_.put(rec);
    if (handshake_) handshake_->pod_started(key, rec);  // the queue bound before its rules are written
    services_->pods_changed();
    refresh_node_addresses();
    check_services();  // a new pod may bring a new bridge: can signet still see the translation?
    // The pod's table must be in place before the ADD returns: no packet
    // reaches or leaves the pod before its policy does.
    if (auto st = enforcer_.pod_added(key, registry_.all()); !st) {
        registry_.remove(key);
        forget(key, rec, true);
        if (previous) registry_.put(*previous);
        return respond(ipc::json_error(500, st.error().message));
    }
    rec.applied_version = source_version_;
    registry_.put(rec);
    cni_add_latency_.observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - received).count());
    if (!previous || previous->reg.netns != rec.reg.netns) flows_->pod_started(key, rec, false);
    rapidjson::Document out;
    api::to_json(rec, out, out.GetAllocator());
    log::info(kLog, "registered " + key + " pod " + rec.reg.namespace_ + "/" + rec.reg.name + " netns " +
                        rec.reg.netns + " (by pid " + std::to_string(req.peer.pid) + ")" + (rec.has_object ? "" : " (no Pod object: no labels, isolated until it appears)"));
    ++registrations_;
    persist();
    respond(json_response(200, out));
    notify_waiters();
    check_unprotected();
}

void Controller::handle_explain(const ipc::Request& req, ipc::Responder& respond) {
    auto from = policy::parse_endpoint(ipc::query_param(req.query, "from"));
    if (!from) return respond(ipc::json_error(400, "from: " + from.error().message));
    auto to = policy::parse_endpoint(ipc::query_param(req.query, "to"));
    if (!to) return respond(ipc::json_error(400, "to: " + to.error().message));
    using Named = std::pair<const char*, const policy::Endpoint*>;
    for (const auto& [what, e] : {Named{"from", &*from}, Named{"to", &*to}}) {
        if (!e->is_pod()) continue;
        if (auto p = api::namespace_problem(e->namespace_); !p.empty())
            return respond(ipc::json_error(400, std::string(what) + ": namespace " + p));
        if (auto p = api::pod_name_problem(e->name); !p.empty())
            return respond(ipc::json_error(400, std::string(what) + ": pod name " + p));
    }
    std::string proto_text = ipc::query_param(req.query, "protocol");
    auto proto = policy::parse_proto(proto_text.empty() ? "TCP" : proto_text);
    if (!proto) return respond(ipc::json_error(400, "protocol: expected TCP, UDP or SCTP"));
    std::string port_text = ipc::query_param(req.query, "port");
    uint16_t port = 0;
    auto [p, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (ec != std::errc() || p != port_text.data() + port_text.size() || port == 0)
        return respond(ipc::json_error(400, "port: expected a number 1-65535"));
    auto ex = policy_.explain(*from, *to, *proto, port);
    if (!ex) return respond(ipc::json_error(ex.error().code == ENOENT ? 404 : 400, ex.error().message));
    rapidjson::Document d;
    ex->to_json(d, d.GetAllocator());
    std::string text = ex->text();
    {
        // Audit mode (docs/policy.md): a side the policy denies whose pod's
        // namespace audits lets the connection through and records it. The
        // verdict ("allowed", the exit status) stays the policy's.
        auto& al = d.GetAllocator();
        const auto& snap = source_->snapshot();
        bool audited_all = !ex->allowed;
        rapidjson::Value audit(rapidjson::kArrayType);
        for (const auto* side : {&ex->egress, &ex->ingress}) {
            if (!*side || (*side)->allowed) continue;
            const std::string& pod = (*side)->pod;
            const std::string ns = pod.substr(0, pod.find('/'));
            auto m = policy::policy_mode_of(snap, ns, opts_.policy_mode);
            if (m.mode != policy::PolicyMode::audit) {
                audited_all = false;
                continue;
            }
            audit.PushBack(json::str(std::string((*side)->ingress ? "ingress of " : "egress of ") + pod, al), al);
        }
        if (!audit.Empty()) {
            text += audited_all ? "would be DENIED; audit mode: allowed and recorded (verdict audit-denied)\n"
                                : "audit mode on one side only: the other side's denial still refuses it\n";
            d.AddMember("auditMode", audit, al);
            d.AddMember("auditAllowed", audited_all, al);
        }
    }
    if (handshake_ && *proto == nft::kTcp) explain_identity(*from, *to, port, d, text);
    if (!to->is_pod())
        if (auto ip = policy::parse_ip(to->ip)) services_->explain(*from, *ip, *proto, port, d, text);
    d.AddMember("text", json::str(text, d.GetAllocator()), d.GetAllocator());
    respond(json_response(200, d));
}

// With the handshake on, TCP between pods is judged on the peer's proven
// identity; say so, in which mode (each namespace's: signet.dev/handshake, or
// the node's default), and what the same connection gets without a token (a
// spoofed address, or a node without signet). Where one side runs the
// handshake off and the other enforces, the enforcing side sees no token and
// judges a plain address: the verdict ("allowed") is that one.
void Controller::explain_identity(const policy::Endpoint& from, const policy::Endpoint& to, uint16_t port,
                                  rapidjson::Document& d, std::string& text) {
    auto& a = d.GetAllocator();
    rapidjson::Value id(rapidjson::kObjectType);
    auto describe = [&](const policy::Endpoint& e, handshake::NamespaceMode& m) {
        m = handshake_->mode_of_namespace(e.namespace_);
        return std::string(to_string(m.mode)) +
               (m.from_label ? std::string(" (namespace ") + e.namespace_ + "'s label " + handshake::kHandshakeModeLabel + ")"
                             : std::string(" (the node's default)"));
    };
    if (!from.is_pod() || !to.is_pod()) {
        HandshakeMode mode = handshake_->mode();
        id.AddMember("mode", rapidjson::Value(to_string(mode), a), a);
        id.AddMember("judged_on", "address", a);
        text += std::string("  identity (handshake ") + to_string(mode) +
                "): an endpoint is not a pod, so this flow is judged by address\n";
        d.AddMember("identity", id, a);
        return;
    }
    handshake::NamespaceMode cm, sm;
    std::string client_text = describe(from, cm), server_text = describe(to, sm);
    id.AddMember("mode", rapidjson::Value(to_string(sm.mode), a), a);  // the server's: it judges the SYN
    id.AddMember("client_mode", rapidjson::Value(to_string(cm.mode), a), a);
    id.AddMember("server_mode", rapidjson::Value(to_string(sm.mode), a), a);
    for (const auto* m : {&cm, &sm})
        if (!m->problem.empty()) text += "  warning: " + m->problem + "\n";
    auto ip_of = [&](const policy::Endpoint& e) {
        std::string ip = e.ip;
        if (!ip.empty()) return ip;
        const auto& pods = source_->snapshot().pods;
        auto it = pods.find(cache::ObjectKey{e.namespace_, e.name});
        if (it != pods.end() && !it->second.pod_ips.empty()) ip = it->second.pod_ips.front();
        for (const auto& [k, rec] : registry_.all())
            if (ip.empty() && rec.reg.namespace_ == e.namespace_ && rec.reg.name == e.name && !rec.reg.ips.empty())
                ip = rec.reg.ips.front().substr(0, rec.reg.ips.front().find('/'));
        return ip;
    };
    const bool client_on = cm.mode != HandshakeMode::off, server_on = sm.mode != HandshakeMode::off;
    text += "  identity: client " + from.to_string() + " handshake " + client_text + ", server " + to.to_string() +
            " handshake " + server_text + "\n";
    if (!client_on && !server_on) {
        id.AddMember("judged_on", "address", a);
        text += "    neither side runs the handshake: judged on the pods at the addresses\n";
        d.AddMember("identity", id, a);
        return;
    }
    bool effective = d.HasMember("allowed") && d["allowed"].IsBool() && d["allowed"].GetBool();
    if (client_on && server_on) {
        id.AddMember("judged_on", "proven identity", a);
        text += "    judged on " + from.to_string() +
                "'s proven identity (a token from its node, checked against the cluster view), not on its address\n";
    } else {
        // One side runs no handshake: the other sees no token. The server
        // (client off) judges the client's address at ingress; the client
        // (server off) judges the server's address at egress.
        const bool server_judges = !client_on;
        const handshake::NamespaceMode& judge = server_judges ? sm : cm;
        const bool enforce = judge.mode == HandshakeMode::enforce;
        id.AddMember("judged_on", rapidjson::StringRef(enforce ? "address" : "pod at the address"), a);
        text += std::string(server_judges ? "    the client sends no token: the server" : "    the server sends no token: the client") +
                (enforce ? " (enforce) judges a plain address: only ipBlock rules can admit it\n"
                         : " (permissive) judges the pod at the address\n");
        if (enforce) {
            const policy::Endpoint& peer = server_judges ? from : to;
            std::string ip = ip_of(peer);
            auto bare = policy::Endpoint::address(ip);
            auto t = ip.empty() ? Result<policy::Explanation>(make_error(ENOENT, "no address"))
                                : server_judges ? policy_.explain(bare, to, nft::kTcp, port)
                                                : policy_.explain(from, bare, nft::kTcp, port);
            bool ok = t && t->allowed;
            effective = effective && ok;
            text += std::string(server_judges ? "    ingress of " + to.to_string() + " from"
                                              : "    egress of " + from.to_string() + " to") +
                    " the plain address " + (ip.empty() ? std::string("(unknown)") : ip) + ": " +
                    (ok ? "ALLOWED" : "DENIED") + "\n";
        }
    }
    if (client_on && server_on) {
        std::string ip = ip_of(from);
        if (!ip.empty()) {
            policy::Endpoint bare = sm.mode == HandshakeMode::enforce
                                        ? policy::Endpoint::address(ip)
                                        : policy::Endpoint::pod_at(from.namespace_, from.name, ip);
            if (auto t = policy_.explain(bare, to, nft::kTcp, port); t) {
                bool ok = t->allowed;
                id.AddMember("without_token_allowed", ok, a);
                text += "    without a token from " + ip + ": " + (ok ? "ALLOWED" : "DENIED") +
                        (sm.mode == HandshakeMode::enforce
                             ? " (enforce: a pod address counts as a plain address, only ipBlock rules can admit it)\n"
                             : " (permissive: judged on address rules)\n");
            }
        }
    }
    if (d.HasMember("allowed") && d["allowed"].IsBool() && d["allowed"].GetBool() != effective) {
        d["allowed"].SetBool(effective);
        text += std::string("  verdict with the handshake: ") + (effective ? "ALLOWED" : "DENIED") + "\n";
    }
    d.AddMember("identity", id, a);
}

void Controller::handle_policies(const ipc::Request& req, ipc::Responder& respond) {
    if (auto p = api::namespace_problem(req.segments[2]); !p.empty())
        return respond(ipc::json_error(400, "namespace " + p));
    if (auto p = api::pod_name_problem(req.segments[3]); !p.empty()) return respond(ipc::json_error(400, "pod name " + p));
    rapidjson::Document d;
    cache::ObjectKey key{req.segments[2], req.segments[3]};
    if (auto st = enforcer_.describe_pod(key, registry_.all(), d, d.GetAllocator()); !st)
        return respond(ipc::json_error(st.error().code == ENOENT ? 404 : 400, st.error().message));
    respond(json_response(200, d));
}

void Controller::handle_sync(const ipc::Request& req, ipc::Responder respond) {
    std::chrono::milliseconds timeout{30000};
    std::string t = ipc::query_param(req.query, "timeout");
    if (!t.empty() && !parse_timeout(t, &timeout))
        return respond(ipc::json_error(400, "timeout: expected a duration such as 500ms, 10s or 2m"));
    timeout = std::min<std::chrono::milliseconds>(timeout, kMaxSyncWait);
    source_->refresh([this, timeout, respond = std::move(respond)](Status st) mutable {
        if (!st) return respond(ipc::json_error(503, "cannot read the source: " + st.error().message));
        wait_applied(source_version_, timeout, std::move(respond));
    });
}

void Controller::sync(std::function<void(Status)> done) {
    source_->refresh([this, done = std::move(done)](Status st) mutable {
        if (!st) return done(make_error(st.error().code, "cannot read the source: " + st.error().message));
        wait_applied(source_version_, kMaxSyncWait, [done = std::move(done)](ipc::Response r) {
            done(r.status < 300 ? Status{} : make_error(ETIMEDOUT, r.body));
        });
    });
}

void Controller::wait_applied(uint64_t target, std::chrono::milliseconds timeout, ipc::Responder respond) {
    uint64_t id = next_waiter_++;
    auto timer = std::make_shared<asio::steady_timer>(io_);
    timer->expires_after(timeout);
    waiters_.emplace(id, SyncWaiter{target, timer, std::move(respond)});
    timer->async_wait([this, id, timer](boost::system::error_code ec) {
        auto it = waiters_.find(id);
        if (ec || it == waiters_.end()) return;  // answered already
        it->second.respond(ipc::json_error(504, "source version " + std::to_string(it->second.target) +
                                                    " not applied to every pod in time (applied: " +
                                                    std::to_string(applied_version()) + ")"));
        waiters_.erase(it);
    });
    apply_all();
}

}  // namespace signet::core
