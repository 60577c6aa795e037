// signetd: the signet node controller. main only parses flags and wires the
// stages together; see controller/core for the logic.
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>

#include "core/controller.h"
#include "signer/csr_signer.h"
#include "nft/netlink_backend.h"
#include "source/dir_source.h"
#include "source/kubernetes/kubernetes_source.h"
#include "signet/api.h"
#include "signet/duration.h"
#include "signet/log.h"
#include "signet/args.h"

namespace {

constexpr const char* kUsage = R"(Usage: signetd [flags]

signetd is signet's node controller. It keeps the cluster's Namespaces, Pods
and NetworkPolicies, registers the pods that the `signet` CNI plugin reports
on this node, and serves its API on a unix socket (HTTP/1.1 + JSON).

Flags:
  --node-name NAME        name of this node (default: $NODE_NAME, else the host name)
  --source SOURCE         where objects come from:
                            dir:PATH    Namespace, Pod and NetworkPolicy manifests (YAML or JSON,
                                        as `kubectl apply -f` takes them) in folder PATH,
                                        followed with inotify (default: dir:/etc/signet/manifests)
                            kubernetes  the Kubernetes API: in-cluster config (service account),
                                        or --kubeconfig
  --kubeconfig FILE       kubeconfig for --source kubernetes (certificates, tokens, exec plugins)
  --socket PATH           API socket (default: /run/signet/signetd.sock), mode 0660; every
                          caller is checked (SO_PEERCRED): root may do everything
  --api-group NAME|GID    members of this group may also read the API (status, pods, explain,
                          policies, flows: GET only); the socket gets this group. Default:
                          none, root only (docs/api.md, "Who may call")
  --state-dir PATH        where the pod registry is kept across restarts (default: /var/lib/signet)
  --influxdb URL          export flow records and pod events to InfluxDB, e.g.
                            http://127.0.0.1:8086/?db=signet                      (1.x)
                            http://HOST:8086/?org=O&bucket=B&token-file=PATH      (2.x)
                          (docs/influxdb.md: batching, buffer bound, all parameters)
  --flow-export-interval D  how often flow aggregates are exported (default 10s)
  --metrics-address ADDR  serve Prometheus /metrics (read-only) on ADDR, e.g.
                          127.0.0.1:9464 or :9464 (all interfaces); off by default
  --health-address ADDR   serve GET /healthz (200 while signetd's event loop runs) and
                          /readyz (200 once ready, else 503: as the API socket's /readyz)
                          on ADDR, e.g. 127.0.0.1:9468, for kubelet's httpGet probes;
                          nothing else there. Off by default (the metrics listener
                          answers both too). With --csr-signer: ready once the CA is
                          loaded and the requests listed
  --graph                 also serve the live graph of who talks to whom at /graph
                          on the metrics address (off by default)
  --metrics-pod-labels    label the flow series by pod name (local_pod) as well as by
                          workload (local_workload_kind, local_workload); off by default,
                          so that a rollout makes no new series (docs/metrics.md)
  --no-flows              do not record flows (no conntrack events or deny log read)
  --unprotected-grace D   a Running pod placed on this node (spec.nodeName) that has not come
                          through the CNI chain for this long is reported as unprotected:
                          signetctl status, signet_unprotected_pods, and with --source
                          kubernetes one Warning Event (SignetUnprotected) on the Pod
                          (default 30s; docs/troubleshooting.md, "Unprotected pods")
  --remove-startup-taint  remove the NoSchedule taint node.signet.dev/agent-not-ready from this
                          node's Node once signetd enforces (source read, every pod's table
                          in force); operators add it at registration (kubelet
                          --register-with-taints), so that pods wait for signet. Other taints
                          are kept. Needs --source kubernetes. Off by default (docs/install.md)
  --startup-taint-key KEY the taint --remove-startup-taint removes (default
                          node.signet.dev/agent-not-ready)
  --audit-log stdout|FILE write each denied connection as one JSON object per line to
                          stdout or FILE (appended), with the deciding policy
                          (docs/flows.md, "Audit log"); off by default. Never blocks:
                          what a slow reader cannot take is dropped and counted
  --audit-log-rate N      at most N audit lines a second (default 1000; the rest are
                          dropped and counted)
  --authority dir:DIR     this node's identity: DIR holds the cluster authority
                          (signetctl authority init: the node's key is made here and
                          its certificate issued and renewed) or credentials issued
                          beforehand (signetctl authority issue); docs/handshake.md.
                          With ca.key in DIR signetd refuses to start unless
                          --allow-ca-key: for real clusters issue credentials
                          beforehand or use kubernetes-csr
  --allow-ca-key          let --authority dir:DIR hold the CA key (ca.key): this node
                          then issues its own certificate and can issue any node's, so
                          only for a one-machine setup (a demo, a test)
  --authority kubernetes-csr
                          this node's identity from the Kubernetes CSR API (signer
                          signet.dev/node, signed by signetd --csr-signer): the key is
                          made here, the certificate requested, checked and renewed at
                          two thirds of its life. Needs --source kubernetes, --kubeconfig
                          or --csr-kubeconfig; the trust bundle from --trust-bundle or
                          --trust-bundle-configmap
  --csr-kubeconfig FILE   credentials for the CSR (default: --kubeconfig, else in-cluster:
                          signetd's service account, whose pod-bound token names this
                          node; the signer accepts it, Kubernetes 1.30 or later); or
                          the node's own (system:node:NAME, e.g. the kubelet's kubeconfig)
  --trust-bundle FILE     the trust bundle (PEM CA certificates) for kubernetes-csr
  --trust-bundle-configmap NS/NAME[:KEY]
                          else read it from this ConfigMap key (default
                          signet-system/signet-trust-bundle:trust-bundle.pem); with
                          --csr-signer: the ConfigMap the signer keeps equal to its CA
                          Secret's trust-bundle.pem (else ca.crt), its only writer
  --trust-domain TD       the trust domain to request (default: the bundle's CA's)
  --csr-expiration D      requested certificate lifetime (default 24h; shorter for tests)
  --csr-signer            run as the cluster's CSR signer for signet.dev/node instead
                          of a node controller (one per cluster): approves and signs
                          only nodes' requests for their own name, denies the rest
  --ca-secret NS/NAME     the signer's CA (keys ca.key, ca.crt; default signet-system/signet-ca)
  --node-agent-service-account NS/NAME|none
                          the signer also approves a request from this service account
                          when its token is bound to a pod on node NAME (spec.extra
                          authentication.kubernetes.io/node-name), for that node only
                          (default: signet-system/signet, signetd's; none: nodes only)
  --policy-mode MODE      the node's default policy mode (docs/policy.md, "Audit mode"):
                            enforce     what the policy denies is refused (default)
                            audit       policies are evaluated as in enforcement, but a
                                        connection they would deny is allowed and recorded
                                        with verdict audit-denied (flows, --audit-log,
                                        /metrics, InfluxDB)
                          a Namespace's label signet.dev/policy-mode: audit|enforce sets
                          its pods' mode over this default
  --handshake MODE        the identity handshake on each local pod's new TCP connections
                          (needs --authority):
                            off         policy by address only (default)
                            permissive  peers that can authenticate do; others are judged
                                        on address rules with their cluster identity
                            enforce     a pod peer must prove its identity: a tokenless
                                        connection from a pod address is judged by
                                        ipBlock rules only
  --no-handshake-strict-tcp
                          enforce mode admits no TCP segment of a connection the handshake
                          did not judge (SYN-cookie ACKs, replays after the close, odd flags:
                          docs/handshake.md). This turns those rules off, leaving only the
                          queue's checks (an escape hatch; --handshake-strict-tcp is the default)
  --handshake-memory MIB  memory for the handshake's state (handshakes in flight, the
                          replay cache, rate-limit buckets, pair keys; default 256)
  --services MODE         connections to Service frontends (ClusterIPs, NodePorts, externalIPs,
                          load-balancer IPs), which kube-proxy translates in the node's netns
                          (docs/policy.md, "Services"):
                            judge       judged after the translation, on the backend pod
                                        (default)
                            off         judged like any address in the pod's own table: an
                                        isolated egress refuses them unless an ipBlock allows
  --node-netns PATH       the node's netns: where kube-proxy translates, and whose addresses
                          are the node's own (default: signetd's own; signetd runs in the
                          host's network namespace)
  --log-level LEVEL       debug, info, warn or error (default: info); changeable at run time:
                          signetctl log-level LEVEL
  --log-format FORMAT     text (default) or json: one JSON object per line
                          {"time","level","component","msg"}
  --help                  show this help
  --version               print the version

Signals: SIGTERM/SIGINT stop cleanly (registrations are kept in --state-dir);
SIGHUP re-reads the source now.
)";

int usage_error(const std::string& msg) {
    std::fprintf(stderr, "signetd: %s\nRun 'signetd --help' for usage.\n", msg.c_str());
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    using namespace signet;
    core::Options opts;
    opts.socket_path = api::kDefaultSocket;
    opts.state_dir = api::kDefaultStateDir;
    std::string source = "dir:/etc/signet/manifests";
    std::string kubeconfig;
    // --authority kubernetes-csr and --csr-signer (credentials/csr_client.h, signer/csr_signer.h)
    credentials::CsrClientOptions csr_opts;
    signer::CsrSignerOptions signer_opts;
    bool csr_signer = false, csr_kubeconfig_set = false, allow_ca_key = false;
    bool remove_startup_taint = false;
    std::string startup_taint_key = signet::coverage::kStartupTaint;
    std::optional<double> audit_rate;
    if (const char* n = std::getenv("NODE_NAME"); n != nullptr && *n != '\0') opts.node_name = n;

    signet::Args args(argc, argv);
    while (args.next()) {
        const std::string arg = args.arg();
        auto need = [&](std::string* out) { return args.value(out); };
        std::string v;
        if (arg == "--help" || arg == "-h") {
            std::fputs(kUsage, stdout);
            return 0;
        } else if (arg == "--version") {
            std::printf("signetd %s\n", SIGNET_VERSION);
            return 0;
        } else if (arg == "--node-name") {
            if (!need(&opts.node_name)) return usage_error("--node-name needs a value");
        } else if (arg == "--source") {
            if (!need(&source)) return usage_error("--source needs a value");
        } else if (arg == "--socket") {
            if (!need(&opts.socket_path)) return usage_error("--socket needs a value");
        } else if (arg == "--api-group") {
            if (!need(&opts.api_group) || opts.api_group.empty()) return usage_error("--api-group needs a group name or GID");
        } else if (arg == "--state-dir") {
            if (!need(&opts.state_dir)) return usage_error("--state-dir needs a value");
        } else if (arg == "--log-level") {
            log::Level level;
            if (!need(&v) || !log::parse_level(v, &level)) return usage_error("--log-level takes debug, info, warn or error");
            log::set_level(level);
        } else if (arg == "--log-format") {
            log::Format format;
            if (!need(&v) || !log::parse_format(v, &format)) return usage_error("--log-format takes text or json");
            log::set_format(format);
        } else if (arg == "--kubeconfig") {
            if (!need(&kubeconfig)) return usage_error("--kubeconfig needs a value");
        } else if (arg == "--influxdb") {
            std::string spec;
            if (!need(&spec)) return usage_error("--influxdb needs a URL");
            auto cfg = exporter::parse_influx_spec(spec);
            if (!cfg) return usage_error("--influxdb: " + cfg.error().message);
            opts.influx = std::move(*cfg);
        } else if (arg == "--flow-export-interval") {
            std::string dur;
            if (!need(&dur)) return usage_error("--flow-export-interval needs a duration");
            auto d = parse_duration(dur, std::chrono::milliseconds(100), std::chrono::hours(1));
            if (!d) return usage_error("--flow-export-interval: " + d.error().message);
            opts.export_interval = *d;
        } else if (arg == "--metrics-address") {
            if (!need(&opts.metrics_address) || opts.metrics_address.empty())
                return usage_error("--metrics-address needs HOST:PORT");
            if (auto a = metrics::parse_listen_address(opts.metrics_address); !a)
                return usage_error("--metrics-address: " + a.error().message);
        } else if (arg == "--health-address") {
            if (!need(&opts.health_address) || opts.health_address.empty())
                return usage_error("--health-address needs HOST:PORT");
            if (auto a = metrics::parse_listen_address(opts.health_address); !a)
                return usage_error("--health-address: " + a.error().message);
        } else if (arg == "--graph") {
            opts.graph = true;
        } else if (arg == "--no-flows") {
            opts.collect_flows = false;
        } else if (arg == "--unprotected-grace") {
            if (!need(&v)) return usage_error("--unprotected-grace needs a duration");
            auto d = parse_duration(v, std::chrono::milliseconds(0), std::chrono::hours(24));
            if (!d) return usage_error("--unprotected-grace: " + d.error().message);
            opts.unprotected_grace = *d;
        } else if (arg == "--remove-startup-taint") {
            remove_startup_taint = true;
        } else if (arg == "--startup-taint-key") {
            if (!need(&startup_taint_key)) return usage_error("--startup-taint-key needs a taint key");
            // Taint keys are written as label keys ([prefix/]name).
            if (auto why = cache::check_label_key(startup_taint_key); !why.empty())
                return usage_error("--startup-taint-key: '" + startup_taint_key + "': " + why);
        } else if (arg == "--metrics-pod-labels") {
            opts.metrics_pod_labels = true;
        } else if (arg == "--audit-log") {
            if (!need(&v) || v.empty()) return usage_error("--audit-log needs stdout or a file path");
            if (!opts.audit_log) opts.audit_log.emplace();
            opts.audit_log->target = v;
        } else if (arg == "--audit-log-rate") {
            if (!need(&v)) return usage_error("--audit-log-rate needs a number of lines a second");
            char* end = nullptr;
            errno = 0;
            long n = std::strtol(v.c_str(), &end, 10);
            if (errno != 0 || end == v.c_str() || *end != '\0' || n < 1 || n > 1000000)
                return usage_error("--audit-log-rate takes a number of lines a second, 1 to 1000000");
            audit_rate = static_cast<double>(n);
        } else if (arg == "--services") {
            if (!need(&v)) return usage_error("--services needs a value (judge or off)");
            if (v == "judge") opts.services = true;
            else if (v == "off") opts.services = false;
            else return usage_error("--services: expected judge or off, got '" + v + "'");
        } else if (arg == "--node-netns") {
            if (!need(&v) || v.empty()) return usage_error("--node-netns needs a path (e.g. /run/netns/NAME)");
            opts.node_netns = v;
            // The node's addresses are those of its netns (read from a thread
            // inside it); the last good answer stands if it cannot be entered.
            opts.node_addresses = [path = v, last = std::make_shared<std::vector<std::string>>()] {
                if (auto ns = nft::Netns::open(path))
                    if (auto a = ns->run([] { return core::host_addresses(); })) *last = std::move(*a);
                return *last;
            };
        } else if (arg == "--policy-mode") {
            if (!need(&v)) return usage_error("--policy-mode needs audit or enforce");
            auto m = signet::policy::parse_policy_mode(v);
            if (!m) return usage_error("--policy-mode takes audit or enforce, not '" + v + "'");
            opts.policy_mode = *m;
        } else if (arg == "--handshake") {
            std::string v;
            if (!need(&v)) return usage_error("--handshake needs off, permissive or enforce");
            auto m = handshake::parse_handshake_mode(v);
            if (!m) return usage_error("--handshake takes off, permissive or enforce, not '" + v + "'");
            opts.handshake = *m;
        } else if (arg == "--handshake-strict-tcp") {
            opts.handshake_strict_tcp = true;
        } else if (arg == "--no-handshake-strict-tcp") {
            opts.handshake_strict_tcp = false;
            opts.handshake_strict_tcp_set = true;
        } else if (arg == "--handshake-memory") {
            auto b = need(&v) ? handshake::parse_handshake_memory(v) : std::nullopt;
            if (!b) return usage_error("--handshake-memory takes MiB, 16 to 65536");
            opts.handshake_memory = *b;
        } else if (arg == "--authority") {
            std::string spec;
            if (need(&spec) && spec == credentials::kKubernetesCsr) {
                opts.authority_dir = spec;
                continue;
            }
            if (spec.rfind("dir:", 0) != 0 || spec.size() == 4)
                return usage_error("--authority takes dir:DIR or kubernetes-csr");
            opts.authority_dir = spec.substr(4);
        } else if (arg == "--allow-ca-key") {
            allow_ca_key = true;
        } else if (arg == "--csr-signer") {
            csr_signer = true;
        } else if (arg == "--csr-kubeconfig") {
            if (!need(&csr_opts.csr_kubeconfig) || csr_opts.csr_kubeconfig.empty()) return usage_error("--csr-kubeconfig needs a file");
            csr_kubeconfig_set = true;
        } else if (arg == "--trust-bundle") {
            if (!need(&csr_opts.trust_bundle_file) || csr_opts.trust_bundle_file.empty()) return usage_error("--trust-bundle needs a file");
        } else if (arg == "--trust-bundle-configmap") {
            if (!need(&v) || v.find('/') == std::string::npos) return usage_error("--trust-bundle-configmap takes NS/NAME[:KEY]");
            csr_opts.trust_bundle_configmap = v.substr(0, v.find(':'));
            if (v.find(':') != std::string::npos) csr_opts.trust_bundle_key = v.substr(v.find(':') + 1);
        } else if (arg == "--trust-domain") {
            if (!need(&csr_opts.trust_domain) || csr_opts.trust_domain.empty()) return usage_error("--trust-domain needs a value");
        } else if (arg == "--csr-expiration") {
            if (!need(&v)) return usage_error("--csr-expiration needs a duration");
            auto d = parse_duration(v, std::chrono::seconds(10), std::chrono::hours(24));
            if (!d) return usage_error("--csr-expiration: " + d.error().message);
            csr_opts.expiration = std::chrono::duration_cast<std::chrono::seconds>(*d);
        } else if (arg == "--ca-secret") {
            if (!need(&signer_opts.ca_secret) || signer_opts.ca_secret.find('/') == std::string::npos)
                return usage_error("--ca-secret takes NS/NAME");
        } else if (arg == "--node-agent-service-account") {
            if (!need(&v) || (v != "none" && (v.find('/') == std::string::npos || v.front() == '/' || v.back() == '/')))
                return usage_error("--node-agent-service-account takes NS/NAME or none");
            signer_opts.node_agent_service_accounts.clear();
            if (v != "none") signer_opts.node_agent_service_accounts.push_back(v);
        } else {
            return usage_error("unknown flag '" + arg + "'");
        }
    }

    if (source != "kubernetes" && (source.rfind("dir:", 0) != 0 || source.size() <= 4))
        return usage_error("--source must be dir:PATH or kubernetes, not '" + source + "'");
    const bool csr_mode = opts.authority_dir == credentials::kKubernetesCsr;
    if (!kubeconfig.empty() && source != "kubernetes" && !csr_mode && !csr_signer)
        return usage_error("--kubeconfig goes with --source kubernetes, --authority kubernetes-csr or --csr-signer");
    if (csr_signer) {
        signer_opts.kubeconfig = kubeconfig;
        signer_opts.trust_bundle_configmap = csr_opts.trust_bundle_configmap;
        signer_opts.trust_bundle_key = csr_opts.trust_bundle_key;
        signer_opts.health_address = opts.health_address;
        return signer::run_csr_signer(signer_opts);
    }
    if (csr_mode) {
        if (source != "kubernetes" && kubeconfig.empty() && !csr_kubeconfig_set)
            return usage_error("--authority kubernetes-csr needs --source kubernetes, --kubeconfig or --csr-kubeconfig");
        csr_opts.kubeconfig = !kubeconfig.empty() || source == "kubernetes" ? kubeconfig : csr_opts.csr_kubeconfig;
        if (!csr_kubeconfig_set) csr_opts.csr_kubeconfig = csr_opts.kubeconfig;
        opts.csr = csr_opts;
    }
    if (auto st = credentials::check_ca_key_on_node(opts.authority_dir, allow_ca_key); !st) return usage_error(st.error().message);
    if (opts.node_name.empty()) {
        char host[256] = {};
        if (::gethostname(host, sizeof host - 1) != 0 || host[0] == '\0')
            return usage_error("cannot tell the node name: pass --node-name");
        opts.node_name = host;
    }
    if (opts.state_dir.empty()) return usage_error("--state-dir must not be empty");
    if (opts.graph && opts.metrics_address.empty()) return usage_error("--graph needs --metrics-address");
    if (remove_startup_taint && source != "kubernetes")
        return usage_error("--remove-startup-taint needs --source kubernetes (the taint is on the Node object)");
    if (remove_startup_taint && !cache::is_dns1123_subdomain(opts.node_name))
        return usage_error("--remove-startup-taint: '" + opts.node_name + "' is not a Kubernetes node name");
    if (remove_startup_taint) opts.startup_taint = startup_taint_key;
    if (audit_rate && !opts.audit_log) return usage_error("--audit-log-rate goes with --audit-log");
    if (opts.audit_log) {
        if (!opts.collect_flows) return usage_error("--audit-log needs flow records: drop --no-flows");
        if (audit_rate) opts.audit_log->rate = *audit_rate;
    }
    if (opts.handshake != handshake::HandshakeMode::off && opts.authority_dir.empty())
        return usage_error(std::string("--handshake ") + handshake::to_string(opts.handshake) +
                           " needs this node's identity: pass --authority");

    boost::asio::io_context io;
    // Sources report from their own threads too: log::write is thread-safe.
    auto report = [](const std::string& m) { log::warn("source", m); };
    std::unique_ptr<source::Source> src;
    if (source == "kubernetes") {
        source::KubernetesOptions ko;
        ko.kubeconfig = kubeconfig;
        ko.node_name = opts.node_name;
        auto k = source::KubernetesSource::create(ko, report);
        if (!k) {
            log::error("signetd", "--source kubernetes: " + k.error().message);
            return 1;
        }
        // Events on unprotected pods and the startup taint: clients of the source's server and credentials.
        opts.cluster_api = [ks = k->get()] { return ks->new_client(); };
        src = std::move(*k);
    } else {
        src = std::make_unique<source::DirSource>(source.substr(4), report);
    }
    std::optional<bool> destroy_table;  // what the probe learned, so the backend need not try again
    if (auto probe = nft::probe_kernel(); probe) {
        destroy_table = probe->destroy_table;
        opts.queue_backend = nft::to_string(probe->queue);
        opts.handshake_queue = probe->queue;
        opts.service_queue = probe->queue;
        log::info("signetd", "kernel: new-connection queue via " + opts.queue_backend +
                                 (probe->native_queue_error.empty() ? "" : " (native nft queue: " + probe->native_queue_error + ")"));
    } else {
        log::warn("signetd", "kernel probe failed: " + probe.error().message);
    }
    core::Controller controller(io, opts, std::move(src), std::make_unique<nft::NetlinkBackend>(destroy_table));
    if (auto st = controller.start(); !st) {
        log::error("signetd", st.error().message);
        return 1;
    }
    boost::asio::signal_set signals(io, SIGTERM, SIGINT);
    signals.async_wait([&](boost::system::error_code ec, int sig) {
        if (ec) return;
        log::info("signetd", std::string("received ") + ::strsignal(sig) + ", stopping");
        controller.stop();
        io.stop();
    });
    boost::asio::signal_set hup(io, SIGHUP);
    std::function<void()> wait_hup = [&]() {
        hup.async_wait([&](boost::system::error_code ec, int) {
            if (ec) return;
            controller.sync([](Status st) {
                if (!st) log::warn("signetd", "SIGHUP: " + st.error().message);
            });
            wait_hup();
        });
    };
    wait_hup();
    io.run();
    log::info("signetd", "stopped");
    return 0;
}
