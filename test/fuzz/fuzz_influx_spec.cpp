// The InfluxDB exporter's untrusted inputs and its encoder's promises.
// First byte selects the mode:
//   0: parse_influx_spec(rest) must not crash; a config it accepts is
//      complete; an error (or describe()) never shows a p= or token= value.
//   1: a Point built from the bytes: when validate() accepts it, encode()
//      gives one line that decodes back to the same point (tags sorted, empty
//      values skipped) and encodes to the same line.
//   2: decode(rest): when a decoded point is valid, encode/decode is stable.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include "export/influx.h"
#include "export/line_protocol.h"

using namespace signet::exporter;

#define FUZZ_CHECK(cond)                                                               \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            std::abort();                                                              \
        }                                                                              \
    } while (0)

namespace {

struct Reader {
    const uint8_t* p;
    size_t n;
    uint8_t byte() {
        if (n == 0) return 0;
        --n;
        return *p++;
    }
    std::string str() {
        size_t len = byte() % 24;
        len = std::min(len, n);
        std::string s(reinterpret_cast<const char*>(p), len);
        p += len;
        n -= len;
        return s;
    }
    uint64_t u64() {
        uint64_t v = 0;
        for (int i = 0; i < 8; ++i) v = (v << 8) | byte();
        return v;
    }
};

// Where a query parameter `name` ("p=") starts in spec (npos when absent).
size_t param_pos(const std::string& spec, std::string_view name) {
    size_t q = spec.find('?');
    if (q == std::string::npos) return std::string::npos;
    for (size_t pos = spec.find(name, q); pos != std::string::npos; pos = spec.find(name, pos + 1))
        if (spec[pos - 1] == '&' || pos - 1 == q) return pos;
    return std::string::npos;
}

void fuzz_spec(std::string_view text) {
    std::string spec(text);
    if (auto r = parse_influx_spec(spec)) {
        const InfluxConfig& c = *r;
        FUZZ_CHECK(c.url.rfind("http://", 0) == 0 || c.url.rfind("https://", 0) == 0);
        FUZZ_CHECK(c.url.back() != '/');
        FUZZ_CHECK(c.batch_points > 0 && c.buffer_points > 0);
        FUZZ_CHECK(c.flush_interval.count() > 0 && c.timeout.count() > 0);
        if (c.version == 1) {
            FUZZ_CHECK(!c.database.empty() && c.org.empty() && c.bucket.empty() && c.token.empty());
            FUZZ_CHECK(c.username.empty() == c.password.empty());
        } else {
            FUZZ_CHECK(c.version == 2);
            FUZZ_CHECK(!c.org.empty() && !c.bucket.empty() && !c.token.empty() && c.database.empty());
        }
    }
    // A p= or token= value never reaches an error: put a marker in its place
    // and look for the marker in the error.
    static const std::string marker = "Qz7SecretMarker9";
    for (const char* name : {"p=", "token="}) {
        size_t pos = param_pos(spec, name);
        if (pos == std::string::npos) continue;
        size_t vstart = pos + std::strlen(name);
        size_t vend = spec.find('&', vstart);
        if (vend == std::string::npos) vend = spec.size();
        std::string marked = spec.substr(0, vstart) + marker + spec.substr(vend);
        if (spec.find(marker) != std::string::npos) continue;
        auto m = parse_influx_spec(marked);
        if (!m) FUZZ_CHECK(m.error().message.find(marker) == std::string::npos);
        else FUZZ_CHECK(describe(*m).find(marker) == std::string::npos || m->url.find(marker) != std::string::npos);
    }
}

void check_round_trip(const Point& p) {
    std::string line = encode(p);
    FUZZ_CHECK(line.find('\n') == std::string::npos);
    auto d = decode(line);
    if (!d) std::fprintf(stderr, "decode failed: %s\n", d.error().message.c_str());
    FUZZ_CHECK(d.ok());
    FUZZ_CHECK(*d == canonical(p));
    FUZZ_CHECK(validate(*d).ok());
    FUZZ_CHECK(encode(*d) == line);
}

void fuzz_point(Reader in) {
    Point p;
    p.measurement = in.str();
    size_t ntags = in.byte() % 5;
    for (size_t i = 0; i < ntags; ++i) {
        auto k = in.str();
        p.tags.emplace_back(k, in.str());
    }
    size_t nfields = in.byte() % 5;
    for (size_t i = 0; i < nfields; ++i) {
        auto k = in.str();
        switch (in.byte() % 4) {
            case 0: p.fields.emplace_back(k, static_cast<int64_t>(in.u64())); break;
            case 1: {
                uint64_t bits = in.u64();
                double d;
                std::memcpy(&d, &bits, sizeof d);
                p.fields.emplace_back(k, d);
                break;
            }
            case 2: p.fields.emplace_back(k, (in.byte() & 1) != 0); break;
            default: p.fields.emplace_back(k, in.str()); break;
        }
    }
    if (in.byte() & 1) p.time_ns = static_cast<int64_t>(in.u64());
    if (validate(p)) check_round_trip(p);
}

void fuzz_decode(std::string_view text) {
    auto d = decode(text);
    if (d && validate(*d)) check_round_trip(*d);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size == 0) return 0;
    std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
    switch (data[0] % 3) {
        case 0: fuzz_spec(rest); break;
        case 1: fuzz_point(Reader{data + 1, size - 1}); break;
        default: fuzz_decode(rest); break;
    }
    return 0;
}
