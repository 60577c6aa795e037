// handshake_packet_check: one real packet through the packet layer, for
// test_kernel_packets.py.
//   handshake_packet_check complete|partial IN OUT TOKEN_HEX
// Parses IN (a whole IP packet; `partial`: its TCP checksum is CHECKSUM_PARTIAL,
// as a tx-offloaded packet is captured), prints what it saw as key=value lines,
// adds the token, checks the result parses with verified checksums (after
// completing a partial checksum as the NIC would), strips it and compares with
// IN byte for byte. Writes the tokened packet (complete checksum) to OUT.
// Exit 0 when every check passed.
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "datapath/packet.h"

using namespace signet::handshake;

static int fail(const std::string& what) {
    std::fprintf(stderr, "handshake_packet_check: %s\n", what.c_str());
    return 1;
}

int main(int argc, char** argv) {
    if (argc != 5) return fail("usage: handshake_packet_check complete|partial IN OUT TOKEN_HEX");
    const bool partial = std::strcmp(argv[1], "partial") == 0;
    std::ifstream in(argv[2], std::ios::binary);
    std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<uint8_t> token;
    const std::string hex = argv[4];
    for (size_t i = 0; i + 1 < hex.size(); i += 2) token.push_back(static_cast<uint8_t>(std::stoi(hex.substr(i, 2), nullptr, 16)));

    const ParseOptions opts{true, partial ? TcpChecksum::partial : TcpChecksum::verify};
    auto p = parse(bytes, opts);
    if (!p) return fail("parse: " + p.error().message);
    std::printf("family=%d\nsegment=%s\nsport=%u\ndport=%u\nseq=%u\nack=%u\nwindow=%u\nheader_len=%zu\n",
                p->family == Family::ipv4 ? 4 : 6, to_string(classify(*p)), p->sport, p->dport, p->seq, p->ack,
                p->window, p->tcp_header_len);
    std::printf("mss=%d\nwscale=%d\nsack_permitted=%d\n", p->options.mss ? *p->options.mss : -1,
                p->options.window_scale ? *p->options.window_scale : -1, p->options.sack_permitted ? 1 : 0);
    if (p->options.timestamps)
        std::printf("tsval=%u\ntsecr=%u\n", p->options.timestamps->value, p->options.timestamps->echo);

    auto t = add_token(*p, token, 65535);
    if (!t) return fail("add_token: " + t.error().message);
    std::vector<uint8_t> out = *t;
    auto q = parse(out, opts);
    if (!q) return fail("parse(tokened): " + q.error().message);
    if (partial) {  // complete the checksum as the NIC / skb_checksum_help would
        const size_t to = q->tcp_offset;
        const uint16_t c = csum::internet_checksum(std::span<const uint8_t>(out).subspan(to));
        out[to + 16] = static_cast<uint8_t>(c >> 8);
        out[to + 17] = static_cast<uint8_t>(c);
    }
    auto v = parse(out);
    if (!v) return fail("parse(tokened, verified): " + v.error().message);
    if (!v->options.token || v->options.token->token_len != token.size()) return fail("token option missing");
    if (binding(*v) != binding(*p)) return fail("binding changed");
    auto s = strip_token(*q);
    if (!s) return fail("strip_token: " + s.error().message);
    if (s->packet != bytes) return fail("strip_token did not give back the original bytes");
    if (std::vector<uint8_t>(s->token.begin(), s->token.end()) != token) return fail("token differs");
    std::ofstream o(argv[3], std::ios::binary);
    o.write(reinterpret_cast<const char*>(out.data()), static_cast<std::streamsize>(out.size()));
    if (!o) return fail("cannot write output");
    std::printf("tokened_len=%zu\nroundtrip=ok\n", out.size());
    return 0;
}
