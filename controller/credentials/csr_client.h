// signetd --authority kubernetes-csr: this node's certificate from the
// Kubernetes CSR API (certificates.k8s.io/v1, signerName signet.dev/node),
// signed by `signetd --csr-signer` (csr_signer.h). docs/handshake.md, "The
// Kubernetes CSR signer".
//
// obtain(): fetch the trust bundle (a file, or a ConfigMap key), make a new
// P-256 key on the node (state-dir/identity/node.key.new, 0600, never
// logged), POST a CertificateSigningRequest for CN=<node>, O=<trust domain>,
// poll it with back-off until status.certificate is set or a Denied/Failed
// condition appears, check the certificate chains to the bundle and names
// this node, then move key and certificate into place (node.key, node.crt,
// trust-bundle.pem). Blocking: NodeIdentity runs it on a worker thread, and
// keeps using the previous credentials until it returns.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "identity/authority.h"
#include "kube/client.h"
#include "signet/result.h"

namespace signet::credentials {

using kube::KubeClient;
using kube::split_ref;

struct CsrClientOptions {
    // Credentials for the CSR: "" = the in-cluster service account (its
    // pod-bound token names this node, which the signer checks); or the
    // node's own (system:node:<name>, group system:nodes; the kubelet's
    // kubeconfig).
    std::string csr_kubeconfig;
    // Credentials for reading the trust bundle ConfigMap ("" = in-cluster).
    std::string kubeconfig;
    // The trust bundle: a file (when set), else a ConfigMap key.
    std::string trust_bundle_file;
    std::string trust_bundle_configmap = "signet-system/signet-trust-bundle";
    std::string trust_bundle_key = "trust-bundle.pem";
    // "" = the trust domain of the bundle's CA (its URI SAN); required when
    // the bundle holds several.
    std::string trust_domain;
    std::chrono::seconds expiration{86400};  // spec.expirationSeconds
    std::chrono::milliseconds poll_initial{250};
    std::chrono::milliseconds poll_max{10000};
    kube::InClusterPaths in_cluster;  // tests
};

// When a certificate is renewed: at two thirds of its lifetime. The lifetime
// counts from issuance: notBefore + the 5-minute backdate signers apply
// (when that is before notAfter).
identity::TimePoint renewal_time(identity::TimePoint not_before, identity::TimePoint not_after);

class CsrClient {
public:
    static Result<std::unique_ptr<CsrClient>> create(CsrClientOptions opts, std::string node_name, std::string own_dir);

    struct Obtained {
        identity::NodeCredentials creds;
        std::string bundle_pem;
        std::string csr_name;
    };
    // Blocking; see above. Errors say why (denied: the signer's reason).
    Result<Obtained> obtain();
    // The trust bundle (PEM) from the file or the ConfigMap.
    Result<std::string> fetch_bundle();
    void stop();

    // What obtain() is doing, for status (any thread).
    struct Progress {
        std::string csr_name;
        std::string phase;  // "", "submitting", "pending", "issued", "denied", "failed", "error"
        std::string message;
    };
    Progress progress() const;
    const CsrClientOptions& options() const { return opts_; }

private:
    CsrClient(CsrClientOptions opts, std::string node, std::string own_dir);
    void set_progress(const std::string& name, const std::string& phase, const std::string& message);
    bool sleep(std::chrono::milliseconds d);

    CsrClientOptions opts_;
    std::string node_, own_dir_;
    std::unique_ptr<KubeClient> csr_api_, bundle_api_;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    bool stopping_ = false;
    Progress progress_;
};

}  // namespace signet::credentials
