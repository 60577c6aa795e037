#include "exposition.h"

#include <charconv>
#include <cmath>
#include <cstdio>

namespace signet::metrics {

namespace {

bool name_char(char c, bool first, bool colon) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_') return true;
    if (colon && c == ':') return true;
    return !first && c >= '0' && c <= '9';
}

bool valid_name(std::string_view name, bool colon) {
    if (name.empty()) return false;
    for (size_t i = 0; i < name.size(); ++i)
        if (!name_char(name[i], i == 0, colon)) return false;
    return true;
}

bool ends_with(std::string_view s, std::string_view suffix) {
    return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

}  // namespace

bool valid_metric_name(std::string_view name) { return valid_name(name, true); }

bool valid_label_name(std::string_view name) { return valid_name(name, false) && name.substr(0, 2) != "__"; }

std::string escape_label_value(std::string_view v) {
    std::string out;
    out.reserve(v.size());
    for (char c : v) {
        if (c == '\\') out += "\\\\";
        else if (c == '"') out += "\\\"";
        else if (c == '\n') out += "\\n";
        else out += c;
    }
    return out;
}

std::string escape_help(std::string_view v) {
    std::string out;
    out.reserve(v.size());
    for (char c : v) {
        if (c == '\\') out += "\\\\";
        else if (c == '\n') out += "\\n";
        else out += c;
    }
    return out;
}

std::string format_value(double v) {
    if (std::isnan(v)) return "NaN";
    if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
    if (v == 0) return "0";  // also -0
    constexpr double kExact = 9007199254740992.0;  // 2^53: every integer below is exact
    char buf[64];
    if (std::trunc(v) == v && std::fabs(v) < kExact) {
        auto r = std::to_chars(buf, buf + sizeof buf, static_cast<long long>(v));
        return std::string(buf, r.ptr);
    }
    // Shortest round-trip digits in %g style (as Go's FormatFloat(v, 'g', -1)
    // that Prometheus' own clients use): 0.0001, 1e-05, 1.5e+300.
    auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::general);
    return std::string(buf, r.ptr);
}

void Writer::family(std::string_view name, std::string_view type, std::string_view help) {
    // Whatever happens, samples that follow belong to this call, not to the
    // previous family.
    current_.clear();
    current_type_.clear();
    if (!valid_metric_name(name)) {
        errors_.push_back("invalid metric name \"" + std::string(name) + "\"");
        return;
    }
    if (type != "counter" && type != "gauge" && type != "histogram" && type != "untyped") {
        errors_.push_back("metric " + std::string(name) + ": unsupported type \"" + std::string(type) + "\"");
        return;
    }
    if (type == "counter" && !ends_with(name, "_total")) {
        errors_.push_back("counter " + std::string(name) + ": name must end in _total");
        return;
    }
    if (families_.count(name)) {
        errors_.push_back("metric family " + std::string(name) + " written twice");
        return;
    }
    families_.emplace(name);
    current_ = std::string(name);
    current_type_ = std::string(type);
    out_ += "# HELP ";
    out_ += name;
    if (!help.empty()) {
        out_ += ' ';
        out_ += escape_help(help);
    }
    out_ += "\n# TYPE ";
    out_ += name;
    out_ += ' ';
    out_ += type;
    out_ += '\n';
}

bool Writer::check_sample(std::string_view name, const std::vector<Label>& labels, bool allow_le) {
    std::string what = "sample " + std::string(name);
    if (current_.empty()) {
        errors_.push_back(what + ": no valid family() before it");
        return false;
    }
    bool name_ok = name == current_;
    if (current_type_ == "histogram") {
        name_ok = false;
        for (std::string_view suffix : {"_bucket", "_sum", "_count"})
            if (name.size() == current_.size() + suffix.size() && name.substr(0, current_.size()) == current_ &&
                name.substr(current_.size()) == suffix)
                name_ok = true;
    }
    if (!name_ok) {
        errors_.push_back(what + ": does not belong to the current family " + current_ + " (" + current_type_ + ")");
        return false;
    }
    for (size_t i = 0; i < labels.size(); ++i) {
        if (!valid_label_name(labels[i].name)) {
            errors_.push_back(what + ": invalid label name \"" + labels[i].name + "\"");
            return false;
        }
        if (!allow_le && current_type_ == "histogram" && labels[i].name == "le") {
            errors_.push_back(what + ": label \"le\" is reserved for histogram buckets");
            return false;
        }
        for (size_t j = 0; j < i; ++j)
            if (labels[j].name == labels[i].name) {
                errors_.push_back(what + ": label \"" + labels[i].name + "\" given twice");
                return false;
            }
    }
    return true;
}

void Writer::write_sample(std::string_view name, const std::vector<Label>& labels, const Label* extra, double value) {
    out_ += name;
    if (!labels.empty() || extra) {
        out_ += '{';
        bool first = true;
        auto add = [&](const Label& l) {
            if (!first) out_ += ',';
            first = false;
            out_ += l.name;
            out_ += "=\"";
            out_ += escape_label_value(l.value);
            out_ += '"';
        };
        for (const auto& l : labels) add(l);
        if (extra) add(*extra);
        out_ += '}';
    }
    out_ += ' ';
    out_ += format_value(value);
    out_ += '\n';
}

void Writer::sample(std::string_view name, const std::vector<Label>& labels, double value) {
    // A hand-written _bucket must carry its own le; other samples must not.
    bool bucket = current_type_ == "histogram" && ends_with(name, "_bucket");
    if (!check_sample(name, labels, bucket)) return;
    if (bucket) {
        bool has_le = false;
        for (const auto& l : labels) has_le |= l.name == "le";
        if (!has_le) {
            errors_.push_back("sample " + std::string(name) + ": a bucket needs an \"le\" label");
            return;
        }
    }
    write_sample(name, labels, nullptr, value);
}

void Writer::histogram(std::string_view name, const std::vector<Label>& labels, const signet::Histogram& h) {
    if (current_type_ != "histogram" || name != current_) {
        errors_.push_back("histogram " + std::string(name) + ": the current family is not this histogram" +
                          (current_.empty() ? std::string() : " (it is " + current_ + ")"));
        return;
    }
    std::string bucket = current_ + "_bucket";
    if (!check_sample(bucket, labels, false)) return;
    for (size_t i = 0; i < signet::Histogram::kBounds.size(); ++i) {
        Label le{"le", format_value(signet::Histogram::kBounds[i])};
        write_sample(bucket, labels, &le, static_cast<double>(h.bucket(i)));
    }
    Label inf{"le", "+Inf"};
    write_sample(bucket, labels, &inf, static_cast<double>(h.count()));
    write_sample(current_ + "_sum", labels, nullptr, h.sum());
    write_sample(current_ + "_count", labels, nullptr, static_cast<double>(h.count()));
}

std::string Writer::take() {
    std::string out = std::move(out_);
    out_.clear();
    families_.clear();
    current_.clear();
    current_type_.clear();
    errors_.clear();
    return out;
}

}  // namespace signet::metrics
