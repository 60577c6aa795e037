#include "netlink_backend.h"

#include <arpa/inet.h>
#include <libmnl/libmnl.h>
#include <libnftnl/chain.h>
#include <libnftnl/common.h>
#include <libnftnl/expr.h>
#include <libnftnl/rule.h>
#include <libnftnl/set.h>
#include <libnftnl/table.h>
#include <libnftnl/udata.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/xt_NFQUEUE.h>
#include <linux/netfilter/nf_conntrack_common.h>
#include <net/if.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>

#include "nflog.h"

namespace signet::nft {

namespace {

// Not in Debian 12's (Linux 6.1) uapi headers; the kernel has it since 6.3.
constexpr uint16_t kMsgDestroyTable = 26;  // NFT_MSG_DESTROYTABLE
// nftables' datatype ids (what `nft list` uses to print set keys).
constexpr uint32_t kTypeIpAddr = 7;
constexpr uint32_t kTypeIp6Addr = 8;
constexpr size_t kElemsPerMsg = 256;
// A hash set's elements are single addresses: the merged ranges of a
// pod-address set are expanded. Far more than any cluster's pods; a set
// beyond it is refused (a compiler bug, not a cluster).
constexpr size_t kMaxHashElems = size_t{1} << 22;
constexpr size_t kMaxMsg = 64 * 1024;
constexpr uint32_t kReg = NFT_REG_1;
constexpr size_t kMaxComment = 250;  // NFT_USERDATA_MAXLEN minus TLV overhead

// ------------------------------------------------------------ RAII

struct TableDel { void operator()(nftnl_table* p) const { nftnl_table_free(p); } };
struct ChainDel { void operator()(nftnl_chain* p) const { nftnl_chain_free(p); } };
struct RuleDel { void operator()(nftnl_rule* p) const { nftnl_rule_free(p); } };
struct SetDel { void operator()(nftnl_set* p) const { nftnl_set_free(p); } };
struct ExprDel { void operator()(nftnl_expr* p) const { nftnl_expr_free(p); } };
struct UdataDel { void operator()(nftnl_udata_buf* p) const { nftnl_udata_buf_free(p); } };
using TablePtr = std::unique_ptr<nftnl_table, TableDel>;
using ChainPtr = std::unique_ptr<nftnl_chain, ChainDel>;
using RulePtr = std::unique_ptr<nftnl_rule, RuleDel>;
using SetPtr = std::unique_ptr<nftnl_set, SetDel>;
using ExprPtr = std::unique_ptr<nftnl_expr, ExprDel>;
using UdataPtr = std::unique_ptr<nftnl_udata_buf, UdataDel>;

const char* dir_name(Dir d) { return d == Dir::ingress ? "ingress" : "egress"; }
size_t addr_len(Family f) { return f == Family::v4 ? 4 : 16; }

std::string addr_text(Family f, const Addr& a) {
    char buf[INET6_ADDRSTRLEN] = {};
    inet_ntop(f == Family::v4 ? AF_INET : AF_INET6, a.bytes.data(), buf, sizeof buf);
    return buf;
}

// a + 1 over the family's bytes; false when a is the highest address.
bool addr_next(Family f, const Addr& a, Addr& out) {
    out = a;
    for (size_t i = addr_len(f); i-- > 0;) {
        if (++out.bytes[i] != 0) return true;
    }
    return false;
}

// a - 1; false when a is the lowest address.
bool addr_prev(Family f, const Addr& a, Addr& out) {
    out = a;
    for (size_t i = addr_len(f); i-- > 0;) {
        if (out.bytes[i]-- != 0) return true;
    }
    return false;
}

// The single addresses of `ranges` (a hash set's elements), appended to `out`.
Status expand_addresses(Family f, const std::vector<Range>& ranges, std::vector<Addr>& out) {
    for (const Range& r : ranges) {
        Addr a = r.first;
        for (;;) {
            if (out.size() >= kMaxHashElems)
                return make_error(E2BIG, "hash set over " + std::to_string(kMaxHashElems) + " addresses");
            out.push_back(a);
            if (a == r.last || !addr_next(f, a, a)) break;
        }
    }
    return {};
}

// ------------------------------------------------------------ batch

// An nfnetlink batch (BATCH_BEGIN, messages, BATCH_END) with consecutive
// sequence numbers, and a text line per message for golden tests.
class Batch {
public:
    explicit Batch(uint32_t first_seq) : first_(first_seq), seq_(first_seq) {
        char* at = grow();
        nftnl_batch_begin(at, seq_++);
        commit(at);
    }

    // Builds one nf_tables message; `payload` fills it.
    template <typename F>
    void add(uint16_t type, uint16_t flags, F&& payload, std::string text) {
        char* at = grow();
        nlmsghdr* nlh = nftnl_nlmsg_build_hdr(at, type, NFPROTO_INET, flags, seq_++);
        payload(nlh);
        last_msg_ = used_;
        commit(at);
        lines_.push_back(std::move(text));
    }

    // Errors are always reported; an ack is asked for the last message only,
    // so the answer to it marks the end of the kernel's answers (see
    // NlSocket::transact) without one ack per message filling the socket.
    void finish() {
        if (!lines_.empty()) reinterpret_cast<nlmsghdr*>(buf_.data() + last_msg_)->nlmsg_flags |= NLM_F_ACK;
        char* at = grow();
        last_ = seq_ - 1;  // the last message (acked); BATCH_END gets no answer
        nftnl_batch_end(at, seq_++);
        commit(at);
    }

    const std::vector<uint8_t>& bytes() const { return buf_; }
    uint32_t first_seq() const { return first_; }
    uint32_t last_seq() const { return last_; }
    uint32_t seqs_used() const { return seq_ - first_; }
    size_t messages() const { return lines_.size(); }
    std::string text() const {
        std::string out;
        for (const auto& l : lines_) out += l + "\n";
        return out;
    }

private:
    // Each message is built in a per-thread scratch area of kMaxMsg bytes
    // and appended at its real size: growing the batch by kMaxMsg zeroed
    // bytes per message cost three 64 KiB memsets (and reallocations) per
    // element update, in every table of a change. libmnl/libnftnl write
    // every byte of a message (headers, attributes, padding).
    char* grow() {
        used_ = buf_.size();
        thread_local std::vector<uint8_t> scratch(kMaxMsg);
        return reinterpret_cast<char*>(scratch.data());
    }
    void commit(char* at) {
        auto* nlh = reinterpret_cast<nlmsghdr*>(at);
        const auto* p = reinterpret_cast<const uint8_t*>(at);
        buf_.insert(buf_.end(), p, p + MNL_ALIGN(nlh->nlmsg_len));
    }
    std::vector<uint8_t> buf_;
    size_t used_ = 0;
    size_t last_msg_ = 0;
    uint32_t first_, seq_, last_ = 0;
    std::vector<std::string> lines_;
};

// ------------------------------------------------------------ expressions

class RuleBuilder {
public:
    RuleBuilder(const std::string& table, const std::string& chain) : r_(nftnl_rule_alloc()) {
        nftnl_rule_set_str(r_.get(), NFTNL_RULE_TABLE, table.c_str());
        nftnl_rule_set_str(r_.get(), NFTNL_RULE_CHAIN, chain.c_str());
        nftnl_rule_set_u32(r_.get(), NFTNL_RULE_FAMILY, NFPROTO_INET);
    }

    RuleBuilder& meta(uint32_t key) {
        auto e = expr("meta");
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_META_KEY, key);
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_META_DREG, kReg);
        return push(std::move(e));
    }
    RuleBuilder& cmp(uint32_t op, const void* data, uint32_t len) {
        auto e = expr("cmp");
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_CMP_SREG, kReg);
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_CMP_OP, op);
        nftnl_expr_set(e.get(), NFTNL_EXPR_CMP_DATA, data, len);
        return push(std::move(e));
    }
    RuleBuilder& cmp_u8(uint8_t v) { return cmp(NFT_CMP_EQ, &v, 1); }
    // `len` bytes at `offset` of the TCP option of kind `kind` (the rule does
    // not match a segment without that option).
    RuleBuilder& tcp_option(uint8_t kind, uint32_t offset, uint32_t len) {
        auto e = expr("exthdr");
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_EXTHDR_DREG, kReg);
        nftnl_expr_set_u8(e.get(), NFTNL_EXPR_EXTHDR_TYPE, kind);
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_EXTHDR_OFFSET, offset);
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_EXTHDR_LEN, len);
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_EXTHDR_OP, NFT_EXTHDR_OP_TCPOPT);
        return push(std::move(e));
    }
    RuleBuilder& payload(uint32_t base, uint32_t offset, uint32_t len) {
        auto e = expr("payload");
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_PAYLOAD_BASE, base);
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_PAYLOAD_OFFSET, offset);
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_PAYLOAD_LEN, len);
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_PAYLOAD_DREG, kReg);
        return push(std::move(e));
    }
    RuleBuilder& bitwise(const void* mask, const void* xorv, uint32_t len) {
        auto e = expr("bitwise");
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_BITWISE_SREG, kReg);
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_BITWISE_DREG, kReg);
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_BITWISE_LEN, len);
        nftnl_expr_set(e.get(), NFTNL_EXPR_BITWISE_MASK, mask, len);
        nftnl_expr_set(e.get(), NFTNL_EXPR_BITWISE_XOR, xorv, len);
        return push(std::move(e));
    }
    // ct status & mask != 0 (IPS_DST_NAT: the connection was translated)
    RuleBuilder& ct_status_any(uint32_t mask) {
        auto e = expr("ct");
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_CT_KEY, NFT_CT_STATUS);
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_CT_DREG, kReg);
        push(std::move(e));
        uint32_t zero = 0;
        bitwise(&mask, &zero, sizeof mask);
        return cmp(NFT_CMP_NEQ, &zero, sizeof zero);
    }
    RuleBuilder& ct_state_any(uint32_t mask) {
        auto e = expr("ct");
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_CT_KEY, NFT_CT_STATE);
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_CT_DREG, kReg);
        push(std::move(e));
        uint32_t zero = 0;
        bitwise(&mask, &zero, sizeof mask);
        return cmp(NFT_CMP_NEQ, &zero, sizeof zero);
    }
    // ct mark set <register> (the `ct` expression with a source register).
    // ct mark into the register (for a masked rewrite).
    RuleBuilder& ct_load_mark() {
        auto e = expr("ct");
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_CT_KEY, NFT_CT_MARK);
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_CT_DREG, kReg);
        return push(std::move(e));
    }
    RuleBuilder& ct_set_mark() {
        auto e = expr("ct");
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_CT_KEY, NFT_CT_MARK);
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_CT_SREG, kReg);
        return push(std::move(e));
    }
    // ct mark & mask == value
    RuleBuilder& ct_mark_is(uint32_t mask, uint32_t value) {
        auto e = expr("ct");
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_CT_KEY, NFT_CT_MARK);
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_CT_DREG, kReg);
        push(std::move(e));
        uint32_t zero = 0;
        bitwise(&mask, &zero, sizeof mask);
        return cmp(NFT_CMP_EQ, &value, sizeof value);
    }
    RuleBuilder& lookup(const std::string& set, uint32_t set_id) {
        auto e = expr("lookup");
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_LOOKUP_SREG, kReg);
        nftnl_expr_set_str(e.get(), NFTNL_EXPR_LOOKUP_SET, set.c_str());
        if (set_id != 0) nftnl_expr_set_u32(e.get(), NFTNL_EXPR_LOOKUP_SET_ID, set_id);
        return push(std::move(e));
    }
    RuleBuilder& range(const void* from, const void* to, uint32_t len) {
        auto e = expr("range");
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_RANGE_SREG, kReg);
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_RANGE_OP, NFT_RANGE_EQ);
        nftnl_expr_set(e.get(), NFTNL_EXPR_RANGE_FROM_DATA, from, len);
        nftnl_expr_set(e.get(), NFTNL_EXPR_RANGE_TO_DATA, to, len);
        return push(std::move(e));
    }
    RuleBuilder& counter() { return push(expr("counter")); }
    // Matches at most `per_second` packets a second (burst `burst`).
    RuleBuilder& limit(uint64_t per_second, uint32_t burst) {
        auto e = expr("limit");
        nftnl_expr_set_u64(e.get(), NFTNL_EXPR_LIMIT_RATE, per_second);
        nftnl_expr_set_u64(e.get(), NFTNL_EXPR_LIMIT_UNIT, 1);
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_LIMIT_BURST, burst);
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_LIMIT_TYPE, NFT_LIMIT_PKTS);
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_LIMIT_FLAGS, 0);
        return push(std::move(e));
    }
    RuleBuilder& log_group(uint16_t group, const std::string& prefix, uint32_t snaplen) {
        auto e = expr("log");
        nftnl_expr_set_u16(e.get(), NFTNL_EXPR_LOG_GROUP, group);
        nftnl_expr_set_str(e.get(), NFTNL_EXPR_LOG_PREFIX, prefix.c_str());
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_LOG_SNAPLEN, snaplen);
        return push(std::move(e));
    }
    RuleBuilder& verdict(int v) {
        auto e = expr("immediate");
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_IMM_DREG, NFT_REG_VERDICT);
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_IMM_VERDICT, static_cast<uint32_t>(v));
        return push(std::move(e));
    }
    RuleBuilder& queue_native(uint16_t num) {
        auto e = expr("queue");
        nftnl_expr_set_u16(e.get(), NFTNL_EXPR_QUEUE_NUM, num);
        nftnl_expr_set_u16(e.get(), NFTNL_EXPR_QUEUE_TOTAL, 1);
        nftnl_expr_set_u16(e.get(), NFTNL_EXPR_QUEUE_FLAGS, 0);  // no NFT_QUEUE_FLAG_BYPASS: fail closed
        return push(std::move(e));
    }
    RuleBuilder& queue_xt(uint16_t num) {
        auto e = expr("target");
        nftnl_expr_set_str(e.get(), NFTNL_EXPR_TG_NAME, "NFQUEUE");
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_TG_REV, 3);
        // libnftnl takes ownership of the info buffer (frees it with the expression).
        auto* info = static_cast<xt_NFQ_info_v3*>(std::calloc(1, sizeof(xt_NFQ_info_v3)));
        if (info != nullptr) {
            info->queuenum = num;
            info->queues_total = 1;
            info->flags = 0;  // no NFQ_FLAG_BYPASS: fail closed
            nftnl_expr_set(e.get(), NFTNL_EXPR_TG_INFO, info, sizeof(*info));
        }
        return push(std::move(e));
    }
    // To the handshake queue, by the backend the kernel offers (no bypass).
    RuleBuilder& queue(uint16_t num, QueueBackend backend) {
        return backend == QueueBackend::nft_queue ? queue_native(num) : queue_xt(num);
    }
    // ct direction == dir (IP_CT_DIR_ORIGINAL / IP_CT_DIR_REPLY)
    RuleBuilder& ct_direction(uint8_t dir) {
        auto e = expr("ct");
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_CT_KEY, NFT_CT_DIRECTION);
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_CT_DREG, kReg);
        push(std::move(e));
        return cmp(NFT_CMP_EQ, &dir, 1);
    }
    // TCP, and tcp flags & mask compared (op: NFT_CMP_EQ / NFT_CMP_NEQ) with value.
    RuleBuilder& tcp_flags(uint8_t mask, uint32_t op, uint8_t value) {
        meta(NFT_META_L4PROTO).cmp_u8(IPPROTO_TCP);
        uint8_t zero = 0;
        payload(NFT_PAYLOAD_TRANSPORT_HEADER, 13, 1).bitwise(&mask, &zero, 1);
        return cmp(op, &value, 1);
    }
    // ct mark = (ct mark & ~kCtMarkMask) | value
    RuleBuilder& ct_set_mark_bits(uint32_t value) {
        uint32_t keep = ~kCtMarkMask;
        return ct_load_mark().bitwise(&keep, &value, 4).ct_set_mark();
    }
    // meta mark = (meta mark & ~kCtMarkMask) | value
    RuleBuilder& meta_set_mark_bits(uint32_t value) {
        uint32_t keep = ~kCtMarkMask;
        meta(NFT_META_MARK).bitwise(&keep, &value, 4);
        auto e = expr("meta");
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_META_KEY, NFT_META_MARK);
        nftnl_expr_set_u32(e.get(), NFTNL_EXPR_META_SREG, kReg);
        return push(std::move(e));
    }
    // meta mark & mask != 0 (the handshake's verdicts set these bits).
    RuleBuilder& meta_mark_any(uint32_t mask) {
        uint32_t zero = 0;
        return meta(NFT_META_MARK).bitwise(&mask, &zero, 4).cmp(NFT_CMP_NEQ, &zero, 4);
    }
    RuleBuilder& comment(const std::string& text) {
        UdataPtr ud(nftnl_udata_buf_alloc(NFT_USERDATA_MAXLEN));
        if (ud && nftnl_udata_put_strz(ud.get(), NFTNL_UDATA_RULE_COMMENT, text.c_str()))
            nftnl_rule_set_data(r_.get(), NFTNL_RULE_USERDATA, nftnl_udata_buf_data(ud.get()),
                                nftnl_udata_buf_len(ud.get()));
        comment_ = text;
        return *this;
    }

    nftnl_rule* get() { return r_.get(); }
    std::string text() const {
        std::string out = "add rule inet " + std::string(nftnl_rule_get_str(r_.get(), NFTNL_RULE_TABLE)) + " " +
                          nftnl_rule_get_str(r_.get(), NFTNL_RULE_CHAIN);
        for (const auto& e : rendered_) out += " [ " + e + " ]";
        if (!comment_.empty()) out += " comment \"" + comment_ + "\"";
        return out;
    }

private:
    static ExprPtr expr(const char* name) { return ExprPtr(nftnl_expr_alloc(name)); }
    RuleBuilder& push(ExprPtr e) {
        char buf[512] = {};
        nftnl_expr_snprintf(buf, sizeof buf, e.get(), NFTNL_OUTPUT_DEFAULT, 0);
        std::string s = std::string(nftnl_expr_get_str(e.get(), NFTNL_EXPR_NAME)) + " " + buf;
        while (!s.empty() && s.back() == ' ') s.pop_back();
        rendered_.push_back(std::move(s));
        nftnl_rule_add_expr(r_.get(), e.release());
        return *this;
    }
    RulePtr r_;
    std::string comment_;
    std::vector<std::string> rendered_;
};

void add_rule(Batch& b, RuleBuilder& rb, bool at_head = false) {
    uint16_t flags = NLM_F_CREATE | (at_head ? 0 : NLM_F_APPEND);
    std::string text = rb.text();
    if (at_head) text.replace(0, 3, "insert");
    b.add(NFT_MSG_NEWRULE, flags, [&](nlmsghdr* nlh) { nftnl_rule_nlmsg_build_payload(nlh, rb.get()); }, text);
}

void syn_match(RuleBuilder& rb) {
    rb.meta(NFT_META_L4PROTO).cmp_u8(IPPROTO_TCP);
    rb.payload(NFT_PAYLOAD_TRANSPORT_HEADER, 13, 1);
    uint8_t mask = 0x07, zero = 0, syn = 0x02;  // fin|syn|rst, expect syn (SYN and SYN-ACK)
    rb.bitwise(&mask, &zero, 1);
    rb.cmp(NFT_CMP_EQ, &syn, 1);
}

void build_syn_queue_rule(RuleBuilder& rb, uint16_t queue_num, QueueBackend backend) {
    syn_match(rb);
    rb.queue(queue_num, backend);
    rb.comment("signet handshake-queue " + std::to_string(queue_num));
}

// A segment that carries signet's TCP option (kind 253, ExID 0x5347: a token
// or the final ACK's proof), whatever its conntrack state.
void build_token_queue_rule(RuleBuilder& rb, uint16_t queue_num, QueueBackend backend) {
    uint8_t tcp = IPPROTO_TCP;
    rb.meta(NFT_META_L4PROTO).cmp_u8(tcp);
    const uint8_t exid[2] = {static_cast<uint8_t>(kTokenOptionExId >> 8), static_cast<uint8_t>(kTokenOptionExId)};
    rb.tcp_option(kTokenOptionKind, 2, 2).cmp(NFT_CMP_EQ, exid, 2).queue(queue_num, backend);
    rb.comment("signet handshake-token " + std::to_string(queue_num));
}

// ------------------------------------------------------------ table content

// A base chain of signet's table: type filter, policy accept.
void add_filter_chain(Batch& b, const std::string& name, uint32_t hook, int32_t priority,
                      const char* table = kTableName) {
    ChainPtr c(nftnl_chain_alloc());
    nftnl_chain_set_str(c.get(), NFTNL_CHAIN_TABLE, table);
    nftnl_chain_set_str(c.get(), NFTNL_CHAIN_NAME, name.c_str());
    nftnl_chain_set_u32(c.get(), NFTNL_CHAIN_FAMILY, NFPROTO_INET);
    nftnl_chain_set_u32(c.get(), NFTNL_CHAIN_HOOKNUM, hook);
    nftnl_chain_set_s32(c.get(), NFTNL_CHAIN_PRIO, priority);
    nftnl_chain_set_str(c.get(), NFTNL_CHAIN_TYPE, "filter");
    nftnl_chain_set_u32(c.get(), NFTNL_CHAIN_POLICY, NF_ACCEPT);
    const char* hook_name = hook == NF_INET_LOCAL_IN    ? "input"
                            : hook == NF_INET_LOCAL_OUT ? "output"
                            : hook == NF_INET_FORWARD   ? "forward"
                                                        : "prerouting";
    b.add(NFT_MSG_NEWCHAIN, NLM_F_CREATE, [&](nlmsghdr* nlh) { nftnl_chain_nlmsg_build_payload(nlh, c.get()); },
          std::string("add chain inet ") + table + " " + name + " { type filter hook " + hook_name + " priority " +
              std::to_string(priority) + "; policy accept; }");
}

// An address set of `table`, referred to by rules of the same batch through
// `id`: an interval set (the kernel's rbtree) or, for single addresses, a
// hash set (no flags: the kernel picks its resizable hash).
void add_addr_set(Batch& b, const char* table, const std::string& name, Family family, uint32_t id,
                  bool interval) {
    SetPtr s(nftnl_set_alloc());
    nftnl_set_set_str(s.get(), NFTNL_SET_TABLE, table);
    nftnl_set_set_str(s.get(), NFTNL_SET_NAME, name.c_str());
    nftnl_set_set_u32(s.get(), NFTNL_SET_FAMILY, NFPROTO_INET);
    nftnl_set_set_u32(s.get(), NFTNL_SET_FLAGS, interval ? NFT_SET_INTERVAL : 0);
    nftnl_set_set_u32(s.get(), NFTNL_SET_KEY_TYPE, family == Family::v4 ? kTypeIpAddr : kTypeIp6Addr);
    nftnl_set_set_u32(s.get(), NFTNL_SET_KEY_LEN, static_cast<uint32_t>(addr_len(family)));
    nftnl_set_set_u32(s.get(), NFTNL_SET_ID, id);
    b.add(NFT_MSG_NEWSET, NLM_F_CREATE | NLM_F_EXCL, [&](nlmsghdr* nlh) { nftnl_set_nlmsg_build_payload(nlh, s.get()); },
          std::string("add set inet ") + table + " " + name + " { type " +
              (family == Family::v4 ? "ipv4_addr" : "ipv6_addr") + (interval ? "; flags interval" : "") + "; id " +
              std::to_string(id) + " }");
}

// Copies the handshake's bits of the packet mark (a verdict set them) into
// the connection's conntrack mark, leaving every other bit of the conntrack
// mark alone (other users: Istio's TPROXY mark, kube-proxy, CNIs): one rule
// per value, `ct mark = (ct mark & ~mask) | value`, in one register.
// (kCtMarkDeferred only in a pod's table: the node never sets it.)
void add_mark_copy_rules(Batch& b, const char* table, const std::string& chain, bool pod_table) {
    std::vector<uint32_t> values = {kCtMarkAuthenticated, kCtMarkByAddress, kCtMarkPending, kCtMarkProofDue,
                                    kCtMarkAwaitProof};
    if (pod_table) values.push_back(kCtMarkDeferred);
    for (uint32_t value : values) {
        RuleBuilder rb(table, chain);
        uint32_t mask = kCtMarkMask, keep = ~kCtMarkMask;
        rb.meta(NFT_META_MARK).bitwise(&mask, &value, 4);  // (mark & mask) ^ value == 0: the bits are `value`
        uint32_t zero = 0;
        rb.cmp(NFT_CMP_EQ, &zero, 4);
        rb.ct_load_mark().bitwise(&keep, &value, 4).ct_set_mark().comment("signet handshake-mark");
        add_rule(b, rb);
    }
}

void add_table_msgs(Batch& b, bool destroy_supported, const char* table = kTableName) {
    TablePtr t(nftnl_table_alloc());
    nftnl_table_set_u32(t.get(), NFTNL_TABLE_FAMILY, NFPROTO_INET);
    nftnl_table_set_str(t.get(), NFTNL_TABLE_NAME, table);
    auto payload = [&](nlmsghdr* nlh) { nftnl_table_nlmsg_build_payload(nlh, t.get()); };
    std::string name = std::string("inet ") + table;
    if (destroy_supported) {
        b.add(kMsgDestroyTable, 0, payload, "destroy table " + name);
    } else {
        // Make the delete idempotent: create (no-op if present), then delete.
        b.add(NFT_MSG_NEWTABLE, NLM_F_CREATE, payload, "add table " + name);
        b.add(NFT_MSG_DELTABLE, 0, payload, "delete table " + name);
    }
}

void add_elements(Batch& b, uint16_t type, const std::string& set_name, Family fam,
                  const std::vector<Range>& ranges, const char* table = kTableName) {
    if (ranges.empty()) return;
    for (size_t start = 0; start < ranges.size(); start += kElemsPerMsg) {
        SetPtr s(nftnl_set_alloc());
        nftnl_set_set_str(s.get(), NFTNL_SET_TABLE, table);
        nftnl_set_set_str(s.get(), NFTNL_SET_NAME, set_name.c_str());
        nftnl_set_set_u32(s.get(), NFTNL_SET_FAMILY, NFPROTO_INET);
        std::string text = std::string(type == NFT_MSG_NEWSETELEM ? "add" : "delete") + " element inet " +
                           table + " " + set_name + " {";
        size_t end = std::min(ranges.size(), start + kElemsPerMsg);
        for (size_t i = start; i < end; ++i) {
            const Range& r = ranges[i];
            nftnl_set_elem* e = nftnl_set_elem_alloc();
            nftnl_set_elem_set(e, NFTNL_SET_ELEM_KEY, r.first.bytes.data(), addr_len(fam));
            nftnl_set_elem_add(s.get(), e);
            Addr after;
            bool has_end = addr_next(fam, r.last, after);
            if (has_end) {
                // Interval end: the first address after the range. A range up to
                // the highest address has no end element (it runs to the end).
                nftnl_set_elem* x = nftnl_set_elem_alloc();
                nftnl_set_elem_set(x, NFTNL_SET_ELEM_KEY, after.bytes.data(), addr_len(fam));
                nftnl_set_elem_set_u32(x, NFTNL_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
                nftnl_set_elem_add(s.get(), x);
            }
            text += (i == start ? " " : ", ") + addr_text(fam, r.first);
            if (r.first != r.last) text += "-" + addr_text(fam, r.last);
            text += has_end ? " (end " + addr_text(fam, after) + ")" : " (no end: max address)";
        }
        text += " }";
        uint16_t flags = type == NFT_MSG_NEWSETELEM ? (NLM_F_CREATE | NLM_F_EXCL) : 0;
        b.add(type, flags, [&](nlmsghdr* nlh) { nftnl_set_elems_nlmsg_build_payload(nlh, s.get()); }, text);
    }
}

// A hash set's elements: one key per address.
void add_hash_elements(Batch& b, uint16_t type, const std::string& set_name, Family fam,
                       const std::vector<Addr>& addrs, const char* table = kTableName) {
    for (size_t start = 0; start < addrs.size(); start += kElemsPerMsg) {
        SetPtr s(nftnl_set_alloc());
        nftnl_set_set_str(s.get(), NFTNL_SET_TABLE, table);
        nftnl_set_set_str(s.get(), NFTNL_SET_NAME, set_name.c_str());
        nftnl_set_set_u32(s.get(), NFTNL_SET_FAMILY, NFPROTO_INET);
        std::string text = std::string(type == NFT_MSG_NEWSETELEM ? "add" : "delete") + " element inet " +
                           table + " " + set_name + " {";
        size_t end = std::min(addrs.size(), start + kElemsPerMsg);
        for (size_t i = start; i < end; ++i) {
            nftnl_set_elem* e = nftnl_set_elem_alloc();
            nftnl_set_elem_set(e, NFTNL_SET_ELEM_KEY, addrs[i].bytes.data(), addr_len(fam));
            nftnl_set_elem_add(s.get(), e);
            text += (i == start ? " " : ", ") + addr_text(fam, addrs[i]);
        }
        text += " }";
        uint16_t flags = type == NFT_MSG_NEWSETELEM ? (NLM_F_CREATE | NLM_F_EXCL) : 0;
        b.add(type, flags, [&](nlmsghdr* nlh) { nftnl_set_elems_nlmsg_build_payload(nlh, s.get()); }, text);
    }
}

// A whole set's elements, as its kind takes them.
Status add_set_elements(Batch& b, const std::string& name, const AddrSet& set, const char* table = kTableName) {
    std::vector<Range> ranges = normalize_ranges(set.family, set.elements);
    if (set.interval) {
        add_elements(b, NFT_MSG_NEWSETELEM, name, set.family, ranges, table);
        return {};
    }
    std::vector<Addr> addrs;
    if (auto st = expand_addresses(set.family, ranges, addrs); !st)
        return make_error(st.error().code, "set " + name + ": " + st.error().message);
    add_hash_elements(b, NFT_MSG_NEWSETELEM, name, set.family, addrs, table);
    return {};
}

struct SetRef {
    std::string name;
    Family family;
    uint32_t id;
};

Result<SetRef> find_set(const PodRuleset& rs, const std::map<std::string, uint32_t>& ids, const std::string& name,
                        Family want) {
    auto it = rs.sets.find(name);
    if (it == rs.sets.end()) return make_error(EINVAL, "rule set refers to unknown set " + name);
    if (it->second.family != want) return make_error(EINVAL, "set " + name + " has the wrong address family");
    return SetRef{name, want, ids.at(name)};
}

// Enforce mode: no TCP segment passes on a connection the handshake did not
// judge (after the queue rules; SYNs and SYN-ACKs were queued above and a
// queue verdict leaves the chain). What conntrack cannot place (invalid), a
// segment that would open a connection without a SYN (conntrack's mid-stream
// pickup, a SYN-cookie ACK), and a connection with no handshake state are
// dropped; an authenticated connection the local server closed or reset is
// marked closing, and the client's further segments are checked against the
// pod's sockets by the engine (a listener would take a bare ACK as a new
// connection if its SYN cookie still checks out).
constexpr uint8_t kCtDirOriginal = 0, kCtDirReply = 1;  // enum ip_conntrack_dir (not in the uapi headers)

void add_enforce_rules(Batch& b, const PodRuleset& rs, Dir dir) {
    const std::string table = kTableName, chain = dir_name(dir);
    const std::string tag = "signet " + chain + " handshake-";
    auto tcp = [&](RuleBuilder& rb) { rb.meta(NFT_META_L4PROTO).cmp_u8(IPPROTO_TCP); };
    constexpr uint8_t kFin = 0x01, kRst = 0x04;
    if (dir == Dir::egress) {
        // The pod's own segments are its stack's business (a TIME_WAIT
        // socket's challenge ACK to a reused port must get out, or the
        // client's connect() times out): only the local server's FIN or RST
        // marks an authenticated connection closing.
        RuleBuilder rb(table, chain);
        rb.tcp_flags(kFin | kRst, NFT_CMP_NEQ, 0).ct_direction(kCtDirReply);
        rb.ct_mark_is(kCtMarkMask, kCtMarkAuthenticated).ct_set_mark_bits(kCtMarkClosing);
        rb.verdict(NF_ACCEPT).comment(tag + "closing");
        add_rule(b, rb);
        return;
    }
    {
        // A connection conntrack picked up mid-stream, unless a judged segment
        // made it (the final ACK's proof after the entry was lost: it stays
        // `new` until the server answers).
        RuleBuilder rb(table, chain);
        tcp(rb);
        rb.ct_state_any(NF_CT_STATE_BIT(IP_CT_NEW)).ct_mark_is(kCtMarkMask, 0);
        rb.counter().verdict(NF_DROP).comment(tag + "not-syn");
        add_rule(b, rb);
    }
    {  // the client resets an authenticated connection: closing
        RuleBuilder rb(table, chain);
        rb.tcp_flags(kRst, NFT_CMP_NEQ, 0).ct_direction(kCtDirOriginal);
        rb.ct_mark_is(kCtMarkMask, kCtMarkAuthenticated).ct_set_mark_bits(kCtMarkClosing);
        rb.verdict(NF_ACCEPT).comment(tag + "closing");
        add_rule(b, rb);
    }
    for (uint32_t judged : {kCtMarkAuthenticated, kCtMarkByAddress, kCtMarkDeferred}) {
        RuleBuilder rb(table, chain);
        tcp(rb);
        rb.ct_state_any(NF_CT_STATE_BIT(IP_CT_ESTABLISHED) | NF_CT_STATE_BIT(IP_CT_RELATED));
        rb.ct_mark_is(kCtMarkMask, judged).verdict(NF_ACCEPT).comment(tag + "judged");
        add_rule(b, rb);
    }
    {  // an RST opens nothing
        RuleBuilder rb(table, chain);
        rb.tcp_flags(kRst, NFT_CMP_NEQ, 0).verdict(NF_ACCEPT).comment(tag + "reset");
        add_rule(b, rb);
    }
    // Everything else (a closing connection's segments, conntrack's invalid
    // ones, a connection the handshake did not judge): passes only to a
    // socket of its own, never to a listener (one lookup in the engine).
    RuleBuilder rb(table, chain);
    tcp(rb);
    rb.meta_set_mark_bits(kCtMarkClosing).queue(kHandshakeQueueNum, rs.handshake);
    rb.comment(tag + "closed-check " + std::to_string(kHandshakeQueueNum));
    add_rule(b, rb);
}

Status add_direction(Batch& b, const PodRuleset& rs, const std::map<std::string, uint32_t>& ids, Dir dir) {
    const Direction& d = dir == Dir::ingress ? rs.ingress : rs.egress;
    const std::string chain = dir_name(dir);
    const std::string table = kTableName;
    const Origin base{};
    auto base_comment = std::string("signet ") + chain + " base";

    auto loopback = [&] {  // the pod talking to itself
        RuleBuilder rb(table, chain);
        char lo[IFNAMSIZ] = "lo";
        rb.meta(dir == Dir::ingress ? NFT_META_IIFNAME : NFT_META_OIFNAME).cmp(NFT_CMP_EQ, lo, sizeof lo);
        rb.verdict(NF_ACCEPT).comment(base_comment);
        add_rule(b, rb);
    };
    if (rs.handshake != QueueBackend::none) {
        // 0. loopback first (no handshake with itself), then SYN and SYN-ACK to
        // the handshake queue: before `ct state established`, which a SYN-ACK
        // already is for conntrack.
        loopback();
        if (dir == Dir::ingress) {
            // Segments with a token or a proof were judged (and stripped) in
            // the handshake_in chain, before conntrack; the verdict marked them.
            RuleBuilder judged(table, chain);
            judged.meta_mark_any(kCtMarkMask).verdict(NF_ACCEPT).comment("signet handshake-judged");
            add_rule(b, judged);
        }
        RuleBuilder rb(table, chain);
        build_syn_queue_rule(rb, kHandshakeQueueNum, rs.handshake);
        add_rule(b, rb);
        // The final ACK's proof: the client's packets while its proof is due
        // (egress), the server's while it waits for the proof (ingress).
        RuleBuilder proof(table, chain);
        proof.ct_mark_is(kCtMarkMask, dir == Dir::ingress ? kCtMarkAwaitProof : kCtMarkProofDue)
            .queue(kHandshakeQueueNum, rs.handshake);
        proof.comment("signet handshake-proof " + std::to_string(kHandshakeQueueNum));
        add_rule(b, proof);
        if (rs.handshake_enforce) add_enforce_rules(b, rs, dir);
    }
    {  // 1. replies to allowed connections
        RuleBuilder rb(table, chain);
        uint32_t mask = NF_CT_STATE_BIT(IP_CT_ESTABLISHED) | NF_CT_STATE_BIT(IP_CT_RELATED);
        rb.ct_state_any(mask).verdict(NF_ACCEPT).comment(base_comment);
        add_rule(b, rb);
    }
    if (rs.handshake == QueueBackend::none) loopback();  // 2. the pod talking to itself
    {  // 2b. IPv6 neighbor discovery (ICMPv6 133-136: RS, RA, NS, NA). Conntrack
       // does not track it, so without this an isolated direction would cut
       // the pod's IPv6 link layer (even replies could not be delivered).
        RuleBuilder rb(table, chain);
        uint8_t icmpv6 = IPPROTO_ICMPV6, from = 133, to = 136;
        rb.meta(NFT_META_NFPROTO).cmp_u8(NFPROTO_IPV6).meta(NFT_META_L4PROTO).cmp_u8(icmpv6);
        rb.payload(NFT_PAYLOAD_TRANSPORT_HEADER, 0, 1).range(&from, &to, 1);
        rb.verdict(NF_ACCEPT).comment(base_comment);
        add_rule(b, rb);
    }
    if (dir == Dir::ingress) {  // 3. the pod's own node
        for (Family fam : {Family::v4, Family::v6}) {
            const char* name = fam == Family::v4 ? "node_v4" : "node_v6";
            if (!rs.sets.count(name)) continue;
            auto ref = find_set(rs, ids, name, fam);
            if (!ref) return ref.error();
            RuleBuilder rb(table, chain);
            rb.meta(NFT_META_NFPROTO).cmp_u8(fam == Family::v4 ? NFPROTO_IPV4 : NFPROTO_IPV6);
            if (fam == Family::v4)
                rb.payload(NFT_PAYLOAD_NETWORK_HEADER, 12, 4);
            else
                rb.payload(NFT_PAYLOAD_NETWORK_HEADER, 8, 16);
            rb.lookup(ref->name, ref->id).verdict(NF_ACCEPT).comment(base_comment);
            add_rule(b, rb);
        }
    }
    if (!d.isolated) return {};

    if (dir == Dir::egress && rs.defer_services) {
        // 3b. Service frontends: kube-proxy translates them in the node's
        // netns; the node's table judges the connection there, on the backend.
        const std::string deferred = "signet egress service-deferred";
        for (Family fam : {Family::v4, Family::v6}) {
            const bool v4 = fam == Family::v4;
            const uint32_t daddr = v4 ? 16 : 24;
            if (const char* name = v4 ? "svc_v4" : "svc_v6"; rs.sets.count(name)) {
                auto ref = find_set(rs, ids, name, fam);
                if (!ref) return ref.error();
                RuleBuilder rb(table, chain);
                rb.meta(NFT_META_NFPROTO).cmp_u8(v4 ? NFPROTO_IPV4 : NFPROTO_IPV6);
                rb.payload(NFT_PAYLOAD_NETWORK_HEADER, daddr, v4 ? 4 : 16).lookup(ref->name, ref->id);
                rb.verdict(NF_ACCEPT).comment(deferred);
                add_rule(b, rb);
            }
            const char* node = v4 ? "node_v4" : "node_v6";
            if (!rs.sets.count(node)) continue;
            auto ref = find_set(rs, ids, node, fam);
            if (!ref) return ref.error();
            for (const PortRange& p : rs.node_ports) {  // NodePorts on this node's own addresses
                if (p.first > p.last) return make_error(EINVAL, "node port range with first > last");
                RuleBuilder rb(table, chain);
                rb.meta(NFT_META_NFPROTO).cmp_u8(v4 ? NFPROTO_IPV4 : NFPROTO_IPV6);
                rb.payload(NFT_PAYLOAD_NETWORK_HEADER, daddr, v4 ? 4 : 16).lookup(ref->name, ref->id);
                rb.meta(NFT_META_L4PROTO).cmp_u8(p.proto);
                rb.payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2);
                uint16_t from = htons(p.first), to = htons(p.last);
                if (p.first == p.last)
                    rb.cmp(NFT_CMP_EQ, &from, 2);
                else
                    rb.range(&from, &to, 2);
                rb.verdict(NF_ACCEPT).comment(deferred);
                add_rule(b, rb);
            }
        }
    }

    // 4. one accept rule per (Rule, family present, port range), then default deny.
    for (const Rule& r : d.rules) {
        std::vector<std::optional<SetRef>> peers;
        if (r.any_peer) {
            peers.emplace_back(std::nullopt);
        } else {
            if (!r.set_v4.empty()) {
                auto ref = find_set(rs, ids, r.set_v4, Family::v4);
                if (!ref) return ref.error();
                peers.emplace_back(*ref);
            }
            if (!r.set_v6.empty()) {
                auto ref = find_set(rs, ids, r.set_v6, Family::v6);
                if (!ref) return ref.error();
                peers.emplace_back(*ref);
            }
        }
        std::vector<std::optional<PortRange>> ports;
        if (r.ports.empty()) ports.emplace_back(std::nullopt);
        for (const auto& p : r.ports) {
            if (p.first > p.last) return make_error(EINVAL, "port range with first > last");
            ports.emplace_back(p);
        }
        for (const auto& peer : peers) {
            for (const auto& port : ports) {
                RuleBuilder rb(table, chain);
                if (peer) {
                    bool v4 = peer->family == Family::v4;
                    rb.meta(NFT_META_NFPROTO).cmp_u8(v4 ? NFPROTO_IPV4 : NFPROTO_IPV6);
                    uint32_t off = v4 ? (dir == Dir::ingress ? 12 : 16) : (dir == Dir::ingress ? 8 : 24);
                    rb.payload(NFT_PAYLOAD_NETWORK_HEADER, off, v4 ? 4 : 16);
                    rb.lookup(peer->name, peer->id);
                }
                if (port) {
                    rb.meta(NFT_META_L4PROTO).cmp_u8(port->proto);
                    if (!(port->first == 0 && port->last == 65535)) {
                        rb.payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2);
                        uint16_t from = htons(port->first), to = htons(port->last);
                        if (port->first == port->last)
                            rb.cmp(NFT_CMP_EQ, &from, 2);
                        else
                            rb.range(&from, &to, 2);
                    }
                }
                rb.counter().verdict(NF_ACCEPT).comment(rule_comment(dir, r.origin));
                add_rule(b, rb);
            }
        }
    }
    {  // 5. denied attempts to the controller (flow records), rate-limited per pod
        RuleBuilder log(table, chain);
        // In audit mode the same log (own prefix, same group and rate) and an
        // accept: what the policy would refuse passes and is recorded as
        // audit-denied (flows::FlowService::on_denied).
        log.limit(kDenyLogRate, kDenyLogBurst)
            .log_group(kDenyLogGroup, std::string(rs.audit ? kAuditLogPrefix : kDenyLogPrefix) + chain, kDenyLogSnaplen)
            .comment(std::string("signet ") + chain + (rs.audit ? " audit-log" : " deny-log"));
        add_rule(b, log);
    }
    RuleBuilder drop(table, chain);
    if (rs.audit)
        drop.counter().verdict(NF_ACCEPT).comment(std::string("signet ") + chain + " audit-accept");
    else
        drop.counter().verdict(NF_DROP).comment(std::string("signet ") + chain + " default-deny");
    add_rule(b, drop);
    return {};
}

Status build_full(Batch& b, const PodRuleset& rs, bool destroy_supported) {
    add_table_msgs(b, destroy_supported);
    {
        TablePtr t(nftnl_table_alloc());
        nftnl_table_set_u32(t.get(), NFTNL_TABLE_FAMILY, NFPROTO_INET);
        nftnl_table_set_str(t.get(), NFTNL_TABLE_NAME, kTableName);
        b.add(NFT_MSG_NEWTABLE, NLM_F_CREATE, [&](nlmsghdr* nlh) { nftnl_table_nlmsg_build_payload(nlh, t.get()); },
              std::string("add table inet ") + kTableName);
    }
    std::map<std::string, uint32_t> ids;
    uint32_t next_id = 1;
    for (const auto& [name, set] : rs.sets) {
        if (name.empty() || name.size() >= NFT_SET_MAXNAMELEN)
            return make_error(EINVAL, "invalid set name '" + name + "'");
        uint32_t id = next_id++;
        ids[name] = id;
        add_addr_set(b, kTableName, name, set.family, id, set.interval);
        if (auto st = add_set_elements(b, name, set); !st) return st;
    }
    for (Dir dir : {Dir::ingress, Dir::egress})  // priority 0: NF_IP_PRI_FILTER
        add_filter_chain(b, dir_name(dir), dir == Dir::ingress ? NF_INET_LOCAL_IN : NF_INET_LOCAL_OUT, 0);
    for (Dir dir : {Dir::ingress, Dir::egress}) {
        if (auto s = add_direction(b, rs, ids, dir); !s) return s;
    }
    if (rs.handshake != QueueBackend::none) {
        // Incoming segments that carry signet's option (a token, the final
        // ACK's proof) are judged and stripped before conntrack sees them
        // (prerouting, priority raw): conntrack then tracks the connection
        // as the pod's stack sees it. With the token's bytes counted as
        // data, conntrack could not resync a reused 4-tuple (a SYN ignored
        // in CLOSE state), marked the rest of the handshake invalid, and an
        // invalid final ACK skipped the queue rules, proof and all.
        {
            add_filter_chain(b, kTokenChainName, NF_INET_PRE_ROUTING, -300);  // NF_IP_PRI_RAW: before conntrack (-200)
            RuleBuilder rb(kTableName, kTokenChainName);
            build_token_queue_rule(rb, kHandshakeQueueNum, rs.handshake);
            add_rule(b, rb);
        }
        // The handshake's verdicts set handshake bits in the packet's mark
        // (NFQA_MARK); a chain after the filter chains copies them to the
        // connection's conntrack mark (the queue's own way, NFQA_CT, needs
        // CONFIG_NETFILTER_NETLINK_GLUE_CT, which kernels may lack). The packet
        // mark is scrubbed when the packet leaves the pod's netns.
        for (Dir dir : {Dir::ingress, Dir::egress}) {
            std::string name = std::string(dir_name(dir)) + "_mark";
            add_filter_chain(b, name, dir == Dir::ingress ? NF_INET_LOCAL_IN : NF_INET_LOCAL_OUT, 10);
            add_mark_copy_rules(b, kTableName, name, true);
        }
    }
    b.finish();
    return {};
}

// The node's table (NodeRuleset), always written whole: it is small and
// changes only when a local pod's isolation or a Service frontend does.
Status build_node_full(Batch& b, const NodeRuleset& rs, bool destroy_supported) {
    const char* table = kNodeTableName;
    add_table_msgs(b, destroy_supported, table);
    {
        TablePtr t(nftnl_table_alloc());
        nftnl_table_set_u32(t.get(), NFTNL_TABLE_FAMILY, NFPROTO_INET);
        nftnl_table_set_str(t.get(), NFTNL_TABLE_NAME, table);
        b.add(NFT_MSG_NEWTABLE, NLM_F_CREATE, [&](nlmsghdr* nlh) { nftnl_table_nlmsg_build_payload(nlh, t.get()); },
              std::string("add table inet ") + table);
    }
    struct Named {
        const char* name;
        const AddrSet* set;
        uint32_t id;
    };
    const Named sets[] = {{"judged_v4", &rs.judged_v4, 1}, {"judged_v6", &rs.judged_v6, 2},
                          {"svc_v4", &rs.svc_v4, 3},       {"svc_v6", &rs.svc_v6, 4}};
    for (const auto& n : sets) {
        add_addr_set(b, table, n.name, n.set->family, n.id, n.set->interval);
        if (auto st = add_set_elements(b, n.name, *n.set, table); !st) return st;
    }
    const std::string chain = "service_judge";
    add_filter_chain(b, chain, NF_INET_FORWARD, -10, table);  // before the filter tables' forward chains
    if (rs.queue == QueueBackend::none) return make_error(EOPNOTSUPP, "the node's table needs a queue backend");
    for (Family fam : {Family::v4, Family::v6}) {
        const bool v4 = fam == Family::v4;
        const Named& judged = sets[v4 ? 0 : 1];
        // Every SYN of a judged pod's translated connection, whatever
        // conntrack thinks of it: a reused client port can reopen an old
        // entry (TIME_WAIT) whose SYN is not `ct state new`, and a new
        // connection must never pass unjudged.
        RuleBuilder sq(table, chain);
        sq.meta(NFT_META_NFPROTO).cmp_u8(v4 ? NFPROTO_IPV4 : NFPROTO_IPV6).ct_status_any(IPS_DST_NAT);
        sq.payload(NFT_PAYLOAD_NETWORK_HEADER, v4 ? 12 : 8, v4 ? 4 : 16).lookup(judged.name, judged.id);
        sq.meta(NFT_META_L4PROTO).cmp_u8(IPPROTO_TCP);
        sq.payload(NFT_PAYLOAD_TRANSPORT_HEADER, 13, 1);
        const uint8_t syn_ack_bits = 0x12, syn_only = 0x02, zero = 0;  // syn|ack, expect syn
        sq.bitwise(&syn_ack_bits, &zero, 1).cmp(NFT_CMP_EQ, &syn_only, 1);
        sq.queue(rs.queue_num, rs.queue).comment("signet service-judge-syn " + std::to_string(rs.queue_num));
        add_rule(b, sq);
        // Other new translated connections (UDP, SCTP...): to signetd, no bypass.
        RuleBuilder q(table, chain);
        q.meta(NFT_META_NFPROTO).cmp_u8(v4 ? NFPROTO_IPV4 : NFPROTO_IPV6);
        q.ct_state_any(NF_CT_STATE_BIT(IP_CT_NEW)).ct_status_any(IPS_DST_NAT);
        q.payload(NFT_PAYLOAD_NETWORK_HEADER, v4 ? 12 : 8, v4 ? 4 : 16).lookup(judged.name, judged.id);
        q.queue(rs.queue_num, rs.queue).comment("signet service-judge " + std::to_string(rs.queue_num));
        add_rule(b, q);
        // A frontend that was not translated (no such port, no rules) never
        // leaves the node unjudged.
        const Named& svc = sets[v4 ? 2 : 3];
        RuleBuilder d(table, chain);
        d.meta(NFT_META_NFPROTO).cmp_u8(v4 ? NFPROTO_IPV4 : NFPROTO_IPV6);
        d.payload(NFT_PAYLOAD_NETWORK_HEADER, v4 ? 12 : 8, v4 ? 4 : 16).lookup(judged.name, judged.id);
        d.payload(NFT_PAYLOAD_NETWORK_HEADER, v4 ? 16 : 24, v4 ? 4 : 16).lookup(svc.name, svc.id);
        d.counter().verdict(NF_DROP).comment("signet service-untranslated");
        add_rule(b, d);
        if (!rs.handshake) continue;
        const uint32_t daddr = v4 ? 16 : 24, saddr = v4 ? 12 : 8, len = v4 ? 4 : 16;
        RuleBuilder t(table, chain);  // the backend's SYN-ACK with its token, to the judged pod
        t.meta(NFT_META_NFPROTO).cmp_u8(v4 ? NFPROTO_IPV4 : NFPROTO_IPV6).ct_status_any(IPS_DST_NAT);
        t.payload(NFT_PAYLOAD_NETWORK_HEADER, daddr, len).lookup(judged.name, judged.id);
        t.meta(NFT_META_L4PROTO).cmp_u8(IPPROTO_TCP);
        const uint8_t exid[2] = {static_cast<uint8_t>(kTokenOptionExId >> 8), static_cast<uint8_t>(kTokenOptionExId)};
        t.tcp_option(kTokenOptionKind, 2, 2).cmp(NFT_CMP_EQ, exid, 2);
        t.queue(rs.queue_num, rs.queue).comment("signet service-handshake-token " + std::to_string(rs.queue_num));
        add_rule(b, t);
        RuleBuilder pr(table, chain);  // the judged pod's segments while its proof is due
        pr.meta(NFT_META_NFPROTO).cmp_u8(v4 ? NFPROTO_IPV4 : NFPROTO_IPV6).ct_status_any(IPS_DST_NAT);
        pr.ct_mark_is(kCtMarkMask, kCtMarkProofDue);
        pr.payload(NFT_PAYLOAD_NETWORK_HEADER, saddr, len).lookup(judged.name, judged.id);
        pr.queue(rs.queue_num, rs.queue).comment("signet service-handshake-proof " + std::to_string(rs.queue_num));
        add_rule(b, pr);
    }
    if (rs.handshake) {
        add_filter_chain(b, "service_mark", NF_INET_FORWARD, 10, table);
        add_mark_copy_rules(b, table, "service_mark", false);
    }
    b.finish();
    return {};
}

// Element-only changes. Returns false in `any` when nothing differs. Sets
// whose elements are unchanged are skipped without being sorted or sent.
// Interval sets: the merged ranges that differ are deleted and re-added
// whole (the kernel's interval elements must match exactly). Hash sets: only
// the addresses that differ, computed on the ranges (O(ranges)) and then
// expanded, so one pod appearing costs one element however large the set.
// One batch, deletions first: the kernel commits it atomically.
Status build_update(Batch& b, const PodRuleset& desired, const PodRuleset& current, bool& any) {
    any = false;
    std::vector<std::tuple<std::string, Family, std::vector<Range>>> dels, adds;
    std::vector<std::tuple<std::string, Family, std::vector<Addr>>> hash_dels, hash_adds;
    for (const auto& [name, set] : desired.sets) {
        auto cur_it = current.sets.find(name);
        // Most sets of a table are untouched by a change: skip them without sorting.
        if (cur_it != current.sets.end() && same_ranges(cur_it->second.elements, set.elements)) continue;
        std::vector<Range> want = normalize_ranges(set.family, set.elements);
        std::vector<Range> have =
            cur_it == current.sets.end() ? std::vector<Range>{} : normalize_ranges(set.family, cur_it->second.elements);
        if (!set.interval) {
            std::vector<Addr> del, add;
            Status st = expand_addresses(set.family, ranges_minus(set.family, have, want), del);
            if (st) st = expand_addresses(set.family, ranges_minus(set.family, want, have), add);
            if (!st) return make_error(st.error().code, "set " + name + ": " + st.error().message);
            if (!del.empty()) hash_dels.emplace_back(name, set.family, std::move(del));
            if (!add.empty()) hash_adds.emplace_back(name, set.family, std::move(add));
            continue;
        }
        std::vector<Range> del, add;
        std::set_difference(have.begin(), have.end(), want.begin(), want.end(), std::back_inserter(del));
        std::set_difference(want.begin(), want.end(), have.begin(), have.end(), std::back_inserter(add));
        if (!del.empty()) dels.emplace_back(name, set.family, std::move(del));
        if (!add.empty()) adds.emplace_back(name, set.family, std::move(add));
    }
    // Deletions first: what remains plus what is added never overlaps.
    for (auto& [name, fam, ranges] : dels) add_elements(b, NFT_MSG_DELSETELEM, name, fam, ranges);
    for (auto& [name, fam, addrs] : hash_dels) add_hash_elements(b, NFT_MSG_DELSETELEM, name, fam, addrs);
    for (auto& [name, fam, ranges] : adds) add_elements(b, NFT_MSG_NEWSETELEM, name, fam, ranges);
    for (auto& [name, fam, addrs] : hash_adds) add_hash_elements(b, NFT_MSG_NEWSETELEM, name, fam, addrs);
    any = b.messages() > 0;
    b.finish();
    return {};
}

// ------------------------------------------------------------ queries

thread_local std::vector<uint8_t> g_query_buf;

std::span<const uint8_t> build_get(uint32_t seq, uint16_t type, uint16_t flags, int what) {
    g_query_buf.assign(MNL_SOCKET_BUFFER_SIZE, 0);
    char* buf = reinterpret_cast<char*>(g_query_buf.data());
    nlmsghdr* nlh = nftnl_nlmsg_build_hdr(buf, type, NFPROTO_INET, flags, seq);
    if (what == 0) {
        TablePtr t(nftnl_table_alloc());
        nftnl_table_set_str(t.get(), NFTNL_TABLE_NAME, kTableName);
        nftnl_table_nlmsg_build_payload(nlh, t.get());
    } else if (what == 1) {
        RulePtr r(nftnl_rule_alloc());
        nftnl_rule_set_str(r.get(), NFTNL_RULE_TABLE, kTableName);
        nftnl_rule_nlmsg_build_payload(nlh, r.get());
    } else {
        SetPtr s(nftnl_set_alloc());
        nftnl_set_set_str(s.get(), NFTNL_SET_TABLE, kTableName);
        nftnl_set_nlmsg_build_payload(nlh, s.get());
    }
    return {g_query_buf.data(), nlh->nlmsg_len};
}

std::string rule_comment_of(nftnl_rule* r) {
    if (!nftnl_rule_is_set(r, NFTNL_RULE_USERDATA)) return {};
    uint32_t len = 0;
    const auto* p = static_cast<const uint8_t*>(nftnl_rule_get_data(r, NFTNL_RULE_USERDATA, &len));
    // TLVs: type u8, len u8, value.
    for (uint32_t off = 0; p != nullptr && off + 2 <= len;) {
        uint8_t type = p[off], l = p[off + 1];
        if (off + 2 + l > len) break;
        if (type == NFTNL_UDATA_RULE_COMMENT) {
            const char* s = reinterpret_cast<const char*>(p + off + 2);
            return std::string(s, strnlen(s, l));
        }
        off += 2 + l;
    }
    return {};
}

Result<NlSocket*> sock_of(Netns& ns) { return ns.nfnl(); }

// Transport failures leave the socket in an unknown state: reopen next time.
template <typename T>
T drop_on_transport_error(Netns& ns, T result) {
    if (!result.ok()) {
        int c = result.error().code;
        if (c == ETIMEDOUT || c == ENOBUFS || c == EBADF || c == ECONNREFUSED || c == EPIPE) ns.drop_nfnl();
    }
    return result;
}

Status table_cmd(Netns& ns, bool destroy_supported) {
    auto sock = sock_of(ns);
    if (!sock) return sock.error();
    Batch b((*sock)->next_seq());
    add_table_msgs(b, destroy_supported);
    b.finish();
    for (uint32_t i = 1; i < b.seqs_used(); ++i) (*sock)->next_seq();
    return drop_on_transport_error(ns, (*sock)->transact(b.bytes(), b.first_seq(), b.last_seq()));
}

}  // namespace

// ------------------------------------------------------------ public helpers

std::string rule_comment(Dir dir, const Origin& o) {
    std::string head = std::string("signet ") + dir_name(dir) + " ";
    std::string tail = "#" + std::to_string(o.rule_index);
    std::string name = o.policy_name;
    size_t room = kMaxComment - std::min(kMaxComment, head.size() + tail.size() + o.policy_namespace.size() + 1);
    if (name.size() > room) name.resize(room);  // keeps within NFT_USERDATA_MAXLEN
    return head + o.policy_namespace + "/" + name + tail;
}

std::optional<std::pair<Dir, Origin>> parse_rule_comment(std::string_view c) {
    constexpr std::string_view prefix = "signet ";
    if (c.substr(0, prefix.size()) != prefix) return std::nullopt;
    c.remove_prefix(prefix.size());
    Dir dir;
    if (c.substr(0, 8) == "ingress ") {
        dir = Dir::ingress;
        c.remove_prefix(8);
    } else if (c.substr(0, 7) == "egress ") {
        dir = Dir::egress;
        c.remove_prefix(7);
    } else {
        return std::nullopt;
    }
    size_t slash = c.find('/'), hash = c.rfind('#');
    if (slash == std::string_view::npos || hash == std::string_view::npos || hash < slash) return std::nullopt;
    Origin o;
    o.policy_namespace = std::string(c.substr(0, slash));
    o.policy_name = std::string(c.substr(slash + 1, hash - slash - 1));
    std::string_view idx = c.substr(hash + 1);
    if (idx.empty() || idx.size() > 9) return std::nullopt;
    bool neg = idx[0] == '-';
    if (neg) idx.remove_prefix(1);
    if (idx.empty()) return std::nullopt;
    int v = 0;
    for (char ch : idx) {
        if (ch < '0' || ch > '9') return std::nullopt;
        v = v * 10 + (ch - '0');
    }
    o.rule_index = neg ? -v : v;
    return std::make_pair(dir, o);
}

std::vector<Range> normalize_ranges(Family family, std::vector<Range> ranges) {
    size_t n = addr_len(family);
    for (auto& r : ranges) {
        std::fill(r.first.bytes.begin() + n, r.first.bytes.end(), 0);
        std::fill(r.last.bytes.begin() + n, r.last.bytes.end(), 0);
        if (r.last < r.first) std::swap(r.first, r.last);
    }
    // The compiler's sets are already sorted and merged: check that in one pass.
    bool normal = true;
    for (size_t i = 1; i < ranges.size() && normal; ++i) {
        Addr after;
        normal = addr_next(family, ranges[i - 1].last, after) && after < ranges[i].first;
    }
    if (normal) return ranges;
    std::sort(ranges.begin(), ranges.end());
    std::vector<Range> out;
    for (const auto& r : ranges) {
        if (!out.empty()) {
            Range& cur = out.back();
            Addr after;
            bool has_after = addr_next(family, cur.last, after);
            if (!has_after || r.first <= after) {  // overlapping or adjacent
                if (cur.last < r.last) cur.last = r.last;
                continue;
            }
        }
        out.push_back(r);
    }
    return out;
}

std::vector<Range> ranges_minus(Family family, const std::vector<Range>& a, const std::vector<Range>& b) {
    std::vector<Range> out;
    size_t j = 0;
    for (const Range& r : a) {
        while (j < b.size() && b[j].last < r.first) ++j;
        Addr cur = r.first;
        bool open = true;  // [cur, r.last] not yet covered by b
        for (size_t k = j; open && k < b.size() && b[k].first <= r.last; ++k) {
            if (cur < b[k].first) {
                Addr before;
                addr_prev(family, b[k].first, before);  // b[k].first > cur: has one
                out.push_back(Range{cur, before});
            }
            Addr after;
            if (!addr_next(family, b[k].last, after) || r.last < after) open = false;
            else if (cur < after) cur = after;
        }
        if (open) out.push_back(Range{cur, r.last});
    }
    return out;
}

Result<std::string> describe_full_batch(const PodRuleset& desired, bool destroy_table) {
    Batch b(1);
    if (auto s = build_full(b, desired, destroy_table); !s) return s.error();
    return b.text();
}

Result<std::string> describe_update_batch(const PodRuleset& desired, const PodRuleset& current) {
    Batch b(1);
    bool any = false;
    if (auto s = build_update(b, desired, current, any); !s) return s.error();
    return b.text();
}

std::string describe_syn_queue_rule(const std::string& table, const std::string& chain, uint16_t queue_num,
                                    QueueBackend backend) {
    RuleBuilder rb(table, chain);
    build_syn_queue_rule(rb, queue_num, backend);
    return rb.text();
}

// ------------------------------------------------------------ NetlinkBackend

Status NetlinkBackend::send_batch(Netns& ns, const std::vector<uint8_t>& batch, uint32_t first, uint32_t last) {
    auto sock = sock_of(ns);
    if (!sock) return sock.error();
    return drop_on_transport_error(ns, (*sock)->transact(batch, first, last));
}

Status NetlinkBackend::full_replace(Netns& ns, const PodRuleset& desired) {
    for (int attempt = 0; attempt < 2; ++attempt) {
        bool use_destroy = destroy_.load() != 0;
        auto sock = sock_of(ns);
        if (!sock) return sock.error();
        Batch b((*sock)->next_seq());
        if (auto s = build_full(b, desired, use_destroy); !s) return s;
        for (uint32_t i = 1; i < b.seqs_used(); ++i) (*sock)->next_seq();
        Status st = send_batch(ns, b.bytes(), b.first_seq(), b.last_seq());
        if (st) {
            if (destroy_.load() < 0) destroy_.store(use_destroy ? 1 : 0);
            ++stats_.full_replaces;
            return st;
        }
        // An old kernel rejects the unknown message type: fall back once.
        if (destroy_.load() < 0 && use_destroy && (st.error().code == EINVAL || st.error().code == EOPNOTSUPP)) {
            destroy_.store(0);
            continue;
        }
        return make_error(st.error().code, "replacing table in netns " + ns.path() + ": " + st.error().message,
                          st.error().details);
    }
    return make_error(EINVAL, "replacing table in netns " + ns.path() + ": refused");
}

Status NetlinkBackend::apply(Netns& ns, const PodRuleset& desired, const PodRuleset* current) {
    if (current == nullptr || !desired.same_structure(*current)) return full_replace(ns, desired);
    auto sock = sock_of(ns);
    if (!sock) return sock.error();
    Batch b((*sock)->next_seq());
    bool any = false;
    if (auto s = build_update(b, desired, *current, any); !s) return s;
    if (!any) {
        ++stats_.unchanged;
        return {};
    }
    for (uint32_t i = 1; i < b.seqs_used(); ++i) (*sock)->next_seq();
    Status st = send_batch(ns, b.bytes(), b.first_seq(), b.last_seq());
    if (st) {
        ++stats_.element_updates;
        return st;
    }
    int c = st.error().code;
    if (c == ENOENT || c == EEXIST || c == ENOBUFS) {
        // The kernel's state is not what the caller believed: replace it all.
        ++stats_.fallbacks;
        return full_replace(ns, desired);
    }
    return make_error(c, "updating sets in netns " + ns.path() + ": " + st.error().message, st.error().details);
}

Status NetlinkBackend::apply_node(Netns& ns, const NodeRuleset& desired) {
    for (int attempt = 0; attempt < 2; ++attempt) {
        bool use_destroy = destroy_.load() != 0;
        auto sock = sock_of(ns);
        if (!sock) return sock.error();
        Batch b((*sock)->next_seq());
        if (auto s = build_node_full(b, desired, use_destroy); !s) return s;
        for (uint32_t i = 1; i < b.seqs_used(); ++i) (*sock)->next_seq();
        Status st = send_batch(ns, b.bytes(), b.first_seq(), b.last_seq());
        if (st) {
            if (destroy_.load() < 0) destroy_.store(use_destroy ? 1 : 0);
            return st;
        }
        if (destroy_.load() < 0 && use_destroy && (st.error().code == EINVAL || st.error().code == EOPNOTSUPP)) {
            destroy_.store(0);
            continue;
        }
        return make_error(st.error().code, "writing the node's table in netns " + ns.path() + ": " + st.error().message,
                          st.error().details);
    }
    return make_error(EINVAL, "writing the node's table in netns " + ns.path() + ": refused");
}

Status NetlinkBackend::remove_node(Netns& ns) {
    auto sock = sock_of(ns);
    if (!sock) return sock.error();
    Batch b((*sock)->next_seq());
    add_table_msgs(b, destroy_.load() > 0, kNodeTableName);
    b.finish();
    for (uint32_t i = 1; i < b.seqs_used(); ++i) (*sock)->next_seq();
    Status st = drop_on_transport_error(ns, (*sock)->transact(b.bytes(), b.first_seq(), b.last_seq()));
    if (!st) return make_error(st.error().code, "removing the node's table in netns " + ns.path() + ": " + st.error().message);
    return st;
}

Result<std::string> describe_node_batch(const NodeRuleset& desired, bool destroy_table) {
    Batch b(1);
    if (auto s = build_node_full(b, desired, destroy_table); !s) return s.error();
    return b.text();
}

Status NetlinkBackend::remove(Netns& ns) {
    bool use_destroy = destroy_.load() != 0;
    Status st = table_cmd(ns, use_destroy);
    if (!st && destroy_.load() < 0 && use_destroy && (st.error().code == EINVAL || st.error().code == EOPNOTSUPP)) {
        destroy_.store(0);
        st = table_cmd(ns, false);
    } else if (st && destroy_.load() < 0) {
        destroy_.store(use_destroy ? 1 : 0);
    }
    if (!st) return make_error(st.error().code, "removing table in netns " + ns.path() + ": " + st.error().message);
    return st;
}

Result<bool> NetlinkBackend::table_exists(Netns& ns) {
    auto st = read_state(ns);
    if (!st) return st.error();
    return st->has_value();
}

Result<std::optional<TableState>> NetlinkBackend::read_state(Netns& ns) {
    auto sock = sock_of(ns);
    if (!sock) return sock.error();
    TableState state;
    bool found = false;
    Status s = (*sock)->query([](uint32_t seq) { return build_get(seq, NFT_MSG_GETTABLE, NLM_F_ACK, 0); },
                              [&](const nlmsghdr* nlh) {
                                  TablePtr t(nftnl_table_alloc());
                                  if (nftnl_table_nlmsg_parse(nlh, t.get()) < 0) return false;
                                  state.handle = nftnl_table_get_u64(t.get(), NFTNL_TABLE_HANDLE);
                                  found = true;
                                  return true;
                              },
                              [&] { found = false; });
    if (!s) {
        if (s.error().code == ENOENT) return std::optional<TableState>{};
        return drop_on_transport_error(ns, Result<std::optional<TableState>>(s.error()));
    }
    if (!found) return std::optional<TableState>{};

    s = (*sock)->query([](uint32_t seq) { return build_get(seq, NFT_MSG_GETSET, NLM_F_DUMP, 2); },
                       [&](const nlmsghdr* nlh) {
                           SetPtr set(nftnl_set_alloc());
                           if (nftnl_set_nlmsg_parse(nlh, set.get()) < 0) return false;
                           const char* name = nftnl_set_get_str(set.get(), NFTNL_SET_NAME);
                           const char* table = nftnl_set_get_str(set.get(), NFTNL_SET_TABLE);
                           if (name && table && std::strcmp(table, kTableName) == 0) {
                               state.sets.emplace_back(name);
                               if (nftnl_set_is_set(set.get(), NFTNL_SET_FLAGS) &&
                                   (nftnl_set_get_u32(set.get(), NFTNL_SET_FLAGS) & NFT_SET_INTERVAL))
                                   state.interval_sets.emplace_back(name);
                           }
                           return true;
                       },
                       [&] {
                           state.sets.clear();
                           state.interval_sets.clear();
                       });
    if (!s) return drop_on_transport_error(ns, Result<std::optional<TableState>>(s.error()));

    s = (*sock)->query([](uint32_t seq) { return build_get(seq, NFT_MSG_GETRULE, NLM_F_DUMP, 1); },
                       [&](const nlmsghdr* nlh) {
                           RulePtr r(nftnl_rule_alloc());
                           if (nftnl_rule_nlmsg_parse(nlh, r.get()) < 0) return false;
                           const char* table = nftnl_rule_get_str(r.get(), NFTNL_RULE_TABLE);
                           if (!table || std::strcmp(table, kTableName) != 0) return true;
                           InstalledRule ir;
                           const char* chain = nftnl_rule_get_str(r.get(), NFTNL_RULE_CHAIN);
                           ir.chain = chain ? chain : "";
                           ir.handle = nftnl_rule_get_u64(r.get(), NFTNL_RULE_HANDLE);
                           ir.comment = rule_comment_of(r.get());
                           nftnl_expr_iter* it = nftnl_expr_iter_create(r.get());
                           if (it) {
                               for (nftnl_expr* e = nftnl_expr_iter_next(it); e; e = nftnl_expr_iter_next(it)) {
                                   const char* name = nftnl_expr_get_str(e, NFTNL_EXPR_NAME);
                                   if (!name) continue;
                                   if (std::strcmp(name, "counter") == 0) {
                                       ir.has_counter = true;
                                       ir.packets = nftnl_expr_get_u64(e, NFTNL_EXPR_CTR_PACKETS);
                                       ir.bytes = nftnl_expr_get_u64(e, NFTNL_EXPR_CTR_BYTES);
                                   } else if (std::strcmp(name, "immediate") == 0 &&
                                              nftnl_expr_is_set(e, NFTNL_EXPR_IMM_VERDICT)) {
                                       ir.verdict = static_cast<int>(nftnl_expr_get_u32(e, NFTNL_EXPR_IMM_VERDICT));
                                   }
                               }
                               nftnl_expr_iter_destroy(it);
                           }
                           state.rules.push_back(std::move(ir));
                           return true;
                       },
                       [&] { state.rules.clear(); });
    if (!s) {
        if (s.error().code == ENOENT) return std::optional<TableState>{};  // removed meanwhile
        return drop_on_transport_error(ns, Result<std::optional<TableState>>(s.error()));
    }
    std::stable_sort(state.rules.begin(), state.rules.end(), [](const InstalledRule& a, const InstalledRule& b) {
        auto rank = [](const std::string& c) { return c == "ingress" ? 0 : c == "egress" ? 1 : 2; };
        return rank(a.chain) < rank(b.chain);
    });
    return std::optional<TableState>(std::move(state));
}

Result<Counters> NetlinkBackend::counters(Netns& ns) {
    auto st = read_state(ns);
    if (!st) return st.error();
    if (!st->has_value()) return make_error(ENOENT, "no signet table in netns " + ns.path());
    Counters out;
    for (const auto& r : (*st)->rules) {
        if (!r.has_counter || !r.verdict) continue;
        Dir dir = r.chain == "egress" ? Dir::egress : Dir::ingress;
        if (*r.verdict == NF_DROP) {
            (dir == Dir::ingress ? out.ingress_drop_packets : out.egress_drop_packets) += r.packets;
            (dir == Dir::ingress ? out.ingress_drop_bytes : out.egress_drop_bytes) += r.bytes;
            continue;
        }
        if (*r.verdict != NF_ACCEPT) continue;
        if (r.comment == "signet " + r.chain + " audit-accept") {
            (dir == Dir::ingress ? out.ingress_audit_packets : out.egress_audit_packets) += r.packets;
            continue;
        }
        auto parsed = parse_rule_comment(r.comment);
        if (!parsed) continue;
        auto it = std::find_if(out.accepts.begin(), out.accepts.end(), [&](const RuleCounter& c) {
            return c.direction == dir && c.origin == parsed->second;
        });
        if (it == out.accepts.end()) {
            out.accepts.push_back(RuleCounter{dir, parsed->second, 0, 0});
            it = out.accepts.end() - 1;
        }
        it->packets += r.packets;
        it->bytes += r.bytes;
    }
    return out;
}

// ------------------------------------------------------------ queue rule + probe

Status add_syn_queue_rule(Netns& ns, const std::string& table, const std::string& chain, uint16_t queue_num,
                          QueueBackend backend, bool at_head) {
    if (backend == QueueBackend::none) return make_error(EINVAL, "no queue backend");
    auto sock = sock_of(ns);
    if (!sock) return sock.error();
    Batch b((*sock)->next_seq());
    RuleBuilder rb(table, chain);
    build_syn_queue_rule(rb, queue_num, backend);
    add_rule(b, rb, at_head);
    b.finish();
    for (uint32_t i = 1; i < b.seqs_used(); ++i) (*sock)->next_seq();
    return drop_on_transport_error(ns, (*sock)->transact(b.bytes(), b.first_seq(), b.last_seq()));
}

Result<KernelProbe> probe_kernel() {
    auto ns = Netns::create_anonymous();
    if (!ns) return ns.error();
    auto sock = ns->open_socket(NETLINK_NETFILTER);
    if (!sock) return sock.error();
    KernelProbe out;

    auto try_batch = [&](auto&& fill) -> Status {
        Batch b(sock->next_seq());
        fill(b);
        b.finish();
        for (uint32_t i = 1; i < b.seqs_used(); ++i) sock->next_seq();
        return sock->transact(b.bytes(), b.first_seq(), b.last_seq());
    };
    const std::string table = "signet_probe";
    auto base = [&](Batch& b, const std::string& chain) {
        TablePtr t(nftnl_table_alloc());
        nftnl_table_set_u32(t.get(), NFTNL_TABLE_FAMILY, NFPROTO_INET);
        nftnl_table_set_str(t.get(), NFTNL_TABLE_NAME, table.c_str());
        b.add(NFT_MSG_NEWTABLE, NLM_F_CREATE, [&](nlmsghdr* nlh) { nftnl_table_nlmsg_build_payload(nlh, t.get()); },
              "add table");
        ChainPtr c(nftnl_chain_alloc());
        nftnl_chain_set_str(c.get(), NFTNL_CHAIN_TABLE, table.c_str());
        nftnl_chain_set_str(c.get(), NFTNL_CHAIN_NAME, chain.c_str());
        nftnl_chain_set_u32(c.get(), NFTNL_CHAIN_FAMILY, NFPROTO_INET);
        nftnl_chain_set_u32(c.get(), NFTNL_CHAIN_HOOKNUM, NF_INET_LOCAL_OUT);
        nftnl_chain_set_s32(c.get(), NFTNL_CHAIN_PRIO, 0);
        nftnl_chain_set_str(c.get(), NFTNL_CHAIN_TYPE, "filter");
        b.add(NFT_MSG_NEWCHAIN, NLM_F_CREATE, [&](nlmsghdr* nlh) { nftnl_chain_nlmsg_build_payload(nlh, c.get()); },
              "add chain");
    };
    auto queue_try = [&](QueueBackend qb, const std::string& chain) {
        return try_batch([&](Batch& b) {
            base(b, chain);
            RuleBuilder rb(table, chain);
            build_syn_queue_rule(rb, 0, qb);
            add_rule(b, rb);
        });
    };
    Status native = queue_try(QueueBackend::nft_queue, "native");
    if (native) {
        out.queue = QueueBackend::nft_queue;
    } else {
        out.native_queue_error = native.error().message;
        Status xt = queue_try(QueueBackend::xt_nfqueue, "xt");
        if (xt)
            out.queue = QueueBackend::xt_nfqueue;
        else
            out.xt_nfqueue_error = xt.error().message;
    }
    Status destroy = try_batch([&](Batch& b) {
        TablePtr t(nftnl_table_alloc());
        nftnl_table_set_u32(t.get(), NFTNL_TABLE_FAMILY, NFPROTO_INET);
        nftnl_table_set_str(t.get(), NFTNL_TABLE_NAME, "signet_probe_absent");
        b.add(kMsgDestroyTable, 0, [&](nlmsghdr* nlh) { nftnl_table_nlmsg_build_payload(nlh, t.get()); }, "destroy");
    });
    out.destroy_table = destroy.ok();
    return out;
}

QueueBackend probe_queue_backend() {
    auto p = probe_kernel();
    return p ? p->queue : QueueBackend::none;
}

}  // namespace signet::nft
