#include "cni.h"

#include <arpa/inet.h>

#include <algorithm>
#include <charconv>

#include "signet/json.h"

namespace signet::cni {

using rapidjson::Value;

const std::vector<std::string>& supported_versions() {
    // 0.3.x: what flannel, calico and kindnet write by default; its results
    // have 0.4.0's shape (CHECK needs 0.4.0).
    static const std::vector<std::string> v{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"};
    return v;
}

bool is_supported(std::string_view version) {
    for (const auto& s : supported_versions())
        if (s == version) return true;
    return false;
}

int compare_versions(std::string_view a, std::string_view b) {
    auto next = [](std::string_view& s) {
        size_t dot = s.find('.');
        std::string_view part = s.substr(0, dot);
        s = dot == std::string_view::npos ? std::string_view{} : s.substr(dot + 1);
        int n = 0;
        std::from_chars(part.data(), part.data() + part.size(), n);
        return n;
    };
    for (int i = 0; i < 3; ++i) {
        int x = next(a), y = next(b);
        if (x != y) return x < y ? -1 : 1;
    }
    return 0;
}

Result<Command> parse_command(std::string_view name) {
    if (name == "ADD") return Command::add;
    if (name == "DEL") return Command::del;
    if (name == "CHECK") return Command::check;
    if (name == "VERSION") return Command::version;
    if (name == "STATUS") return Command::status;
    if (name == "GC") return Command::gc;
    if (name.empty()) return make_error(kInvalidEnv, "CNI_COMMAND is not set");
    return make_error(kInvalidEnv, "unknown CNI_COMMAND '" + std::string(name) + "'");
}

Result<std::map<std::string, std::string>> parse_cni_args(std::string_view text) {
    std::map<std::string, std::string> out;
    while (!text.empty()) {
        size_t semi = text.find(';');
        std::string_view pair = text.substr(0, semi);
        text = semi == std::string_view::npos ? std::string_view{} : text.substr(semi + 1);
        if (pair.empty()) continue;
        size_t eq = pair.find('=');
        if (eq == std::string_view::npos || eq == 0)
            return make_error(kInvalidEnv, "CNI_ARGS: '" + std::string(pair) + "' is not KEY=VALUE");
        out[std::string(pair.substr(0, eq))] = std::string(pair.substr(eq + 1));
    }
    return out;
}

Result<Env> parse_env(const GetEnv& getenv) {
    auto get = [&](const char* k) -> std::string {
        const char* v = getenv(k);
        return v == nullptr ? std::string() : std::string(v);
    };
    Env env;
    auto cmd = parse_command(get("CNI_COMMAND"));
    if (!cmd) return cmd.error();
    env.command = *cmd;
    env.container_id = get("CNI_CONTAINERID");
    env.netns = get("CNI_NETNS");
    env.ifname = get("CNI_IFNAME");
    env.path = get("CNI_PATH");
    auto args = parse_cni_args(get("CNI_ARGS"));
    if (!args) return args.error();
    env.args = std::move(*args);

    const bool per_attachment = env.command == Command::add || env.command == Command::del ||
                                env.command == Command::check;
    if (per_attachment) {
        if (env.container_id.empty()) return make_error(kInvalidEnv, "CNI_CONTAINERID is not set");
        if (!api::valid_container_id(env.container_id))
            return make_error(kInvalidEnv, "CNI_CONTAINERID '" + env.container_id + "' is not a valid container ID");
        if (env.ifname.empty()) return make_error(kInvalidEnv, "CNI_IFNAME is not set");
        if (!api::valid_ifname(env.ifname))
            return make_error(kInvalidEnv, "CNI_IFNAME '" + env.ifname + "' is not a valid interface name");
        // DEL may come after the netns is gone (the spec allows an empty CNI_NETNS then).
        if (env.command != Command::del && env.netns.empty()) return make_error(kInvalidEnv, "CNI_NETNS is not set");
    }
    return env;
}

static Result<int> timeout_field(const Value& doc) {
    const Value* t = json::find(doc, "timeoutSeconds");
    if (t == nullptr) return 10000;
    if (!t->IsNumber()) return make_error(kInvalidConfig, "timeoutSeconds: must be a number");
    double s = t->GetDouble();
    if (!(s > 0 && s <= 300)) return make_error(kInvalidConfig, "timeoutSeconds: must be in (0, 300]");
    return static_cast<int>(s * 1000);
}

Result<Config> parse_config(std::string_view text) {
    Config cfg;
    if (text.empty()) return make_error(kDecodeFailure, "no network configuration on stdin");
    if (auto st = json::check_depth(text); !st)
        return make_error(kDecodeFailure, "network configuration is not valid JSON", st.error().message);
    cfg.doc.Parse<rapidjson::kParseIterativeFlag>(text.data(), text.size());
    if (cfg.doc.HasParseError()) {
        auto parsed = json::parse(text);  // for the readable message
        return make_error(kDecodeFailure, "network configuration is not valid JSON",
                          parsed ? std::string() : parsed.error().message);
    }
    if (!cfg.doc.IsObject()) return make_error(kDecodeFailure, "network configuration must be a JSON object");

    const Value* ver = json::find(cfg.doc, "cniVersion");
    if (ver == nullptr || !ver->IsString()) return make_error(kInvalidConfig, "cniVersion: required string missing");
    cfg.cni_version = ver->GetString();
    if (!is_supported(cfg.cni_version)) {
        std::string list;
        for (const auto& v : supported_versions()) list += (list.empty() ? "" : ", ") + v;
        return make_error(kIncompatibleVersion, "incompatible CNI version " + cfg.cni_version,
                          "supported versions: " + list);
    }

    if (auto name = json::find(cfg.doc, "name"); name != nullptr) {
        if (!name->IsString()) return make_error(kInvalidConfig, "name: must be a string");
        cfg.name = name->GetString();
    }
    if (auto type = json::find(cfg.doc, "type"); type != nullptr && !type->IsString())
        return make_error(kInvalidConfig, "type: must be a string");
    if (auto sock = json::find(cfg.doc, "socket"); sock != nullptr) {
        if (!sock->IsString() || sock->GetStringLength() == 0)
            return make_error(kInvalidConfig, "socket: must be a non-empty string");
        cfg.socket = sock->GetString();
        if (cfg.socket.size() >= 108) return make_error(kInvalidConfig, "socket: path longer than 107 bytes");
    }
    auto timeout = timeout_field(cfg.doc);
    if (!timeout) return timeout.error();
    cfg.timeout_ms = *timeout;

    if (auto prev = json::find(cfg.doc, "prevResult"); prev != nullptr && !prev->IsNull()) {
        if (!prev->IsObject()) return make_error(kInvalidConfig, "prevResult: must be an object");
        cfg.prev_result = prev;
    }
    if (auto va = json::find(cfg.doc, "cni.dev/valid-attachments"); va != nullptr) {
        if (!va->IsArray()) return make_error(kInvalidConfig, "cni.dev/valid-attachments: must be an array");
        cfg.has_valid_attachments = true;
        for (const auto& e : va->GetArray()) {
            auto id = json::get_string(e, "containerID", "cni.dev/valid-attachments[]");
            if (!id) return make_error(kInvalidConfig, id.error().message);
            auto ifn = json::get_string(e, "ifname", "cni.dev/valid-attachments[]");
            if (!ifn) return make_error(kInvalidConfig, ifn.error().message);
            cfg.valid_attachments.push_back({*id, *ifn});
        }
    }
    return cfg;
}

std::string version_json(std::string_view requested) {
    rapidjson::Document d(rapidjson::kObjectType);
    auto& a = d.GetAllocator();
    std::string_view v = is_supported(requested) ? requested : std::string_view(kLatestVersion);
    d.AddMember("cniVersion", json::str(v, a), a);
    Value list(rapidjson::kArrayType);
    for (const auto& s : supported_versions()) list.PushBack(json::str(s, a), a);
    d.AddMember("supportedVersions", list, a);
    return json::to_string(d);
}

std::string error_json(std::string_view cni_version, int code, std::string_view msg, std::string_view details) {
    rapidjson::Document d(rapidjson::kObjectType);
    auto& a = d.GetAllocator();
    std::string_view v = is_supported(cni_version) ? cni_version : std::string_view(kLatestVersion);
    d.AddMember("cniVersion", json::str(v, a), a);
    d.AddMember("code", code, a);
    d.AddMember("msg", json::str(msg, a), a);
    if (!details.empty()) d.AddMember("details", json::str(details, a), a);
    return json::to_string(d);
}

// "4" or "6" for an address in CIDR notation, or empty when unparseable.
static std::string ip_family(std::string_view cidr) {
    std::string addr(cidr.substr(0, cidr.find('/')));
    unsigned char buf[16];
    if (inet_pton(AF_INET, addr.c_str(), buf) == 1) return "4";
    if (inet_pton(AF_INET6, addr.c_str(), buf) == 1) return "6";
    return {};
}

Result<std::string> passthrough(const Config& config) {
    if (config.prev_result == nullptr) return make_error(kInvalidConfig, "prevResult is missing");
    rapidjson::Document out;
    out.CopyFrom(*config.prev_result, out.GetAllocator());
    auto& a = out.GetAllocator();
    // The result is stated in the config's version (the runtime already
    // converted prevResult to it; the field itself must say so).
    if (auto it = out.FindMember("cniVersion"); it != out.MemberEnd())
        it->value.SetString(config.cni_version.c_str(), static_cast<rapidjson::SizeType>(config.cni_version.size()), a);
    else
        out.AddMember("cniVersion", json::str(config.cni_version, a), a);
    if (auto ips = out.FindMember("ips"); ips != out.MemberEnd()) {
        if (!ips->value.IsArray()) return make_error(kInvalidConfig, "prevResult.ips: must be an array");
        const bool legacy = compare_versions(config.cni_version, "1.0.0") < 0;
        for (auto& ip : ips->value.GetArray()) {
            if (!ip.IsObject()) return make_error(kInvalidConfig, "prevResult.ips[]: must be objects");
            if (legacy) {
                // 0.4.0 results carry "version"; a 1.0.0-style entry gains it.
                if (!ip.HasMember("version")) {
                    auto addr = json::opt_string(ip, "address");
                    std::string fam = addr ? ip_family(*addr) : std::string();
                    if (fam.empty()) return make_error(kInvalidConfig, "prevResult.ips[].address: not an IP address in CIDR notation");
                    ip.AddMember("version", json::str(fam, a), a);
                }
            } else {
                // 1.0.0 removed "version" from IP entries.
                ip.RemoveMember("version");
            }
        }
    }
    return json::to_string(out);
}

std::string pod_name_from_runtime(std::string_view name, std::string_view container_id) {
    if (api::valid_dns1123_subdomain(name)) return std::string(name);
    auto fold = [](std::string_view in) {
        std::string out;
        for (char c : in.substr(0, 253)) {
            if (c >= 'A' && c <= 'Z') out += static_cast<char>(c - 'A' + 'a');
            else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.') out += c;
            else out += '-';
        }
        return out;
    };
    std::string n = fold(name);
    if (api::valid_dns1123_subdomain(n)) return n;
    // The container ID's start (12 hex digits in practice; a CNI container ID starts alphanumeric).
    n = fold(container_id.substr(0, 12));
    std::replace(n.begin(), n.end(), '.', '-');
    while (!n.empty() && n.back() == '-') n.pop_back();
    return n.empty() ? "pod" : n;
}

Result<api::PodRegistration> make_registration(const Env& env, const Config& config) {
    api::PodRegistration r;
    r.container_id = env.container_id;
    r.ifname = env.ifname;
    r.netns = env.netns;
    r.network = config.name;
    auto arg = [&](const char* k) {
        auto it = env.args.find(k);
        return it == env.args.end() ? std::string() : it->second;
    };
    r.namespace_ = arg("K8S_POD_NAMESPACE");
    const bool kubernetes = !r.namespace_.empty();  // kubelet's runtimes always pass the namespace
    if (r.namespace_.empty()) r.namespace_ = "default";
    r.name = arg("K8S_POD_NAME");
    // Without Kubernetes arguments (a plain runtime) the pod is named after its container.
    if (r.name.empty()) r.name = env.container_id.substr(0, 12);
    // A plain runtime's container name (podman passes it as K8S_POD_NAME;
    // podman allows "My_App") is made a Kubernetes name; kubelet's are kept
    // as they are, and refused below if invalid.
    if (!kubernetes) r.name = pod_name_from_runtime(r.name, env.container_id);
    r.uid = arg("K8S_POD_UID");
    r.infra_container_id = arg("K8S_POD_INFRA_CONTAINER_ID");
    if (auto st = api::validate_pod_identity(r); !st) {
        // Name the variable, as the spec asks of code 4.
        std::string m = st.error().message;
        std::string var = m.rfind("namespace:", 0) == 0 ? "K8S_POD_NAMESPACE" : m.rfind("name:", 0) == 0 ? "K8S_POD_NAME"
                          : m.rfind("uid:", 0) == 0 ? "K8S_POD_UID" : "K8S_POD_INFRA_CONTAINER_ID";
        return make_error(kInvalidEnv, "CNI_ARGS: invalid " + var, m);
    }

    if (config.prev_result == nullptr) return r;
    const Value& prev = *config.prev_result;
    // The container-side interface: the one named CNI_IFNAME inside a sandbox.
    int if_index = -1;
    if (const Value* ifs = json::find(prev, "interfaces"); ifs != nullptr) {
        if (!ifs->IsArray()) return make_error(kInvalidConfig, "prevResult.interfaces: must be an array");
        for (rapidjson::SizeType i = 0; i < ifs->Size(); ++i) {
            const Value& e = (*ifs)[i];
            if (!e.IsObject()) return make_error(kInvalidConfig, "prevResult.interfaces[]: must be objects");
            auto name = json::opt_string(e, "name");
            auto sandbox = json::opt_string(e, "sandbox");
            if (name && *name == env.ifname && sandbox && !sandbox->empty()) {
                if_index = static_cast<int>(i);
                if (auto mac = json::opt_string(e, "mac")) r.mac = *mac;
                break;
            }
        }
    }
    if (const Value* ips = json::find(prev, "ips"); ips != nullptr) {
        if (!ips->IsArray()) return make_error(kInvalidConfig, "prevResult.ips: must be an array");
        for (const auto& ip : ips->GetArray()) {
            if (!ip.IsObject()) return make_error(kInvalidConfig, "prevResult.ips[]: must be objects");
            auto addr = json::opt_string(ip, "address");
            if (!addr || ip_family(*addr).empty())
                return make_error(kInvalidConfig, "prevResult.ips[].address: not an IP address in CIDR notation");
            const Value* idx = json::find(ip, "interface");
            if (idx != nullptr && !idx->IsInt()) return make_error(kInvalidConfig, "prevResult.ips[].interface: must be an integer");
            // Keep addresses of our interface, and those not tied to any interface.
            if (idx == nullptr || if_index < 0 || idx->GetInt() == if_index) r.ips.push_back(*addr);
        }
    }
    return r;
}

}  // namespace signet::cni
