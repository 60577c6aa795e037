// A metrics listener with fixture content, for test_metrics_http.py:
// HttpListener on --address (default 127.0.0.1:0), /metrics written with
// metrics::Writer (every metric name docs/metrics.md proposes, label values
// that need escaping, special values, histograms), and /api/graph from the
// --graph files (the n-th request gets the n-th file, then the last one
// again: a live update). Prints "port <n>" once listening; exits 0 on
// SIGTERM/SIGINT.
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>

#include <cmath>
#include <csignal>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "metrics/exposition.h"
#include "metrics/http_listener.h"
#include "signet/args.h"
#include "signet/fsutil.h"

namespace m = signet::metrics;

namespace {

int usage() {
    std::fprintf(stderr,
                 "usage: metrics_fixture_server [--address A] [--graph FILE]... [--no-graph]\n"
                 "       [--max-connections N] [--timeout-ms N] [--max-header-bytes N]\n");
    return 2;
}

signet::Histogram make_histogram(const std::vector<double>& seconds) {
    signet::Histogram h;
    for (double s : seconds) h.observe(s);
    return h;
}

std::string fixture_metrics(uint64_t scrape) {
    m::Writer w;
    const double inf = std::numeric_limits<double>::infinity();

    w.family("signet_build_info", "gauge", "signet's version; always 1.");
    w.sample("signet_build_info", {{"version", "0.1.0"}}, 1);

    w.family("signet_pods", "gauge", "Pods registered with this node's controller, by state.");
    w.sample("signet_pods", {{"state", "ready"}}, 6);
    w.sample("signet_pods", {{"state", "pending"}}, 0);

    w.family("signet_flows_total", "counter", "Connections judged by the enforcer, by direction and verdict.");
    w.sample("signet_flows_total", {{"direction", "ingress"}, {"verdict", "allowed"}}, 5123);
    w.sample("signet_flows_total", {{"direction", "ingress"}, {"verdict", "denied"}}, 17);
    w.sample("signet_flows_total", {{"direction", "egress"}, {"verdict", "allowed"}}, 9007199254740993.0);

    w.family("signet_flow_bytes_total", "counter", "Bytes of judged connections, by direction and verdict.");
    w.sample("signet_flow_bytes_total", {{"direction", "ingress"}, {"verdict", "allowed"}}, 1234567);

    w.family("signet_flow_packets_total", "counter", "Packets of judged connections, by direction and verdict.");
    w.sample("signet_flow_packets_total", {{"direction", "ingress"}, {"verdict", "allowed"}}, 4000);

    w.family("signet_policy_denials_total", "counter",
             "Denied connections, by the namespace of the isolated pod and the deciding policy.");
    w.sample("signet_policy_denials_total", {{"local_namespace", "y"}, {"policy", "default-deny"}}, 17);

    w.family("signet_handshakes_total", "counter", "Identity handshakes, by result.");
    for (const char* r : {"authenticated", "rejected", "timeout", "error"})
        w.sample("signet_handshakes_total", {{"result", r}}, std::string(r) == "authenticated" ? 42 : 1);

    w.family("signet_handshake_duration_seconds", "histogram", "Duration of identity handshakes.");
    w.histogram("signet_handshake_duration_seconds", {}, make_histogram({0.0004, 0.0009, 0.003}));

    w.family("signet_nft_program_duration_seconds", "histogram",
             "Time to program one atomic nftables batch into a pod's netns.");
    w.histogram("signet_nft_program_duration_seconds", {{"kind", "full"}},
                make_histogram({0.00005, 0.0003, 0.002, 0.02, 3.0, 20.0}));
    w.histogram("signet_nft_program_duration_seconds", {{"kind", "incremental"}}, make_histogram({}));

    w.family("signet_nft_program_errors_total", "counter", "nftables batches the kernel refused.");
    w.sample("signet_nft_program_errors_total", {}, 0);

    w.family("signet_source_lag_seconds", "gauge",
             "Time from a source's latest event to the controller having applied it.");
    w.sample("signet_source_lag_seconds", {{"source", "kubernetes"}}, 0.00025);
    w.sample("signet_source_lag_seconds", {{"source", "manifests"}}, 1e-05);

    w.family("signet_exporter_buffered_flows", "gauge", "Flow records waiting in an exporter's buffer.");
    w.sample("signet_exporter_buffered_flows", {{"exporter", "influxdb"}}, 12);
    w.family("signet_exporter_buffer_capacity_flows", "gauge", "Capacity of an exporter's buffer, in flow records.");
    w.sample("signet_exporter_buffer_capacity_flows", {{"exporter", "influxdb"}}, 65536);
    w.family("signet_exporter_sent_flows_total", "counter", "Flow records an exporter delivered.");
    w.sample("signet_exporter_sent_flows_total", {{"exporter", "influxdb"}}, 100000);
    w.family("signet_exporter_dropped_flows_total", "counter", "Flow records an exporter dropped, by reason.");
    w.sample("signet_exporter_dropped_flows_total", {{"exporter", "influxdb"}, {"reason", "buffer_full"}}, 3);
    w.sample("signet_exporter_dropped_flows_total", {{"exporter", "influxdb"}, {"reason", "send_failed"}}, 0);

    // Escaping: HELP with a backslash and a newline; label values with
    // backslash, quote, newline, braces, commas, UTF-8, and empty.
    w.family("signet_fixture_tricky_labels", "gauge", "Label values that need escaping: C:\\dir\\ and a\nsecond line.");
    w.sample("signet_fixture_tricky_labels", {{"value", "C:\\dir\\"}}, 1);
    w.sample("signet_fixture_tricky_labels", {{"value", "say \"hi\""}}, 2);
    w.sample("signet_fixture_tricky_labels", {{"value", "line1\nline2"}}, 3);
    w.sample("signet_fixture_tricky_labels", {{"value", "{a=\"b\",c}"}}, 4);
    w.sample("signet_fixture_tricky_labels", {{"value", "na\xc3\xafve \xe2\x9c\x93"}}, 5);
    w.sample("signet_fixture_tricky_labels", {{"value", ""}}, 6);
    w.sample("signet_fixture_tricky_labels", {{"value", "\\n is not a newline"}}, 7);

    w.family("signet_fixture_values", "gauge", "Special sample values.");
    w.sample("signet_fixture_values", {{"kind", "nan"}}, std::nan(""));
    w.sample("signet_fixture_values", {{"kind", "inf"}}, inf);
    w.sample("signet_fixture_values", {{"kind", "minus_inf"}}, -inf);
    w.sample("signet_fixture_values", {{"kind", "negative"}}, -3.5);
    w.sample("signet_fixture_values", {{"kind", "tiny"}}, 1e-300);
    w.sample("signet_fixture_values", {{"kind", "huge"}}, 1.5e300);

    w.family("signet_fixture_scrapes_total", "counter", "Scrapes of this fixture server (the handler runs per request).");
    w.sample("signet_fixture_scrapes_total", {}, static_cast<double>(scrape));

    // Last: the writer's own complaints (must be 0).
    size_t errors = w.errors().size();
    for (const auto& e : w.errors()) std::fprintf(stderr, "metrics writer error: %s\n", e.c_str());
    w.family("signet_fixture_writer_errors", "gauge", "Problems metrics::Writer reported while writing this scrape.");
    w.sample("signet_fixture_writer_errors", {}, static_cast<double>(errors));
    return w.take();
}

}  // namespace

int main(int argc, char** argv) {
    std::string address = "127.0.0.1:0";
    std::vector<std::string> graph_files;
    bool graph = true;
    m::Limits limits;
    signet::Args args(argc, argv);
    while (args.next()) {
        std::string v;
        const std::string& a = args.arg();
        if (a == "--no-graph") {
            graph = false;
            continue;
        }
        if (!args.value(&v)) return usage();
        if (a == "--address") address = v;
        else if (a == "--graph") graph_files.push_back(v);
        else if (a == "--max-connections") limits.max_connections = std::stoul(v);
        else if (a == "--timeout-ms") limits.timeout = std::chrono::milliseconds(std::stoul(v));
        else if (a == "--max-header-bytes") limits.max_header_bytes = std::stoul(v);
        else return usage();
    }

    std::vector<std::string> graphs;
    for (const auto& f : graph_files) {
        auto text = signet::fs::read_file(f);
        if (!text) {
            std::fprintf(stderr, "cannot read %s: %s\n", f.c_str(), text.error().message.c_str());
            return 1;
        }
        graphs.push_back(*text);
    }
    if (graphs.empty()) graphs.push_back("{\"node\":\"node-1\",\"pods\":[],\"peers\":[],\"edges\":[]}");

    boost::asio::io_context io;
    uint64_t scrapes = 0;
    size_t graph_requests = 0;
    m::Handlers handlers;
    handlers.metrics = [&] { return fixture_metrics(++scrapes); };
    if (graph)
        handlers.graph_json = [&] {
            const std::string& g = graphs[std::min(graph_requests, graphs.size() - 1)];
            ++graph_requests;
            return g;
        };
    m::HttpListener listener(io, handlers, limits);
    auto st = listener.listen(address);
    if (!st) {
        std::fprintf(stderr, "%s\n", st.error().message.c_str());
        return 1;
    }
    boost::asio::signal_set signals(io, SIGTERM, SIGINT);
    signals.async_wait([&](boost::system::error_code, int) {
        listener.stop();
        io.stop();
    });
    std::printf("port %u\n", static_cast<unsigned>(listener.port()));
    std::fflush(stdout);
    io.run();
    return 0;
}
