#include "config.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <fstream>
#include <sstream>

#include "source/manifest.h"
#include "signet/json.h"

extern char** environ;

namespace signet::kube {

namespace {

using rapidjson::Value;

constexpr size_t kMaxKubeconfigBytes = 4 * 1024 * 1024;
constexpr std::string_view kExecV1 = "client.authentication.k8s.io/v1";
constexpr std::string_view kExecV1beta1 = "client.authentication.k8s.io/v1beta1";

Error config_error(std::string msg) { return make_error(EINVAL, std::move(msg)); }

Result<std::string> read_file(const std::string& path, size_t max = kMaxKubeconfigBytes) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return make_error(errno ? errno : ENOENT, "cannot read " + path + ": " + std::strerror(errno ? errno : ENOENT));
    std::string data;
    char buf[65536];
    while (in.read(buf, sizeof buf) || in.gcount() > 0) {
        data.append(buf, static_cast<size_t>(in.gcount()));
        if (data.size() > max) return make_error(EFBIG, path + ": larger than " + std::to_string(max) + " bytes");
    }
    return data;
}

std::string resolve(const std::string& base_dir, const std::string& path) {
    if (path.empty() || path[0] == '/' || base_dir.empty()) return path;
    return base_dir + "/" + path;
}

const Value* member(const Value& obj, const char* key) { return json::find(obj, key); }

// Optional string field; a present non-string is an error.
Status opt_str(const Value& obj, const char* key, const std::string& where, std::string* out) {
    const Value* v = member(obj, key);
    if (!v || v->IsNull()) return {};
    if (!v->IsString()) return config_error(where + "." + key + ": must be a string");
    out->assign(v->GetString(), v->GetStringLength());
    return {};
}

Status opt_bool(const Value& obj, const char* key, const std::string& where, bool* out) {
    const Value* v = member(obj, key);
    if (!v || v->IsNull()) return {};
    if (!v->IsBool()) return config_error(where + "." + key + ": must be true or false");
    *out = v->GetBool();
    return {};
}

// Finds `name` in a kubeconfig list (clusters/users/contexts) and returns its inner object.
Result<const Value*> named(const Value& root, const char* list, const char* inner, const std::string& name) {
    const Value* arr = member(root, list);
    if (!arr || arr->IsNull()) return config_error(std::string("no ") + list + " in the kubeconfig");
    if (!arr->IsArray()) return config_error(std::string(list) + ": must be a list");
    for (rapidjson::SizeType i = 0; i < arr->Size(); ++i) {
        const Value& e = (*arr)[i];
        if (!e.IsObject()) return config_error(std::string(list) + "[" + std::to_string(i) + "]: must be an object");
        const Value* n = member(e, "name");
        if (!n || !n->IsString() || name != n->GetString()) continue;
        const Value* in = member(e, inner);
        if (!in || in->IsNull()) {
            static const Value empty(rapidjson::kObjectType);
            return &empty;
        }
        if (!in->IsObject()) return config_error(std::string(list) + "[" + std::to_string(i) + "]." + inner + ": must be an object");
        return in;
    }
    return config_error(std::string(list) + ": no entry named '" + name + "'");
}

Status decode_data(const Value& obj, const char* key, const std::string& where, std::string* out) {
    std::string b64;
    if (auto st = opt_str(obj, key, where, &b64); !st) return st;
    if (b64.empty()) return {};
    auto d = base64_decode(b64);
    if (!d) return config_error(where + "." + key + ": " + d.error().message);
    *out = std::move(*d);
    return {};
}

Result<ExecConfig> decode_exec(const Value& e, const std::string& base_dir, const std::string& where) {
    ExecConfig x;
    if (auto st = opt_str(e, "apiVersion", where, &x.api_version); !st) return st.error();
    if (x.api_version != kExecV1 && x.api_version != kExecV1beta1)
        return config_error(where + ".apiVersion: exec plugin: unsupported apiVersion '" + x.api_version +
                            "' (client.authentication.k8s.io/v1 or v1beta1)");
    if (auto st = opt_str(e, "command", where, &x.command); !st) return st.error();
    if (x.command.empty()) return config_error(where + ".command: exec plugin: command is required");
    // client-go: a relative command containing a path separator is relative to the kubeconfig.
    if (x.command.find('/') != std::string::npos) x.command = resolve(base_dir, x.command);
    if (const Value* a = member(e, "args"); a && !a->IsNull()) {
        if (!a->IsArray()) return config_error(where + ".args: must be a list of strings");
        for (const auto& s : a->GetArray()) {
            if (!s.IsString()) return config_error(where + ".args: must be a list of strings");
            x.args.emplace_back(s.GetString(), s.GetStringLength());
        }
    }
    if (const Value* en = member(e, "env"); en && !en->IsNull()) {
        if (!en->IsArray()) return config_error(where + ".env: must be a list of {name, value}");
        for (const auto& kv : en->GetArray()) {
            std::string n, v;
            if (!kv.IsObject()) return config_error(where + ".env: must be a list of {name, value}");
            if (auto st = opt_str(kv, "name", where + ".env[]", &n); !st) return st.error();
            if (auto st = opt_str(kv, "value", where + ".env[]", &v); !st) return st.error();
            if (n.empty()) return config_error(where + ".env[]: name is required");
            x.env.emplace_back(std::move(n), std::move(v));
        }
    }
    if (auto st = opt_str(e, "interactiveMode", where, &x.interactive_mode); !st) return st.error();
    if (auto st = opt_bool(e, "provideClusterInfo", where, &x.provide_cluster_info); !st) return st.error();
    if (auto st = opt_str(e, "installHint", where, &x.install_hint); !st) return st.error();
    if (x.api_version == kExecV1 && x.interactive_mode.empty())
        return config_error(where + ".interactiveMode: must be specified for " + std::string(kExecV1) +
                            " to use exec authentication plugin");
    if (!x.interactive_mode.empty() && x.interactive_mode != "Never" && x.interactive_mode != "IfAvailable" &&
        x.interactive_mode != "Always")
        return config_error(where + ".interactiveMode: invalid '" + x.interactive_mode + "'");
    if (x.interactive_mode == "Always")
        return config_error(where + ".interactiveMode: Always needs a terminal, and signetd has none");
    return x;
}

}  // namespace

// ---------------------------------------------------------------------------

Result<std::string> base64_decode(std::string_view text) {
    auto val = [](char c) -> int {
        if (c >= 'A' && c <= 'Z') return c - 'A';
        if (c >= 'a' && c <= 'z') return c - 'a' + 26;
        if (c >= '0' && c <= '9') return c - '0' + 52;
        if (c == '+') return 62;
        if (c == '/') return 63;
        return -1;
    };
    std::string out;
    out.reserve(text.size() * 3 / 4);
    uint32_t acc = 0;
    int bits = 0, pad = 0;
    for (char c : text) {
        if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
        if (c == '=') {
            ++pad;
            continue;
        }
        if (pad) return config_error("invalid base64: data after '='");
        int v = val(c);
        if (v < 0) return config_error("invalid base64 character");
        acc = (acc << 6) | static_cast<uint32_t>(v);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out.push_back(static_cast<char>((acc >> bits) & 0xff));
        }
    }
    if (bits >= 6 || pad > 2) return config_error("invalid base64 length");
    return out;
}

std::optional<int64_t> parse_rfc3339(std::string_view s) {
    // YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)
    auto digits = [&](size_t pos, size_t n, int* out) {
        if (pos + n > s.size()) return false;
        int v = 0;
        for (size_t i = 0; i < n; ++i) {
            char c = s[pos + i];
            if (c < '0' || c > '9') return false;
            v = v * 10 + (c - '0');
        }
        *out = v;
        return true;
    };
    int Y, M, D, h, m, sec;
    if (!digits(0, 4, &Y) || s.size() < 20 || s[4] != '-' || !digits(5, 2, &M) || s[7] != '-' || !digits(8, 2, &D) ||
        (s[10] != 'T' && s[10] != 't' && s[10] != ' ') || !digits(11, 2, &h) || s[13] != ':' || !digits(14, 2, &m) ||
        s[16] != ':' || !digits(17, 2, &sec))
        return std::nullopt;
    if (M < 1 || M > 12 || D < 1 || D > 31 || h > 23 || m > 59 || sec > 60) return std::nullopt;
    size_t p = 19;
    if (p < s.size() && s[p] == '.') {
        ++p;
        size_t start = p;
        while (p < s.size() && s[p] >= '0' && s[p] <= '9') ++p;
        if (p == start) return std::nullopt;
    }
    int64_t offset = 0;
    if (p < s.size() && (s[p] == 'Z' || s[p] == 'z')) {
        ++p;
    } else if (p < s.size() && (s[p] == '+' || s[p] == '-')) {
        int oh, om;
        if (!digits(p + 1, 2, &oh) || p + 3 >= s.size() || s[p + 3] != ':' || !digits(p + 4, 2, &om)) return std::nullopt;
        offset = (oh * 3600 + om * 60) * (s[p] == '-' ? -1 : 1);
        p += 6;
    } else {
        return std::nullopt;
    }
    if (p != s.size()) return std::nullopt;
    // days from civil (Howard Hinnant)
    int y = Y - (M <= 2);
    int era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = static_cast<unsigned>(y - era * 400);
    unsigned doy = (153 * static_cast<unsigned>(M + (M > 2 ? -3 : 9)) + 2) / 5 + static_cast<unsigned>(D) - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    int64_t days = static_cast<int64_t>(era) * 146097 + static_cast<int64_t>(doe) - 719468;
    return days * 86400 + h * 3600 + m * 60 + sec - offset;
}

Result<ClientConfig> in_cluster_config(const InClusterPaths& paths) {
    std::string host = paths.host, port = paths.port;
    if (host.empty()) {
        const char* h = std::getenv("KUBERNETES_SERVICE_HOST");
        if (h) host = h;
    }
    if (port.empty()) {
        const char* p = std::getenv("KUBERNETES_SERVICE_PORT");
        if (p) port = p;
    }
    if (host.empty() || port.empty())
        return make_error(ENOENT,
                          "unable to load in-cluster configuration, KUBERNETES_SERVICE_HOST and "
                          "KUBERNETES_SERVICE_PORT must be defined (or pass --kubeconfig)");
    ClientConfig c;
    c.origin = "in-cluster";
    bool v6 = host.find(':') != std::string::npos && host.front() != '[';
    c.server = "https://" + (v6 ? "[" + host + "]" : host) + ":" + port;
    struct stat st {};
    if (::stat(paths.token_file.c_str(), &st) != 0)
        return make_error(errno, "in-cluster: cannot read the service account token " + paths.token_file + ": " +
                                     std::strerror(errno));
    c.token_file = paths.token_file;
    // client-go: a missing CA is tolerated (logged), the system roots are used.
    if (::stat(paths.ca_file.c_str(), &st) == 0) c.ca_file = paths.ca_file;
    return c;
}

Result<ClientConfig> parse_kubeconfig(std::string_view text, const std::string& base_dir, const std::string& context) {
    if (text.size() > kMaxKubeconfigBytes) return make_error(EFBIG, "kubeconfig larger than 4 MiB");
    auto docs = source::yaml_to_json(text);
    if (!docs) return config_error("kubeconfig: " + docs.error().message);
    const Value& arr = *docs;
    if (!arr.IsArray() || arr.Empty() || !arr[0].IsObject()) return config_error("kubeconfig: not a YAML mapping");
    const Value& root = arr[0];
    ClientConfig c;
    std::string current;
    if (auto st = opt_str(root, "current-context", "kubeconfig", &current); !st) return st.error();
    c.context = context.empty() ? current : context;
    if (c.context.empty()) return config_error("kubeconfig: no current-context (and no --context given)");

    auto ctx = named(root, "contexts", "context", c.context);
    if (!ctx) return config_error("kubeconfig: context '" + c.context + "': " + ctx.error().message);
    if (auto st = opt_str(**ctx, "cluster", "context", &c.cluster); !st) return st.error();
    if (auto st = opt_str(**ctx, "user", "context", &c.user); !st) return st.error();
    if (c.cluster.empty()) return config_error("kubeconfig: context '" + c.context + "' names no cluster");

    auto cl = named(root, "clusters", "cluster", c.cluster);
    if (!cl) return config_error("kubeconfig: cluster '" + c.cluster + "': " + cl.error().message);
    const Value& cluster = **cl;
    std::string w = "clusters[" + c.cluster + "].cluster";
    if (auto st = opt_str(cluster, "server", w, &c.server); !st) return st.error();
    if (c.server.empty()) return config_error("kubeconfig: " + w + ".server: required");
    while (!c.server.empty() && c.server.back() == '/') c.server.pop_back();
    if (c.server.rfind("https://", 0) != 0 && c.server.rfind("http://", 0) != 0)
        return config_error("kubeconfig: " + w + ".server: must be an http:// or https:// URL, not '" + c.server + "'");
    if (auto st = opt_str(cluster, "certificate-authority", w, &c.ca_file); !st) return st.error();
    c.ca_file = resolve(base_dir, c.ca_file);
    if (auto st = decode_data(cluster, "certificate-authority-data", w, &c.ca_pem); !st) return st.error();
    if (auto st = opt_bool(cluster, "insecure-skip-tls-verify", w, &c.insecure_skip_tls_verify); !st) return st.error();
    if (c.insecure_skip_tls_verify && (!c.ca_file.empty() || !c.ca_pem.empty()))
        // client-go refuses this combination.
        return config_error("kubeconfig: " + w +
                            ": specifying a root certificates file with the insecure flag is not allowed");

    if (!c.user.empty()) {
        auto us = named(root, "users", "user", c.user);
        if (!us) return config_error("kubeconfig: user '" + c.user + "': " + us.error().message);
        const Value& u = **us;
        std::string uw = "users[" + c.user + "].user";
        if (auto st = opt_str(u, "client-certificate", uw, &c.client_cert_file); !st) return st.error();
        if (auto st = opt_str(u, "client-key", uw, &c.client_key_file); !st) return st.error();
        c.client_cert_file = resolve(base_dir, c.client_cert_file);
        c.client_key_file = resolve(base_dir, c.client_key_file);
        if (auto st = decode_data(u, "client-certificate-data", uw, &c.client_cert_pem); !st) return st.error();
        if (auto st = decode_data(u, "client-key-data", uw, &c.client_key_pem); !st) return st.error();
        if (auto st = opt_str(u, "token", uw, &c.token); !st) return st.error();
        if (auto st = opt_str(u, "tokenFile", uw, &c.token_file); !st) return st.error();
        c.token_file = resolve(base_dir, c.token_file);
        if (auto st = opt_str(u, "username", uw, &c.username); !st) return st.error();
        if (auto st = opt_str(u, "password", uw, &c.password); !st) return st.error();
        if (const Value* e = member(u, "exec"); e && !e->IsNull()) {
            if (!e->IsObject()) return config_error("kubeconfig: " + uw + ".exec: must be an object");
            auto x = decode_exec(*e, base_dir, "kubeconfig: " + uw + ".exec");
            if (!x) return x.error();
            c.exec = std::move(*x);
        }
        if (const Value* ap = member(u, "auth-provider"); ap && !ap->IsNull())
            return config_error("kubeconfig: " + uw +
                                ".auth-provider: auth-provider plugins were removed from client-go; use exec");
        bool has_cert = !c.client_cert_file.empty() || !c.client_cert_pem.empty();
        bool has_key = !c.client_key_file.empty() || !c.client_key_pem.empty();
        if (has_cert != has_key)
            return config_error("kubeconfig: " + uw + ": client-certificate and client-key must be given together");
        if (!c.token.empty() && !c.token_file.empty()) c.token_file.clear();  // client-go: a literal token wins
    }
    return c;
}

Result<ClientConfig> load_kubeconfig(const std::string& path, const std::string& context) {
    auto text = read_file(path);
    if (!text) return text.error();
    auto slash = path.rfind('/');
    std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
    auto c = parse_kubeconfig(*text, dir, context);
    if (!c) return make_error(c.error().code, path + ": " + c.error().message);
    c->origin = path;
    return c;
}

// ---------------------------------------------------------------------------
// exec credential plugins

Result<ExecCredential> parse_exec_credential(std::string_view text, std::string_view api_version) {
    auto doc = json::parse(text);
    if (!doc) return config_error("exec plugin: output is not JSON: " + doc.error().message);
    const Value& d = *doc;
    if (!d.IsObject()) return config_error("exec plugin: output is not a JSON object");
    std::string kind, av;
    (void)opt_str(d, "kind", "", &kind);
    (void)opt_str(d, "apiVersion", "", &av);
    if (kind != "ExecCredential") return config_error("exec plugin: output kind is '" + kind + "', not ExecCredential");
    if (av != api_version)
        return config_error("exec plugin: wrong apiVersion '" + av + "' in the output, configured " +
                            std::string(api_version));
    const Value* st = member(d, "status");
    if (!st || !st->IsObject()) return config_error("exec plugin: no status in the output");
    ExecCredential c;
    if (auto s = opt_str(*st, "token", "status", &c.token); !s) return config_error("exec plugin: " + s.error().message);
    if (auto s = opt_str(*st, "clientCertificateData", "status", &c.client_certificate_data); !s)
        return config_error("exec plugin: " + s.error().message);
    if (auto s = opt_str(*st, "clientKeyData", "status", &c.client_key_data); !s)
        return config_error("exec plugin: " + s.error().message);
    std::string exp;
    if (auto s = opt_str(*st, "expirationTimestamp", "status", &exp); !s)
        return config_error("exec plugin: " + s.error().message);
    if (!exp.empty()) {
        c.expiration = parse_rfc3339(exp);
        if (!c.expiration) return config_error("exec plugin: status.expirationTimestamp: not RFC 3339: '" + exp + "'");
    }
    if (c.client_certificate_data.empty() != c.client_key_data.empty())
        return config_error("exec plugin: clientCertificateData and clientKeyData must both be present");
    if (c.token.empty() && c.client_certificate_data.empty())
        return config_error("exec plugin: the output has neither status.token nor status.clientCertificateData");
    return c;
}

Result<ExecCredential> run_exec_plugin(const ExecConfig& x, const ClientConfig& cluster) {
    // ExecCredential input in KUBERNETES_EXEC_INFO, as client-go passes it.
    rapidjson::Document info(rapidjson::kObjectType);
    auto& a = info.GetAllocator();
    info.AddMember("kind", "ExecCredential", a);
    info.AddMember("apiVersion", json::str(x.api_version, a), a);
    Value spec(rapidjson::kObjectType);
    spec.AddMember("interactive", false, a);
    if (x.provide_cluster_info) {
        Value c(rapidjson::kObjectType);
        c.AddMember("server", json::str(cluster.server, a), a);
        c.AddMember("insecure-skip-tls-verify", cluster.insecure_skip_tls_verify, a);
        if (!cluster.ca_pem.empty()) {
            static const char* tbl = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            std::string b;
            const std::string& in = cluster.ca_pem;
            for (size_t i = 0; i < in.size(); i += 3) {
                uint32_t n = static_cast<uint8_t>(in[i]) << 16;
                if (i + 1 < in.size()) n |= static_cast<uint8_t>(in[i + 1]) << 8;
                if (i + 2 < in.size()) n |= static_cast<uint8_t>(in[i + 2]);
                b += tbl[(n >> 18) & 63];
                b += tbl[(n >> 12) & 63];
                b += i + 1 < in.size() ? tbl[(n >> 6) & 63] : '=';
                b += i + 2 < in.size() ? tbl[n & 63] : '=';
            }
            c.AddMember("certificate-authority-data", json::str(b, a), a);
        }
        spec.AddMember("cluster", c, a);
    }
    info.AddMember("spec", spec, a);
    std::string info_env = "KUBERNETES_EXEC_INFO=" + json::to_string(info);

    // Everything the child needs is prepared before fork (only async-signal-safe calls after).
    std::vector<std::string> env_store;
    for (char** e = environ; e && *e; ++e) {
        std::string_view kv(*e);
        auto eq = kv.find('=');
        std::string_view k = kv.substr(0, eq);
        bool overridden = k == "KUBERNETES_EXEC_INFO";
        for (const auto& [n, v] : x.env) overridden = overridden || k == n;
        if (!overridden) env_store.emplace_back(kv);
    }
    for (const auto& [n, v] : x.env) env_store.push_back(n + "=" + v);
    env_store.push_back(info_env);
    std::vector<char*> envp, argv;
    for (auto& s : env_store) envp.push_back(s.data());
    envp.push_back(nullptr);
    std::string cmd = x.command;
    std::vector<std::string> args_store{cmd};
    args_store.insert(args_store.end(), x.args.begin(), x.args.end());
    for (auto& s : args_store) argv.push_back(s.data());
    argv.push_back(nullptr);

    int out[2], err[2];
    if (::pipe2(out, O_CLOEXEC) != 0) return make_error(errno, std::string("exec plugin: pipe: ") + std::strerror(errno));
    if (::pipe2(err, O_CLOEXEC) != 0) {
        int e = errno;
        ::close(out[0]);
        ::close(out[1]);
        return make_error(e, std::string("exec plugin: pipe: ") + std::strerror(e));
    }
    pid_t pid = ::fork();
    if (pid < 0) {
        int e = errno;
        for (int fd : {out[0], out[1], err[0], err[1]}) ::close(fd);
        return make_error(e, std::string("exec plugin: fork: ") + std::strerror(e));
    }
    if (pid == 0) {
        int devnull = ::open("/dev/null", O_RDONLY);
        if (devnull >= 0) ::dup2(devnull, 0);
        ::dup2(out[1], 1);
        ::dup2(err[1], 2);
        ::execvpe(argv[0], argv.data(), envp.data());
        static const char msg[] = "exec failed\n";
        (void)!::write(2, msg, sizeof msg - 1);
        ::_exit(127);
    }
    ::close(out[1]);
    ::close(err[1]);
    std::string so, se;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    bool open_o = true, open_e = true, timed_out = false;
    while (open_o || open_e) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) {
            timed_out = true;
            break;
        }
        pollfd p[2] = {{open_o ? out[0] : -1, POLLIN, 0}, {open_e ? err[0] : -1, POLLIN, 0}};
        int n = ::poll(p, 2, static_cast<int>(left.count()));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) break;
        char buf[8192];
        for (int i = 0; i < 2; ++i) {
            if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            ssize_t r = ::read(p[i].fd, buf, sizeof buf);
            if (r <= 0) {
                (i == 0 ? open_o : open_e) = false;
            } else {
                std::string& dst = i == 0 ? so : se;
                if (dst.size() < (1u << 20)) dst.append(buf, static_cast<size_t>(r));
            }
        }
    }
    if (timed_out) ::kill(pid, SIGKILL);
    ::close(out[0]);
    ::close(err[0]);
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    while (!se.empty() && (se.back() == '\n' || se.back() == '\r')) se.pop_back();
    if (se.size() > 2000) se.resize(2000);
    std::string hint = x.install_hint.empty() ? "" : " (" + x.install_hint + ")";
    if (timed_out) return make_error(ETIMEDOUT, "exec plugin " + cmd + ": no answer within 60 s");
    if (WIFEXITED(status) && WEXITSTATUS(status) == 127)
        return make_error(ENOENT, "exec plugin: executable " + cmd + " not found or not runnable" + hint +
                                      (se.empty() ? "" : ": " + se));
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return make_error(EIO, "exec plugin " + cmd + " failed (" +
                                   (WIFEXITED(status) ? "exit status " + std::to_string(WEXITSTATUS(status))
                                                      : "signal " + std::to_string(WTERMSIG(status))) +
                                   ")" + (se.empty() ? "" : ": " + se));
    auto cred = parse_exec_credential(so, x.api_version);
    if (!cred) return make_error(cred.error().code, cred.error().message + " (from " + cmd + ")");
    return cred;
}

// ---------------------------------------------------------------------------

Credentials::Credentials(ClientConfig cfg) : cfg_(std::move(cfg)) {}

uint64_t Credentials::exec_runs() const {
    std::lock_guard lk(mu_);
    return exec_runs_;
}

Status Credentials::read_token_file_locked(bool force) {
    struct stat st {};
    if (::stat(cfg_.token_file.c_str(), &st) != 0) {
        if (!file_token_.empty()) return {};  // keep the last token read (client-go does too)
        return make_error(errno, "cannot read token file " + cfg_.token_file + ": " + std::strerror(errno));
    }
    int64_t mt = static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
    if (!force && mt == file_mtime_ns_ && st.st_ino == file_ino_ && st.st_size == file_size_) return {};
    auto text = read_file(cfg_.token_file, 1 << 20);
    if (!text) return file_token_.empty() ? Status(text.error()) : Status();
    std::string t = *text;
    while (!t.empty() && (t.back() == '\n' || t.back() == '\r' || t.back() == ' ')) t.pop_back();
    if (t.empty() && file_token_.empty()) return make_error(EINVAL, "token file " + cfg_.token_file + " is empty");
    if (!t.empty()) file_token_ = std::move(t);
    file_mtime_ns_ = mt;
    file_ino_ = st.st_ino;
    file_size_ = st.st_size;
    return {};
}

Status Credentials::run_exec_locked() {
    ++exec_runs_;
    auto c = run_exec_plugin(*cfg_.exec, cfg_);
    if (!c) return c.error();
    exec_cred_ = std::move(*c);
    return {};
}

Result<Auth> Credentials::get() {
    std::lock_guard lk(mu_);
    Auth a;
    a.cert_file = cfg_.client_cert_file;
    a.key_file = cfg_.client_key_file;
    a.cert_pem = cfg_.client_cert_pem;
    a.key_pem = cfg_.client_key_pem;
    a.username = cfg_.username;
    a.password = cfg_.password;
    if (!cfg_.token.empty()) {
        a.bearer = cfg_.token;
    } else if (!cfg_.token_file.empty()) {
        if (auto st = read_token_file_locked(false); !st) return st.error();
        a.bearer = file_token_;
    }
    if (cfg_.exec && a.bearer.empty()) {
        // Expired credentials are refreshed before use (client-go: 'now is after expiry').
        bool expired = exec_cred_ && exec_cred_->expiration && *exec_cred_->expiration <= std::time(nullptr);
        if (!exec_cred_ || expired) {
            if (auto st = run_exec_locked(); !st) return st.error();
        }
        if (!exec_cred_->token.empty()) a.bearer = exec_cred_->token;
        if (!exec_cred_->client_certificate_data.empty()) {
            a.cert_pem = exec_cred_->client_certificate_data;
            a.key_pem = exec_cred_->client_key_data;
            a.cert_file.clear();
            a.key_file.clear();
        }
    }
    return a;
}

void Credentials::unauthorized(const Auth& used) {
    std::lock_guard lk(mu_);
    if (cfg_.exec && exec_cred_) {
        // Only forget the credential that was refused (another thread may have refreshed it already).
        bool same = used.bearer == exec_cred_->token && used.cert_pem == exec_cred_->client_certificate_data;
        if (same) exec_cred_.reset();
    }
    if (!cfg_.token_file.empty() && cfg_.token.empty()) (void)read_token_file_locked(true);
}

}  // namespace signet::kube
