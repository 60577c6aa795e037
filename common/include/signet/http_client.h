// A small HTTP/1.1 client over a unix stream socket with one deadline for the
// whole exchange. The CNI plugin runs for every pod, so this avoids pulling a
// general-purpose HTTP library (and its TLS stack) into its start-up time.
#pragma once

#include <string>
#include <string_view>

#include "signet/result.h"

namespace signet::http {

enum ClientError : int {
    kUnreachable = 1,  // socket missing, connection refused: nobody is serving
    kTimeout = 2,      // deadline passed during the exchange
    kProtocol = 3,     // the peer answered something that is not HTTP/1.1 we understand
    kIo = 4,           // other socket errors
};

struct Response {
    int status = 0;
    std::string content_type;
    std::string body;
};

inline constexpr size_t kMaxResponseBytes = 32u << 20;

Result<Response> request(const std::string& socket_path, std::string_view method, std::string_view target,
                         std::string_view body, int timeout_ms);

// Percent-encodes a URL path segment or query value (RFC 3986: everything
// but unreserved characters is escaped).
std::string percent_encode(std::string_view s);

// Parses a complete response (status line, headers, body by Content-Length,
// chunked, or up to end of input). Exposed for tests and fuzzing.
Result<Response> parse_response(std::string_view raw);

}  // namespace signet::http
