#include "flows/audit_log.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <climits>
#include <cerrno>
#include <cstring>

#include "policy/compiler.h"
#include "signet/json.h"
#include "signet/log.h"

namespace signet::flows {

namespace {

constexpr const char* kLog = "audit";

// write() without a SIGPIPE for a pipe whose reader is gone: the signal is
// blocked on this thread for the call and a pending one consumed, so EPIPE
// comes back as an error instead of ending signetd.
ssize_t write_nosignal(int fd, const char* data, size_t len) {
    sigset_t pipe_set, old;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    ssize_t n = ::write(fd, data, len);
    int err = errno;
    if (n < 0 && err == EPIPE && !sigismember(&old, SIGPIPE)) {
        struct timespec zero {};
        while (sigtimedwait(&pipe_set, nullptr, &zero) < 0 && errno == EINTR) {
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    errno = err;
    return n;
}

}  // namespace

std::string AuditLog::line(const Record& r, const std::string& node) {
    using rapidjson::Value;
    rapidjson::Document d(rapidjson::kObjectType);
    auto& a = d.GetAllocator();
    const FlowKey& k = r.key;
    d.AddMember("time", json::str(rfc3339(r.time_ns), a), a);
    d.AddMember("node", json::str(node, a), a);
    d.AddMember("direction", Value(k.ingress ? "ingress" : "egress", a), a);
    d.AddMember("verdict", json::str(std::string(to_string(k.verdict)), a), a);
    d.AddMember("policy", json::str(r.decision.policy, a), a);
    d.AddMember("rule", Value(r.decision.rule), a);
    Value local(rapidjson::kObjectType);
    local.AddMember("namespace", json::str(k.local_namespace, a), a);
    local.AddMember("pod", json::str(k.local_pod, a), a);
    if (!r.local_workload.empty()) {
        local.AddMember("workloadKind", json::str(r.local_workload_kind, a), a);
        local.AddMember("workload", json::str(r.local_workload, a), a);
    }
    d.AddMember("local", local, a);
    Value remote(rapidjson::kObjectType);
    remote.AddMember("kind", json::str(std::string(to_string(k.peer_kind)), a), a);
    remote.AddMember("address", json::str(k.peer_address, a), a);
    if (k.peer_kind == PeerKind::pod) {
        remote.AddMember("namespace", json::str(k.peer_namespace, a), a);
        remote.AddMember("pod", json::str(k.peer_pod, a), a);
    }
    remote.AddMember("authenticated", Value(r.decision.authenticated), a);
    if (r.decision.authenticated && !r.peer_node.empty()) remote.AddMember("node", json::str(r.peer_node, a), a);
    d.AddMember("remote", remote, a);
    d.AddMember("protocol", json::str(std::string(policy::proto_name(k.proto)), a), a);
    d.AddMember("port", Value(k.port), a);
    d.AddMember("src", json::str(r.src, a), a);
    d.AddMember("dst", json::str(r.dst, a), a);
    return json::to_string(d);
}

Result<std::unique_ptr<AuditLog>> AuditLog::open(boost::asio::io_context& io, AuditLogOptions opts, std::string node) {
    int fd = -1;
    Mode mode = Mode::write;
    if (opts.target.empty()) return make_error(EINVAL, "--audit-log needs stdout or a file path");
    if (opts.rate <= 0) return make_error(EINVAL, "--audit-log-rate must be above 0");
    if (opts.target == "stdout") {
        struct stat st {};
        if (::fstat(STDOUT_FILENO, &st) != 0)
            return make_error(errno, std::string("--audit-log stdout: stdout is not open: ") + std::strerror(errno));
        if (S_ISSOCK(st.st_mode)) {
            // journald's stdout stream, a container runtime's socket: send(MSG_DONTWAIT) per line.
            fd = ::fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, 3);
            mode = Mode::send;
        } else if (S_ISREG(st.st_mode)) {
            fd = ::fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, 3);  // a file never makes a write wait for a reader
        } else {
            // A pipe or a terminal: a description of our own, non-blocking,
            // so that stdout's own (shared with stderr and the parent) keeps its flags.
            fd = ::open("/proc/self/fd/1", O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
        }
        if (fd < 0) return make_error(errno, std::string("--audit-log stdout: ") + std::strerror(errno));
    } else {
        fd = ::open(opts.target.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_NONBLOCK | O_CLOEXEC | O_NOCTTY, 0640);
        if (fd < 0)
            return make_error(errno, "--audit-log " + opts.target + ": " + std::strerror(errno) +
                                         (errno == ENXIO ? " (a FIFO needs its reader first)" : ""));
        struct stat st {};
        if (::fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
            ::close(fd);
            return make_error(EISDIR, "--audit-log " + opts.target + ": is a directory");
        }
    }
    return std::unique_ptr<AuditLog>(new AuditLog(io, std::move(opts), std::move(node), fd, mode));
}

AuditLog::AuditLog(boost::asio::io_context& io, AuditLogOptions opts, std::string node, int fd, Mode mode)
    : opts_(std::move(opts)), node_(std::move(node)), fd_(fd), mode_(mode), timer_(io) {
    tokens_ = std::max(1.0, opts_.rate);
    last_refill_ = std::chrono::steady_clock::now();
}

AuditLog::~AuditLog() {
    *alive_ = false;
    timer_.cancel();
    if (!pending_.empty()) flush();  // what fits now; the rest is lost with the process
    if (fd_ >= 0) ::close(fd_);
}

bool AuditLog::duplicate(const Record& r) {
    const FlowKey& k = r.key;
    std::string key;
    key.reserve(k.local_namespace.size() + k.local_pod.size() + r.src.size() + r.dst.size() + 8);
    key.append(k.local_namespace).push_back('/');
    key.append(k.local_pod).push_back(k.ingress ? '<' : '>');
    key.append(r.src).push_back('>');
    key.append(r.dst).push_back('/');
    key.append(std::to_string(k.proto));
    const int64_t window = std::chrono::duration_cast<std::chrono::nanoseconds>(opts_.dedup_window).count();
    auto it = seen_.find(key);
    if (it != seen_.end() && r.time_ns - it->second < window && r.time_ns >= it->second) {
        it->second = r.time_ns;  // the attempt goes on: its retransmissions stay folded
        return true;
    }
    if (it == seen_.end() && seen_.size() >= opts_.dedup_entries) {
        for (auto i = seen_.begin(); i != seen_.end();) i = r.time_ns - i->second >= window ? seen_.erase(i) : std::next(i);
        if (seen_.size() >= opts_.dedup_entries) seen_.clear();  // a flood of distinct attempts: start over
    }
    seen_[key] = r.time_ns;
    return false;
}

bool AuditLog::take_token() {
    auto now = std::chrono::steady_clock::now();
    const double burst = std::max(1.0, opts_.rate);
    tokens_ = std::min(burst, tokens_ + std::chrono::duration<double>(now - last_refill_).count() * opts_.rate);
    last_refill_ = now;
    if (tokens_ < 1.0) return false;
    tokens_ -= 1.0;
    return true;
}

void AuditLog::write(const Record& r) {
    if (r.event != Record::denied) return;
    if (duplicate(r)) {
        ++stats_.duplicates;
        return;
    }
    if (!take_token()) {
        ++stats_.rate_limited;
        return;
    }
    std::string l = line(r, node_);
    l.push_back('\n');
    if (pending_.size() + l.size() > opts_.buffer_bytes) {
        ++stats_.buffer_full;
        return;
    }
    pending_ += l;
    ++stats_.written;  // taken back if a write error loses it (flush)
    if (!flush()) return;
    if (!pending_.empty()) schedule_flush();
}

bool AuditLog::flush() {
    while (!pending_.empty()) {
        // Whole lines, at most PIPE_BUF bytes a write (a longer line alone):
        // a pipe takes such a write whole or not at all, so a line is never
        // split around another writer's (stderr often shares stdout's pipe).
        size_t chunk = pending_.size();
        if (chunk > PIPE_BUF) {
            size_t cut = pending_.rfind('\n', PIPE_BUF - 1);
            chunk = cut != std::string::npos ? cut + 1 : pending_.find('\n') + 1;
        }
        ssize_t n = mode_ == Mode::send ? ::send(fd_, pending_.data(), chunk, MSG_DONTWAIT | MSG_NOSIGNAL)
                                        : write_nosignal(fd_, pending_.data(), chunk);
        if (n > 0) {
            pending_.erase(0, static_cast<size_t>(n));
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;  // the reader is behind: retried later
        // An error: what waits is lost (counted per line), and said once.
        int err = n < 0 ? errno : EIO;
        uint64_t lines = 0;
        for (char c : pending_) lines += c == '\n' ? 1 : 0;
        stats_.errors += lines;
        stats_.written -= std::min(stats_.written, lines);
        pending_.clear();
        if (!warned_) {
            log::warn(kLog, "cannot write the audit log to " + opts_.target + ": " + std::strerror(err) +
                                " (lines are dropped and counted: signet_audit_log_dropped_total)");
            warned_ = true;
        }
        return false;
    }
    warned_ = false;
    return true;
}

void AuditLog::schedule_flush() {
    if (flush_scheduled_) return;
    flush_scheduled_ = true;
    timer_.expires_after(std::chrono::milliseconds(100));
    timer_.async_wait([this, alive = std::weak_ptr<bool>(alive_)](boost::system::error_code ec) {
        if (ec || alive.expired()) return;
        flush_scheduled_ = false;
        if (flush() && !pending_.empty()) schedule_flush();
    });
}

}  // namespace signet::flows
