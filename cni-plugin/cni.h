// The pure part of the `signet` CNI plugin: environment and config parsing,
// version negotiation, prevResult passthrough and the spec's error JSON.
// No I/O here, so all of it is unit-tested and fuzzed without root.
#pragma once

#include <rapidjson/document.h>

#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "signet/api.h"
#include "signet/result.h"

namespace signet::cni {

// Well-known CNI error codes (spec section "Error") and signet's own (100+).
enum Code : int {
    kIncompatibleVersion = 1,
    kUnsupportedField = 2,
    kUnknownContainer = 3,
    kInvalidEnv = 4,
    kIoFailure = 5,
    kDecodeFailure = 6,
    kInvalidConfig = 7,
    kTryAgainLater = 11,
    kNotAvailable = 50,
    // Plugin-specific, documented in docs/cni-plugin.md.
    kControllerRefused = 100,    // signetd answered the request with an error
    kControllerProtocol = 101,   // signetd's answer could not be understood
    kRegistrationMissing = 102,  // CHECK: signetd has no (or a different) registration
    kControllerTimeout = 103,    // signetd accepted the connection but did not answer in time
};

inline constexpr const char* kLatestVersion = "1.1.0";
const std::vector<std::string>& supported_versions();
bool is_supported(std::string_view version);
// Compares dotted versions ("0.4.0" < "1.0.0"); unparseable parts compare as 0.
int compare_versions(std::string_view a, std::string_view b);

enum class Command { add, del, check, version, status, gc };

struct Env {
    Command command = Command::version;
    std::string container_id;
    std::string netns;
    std::string ifname;
    std::string path;
    std::map<std::string, std::string> args;  // CNI_ARGS key=value pairs
};

using GetEnv = std::function<const char*(const char*)>;

// Reads the CNI_* variables the command needs; errors carry kInvalidEnv.
Result<Env> parse_env(const GetEnv& getenv);
Result<Command> parse_command(std::string_view name);
Result<std::map<std::string, std::string>> parse_cni_args(std::string_view text);

struct Config {
    rapidjson::Document doc;  // the whole network config as received
    std::string cni_version;
    std::string name;
    std::string socket = api::kDefaultSocket;
    int timeout_ms = 10000;                        // for ADD (waits until the pod is programmed)
    const rapidjson::Value* prev_result = nullptr;  // into doc, or null
    std::vector<api::GcRequest::Attachment> valid_attachments;  // GC only
    bool has_valid_attachments = false;
};

// Parses the network config from stdin. Errors: kDecodeFailure for bytes that
// are not JSON, kInvalidConfig for JSON that is not a valid config,
// kIncompatibleVersion for an unsupported cniVersion.
Result<Config> parse_config(std::string_view text);

// The version-negotiation result printed for VERSION.
std::string version_json(std::string_view requested_version);

// The error JSON the spec defines, for the given config version (or the
// latest when the version could not be read).
std::string error_json(std::string_view cni_version, int code, std::string_view msg, std::string_view details);

// prevResult as the plugin must print it for the config's cniVersion:
// unchanged except where the spec demands a conversion.
Result<std::string> passthrough(const Config& config);

// The registration for ADD/CHECK, from the environment and prevResult.
// Kubernetes' names (K8S_POD_NAMESPACE, K8S_POD_NAME) must be valid ones
// (api::validate_pod_identity): kInvalidEnv otherwise.
Result<api::PodRegistration> make_registration(const Env& env, const Config& config);

// The pod name for a runtime that is not Kubernetes (no K8S_POD_NAMESPACE):
// its container name when that is a DNS-1123 subdomain, else the name lower
// cased with every character other than [a-z0-9.] made '-' ("My_App" ->
// "my-app"), else the same of the container ID's first 12 characters (dots
// made '-' too, trailing '-' dropped).
std::string pod_name_from_runtime(std::string_view name, std::string_view container_id);

}  // namespace signet::cni
