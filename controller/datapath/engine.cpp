#include "datapath/engine.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <algorithm>
#include <charconv>
#include <netinet/in.h>

#include <cstring>

#include "../policy/addr.h"
#include "identity/crypto.h"
#include "signet/log.h"

namespace signet::handshake {

namespace {

constexpr const char* kLog = "handshake";
// A client's entry lives while its SYN may be retransmitted (each refreshes
// it); a server's while its SYN-ACK may be (tokens are valid for 5 s).
constexpr auto kClientPendingTtl = std::chrono::seconds(30);
constexpr auto kServerPendingTtl = std::chrono::seconds(10);
// After signetd (re)starts: how long connections caught between their SYN
// and the final ACK's proof by the restart are recovered (docs/handshake.md,
// "Across a restart"). Covers the kernel's SYN-ACK retransmissions (1, 3, 7 s).
constexpr auto kRecoveryWindow = std::chrono::seconds(10);
// Bounds: per attachment, handshakes in flight (each way); per node,
// rate-limit buckets. The memory budget may make them smaller (limits_for).
constexpr size_t kMaxPending = 100000;
constexpr size_t kMaxBuckets = 100000;
constexpr size_t kMaxNodeBuckets = 10000;
constexpr size_t kMaxReplayEntries = size_t{1} << 20;
// A server's handshake younger than this is never given up for a new one
// (its SYN-ACK was just sent; the proof is on its way).
constexpr auto kServerEvictAfter = std::chrono::seconds(2);
// An estimate of one cached pair key (two node identities, the peer's public
// key, a keyed HMAC context), for the memory budget.
constexpr size_t kPairKeyBytes = 4096;
constexpr auto kSweepEvery = std::chrono::seconds(5);
constexpr unsigned kLogPerSecond = 20;

static_assert(handshake::kHandshakeQueue == nft::kHandshakeQueueNum, "one queue number for rules and readers");
static_assert(handshake::kTokenOptionKind == nft::kTokenOptionKind && handshake::kTokenExId == nft::kTokenOptionExId,
              "the rules queue the option the packet layer writes");

using handshake::Decision;
using handshake::Family;
using handshake::Packet;

std::string addr_key(Family f, const std::array<uint8_t, 16>& a) {
    std::string k(1, static_cast<char>(f));
    k.append(reinterpret_cast<const char*>(a.data()), f == Family::ipv4 ? 4 : 16);
    return k;
}

std::optional<std::string> addr_key_of(const std::string& text) {
    auto ip = policy::parse_ip(text);
    if (!ip) return std::nullopt;
    std::array<uint8_t, 16> a{};
    std::memcpy(a.data(), ip->addr.bytes.data(), 16);
    return addr_key(ip->family == nft::Family::v4 ? Family::ipv4 : Family::ipv6, a);
}

// The address as the policy query takes it (IPv4: its 4 bytes, the rest 0).
policy::Ip ip_of(Family f, const std::array<uint8_t, 16>& a) {
    policy::Ip ip;
    ip.family = f == Family::ipv4 ? nft::Family::v4 : nft::Family::v6;
    std::memcpy(ip.addr.bytes.data(), a.data(), f == Family::ipv4 ? 4 : 16);
    return ip;
}

std::string ip_text(Family f, const std::array<uint8_t, 16>& a) {
    nft::Addr na;
    std::memcpy(na.bytes.data(), a.data(), 16);
    return policy::to_string(f == Family::ipv4 ? nft::Family::v4 : nft::Family::v6, na);
}

// The pod uid a token carries: the object's metadata.uid, or (a Pod written
// without one, e.g. in a manifest folder) one derived from its name, the same
// on every node.
identity::PodUid uid_of(const std::string& uid, const cache::ObjectKey& k) {
    if (auto u = identity::parse_pod_uid(uid)) return *u;
    std::string m = "signet-derived-pod-uid-v1\n" + k.namespace_ + "/" + k.name;
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_Digest(m.data(), m.size(), d, &n, EVP_sha256(), nullptr);
    identity::PodUid out{};
    std::memcpy(out.data(), d, out.size());
    return out;
}

// The connection a segment belongs to, written client -> server.
identity::ConnBinding binding_of(const Packet& p, bool client_sent) {
    identity::ConnBinding b;
    b.ipv6 = p.family == Family::ipv6;
    if (client_sent) {  // SYN
        b.client_addr = p.src;
        b.server_addr = p.dst;
        b.client_port = p.sport;
        b.server_port = p.dport;
        b.client_isn = p.seq;
    } else {  // SYN-ACK
        b.client_addr = p.dst;
        b.server_addr = p.src;
        b.client_port = p.dport;
        b.server_port = p.sport;
        b.client_isn = p.ack - 1;
        b.server_isn = p.seq;
    }
    return b;
}

// The connection's addresses and ports (no ISNs): the key of a handshake in flight.
std::string conn_key(const identity::ConnBinding& b) {
    const size_t n = b.ipv6 ? 16 : 4;
    std::string k(1, b.ipv6 ? '6' : '4');
    k.append(reinterpret_cast<const char*>(b.client_addr.data()), n);
    k.append(reinterpret_cast<const char*>(b.server_addr.data()), n);
    k += static_cast<char>(b.client_port >> 8);
    k += static_cast<char>(b.client_port & 0xff);
    k += static_cast<char>(b.server_port >> 8);
    k += static_cast<char>(b.server_port & 0xff);
    return k;
}

// The binding of a later segment of the connection (client -> server direction
// when `client_sent`), ISNs left unset.
identity::ConnBinding binding_of_later(const Packet& p, bool client_sent) {
    identity::ConnBinding b;
    b.ipv6 = p.family == Family::ipv6;
    b.client_addr = client_sent ? p.src : p.dst;
    b.server_addr = client_sent ? p.dst : p.src;
    b.client_port = client_sent ? p.sport : p.dport;
    b.server_port = client_sent ? p.dport : p.sport;
    return b;
}

std::optional<identity::Nonce> nonce_of(std::span<const uint8_t> token) {
    auto t = identity::parse(token);
    if (!t) return std::nullopt;
    return t->nonce;
}

template <typename T>
void keep_last(std::vector<T>& v, const T& x, size_t n = 4) {
    v.push_back(x);
    if (v.size() > n) v.erase(v.begin());
}

std::string pod_str(const cache::ObjectKey& k) { return k.namespace_ + "/" + k.name; }

// The certificate a signed token names (by reference, or the fingerprint of
// the one it carries), as a rate-limit key; nullopt if it does not parse
// (verification says why).
std::optional<std::string> claimed_certificate(std::span<const uint8_t> token) {
    auto t = identity::parse(token);
    if (!t || t->type != identity::TokenType::signed_first_contact) return std::nullopt;
    const identity::Fingerprint fp = t->cert_ref ? *t->cert_ref : identity::sha256({t->certificate});
    return std::string(reinterpret_cast<const char*>(fp.data()), fp.size());
}

void add_queue_stats(handshake::QueueStats& to, const handshake::QueueStats& s) {
    to.packets += s.packets;
    to.accepted += s.accepted;
    to.dropped += s.dropped;
    to.rewritten += s.rewritten;
    to.malformed += s.malformed;
    to.overruns += s.overruns;
    to.verdict_errors += s.verdict_errors;
    to.handler_errors += s.handler_errors;
    to.rewrite_failed += s.rewrite_failed;
    to.max_batch = std::max(to.max_batch, s.max_batch);
}

}  // namespace

std::optional<HandshakeMode> parse_handshake_mode(std::string_view s) {
    if (s == "off") return HandshakeMode::off;
    if (s == "permissive") return HandshakeMode::permissive;
    if (s == "enforce") return HandshakeMode::enforce;
    return std::nullopt;
}

std::optional<size_t> parse_handshake_memory(std::string_view mib) {
    size_t n = 0;
    auto [end, ec] = std::from_chars(mib.data(), mib.data() + mib.size(), n);
    if (ec != std::errc() || end != mib.data() + mib.size() || n < (kMinHandshakeMemory >> 20) ||
        n > (kMaxHandshakeMemory >> 20))
        return std::nullopt;
    return n << 20;
}

NamespaceMode namespace_mode(const cache::Snapshot& snapshot, const std::string& ns, HandshakeMode node_default) {
    NamespaceMode m;
    m.mode = node_default;
    auto it = snapshot.namespaces.find(ns);
    if (it == snapshot.namespaces.end()) return m;
    auto label = it->second.labels.find(kHandshakeModeLabel);
    if (label == it->second.labels.end()) return m;
    if (auto parsed = parse_handshake_mode(label->second)) {
        m.mode = *parsed;
        m.from_label = true;
    } else {
        m.problem = std::string(kHandshakeModeLabel) + "=" + label->second +
                    " is not off, permissive or enforce: the node's default applies";
    }
    return m;
}

const char* to_string(HandshakeMode m) {
    switch (m) {
        case HandshakeMode::permissive: return "permissive";
        case HandshakeMode::enforce: return "enforce";
        case HandshakeMode::off: break;
    }
    return "off";
}

struct HandshakeEngine::Attachment {
    explicit Attachment(size_t* pending_total) : client(pending_total), server(pending_total), via_node(pending_total) {}
    std::string key;
    cache::ObjectKey pod;
    std::string netns;
    std::vector<std::string> addrs;  // addr_key of each of the pod's addresses
    std::unique_ptr<handshake::QueueBinding> queue;  // null: the netns could not be opened, or mode off
    // The mode its segments are judged in, and the one its table is to hold
    // (they differ only while a mode change turning the handshake off waits
    // for the table's rewrite: commit_modes()).
    HandshakeMode mode = HandshakeMode::off, target = HandshakeMode::off;
    // Registered before this signetd started (recovered from --state-dir):
    // handshakes of the previous process may be in flight (recovering()).
    bool inherited = false;
    std::string error;
    PendingTable<ClientPending> client;
    PendingTable<ServerPending> server;
    // The pod's Service connections, whose client side runs at the node
    // (translated tuples; kept apart from the pod's own: a direct
    // connection's SYN-ACK may cross the node's netns too).
    PendingTable<ClientPending> via_node;
};

HandshakeEngine::Limits HandshakeEngine::limits_for(size_t memory_limit) {
    Limits l;
    l.memory = std::max(memory_limit, kMinHandshakeMemory);
    l.replay_entries = std::min(kMaxReplayEntries, l.memory / 2 / identity::ReplayCache::kEntryBytes);
    l.replay_per_node = std::max<size_t>(1, l.replay_entries / 8);
    const size_t pending_bytes = std::max(PendingTable<ClientPending>::kEntryBytes, PendingTable<ServerPending>::kEntryBytes);
    l.pending_entries = l.memory / 4 / pending_bytes;
    l.pending_per_table = std::min(kMaxPending, l.pending_entries);
    const size_t buckets = l.memory / 8 / TokenBuckets::kEntryBytes;
    l.node_buckets = std::min(kMaxNodeBuckets, buckets / 16);
    l.address_buckets = std::min(kMaxBuckets, buckets - l.node_buckets);
    l.pair_keys = std::min<size_t>(4096, l.memory / 8 / kPairKeyBytes);
    return l;
}

HandshakeEngine::HandshakeEngine(boost::asio::io_context& io, Context ctx)
    : io_(io),
      ctx_(std::move(ctx)),
      limits_(limits_for(ctx_.memory_limit)),
      replay_(limits_.replay_entries, limits_.replay_per_node),
      addr_buckets_(ctx_.first_contact_rate, ctx_.first_contact_burst, limits_.address_buckets),
      node_buckets_(ctx_.first_contact_node_rate, ctx_.first_contact_node_burst, limits_.node_buckets),
      sweep_timer_(io) {
    started_ = ctx_.clock.steady();
    if (ctx_.queues == nullptr) {
        own_queues_ = handshake::make_nfqueue_source(io_);
        ctx_.queues = own_queues_.get();
    }
    sweep();
}

HandshakeEngine::~HandshakeEngine() { stop(); }

void HandshakeEngine::stop() {
    if (stopped_) return;
    stopped_ = true;
    sweep_timer_.cancel();
    for (auto& [k, at] : attachments_)
        if (at->queue) at->queue->stop();
    attachments_.clear();
    attachments_dirty_ = true;
}

void HandshakeEngine::pod_started(const std::string& key, const api::PodRecord& rec, bool inherited) {
    if (stopped_ || ctx_.mode == HandshakeMode::off) return;
    const HandshakeMode mode = mode_of_namespace(rec.reg.namespace_).mode;
    auto& slot = attachments_[key];
    if (slot && slot->netns == rec.reg.netns && (mode == HandshakeMode::off || (slot->queue && slot->queue->running()))) {
        slot->addrs.clear();  // a repeated ADD: the same netns, maybe new addresses
        for (const auto& ip : rec.reg.ips)
            if (auto k = addr_key_of(ip)) slot->addrs.push_back(*k);
        peers_dirty_ = attachments_dirty_ = true;
        if (mode != slot->target) {
            slot->target = mode;
            if (mode != HandshakeMode::off) slot->mode = mode;  // (queue running: checked above)
        }
        return;
    }
    if (slot) retire(*slot);
    slot = std::make_unique<Attachment>(&pending_total_);
    Attachment& at = *slot;
    at.key = key;
    at.pod = {rec.reg.namespace_, rec.reg.name};
    at.netns = rec.reg.netns;
    at.mode = at.target = mode;
    at.inherited = inherited;
    for (const auto& ip : rec.reg.ips)
        if (auto k = addr_key_of(ip)) at.addrs.push_back(*k);
    peers_dirty_ = attachments_dirty_ = true;
    // Mode off (its namespace's label): no queue; the attachment stays, so
    // the node knows the pod's Service connections are not its to token.
    if (mode != HandshakeMode::off) bind(at);
}

void HandshakeEngine::bind(Attachment& at) {
    const std::string key = at.key;
    auto q = ctx_.queues->open(at.netns, [this, key](const handshake::QueuedPacket& p) { return judge(key, p); });
    if (!q) {
        at.error = q.error().message;
        log::warn(kLog, "no handshake for " + pod_str(at.pod) + ": " + at.error +
                            " (its new TCP connections are dropped: fail closed)");
        return;
    }
    at.queue = std::move(*q);
    if (auto st = at.queue->start(); !st) {
        at.error = st.error().message;
        log::warn(kLog, "no handshake queue for " + pod_str(at.pod) + ": " + at.error +
                            " (its new TCP connections are dropped: fail closed; retried)");
        return;
    }
    at.error.clear();
    log::debug(kLog, "reading the handshake queue of " + pod_str(at.pod));
}

bool HandshakeEngine::recovering() const { return ctx_.clock.steady() - started_ < kRecoveryWindow; }

NamespaceMode HandshakeEngine::mode_of_namespace(const std::string& ns) const {
    return namespace_mode(ctx_.source->snapshot(), ns, ctx_.mode);
}

HandshakeMode HandshakeEngine::table_mode(const std::string& key) const {
    auto it = attachments_.find(key);
    return it == attachments_.end() ? ctx_.mode : it->second->target;
}

std::set<cache::ObjectKey> HandshakeEngine::refresh_modes() {
    std::set<cache::ObjectKey> changed;
    if (stopped_) return changed;
    for (auto& [k, at] : attachments_) {
        NamespaceMode m = mode_of_namespace(at->pod.namespace_);
        if (m.mode == at->target) continue;
        log::info(kLog, "handshake mode of " + pod_str(at->pod) + ": " + to_string(at->target) + " -> " +
                            to_string(m.mode) + (m.from_label ? std::string(" (label ") + kHandshakeModeLabel + ")"
                                                              : std::string(" (the node's default)")));
        if (!m.problem.empty()) log::warn(kLog, "namespace " + at->pod.namespace_ + ": " + m.problem);
        at->target = m.mode;
        if (m.mode != HandshakeMode::off) {
            if (!at->queue || !at->queue->running()) {
                if (at->queue) retire(*at);
                at->queue.reset();
                bind(*at);
            }
            at->mode = m.mode;
        }
        changed.insert(at->pod);
    }
    return changed;
}

void HandshakeEngine::commit_modes() {
    for (auto& [k, at] : attachments_) {
        if (at->target != HandshakeMode::off || at->mode == HandshakeMode::off) continue;
        at->mode = HandshakeMode::off;
        retire(*at);
        at->queue.reset();
        const auto all = std::chrono::steady_clock::time_point::max();  // its handshakes in flight go
        at->client.expire(all);
        at->server.expire(all);
        at->via_node.expire(all);
        at->error.clear();
    }
}

// Keeps the counters of an attachment's queue before it goes, and stops it.
void HandshakeEngine::retire(Attachment& at) {
    if (!at.queue) return;
    add_queue_stats(retired_queue_, at.queue->stats());
    auto k = at.queue->kernel_stats();  // before the socket closes: the instance goes with it
    retired_kernel_.queue_dropped += k.queue_dropped;
    retired_kernel_.user_dropped += k.user_dropped;
    at.queue->stop();
}

void HandshakeEngine::pod_stopped(const std::string& key) {
    auto it = attachments_.find(key);
    if (it == attachments_.end()) return;
    retire(*it->second);
    attachments_.erase(it);
    peers_dirty_ = attachments_dirty_ = true;
}

// The policy's answers are the query's, dropped by it when the policy changes.
void HandshakeEngine::source_changed() { peers_dirty_ = true; }

void HandshakeEngine::expire() {
    auto now = ctx_.clock.steady();
    for (auto& [k, at] : attachments_) {  // each table from its oldest entry: O(entries expired)
        at->client.expire(now - kClientPendingTtl);
        at->via_node.expire(now - kClientPendingTtl);
        at->server.expire(now - kServerPendingTtl);
    }
    addr_buckets_.expire(now);
    node_buckets_.expire(now);
}

void HandshakeEngine::sweep() {
    if (stopped_) return;
    expire();
    // Attachments whose queue failed to bind are retried (the netns may have been busy).
    for (auto& [k, at] : attachments_) {
        if (!at->queue || at->queue->running()) continue;
        if (at->queue->start()) {
            at->error.clear();
            log::info(kLog, "reading the handshake queue of " + pod_str(at->pod) + " (retried)");
        }
    }
    sweep_timer_.expires_after(kSweepEvery);
    sweep_timer_.async_wait([this](const boost::system::error_code& ec) {
        if (!ec) sweep();
    });
}

HandshakeEngine::Attachment* HandshakeEngine::attachment_at(const std::string& addr) {
    if (attachments_dirty_) {
        attachments_by_addr_.clear();
        for (auto& [k, at] : attachments_)
            for (const auto& a : at->addrs) attachments_by_addr_[a] = at.get();
        attachments_dirty_ = false;
    }
    auto it = attachments_by_addr_.find(addr);
    return it == attachments_by_addr_.end() ? nullptr : it->second;
}

const HandshakeEngine::Peer* HandshakeEngine::peer_at(Family f, const std::array<uint8_t, 16>& addr) {
    if (peers_dirty_) {
        peers_.clear();
        for (const auto& [k, pod] : ctx_.source->snapshot().pods) {
            // A finished pod (a Job's) holds its address no longer: another
            // pod may own it now. The policy compiler's rule (cache::is_terminal).
            if (cache::is_terminal(pod)) continue;
            for (const auto& a : pod.pod_ips) {
                auto key = addr_key_of(a);
                if (!key) continue;
                Peer& p = peers_[*key];
                p.pod = k;
                p.node = pod.node_name;
                p.uid = uid_of(pod.uid, k);
                p.host_network = pod.host_network;
            }
        }
        // What CNI reported for local pods wins (the Pod object may lag).
        for (const auto& [k, rec] : ctx_.registry->all()) {
            cache::ObjectKey ok{rec.reg.namespace_, rec.reg.name};
            const auto& pods = ctx_.source->snapshot().pods;
            auto obj = pods.find(ok);
            if (obj != pods.end() && cache::is_terminal(obj->second)) continue;  // its netns is on its way out
            for (const auto& a : rec.reg.ips) {
                auto key = addr_key_of(a);
                if (!key) continue;
                Peer& p = peers_[*key];
                p.pod = ok;
                p.node = ctx_.node_name;
                p.uid = uid_of(obj != pods.end() ? obj->second.uid : std::string(), ok);
                p.host_network = false;
            }
        }
        peers_dirty_ = false;
    }
    auto it = peers_.find(addr_key(f, addr));
    return it == peers_.end() ? nullptr : &it->second;
}

identity::PodClaim HandshakeEngine::claim_of(const Attachment& at) const {
    identity::PodClaim c;
    c.pod_namespace = at.pod.namespace_;
    c.pod_name = at.pod.name;
    const auto& pods = ctx_.source->snapshot().pods;
    auto it = pods.find(at.pod);
    c.pod_uid = uid_of(it != pods.end() ? it->second.uid : std::string(), at.pod);
    return c;
}

bool HandshakeEngine::ensure_keys() {
    const identity::NodeCredentials* creds = ctx_.identity ? ctx_.identity->credentials() : nullptr;
    if (!creds || !ctx_.identity->bundle()) return false;
    if (!pair_keys_ || !self_fp_ || *self_fp_ != creds->identity.fingerprint) {
        // New credentials (renewed): pair keys are bound to the certificates.
        pair_keys_ = std::make_unique<identity::PairKeyCache>(*creds, limits_.pair_keys);
        self_fp_ = creds->identity.fingerprint;
        node_fp_.clear();
        knows_us_.clear();  // our new certificate is known to nobody yet
    }
    // A trust bundle of other CAs (re-read from its file): pair keys made with
    // peers it no longer vouches for go now, on the way out too (a client
    // would otherwise keep sending MAC tokens under them until a token came in).
    if (pair_keys_->sync_bundle(*ctx_.identity->bundle())) {
        node_fp_.clear();
        knows_us_.clear();
    }
    return true;
}

template <typename V>
bool HandshakeEngine::make_room(PendingTable<V>& table, bool client) {
    auto now = ctx_.clock.steady();
    // A client gives up its oldest live handshake last (its SYN-ACK would
    // then be refused: unexpected_token); a server only one whose proof is
    // overdue (kServerEvictAfter).
    const auto open_before = client ? std::chrono::steady_clock::time_point::max() : now - kServerEvictAfter;
    while (table.size() >= limits_.pending_per_table || pending_total_ >= limits_.pending_entries) {
        switch (table.evict_one(open_before)) {
            case PendingTable<V>::Evicted::done: ++counters_.pending_evicted_done; break;
            case PendingTable<V>::Evicted::open:
                ++counters_.pending_evicted_live;
                if (!client) server_evicted_live_ = true;  // no recovery on missing entries from now on
                break;
            case PendingTable<V>::Evicted::none: return false;  // the node's budget is held by other pods' tables
        }
    }
    return true;
}

bool HandshakeEngine::allowed(const Attachment& at, bool ingress, const std::optional<cache::ObjectKey>& peer_pod,
                              const policy::Ip& peer_ip, uint16_t port, const Packet& p, bool* audited,
                              bool auditable) {
    policy::ConnKey k;
    k.ingress = ingress;
    k.local = at.pod;
    k.peer_pod = peer_pod;
    k.peer_ip = peer_ip;
    k.proto = nft::kTcp;
    k.port = port;
    const policy::ConnVerdict v = ctx_.policy->check(k);
    if (v.answered && v.allowed) return true;  // a pod the policy does not know: fail closed
    // Audit mode (docs/policy.md): the policy's refusal is recorded as
    // audit-denied and the connection goes on as if allowed. Only the
    // policy's: the identity's checks (tokens, replay, spoofing) refuse in
    // every mode, before this is asked. Once per connection: `audited`
    // remembers it across the client's SYN and SYN-ACK.
    if (!auditable || policy::policy_mode_of(ctx_.source->snapshot(), at.pod.namespace_, ctx_.policy_mode).mode !=
                          policy::PolicyMode::audit)
        return false;
    if (audited == nullptr || !*audited) {
        ++counters_.audit_denied;
        report_denied(at, p, ingress, true);
    }
    if (audited != nullptr) *audited = true;
    return true;
}

Decision HandshakeEngine::refuse(const std::string& reason, const Attachment& at, const Packet& p,
                                 const std::string& detail) {
    ++counters_.refused[reason];
    auto now = ctx_.clock.steady();
    if (now - log_window_ > std::chrono::seconds(1)) {
        log_window_ = now;
        logged_in_window_ = 0;
    }
    if (++logged_in_window_ <= kLogPerSecond)
        log::warn(kLog, "refused " + std::string(handshake::to_string(handshake::classify(p))) + " " +
                            ip_text(p.family, p.src) + ":" + std::to_string(p.sport) + " -> " +
                            ip_text(p.family, p.dst) + ":" + std::to_string(p.dport) + " of " + pod_str(at.pod) +
                            ": " + reason + (detail.empty() ? "" : " (" + detail + ")"));
    return Decision{handshake::kDrop, {}, {}, {}};
}

Decision HandshakeEngine::rewrite(const Packet& p, std::span<const uint8_t> token, uint32_t ct_mark) {
    Decision d;
    d.verdict = handshake::kAccept;
    if (ct_mark) d.mark = ct_mark;
    if (token.empty()) {  // strip
        auto s = handshake::strip_token(p);
        if (!s) return Decision{};
        d.replacement = std::move(s->packet);
        return d;
    }
    d.replacement.resize(handshake::tokened_size(p, token.size()));
    auto n = handshake::add_token_into(p, token, d.replacement);
    if (!n) return Decision{};
    d.replacement.resize(*n);
    return d;
}

Decision HandshakeEngine::judge(const std::string& key, const handshake::QueuedPacket& q) {
    ++counters_.segments;
    auto it = attachments_.find(key);
    if (it == attachments_.end()) return Decision{};
    Attachment& at = *it->second;
    handshake::ParseOptions po;
    po.tcp_checksum = q.csum_partial ? handshake::TcpChecksum::partial : handshake::TcpChecksum::verify;
    auto p = handshake::parse(q.payload, po);
    if (!p) {
        ++counters_.refused["malformed_packet"];
        log::debug(kLog, "dropped a malformed segment of " + pod_str(at.pod) + ": " + p.error().message);
        return Decision{};
    }
    const bool out = q.hook == handshake::hook::output;
    const bool syn = p->has(handshake::tcp_flag::syn) && !p->has(handshake::tcp_flag::ack);
    const bool syn_ack = p->has(handshake::tcp_flag::syn) && p->has(handshake::tcp_flag::ack);
    // The enforce rules queue a closing connection's segments with the
    // packet mark set to kCtMarkClosing (incoming packets' marks are cleared
    // when they enter the pod's netns: nothing else can have set it).
    const bool closing = !out && q.hook == handshake::hook::input && (q.mark & kCtMarkMask) == kCtMarkClosing;
    // Every SYN and SYN-ACK without FIN or RST was queued by the SYN rule: a
    // SYN here carries FIN or RST too (conntrack calls it invalid).
    if (closing && p->has(handshake::tcp_flag::syn))
        return refuse("malformed_packet", at, *p, "a SYN with FIN or RST");
    Decision d = closing   ? closing_segment(at, *p)
                 : syn     ? (out ? client_syn(at, *p) : server_syn(at, *p))
                 : syn_ack ? (out ? server_syn_ack(at, *p) : client_syn_ack(at, *p))
                           // Queued by the proof rules: the client's segments while its
                           // final ACK's proof is due, the server's while it awaits it.
                           : (out ? client_ack(at, *p) : server_ack(at, *p, q.hook));
    // The verdict's mark replaces the packet's: keep every bit but signet's
    // (other users of the packet mark in the pod: a service mesh's TPROXY).
    if (d.mark) d.mark = (q.mark & ~kCtMarkMask) | *d.mark;
    return d;
}

std::optional<Decision> HandshakeEngine::judge_at_node(const handshake::QueuedPacket& q) {
    if (q.payload.size() < 20) return Decision{};
    const int version = q.payload[0] >> 4;
    const uint8_t l4 = version == 4 ? q.payload[9] : version == 6 && q.payload.size() >= 40 ? q.payload[6] : 0;
    if (l4 != IPPROTO_TCP) return std::nullopt;  // (IPv6 extension headers: the Service judge's parser)
    ++counters_.segments;
    handshake::ParseOptions po;
    po.tcp_checksum = q.csum_partial ? handshake::TcpChecksum::partial : handshake::TcpChecksum::verify;
    auto p = handshake::parse(q.payload, po);
    if (!p) {
        ++counters_.refused["malformed_packet"];
        return Decision{};
    }
    const bool syn = p->has(handshake::tcp_flag::syn) && !p->has(handshake::tcp_flag::ack);
    const bool syn_ack = p->has(handshake::tcp_flag::syn) && p->has(handshake::tcp_flag::ack);
    // The local pod: the source of its SYN and ACKs, the destination of the SYN-ACK.
    const auto& local = syn_ack ? p->dst : p->src;
    Attachment* at = attachment_at(addr_key(p->family, local));
    if (at == nullptr) {
        ++counters_.refused["not_a_local_pod"];
        return Decision{};
    }
    // Its namespace runs the handshake off: the Service judge's own verdict.
    if (at->mode == HandshakeMode::off) return std::nullopt;
    constexpr uint32_t kMasqueradeMark = 0x4000;  // kube-proxy's --iptables-masquerade-bit 14 (both modes)
    Decision d;
    // A segment that is neither SYN nor SYN-ACK of a connection with no
    // handshake in flight here: conntrack picked it up mid-stream (its entry
    // was cut after a policy change, or lost): judged on policy like a new
    // connection, never passed on trust.
    const bool midstream = !syn && !syn_ack &&
                           !at->via_node.contains(conn_key(binding_of_later(*p, true)));
    if ((syn && ((q.mark & kMasqueradeMark) || p->src == p->dst)) || midstream) {
        // Masqueraded on the way out (hairpin, NodePort): the backend sees a
        // node address, which no token could be bound to. Egress is judged
        // here, on the backend; its ingress judges the node's address.
        const Peer* peer = peer_at(p->family, p->dst);
        std::optional<cache::ObjectKey> as_pod;
        if (peer && !peer->host_network) as_pod = peer->pod;
        if (!allowed(*at, false, as_pod, ip_of(p->family, p->dst), p->dport, *p)) {
            ++counters_.denied;
            report_denied(*at, *p, false);
            return Decision{};
        }
        ++counters_.accepted_by_address;
        d.verdict = handshake::kAccept;
        d.mark = kCtMarkByAddress;
    } else if (syn) {
        d = client_syn(*at, *p, true);
    } else if (syn_ack) {
        d = client_syn_ack(*at, *p, true);
    } else {
        d = client_ack(*at, *p, true);
    }
    // The verdict's mark replaces the packet's: keep every bit but signet's
    // (kube-proxy's masquerade bit among them).
    if (d.mark) d.mark = (q.mark & ~kCtMarkMask) | *d.mark;
    return d;
}

// The peer's token in a SYN (role client) or SYN-ACK (role server), for the
// connection `b`: stripped, rate-limited when signed, verified (the claimed pod
// must own the peer's address and run on the signing node, by this node's
// cluster view). On success `v` and `stripped` (the packet without it) are
// set; otherwise the refusal to return.
Decision HandshakeEngine::verify_peer(Attachment& at, const Packet& p, identity::Role role,
                                      const identity::ConnBinding& b, std::optional<identity::VerifiedToken>& v,
                                      std::vector<uint8_t>& stripped) {
    if (!ensure_keys()) return refuse("no_credentials", at, p, "this node has no identity credentials");
    auto s = handshake::strip_token(p);
    if (!s) return refuse("malformed_packet", at, p, s.error().message);
    std::span<const uint8_t> tok = s->token;
    const bool first_contact =
        tok.size() >= 2 && tok[1] == static_cast<uint8_t>(identity::TokenType::signed_first_contact);
    if (first_contact) {
        // Limited per source address, then per the node whose certificate it
        // names: checked now, charged once it verified (forgeries naming a
        // node's certificate cannot use up that node's budget).
        auto now = ctx_.clock.steady();
        bool table_full = false;
        if (!addr_buckets_.take(addr_key(p.family, p.src), now, &table_full))
            return refuse("rate_limited", at, p,
                          table_full ? "first-contact verifications from too many addresses at once"
                                     : "first-contact verifications from this address over the limit");
        if (auto fp = claimed_certificate(tok); fp && !node_buckets_.has_token(*fp, now))
            return refuse("rate_limited", at, p, "first-contact verifications from this node over the limit");
    }
    identity::VerifyContext vc;
    vc.bundle = ctx_.identity->bundle();
    vc.pair_keys = pair_keys_.get();
    vc.replay = &replay_;
    vc.record_replay = false;  // recorded once the policy admitted the connection (record_replay below)
    const bool peer_is_client = role == identity::Role::client;
    vc.pod_on_node = [this, peer_is_client](const identity::Claims& c, const identity::ConnBinding& cb) {
        const Peer* owner =
            peer_at(cb.ipv6 ? Family::ipv6 : Family::ipv4, peer_is_client ? cb.client_addr : cb.server_addr);
        return owner && !owner->host_network && owner->pod.namespace_ == c.pod_namespace &&
               owner->pod.name == c.pod_name && owner->node == c.node_name && owner->uid == c.pod_uid;
    };
    auto r = identity::verify_token(tok, role, b, ctx_.clock.wall(), vc);
    if (!r) return refuse(identity::to_string(static_cast<identity::TokenError>(r.error().code)), at, p,
                          r.error().message);
    ++(r->type == identity::TokenType::signed_first_contact ? counters_.verified_signed : counters_.verified_mac);
    if (first_contact)
        node_buckets_.charge(std::string(reinterpret_cast<const char*>(r->peer_fingerprint.data()), r->peer_fingerprint.size()),
                             ctx_.clock.steady());
    node_fp_[r->claims.node_name] = r->peer_fingerprint;
    if (r->type == identity::TokenType::mac) knows_us_.insert(r->claims.node_name);  // it derived the pair key
    stripped = std::move(s->packet);
    v = std::move(*r);
    return Decision{};
}

// The local pod opens a connection.
Decision HandshakeEngine::client_syn(Attachment& at, const Packet& p, bool at_node) {
    if (std::find(at.addrs.begin(), at.addrs.end(), addr_key(p.family, p.src)) == at.addrs.end())
        return refuse("spoofed_source", at, p, "the pod's SYN has a source address that is not the pod's");
    if (p.options.token) return refuse("malformed_packet", at, p, "the pod's own SYN carries a signet option");
    const policy::Ip dst_ip = ip_of(p.family, p.dst);
    if (!at_node && ctx_.service_frontend && ctx_.service_frontend(dst_ip, p.dport)) {
        // A Service frontend: kube-proxy translates it in the node's netns,
        // where the node's table judges the connection on the backend and the
        // handshake binds to the translated connection (judge_at_node).
        ++counters_.deferred_to_node;
        Decision d;
        d.verdict = handshake::kAccept;
        d.mark = kCtMarkDeferred;  // the pod's table lets the connection's segments pass (enforce mode)
        return d;
    }
    auto& pending = at_node ? at.via_node : at.client;
    const Peer* peer = peer_at(p.family, p.dst);
    const bool pod_peer = peer && !peer->host_network;
    // Egress on the destination's cluster identity (a pod: confirmed on its
    // proven identity when the SYN-ACK comes back) or its address.
    std::optional<cache::ObjectKey> as_pod;
    if (pod_peer) as_pod = peer->pod;
    bool audited = false;  // audit mode: reported here, not again at the SYN-ACK
    if (!allowed(at, false, as_pod, dst_ip, p.dport, p, &audited)) {
        ++counters_.denied;
        report_denied(at, p, false);
        return Decision{};
    }
    if (!pod_peer || !p.payload.empty() || !ensure_keys()) {
        ++counters_.accepted_by_address;
        Decision d;
        d.verdict = handshake::kAccept;
        d.mark = kCtMarkByAddress;
        return d;
    }
    identity::ConnBinding b = binding_of(p, true);
    std::string ck = conn_key(b);
    if (!pending.contains(ck) && !make_room(pending, true))
        return refuse("pending_full", at, p, "too many handshakes in flight on this node, none completed to give up");
    const auto steady = ctx_.clock.steady();
    ClientPending& pend = pending.touch(ck, steady);
    pending.set_done(ck, false, steady);  // a SYN: the handshake is open (again)
    if (pend.attempts > 0 && pend.isn != p.seq) pend = ClientPending{};  // the ports reused: a new connection
    pend.isn = p.seq;
    pend.verified = false;
    pend.audited = audited;
    const bool retransmission = pend.attempts > 0;
    ++pend.attempts;
    auto now = ctx_.clock.wall();
    identity::PodClaim claim = claim_of(at);
    std::shared_ptr<const identity::PairKey> key;
    // A retransmitted SYN after a MAC token: the peer may have lost the pair
    // key (restart, eviction): go back to a signed token.
    if (!(retransmission && !pend.was_signed)) {
        if (auto f = node_fp_.find(peer->node); f != node_fp_.end() && knows_us_.count(peer->node))
            key = pair_keys_->by_fingerprint(f->second, now);
    }
    Result<identity::Bytes> token = key ? identity::make_mac_token(*key, identity::Role::client, b, claim, now)
                                        : identity::make_signed_token(*ctx_.identity->credentials(),
                                                                      identity::Role::client, b, claim, now);
    if (!token) return refuse("internal", at, p, token.error().message);
    pend.was_signed = !key;
    if (auto n = nonce_of(*token)) pend.client_nonce = *n;
    Decision d = rewrite(p, *token, 0);
    if (d.verdict != handshake::kAccept) return refuse("no_room_for_token", at, p, "");
    d.mark = kCtMarkPending;
    ++(key ? counters_.tokens_added_mac : counters_.tokens_added_signed);
    return d;
}

// A connection to the local pod.
Decision HandshakeEngine::server_syn(Attachment& at, const Packet& p) {
    {
        // Simultaneous open: the local pod's own SYN to this peer, same
        // ports, is in flight. Each side would be client and server of one
        // connection at once, with two handshakes crossing and neither's proof
        // awaited: refused (both connects time out) rather than half judged.
        identity::ConnBinding own;
        own.ipv6 = p.family == Family::ipv6;
        own.client_addr = p.dst;
        own.server_addr = p.src;
        own.client_port = p.dport;
        own.server_port = p.sport;
        if (const ClientPending* c = at.client.find(conn_key(own)); c && !c->verified)
            return refuse("simultaneous_open", at, p, "the pod's own SYN to this peer and port is in flight");
    }
    const policy::Ip src_ip = ip_of(p.family, p.src);
    const Peer* peer = peer_at(p.family, p.src);
    const bool pod_peer = peer && !peer->host_network;
    if (p.options.token) {
        identity::ConnBinding b = binding_of(p, true);
        std::optional<identity::VerifiedToken> v;
        std::vector<uint8_t> stripped;
        if (Decision refused = verify_peer(at, p, identity::Role::client, b, v, stripped); !v) return refused;
        const bool was_signed = v->type == identity::TokenType::signed_first_contact;
        cache::ObjectKey proven{v->claims.pod_namespace, v->claims.pod_name};
        if (!allowed(at, true, proven, src_ip, p.dport, p)) {
            ++counters_.denied;
            report_denied(at, p, true);
            return Decision{};
        }
        const std::string ck = conn_key(b);
        if (!at.server.contains(ck) && !make_room(at.server, false))
            return refuse("pending_full", at, p, "too many handshakes in flight on this node, none to give up");
        // Admitted: only now is the token recorded against replay (a token the
        // policy refuses fills nothing). Check and insert are one step.
        if (auto st = identity::record_replay(replay_, *v, ctx_.clock.wall()); !st)
            return refuse(identity::to_string(static_cast<identity::TokenError>(st.error().code)), at, p,
                          st.error().message);
        const auto steady = ctx_.clock.steady();
        ServerPending& sp = at.server.touch(ck, steady);
        at.server.set_done(ck, false, steady);
        if (sp.isn != b.client_isn || !sp.pair_key) sp = ServerPending{};  // not a retransmission: a new connection
        sp.isn = b.client_isn;
        sp.client_signed = was_signed;
        sp.pair_key = v->pair_key;
        sp.binding = b;
        keep_last(sp.client_nonces, v->nonce);
        ++counters_.accepted_authenticated;
        Decision d;
        d.verdict = handshake::kAccept;
        d.replacement = std::move(stripped);
        d.mark = kCtMarkAwaitProof;  // until the final ACK proves the client holds the pair key
        return d;
    }
    return judge_tokenless(at, p, true, pod_peer ? peer : nullptr, src_ip, p.dport);
}

// The local pod answers a connection: the server's token, if the client sent one.
Decision HandshakeEngine::server_syn_ack(Attachment& at, const Packet& p) {
    identity::ConnBinding b = binding_of(p, false);
    const std::string ck = conn_key(b);
    ServerPending* found = at.server.find(ck);
    Decision pass;
    pass.verdict = handshake::kAccept;
    if (!found || found->isn != b.client_isn || !ensure_keys()) return pass;  // tokenless
    ServerPending& sp = *found;
    auto now = ctx_.clock.wall();
    identity::PodClaim claim = claim_of(at);
    Result<identity::Bytes> token =
        (!sp.client_signed && sp.pair_key)
            ? identity::make_mac_token(*sp.pair_key, identity::Role::server, b, claim, now)
            : identity::make_signed_token(*ctx_.identity->credentials(), identity::Role::server, b, claim, now);
    if (!token) return refuse("internal", at, p, token.error().message);
    Decision d = rewrite(p, *token, 0);
    if (d.verdict != handshake::kAccept) return refuse("no_room_for_token", at, p, "");
    if (auto n = nonce_of(*token)) keep_last(sp.server_nonces, *n);
    sp.binding.server_isn = b.server_isn;
    at.server.touch(ck, ctx_.clock.steady());
    ++(sp.client_signed || !sp.pair_key ? counters_.tokens_added_signed : counters_.tokens_added_mac);
    return d;  // kept until it expires: a retransmitted SYN-ACK gets a fresh token
}

// The answer to the local pod's connection.
Decision HandshakeEngine::client_syn_ack(Attachment& at, const Packet& p, bool at_node) {
    identity::ConnBinding b = binding_of(p, false);
    const std::string ck = conn_key(b);
    auto& pending = at_node ? at.via_node : at.client;
    ClientPending* found = pending.find(ck);
    if (found && found->isn != b.client_isn) found = nullptr;
    const policy::Ip src_ip = ip_of(p.family, p.src);
    if (!found && p.options.token && at.inherited && recovering()) {
        // A connection the previous signetd sent our token on, caught by the
        // restart before the final ACK's proof: the server retransmits its
        // SYN-ACK with a fresh token. Verified and judged as a first one;
        // the proof then goes with a zero client nonce (the one our token
        // carried died with the previous process), which the server accepts.
        if (!pending.contains(ck) && !make_room(pending, true))
            return refuse("pending_full", at, p, "too many handshakes in flight on this node, none completed to give up");
        ClientPending& pend = pending.touch(ck, ctx_.clock.steady());
        pend = ClientPending{};
        pend.isn = b.client_isn;
        pend.attempts = 1;
        pend.recovered = true;
        found = &pend;
    }
    if (!found) {
        // Not a connection we sent a token on (judged by address at the SYN),
        // or one from before a restart: a token here was not asked for.
        if (p.options.token) return refuse("unexpected_token", at, p, "no token was sent on this connection");
        Decision d;
        d.verdict = handshake::kAccept;
        return d;
    }
    const Peer* peer = peer_at(p.family, p.src);
    const bool pod_peer = peer && !peer->host_network;
    if (p.options.token) {
        std::optional<identity::VerifiedToken> v;
        std::vector<uint8_t> stripped;
        if (Decision refused = verify_peer(at, p, identity::Role::server, b, v, stripped); !v) return refused;
        cache::ObjectKey proven{v->claims.pod_namespace, v->claims.pod_name};
        if (!allowed(at, false, proven, src_ip, p.sport, p, &found->audited)) {
            ++counters_.denied;
            report_denied(at, p, false);
            return Decision{};
        }
        // Admitted: recorded against replay now (see server_syn).
        if (auto st = identity::record_replay(replay_, *v, ctx_.clock.wall()); !st)
            return refuse(identity::to_string(static_cast<identity::TokenError>(st.error().code)), at, p,
                          st.error().message);
        // The final ACK will carry the proof (also after a retransmitted
        // SYN-ACK: the server did not get it, the client's kernel answers it
        // with another ACK).
        ClientPending& pend = *found;
        // The server verified our token (signed: it has our certificate now).
        if (!pend.recovered) knows_us_.insert(v->claims.node_name);
        if (pend.recovered && !pend.verified) ++counters_.recovered_client;
        if (!pend.verified) ++counters_.accepted_authenticated;
        pend.verified = true;
        pend.binding = b;
        pend.server_nonce = v->nonce;
        pend.pair_key = v->pair_key;
        pending.touch(ck, ctx_.clock.steady());
        Decision d;
        d.verdict = handshake::kAccept;
        d.replacement = std::move(stripped);
        d.mark = kCtMarkProofDue;
        return d;
    }
    // The peer did not authenticate (its node runs no signet, or has the handshake off).
    Decision d = judge_tokenless(at, p, false, pod_peer ? peer : nullptr, src_ip, p.sport);
    if (d.verdict == handshake::kAccept) pending.erase(ck);
    return d;
}

// A SYN (ingress) or SYN-ACK (egress) that carries no token, judged by
// address. In enforce mode a pod's address proves nothing: it counts as a
// plain address, so only ipBlock rules (and the node's own addresses) can
// admit it; in permissive mode it is judged as the pod at that address.
Decision HandshakeEngine::judge_tokenless(const Attachment& at, const Packet& p, bool ingress, const Peer* pod_peer,
                                          const policy::Ip& peer_ip, uint16_t port) {
    std::optional<cache::ObjectKey> as_pod;
    if (pod_peer && at.mode == HandshakeMode::permissive) as_pod = pod_peer->pod;
    // Enforce mode, a pod's address without its token: refused for want of
    // the proof (no_token) in every policy mode; audit mode does not lift the
    // identity's requirements.
    const bool proof_missing = pod_peer && at.mode == HandshakeMode::enforce;
    if (!allowed(at, ingress, as_pod, peer_ip, port, p, nullptr, !proof_missing)) {
        report_denied(at, p, ingress);
        if (proof_missing)
            return refuse("no_token", at, p,
                          std::string("a tokenless ") + (ingress ? "SYN" : "SYN-ACK") + " from pod " +
                              pod_str(pod_peer->pod) + "'s address");
        ++counters_.denied;
        return Decision{};
    }
    ++counters_.accepted_by_address;
    Decision d;
    d.verdict = handshake::kAccept;
    d.mark = kCtMarkByAddress;
    return d;
}

// The local pod's segments while its final ACK's proof is due: the bare ACK
// that completes the handshake gets the proof (16 bytes, HMAC under the pair
// key over the full binding and both tokens' nonces) as a token.
Decision HandshakeEngine::client_ack(Attachment& at, const Packet& p, bool at_node) {
    Decision pass;
    pass.verdict = handshake::kAccept;
    auto& pending = at_node ? at.via_node : at.client;
    const std::string ck = conn_key(binding_of_later(p, true));
    ClientPending* found = pending.find(ck);
    if (!found || !found->verified || !found->pair_key) return pass;
    ClientPending& pend = *found;
    // Only the bare ACK of the handshake has room (data would move sequence
    // numbers); a piggybacked first ACK passes without, and the server, which
    // holds everything until the proof, retransmits its SYN-ACK: the client's
    // kernel answers with a bare ACK that gets the proof.
    if (handshake::classify(p) != handshake::Segment::ack || p.options.token || !pend.binding.server_isn ||
        p.ack != *pend.binding.server_isn + 1)
        return pass;
    auto proof = identity::ack_proof(*pend.pair_key, pend.binding, pend.client_nonce, pend.server_nonce);
    Decision d = rewrite(p, proof, kCtMarkAuthenticated);
    if (d.verdict != handshake::kAccept) return refuse("no_room_for_token", at, p, "the final ACK's proof");
    ++counters_.proofs_sent;
    // Completed: the entry stays (until it expires, or room is needed: the
    // first to go) for a retransmitted SYN-ACK.
    pending.set_done(ck, true, ctx_.clock.steady());
    return d;
}

// The client's segments while the local pod (the server) awaits the final
// ACK's proof: nothing passes before it, so the server's kernel stays in
// SYN-RECV and retransmits its SYN-ACK if the proof was lost.
Decision HandshakeEngine::server_ack(Attachment& at, const Packet& p, uint8_t hook) {
    const std::string ck = conn_key(binding_of_later(p, true));
    ServerPending* found = at.server.find(ck);
    // A handshake the previous signetd left between SYN and proof (docs/handshake.md, "Across a restart").
    const bool orphan = !found && at.inherited && recovering() && !server_evicted_live_;
    if (orphan && hook != handshake::hook::input && p.options.token) {
        // A segment with the option (the final ACK's proof), queued before
        // conntrack: whether its connection awaits a proof is not known
        // here. Stripped and passed unmarked: conntrack and the pod's table
        // decide next (a connection awaiting the proof queues it again, at
        // input, below; one that does not exist is dropped as not a SYN).
        auto stripped = handshake::strip_token(p);
        if (!stripped) return refuse("malformed_packet", at, p, stripped.error().message);
        Decision d;
        d.verdict = handshake::kAccept;
        d.replacement = std::move(stripped->packet);
        return d;
    }
    if (orphan && hook == handshake::hook::input) {
        // A connection the previous signetd admitted on the client's
        // verified token (only it sets the "awaiting proof" mark this
        // segment was queued on), caught by the restart before the final
        // ACK's proof: the nonces the proof is checked against died with that
        // process. Admitted on that verdict, re-judged on today's policy as
        // the pod at the client's address; the proof, if this segment
        // carries it, never reaches the pod (docs/handshake.md, "Across a restart").
        const Peer* peer = peer_at(p.family, p.src);
        std::optional<cache::ObjectKey> as_pod;
        if (peer && !peer->host_network) as_pod = peer->pod;
        if (!as_pod) return refuse("no_proof", at, p, "after a restart: the client's address is no pod's");
        if (!allowed(at, true, as_pod, ip_of(p.family, p.src), p.dport, p)) {
            ++counters_.denied;
            report_denied(at, p, true);
            return Decision{};
        }
        Decision d;
        d.verdict = handshake::kAccept;
        d.mark = kCtMarkAuthenticated;
        ++counters_.recovered_server;
        return d;
    }
    if (!found || !found->pair_key)
        return refuse("no_proof", at, p, "no handshake in flight for this connection (signetd restarted?)");
    ServerPending& sp = *found;
    Decision accept;
    accept.verdict = handshake::kAccept;
    accept.mark = kCtMarkAuthenticated;
    if (sp.proven) {
        if (!p.options.token) return accept;  // segments queued behind the proof
        // A proof again (the client answered a retransmitted SYN-ACK): never
        // hand the option to the pod's stack. Only while the connection's
        // socket exists: once it is closed, a copy of the final ACK would
        // reach the listener, which takes it as a new connection when its
        // SYN cookie checks out.
        if (std::string why; !connection_socket_exists(at, p, why))
            return discard_closed(at, p, "a proof again after the connection closed: " + why);
        auto again = handshake::strip_token(p);
        if (!again) return refuse("malformed_packet", at, p, again.error().message);
        accept.replacement = std::move(again->packet);
        return accept;
    }
    if (!p.options.token) {
        if (p.has(handshake::tcp_flag::rst)) {
            // The client gave up (or closed at once) and its RST overtook the
            // proof: segments the client's node reinjects after a verdict and
            // segments its stack sends directly take different CPUs' queues.
            // An RST opens nothing: it passes and ends the embryonic
            // connection; a proof arriving after it is discarded.
            sp.reset = true;
            at.server.set_done(ck, true, ctx_.clock.steady());
            Decision d;
            d.verdict = handshake::kAccept;
            return d;
        }
        ++counters_.held_for_proof;
        return Decision{};
    }
    if (sp.reset) {
        ++counters_.proof_after_reset;
        return Decision{};
    }
    auto stripped = handshake::strip_token(p);
    if (!stripped) return refuse("malformed_packet", at, p, stripped.error().message);
    identity::ConnBinding b = sp.binding;
    b.server_isn = p.ack - 1;
    const bool ok = stripped->token.size() == 16;  // bound to both ISNs by the binding, not to this segment
    bool match = false;
    // The client nonces of the SYNs verified, and zero: a client whose
    // signetd restarted before its proof lost its own (client_syn_ack's
    // recovery; the server's fresh nonce still binds the proof to this
    // SYN-ACK, the pair key to the client's node).
    auto check = [&](const identity::Nonce& cn) {
        for (const auto& sn : sp.server_nonces) {
            auto want = identity::ack_proof(*sp.pair_key, b, cn, sn);
            match = match || (ok && CRYPTO_memcmp(want.data(), stripped->token.data(), want.size()) == 0);
        }
    };
    for (const auto& cn : sp.client_nonces) check(cn);
    check(identity::Nonce{});
    if (!match) return refuse("bad_proof", at, p, "the final ACK's proof does not verify");
    sp.proven = true;
    at.server.set_done(ck, true, ctx_.clock.steady());
    ++counters_.proofs_verified;
    accept.replacement = std::move(stripped->packet);
    return accept;
}

Decision HandshakeEngine::closing_segment(Attachment& at, const Packet& p) {
    ++counters_.closing_checked;
    if (std::string why; !connection_socket_exists(at, p, why))
        return discard_closed(at, p, "a segment after the connection closed: " + why);
    Decision d;
    d.verdict = handshake::kAccept;
    d.mark = kCtMarkClosing;
    return d;
}

// A segment whose connection is gone: dropped and counted apart from the
// refusals. A replayed handshake ACK (the SYN-cookie attack) and an honest
// late segment (a client's ACK queued for this check while its own RST, which
// is not queued, ended the connection) look the same here, and neither has a
// connection left to reach: nothing is lost by the drop.
Decision HandshakeEngine::discard_closed(const Attachment& at, const Packet& p, const std::string& why) {
    ++counters_.closed_discarded;
    log::debug(kLog, "dropped " + std::string(handshake::to_string(handshake::classify(p))) + " " +
                         ip_text(p.family, p.src) + ":" + std::to_string(p.sport) + " -> " + ip_text(p.family, p.dst) +
                         ":" + std::to_string(p.dport) + " of " + pod_str(at.pod) + ": " + why);
    return Decision{handshake::kDrop, {}, {}, {}};
}

bool HandshakeEngine::connection_socket_exists(Attachment& at, const Packet& p, std::string& why) {
    if (!at.queue) {
        why = "no queue binding";
        return false;
    }
    handshake::SocketTuple t;
    t.family = p.family;
    t.local = p.dst;
    t.remote = p.src;
    t.local_port = p.dport;
    t.remote_port = p.sport;
    auto state = at.queue->tcp_socket_state(t);
    if (!state) {
        why = "the socket lookup failed: " + state.error().message;
        return false;
    }
    if (!*state) {
        why = "no socket";
        return false;
    }
    if (**state == handshake::kTcpStateListen) {
        why = "only the listener";
        return false;
    }
    return true;
}

// A refused new connection as the flow records take it: the connection's
// tuple (initiator -> responder) and the segment's length.
void HandshakeEngine::report_denied(const Attachment& at, const Packet& p, bool ingress, bool audit) {
    if (!ctx_.on_denied) return;
    const bool syn_ack = p.has(handshake::tcp_flag::ack);
    nft::LoggedPacket lp;
    lp.prefix = std::string(audit ? nft::kAuditLogPrefix : "signet ") + (ingress ? "ingress" : "egress");
    lp.tuple.family = p.family == Family::ipv4 ? nft::Family::v4 : nft::Family::v6;
    std::memcpy(lp.tuple.src.bytes.data(), (syn_ack ? p.dst : p.src).data(), 16);
    std::memcpy(lp.tuple.dst.bytes.data(), (syn_ack ? p.src : p.dst).data(), 16);
    lp.tuple.proto = nft::kTcp;
    lp.tuple.sport = syn_ack ? p.dport : p.sport;
    lp.tuple.dport = syn_ack ? p.sport : p.dport;
    lp.length = static_cast<uint32_t>(p.bytes.size());
    lp.tcp_flags = p.flags;
    ctx_.on_denied(at.key, lp);
}

// The queues' counters, of the attachments gone and of those bound now.
uint64_t HandshakeEngine::queue_totals(handshake::QueueStats& qs, handshake::KernelQueueStats& ks) const {
    qs = retired_queue_;
    ks = retired_kernel_;
    uint64_t running = 0;
    for (const auto& [k, at] : attachments_) {
        if (!at->queue || !at->queue->running()) continue;
        ++running;
        add_queue_stats(qs, at->queue->stats());
        auto kk = at->queue->kernel_stats();
        ks.queue_dropped += kk.queue_dropped;
        ks.user_dropped += kk.user_dropped;
        ks.waiting += kk.waiting;
    }
    return running;
}

HandshakeEngine::Drops HandshakeEngine::drops() const {
    handshake::QueueStats qs;
    handshake::KernelQueueStats ks;
    queue_totals(qs, ks);
    return drops_of(qs, ks);
}

HandshakeEngine::Drops HandshakeEngine::drops_of(const handshake::QueueStats& qs,
                                                 const handshake::KernelQueueStats& ks) const {
    Drops d;
    d.kernel_queue_full = ks.queue_dropped;
    d.kernel_socket_full = ks.user_dropped;
    d.socket_overruns = qs.overruns;
    d.verdict_errors = qs.verdict_errors;
    d.handler_errors = qs.handler_errors;
    d.rewrite_failed = qs.rewrite_failed;
    d.malformed_messages = qs.malformed;
    for (const auto& [reason, n] : counters_.refused) {
        if (reason == "pending_full" || reason == "rate_limited")
            d.limits += n;
        else if (reason == "internal" || reason == "no_room_for_token" || reason == "no_credentials")
            d.internal += n;
        else
            d.refused += n;
    }
    d.held_for_proof = counters_.held_for_proof;
    d.denied = counters_.denied;
    d.discarded = counters_.proof_after_reset + counters_.closed_discarded;
    return d;
}

void HandshakeEngine::status(rapidjson::Value& out, rapidjson::Document::AllocatorType& a) const {
    using rapidjson::Value;
    out.SetObject();
    out.AddMember("mode", Value(to_string(ctx_.mode), a), a);
    // Per namespace (signet.dev/handshake): the labelled namespaces, and the
    // local pods in each mode.
    Value labelled(rapidjson::kObjectType);
    for (const auto& [name, ns] : ctx_.source->snapshot().namespaces) {
        if (ns.labels.count(kHandshakeModeLabel) == 0) continue;
        NamespaceMode m = namespace_mode(ctx_.source->snapshot(), name, ctx_.mode);
        Value e(rapidjson::kObjectType);
        e.AddMember("mode", Value(to_string(m.mode), a), a);
        if (!m.problem.empty()) e.AddMember("problem", Value(m.problem.c_str(), a), a);
        labelled.AddMember(Value(name.c_str(), a), e, a);
    }
    out.AddMember("namespaces", labelled, a);
    uint64_t by_mode[3] = {0, 0, 0};
    for (const auto& [k, at] : attachments_) ++by_mode[static_cast<int>(at->mode)];
    Value pods(rapidjson::kObjectType);
    for (auto m : {HandshakeMode::off, HandshakeMode::permissive, HandshakeMode::enforce})
        pods.AddMember(Value(to_string(m), a), Value(by_mode[static_cast<int>(m)]), a);
    out.AddMember("pods_by_mode", pods, a);
    Value c(rapidjson::kObjectType);
    c.AddMember("segments", Value(counters_.segments), a);
    c.AddMember("tokens_added", Value(counters_.tokens_added_mac + counters_.tokens_added_signed), a);
    c.AddMember("tokens_added_mac", Value(counters_.tokens_added_mac), a);
    c.AddMember("tokens_added_signed", Value(counters_.tokens_added_signed), a);
    c.AddMember("verified", Value(counters_.verified_mac + counters_.verified_signed), a);
    c.AddMember("verified_mac", Value(counters_.verified_mac), a);
    c.AddMember("verified_signed", Value(counters_.verified_signed), a);
    c.AddMember("accepted", Value(counters_.accepted_authenticated + counters_.accepted_by_address), a);
    c.AddMember("accepted_authenticated", Value(counters_.accepted_authenticated), a);
    c.AddMember("accepted_by_address", Value(counters_.accepted_by_address), a);
    c.AddMember("denied", Value(counters_.denied), a);
    c.AddMember("audit_denied", Value(counters_.audit_denied), a);
    c.AddMember("proofs_sent", Value(counters_.proofs_sent), a);
    c.AddMember("proofs_verified", Value(counters_.proofs_verified), a);
    c.AddMember("held_for_proof", Value(counters_.held_for_proof), a);
    c.AddMember("proof_after_reset", Value(counters_.proof_after_reset), a);
    c.AddMember("closing_checked", Value(counters_.closing_checked), a);
    c.AddMember("closed_discarded", Value(counters_.closed_discarded), a);
    c.AddMember("deferred_to_node", Value(counters_.deferred_to_node), a);
    c.AddMember("pending_evicted_done", Value(counters_.pending_evicted_done), a);
    c.AddMember("pending_evicted_live", Value(counters_.pending_evicted_live), a);
    c.AddMember("recovered_server", Value(counters_.recovered_server), a);
    c.AddMember("recovered_client", Value(counters_.recovered_client), a);
    out.AddMember("counters", c, a);
    Value r(rapidjson::kObjectType);
    for (const auto& [reason, n] : counters_.refused) r.AddMember(Value(reason.c_str(), a), Value(n), a);
    out.AddMember("refused", r, a);
    handshake::QueueStats qs;
    handshake::KernelQueueStats ks;
    const uint64_t readers = queue_totals(qs, ks);
    uint64_t pending = 0;
    Value errors(rapidjson::kArrayType);
    for (const auto& [k, at] : attachments_) {
        pending += at->client.size() + at->server.size();
        if (!at->error.empty()) {
            Value e(rapidjson::kObjectType);
            e.AddMember("pod", Value(pod_str(at->pod).c_str(), a), a);
            e.AddMember("error", Value(at->error.c_str(), a), a);
            errors.PushBack(e, a);
        }
    }
    Value q(rapidjson::kObjectType);
    q.AddMember("number", Value(handshake::kHandshakeQueue), a);
    q.AddMember("readers", Value(readers), a);
    q.AddMember("packets", Value(qs.packets), a);
    q.AddMember("accepted", Value(qs.accepted), a);
    q.AddMember("dropped", Value(qs.dropped), a);
    q.AddMember("rewritten", Value(qs.rewritten), a);
    q.AddMember("malformed", Value(qs.malformed), a);
    q.AddMember("overruns", Value(qs.overruns), a);
    q.AddMember("verdict_errors", Value(qs.verdict_errors), a);
    q.AddMember("handler_errors", Value(qs.handler_errors), a);
    q.AddMember("rewrite_failed", Value(qs.rewrite_failed), a);
    q.AddMember("max_batch", Value(qs.max_batch), a);
    q.AddMember("waiting", Value(ks.waiting), a);
    q.AddMember("kernel_queue_dropped", Value(ks.queue_dropped), a);
    q.AddMember("kernel_user_dropped", Value(ks.user_dropped), a);
    q.AddMember("errors", errors, a);
    out.AddMember("queue", q, a);
    const Drops dr = drops_of(qs, ks);  // the queues' counters read once per status
    Value d(rapidjson::kObjectType);
    d.AddMember("lost", Value(dr.lost()), a);
    d.AddMember("kernel_queue_full", Value(dr.kernel_queue_full), a);
    d.AddMember("kernel_socket_full", Value(dr.kernel_socket_full), a);
    d.AddMember("socket_overruns", Value(dr.socket_overruns), a);
    d.AddMember("verdict_errors", Value(dr.verdict_errors), a);
    d.AddMember("handler_errors", Value(dr.handler_errors), a);
    d.AddMember("rewrite_failed", Value(dr.rewrite_failed), a);
    d.AddMember("limits", Value(dr.limits), a);
    d.AddMember("internal", Value(dr.internal), a);
    d.AddMember("held_for_proof", Value(dr.held_for_proof), a);
    d.AddMember("malformed_messages", Value(dr.malformed_messages), a);
    d.AddMember("refused", Value(dr.refused), a);
    d.AddMember("denied", Value(dr.denied), a);
    d.AddMember("discarded", Value(dr.discarded), a);
    out.AddMember("drops", d, a);
    out.AddMember("pending", Value(pending), a);
    out.AddMember("pair_keys", Value(static_cast<uint64_t>(pair_keys_ ? pair_keys_->size() : 0)), a);
    out.AddMember("replay_cache", Value(static_cast<uint64_t>(replay_.size())), a);
    out.AddMember("buckets", Value(static_cast<uint64_t>(addr_buckets_.size() + node_buckets_.size())), a);
    // The memory budget: estimated bytes by part, and the entries each part may hold.
    const Memory m = memory();
    Value mem(rapidjson::kObjectType);
    mem.AddMember("limit_bytes", Value(static_cast<uint64_t>(m.limit)), a);
    mem.AddMember("used_bytes", Value(static_cast<uint64_t>(m.used())), a);
    mem.AddMember("replay_cache_bytes", Value(static_cast<uint64_t>(m.replay_cache)), a);
    mem.AddMember("pending_bytes", Value(static_cast<uint64_t>(m.pending)), a);
    mem.AddMember("buckets_bytes", Value(static_cast<uint64_t>(m.buckets)), a);
    mem.AddMember("pair_keys_bytes", Value(static_cast<uint64_t>(m.pair_keys)), a);
    Value lim(rapidjson::kObjectType);
    lim.AddMember("replay_cache", Value(static_cast<uint64_t>(limits_.replay_entries)), a);
    lim.AddMember("replay_cache_per_node", Value(static_cast<uint64_t>(limits_.replay_per_node)), a);
    lim.AddMember("pending", Value(static_cast<uint64_t>(limits_.pending_entries)), a);
    lim.AddMember("pending_per_pod", Value(static_cast<uint64_t>(limits_.pending_per_table)), a);
    lim.AddMember("address_buckets", Value(static_cast<uint64_t>(limits_.address_buckets)), a);
    lim.AddMember("node_buckets", Value(static_cast<uint64_t>(limits_.node_buckets)), a);
    lim.AddMember("pair_keys", Value(static_cast<uint64_t>(limits_.pair_keys)), a);
    mem.AddMember("limits", lim, a);
    out.AddMember("memory", mem, a);
}

HandshakeEngine::Memory HandshakeEngine::memory() const {
    Memory m;
    m.limit = limits_.memory;
    m.replay_cache = replay_.size() * identity::ReplayCache::kEntryBytes;
    m.pending = pending_total_ * std::max(PendingTable<ClientPending>::kEntryBytes, PendingTable<ServerPending>::kEntryBytes);
    m.buckets = (addr_buckets_.size() + node_buckets_.size()) * TokenBuckets::kEntryBytes;
    m.pair_keys = (pair_keys_ ? pair_keys_->size() : 0) * kPairKeyBytes;
    return m;
}

HandshakeEngine::Entries HandshakeEngine::entries() const {
    Entries e;
    e.pending = pending_total_;
    e.replay_cache = replay_.size();
    e.buckets = addr_buckets_.size() + node_buckets_.size();
    e.pair_keys = pair_keys_ ? pair_keys_->size() : 0;
    return e;
}

HandshakeEngine::QueueView HandshakeEngine::queue_view() const {
    QueueView v;
    v.readers = queue_totals(v.queue, v.kernel);
    v.drops = drops_of(v.queue, v.kernel);
    return v;
}

}  // namespace signet::handshake
