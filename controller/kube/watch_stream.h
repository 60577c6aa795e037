// The watch protocol's wire format, read incrementally: a watch response is
// an endless stream of JSON objects ({"type": ..., "object": ...}), one per
// line as kube-apiserver writes them. JsonStreamSplitter cuts complete
// top-level objects out of whatever chunks libcurl hands over (it does not
// rely on the newlines), holding at most one event at a time, and refuses an
// event above its limit. Pure code: fuzzed by test/fuzz/fuzz_k8s_watch.cpp.
// Shared by every list/watch loop (kube/reflector.h).
#pragma once

#include <rapidjson/document.h>

#include <cstddef>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "signet/result.h"

namespace signet::kube {

inline constexpr size_t kMaxEventBytes = 16 * 1024 * 1024;

class JsonStreamSplitter {
public:
    explicit JsonStreamSplitter(size_t max_value = kMaxEventBytes) : max_(max_value) {}
    // Feeds bytes and calls `on_value` for each complete top-level value (an
    // object). Stops at, and returns, the first error: bytes outside an
    // object that are not whitespace, a value above the limit, or an error
    // returned by on_value. After an error, reset() before feeding again.
    Status feed(std::string_view data, const std::function<Status(std::string_view)>& on_value);
    void reset();
    size_t buffered() const { return buf_.size(); }
    // True when no partial value is held (a clean end of stream).
    bool idle() const { return depth_ == 0 && buf_.empty(); }

private:
    size_t max_;
    std::string buf_;
    int depth_ = 0;
    bool in_string_ = false;
    bool escape_ = false;
};

// The Kubernetes API Status object of an error (a 4xx/5xx body or an ERROR event).
struct ApiStatus {
    int code = 0;
    std::string reason;   // "Expired", "Gone", "Forbidden", "Unauthorized", ...
    std::string message;
};
// Reads a Status body; falls back to the raw text (trimmed) when it is not one.
ApiStatus parse_api_status(std::string_view body, int http_status);

// metadata.namespace / metadata.name of any object (for DELETED: the object
// must not need to be valid to be removed).
struct ObjectRef {
    std::string namespace_, name, resource_version;
};
Result<ObjectRef> object_ref(const rapidjson::Value& obj);

struct WatchEvent {
    enum Type { Added, Modified, Deleted, Bookmark, Error } type = Added;
    rapidjson::Document doc;            // owns the event
    const rapidjson::Value* object = nullptr;  // doc["object"]
};
// Parses one event's JSON text.
Result<WatchEvent> parse_watch_event(std::string_view text);

}  // namespace signet::kube
