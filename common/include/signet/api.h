// The controller's socket API types, shared by the CNI plugin, signetd and
// signetctl. The wire format is HTTP/1.1 + JSON; docs/api.md describes it.
#pragma once

#include <rapidjson/document.h>

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "signet/result.h"

namespace signet::api {

inline constexpr const char* kDefaultSocket = "/run/signet/signetd.sock";
inline constexpr const char* kDefaultStateDir = "/var/lib/signet";

struct ContainerPort {
    std::string name;
    int32_t port = 0;
    std::string protocol = "TCP";
    bool operator==(const ContainerPort&) const = default;
};

// What the CNI plugin registers: one CNI attachment (containerID, ifname).
struct PodRegistration {
    std::string container_id;
    std::string ifname;
    std::string netns;               // path as given in CNI_NETNS
    std::string network;             // the conflist's network name
    std::string namespace_;          // K8S_POD_NAMESPACE ("default" when absent)
    std::string name;                // K8S_POD_NAME
    std::string uid;                 // K8S_POD_UID (may be empty)
    std::string infra_container_id;  // K8S_POD_INFRA_CONTAINER_ID (may be empty)
    std::vector<std::string> ips;    // CIDR notation, from prevResult
    std::string mac;                 // interface MAC from prevResult (may be empty)
    bool operator==(const PodRegistration&) const = default;
};

// A registered pod as the controller reports it: the registration plus what
// the controller resolved from its source.
struct PodRecord {
    PodRegistration reg;
    int64_t registered_at = 0;  // unix seconds
    uint64_t netns_inode = 0;   // inode of the netns at registration; a recreated netns differs
    bool has_object = false;    // a Pod object with this namespace/name exists in the source
    std::map<std::string, std::string> labels;
    std::vector<ContainerPort> container_ports;
    uint64_t applied_version = 0;  // source version last applied to this pod
};

struct GcRequest {
    std::string network;
    struct Attachment {
        std::string container_id;
        std::string ifname;
    };
    std::vector<Attachment> valid;
};

std::string key(std::string_view container_id, std::string_view ifname);

void to_json(const PodRegistration& r, rapidjson::Value& out, rapidjson::Document::AllocatorType& a);
Result<PodRegistration> registration_from_json(const rapidjson::Value& v);
void to_json(const PodRecord& r, rapidjson::Value& out, rapidjson::Document::AllocatorType& a);
Result<PodRecord> record_from_json(const rapidjson::Value& v);
void to_json(const GcRequest& r, rapidjson::Value& out, rapidjson::Document::AllocatorType& a);
Result<GcRequest> gc_from_json(const rapidjson::Value& v);

// Validation shared by plugin and controller (CNI spec rules).
bool valid_container_id(std::string_view id);
bool valid_ifname(std::string_view name);

// Kubernetes' name rules (apimachinery's IsDNS1123Label/IsDNS1123Subdomain):
// a label is 1..63 of [a-z0-9-], starting and ending alphanumeric; a
// subdomain is 1..253 bytes of such labels joined by dots. Namespaces are
// labels, pod names subdomains.
bool valid_dns1123_label(std::string_view s);
bool valid_dns1123_subdomain(std::string_view s);
// Why a namespace / pod name is invalid ("" when valid), for error messages.
std::string namespace_problem(std::string_view ns);
std::string pod_name_problem(std::string_view name);

// The identity fields of a registration as POST /v1/pods accepts them:
// namespace a DNS-1123 label, name a DNS-1123 subdomain, uid (optional) at
// most 128 bytes of [A-Za-z0-9._-], infraContainerID (optional) a container
// ID. The error names the field. Separate from registration_from_json so that
// a registry persisted by an older signetd still loads.
Status validate_pod_identity(const PodRegistration& r);

// Errors of POST /v1/pods about values that came from the CNI runtime's
// environment carry the CNI error code the plugin should return, in this
// member of the error object (docs/api.md).
inline constexpr const char* kCniCodeField = "cniCode";

}  // namespace signet::api
