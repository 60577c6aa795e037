#include "datapath/queue_source.h"

#include <linux/netlink.h>
#include <unistd.h>

#include <optional>

#include "nft/netns.h"

namespace signet::handshake {

namespace {

class NfqBinding final : public QueueBinding {
public:
    NfqBinding(boost::asio::io_context& io, nft::Netns ns, uint16_t queue, QueueReader::Handler handler)
        : ns_(std::move(ns)), queue_(queue), reader_(io, ns_, queue, std::move(handler)) {}
    ~NfqBinding() override {
        reader_.stop();
        if (kstats_fd_ >= 0) ::close(kstats_fd_);
    }
    NfqBinding(const NfqBinding&) = delete;
    NfqBinding& operator=(const NfqBinding&) = delete;

    Status start() override {
        if (Status st = reader_.start(); !st) return st;
        // The kernel's counters: opened once, inside the netns (the descriptor
        // stays bound to it). Without them the binding still works.
        if (kstats_fd_ < 0)
            if (auto fd = nfq_open_kernel_stats(ns_)) kstats_fd_ = *fd;
        return {};
    }
    bool running() const override { return reader_.running(); }
    void stop() override { reader_.stop(); }
    QueueStats stats() const override { return reader_.stats(); }
    Result<std::optional<uint8_t>> tcp_socket_state(const SocketTuple& t) override {
        if (!diag_) {  // opened on first use, inside the pod's netns (the socket stays bound to it)
            auto s = ns_.open_socket(NETLINK_SOCK_DIAG);
            if (!s) return s.error();
            diag_ = std::make_unique<nft::NlSocket>(std::move(*s));
        }
        auto r = handshake::tcp_socket_state(*diag_, t);
        if (!r && r.error().code != ENOENT) diag_.reset();  // reopen next time
        return r;
    }
    KernelQueueStats kernel_stats() const override {
        if (kstats_fd_ < 0 || !reader_.running()) return {};
        auto r = nfq_read_kernel_stats(kstats_fd_, queue_);
        return r ? *r : KernelQueueStats{};
    }

private:
    nft::Netns ns_;  // before reader_, which keeps a reference to it
    uint16_t queue_;
    QueueReader reader_;
    int kstats_fd_ = -1;
    std::unique_ptr<nft::NlSocket> diag_;
};

class NfqSource final : public QueueSource {
public:
    NfqSource(boost::asio::io_context& io, uint16_t queue) : io_(io), queue_(queue) {}
    Result<std::unique_ptr<QueueBinding>> open(const std::string& netns_path, QueueReader::Handler handler) override {
        auto ns = nft::Netns::open(netns_path);
        if (!ns) return ns.error();
        return std::unique_ptr<QueueBinding>(new NfqBinding(io_, std::move(*ns), queue_, std::move(handler)));
    }

private:
    boost::asio::io_context& io_;
    uint16_t queue_;
};

}  // namespace

std::unique_ptr<QueueSource> make_nfqueue_source(boost::asio::io_context& io, uint16_t queue) {
    return std::make_unique<NfqSource>(io, queue);
}

}  // namespace signet::handshake
