#include <doctest/doctest.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <string>
#include <thread>
#include <vector>

#include "ipc/server.h"
#include "signet/http_client.h"

using namespace signet;

TEST_CASE("HTTP response parsing") {
    auto r = http::parse_response("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}");
    REQUIRE(r.ok());
    CHECK(r->status == 200);
    CHECK(r->body == "{}");
    CHECK(r->content_type == "application/json");

    auto chunked = http::parse_response("HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n");
    REQUIRE(chunked.ok());
    CHECK(chunked->status == 404);
    CHECK(chunked->body == "abcde");

    auto eof = http::parse_response("HTTP/1.0 503 Busy\r\n\r\nnot ready");
    REQUIRE(eof.ok());
    CHECK(eof->body == "not ready");

    for (const char* bad : {"HTTP/1.1 200OK\r\n\r\n", "", "garbage", "HTTP/1.1 2000 OK\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
                            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
                            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"}) {
        auto b = http::parse_response(bad);
        CHECK_FALSE(b.ok());
        if (!b.ok()) CHECK(b.error().code == http::kProtocol);
    }
}

TEST_CASE("client and server over a unix socket") {
    char dir[] = "/tmp/signet-http-XXXXXX";
    REQUIRE(::mkdtemp(dir) != nullptr);
    std::string sock = std::string(dir) + "/api.sock";

    // Nobody listening yet: unreachable, quickly.
    auto down = http::request(sock, "GET", "/readyz", {}, 500);
    REQUIRE_FALSE(down.ok());
    CHECK(down.error().code == http::kUnreachable);

    boost::asio::io_context io;
    std::vector<ipc::Responder> parked;
    ipc::Server server(io, [&parked](const ipc::Request& req, ipc::Responder respond) {
        if (!req.segments.empty() && req.segments[0] == "echo") {
            std::string segs;
            for (const auto& s : req.segments) segs += "[" + s + "]";
            return respond(ipc::Response{200, req.method + " " + segs + " q=" + ipc::query_param(req.query, "x") + " " + req.body, "text/plain"});
        }
        if (req.path == "/never") {  // never answers: the client's deadline must fire
            parked.push_back(std::move(respond));
            return;
        }
        respond(ipc::json_error(404, "no"));
    });
    REQUIRE(server.listen(sock).ok());
    // A second server on the same socket is refused while the first serves.
    boost::asio::io_context io2;
    ipc::Server second(io2, [](const ipc::Request&, ipc::Responder) {});
    std::thread t([&] { io.run(); });

    auto st = second.listen(sock);
    CHECK_FALSE(st.ok());

    auto r = http::request(sock, "POST", "/echo/a%2Fb/c?x=1%202", "body!", 2000);
    REQUIRE(r.ok());
    CHECK(r->status == 200);
    CHECK(r->body == "POST [echo][a/b][c] q=1 2 body!");

    auto nf = http::request(sock, "GET", "/nothing", {}, 2000);
    REQUIRE(nf.ok());
    CHECK(nf->status == 404);
    CHECK(nf->body.find("\"error\"") != std::string::npos);

    auto slow = http::request(sock, "GET", "/never", {}, 200);
    REQUIRE_FALSE(slow.ok());
    CHECK(slow.error().code == http::kTimeout);

    boost::asio::post(io, [&] { server.stop(); io.stop(); });
    t.join();
    CHECK(::access(sock.c_str(), F_OK) != 0);  // socket file removed on stop
    ::rmdir(dir);
}
