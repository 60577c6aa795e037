#include "credentials/csr_client.h"

#include <openssl/crypto.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "identity/crypto.h"
#include "identity/csr_policy.h"
#include "signet/fsutil.h"
#include "signet/json.h"
#include "signet/log.h"

namespace signet::credentials {

using rapidjson::Value;
namespace csr = identity::csr;

namespace {

constexpr const char* kLog = "identity";
constexpr const char* kCsrPath = "/apis/certificates.k8s.io/v1/certificatesigningrequests";

std::string random_suffix() {
    uint8_t b[4];
    if (!identity::random_bytes(b)) return "00000000";
    return identity::hex(b);
}

std::string seconds_text(std::chrono::steady_clock::duration d) {
    return std::to_string(std::chrono::duration_cast<std::chrono::seconds>(d).count()) + "s";
}

}  // namespace

identity::TimePoint renewal_time(identity::TimePoint nb, identity::TimePoint na) {
    identity::TimePoint start = nb + identity::kCertBackdate < na ? nb + identity::kCertBackdate : nb;
    return start + (na - start) * 2 / 3;
}

Result<std::unique_ptr<CsrClient>> CsrClient::create(CsrClientOptions opts, std::string node_name, std::string own_dir) {
    std::unique_ptr<CsrClient> c(new CsrClient(std::move(opts), std::move(node_name), std::move(own_dir)));
    auto api = KubeClient::create(c->opts_.csr_kubeconfig, c->opts_.in_cluster);
    if (!api) return make_error(api.error().code, "the CSR API credentials: " + api.error().message);
    c->csr_api_ = std::move(*api);
    if (c->opts_.trust_bundle_file.empty()) {
        auto b = KubeClient::create(c->opts_.kubeconfig, c->opts_.in_cluster);
        if (!b) return make_error(b.error().code, "the trust bundle ConfigMap's credentials: " + b.error().message);
        c->bundle_api_ = std::move(*b);
    }
    if (!identity::valid_dns_subdomain(c->node_)) return make_error(EINVAL, "invalid node name " + c->node_);
    if (!c->opts_.trust_domain.empty() && !identity::valid_trust_domain(c->opts_.trust_domain))
        return make_error(EINVAL, "invalid trust domain " + c->opts_.trust_domain);
    if (c->opts_.expiration.count() < 1) return make_error(EINVAL, "the CSR expiration must be positive");
    return c;
}

CsrClient::CsrClient(CsrClientOptions opts, std::string node, std::string own_dir)
    : opts_(std::move(opts)), node_(std::move(node)), own_dir_(std::move(own_dir)) {}

void CsrClient::stop() {
    {
        std::lock_guard lk(mu_);
        stopping_ = true;
    }
    cv_.notify_all();
    if (csr_api_) csr_api_->stop();
    if (bundle_api_) bundle_api_->stop();
}

bool CsrClient::sleep(std::chrono::milliseconds d) {
    std::unique_lock lk(mu_);
    return !cv_.wait_for(lk, d, [this] { return stopping_; });
}

void CsrClient::set_progress(const std::string& name, const std::string& phase, const std::string& message) {
    std::lock_guard lk(mu_);
    progress_ = Progress{name, phase, message};
}

CsrClient::Progress CsrClient::progress() const {
    std::lock_guard lk(mu_);
    return progress_;
}

Result<std::string> CsrClient::fetch_bundle() {
    if (!opts_.trust_bundle_file.empty()) {
        auto text = fs::read_file(opts_.trust_bundle_file, 1 << 20);
        if (!text) return make_error(text.error().code, "--trust-bundle " + opts_.trust_bundle_file + ": " + text.error().message);
        return std::move(*text);
    }
    auto [ns, name] = split_ref(opts_.trust_bundle_configmap, "signet-system");
    const std::string what = "the trust bundle ConfigMap " + ns + "/" + name;
    auto r = bundle_api_->call("GET", "/api/v1/namespaces/" + ns + "/configmaps/" + name);
    if (!r) return make_error(r.error().code, what + ": " + r.error().message);
    if (r->status != 200) return make_error(EIO, what + ": " + r->describe());
    auto doc = json::parse(r->body);
    if (!doc) return make_error(EINVAL, what + ": " + doc.error().message);
    const Value* data = doc->IsObject() ? json::find(*doc, "data") : nullptr;
    const Value* pem = data && data->IsObject() ? json::find(*data, opts_.trust_bundle_key.c_str()) : nullptr;
    if (!pem || !pem->IsString()) return make_error(ENOENT, what + " has no key " + opts_.trust_bundle_key);
    return std::string(pem->GetString(), pem->GetStringLength());
}

Result<CsrClient::Obtained> CsrClient::obtain() {
    // 1. The trust bundle and the trust domain.
    set_progress({}, "submitting", "reading the trust bundle");
    auto bundle_pem = fetch_bundle();
    if (!bundle_pem) return bundle_pem.error();
    auto bundle = identity::TrustBundle::from_pem(*bundle_pem);
    if (!bundle) return make_error(bundle.error().code, "the trust bundle: " + bundle.error().message);
    std::string td = opts_.trust_domain;
    if (td.empty()) {
        auto domains = bundle->trust_domains();
        std::sort(domains.begin(), domains.end());
        domains.erase(std::unique(domains.begin(), domains.end()), domains.end());
        if (domains.size() != 1) {
            std::string list;
            for (const auto& d : domains) list += (list.empty() ? "" : ", ") + d;
            return make_error(EINVAL, "the trust bundle holds the trust domains " + list + ": pass --trust-domain");
        }
        td = domains.front();
    }

    // 2. A new key, made here and kept only on this node.
    if (auto st = fs::make_dirs(own_dir_, 0700); !st) return st.error();
    const std::string key_new = own_dir_ + "/node.key.new";
    ::unlink(key_new.c_str());
    auto key = identity::generate_p256_key();
    if (!key) return key.error();
    if (auto st = identity::write_new_private_key(key_new, key->get()); !st) return st.error();
    auto csr_pem = identity::make_csr(key->get(), td, node_);
    if (!csr_pem) return csr_pem.error();

    // 3. The CertificateSigningRequest.
    std::string base = node_.size() > 200 ? node_.substr(0, 200) : node_;
    while (!base.empty() && (base.back() == '.' || base.back() == '-')) base.pop_back();
    const std::string name = "signet-" + base + "-" + random_suffix();
    rapidjson::Document d(rapidjson::kObjectType);
    auto& a = d.GetAllocator();
    d.AddMember("apiVersion", "certificates.k8s.io/v1", a);
    d.AddMember("kind", "CertificateSigningRequest", a);
    Value md(rapidjson::kObjectType), labels(rapidjson::kObjectType), spec(rapidjson::kObjectType),
        usages(rapidjson::kArrayType);
    md.AddMember("name", json::str(name, a), a);
    labels.AddMember("app.kubernetes.io/name", "signet", a);
    labels.AddMember("app.kubernetes.io/component", "node-certificate", a);
    md.AddMember("labels", labels, a);
    d.AddMember("metadata", md, a);
    spec.AddMember("request", json::str(csr::base64_encode(*csr_pem), a), a);
    spec.AddMember("signerName", json::str(csr::kSignerName, a), a);
    for (const char* u : csr::kUsages) usages.PushBack(Value(u, a), a);
    spec.AddMember("usages", usages, a);
    spec.AddMember("expirationSeconds", Value(static_cast<int64_t>(opts_.expiration.count())), a);
    d.AddMember("spec", spec, a);

    set_progress(name, "submitting", "creating the CertificateSigningRequest");
    auto created = csr_api_->call("POST", kCsrPath, json::to_string(d));
    if (!created) return make_error(created.error().code, "creating CertificateSigningRequest " + name + ": " + created.error().message);
    if (created->status != 201 && created->status != 200)
        return make_error(EIO, "creating CertificateSigningRequest " + name + ": " + created->describe());
    log::info(kLog, "submitted CertificateSigningRequest " + name + " (signer " + std::string(csr::kSignerName) +
                        ", CN=" + node_ + ", O=" + td + "); waiting for the signer");

    // 4. Wait for the signer: poll with back-off.
    const auto t0 = std::chrono::steady_clock::now();
    auto delay = opts_.poll_initial;
    auto last_note = t0;
    csr::CsrObject obj;
    for (;;) {
        set_progress(name, "pending", "waiting for the signer (" + seconds_text(std::chrono::steady_clock::now() - t0) + ")");
        if (!sleep(delay)) return make_error(ECANCELED, "stopped");
        delay = std::min(delay * 2, opts_.poll_max);
        auto r = csr_api_->call("GET", std::string(kCsrPath) + "/" + name);
        if (!r) {
            if (r.error().code == ECANCELED) return r.error();
            log::warn(kLog, "reading CertificateSigningRequest " + name + ": " + r.error().message);
            continue;
        }
        if (r->status == 404) return make_error(ENOENT, "CertificateSigningRequest " + name + " disappeared before it was issued");
        if (r->status != 200) {
            log::warn(kLog, "reading CertificateSigningRequest " + name + ": " + r->describe());
            continue;
        }
        auto o = csr::parse_csr_json(r->body);
        if (!o) {
            log::warn(kLog, "CertificateSigningRequest " + name + ": " + o.error().message);
            continue;
        }
        if (o->denied) {
            set_progress(name, "denied", o->denied_message);
            return make_error(EACCES, "CertificateSigningRequest " + name + " was denied: " + o->denied_message);
        }
        if (o->failed) {
            set_progress(name, "failed", o->failed_message);
            return make_error(EIO, "CertificateSigningRequest " + name + " failed: " + o->failed_message);
        }
        if (!o->certificate_pem.empty()) {
            obj = std::move(*o);
            break;
        }
        if (std::chrono::steady_clock::now() - last_note > std::chrono::minutes(5)) {
            last_note = std::chrono::steady_clock::now();
            log::warn(kLog, "CertificateSigningRequest " + name + " is still " + (o->approved ? "approved but not issued" : "pending") +
                                " after " + seconds_text(last_note - t0) + ": is signetd --csr-signer running?");
        }
    }

    // 5. The certificate: chains to the bundle, names this node, matches the key.
    auto certs = identity::parse_certs_pem(obj.certificate_pem);
    if (!certs || certs->empty())
        return make_error(EINVAL, "CertificateSigningRequest " + name + ": status.certificate is not a PEM certificate");
    const std::string leaf_pem = identity::cert_pem(certs->front().get());
    auto key_text = fs::read_file(key_new, 64 << 10);
    if (!key_text) return key_text.error();
    auto creds = identity::NodeCredentials::from_pem(*key_text, leaf_pem, *bundle, identity::Clock::now());
    OPENSSL_cleanse(key_text->data(), key_text->size());
    if (!creds) {
        set_progress(name, "error", creds.error().message);
        return make_error(creds.error().code, "the certificate issued for CertificateSigningRequest " + name + ": " + creds.error().message);
    }
    if (creds->identity.node_name != node_ || creds->identity.trust_domain != td)
        return make_error(EINVAL, "the certificate issued for CertificateSigningRequest " + name + " names node '" +
                                      creds->identity.node_name + "' in trust domain '" + creds->identity.trust_domain +
                                      "', not '" + node_ + "' in '" + td + "'");

    // 6. Into place: key first (a crash in between leaves a key/certificate
    // mismatch, which the next start treats as "no credentials").
    if (::rename(key_new.c_str(), (own_dir_ + "/node.key").c_str()) != 0)
        return make_error(errno, "rename " + key_new + ": " + std::strerror(errno));
    if (auto st = fs::write_atomic(own_dir_ + "/node.crt", leaf_pem, 0644); !st) return st.error();
    if (auto st = fs::write_atomic(own_dir_ + "/trust-bundle.pem", *bundle_pem, 0644); !st) return st.error();
    set_progress(name, "issued", "");
    return Obtained{std::move(*creds), std::move(*bundle_pem), name};
}

}  // namespace signet::credentials
