// nfnetlink_log datagrams as the kernel sends them for the deny-log rules
// (controller/nft/nflog.cpp): NFULNL_MSG_PACKET messages whose payload is an
// IPv4/IPv6 packet copied from the network. Never crash, never read past
// the buffer, and a parsed packet has a known family.
#include <cstdint>
#include <cstring>
#include <vector>

#include "nft/nflog.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::vector<uint32_t> aligned((size + 3) / 4 + 1);
    if (size) std::memcpy(aligned.data(), data, size);
    std::vector<signet::nft::LoggedPacket> out;
    size_t msgs = signet::nft::nflog_parse_buffer({reinterpret_cast<const uint8_t*>(aligned.data()), size}, out);
    if (out.size() > msgs) __builtin_trap();
    for (const auto& p : out)
        if (p.tuple.family != signet::nft::Family::v4 && p.tuple.family != signet::nft::Family::v6) __builtin_trap();
    // The packet parser alone, on the raw bytes (a packet straight from the wire).
    if (auto p = signet::nft::parse_ip_packet({data, size}))
        if (p->tuple.family != signet::nft::Family::v4 && p->tuple.family != signet::nft::Family::v6) __builtin_trap();
    return 0;
}
