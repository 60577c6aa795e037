#!/usr/bin/python3
"""The conformance cases: upstream's NetworkPolicy e2e scenarios
(kubernetes/kubernetes test/e2e/network/netpol/network_policy.go) replayed on
the full x, y, z / a, b, c model, plus signet's own cases for what the
upstream suite leaves out (endPort, Exists/DoesNotExist, ingress ipBlock,
label removal, several ports per rule, named UDP ports, node traffic).

Upstream's newer tests create only the pods a scenario needs; here every case
runs on all 9 pods, so where upstream's table relied on a pod being absent the
table is completed for the full model (as upstream's older, 9-pod version
wrote them). Every table is checked against the reference evaluator
(netpol.evaluate) by `run.py --selfcheck`, so a table typo cannot hide.

A case is fn(m) -> [Step]; m.ip("y/b") etc. give addresses from the CNI results.
"""

from netpol import (ALL_PODS, NS_NAME_LABEL, Case, Check, Peer, R, Step, egress_rule, expr,  # noqa: F401
                    ingress_rule, netpol, peer, port, sel)

CASES: list[Case] = []


def case(name: str, upstream: str = ""):
    def deco(fn):
        CASES.append(Case(name=name, build=fn, upstream=upstream, doc=(fn.__doc__ or "").strip()))
        return fn
    return deco


X, Y, Z = "x", "y", "z"
ALL = Peer()


def nsp(ns):
    return Peer(ns=ns)


def pp(ns, pod):
    return Peer(ns=ns, pod=pod)


TCP, UDP, SCTP = "TCP", "UDP", "SCTP"


def tcp(p, r):
    return Check(p, TCP, r)


def udp(p, r):
    return Check(p, UDP, r)


DENY_INGRESS_X = netpol("deny-ingress", X, sel(), ingress=[])


# =========================================================================== baseline

@case("no-policies-all-reachable")
def _(m):
    """No NetworkPolicy: every pod reaches every pod on TCP and UDP 80 and 81,
    and the node reaches every pod."""
    return [Step("no policies", checks=[Check(p, pr, R(), node_allowed=True)
                                        for p in (80, 81) for pr in (TCP, UDP)])]


# =========================================================================== upstream: NetworkPolicy between server and client

@case("default-deny-ingress", "should support a 'default-deny-ingress' policy")
def _(m):
    return [Step(apply=[netpol("deny-ingress", X, sel(), ingress=[])],
                 checks=[tcp(80, R().expect_peer(ALL, nsp(X), False))])]


@case("default-deny-all", "should support a 'default-deny-all' policy")
def _(m):
    r = R().expect_peer(ALL, nsp(X), False).expect_peer(nsp(X), ALL, False)
    return [Step(apply=[netpol("deny-all", X, sel(), ingress=[], egress=[])], checks=[tcp(80, r)])]


@case("allow-from-pod-in-same-ns", "should enforce policy to allow traffic from pods within server namespace based on PodSelector")
def _(m):
    pol = netpol("x-a-allows-x-b", X, sel({"pod": "a"}), ingress=[ingress_rule([peer(pods=sel({"pod": "b"}))])])
    r = R().expect_all_ingress("x/a", False).expect("x/b", "x/a", True)
    return [Step(apply=[pol], checks=[tcp(80, r)])]


@case("allow-ingress-to-target", "should enforce policy to allow ingress traffic for a target")
def _(m):
    allow = netpol("allow-all-to-a", X, sel({"pod": "a"}),
                   ingress=[ingress_rule([peer(pods=sel(), nss=sel())])])
    r = R().expect_peer(ALL, nsp(X), False).expect_all_ingress("x/a", True)
    return [Step(apply=[netpol("deny-all", X, sel(), ingress=[]), allow], checks=[tcp(80, r)])]


@case("allow-from-all-namespaces", "should enforce policy to allow ingress traffic from pods in all namespaces")
def _(m):
    pol = netpol("allow-from-another-ns", X, sel({"pod": "a"}), ingress=[ingress_rule([peer(nss=sel())])])
    return [Step(apply=[pol], checks=[tcp(80, R())])]


@case("allow-from-ns-by-label", "should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector")
def _(m):
    """namespaceSelector on the model's own label ns=y."""
    pol = netpol("allow-client-a-via-ns-selector", X, sel({"pod": "a"}),
                 ingress=[ingress_rule([peer(nss=sel({"ns": Y}))])])
    r = R().expect_peer(nsp(X), pp(X, "a"), False).expect_peer(nsp(Z), pp(X, "a"), False)
    return [Step(apply=[pol], checks=[tcp(80, r)])]


@case("pod-selector-match-expressions", "should enforce policy based on PodSelector with MatchExpressions")
def _(m):
    pol = netpol("x-a-allows-x-b", X, sel({"pod": "a"}),
                 ingress=[ingress_rule([peer(pods=sel(exprs=[expr("pod", "In", ["b"])]))])])
    r = R().expect_all_ingress("x/a", False).expect("x/b", "x/a", True)
    return [Step(apply=[pol], checks=[tcp(80, r)])]


@case("ns-selector-match-expressions", "should enforce policy based on NamespaceSelector with MatchExpressions")
def _(m):
    pol = netpol("allow-ns-y-match-selector", X, sel({"pod": "a"}),
                 ingress=[ingress_rule([peer(nss=sel(exprs=[expr(NS_NAME_LABEL, "In", [Y])]))])])
    r = R().expect_peer(nsp(X), pp(X, "a"), False).expect_peer(nsp(Z), pp(X, "a"), False)
    return [Step(apply=[pol], checks=[tcp(80, r)])]


@case("pod-selector-or-ns-selector", "should enforce policy based on PodSelector or NamespaceSelector")
def _(m):
    """Two peers in one rule: namespace NotIn [x], or pod=b (same namespace)."""
    pol = netpol("allow-ns-y-match-selector", X, sel({"pod": "a"}), ingress=[ingress_rule([
        peer(nss=sel(exprs=[expr(NS_NAME_LABEL, "NotIn", [X])])),
        peer(pods=sel({"pod": "b"}))])])
    r = R().expect("x/a", "x/a", False).expect("x/c", "x/a", False)
    return [Step(apply=[pol], checks=[tcp(80, r)])]


@case("pod-selector-and-ns-selector", "should enforce policy based on PodSelector and NamespaceSelector")
def _(m):
    """One peer with both selectors: namespace NotIn [x] AND pod=b."""
    pol = netpol("allow-ns-y-podselector-and-nsselector", X, sel({"pod": "a"}), ingress=[ingress_rule([
        peer(nss=sel(exprs=[expr(NS_NAME_LABEL, "NotIn", [X])]), pods=sel({"pod": "b"}))])])
    r = R().expect_all_ingress("x/a", False).expect("y/b", "x/a", True).expect("z/b", "x/a", True)
    return [Step(apply=[pol], checks=[tcp(80, r)])]


@case("multiple-pod-and-ns-selectors", "should enforce policy based on Multiple PodSelectors and NamespaceSelectors")
def _(m):
    pol = netpol("allow-ns-y-z-pod-b-c", X, sel({"pod": "a"}), ingress=[ingress_rule([
        peer(nss=sel(exprs=[expr(NS_NAME_LABEL, "NotIn", [X])]),
             pods=sel(exprs=[expr("pod", "In", ["b", "c"])]))])])
    r = (R().expect_peer(nsp(X), pp(X, "a"), False)
         .expect("y/a", "x/a", False).expect("z/a", "x/a", False))
    return [Step(apply=[pol], checks=[tcp(80, r)])]


@case("any-pod-selectors", "should enforce policy based on any PodSelectors")
def _(m):
    pol = netpol("allow-ns-x-pod-b-c", X, sel({"pod": "a"}), ingress=[ingress_rule([
        peer(pods=sel({"pod": "b"})), peer(pods=sel({"pod": "c"}))])])
    r = R().expect_all_ingress("x/a", False).expect("x/b", "x/a", True).expect("x/c", "x/a", True)
    return [Step(apply=[pol], checks=[tcp(80, r)])]


@case("pod-in-other-ns-by-pod-and-ns-selector", "should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector")
def _(m):
    pol = netpol("allow-ns-y-pod-a-via-namespace-pod-selector", X, sel({"pod": "a"}), ingress=[ingress_rule([
        peer(nss=sel({NS_NAME_LABEL: Y}), pods=sel({"pod": "a"}))])])
    r = R().expect_all_ingress("x/a", False).expect("y/a", "x/a", True)
    return [Step(apply=[pol], checks=[tcp(80, r)])]


@case("ports-81-from-ns-y", "should enforce policy based on Ports")
def _(m):
    pol = netpol("allow-client-a-via-ns-selector", X, sel({"pod": "a"}), ingress=[ingress_rule(
        [peer(nss=sel({NS_NAME_LABEL: Y}))], [port(81, TCP)])])
    r81 = (R().expect_peer(nsp(X), pp(X, "a"), False).expect_peer(nsp(Y), pp(X, "a"), True)
           .expect_peer(nsp(Z), pp(X, "a"), False))
    r80 = R().expect_all_ingress("x/a", False)
    return [Step(apply=[pol], checks=[tcp(81, r81), tcp(80, r80)])]


@case("stacked-policies-overlapping-selectors", "should enforce multiple, stacked policies with overlapping podSelectors")
def _(m):
    p81 = netpol("allow-client-a-via-ns-selector", X, sel({"pod": "a"}), ingress=[ingress_rule(
        [peer(nss=sel({NS_NAME_LABEL: Y}))], [port(81, TCP)])])
    p80 = netpol("allow-client-a-via-ns-selector-80", X, sel({"pod": "a"}), ingress=[ingress_rule(
        [peer(nss=sel({NS_NAME_LABEL: Y}))], [port(80, TCP)])])
    allow = (R().expect_peer(nsp(X), pp(X, "a"), False).expect_peer(nsp(Y), pp(X, "a"), True)
             .expect_peer(nsp(Z), pp(X, "a"), False))
    deny = R().expect_all_ingress("x/a", False)
    return [Step("port 81 only", apply=[p81], checks=[tcp(81, allow), tcp(80, deny)]),
            Step("add a policy for port 80", apply=[p80], checks=[tcp(80, allow.copy()), tcp(81, allow.copy())])]


@case("allow-all-policy", "should support allow-all policy")
def _(m):
    pol = netpol("allow-all", X, sel(), ingress=[ingress_rule()])
    return [Step(apply=[pol], checks=[tcp(80, R()), tcp(81, R())])]


@case("named-port-ingress", "should allow ingress access on one named port")
def _(m):
    pol = netpol("allow-all", X, sel(), ingress=[ingress_rule(ports=[port("serve-81-tcp")])])
    return [Step(apply=[pol], checks=[tcp(81, R()), tcp(80, R().expect_peer(ALL, nsp(X), False))])]


@case("named-port-ingress-from-ns", "should allow ingress access from namespace on one named port")
def _(m):
    pol = netpol("allow-client-a-via-ns-selector-80", X, sel({"pod": "a"}), ingress=[ingress_rule(
        [peer(nss=sel({NS_NAME_LABEL: Y}))], [port("serve-80-tcp", TCP)])])
    r80 = R().expect_peer(nsp(X), pp(X, "a"), False).expect_peer(nsp(Z), pp(X, "a"), False)
    return [Step(apply=[pol], checks=[tcp(80, r80), tcp(81, R().expect_all_ingress("x/a", False))])]


@case("named-port-egress", "should allow egress access on one named port")
def _(m):
    """Egress named ports resolve on the destination pod's container ports."""
    pol = netpol("allow-egress", X, sel(), egress=[egress_rule(ports=[port("serve-80-tcp")])])
    return [Step(apply=[pol], checks=[tcp(80, R()), tcp(81, R().expect_peer(nsp(X), ALL, False))])]


@case("updated-policy", "should enforce updated policy")
def _(m):
    allow = netpol("allow-all-mutate-to-deny-all", X, sel(), ingress=[ingress_rule()])
    deny = netpol("allow-all-mutate-to-deny-all", X, sel(), ingress=[])
    return [Step("allow all", apply=[allow], checks=[tcp(81, R())]),
            Step("same policy edited to deny all", apply=[deny],
                 checks=[tcp(81, R().expect_peer(ALL, nsp(X), False))])]


@case("updated-namespace-labels", "should allow ingress access from updated namespace")
def _(m):
    pol = netpol("allow-client-a-via-ns-selector", X, sel({"pod": "a"}),
                 ingress=[ingress_rule([peer(nss=sel({"ns2": "updated"}))])])
    after = R().expect_all_ingress("x/a", False).expect_peer(nsp(Y), ALL, True)
    return [Step("no namespace has ns2=updated", apply=[pol],
                 checks=[tcp(80, R().expect_all_ingress("x/a", False))]),
            Step("namespace y gets ns2=updated", ns_labels={Y: {"ns": Y, "ns2": "updated"}},
                 checks=[tcp(80, after)])]


@case("updated-pod-labels", "should allow ingress access from updated pod")
def _(m):
    pol = netpol("allow-client-a-via-pod-selector", X, sel({"pod": "a"}),
                 ingress=[ingress_rule([peer(pods=sel({"pod": "b", "pod2": "updated"}))])])
    return [Step("x/b lacks pod2=updated", apply=[pol], checks=[tcp(80, R().expect_all_ingress("x/a", False))]),
            Step("x/b gets pod2=updated", pod_labels={"x/b": {"pod": "b", "pod2": "updated"}},
                 checks=[tcp(80, R().expect_all_ingress("x/a", False).expect("x/b", "x/a", True))])]


@case("deny-all-allow-same-namespace", "should deny ingress from pods on other namespaces")
def _(m):
    """podSelector {} with ingress from podSelector {}: only the same namespace."""
    pol = netpol("deny-empty-policy", X, sel(), ingress=[ingress_rule([peer(pods=sel())])])
    r = R().expect_peer(nsp(Y), nsp(X), False).expect_peer(nsp(Z), nsp(X), False)
    return [Step(apply=[pol], checks=[tcp(80, r)])]


@case("deny-ingress-to-updated-pod", "should deny ingress access to updated pod")
def _(m):
    pol = netpol("deny-ingress-via-label-selector", X, sel({"target": "isolated"}), ingress=[])
    return [Step("no pod has target=isolated", apply=[pol], checks=[tcp(80, R())]),
            Step("x/a gets target=isolated", pod_labels={"x/a": {"pod": "a", "target": "isolated"}},
                 checks=[tcp(80, R().expect_all_ingress("x/a", False))])]


@case("deny-egress-pod-selector", "should deny egress from pods based on PodSelector")
def _(m):
    pol = netpol("deny-egress-pod-a", X, sel({"pod": "a"}), egress=[])
    return [Step(apply=[pol], checks=[tcp(80, R().expect_all_egress("x/a", False))])]


@case("deny-egress-namespace", "should deny egress from all pods in a namespace")
def _(m):
    pol = netpol("deny-egress-ns-x", X, sel(), egress=[])
    return [Step(apply=[pol], checks=[tcp(80, R().expect_peer(nsp(X), ALL, False))])]


@case("ingress-and-egress-together", "should work with Ingress, Egress specified together")
def _(m):
    pol = netpol("allow-client-a-via-pod-selector", X, sel({"pod": "a"}),
                 ingress=[ingress_rule([peer(pods=sel({"pod": "b"}))])],
                 egress=[egress_rule(ports=[port(80)])], types=["Egress", "Ingress"])
    r80 = R().expect_all_ingress("x/a", False).expect("x/b", "x/a", True)
    r81 = (R().expect_all_ingress("x/a", False).expect_all_egress("x/a", False)
           .expect("x/b", "x/a", True))
    return [Step(apply=[pol], checks=[tcp(80, r80), tcp(81, r81)])]


@case("egress-denied-client-side", "should support denying of egress traffic on the client side (even if the server explicitly allows this traffic)")
def _(m):
    eg = netpol("allow-to-ns-y-pod-a", X, sel({"pod": "a"}), egress=[egress_rule([
        peer(nss=sel({NS_NAME_LABEL: Y}), pods=sel({"pod": "a"}))])])
    rule = ingress_rule([peer(nss=sel({NS_NAME_LABEL: X}), pods=sel({"pod": "a"}))])
    in_a = netpol("allow-from-xa-on-ya-match-selector", Y, sel({"pod": "a"}), ingress=[rule])
    in_b = netpol("allow-from-xa-on-yb-match-selector", Y, sel({"pod": "b"}), ingress=[rule])
    r = (R().expect_peer(pp(X, "a"), ALL, False).expect_peer(ALL, pp(Y, "a"), False)
         .expect_peer(pp(X, "a"), pp(Y, "a"), True).expect_peer(ALL, pp(Y, "b"), False))
    return [Step(apply=[eg, in_a, in_b], checks=[tcp(80, r)])]


@case("egress-to-pod-in-other-ns", "should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector")
def _(m):
    pol = netpol("allow-to-ns-y-pod-a", X, sel({"pod": "a"}), egress=[egress_rule([
        peer(nss=sel({NS_NAME_LABEL: Y}), pods=sel({"pod": "a"}))])])
    r = R().expect_all_egress("x/a", False).expect("x/a", "y/a", True)
    return [Step(apply=[pol], checks=[tcp(80, r)])]


@case("ingress-any-port-one-protocol", "should enforce ingress policy allowing any port traffic to a server on a specific protocol")
def _(m):
    pol = netpol("allow-ingress-by-proto", X, sel({"pod": "a"}), ingress=[ingress_rule(ports=[port(proto=TCP)])])
    return [Step(apply=[pol], checks=[tcp(80, R()), tcp(81, R()),
                                      udp(80, R().expect_peer(ALL, pp(X, "a"), False))])]


@case("ingress-allow-all-takes-precedence", "should enforce multiple ingress policies with ingress allow-all policy taking precedence")
def _(m):
    p80 = netpol("allow-ingress-port-80", X, sel(), ingress=[ingress_rule(ports=[port(80)])])
    allow = netpol("allow-ingress", X, sel(), ingress=[ingress_rule()])
    return [Step("only port 80", apply=[p80], checks=[tcp(81, R().expect_peer(ALL, nsp(X), False))]),
            Step("add allow-all ingress", apply=[allow], checks=[tcp(81, R())])]


@case("egress-allow-all-takes-precedence", "should enforce multiple egress policies with egress allow-all policy taking precedence")
def _(m):
    p80 = netpol("allow-egress-port-80", X, sel(), egress=[egress_rule(ports=[port(80)])])
    allow = netpol("allow-egress", X, sel(), egress=[egress_rule()])
    return [Step("only port 80", apply=[p80], checks=[tcp(81, R().expect_peer(nsp(X), ALL, False))]),
            Step("add allow-all egress", apply=[allow], checks=[tcp(81, R())])]


@case("stop-enforcing-after-delete", "should stop enforcing policies after they are deleted")
def _(m):
    pol = netpol("deny-all", X, sel(), ingress=[], egress=[])
    r = R().expect_peer(nsp(X), ALL, False).expect_peer(ALL, nsp(X), False)
    return [Step("deny all in x", apply=[pol], checks=[tcp(80, r)]),
            Step("policy deleted", delete=[(X, "deny-all")], checks=[tcp(80, R())])]


@case("egress-to-cidr", "should allow egress access to server in CIDR block")
def _(m):
    pol = netpol("allow-client-a-via-cidr-egress-rule", X, sel({"pod": "a"}),
                 egress=[egress_rule([peer(cidr=m.cidr("y/b"))])])
    r = R().expect_all_egress("x/a", False).expect("x/a", "y/b", True)
    return [Step(apply=[pol], checks=[tcp(80, r)])]


@case("egress-to-cidr-except", "should enforce except clause while egress access to server in CIDR block")
def _(m):
    pol = netpol("allow-client-a-via-cidr-egress-rule", X, sel({"pod": "a"}),
                 egress=[egress_rule([peer(cidr=m.large_cidr("x/b"), except_=[m.cidr("x/b")])])])
    return [Step(apply=[pol], checks=[tcp(80, R().expect("x/a", "x/b", False))])]


@case("cidr-and-except-overlap", "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed")
def _(m):
    """Step 2 updates the same policy to allow exactly x/b's /32."""
    pol = netpol("allow-client-a-via-cidr-egress-rule", X, sel({"pod": "a"}),
                 egress=[egress_rule([peer(cidr=m.large_cidr("x/b"), except_=[m.cidr("x/b")])])])
    upd = netpol("allow-client-a-via-cidr-egress-rule", X, sel({"pod": "a"}),
                 egress=[egress_rule([peer(cidr=m.cidr("x/b"))])])
    return [Step("/4 except x/b", apply=[pol], checks=[tcp(80, R().expect("x/a", "x/b", False))]),
            Step("updated: x/b/32 only", apply=[upd],
                 checks=[tcp(80, R().expect_all_egress("x/a", False).expect("x/a", "x/b", True))])]


@case("ingress-egress-independent", "should enforce policies to check ingress and egress policies can be controlled independently based on PodSelector")
def _(m):
    eg = netpol("allow-egress-for-target", X, sel({"pod": "a"}), egress=[egress_rule()])
    deny = netpol("deny-ingress-via-label-selector", X, sel({"pod": "a"}), ingress=[])
    return [Step("allow all egress of x/a", apply=[eg], checks=[tcp(80, R())]),
            Step("deny all ingress of x/a", apply=[deny], checks=[tcp(80, R().expect_all_ingress("x/a", False))])]


@case("sctp-not-treated-as-tcp", "should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't support SCTP")
def _(m):
    sctp = netpol("allow-only-sctp-ingress-on-port-81", X, sel({"pod": "a"}),
                  ingress=[ingress_rule(ports=[port(81, SCTP)])])
    r = R().expect_peer(ALL, nsp(X), False)
    return [Step(apply=[DENY_INGRESS_X, sctp], checks=[tcp(81, r), udp(81, r.copy())])]


@case("sctp-policy-isolates", "should properly isolate pods that are selected by a policy allowing SCTP, even if the plugin doesn't support SCTP")
def _(m):
    sctp = netpol("allow-only-sctp-ingress-on-port-80", X, sel({"pod": "a"}),
                  ingress=[ingress_rule(ports=[port(80, SCTP)])])
    r = R().expect_all_ingress("x/a", False)
    return [Step(apply=[sctp], checks=[tcp(81, r), tcp(80, r.copy()), udp(80, r.copy())])]


@case("udp-only-policy-blocks-tcp", "should not allow access by TCP when a policy specifies only UDP")
def _(m):
    pol = netpol("allow-only-udp-ingress-on-port-81", X, sel({"pod": "a"}),
                 ingress=[ingress_rule(ports=[port(81, UDP)])])
    return [Step(apply=[pol], checks=[tcp(81, R().expect_all_ingress("x/a", False)), udp(81, R())])]


@case("default-ns-label-match-labels", "should enforce policy to allow traffic based on NamespaceSelector with MatchLabels using default ns label")
def _(m):
    pol = netpol("allow-client-a-via-ns-selector-for-immutable-ns-label", X, sel({"pod": "a"}),
                 ingress=[ingress_rule([peer(nss=sel({NS_NAME_LABEL: Y}))])])
    r = R().expect_peer(nsp(X), pp(X, "a"), False).expect_peer(nsp(Z), pp(X, "a"), False)
    return [Step(apply=[pol], checks=[tcp(80, r)])]


@case("default-ns-label-match-expressions-egress", "should enforce policy based on NamespaceSelector with MatchExpressions using default ns label")
def _(m):
    pol = netpol("allow-ns-y-match-selector-for-immutable-ns-label", X, sel({"pod": "a"}),
                 egress=[egress_rule([peer(nss=sel(exprs=[expr(NS_NAME_LABEL, "NotIn", [Y])]))])])
    return [Step(apply=[pol], checks=[tcp(80, R().expect_peer(pp(X, "a"), nsp(Y), False))])]


# =========================================================================== upstream: ... using UDP

@case("udp-default-deny-ingress", "[UDP] should support a 'default-deny-ingress' policy")
def _(m):
    return [Step(apply=[netpol("deny-all", X, sel(), ingress=[])],
                 checks=[udp(80, R().expect_peer(ALL, nsp(X), False))])]


@case("udp-ports-81-from-ns-y", "[UDP] should enforce policy based on Ports")
def _(m):
    pol = netpol("allow-ingress-on-port-81-ns-x", X, sel({"pod": "a"}), ingress=[ingress_rule(
        [peer(nss=sel({NS_NAME_LABEL: Y}))], [port(81, UDP)])])
    r = R().expect_peer(nsp(X), pp(X, "a"), False).expect_peer(nsp(Z), pp(X, "a"), False)
    return [Step(apply=[pol], checks=[udp(81, r), udp(80, R().expect_all_ingress("x/a", False)),
                                      tcp(81, R().expect_all_ingress("x/a", False))])]


@case("udp-pod-in-other-ns-by-pod-and-ns-selector", "[UDP] should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector")
def _(m):
    pol = netpol("allow-ns-y-pod-a-via-namespace-pod-selector", X, sel({"pod": "a"}), ingress=[ingress_rule([
        peer(nss=sel({NS_NAME_LABEL: Y}), pods=sel({"pod": "a"}))])])
    return [Step(apply=[pol], checks=[udp(80, R().expect_all_ingress("x/a", False).expect("y/a", "x/a", True))])]


# =========================================================================== signet's own: what upstream leaves out

@case("endport-range-80-81")
def _(m):
    """Port 80, endPort 81 from namespace y: both ports open to y, UDP still closed."""
    pol = netpol("allow-80-81-from-y", X, sel({"pod": "a"}), ingress=[ingress_rule(
        [peer(nss=sel({"ns": Y}))], [port(80, TCP, end=81)])])
    r = R().expect_all_ingress("x/a", False).expect_peer(nsp(Y), pp(X, "a"), True)
    return [Step(apply=[pol], checks=[tcp(80, r), tcp(81, r.copy()),
                                      udp(80, R().expect_all_ingress("x/a", False))])]


@case("endport-range-excludes-start")
def _(m):
    """Port 81..90 (egress, UDP): 81 is in the range, 80 is not."""
    pol = netpol("egress-81-90-udp", X, sel({"pod": "b"}), egress=[egress_rule(ports=[port(81, UDP, end=90)])])
    return [Step(apply=[pol], checks=[udp(81, R()), udp(80, R().expect_all_egress("x/b", False)),
                                      tcp(81, R().expect_all_egress("x/b", False))])]


@case("match-expressions-exists-doesnotexist")
def _(m):
    """Peer: namespaces where label ns Exists, pods where role DoesNotExist;
    x/b gets role=client and so loses access to x/a."""
    pol = netpol("exists-doesnotexist", X, sel({"pod": "a"}), ingress=[ingress_rule([
        peer(nss=sel(exprs=[expr("ns", "Exists")]), pods=sel(exprs=[expr("role", "DoesNotExist")]))])])
    return [Step("no pod has role", apply=[pol], checks=[tcp(80, R())]),
            Step("x/b gets role=client", pod_labels={"x/b": {"pod": "b", "role": "client"}},
                 checks=[tcp(80, R().expect("x/b", "x/a", False))]),
            Step("namespace z loses its ns label", ns_labels={Z: {}},
                 checks=[tcp(80, R().expect("x/b", "x/a", False).expect_peer(nsp(Z), pp(X, "a"), False))])]


@case("match-expressions-notin-pods")
def _(m):
    """Ingress to all of y from pods NotIn [a] of every namespace."""
    pol = netpol("notin-a", Y, sel(), ingress=[ingress_rule([
        peer(nss=sel(), pods=sel(exprs=[expr("pod", "NotIn", ["a"])]))])])
    r = R().expect_peer(Peer(pod="a"), nsp(Y), False)
    return [Step(apply=[pol], checks=[tcp(80, r)])]


@case("combined-selector-vs-two-peers")
def _(m):
    """One peer {ns=y AND pod=b} first, then the same selectors as two peers
    {ns=y} OR {pod=b}: the second also admits all of y and x/b."""
    one = netpol("combined", X, sel({"pod": "c"}), ingress=[ingress_rule([
        peer(nss=sel({"ns": Y}), pods=sel({"pod": "b"}))])])
    two = netpol("combined", X, sel({"pod": "c"}), ingress=[ingress_rule([
        peer(nss=sel({"ns": Y})), peer(pods=sel({"pod": "b"}))])])
    r1 = R().expect_all_ingress("x/c", False).expect("y/b", "x/c", True)
    r2 = R().expect_all_ingress("x/c", False).expect_peer(nsp(Y), pp(X, "c"), True).expect("x/b", "x/c", True)
    return [Step("one peer with both selectors", apply=[one], checks=[tcp(80, r1)]),
            Step("two peers", apply=[two], checks=[tcp(80, r2)])]


@case("multiple-policies-union")
def _(m):
    """Two policies select x/a; what either allows is allowed."""
    p1 = netpol("from-y", X, sel({"pod": "a"}), ingress=[ingress_rule([peer(nss=sel({"ns": Y}))])])
    p2 = netpol("from-x-b-port-80", X, sel({"pod": "a"}), ingress=[ingress_rule(
        [peer(pods=sel({"pod": "b"}))], [port(80)])])
    r80 = R().expect_all_ingress("x/a", False).expect_peer(nsp(Y), pp(X, "a"), True).expect("x/b", "x/a", True)
    r81 = R().expect_all_ingress("x/a", False).expect_peer(nsp(Y), pp(X, "a"), True)
    return [Step(apply=[p1, p2], checks=[tcp(80, r80), tcp(81, r81)])]


@case("policy-only-affects-own-namespace")
def _(m):
    """A deny-all in z selecting pod=a isolates z/a only, not x/a or y/a."""
    pol = netpol("deny-a", Z, sel({"pod": "a"}), ingress=[], egress=[])
    r = R().expect_all_ingress("z/a", False).expect_all_egress("z/a", False)
    return [Step(apply=[pol], checks=[tcp(80, r), udp(81, r.copy())])]


@case("egress-to-namespace-only")
def _(m):
    """All of x may talk only to namespace y."""
    pol = netpol("egress-to-y", X, sel(), egress=[egress_rule([peer(nss=sel({"ns": Y}))])])
    r = R().expect_peer(nsp(X), nsp(X), False).expect_peer(nsp(X), nsp(Z), False)
    return [Step(apply=[pol], checks=[tcp(80, r), udp(80, r.copy())])]


@case("multiple-ports-one-rule")
def _(m):
    """One rule, ports TCP 80 and UDP 81."""
    pol = netpol("tcp80-udp81", X, sel({"pod": "a"}), ingress=[ingress_rule(ports=[port(80, TCP), port(81, UDP)])])
    deny = R().expect_all_ingress("x/a", False)
    return [Step(apply=[pol], checks=[tcp(80, R()), tcp(81, deny), udp(81, R()), udp(80, deny.copy())])]


@case("numeric-port-udp-egress")
def _(m):
    pol = netpol("egress-udp-81", X, sel({"pod": "a"}), egress=[egress_rule(ports=[port(81, UDP)])])
    deny = R().expect_all_egress("x/a", False)
    return [Step(apply=[pol], checks=[udp(81, R()), udp(80, deny), tcp(81, deny.copy())])]


@case("named-port-udp")
def _(m):
    """Ingress to y on the named port serve-81-udp with protocol UDP."""
    pol = netpol("named-udp", Y, sel(), ingress=[ingress_rule(ports=[port("serve-81-udp", UDP)])])
    deny = R().expect_peer(ALL, nsp(Y), False)
    return [Step(apply=[pol], checks=[udp(81, R()), udp(80, deny), tcp(81, deny.copy())])]


@case("named-port-protocol-must-match")
def _(m):
    """port: serve-81-udp with no protocol means TCP, and no container port is
    named serve-81-udp with TCP: nothing is allowed."""
    pol = netpol("named-udp-as-tcp", Y, sel({"pod": "b"}), ingress=[ingress_rule(ports=[port("serve-81-udp")])])
    deny = R().expect_all_ingress("y/b", False)
    return [Step(apply=[pol], checks=[tcp(81, deny), udp(81, deny.copy())])]


@case("named-port-egress-udp")
def _(m):
    pol = netpol("egress-named-udp", Z, sel({"pod": "c"}), egress=[egress_rule(
        [peer(nss=sel())], [port("serve-80-udp", UDP)])])
    deny = R().expect_all_egress("z/c", False)
    return [Step(apply=[pol], checks=[udp(80, R()), udp(81, deny), tcp(80, deny.copy())])]


@case("ingress-from-cidr")
def _(m):
    pol = netpol("from-y-b-cidr", X, sel({"pod": "a"}), ingress=[ingress_rule([peer(cidr=m.cidr("y/b"))])])
    return [Step(apply=[pol], checks=[tcp(80, R().expect_all_ingress("x/a", False).expect("y/b", "x/a", True))])]


@case("ingress-from-cidr-except")
def _(m):
    pol = netpol("from-all-but-y-b", X, sel({"pod": "a"}), ingress=[ingress_rule([
        peer(cidr=m.large_cidr("y/b"), except_=[m.cidr("y/b")])])])
    r = R().expect("y/b", "x/a", False)
    return [Step(apply=[pol], checks=[tcp(80, r), udp(81, r.copy())])]


@case("remove-pod-label-unisolates")
def _(m):
    pol = netpol("isolate", X, sel({"target": "isolated"}), ingress=[], egress=[])
    iso = R().expect_all_ingress("x/b", False).expect_all_egress("x/b", False)
    return [Step("x/b labelled target=isolated", apply=[pol],
                 pod_labels={"x/b": {"pod": "b", "target": "isolated"}}, checks=[tcp(80, iso)]),
            Step("label removed", pod_labels={"x/b": {"pod": "b"}}, checks=[tcp(80, R())])]


@case("remove-namespace-label")
def _(m):
    pol = netpol("from-team-blue", X, sel({"pod": "a"}), ingress=[ingress_rule([peer(nss=sel({"team": "blue"}))])])
    return [Step("z has team=blue", apply=[pol], ns_labels={Z: {"ns": Z, "team": "blue"}},
                 checks=[tcp(80, R().expect_all_ingress("x/a", False).expect_peer(nsp(Z), pp(X, "a"), True))]),
            Step("team label removed from z", ns_labels={Z: {"ns": Z}},
                 checks=[tcp(80, R().expect_all_ingress("x/a", False))])]


@case("delete-one-of-two-policies")
def _(m):
    p1 = netpol("deny-ingress", X, sel(), ingress=[])
    p2 = netpol("allow-from-y", X, sel({"pod": "a"}), ingress=[ingress_rule([peer(nss=sel({"ns": Y}))])])
    r = R().expect_peer(ALL, nsp(X), False).expect_peer(nsp(Y), pp(X, "a"), True)
    return [Step("both", apply=[p1, p2], checks=[tcp(80, r)]),
            Step("allow-from-y deleted", delete=[(X, "allow-from-y")],
                 checks=[tcp(80, R().expect_peer(ALL, nsp(X), False))]),
            Step("deny-ingress deleted", delete=[(X, "deny-ingress")], checks=[tcp(80, R())])]


@case("node-traffic-always-allowed")
def _(m):
    """Default deny ingress everywhere: no pod reaches another, the node reaches all."""
    pols = [netpol("deny-ingress", ns, sel(), ingress=[]) for ns in (X, Y, Z)]
    return [Step(apply=pols, checks=[Check(80, TCP, R(False), node_allowed=True),
                                     Check(81, UDP, R(False), node_allowed=True)])]
