#include "signet/http_client.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>

namespace signet::http {
namespace {

using Clock = std::chrono::steady_clock;

class Fd {
public:
    explicit Fd(int fd) : fd_(fd) {}
    ~Fd() {
        if (fd_ >= 0) ::close(fd_);
    }
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    int get() const { return fd_; }

private:
    int fd_;
};

int remaining_ms(Clock::time_point deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    return left < 0 ? 0 : static_cast<int>(left);
}

// Waits until fd is ready for `events` or the deadline passes.
Status wait_for(int fd, short events, Clock::time_point deadline) {
    for (;;) {
        pollfd p{fd, events, 0};
        int n = ::poll(&p, 1, remaining_ms(deadline));
        if (n > 0) return {};
        if (n == 0) return make_error(kTimeout, "timed out waiting for signetd");
        if (errno != EINTR) return make_error(kIo, std::string("poll: ") + std::strerror(errno));
    }
}

bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i) {
        char x = a[i], y = b[i];
        if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
        if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
        if (x != y) return false;
    }
    return true;
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
    return s;
}

// How many bytes of `raw` a complete response needs, or 0 if not yet known
// to be complete (headers incomplete, or body read until EOF).
size_t complete_size(std::string_view raw) {
    size_t hend = raw.find("\r\n\r\n");
    if (hend == std::string_view::npos) return 0;
    std::string_view headers = raw.substr(0, hend);
    size_t pos = headers.find("\r\n");
    while (pos != std::string_view::npos && pos < headers.size()) {
        size_t next = headers.find("\r\n", pos + 2);
        std::string_view line = headers.substr(pos + 2, next == std::string_view::npos ? std::string_view::npos : next - pos - 2);
        size_t colon = line.find(':');
        if (colon != std::string_view::npos && iequals(trim(line.substr(0, colon)), "content-length")) {
            std::string_view v = trim(line.substr(colon + 1));
            size_t len = 0;
            auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), len);
            if (ec != std::errc() || p != v.data() + v.size()) return 0;
            return hend + 4 + len;
        }
        pos = next;
    }
    return 0;
}

}  // namespace

std::string percent_encode(std::string_view s) {
    static const char* hex = "0123456789ABCDEF";
    std::string out;
    for (unsigned char c : s) {
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
            c == '.' || c == '~') {
            out += static_cast<char>(c);
        } else {
            out += '%';
            out += hex[c >> 4];
            out += hex[c & 15];
        }
    }
    return out;
}

Result<Response> parse_response(std::string_view raw) {
    size_t line_end = raw.find("\r\n");
    if (line_end == std::string_view::npos) return make_error(kProtocol, "incomplete HTTP status line");
    std::string_view status_line = raw.substr(0, line_end);
    if (status_line.substr(0, 7) != "HTTP/1." || status_line.size() < 12 || status_line[8] != ' ')
        return make_error(kProtocol, "not an HTTP/1.x response");
    Response resp;
    std::string_view code = status_line.substr(9, 3);
    auto [p, ec] = std::from_chars(code.data(), code.data() + code.size(), resp.status);
    if (ec != std::errc() || p != code.data() + code.size() || resp.status < 100 || resp.status > 599 ||
        (status_line.size() > 12 && status_line[12] != ' '))
        return make_error(kProtocol, "bad HTTP status code");

    size_t hend = raw.find("\r\n\r\n");
    if (hend == std::string_view::npos) return make_error(kProtocol, "incomplete HTTP headers");
    bool chunked = false;
    long long content_length = -1;
    size_t pos = line_end;
    while (pos < hend) {
        size_t next = raw.find("\r\n", pos + 2);
        std::string_view line = raw.substr(pos + 2, next - pos - 2);
        pos = next;
        if (line.empty()) break;
        size_t colon = line.find(':');
        if (colon == std::string_view::npos) return make_error(kProtocol, "malformed HTTP header line");
        std::string_view name = trim(line.substr(0, colon));
        std::string_view value = trim(line.substr(colon + 1));
        if (iequals(name, "content-length")) {
            long long n = 0;
            auto [q, e2] = std::from_chars(value.data(), value.data() + value.size(), n);
            if (e2 != std::errc() || q != value.data() + value.size() || n < 0)
                return make_error(kProtocol, "bad Content-Length");
            content_length = n;
        } else if (iequals(name, "transfer-encoding")) {
            chunked = iequals(value, "chunked");
            if (!chunked) return make_error(kProtocol, "unsupported Transfer-Encoding");
        } else if (iequals(name, "content-type")) {
            resp.content_type = std::string(value);
        }
    }
    std::string_view body = raw.substr(hend + 4);
    if (chunked) {
        std::string out;
        for (;;) {
            size_t eol = body.find("\r\n");
            if (eol == std::string_view::npos) return make_error(kProtocol, "truncated chunk size");
            std::string_view sz = body.substr(0, eol);
            if (size_t semi = sz.find(';'); semi != std::string_view::npos) sz = sz.substr(0, semi);
            sz = trim(sz);
            size_t n = 0;
            auto [q, e3] = std::from_chars(sz.data(), sz.data() + sz.size(), n, 16);
            if (e3 != std::errc() || q != sz.data() + sz.size()) return make_error(kProtocol, "bad chunk size");
            body.remove_prefix(eol + 2);
            if (n == 0) break;
            if (body.size() < n + 2 || body.substr(n, 2) != "\r\n") return make_error(kProtocol, "truncated chunk");
            if (out.size() + n > kMaxResponseBytes) return make_error(kProtocol, "response too large");
            out.append(body.substr(0, n));
            body.remove_prefix(n + 2);
        }
        resp.body = std::move(out);
    } else if (content_length >= 0) {
        if (body.size() < static_cast<size_t>(content_length)) return make_error(kProtocol, "truncated HTTP body");
        resp.body = std::string(body.substr(0, static_cast<size_t>(content_length)));
    } else {
        resp.body = std::string(body);
    }
    return resp;
}

Result<Response> request(const std::string& socket_path, std::string_view method, std::string_view target,
                         std::string_view body, int timeout_ms) {
    const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (socket_path.empty() || socket_path.size() >= sizeof(addr.sun_path))
        return make_error(kUnreachable, "invalid socket path '" + socket_path + "'");
    std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.size() + 1);

    Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (fd.get() < 0) return make_error(kIo, std::string("socket: ") + std::strerror(errno));
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
        if (errno == EAGAIN || errno == EINPROGRESS) {
            // Listen backlog full: wait for the server to accept, within the deadline.
            auto st = wait_for(fd.get(), POLLOUT, deadline);
            if (!st) return make_error(kUnreachable, "signetd at " + socket_path + " did not accept the connection in time");
            int err = 0;
            socklen_t len = sizeof err;
            ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
            if (err != 0) return make_error(kUnreachable, "cannot connect to signetd at " + socket_path + ": " + std::strerror(err));
        } else {
            return make_error(kUnreachable, "cannot connect to signetd at " + socket_path + ": " + std::strerror(errno));
        }
    }

    std::string req;
    req.reserve(128 + body.size());
    req.append(method).append(" ").append(target).append(" HTTP/1.1\r\nHost: signetd\r\nConnection: close\r\n");
    if (!body.empty() || method == "POST" || method == "PUT") {
        req.append("Content-Type: application/json\r\nContent-Length: ").append(std::to_string(body.size())).append("\r\n");
    }
    req.append("\r\n").append(body);

    size_t sent = 0;
    while (sent < req.size()) {
        ssize_t n = ::send(fd.get(), req.data() + sent, req.size() - sent, MSG_NOSIGNAL);
        if (n > 0) {
            sent += static_cast<size_t>(n);
        } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            auto st = wait_for(fd.get(), POLLOUT, deadline);
            if (!st) return st.error();
        } else {
            return make_error(kIo, std::string("send to signetd: ") + std::strerror(errno));
        }
    }

    std::string raw;
    char buf[16384];
    for (;;) {
        ssize_t n = ::recv(fd.get(), buf, sizeof buf, 0);
        if (n > 0) {
            raw.append(buf, static_cast<size_t>(n));
            if (raw.size() > kMaxResponseBytes) return make_error(kProtocol, "response from signetd too large");
            size_t need = complete_size(raw);
            if (need != 0 && raw.size() >= need) break;
        } else if (n == 0) {
            break;
        } else if (errno == EAGAIN || errno == EINTR) {
            auto st = wait_for(fd.get(), POLLIN, deadline);
            if (!st) return st.error();
        } else {
            return make_error(kIo, std::string("recv from signetd: ") + std::strerror(errno));
        }
    }
    if (raw.empty()) return make_error(kProtocol, "signetd closed the connection without answering");
    return parse_response(raw);
}

}  // namespace signet::http
