// parse_influx_spec: the value of `signetd --influxdb`.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "export/influx.h"

using namespace signet::exporter;
using namespace std::chrono_literals;

namespace {

// A temp file removed at scope exit.
struct TempFile {
    std::string path;
    explicit TempFile(const std::string& content) {
        char tmpl[] = "/tmp/signet-export-test-XXXXXX";
        int fd = mkstemp(tmpl);
        REQUIRE(fd >= 0);
        REQUIRE(write(fd, content.data(), content.size()) == static_cast<ssize_t>(content.size()));
        close(fd);
        path = tmpl;
    }
    ~TempFile() { unlink(path.c_str()); }
};

std::string err(const std::string& spec) {
    auto r = parse_influx_spec(spec);
    return r ? std::string("(accepted)") : r.error().message;
}

}  // namespace

TEST_CASE("spec: InfluxDB 1.x") {
    auto r = parse_influx_spec("http://127.0.0.1:8086/?db=signet");
    REQUIRE(r);
    CHECK(r->url == "http://127.0.0.1:8086");
    CHECK(r->version == 1);
    CHECK(r->database == "signet");
    CHECK(r->retention_policy.empty());
    CHECK(r->username.empty());
    CHECK(r->batch_points == 5000);
    CHECK(r->flush_interval == 1000ms);
    CHECK(r->buffer_points == 100000);
    CHECK(r->gzip);
    CHECK(r->timeout == 5000ms);
    CHECK(detail::write_url(*r) == "http://127.0.0.1:8086/write?db=signet&precision=ns");

    TempFile pw("s3cret pass\n");
    auto a = parse_influx_spec("http://influx.monitoring:8086?db=my%20db&rp=two_weeks&u=signet&password-file=" + pw.path +
                               "&batch=1000&flush=500ms&buffer=20000&gzip=false&timeout=2s");
    REQUIRE(a);
    CHECK(a->url == "http://influx.monitoring:8086");
    CHECK(a->database == "my db");
    CHECK(a->retention_policy == "two_weeks");
    CHECK(a->username == "signet");
    CHECK(a->password == "s3cret pass");
    CHECK(a->batch_points == 1000);
    CHECK(a->flush_interval == 500ms);
    CHECK(a->buffer_points == 20000);
    CHECK(!a->gzip);
    CHECK(a->timeout == 2s);
    CHECK(detail::write_url(*a) == "http://influx.monitoring:8086/write?db=my%20db&rp=two_weeks&precision=ns");
    auto d = describe(*a);
    CHECK(d.find("s3cret") == std::string::npos);
    CHECK(d.find("password=(set)") != std::string::npos);

    auto p = parse_influx_spec("http://h:8086/?db=x&u=me&p=pa%26ss");
    REQUIRE(p);
    CHECK(p->password == "pa&ss");

    auto prefix = parse_influx_spec("https://[::1]:8443/influx/?db=x&flush=1m");
    REQUIRE(prefix);
    CHECK(prefix->url == "https://[::1]:8443/influx");
    CHECK(prefix->flush_interval == 60s);
    CHECK(detail::write_url(*prefix) == "https://[::1]:8443/influx/write?db=x&precision=ns");
}

TEST_CASE("spec: InfluxDB 2.x") {
    TempFile tok("tok-ABC+/xyz==\n");
    auto r = parse_influx_spec("http://host:8086/?org=my-org&bucket=signet&token-file=" + tok.path);
    REQUIRE(r);
    CHECK(r->version == 2);
    CHECK(r->org == "my-org");
    CHECK(r->bucket == "signet");
    CHECK(r->token == "tok-ABC+/xyz==");
    CHECK(r->database.empty());
    CHECK(detail::write_url(*r) == "http://host:8086/api/v2/write?org=my-org&bucket=signet&precision=ns");
    CHECK(describe(*r).find("tok-ABC") == std::string::npos);

    auto t = parse_influx_spec("http://host:8086/?org=o&bucket=b%2Fc&token=abc==");
    REQUIRE(t);
    CHECK(t->token == "abc==");
    CHECK(t->bucket == "b/c");
    CHECK(detail::write_url(*t) == "http://host:8086/api/v2/write?org=o&bucket=b%2Fc&precision=ns");
}

TEST_CASE("spec: clear errors") {
    CHECK(err("127.0.0.1:8086/?db=x").find("must start with http:// or https://") != std::string::npos);
    CHECK(err("ftp://h/?db=x").find("must start with http://") != std::string::npos);
    CHECK(err("unix:///run/influx.sock?db=x").find("must start with http://") != std::string::npos);
    CHECK(err("http://h:8086/").find("needs db= (InfluxDB 1.x) or org= and bucket= (InfluxDB 2.x)") != std::string::npos);
    CHECK(err("http://h:8086/?db=x&dbx=1").find("unknown parameter \"dbx\"") != std::string::npos);
    CHECK(err("http://h:8086/?db=x&db=y") == "--influxdb: db given twice");
    CHECK(err("http://h:8086/?db=") == "--influxdb: db has an empty value");
    CHECK(err("http://h:8086/?db").find("has no '='") != std::string::npos);
    CHECK(err("http://h:8086/?db=x&org=o&bucket=b&token=t").find("mixes InfluxDB 1.x parameters") != std::string::npos);
    CHECK(err("http://h:8086/?rp=x") == "--influxdb: db= is required for InfluxDB 1.x");
    CHECK(err("http://h:8086/?org=o&token=t") == "--influxdb: InfluxDB 2.x needs both org= and bucket=");
    CHECK(err("http://h:8086/?org=o&bucket=b") == "--influxdb: InfluxDB 2.x needs token-file= (or token=)");
    CHECK(err("http://h:8086/?db=x&p=secret") == "--influxdb: a password needs u=");
    CHECK(err("http://h:8086/?db=x&u=me") == "--influxdb: u= needs password-file= (or p=)");
    CHECK(err("http://h:99999/?db=x") == "--influxdb: invalid port \"99999\"");
    CHECK(err("http://h:/?db=x") == "--influxdb: invalid port \"\"");
    CHECK(err("http://:8086/?db=x") == "--influxdb: invalid host \"\"");
    CHECK(err("http://h o/?db=x") == "--influxdb: invalid host \"h o\"");
    CHECK(err("http://h/a b/?db=x") == "--influxdb: invalid URL path \"/a b/\" (parameters go after '?': http://host:8086/?db=signet)");
    CHECK(err("http://h/db=x") == "--influxdb: invalid URL path (parameters go after '?': http://host:8086/?db=signet)");
    CHECK(err("http://h/?db=x#frag").find("fragment") != std::string::npos);
    CHECK(err("http://h/?db=x&batch=0").find("batch must be an integer in 1..1000000, not \"0\"") != std::string::npos);
    CHECK(err("http://h/?db=x&batch=12k").find("batch must be an integer") != std::string::npos);
    CHECK(err("http://h/?db=x&buffer=-1").find("buffer must be an integer") != std::string::npos);
    CHECK(err("http://h/?db=x&flush=500").find("flush must be a duration") != std::string::npos);
    CHECK(err("http://h/?db=x&flush=0s").find("flush must be a duration") != std::string::npos);
    CHECK(err("http://h/?db=x&flush=2h").find("at most 1h") != std::string::npos);
    CHECK(err("http://h/?db=x&timeout=1d").find("timeout must be a duration") != std::string::npos);
    CHECK(err("http://h/?db=x&gzip=maybe") == "--influxdb: gzip must be true or false, not \"maybe\"");
    CHECK(err("http://h/?db=x%zz").find("invalid %-escape") != std::string::npos);
    CHECK(err("http://h/?db=x&ca-file=/etc/hostname").find("ca-file= only applies to https://") != std::string::npos);
    CHECK(err("https://h/?db=x&ca-file=/nonexistent.pem").find("not an absolute path to a readable file") !=
          std::string::npos);
    CHECK(err("http://h/?db=x&u=me&password-file=/nonexistent/pw") ==
          "--influxdb: password-file \"/nonexistent/pw\": No such file or directory");
    CHECK(err("http://h/?db=x&u=me&password-file=relative/pw") == "--influxdb: password-file must be an absolute path");
    CHECK(err("http://h/?org=o&bucket=b&token-file=/tmp") == "--influxdb: token-file \"/tmp\": not a regular file");
    TempFile empty(" \n");
    CHECK(err("http://h/?org=o&bucket=b&token-file=" + empty.path) ==
          "--influxdb: token-file \"" + empty.path + "\": empty");
    TempFile two("line1\nline2\n");
    CHECK(err("http://h/?org=o&bucket=b&token-file=" + two.path).find("one line") != std::string::npos);
    CHECK(err("http://h/?org=o&bucket=b&token=a&token-file=" + two.path) ==
          "--influxdb: give token-file= or token=, not both");
    CHECK(err("http://h/?db=x&u=a&p=b&password-file=" + two.path) == "--influxdb: give p= or password-file=, not both");
}

TEST_CASE("spec: errors never echo secrets") {
    const std::string secret = "Sup3rS3cretValue";
    for (const std::string& spec : {
             "http://h/?db=x&u=me&p=" + secret + "&bogus=1",
             "http://h/?db=x&u=me&p=" + secret + "&flush=soon",
             "http://h/?org=o&bucket=b&token=" + secret + "&db=x",
             "http://h/?org=o&bucket=b&token=" + secret + "&gzip=perhaps",
             "http://h/?org=o&token=" + secret,
             "http://me:" + secret + "@h:8086/?db=x",
             "http://h/?db=x&p=" + secret,
             "http://h/?org=o&bucket=b&token=" + secret + "&token=" + secret,
             "http://h/?org=o&bucket=b&token=" + secret + "%0a",
             "http://h/?org=o&bucket=b&" + secret,
             "http://h:8086/db=x&u=me&p=" + secret,         // the '?' forgotten
             "http://h:8086db=x&u=me&p=" + secret,
             std::string("http://h:8086/\xff") + "db=x&p=" + secret + "&bogus=1",
         }) {
        auto r = parse_influx_spec(spec);
        REQUIRE_MESSAGE(!r, spec);
        CHECK_MESSAGE(r.error().message.find(secret) == std::string::npos, r.error().message);
        CHECK_MESSAGE(r.error().details.find(secret) == std::string::npos, r.error().details);
    }
    CHECK(err("http://me:pw@h:8086/?db=x").find("credentials in the URL are not accepted") != std::string::npos);
}
