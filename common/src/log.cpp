#include "signet/log.h"

#include <atomic>
#include <cstdio>
#include <ctime>
#include <mutex>
#include <string>

namespace signet::log {
namespace {
std::atomic<int> g_level{static_cast<int>(Level::info)};
std::mutex g_mu;
const char* name(Level l) {
    switch (l) {
        case Level::debug: return "DEBUG";
        case Level::info: return "INFO";
        case Level::warn: return "WARN";
        case Level::error: return "ERROR";
    }
    return "?";
}
}  // namespace

void set_level(Level level) { g_level = static_cast<int>(level); }

bool parse_level(std::string_view t, Level* out) {
    if (t == "debug") *out = Level::debug;
    else if (t == "info") *out = Level::info;
    else if (t == "warn" || t == "warning") *out = Level::warn;
    else if (t == "error") *out = Level::error;
    else return false;
    return true;
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
    std::lock_guard<std::mutex> lock(g_mu);
    std::fprintf(stderr, "%s %-5s %.*s: %.*s\n", stamp, name(level), static_cast<int>(component.size()),
                 component.data(), static_cast<int>(message.size()), message.data());
    std::fflush(stderr);
}

}  // namespace signet::log
