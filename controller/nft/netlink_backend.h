// signet: the nftables programmer, built on libnftnl + libmnl. All kernel
// writes are nfnetlink batch transactions (atomic), sent on the pod's cached
// NETLINK_NETFILTER socket (Netns::nfnl()).
#pragma once

#include <cstdint>
#include <atomic>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "nft/backend.h"
#include "nft/conntrack.h"

namespace signet::nft {

// What the kernel supports, probed in a throwaway netns.
struct KernelProbe {
    QueueBackend queue = QueueBackend::none;
    bool destroy_table = false;     // NFT_MSG_DESTROYTABLE (Linux 6.3+)
    std::string native_queue_error;  // why the native `queue` expression was refused ("" if accepted)
    std::string xt_nfqueue_error;    // why the xt NFQUEUE target was refused ("" if accepted or not tried)
};
Result<KernelProbe> probe_kernel();
// The best way to send packets to NFQUEUE on this kernel (none on any error).
QueueBackend probe_queue_backend();

// What is installed in a pod's netns, read back from the kernel.
struct InstalledRule {
    std::string chain;
    uint64_t handle = 0;
    std::string comment;        // rule userdata comment ("" if none)
    bool has_counter = false;
    uint64_t packets = 0;
    uint64_t bytes = 0;
    std::optional<int> verdict;  // NF_ACCEPT / NF_DROP / ... of an immediate verdict
};
struct TableState {
    uint64_t handle = 0;  // a new table gets a new handle: equal handles = not replaced
    std::vector<std::string> sets;
    std::vector<std::string> interval_sets;  // those of `sets` with NFT_SET_INTERVAL (the others: hash sets)
    std::vector<InstalledRule> rules;  // in chain order (ingress, egress, other)
};

class NetlinkBackend final : public Backend {
public:
    // destroy_table: whether NFT_MSG_DESTROYTABLE may be used (from
    // probe_kernel()); nullopt: try it once and fall back on refusal.
    explicit NetlinkBackend(std::optional<bool> destroy_table = std::nullopt)
        : destroy_(destroy_table ? (*destroy_table ? 1 : 0) : -1) {}

    // Calls on different Netns may run on different threads at once: the
    // only shared state (what the kernel accepts, the counters) is atomic.
    bool concurrent() const override { return true; }

    Status apply(Netns& ns, const PodRuleset& desired, const PodRuleset* current) override;
    Status remove(Netns& ns) override;
    Result<bool> table_exists(Netns& ns) override;
    Status apply_node(Netns& ns, const NodeRuleset& desired) override;
    Status remove_node(Netns& ns) override;
    Result<Counters> counters(Netns& ns) override;
    Result<Netns> open(const std::string& path) override { return Netns::open(path); }
    Result<std::vector<CtEntry>> conntrack(Netns& ns) override { return ct_list(ns); }
    Status conntrack_delete(Netns& ns, const CtTuple& orig) override { return ct_delete(ns, orig); }

    // nullopt when there is no signet table in the netns.
    Result<std::optional<TableState>> read_state(Netns& ns);

    struct Stats {
        std::atomic<uint64_t> full_replaces{0};    // whole-table batches sent and accepted
        std::atomic<uint64_t> element_updates{0};  // element-only batches sent and accepted
        std::atomic<uint64_t> unchanged{0};        // apply() calls that needed no batch
        std::atomic<uint64_t> fallbacks{0};        // element updates refused (state diverged) and replaced instead
    };
    const Stats& stats() const { return stats_; }

private:
    Status full_replace(Netns& ns, const PodRuleset& desired);
    Status send_batch(Netns& ns, const std::vector<uint8_t>& batch, uint32_t first, uint32_t last);
    std::atomic<int> destroy_;  // NFT_MSG_DESTROYTABLE: -1 not known yet, 0 refused, 1 accepted
    Stats stats_;
};

// Adds to chain `chain` of the `inet` table `table` a rule sending TCP SYN
// and SYN-ACK (tcp flags & (fin|syn|rst) == syn) to NFQUEUE `queue_num`,
// with the native `queue` expression or the xtables NFQUEUE target (rev 3).
// No bypass flag: with no reader bound to the queue the packets are dropped
// (fail closed). at_head inserts it before the chain's first rule.
Status add_syn_queue_rule(Netns& ns, const std::string& table, const std::string& chain, uint16_t queue_num,
                          QueueBackend backend, bool at_head = false);

// Rule comments carry the rule's origin: "signet <ingress|egress> NS/NAME#INDEX",
// "signet <dir> default-deny" for the drop rule, "signet <dir> base" otherwise.
std::string rule_comment(Dir dir, const Origin& origin);
std::optional<std::pair<Dir, Origin>> parse_rule_comment(std::string_view comment);

// Intervals of one set normalized as the kernel gets them: sorted, merged
// (overlapping or adjacent), bytes beyond the family's length cleared.
std::vector<Range> normalize_ranges(Family family, std::vector<Range> ranges);

// What of `a` is not in `b`, as ranges; both normalized (sorted, disjoint).
// O(|a| + |b|).
std::vector<Range> ranges_minus(Family family, const std::vector<Range>& a, const std::vector<Range>& b);

// Golden / diagnostic renderings of what is sent, one line per netlink
// message ("<op> <object> ...", rules as libnftnl expression lists).
Result<std::string> describe_full_batch(const PodRuleset& desired, bool destroy_table = true);
Result<std::string> describe_update_batch(const PodRuleset& desired, const PodRuleset& current);
Result<std::string> describe_node_batch(const NodeRuleset& desired, bool destroy_table = true);
std::string describe_syn_queue_rule(const std::string& table, const std::string& chain, uint16_t queue_num,
                                    QueueBackend backend);

}  // namespace signet::nft
