// signet handshake, queue layer: the pod's new-connection handshake segments
// (TCP SYN / SYN-ACK sent to NFQUEUE by the pod's nft rules, see
// nft::add_syn_queue_rule) read over nfnetlink_queue inside the pod's netns,
// judged, and given back to the kernel with a verdict and, optionally, a
// rewritten packet (the token added or stripped by handshake/packet.h).
//
// Fail closed: the queue rules carry no bypass flag and the queue is bound
// without NFQA_CFG_F_FAIL_OPEN, so a queued packet nobody judges is dropped:
//   - no socket bound to the queue (controller down, reader stopped): the
//     kernel finds no instance and drops the packet (nf_queue -ESRCH);
//   - the queue holds `maxlen` packets waiting for a verdict: new ones are
//     dropped (the kernel's queue_dropped counter, "nf_queue: full" in dmesg);
//   - the socket's receive buffer is full: the message cannot be delivered,
//     the packet is dropped (user_dropped) and the reader's next recv reports
//     ENOBUFS (counted as an overrun);
//   - the socket closes with packets waiting: they are dropped.
// Only SYN / SYN-ACK are queued, so established connections never wait on
// the reader. See docs/handshake-packet.md ("Queue layer").
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "nft/netns.h"
#include "signet/result.h"

namespace boost::asio {
class io_context;
}

namespace signet::handshake {

// The queue of a pod's handshake segments (both hooks: the hook field tells
// the direction), next to the deny-log NFLOG group 3471.
inline constexpr uint16_t kHandshakeQueue = 3472;
inline constexpr uint32_t kQueueMaxLen = 4096;           // packets waiting for a verdict, per queue
inline constexpr int kQueueRcvBuf = 8 << 20;             // SO_RCVBUFFORCE on the queue socket
inline constexpr size_t kMaxVerdictPayload = 0xffff - 4;  // NFQA_PAYLOAD: nla_len is 16 bits

// Netfilter hooks as the queue reports them (NF_INET_*).
namespace hook {
inline constexpr uint8_t prerouting = 0, input = 1, forward = 2, output = 3, postrouting = 4;
}
// Verdicts (NF_DROP / NF_ACCEPT).
inline constexpr uint32_t kDrop = 0, kAccept = 1;

// Binds `queue` in the netns (NFQNL_CFG_CMD_BIND), copy mode packet with
// `copy_range` bytes, maxlen kQueueMaxLen, flags: NFQA_CFG_F_GSO set (the
// kernel hands over GSO / CHECKSUM_PARTIAL skbs as they are and says so in
// NFQA_SKB_INFO), NFQA_CFG_F_FAIL_OPEN explicitly cleared (fail closed).
// Receive buffer kQueueRcvBuf (SO_RCVBUFFORCE), NETLINK_NO_ENOBUFS off (an
// overrun is reported). The socket is non-blocking. EPERM: another socket
// holds the queue (EBUSY: this one already does). The kernel caps the copy
// range at 65531 (NFQNL_MAX_COPY_RANGE).
Result<nft::NlSocket> nfq_bind(const nft::Netns& ns, uint16_t queue, uint32_t copy_range = 0xffff);

// One NFQNL_MSG_PACKET: views into the received datagram (no copies).
struct QueuedPacket {
    uint32_t id = 0;            // packet id, for the verdict
    uint16_t queue = 0;         // from the nfgenmsg res_id
    uint16_t hw_protocol = 0;   // ETH_P_IP / ETH_P_IPV6 (host order)
    uint8_t hook = 0;           // hook::input / hook::output / ...
    std::span<const uint8_t> payload;  // the IP packet (copy_range bytes at most)
    uint32_t cap_len = 0;       // the packet's real length (NFQA_CAP_LEN, else payload size)
    bool csum_partial = false;  // NFQA_SKB_CSUMNOTREADY: CHECKSUM_PARTIAL, the TCP field holds the pseudo-header sum
    bool csum_not_verified = false;  // NFQA_SKB_CSUM_NOTVERIFIED
    bool gso = false;           // NFQA_SKB_GSO
    uint32_t mark = 0;
    uint32_t indev = 0, outdev = 0;  // ifindex, 0 if absent
    // The message had a packet id but something else wrong (a bad attribute
    // size, duplicate attributes, no payload): judge it NF_DROP, don't use it.
    bool malformed = false;

    bool truncated() const { return cap_len > payload.size(); }
};

struct ParseSummary {
    size_t messages = 0;        // netlink messages walked
    size_t packets = 0;         // QueuedPackets appended (malformed ones included)
    size_t malformed = 0;       // of those, flagged malformed
    size_t errors = 0;          // NLMSG_ERROR with a non-zero code (a refused verdict)
    size_t ignored = 0;         // other message types, and NFQNL messages without a packet id
    size_t trailing_bytes = 0;  // bytes after the last complete message (a broken datagram)
    int first_error = 0;        // positive errno of the first NLMSG_ERROR
    uint32_t first_error_seq = 0;  // its sequence number (verdicts are sent with seq = packet id)
};

// Parses a datagram from the queue socket (kernel bytes: hardened, fuzzed;
// no alignment assumed, every read bounded). Appends to `out`.
ParseSummary nfq_parse_buffer(std::span<const uint8_t> bytes, std::vector<QueuedPacket>& out);

// A conntrack mark to set with a verdict (NFQA_CT { CTA_MARK, CTA_MARK_MASK }):
// the bits of `mask` become those of `value` (the kernel's ctnetlink glue,
// nf_conntrack_netlink, applies it to the packet's conntrack entry).
struct CtMark {
    uint32_t value = 0;
    uint32_t mask = 0xffffffff;
    bool operator==(const CtMark&) const = default;
};

// Verdict messages (NFQNL_MSG_VERDICT) queued into one buffer, sent with one
// sendmsg. No NLM_F_ACK: the kernel answers only errors (NLMSG_ERROR with
// seq = the packet id).
class VerdictBatch {
public:
    // EMSGSIZE: the replacement exceeds kMaxVerdictPayload; EINVAL: verdict
    // other than kAccept / kDrop.
    Status add(uint16_t queue, uint32_t id, uint32_t verdict, std::span<const uint8_t> replacement = {},
               std::optional<uint32_t> mark = {}, std::optional<CtMark> ct_mark = {});
    std::span<const uint8_t> bytes() const { return {buf_.data(), len_}; }
    size_t count() const { return count_; }
    bool empty() const { return count_ == 0; }
    void clear() {
        len_ = 0;
        count_ = 0;
    }

private:
    std::vector<uint8_t> buf_;
    size_t len_ = 0;
    size_t count_ = 0;
};

// Sends one verdict.
Status nfq_verdict(nft::NlSocket& sock, uint16_t queue, uint32_t id, uint32_t verdict,
                   std::span<const uint8_t> replacement = {}, std::optional<uint32_t> mark = {});
// Sends a batch in one sendmsg (the send buffer is grown to fit it first).
// Errors the kernel finds in single verdicts (unknown id: ENOENT) come back
// later as NLMSG_ERROR on the socket (nfq_parse_buffer counts them).
Status nfq_send_verdicts(nft::NlSocket& sock, const VerdictBatch& batch);

// Completes a CHECKSUM_PARTIAL packet's TCP checksum in place (the field
// holds the folded pseudo-header sum: field = ~fold(sum(TCP segment))), as
// skb_checksum_help would. Needed for a replacement of a csum_partial packet:
// the kernel marks a mangled skb CHECKSUM_NONE (nfqnl_mangle), so nothing
// completes it later. EBADMSG if the packet's IP/TCP headers don't parse.
Status nfq_complete_checksum(std::span<uint8_t> packet);

// What the handler decides for one packet.
struct Decision {
    uint32_t verdict = kDrop;
    std::vector<uint8_t> replacement;  // empty: the packet unchanged
    std::optional<uint32_t> mark;      // set the skb mark
    std::optional<CtMark> ct_mark;     // set (bits of) the conntrack entry's mark
};

struct QueueStats {
    uint64_t wakeups = 0;        // readiness notifications handled
    uint64_t datagrams = 0;      // datagrams received
    uint64_t packets = 0;        // packets judged (= verdicts sent)
    uint64_t accepted = 0;
    uint64_t dropped = 0;        // verdict NF_DROP (handler's, malformed, or a replacement that could not be sent)
    uint64_t rewritten = 0;      // accepted with a replacement
    uint64_t malformed = 0;      // messages the parser flagged (dropped)
    uint64_t checksums_completed = 0;  // replacements of CHECKSUM_PARTIAL packets completed in software
    uint64_t verdict_errors = 0;  // NLMSG_ERROR answers to verdicts, and failed sends
    uint64_t overruns = 0;       // ENOBUFS: the kernel could not deliver (those packets were dropped)
    uint64_t handler_errors = 0;  // the handler threw (the packet was dropped)
    uint64_t rewrite_failed = 0;  // an accepted packet whose replacement could not be sent (dropped)
    uint64_t max_batch = 0;      // most packets judged in one wake-up
    int last_verdict_error = 0;  // errno of the last verdict error
};

// The kernel's own counters of one queue (/proc/net/netfilter/nfnetlink_queue
// in the queue's netns): packets dropped before signetd could see them.
struct KernelQueueStats {
    uint64_t waiting = 0;        // queue_total: packets waiting for a verdict now
    uint64_t queue_dropped = 0;  // the queue held maxlen packets: new ones were dropped
    uint64_t user_dropped = 0;   // the socket's receive buffer was full: dropped
};
// Parses that file's text (one line per bound queue: queue_number portid
// queue_total copy_mode copy_range queue_dropped user_dropped id_sequence 1).
// ENOENT: no line for `queue`; EBADMSG: a line that does not parse.
Result<KernelQueueStats> nfq_parse_kernel_stats(std::string_view text, uint16_t queue);
// Opens that file inside `ns` (the descriptor stays bound to that netns:
// read it again with nfq_read_kernel_stats).
Result<int> nfq_open_kernel_stats(const nft::Netns& ns);
Result<KernelQueueStats> nfq_read_kernel_stats(int fd, uint16_t queue);

// Reads a queue in a netns from a Boost.Asio loop: waits for readability
// (posix::stream_descriptor on a dup of the socket's fd), drains up to
// max_datagrams datagrams per wake-up with recv(MSG_DONTWAIT), parses them,
// calls the handler for each packet, sends all verdicts in one sendmsg.
// A replacement for a csum_partial packet must carry the partial form (as
// add_token/strip_token in TcpChecksum::partial mode produce it): the reader
// completes it (nfq_complete_checksum) before sending.
// Use from the io_context's thread (or while it does not run). The object
// may be destroyed with a wait pending: the completion keeps its state alive.
class QueueReader {
public:
    using Handler = std::function<Decision(const QueuedPacket&)>;
    struct Options {
        uint32_t copy_range = 0xffff;
        size_t max_datagrams = 32;     // per wake-up (the batch)
        size_t datagram_size = 0xffff + 4096;  // a full packet plus the message's headers
        // Sees each raw datagram before parsing (captures for the fuzz corpus, debugging).
        std::function<void(std::span<const uint8_t>)> tap;
    };

    QueueReader(boost::asio::io_context& io, nft::Netns& ns, uint16_t queue, Handler handler);
    QueueReader(boost::asio::io_context& io, nft::Netns& ns, uint16_t queue, Handler handler, Options options);
    ~QueueReader();
    QueueReader(const QueueReader&) = delete;
    QueueReader& operator=(const QueueReader&) = delete;

    // Binds the queue and starts waiting. Starting a started reader is a no-op.
    Status start();
    // Closes the socket: the queue is unbound, the packets waiting in it are
    // dropped, and so is every new packet the rules queue (fail closed).
    void stop();
    bool running() const;
    QueueStats stats() const;

private:
    struct Impl;
    std::shared_ptr<Impl> impl_;
};

}  // namespace signet::handshake
