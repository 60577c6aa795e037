// libFuzzer target: arbitrary bytes as a kubeconfig, and as an exec
// plugin's ExecCredential output. Errors are fine; crashes, hangs and
// exceptions are not.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "../../controller/kube/config.h"

using namespace signet::kube;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string_view text(reinterpret_cast<const char*>(data), size);
    auto c = parse_kubeconfig(text, "/nonexistent");
    if (c) {
        if (c->server.rfind("http", 0) != 0) std::abort();
    } else if (c.error().message.empty()) {
        std::abort();
    }
    (void)parse_kubeconfig(text, "", "other");
    (void)parse_exec_credential(text, "client.authentication.k8s.io/v1");
    (void)base64_decode(text);
    (void)parse_rfc3339(text);
    return 0;
}
