// signet-install-cni: puts the signet CNI plugin on a node (binary and
// conflist entry), or takes its entry out again. Run by the DaemonSet's init
// container; also usable by hand.
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "installer.h"
#include "signet/args.h"
#include "signet/duration.h"

namespace {

using namespace signet;

constexpr const char* kUsage = R"(Usage: signet-install-cni install|uninstall [flags]

install    copies the signet CNI plugin into the CNI binary folder and adds
           {"type": "signet", "socket": SOCKET} as the LAST plugin of the node's
           active CNI network config
uninstall  removes that entry (and nothing else) from every config that has it

The active config is found exactly as the container runtime (libcni:
containerd, CRI-O, podman) finds it: the files in the config folder named
*.conf, *.conflist or *.json (sub-folders excluded), sorted by name byte by
byte; the first one the runtime can load wins. Files the runtime would skip
(not JSON, no plugins, a plugin without "type", ...) are reported and left
alone.

How files change:
  - the edit is textual: every other byte of the file (fields, their order,
    formatting) stays as it was; install then uninstall gives back the
    original file byte for byte;
  - each file is replaced atomically (temporary file in the same folder,
    fsync, rename), keeping its mode and owner;
  - a single-plugin NAME.conf (or NAME.json) becomes NAME.conflist (name and
    cniVersion at the top level, the plugin as plugins[0], signet after it);
    the new file is written before the old one is removed, and sorts next to
    it, so the runtime sees the old config or the new one, never none;
  - install is idempotent: signet already last with the same socket is
    reported as unchanged; with another socket, only its socket changes;
  - everything is checked before anything is written: on any error (no
    config at all, a config where signet is not the last plugin, an
    unsupported cniVersion, ...) nothing is written.

The config's cniVersion must be one the plugin supports (asked with
CNI_COMMAND=VERSION from the --plugin binary), else the runtime would fail
every pod: such a config is refused unless --set-cni-version is given.

Flags:
  --cni-conf-dir DIR      CNI network config folder (default: /etc/cni/net.d)
  --cni-bin-dir DIR       CNI plugin binary folder (default: /opt/cni/bin)
  --plugin PATH           the signet plugin binary to install (default: the
                          `signet` next to this program)
  --socket PATH           signetd's API socket, written into the entry
                          (default: /run/signet/signetd.sock)
  --set-cni-version VER   also set the config's top-level cniVersion to VER
                          (e.g. 0.4.0 for a 0.3.1 flannel or calico config);
                          check that the other plugins support it. Empty: off
  --wait DURATION         install: wait up to DURATION (e.g. 30s, 5m) for the
                          network plugin to write a config (default: 0)
  --dry-run               print what would be done and the new file content;
                          write nothing
  -h, --help              show this help
  --version               print the version

The plugin binary is left in place by uninstall: runtimes may still call it to
delete pods that were created with it (its DEL succeeds even without signetd).

Exit status: 0 on success (also when nothing had to change), 1 on an error
(printed on stderr; nothing was written), 2 on a usage error.
)";

int usage_error(const std::string& msg) {
    std::fprintf(stderr, "signet-install-cni: %s\nRun 'signet-install-cni --help' for usage.\n", msg.c_str());
    return 2;
}

bool parse_seconds(const std::string& text, long* out) {
    auto d = signet::parse_duration(text, std::chrono::seconds(0), std::chrono::hours(24));
    if (!d) return false;
    *out = static_cast<long>(std::chrono::duration_cast<std::chrono::seconds>(*d).count());
    return true;
}

std::string self_dir() {
    char buf[4096];
    ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n <= 0) return ".";
    std::string p(buf, static_cast<size_t>(n));
    size_t slash = p.rfind('/');
    return slash == std::string::npos ? "." : p.substr(0, slash);
}

}  // namespace

int main(int argc, char** argv) {
    installer::Options opts;
    std::string command;
    bool plugin_set = false;
    long wait_s = 0;
    signet::Args args(argc, argv);
    while (args.next()) {
        const std::string arg = args.arg();
        auto need = [&](std::string* out) { return args.value(out); };
        std::string v;
        if (arg == "-h" || arg == "--help") {
            std::fputs(kUsage, stdout);
            return 0;
        } else if (arg == "--version") {
            std::printf("signet-install-cni %s\n", SIGNET_VERSION);
            return 0;
        } else if (arg == "--cni-conf-dir") {
            if (!need(&opts.conf_dir) || opts.conf_dir.empty()) return usage_error("--cni-conf-dir needs a folder");
        } else if (arg == "--cni-bin-dir") {
            if (!need(&opts.bin_dir) || opts.bin_dir.empty()) return usage_error("--cni-bin-dir needs a folder");
        } else if (arg == "--plugin") {
            if (!need(&opts.plugin) || opts.plugin.empty()) return usage_error("--plugin needs a path");
            plugin_set = true;
        } else if (arg == "--socket") {
            if (!need(&opts.socket) || opts.socket.empty() || opts.socket[0] != '/')
                return usage_error("--socket needs an absolute path");
        } else if (arg == "--set-cni-version") {
            if (!need(&opts.set_cni_version)) return usage_error("--set-cni-version needs a version (empty: off)");
        } else if (arg == "--wait") {
            if (!need(&v) || !parse_seconds(v, &wait_s))
                return usage_error("--wait takes a duration such as 30s or 5m");
        } else if (arg == "--dry-run") {
            if (args.has_value()) return usage_error("--dry-run takes no value");
            opts.dry_run = true;
        } else if (arg.rfind("-", 0) == 0) {
            return usage_error("unknown flag '" + arg + "'");
        } else if (command.empty()) {
            command = arg;
        } else {
            return usage_error("unexpected argument '" + arg + "'");
        }
    }
    if (command != "install" && command != "uninstall")
        return usage_error(command.empty() ? "say install or uninstall" : "unknown command '" + command + "'");

    Result<installer::Report> rep = make_error(0, "");
    if (command == "install") {
        if (!plugin_set) opts.plugin = self_dir() + "/" + installer::kPluginType;
        auto versions = installer::plugin_versions(opts.plugin);
        if (!versions) {
            std::fprintf(stderr, "signet-install-cni: %s\n", versions.error().message.c_str());
            return 1;
        }
        opts.supported_versions = *versions;
        auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(wait_s);
        bool told = false;
        for (;;) {
            rep = installer::install(opts);
            if (rep || rep.error().code != ENOENT || std::chrono::steady_clock::now() >= deadline) break;
            if (!told) {
                std::fprintf(stderr, "signet-install-cni: %s; waiting up to %lds\n", rep.error().message.c_str(),
                             wait_s);
                told = true;
            }
            std::this_thread::sleep_for(std::chrono::seconds(1));
        }
    } else {
        rep = installer::uninstall(opts);
    }
    if (!rep) {
        std::fprintf(stderr, "signet-install-cni: %s: %s\n", command.c_str(), rep.error().message.c_str());
        if (!rep.error().details.empty()) std::fprintf(stderr, "%s", rep.error().details.c_str());
        return 1;
    }
    for (const auto& l : rep->lines) std::printf("signet-install-cni: %s\n", l.c_str());
    if (!rep->changed) std::printf("signet-install-cni: %s: nothing to change\n", command.c_str());
    return 0;
}
