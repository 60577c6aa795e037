// Minimal structured logging to stderr. Text (default):
//   "TIME LEVEL component: message"
// or JSON, one object per line (--log-format json):
//   {"time":"...","level":"info","component":"...","msg":"..."}
// Library stages return errors; only the binaries' wiring code logs.
#pragma once

#include <string>
#include <string_view>

namespace signet::log {

enum class Level { debug = 0, info = 1, warn = 2, error = 3 };
enum class Format { text, json };

// Both may change at any time (signetd's API sets the level at run time).
void set_level(Level level);
Level level();
bool parse_level(std::string_view text, Level* out);
const char* to_string(Level level);  // "debug", "info", "warn", "error"
void set_format(Format format);
bool parse_format(std::string_view text, Format* out);

void write(Level level, std::string_view component, std::string_view message);

// One log line as written (without the newline); the JSON form escapes
// quotes, backslashes and control characters, and replaces bytes that are
// not UTF-8 with U+FFFD, so that every line is one valid JSON object.
std::string format_line(Format format, std::string_view time, Level level, std::string_view component,
                        std::string_view message);

inline void debug(std::string_view c, std::string_view m) { write(Level::debug, c, m); }
inline void info(std::string_view c, std::string_view m) { write(Level::info, c, m); }
inline void warn(std::string_view c, std::string_view m) { write(Level::warn, c, m); }
inline void error(std::string_view c, std::string_view m) { write(Level::error, c, m); }

}  // namespace signet::log
