// libFuzzer target: arbitrary bytes as a packet that the node's Service
// queue hands over (controller/datapath/service_judge.h): parse_l4 and the
// judge's verdict with a small fixed policy (a client whose egress allows one
// backend on one port). Nothing may crash or read out of bounds; a packet
// that does not parse, or whose source is no local pod, is dropped; only the
// allowed backend and port are accepted.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "../../controller/datapath/service_judge.h"
#include "../../controller/policy/compiler.h"
#include "../../controller/policy/query.h"

using namespace signet;

namespace {

struct World {
    policy::Compiler compiler;
    std::unique_ptr<policy::Query> query;
    std::unique_ptr<handshake::ServiceJudge> judge;
    World() {
        cache::Snapshot s;
        s.put(cache::Namespace{"x", {{"kubernetes.io/metadata.name", "x"}}});
        auto pod = [](const char* name, const char* app, const char* ip) {
            cache::Pod p;
            p.namespace_ = "x";
            p.name = name;
            p.labels = {{"app", app}};
            p.pod_ips = {ip};
            p.phase = "Running";
            return p;
        };
        s.put(pod("client", "client", "10.1.0.2"));
        s.put(pod("db", "db", "10.1.1.1"));
        cache::NetworkPolicy np;
        np.namespace_ = "x";
        np.name = "egress";
        np.pod_selector = cache::LabelSelector{{{"app", "client"}}, {}};
        np.policy_types = {cache::PolicyType::Egress};
        cache::Peer to_db{cache::LabelSelector{{{"app", "db"}}, {}}, std::nullopt, std::nullopt};
        np.egress.push_back(cache::EgressRule{std::vector<cache::Peer>{to_db},
                                              std::vector<cache::PolicyPort>{{cache::Protocol::TCP, 5432, std::nullopt}}});
        s.put(np);
        compiler.reset(s, {{"x", "client", {"10.1.0.2", "fd00::2"}}}, {"192.168.1.10"});
        query = std::make_unique<policy::Query>(compiler);
        auto client = *policy::parse_ip("10.1.0.2"), client6 = *policy::parse_ip("fd00::2");
        auto db = *policy::parse_ip("10.1.1.1");
        judge = std::make_unique<handshake::ServiceJudge>(handshake::ServiceJudge::Context{
            query.get(),
            [=](const policy::Ip& a) -> std::optional<policy::ObjectKey> {
                if (a == client || a == client6) return policy::ObjectKey{"x", "client"};
                return std::nullopt;
            },
            [=](const policy::Ip& a) -> std::optional<policy::ObjectKey> {
                if (a == db) return policy::ObjectKey{"x", "db"};
                return std::nullopt;
            },
        nullptr, nullptr});
    }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static World w;
    std::span<const uint8_t> bytes(data, size);
    auto t = handshake::parse_l4(bytes);
    handshake::QueuedPacket qp;
    qp.payload = bytes;
    qp.cap_len = static_cast<uint32_t>(size);
    auto d = w.judge->judge(qp);
    if (d.verdict == handshake::kAccept) {
        // Only the client's TCP connection to db:5432 may pass.
        if (!t || policy::to_string(t->dst) != "10.1.1.1" || t->proto != 6 || t->dport != 5432) std::abort();
        if (policy::to_string(t->src) != "10.1.0.2") std::abort();
    }
    if (!t && d.verdict != handshake::kDrop) std::abort();
    return 0;
}
