// signet handshake: the engine's door to a pod's queue, injected.
//
// The handshake engine (datapath/engine.h) judges segments; how they
// reach it is a QueueSource: the real one binds NFQUEUE 3472 inside the pod's
// netns (nfqueue.h: QueueReader on the event loop, the kernel's counters from
// /proc/net/netfilter/nfnetlink_queue there); a test substitutes its own and
// calls the handler with segments it built, so the state machine runs without
// root, netns or a kernel queue (test/datapath/).
#pragma once

#include <memory>
#include <string>

#include "datapath/nfqueue.h"
#include "datapath/sock_diag.h"
#include "signet/result.h"

namespace boost::asio {
class io_context;
}

namespace signet::handshake {

// One pod attachment's queue.
class QueueBinding {
public:
    virtual ~QueueBinding() = default;
    // Binds the queue (again, after a failure: the netns may have been busy).
    virtual Status start() = 0;
    virtual bool running() const = 0;
    // Unbinds: what waits in the queue is dropped, and so is every new segment (fail closed).
    virtual void stop() = 0;
    virtual QueueStats stats() const = 0;
    // The kernel's counters of the queue (zeros when they cannot be read).
    virtual KernelQueueStats kernel_stats() const = 0;
    // The state of the TCP socket the pod's kernel would hand a segment of
    // `t` to (sock_diag.h); nullopt: none. An error: unknown (fail closed).
    virtual Result<std::optional<uint8_t>> tcp_socket_state(const SocketTuple& t) = 0;
};

class QueueSource {
public:
    virtual ~QueueSource() = default;
    // A binding for the handshake queue of the netns at `netns_path`, whose
    // segments go to `handler` (not started). Error: the netns cannot be opened.
    virtual Result<std::unique_ptr<QueueBinding>> open(const std::string& netns_path, QueueReader::Handler handler) = 0;
};

// NFQUEUE `queue` in each pod's netns, read on `io`.
std::unique_ptr<QueueSource> make_nfqueue_source(boost::asio::io_context& io, uint16_t queue = kHandshakeQueue);

}  // namespace signet::handshake
