// signet identity: the Kubernetes CertificateSigningRequest objects of
// signet's own signer (certificates.k8s.io/v1, signerName signet.dev/node),
// and the signer's approval decision (docs/handshake.md, "The Kubernetes CSR
// signer"). Pure code, no I/O: the JSON parser reads bytes from the API and
// is fuzzed (test/fuzz/fuzz_csr_object.cpp).
#pragma once

#include <rapidjson/document.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "signet/result.h"

namespace signet::identity::csr {

inline constexpr std::string_view kSignerName = "signet.dev/node";
inline constexpr std::string_view kNodeUserPrefix = "system:node:";
inline constexpr std::string_view kNodesGroup = "system:nodes";
// What the API server adds to spec.extra for a service account token bound to
// a pod (kubelet's projected tokens; Kubernetes 1.30 and later): the node the
// pod runs on. Signed into the token by the API server, not claimed by the pod.
inline constexpr std::string_view kNodeNameExtra = "authentication.kubernetes.io/node-name";
// The node agent's service account (manifests/10-rbac.yaml), as a username.
inline constexpr std::string_view kDefaultNodeAgent = "system:serviceaccount:signet-system:signet";
// The usages a node certificate has (and the only ones a request may ask for).
inline constexpr const char* kUsages[] = {"digital signature", "key agreement", "client auth", "server auth"};
inline constexpr int64_t kMaxExpirationSeconds = 86400;  // 24 h: expiry is the revocation

// A CertificateSigningRequest as the signer needs it.
struct CsrObject {
    std::string name, uid, resource_version;
    std::string signer_name;
    std::string username;               // spec.username: set by the API server from the requestor
    std::vector<std::string> groups;    // spec.groups
    std::vector<std::string> usages;    // spec.usages
    std::vector<std::pair<std::string, std::vector<std::string>>> extra;  // spec.extra, as the API server set it
    std::optional<int64_t> expiration_seconds;
    std::string request_pem;            // spec.request, base64-decoded
    bool approved = false, denied = false, failed = false;
    std::string denied_message, failed_message;  // "reason: message" of those conditions
    std::string certificate_pem;        // status.certificate, decoded ("" = not issued)
    // Set when the object has a name but its spec/status is not what the API
    // defines (wrong types, bad base64): such a request is denied, never signed.
    std::string malformed;
};

// Parses one object (a watch event's object or a list item). An Error only
// when the object is not an object or has no usable metadata.name.
Result<CsrObject> parse_csr_object(const rapidjson::Value& obj);
Result<CsrObject> parse_csr_json(std::string_view json);

// What a PEM CSR says, checked: its subject attributes, key and signature.
struct CsrInfo {
    std::string cn, org;
    int subject_entries = 0;  // all attributes of the subject
    bool p256 = false;
    bool signature_ok = false;
};
Result<CsrInfo> inspect_csr(std::string_view pem);

enum class Action {
    Ignore,     // another signer's request: not ours to touch
    Done,       // already denied, failed or issued: nothing to do
    Deny,       // add a Denied condition (reason, message)
    CheckNode,  // all checks passed but one: the Node object `node` must exist; then approve and sign
};
struct Verdict {
    Action action = Action::Ignore;
    std::string node;     // the requesting node (Deny/CheckNode when known)
    std::string reason;   // CamelCase condition reason for Deny
    std::string message;  // human-readable
};

// The approval decision without the API: signer name, state, requestor, the
// CSR itself (readable, P-256, signature verifies, subject exactly CN=<name>,
// O=<trust domain>) and the usages. The requestor is either a node
// (system:node:<name> in group system:nodes: the kubelet's credentials), or
// one of `node_agents` (usernames such as
// system:serviceaccount:signet-system:signet) with exactly one
// spec.extra[authentication.kubernetes.io/node-name] = <name>: the pod-bound
// token of a signetd on node <name>.
Verdict decide(const CsrObject& csr, const std::string& trust_domain,
               const std::vector<std::string>& node_agents = {});
// The last check: Deny "no Node object <name>" when it does not exist.
Verdict with_node(Verdict v, bool node_exists);

// The expiration the signer grants: the request's, capped at 24 h (default 24 h).
int64_t granted_seconds(const CsrObject& csr);

// Standard base64 with padding, as Kubernetes encodes []byte in JSON.
std::string base64_encode(std::string_view data);
std::optional<std::string> base64_decode(std::string_view text);

}  // namespace signet::identity::csr
