// libcurl's process-wide initialisation, run once for every user in the
// process (the Kubernetes client in kube/, the InfluxDB exporter in
// export/): curl_global_init() must run exactly once before the first
// handle and is not thread-safe in every libcurl build. Header-only, so
// common/ needs no libcurl; its includers link libcurl themselves.
#pragma once

#include <curl/curl.h>

#include <mutex>

namespace signet {

inline void curl_global_once() {
    static std::once_flag once;  // one object for the whole program (inline function)
    std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

}  // namespace signet
