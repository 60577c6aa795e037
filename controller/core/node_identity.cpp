#include "node_identity.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "signet/fsutil.h"
#include "signet/json.h"
#include "signet/log.h"

namespace signet::core {

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

NodeIdentity::NodeIdentity(boost::asio::io_context& io, std::string node_name, std::string authority_dir,
                           std::string state_dir)
    : node_(std::move(node_name)), dir_(std::move(authority_dir)), own_dir_(state_dir + "/identity"),
      timer_(io) {}

Status NodeIdentity::start() {
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
                        (authority_mode_ ? " (issued by the authority in " + dir_ + ", renewed automatically)"
                                         : " (issued beforehand; renew it with signetctl authority issue)"));
    check();
    return {};
}

void NodeIdentity::stop() { timer_.cancel(); }

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

void NodeIdentity::check() {
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
    timer_.expires_after(std::chrono::minutes(10));
    timer_.async_wait([this](boost::system::error_code ec) {
        if (!ec) check();
    });
}

void NodeIdentity::status(Value& out, rapidjson::Document::AllocatorType& a) const {
    out.SetObject();
    out.AddMember("mode", Value(authority_mode_ ? "authority" : "pre-issued", a), a);
    out.AddMember("directory", json::str(dir_, a), a);
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

}  // namespace signet::core
