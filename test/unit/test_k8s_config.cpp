// Unit tests: kubeconfig / in-cluster configuration, exec credentials,
// credential refresh (controller/kube/config.h).
#include <doctest/doctest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "../../controller/kube/config.h"

using namespace signet::kube;

namespace {

std::filesystem::path temp_dir() {
    char tmpl[] = "/tmp/signet-k8s-unit-XXXXXX";
    const char* d = ::mkdtemp(tmpl);
    REQUIRE(d != nullptr);
    return d;
}

void write(const std::filesystem::path& p, const std::string& text, mode_t mode = 0644) {
    std::ofstream(p) << text;
    ::chmod(p.c_str(), mode);
}

const char* kKubeconfig = R"(apiVersion: v1
kind: Config
current-context: kind-kind
clusters:
- name: kind-kind
  cluster:
    server: https://127.0.0.1:6443/
    certificate-authority-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==
- name: other
  cluster:
    server: http://10.0.0.1:8080
    insecure-skip-tls-verify: true
contexts:
- name: kind-kind
  context:
    cluster: kind-kind
    user: kind-kind
- name: other
  context:
    cluster: other
    user: tok
users:
- name: kind-kind
  user:
    client-certificate: certs/client.crt
    client-key: /abs/client.key
- name: tok
  user:
    tokenFile: token
)";

}  // namespace

TEST_CASE("kubeconfig: current-context, cluster and client certificate files") {
    auto c = parse_kubeconfig(kKubeconfig, "/etc/kube");
    REQUIRE_MESSAGE(c.ok(), (c ? "" : c.error().message));
    CHECK(c->server == "https://127.0.0.1:6443");  // trailing '/' dropped
    CHECK(c->ca_pem == "-----BEGIN CERTIFICATE-----\n");
    CHECK_FALSE(c->insecure_skip_tls_verify);
    CHECK(c->client_cert_file == "/etc/kube/certs/client.crt");  // relative to the kubeconfig
    CHECK(c->client_key_file == "/abs/client.key");
    CHECK(c->context == "kind-kind");
    CHECK(c->token.empty());
}

TEST_CASE("kubeconfig: context override, insecure, token file") {
    auto c = parse_kubeconfig(kKubeconfig, "/etc/kube", "other");
    REQUIRE(c.ok());
    CHECK(c->server == "http://10.0.0.1:8080");
    CHECK(c->insecure_skip_tls_verify);
    CHECK(c->token_file == "/etc/kube/token");
}

TEST_CASE("kubeconfig: errors name the problem") {
    auto err = [](const std::string& text) {
        auto c = parse_kubeconfig(text, "/x");
        REQUIRE_FALSE(c.ok());
        return c.error().message;
    };
    CHECK(err("a: [").find("kubeconfig") != std::string::npos);
    CHECK(err("apiVersion: v1\nkind: Config\n").find("current-context") != std::string::npos);
    CHECK(err("current-context: x\ncontexts: []\n").find("no entry named 'x'") != std::string::npos);
    CHECK(err(R"(current-context: c
contexts: [{name: c, context: {cluster: k}}]
clusters: [{name: k, cluster: {server: "ftp://x"}}]
)").find("http:// or https://") != std::string::npos);
    CHECK(err(R"(current-context: c
contexts: [{name: c, context: {cluster: k}}]
clusters: [{name: k, cluster: {server: "https://x", insecure-skip-tls-verify: true, certificate-authority: ca.crt}}]
)").find("insecure flag is not allowed") != std::string::npos);
    CHECK(err(R"(current-context: c
contexts: [{name: c, context: {cluster: k, user: u}}]
clusters: [{name: k, cluster: {server: "https://x"}}]
users: [{name: u, user: {exec: {apiVersion: client.authentication.k8s.io/v1, command: x}}}]
)").find("must be specified for client.authentication.k8s.io/v1") != std::string::npos);
    CHECK(err(R"(current-context: c
contexts: [{name: c, context: {cluster: k, user: u}}]
clusters: [{name: k, cluster: {server: "https://x"}}]
users: [{name: u, user: {client-certificate-data: "!!"}}]
)").find("base64") != std::string::npos);
    CHECK(err(R"(current-context: c
contexts: [{name: c, context: {cluster: k, user: u}}]
clusters: [{name: k, cluster: {server: "https://x"}}]
users: [{name: u, user: {auth-provider: {name: gcp}}}]
)").find("auth-provider") != std::string::npos);
}

TEST_CASE("kubeconfig: exec plugin settings") {
    auto c = parse_kubeconfig(R"(current-context: c
contexts: [{name: c, context: {cluster: k, user: u}}]
clusters: [{name: k, cluster: {server: "https://x:6443"}}]
users:
- name: u
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1beta1
      command: ./bin/get-token
      args: [--cluster, k]
      env: [{name: A, value: b}]
      provideClusterInfo: true
)",
                              "/home/me/.kube");
    REQUIRE_MESSAGE(c.ok(), (c ? "" : c.error().message));
    REQUIRE(c->exec.has_value());
    CHECK(c->exec->command == "/home/me/.kube/./bin/get-token");
    CHECK(c->exec->args == std::vector<std::string>{"--cluster", "k"});
    CHECK(c->exec->env.size() == 1);
    CHECK(c->exec->provide_cluster_info);
    // a bare command name is looked up in PATH, not resolved
    auto d = parse_kubeconfig(R"(current-context: c
contexts: [{name: c, context: {cluster: k, user: u}}]
clusters: [{name: k, cluster: {server: "https://x"}}]
users: [{name: u, user: {exec: {apiVersion: client.authentication.k8s.io/v1, command: aws, interactiveMode: Never}}}]
)",
                              "/home/me/.kube");
    REQUIRE(d.ok());
    CHECK(d->exec->command == "aws");
}

TEST_CASE("base64 and RFC 3339") {
    CHECK(*base64_decode("aGVsbG8=") == "hello");
    CHECK(*base64_decode("aGVsbG8") == "hello");
    CHECK(*base64_decode("aGVs\nbG8=") == "hello");
    CHECK_FALSE(base64_decode("a").ok());
    CHECK_FALSE(base64_decode("aGV=sbG8").ok());
    CHECK(parse_rfc3339("1970-01-01T00:00:00Z") == 0);
    CHECK(parse_rfc3339("2024-03-12T09:14:07Z") == 1710234847);
    CHECK(parse_rfc3339("2024-03-12T10:14:07.123+01:00") == 1710234847);
    CHECK_FALSE(parse_rfc3339("2024-03-12 09:14").has_value());
    CHECK_FALSE(parse_rfc3339("2024-13-12T09:14:07Z").has_value());
}

TEST_CASE("ExecCredential output") {
    auto c = parse_exec_credential(
        R"({"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential",
            "status":{"token":"t","expirationTimestamp":"2030-01-01T00:00:00Z"}})",
        "client.authentication.k8s.io/v1");
    REQUIRE(c.ok());
    CHECK(c->token == "t");
    CHECK(c->expiration == parse_rfc3339("2030-01-01T00:00:00Z"));
    CHECK_FALSE(parse_exec_credential(R"({"apiVersion":"client.authentication.k8s.io/v1beta1","kind":"ExecCredential","status":{"token":"t"}})",
                                      "client.authentication.k8s.io/v1")
                    .ok());
    CHECK_FALSE(parse_exec_credential(R"({"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{}})",
                                      "client.authentication.k8s.io/v1")
                    .ok());
    CHECK_FALSE(parse_exec_credential(R"({"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"clientCertificateData":"x"}})",
                                      "client.authentication.k8s.io/v1")
                    .ok());
    CHECK_FALSE(parse_exec_credential("not json", "client.authentication.k8s.io/v1").ok());
}

TEST_CASE("in-cluster configuration") {
    auto dir = temp_dir();
    InClusterPaths p;
    p.token_file = dir / "token";
    p.ca_file = dir / "ca.crt";
    p.host = "fd00::1";
    p.port = "443";
    CHECK_FALSE(in_cluster_config(p).ok());  // no token file
    write(dir / "token", "abc\n");
    auto c = in_cluster_config(p);
    REQUIRE(c.ok());
    CHECK(c->server == "https://[fd00::1]:443");
    CHECK(c->ca_file.empty());  // missing CA: system roots, as client-go
    write(dir / "ca.crt", "x");
    c = in_cluster_config(p);
    CHECK(c->ca_file == p.ca_file);
    InClusterPaths none;
    none.host = "";
    ::unsetenv("KUBERNETES_SERVICE_HOST");
    auto e = in_cluster_config(none);
    REQUIRE_FALSE(e.ok());
    CHECK(e.error().message.find("KUBERNETES_SERVICE_HOST") != std::string::npos);
    std::filesystem::remove_all(dir);
}

TEST_CASE("credentials: token file re-read on rotation") {
    auto dir = temp_dir();
    ClientConfig cfg;
    cfg.server = "https://x";
    cfg.token_file = dir / "token";
    write(cfg.token_file, "one\n");
    Credentials creds(cfg);
    CHECK(creds.get()->bearer == "one");
    write(dir / "token.new", "two-longer\n");
    std::filesystem::rename(dir / "token.new", cfg.token_file);
    CHECK(creds.get()->bearer == "two-longer");
    std::filesystem::remove(cfg.token_file);
    CHECK(creds.get()->bearer == "two-longer");  // a vanished file keeps the last token
    std::filesystem::remove_all(dir);
}

TEST_CASE("credentials: exec plugin run, cached, re-run after 401") {
    auto dir = temp_dir();
    auto counter = dir / "n";
    write(dir / "plugin.sh",
          "#!/bin/sh\nn=$(cat " + counter.string() + " 2>/dev/null || echo 0); n=$((n+1)); echo $n > " +
              counter.string() +
              "\nprintf '{\"apiVersion\":\"client.authentication.k8s.io/v1beta1\",\"kind\":\"ExecCredential\","
              "\"status\":{\"token\":\"tok-%s\"}}' $n\n",
          0755);
    ClientConfig cfg;
    cfg.server = "https://x";
    ExecConfig x;
    x.api_version = "client.authentication.k8s.io/v1beta1";
    x.command = (dir / "plugin.sh").string();
    cfg.exec = x;
    Credentials creds(cfg);
    auto a = creds.get();
    REQUIRE_MESSAGE(a.ok(), (a ? "" : a.error().message));
    CHECK(a->bearer == "tok-1");
    CHECK(creds.get()->bearer == "tok-1");  // cached
    CHECK(creds.exec_runs() == 1);
    creds.unauthorized(*a);
    CHECK(creds.get()->bearer == "tok-2");
    creds.unauthorized(*a);  // a stale 401 (token 1) does not throw token 2 away
    CHECK(creds.get()->bearer == "tok-2");
    CHECK(creds.exec_runs() == 2);

    ExecConfig bad = x;
    bad.command = (dir / "missing").string();
    bad.install_hint = "install it";
    auto r = run_exec_plugin(bad, cfg);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().message.find("install it") != std::string::npos);
    write(dir / "fail.sh", "#!/bin/sh\necho 'no credentials' >&2\nexit 2\n", 0755);
    bad.command = (dir / "fail.sh").string();
    r = run_exec_plugin(bad, cfg);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().message.find("exit status 2") != std::string::npos);
    CHECK(r.error().message.find("no credentials") != std::string::npos);
    std::filesystem::remove_all(dir);
}
