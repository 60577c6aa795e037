// One list + watch loop for one kind of Kubernetes object, as client-go's
// reflector runs it: a paginated list, then a watch from the list's
// resourceVersion with bookmarks, a new watch at once when the server ends
// one (timeoutSeconds is random in [t, 2t)), a relist on 410 Gone (an ERROR
// event or the HTTP status) and when asked, a resume from the last
// resourceVersion after a dropped connection, and a jittered exponential
// back-off (800 ms doubling to 30 s, reset by progress) after failures.
//
// Used by the Kubernetes source (one reflector per resource) and the CSR
// signer. run() blocks on the calling thread until stop(); the handler's
// calls come from that thread. stop(), relist() and stats() may be called
// from any thread.
#pragma once

#include <rapidjson/document.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>

#include "kube/client.h"
#include "kube/watch_stream.h"

namespace signet::kube {

struct ReflectorOptions {
    std::string what;  // for messages: "pods", "certificatesigningrequests"
    std::string path;  // "/api/v1/pods"
    int page_size = 500;                                // list limit= (0 = one page)
    std::chrono::seconds watch_timeout{300};            // timeoutSeconds random in [t, 2t)
    std::chrono::milliseconds backoff_initial{800};
    std::chrono::milliseconds backoff_max{30000};
    size_t max_event_bytes = kMaxEventBytes;
    size_t max_page_bytes = 512u << 20;
};

class ReflectorHandler {
public:
    virtual ~ReflectorHandler() = default;
    // Before each list (and again when a list starts over because its
    // continue token expired): forget what the last list delivered. An
    // error fails the list (reported, then back-off).
    virtual Status on_list_start() { return {}; }
    // One object of a list page. False: malformed, skipped (the handler says why).
    virtual bool on_list_item(const rapidjson::Value& obj, size_t index) = 0;
    // The list is complete and consistent at `rv`.
    virtual void on_listed(const std::string& rv) = 0;
    // An ADDED, MODIFIED, DELETED or BOOKMARK event (rv: the stream's
    // resourceVersion after it). False: its object is malformed and was
    // skipped (the stream stays consistent). An error: the stream is broken
    // (it is resumed from the last resourceVersion after a back-off).
    virtual Result<bool> on_event(const WatchEvent& ev, const std::string& rv) = 0;
    // Messages for the operator: an error when it first appears, and that
    // the API is reachable again.
    virtual void report(const std::string& msg) { (void)msg; }
};

class Reflector {
public:
    struct Stats {
        std::string state = "starting";  // listing | watching | backing-off | stopped
        std::string last_error;
        int last_http_status = 0;
        std::string watch_rv;
        uint64_t lists = 0, relists = 0, reconnects = 0, expired = 0;
        uint64_t timeouts = 0;  // watches the server ended at their timeoutSeconds (a new one follows at once)
        uint64_t added = 0, modified = 0, deleted = 0, bookmarks = 0, error_events = 0, malformed = 0;
        std::chrono::steady_clock::time_point last_event{};  // event, bookmark or completed list
        std::chrono::milliseconds backoff{0};
    };

    Reflector(ReflectorOptions opts, Api& api, ReflectorHandler& handler);
    void run();
    void stop();
    // Ends the running watch and lists again after `delay` (any thread).
    void relist(std::chrono::milliseconds delay = std::chrono::milliseconds(0));
    Stats stats() const;

private:
    enum class WatchEnd { Normal, Expired, Failed, Stopped, Relist };
    Status list(std::string* rv);
    WatchEnd watch(std::string& rv, bool* progressed, std::string* error);
    std::string describe(const char* verb, long status, const std::string& error_body) const;
    void sleep_for(std::chrono::milliseconds d);
    void set_state(const char* s);
    void note_error(const std::string& error, int http_status);
    void note_ok();
    bool stopping() const;
    bool relist_asked() const;

    ReflectorOptions opts_;
    Api& api_;
    ReflectorHandler& handler_;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    bool stopping_ = false;
    bool relist_ = false;
    std::chrono::steady_clock::time_point relist_at_{};
    Stats stats_;
    bool reported_error_ = false;
};

}  // namespace signet::kube
