#include "manifest_dir.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <map>
#include <memory>
#include <utility>

#include "manifest.h"

namespace signet::source {

namespace {

constexpr uint32_t kWatchMask = IN_CLOSE_WRITE | IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF |
                                IN_MOVE_SELF | IN_MODIFY | IN_ATTRIB | IN_ONLYDIR;

bool ends_with(std::string_view s, std::string_view suffix) {
    return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// kubectl apply -f DIR takes .json, .yaml and .yml (case-sensitive).
bool is_manifest_name(std::string_view name) {
    if (name.empty() || name.front() == '.' || name.back() == '~') return false;
    return ends_with(name, ".yaml") || ends_with(name, ".yml") || ends_with(name, ".json");
}

constexpr int64_t kRacyWindowNs = 2'000'000'000;

int64_t nanoseconds(const struct timespec& ts) {
    return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

std::string errno_text(int err) {
    return std::strerror(err);
}

// Owns a file descriptor for the length of a scope.
class ScopedFd {
public:
    explicit ScopedFd(int fd) : fd_(fd) {}
    ~ScopedFd() {
        if (fd_ >= 0) ::close(fd_);
    }
    ScopedFd(const ScopedFd&) = delete;
    ScopedFd& operator=(const ScopedFd&) = delete;
    int get() const { return fd_; }

private:
    int fd_;
};

}  // namespace

ManifestDir::ManifestDir(std::string dir) : dir_(std::move(dir)) {}

ManifestDir::~ManifestDir() {
    if (fd_ >= 0) ::close(fd_);
}

int ManifestDir::watch_fd() const {
    return fd_;
}

Status ManifestDir::start_watch() {
    if (fd_ < 0) {
        fd_ = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
        if (fd_ < 0) {
            int err = errno;
            return make_error(err, "inotify_init1: " + errno_text(err));
        }
    }
    return arm_watch();
}

Status ManifestDir::arm_watch() {
    if (wd_ >= 0) ::inotify_rm_watch(fd_, wd_);  // may already be gone; harmless
    wd_ = ::inotify_add_watch(fd_, dir_.c_str(), kWatchMask);
    if (wd_ < 0) {
        int err = errno;
        watch_lost_ = true;
        return make_error(err, "cannot watch manifest directory " + dir_ + ": " + errno_text(err));
    }
    watch_lost_ = false;
    return {};
}

void ManifestDir::drain_events() {
    if (fd_ < 0) return;
    alignas(struct inotify_event) char buf[16 * 1024];
    while (true) {
        ssize_t n = ::read(fd_, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return;  // EAGAIN: drained
        for (ssize_t off = 0; off + static_cast<ssize_t>(sizeof(struct inotify_event)) <= n;) {
            const auto* ev = reinterpret_cast<const struct inotify_event*>(buf + off);
            if (ev->wd == wd_ && (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED))) watch_lost_ = true;
            off += static_cast<ssize_t>(sizeof(struct inotify_event) + ev->len);
        }
    }
}

bool ManifestDir::load(const std::string& name, FileState& state) {
    const std::string path = dir_ + "/" + name;
    auto fail = [&](std::string message) {
        state.error = std::move(message);
        return true;
    };

    ScopedFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY));
    if (fd.get() < 0 && errno == ENOENT) return false;  // removed since the directory was read
    if (fd.get() < 0) return fail("cannot open: " + errno_text(errno));
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) return fail("cannot stat: " + errno_text(errno));
    state.stamp = Stamp{static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino), st.st_size,
                        nanoseconds(st.st_mtim), nanoseconds(st.st_ctim)};
    // File times tick at the kernel's clock granularity (a few ms): a file
    // rewritten with the same size within one tick keeps its stamp. Until its
    // times are safely in the past, read it again on every rescan ("racy git").
    struct timespec now {};
    ::clock_gettime(CLOCK_REALTIME, &now);
    state.recent = std::max(state.stamp.mtime_ns, state.stamp.ctime_ns) > nanoseconds(now) - kRacyWindowNs;
    if (!S_ISREG(st.st_mode)) return fail("not a regular file");
    if (static_cast<uint64_t>(st.st_size) > kMaxManifestBytes)
        return fail("file too large (" + std::to_string(st.st_size) + " bytes, limit " +
                    std::to_string(kMaxManifestBytes) + ")");

    // Read at most one byte past the limit, in case the file grew since
    // fstat. The buffer starts at the file's size (plus a little) and grows
    // only if the file did: a zeroed 4 MiB buffer per file read was most of
    // a rescan's CPU when small files change (perf, docs/performance.md).
    std::string text;
    text.resize(std::min<size_t>(static_cast<size_t>(st.st_size) + 4096, kMaxManifestBytes + 1));
    size_t used = 0;
    for (;;) {
        if (used == text.size()) {
            if (text.size() >= kMaxManifestBytes + 1) break;
            text.resize(std::min<size_t>(text.size() * 2, kMaxManifestBytes + 1));
        }
        ssize_t n = ::read(fd.get(), text.data() + used, text.size() - used);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return fail("cannot read: " + errno_text(errno));
        if (n == 0) break;
        used += static_cast<size_t>(n);
    }
    text.resize(used);

    std::vector<std::string> ignored;
    auto parsed = parse_manifest(text, name, &ignored);
    if (!parsed) {
        // FileError keeps the file name apart: drop parse_manifest's "<name>: " prefix.
        std::string_view message = parsed.error().message;
        if (message.starts_with(name + ": ")) message.remove_prefix(name.size() + 2);
        state.error = std::string(message);
        return true;
    }
    state.objects = std::move(*parsed);
    state.ignored = std::move(ignored);
    state.error.clear();
    return true;
}

Result<bool> ManifestDir::rescan() {
    std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(dir_.c_str()), &::closedir);
    if (!d) {
        int err = errno;
        return make_error(err, "cannot read manifest directory " + dir_ + ": " + errno_text(err));
    }
    std::set<std::string> names;
    while (true) {
        errno = 0;
        const struct dirent* ent = ::readdir(d.get());
        if (ent == nullptr) {
            if (errno != 0) {
                int err = errno;
                return make_error(err, "cannot read manifest directory " + dir_ + ": " + errno_text(err));
            }
            break;
        }
        if (is_manifest_name(ent->d_name)) names.insert(ent->d_name);
    }
    d.reset();

    if (watch_lost_ && fd_ >= 0) (void)arm_watch();  // the directory is back

    bool files_changed = false;
    cache::Delta delta;  // the keys of every object in a file that changed, before and after
    std::map<std::string, FileState> next;
    for (const std::string& name : names) {
        struct stat st {};
        // Follow symlinks (ConfigMap volumes); skip what is not a regular file (or a dangling link).
        if (::stat((dir_ + "/" + name).c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
        Stamp stamp{static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino), st.st_size,
                    nanoseconds(st.st_mtim), nanoseconds(st.st_ctim)};
        FileState state;
        if (auto old = files_.find(name); old != files_.end()) {
            state = std::move(old->second);
            if (state.stamp == stamp && !state.recent) {
                next.emplace(name, std::move(state));
                continue;
            }
        }
        const bool known = files_.contains(name);
        const FileState before = state;
        if (!load(name, state)) continue;  // vanished: dropped below like a removed file
        bool objects_changed = !known || state.objects != before.objects;
        if (objects_changed) {
            for (const auto& obj : before.objects) delta.note(obj);
            for (const auto& obj : state.objects) delta.note(obj);
        }
        files_changed = files_changed || objects_changed || state.ignored != before.ignored || state.error != before.error;
        next.emplace(name, std::move(state));
    }
    for (const auto& [name, state] : files_)
        if (!next.contains(name)) {  // removed or renamed away
            files_changed = true;
            for (const auto& obj : state.objects) delta.note(obj);
        }
    files_ = std::move(next);

    errors_.clear();
    for (const auto& [name, state] : files_)
        if (!state.error.empty()) errors_.push_back(FileError{name, state.error});

    if (!files_changed) return false;
    cache::Snapshot before = std::move(snapshot_);
    merge();
    // Only objects of changed files can differ: compare those, not everything.
    if (delta.same_in(snapshot_, before)) return false;
    delta_.merge(delta);
    return true;
}

cache::Delta ManifestDir::take_delta() { return std::exchange(delta_, {}); }

void ManifestDir::merge() {
    snapshot_ = {};
    std::set<std::string> warnings;
    std::map<std::string, std::string> defined_in;  // "Kind name" -> file
    for (const auto& [name, state] : files_) {
        for (const cache::Object& obj : state.objects) {
            std::string id = std::string(cache::kind_of(obj)) + " " + cache::display_name(obj);
            auto [it, first] = defined_in.try_emplace(id, name);
            if (!first) {
                if (it->second == name)
                    warnings.insert(id + " is defined more than once in " + name + "; using the last definition");
                else
                    warnings.insert(id + " is defined in both " + it->second + " and " + name + "; using " + name);
                it->second = name;
            }
            snapshot_.put(obj);
        }
        for (const std::string& ignored : state.ignored)
            warnings.insert(name + ": " + ignored + ": kind not used by signet, ignored");
    }
    for (const std::string& w : warnings)
        if (!active_warnings_.contains(w)) pending_warnings_.push_back(w);
    active_warnings_ = std::move(warnings);
}

std::vector<std::string> ManifestDir::take_warnings() {
    return std::exchange(pending_warnings_, {});
}

}  // namespace signet::source
