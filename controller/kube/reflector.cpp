#include "kube/reflector.h"

#include <cerrno>
#include <random>

#include "signet/http_client.h"
#include "signet/json.h"

namespace signet::kube {

using Clock = std::chrono::steady_clock;

namespace {

std::chrono::milliseconds jitter(std::chrono::milliseconds d) {
    thread_local std::mt19937_64 rng{std::random_device{}()};
    std::uniform_real_distribution<double> u(0.0, 1.0);
    return std::chrono::milliseconds(static_cast<int64_t>(static_cast<double>(d.count()) * (1.0 + u(rng))));
}

// client-go's reflector back-off: doubling to a cap, jitter 1.0, reset after success.
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

}  // namespace

Reflector::Reflector(ReflectorOptions opts, Api& api, ReflectorHandler& handler)
    : opts_(std::move(opts)), api_(api), handler_(handler) {}

void Reflector::stop() {
    {
        std::lock_guard lk(mu_);
        stopping_ = true;
    }
    cv_.notify_all();
    api_.stop();
}

void Reflector::relist(std::chrono::milliseconds delay) {
    {
        // Under the mutex: a loop between its predicate check and its wait
        // (in back-off) would otherwise miss the wake-up.
        std::lock_guard lk(mu_);
        auto at = Clock::now() + delay;
        if (!relist_ || at > relist_at_) relist_at_ = at;
        relist_ = true;
    }
    cv_.notify_all();
    api_.wakeup();
}

bool Reflector::stopping() const {
    std::lock_guard lk(mu_);
    return stopping_;
}

bool Reflector::relist_asked() const {
    std::lock_guard lk(mu_);
    return relist_;
}

Reflector::Stats Reflector::stats() const {
    std::lock_guard lk(mu_);
    return stats_;
}

void Reflector::set_state(const char* s) {
    std::lock_guard lk(mu_);
    stats_.state = s;
}

void Reflector::sleep_for(std::chrono::milliseconds d) {
    std::unique_lock lk(mu_);
    cv_.wait_for(lk, d, [&] { return stopping_ || relist_; });
}

void Reflector::note_error(const std::string& error, int http_status) {
    bool fresh;
    {
        std::lock_guard lk(mu_);
        fresh = stats_.last_error != error || !reported_error_;
        stats_.last_error = error;
        stats_.last_http_status = http_status;
        reported_error_ = true;
    }
    if (fresh) handler_.report(error);
}

void Reflector::note_ok() {
    bool recovered;
    {
        std::lock_guard lk(mu_);
        recovered = reported_error_;
        reported_error_ = false;
        stats_.last_error.clear();
        stats_.last_http_status = 200;
        stats_.backoff = std::chrono::milliseconds(0);
    }
    if (recovered) handler_.report("API reachable again");
}

std::string Reflector::describe(const char* verb, long status, const std::string& error_body) const {
    auto st = parse_api_status(error_body, static_cast<int>(status));
    std::string msg = st.message.empty() ? "(no message)" : st.message;
    if (status == 401) return "unauthorized (HTTP 401): " + msg + " (credentials are refreshed before the retry)";
    if (status == 403)
        return "forbidden: cannot " + std::string(verb) + " " + opts_.what + " at the cluster scope (HTTP 403): " + msg;
    return "HTTP " + std::to_string(status) + (st.reason.empty() ? "" : " " + st.reason) + " on " + verb + " " +
           opts_.path + ": " + msg;
}

Status Reflector::list(std::string* rv_out) {
    if (auto st = handler_.on_list_start(); !st) return st;
    std::string cont;
    size_t skipped = 0, index = 0;
    bool restarted = false;
    for (;;) {
        Request req;
        req.path = opts_.path;
        if (opts_.page_size > 0) req.path += "?limit=" + std::to_string(opts_.page_size);
        if (!cont.empty()) req.path += (opts_.page_size > 0 ? "&continue=" : "?continue=") + http::percent_encode(cont);
        req.timeout = std::chrono::seconds(0);
        req.stall = std::chrono::seconds(60);
        req.max_body = opts_.max_page_bytes;
        auto resp = api_.call(req);
        if (!resp) {
            if (resp.error().code == ECANCELED) return resp.error();
            return make_error(resp.error().code, "cannot list " + opts_.what + ": " + resp.error().message);
        }
        if (resp->status == 410 && !cont.empty() && !restarted) {
            // The continue token expired (compaction): start over, as client-go falls back to a full list.
            restarted = true;
            cont.clear();
            index = 0;
            if (auto st = handler_.on_list_start(); !st) return st;
            continue;
        }
        if (resp->status < 200 || resp->status >= 300)
            return make_error(static_cast<int>(resp->status), describe("list", resp->status, resp->body));
        if (auto st = json::check_depth(resp->body); !st)
            return make_error(EBADMSG, "list " + opts_.what + ": " + st.error().message);
        rapidjson::Document doc;
        doc.Parse<rapidjson::kParseIterativeFlag>(resp->body.data(), resp->body.size());
        std::string().swap(resp->body);
        if (doc.HasParseError() || !doc.IsObject())
            return make_error(EBADMSG, "list " + opts_.what + ": the answer is not a JSON object");
        const rapidjson::Value* items = json::find(doc, "items");
        const rapidjson::Value* md = json::find(doc, "metadata");
        if (!md || !md->IsObject()) return make_error(EBADMSG, "list " + opts_.what + ": no metadata in the answer");
        if (items && !items->IsNull() && !items->IsArray())
            return make_error(EBADMSG, "list " + opts_.what + ": items is not a list");
        if (items && items->IsArray())
            for (rapidjson::SizeType i = 0; i < items->Size(); ++i) {
                if (stopping()) return make_error(ECANCELED, "stopped");
                if (!handler_.on_list_item((*items)[i], index++)) ++skipped;
            }
        std::string rv = json::opt_string(*md, "resourceVersion").value_or("");
        cont = json::opt_string(*md, "continue").value_or("");
        if (cont.empty()) {
            *rv_out = rv;
            break;
        }
    }
    {
        std::lock_guard lk(mu_);
        stats_.malformed += skipped;
        if (stats_.lists++ > 0) ++stats_.relists;
        stats_.watch_rv = *rv_out;
        stats_.last_event = Clock::now();
    }
    handler_.on_listed(*rv_out);
    return {};
}

Reflector::WatchEnd Reflector::watch(std::string& rv, bool* progressed, std::string* error) {
    thread_local std::mt19937_64 rng{std::random_device{}()};
    auto base = std::max<int64_t>(1, opts_.watch_timeout.count());
    int64_t timeout = base + static_cast<int64_t>(rng() % static_cast<uint64_t>(base));
    std::string path = opts_.path + "?allowWatchBookmarks=true&resourceVersion=" + http::percent_encode(rv) +
                       "&timeoutSeconds=" + std::to_string(timeout) + "&watch=true";
    JsonStreamSplitter splitter(opts_.max_event_bytes);
    bool expired = false;
    std::string expired_msg;
    bool first_bytes = true;
    auto on_event = [&](std::string_view text) -> Status {
        auto ev = parse_watch_event(text);
        if (!ev) return ev.error();
        Stats delta;
        switch (ev->type) {
            case WatchEvent::Error: {
                auto st = parse_api_status(json::to_string(*ev->object), 0);
                if (st.code == 410) {
                    expired = true;
                    expired_msg = st.message;
                    return make_error(ESTALE, "expired");
                }
                std::lock_guard lk(mu_);
                ++stats_.error_events;
                return make_error(EPROTO, "watch ERROR event (code " + std::to_string(st.code) + " " + st.reason +
                                              "): " + st.message);
            }
            case WatchEvent::Bookmark: {
                auto md = json::find(*ev->object, "metadata");
                std::string brv = md ? json::opt_string(*md, "resourceVersion").value_or("") : "";
                if (brv.empty()) return make_error(EBADMSG, "BOOKMARK without metadata.resourceVersion");
                rv = brv;
                delta.bookmarks = 1;
                break;
            }
            case WatchEvent::Deleted: {
                auto ref = object_ref(*ev->object);
                if (!ref) return make_error(EBADMSG, "DELETED event: " + ref.error().message);
                if (!ref->resource_version.empty()) rv = ref->resource_version;
                delta.deleted = 1;
                break;
            }
            case WatchEvent::Added:
            case WatchEvent::Modified: {
                auto ref = object_ref(*ev->object);
                if (ref && !ref->resource_version.empty()) rv = ref->resource_version;
                (ev->type == WatchEvent::Added ? delta.added : delta.modified) = 1;
                break;
            }
        }
        auto applied = handler_.on_event(*ev, rv);
        if (!applied) return applied.error();
        *progressed = true;
        std::lock_guard lk(mu_);
        if (!*applied) {
            ++stats_.malformed;
        } else {
            stats_.added += delta.added;
            stats_.modified += delta.modified;
            stats_.deleted += delta.deleted;
            stats_.bookmarks += delta.bookmarks;
        }
        stats_.watch_rv = rv;
        stats_.last_event = Clock::now();
        return {};
    };
    auto on_body = [&](std::string_view data) -> Status {
        if (first_bytes) {
            first_bytes = false;
            note_ok();
        }
        return splitter.feed(data, on_event);
    };
    auto end = api_.stream(path, on_body, std::chrono::seconds(timeout + 60), [this] { return relist_asked(); });
    if (!end) {
        if (expired) {
            *error = "watch: too old resource version (410 Gone: " + expired_msg + ")";
            return WatchEnd::Expired;
        }
        if (end.error().code == ECANCELED) return stopping() ? WatchEnd::Stopped : WatchEnd::Relist;
        if (!first_bytes || end.error().code == EBADMSG || end.error().code == EPROTO || end.error().code == EFBIG) {
            *error = "malformed watch stream: " + end.error().message + " (the watch restarts from resourceVersion " +
                     rv + ")";
            note_error(*error, 200);
        } else {
            *error = "cannot watch " + opts_.what + ": " + end.error().message;
            note_error(*error, 0);
        }
        return WatchEnd::Failed;
    }
    if (end->status == 0) {
        *error = "cannot watch " + api_.server() + opts_.path + ": " +
                 (end->transport_error.empty() ? "no answer" : end->transport_error);
        note_error(*error, 0);
        return WatchEnd::Failed;
    }
    if (end->status == 410) {
        *error = "watch: 410 Gone: " + parse_api_status(end->error_body, 410).message;
        return WatchEnd::Expired;
    }
    if (end->status < 200 || end->status >= 300) {
        *error = describe("watch", end->status, end->error_body);
        note_error(*error, static_cast<int>(end->status));
        return WatchEnd::Failed;
    }
    if (!end->transport_error.empty() || !splitter.idle()) {
        *error = "watch connection lost: " +
                 (end->transport_error.empty() ? std::string("the stream ended inside an event") : end->transport_error) +
                 " (resuming from resourceVersion " + rv + ")";
        note_error(*error, 0);
        return WatchEnd::Failed;
    }
    if (first_bytes) note_ok();
    return WatchEnd::Normal;  // timeoutSeconds reached: watch again at once
}

void Reflector::run() {
    Backoff backoff(opts_.backoff_initial, opts_.backoff_max);
    bool need_list = true;
    std::string rv;
    auto back_off = [&](bool reconnect) {
        auto d = backoff.next();
        {
            std::lock_guard lk(mu_);
            stats_.state = "backing-off";
            stats_.backoff = d;
            if (reconnect) ++stats_.reconnects;
        }
        sleep_for(d);
    };
    while (!stopping()) {
        bool asked;
        Clock::time_point at;
        {
            std::lock_guard lk(mu_);
            asked = relist_;
            at = relist_at_;
        }
        if (need_list || asked) {
            if (asked) {
                // A relist asked with a delay (the CSR signer's "retry soon"): wait it out.
                std::unique_lock lk(mu_);
                cv_.wait_until(lk, at, [&] { return stopping_; });
                if (stopping_) break;
                relist_ = false;
            }
            set_state("listing");
            std::string list_rv;
            auto st = list(&list_rv);
            if (stopping()) break;
            if (!st) {
                note_error(st.error().message, st.error().code);
                back_off(false);
                continue;
            }
            note_ok();
            backoff.reset();
            rv = list_rv;
            need_list = false;
        }
        set_state("watching");
        bool progressed = false;
        std::string error;
        switch (watch(rv, &progressed, &error)) {
            case WatchEnd::Stopped: break;
            case WatchEnd::Relist: need_list = true; break;
            case WatchEnd::Normal:
                backoff.reset();
                {
                    std::lock_guard lk(mu_);
                    ++stats_.timeouts;
                }
                break;
            case WatchEnd::Expired:
                // client-go relists at once on "too old resource version".
                {
                    std::lock_guard lk(mu_);
                    ++stats_.expired;
                }
                handler_.report(error + "; relisting");
                need_list = true;
                break;
            case WatchEnd::Failed:
                if (progressed) backoff.reset();
                back_off(true);
                break;
        }
    }
    set_state("stopped");
}

}  // namespace signet::kube
