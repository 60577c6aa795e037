#include <doctest/doctest.h>
#include <unistd.h>

#include <set>
#include <string>

#include "pods/registry.h"
#include "signet/fsutil.h"

using namespace signet;

namespace {
api::PodRecord record(const std::string& id, const std::string& netns, const std::string& network = "net") {
    api::PodRecord r;
    r.reg.container_id = id;
    r.reg.ifname = "eth0";
    r.reg.netns = netns;
    r.reg.network = network;
    r.reg.namespace_ = "ns";
    r.reg.name = "pod-" + id;
    r.reg.ips = {"10.0.0.1/24", "fd00::1/64"};
    r.registered_at = 1700000000;
    r.netns_inode = 42;
    r.labels = {{"app", "web"}};
    r.container_ports = {{"http", 80, "TCP"}};
    return r;
}

struct TempDir {
    std::string path;
    TempDir() {
        char t[] = "/tmp/signet-reg-XXXXXX";
        path = ::mkdtemp(t);
    }
    ~TempDir() { std::system(("rm -rf '" + path + "'").c_str()); }
};
}  // namespace

TEST_CASE("registry persists and recovers, dropping dead netns") {
    TempDir dir;
    std::set<std::string> alive{"/run/netns/a", "/run/netns/b"};
    auto probe = [&](const std::string& p, uint64_t) { return alive.count(p) > 0; };
    {
        pods::Registry reg(dir.path + "/pods.json", probe);
        REQUIRE(reg.load().ok());
        CHECK(reg.size() == 0);
        reg.put(record("a1", "/run/netns/a"));
        reg.put(record("b1", "/run/netns/b"));
        REQUIRE(reg.save().ok());
    }
    alive.erase("/run/netns/b");
    pods::Registry again(dir.path + "/pods.json", probe);
    auto dropped = again.load();
    REQUIRE(dropped.ok());
    CHECK(*dropped == std::vector<std::string>{"b1/eth0"});
    REQUIRE(again.size() == 1);
    const api::PodRecord* a = again.get("a1/eth0");
    REQUIRE(a != nullptr);
    CHECK(a->reg == record("a1", "/run/netns/a").reg);
    CHECK(a->netns_inode == 42);
    CHECK(a->labels.at("app") == "web");
}

TEST_CASE("corrupt registry is moved aside, not trusted") {
    TempDir dir;
    REQUIRE(fs::write_atomic(dir.path + "/pods.json", "{\"pods\": [ {\"containerID\": ").ok());
    pods::Registry reg(dir.path + "/pods.json", [](const std::string&, uint64_t) { return true; });
    auto r = reg.load();
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().message.find("moved aside") != std::string::npos);
    CHECK(::access((dir.path + "/pods.json").c_str(), F_OK) != 0);
    CHECK(reg.size() == 0);
}

TEST_CASE("GC keeps only the listed attachments of its network") {
    TempDir dir;
    pods::Registry reg(dir.path + "/pods.json", [](const std::string&, uint64_t) { return true; });
    reg.put(record("a", "/x"));
    reg.put(record("b", "/x"));
    reg.put(record("c", "/x", "other-net"));
    api::GcRequest req;
    req.network = "net";
    req.valid = {{"a", "eth0"}};
    auto removed = reg.gc(req);
    CHECK(removed == std::vector<std::string>{"b/eth0"});
    CHECK(reg.get("a/eth0") != nullptr);
    CHECK(reg.get("c/eth0") != nullptr);  // another network's attachment is not ours to collect
}

TEST_CASE("sweep drops registrations whose netns is gone") {
    TempDir dir;
    bool alive = true;
    pods::Registry reg(dir.path + "/pods.json", [&](const std::string&, uint64_t) { return alive; });
    reg.put(record("a", "/x"));
    CHECK(reg.sweep().empty());
    alive = false;
    CHECK(reg.sweep() == std::vector<std::string>{"a/eth0"});
    CHECK(reg.size() == 0);
}

TEST_CASE("the real netns probe") {
    auto self = pods::netns_inode("/proc/self/ns/net");
    REQUIRE(self.ok());
    CHECK(pods::netns_alive("/proc/self/ns/net", *self));
    CHECK_FALSE(pods::netns_alive("/proc/self/ns/net", *self + 1));  // a different (recreated) netns
    CHECK_FALSE(pods::netns_inode("/etc/hostname").ok());
    CHECK_FALSE(pods::netns_inode("/nonexistent/netns").ok());
}

TEST_CASE("a pod's netns: nsfs, a network namespace, not the node's own") {
    using pods::pod_netns_inode;
    const std::vector<pods::HostNetns> none;
    auto self = pod_netns_inode("/proc/self/ns/net", none);
    REQUIRE(self.ok());
    CHECK(*self == *pods::netns_inode("/proc/self/ns/net"));
    auto msg = [](const Result<uint64_t>& r) { return r.ok() ? std::string("(accepted)") : r.error().message; };
    // The node's own: signetd's (and PID 1's) netns is never a pod's.
    auto host = pod_netns_inode("/proc/self/ns/net", pods::default_host_netns());
    REQUIRE_FALSE(host.ok());
    CHECK(msg(host).find("signetd's own network namespace") != std::string::npos);
    // The same netns under another name (the task's own link) is the same inode.
    auto alias = pod_netns_inode("/proc/thread-self/ns/net", pods::default_host_netns());
    CHECK_FALSE(alias.ok());
    // --node-netns: compared by device and inode, whatever the path.
    auto node = pod_netns_inode("/proc/self/ns/net", {{"/proc/thread-self/ns/net", "the node's network namespace"}});
    CHECK(msg(node).find("the node's network namespace") != std::string::npos);
    if (::access("/proc/1/ns/net", R_OK) == 0) {  // root: PID 1's is readable
        auto init = pod_netns_inode("/proc/1/ns/net", pods::default_host_netns());
        CHECK_FALSE(init.ok());
    }
    // Other namespaces and other files.
    CHECK(msg(pod_netns_inode("/proc/self/ns/uts", none)).find("a UTS namespace, not a network namespace") != std::string::npos);
    CHECK(msg(pod_netns_inode("/proc/self/ns/mnt", none)).find("a mount namespace") != std::string::npos);
    CHECK(msg(pod_netns_inode("/etc/hostname", none)).find("not a namespace") != std::string::npos);
    CHECK(msg(pod_netns_inode("/proc/self", none)).find("not a namespace") != std::string::npos);
    CHECK(msg(pod_netns_inode("/nonexistent/netns", none)).find("does not exist") != std::string::npos);
    CHECK(msg(pod_netns_inode("proc/self/ns/net", none)).find("not an absolute path") != std::string::npos);
    CHECK(msg(pod_netns_inode("", none)).find("must not be empty") != std::string::npos);
    CHECK(msg(pod_netns_inode("/run/netns/a\nb", none)).find("control characters") != std::string::npos);
}
