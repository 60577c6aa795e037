#include "server.h"

#include <fcntl.h>
#include <grp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstring>

#include "signet/fsutil.h"
#include "signet/json.h"
#include "signet/log.h"

#ifndef SO_PEERGROUPS
#define SO_PEERGROUPS 59
#endif

namespace signet::ipc {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;
using local = asio::local::stream_protocol;

const char* to_string(Access a) {
    switch (a) {
        case Access::none: return "none";
        case Access::read: return "read";
        case Access::full: return "full";
    }
    return "?";
}

Access access_for(const AccessPolicy& policy, uid_t uid, gid_t gid, const std::vector<gid_t>& groups) {
    if (uid == policy.admin_uid) return Access::full;
    if (policy.read_group &&
        (gid == *policy.read_group || std::find(groups.begin(), groups.end(), *policy.read_group) != groups.end()))
        return Access::read;
    return Access::none;
}

Result<gid_t> resolve_group(const std::string& name_or_gid) {
    if (name_or_gid.empty()) return make_error(EINVAL, "empty group");
    unsigned long n = 0;
    auto [p, ec] = std::from_chars(name_or_gid.data(), name_or_gid.data() + name_or_gid.size(), n);
    if (ec == std::errc() && p == name_or_gid.data() + name_or_gid.size()) {
        if (n >= 0xffffffffUL) return make_error(EINVAL, "group id out of range: " + name_or_gid);
        return static_cast<gid_t>(n);
    }
    std::vector<char> buf(16384);
    struct group gr {};
    struct group* found = nullptr;
    int rc = ::getgrnam_r(name_or_gid.c_str(), &gr, buf.data(), buf.size(), &found);
    if (rc != 0) return make_error(rc, "cannot look up group " + name_or_gid + ": " + std::strerror(rc));
    if (found == nullptr) return make_error(ENOENT, "no such group: " + name_or_gid);
    return found->gr_gid;
}

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
    AccessPolicy policy;
    Server::Refusals refused;
    // Refusals are logged, at most kRefusalLogs lines a minute (a caller
    // refused in a loop must not flood the log); the rest are counted.
    std::chrono::steady_clock::time_point log_window{};
    unsigned logged = 0;
    uint64_t unlogged = 0;

    void accept();
    Peer identify(local::socket& s) const;
    void log_refusal(const Peer& p, const std::string& what);
};

namespace {

constexpr unsigned kRefusalLogs = 10;

struct Session : std::enable_shared_from_this<Session> {
    Session(local::socket s, std::shared_ptr<Server::Impl> srv, Peer p)
        : socket(std::move(s)), timer(socket.get_executor()), server(std::move(srv)), peer(p) {}
    ~Session() { --server->connections; }

    local::socket socket;
    asio::steady_timer timer;
    std::shared_ptr<Server::Impl> server;
    Peer peer;
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
        parsed->peer = peer;
        if (peer.access == Access::none) {
            ++server->refused.caller;
            server->log_refusal(peer, parsed->method + " " + parsed->path);
            std::string msg = "forbidden: uid " + std::to_string(peer.uid) + " may not use signetd's API (root only";
            if (server->policy.read_group) msg += "; members of group " + server->policy.read_group_name + " may read";
            send(json_error(403, msg + ")"), false, version);
            return;
        }
        if (peer.access == Access::read && parsed->method != "GET" && parsed->method != "HEAD") {
            ++server->refused.read_only;
            server->log_refusal(peer, parsed->method + " " + parsed->path + " (read-only access)");
            send(json_error(403, "forbidden: group " + server->policy.read_group_name + " may only read (GET); " +
                                     parsed->method + " " + parsed->path + " needs root"),
                 keep_alive, version);
            return;
        }
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

Peer Server::Impl::identify(local::socket& s) const {
    Peer p;
    p.access = Access::none;  // unknown credentials: no access
    struct ucred cred {};
    socklen_t len = sizeof cred;
    if (::getsockopt(s.native_handle(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || len != sizeof cred) return p;
    p.pid = cred.pid;
    p.uid = cred.uid;
    p.gid = cred.gid;
    std::vector<gid_t> groups;
    if (policy.read_group && cred.uid != policy.admin_uid && cred.gid != *policy.read_group) {
        // Supplementary groups (Linux 4.13+); without them only the primary group counts.
        socklen_t glen = 64 * sizeof(gid_t);
        for (int tries = 0; tries < 2; ++tries) {
            groups.resize(glen / sizeof(gid_t));
            if (::getsockopt(s.native_handle(), SOL_SOCKET, SO_PEERGROUPS, groups.data(), &glen) == 0) {
                groups.resize(glen / sizeof(gid_t));
                break;
            }
            if (errno != ERANGE) {
                groups.clear();
                break;
            }
        }
    }
    p.access = access_for(policy, cred.uid, cred.gid, groups);
    return p;
}

void Server::Impl::log_refusal(const Peer& p, const std::string& what) {
    auto now = std::chrono::steady_clock::now();
    if (now - log_window >= std::chrono::minutes(1)) {
        if (unlogged > 0)
            log::warn("api", std::to_string(unlogged) + " more refused request(s) in the last minute, not logged");
        log_window = now;
        logged = 0;
        unlogged = 0;
    }
    if (logged >= kRefusalLogs) {
        ++unlogged;
        return;
    }
    ++logged;
    log::warn("api", "refused " + what + " from pid " + std::to_string(p.pid) + " uid " + std::to_string(p.uid) +
                         " gid " + std::to_string(p.gid) + " (access: " + to_string(p.access) + ")");
}

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
                Peer peer = self->identify(sock);
                std::make_shared<Session>(std::move(sock), self, peer)->read();
            }
        }
        self->accept();
    });
}

Server::Server(asio::io_context& io, Handler handler) : impl_(std::make_shared<Impl>(io, std::move(handler))) {}

Server::~Server() { stop(); }

void Server::set_access(AccessPolicy policy) { impl_->policy = std::move(policy); }

Server::Refusals Server::refusals() const { return impl_->refused; }

Status Server::listen(const std::string& path) {
    if (path.empty() || path.size() >= 108) return make_error(EINVAL, "socket path must be 1..107 bytes: " + path);
    size_t slash = path.rfind('/');
    std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
    if (slash != std::string::npos && slash > 0) {
        auto st = fs::make_dirs(dir, 0755);
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
        // A stale socket: the rename below replaces it.
    }
    // The socket is born in a fresh 0700 directory only signetd can enter,
    // gets its mode and group there, and is renamed into place (atomically,
    // over a stale one): there is no moment at which `path` exists with the
    // mode bind() gave it (0777 & ~umask). umask() around bind() would do the
    // same, but umask is per process and signetd's other threads (table
    // writers, watches) may create files meanwhile.
    std::string tmp_dir = (dir == "/" ? std::string() : dir) + "/.signetd-XXXXXX";
    if (::mkdtemp(tmp_dir.data()) == nullptr)
        return make_error(errno, "cannot listen on " + path + ": cannot make a private directory in " + dir + ": " +
                                     std::strerror(errno));
    std::string tmp_sock = tmp_dir + "/s";
    int dir_fd = -1;
    if (tmp_sock.size() >= 108) {  // too long for sun_path: bind through the directory's fd
        dir_fd = ::open(tmp_dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (dir_fd < 0) {
            int e = errno;
            ::rmdir(tmp_dir.c_str());
            return make_error(e, "cannot listen on " + path + ": " + std::strerror(e));
        }
    }
    std::string bind_path = dir_fd < 0 ? tmp_sock : "/proc/self/fd/" + std::to_string(dir_fd) + "/s";
    auto fail = [&](int code, const std::string& why) -> Status {
        boost::system::error_code ignored;
        impl_->acceptor.close(ignored);
        ::unlink(tmp_sock.c_str());
        ::rmdir(tmp_dir.c_str());
        if (dir_fd >= 0) ::close(dir_fd);
        return make_error(code, "cannot listen on " + path + ": " + why);
    };
    boost::system::error_code ec;
    impl_->acceptor.open(local(), ec);
    if (!ec) impl_->acceptor.bind(local::endpoint(bind_path), ec);
    if (!ec) impl_->acceptor.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) return fail(ec.value(), ec.message());
    if (impl_->policy.read_group && ::chown(tmp_sock.c_str(), static_cast<uid_t>(-1), *impl_->policy.read_group) != 0)
        return fail(errno, "cannot give the socket group " + impl_->policy.read_group_name + ": " + std::strerror(errno));
    if (::chmod(tmp_sock.c_str(), 0660) != 0) return fail(errno, std::string("chmod: ") + std::strerror(errno));
    if (::rename(tmp_sock.c_str(), path.c_str()) != 0) return fail(errno, std::string("rename: ") + std::strerror(errno));
    ::rmdir(tmp_dir.c_str());
    if (dir_fd >= 0) ::close(dir_fd);
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
