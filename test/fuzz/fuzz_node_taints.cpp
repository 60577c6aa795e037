// Node objects as signetd reads them from the API before removing its
// startup taint (controller/coverage/cluster_writer.cpp): the patch must
// never crash, and when there is one it must be a JSON patch that tests the
// taints as read and keeps every taint of another key. Seeds:
// test/fuzz/corpus/node_taints (a kind node with the taint and others,
// without taints, malformed variants).
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "coverage/cluster_writer.h"
#include "signet/json.h"

using namespace signet;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string_view text(reinterpret_cast<const char*>(data), size);
    auto node = json::parse(text);
    if (!node) return 0;
    auto patch = coverage::taint_removal_patch(*node, coverage::kStartupTaint);
    if (!patch || !*patch) return 0;
    auto p = json::parse(**patch);
    if (!p || !p->IsArray() || p->Size() != 2) std::abort();
    const auto* kept = json::find((*p)[1], "value");
    const auto* read = json::find((*p)[0], "value");
    if (kept == nullptr || read == nullptr || !kept->IsArray() || !read->IsArray() || kept->Size() >= read->Size())
        std::abort();
    for (const auto& t : kept->GetArray())
        if (t.IsObject() && json::opt_string(t, "key") == coverage::kStartupTaint) std::abort();
    return 0;
}
