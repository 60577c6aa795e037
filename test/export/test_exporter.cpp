// The exporter without a server: buffer bound, drop-oldest accounting, a
// closed loopback port (refused connections are retried with back-off,
// nothing is written, stop() is bounded), and its pure pieces.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <thread>

#include "export/influx.h"

using namespace signet::exporter;
using namespace std::chrono_literals;

namespace {

// A loopback port with nothing listening: bound (so no one else takes it)
// but never listen()ed, so connections are refused.
struct ClosedPort {
    int fd = -1;
    int port = 0;
    ClosedPort() {
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        REQUIRE(fd >= 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
        socklen_t len = sizeof a;
        REQUIRE(getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
        port = ntohs(a.sin_port);
    }
    ~ClosedPort() { close(fd); }
};

Point flow(int i) {
    return Point{"signet_flow",
                 {{"node", "n1"}, {"local_pod", "p" + std::to_string(i)}},
                 {{"seq", int64_t{i}}},
                 1700000000000000000 + i};
}

std::vector<Point> flows(int from, int to) {
    std::vector<Point> v;
    for (int i = from; i < to; ++i) v.push_back(flow(i));
    return v;
}

void check_accounting(const InfluxExporter::Stats& s) {
    CHECK(s.submitted == s.written + s.dropped + s.rejected + s.invalid + s.buffered);
}

InfluxConfig closed_config(int port) {
    InfluxConfig c;
    c.url = "http://127.0.0.1:" + std::to_string(port);
    c.database = "signet";
    c.batch_points = 5;
    c.buffer_points = 20;
    c.flush_interval = 10ms;
    c.timeout = 500ms;
    return c;
}

}  // namespace

TEST_CASE("exporter: buffer bound drops the oldest points, counted") {
    ClosedPort closed;
    InfluxExporter ex(closed_config(closed.port));   // not started: nothing leaves the buffer
    ex.submit(flows(0, 15));
    auto s = ex.stats();
    CHECK(s.submitted == 15);
    CHECK(s.buffered == 15);
    CHECK(s.dropped == 0);
    ex.submit(flows(15, 32));
    s = ex.stats();
    CHECK(s.submitted == 32);
    CHECK(s.buffered == 20);
    CHECK(s.dropped == 12);
    CHECK(s.written == 0);
    check_accounting(s);
    auto lines = ex.peek(100);
    REQUIRE(lines.size() == 20);
    CHECK(lines.front() == encode(flow(12)));   // 0..11 dropped: the oldest
    CHECK(lines.back() == encode(flow(31)));

    // Invalid points are rejected at submit, counted, and take no room.
    Point bad = flow(99);
    bad.fields.clear();
    Point nan = flow(98);
    nan.fields = {{"x", std::nan("")}};
    ex.submit({bad, flow(32), nan});
    s = ex.stats();
    CHECK(s.invalid == 2);
    CHECK(s.submitted == 35);
    CHECK(s.dropped == 13);
    CHECK(s.buffered == 20);
    check_accounting(s);
    CHECK(ex.peek(1).front() == encode(flow(13)));

    // One submit larger than the whole buffer keeps its newest points.
    ex.submit(flows(100, 150));
    s = ex.stats();
    CHECK(s.dropped == 13 + 50);
    lines = ex.peek(100);
    REQUIRE(lines.size() == 20);
    CHECK(lines.front() == encode(flow(130)));
    check_accounting(s);
    CHECK(!ex.flush(50ms));   // never started: nothing was written
}

TEST_CASE("exporter: a refused connection is retried with back-off, nothing lost within the bound") {
    ClosedPort closed;
    InfluxExporter ex(closed_config(closed.port));
    ex.start();
    ex.submit(flows(0, 12));
    auto deadline = std::chrono::steady_clock::now() + 5s;
    while (ex.stats().batches_failed < 3 && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(10ms);
    auto s = ex.stats();
    CHECK(s.batches_failed >= 3);
    CHECK(s.retries == s.batches_failed);
    CHECK(s.written == 0);
    CHECK(s.batches_ok == 0);
    CHECK(s.buffered == 12);
    CHECK(s.dropped == 0);
    CHECK(s.last_success_unix == 0);
    CHECK_MESSAGE(s.last_error.find("127.0.0.1") != std::string::npos, s.last_error);

    // Back-off: 200 ms doubling (jittered), so about 1.2 s yields only a few attempts.
    auto before = s.batches_failed;
    std::this_thread::sleep_for(1200ms);
    auto after = ex.stats().batches_failed;
    CHECK(after - before <= 5);

    ex.submit(flows(12, 30));
    s = ex.stats();
    CHECK(s.submitted == 30);
    CHECK(s.buffered == 20);
    CHECK(s.dropped == 10);
    check_accounting(s);
    CHECK(!ex.flush(100ms));

    auto t0 = std::chrono::steady_clock::now();
    ex.stop();   // bounded by config.timeout (500 ms)
    CHECK(std::chrono::steady_clock::now() - t0 < 2s);
    s = ex.stats();
    CHECK(s.buffered == 20);
    check_accounting(s);
    ex.stop();   // idempotent
}

TEST_CASE("exporter: concurrent submitters keep exact accounting") {
    ClosedPort closed;
    auto cfg = closed_config(closed.port);
    cfg.buffer_points = 1000;
    InfluxExporter ex(cfg);
    ex.start();
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([&ex, t] {
            for (int i = 0; i < 100; ++i) ex.submit(flows(t * 10000 + i * 10, t * 10000 + i * 10 + 10));
        });
    for (auto& th : threads) th.join();
    auto s = ex.stats();
    CHECK(s.submitted == 4000);
    CHECK(s.buffered == 1000);
    CHECK(s.dropped == 3000);
    check_accounting(s);
}

TEST_CASE("exporter: pure pieces") {
    using detail::Outcome;
    CHECK(detail::classify(204) == Outcome::ok);
    CHECK(detail::classify(200) == Outcome::ok);
    CHECK(detail::classify(0) == Outcome::retry);
    CHECK(detail::classify(500) == Outcome::retry);
    CHECK(detail::classify(503) == Outcome::retry);
    CHECK(detail::classify(429) == Outcome::retry);
    CHECK(detail::classify(408) == Outcome::retry);
    CHECK(detail::classify(400) == Outcome::bad_batch);
    CHECK(detail::classify(413) == Outcome::bad_batch);
    CHECK(detail::classify(422) == Outcome::bad_batch);
    CHECK(detail::classify(401) == Outcome::config_error);
    CHECK(detail::classify(403) == Outcome::config_error);
    CHECK(detail::classify(404) == Outcome::config_error);

    CHECK(detail::server_message(R"({"error":"partial write: field type conflict"})") ==
          "partial write: field type conflict");
    CHECK(detail::server_message(R"({"code":"invalid","message":"unable to parse 'x': missing fields"})") ==
          "invalid: unable to parse 'x': missing fields");
    CHECK(detail::server_message("<html>\nBad Gateway</html>") == "<html> Bad Gateway</html>");
    CHECK(detail::server_message("").empty());

    CHECK(detail::parse_retry_after("120", 0) == std::chrono::milliseconds(120000));
    CHECK(detail::parse_retry_after(" 0 ", 0) == std::chrono::milliseconds(0));
    CHECK(detail::parse_retry_after("86400", 0) == std::chrono::milliseconds(300000));
    CHECK(detail::parse_retry_after("99999999999999999999999", 0) == std::chrono::milliseconds(300000));
    CHECK(detail::parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470) == std::chrono::milliseconds(10000));
    CHECK(detail::parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412490) == std::chrono::milliseconds(0));
    CHECK(!detail::parse_retry_after("", 0));
    CHECK(!detail::parse_retry_after("soon", 0));
    CHECK(!detail::parse_retry_after("12abc", 0));

    CHECK(detail::backoff(1, 0.0) == 100ms);
    CHECK(detail::backoff(1, 0.999) < 201ms);
    CHECK(detail::backoff(3, 0.0) == 400ms);
    CHECK(detail::backoff(3, 1.0) == 800ms);
    CHECK(detail::backoff(20, 0.0) == 15000ms);
    CHECK(detail::backoff(20, 1.0) == 30000ms);
    CHECK(detail::backoff(1000000, 0.5) <= 30000ms);

    std::string text;
    for (int i = 0; i < 1000; ++i) text += encode(flow(i)) + "\n";
    auto z = detail::gzip(text);
    REQUIRE(z);
    CHECK(z->size() < text.size() / 4);
    CHECK(static_cast<unsigned char>((*z)[0]) == 0x1f);
    CHECK(static_cast<unsigned char>((*z)[1]) == 0x8b);
    auto back = detail::gunzip(*z);
    REQUIRE(back);
    CHECK(*back == text);
    CHECK(!detail::gunzip("not gzip"));
    CHECK(!detail::gunzip(z->substr(0, z->size() / 2)));
    CHECK(!detail::gunzip(*z, 100));

    CHECK(detail::url_encode("a b&c=d/é") == "a%20b%26c%3Dd%2F%C3%A9");
    InfluxConfig v2;
    v2.url = "http://h:8086/";
    v2.version = 2;
    v2.org = "my org";
    v2.bucket = "b";
    CHECK(detail::write_url(v2) == "http://h:8086/api/v2/write?org=my%20org&bucket=b&precision=ns");
}
