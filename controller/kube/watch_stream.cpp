#include "watch_stream.h"

#include <cerrno>

#include "signet/json.h"

namespace signet::kube {

using rapidjson::Value;

Status JsonStreamSplitter::feed(std::string_view data, const std::function<Status(std::string_view)>& on_value) {
    size_t start = 0;  // start of the unconsumed part of `data` belonging to the current value
    for (size_t i = 0; i < data.size(); ++i) {
        char c = data[i];
        if (depth_ == 0) {
            if (c == ' ' || c == '\n' || c == '\r' || c == '\t') {
                start = i + 1;
                continue;
            }
            if (c != '{') {
                char hex[8];
                std::snprintf(hex, sizeof hex, "0x%02x", static_cast<unsigned char>(c));
                return make_error(EBADMSG, std::string("watch stream: unexpected byte ") + hex + " between events");
            }
            depth_ = 1;
            start = i;
            continue;
        }
        if (in_string_) {
            if (escape_) escape_ = false;
            else if (c == '\\') escape_ = true;
            else if (c == '"') in_string_ = false;
        } else if (c == '"') {
            in_string_ = true;
        } else if (c == '{' || c == '[') {
            ++depth_;
        } else if (c == '}' || c == ']') {
            if (--depth_ == 0) {
                std::string_view piece = data.substr(start, i + 1 - start);
                if (buf_.size() + piece.size() > max_)
                    return make_error(EFBIG, "watch stream: an event larger than " + std::to_string(max_) + " bytes");
                Status st;
                if (buf_.empty()) {
                    st = on_value(piece);
                } else {
                    buf_.append(piece);
                    std::string value;
                    value.swap(buf_);
                    st = on_value(value);
                }
                start = i + 1;
                if (!st) return st;
            }
        }
    }
    if (depth_ > 0 && start < data.size()) {
        if (buf_.size() + (data.size() - start) > max_)
            return make_error(EFBIG, "watch stream: an event larger than " + std::to_string(max_) + " bytes");
        buf_.append(data.substr(start));
    }
    return {};
}

void JsonStreamSplitter::reset() {
    buf_.clear();
    buf_.shrink_to_fit();
    depth_ = 0;
    in_string_ = escape_ = false;
}

ApiStatus parse_api_status(std::string_view body, int http_status) {
    ApiStatus s;
    s.code = http_status;
    auto doc = json::parse(body);
    if (doc && doc->IsObject()) {
        const Value& d = *doc;
        if (auto k = json::opt_string(d, "kind"); k && *k == "Status") {
            if (const Value* c = json::find(d, "code"); c && c->IsInt()) s.code = c->GetInt();
            s.reason = json::opt_string(d, "reason").value_or("");
            s.message = json::opt_string(d, "message").value_or("");
            return s;
        }
    }
    std::string t(body.substr(0, 500));
    while (!t.empty() && (t.back() == '\n' || t.back() == ' ' || t.back() == '\r')) t.pop_back();
    s.message = t;
    return s;
}

Result<ObjectRef> object_ref(const Value& obj) {
    const Value* md = json::find(obj, "metadata");
    if (!md || !md->IsObject()) return make_error(EINVAL, "metadata: required");
    ObjectRef r;
    auto name = json::opt_string(*md, "name");
    if (!name || name->empty()) return make_error(EINVAL, "metadata.name: required");
    r.name = *name;
    r.namespace_ = json::opt_string(*md, "namespace").value_or("");
    r.resource_version = json::opt_string(*md, "resourceVersion").value_or("");
    return r;
}

Result<WatchEvent> parse_watch_event(std::string_view text) {
    WatchEvent ev;
    if (auto st = json::check_depth(text); !st) return make_error(EBADMSG, "watch event: " + st.error().message);
    ev.doc.Parse<rapidjson::kParseIterativeFlag>(text.data(), text.size());
    if (ev.doc.HasParseError())
        return make_error(EBADMSG, "watch event: invalid JSON at offset " + std::to_string(ev.doc.GetErrorOffset()));
    if (!ev.doc.IsObject()) return make_error(EBADMSG, "watch event: not an object");
    auto type = json::opt_string(ev.doc, "type");
    if (!type) return make_error(EBADMSG, "watch event: no type");
    if (*type == "ADDED") ev.type = WatchEvent::Added;
    else if (*type == "MODIFIED") ev.type = WatchEvent::Modified;
    else if (*type == "DELETED") ev.type = WatchEvent::Deleted;
    else if (*type == "BOOKMARK") ev.type = WatchEvent::Bookmark;
    else if (*type == "ERROR") ev.type = WatchEvent::Error;
    else return make_error(EBADMSG, "watch event: unknown type '" + type->substr(0, 40) + "'");
    const Value* o = json::find(ev.doc, "object");
    if (!o || !o->IsObject()) return make_error(EBADMSG, "watch event: no object");
    ev.object = o;
    return ev;
}

}  // namespace signet::kube
