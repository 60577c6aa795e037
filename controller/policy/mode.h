// signet: the policy mode of a namespace's pods (docs/policy.md, "Audit
// mode"). `enforce`: what the policy denies is refused. `audit`: the policy is
// compiled and evaluated exactly the same, but what it would deny is allowed
// and recorded with verdict audit-denied. Set per namespace by the label
// kPolicyModeLabel, else by the node's default (signetd --policy-mode).
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "../cache/objects.h"

namespace signet::policy {

enum class PolicyMode : uint8_t { enforce, audit };

inline constexpr const char* kPolicyModeLabel = "signet.dev/policy-mode";

inline const char* to_string(PolicyMode m) { return m == PolicyMode::audit ? "audit" : "enforce"; }

inline std::optional<PolicyMode> parse_policy_mode(std::string_view s) {
    if (s == "enforce") return PolicyMode::enforce;
    if (s == "audit") return PolicyMode::audit;
    return std::nullopt;
}

struct NamespacePolicyMode {
    PolicyMode mode = PolicyMode::enforce;
    bool from_label = false;  // the namespace's label said it (else the node's default)
    std::string problem;      // the label's value is not a mode: the node's default applies, and this says why
};

// The mode of namespace `ns`'s pods: its label, else `node_default` (also
// for a namespace the snapshot does not hold, or a label that is no mode).
inline NamespacePolicyMode policy_mode_of(const cache::Snapshot& snapshot, const std::string& ns,
                                          PolicyMode node_default) {
    NamespacePolicyMode m;
    m.mode = node_default;
    auto it = snapshot.namespaces.find(ns);
    if (it == snapshot.namespaces.end()) return m;
    auto label = it->second.labels.find(kPolicyModeLabel);
    if (label == it->second.labels.end()) return m;
    if (auto parsed = parse_policy_mode(label->second)) {
        m.mode = *parsed;
        m.from_label = true;
    } else {
        m.problem = std::string(kPolicyModeLabel) + "=" + label->second +
                    " is not audit or enforce: the node's default applies";
    }
    return m;
}

}  // namespace signet::policy
