// signetctl authority: create a cluster authority, issue node certificates.
#pragma once

#include <string>
#include <vector>

namespace signet::ctl {

// `args` are the arguments after "authority". Returns the exit status:
// 0 ok, 1 failure (printed on stderr), 2 usage error (usage printed).
int authority_command(const std::vector<std::string>& args);

}  // namespace signet::ctl
