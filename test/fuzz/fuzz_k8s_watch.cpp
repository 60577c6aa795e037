// libFuzzer target: arbitrary bytes as a watch stream. The first byte picks
// the resource and a chunk size; the rest is fed to the streaming reader in
// chunks, each complete event parsed and its object decoded. Nothing may
// crash, hang or grow beyond the event limit; decoded objects must validate.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "../../controller/kube/watch_stream.h"
#include "../../controller/source/kubernetes/resources.h"

using namespace signet;
using namespace signet::kube;
using namespace signet::source::k8s;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size == 0) return 0;
    auto res = static_cast<Resource>(data[0] % kResourceCount);
    size_t chunk = 1 + (data[0] >> 2) * 7;
    std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
    JsonStreamSplitter splitter(4096);
    auto on_event = [&](std::string_view ev_text) -> Status {
        if (ev_text.size() > 4096) std::abort();
        auto ev = parse_watch_event(ev_text);
        if (!ev) {
            if (ev.error().message.empty()) std::abort();
            return {};
        }
        if (ev->object == nullptr) std::abort();
        (void)object_ref(*ev->object);
        (void)parse_api_status(ev_text, 0);
        auto item = decode_item(res, *ev->object);
        if (item) {
            if (auto* p = std::get_if<cache::Pod>(&*item); p && !cache::validate(cache::Object(*p))) std::abort();
            if (auto* n = std::get_if<cache::Namespace>(&*item); n && !cache::validate(cache::Object(*n))) std::abort();
            if (auto* np = std::get_if<cache::NetworkPolicy>(&*item); np && !cache::validate(cache::Object(*np)))
                std::abort();
            if (auto* s = std::get_if<cache::Service>(&*item); s && !cache::validate(cache::Object(*s))) std::abort();
        }
        return {};
    };
    for (size_t i = 0; i < text.size(); i += chunk) {
        if (!splitter.feed(text.substr(i, chunk), on_event)) splitter.reset();  // the watch restarts
        if (splitter.buffered() > 4096) std::abort();
    }
    return 0;
}
