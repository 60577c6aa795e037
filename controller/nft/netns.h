// signet: a handle on a pod's network namespace and the netlink sockets the
// controller opens inside it.
//
// The calling thread never changes netns: whatever must run inside a netns
// (opening a socket, unshare for a throwaway netns) runs on a short-lived
// helper thread that enters it and exits. A socket keeps the netns it was
// created in for its whole life, so the daemon's asio thread can use it.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>

#include "signet/result.h"

struct mnl_socket;
struct nlmsghdr;

namespace signet::nft {

inline constexpr std::chrono::milliseconds kNetlinkTimeout{2000};

// Calls fn(nlh, len) for each netlink message of a datagram as recv() returns
// it, stopping at the first bad length. Returns the number of messages.
// (Not mnl_nlmsg_ok(): it casts nlmsg_len to int, so a length above INT_MAX
// passes its check.)
template <typename F>
size_t for_each_nlmsg(std::span<const uint8_t> bytes, F&& fn) {
    constexpr size_t kHeader = 16, kAlign = 4;  // sizeof(nlmsghdr), NLMSG_ALIGNTO
    size_t n = 0, off = 0;
    while (bytes.size() - off >= kHeader) {
        const auto* nlh = reinterpret_cast<const nlmsghdr*>(bytes.data() + off);
        uint32_t raw_len;
        std::memcpy(&raw_len, bytes.data() + off, sizeof raw_len);
        size_t len = raw_len, left = bytes.size() - off;
        if (len < kHeader || len > left) break;
        ++n;
        fn(nlh, len);
        size_t step = (len + kAlign - 1) & ~(kAlign - 1);
        if (step >= left) break;
        off += step;
    }
    return n;
}

// A non-blocking libmnl socket bound in the netns where it was opened.
// Error codes in returned Errors are positive errno values.
class NlSocket {
public:
    // Opens `bus` (e.g. NETLINK_NETFILTER) in the calling thread's netns.
    static Result<NlSocket> open(int bus);

    NlSocket(NlSocket&& other) noexcept;
    NlSocket& operator=(NlSocket&& other) noexcept;
    NlSocket(const NlSocket&) = delete;
    NlSocket& operator=(const NlSocket&) = delete;
    ~NlSocket();

    int fd() const;
    uint32_t portid() const { return portid_; }
    // Sequence numbers for requests on this socket (never 0).
    uint32_t next_seq();
    // Grows the kernel send buffer (SO_SNDBUFFORCE) so that `bytes` fit in one sendmsg.
    void ensure_sndbuf(size_t bytes);

    // Sends `msgs` (one message or an nfnetlink batch) and waits for the
    // kernel's answers for sequence numbers [first_seq, last_seq], bounded by
    // `timeout`. Done when `last_seq` is answered (ack or error) or any error
    // arrived and nothing more is queued. The first error wins; its message
    // carries the kernel's extended ack text when there is one. Answers with
    // other sequence numbers (late answers to a timed-out request) are ignored.
    // ENOBUFS: answers were lost, the outcome is unknown (code ENOBUFS).
    Status transact(std::span<const uint8_t> msgs, uint32_t first_seq, uint32_t last_seq,
                    std::chrono::milliseconds timeout = kNetlinkTimeout);

    // Sends a request (dump or get with NLM_F_ACK) with sequence `seq` and
    // runs `on_msg` for every data message answering it until NLMSG_DONE or
    // the final ack. An interrupted dump (NLM_F_DUMP_INTR) or a receive buffer
    // overrun (ENOBUFS) restarts it (up to 3 times) after calling `on_restart`.
    // `on_msg` returns false to fail the query (code EPROTO).
    Status query(const std::function<std::span<const uint8_t>(uint32_t seq)>& build_request,
                 const std::function<bool(const nlmsghdr*)>& on_msg,
                 const std::function<void()>& on_restart,
                 std::chrono::milliseconds timeout = kNetlinkTimeout);

    Status send(std::span<const uint8_t> bytes);
    // Receives one datagram into `buf`; 0 bytes means timeout.
    Result<size_t> recv(std::span<uint8_t> buf, std::chrono::milliseconds timeout);

    mnl_socket* raw() { return nl_; }

private:
    NlSocket(mnl_socket* nl, uint32_t portid) : nl_(nl), portid_(portid) {}
    mnl_socket* nl_ = nullptr;
    uint32_t portid_ = 0;
    uint32_t seq_ = 0;
};

class Netns {
public:
    // Opens a netns by path (/var/run/netns/NAME, /proc/PID/ns/net, ...). The
    // fd is kept (O_CLOEXEC) so that sockets can be reopened later.
    static Result<Netns> open(const std::string& path);
    // The calling thread's current netns.
    static Result<Netns> current();
    // A new, empty netns that lives as long as the returned handle (and any
    // socket opened in it). Used by the kernel probe and by tests.
    static Result<Netns> create_anonymous();
    // A handle with no kernel object behind it (for fakes and unit tests):
    // every kernel operation on it fails with EBADF.
    static Netns detached(std::string path);

    Netns(Netns&& other) noexcept;
    Netns& operator=(Netns&& other) noexcept;
    Netns(const Netns&) = delete;
    Netns& operator=(const Netns&) = delete;
    ~Netns();

    const std::string& path() const { return path_; }
    int fd() const { return fd_; }

    // Runs `fn` on a short-lived helper thread that entered this netns.
    Status run_inside(const std::function<void()>& fn) const;

    template <typename F>
    auto run(F&& fn) const -> Result<std::invoke_result_t<F&>> {
        using R = std::invoke_result_t<F&>;
        static_assert(!std::is_void_v<R>, "use run_inside for void functions");
        std::optional<R> out;
        Status st = run_inside([&] { out.emplace(fn()); });
        if (!st) return st.error();
        return std::move(*out);
    }

    // A new netlink socket opened inside this netns.
    Result<NlSocket> open_socket(int bus) const;

    // The cached NETLINK_NETFILTER socket for this netns (opened on first use
    // and reused). Call drop_nfnl() after a transport-level failure so the
    // next call opens a fresh socket.
    Result<NlSocket*> nfnl();
    void drop_nfnl();

private:
    Netns(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
    std::string path_;
    int fd_ = -1;
    std::unique_ptr<NlSocket> nfnl_;
};

}  // namespace signet::nft
