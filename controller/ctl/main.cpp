// signetctl: the operator's command line for signetd.
#include <arpa/inet.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <ctime>
#include <string>
#include <vector>

#include "signet/api.h"
#include "signet/duration.h"
#include "signet/http_client.h"
#include "signet/json.h"
#include "signet/log.h"
#include "signet/args.h"
#include "ctl/authority.h"

namespace {

using namespace signet;

constexpr const char* kUsage = R"(Usage: signetctl [--socket PATH] COMMAND [flags]

Commands:
  status              the controller's state: readiness, source and applied versions, pods
  pods                the pods registered on this node, with their labels
  sync                make signetd read its source afresh now; returns once everything read
                      is applied to every local pod, and prints the applied version
  explain --from A --to B --port PORT[/PROTO]
                      whether a connection from A to B is allowed, and the policies and rules
                      that decide it; A and B are NAMESPACE/POD or an IP address. Exit
                      status: 0 allowed, 3 denied (to a Service: by any of its backends),
                      1 error, 2 usage. The policy's verdict also in audit mode, where
                      the text adds that the connection is allowed and recorded
  policies NS/POD     the policies in force for a pod, its rules (peers, ports), and the
                      packets each rule accepted and the default deny dropped
  flows [--namespace NS] [--pod NS/POD] [--verdict allowed|denied|audit-denied] [--limit N] [--follow]
                      the latest connections of this node's pods: opened, closed (with
                      packets and bytes each way) and denied attempts, with the peer (pod,
                      node or address) and the policy rule or default deny that decided it;
                      --follow keeps printing new ones until interrupted
  authority init DIR | authority issue DIR --node NAME --out DIR2
                      the cluster's identity authority (docs/handshake.md): create one, or
                      issue a node's key and certificate; 'signetctl authority --help'
  log-level [LEVEL]   signetd's log level, or set it now (debug, info, warn, error; root)
  version             print signetctl's version

Flags:
  --socket PATH       signetd's API socket (default: $SIGNET_SOCKET, else /run/signet/signetd.sock)
  -o, --output FMT    text (default) or json
  --timeout DURATION  how long to wait for signetd (e.g. 500ms, 10s, 2m; default 30s)
  -h, --help          show this help

Exit status: 0 on success, 1 when signetd reports a failure or cannot be
reached (the reason is printed on stderr), 2 on a usage error.
)";

struct Options {
    std::string from, to, port;  // explain
    std::string ns, pod, verdict, limit = "50";  // flows
    bool follow = false;
    std::vector<std::string> args;  // positional arguments after the command
    std::string socket = api::kDefaultSocket;
    std::string output = "text";
    std::string timeout = "30s";
    int timeout_ms = 30000;
};

int usage_error(const std::string& msg) {
    std::fprintf(stderr, "signetctl: %s\nRun 'signetctl --help' for usage.\n", msg.c_str());
    return 2;
}

bool parse_duration_ms(const std::string& text, int* out) {
    auto d = signet::parse_duration(text, std::chrono::milliseconds(1), std::chrono::hours(1));
    if (!d) return false;
    *out = static_cast<int>(d->count());
    return true;
}

Result<rapidjson::Document> call(const Options& o, const char* method, const std::string& target, int extra_ms = 0,
                                 std::string_view body = {}) {
    auto resp = http::request(o.socket, method, target, body, o.timeout_ms + extra_ms);
    if (!resp) return make_error(1, "cannot talk to signetd at " + o.socket + ": " + resp.error().message);
    auto doc = json::parse(resp->body);
    if (resp->status / 100 != 2) {
        std::string msg = resp->body;
        if (doc && doc->IsObject())
            if (auto e = json::opt_string(*doc, "error")) msg = *e;
        while (!msg.empty() && msg.back() == '\n') msg.pop_back();
        return make_error(1, "signetd: " + msg + " (HTTP " + std::to_string(resp->status) + ")");
    }
    if (!doc) return make_error(1, "signetd sent a bad answer: " + doc.error().message);
    return doc;
}

// NAMESPACE/POD as Kubernetes names them (checked here, before signetd is
// asked): "" when valid, else why not. `what` names the argument.
std::string pod_ref_problem(const std::string& what, const std::string& ref) {
    size_t slash = ref.find('/');
    if (slash == std::string::npos) return what + ": expected NAMESPACE/POD, got '" + ref + "'";
    if (auto p = api::namespace_problem(ref.substr(0, slash)); !p.empty()) return what + ": namespace " + p;
    if (auto p = api::pod_name_problem(ref.substr(slash + 1)); !p.empty()) return what + ": pod name " + p;
    return {};
}

// explain's endpoints: an IP address, or NAMESPACE/POD (an IPv4 CIDR is left to signetd).
std::string endpoint_problem(const std::string& what, const std::string& ep) {
    size_t slash = ep.find('/');
    if (slash == std::string::npos || ep.find(':') != std::string::npos) return {};
    unsigned char buf[4];
    if (inet_pton(AF_INET, ep.substr(0, slash).c_str(), buf) == 1) return {};
    return pod_ref_problem(what, ep);
}

std::string labels_text(const rapidjson::Value& pod) {
    std::string out;
    if (const auto* l = json::find(pod, "labels"); l != nullptr && l->IsObject()) {
        for (auto it = l->MemberBegin(); it != l->MemberEnd(); ++it) {
            if (!out.empty()) out += ',';
            out += std::string(it->name.GetString()) + "=" + (it->value.IsString() ? it->value.GetString() : "");
        }
    }
    return out.empty() ? "<none>" : out;
}

int cmd_status(const Options& o) {
    auto doc = call(o, "GET", "/v1/status");
    if (!doc) return std::fprintf(stderr, "signetctl: %s\n", doc.error().message.c_str()), 1;
    if (o.output == "json") return std::printf("%s\n", json::to_string(*doc, true).c_str()), 0;
    const auto& d = *doc;
    auto num = [&](const rapidjson::Value& v, const char* k) -> unsigned long long {
        const auto* f = json::find(v, k);
        return f != nullptr && f->IsUint64() ? f->GetUint64() : 0;
    };
    const auto* ready = json::find(d, "ready");
    std::printf("node:            %s\n", json::opt_string(d, "node").value_or("?").c_str());
    std::printf("signetd:         %s\n", json::opt_string(d, "version").value_or("?").c_str());
    std::printf("ready:           %s\n", ready != nullptr && ready->IsBool() && ready->GetBool() ? "yes" : "no");
    std::printf("source version:  %llu\n", num(d, "sourceVersion"));
    std::printf("applied version: %llu%s\n", num(d, "appliedVersion"),
                num(d, "appliedVersion") == num(d, "sourceVersion") ? " (up to date)" : " (applying)");
    std::printf("pods:            %llu\n", num(d, "pods"));
    if (const auto* s = json::find(d, "source"); s != nullptr && s->IsObject()) {
        std::printf("source:          %s:%s (%llu namespaces, %llu pod objects, %llu network policies)\n",
                    json::opt_string(*s, "kind").value_or("?").c_str(), json::opt_string(*s, "path").value_or("").c_str(),
                    num(*s, "namespaces"), num(*s, "podObjects"), num(*s, "networkPolicies"));
        std::string err = json::opt_string(*s, "lastError").value_or("");
        if (!err.empty()) std::printf("source error:    %s\n", err.c_str());
        if (const auto* fe = json::find(*s, "fileErrors"); fe != nullptr && fe->IsArray())
            for (const auto& e : fe->GetArray())
                std::printf("file error:      %s: %s\n", json::opt_string(e, "file").value_or("?").c_str(),
                            json::opt_string(e, "message").value_or("?").c_str());
        // Kind-specific state (e.g. the Kubernetes source's server, connection, lag, resources).
        static const char* shown[] = {"kind", "path", "namespaces", "podObjects", "networkPolicies", "lastError", "fileErrors"};
        for (auto it = s->MemberBegin(); it != s->MemberEnd(); ++it) {
            std::string key = it->name.GetString();
            if (std::find(std::begin(shown), std::end(shown), key) != std::end(shown)) continue;
            std::string value = it->value.IsString() ? it->value.GetString() : json::to_string(it->value);
            if (value.size() > 200) value = value.substr(0, 200) + "...";
            std::printf("  %-14s %s\n", (key + ":").c_str(), value.c_str());
        }
    }
    if (const auto* pm = json::find(d, "policyMode"); pm != nullptr && pm->IsObject()) {
        // Audit mode (docs/policy.md): the node's default and the namespaces auditing.
        std::string list;
        if (const auto* an = json::find(*pm, "auditNamespaces"); an != nullptr && an->IsArray())
            for (const auto& n : an->GetArray())
                if (n.IsString()) list += (list.empty() ? "" : ", ") + std::string(n.GetString());
        std::printf("policy mode:     %s (node default); audit: %s\n",
                    json::opt_string(*pm, "default").value_or("?").c_str(), list.empty() ? "no namespace" : list.c_str());
        if (const auto* l = json::find(*pm, "labelled"); l != nullptr && l->IsObject())
            for (auto it = l->MemberBegin(); it != l->MemberEnd(); ++it)
                if (auto pr = json::opt_string(it->value, "problem"))
                    std::printf("policy mode:     namespace %s: %s\n", it->name.GetString(), pr->c_str());
    }
    if (const auto* dp = json::find(d, "datapath"); dp != nullptr && dp->IsObject()) {
        std::printf("datapath:        queue %s, %llu attachment(s) programmed, %llu table write(s), %llu set update(s), %llu connection(s) cut\n",
                    json::opt_string(*dp, "queueBackend").value_or("?").c_str(), num(*dp, "programmedAttachments"),
                    num(*dp, "tableWrites"), num(*dp, "setUpdates"), num(*dp, "cutConnections"));
        if (const auto* f = json::find(*dp, "failing"); f != nullptr && f->IsArray())
            for (const auto& e : f->GetArray())
                if (e.IsString()) std::printf("failing:         %s\n", e.GetString());
    }
    if (const auto* u = json::find(d, "unprotected"); u != nullptr && u->IsObject()) {
        // Pods on this node that never came through the CNI chain (docs/troubleshooting.md, "Unprotected pods").
        const auto* checked = json::find(*u, "checked");
        const auto* grace = json::find(*u, "graceSeconds");
        char g[32];
        std::snprintf(g, sizeof g, "%g", grace != nullptr && grace->IsNumber() ? grace->GetDouble() : 0.0);
        if (checked != nullptr && checked->IsBool() && !checked->GetBool())
            std::printf("unprotected:     not checked yet (the source has no complete snapshot)\n");
        else if (num(*u, "count") == 0)
            std::printf("unprotected:     none (grace %ss, %llu within it)\n", g, num(*u, "pending"));
        else
            std::printf("unprotected:     %llu pod(s) Running here that never came through the CNI chain: nothing is "
                        "enforced for them; delete them to have them recreated through it (grace %ss, %llu within it)\n",
                        num(*u, "count"), g, num(*u, "pending"));
        const int64_t now = static_cast<int64_t>(std::time(nullptr));
        if (const auto* pods = json::find(*u, "pods"); pods != nullptr && pods->IsArray())
            for (const auto& p : pods->GetArray()) {
                std::string ips;
                if (const auto* a = json::find(p, "ips"); a != nullptr && a->IsArray())
                    for (const auto& ip : a->GetArray())
                        if (ip.IsString()) ips += (ips.empty() ? "" : ",") + std::string(ip.GetString());
                const auto* since = json::find(p, "since");
                int64_t ago = since != nullptr && since->IsInt64() ? now - since->GetInt64() : 0;
                std::string event = json::opt_string(p, "event").value_or("?");
                std::string err = json::opt_string(p, "eventError").value_or("");
                std::printf("  %s/%s  %s  since %s (%llds ago)  event: %s%s\n",
                            json::opt_string(p, "namespace").value_or("?").c_str(),
                            json::opt_string(p, "name").value_or("?").c_str(), ips.empty() ? "<no IP>" : ips.c_str(),
                            json::opt_string(p, "sinceTime").value_or("?").c_str(), static_cast<long long>(ago),
                            event.c_str(), err.empty() ? "" : (" (" + err + ")").c_str());
            }
    }
    if (const auto* t = json::find(d, "startupTaint"); t != nullptr && t->IsObject()) {
        std::string state = json::opt_string(*t, "state").value_or("off");
        if (state != "off")
            std::printf("startup taint:   %s %s\n", json::opt_string(*t, "key").value_or("?").c_str(), state.c_str());
    }
    if (const auto* hs = json::find(d, "handshake"); hs != nullptr && hs->IsObject()) {
        const auto* c = json::find(*hs, "counters");
        const auto* q = json::find(*hs, "queue");
        const auto* dr = json::find(*hs, "drops");
        std::printf("handshake:       %s", json::opt_string(*hs, "mode").value_or("?").c_str());
        if (c != nullptr && c->IsObject())
            std::printf(", %llu segment(s), %llu connection(s) authenticated, %llu by address, %llu denied",
                        num(*c, "segments"), num(*c, "accepted_authenticated"), num(*c, "accepted_by_address"),
                        num(*c, "denied"));
        if (q != nullptr && q->IsObject()) std::printf(", %llu queue reader(s)", num(*q, "readers"));
        std::printf("\n");
        if (dr != nullptr && dr->IsObject()) {
            // Every place a segment can be dropped; "lost" must stay 0 (docs/handshake.md, "Drops").
            std::printf("handshake drops: %llu lost (kernel queue full %llu, socket full %llu, verdict errors %llu, "
                        "handler errors %llu, rewrites failed %llu, limits %llu, internal %llu, held for the proof %llu); "
                        "%llu refused, %llu denied by policy, %llu discarded after the client's reset\n",
                        num(*dr, "lost"), num(*dr, "kernel_queue_full"), num(*dr, "kernel_socket_full"),
                        num(*dr, "verdict_errors"), num(*dr, "handler_errors"), num(*dr, "rewrite_failed"),
                        num(*dr, "limits"), num(*dr, "internal"), num(*dr, "held_for_proof"),
                        num(*dr, "refused") + num(*dr, "malformed_messages"), num(*dr, "denied"), num(*dr, "discarded"));
        }
        if (const auto* r = json::find(*hs, "refused"); r != nullptr && r->IsObject())
            for (auto it = r->MemberBegin(); it != r->MemberEnd(); ++it)
                if (it->value.IsUint64())
                    std::printf("  refused %-22s %llu\n", (std::string(it->name.GetString()) + ":").c_str(),
                                static_cast<unsigned long long>(it->value.GetUint64()));
        if (q != nullptr && q->IsObject())
            if (const auto* e = json::find(*q, "errors"); e != nullptr && e->IsArray())
                for (const auto& x : e->GetArray())
                    std::printf("  no queue for %s: %s\n", json::opt_string(x, "pod").value_or("?").c_str(),
                                json::opt_string(x, "error").value_or("?").c_str());
    }
    return 0;
}

int cmd_pods(const Options& o) {
    auto doc = call(o, "GET", "/v1/pods");
    if (!doc) return std::fprintf(stderr, "signetctl: %s\n", doc.error().message.c_str()), 1;
    if (o.output == "json") return std::printf("%s\n", json::to_string(*doc, true).c_str()), 0;
    const auto* pods = json::find(*doc, "pods");
    if (pods == nullptr || !pods->IsArray()) return std::fprintf(stderr, "signetctl: bad answer from signetd\n"), 1;
    std::printf("%-16s %-24s %-14s %-6s %-20s %s\n", "NAMESPACE", "NAME", "CONTAINER", "IF", "IPS", "LABELS");
    for (const auto& p : pods->GetArray()) {
        std::string ips;
        if (const auto* a = json::find(p, "ips"); a != nullptr && a->IsArray())
            for (const auto& ip : a->GetArray())
                if (ip.IsString()) ips += (ips.empty() ? "" : ",") + std::string(ip.GetString());
        std::printf("%-16s %-24s %-14s %-6s %-20s %s\n", json::opt_string(p, "namespace").value_or("").c_str(),
                    json::opt_string(p, "name").value_or("").c_str(),
                    json::opt_string(p, "containerID").value_or("").substr(0, 12).c_str(),
                    json::opt_string(p, "ifname").value_or("").c_str(), ips.empty() ? "<none>" : ips.c_str(),
                    labels_text(p).c_str());
    }
    return 0;
}

// explain's exit status says the verdict, so that scripts can use it:
// 0 allowed; 3 denied (to a Service frontend: by at least one of its
// backends, since kube-proxy may pick any); 1 error, 2 usage.
constexpr int kExitDenied = 3;
constexpr int kExitUnknownVerdict = 1;

int explain_status(const rapidjson::Document& d) {
    const auto* allowed = json::find(d, "allowed");
    if (allowed == nullptr || !allowed->IsBool()) return kExitUnknownVerdict;
    bool ok = allowed->GetBool();
    if (const auto* svcs = json::find(d, "services"); svcs != nullptr && svcs->IsArray() && !svcs->Empty()) {
        ok = true;  // the frontend's own address verdict is not what the connection meets: its backends are
        for (const auto& svc : svcs->GetArray()) {
            const auto* backends = svc.IsObject() ? json::find(svc, "backends") : nullptr;
            if (backends == nullptr || !backends->IsArray() || backends->Empty()) {
                ok = false;  // no backend: the connection goes nowhere
                continue;
            }
            for (const auto& b : backends->GetArray()) {
                const auto* a = b.IsObject() ? json::find(b, "allowed") : nullptr;
                if (a == nullptr || !a->IsBool() || !a->GetBool()) ok = false;
            }
        }
    }
    return ok ? 0 : kExitDenied;
}

int cmd_explain(const Options& o) {
    if (o.from.empty() || o.to.empty() || o.port.empty())
        return usage_error("explain needs --from, --to and --port (e.g. --port 80/TCP)");
    for (auto p : {endpoint_problem("--from", o.from), endpoint_problem("--to", o.to)})
        if (!p.empty()) return usage_error(p);
    std::string port = o.port, proto = "TCP";
    if (size_t slash = port.find('/'); slash != std::string::npos) {
        proto = port.substr(slash + 1);
        port = port.substr(0, slash);
    }
    auto doc = call(o, "GET", "/v1/explain?from=" + http::percent_encode(o.from) + "&to=" + http::percent_encode(o.to) +
                                  "&port=" + http::percent_encode(port) + "&protocol=" + http::percent_encode(proto));
    if (!doc) return std::fprintf(stderr, "signetctl: %s\n", doc.error().message.c_str()), 1;
    const int status = explain_status(*doc);
    if (status == kExitUnknownVerdict)
        std::fprintf(stderr, "signetctl: signetd's answer carries no verdict (\"allowed\")\n");
    if (o.output == "json") {
        doc->RemoveMember("text");
        return std::printf("%s\n", json::to_string(*doc, true).c_str()), status;
    }
    std::printf("%s", json::opt_string(*doc, "text").value_or("").c_str());
    return status;
}

int cmd_policies(const Options& o) {
    if (o.args.size() != 1 || o.args[0].find('/') == std::string::npos)
        return usage_error("policies needs one NAMESPACE/POD");
    const std::string& pod = o.args[0];
    if (auto p = pod_ref_problem("policies", pod); !p.empty()) return usage_error(p);
    std::string ns = pod.substr(0, pod.find('/')), name = pod.substr(pod.find('/') + 1);
    auto doc = call(o, "GET", "/v1/policies/" + http::percent_encode(ns) + "/" + http::percent_encode(name));
    if (!doc) return std::fprintf(stderr, "signetctl: %s\n", doc.error().message.c_str()), 1;
    if (o.output == "json") return std::printf("%s\n", json::to_string(*doc, true).c_str()), 0;
    const auto& d = *doc;
    const auto* local = json::find(d, "local");
    std::printf("pod %s%s\n", pod.c_str(), local != nullptr && local->IsBool() && local->GetBool() ? " (on this node)" : " (not on this node: rules it would get)");
    for (const char* dir : {"ingress", "egress"}) {
        const auto* v = json::find(d, dir);
        if (v == nullptr || !v->IsObject()) continue;
        const auto* iso = json::find(*v, "isolated");
        bool isolated = iso != nullptr && iso->IsBool() && iso->GetBool();
        std::printf("\n%s: %s\n", dir, isolated ? "isolated (default deny; only the rules below allow)" : "not isolated (everything allowed)");
        if (const auto* p = json::find(*v, "policies"); p != nullptr && p->IsArray() && p->Size() > 0) {
            std::printf("  policies:");
            for (const auto& x : p->GetArray()) std::printf(" %s", x.IsString() ? x.GetString() : "?");
            std::printf("\n");
        }
        if (const auto* r = json::find(*v, "rules"); r != nullptr && r->IsArray()) {
            for (const auto& rule : r->GetArray()) {
                const auto* idx = json::find(rule, "rule");
                const auto* pk = json::find(rule, "packets");
                std::printf("  allow  %s rule %d: %s %s, ports %s", json::opt_string(rule, "policy").value_or("?").c_str(),
                            idx != nullptr && idx->IsInt() ? idx->GetInt() : -1, std::strcmp(dir, "ingress") == 0 ? "from" : "to",
                            json::opt_string(rule, "peers").value_or("?").c_str(), json::opt_string(rule, "ports").value_or("?").c_str());
                if (pk != nullptr && pk->IsUint64()) std::printf("  [%llu packets]", static_cast<unsigned long long>(pk->GetUint64()));
                std::printf("\n");
            }
        }
        const bool audit = json::opt_string(d, "policyMode").value_or("") == "audit";
        if (const auto* dp = json::find(*v, "deniedPackets"); dp != nullptr && dp->IsUint64() && isolated && !audit)
            std::printf("  deny   everything else  [%llu packets denied]\n", static_cast<unsigned long long>(dp->GetUint64()));
        if (const auto* ap = json::find(*v, "auditDeniedPackets"); ap != nullptr && ap->IsUint64() && isolated && audit)
            std::printf("  audit  everything else: allowed and recorded (audit mode)  [%llu packets audit-denied]\n",
                        static_cast<unsigned long long>(ap->GetUint64()));
    }
    if (const auto* c = json::find(d, "cutConnections"); c != nullptr && c->IsUint64() && c->GetUint64() > 0)
        std::printf("\nconnections cut after policy changes: %llu\n", static_cast<unsigned long long>(c->GetUint64()));
    if (auto e = json::opt_string(d, "error"); e && !e->empty()) std::printf("\nprogramming error: %s\n", e->c_str());
    return 0;
}

std::string human_bytes(uint64_t b) {
    char buf[32];
    if (b < 1024) std::snprintf(buf, sizeof buf, "%lluB", static_cast<unsigned long long>(b));
    else if (b < 1024 * 1024) std::snprintf(buf, sizeof buf, "%.1fK", static_cast<double>(b) / 1024);
    else if (b < 1024ull * 1024 * 1024) std::snprintf(buf, sizeof buf, "%.1fM", static_cast<double>(b) / 1048576);
    else std::snprintf(buf, sizeof buf, "%.1fG", static_cast<double>(b) / 1073741824);
    return buf;
}

std::string proto_text(int p) {
    switch (p) {
        case 6: return "TCP";
        case 17: return "UDP";
        case 132: return "SCTP";
        case 1: return "ICMP";
        case 58: return "ICMPv6";
        default: return std::to_string(p);
    }
}

void print_flow(const rapidjson::Value& f) {
    auto str = [&](const char* k) { return json::opt_string(f, k).value_or(""); };
    auto num = [&](const rapidjson::Value& v, const char* k) -> uint64_t {
        const auto* x = json::find(v, k);
        return x != nullptr && x->IsUint64() ? x->GetUint64() : 0;
    };
    std::string peer = "?";
    if (const auto* p = json::find(f, "peer"); p != nullptr && p->IsObject()) {
        std::string kind = json::opt_string(*p, "kind").value_or("");
        peer = kind == "pod" ? json::opt_string(*p, "pod").value_or("?")
               : kind == "node" ? "node (" + json::opt_string(*p, "address").value_or("") + ")"
                                : json::opt_string(*p, "address").value_or("?");
    }
    bool ingress = str("direction") == "ingress";
    std::string local = str("pod");
    std::string flow = ingress ? peer + " -> " + local : local + " -> " + peer;
    std::string port = proto_text(static_cast<int>(num(f, "proto"))) + "/" + std::to_string(num(f, "port"));
    std::string bytes = "-";
    if (str("event") == "close") {
        if (const auto* c = json::find(f, "counts"); c != nullptr)
            bytes = human_bytes(num(*c, "bytesOut")) + " out, " + human_bytes(num(*c, "bytesIn")) + " in";
    }
    std::string policy = str("policy");
    if (const auto* r = json::find(f, "rule"); r != nullptr && r->IsInt() && r->GetInt() >= 0)
        policy += "#" + std::to_string(r->GetInt());
    const auto* auth = json::find(f, "authenticated");
    std::string time = str("time");
    if (time.size() > 19) time = time.substr(11, 12);  // HH:MM:SS.mmm
    std::printf("%-12s %-6s %-7s %-7s %-44s %-9s %-28s %-4s %s\n", time.c_str(), str("event").c_str(),
                ingress ? "in" : "out", str("verdict").c_str(), flow.c_str(), port.c_str(), policy.c_str(),
                auth != nullptr && auth->IsBool() && auth->GetBool() ? "yes" : "no", bytes.c_str());
}

int cmd_flows(const Options& o) {
    if (!o.verdict.empty() && o.verdict != "allowed" && o.verdict != "denied" && o.verdict != "audit-denied")
        return usage_error("--verdict takes allowed, denied or audit-denied");
    char* end = nullptr;
    unsigned long limit = std::strtoul(o.limit.c_str(), &end, 10);
    if (o.limit.empty() || *end != '\0' || limit == 0 || limit > 10000) return usage_error("--limit takes 1..10000");
    std::string query = "limit=" + std::to_string(limit);
    if (!o.ns.empty())
        if (auto p = api::namespace_problem(o.ns); !p.empty()) return usage_error("--namespace: " + p);
    if (!o.pod.empty())
        if (auto p = pod_ref_problem("--pod", o.pod); !p.empty()) return usage_error(p);
    if (!o.ns.empty()) query += "&namespace=" + http::percent_encode(o.ns);
    if (!o.pod.empty()) query += "&pod=" + http::percent_encode(o.pod);
    if (!o.verdict.empty()) query += "&verdict=" + o.verdict;
    uint64_t after = 0;
    bool header = false;
    while (true) {
        auto doc = call(o, "GET", "/v1/flows?" + query + "&after=" + std::to_string(after));
        if (!doc) return std::fprintf(stderr, "signetctl: %s\n", doc.error().message.c_str()), 1;
        const auto* list = json::find(*doc, "flows");
        if (list == nullptr || !list->IsArray()) return std::fprintf(stderr, "signetctl: bad answer from signetd\n"), 1;
        if (const auto* ls = json::find(*doc, "lastSeq"); ls != nullptr && ls->IsUint64()) after = ls->GetUint64();
        if (o.output == "json") {
            if (!o.follow) return std::printf("%s\n", json::to_string(*doc, true).c_str()), 0;
            for (const auto& f : list->GetArray()) std::printf("%s\n", json::to_string(f).c_str());
        } else {
            if (!header) {
                std::printf("%-12s %-6s %-7s %-7s %-44s %-9s %-28s %-4s %s\n", "TIME", "EVENT", "DIR", "VERDICT",
                            "FLOW", "PORT", "POLICY", "AUTH", "BYTES");
                header = true;
            }
            for (const auto& f : list->GetArray()) print_flow(f);
        }
        std::fflush(stdout);
        if (!o.follow) return 0;
        struct timespec ts{1, 0};
        nanosleep(&ts, nullptr);
    }
}

// log-level [LEVEL]: prints signetd's log level, or sets it (root).
int cmd_log_level(const Options& o) {
    if (o.args.size() > 1) return usage_error("log-level takes at most one LEVEL (debug, info, warn, error)");
    Result<rapidjson::Document> doc = make_error(1, "");
    if (o.args.empty()) {
        doc = call(o, "GET", "/v1/log-level");
    } else {
        log::Level level;
        if (!log::parse_level(o.args[0], &level))
            return usage_error("log-level: '" + o.args[0] + "' is not one of debug, info, warn, error");
        doc = call(o, "PUT", "/v1/log-level", 0, std::string("{\"level\":\"") + log::to_string(level) + "\"}");
    }
    if (!doc) return std::fprintf(stderr, "signetctl: %s\n", doc.error().message.c_str()), 1;
    if (o.output == "json") return std::printf("%s\n", json::to_string(*doc, true).c_str()), 0;
    const std::string now = json::opt_string(*doc, "level").value_or("?");
    if (auto before = json::opt_string(*doc, "previous"))
        std::printf("log level %s (was %s)\n", now.c_str(), before->c_str());
    else
        std::printf("log level %s\n", now.c_str());
    return 0;
}

int cmd_sync(const Options& o) {
    // signetd enforces the timeout; the socket call gets a little longer so its answer arrives.
    auto doc = call(o, "POST", "/v1/sync?timeout=" + std::to_string(o.timeout_ms) + "ms", 2000);
    if (!doc) return std::fprintf(stderr, "signetctl: sync failed: %s\n", doc.error().message.c_str()), 1;
    const auto* src = json::find(*doc, "source");
    if (const auto* fe = src != nullptr ? json::find(*src, "fileErrors") : nullptr; fe != nullptr && fe->IsArray())
        for (const auto& e : fe->GetArray())
            std::fprintf(stderr, "signetctl: warning: %s: %s (its last good objects are in force)\n",
                         json::opt_string(e, "file").value_or("?").c_str(),
                         json::opt_string(e, "message").value_or("?").c_str());
    if (o.output == "json") return std::printf("%s\n", json::to_string(*doc, true).c_str()), 0;
    const auto* v = json::find(*doc, "appliedVersion");
    std::printf("applied version %llu\n", v != nullptr && v->IsUint64() ? static_cast<unsigned long long>(v->GetUint64()) : 0ULL);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    // `authority` has its own flags: everything after it is its own.
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "authority") return signet::ctl::authority_command(std::vector<std::string>(argv + i + 1, argv + argc));
        if (a == "--socket" || a == "-o" || a == "--output" || a == "--timeout") {
            ++i;
            continue;
        }
        if (a.empty() || a[0] != '-') break;  // another command
    }
    Options o;
    if (const char* s = std::getenv("SIGNET_SOCKET"); s != nullptr && *s != '\0') o.socket = s;
    std::string command;
    signet::Args args(argc, argv);
    while (args.next()) {
        const std::string arg = args.arg();
        auto need = [&](std::string* out) { return args.value(out); };
        if (arg == "-h" || arg == "--help" || arg == "help") {
            std::fputs(kUsage, stdout);
            return 0;
        } else if (arg == "--socket") {
            if (!need(&o.socket)) return usage_error("--socket needs a value");
        } else if (arg == "-o" || arg == "--output") {
            if (!need(&o.output) || (o.output != "json" && o.output != "text"))
                return usage_error("--output takes text or json");
        } else if (arg == "--timeout") {
            if (!need(&o.timeout) || !parse_duration_ms(o.timeout, &o.timeout_ms))
                return usage_error("--timeout takes a duration such as 500ms, 10s or 2m (at most 1h)");
        } else if (arg == "--from") {
            if (!need(&o.from)) return usage_error("--from needs NAMESPACE/POD or an IP");
        } else if (arg == "--to") {
            if (!need(&o.to)) return usage_error("--to needs NAMESPACE/POD or an IP");
        } else if (arg == "--port") {
            if (!need(&o.port)) return usage_error("--port needs PORT or PORT/PROTOCOL");
        } else if (arg == "--namespace" || arg == "-n") {
            if (!need(&o.ns)) return usage_error("--namespace needs a value");
        } else if (arg == "--pod") {
            if (!need(&o.pod)) return usage_error("--pod needs NAMESPACE/POD");
        } else if (arg == "--verdict") {
            if (!need(&o.verdict)) return usage_error("--verdict takes allowed or denied");
        } else if (arg == "--limit") {
            if (!need(&o.limit)) return usage_error("--limit needs a number");
        } else if (arg == "--follow" || arg == "-f") {
            o.follow = true;
        } else if (!arg.empty() && arg[0] == '-') {
            return usage_error("unknown flag '" + arg + "'");
        } else if (command.empty()) {
            command = arg;
        } else {
            o.args.push_back(arg);
        }
    }
    if (command.empty()) return usage_error("no command given");
    if (command != "policies" && command != "log-level" && !o.args.empty())
        return usage_error("unexpected argument '" + o.args[0] + "'");
    if (command == "status") return cmd_status(o);
    if (command == "pods") return cmd_pods(o);
    if (command == "sync") return cmd_sync(o);
    if (command == "log-level") return cmd_log_level(o);
    if (command == "explain") return cmd_explain(o);
    if (command == "policies") return cmd_policies(o);
    if (command == "flows") return cmd_flows(o);
    if (command == "version") return std::printf("signetctl %s\n", SIGNET_VERSION), 0;
    return usage_error("unknown command '" + command + "'");
}
