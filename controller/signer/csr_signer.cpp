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
#include "signet/json.h"
#include "signet/log.h"
#include "source/kubernetes/watch_stream.h"

namespace signet::signer {

using rapidjson::Value;
namespace csr = identity::csr;
namespace k8s = source::k8s;

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
    std::unique_ptr<CsrSigner> s(new CsrSigner(std::move(opts)));
    auto api = KubeClient::create(s->opts_.kubeconfig, s->opts_.in_cluster);
    if (!api) return api.error();
    s->api_ = std::move(*api);
    auto watch_api = KubeClient::create(s->opts_.kubeconfig, s->opts_.in_cluster);
    if (!watch_api) return watch_api.error();
    s->watch_api_ = std::move(*watch_api);
    auto [ns, name] = split_ref(s->opts_.ca_secret, "kube-system");
    if (ns.empty() || name.empty()) return make_error(EINVAL, "--ca-secret takes NAMESPACE/NAME");
    return s;
}

CsrSigner::CsrSigner(CsrSignerOptions opts) : opts_(std::move(opts)) {}

void CsrSigner::stop() {
    {
        std::lock_guard lk(mu_);
        stopping_ = true;
    }
    cv_.notify_all();
    if (api_) api_->stop();
    if (watch_api_) watch_api_->stop();
}

bool CsrSigner::sleep(std::chrono::milliseconds d) {
    std::unique_lock lk(mu_);
    return !cv_.wait_for(lk, d, [this] { return stopping_; });
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
    auto [ns, name] = split_ref(opts_.ca_secret, "kube-system");
    const std::string what = "the CA Secret " + ns + "/" + name;
    auto r = api_->call("GET", "/api/v1/namespaces/" + ns + "/secrets/" + name);
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
    return {};
}

void CsrSigner::run() {
    std::chrono::milliseconds backoff = opts_.backoff_initial;
    auto fail = [&](const std::string& msg) {
        note_error(msg + " (retrying in " + std::to_string(backoff.count()) + " ms)");
        bool go_on = sleep(backoff);
        backoff = std::min(backoff * 2, opts_.backoff_max);
        return go_on;
    };
    log::info(kLog, "CSR signer for signerName " + std::string(csr::kSignerName) + " against " + api_->server());
    while (!api_->stopped()) {
        // The CA, re-read at every relist (a rotated Secret is picked up).
        if (auto st = load_ca(); !st) {
            if (st.error().code == ECANCELED) break;
            if (!ca_) {
                if (!fail(st.error().message)) break;
                continue;
            }
            note_error(st.error().message + " (keeping the CA loaded before)");
        }
        transient_ = false;
        std::string rv;
        if (auto st = list_and_handle(&rv); !st) {
            if (st.error().code == ECANCELED) break;
            if (!fail(st.error().message)) break;
            continue;
        }
        if (!last_error_.empty()) log::info(kLog, "the API is reachable again");
        last_error_.clear();
        backoff = opts_.backoff_initial;
        for (;;) {
            std::string err;
            auto end = watch(rv, &err);
            if (end == WatchEnd::Stopped) return;
            if (end == WatchEnd::Failed) {
                if (!fail(err)) return;
                break;
            }
            if (end == WatchEnd::Relist || transient_) break;
        }
        if (transient_ && !sleep(std::chrono::seconds(1))) break;
    }
}

Status CsrSigner::list_and_handle(std::string* rv) {
    auto r = api_->call("GET", kCsrPath, {}, std::chrono::seconds(60));
    if (!r) return r.error();
    if (r->status != 200) return make_error(EIO, "listing CertificateSigningRequests: " + r->describe());
    auto doc = json::parse(r->body);
    if (!doc || !doc->IsObject()) return make_error(EINVAL, "listing CertificateSigningRequests: not a JSON object");
    const Value* md = json::find(*doc, "metadata");
    const Value* items = json::find(*doc, "items");
    if (!md || !md->IsObject() || !items || !(items->IsArray() || items->IsNull()))
        return make_error(EINVAL, "listing CertificateSigningRequests: not a list");
    *rv = json::opt_string(*md, "resourceVersion").value_or("");
    if (items->IsArray())
        for (const auto& it : items->GetArray()) {
            if (api_->stopped()) return make_error(ECANCELED, "stopped");
            handle(it);
        }
    return {};
}

CsrSigner::WatchEnd CsrSigner::watch(std::string& rv, std::string* error) {
    auto timeout = transient_ ? std::chrono::seconds(5) : opts_.watch_timeout;
    std::string path = std::string(kCsrPath) + "?watch=true&allowWatchBookmarks=true&timeoutSeconds=" +
                       std::to_string(timeout.count()) + (rv.empty() ? "" : "&resourceVersion=" + rv);
    k8s::JsonStreamSplitter splitter;
    bool relist = false;
    std::string body_error;
    auto on_body = [&](std::string_view data) -> Status {
        return splitter.feed(data, [&](std::string_view text) -> Status {
            auto ev = k8s::parse_watch_event(text);
            if (!ev) {
                std::lock_guard lk(mu_);
                ++stats_.malformed;
                log::warn(kLog, "skipping a malformed watch event: " + ev.error().message);
                return {};
            }
            if (ev->type == k8s::WatchEvent::Error) {
                int code = 0;
                if (ev->object && ev->object->IsObject())
                    if (const Value* c = json::find(*ev->object, "code"); c && c->IsInt()) code = c->GetInt();
                relist = true;
                return make_error(code == 410 ? ESTALE : EIO, "watch ERROR event (code " + std::to_string(code) + ")");
            }
            if (ev->object) {
                if (ev->object->IsObject())
                    if (auto ref = k8s::object_ref(*ev->object); ref && !ref->resource_version.empty())
                        rv = ref->resource_version;
                if (ev->type == k8s::WatchEvent::Added || ev->type == k8s::WatchEvent::Modified) handle(*ev->object);
            }
            return {};
        });
    };
    auto status = watch_api_->stream(path, on_body, timeout + std::chrono::seconds(30), &body_error);
    if (api_->stopped()) return WatchEnd::Stopped;
    if (relist) return WatchEnd::Relist;
    if (!status) {
        *error = "watching CertificateSigningRequests: " + status.error().message;
        return WatchEnd::Failed;
    }
    if (*status == 410) return WatchEnd::Relist;
    if (*status != 200) {
        KubeClient::Response resp{*status, body_error};
        *error = "watching CertificateSigningRequests: " + resp.describe();
        return WatchEnd::Failed;
    }
    return WatchEnd::Normal;
}

Result<KubeClient::Response> CsrSigner::put(const std::string& name, const char* sub, const Value& obj) {
    return api_->call("PUT", std::string(kCsrPath) + "/" + name + "/" + sub, json::to_string(obj));
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
    auto v = csr::decide(*c, ca_->trust_domain());
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
    auto r = api_->call("GET", "/api/v1/nodes/" + v.node);
    if (!r) {
        if (r.error().code != ECANCELED) note_error("checking Node " + v.node + " for CertificateSigningRequest " + c->name + ": " + r.error().message);
        transient_ = true;
        return;
    }
    if (r->status != 200 && r->status != 404) {
        note_error("checking Node " + v.node + " for CertificateSigningRequest " + c->name + ": " + r->describe());
        transient_ = true;
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
        transient_ = true;
        return;
    }
    if (r->status == 409) {  // changed meanwhile: the next event or relist decides again
        transient_ = true;
        return;
    }
    if (r->status != 200 && r->status != 201) {
        note_error("denying CertificateSigningRequest " + name + ": " + r->describe());
        transient_ = true;
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
            transient_ = true;
            if (r && r->status == 409) return;
            note_error("approving CertificateSigningRequest " + name + ": " + (r ? r->describe() : r.error().message));
            return;
        }
        auto doc = json::parse(r->body);
        if (!doc || !doc->IsObject()) {
            note_error("approving CertificateSigningRequest " + name + ": the answer is not an object");
            transient_ = true;
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
        transient_ = true;
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
    std::thread worker([sp, &io] {
        sp->run();
        io.stop();
    });
    io.run();
    sp->stop();
    worker.join();
    auto st = sp->stats();
    log::info(kLog, "stopped (approved " + std::to_string(st.approved) + ", denied " + std::to_string(st.denied) +
                        ", failed " + std::to_string(st.failed) + ", malformed " + std::to_string(st.malformed) + ")");
    return 0;
}

}  // namespace signet::signer
