// The controller's API server: HTTP/1.1 over a unix stream socket, on the
// controller's Boost.Asio event loop. Handlers run on the loop thread and
// answer through a Responder, which they may keep and call later (e.g. a
// sync that waits until a version is applied).
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "signet/result.h"

namespace signet::ipc {

// What a caller may do (docs/api.md, "Who may call"): everything, only read
// (GET and HEAD), or nothing.
enum class Access { none, read, full };
const char* to_string(Access a);

// The caller: its credentials when it connected (SO_PEERCRED, in signetd's
// user namespace) and what the access policy grants it. A Request made
// without a socket (tests) has full access.
struct Peer {
    pid_t pid = 0;
    uid_t uid = 0;
    gid_t gid = 0;
    Access access = Access::full;
};

struct AccessPolicy {
    // Full access: this uid only (root; a test may name its own uid).
    uid_t admin_uid = 0;
    // --api-group: members (primary or supplementary group of the caller)
    // may read: GET and HEAD. The socket file is given this group.
    std::optional<gid_t> read_group;
    std::string read_group_name;  // for messages
};
// What `policy` grants a caller with these credentials; `groups` are its
// supplementary groups.
Access access_for(const AccessPolicy& policy, uid_t uid, gid_t gid, const std::vector<gid_t>& groups);
// A group given as a name (from the group database) or a number.
Result<gid_t> resolve_group(const std::string& name_or_gid);

struct Request {
    std::string method;
    std::string path;                 // decoded path, without the query
    std::string query;                // raw query string (after '?')
    std::vector<std::string> segments;  // decoded path segments
    std::string body;
    Peer peer;
};

struct Response {
    int status = 200;
    std::string body;
    std::string content_type = "application/json";
};

Response json_error(int status, const std::string& message);

using Responder = std::function<void(Response)>;
using Handler = std::function<void(const Request&, Responder)>;

// Parses "a=1&b=x" style query strings; returns the value of `key` or "".
std::string query_param(const std::string& query, const std::string& key);
// Decodes %XX escapes; returns false on a malformed escape.
bool url_decode(const std::string& in, std::string* out);

class Server {
public:
    Server(boost::asio::io_context& io, Handler handler);
    ~Server();
    // Who may call; before listen().
    void set_access(AccessPolicy policy);
    // Binds the socket (replacing a stale socket file, refusing if another
    // server answers on it) and starts accepting. The socket is made in a
    // private 0700 directory beside `path`, given mode 0660 and the read
    // group, and renamed into place: no caller can connect to it before it
    // has its mode.
    Status listen(const std::string& path);
    void stop();
    size_t open_connections() const;

    // Requests refused by the access policy: callers with no access at all,
    // and read-only callers asking to change something.
    struct Refusals {
        uint64_t caller = 0;
        uint64_t read_only = 0;
    };
    Refusals refusals() const;

    struct Impl;  // defined in server.cpp

private:
    std::shared_ptr<Impl> impl_;
};

}  // namespace signet::ipc
