// The read-only HTTP listener behind `signetd --metrics-address`: Prometheus'
// /metrics, /healthz, and (when enabled) the live graph page with its JSON.
// HTTP/1.1 over TCP on the caller's Boost.Asio event loop; the handlers run on
// that loop's thread. GET and HEAD only, no request bodies, bounded request
// headers, per-connection timeouts and a cap on concurrent connections.
//
// Routes: /metrics (text/plain; version=0.0.4), /healthz (200 while the
// event loop serves), /readyz when Handlers::ready is set (200 "ok", or 503
// "not ready": the same answer as the API socket's /readyz, so kubelet's
// httpGet probes need no curl), and when Handlers::graph_json is set: /graph (the page), /graph/app.js,
// /graph/lib.js (the bundled graph library), /api/graph (application/json).
#pragma once

#include <boost/asio/io_context.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>

#include "signet/result.h"

namespace signet::metrics {

struct Handlers {
    std::function<std::string()> metrics;     // body of GET /metrics
    std::function<std::string()> graph_json;  // body of GET /api/graph; empty function = graph disabled
    std::function<bool()> ready;              // GET /readyz: 200 when true, else 503; empty function = 404
};

// Defaults suit signetd; tests shrink them.
struct Limits {
    size_t max_connections = 64;                        // further connections are closed on accept
    std::chrono::milliseconds timeout{10000};            // to receive a request / send a response / idle keep-alive
    size_t max_header_bytes = 8 * 1024;                  // request line + headers; larger: 431
    size_t max_requests_per_connection = 1000;           // then the connection is closed after the response
};

class HttpListener {
public:
    HttpListener(boost::asio::io_context& io, Handlers handlers, Limits limits = {});
    ~HttpListener();
    HttpListener(const HttpListener&) = delete;
    HttpListener& operator=(const HttpListener&) = delete;

    // address: "127.0.0.1:9464", "[::1]:9464", "0.0.0.0:9464", ":9464" (all
    // interfaces, IPv6 and IPv4). Port 0 picks a free port (see port()).
    // Errors name the address and the reason (bad address, port in use, ...).
    Status listen(const std::string& address);
    // Stops accepting and closes open connections. Idempotent.
    void stop();
    uint16_t port() const;  // the bound port; 0 before listen()
    size_t open_connections() const;

    struct Impl;  // defined in http_listener.cpp

private:
    std::shared_ptr<Impl> impl_;
};

// Splits a listen address into (host, port). host is a numeric IPv4 or IPv6
// address without brackets, or "" for all interfaces (":9464"). Host names are
// refused: the listener binds exactly what it is told.
Result<std::pair<std::string, uint16_t>> parse_listen_address(const std::string& address);

}  // namespace signet::metrics
