// Line protocol: encoding and escaping against hand-written lines (rules and
// examples from InfluxDB's line protocol reference; the escaping was also
// checked against the real influxd 1.6, see test_influxdb.cpp), validation.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>

#include "export/line_protocol.h"

using namespace signet::exporter;

namespace {
Point pt(std::string m, std::vector<std::pair<std::string, std::string>> tags,
         std::vector<std::pair<std::string, FieldValue>> fields, int64_t t = 0) {
    return Point{std::move(m), std::move(tags), std::move(fields), t};
}
std::string error_of(const Point& p) {
    auto st = validate(p);
    return st ? std::string("(valid)") : st.error().message;
}
}  // namespace

TEST_CASE("line protocol: the reference examples") {
    CHECK(encode(pt("cpu", {{"host", "server01"}, {"region", "us-west"}}, {{"value", 0.64}}, 1434055562000000000)) ==
          "cpu,host=server01,region=us-west value=0.64 1434055562000000000");
    CHECK(encode(pt("weather", {{"location", "us-midwest"}}, {{"temperature", int64_t{82}}}, 1465839830100400200)) ==
          "weather,location=us-midwest temperature=82i 1465839830100400200");
    CHECK(encode(pt("weather", {}, {{"temperature", 82.0}})) == "weather temperature=82");
    CHECK(encode(pt("weather", {{"location", "us-midwest"}}, {{"temperature", std::string("too warm")}})) ==
          "weather,location=us-midwest temperature=\"too warm\"");
    CHECK(encode(pt("weather", {}, {{"too_hot", true}, {"too_cold", false}})) == "weather too_hot=true,too_cold=false");
}

TEST_CASE("line protocol: tags sorted by key, empty values skipped, fields in order") {
    CHECK(encode(pt("m", {{"region", "eu"}, {"host", "a"}, {"az", ""}, {"Zone", "z"}}, {{"b", int64_t{1}}, {"a", int64_t{2}}})) ==
          "m,Zone=z,host=a,region=eu b=1i,a=2i");
    CHECK(encode(pt("m", {{"only", ""}}, {{"f", int64_t{1}}})) == "m f=1i");
}

TEST_CASE("line protocol: escaping per position") {
    // Measurement: comma and space; '=' and '"' stay.
    CHECK(encode(pt("my Measurement", {}, {{"f", int64_t{1}}})) == "my\\ Measurement f=1i");
    CHECK(encode(pt("wea,ther", {}, {{"f", int64_t{1}}})) == "wea\\,ther f=1i");
    CHECK(encode(pt("a=b\"c", {}, {{"f", int64_t{1}}})) == "a=b\"c f=1i");
    // Tag keys and values: comma, equals sign, space; '"' stays.
    CHECK(encode(pt("m", {{"location place", "us,mid west"}, {"k=v", "a=b\"c"}}, {{"f", int64_t{1}}})) ==
          "m,k\\=v=a\\=b\"c,location\\ place=us\\,mid\\ west f=1i");
    // Field keys: comma, equals sign, space.
    CHECK(encode(pt("m", {}, {{"temp=rature", 1.5}, {"a b,c", int64_t{2}}})) == "m temp\\=rature=1.5,a\\ b\\,c=2i");
    // String field values: double quote and backslash; commas, spaces, '=' stay.
    CHECK(encode(pt("m", {}, {{"s", std::string("too \"hot\"")}})) == "m s=\"too \\\"hot\\\"\"");
    CHECK(encode(pt("m", {}, {{"s", std::string("C:\\path\\")}})) == "m s=\"C:\\\\path\\\\\"");
    CHECK(encode(pt("m", {}, {{"s", std::string("a, b=c")}})) == "m s=\"a, b=c\"");
    CHECK(encode(pt("m", {}, {{"s", std::string()}})) == "m s=\"\"");
    // A single backslash before an ordinary character is a literal.
    CHECK(encode(pt("a\\b", {{"t", "x\\y"}}, {{"f\\g", int64_t{1}}})) == "a\\b,t=x\\y f\\g=1i");
    // Non-ASCII passes through.
    CHECK(encode(pt("m", {{"pod", "café"}}, {{"f", int64_t{1}}})) == "m,pod=café f=1i");
}

TEST_CASE("line protocol: numbers, booleans, timestamps") {
    CHECK(encode(pt("m", {}, {{"i", int64_t{-42}}})) == "m i=-42i");
    CHECK(encode(pt("m", {}, {{"i", std::numeric_limits<int64_t>::max()}})) == "m i=9223372036854775807i");
    CHECK(encode(pt("m", {}, {{"i", std::numeric_limits<int64_t>::min()}})) == "m i=-9223372036854775808i");
    CHECK(encode(pt("m", {}, {{"d", 0.1}})) == "m d=0.1");
    CHECK(encode(pt("m", {}, {{"d", 1e300}})) == "m d=1e+300");
    CHECK(encode(pt("m", {}, {{"d", -1.5e-7}})) == "m d=-1.5e-07");
    CHECK(encode(pt("m", {}, {{"d", -0.0}})) == "m d=-0");
    CHECK(encode(pt("m", {}, {{"d", 0.1 + 0.2}})) == "m d=0.30000000000000004");
    CHECK(encode(pt("m", {}, {{"b", true}}, -1)) == "m b=true -1");
    CHECK(encode(pt("m", {}, {{"b", false}}, 0)) == "m b=false");
}

TEST_CASE("line protocol: signet_flow as signet writes it") {
    Point p = pt("signet_flow",
                 {{"node", "node-1"}, {"direction", "ingress"}, {"verdict", "allowed"}, {"local_namespace", "prod"},
                  {"local_pod", "backend-7d9f"}, {"peer_kind", "pod"}, {"peer_namespace", "prod"},
                  {"peer_pod", "frontend-x1"}, {"proto", "TCP"}, {"port", "8080"}, {"policy", "prod/allow-frontend"},
                  {"authenticated", "true"}},
                 {{"connections", int64_t{3}}, {"packets_out", int64_t{10}}, {"bytes_out", int64_t{1200}},
                  {"packets_in", int64_t{12}}, {"bytes_in", int64_t{5400}}, {"src", std::string("10.1.0.7")},
                  {"dst", std::string("10.1.0.9")}, {"first_seen_ns", int64_t{1700000000000000000}},
                  {"last_seen_ns", int64_t{1700000009000000000}}},
                 1700000010000000000);
    CHECK(validate(p));
    CHECK(encode(p) ==
          "signet_flow,authenticated=true,direction=ingress,local_namespace=prod,local_pod=backend-7d9f,node=node-1,"
          "peer_kind=pod,peer_namespace=prod,peer_pod=frontend-x1,policy=prod/allow-frontend,port=8080,proto=TCP,"
          "verdict=allowed connections=3i,packets_out=10i,bytes_out=1200i,packets_in=12i,bytes_in=5400i,"
          "src=\"10.1.0.7\",dst=\"10.1.0.9\",first_seen_ns=1700000000000000000i,last_seen_ns=1700000009000000000i "
          "1700000010000000000");
}

TEST_CASE("validate: what cannot be written is refused with a clear error") {
    auto ok = pt("m", {{"t", "v"}}, {{"f", int64_t{1}}});
    CHECK(validate(ok));
    CHECK(validate(pt("m", {{"t", ""}}, {{"f", int64_t{1}}})));   // empty tag values are skipped, fine

    CHECK(error_of(pt("", {}, {{"f", int64_t{1}}})) == "point: no measurement");
    CHECK(error_of(pt("m", {}, {})) == "measurement \"m\": no fields");
    CHECK(error_of(pt("m", {{"", "v"}}, {{"f", int64_t{1}}})) == "measurement \"m\": empty tag key");
    CHECK(error_of(pt("m", {}, {{"", int64_t{1}}})) == "measurement \"m\": empty field key");
    CHECK(error_of(pt("m", {}, {{"f", std::nan("")}})) == "field \"f\": NaN cannot be written to InfluxDB");
    CHECK(error_of(pt("m", {}, {{"f", std::numeric_limits<double>::infinity()}})) ==
          "field \"f\": infinity cannot be written to InfluxDB");
    CHECK(error_of(pt("m", {}, {{"f", -std::numeric_limits<double>::infinity()}})) ==
          "field \"f\": infinity cannot be written to InfluxDB");
    CHECK(error_of(pt("m\nx", {}, {{"f", int64_t{1}}})).find("newlines cannot be represented") != std::string::npos);
    CHECK(error_of(pt("m", {{"t", "a\nb"}}, {{"f", int64_t{1}}})).find("newlines") != std::string::npos);
    CHECK(error_of(pt("m", {{"t\r", "a"}}, {{"f", int64_t{1}}})).find("newlines") != std::string::npos);
    CHECK(error_of(pt("m", {}, {{"f\n", int64_t{1}}})).find("newlines") != std::string::npos);
    CHECK(error_of(pt("m", {}, {{"f", std::string("two\nlines")}})) ==
          "field \"f\" value \"two\\nlines\": newlines cannot be represented in line protocol");
    CHECK(error_of(pt("m", {{"t", "\xff"}}, {{"f", int64_t{1}}})).find("not valid UTF-8") != std::string::npos);
    CHECK(error_of(pt("m", {}, {{"f", std::string("\xc3")}})).find("not valid UTF-8") != std::string::npos);
    CHECK(error_of(pt("m", {}, {{"f", std::string("\xed\xa0\x80")}})).find("not valid UTF-8") != std::string::npos);
    CHECK(error_of(pt("#m", {}, {{"f", int64_t{1}}})).find("comment") != std::string::npos);
    CHECK(error_of(pt("m\\", {}, {{"f", int64_t{1}}})).find("trailing backslash") != std::string::npos);
    CHECK(error_of(pt("m", {{"t", "a\\,b"}}, {{"f", int64_t{1}}})).find("backslash before ','") != std::string::npos);
    CHECK(error_of(pt("m", {{"t", "a\\\\b"}}, {{"f", int64_t{1}}})).find("backslash before '\\'") != std::string::npos);
    CHECK(error_of(pt("m", {}, {{"f\\\"", int64_t{1}}})).find("backslash before '\"'") != std::string::npos);
    CHECK(error_of(pt("m", {{"t", "1"}, {"t", "2"}}, {{"f", int64_t{1}}})) == "duplicate tag key \"t\"");
    CHECK(error_of(pt("m", {}, {{"f", int64_t{1}}, {"f", 2.0}})) == "duplicate field key \"f\"");
    CHECK(error_of(pt("m", {{"time", "1"}}, {{"f", int64_t{1}}})) == "tag key \"time\" is reserved");
    CHECK(error_of(pt("m", {}, {{"time", int64_t{1}}})) == "field key \"time\" is reserved");
    CHECK(error_of(pt("m", {}, {{"_measurement", int64_t{1}}})) == "field key \"_measurement\" is reserved");
    CHECK(error_of(pt("m", {}, {{"f", std::string(70000, 'x')}})) == "field \"f\": string longer than 65535 bytes");
    CHECK(error_of(pt("m", {{"t", std::string(70000, 'x')}}, {{"f", int64_t{1}}})) ==
          "measurement \"m\": series key longer than 65535 bytes");
    CHECK(error_of(pt("m", {}, {{"f", int64_t{1}}}, std::numeric_limits<int64_t>::min())) ==
          "timestamp -9223372036854775808 out of InfluxDB's range");
    CHECK(validate(pt("m", {}, {{"f", int64_t{1}}}, std::numeric_limits<int64_t>::min() + 2)));
}

TEST_CASE("decode: reads what InfluxDB reads, round trips encode") {
    auto d = decode("cpu,host=server01,region=us-west value=0.64,n=3i,up=t,s=\"a \\\"q\\\" \\\\ b\" 1434055562000000000");
    REQUIRE(d);
    CHECK(d->measurement == "cpu");
    CHECK(d->tags == std::vector<std::pair<std::string, std::string>>{{"host", "server01"}, {"region", "us-west"}});
    REQUIRE(d->fields.size() == 4);
    CHECK(std::get<double>(d->fields[0].second) == 0.64);
    CHECK(std::get<int64_t>(d->fields[1].second) == 3);
    CHECK(std::get<bool>(d->fields[2].second) == true);
    CHECK(std::get<std::string>(d->fields[3].second) == "a \"q\" \\ b");
    CHECK(d->time_ns == 1434055562000000000);

    auto e = decode("my\\ Meas\\,urement,location\\ place=us\\,mid\\ west,k\\=v=a\\=b temp\\=rature=1.5");
    REQUIRE(e);
    CHECK(e->measurement == "my Meas,urement");
    CHECK(e->tags == std::vector<std::pair<std::string, std::string>>{{"location place", "us,mid west"}, {"k=v", "a=b"}});
    CHECK(e->fields[0].first == "temp=rature");
    CHECK(e->time_ns == 0);

    for (const char* bad : {"", "# comment", "m", "m,t=1", "m,t f=1", "m f", "m f=", "m f=1x", "m f=\"open",
                            "m f=inf", "m f=1i 12a", "m f=1 0", "m f=1\nm f=2", ",t=1 f=1", "m f=\"x\"y"})
        CHECK_MESSAGE(!decode(bad), bad);

    Point p = pt("we ird,m", {{"z", "1"}, {"a b", "c,d=e"}, {"empty", ""}},
                 {{"s", std::string("\"\\ ,=")}, {"d", 2.5}, {"i", int64_t{-7}}, {"b", false}}, 42);
    REQUIRE(validate(p));
    auto back = decode(encode(p));
    REQUIRE(back);
    CHECK(*back == canonical(p));
}
