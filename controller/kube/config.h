// How signetd reaches the Kubernetes API: in-cluster configuration or a
// kubeconfig file, resolved as client-go resolves them, and the credentials
// that go with every request (static token, token file re-read on rotation,
// client certificate, exec credential plugin).
//
// Pure parsing (parse_kubeconfig) is separate from I/O so it can be fuzzed.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "signet/result.h"

namespace signet::kube {

// users[].user.exec of a kubeconfig (client.authentication.k8s.io v1 / v1beta1).
struct ExecConfig {
    std::string api_version;  // client.authentication.k8s.io/v1 or .../v1beta1
    std::string command;      // resolved against the kubeconfig's folder when relative with a '/'
    std::vector<std::string> args;
    std::vector<std::pair<std::string, std::string>> env;
    std::string interactive_mode;  // Never | IfAvailable | Always ("" in v1beta1)
    bool provide_cluster_info = false;
    std::string install_hint;
};

struct ClientConfig {
    std::string server;  // "https://10.96.0.1:443", no trailing '/'
    // TLS: certificate authority as a file or PEM data (decoded from base64).
    std::string ca_file;
    std::string ca_pem;
    bool insecure_skip_tls_verify = false;
    // Client certificate: file or PEM data for each of certificate and key.
    std::string client_cert_file, client_cert_pem;
    std::string client_key_file, client_key_pem;
    // Bearer token: literal, or a file re-read when it changes (rotation).
    std::string token;
    std::string token_file;
    std::string username, password;  // basic auth (rare; kept for completeness)
    std::optional<ExecConfig> exec;
    // Where it came from, for status and messages.
    std::string origin;  // "in-cluster" or the kubeconfig path
    std::string context, cluster, user;
};

// The in-cluster locations, overridable for tests.
struct InClusterPaths {
    std::string token_file = "/var/run/secrets/kubernetes.io/serviceaccount/token";
    std::string ca_file = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
    // Read from the environment when empty (KUBERNETES_SERVICE_HOST / _PORT).
    std::string host;
    std::string port;
};

// rest.InClusterConfig(): https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT
// (IPv6 hosts bracketed), the service account token file, and its CA.
Result<ClientConfig> in_cluster_config(const InClusterPaths& paths = {});

// Parses kubeconfig YAML. `base_dir` resolves relative file paths (as
// client-go resolves them against the kubeconfig's folder). `context`
// overrides current-context when not empty. Never throws; text above 4 MiB
// is refused.
Result<ClientConfig> parse_kubeconfig(std::string_view yaml, const std::string& base_dir,
                                      const std::string& context = {});
Result<ClientConfig> load_kubeconfig(const std::string& path, const std::string& context = {});

// Standard base64 (with or without padding, whitespace ignored).
Result<std::string> base64_decode(std::string_view text);
// RFC 3339 timestamp ("2024-05-01T10:00:00Z", "…+02:00", fractional seconds)
// to UTC seconds since the epoch.
std::optional<int64_t> parse_rfc3339(std::string_view text);

// ---------------------------------------------------------------------------
// Credentials for one request, as client-go's transport would send them.

struct Auth {
    std::string bearer;                 // "" = none
    std::string cert_pem, key_pem;      // client certificate from data or an exec plugin
    std::string cert_file, key_file;    // client certificate from files
    std::string username, password;
};

// What an exec plugin printed (ExecCredential status).
struct ExecCredential {
    std::string token;
    std::string client_certificate_data, client_key_data;
    std::optional<int64_t> expiration;  // UTC epoch seconds
};
// Parses the plugin's stdout; `api_version` is the one the kubeconfig asked for.
Result<ExecCredential> parse_exec_credential(std::string_view json_text, std::string_view api_version);

// Thread-safe provider shared by all requests of a client.
class Credentials {
public:
    explicit Credentials(ClientConfig cfg);
    // The credentials for the next request: re-reads a rotated token file,
    // runs the exec plugin when there is no credential yet or it expired.
    Result<Auth> get();
    // The server answered 401 to a request made with `used`: forget a cached
    // exec credential (re-run next time) and re-read the token file.
    void unauthorized(const Auth& used);
    uint64_t exec_runs() const;
    const ClientConfig& config() const { return cfg_; }

private:
    Status read_token_file_locked(bool force);
    Status run_exec_locked();

    ClientConfig cfg_;
    mutable std::mutex mu_;
    // token file state
    std::string file_token_;
    int64_t file_mtime_ns_ = -1;
    uint64_t file_ino_ = 0;
    int64_t file_size_ = -1;
    // exec state
    std::optional<ExecCredential> exec_cred_;
    uint64_t exec_runs_ = 0;
};

// Runs an exec plugin (fork/exec, stdin /dev/null, stdout captured, 60 s
// limit). Exposed for tests.
Result<ExecCredential> run_exec_plugin(const ExecConfig& exec, const ClientConfig& cluster);

}  // namespace signet::kube
