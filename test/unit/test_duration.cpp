// signet/duration.h: the one duration parser of flags, query parameters and specs.
#include <doctest/doctest.h>

#include "signet/duration.h"

using namespace std::chrono_literals;
using signet::parse_duration;

TEST_CASE("durations: digits and a unit; a bare number is refused") {
    CHECK(*parse_duration("500ms", 1ms, 1h) == 500ms);
    CHECK(*parse_duration("10s", 1ms, 1h) == 10s);
    CHECK(*parse_duration("5m", 1ms, 1h) == 5min);
    CHECK(*parse_duration("24h", 1ms, 24h) == 24h);
    auto bare = parse_duration("30", 1ms, 1h);
    REQUIRE_FALSE(bare.ok());
    CHECK(bare.error().message.find("no unit") != std::string::npos);
    CHECK(bare.error().message.find("30s") != std::string::npos);  // says how to write it
    for (const char* bad : {"", "s", "-5s", "1.5s", "10 s", "10sec", "10y", "5m ", "0x10s", "9999999999999s"})
        CHECK_MESSAGE(!parse_duration(bad, 0ms, 24h).ok(), bad);
}

TEST_CASE("durations: bounds are inclusive and named in the error") {
    CHECK(parse_duration("100ms", 100ms, 1h).ok());
    CHECK(parse_duration("1h", 100ms, 1h).ok());
    auto low = parse_duration("99ms", 100ms, 1h);
    REQUIRE_FALSE(low.ok());
    CHECK(low.error().message.find("from 100ms to 1h") != std::string::npos);
    CHECK_FALSE(parse_duration("61m", 100ms, 1h).ok());
    CHECK(parse_duration("0s", 0ms, 1h).ok());
    CHECK(signet::format_duration(90s) == "90s");
    CHECK(signet::format_duration(2h) == "2h");
    CHECK(signet::format_duration(1500ms) == "1500ms");
}
