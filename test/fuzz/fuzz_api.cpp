// Request bodies that reach signetd's API, and the persisted registry format.
#include <cstdint>
#include <string_view>

#include "signet/api.h"
#include "signet/json.h"

namespace {
// Kubernetes' name rules on any bytes: the predicates agree with the
// messages, a label is a subdomain, and what passes is what the rules say.
void check_names(std::string_view s) {
    using namespace signet;
    bool label = api::valid_dns1123_label(s), sub = api::valid_dns1123_subdomain(s);
    if (label != api::namespace_problem(s).empty()) __builtin_trap();
    if (sub != api::pod_name_problem(s).empty()) __builtin_trap();
    if (label && !sub) __builtin_trap();
    if (sub) {
        if (s.size() > 253 || s.front() == '.' || s.back() == '.' || s.front() == '-' || s.back() == '-') __builtin_trap();
        for (char c : s)
            if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.')) __builtin_trap();
    }
    if (label && (s.size() > 63 || s.find('.') != std::string_view::npos)) __builtin_trap();
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using namespace signet;
    std::string_view text(reinterpret_cast<const char*>(data), size);
    check_names(text);
    if (size > 0) check_names(text.substr(0, text.find('\n')));
    auto doc = json::parse(text);
    if (!doc) return 0;
    if (auto r = api::registration_from_json(*doc); r.ok()) {
        // What POST /v1/pods checks next: the names, as Kubernetes has them.
        if (api::validate_pod_identity(*r).ok() &&
            !(api::valid_dns1123_label(r->namespace_) && api::valid_dns1123_subdomain(r->name)))
            __builtin_trap();
        rapidjson::Document out;
        api::to_json(*r, out, out.GetAllocator());
        auto back = api::registration_from_json(out);
        if (!back.ok() || !(*back == *r)) __builtin_trap();  // round trip must be exact
    }
    (void)api::record_from_json(*doc);
    (void)api::gc_from_json(*doc);
    return 0;
}
