// Unit tests: the streaming watch-event reader and API object decoding
// (controller/kube/watch_stream.h) and the source's decoders (controller/source/kubernetes/resources.h).
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "../../controller/kube/watch_stream.h"
#include "../../controller/source/kubernetes/resources.h"
#include "signet/json.h"

using namespace signet;
using namespace signet::kube;
using namespace signet::source::k8s;

namespace {

const std::string kStream =
    R"({"type":"ADDED","object":{"kind":"Pod","apiVersion":"v1","metadata":{"name":"a","namespace":"x","resourceVersion":"11","labels":{"k":"v"},"annotations":{"k":"v}{\"["}},"spec":{"containers":[{"name":"c","image":"i"}]}}})"
    "\n"
    R"({"type":"BOOKMARK","object":{"kind":"Pod","apiVersion":"v1","metadata":{"resourceVersion":"12","creationTimestamp":null},"spec":{"containers":null},"status":{}}})"
    "\n"
    R"({"type":"DELETED","object":{"kind":"Pod","apiVersion":"v1","metadata":{"name":"a","namespace":"x","resourceVersion":"13"}}})"
    "\n";

std::vector<std::string> split_all(const std::string& data, size_t chunk) {
    JsonStreamSplitter s;
    std::vector<std::string> out;
    for (size_t i = 0; i < data.size(); i += chunk) {
        auto st = s.feed(std::string_view(data).substr(i, chunk), [&](std::string_view v) -> Status {
            out.emplace_back(v);
            return {};
        });
        REQUIRE(st.ok());
    }
    CHECK(s.idle());
    return out;
}

}  // namespace

TEST_CASE("splitter: events cut out of any chunking, braces in strings ignored") {
    auto whole = split_all(kStream, kStream.size());
    REQUIRE(whole.size() == 3);
    for (size_t chunk : {1, 2, 3, 7, 64, 1000}) CHECK(split_all(kStream, chunk) == whole);
    auto ev = parse_watch_event(whole[0]);
    REQUIRE(ev.ok());
    CHECK(ev->type == WatchEvent::Added);
    auto item = decode_item(Resource::Pods, *ev->object);
    REQUIRE_MESSAGE(item.ok(), (item ? "" : item.error().message));
    CHECK(std::get<cache::Pod>(*item).labels.at("k") == "v");
    CHECK(parse_watch_event(whole[1])->type == WatchEvent::Bookmark);
    auto del = parse_watch_event(whole[2]);
    CHECK(del->type == WatchEvent::Deleted);
    CHECK(object_ref(*del->object)->resource_version == "13");
}

TEST_CASE("splitter: errors") {
    JsonStreamSplitter s(100);
    auto noop = [](std::string_view) -> Status { return {}; };
    CHECK_FALSE(s.feed("garbage", noop).ok());
    s.reset();
    CHECK_FALSE(s.feed("{\"a\":\"" + std::string(200, 'x') + "\"}", noop).ok());
    s.reset();
    // over the limit across chunks, never buffered beyond it
    CHECK(s.feed("{\"a\":\"" + std::string(60, 'x'), noop).ok());
    CHECK_FALSE(s.feed(std::string(60, 'x'), noop).ok());
    s.reset();
    CHECK(s.feed("{\"a\":1", noop).ok());
    CHECK_FALSE(s.idle());  // a stream ending here ended inside an event
    // an error from the callback stops the feed
    s.reset();
    int n = 0;
    auto st = s.feed("{}{}{}", [&](std::string_view) -> Status {
        return ++n == 2 ? Status(make_error(1, "stop")) : Status();
    });
    CHECK_FALSE(st.ok());
    CHECK(n == 2);
}

TEST_CASE("watch events: malformed ones are errors, not crashes") {
    CHECK_FALSE(parse_watch_event("{").ok());
    CHECK_FALSE(parse_watch_event("[]").ok());
    CHECK_FALSE(parse_watch_event(R"({"type":"ADDED"})").ok());
    CHECK_FALSE(parse_watch_event(R"({"type":"WHATEVER","object":{}})").ok());
    CHECK_FALSE(parse_watch_event(R"({"type":"ADDED","object":"x"})").ok());
    auto err = parse_watch_event(
        R"J({"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 1 (5)","reason":"Expired","code":410}})J");
    REQUIRE(err.ok());
    CHECK(err->type == WatchEvent::Error);
    auto st = parse_api_status(json::to_string(*err->object), 0);
    CHECK(st.code == 410);
    CHECK(st.reason == "Expired");
}

TEST_CASE("API Status bodies") {
    auto st = parse_api_status(
        R"({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"pods is forbidden: User \"u\" cannot list resource \"pods\" in API group \"\" at the cluster scope","reason":"Forbidden","details":{"kind":"pods"},"code":403})",
        403);
    CHECK(st.code == 403);
    CHECK(st.reason == "Forbidden");
    CHECK(st.message.find("cannot list resource") != std::string::npos);
    auto raw = parse_api_status("upstream connect error\n", 503);
    CHECK(raw.code == 503);
    CHECK(raw.message == "upstream connect error");
}

TEST_CASE("nodes: name and InternalIP addresses") {
    auto doc = json::parse(R"({"metadata":{"name":"n1"},"status":{"addresses":[
        {"type":"InternalIP","address":"172.18.0.2"},{"type":"Hostname","address":"n1"},
        {"type":"InternalIP","address":"fc00::2"},{"type":"ExternalIP","address":"1.2.3.4"}]}})");
    REQUIRE(doc.ok());
    auto n = decode_node(*doc);
    REQUIRE(n.ok());
    CHECK(n->name == "n1");
    CHECK(n->internal_ips == std::vector<std::string>{"172.18.0.2", "fc00::2"});
    auto bad = json::parse(R"({"metadata":{"name":"n1"},"status":{"addresses":[{"type":"InternalIP","address":"nope"}]}})");
    CHECK_FALSE(decode_node(*bad).ok());
    auto wrong_kind = json::parse(R"({"kind":"Pod","metadata":{"name":"n1"}})");
    CHECK_FALSE(decode_item(Resource::Nodes, *wrong_kind).ok());
}

TEST_CASE("watch events: an object nested without bound is refused, not parsed") {
    std::string deep = R"({"type":"ADDED","object":)" + std::string(100000, '[') + std::string(100000, ']') + "}";
    auto ev = parse_watch_event(deep);
    REQUIRE_FALSE(ev.ok());
    CHECK(ev.error().message.find("nested deeper than") != std::string::npos);
}
