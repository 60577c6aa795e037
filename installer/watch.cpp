#include "watch.h"

#include <poll.h>
#include <signal.h>
#include <sys/inotify.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace signet::installer {
namespace {

constexpr uint32_t kFolderMask =
    IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR;

bool config_name(std::string_view name) {
    size_t dot = name.rfind('.');
    if (dot == std::string_view::npos) return false;
    std::string_view ext = name.substr(dot);
    return ext == ".conf" || ext == ".conflist" || ext == ".json";
}

long long ms_until(Debouncer::clock::time_point t, Debouncer::clock::time_point now) {
    if (t <= now) return 0;
    // Round up: waking a little early would only mean another poll.
    return std::chrono::ceil<std::chrono::milliseconds>(t - now).count();
}

}  // namespace

bool watch_lost(uint32_t mask) {
    return (mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT | IN_IGNORED)) != 0;
}

bool event_matters(uint32_t mask, std::string_view name) {
    if (mask & IN_Q_OVERFLOW) return true;
    if (watch_lost(mask)) return true;
    if (name.empty() || (mask & IN_ISDIR)) return false;  // libcni skips folders
    if (!(mask & (IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_MOVED_FROM))) return false;
    return config_name(name);
}

std::string describe_event(uint32_t mask, std::string_view name) {
    if (mask & IN_Q_OVERFLOW) return "inotify event queue overflowed";
    if (mask & (IN_DELETE_SELF | IN_IGNORED)) return "the config folder was removed";
    if (mask & IN_MOVE_SELF) return "the config folder was moved away";
    if (mask & IN_UNMOUNT) return "the config folder was unmounted";
    std::string n(name);
    if (mask & IN_MOVED_TO) return n + " replaced (moved in)";
    if (mask & IN_CLOSE_WRITE) return n + " written";
    if (mask & IN_CREATE) return n + " created";
    if (mask & IN_DELETE) return n + " deleted";
    if (mask & IN_MOVED_FROM) return n + " moved away";
    return n + " changed";
}

void Reasons::add(const std::string& r) {
    if (std::find(items_.begin(), items_.end(), r) != items_.end()) return;
    if (items_.size() < limit_) {
        items_.push_back(r);
        return;
    }
    // Beyond the limit only a count; a reason seen again may be counted twice.
    ++more_;
}

std::string Reasons::text() const {
    std::string s;
    for (const auto& r : items_) {
        if (!s.empty()) s += "; ";
        s += r;
    }
    if (more_ > 0) s += " and " + std::to_string(more_) + " more";
    return s;
}

namespace {

class Watcher {
public:
    Watcher(const Options& opts, const WatchOptions& w, std::FILE* out, std::FILE* err)
        : opts_(opts), w_(w), out_(out), err_(err), debounce_(w.debounce, w.max_delay) {}

    ~Watcher() {
        if (ifd_ >= 0) ::close(ifd_);
        if (sfd_ >= 0) ::close(sfd_);
    }

    int run() {
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGTERM);
        sigaddset(&set, SIGINT);
        if (::sigprocmask(SIG_BLOCK, &set, nullptr) != 0 ||
            (sfd_ = ::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK)) < 0) {
            std::fprintf(err_, "signet-install-cni: cannot set up signal handling: %s\n", std::strerror(errno));
            return 1;
        }
        ifd_ = ::inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
        if (ifd_ < 0) {
            std::fprintf(err_, "signet-install-cni: cannot watch %s: inotify_init1: %s\n", opts_.conf_dir.c_str(),
                         std::strerror(errno));
            return 1;
        }
        log("watching " + opts_.conf_dir + " (debounce " + std::to_string(w_.debounce.count()) +
            "ms): signet is chained again whenever the active CNI config changes");

        next_resync_ = clock::now() + w_.resync;
        for (;;) {
            auto now = clock::now();
            if (wd_ < 0) {
                bool waited = waiting_for_folder_;
                if (!add_watch()) return 1;
                if (wd_ >= 0) {
                    // Folder there (at start, or created / replaced since):
                    // look now, anything may have happened meanwhile.
                    reasons_.add(waited        ? "the config folder was created"
                                 : first_look_ ? "start"
                                               : "the config folder is there again");
                    first_look_ = false;
                    look();
                    now = clock::now();
                }
            }
            if (wd_ >= 0 && !debounce_.pending() && now >= next_resync_) {
                // Also catches a folder replaced without an event we saw
                // (renamed over): the path is another folder now.
                if (folder_replaced()) continue;
                reasons_.add("periodic check");
                look();
                now = clock::now();
            }
            if (debounce_.due(now)) {
                look();
                now = clock::now();
            }

            // Sleep until an event, a signal, the debounce deadline, the
            // resync, or (no folder) the next check for it.
            auto wake = wd_ >= 0 ? next_resync_ : now + w_.folder_poll;
            if (debounce_.pending()) wake = std::min(wake, debounce_.due_at());
            long long timeout = ms_until(wake, now);
            pollfd fds[2] = {{sfd_, POLLIN, 0}, {ifd_, POLLIN, 0}};
            int n = ::poll(fds, 2, static_cast<int>(std::min<long long>(timeout, 60'000)));
            if (n < 0) {
                if (errno == EINTR) continue;
                std::fprintf(err_, "signet-install-cni: poll: %s\n", std::strerror(errno));
                return 1;
            }
            if (fds[0].revents & POLLIN) {
                signalfd_siginfo si{};
                if (::read(sfd_, &si, sizeof si) == static_cast<ssize_t>(sizeof si))
                    return stop(static_cast<int>(si.ssi_signo));
            }
            if (fds[1].revents & POLLIN) read_events();
        }
    }

private:
    using clock = Debouncer::clock;

    void log(const std::string& line) {
        std::fprintf(out_, "signet-install-cni: %s\n", line.c_str());
        std::fflush(out_);
    }
    void log_err(const std::string& line) {
        std::fprintf(err_, "signet-install-cni: %s\n", line.c_str());
        std::fflush(err_);
    }

    // false: a fatal error. A missing folder is not one: wd_ stays -1 and
    // it is checked for again.
    bool add_watch() {
        int wd = ::inotify_add_watch(ifd_, opts_.conf_dir.c_str(), kFolderMask);
        if (wd >= 0) {
            wd_ = wd;
            struct stat st {};
            if (::stat(opts_.conf_dir.c_str(), &st) == 0) {
                dev_ = st.st_dev;
                ino_ = st.st_ino;
            }
            if (waiting_for_folder_) log(opts_.conf_dir + " exists now");
            waiting_for_folder_ = false;
            return true;
        }
        if (errno == ENOENT || errno == ENOTDIR) {
            if (!waiting_for_folder_)
                log("waiting for the CNI config folder " + opts_.conf_dir + " to be created (" +
                    (errno == ENOENT ? "it does not exist" : "not a folder") + "; checking every " +
                    std::to_string(w_.folder_poll.count()) + "ms)");
            waiting_for_folder_ = true;
            return true;
        }
        log_err("cannot watch " + opts_.conf_dir + ": " + std::strerror(errno));
        return false;
    }

    // The path names another folder than the one watched: watch it instead.
    bool folder_replaced() {
        struct stat st {};
        if (::stat(opts_.conf_dir.c_str(), &st) == 0 && st.st_dev == dev_ && st.st_ino == ino_) return false;
        reasons_.add("the config folder was replaced");
        ::inotify_rm_watch(ifd_, wd_);
        wd_ = -1;
        debounce_.clear();
        return true;
    }

    void read_events() {
        alignas(inotify_event) char buf[16384];
        for (;;) {
            ssize_t n = ::read(ifd_, buf, sizeof buf);
            if (n <= 0) return;  // EAGAIN: drained
            for (char* p = buf; p < buf + n;) {
                auto* ev = reinterpret_cast<inotify_event*>(p);
                p += sizeof(inotify_event) + ev->len;
                std::string_view name = ev->len > 0 ? std::string_view(ev->name) : std::string_view();
                if (ev->wd != wd_ && !(ev->mask & IN_Q_OVERFLOW)) continue;  // an old watch's leftovers
                if (!event_matters(ev->mask, name)) continue;
                reasons_.add(describe_event(ev->mask, name));
                if (watch_lost(ev->mask) && wd_ >= 0) {
                    // The folder is gone or is another one now: watch the
                    // path again (at once if it exists, else when it does).
                    if (!(ev->mask & IN_IGNORED)) ::inotify_rm_watch(ifd_, wd_);
                    wd_ = -1;
                    debounce_.clear();
                    continue;
                }
                debounce_.note(clock::now());
            }
        }
    }

    // One look at the folder: install() chains signet into the active config
    // when it is not there; a config that already has it is not written.
    void look() {
        std::string why = reasons_.text();
        reasons_.clear();
        debounce_.clear();
        next_resync_ = clock::now() + w_.resync;
        auto rep = install(opts_);
        if (!rep) {
            std::string msg = rep.error().message;
            if (msg != last_error_) {
                log_err("cannot chain signet (" + why + "): " + msg + (rep.error().code == ENOENT ? "; waiting" : "") +
                        "; still watching");
                std::string d = rep.error().details;
                if (!d.empty()) {
                    std::fputs(d.c_str(), err_);
                    std::fflush(err_);
                }
            }
            last_error_ = msg;
            last_config_.clear();
            return;
        }
        bool was_failing = !last_error_.empty();
        last_error_.clear();
        if (rep->config_change != Change::none) {
            std::string what =
                last_config_.empty() || last_config_ == rep->config
                    ? "chained signet into " + rep->config
                    : "chained signet into " + rep->config + ", the active config now (was " + last_config_ + ")";
            log(what + " (why: " + why + ")");
            for (const auto& l : rep->lines)
                if (l.find(" is already this plugin binary") == std::string::npos) log("  " + l);
        } else if (rep->config != last_config_ || was_failing) {
            log(rep->config + " is the active config and chains signet already (why: " + why + ")");
        }
        if (rep->config_change == Change::none && rep->changed) {
            // The binary went missing or changed (a cleaned CNI bin folder).
            for (const auto& l : rep->lines)
                if (l.rfind("copy ", 0) == 0) log(l + " (why: " + why + ")");
        }
        last_config_ = rep->config;
    }

    int stop(int signo) {
        log(std::string("received ") + (signo == SIGTERM ? "SIGTERM" : "SIGINT") + ": stopping" +
            (w_.uninstall_on_exit ? "; removing signet's entry (--uninstall-on-exit)"
                                  : "; signet's entry stays in the CNI config"));
        if (!w_.uninstall_on_exit) return 0;
        auto rep = uninstall(opts_);
        if (!rep) {
            log_err("uninstall: " + rep.error().message);
            return 1;
        }
        for (const auto& l : rep->lines) log(l);
        return 0;
    }

    const Options& opts_;
    WatchOptions w_;
    std::FILE* out_;
    std::FILE* err_;
    int ifd_ = -1;
    int sfd_ = -1;
    int wd_ = -1;
    dev_t dev_ = 0;
    ino_t ino_ = 0;
    bool waiting_for_folder_ = false;
    bool first_look_ = true;
    Debouncer debounce_;
    Reasons reasons_;
    clock::time_point next_resync_;
    std::string last_config_;
    std::string last_error_;
};

}  // namespace

int watch(const Options& opts, const WatchOptions& w, std::FILE* out, std::FILE* err) {
    Watcher watcher(opts, w, out, err);
    return watcher.run();
}

}  // namespace signet::installer
