// A recorded Kubernetes API server for unit tests: kube::Api clients whose
// answers are scripted per resource path, in the order a real server gives
// them (list pages, watch streams cut into arbitrary chunks, a 410 ERROR
// event mid-stream, a dropped connection, an HTTP error). It speaks the
// protocol's bytes (the same JSON a kube-apiserver writes); only the socket
// is missing. Every request is logged for the test to check.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "kube/client.h"

namespace signet::testing {

struct Exchange {
    std::string method = "GET";
    std::string query;                 // must appear in the request's path ("limit=2", "watch=true")
    long status = 200;                 // 0: no HTTP answer (transport_error says why)
    std::vector<std::string> chunks;   // the body, in the pieces the connection delivers
    std::string transport_error;       // a watch: after the chunks, the connection drops
    bool hold = false;                 // a watch: open after the chunks until aborted
    std::function<std::string(const std::string& request_body)> reply;  // a computed body (PUT echoes)
};

class FakeServer : public std::enable_shared_from_this<FakeServer> {
public:
    static std::shared_ptr<FakeServer> make() { return std::shared_ptr<FakeServer>(new FakeServer()); }

    // Answers for requests whose path (without the query) is `path` or
    // below it (the longest scripted path wins). Once a path's answers are
    // used up its requests block until stopped / aborted.
    void script(const std::string& path, std::vector<Exchange> ex) {
        std::lock_guard lk(mu_);
        for (auto& e : ex) scripts_[path].push_back(std::move(e));
        cv_.notify_all();
    }
    std::vector<std::string> requests() const {
        std::lock_guard lk(mu_);
        return log_;
    }
    std::vector<std::string> mismatches() const {
        std::lock_guard lk(mu_);
        return mismatches_;
    }
    // Waits until `count` requests contain `needle`.
    bool wait_for(const std::string& needle, size_t count = 1,
                  std::chrono::milliseconds timeout = std::chrono::milliseconds(10000)) {
        std::unique_lock lk(mu_);
        return cv_.wait_for(lk, timeout, [&] { return count_locked(needle) >= count; });
    }
    size_t count(const std::string& needle) const {
        std::lock_guard lk(mu_);
        return count_locked(needle);
    }

    std::unique_ptr<kube::Api> client();

private:
    friend class FakeClient;
    FakeServer() = default;
    size_t count_locked(const std::string& needle) const {
        return static_cast<size_t>(std::count_if(log_.begin(), log_.end(),
                                                 [&](const std::string& r) { return r.find(needle) != std::string::npos; }));
    }
    // The next answer for `method path`, or nothing (used up).
    std::optional<Exchange> next(const std::string& method, const std::string& path, const std::string& body) {
        std::lock_guard lk(mu_);
        log_.push_back(method + " " + path + (body.empty() ? "" : " " + body));
        cv_.notify_all();
        std::string bare = path.substr(0, path.find('?'));
        std::deque<Exchange>* best = nullptr;
        size_t best_len = 0;
        for (auto& [p, q] : scripts_)
            if (bare.compare(0, p.size(), p) == 0 && (bare.size() == p.size() || bare[p.size()] == '/') &&
                p.size() >= best_len) {
                best = &q;
                best_len = p.size();
            }
        if (!best || best->empty()) return std::nullopt;
        Exchange e = std::move(best->front());
        best->pop_front();
        if (e.method != method || path.find(e.query) == std::string::npos)
            mismatches_.push_back("expected " + e.method + " ..." + e.query + ", got " + method + " " + path);
        return e;
    }

    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::map<std::string, std::deque<Exchange>> scripts_;
    std::vector<std::string> log_, mismatches_;
};

class FakeClient final : public kube::Api {
public:
    explicit FakeClient(std::shared_ptr<FakeServer> s) : server_(std::move(s)) {}

    Result<kube::Response> call(const kube::Request& req) override {
        if (stopped()) return make_error(ECANCELED, "stopped");
        auto e = server_->next(req.method, req.path, req.body);
        if (!e) {
            wait([] { return false; });
            return make_error(ECANCELED, "stopped");
        }
        if (e->status == 0) return make_error(EIO, "cannot reach " + server_name_ + req.path + ": " + e->transport_error);
        kube::Response r;
        r.status = e->status;
        for (const auto& c : e->chunks) r.body += c;
        if (e->reply) r.body = e->reply(req.body);
        return r;
    }

    Result<kube::StreamEnd> stream(const std::string& path, const std::function<Status(std::string_view)>& on_body,
                                   std::chrono::seconds, const std::function<bool()>& abort) override {
        if (stopped()) return make_error(ECANCELED, "stopped");
        auto e = server_->next("GET", path, {});
        kube::StreamEnd end;
        if (!e) {
            wait(abort);
            return make_error(ECANCELED, "stopped");
        }
        end.status = e->status;
        if (e->status == 0) {
            end.transport_error = e->transport_error;
            return end;
        }
        if (e->status < 200 || e->status >= 300) {
            for (const auto& c : e->chunks) end.error_body += c;
            return end;
        }
        for (const auto& c : e->chunks)
            if (auto st = on_body(c); !st) return st.error();
        end.transport_error = e->transport_error;
        if (e->hold) {
            wait(abort);
            return make_error(ECANCELED, "stopped");
        }
        return end;
    }

    void wakeup() override {
        std::lock_guard lk(mu_);
        cv_.notify_all();
    }
    void stop() override {
        std::lock_guard lk(mu_);
        stopping_ = true;
        cv_.notify_all();
    }
    bool stopped() const override {
        std::lock_guard lk(mu_);
        return stopping_;
    }
    const std::string& server() const override { return server_name_; }

private:
    void wait(const std::function<bool()>& abort) {
        std::unique_lock lk(mu_);
        while (!stopping_) {
            lk.unlock();
            bool a = abort && abort();
            lk.lock();
            if (a) return;
            cv_.wait_for(lk, std::chrono::milliseconds(5));
        }
    }

    std::shared_ptr<FakeServer> server_;
    std::string server_name_ = "https://recorded.test";
    mutable std::mutex mu_;
    std::condition_variable cv_;
    bool stopping_ = false;
};

inline std::unique_ptr<kube::Api> FakeServer::client() { return std::make_unique<FakeClient>(shared_from_this()); }

// Watch stream and list bodies.
inline std::string event(const std::string& type, const std::string& object) {
    return "{\"type\":\"" + type + "\",\"object\":" + object + "}\n";
}
inline std::string list_body(const std::string& rv, const std::vector<std::string>& items, const std::string& cont = {}) {
    std::string s = "{\"kind\":\"List\",\"metadata\":{\"resourceVersion\":\"" + rv + "\"" +
                    (cont.empty() ? "" : ",\"continue\":\"" + cont + "\"") + "},\"items\":[";
    for (size_t i = 0; i < items.size(); ++i) s += (i ? "," : "") + items[i];
    return s + "]}";
}
inline std::string gone_event() {
    return event("ERROR", R"J({"kind":"Status","apiVersion":"v1","status":"Failure","message":"too old resource version: 10 (15)","reason":"Expired","code":410})J");
}
inline std::string bookmark(const std::string& rv, const std::string& kind = "Pod") {
    return event("BOOKMARK", "{\"kind\":\"" + kind + "\",\"metadata\":{\"resourceVersion\":\"" + rv + "\"}}");
}
// Cuts `s` into pieces of `n` bytes (events split across reads, as TCP delivers them).
inline std::vector<std::string> cut(const std::string& s, size_t n) {
    std::vector<std::string> out;
    for (size_t i = 0; i < s.size(); i += n) out.push_back(s.substr(i, n));
    return out;
}

}  // namespace signet::testing
