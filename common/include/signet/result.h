// signet: one error type for every stage boundary. No exceptions cross a
// stage; functions return Result<T> (a value or an Error).
#pragma once

#include <string>
#include <utility>
#include <variant>

namespace signet {

struct Error {
    int code = 0;          // stage-specific code (CNI codes in the plugin, HTTP status in the API, ...)
    std::string message;   // human readable, already includes context
    std::string details;   // optional extra detail (file name, position, ...)
};

inline Error make_error(int code, std::string message, std::string details = {}) {
    return Error{code, std::move(message), std::move(details)};
}

template <typename T>
class [[nodiscard]] Result {
public:
    Result(T value) : v_(std::move(value)) {}        // NOLINT(google-explicit-constructor)
    Result(Error error) : v_(std::move(error)) {}    // NOLINT(google-explicit-constructor)

    bool ok() const { return v_.index() == 0; }
    explicit operator bool() const { return ok(); }

    T& value() & { return std::get<0>(v_); }
    const T& value() const& { return std::get<0>(v_); }
    T&& value() && { return std::get<0>(std::move(v_)); }
    T* operator->() { return &std::get<0>(v_); }
    const T* operator->() const { return &std::get<0>(v_); }
    T& operator*() & { return value(); }
    const T& operator*() const& { return value(); }

    const Error& error() const { return std::get<1>(v_); }

private:
    std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
public:
    Result() = default;
    Result(Error error) : err_(std::move(error)), ok_(false) {}  // NOLINT(google-explicit-constructor)
    bool ok() const { return ok_; }
    explicit operator bool() const { return ok_; }
    const Error& error() const { return err_; }

private:
    Error err_;
    bool ok_ = true;
};

using Status = Result<void>;

}  // namespace signet
