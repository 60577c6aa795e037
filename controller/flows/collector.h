// signet: reads, for every local pod attachment, the conntrack events and the
// logged denied packets of its netns, on the controller's event loop. One
// event socket and one NFLOG socket per pod netns. The event sockets take
// NEW and DESTROY only: a connection costs two events per netns, and its
// counters and times come with DESTROY (accounting and timestamps on).
//
// Reading is coalesced: the sockets sit in a private epoll set. While idle,
// that set waits on the loop, so the first event wakes signetd at once; then
// it leaves the loop's epoll and is polled every `coalesce` (default 10 ms)
// as long as events keep coming, each socket read in batches (recvmmsg). So
// a busy pod's events do not wake signetd each (a wake-up is paid in the
// packet path that sent the event); they wait in the socket buffers (4 MiB)
// for at most one period. What the kernel could not queue is counted.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "nft/conntrack.h"
#include "nft/nflog.h"
#include "signet/result.h"

namespace signet::flows {

class Collector {
public:
    using OnConntrack = std::function<void(const std::string& key, const std::vector<nft::CtEvent>&)>;
    using OnDenied = std::function<void(const std::string& key, const std::vector<nft::LoggedPacket>&)>;

    Collector(boost::asio::io_context& io, OnConntrack on_ct, OnDenied on_denied,
              std::chrono::milliseconds coalesce = std::chrono::milliseconds(10));
    ~Collector();

    // Starts reading the attachment's netns (by path). Idempotent per key.
    // Turns conntrack accounting and timestamps on in that netns.
    Status attach(const std::string& key, const std::string& netns_path);
    void detach(const std::string& key);
    void stop();
    bool attached(const std::string& key) const { return subs_.count(key) > 0; }
    // Conntrack timestamps are on in the attachment's netns (DESTROY events carry start and stop).
    bool timestamps(const std::string& key) const {
        auto it = subs_.find(key);
        return it != subs_.end() && it->second->timestamps;
    }

    struct Stats {
        uint64_t ct_events = 0, denied_packets = 0;
        uint64_t overruns = 0;  // recv() said ENOBUFS: a socket's buffer overflowed (without NETLINK_NO_ENOBUFS)
        uint64_t truncated = 0;  // a datagram larger than the read buffer (MSG_TRUNC): its messages lost
        uint64_t read_errors = 0;
        uint64_t reads = 0, batches = 0;  // datagrams read; recvmmsg calls that returned some
        uint64_t wakeups = 0, polls = 0;  // idle -> busy (the loop woke for a socket); coalesced polls
        // Messages the kernel dropped at the sockets (receive buffer full),
        // summed over the live sockets and those of detached attachments.
        uint64_t lost_ct_events = 0, lost_denied_packets = 0;
    };
    // The counters; the kernel's drop counts are read now (one getsockopt per socket).
    Stats stats() const;
    size_t attachments() const { return subs_.size(); }

private:
    struct Reader {
        nft::NlSocket sock;
        bool is_log = false;
        uint64_t id = 0;  // the epoll set's key
    };
    struct Sub {
        std::string key;
        bool timestamps = false;
        std::unique_ptr<Reader> ct, log;
    };
    // Reads what is ready; returns the datagrams read. `more`: a socket had
    // more than one poll's bound.
    size_t poll_once(bool& more);
    size_t drain(Sub& sub, Reader& r, bool& more);
    void wait_idle();
    void on_ready();
    void schedule_poll(std::chrono::milliseconds after);
    void add_drops(const Sub& sub, Stats& into) const;

    boost::asio::io_context& io_;
    OnConntrack on_ct_;
    OnDenied on_denied_;
    std::chrono::milliseconds coalesce_;
    std::map<std::string, std::shared_ptr<Sub>> subs_;
    std::unordered_map<uint64_t, std::pair<Sub*, Reader*>> by_id_;
    uint64_t next_id_ = 1;
    int epfd_ = -1;  // the private epoll set (level-triggered), data.u64 = Reader::id
    std::optional<boost::asio::posix::stream_descriptor> idle_wait_;  // a dup of epfd_ on the loop, while idle
    boost::asio::steady_timer tick_;
    bool busy_ = false;
    std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
    std::vector<uint8_t> buf_;  // kBatch datagrams of kDatagram bytes
    Stats stats_;  // lost_* here: of the detached attachments
};

}  // namespace signet::flows
