// libcurl, wrapped: RAII handles and one blocking, interruptible GET that
// streams the body to a callback. Each Transfer belongs to one thread; its
// wakeup() may be called from any thread (curl_multi_wakeup) to make the
// running perform() notice its abort predicate at once.
#pragma once

#include <curl/curl.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "config.h"
#include "signet/result.h"

namespace signet::kube {

struct CurlEasyDeleter {
    void operator()(CURL* h) const { curl_easy_cleanup(h); }
};
struct CurlMultiDeleter {
    void operator()(CURLM* h) const { curl_multi_cleanup(h); }
};
struct CurlSlistDeleter {
    void operator()(curl_slist* l) const { curl_slist_free_all(l); }
};
using CurlEasy = std::unique_ptr<CURL, CurlEasyDeleter>;
using CurlMulti = std::unique_ptr<CURLM, CurlMultiDeleter>;
using CurlSlist = std::unique_ptr<curl_slist, CurlSlistDeleter>;

struct TlsSettings {
    std::string ca_file, ca_pem;
    bool insecure = false;
};

struct HttpRequest {
    std::string url;
    Auth auth;
    TlsSettings tls;
    std::chrono::seconds connect_timeout{10};
    // 0 = none. For watches: timeoutSeconds plus a margin.
    std::chrono::seconds total_timeout{0};
    // Abort when fewer than 1 byte arrives in this long (0 = never); lists.
    std::chrono::seconds stall_timeout{0};
    // Called with body bytes of a 2xx answer; return an error to abort.
    std::function<Status(std::string_view)> on_body;
    // "" = GET. Otherwise the method (POST, PUT, ...) and, when not empty,
    // `body` sent with Content-Type `content_type`.
    std::string method;
    std::string body;
    std::string content_type = "application/json";
};

struct HttpResponse {
    long status = 0;         // 0: no HTTP answer (connection failed, ...)
    std::string error_body;  // the body of a non-2xx answer (first 64 KiB)
    std::string transport_error;  // curl's message when the transfer failed
    Status callback_error;   // what on_body returned when it aborted
    bool aborted = false;    // the abort predicate said stop
};

class Transfer {
public:
    Transfer();
    ~Transfer();
    Transfer(const Transfer&) = delete;
    Transfer& operator=(const Transfer&) = delete;

    // Runs the request to completion, an error, or until `abort()` returns
    // true (checked at least every 500 ms, and at once after wakeup()).
    HttpResponse perform(const HttpRequest& req, const std::function<bool()>& abort);
    void wakeup();

private:
    CurlMulti multi_;
};

}  // namespace signet::kube
