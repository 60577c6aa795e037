#include "registry.h"

#include <fcntl.h>
#include <linux/nsfs.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <set>

#include "signet/fsutil.h"
#include "signet/json.h"

#ifndef NSFS_MAGIC
#define NSFS_MAGIC 0x6e736673
#endif

namespace signet::pods {

Result<uint64_t> netns_inode(const std::string& path) {
    struct statfs sfs {};
    if (::statfs(path.c_str(), &sfs) != 0)
        return make_error(errno, "netns " + path + ": " + std::strerror(errno));
    if (static_cast<unsigned long>(sfs.f_type) != NSFS_MAGIC)
        return make_error(EINVAL, "netns " + path + ": not a network namespace");
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return make_error(errno, "netns " + path + ": " + std::strerror(errno));
    return static_cast<uint64_t>(st.st_ino);
}

std::vector<HostNetns> default_host_netns() {
    return {{"/proc/self/ns/net", "signetd's own network namespace (the node's)"},
            {"/proc/1/ns/net", "PID 1's network namespace (the host's)"}};
}

Result<uint64_t> pod_netns_inode(const std::string& path, const std::vector<HostNetns>& host) {
    auto bad = [&](const std::string& why) { return make_error(EINVAL, "netns " + path + ": " + why); };
    if (path.empty()) return make_error(EINVAL, "netns: must not be empty");
    if (path.size() > 4095) return make_error(EINVAL, "netns: path longer than 4095 bytes");
    for (unsigned char c : path)
        if (c < 0x20 || c == 0x7f) return make_error(EINVAL, "netns: path has control characters");
    if (path[0] != '/') return bad("not an absolute path");
    struct statfs sfs {};
    if (::statfs(path.c_str(), &sfs) != 0) {
        int e = errno;
        return make_error(e, "netns " + path + ": " + (e == ENOENT ? "does not exist" : std::strerror(e)));
    }
    if (static_cast<unsigned long>(sfs.f_type) != NSFS_MAGIC) return bad("not a namespace (not on nsfs)");
    int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) return make_error(errno, "netns " + path + ": " + std::strerror(errno));
    struct stat st {};
    int type = -1;
    bool ok = ::fstatfs(fd, &sfs) == 0 && static_cast<unsigned long>(sfs.f_type) == NSFS_MAGIC && ::fstat(fd, &st) == 0;
    if (ok) {
        type = ::ioctl(fd, NS_GET_NSTYPE);
        if (type < 0 && errno == ENOTTY) {  // before Linux 4.11: the fd's link says "net:[INODE]"
            char link[64] = {};
            ssize_t n = ::readlink(("/proc/self/fd/" + std::to_string(fd)).c_str(), link, sizeof link - 1);
            type = n > 4 && std::strncmp(link, "net:", 4) == 0 ? CLONE_NEWNET : 0;
        }
    }
    ::close(fd);
    if (!ok) return bad("not a namespace (not on nsfs)");
    if (type != CLONE_NEWNET) {
        const char* kind = type == CLONE_NEWNS ? "a mount" : type == CLONE_NEWUTS ? "a UTS" : type == CLONE_NEWIPC ? "an IPC"
                           : type == CLONE_NEWUSER ? "a user" : type == CLONE_NEWPID ? "a PID" : type == CLONE_NEWCGROUP ? "a cgroup"
                           : "another kind of";
        return bad(std::string(kind) + " namespace, not a network namespace");
    }
    for (const auto& h : host) {
        struct stat hs {};
        if (::stat(h.path.c_str(), &hs) == 0 && hs.st_dev == st.st_dev && hs.st_ino == st.st_ino)
            return bad("is " + h.what + " (" + h.path + "), not a pod's");
    }
    return static_cast<uint64_t>(st.st_ino);
}

bool netns_alive(const std::string& path, uint64_t inode) {
    auto ino = netns_inode(path);
    return ino.ok() && (inode == 0 || *ino == inode);
}

Registry::Registry(std::string state_file, NetnsProbe probe)
    : state_file_(std::move(state_file)), probe_(std::move(probe)) {}

Result<std::vector<std::string>> Registry::load() {
    std::vector<std::string> dropped;
    struct stat st {};
    if (::stat(state_file_.c_str(), &st) != 0 && errno == ENOENT) return dropped;
    auto text = fs::read_file(state_file_);
    if (!text) return text.error();
    auto fail = [&](const std::string& why) -> Error {
        // Keep the bad file for inspection; start empty rather than guess.
        std::string aside = state_file_ + ".corrupt." + std::to_string(std::time(nullptr));
        ::rename(state_file_.c_str(), aside.c_str());
        return make_error(EINVAL, state_file_ + ": " + why + " (moved aside to " + aside + ")");
    };
    auto doc = json::parse(*text);
    if (!doc) return fail(doc.error().message);
    const rapidjson::Value* list = json::find(*doc, "pods");
    if (list == nullptr || !list->IsArray()) return fail("no \"pods\" array");
    pods_.clear();
    for (const auto& v : list->GetArray()) {
        auto rec = api::record_from_json(v);
        if (!rec) return fail(rec.error().message);
        std::string k = api::key(rec->reg.container_id, rec->reg.ifname);
        if (!probe_(rec->reg.netns, rec->netns_inode)) {
            dropped.push_back(k);
            continue;
        }
        rec->applied_version = 0;  // a version of the previous signetd's source: nothing applied yet
        pods_[k] = std::move(*rec);
    }
    return dropped;
}

Status Registry::save() const {
    rapidjson::Document doc(rapidjson::kObjectType);
    auto& a = doc.GetAllocator();
    doc.AddMember("version", 1, a);
    rapidjson::Value list(rapidjson::kArrayType);
    for (const auto& [k, rec] : pods_) {
        rapidjson::Value v;
        api::to_json(rec, v, a);
        list.PushBack(v, a);
    }
    doc.AddMember("pods", list, a);
    return fs::write_atomic(state_file_, json::to_string(doc, true) + "\n", 0600);
}

void Registry::put(api::PodRecord record) {
    std::string k = api::key(record.reg.container_id, record.reg.ifname);
    pods_[k] = std::move(record);
}

bool Registry::remove(const std::string& key) { return pods_.erase(key) > 0; }

const api::PodRecord* Registry::get(const std::string& key) const {
    auto it = pods_.find(key);
    return it == pods_.end() ? nullptr : &it->second;
}

api::PodRecord* Registry::get_mut(const std::string& key) {
    auto it = pods_.find(key);
    return it == pods_.end() ? nullptr : &it->second;
}

std::vector<std::string> Registry::gc(const api::GcRequest& req) {
    std::set<std::string> keep;
    for (const auto& a : req.valid) keep.insert(api::key(a.container_id, a.ifname));
    std::vector<std::string> removed;
    for (auto it = pods_.begin(); it != pods_.end();) {
        if (it->second.reg.network == req.network && keep.count(it->first) == 0) {
            removed.push_back(it->first);
            it = pods_.erase(it);
        } else {
            ++it;
        }
    }
    return removed;
}

std::vector<std::string> Registry::sweep() {
    std::vector<std::string> removed;
    for (auto it = pods_.begin(); it != pods_.end();) {
        if (!probe_(it->second.reg.netns, it->second.netns_inode)) {
            removed.push_back(it->first);
            it = pods_.erase(it);
        } else {
            ++it;
        }
    }
    return removed;
}

}  // namespace signet::pods
