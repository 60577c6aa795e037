// signet-install-cni: puts the signet CNI plugin on a node (binary and
// conflist entry), or takes its entry out again. Run by the DaemonSet's init
// container, and with --watch by its long-running install-cni-watch
// container, which chains signet again whenever the config changes; also
// usable by hand.
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "installer.h"
#include "signet/args.h"
#include "signet/duration.h"
#include "watch.h"

namespace {

using namespace signet;

constexpr const char* kUsage = R"(Usage: signet-install-cni install|uninstall [flags]

install    copies the signet CNI plugin into the CNI binary folder and adds
           {"type": "signet", "socket": SOCKET} as the LAST plugin of the node's
           active CNI network config
uninstall  removes that entry (and nothing else) from every config that has it

install --watch  does the same, then keeps running: whenever the active config
           changes (a network plugin that rewrites its conflist when it
           restarts drops signet's entry: flannel, Calico, k3s, aws-node; or
           another plugin drops in a file that sorts first), signet is chained
           into the active config again

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
  --watch                 install, then keep running until SIGTERM/SIGINT
                          (see below)
  --debounce DURATION     --watch: how long the folder must be quiet after a
                          change before signet is chained again (default:
                          500ms; at most 3s after the first change)
  --uninstall-on-exit     --watch: remove signet's entry (as uninstall) when
                          stopped by SIGTERM/SIGINT. Off by default: a restart
                          or upgrade of the installer would otherwise leave a
                          window in which new pods start without signet
  -h, --help              show this help
  --version               print the version

Watch mode (install --watch): the config folder is watched with inotify
(files written, created, renamed in or out, deleted; the folder itself
removed or replaced), and looked at again every 60s anyway (a config that is
a symlink to a file elsewhere changes without an event in the folder). After
a change, once the folder has been quiet for the --debounce time, the same
install as above runs: the active config is found again (so a new file that
sorts first gets signet too), and a config that already has signet is not
written, which is also why the installer's own writes do not start a loop.
Each change is logged with the file and the events behind it. A config
signet cannot be chained into (not valid, signet not last, an unsupported
cniVersion, no config yet) is reported once and the watch goes on. A missing
config folder is waited for (k3s creates it late), with a log line. SIGTERM
or SIGINT ends it with status 0; signet's entry stays unless
--uninstall-on-exit is given.

The plugin binary is left in place by uninstall: runtimes may still call it to
delete pods that were created with it (its DEL succeeds even without signetd).

Exit status: 0 on success (also when nothing had to change; --watch: when
stopped by a signal), 1 on an error (printed on stderr; nothing was written;
--watch: the watch cannot be set up, or --uninstall-on-exit failed), 2 on a
usage error.
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
    bool watch = false, wait_set = false, watch_flag = false;
    installer::WatchOptions wopts;
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
            wait_set = true;
        } else if (arg == "--watch") {
            if (args.has_value()) return usage_error("--watch takes no value");
            watch = true;
        } else if (arg == "--debounce") {
            const char* bad = "--debounce takes a duration such as 500ms or 1s (at most 60s)";
            if (!need(&v)) return usage_error(bad);
            auto d = signet::parse_duration(v, std::chrono::milliseconds(0), std::chrono::seconds(60));
            if (!d) return usage_error(bad);
            wopts.debounce = *d;
            wopts.max_delay = std::max(wopts.max_delay, *d);
            watch_flag = true;
        } else if (arg == "--uninstall-on-exit") {
            if (args.has_value()) return usage_error("--uninstall-on-exit takes no value");
            wopts.uninstall_on_exit = true;
            watch_flag = true;
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
    if (watch && command != "install") return usage_error("--watch goes with install");
    if (watch_flag && !watch) return usage_error("--debounce and --uninstall-on-exit go with --watch");
    if (watch && opts.dry_run) return usage_error("--watch writes: it cannot be combined with --dry-run");
    if (watch && wait_set)
        return usage_error("--wait is for a one-shot install; --watch waits for a config (and its folder) anyway");

    Result<installer::Report> rep = make_error(0, "");
    if (command == "install") {
        if (!plugin_set) opts.plugin = self_dir() + "/" + installer::kPluginType;
        auto versions = installer::plugin_versions(opts.plugin);
        if (!versions) {
            std::fprintf(stderr, "signet-install-cni: %s\n", versions.error().message.c_str());
            return 1;
        }
        opts.supported_versions = *versions;
        if (watch) {
            std::setvbuf(stdout, nullptr, _IOLBF, 0);
            return installer::watch(opts, wopts, stdout, stderr);
        }
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
