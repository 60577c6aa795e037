// signet: a fixed-bucket latency histogram (Prometheus "histogram" shape:
// cumulative buckets, sum, count) plus the last observation. Not thread-safe:
// each owner observes from one thread.
#pragma once

#include <array>
#include <cstdint>
#include <cstddef>

namespace signet {

class Histogram {
public:
    // Upper bounds in seconds: 100 µs .. 10 s.
    static constexpr std::array<double, 14> kBounds{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                                    0.025,  0.05,    0.1,    0.25,  0.5,    1.0,   10.0};

    void observe(double seconds) {
        ++count_;
        sum_ += seconds;
        last_ = seconds;
        for (size_t i = 0; i < kBounds.size(); ++i)
            if (seconds <= kBounds[i]) ++buckets_[i];
    }
    uint64_t count() const { return count_; }
    double sum() const { return sum_; }
    double last() const { return last_; }
    // Observations <= kBounds[i] (cumulative, as Prometheus wants them).
    uint64_t bucket(size_t i) const { return buckets_[i]; }
    // An upper estimate of the q-quantile (0..1): the bound of the bucket it falls in.
    double quantile_bound(double q) const {
        if (count_ == 0) return 0;
        auto want = static_cast<uint64_t>(q * static_cast<double>(count_) + 0.999999);
        for (size_t i = 0; i < kBounds.size(); ++i)
            if (buckets_[i] >= want) return kBounds[i];
        return kBounds.back();
    }

private:
    std::array<uint64_t, kBounds.size()> buckets_{};
    uint64_t count_ = 0;
    double sum_ = 0, last_ = 0;
};

}  // namespace signet
