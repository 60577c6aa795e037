// Helpers of the exporter's integration tests: a temp dir, free loopback
// ports, child processes killed by pid (and on our death), a tiny libcurl
// HTTP client for /query and the fake server's control endpoints.
#pragma once

#include <curl/curl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace signet::testutil {

// What a SIGTERM/SIGINT (meson's timeout) must clean up.
inline volatile sig_atomic_t g_child_pids[4] = {0, 0, 0, 0};
inline char g_temp_dir[256] = {0};

inline void register_child(pid_t pid) {
    for (auto& p : g_child_pids)
        if (p == 0) {
            p = pid;
            return;
        }
}
inline void unregister_child(pid_t pid) {
    for (auto& p : g_child_pids)
        if (p == pid) p = 0;
}

inline void on_fatal_signal(int sig) {
    for (auto& p : g_child_pids)
        if (p > 0) {
            kill(p, SIGKILL);
            waitpid(p, nullptr, 0);
        }
    if (g_temp_dir[0]) {
        std::error_code ec;
        std::filesystem::remove_all(g_temp_dir, ec);   // not async-signal-safe; we are exiting anyway
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

inline void install_cleanup_handlers() {
    signal(SIGTERM, on_fatal_signal);
    signal(SIGINT, on_fatal_signal);
    signal(SIGPIPE, SIG_IGN);
}

struct TempDir {
    std::string path;
    TempDir() {
        char tmpl[] = "/tmp/signet-export-XXXXXX";
        if (!mkdtemp(tmpl)) throw std::runtime_error("mkdtemp failed");
        path = tmpl;
        snprintf(g_temp_dir, sizeof g_temp_dir, "%s", path.c_str());
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
        g_temp_dir[0] = 0;
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
};

// A free loopback TCP port (bound to 0, read back, closed).
inline int free_port() {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    socklen_t len = sizeof a;
    getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    close(fd);
    return ntohs(a.sin_port);
}

// A child process; killed (SIGKILL) if we die first (PR_SET_PDEATHSIG).
struct Child {
    pid_t pid = -1;
    int out_fd = -1;   // its stdout when capture_stdout

    Child() = default;
    Child(const Child&) = delete;
    Child& operator=(const Child&) = delete;
    ~Child() { kill_now(); }

    // argv[0] is the program path. stderr (and stdout unless captured) go to log_path.
    void spawn(const std::vector<std::string>& argv, const std::string& log_path, bool capture_stdout = false) {
        int pipefd[2] = {-1, -1};
        if (capture_stdout && pipe2(pipefd, O_CLOEXEC) != 0) throw std::runtime_error("pipe failed");
        std::vector<char*> args;   // built before fork(): no allocation in the child
        for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
        args.push_back(nullptr);
        pid_t parent = getpid();
        pid = fork();
        if (pid < 0) throw std::runtime_error("fork failed");
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != parent) _exit(127);
            int log = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
            if (log >= 0) {
                dup2(log, 2);
                if (!capture_stdout) dup2(log, 1);
            }
            if (capture_stdout) dup2(pipefd[1], 1);
            int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
            if (devnull >= 0) dup2(devnull, 0);
            execv(args[0], args.data());
            _exit(127);
        }
        register_child(pid);
        if (capture_stdout) {
            close(pipefd[1]);
            out_fd = pipefd[0];
        }
    }

    bool alive() {
        if (pid <= 0) return false;
        int st = 0;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) {
            unregister_child(pid);
            pid = -1;
            return false;
        }
        return true;
    }

    // SIGTERM, then SIGKILL after `grace`. True when it exited within the grace.
    bool terminate(std::chrono::milliseconds grace = std::chrono::seconds(10)) {
        if (pid <= 0) return true;
        kill(pid, SIGTERM);
        auto deadline = std::chrono::steady_clock::now() + grace;
        while (std::chrono::steady_clock::now() < deadline) {
            if (waitpid(pid, nullptr, WNOHANG) == pid) {
                unregister_child(pid);
                pid = -1;
                close_out();
                return true;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
        kill_now();
        return false;
    }

    void kill_now() {
        if (pid > 0) {
            kill(pid, SIGKILL);
            waitpid(pid, nullptr, 0);
            unregister_child(pid);
            pid = -1;
        }
        close_out();
    }

    void close_out() {
        if (out_fd >= 0) close(out_fd);
        out_fd = -1;
    }

    // One line of the child's stdout (capture_stdout), waiting up to `timeout`.
    std::string read_line(std::chrono::milliseconds timeout) {
        std::string line;
        auto deadline = std::chrono::steady_clock::now() + timeout;
        while (std::chrono::steady_clock::now() < deadline) {
            char c;
            fcntl(out_fd, F_SETFL, O_NONBLOCK);
            ssize_t n = read(out_fd, &c, 1);
            if (n == 1) {
                if (c == '\n') return line;
                line += c;
            } else if (n == 0) {
                break;
            } else {
                std::this_thread::sleep_for(std::chrono::milliseconds(10));
            }
        }
        return line;
    }
};

struct HttpResponse {
    long status = 0;
    std::string body;
    std::string error;
};

inline size_t append_cb(char* d, size_t s, size_t n, void* u) {
    static_cast<std::string*>(u)->append(d, s * n);
    return s * n;
}

// method "GET" or "POST"; for POST, `body` is sent as application/x-www-form-urlencoded.
inline HttpResponse http(const std::string& method, const std::string& url, const std::string& body = {}) {
    HttpResponse r;
    CURL* c = curl_easy_init();
    curl_easy_setopt(c, CURLOPT_URL, url.c_str());
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, append_cb);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r.body);
    if (method == "POST") {
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body.c_str());
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, static_cast<long>(body.size()));
    }
    CURLcode rc = curl_easy_perform(c);
    if (rc == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
    else r.error = curl_easy_strerror(rc);
    curl_easy_cleanup(c);
    return r;
}

inline std::string form_encode(const std::string& s) {
    char* e = curl_easy_escape(nullptr, s.c_str(), static_cast<int>(s.size()));
    std::string out(e);
    curl_free(e);
    return out;
}

}  // namespace signet::testutil
