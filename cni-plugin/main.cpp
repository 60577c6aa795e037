// signet: the chained CNI plugin. It registers the pod's network namespace
// with signetd over its unix socket and passes prevResult through.
// Exit status 0 on success; on failure the spec's error JSON on stdout.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "cni.h"
#include "signet/api.h"
#include "signet/http_client.h"
#include "signet/json.h"

namespace {

using namespace signet;

constexpr int kShortTimeoutMs = 3000;  // DEL, CHECK, STATUS, GC: never hang a runtime

int fail(std::string_view version, int code, std::string_view msg, std::string_view details = {}) {
    std::string out = cni::error_json(version, code, msg, details);
    out += '\n';
    std::fwrite(out.data(), 1, out.size(), stdout);
    std::fflush(stdout);
    return 1;
}

int fail(std::string_view version, const Error& e) { return fail(version, e.code, e.message, e.details); }

Result<std::string> read_stdin() {
    std::string in;
    char buf[65536];
    for (;;) {
        ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR) continue;
            return make_error(cni::kIoFailure, "cannot read the network configuration from stdin");
        }
        if (n == 0) break;
        in.append(buf, static_cast<size_t>(n));
        if (in.size() > (16u << 20)) return make_error(cni::kDecodeFailure, "network configuration larger than 16 MiB");
    }
    return in;
}

// Maps a transport failure to the CNI code for the command.
Error transport_error(const Error& e, int unreachable_code) {
    if (e.code == http::kUnreachable) return make_error(unreachable_code, "signetd is not reachable", e.message);
    if (e.code == http::kTimeout) return make_error(cni::kControllerTimeout, "signetd did not answer in time", e.message);
    return make_error(cni::kControllerProtocol, "bad answer from signetd", e.message);
}

// The controller's error body is {"error": "..."}; fall back to the raw text.
std::string controller_message(const http::Response& r) {
    auto doc = json::parse(r.body);
    if (doc && doc->IsObject())
        if (auto m = json::opt_string(*doc, "error")) return *m;
    return r.body.substr(0, 512);
}

// The CNI code signetd chose for a refusal of a value from the runtime's
// environment (a netns that is not a pod's, an invalid pod name: 4), else `fallback`.
int controller_code(const http::Response& r, int fallback) {
    if (r.status / 100 != 4) return fallback;
    auto doc = json::parse(r.body);
    if (!doc || !doc->IsObject()) return fallback;
    const auto* c = json::find(*doc, api::kCniCodeField);
    if (c == nullptr || !c->IsInt() || c->GetInt() < 1 || c->GetInt() > 99) return fallback;  // the spec's own codes
    return c->GetInt();
}

std::string attachment_path(const cni::Env& env) {
    return "/v1/pods/" + http::percent_encode(env.container_id) + "/" + http::percent_encode(env.ifname);
}

int cmd_add(const cni::Env& env, const cni::Config& cfg) {
    if (cfg.prev_result == nullptr)
        return fail(cfg.cni_version, cni::kInvalidConfig, "signet must be chained after a network plugin: prevResult is missing");
    auto out = cni::passthrough(cfg);
    if (!out) return fail(cfg.cni_version, out.error());
    auto reg = cni::make_registration(env, cfg);
    if (!reg) return fail(cfg.cni_version, reg.error());
    rapidjson::Document body;
    api::to_json(*reg, body, body.GetAllocator());
    auto resp = http::request(cfg.socket, "POST", "/v1/pods", json::to_string(body), cfg.timeout_ms);
    if (!resp) return fail(cfg.cni_version, transport_error(resp.error(), cni::kTryAgainLater));
    if (resp->status == 503) return fail(cfg.cni_version, cni::kTryAgainLater, "signetd is not ready", controller_message(*resp));
    if (resp->status / 100 != 2)
        return fail(cfg.cni_version, controller_code(*resp, cni::kControllerRefused), "signetd refused the pod registration",
                    controller_message(*resp));
    std::string text = std::move(*out);
    text += '\n';
    std::fwrite(text.data(), 1, text.size(), stdout);
    return 0;
}

int cmd_del(const cni::Env& env, const cni::Config& cfg) {
    auto resp = http::request(cfg.socket, "DELETE", attachment_path(env), {}, kShortTimeoutMs);
    if (!resp) {
        // Idempotent: with signetd down (or stuck) the registration is dropped
        // later, when signetd sees that the netns is gone.
        std::fprintf(stderr, "signet: DEL: %s; signetd will drop the registration when it finds the netns gone\n",
                     resp.error().message.c_str());
        return 0;
    }
    if (resp->status / 100 == 2 || resp->status == 404) return 0;
    return fail(cfg.cni_version, cni::kControllerRefused, "signetd refused to remove the pod", controller_message(*resp));
}

int cmd_check(const cni::Env& env, const cni::Config& cfg) {
    if (cfg.prev_result == nullptr) return fail(cfg.cni_version, cni::kInvalidConfig, "CHECK needs prevResult");
    auto want = cni::make_registration(env, cfg);
    if (!want) return fail(cfg.cni_version, want.error());
    auto resp = http::request(cfg.socket, "GET", attachment_path(env), {}, kShortTimeoutMs);
    if (!resp) return fail(cfg.cni_version, transport_error(resp.error(), cni::kTryAgainLater));
    if (resp->status == 404)
        return fail(cfg.cni_version, cni::kRegistrationMissing, "signetd has no registration for this attachment",
                    api::key(env.container_id, env.ifname));
    if (resp->status / 100 != 2)
        return fail(cfg.cni_version, cni::kControllerRefused, "signetd refused CHECK", controller_message(*resp));
    auto doc = json::parse(resp->body);
    if (!doc) return fail(cfg.cni_version, cni::kControllerProtocol, "bad answer from signetd", doc.error().message);
    auto have = api::record_from_json(*doc);
    if (!have) return fail(cfg.cni_version, cni::kControllerProtocol, "bad answer from signetd", have.error().message);
    if (have->reg.netns != want->netns)
        return fail(cfg.cni_version, cni::kRegistrationMissing, "registered netns differs",
                    "registered " + have->reg.netns + ", expected " + want->netns);
    if (have->reg.ips != want->ips)
        return fail(cfg.cni_version, cni::kRegistrationMissing, "registered IP addresses differ from prevResult");
    return 0;
}

int cmd_status(const cni::Config& cfg) {
    auto resp = http::request(cfg.socket, "GET", "/readyz", {}, kShortTimeoutMs);
    if (!resp) return fail(cfg.cni_version, cni::kNotAvailable, "signetd is not available", resp.error().message);
    if (resp->status != 200) return fail(cfg.cni_version, cni::kNotAvailable, "signetd is not ready", controller_message(*resp));
    return 0;
}

int cmd_gc(const cni::Config& cfg) {
    if (!cfg.has_valid_attachments)
        return fail(cfg.cni_version, cni::kInvalidConfig, "GC needs cni.dev/valid-attachments");
    api::GcRequest req;
    req.network = cfg.name;
    req.valid = cfg.valid_attachments;
    rapidjson::Document body;
    api::to_json(req, body, body.GetAllocator());
    auto resp = http::request(cfg.socket, "POST", "/v1/gc", json::to_string(body), kShortTimeoutMs);
    if (!resp) return fail(cfg.cni_version, transport_error(resp.error(), cni::kTryAgainLater));
    if (resp->status / 100 != 2)
        return fail(cfg.cni_version, cni::kControllerRefused, "signetd refused GC", controller_message(*resp));
    return 0;
}

}  // namespace

int main() {
    auto env = cni::parse_env([](const char* k) { return std::getenv(k); });
    if (!env) return fail(cni::kLatestVersion, env.error());

    auto input = read_stdin();
    if (!input) return fail(cni::kLatestVersion, input.error());

    if (env->command == cni::Command::version) {
        // The runtime sends {"cniVersion": "..."}; answer in that version when we know it.
        std::string requested = cni::kLatestVersion;
        if (auto doc = json::parse(*input); doc && doc->IsObject())
            if (auto v = json::opt_string(*doc, "cniVersion")) requested = *v;
        std::string out = cni::version_json(requested) + "\n";
        std::fwrite(out.data(), 1, out.size(), stdout);
        return 0;
    }

    auto cfg = cni::parse_config(*input);
    if (!cfg) return fail(cni::kLatestVersion, cfg.error());

    switch (env->command) {
        case cni::Command::add: return cmd_add(*env, *cfg);
        case cni::Command::del: return cmd_del(*env, *cfg);
        case cni::Command::check:
            if (cni::compare_versions(cfg->cni_version, "0.4.0") < 0)
                return fail(cfg->cni_version, cni::kIncompatibleVersion, "CHECK needs cniVersion 0.4.0 or later");
            return cmd_check(*env, *cfg);
        case cni::Command::status:
        case cni::Command::gc:
            if (cni::compare_versions(cfg->cni_version, "1.1.0") < 0)
                return fail(cfg->cni_version, cni::kIncompatibleVersion,
                            std::string(env->command == cni::Command::gc ? "GC" : "STATUS") + " needs cniVersion 1.1.0");
            return env->command == cni::Command::gc ? cmd_gc(*cfg) : cmd_status(*cfg);
        case cni::Command::version: break;
    }
    return 0;
}
