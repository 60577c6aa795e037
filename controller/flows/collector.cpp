#include "collector.h"

#include <linux/netlink.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "nft/netns.h"
#include "signet/log.h"

namespace signet::flows {

namespace {
constexpr const char* kLog = "flows";
// One recvmmsg reads up to kBatch datagrams (a conntrack event is one
// datagram of a few hundred bytes; an NFLOG datagram holds one or more
// packets of at most 128 copied bytes each); at most kMaxBatches per socket
// and poll, then the next socket (and a poll again at once).
constexpr size_t kBatch = 64, kDatagram = 16384, kMaxBatches = 16;
}  // namespace

Collector::Collector(boost::asio::io_context& io, OnConntrack on_ct, OnDenied on_denied,
                     std::chrono::milliseconds coalesce)
    : io_(io),
      on_ct_(std::move(on_ct)),
      on_denied_(std::move(on_denied)),
      coalesce_(coalesce),
      tick_(io),
      buf_(kBatch * kDatagram) {
    epfd_ = ::epoll_create1(EPOLL_CLOEXEC);
    if (epfd_ < 0) log::warn(kLog, std::string("epoll_create1: ") + std::strerror(errno));
}

Collector::~Collector() {
    *alive_ = false;
    stop();
    if (epfd_ >= 0) ::close(epfd_);
}

void Collector::stop() {
    tick_.cancel();
    if (idle_wait_) {
        boost::system::error_code ec;
        idle_wait_->close(ec);
        idle_wait_.reset();
    }
    busy_ = false;
    while (!subs_.empty()) detach(subs_.begin()->first);
}

Status Collector::attach(const std::string& key, const std::string& netns_path) {
    if (subs_.count(key)) return {};
    if (epfd_ < 0) return make_error(EBADF, "no epoll set for the flow sockets");
    auto ns = nft::Netns::open(netns_path);
    if (!ns) return ns.error();
    bool timestamps = true;
    if (auto st = nft::ct_enable_accounting(*ns, true); !st) {
        timestamps = false;
        log::warn(kLog, "no byte counts or conntrack times for " + key + ": " + st.error().message);
    }
    auto ct = nft::ct_subscribe(*ns);  // NEW and DESTROY
    if (!ct) return ct.error();
    auto lg = nft::nflog_bind(*ns);
    if (!lg) return lg.error();
    {
        // The NFLOG socket too: an overflow costs the packets that do not
        // fit, counted exactly (socket_drops), and nothing else.
        int one = 1;
        (void)::setsockopt(lg->fd(), SOL_NETLINK, NETLINK_NO_ENOBUFS, &one, sizeof one);
    }
    auto sub = std::make_shared<Sub>();
    sub->key = key;
    sub->timestamps = timestamps;
    sub->ct.reset(new Reader{std::move(*ct), false, next_id_++});
    sub->log.reset(new Reader{std::move(*lg), true, next_id_++});
    for (Reader* r : {sub->ct.get(), sub->log.get()}) {
        epoll_event ev{};
        ev.events = EPOLLIN;  // level-triggered: what a poll leaves is reported again
        ev.data.u64 = r->id;
        if (::epoll_ctl(epfd_, EPOLL_CTL_ADD, r->sock.fd(), &ev) != 0) {
            int err = errno;
            if (r == sub->log.get()) (void)::epoll_ctl(epfd_, EPOLL_CTL_DEL, sub->ct->sock.fd(), nullptr);
            return make_error(err, std::string("epoll_ctl: ") + std::strerror(err));
        }
    }
    by_id_[sub->ct->id] = {sub.get(), sub->ct.get()};
    by_id_[sub->log->id] = {sub.get(), sub->log.get()};
    subs_[key] = sub;
    if (!busy_ && !idle_wait_) wait_idle();
    return {};
}

void Collector::detach(const std::string& key) {
    auto it = subs_.find(key);
    if (it == subs_.end()) return;
    Sub& sub = *it->second;
    add_drops(sub, stats_);  // what the kernel dropped stays counted
    for (Reader* r : {sub.ct.get(), sub.log.get()}) {
        if (r == nullptr) continue;
        (void)::epoll_ctl(epfd_, EPOLL_CTL_DEL, r->sock.fd(), nullptr);
        by_id_.erase(r->id);
    }
    subs_.erase(it);  // closes the sockets
}

void Collector::add_drops(const Sub& sub, Stats& into) const {
    if (sub.ct)
        if (auto n = nft::socket_drops(sub.ct->sock.fd())) into.lost_ct_events += *n;
    if (sub.log)
        if (auto n = nft::socket_drops(sub.log->sock.fd())) into.lost_denied_packets += *n;
}

Collector::Stats Collector::stats() const {
    Stats s = stats_;
    for (const auto& [k, sub] : subs_) add_drops(*sub, s);
    return s;
}

// Idle: the epoll set waits on the loop; the first readable socket wakes it.
void Collector::wait_idle() {
    busy_ = false;
    int fd = ::dup(epfd_);  // the loop's descriptor owns the copy
    if (fd < 0) {
        log::warn(kLog, std::string("dup: ") + std::strerror(errno));
        schedule_poll(coalesce_);  // no idle wait: poll on the timer alone
        return;
    }
    idle_wait_.emplace(io_, fd);
    idle_wait_->async_wait(boost::asio::posix::stream_descriptor::wait_read,
                           [this, alive = alive_](boost::system::error_code ec) {
                               if (ec || !*alive) return;
                               on_ready();
                           });
}

// Busy: out of the loop's epoll (a socket filling up no longer wakes anyone),
// read now, then every period while there is something to read.
void Collector::on_ready() {
    if (idle_wait_) {
        int fd = idle_wait_->release();  // deregisters from the loop's epoll
        ::close(fd);
        idle_wait_.reset();
    }
    ++stats_.wakeups;
    busy_ = true;
    bool more = false;
    poll_once(more);
    schedule_poll(more ? std::chrono::milliseconds(0) : coalesce_);
}

void Collector::schedule_poll(std::chrono::milliseconds after) {
    busy_ = true;
    tick_.expires_after(after);
    tick_.async_wait([this, alive = alive_](boost::system::error_code ec) {
        if (ec || !*alive) return;
        bool more = false;
        size_t n = poll_once(more);
        if (n == 0 && !subs_.empty())
            wait_idle();  // quiet for a whole period: back to waking at the first event
        else if (n == 0)
            busy_ = false;  // nothing attached: attach() starts the idle wait
        else
            schedule_poll(more ? std::chrono::milliseconds(0) : coalesce_);
    });
}

size_t Collector::poll_once(bool& more) {
    ++stats_.polls;
    size_t total = 0;
    epoll_event evs[64];
    int n = ::epoll_wait(epfd_, evs, 64, 0);
    if (n < 0) return 0;
    for (int i = 0; i < n; ++i) {
        // epoll_event is packed on x86-64 (data at offset 4): copy the id
        // out rather than bind a reference to a misaligned uint64_t.
        const uint64_t id = evs[i].data.u64;
        auto it = by_id_.find(id);
        if (it == by_id_.end()) continue;  // detached by a callback meanwhile
        total += drain(*it->second.first, *it->second.second, more);
    }
    if (n == 64) more = true;
    return total;
}

size_t Collector::drain(Sub& sub, Reader& r, bool& more) {
    std::vector<nft::CtEvent> events;
    std::vector<nft::LoggedPacket> packets;
    mmsghdr msgs[kBatch];
    iovec iov[kBatch];
    size_t total = 0;
    size_t b = 0;
    for (; b < kMaxBatches; ++b) {
        for (size_t i = 0; i < kBatch; ++i) {
            iov[i] = iovec{buf_.data() + i * kDatagram, kDatagram};
            msgs[i] = mmsghdr{};
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int n = ::recvmmsg(r.sock.fd(), msgs, kBatch, MSG_DONTWAIT, nullptr);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            if (errno == EINTR) continue;
            if (errno == ENOBUFS) {
                ++stats_.overruns;
                continue;  // the socket is still good: later events keep coming
            }
            ++stats_.read_errors;
            log::warn(kLog, "reading " + std::string(r.is_log ? "denied packets" : "conntrack events") + " of " +
                                sub.key + ": " + std::strerror(errno));
            break;
        }
        if (n == 0) break;
        ++stats_.batches;
        total += static_cast<size_t>(n);
        for (int i = 0; i < n; ++i) {
            if (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) {
                ++stats_.truncated;
                continue;
            }
            std::span<const uint8_t> bytes(buf_.data() + static_cast<size_t>(i) * kDatagram, msgs[i].msg_len);
            if (r.is_log)
                nft::nflog_parse_buffer(bytes, packets);
            else
                nft::ct_parse_events(bytes, events);
        }
        if (static_cast<size_t>(n) < kBatch) break;  // drained: no need for a call that says EAGAIN
    }
    if (b == kMaxBatches) more = true;
    stats_.reads += total;
    stats_.ct_events += events.size();
    stats_.denied_packets += packets.size();
    // The callbacks may detach (this sub included): nothing of it is used after.
    std::string key = sub.key;
    if (!events.empty()) on_ct_(key, events);
    if (!packets.empty()) on_denied_(key, packets);
    return total;
}

}  // namespace signet::flows
