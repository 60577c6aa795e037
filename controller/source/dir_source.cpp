#include "dir_source.h"

#include <unistd.h>

#include <set>

#include "signet/json.h"

namespace signet::source {

namespace asio = boost::asio;

DirSource::DirSource(std::string dir, Report report, std::chrono::milliseconds debounce,
                     std::chrono::milliseconds safety_rescan)
    : dir_(std::move(dir)), debounce_(debounce), safety_(safety_rescan), report_(std::move(report)) {}

DirSource::~DirSource() { stop(); }

Status DirSource::start(asio::io_context& io, std::function<void()> on_change) {
    on_change_ = std::move(on_change);
    debounce_timer_ = std::make_unique<asio::steady_timer>(io);
    safety_timer_ = std::make_unique<asio::steady_timer>(io);
    if (auto st = dir_.start_watch(); !st) {
        report_("cannot watch " + dir_.dir() + ": " + st.error().message +
                       " (changes are picked up by `signetctl sync` and a rescan every " +
                       std::to_string(safety_.count() / 1000) + " s)");
    } else {
        int fd = ::dup(dir_.watch_fd());
        if (fd >= 0) {
            inotify_ = std::make_unique<asio::posix::stream_descriptor>(io, fd);
            watch();
        }
    }
    (void)rescan();  // an unreadable folder is reported, and retried
    schedule_safety();
    return {};
}

void DirSource::stop() {
    if (stopped_) return;
    stopped_ = true;
    boost::system::error_code ignored;
    if (inotify_) inotify_->close(ignored);
    if (debounce_timer_) debounce_timer_->cancel();
    if (safety_timer_) safety_timer_->cancel();
}

void DirSource::refresh(std::function<void(Status)> done) { done(rescan()); }

void DirSource::watch() {
    inotify_->async_wait(asio::posix::stream_descriptor::wait_read, [this](boost::system::error_code ec) {
        if (ec || stopped_) return;
        dir_.drain_events();
        schedule_rescan();
        watch();
    });
}

void DirSource::schedule_rescan() {
    if (rescan_pending_) return;
    rescan_pending_ = true;
    // Editors and kubectl-style writers produce bursts of events: settle first.
    debounce_timer_->expires_after(debounce_);
    debounce_timer_->async_wait([this](boost::system::error_code ec) {
        rescan_pending_ = false;
        if (ec || stopped_) return;
        (void)rescan();
    });
}

void DirSource::schedule_safety() {
    safety_timer_->expires_after(safety_);
    safety_timer_->async_wait([this](boost::system::error_code ec) {
        if (ec || stopped_) return;
        // A lost watch (folder deleted and recreated) or none at all: rescan anyway.
        if (!inotify_ || dir_.watch_lost() || !last_error_.empty()) (void)rescan();
        schedule_safety();
    });
}

Status DirSource::rescan() {
    auto changed = dir_.rescan();
    for (const auto& w : dir_.take_warnings()) report_(w);
    if (!changed) {
        if (last_error_ != changed.error().message)
            report_("cannot read " + dir_.dir() + ": " + changed.error().message + " (keeping the last objects read)");
        last_error_ = changed.error().message;
        return changed.error();
    }
    if (!last_error_.empty()) report_("source readable again: " + dir_.dir());
    last_error_.clear();
    bool first = !scanned_once_;
    scanned_once_ = true;
    // A file that broke keeps its last good objects (no change), but is reported once.
    std::set<std::string> errors;
    for (const auto& e : dir_.errors()) {
        std::string line = e.file + ": " + e.message;
        if (reported_errors_.count(line) == 0) report_(line + " (keeping its last good objects)");
        errors.insert(std::move(line));
    }
    reported_errors_ = std::move(errors);
    if (*changed || first) {
        ++generation_;
        if (on_change_) on_change_();
    }
    return {};
}

void DirSource::status(rapidjson::Value& out, rapidjson::Document::AllocatorType& a) const {
    out.SetObject();
    out.AddMember("kind", "dir", a);
    out.AddMember("path", json::str(dir_.dir(), a), a);
    out.AddMember("generation", rapidjson::Value(static_cast<uint64_t>(generation_)), a);
    out.AddMember("watching", inotify_ != nullptr && !dir_.watch_lost(), a);
    out.AddMember("lastError", json::str(last_error_, a), a);
    rapidjson::Value errs(rapidjson::kArrayType);
    for (const auto& e : dir_.errors()) {
        rapidjson::Value o(rapidjson::kObjectType);
        o.AddMember("file", json::str(e.file, a), a);
        o.AddMember("message", json::str(e.message, a), a);
        errs.PushBack(o, a);
    }
    out.AddMember("fileErrors", errs, a);
}

}  // namespace signet::source
