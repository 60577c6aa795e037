#include <doctest/doctest.h>

#include <map>
#include <memory>
#include <string>

#include "cni.h"
#include "signet/http_client.h"
#include "signet/json.h"

using namespace signet;

namespace {

cni::GetEnv env_of(std::map<std::string, std::string> m) {
    auto holder = std::make_shared<std::map<std::string, std::string>>(std::move(m));
    return [holder](const char* k) -> const char* {
        auto it = holder->find(k);
        return it == holder->end() ? nullptr : it->second.c_str();
    };
}

const char* kPrev040 = R"({"cniVersion":"0.4.0","name":"net","type":"signet","socket":"/tmp/s.sock",
 "prevResult":{"cniVersion":"0.4.0",
   "interfaces":[{"name":"cni0","mac":"aa:aa:aa:aa:aa:aa"},{"name":"veth1","mac":"bb:bb:bb:bb:bb:bb"},
                 {"name":"eth0","mac":"cc:cc:cc:cc:cc:cc","sandbox":"/var/run/netns/p1"}],
   "ips":[{"version":"4","interface":2,"address":"10.1.0.5/24","gateway":"10.1.0.1"},
          {"version":"6","interface":2,"address":"fd00::5/64"},
          {"version":"4","interface":0,"address":"10.1.0.1/24"}],
   "routes":[{"dst":"0.0.0.0/0"}],"dns":{"nameservers":["10.0.0.10"]}}})";

}  // namespace

TEST_CASE("CNI_ARGS parsing") {
    auto a = cni::parse_cni_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=web-0;K8S_POD_UID=u-1");
    REQUIRE(a.ok());
    CHECK(a->at("K8S_POD_NAMESPACE") == "ns1");
    CHECK(a->at("K8S_POD_NAME") == "web-0");
    CHECK(a->at("IgnoreUnknown") == "1");
    CHECK(cni::parse_cni_args("").ok());
    CHECK(cni::parse_cni_args("a=1;;b=").ok());
    auto bad = cni::parse_cni_args("K8S_POD_NAME");
    REQUIRE_FALSE(bad.ok());
    CHECK(bad.error().code == cni::kInvalidEnv);
    CHECK_FALSE(cni::parse_cni_args("=x").ok());
}

TEST_CASE("environment validation per command") {
    auto ok = cni::parse_env(env_of({{"CNI_COMMAND", "ADD"}, {"CNI_CONTAINERID", "abc123"}, {"CNI_NETNS", "/run/netns/x"},
                                     {"CNI_IFNAME", "eth0"}, {"CNI_PATH", "/opt/cni/bin"}}));
    REQUIRE(ok.ok());
    CHECK(ok->command == cni::Command::add);

    auto code = [](std::map<std::string, std::string> m) {
        auto r = cni::parse_env(env_of(std::move(m)));
        return r.ok() ? 0 : r.error().code;
    };
    CHECK(code({}) == cni::kInvalidEnv);
    CHECK(code({{"CNI_COMMAND", "FROB"}}) == cni::kInvalidEnv);
    CHECK(code({{"CNI_COMMAND", "ADD"}, {"CNI_NETNS", "/x"}, {"CNI_IFNAME", "eth0"}}) == cni::kInvalidEnv);
    CHECK(code({{"CNI_COMMAND", "ADD"}, {"CNI_CONTAINERID", "a b"}, {"CNI_NETNS", "/x"}, {"CNI_IFNAME", "eth0"}}) ==
          cni::kInvalidEnv);
    CHECK(code({{"CNI_COMMAND", "ADD"}, {"CNI_CONTAINERID", "abc"}, {"CNI_NETNS", "/x"}, {"CNI_IFNAME", "a/b"}}) ==
          cni::kInvalidEnv);
    CHECK(code({{"CNI_COMMAND", "ADD"}, {"CNI_CONTAINERID", "abc"}, {"CNI_NETNS", "/x"},
                {"CNI_IFNAME", "waytoolonginterfacename"}}) == cni::kInvalidEnv);
    CHECK(code({{"CNI_COMMAND", "ADD"}, {"CNI_CONTAINERID", "abc"}, {"CNI_IFNAME", "eth0"}}) == cni::kInvalidEnv);
    // DEL may come after the netns is gone.
    CHECK(code({{"CNI_COMMAND", "DEL"}, {"CNI_CONTAINERID", "abc"}, {"CNI_IFNAME", "eth0"}}) == 0);
    // VERSION, STATUS and GC are not per attachment.
    CHECK(code({{"CNI_COMMAND", "VERSION"}}) == 0);
    CHECK(code({{"CNI_COMMAND", "STATUS"}}) == 0);
    CHECK(code({{"CNI_COMMAND", "GC"}}) == 0);
    CHECK(code({{"CNI_COMMAND", "ADD"}, {"CNI_CONTAINERID", "abc"}, {"CNI_NETNS", "/x"}, {"CNI_IFNAME", "eth0"},
                {"CNI_ARGS", "broken"}}) == cni::kInvalidEnv);
}

TEST_CASE("config parsing: versions and errors") {
    auto code = [](const std::string& text) {
        auto r = cni::parse_config(text);
        return r.ok() ? 0 : r.error().code;
    };
    CHECK(code(kPrev040) == 0);
    CHECK(code("") == cni::kDecodeFailure);
    CHECK(code("{not json") == cni::kDecodeFailure);
    CHECK(code("[1,2]") == cni::kDecodeFailure);
    CHECK(code(R"({"cniVersion":"0.4.0"} trailing)") == cni::kDecodeFailure);
    CHECK(code(R"({"name":"n","type":"signet"})") == cni::kInvalidConfig);
    CHECK(code(R"({"cniVersion":"0.2.0","name":"n","type":"signet"})") == cni::kIncompatibleVersion);
    CHECK(code(R"({"cniVersion":"0.3.1","name":"n","type":"signet"})") == 0);
    CHECK(code(R"({"cniVersion":"2.0.0","name":"n","type":"signet"})") == cni::kIncompatibleVersion);
    CHECK(code(R"({"cniVersion":"1.0.0","name":"n","type":"signet","socket":5})") == cni::kInvalidConfig);
    CHECK(code(R"({"cniVersion":"1.0.0","name":"n","type":"signet","prevResult":[]})") == cni::kInvalidConfig);
    CHECK(code(R"({"cniVersion":"1.0.0","name":"n","type":"signet","timeoutSeconds":0})") == cni::kInvalidConfig);
    CHECK(code(R"({"cniVersion":"1.0.0","name":"n","type":"signet","timeoutSeconds":"5"})") == cni::kInvalidConfig);

    auto cfg = cni::parse_config(R"({"cniVersion":"1.1.0","name":"n","type":"signet"})");
    REQUIRE(cfg.ok());
    CHECK(cfg->socket == "/run/signet/signetd.sock");
    CHECK(cfg->prev_result == nullptr);
    CHECK(cfg->timeout_ms == 10000);

    auto gc = cni::parse_config(R"({"cniVersion":"1.1.0","name":"n","type":"signet",
        "cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"},{"containerID":"c2","ifname":"net1"}]})");
    REQUIRE(gc.ok());
    CHECK(gc->has_valid_attachments);
    REQUIRE(gc->valid_attachments.size() == 2);
    CHECK(gc->valid_attachments[1].ifname == "net1");
    CHECK(code(R"({"cniVersion":"1.1.0","name":"n","type":"signet","cni.dev/valid-attachments":[{"ifname":"x"}]})") ==
          cni::kInvalidConfig);
}

TEST_CASE("version negotiation and error JSON") {
    auto v = json::parse(cni::version_json("1.0.0"));
    REQUIRE(v.ok());
    CHECK(std::string((*v)["cniVersion"].GetString()) == "1.0.0");
    REQUIRE((*v)["supportedVersions"].Size() == 5);
    CHECK(std::string((*v)["supportedVersions"][0].GetString()) == "0.3.0");
    CHECK(std::string((*v)["supportedVersions"][2].GetString()) == "0.4.0");
    auto unknown = json::parse(cni::version_json("9.9.9"));
    CHECK(std::string((*unknown)["cniVersion"].GetString()) == "1.1.0");

    auto e = json::parse(cni::error_json("0.4.0", 11, "signetd is not reachable", "connect: refused"));
    REQUIRE(e.ok());
    CHECK(std::string((*e)["cniVersion"].GetString()) == "0.4.0");
    CHECK((*e)["code"].GetInt() == 11);
    CHECK(std::string((*e)["msg"].GetString()) == "signetd is not reachable");
    CHECK(std::string((*e)["details"].GetString()) == "connect: refused");
    auto nodetail = json::parse(cni::error_json("junk", 7, "m", ""));
    CHECK_FALSE(nodetail->HasMember("details"));
    CHECK(std::string((*nodetail)["cniVersion"].GetString()) == "1.1.0");
}

TEST_CASE("prevResult passes through unchanged for its own version") {
    auto cfg = cni::parse_config(kPrev040);
    REQUIRE(cfg.ok());
    auto out = cni::passthrough(*cfg);
    REQUIRE(out.ok());
    auto got = json::parse(*out);
    REQUIRE(got.ok());
    CHECK(*got == (*cfg->prev_result));  // RapidJSON deep equality
}

TEST_CASE("prevResult conversion where the spec demands it") {
    // 1.0.0 dropped ips[].version.
    std::string v1 = R"({"cniVersion":"1.0.0","name":"n","type":"signet","prevResult":{"cniVersion":"1.0.0",
        "interfaces":[{"name":"eth0","sandbox":"/x"}],
        "ips":[{"version":"4","interface":0,"address":"10.0.0.2/24"}],"custom":{"keep":true}}})";
    auto cfg = cni::parse_config(v1);
    REQUIRE(cfg.ok());
    auto out = json::parse(*cni::passthrough(*cfg));
    REQUIRE(out.ok());
    CHECK_FALSE((*out)["ips"][0].HasMember("version"));
    CHECK((*out)["custom"]["keep"].GetBool());
    CHECK(std::string((*out)["ips"][0]["address"].GetString()) == "10.0.0.2/24");

    // 0.4.0 needs it.
    std::string v04 = R"({"cniVersion":"0.4.0","name":"n","type":"signet","prevResult":{
        "ips":[{"address":"fd00::2/64"},{"address":"10.0.0.2/24"}]}})";
    auto cfg2 = cni::parse_config(v04);
    auto out2 = json::parse(*cni::passthrough(*cfg2));
    CHECK(std::string((*out2)["ips"][0]["version"].GetString()) == "6");
    CHECK(std::string((*out2)["ips"][1]["version"].GetString()) == "4");
    CHECK(std::string((*out2)["cniVersion"].GetString()) == "0.4.0");

    std::string bad = R"({"cniVersion":"0.4.0","name":"n","type":"signet","prevResult":{"ips":[{"address":"nope"}]}})";
    auto cfg3 = cni::parse_config(bad);
    REQUIRE(cfg3.ok());
    CHECK(cni::passthrough(*cfg3).error().code == cni::kInvalidConfig);
}

TEST_CASE("registration from environment and prevResult") {
    auto cfg = cni::parse_config(kPrev040);
    REQUIRE(cfg.ok());
    cni::Env env;
    env.command = cni::Command::add;
    env.container_id = "0123456789abcdef0123";
    env.netns = "/var/run/netns/p1";
    env.ifname = "eth0";
    env.args = {{"K8S_POD_NAMESPACE", "shop"}, {"K8S_POD_NAME", "cart-1"}, {"K8S_POD_UID", "u1"},
                {"K8S_POD_INFRA_CONTAINER_ID", "0123456789abcdef0123"}};
    auto r = cni::make_registration(env, *cfg);
    REQUIRE(r.ok());
    CHECK(r->namespace_ == "shop");
    CHECK(r->name == "cart-1");
    CHECK(r->uid == "u1");
    CHECK(r->network == "net");
    CHECK(r->mac == "cc:cc:cc:cc:cc:cc");
    // Only the sandbox interface's addresses, not the bridge's gateway address.
    CHECK(r->ips == std::vector<std::string>{"10.1.0.5/24", "fd00::5/64"});

    // Podman passes only the pod name; a plain runtime passes nothing.
    env.args = {{"K8S_POD_NAME", "web"}};
    CHECK(cni::make_registration(env, *cfg)->namespace_ == "default");
    env.args.clear();
    CHECK(cni::make_registration(env, *cfg)->name == "0123456789ab");
}

TEST_CASE("version comparison and URL segments") {
    CHECK(cni::compare_versions("0.4.0", "1.0.0") < 0);
    CHECK(cni::compare_versions("1.1.0", "1.0.0") > 0);
    CHECK(cni::compare_versions("1.0.0", "1.0.0") == 0);
    CHECK(http::percent_encode("eth0") == "eth0");
    CHECK(http::percent_encode("a/b c%") == "a%2Fb%20c%25");
}

TEST_CASE("a network configuration nested without bound is a decode error, not a crash") {
    auto r = cni::parse_config(std::string(100000, '[') + std::string(100000, ']'));
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == cni::kDecodeFailure);
}

TEST_CASE("Kubernetes names: namespaces are DNS-1123 labels, pod names DNS-1123 subdomains") {
    for (const char* ok : {"a", "default", "kube-system", "a1", "1a", "x-y-z", "0"})
        CHECK_MESSAGE(api::valid_dns1123_label(ok), ok);
    for (const char* bad : {"", "A", "Shop", "-a", "a-", "a_b", "a.b", "a b", "a/b", "ä", "a\nb"})
        CHECK_FALSE_MESSAGE(api::valid_dns1123_label(bad), bad);
    CHECK(api::valid_dns1123_label(std::string(63, 'a')));
    CHECK_FALSE(api::valid_dns1123_label(std::string(64, 'a')));

    for (const char* ok : {"web", "web-1", "a.b", "web.v1.example", "0.0", "x"})
        CHECK_MESSAGE(api::valid_dns1123_subdomain(ok), ok);
    for (const char* bad : {"", "Web", "web_1", ".a", "a.", "a..b", "-a.b", "a-.b", "a/b", "a b", "web\n"})
        CHECK_FALSE_MESSAGE(api::valid_dns1123_subdomain(bad), bad);
    std::string l63(63, 'a');
    std::string s253 = l63 + "." + l63 + "." + l63 + "." + std::string(61, 'a');
    REQUIRE(s253.size() == 253);
    CHECK(api::valid_dns1123_subdomain(s253));
    CHECK_FALSE(api::valid_dns1123_subdomain(s253 + "a"));
    CHECK_FALSE(api::valid_dns1123_subdomain(std::string(64, 'a')));  // each part is a label

    CHECK(api::namespace_problem("shop").empty());
    CHECK(api::namespace_problem("Shop").find("DNS-1123 label") != std::string::npos);
    CHECK(api::namespace_problem(std::string(64, 'a')).find("longer than 63") != std::string::npos);
    CHECK(api::pod_name_problem(std::string(254, 'a')).find("longer than 253") != std::string::npos);
    // Control bytes are shown escaped, never raw (they end up in logs).
    CHECK(api::pod_name_problem("a\nb").find("\\x0a") != std::string::npos);

    api::PodRegistration r;
    r.namespace_ = "shop";
    r.name = "cart-1";
    r.uid = "0f6e5a24-5b1d-4a52-9d1f-6c2f2f0c9b7e";
    CHECK(api::validate_pod_identity(r).ok());
    r.uid = "u\x01";
    CHECK(api::validate_pod_identity(r).error().message.rfind("uid:", 0) == 0);
    r.uid.clear();
    r.infra_container_id = "-bad";
    CHECK(api::validate_pod_identity(r).error().message.rfind("infraContainerID:", 0) == 0);
    r.infra_container_id.clear();
    r.name = "Cart_1";
    CHECK(api::validate_pod_identity(r).error().message.rfind("name:", 0) == 0);
    r.namespace_ = "Shop";
    CHECK(api::validate_pod_identity(r).error().message.rfind("namespace:", 0) == 0);

    // Container IDs: the CNI charset, at most 256 bytes.
    CHECK(api::valid_container_id(std::string(256, 'a')));
    CHECK_FALSE(api::valid_container_id(std::string(257, 'a')));
}

TEST_CASE("registration: invalid Kubernetes names are an invalid environment (code 4); a plain runtime's name is made valid") {
    auto cfg = cni::parse_config(kPrev040);
    REQUIRE(cfg.ok());
    cni::Env env;
    env.command = cni::Command::add;
    env.container_id = "0123456789abcdef0123";
    env.netns = "/var/run/netns/p1";
    env.ifname = "eth0";
    auto with = [&](std::map<std::string, std::string> args) {
        env.args = std::move(args);
        return cni::make_registration(env, *cfg);
    };
    auto bad_ns = with({{"K8S_POD_NAMESPACE", "Shop"}, {"K8S_POD_NAME", "cart-1"}});
    REQUIRE_FALSE(bad_ns.ok());
    CHECK(bad_ns.error().code == cni::kInvalidEnv);
    CHECK(bad_ns.error().message.find("K8S_POD_NAMESPACE") != std::string::npos);
    CHECK(bad_ns.error().details.find("DNS-1123 label") != std::string::npos);
    auto bad_name = with({{"K8S_POD_NAMESPACE", "shop"}, {"K8S_POD_NAME", "cart_1"}});
    REQUIRE_FALSE(bad_name.ok());
    CHECK(bad_name.error().code == cni::kInvalidEnv);
    CHECK(bad_name.error().message.find("K8S_POD_NAME") != std::string::npos);
    auto long_ns = with({{"K8S_POD_NAMESPACE", std::string(64, 'a')}, {"K8S_POD_NAME", "cart-1"}});
    CHECK_FALSE(long_ns.ok());
    auto long_name = with({{"K8S_POD_NAMESPACE", "shop"}, {"K8S_POD_NAME", std::string(254, 'a')}});
    CHECK_FALSE(long_name.ok());
    CHECK(with({{"K8S_POD_NAMESPACE", "shop"}, {"K8S_POD_NAME", "cart-1.v2"}}).ok());

    // podman (K8S_POD_NAME only: the container name, which podman allows to be "My_App").
    CHECK(with({{"K8S_POD_NAME", "My_App"}})->name == "my-app");
    CHECK(with({{"K8S_POD_NAME", "web-1"}})->name == "web-1");
    CHECK(with({{"K8S_POD_NAME", "a_"}})->name == "0123456789ab");  // "a-" is no name either
    CHECK(cni::pod_name_from_runtime("", "ABCDEF_12345678") == "abcdef-12345");
    CHECK(cni::pod_name_from_runtime("", "abc_________xyz") == "abc");
    CHECK(cni::pod_name_from_runtime("x_", "a..b") == "a--b");
}
