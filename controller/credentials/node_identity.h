// signet: this node's identity credentials for the handshake (docs/handshake.md).
//
// `signetd --authority dir:DIR` takes them from DIR in one of two ways:
//  - DIR holds the cluster authority (ca.key, ca.crt, trust-bundle.pem):
//    signetd creates its node key on the node (state-dir/identity/node.key,
//    0600, never logged), has the authority sign a CSR for it, keeps the
//    certificate, and renews it when a third of its lifetime remains;
//  - DIR holds credentials issued beforehand (`signetctl authority issue`:
//    node.key, node.crt, trust-bundle.pem, no CA key on the node): signetd
//    loads them, checks they name this node, and warns as expiry nears.
// Either way the certificate must chain to the trust bundle and name this
// node; otherwise signetd refuses to start with the reason.
//
// `signetd --authority kubernetes-csr` (authority_dir == kKubernetesCsr)
// gets them from the Kubernetes CSR API instead (csr_client.h): a worker
// thread submits a CSR for a key made on the node, waits for
// `signetd --csr-signer`, and renews at two thirds of the lifetime; until a
// renewal is issued the previous credentials stay in use. It starts without
// credentials when it has none yet (they follow asynchronously; the status
// shows the pending CSR), and reuses valid ones from state-dir/identity.
#pragma once

#include <rapidjson/document.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "credentials/csr_client.h"
#include "identity/authority.h"
#include "signet/result.h"

namespace signet::credentials {

inline constexpr const char* kKubernetesCsr = "kubernetes-csr";

// `--authority dir:DIR` with the cluster CA's key in DIR (DIR/ca.key) turns
// this node into a CA: a compromised node could issue itself any node's
// certificate for the CA's lifetime. signetd refuses that unless told it is
// a one-machine setup (`--allow-ca-key`, as the demo is). Returns the
// refusal (why, and what to do instead); ok for other modes and for DIR
// without ca.key.
Status check_ca_key_on_node(const std::string& authority_dir, bool allow_ca_key);

class NodeIdentity {
public:
    // `csr`: the settings of kubernetes-csr mode (authority_dir == kKubernetesCsr).
    NodeIdentity(boost::asio::io_context& io, std::string node_name, std::string authority_dir, std::string state_dir,
                 CsrClientOptions csr = {});
    ~NodeIdentity();

    // Loads or issues the credentials (see above). Errors are fatal for signetd.
    Status start();
    void stop();

    // Checks expiry now: renews (authority mode) or warns (pre-issued); and
    // re-reads the trust bundle file (reload_bundle). Runs every minute.
    void check();

    // Re-reads the trust bundle from its file: DIR/trust-bundle.pem (dir:
    // modes) or --trust-bundle (kubernetes-csr; the ConfigMap is read at each
    // renewal). Other CAs than before replace the bundle; the handshake's
    // pair keys and verified peer certificates are then dropped at the next
    // token (PairKeyCache::sync_bundle), so a removed CA stops vouching within
    // a minute. A file that does not load leaves the bundle as it was.
    // Returns true when the bundle changed.
    bool reload_bundle();

    bool has_credentials() const { return creds_.has_value(); }
    const identity::NodeCredentials* credentials() const { return creds_ ? &*creds_ : nullptr; }
    const identity::TrustBundle* bundle() const { return bundle_ ? &*bundle_ : nullptr; }
    void status(rapidjson::Value& out, rapidjson::Document::AllocatorType& a) const;

private:
    Status issue_from_authority();
    void schedule();
    Status start_csr_mode();
    void csr_worker();

    bool csr_mode_ = false;
    std::unique_ptr<CsrClient> csr_client_;
    std::thread csr_thread_;
    mutable std::mutex csr_mu_;
    std::condition_variable csr_cv_;
    bool csr_stopping_ = false;
    std::optional<identity::TimePoint> csr_due_;  // under csr_mu_: next renewal (nullopt: now)
    std::string csr_last_error_;                  // under csr_mu_
    std::shared_ptr<int> alive_ = std::make_shared<int>(0);
    boost::asio::io_context& io_;

    std::string node_, dir_, own_dir_;
    CsrClientOptions csr_opts_;
    bool authority_mode_ = false;
    std::optional<identity::Authority> authority_;
    std::optional<identity::TrustBundle> bundle_;
    std::optional<identity::NodeCredentials> creds_;
    boost::asio::steady_timer timer_;
    uint64_t renewals_ = 0;
    std::string last_error_;
    std::string bundle_error_;  // the last reload_bundle failure (logged once)
};

}  // namespace signet::credentials
