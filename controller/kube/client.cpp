#include "kube/client.h"

#include "kube/watch_stream.h"

namespace signet::kube {

Result<std::unique_ptr<KubeClient>> KubeClient::create(const std::string& kubeconfig, const InClusterPaths& in_cluster,
                                                       const std::string& context) {
    auto cfg = kubeconfig.empty() ? in_cluster_config(in_cluster) : load_kubeconfig(kubeconfig, context);
    if (!cfg) return cfg.error();
    auto creds = std::make_shared<Credentials>(*cfg);
    return std::unique_ptr<KubeClient>(new KubeClient(std::move(*cfg), std::move(creds)));
}

KubeClient::KubeClient(ClientConfig cfg, std::shared_ptr<Credentials> creds)
    : cfg_(std::move(cfg)), creds_(std::move(creds)) {}

std::unique_ptr<KubeClient> KubeClient::another() const {
    return std::unique_ptr<KubeClient>(new KubeClient(cfg_, creds_));
}

void KubeClient::stop() {
    stopping_ = true;
    transfer_.wakeup();
}

HttpRequest KubeClient::request(const std::string& path, Status* creds_error) {
    HttpRequest req;
    req.url = cfg_.server + path;
    req.tls.ca_file = cfg_.ca_file;
    req.tls.ca_pem = cfg_.ca_pem;
    req.tls.insecure = cfg_.insecure_skip_tls_verify;
    auto a = creds_->get();
    if (!a) *creds_error = a.error();
    else req.auth = std::move(*a);
    return req;
}

std::string Response::describe() const {
    auto st = parse_api_status(body, static_cast<int>(status));
    return "HTTP " + std::to_string(status) + (st.reason.empty() ? "" : " " + st.reason) +
           (st.message.empty() ? "" : ": " + st.message);
}

Result<Response> KubeClient::call(const std::string& method, const std::string& path, const std::string& body,
                                  std::chrono::seconds timeout) {
    Request r;
    r.method = method;
    r.path = path;
    r.body = body;
    r.timeout = timeout;
    return call(r);
}

Result<Response> KubeClient::call(const Request& in) {
    for (int attempt = 0;; ++attempt) {
        if (stopping_) return make_error(ECANCELED, "stopped");
        Status cred_err;
        auto req = request(in.path, &cred_err);
        if (!cred_err) return make_error(cred_err.error().code, "credentials: " + cred_err.error().message);
        req.method = in.method == "GET" ? std::string() : in.method;
        req.body = in.body;
        req.content_type = in.content_type;
        req.total_timeout = in.timeout;
        req.stall_timeout = in.stall;
        Response out;
        const size_t max = in.max_body;
        req.on_body = [&out, max](std::string_view d) -> Status {
            if (out.body.size() + d.size() > max)
                return make_error(EFBIG, "answer larger than " + std::to_string(max >> 20) + " MiB");
            out.body.append(d);
            return {};
        };
        auto resp = transfer_.perform(req, [this] { return stopping_.load(); });
        if (resp.aborted) return make_error(ECANCELED, "stopped");
        if (!resp.callback_error) return resp.callback_error.error();
        if (resp.status == 0 || (resp.status >= 200 && resp.status < 300 && !resp.transport_error.empty()))
            return make_error(EIO, "cannot reach " + cfg_.server + in.path + ": " +
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

Result<StreamEnd> KubeClient::stream(const std::string& path, const std::function<Status(std::string_view)>& on_body,
                                     std::chrono::seconds timeout, const std::function<bool()>& abort) {
    if (stopping_) return make_error(ECANCELED, "stopped");
    Status cred_err;
    auto req = request(path, &cred_err);
    if (!cred_err) return make_error(cred_err.error().code, "credentials: " + cred_err.error().message);
    req.total_timeout = timeout;
    req.on_body = on_body;
    auto resp = transfer_.perform(req, [&] { return stopping_.load() || (abort && abort()); });
    if (resp.aborted) return make_error(ECANCELED, "stopped");
    if (!resp.callback_error) return resp.callback_error.error();
    if (resp.status == 401) creds_->unauthorized(req.auth);
    StreamEnd end;
    end.status = resp.status;
    end.error_body = std::move(resp.error_body);
    end.transport_error = std::move(resp.transport_error);
    return end;
}

std::pair<std::string, std::string> split_ref(const std::string& ref, const std::string& default_ns) {
    auto slash = ref.find('/');
    if (slash == std::string::npos) return {default_ns, ref};
    return {ref.substr(0, slash), ref.substr(slash + 1)};
}

}  // namespace signet::kube
