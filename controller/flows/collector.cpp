#include "collector.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "nft/netns.h"
#include "signet/log.h"

namespace signet::flows {

namespace {
constexpr const char* kLog = "flows";
}

Collector::Collector(boost::asio::io_context& io, OnConntrack on_ct, OnDenied on_denied)
    : io_(io), on_ct_(std::move(on_ct)), on_denied_(std::move(on_denied)), buf_(1 << 16) {}

Collector::~Collector() { stop(); }

void Collector::stop() {
    for (auto& [k, sub] : subs_) {
        boost::system::error_code ec;
        if (sub->ct) sub->ct->fd.close(ec);
        if (sub->log) sub->log->fd.close(ec);
    }
    subs_.clear();
}

Status Collector::attach(const std::string& key, const std::string& netns_path) {
    if (subs_.count(key)) return {};
    auto ns = nft::Netns::open(netns_path);
    if (!ns) return ns.error();
    if (auto st = nft::ct_enable_accounting(*ns); !st)
        log::warn(kLog, "no byte counts for " + key + ": " + st.error().message);
    auto ct = nft::ct_subscribe(*ns);
    if (!ct) return ct.error();
    auto lg = nft::nflog_bind(*ns);
    if (!lg) return lg.error();
    auto sub = std::make_shared<Sub>();
    sub->key = key;
    auto make = [&](nft::NlSocket s, bool is_log) -> Result<std::unique_ptr<Reader>> {
        int fd = ::dup(s.fd());  // the descriptor owns the copy; the socket stays open as long as either does
        if (fd < 0) {
            int err = errno;
            return make_error(err, std::string("dup: ") + std::strerror(err));
        }
        return std::unique_ptr<Reader>(new Reader{std::move(s), boost::asio::posix::stream_descriptor(io_, fd), is_log});
    };
    auto ctr = make(std::move(*ct), false);
    if (!ctr) return ctr.error();
    auto lgr = make(std::move(*lg), true);
    if (!lgr) return lgr.error();
    sub->ns.emplace(std::move(*ns));
    sub->ct = std::move(*ctr);
    sub->log = std::move(*lgr);
    subs_[key] = sub;
    arm(sub, sub->ct.get());
    arm(sub, sub->log.get());
    return {};
}

void Collector::detach(const std::string& key) {
    auto it = subs_.find(key);
    if (it == subs_.end()) return;
    boost::system::error_code ec;
    it->second->ct->fd.close(ec);
    it->second->log->fd.close(ec);
    subs_.erase(it);
}

Result<nft::CtEntry> Collector::lookup(const std::string& key, const nft::CtTuple& orig) {
    auto it = subs_.find(key);
    if (it == subs_.end() || !it->second->ns) return make_error(ENOENT, "not attached: " + key);
    return nft::ct_get(*it->second->ns, orig);
}

void Collector::arm(const std::shared_ptr<Sub>& sub, Reader* r) {
    std::weak_ptr<Sub> weak = sub;
    r->fd.async_wait(boost::asio::posix::stream_descriptor::wait_read, [this, weak, r](boost::system::error_code ec) {
        if (ec) return;  // closed (detach/stop)
        auto s = weak.lock();
        if (!s) return;
        drain(*s, *r);
        if (r->fd.is_open()) arm(s, r);
    });
}

void Collector::drain(Sub& sub, Reader& r) {
    std::vector<nft::CtEvent> events;
    std::vector<nft::LoggedPacket> packets;
    // Bounded: at most 64 datagrams per wake-up, then back to the loop.
    for (int i = 0; i < 64; ++i) {
        ssize_t n = ::recv(r.fd.native_handle(), buf_.data(), buf_.size(), MSG_DONTWAIT);
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
        std::span<const uint8_t> bytes(buf_.data(), static_cast<size_t>(n));
        if (r.is_log)
            nft::nflog_parse_buffer(bytes, packets);
        else
            nft::ct_parse_events(bytes, events);
    }
    stats_.ct_events += events.size();
    stats_.denied_packets += packets.size();
    if (!events.empty()) on_ct_(sub.key, events);
    if (!packets.empty()) on_denied_(sub.key, packets);
}

}  // namespace signet::flows
