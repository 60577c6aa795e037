// Two signet nodes in one process, for the handshake state machine without
// root: each node's HandshakeEngine with its own identity (issued by one
// authority in a temporary folder), registry, enforcer (in-memory nft
// backend) with its policy query, and a queue source of the test's own,
// which records the handler the engine binds per pod instead of a kernel
// queue. Both engines read one clock the test holds still and moves itself
// (TestClock): nothing depends on how fast the test runs. Segments are built
// here (IPv4 TCP, checksums right), handed to an engine as the kernel's
// queue would (the hook says where), and what one engine lets out is given
// to the other, as the wire would.
//
//   namespace x, one cluster view on both nodes:
//     node-a: a (app=a) 10.0.0.1, c (app=c) 10.0.0.3
//     node-b: b (app=b) 10.0.1.1, policy "to-b": ingress to app=b on TCP 8080 from app=a only
//
// Used by test/datapath/test_engine.cpp and test/fuzz/fuzz_handshake.cpp.
#pragma once

#include <arpa/inet.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/enforcer.h"
#include "policy/query.h"
#include "datapath/engine.h"
#include "credentials/node_identity.h"
#include "datapath/packet.h"
#include "datapath/queue_source.h"
#include "identity/authority.h"
#include "nft/fake_backend.h"
#include "pods/registry.h"
#include "source/source.h"

namespace signet::testing {

inline constexpr uint16_t kPort = 8080;

// A source that only holds a snapshot.
class StaticSource final : public source::Source {
public:
    explicit StaticSource(cache::Snapshot s) : snap_(std::move(s)) {}
    Status start(boost::asio::io_context&, std::function<void()>) override { return {}; }
    void stop() override {}
    void refresh(std::function<void(Status)> done) override { done({}); }
    const cache::Snapshot& snapshot() const override { return snap_; }
    bool ready() const override { return true; }
    std::string origin_version() const override { return "1"; }
    void status(rapidjson::Value& out, rapidjson::Document::AllocatorType& a) const override {
        out.SetObject();
        out.AddMember("kind", "static", a);
        out.AddMember("lastError", "", a);
    }

private:
    cache::Snapshot snap_;
};

// Records the handler bound per netns path; no kernel.
class RecordingQueues final : public handshake::QueueSource {
public:
    class Binding final : public handshake::QueueBinding {
    public:
        explicit Binding(RecordingQueues& q) : q_(q) {}
        Status start() override {
            running_ = true;
            return {};
        }
        bool running() const override { return running_; }
        void stop() override { running_ = false; }
        handshake::QueueStats stats() const override { return {}; }
        handshake::KernelQueueStats kernel_stats() const override { return {}; }
        Result<std::optional<uint8_t>> tcp_socket_state(const handshake::SocketTuple& t) override {
            ++q_.socket_lookups;
            return q_.socket_state(t);
        }

    private:
        RecordingQueues& q_;
        bool running_ = false;
    };
    // What the pods' socket lookups answer (default: the connection's own
    // socket, established: TCP_ESTABLISHED is 1).
    std::function<Result<std::optional<uint8_t>>(const handshake::SocketTuple&)> socket_state =
        [](const handshake::SocketTuple&) { return Result<std::optional<uint8_t>>(std::optional<uint8_t>{1}); };
    int socket_lookups = 0;
    Result<std::unique_ptr<handshake::QueueBinding>> open(const std::string& netns,
                                                          handshake::QueueReader::Handler handler) override {
        handlers[netns] = std::move(handler);
        return std::unique_ptr<handshake::QueueBinding>(new Binding(*this));
    }
    std::map<std::string, handshake::QueueReader::Handler> handlers;
};

// ------------------------------------------------------------- segments

namespace tcpf {
inline constexpr uint8_t fin = 0x01, syn = 0x02, rst = 0x04, psh = 0x08, ack = 0x10;
}

// Whether a segment carries the signet option (the packet layer's parser).
inline bool has_option(const std::vector<uint8_t>& bytes) {
    auto p = handshake::parse(bytes, handshake::ParseOptions{false, handshake::TcpChecksum::unverified});
    return p && p->options.token.has_value();
}

// Recomputes the TCP checksum of an IPv4 segment changed in place (the packet
// layer's checksum code: the engine is under test here, not the checksums).
inline void refix(std::vector<uint8_t>& b) {
    const size_t ihl = static_cast<size_t>(b[0] & 15) * 4;
    std::array<uint8_t, 16> src{}, dst{};
    std::copy(b.begin() + 12, b.begin() + 16, src.begin());
    std::copy(b.begin() + 16, b.begin() + 20, dst.begin());
    const uint16_t c = handshake::csum::tcp_checksum(handshake::Family::ipv4, src, dst,
                                                     std::span<const uint8_t>(b).subspan(ihl));
    b[ihl + 16] = static_cast<uint8_t>(c >> 8);
    b[ihl + 17] = static_cast<uint8_t>(c);
}

// An IPv4 TCP segment like Linux's (a SYN carries MSS, SACK-permitted, window scale).
inline std::vector<uint8_t> segment(const std::string& src, const std::string& dst, uint16_t sport, uint16_t dport,
                                    uint32_t seq, uint32_t ack, uint8_t flags, std::vector<uint8_t> payload = {}) {
    std::vector<uint8_t> opt;
    if (flags & tcpf::syn) opt = {2, 4, 0x05, 0xb4, 4, 2, 1, 3, 3, 7, 1, 1};
    const size_t tcp_len = 20 + opt.size() + payload.size();
    std::vector<uint8_t> b(20 + tcp_len, 0);
    b[0] = 0x45;
    b[2] = static_cast<uint8_t>(b.size() >> 8);
    b[3] = static_cast<uint8_t>(b.size());
    b[6] = 0x40;
    b[8] = 64;
    b[9] = 6;
    inet_pton(AF_INET, src.c_str(), &b[12]);
    inet_pton(AF_INET, dst.c_str(), &b[16]);
    const uint16_t ipc = handshake::csum::internet_checksum(std::span<const uint8_t>(b.data(), 20));
    b[10] = static_cast<uint8_t>(ipc >> 8);
    b[11] = static_cast<uint8_t>(ipc);
    uint8_t* t = b.data() + 20;
    t[0] = static_cast<uint8_t>(sport >> 8);
    t[1] = static_cast<uint8_t>(sport);
    t[2] = static_cast<uint8_t>(dport >> 8);
    t[3] = static_cast<uint8_t>(dport);
    for (int i = 0; i < 4; ++i) t[4 + i] = static_cast<uint8_t>(seq >> (24 - 8 * i));
    for (int i = 0; i < 4; ++i) t[8 + i] = static_cast<uint8_t>(ack >> (24 - 8 * i));
    t[12] = static_cast<uint8_t>(((20 + opt.size()) / 4) << 4);
    t[13] = flags;
    t[14] = 0xfa;
    t[15] = 0xf0;
    std::copy(opt.begin(), opt.end(), t + 20);
    std::copy(payload.begin(), payload.end(), t + 20 + opt.size());
    refix(b);
    return b;
}

// ------------------------------------------------------------- the world

// The engines' time, still until the test moves it: steady and wall time
// advance together. Wall time starts at the real time (the nodes'
// certificates were just issued and are valid now).
struct TestClock {
    std::chrono::steady_clock::time_point steady{std::chrono::hours(24)};
    identity::TimePoint wall = identity::Clock::now();
    void advance(std::chrono::milliseconds d) {
        steady += d;
        wall += d;
    }
    handshake::HandshakeEngine::Clock clock() {
        return {[this] { return steady; }, [this] { return wall; }};
    }
};

struct Node {
    std::string name;
    std::unique_ptr<credentials::NodeIdentity> identity;
    std::unique_ptr<pods::Registry> registry;
    std::unique_ptr<core::Enforcer> enforcer;
    std::unique_ptr<policy::Query> policy;  // over the enforcer's compiler
    RecordingQueues queues;
    std::unique_ptr<handshake::HandshakeEngine> engine;
    std::vector<std::string> node_addresses;
    core::Records records;  // its registered pods
};

// What an engine decided, with the segment as it leaves the queue.
struct Verdict {
    bool accepted = false;
    std::vector<uint8_t> bytes;  // the replacement, or the segment as it was
    uint32_t mark = 0;
    bool rewritten = false;
};

class World {
public:
    // `edit` changes the cluster view (pods, policies) before the nodes are made.
    explicit World(handshake::HandshakeEngine::Context tweak = {}, std::function<void(cache::Snapshot&)> edit = {}) {
        dir_ = std::filesystem::temp_directory_path() /
               ("signet-datapath-" + std::to_string(::getpid()) + "-" + std::to_string(counter()++));
        std::filesystem::create_directories(dir_);
        identity::AuthorityOptions o;
        o.trust_domain = "datapath.test";
        auto ca = identity::Authority::create(o);
        if (!ca) throw std::runtime_error("authority: " + ca.error().message);
        if (auto st = ca->save((dir_ / "ca").string()); !st) throw std::runtime_error("save: " + st.error().message);

        snap_.put(cache::Namespace{"x", {{"kubernetes.io/metadata.name", "x"}}});
        snap_.put(pod("a", "node-a", "10.0.0.1"));
        snap_.put(pod("c", "node-a", "10.0.0.3"));
        snap_.put(pod("b", "node-b", "10.0.1.1"));
        cache::NetworkPolicy p;
        p.namespace_ = "x";
        p.name = "to-b";
        p.pod_selector = cache::LabelSelector{{{"app", "b"}}, {}};
        p.policy_types = {cache::PolicyType::Ingress};
        cache::Peer from_a{cache::LabelSelector{{{"app", "a"}}, {}}, std::nullopt, std::nullopt};
        p.ingress.push_back(cache::IngressRule{std::vector<cache::Peer>{from_a},
                                               std::vector<cache::PolicyPort>{{cache::Protocol::TCP, int32_t{kPort}, std::nullopt}}});
        snap_.put(p);
        if (edit) edit(snap_);
        source_ = std::make_unique<StaticSource>(snap_);

        make_node(a_, "node-a", {{"a", "10.0.0.1"}, {"c", "10.0.0.3"}}, tweak, "192.0.2.1");
        make_node(b_, "node-b", {{"b", "10.0.1.1"}}, tweak, "192.0.2.2");
    }
    ~World() {
        a_.engine.reset();
        b_.engine.reset();
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
    }
    World(const World&) = delete;
    World& operator=(const World&) = delete;

    // Removes the authority and state folders now (the engines keep what
    // they loaded; nothing reads them again): a process that may end without
    // running destructors (a fuzzer) leaves nothing behind.
    void remove_files() {
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
    }

    // The folder of the authority (ca/) and the nodes' state.
    const std::filesystem::path& dir() const { return dir_; }
    Node& node_a() { return a_; }
    Node& node_b() { return b_; }
    TestClock& clock() { return clock_; }
    // signetd restarted on node `n` (SIGKILL and start, or SIGTERM): a new
    // engine over the same node, pods and cluster view, with nothing of the
    // old one's memory; the pods' queues bound to it.
    void restart_engine(Node& n) {
        n.engine.reset();
        make_engine(n, true);
    }

    // Hands `bytes` to the queue of pod `pod` ("a", "b", "c") at `hook`.
    // `mark`: the packet's mark as the queue reports it (the enforce rules
    // queue a closing connection's segments with kCtMarkClosing).
    Verdict judge(const std::string& pod, uint8_t hook, const std::vector<uint8_t>& bytes, uint32_t mark = 0) {
        Node& n = pod == "b" ? b_ : a_;
        auto it = n.queues.handlers.find("/fake/netns/" + pod);
        if (it == n.queues.handlers.end()) throw std::runtime_error("no queue bound for pod " + pod);
        handshake::QueuedPacket q;
        q.id = ++id_;
        q.queue = handshake::kHandshakeQueue;
        q.hw_protocol = 0x0800;
        q.hook = hook;
        q.payload = bytes;
        q.cap_len = static_cast<uint32_t>(bytes.size());
        q.mark = mark;
        handshake::Decision d = it->second(q);
        Verdict v;
        v.accepted = d.verdict == handshake::kAccept;
        v.rewritten = !d.replacement.empty();
        v.bytes = v.rewritten ? d.replacement : bytes;
        v.mark = d.mark.value_or(0);
        return v;
    }

    static uint64_t& counter() {
        static uint64_t n = 0;
        return n;
    }

    static cache::Pod pod(const std::string& name, const std::string& node, const std::string& ip) {
        cache::Pod p;
        p.namespace_ = "x";
        p.name = name;
        p.uid = "6b1f0c2e-0000-4000-8000-00000000000" + std::to_string(name[0] - 'a');
        p.node_name = node;
        p.labels = {{"app", name}};
        p.pod_ips = {ip};
        p.phase = "Running";
        return p;
    }

private:

    void make_node(Node& n, const std::string& name, const std::vector<std::pair<std::string, std::string>>& local,
                   const handshake::HandshakeEngine::Context& tweak, const std::string& node_addr) {
        n.name = name;
        const auto state = dir_ / name;
        std::filesystem::create_directories(state);
        n.identity = std::make_unique<credentials::NodeIdentity>(io_, name, (dir_ / "ca").string(), state.string());
        if (auto st = n.identity->start(); !st) throw std::runtime_error(name + " identity: " + st.error().message);
        n.registry = std::make_unique<pods::Registry>((state / "pods.json").string(),
                                                      [](const std::string&, uint64_t) { return true; });
        core::Records records;
        for (const auto& [pod_name, ip] : local) {
            api::PodRecord rec;
            rec.reg.container_id = "c-" + pod_name;
            rec.reg.ifname = "eth0";
            rec.reg.netns = "/fake/netns/" + pod_name;
            rec.reg.namespace_ = "x";
            rec.reg.name = pod_name;
            rec.reg.ips = {ip + "/24"};
            rec.has_object = true;
            records[rec.reg.container_id + "/eth0"] = rec;
            n.registry->put(rec);
        }
        n.node_addresses = {node_addr};
        n.enforcer = std::make_unique<core::Enforcer>(std::make_unique<nft::FakeBackend>(), [](const std::string&) {});
        n.enforcer->set_handshake(nft::QueueBackend::xt_nfqueue);
        n.policy = std::make_unique<policy::Query>(n.enforcer->compiler());
        n.enforcer->set_query(n.policy.get());
        n.enforcer->reset(snap_, records, n.node_addresses);
        n.records = records;
        tweak_ = tweak;
        make_engine(n, false);
    }

    // `restarted`: the pods were registered before this engine (a restart).
    void make_engine(Node& n, bool restarted) {
        const handshake::HandshakeEngine::Context& tweak = tweak_;
        const std::string& name = n.name;
        const core::Records& records = n.records;
        handshake::HandshakeEngine::Context ctx = tweak;
        ctx.node_name = name;
        ctx.mode = tweak.mode == handshake::HandshakeMode::off ? handshake::HandshakeMode::enforce : tweak.mode;
        ctx.source = source_.get();
        ctx.registry = n.registry.get();
        ctx.policy = n.policy.get();
        ctx.clock = clock_.clock();
        ctx.identity = n.identity.get();
        ctx.node_addresses = &n.node_addresses;
        ctx.queues = &n.queues;
        n.engine = std::make_unique<handshake::HandshakeEngine>(io_, ctx);
        for (const auto& [k, rec] : records) n.engine->pod_started(k, rec, restarted);
    }

    handshake::HandshakeEngine::Context tweak_;
    boost::asio::io_context io_;  // never run: the engines' timers only
    TestClock clock_;
    std::filesystem::path dir_;
    cache::Snapshot snap_;
    std::unique_ptr<StaticSource> source_;
    Node a_, b_;
    uint32_t id_ = 0;
};

}  // namespace signet::testing
