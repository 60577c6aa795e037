// The pod registry: every CNI attachment registered on this node, persisted
// in the state folder so that a restart (or crash) of signetd recovers it.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "signet/api.h"
#include "signet/result.h"

namespace signet::pods {

// Says whether a registered netns still exists (and is the same one).
// Injected so the registry is testable without root.
using NetnsProbe = std::function<bool(const std::string& path, uint64_t inode)>;

// The real probe: `path` is a network namespace (nsfs) with that inode.
bool netns_alive(const std::string& path, uint64_t inode);
// Inode of the netns at `path`, or an error if it is not a network namespace.
Result<uint64_t> netns_inode(const std::string& path);

// A network namespace that is never a pod's: the node's own.
struct HostNetns {
    std::string path;  // e.g. /proc/self/ns/net
    std::string what;  // for the message, e.g. "signetd's own"
};
// signetd's own netns and PID 1's (the host's, also when signetd runs in
// another one); the node's (--node-netns) is added by the controller.
std::vector<HostNetns> default_host_netns();

// Checks that `path` names a pod's network namespace before it is registered:
// an absolute path without control characters that exists, is on nsfs
// (statfs NSFS_MAGIC), is a network namespace (ioctl NS_GET_NSTYPE ==
// CLONE_NEWNET) and is none of `host` (same nsfs device and inode). Returns
// its inode; the error says which rule failed. Opened O_NONBLOCK only after
// statfs says nsfs, so a FIFO or device is never opened.
Result<uint64_t> pod_netns_inode(const std::string& path, const std::vector<HostNetns>& host);

class Registry {
public:
    // `state_file` is where the registry is persisted (written atomically).
    Registry(std::string state_file, NetnsProbe probe);

    // Loads the persisted registry, dropping entries whose netns is gone.
    // Returns the keys dropped. A missing file is an empty registry; an
    // unreadable or corrupt one is an error (and the file is kept aside).
    Result<std::vector<std::string>> load();
    Status save() const;

    // Inserts or replaces (a repeated ADD for the same attachment).
    void put(api::PodRecord record);
    bool remove(const std::string& key);
    const api::PodRecord* get(const std::string& key) const;
    api::PodRecord* get_mut(const std::string& key);
    const std::map<std::string, api::PodRecord>& all() const { return pods_; }
    std::map<std::string, api::PodRecord>& all_mut() { return pods_; }
    size_t size() const { return pods_.size(); }

    // Drops registrations of `network` not listed in `valid` (CNI GC).
    std::vector<std::string> gc(const api::GcRequest& req);
    // Drops registrations whose netns no longer exists.
    std::vector<std::string> sweep();

    const std::string& state_file() const { return state_file_; }

private:
    std::string state_file_;
    NetnsProbe probe_;
    std::map<std::string, api::PodRecord> pods_;
};

}  // namespace signet::pods
