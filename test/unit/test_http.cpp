#include <doctest/doctest.h>
#include <unistd.h>

#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <cstring>
#include <dirent.h>
#include <string>
#include <thread>
#include <vector>

#include "ipc/server.h"
#include "signet/http_client.h"

using namespace signet;

TEST_CASE("HTTP response parsing") {
    auto r = http::parse_response("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}");
    REQUIRE(r.ok());
    CHECK(r->status == 200);
    CHECK(r->body == "{}");
    CHECK(r->content_type == "application/json");

    auto chunked = http::parse_response("HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n");
    REQUIRE(chunked.ok());
    CHECK(chunked->status == 404);
    CHECK(chunked->body == "abcde");

    auto eof = http::parse_response("HTTP/1.0 503 Busy\r\n\r\nnot ready");
    REQUIRE(eof.ok());
    CHECK(eof->body == "not ready");

    for (const char* bad : {"HTTP/1.1 200OK\r\n\r\n", "", "garbage", "HTTP/1.1 2000 OK\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
                            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
                            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"}) {
        auto b = http::parse_response(bad);
        CHECK_FALSE(b.ok());
        if (!b.ok()) CHECK(b.error().code == http::kProtocol);
    }
}

TEST_CASE("client and server over a unix socket") {
    char dir[] = "/tmp/signet-http-XXXXXX";
    REQUIRE(::mkdtemp(dir) != nullptr);
    std::string sock = std::string(dir) + "/api.sock";

    // Nobody listening yet: unreachable, quickly.
    auto down = http::request(sock, "GET", "/readyz", {}, 500);
    REQUIRE_FALSE(down.ok());
    CHECK(down.error().code == http::kUnreachable);

    boost::asio::io_context io;
    std::vector<ipc::Responder> parked;
    ipc::Server server(io, [&parked](const ipc::Request& req, ipc::Responder respond) {
        if (!req.segments.empty() && req.segments[0] == "echo") {
            std::string segs;
            for (const auto& s : req.segments) segs += "[" + s + "]";
            return respond(ipc::Response{200, req.method + " " + segs + " q=" + ipc::query_param(req.query, "x") + " " + req.body, "text/plain"});
        }
        if (req.path == "/never") {  // never answers: the client's deadline must fire
            parked.push_back(std::move(respond));
            return;
        }
        respond(ipc::json_error(404, "no"));
    });
    ipc::AccessPolicy me;
    me.admin_uid = ::getuid();  // full access for this test's own uid (root in production)
    server.set_access(me);
    REQUIRE(server.listen(sock).ok());
    // A second server on the same socket is refused while the first serves.
    boost::asio::io_context io2;
    ipc::Server second(io2, [](const ipc::Request&, ipc::Responder) {});
    std::thread t([&] { io.run(); });

    auto st = second.listen(sock);
    CHECK_FALSE(st.ok());

    auto r = http::request(sock, "POST", "/echo/a%2Fb/c?x=1%202", "body!", 2000);
    REQUIRE(r.ok());
    CHECK(r->status == 200);
    CHECK(r->body == "POST [echo][a/b][c] q=1 2 body!");

    auto nf = http::request(sock, "GET", "/nothing", {}, 2000);
    REQUIRE(nf.ok());
    CHECK(nf->status == 404);
    CHECK(nf->body.find("\"error\"") != std::string::npos);

    auto slow = http::request(sock, "GET", "/never", {}, 200);
    REQUIRE_FALSE(slow.ok());
    CHECK(slow.error().code == http::kTimeout);

    boost::asio::post(io, [&] { server.stop(); io.stop(); });
    t.join();
    CHECK(::access(sock.c_str(), F_OK) != 0);  // socket file removed on stop
    ::rmdir(dir);
}

namespace {

// A server on its own thread, answering 200 "seen METHOD" to everything it is handed.
struct Served {
    boost::asio::io_context io;
    int handled = 0;
    ipc::Server server{io, [this](const ipc::Request& req, ipc::Responder respond) {
                           ++handled;
                           respond(ipc::Response{200, "seen " + req.method + " uid " + std::to_string(req.peer.uid), "text/plain"});
                       }};
    std::thread thread;
    void run() { thread = std::thread([this] { io.run(); }); }
    ~Served() {
        if (thread.joinable()) {
            boost::asio::post(io, [this] { server.stop(); io.stop(); });
            thread.join();
        }
    }
};

std::string temp_dir() {
    char dir[] = "/tmp/signet-http-XXXXXX";
    REQUIRE(::mkdtemp(dir) != nullptr);
    return dir;
}

std::vector<std::string> dir_entries(const std::string& dir) {
    std::vector<std::string> out;
    if (DIR* d = ::opendir(dir.c_str())) {
        while (auto* e = ::readdir(d))
            if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) out.push_back(e->d_name);
        ::closedir(d);
    }
    return out;
}

}  // namespace

TEST_CASE("the API checks every caller's credentials (SO_PEERCRED): full, read-only (the group) or nothing") {
    std::string dir = temp_dir();
    {
        // Neither the admin uid nor in the group: refused, whatever the request, counted.
        Served s;
        ipc::AccessPolicy p;
        p.admin_uid = ::getuid() + 1;  // not us
        s.server.set_access(p);
        REQUIRE(s.server.listen(dir + "/a.sock").ok());
        s.run();
        for (const char* method : {"GET", "POST"}) {
            auto r = http::request(dir + "/a.sock", method, "/v1/status", {}, 2000);
            REQUIRE(r.ok());
            CHECK(r->status == 403);
            CHECK(r->body.find("forbidden: uid " + std::to_string(::getuid())) != std::string::npos);
            CHECK(r->body.find("root only") != std::string::npos);
        }
        CHECK(s.server.refusals().caller == 2);
        CHECK(s.server.refusals().read_only == 0);
        CHECK(s.handled == 0);
    }
    {
        // A member of the read group: GET and HEAD reach the handler, anything else is refused.
        Served s;
        ipc::AccessPolicy p;
        p.admin_uid = ::getuid() + 1;
        p.read_group = ::getgid();
        p.read_group_name = "readers";
        s.server.set_access(p);
        REQUIRE(s.server.listen(dir + "/b.sock").ok());
        struct stat st {};
        REQUIRE(::stat((dir + "/b.sock").c_str(), &st) == 0);
        CHECK(st.st_gid == ::getgid());  // the socket has the group
        CHECK((st.st_mode & 07777) == 0660);
        s.run();
        auto get = http::request(dir + "/b.sock", "GET", "/v1/status", {}, 2000);
        REQUIRE(get.ok());
        CHECK(get->status == 200);
        CHECK(get->body == "seen GET uid " + std::to_string(::getuid()));
        for (const char* method : {"POST", "DELETE", "PUT"}) {
            auto r = http::request(dir + "/b.sock", method, "/v1/pods", "{}", 2000);
            REQUIRE(r.ok());
            CHECK(r->status == 403);
            CHECK(r->body.find("group readers may only read") != std::string::npos);
        }
        CHECK(s.server.refusals().read_only == 3);
        CHECK(s.server.refusals().caller == 0);
        CHECK(s.handled == 1);
    }
    {
        // The admin uid: everything.
        Served s;
        ipc::AccessPolicy p;
        p.admin_uid = ::getuid();
        s.server.set_access(p);
        REQUIRE(s.server.listen(dir + "/c.sock").ok());
        s.run();
        auto r = http::request(dir + "/c.sock", "POST", "/v1/pods", "{}", 2000);
        REQUIRE(r.ok());
        CHECK(r->status == 200);
        CHECK(s.server.refusals().caller + s.server.refusals().read_only == 0);
    }
    std::system(("rm -rf '" + dir + "'").c_str());

    ipc::AccessPolicy root;  // the default: root only
    CHECK(ipc::access_for(root, 0, 0, {}) == ipc::Access::full);
    CHECK(ipc::access_for(root, 1000, 0, {0}) == ipc::Access::none);  // root's group is not enough
    root.read_group = 998;
    CHECK(ipc::access_for(root, 1000, 998, {}) == ipc::Access::read);
    CHECK(ipc::access_for(root, 1000, 1000, {4, 998}) == ipc::Access::read);  // a supplementary group
    CHECK(ipc::access_for(root, 1000, 1000, {4, 999}) == ipc::Access::none);
    CHECK(ipc::access_for(root, 0, 1000, {}) == ipc::Access::full);
    CHECK(ipc::Peer{}.access == ipc::Access::full);  // a request made without a socket (tests)

    CHECK(*ipc::resolve_group("0") == 0);
    CHECK(*ipc::resolve_group("4242") == 4242);
    CHECK(*ipc::resolve_group("root") == 0);
    CHECK_FALSE(ipc::resolve_group("no-such-group-signet").ok());
    CHECK_FALSE(ipc::resolve_group("").ok());
}

TEST_CASE("the socket is never at its path with another mode: made in a private directory, renamed into place") {
    std::string dir = temp_dir();
    int in = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    REQUIRE(in >= 0);
    REQUIRE(::inotify_add_watch(in, dir.c_str(), IN_CREATE | IN_MOVED_TO) >= 0);
    mode_t old_umask = ::umask(0);  // what bind() alone would give: 0777
    {
        Served s;
        ipc::AccessPolicy p;
        p.admin_uid = ::getuid();
        s.server.set_access(p);
        REQUIRE(s.server.listen(dir + "/api.sock").ok());
        ::umask(old_umask);
        bool created_in_place = false, moved_in = false;
        alignas(struct inotify_event) char buf[4096];
        ssize_t n = ::read(in, buf, sizeof buf);
        for (char* e = buf; n > 0 && e < buf + n;) {
            auto* ev = reinterpret_cast<struct inotify_event*>(e);
            std::string name = ev->len > 0 ? ev->name : "";
            if (name == "api.sock" && (ev->mask & IN_CREATE)) created_in_place = true;
            if (name == "api.sock" && (ev->mask & IN_MOVED_TO)) moved_in = true;
            e += sizeof(struct inotify_event) + ev->len;
        }
        CHECK_FALSE(created_in_place);  // bind() never made it at its path
        CHECK(moved_in);
        struct stat st {};
        REQUIRE(::lstat((dir + "/api.sock").c_str(), &st) == 0);
        CHECK(S_ISSOCK(st.st_mode));
        CHECK((st.st_mode & 07777) == 0660);
        CHECK(st.st_uid == ::getuid());
        CHECK(dir_entries(dir) == std::vector<std::string>{"api.sock"});  // the private directory is gone
        s.run();
        auto r = http::request(dir + "/api.sock", "GET", "/x", {}, 2000);
        REQUIRE(r.ok());
        CHECK(r->status == 200);
    }
    ::umask(old_umask);
    ::close(in);

    // A stale socket (its server died) is replaced, atomically.
    {
        int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
        struct sockaddr_un sa {};
        sa.sun_family = AF_UNIX;
        std::string stale = dir + "/api.sock";
        std::strncpy(sa.sun_path, stale.c_str(), sizeof sa.sun_path - 1);
        ::unlink(stale.c_str());
        REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
        ::close(fd);  // the file stays, nobody answers
        Served s;
        ipc::AccessPolicy p;
        p.admin_uid = ::getuid();
        s.server.set_access(p);
        REQUIRE(s.server.listen(stale).ok());
        s.run();
        auto r = http::request(stale, "GET", "/x", {}, 2000);
        REQUIRE(r.ok());
        CHECK(r->status == 200);
    }

    // A path whose private directory would not fit in sun_path (108 bytes) still works.
    {
        std::string deep = dir + "/" + std::string(100 - dir.size() - 1, 'd');
        REQUIRE(deep.size() == 100);
        std::string sock = deep + "/s";  // 102 bytes; deep + "/.signetd-XXXXXX/s" would be 118
        Served s;
        ipc::AccessPolicy p;
        p.admin_uid = ::getuid();
        s.server.set_access(p);
        auto st = s.server.listen(sock);
        REQUIRE_MESSAGE(st.ok(), (st.ok() ? "" : st.error().message));
        struct stat sb {};
        REQUIRE(::lstat(sock.c_str(), &sb) == 0);
        CHECK((sb.st_mode & 07777) == 0660);
        CHECK(dir_entries(deep) == std::vector<std::string>{"s"});
        s.run();
        auto r = http::request(sock, "GET", "/x", {}, 2000);
        REQUIRE(r.ok());
        CHECK(r->status == 200);
    }
    std::system(("rm -rf '" + dir + "'").c_str());
}
