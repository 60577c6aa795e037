#include "export/flow_points.h"

#include <algorithm>
#include <cstdint>

#include "policy/compiler.h"

namespace signet::exporter {

namespace {

std::string join_labels(const std::map<std::string, std::string>& labels) {
    std::string out;
    for (const auto& [k, v] : labels) out += (out.empty() ? "" : ",") + k + "=" + v;
    return out;
}

std::string join(const std::vector<std::string>& v) {
    std::string out;
    for (const auto& s : v) out += (out.empty() ? "" : ",") + s;
    return out;
}

}  // namespace

std::vector<exporter::Point> flow_points(const std::string& node, const std::vector<flows::Aggregate>& aggregates,
                                         const std::vector<flows::PodEvent>& events) {
    std::vector<exporter::Point> out;
    out.reserve(aggregates.size() + events.size());
    for (const auto& a : aggregates) {
        const flows::FlowKey& k = a.key;
        exporter::Point p;
        p.measurement = "signet_flow";
        p.tags = {{"node", node},
                  {"direction", k.ingress ? "ingress" : "egress"},
                  {"verdict", std::string(flows::to_string(k.verdict))},
                  {"local_namespace", k.local_namespace},
                  {"local_pod", k.local_pod},
                  {"peer_kind", std::string(flows::to_string(k.peer_kind))},
                  {"peer_namespace", k.peer_namespace},
                  {"peer_pod", k.peer_pod},
                  {"proto", std::string(policy::proto_name(k.proto))},
                  {"port", std::to_string(k.port)},
                  {"policy", a.decision.policy},
                  {"authenticated", a.decision.authenticated ? "true" : "false"}};
        auto i64 = [](uint64_t v) { return static_cast<int64_t>(std::min<uint64_t>(v, INT64_MAX)); };
        p.fields = {{"connections", i64(a.counts.connections)},
                    {"packets_out", i64(a.counts.packets_out)},
                    {"bytes_out", i64(a.counts.bytes_out)},
                    {"packets_in", i64(a.counts.packets_in)},
                    {"bytes_in", i64(a.counts.bytes_in)},
                    {"src", a.src},
                    {"dst", a.dst},
                    {"first_seen_ns", a.first_ns},
                    {"last_seen_ns", a.last_ns}};
        p.time_ns = a.last_ns;
        out.push_back(std::move(p));
    }
    for (const auto& e : events) {
        exporter::Point p;
        p.measurement = "signet_pod_event";
        p.tags = {{"node", node},
                  {"namespace", e.namespace_},
                  {"pod", e.name},
                  {"event", e.kind == flows::PodEvent::start ? "start" : "stop"}};
        p.fields = {{"uid", e.uid}, {"ips", join(e.ips)}, {"labels", join_labels(e.labels)}};
        p.time_ns = e.time_ns;
        out.push_back(std::move(p));
    }
    return out;
}

}  // namespace signet::exporter
