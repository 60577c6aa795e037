#include "datapath/node_services.h"

#include "nft/visibility.h"
#include "signet/json.h"
#include "signet/log.h"

namespace signet::handshake {

using rapidjson::Value;

namespace {
constexpr const char* kLog = "services";
}

NodeServices::NodeServices(Context ctx) : ctx_(std::move(ctx)) {
    netns_path_ = ctx_.node_netns.empty() ? "/proc/self/ns/net" : ctx_.node_netns;
}

void NodeServices::start() {
    if (!ctx_.enabled) {
        problem_ = "off (--services off)";
    } else if (ctx_.queue == nft::QueueBackend::none) {
        problem_ = "the kernel offers no NFQUEUE (neither the nft `queue` expression nor xt NFQUEUE)";
        log::warn(kLog, "Service connections cannot be judged at the node: " + problem_ +
                            "; isolated egress refuses them (fail closed)");
    }
}

// The judge and its queue in the node's netns, from the first Service with a
// frontend on (nothing to judge before: no queue is bound, no node table is
// written, so nodes and tests without Services never touch the node's netns).
bool NodeServices::ensure_queue() {
    if (queue_) return true;
    if (!judge_)
        judge_ = std::make_unique<handshake::ServiceJudge>(handshake::ServiceJudge::Context{
            ctx_.policy, [this](const policy::Ip& ip) { return local_pod_at(ip); },
            [this](const policy::Ip& ip) { return pod_at(ip); },
            // With the identity handshake, its client side for TCP.
            ctx_.tcp_handshake, ctx_.audit});
    auto source = handshake::make_nfqueue_source(*ctx_.io, nft::kServiceQueueNum);
    auto binding = source->open(netns_path_, [this](const handshake::QueuedPacket& p) {
        if (index_dirty_) rebuild_index();
        return judge_->judge(p);
    });
    std::string problem;
    if (!binding) {
        problem = "cannot open the node's netns " + netns_path_ + ": " + binding.error().message;
    } else if (auto st = (*binding)->start(); !st) {
        problem = "cannot bind NFQUEUE " + std::to_string(nft::kServiceQueueNum) + " in the node's netns " +
                  netns_path_ + ": " + st.error().message;
    } else {
        queue_ = std::move(*binding);
        if (ctx_.set_node) ctx_.set_node(netns_path_, ctx_.queue);
        log::info(kLog, "Service connections are judged after kube-proxy's translation in " + netns_path_ +
                            " (NFQUEUE " + std::to_string(nft::kServiceQueueNum) + " via " +
                            nft::to_string(ctx_.queue) + ")");
        return true;
    }
    if (problem != problem_)
        log::error(kLog, "Service connections are not judged at the node: " + problem +
                             "; isolated egress refuses them (fail closed)");
    problem_ = problem;
    return false;
}

void NodeServices::check(bool enforcing) {
    if (!ctx_.enabled || ctx_.queue == nft::QueueBackend::none) return;  // the reason is set
    auto frontends = policy::service_frontends(ctx_.source->snapshot().services);
    std::string problem;
    if (frontends.services == 0 && !queue_) {
        problem_.clear();  // nothing to judge (status: no Services)
        return;
    }
    if (!ensure_queue()) {
        problem = problem_;
    } else if (!queue_->running()) {
        problem = "the node's queue reader stopped";
    } else if (auto ns = nft::Netns::open(netns_path_); !ns) {
        problem = "cannot open the node's netns " + netns_path_ + ": " + ns.error().message;
    } else if (auto v = nft::read_visibility(*ns); !v) {
        problem = "cannot read the node's bridges and bridge-nf sysctls: " + v.error().message;
    } else {
        problem = v->problem();
    }
    if (problem != problem_) {
        if (problem.empty())
            log::info(kLog, "Service connections are judged at the node again");
        else
            log::error(kLog, "Service connections are not judged at the node: " + problem +
                                 "; isolated egress refuses them (fail closed)");
        problem_ = problem;
    }
    const bool defer = problem.empty() && queue_;
    // The frontends (address, protocol, port) the pods leave to the node
    // while it judges: the handshake's SYNs, and what the flow records say.
    frontends_.clear();
    node_ports_.clear();
    if (defer)
        for (const auto& [k, svc] : ctx_.source->snapshot().services)
            for (const auto& sp : svc.ports) {
                const uint8_t proto = sp.protocol == cache::Protocol::TCP   ? nft::kTcp
                                      : sp.protocol == cache::Protocol::UDP ? nft::kUdp
                                                                            : nft::kSctp;
                for (const auto* list : {&svc.cluster_ips, &svc.external_ips, &svc.load_balancer_ips})
                    for (const auto& a : *list)
                        if (auto ip = policy::parse_ip(a)) frontends_[{*ip, proto, sp.port}] = k;
                if (sp.node_port) node_ports_[{proto, sp.node_port}] = k;
            }
    if (enforcing && ctx_.apply) ctx_.apply(defer, frontends);
}

const policy::ObjectKey* NodeServices::frontend(const policy::Ip& ip, uint8_t proto, uint16_t port) const {
    if (auto it = frontends_.find({ip, proto, port}); it != frontends_.end()) return &it->second;
    auto np = node_ports_.find({proto, port});
    if (np == node_ports_.end()) return nullptr;
    for (const auto& a : *ctx_.node_addresses)
        if (auto n = policy::parse_ip(a); n && *n == ip) return &np->second;
    return nullptr;
}

std::optional<policy::ObjectKey> NodeServices::local_pod_at(const policy::Ip& ip) {
    auto it = local_by_ip_.find(ip);
    if (it == local_by_ip_.end()) return std::nullopt;
    return it->second;
}

std::optional<policy::ObjectKey> NodeServices::pod_at(const policy::Ip& ip) {
    auto it = pods_by_ip_.find(ip);
    if (it == pods_by_ip_.end()) return std::nullopt;
    return it->second;
}

void NodeServices::status(Value& out, rapidjson::Document::AllocatorType& a, bool deferred, size_t judged_pods,
                          const std::string& table_error) const {
    out.SetObject();
    bool judged = queue_ && problem_.empty() && deferred && table_error.empty();
    out.AddMember("judgedAtNode", judged, a);
    std::string reason = !problem_.empty()          ? problem_
                         : !table_error.empty() ? table_error
                         : !queue_                      ? std::string("no Service has a frontend yet")
                                                                : std::string();
    out.AddMember("reason", json::str(reason, a), a);
    out.AddMember("nodeNetns", json::str(netns_path_, a), a);
    out.AddMember("queue", Value(static_cast<uint64_t>(nft::kServiceQueueNum)), a);
    const auto fe = frontends();
    out.AddMember("services", Value(static_cast<uint64_t>(ctx_.source->snapshot().services.size())), a);
    out.AddMember("frontendServices", Value(static_cast<uint64_t>(fe.services)), a);
    out.AddMember("judgedPods", Value(static_cast<uint64_t>(judged_pods)), a);
    if (judge_) {
        const auto& c = judge_->counters();
        Value cn(rapidjson::kObjectType);
        cn.AddMember("judged", c.judged, a);
        cn.AddMember("allowed", c.allowed, a);
        cn.AddMember("denied", c.denied, a);
        cn.AddMember("auditDenied", c.audit_denied, a);
        cn.AddMember("notALocalPod", c.not_a_local_pod, a);
        cn.AddMember("malformed", c.malformed, a);
        out.AddMember("connections", cn, a);
        Value den(rapidjson::kArrayType);
        for (const auto& d : judge_->recent_denials()) {
            Value o(rapidjson::kObjectType);
            o.AddMember("client", json::str(d.client, a), a);
            o.AddMember("backend", json::str(d.backend, a), a);
            o.AddMember("backendIP", json::str(d.backend_ip, a), a);
            o.AddMember("protocol", json::str(std::string(policy::proto_name(d.proto)), a), a);
            o.AddMember("port", Value(static_cast<unsigned>(d.port)), a);
            den.PushBack(o, a);
        }
        out.AddMember("recentDenials", den, a);
    }
    if (queue_) {
        auto q = queue_->stats();
        auto k = queue_->kernel_stats();
        Value qs(rapidjson::kObjectType);
        qs.AddMember("running", queue_->running(), a);
        qs.AddMember("packets", q.packets, a);
        qs.AddMember("overruns", q.overruns, a);
        qs.AddMember("kernelQueueDropped", k.queue_dropped, a);
        qs.AddMember("kernelUserDropped", k.user_dropped, a);
        out.AddMember("queueStats", qs, a);
    }
}

// `signetctl explain --to FRONTEND`: the connection goes to a backend that
// kube-proxy picks; say which backends there are and what the policy says
// of each (docs/policy.md).
void NodeServices::explain(const policy::Endpoint& from, const policy::Ip& to, uint8_t proto, uint16_t port,
                           rapidjson::Document& d, std::string& text) const {
    auto matches = policy::services_at(ctx_.source->snapshot(), to, proto, port, *ctx_.node_addresses);
    if (matches.empty()) return;
    auto& a = d.GetAllocator();
    Value arr(rapidjson::kArrayType);
    for (const auto& m : matches) {
        Value o(rapidjson::kObjectType);
        o.AddMember("service", json::str(m.service.namespace_ + "/" + m.service.name, a), a);
        o.AddMember("frontend", json::str(m.frontend, a), a);
        o.AddMember("port", Value(static_cast<unsigned>(m.frontend == std::string("NodePort") ? m.port.node_port : m.port.port)), a);
        if (!m.port.name.empty()) o.AddMember("portName", json::str(m.port.name, a), a);
        text += "  " + policy::to_string(to) + " port " + std::to_string(port) + " is a " + m.frontend +
                " of Service " + m.service.namespace_ + "/" + m.service.name + ": kube-proxy sends the connection to one of " +
                std::to_string(m.backends.size()) + " backend(s), and the policy judges the connection to that backend:\n";
        if (!m.has_selector)
            text += "    (the Service has no selector: its endpoints are set by hand, and signet does not read them)\n";
        Value bs(rapidjson::kArrayType);
        size_t allowed = 0;
        for (const auto& b : m.backends) {
            Value bo(rapidjson::kObjectType);
            bo.AddMember("pod", json::str(b.pod.namespace_ + "/" + b.pod.name, a), a);
            bo.AddMember("ip", json::str(b.ip, a), a);
            bo.AddMember("targetPort", Value(static_cast<unsigned>(b.port)), a);
            if (b.port == 0) {
                bo.AddMember("allowed", false, a);
                text += "    " + b.pod.namespace_ + "/" + b.pod.name + " (" + b.ip + "): not a backend of this port (named port " +
                        m.port.target_port + " not declared)\n";
                bs.PushBack(bo, a);
                continue;
            }
            auto ex = ctx_.policy->explain(from, policy::Endpoint::pod_at(b.pod.namespace_, b.pod.name, b.ip), proto, b.port);
            bool ok = ex && ex->allowed;
            allowed += ok;
            bo.AddMember("allowed", ok, a);
            std::string why;
            if (ex) {
                auto side = [](const std::optional<policy::SideVerdict>& s) { return s ? s->allowed : true; };
                why = !side(ex->egress) ? "egress of " + from.to_string() + " denies it"
                      : !side(ex->ingress) ? "ingress of " + b.pod.namespace_ + "/" + b.pod.name + " denies it"
                                           : "allowed";
            } else {
                why = ex.error().message;
            }
            text += "    " + b.pod.namespace_ + "/" + b.pod.name + " (" + b.ip + ":" + std::to_string(b.port) + "): " +
                    (ok ? "ALLOWED" : "DENIED") + (ok ? "" : " (" + why + ")") + "\n";
            bs.PushBack(bo, a);
        }
        o.AddMember("backends", bs, a);
        o.AddMember("allowedBackends", Value(static_cast<uint64_t>(allowed)), a);
        arr.PushBack(o, a);
    }
    if (!queue_ || !problem_.empty())
        text += "  Service connections are not judged at this node's translation now (" +
                (problem_.empty() ? std::string("not started") : problem_) +
                "): an isolated egress refuses them\n";
    d.AddMember("services", arr, a);
}

void NodeServices::stop() {
    if (queue_) queue_->stop();  // the node's table stays: its queue rules drop (fail closed)
}

// The judge's address index, built on demand (the loop's own thread, like the judge).
void NodeServices::rebuild_index() {
    pods_by_ip_.clear();
    local_by_ip_.clear();
    for (const auto& [k, pod] : ctx_.source->snapshot().pods) {
        if (pod.host_network) continue;
        for (const auto& a : pod.pod_ips)
            if (auto ip = policy::parse_ip(a)) pods_by_ip_[*ip] = k;
    }
    for (const auto& [k, rec] : ctx_.registry->all())
        for (const auto& a : rec.reg.ips)
            if (auto ip = policy::parse_ip(a)) {
                policy::ObjectKey key{rec.reg.namespace_, rec.reg.name};
                local_by_ip_[*ip] = key;
                pods_by_ip_[*ip] = key;  // what the CNI reported wins
            }
    index_dirty_ = false;
}

}  // namespace signet::handshake
