// Address helpers for the policy compiler: parsing IPs and CIDRs into the
// rule-set IR's Addr/Range values, `except` subtraction and range merging.
// Pure values, no I/O.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "../cache/objects.h"
#include "../nft/ruleset.h"
#include "signet/result.h"

namespace signet::policy {

// One address with its family (an nft::Addr alone cannot tell 10.0.0.1 from 0a00:0001::).
struct Ip {
    nft::Family family = nft::Family::v4;
    nft::Addr addr;
    bool operator==(const Ip&) const = default;
    auto operator<=>(const Ip&) const = default;
};

// "10.0.0.1", "fd00::1", or a CIDR ("10.0.0.1/24", as CNI results give pod
// addresses): the address part. EINVAL otherwise.
Result<Ip> parse_ip(std::string_view text);
std::string to_string(const Ip& ip);
std::string to_string(nft::Family family, const nft::Addr& addr);
// "10.0.0.1" for a single address, "10.0.0.0-10.0.0.255" otherwise.
std::string to_string(nft::Family family, const nft::Range& range);

// The inclusive range a prefix covers.
nft::Range to_range(const cache::Cidr& cidr);
inline nft::Family family_of(const cache::Cidr& cidr) { return cidr.family == 6 ? nft::Family::v6 : nft::Family::v4; }
// "10.0.0.0/8" or "fd00::/8" as a range, with its family.
struct FamilyRange {
    nft::Family family = nft::Family::v4;
    nft::Range range;
};
Result<FamilyRange> parse_cidr_range(std::string_view text);

// Sorts, then merges overlapping and adjacent ranges (of one family) in place.
void merge_ranges(nft::Family family, std::vector<nft::Range>& ranges);
// `block` minus every range in `except`; the result is sorted, merged, disjoint.
std::vector<nft::Range> subtract(nft::Family family, const nft::Range& block, std::vector<nft::Range> except);
// An ipBlock as sorted, merged, disjoint ranges of the block's family (empty
// when `except` covers it all; excepts of the other family are ignored).
std::vector<nft::Range> ip_block_ranges(const cache::IpBlock& block);

// Whether `addr` lies in one of the sorted disjoint `ranges`.
bool contains(const std::vector<nft::Range>& ranges, const nft::Addr& addr);

// Numeric order of addresses (the same as Addr's operator<, faster).
bool addr_less(const nft::Addr& a, const nft::Addr& b);

// addr + 1 / addr - 1 within the family's width; false on overflow/underflow.
bool next_addr(nft::Family family, nft::Addr& addr);
bool prev_addr(nft::Family family, nft::Addr& addr);

}  // namespace signet::policy
