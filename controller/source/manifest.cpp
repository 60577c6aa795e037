#include "manifest.h"

#include <rapidjson/error/en.h>
#include <rapidjson/memorystream.h>
#include <yaml-cpp/depthguard.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include "signet/json.h"

#include <array>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <exception>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <variant>

namespace signet::source {

using rapidjson::Value;
using Alloc = rapidjson::Document::AllocatorType;

namespace {

Error invalid(std::string_view path, std::string_view message) {
    std::string m(path);
    if (!m.empty()) m += ": ";
    m += message;
    return make_error(EINVAL, std::move(m));
}

std::string child(std::string_view path, std::string_view field) {
    std::string p(path);
    if (!p.empty()) p += '.';
    p += field;
    return p;
}

std::string indexed(std::string_view path, size_t i) {
    return std::string(path) + "[" + std::to_string(i) + "]";
}

std::string quoted(std::string_view s) {
    return "\"" + std::string(s) + "\"";
}

std::string_view as_view(const Value& v) {
    return {v.GetString(), v.GetStringLength()};
}

// ===========================================================================
// YAML -> JSON, with the scalar typing of sigs.k8s.io/yaml (go-yaml v2, YAML 1.1)

constexpr std::array kNullWords = {"", "~", "null", "Null", "NULL"};
constexpr std::array kTrueWords = {"y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"};
constexpr std::array kFalseWords = {"n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"};
constexpr std::array kNonFiniteWords = {".inf",  ".Inf",  ".INF",  "+.inf", "+.Inf", "+.INF",
                                        "-.inf", "-.Inf", "-.INF", ".nan",  ".NaN",  ".NAN"};

template <size_t N>
bool one_of(std::string_view s, const std::array<const char*, N>& words) {
    for (const char* w : words)
        if (s == w) return true;
    return false;
}

// Go's strconv.ParseInt(s, 0, 64), falling back to ParseUint(s, 0, 64).
std::optional<std::variant<int64_t, uint64_t>> parse_go_int(std::string_view s) {
    bool negative = false, signed_ = false;
    if (!s.empty() && (s[0] == '+' || s[0] == '-')) {
        negative = s[0] == '-';
        signed_ = true;
        s.remove_prefix(1);
    }
    int base = 10;
    if (s.size() >= 2 && s[0] == '0') {
        char p = static_cast<char>(s[1] | 0x20);
        base = p == 'x' ? 16 : p == 'o' ? 8 : p == 'b' ? 2 : 8;
        s.remove_prefix(p == 'x' || p == 'o' || p == 'b' ? 2 : 1);
    }
    uint64_t mag = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), mag, base);
    if (s.empty() || ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
    constexpr uint64_t kMaxInt = std::numeric_limits<int64_t>::max();
    if (negative) {
        if (mag > kMaxInt + 1) return std::nullopt;
        return mag == kMaxInt + 1 ? std::numeric_limits<int64_t>::min() : -static_cast<int64_t>(mag);
    }
    if (mag <= kMaxInt) return static_cast<int64_t>(mag);
    if (signed_) return std::nullopt;  // ParseUint takes no sign
    return mag;
}

// go-yaml v2's float syntax: ^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$
bool is_yaml_float(std::string_view s) {
    size_t i = 0, n = s.size();
    auto digits = [&] {
        size_t start = i;
        while (i < n && s[i] >= '0' && s[i] <= '9') ++i;
        return i - start;
    };
    if (i < n && (s[i] == '+' || s[i] == '-')) ++i;
    if (i < n && s[i] == '.') {
        ++i;
        if (digits() == 0) return false;
    } else {
        if (digits() == 0) return false;
        if (i < n && s[i] == '.') {
            ++i;
            digits();
        }
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        ++i;
        if (i < n && (s[i] == '+' || s[i] == '-')) ++i;
        if (digits() == 0) return false;
    }
    return i == n;
}

// A float becomes a JSON number as Go's json.Marshal writes it: integral
// values below 1e21 are written without a fraction, so they read back as integers.
Value float_value(double d) {
    if (std::trunc(d) == d && std::fabs(d) < 9.2e18) return Value(static_cast<int64_t>(d));
    return Value(d);
}

// A cheap look at the raw text before yaml-cpp (or RapidJSON) sees it. yaml-cpp's scanner
// queues every token of a flow collection ("[...]", "{...}") that might be a
// mapping key, and recurses once per nesting level, so 4 MiB of "[" or of
// "[a, a, ..." costs it gigabytes or seconds before its own guards act. This
// approximate lexer (quotes and comments skipped, document markers reset the
// count) refuses flow nesting far beyond kMaxDepth and flow collections with
// more entries than the node bound. It can only over-count brackets that sit
// in plain or block scalars, so its limits are set well above what a real
// manifest has.
constexpr int kMaxFlowDepthPrescan = 1024;

Status prescan(std::string_view text) {
    int depth = 0;
    size_t entries = 0, line = 1;
    bool in_double = false, in_single = false, in_comment = false;
    auto refuse = [&](const std::string& what) {
        return make_error(EINVAL, "line " + std::to_string(line) + ": " + what);
    };
    const std::string too_wide = "flow collection with more than " + std::to_string(kMaxNodes) + " entries";
    for (size_t i = 0; i < text.size(); ++i) {
        char c = text[i];
        if (c == '\n') ++line;
        if (in_comment) {
            in_comment = c != '\n';
            continue;
        }
        if (in_double) {
            if (c == '\\')
                ++i;
            else if (c == '"')
                in_double = false;
            continue;
        }
        if (in_single) {
            in_single = c != '\'';
            continue;
        }
        bool line_start = i == 0 || text[i - 1] == '\n';
        bool after_space = line_start || text[i - 1] == ' ' || text[i - 1] == '\t';
        if (line_start && text.substr(i, 3) == "---") depth = 0;
        switch (c) {
            case '#':
                in_comment = after_space;
                break;
            case '"':
                in_double = true;
                break;
            case '\'':
                in_single = after_space || depth > 0;
                break;
            case '[':
            case '{':
                if (depth == 0) entries = 0;
                if (++depth > kMaxFlowDepthPrescan)
                    return refuse("nesting deeper than " + std::to_string(kMaxDepth) + " levels");
                if (++entries > kMaxNodes) return refuse(too_wide);
                break;
            case ']':
            case '}':
                if (depth > 0) --depth;
                break;
            case ',':
                if (depth > 0 && ++entries > kMaxNodes) return refuse(too_wide);
                break;
            default:
                break;
        }
    }
    return {};
}

// One YAML node as the parser reported it. Aliases are pointers to the
// anchored node, so a tree may share subtrees (and even contain cycles: an
// alias inside its own anchor); the converter's depth and node bounds stop both.
struct YamlNode {
    enum class Kind { Null, Scalar, Sequence, Map };
    Kind kind = Kind::Null;
    std::string tag;    // scalars: "?" plain, "!" quoted, else the resolved tag
    std::string value;  // scalars
    YAML::Mark mark;
    std::vector<const YamlNode*> items;  // sequence items; map keys and values alternating
};

// Thrown from the event handler to stop the parser; never leaves this file.
struct TooManyNodes {};

// Builds YamlNode trees from yaml-cpp's parser events, one document at a time.
// (YAML::LoadAll is not used: on some malformed input its parser reports
// empty documents forever without advancing; the caller detects that here.)
class TreeBuilder : public YAML::EventHandler {
public:
    void OnDocumentStart(const YAML::Mark& mark) override {
        start_ = mark;
        root_ = nullptr;
        open_.clear();
        anchors_.clear();  // anchors are per document
    }
    void OnDocumentEnd() override {}
    void OnNull(const YAML::Mark& mark, YAML::anchor_t anchor) override {
        add(make(YamlNode::Kind::Null, mark), anchor);
    }
    void OnAlias(const YAML::Mark& mark, YAML::anchor_t anchor) override {
        auto it = anchors_.find(anchor);
        // yaml-cpp rejects undefined aliases itself; be safe anyway.
        attach(it != anchors_.end() ? it->second : make(YamlNode::Kind::Null, mark));
    }
    void OnScalar(const YAML::Mark& mark, const std::string& tag, YAML::anchor_t anchor,
                  const std::string& value) override {
        YamlNode* n = make(YamlNode::Kind::Scalar, mark);
        n->tag = tag;
        n->value = value;
        add(n, anchor);
    }
    void OnSequenceStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t anchor,
                         YAML::EmitterStyle::value) override {
        open(make(YamlNode::Kind::Sequence, mark), anchor);
    }
    void OnSequenceEnd() override { close(); }
    void OnMapStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t anchor,
                    YAML::EmitterStyle::value) override {
        open(make(YamlNode::Kind::Map, mark), anchor);
    }
    void OnMapEnd() override { close(); }

    const YamlNode* root() const { return root_; }
    const YAML::Mark& document_start() const { return start_; }

private:
    YamlNode* make(YamlNode::Kind kind, const YAML::Mark& mark) {
        if (arena_.size() >= kMaxNodes) throw TooManyNodes{};
        arena_.push_back(std::make_unique<YamlNode>());
        arena_.back()->kind = kind;
        arena_.back()->mark = mark;
        return arena_.back().get();
    }
    void add(YamlNode* n, YAML::anchor_t anchor) {
        if (anchor != YAML::NullAnchor) anchors_[anchor] = n;
        attach(n);
    }
    void attach(const YamlNode* n) {
        if (open_.empty()) {
            if (root_ == nullptr) root_ = n;
        } else {
            open_.back()->items.push_back(n);
        }
    }
    void open(YamlNode* n, YAML::anchor_t anchor) {
        add(n, anchor);
        open_.push_back(n);
    }
    void close() {
        if (!open_.empty()) open_.pop_back();
    }

    std::vector<std::unique_ptr<YamlNode>> arena_;  // owns every node of the file
    std::vector<YamlNode*> open_;                   // containers being filled
    std::map<YAML::anchor_t, YamlNode*> anchors_;
    const YamlNode* root_ = nullptr;
    YAML::Mark start_;
};

// Converts YamlNode trees to RapidJSON values.
class YamlToJson {
public:
    explicit YamlToJson(Alloc& alloc) : alloc_(alloc) {}

    Result<Value> convert(const YamlNode& node, int depth) {
        if (++nodes_ > kMaxNodes)
            return error(node, "more than " + std::to_string(kMaxNodes) + " values (YAML aliases expand too far?)");
        switch (node.kind) {
            case YamlNode::Kind::Null:
                return Value(rapidjson::kNullType);
            case YamlNode::Kind::Scalar:
                return scalar(node);
            case YamlNode::Kind::Sequence: {
                if (depth >= kMaxDepth) return too_deep(node);
                Value arr(rapidjson::kArrayType);
                for (const YamlNode* item : node.items) {
                    auto v = convert(*item, depth + 1);
                    if (!v) return v.error();
                    arr.PushBack(std::move(*v), alloc_);
                }
                return arr;
            }
            case YamlNode::Kind::Map: {
                if (depth >= kMaxDepth) return too_deep(node);
                Value obj(rapidjson::kObjectType);
                std::set<std::string> keys;
                if (auto st = add_members(node, obj, keys, depth); !st) return st.error();
                return obj;
            }
        }
        return error(node, "unsupported YAML node");
    }

private:
    static Error error(const YamlNode& node, std::string message) {
        if (node.mark.is_null()) return make_error(EINVAL, std::move(message));
        return make_error(EINVAL, "line " + std::to_string(node.mark.line + 1) + ", column " +
                                      std::to_string(node.mark.column + 1) + ": " + message);
    }

    static Error too_deep(const YamlNode& node) {
        return error(node, "nesting deeper than " + std::to_string(kMaxDepth) + " levels");
    }

    static bool is_merge_key(const YamlNode& key) {
        return key.kind == YamlNode::Kind::Scalar && key.tag == "?" && key.value == "<<";
    }

    // Explicit keys first; then YAML merge keys ("<<: *base" or "<<: [*a, *b]")
    // add the keys not already present, earlier merge sources first.
    Status add_members(const YamlNode& map, Value& obj, std::set<std::string>& keys, int depth) {
        std::vector<const YamlNode*> merges;
        for (size_t i = 0; i + 1 < map.items.size(); i += 2) {
            const YamlNode& k = *map.items[i];
            const YamlNode& v = *map.items[i + 1];
            if (is_merge_key(k)) {
                merges.push_back(&v);
                continue;
            }
            auto key = key_string(k);
            if (!key) return key.error();
            if (!keys.insert(*key).second) return error(k, "duplicate key " + quoted(*key));
            auto value = convert(v, depth + 1);
            if (!value) return value.error();
            obj.AddMember(Value(key->data(), static_cast<rapidjson::SizeType>(key->size()), alloc_), std::move(*value),
                          alloc_);
        }
        for (const YamlNode* merge : merges) {
            std::vector<const YamlNode*> sources;
            if (merge->kind == YamlNode::Kind::Map)
                sources.push_back(merge);
            else if (merge->kind == YamlNode::Kind::Sequence)
                sources = merge->items;
            else
                return error(*merge, "map merge requires a map or a sequence of maps as the value");
            for (const YamlNode* source : sources) {
                if (source->kind != YamlNode::Kind::Map)
                    return error(*source, "map merge requires a map or a sequence of maps as the value");
                if (++nodes_ > kMaxNodes) return error(*source, "too many values");
                if (depth + 1 >= kMaxDepth) return too_deep(*source);
                Value merged(rapidjson::kObjectType);
                std::set<std::string> merged_keys;
                if (auto st = add_members(*source, merged, merged_keys, depth + 1); !st) return st;
                // Index loop: RapidJSON's mutable member iterators trip clang's C++20 operator rewriting.
                for (rapidjson::SizeType i = 0; i < merged.MemberCount(); ++i) {
                    auto m = merged.MemberBegin() + i;
                    std::string key(as_view(m->name));
                    if (keys.insert(key).second) obj.AddMember(m->name, m->value, alloc_);  // moves
                }
            }
        }
        return {};
    }

    // Map keys become strings as sigs.k8s.io/yaml does: ints in decimal,
    // booleans "true"/"false"; null and non-scalar keys are errors.
    Result<std::string> key_string(const YamlNode& key) {
        if (key.kind == YamlNode::Kind::Null) return error(key, "map key must not be null");
        if (key.kind != YamlNode::Kind::Scalar) return error(key, "map key must be a scalar");
        auto v = scalar(key);
        if (!v) return v.error();
        if (v->IsString()) return std::string(as_view(*v));
        if (v->IsBool()) return std::string(v->GetBool() ? "true" : "false");
        if (v->IsInt64()) return std::to_string(v->GetInt64());
        if (v->IsUint64()) return std::to_string(v->GetUint64());
        if (v->IsDouble()) {
            std::array<char, 64> buf{};
            auto [end, ec] = std::to_chars(buf.data(), buf.data() + buf.size(), v->GetDouble());
            return std::string(buf.data(), end);
        }
        return error(key, "map key must not be null");
    }

    Value string_value(const std::string& s) {
        return Value(s.data(), static_cast<rapidjson::SizeType>(s.size()), alloc_);
    }

    Result<Value> scalar(const YamlNode& node) {
        const std::string& text = node.value;
        const std::string& tag = node.tag;
        if (tag == "?") return plain(node, text);
        if (tag == "!" || tag == "tag:yaml.org,2002:str") return string_value(text);
        if (tag == "tag:yaml.org,2002:null") {
            if (!one_of(text, kNullWords)) return error(node, "cannot decode " + quoted(text) + " as !!null");
            return Value(rapidjson::kNullType);
        }
        if (tag == "tag:yaml.org,2002:bool") {
            if (one_of(text, kTrueWords)) return Value(true);
            if (one_of(text, kFalseWords)) return Value(false);
            return error(node, "cannot decode " + quoted(text) + " as !!bool");
        }
        if (tag == "tag:yaml.org,2002:int" || tag == "tag:yaml.org,2002:float") {
            auto v = plain(node, text);
            if (!v) return v;
            if (!v->IsNumber())
                return error(node, "cannot decode " + quoted(text) + " as !!" + tag.substr(tag.rfind(':') + 1));
            return v;
        }
        return string_value(text);  // other tags: the text, as go-yaml does
    }

    // Resolution of an untagged plain scalar (go-yaml v2 resolve()).
    Result<Value> plain(const YamlNode& node, const std::string& text) {
        if (one_of(text, kNullWords)) return Value(rapidjson::kNullType);
        if (one_of(text, kTrueWords)) return Value(true);
        if (one_of(text, kFalseWords)) return Value(false);
        if (one_of(text, kNonFiniteWords)) return error(node, quoted(text) + " cannot be represented in JSON");
        char c = text.empty() ? '\0' : text[0];
        if ((c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.') {
            std::string digits;
            for (char ch : text)
                if (ch != '_') digits += ch;
            if (auto n = parse_go_int(digits)) {
                if (const auto* i = std::get_if<int64_t>(&*n)) return Value(*i);
                return Value(std::get<uint64_t>(*n));
            }
            if (is_yaml_float(digits)) {
                std::string_view s = digits;
                if (s[0] == '+') s.remove_prefix(1);
                double d = 0;
                auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), d);
                if (ec == std::errc() && end == s.data() + s.size()) return float_value(d);
            }
        }
        return string_value(text);
    }

    Alloc& alloc_;
    size_t nodes_ = 0;
};

// Walks a parsed JSON value to enforce the nesting and size bounds.
Status check_bounds(const Value& v, int depth, size_t& nodes) {
    if (++nodes > kMaxNodes) return make_error(EINVAL, "more than " + std::to_string(kMaxNodes) + " values");
    if (v.IsArray() || v.IsObject()) {
        if (depth >= kMaxDepth)
            return make_error(EINVAL, "nesting deeper than " + std::to_string(kMaxDepth) + " levels");
        if (v.IsArray()) {
            for (const Value& item : v.GetArray())
                if (auto st = check_bounds(item, depth + 1, nodes); !st) return st;
        } else {
            for (const auto& m : v.GetObject())
                if (auto st = check_bounds(m.value, depth + 1, nodes); !st) return st;
        }
    }
    return {};
}

// kubectl treats input whose first non-space byte is '{' as a JSON stream.
bool looks_like_json(std::string_view text) {
    for (char c : text) {
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f') continue;
        return c == '{';
    }
    return false;
}

// Parses one or more concatenated JSON values into an array.
Result<rapidjson::Document> json_stream(std::string_view text) {
    if (auto st = prescan(text); !st) return st.error();
    rapidjson::Document out(rapidjson::kArrayType);
    rapidjson::MemoryStream stream(text.data(), text.size());
    size_t nodes = 0;
    while (true) {
        while (stream.Peek() == ' ' || stream.Peek() == '\t' || stream.Peek() == '\n' || stream.Peek() == '\r')
            stream.Take();
        if (stream.Tell() >= text.size()) break;
        size_t start = stream.Tell();
        rapidjson::Document doc(&out.GetAllocator());
        doc.ParseStream<rapidjson::kParseStopWhenDoneFlag | rapidjson::kParseIterativeFlag>(stream);
        if (doc.HasParseError())
            return make_error(EINVAL, "document " + std::to_string(out.Size() + 1) + ": invalid JSON at offset " +
                                          std::to_string(start + doc.GetErrorOffset()) + ": " +
                                          rapidjson::GetParseError_En(doc.GetParseError()));
        if (auto st = check_bounds(doc, 0, nodes); !st)
            return make_error(EINVAL, "document " + std::to_string(out.Size() + 1) + ": " + st.error().message);
        out.PushBack(std::move(static_cast<Value&>(doc)), out.GetAllocator());
    }
    return out;
}

// ===========================================================================
// Typed decoding of JSON, with Go encoding/json semantics: a field set to
// null is the same as an absent field; numbers must be integers where the
// Kubernetes type is an integer.

// A field of an object: nullptr when absent or null.
const Value* field(const Value& obj, const char* key) {
    auto it = obj.FindMember(key);
    if (it == obj.MemberEnd() || it->value.IsNull()) return nullptr;
    return &it->value;
}

const char* type_name(const Value& v) {
    switch (v.GetType()) {
        case rapidjson::kNullType:
            return "null";
        case rapidjson::kFalseType:
        case rapidjson::kTrueType:
            return "a boolean";
        case rapidjson::kObjectType:
            return "an object";
        case rapidjson::kArrayType:
            return "a list";
        case rapidjson::kStringType:
            return "a string";
        case rapidjson::kNumberType:
            return v.IsDouble() ? "a floating-point number" : "a number";
    }
    return "a value";
}

Error wrong_type(std::string_view path, std::string_view expected, const Value& got) {
    return invalid(path, "must be " + std::string(expected) + ", not " + type_name(got));
}

Result<std::string> string_field(const Value& obj, const char* key, std::string_view path) {
    const Value* v = field(obj, key);
    if (v == nullptr) return std::string();
    if (!v->IsString()) return wrong_type(child(path, key), "a string", *v);
    return std::string(as_view(*v));
}

Result<std::optional<int32_t>> int32_field(const Value& obj, const char* key, std::string_view path) {
    const Value* v = field(obj, key);
    if (v == nullptr) return std::optional<int32_t>();
    if (!v->IsNumber() || v->IsDouble()) return wrong_type(child(path, key), "an integer", *v);
    if (!v->IsInt()) return invalid(child(path, key), "must be a 32-bit integer");
    return std::optional<int32_t>(v->GetInt());
}

Result<bool> bool_field(const Value& obj, const char* key, std::string_view path) {
    const Value* v = field(obj, key);
    if (v == nullptr) return false;
    if (!v->IsBool()) return wrong_type(child(path, key), "a boolean", *v);
    return v->GetBool();
}

// An optional object-valued field: nullptr when absent.
Result<const Value*> object_field(const Value& obj, const char* key, std::string_view path) {
    const Value* v = field(obj, key);
    if (v != nullptr && !v->IsObject()) return wrong_type(child(path, key), "an object", *v);
    return v;
}

// An optional list-valued field: nullptr when absent.
Result<const Value*> array_field(const Value& obj, const char* key, std::string_view path) {
    const Value* v = field(obj, key);
    if (v != nullptr && !v->IsArray()) return wrong_type(child(path, key), "a list", *v);
    return v;
}

Result<cache::Labels> string_map_field(const Value& obj, const char* key, std::string_view path) {
    cache::Labels out;
    auto m = object_field(obj, key, path);
    if (!m) return m.error();
    if (*m == nullptr) return out;
    for (const auto& member : (*m)->GetObject()) {
        std::string name(as_view(member.name));
        if (!member.value.IsString()) return wrong_type(child(child(path, key), name), "a string", member.value);
        out.emplace(std::move(name), std::string(as_view(member.value)));
    }
    return out;
}

Result<std::vector<std::string>> string_list_field(const Value& obj, const char* key, std::string_view path) {
    std::vector<std::string> out;
    auto list = array_field(obj, key, path);
    if (!list) return list.error();
    if (*list == nullptr) return out;
    for (rapidjson::SizeType i = 0; i < (*list)->Size(); ++i) {
        const Value& item = (**list)[i];
        if (!item.IsString()) return wrong_type(indexed(child(path, key), i), "a string", item);
        out.emplace_back(as_view(item));
    }
    return out;
}

// Calls fn(item, item_path) for every element of an optional list field.
template <typename Fn>
Status for_each_item(const Value& obj, const char* key, std::string_view path, Fn&& fn) {
    auto list = array_field(obj, key, path);
    if (!list) return list.error();
    if (*list == nullptr) return {};
    for (rapidjson::SizeType i = 0; i < (*list)->Size(); ++i)
        if (auto st = fn((**list)[i], indexed(child(path, key), i)); !st) return st;
    return {};
}

struct Metadata {
    std::string name;
    std::string namespace_;
    std::string uid;
    cache::Labels labels;
};

Result<Metadata> decode_metadata(const Value& obj) {
    Metadata md;
    auto m = object_field(obj, "metadata", "");
    if (!m) return m.error();
    if (*m == nullptr) return invalid("metadata.name", "required value");
    const Value& meta = **m;
    auto name = string_field(meta, "name", "metadata");
    if (!name) return name.error();
    if (name->empty()) return invalid("metadata.name", "required value");
    auto ns = string_field(meta, "namespace", "metadata");
    if (!ns) return ns.error();
    auto uid = string_field(meta, "uid", "metadata");
    if (!uid) return uid.error();
    auto labels = string_map_field(meta, "labels", "metadata");
    if (!labels) return labels.error();
    md.name = std::move(*name);
    md.namespace_ = ns->empty() ? std::string(cache::kDefaultNamespace) : std::move(*ns);
    md.uid = std::move(*uid);
    md.labels = std::move(*labels);
    return md;
}

Result<cache::LabelSelector> decode_selector(const Value& v, std::string_view path) {
    if (!v.IsObject()) return wrong_type(path, "an object", v);
    cache::LabelSelector sel;
    auto labels = string_map_field(v, "matchLabels", path);
    if (!labels) return labels.error();
    sel.match_labels = std::move(*labels);
    auto st = for_each_item(v, "matchExpressions", path, [&](const Value& item, const std::string& p) -> Status {
        if (!item.IsObject()) return wrong_type(p, "an object", item);
        cache::Requirement r;
        auto key = string_field(item, "key", p);
        if (!key) return key.error();
        if (key->empty()) return invalid(child(p, "key"), "required value");
        auto op = string_field(item, "operator", p);
        if (!op) return op.error();
        if (op->empty()) return invalid(child(p, "operator"), "required value");
        auto parsed = cache::parse_operator(*op);
        if (!parsed)
            return invalid(child(p, "operator"),
                           "unsupported value " + quoted(*op) +
                               ": supported values: \"DoesNotExist\", \"Exists\", \"In\", \"NotIn\"");
        auto values = string_list_field(item, "values", p);
        if (!values) return values.error();
        r.key = std::move(*key);
        r.op = *parsed;
        r.values = std::move(*values);
        sel.match_expressions.push_back(std::move(r));
        return {};
    });
    if (!st) return st.error();
    return sel;
}

Result<std::optional<cache::LabelSelector>> optional_selector(const Value& obj, const char* key,
                                                              std::string_view path) {
    const Value* v = field(obj, key);
    if (v == nullptr) return std::optional<cache::LabelSelector>();
    auto sel = decode_selector(*v, child(path, key));
    if (!sel) return sel.error();
    return std::optional<cache::LabelSelector>(std::move(*sel));
}

Result<cache::Cidr> decode_cidr(const Value& v, std::string_view path) {
    if (!v.IsString()) return wrong_type(path, "a string", v);
    auto c = cache::parse_cidr(as_view(v));
    if (!c) return invalid(path, c.error().message);
    return c;
}

Result<cache::Peer> decode_peer(const Value& v, std::string_view path) {
    if (!v.IsObject()) return wrong_type(path, "an object", v);
    cache::Peer peer;
    auto pods = optional_selector(v, "podSelector", path);
    if (!pods) return pods.error();
    auto namespaces = optional_selector(v, "namespaceSelector", path);
    if (!namespaces) return namespaces.error();
    peer.pod_selector = std::move(*pods);
    peer.namespace_selector = std::move(*namespaces);
    auto block = object_field(v, "ipBlock", path);
    if (!block) return block.error();
    if (*block != nullptr) {
        std::string p = child(path, "ipBlock");
        const Value* cidr = field(**block, "cidr");
        if (cidr == nullptr) return invalid(child(p, "cidr"), "required value");
        auto parsed = decode_cidr(*cidr, child(p, "cidr"));
        if (!parsed) return parsed.error();
        cache::IpBlock ib{*parsed, {}};
        auto st = for_each_item(**block, "except", p, [&](const Value& item, const std::string& ip) -> Status {
            auto e = decode_cidr(item, ip);
            if (!e) return e.error();
            ib.except.push_back(*e);
            return {};
        });
        if (!st) return st.error();
        peer.ip_block = std::move(ib);
    }
    return peer;
}

Result<cache::PolicyPort> decode_policy_port(const Value& v, std::string_view path) {
    if (!v.IsObject()) return wrong_type(path, "an object", v);
    cache::PolicyPort port;
    if (const Value* proto = field(v, "protocol")) {
        if (!proto->IsString()) return wrong_type(child(path, "protocol"), "a string", *proto);
        auto parsed = cache::parse_protocol(as_view(*proto));
        if (!parsed)
            return invalid(child(path, "protocol"), "unsupported value " + quoted(as_view(*proto)) +
                                                        ": supported values: \"SCTP\", \"TCP\", \"UDP\"");
        port.protocol = *parsed;
    }
    if (const Value* p = field(v, "port")) {
        if (p->IsString())
            port.port = std::string(as_view(*p));
        else if (p->IsInt())
            port.port = static_cast<int32_t>(p->GetInt());
        else
            return invalid(child(path, "port"), "must be an integer or a string");
    }
    auto end = int32_field(v, "endPort", path);
    if (!end) return end.error();
    port.end_port = *end;
    return port;
}

// Reads `peers_key` ("from"/"to") and "ports" of one rule.
template <typename Rule>
Result<Rule> decode_rule(const Value& v, std::string_view path, const char* peers_key,
                         std::optional<std::vector<cache::Peer>> Rule::*peers) {
    if (!v.IsObject()) return wrong_type(path, "an object", v);
    Rule rule;
    auto list = array_field(v, peers_key, path);
    if (!list) return list.error();
    if (*list != nullptr) {
        rule.*peers = std::vector<cache::Peer>{};
        auto st = for_each_item(v, peers_key, path, [&](const Value& item, const std::string& p) -> Status {
            auto peer = decode_peer(item, p);
            if (!peer) return peer.error();
            (rule.*peers)->push_back(std::move(*peer));
            return {};
        });
        if (!st) return st.error();
    }
    auto ports = array_field(v, "ports", path);
    if (!ports) return ports.error();
    if (*ports != nullptr) {
        rule.ports = std::vector<cache::PolicyPort>{};
        auto st = for_each_item(v, "ports", path, [&](const Value& item, const std::string& p) -> Status {
            auto port = decode_policy_port(item, p);
            if (!port) return port.error();
            rule.ports->push_back(std::move(*port));
            return {};
        });
        if (!st) return st.error();
    }
    return rule;
}

// Validation errors from the object model already carry the field path.
template <typename T>
Result<T> validated(T obj) {
    if (auto st = cache::validate(obj); !st) return st.error();
    return obj;
}

// ===========================================================================
// Documents: kinds, lists, and the file as a whole

struct KindSpec {
    std::string_view kind;
    std::string_view api_version;
    std::string_view item_kind;  // for lists: the kind of the items ("" for v1 List)
    bool is_list;
};

constexpr std::array kKnownKinds = {
    KindSpec{"Namespace", "v1", "", false},
    KindSpec{"Pod", "v1", "", false},
    KindSpec{"NetworkPolicy", "networking.k8s.io/v1", "", false},
    KindSpec{"Service", "v1", "", false},
    KindSpec{"List", "v1", "", true},
    KindSpec{"NamespaceList", "v1", "Namespace", true},
    KindSpec{"PodList", "v1", "Pod", true},
    KindSpec{"NetworkPolicyList", "networking.k8s.io/v1", "NetworkPolicy", true},
    KindSpec{"ServiceList", "v1", "Service", true},
};

const KindSpec* find_kind(std::string_view kind) {
    for (const KindSpec& k : kKnownKinds)
        if (k.kind == kind) return &k;
    return nullptr;
}

class DocumentDecoder {
public:
    DocumentDecoder(std::vector<Object>& objects, std::vector<std::string>* ignored, std::string prefix)
        : objects_(objects), ignored_(ignored), prefix_(std::move(prefix)) {}

    // `path` is "" for a document, "items[i]" (possibly nested) for list items.
    // `default_kind`/`default_api_version` fill in missing fields of items of typed lists.
    Status decode(const Value& v, const std::string& path, std::string_view default_kind = {},
                  std::string_view default_api_version = {}) {
        if (!v.IsObject()) return wrong_type(path, "an object (a Kubernetes resource)", v);
        auto kind = string_field(v, "kind", path);
        if (!kind) return kind.error();
        auto api_version = string_field(v, "apiVersion", path);
        if (!api_version) return api_version.error();
        if (kind->empty()) kind = std::string(default_kind);
        if (api_version->empty()) api_version = std::string(default_api_version);
        if (kind->empty()) return invalid(child(path, "kind"), "required value");
        if (api_version->empty()) return invalid(child(path, "apiVersion"), "required value");

        const KindSpec* spec = find_kind(*kind);
        if (spec == nullptr) {
            note_ignored(v, path, *kind, *api_version);
            return {};
        }
        if (*api_version != spec->api_version)
            return invalid(child(path, "apiVersion"), "kind " + *kind + " is served as " + quoted(spec->api_version) +
                                                          ", not " + quoted(*api_version));
        if (spec->is_list) {
            return for_each_item(v, "items", path, [&](const Value& item, const std::string& p) {
                return decode(item, p, spec->item_kind, spec->item_kind.empty() ? "" : spec->api_version);
            });
        }
        Result<Object> obj = decode_object(v, *kind);
        if (!obj) return make_error(EINVAL, path.empty() ? obj.error().message : path + "." + obj.error().message);
        objects_.push_back(std::move(*obj));
        return {};
    }

private:
    static Result<Object> decode_object(const Value& v, std::string_view kind) {
        auto wrap = [](auto r) -> Result<Object> {
            if (!r) return r.error();
            return Object(std::move(*r));
        };
        if (kind == "Namespace") return wrap(decode_namespace(v));
        if (kind == "Pod") return wrap(decode_pod(v));
        if (kind == "Service") return wrap(decode_service(v));
        return wrap(decode_network_policy(v));
    }

    void note_ignored(const Value& v, const std::string& path, const std::string& kind,
                      const std::string& api_version) {
        if (ignored_ == nullptr) return;
        std::string name = "(unnamed)";
        if (const Value* meta = field(v, "metadata"); meta != nullptr && meta->IsObject()) {
            const Value* n = field(*meta, "name");
            const Value* ns = field(*meta, "namespace");
            if (n != nullptr && n->IsString()) {
                name = std::string(as_view(*n));
                if (ns != nullptr && ns->IsString() && ns->GetStringLength() > 0)
                    name = std::string(as_view(*ns)) + "/" + name;
            }
        }
        std::string line = prefix_;
        if (!path.empty()) line += ": " + path;
        ignored_->push_back(line + ": " + api_version + " " + kind + " " + name);
    }

    std::vector<Object>& objects_;
    std::vector<std::string>* ignored_;
    std::string prefix_;
};

}  // namespace

// ===========================================================================
// Public API

Result<rapidjson::Document> yaml_to_json(std::string_view text) {
    rapidjson::Document out(rapidjson::kArrayType);
    auto yaml_error = [](const YAML::Mark& mark, const std::string& msg) {
        if (mark.is_null()) return make_error(EINVAL, "invalid YAML: " + msg);
        return make_error(EINVAL, "invalid YAML at line " + std::to_string(mark.line + 1) + ", column " +
                                      std::to_string(mark.column + 1) + ": " + msg);
    };
    if (auto st = prescan(text); !st) return st.error();
    try {
        std::istringstream in{std::string(text)};
        YAML::Parser parser(in);
        TreeBuilder builder;
        YamlToJson converter(out.GetAllocator());
        int last_start = -1;
        while (parser.HandleNextDocument(builder)) {
            if (builder.document_start().pos <= last_start)
                return yaml_error(builder.document_start(), "malformed input (the parser does not advance)");
            last_start = builder.document_start().pos;
            Value v(rapidjson::kNullType);
            if (const YamlNode* root = builder.root()) {
                auto converted = converter.convert(*root, 0);
                if (!converted) {
                    Error e = converted.error();
                    e.message = "document " + std::to_string(out.Size() + 1) + ": " + e.message;
                    return e;
                }
                v = std::move(*converted);
            }
            out.PushBack(std::move(v), out.GetAllocator());
        }
    } catch (const YAML::DeepRecursion& e) {  // its message text is wrong in yaml-cpp 0.7
        return yaml_error(e.mark, "nesting too deep");
    } catch (const TooManyNodes&) {
        return make_error(EINVAL, "more than " + std::to_string(kMaxNodes) + " YAML nodes");
    } catch (const YAML::Exception& e) {
        return yaml_error(e.mark, e.msg);
    } catch (const std::exception& e) {
        return make_error(EINVAL, std::string("invalid YAML: ") + e.what());
    }
    return out;
}

Result<cache::Namespace> decode_namespace(const Value& obj) {
    if (!obj.IsObject()) return wrong_type("", "an object", obj);
    auto md = decode_metadata(obj);
    if (!md) return md.error();
    cache::Namespace ns{std::move(md->name), std::move(md->labels)};
    ns.labels[std::string(cache::kNamespaceNameLabel)] = ns.name;  // as the API server does
    return validated(std::move(ns));
}

Result<cache::Pod> decode_pod(const Value& obj) {
    if (!obj.IsObject()) return wrong_type("", "an object", obj);
    auto md = decode_metadata(obj);
    if (!md) return md.error();
    cache::Pod pod;
    pod.namespace_ = std::move(md->namespace_);
    pod.name = std::move(md->name);
    pod.uid = std::move(md->uid);
    pod.labels = std::move(md->labels);
    // The managing controller (for workload-level metric labels only): read
    // leniently, a malformed entry is ignored rather than the pod refused.
    if (const Value* meta = json::find(obj, "metadata"); meta != nullptr && meta->IsObject())
        if (const Value* refs = json::find(*meta, "ownerReferences"); refs != nullptr && refs->IsArray())
            for (const Value& ref : refs->GetArray()) {
                if (!ref.IsObject()) continue;
                const Value* controller = json::find(ref, "controller");
                const Value* kind = json::find(ref, "kind");
                const Value* name = json::find(ref, "name");
                if (controller == nullptr || !controller->IsBool() || !controller->GetBool() || kind == nullptr ||
                    !kind->IsString() || name == nullptr || !name->IsString())
                    continue;
                pod.owner_kind.assign(kind->GetString(), kind->GetStringLength());
                pod.owner_name.assign(name->GetString(), name->GetStringLength());
                break;
            }

    auto spec = object_field(obj, "spec", "");
    if (!spec) return spec.error();
    if (*spec != nullptr) {
        const Value& s = **spec;
        auto node = string_field(s, "nodeName", "spec");
        if (!node) return node.error();
        pod.node_name = std::move(*node);
        auto host = bool_field(s, "hostNetwork", "spec");
        if (!host) return host.error();
        pod.host_network = *host;
        auto st = for_each_item(s, "containers", "spec", [&](const Value& c, const std::string& cpath) -> Status {
            if (!c.IsObject()) return wrong_type(cpath, "an object", c);
            return for_each_item(c, "ports", cpath, [&](const Value& p, const std::string& ppath) -> Status {
                if (!p.IsObject()) return wrong_type(ppath, "an object", p);
                api::ContainerPort cp;
                auto name = string_field(p, "name", ppath);
                if (!name) return name.error();
                auto number = int32_field(p, "containerPort", ppath);
                if (!number) return number.error();
                if (!*number) return invalid(child(ppath, "containerPort"), "required value");
                auto proto = string_field(p, "protocol", ppath);
                if (!proto) return proto.error();
                cp.name = std::move(*name);
                cp.port = **number;
                if (!proto->empty()) cp.protocol = std::move(*proto);
                // Checked here for a precise path; validate(Pod) checks again without one.
                if (cp.port < 1 || cp.port > 65535)
                    return invalid(child(ppath, "containerPort"), "invalid value " + std::to_string(cp.port) +
                                                                      ": must be between 1 and 65535, inclusive");
                if (!cache::parse_protocol(cp.protocol))
                    return invalid(child(ppath, "protocol"), "unsupported value " + quoted(cp.protocol) +
                                                                 ": supported values: \"SCTP\", \"TCP\", \"UDP\"");
                if (!cp.name.empty() && !cache::is_port_name(cp.name))
                    return invalid(child(ppath, "name"),
                                   "invalid value " + quoted(cp.name) +
                                       ": must be a valid port name (at most 15 characters: lower "
                                       "case alphanumerics and '-', at least one letter)");
                pod.container_ports.push_back(std::move(cp));
                return {};
            });
        });
        if (!st) return st.error();
    }

    auto status = object_field(obj, "status", "");
    if (!status) return status.error();
    if (*status != nullptr) {
        const Value& s = **status;
        auto phase = string_field(s, "phase", "status");
        if (!phase) return phase.error();
        pod.phase = std::move(*phase);
        auto st = for_each_item(s, "podIPs", "status", [&](const Value& item, const std::string& p) -> Status {
            if (!item.IsObject()) return wrong_type(p, "an object", item);
            auto ip = string_field(item, "ip", p);
            if (!ip) return ip.error();
            if (!cache::is_ip_address(*ip))
                return invalid(child(p, "ip"), "invalid value " + quoted(*ip) + ": must be a valid IP address");
            pod.pod_ips.push_back(std::move(*ip));
            return {};
        });
        if (!st) return st.error();
        auto ip = string_field(s, "podIP", "status");
        if (!ip) return ip.error();
        if (pod.pod_ips.empty() && !ip->empty()) {
            if (!cache::is_ip_address(*ip))
                return invalid("status.podIP", "invalid value " + quoted(*ip) + ": must be a valid IP address");
            pod.pod_ips.push_back(std::move(*ip));
        }
    }
    return validated(std::move(pod));
}

Result<cache::NetworkPolicy> decode_network_policy(const Value& obj) {
    if (!obj.IsObject()) return wrong_type("", "an object", obj);
    auto md = decode_metadata(obj);
    if (!md) return md.error();
    cache::NetworkPolicy np;
    np.namespace_ = std::move(md->namespace_);
    np.name = std::move(md->name);

    std::vector<cache::PolicyType> explicit_types;
    auto spec = object_field(obj, "spec", "");
    if (!spec) return spec.error();
    if (*spec != nullptr) {
        const Value& s = **spec;
        if (const Value* sel = field(s, "podSelector")) {
            auto parsed = decode_selector(*sel, "spec.podSelector");
            if (!parsed) return parsed.error();
            np.pod_selector = std::move(*parsed);
        }
        auto types = string_list_field(s, "policyTypes", "spec");
        if (!types) return types.error();
        if (types->size() > 2) return invalid("spec.policyTypes", "may not specify more than two policyTypes");
        for (size_t i = 0; i < types->size(); ++i) {
            auto t = cache::parse_policy_type((*types)[i]);
            if (!t)
                return invalid(indexed("spec.policyTypes", i), "unsupported value " + quoted((*types)[i]) +
                                                                   ": supported values: \"Egress\", \"Ingress\"");
            explicit_types.push_back(*t);
        }
        auto st = for_each_item(s, "ingress", "spec", [&](const Value& item, const std::string& p) -> Status {
            auto rule = decode_rule<cache::IngressRule>(item, p, "from", &cache::IngressRule::from);
            if (!rule) return rule.error();
            np.ingress.push_back(std::move(*rule));
            return {};
        });
        if (!st) return st.error();
        st = for_each_item(s, "egress", "spec", [&](const Value& item, const std::string& p) -> Status {
            auto rule = decode_rule<cache::EgressRule>(item, p, "to", &cache::EgressRule::to);
            if (!rule) return rule.error();
            np.egress.push_back(std::move(*rule));
            return {};
        });
        if (!st) return st.error();
    }
    np.policy_types = cache::effective_policy_types(explicit_types, np.egress);
    np.policy_types_inferred = explicit_types.empty();
    return validated(std::move(np));
}

namespace {

// A list of IP addresses at `path` (each checked, with its index in errors).
Result<std::vector<std::string>> ip_list_field(const Value& obj, const char* key, std::string_view path) {
    auto ips = string_list_field(obj, key, path);
    if (!ips) return ips.error();
    for (size_t i = 0; i < ips->size(); ++i)
        if (!cache::is_ip_address((*ips)[i]))
            return invalid(indexed(child(path, key), i),
                           "invalid value " + quoted((*ips)[i]) + ": must be a valid IP address");
    return ips;
}

Result<cache::ServicePort> decode_service_port(const Value& v, std::string_view path) {
    if (!v.IsObject()) return wrong_type(path, "an object", v);
    cache::ServicePort sp;
    auto name = string_field(v, "name", path);
    if (!name) return name.error();
    sp.name = std::move(*name);
    auto proto = string_field(v, "protocol", path);
    if (!proto) return proto.error();
    if (!proto->empty()) {
        auto parsed = cache::parse_protocol(*proto);
        if (!parsed)
            return invalid(child(path, "protocol"), "unsupported value " + quoted(*proto) +
                                                        ": supported values: \"SCTP\", \"TCP\", \"UDP\"");
        sp.protocol = *parsed;
    }
    auto port = int32_field(v, "port", path);
    if (!port) return port.error();
    if (!*port) return invalid(child(path, "port"), "required value");
    if (**port < 1 || **port > 65535)
        return invalid(child(path, "port"),
                       "invalid value " + std::to_string(**port) + ": must be between 1 and 65535, inclusive");
    sp.port = static_cast<uint16_t>(**port);
    // IntOrString: a number, or the name of a container port. 0 and "" mean "the same as port".
    if (const Value* t = field(v, "targetPort")) {
        if (t->IsString()) {
            std::string_view name_or_empty = as_view(*t);
            if (!name_or_empty.empty() && !cache::is_port_name(name_or_empty))
                return invalid(child(path, "targetPort"),
                               "invalid value " + quoted(name_or_empty) +
                                   ": a string must be a port name of at most 15 characters: lower case "
                                   "alphanumerics and '-', at least one letter (a number is written unquoted)");
            sp.target_port = std::string(name_or_empty);
        } else if (t->IsInt()) {
            int n = t->GetInt();
            if (n < 0 || n > 65535)
                return invalid(child(path, "targetPort"),
                               "invalid value " + std::to_string(n) + ": must be between 1 and 65535, inclusive");
            if (n != 0) sp.target_port = std::to_string(n);
        } else {
            return invalid(child(path, "targetPort"), "must be an integer or a string");
        }
    }
    auto node_port = int32_field(v, "nodePort", path);
    if (!node_port) return node_port.error();
    if (*node_port && **node_port != 0) {
        if (**node_port < 1 || **node_port > 65535)
            return invalid(child(path, "nodePort"),
                           "invalid value " + std::to_string(**node_port) + ": must be between 1 and 65535, inclusive");
        sp.node_port = static_cast<uint16_t>(**node_port);
    }
    return sp;
}

}  // namespace

Result<cache::Service> decode_service(const Value& obj) {
    if (!obj.IsObject()) return wrong_type("", "an object", obj);
    auto md = decode_metadata(obj);
    if (!md) return md.error();
    cache::Service svc;
    svc.namespace_ = std::move(md->namespace_);
    svc.name = std::move(md->name);

    bool headless = false;
    auto spec = object_field(obj, "spec", "");
    if (!spec) return spec.error();
    if (*spec != nullptr) {
        const Value& s = **spec;
        auto type = string_field(s, "type", "spec");
        if (!type) return type.error();
        if (!type->empty()) {
            if (!cache::is_service_type(*type))
                return invalid("spec.type", "unsupported value " + quoted(*type) +
                                                ": supported values: \"ClusterIP\", \"ExternalName\", "
                                                "\"LoadBalancer\", \"NodePort\"");
            svc.type = std::move(*type);
        }
        // spec.clusterIPs (dual-stack) wins over spec.clusterIP; both may say "None" (headless).
        auto ip = string_field(s, "clusterIP", "spec");
        if (!ip) return ip.error();
        auto ips = string_list_field(s, "clusterIPs", "spec");
        if (!ips) return ips.error();
        if (!ips->empty() && !ip->empty() && (*ips)[0] != *ip)
            return invalid("spec.clusterIPs[0]", "invalid value " + quoted((*ips)[0]) + ": must match spec.clusterIP " +
                                                     quoted(*ip));
        bool dual = !ips->empty();
        std::vector<std::string> cluster_ips = dual           ? std::move(*ips)
                                               : ip->empty() ? std::vector<std::string>{}
                                                             : std::vector<std::string>{std::move(*ip)};
        if (!cluster_ips.empty() && cluster_ips[0] == "None") {
            if (cluster_ips.size() > 1)
                return invalid("spec.clusterIPs", "must have one entry when the first is \"None\" (headless)");
            headless = true;
            cluster_ips.clear();
        }
        for (size_t i = 0; i < cluster_ips.size(); ++i)
            if (!cache::is_ip_address(cluster_ips[i]))
                return invalid(dual ? indexed("spec.clusterIPs", i) : std::string("spec.clusterIP"),
                               "invalid value " + quoted(cluster_ips[i]) + ": must be a valid IP address or \"None\"");
        svc.cluster_ips = std::move(cluster_ips);
        auto external = ip_list_field(s, "externalIPs", "spec");
        if (!external) return external.error();
        svc.external_ips = std::move(*external);
        auto st = for_each_item(s, "ports", "spec", [&](const Value& item, const std::string& p) -> Status {
            auto port = decode_service_port(item, p);
            if (!port) return port.error();
            svc.ports.push_back(std::move(*port));
            return {};
        });
        if (!st) return st.error();
        // The API server drops an empty map: `selector: {}` reads back as no selector.
        auto selector = string_map_field(s, "selector", "spec");
        if (!selector) return selector.error();
        if (!selector->empty()) svc.selector = std::move(*selector);
        auto itp = string_field(s, "internalTrafficPolicy", "spec");
        if (!itp) return itp.error();
        if (!itp->empty() && *itp != "Cluster" && *itp != "Local")
            return invalid("spec.internalTrafficPolicy",
                           "unsupported value " + quoted(*itp) + ": supported values: \"Cluster\", \"Local\"");
        svc.internal_traffic_local = *itp == "Local";
    }
    if (svc.type == "ExternalName" && (headless || !svc.cluster_ips.empty()))
        return invalid("spec.clusterIP", "may not be set for type ExternalName");
    if (svc.ports.empty() && svc.type != "ExternalName" && !headless)
        return invalid("spec.ports", "required value");

    auto status = object_field(obj, "status", "");
    if (!status) return status.error();
    if (*status != nullptr) {
        auto lb = object_field(**status, "loadBalancer", "status");
        if (!lb) return lb.error();
        if (*lb != nullptr) {
            auto st = for_each_item(**lb, "ingress", "status.loadBalancer",
                                    [&](const Value& item, const std::string& p) -> Status {
                                        if (!item.IsObject()) return wrong_type(p, "an object", item);
                                        auto ip = string_field(item, "ip", p);  // may have a hostname only
                                        if (!ip) return ip.error();
                                        if (ip->empty()) return {};
                                        if (!cache::is_ip_address(*ip))
                                            return invalid(child(p, "ip"), "invalid value " + quoted(*ip) +
                                                                               ": must be a valid IP address");
                                        svc.load_balancer_ips.push_back(std::move(*ip));
                                        return {};
                                    });
            if (!st) return st.error();
        }
    }
    return validated(std::move(svc));
}

Result<std::vector<Object>> parse_manifest(std::string_view text, std::string_view filename,
                                           std::vector<std::string>* ignored) {
    std::string file(filename);
    if (text.size() > kMaxManifestBytes)
        return make_error(EFBIG, file + ": file too large (" + std::to_string(text.size()) + " bytes, limit " +
                                     std::to_string(kMaxManifestBytes) + ")");
    auto docs = looks_like_json(text) ? json_stream(text) : yaml_to_json(text);
    if (!docs) return make_error(EINVAL, file + ": " + docs.error().message);

    std::vector<Object> objects;
    std::vector<std::string> ignored_here;
    for (rapidjson::SizeType i = 0; i < docs->Size(); ++i) {
        const Value& doc = (*docs)[i];
        if (doc.IsNull()) continue;  // empty document
        std::string where = "document " + std::to_string(i + 1);
        DocumentDecoder decoder(objects, &ignored_here, where);
        if (auto st = decoder.decode(doc, ""); !st)
            return make_error(EINVAL, file + ": " + where + ": " + st.error().message);
    }
    if (ignored != nullptr) ignored->insert(ignored->end(), ignored_here.begin(), ignored_here.end());
    return objects;
}

}  // namespace signet::source
