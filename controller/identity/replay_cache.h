// signet identity: the replay cache. A token's (nonce, connection binding)
// is remembered until the token can no longer be accepted (issued + validity
// + skew); a second sighting within that window is a replay. Only tokens that
// verified and whose connection the receiver admitted are inserted (the
// receiver checks with `contains` first and inserts after its policy said
// yes: see verify_token and record_replay), so neither a forger nor a peer
// the policy refuses can fill it. Bounded, and per owner (the sender's node):
// one peer node holds at most `per_owner` live entries, so it cannot fill the
// cache for the others. When full of live entries (or the owner's quota is)
// it refuses (fails closed) rather than forgetting one. Thread-safe.
#pragma once

#include <array>
#include <cstdint>
#include <mutex>
#include <queue>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "identity/authority.h"

namespace signet::identity {

class ReplayCache {
public:
    using Key = std::array<uint8_t, 16>;
    enum class Outcome { fresh, replay, full, owner_full };

    // `per_owner`: the most live entries one owner may hold (default: no
    // quota beyond the capacity).
    explicit ReplayCache(size_t capacity = size_t{1} << 20, size_t per_owner = 0)
        : capacity_(capacity), per_owner_(per_owner == 0 || per_owner > capacity ? capacity : per_owner) {}

    // Records `key` until `expires` for `owner`; `replay` when it is already
    // recorded (whoever recorded it). Check and insert are one step.
    Outcome insert(const Key& key, TimePoint expires, TimePoint now, std::string_view owner = {});
    // Whether `key` is recorded and live at `now` (nothing is inserted;
    // entries past their time are dropped).
    bool contains(const Key& key, TimePoint now);
    size_t size() const;
    size_t capacity() const { return capacity_; }
    size_t per_owner() const { return per_owner_; }
    // Live entries held by `owner` (expired ones may still count until the
    // next insert drops them).
    size_t held_by(std::string_view owner) const;

    // An estimate of the bytes one entry takes (the set's node and bucket,
    // the expiry queue's slot): what the node's handshake memory budget counts.
    static constexpr size_t kEntryBytes = 112;

private:
    struct KeyHash {
        size_t operator()(const Key& k) const;
    };
    struct Entry {
        TimePoint expires;
        Key key;
        const std::string* owner;  // the key of owners_ (stable while it holds entries)
        bool operator>(const Entry& o) const { return expires > o.expires; }
    };
    void drop_expired_locked(TimePoint now);

    size_t capacity_;
    size_t per_owner_;
    mutable std::mutex mu_;
    std::unordered_set<Key, KeyHash> seen_;
    std::unordered_map<std::string, size_t> owners_;  // live entries per owner
    std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> by_expiry_;
};

}  // namespace signet::identity
