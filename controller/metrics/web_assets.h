// The graph page's files, embedded at build time: web/embed.py turns
// web/index.html, web/app.js and the graph library's dist file (pinned in
// web/package-lock.json) into web_assets.cpp (see meson.build).
#pragma once

#include <string_view>

namespace signet::metrics::web {

struct Asset {
    std::string_view name;          // "index.html", "app.js", "lib.js"
    std::string_view content_type;
    std::string_view bytes;
};

// nullptr when there is no such asset.
const Asset* find_asset(std::string_view name);

}  // namespace signet::metrics::web
