// nfnetlink_queue datagrams as the kernel sends them to the handshake queue
// reader (controller/datapath/nfqueue.cpp): NFQNL_MSG_PACKET messages (and
// NLMSG_ERROR answers to verdicts). Never crash, never read past the buffer
// (no alignment assumed: the input is used unaligned on purpose), every
// payload is a view inside the input, and the verdict builder / checksum
// completion accept whatever the parser produced.
#include <cstdint>
#include <cstring>
#include <vector>

#include "datapath/nfqueue.h"

using namespace signet::handshake;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    // Offset by one byte so that the parser sees unaligned headers.
    std::vector<uint8_t> shifted(size + 1);
    if (size) std::memcpy(shifted.data() + 1, data, size);
    std::span<const uint8_t> in(shifted.data() + 1, size);

    std::vector<QueuedPacket> out;
    ParseSummary s = nfq_parse_buffer(in, out);
    if (out.size() != s.packets || s.packets > s.messages || s.malformed > s.packets) __builtin_trap();
    if (s.packets + s.errors + s.ignored > s.messages) __builtin_trap();
    if (s.trailing_bytes > size) __builtin_trap();
    VerdictBatch batch;
    for (const auto& p : out) {
        if (!p.payload.empty() && (p.payload.data() < in.data() || p.payload.data() + p.payload.size() > in.data() + in.size()))
            __builtin_trap();
        if (!p.malformed && (p.payload.empty() || p.cap_len < p.payload.size())) __builtin_trap();
        if (p.malformed) continue;
        std::vector<uint8_t> copy(p.payload.begin(), p.payload.end());
        (void)nfq_complete_checksum(copy);
        if (!batch.add(p.queue, p.id, kAccept, copy, p.mark)) __builtin_trap();  // <= 65531 bytes: always fits
    }
    // Our own verdict messages parse as messages of another type.
    std::vector<QueuedPacket> again;
    ParseSummary v = nfq_parse_buffer(batch.bytes(), again);
    if (v.messages != batch.count() || !again.empty() || v.trailing_bytes != 0) __builtin_trap();
    return 0;
}
