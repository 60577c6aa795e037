// signet: the InfluxDB exporter. Points are validated and encoded at submit(),
// held in a bounded buffer, and written by one background thread in batches
// (gzip, libcurl) to InfluxDB 1.x (/write) or 2.x (/api/v2/write).
//
// Delivery: a batch leaves the buffer only after a 2xx. 5xx, 408, 429, a
// refused connection or a timeout are retried with jittered exponential
// back-off (capped at 30 s; Retry-After honoured, up to 5 minutes).
// 401/403/404 are configuration errors (bad credentials, missing database or
// bucket): the batch is kept and retried too, so that fixing the
// configuration loses nothing within the bound. Any other 4xx means the batch
// itself is bad: it is dropped, counted (Stats::rejected), and the server's
// message logged. Beyond buffer_points the oldest points are dropped
// (Stats::dropped); points of the request in flight are not dropped under it.
// Accounting: submitted == written + dropped + rejected + invalid + buffered.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "export/line_protocol.h"
#include "signet/result.h"

namespace signet::exporter {

struct InfluxConfig {
    std::string url;                 // base, e.g. http://127.0.0.1:8086 (no trailing '/')
    int version = 1;                 // 1: POST /write?db=..&rp=..&precision=ns (basic auth if username set)
                                     // 2: POST /api/v2/write?org=..&bucket=..&precision=ns, "Authorization: Token <token>"
    std::string database, retention_policy, username, password;   // v1
    std::string org, bucket, token;                                // v2
    size_t batch_points = 5000;
    std::chrono::milliseconds flush_interval{1000};
    size_t buffer_points = 100000;   // the bound: points held while InfluxDB is unreachable
    bool gzip = true;                // Content-Encoding: gzip (zlib)
    std::chrono::milliseconds timeout{5000};
    std::string ca_file;             // https: CA bundle (PEM) instead of the system's
};

// Parses the value of `signetd --influxdb`:
//   http://127.0.0.1:8086/?db=signet[&rp=R][&u=USER][&p=PASS | &password-file=PATH]        (v1)
//   http://host:8086/?org=O&bucket=B&token-file=/etc/signet/influx-token [&token=T]         (v2)
// plus batch=N, flush=500ms|2s|1m, buffer=N, gzip=true|false, timeout=5s,
// ca-file=PATH (https only). Secret files are read here (trailing whitespace
// trimmed). Errors never contain a password or token.
Result<InfluxConfig> parse_influx_spec(const std::string& spec);

// A config as text for logs: no password or token.
std::string describe(const InfluxConfig& config);

class InfluxExporter {
public:
    explicit InfluxExporter(InfluxConfig config);
    ~InfluxExporter();                      // stop()
    InfluxExporter(const InfluxExporter&) = delete;
    InfluxExporter& operator=(const InfluxExporter&) = delete;

    void start();                           // starts the sender thread (no-op when running)
    void stop();                            // tries to flush for up to config.timeout, then stops
    void submit(std::vector<Point> points); // thread-safe, never blocks on the network
    // Sends what is buffered now (without waiting for flush_interval) and
    // waits until every point submitted before the call has left the buffer.
    // True when that happened within `timeout` and no point was dropped,
    // rejected or invalid since the previous flush() returned (or since
    // construction): i.e. everything submitted in between was written.
    bool flush(std::chrono::milliseconds timeout);

    struct Stats {
        uint64_t submitted = 0, written = 0, dropped = 0, invalid = 0, batches_ok = 0, batches_failed = 0,
                 buffered = 0;
        std::string last_error;
        int64_t last_success_unix = 0;
        uint64_t rejected = 0;        // points of batches the server refused as bad (4xx)
        uint64_t retries = 0;         // failed attempts that were retried
    };
    Stats stats() const;
    // The oldest `max` buffered points, encoded (diagnostics and tests).
    std::vector<std::string> peek(size_t max) const;

private:
    struct Line {
        uint64_t seq;
        std::string text;
    };
    struct Response;
    void run();
    Response post(const std::string& body, std::chrono::milliseconds timeout);
    void handle(const Response& r, size_t n);

    const InfluxConfig cfg_;
    const std::string write_url_;
    const size_t batch_;

    mutable std::mutex mu_;
    std::condition_variable cv_;        // wakes the sender
    std::condition_variable done_cv_;   // wakes flush()
    std::deque<Line> queue_;
    size_t inflight_ = 0;               // the first inflight_ entries of queue_ are being sent
    uint64_t next_seq_ = 0;             // seq of the next accepted or invalid point
    uint64_t lost_at_last_flush_ = 0;   // dropped + rejected + invalid when flush() last returned
    uint64_t flush_waiters_ = 0;
    std::chrono::steady_clock::time_point retry_at_{};   // back-off: no attempt before
    bool running_ = false, stopping_ = false;
    std::chrono::steady_clock::time_point stop_deadline_{};
    Stats stats_;
    std::thread thread_;
    void* curl_ = nullptr;              // CURL*, owned by the sender thread
    std::atomic<int64_t> abort_at_ns_{0};   // steady_clock ns after which a request in flight is aborted (0: never)
    // Rate-limited logging state (sender thread / submit under mu_).
    std::chrono::steady_clock::time_point last_fail_log_{}, last_reject_log_{}, last_invalid_log_{}, last_drop_log_{};
    uint64_t fails_since_log_ = 0, rejects_since_log_ = 0, invalid_since_log_ = 0, dropped_since_log_ = 0;
    uint64_t consecutive_failures_ = 0;
};

namespace detail {
// Pieces of the exporter, exposed for the unit tests.
enum class Outcome { ok, retry, config_error, bad_batch };
Outcome classify(long http_status);                // 0: transport error (refused, timeout)
// The server's message from an error body: v1 {"error": ".."}, v2 {"code":..,"message":..}; else the body's start.
std::string server_message(std::string_view body);
// Retry-After: delta-seconds or an HTTP-date; nullopt when absent/unparsable. Capped at 300 s.
std::optional<std::chrono::milliseconds> parse_retry_after(std::string_view value, int64_t now_unix);
// Back-off before retry number `attempt` (1, 2, ...): full range [d/2, d] with
// d = min(cap, base * 2^(attempt-1)); `unit` in [0, 1) is the random draw.
std::chrono::milliseconds backoff(uint64_t attempt, double unit,
                                  std::chrono::milliseconds base = std::chrono::milliseconds(200),
                                  std::chrono::milliseconds cap = std::chrono::milliseconds(30000));
Result<std::string> gzip(std::string_view data);
Result<std::string> gunzip(std::string_view data, size_t max_bytes = 64u << 20);
// Percent-encoding of a URL query component (RFC 3986 unreserved kept).
std::string url_encode(std::string_view s);
// The full write URL for a config.
std::string write_url(const InfluxConfig& config);
}  // namespace detail

}  // namespace signet::exporter
