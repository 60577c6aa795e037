#include "installer.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>

#include "signet/fsutil.h"
#include "signet/json.h"

namespace signet::installer {
namespace {

std::string errno_text(const std::string& what, const std::string& path) {
    return what + " " + path + ": " + std::strerror(errno);
}

// Go's filepath.Ext: from the last '.' of the name (a hidden file ".conf"
// has the extension ".conf").
std::string extension(const std::string& name) {
    size_t dot = name.rfind('.');
    return dot == std::string::npos ? std::string() : name.substr(dot);
}

std::string join_path(const std::string& dir, const std::string& name) {
    if (!dir.empty() && dir.back() == '/') return dir + name;
    return dir + "/" + name;
}

std::string folder_of(const std::string& path) {
    size_t slash = path.rfind('/');
    if (slash == std::string::npos) return ".";
    return slash == 0 ? "/" : path.substr(0, slash);
}

void sync_folder(const std::string& dir) {
    int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        ::fsync(dfd);
        ::close(dfd);
    }
}

// Writes `content` to `path` through a temporary file in the same folder
// (named so that no runtime takes it for a config: hidden, extension
// ".tmp<pid>"), with the given mode and owner, fsync, rename, fsync of the
// folder. The runtime sees the old file or the new one, never a part.
Status replace_file(const std::string& path, const std::string& content, mode_t mode, uid_t uid, gid_t gid) {
    std::string dir = folder_of(path);
    std::string base = path.substr(path.rfind('/') + 1);
    std::string tmp = join_path(dir, "." + base + ".signet.tmp" + std::to_string(::getpid()));
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) return make_error(errno, errno_text("cannot create", tmp));
    auto fail = [&](const std::string& what) -> Status {
        int e = errno;
        ::close(fd);
        ::unlink(tmp.c_str());
        return make_error(e, what + " " + tmp + ": " + std::strerror(e));
    };
    size_t off = 0;
    while (off < content.size()) {
        ssize_t n = ::write(fd, content.data() + off, content.size() - off);
        if (n < 0) {
            if (errno == EINTR) continue;
            return fail("cannot write");
        }
        off += static_cast<size_t>(n);
    }
    // The original owner, when it is not us (needs CAP_CHOWN). Owner first:
    // fchown clears set-id bits, fchmod then sets the mode.
    if ((uid != ::geteuid() || gid != ::getegid()) && ::fchown(fd, uid, gid) != 0) return fail("cannot chown");
    if (::fchmod(fd, mode) != 0) return fail("cannot chmod");
    if (::fsync(fd) != 0) return fail("cannot sync");
    ::close(fd);
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
        int e = errno;
        ::unlink(tmp.c_str());
        return make_error(e, "cannot rename " + tmp + " onto " + path + ": " + std::strerror(e));
    }
    sync_folder(dir);
    return {};
}

// A config file to change: where to write (a symlink's target, so the link
// stays) and the mode and owner to keep.
struct Target {
    std::string path;  // as listed in conf_dir
    std::string write_path;
    std::string text;
    mode_t mode = 0644;
    uid_t uid = 0;
    gid_t gid = 0;
};

Result<Target> open_target(const std::string& path) {
    Target t;
    t.path = path;
    t.write_path = path;
    struct stat lst {};
    if (::lstat(path.c_str(), &lst) != 0) return make_error(errno, errno_text("cannot stat", path));
    if (S_ISLNK(lst.st_mode)) {
        char buf[PATH_MAX];
        if (::realpath(path.c_str(), buf) == nullptr)
            return make_error(errno, errno_text("cannot resolve symlink", path));
        t.write_path = buf;
    }
    struct stat st {};
    if (::stat(t.write_path.c_str(), &st) != 0) return make_error(errno, errno_text("cannot stat", t.write_path));
    t.mode = st.st_mode & 07777;
    t.uid = st.st_uid;
    t.gid = st.st_gid;
    auto text = fs::read_file(t.write_path, 4u << 20);
    if (!text) return text.error();
    t.text = std::move(*text);
    return t;
}

std::string first_line(const std::string& text) {
    std::string s = text.substr(0, text.find('\n'));
    return s;
}

}  // namespace

Result<std::vector<Candidate>> list_configs(const std::string& dir) {
    std::vector<Candidate> out;
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) {
        if (errno == ENOENT) return out;  // libcni: a missing folder holds no configs
        return make_error(errno, errno_text("cannot read the CNI config folder", dir));
    }
    while (dirent* e = ::readdir(d)) {
        std::string name = e->d_name;
        if (name == "." || name == "..") continue;
        std::string ext = extension(name);
        if (ext != ".conf" && ext != ".conflist" && ext != ".json") continue;
        struct stat st {};
        // libcni's ReadDir uses lstat: a folder is skipped, a symlink is not.
        if (::lstat(join_path(dir, name).c_str(), &st) == 0 && S_ISDIR(st.st_mode)) continue;
        Candidate c;
        c.name = name;
        c.kind = ext == ".conflist" ? FileKind::conflist : FileKind::single;
        out.push_back(std::move(c));
    }
    ::closedir(d);
    std::sort(out.begin(), out.end(), [](const Candidate& a, const Candidate& b) { return a.name < b.name; });
    for (auto& c : out) {
        auto text = fs::read_file(join_path(dir, c.name), 4u << 20);
        if (!text) {
            c.error = text.error().message;
            continue;
        }
        if (auto info = inspect(*text, c.kind); !info) c.error = info.error().message;
    }
    return out;
}

Result<std::vector<std::string>> plugin_versions(const std::string& plugin) {
    if (::access(plugin.c_str(), X_OK) != 0)
        return make_error(errno, errno_text("cannot run the signet plugin", plugin));
    int out[2];
    if (::pipe2(out, O_CLOEXEC) != 0) return make_error(errno, "pipe: " + std::string(std::strerror(errno)));
    pid_t pid = ::fork();
    if (pid < 0) {
        ::close(out[0]);
        ::close(out[1]);
        return make_error(errno, "fork: " + std::string(std::strerror(errno)));
    }
    if (pid == 0) {
        int devnull = ::open("/dev/null", O_RDWR);
        ::dup2(devnull, STDIN_FILENO);
        ::dup2(out[1], STDOUT_FILENO);
        const char* argv[] = {plugin.c_str(), nullptr};
        const char* envp[] = {"CNI_COMMAND=VERSION", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", nullptr};
        ::execve(plugin.c_str(), const_cast<char* const*>(argv), const_cast<char* const*>(envp));
        ::_exit(127);
    }
    ::close(out[1]);
    std::string text;
    char buf[4096];
    for (;;) {
        ssize_t n = ::read(out[0], buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        if (text.size() < (1u << 20)) text.append(buf, static_cast<size_t>(n));
    }
    ::close(out[0]);
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return make_error(0, plugin + " VERSION failed (status " + std::to_string(status) + "): " + first_line(text));
    auto doc = json::parse(text);
    if (!doc || !doc->IsObject()) return make_error(0, plugin + " VERSION: not a version answer: " + first_line(text));
    const auto* list = json::find(*doc, "supportedVersions");
    if (list == nullptr || !list->IsArray() || list->Empty())
        return make_error(0, plugin + " VERSION: no supportedVersions in its answer");
    std::vector<std::string> versions;
    for (const auto& v : list->GetArray())
        if (v.IsString()) versions.emplace_back(v.GetString(), v.GetStringLength());
    return versions;
}

Result<Report> install(const Options& opts) {
    Report rep;
    const char* would = opts.dry_run ? "would " : "";

    // 1. The config: everything is decided before anything is written.
    auto list = list_configs(opts.conf_dir);
    if (!list) return list.error();
    const Candidate* chosen = nullptr;
    for (const auto& c : *list) {
        if (c.error.empty()) {
            chosen = &c;
            break;
        }
        rep.lines.push_back("skipping " + join_path(opts.conf_dir, c.name) + " as the runtime would: " + c.error);
    }
    if (chosen == nullptr) {
        std::string why = list->empty() ? "no CNI network config (*.conf, *.conflist, *.json) in " + opts.conf_dir
                                        : "no valid CNI network config in " + opts.conf_dir;
        Error e = make_error(ENOENT, why + ": is the cluster's network plugin installed on this node yet?");
        for (const auto& l : rep.lines) e.details += l + "\n";
        return e;
    }
    std::string path = join_path(opts.conf_dir, chosen->name);
    rep.config = path;
    auto target = open_target(path);
    if (!target) return target.error();
    InsertOptions io;
    io.socket = opts.socket;
    io.supported_versions = opts.supported_versions;
    io.set_cni_version = opts.set_cni_version;
    auto edit = insert_signet(target->text, chosen->kind, io);
    if (!edit) return make_error(EINVAL, path + ": " + edit.error().message);

    // A converted .conf becomes NAME.conflist (same base name: it sorts where
    // the old file did); no other config may sort between the two.
    std::string new_path = target->write_path;
    if (edit->change == Change::converted) {
        std::string base = chosen->name.substr(0, chosen->name.rfind('.'));
        std::string new_name = base + ".conflist";
        new_path = join_path(opts.conf_dir, new_name);
        for (const auto& c : *list) {
            if (c.name == new_name)
                return make_error(EEXIST, path + ": cannot convert it to " + new_path + ": that file exists already");
            bool between = (c.name > chosen->name && c.name < new_name) || (c.name < chosen->name && c.name > new_name);
            if (between && c.error.empty())
                return make_error(EEXIST, path + ": cannot convert it to " + new_path + ": " + c.name +
                                              " sorts between the two names and would become the active config");
        }
        if (target->write_path != path)
            return make_error(EINVAL, path + ": is a symlink to a single-plugin config; convert it by hand");
    }

    // 2. The plugin binary, before the config that names it.
    std::string bin_target = join_path(opts.bin_dir, kPluginType);
    bool copy = false;
    std::string binary;
    if (!opts.plugin.empty()) {
        auto src = fs::read_file(opts.plugin, 256u << 20);
        if (!src) return make_error(src.error().code, "cannot read the signet plugin: " + src.error().message);
        binary = std::move(*src);
        auto cur = fs::read_file(bin_target, 256u << 20);
        struct stat st {};
        bool same = cur && *cur == binary && ::stat(bin_target.c_str(), &st) == 0 && (st.st_mode & 0777) == 0755;
        copy = !same;
        struct stat dst {};
        if (copy && (::stat(opts.bin_dir.c_str(), &dst) != 0 || !S_ISDIR(dst.st_mode)))
            return make_error(ENOENT, "the CNI binary folder " + opts.bin_dir + " does not exist");
        rep.lines.push_back(copy ? std::string(would) + "copy " + opts.plugin + " to " + bin_target + " (mode 0755)"
                                 : bin_target + " is already this plugin binary");
    }

    if (edit->change == Change::none)
        rep.lines.push_back(path + ": unchanged: " + edit->note);
    else if (edit->change == Change::converted)
        rep.lines.push_back(std::string(would) + "replace " + path + " with " + new_path + ": " + edit->note);
    else
        rep.lines.push_back(std::string(would) + "update " + path + ": " + edit->note);
    rep.changed = copy || edit->change != Change::none;
    rep.config_change = edit->change;
    if (opts.dry_run) {
        if (edit->change != Change::none) rep.lines.push_back("new content of " + new_path + ":\n" + edit->text);
        return rep;
    }

    // 3. Write.
    if (copy) {
        if (auto st = replace_file(bin_target, binary, 0755, ::geteuid(), ::getegid()); !st) return st.error();
    }
    if (edit->change == Change::none) return rep;
    if (auto st = replace_file(new_path, edit->text, target->mode, target->uid, target->gid); !st) return st.error();
    if (edit->change == Change::converted) {
        // The new conflist sorts right next to the old file, so until this
        // unlink the runtime still takes the old one; after it, the new one.
        if (::unlink(path.c_str()) != 0)
            return make_error(errno, errno_text("wrote " + new_path + " but cannot remove", path));
        sync_folder(opts.conf_dir);
    }
    return rep;
}

Result<Report> uninstall(const Options& opts) {
    Report rep;
    const char* would = opts.dry_run ? "would " : "";
    auto list = list_configs(opts.conf_dir);
    if (!list) return list.error();
    struct Change1 {
        Target target;
        Edit edit;
    };
    std::vector<Change1> changes;
    for (const auto& c : *list) {
        if (!c.error.empty()) continue;  // the runtime does not use it: not ours to touch
        std::string path = join_path(opts.conf_dir, c.name);
        auto target = open_target(path);
        if (!target) return target.error();
        auto info = inspect(target->text, c.kind);
        if (!info || info->signet_count == 0) continue;
        auto edit = remove_signet(target->text, c.kind);
        if (!edit) return make_error(EINVAL, path + ": " + edit.error().message);
        rep.lines.push_back(std::string(would) + "update " + path + ": " + edit->note);
        if (rep.config.empty()) rep.config = path;
        changes.push_back(Change1{std::move(*target), std::move(*edit)});
    }
    if (changes.empty()) {
        rep.lines.push_back("signet is in no CNI network config in " + opts.conf_dir + ": nothing to do");
        return rep;
    }
    rep.changed = true;
    if (opts.dry_run) return rep;
    for (const auto& ch : changes)
        if (auto st = replace_file(ch.target.write_path, ch.edit.text, ch.target.mode, ch.target.uid, ch.target.gid);
            !st)
            return st.error();
    return rep;
}

}  // namespace signet::installer
