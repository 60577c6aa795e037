// signetd --csr-signer: the cluster's signer of signet.dev/node certificates
// (one per cluster; it runs no node work). docs/handshake.md, "The
// Kubernetes CSR signer".
//
// It reads the cluster authority (CA key and certificate) from a Secret,
// lists and watches CertificateSigningRequests, and for each pending one
// with signerName signet.dev/node decides (identity/csr_policy.h): approve
// only a node's request for its own name (requestor system:node:<name> in
// group system:nodes, or the node agent's service account with a token bound
// to a pod on node <name>; a Node object <name>, subject exactly CN=<name>,
// O=<trust domain>, a P-256 key whose CSR signature verifies); then the
// Approved condition (PUT .../approval) and the certificate (PUT
// .../status). Anything else gets a Denied condition with the reason. Other
// signers' requests are never touched; malformed objects are logged and
// skipped (or denied when they name our signer). Requests already approved
// and issued, denied or failed are skipped, so restarts are harmless.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <rapidjson/document.h>

#include "identity/authority.h"
#include "kube/client.h"
#include "kube/reflector.h"
#include "signet/result.h"

namespace signet::signer {

using kube::split_ref;

struct CsrSignerOptions {
    std::string kubeconfig;  // "" = in-cluster
    std::string ca_secret = "signet-system/signet-ca";
    // Service accounts (NS/NAME) whose pod-bound tokens may request the
    // certificate of the node their pod runs on: signetd's own (the
    // DaemonSet's). Empty: only nodes' own credentials (system:node:<name>).
    std::vector<std::string> node_agent_service_accounts = {"signet-system/signet"};
    std::string ca_key_key = "ca.key";
    std::string ca_cert_key = "ca.crt";
    // The trust bundle the nodes read (their --trust-bundle-configmap): the
    // signer keeps this ConfigMap key equal to the CA Secret's
    // trust-bundle.pem (else its ca.crt), creating it when missing. It is
    // the only writer (manifests/10-rbac.yaml). "" = do not publish.
    std::string trust_bundle_configmap = "signet-system/signet-trust-bundle";
    std::string trust_bundle_key = "trust-bundle.pem";
    // --health-address: /healthz and /readyz for kubelet's probes ("" = off).
    std::string health_address;
    std::chrono::seconds watch_timeout{300};
    std::chrono::milliseconds backoff_initial{500};
    std::chrono::milliseconds backoff_max{30000};
    kube::InClusterPaths in_cluster;
};

class CsrSigner final : private kube::ReflectorHandler {
public:
    static Result<std::unique_ptr<CsrSigner>> create(CsrSignerOptions opts);
    // For tests: over `api` (requests) and `watch_api` (the watch stream),
    // e.g. recorded answers.
    static std::unique_ptr<CsrSigner> with_api(CsrSignerOptions opts, std::unique_ptr<kube::Api> api,
                                               std::unique_ptr<kube::Api> watch_api);
    // Runs until stop() (from any thread).
    void run();
    void stop();

    struct Stats {
        uint64_t approved = 0, denied = 0, failed = 0, ignored = 0, malformed = 0;
    };
    Stats stats() const;
    // The CA is loaded and the requests were listed (and handled) at least
    // once: what /readyz says. Any thread.
    bool ready() const { return ready_.load(); }

private:
    explicit CsrSigner(CsrSignerOptions opts);
    Status load_ca();
    // Writes the trust bundle ConfigMap when it differs from `pem` (errors
    // are logged and retried at the next relist; signing goes on).
    void publish_bundle(const std::string& pem);
    // The reflector's handler: the CA is re-read at every list (a rotated
    // Secret is picked up); every listed or watched request is handled.
    Status on_list_start() override;
    bool on_list_item(const rapidjson::Value& obj, size_t index) override;
    void on_listed(const std::string& rv) override;
    Result<bool> on_event(const kube::WatchEvent& ev, const std::string& rv) override;
    void report(const std::string& msg) override;

    void handle(const rapidjson::Value& obj);
    void deny(const rapidjson::Value& obj, const std::string& name, const std::string& reason, const std::string& message,
              bool approved);
    void approve_and_sign(const rapidjson::Value& obj, const std::string& name, const std::string& uid,
                          const std::string& node, bool approved, const std::string& request_pem, int64_t seconds);
    Result<kube::Response> call(const std::string& method, const std::string& path, const std::string& body = {});
    Result<kube::Response> put(const std::string& name, const char* sub, const rapidjson::Value& obj);
    // Something failed that a new look may fix (a 409, an unreachable Node
    // check): relist in a second, which handles every request again.
    void retry_soon();
    void note_error(const std::string& what);

    CsrSignerOptions opts_;
    std::unique_ptr<kube::Api> api_;        // requests (also made while a watch streams)
    std::unique_ptr<kube::Api> watch_api_;  // the watch stream: a transfer of its own
    std::unique_ptr<kube::Reflector> reflector_;
    std::optional<identity::Authority> ca_;
    std::string ca_fingerprint_;
    std::string published_bundle_;  // what the ConfigMap held after our last look
    std::set<std::string> done_uids_;  // issued or denied by this process (stale events are skipped)
    std::string last_error_;
    mutable std::mutex mu_;
    Stats stats_;
    std::atomic<bool> ready_{false};
};

// signetd --csr-signer: runs a CsrSigner until SIGTERM/SIGINT; the exit status.
int run_csr_signer(const CsrSignerOptions& opts);

}  // namespace signet::signer
