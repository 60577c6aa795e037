#include "export/influx.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <ctime>
#include <map>
#include <mutex>
#include <random>

#include "signet/curl_init.h"
#include "signet/duration.h"
#include "signet/json.h"
#include "signet/log.h"

#ifndef SIGNET_VERSION
#define SIGNET_VERSION "dev"
#endif

namespace signet::exporter {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

constexpr std::string_view kComponent = "influx";
constexpr auto kFailLogEvery = 60s;     // while InfluxDB stays unreachable
constexpr auto kRejectLogEvery = 10s;   // bad batches, invalid points

// ---- spec parsing ------------------------------------------------------------

Error spec_error(std::string message) { return make_error(EINVAL, "--influxdb: " + message); }

// For echoing a user-supplied, non-secret piece in an error.
std::string show(std::string_view s) {
    std::string out = "\"";
    for (char c : s.substr(0, 80)) out += (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) ? '?' : c;
    if (s.size() > 80) out += "...";
    return out + "\"";
}

bool unhex(char c, int* v) {
    if (c >= '0' && c <= '9') *v = c - '0';
    else if (c >= 'a' && c <= 'f') *v = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') *v = c - 'A' + 10;
    else return false;
    return true;
}

std::optional<std::string> percent_decode(std::string_view s) {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '%') {
            int hi = 0, lo = 0;
            if (i + 2 >= s.size()) return std::nullopt;
            if (!unhex(s[i + 1], &hi) || !unhex(s[i + 2], &lo)) return std::nullopt;
            out += static_cast<char>(hi * 16 + lo);
            i += 2;
        } else {   // '+' stays '+': tokens are base64
            out += s[i];
        }
    }
    return out;
}

bool parse_size(std::string_view s, size_t max, size_t* out) {
    size_t v = 0;
    auto r = std::from_chars(s.data(), s.data() + s.size(), v);
    if (s.empty() || r.ec != std::errc() || r.ptr != s.data() + s.size() || v == 0 || v > max) return false;
    *out = v;
    return true;
}

bool parse_duration(std::string_view s, std::chrono::milliseconds max, std::chrono::milliseconds* out) {
    auto d = signet::parse_duration(s, std::chrono::milliseconds(1), max);
    if (!d) return false;
    *out = *d;
    return true;
}

// Reads a secret (password or token) file: a regular file of one line,
// trailing whitespace trimmed. Errors name the path, never the content.
Result<std::string> read_secret(const std::string& param, const std::string& path) {
    if (path.empty() || path[0] != '/') return spec_error(param + " must be an absolute path");
    int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) return spec_error(param + " " + show(path) + ": " + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd);
        return spec_error(param + " " + show(path) + ": not a regular file");
    }
    std::string out;
    char buf[4096];
    for (;;) {
        ssize_t n = ::read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            int e = errno;
            ::close(fd);
            return spec_error(param + " " + show(path) + ": " + std::strerror(e));
        }
        if (n == 0) break;
        out.append(buf, static_cast<size_t>(n));
        if (out.size() > 16384) {
            ::close(fd);
            return spec_error(param + " " + show(path) + ": larger than 16 KiB");
        }
    }
    ::close(fd);
    while (!out.empty() && (out.back() == '\n' || out.back() == '\r' || out.back() == ' ' || out.back() == '\t'))
        out.pop_back();
    if (out.empty()) return spec_error(param + " " + show(path) + ": empty");
    for (char c : out)
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f)
            return spec_error(param + " " + show(path) + ": must hold one line without control characters");
    return out;
}

bool valid_host(std::string_view h) {
    if (h.empty()) return false;
    if (h.front() == '[') {
        if (h.size() < 4 || h.back() != ']') return false;
        for (char c : h.substr(1, h.size() - 2))
            if (!(std::isxdigit(static_cast<unsigned char>(c)) || c == ':' || c == '.')) return false;
        return true;
    }
    for (char c : h)
        if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_')) return false;
    return true;
}

bool valid_path(std::string_view p) {
    for (char c : p)
        if (!(std::isalnum(static_cast<unsigned char>(c)) || std::string_view("/-._~%!$'()*+,:").find(c) !=
                                                                   std::string_view::npos))
            return false;
    return true;
}

// ---- HTTP helpers ------------------------------------------------------------

size_t body_cb(char* data, size_t size, size_t n, void* user) {
    auto* out = static_cast<std::string*>(user);
    size_t len = size * n;
    if (out->size() < 65536) out->append(data, std::min(len, 65536 - out->size()));
    return len;
}

size_t header_cb(char* data, size_t size, size_t n, void* user) {
    auto* out = static_cast<std::string*>(user);
    std::string_view h(data, size * n);
    constexpr std::string_view name = "retry-after:";
    if (h.size() > name.size()) {
        bool match = true;
        for (size_t i = 0; i < name.size(); ++i)
            if (std::tolower(static_cast<unsigned char>(h[i])) != name[i]) match = false;
        if (match) {
            auto v = h.substr(name.size());
            while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
            while (!v.empty() && (v.back() == '\r' || v.back() == '\n' || v.back() == ' ')) v.remove_suffix(1);
            *out = std::string(v);
        }
    }
    return size * n;
}

int xferinfo_cb(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
    auto* abort_at = static_cast<std::atomic<int64_t>*>(user);
    int64_t at = abort_at->load();
    if (at == 0) return 0;
    int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
    return now >= at ? 1 : 0;
}

std::string format_ms(std::chrono::milliseconds d) {
    if (d.count() % 1000 == 0) return std::to_string(d.count() / 1000) + "s";
    return std::to_string(d.count()) + "ms";
}

}  // namespace

// ---- detail ----------------------------------------------------------------------

namespace detail {

Outcome classify(long status) {
    if (status >= 200 && status < 300) return Outcome::ok;
    if (status == 401 || status == 403 || status == 404) return Outcome::config_error;
    if (status == 408 || status == 429) return Outcome::retry;
    if (status >= 400 && status < 500) return Outcome::bad_batch;
    return Outcome::retry;   // 0 (transport), 1xx/3xx (unexpected), 5xx
}

std::string server_message(std::string_view body) {
    std::string text;
    auto doc = json::parse(body);
    if (doc && doc->IsObject()) {
        if (auto* e = json::find(*doc, "error"); e && e->IsString()) text = e->GetString();
        else if (auto* m = json::find(*doc, "message"); m && m->IsString()) {
            text = m->GetString();
            if (auto* c = json::find(*doc, "code"); c && c->IsString()) text = std::string(c->GetString()) + ": " + text;
        }
    }
    if (text.empty()) text = std::string(body.substr(0, 512));
    for (char& c : text)
        if (static_cast<unsigned char>(c) < 0x20) c = ' ';
    while (!text.empty() && text.back() == ' ') text.pop_back();
    if (text.size() > 512) text = text.substr(0, 512) + "...";
    return text;
}

std::optional<std::chrono::milliseconds> parse_retry_after(std::string_view v, int64_t now_unix) {
    while (!v.empty() && v.front() == ' ') v.remove_prefix(1);
    while (!v.empty() && v.back() == ' ') v.remove_suffix(1);
    if (v.empty()) return std::nullopt;
    int64_t secs = 0;
    if (std::isdigit(static_cast<unsigned char>(v.front()))) {
        auto r = std::from_chars(v.data(), v.data() + v.size(), secs);
        if (r.ptr != v.data() + v.size()) return std::nullopt;
        if (r.ec == std::errc::result_out_of_range) secs = 300;
        else if (r.ec != std::errc()) return std::nullopt;
    } else {
        std::string s(v);
        time_t t = curl_getdate(s.c_str(), nullptr);
        if (t == -1) return std::nullopt;
        secs = std::max<int64_t>(0, static_cast<int64_t>(t) - now_unix);
    }
    return std::chrono::milliseconds(std::min<int64_t>(secs, 300) * 1000);
}

std::chrono::milliseconds backoff(uint64_t attempt, double unit, std::chrono::milliseconds base,
                                  std::chrono::milliseconds cap) {
    if (attempt == 0) attempt = 1;
    int64_t d = base.count();
    for (uint64_t i = 1; i < attempt && d < cap.count(); ++i) d *= 2;
    d = std::min(d, cap.count());
    unit = std::clamp(unit, 0.0, 1.0);
    return std::chrono::milliseconds(d / 2 + static_cast<int64_t>(unit * static_cast<double>(d - d / 2)));
}

Result<std::string> gzip(std::string_view data) {
    z_stream zs{};
    // windowBits 15 + 16: gzip wrapper. Level 1: line protocol compresses well even so.
    if (deflateInit2(&zs, 1, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        return make_error(ENOMEM, "gzip: deflateInit2 failed");
    std::string out;
    out.resize(deflateBound(&zs, static_cast<uLong>(data.size())) + 32);
    zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
    zs.avail_in = static_cast<uInt>(data.size());
    zs.next_out = reinterpret_cast<Bytef*>(out.data());
    zs.avail_out = static_cast<uInt>(out.size());
    int rc = deflate(&zs, Z_FINISH);
    size_t produced = zs.total_out;
    deflateEnd(&zs);
    if (rc != Z_STREAM_END) return make_error(EIO, "gzip: deflate failed (" + std::to_string(rc) + ")");
    out.resize(produced);
    return out;
}

Result<std::string> gunzip(std::string_view data, size_t max_bytes) {
    z_stream zs{};
    if (inflateInit2(&zs, 15 + 16) != Z_OK) return make_error(ENOMEM, "gunzip: inflateInit2 failed");
    zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
    zs.avail_in = static_cast<uInt>(data.size());
    std::string out;
    char buf[16384];
    int rc = Z_OK;
    while (rc != Z_STREAM_END) {
        zs.next_out = reinterpret_cast<Bytef*>(buf);
        zs.avail_out = sizeof buf;
        rc = inflate(&zs, Z_NO_FLUSH);
        if (rc != Z_OK && rc != Z_STREAM_END) {
            inflateEnd(&zs);
            return make_error(EINVAL, "gunzip: corrupt data (" + std::to_string(rc) + ")");
        }
        out.append(buf, sizeof buf - zs.avail_out);
        if (out.size() > max_bytes) {
            inflateEnd(&zs);
            return make_error(EFBIG, "gunzip: more than " + std::to_string(max_bytes) + " bytes");
        }
        if (rc == Z_OK && zs.avail_in == 0 && zs.avail_out != 0) {
            inflateEnd(&zs);
            return make_error(EINVAL, "gunzip: truncated data");
        }
    }
    inflateEnd(&zs);
    return out;
}

std::string url_encode(std::string_view s) {
    static const char* hex = "0123456789ABCDEF";
    std::string out;
    for (char ch : s) {
        auto c = static_cast<unsigned char>(ch);
        if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
            out += ch;
        } else {
            out += '%';
            out += hex[c >> 4];
            out += hex[c & 15];
        }
    }
    return out;
}

std::string write_url(const InfluxConfig& c) {
    std::string base = c.url;
    while (!base.empty() && base.back() == '/') base.pop_back();
    if (c.version == 2)
        return base + "/api/v2/write?org=" + url_encode(c.org) + "&bucket=" + url_encode(c.bucket) + "&precision=ns";
    std::string u = base + "/write?db=" + url_encode(c.database);
    if (!c.retention_policy.empty()) u += "&rp=" + url_encode(c.retention_policy);
    return u + "&precision=ns";
}

}  // namespace detail

// ---- parse_influx_spec -----------------------------------------------------------

Result<InfluxConfig> parse_influx_spec(const std::string& spec) {
    InfluxConfig c;
    std::string_view s = spec;
    std::string scheme;
    if (s.starts_with("http://")) scheme = "http";
    else if (s.starts_with("https://")) scheme = "https";
    else return spec_error("must start with http:// or https:// (e.g. http://127.0.0.1:8086/?db=signet)");
    s.remove_prefix(scheme.size() + 3);
    if (s.find('#') != std::string_view::npos) return spec_error("a URL fragment ('#') is not accepted");
    auto qpos = s.find('?');
    std::string_view base = s.substr(0, qpos);
    std::string_view query = qpos == std::string_view::npos ? std::string_view() : s.substr(qpos + 1);
    auto slash = base.find('/');
    std::string_view authority = base.substr(0, slash);
    std::string_view path = slash == std::string_view::npos ? std::string_view() : base.substr(slash);
    if (authority.find('@') != std::string_view::npos)
        return spec_error("credentials in the URL are not accepted: use u= with password-file= (v1) or token-file= (v2)");
    std::string_view host = authority, port;
    if (auto colon = authority.rfind(':'); colon != std::string_view::npos && authority.find(']', colon) == std::string_view::npos) {
        host = authority.substr(0, colon);
        port = authority.substr(colon + 1);
        size_t p = 0;
        if (!parse_size(port, 65535, &p))
            return spec_error(port.find_first_of("=&") == std::string_view::npos ? "invalid port " + show(port)
                                                                                 : std::string("invalid port"));
    }
    // Host, port and path are echoed only when they cannot hold a parameter
    // (and so a password or token) typed without its '?'.
    auto echo = [](std::string_view v) {
        return v.find_first_of("=&") == std::string_view::npos ? " " + show(v) : std::string();
    };
    if (!valid_host(host)) return spec_error("invalid host" + echo(host));
    if (!valid_path(path))
        return spec_error("invalid URL path" + echo(path) + " (parameters go after '?': http://host:8086/?db=signet)");
    while (!path.empty() && path.back() == '/') path.remove_suffix(1);
    c.url = scheme + "://" + std::string(authority) + std::string(path);

    std::map<std::string, std::string> params;
    size_t index = 0;
    while (!query.empty()) {
        auto amp = query.find('&');
        std::string_view kv = query.substr(0, amp);
        query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
        ++index;
        if (kv.empty()) continue;
        auto eq = kv.find('=');
        if (eq == std::string_view::npos)
            return spec_error("parameter #" + std::to_string(index) + " has no '=' (expected name=value)");
        auto key = percent_decode(kv.substr(0, eq));
        if (!key) return spec_error("parameter #" + std::to_string(index) + ": invalid %-escape in its name");
        static const std::vector<std::string> known = {"db", "rp", "u", "p", "password-file", "org", "bucket",
                                                       "token", "token-file", "batch", "flush", "buffer",
                                                       "gzip", "timeout", "ca-file"};
        if (std::find(known.begin(), known.end(), *key) == known.end())
            return spec_error("unknown parameter " + show(*key) +
                              " (known: db, rp, u, p, password-file, org, bucket, token, token-file, batch, "
                              "flush, buffer, gzip, timeout, ca-file)");
        auto value = percent_decode(kv.substr(eq + 1));
        if (!value) return spec_error(*key + ": invalid %-escape in its value");
        if (value->empty()) return spec_error(*key + " has an empty value");
        if (!params.emplace(*key, std::move(*value)).second) return spec_error(*key + " given twice");
    }
    auto has = [&](const char* k) { return params.count(k) != 0; };
    auto get = [&](const char* k) { return params.count(k) ? params.at(k) : std::string(); };
    bool v1 = has("db") || has("rp") || has("u") || has("p") || has("password-file");
    bool v2 = has("org") || has("bucket") || has("token") || has("token-file");
    if (v1 && v2)
        return spec_error("mixes InfluxDB 1.x parameters (db, rp, u, p, password-file) with 2.x ones "
                          "(org, bucket, token, token-file)");
    if (!v1 && !v2) return spec_error("needs db= (InfluxDB 1.x) or org= and bucket= (InfluxDB 2.x)");
    if (v1) {
        c.version = 1;
        if (!has("db")) return spec_error("db= is required for InfluxDB 1.x");
        c.database = get("db");
        c.retention_policy = get("rp");
        c.username = get("u");
        if (has("p") && has("password-file")) return spec_error("give p= or password-file=, not both");
        if ((has("p") || has("password-file")) && !has("u")) return spec_error("a password needs u=");
        if (has("u") && !has("p") && !has("password-file")) return spec_error("u= needs password-file= (or p=)");
        if (has("p")) c.password = get("p");
        if (has("password-file")) {
            auto pw = read_secret("password-file", get("password-file"));
            if (!pw) return pw.error();
            c.password = std::move(*pw);
        }
    } else {
        c.version = 2;
        if (!has("org") || !has("bucket")) return spec_error("InfluxDB 2.x needs both org= and bucket=");
        c.org = get("org");
        c.bucket = get("bucket");
        if (has("token") && has("token-file")) return spec_error("give token-file= or token=, not both");
        if (!has("token") && !has("token-file")) return spec_error("InfluxDB 2.x needs token-file= (or token=)");
        if (has("token")) {
            c.token = get("token");
            for (char ch : c.token)
                if (static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f)
                    return spec_error("token= contains control characters");
        } else {
            auto tok = read_secret("token-file", get("token-file"));
            if (!tok) return tok.error();
            c.token = std::move(*tok);
        }
    }
    if (has("batch") && !parse_size(get("batch"), 1000000, &c.batch_points))
        return spec_error("batch must be an integer in 1..1000000, not " + show(get("batch")));
    if (has("buffer") && !parse_size(get("buffer"), 100000000, &c.buffer_points))
        return spec_error("buffer must be an integer in 1..100000000, not " + show(get("buffer")));
    if (has("flush") && !parse_duration(get("flush"), std::chrono::hours(1), &c.flush_interval))
        return spec_error("flush must be a duration such as 500ms, 2s or 1m (at most 1h), not " + show(get("flush")));
    if (has("timeout") && !parse_duration(get("timeout"), std::chrono::minutes(10), &c.timeout))
        return spec_error("timeout must be a duration such as 500ms, 5s or 1m (at most 10m), not " +
                          show(get("timeout")));
    if (has("gzip")) {
        auto g = get("gzip");
        if (g == "true" || g == "1" || g == "yes") c.gzip = true;
        else if (g == "false" || g == "0" || g == "no") c.gzip = false;
        else return spec_error("gzip must be true or false, not " + show(g));
    }
    if (has("ca-file")) {
        if (scheme != "https") return spec_error("ca-file= only applies to https:// URLs");
        c.ca_file = get("ca-file");
        struct stat st {};
        if (c.ca_file[0] != '/' || ::stat(c.ca_file.c_str(), &st) != 0 || !S_ISREG(st.st_mode))
            return spec_error("ca-file " + show(c.ca_file) + ": not an absolute path to a readable file");
    }
    return c;
}

std::string describe(const InfluxConfig& c) {
    std::string out = "InfluxDB " + std::string(c.version == 2 ? "2.x" : "1.x") + " at " + c.url;
    if (c.version == 2) {
        out += " org=" + c.org + " bucket=" + c.bucket + " token=(set)";
    } else {
        out += " db=" + c.database;
        if (!c.retention_policy.empty()) out += " rp=" + c.retention_policy;
        if (!c.username.empty()) out += " user=" + c.username + " password=(set)";
    }
    out += " batch=" + std::to_string(c.batch_points) + " flush=" + format_ms(c.flush_interval) +
           " buffer=" + std::to_string(c.buffer_points) + " gzip=" + (c.gzip ? "true" : "false") +
           " timeout=" + format_ms(c.timeout);
    return out;
}

// ---- InfluxExporter ----------------------------------------------------------------

struct InfluxExporter::Response {
    long status = 0;           // 0: transport error
    std::string body;          // error body (capped)
    std::string retry_after;
    std::string error;         // transport error text
};

InfluxExporter::InfluxExporter(InfluxConfig config)
    : cfg_(std::move(config)),
      write_url_(detail::write_url(cfg_)),
      batch_(std::max<size_t>(1, std::min(cfg_.batch_points, std::max<size_t>(1, cfg_.buffer_points)))) {
    curl_global_once();
}

InfluxExporter::~InfluxExporter() { stop(); }

void InfluxExporter::start() {
    std::lock_guard<std::mutex> lock(mu_);
    if (running_) return;
    running_ = true;
    stopping_ = false;
    thread_ = std::thread([this] { run(); });
}

void InfluxExporter::stop() {
    {
        std::lock_guard<std::mutex> lock(mu_);
        if (!running_) return;
        stopping_ = true;
        stop_deadline_ = Clock::now() + cfg_.timeout;
        abort_at_ns_ = std::chrono::duration_cast<std::chrono::nanoseconds>(stop_deadline_.time_since_epoch()).count();
        retry_at_ = {};   // one more attempt now, even while backing off
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
    std::lock_guard<std::mutex> lock(mu_);
    running_ = false;
    stopping_ = false;
    abort_at_ns_ = 0;
    if (!queue_.empty())
        log::warn(kComponent, "stopped with " + std::to_string(queue_.size()) + " point(s) not written to InfluxDB");
}

void InfluxExporter::submit(std::vector<Point> points) {
    std::string invalid_message, drop_message;
    {
        std::lock_guard<std::mutex> lock(mu_);
        for (auto& p : points) {
            ++stats_.submitted;
            uint64_t seq = next_seq_++;
            if (auto st = validate(p); !st) {
                ++stats_.invalid;
                ++invalid_since_log_;
                auto now = Clock::now();
                if (last_invalid_log_ == Clock::time_point{} || now - last_invalid_log_ >= kRejectLogEvery) {
                    invalid_message = "invalid point not exported: " + st.error().message;
                    if (invalid_since_log_ > 1)
                        invalid_message += " (" + std::to_string(invalid_since_log_) + " invalid points since the last report)";
                    invalid_since_log_ = 0;
                    last_invalid_log_ = now;
                }
                continue;
            }
            queue_.push_back(Line{seq, encode(p)});
        }
        if (queue_.size() > cfg_.buffer_points) {
            // Drop the oldest points not part of the request in flight.
            size_t excess = queue_.size() - std::max<size_t>(1, cfg_.buffer_points);
            size_t from = std::min(inflight_, queue_.size() - excess);
            queue_.erase(queue_.begin() + static_cast<std::ptrdiff_t>(from),
                         queue_.begin() + static_cast<std::ptrdiff_t>(from + excess));
            stats_.dropped += excess;
            dropped_since_log_ += excess;
            auto now = Clock::now();
            if (last_drop_log_ == Clock::time_point{} || now - last_drop_log_ >= kRejectLogEvery) {
                drop_message = "buffer full (" + std::to_string(cfg_.buffer_points) + " points, InfluxDB unreachable?): dropped the " +
                               std::to_string(dropped_since_log_) + " oldest point(s) since the last report, " +
                               std::to_string(stats_.dropped) + " in all";
                dropped_since_log_ = 0;
                last_drop_log_ = now;
            }
        }
    }
    cv_.notify_one();
    if (!invalid_message.empty()) log::warn(kComponent, invalid_message);
    if (!drop_message.empty()) log::warn(kComponent, drop_message);
}

bool InfluxExporter::flush(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    uint64_t target = next_seq_;
    ++flush_waiters_;
    cv_.notify_one();
    bool drained = done_cv_.wait_for(lock, timeout, [&] { return queue_.empty() || queue_.front().seq >= target; });
    --flush_waiters_;
    uint64_t lost = stats_.dropped + stats_.rejected + stats_.invalid;
    bool clean = lost == lost_at_last_flush_;
    lost_at_last_flush_ = lost;
    return drained && clean;
}

InfluxExporter::Stats InfluxExporter::stats() const {
    std::lock_guard<std::mutex> lock(mu_);
    Stats s = stats_;
    s.buffered = queue_.size();
    return s;
}

std::vector<std::string> InfluxExporter::peek(size_t max) const {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<std::string> out;
    for (size_t i = 0; i < queue_.size() && i < max; ++i) out.push_back(queue_[i].text);
    return out;
}

InfluxExporter::Response InfluxExporter::post(const std::string& body, std::chrono::milliseconds timeout) {
    Response r;
    CURL* curl = static_cast<CURL*>(curl_);
    curl_easy_reset(curl);
    char errbuf[CURL_ERROR_SIZE] = {0};
    struct curl_slist* headers = nullptr;
    headers = curl_slist_append(headers, "Content-Type: text/plain; charset=utf-8");
    headers = curl_slist_append(headers, "Expect:");
    if (cfg_.gzip) headers = curl_slist_append(headers, "Content-Encoding: gzip");
    std::string auth;
    if (cfg_.version == 2) {
        auth = "Authorization: Token " + cfg_.token;
        headers = curl_slist_append(headers, auth.c_str());
    }
    curl_easy_setopt(curl, CURLOPT_URL, write_url_.c_str());
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_USERAGENT, "signet/" SIGNET_VERSION);
    curl_easy_setopt(curl, CURLOPT_POST, 1L);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body.data());
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, static_cast<long>(std::max<int64_t>(1, timeout.count())));
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(std::max<int64_t>(1, timeout.count())));
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, body_cb);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &r.body);
    curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(curl, CURLOPT_HEADERDATA, &r.retry_after);
    curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, xferinfo_cb);
    curl_easy_setopt(curl, CURLOPT_XFERINFODATA, &abort_at_ns_);
    if (cfg_.version == 1 && !cfg_.username.empty()) {
        curl_easy_setopt(curl, CURLOPT_HTTPAUTH, CURLAUTH_BASIC);
        curl_easy_setopt(curl, CURLOPT_USERNAME, cfg_.username.c_str());
        curl_easy_setopt(curl, CURLOPT_PASSWORD, cfg_.password.c_str());
    }
    if (!cfg_.ca_file.empty()) curl_easy_setopt(curl, CURLOPT_CAINFO, cfg_.ca_file.c_str());
    CURLcode rc = curl_easy_perform(curl);
    if (rc == CURLE_OK) {
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &r.status);
    } else {
        r.status = 0;
        r.error = errbuf[0] ? errbuf : curl_easy_strerror(rc);
        while (!r.error.empty() && r.error.back() == '\n') r.error.pop_back();
    }
    curl_slist_free_all(headers);
    // Scrub the token copy.
    std::fill(auth.begin(), auth.end(), '\0');
    return r;
}

void InfluxExporter::handle(const Response& r, size_t n) {
    auto now = Clock::now();
    auto outcome = detail::classify(r.status);
    if (outcome == detail::Outcome::ok) {
        queue_.erase(queue_.begin(), queue_.begin() + static_cast<std::ptrdiff_t>(n));
        stats_.written += n;
        ++stats_.batches_ok;
        stats_.last_success_unix = static_cast<int64_t>(std::time(nullptr));
        if (consecutive_failures_ > 0)
            log::info(kComponent, "writing to InfluxDB again after " + std::to_string(consecutive_failures_) +
                                      " failed attempt(s)");
        consecutive_failures_ = 0;
        fails_since_log_ = 0;
        last_fail_log_ = {};
        retry_at_ = {};
        return;
    }
    ++stats_.batches_failed;
    std::string what = r.status == 0 ? r.error : "HTTP " + std::to_string(r.status) + ": " + detail::server_message(r.body);
    stats_.last_error = what;
    if (outcome == detail::Outcome::bad_batch) {
        queue_.erase(queue_.begin(), queue_.begin() + static_cast<std::ptrdiff_t>(n));
        stats_.rejected += n;
        ++rejects_since_log_;
        if (last_reject_log_ == Clock::time_point{} || now - last_reject_log_ >= kRejectLogEvery) {
            std::string m = "InfluxDB refused a batch of " + std::to_string(n) + " point(s), dropped: " + what;
            if (rejects_since_log_ > 1) m += " (" + std::to_string(rejects_since_log_) + " batches refused since the last report)";
            log::error(kComponent, m);
            rejects_since_log_ = 0;
            last_reject_log_ = now;
        }
        return;
    }
    // Retried: unreachable, overloaded, or misconfigured (credentials, database).
    ++stats_.retries;
    ++consecutive_failures_;
    ++fails_since_log_;
    thread_local std::mt19937_64 rng{std::random_device{}()};
    auto delay = detail::backoff(consecutive_failures_, std::uniform_real_distribution<double>(0.0, 1.0)(rng));
    if (auto ra = detail::parse_retry_after(r.retry_after, static_cast<int64_t>(std::time(nullptr))))
        delay = std::max(delay, *ra);
    retry_at_ = now + delay;
    if (last_fail_log_ == Clock::time_point{} || now - last_fail_log_ >= kFailLogEvery) {
        std::string m = (outcome == detail::Outcome::config_error ? "InfluxDB write refused (check the "
                                                                    "credentials, database/bucket): "
                                                                  : "InfluxDB write failed: ") +
                        what + "; " + std::to_string(queue_.size()) + " point(s) buffered, retrying";
        if (fails_since_log_ > 1) m += " (" + std::to_string(fails_since_log_) + " failed attempts since the last report)";
        if (outcome == detail::Outcome::config_error) log::error(kComponent, m);
        else log::warn(kComponent, m);
        fails_since_log_ = 0;
        last_fail_log_ = now;
    }
}

void InfluxExporter::run() {
    curl_ = curl_easy_init();
    std::unique_lock<std::mutex> lock(mu_);
    if (!curl_) {
        stats_.last_error = "curl_easy_init failed";
        log::error(kComponent, "cannot start the InfluxDB exporter: curl_easy_init failed");
        return;
    }
    log::info(kComponent, "exporting to " + describe(cfg_));
    auto last_send = Clock::now();
    for (;;) {
        // Wait until there is something to send and no back-off in the way.
        bool exit = false;
        for (;;) {
            auto now = Clock::now();
            if (stopping_ && (queue_.empty() || now >= stop_deadline_)) {
                exit = true;
                break;
            }
            bool backing_off = now < retry_at_;
            if (!queue_.empty() && !backing_off &&
                (queue_.size() >= batch_ || flush_waiters_ > 0 || stopping_ || now >= last_send + cfg_.flush_interval))
                break;
            auto wake = Clock::time_point::max();
            if (backing_off) wake = retry_at_;
            else if (!queue_.empty()) wake = last_send + cfg_.flush_interval;
            if (stopping_) wake = std::min(wake, stop_deadline_);
            if (wake == Clock::time_point::max()) cv_.wait(lock);
            else cv_.wait_until(lock, wake);
        }
        if (exit) break;
        size_t n = std::min(batch_, queue_.size());
        inflight_ = n;
        std::string body;
        size_t bytes = 0;
        for (size_t i = 0; i < n; ++i) bytes += queue_[i].text.size() + 1;
        body.reserve(bytes);
        for (size_t i = 0; i < n; ++i) {
            body += queue_[i].text;
            body += '\n';
        }
        auto timeout = cfg_.timeout;
        if (stopping_)
            timeout = std::min(timeout, std::chrono::duration_cast<std::chrono::milliseconds>(stop_deadline_ - Clock::now()));
        last_send = Clock::now();
        lock.unlock();
        Response r;
        if (cfg_.gzip) {
            auto z = detail::gzip(body);
            if (z) body = std::move(*z);
            else r.error = z.error().message;
        }
        if (r.error.empty()) r = post(body, std::max(timeout, std::chrono::milliseconds(1)));
        lock.lock();
        inflight_ = 0;
        handle(r, n);
        done_cv_.notify_all();
    }
    lock.unlock();
    curl_easy_cleanup(static_cast<CURL*>(curl_));
    curl_ = nullptr;
}

}  // namespace signet::exporter
