// signetd's one Kubernetes API client: the configuration and credentials of
// kube/config.h, HTTP on libcurl (kube/http.h), one request at a time on the
// calling thread. Used by the Kubernetes source's reflectors, the CSR client
// and the CSR signer. A 401 refreshes the credentials and retries once, as
// client-go does.
//
// kube::Api is what list/watch loops (kube/reflector.h) ask of the API
// server; KubeClient is the real one, and the unit tests play recorded
// answers through the same interface (test/unit/kube_fake.h).
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "kube/config.h"
#include "kube/http.h"
#include "signet/result.h"

namespace signet::kube {

struct Response {
    long status = 0;   // HTTP status (transport failures are Errors)
    std::string body;  // the body, 2xx or not (bounded by the request's max_body / 64 KiB)
    // "HTTP 404 NotFound: nodes \"x\" not found" for messages.
    std::string describe() const;
};

struct Request {
    std::string method = "GET";  // GET, POST, PUT, PATCH
    std::string path;            // from the server root ("/api/v1/nodes/x?limit=1")
    std::string body;            // sent with content_type when not empty
    // A PATCH names its kind here: application/json-patch+json,
    // application/merge-patch+json or application/strategic-merge-patch+json.
    std::string content_type = "application/json";
    std::chrono::seconds timeout{30};  // the whole request
    std::chrono::seconds stall{0};     // abort when no byte arrives in this long (0 = never)
    size_t max_body = 16u << 20;
};

// How a streaming GET (a watch) ended.
struct StreamEnd {
    long status = 0;              // 0: no HTTP answer (transport_error says why)
    std::string error_body;       // the body of a non-2xx answer
    std::string transport_error;  // the connection failed or dropped (also after a 2xx)
};

class Api {
public:
    virtual ~Api() = default;
    // Errors: ECANCELED (stopped), credentials, EFBIG (body above max_body),
    // EIO "cannot reach URL: why" (no HTTP answer).
    virtual Result<Response> call(const Request& req) = 0;
    // A streaming GET: body bytes of a 2xx answer go to `on_body` until the
    // server ends the response, the connection drops, `on_body` fails (its
    // error is returned), `abort()` says stop, or stop() (ECANCELED).
    virtual Result<StreamEnd> stream(const std::string& path, const std::function<Status(std::string_view)>& on_body,
                                     std::chrono::seconds timeout, const std::function<bool()>& abort) = 0;
    // Makes a running request check its abort predicate at once (any thread).
    virtual void wakeup() = 0;
    // Makes a running or later request return ECANCELED (any thread).
    virtual void stop() = 0;
    virtual bool stopped() const = 0;
    virtual const std::string& server() const = 0;
};

class KubeClient final : public Api {
public:
    // kubeconfig "" = the in-cluster configuration; context "" = current-context.
    static Result<std::unique_ptr<KubeClient>> create(const std::string& kubeconfig, const InClusterPaths& in_cluster = {},
                                                      const std::string& context = {});
    // Another client of the same server and credentials (one exec plugin
    // run, one token file watch) with a transfer of its own: for a second
    // thread, or a watch that streams while requests are made.
    std::unique_ptr<KubeClient> another() const;

    Result<Response> call(const Request& req) override;
    // The common case: `method` `path` with an optional body.
    Result<Response> call(const std::string& method, const std::string& path, const std::string& body = {},
                          std::chrono::seconds timeout = std::chrono::seconds(30));
    Result<StreamEnd> stream(const std::string& path, const std::function<Status(std::string_view)>& on_body,
                             std::chrono::seconds timeout, const std::function<bool()>& abort) override;
    void wakeup() override { transfer_.wakeup(); }
    void stop() override;
    bool stopped() const override { return stopping_.load(); }
    const std::string& server() const override { return cfg_.server; }
    const ClientConfig& config() const { return cfg_; }
    uint64_t exec_runs() const { return creds_->exec_runs(); }

private:
    KubeClient(ClientConfig cfg, std::shared_ptr<Credentials> creds);
    HttpRequest request(const std::string& path, Status* creds_error);

    ClientConfig cfg_;
    std::shared_ptr<Credentials> creds_;
    Transfer transfer_;
    std::atomic<bool> stopping_{false};
};

// "ns/name" -> {ns, name}; a bare name is in `default_ns`.
std::pair<std::string, std::string> split_ref(const std::string& ref, const std::string& default_ns);

}  // namespace signet::kube
