// Services at the node (docs/policy.md, "Services"): everything signetd does
// in the node's netns for connections to Service frontends, which kube-proxy
// translates there: the Service judge on NFQUEUE 3473 (bound from the first
// Service with a frontend on), whether this node can see the translation
// (nft/visibility.h), the frontends the pods' tables defer, the TCP
// frontends whose handshake runs at the node, status and explain. The tables
// themselves are the Enforcer's: it is told where the node's table goes and
// what to defer through the context's callbacks.
//
// Threads: the event loop's only (the queue is read there).
#pragma once

#include <rapidjson/document.h>

#include <boost/asio/io_context.hpp>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "../pods/registry.h"
#include "../policy/query.h"
#include "../policy/services.h"
#include "../source/source.h"
#include "datapath/queue_source.h"
#include "datapath/service_judge.h"

namespace signet::handshake {

class NodeServices {
public:
    struct Context {
        boost::asio::io_context* io = nullptr;
        bool enabled = true;                        // --services judge
        std::string node_netns;                     // "" = signetd's own
        nft::QueueBackend queue = nft::QueueBackend::none;  // the kernel probe's answer
        const source::Source* source = nullptr;
        const pods::Registry* registry = nullptr;
        policy::Query* policy = nullptr;
        const std::vector<std::string>* node_addresses = nullptr;
        // The tables (the Enforcer): where the node's table goes, once the
        // queue is bound; whether pods defer frontends, and which.
        std::function<void(const std::string& netns_path, nft::QueueBackend)> set_node;
        std::function<void(bool defer, const policy::ServiceFrontends&)> apply;
        // With the identity handshake: its client side for TCP at the node.
        std::function<std::optional<Decision>(const QueuedPacket&)> tcp_handshake;
        // Audit mode of a local pod (ServiceJudge::Context::audit).
        std::function<bool(const policy::ObjectKey&)> audit;
    };
    explicit NodeServices(Context ctx);

    // Why Service connections cannot be judged at all (flags, kernel); logged.
    void start();
    // At start, at each ADD, every sweep and when the source's Services
    // changed: binds the queue from the first frontend on, checks that the
    // node sees the translation, and hands the deferral to the tables
    // (`apply`; only when `enforcing`).
    void check(bool enforcing);
    // The source or the registry changed: the judge's address index is stale.
    void pods_changed() { index_dirty_ = true; }
    void stop();

    // What the tables' first write defers (before enforcing).
    bool defer_now() const { return queue_ && problem_.empty(); }
    policy::ServiceFrontends frontends() const { return policy::service_frontends(ctx_.source->snapshot().services); }
    // The Service whose frontend this is (address, protocol, port; this
    // node's address and a NodePort) while the node judges; null otherwise.
    const policy::ObjectKey* frontend(const policy::Ip& ip, uint8_t proto, uint16_t port) const;
    bool tcp_frontend(const policy::Ip& ip, uint16_t port) const { return frontend(ip, nft::kTcp, port) != nullptr; }
    // "" when judged at the node (or nothing to judge yet).
    const std::string& problem() const { return problem_; }
    bool bound() const { return queue_ != nullptr; }
    const ServiceJudge* judge() const { return judge_.get(); }

    // status.services; `deferred`, `judged_pods`, `table_error`: the Enforcer's.
    void status(rapidjson::Value& out, rapidjson::Document::AllocatorType& a, bool deferred, size_t judged_pods,
                const std::string& table_error) const;
    // `signetctl explain --to FRONTEND`: the Service, its backends, the verdict on each.
    void explain(const policy::Endpoint& from, const policy::Ip& to, uint8_t proto, uint16_t port,
                 rapidjson::Document& d, std::string& text) const;

private:
    bool ensure_queue();
    std::optional<policy::ObjectKey> local_pod_at(const policy::Ip& ip);
    std::optional<policy::ObjectKey> pod_at(const policy::Ip& ip);
    void rebuild_index();

    Context ctx_;
    std::string netns_path_;
    std::unique_ptr<ServiceJudge> judge_;
    std::unique_ptr<QueueBinding> queue_;
    std::string problem_;
    std::map<policy::Ip, policy::ObjectKey> pods_by_ip_, local_by_ip_;
    bool index_dirty_ = true;
    std::map<std::tuple<policy::Ip, uint8_t, uint16_t>, policy::ObjectKey> frontends_;
    std::map<std::pair<uint8_t, uint16_t>, policy::ObjectKey> node_ports_;
};

}  // namespace signet::handshake
