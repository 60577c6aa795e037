#include "identity/csr_policy.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <algorithm>
#include <array>

#include "identity/authority.h"
#include "identity/crypto.h"
#include "signet/json.h"

namespace signet::identity::csr {

namespace {

struct BioFree {
    void operator()(BIO* b) const { BIO_free(b); }
};

constexpr size_t kMaxRequestBytes = 64 * 1024;  // a P-256 CSR is ~400 bytes of PEM

std::string entry(const X509_NAME* name, int nid, int* count) {
    int idx = X509_NAME_get_index_by_NID(name, nid, -1);
    if (idx < 0) return {};
    int more = X509_NAME_get_index_by_NID(name, nid, idx);
    if (more >= 0) {
        *count = -1;  // repeated: never "exactly"
        return {};
    }
    const ASN1_STRING* s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, idx));
    if (!s) return {};
    return std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)), static_cast<size_t>(ASN1_STRING_length(s)));
}

bool is_p256_key(EVP_PKEY* key) {
    if (!key || !EVP_PKEY_is_a(key, "EC")) return false;
    char group[64] = {};
    size_t len = 0;
    if (EVP_PKEY_get_utf8_string_param(key, "group", group, sizeof group, &len) != 1) return false;
    return std::string_view(group, len) == "prime256v1";
}

Verdict deny(std::string node, const char* reason, std::string message) {
    return Verdict{Action::Deny, std::move(node), reason, std::move(message)};
}

// A string for messages: printable ASCII, at most 200 characters.
std::string printable(std::string_view s) {
    std::string out;
    for (char c : s.substr(0, 200)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
    if (s.size() > 200) out += "...";
    return out;
}

}  // namespace

std::string base64_encode(std::string_view data) {
    static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    out.reserve((data.size() + 2) / 3 * 4);
    size_t i = 0;
    for (; i + 2 < data.size(); i += 3) {
        uint32_t v = (uint8_t(data[i]) << 16) | (uint8_t(data[i + 1]) << 8) | uint8_t(data[i + 2]);
        out += kAlphabet[(v >> 18) & 63];
        out += kAlphabet[(v >> 12) & 63];
        out += kAlphabet[(v >> 6) & 63];
        out += kAlphabet[v & 63];
    }
    if (i < data.size()) {
        uint32_t v = uint8_t(data[i]) << 16;
        if (i + 1 < data.size()) v |= uint8_t(data[i + 1]) << 8;
        out += kAlphabet[(v >> 18) & 63];
        out += kAlphabet[(v >> 12) & 63];
        out += i + 1 < data.size() ? kAlphabet[(v >> 6) & 63] : '=';
        out += '=';
    }
    return out;
}

std::optional<std::string> base64_decode(std::string_view text) {
    auto val = [](char c) -> int {
        if (c >= 'A' && c <= 'Z') return c - 'A';
        if (c >= 'a' && c <= 'z') return c - 'a' + 26;
        if (c >= '0' && c <= '9') return c - '0' + 52;
        if (c == '+') return 62;
        if (c == '/') return 63;
        return -1;
    };
    if (text.size() % 4 != 0) return std::nullopt;
    std::string out;
    out.reserve(text.size() / 4 * 3);
    for (size_t i = 0; i < text.size(); i += 4) {
        int v[4];
        int pad = 0;
        for (int k = 0; k < 4; ++k) {
            char c = text[i + k];
            if (c == '=') {
                // padding only at the very end, at most two
                if (i + 4 != text.size() || k < 2) return std::nullopt;
                v[k] = 0;
                ++pad;
            } else {
                if (pad) return std::nullopt;
                v[k] = val(c);
                if (v[k] < 0) return std::nullopt;
            }
        }
        uint32_t n = (uint32_t(v[0]) << 18) | (uint32_t(v[1]) << 12) | (uint32_t(v[2]) << 6) | uint32_t(v[3]);
        out += char((n >> 16) & 0xff);
        if (pad < 2) out += char((n >> 8) & 0xff);
        if (pad < 1) out += char(n & 0xff);
    }
    return out;
}

Result<CsrObject> parse_csr_object(const rapidjson::Value& obj) {
    if (!obj.IsObject()) return make_error(EINVAL, "a CertificateSigningRequest must be a JSON object");
    const auto* md = json::find(obj, "metadata");
    if (!md || !md->IsObject()) return make_error(EINVAL, "CertificateSigningRequest without metadata");
    const auto* name = json::find(*md, "name");
    if (!name || !name->IsString() || name->GetStringLength() == 0 || name->GetStringLength() > 253)
        return make_error(EINVAL, "CertificateSigningRequest without a valid metadata.name");
    CsrObject c;
    c.name.assign(name->GetString(), name->GetStringLength());
    if (auto u = json::opt_string(*md, "uid")) c.uid = *u;
    if (auto rv = json::opt_string(*md, "resourceVersion")) c.resource_version = *rv;
    if (const auto* kind = json::find(obj, "kind"); kind && (!kind->IsString() || std::string_view(kind->GetString()) != "CertificateSigningRequest"))
        c.malformed = "kind is not CertificateSigningRequest";

    auto bad = [&c](std::string what) {
        if (c.malformed.empty()) c.malformed = std::move(what);
    };
    const auto* spec = json::find(obj, "spec");
    if (!spec || !spec->IsObject()) {
        bad("spec missing");
    } else {
        if (const auto* s = json::find(*spec, "signerName"); s && s->IsString()) c.signer_name = s->GetString();
        else bad("spec.signerName missing");
        if (const auto* u = json::find(*spec, "username"); u) {
            if (u->IsString()) c.username.assign(u->GetString(), u->GetStringLength());
            else bad("spec.username is not a string");
        }
        auto strings = [&](const char* key, std::vector<std::string>* out) {
            const auto* a = json::find(*spec, key);
            if (!a || a->IsNull()) return;
            if (!a->IsArray()) return bad(std::string("spec.") + key + " is not a list");
            for (const auto& v : a->GetArray()) {
                if (!v.IsString()) return bad(std::string("spec.") + key + " holds a non-string");
                out->emplace_back(v.GetString(), v.GetStringLength());
            }
        };
        strings("groups", &c.groups);
        strings("usages", &c.usages);
        // extra: map of string to list of strings (user.Info's Extra).
        if (const auto* x = json::find(*spec, "extra"); x && !x->IsNull()) {
            if (!x->IsObject()) {
                bad("spec.extra is not a map");
            } else {
                for (const auto& m : x->GetObject()) {
                    std::vector<std::string> values;
                    bool ok = m.value.IsArray();
                    if (ok) {
                        for (const auto& v : m.value.GetArray()) {
                            if (!v.IsString()) { ok = false; break; }
                            values.emplace_back(v.GetString(), v.GetStringLength());
                        }
                    }
                    if (!ok) {
                        bad("spec.extra holds a value that is not a list of strings");
                        break;
                    }
                    c.extra.emplace_back(std::string(m.name.GetString(), m.name.GetStringLength()), std::move(values));
                }
            }
        }
        if (const auto* e = json::find(*spec, "expirationSeconds"); e && !e->IsNull()) {
            if (e->IsInt64() && e->GetInt64() > 0) c.expiration_seconds = e->GetInt64();
            else bad("spec.expirationSeconds is not a positive integer");
        }
        const auto* r = json::find(*spec, "request");
        if (!r || !r->IsString()) {
            bad("spec.request missing");
        } else if (r->GetStringLength() > kMaxRequestBytes * 4 / 3 + 4) {
            bad("spec.request larger than 64 KiB");
        } else if (auto pem = base64_decode(std::string_view(r->GetString(), r->GetStringLength()))) {
            c.request_pem = std::move(*pem);
        } else {
            bad("spec.request is not base64");
        }
    }
    if (const auto* st = json::find(obj, "status"); st && !st->IsNull()) {
        if (!st->IsObject()) {
            bad("status is not an object");
        } else {
            if (const auto* conds = json::find(*st, "conditions"); conds && !conds->IsNull()) {
                if (!conds->IsArray()) {
                    bad("status.conditions is not a list");
                } else {
                    for (const auto& cond : conds->GetArray()) {
                        if (!cond.IsObject()) {
                            bad("a status condition is not an object");
                            continue;
                        }
                        auto type = json::opt_string(cond, "type");
                        auto status = json::opt_string(cond, "status");
                        if (!type) continue;
                        bool on = !status || *status == "True";  // status is optional in older objects
                        if (!on) continue;
                        std::string text = json::opt_string(cond, "reason").value_or("");
                        if (auto m = json::opt_string(cond, "message"); m && !m->empty())
                            text += (text.empty() ? "" : ": ") + *m;
                        if (*type == "Approved") {
                            c.approved = true;
                        } else if (*type == "Denied") {
                            c.denied = true;
                            c.denied_message = printable(text);
                        } else if (*type == "Failed") {
                            c.failed = true;
                            c.failed_message = printable(text);
                        }
                    }
                }
            }
            if (const auto* cert = json::find(*st, "certificate"); cert && !cert->IsNull()) {
                if (!cert->IsString()) bad("status.certificate is not a string");
                else if (auto pem = base64_decode(std::string_view(cert->GetString(), cert->GetStringLength())))
                    c.certificate_pem = std::move(*pem);
                else bad("status.certificate is not base64");
            }
        }
    }
    return c;
}

Result<CsrObject> parse_csr_json(std::string_view text) {
    auto doc = json::parse(text);
    if (!doc) return doc.error();
    return parse_csr_object(*doc);
}

Result<CsrInfo> inspect_csr(std::string_view pem) {
    if (pem.empty() || pem.size() > kMaxRequestBytes) return make_error(EINVAL, "no CSR, or one larger than 64 KiB");
    std::unique_ptr<BIO, BioFree> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
    X509ReqPtr req(bio ? PEM_read_bio_X509_REQ(bio.get(), nullptr, nullptr, nullptr) : nullptr);
    if (!req) {
        ERR_clear_error();
        return make_error(EINVAL, "not a PEM certificate request");
    }
    CsrInfo info;
    const X509_NAME* subj = X509_REQ_get_subject_name(req.get());
    info.subject_entries = subj ? X509_NAME_entry_count(subj) : 0;
    int rep = 0;
    if (subj) {
        info.cn = entry(subj, NID_commonName, &rep);
        info.org = entry(subj, NID_organizationName, &rep);
    }
    if (rep < 0) info.subject_entries = -1;
    EVP_PKEY* pub = X509_REQ_get0_pubkey(req.get());
    info.p256 = is_p256_key(pub);
    info.signature_ok = pub && X509_REQ_verify(req.get(), pub) == 1;
    ERR_clear_error();
    return info;
}

Verdict decide(const CsrObject& csr, const std::string& trust_domain, const std::vector<std::string>& node_agents) {
    if (csr.signer_name != kSignerName) return Verdict{Action::Ignore, {}, {}, "signer " + printable(csr.signer_name) + " is not ours"};
    if (csr.denied || csr.failed) return Verdict{Action::Done, {}, {}, csr.denied ? "already denied" : "already failed"};
    if (!csr.certificate_pem.empty()) return Verdict{Action::Done, {}, {}, "already issued"};
    if (!csr.malformed.empty()) return deny({}, "Malformed", "malformed CertificateSigningRequest: " + csr.malformed);

    // The requestor, as the API server authenticated it: a node, or the node
    // agent's service account with a token bound to a pod on that node.
    const std::string& u = csr.username;
    std::string node;
    if (!u.empty() && std::find(node_agents.begin(), node_agents.end(), u) != node_agents.end()) {
        const std::vector<std::string>* bound = nullptr;
        for (const auto& [k, v] : csr.extra)
            if (k == kNodeNameExtra) bound = &v;
        if (!bound || bound->empty())
            return deny({}, "RequestorNotANode",
                        "requestor " + printable(u) + " carries no node binding (spec.extra " + std::string(kNodeNameExtra) +
                            ": a service account token bound to a pod, Kubernetes 1.30 or later)");
        if (bound->size() != 1)
            return deny({}, "RequestorNotANode", "requestor " + printable(u) + " is bound to several nodes");
        node = bound->front();
        if (!valid_dns_subdomain(node))
            return deny({}, "RequestorNotANode", "requestor " + printable(u) + "'s node " + printable(node) + " is not a valid node name");
    } else {
        if (u.rfind(kNodeUserPrefix, 0) != 0 || u.size() == kNodeUserPrefix.size())
            return deny({}, "RequestorNotANode", "requestor " + (u.empty() ? std::string("(none)") : printable(u)) + " is not a node");
        node = u.substr(kNodeUserPrefix.size());
        if (!valid_dns_subdomain(node)) return deny({}, "RequestorNotANode", "requestor " + printable(u) + " is not a valid node name");
        if (std::find(csr.groups.begin(), csr.groups.end(), kNodesGroup) == csr.groups.end())
            return deny(node, "RequestorNotANode", "requestor " + u + " is not in group " + std::string(kNodesGroup));
    }

    // The request itself.
    auto info = inspect_csr(csr.request_pem);
    if (!info) return deny(node, "BadRequest", "the CSR cannot be read: " + info.error().message);
    if (!info->p256) return deny(node, "BadRequest", "the CSR's key is not ECDSA P-256");
    if (!info->signature_ok) return deny(node, "BadRequest", "the CSR's signature does not verify (no proof of possession)");
    if (info->cn != node)
        return deny(node, "SubjectMismatch",
                    "subject CN=" + (info->cn.empty() ? std::string("(none)") : printable(info->cn)) + " does not match requestor " + node);
    if (info->org != trust_domain)
        return deny(node, "SubjectMismatch",
                    "subject O=" + (info->org.empty() ? std::string("(none)") : printable(info->org)) +
                        " is not the trust domain " + trust_domain);
    if (info->subject_entries != 2)
        return deny(node, "SubjectMismatch", "the subject must be exactly CN=" + node + ", O=" + trust_domain);

    for (const auto& usage : csr.usages) {
        bool ok = false;
        for (const char* allowed : kUsages) ok = ok || usage == allowed;
        if (!ok) return deny(node, "UsageNotAllowed", "usage \"" + printable(usage) + "\" is not allowed for " + std::string(kSignerName));
    }
    return Verdict{Action::CheckNode, node, {}, "node " + node};
}

Verdict with_node(Verdict v, bool node_exists) {
    if (v.action != Action::CheckNode || node_exists) return v;
    return deny(v.node, "NoSuchNode", "no Node object " + v.node);
}

int64_t granted_seconds(const CsrObject& csr) {
    if (!csr.expiration_seconds) return kMaxExpirationSeconds;
    return std::clamp<int64_t>(*csr.expiration_seconds, 1, kMaxExpirationSeconds);
}

}  // namespace signet::identity::csr
