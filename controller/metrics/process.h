// The standard Prometheus process collector's metrics (process_cpu_seconds_total,
// process_resident_memory_bytes, process_virtual_memory_bytes,
// process_open_fds, process_max_fds, process_start_time_seconds), as
// client_golang's and prometheus_client's read them from /proc/self.
#pragma once

#include <optional>
#include <string_view>

#include "metrics/exposition.h"

namespace signet::metrics {

// /proc/[pid]/stat: the fields the collector uses, raw.
struct ProcStat {
    unsigned long long utime_ticks = 0, stime_ticks = 0;  // fields 14, 15
    unsigned long long start_ticks = 0;                   // field 22: since boot
    unsigned long long vsize_bytes = 0;                   // field 23
    long long rss_pages = 0;                              // field 24
};
// The command name (field 2) is in parentheses and may hold spaces and ')':
// the fields after it are found from the last ')'. nullopt: not that format.
std::optional<ProcStat> parse_proc_stat(std::string_view text);
// "btime N" of /proc/stat: the boot time, unix seconds.
std::optional<double> parse_boot_time(std::string_view proc_stat);
// The soft "Max open files" of /proc/[pid]/limits ("unlimited": +Inf).
std::optional<double> parse_max_open_files(std::string_view limits);

struct ProcessStats {
    std::optional<double> cpu_seconds, resident_bytes, virtual_bytes, start_time_seconds, open_fds, max_fds;
};
// This process's, from /proc/self (what cannot be read is left out).
ProcessStats read_process_stats();
// Writes the families present in `s`.
void write_process_metrics(Writer& w, const ProcessStats& s);

}  // namespace signet::metrics
