// signet: an in-memory Backend for unit tests of the controller core. It
// records every call and keeps one "table" per netns path.
#pragma once

#include <cerrno>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "nft/backend.h"

namespace signet::nft {

class FakeBackend final : public Backend {
public:
    struct Call {
        enum Kind { apply, remove, table_exists, counters, conntrack, conntrack_delete } kind;
        std::string netns;               // Netns::path()
        std::optional<PodRuleset> desired;  // apply only
        bool had_current = false;        // apply: current != nullptr
        bool incremental = false;        // apply: same structure as current
        // apply: sets the kernel would be sent elements of (NetlinkBackend:
        // incremental, only sets whose elements differ from current's;
        // otherwise every set), and of those the hash sets (AddrSet::interval false).
        size_t sets_written = 0;
        size_t hash_sets_written = 0;
    };

    Status apply(Netns& ns, const PodRuleset& desired, const PodRuleset* current) override {
        Call c{Call::apply, ns.path(), desired, current != nullptr, false};
        c.incremental = current != nullptr && desired.same_structure(*current);
        for (const auto& [name, set] : desired.sets) {
            if (c.incremental && same_ranges(current->sets.at(name).elements, set.elements)) continue;
            ++c.sets_written;
            c.hash_sets_written += !set.interval;
        }
        calls.push_back(std::move(c));
        if (auto e = take_failure()) return *e;
        tables[ns.path()] = desired;
        return {};
    }

    Status remove(Netns& ns) override {
        calls.push_back(Call{Call::remove, ns.path(), std::nullopt, false, false});
        if (auto e = take_failure()) return *e;
        tables.erase(ns.path());
        return {};
    }

    // The node's table: recorded (not in `calls`, whose tests count pod-table calls).
    Status apply_node(Netns& ns, const NodeRuleset& desired) override {
        ++node_writes;
        node_tables[ns.path()] = desired;
        return {};
    }
    Status remove_node(Netns& ns) override {
        node_tables.erase(ns.path());
        return {};
    }

    Result<bool> table_exists(Netns& ns) override {
        calls.push_back(Call{Call::table_exists, ns.path(), std::nullopt, false, false});
        if (auto e = take_failure()) return *e;
        return tables.count(ns.path()) > 0;
    }

    Result<Counters> counters(Netns& ns) override {
        calls.push_back(Call{Call::counters, ns.path(), std::nullopt, false, false});
        if (auto e = take_failure()) return *e;
        auto it = counter_values.find(ns.path());
        return it == counter_values.end() ? Counters{} : it->second;
    }

    Result<Netns> open(const std::string& path) override { return Netns::detached(path); }

    Result<std::vector<CtEntry>> conntrack(Netns& ns) override {
        calls.push_back(Call{Call::conntrack, ns.path(), std::nullopt, false, false});
        if (auto e = take_failure()) return *e;
        return ct_entries[ns.path()];
    }

    Status conntrack_delete(Netns& ns, const CtTuple& orig) override {
        calls.push_back(Call{Call::conntrack_delete, ns.path(), std::nullopt, false, false});
        if (auto e = take_failure()) return *e;
        auto& v = ct_entries[ns.path()];
        for (auto it = v.begin(); it != v.end(); ++it)
            if (it->orig == orig) {
                v.erase(it);
                return {};
            }
        return make_error(ENOENT, "no such conntrack entry");
    }

    // Makes the next `n` calls fail with `error`.
    void fail_next(Error error, int n = 1) {
        failure = std::move(error);
        failures_left = n;
    }

    size_t count(Call::Kind kind) const {
        size_t n = 0;
        for (const auto& c : calls) n += c.kind == kind;
        return n;
    }

    std::vector<Call> calls;
    std::map<std::string, PodRuleset> tables;       // netns path -> installed
    std::map<std::string, NodeRuleset> node_tables;  // node netns path -> the node table
    size_t node_writes = 0;
    std::map<std::string, Counters> counter_values;  // what counters() returns
    std::map<std::string, std::vector<CtEntry>> ct_entries;  // conntrack per netns path

private:
    std::optional<Error> take_failure() {
        if (failures_left <= 0) return std::nullopt;
        --failures_left;
        return failure;
    }
    Error failure;
    int failures_left = 0;
};

}  // namespace signet::nft
