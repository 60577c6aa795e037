#include "netns.h"

#include <fcntl.h>
#include <libmnl/libmnl.h>
#include <linux/netlink.h>
#include <linux/nsfs.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

namespace signet::nft {

namespace {

using Clock = std::chrono::steady_clock;

Error errno_error(int err, const std::string& what) {
    return make_error(err, what + ": " + std::strerror(err));
}

// Waits until `fd` is readable or the deadline passes. false on timeout.
Result<bool> wait_readable(int fd, Clock::time_point deadline) {
    for (;;) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        if (left.count() <= 0) return false;
        pollfd p{fd, POLLIN, 0};
        int r = ::poll(&p, 1, static_cast<int>(left.count()));
        if (r > 0) return true;
        if (r == 0) return false;
        if (errno != EINTR) return errno_error(errno, "netlink poll");
    }
}

bool seq_in(uint32_t seq, uint32_t first, uint32_t last) {
    return seq - first <= last - first;  // unsigned: handles wrap-around
}

// The error code and extended-ack text of an NLMSG_ERROR message. 0 = ack.
std::pair<int, std::string> parse_nlmsgerr(const nlmsghdr* nlh) {
    if (nlh->nlmsg_len < NLMSG_HDRLEN + sizeof(nlmsgerr)) return {EPROTO, "truncated netlink error"};
    const auto* err = static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(nlh));
    int code = -err->error;
    std::string text;
    if (code != 0 && (nlh->nlmsg_flags & NLM_F_ACK_TLVS)) {
        // With NETLINK_CAP_ACK the original message is cut to its header.
        size_t off = sizeof(nlmsgerr);
        if (!(nlh->nlmsg_flags & NLM_F_CAPPED)) off += err->msg.nlmsg_len - sizeof(nlmsghdr);
        size_t payload = nlh->nlmsg_len - NLMSG_HDRLEN;
        if (off < payload) {
            const auto* base = static_cast<const uint8_t*>(mnl_nlmsg_get_payload(nlh)) + off;
            int left = static_cast<int>(payload - off);
            const auto* attr = reinterpret_cast<const nlattr*>(base);
            while (mnl_attr_ok(attr, left)) {
                if (mnl_attr_get_type(attr) == NLMSGERR_ATTR_MSG && mnl_attr_get_payload_len(attr) > 0) {
                    const char* s = static_cast<const char*>(mnl_attr_get_payload(attr));
                    text.assign(s, strnlen(s, mnl_attr_get_payload_len(attr)));
                }
                left -= static_cast<int>(MNL_ALIGN(attr->nla_len));
                attr = reinterpret_cast<const nlattr*>(reinterpret_cast<const uint8_t*>(attr) + MNL_ALIGN(attr->nla_len));
            }
        }
    }
    return {code, text};
}

struct ThreadTask {
    int ns_fd = -1;
    bool unshare_new = false;
    const std::function<void()>* fn = nullptr;
    int err = 0;
    const char* what = "";
};

void* thread_main(void* arg) {
    auto* t = static_cast<ThreadTask*>(arg);
    if (t->unshare_new) {
        if (::unshare(CLONE_NEWNET) != 0) {
            t->err = errno;
            t->what = "unshare(CLONE_NEWNET)";
            return nullptr;
        }
    } else if (::setns(t->ns_fd, CLONE_NEWNET) != 0) {
        t->err = errno;
        t->what = "setns(CLONE_NEWNET)";
        return nullptr;
    }
    (*t->fn)();
    return nullptr;
}

// Runs fn on a fresh thread that first enters ns_fd (or a new netns). The
// calling thread's namespaces are never touched.
Status run_on_helper(ThreadTask task, const std::function<void()>& fn) {
    task.fn = &fn;
    pthread_t th;
    int rc = pthread_create(&th, nullptr, thread_main, &task);
    if (rc != 0) return errno_error(rc, "pthread_create");
    pthread_join(th, nullptr);
    if (task.err != 0) return errno_error(task.err, task.what);
    return {};
}

}  // namespace

// ---------------------------------------------------------------- NlSocket

Result<NlSocket> NlSocket::open(int bus) {
    mnl_socket* nl = mnl_socket_open2(bus, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (nl == nullptr) return errno_error(errno, "netlink socket");
    if (mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0) {
        int e = errno;
        mnl_socket_close(nl);
        return errno_error(e, "netlink bind");
    }
    int one = 1;
    // Small acks, and the kernel's error text (both best effort).
    mnl_socket_setsockopt(nl, NETLINK_CAP_ACK, &one, sizeof one);
    mnl_socket_setsockopt(nl, NETLINK_EXT_ACK, &one, sizeof one);
    int rcv = 1 << 20;
    setsockopt(mnl_socket_get_fd(nl), SOL_SOCKET, SO_RCVBUFFORCE, &rcv, sizeof rcv);
    return NlSocket(nl, mnl_socket_get_portid(nl));
}

NlSocket::NlSocket(NlSocket&& o) noexcept : nl_(o.nl_), portid_(o.portid_), seq_(o.seq_) { o.nl_ = nullptr; }

NlSocket& NlSocket::operator=(NlSocket&& o) noexcept {
    if (this != &o) {
        if (nl_) mnl_socket_close(nl_);
        nl_ = o.nl_;
        portid_ = o.portid_;
        seq_ = o.seq_;
        o.nl_ = nullptr;
    }
    return *this;
}

NlSocket::~NlSocket() {
    if (nl_) mnl_socket_close(nl_);
}

int NlSocket::fd() const { return nl_ ? mnl_socket_get_fd(nl_) : -1; }

uint32_t NlSocket::next_seq() {
    if (seq_ == 0) seq_ = static_cast<uint32_t>(::time(nullptr));
    if (++seq_ == 0) ++seq_;
    return seq_;
}

void NlSocket::ensure_sndbuf(size_t bytes) {
    int cur = 0;
    socklen_t len = sizeof cur;
    if (getsockopt(fd(), SOL_SOCKET, SO_SNDBUF, &cur, &len) == 0 && static_cast<size_t>(cur) / 2 > bytes + 4096) return;
    int want = static_cast<int>(bytes + 65536);
    setsockopt(fd(), SOL_SOCKET, SO_SNDBUFFORCE, &want, sizeof want);
}

Status NlSocket::send(std::span<const uint8_t> bytes) {
    for (;;) {
        ssize_t n = mnl_socket_sendto(nl_, bytes.data(), bytes.size());
        if (n == static_cast<ssize_t>(bytes.size())) return {};
        if (n >= 0) return make_error(EMSGSIZE, "netlink send: short write");
        if (errno == EINTR) continue;
        return errno_error(errno, "netlink send");
    }
}

Result<size_t> NlSocket::recv(std::span<uint8_t> buf, std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    for (;;) {
        ssize_t n = mnl_socket_recvfrom(nl_, buf.data(), buf.size());
        if (n >= 0) return static_cast<size_t>(n);
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) return errno_error(errno, "netlink receive");
        auto r = wait_readable(fd(), deadline);
        if (!r) return r.error();
        if (!*r) return size_t{0};
    }
}

Status NlSocket::transact(std::span<const uint8_t> msgs, uint32_t first_seq, uint32_t last_seq,
                          std::chrono::milliseconds timeout) {
    if (nl_ == nullptr) return make_error(EBADF, "netlink socket closed");
    ensure_sndbuf(msgs.size());
    if (auto s = send(msgs); !s) return s;
    auto deadline = Clock::now() + timeout;
    thread_local std::vector<uint8_t> buf(1 << 16);  // not a zeroed 64 KiB per batch: answers are parsed from it at once
    std::optional<Error> first_error;
    bool last_seen = false;
    for (;;) {
        ssize_t n = mnl_socket_recvfrom(nl_, buf.data(), buf.size());
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == ENOBUFS)
                return make_error(ENOBUFS, "netlink receive buffer overrun: outcome of the request unknown");
            if (errno != EAGAIN && errno != EWOULDBLOCK) return errno_error(errno, "netlink receive");
            if (last_seen || first_error) break;  // everything queued has been read
            auto r = wait_readable(fd(), deadline);
            if (!r) return r.error();
            if (!*r) return make_error(ETIMEDOUT, "netlink: no answer from the kernel in time");
            continue;
        }
        int len = static_cast<int>(n);
        for (auto* nlh = reinterpret_cast<const nlmsghdr*>(buf.data()); mnl_nlmsg_ok(nlh, len);
             nlh = mnl_nlmsg_next(nlh, &len)) {
            if (!seq_in(nlh->nlmsg_seq, first_seq, last_seq)) continue;  // stale answer
            if (nlh->nlmsg_type != NLMSG_ERROR) continue;                 // echo/data: not asked for
            auto [code, text] = parse_nlmsgerr(nlh);
            if (code != 0 && !first_error) {
                std::string msg = std::string("kernel refused request: ") + std::strerror(code);
                if (!text.empty()) msg += " (" + text + ")";
                first_error = make_error(code, msg, "seq " + std::to_string(nlh->nlmsg_seq));
            }
            if (nlh->nlmsg_seq == last_seq) last_seen = true;
        }
        if (last_seen) break;
    }
    if (first_error) return *first_error;
    return {};
}

Status NlSocket::query(const std::function<std::span<const uint8_t>(uint32_t seq)>& build_request,
                       const std::function<bool(const nlmsghdr*)>& on_msg, const std::function<void()>& on_restart,
                       std::chrono::milliseconds timeout) {
    if (nl_ == nullptr) return make_error(EBADF, "netlink socket closed");
    std::vector<uint8_t> buf(1 << 16);
    auto deadline = Clock::now() + timeout;
    for (int attempt = 0;; ++attempt) {
        uint32_t seq = next_seq();
        if (auto s = send(build_request(seq)); !s) return s;
        bool restart = false, done = false;
        while (!done && !restart) {
            ssize_t n = mnl_socket_recvfrom(nl_, buf.data(), buf.size());
            if (n < 0) {
                if (errno == EINTR) continue;
                if (errno == ENOBUFS) {
                    restart = true;
                    break;
                }
                if (errno != EAGAIN && errno != EWOULDBLOCK) return errno_error(errno, "netlink receive");
                auto r = wait_readable(fd(), deadline);
                if (!r) return r.error();
                if (!*r) return make_error(ETIMEDOUT, "netlink: dump not finished in time");
                continue;
            }
            int len = static_cast<int>(n);
            for (auto* nlh = reinterpret_cast<const nlmsghdr*>(buf.data()); mnl_nlmsg_ok(nlh, len);
                 nlh = mnl_nlmsg_next(nlh, &len)) {
                if (nlh->nlmsg_seq != seq || nlh->nlmsg_pid != portid_) continue;
                if (nlh->nlmsg_flags & NLM_F_DUMP_INTR) restart = true;
                if (nlh->nlmsg_type == NLMSG_DONE) {
                    if (nlh->nlmsg_len >= NLMSG_HDRLEN + sizeof(int)) {
                        int err = *static_cast<const int*>(mnl_nlmsg_get_payload(nlh));
                        if (err < 0) return errno_error(-err, "netlink dump");
                    }
                    done = true;
                    break;
                }
                if (nlh->nlmsg_type == NLMSG_ERROR) {
                    auto [code, text] = parse_nlmsgerr(nlh);
                    if (code != 0) {
                        std::string msg = std::string("kernel refused query: ") + std::strerror(code);
                        if (!text.empty()) msg += " (" + text + ")";
                        return make_error(code, msg);
                    }
                    done = true;
                    break;
                }
                if (nlh->nlmsg_type < NLMSG_MIN_TYPE) continue;
                if (!on_msg(nlh)) return make_error(EPROTO, "netlink: malformed answer");
            }
        }
        if (!restart) return {};
        if (attempt >= 3) return make_error(EINTR, "netlink dump interrupted repeatedly");
        // Drain whatever is left of the broken dump, then start over.
        while (mnl_socket_recvfrom(nl_, buf.data(), buf.size()) > 0 || errno == ENOBUFS || errno == EINTR) {
        }
        if (on_restart) on_restart();
    }
}

// ---------------------------------------------------------------- Netns

Result<Netns> Netns::open(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno_error(errno, "open netns " + path);
    int type = ::ioctl(fd, NS_GET_NSTYPE);
    if (type >= 0 && type != CLONE_NEWNET) {
        ::close(fd);
        return make_error(EINVAL, path + " is not a network namespace");
    }
    if (type < 0 && errno != ENOTTY) {
        int e = errno;
        ::close(fd);
        return make_error(e == EINVAL ? EINVAL : e, path + " is not a namespace file");
    }
    return Netns(path, fd);
}

Result<Netns> Netns::current() { return open("/proc/thread-self/ns/net"); }

Result<Netns> Netns::create_anonymous() {
    int fd = -1, err = 0;
    std::function<void()> fn = [&] {
        fd = ::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
        if (fd < 0) err = errno;
    };
    ThreadTask task;
    task.unshare_new = true;
    if (auto s = run_on_helper(task, fn); !s) return s.error();
    if (fd < 0) return errno_error(err, "open new netns");
    return Netns("(anonymous netns)", fd);
}

Netns Netns::detached(std::string path) { return Netns(std::move(path), -1); }

Netns::Netns(Netns&& o) noexcept : path_(std::move(o.path_)), fd_(o.fd_), nfnl_(std::move(o.nfnl_)) { o.fd_ = -1; }

Netns& Netns::operator=(Netns&& o) noexcept {
    if (this != &o) {
        nfnl_.reset();
        if (fd_ >= 0) ::close(fd_);
        path_ = std::move(o.path_);
        fd_ = o.fd_;
        nfnl_ = std::move(o.nfnl_);
        o.fd_ = -1;
    }
    return *this;
}

Netns::~Netns() {
    nfnl_.reset();
    if (fd_ >= 0) ::close(fd_);
}

Status Netns::run_inside(const std::function<void()>& fn) const {
    if (fd_ < 0) return make_error(EBADF, "netns " + path_ + " is not open");
    ThreadTask task;
    task.ns_fd = fd_;
    return run_on_helper(task, fn);
}

Result<NlSocket> Netns::open_socket(int bus) const {
    std::optional<Result<NlSocket>> out;
    if (auto s = run_inside([&] { out.emplace(NlSocket::open(bus)); }); !s) return s.error();
    if (!out->ok()) return make_error(out->error().code, out->error().message + " in netns " + path_);
    return std::move(*out);
}

Result<NlSocket*> Netns::nfnl() {
    if (!nfnl_) {
        auto s = open_socket(NETLINK_NETFILTER);
        if (!s) return s.error();
        nfnl_ = std::make_unique<NlSocket>(std::move(*s));
    }
    return nfnl_.get();
}

void Netns::drop_nfnl() { nfnl_.reset(); }

}  // namespace signet::nft
