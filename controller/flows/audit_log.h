// signet: denied connections as JSON lines (signetd --audit-log stdout|FILE),
// as Antrea's audit log writes them: one object per denied connection, with
// the deciding policy as the flow record names it (docs/flows.md, "Audit
// log").
//
// It runs on the event loop and never blocks it: the line is written with a
// non-blocking write (a socket: send(MSG_DONTWAIT); a pipe or terminal: a
// descriptor of its own opened O_NONBLOCK; a file: appended), what the
// reader is not ready for waits in a bounded buffer (retried every 100 ms),
// and what does not fit, what exceeds the rate limit and what fails is
// dropped and counted, never waited for. Retransmissions of one attempt
// (same local pod, direction, protocol, addresses and ports within 30 s)
// make one line.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>

#include "flows/flow_table.h"
#include "signet/result.h"

namespace signet::flows {

struct AuditLogOptions {
    std::string target;          // "stdout" or a file path (appended; created 0640)
    double rate = 1000;          // lines per second (a token bucket whose burst is one second's worth)
    size_t buffer_bytes = 256 * 1024;  // what may wait for a slow reader
    std::chrono::seconds dedup_window{30};
    size_t dedup_entries = 16384;
};

class AuditLog {
public:
    struct Stats {
        uint64_t written = 0;        // lines handed to the kernel
        uint64_t duplicates = 0;     // retransmissions of an attempt already written (not an error)
        uint64_t rate_limited = 0;   // dropped: above --audit-log-rate
        uint64_t buffer_full = 0;    // dropped: the reader is behind and the buffer is full
        uint64_t errors = 0;         // dropped: the write failed (closed pipe, disk full...)
    };

    // Opens the target; an error says why (a bad path, a directory...).
    static Result<std::unique_ptr<AuditLog>> open(boost::asio::io_context& io, AuditLogOptions opts,
                                                  std::string node);
    ~AuditLog();
    AuditLog(const AuditLog&) = delete;
    AuditLog& operator=(const AuditLog&) = delete;

    // A denied record (other events are ignored).
    void write(const Record& r);
    const Stats& stats() const { return stats_; }
    const std::string& target() const { return opts_.target; }
    size_t buffered() const { return pending_.size(); }

    // The line for a record, without the newline (public for tests).
    static std::string line(const Record& r, const std::string& node);

private:
    enum class Mode { write, send };
    AuditLog(boost::asio::io_context& io, AuditLogOptions opts, std::string node, int fd, Mode mode);
    bool duplicate(const Record& r);
    bool take_token();
    // Writes as much of pending_ as the reader takes now; false on an error (pending_ dropped).
    bool flush();
    void schedule_flush();

    AuditLogOptions opts_;
    std::string node_;
    int fd_ = -1;
    Mode mode_ = Mode::write;
    std::string pending_;
    bool flush_scheduled_ = false;
    boost::asio::steady_timer timer_;
    double tokens_ = 0;
    std::chrono::steady_clock::time_point last_refill_{};
    std::unordered_map<std::string, int64_t> seen_;  // attempt -> last time (unix ns)
    bool warned_ = false;
    Stats stats_;
    std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace signet::flows
