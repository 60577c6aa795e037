#include "signet/json.h"

#include <cerrno>

#include <rapidjson/error/en.h>
#include <rapidjson/prettywriter.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

namespace signet::json {

Status check_depth(std::string_view text, int max_depth) {
    int depth = 0;
    bool in_string = false, escape = false;
    for (size_t i = 0; i < text.size(); ++i) {
        const char c = text[i];
        if (in_string) {
            if (escape) escape = false;
            else if (c == '\\') escape = true;
            else if (c == '"') in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == '{' || c == '[') {
            if (++depth > max_depth)
                return make_error(EINVAL, "JSON nested deeper than " + std::to_string(max_depth) + " levels at offset " +
                                              std::to_string(i));
        } else if (c == '}' || c == ']') {
            --depth;
        }
    }
    return {};
}

Result<rapidjson::Document> parse(std::string_view text) {
    if (auto st = check_depth(text); !st) return st.error();
    rapidjson::Document doc;
    doc.Parse<rapidjson::kParseIterativeFlag>(text.data(), text.size());
    if (doc.HasParseError()) {
        return make_error(6, std::string("invalid JSON at offset ") + std::to_string(doc.GetErrorOffset()) + ": " +
                                 rapidjson::GetParseError_En(doc.GetParseError()));
    }
    return doc;
}

std::string to_string(const rapidjson::Value& v, bool pretty) {
    rapidjson::StringBuffer buf;
    if (pretty) {
        rapidjson::PrettyWriter<rapidjson::StringBuffer> w(buf);
        w.SetIndent(' ', 2);
        v.Accept(w);
    } else {
        rapidjson::Writer<rapidjson::StringBuffer> w(buf);
        v.Accept(w);
    }
    return std::string(buf.GetString(), buf.GetSize());
}

const rapidjson::Value* find(const rapidjson::Value& obj, const char* key) {
    if (!obj.IsObject()) return nullptr;
    auto it = obj.FindMember(key);
    if (it == obj.MemberEnd()) return nullptr;
    return &it->value;
}

Result<std::string> get_string(const rapidjson::Value& obj, const char* key, std::string_view where) {
    const rapidjson::Value* v = find(obj, key);
    std::string path = where.empty() ? std::string(key) : std::string(where) + "." + key;
    if (v == nullptr) return make_error(0, path + ": required field missing");
    if (!v->IsString()) return make_error(0, path + ": must be a string");
    return std::string(v->GetString(), v->GetStringLength());
}

std::optional<std::string> opt_string(const rapidjson::Value& obj, const char* key) {
    const rapidjson::Value* v = find(obj, key);
    if (v == nullptr || !v->IsString()) return std::nullopt;
    return std::string(v->GetString(), v->GetStringLength());
}

Result<std::map<std::string, std::string>> get_string_map(const rapidjson::Value& obj, const char* key,
                                                          std::string_view where) {
    std::map<std::string, std::string> out;
    const rapidjson::Value* v = find(obj, key);
    std::string path = where.empty() ? std::string(key) : std::string(where) + "." + key;
    if (v == nullptr || v->IsNull()) return out;
    if (!v->IsObject()) return make_error(0, path + ": must be a map of strings");
    for (auto it = v->MemberBegin(); it != v->MemberEnd(); ++it) {
        if (!it->value.IsString())
            return make_error(0, path + "." + it->name.GetString() + ": must be a string");
        out.emplace(std::string(it->name.GetString(), it->name.GetStringLength()),
                    std::string(it->value.GetString(), it->value.GetStringLength()));
    }
    return out;
}

}  // namespace signet::json
