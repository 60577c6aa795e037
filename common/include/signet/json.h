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

// The deepest nesting of objects and arrays signet accepts in JSON it reads
// (API bodies, CNI configuration, watch events, API answers). Real objects
// stay far below it (a Pod with managedFields is about 20 deep); deeper text
// is refused before it is parsed, so neither the parser nor code that walks,
// copies or writes the document later recurses without bound.
inline constexpr int kMaxDepth = 128;

// EINVAL when `text` nests objects and arrays deeper than `max_depth`
// (brackets inside strings do not count). One pass, no allocation.
Status check_depth(std::string_view text, int max_depth = kMaxDepth);

// Parses text into a document (iteratively, after check_depth). The error
// message names the offset and reason.
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
