// Fuzz target: the handshake packet layer (controller/datapath/packet.h).
// parse must never crash; when a packet parses and add_token succeeds, the
// result must parse again (checksums still verifying when they did), carry the
// option, and strip_token must give back the exact original bytes and token.
// Seeds: test/fuzz/corpus/packet/ (the unit tests' golden packets).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "datapath/packet.h"

using namespace signet::handshake;

namespace {

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            std::fprintf(stderr, "fuzz_packet: check failed: %s (line %d)\n", #cond, __LINE__); \
            std::abort();                                                            \
        }                                                                            \
    } while (0)

void round_trip(std::span<const uint8_t> in, const ParseOptions& opts) {
    auto p = parse(in, opts);
    if (!p) return;
    (void)classify(*p);
    (void)binding(*p);

    // A token whose length and bytes depend on the input.
    std::vector<uint8_t> token(1 + in.size() % 97);
    for (size_t i = 0; i < token.size(); ++i) token[i] = static_cast<uint8_t>(in[i % in.size()] ^ (i * 31));

    auto added = add_token(*p, token, 70000);
    if (added) {
        auto q = parse(*added, opts);
        CHECK(q.ok());
        CHECK(q->options.token.has_value());
        CHECK(q->options.token->token_len == token.size());
        // A tokened SYN / SYN-ACK stays one; a tokened bare ACK (the final
        // ACK's proof) carries payload, so it classifies as `other`.
        CHECK(classify(*q) == classify(*p) ||
              (classify(*p) == Segment::ack && classify(*q) == Segment::other));
        CHECK(binding(*q) == binding(*p));
        CHECK(q->options.mss == p->options.mss && q->options.window_scale == p->options.window_scale &&
              q->options.sack_permitted == p->options.sack_permitted &&
              q->options.timestamps == p->options.timestamps);
        auto s = strip_token(*q);
        CHECK(s.ok());
        CHECK(s->packet.size() == in.size() && std::memcmp(s->packet.data(), in.data(), in.size()) == 0);
        CHECK(s->token.size() == token.size() && std::memcmp(s->token.data(), token.data(), token.size()) == 0);
    }

    // A packet that already carries a token: stripping it must give a packet
    // that parses under the same options.
    if (p->options.token) {
        auto s = strip_token(*p);
        if (s) {
            auto q = parse(s->packet, opts);
            CHECK(q.ok());
            CHECK(!q->options.token.has_value());
            CHECK(binding(*q) == binding(*p));
        }
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::span<const uint8_t> in(data, size);
    round_trip(in, ParseOptions{});
    round_trip(in, ParseOptions{false, TcpChecksum::unverified});
    round_trip(in, ParseOptions{true, TcpChecksum::partial});
    return 0;
}
