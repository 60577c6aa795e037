// Prometheus text exposition format 0.0.4: the body of one GET /metrics.
// https://prometheus.io/docs/instrumenting/exposition_formats/
//
// A scrape writes families one after another: family() emits the # HELP and
// # TYPE lines, then sample()/histogram() emit that family's samples. Misuse
// (an invalid metric or label name, a family written twice, a sample outside
// its family) never produces invalid text: the offending line is left out and
// the problem is recorded in errors(), so a bug shows in tests and logs rather
// than as a scrape Prometheus rejects.
#pragma once

#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "signet/histogram.h"

namespace signet::metrics {

struct Label {
    std::string name, value;
};

class Writer {
public:
    // Starts a metric family: # HELP and # TYPE lines. type: "counter",
    // "gauge", "histogram" or "untyped". The name must match
    // [a-zA-Z_:][a-zA-Z0-9_:]*; a counter's name must end in "_total" (in
    // format 0.0.4 a counter's samples carry the family name itself, and
    // Prometheus' naming rules want the suffix). A family is written once.
    void family(std::string_view name, std::string_view type, std::string_view help);

    // One sample of the current family. name: the family name, or for a
    // histogram family name + "_bucket" / "_sum" / "_count". Label names
    // match [a-zA-Z_][a-zA-Z0-9_]*, do not start with "__", are unique.
    void sample(std::string_view name, const std::vector<Label>& labels, double value);

    // A whole histogram of the current (histogram) family: one _bucket line
    // per bound of signet::Histogram (cumulative, le="..."), le="+Inf" (=
    // count), then _sum and _count. `labels` must not contain "le".
    void histogram(std::string_view name, const std::vector<Label>& labels, const signet::Histogram& h);

    // The text so far; resets the writer for the next scrape.
    std::string take();

    // Problems found so far (since the last take()).
    const std::vector<std::string>& errors() const { return errors_; }

private:
    bool check_sample(std::string_view name, const std::vector<Label>& labels, bool allow_le);
    void write_sample(std::string_view name, const std::vector<Label>& labels, const Label* extra, double value);

    std::string out_;
    std::set<std::string, std::less<>> families_;
    std::string current_;       // the family samples may belong to ("" before the first family())
    std::string current_type_;
    std::vector<std::string> errors_;
};

// Validity of names per the data model.
bool valid_metric_name(std::string_view name);
bool valid_label_name(std::string_view name);

// Escaping per format 0.0.4. Label values: \ " and newline. HELP: \ and newline.
std::string escape_label_value(std::string_view v);
std::string escape_help(std::string_view v);

// A sample value (or an "le" bound) as Prometheus wants it: integral values
// below 2^53 as integers ("5123"), others with the fewest digits that read
// back exactly, %g style ("0.00025", "1e-05", "9.007199254740992e+15"), and
// "+Inf", "-Inf", "NaN".
std::string format_value(double v);

}  // namespace signet::metrics
