// Request bodies that reach signetd's API, and the persisted registry format.
#include <cstdint>
#include <string_view>

#include "signet/api.h"
#include "signet/json.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using namespace signet;
    auto doc = json::parse(std::string_view(reinterpret_cast<const char*>(data), size));
    if (!doc) return 0;
    if (auto r = api::registration_from_json(*doc); r.ok()) {
        rapidjson::Document out;
        api::to_json(*r, out, out.GetAllocator());
        auto back = api::registration_from_json(out);
        if (!back.ok() || !(*back == *r)) __builtin_trap();  // round trip must be exact
    }
    (void)api::record_from_json(*doc);
    (void)api::gc_from_json(*doc);
    return 0;
}
