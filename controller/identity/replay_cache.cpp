#include "identity/replay_cache.h"

#include <cstring>

namespace signet::identity {

size_t ReplayCache::KeyHash::operator()(const Key& k) const {
    size_t h;
    std::memcpy(&h, k.data(), sizeof h);
    return h;
}

ReplayCache::Outcome ReplayCache::insert(const Key& key, TimePoint expires, TimePoint now) {
    std::lock_guard lock(mu_);
    while (!by_expiry_.empty() && by_expiry_.top().expires <= now) {
        seen_.erase(by_expiry_.top().key);
        by_expiry_.pop();
    }
    if (seen_.count(key)) return Outcome::replay;
    if (seen_.size() >= capacity_) return Outcome::full;
    seen_.insert(key);
    by_expiry_.push(Entry{expires, key});
    return Outcome::fresh;
}

size_t ReplayCache::size() const {
    std::lock_guard lock(mu_);
    return seen_.size();
}

}  // namespace signet::identity
