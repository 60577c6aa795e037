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
#pragma once

#include <rapidjson/document.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <memory>
#include <optional>
#include <string>

#include "identity/authority.h"
#include "signet/result.h"

namespace signet::core {

class NodeIdentity {
public:
    NodeIdentity(boost::asio::io_context& io, std::string node_name, std::string authority_dir, std::string state_dir);

    // Loads or issues the credentials (see above). Errors are fatal for signetd.
    Status start();
    void stop();

    // Checks expiry now: renews (authority mode) or warns (pre-issued).
    void check();

    bool has_credentials() const { return creds_.has_value(); }
    const identity::NodeCredentials* credentials() const { return creds_ ? &*creds_ : nullptr; }
    void status(rapidjson::Value& out, rapidjson::Document::AllocatorType& a) const;

private:
    Status issue_from_authority();
    void schedule();

    std::string node_, dir_, own_dir_;
    bool authority_mode_ = false;
    std::optional<identity::Authority> authority_;
    std::optional<identity::TrustBundle> bundle_;
    std::optional<identity::NodeCredentials> creds_;
    boost::asio::steady_timer timer_;
    uint64_t renewals_ = 0;
    std::string last_error_;
};

}  // namespace signet::core
