// signet: InfluxDB line protocol (https://docs.influxdata.com/influxdb/v1.6/write_protocols/line_protocol_reference/).
// Pure: validation, encoding, and a decoder of what encode() produces (used by
// the tests and the fuzz target to check round trips).
//
// Escaping (encode):
//   measurement               comma, space
//   tag keys, tag values,     comma, equals sign, space
//   field keys
//   string field values       double quote, backslash (inside "...")
// What the protocol cannot carry is refused by validate(): newlines, invalid
// UTF-8, NaN/Inf, and a backslash in a name (measurement, tag key/value, field
// key) that InfluxDB would read as an escape (a backslash at the end or before
// a backslash, comma, equals sign, space or double quote: InfluxDB 1.x and 2.x
// disagree on those).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "signet/result.h"

namespace signet::exporter {

// InfluxDB 1.6 has no unsigned integers: counters go as int64 ("i").
using FieldValue = std::variant<int64_t, double, bool, std::string>;

struct Point {
    std::string measurement;
    std::vector<std::pair<std::string, std::string>> tags;     // encoded sorted by key; empty values skipped
    std::vector<std::pair<std::string, FieldValue>> fields;    // at least one
    int64_t time_ns = 0;                                       // 0: no timestamp (server time)
    bool operator==(const Point&) const = default;
};

// Sizes InfluxDB 1.x enforces (series key, string field value).
inline constexpr size_t kMaxSeriesKeyBytes = 65535;
inline constexpr size_t kMaxStringFieldBytes = 65535;

// OK, or an error (code EINVAL) naming what is wrong and where: no measurement,
// no fields, an empty key, duplicate keys, a reserved key ("time", "_field",
// "_measurement"), NaN/Inf, a newline, invalid UTF-8, a measurement starting
// with '#' (a comment line), a non-portable backslash, a timestamp out of
// InfluxDB's range, a series key or string value over 64 KiB.
Status validate(const Point& p);

// One line, no trailing '\n'. Tags sorted by key (bytewise), empty tag values
// skipped, fields in the given order. Meaningful only for a valid point.
std::string encode(const Point& p);

// Appends encode(p) to out (no '\n').
void encode_to(const Point& p, std::string& out);

// Parses one line as InfluxDB 1.x does (escapes, quoted strings, 123i
// integers, floats, t/T/true/True/TRUE/f/... booleans, optional timestamp).
// Tags come back in line order, integers as int64_t, floats as double.
Result<Point> decode(std::string_view line);

// The point as encode() sees it: tags with empty values removed, sorted by key.
Point canonical(Point p);

}  // namespace signet::exporter
