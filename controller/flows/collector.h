// signet: reads, for every local pod attachment, the conntrack events and the
// logged denied packets of its netns, on the controller's event loop. One
// event socket and one NFLOG socket per pod netns; nothing is read unless
// the kernel has something (asio waits on the sockets' readability).
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "nft/conntrack.h"
#include "nft/nflog.h"
#include "signet/result.h"

namespace signet::flows {

class Collector {
public:
    using OnConntrack = std::function<void(const std::string& key, const std::vector<nft::CtEvent>&)>;
    using OnDenied = std::function<void(const std::string& key, const std::vector<nft::LoggedPacket>&)>;

    Collector(boost::asio::io_context& io, OnConntrack on_ct, OnDenied on_denied);
    ~Collector();

    // Starts reading the attachment's netns (by path). Idempotent per key.
    // Turns conntrack accounting on in that netns.
    Status attach(const std::string& key, const std::string& netns_path);
    void detach(const std::string& key);
    // One conntrack entry of the attachment's netns (its counters now).
    Result<nft::CtEntry> lookup(const std::string& key, const nft::CtTuple& orig);
    void stop();
    bool attached(const std::string& key) const { return subs_.count(key) > 0; }

    struct Stats {
        uint64_t ct_events = 0, denied_packets = 0;
        uint64_t overruns = 0;  // a socket's receive buffer overflowed: events were lost
        uint64_t read_errors = 0;
    };
    const Stats& stats() const { return stats_; }
    size_t attachments() const { return subs_.size(); }

private:
    struct Reader {
        nft::NlSocket sock;
        boost::asio::posix::stream_descriptor fd;
        bool is_log = false;
    };
    struct Sub {
        std::string key;
        std::optional<nft::Netns> ns;  // for lookups of single entries
        std::unique_ptr<Reader> ct, log;
    };
    void arm(const std::shared_ptr<Sub>& sub, Reader* r);
    void drain(Sub& sub, Reader& r);

    boost::asio::io_context& io_;
    OnConntrack on_ct_;
    OnDenied on_denied_;
    std::map<std::string, std::shared_ptr<Sub>> subs_;
    std::vector<uint8_t> buf_;
    Stats stats_;
};

}  // namespace signet::flows
