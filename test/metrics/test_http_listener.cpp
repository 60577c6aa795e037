// metrics::parse_listen_address, and HttpListener's routes over loopback
// (the listener on the test's io_context, a blocking client in a thread).
#include <doctest/doctest.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

#include <atomic>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>

#include "metrics/http_listener.h"

using namespace signet::metrics;
namespace asio = boost::asio;
using tcp = asio::ip::tcp;

TEST_CASE("parse_listen_address") {
    auto ok = [](const std::string& a, const std::string& host, uint16_t port) {
        auto r = parse_listen_address(a);
        REQUIRE_MESSAGE(r.ok(), a << ": " << (r.ok() ? "" : r.error().message));
        CHECK(r->first == host);
        CHECK(r->second == port);
    };
    ok("127.0.0.1:9464", "127.0.0.1", 9464);
    ok("0.0.0.0:9464", "0.0.0.0", 9464);
    ok(":9464", "", 9464);
    ok("[::1]:9464", "::1", 9464);
    ok("[::]:1", "::", 1);
    ok("[2001:db8::7]:65535", "2001:db8::7", 65535);
    ok("127.0.0.1:0", "127.0.0.1", 0);

    auto bad = [](const std::string& a, const std::string& why) {
        auto r = parse_listen_address(a);
        REQUIRE_MESSAGE(!r.ok(), a);
        CHECK_MESSAGE(r.error().message.find(why) != std::string::npos, a << " -> " << r.error().message);
        CHECK(r.error().message.find(a) != std::string::npos);  // names the address
    };
    bad("", "empty");
    bad("9464", "missing :port");
    bad("127.0.0.1", "missing :port");
    bad("127.0.0.1:", "missing port");
    bad("127.0.0.1:65536", "out of range");
    bad("127.0.0.1:123456", "out of range");
    bad("127.0.0.1:94a", "not a number");
    bad("127.0.0.1:-1", "not a number");
    bad("127.0.0.1: 80", "not a number");
    bad("localhost:9464", "host names are not accepted");
    bad("1.2.3:9464", "not an IPv4 address");
    bad("256.1.1.1:9464", "not an IPv4 address");
    bad("::1:9464", "brackets");
    bad("[::1]", "missing :port");
    bad("[::1]9464", "missing :port");
    bad("[::1:9464", "missing ']'");
    bad("[]:9464", "not an IPv6 address");
    bad("[127.0.0.1]:9464", "not an IPv6 address");
}

namespace {

struct Reply {
    int status = 0;
    std::string head;  // status line + headers
    std::string body;
    std::string header(const std::string& name) const {
        std::string needle = "\r\n" + name + ": ";
        size_t p = head.find(needle);
        if (p == std::string::npos) return "<none>";
        p += needle.size();
        return head.substr(p, head.find("\r\n", p) - p);
    }
};

// Sends raw bytes, reads until the server closes.
Reply talk(uint16_t port, const std::string& raw) {
    asio::io_context io;
    tcp::socket s(io);
    s.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
    asio::write(s, asio::buffer(raw));
    std::string all;
    boost::system::error_code ec;
    asio::read(s, asio::dynamic_buffer(all), ec);
    Reply r;
    size_t end = all.find("\r\n\r\n");
    r.head = all.substr(0, end);
    if (end != std::string::npos) r.body = all.substr(end + 4);
    if (all.size() > 12) r.status = std::stoi(all.substr(9, 3));
    return r;
}

Reply get(uint16_t port, const std::string& path, const std::string& method = "GET") {
    return talk(port, method + " " + path + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
}

// Runs `client` in a thread while the listener serves on this thread.
void serve(HttpListener& l, asio::io_context& io, const std::function<void(uint16_t)>& client) {
    std::thread t([&] {
        client(l.port());
        asio::post(io, [&] { l.stop(); });
    });
    io.run();
    t.join();
}

}  // namespace

TEST_CASE("routes, HEAD, 404, 405, handler failures") {
    asio::io_context io;
    int scrapes = 0;
    Handlers h;
    h.metrics = [&] { return "# HELP a_total x\n# TYPE a_total counter\na_total " + std::to_string(++scrapes) + "\n"; };
    HttpListener l(io, h);
    REQUIRE(l.listen("127.0.0.1:0").ok());
    CHECK(l.port() != 0);
    serve(l, io, [](uint16_t port) {
        auto r = get(port, "/metrics");
        CHECK(r.status == 200);
        CHECK(r.header("Content-Type") == "text/plain; version=0.0.4; charset=utf-8");
        CHECK(r.header("Cache-Control") == "no-store");
        CHECK(r.body == "# HELP a_total x\n# TYPE a_total counter\na_total 1\n");
        CHECK(get(port, "/metrics?x=1").body.find("a_total 2\n") != std::string::npos);

        auto head = get(port, "/metrics", "HEAD");
        CHECK(head.status == 200);
        CHECK(head.header("Content-Length") == std::to_string(r.body.size()));
        CHECK(head.body.empty());

        auto hz = get(port, "/healthz");
        CHECK(hz.status == 200);
        CHECK(hz.body == "ok\n");

        for (const char* p : {"/", "/metrics/", "/graph", "/graph/app.js", "/graph/lib.js", "/api/graph", "/x", "/readyz"}) {
            CHECK_MESSAGE(get(port, p).status == 404, p);  // graph disabled: no graph routes; no ready handler
        }
        for (const char* m : {"POST", "PUT", "DELETE", "OPTIONS", "PATCH"}) {
            auto r405 = get(port, "/metrics", m);
            CHECK_MESSAGE(r405.status == 405, m);
            CHECK(r405.header("Allow") == "GET, HEAD");
        }
        auto body = talk(port, "GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nabcd");
        CHECK(body.status == 413);
        auto chunked = talk(port, "GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
        CHECK(chunked.status == 413);
        auto garbage = talk(port, "NOT HTTP AT ALL\r\n\r\n");
        CHECK(garbage.status == 400);
        auto huge = talk(port, "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(20000, 'a') + "\r\n\r\n");
        CHECK(huge.status == 431);
        auto absolute = talk(port, "GET http://x/metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        CHECK(absolute.status == 400);

        // Keep-alive: two requests, one connection.
        auto two = talk(port, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n"
                                  "Connection: close\r\n\r\n");
        CHECK(two.status == 200);
        CHECK(two.body.find("ok\nHTTP/1.1 200 OK\r\n") != std::string::npos);
    });
    CHECK(scrapes == 3);  // HEAD calls the handler too (for Content-Length)
}

TEST_CASE("/readyz follows the ready handler (kubelet's httpGet probes); /healthz always answers") {
    asio::io_context io;
    std::atomic<bool> ready{false};
    std::atomic<bool> throws{false};
    Handlers h;
    h.metrics = [] { return std::string(); };
    h.ready = [&] {
        if (throws) throw std::runtime_error("boom");
        return ready.load();
    };
    HttpListener l(io, h);
    REQUIRE(l.listen("127.0.0.1:0").ok());
    serve(l, io, [&](uint16_t port) {
        auto r = get(port, "/readyz");
        CHECK(r.status == 503);
        CHECK(r.body == "not ready\n");
        CHECK(r.header("Cache-Control") == "no-store");
        CHECK(get(port, "/healthz").status == 200);  // alive while not ready
        ready = true;
        r = get(port, "/readyz");
        CHECK(r.status == 200);
        CHECK(r.body == "ok\n");
        CHECK(get(port, "/readyz?verbose=1").status == 200);
        auto head = get(port, "/readyz", "HEAD");
        CHECK(head.status == 200);
        CHECK(head.body.empty());
        CHECK(get(port, "/readyz", "POST").status == 405);
        throws = true;
        CHECK(get(port, "/readyz").status == 500);
    });
}

TEST_CASE("graph routes serve the embedded page; a throwing handler answers 500") {
    asio::io_context io;
    Handlers h;
    h.metrics = []() -> std::string { throw std::runtime_error("boom"); };
    h.graph_json = [] { return std::string("{\"pods\":[]}"); };
    HttpListener l(io, h);
    REQUIRE(l.listen("127.0.0.1:0").ok());
    serve(l, io, [](uint16_t port) {
        CHECK(get(port, "/metrics").status == 500);
        auto page = get(port, "/graph");
        CHECK(page.status == 200);
        CHECK(page.header("Content-Type") == "text/html; charset=utf-8");
        CHECK(page.header("Content-Security-Policy").find("script-src 'self'") != std::string::npos);
        CHECK(page.body.find("<pre id=\"signet-drawn\"") != std::string::npos);
        auto app = get(port, "/graph/app.js");
        CHECK(app.status == 200);
        CHECK(app.header("Content-Type") == "text/javascript; charset=utf-8");
        CHECK(app.body.find("/api/graph") != std::string::npos);
        auto lib = get(port, "/graph/lib.js");
        CHECK(lib.status == 200);
        CHECK(lib.body.size() > 100000);
        CHECK(lib.body.find("Cytoscape Consortium") != std::string::npos);
        auto api = get(port, "/api/graph");
        CHECK(api.header("Content-Type") == "application/json");
        CHECK(api.body == "{\"pods\":[]}");
        CHECK(get(port, "/graph/").status == 404);
        CHECK(get(port, "/graph/index.html").status == 404);
    });
}

TEST_CASE("listen errors: bad address, port in use, twice; stop() closes idle connections") {
    asio::io_context io;
    HttpListener a(io, Handlers{});
    auto st = a.listen("nonsense");
    REQUIRE_FALSE(st.ok());
    CHECK(st.error().message.find("invalid listen address \"nonsense\"") != std::string::npos);

    HttpListener b(io, Handlers{});
    REQUIRE(b.listen("127.0.0.1:0").ok());
    HttpListener c(io, Handlers{});
    std::string addr = "127.0.0.1:" + std::to_string(b.port());
    auto in_use = c.listen(addr);
    REQUIRE_FALSE(in_use.ok());
    CHECK(in_use.error().message == "cannot listen on " + addr + ": port " + std::to_string(b.port()) +
                                        " is already in use");
    CHECK_FALSE(b.listen("127.0.0.1:0").ok());

    // An idle connection (no request yet) is closed by stop().
    std::string got = "unset";
    asio::steady_timer poll(io);
    std::function<void()> stop_when_accepted = [&] {
        if (b.open_connections() > 0) {
            b.stop();
            return;
        }
        poll.expires_after(std::chrono::milliseconds(2));
        poll.async_wait([&](boost::system::error_code) { stop_when_accepted(); });
    };
    std::thread t([&] {
        asio::io_context cio;
        tcp::socket s(cio);
        s.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), b.port()));
        // Stop once the listener has accepted the connection.
        asio::post(io, [&] { stop_when_accepted(); });
        std::string all;
        boost::system::error_code ec;
        asio::read(s, asio::dynamic_buffer(all), ec);
        got = ec == asio::error::eof ? "eof:" + all : ec.message();
    });
    io.run();
    t.join();
    CHECK(got == "eof:");
    CHECK(b.open_connections() == 0);
}
