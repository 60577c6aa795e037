// Command-line reading shared by signet's binaries: "--flag value",
// "--flag=value" and positional arguments, one at a time.
#pragma once

#include <optional>
#include <string>

namespace signet {

class Args {
public:
    Args(int argc, char** argv) : argc_(argc), argv_(argv) {}

    // Moves to the next argument; false when none is left.
    bool next() {
        if (++i_ >= argc_) return false;
        arg_ = argv_[i_];
        inline_.reset();
        if (size_t eq = arg_.find('='); arg_.rfind("--", 0) == 0 && eq != std::string::npos) {
            inline_ = arg_.substr(eq + 1);
            arg_.resize(eq);
        }
        return true;
    }

    // The argument, or for "--flag=value" the flag alone.
    const std::string& arg() const { return arg_; }

    // True when the argument was written "--flag=value".
    bool has_value() const { return inline_.has_value(); }

    // The current flag's value: after '=', else the next argument (consumed).
    // False when there is none.
    bool value(std::string* out) {
        if (inline_) {
            *out = *inline_;
            return true;
        }
        if (i_ + 1 >= argc_) return false;
        *out = argv_[++i_];
        return true;
    }

private:
    int argc_;
    char** argv_;
    int i_ = 0;
    std::string arg_;
    std::optional<std::string> inline_;
};

}  // namespace signet
