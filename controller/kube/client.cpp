#include "kube/client.h"

#include "source/kubernetes/watch_stream.h"

namespace signet::kube {

namespace k8s = source::k8s;

Result<std::unique_ptr<KubeClient>> KubeClient::create(const std::string& kubeconfig,
                                                       const k8s::InClusterPaths& in_cluster) {
    auto cfg = kubeconfig.empty() ? k8s::in_cluster_config(in_cluster) : k8s::load_kubeconfig(kubeconfig);
    if (!cfg) return cfg.error();
    return std::unique_ptr<KubeClient>(new KubeClient(std::move(*cfg)));
}

KubeClient::KubeClient(k8s::ClientConfig cfg)
    : cfg_(cfg), creds_(std::make_unique<k8s::Credentials>(std::move(cfg))) {}

void KubeClient::stop() {
    stopping_ = true;
    transfer_.wakeup();
}

k8s::HttpRequest KubeClient::request(const std::string& path, Status* creds_error) {
    k8s::HttpRequest req;
    req.url = cfg_.server + path;
    req.tls.ca_file = cfg_.ca_file;
    req.tls.ca_pem = cfg_.ca_pem;
    req.tls.insecure = cfg_.insecure_skip_tls_verify;
    auto a = creds_->get();
    if (!a) *creds_error = a.error();
    else req.auth = std::move(*a);
    return req;
}

std::string KubeClient::Response::describe() const {
    auto st = k8s::parse_api_status(body, static_cast<int>(status));
    return "HTTP " + std::to_string(status) + (st.reason.empty() ? "" : " " + st.reason) +
           (st.message.empty() ? "" : ": " + st.message);
}

Result<KubeClient::Response> KubeClient::call(const std::string& method, const std::string& path,
                                              const std::string& body, std::chrono::seconds timeout) {
    for (int attempt = 0;; ++attempt) {
        if (stopping_) return make_error(ECANCELED, "stopped");
        Status cred_err;
        auto req = request(path, &cred_err);
        if (!cred_err) return make_error(cred_err.error().code, "credentials: " + cred_err.error().message);
        req.method = method;
        req.body = body;
        req.total_timeout = timeout;
        Response out;
        req.on_body = [&out](std::string_view d) -> Status {
            if (out.body.size() + d.size() > (16u << 20)) return make_error(EFBIG, "answer larger than 16 MiB");
            out.body.append(d);
            return {};
        };
        auto resp = transfer_.perform(req, [this] { return stopping_.load(); });
        if (resp.aborted) return make_error(ECANCELED, "stopped");
        if (!resp.callback_error) return resp.callback_error.error();
        if (resp.status == 0)
            return make_error(EIO, method + " " + cfg_.server + path + ": " +
                                       (resp.transport_error.empty() ? "no answer" : resp.transport_error));
        out.status = resp.status;
        if (resp.status < 200 || resp.status >= 300) out.body = std::move(resp.error_body);
        if (resp.status == 401 && attempt == 0) {
            creds_->unauthorized(req.auth);
            continue;
        }
        return out;
    }
}

Result<long> KubeClient::stream(const std::string& path, const std::function<Status(std::string_view)>& on_body,
                                std::chrono::seconds timeout, std::string* error_body) {
    if (stopping_) return make_error(ECANCELED, "stopped");
    Status cred_err;
    auto req = request(path, &cred_err);
    if (!cred_err) return make_error(cred_err.error().code, "credentials: " + cred_err.error().message);
    req.total_timeout = timeout;
    req.on_body = on_body;
    auto resp = transfer_.perform(req, [this] { return stopping_.load(); });
    if (resp.aborted) return make_error(ECANCELED, "stopped");
    if (!resp.callback_error) return resp.callback_error.error();
    if (resp.status == 401) creds_->unauthorized(req.auth);
    if (resp.status == 0)
        return make_error(EIO, "GET " + cfg_.server + path + ": " +
                                   (resp.transport_error.empty() ? "no answer" : resp.transport_error));
    if (error_body) *error_body = std::move(resp.error_body);
    return resp.status;
}

std::pair<std::string, std::string> split_ref(const std::string& ref, const std::string& default_ns) {
    auto slash = ref.find('/');
    if (slash == std::string::npos) return {default_ns, ref};
    return {ref.substr(0, slash), ref.substr(slash + 1)};
}

}  // namespace signet::kube
