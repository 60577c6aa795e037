#include "query.h"

#include <algorithm>

namespace signet::policy {

namespace {

// FNV-1a over the key's fields: a per-packet hash, no allocation.
struct Fnv {
    uint64_t h = 1469598103934665603ull;
    void bytes(const void* p, size_t n) {
        const auto* b = static_cast<const unsigned char*>(p);
        for (size_t i = 0; i < n; ++i) {
            h ^= b[i];
            h *= 1099511628211ull;
        }
    }
    void text(const std::string& s) {
        bytes(s.data(), s.size());
        const unsigned char end = 0xff;  // "ab"+"c" and "a"+"bc" apart
        bytes(&end, 1);
    }
};

}  // namespace

size_t ConnKeyHash::operator()(const ConnKey& k) const {
    Fnv f;
    const unsigned char head[4] = {static_cast<unsigned char>(k.ingress), static_cast<unsigned char>(k.peer_pod.has_value()),
                                   static_cast<unsigned char>(k.peer_ip.family), k.proto};
    f.bytes(head, sizeof head);
    f.bytes(&k.port, sizeof k.port);
    f.bytes(k.peer_ip.addr.bytes.data(), k.peer_ip.family == nft::Family::v4 ? 4 : 16);
    f.text(k.local.namespace_);
    f.text(k.local.name);
    if (k.peer_pod) {
        f.text(k.peer_pod->namespace_);
        f.text(k.peer_pod->name);
    }
    return static_cast<size_t>(f.h);
}

Query::Query(const Compiler& compiler, size_t capacity) : compiler_(compiler), capacity_(capacity) {}

ConnVerdict Query::check(const ConnKey& key) {
    // An IPv4 address is its first 4 bytes, the rest 0 as parse_ip makes it:
    // other bytes there would be another key, and ipBlock ranges would not
    // contain it.
    if (key.peer_ip.family == nft::Family::v4) {
        const auto& b = key.peer_ip.addr.bytes;
        if (std::any_of(b.begin() + 4, b.end(), [](uint8_t x) { return x != 0; })) {
            ConnKey plain = key;
            std::fill(plain.peer_ip.addr.bytes.begin() + 4, plain.peer_ip.addr.bytes.end(), uint8_t{0});
            return check(plain);
        }
    }
    if (auto it = cache_.find(key); it != cache_.end()) {
        ++hits_;
        return it->second;
    }
    ++misses_;
    ConnVerdict v;
    auto side = compiler_.judge_side(key.local, key.ingress, key.peer_pod, key.peer_ip, key.proto, key.port);
    if (side) {
        v.answered = true;
        v.allowed = side->allowed;
        v.isolated = side->isolated;
        // What decided an allowed side of an isolated pod: its first rule, or
        // (no rule: the node's own address) the reason. The text is kept once
        // per version, not per connection.
        if (v.isolated && v.allowed) {
            if (!side->rules.empty()) {
                const nft::Origin& o = side->rules.front();
                v.by = intern(o.policy_namespace + "/" + o.policy_name);
                v.rule = o.rule_index;
            } else {
                v.by = intern(side->reason);
            }
        }
    }
    // Full: start again (the hot connections come back at once); one version
    // of a busy node's cache stays within `capacity_` entries.
    if (cache_.size() >= capacity_) {
        cache_.clear();
        ++evictions_;
    }
    cache_.emplace(key, v);
    return v;
}

const std::string& Query::label(uint32_t id) const {
    static const std::string none;
    return id == 0 || id > labels_.size() ? none : labels_[id - 1];
}

uint32_t Query::intern(const std::string& text) {
    auto [it, fresh] = label_ids_.try_emplace(text, static_cast<uint32_t>(labels_.size() + 1));
    if (fresh) labels_.push_back(text);
    return it->second;
}

void Query::changed() {
    ++version_;
    cache_.clear();
    // Labels are of this version's policies: those of a deleted policy go too.
    labels_.clear();
    label_ids_.clear();
}

Query::Stats Query::stats() const { return Stats{hits_, misses_, evictions_, version_, cache_.size()}; }

}  // namespace signet::policy
