#include "coverage/cluster_writer.h"

#include <boost/asio/post.hpp>
#include <cerrno>
#include <cstdio>
#include <ctime>

#include "signet/json.h"

namespace signet::coverage {

using rapidjson::Value;
using Clock = std::chrono::steady_clock;

std::string rfc3339_seconds(int64_t unix_seconds) {
    time_t secs = static_cast<time_t>(unix_seconds);
    tm t{};
    gmtime_r(&secs, &t);
    char buf[64];
    std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02dZ", t.tm_year + 1900, t.tm_mon + 1, t.tm_mday,
                  t.tm_hour, t.tm_min, t.tm_sec);
    return buf;
}

std::string unprotected_event_name(const std::string& pod, const std::string& uid) {
    std::string tag;
    for (char c : uid) {
        if (tag.size() == 8) break;
        if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))
            tag += c;
        else if (c >= 'A' && c <= 'Z')
            tag += static_cast<char>(c - 'A' + 'a');
    }
    std::string suffix = ".signet-unprotected" + (tag.empty() ? std::string() : "-" + tag);
    std::string base = pod.substr(0, 253 - suffix.size());
    while (!base.empty() && (base.back() == '.' || base.back() == '-')) base.pop_back();
    if (base.empty()) base = "pod";
    return base + suffix;
}

std::string unprotected_event(const UnprotectedPod& pod, const std::string& node, int64_t now_unix) {
    rapidjson::Document d(rapidjson::kObjectType);
    auto& a = d.GetAllocator();
    d.AddMember("apiVersion", "v1", a);
    d.AddMember("kind", "Event", a);
    Value md(rapidjson::kObjectType);
    md.AddMember("name", json::str(unprotected_event_name(pod.name, pod.uid), a), a);
    md.AddMember("namespace", json::str(pod.namespace_, a), a);
    d.AddMember("metadata", md, a);
    Value obj(rapidjson::kObjectType);
    obj.AddMember("apiVersion", "v1", a);
    obj.AddMember("kind", "Pod", a);
    obj.AddMember("namespace", json::str(pod.namespace_, a), a);
    obj.AddMember("name", json::str(pod.name, a), a);
    if (!pod.uid.empty()) obj.AddMember("uid", json::str(pod.uid, a), a);
    d.AddMember("involvedObject", obj, a);
    d.AddMember("reason", rapidjson::StringRef(kUnprotectedReason), a);
    std::string msg = "signet enforces no NetworkPolicy for this pod: it is Running on node " + node +
                      " but never came through the CNI chain (started before signet, or while signet's entry was "
                      "missing from the CNI config), so its network namespace has no signet table (unregistered "
                      "since " +
                      rfc3339_seconds(pod.since_ms / 1000) +
                      "). Delete the pod (its controller recreates it through the chain) to bring it under "
                      "enforcement; see signet's docs/troubleshooting.md, \"Unprotected pods\".";
    d.AddMember("message", json::str(msg, a), a);
    d.AddMember("type", "Warning", a);
    Value source(rapidjson::kObjectType);
    source.AddMember("component", "signetd", a);
    source.AddMember("host", json::str(node, a), a);
    d.AddMember("source", source, a);
    std::string now = rfc3339_seconds(now_unix);
    d.AddMember("firstTimestamp", json::str(now, a), a);
    d.AddMember("lastTimestamp", json::str(now, a), a);
    d.AddMember("count", 1, a);
    d.AddMember("reportingComponent", "signet.dev/signetd", a);
    d.AddMember("reportingInstance", json::str(node, a), a);
    return json::to_string(d);
}

Result<std::optional<std::string>> taint_removal_patch(const rapidjson::Value& node, const std::string& key) {
    if (!node.IsObject()) return make_error(EBADMSG, "the Node is not a JSON object");
    const Value* spec = json::find(node, "spec");
    if (spec != nullptr && !spec->IsObject() && !spec->IsNull()) return make_error(EBADMSG, "spec: not an object");
    const Value* taints = spec != nullptr && spec->IsObject() ? json::find(*spec, "taints") : nullptr;
    if (taints == nullptr || taints->IsNull()) return std::optional<std::string>();
    if (!taints->IsArray()) return make_error(EBADMSG, "spec.taints: not a list");
    rapidjson::Document d(rapidjson::kArrayType);
    auto& a = d.GetAllocator();
    Value old(*taints, a), kept(rapidjson::kArrayType);
    bool found = false;
    for (const auto& t : taints->GetArray()) {
        auto k = t.IsObject() ? json::opt_string(t, "key") : std::nullopt;
        if (k && *k == key) {
            found = true;
            continue;
        }
        kept.PushBack(Value(t, a), a);
    }
    if (!found) return std::optional<std::string>();
    Value test(rapidjson::kObjectType), replace(rapidjson::kObjectType);
    test.AddMember("op", "test", a);
    test.AddMember("path", "/spec/taints", a);
    test.AddMember("value", old, a);
    replace.AddMember("op", "replace", a);
    replace.AddMember("path", "/spec/taints", a);
    replace.AddMember("value", kept, a);
    d.PushBack(test, a);
    d.PushBack(replace, a);
    return std::optional<std::string>(json::to_string(d));
}

// ---------------------------------------------------------------------------

ClusterWriter::ClusterWriter(boost::asio::io_context& io, std::unique_ptr<kube::Api> api, Report report)
    : io_(io), api_(std::move(api)), report_(std::move(report)) {}

ClusterWriter::~ClusterWriter() {
    stop();
}

void ClusterWriter::start() {
    std::lock_guard lk(mu_);
    if (started_ || stopping_) return;
    started_ = true;
    thread_ = std::thread([this] { run(); });
}

void ClusterWriter::stop() {
    {
        std::lock_guard lk(mu_);
        if (stopping_) return;
        stopping_ = true;
        jobs_.clear();
    }
    cv_.notify_all();
    api_->stop();
    if (thread_.joinable()) thread_.join();
    alive_.reset();  // callbacks already posted to the io_context do nothing
}

uint64_t ClusterWriter::attempts() const {
    std::lock_guard lk(mu_);
    return attempts_;
}

void ClusterWriter::enqueue(Job job) {
    {
        std::lock_guard lk(mu_);
        if (stopping_) return;
        // Ordered by time; equal times keep their order.
        auto it = jobs_.begin();
        while (it != jobs_.end() && it->not_before <= job.not_before) ++it;
        jobs_.insert(it, std::move(job));
    }
    cv_.notify_all();
}

void ClusterWriter::post(std::function<void()> fn) {
    std::weak_ptr<int> alive = alive_;
    boost::asio::post(io_, [alive, fn = std::move(fn)] {
        if (!alive.expired()) fn();
    });
}

void ClusterWriter::run() {
    std::unique_lock lk(mu_);
    while (!stopping_) {
        if (jobs_.empty()) {
            cv_.wait(lk);
            continue;
        }
        if (jobs_.front().not_before > Clock::now()) {
            cv_.wait_until(lk, jobs_.front().not_before);
            continue;
        }
        Job job = std::move(jobs_.front());
        jobs_.pop_front();
        lk.unlock();
        job.run();
        lk.lock();
    }
}

void ClusterWriter::post_event(const std::string& ns, std::string event_json, std::function<void(Status)> done) {
    enqueue(Job{Clock::now(), [this, ns, body = std::move(event_json), done = std::move(done)]() mutable {
                    kube::Request req;
                    req.method = "POST";
                    req.path = "/api/v1/namespaces/" + ns + "/events";
                    req.body = std::move(body);
                    req.timeout = std::chrono::seconds(15);
                    req.max_body = 1u << 20;
                    auto resp = api_->call(req);
                    Status st;
                    if (!resp) {
                        if (resp.error().code == ECANCELED) return;
                        st = make_error(EIO, resp.error().message);
                    } else if (resp->status == 409 || (resp->status >= 200 && resp->status < 300)) {
                        st = {};
                    } else if (resp->status == 403) {
                        st = make_error(EACCES, resp->describe());
                    } else if (resp->status >= 400 && resp->status < 500 && resp->status != 429) {
                        st = make_error(EINVAL, resp->describe());
                    } else {
                        st = make_error(EIO, resp->describe());
                    }
                    post([done = std::move(done), st] { done(st); });
                }});
}

Result<bool> ClusterWriter::try_remove_taint(const std::string& node, const std::string& key) {
    const std::string path = "/api/v1/nodes/" + node;
    for (int round = 0; round < 5; ++round) {
        {
            std::lock_guard lk(mu_);
            ++attempts_;
        }
        kube::Request get;
        get.path = path;
        get.timeout = std::chrono::seconds(15);
        auto got = api_->call(get);
        if (!got) return make_error(got.error().code, "GET node " + node + ": " + got.error().message);
        if (got->status != 200) return make_error(EIO, "GET node " + node + ": " + got->describe());
        auto doc = json::parse(got->body);
        if (!doc) return make_error(EBADMSG, "GET node " + node + ": " + doc.error().message);
        auto patch = taint_removal_patch(*doc, key);
        if (!patch) return make_error(EBADMSG, "node " + node + ": " + patch.error().message);
        if (!*patch) return false;
        kube::Request req;
        req.method = "PATCH";
        req.path = path;
        req.content_type = "application/json-patch+json";
        req.body = **patch;
        req.timeout = std::chrono::seconds(15);
        auto resp = api_->call(req);
        if (!resp) return make_error(resp.error().code, "PATCH node " + node + ": " + resp.error().message);
        if (resp->status >= 200 && resp->status < 300) return true;
        // The taints changed since they were read (the patch's test failed) or a conflict: read again.
        if (resp->status == 409 || resp->status == 422) continue;
        return make_error(EIO, "PATCH node " + node + ": " + resp->describe());
    }
    return make_error(EAGAIN, "node " + node + ": its taints changed under every one of 5 attempts in a row");
}

void ClusterWriter::remove_taint(const std::string& node, const std::string& key, std::function<void(bool)> done) {
    // One attempt per job; a failed one queues the next after the back-off.
    auto attempt = std::make_shared<std::function<void(std::chrono::milliseconds)>>();
    std::weak_ptr<std::function<void(std::chrono::milliseconds)>> weak = attempt;
    *attempt = [this, node, key, done = std::move(done), weak](std::chrono::milliseconds backoff) {
        auto self = weak.lock();
        if (!self) return;
        enqueue(Job{Clock::now() + backoff, [this, node, key, done, backoff, self] {
                        auto r = try_remove_taint(node, key);
                        if (r) {
                            bool removed = *r;
                            post([done, removed] { done(removed); });
                            return;
                        }
                        if (r.error().code == ECANCELED) return;
                        auto next = backoff.count() == 0 ? std::chrono::milliseconds(1000)
                                                         : std::min(backoff * 2, std::chrono::milliseconds(30000));
                        report_("startup taint " + key + ": " + r.error().message + "; trying again in " +
                                std::to_string(next.count() / 1000) + " s");
                        (*self)(next);
                    }});
    };
    (*attempt)(std::chrono::milliseconds(0));
}

}  // namespace signet::coverage
