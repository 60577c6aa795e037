// File-system helpers: atomic replacement of a file, whole-file reads.
#pragma once

#include <string>

#include "signet/result.h"

namespace signet::fs {

// Writes `content` to `path` atomically: a temporary file in the same folder,
// fsync, rename over `path`, fsync of the folder. `mode` applies to the file.
Status write_atomic(const std::string& path, const std::string& content, unsigned mode = 0600);

// Reads a whole file, refusing files larger than `max_bytes`.
Result<std::string> read_file(const std::string& path, size_t max_bytes = 64u << 20);

// Creates a folder and its parents (like mkdir -p) with `mode` for new ones.
Status make_dirs(const std::string& path, unsigned mode = 0700);

}  // namespace signet::fs
