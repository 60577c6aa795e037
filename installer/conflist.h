// The pure part of signet-install-cni: deciding whether a CNI network config
// file is one the container runtime would load (exactly as libcni does), and
// editing its text to add or remove signet's entry.
//
// Edits are textual: the file is parsed to find the byte ranges of the values
// involved, and only those bytes change. Every other byte (fields, their
// order, numbers as written, escapes, indentation) stays as it was, so an
// install followed by an uninstall gives back the original file byte for byte.
// No file I/O here: installer.cpp does that.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "signet/result.h"

namespace signet::installer {

inline constexpr const char* kPluginType = "signet";
inline constexpr const char* kDefaultSocket = "/run/signet/signetd.sock";

// How libcni reads a file, decided by its extension: ".conflist" is a network
// config list; ".conf" and ".json" hold a single plugin's network config.
enum class FileKind { conflist, single };

// What the file's JSON means to the runtime.
struct ConfigInfo {
    std::string name;         // the network name
    std::string cni_version;  // "" when absent (plugins then treat it as 0.1.0)
    std::vector<std::string> plugin_types;
    // Index of the (last) signet entry in plugin_types, or -1, and how many
    // there are. inspect() reports them; insert and remove refuse anything
    // but at most one signet, as the last plugin.
    int signet_index = -1;
    int signet_count = 0;
    std::string signet_socket;  // its "socket", or the default when absent
};

// Checks `text` as libcni's ConfListFromBytes (conflist) or ConfFromBytes
// (single) would, with Go's encoding/json rules (a duplicate key: the last
// wins; struct fields match case-insensitively), and reports what it holds.
// An error means the runtime would not load this file.
Result<ConfigInfo> inspect(std::string_view text, FileKind kind);

enum class Change {
    none,       // already as wanted: nothing to write
    inserted,   // signet's entry appended to plugins
    updated,    // the entry was there; its socket (or the cniVersion) changed
    converted,  // a single-plugin .conf became a conflist ending with signet
    removed,    // signet's entry removed
};
const char* change_name(Change c);

struct InsertOptions {
    std::string socket = kDefaultSocket;
    // The cniVersions the signet plugin supports (its VERSION answer). When
    // not empty, a config whose cniVersion is not listed is refused: the
    // runtime would call signet with that version and every pod ADD would
    // fail. Empty: not checked.
    std::vector<std::string> supported_versions;
    // When not empty: set the config's top-level cniVersion to this (it must
    // be in supported_versions when that is not empty). The other plugins of
    // the chain must support it too: that is the operator's call.
    std::string set_cni_version;
};

struct Edit {
    std::string text;  // the new file content (== input when change is none)
    Change change = Change::none;
    std::string note;  // one line for the operator: what changed and why
};

// Adds {"type": "signet", "socket": ...} as the last plugin. `kind` single
// converts the config to a conflist (name and cniVersion at the top level,
// the plugin object, minus those two, as plugins[0]). Refuses a config that is
// not valid for the runtime, a conflist where signet is not the last plugin
// or appears twice, and an unsupported cniVersion.
Result<Edit> insert_signet(std::string_view text, FileKind kind, const InsertOptions& opts);

// Removes signet's entry (the last plugin) and nothing else. No entry: change
// none. Refuses what insert_signet refuses (signet in the middle, twice, an
// invalid config) and a config where signet is the only plugin (removing it
// would leave a list the runtime refuses).
Result<Edit> remove_signet(std::string_view text, FileKind kind);

// ---------------------------------------------------------------------------
// Exposed for tests: locating values in JSON text.

struct Span {
    size_t begin = 0;  // offset of the first byte
    size_t end = 0;    // one past the last byte
};

// The byte ranges of a JSON value and, for objects and arrays, of their
// direct children (object members: key string and value). Input must be
// valid JSON (checked by RapidJSON first); nesting deeper than kMaxDepth is
// refused.
struct Node {
    enum Kind { object, array, scalar } kind = scalar;
    Span value;
    std::vector<Span> keys;      // objects: each member's key, with its quotes
    std::vector<Node> children;  // objects: member values; arrays: elements
};
inline constexpr int kMaxDepth = 512;
Result<Node> locate(std::string_view text);

// JSON string literal for `s` (quotes and escapes), as RapidJSON writes it.
std::string quote(std::string_view s);

}  // namespace signet::installer
