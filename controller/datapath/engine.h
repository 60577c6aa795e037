// signet: the identity handshake on live connections (docs/handshake.md,
// "The handshake in signetd").
//
// For every local pod attachment the pod's table sends TCP SYN and SYN-ACK,
// both ways, to NFQUEUE 3472 in the pod's netns (nft/ruleset.h); one
// QueueReader per attachment reads it on the event loop and this engine
// judges each segment:
//
//   hook output, SYN      the pod is the client: egress judged on the peer's
//                         cluster identity (a pod) or address; to a pod the
//                         SYN gets a client token (MAC under the node-pair
//                         key, or signed on first contact / retransmission)
//   hook input,  SYN      the pod is the server: a token is verified, the
//                         pod's ingress policy judged on the proven claims,
//                         the token stripped; no token: judged by address
//                         (in enforce mode a pod address counts as a plain
//                         address: only ipBlock rules can admit it)
//   hook output, SYN-ACK  the server's token back, if the SYN carried one
//   hook input,  SYN-ACK  the pod is the client: the server's token verified
//                         and the egress policy judged on its claims
//   hook output, ACK      (while the proof is due) the final ACK gets the proof:
//                         an HMAC under the pair key over both ISNs and nonces
//   hook input,  any      (while the server awaits the proof) checked and
//                         stripped; nothing passes before it
//
// Accepted connections get conntrack mark bits (kCtMark*) in the pod's
// netns, so flow records tell authenticated connections from the others.
// The rest of a connection never leaves the kernel (ct state established).
#pragma once

#include <rapidjson/document.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "../pods/registry.h"
#include "../source/source.h"
#include "../policy/addr.h"
#include "../policy/mode.h"
#include "../policy/query.h"
#include "datapath/bounded_tables.h"
#include "datapath/nfqueue.h"
#include "datapath/packet.h"
#include "datapath/queue_source.h"
#include "identity/pair_keys.h"
#include "identity/replay_cache.h"
#include "identity/token.h"
#include "credentials/node_identity.h"
#include "nft/nflog.h"

namespace signet::handshake {

enum class HandshakeMode : uint8_t { off, permissive, enforce };
std::optional<HandshakeMode> parse_handshake_mode(std::string_view s);
const char* to_string(HandshakeMode m);

// The Namespace label that sets the handshake mode of the namespace's pods
// over the node's default (--handshake): off, permissive or enforce. It takes
// effect on nodes that run the handshake (a node started with --handshake off
// runs no engine, and ignores it).
inline constexpr const char* kHandshakeModeLabel = "signet.dev/handshake";
struct NamespaceMode {
    HandshakeMode mode = HandshakeMode::off;
    bool from_label = false;  // the namespace's label said it (else the node's default)
    std::string problem;      // the label's value is not a mode: the default applies, and this says why
};
NamespaceMode namespace_mode(const cache::Snapshot& snapshot, const std::string& ns, HandshakeMode node_default);

// Conntrack mark bits the engine sets in a pod's netns: nft::kCtMark*.
using nft::kCtMarkAuthenticated;
using nft::kCtMarkByAddress;
using nft::kCtMarkMask;
using nft::kCtMarkAwaitProof;
using nft::kCtMarkPending;
using nft::kCtMarkProofDue;
using nft::kCtMarkDeferred;
using nft::kCtMarkClosing;

// The node-wide budget of the handshake's state (docs/handshake.md, "Bounds";
// signetd --handshake-memory): handshakes in flight both ways, the
// first-contact rate-limit buckets, the replay cache and the node-pair keys.
inline constexpr size_t kDefaultHandshakeMemory = size_t{256} << 20;
inline constexpr size_t kMinHandshakeMemory = size_t{16} << 20;
inline constexpr size_t kMaxHandshakeMemory = size_t{64} << 30;
// --handshake-memory MIB: a whole number of MiB, 16 to 65536; the bytes.
std::optional<size_t> parse_handshake_memory(std::string_view mib);

class HandshakeEngine {
public:
    // The engine's time. Steady time ages its own state: handshakes in
    // flight, first-contact rate-limit buckets, the refusal log's window.
    // Wall time is the tokens' (issued-at, validity, the certificates, the
    // pair keys' lifetimes). Both real by default; tests and the fuzz target
    // lend a fixed clock they advance themselves.
    struct Clock {
        std::function<std::chrono::steady_clock::time_point()> steady = [] { return std::chrono::steady_clock::now(); };
        std::function<identity::TimePoint()> wall = [] { return identity::Clock::now(); };
    };

    struct Context {
        std::string node_name;
        HandshakeMode mode = HandshakeMode::off;
        // The node's default policy mode (--policy-mode); a namespace's label overrides it.
        policy::PolicyMode policy_mode = policy::PolicyMode::enforce;
        const source::Source* source = nullptr;
        const pods::Registry* registry = nullptr;
        policy::Query* policy = nullptr;  // the policy in force (the controller's query)
        const credentials::NodeIdentity* identity = nullptr;
        const std::vector<std::string>* node_addresses = nullptr;
        // A new connection the engine refused on policy (flow records).
        std::function<void(const std::string& key, const nft::LoggedPacket&)> on_denied;
        // How pods' queues are reached; null: NFQUEUE in each pod's netns
        // (handshake::make_nfqueue_source). Tests lend their own.
        handshake::QueueSource* queues = nullptr;
        // First-contact (signed token) verifications per source address...
        double first_contact_rate = 100;  // per second
        double first_contact_burst = 200;
        // ...and per peer node (its certificate), whatever addresses its pods use.
        double first_contact_node_rate = 400;
        double first_contact_node_burst = 800;
        // Bytes for all of the handshake's state, shared out in fixed parts
        // (HandshakeEngine::Limits); at least kMinHandshakeMemory.
        size_t memory_limit = kDefaultHandshakeMemory;
        Clock clock{};  // real time unless lent
        // Services (docs/policy.md): true for a TCP frontend (address, port)
        // whose connections the node's table judges after kube-proxy's
        // translation. A pod's SYN to one passes its own netns untouched: the
        // client side of the handshake happens at the node (judge_at_node).
        std::function<bool(const policy::Ip&, uint16_t)> service_frontend;
    };

    HandshakeEngine(boost::asio::io_context& io, Context ctx);
    ~HandshakeEngine();
    HandshakeEngine(const HandshakeEngine&) = delete;
    HandshakeEngine& operator=(const HandshakeEngine&) = delete;

    // `inherited`: registered before this signetd started (recovered from
    // its state): the previous process's handshakes in flight are recovered
    // for it (docs/handshake.md, "Across a restart").
    void pod_started(const std::string& key, const api::PodRecord& rec, bool inherited = false);
    void pod_stopped(const std::string& key);
    void source_changed();
    void stop();
    // Forgets the handshakes in flight and the rate-limit buckets past their
    // time (the sweep timer calls it; tests, with their own clock, too).
    void expire();

    void status(rapidjson::Value& out, rapidjson::Document::AllocatorType& a) const;
    // The node's default mode (--handshake).
    HandshakeMode mode() const { return ctx_.mode; }
    // The mode of a namespace's pods: its signet.dev/handshake label, else the node's default.
    NamespaceMode mode_of_namespace(const std::string& ns) const;
    // The mode a local attachment's table must hold (its namespace's; the
    // node's default for an attachment the engine does not know).
    HandshakeMode table_mode(const std::string& key) const;
    // After a change of the source: each attachment's mode from its
    // namespace again. An attachment whose handshake turns on has its queue
    // bound at once (before its table gets the queue rules); one whose
    // handshake turns off keeps it, judged in its old mode, until
    // commit_modes() (after its table lost them). The pods whose mode changed.
    std::set<cache::ObjectKey> refresh_modes();
    void commit_modes();

    // One queued segment of attachment `key`: what the queue source's handler
    // calls (tests call it too, through their own QueueSource).
    handshake::Decision judge(const std::string& key, const handshake::QueuedPacket& q);
    // A segment of a translated Service connection, queued in the node's
    // netns after kube-proxy's DNAT (the Service judge hands them over): the
    // local pod's SYN to the backend gets its client token there (egress
    // judged on the backend), the backend's SYN-ACK token is verified and
    // stripped, the final ACK gets the proof. nullopt: not TCP (the caller
    // judges it). A connection kube-proxy masquerades (its mark 0x4000:
    // hairpin, NodePort) reaches the backend from a node address: no token.
    std::optional<handshake::Decision> judge_at_node(const handshake::QueuedPacket& q);

    struct Counters {
        uint64_t segments = 0;
        uint64_t tokens_added_mac = 0, tokens_added_signed = 0;
        uint64_t verified_mac = 0, verified_signed = 0;
        uint64_t accepted_authenticated = 0;  // connections admitted on a proven identity (per side)
        uint64_t accepted_by_address = 0;     // admitted on address rules (no token)
        uint64_t denied = 0;                  // policy said no (on claims or address)
        uint64_t audit_denied = 0;            // policy said no, admitted in audit mode (policy/mode.h)
        uint64_t proofs_sent = 0, proofs_verified = 0;
        uint64_t held_for_proof = 0;          // server: packets dropped while the final ACK's proof is awaited
        uint64_t proof_after_reset = 0;       // server: a proof behind the client's own RST (discarded)
        uint64_t deferred_to_node = 0;        // client SYNs to a Service frontend: the handshake at the node
        // Enforce mode, server: segments of a closing authenticated connection
        // checked against the pod's sockets (kCtMarkClosing), and how many of
        // them found the connection's socket gone and were dropped (with a
        // repeated final-ACK proof after the close): closed_discarded.
        uint64_t closing_checked = 0, closed_discarded = 0;
        // Handshakes in flight given up to make room for new ones: completed
        // ones (kept only for a retransmission), and live ones (the oldest;
        // a client's SYN-ACK then finds no entry: unexpected_token).
        uint64_t pending_evicted_done = 0, pending_evicted_live = 0;
        // Connections caught between SYN and proof by a restart of signetd,
        // completed in the first seconds after it (docs/handshake.md, "Across
        // a restart"): as server (admitted on the previous process's verdict)
        // and as client (the server's retransmitted SYN-ACK verified afresh).
        uint64_t recovered_server = 0, recovered_client = 0;
        std::map<std::string, uint64_t> refused;  // token / packet refusals by reason
    };
    const Counters& counters() const { return counters_; }

    // Every place signet drops a segment of the handshake, summed over the
    // node's pods since signetd started (pods gone included). Three kinds:
    //   lost       segments of connections nobody refused, which signet
    //              failed to pass: a full kernel queue or socket buffer,
    //              verdict and handler errors, a rewrite that could not be
    //              sent, a limit of the engine (handshakes in flight,
    //              first-contact rate), data held for an overdue proof.
    //              Under a moderate load every one must stay 0.
    //   refused    the handshake said no (a bad, replayed or missing token,
    //              a spoofed source, a malformed segment...): `refused` by reason
    //   denied     the policy said no
    //   discarded  the client's proof behind its own RST (the connection is
    //              gone; its stack would discard it too)
    struct Drops {
        uint64_t kernel_queue_full = 0;   // the kernel queue held its maximum (nfnetlink_queue queue_dropped)
        uint64_t kernel_socket_full = 0;  // signetd's queue socket buffer was full (user_dropped)
        uint64_t socket_overruns = 0;     // ENOBUFS seen by the readers (each stands for kernel_socket_full drops)
        uint64_t verdict_errors = 0;      // verdicts the kernel refused or that could not be sent
        uint64_t handler_errors = 0;      // the engine threw on a segment
        uint64_t rewrite_failed = 0;      // an accepted segment whose rewrite could not be sent
        uint64_t malformed_messages = 0;  // queue messages that did not parse
        uint64_t limits = 0;              // refused: pending_full, rate_limited
        uint64_t internal = 0;            // refused: internal, no_room_for_token, no_credentials
        uint64_t held_for_proof = 0;      // data before the final ACK's proof
        uint64_t refused = 0;             // every other refusal (security)
        uint64_t denied = 0;
        uint64_t discarded = 0;
        uint64_t lost() const {
            return kernel_queue_full + kernel_socket_full + verdict_errors + handler_errors + rewrite_failed + limits +
                   internal + held_for_proof;
        }
    };
    Drops drops() const;

    // What the memory budget allows each part (entries), from Context::memory_limit:
    // the replay cache 1/2 (and one peer node 1/8 of that), handshakes in
    // flight 1/4 (node-wide; each pod's table of either way at most 100,000),
    // rate-limit buckets 1/8, pair keys 1/8.
    struct Limits {
        size_t memory = 0;  // bytes
        size_t replay_entries = 0, replay_per_node = 0;
        size_t pending_entries = 0, pending_per_table = 0;
        size_t address_buckets = 0, node_buckets = 0;
        size_t pair_keys = 0;
    };
    static Limits limits_for(size_t memory_limit);
    const Limits& limits() const { return limits_; }
    // The state's estimated bytes now, by part (entries times an estimate of
    // each entry's size).
    struct Memory {
        size_t limit = 0, replay_cache = 0, pending = 0, buckets = 0, pair_keys = 0;
        size_t used() const { return replay_cache + pending + buckets + pair_keys; }
    };
    Memory memory() const;
    // The state's entries now, by part.
    struct Entries {
        size_t pending = 0, replay_cache = 0, buckets = 0, pair_keys = 0;
    };
    Entries entries() const;
    // The kernel queues' counters summed over the node's pods, read once,
    // with the drops they make (for /metrics).
    struct QueueView {
        handshake::QueueStats queue;
        handshake::KernelQueueStats kernel;
        uint64_t readers = 0;
        Drops drops;
    };
    QueueView queue_view() const;

private:
    struct Attachment;
    struct Peer {
        cache::ObjectKey pod;
        std::string node;
        identity::PodUid uid{};
        bool host_network = false;
    };
    // Both keyed by the connection's addresses and ports (conn4).
    struct ClientPending {
        uint32_t isn = 0;              // the client's ISN (a new one: a new connection on the same ports)
        bool was_signed = false;
        uint32_t attempts = 0;
        bool recovered = false;          // made after a restart from the server's SYN-ACK (client nonce zero)
        identity::Nonce client_nonce{};  // of the latest token sent
        // After the server's token verified: the final ACK's proof.
        bool verified = false;
        identity::ConnBinding binding;  // with the server's ISN
        identity::Nonce server_nonce{};
        std::shared_ptr<const identity::PairKey> pair_key;
        bool audited = false;  // audit mode: the connection was reported audit-denied already
    };
    struct ServerPending {
        uint32_t isn = 0;
        bool client_signed = false;
        std::shared_ptr<const identity::PairKey> pair_key;
        identity::ConnBinding binding;
        std::vector<identity::Nonce> client_nonces;  // of the SYNs verified (retransmissions: a few)
        std::vector<identity::Nonce> server_nonces;  // of the SYN-ACKs sent
        bool proven = false;                         // the final ACK's proof verified
        bool reset = false;                          // the client's RST came first
    };

    // Opens and starts the attachment's queue (its error kept when it cannot).
    void bind(Attachment& at);
    // The first seconds after the engine started: handshakes the previous
    // signetd left between SYN and proof are recovered (kRecoveryWindow).
    bool recovering() const;
    std::chrono::steady_clock::time_point started_{};
    // A live server handshake of this process was given up for room: a
    // missing entry may then be its, not the previous process's (no
    // recovery without the proof). Within the recovery window no entry of
    // this process can have expired (kServerPendingTtl is as long).
    bool server_evicted_live_ = false;
    handshake::Decision client_syn(Attachment& at, const handshake::Packet& p, bool at_node = false);
    handshake::Decision server_syn(Attachment& at, const handshake::Packet& p);
    handshake::Decision server_syn_ack(Attachment& at, const handshake::Packet& p);
    handshake::Decision client_syn_ack(Attachment& at, const handshake::Packet& p, bool at_node = false);
    handshake::Decision client_ack(Attachment& at, const handshake::Packet& p, bool at_node = false);
    handshake::Decision judge_tokenless(const Attachment& at, const handshake::Packet& p, bool ingress,
                                        const Peer* pod_peer, const policy::Ip& peer_ip, uint16_t port);
    handshake::Decision verify_peer(Attachment& at, const handshake::Packet& p, identity::Role role,
                                    const identity::ConnBinding& b, std::optional<identity::VerifiedToken>& v,
                                    std::vector<uint8_t>& stripped);
    handshake::Decision server_ack(Attachment& at, const handshake::Packet& p, uint8_t hook);
    // Enforce mode: the client's segment of a closing connection (kCtMarkClosing).
    handshake::Decision closing_segment(Attachment& at, const handshake::Packet& p);
    // Whether the local pod's socket of the segment's connection still
    // exists (not only its listener); `why` says what was found otherwise.
    bool connection_socket_exists(Attachment& at, const handshake::Packet& p, std::string& why);
    handshake::Decision discard_closed(const Attachment& at, const handshake::Packet& p, const std::string& why);

    // Policy: ingress of the local pod (peer = source) or its egress (peer =
    // destination), on a pod identity or an address: the policy query's
    // compact check (cached per policy version), never the text explain.
    // In audit mode (the pod's namespace's policy mode, policy/mode.h) a
    // refusal is reported as audit-denied (`p`'s connection; not again when
    // `*audited` says it was already) and the answer is true; not when
    // `auditable` is false (a refusal that is the identity's, not the policy's).
    bool allowed(const Attachment& at, bool ingress, const std::optional<cache::ObjectKey>& peer_pod,
                 const policy::Ip& peer_ip, uint16_t port, const handshake::Packet& p, bool* audited = nullptr,
                 bool auditable = true);
    const Peer* peer_at(handshake::Family f, const std::array<uint8_t, 16>& addr);
    // The local pod attachment owning an address (addr_key), or null.
    Attachment* attachment_at(const std::string& addr);
    bool ensure_keys();
    // Room for one more client (or server) handshake in `table`: evicts
    // (completed entries first) when the pod's table or the node's budget is
    // full; false: none could be made (pending_full).
    template <typename V>
    bool make_room(PendingTable<V>& table, bool client);
    identity::PodClaim claim_of(const Attachment& at) const;
    handshake::Decision refuse(const std::string& reason, const Attachment& at, const handshake::Packet& p,
                               const std::string& detail);
    handshake::Decision rewrite(const handshake::Packet& p, std::span<const uint8_t> token, uint32_t ct_mark);
    void sweep();
    void report_denied(const Attachment& at, const handshake::Packet& p, bool ingress, bool audit = false);

    boost::asio::io_context& io_;
    Context ctx_;
    Limits limits_;
    size_t pending_total_ = 0;  // entries of every attachment's tables (before attachments_: they count down into it)
    std::unique_ptr<handshake::QueueSource> own_queues_;  // when the context lent none
    std::map<std::string, std::unique_ptr<Attachment>> attachments_;
    // Cluster view by address (family byte + address bytes), rebuilt lazily.
    std::unordered_map<std::string, Peer> peers_;
    bool peers_dirty_ = true;
    // Local attachments by address (addr_key), rebuilt lazily like peers_.
    std::unordered_map<std::string, Attachment*> attachments_by_addr_;
    bool attachments_dirty_ = true;
    // Identity state, made from the node's credentials (remade when they change).
    std::optional<identity::Fingerprint> self_fp_;
    std::unique_ptr<identity::PairKeyCache> pair_keys_;
    identity::ReplayCache replay_;
    std::unordered_map<std::string, identity::Fingerprint> node_fp_;  // peer node -> its certificate
    // Peer nodes known to hold this node's certificate (so the pair key):
    // they sent a MAC token, or answered one of our signed tokens. Only to
    // them do new SYNs carry MAC tokens; to the others they stay signed
    // (knowing a peer's certificate does not mean it knows ours yet).
    std::unordered_set<std::string> knows_us_;
    // First-contact buckets by source address, and by peer node certificate
    // (charged once a signed token verified: a forger cannot drain a node's).
    TokenBuckets addr_buckets_, node_buckets_;
    Counters counters_;
    // Queue counters of attachments gone (stopped pods, restarted readers).
    handshake::QueueStats retired_queue_{};
    handshake::KernelQueueStats retired_kernel_{};
    void retire(Attachment& at);
    uint64_t queue_totals(handshake::QueueStats& qs, handshake::KernelQueueStats& ks) const;  // returns the readers bound
    Drops drops_of(const handshake::QueueStats& qs, const handshake::KernelQueueStats& ks) const;
    boost::asio::steady_timer sweep_timer_;
    std::chrono::steady_clock::time_point log_window_{};
    unsigned logged_in_window_ = 0;
    bool stopped_ = false;
};

}  // namespace signet::handshake
