// The file side of signet-install-cni: finding the node's CNI network config
// as the container runtime does, copying the plugin binary, and replacing
// config files atomically. The JSON edits themselves are in conflist.h.
#pragma once

#include <string>
#include <vector>

#include "conflist.h"
#include "signet/result.h"

namespace signet::installer {

struct Options {
    std::string conf_dir = "/etc/cni/net.d";
    std::string bin_dir = "/opt/cni/bin";
    std::string plugin;  // the plugin binary to copy; empty: do not copy
    std::string socket = kDefaultSocket;
    std::vector<std::string> supported_versions;  // empty: not checked
    std::string set_cni_version;
    bool dry_run = false;
};

// One config file the runtime looks at, in the runtime's order.
struct Candidate {
    std::string name;  // file name inside conf_dir
    FileKind kind = FileKind::conflist;
    std::string error;  // why the runtime would skip it; empty when valid
};

// The files libcni considers in `dir` (extensions .conf, .conflist, .json;
// not folders), sorted as Go's sort.Strings sorts them, each checked. A
// missing folder yields an empty list, as in libcni.
Result<std::vector<Candidate>> list_configs(const std::string& dir);

struct Report {
    std::vector<std::string> lines;  // what was done (or would be, with dry_run), for the log
    bool changed = false;
    std::string config;  // the config file acted on ("" if none)
    // install: what happened (or would) to that config's text; changed is
    // also true when only the plugin binary was copied.
    Change config_change = Change::none;
};

// install: the plugin binary into bin_dir (temporary file + rename, mode
// 0755; skipped when identical), then signet's entry into the
// highest-priority valid config (the first valid candidate). Everything is
// checked before anything is written: on error nothing has changed.
Result<Report> install(const Options& opts);

// uninstall: removes signet's entry from every config in conf_dir that has
// one, and nothing else (the plugin binary stays: runtimes may still call it
// to delete pods that were created with it).
Result<Report> uninstall(const Options& opts);

// Runs `plugin` with CNI_COMMAND=VERSION and returns its supportedVersions.
Result<std::vector<std::string>> plugin_versions(const std::string& plugin);

}  // namespace signet::installer
