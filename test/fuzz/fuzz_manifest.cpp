// libFuzzer target: arbitrary bytes as a manifest file. The parser must
// return objects or an error, never crash, hang or throw; whatever it
// returns must pass the object model's own validation.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "../../controller/source/manifest.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string_view text(reinterpret_cast<const char*>(data), size);
    std::vector<std::string> ignored;
    auto objects = signet::source::parse_manifest(text, "fuzz.yaml", &ignored);
    if (objects) {
        signet::cache::Snapshot snapshot;
        for (const auto& obj : *objects) {
            if (!signet::cache::validate(obj)) std::abort();  // the decoder let an invalid object through
            snapshot.put(obj);
        }
    } else if (objects.error().message.empty()) {
        std::abort();  // errors must say what is wrong
    }
    return 0;
}
