#include "datapath/nfqueue.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <linux/netlink.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <cerrno>
#include <cstring>
#include <exception>
#include <string>

#include "datapath/packet.h"

namespace signet::handshake {

namespace {

constexpr uint16_t kNfqPacket = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET;
constexpr uint16_t kNfqVerdict = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_VERDICT;
constexpr uint16_t kNfqConfig = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG;
constexpr size_t kNlHdr = 16;      // sizeof(nlmsghdr)
constexpr size_t kNfgenHdr = 4;    // sizeof(nfgenmsg)
constexpr size_t kAttrHdr = 4;     // sizeof(nlattr)
constexpr size_t kPacketHdr = 7;   // sizeof(nfqnl_msg_packet_hdr): be32 id, be16 hw_protocol, u8 hook (packed)

constexpr size_t align4(size_t n) { return (n + 3) & ~size_t{3}; }

// Unaligned, bounded reads (the caller checked the bounds).
uint16_t host16(const uint8_t* p) {
    uint16_t v;
    std::memcpy(&v, p, 2);
    return v;
}
uint32_t host32(const uint8_t* p) {
    uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
}
uint16_t be16(const uint8_t* p) { return static_cast<uint16_t>((p[0] << 8) | p[1]); }
uint32_t be32(const uint8_t* p) {
    return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

void put16(std::vector<uint8_t>& b, size_t off, uint16_t v) { std::memcpy(b.data() + off, &v, 2); }
void put32(std::vector<uint8_t>& b, size_t off, uint32_t v) { std::memcpy(b.data() + off, &v, 4); }
void put_be32(std::vector<uint8_t>& b, size_t off, uint32_t v) {
    b[off] = static_cast<uint8_t>(v >> 24);
    b[off + 1] = static_cast<uint8_t>(v >> 16);
    b[off + 2] = static_cast<uint8_t>(v >> 8);
    b[off + 3] = static_cast<uint8_t>(v);
}

// One NFQNL_MSG_PACKET's attributes (msg = the whole message, bounds checked).
void parse_packet_msg(std::span<const uint8_t> msg, ParseSummary& sum, std::vector<QueuedPacket>& out) {
    if (msg.size() < kNlHdr + kNfgenHdr) {
        ++sum.ignored;
        return;
    }
    QueuedPacket p;
    p.queue = be16(msg.data() + kNlHdr + 2);
    bool have_id = false, have_payload = false, bad = false, have_cap = false;
    uint32_t seen = 0;  // attribute types seen (types < 32): duplicates are malformed
    size_t off = kNlHdr + align4(kNfgenHdr);
    while (off < msg.size()) {
        if (msg.size() - off < kAttrHdr) {
            bad = true;  // a stray tail
            break;
        }
        const size_t alen = host16(msg.data() + off);
        const uint16_t type = host16(msg.data() + off + 2) & NLA_TYPE_MASK;
        if (alen < kAttrHdr || alen > msg.size() - off) {
            bad = true;
            break;
        }
        const uint8_t* d = msg.data() + off + kAttrHdr;
        const size_t dlen = alen - kAttrHdr;
        if (type < 32) {
            if (seen & (1u << type)) bad = true;
            seen |= 1u << type;
        }
        switch (type) {
            case NFQA_PACKET_HDR:
                if (dlen >= kPacketHdr && !have_id) {
                    p.id = be32(d);
                    p.hw_protocol = be16(d + 4);
                    p.hook = d[6];
                    have_id = true;
                } else {
                    bad = true;
                }
                break;
            case NFQA_PAYLOAD:
                p.payload = msg.subspan(off + kAttrHdr, dlen);
                have_payload = true;
                break;
            case NFQA_MARK:
                if (dlen == 4) p.mark = be32(d); else bad = true;
                break;
            case NFQA_IFINDEX_INDEV:
                if (dlen == 4) p.indev = be32(d); else bad = true;
                break;
            case NFQA_IFINDEX_OUTDEV:
                if (dlen == 4) p.outdev = be32(d); else bad = true;
                break;
            case NFQA_CAP_LEN:
                if (dlen == 4) {
                    p.cap_len = be32(d);
                    have_cap = true;
                } else {
                    bad = true;
                }
                break;
            case NFQA_SKB_INFO:
                if (dlen == 4) {
                    const uint32_t info = be32(d);
                    p.csum_partial = (info & NFQA_SKB_CSUMNOTREADY) != 0;
                    p.gso = (info & NFQA_SKB_GSO) != 0;
                    p.csum_not_verified = (info & NFQA_SKB_CSUM_NOTVERIFIED) != 0;
                } else {
                    bad = true;
                }
                break;
            default:
                break;  // timestamps, hw address, uid/gid, ...: not needed
        }
        const size_t step = align4(alen);
        if (step >= msg.size() - off) break;  // the last attribute (its padding may be cut)
        off += step;
    }
    if (!have_id) {
        ++sum.ignored;  // nothing to give a verdict for
        return;
    }
    if (!have_cap) p.cap_len = static_cast<uint32_t>(p.payload.size());
    if (!have_payload || p.payload.empty() || p.cap_len < p.payload.size()) bad = true;
    p.malformed = bad;
    if (bad) ++sum.malformed;
    ++sum.packets;
    out.push_back(p);
}

Error errno_error(int err, const std::string& what) { return make_error(err, what + ": " + std::strerror(err)); }

}  // namespace

ParseSummary nfq_parse_buffer(std::span<const uint8_t> bytes, std::vector<QueuedPacket>& out) {
    ParseSummary sum;
    size_t off = 0;
    while (bytes.size() - off >= kNlHdr) {
        const size_t len = host32(bytes.data() + off);
        const uint16_t type = host16(bytes.data() + off + 4);
        const size_t left = bytes.size() - off;
        if (len < kNlHdr || len > left) break;
        ++sum.messages;
        auto msg = bytes.subspan(off, len);
        if (type == kNfqPacket) {
            parse_packet_msg(msg, sum, out);
        } else if (type == NLMSG_ERROR) {
            if (len >= kNlHdr + 4) {
                const int32_t code = static_cast<int32_t>(host32(msg.data() + kNlHdr));
                if (code != 0) {
                    if (sum.errors == 0) {
                        sum.first_error = code < 0 ? -code : code;
                        // The echoed request header follows: its seq is the packet id.
                        sum.first_error_seq = len >= kNlHdr + 4 + kNlHdr ? host32(msg.data() + kNlHdr + 4 + 8) : 0;
                    }
                    ++sum.errors;
                }
            } else {
                ++sum.ignored;
            }
        } else {
            ++sum.ignored;
        }
        const size_t step = align4(len);
        if (step >= left) {
            off = bytes.size();
            break;
        }
        off += step;
    }
    sum.trailing_bytes = bytes.size() - off;
    return sum;
}

// ------------------------------------------------------------------ verdicts

Status VerdictBatch::add(uint16_t queue, uint32_t id, uint32_t verdict, std::span<const uint8_t> replacement,
                         std::optional<uint32_t> mark, std::optional<CtMark> ct_mark) {
    if (verdict != kAccept && verdict != kDrop)
        return make_error(EINVAL, "nfqueue verdict " + std::to_string(verdict) + ": only NF_ACCEPT or NF_DROP");
    if (replacement.size() > kMaxVerdictPayload)
        return make_error(EMSGSIZE, "nfqueue verdict: replacement of " + std::to_string(replacement.size()) +
                                        " bytes exceeds " + std::to_string(kMaxVerdictPayload));
    const size_t verdict_attr = kAttrHdr + 8;
    const size_t mark_attr = mark ? kAttrHdr + 4 : 0;
    const size_t ct_attr = ct_mark ? kAttrHdr + 2 * (kAttrHdr + 4) : 0;
    const size_t payload_attr = replacement.empty() ? 0 : align4(kAttrHdr + replacement.size());
    const size_t msg_len = kNlHdr + kNfgenHdr + verdict_attr + mark_attr + ct_attr + payload_attr;
    if (buf_.size() < len_ + msg_len) buf_.resize(std::max(buf_.size() * 2, len_ + msg_len + 4096));
    const size_t base = len_;
    std::memset(buf_.data() + base, 0, msg_len);
    // nlmsghdr (host order). seq = packet id: an error answer names the packet.
    put32(buf_, base, static_cast<uint32_t>(msg_len));
    put16(buf_, base + 4, kNfqVerdict);
    put16(buf_, base + 6, NLM_F_REQUEST);
    put32(buf_, base + 8, id);
    // nfgenmsg
    buf_[base + kNlHdr] = AF_UNSPEC;
    buf_[base + kNlHdr + 1] = NFNETLINK_V0;
    buf_[base + kNlHdr + 2] = static_cast<uint8_t>(queue >> 8);
    buf_[base + kNlHdr + 3] = static_cast<uint8_t>(queue);
    size_t off = base + kNlHdr + kNfgenHdr;
    put16(buf_, off, static_cast<uint16_t>(verdict_attr));
    put16(buf_, off + 2, NFQA_VERDICT_HDR);
    put_be32(buf_, off + 4, verdict);
    put_be32(buf_, off + 8, id);
    off += verdict_attr;
    if (mark) {
        put16(buf_, off, static_cast<uint16_t>(mark_attr));
        put16(buf_, off + 2, NFQA_MARK);
        put_be32(buf_, off + 4, *mark);
        off += mark_attr;
    }
    if (ct_mark) {  // NFQA_CT (nested) { CTA_MARK, CTA_MARK_MASK }, big-endian values
        put16(buf_, off, static_cast<uint16_t>(ct_attr));
        put16(buf_, off + 2, NFQA_CT | NLA_F_NESTED);
        put16(buf_, off + 4, kAttrHdr + 4);
        put16(buf_, off + 6, CTA_MARK);
        put_be32(buf_, off + 8, ct_mark->value);
        put16(buf_, off + 12, kAttrHdr + 4);
        put16(buf_, off + 14, CTA_MARK_MASK);
        put_be32(buf_, off + 16, ct_mark->mask);
        off += ct_attr;
    }
    if (!replacement.empty()) {
        put16(buf_, off, static_cast<uint16_t>(kAttrHdr + replacement.size()));
        put16(buf_, off + 2, NFQA_PAYLOAD);
        std::memcpy(buf_.data() + off + kAttrHdr, replacement.data(), replacement.size());
    }
    len_ += msg_len;
    ++count_;
    return {};
}

Status nfq_send_verdicts(nft::NlSocket& sock, const VerdictBatch& batch) {
    if (batch.empty()) return {};
    if (sock.fd() < 0) return make_error(EBADF, "nfqueue verdict: socket closed");
    sock.ensure_sndbuf(batch.bytes().size());
    return sock.send(batch.bytes());
}

Status nfq_verdict(nft::NlSocket& sock, uint16_t queue, uint32_t id, uint32_t verdict,
                   std::span<const uint8_t> replacement, std::optional<uint32_t> mark) {
    VerdictBatch b;
    if (Status st = b.add(queue, id, verdict, replacement, mark); !st) return st;
    return nfq_send_verdicts(sock, b);
}

Status nfq_complete_checksum(std::span<uint8_t> packet) {
    auto p = parse(std::span<const uint8_t>(packet.data(), packet.size()),
                   ParseOptions{false, TcpChecksum::unverified});
    if (!p) return make_error(errc::malformed, "complete checksum: " + p.error().message);
    const size_t to = p->tcp_offset;
    const uint16_t c = csum::internet_checksum(std::span<const uint8_t>(packet.data() + to, packet.size() - to));
    packet[to + 16] = static_cast<uint8_t>(c >> 8);
    packet[to + 17] = static_cast<uint8_t>(c);
    return {};
}

// ---------------------------------------------------------------- binding

Result<nft::NlSocket> nfq_bind(const nft::Netns& ns, uint16_t queue, uint32_t copy_range) {
    auto sock = ns.open_socket(NETLINK_NETFILTER);
    if (!sock) return sock.error();
    // One config message: the kernel binds first (NFQA_CFG_CMD), then applies
    // the mode, the length and the flags to the new instance.
    std::vector<uint8_t> b(256, 0);
    size_t off = kNlHdr + kNfgenHdr;
    auto attr = [&](uint16_t type, const void* data, size_t len) {
        put16(b, off, static_cast<uint16_t>(kAttrHdr + len));
        put16(b, off + 2, type);
        std::memcpy(b.data() + off + kAttrHdr, data, len);
        off += align4(kAttrHdr + len);
    };
    nfqnl_msg_config_cmd cmd{};
    cmd.command = NFQNL_CFG_CMD_BIND;
    attr(NFQA_CFG_CMD, &cmd, sizeof cmd);
    nfqnl_msg_config_params params{};
    params.copy_range = htonl(copy_range);
    params.copy_mode = NFQNL_COPY_PACKET;
    attr(NFQA_CFG_PARAMS, &params, sizeof params);
    const uint32_t maxlen = htonl(kQueueMaxLen);
    attr(NFQA_CFG_QUEUE_MAXLEN, &maxlen, 4);
    // The mask names F_FAIL_OPEN too: it is cleared explicitly (fail closed).
    const uint32_t mask = htonl(NFQA_CFG_F_GSO | NFQA_CFG_F_FAIL_OPEN);
    const uint32_t flags = htonl(NFQA_CFG_F_GSO);
    attr(NFQA_CFG_MASK, &mask, 4);
    attr(NFQA_CFG_FLAGS, &flags, 4);
    const uint32_t seq = sock->next_seq();
    put32(b, 0, static_cast<uint32_t>(off));
    put16(b, 4, kNfqConfig);
    put16(b, 6, NLM_F_REQUEST | NLM_F_ACK);
    put32(b, 8, seq);
    b[kNlHdr] = AF_UNSPEC;
    b[kNlHdr + 1] = NFNETLINK_V0;
    b[kNlHdr + 2] = static_cast<uint8_t>(queue >> 8);
    b[kNlHdr + 3] = static_cast<uint8_t>(queue);
    if (Status st = sock->transact(std::span<const uint8_t>(b.data(), off), seq, seq); !st)
        return make_error(st.error().code, "NFQUEUE " + std::to_string(queue) + ": bind in netns " + ns.path() +
                                               ": " + st.error().message);
    const int fd = sock->fd();
    int rcv = kQueueRcvBuf;
    if (::setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcv, sizeof rcv) != 0)
        (void)::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
    int off_flag = 0;  // report overruns (ENOBUFS): each one is a dropped packet
    if (::setsockopt(fd, SOL_NETLINK, NETLINK_NO_ENOBUFS, &off_flag, sizeof off_flag) != 0)
        return errno_error(errno, "NFQUEUE " + std::to_string(queue) + ": NETLINK_NO_ENOBUFS");
    return std::move(*sock);
}

// ---------------------------------------------------------- kernel stats

Result<KernelQueueStats> nfq_parse_kernel_stats(std::string_view text, uint16_t queue) {
    while (!text.empty()) {
        const size_t nl = text.find('\n');
        std::string_view line = text.substr(0, nl);
        text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
        uint64_t v[9] = {};
        size_t n = 0;
        size_t i = 0;
        bool bad = false;
        while (i < line.size() && n < 9) {
            while (i < line.size() && line[i] == ' ') ++i;
            if (i == line.size()) break;
            uint64_t x = 0;
            size_t digits = 0;
            for (; i < line.size() && line[i] >= '0' && line[i] <= '9' && digits < 20; ++i, ++digits)
                x = x * 10 + static_cast<uint64_t>(line[i] - '0');
            if (digits == 0 || (i < line.size() && line[i] != ' ')) {
                bad = true;
                break;
            }
            v[n++] = x;
        }
        if (line.find_first_not_of(' ') == std::string_view::npos) continue;  // a blank line
        if (bad || n < 7) return make_error(EBADMSG, "nfnetlink_queue: a line that does not parse");
        if (v[0] != queue) continue;
        KernelQueueStats st;
        st.waiting = v[2];
        st.queue_dropped = v[5];
        st.user_dropped = v[6];
        return st;
    }
    return make_error(ENOENT, "nfnetlink_queue: queue " + std::to_string(queue) + " is not bound");
}

Result<int> nfq_open_kernel_stats(const nft::Netns& ns) {
    int fd = -1;
    int err = 0;
    // /proc/thread-self: the netns of the helper thread that entered `ns`.
    auto st = ns.run_inside([&] {
        fd = ::open("/proc/thread-self/net/netfilter/nfnetlink_queue", O_RDONLY | O_CLOEXEC);
        if (fd < 0) err = errno;
    });
    if (!st) return st.error();
    if (fd < 0) return errno_error(err, "open nfnetlink_queue in netns " + ns.path());
    return fd;
}

Result<KernelQueueStats> nfq_read_kernel_stats(int fd, uint16_t queue) {
    char buf[4096];
    size_t len = 0;
    if (::lseek(fd, 0, SEEK_SET) < 0) return errno_error(errno, "nfnetlink_queue: seek");
    while (len < sizeof buf) {
        ssize_t r = ::read(fd, buf + len, sizeof buf - len);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return errno_error(errno, "nfnetlink_queue: read");
        if (r == 0) break;
        len += static_cast<size_t>(r);
    }
    return nfq_parse_kernel_stats(std::string_view(buf, len), queue);
}

// ---------------------------------------------------------------- reader

struct QueueReader::Impl : std::enable_shared_from_this<Impl> {
    Impl(boost::asio::io_context& io_, nft::Netns& ns_, uint16_t queue_, Handler handler_, Options opt_)
        : io(io_), ns(ns_), queue(queue_), handler(std::move(handler_)), opt(std::move(opt_)) {
        if (opt.max_datagrams == 0) opt.max_datagrams = 1;
        if (opt.datagram_size < 4096) opt.datagram_size = 4096;
    }

    boost::asio::io_context& io;
    nft::Netns& ns;
    uint16_t queue;
    Handler handler;
    Options opt;
    std::optional<nft::NlSocket> sock;
    std::unique_ptr<boost::asio::posix::stream_descriptor> sd;
    uint64_t generation = 0;
    // max_datagrams receive buffers of datagram_size bytes (2.2 MiB with the
    // defaults) in one anonymous mapping: pages are only backed once recv()
    // writes them, so a pod's reader costs what its packets touch (SYNs: the
    // first page of a buffer or two), not 2.2 MiB of zeroed heap per pod.
    struct Area {
        uint8_t* base = nullptr;
        size_t bytes = 0;
        Area() = default;
        Area(const Area&) = delete;
        Area& operator=(const Area&) = delete;
        ~Area() {
            if (base != nullptr) ::munmap(base, bytes);
        }
    } area;
    std::vector<size_t> lens;
    uint8_t* buf(size_t i) const { return area.base + i * opt.datagram_size; }
    std::vector<QueuedPacket> pkts;
    VerdictBatch batch;
    QueueStats stats;

    void arm() {
        sd->async_wait(boost::asio::posix::stream_descriptor::wait_read,
                       [self = shared_from_this(), gen = generation](boost::system::error_code ec) {
                           if (ec || gen != self->generation || !self->sd) return;
                           self->on_ready();
                       });
    }

    void count_errors(const ParseSummary& s) {
        if (s.errors == 0) return;
        stats.verdict_errors += s.errors;
        stats.last_verdict_error = s.first_error;
    }

    void on_ready() {
        ++stats.wakeups;
        const int fd = sock->fd();
        size_t n = 0;
        while (n < opt.max_datagrams) {
            ssize_t r = ::recv(fd, buf(n), opt.datagram_size, MSG_DONTWAIT);
            if (r < 0) {
                if (errno == EINTR) continue;
                if (errno == ENOBUFS) {  // the kernel dropped what it could not deliver
                    ++stats.overruns;
                    continue;
                }
                break;  // EAGAIN: drained
            }
            lens[n] = static_cast<size_t>(r);
            ++n;
        }
        pkts.clear();
        batch.clear();
        for (size_t i = 0; i < n; ++i) {
            std::span<const uint8_t> dg(buf(i), lens[i]);
            if (opt.tap) opt.tap(dg);
            count_errors(nfq_parse_buffer(dg, pkts));
        }
        stats.datagrams += n;
        for (const QueuedPacket& p : pkts) judge(p);
        if (!batch.empty()) {
            if (Status st = nfq_send_verdicts(*sock, batch); !st) {
                stats.verdict_errors += batch.count();
                stats.last_verdict_error = st.error().code;
            }
        }
        stats.max_batch = std::max<uint64_t>(stats.max_batch, pkts.size());
        arm();
    }

    void add(const QueuedPacket& p, uint32_t verdict, std::span<const uint8_t> replacement,
             std::optional<uint32_t> mark, std::optional<CtMark> ct_mark = {}) {
        ++stats.packets;
        if (!replacement.empty() && verdict == kAccept &&
            batch.add(p.queue, p.id, verdict, replacement, mark, ct_mark)) {
            ++stats.accepted;
            ++stats.rewritten;
            return;
        }
        if (!replacement.empty()) {  // could not carry the rewrite: never pass the original
            if (verdict == kAccept) ++stats.rewrite_failed;
            verdict = kDrop;
        }
        if (!batch.add(p.queue, p.id, verdict == kAccept ? kAccept : kDrop, {}, mark,
                       verdict == kAccept ? ct_mark : std::nullopt))
            return;
        if (verdict == kAccept)
            ++stats.accepted;
        else
            ++stats.dropped;
    }

    void judge(const QueuedPacket& p) {
        if (p.malformed) {
            ++stats.malformed;
            add(p, kDrop, {}, {});
            return;
        }
        Decision d;
        try {
            d = handler(p);
        } catch (...) {
            ++stats.handler_errors;
            add(p, kDrop, {}, {});
            return;
        }
        if (d.verdict != kAccept) {
            add(p, kDrop, {}, d.mark);
            return;
        }
        if (!d.replacement.empty() && p.csum_partial) {
            if (!nfq_complete_checksum(d.replacement)) {
                add(p, kDrop, {}, {});
                return;
            }
            ++stats.checksums_completed;
        }
        add(p, kAccept, d.replacement, d.mark, d.ct_mark);
    }

    Status start() {
        if (sock) return {};
        auto s = nfq_bind(ns, queue, opt.copy_range);
        if (!s) return s.error();
        const int dupfd = ::fcntl(s->fd(), F_DUPFD_CLOEXEC, 0);
        if (dupfd < 0) return errno_error(errno, "NFQUEUE reader: dup");
        sock.emplace(std::move(*s));
        sd = std::make_unique<boost::asio::posix::stream_descriptor>(io, dupfd);
        if (area.base == nullptr) {
            size_t bytes = opt.max_datagrams * opt.datagram_size;
            void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED) {
                sock.reset();
                sd.reset();
                return errno_error(errno, "NFQUEUE reader: receive buffers");
            }
            area.base = static_cast<uint8_t*>(p);
            area.bytes = bytes;
            lens.assign(opt.max_datagrams, 0);
        }
        ++generation;
        arm();
        return {};
    }

    void stop() {
        ++generation;
        if (sd) {
            boost::system::error_code ec;
            sd->cancel(ec);
            sd->close(ec);
            sd.reset();
        }
        sock.reset();  // closing the netlink socket unbinds the queue
    }
};

QueueReader::QueueReader(boost::asio::io_context& io, nft::Netns& ns, uint16_t queue, Handler handler)
    : QueueReader(io, ns, queue, std::move(handler), Options{}) {}

QueueReader::QueueReader(boost::asio::io_context& io, nft::Netns& ns, uint16_t queue, Handler handler,
                         Options options)
    : impl_(std::make_shared<Impl>(io, ns, queue, std::move(handler), std::move(options))) {}

QueueReader::~QueueReader() { impl_->stop(); }

Status QueueReader::start() { return impl_->start(); }
void QueueReader::stop() { impl_->stop(); }
bool QueueReader::running() const { return impl_->sock.has_value(); }
QueueStats QueueReader::stats() const { return impl_->stats; }

}  // namespace signet::handshake
