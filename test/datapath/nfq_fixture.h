// Shared by nfqueue_integration and bench_nfqueue: two network namespaces
// joined by a veth pair (IPv4 + IPv6), an `inet signet_nfq_test` table with
// input/output base chains in each, the handshake queue rules, an io_context
// thread running QueueReaders, TCP helpers and the token handler.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/ethtool.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "datapath/nfqueue.h"
#include "datapath/packet.h"
#include "nft/netlink_backend.h"
#include "nft/netns.h"

namespace nfqtest {

using namespace signet;
namespace hs = signet::handshake;

inline constexpr const char* kTable = "signet_nfq_test";
inline constexpr const char* kV4Client = "10.231.0.1";
inline constexpr const char* kV4Server = "10.231.0.2";
inline constexpr const char* kV6Client = "fd23:1::1";
inline constexpr const char* kV6Server = "fd23:1::2";

inline int sh(const std::string& cmd, std::string* out = nullptr) {
    std::string full = cmd + " 2>&1";
    FILE* f = ::popen(full.c_str(), "r");
    if (!f) return -1;
    std::string text;
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
    int rc = ::pclose(f);
    if (out) *out = text;
    if (rc != 0) std::fprintf(stderr, "[fixture] `%s` failed (%d): %s\n", cmd.c_str(), rc, text.c_str());
    return rc;
}

// ethtool -K IF tx on|off, inside the netns (the calling thread stays put).
inline bool set_tx_csum(const nft::Netns& ns, const char* ifname, bool on) {
    auto r = ns.run([&] {
        int s = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (s < 0) return false;
        ethtool_value v{ETHTOOL_STXCSUM, on ? 1u : 0u};
        ifreq ifr{};
        std::strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
        ifr.ifr_data = reinterpret_cast<char*>(&v);
        bool ok = ::ioctl(s, SIOCETHTOOL, &ifr) == 0;
        ::close(s);
        return ok;
    });
    return r.ok() && *r;
}

// ------------------------------------------------------------------ topology

struct Topology {
    std::string client_name, server_name;
    std::optional<nft::Netns> client, server;
    nft::QueueBackend backend = nft::QueueBackend::none;
    bool created = false;

    Topology() {
        const std::string pid = std::to_string(::getpid());
        client_name = "signet-nfq-" + pid + "-c";
        server_name = "signet-nfq-" + pid + "-s";
    }
    ~Topology() { destroy(); }

    // "" on success, else why not.
    std::string create() {
        if (sh("ip netns add " + client_name) != 0) return "cannot create netns (ip netns add)";
        created = true;
        if (sh("ip netns add " + server_name) != 0) return "cannot create netns (ip netns add)";
        const std::string c = "ip -n " + client_name + " ", s = "ip -n " + server_name + " ";
        if (sh(c + "link add va type veth peer name vb netns " + server_name) != 0) return "cannot create veth";
        for (const auto& cmd : {c + "link set lo up", s + "link set lo up", c + "addr add " + kV4Client + "/24 dev va",
                                s + "addr add " + kV4Server + "/24 dev vb",
                                c + "addr add " + kV6Client + "/64 dev va nodad",
                                s + "addr add " + kV6Server + "/64 dev vb nodad", c + "link set va up",
                                s + "link set vb up"})
            if (sh(cmd) != 0) return "cannot configure the veth pair";
        auto cn = nft::Netns::open("/run/netns/" + client_name);
        auto sn = nft::Netns::open("/run/netns/" + server_name);
        if (!cn || !sn) return "cannot open the netns";
        client.emplace(std::move(*cn));
        server.emplace(std::move(*sn));
        // Base chains (the test's own table; the queue rules come from add_syn_queue_rule).
        const std::string base = std::string("table inet ") + kTable +
                                 " { chain output { type filter hook output priority 0; policy accept; };"
                                 " chain input { type filter hook input priority 0; policy accept; }; }";
        for (const auto& n : {client_name, server_name})
            if (sh("ip netns exec " + n + " nft '" + base + "'") != 0) return "nft: cannot create the base chains";
        return "";
    }

    // The handshake queue rules in both chains of both netns, then (after
    // them, as the product places them) `ct state established,related accept`.
    std::string add_queue_rules(uint16_t queue) {
        for (auto* ns : {&*client, &*server}) {
            for (const char* chain : {"output", "input"}) {
                if (Status st = nft::add_syn_queue_rule(*ns, kTable, chain, queue, backend); !st)
                    return "add_syn_queue_rule: " + st.error().message;
            }
        }
        for (const auto& n : {client_name, server_name})
            for (const char* chain : {"output", "input"})
                if (sh("ip netns exec " + n + " nft add rule inet " + kTable + " " + chain +
                       " ct state established,related accept") != 0)
                    return "nft: ct rule";
        return "";
    }
    void flush_rules() {
        for (const auto& n : {client_name, server_name})
            for (const char* chain : {"output", "input"})
                sh("ip netns exec " + n + " nft flush chain inet " + kTable + " " + chain);
    }
    // Inserts a rule at the head of a chain; returns its handle (0 on failure).
    uint64_t insert_rule(const std::string& netns, const char* chain, const std::string& rule) {
        std::string out;
        if (sh("ip netns exec " + netns + " nft --echo --handle insert rule inet " + kTable + " " + chain + " " + rule,
               &out) != 0)
            return 0;
        std::smatch m;
        if (!std::regex_search(out, m, std::regex("# handle ([0-9]+)"))) return 0;
        return std::stoull(m[1]);
    }
    void delete_rule(const std::string& netns, const char* chain, uint64_t handle) {
        sh("ip netns exec " + netns + " nft delete rule inet " + kTable + " " + chain + " handle " +
           std::to_string(handle));
    }

    void destroy() {
        client.reset();
        server.reset();
        if (!created) return;
        sh("ip netns del " + client_name + " 2>/dev/null; true");
        sh("ip netns del " + server_name + " 2>/dev/null; true");
        created = false;
    }
};

// The kernel's view of a queue (/proc/net/netfilter/nfnetlink_queue in the netns).
struct KernelQueue {
    bool bound = false;
    uint32_t portid = 0, total = 0, copy_mode = 0, copy_range = 0, queue_dropped = 0, user_dropped = 0;
    uint32_t id_sequence = 0;
};
inline KernelQueue kernel_queue(const nft::Netns& ns, uint16_t queue) {
    auto r = ns.run([&] {
        KernelQueue k;
        std::ifstream in("/proc/thread-self/net/netfilter/nfnetlink_queue");
        std::string line;
        while (std::getline(in, line)) {
            std::istringstream is(line);
            uint32_t num = 0;
            KernelQueue q;
            if (is >> num >> q.portid >> q.total >> q.copy_mode >> q.copy_range >> q.queue_dropped >> q.user_dropped >>
                q.id_sequence && num == queue) {
                q.bound = true;
                k = q;
            }
        }
        return k;
    });
    return r.ok() ? *r : KernelQueue{};
}

// ------------------------------------------------------------------ io thread

struct IoThread {
    boost::asio::io_context io;
    boost::asio::executor_work_guard<boost::asio::io_context::executor_type> guard{io.get_executor()};
    std::thread th{[this] { io.run(); }};
    ~IoThread() {
        guard.reset();
        io.stop();
        th.join();
    }
    template <typename F>
    auto call(F&& fn) -> decltype(fn()) {
        std::packaged_task<decltype(fn())()> task(std::forward<F>(fn));
        auto fut = task.get_future();
        boost::asio::post(io, [&task] { task(); });
        return fut.get();
    }
};

// ------------------------------------------------------------------ TCP

struct Addr {
    sockaddr_storage ss{};
    socklen_t len = 0;
    int family = AF_INET;
};
inline Addr make_addr(const char* ip, uint16_t port) {
    Addr a;
    if (std::strchr(ip, ':')) {
        auto* s6 = reinterpret_cast<sockaddr_in6*>(&a.ss);
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(port);
        inet_pton(AF_INET6, ip, &s6->sin6_addr);
        a.len = sizeof(sockaddr_in6);
        a.family = AF_INET6;
    } else {
        auto* s4 = reinterpret_cast<sockaddr_in*>(&a.ss);
        s4->sin_family = AF_INET;
        s4->sin_port = htons(port);
        inet_pton(AF_INET, ip, &s4->sin_addr);
        a.len = sizeof(sockaddr_in);
    }
    return a;
}

// A socket of `family` created inside the netns (it stays there).
inline int socket_in(const nft::Netns& ns, int family) {
    auto r = ns.run([&] { return ::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0); });
    return r.ok() ? *r : -1;
}

inline int listen_in(const nft::Netns& ns, const char* ip, uint16_t port) {
    Addr a = make_addr(ip, port);
    int fd = socket_in(ns, a.family);
    if (fd < 0) return -1;
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&a.ss), a.len) != 0 || ::listen(fd, 512) != 0) {
        ::close(fd);
        return -1;
    }
    return fd;
}

// Connects from the netns with a timeout; -1 on failure (errno kept in *err).
inline int connect_in(const nft::Netns& ns, const char* ip, uint16_t port, std::chrono::milliseconds timeout,
                      int* err = nullptr, bool rst_on_close = false) {
    Addr a = make_addr(ip, port);
    int fd = socket_in(ns, a.family);
    if (fd < 0) return -1;
    if (rst_on_close) {
        linger l{1, 0};
        ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    }
    int fl = ::fcntl(fd, F_GETFL);
    ::fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    int rc = ::connect(fd, reinterpret_cast<sockaddr*>(&a.ss), a.len);
    int e = 0;
    if (rc != 0 && errno != EINPROGRESS) {
        e = errno;
    } else if (rc != 0) {
        pollfd p{fd, POLLOUT, 0};
        int pr = ::poll(&p, 1, static_cast<int>(timeout.count()));
        if (pr <= 0) {
            e = ETIMEDOUT;
        } else {
            socklen_t l = sizeof e;
            ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &l);
        }
    }
    if (e != 0) {
        if (err) *err = e;
        ::close(fd);
        return -1;
    }
    ::fcntl(fd, F_SETFL, fl);
    timeval tv{10, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return fd;
}

inline int accept_with_timeout(int lfd, std::chrono::milliseconds timeout) {
    pollfd p{lfd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return -1;
    int fd = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd >= 0) {
        timeval tv{10, 0};
        ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    }
    return fd;
}

inline bool write_all(int fd, const std::vector<uint8_t>& b) {
    size_t off = 0;
    while (off < b.size()) {
        ssize_t n = ::send(fd, b.data() + off, b.size() - off, MSG_NOSIGNAL);
        if (n <= 0) return false;
        off += static_cast<size_t>(n);
    }
    return true;
}
inline bool read_exact(int fd, std::vector<uint8_t>& b, size_t n) {
    b.resize(n);
    size_t off = 0;
    while (off < n) {
        ssize_t r = ::recv(fd, b.data() + off, n - off, 0);
        if (r <= 0) return false;
        off += static_cast<size_t>(r);
    }
    return true;
}

inline std::vector<uint8_t> pattern(size_t n, uint32_t seed) {
    std::vector<uint8_t> v(n);
    std::mt19937 rng(seed);
    for (auto& b : v) b = static_cast<uint8_t>(rng());
    return v;
}

// What the application sees of its handshake.
struct TcpView {
    int maxseg = 0;
    uint8_t options = 0, snd_wscale = 0, rcv_wscale = 0;
    uint32_t snd_mss = 0, advmss = 0;
    bool operator==(const TcpView&) const = default;
    std::string str() const {
        char b[160];
        std::snprintf(b, sizeof b, "maxseg=%d opts=%s%s%s snd_ws=%u rcv_ws=%u snd_mss=%u advmss=%u", maxseg,
                      options & TCPI_OPT_TIMESTAMPS ? "ts," : "", options & TCPI_OPT_SACK ? "sack," : "",
                      options & TCPI_OPT_WSCALE ? "ws" : "", snd_wscale, rcv_wscale, snd_mss, advmss);
        return b;
    }
};
inline TcpView tcp_view(int fd) {
    TcpView v;
    socklen_t l = sizeof v.maxseg;
    ::getsockopt(fd, IPPROTO_TCP, TCP_MAXSEG, &v.maxseg, &l);
    tcp_info ti{};
    l = sizeof ti;
    ::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &l);
    v.options = ti.tcpi_options;
    v.snd_wscale = ti.tcpi_snd_wscale;
    v.rcv_wscale = ti.tcpi_rcv_wscale;
    v.snd_mss = ti.tcpi_snd_mss;
    v.advmss = ti.tcpi_advmss;
    return v;
}

// ------------------------------------------------------------------ handler

// The token protocol of the test: the side that sends a SYN / SYN-ACK adds
// `tag` + random bytes; the side that receives it strips it and checks it is
// exactly what was sent for that segment (by its binding).
enum class Mode {
    token,        // add on output, strip+check on input (drop when missing or wrong)
    passthrough,  // parse, accept unchanged
    no_token,     // output: pass unchanged (input still requires a token)
    bad_token,    // output: add a token the receiver does not know
    lenient,      // like token, but input accepts a segment without a token
};

struct RoleCounters {
    uint64_t syn = 0, syn_ack = 0, other = 0, tokened = 0, stripped_ok = 0, missing = 0, wrong = 0, errors = 0;
    uint64_t csum_partial = 0, csum_partial_output = 0, gso = 0;
};

struct TokenBook {
    size_t random_len = 64;
    std::string tag = "signet-nfq-test!";  // 16 bytes
    std::mt19937_64 rng{0x5347};
    std::map<std::tuple<int, std::array<uint8_t, 16>, uint16_t, uint16_t, uint32_t>, std::vector<uint8_t>> sent;
    Mode client_mode = Mode::token, server_mode = Mode::token;

    std::vector<uint8_t> make() {
        std::vector<uint8_t> t(tag.begin(), tag.end());
        for (size_t i = 0; i < random_len; ++i) t.push_back(static_cast<uint8_t>(rng()));
        return t;
    }
    static auto key(const hs::Packet& p) {
        return std::make_tuple(static_cast<int>(p.family), p.src, p.sport, p.dport, p.seq);
    }
};

// The handler of one netns' queue (both hooks).
inline hs::QueueReader::Handler make_handler(TokenBook& book, bool is_client, RoleCounters& c,
                                             std::vector<std::string>* log = nullptr) {
    return [&book, is_client, &c, log](const hs::QueuedPacket& q) -> hs::Decision {
        hs::Decision d;
        const Mode mode = is_client ? book.client_mode : book.server_mode;
        if (q.csum_partial) ++c.csum_partial;
        if (q.csum_partial && q.hook == hs::hook::output) ++c.csum_partial_output;
        if (q.gso) ++c.gso;
        hs::ParseOptions po{true, q.csum_partial ? hs::TcpChecksum::partial : hs::TcpChecksum::verify};
        auto p = hs::parse(q.payload, po);
        if (!p) {
            ++c.errors;
            if (log) log->push_back("parse: " + p.error().message);
            return d;  // drop
        }
        const auto seg = hs::classify(*p);
        if (seg == hs::Segment::syn)
            ++c.syn;
        else if (seg == hs::Segment::syn_ack)
            ++c.syn_ack;
        else {
            ++c.other;
            if (log) log->push_back(std::string("unexpected segment: ") + hs::to_string(seg));
            return d;
        }
        if (mode == Mode::passthrough) {
            d.verdict = hs::kAccept;
            return d;
        }
        if (q.hook == hs::hook::output) {
            if (mode == Mode::no_token) {
                d.verdict = hs::kAccept;
                return d;
            }
            std::vector<uint8_t> token = book.make();
            if (mode == Mode::bad_token) token[0] ^= 0xff;
            else book.sent[TokenBook::key(*p)] = token;
            auto t = hs::add_token(*p, token, 1500);
            if (!t) {
                ++c.errors;
                if (log) log->push_back("add_token: " + t.error().message);
                return d;
            }
            ++c.tokened;
            d.verdict = hs::kAccept;
            d.replacement = std::move(*t);
            return d;
        }
        // input
        if (!p->options.token) {
            ++c.missing;
            if (mode == Mode::lenient) d.verdict = hs::kAccept;
            return d;
        }
        auto s = hs::strip_token(*p);
        if (!s) {
            ++c.errors;
            if (log) log->push_back("strip_token: " + s.error().message);
            return d;
        }
        auto it = book.sent.find(TokenBook::key(*p));
        if (it == book.sent.end() || it->second.size() != s->token.size() ||
            !std::equal(s->token.begin(), s->token.end(), it->second.begin())) {
            ++c.wrong;
            return d;
        }
        book.sent.erase(it);
        ++c.stripped_ok;
        d.verdict = hs::kAccept;
        d.replacement = std::move(s->packet);
        return d;
    };
}

}  // namespace nfqtest
