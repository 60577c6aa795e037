// Manifest parsing: the text of a file as `kubectl apply -f FILE` takes it
// (YAML, possibly multi-document, or JSON) into typed objects.
//
// YAML is first converted to a RapidJSON tree with the scalar typing of
// kubectl's YAML->JSON conversion (YAML 1.1, as sigs.k8s.io/yaml does), then
// one typed decoder reads JSON for both formats. The decoders are public so
// that other sources (the Kubernetes API watch) read objects the same way.
#pragma once

#include <rapidjson/document.h>

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "../cache/objects.h"
#include "signet/result.h"

namespace signet::source {

using cache::Object;

// Input bounds. A file above kMaxManifestBytes is refused; nesting deeper than
// kMaxDepth or more than kMaxNodes values in one file are errors. Values are
// counted after YAML alias expansion, so alias bombs ("billion laughs") are
// cut short; YAML nodes before expansion are bounded by kMaxNodes as well.
// Dense manifests run at about 8 bytes per value, so a file near 4 MiB can
// hit the node bound first; such files should be split.
inline constexpr size_t kMaxManifestBytes = size_t{4} << 20;  // 4 MiB
inline constexpr int kMaxDepth = 64;
inline constexpr size_t kMaxNodes = 500'000;

// Error codes (Error::code): EINVAL for an invalid manifest, EFBIG for a
// file over kMaxManifestBytes.

// Parses every document of a file. Skips empty documents; flattens `List`
// (v1), `NamespaceList`, `PodList`, `ServiceList` and `NetworkPolicyList`;
// checks that apiVersion matches the kind (v1 for Namespace, Pod and Service,
// networking.k8s.io/v1 for NetworkPolicy). Objects of other kinds are not returned: when `ignored`
// is given, one line per such object is appended to it, e.g.
// "document 3: apps/v1 Deployment default/web".
//
// Any invalid document makes the whole file an error. Messages read
//   "<filename>: document <n>: <field path>: <problem>"
// with n counted from 1 (List items add "items[i]." to the path).
Result<std::vector<Object>> parse_manifest(std::string_view text, std::string_view filename,
                                           std::vector<std::string>* ignored = nullptr);

// Converts YAML text to JSON as kubectl does: a JSON array with one value per
// YAML document (empty documents become null). Enforces kMaxDepth and
// kMaxNodes; errors name the line and column. Exposed for tests and tools.
Result<rapidjson::Document> yaml_to_json(std::string_view text);

// Typed decoders for one object (already a JSON object). They read only the
// fields signet needs, check their types, apply defaults (namespace
// "default", the namespace name label, policyTypes) and validate as the API
// server does. Error messages start with the field path from the object root.
// They do not check kind/apiVersion.
Result<cache::Namespace> decode_namespace(const rapidjson::Value& obj);
Result<cache::Pod> decode_pod(const rapidjson::Value& obj);
Result<cache::NetworkPolicy> decode_network_policy(const rapidjson::Value& obj);
// A Service (v1): type (default ClusterIP), spec.clusterIPs else spec.clusterIP
// ("None", headless, is no address), externalIPs, ports (protocol default TCP;
// targetPort a number or a port name, kept as written; nodePort),
// selector (absent or empty: none, as the API server stores it),
// internalTrafficPolicy, status.loadBalancer.ingress[*].ip. Ports are
// required unless the Service is headless or of type ExternalName.
Result<cache::Service> decode_service(const rapidjson::Value& obj);

}  // namespace signet::source
