#include "objects.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>

namespace signet::cache {

namespace {

Error invalid(std::string_view path, std::string_view message) {
    std::string m(path);
    m += ": ";
    m += message;
    return make_error(EINVAL, std::move(m));
}

std::string quoted(std::string_view s) {
    std::string out = "\"";
    out += s;
    out += '"';
    return out;
}

std::string indexed(std::string_view path, size_t i) {
    std::string p(path);
    p += '[';
    p += std::to_string(i);
    p += ']';
    return p;
}

std::string child(std::string_view path, std::string_view field) {
    std::string p(path);
    if (!p.empty()) p += '.';
    p += field;
    return p;
}

bool is_lower_alnum(char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}
bool is_alnum(char c) {
    return is_lower_alnum(c) || (c >= 'A' && c <= 'Z');
}

// ([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9] -- a label value or a key's name part, non-empty.
bool is_qualified_name_part(std::string_view s) {
    if (s.empty() || !is_alnum(s.front()) || !is_alnum(s.back())) return false;
    return std::all_of(s.begin(), s.end(), [](char c) { return is_alnum(c) || c == '-' || c == '_' || c == '.'; });
}

constexpr std::string_view kQualifiedNameRule =
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric "
    "character";

}  // namespace

// ---------------------------------------------------------------------------
// Selectors

bool matches(const LabelSelector& selector, const Labels& labels) {
    for (const auto& [key, value] : selector.match_labels) {
        auto it = labels.find(key);
        if (it == labels.end() || it->second != value) return false;
    }
    for (const Requirement& r : selector.match_expressions) {
        auto it = labels.find(r.key);
        bool present = it != labels.end();
        auto listed = [&] { return std::find(r.values.begin(), r.values.end(), it->second) != r.values.end(); };
        switch (r.op) {
            case Requirement::In:
                if (!present || !listed()) return false;
                break;
            case Requirement::NotIn:
                if (present && listed()) return false;
                break;
            case Requirement::Exists:
                if (!present) return false;
                break;
            case Requirement::DoesNotExist:
                if (present) return false;
                break;
        }
    }
    return true;
}

std::optional<Requirement::Op> parse_operator(std::string_view text) {
    if (text == "In") return Requirement::In;
    if (text == "NotIn") return Requirement::NotIn;
    if (text == "Exists") return Requirement::Exists;
    if (text == "DoesNotExist") return Requirement::DoesNotExist;
    return std::nullopt;
}

std::string_view to_string(Requirement::Op op) {
    switch (op) {
        case Requirement::In:
            return "In";
        case Requirement::NotIn:
            return "NotIn";
        case Requirement::Exists:
            return "Exists";
        case Requirement::DoesNotExist:
            return "DoesNotExist";
    }
    return "?";
}

std::string to_string(const LabelSelector& selector) {
    std::string out;
    auto sep = [&] {
        if (!out.empty()) out += ',';
    };
    for (const auto& [key, value] : selector.match_labels) {
        sep();
        out += key + "=" + value;
    }
    for (const Requirement& r : selector.match_expressions) {
        sep();
        switch (r.op) {
            case Requirement::In:
            case Requirement::NotIn: {
                out += r.key + (r.op == Requirement::In ? " in (" : " notin (");
                for (size_t i = 0; i < r.values.size(); ++i) out += (i ? "," : "") + r.values[i];
                out += ')';
                break;
            }
            case Requirement::Exists:
                out += r.key;
                break;
            case Requirement::DoesNotExist:
                out += "!" + r.key;
                break;
        }
    }
    return out;
}

// ---------------------------------------------------------------------------
// Enumerations

std::optional<Protocol> parse_protocol(std::string_view text) {
    if (text == "TCP") return Protocol::TCP;
    if (text == "UDP") return Protocol::UDP;
    if (text == "SCTP") return Protocol::SCTP;
    return std::nullopt;
}

std::string_view to_string(Protocol p) {
    switch (p) {
        case Protocol::TCP:
            return "TCP";
        case Protocol::UDP:
            return "UDP";
        case Protocol::SCTP:
            return "SCTP";
    }
    return "?";
}

std::optional<PolicyType> parse_policy_type(std::string_view text) {
    if (text == "Ingress") return PolicyType::Ingress;
    if (text == "Egress") return PolicyType::Egress;
    return std::nullopt;
}

std::string_view to_string(PolicyType t) {
    return t == PolicyType::Ingress ? "Ingress" : "Egress";
}

// ---------------------------------------------------------------------------
// Addresses

bool Cidr::contains(const Cidr& other) const {
    if (family != other.family || other.prefix_len < prefix_len) return false;
    int full = prefix_len / 8;
    if (std::memcmp(address.data(), other.address.data(), static_cast<size_t>(full)) != 0) return false;
    int rest = prefix_len % 8;
    if (rest == 0) return true;
    auto mask = static_cast<uint8_t>(0xff << (8 - rest));
    return (address[full] & mask) == (other.address[full] & mask);
}

std::string Cidr::to_string() const {
    char buf[INET6_ADDRSTRLEN] = {};
    inet_ntop(family == 4 ? AF_INET : AF_INET6, address.data(), buf, sizeof buf);
    return std::string(buf) + "/" + std::to_string(prefix_len);
}

Result<Cidr> parse_cidr(std::string_view text) {
    auto bad = [&](std::string_view why) {
        return make_error(EINVAL, "invalid CIDR " + quoted(text) + ": " + std::string(why));
    };
    auto slash = text.find('/');
    if (slash == std::string_view::npos || text.find('/', slash + 1) != std::string_view::npos)
        return bad("must be an address and a prefix length, e.g. 10.0.0.0/8");
    std::string addr(text.substr(0, slash));
    std::string_view len = text.substr(slash + 1);

    Cidr c;
    c.family = addr.find(':') != std::string::npos ? 6 : 4;
    if (addr.empty() || inet_pton(c.family == 4 ? AF_INET : AF_INET6, addr.c_str(), c.address.data()) != 1)
        return bad("not an IPv4 or IPv6 address");
    int max = c.family == 4 ? 32 : 128;
    auto [end, ec] = std::from_chars(len.data(), len.data() + len.size(), c.prefix_len);
    if (len.empty() || len.size() > 3 || ec != std::errc() || end != len.data() + len.size() || c.prefix_len < 0 ||
        c.prefix_len > max)
        return bad("prefix length must be 0.." + std::to_string(max));
    // Clear host bits.
    for (int bit = c.prefix_len; bit < max; ++bit) c.address[bit / 8] &= static_cast<uint8_t>(~(0x80 >> (bit % 8)));
    return c;
}

bool is_ip_address(std::string_view text) {
    std::string s(text);
    std::array<uint8_t, 16> buf{};
    return !s.empty() &&
           (inet_pton(AF_INET, s.c_str(), buf.data()) == 1 || inet_pton(AF_INET6, s.c_str(), buf.data()) == 1);
}

// ---------------------------------------------------------------------------
// Policies

bool NetworkPolicy::affects_ingress() const {
    return std::find(policy_types.begin(), policy_types.end(), PolicyType::Ingress) != policy_types.end();
}

bool NetworkPolicy::affects_egress() const {
    return std::find(policy_types.begin(), policy_types.end(), PolicyType::Egress) != policy_types.end();
}

std::vector<PolicyType> effective_policy_types(const std::vector<PolicyType>& explicit_types,
                                               const std::vector<EgressRule>& egress) {
    bool ingress = false, has_egress = false;
    if (explicit_types.empty()) {
        // SetDefaults_NetworkPolicy: "Any policy that does not specify policyTypes implies at least
        // Ingress"; Egress only when there is at least one egress rule (`egress: []` does not count).
        ingress = true;
        has_egress = !egress.empty();
    } else {
        for (PolicyType t : explicit_types) (t == PolicyType::Ingress ? ingress : has_egress) = true;
    }
    std::vector<PolicyType> out;
    if (ingress) out.push_back(PolicyType::Ingress);
    if (has_egress) out.push_back(PolicyType::Egress);
    return out;
}

// ---------------------------------------------------------------------------
// Objects and snapshots

Workload workload_of(const Pod& pod) {
    if (pod.owner_kind.empty() || pod.owner_name.empty()) return {"Pod", pod.name};
    if (pod.owner_kind == "ReplicaSet") {
        // Deployment D's ReplicaSets are named D-<pod-template-hash>, the hash
        // also being the pod's pod-template-hash label.
        auto h = pod.labels.find("pod-template-hash");
        if (h != pod.labels.end() && !h->second.empty() && pod.owner_name.size() > h->second.size() + 1) {
            const size_t cut = pod.owner_name.size() - h->second.size();
            if (pod.owner_name.compare(cut, std::string::npos, h->second) == 0 && pod.owner_name[cut - 1] == '-')
                return {"Deployment", pod.owner_name.substr(0, cut - 1)};
        }
    }
    return {pod.owner_kind, pod.owner_name};
}

std::string_view kind_of(const Object& obj) {
    switch (obj.index()) {
        case 0:
            return "Namespace";
        case 1:
            return "Pod";
        case 2:
            return "NetworkPolicy";
        default:
            return "Service";
    }
}

bool is_service_type(std::string_view text) {
    return text == "ClusterIP" || text == "NodePort" || text == "LoadBalancer" || text == "ExternalName";
}

std::string display_name(const Object& obj) {
    return std::visit(
        [](const auto& o) -> std::string {
            if constexpr (std::is_same_v<std::decay_t<decltype(o)>, Namespace>)
                return o.name;
            else
                return o.namespace_ + "/" + o.name;
        },
        obj);
}

bool Snapshot::put(const Object& obj) {
    auto store = [](auto& map, auto key, const auto& value) {
        auto [it, inserted] = map.insert_or_assign(std::move(key), value);
        return !inserted;
    };
    if (const auto* ns = std::get_if<Namespace>(&obj)) return store(namespaces, ns->name, *ns);
    if (const auto* pod = std::get_if<Pod>(&obj)) return store(pods, ObjectKey{pod->namespace_, pod->name}, *pod);
    if (const auto* svc = std::get_if<Service>(&obj)) return store(services, ObjectKey{svc->namespace_, svc->name}, *svc);
    const auto& np = std::get<NetworkPolicy>(obj);
    return store(policies, ObjectKey{np.namespace_, np.name}, np);
}

void Delta::note(const Object& obj) {
    if (const auto* ns = std::get_if<Namespace>(&obj)) namespaces.insert(ns->name);
    else if (const auto* pod = std::get_if<Pod>(&obj)) pods.insert(ObjectKey{pod->namespace_, pod->name});
    else if (const auto* np = std::get_if<NetworkPolicy>(&obj)) policies.insert(ObjectKey{np->namespace_, np->name});
    else if (const auto* svc = std::get_if<Service>(&obj)) services.insert(ObjectKey{svc->namespace_, svc->name});
}

void Delta::merge(const Delta& other) {
    all = all || other.all;
    namespaces.insert(other.namespaces.begin(), other.namespaces.end());
    pods.insert(other.pods.begin(), other.pods.end());
    policies.insert(other.policies.begin(), other.policies.end());
    services.insert(other.services.begin(), other.services.end());
}

namespace {
template <typename Map, typename Keys>
bool same_under(const Map& a, const Map& b, const Keys& keys) {
    for (const auto& k : keys) {
        auto x = a.find(k), y = b.find(k);
        if ((x == a.end()) != (y == b.end())) return false;
        if (x != a.end() && !(x->second == y->second)) return false;
    }
    return true;
}
}  // namespace

bool Delta::same_in(const Snapshot& a, const Snapshot& b) const {
    if (all) return a == b;
    return same_under(a.namespaces, b.namespaces, namespaces) && same_under(a.pods, b.pods, pods) &&
           same_under(a.policies, b.policies, policies) && same_under(a.services, b.services, services);
}

// ---------------------------------------------------------------------------
// Validation

bool is_dns1123_label(std::string_view s) {
    if (s.empty() || s.size() > 63 || !is_lower_alnum(s.front()) || !is_lower_alnum(s.back())) return false;
    return std::all_of(s.begin(), s.end(), [](char c) { return is_lower_alnum(c) || c == '-'; });
}

bool is_dns1123_subdomain(std::string_view s) {
    if (s.empty() || s.size() > 253) return false;
    size_t start = 0;
    while (true) {
        size_t dot = s.find('.', start);
        std::string_view part = s.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start);
        // Each dot-separated part follows the label rule (the 63 limit applies to the whole name only).
        if (part.empty() || !is_lower_alnum(part.front()) || !is_lower_alnum(part.back()) ||
            !std::all_of(part.begin(), part.end(), [](char c) { return is_lower_alnum(c) || c == '-'; }))
            return false;
        if (dot == std::string_view::npos) return true;
        start = dot + 1;
    }
}

std::string check_label_key(std::string_view key) {
    std::string_view name = key;
    auto slash = key.find('/');
    if (slash != std::string_view::npos) {
        std::string_view prefix = key.substr(0, slash);
        name = key.substr(slash + 1);
        if (prefix.empty()) return "prefix part must be non-empty";
        if (!is_dns1123_subdomain(prefix))
            return "prefix part must be a lowercase RFC 1123 subdomain (e.g. 'example.com')";
        if (name.find('/') != std::string_view::npos)
            return "a qualified name must be a name with an optional DNS subdomain prefix and '/' (e.g. "
                   "'example.com/MyName')";
    }
    if (name.empty()) return "name part must be non-empty";
    if (name.size() > 63) return "name part must be no more than 63 characters";
    if (!is_qualified_name_part(name)) return "name part " + std::string(kQualifiedNameRule);
    return {};
}

std::string check_label_value(std::string_view value) {
    if (value.empty()) return {};
    if (value.size() > 63) return "must be no more than 63 characters";
    if (!is_qualified_name_part(value))
        return "a valid label value must be empty or " + std::string(kQualifiedNameRule);
    return {};
}

bool is_port_name(std::string_view s) {
    if (s.empty() || s.size() > 15 || s.front() == '-' || s.back() == '-') return false;
    if (s.find("--") != std::string_view::npos) return false;
    bool letter = false;
    for (char c : s) {
        if (!is_lower_alnum(c) && c != '-') return false;
        letter = letter || (c >= 'a' && c <= 'z');
    }
    return letter;
}

Status validate_labels(const Labels& labels, std::string_view path) {
    for (const auto& [key, value] : labels) {
        if (auto why = check_label_key(key); !why.empty())
            return invalid(path, "invalid label key " + quoted(key) + ": " + why);
        if (auto why = check_label_value(value); !why.empty())
            return invalid(child(path, key), "invalid label value " + quoted(value) + ": " + why);
    }
    return {};
}

Status validate(const LabelSelector& selector, std::string_view path) {
    if (auto st = validate_labels(selector.match_labels, child(path, "matchLabels")); !st) return st;
    for (size_t i = 0; i < selector.match_expressions.size(); ++i) {
        const Requirement& r = selector.match_expressions[i];
        std::string p = indexed(child(path, "matchExpressions"), i);
        if (auto why = check_label_key(r.key); !why.empty())
            return invalid(child(p, "key"), "invalid label key " + quoted(r.key) + ": " + why);
        switch (r.op) {
            case Requirement::In:
            case Requirement::NotIn:
                if (r.values.empty())
                    return invalid(child(p, "values"), "must be specified when `operator` is 'In' or 'NotIn'");
                break;
            case Requirement::Exists:
            case Requirement::DoesNotExist:
                if (!r.values.empty())
                    return invalid(child(p, "values"),
                                   "may not be specified when `operator` is 'Exists' or 'DoesNotExist'");
                break;
        }
        for (size_t j = 0; j < r.values.size(); ++j)
            if (auto why = check_label_value(r.values[j]); !why.empty())
                return invalid(indexed(child(p, "values"), j),
                               "invalid label value " + quoted(r.values[j]) + ": " + why);
    }
    return {};
}

namespace {

Status validate_namespace_name(std::string_view ns) {
    if (ns.empty()) return invalid("metadata.namespace", "must not be empty");
    if (!is_dns1123_label(ns))
        return invalid("metadata.namespace", "invalid value " + quoted(ns) +
                                                 ": a lowercase RFC 1123 label must "
                                                 "consist of lower case alphanumeric characters or '-', start and end "
                                                 "with an alphanumeric character, and be at most 63 characters");
    return {};
}

Status validate_subdomain_name(std::string_view name) {
    if (name.empty()) return invalid("metadata.name", "required value");
    if (!is_dns1123_subdomain(name))
        return invalid("metadata.name", "invalid value " + quoted(name) +
                                            ": a lowercase RFC 1123 subdomain must "
                                            "consist of lower case alphanumeric characters, '-' or '.', and must start "
                                            "and end with an alphanumeric character, at most 253 characters");
    return {};
}

Status validate_port_number(int64_t port, std::string_view path) {
    if (port < 1 || port > 65535)
        return invalid(path, "invalid value " + std::to_string(port) + ": must be between 1 and 65535, inclusive");
    return {};
}

Status validate_policy_port(const PolicyPort& port, std::string_view path) {
    if (port.port) {
        if (const auto* num = std::get_if<int32_t>(&*port.port)) {
            if (auto st = validate_port_number(*num, child(path, "port")); !st) return st;
        } else {
            const auto& name = std::get<std::string>(*port.port);
            if (!is_port_name(name))
                return invalid(child(path, "port"),
                               "invalid value " + quoted(name) +
                                   ": must be a port number or a port name of at most 15 characters: lower case "
                                   "alphanumerics and '-', at least one letter, no leading, trailing or doubled '-'");
        }
    }
    if (port.end_port) {
        if (!port.port) return invalid(child(path, "port"), "must be specified when endPort is specified");
        const auto* num = std::get_if<int32_t>(&*port.port);
        if (num == nullptr) return invalid(child(path, "endPort"), "may not be specified when `port` is non-numeric");
        if (*port.end_port < *num)
            return invalid(child(path, "endPort"), "invalid value " + std::to_string(*port.end_port) +
                                                       ": must be greater than or equal to `port`");
        if (auto st = validate_port_number(*port.end_port, child(path, "endPort")); !st) return st;
    }
    return {};
}

Status validate_peer(const Peer& peer, std::string_view path) {
    int fields = (peer.pod_selector ? 1 : 0) + (peer.namespace_selector ? 1 : 0) + (peer.ip_block ? 1 : 0);
    if (fields == 0) return invalid(path, "must specify a peer (podSelector, namespaceSelector or ipBlock)");
    if (peer.ip_block && fields > 1) return invalid(path, "may not specify both ipBlock and another peer");
    if (peer.pod_selector)
        if (auto st = validate(*peer.pod_selector, child(path, "podSelector")); !st) return st;
    if (peer.namespace_selector)
        if (auto st = validate(*peer.namespace_selector, child(path, "namespaceSelector")); !st) return st;
    if (peer.ip_block) {
        const IpBlock& b = *peer.ip_block;
        for (size_t i = 0; i < b.except.size(); ++i) {
            const Cidr& e = b.except[i];
            if (!b.cidr.contains(e) || e.prefix_len <= b.cidr.prefix_len)
                return invalid(indexed(child(path, "ipBlock.except"), i), "invalid value " + quoted(e.to_string()) +
                                                                              ": must be a strict subset of `cidr` " +
                                                                              b.cidr.to_string());
        }
    }
    return {};
}

template <typename Rule>
Status validate_rule(const Rule& rule, const std::optional<std::vector<Peer>>& peers, std::string_view path,
                     std::string_view peers_field) {
    if (rule.ports)
        for (size_t i = 0; i < rule.ports->size(); ++i)
            if (auto st = validate_policy_port((*rule.ports)[i], indexed(child(path, "ports"), i)); !st) return st;
    if (peers)
        for (size_t i = 0; i < peers->size(); ++i)
            if (auto st = validate_peer((*peers)[i], indexed(child(path, peers_field), i)); !st) return st;
    return {};
}

}  // namespace

Status validate(const Namespace& ns) {
    if (ns.name.empty()) return invalid("metadata.name", "required value");
    if (!is_dns1123_label(ns.name))
        return invalid("metadata.name", "invalid value " + quoted(ns.name) +
                                            ": a lowercase RFC 1123 label must "
                                            "consist of lower case alphanumeric characters or '-', start and end "
                                            "with an alphanumeric character, and be at most 63 characters");
    return validate_labels(ns.labels, "metadata.labels");
}

Status validate(const Pod& pod) {
    if (auto st = validate_namespace_name(pod.namespace_); !st) return st;
    if (auto st = validate_subdomain_name(pod.name); !st) return st;
    if (auto st = validate_labels(pod.labels, "metadata.labels"); !st) return st;
    for (size_t i = 0; i < pod.container_ports.size(); ++i) {
        const api::ContainerPort& cp = pod.container_ports[i];
        std::string p = "spec.containers[*].ports[" + std::to_string(i) + "]";
        if (auto st = validate_port_number(cp.port, p + ".containerPort"); !st) return st;
        if (!parse_protocol(cp.protocol))
            return invalid(p + ".protocol", "unsupported value " + quoted(cp.protocol) +
                                                ": supported values: \"SCTP\", \"TCP\", \"UDP\"");
        if (!cp.name.empty() && !is_port_name(cp.name))
            return invalid(p + ".name", "invalid value " + quoted(cp.name) + ": must be a valid port name");
    }
    for (size_t i = 0; i < pod.pod_ips.size(); ++i)
        if (!is_ip_address(pod.pod_ips[i]))
            return invalid(indexed("status.podIPs", i) + ".ip",
                           "invalid value " + quoted(pod.pod_ips[i]) + ": must be a valid IP address");
    return {};
}

Status validate(const NetworkPolicy& np) {
    if (auto st = validate_namespace_name(np.namespace_); !st) return st;
    if (auto st = validate_subdomain_name(np.name); !st) return st;
    if (auto st = validate(np.pod_selector, "spec.podSelector"); !st) return st;
    for (size_t i = 0; i < np.ingress.size(); ++i)
        if (auto st = validate_rule(np.ingress[i], np.ingress[i].from, indexed("spec.ingress", i), "from"); !st)
            return st;
    for (size_t i = 0; i < np.egress.size(); ++i)
        if (auto st = validate_rule(np.egress[i], np.egress[i].to, indexed("spec.egress", i), "to"); !st) return st;
    if (np.policy_types.empty()) return invalid("spec.policyTypes", "must not be empty after defaulting");
    return {};
}

namespace {

// RFC 1035 label (Service names): [a-z]([-a-z0-9]*[a-z0-9])?, at most 63 characters.
bool is_dns1035_label(std::string_view s) {
    return is_dns1123_label(s) && s.front() >= 'a' && s.front() <= 'z';
}

int ip_family(std::string_view ip) {
    return ip.find(':') == std::string_view::npos ? 4 : 6;
}

Status validate_ips(const std::vector<std::string>& ips, std::string_view path) {
    for (size_t i = 0; i < ips.size(); ++i)
        if (!is_ip_address(ips[i]))
            return invalid(indexed(path, i), "invalid value " + quoted(ips[i]) + ": must be a valid IP address");
    return {};
}

}  // namespace

Status validate(const Service& svc) {
    if (auto st = validate_namespace_name(svc.namespace_); !st) return st;
    if (svc.name.empty()) return invalid("metadata.name", "required value");
    if (!is_dns1035_label(svc.name))
        return invalid("metadata.name", "invalid value " + quoted(svc.name) +
                                            ": a DNS-1035 label must consist of lower case alphanumeric characters "
                                            "or '-', start with an alphabetic character, end with an alphanumeric "
                                            "character, and be at most 63 characters");
    if (!is_service_type(svc.type))
        return invalid("spec.type", "unsupported value " + quoted(svc.type) +
                                        ": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", "
                                        "\"NodePort\"");
    bool external_name = svc.type == "ExternalName";
    if (external_name && !svc.cluster_ips.empty())
        return invalid("spec.clusterIPs", "may not be set for type ExternalName");
    if (svc.cluster_ips.size() > 2) return invalid("spec.clusterIPs", "may have at most 2 entries (one per family)");
    if (auto st = validate_ips(svc.cluster_ips, "spec.clusterIPs"); !st) return st;
    if (svc.cluster_ips.size() == 2 && ip_family(svc.cluster_ips[0]) == ip_family(svc.cluster_ips[1]))
        return invalid("spec.clusterIPs[1]", "must be of a different IP family than spec.clusterIPs[0]");
    if (auto st = validate_ips(svc.external_ips, "spec.externalIPs"); !st) return st;
    for (size_t i = 0; i < svc.load_balancer_ips.size(); ++i)  // the ingress entries that have an ip
        if (!is_ip_address(svc.load_balancer_ips[i]))
            return invalid(indexed("status.loadBalancer.ingress", i) + ".ip",
                           "invalid value " + quoted(svc.load_balancer_ips[i]) + ": must be a valid IP address");
    if (svc.selector)
        if (auto st = validate_labels(*svc.selector, "spec.selector"); !st) return st;
    bool node_ports = svc.type == "NodePort" || svc.type == "LoadBalancer";
    std::set<std::string_view> names;
    for (size_t i = 0; i < svc.ports.size(); ++i) {
        const ServicePort& sp = svc.ports[i];
        std::string p = indexed("spec.ports", i);
        if (sp.name.empty()) {
            if (svc.ports.size() > 1) return invalid(child(p, "name"), "required value (more than one port)");
        } else {
            if (!is_dns1123_label(sp.name))
                return invalid(child(p, "name"), "invalid value " + quoted(sp.name) +
                                                     ": must be a lowercase RFC 1123 label of at most 63 characters");
            if (!names.insert(sp.name).second) return invalid(child(p, "name"), "duplicate value " + quoted(sp.name));
        }
        if (auto st = validate_port_number(sp.port, child(p, "port")); !st) return st;
        if (!sp.target_port.empty()) {
            int64_t n = 0;
            auto [end, ec] = std::from_chars(sp.target_port.data(), sp.target_port.data() + sp.target_port.size(), n);
            bool numeric = ec == std::errc() && end == sp.target_port.data() + sp.target_port.size();
            if (numeric) {
                if (auto st = validate_port_number(n, child(p, "targetPort")); !st) return st;
            } else if (!is_port_name(sp.target_port)) {
                return invalid(child(p, "targetPort"), "invalid value " + quoted(sp.target_port) +
                                                           ": must be a port number or a port name of at most 15 "
                                                           "characters: lower case alphanumerics and '-', at least "
                                                           "one letter, no leading, trailing or doubled '-'");
            }
        }
        if (sp.node_port != 0 && !node_ports)
            return invalid(child(p, "nodePort"), "may not be used when `type` is " + quoted(svc.type));
    }
    if (svc.ports.empty() && !external_name && !svc.cluster_ips.empty())
        return invalid("spec.ports", "required value");
    return {};
}

Status validate(const Object& obj) {
    return std::visit([](const auto& o) { return validate(o); }, obj);
}

}  // namespace signet::cache
