// The enforcer: keeps every local pod's nftables table equal to what the
// policy compiler says, through the kernel backend. It owns the compiler's
// incremental state and, per registered attachment, the netns handle and the
// rule set last programmed there.
//
// Guarantees it gives the controller:
//  - a pod's table is in place before pod_added() returns success;
//  - a change is written as one atomic batch per pod (membership-only
//    changes update set elements in place), so no traffic that is denied
//    both before and after a change is ever allowed in between;
//  - after a change that may narrow what a pod allows, its established
//    connections are re-checked against the new rules and the ones no longer
//    allowed are cut (conntrack entry removed), and counted;
//  - a pod whose programming failed is reported and retried; it does not
//    count as applied.
#pragma once

#include <rapidjson/document.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "../cache/objects.h"
#include "../nft/backend.h"
#include "../policy/compiler.h"
#include "../policy/query.h"
#include "../policy/services.h"
#include "signet/api.h"
#include "signet/histogram.h"
#include "signet/result.h"

namespace signet::core {

using Records = std::map<std::string, api::PodRecord>;  // registry key -> record

class Enforcer final {
public:
    using Report = std::function<void(const std::string&)>;
    Enforcer(std::unique_ptr<nft::Backend> backend, Report report);

    // Builds the compiler state and programs every registered pod (after a
    // restart: replacing whatever table is there, keeping connections).
    void reset(const cache::Snapshot& snapshot, const Records& records, const std::vector<std::string>& node_addresses);

    // The source changed: recompile and reprogram the pods it affects.
    void source_changed(const cache::Snapshot& snapshot, const cache::Delta& delta, const Records& records);
    // A registration (ADD). Error when this pod's table could not be written.
    Status pod_added(const std::string& key, const Records& records);
    // A registration went away (DEL, GC, netns gone). `records` no longer has it.
    void pod_removed(const std::string& key, const api::PodRecord& gone, bool remove_table, const Records& records);
    void node_addresses_changed(const std::vector<std::string>& addresses, const Records& records);
    // Retries the pods whose programming failed.
    void retry_failed(const Records& records);

    // True when the attachment's table holds its current rule set.
    bool programmed(const std::string& key) const;
    bool has_failures() const;
    struct Stats {
        uint64_t table_writes = 0, set_updates = 0, unchanged = 0, failures = 0, cut = 0, conntrack_checks = 0;
        uint64_t programmed = 0, failing = 0;  // attachments now
    };
    Stats stats() const;
    // Wall time of each change's programming: every affected table written.
    const Histogram& program_latency() const { return program_latency_; }
    // Of the last source change: the compiler's update, and the attachments written.
    double last_update_seconds() const { return last_update_seconds_; }
    uint64_t last_program_attachments() const { return last_program_pods_; }

    // The policy in force, for the query the controller owns (policy/query.h),
    // and that query: told of every change of the compiler's state (its
    // cached answers are stale). Lent before reset().
    const policy::Compiler& compiler() const { return compiler_; }
    void set_query(policy::Query* query) { query_ = query; }
    // The identity handshake's queue rules in every pod table written from now
    // on (none: no queue rules); `enforce`: the enforce mode's TCP rules too
    // (nft::PodRuleset::handshake_enforce). Set before reset().
    void set_handshake(nft::QueueBackend backend, bool enforce = false) {
        handshake_ = backend;
        handshake_enforce_ = enforce && backend != nft::QueueBackend::none;
        handshake_of_ = nullptr;
    }
    // Per pod (its namespace's mode, signet.dev/handshake): whether its
    // table gets the queue rules, and the enforce mode's TCP rules. Asked on
    // the loop thread for each table written.
    struct PodHandshake {
        bool on = false;
        bool strict = false;
    };
    using HandshakeOf = std::function<PodHandshake(const std::string& key, const api::PodRecord& rec)>;
    void set_handshake(nft::QueueBackend backend, HandshakeOf of) {
        handshake_ = backend;
        handshake_enforce_ = false;
        handshake_of_ = std::move(of);
    }
    // Audit mode (docs/policy.md): whether a pod's table audits (logs and
    // accepts) what its policy would deny instead of dropping it. Asked on
    // the loop thread for each table written; unset: every pod enforces.
    using AuditOf = std::function<bool(const api::PodRecord& rec)>;
    void set_audit(AuditOf of) { audit_of_ = std::move(of); }
    // Rewrites these pods' tables (what they hold changed outside the
    // policy: their handshake mode or policy mode).
    void reprogram(const std::set<cache::ObjectKey>& pods, const Records& records) {
        policy::Affected a;
        a.pods = pods;
        program(a, records);
    }
    nft::QueueBackend handshake() const { return handshake_; }
    // Services (docs/policy.md): the node's netns, where kube-proxy translates
    // them and the node's table goes, and how its rules queue. Set before reset().
    void set_node(const std::string& node_netns, nft::QueueBackend queue) {
        node_netns_path_ = node_netns;
        node_queue_ = queue;
    }
    // Whether Service connections are judged at the node (`defer`: the pods'
    // egress lets them through to the node's table; false: they meet the
    // pods' ordinary rules, fail closed) and the frontends to defer. Tables
    // are rewritten when either changes.
    void set_services(bool defer, const policy::ServiceFrontends& frontends, const Records& records);
    // The same before reset(), which writes every table anyway.
    void configure_services(bool defer, const policy::ServiceFrontends& frontends) {
        defer_services_ = defer;
        frontends_ = frontends;
    }
    bool services_deferred() const { return defer_services_; }
    const policy::ServiceFrontends& service_frontends() const { return frontends_; }
    // The node's table: pods judged there, and its last write error ("" when fine).
    size_t judged_pods() const { return judged_pods_; }
    const std::string& node_table_error() const { return node_error_; }
    // What is in force for a pod (policies per direction, rules, counters when local).
    Status describe_pod(const cache::ObjectKey& pod, const Records& records, rapidjson::Value& out,
                        rapidjson::Document::AllocatorType& alloc);
    void status(rapidjson::Value& out, rapidjson::Document::AllocatorType& alloc) const;

private:
    nft::QueueBackend handshake_ = nft::QueueBackend::none;
    bool handshake_enforce_ = false;
    HandshakeOf handshake_of_;
    AuditOf audit_of_;
    struct PodState {
        std::optional<nft::Netns> netns;
        std::optional<nft::PodRuleset> rules;  // what the table holds; empty when unknown
        std::string error;                     // last programming error, "" when fine
        uint64_t cut = 0;                      // connections cut for this pod
        std::vector<std::string> ips;          // its addresses, when its Service connections are judged at the node
        cache::ObjectKey pod;                  // which pod (for the node's conntrack re-check)
    };

    // One attachment's programming: prepared on the loop thread (its state,
    // netns handle), compiled and written on any thread (compiler read-only,
    // kernel), finished on the loop thread (counters, state, reports).
    struct Job {
        const std::string* key = nullptr;
        const api::PodRecord* rec = nullptr;
        PodState* st = nullptr;
        bool fresh = false;
        PodHandshake hs;  // the handshake's rules in its table
        bool audit = false;  // audit mode (nft::PodRuleset::audit)
        std::optional<nft::PodRuleset> desired;
        std::optional<Error> error;
        enum Outcome { Unchanged, SetUpdate, FullWrite } outcome = Unchanged;
        bool ct_checked = false;
        uint64_t cut = 0;
        std::vector<std::string> reports;
    };
    static constexpr size_t kWriters = 4;  // threads writing the tables of one change

    policy::LocalPod local_of(const cache::ObjectKey& key, const Records& records) const;
    // After each change of compiler_: the query's cached answers are of the version before.
    void policy_changed() {
        if (query_ != nullptr) query_->changed();
    }
    void program(const policy::Affected& affected, const Records& records);
    // `fresh`: a just-created attachment (no connections to re-check).
    Status program_one(const std::string& key, const api::PodRecord& rec, bool fresh = false);
    Job prepare(const std::string& key, const api::PodRecord& rec, bool fresh);
    void write(Job& job);
    void write_all(std::vector<Job>& jobs);
    Status finish(Job& job);
    void cut_disallowed(Job& job);
    // Makes the node's table judge the pods that defer their Service
    // connections (after their tables are written; before an ADD returns).
    void sync_node(const std::vector<Job>* widen = nullptr);
    // After a change that may narrow what judged pods allow: the node's
    // conntrack entries of their translated connections that the policy no
    // longer allows (judged on the backend, the reply's source) are cut.
    void cut_node_disallowed();

    std::string node_netns_path_;
    nft::QueueBackend node_queue_ = nft::QueueBackend::none;
    bool defer_services_ = false;
    policy::ServiceFrontends frontends_;
    std::optional<nft::Netns> node_netns_;
    std::optional<nft::NodeRuleset> node_written_;  // what the node's table holds; empty: none / unknown
    size_t judged_pods_ = 0;
    std::string node_error_;

    std::unique_ptr<nft::Backend> backend_;
    Report report_;
    policy::Compiler compiler_;
    policy::Query* query_ = nullptr;
    std::map<std::string, PodState> pods_;
    Histogram program_latency_;
    uint64_t last_program_pods_ = 0;
    double last_update_seconds_ = 0;
    uint64_t full_programs_ = 0, set_updates_ = 0, unchanged_ = 0, failures_ = 0, cut_total_ = 0, ct_checks_ = 0;
};

// The node's own addresses (every interface of the host netns), as strings.
std::vector<std::string> host_addresses();

}  // namespace signet::core
