// signet/log.h: the text and JSON line formats, and the level changed at run time.
#include <doctest/doctest.h>

#include <rapidjson/document.h>

#include <string>

#include "signet/log.h"

using namespace signet;

TEST_CASE("log lines: text as before, JSON one valid object per line whatever the message holds") {
    CHECK(log::format_line(log::Format::text, "2026-12-07T10:00:00.000Z", log::Level::warn, "handshake", "refused") ==
          "2026-12-07T10:00:00.000Z WARN  handshake: refused");
    const std::string nasty = std::string("a \"quoted\" \\ back\nnew\ttab \x01 ctl \x7f del ") +
                              "caf\xc3\xa9 \xe2\x9c\x93 bad \xff\xc3 overlong \xc0\xaf surrogate \xed\xa0\x80 end";
    const std::string line = log::format_line(log::Format::json, "2026-12-07T10:00:00.000Z", log::Level::error,
                                              "controller", nasty);
    CHECK(line.find('\n') == std::string::npos);
    rapidjson::Document d;
    d.Parse<rapidjson::kParseValidateEncodingFlag>(line.data(), line.size());
    REQUIRE_FALSE(d.HasParseError());
    CHECK(std::string(d["time"].GetString()) == "2026-12-07T10:00:00.000Z");
    CHECK(std::string(d["level"].GetString()) == "error");
    CHECK(std::string(d["component"].GetString()) == "controller");
    const std::string msg = d["msg"].GetString();
    CHECK(msg.find("a \"quoted\" \\ back\nnew\ttab \x01 ctl \x7f del ") == 0);
    CHECK(msg.find("caf\xc3\xa9 \xe2\x9c\x93") != std::string::npos);          // valid UTF-8 kept
    CHECK(msg.find("bad \xef\xbf\xbd\xef\xbf\xbd overlong") != std::string::npos);  // each bad byte: U+FFFD
    CHECK(msg.find("surrogate \xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd end") != std::string::npos);
}

TEST_CASE("log level: parsed, named, and changed at run time") {
    log::Level l;
    CHECK(log::parse_level("warning", &l));
    CHECK(l == log::Level::warn);
    CHECK_FALSE(log::parse_level("loud", &l));
    log::Format f;
    CHECK(log::parse_format("json", &f));
    CHECK(f == log::Format::json);
    CHECK_FALSE(log::parse_format("yaml", &f));
    const log::Level before = log::level();
    log::set_level(log::Level::debug);
    CHECK(log::level() == log::Level::debug);
    CHECK(std::string(log::to_string(log::level())) == "debug");
    log::set_level(before);
}
