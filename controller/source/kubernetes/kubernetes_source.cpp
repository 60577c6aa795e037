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

struct KubernetesSource::Watcher {
    Resource res = Resource::Pods;
    k8s::Transfer transfer;
    std::atomic<bool> relist{false};
    std::thread thread;
};

struct KubernetesSource::Stats {
    std::string state = "starting";  // listing | watching | backing-off | stopped
    std::string last_error;
    int last_http_status = 0;
    std::string watch_rv;
    uint64_t lists = 0, relists = 0, reconnects = 0, expired = 0;
    uint64_t added = 0, modified = 0, deleted = 0, bookmarks = 0, error_events = 0, malformed = 0;
    Clock::time_point last_event{};  // event, bookmark or completed list
    std::chrono::milliseconds backoff{0};
    bool reported_error = false;
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

std::string url_escape(std::string_view s) {
    static const char* hex = "0123456789ABCDEF";
    std::string out;
    for (unsigned char c : s) {
        if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
            out += static_cast<char>(c);
        } else {
            out += '%';
            out += hex[c >> 4];
            out += hex[c & 15];
        }
    }
    return out;
}

std::chrono::milliseconds jitter(std::chrono::milliseconds d) {
    thread_local std::mt19937_64 rng{std::random_device{}()};
    std::uniform_real_distribution<double> u(0.0, 1.0);
    return std::chrono::milliseconds(static_cast<int64_t>(static_cast<double>(d.count()) * (1.0 + u(rng))));
}

// client-go's reflector back-off: 800 ms doubling to a 30 s cap, jitter 1.0, reset after success.
class Backoff {
public:
    Backoff(std::chrono::milliseconds initial, std::chrono::milliseconds cap) : initial_(initial), cap_(cap), cur_(initial) {}
    std::chrono::milliseconds next() {
        auto d = std::min(jitter(cur_), cap_);
        cur_ = std::min(cur_ * 2, cap_);
        return d;
    }
    void reset() { cur_ = initial_; }

private:
    std::chrono::milliseconds initial_, cap_, cur_;
};

std::string scope_of(Resource r) {
    return "cannot list " + std::string(k8s::resource_name(r)) + " at the cluster scope";
}

std::string key_of(const std::string& ns, const std::string& name) { return ns.empty() ? name : ns + "/" + name; }

}  // namespace

// ---------------------------------------------------------------------------

Result<std::unique_ptr<KubernetesSource>> KubernetesSource::create(const KubernetesOptions& opts, Report report) {
    auto cfg = opts.kubeconfig.empty() ? k8s::in_cluster_config(opts.in_cluster)
                                       : k8s::load_kubeconfig(opts.kubeconfig, opts.context);
    if (!cfg) return cfg.error();
    if (opts.page_size < 1) return make_error(EINVAL, "page size must be at least 1");
    return std::unique_ptr<KubernetesSource>(new KubernetesSource(opts, std::move(*cfg), std::move(report)));
}

Result<std::unique_ptr<Source>> make_kubernetes_source(const KubernetesOptions& opts,
                                                       std::function<void(const std::string&)> report) {
    auto s = KubernetesSource::create(opts, std::move(report));
    if (!s) return s.error();
    return std::unique_ptr<Source>(std::move(*s));
}

KubernetesSource::KubernetesSource(const KubernetesOptions& opts, k8s::ClientConfig cfg, Report report)
    : opts_(opts), cfg_(cfg), creds_(std::make_unique<k8s::Credentials>(std::move(cfg))), report_(std::move(report)),
      stats_(kResourceCount) {}

KubernetesSource::~KubernetesSource() { stop(); }

Status KubernetesSource::start(asio::io_context& io, std::function<void()> on_change) {
    if (started_) return make_error(EALREADY, "kubernetes source already started");
    started_ = true;
    io_ = &io;
    on_change_ = std::move(on_change);
    drain_timer_ = std::make_unique<asio::steady_timer>(io);
    refresh_timer_ = std::make_unique<asio::steady_timer>(io);
    refresh_transfer_ = std::make_unique<k8s::Transfer>();
    for (int i = 0; i < kResourceCount; ++i) {
        auto w = std::make_unique<Watcher>();
        w->res = static_cast<Resource>(i);
        watchers_.push_back(std::move(w));
    }
    for (auto& w : watchers_) {
        Watcher* wp = w.get();
        wp->thread = std::thread([this, wp] { run_watcher(*wp); });
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
    for (auto& w : watchers_) w->transfer.wakeup();
    if (refresh_transfer_) refresh_transfer_->wakeup();
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

void KubernetesSource::set_state(Resource r, const char* state) {
    std::lock_guard lk(stats_mu_);
    stats_[static_cast<int>(r)].state = state;
}

void KubernetesSource::note_error(Resource r, const std::string& error, int http_status) {
    bool fresh;
    {
        std::lock_guard lk(stats_mu_);
        auto& s = stats_[static_cast<int>(r)];
        fresh = s.last_error != error || !s.reported_error;
        s.last_error = error;
        s.last_http_status = http_status;
        s.reported_error = true;
    }
    if (fresh) emit(std::string(k8s::resource_name(r)) + ": " + error);
}

void KubernetesSource::note_ok(Resource r) {
    bool recovered;
    {
        std::lock_guard lk(stats_mu_);
        auto& s = stats_[static_cast<int>(r)];
        recovered = s.reported_error;
        s.reported_error = false;
        s.last_error.clear();
        s.last_http_status = 200;
        s.backoff = std::chrono::milliseconds(0);
    }
    if (recovered) emit(std::string(k8s::resource_name(r)) + ": API reachable again");
}

void KubernetesSource::sleep_for(std::chrono::milliseconds d, Watcher* w) {
    std::unique_lock lk(wait_mu_);
    wait_cv_.wait_for(lk, d, [&] { return stopping_.load() || (w && w->relist.load()); });
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

k8s::HttpRequest KubernetesSource::make_request(const std::string& url, Status* creds_error) {
    k8s::HttpRequest req;
    req.url = url;
    req.tls.ca_file = cfg_.ca_file;
    req.tls.ca_pem = cfg_.ca_pem;
    req.tls.insecure = cfg_.insecure_skip_tls_verify;
    auto a = creds_->get();
    if (!a) *creds_error = a.error();
    else req.auth = std::move(*a);
    return req;
}

std::string KubernetesSource::describe_http_error(Resource r, const char* verb, const k8s::HttpResponse& resp,
                                                  const k8s::Auth& used, int* code) {
    *code = static_cast<int>(resp.status);
    if (resp.status == 0) {
        return "cannot " + std::string(verb) + " " + cfg_.server + std::string(k8s::resource_path(r)) + ": " +
               (resp.transport_error.empty() ? "no answer" : resp.transport_error);
    }
    auto st = k8s::parse_api_status(resp.error_body, static_cast<int>(resp.status));
    std::string msg = st.message.empty() ? "(no message)" : st.message;
    if (resp.status == 401) {
        creds_->unauthorized(used);
        return "unauthorized (HTTP 401): " + msg + " (credentials are refreshed before the retry)";
    }
    if (resp.status == 403) return "forbidden: " + scope_of(r) + " (HTTP 403): " + msg;
    return "HTTP " + std::to_string(resp.status) + (st.reason.empty() ? "" : " " + st.reason) + " on " + verb + " " +
           std::string(k8s::resource_path(r)) + ": " + msg;
}

Status KubernetesSource::list_all(Watcher& w, std::string* rv_out) {
    const Resource r = w.res;
    Update u;
    u.type = Update::Replace;
    u.res = r;
    std::string cont;
    size_t skipped = 0;
    bool restarted = false;
    for (;;) {
        std::string url = cfg_.server + std::string(k8s::resource_path(r)) + "?limit=" + std::to_string(opts_.page_size);
        if (!cont.empty()) url += "&continue=" + url_escape(cont);
        Status cred_err;
        auto req = make_request(url, &cred_err);
        if (!cred_err) return make_error(cred_err.error().code, "credentials: " + cred_err.error().message);
        std::string body;
        req.stall_timeout = std::chrono::seconds(60);
        req.on_body = [&body](std::string_view d) -> Status {
            if (body.size() + d.size() > (512u << 20)) return make_error(EFBIG, "list page larger than 512 MiB");
            body.append(d);
            return {};
        };
        auto resp = w.transfer.perform(req, [&] { return stopping_.load(); });
        if (resp.aborted) return make_error(ECANCELED, "stopped");
        if (!resp.callback_error) return resp.callback_error;
        if (resp.status == 410 && !cont.empty() && !restarted) {
            // The continue token expired (compaction): start over, as client-go falls back to a full list.
            restarted = true;
            cont.clear();
            u.snap = {};
            u.nodes.clear();
            continue;
        }
        if (resp.status < 200 || resp.status >= 300 || !resp.transport_error.empty()) {
            int code = 0;
            std::string msg = describe_http_error(r, "list", resp, req.auth, &code);
            if (resp.status >= 200 && resp.status < 300) msg = "list " + std::string(k8s::resource_name(r)) + ": " + resp.transport_error;
            return make_error(code, msg);
        }
        rapidjson::Document doc;
        doc.Parse(body.data(), body.size());
        std::string().swap(body);
        if (doc.HasParseError() || !doc.IsObject())
            return make_error(EBADMSG, "list " + std::string(k8s::resource_name(r)) + ": the answer is not a JSON object");
        const rapidjson::Value* items = json::find(doc, "items");
        const rapidjson::Value* md = json::find(doc, "metadata");
        if (!md || !md->IsObject())
            return make_error(EBADMSG, "list " + std::string(k8s::resource_name(r)) + ": no metadata in the answer");
        if (items && !items->IsNull() && !items->IsArray())
            return make_error(EBADMSG, "list " + std::string(k8s::resource_name(r)) + ": items is not a list");
        if (items && items->IsArray()) {
            for (rapidjson::SizeType i = 0; i < items->Size(); ++i) {
                const auto& obj = (*items)[i];
                auto item = k8s::decode_item(r, obj);
                if (!item) {
                    auto ref = k8s::object_ref(obj);
                    ++skipped;
                    emit(std::string(k8s::resource_name(r)) + ": skipping malformed object " +
                         (ref ? key_of(ref->namespace_, ref->name) : "items[" + std::to_string(i) + "]") + ": " +
                         item.error().message);
                    continue;
                }
                std::visit(
                    [&](auto&& o) {
                        using T = std::decay_t<decltype(o)>;
                        if constexpr (std::is_same_v<T, k8s::NodeInfo>) u.nodes[o.name] = std::move(o);
                        else u.snap.put(cache::Object(std::move(o)));
                    },
                    std::move(*item));
            }
        }
        std::string rv = json::opt_string(*md, "resourceVersion").value_or("");
        cont = json::opt_string(*md, "continue").value_or("");
        if (cont.empty()) {
            u.rv = rv;
            *rv_out = rv;
            break;
        }
    }
    {
        std::lock_guard lk(stats_mu_);
        auto& s = stats_[static_cast<int>(r)];
        s.malformed += skipped;
        if (s.lists++ > 0) ++s.relists;
        s.watch_rv = *rv_out;
        s.last_event = Clock::now();
    }
    push(std::move(u));
    return {};
}

KubernetesSource::WatchEnd KubernetesSource::watch_once(Watcher& w, std::string& rv, bool* progressed,
                                                        std::string* error) {
    const Resource r = w.res;
    thread_local std::mt19937_64 rng{std::random_device{}()};
    auto base = std::max<int64_t>(1, opts_.watch_timeout.count());
    int64_t timeout = base + static_cast<int64_t>(rng() % static_cast<uint64_t>(base));
    std::string url = cfg_.server + std::string(k8s::resource_path(r)) +
                      "?allowWatchBookmarks=true&resourceVersion=" + url_escape(rv) +
                      "&timeoutSeconds=" + std::to_string(timeout) + "&watch=true";
    Status cred_err;
    auto req = make_request(url, &cred_err);
    if (!cred_err) {
        *error = "credentials: " + cred_err.error().message;
        note_error(r, *error, 0);
        return WatchEnd::Failed;
    }
    req.total_timeout = std::chrono::seconds(timeout + 60);
    k8s::JsonStreamSplitter splitter(opts_.max_event_bytes);
    bool expired = false;
    std::string expired_msg;
    bool first_bytes = true;
    auto on_event = [&](std::string_view text) -> Status {
        auto ev = k8s::parse_watch_event(text);
        if (!ev) return ev.error();
        Stats delta;
        Update u;
        u.res = r;
        switch (ev->type) {
            case k8s::WatchEvent::Error: {
                auto st = k8s::parse_api_status(json::to_string(*ev->object), 0);
                if (st.code == 410) {
                    expired = true;
                    expired_msg = st.message;
                    return make_error(ESTALE, "expired");
                }
                std::lock_guard lk(stats_mu_);
                ++stats_[static_cast<int>(r)].error_events;
                return make_error(EPROTO, "watch ERROR event (code " + std::to_string(st.code) + " " + st.reason +
                                              "): " + st.message);
            }
            case k8s::WatchEvent::Bookmark: {
                auto ref = json::find(*ev->object, "metadata");
                std::string brv = ref ? json::opt_string(*ref, "resourceVersion").value_or("") : "";
                if (brv.empty()) return make_error(EBADMSG, "BOOKMARK without metadata.resourceVersion");
                rv = brv;
                u.type = Update::Bookmark;
                u.rv = brv;
                delta.bookmarks = 1;
                break;
            }
            case k8s::WatchEvent::Deleted: {
                auto ref = k8s::object_ref(*ev->object);
                if (!ref) return make_error(EBADMSG, "DELETED event: " + ref.error().message);
                u.type = Update::Delete;
                u.ns = r == Resource::Namespaces || r == Resource::Nodes
                           ? ""
                           : (ref->namespace_.empty() ? std::string(cache::kDefaultNamespace) : ref->namespace_);
                u.name = ref->name;
                u.rv = ref->resource_version;
                if (!u.rv.empty()) rv = u.rv;
                delta.deleted = 1;
                break;
            }
            case k8s::WatchEvent::Added:
            case k8s::WatchEvent::Modified: {
                auto ref = k8s::object_ref(*ev->object);
                if (ref && !ref->resource_version.empty()) rv = ref->resource_version;
                auto item = k8s::decode_item(r, *ev->object);
                if (!item) {
                    // Skipped and reported; its resourceVersion still counts (the stream is consistent).
                    emit(std::string(k8s::resource_name(r)) + ": skipping malformed object " +
                         (ref ? key_of(ref->namespace_, ref->name) : std::string("?")) + " in a watch event: " +
                         item.error().message);
                    std::lock_guard lk(stats_mu_);
                    ++stats_[static_cast<int>(r)].malformed;
                    return {};
                }
                u.type = Update::Upsert;
                u.item = std::move(*item);
                u.rv = ref ? ref->resource_version : "";
                (ev->type == k8s::WatchEvent::Added ? delta.added : delta.modified) = 1;
                break;
            }
        }
        *progressed = true;
        {
            std::lock_guard lk(stats_mu_);
            auto& s = stats_[static_cast<int>(r)];
            s.added += delta.added;
            s.modified += delta.modified;
            s.deleted += delta.deleted;
            s.bookmarks += delta.bookmarks;
            s.watch_rv = rv;
            s.last_event = Clock::now();
        }
        push(std::move(u));
        return {};
    };
    req.on_body = [&](std::string_view data) -> Status {
        if (first_bytes) {
            first_bytes = false;
            note_ok(r);
        }
        return splitter.feed(data, on_event);
    };
    auto resp = w.transfer.perform(req, [&] { return stopping_.load() || w.relist.load(); });
    if (resp.aborted) return stopping_ ? WatchEnd::Stopped : WatchEnd::Relist;
    if (expired) {
        *error = "watch: too old resource version (410 Gone: " + expired_msg + ")";
        return WatchEnd::Expired;
    }
    if (!resp.callback_error) {
        *error = "malformed watch stream: " + resp.callback_error.error().message +
                 " (the watch restarts from resourceVersion " + rv + ")";
        note_error(r, *error, static_cast<int>(resp.status));
        return WatchEnd::Failed;
    }
    if (resp.status == 410) {
        *error = "watch: 410 Gone: " + k8s::parse_api_status(resp.error_body, 410).message;
        return WatchEnd::Expired;
    }
    if (resp.status < 200 || resp.status >= 300) {
        int code = 0;
        *error = describe_http_error(r, "watch", resp, req.auth, &code);
        note_error(r, *error, code);
        return WatchEnd::Failed;
    }
    if (!resp.transport_error.empty() || !splitter.idle()) {
        *error = "watch connection lost: " +
                 (resp.transport_error.empty() ? std::string("the stream ended inside an event") : resp.transport_error) +
                 " (resuming from resourceVersion " + rv + ")";
        note_error(r, *error, 0);
        return WatchEnd::Failed;
    }
    if (first_bytes) note_ok(r);
    return WatchEnd::Normal;  // timeoutSeconds reached: watch again at once
}

void KubernetesSource::run_watcher(Watcher& w) {
    const Resource r = w.res;
    Backoff backoff(opts_.backoff_initial, opts_.backoff_max);
    bool need_list = true;
    std::string rv;
    auto back_off = [&](bool reconnect) {
        auto d = backoff.next();
        {
            std::lock_guard lk(stats_mu_);
            auto& s = stats_[static_cast<int>(r)];
            s.state = "backing-off";
            s.backoff = d;
            if (reconnect) ++s.reconnects;
        }
        sleep_for(d, &w);
    };
    while (!stopping_) {
        if (need_list || w.relist.load()) {
            w.relist = false;
            set_state(r, "listing");
            std::string list_rv;
            auto st = list_all(w, &list_rv);
            if (stopping_) break;
            if (!st) {
                note_error(r, st.error().message, st.error().code);
                back_off(false);
                continue;
            }
            note_ok(r);
            backoff.reset();
            rv = list_rv;
            need_list = false;
        }
        set_state(r, "watching");
        bool progressed = false;
        std::string error;
        auto end = watch_once(w, rv, &progressed, &error);
        switch (end) {
            case WatchEnd::Stopped: break;
            case WatchEnd::Relist: need_list = true; break;
            case WatchEnd::Normal: backoff.reset(); break;
            case WatchEnd::Expired:
                // client-go relists at once on "too old resource version".
                {
                    std::lock_guard lk(stats_mu_);
                    ++stats_[static_cast<int>(r)].expired;
                }
                emit(std::string(k8s::resource_name(r)) + ": " + error + "; relisting");
                need_list = true;
                break;
            case WatchEnd::Failed:
                if (progressed) backoff.reset();
                back_off(true);
                break;
        }
    }
    set_state(r, "stopped");
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
            Status cred_err;
            auto req = make_request(cfg_.server + std::string(k8s::resource_path(r)) + "?limit=1", &cred_err);
            if (!cred_err) {
                result = make_error(cred_err.error().code, "credentials: " + cred_err.error().message);
                break;
            }
            req.total_timeout = std::chrono::seconds(15);
            std::string body;
            req.on_body = [&body](std::string_view d) -> Status {
                if (body.size() + d.size() > (64u << 20)) return make_error(EFBIG, "answer too large");
                body.append(d);
                return {};
            };
            auto resp = refresh_transfer_->perform(req, [&] { return stopping_.load(); });
            if (resp.aborted) return;
            if (resp.status < 200 || resp.status >= 300 || !resp.transport_error.empty() || !resp.callback_error) {
                int code = 0;
                result = make_error(EHOSTUNREACH, "refresh: " + describe_http_error(r, "list", resp, req.auth, &code));
                break;
            }
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
                {
                    // Under the mutex: a watcher between its predicate check and
                    // its wait (in back-off) would otherwise miss the wake-up and
                    // sleep out its back-off (up to 30 s).
                    std::lock_guard lk(wait_mu_);
                    for (int i = 0; i < kResourceCount; ++i)
                        if (ask[i]) watchers_[i]->relist = true;
                }
                wait_cv_.notify_all();
                for (int i = 0; i < kResourceCount; ++i)
                    if (ask[i]) watchers_[i]->transfer.wakeup();
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
                }
                break;
            case Update::Bookmark: break;
        }
        if (!u.rv.empty()) applied_rv_[i] = u.rv;
    }
    ++batches_;
    bool was_ready = ready_;
    ready_ = listed_[0] && listed_[1] && listed_[2] && listed_[3];
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
        std::lock_guard lk(stats_mu_);
        for (int i = 0; i < kResourceCount; ++i) {
            const auto& s = stats_[i];
            auto r = static_cast<Resource>(i);
            rapidjson::Value o(rapidjson::kObjectType);
            o.AddMember("state", json::str(s.state, a), a);
            o.AddMember("resourceVersion", json::str(applied_rv_[i], a), a);
            size_t count = r == Resource::Namespaces ? snapshot_.namespaces.size()
                           : r == Resource::Pods     ? snapshot_.pods.size()
                           : r == Resource::Nodes    ? nodes_.size()
                                                     : snapshot_.policies.size();
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
    out.AddMember("execRuns", creds_->exec_runs(), a);
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
