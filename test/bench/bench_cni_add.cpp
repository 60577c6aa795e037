// Measures what the signet CNI plugin adds to a pod's ADD: plugin start to
// exit, with signetd running, side by side in one run with the process-start
// floor (/bin/true) and, as root, with the bridge plugin that precedes it in
// a real chain.
//
// bench_cni_add --plugin PATH --signetd PATH [--iterations N] [--bridge PATH]
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "signet/http_client.h"

extern char** environ;

namespace {

using Clock = std::chrono::steady_clock;

struct Run {
    int status = -1;
    std::string out;
    double ms = 0;
};

Run spawn(const std::string& path, const std::vector<std::string>& env, const std::string& input) {
    int in[2], out[2];
    if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0) std::abort();
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    std::vector<char*> argv{const_cast<char*>(path.c_str()), nullptr};
    std::vector<char*> envp;
    for (const auto& e : env) envp.push_back(const_cast<char*>(e.c_str()));
    envp.push_back(nullptr);
    Run r;
    auto t0 = Clock::now();
    pid_t pid = 0;
    if (posix_spawn(&pid, path.c_str(), &fa, nullptr, argv.data(), envp.data()) != 0) {
        std::perror(path.c_str());
        std::exit(1);
    }
    close(in[0]);
    close(out[1]);
    if (!input.empty() && write(in[1], input.data(), input.size()) < 0) std::perror("write");
    close(in[1]);
    char buf[8192];
    ssize_t n;
    while ((n = read(out[0], buf, sizeof buf)) > 0) r.out.append(buf, static_cast<size_t>(n));
    close(out[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    r.ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
    posix_spawn_file_actions_destroy(&fa);
    return r;
}

struct Stats {
    std::vector<double> v;
    double pct(double p) {
        std::sort(v.begin(), v.end());
        return v.empty() ? 0 : v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
    }
    void print(const char* name) {
        std::printf("  %-34s n=%-4zu median %7.3f ms   p90 %7.3f ms   p99 %7.3f ms\n", name, v.size(), pct(0.5),
                    pct(0.9), pct(0.99));
    }
};

std::string arg_value(int argc, char** argv, const char* name, const char* def) {
    for (int i = 1; i + 1 < argc; ++i)
        if (std::strcmp(argv[i], name) == 0) return argv[i + 1];
    return def;
}

}  // namespace

int main(int argc, char** argv) {
    std::string plugin = arg_value(argc, argv, "--plugin", "");
    std::string signetd = arg_value(argc, argv, "--signetd", "");
    std::string bridge = arg_value(argc, argv, "--bridge", "");
    int iterations = std::atoi(arg_value(argc, argv, "--iterations", "300").c_str());
    if (plugin.empty() || signetd.empty() || iterations <= 0) {
        std::fprintf(stderr, "usage: bench_cni_add --plugin PATH --signetd PATH [--iterations N] [--bridge PATH]\n");
        return 2;
    }
    const bool root = geteuid() == 0;
    if (!bridge.empty() && !root) {
        std::printf("bench_cni_add: not root: the bridge side-by-side is SKIPPED\n");
        bridge.clear();
    }

    char tmpl[] = "/tmp/signet-bench-XXXXXX";
    std::string dir = mkdtemp(tmpl);
    std::string sock = dir + "/signetd.sock";
    std::system(("mkdir -p " + dir + "/manifests " + dir + "/state " + dir + "/ipam").c_str());
    std::string netns_name = "sgt-bench-" + std::to_string(getpid());
    std::string netns = "/proc/self/ns/net";
    if (root) {
        if (std::system(("ip netns add " + netns_name).c_str()) != 0) return 1;
        netns = "/var/run/netns/" + netns_name;
    }

    pid_t d = fork();
    if (d == 0) {
        int null = open((dir + "/signetd.log").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(null, 2);
        execl(signetd.c_str(), signetd.c_str(), "--node-name", "bench", "--source", ("dir:" + dir + "/manifests").c_str(),
              "--socket", sock.c_str(), "--state-dir", (dir + "/state").c_str(), "--log-level", "warn", nullptr);
        _exit(127);
    }
    bool ready = false;
    for (int i = 0; i < 500 && !ready; ++i) {
        auto r = signet::http::request(sock, "GET", "/readyz", {}, 200);
        ready = r.ok() && r->status == 200;
        if (!ready) usleep(10000);
    }
    int rc = 0;
    if (!ready) {
        std::fprintf(stderr, "signetd did not become ready\n");
        rc = 1;
    }

    const std::string prev_static =
        R"({"cniVersion":"1.0.0","interfaces":[{"name":"eth0","mac":"0a:58:0a:f4:00:05","sandbox":")" + netns +
        R"("}],"ips":[{"interface":0,"address":"10.244.0.5/24","gateway":"10.244.0.1"}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{}})";
    auto conf = [&](const std::string& prev) {
        return R"({"cniVersion":"1.0.0","name":"benchnet","type":"signet","socket":")" + sock + R"(","prevResult":)" + prev + "}";
    };
    const std::string bridge_conf =
        R"({"cniVersion":"1.0.0","name":"benchnet","type":"bridge","bridge":"sgtbench)" + std::to_string(getpid() % 100000) +
        R"(","isGateway":true,"ipMasq":false,"ipam":{"type":"host-local","dataDir":")" + dir +
        R"(/ipam","ranges":[[{"subnet":"10.251.0.0/16"}]]}})";

    Stats add, del, version, floor, br_add, br_del;
    for (int i = 0; i < iterations && rc == 0; ++i) {
        std::string id = "bench" + std::to_string(i);
        std::vector<std::string> env{"CNI_CONTAINERID=" + id, "CNI_NETNS=" + netns, "CNI_IFNAME=eth0",
                                     "CNI_PATH=/usr/lib/cni", "CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=p" + std::to_string(i)};
        auto with = [&](const char* cmd) {
            auto e = env;
            e.push_back(std::string("CNI_COMMAND=") + cmd);
            return e;
        };
        std::string prev = prev_static;
        if (!bridge.empty()) {
            Run b = spawn(bridge, with("ADD"), bridge_conf);
            if (b.status != 0) {
                std::fprintf(stderr, "bridge ADD failed: %s\n", b.out.c_str());
                rc = 1;
                break;
            }
            br_add.v.push_back(b.ms);
            prev = b.out;
            while (!prev.empty() && (prev.back() == '\n' || prev.back() == ' ')) prev.pop_back();
        }
        Run a = spawn(plugin, with("ADD"), conf(prev));
        if (a.status != 0) {
            std::fprintf(stderr, "signet ADD failed: %s\n", a.out.c_str());
            rc = 1;
            break;
        }
        add.v.push_back(a.ms);
        Run r = spawn(plugin, with("DEL"), conf(prev));
        if (r.status != 0) rc = 1;
        del.v.push_back(r.ms);
        if (!bridge.empty()) {
            Run b = spawn(bridge, with("DEL"), bridge_conf);
            if (b.status != 0) rc = 1;
            br_del.v.push_back(b.ms);
        }
        version.v.push_back(spawn(plugin, {"CNI_COMMAND=VERSION"}, R"({"cniVersion":"1.0.0"})").ms);
        floor.v.push_back(spawn("/bin/true", {}, "").ms);
    }

    if (rc == 0) {
        std::printf("signet CNI ADD latency (plugin start to exit, signetd running), one run side by side:\n");
        add.print("signet ADD (registers with signetd)");
        del.print("signet DEL");
        version.print("signet VERSION (no signetd call)");
        floor.print("/bin/true (process start floor)");
        if (!br_add.v.empty()) {
            br_add.print("bridge+host-local ADD (main plugin)");
            br_del.print("bridge+host-local DEL");
            std::printf("  signet ADD / bridge ADD median ratio: %.3f\n", add.pct(0.5) / br_add.pct(0.5));
        }
        std::printf("  target: signet ADD median < 5 ms: %s\n", add.pct(0.5) < 5.0 ? "met" : "NOT MET");
    }

    kill(d, SIGTERM);
    waitpid(d, nullptr, 0);
    if (root) {
        std::system(("ip netns delete " + netns_name + " 2>/dev/null").c_str());
        if (!bridge.empty())
            std::system(("ip link delete sgtbench" + std::to_string(getpid() % 100000) + " 2>/dev/null").c_str());
    }
    if (rc != 0) std::system(("cat " + dir + "/signetd.log >&2").c_str());
    std::system(("rm -rf " + dir).c_str());
    return rc;
}
