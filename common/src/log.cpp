#include "signet/log.h"

#include <atomic>
#include <cstdio>
#include <ctime>
#include <mutex>
#include <string>

namespace signet::log {
namespace {
std::atomic<int> g_level{static_cast<int>(Level::info)};
std::atomic<int> g_format{static_cast<int>(Format::text)};
std::mutex g_mu;
const char* upper(Level l) {
    switch (l) {
        case Level::debug: return "DEBUG";
        case Level::info: return "INFO";
        case Level::warn: return "WARN";
        case Level::error: return "ERROR";
    }
    return "?";
}

// The length of the valid UTF-8 sequence at s[i], 0 if none starts there.
size_t utf8_len(std::string_view s, size_t i) {
    const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
    const unsigned char c = b(i);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    if (n == 0 || i + n > s.size()) return 0;
    for (size_t k = 1; k < n; ++k)
        if ((b(i + k) & 0xc0) != 0x80) return 0;
    if (n == 2 && c < 0xc2) return 0;                                     // overlong
    if (n == 3 && c == 0xe0 && b(i + 1) < 0xa0) return 0;                 // overlong
    if (n == 3 && c == 0xed && b(i + 1) >= 0xa0) return 0;                // surrogates
    if (n == 4 && (c > 0xf4 || (c == 0xf0 && b(i + 1) < 0x90) || (c == 0xf4 && b(i + 1) >= 0x90))) return 0;
    return n;
}

void json_string(std::string& out, std::string_view s) {
    out += '"';
    for (size_t i = 0; i < s.size();) {
        const unsigned char c = static_cast<unsigned char>(s[i]);
        if (c == '"' || c == '\\') {
            out += '\\';
            out += static_cast<char>(c);
            ++i;
        } else if (c < 0x20 || c == 0x7f) {
            static const char* hex = "0123456789abcdef";
            switch (c) {
                case '\n': out += "\\n"; break;
                case '\t': out += "\\t"; break;
                case '\r': out += "\\r"; break;
                default: out += "\\u00"; out += hex[c >> 4]; out += hex[c & 15];
            }
            ++i;
        } else if (size_t n = utf8_len(s, i); n > 0) {
            out.append(s.substr(i, n));
            i += n;
        } else {
            out += "\\ufffd";
            ++i;
        }
    }
    out += '"';
}
}  // namespace

void set_level(Level level) { g_level = static_cast<int>(level); }
Level level() { return static_cast<Level>(g_level.load(std::memory_order_relaxed)); }
void set_format(Format format) { g_format = static_cast<int>(format); }

const char* to_string(Level l) {
    switch (l) {
        case Level::debug: return "debug";
        case Level::info: return "info";
        case Level::warn: return "warn";
        case Level::error: return "error";
    }
    return "?";
}

bool parse_level(std::string_view t, Level* out) {
    if (t == "debug") *out = Level::debug;
    else if (t == "info") *out = Level::info;
    else if (t == "warn" || t == "warning") *out = Level::warn;
    else if (t == "error") *out = Level::error;
    else return false;
    return true;
}

bool parse_format(std::string_view t, Format* out) {
    if (t == "text") *out = Format::text;
    else if (t == "json") *out = Format::json;
    else return false;
    return true;
}

std::string format_line(Format format, std::string_view time, Level level, std::string_view component,
                        std::string_view message) {
    std::string out;
    out.reserve(message.size() + component.size() + 64);
    if (format == Format::json) {
        out += "{\"time\":";
        json_string(out, time);
        out += ",\"level\":\"";
        out += to_string(level);
        out += "\",\"component\":";
        json_string(out, component);
        out += ",\"msg\":";
        json_string(out, message);
        out += '}';
        return out;
    }
    char head[16];
    std::snprintf(head, sizeof head, " %-5s ", upper(level));
    out.append(time).append(head).append(component).append(": ").append(message);
    return out;
}

void write(Level level, std::string_view component, std::string_view message) {
    if (static_cast<int>(level) < g_level.load(std::memory_order_relaxed)) return;
    timespec ts{};
    clock_gettime(CLOCK_REALTIME, &ts);
    tm tmv{};
    gmtime_r(&ts.tv_sec, &tmv);
    char stamp[96];
    std::snprintf(stamp, sizeof stamp, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tmv.tm_year + 1900,
                  tmv.tm_mon + 1, tmv.tm_mday, tmv.tm_hour, tmv.tm_min, tmv.tm_sec, static_cast<long>(ts.tv_nsec / 1000000) % 1000);
    const std::string line =
        format_line(static_cast<Format>(g_format.load(std::memory_order_relaxed)), stamp, level, component, message);
    std::lock_guard<std::mutex> lock(g_mu);
    std::fprintf(stderr, "%s\n", line.c_str());
    std::fflush(stderr);
}

}  // namespace signet::log
