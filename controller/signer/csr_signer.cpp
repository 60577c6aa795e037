#include "signer/csr_signer.h"

#include <openssl/crypto.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <csignal>
#include <cstring>
#include <ctime>
#include <thread>

#include "identity/crypto.h"
#include "identity/csr_policy.h"
#include "metrics/http_listener.h"
#include "signet/json.h"
#include "signet/log.h"

namespace signet::signer {

using rapidjson::Value;
namespace csr = identity::csr;

namespace {

constexpr const char* kLog = "csr-signer";
constexpr const char* kCsrPath = "/apis/certificates.k8s.io/v1/certificatesigningrequests";

std::string now_rfc3339() {
    std::time_t t = std::time(nullptr);
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

// A copy of `obj` as a full CertificateSigningRequest (list items carry no kind).
rapidjson::Document full_object(const Value& obj) {
    rapidjson::Document d;
    d.CopyFrom(obj, d.GetAllocator());
    auto& a = d.GetAllocator();
    if (!d.HasMember("kind")) d.AddMember("kind", "CertificateSigningRequest", a);
    if (!d.HasMember("apiVersion")) d.AddMember("apiVersion", "certificates.k8s.io/v1", a);
    return d;
}

void add_condition(rapidjson::Document& d, const char* type, const std::string& reason, const std::string& message) {
    auto& a = d.GetAllocator();
    if (!d.HasMember("status") || !d["status"].IsObject()) {
        d.RemoveMember("status");
        d.AddMember("status", Value(rapidjson::kObjectType), a);
    }
    Value& st = d["status"];
    if (!st.HasMember("conditions") || !st["conditions"].IsArray()) {
        st.RemoveMember("conditions");
        st.AddMember("conditions", Value(rapidjson::kArrayType), a);
    }
    Value c(rapidjson::kObjectType);
    const std::string now = now_rfc3339();
    c.AddMember("type", Value(type, a), a);
    c.AddMember("status", "True", a);
    c.AddMember("reason", json::str(reason, a), a);
    c.AddMember("message", json::str(message, a), a);
    c.AddMember("lastUpdateTime", json::str(now, a), a);
    c.AddMember("lastTransitionTime", json::str(now, a), a);
    st["conditions"].PushBack(c, a);
}

}  // namespace

Result<std::unique_ptr<CsrSigner>> CsrSigner::create(CsrSignerOptions opts) {
    auto [ns, name] = split_ref(opts.ca_secret, "signet-system");
    if (ns.empty() || name.empty()) return make_error(EINVAL, "--ca-secret takes NAMESPACE/NAME");
    auto api = kube::KubeClient::create(opts.kubeconfig, opts.in_cluster);
    if (!api) return api.error();
    auto watch_api = (*api)->another();
    return with_api(std::move(opts), std::move(*api), std::move(watch_api));
}

std::unique_ptr<CsrSigner> CsrSigner::with_api(CsrSignerOptions opts, std::unique_ptr<kube::Api> api,
                                               std::unique_ptr<kube::Api> watch_api) {
    std::unique_ptr<CsrSigner> s(new CsrSigner(std::move(opts)));
    s->api_ = std::move(api);
    s->watch_api_ = std::move(watch_api);
    kube::ReflectorOptions ro;
    ro.what = "certificatesigningrequests";
    ro.path = kCsrPath;
    ro.page_size = 500;
    ro.watch_timeout = s->opts_.watch_timeout;
    ro.backoff_initial = s->opts_.backoff_initial;
    ro.backoff_max = s->opts_.backoff_max;
    kube::ReflectorHandler& handler = *s;  // a private base: converted here, where it is accessible
    s->reflector_ = std::make_unique<kube::Reflector>(std::move(ro), *s->watch_api_, handler);
    return s;
}

CsrSigner::CsrSigner(CsrSignerOptions opts) : opts_(std::move(opts)) {}

void CsrSigner::stop() {
    if (reflector_) reflector_->stop();
    if (api_) api_->stop();
}

void CsrSigner::retry_soon() { reflector_->relist(std::chrono::seconds(1)); }

Result<kube::Response> CsrSigner::call(const std::string& method, const std::string& path, const std::string& body) {
    kube::Request r;
    r.method = method;
    r.path = path;
    r.body = body;
    return api_->call(r);
}

CsrSigner::Stats CsrSigner::stats() const {
    std::lock_guard lk(mu_);
    return stats_;
}

void CsrSigner::note_error(const std::string& what) {
    if (what != last_error_) log::error(kLog, what);
    last_error_ = what;
}

Status CsrSigner::load_ca() {
    auto [ns, name] = split_ref(opts_.ca_secret, "signet-system");
    const std::string what = "the CA Secret " + ns + "/" + name;
    auto r = call("GET", "/api/v1/namespaces/" + ns + "/secrets/" + name);
    if (!r) return make_error(r.error().code, what + ": " + r.error().message);
    if (r->status != 200) return make_error(EIO, what + ": " + r->describe());
    auto doc = json::parse(r->body);
    // The Secret holds the CA key: its text is wiped, never logged.
    struct Wipe {
        std::string& s;
        ~Wipe() { OPENSSL_cleanse(s.data(), s.size()); }
    } wipe_body{r->body};
    if (!doc || !doc->IsObject()) return make_error(EINVAL, what + ": not a JSON object");
    const Value* data = json::find(*doc, "data");
    if (!data || !data->IsObject()) return make_error(EINVAL, what + " has no data");
    auto field = [&](const std::string& key) -> std::optional<std::string> {
        const Value* v = json::find(*data, key.c_str());
        if (!v || !v->IsString()) return std::nullopt;
        return csr::base64_decode(std::string_view(v->GetString(), v->GetStringLength()));
    };
    auto key = field(opts_.ca_key_key);
    auto crt = field(opts_.ca_cert_key);
    if (!key || !crt) {
        if (key) OPENSSL_cleanse(key->data(), key->size());
        return make_error(EINVAL, what + " needs base64 keys " + opts_.ca_key_key + " and " + opts_.ca_cert_key);
    }
    auto bundle = field("trust-bundle.pem");
    auto ca = identity::Authority::from_pem(*key, *crt, bundle ? *bundle : std::string());
    const std::string bundle_pem = bundle && !bundle->empty() ? *bundle : *crt;
    OPENSSL_cleanse(key->data(), key->size());
    // Wipe the parsed document's copy of the key too.
    if (Value* v = const_cast<Value*>(json::find(*data, opts_.ca_key_key.c_str())); v && v->IsString())
        OPENSSL_cleanse(const_cast<char*>(v->GetString()), v->GetStringLength());
    if (!ca) return make_error(ca.error().code, what + ": " + ca.error().message);
    std::string fp = identity::hex(identity::fingerprint(ca->certificate()));
    if (fp != ca_fingerprint_)
        log::info(kLog, "signing signet.dev/node certificates for trust domain " + ca->trust_domain() +
                            " with the CA from " + ns + "/" + name + " (certificate " + fp.substr(0, 16) + ")");
    ca_fingerprint_ = fp;
    ca_.emplace(std::move(*ca));
    publish_bundle(bundle_pem);
    return {};
}

void CsrSigner::publish_bundle(const std::string& pem) {
    if (opts_.trust_bundle_configmap.empty() || pem == published_bundle_) return;
    auto [ns, name] = split_ref(opts_.trust_bundle_configmap, "signet-system");
    const std::string what = "the trust bundle ConfigMap " + ns + "/" + name;
    const std::string path = "/api/v1/namespaces/" + ns + "/configmaps";
    auto r = call("GET", path + "/" + name);
    if (!r) return note_error(what + ": " + r.error().message);
    rapidjson::Document d;
    auto& a = d.GetAllocator();
    if (r->status == 404) {
        d.SetObject();
        d.AddMember("apiVersion", "v1", a);
        d.AddMember("kind", "ConfigMap", a);
        Value md(rapidjson::kObjectType), labels(rapidjson::kObjectType), data(rapidjson::kObjectType);
        md.AddMember("name", json::str(name, a), a);
        md.AddMember("namespace", json::str(ns, a), a);
        labels.AddMember("app.kubernetes.io/name", "signet", a);
        labels.AddMember("app.kubernetes.io/component", "signer", a);
        md.AddMember("labels", labels, a);
        d.AddMember("metadata", md, a);
        data.AddMember(json::str(opts_.trust_bundle_key, a), json::str(pem, a), a);
        d.AddMember("data", data, a);
        auto w = call("POST", path, json::to_string(d));
        if (!w) return note_error("creating " + what + ": " + w.error().message);
        if (w->status != 201 && w->status != 200) return note_error("creating " + what + ": " + w->describe());
        log::info(kLog, "created " + what + " (key " + opts_.trust_bundle_key + ") from the CA Secret");
        published_bundle_ = pem;
        return;
    }
    if (r->status != 200) return note_error(what + ": " + r->describe());
    auto doc = json::parse(r->body);
    if (!doc || !doc->IsObject()) return note_error(what + ": not a JSON object");
    d.CopyFrom(*doc, a);
    if (!d.HasMember("data") || !d["data"].IsObject()) {
        d.RemoveMember("data");
        d.AddMember("data", Value(rapidjson::kObjectType), a);
    }
    Value& data = d["data"];
    if (const Value* cur = json::find(data, opts_.trust_bundle_key.c_str());
        cur && cur->IsString() && std::string_view(cur->GetString(), cur->GetStringLength()) == pem) {
        published_bundle_ = pem;  // already right
        return;
    }
    data.RemoveMember(opts_.trust_bundle_key.c_str());
    data.AddMember(json::str(opts_.trust_bundle_key, a), json::str(pem, a), a);
    // metadata.resourceVersion stays: a concurrent change makes this a 409,
    // and the next relist looks again.
    auto w = call("PUT", path + "/" + name, json::to_string(d));
    if (!w) return note_error("updating " + what + ": " + w.error().message);
    if (w->status != 200) return note_error("updating " + what + ": " + w->describe());
    log::info(kLog, "updated " + what + " (key " + opts_.trust_bundle_key + ") from the CA Secret");
    published_bundle_ = pem;
}

void CsrSigner::run() {
    log::info(kLog, "CSR signer for signerName " + std::string(csr::kSignerName) + " against " + api_->server());
    reflector_->run();
}

Status CsrSigner::on_list_start() {
    if (auto st = load_ca(); !st) {
        if (!ca_ || st.error().code == ECANCELED) return st;
        note_error(st.error().message + " (keeping the CA loaded before)");
    }
    return {};
}

bool CsrSigner::on_list_item(const Value& obj, size_t) {
    handle(obj);  // counts and logs malformed objects itself
    return true;
}

void CsrSigner::on_listed(const std::string&) { ready_ = true; }

Result<bool> CsrSigner::on_event(const kube::WatchEvent& ev, const std::string&) {
    if (ev.type == kube::WatchEvent::Added || ev.type == kube::WatchEvent::Modified) handle(*ev.object);
    return true;
}

void CsrSigner::report(const std::string& msg) {
    if (msg == "API reachable again") {
        log::info(kLog, "the API is reachable again");
        last_error_.clear();
        return;
    }
    note_error(msg);
}

Result<kube::Response> CsrSigner::put(const std::string& name, const char* sub, const Value& obj) {
    return call("PUT", std::string(kCsrPath) + "/" + name + "/" + sub, json::to_string(obj));
}

void CsrSigner::handle(const Value& obj) {
    auto c = csr::parse_csr_object(obj);
    if (!c) {
        std::lock_guard lk(mu_);
        ++stats_.malformed;
        log::warn(kLog, "skipping a malformed CertificateSigningRequest object: " + c.error().message);
        return;
    }
    if (!c->uid.empty() && done_uids_.count(c->uid)) return;  // a stale event of one already handled
    std::vector<std::string> agents;
    for (const auto& sa : opts_.node_agent_service_accounts) {
        auto [ns, name] = split_ref(sa, "signet-system");
        agents.push_back("system:serviceaccount:" + ns + ":" + name);
    }
    auto v = csr::decide(*c, ca_->trust_domain(), agents);
    switch (v.action) {
        case csr::Action::Ignore:
        case csr::Action::Done:
            log::debug(kLog, "CertificateSigningRequest " + c->name + ": " + v.message);
            return;
        case csr::Action::Deny:
            if (!c->malformed.empty()) {
                std::lock_guard lk(mu_);
                ++stats_.malformed;
            }
            return deny(obj, c->name, v.reason, v.message, c->approved);
        case csr::Action::CheckNode:
            break;
    }
    auto r = call("GET", "/api/v1/nodes/" + v.node);
    if (!r) {
        if (r.error().code != ECANCELED) note_error("checking Node " + v.node + " for CertificateSigningRequest " + c->name + ": " + r.error().message);
        retry_soon();
        return;
    }
    if (r->status != 200 && r->status != 404) {
        note_error("checking Node " + v.node + " for CertificateSigningRequest " + c->name + ": " + r->describe());
        retry_soon();
        return;
    }
    v = csr::with_node(std::move(v), r->status == 200);
    if (v.action == csr::Action::Deny) return deny(obj, c->name, v.reason, v.message, c->approved);
    approve_and_sign(obj, c->name, c->uid, v.node, c->approved, c->request_pem, csr::granted_seconds(*c));
}

void CsrSigner::deny(const Value& obj, const std::string& name, const std::string& reason, const std::string& message,
                     bool approved) {
    // Approved (by someone else) and Denied exclude each other: such a
    // request fails instead, and is never signed.
    auto d = full_object(obj);
    add_condition(d, approved ? "Failed" : "Denied", reason, message);
    auto r = put(name, approved ? "status" : "approval", d);
    if (!r) {
        note_error("denying CertificateSigningRequest " + name + ": " + r.error().message);
        retry_soon();
        return;
    }
    if (r->status == 409) {  // changed meanwhile: the next event or relist decides again
        retry_soon();
        return;
    }
    if (r->status != 200 && r->status != 201) {
        note_error("denying CertificateSigningRequest " + name + ": " + r->describe());
        retry_soon();
        return;
    }
    if (auto c = csr::parse_csr_json(r->body); c && !c->uid.empty()) done_uids_.insert(c->uid);
    {
        std::lock_guard lk(mu_);
        ++stats_.denied;
    }
    log::info(kLog, "denied CertificateSigningRequest " + name + ": " + message);
}

void CsrSigner::approve_and_sign(const Value& obj, const std::string& name, const std::string& uid, const std::string& node,
                                 bool approved, const std::string& request_pem, int64_t seconds) {
    rapidjson::Document current = full_object(obj);
    if (!approved) {
        add_condition(current, "Approved", "SignetNodeApproved",
                      "node " + node + " requests its own signet.dev/node certificate");
        auto r = put(name, "approval", current);
        if (!r || (r->status != 200 && r->status != 201)) {
            retry_soon();
            if (r && r->status == 409) return;
            note_error("approving CertificateSigningRequest " + name + ": " + (r ? r->describe() : r.error().message));
            return;
        }
        auto doc = json::parse(r->body);
        if (!doc || !doc->IsObject()) {
            note_error("approving CertificateSigningRequest " + name + ": the answer is not an object");
            retry_soon();
            return;
        }
        current = full_object(*doc);
    }
    identity::IssueOptions io;
    io.not_before = identity::Clock::now() - identity::kCertBackdate;
    io.validity = std::chrono::seconds(seconds) + identity::kCertBackdate;
    auto pem = ca_->sign_csr(request_pem, node, io);
    auto& a = current.GetAllocator();
    if (!current.HasMember("status") || !current["status"].IsObject()) {
        current.RemoveMember("status");
        current.AddMember("status", Value(rapidjson::kObjectType), a);
    }
    std::string outcome;
    if (pem) {
        current["status"].RemoveMember("certificate");
        current["status"].AddMember("certificate", json::str(csr::base64_encode(*pem), a), a);
    } else {
        add_condition(current, "Failed", "SigningFailed", pem.error().message);
    }
    auto r = put(name, "status", current);
    if (!r || (r->status != 200 && r->status != 201)) {
        retry_soon();
        if (r && r->status == 409) return;  // re-read and re-decided on the next event or relist
        note_error("issuing CertificateSigningRequest " + name + ": " + (r ? r->describe() : r.error().message));
        return;
    }
    if (!uid.empty()) done_uids_.insert(uid);
    if (done_uids_.size() > 100000) done_uids_.clear();
    std::lock_guard lk(mu_);
    if (pem) {
        ++stats_.approved;
        log::info(kLog, "approved and signed CertificateSigningRequest " + name + " for node " + node + " (valid " +
                            std::to_string(seconds) + "s)");
    } else {
        ++stats_.failed;
        log::error(kLog, "CertificateSigningRequest " + name + " for node " + node + ": signing failed: " + pem.error().message);
    }
}

int run_csr_signer(const CsrSignerOptions& opts) {
    auto signer = CsrSigner::create(opts);
    if (!signer) {
        log::error(kLog, "--csr-signer: " + signer.error().message);
        return 1;
    }
    boost::asio::io_context io;
    boost::asio::signal_set signals(io, SIGTERM, SIGINT);
    CsrSigner* sp = signer->get();
    signals.async_wait([sp, &io](boost::system::error_code ec, int sig) {
        if (ec) return;
        log::info(kLog, std::string("received ") + ::strsignal(sig) + ", stopping");
        sp->stop();
        io.stop();
    });
    std::unique_ptr<metrics::HttpListener> health;
    if (!opts.health_address.empty()) {
        metrics::Handlers h;
        h.ready = [sp] { return sp->ready(); };
        health = std::make_unique<metrics::HttpListener>(io, std::move(h));
        if (auto st = health->listen(opts.health_address); !st) {
            log::error(kLog, "--health-address: " + st.error().message);
            return 1;
        }
        log::info(kLog, "probes (/healthz, /readyz) on " + opts.health_address);
    }
    std::thread worker([sp, &io] {
        sp->run();
        io.stop();
    });
    io.run();
    if (health) health->stop();
    sp->stop();
    worker.join();
    auto st = sp->stats();
    log::info(kLog, "stopped (approved " + std::to_string(st.approved) + ", denied " + std::to_string(st.denied) +
                        ", failed " + std::to_string(st.failed) + ", malformed " + std::to_string(st.malformed) + ")");
    return 0;
}

}  // namespace signet::signer
