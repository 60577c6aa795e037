#include "server.h"

#include <sys/stat.h>
#include <unistd.h>

#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <chrono>

#include "signet/fsutil.h"
#include "signet/json.h"

namespace signet::ipc {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;
using local = asio::local::stream_protocol;

Response json_error(int status, const std::string& message) {
    rapidjson::Document d(rapidjson::kObjectType);
    d.AddMember("error", json::str(message, d.GetAllocator()), d.GetAllocator());
    return Response{status, json::to_string(d) + "\n", "application/json"};
}

bool url_decode(const std::string& in, std::string* out) {
    out->clear();
    for (size_t i = 0; i < in.size(); ++i) {
        if (in[i] != '%') {
            *out += in[i];
            continue;
        }
        if (i + 2 >= in.size()) return false;
        auto hex = [](char c) -> int {
            if (c >= '0' && c <= '9') return c - '0';
            if (c >= 'a' && c <= 'f') return c - 'a' + 10;
            if (c >= 'A' && c <= 'F') return c - 'A' + 10;
            return -1;
        };
        int h = hex(in[i + 1]), l = hex(in[i + 2]);
        if (h < 0 || l < 0) return false;
        *out += static_cast<char>(h * 16 + l);
        i += 2;
    }
    return true;
}

std::string query_param(const std::string& query, const std::string& key) {
    size_t pos = 0;
    while (pos <= query.size()) {
        size_t amp = query.find('&', pos);
        std::string pair = query.substr(pos, amp == std::string::npos ? std::string::npos : amp - pos);
        size_t eq = pair.find('=');
        if (pair.substr(0, eq) == key) {
            std::string v;
            if (eq != std::string::npos && url_decode(pair.substr(eq + 1), &v)) return v;
            return {};
        }
        if (amp == std::string::npos) break;
        pos = amp + 1;
    }
    return {};
}

namespace {

constexpr size_t kMaxConnections = 512;
constexpr auto kIdleTimeout = std::chrono::seconds(30);
constexpr uint64_t kMaxBody = 4u << 20;

Result<Request> to_request(const bhttp::request<bhttp::string_body>& req) {
    Request r;
    r.method = std::string(req.method_string());
    std::string target(req.target());
    size_t q = target.find('?');
    std::string raw_path = target.substr(0, q);
    if (q != std::string::npos) r.query = target.substr(q + 1);
    if (raw_path.empty() || raw_path[0] != '/') return make_error(400, "request target must be an absolute path");
    size_t pos = 1;
    while (pos <= raw_path.size()) {
        size_t slash = raw_path.find('/', pos);
        std::string seg = raw_path.substr(pos, slash == std::string::npos ? std::string::npos : slash - pos);
        std::string dec;
        if (!url_decode(seg, &dec)) return make_error(400, "malformed %-escape in path");
        if (!dec.empty()) r.segments.push_back(dec);
        if (slash == std::string::npos) break;
        pos = slash + 1;
    }
    if (!url_decode(raw_path, &r.path)) return make_error(400, "malformed %-escape in path");
    r.body = req.body();
    return r;
}

}  // namespace

struct Server::Impl : std::enable_shared_from_this<Server::Impl> {
    Impl(asio::io_context& io, Handler h) : io(io), acceptor(io), handler(std::move(h)) {}
    asio::io_context& io;
    local::acceptor acceptor;
    Handler handler;
    std::string path;
    size_t connections = 0;
    bool stopped = false;

    void accept();
};

namespace {

struct Session : std::enable_shared_from_this<Session> {
    Session(local::socket s, std::shared_ptr<Server::Impl> srv)
        : socket(std::move(s)), timer(socket.get_executor()), server(std::move(srv)) {}
    ~Session() { --server->connections; }

    local::socket socket;
    asio::steady_timer timer;
    std::shared_ptr<Server::Impl> server;
    beast::flat_buffer buffer;
    std::unique_ptr<bhttp::request_parser<bhttp::string_body>> parser;
    bhttp::response<bhttp::string_body> response;

    void arm_timer() {
        timer.expires_after(kIdleTimeout);
        timer.async_wait([self = shared_from_this()](boost::system::error_code ec) {
            if (!ec) {
                boost::system::error_code ignored;
                self->socket.close(ignored);
            }
        });
    }

    void read() {
        parser = std::make_unique<bhttp::request_parser<bhttp::string_body>>();
        parser->body_limit(kMaxBody);
        parser->header_limit(16 * 1024);
        arm_timer();
        bhttp::async_read(socket, buffer, *parser, [self = shared_from_this()](beast::error_code ec, size_t) {
            self->on_read(ec);
        });
    }

    void on_read(beast::error_code ec) {
        if (ec == bhttp::error::end_of_stream || ec == asio::error::eof || ec == asio::error::operation_aborted ||
            ec == asio::error::connection_reset || ec == asio::error::bad_descriptor) {
            close();
            return;
        }
        if (ec) {
            // Malformed HTTP: answer 400 once and close.
            Response r = json_error(400, "malformed request: " + ec.message());
            send(std::move(r), false, 11);
            return;
        }
        auto& req = parser->get();
        bool keep_alive = req.keep_alive();
        unsigned version = req.version();
        auto parsed = to_request(req);
        if (!parsed) {
            send(json_error(400, parsed.error().message), false, version);
            return;
        }
        timer.cancel();
        auto self = shared_from_this();
        auto done = std::make_shared<bool>(false);
        server->handler(*parsed, [self, keep_alive, version, done](Response r) {
            if (*done) return;  // a handler answers once
            *done = true;
            self->send(std::move(r), keep_alive, version);
        });
    }

    void send(Response r, bool keep_alive, unsigned version) {
        response = {};
        response.version(version);
        response.result(static_cast<bhttp::status>(r.status));
        response.set(bhttp::field::server, "signetd/" SIGNET_VERSION);
        response.set(bhttp::field::content_type, r.content_type);
        response.keep_alive(keep_alive);
        response.body() = std::move(r.body);
        response.prepare_payload();
        arm_timer();
        bhttp::async_write(socket, response, [self = shared_from_this(), keep_alive](beast::error_code ec, size_t) {
            if (ec || !keep_alive) {
                self->close();
                return;
            }
            self->read();
        });
    }

    void close() {
        boost::system::error_code ignored;
        timer.cancel();
        socket.shutdown(local::socket::shutdown_both, ignored);
        socket.close(ignored);
    }
};

}  // namespace

void Server::Impl::accept() {
    if (stopped) return;
    acceptor.async_accept([self = shared_from_this()](boost::system::error_code ec, local::socket sock) {
        if (self->stopped) return;
        if (!ec) {
            if (self->connections >= kMaxConnections) {
                boost::system::error_code ignored;
                sock.close(ignored);
            } else {
                ++self->connections;
                std::make_shared<Session>(std::move(sock), self)->read();
            }
        }
        self->accept();
    });
}

Server::Server(asio::io_context& io, Handler handler) : impl_(std::make_shared<Impl>(io, std::move(handler))) {}

Server::~Server() { stop(); }

Status Server::listen(const std::string& path) {
    if (path.empty() || path.size() >= 108) return make_error(EINVAL, "socket path must be 1..107 bytes: " + path);
    size_t slash = path.rfind('/');
    if (slash != std::string::npos && slash > 0) {
        auto st = fs::make_dirs(path.substr(0, slash), 0755);
        if (!st) return st;
    }
    struct stat sb {};
    if (::lstat(path.c_str(), &sb) == 0) {
        if (!S_ISSOCK(sb.st_mode)) return make_error(EEXIST, path + " exists and is not a socket");
        // Someone answering there? Then another signetd owns it.
        local::socket probe(impl_->io);
        boost::system::error_code ec;
        probe.connect(local::endpoint(path), ec);
        if (!ec) return make_error(EADDRINUSE, "another process is serving " + path);
        ::unlink(path.c_str());
    }
    boost::system::error_code ec;
    impl_->acceptor.open(local(), ec);
    if (!ec) impl_->acceptor.bind(local::endpoint(path), ec);
    if (!ec) impl_->acceptor.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) return make_error(ec.value(), "cannot listen on " + path + ": " + ec.message());
    ::chmod(path.c_str(), 0660);
    impl_->path = path;
    impl_->accept();
    return {};
}

void Server::stop() {
    if (!impl_ || impl_->stopped) return;
    impl_->stopped = true;
    boost::system::error_code ignored;
    impl_->acceptor.close(ignored);
    if (!impl_->path.empty()) ::unlink(impl_->path.c_str());
}

size_t Server::open_connections() const { return impl_->connections; }

}  // namespace signet::ipc
