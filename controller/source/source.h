// Where the controller's objects come from: a manifest folder or the
// Kubernetes API. A source owns its snapshot of Namespaces, Pods, Services
// and NetworkPolicies and tells the controller, on the controller's event
// loop, when it changed.
#pragma once

#include <rapidjson/document.h>

#include <boost/asio/io_context.hpp>
#include <functional>
#include <string>

#include "../cache/objects.h"
#include "signet/result.h"

namespace signet::source {

class Source {
public:
    virtual ~Source() = default;

    // Starts reading. `on_change` runs on `io`'s thread each time snapshot()
    // changed. An error here means the source cannot work at all (bad
    // configuration); transient trouble is reported through status().
    virtual Status start(boost::asio::io_context& io, std::function<void()> on_change) = 0;
    virtual void stop() = 0;

    // Reads afresh now (what `signetctl sync` asks for) and calls `done` on
    // the loop thread once snapshot() reflects everything read; on_change is
    // called before `done` when something changed.
    virtual void refresh(std::function<void(Status)> done) = 0;

    virtual const cache::Snapshot& snapshot() const = 0;
    // The keys changed since the last call (and forgets them). A source that
    // cannot tell says `all`: the consumer then compares everything.
    virtual cache::Delta take_delta() {
        cache::Delta d;
        d.all = true;
        return d;
    }
    // True once a complete first snapshot has been read.
    virtual bool ready() const = 0;
    // The source's own version of the snapshot (the folder's generation, the
    // API's resourceVersion), reported in the status.
    virtual std::string origin_version() const = 0;
    // Kind-specific state for `signetctl status`: fills an object with at
    // least "kind" and "lastError".
    virtual void status(rapidjson::Value& out, rapidjson::Document::AllocatorType& alloc) const = 0;
};

}  // namespace signet::source
