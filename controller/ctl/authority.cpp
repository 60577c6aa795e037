// signetctl authority init | issue: the built-in cluster authority for
// clusters without a Kubernetes CSR signer (docs/handshake.md).
#include "ctl/authority.h"

#include <cstdio>
#include <ctime>
#include <optional>

#include "identity/authority.h"
#include "signet/duration.h"
#include "signet/fsutil.h"

namespace signet::ctl {
namespace {

using namespace signet::identity;

constexpr const char* kUsage = R"(Usage:
  signetctl authority init DIR [--trust-domain D] [--validity DURATION]
      create a cluster authority in DIR: ca.key (0600), ca.crt, trust-bundle.pem.
      Refuses to overwrite an existing authority.
      --trust-domain   the cluster's trust domain (default cluster.local)
      --validity       the CA's lifetime (default 87600h, 10 years)
  signetctl authority issue DIR --node NAME --out DIR2 [--validity DURATION]
      issue a node key and certificate with the authority in DIR, into DIR2:
      node.key (0600, created there), node.crt, trust-bundle.pem. For nodes
      that run without the CA key; refuses to overwrite DIR2/node.key.
      --validity       the certificate's lifetime (default and most 24h: expiry
                       is its only revocation, and nodes refuse a peer
                       certificate that lives longer; renew when a third of
                       it remains)
  signetctl authority issue-workload DIR --namespace NS --service-account SA --out DIR2
                                    [--validity DURATION]
      issue a workload's key and X.509-SVID (spiffe://<trust domain>/ns/NS/sa/SA,
      docs/workload-identity.md) with the authority in DIR, into DIR2: svid.key
      (0600, created there), svid.crt, trust-bundle.pem; refuses to overwrite
      DIR2/svid.key.
      --validity       the certificate's lifetime (default 1h, at most 24h)

DURATION: a number with a unit h, m or s (e.g. 87600h, 90m).
Exit status: 0 on success, 1 on failure, 2 on a usage error.
)";

int usage_error(const std::string& msg) {
    std::fprintf(stderr, "signetctl authority: %s\n%s", msg.c_str(), kUsage);
    return 2;
}

int failure(const std::string& msg) {
    std::fprintf(stderr, "signetctl authority: %s\n", msg.c_str());
    return 1;
}

// --validity: from a minute to 100 years (in hours for long ones: 8760h).
std::optional<std::chrono::seconds> parse_duration(const std::string& text) {
    auto d = signet::parse_duration(text, std::chrono::minutes(1), std::chrono::hours(100 * 366 * 24));
    if (!d) return std::nullopt;
    return std::chrono::duration_cast<std::chrono::seconds>(*d);
}

std::string utc(TimePoint t) {
    time_t tt = Clock::to_time_t(t);
    struct tm tm {};
    gmtime_r(&tt, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

// Splits flags (--name value | --name=value) from positionals.
struct Parsed {
    std::vector<std::string> positional;
    std::vector<std::pair<std::string, std::string>> flags;
    bool help = false;
    std::string error;
};

Parsed parse_args(const std::vector<std::string>& args, const std::vector<std::string>& known) {
    Parsed p;
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        if (a == "-h" || a == "--help") {
            p.help = true;
            continue;
        }
        if (a.rfind("--", 0) != 0) {
            p.positional.push_back(a);
            continue;
        }
        std::string name = a, value;
        bool has_value = false;
        if (size_t eq = a.find('='); eq != std::string::npos) {
            name = a.substr(0, eq);
            value = a.substr(eq + 1);
            has_value = true;
        }
        bool ok = false;
        for (const auto& k : known) ok = ok || k == name;
        if (!ok) {
            p.error = "unknown flag " + name;
            return p;
        }
        if (!has_value) {
            if (i + 1 >= args.size()) {
                p.error = name + " needs a value";
                return p;
            }
            value = args[++i];
        }
        for (const auto& f : p.flags)
            if (f.first == name) {
                p.error = name + " given twice";
                return p;
            }
        p.flags.emplace_back(name, value);
    }
    return p;
}

std::optional<std::string> flag(const Parsed& p, const std::string& name) {
    for (const auto& f : p.flags)
        if (f.first == name) return f.second;
    return std::nullopt;
}

int cmd_init(const std::vector<std::string>& args) {
    Parsed p = parse_args(args, {"--trust-domain", "--validity"});
    if (p.help) {
        std::fputs(kUsage, stdout);
        return 0;
    }
    if (!p.error.empty()) return usage_error(p.error);
    if (p.positional.size() != 1) return usage_error("init takes one folder");
    AuthorityOptions opts;
    if (auto td = flag(p, "--trust-domain")) {
        if (!valid_trust_domain(*td)) return usage_error("invalid trust domain " + *td + " (use [a-z0-9._-])");
        opts.trust_domain = *td;
    }
    if (auto v = flag(p, "--validity")) {
        auto d = parse_duration(*v);
        if (!d) return usage_error("invalid --validity " + *v);
        opts.validity = *d;
    }
    const std::string& dir = p.positional[0];
    if (auto st = init_authority(dir, opts); !st) return failure(st.error().message);
    auto a = Authority::load(dir);
    if (!a) return failure(a.error().message);
    std::printf("created the authority of trust domain %s in %s: ca.key (0600), ca.crt, trust-bundle.pem; valid until %s\n",
                opts.trust_domain.c_str(), dir.c_str(), utc(cert_not_after(a->certificate())).c_str());
    return 0;
}

int cmd_issue(const std::vector<std::string>& args) {
    Parsed p = parse_args(args, {"--node", "--out", "--validity"});
    if (p.help) {
        std::fputs(kUsage, stdout);
        return 0;
    }
    if (!p.error.empty()) return usage_error(p.error);
    if (p.positional.size() != 1) return usage_error("issue takes the authority's folder");
    auto node = flag(p, "--node");
    auto out = flag(p, "--out");
    if (!node || !out) return usage_error("issue needs --node NAME and --out DIR");
    if (!valid_dns_subdomain(*node)) return usage_error("invalid node name " + *node + " (a Kubernetes node name)");
    IssueOptions opts;
    if (auto v = flag(p, "--validity")) {
        auto d = parse_duration(*v);
        if (!d) return usage_error("invalid --validity " + *v);
        if (*d > kMaxNodeValidity)
            return usage_error("--validity " + *v + " is over 24h: a node certificate lives at most 24h (expiry is its "
                               "only revocation, and nodes refuse longer ones); issue a new one before it expires");
        opts.validity = *d;
    }
    auto a = Authority::load(p.positional[0]);
    if (!a) return failure(a.error().message);
    if (auto st = issue_node(*a, *node, *out, opts); !st) return failure(st.error().message);
    auto bundle = TrustBundle::load(*out + "/trust-bundle.pem");
    if (!bundle) return failure(bundle.error().message);
    auto creds = NodeCredentials::load(*out, *bundle, Clock::now());
    if (!creds) return failure("issued, but the result does not verify: " + creds.error().message);
    std::printf("issued node %s of trust domain %s into %s: node.key (0600), node.crt, trust-bundle.pem; "
                "valid until %s (renew after %s)\n",
                node->c_str(), a->trust_domain().c_str(), out->c_str(), utc(creds->identity.not_after).c_str(),
                utc(creds->identity.not_after - (creds->identity.not_after - creds->identity.not_before) / 3).c_str());
    return 0;
}

int cmd_issue_workload(const std::vector<std::string>& args) {
    Parsed p = parse_args(args, {"--namespace", "--service-account", "--out", "--validity"});
    if (p.help) {
        std::fputs(kUsage, stdout);
        return 0;
    }
    if (!p.error.empty()) return usage_error(p.error);
    if (p.positional.size() != 1) return usage_error("issue-workload takes the authority's folder");
    auto ns = flag(p, "--namespace");
    auto sa = flag(p, "--service-account");
    auto out = flag(p, "--out");
    if (!ns || !sa || !out) return usage_error("issue-workload needs --namespace NS, --service-account SA and --out DIR");
    if (!valid_dns_label(*ns)) return usage_error("invalid namespace " + *ns + " (a Kubernetes namespace name)");
    if (!valid_dns_subdomain(*sa)) return usage_error("invalid service account " + *sa + " (a Kubernetes name)");
    WorkloadIssueOptions opts;
    if (auto v = flag(p, "--validity")) {
        auto d = parse_duration(*v);
        if (!d) return usage_error("invalid --validity " + *v);
        if (*d > kMaxWorkloadValidity)
            return usage_error("--validity " + *v + " is over 24h: a workload certificate lives at most 24h "
                               "(short-lived: expiry is its only revocation)");
        opts.validity = *d;
    }
    auto a = Authority::load(p.positional[0]);
    if (!a) return failure(a.error().message);
    if (auto st = issue_workload_files(*a, *ns, *sa, *out, opts); !st) return failure(st.error().message);
    auto bundle = TrustBundle::load(*out + "/trust-bundle.pem");
    if (!bundle) return failure(bundle.error().message);
    auto pem = signet::fs::read_file(*out + "/svid.crt");
    if (!pem) return failure(pem.error().message);
    auto certs = parse_certs_pem(*pem);
    if (!certs) return failure(certs.error().message);
    auto id = bundle->verify_workload(certs->front().get(), {}, Clock::now());
    if (!id) return failure("issued, but the result does not verify: " + id.error().message);
    std::printf("issued %s into %s: svid.key (0600), svid.crt, trust-bundle.pem; valid until %s (renew after %s)\n",
                id->spiffe_id.c_str(), out->c_str(), utc(id->not_after).c_str(),
                utc(id->not_after - (id->not_after - id->not_before) / 2).c_str());
    return 0;
}

}  // namespace

int authority_command(const std::vector<std::string>& args) {
    if (args.empty()) return usage_error("missing subcommand (init, issue or issue-workload)");
    if (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
        std::fputs(kUsage, stdout);
        return 0;
    }
    std::vector<std::string> rest(args.begin() + 1, args.end());
    if (args[0] == "init") return cmd_init(rest);
    if (args[0] == "issue") return cmd_issue(rest);
    if (args[0] == "issue-workload") return cmd_issue_workload(rest);
    return usage_error("unknown subcommand " + args[0]);
}

}  // namespace signet::ctl
