#include "http.h"

#include "signet/curl_init.h"

namespace signet::kube {

Transfer::Transfer() {
    curl_global_once();
    multi_.reset(curl_multi_init());
}

Transfer::~Transfer() = default;

void Transfer::wakeup() {
    if (multi_) curl_multi_wakeup(multi_.get());
}

namespace {

struct Ctx {
    const HttpRequest* req;
    HttpResponse* resp;
    CURL* easy;
};

size_t on_write(char* ptr, size_t size, size_t n, void* user) {
    auto* c = static_cast<Ctx*>(user);
    size_t len = size * n;
    long code = 0;
    curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &code);
    if (code >= 200 && code < 300) {
        if (c->req->on_body) {
            Status st = c->req->on_body(std::string_view(ptr, len));
            if (!st) {
                c->resp->callback_error = st;
                return CURL_WRITEFUNC_ERROR;
            }
        }
    } else if (c->resp->error_body.size() < 65536) {
        c->resp->error_body.append(ptr, std::min(len, 65536 - c->resp->error_body.size()));
    }
    return len;
}

void set_blob(CURL* h, CURLoption opt, const std::string& data) {
    curl_blob b{};
    b.data = const_cast<char*>(data.data());
    b.len = data.size();
    b.flags = CURL_BLOB_COPY;
    curl_easy_setopt(h, opt, &b);
}

}  // namespace

HttpResponse Transfer::perform(const HttpRequest& req, const std::function<bool()>& abort) {
    HttpResponse resp;
    CurlEasy easy(curl_easy_init());
    if (!easy || !multi_) {
        resp.transport_error = "cannot initialise libcurl";
        return resp;
    }
    CURL* h = easy.get();
    Ctx ctx{&req, &resp, h};
    char errbuf[CURL_ERROR_SIZE] = {};
    curl_easy_setopt(h, CURLOPT_URL, req.url.c_str());
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &ctx);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "signetd/" SIGNET_VERSION " (linux) kubernetes-source");
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, static_cast<long>(req.connect_timeout.count()));
    if (req.total_timeout.count() > 0) curl_easy_setopt(h, CURLOPT_TIMEOUT, static_cast<long>(req.total_timeout.count()));
    if (req.stall_timeout.count() > 0) {
        curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
        curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, static_cast<long>(req.stall_timeout.count()));
    }
    // Dead peers on idle watches are found by TCP keepalive.
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPIDLE, 30L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPINTVL, 10L);
    curl_easy_setopt(h, CURLOPT_ACCEPT_ENCODING, "");  // gzip when the server offers it
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    // TLS: verification on unless insecure-skip-tls-verify.
    if (req.tls.insecure) {
        curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 0L);
    } else {
        curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
        curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
        if (!req.tls.ca_pem.empty()) set_blob(h, CURLOPT_CAINFO_BLOB, req.tls.ca_pem);
        else if (!req.tls.ca_file.empty()) curl_easy_setopt(h, CURLOPT_CAINFO, req.tls.ca_file.c_str());
    }
    const Auth& a = req.auth;
    if (!a.cert_pem.empty()) {
        set_blob(h, CURLOPT_SSLCERT_BLOB, a.cert_pem);
        curl_easy_setopt(h, CURLOPT_SSLCERTTYPE, "PEM");
        set_blob(h, CURLOPT_SSLKEY_BLOB, a.key_pem);
        curl_easy_setopt(h, CURLOPT_SSLKEYTYPE, "PEM");
    } else if (!a.cert_file.empty()) {
        curl_easy_setopt(h, CURLOPT_SSLCERT, a.cert_file.c_str());
        curl_easy_setopt(h, CURLOPT_SSLKEY, a.key_file.c_str());
    }
    CurlSlist headers;
    auto add = [&](const std::string& line) {
        curl_slist* n = curl_slist_append(headers.get(), line.c_str());
        if (n) {
            (void)headers.release();
            headers.reset(n);
        }
    };
    add("Accept: application/json, */*");
    if (!a.bearer.empty()) {
        add("Authorization: Bearer " + a.bearer);
    } else if (!a.username.empty()) {
        curl_easy_setopt(h, CURLOPT_HTTPAUTH, CURLAUTH_BASIC);
        curl_easy_setopt(h, CURLOPT_USERNAME, a.username.c_str());
        curl_easy_setopt(h, CURLOPT_PASSWORD, a.password.c_str());
    }
    if (!req.method.empty() && req.method != "GET") {
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, req.method.c_str());
        if (!req.body.empty() || req.method == "POST" || req.method == "PUT") {
            curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(req.body.size()));
            curl_easy_setopt(h, CURLOPT_COPYPOSTFIELDS, req.body.c_str());
            add("Content-Type: " + req.content_type);
            add("Expect:");
        }
    }
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers.get());

    curl_multi_add_handle(multi_.get(), h);
    CURLcode result = CURLE_OK;
    bool done = false;
    while (!done) {
        if (abort && abort()) {
            resp.aborted = true;
            break;
        }
        int running = 0;
        CURLMcode mc = curl_multi_perform(multi_.get(), &running);
        if (mc != CURLM_OK) {
            resp.transport_error = curl_multi_strerror(mc);
            break;
        }
        int left = 0;
        while (CURLMsg* m = curl_multi_info_read(multi_.get(), &left)) {
            if (m->msg == CURLMSG_DONE) {
                result = m->data.result;
                done = true;
            }
        }
        if (done || running == 0) {
            done = true;
            break;
        }
        curl_multi_poll(multi_.get(), nullptr, 0, 500, nullptr);
    }
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &resp.status);
    curl_multi_remove_handle(multi_.get(), h);
    if (!resp.aborted && done && result != CURLE_OK && resp.callback_error.ok()) {
        resp.transport_error = errbuf[0] ? std::string(errbuf) : std::string(curl_easy_strerror(result));
        while (!resp.transport_error.empty() && resp.transport_error.back() == '\n') resp.transport_error.pop_back();
    }
    return resp;
}

}  // namespace signet::kube
