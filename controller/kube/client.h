// A small blocking Kubernetes REST client for the CSR client and signer
// (controller/core/csr_client.h, csr_signer.h): one request at a time on the
// calling thread, over the same configuration, credentials and libcurl
// transfer as the Kubernetes source (controller/source/kubernetes/). A 401
// refreshes the credentials and retries once, as client-go does.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "source/kubernetes/config.h"
#include "source/kubernetes/http.h"
#include "signet/result.h"

namespace signet::kube {

class KubeClient {
public:
    // kubeconfig "" = the in-cluster configuration.
    static Result<std::unique_ptr<KubeClient>> create(const std::string& kubeconfig,
                                                      const source::k8s::InClusterPaths& in_cluster = {});

    struct Response {
        long status = 0;   // HTTP status; 0 never (transport failures are Errors)
        std::string body;  // the body, 2xx or not (bounded at 16 MiB / 64 KiB)
        // "HTTP 404 NotFound: nodes \"x\" not found" for messages.
        std::string describe() const;
    };

    // method GET, POST, PUT; path from the server root ("/api/v1/nodes/x").
    // Errors: transport failures, stopped, credentials.
    Result<Response> call(const std::string& method, const std::string& path, const std::string& body = {},
                          std::chrono::seconds timeout = std::chrono::seconds(30));
    // A streaming GET (watch): body bytes go to `on_body` until the server
    // ends the response, `on_body` fails, or stop(). Returns the HTTP status
    // (the error body of a non-2xx answer in *error_body).
    Result<long> stream(const std::string& path, const std::function<Status(std::string_view)>& on_body,
                        std::chrono::seconds timeout, std::string* error_body);

    // Makes a running or later request return at once (any thread).
    void stop();
    bool stopped() const { return stopping_.load(); }
    const std::string& server() const { return cfg_.server; }

private:
    explicit KubeClient(source::k8s::ClientConfig cfg);
    source::k8s::HttpRequest request(const std::string& path, Status* creds_error);

    source::k8s::ClientConfig cfg_;
    std::unique_ptr<source::k8s::Credentials> creds_;
    source::k8s::Transfer transfer_;
    std::atomic<bool> stopping_{false};
};

// "ns/name" -> {ns, name}; a bare name is in `default_ns`.
std::pair<std::string, std::string> split_ref(const std::string& ref, const std::string& default_ns);

}  // namespace signet::kube
