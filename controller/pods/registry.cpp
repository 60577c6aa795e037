#include "registry.h"

#include <sys/stat.h>
#include <sys/vfs.h>

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
