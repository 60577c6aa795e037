#include "metrics/process.h"

#include <dirent.h>
#include <unistd.h>

#include <charconv>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

namespace signet::metrics {

namespace {

std::optional<std::string> read_file(const char* path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) return std::nullopt;
    std::ostringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

template <typename T>
bool to_number(std::string_view s, T& out) {
    if (s.empty()) return false;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
    return ec == std::errc() && p == s.data() + s.size();
}

std::vector<std::string_view> split_ws(std::string_view s) {
    std::vector<std::string_view> out;
    size_t i = 0;
    while (i < s.size()) {
        while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n')) ++i;
        size_t j = i;
        while (j < s.size() && s[j] != ' ' && s[j] != '\t' && s[j] != '\n') ++j;
        if (j > i) out.push_back(s.substr(i, j - i));
        i = j;
    }
    return out;
}

}  // namespace

std::optional<ProcStat> parse_proc_stat(std::string_view text) {
    size_t open = text.find('(');
    size_t close = text.rfind(')');
    if (open == std::string_view::npos || close == std::string_view::npos || close < open) return std::nullopt;
    auto f = split_ws(text.substr(close + 1));  // f[0] is field 3 (state)
    if (f.size() < 22) return std::nullopt;
    ProcStat s;
    if (!to_number(f[11], s.utime_ticks) || !to_number(f[12], s.stime_ticks) || !to_number(f[19], s.start_ticks) ||
        !to_number(f[20], s.vsize_bytes) || !to_number(f[21], s.rss_pages))
        return std::nullopt;
    return s;
}

std::optional<double> parse_boot_time(std::string_view proc_stat) {
    size_t pos = 0;
    while (pos < proc_stat.size()) {
        size_t end = proc_stat.find('\n', pos);
        std::string_view line = proc_stat.substr(pos, end == std::string_view::npos ? std::string_view::npos : end - pos);
        auto f = split_ws(line);
        unsigned long long v = 0;
        if (f.size() == 2 && f[0] == "btime" && to_number(f[1], v)) return static_cast<double>(v);
        if (end == std::string_view::npos) break;
        pos = end + 1;
    }
    return std::nullopt;
}

std::optional<double> parse_max_open_files(std::string_view limits) {
    constexpr std::string_view kName = "Max open files";
    size_t pos = 0;
    while (pos < limits.size()) {
        size_t end = limits.find('\n', pos);
        std::string_view line = limits.substr(pos, end == std::string_view::npos ? std::string_view::npos : end - pos);
        if (line.substr(0, kName.size()) == kName) {
            auto f = split_ws(line.substr(kName.size()));  // soft, hard, units
            if (f.empty()) return std::nullopt;
            if (f[0] == "unlimited") return std::numeric_limits<double>::infinity();
            unsigned long long v = 0;
            if (!to_number(f[0], v)) return std::nullopt;
            return static_cast<double>(v);
        }
        if (end == std::string_view::npos) break;
        pos = end + 1;
    }
    return std::nullopt;
}

ProcessStats read_process_stats() {
    ProcessStats out;
    const long ticks = ::sysconf(_SC_CLK_TCK);
    const long page = ::sysconf(_SC_PAGESIZE);
    if (auto text = read_file("/proc/self/stat"))
        if (auto st = parse_proc_stat(*text); st && ticks > 0) {
            out.cpu_seconds = static_cast<double>(st->utime_ticks + st->stime_ticks) / static_cast<double>(ticks);
            out.virtual_bytes = static_cast<double>(st->vsize_bytes);
            if (page > 0) out.resident_bytes = static_cast<double>(st->rss_pages) * static_cast<double>(page);
            if (auto all = read_file("/proc/stat"))
                if (auto boot = parse_boot_time(*all))
                    out.start_time_seconds = *boot + static_cast<double>(st->start_ticks) / static_cast<double>(ticks);
        }
    if (auto text = read_file("/proc/self/limits")) out.max_fds = parse_max_open_files(*text);
    if (DIR* d = ::opendir("/proc/self/fd")) {
        const int own = ::dirfd(d);
        double n = 0;
        while (const dirent* e = ::readdir(d)) {
            if (e->d_name[0] == '.') continue;
            int fd = -1;
            if (to_number(std::string_view(e->d_name), fd) && fd == own) continue;  // the listing's own descriptor
            n += 1;
        }
        ::closedir(d);
        out.open_fds = n;
    }
    return out;
}

void write_process_metrics(Writer& w, const ProcessStats& s) {
    auto one = [&](const char* name, const char* type, const char* help, const std::optional<double>& v) {
        if (!v) return;
        w.family(name, type, help);
        w.sample(name, {}, *v);
    };
    one("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", s.cpu_seconds);
    one("process_open_fds", "gauge", "Number of open file descriptors.", s.open_fds);
    one("process_max_fds", "gauge", "Maximum number of open file descriptors.", s.max_fds);
    one("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", s.virtual_bytes);
    one("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", s.resident_bytes);
    one("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.",
        s.start_time_seconds);
}

}  // namespace signet::metrics
