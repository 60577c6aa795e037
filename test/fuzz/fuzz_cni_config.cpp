// Network config from the runtime (stdin of the plugin), through every pure step of ADD.
#include <cstdint>
#include <string_view>

#include "cni.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using namespace signet;
    std::string_view text(reinterpret_cast<const char*>(data), size);
    auto cfg = cni::parse_config(text);
    if (!cfg) {
        if (!api::valid_dns1123_subdomain(cni::pod_name_from_runtime(text, "c0ffee0123456789"))) __builtin_trap();
        return 0;
    }
    (void)cni::passthrough(*cfg);
    cni::Env env;
    env.container_id = "c1";
    env.ifname = "eth0";
    env.netns = "/x";
    (void)cni::make_registration(env, *cfg);
    (void)cni::parse_cni_args(text);
    // A plain runtime's container name (K8S_POD_NAME) is always made a valid pod name.
    if (auto args = cni::parse_cni_args(text); args.ok())
        for (const auto& [k, v] : *args)
            if (!api::valid_dns1123_subdomain(cni::pod_name_from_runtime(v, "c0ffee0123456789"))) __builtin_trap();
    if (!api::valid_dns1123_subdomain(cni::pod_name_from_runtime(text, "c0ffee0123456789"))) __builtin_trap();
    return 0;
}
