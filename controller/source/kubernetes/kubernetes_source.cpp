#include "kubernetes_source.h"

#include <boost/asio/post.hpp>
#include <cerrno>
#include <charconv>
#include <optional>
#include <random>

#include "signet/json.h"

namespace signet::source {

namespace asio = boost::asio;
using k8s::Resource;
using k8s::kResourceCount;
using Clock = std::chrono::steady_clock;

struct KubernetesSource::Update {
    enum Type { Replace, Upsert, Delete, Bookmark } type = Upsert;
    Resource res = Resource::Pods;
    std::string rv;
    cache::Snapshot snap;                       // Replace: the full set of its kind
    std::map<std::string, k8s::NodeInfo> nodes;  // Replace of nodes
    std::optional<k8s::Item> item;              // Upsert
    std::string ns, name;                       // Delete
};

struct KubernetesSource::PendingRefresh {
    uint64_t id = 0;
    std::function<void(Status)> done;
    bool have_targets = false;
    std::string target[kResourceCount];
    Clock::time_point started;
    Clock::time_point targets_at;
    bool relist_asked = false;
};

namespace {

std::optional<uint64_t> rv_number(const std::string& rv) {
    uint64_t v = 0;
    auto [p, ec] = std::from_chars(rv.data(), rv.data() + rv.size(), v);
    if (ec != std::errc() || p != rv.data() + rv.size() || rv.empty()) return std::nullopt;
    return v;
}

// Whether `have` is at or past `want`. resourceVersions are opaque to
// clients, but kube-apiserver's are etcd revisions (integers), which is what
// a consistent read needs; non-numeric ones only compare equal.
bool rv_reached(const std::string& have, const std::string& want) {
    if (want.empty()) return true;
    auto h = rv_number(have), w = rv_number(want);
    if (h && w) return *h >= *w;
    return have == want;
}

std::string key_of(const std::string& ns, const std::string& name) { return ns.empty() ? name : ns + "/" + name; }

// Notes in `keys` every key whose object differs between `a` and `b` (added, removed or changed).
template <typename Map, typename Keys>
void note_differences(const Map& a, const Map& b, Keys& keys) {
    auto x = a.begin(), y = b.begin();
    while (x != a.end() || y != b.end()) {
        if (y == b.end() || (x != a.end() && x->first < y->first)) {
            keys.insert(x->first);
            ++x;
        } else if (x == a.end() || y->first < x->first) {
            keys.insert(y->first);
            ++y;
        } else {
            if (!(x->second == y->second)) keys.insert(x->first);
            ++x, ++y;
        }
    }
}

}  // namespace

// One resource's reflector and its handler: a list is gathered into one
// Replace update, each watch event becomes one update; both are queued for
// the loop thread.
struct KubernetesSource::Watcher final : kube::ReflectorHandler {
    KubernetesSource* src = nullptr;
    Resource res = Resource::Pods;
    std::unique_ptr<kube::Api> api;
    std::unique_ptr<kube::Reflector> reflector;
    std::thread thread;
    Update list;  // the list being read

    std::string name() const { return std::string(k8s::resource_name(res)); }

    Status on_list_start() override {
        list = Update{};
        list.type = Update::Replace;
        list.res = res;
        return {};
    }
    bool on_list_item(const rapidjson::Value& obj, size_t index) override {
        auto item = k8s::decode_item(res, obj);
        if (!item) {
            auto ref = kube::object_ref(obj);
            src->emit(name() + ": skipping malformed object " +
                      (ref ? key_of(ref->namespace_, ref->name) : "items[" + std::to_string(index) + "]") + ": " +
                      item.error().message);
            return false;
        }
        std::visit(
            [&](auto&& o) {
                using T = std::decay_t<decltype(o)>;
                if constexpr (std::is_same_v<T, k8s::NodeInfo>) list.nodes[o.name] = std::move(o);
                else list.snap.put(cache::Object(std::move(o)));
            },
            std::move(*item));
        return true;
    }
    void on_listed(const std::string& rv) override {
        list.rv = rv;
        src->push(std::exchange(list, Update{}));
    }
    Result<bool> on_event(const kube::WatchEvent& ev, const std::string& rv) override {
        Update u;
        u.res = res;
        switch (ev.type) {
            case kube::WatchEvent::Bookmark:
                u.type = Update::Bookmark;
                u.rv = rv;
                break;
            case kube::WatchEvent::Deleted: {
                auto ref = kube::object_ref(*ev.object);  // the reflector checked it
                if (!ref) return ref.error();
                u.type = Update::Delete;
                u.ns = !k8s::is_namespaced(res)
                           ? ""
                           : (ref->namespace_.empty() ? std::string(cache::kDefaultNamespace) : ref->namespace_);
                u.name = ref->name;
                u.rv = ref->resource_version;
                break;
            }
            case kube::WatchEvent::Added:
            case kube::WatchEvent::Modified: {
                auto ref = kube::object_ref(*ev.object);
                auto item = k8s::decode_item(res, *ev.object);
                if (!item) {
                    // Skipped and reported; its resourceVersion still counts (the stream is consistent).
                    src->emit(name() + ": skipping malformed object " +
                              (ref ? key_of(ref->namespace_, ref->name) : std::string("?")) + " in a watch event: " +
                              item.error().message);
                    return false;
                }
                u.type = Update::Upsert;
                u.item = std::move(*item);
                u.rv = ref ? ref->resource_version : "";
                break;
            }
            case kube::WatchEvent::Error: return make_error(EPROTO, "ERROR event");  // the reflector handles these
        }
        src->push(std::move(u));
        return true;
    }
    void report(const std::string& msg) override { src->emit(name() + ": " + msg); }
};

// ---------------------------------------------------------------------------

Result<std::unique_ptr<KubernetesSource>> KubernetesSource::create(const KubernetesOptions& opts, Report report) {
    if (opts.page_size < 1) return make_error(EINVAL, "page size must be at least 1");
    auto client = kube::KubeClient::create(opts.kubeconfig, opts.in_cluster, opts.context);
    if (!client) return client.error();
    kube::KubeClient* base = client->get();
    std::unique_ptr<KubernetesSource> s(new KubernetesSource(
        opts, base->config(), [base]() -> std::unique_ptr<kube::Api> { return base->another(); }, std::move(report)));
    s->client_ = std::move(*client);
    return s;
}

std::unique_ptr<KubernetesSource> KubernetesSource::with_api(const KubernetesOptions& opts, ApiFactory make_api,
                                                             Report report) {
    kube::ClientConfig cfg;
    cfg.server = make_api()->server();
    cfg.origin = "recorded";
    return std::unique_ptr<KubernetesSource>(new KubernetesSource(opts, std::move(cfg), std::move(make_api), std::move(report)));
}

Result<std::unique_ptr<Source>> make_kubernetes_source(const KubernetesOptions& opts,
                                                       std::function<void(const std::string&)> report) {
    auto s = KubernetesSource::create(opts, std::move(report));
    if (!s) return s.error();
    return std::unique_ptr<Source>(std::move(*s));
}

KubernetesSource::KubernetesSource(const KubernetesOptions& opts, kube::ClientConfig cfg, ApiFactory make_api,
                                   Report report)
    : opts_(opts), cfg_(std::move(cfg)), make_api_(std::move(make_api)), report_(std::move(report)) {}

KubernetesSource::~KubernetesSource() { stop(); }

Status KubernetesSource::start(asio::io_context& io, std::function<void()> on_change) {
    if (started_) return make_error(EALREADY, "kubernetes source already started");
    started_ = true;
    io_ = &io;
    on_change_ = std::move(on_change);
    drain_timer_ = std::make_unique<asio::steady_timer>(io);
    refresh_timer_ = std::make_unique<asio::steady_timer>(io);
    refresh_api_ = make_api_();
    for (int i = 0; i < kResourceCount; ++i) {
        auto w = std::make_unique<Watcher>();
        w->src = this;
        w->res = static_cast<Resource>(i);
        w->api = make_api_();
        kube::ReflectorOptions ro;
        ro.what = w->name();
        ro.path = std::string(k8s::resource_path(w->res));
        ro.page_size = opts_.page_size;
        ro.watch_timeout = opts_.watch_timeout;
        ro.backoff_initial = opts_.backoff_initial;
        ro.backoff_max = opts_.backoff_max;
        ro.max_event_bytes = opts_.max_event_bytes;
        w->reflector = std::make_unique<kube::Reflector>(std::move(ro), *w->api, *w);
        watchers_.push_back(std::move(w));
    }
    for (auto& w : watchers_) {
        Watcher* wp = w.get();
        wp->thread = std::thread([wp] { wp->reflector->run(); });
    }
    refresher_ = std::thread([this] { run_refresher(); });
    return {};
}

void KubernetesSource::stop() {
    if (!started_ || stopping_.exchange(true)) return;
    {
        std::lock_guard lk(wait_mu_);
        wait_cv_.notify_all();
    }
    for (auto& w : watchers_) w->reflector->stop();
    if (refresh_api_) refresh_api_->stop();
    for (auto& w : watchers_)
        if (w->thread.joinable()) w->thread.join();
    if (refresher_.joinable()) refresher_.join();
    if (drain_timer_) drain_timer_->cancel();
    if (refresh_timer_) refresh_timer_->cancel();
    auto pending = std::move(refreshes_);
    refreshes_.clear();
    for (auto& p : pending) p.done(make_error(ECANCELED, "kubernetes source stopped"));
}

// ---------------------------------------------------------------------------
// libcurl threads

void KubernetesSource::emit(const std::string& msg) {
    if (!report_) return;
    std::lock_guard lk(report_mu_);
    report_(msg);
}

void KubernetesSource::push(Update u) {
    bool was_empty;
    {
        std::lock_guard lk(queue_mu_);
        was_empty = queue_.empty();
        queue_.push_back(std::move(u));
    }
    if (was_empty && io_) {
        std::weak_ptr<int> alive = alive_;
        asio::post(*io_, [this, alive] {
            if (!alive.expired()) schedule_drain();
        });
    }
}

void KubernetesSource::run_refresher() {
    for (;;) {
        uint64_t upto;
        {
            std::unique_lock lk(wait_mu_);
            wait_cv_.wait(lk, [&] { return stopping_.load() || refresh_requested_ > refresh_served_; });
            if (stopping_) return;
            upto = refresh_requested_;
        }
        // The current resourceVersion of each resource: a consistent list with limit=1.
        std::vector<std::string> targets(kResourceCount);
        Status result;
        for (int i = 0; i < kResourceCount && result; ++i) {
            auto r = static_cast<Resource>(i);
            kube::Request req;
            req.path = std::string(k8s::resource_path(r)) + "?limit=1";
            req.timeout = std::chrono::seconds(15);
            req.max_body = 64u << 20;
            auto resp = refresh_api_->call(req);
            if (!resp && resp.error().code == ECANCELED) return;
            if (!resp) {
                result = make_error(EHOSTUNREACH, "refresh: list " + std::string(k8s::resource_name(r)) + ": " +
                                                      resp.error().message);
                break;
            }
            if (resp->status != 200) {
                result = make_error(EHOSTUNREACH, "refresh: list " + std::string(k8s::resource_name(r)) + ": " +
                                                      resp->describe());
                break;
            }
            const std::string& body = resp->body;
            auto doc = json::parse(body);
            const rapidjson::Value* md = doc ? json::find(*doc, "metadata") : nullptr;
            if (!md || !md->IsObject()) {
                result = make_error(EBADMSG, "refresh: list " + std::string(k8s::resource_name(r)) + ": not a List");
                break;
            }
            targets[i] = json::opt_string(*md, "resourceVersion").value_or("");
        }
        {
            std::lock_guard lk(wait_mu_);
            refresh_served_ = upto;
        }
        std::weak_ptr<int> alive = alive_;
        asio::post(*io_, [this, alive, upto, targets = std::move(targets), result]() mutable {
            if (alive.expired()) return;
            auto now = Clock::now();
            for (auto it = refreshes_.begin(); it != refreshes_.end();) {
                if (it->have_targets || it->id >= upto) {
                    ++it;
                    continue;
                }
                if (!result) {
                    auto done = std::move(it->done);
                    it = refreshes_.erase(it);
                    done(result);
                    continue;
                }
                for (int i = 0; i < kResourceCount; ++i) it->target[i] = targets[i];
                it->have_targets = true;
                it->targets_at = now;
                ++it;
            }
            check_refreshes();
        });
    }
}

// ---------------------------------------------------------------------------
// loop thread

void KubernetesSource::refresh(std::function<void(Status)> done) {
    if (!started_ || stopping_) {
        done(make_error(ECANCELED, "kubernetes source is not running"));
        return;
    }
    PendingRefresh p;
    p.id = next_refresh_id_++;
    p.done = std::move(done);
    p.started = Clock::now();
    refreshes_.push_back(std::move(p));
    {
        std::lock_guard lk(wait_mu_);
        refresh_requested_ = next_refresh_id_;
    }
    wait_cv_.notify_all();
    check_refreshes();
}

void KubernetesSource::check_refreshes() {
    auto now = Clock::now();
    for (auto it = refreshes_.begin(); it != refreshes_.end();) {
        bool finished = false;
        Status result;
        if (now - it->started > opts_.refresh_timeout) {
            std::string behind;
            for (int i = 0; i < kResourceCount; ++i)
                if (it->have_targets && !rv_reached(applied_rv_[i], it->target[i]))
                    behind += std::string(behind.empty() ? "" : ", ") + std::string(k8s::resource_name(static_cast<Resource>(i))) +
                              " at " + (applied_rv_[i].empty() ? "nothing" : applied_rv_[i]) + " < " + it->target[i];
            result = make_error(ETIMEDOUT, "refresh: the watches did not catch up within " +
                                               std::to_string(opts_.refresh_timeout.count() / 1000) + " s" +
                                               (behind.empty() ? (ready_ ? "" : " (first list not complete)") : " (" + behind + ")"));
            finished = true;
        } else if (it->have_targets && ready_) {
            bool all = true;
            for (int i = 0; i < kResourceCount; ++i) all = all && rv_reached(applied_rv_[i], it->target[i]);
            if (all) {
                finished = true;
            } else if (!it->relist_asked && now - it->targets_at >= opts_.refresh_grace) {
                // No event or bookmark brought this watch to the target: read it afresh.
                it->relist_asked = true;
                bool ask[kResourceCount] = {};
                for (int i = 0; i < kResourceCount; ++i) ask[i] = !rv_reached(applied_rv_[i], it->target[i]);
                for (int i = 0; i < kResourceCount; ++i)
                    if (ask[i]) watchers_[i]->reflector->relist();
            }
        }
        if (finished) {
            auto done = std::move(it->done);
            it = refreshes_.erase(it);
            done(result);
        } else {
            ++it;
        }
    }
    if (!refreshes_.empty()) {
        std::weak_ptr<int> alive = alive_;
        refresh_timer_->expires_after(std::chrono::milliseconds(100));
        refresh_timer_->async_wait([this, alive](boost::system::error_code ec) {
            if (ec || alive.expired() || stopping_) return;
            check_refreshes();
        });
    }
}

void KubernetesSource::schedule_drain() {
    if (drain_scheduled_) return;
    drain_scheduled_ = true;
    if (opts_.coalesce.count() <= 0) {
        drain_scheduled_ = false;
        drain();
        return;
    }
    std::weak_ptr<int> alive = alive_;
    drain_timer_->expires_after(opts_.coalesce);
    drain_timer_->async_wait([this, alive](boost::system::error_code ec) {
        if (alive.expired()) return;
        drain_scheduled_ = false;
        if (ec) return;
        drain();
    });
}

void KubernetesSource::drain() {
    std::vector<Update> batch;
    {
        std::lock_guard lk(queue_mu_);
        batch.swap(queue_);
    }
    if (batch.empty()) return;
    bool changed = false;
    for (auto& u : batch) {
        int i = static_cast<int>(u.res);
        switch (u.type) {
            case Update::Replace:
                switch (u.res) {
                    case Resource::Namespaces:
                        if (snapshot_.namespaces != u.snap.namespaces)
                            changed = delta_.all = true, snapshot_.namespaces.swap(u.snap.namespaces);
                        break;
                    case Resource::Pods:
                        if (snapshot_.pods != u.snap.pods) changed = delta_.all = true, snapshot_.pods.swap(u.snap.pods);
                        break;
                    case Resource::NetworkPolicies:
                        if (snapshot_.policies != u.snap.policies)
                            changed = delta_.all = true, snapshot_.policies.swap(u.snap.policies);
                        break;
                    case Resource::Nodes:
                        if (nodes_ != u.nodes) changed = true, nodes_.swap(u.nodes);
                        break;
                    case Resource::Services:
                        // Services change no pod's rules by themselves: the keys that differ, not `all`.
                        if (snapshot_.services != u.snap.services) {
                            note_differences(snapshot_.services, u.snap.services, delta_.services);
                            changed = true, snapshot_.services.swap(u.snap.services);
                        }
                        break;
                }
                listed_[i] = true;
                break;
            case Update::Upsert:
                std::visit(
                    [&](auto&& o) {
                        using T = std::decay_t<decltype(o)>;
                        auto assign = [&](auto& map, const auto& key, auto* keys) {
                            auto it = map.find(key);
                            if (it != map.end() && it->second == o) return;
                            if (keys != nullptr) keys->insert(key);
                            map.insert_or_assign(key, std::move(o));
                            changed = true;
                        };
                        if constexpr (std::is_same_v<T, cache::Namespace>) assign(snapshot_.namespaces, o.name, &delta_.namespaces);
                        else if constexpr (std::is_same_v<T, cache::Pod>)
                            assign(snapshot_.pods, cache::ObjectKey{o.namespace_, o.name}, &delta_.pods);
                        else if constexpr (std::is_same_v<T, cache::NetworkPolicy>)
                            assign(snapshot_.policies, cache::ObjectKey{o.namespace_, o.name}, &delta_.policies);
                        else if constexpr (std::is_same_v<T, cache::Service>)
                            assign(snapshot_.services, cache::ObjectKey{o.namespace_, o.name}, &delta_.services);
                        else assign(nodes_, o.name, static_cast<std::set<std::string>*>(nullptr));
                    },
                    std::move(*u.item));
                break;
            case Update::Delete:
                switch (u.res) {
                    case Resource::Namespaces:
                        if (snapshot_.namespaces.erase(u.name) > 0) changed = true, delta_.namespaces.insert(u.name);
                        break;
                    case Resource::Pods:
                        if (snapshot_.pods.erase({u.ns, u.name}) > 0) changed = true, delta_.pods.insert({u.ns, u.name});
                        break;
                    case Resource::NetworkPolicies:
                        if (snapshot_.policies.erase({u.ns, u.name}) > 0)
                            changed = true, delta_.policies.insert({u.ns, u.name});
                        break;
                    case Resource::Nodes: changed |= nodes_.erase(u.name) > 0; break;
                    case Resource::Services:
                        if (snapshot_.services.erase({u.ns, u.name}) > 0)
                            changed = true, delta_.services.insert({u.ns, u.name});
                        break;
                }
                break;
            case Update::Bookmark: break;
        }
        if (!u.rv.empty()) applied_rv_[i] = u.rv;
    }
    ++batches_;
    bool was_ready = ready_;
    ready_ = true;
    for (bool listed : listed_) ready_ = ready_ && listed;
    if (ready_ && (changed || !was_ready) && on_change_) on_change_();
    check_refreshes();
}

// ---------------------------------------------------------------------------

std::string KubernetesSource::origin_version() const {
    std::string best;
    uint64_t best_n = 0;
    for (const auto& rv : applied_rv_) {
        if (auto n = rv_number(rv); n && *n >= best_n) {
            best_n = *n;
            best = rv;
        } else if (!n && best.empty()) {
            best = rv;
        }
    }
    return best;
}

const k8s::NodeInfo* KubernetesSource::local_node() const {
    auto it = nodes_.find(opts_.node_name);
    return it == nodes_.end() ? nullptr : &it->second;
}

void KubernetesSource::status(rapidjson::Value& out, rapidjson::Document::AllocatorType& a) const {
    out.SetObject();
    out.AddMember("kind", "kubernetes", a);
    out.AddMember("server", json::str(cfg_.server, a), a);
    out.AddMember("config", json::str(cfg_.origin, a), a);
    if (!cfg_.context.empty()) out.AddMember("context", json::str(cfg_.context, a), a);
    out.AddMember("ready", ready_, a);
    out.AddMember("resourceVersion", json::str(origin_version(), a), a);
    auto now = Clock::now();
    rapidjson::Value res(rapidjson::kObjectType);
    std::string last_error;
    uint64_t relists = 0, reconnects = 0;
    bool all_watching = true, any_backoff = false;
    {
        for (int i = 0; i < kResourceCount; ++i) {
            const auto s = watchers_.empty() ? kube::Reflector::Stats{} : watchers_[i]->reflector->stats();
            auto r = static_cast<Resource>(i);
            rapidjson::Value o(rapidjson::kObjectType);
            o.AddMember("state", json::str(s.state, a), a);
            o.AddMember("resourceVersion", json::str(applied_rv_[i], a), a);
            size_t count = 0;
            switch (r) {
                case Resource::Namespaces: count = snapshot_.namespaces.size(); break;
                case Resource::Pods: count = snapshot_.pods.size(); break;
                case Resource::NetworkPolicies: count = snapshot_.policies.size(); break;
                case Resource::Nodes: count = nodes_.size(); break;
                case Resource::Services: count = snapshot_.services.size(); break;
            }
            o.AddMember("objects", static_cast<uint64_t>(count), a);
            o.AddMember("lastError", json::str(s.last_error, a), a);
            o.AddMember("lastHttpStatus", s.last_http_status, a);
            double lag = s.last_event == Clock::time_point{}
                             ? -1.0
                             : std::chrono::duration<double>(now - s.last_event).count();
            o.AddMember("lagSeconds", lag, a);
            o.AddMember("backoffSeconds", static_cast<double>(s.backoff.count()) / 1000.0, a);
            o.AddMember("lists", s.lists, a);
            o.AddMember("relists", s.relists, a);
            o.AddMember("expired", s.expired, a);
            o.AddMember("reconnects", s.reconnects, a);
            o.AddMember("timeouts", s.timeouts, a);
            rapidjson::Value ev(rapidjson::kObjectType);
            ev.AddMember("added", s.added, a);
            ev.AddMember("modified", s.modified, a);
            ev.AddMember("deleted", s.deleted, a);
            ev.AddMember("bookmarks", s.bookmarks, a);
            ev.AddMember("errors", s.error_events, a);
            ev.AddMember("malformed", s.malformed, a);
            o.AddMember("events", ev, a);
            res.AddMember(rapidjson::Value(std::string(k8s::resource_name(r)).c_str(), a), o, a);
            if (!s.last_error.empty()) last_error = std::string(k8s::resource_name(r)) + ": " + s.last_error;
            relists += s.relists;
            reconnects += s.reconnects;
            all_watching = all_watching && s.state == "watching";
            any_backoff = any_backoff || s.state == "backing-off";
        }
    }
    const char* conn = !started_ || stopping_ ? "stopped" : any_backoff ? "disconnected" : all_watching ? "connected" : "connecting";
    out.AddMember("connection", rapidjson::StringRef(conn), a);
    out.AddMember("lastError", json::str(last_error, a), a);
    out.AddMember("relists", relists, a);
    out.AddMember("reconnects", reconnects, a);
    out.AddMember("batches", batches_, a);
    out.AddMember("execRuns", client_ ? client_->exec_runs() : 0, a);
    out.AddMember("resources", res, a);
    rapidjson::Value node(rapidjson::kObjectType);
    node.AddMember("name", json::str(opts_.node_name, a), a);
    rapidjson::Value ips(rapidjson::kArrayType);
    if (const auto* n = local_node())
        for (const auto& ip : n->internal_ips) ips.PushBack(json::str(ip, a), a);
    node.AddMember("internalIPs", ips, a);
    out.AddMember("node", node, a);
}

}  // namespace signet::source
