// The process collector's /proc parsing (controller/metrics/process.h), on
// recorded text, and one read of this test's own /proc/self.
#include <doctest/doctest.h>

#include <cmath>
#include <string>

#include "metrics/process.h"

using namespace signet::metrics;

TEST_CASE("process: /proc/self/stat fields after the command name, which may hold spaces and ')'") {
    // A real line of a process named "sig) net d" (field 2), fields 3 .. 52.
    const std::string line =
        "4242 (sig) net d) S 1 4242 4242 0 -1 4194560 2195 0 0 0 137 42 0 0 20 0 5 0 123456 "
        "1019846656 4163 18446744073709551615 94 95 96 0 0 0 0 4096 16386 0 0 0 17 1 0 0 0 0 0 97 98 99 100 101 102 "
        "103 0\n";
    auto st = parse_proc_stat(line);
    REQUIRE(st);
    CHECK(st->utime_ticks == 137);
    CHECK(st->stime_ticks == 42);
    CHECK(st->start_ticks == 123456);
    CHECK(st->vsize_bytes == 1019846656ULL);
    CHECK(st->rss_pages == 4163);
    CHECK_FALSE(parse_proc_stat(""));
    CHECK_FALSE(parse_proc_stat("4242 (x) S 1 2 3"));                  // too few fields
    CHECK_FALSE(parse_proc_stat("4242 x S 1 4242 4242 0 -1 4194560"));  // no command name
    CHECK_FALSE(parse_proc_stat("4242 (x) S 1 4242 4242 0 -1 4194560 2195 0 0 0 abc 42 0 0 20 0 5 0 1 2 3 4"));
}

TEST_CASE("process: the boot time of /proc/stat and the soft fd limit of /proc/self/limits") {
    CHECK(parse_boot_time("cpu  1 2 3\nintr 5\nctxt 77\nbtime 1765150000\nprocesses 9\n") == 1765150000.0);
    CHECK_FALSE(parse_boot_time("cpu  1 2 3\nctxt 77\n"));
    CHECK_FALSE(parse_boot_time("btime soon\n"));
    const std::string limits =
        "Limit                     Soft Limit           Hard Limit           Units     \n"
        "Max cpu time              unlimited            unlimited            seconds   \n"
        "Max open files            1024                 524288               files     \n"
        "Max locked memory         8388608              8388608              bytes     \n";
    CHECK(parse_max_open_files(limits) == 1024.0);
    auto unl = parse_max_open_files("Max open files            unlimited            unlimited            files\n");
    REQUIRE(unl);
    CHECK(std::isinf(*unl));
    CHECK_FALSE(parse_max_open_files("Max processes 10 10 processes\n"));
    CHECK_FALSE(parse_max_open_files("Max open files            many                 x                    files\n"));
}

TEST_CASE("process: this process's own numbers, written as the standard families") {
    auto s = read_process_stats();
    REQUIRE(s.cpu_seconds);
    REQUIRE(s.resident_bytes);
    REQUIRE(s.open_fds);
    REQUIRE(s.max_fds);
    REQUIRE(s.start_time_seconds);
    CHECK(*s.resident_bytes > 0);
    CHECK(*s.open_fds >= 3);
    CHECK(*s.open_fds <= *s.max_fds);
    CHECK(*s.start_time_seconds > 1.5e9);  // after 2017
    Writer w;
    write_process_metrics(w, s);
    std::string text = w.take();
    CHECK(w.errors().empty());
    for (const char* name : {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_virtual_memory_bytes",
                             "process_open_fds", "process_max_fds", "process_start_time_seconds"}) {
        CAPTURE(name);
        CHECK(text.find(std::string("# TYPE ") + name) != std::string::npos);
        CHECK(text.find(std::string("\n") + name + " ") != std::string::npos);
    }
    CHECK(text.find("# TYPE process_cpu_seconds_total counter") != std::string::npos);
}
