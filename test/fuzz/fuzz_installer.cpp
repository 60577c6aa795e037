// CNI network config files on a node (written by other software, or by
// hand) through every pure step of signet-install-cni. Beyond not crashing:
// an edit always yields a config the runtime loads with signet last, a second
// install changes nothing, and uninstall after install gives back the input
// byte for byte.
#include <cstdint>
#include <string>
#include <string_view>

#include "conflist.h"

namespace {

using namespace signet::installer;

void check(bool ok) {
    if (!ok) __builtin_trap();
}

void run(std::string_view text, FileKind kind) {
    (void)inspect(text, kind);
    InsertOptions o;
    o.supported_versions = {"0.3.1", "0.4.0", "1.0.0", "1.1.0"};
    o.socket = "/run/signet/a \"b\".sock";
    if (text.size() % 3 == 1) o.set_cni_version = "1.0.0";
    auto e = insert_signet(text, kind, o);
    if (auto r = remove_signet(text, kind); r && r->change == Change::none) check(r->text == text);
    if (!e) return;
    auto info = inspect(e->text, FileKind::conflist);
    check(info.ok());
    check(info->signet_count == 1 && info->signet_index == static_cast<int>(info->plugin_types.size()) - 1);
    check(info->signet_socket == o.socket);
    if (!o.set_cni_version.empty()) check(info->cni_version == o.set_cni_version);
    auto again = insert_signet(e->text, FileKind::conflist, o);
    check(again.ok() && again->change == Change::none && again->text == e->text);
    auto back = remove_signet(e->text, FileKind::conflist);
    check(back.ok());
    if (e->change == Change::inserted && o.set_cni_version.empty()) check(back->text == text);
    auto plain = inspect(back->text, FileKind::conflist);
    check(plain.ok() && plain->signet_count == 0);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string_view text(reinterpret_cast<const char*>(data), size);
    (void)locate(text);
    run(text, FileKind::conflist);
    run(text, FileKind::single);
    return 0;
}
