#include "addr.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace signet::policy {

namespace {

int width(nft::Family family) { return family == nft::Family::v4 ? 4 : 16; }

__extension__ typedef unsigned __int128 u128;

// The address as a 128-bit number (IPv4 in the top 32 bits, as stored).
inline u128 num(const nft::Addr& a) {
    uint64_t hi, lo;
    std::memcpy(&hi, a.bytes.data(), 8);
    std::memcpy(&lo, a.bytes.data() + 8, 8);
    return (static_cast<u128>(__builtin_bswap64(hi)) << 64) | __builtin_bswap64(lo);
}

inline u128 step(nft::Family family) { return family == nft::Family::v4 ? static_cast<u128>(1) << 96 : 1; }

}  // namespace

bool addr_less(const nft::Addr& a, const nft::Addr& b) { return num(a) < num(b); }

Result<Ip> parse_ip(std::string_view text) {
    std::string s(text.substr(0, text.find('/')));
    Ip ip;
    if (!s.empty() && inet_pton(AF_INET, s.c_str(), ip.addr.bytes.data()) == 1) {
        ip.family = nft::Family::v4;
    } else if (!s.empty() && inet_pton(AF_INET6, s.c_str(), ip.addr.bytes.data()) == 1) {
        ip.family = nft::Family::v6;
    } else {
        return make_error(EINVAL, "invalid IP address \"" + std::string(text) + "\"");
    }
    if (auto slash = text.find('/'); slash != std::string_view::npos) {
        auto c = cache::parse_cidr(text);
        if (!c) return c.error();
    }
    return ip;
}

std::string to_string(nft::Family family, const nft::Addr& addr) {
    char buf[INET6_ADDRSTRLEN] = {};
    inet_ntop(family == nft::Family::v4 ? AF_INET : AF_INET6, addr.bytes.data(), buf, sizeof buf);
    return buf;
}

std::string to_string(const Ip& ip) { return to_string(ip.family, ip.addr); }

std::string to_string(nft::Family family, const nft::Range& range) {
    if (range.first == range.last) return to_string(family, range.first);
    return to_string(family, range.first) + "-" + to_string(family, range.last);
}

nft::Range to_range(const cache::Cidr& cidr) {
    nft::Range r;
    int bits = cidr.family == 6 ? 128 : 32;
    for (int i = 0; i < bits / 8; ++i) {
        r.first.bytes[i] = cidr.address[i];
        r.last.bytes[i] = cidr.address[i];
    }
    for (int bit = cidr.prefix_len; bit < bits; ++bit) {
        auto mask = static_cast<uint8_t>(0x80 >> (bit % 8));
        r.first.bytes[bit / 8] &= static_cast<uint8_t>(~mask);
        r.last.bytes[bit / 8] |= mask;
    }
    return r;
}

Result<FamilyRange> parse_cidr_range(std::string_view text) {
    auto c = cache::parse_cidr(text);
    if (!c) return c.error();
    return FamilyRange{family_of(*c), to_range(*c)};
}

bool next_addr(nft::Family family, nft::Addr& addr) {
    for (int i = width(family) - 1; i >= 0; --i) {
        if (++addr.bytes[i] != 0) return true;
    }
    return false;  // wrapped to zero
}

bool prev_addr(nft::Family family, nft::Addr& addr) {
    for (int i = width(family) - 1; i >= 0; --i) {
        if (addr.bytes[i]-- != 0) return true;
    }
    return false;
}

void merge_ranges(nft::Family family, std::vector<nft::Range>& ranges) {
    if (ranges.size() < 2) return;
    auto by_first = [](const nft::Range& a, const nft::Range& b) {
        u128 fa = num(a.first), fb = num(b.first);
        return fa < fb || (fa == fb && num(a.last) < num(b.last));
    };
    if (!std::is_sorted(ranges.begin(), ranges.end(), by_first)) std::sort(ranges.begin(), ranges.end(), by_first);
    const u128 one = step(family);
    size_t out = 0;
    u128 cur_last = num(ranges[0].last);
    for (size_t i = 1; i < ranges.size(); ++i) {
        const nft::Range& r = ranges[i];
        u128 first = num(r.first);
        // Overlapping, or adjacent (cur.last + 1 == r.first, without overflow).
        if (first <= cur_last || first - cur_last == one) {
            u128 last = num(r.last);
            if (last > cur_last) {
                cur_last = last;
                ranges[out].last = r.last;
            }
        } else {
            ranges[++out] = r;
            cur_last = num(r.last);
        }
    }
    ranges.resize(out + 1);
}

std::vector<nft::Range> subtract(nft::Family family, const nft::Range& block, std::vector<nft::Range> except) {
    merge_ranges(family, except);
    std::vector<nft::Range> out;
    nft::Addr start = block.first;
    bool open = true;  // [start, ...] still to be emitted
    for (const nft::Range& e : except) {
        if (!open) break;
        if (e.last < start || e.first > block.last) continue;
        if (e.first > start) {
            nft::Addr end = e.first;
            prev_addr(family, end);
            out.push_back({start, end});
        }
        if (e.last >= block.last) {
            open = false;
            break;
        }
        start = e.last;
        next_addr(family, start);
    }
    if (open) out.push_back({start, block.last});
    return out;
}

std::vector<nft::Range> ip_block_ranges(const cache::IpBlock& block) {
    nft::Family family = family_of(block.cidr);
    std::vector<nft::Range> except;
    for (const cache::Cidr& e : block.except)
        if (family_of(e) == family) except.push_back(to_range(e));
    return subtract(family, to_range(block.cidr), std::move(except));
}

bool contains(const std::vector<nft::Range>& ranges, const nft::Addr& addr) {
    u128 a = num(addr);
    auto it = std::upper_bound(ranges.begin(), ranges.end(), a,
                               [](u128 x, const nft::Range& r) { return x < num(r.first); });
    if (it == ranges.begin()) return false;
    --it;
    return a <= num(it->last);
}

}  // namespace signet::policy
