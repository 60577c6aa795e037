// JSON helpers over RapidJSON: parsing with a readable error, serialisation,
// and typed field access that reports what was wrong and where.
#pragma once

#include <rapidjson/document.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "signet/result.h"

namespace signet::json {

// Parses text into a document. The error message names the offset and reason.
Result<rapidjson::Document> parse(std::string_view text);

std::string to_string(const rapidjson::Value& v, bool pretty = false);

// Field access. `where` is a path prefix used in error messages ("spec.ingress[0]").
const rapidjson::Value* find(const rapidjson::Value& obj, const char* key);
Result<std::string> get_string(const rapidjson::Value& obj, const char* key, std::string_view where);
std::optional<std::string> opt_string(const rapidjson::Value& obj, const char* key);
// A string map such as metadata.labels: every value must be a string.
Result<std::map<std::string, std::string>> get_string_map(const rapidjson::Value& obj, const char* key,
                                                          std::string_view where);

// Builds a string value owned by `alloc`.
inline rapidjson::Value str(std::string_view s, rapidjson::Document::AllocatorType& alloc) {
    return rapidjson::Value(s.data(), static_cast<rapidjson::SizeType>(s.size()), alloc);
}

}  // namespace signet::json
