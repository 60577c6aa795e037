// signet identity: the replay cache. A token's (nonce, connection binding)
// is remembered until the token can no longer be accepted (issued + validity
// + skew); a second sighting within that window is a replay. Only tokens that
// verified are inserted, so a forger cannot fill it. Bounded: when full of
// live entries it refuses (fails closed) rather than forgetting one. Thread-safe.
#pragma once

#include <array>
#include <cstdint>
#include <mutex>
#include <queue>
#include <unordered_set>
#include <vector>

#include "identity/authority.h"

namespace signet::identity {

class ReplayCache {
public:
    using Key = std::array<uint8_t, 16>;
    enum class Outcome { fresh, replay, full };

    explicit ReplayCache(size_t capacity = size_t{1} << 20) : capacity_(capacity) {}

    // Records `key` until `expires`; `replay` when it is already recorded.
    Outcome insert(const Key& key, TimePoint expires, TimePoint now);
    size_t size() const;

private:
    struct KeyHash {
        size_t operator()(const Key& k) const;
    };
    struct Entry {
        TimePoint expires;
        Key key;
        bool operator>(const Entry& o) const { return expires > o.expires; }
    };
    size_t capacity_;
    mutable std::mutex mu_;
    std::unordered_set<Key, KeyHash> seen_;
    std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> by_expiry_;
};

}  // namespace signet::identity
