// The manifest-folder source: ManifestDir (parsing, per-file last-good
// objects) driven on the event loop by inotify, with a short debounce, and a
// periodic rescan as a safety net when the watch is lost or unavailable.
#pragma once

#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "manifest_dir.h"
#include "source.h"

namespace signet::source {

class DirSource final : public Source {
public:
    // `report` receives warnings (bad files, unreadable folder, duplicates):
    // the caller decides where they go.
    using Report = std::function<void(const std::string&)>;
    explicit DirSource(std::string dir, Report report,
                       std::chrono::milliseconds debounce = std::chrono::milliseconds(50),
                       std::chrono::milliseconds safety_rescan = std::chrono::seconds(10));
    ~DirSource() override;

    Status start(boost::asio::io_context& io, std::function<void()> on_change) override;
    void stop() override;
    void refresh(std::function<void(Status)> done) override;
    const cache::Snapshot& snapshot() const override { return dir_.snapshot(); }
    cache::Delta take_delta() override { return dir_.take_delta(); }
    bool ready() const override { return scanned_once_; }
    std::string origin_version() const override { return std::to_string(generation_); }
    void status(rapidjson::Value& out, rapidjson::Document::AllocatorType& alloc) const override;

private:
    void watch();
    void schedule_rescan();
    void schedule_safety();
    Status rescan();  // runs on_change_ when the objects changed

    ManifestDir dir_;
    std::chrono::milliseconds debounce_;
    std::chrono::milliseconds safety_;
    std::function<void()> on_change_;
    std::unique_ptr<boost::asio::posix::stream_descriptor> inotify_;
    std::unique_ptr<boost::asio::steady_timer> debounce_timer_;
    std::unique_ptr<boost::asio::steady_timer> safety_timer_;
    bool rescan_pending_ = false;
    bool scanned_once_ = false;
    bool stopped_ = false;
    uint64_t generation_ = 0;  // bumps when the object set changes
    std::string last_error_;
    std::set<std::string> reported_errors_;  // "file: message" reported while they hold
    Report report_;
};

}  // namespace signet::source
