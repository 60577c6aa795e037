#include "http_listener.h"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ip/v6_only.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include <algorithm>
#include <array>
#include <cerrno>
#include <exception>
#include <unordered_map>

#include "signet/log.h"
#include "web_assets.h"

namespace signet::metrics {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;
using tcp = asio::ip::tcp;

Result<std::pair<std::string, uint16_t>> parse_listen_address(const std::string& address) {
    auto bad = [&](const std::string& why) {
        return make_error(EINVAL, "invalid listen address \"" + address + "\": " + why +
                                      " (examples: 127.0.0.1:9464, [::1]:9464, 0.0.0.0:9464, :9464)");
    };
    if (address.empty()) return bad("empty");
    std::string host, port;
    if (address[0] == '[') {
        size_t close = address.find(']');
        if (close == std::string::npos) return bad("missing ']'");
        host = address.substr(1, close - 1);
        if (close + 1 >= address.size() || address[close + 1] != ':') return bad("missing :port after ']'");
        port = address.substr(close + 2);
        boost::system::error_code ec;
        asio::ip::make_address_v6(host, ec);
        if (host.empty() || ec) return bad("\"" + host + "\" is not an IPv6 address");
    } else {
        size_t colon = address.rfind(':');
        if (colon == std::string::npos) return bad("missing :port");
        host = address.substr(0, colon);
        port = address.substr(colon + 1);
        if (host.find(':') != std::string::npos) return bad("an IPv6 address goes in brackets, as in [::1]:9464");
        if (!host.empty()) {
            boost::system::error_code ec;
            asio::ip::make_address_v4(host, ec);
            if (ec) return bad("\"" + host + "\" is not an IPv4 address (host names are not accepted)");
        }
    }
    if (port.empty()) return bad("missing port");
    if (port.size() > 5) return bad("port out of range");
    unsigned value = 0;
    for (char c : port) {
        if (c < '0' || c > '9') return bad("port \"" + port + "\" is not a number");
        value = value * 10 + static_cast<unsigned>(c - '0');
    }
    if (value > 65535) return bad("port out of range");
    return std::make_pair(host, static_cast<uint16_t>(value));
}

namespace detail {
struct Session;
}

struct HttpListener::Impl : std::enable_shared_from_this<HttpListener::Impl> {
    Impl(asio::io_context& io, Handlers h, Limits l) : io(io), acceptor(io), handlers(std::move(h)), limits(l) {}
    asio::io_context& io;
    tcp::acceptor acceptor;
    Handlers handlers;
    Limits limits;
    bool listening = false;
    bool stopped = false;
    uint16_t port = 0;
    uint64_t next_id = 0;
    std::unordered_map<uint64_t, std::weak_ptr<detail::Session>> sessions;

    void accept();
};

namespace detail {

struct Reply {
    bhttp::status status = bhttp::status::ok;
    std::string content_type = "text/plain; charset=utf-8";
    std::string body;
    bool no_store = false;  // dynamic content
    bool page = false;      // the HTML page: add a Content-Security-Policy
    bool allow = false;     // 405: add Allow
};

Reply text(bhttp::status status, std::string body) {
    Reply r;
    r.status = status;
    r.body = std::move(body);
    return r;
}

// Calls a handler; a handler that throws answers 500 (and is logged), it does
// not take the event loop down.
bool call(const std::function<std::string()>& fn, std::string* out, const char* what) {
    try {
        *out = fn();
        return true;
    } catch (const std::exception& e) {
        log::error("metrics", std::string(what) + " handler failed: " + e.what());
    } catch (...) {
        log::error("metrics", std::string(what) + " handler failed");
    }
    return false;
}

Reply route(const Handlers& h, std::string_view path) {
    if (path == "/metrics") {
        if (!h.metrics) return text(bhttp::status::not_found, "not found\n");
        Reply r;
        if (!call(h.metrics, &r.body, "/metrics")) return text(bhttp::status::internal_server_error, "internal error\n");
        r.content_type = "text/plain; version=0.0.4; charset=utf-8";
        r.no_store = true;
        return r;
    }
    if (path == "/healthz") return text(bhttp::status::ok, "ok\n");
    if (path == "/readyz" && h.ready) {
        bool ready = false;
        try {
            ready = h.ready();
        } catch (...) {
            log::error("metrics", "/readyz handler failed");
            return text(bhttp::status::internal_server_error, "internal error\n");
        }
        Reply r = ready ? text(bhttp::status::ok, "ok\n") : text(bhttp::status::service_unavailable, "not ready\n");
        r.no_store = true;
        return r;
    }
    if (h.graph_json) {
        if (path == "/api/graph") {
            Reply r;
            if (!call(h.graph_json, &r.body, "/api/graph"))
                return text(bhttp::status::internal_server_error, "internal error\n");
            r.content_type = "application/json";
            r.no_store = true;
            return r;
        }
        std::string_view asset;
        if (path == "/graph") asset = "index.html";
        else if (path == "/graph/app.js") asset = "app.js";
        else if (path == "/graph/lib.js") asset = "lib.js";
        if (!asset.empty()) {
            const web::Asset* a = web::find_asset(asset);
            if (!a) return text(bhttp::status::not_found, "not found\n");
            Reply r;
            r.content_type = std::string(a->content_type);
            r.body = std::string(a->bytes);
            r.page = asset == "index.html";
            return r;
        }
    }
    return text(bhttp::status::not_found, "not found\n");
}

Reply method_not_allowed() {
    Reply r = text(bhttp::status::method_not_allowed, "method not allowed: this listener is read-only\n");
    r.allow = true;
    return r;
}

struct Session : std::enable_shared_from_this<Session> {
    Session(tcp::socket s, std::shared_ptr<HttpListener::Impl> l, uint64_t id)
        : socket(std::move(s)),
          timer(socket.get_executor()),
          listener(std::move(l)),
          id(id),
          buffer(listener->limits.max_header_bytes + 4096) {}
    ~Session() { listener->sessions.erase(id); }

    tcp::socket socket;
    asio::steady_timer timer;
    std::shared_ptr<HttpListener::Impl> listener;
    uint64_t id;
    beast::flat_buffer buffer;
    std::unique_ptr<bhttp::request_parser<bhttp::empty_body>> parser;
    bhttp::response<bhttp::string_body> response;
    size_t served = 0;
    bool closed = false;
    static constexpr size_t kMaxDrain = 256 * 1024;
    std::array<char, 4096> scratch{};
    size_t drained = 0;

    void arm_timer() {
        timer.expires_after(listener->limits.timeout);
        timer.async_wait([self = shared_from_this()](boost::system::error_code ec) {
            if (!ec) self->close();
        });
    }

    void read() {
        parser = std::make_unique<bhttp::request_parser<bhttp::empty_body>>();
        parser->header_limit(static_cast<uint32_t>(listener->limits.max_header_bytes));
        parser->body_limit(0);
        arm_timer();
        bhttp::async_read_header(socket, buffer, *parser, [self = shared_from_this()](beast::error_code ec, size_t) {
            self->on_header(ec);
        });
    }

    void on_header(beast::error_code ec) {
        if (closed) return;
        if (ec == bhttp::error::end_of_stream || ec == asio::error::eof || ec == asio::error::operation_aborted ||
            ec == asio::error::connection_reset || ec == asio::error::bad_descriptor) {
            close();
            return;
        }
        if (ec == bhttp::error::body_limit) {  // a Content-Length > 0: bodies are never read
            auto m = parser->get().method();
            if (m != bhttp::verb::get && m != bhttp::verb::head) {  // the request line is parsed by now
                send(method_not_allowed(), false, false);
                return;
            }
            send(text(bhttp::status::payload_too_large, "request bodies are not accepted\n"), false, false);
            return;
        }
        if (ec == bhttp::error::header_limit || ec == bhttp::error::buffer_overflow) {
            send(text(bhttp::status::request_header_fields_too_large, "request header too large\n"), false, false);
            return;
        }
        if (ec) {
            send(text(bhttp::status::bad_request, "malformed request: " + ec.message() + "\n"), false, false);
            return;
        }
        timer.cancel();
        const auto& req = parser->get();
        bool head = req.method() == bhttp::verb::head;
        if (req.method() != bhttp::verb::get && !head) {
            send(method_not_allowed(), false, head);
            return;
        }
        if (!parser->is_done() || parser->chunked() || parser->content_length().value_or(0) > 0) {
            send(text(bhttp::status::payload_too_large, "request bodies are not accepted\n"), false, head);
            return;
        }
        std::string_view target(req.target().data(), req.target().size());
        if (target.empty() || target[0] != '/') {
            send(text(bhttp::status::bad_request, "request target must be an absolute path\n"), false, head);
            return;
        }
        std::string_view path = target.substr(0, target.find('?'));
        ++served;
        bool keep_alive = req.keep_alive() && served < listener->limits.max_requests_per_connection;
        send(route(listener->handlers, path), keep_alive, head);
    }

    void send(Reply r, bool keep_alive, bool head) {
        response = {};
        response.version(parser && parser->get().version() == 10 ? 10 : 11);
        response.result(r.status);
        response.set(bhttp::field::server, "signetd/" SIGNET_VERSION);
        response.set(bhttp::field::content_type, r.content_type);
        response.set("X-Content-Type-Options", "nosniff");
        response.set(bhttp::field::cache_control, r.no_store ? "no-store" : "no-cache");
        if (r.allow) response.set(bhttp::field::allow, "GET, HEAD");
        if (r.page) {
            // The page loads its two scripts and its JSON from here, nothing else.
            response.set("Content-Security-Policy",
                         "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self' "
                         "'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; "
                         "form-action 'none'");
            response.set("Referrer-Policy", "no-referrer");
        }
        response.keep_alive(keep_alive);
        if (head) {
            response.content_length(r.body.size());
        } else {
            response.body() = std::move(r.body);
            response.prepare_payload();
        }
        arm_timer();
        bhttp::async_write(socket, response, [self = shared_from_this(), keep_alive](beast::error_code ec, size_t) {
            if (ec || self->closed) {
                self->close();
                return;
            }
            if (!keep_alive) {
                self->linger();
                return;
            }
            self->read();
        });
    }

    // Closing with unread request bytes (a refused body, an oversized
    // header) would make the kernel send RST, which can destroy the response
    // before the client reads it. So: FIN first, then read and discard what
    // the client still sends (bounded in bytes and time), then close.
    void linger() {
        boost::system::error_code ignored;
        socket.shutdown(tcp::socket::shutdown_send, ignored);
        timer.expires_after(std::min<std::chrono::milliseconds>(listener->limits.timeout, std::chrono::seconds(2)));
        timer.async_wait([self = shared_from_this()](boost::system::error_code ec) {
            if (!ec) self->close();
        });
        drain();
    }

    void drain() {
        socket.async_read_some(asio::buffer(scratch), [self = shared_from_this()](beast::error_code ec, size_t n) {
            self->drained += n;
            if (ec || self->closed || self->drained > kMaxDrain) {
                self->close();
                return;
            }
            self->drain();
        });
    }

    void close() {
        if (closed) return;
        closed = true;
        boost::system::error_code ignored;
        timer.cancel();
        socket.shutdown(tcp::socket::shutdown_both, ignored);
        socket.close(ignored);
    }
};

}  // namespace detail

void HttpListener::Impl::accept() {
    if (stopped) return;
    acceptor.async_accept([self = shared_from_this()](boost::system::error_code ec, tcp::socket sock) {
        if (self->stopped) return;
        if (!ec) {
            if (self->sessions.size() >= self->limits.max_connections) {
                boost::system::error_code ignored;
                sock.close(ignored);
            } else {
                uint64_t id = ++self->next_id;
                auto s = std::make_shared<detail::Session>(std::move(sock), self, id);
                self->sessions.emplace(id, s);
                s->read();
            }
        } else if (ec == asio::error::no_descriptors || ec == asio::error::no_buffer_space) {
            // Out of file descriptors: try again a little later instead of spinning.
            auto t = std::make_shared<asio::steady_timer>(self->io, std::chrono::milliseconds(100));
            t->async_wait([self, t](boost::system::error_code) { self->accept(); });
            return;
        }
        self->accept();
    });
}

HttpListener::HttpListener(asio::io_context& io, Handlers handlers, Limits limits)
    : impl_(std::make_shared<Impl>(io, std::move(handlers), limits)) {}

HttpListener::~HttpListener() { stop(); }

Status HttpListener::listen(const std::string& address) {
    if (impl_->listening || impl_->stopped) return make_error(EBUSY, "metrics listener: listen() called twice");
    auto parsed = parse_listen_address(address);
    if (!parsed) return parsed.error();
    // Plain variables, not a structured binding: lambdas cannot capture those before C++20 (clang 14).
    const std::string host = parsed->first;
    const uint16_t port = parsed->second;
    auto fail = [&](const boost::system::error_code& ec) {
        boost::system::error_code ignored;
        impl_->acceptor.close(ignored);
        std::string why = ec == asio::error::address_in_use
                              ? "port " + std::to_string(port) + " is already in use"
                              : ec.message();
        return make_error(ec.value(), "cannot listen on " + address + ": " + why);
    };
    boost::system::error_code ec;
    tcp::endpoint ep;
    if (host.empty()) {
        // All interfaces: one dual-stack IPv6 socket, or IPv4 only when the
        // kernel has no IPv6.
        impl_->acceptor.open(tcp::v6(), ec);
        if (!ec) impl_->acceptor.set_option(asio::ip::v6_only(false), ec);
        if (!ec) {
            ep = tcp::endpoint(asio::ip::address_v6::any(), port);
        } else {
            boost::system::error_code ignored;
            impl_->acceptor.close(ignored);
            ec = {};
            ep = tcp::endpoint(asio::ip::address_v4::any(), port);
            impl_->acceptor.open(tcp::v4(), ec);
        }
    } else {
        ep = tcp::endpoint(asio::ip::make_address(host, ec), port);
        if (ec) return fail(ec);
        impl_->acceptor.open(ep.protocol(), ec);
    }
    // SO_REUSEADDR: a restarted signetd can bind while old connections sit in
    // TIME_WAIT; on Linux it never lets two listeners share a port.
    if (!ec) impl_->acceptor.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) impl_->acceptor.bind(ep, ec);
    if (!ec) impl_->acceptor.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) return fail(ec);
    impl_->port = impl_->acceptor.local_endpoint(ec).port();
    if (ec) return fail(ec);
    impl_->listening = true;
    impl_->accept();
    return {};
}

void HttpListener::stop() {
    if (!impl_ || impl_->stopped) return;
    impl_->stopped = true;
    boost::system::error_code ignored;
    impl_->acceptor.close(ignored);
    // Copy first: closing may destroy sessions, which erase themselves.
    std::vector<std::shared_ptr<detail::Session>> open;
    for (auto& [id, weak] : impl_->sessions)
        if (auto s = weak.lock()) open.push_back(std::move(s));
    for (auto& s : open) s->close();
}

uint16_t HttpListener::port() const { return impl_->port; }

size_t HttpListener::open_connections() const { return impl_->sessions.size(); }

}  // namespace signet::metrics
