#include "identity/replay_cache.h"

#include <cstring>

namespace signet::identity {

size_t ReplayCache::KeyHash::operator()(const Key& k) const {
    size_t h;
    std::memcpy(&h, k.data(), sizeof h);
    return h;
}

void ReplayCache::drop_expired_locked(TimePoint now) {
    while (!by_expiry_.empty() && by_expiry_.top().expires <= now) {
        const Entry& e = by_expiry_.top();
        seen_.erase(e.key);
        if (auto o = owners_.find(*e.owner); o != owners_.end() && --o->second == 0) owners_.erase(o);
        by_expiry_.pop();
    }
}

ReplayCache::Outcome ReplayCache::insert(const Key& key, TimePoint expires, TimePoint now, std::string_view owner) {
    std::lock_guard lock(mu_);
    drop_expired_locked(now);
    if (seen_.count(key)) return Outcome::replay;
    if (seen_.size() >= capacity_) return Outcome::full;
    auto o = owners_.find(std::string(owner));
    if (o != owners_.end() && o->second >= per_owner_) return Outcome::owner_full;
    if (o == owners_.end()) o = owners_.emplace(std::string(owner), 0).first;
    ++o->second;
    seen_.insert(key);
    by_expiry_.push(Entry{expires, key, &o->first});
    return Outcome::fresh;
}

bool ReplayCache::contains(const Key& key, TimePoint now) {
    std::lock_guard lock(mu_);
    drop_expired_locked(now);
    return seen_.count(key) != 0;
}

size_t ReplayCache::size() const {
    std::lock_guard lock(mu_);
    return seen_.size();
}

size_t ReplayCache::held_by(std::string_view owner) const {
    std::lock_guard lock(mu_);
    auto o = owners_.find(std::string(owner));
    return o == owners_.end() ? 0 : o->second;
}

}  // namespace signet::identity
