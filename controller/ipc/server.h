// The controller's API server: HTTP/1.1 over a unix stream socket, on the
// controller's Boost.Asio event loop. Handlers run on the loop thread and
// answer through a Responder, which they may keep and call later (e.g. a
// sync that waits until a version is applied).
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "signet/result.h"

namespace signet::ipc {

struct Request {
    std::string method;
    std::string path;                 // decoded path, without the query
    std::string query;                // raw query string (after '?')
    std::vector<std::string> segments;  // decoded path segments
    std::string body;
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
    // Binds the socket (replacing a stale socket file, refusing if another
    // server answers on it), mode 0660, and starts accepting.
    Status listen(const std::string& path);
    void stop();
    size_t open_connections() const;

    struct Impl;  // defined in server.cpp

private:
    std::shared_ptr<Impl> impl_;
};

}  // namespace signet::ipc
