#include "credentials/node_identity.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include <boost/asio/post.hpp>

#include "signet/fsutil.h"
#include "signet/json.h"
#include "signet/log.h"

namespace signet::credentials {

using rapidjson::Value;

namespace {

constexpr const char* kLog = "identity";

bool exists(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0;
}

int64_t unix_seconds(identity::TimePoint t) {
    return std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count();
}

}  // namespace

Status check_ca_key_on_node(const std::string& authority_dir, bool allow_ca_key) {
    if (authority_dir.empty() || authority_dir == kKubernetesCsr || allow_ca_key) return {};
    if (!exists(authority_dir + "/ca.key")) return {};
    return make_error(EPERM,
                      "--authority dir:" + authority_dir + ": " + authority_dir +
                          "/ca.key is the cluster authority's private key. A node that holds it can issue itself any "
                          "node's certificate, so a compromised node could speak for every node until the CA expires. "
                          "Keep the CA key off the nodes: issue each node its credentials on an admin machine "
                          "(signetctl authority issue " + authority_dir + " --node NAME --out NODE_DIR, then "
                          "--authority dir:NODE_DIR, no ca.key there), or use --authority kubernetes-csr with one "
                          "signetd --csr-signer per cluster. On a one-machine setup (a demo, a test) pass --allow-ca-key.");
}

NodeIdentity::NodeIdentity(boost::asio::io_context& io, std::string node_name, std::string authority_dir,
                           std::string state_dir, CsrClientOptions csr)
    : io_(io), node_(std::move(node_name)), dir_(std::move(authority_dir)), own_dir_(state_dir + "/identity"),
      csr_opts_(std::move(csr)), timer_(io) {}

NodeIdentity::~NodeIdentity() { stop(); }

Status NodeIdentity::start() {
    if (dir_ == kKubernetesCsr) {
        Status st = start_csr_mode();
        if (st && !csr_opts_.trust_bundle_file.empty()) schedule();  // follow --trust-bundle
        return st;
    }
    authority_mode_ = exists(dir_ + "/ca.key");
    if (authority_mode_) {
        auto ca = identity::Authority::load(dir_);
        if (!ca) return make_error(ca.error().code, "--authority " + dir_ + ": " + ca.error().message);
        authority_.emplace(std::move(*ca));
        auto bundle = identity::TrustBundle::from_pem(authority_->bundle_pem());
        if (!bundle) return make_error(bundle.error().code, "--authority " + dir_ + ": " + bundle.error().message);
        bundle_.emplace(std::move(*bundle));
        // Reuse what a previous signetd issued while it is still good.
        if (exists(own_dir_ + "/node.key") && exists(own_dir_ + "/node.crt")) {
            auto c = identity::NodeCredentials::load(own_dir_, *bundle_, identity::Clock::now());
            if (c && c->identity.node_name == node_ && !identity::needs_renewal(c->cert.get(), identity::Clock::now())) {
                creds_.emplace(std::move(*c));
            } else if (c && c->identity.node_name != node_) {
                return make_error(EINVAL, own_dir_ + "/node.crt names node '" + c->identity.node_name + "', not '" +
                                              node_ + "' (--node-name)");
            }
        }
        if (!creds_)
            if (auto st = issue_from_authority(); !st) return st;
    } else {
        auto bundle = identity::TrustBundle::load(dir_ + "/trust-bundle.pem");
        if (!bundle) return make_error(bundle.error().code, "--authority " + dir_ + ": " + bundle.error().message);
        bundle_.emplace(std::move(*bundle));
        auto c = identity::NodeCredentials::load(dir_, *bundle_, identity::Clock::now());
        if (!c) return make_error(c.error().code, "--authority " + dir_ + ": " + c.error().message);
        if (c->identity.node_name != node_)
            return make_error(EINVAL, "--authority " + dir_ + ": the certificate names node '" + c->identity.node_name +
                                          "', not '" + node_ + "' (--node-name)");
        creds_.emplace(std::move(*c));
    }
    log::info(kLog, "node certificate for " + node_ + " in trust domain " + creds_->identity.trust_domain +
                        ", fingerprint " + identity::hex(creds_->identity.fingerprint).substr(0, 16) +
                        ", valid until unix " + std::to_string(unix_seconds(creds_->identity.not_after)) +
                        (authority_mode_ ? " (issued by the authority in " + dir_ +
                                               ", renewed automatically; --allow-ca-key: this node holds the CA key and "
                                               "could issue any node's certificate, a one-machine setup only)"
                                         : " (issued beforehand; renew it with signetctl authority issue)"));
    check();
    return {};
}

void NodeIdentity::stop() {
    timer_.cancel();
    if (csr_thread_.joinable()) {
        {
            std::lock_guard lk(csr_mu_);
            csr_stopping_ = true;
        }
        csr_cv_.notify_all();
        csr_client_->stop();
        csr_thread_.join();
    }
}

// ---- kubernetes-csr mode ------------------------------------------------------

Status NodeIdentity::start_csr_mode() {
    csr_mode_ = true;
    auto client = CsrClient::create(csr_opts_, node_, own_dir_);
    if (!client) return make_error(client.error().code, "--authority kubernetes-csr: " + client.error().message);
    csr_client_ = std::move(*client);
    if (auto st = fs::make_dirs(own_dir_, 0700); !st) return st;
    // Reuse what an earlier signetd obtained while it is valid (renewed in the
    // background when due). The bundle: the file flag, else the copy kept here.
    std::string bundle_path = csr_opts_.trust_bundle_file.empty() ? own_dir_ + "/trust-bundle.pem" : csr_opts_.trust_bundle_file;
    if (exists(bundle_path) && exists(own_dir_ + "/node.key") && exists(own_dir_ + "/node.crt")) {
        auto bundle = identity::TrustBundle::load(bundle_path);
        auto c = bundle ? identity::NodeCredentials::load(own_dir_, *bundle, identity::Clock::now())
                        : Result<identity::NodeCredentials>(bundle.error());
        if (c && c->identity.node_name == node_ &&
            (csr_opts_.trust_domain.empty() || c->identity.trust_domain == csr_opts_.trust_domain)) {
            bundle_.emplace(std::move(*bundle));
            creds_.emplace(std::move(*c));
            csr_due_ = renewal_time(creds_->identity.not_before, creds_->identity.not_after);
            log::info(kLog, "node certificate for " + node_ + " in trust domain " + creds_->identity.trust_domain +
                                ", fingerprint " + identity::hex(creds_->identity.fingerprint).substr(0, 16) +
                                ", valid until unix " + std::to_string(unix_seconds(creds_->identity.not_after)) +
                                " (from the Kubernetes CSR API, kept in " + own_dir_ + ")");
        } else if (!c) {
            log::info(kLog, "the node certificate in " + own_dir_ + " is not usable (" + c.error().message +
                                "): requesting a new one");
        } else {
            log::info(kLog, "the node certificate in " + own_dir_ + " is for node '" + c->identity.node_name +
                                "' in trust domain '" + c->identity.trust_domain + "': requesting a new one");
        }
    }
    if (!creds_) log::info(kLog, "no node certificate yet: requesting one from the Kubernetes CSR API (signer signet.dev/node)");
    csr_thread_ = std::thread([this] { csr_worker(); });
    return {};
}

void NodeIdentity::csr_worker() {
    std::chrono::milliseconds backoff{1000};
    const std::chrono::milliseconds backoff_max{300000};
    std::weak_ptr<int> alive = alive_;
    for (;;) {
        {
            std::unique_lock lk(csr_mu_);
            if (csr_due_) {
                auto due = *csr_due_;
                // system_clock deadline, waited in short steps (suspend, clock changes).
                while (!csr_stopping_ && identity::Clock::now() < due)
                    csr_cv_.wait_for(lk, std::min<std::chrono::nanoseconds>(due - identity::Clock::now(),
                                                                            std::chrono::seconds(30)));
            }
            if (csr_stopping_) return;
        }
        auto r = csr_client_->obtain();
        if (r) {
            auto got = std::make_shared<CsrClient::Obtained>(std::move(*r));
            {
                std::lock_guard lk(csr_mu_);
                csr_due_ = renewal_time(got->creds.identity.not_before, got->creds.identity.not_after);
                csr_last_error_.clear();
            }
            backoff = std::chrono::milliseconds(1000);
            boost::asio::post(io_, [this, alive, got] {
                if (alive.expired()) return;
                auto bundle = identity::TrustBundle::from_pem(got->bundle_pem);
                if (bundle) bundle_.emplace(std::move(*bundle));
                bool renewal = creds_.has_value();
                creds_.emplace(std::move(got->creds));
                ++renewals_;
                last_error_.clear();
                log::info(kLog, std::string(renewal ? "renewed" : "obtained") + " this node's certificate from CertificateSigningRequest " +
                                    got->csr_name + ": node " + node_ + ", trust domain " + creds_->identity.trust_domain +
                                    ", fingerprint " + identity::hex(creds_->identity.fingerprint).substr(0, 16) +
                                    ", valid until unix " + std::to_string(unix_seconds(creds_->identity.not_after)));
            });
            continue;
        }
        if (r.error().code == ECANCELED) return;
        std::string err = r.error().message;
        log::error(kLog, "node certificate from the Kubernetes CSR API: " + err + " (retrying in " +
                             std::to_string(backoff.count() / 1000) + "s; a current certificate stays in use)");
        boost::asio::post(io_, [this, alive, err] {
            if (!alive.expired()) last_error_ = err;
        });
        std::unique_lock lk(csr_mu_);
        csr_last_error_ = err;
        csr_due_ = identity::Clock::now() + backoff;
        backoff = std::min(backoff * 2, backoff_max);
        if (csr_stopping_) return;
    }
}

Status NodeIdentity::issue_from_authority() {
    if (auto st = fs::make_dirs(own_dir_, 0700); !st) return st;
    std::string key_path = own_dir_ + "/node.key";
    identity::PKey key;
    if (exists(key_path)) {
        auto k = identity::load_private_key(key_path);
        if (!k) return make_error(k.error().code, key_path + ": " + k.error().message);
        key = std::move(*k);
    } else {
        auto k = identity::generate_p256_key();
        if (!k) return k.error();
        if (auto st = identity::write_new_private_key(key_path, k->get()); !st) return st;
        key = std::move(*k);
    }
    auto csr = identity::make_csr(key.get(), authority_->trust_domain(), node_);
    if (!csr) return csr.error();
    auto pem = authority_->sign_csr(*csr, node_);
    if (!pem) return make_error(pem.error().code, "signing this node's certificate: " + pem.error().message);
    if (auto st = fs::write_atomic(own_dir_ + "/node.crt", *pem, 0644); !st) return st;
    if (auto st = fs::write_atomic(own_dir_ + "/trust-bundle.pem", authority_->bundle_pem(), 0644); !st) return st;
    auto c = identity::NodeCredentials::load(own_dir_, *bundle_, identity::Clock::now());
    if (!c) return make_error(c.error().code, "the certificate just issued does not load: " + c.error().message);
    creds_.emplace(std::move(*c));
    ++renewals_;
    return {};
}

bool NodeIdentity::reload_bundle() {
    const std::string path = csr_mode_ ? csr_opts_.trust_bundle_file : dir_ + "/trust-bundle.pem";
    if (path.empty() || !bundle_) return false;
    auto b = identity::TrustBundle::load(path);
    if (!b) {
        if (b.error().message != bundle_error_) {
            bundle_error_ = b.error().message;
            log::warn(kLog, "re-reading the trust bundle: " + bundle_error_ + " (the bundle loaded before stays in use)");
        }
        return false;
    }
    bundle_error_.clear();
    if (b->digest() == bundle_->digest()) return false;
    std::string domains;
    for (const auto& d : b->trust_domains()) domains += (domains.empty() ? "" : ", ") + d;
    bundle_.emplace(std::move(*b));
    log::info(kLog, "trust bundle " + path + " changed: " + std::to_string(bundle_->size()) + " CA(s) of trust domain(s) " +
                        domains + "; peers' pair keys and certificates verified under the old bundle are dropped");
    if (creds_)
        if (auto id = bundle_->verify_node(creds_->cert.get(), {}, identity::Clock::now()); !id)
            log::error(kLog, "this node's own certificate does not verify against the new trust bundle (" + id.error().message +
                                 "): nodes that use that bundle refuse its tokens");
    return true;
}

void NodeIdentity::check() {
    reload_bundle();
    if (csr_mode_) {
        schedule();
        return;
    }
    if (!creds_) return;
    auto now = identity::Clock::now();
    if (identity::needs_renewal(creds_->cert.get(), now)) {
        if (authority_mode_) {
            // The key stays; a new certificate replaces the old one atomically.
            // Tokens already sent keep verifying: peers check the chain, not the serial.
            if (auto st = issue_from_authority(); !st) {
                last_error_ = st.error().message;
                log::error(kLog, "renewing this node's certificate: " + last_error_);
            } else {
                last_error_.clear();
                log::info(kLog, "renewed this node's certificate (valid until unix " +
                                    std::to_string(unix_seconds(creds_->identity.not_after)) + ")");
            }
        } else {
            last_error_ = "the node certificate in " + dir_ + " expires at unix " +
                          std::to_string(unix_seconds(creds_->identity.not_after)) +
                          ": issue a new one (signetctl authority issue) before then";
            log::warn(kLog, last_error_);
        }
    }
    schedule();
}

void NodeIdentity::schedule() {
    timer_.expires_after(std::chrono::minutes(1));
    timer_.async_wait([this](boost::system::error_code ec) {
        if (!ec) check();
    });
}

void NodeIdentity::status(Value& out, rapidjson::Document::AllocatorType& a) const {
    out.SetObject();
    out.AddMember("mode", Value(csr_mode_ ? kKubernetesCsr : authority_mode_ ? "authority" : "pre-issued", a), a);
    out.AddMember("directory", json::str(csr_mode_ ? own_dir_ : dir_, a), a);
    if (csr_mode_ && csr_client_) {
        auto p = csr_client_->progress();
        Value csr(rapidjson::kObjectType);
        csr.AddMember("signerName", "signet.dev/node", a);
        csr.AddMember("name", json::str(p.csr_name, a), a);
        csr.AddMember("phase", json::str(p.phase, a), a);
        csr.AddMember("message", json::str(p.message, a), a);
        {
            std::lock_guard lk(csr_mu_);
            if (csr_due_) csr.AddMember("nextAttempt", Value(static_cast<int64_t>(unix_seconds(*csr_due_))), a);
        }
        out.AddMember("csr", csr, a);
    }
    if (creds_) {
        const auto& id = creds_->identity;
        out.AddMember("node", json::str(id.node_name, a), a);
        out.AddMember("trustDomain", json::str(id.trust_domain, a), a);
        out.AddMember("fingerprint", json::str(identity::hex(id.fingerprint), a), a);
        out.AddMember("notBefore", Value(static_cast<int64_t>(unix_seconds(id.not_before))), a);
        out.AddMember("notAfter", Value(static_cast<int64_t>(unix_seconds(id.not_after))), a);
    }
    Value domains(rapidjson::kArrayType);
    if (bundle_)
        for (const auto& d : bundle_->trust_domains()) domains.PushBack(json::str(d, a), a);
    out.AddMember("trustBundle", domains, a);
    out.AddMember("issued", Value(renewals_), a);
    out.AddMember("lastError", json::str(last_error_, a), a);
}

}  // namespace signet::credentials
