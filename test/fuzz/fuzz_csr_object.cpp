// CertificateSigningRequest objects as the signer reads them from the API
// (controller/identity/csr_policy.cpp): parsing and the approval decision
// must never crash, never approve a malformed object, and base64 must
// round-trip. Seeds: test/fuzz/corpus/csr_object (real-shaped CSR objects
// for signet.dev/node: a valid node request, another node's subject, a
// service account requestor, another signer, malformed variants).
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "identity/csr_policy.h"

using namespace signet::identity::csr;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string_view text(reinterpret_cast<const char*>(data), size);
    auto obj = parse_csr_json(text);
    if (obj) {
        Verdict v = decide(*obj, "cluster.local");
        if (!obj->malformed.empty() && (v.action == Action::CheckNode)) std::abort();
        if (obj->signer_name != kSignerName && v.action != Action::Ignore) std::abort();
        (void)with_node(v, false);
        (void)granted_seconds(*obj);
    }
    // Lenient like Go's StdEncoding (non-zero padding bits are accepted), so
    // only decode∘encode is the identity.
    auto dec = base64_decode(text);
    if (dec && base64_decode(base64_encode(*dec)) != *dec) std::abort();
    if (base64_decode(base64_encode(text)) != std::string(text)) std::abort();
    (void)inspect_csr(text);
    return 0;
}
