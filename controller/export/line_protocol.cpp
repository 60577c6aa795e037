#include "export/line_protocol.h"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <limits>
#include <set>

namespace signet::exporter {
namespace {

// InfluxDB's timestamp range (models.MinNanoTime / MaxNanoTime).
constexpr int64_t kMinTime = std::numeric_limits<int64_t>::min() + 2;
constexpr int64_t kMaxTime = std::numeric_limits<int64_t>::max() - 1;

bool valid_utf8(std::string_view s) {
    size_t i = 0;
    const auto* b = reinterpret_cast<const unsigned char*>(s.data());
    while (i < s.size()) {
        unsigned c = b[i];
        size_t n;
        uint32_t cp;
        if (c < 0x80) { ++i; continue; }
        if (c >= 0xC2 && c <= 0xDF) { n = 1; cp = c & 0x1F; }
        else if (c >= 0xE0 && c <= 0xEF) { n = 2; cp = c & 0x0F; }
        else if (c >= 0xF0 && c <= 0xF4) { n = 3; cp = c & 0x07; }
        else return false;
        if (i + n >= s.size()) return false;  // truncated sequence
        for (size_t k = 1; k <= n; ++k) {
            if ((b[i + k] & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (b[i + k] & 0x3F);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += n + 1;
    }
    return true;
}

std::string quoted(std::string_view s) {
    // For error messages: printable, bounded.
    std::string out = "\"";
    for (char c : s.substr(0, 64)) {
        if (c == '\n') out += "\\n";
        else if (c == '\r') out += "\\r";
        else if (static_cast<unsigned char>(c) < 0x20) out += '?';
        else out += c;
    }
    if (s.size() > 64) out += "...";
    return out + "\"";
}

Status check_text(std::string_view what, std::string_view s) {
    if (s.find('\n') != std::string_view::npos || s.find('\r') != std::string_view::npos)
        return make_error(EINVAL, std::string(what) + " " + quoted(s) +
                                      ": newlines cannot be represented in line protocol");
    if (!valid_utf8(s)) return make_error(EINVAL, std::string(what) + " " + quoted(s) + ": not valid UTF-8");
    return {};
}

// A name (measurement, tag key/value, field key): text rules plus the
// backslash rule (see the header).
Status check_name(std::string_view what, std::string_view s) {
    if (auto st = check_text(what, s); !st) return st;
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] != '\\') continue;
        if (i + 1 == s.size())
            return make_error(EINVAL, std::string(what) + " " + quoted(s) +
                                          ": a trailing backslash cannot be represented in line protocol");
        char n = s[i + 1];
        if (n == '\\' || n == ',' || n == '=' || n == ' ' || n == '"')
            return make_error(EINVAL, std::string(what) + " " + quoted(s) + ": a backslash before '" +
                                          std::string(1, n) + "' would be read as an escape");
    }
    return {};
}

bool reserved_key(std::string_view k) { return k == "time" || k == "_field" || k == "_measurement"; }

void escape(std::string& out, std::string_view s, bool equals) {
    for (char c : s) {
        if (c == ',' || c == ' ' || (equals && c == '=')) out += '\\';
        out += c;
    }
}

void append_double(std::string& out, double v) {
    char buf[64];
    auto r = std::to_chars(buf, buf + sizeof buf, v);
    out.append(buf, r.ptr);
}

void append_int(std::string& out, int64_t v) {
    char buf[32];
    auto r = std::to_chars(buf, buf + sizeof buf, v);
    out.append(buf, r.ptr);
}

std::vector<const std::pair<std::string, std::string>*> sorted_tags(const Point& p) {
    std::vector<const std::pair<std::string, std::string>*> tags;
    tags.reserve(p.tags.size());
    for (const auto& t : p.tags)
        if (!t.second.empty()) tags.push_back(&t);
    std::stable_sort(tags.begin(), tags.end(), [](auto* a, auto* b) { return a->first < b->first; });
    return tags;
}

// ---- decoding -------------------------------------------------------------

bool is_escaped(std::string_view s, size_t i) { return i > 0 && s[i - 1] == '\\'; }

// Index of the first unescaped character of `stops` at or after `from`
// (s.size() when none).
size_t scan(std::string_view s, size_t from, std::string_view stops) {
    for (size_t i = from; i < s.size(); ++i)
        if (stops.find(s[i]) != std::string_view::npos && !is_escaped(s, i)) return i;
    return s.size();
}

std::string unescape(std::string_view s, std::string_view codes) {
    std::string out;
    out.reserve(s.size());
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '\\' && i + 1 < s.size() && codes.find(s[i + 1]) != std::string_view::npos) {
            out += s[i + 1];
            ++i;
        } else {
            out += s[i];
        }
    }
    return out;
}

Error parse_error(std::string_view line, std::string what) {
    return make_error(EINVAL, "line protocol: " + what + " in " + quoted(line));
}

Result<FieldValue> parse_value(std::string_view line, std::string_view v) {
    if (v.empty()) return parse_error(line, "missing field value");
    if (v.front() == '"') {
        if (v.size() < 2 || v.back() != '"') return parse_error(line, "unterminated string");
        return FieldValue(unescape(v.substr(1, v.size() - 2), "\"\\"));
    }
    if (v == "t" || v == "T" || v == "true" || v == "True" || v == "TRUE") return FieldValue(true);
    if (v == "f" || v == "F" || v == "false" || v == "False" || v == "FALSE") return FieldValue(false);
    if (v.back() == 'i') {
        int64_t n = 0;
        auto body = v.substr(0, v.size() - 1);
        auto r = std::from_chars(body.data(), body.data() + body.size(), n);
        if (body.empty() || r.ec != std::errc() || r.ptr != body.data() + body.size())
            return parse_error(line, "invalid integer " + quoted(v));
        return FieldValue(n);
    }
    double d = 0;
    auto r = std::from_chars(v.data(), v.data() + v.size(), d);
    if (r.ec != std::errc() || r.ptr != v.data() + v.size() || !std::isfinite(d))
        return parse_error(line, "invalid number " + quoted(v));
    // InfluxDB's scanner only takes [-]digits[.digits][e[+-]digits]: no "inf", "nan", hex, leading '+'.
    for (char c : v)
        if (!(std::isdigit(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '+' || c == 'e' || c == 'E'))
            return parse_error(line, "invalid number " + quoted(v));
    if (v.front() == '+') return parse_error(line, "invalid number " + quoted(v));
    return FieldValue(d);
}

}  // namespace

Status validate(const Point& p) {
    if (p.measurement.empty()) return make_error(EINVAL, "point: no measurement");
    if (auto st = check_name("measurement", p.measurement); !st) return st;
    if (p.measurement.front() == '#')
        return make_error(EINVAL, "measurement " + quoted(p.measurement) + ": a line starting with '#' is a comment");
    size_t key_bytes = p.measurement.size();
    std::set<std::string_view> seen;
    for (const auto& [k, v] : p.tags) {
        if (k.empty()) return make_error(EINVAL, "measurement " + quoted(p.measurement) + ": empty tag key");
        if (auto st = check_name("tag key", k); !st) return st;
        if (reserved_key(k)) return make_error(EINVAL, "tag key " + quoted(k) + " is reserved");
        if (!seen.insert(k).second) return make_error(EINVAL, "duplicate tag key " + quoted(k));
        if (auto st = check_name("tag " + quoted(k) + " value", v); !st) return st;
        if (!v.empty()) key_bytes += k.size() + v.size() + 2;
    }
    if (key_bytes > kMaxSeriesKeyBytes)
        return make_error(EINVAL, "measurement " + quoted(p.measurement) + ": series key longer than " +
                                      std::to_string(kMaxSeriesKeyBytes) + " bytes");
    if (p.fields.empty()) return make_error(EINVAL, "measurement " + quoted(p.measurement) + ": no fields");
    seen.clear();
    for (const auto& [k, v] : p.fields) {
        if (k.empty()) return make_error(EINVAL, "measurement " + quoted(p.measurement) + ": empty field key");
        if (auto st = check_name("field key", k); !st) return st;
        if (reserved_key(k)) return make_error(EINVAL, "field key " + quoted(k) + " is reserved");
        if (!seen.insert(k).second) return make_error(EINVAL, "duplicate field key " + quoted(k));
        if (const double* d = std::get_if<double>(&v); d && !std::isfinite(*d))
            return make_error(EINVAL, "field " + quoted(k) + ": " + (std::isnan(*d) ? "NaN" : "infinity") +
                                          " cannot be written to InfluxDB");
        if (const std::string* s = std::get_if<std::string>(&v)) {
            if (auto st = check_text("field " + quoted(k) + " value", *s); !st) return st;
            if (s->size() > kMaxStringFieldBytes)
                return make_error(EINVAL, "field " + quoted(k) + ": string longer than " +
                                              std::to_string(kMaxStringFieldBytes) + " bytes");
        }
    }
    if (p.time_ns != 0 && (p.time_ns < kMinTime || p.time_ns > kMaxTime))
        return make_error(EINVAL, "timestamp " + std::to_string(p.time_ns) + " out of InfluxDB's range");
    return {};
}

void encode_to(const Point& p, std::string& out) {
    for (char c : p.measurement) {
        if (c == ',' || c == ' ') out += '\\';
        out += c;
    }
    for (const auto* t : sorted_tags(p)) {
        out += ',';
        escape(out, t->first, true);
        out += '=';
        escape(out, t->second, true);
    }
    out += ' ';
    bool first = true;
    for (const auto& [k, v] : p.fields) {
        if (!first) out += ',';
        first = false;
        escape(out, k, true);
        out += '=';
        if (const auto* i = std::get_if<int64_t>(&v)) {
            append_int(out, *i);
            out += 'i';
        } else if (const auto* d = std::get_if<double>(&v)) {
            append_double(out, *d);
        } else if (const auto* b = std::get_if<bool>(&v)) {
            out += *b ? "true" : "false";
        } else {
            out += '"';
            for (char c : std::get<std::string>(v)) {
                if (c == '"' || c == '\\') out += '\\';
                out += c;
            }
            out += '"';
        }
    }
    if (p.time_ns != 0) {
        out += ' ';
        append_int(out, p.time_ns);
    }
}

std::string encode(const Point& p) {
    std::string out;
    out.reserve(64 + p.measurement.size() + 32 * (p.tags.size() + p.fields.size()));
    encode_to(p, out);
    return out;
}

Point canonical(Point p) {
    std::erase_if(p.tags, [](const auto& t) { return t.second.empty(); });
    std::stable_sort(p.tags.begin(), p.tags.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    return p;
}

Result<Point> decode(std::string_view line) {
    Point p;
    if (line.empty() || line.front() == '#') return parse_error(line, "empty line or comment");
    if (line.find('\n') != std::string_view::npos) return parse_error(line, "more than one line");
    size_t i = scan(line, 0, ", ");
    if (i == 0) return parse_error(line, "missing measurement");
    if (i == line.size()) return parse_error(line, "missing fields");
    p.measurement = unescape(line.substr(0, i), ", ");
    while (line[i] == ',') {
        size_t start = i + 1;
        size_t eq = scan(line, start, "=, ");
        if (eq == line.size() || line[eq] != '=') return parse_error(line, "missing tag value");
        size_t end = scan(line, eq + 1, ", ");
        if (end == line.size()) return parse_error(line, "missing fields");
        if (eq == start || end == eq + 1) return parse_error(line, "empty tag key or value");
        p.tags.emplace_back(unescape(line.substr(start, eq - start), ",= "),
                            unescape(line.substr(eq + 1, end - eq - 1), ",= "));
        i = end;
    }
    // line[i] == ' '
    ++i;
    for (;;) {
        size_t start = i;
        size_t eq = scan(line, start, "=, ");
        if (eq == line.size() || line[eq] != '=' || eq == start) return parse_error(line, "invalid field format");
        std::string key = unescape(line.substr(start, eq - start), ",= \"");
        size_t vstart = eq + 1, vend;
        if (vstart < line.size() && line[vstart] == '"') {
            // As InfluxDB scans it: \" and \\ are pairs, the first other '"' ends the string.
            vend = vstart + 1;
            while (vend < line.size() && line[vend] != '"') {
                if (line[vend] == '\\' && vend + 1 < line.size() && (line[vend + 1] == '"' || line[vend + 1] == '\\'))
                    ++vend;
                ++vend;
            }
            if (vend >= line.size()) return parse_error(line, "unterminated string");
            ++vend;
        } else {
            vend = scan(line, vstart, ", ");
        }
        auto value = parse_value(line, line.substr(vstart, vend - vstart));
        if (!value) return value.error();
        p.fields.emplace_back(std::move(key), std::move(*value));
        i = vend;
        if (i == line.size()) break;
        if (line[i] == ',') {
            ++i;
            continue;
        }
        if (line[i] != ' ') return parse_error(line, "invalid field format");
        // ' ': timestamp
        auto ts = line.substr(i + 1);
        int64_t t = 0;
        auto r = std::from_chars(ts.data(), ts.data() + ts.size(), t);
        if (ts.empty() || r.ec != std::errc() || r.ptr != ts.data() + ts.size())
            return parse_error(line, "invalid timestamp");
        if (t == 0) return parse_error(line, "timestamp 0 (encode() omits it)");
        p.time_ns = t;
        break;
    }
    return p;
}

}  // namespace signet::exporter
