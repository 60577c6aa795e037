// The identity handshake's state machine (datapath/engine) fed
// sequences of segments: two nodes' engines (test/datapath/engine_world.h),
// the input a program of steps (SYN, SYN-ACK, final ACK built for fuzzed
// ports and ISNs; what one engine let out relayed to the other, or mutated
// first; raw fuzzed packets at any hook; RSTs and data). Never crash, and the
// invariant the queue rules rely on: a segment accepted on its way into a pod
// (any hook but output) never carries the signet option.
//
// The engines read the world's clock, not the real one: time stands still
// within an input and moves 100 ms between inputs, so an input gets the same
// verdicts however slowly it runs (under sanitizers, in a debugger), and the
// state earlier inputs left (handshakes in flight, rate-limit buckets,
// remembered tokens) expires and stays bounded.
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "../datapath/engine_world.h"
#include "signet/log.h"

using namespace signet;
using namespace signet::testing;
namespace hk = signet::handshake::hook;

namespace {

struct Reader {
    const uint8_t* p;
    size_t n;
    bool empty() const { return n == 0; }
    uint8_t u8() {
        if (n == 0) return 0;
        --n;
        return *p++;
    }
    uint16_t u16() { return static_cast<uint16_t>(u8() << 8 | u8()); }
    uint32_t u32() { return static_cast<uint32_t>(u16()) << 16 | u16(); }
};

void check(const Verdict& v, uint8_t hook) {
    if (v.accepted && hook != hk::output && has_option(v.bytes)) __builtin_trap();
}

World& world() {
    static World* w = [] {
        log::set_level(log::Level::error);
        auto* made = new World();
        made->remove_files();  // the fuzzer may end with _Exit: leave no folder behind
        return made;
    }();
    return *w;
}

// The next input's instant: 100 ms on, and what is past its time forgotten.
// Wall time goes back to its start after an hour of it: the nodes'
// certificates (issued for a day of real time) stay valid however long the
// fuzzer runs.
void tick(World& w) {
    static const identity::TimePoint start = w.clock().wall;
    w.clock().advance(std::chrono::milliseconds(100));
    if (w.clock().wall - start > std::chrono::hours(1)) w.clock().wall = start;
    w.node_a().engine->expire();
    w.node_b().engine->expire();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    World& w = world();
    tick(w);
    Reader r{data, size};
    std::vector<uint8_t> to_b, to_a;
    uint16_t sport = 40000;
    uint32_t cisn = 1, sisn = 2;
    std::string client = "a", client_ip = "10.0.0.1";
    auto deliver = [&](const std::string& pod, const std::vector<uint8_t>& b) {
        if (b.empty()) return;
        const uint8_t hook = has_option(b) ? hk::prerouting : hk::input;
        check(w.judge(pod, hook, b), hook);
    };
    for (int steps = 0; !r.empty() && steps < 64; ++steps) {
        switch (r.u8() % 10) {
            case 0: {  // the client's SYN
                sport = r.u16();
                cisn = r.u32();
                const bool from_c = r.u8() & 1;
                client = from_c ? "c" : "a";
                client_ip = from_c ? "10.0.0.3" : "10.0.0.1";
                auto v = w.judge(client, hk::output, segment(client_ip, "10.0.1.1", sport, kPort, cisn, 0, tcpf::syn));
                to_b = v.accepted ? v.bytes : std::vector<uint8_t>{};
                break;
            }
            case 1: deliver("b", to_b); break;
            case 2: {  // b's SYN-ACK
                sisn = r.u32();
                auto v = w.judge("b", hk::output,
                                 segment("10.0.1.1", client_ip, kPort, sport, sisn, cisn + 1, tcpf::syn | tcpf::ack));
                to_a = v.accepted ? v.bytes : std::vector<uint8_t>{};
                break;
            }
            case 3: deliver(client, to_a); break;
            case 4: {  // the client's final ACK (the proof, if due)
                auto v = w.judge(client, hk::output,
                                 segment(client_ip, "10.0.1.1", sport, kPort, cisn + 1, sisn + 1, tcpf::ack));
                to_b = v.accepted ? v.bytes : std::vector<uint8_t>{};
                break;
            }
            case 5: {  // a flipped byte in what goes to b or to the client (checksum fixed or not)
                auto& t = (r.u8() & 1) ? to_b : to_a;
                const uint16_t pos = r.u16();
                const uint8_t x = r.u8();
                const bool fix = r.u8() & 1;
                if (t.size() > 20) {
                    t[pos % t.size()] ^= x;
                    if (fix && (t[0] >> 4) == 4 && (t[0] & 15) == 5) refix(t);
                }
                break;
            }
            case 6:
            case 7: {  // a raw packet at any hook of b's or a's queue
                const std::string pod = (r.u8() & 1) ? "b" : "a";
                const uint8_t hook = static_cast<uint8_t>(r.u8() % 5);
                const size_t n = r.u8();
                std::vector<uint8_t> pkt(std::min(n, r.n));
                for (auto& x : pkt) x = r.u8();
                check(w.judge(pod, hook, pkt), hook);
                break;
            }
            case 8: {  // an RST or data from the client, into b
                const bool rst = r.u8() & 1;
                std::vector<uint8_t> payload;
                if (!rst) payload.assign(r.u8() % 32, 0x61);
                auto seg = segment(client_ip, "10.0.1.1", sport, kPort, cisn + 1, sisn + 1,
                                   rst ? (tcpf::rst | tcpf::ack) : (tcpf::ack | tcpf::psh), payload);
                check(w.judge("b", hk::input, seg), hk::input);
                break;
            }
            default: {  // what went to b, delivered again (a replay, a retransmission)
                deliver("b", to_b);
                deliver(client, to_a);
                break;
            }
        }
    }
    return 0;
}
