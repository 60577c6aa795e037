// signet-install-cni install --watch: stays running and chains signet again
// whenever the node's active CNI config changes (a network plugin that
// rewrites its conflist when it restarts drops signet's entry: flannel,
// Calico, k3s, aws-node), or when another file becomes the active one.
//
// The config folder is watched with inotify; events are debounced, then the
// same install() as the one-shot mode runs. It does not loop on its own
// writes: its rename onto the config is an event too, after which install()
// finds signet already chained and writes nothing.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "installer.h"

namespace signet::installer {

struct WatchOptions {
    // Quiet time after the last event before looking again: a plugin that
    // writes several files (or one in several steps) is looked at once.
    std::chrono::milliseconds debounce{500};
    // However busy the folder, look at most this long after the first event.
    std::chrono::milliseconds max_delay{3000};
    // Look again this often even without an event: a config that is a
    // symlink to a file elsewhere changes without an event in the folder.
    std::chrono::milliseconds resync{std::chrono::seconds(60)};
    // While the folder does not exist: check for it this often.
    std::chrono::milliseconds folder_poll{1000};
    // On SIGTERM/SIGINT, remove signet's entry (uninstall) before exiting.
    // Off by default: a restart or upgrade of the DaemonSet would otherwise
    // leave a window in which new pods start without signet.
    bool uninstall_on_exit = false;
};

// Runs until SIGTERM or SIGINT; returns the exit status (0 after a signal;
// 1 when the watch cannot be set up or --uninstall-on-exit failed). Logs one
// line per change (and why) on `out`, problems on `err`. A missing folder is
// waited for; a config signet cannot be chained into is reported and the
// watch goes on.
int watch(const Options& opts, const WatchOptions& w, std::FILE* out, std::FILE* err);

// ---------------------------------------------------------------------------
// Pure parts, exposed for tests.

// Whether an inotify event on the config folder (mask, and the name of the
// entry inside it; empty for events on the folder itself) can change which
// config the runtime takes or what it holds: a file named *.conf,
// *.conflist or *.json (not a sub-folder) written, created, moved or
// deleted; the folder itself deleted, moved or unmounted; the event queue
// overflowed. Our own temporary files (".NAME.signet.tmpPID") do not count.
bool event_matters(uint32_t mask, std::string_view name);

// The event for the log: "10-flannel.conflist replaced (moved in)".
std::string describe_event(uint32_t mask, std::string_view name);

// Whether the event means the watch on the folder is gone (the folder was
// deleted, moved away or unmounted): it has to be set up again.
bool watch_lost(uint32_t mask);

// Events come in bursts: acts `quiet` after the last one, and at most
// `max_delay` after the first.
class Debouncer {
public:
    using clock = std::chrono::steady_clock;
    Debouncer(std::chrono::milliseconds quiet, std::chrono::milliseconds max_delay)
        : quiet_(quiet), max_delay_(max_delay) {}

    void note(clock::time_point now) {
        if (!first_) first_ = now;
        last_ = now;
    }
    bool pending() const { return first_.has_value(); }
    // When to act; only meaningful when pending().
    clock::time_point due_at() const {
        auto a = *last_ + quiet_;
        auto b = *first_ + max_delay_;
        return a < b ? a : b;
    }
    bool due(clock::time_point now) const { return pending() && now >= due_at(); }
    void clear() {
        first_.reset();
        last_.reset();
    }

private:
    std::chrono::milliseconds quiet_, max_delay_;
    std::optional<clock::time_point> first_, last_;
};

// Why the next look happens, for its log line: distinct reasons in the order
// they came, at most `limit` of them shown ("a; b; c and 4 more").
class Reasons {
public:
    explicit Reasons(size_t limit = 4) : limit_(limit) {}
    void add(const std::string& r);
    bool empty() const { return items_.empty(); }
    std::string text() const;
    void clear() {
        items_.clear();
        more_ = 0;
    }

private:
    size_t limit_;
    std::vector<std::string> items_;
    size_t more_ = 0;
};

}  // namespace signet::installer
