// metrics::Writer against hand-written text in format 0.0.4.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cmath>
#include <limits>

#include "metrics/exposition.h"

using namespace signet::metrics;

TEST_CASE("values: integers stay integers, specials as Prometheus spells them") {
    const double inf = std::numeric_limits<double>::infinity();
    CHECK(format_value(0) == "0");
    CHECK(format_value(-0.0) == "0");
    CHECK(format_value(1) == "1");
    CHECK(format_value(5123) == "5123");
    CHECK(format_value(-42) == "-42");
    CHECK(format_value(1e15) == "1000000000000000");
    CHECK(format_value(9007199254740991.0) == "9007199254740991");  // 2^53 - 1
    CHECK(format_value(9007199254740994.0) == "9.007199254740994e+15");  // beyond 2^53: %g
    CHECK(format_value(0.25) == "0.25");
    CHECK(format_value(0.1) == "0.1");
    CHECK(format_value(0.00025) == "0.00025");
    CHECK(format_value(1e-05) == "1e-05");
    CHECK(format_value(-3.5) == "-3.5");
    CHECK(format_value(1.5e300) == "1.5e+300");
    CHECK(format_value(0.0001) == "0.0001");
    CHECK(format_value(0.0005) == "0.0005");
    CHECK(format_value(1234567.25) == "1.23456725e+06");
    CHECK(format_value(1e-300) == "1e-300");
    CHECK(format_value(inf) == "+Inf");
    CHECK(format_value(-inf) == "-Inf");
    CHECK(format_value(std::nan("")) == "NaN");
    CHECK(format_value(-std::nan("")) == "NaN");
}

TEST_CASE("escaping: label values (\\ \" newline) and HELP (\\ newline)") {
    CHECK(escape_label_value("plain") == "plain");
    CHECK(escape_label_value("C:\\dir\\") == "C:\\\\dir\\\\");
    CHECK(escape_label_value("say \"hi\"") == "say \\\"hi\\\"");
    CHECK(escape_label_value("a\nb") == "a\\nb");
    CHECK(escape_label_value("\\n") == "\\\\n");
    CHECK(escape_label_value("tab\tstays, {braces} = too") == "tab\tstays, {braces} = too");
    CHECK(escape_label_value("na\xc3\xafve") == "na\xc3\xafve");
    CHECK(escape_help("a \"quote\" stays") == "a \"quote\" stays");
    CHECK(escape_help("C:\\x\nnext") == "C:\\\\x\\nnext");
}

TEST_CASE("names") {
    CHECK(valid_metric_name("signet_flows_total"));
    CHECK(valid_metric_name("a:b_c:d"));
    CHECK(valid_metric_name("_x"));
    CHECK_FALSE(valid_metric_name(""));
    CHECK_FALSE(valid_metric_name("1abc"));
    CHECK_FALSE(valid_metric_name("a-b"));
    CHECK_FALSE(valid_metric_name("a b"));
    CHECK_FALSE(valid_metric_name("caf\xc3\xa9"));
    CHECK(valid_label_name("policy"));
    CHECK(valid_label_name("_x1"));
    CHECK_FALSE(valid_label_name("__name__"));
    CHECK_FALSE(valid_label_name("a:b"));
    CHECK_FALSE(valid_label_name("9a"));
    CHECK_FALSE(valid_label_name(""));
}

TEST_CASE("a scrape: families, labels, escaping, values") {
    Writer w;
    w.family("signet_flows_total", "counter", "Connections judged, by verdict.");
    w.sample("signet_flows_total", {{"verdict", "allowed"}}, 5123);
    w.sample("signet_flows_total", {{"verdict", "denied"}}, 0);
    w.family("signet_source_lag_seconds", "gauge", "Lag of C:\\src\nsecond line");
    w.sample("signet_source_lag_seconds", {}, 0.25);
    w.family("signet_weird", "untyped", "");
    w.sample("signet_weird", {{"a", "x\\y"}, {"b", "q\"u\"o"}, {"c", "l1\nl2"}}, std::nan(""));
    w.sample("signet_weird", {{"a", ""}}, -std::numeric_limits<double>::infinity());
    CHECK(w.errors().empty());
    const char* want =
        "# HELP signet_flows_total Connections judged, by verdict.\n"
        "# TYPE signet_flows_total counter\n"
        "signet_flows_total{verdict=\"allowed\"} 5123\n"
        "signet_flows_total{verdict=\"denied\"} 0\n"
        "# HELP signet_source_lag_seconds Lag of C:\\\\src\\nsecond line\n"
        "# TYPE signet_source_lag_seconds gauge\n"
        "signet_source_lag_seconds 0.25\n"
        "# HELP signet_weird\n"
        "# TYPE signet_weird untyped\n"
        "signet_weird{a=\"x\\\\y\",b=\"q\\\"u\\\"o\",c=\"l1\\nl2\"} NaN\n"
        "signet_weird{a=\"\"} -Inf\n";
    CHECK(w.take() == want);
    // take() started a new scrape: the same family may be written again.
    w.family("signet_flows_total", "counter", "again");
    CHECK(w.errors().empty());
    CHECK(w.take() == "# HELP signet_flows_total again\n# TYPE signet_flows_total counter\n");
}

TEST_CASE("histogram: cumulative buckets, +Inf, _sum, _count") {
    signet::Histogram h;
    for (double s : {0.00005, 0.0003, 0.002, 0.02, 3.0, 20.0}) h.observe(s);
    Writer w;
    w.family("signet_nft_program_duration_seconds", "histogram", "Time to program one batch.");
    w.histogram("signet_nft_program_duration_seconds", {{"kind", "full"}}, h);
    CHECK(w.errors().empty());
    const char* want =
        "# HELP signet_nft_program_duration_seconds Time to program one batch.\n"
        "# TYPE signet_nft_program_duration_seconds histogram\n"
        "signet_nft_program_duration_seconds_bucket{kind=\"full\",le=\"0.0001\"} 1\n"
        "signet_nft_program_duration_seconds_bucket{kind=\"full\",le=\"0.00025\"} 1\n"
        "signet_nft_program_duration_seconds_bucket{kind=\"full\",le=\"0.0005\"} 2\n"
        "signet_nft_program_duration_seconds_bucket{kind=\"full\",le=\"0.001\"} 2\n"
        "signet_nft_program_duration_seconds_bucket{kind=\"full\",le=\"0.0025\"} 3\n"
        "signet_nft_program_duration_seconds_bucket{kind=\"full\",le=\"0.005\"} 3\n"
        "signet_nft_program_duration_seconds_bucket{kind=\"full\",le=\"0.01\"} 3\n"
        "signet_nft_program_duration_seconds_bucket{kind=\"full\",le=\"0.025\"} 4\n"
        "signet_nft_program_duration_seconds_bucket{kind=\"full\",le=\"0.05\"} 4\n"
        "signet_nft_program_duration_seconds_bucket{kind=\"full\",le=\"0.1\"} 4\n"
        "signet_nft_program_duration_seconds_bucket{kind=\"full\",le=\"0.25\"} 4\n"
        "signet_nft_program_duration_seconds_bucket{kind=\"full\",le=\"0.5\"} 4\n"
        "signet_nft_program_duration_seconds_bucket{kind=\"full\",le=\"1\"} 4\n"
        "signet_nft_program_duration_seconds_bucket{kind=\"full\",le=\"10\"} 5\n"
        "signet_nft_program_duration_seconds_bucket{kind=\"full\",le=\"+Inf\"} 6\n"
        "signet_nft_program_duration_seconds_sum{kind=\"full\"} 23.02235\n"
        "signet_nft_program_duration_seconds_count{kind=\"full\"} 6\n";
    CHECK(w.take() == want);

    // Empty, without labels.
    w.family("h_seconds", "histogram", "h");
    w.histogram("h_seconds", {}, signet::Histogram{});
    std::string text = w.take();
    CHECK(text.find("h_seconds_bucket{le=\"0.0001\"} 0\n") != std::string::npos);
    CHECK(text.find("h_seconds_bucket{le=\"+Inf\"} 0\nh_seconds_sum 0\nh_seconds_count 0\n") != std::string::npos);
}

TEST_CASE("hand-written histogram samples") {
    Writer w;
    w.family("x_seconds", "histogram", "x");
    w.sample("x_seconds_bucket", {{"le", "+Inf"}}, 2);
    w.sample("x_seconds_sum", {}, 0.5);
    w.sample("x_seconds_count", {}, 2);
    CHECK(w.errors().empty());
    w.sample("x_seconds_bucket", {}, 2);                 // no le
    w.sample("x_seconds_sum", {{"le", "1"}}, 2);         // le outside a bucket
    w.sample("x_seconds", {}, 2);                        // a histogram has no bare sample
    CHECK(w.errors().size() == 3);
    CHECK(w.take() ==
          "# HELP x_seconds x\n# TYPE x_seconds histogram\n"
          "x_seconds_bucket{le=\"+Inf\"} 2\nx_seconds_sum 0.5\nx_seconds_count 2\n");
}

TEST_CASE("misuse leaves the line out and says why") {
    Writer w;
    w.sample("orphan", {}, 1);                                  // before any family
    w.family("bad-name", "gauge", "h");                         // invalid name
    w.sample("bad-name", {}, 1);                                // ... so no family is current
    w.family("signet_flows", "counter", "h");                   // counter without _total
    w.family("g", "summary", "h");                              // unsupported type
    w.family("g", "gauge", "h");
    w.sample("g", {{"__name__", "x"}}, 1);                      // reserved label name
    w.sample("g", {{"a-b", "x"}}, 1);                           // invalid label name
    w.sample("g", {{"a", "x"}, {"a", "y"}}, 1);                 // duplicate label
    w.sample("g_total", {}, 1);                                 // not this family's name
    w.family("g", "gauge", "again");                            // family twice
    w.sample("g", {}, 1);                                       // ... its samples are refused too
    w.family("c_total", "counter", "c");
    w.histogram("c_total", {}, signet::Histogram{});            // not a histogram family
    w.family("h_seconds", "histogram", "h");
    w.histogram("h_seconds", {{"le", "1"}}, signet::Histogram{});  // le is the writer's
    w.histogram("other_seconds", {}, signet::Histogram{});     // not the current family
    CHECK(w.errors().size() == 14);
    CHECK(w.errors()[3].find("_total") != std::string::npos);
    CHECK(w.take() ==
          "# HELP g h\n# TYPE g gauge\n"
          "# HELP c_total c\n# TYPE c_total counter\n"
          "# HELP h_seconds h\n# TYPE h_seconds histogram\n");
    CHECK(w.errors().empty());
}
