// Unit tests: the object model (controller/cache), manifest parsing and the
// manifest directory source (controller/source).
#include <doctest/doctest.h>

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "../../controller/cache/objects.h"
#include "../../controller/source/manifest.h"
#include "../../controller/source/manifest_dir.h"
#include "signet/json.h"

using namespace signet;
using namespace signet::cache;
using signet::source::parse_manifest;

namespace {

std::vector<Object> parse_ok(std::string_view text, std::vector<std::string>* ignored = nullptr) {
    auto r = parse_manifest(text, "test.yaml", ignored);
    if (!r) FAIL_CHECK("unexpected error: " << r.error().message);
    return r ? *r : std::vector<Object>{};
}

std::string parse_error(std::string_view text, std::string_view filename = "test.yaml") {
    auto r = parse_manifest(text, filename);
    if (r) {
        FAIL_CHECK("expected an error for:\n" << text);
        return {};
    }
    CHECK(r.error().code != 0);
    return r.error().message;
}

NetworkPolicy policy_ok(std::string_view spec_yaml) {
    std::string text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\n";
    text += spec_yaml;
    auto objs = parse_ok(text);
    REQUIRE(objs.size() == 1);
    REQUIRE(std::holds_alternative<NetworkPolicy>(objs[0]));
    return std::get<NetworkPolicy>(objs[0]);
}

std::string policy_error(std::string_view spec_yaml) {
    std::string text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\n";
    text += spec_yaml;
    return parse_error(text);
}

Pod pod_ok(std::string_view text) {
    auto objs = parse_ok(text);
    REQUIRE(objs.size() == 1);
    REQUIRE(std::holds_alternative<Pod>(objs[0]));
    return std::get<Pod>(objs[0]);
}

Requirement req(std::string key, Requirement::Op op, std::vector<std::string> values = {}) {
    return Requirement{std::move(key), op, std::move(values)};
}

// A temporary directory removed at the end of the test.
struct TempDir {
    std::filesystem::path path;
    TempDir() {
        std::string tmpl = (std::filesystem::temp_directory_path() / "signet-manifest-XXXXXX").string();
        REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
        path = tmpl;
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
    void write(const std::string& name, std::string_view text) const {
        std::ofstream out(path / name, std::ios::binary | std::ios::trunc);
        out << text;
    }
};

std::string ns_yaml(const std::string& name, const std::string& extra_labels = "") {
    return "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: " + name + "\n  labels: {" + extra_labels + "}\n";
}

std::string pod_yaml(const std::string& ns, const std::string& name, const std::string& app) {
    return "apiVersion: v1\nkind: Pod\nmetadata:\n  namespace: " + ns + "\n  name: " + name +
           "\n  labels: {app: " + app + "}\nspec:\n  containers: [{name: c, image: i}]\n";
}

}  // namespace

// ===========================================================================
// Label selectors

TEST_CASE("selector: the empty selector matches everything") {
    LabelSelector empty;
    CHECK(empty.empty());
    CHECK(matches(empty, {}));
    CHECK(matches(empty, {{"a", "b"}}));
}

TEST_CASE("selector: matchLabels needs every pair") {
    LabelSelector s{{{"app", "web"}, {"tier", "fe"}}, {}};
    CHECK(matches(s, {{"app", "web"}, {"tier", "fe"}, {"x", "y"}}));
    CHECK_FALSE(matches(s, {{"app", "web"}}));
    CHECK_FALSE(matches(s, {{"app", "web"}, {"tier", "be"}}));
    CHECK_FALSE(matches(s, {}));
}

TEST_CASE("selector: operators") {
    Labels web{{"app", "web"}};
    Labels db{{"app", "db"}};
    Labels none{};

    LabelSelector in{{}, {req("app", Requirement::In, {"web", "api"})}};
    CHECK(matches(in, web));
    CHECK_FALSE(matches(in, db));
    CHECK_FALSE(matches(in, none));

    LabelSelector notin{{}, {req("app", Requirement::NotIn, {"web", "api"})}};
    CHECK_FALSE(matches(notin, web));
    CHECK(matches(notin, db));
    CHECK(matches(notin, none));  // an absent key is "not in"

    LabelSelector exists{{}, {req("app", Requirement::Exists)}};
    CHECK(matches(exists, web));
    CHECK(matches(exists, {{"app", ""}}));
    CHECK_FALSE(matches(exists, none));

    LabelSelector absent{{}, {req("app", Requirement::DoesNotExist)}};
    CHECK_FALSE(matches(absent, web));
    CHECK(matches(absent, none));
    CHECK(matches(absent, {{"other", "x"}}));
}

TEST_CASE("selector: matchLabels and matchExpressions are ANDed") {
    LabelSelector s{{{"app", "web"}},
                    {req("env", Requirement::In, {"prod"}), req("legacy", Requirement::DoesNotExist)}};
    CHECK(matches(s, {{"app", "web"}, {"env", "prod"}}));
    CHECK_FALSE(matches(s, {{"app", "web"}, {"env", "dev"}}));
    CHECK_FALSE(matches(s, {{"app", "web"}, {"env", "prod"}, {"legacy", "1"}}));
    CHECK_FALSE(matches(s, {{"env", "prod"}}));
}

TEST_CASE("selector: rendering") {
    LabelSelector s{{{"app", "web"}},
                    {req("tier", Requirement::In, {"a", "b"}), req("x", Requirement::NotIn, {"c"}),
                     req("y", Requirement::Exists), req("z", Requirement::DoesNotExist)}};
    CHECK(to_string(s) == "app=web,tier in (a,b),x notin (c),y,!z");
    CHECK(to_string(LabelSelector{}).empty());
}

TEST_CASE("selector: validation") {
    CHECK(validate(LabelSelector{{}, {req("a", Requirement::In, {"x"})}}, "s"));
    auto e1 = validate(LabelSelector{{}, {req("a", Requirement::In)}}, "s");
    REQUIRE_FALSE(e1);
    CHECK(e1.error().message == "s.matchExpressions[0].values: must be specified when `operator` is 'In' or 'NotIn'");
    CHECK_FALSE(validate(LabelSelector{{}, {req("a", Requirement::NotIn)}}, "s"));
    auto e2 = validate(LabelSelector{{}, {req("a", Requirement::Exists, {"x"})}}, "s");
    REQUIRE_FALSE(e2);
    CHECK(e2.error().message ==
          "s.matchExpressions[0].values: may not be specified when `operator` is 'Exists' or 'DoesNotExist'");
    CHECK_FALSE(validate(LabelSelector{{}, {req("a", Requirement::DoesNotExist, {"x"})}}, "s"));
    CHECK_FALSE(validate(LabelSelector{{}, {req("bad key", Requirement::Exists)}}, "s"));
    CHECK_FALSE(validate(LabelSelector{{{"a", "bad value!"}}, {}}, "s"));
    CHECK_FALSE(validate(LabelSelector{{}, {req("a", Requirement::In, {"-x"})}}, "s"));
    CHECK(parse_operator("In") == Requirement::In);
    CHECK_FALSE(parse_operator("in"));
    CHECK_FALSE(parse_operator("Gt"));
}

// ===========================================================================
// Names, labels, ports, CIDRs

TEST_CASE("names and labels") {
    CHECK(is_dns1123_label("a"));
    CHECK(is_dns1123_label("a-1"));
    CHECK_FALSE(is_dns1123_label("A"));
    CHECK_FALSE(is_dns1123_label("-a"));
    CHECK_FALSE(is_dns1123_label("a-"));
    CHECK_FALSE(is_dns1123_label("a.b"));
    CHECK_FALSE(is_dns1123_label(std::string(64, 'a')));
    CHECK(is_dns1123_label(std::string(63, 'a')));
    CHECK(is_dns1123_subdomain("a.b-c.d"));
    CHECK_FALSE(is_dns1123_subdomain("a..b"));
    CHECK_FALSE(is_dns1123_subdomain(".a"));
    CHECK_FALSE(is_dns1123_subdomain("a_b"));
    CHECK_FALSE(is_dns1123_subdomain(std::string(254, 'a')));

    CHECK(check_label_key("app").empty());
    CHECK(check_label_key("example.com/App_1.x").empty());
    CHECK(check_label_key("kubernetes.io/metadata.name").empty());
    CHECK_FALSE(check_label_key("").empty());
    CHECK_FALSE(check_label_key("/a").empty());
    CHECK_FALSE(check_label_key("Example.com/a").empty());
    CHECK_FALSE(check_label_key("a/b/c").empty());
    CHECK_FALSE(check_label_key("a b").empty());
    CHECK_FALSE(check_label_key(std::string(64, 'a')).empty());
    CHECK(check_label_value("").empty());
    CHECK(check_label_value("V1.0_x-y").empty());
    CHECK_FALSE(check_label_value("-a").empty());
    CHECK_FALSE(check_label_value("a/b").empty());
    CHECK_FALSE(check_label_value(std::string(64, 'a')).empty());

    CHECK(is_port_name("http"));
    CHECK(is_port_name("h2-c"));
    CHECK_FALSE(is_port_name("80"));
    CHECK_FALSE(is_port_name("HTTP"));
    CHECK_FALSE(is_port_name("a--b"));
    CHECK_FALSE(is_port_name("-a"));
    CHECK_FALSE(is_port_name("abcdefghijklmnop"));
}

TEST_CASE("cidr parsing and containment") {
    auto c = parse_cidr("10.1.2.3/8");
    REQUIRE(c);
    CHECK(c->family == 4);
    CHECK(c->prefix_len == 8);
    CHECK(c->to_string() == "10.0.0.0/8");
    auto s = parse_cidr("10.1.0.0/16");
    REQUIRE(s);
    CHECK(c->contains(*s));
    CHECK_FALSE(s->contains(*c));
    CHECK(c->contains(*c));
    auto v6 = parse_cidr("2001:db8::1/32");
    REQUIRE(v6);
    CHECK(v6->family == 6);
    CHECK(v6->to_string() == "2001:db8::/32");
    CHECK_FALSE(c->contains(*v6));
    CHECK(parse_cidr("0.0.0.0/0"));
    CHECK(parse_cidr("::/0"));
    auto odd = parse_cidr("192.168.1.129/25");
    REQUIRE(odd);
    CHECK(odd->to_string() == "192.168.1.128/25");
    CHECK(odd->contains(*parse_cidr("192.168.1.200/32")));
    CHECK_FALSE(odd->contains(*parse_cidr("192.168.1.100/32")));
    for (const char* bad : {"10.0.0.0", "10.0.0.0/33", "10.0.0/8", "010.0.0.0/8", "10.0.0.0/-1", "10.0.0.0/8/8",
                            "::/129", "", "/8", "10.0.0.0/", "10.0.0.0/ 8", "x/8"})
        CHECK_MESSAGE(!parse_cidr(bad), bad);
    CHECK(is_ip_address("10.0.0.1"));
    CHECK(is_ip_address("fd00::1"));
    CHECK_FALSE(is_ip_address("10.0.0.1/32"));
    CHECK_FALSE(is_ip_address(""));
}

// ===========================================================================
// Parsing: formats

TEST_CASE("parse: multi-document YAML with all three kinds") {
    auto objs = parse_ok(R"(
apiVersion: v1
kind: Namespace
metadata:
  name: x
  labels:
    team: a
---
apiVersion: v1
kind: Pod
metadata:
  name: a
  namespace: x
  uid: 1234-5678
  labels: {app: a}
spec:
  nodeName: node1
  initContainers:
  - name: init
    ports: [{containerPort: 9999}]
  containers:
  - name: c1
    ports:
    - {name: http, containerPort: 80}
    - {name: dns, containerPort: 53, protocol: UDP}
  - name: c2
    ports: [{containerPort: 81, protocol: SCTP}]
status:
  phase: Running
  podIP: 10.0.0.5
  podIPs: [{ip: 10.0.0.5}, {ip: "fd00::5"}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {}
)");
    REQUIRE(objs.size() == 3);
    const auto& ns = std::get<Namespace>(objs[0]);
    CHECK(ns.name == "x");
    CHECK(ns.labels == Labels{{"team", "a"}, {"kubernetes.io/metadata.name", "x"}});

    const auto& pod = std::get<Pod>(objs[1]);
    CHECK(pod.namespace_ == "x");
    CHECK(pod.name == "a");
    CHECK(pod.uid == "1234-5678");
    CHECK(pod.node_name == "node1");
    CHECK_FALSE(pod.host_network);
    CHECK(pod.labels == Labels{{"app", "a"}});
    REQUIRE(pod.container_ports.size() == 3);
    CHECK(pod.container_ports[0] == api::ContainerPort{"http", 80, "TCP"});
    CHECK(pod.container_ports[1] == api::ContainerPort{"dns", 53, "UDP"});
    CHECK(pod.container_ports[2] == api::ContainerPort{"", 81, "SCTP"});
    CHECK(pod.pod_ips == std::vector<std::string>{"10.0.0.5", "fd00::5"});
    CHECK(pod.phase == "Running");

    const auto& np = std::get<NetworkPolicy>(objs[2]);
    CHECK(np.namespace_ == "x");
    CHECK(np.name == "deny-all");
    CHECK(np.pod_selector.empty());
    CHECK(np.policy_types == std::vector<PolicyType>{PolicyType::Ingress});
    CHECK(np.policy_types_inferred);
    CHECK(np.ingress.empty());
    CHECK(np.affects_ingress());
    CHECK_FALSE(np.affects_egress());
}

TEST_CASE("parse: namespace name label is always set") {
    auto objs = parse_ok(ns_yaml("z", "kubernetes.io/metadata.name: other, a: b"));
    REQUIRE(objs.size() == 1);
    CHECK(std::get<Namespace>(objs[0]).labels == Labels{{"a", "b"}, {"kubernetes.io/metadata.name", "z"}});
}

TEST_CASE("parse: namespace defaults to 'default'; podIP fallback; hostNetwork") {
    auto pod = pod_ok(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {hostNetwork: true}\n"
        "status: {podIP: 192.168.0.1}\n");
    CHECK(pod.namespace_ == "default");
    CHECK(pod.host_network);
    CHECK(pod.pod_ips == std::vector<std::string>{"192.168.0.1"});
    CHECK(pod.container_ports.empty());
    auto np = policy_ok("");  // namespace given there; check default separately
    auto objs = parse_ok("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\n");
    CHECK(std::get<NetworkPolicy>(objs.at(0)).namespace_ == "default");
}

TEST_CASE("parse: the pod's controller from ownerReferences (malformed entries ignored, never an error)") {
    auto pod = pod_ok(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: api-5d8c7b9f4-x2x7k\n  labels: {pod-template-hash: 5d8c7b9f4}\n"
        "  ownerReferences:\n  - {apiVersion: v1, kind: Node, name: n1}\n  - 42\n"
        "  - {apiVersion: apps/v1, kind: ReplicaSet, name: 7, controller: true}\n"
        "  - {apiVersion: apps/v1, kind: ReplicaSet, name: api-5d8c7b9f4, controller: true, uid: u}\n");
    CHECK(pod.owner_kind == "ReplicaSet");
    CHECK(pod.owner_name == "api-5d8c7b9f4");
    CHECK(workload_of(pod) == Workload{"Deployment", "api"});
    auto bare = pod_ok("apiVersion: v1\nkind: Pod\nmetadata: {name: solo, ownerReferences: oops}\n");
    CHECK(bare.owner_kind.empty());
    CHECK(workload_of(bare) == Workload{"Pod", "solo"});
}

TEST_CASE("parse: empty documents and files") {
    CHECK(parse_ok("").empty());
    CHECK(parse_ok("\n\n").empty());
    CHECK(parse_ok("# only a comment\n").empty());
    CHECK(parse_ok("---\n---\n...\n").empty());
    CHECK(parse_ok("null\n").empty());
    auto objs = parse_ok("---\n\n---\n" + ns_yaml("a") + "---\n# nothing\n---\n" + ns_yaml("b") + "---\n");
    CHECK(objs.size() == 2);
}

TEST_CASE("parse: JSON object and JSON stream") {
    auto objs =
        parse_ok(R"(  {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "j", "labels": {"a": "1"}}})");
    REQUIRE(objs.size() == 1);
    CHECK(std::get<Namespace>(objs[0]).labels.at("a") == "1");

    objs = parse_ok(R"({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}}
{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "b"}})");
    CHECK(objs.size() == 2);

    auto np = parse_ok(R"({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "p", "namespace": "x"},
        "spec": {"podSelector": {"matchLabels": {"app": "a"}},
                 "ingress": [{"ports": [{"port": 80}, {"port": "http", "protocol": "UDP"}]}]}})");
    REQUIRE(np.size() == 1);
    const auto& p = std::get<NetworkPolicy>(np[0]);
    REQUIRE(p.ingress.size() == 1);
    REQUIRE(p.ingress[0].ports);
    CHECK((*p.ingress[0].ports)[0].port == PortValue{80});
    CHECK((*p.ingress[0].ports)[1].port == PortValue{std::string("http")});
    CHECK((*p.ingress[0].ports)[1].protocol == Protocol::UDP);

    auto e = parse_error(R"({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"})", "ns.json");
    CHECK(e.rfind("ns.json: document 1: invalid JSON at offset", 0) == 0);
    e = parse_error(R"({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "p"},
        "spec": {"ingress": [{"ports": [{"port": 80.0}]}]}})");
    CHECK(e == "test.yaml: document 1: spec.ingress[0].ports[0].port: must be an integer or a string");
    // JSON inside a YAML stream (a later document) is YAML flow style.
    objs = parse_ok(ns_yaml("a") +
                    "---\n{\"apiVersion\": \"v1\", \"kind\": \"Namespace\", \"metadata\": {\"name\": \"b\"}}\n");
    CHECK(objs.size() == 2);
}

TEST_CASE("parse: lists") {
    auto objs = parse_ok(R"(
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata: {name: a}
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: d, namespace: a}
- apiVersion: v1
  kind: List
  items:
  - {apiVersion: v1, kind: Namespace, metadata: {name: nested}}
)");
    REQUIRE(objs.size() == 2);
    CHECK(std::get<Namespace>(objs[1]).name == "nested");

    // Typed lists: items as `kubectl get -o yaml` prints them may omit kind/apiVersion.
    objs = parse_ok(R"(
apiVersion: v1
kind: PodList
items:
- metadata: {name: a, namespace: x}
- kind: Pod
  apiVersion: v1
  metadata: {name: b, namespace: x}
)");
    REQUIRE(objs.size() == 2);
    CHECK(std::get<Pod>(objs[1]).name == "b");
    objs = parse_ok("apiVersion: v1\nkind: NamespaceList\nitems: [{metadata: {name: a}}]\n");
    CHECK(std::get<Namespace>(objs.at(0)).name == "a");
    objs = parse_ok("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicyList\nitems: [{metadata: {name: a}}]\n");
    CHECK(std::get<NetworkPolicy>(objs.at(0)).name == "a");
    CHECK(parse_ok("apiVersion: v1\nkind: List\nitems: []\n").empty());
    CHECK(parse_ok("apiVersion: v1\nkind: List\n").empty());

    CHECK(parse_error("apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Pod, metadata: {name: A}}\n") ==
          "test.yaml: document 1: items[0].metadata.name: invalid value \"A\": a lowercase RFC 1123 subdomain must "
          "consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric "
          "character, at most 253 characters");
    CHECK(parse_error("apiVersion: v1\nkind: List\nitems:\n- {metadata: {name: a}}\n") ==
          "test.yaml: document 1: items[0].kind: required value");
    CHECK(parse_error("apiVersion: v1\nkind: List\nitems: {a: b}\n") ==
          "test.yaml: document 1: items: must be a list, not an object");
}

TEST_CASE("parse: ignored kinds are reported, not errors") {
    std::vector<std::string> ignored;
    auto objs = parse_ok(R"(
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: s, namespace: x}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: c}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: d, namespace: x}
spec: {replicas: "garbage is fine in kinds we ignore"}
---
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Secret, metadata: {name: s}}
)",
                         &ignored);
    CHECK(objs.empty());
    CHECK(ignored == std::vector<std::string>{"document 1: discovery.k8s.io/v1 EndpointSlice x/s", "document 2: v1 ConfigMap c",
                                              "document 3: apps/v1 Deployment x/d",
                                              "document 4: items[0]: v1 Secret s"});
}

TEST_CASE("parse: kind and apiVersion") {
    CHECK(parse_error("kind: Namespace\nmetadata: {name: a}\n") == "test.yaml: document 1: apiVersion: required value");
    CHECK(parse_error("apiVersion: v1\nmetadata: {name: a}\n") == "test.yaml: document 1: kind: required value");
    CHECK(parse_error(ns_yaml("a") + "---\napiVersion: apps/v1\nkind: Pod\nmetadata: {name: a}\n") ==
          "test.yaml: document 2: apiVersion: kind Pod is served as \"v1\", not \"apps/v1\"");
    CHECK(parse_error("apiVersion: networking.k8s.io/v1beta1\nkind: NetworkPolicy\nmetadata: {name: a}\n") ==
          "test.yaml: document 1: apiVersion: kind NetworkPolicy is served as \"networking.k8s.io/v1\", not "
          "\"networking.k8s.io/v1beta1\"");
    CHECK(parse_error("apiVersion: v1\nkind: NetworkPolicy\nmetadata: {name: a}\n").find("is served as") !=
          std::string::npos);
    CHECK(parse_error("apiVersion: v1\nkind: 5\nmetadata: {name: a}\n") ==
          "test.yaml: document 1: kind: must be a string, not a number");
    CHECK(parse_error("just a string\n") ==
          "test.yaml: document 1: must be an object (a Kubernetes resource), not a string");
    CHECK(parse_error("- a\n- b\n") == "test.yaml: document 1: must be an object (a Kubernetes resource), not a list");
    CHECK(parse_error("apiVersion: v1\nkind: Namespace\n") == "test.yaml: document 1: metadata.name: required value");
    CHECK(parse_error("apiVersion: v1\nkind: Namespace\nmetadata: {generateName: x-}\n") ==
          "test.yaml: document 1: metadata.name: required value");
}

// ===========================================================================
// Parsing: YAML scalar typing (as kubectl's YAML->JSON)

TEST_CASE("yaml: scalar typing") {
    auto doc = source::yaml_to_json(R"(
int: 80
str: "80"
sq: '80'
hex: 0x50
oct: 0o17
old_oct: 017
under: 1_000
neg: -5
big: 18446744073709551615
flt: 80.0
frac: 1.5
exp: 1e3
bad_oct: 08
t: true
yw: yes
ycap: Y
on: x
f: off
n1: ~
nul: null
empty:
word: hello
ver: 1.2.3
tagged_str: !!str 80
tagged_int: !!int "81"
time: 2001-12-14
)");
    REQUIRE(doc);
    REQUIRE(doc->Size() == 1);
    const auto& v = (*doc)[0];
    CHECK(v["int"].IsInt());
    CHECK(v["int"].GetInt() == 80);
    CHECK(v["str"].IsString());
    CHECK(v["sq"].IsString());
    CHECK(v["hex"].GetInt() == 80);
    CHECK(v["oct"].GetInt() == 15);
    CHECK(v["old_oct"].GetInt() == 15);
    CHECK(v["under"].GetInt() == 1000);
    CHECK(v["neg"].GetInt() == -5);
    CHECK(v["big"].IsUint64());
    CHECK(v["flt"].IsInt());  // Go's json.Marshal writes 80.0 as 80
    CHECK(v["frac"].IsDouble());
    CHECK(v["exp"].GetInt() == 1000);
    CHECK(v["bad_oct"].GetInt() == 8);
    CHECK(v["t"].GetBool());
    CHECK(v["yw"].GetBool());  // YAML 1.1
    CHECK(v["ycap"].GetBool());
    CHECK(v["true"].IsString());  // the key `on` is the boolean true, written "true"
    CHECK(v["f"].IsFalse());
    CHECK(v["n1"].IsNull());
    CHECK(v["nul"].IsNull());
    CHECK(v["empty"].IsNull());
    CHECK(v["word"].IsString());
    CHECK(v["ver"].IsString());
    CHECK(std::string(v["tagged_str"].GetString()) == "80");
    CHECK(v["tagged_int"].GetInt() == 81);
    CHECK(v["time"].IsString());
}

TEST_CASE("yaml: duplicate keys, merge keys, bad values") {
    // YAML 1.1 booleans as keys: `Y:` and `on:` both become "true".
    auto e = parse_error("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  labels: {Y: a, on: b}\n");
    CHECK(e.find("duplicate key \"true\"") != std::string::npos);
    e = parse_error("apiVersion: v1\nkind: Namespace\nkind: Pod\n");
    CHECK(e == "test.yaml: document 1: line 3, column 1: duplicate key \"kind\"");

    auto doc = source::yaml_to_json(R"(
base: &b {a: 1, b: 2}
other: &o {c: 3, a: 9}
m:
  <<: [*b, *o]
  b: 5
)");
    REQUIRE(doc);
    const auto& m = (*doc)[0]["m"];
    CHECK(m["a"].GetInt() == 1);  // the earlier merge source wins
    CHECK(m["b"].GetInt() == 5);  // explicit keys win
    CHECK(m["c"].GetInt() == 3);

    CHECK_FALSE(source::yaml_to_json("a: .inf\n"));
    CHECK_FALSE(source::yaml_to_json("a: !!int abc\n"));
    CHECK_FALSE(source::yaml_to_json("a: !!bool maybe\n"));
    CHECK_FALSE(source::yaml_to_json("? [a]\n: b\n"));
    CHECK_FALSE(source::yaml_to_json("~: b\n"));
    CHECK_FALSE(source::yaml_to_json("a: {<<: 5}\n"));
}

TEST_CASE("yaml: labels with YAML 1.1 typing are rejected like kubectl") {
    auto e = parse_error(ns_yaml("a", "enabled: yes"));
    CHECK(e == "test.yaml: document 1: metadata.labels.enabled: must be a string, not a boolean");
    e = parse_error(ns_yaml("a", "version: 1.0"));
    CHECK(e == "test.yaml: document 1: metadata.labels.version: must be a string, not a number");
    CHECK(parse_ok(ns_yaml("a", "version: \"1.0\", enabled: \"yes\"")).size() == 1);
    // Even a name: `y` is the boolean true in YAML 1.1, as kubectl reads it.
    CHECK(parse_error(ns_yaml("y")) == "test.yaml: document 1: metadata.name: must be a string, not a boolean");
}

TEST_CASE("yaml: syntax errors name the line") {
    auto e = parse_error("apiVersion: v1\nkind: Namespace\nmetadata: {name: a\n", "bad.yaml");
    CHECK(e.rfind("bad.yaml: invalid YAML at line ", 0) == 0);
    e = parse_error("a: b\n  c: d\n");
    CHECK(e.rfind("test.yaml: invalid YAML at line 2", 0) == 0);
}

TEST_CASE("limits: size, depth, alias expansion") {
    std::string big(source::kMaxManifestBytes + 1, '#');
    auto r = parse_manifest(big, "big.yaml");
    REQUIRE_FALSE(r);
    CHECK(r.error().code == EFBIG);
    CHECK(r.error().message.rfind("big.yaml: file too large", 0) == 0);

    std::string deep = "a: ";
    for (int i = 0; i < 70; ++i) deep += "[";
    for (int i = 0; i < 70; ++i) deep += "]";
    CHECK(parse_error(deep).find("nesting deeper than 64 levels") != std::string::npos);
    std::string deep_json = "{\"a\": ";
    for (int i = 0; i < 70; ++i) deep_json += "[";
    for (int i = 0; i < 70; ++i) deep_json += "]";
    deep_json += "}";
    CHECK(parse_error(deep_json).find("nesting deeper than 64 levels") != std::string::npos);
    std::string very_deep_json(100000, '[');
    CHECK(parse_error("{\"a\": " + very_deep_json) == "test.yaml: line 1: nesting deeper than 64 levels");
    CHECK(parse_error("a: " + very_deep_json) == "test.yaml: line 1: nesting deeper than 64 levels");
    // yaml-cpp queues all tokens of a flow collection; huge ones are refused before parsing.
    std::string wide = "a: [";
    for (size_t i = 0; i <= source::kMaxNodes; ++i) wide += "1,";
    CHECK(parse_error(wide) == "test.yaml: line 1: flow collection with more than 500000 entries");
    // Brackets in quoted strings and comments do not count.
    std::string brackets(2000, '{');
    CHECK(parse_ok("# " + brackets + "\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata:\n  a: \"" +
                   brackets + "\"\n  b: '" + brackets + "'\n")
              .empty());

    // Billion laughs: every level doubles... times ten.
    std::string bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n";
    char prev = 'a';
    for (char c = 'b'; c <= 'j'; ++c) {
        bomb += std::string(1, c) + ": &" + c + " [";
        for (int i = 0; i < 10; ++i) bomb += std::string(i ? ", *" : "*") + prev;
        bomb += "]\n";
        prev = c;
    }
    CHECK(parse_error(bomb).find("more than 500000 values") != std::string::npos);
    // An alias inside its own anchor makes a cycle.
    CHECK(parse_error("a: &a [*a]\n").find("nesting deeper than") != std::string::npos);
}

// ===========================================================================
// NetworkPolicy decoding and validation

TEST_CASE("policy: full spec") {
    auto np = policy_ok(R"(spec:
  podSelector:
    matchLabels: {app: web}
    matchExpressions:
    - {key: tier, operator: In, values: [fe, be]}
  policyTypes: [Egress, Ingress]
  ingress:
  - from:
    - podSelector: {matchLabels: {app: client}}
    - namespaceSelector: {matchLabels: {team: a}}
    - podSelector: {}
      namespaceSelector: {matchExpressions: [{key: env, operator: Exists}]}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16, 10.2.3.4/32]}
    ports:
    - {protocol: TCP, port: 80}
    - {port: http}
    - {protocol: UDP}
    - {port: 8000, endPort: 9000}
  - {}
  egress:
  - to: []
    ports: []
  - to: [{ipBlock: {cidr: "fd00::/8"}}]
)");
    CHECK(np.pod_selector.match_labels == Labels{{"app", "web"}});
    REQUIRE(np.pod_selector.match_expressions.size() == 1);
    CHECK(np.pod_selector.match_expressions[0] == req("tier", Requirement::In, {"fe", "be"}));
    CHECK(np.policy_types == std::vector<PolicyType>{PolicyType::Ingress, PolicyType::Egress});
    CHECK_FALSE(np.policy_types_inferred);
    REQUIRE(np.ingress.size() == 2);
    const auto& from = *np.ingress[0].from;
    REQUIRE(from.size() == 4);
    CHECK(from[0].pod_selector == LabelSelector{{{"app", "client"}}, {}});
    CHECK_FALSE(from[0].namespace_selector);
    CHECK_FALSE(from[1].pod_selector);
    CHECK(from[1].namespace_selector->match_labels.at("team") == "a");
    CHECK(from[2].pod_selector == LabelSelector{});
    CHECK(from[2].namespace_selector->match_expressions[0].op == Requirement::Exists);
    REQUIRE(from[3].ip_block);
    CHECK(from[3].ip_block->cidr.to_string() == "10.0.0.0/8");
    REQUIRE(from[3].ip_block->except.size() == 2);
    CHECK(from[3].ip_block->except[1].to_string() == "10.2.3.4/32");
    const auto& ports = *np.ingress[0].ports;
    REQUIRE(ports.size() == 4);
    CHECK(ports[0] == PolicyPort{Protocol::TCP, PortValue{80}, std::nullopt});
    CHECK(ports[1] == PolicyPort{Protocol::TCP, PortValue{std::string("http")}, std::nullopt});
    CHECK(ports[2] == PolicyPort{Protocol::UDP, std::nullopt, std::nullopt});
    CHECK(ports[3] == PolicyPort{Protocol::TCP, PortValue{8000}, 9000});
    // `{}`: from and ports absent.
    CHECK_FALSE(np.ingress[1].from);
    CHECK_FALSE(np.ingress[1].ports);
    // `to: []` and `ports: []`: present and empty, kept distinct from absent.
    REQUIRE(np.egress.size() == 2);
    REQUIRE(np.egress[0].to);
    CHECK(np.egress[0].to->empty());
    REQUIRE(np.egress[0].ports);
    CHECK(np.egress[0].ports->empty());
    CHECK(np.egress[1].to->at(0).ip_block->cidr.family == 6);
}

TEST_CASE("policy: policyTypes inference as upstream") {
    CHECK(policy_ok("spec: {podSelector: {}}").policy_types == std::vector{PolicyType::Ingress});
    CHECK(policy_ok("spec: {ingress: [{}]}").policy_types == std::vector{PolicyType::Ingress});
    auto both = policy_ok("spec: {egress: [{}]}");
    CHECK(both.policy_types == std::vector{PolicyType::Ingress, PolicyType::Egress});
    CHECK(both.policy_types_inferred);
    // Upstream infers Egress only from at least one egress rule.
    CHECK(policy_ok("spec: {egress: []}").policy_types == std::vector{PolicyType::Ingress});
    CHECK(policy_ok("spec: {policyTypes: [], egress: [{}]}").policy_types ==
          std::vector{PolicyType::Ingress, PolicyType::Egress});
    auto egress_only = policy_ok("spec: {policyTypes: [Egress]}");
    CHECK(egress_only.policy_types == std::vector{PolicyType::Egress});
    CHECK_FALSE(egress_only.affects_ingress());
    CHECK(egress_only.affects_egress());
    CHECK(policy_ok("spec: {policyTypes: [Ingress], egress: [{}]}").policy_types == std::vector{PolicyType::Ingress});
    CHECK(policy_ok("spec: {policyTypes: [Egress, Egress]}").policy_types == std::vector{PolicyType::Egress});
}

TEST_CASE("policy: validation errors name the field") {
    struct Case {
        const char* spec;
        const char* error;
    };
    const Case cases[] = {
        {"spec: {ingress: [{from: [{}]}]}",
         "spec.ingress[0].from[0]: must specify a peer (podSelector, namespaceSelector or ipBlock)"},
        {"spec: {ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]}",
         "spec.ingress[0].from[0]: may not specify both ipBlock and another peer"},
        {"spec: {egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}, namespaceSelector: {}}]}]}",
         "spec.egress[0].to[0]: may not specify both ipBlock and another peer"},
        {"spec: {ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]}",
         "spec.ingress[0].from[0].ipBlock.cidr: invalid CIDR \"10.0.0.0/33\": prefix length must be 0..32"},
        {"spec: {ingress: [{from: [{ipBlock: {cidr: 10.0.0.0}}]}]}",
         "spec.ingress[0].from[0].ipBlock.cidr: invalid CIDR \"10.0.0.0\": must be an address and a prefix length, "
         "e.g. 10.0.0.0/8"},
        {"spec: {ingress: [{from: [{ipBlock: {}}]}]}", "spec.ingress[0].from[0].ipBlock.cidr: required value"},
        {"spec: {ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]}]}",
         "spec.ingress[0].from[0].ipBlock.except[0]: invalid value \"11.0.0.0/16\": must be a strict subset of "
         "`cidr` 10.0.0.0/8"},
        {"spec: {ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/16, 10.0.0.0/8]}}]}]}",
         "spec.ingress[0].from[0].ipBlock.except[1]: invalid value \"10.0.0.0/8\": must be a strict subset of "
         "`cidr` 10.0.0.0/8"},
        {"spec: {ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [\"fd00::/64\"]}}]}]}",
         "spec.ingress[0].from[0].ipBlock.except[0]: invalid value \"fd00::/64\": must be a strict subset of "
         "`cidr` 10.0.0.0/8"},
        {"spec: {ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [bad]}}]}]}",
         "spec.ingress[0].from[0].ipBlock.except[0]: invalid CIDR \"bad\": must be an address and a prefix length, "
         "e.g. 10.0.0.0/8"},
        {"spec: {ingress: [{ports: [{endPort: 90}]}]}",
         "spec.ingress[0].ports[0].port: must be specified when endPort is specified"},
        {"spec: {ingress: [{ports: [{port: http, endPort: 90}]}]}",
         "spec.ingress[0].ports[0].endPort: may not be specified when `port` is non-numeric"},
        {"spec: {ingress: [{ports: [{port: 100, endPort: 90}]}]}",
         "spec.ingress[0].ports[0].endPort: invalid value 90: must be greater than or equal to `port`"},
        {"spec: {ingress: [{ports: [{port: 100, endPort: 65536}]}]}",
         "spec.ingress[0].ports[0].endPort: invalid value 65536: must be between 1 and 65535, inclusive"},
        {"spec: {ingress: [{ports: [{port: 0}]}]}",
         "spec.ingress[0].ports[0].port: invalid value 0: must be between 1 and 65535, inclusive"},
        {"spec: {egress: [{ports: [{port: 80}, {port: 70000}]}]}",
         "spec.egress[0].ports[1].port: invalid value 70000: must be between 1 and 65535, inclusive"},
        {"spec: {ingress: [{ports: [{port: 80}, {port: \"80\"}]}]}",
         "spec.ingress[0].ports[1].port: invalid value \"80\": must be a port number or a port name of at most 15 "
         "characters: lower case alphanumerics and '-', at least one letter, no leading, trailing or doubled '-'"},
        {"spec: {ingress: [{ports: [{port: 80}, {port: true}]}]}",
         "spec.ingress[0].ports[1].port: must be an integer or a string"},
        {"spec: {ingress: [{ports: [{port: [80]}]}]}", "spec.ingress[0].ports[0].port: must be an integer or a string"},
        {"spec: {ingress: [{ports: [{port: 99999999999}]}]}",
         "spec.ingress[0].ports[0].port: must be an integer or a string"},
        {"spec: {ingress: [{ports: [{port: 80, endPort: 1.5}]}]}",
         "spec.ingress[0].ports[0].endPort: must be an integer, not a floating-point number"},
        {"spec: {ingress: [{ports: [{protocol: ICMP}]}]}",
         "spec.ingress[0].ports[0].protocol: unsupported value \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\""},
        {"spec: {ingress: [{ports: [{protocol: tcp}]}]}",
         "spec.ingress[0].ports[0].protocol: unsupported value \"tcp\": supported values: \"SCTP\", \"TCP\", \"UDP\""},
        {"spec: {policyTypes: [Ingress, Foo]}",
         "spec.policyTypes[1]: unsupported value \"Foo\": supported values: \"Egress\", \"Ingress\""},
        {"spec: {policyTypes: [Ingress, Egress, Ingress]}",
         "spec.policyTypes: may not specify more than two policyTypes"},
        {"spec: {policyTypes: Ingress}", "spec.policyTypes: must be a list, not a string"},
        {"spec: {podSelector: {matchExpressions: [{key: a, operator: In}]}}",
         "spec.podSelector.matchExpressions[0].values: must be specified when `operator` is 'In' or 'NotIn'"},
        {"spec: {podSelector: {matchExpressions: [{key: a, operator: NotIn, values: []}]}}",
         "spec.podSelector.matchExpressions[0].values: must be specified when `operator` is 'In' or 'NotIn'"},
        {"spec: {ingress: [{from: [{podSelector: {matchExpressions: [{key: a, operator: Exists, values: [x]}]}}]}]}",
         "spec.ingress[0].from[0].podSelector.matchExpressions[0].values: may not be specified when `operator` is "
         "'Exists' or 'DoesNotExist'"},
        {"spec: {ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: a, operator: Gt, values: "
         "['1']}]}}]}]}",
         "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].operator: unsupported value \"Gt\": supported "
         "values: \"DoesNotExist\", \"Exists\", \"In\", \"NotIn\""},
        {"spec: {podSelector: {matchExpressions: [{operator: Exists}]}}",
         "spec.podSelector.matchExpressions[0].key: required value"},
        {"spec: {podSelector: {matchLabels: {\"bad key\": x}}}",
         "spec.podSelector.matchLabels: invalid label key \"bad key\": name part must consist of alphanumeric "
         "characters, '-', '_' or '.', and must start and end with an alphanumeric character"},
        {"spec: {podSelector: {matchLabels: {a: -x}}}",
         "spec.podSelector.matchLabels.a: invalid label value \"-x\": a valid label value must be empty or must "
         "consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric "
         "character"},
        {"spec: {podSelector: {matchLabels: {a: 1}}}",
         "spec.podSelector.matchLabels.a: must be a string, not a number"},
        {"spec: {podSelector: []}", "spec.podSelector: must be an object, not a list"},
        {"spec: {ingress: {}}", "spec.ingress: must be a list, not an object"},
        {"spec: {ingress: [{from: {}}]}", "spec.ingress[0].from: must be a list, not an object"},
        {"spec: []", "spec: must be an object, not a list"},
    };
    for (const Case& c : cases) {
        INFO(c.spec);
        CHECK(policy_error(c.spec) == std::string("test.yaml: document 1: ") + c.error);
    }
}

TEST_CASE("policy: the error message names file, document and path") {
    std::string text = ns_yaml("x") + R"(---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  ingress:
  - ports:
    - port: 80
    - port: {a: 1}
)";
    CHECK(parse_error(text, "policies.yaml") ==
          "policies.yaml: document 2: spec.ingress[0].ports[1].port: must be an integer or a string");
}

TEST_CASE("objects: names and labels are validated") {
    CHECK(parse_error(ns_yaml("a.b")).find("metadata.name: invalid value \"a.b\": a lowercase RFC 1123 label") !=
          std::string::npos);
    CHECK(parse_error(ns_yaml("A")).find("metadata.name: invalid value") != std::string::npos);
    CHECK(parse_ok("apiVersion: v1\nkind: Pod\nmetadata: {name: a.b-c, namespace: x}\n").size() == 1);
    CHECK(parse_error("apiVersion: v1\nkind: Pod\nmetadata: {name: a_b}\n").find("metadata.name") != std::string::npos);
    CHECK(parse_error("apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: a.b}\n") ==
          "test.yaml: document 1: metadata.namespace: invalid value \"a.b\": a lowercase RFC 1123 label must consist "
          "of lower case alphanumeric characters or '-', start and end with an alphanumeric character, and be at "
          "most 63 characters");
    CHECK(parse_error(ns_yaml("a", "\"a/b/c\": x")).find("metadata.labels: invalid label key \"a/b/c\"") !=
          std::string::npos);
    CHECK(parse_error(ns_yaml("a", "k: \"" + std::string(64, 'v') + "\"")) ==
          "test.yaml: document 1: metadata.labels.k: invalid label value \"" + std::string(64, 'v') +
              "\": must be no more than 63 characters");
    CHECK(parse_error("apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labels: [a]}\n") ==
          "test.yaml: document 1: metadata.labels: must be an object, not a list");
}

TEST_CASE("pod: field errors") {
    auto pod_error = [](const std::string& spec) {
        return parse_error("apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x}\n" + spec);
    };
    CHECK(pod_error("spec: {containers: [{ports: [{containerPort: 0}]}]}") ==
          "test.yaml: document 1: spec.containers[0].ports[0].containerPort: invalid value 0: must be between 1 and "
          "65535, inclusive");
    CHECK(pod_error("spec: {containers: [{}, {ports: [{name: http}]}]}") ==
          "test.yaml: document 1: spec.containers[1].ports[0].containerPort: required value");
    CHECK(pod_error("spec: {containers: [{ports: [{containerPort: \"80\"}]}]}") ==
          "test.yaml: document 1: spec.containers[0].ports[0].containerPort: must be an integer, not a string");
    CHECK(pod_error("spec: {containers: [{ports: [{containerPort: 80, protocol: ICMP}]}]}")
              .find("spec.containers[0].ports[0].protocol: unsupported value \"ICMP\"") != std::string::npos);
    CHECK(pod_error("spec: {containers: [{ports: [{containerPort: 80, name: HTTP}]}]}")
              .find("spec.containers[0].ports[0].name: invalid value \"HTTP\"") != std::string::npos);
    CHECK(pod_error("spec: {hostNetwork: \"true\"}") ==
          "test.yaml: document 1: spec.hostNetwork: must be a boolean, not a string");
    CHECK(pod_error("status: {podIPs: [{ip: 10.0.0.300}]}") ==
          "test.yaml: document 1: status.podIPs[0].ip: invalid value \"10.0.0.300\": must be a valid IP address");
    CHECK(pod_error("status: {podIP: nope}") ==
          "test.yaml: document 1: status.podIP: invalid value \"nope\": must be a valid IP address");
}

TEST_CASE("a file with one bad document is an error as a whole") {
    auto r = parse_manifest(ns_yaml("a") + "---\n" + ns_yaml("B") + "---\n" + ns_yaml("c"), "f.yaml");
    REQUIRE_FALSE(r);
    CHECK(r.error().message.rfind("f.yaml: document 2: metadata.name", 0) == 0);
}

TEST_CASE("decoders are usable on their own (Kubernetes API objects)") {
    auto doc = json::parse(R"({"metadata": {"name": "n", "labels": {"kubernetes.io/metadata.name": "n"}}})");
    REQUIRE(doc);
    auto ns = source::decode_namespace(*doc);
    REQUIRE(ns);
    CHECK(ns->labels.size() == 1);
    auto bad = json::parse(R"({"metadata": {"name": "p"}, "spec": {"ingress": [{"from": [{}]}]}})");
    auto np = source::decode_network_policy(*bad);
    REQUIRE_FALSE(np);
    CHECK(np.error().message ==
          "spec.ingress[0].from[0]: must specify a peer (podSelector, namespaceSelector or ipBlock)");
    CHECK(np.error().code == EINVAL);
}

TEST_CASE("snapshot: put and equality") {
    Snapshot s;
    CHECK(s.empty());
    CHECK_FALSE(s.put(Namespace{"a", {}}));
    CHECK(s.put(Namespace{"a", {{"x", "y"}}}));
    Pod pod;
    pod.namespace_ = "a";
    pod.name = "p";
    NetworkPolicy np;
    np.namespace_ = "a";
    np.name = "p";
    CHECK_FALSE(s.put(pod));
    CHECK_FALSE(s.put(np));
    CHECK(s.size() == 3);
    CHECK(s.namespaces.at("a").labels.at("x") == "y");
    Snapshot t = s;
    CHECK(s == t);
    t.pods.begin()->second.labels["k"] = "v";
    CHECK_FALSE(s == t);
    CHECK(display_name(Object{pod}) == "a/p");
    CHECK(kind_of(Object{Namespace{}}) == "Namespace");
}

// ===========================================================================
// The manifest directory

TEST_CASE("dir: errors when the directory cannot be read") {
    source::ManifestDir missing("/nonexistent/signet-test");
    auto r = missing.rescan();
    REQUIRE_FALSE(r);
    CHECK(r.error().code == ENOENT);
    CHECK(missing.watch_fd() == -1);
    CHECK_FALSE(missing.start_watch());

    TempDir t;
    t.write("file.yaml", ns_yaml("a"));
    source::ManifestDir not_dir((t.path / "file.yaml").string());
    auto r2 = not_dir.rescan();
    REQUIRE_FALSE(r2);
    CHECK(r2.error().code == ENOTDIR);
}

TEST_CASE("dir: create, edit, break, fix, delete, rename") {
    TempDir t;
    source::ManifestDir dir(t.path.string());
    CHECK(dir.dir() == t.path.string());

    auto r = dir.rescan();
    REQUIRE(r);
    CHECK_FALSE(*r);  // empty directory, empty snapshot
    CHECK(dir.snapshot().empty());

    t.write("10-ns.yaml", ns_yaml("x") + "---\n" + ns_yaml("z"));
    t.write("20-pods.yml", pod_yaml("x", "a", "a"));
    t.write("30-pol.json", R"({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                               "metadata": {"name": "p", "namespace": "x"}})");
    // Not manifests: other extensions, hidden files, editor leftovers, directories.
    t.write("notes.txt", "hello");
    t.write(".hidden.yaml", ns_yaml("hidden"));
    t.write("10-ns.yaml~", ns_yaml("backup"));
    t.write("upper.YAML", ns_yaml("upper"));
    std::filesystem::create_directory(t.path / "sub.yaml");
    std::filesystem::create_directory(t.path / "sub");
    t.write("sub/nested.yaml", ns_yaml("nested"));

    r = dir.rescan();
    REQUIRE(r);
    CHECK(*r);
    CHECK(dir.snapshot().namespaces.size() == 2);
    CHECK(dir.snapshot().pods.size() == 1);
    CHECK(dir.snapshot().policies.size() == 1);
    CHECK(dir.errors().empty());

    // Nothing changed: nothing reparsed, no change.
    r = dir.rescan();
    REQUIRE(r);
    CHECK_FALSE(*r);

    // Touching a file reparses it but the objects are the same.
    std::filesystem::last_write_time(
        t.path / "20-pods.yml", std::filesystem::last_write_time(t.path / "20-pods.yml") + std::chrono::seconds(5));
    r = dir.rescan();
    REQUIRE(r);
    CHECK_FALSE(*r);

    // The first reads reported every object; taking the delta forgets it.
    {
        cache::Delta d = dir.take_delta();
        CHECK(d.namespaces == std::set<std::string>{"x", "z"});
        CHECK(d.pods == std::set<cache::ObjectKey>{{"x", "a"}});
        CHECK(d.policies == std::set<cache::ObjectKey>{{"x", "p"}});
        CHECK(dir.take_delta().empty());
    }

    // Edit: a label changes. Only that pod's key is reported.
    t.write("20-pods.yml", pod_yaml("x", "a", "b"));
    r = dir.rescan();
    REQUIRE(r);
    CHECK(*r);
    CHECK(dir.snapshot().pods.at({"x", "a"}).labels.at("app") == "b");
    {
        cache::Delta d = dir.take_delta();
        CHECK_FALSE(d.all);
        CHECK(d.namespaces.empty());
        CHECK(d.policies.empty());
        CHECK(d.pods == std::set<cache::ObjectKey>{{"x", "a"}});
    }

    // Break the file: the last good objects stay, an error is recorded.
    t.write("20-pods.yml", pod_yaml("x", "a", "c") + "---\napiVersion: v1\nkind: Pod\nmetadata: {name: BAD}\n");
    r = dir.rescan();
    REQUIRE(r);
    CHECK_FALSE(*r);
    CHECK(dir.snapshot().pods.at({"x", "a"}).labels.at("app") == "b");
    REQUIRE(dir.errors().size() == 1);
    CHECK(dir.errors()[0].file == "20-pods.yml");
    CHECK(dir.errors()[0].message.rfind("document 2: metadata.name: invalid value \"BAD\"", 0) == 0);
    // Still broken, unchanged: the error stays.
    r = dir.rescan();
    REQUIRE(r);
    CHECK(dir.errors().size() == 1);

    // Fix it.
    t.write("20-pods.yml", pod_yaml("x", "a", "d"));
    r = dir.rescan();
    REQUIRE(r);
    CHECK(*r);
    CHECK(dir.errors().empty());
    CHECK(dir.snapshot().pods.at({"x", "a"}).labels.at("app") == "d");

    // Rename to another manifest name: same objects, no change.
    std::filesystem::rename(t.path / "20-pods.yml", t.path / "21-pods.yaml");
    r = dir.rescan();
    REQUIRE(r);
    CHECK_FALSE(*r);
    CHECK(dir.snapshot().pods.size() == 1);

    // Rename away (to a name that is not a manifest): objects dropped.
    std::filesystem::rename(t.path / "21-pods.yaml", t.path / "21-pods.yaml.bak");
    r = dir.rescan();
    REQUIRE(r);
    CHECK(*r);
    CHECK(dir.snapshot().pods.empty());

    // Delete.
    std::filesystem::remove(t.path / "30-pol.json");
    r = dir.rescan();
    REQUIRE(r);
    CHECK(*r);
    CHECK(dir.snapshot().policies.empty());
    CHECK(dir.snapshot().namespaces.size() == 2);

    // A new file that is broken from the start contributes nothing.
    t.write("40-bad.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: [}\n");
    r = dir.rescan();
    REQUIRE(r);
    CHECK_FALSE(*r);
    REQUIRE(dir.errors().size() == 1);
    CHECK(dir.errors()[0].message.rfind("invalid YAML at line 3", 0) == 0);
    // Deleting the broken file clears its error.
    std::filesystem::remove(t.path / "40-bad.yaml");
    r = dir.rescan();
    REQUIRE(r);
    CHECK(dir.errors().empty());

    // The directory disappears: an error, the last snapshot is kept.
    TempDir other;
    std::filesystem::rename(t.path, other.path / "moved");
    r = dir.rescan();
    REQUIRE_FALSE(r);
    CHECK(dir.snapshot().namespaces.size() == 2);
    std::filesystem::rename(other.path / "moved", t.path);
}

// File times are coarse (one kernel tick): a same-size rewrite in the same tick
// keeps (inode, size, mtime, ctime); recently modified files are re-read.
TEST_CASE("dir: a same-size rewrite within one clock tick is seen") {
    TempDir t;
    source::ManifestDir dir(t.path.string());
    for (int i = 0; i < 50; ++i) {
        std::string app = "v" + std::to_string(i % 10);  // same length every time
        t.write("a.yaml", pod_yaml("x", "p", app));
        auto r = dir.rescan();
        REQUIRE(r);
        REQUIRE(dir.snapshot().pods.at({"x", "p"}).labels.at("app") == app);
    }
}

TEST_CASE("dir: duplicates and ignored kinds are warned once") {
    TempDir t;
    source::ManifestDir dir(t.path.string());
    t.write("a.yaml", pod_yaml("x", "p", "from-a") + "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: s}\n");
    t.write("b.yaml", pod_yaml("x", "p", "from-b"));
    auto r = dir.rescan();
    REQUIRE(r);
    CHECK(*r);
    CHECK(dir.snapshot().pods.at({"x", "p"}).labels.at("app") == "from-b");  // later file wins
    auto w = dir.take_warnings();
    CHECK(w == std::vector<std::string>{"Pod x/p is defined in both a.yaml and b.yaml; using b.yaml",
                                        "a.yaml: document 2: v1 ConfigMap s: kind not used by signet, ignored"});
    CHECK(dir.take_warnings().empty());

    // An unrelated change: the same warnings are not repeated.
    t.write("c.yaml", ns_yaml("c"));
    r = dir.rescan();
    REQUIRE(r);
    CHECK(*r);
    CHECK(dir.take_warnings().empty());

    // Removing the later definition makes the earlier one visible.
    std::filesystem::remove(t.path / "b.yaml");
    r = dir.rescan();
    REQUIRE(r);
    CHECK(*r);
    CHECK(dir.snapshot().pods.at({"x", "p"}).labels.at("app") == "from-a");

    // Twice in one file: the last definition wins.
    t.write("d.yaml", ns_yaml("dup", "v: \"1\"") + "---\n" + ns_yaml("dup", "v: \"2\""));
    r = dir.rescan();
    REQUIRE(r);
    CHECK(dir.snapshot().namespaces.at("dup").labels.at("v") == "2");
    CHECK(dir.take_warnings() ==
          std::vector<std::string>{"Namespace dup is defined more than once in d.yaml; using the last definition"});
}

TEST_CASE("dir: symlinked files are followed (ConfigMap volumes)") {
    TempDir t;
    std::filesystem::create_directory(t.path / "..2024_01");
    std::filesystem::create_directory_symlink("..2024_01", t.path / "..data");
    t.write("..2024_01/ns.yaml", ns_yaml("v1"));
    std::filesystem::create_symlink("..data/ns.yaml", t.path / "ns.yaml");
    std::filesystem::create_symlink("..data/missing.yaml", t.path / "dangling.yaml");
    source::ManifestDir dir(t.path.string());
    auto r = dir.rescan();
    REQUIRE(r);
    CHECK(dir.snapshot().namespaces.contains("v1"));
    CHECK(dir.errors().empty());

    // Atomic update as kubelet does it: a new data dir, then swap the ..data link.
    std::filesystem::create_directory(t.path / "..2024_02");
    t.write("..2024_02/ns.yaml", ns_yaml("v2"));
    std::filesystem::create_directory_symlink("..2024_02", t.path / "..data_tmp");
    std::filesystem::rename(t.path / "..data_tmp", t.path / "..data");
    r = dir.rescan();
    REQUIRE(r);
    CHECK(*r);
    CHECK(dir.snapshot().namespaces.contains("v2"));
    CHECK_FALSE(dir.snapshot().namespaces.contains("v1"));
}

TEST_CASE("dir: unreadable and oversized files keep their last objects") {
    TempDir t;
    source::ManifestDir dir(t.path.string());
    t.write("a.yaml", ns_yaml("a"));
    REQUIRE(dir.rescan());
    t.write("a.yaml", std::string(source::kMaxManifestBytes + 10, '#'));
    auto r = dir.rescan();
    REQUIRE(r);
    CHECK_FALSE(*r);
    CHECK(dir.snapshot().namespaces.contains("a"));
    REQUIRE(dir.errors().size() == 1);
    CHECK(dir.errors()[0].message.rfind("file too large", 0) == 0);

    if (::geteuid() != 0) {  // root reads files whatever their mode
        t.write("a.yaml", ns_yaml("b"));
        ::chmod((t.path / "a.yaml").c_str(), 0);
        r = dir.rescan();
        REQUIRE(r);
        CHECK(dir.snapshot().namespaces.contains("a"));
        REQUIRE(dir.errors().size() == 1);
        CHECK(dir.errors()[0].message.find("cannot open") != std::string::npos);
    }
}

TEST_CASE("dir: inotify reports changes") {
    TempDir t;
    source::ManifestDir dir(t.path.string());
    REQUIRE(dir.start_watch());
    int fd = dir.watch_fd();
    REQUIRE(fd >= 0);
    CHECK((::fcntl(fd, F_GETFL) & O_NONBLOCK) != 0);
    CHECK((::fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0);
    dir.drain_events();  // nothing pending: returns at once

    auto readable = [fd] {
        pollfd p{fd, POLLIN, 0};
        return ::poll(&p, 1, 1000) == 1;
    };
    t.write("a.yaml", ns_yaml("a"));
    CHECK(readable());
    dir.drain_events();
    pollfd p{fd, POLLIN, 0};
    CHECK(::poll(&p, 1, 0) == 0);  // drained
    auto r = dir.rescan();
    REQUIRE(r);
    CHECK(*r);

    std::filesystem::rename(t.path / "a.yaml", t.path / "b.yaml");
    CHECK(readable());
    dir.drain_events();
    std::filesystem::remove(t.path / "b.yaml");
    CHECK(readable());
    dir.drain_events();
    CHECK_FALSE(dir.watch_lost());

    // The directory goes away and comes back: rescan re-arms the same fd.
    std::filesystem::remove_all(t.path);
    CHECK(readable());
    dir.drain_events();
    CHECK(dir.watch_lost());
    CHECK_FALSE(dir.rescan());
    std::filesystem::create_directory(t.path);
    r = dir.rescan();
    REQUIRE(r);
    CHECK_FALSE(dir.watch_lost());
    CHECK(dir.watch_fd() == fd);
    t.write("c.yaml", ns_yaml("c"));
    CHECK(readable());
    dir.drain_events();
    r = dir.rescan();
    REQUIRE(r);
    CHECK(dir.snapshot().namespaces.contains("c"));
}

// ===========================================================================
// Services (v1)

namespace {

Service service_ok(std::string_view text) {
    auto objs = parse_ok(text);
    REQUIRE(objs.size() == 1);
    REQUIRE(std::holds_alternative<Service>(objs[0]));
    return std::get<Service>(objs[0]);
}

// A Service "s" in namespace x with the given spec (YAML, indented by two).
std::string service_yaml(std::string_view spec) {
    return "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: x}\nspec:\n" + std::string(spec);
}

std::string service_error(std::string_view spec) { return parse_error(service_yaml(spec)); }

}  // namespace

TEST_CASE("service: ClusterIP with a selector, defaults") {
    Service s = service_ok(R"(
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports:
  - port: 80
)");
    CHECK(s.namespace_ == "default");
    CHECK(s.name == "web");
    CHECK(s.type == "ClusterIP");
    CHECK(s.cluster_ips.empty());  // not allocated yet (a manifest before the API server saw it)
    REQUIRE(s.ports.size() == 1);
    CHECK(s.ports[0] == ServicePort{"", Protocol::TCP, 80, "", 0});
    REQUIRE(s.selector);
    CHECK(*s.selector == Labels{{"app", "web"}});
    CHECK_FALSE(s.internal_traffic_local);
    CHECK(s.external_ips.empty());
    CHECK(s.load_balancer_ips.empty());
}

TEST_CASE("service: every field, as the API server returns a LoadBalancer (JSON)") {
    auto objs = parse_ok(R"({
  "apiVersion": "v1", "kind": "Service",
  "metadata": {"name": "shop", "namespace": "web", "uid": "u-1", "resourceVersion": "12"},
  "spec": {
    "type": "LoadBalancer",
    "clusterIP": "10.96.12.7", "clusterIPs": ["10.96.12.7", "fd00:10:96::c"],
    "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "PreferDualStack",
    "externalIPs": ["192.0.2.10"],
    "selector": {"app": "shop", "tier": "front"},
    "ports": [
      {"name": "http", "protocol": "TCP", "port": 80, "targetPort": "http", "nodePort": 31080},
      {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 5353, "nodePort": 31053},
      {"name": "sctp", "protocol": "SCTP", "port": 9000, "targetPort": 0}
    ],
    "sessionAffinity": "None", "externalTrafficPolicy": "Cluster", "internalTrafficPolicy": "Local",
    "allocateLoadBalancerNodePorts": true
  },
  "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.5", "ipMode": "VIP"}, {"hostname": "lb.example"},
                                          {"ip": "2001:db8::5"}]}}
})");
    REQUIRE(objs.size() == 1);
    const Service& s = std::get<Service>(objs[0]);
    CHECK(s.namespace_ == "web");
    CHECK(s.type == "LoadBalancer");
    CHECK(s.cluster_ips == std::vector<std::string>{"10.96.12.7", "fd00:10:96::c"});
    CHECK(s.external_ips == std::vector<std::string>{"192.0.2.10"});
    CHECK(s.load_balancer_ips == std::vector<std::string>{"203.0.113.5", "2001:db8::5"});
    REQUIRE(s.ports.size() == 3);
    CHECK(s.ports[0] == ServicePort{"http", Protocol::TCP, 80, "http", 31080});
    CHECK(s.ports[1] == ServicePort{"dns", Protocol::UDP, 53, "5353", 31053});
    CHECK(s.ports[2] == ServicePort{"sctp", Protocol::SCTP, 9000, "", 0});
    CHECK(*s.selector == Labels{{"app", "shop"}, {"tier", "front"}});
    CHECK(s.internal_traffic_local);
    CHECK(kind_of(objs[0]) == "Service");
    CHECK(display_name(objs[0]) == "web/shop");
    CHECK(validate(objs[0]));
}

TEST_CASE("service: headless, no selector, ExternalName, NodePort; in lists") {
    auto objs = parse_ok(R"(
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: db, namespace: x}
  spec: {clusterIP: None, selector: {app: db}}
- apiVersion: v1
  kind: Service
  metadata: {name: manual, namespace: x}
  spec:
    clusterIP: 10.96.0.20
    selector: {}
    ports: [{port: 5432}]
---
apiVersion: v1
kind: ServiceList
items:
- metadata: {name: ext, namespace: x}
  spec: {type: ExternalName, externalName: db.example.com}
- metadata: {name: np, namespace: x}
  spec:
    type: NodePort
    clusterIPs: [10.96.0.21]
    ports: [{port: 8080, nodePort: 30080, targetPort: 80}]
)");
    REQUIRE(objs.size() == 4);
    const auto& headless = std::get<Service>(objs[0]);
    CHECK(headless.cluster_ips.empty());
    CHECK(headless.ports.empty());  // allowed when headless
    CHECK(*headless.selector == Labels{{"app", "db"}});
    const auto& manual = std::get<Service>(objs[1]);
    CHECK_FALSE(manual.selector);  // an empty selector is no selector, as the API server stores it
    CHECK(manual.cluster_ips == std::vector<std::string>{"10.96.0.20"});
    const auto& ext = std::get<Service>(objs[2]);
    CHECK(ext.type == "ExternalName");
    CHECK(ext.ports.empty());
    CHECK_FALSE(ext.selector);
    const auto& np = std::get<Service>(objs[3]);
    CHECK(np.type == "NodePort");
    CHECK(np.ports[0] == ServicePort{"", Protocol::TCP, 8080, "80", 30080});

    Snapshot snap;
    for (const auto& o : objs) CHECK_FALSE(snap.put(o));
    CHECK(snap.services.size() == 4);
    CHECK(snap.size() == 4);
    CHECK(snap.services.count({"x", "np"}) == 1);
    CHECK(snap.put(objs[3]));  // replaced
}

TEST_CASE("service: malformed Services are rejected with the field path") {
    auto err = [](std::string_view spec) {
        std::string e = service_error(spec);
        std::string prefix = "test.yaml: document 1: ";
        return e.rfind(prefix, 0) == 0 ? e.substr(prefix.size()) : e;
    };
    CHECK(err("  ports: [{port: 0}]\n") == "spec.ports[0].port: invalid value 0: must be between 1 and 65535, inclusive");
    CHECK(err("  ports: [{port: 70000}]\n") == "spec.ports[0].port: invalid value 70000: must be between 1 and 65535, inclusive");
    CHECK(err("  ports: [{port: -1}]\n") == "spec.ports[0].port: invalid value -1: must be between 1 and 65535, inclusive");
    CHECK(err("  ports: [{port: \"80\"}]\n") == "spec.ports[0].port: must be an integer, not a string");
    CHECK(err("  ports: [{port: 80.5}]\n") == "spec.ports[0].port: must be an integer, not a floating-point number");
    CHECK(err("  ports: [{}]\n") == "spec.ports[0].port: required value");
    CHECK(err("  ports: [{port: 80, protocol: ICMP}]\n") ==
          "spec.ports[0].protocol: unsupported value \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\"");
    CHECK(err("  ports: [{port: 80, protocol: tcp}]\n").rfind("spec.ports[0].protocol: unsupported value", 0) == 0);
    CHECK(err("  ports: [{port: 80, targetPort: 65536}]\n") ==
          "spec.ports[0].targetPort: invalid value 65536: must be between 1 and 65535, inclusive");
    CHECK(err("  ports: [{port: 80, targetPort: \"8080\"}]\n").rfind("spec.ports[0].targetPort: invalid value \"8080\"", 0) == 0);
    CHECK(err("  ports: [{port: 80, targetPort: Web_Port}]\n").rfind("spec.ports[0].targetPort: invalid value", 0) == 0);
    CHECK(err("  ports: [{port: 80, targetPort: [1]}]\n") == "spec.ports[0].targetPort: must be an integer or a string");
    CHECK(err("  type: NodePort\n  ports: [{port: 80, nodePort: 70000}]\n") ==
          "spec.ports[0].nodePort: invalid value 70000: must be between 1 and 65535, inclusive");
    CHECK(err("  type: NodePort\n  ports: [{port: 80, nodePort: -5}]\n") ==
          "spec.ports[0].nodePort: invalid value -5: must be between 1 and 65535, inclusive");
    CHECK(err("  ports: [{port: 80, nodePort: 30000}]\n") ==
          "spec.ports[0].nodePort: may not be used when `type` is \"ClusterIP\"");
    CHECK(err("  ports: [{port: 80}, {port: 81}]\n") == "spec.ports[0].name: required value (more than one port)");
    CHECK(err("  ports: [{name: a, port: 80}, {name: a, port: 81}]\n") == "spec.ports[1].name: duplicate value \"a\"");
    CHECK(err("  ports: [{name: A, port: 80}]\n").rfind("spec.ports[0].name: invalid value \"A\"", 0) == 0);
    CHECK(err("  ports: {port: 80}\n") == "spec.ports: must be a list, not an object");
    CHECK(err("  ports: [80]\n") == "spec.ports[0]: must be an object, not a number");
    CHECK(err("  selector: {app: web}\n") == "spec.ports: required value");
    CHECK(err("  type: Router\n  ports: [{port: 80}]\n") ==
          "spec.type: unsupported value \"Router\": supported values: \"ClusterIP\", \"ExternalName\", "
          "\"LoadBalancer\", \"NodePort\"");
    CHECK(err("  clusterIP: 10.96.0.300\n  ports: [{port: 80}]\n") ==
          "spec.clusterIP: invalid value \"10.96.0.300\": must be a valid IP address or \"None\"");
    CHECK(err("  clusterIPs: [10.96.0.1, banana]\n  ports: [{port: 80}]\n") ==
          "spec.clusterIPs[1]: invalid value \"banana\": must be a valid IP address or \"None\"");
    CHECK(err("  clusterIP: 10.96.0.1\n  clusterIPs: [10.96.0.2]\n  ports: [{port: 80}]\n") ==
          "spec.clusterIPs[0]: invalid value \"10.96.0.2\": must match spec.clusterIP \"10.96.0.1\"");
    CHECK(err("  clusterIPs: [None, 10.96.0.1]\n  ports: [{port: 80}]\n") ==
          "spec.clusterIPs: must have one entry when the first is \"None\" (headless)");
    CHECK(err("  clusterIPs: [10.96.0.1, 10.96.0.2]\n  ports: [{port: 80}]\n") ==
          "spec.clusterIPs[1]: must be of a different IP family than spec.clusterIPs[0]");
    CHECK(err("  clusterIPs: [10.96.0.1, 'fd00::1', 10.96.0.2]\n  ports: [{port: 80}]\n") ==
          "spec.clusterIPs: may have at most 2 entries (one per family)");
    CHECK(err("  clusterIP: 10.96.0.1/32\n  ports: [{port: 80}]\n").rfind("spec.clusterIP: invalid value", 0) == 0);
    CHECK(err("  type: ExternalName\n  clusterIP: 10.96.0.1\n") == "spec.clusterIP: may not be set for type ExternalName");
    CHECK(err("  externalIPs: [192.0.2.1, example.com]\n  ports: [{port: 80}]\n") ==
          "spec.externalIPs[1]: invalid value \"example.com\": must be a valid IP address");
    CHECK(err("  externalIPs: 192.0.2.1\n  ports: [{port: 80}]\n") == "spec.externalIPs: must be a list, not a string");
    CHECK(err("  selector: {app: [a]}\n  ports: [{port: 80}]\n") == "spec.selector.app: must be a string, not a list");
    CHECK(err("  selector: {\"bad key!\": a}\n  ports: [{port: 80}]\n").rfind("spec.selector: invalid label key", 0) == 0);
    CHECK(err("  internalTrafficPolicy: local\n  ports: [{port: 80}]\n") ==
          "spec.internalTrafficPolicy: unsupported value \"local\": supported values: \"Cluster\", \"Local\"");
    CHECK(err("  ports: [{port: 80}]\nstatus: {loadBalancer: {ingress: [{ip: lb.example}]}}\n") ==
          "status.loadBalancer.ingress[0].ip: invalid value \"lb.example\": must be a valid IP address");
    CHECK(err("  ports: [{port: 80}]\nstatus: {loadBalancer: {ingress: {ip: 1.2.3.4}}}\n") ==
          "status.loadBalancer.ingress: must be a list, not an object");
    CHECK(parse_error("apiVersion: v1\nkind: Service\nmetadata: {name: 1web, namespace: x}\nspec: {ports: [{port: 80}]}\n")
              .find("metadata.name: invalid value \"1web\": a DNS-1035 label") != std::string::npos);
    CHECK(parse_error("apiVersion: v1\nkind: Service\nmetadata: {name: a.b, namespace: x}\nspec: {ports: [{port: 80}]}\n")
              .find("metadata.name: invalid value") != std::string::npos);
    CHECK(parse_error("apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: X}\nspec: {ports: [{port: 80}]}\n")
              .find("metadata.namespace: invalid value \"X\"") != std::string::npos);
    CHECK(parse_error("apiVersion: v1\nkind: Service\nmetadata: {namespace: x}\n") ==
          "test.yaml: document 1: metadata.name: required value");
    CHECK(parse_error("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: []\n") ==
          "test.yaml: document 1: spec: must be an object, not a list");
    CHECK(parse_error("apiVersion: apps/v1\nkind: Service\nmetadata: {name: s}\n") ==
          "test.yaml: document 1: apiVersion: kind Service is served as \"v1\", not \"apps/v1\"");
    CHECK(parse_error("apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Service, metadata: {name: s}, "
                      "spec: {ports: [{port: 99999}]}}\n") ==
          "test.yaml: document 1: items[0].spec.ports[0].port: invalid value 99999: must be between 1 and 65535, "
          "inclusive");
}

TEST_CASE("service: decode_service on API objects; validate() agrees with the decoder") {
    auto doc = json::parse(R"({"metadata": {"name": "kubernetes", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1"], "type": "ClusterIP",
                 "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]},
        "status": {"loadBalancer": {}}})");
    REQUIRE(doc);
    auto s = source::decode_service(*doc);
    REQUIRE(s);
    CHECK(s->cluster_ips == std::vector<std::string>{"10.96.0.1"});
    CHECK_FALSE(s->selector);
    CHECK(s->ports[0].target_port == "6443");
    auto not_object = json::parse(R"([1])");
    auto bad = source::decode_service(*not_object);
    REQUIRE_FALSE(bad);
    CHECK(bad.error().code == EINVAL);
    CHECK(bad.error().message == "must be an object, not a list");

    // Objects built in code go through the same rules.
    Service svc = *s;
    CHECK(validate(Object{svc}));
    svc.ports[0].target_port = "0";  // "" says "the same as port"
    CHECK_FALSE(validate(svc));
    svc.ports[0].target_port = "Http";
    CHECK_FALSE(validate(svc));
    svc.ports[0].target_port = "http";
    CHECK(validate(svc));
    svc.type = "NodePort";
    svc.ports[0].node_port = 30443;
    CHECK(validate(svc));
    svc.type = "ClusterIP";
    CHECK(validate(svc).error().message == "spec.ports[0].nodePort: may not be used when `type` is \"ClusterIP\"");
    svc.ports[0].node_port = 0;
    svc.ports[0].port = 0;
    CHECK(validate(svc).error().message ==
          "spec.ports[0].port: invalid value 0: must be between 1 and 65535, inclusive");
    svc.ports.clear();
    CHECK(validate(svc).error().message == "spec.ports: required value");
    svc.cluster_ips.clear();
    CHECK(validate(svc));  // headless
    svc.load_balancer_ips = {"x"};
    CHECK(validate(svc).error().message.rfind("status.loadBalancer.ingress[0].ip: invalid value \"x\"", 0) == 0);
}

TEST_CASE("service: snapshot and delta") {
    Service a;
    a.namespace_ = "x";
    a.name = "a";
    a.ports = {ServicePort{"", Protocol::TCP, 80, "", 0}};
    Snapshot s1;
    CHECK_FALSE(s1.put(a));
    CHECK_FALSE(s1.empty());
    CHECK(s1.size() == 1);
    Delta d;
    CHECK(d.empty());
    d.note(a);
    CHECK_FALSE(d.empty());
    CHECK(d.services == std::set<ObjectKey>{{"x", "a"}});
    CHECK(d.pods.empty());
    Snapshot s2 = s1;
    CHECK(d.same_in(s1, s2));
    s2.services.at({"x", "a"}).cluster_ips = {"10.96.0.5"};
    CHECK_FALSE(d.same_in(s1, s2));
    CHECK(Delta{}.same_in(s1, s2));  // no key noted: nothing compared
    Delta other;
    other.services.insert({"y", "b"});
    d.merge(other);
    CHECK(d.services.size() == 2);
    s2.services.erase({"x", "a"});
    CHECK_FALSE(d.same_in(s1, s2));
}

TEST_CASE("dir: Services are read from the folder like the other kinds") {
    TempDir t;
    source::ManifestDir dir(t.path.string());
    t.write("svc.yaml", service_yaml("  selector: {app: web}\n  ports: [{port: 80, targetPort: http}]\n"));
    auto r = dir.rescan();
    REQUIRE(r);
    CHECK(*r);
    CHECK(dir.take_warnings().empty());
    REQUIRE(dir.snapshot().services.count({"x", "s"}) == 1);
    CHECK(dir.snapshot().services.at({"x", "s"}).ports[0].target_port == "http");
    auto d = dir.take_delta();
    CHECK(d.services == std::set<ObjectKey>{{"x", "s"}});
    t.write("svc.yaml", service_yaml("  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n"));
    r = dir.rescan();
    REQUIRE(r);
    CHECK(*r);
    CHECK(dir.snapshot().services.at({"x", "s"}).ports[0].target_port == "8080");
    CHECK(dir.take_delta().services == std::set<ObjectKey>{{"x", "s"}});
    t.write("svc.yaml", service_yaml("  ports: [{}]\n"));  // broken: the last good objects stay
    r = dir.rescan();
    REQUIRE(r);
    REQUIRE(dir.errors().size() == 1);
    CHECK(dir.errors()[0].message.find("spec.ports[0].port: required value") != std::string::npos);
    CHECK(dir.snapshot().services.count({"x", "s"}) == 1);
    std::filesystem::remove(t.path / "svc.yaml");
    r = dir.rescan();
    REQUIRE(r);
    CHECK(*r);
    CHECK(dir.snapshot().services.empty());
    CHECK(dir.take_delta().services == std::set<ObjectKey>{{"x", "s"}});
}
