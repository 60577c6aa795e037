// signet-install-cni: the pure conflist edits on the configs real network
// plugins write, and the file side (runtime order, atomic replacement,
// conversion, nothing written on error) in temporary folders.
#include <dirent.h>
#include <doctest/doctest.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "conflist.h"
#include "installer.h"
#include "signet/fsutil.h"
#include "signet/json.h"
#include "watch.h"

using namespace signet;
using namespace signet::installer;

namespace {

const std::string kData = std::string(SIGNET_TEST_DATA) + "/conflists";
const std::vector<std::string> kSupported = {"0.3.1", "0.4.0", "1.0.0", "1.1.0"};

std::string fixture(const std::string& name) {
    auto t = fs::read_file(kData + "/" + name);
    REQUIRE_MESSAGE(t.ok(), name);
    return *t;
}

InsertOptions opts_all() {
    InsertOptions o;
    o.supported_versions = kSupported;
    return o;
}

// A temporary folder, removed with everything in it.
struct TempDir {
    std::string path;
    TempDir() {
        char tmpl[] = "/tmp/signet-installer-test.XXXXXX";
        REQUIRE(::mkdtemp(tmpl) != nullptr);
        path = tmpl;
    }
    ~TempDir() { (void)std::system(("rm -rf '" + path + "'").c_str()); }
    std::string sub(const std::string& name) const {
        std::string p = path + "/" + name;
        ::mkdir(p.c_str(), 0755);
        return p;
    }
};

void put(const std::string& path, const std::string& text, unsigned mode = 0644) {
    REQUIRE(fs::write_atomic(path, text, mode).ok());
}

struct FileState {
    std::string content;
    unsigned mode = 0;
    bool operator==(const FileState&) const = default;
};

// Every entry of a folder (hidden ones too) with content and mode.
std::map<std::string, FileState> snapshot(const std::string& dir) {
    std::map<std::string, FileState> out;
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) return out;
    while (dirent* e = ::readdir(d)) {
        std::string n = e->d_name;
        if (n == "." || n == "..") continue;
        struct stat st {};
        ::lstat((dir + "/" + n).c_str(), &st);
        FileState fsr;
        fsr.mode = st.st_mode;
        if (S_ISREG(st.st_mode)) fsr.content = fs::read_file(dir + "/" + n).value();
        out[n] = fsr;
    }
    ::closedir(d);
    return out;
}

const rapidjson::Value& member(const rapidjson::Value& v, const char* k) {
    const auto* f = json::find(v, k);
    REQUIRE(f != nullptr);
    return *f;
}

std::vector<std::string> member_names(const rapidjson::Value& v) {
    std::vector<std::string> out;
    for (auto it = v.MemberBegin(); it != v.MemberEnd(); ++it) out.emplace_back(it->name.GetString());
    return out;
}

// The edited conflist: the same top-level members in the same order, the
// same plugins before signet, signet last with the socket.
void check_inserted(const std::string& before, const std::string& after, const std::string& socket) {
    auto a = json::parse(before);
    auto b = json::parse(after);
    REQUIRE(a.ok());
    REQUIRE(b.ok());
    CHECK(member_names(*a) == member_names(*b));
    for (auto it = a->MemberBegin(); it != a->MemberEnd(); ++it) {
        if (std::string(it->name.GetString()) == "plugins") continue;
        CHECK(it->value == member(*b, it->name.GetString()));
    }
    const auto& pa = member(*a, "plugins");
    const auto& pb = member(*b, "plugins");
    REQUIRE(pb.Size() == pa.Size() + 1);
    for (rapidjson::SizeType i = 0; i < pa.Size(); ++i) CHECK(pa[i] == pb[i]);
    const auto& last = pb[pb.Size() - 1];
    CHECK(member_names(last) == std::vector<std::string>{"type", "socket"});
    CHECK(std::string(member(last, "type").GetString()) == "signet");
    CHECK(std::string(member(last, "socket").GetString()) == socket);
}

}  // namespace

TEST_CASE("installer: the span locator finds values as written") {
    std::string t = R"( {"a": [1, {"b": "x\"]"}], "c" : 1.50e3 } )";
    auto n = locate(t);
    REQUIRE(n.ok());
    CHECK(n->kind == Node::object);
    REQUIRE(n->keys.size() == 2);
    CHECK(t.substr(n->keys[1].begin, n->keys[1].end - n->keys[1].begin) == "\"c\"");
    CHECK(t.substr(n->children[1].value.begin, n->children[1].value.end - n->children[1].value.begin) == "1.50e3");
    const Node& arr = n->children[0];
    REQUIRE(arr.children.size() == 2);
    CHECK(t.substr(arr.children[1].value.begin, arr.children[1].value.end - arr.children[1].value.begin) ==
          R"({"b": "x\"]"})");
    std::string deep(kMaxDepth + 5, '[');
    deep += std::string(kMaxDepth + 5, ']');
    CHECK_FALSE(locate(deep).ok());
    CHECK(quote("a\"b\\c\n") == R"("a\"b\\c\n")");
}

TEST_CASE("installer: real plugins' conflists get signet last, everything else kept") {
    for (const char* name : {"10-containerd-net.conflist", "10-flannel.conflist", "10-calico.conflist",
                             "05-cilium.conflist", "10-aws.conflist"}) {
        CAPTURE(name);
        std::string before = fixture(name);
        auto e = insert_signet(before, FileKind::conflist, opts_all());
        REQUIRE_MESSAGE(e.ok(), (e.ok() ? std::string() : e.error().message));
        CHECK(e->change == Change::inserted);
        check_inserted(before, e->text, kDefaultSocket);
        // Only bytes were added, all in one place.
        size_t common = 0;
        while (common < before.size() && before[common] == e->text[common]) ++common;
        CHECK(e->text.substr(common + (e->text.size() - before.size())) == before.substr(common));

        // Idempotent.
        auto again = insert_signet(e->text, FileKind::conflist, opts_all());
        REQUIRE(again.ok());
        CHECK(again->change == Change::none);
        CHECK(again->text == e->text);
        CHECK(again->note.find("already") != std::string::npos);

        // Uninstall gives back the original byte for byte.
        auto back = remove_signet(e->text, FileKind::conflist);
        REQUIRE(back.ok());
        CHECK(back->change == Change::removed);
        CHECK(back->text == before);
        auto none = remove_signet(before, FileKind::conflist);
        REQUIRE(none.ok());
        CHECK(none->change == Change::none);
        CHECK(none->text == before);
    }
}

TEST_CASE("installer: containerd's default conflist, exact output") {
    auto e = insert_signet(fixture("10-containerd-net.conflist"), FileKind::conflist, opts_all());
    REQUIRE(e.ok());
    CHECK(e->text == fixture("10-containerd-net.conflist.expected"));
}

TEST_CASE("installer: compact and tab-indented layouts are followed") {
    auto compact = insert_signet(R"({"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"}]})",
                                 FileKind::conflist, opts_all());
    REQUIRE(compact.ok());
    CHECK(
        compact->text ==
        R"({"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"},{"type":"signet","socket":"/run/signet/signetd.sock"}]})");
    auto spaced = insert_signet(R"({"cniVersion": "1.0.0", "name": "n", "plugins": [ {"type": "ptp"} ]})",
                                FileKind::conflist, opts_all());
    REQUIRE(spaced.ok());
    CHECK(
        spaced->text ==
        R"({"cniVersion": "1.0.0", "name": "n", "plugins": [ {"type": "ptp"}, {"type": "signet", "socket": "/run/signet/signetd.sock"} ]})");
    std::string tabs =
        "{\n\t\"cniVersion\": \"1.0.0\",\n\t\"name\": \"n\",\n\t\"plugins\": [\n\t\t{\n\t\t\t\"type\": "
        "\"ptp\"\n\t\t}\n\t]\n}\n";
    auto t = insert_signet(tabs, FileKind::conflist, opts_all());
    REQUIRE(t.ok());
    CHECK(t->text ==
          "{\n\t\"cniVersion\": \"1.0.0\",\n\t\"name\": \"n\",\n\t\"plugins\": [\n\t\t{\n\t\t\t\"type\": "
          "\"ptp\"\n\t\t},\n"
          "\t\t{\n\t\t\t\"type\": \"signet\",\n\t\t\t\"socket\": \"/run/signet/signetd.sock\"\n\t\t}\n\t]\n}\n");
    auto back = remove_signet(t->text, FileKind::conflist);
    REQUIRE(back.ok());
    CHECK(back->text == tabs);
}

TEST_CASE("installer: a present entry with another socket gets only its socket changed") {
    std::string with =
        R"({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "ptp"}, {"type": "signet", "timeoutSeconds": 5, "socket": "/old.sock"}]})";
    InsertOptions o = opts_all();
    o.socket = "/run/other/s.sock";
    auto e = insert_signet(with, FileKind::conflist, o);
    REQUIRE(e.ok());
    CHECK(e->change == Change::updated);
    CHECK(
        e->text ==
        R"({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "ptp"}, {"type": "signet", "timeoutSeconds": 5, "socket": "/run/other/s.sock"}]})");
    // No socket field: the default applies; another socket is added after "type".
    std::string nosock = R"({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "ptp"}, {"type": "signet"}]})";
    auto same = insert_signet(nosock, FileKind::conflist, opts_all());
    REQUIRE(same.ok());
    CHECK(same->change == Change::none);
    auto other = insert_signet(nosock, FileKind::conflist, o);
    REQUIRE(other.ok());
    CHECK(
        other->text ==
        R"({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "ptp"}, {"type": "signet", "socket": "/run/other/s.sock"}]})");
}

TEST_CASE("installer: a single-plugin .conf becomes a conflist") {
    std::string conf = fixture("87-podman-bridge.conf");
    auto e = insert_signet(conf, FileKind::single, opts_all());
    REQUIRE_MESSAGE(e.ok(), (e.ok() ? std::string() : e.error().message));
    CHECK(e->change == Change::converted);
    CHECK(e->text == R"({
  "cniVersion": "0.4.0",
  "name": "podman",
  "plugins": [
    {
        "type": "bridge",
        "bridge": "cni-podman0",
        "isGateway": true,
        "ipMasq": true,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "routes": [{ "dst": "0.0.0.0/0" }],
            "ranges": [
                [
                    {
                        "subnet": "10.88.0.0/16",
                        "gateway": "10.88.0.1"
                    }
                ]
            ]
        }
    },
    {
      "type": "signet",
      "socket": "/run/signet/signetd.sock"
    }
  ]
}
)");
    auto info = inspect(e->text, FileKind::conflist);
    REQUIRE(info.ok());
    CHECK(info->name == "podman");
    CHECK(info->cni_version == "0.4.0");
    CHECK(info->plugin_types == std::vector<std::string>{"bridge", "signet"});
    // The plugin keeps every other field, in order.
    auto a = json::parse(conf);
    auto b = json::parse(e->text);
    const auto& p0 = member(*b, "plugins")[0];
    std::vector<std::string> want;
    for (auto& n : member_names(*a))
        if (n != "name" && n != "cniVersion") want.push_back(n);
    CHECK(member_names(p0) == want);
    CHECK(member(p0, "ipam") == member(*a, "ipam"));
    // Compact single-line .conf, name last.
    auto c =
        insert_signet(R"({"type":"ptp","ipMasq":true,"name":"x","cniVersion":"1.0.0"})", FileKind::single, opts_all());
    REQUIRE(c.ok());
    CHECK(c->text ==
          "{\n  \"cniVersion\": \"1.0.0\",\n  \"name\": \"x\",\n  \"plugins\": [\n    "
          "{\"type\":\"ptp\",\"ipMasq\":true},\n"
          "    {\n      \"type\": \"signet\",\n      \"socket\": \"/run/signet/signetd.sock\"\n    }\n  ]\n}\n");
}

TEST_CASE("installer: refused inputs") {
    auto err = [](const std::string& text, FileKind k = FileKind::conflist) {
        auto e = insert_signet(text, k, opts_all());
        REQUIRE_FALSE(e.ok());
        return e.error().message;
    };
    CHECK(err(fixture("bad-unparseable.conflist")).find("not valid JSON") != std::string::npos);
    CHECK(err(fixture("bad-plugins-object.conflist")).find("not an array") != std::string::npos);
    CHECK(err(fixture("bad-signet-middle.conflist")).find("not the last plugin") != std::string::npos);
    CHECK(err(fixture("bad-no-type.conf"), FileKind::single).find("missing 'type'") != std::string::npos);
    CHECK(err(R"({"cniVersion":"1.0.0","name":"n","plugins":[]})").find("no plugins") != std::string::npos);
    CHECK(err(R"({"cniVersion":"1.0.0","plugins":[{"type":"a"}]})").find("no name") != std::string::npos);
    CHECK(err(R"({"cniVersion":1,"name":"n","plugins":[{"type":"a"}]})").find("cniVersion") != std::string::npos);
    CHECK(err(R"({"name":"n","plugins":[{"type":"a"},{"type":"signet"},{"type":"signet"}]})").find("2 times") !=
          std::string::npos);
    CHECK(err(R"({"cniVersion":"1.0.0","name":"n","plugins":[{"type":"a","dns":{"nameservers":"x"}}]})")
              .find("dns.nameservers") != std::string::npos);
    CHECK(err(R"({"cniVersion":"1.0.0","name":"n","plugins":[{"ipam":{}}]})").find("missing 'type'") !=
          std::string::npos);
    CHECK(err(R"([1,2])").find("cannot unmarshal array") != std::string::npos);
    CHECK(err(R"({"type":"signet","cniVersion":"1.0.0"})", FileKind::single).find("only plugin") != std::string::npos);
    CHECK_FALSE(remove_signet(fixture("bad-signet-middle.conflist"), FileKind::conflist).ok());
    CHECK_FALSE(remove_signet(R"({"name":"n","plugins":[{"type":"signet"}]})", FileKind::conflist).ok());
}

TEST_CASE("installer: Go's reading of the file decides what is there") {
    // The last duplicate key wins; plugin fields match case-insensitively.
    auto info = inspect(R"({"name":"a","name":"b","plugins":{},"plugins":[{"Type":"bridge"}]})", FileKind::conflist);
    REQUIRE(info.ok());
    CHECK(info->name == "b");
    CHECK(info->plugin_types == std::vector<std::string>{"bridge"});
    auto e = insert_signet(R"({"name":"a","plugins":{},"cniVersion":"1.0.0","plugins":[{"Type":"bridge"}]})",
                           FileKind::conflist, opts_all());
    REQUIRE(e.ok());
    CHECK(
        e->text ==
        R"({"name":"a","plugins":{},"cniVersion":"1.0.0","plugins":[{"Type":"bridge"},{"type":"signet","socket":"/run/signet/signetd.sock"}]})");
}

TEST_CASE("installer: cniVersion the plugin does not support") {
    InsertOptions o;
    o.supported_versions = {"0.4.0", "1.0.0", "1.1.0"};
    std::string flannel = fixture("10-flannel.conflist");
    auto e = insert_signet(flannel, FileKind::conflist, o);
    REQUIRE_FALSE(e.ok());
    CHECK(e.error().message.find("\"0.3.1\"") != std::string::npos);
    CHECK(e.error().message.find("--set-cni-version") != std::string::npos);
    o.set_cni_version = "0.4.0";
    auto ok = insert_signet(flannel, FileKind::conflist, o);
    REQUIRE(ok.ok());
    CHECK(ok->change == Change::inserted);
    auto info = inspect(ok->text, FileKind::conflist);
    REQUIRE(info.ok());
    CHECK(info->cni_version == "0.4.0");
    auto again = insert_signet(ok->text, FileKind::conflist, o);
    REQUIRE(again.ok());
    CHECK(again->change == Change::none);
    o.set_cni_version = "0.3.1";
    CHECK_FALSE(insert_signet(flannel, FileKind::conflist, o).ok());
    // No cniVersion at all: plugins read 0.1.0; adding one puts it first.
    InsertOptions o2;
    o2.supported_versions = {"1.0.0"};
    CHECK_FALSE(insert_signet(R"({"name":"n","plugins":[{"type":"a"}]})", FileKind::conflist, o2).ok());
    o2.set_cni_version = "1.0.0";
    auto added = insert_signet("{\n  \"name\": \"n\",\n  \"plugins\": [{\"type\": \"a\"}]\n}", FileKind::conflist, o2);
    REQUIRE(added.ok());
    CHECK(added->text ==
          "{\n  \"cniVersion\": \"1.0.0\",\n  \"name\": \"n\",\n  \"plugins\": [{\"type\": \"a\"}, "
          "{\"type\": \"signet\", \"socket\": \"/run/signet/signetd.sock\"}]\n}");
}

// ---------------------------------------------------------------------------
// Files

namespace {

Options file_opts(const TempDir& t) {
    Options o;
    o.conf_dir = t.path + "/net.d";
    o.bin_dir = t.path + "/bin";
    o.plugin = t.path + "/signet-plugin";
    o.supported_versions = kSupported;
    put(o.plugin, "#!/bin/sh\necho fake plugin\n", 0700);
    return o;
}

}  // namespace

TEST_CASE("installer files: runtime order, plugin copy, atomic replacement, uninstall") {
    TempDir t;
    Options o = file_opts(t);
    t.sub("net.d");
    t.sub("bin");
    put(o.conf_dir + "/10-flannel.conflist", fixture("10-flannel.conflist"), 0600);
    put(o.conf_dir + "/99-loopback.conf", R"({"cniVersion":"1.0.0","name":"lo","type":"loopback"})");
    put(o.conf_dir + "/00-notes.txt", "not a config");
    put(o.conf_dir + "/05-broken.conflist", "{");
    t.sub("net.d/01-folder.conf");

    auto list = list_configs(o.conf_dir);
    REQUIRE(list.ok());
    REQUIRE(list->size() == 3);
    CHECK((*list)[0].name == "05-broken.conflist");
    CHECK_FALSE((*list)[0].error.empty());
    CHECK((*list)[1].name == "10-flannel.conflist");
    CHECK((*list)[1].error.empty());
    CHECK((*list)[2].kind == FileKind::single);

    auto before = snapshot(o.conf_dir);
    auto rep = install(o);
    REQUIRE_MESSAGE(rep.ok(), (rep.ok() ? std::string() : rep.error().message));
    CHECK(rep->changed);
    CHECK(rep->config == o.conf_dir + "/10-flannel.conflist");
    auto after = snapshot(o.conf_dir);
    CHECK(after.size() == before.size());  // no temporary file left
    CHECK(after["99-loopback.conf"] == before["99-loopback.conf"]);
    CHECK(after["05-broken.conflist"] == before["05-broken.conflist"]);
    CHECK((after["10-flannel.conflist"].mode & 07777) == 0600);  // mode kept
    check_inserted(fixture("10-flannel.conflist"), after["10-flannel.conflist"].content, kDefaultSocket);
    auto bin = snapshot(o.bin_dir);
    REQUIRE(bin.size() == 1);
    CHECK((bin["signet"].mode & 07777) == 0755);
    CHECK(bin["signet"].content == "#!/bin/sh\necho fake plugin\n");

    // Again: nothing changes.
    auto rep2 = install(o);
    REQUIRE(rep2.ok());
    CHECK_FALSE(rep2->changed);
    CHECK(snapshot(o.conf_dir) == after);

    // Uninstall: the original bytes back; the binary stays.
    auto un = uninstall(o);
    REQUIRE(un.ok());
    CHECK(un->changed);
    CHECK(snapshot(o.conf_dir) == before);
    CHECK(snapshot(o.bin_dir).size() == 1);
    auto un2 = uninstall(o);
    REQUIRE(un2.ok());
    CHECK_FALSE(un2->changed);
}

TEST_CASE("installer files: dry run writes nothing") {
    TempDir t;
    Options o = file_opts(t);
    t.sub("net.d");
    t.sub("bin");
    put(o.conf_dir + "/10-calico.conflist", fixture("10-calico.conflist"));
    auto before = snapshot(o.conf_dir);
    o.dry_run = true;
    auto rep = install(o);
    REQUIRE(rep.ok());
    CHECK(rep->changed);
    CHECK(snapshot(o.conf_dir) == before);
    CHECK(snapshot(o.bin_dir).empty());
    bool shown = false;
    for (const auto& l : rep->lines) shown = shown || l.find("\"type\": \"signet\"") != std::string::npos;
    CHECK(shown);
}

TEST_CASE("installer files: a .conf is replaced by a .conflist of the same base name") {
    TempDir t;
    Options o = file_opts(t);
    t.sub("net.d");
    t.sub("bin");
    put(o.conf_dir + "/87-podman-bridge.conf", fixture("87-podman-bridge.conf"));
    put(o.conf_dir + "/99-other.conflist", fixture("10-containerd-net.conflist"));
    auto rep = install(o);
    REQUIRE_MESSAGE(rep.ok(), (rep.ok() ? std::string() : rep.error().message));
    auto after = snapshot(o.conf_dir);
    CHECK(after.count("87-podman-bridge.conf") == 0);
    REQUIRE(after.count("87-podman-bridge.conflist") == 1);
    CHECK(after.size() == 2);
    auto list = list_configs(o.conf_dir);
    REQUIRE(list.ok());
    CHECK((*list)[0].name == "87-podman-bridge.conflist");
    auto info = inspect(after["87-podman-bridge.conflist"].content, FileKind::conflist);
    REQUIRE(info.ok());
    CHECK(info->plugin_types == std::vector<std::string>{"bridge", "signet"});
    CHECK(after["99-other.conflist"].content == fixture("10-containerd-net.conflist"));
    // Install again: the conflist is now the one, unchanged.
    auto rep2 = install(o);
    REQUIRE(rep2.ok());
    CHECK_FALSE(rep2->changed);
}

TEST_CASE("installer files: conversion refused when the new name is taken") {
    TempDir t;
    Options o = file_opts(t);
    t.sub("net.d");
    t.sub("bin");
    put(o.conf_dir + "/87-podman-bridge.conf", fixture("87-podman-bridge.conf"));
    put(o.conf_dir + "/87-podman-bridge.conflist", "{ broken");
    auto before = snapshot(o.conf_dir);
    auto rep = install(o);
    REQUIRE_FALSE(rep.ok());
    CHECK(rep.error().message.find("exists already") != std::string::npos);
    CHECK(snapshot(o.conf_dir) == before);
    CHECK(snapshot(o.bin_dir).empty());
}

TEST_CASE("installer files: bad input is refused and nothing is written") {
    struct Case {
        const char* what;
        std::vector<std::string> files;  // fixtures put into net.d
        const char* message;
    };
    const Case cases[] = {
        {"unparseable", {"bad-unparseable.conflist"}, "no valid CNI network config"},
        {"plugins not an array", {"bad-plugins-object.conflist"}, "no valid CNI network config"},
        {"conflist in a .conf", {"bad-no-type.conf"}, "no valid CNI network config"},
        {"empty folder", {}, "no CNI network config"},
        {"signet in the middle", {"bad-signet-middle.conflist"}, "not the last plugin"},
    };
    for (const auto& c : cases) {
        CAPTURE(c.what);
        TempDir t;
        Options o = file_opts(t);
        t.sub("net.d");
        t.sub("bin");
        for (const auto& f : c.files) put(o.conf_dir + "/" + f, fixture(f));
        auto before = snapshot(o.conf_dir);
        auto rep = install(o);
        REQUIRE_FALSE(rep.ok());
        CAPTURE(rep.error().message);
        CHECK(rep.error().message.find(c.message) != std::string::npos);
        CHECK(snapshot(o.conf_dir) == before);
        CHECK(snapshot(o.bin_dir).empty());
        auto un = uninstall(o);
        if (std::string(c.what) == "signet in the middle") {
            CHECK_FALSE(un.ok());
        } else {
            CHECK(un.ok());
        }
        CHECK(snapshot(o.conf_dir) == before);
    }
    // No folder at all.
    TempDir t;
    Options o = file_opts(t);
    auto rep = install(o);
    REQUIRE_FALSE(rep.ok());
    CHECK(rep.error().message.find("no CNI network config") != std::string::npos);
    CHECK(snapshot(t.path).size() == 1);  // only the fake plugin
}

TEST_CASE("installer files: unsupported cniVersion refused before the binary is copied") {
    TempDir t;
    Options o = file_opts(t);
    t.sub("net.d");
    t.sub("bin");
    o.supported_versions = {"0.4.0", "1.0.0", "1.1.0"};
    put(o.conf_dir + "/10-flannel.conflist", fixture("10-flannel.conflist"));
    auto before = snapshot(o.conf_dir);
    auto rep = install(o);
    REQUIRE_FALSE(rep.ok());
    CHECK(snapshot(o.conf_dir) == before);
    CHECK(snapshot(o.bin_dir).empty());
}

TEST_CASE("installer files: a symlinked config is edited through the link") {
    TempDir t;
    Options o = file_opts(t);
    t.sub("net.d");
    t.sub("bin");
    t.sub("real");
    put(t.path + "/real/cni.conflist", fixture("10-aws.conflist"));
    REQUIRE(::symlink((t.path + "/real/cni.conflist").c_str(), (o.conf_dir + "/10-aws.conflist").c_str()) == 0);
    auto rep = install(o);
    REQUIRE_MESSAGE(rep.ok(), (rep.ok() ? std::string() : rep.error().message));
    struct stat st {};
    REQUIRE(::lstat((o.conf_dir + "/10-aws.conflist").c_str(), &st) == 0);
    CHECK(S_ISLNK(st.st_mode));
    check_inserted(fixture("10-aws.conflist"), fs::read_file(t.path + "/real/cni.conflist").value(), kDefaultSocket);
}

TEST_CASE("installer files: the plugin's VERSION answer") {
    TempDir t;
    std::string p = t.path + "/fake";
    put(p,
        "#!/bin/sh\n[ \"$CNI_COMMAND\" = VERSION ] || exit 3\n"
        "echo '{\"cniVersion\":\"1.1.0\",\"supportedVersions\":[\"0.4.0\",\"1.0.0\",\"1.1.0\"]}'\n",
        0755);
    auto v = plugin_versions(p);
    REQUIRE_MESSAGE(v.ok(), (v.ok() ? std::string() : v.error().message));
    CHECK(*v == std::vector<std::string>{"0.4.0", "1.0.0", "1.1.0"});
    put(p, "#!/bin/sh\necho nope\nexit 1\n", 0755);
    CHECK_FALSE(plugin_versions(p).ok());
    CHECK_FALSE(plugin_versions(t.path + "/missing").ok());
}

// --watch (issue #15): which folder events lead to a look, how they are
// described in the log, and the debounce.
TEST_CASE("installer watch: the events that matter") {
    // The ways network plugins write their config: rename, in place, new, gone.
    for (uint32_t m : {IN_MOVED_TO, IN_CLOSE_WRITE, IN_CREATE, IN_DELETE, IN_MOVED_FROM})
        for (const char* n : {"10-flannel.conflist", "87-podman.conf", "x.json", ".hidden.conflist"})
            CHECK_MESSAGE(event_matters(m, n), n << " " << m);
    // Files the runtime does not read, our own temporary file, sub-folders,
    // events not asked for.
    CHECK_FALSE(event_matters(IN_MOVED_TO, "README"));
    CHECK_FALSE(event_matters(IN_CLOSE_WRITE, ".10-flannel.conflist.signet.tmp1234"));
    CHECK_FALSE(event_matters(IN_CREATE, "10-flannel.conflist.bak"));
    CHECK_FALSE(event_matters(IN_CREATE | IN_ISDIR, "sub.conflist"));
    CHECK_FALSE(event_matters(IN_MODIFY, "10-flannel.conflist"));
    CHECK_FALSE(event_matters(IN_MOVED_TO, ""));
    // The folder itself, and lost events: always.
    for (uint32_t m : {IN_DELETE_SELF, IN_MOVE_SELF, IN_UNMOUNT, IN_IGNORED, IN_Q_OVERFLOW}) {
        CHECK(event_matters(m, ""));
        CHECK(watch_lost(m) == (m != IN_Q_OVERFLOW));
    }
    CHECK_FALSE(watch_lost(IN_DELETE));
    CHECK(describe_event(IN_MOVED_TO, "10-flannel.conflist") == "10-flannel.conflist replaced (moved in)");
    CHECK(describe_event(IN_CLOSE_WRITE, "a.conf") == "a.conf written");
    CHECK(describe_event(IN_DELETE, "a.conf") == "a.conf deleted");
    CHECK(describe_event(IN_MOVED_FROM, "a.conf") == "a.conf moved away");
    CHECK(describe_event(IN_CREATE, "a.conf") == "a.conf created");
    CHECK(describe_event(IN_MOVE_SELF, "") == "the config folder was moved away");
    CHECK(describe_event(IN_Q_OVERFLOW, "") == "inotify event queue overflowed");
}

TEST_CASE("installer watch: debounce and reasons") {
    using namespace std::chrono_literals;
    Debouncer d(200ms, 1000ms);
    auto t0 = Debouncer::clock::time_point{} + 1h;
    CHECK_FALSE(d.pending());
    CHECK_FALSE(d.due(t0));
    d.note(t0);
    CHECK(d.pending());
    CHECK(d.due_at() == t0 + 200ms);
    CHECK_FALSE(d.due(t0 + 199ms));
    CHECK(d.due(t0 + 200ms));
    // Each event pushes it back, but never past max_delay after the first.
    d.note(t0 + 150ms);
    CHECK(d.due_at() == t0 + 350ms);
    for (auto t = t0; t < t0 + 3s; t += 100ms) d.note(t);
    CHECK(d.due_at() == t0 + 1000ms);
    d.clear();
    CHECK_FALSE(d.pending());
    d.note(t0 + 5s);
    CHECK(d.due_at() == t0 + 5s + 200ms);

    Reasons r(2);
    CHECK(r.empty());
    r.add("a written");
    r.add("a written");
    r.add("b created");
    CHECK(r.text() == "a written; b created");
    r.add("c deleted");
    r.add("d deleted");
    CHECK(r.text() == "a written; b created and 2 more");
    r.clear();
    CHECK(r.empty());
    CHECK(r.text().empty());
}

TEST_CASE("installer watch: the report tells a config edit from a binary copy") {
    // --watch logs "chained signet into FILE" only when the config changed.
    TempDir t;
    Options o = file_opts(t);
    t.sub("net.d");
    t.sub("bin");
    put(o.conf_dir + "/10-flannel.conflist", fixture("10-flannel.conflist"));
    auto first = install(o);
    REQUIRE(first.ok());
    CHECK(first->changed);
    CHECK(first->config_change == Change::inserted);
    auto again = install(o);
    REQUIRE(again.ok());
    CHECK_FALSE(again->changed);
    CHECK(again->config_change == Change::none);
    REQUIRE(::unlink((o.bin_dir + "/signet").c_str()) == 0);
    auto copied = install(o);
    REQUIRE(copied.ok());
    CHECK(copied->changed);
    CHECK(copied->config_change == Change::none);
}
