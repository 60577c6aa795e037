#include "conntrack.h"

#include <arpa/inet.h>
#include <libmnl/libmnl.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <netinet/in.h>
#include <linux/sock_diag.h>
#include <sys/socket.h>
#include <endian.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

namespace signet::nft {

namespace {

constexpr uint16_t kCtNew = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW;
constexpr uint16_t kCtDelete = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE;

// Iterates the attributes in [data, data+len) safely.
template <typename F>
void for_each_attr(const void* data, size_t len, F&& fn) {
    const auto* attr = static_cast<const nlattr*>(data);
    int left = static_cast<int>(len);
    while (left >= static_cast<int>(sizeof(nlattr)) && mnl_attr_ok(attr, left)) {
        fn(attr);
        int step = static_cast<int>(MNL_ALIGN(attr->nla_len));
        if (step <= 0 || step > left) break;
        left -= step;
        attr = reinterpret_cast<const nlattr*>(reinterpret_cast<const uint8_t*>(attr) + step);
    }
}

template <typename F>
void for_each_nested(const nlattr* nest, F&& fn) {
    for_each_attr(mnl_attr_get_payload(nest), mnl_attr_get_payload_len(nest), fn);
}

bool get_u8(const nlattr* a, uint8_t& v) {
    if (mnl_attr_get_payload_len(a) < 1) return false;
    std::memcpy(&v, mnl_attr_get_payload(a), 1);
    return true;
}
bool get_be16(const nlattr* a, uint16_t& v) {
    if (mnl_attr_get_payload_len(a) < 2) return false;
    uint16_t raw;
    std::memcpy(&raw, mnl_attr_get_payload(a), 2);
    v = ntohs(raw);
    return true;
}
bool get_be32(const nlattr* a, uint32_t& v) {
    if (mnl_attr_get_payload_len(a) < 4) return false;
    uint32_t raw;
    std::memcpy(&raw, mnl_attr_get_payload(a), 4);
    v = ntohl(raw);
    return true;
}
bool get_be64(const nlattr* a, uint64_t& v) {
    if (mnl_attr_get_payload_len(a) < 8) return false;
    uint64_t raw;
    std::memcpy(&raw, mnl_attr_get_payload(a), 8);
    v = be64toh(raw);
    return true;
}
bool get_addr(const nlattr* a, size_t n, Addr& out) {
    if (mnl_attr_get_payload_len(a) < n) return false;
    out = Addr{};
    std::memcpy(out.bytes.data(), mnl_attr_get_payload(a), n);
    return true;
}

bool parse_tuple(const nlattr* nest, CtTuple& t) {
    bool have_src = false, have_dst = false, have_proto = false, v4 = false, v6 = false;
    for_each_nested(nest, [&](const nlattr* a) {
        switch (mnl_attr_get_type(a)) {
        case CTA_TUPLE_IP:
            for_each_nested(a, [&](const nlattr* ip) {
                switch (mnl_attr_get_type(ip)) {
                case CTA_IP_V4_SRC: if (get_addr(ip, 4, t.src)) have_src = v4 = true; break;
                case CTA_IP_V4_DST: if (get_addr(ip, 4, t.dst)) have_dst = v4 = true; break;
                case CTA_IP_V6_SRC: if (get_addr(ip, 16, t.src)) have_src = v6 = true; break;
                case CTA_IP_V6_DST: if (get_addr(ip, 16, t.dst)) have_dst = v6 = true; break;
                default: break;
                }
            });
            break;
        case CTA_TUPLE_PROTO:
            for_each_nested(a, [&](const nlattr* p) {
                switch (mnl_attr_get_type(p)) {
                case CTA_PROTO_NUM: have_proto = get_u8(p, t.proto); break;
                case CTA_PROTO_SRC_PORT: get_be16(p, t.sport); break;
                case CTA_PROTO_DST_PORT: get_be16(p, t.dport); break;
                default: break;
                }
            });
            break;
        default: break;
        }
    });
    if (v4 == v6) return false;  // neither, or a mix of families
    t.family = v4 ? Family::v4 : Family::v6;
    return have_src && have_dst && have_proto;
}

void put_tuple(nlmsghdr* nlh, const CtTuple& t) {
    nlattr* orig = mnl_attr_nest_start(nlh, CTA_TUPLE_ORIG);
    nlattr* ip = mnl_attr_nest_start(nlh, CTA_TUPLE_IP);
    if (t.family == Family::v4) {
        mnl_attr_put(nlh, CTA_IP_V4_SRC, 4, t.src.bytes.data());
        mnl_attr_put(nlh, CTA_IP_V4_DST, 4, t.dst.bytes.data());
    } else {
        mnl_attr_put(nlh, CTA_IP_V6_SRC, 16, t.src.bytes.data());
        mnl_attr_put(nlh, CTA_IP_V6_DST, 16, t.dst.bytes.data());
    }
    mnl_attr_nest_end(nlh, ip);
    nlattr* proto = mnl_attr_nest_start(nlh, CTA_TUPLE_PROTO);
    mnl_attr_put_u8(nlh, CTA_PROTO_NUM, t.proto);
    if (t.proto == IPPROTO_TCP || t.proto == IPPROTO_UDP || t.proto == IPPROTO_SCTP || t.proto == IPPROTO_UDPLITE ||
        t.proto == IPPROTO_DCCP) {
        mnl_attr_put_u16(nlh, CTA_PROTO_SRC_PORT, htons(t.sport));
        mnl_attr_put_u16(nlh, CTA_PROTO_DST_PORT, htons(t.dport));
    }
    mnl_attr_nest_end(nlh, proto);
    mnl_attr_nest_end(nlh, orig);
}

}  // namespace

namespace {

std::optional<CtEntry> parse_entry(const nlmsghdr* nlh, size_t len, bool allow_delete) {
    if (len < sizeof(nlmsghdr) || nlh->nlmsg_len < NLMSG_HDRLEN + sizeof(nfgenmsg) || nlh->nlmsg_len > len)
        return std::nullopt;
    if (nlh->nlmsg_type != kCtNew && !(allow_delete && nlh->nlmsg_type == kCtDelete)) return std::nullopt;
    CtEntry e;
    bool orig = false, reply = false;
    size_t attrs_off = NLMSG_HDRLEN + MNL_ALIGN(sizeof(nfgenmsg));
    if (nlh->nlmsg_len < attrs_off) return std::nullopt;
    const auto* base = reinterpret_cast<const uint8_t*>(nlh) + attrs_off;
    for_each_attr(base, nlh->nlmsg_len - attrs_off, [&](const nlattr* a) {
        switch (mnl_attr_get_type(a)) {
        case CTA_TUPLE_ORIG: orig = parse_tuple(a, e.orig); break;
        case CTA_TUPLE_REPLY: reply = parse_tuple(a, e.reply); break;
        case CTA_MARK: get_be32(a, e.mark); break;
        case CTA_ZONE: get_be16(a, e.zone); break;
        case CTA_ID: get_be32(a, e.id); break;
        case CTA_STATUS: get_be32(a, e.status); break;
        case CTA_COUNTERS_ORIG:
        case CTA_COUNTERS_REPLY: {
            bool orig_dir = mnl_attr_get_type(a) == CTA_COUNTERS_ORIG;
            for_each_nested(a, [&](const nlattr* c) {
                uint16_t t = mnl_attr_get_type(c);
                if (t == CTA_COUNTERS_PACKETS) get_be64(c, orig_dir ? e.orig_packets : e.reply_packets);
                if (t == CTA_COUNTERS_BYTES) get_be64(c, orig_dir ? e.orig_bytes : e.reply_bytes);
            });
            break;
        }
        case CTA_TIMESTAMP:
            for_each_nested(a, [&](const nlattr* t) {
                if (mnl_attr_get_type(t) == CTA_TIMESTAMP_START) get_be64(t, e.start_ns);
                if (mnl_attr_get_type(t) == CTA_TIMESTAMP_STOP) get_be64(t, e.stop_ns);
            });
            break;
        case CTA_PROTOINFO:
            for_each_nested(a, [&](const nlattr* p) {
                if (mnl_attr_get_type(p) != CTA_PROTOINFO_TCP) return;
                for_each_nested(p, [&](const nlattr* t) {
                    if (mnl_attr_get_type(t) == CTA_PROTOINFO_TCP_STATE) get_u8(t, e.tcp_state);
                });
            });
            break;
        default: break;
        }
    });
    if (!orig || !reply) return std::nullopt;
    return e;
}

}  // namespace

std::optional<CtEntry> ct_parse_message(const nlmsghdr* nlh, size_t len) { return parse_entry(nlh, len, false); }

size_t ct_parse_events(std::span<const uint8_t> bytes, std::vector<CtEvent>& out) {
    return for_each_nlmsg(bytes, [&](const nlmsghdr* nlh, size_t len) {
        if (auto e = parse_entry(nlh, len, true))
            out.push_back(CtEvent{nlh->nlmsg_type == kCtDelete                 ? CtEvent::Destroy
                                  : (nlh->nlmsg_flags & NLM_F_CREATE) != 0 ? CtEvent::New
                                                                          : CtEvent::Update,
                                  std::move(*e)});
    });
}

Result<NlSocket> ct_subscribe(const Netns& ns, const CtSubscribeOptions& opts) {
    auto sock = ns.open_socket(NETLINK_NETFILTER);
    if (!sock) return sock.error();
    const std::pair<unsigned, unsigned> groups[] = {{kCtGroupNew, NFNLGRP_CONNTRACK_NEW},
                                                    {kCtGroupUpdate, NFNLGRP_CONNTRACK_UPDATE},
                                                    {kCtGroupDestroy, NFNLGRP_CONNTRACK_DESTROY}};
    for (auto [bit, group] : groups) {
        if ((opts.groups & bit) == 0) continue;
        if (::setsockopt(sock->fd(), SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &group, sizeof group) != 0) {
            int err = errno;
            return make_error(err, "subscribing to conntrack events in netns " + ns.path() + ": " + std::strerror(err));
        }
    }
    // Event bursts (a scan, a flood of short connections) must not overflow
    // the buffer at once; what still overflows is counted (socket_drops).
    int size = opts.receive_buffer;
    if (size > 0) (void)::setsockopt(sock->fd(), SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size);
    if (opts.no_enobufs) {
        int one = 1;
        (void)::setsockopt(sock->fd(), SOL_NETLINK, NETLINK_NO_ENOBUFS, &one, sizeof one);
    }
    return std::move(*sock);
}

Result<uint64_t> socket_drops(int fd) {
    uint32_t mem[SK_MEMINFO_VARS] = {};
    socklen_t len = sizeof mem;
    if (::getsockopt(fd, SOL_SOCKET, SO_MEMINFO, mem, &len) != 0) {
        int err = errno;
        return make_error(err, std::string("SO_MEMINFO: ") + std::strerror(err));
    }
    if (len < (SK_MEMINFO_DROPS + 1) * sizeof(uint32_t)) return make_error(EINVAL, "SO_MEMINFO: short answer");
    return static_cast<uint64_t>(mem[SK_MEMINFO_DROPS]);
}

Status ct_enable_accounting(const Netns& ns, bool timestamps) {
    Status result;
    Status run = ns.run_inside([&] {
        // /proc/sys/net shows the netns of the thread that opens it.
        auto set = [&](const char* name) {
            std::string path = std::string("/proc/sys/net/netfilter/") + name;
            int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
            if (fd < 0) {
                int err = errno;
                result = make_error(err, std::string(name) + ": " + std::strerror(err));
                return false;
            }
            bool ok = ::write(fd, "1\n", 2) == 2;
            int err = errno;
            ::close(fd);
            if (!ok) result = make_error(err, std::string(name) + ": " + std::strerror(err));
            return ok;
        };
        if (set("nf_conntrack_acct") && timestamps) set("nf_conntrack_timestamp");
    });
    if (!run) return run;
    if (!result) return make_error(result.error().code, result.error().message + " in netns " + ns.path());
    return {};
}

size_t ct_parse_buffer(std::span<const uint8_t> bytes, std::vector<CtEntry>& out) {
    return for_each_nlmsg(bytes, [&](const nlmsghdr* nlh, size_t len) {
        if (auto e = ct_parse_message(nlh, len)) out.push_back(std::move(*e));
    });
}

namespace {

// An IPCTNL_MSG_CT_GET request in `req`: a dump of both families, or one entry by tuple.
// A conntrack request: the header, the nfgenmsg and one tuple (well under
// 512 bytes).
constexpr size_t kRequestSize = 512;

std::span<const uint8_t> ct_get_request(std::vector<uint8_t>& req, uint32_t seq, const CtTuple* orig, uint16_t zone) {
    std::fill(req.begin(), req.end(), 0);
    nlmsghdr* nlh = mnl_nlmsg_put_header(req.data());
    nlh->nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET;
    nlh->nlmsg_flags = NLM_F_REQUEST | (orig == nullptr ? NLM_F_DUMP : NLM_F_ACK);
    nlh->nlmsg_seq = seq;
    auto* nfg = static_cast<nfgenmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(nfgenmsg)));
    nfg->nfgen_family = orig == nullptr ? AF_UNSPEC : orig->family == Family::v4 ? AF_INET : AF_INET6;
    nfg->version = NFNETLINK_V0;
    nfg->res_id = 0;
    if (orig != nullptr) {
        put_tuple(nlh, *orig);
        if (zone != 0) mnl_attr_put_u16(nlh, CTA_ZONE, htons(zone));
    }
    return std::span<const uint8_t>(req.data(), nlh->nlmsg_len);
}

}  // namespace

Result<std::vector<CtEntry>> ct_list(Netns& ns) {
    auto sock = ns.nfnl();
    if (!sock) return sock.error();
    std::vector<CtEntry> out;
    std::vector<uint8_t> req(kRequestSize);
    Status s = (*sock)->query(
        [&](uint32_t seq) { return ct_get_request(req, seq, nullptr, 0); },
        [&](const nlmsghdr* nlh) {
            if (auto e = ct_parse_message(nlh, nlh->nlmsg_len)) out.push_back(std::move(*e));
            return true;  // skip what we do not understand
        },
        [&] { out.clear(); });
    if (!s) {
        if (s.error().code == ETIMEDOUT || s.error().code == ENOBUFS) ns.drop_nfnl();
        return make_error(s.error().code, "listing conntrack in netns " + ns.path() + ": " + s.error().message);
    }
    return out;
}

Result<CtEntry> ct_get(Netns& ns, const CtTuple& orig, uint16_t zone) {
    auto sock = ns.nfnl();
    if (!sock) return sock.error();
    std::optional<CtEntry> found;
    std::vector<uint8_t> req(kRequestSize);
    Status s = (*sock)->query(
        [&](uint32_t seq) { return ct_get_request(req, seq, &orig, zone); },
        [&](const nlmsghdr* nlh) {
            if (auto e = ct_parse_message(nlh, nlh->nlmsg_len)) found = std::move(*e);
            return true;
        },
        [&] { found.reset(); });
    if (!s) {
        if (s.error().code == ETIMEDOUT || s.error().code == ENOBUFS) ns.drop_nfnl();
        return s.error();
    }
    if (!found) return make_error(ENOENT, "no such conntrack entry");
    return std::move(*found);
}

Status ct_delete(Netns& ns, const CtTuple& orig, uint16_t zone) {
    auto sock = ns.nfnl();
    if (!sock) return sock.error();
    std::vector<uint8_t> req(kRequestSize);
    nlmsghdr* nlh = mnl_nlmsg_put_header(req.data());
    nlh->nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE;
    nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
    uint32_t seq = (*sock)->next_seq();
    nlh->nlmsg_seq = seq;
    auto* nfg = static_cast<nfgenmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(nfgenmsg)));
    nfg->nfgen_family = orig.family == Family::v4 ? AF_INET : AF_INET6;
    nfg->version = NFNETLINK_V0;
    nfg->res_id = 0;
    put_tuple(nlh, orig);
    if (zone != 0) mnl_attr_put_u16(nlh, CTA_ZONE, htons(zone));
    Status s = (*sock)->transact(std::span<const uint8_t>(req.data(), nlh->nlmsg_len), seq, seq);
    if (!s) {
        if (s.error().code == ETIMEDOUT || s.error().code == ENOBUFS) ns.drop_nfnl();
        return make_error(s.error().code, "deleting conntrack entry in netns " + ns.path() + ": " + s.error().message);
    }
    return {};
}

}  // namespace signet::nft
