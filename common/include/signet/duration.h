// One way to read a duration from a user (flags, query parameters, spec
// strings): digits and a unit, ms, s, m or h ("500ms", "10s", "5m", "24h").
// A bare number is refused: a unit is required, so "30" never means 30 ms
// in one place and 30 s in another.
#pragma once

#include <chrono>
#include <string_view>

#include "signet/result.h"

namespace signet {

// EINVAL: not digits + a unit, or outside [min, max] (the message says which,
// with both bounds).
Result<std::chrono::milliseconds> parse_duration(std::string_view text, std::chrono::milliseconds min,
                                                 std::chrono::milliseconds max);

// "250ms", "10s", "5m", "24h": the largest unit that divides it.
std::string format_duration(std::chrono::milliseconds d);

}  // namespace signet
