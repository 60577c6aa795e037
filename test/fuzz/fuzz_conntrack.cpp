// ctnetlink dump bytes as the kernel sends them (the conntrack parser of
// controller/nft/conntrack.cpp). The corpus seed kernel-dump.bin is a real
// dump (IPv4 + IPv6 TCP entries) taken by test_nft_backend with
// SIGNET_CT_CORPUS_OUT set.
#include <cstdint>
#include <cstring>
#include <vector>

#include "nft/conntrack.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    // The kernel hands out 4-byte aligned buffers: parse an aligned copy.
    std::vector<uint32_t> aligned((size + 3) / 4 + 1);
    if (size) std::memcpy(aligned.data(), data, size);
    std::vector<signet::nft::CtEntry> out;
    size_t msgs = signet::nft::ct_parse_buffer({reinterpret_cast<const uint8_t*>(aligned.data()), size}, out);
    if (out.size() > msgs) __builtin_trap();
    for (const auto& e : out) {
        if (e.orig.family != signet::nft::Family::v4 && e.orig.family != signet::nft::Family::v6) __builtin_trap();
    }
    // The same bytes as event datagrams (NEW/UPDATE/DESTROY with counters).
    std::vector<signet::nft::CtEvent> events;
    size_t emsgs = signet::nft::ct_parse_events({reinterpret_cast<const uint8_t*>(aligned.data()), size}, events);
    if (events.size() > emsgs || emsgs != msgs) __builtin_trap();
    return 0;
}
