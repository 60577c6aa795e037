// Bytes signetd (or whatever listens on its socket) answers to the plugin and signetctl.
#include <cstdint>
#include <string_view>

#include "signet/http_client.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    (void)signet::http::parse_response(std::string_view(reinterpret_cast<const char*>(data), size));
    return 0;
}
