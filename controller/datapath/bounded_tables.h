// signet: the handshake engine's bounded tables (docs/handshake.md, "Bounds").
// Both keep their entries in the order they were last touched, so expiry
// and eviction look at the oldest entry only: O(1) per packet (amortized),
// never a sweep of the whole table.
//
//   PendingTable<V>  handshakes in flight by connection, in two queues:
//                    `open` (still waiting for a segment) and `done` (the
//                    handshake completed; the entry only serves a
//                    retransmission). Eviction takes the oldest done entry,
//                    then, if the caller allows, the oldest open one. Every
//                    table of the node counts into one shared total.
//   TokenBuckets     first-contact rate-limit buckets by key. A bucket idle
//                    for burst/rate seconds is full again, the same as a new
//                    one: dropping it changes nothing (exact), so idle
//                    buckets go from the front as new ones come.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <list>
#include <string>
#include <unordered_map>
#include <utility>

namespace signet::handshake {

template <typename V>
class PendingTable {
public:
    using TimePoint = std::chrono::steady_clock::time_point;
    enum class Evicted { none, done, open };

    // `total`: the node's count of entries in every table (kept up to date).
    explicit PendingTable(size_t* total) : total_(total) {}
    ~PendingTable() { *total_ -= map_.size(); }
    PendingTable(const PendingTable&) = delete;
    PendingTable& operator=(const PendingTable&) = delete;

    V* find(const std::string& key) {
        auto it = map_.find(key);
        return it == map_.end() ? nullptr : &it->second.value;
    }
    bool contains(const std::string& key) const { return map_.count(key) != 0; }
    size_t size() const { return map_.size(); }
    bool empty() const { return map_.empty(); }

    // The entry of `key`, made if new (`*fresh` says which), now the most
    // recently touched of its queue.
    V& touch(const std::string& key, TimePoint now, bool* fresh = nullptr) {
        auto [it, made] = map_.try_emplace(key);
        Slot& s = it->second;
        if (made) {
            ++*total_;
            s.pos = open_.insert(open_.end(), &*it);
        } else {
            auto& q = s.done ? done_ : open_;
            q.splice(q.end(), q, s.pos);
        }
        s.at = now;
        if (fresh) *fresh = made;
        return s.value;
    }
    // Moves the entry to the back of the done queue (the handshake
    // completed), or of the open one (the ports reused by a new connection),
    // as touched `now`.
    void set_done(const std::string& key, bool done, TimePoint now) {
        auto it = map_.find(key);
        if (it == map_.end()) return;
        Slot& s = it->second;
        auto& from = s.done ? done_ : open_;
        auto& to = done ? done_ : open_;
        to.splice(to.end(), from, s.pos);
        s.done = done;
        s.at = now;
    }
    void erase(const std::string& key) {
        auto it = map_.find(key);
        if (it == map_.end()) return;
        (it->second.done ? done_ : open_).erase(it->second.pos);
        map_.erase(it);
        --*total_;
    }
    // Drops the entries last touched before `cutoff`; returns how many.
    size_t expire(TimePoint cutoff) {
        size_t n = 0;
        for (auto* q : {&open_, &done_}) {
            while (!q->empty() && q->front()->second.at < cutoff) {
                erase_front(*q);
                ++n;
            }
        }
        return n;
    }
    // Makes room for one entry: drops the oldest done entry, else the oldest
    // open one last touched before `open_before` (the caller decides how old
    // a live handshake must be to be given up).
    Evicted evict_one(TimePoint open_before) {
        if (!done_.empty()) {
            erase_front(done_);
            return Evicted::done;
        }
        if (!open_.empty() && open_.front()->second.at < open_before) {
            erase_front(open_);
            return Evicted::open;
        }
        return Evicted::none;
    }

    // An estimate of the bytes one entry takes (map node and bucket, queue
    // node, an IPv6 connection key on the heap).
    static constexpr size_t kEntryBytes = sizeof(std::pair<const std::string, V>) + 160;

private:
    struct Slot;
    using Item = std::pair<const std::string, Slot>;
    using Queue = std::list<Item*>;  // oldest first; elements of map_ (stable across rehashes)
    struct Slot {
        V value{};
        TimePoint at{};
        bool done = false;
        typename Queue::iterator pos;
    };
    void erase_front(Queue& q) {
        Item* item = q.front();
        q.pop_front();
        map_.erase(item->first);
        --*total_;
    }

    size_t* total_;
    std::unordered_map<std::string, Slot> map_;
    Queue open_, done_;
};

class TokenBuckets {
public:
    using TimePoint = std::chrono::steady_clock::time_point;

    TokenBuckets(double rate, double burst, size_t max) : rate_(rate), burst_(burst), max_(max) {}

    // Takes one token of `key`'s bucket (new buckets start full). false: the
    // bucket is empty, or the table is full of buckets still refilling
    // (`*table_full`: fail closed).
    bool take(const std::string& key, TimePoint now, bool* table_full = nullptr) {
        expire(now);
        auto it = map_.find(key);
        if (it == map_.end()) {
            if (map_.size() >= max_) {
                if (table_full) *table_full = true;
                return false;
            }
            it = make(key, now);
        }
        Bucket& b = refill(it, now);
        if (b.tokens < 1) return false;
        b.tokens -= 1;
        return true;
    }
    // Whether `key`'s bucket holds a token (nothing taken; no bucket: it would start full).
    bool has_token(const std::string& key, TimePoint now) {
        expire(now);
        auto it = map_.find(key);
        return it == map_.end() || refill(it, now).tokens >= 1;
    }
    // Takes a token whatever the bucket holds (it may go below zero: the
    // caller checked with has_token first). A full table gives up its oldest
    // bucket rather than refuse (charged after the fact).
    void charge(const std::string& key, TimePoint now) {
        expire(now);
        auto it = map_.find(key);
        if (it == map_.end()) {
            if (map_.size() >= max_ && !order_.empty()) {
                map_.erase(order_.front());
                order_.pop_front();
            }
            it = make(key, now);
        }
        refill(it, now).tokens -= 1;
    }
    // Drops the buckets idle long enough to be full again.
    void expire(TimePoint now) {
        const auto idle = idle_time();
        while (!order_.empty()) {
            auto it = map_.find(order_.front());
            if (now - it->second.last < idle) break;
            map_.erase(it);
            order_.pop_front();
        }
    }
    size_t size() const { return map_.size(); }
    size_t max() const { return max_; }
    static constexpr size_t kEntryBytes = 2 * sizeof(std::string) + sizeof(double) + sizeof(TimePoint) + 128;

private:
    struct Bucket {
        double tokens = 0;
        TimePoint last{};
        std::list<std::string>::iterator pos;
    };
    using Map = std::unordered_map<std::string, Bucket>;

    std::chrono::steady_clock::duration idle_time() const {
        const double s = rate_ > 0 ? std::max(burst_ / rate_, 0.001) : 3600.0;
        return std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(s));
    }
    Map::iterator make(const std::string& key, TimePoint now) {
        auto it = map_.emplace(key, Bucket{burst_, now, {}}).first;
        it->second.pos = order_.insert(order_.end(), key);
        return it;
    }
    Bucket& refill(Map::iterator it, TimePoint now) {
        Bucket& b = it->second;
        const double dt = std::chrono::duration<double>(now - b.last).count();
        b.tokens = std::min(burst_, b.tokens + dt * rate_);
        b.last = now;
        order_.splice(order_.end(), order_, b.pos);
        return b;
    }

    double rate_, burst_;
    size_t max_;
    Map map_;
    std::list<std::string> order_;  // keys, least recently touched first
};

}  // namespace signet::handshake
