#include "signet/duration.h"

#include <cerrno>
#include <charconv>
#include <cstdint>
#include <string>

namespace signet {

std::string format_duration(std::chrono::milliseconds d) {
    const int64_t ms = d.count();
    if (ms != 0 && ms % 3600000 == 0) return std::to_string(ms / 3600000) + "h";
    if (ms != 0 && ms % 60000 == 0) return std::to_string(ms / 60000) + "m";
    if (ms != 0 && ms % 1000 == 0) return std::to_string(ms / 1000) + "s";
    return std::to_string(ms) + "ms";
}

Result<std::chrono::milliseconds> parse_duration(std::string_view text, std::chrono::milliseconds min,
                                                 std::chrono::milliseconds max) {
    const std::string quoted = "'" + std::string(text.substr(0, 40)) + "'";
    size_t digits = 0;
    while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
    if (digits == 0 || digits > 12)
        return make_error(EINVAL, quoted + " is not a duration: digits and a unit (ms, s, m, h), e.g. 10s");
    uint64_t n = 0;
    std::from_chars(text.data(), text.data() + digits, n);
    const std::string_view unit = text.substr(digits);
    uint64_t per = 0;
    if (unit == "ms") per = 1;
    else if (unit == "s") per = 1000;
    else if (unit == "m") per = 60000;
    else if (unit == "h") per = 3600000;
    else if (unit.empty())
        return make_error(EINVAL, quoted + " has no unit: write ms, s, m or h after the number, e.g. " +
                                      std::string(text) + "s");
    else
        return make_error(EINVAL, quoted + " has an unknown unit: use ms, s, m or h");
    const std::chrono::milliseconds d(static_cast<int64_t>(n * per));
    if (d < min || d > max)
        return make_error(EINVAL, quoted + " is out of range: from " + format_duration(min) + " to " + format_duration(max));
    return d;
}

}  // namespace signet
