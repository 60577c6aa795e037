#include "conflist.h"

#include <rapidjson/document.h>
#include <rapidjson/error/en.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <cctype>

namespace signet::installer {
namespace {

using rapidjson::Value;

// ---------------------------------------------------------------------------
// Spans

bool is_ws(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

struct Scanner {
    std::string_view t;
    size_t p = 0;

    void ws() {
        while (p < t.size() && is_ws(t[p])) ++p;
    }
    Error bad(const std::string& what) const { return make_error(0, what + " at offset " + std::to_string(p)); }

    Result<Span> string_span() {
        size_t b = p++;
        while (p < t.size()) {
            char c = t[p];
            if (c == '\\') {
                p += 2;
                continue;
            }
            ++p;
            if (c == '"') return Span{b, p};
        }
        return bad("unterminated string");
    }

    Status value(Node& n, int depth) {
        if (depth > kMaxDepth) return bad("JSON nested more than " + std::to_string(kMaxDepth) + " levels deep");
        ws();
        if (p >= t.size()) return bad("unexpected end of text");
        n.value.begin = p;
        char c = t[p];
        if (c == '{' || c == '[') {
            bool obj = c == '{';
            n.kind = obj ? Node::object : Node::array;
            ++p;
            ws();
            if (p < t.size() && t[p] == (obj ? '}' : ']')) {
                n.value.end = ++p;
                return {};
            }
            for (;;) {
                ws();
                if (obj) {
                    if (p >= t.size() || t[p] != '"') return bad("expected a member name");
                    auto k = string_span();
                    if (!k) return k.error();
                    n.keys.push_back(*k);
                    ws();
                    if (p >= t.size() || t[p] != ':') return bad("expected ':'");
                    ++p;
                }
                n.children.emplace_back();
                if (auto st = value(n.children.back(), depth + 1); !st) return st;
                ws();
                if (p >= t.size()) return bad("unexpected end of text");
                if (t[p] == ',') {
                    ++p;
                    continue;
                }
                if (t[p] == (obj ? '}' : ']')) {
                    n.value.end = ++p;
                    return {};
                }
                return bad("expected ',' or a closing bracket");
            }
        }
        n.kind = Node::scalar;
        if (c == '"') {
            auto s = string_span();
            if (!s) return s.error();
            n.value = *s;
            return {};
        }
        while (p < t.size() && !is_ws(t[p]) && t[p] != ',' && t[p] != ']' && t[p] != '}') ++p;
        if (p == n.value.begin) return bad("unexpected character");
        n.value.end = p;
        return {};
    }
};

// ---------------------------------------------------------------------------
// Go encoding/json semantics over a RapidJSON value

std::string str_of(const Value& v) {
    return std::string(v.GetString(), v.GetStringLength());
}

bool ascii_iequal(const Value& name, std::string_view want) {
    if (name.GetStringLength() != want.size()) return false;
    const char* s = name.GetString();
    for (size_t i = 0; i < want.size(); ++i)
        if (std::tolower(static_cast<unsigned char>(s[i])) != std::tolower(static_cast<unsigned char>(want[i])))
            return false;
    return true;
}

bool exact_equal(const Value& name, std::string_view want) {
    return name.GetStringLength() == want.size() && std::equal(want.begin(), want.end(), name.GetString());
}

// Index of the last member named `key` (map[string]interface{}: the last
// duplicate wins), or -1.
int last_exact(const Value& obj, std::string_view key) {
    int found = -1, i = 0;
    for (auto it = obj.MemberBegin(); it != obj.MemberEnd(); ++it, ++i)
        if (exact_equal(it->name, key)) found = i;
    return found;
}

const char* type_name(const Value& v) {
    if (v.IsNull()) return "null";
    if (v.IsBool()) return "bool";
    if (v.IsNumber()) return "number";
    if (v.IsString()) return "string";
    if (v.IsArray()) return "array";
    return "object";
}

Status want_string_or_null(const Value& v, const std::string& where) {
    if (v.IsNull() || v.IsString()) return {};
    return make_error(0, where + ": cannot unmarshal " + type_name(v) + " into a string");
}

Status check_string_list(const Value& v, const std::string& where) {
    if (v.IsNull()) return {};
    if (!v.IsArray())
        return make_error(0, where + ": cannot unmarshal " + std::string(type_name(v)) + " into []string");
    for (const auto& e : v.GetArray())
        if (auto st = want_string_or_null(e, where + "[]"); !st) return st;
    return {};
}

// types.NetConf as libcni's ConfFromBytes decodes it: the type of every known
// field (matched case-insensitively, as Go does), and a non-empty "type".
// Returns the plugin type.
Result<std::string> check_netconf(const Value& v, const std::string& where) {
    if (v.IsNull()) return make_error(0, where + ": missing 'type'");
    if (!v.IsObject())
        return make_error(0, where + ": cannot unmarshal " + std::string(type_name(v)) + " into a network config");
    std::string type;
    for (auto it = v.MemberBegin(); it != v.MemberEnd(); ++it) {
        const Value& name = it->name;
        const Value& val = it->value;
        std::string w = where + "." + str_of(name);
        if (ascii_iequal(name, "cniVersion") || ascii_iequal(name, "name")) {
            if (auto st = want_string_or_null(val, w); !st) return st.error();
        } else if (ascii_iequal(name, "type")) {
            if (auto st = want_string_or_null(val, w); !st) return st.error();
            if (val.IsString()) type = str_of(val);
        } else if (ascii_iequal(name, "capabilities")) {
            if (val.IsNull()) continue;
            if (!val.IsObject())
                return make_error(0, w + ": cannot unmarshal " + std::string(type_name(val)) + " into map[string]bool");
            for (auto c = val.MemberBegin(); c != val.MemberEnd(); ++c)
                if (!c->value.IsBool() && !c->value.IsNull())
                    return make_error(
                        0, w + "." + str_of(c->name) + ": cannot unmarshal " + type_name(c->value) + " into bool");
        } else if (ascii_iequal(name, "ipam")) {
            if (val.IsNull()) continue;
            if (!val.IsObject())
                return make_error(0, w + ": cannot unmarshal " + std::string(type_name(val)) + " into an IPAM config");
            for (auto c = val.MemberBegin(); c != val.MemberEnd(); ++c)
                if (ascii_iequal(c->name, "type"))
                    if (auto st = want_string_or_null(c->value, w + ".type"); !st) return st.error();
        } else if (ascii_iequal(name, "dns")) {
            if (val.IsNull()) continue;
            if (!val.IsObject())
                return make_error(0, w + ": cannot unmarshal " + std::string(type_name(val)) + " into a DNS config");
            for (auto c = val.MemberBegin(); c != val.MemberEnd(); ++c) {
                std::string cw = w + "." + str_of(c->name);
                Status st;
                if (ascii_iequal(c->name, "domain"))
                    st = want_string_or_null(c->value, cw);
                else if (ascii_iequal(c->name, "nameservers") || ascii_iequal(c->name, "search") ||
                         ascii_iequal(c->name, "options"))
                    st = check_string_list(c->value, cw);
                if (!st) return st.error();
            }
        } else if (ascii_iequal(name, "prevResult")) {
            if (!val.IsNull() && !val.IsObject())
                return make_error(0, w + ": cannot unmarshal " + std::string(type_name(val)) + " into an object");
        }
    }
    if (type.empty()) return make_error(0, where + ": missing 'type'");
    return type;
}

// The last string value of a case-insensitively matched field (Go: a later
// occurrence overwrites, null leaves it as it was).
std::string ci_string(const Value& obj, std::string_view key) {
    std::string out;
    for (auto it = obj.MemberBegin(); it != obj.MemberEnd(); ++it)
        if (ascii_iequal(it->name, key) && it->value.IsString()) out = str_of(it->value);
    return out;
}

Result<rapidjson::Document> parse_doc(std::string_view text) {
    rapidjson::Document doc;
    // Iterative: deep nesting in a hostile file cannot overflow the stack.
    doc.Parse<rapidjson::kParseIterativeFlag>(text.data(), text.size());
    if (doc.HasParseError())
        return make_error(0, std::string("not valid JSON (offset ") + std::to_string(doc.GetErrorOffset()) +
                                 "): " + rapidjson::GetParseError_En(doc.GetParseError()));
    return doc;
}

// A parsed file: the document, where its values are, and what it means.
struct Parsed {
    rapidjson::Document doc;
    Node root;
    ConfigInfo info;
    int plugins_member = -1;  // conflist: index of the "plugins" member used
};

Result<Parsed> parse_config(std::string_view text, FileKind kind) {
    if (text.size() > (4u << 20)) return make_error(0, "larger than 4 MiB: not a CNI network config");
    auto doc = parse_doc(text);
    if (!doc) return doc.error();
    Parsed out;
    out.doc = std::move(*doc);
    auto root = locate(text);
    if (!root) return root.error();
    out.root = std::move(*root);
    const Value& d = out.doc;
    ConfigInfo& info = out.info;

    if (kind == FileKind::single) {
        auto type = check_netconf(d, "network config");
        if (!type) return type.error();
        info.name = ci_string(d, "name");
        info.cni_version = ci_string(d, "cniVersion");
        info.plugin_types.push_back(*type);
        if (*type == kPluginType) {
            info.signet_index = 0;
            info.signet_count = 1;
        }
        return out;
    }

    // libcni's ConfListFromBytes: a map[string]interface{} (exact keys, the
    // last duplicate wins).
    if (!d.IsObject())
        return make_error(0, std::string("cannot unmarshal ") + type_name(d) + " into a network config list");
    int i = last_exact(d, "name");
    if (i < 0) return make_error(0, "no name");
    const Value& name = d.MemberBegin()[i].value;
    if (!name.IsString()) return make_error(0, std::string("invalid name type ") + type_name(name));
    info.name = str_of(name);
    if (i = last_exact(d, "cniVersion"); i >= 0) {
        const Value& v = d.MemberBegin()[i].value;
        if (!v.IsString()) return make_error(0, std::string("invalid cniVersion type ") + type_name(v));
        info.cni_version = str_of(v);
    }
    if (i = last_exact(d, "disableCheck"); i >= 0 && !d.MemberBegin()[i].value.IsBool())
        return make_error(0, std::string("invalid disableCheck type ") + type_name(d.MemberBegin()[i].value));
    i = last_exact(d, "plugins");
    if (i < 0) return make_error(0, "no 'plugins' key");
    const Value& plugins = d.MemberBegin()[i].value;
    if (!plugins.IsArray()) return make_error(0, std::string("'plugins' is ") + type_name(plugins) + ", not an array");
    if (plugins.Empty()) return make_error(0, "no plugins in list");
    out.plugins_member = i;
    for (rapidjson::SizeType k = 0; k < plugins.Size(); ++k) {
        auto type = check_netconf(plugins[k], "plugins[" + std::to_string(k) + "]");
        if (!type) return type.error();
        info.plugin_types.push_back(*type);
    }
    for (size_t k = 0; k < info.plugin_types.size(); ++k)
        if (info.plugin_types[k] == kPluginType) {
            ++info.signet_count;
            info.signet_index = static_cast<int>(k);
        }
    if (info.signet_index >= 0) {
        const Value& entry = plugins[static_cast<rapidjson::SizeType>(info.signet_index)];
        auto it = entry.FindMember("socket");  // the plugin reads the first "socket"
        info.signet_socket = it != entry.MemberEnd() && it->value.IsString() ? str_of(it->value) : kDefaultSocket;
    }
    return out;
}

// Where signet may be: once, as the last plugin.
Status check_placement(const ConfigInfo& info) {
    if (info.signet_count > 1)
        return make_error(
            0, "signet appears " + std::to_string(info.signet_count) + " times in plugins; fix the file by hand");
    if (info.signet_count == 1 && info.signet_index != static_cast<int>(info.plugin_types.size()) - 1)
        return make_error(0, "signet is plugins[" + std::to_string(info.signet_index) + "] of " +
                                 std::to_string(info.plugin_types.size()) +
                                 ", not the last plugin: a chained plugin must come after the network plugins; "
                                 "fix the file by hand");
    return {};
}

const Node& plugins_node(const Parsed& p) {
    return p.root.children[static_cast<size_t>(p.plugins_member)];
}

std::string replace(std::string_view text, Span s, std::string_view with) {
    std::string out(text.substr(0, s.begin));
    out += with;
    out += text.substr(s.end);
    return out;
}

// The whitespace just before offset `pos`.
std::string_view ws_before(std::string_view text, size_t pos) {
    size_t b = pos;
    while (b > 0 && is_ws(text[b - 1])) --b;
    return text.substr(b, pos - b);
}

// Whether the plugin object writes `"key": value` (with a space).
bool spaced_members(std::string_view text, const Node& n) {
    if (n.kind != Node::object || n.keys.empty()) return false;
    return text.substr(n.keys[0].end, n.children[0].value.begin - n.keys[0].end).find(' ') != std::string_view::npos;
}

std::string entry_text(std::string_view socket, std::string_view sep_ws, std::string_view text, const Node& last) {
    size_t nl = sep_ws.rfind('\n');
    if (nl == std::string_view::npos) {
        if (sep_ws.empty() && !spaced_members(text, last)) return R"({"type":"signet","socket":)" + quote(socket) + "}";
        return R"({"type": "signet", "socket": )" + quote(socket) + "}";
    }
    std::string indent(sep_ws.substr(nl + 1));
    std::string unit = indent.find('\t') != std::string::npos ? "\t" : "  ";
    // Follow the previous plugin's own indentation step when it shows one.
    if (last.kind == Node::object && !last.keys.empty()) {
        std::string_view kws = ws_before(text, last.keys[0].begin);
        size_t knl = kws.rfind('\n');
        if (knl != std::string_view::npos) {
            std::string_view kindent = kws.substr(knl + 1);
            if (kindent.size() > indent.size() && kindent.substr(0, indent.size()) == indent)
                unit = std::string(kindent.substr(indent.size()));
        }
    }
    std::string in = indent + unit;
    return "{\n" + in + "\"type\": \"signet\",\n" + in + "\"socket\": " + quote(socket) + "\n" + indent + "}";
}

// Appends signet's entry after the last plugin, in the file's own layout.
std::string append_entry(std::string_view text, const Parsed& p, std::string_view socket) {
    const Node& arr = plugins_node(p);
    const Node& last = arr.children.back();
    std::string sep(ws_before(text, last.value.begin));
    // A one-line list with no space after '[' but spaces inside the objects:
    // separate with ", ".
    if (sep.empty() && spaced_members(text, last)) sep = " ";
    return replace(text, Span{last.value.end, last.value.end}, "," + sep + entry_text(socket, sep, text, last));
}

// Sets the entry's socket: replaces the value of its first "socket" member,
// or adds the member after "type".
std::string set_socket(std::string_view text, const Parsed& p, std::string_view socket) {
    const Node& entry = plugins_node(p).children[static_cast<size_t>(p.info.signet_index)];
    const Value& v = p.doc.MemberBegin()[p.plugins_member].value[static_cast<rapidjson::SizeType>(p.info.signet_index)];
    int i = 0, type_i = -1;
    for (auto it = v.MemberBegin(); it != v.MemberEnd(); ++it, ++i) {
        if (exact_equal(it->name, "socket"))
            return replace(text, entry.children[static_cast<size_t>(i)].value, quote(socket));
        if (ascii_iequal(it->name, "type")) type_i = i;
    }
    size_t at = entry.children[static_cast<size_t>(type_i)].value.end;
    return replace(text, Span{at, at}, ", \"socket\": " + quote(socket));
}

// Sets the top-level cniVersion of a conflist: replaces the value used (the
// last "cniVersion"), or adds the member first.
std::string set_version(std::string_view text, const Parsed& p, std::string_view version) {
    int i = last_exact(p.doc, "cniVersion");
    if (i >= 0) return replace(text, p.root.children[static_cast<size_t>(i)].value, quote(version));
    Span first = p.root.keys.front();  // a conflist has at least name and plugins
    std::string sep(ws_before(text, first.begin));
    return replace(text, Span{first.begin, first.begin}, "\"cniVersion\": " + quote(version) + "," + sep);
}

// Removes member `i` of object `obj` with the separator next to it.
std::string remove_member(std::string_view text, const Node& obj, size_t i) {
    size_t n = obj.children.size();
    if (i + 1 < n) return replace(text, Span{obj.keys[i].begin, obj.keys[i + 1].begin}, "");
    if (i > 0) return replace(text, Span{obj.children[i - 1].value.end, obj.children[i].value.end}, "");
    return replace(text, Span{obj.keys[i].begin, obj.children[i].value.end}, "");
}

std::string join(const std::vector<std::string>& v) {
    std::string out;
    for (const auto& s : v) out += (out.empty() ? "" : ", ") + s;
    return out;
}

Status check_version(const std::string& version, const InsertOptions& opts, bool from_flag) {
    if (opts.supported_versions.empty()) return {};
    if (std::find(opts.supported_versions.begin(), opts.supported_versions.end(), version) !=
        opts.supported_versions.end())
        return {};
    std::string shown = version.empty() ? "no cniVersion (plugins read it as 0.1.0)" : "cniVersion \"" + version + "\"";
    if (from_flag)
        return make_error(
            0, "--set-cni-version " + version + ": the signet plugin supports " + join(opts.supported_versions));
    return make_error(0, "the config has " + shown + ", which the signet plugin does not support (it supports " +
                             join(opts.supported_versions) +
                             "): the runtime would fail every pod's ADD. Once you have checked that the other "
                             "plugins in the list support it too, run again with --set-cni-version " +
                             opts.supported_versions.front() + " (or a later supported version)");
}

}  // namespace

std::string quote(std::string_view s) {
    rapidjson::StringBuffer buf;
    rapidjson::Writer<rapidjson::StringBuffer> w(buf);
    w.String(s.data(), static_cast<rapidjson::SizeType>(s.size()));
    return std::string(buf.GetString(), buf.GetSize());
}

Result<Node> locate(std::string_view text) {
    Scanner s{text};
    Node n;
    if (auto st = s.value(n, 0); !st) return st.error();
    s.ws();
    if (s.p != text.size()) return s.bad("text after the JSON value");
    return n;
}

const char* change_name(Change c) {
    switch (c) {
        case Change::none:
            return "unchanged";
        case Change::inserted:
            return "inserted";
        case Change::updated:
            return "updated";
        case Change::converted:
            return "converted";
        case Change::removed:
            return "removed";
    }
    return "?";
}

Result<ConfigInfo> inspect(std::string_view text, FileKind kind) {
    auto p = parse_config(text, kind);
    if (!p) return p.error();
    return std::move(p->info);
}

Result<Edit> insert_signet(std::string_view text, FileKind kind, const InsertOptions& opts) {
    if (opts.socket.empty()) return make_error(0, "the socket path must not be empty");
    if (!opts.set_cni_version.empty())
        if (auto st = check_version(opts.set_cni_version, opts, true); !st) return st.error();
    auto p = parse_config(text, kind);
    if (!p) return p.error();
    const ConfigInfo& info = p->info;
    if (auto st = check_placement(info); !st) return st.error();
    std::string version = opts.set_cni_version.empty() ? info.cni_version : opts.set_cni_version;
    if (auto st = check_version(version, opts, false); !st) return st.error();

    if (kind == FileKind::single) {
        if (info.signet_index == 0)
            return make_error(0, "the config's only plugin is signet: signet must be chained after a network plugin");
        // The plugin object without name and cniVersion (every spelling Go
        // would read), re-indented as plugins[0].
        std::string obj(text.substr(p->root.value.begin, p->root.value.end - p->root.value.begin));
        for (;;) {
            auto doc = parse_doc(obj);
            auto node = locate(obj);
            if (!doc || !node) return make_error(0, "internal error: cannot re-read the plugin object");
            int found = -1, i = 0;
            for (auto it = doc->MemberBegin(); it != doc->MemberEnd(); ++it, ++i)
                if (ascii_iequal(it->name, "name") || ascii_iequal(it->name, "cniVersion")) found = i;
            if (found < 0) break;
            obj = remove_member(obj, *node, static_cast<size_t>(found));
        }
        std::string plugin;
        for (char c : obj) {
            plugin += c;
            if (c == '\n') plugin += "    ";
        }
        std::string out = "{\n";
        if (!version.empty()) out += "  \"cniVersion\": " + quote(version) + ",\n";
        out += "  \"name\": " + quote(info.name) + ",\n";
        out += "  \"plugins\": [\n    " + plugin +
               ",\n    {\n      \"type\": \"signet\",\n      \"socket\": " + quote(opts.socket) + "\n    }\n  ]\n}\n";
        return Edit{out, Change::converted,
                    "converted the single-plugin config (" + info.plugin_types[0] +
                        ") to a config list and added signet as its last plugin"};
    }

    if (info.plugin_types.size() == 1 && info.signet_index == 0)
        return make_error(0, "the config's only plugin is signet: signet must be chained after a network plugin");
    std::string out(text);
    Change change = Change::none;
    std::vector<std::string> notes;
    if (info.signet_index < 0) {
        out = append_entry(out, *p, opts.socket);
        change = Change::inserted;
        notes.push_back("added signet after " + join(info.plugin_types));
    } else if (info.signet_socket != opts.socket) {
        out = set_socket(out, *p, opts.socket);
        change = Change::updated;
        notes.push_back("signet's socket changed from " + info.signet_socket + " to " + opts.socket);
    }
    if (!opts.set_cni_version.empty() && opts.set_cni_version != info.cni_version) {
        auto again = parse_config(out, kind);
        if (!again) return make_error(0, "internal error: the edited config does not parse: " + again.error().message);
        out = set_version(out, *again, opts.set_cni_version);
        if (change == Change::none) change = Change::updated;
        notes.push_back("cniVersion changed from \"" + info.cni_version + "\" to \"" + opts.set_cni_version + "\"");
    }
    if (change == Change::none) notes.push_back("signet is already the last plugin, with socket " + info.signet_socket);
    std::string note;
    for (const auto& n : notes) note += (note.empty() ? "" : "; ") + n;
    // Never hand back something the runtime would refuse.
    if (auto check = parse_config(out, kind); !check || check->info.signet_index < 0)
        return make_error(0, "internal error: the edited config is not valid: " +
                                 (check ? std::string("signet missing") : check.error().message));
    return Edit{out, change, note};
}

Result<Edit> remove_signet(std::string_view text, FileKind kind) {
    auto p = parse_config(text, kind);
    if (!p) return p.error();
    const ConfigInfo& info = p->info;
    if (auto st = check_placement(info); !st) return st.error();
    if (info.signet_index < 0) return Edit{std::string(text), Change::none, "signet is not in this config"};
    if (kind == FileKind::single || info.plugin_types.size() == 1)
        return make_error(0,
                          "signet is the only plugin of this config: removing it would leave no network; "
                          "fix the file by hand");
    const Node& arr = plugins_node(*p);
    size_t k = static_cast<size_t>(info.signet_index);
    std::string out = replace(text, Span{arr.children[k - 1].value.end, arr.children[k].value.end}, "");
    if (auto check = parse_config(out, kind); !check)
        return make_error(0, "internal error: the edited config is not valid: " + check.error().message);
    return Edit{out, Change::removed, "removed signet (after " + info.plugin_types[k - 1] + ")"};
}

}  // namespace signet::installer
