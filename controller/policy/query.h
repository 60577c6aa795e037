// The question the datapath (the handshake engine) and the flow service ask
// of the policy in force: what does it say about a connection, and which
// rule decides? Answered by the Enforcer (core/enforcer.h) from its compiler;
// lent to the others, so they need nothing of core/.
#pragma once

#include <cstdint>

#include "compiler.h"
#include "signet/result.h"

namespace signet::policy {

class Query {
public:
    virtual ~Query() = default;
    virtual Result<Explanation> explain(const Endpoint& from, const Endpoint& to, uint8_t proto,
                                        uint16_t port) const = 0;
};

}  // namespace signet::policy
