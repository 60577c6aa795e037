// The manifest-directory source (`signetd --source dir:PATH`): the objects
// of every *.yaml, *.yml and *.json file of one directory, followed with
// inotify.
//
// The caller owns the event loop: it polls watch_fd(), calls drain_events()
// when it is readable, debounces, then calls rescan(). rescan() only re-reads
// files whose identity or stamp changed, so calling it often is cheap; a
// periodic rescan also covers what inotify cannot see (e.g. the directory
// being recreated while it was gone).
//
// Files are read through symlinks, so a Kubernetes ConfigMap volume works:
// its atomic update renames the hidden "..data" link, which wakes the watch,
// and the visible files then resolve to new inodes.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "../cache/objects.h"
#include "signet/result.h"

namespace signet::source {

struct FileError {
    std::string file;     // name inside the directory
    std::string message;  // without the file name, e.g. "document 2: spec.podSelector: must be an object, not a list"
    bool operator==(const FileError&) const = default;
};

class ManifestDir {
public:
    explicit ManifestDir(std::string dir);
    ~ManifestDir();
    ManifestDir(const ManifestDir&) = delete;
    ManifestDir& operator=(const ManifestDir&) = delete;

    // Opens an inotify fd watching the directory (IN_CLOSE_WRITE|IN_CREATE|
    // IN_DELETE|IN_MOVED_FROM|IN_MOVED_TO|IN_DELETE_SELF|IN_MOVE_SELF|
    // IN_MODIFY|IN_ATTRIB). Non-blocking, close-on-exec, owned by this object
    // (closed by the destructor). Calling it again re-arms the watch on the
    // same fd (for a directory that was removed and recreated).
    Status start_watch();
    int watch_fd() const;  // -1 before start_watch

    // Reads and discards pending inotify events (the caller then debounces
    // and calls rescan). Notes when the watched directory itself went away.
    void drain_events();
    // The directory was deleted or moved away since the watch was armed;
    // rescan() re-arms the watch (same fd) once the directory is back.
    bool watch_lost() const { return watch_lost_; }

    // Re-reads the directory: files ending .yaml/.yml/.json, non-recursive,
    // hidden files (leading '.') and editor temp files ('~' suffix) ignored.
    // Reparses only files whose (device, inode, size, mtime, ctime) changed (or
    // that were modified within the last 2 s, as file times are coarse); a
    // file that fails to read or parse keeps its last good objects and records
    // a FileError; a removed or renamed-away file drops its objects. Returns
    // true when the merged object set changed (by content). Errors only when
    // the directory itself cannot be read; the snapshot is then unchanged.
    Result<bool> rescan();

    const cache::Snapshot& snapshot() const { return snapshot_; }
    // The keys whose objects changed since the last call.
    cache::Delta take_delta();
    const std::vector<FileError>& errors() const { return errors_; }  // current, sorted by file
    // New warnings since the last call (each reported once while it holds):
    // an object defined twice (the later file in name order wins), objects of
    // kinds signet does not use.
    std::vector<std::string> take_warnings();
    const std::string& dir() const { return dir_; }

private:
    struct Stamp {
        uint64_t dev = 0, ino = 0;
        int64_t size = 0, mtime_ns = 0, ctime_ns = 0;
        bool operator==(const Stamp&) const = default;
    };
    struct FileState {
        Stamp stamp;
        std::vector<cache::Object> objects;  // last good parse
        std::vector<std::string> ignored;    // from the last good parse
        std::string error;                   // "" when the current content is good
        bool recent = false;                 // modified too recently to trust the stamp
    };

    // Reads and parses one file into `state` (keeping its objects on failure).
    // Returns false when the file no longer exists.
    bool load(const std::string& name, FileState& state);
    Status arm_watch();
    void merge();

    std::string dir_;
    int fd_ = -1;
    int wd_ = -1;
    bool watch_lost_ = false;
    std::map<std::string, FileState> files_;  // by name, sorted
    cache::Snapshot snapshot_;
    cache::Delta delta_;
    std::vector<FileError> errors_;
    std::set<std::string> active_warnings_;
    std::vector<std::string> pending_warnings_;
};

}  // namespace signet::source
