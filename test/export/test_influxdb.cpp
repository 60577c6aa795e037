// The exporter against the real InfluxDB 1.6 (Debian's influxdb package,
// /usr/bin/influxd; SIGNET_INFLUXD overrides): its own influxd on free
// loopback ports with data in a temp dir; writes through InfluxExporter (gzip
// on) read back over /query (every tag and field of every point, and the
// example queries of docs/influxdb.md); influxd stopped (SIGTERM) and
// restarted mid-run without losing what the buffer holds; the drop count with
// a small buffer; a bad batch (400) dropped, a missing database (404) kept.
#include <doctest/doctest.h>
#include <dirent.h>

#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>

#include "export/influx.h"
#include "signet/json.h"
#include "testutil.h"

using namespace signet::exporter;
using namespace signet::testutil;
using namespace std::chrono_literals;

namespace {

using Cell = std::variant<std::monostate, int64_t, double, bool, std::string>;

struct Series {
    std::string name;
    std::map<std::string, std::string> tags;
    std::vector<std::string> columns;
    std::vector<std::vector<Cell>> rows;
    int col(const std::string& c) const {
        for (size_t i = 0; i < columns.size(); ++i)
            if (columns[i] == c) return static_cast<int>(i);
        return -1;
    }
};

Cell to_cell(const rapidjson::Value& v) {
    if (v.IsNull()) return std::monostate{};
    if (v.IsBool()) return v.GetBool();
    if (v.IsInt64()) return v.GetInt64();
    if (v.IsNumber()) return v.GetDouble();
    if (v.IsString()) return std::string(v.GetString(), v.GetStringLength());
    return std::monostate{};
}

std::string to_text(const FieldValue& v) {
    return std::visit([](const auto& x) {
        std::ostringstream o;
        o << x;
        return o.str();
    }, v);
}

bool same(const Cell& c, const FieldValue& v) {
    if (auto* i = std::get_if<int64_t>(&v)) return std::holds_alternative<int64_t>(c) && std::get<int64_t>(c) == *i;
    if (auto* s = std::get_if<std::string>(&v)) return std::holds_alternative<std::string>(c) && std::get<std::string>(c) == *s;
    if (auto* b = std::get_if<bool>(&v)) return std::holds_alternative<bool>(c) && std::get<bool>(c) == *b;
    double d = std::get<double>(v);
    if (std::holds_alternative<double>(c)) return std::get<double>(c) == d;
    return std::holds_alternative<int64_t>(c) && static_cast<double>(std::get<int64_t>(c)) == d;
}

// ---- our influxd -------------------------------------------------------------------

struct Influxd {
    std::string binary;
    TempDir dir;
    int http_port = 0, rpc_port = 0;
    Child proc;
    int starts = 0;

    std::string base() const { return "http://127.0.0.1:" + std::to_string(http_port); }
    std::string log_path() const { return dir.path + "/influxd.log"; }

    explicit Influxd(std::string bin) : binary(std::move(bin)) {
        http_port = free_port();
        do rpc_port = free_port();
        while (rpc_port == http_port);
        std::ofstream conf(dir.path + "/influxdb.conf");
        conf << "reporting-disabled = true\n"
             << "bind-address = \"127.0.0.1:" << rpc_port << "\"\n"
             << "[meta]\n  dir = \"" << dir.path << "/meta\"\n"
             << "[data]\n  dir = \"" << dir.path << "/data\"\n  wal-dir = \"" << dir.path << "/wal\"\n"
             << "  query-log-enabled = false\n"
             << "[http]\n  enabled = true\n  bind-address = \"127.0.0.1:" << http_port << "\"\n"
             << "  log-enabled = false\n"
             << "[logging]\n  level = \"warn\"\n"
             << "[monitor]\n  store-enabled = false\n"
             << "[subscriber]\n  enabled = false\n"
             << "[continuous_queries]\n  enabled = false\n";
    }

    std::string log_tail() const {
        std::ifstream in(log_path());
        std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        return all.size() > 3000 ? all.substr(all.size() - 3000) : all;
    }

    void start() {
        proc.spawn({binary, "-config", dir.path + "/influxdb.conf"}, log_path());
        ++starts;
        auto deadline = std::chrono::steady_clock::now() + 20s;
        while (std::chrono::steady_clock::now() < deadline) {
            if (!proc.alive()) FAIL("influxd exited at start; its log:\n" << log_tail());
            if (http("GET", base() + "/ping").status == 204) return;
            std::this_thread::sleep_for(50ms);
        }
        FAIL("influxd did not answer /ping within 20 s; its log:\n" << log_tail());
    }

    void stop() { REQUIRE_MESSAGE(proc.terminate(), "influxd did not exit on SIGTERM within 10 s"); }
    bool running() { return proc.alive(); }

    // POSTed InfluxQL; returns the series of the first statement (REQUIREs success).
    std::vector<Series> query(const std::string& db, const std::string& q) {
        auto r = http("POST", base() + "/query?epoch=ns&db=" + form_encode(db), "q=" + form_encode(q));
        REQUIRE_MESSAGE(r.status == 200, q << " -> HTTP " << r.status << " " << r.body << r.error);
        auto doc = signet::json::parse(r.body);
        REQUIRE(doc);
        const auto& res = (*doc)["results"][0];
        REQUIRE_MESSAGE(!res.HasMember("error"), q << " -> " << r.body);
        std::vector<Series> out;
        if (!res.HasMember("series")) return out;
        for (const auto& s : res["series"].GetArray()) {
            Series x;
            x.name = s.HasMember("name") ? s["name"].GetString() : "";
            if (s.HasMember("tags"))
                for (const auto& t : s["tags"].GetObject())
                    if (t.value.GetStringLength() > 0) x.tags[t.name.GetString()] = t.value.GetString();
            for (const auto& c : s["columns"].GetArray()) x.columns.push_back(c.GetString());
            for (const auto& row : s["values"].GetArray()) {
                std::vector<Cell> cells;
                for (const auto& v : row.GetArray()) cells.push_back(to_cell(v));
                x.rows.push_back(std::move(cells));
            }
            out.push_back(std::move(x));
        }
        return out;
    }

    void exec(const std::string& q) { (void)query("", q); }

    int64_t count(const std::string& db, const std::string& q) {
        auto s = query(db, q);
        if (s.empty()) return 0;
        REQUIRE(s.size() == 1);
        REQUIRE(s[0].rows.size() == 1);
        return std::get<int64_t>(s[0].rows[0][1]);
    }
};

Influxd* g_influxd = nullptr;

// The LISTEN sockets of a process, from /proc: "addr:port" as the kernel
// shows them (hex), for TCP and UDP over IPv4 and IPv6.
std::vector<std::string> listening_sockets(pid_t pid) {
    std::set<std::string> inodes;
    std::string fd_dir = "/proc/" + std::to_string(pid) + "/fd";
    if (DIR* d = opendir(fd_dir.c_str())) {
        while (dirent* e = readdir(d)) {
            char target[256];
            ssize_t n = readlink((fd_dir + "/" + e->d_name).c_str(), target, sizeof target - 1);
            if (n <= 0) continue;
            target[n] = 0;
            std::string t(target);
            if (t.rfind("socket:[", 0) == 0) inodes.insert(t.substr(8, t.size() - 9));
        }
        closedir(d);
    }
    std::vector<std::string> out;
    for (const char* table : {"tcp", "tcp6", "udp", "udp6"}) {
        std::ifstream in("/proc/" + std::to_string(pid) + "/net/" + table);
        std::string line;
        std::getline(in, line);
        while (std::getline(in, line)) {
            std::istringstream ls(line);
            std::string sl, local, remote, state, queues, tr, retr, uid, timeout, inode;
            ls >> sl >> local >> remote >> state >> queues >> tr >> retr >> uid >> timeout >> inode;
            bool listening = std::string(table).rfind("tcp", 0) == 0 ? state == "0A" : state == "07";
            if (listening && inodes.count(inode)) out.push_back(std::string(table) + " " + local);
        }
    }
    return out;
}

// ---- the data signet writes ----------------------------------------------------------

int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

std::string tag(const Point& p, const std::string& k) {
    for (const auto& [key, v] : p.tags)
        if (key == k) return v;
    return {};
}
int64_t ifield(const Point& p, const std::string& k) {
    for (const auto& [key, v] : p.fields)
        if (key == k) return std::get<int64_t>(v);
    return 0;
}

Point flow_point(int i, int64_t t) {
    static const char* pods[] = {"backend-1", "backend-2", "frontend-1"};
    static const char* kinds[] = {"pod", "address", "node"};
    static const char* nss[] = {"prod", "dev", "kube-system"};
    static const char* protos[] = {"TCP", "UDP", "SCTP", "ICMP", "ICMPv6"};
    std::string kind = kinds[(i / 5) % 3];
    bool denied = i % 7 == 0;
    std::string proto = protos[i % 5];
    std::string ns = i % 2 ? "prod" : "dev";
    std::string policy = denied ? (i % 2 ? "default-deny" : "dev/deny-egress")
                                : (i % 3 == 0 ? "none" : ns + "/allow-" + std::to_string(i % 4));
    Point p;
    p.measurement = "signet_flow";
    p.tags = {{"node", "node-" + std::to_string(i % 2)},
              {"direction", (i / 3) % 2 ? "egress" : "ingress"},
              {"verdict", denied ? "denied" : "allowed"},
              {"local_namespace", ns},
              {"local_pod", pods[i % 3]},
              {"peer_kind", kind},
              {"peer_namespace", kind == "pod" ? nss[(i / 7) % 3] : ""},
              {"peer_pod", kind == "pod" ? "client-" + std::to_string((i / 11) % 4) : ""},
              {"proto", proto},
              {"port", proto.rfind("ICMP", 0) == 0 ? "" : std::to_string(8000 + i % 3)},
              {"policy", policy},
              {"authenticated", i % 4 == 0 ? "true" : "false"}};
    p.fields = {{"connections", int64_t{1 + i % 3}},
                {"packets_out", int64_t{i}},
                {"bytes_out", int64_t{100} * i},
                {"packets_in", int64_t{2} * i},
                {"bytes_in", int64_t{50} * i + 7},
                {"src", "10.0." + std::to_string(i % 200) + "." + std::to_string(i % 250 + 1)},
                {"dst", "fd00::" + std::to_string(i % 9000 + 1)},
                {"first_seen_ns", t - 5000000000},
                {"last_seen_ns", t - 1}};
    p.time_ns = t;
    return p;
}

Point pod_event(int i, int64_t t) {
    Point p;
    p.measurement = "signet_pod_event";
    p.tags = {{"node", "node-1"},
              {"namespace", i % 2 ? "prod" : "dev"},
              {"pod", "backend-" + std::to_string(i)},
              {"event", i % 3 == 2 ? "stop" : "start"}};
    p.fields = {{"uid", "0000-" + std::to_string(i)},
                {"ips", "10.1.0." + std::to_string(i) + ",fd00::" + std::to_string(i)},
                {"labels", "app=backend,tier=" + std::to_string(i % 2)}};
    p.time_ns = t;
    return p;
}

InfluxConfig v1_config(const std::string& db) {
    InfluxConfig c;
    c.url = g_influxd->base();
    c.version = 1;
    c.database = db;
    c.batch_points = 100;
    c.flush_interval = 50ms;
    c.timeout = 2s;
    c.gzip = true;
    return c;
}

void wait_for(const std::function<bool()>& cond, std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!cond() && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(20ms);
}

void ensure_running() {
    if (!g_influxd->running()) g_influxd->start();
}

}  // namespace

// Called by the integration main before the tests run / after.
bool influxdb1_setup(const std::string& binary) {
    g_influxd = new Influxd(binary);
    g_influxd->start();
    return true;
}
void influxdb1_teardown() {
    if (g_influxd) {
        g_influxd->proc.terminate(5s);
        delete g_influxd;
        g_influxd = nullptr;
    }
}

TEST_SUITE("influxdb1") {

TEST_CASE("influxd listens on loopback only") {
    ensure_running();
    auto socks = listening_sockets(g_influxd->proc.pid);
    CHECK(socks.size() == 2);   // http + rpc
    for (const auto& s : socks) CHECK_MESSAGE(s.find(" 0100007F:") != std::string::npos, s);
}

TEST_CASE("points written with gzip read back exactly (every tag and field), docs queries") {
    ensure_running();
    g_influxd->exec("CREATE DATABASE signet_write");
    g_influxd->exec("CREATE RETENTION POLICY short ON signet_write DURATION 1d REPLICATION 1");
    auto cfg = v1_config("signet_write");
    cfg.retention_policy = "short";
    InfluxExporter ex(cfg);
    ex.start();

    int64_t base = now_ns() - int64_t{1800} * 1000000000;   // 30 minutes ago
    std::vector<Point> flows, events;
    for (int i = 0; i < 600; ++i) flows.push_back(flow_point(i, base + int64_t{i} * 1000003));
    for (int i = 0; i < 12; ++i) events.push_back(pod_event(i, base + int64_t{i} * 1000000000));
    Point weird{"signet test,m", {{"k ey", "v,a=l ue"}, {"q", "say \"x\""}, {"empty", ""}},
                {{"f x=", std::string("say \"hi\" \\ C:\\dir, a=b")}, {"d", 0.1}, {"b", true}, {"n", int64_t{-5}}},
                base};
    for (size_t i = 0; i < flows.size(); i += 150)
        ex.submit(std::vector<Point>(flows.begin() + static_cast<long>(i), flows.begin() + static_cast<long>(i + 150)));
    ex.submit(events);
    ex.submit({weird});
    REQUIRE(ex.flush(15s));
    auto st = ex.stats();
    CHECK(st.submitted == 613);
    CHECK(st.written == 613);
    CHECK(st.invalid == 0);
    CHECK(st.dropped == 0);
    CHECK(st.batches_ok >= 7);
    CHECK(st.batches_failed == 0);
    CHECK(st.buffered == 0);
    CHECK(st.last_success_unix > 0);

    // Nothing went to the default retention policy.
    CHECK(g_influxd->count("signet_write", "SELECT count(connections) FROM autogen.signet_flow") == 0);

    // Every point, every tag and field.
    auto rows = g_influxd->query("signet_write", "SELECT * FROM short.signet_flow");
    REQUIRE(rows.size() == 1);
    const Series& s = rows[0];
    REQUIRE(s.rows.size() == flows.size());
    std::map<int64_t, const Point*> by_time;
    for (const auto& p : flows) by_time[p.time_ns] = &p;
    int mismatches = 0;
    for (const auto& row : s.rows) {
        int64_t t = std::get<int64_t>(row[static_cast<size_t>(s.col("time"))]);
        REQUIRE(by_time.count(t));
        const Point& p = *by_time[t];
        for (const auto& [k, v] : p.tags) {
            int c = s.col(k);
            REQUIRE_MESSAGE(c >= 0, k);
            const Cell& cell = row[static_cast<size_t>(c)];
            bool ok = v.empty() ? std::holds_alternative<std::monostate>(cell)
                                : std::holds_alternative<std::string>(cell) && std::get<std::string>(cell) == v;
            if (!ok && ++mismatches < 5) FAIL_CHECK("point " << t << " tag " << k << " expected '" << v << "'");
        }
        for (const auto& [k, v] : p.fields) {
            int c = s.col(k);
            REQUIRE_MESSAGE(c >= 0, k);
            if (!same(row[static_cast<size_t>(c)], v) && ++mismatches < 5)
                FAIL_CHECK("point " << t << " field " << k << " expected " << to_text(v));
        }
    }
    CHECK(mismatches == 0);
    CHECK(s.columns.size() == 1 + 12 + 9);

    // Per tag set counts (GROUP BY *).
    std::map<std::map<std::string, std::string>, int64_t> expected_counts;
    for (const auto& p : flows) {
        std::map<std::string, std::string> tags;
        for (const auto& [k, v] : p.tags)
            if (!v.empty()) tags[k] = v;
        ++expected_counts[tags];
    }
    auto groups = g_influxd->query("signet_write", "SELECT count(connections) FROM short.signet_flow GROUP BY *");
    std::map<std::map<std::string, std::string>, int64_t> got_counts;
    for (const auto& g : groups) got_counts[g.tags] = std::get<int64_t>(g.rows[0][1]);
    CHECK(got_counts == expected_counts);

    // Pod events.
    auto ev = g_influxd->query("signet_write", "SELECT * FROM short.signet_pod_event");
    REQUIRE(ev.size() == 1);
    REQUIRE(ev[0].rows.size() == events.size());
    for (size_t i = 0; i < events.size(); ++i) {
        const auto& row = ev[0].rows[i];   // time order == i order
        for (const auto& [k, v] : events[i].tags) CHECK(std::get<std::string>(row[static_cast<size_t>(ev[0].col(k))]) == v);
        for (const auto& [k, v] : events[i].fields) CHECK(same(row[static_cast<size_t>(ev[0].col(k))], v));
    }

    // The escaping, as InfluxDB understood it.
    auto w = g_influxd->query("signet_write", "SHOW TAG VALUES FROM short.\"signet test,m\" WITH KEY IN (\"k ey\", \"q\")");
    REQUIRE(w.size() == 1);
    REQUIRE(w[0].rows.size() == 2);
    CHECK(std::get<std::string>(w[0].rows[0][0]) == "k ey");
    CHECK(std::get<std::string>(w[0].rows[0][1]) == "v,a=l ue");
    CHECK(std::get<std::string>(w[0].rows[1][1]) == "say \"x\"");
    auto wf = g_influxd->query("signet_write", "SELECT * FROM short.\"signet test,m\"");
    REQUIRE(wf.size() == 1);
    REQUIRE(wf[0].rows.size() == 1);
    CHECK(std::get<std::string>(wf[0].rows[0][static_cast<size_t>(wf[0].col("f x="))]) == "say \"hi\" \\ C:\\dir, a=b");
    CHECK(std::get<double>(wf[0].rows[0][static_cast<size_t>(wf[0].col("d"))]) == 0.1);
    CHECK(std::get<bool>(wf[0].rows[0][static_cast<size_t>(wf[0].col("b"))]) == true);
    CHECK(std::get<int64_t>(wf[0].rows[0][static_cast<size_t>(wf[0].col("n"))]) == -5);
    CHECK(wf[0].col("empty") < 0);

    // docs/influxdb.md, the InfluxQL examples as written there (with the "short" RP here).
    // Identifiers are double-quoted: "policy" is an InfluxQL keyword.
    {   // Who talked to backend pods in prod in the last hour.
        auto r = g_influxd->query("signet_write",
            "SELECT sum(\"connections\") AS \"connections\", sum(\"bytes_in\") AS \"bytes_in\" "
            "FROM \"short\".\"signet_flow\" WHERE \"local_namespace\" = 'prod' AND \"local_pod\" =~ /^backend-/ "
            "AND \"direction\" = 'ingress' AND time > now() - 1h "
            "GROUP BY \"peer_kind\", \"peer_namespace\", \"peer_pod\"");
        std::map<std::map<std::string, std::string>, std::pair<int64_t, int64_t>> want, got;
        for (const auto& p : flows)
            if (tag(p, "local_namespace") == "prod" && tag(p, "local_pod").rfind("backend-", 0) == 0 &&
                tag(p, "direction") == "ingress") {
                std::map<std::string, std::string> k{{"peer_kind", tag(p, "peer_kind")}};
                if (!tag(p, "peer_namespace").empty()) k["peer_namespace"] = tag(p, "peer_namespace");
                if (!tag(p, "peer_pod").empty()) k["peer_pod"] = tag(p, "peer_pod");
                want[k].first += ifield(p, "connections");
                want[k].second += ifield(p, "bytes_in");
            }
        for (const auto& g : r) got[g.tags] = {std::get<int64_t>(g.rows[0][1]), std::get<int64_t>(g.rows[0][2])};
        CHECK(!want.empty());
        CHECK(got == want);
    }
    {   // Denied flows by policy.
        auto r = g_influxd->query("signet_write",
            "SELECT sum(\"connections\") FROM \"short\".\"signet_flow\" WHERE \"verdict\" = 'denied' "
            "AND time > now() - 1h GROUP BY \"policy\"");
        std::map<std::string, int64_t> want, got;
        for (const auto& p : flows)
            if (tag(p, "verdict") == "denied") want[tag(p, "policy")] += ifield(p, "connections");
        for (const auto& g : r) got[g.tags.at("policy")] = std::get<int64_t>(g.rows[0][1]);
        CHECK(want.size() == 2);
        CHECK(got == want);
    }
    {   // Bytes per namespace pair (pod to pod, seen from the sender: egress).
        auto r = g_influxd->query("signet_write",
            "SELECT sum(\"bytes_out\") + sum(\"bytes_in\") AS \"bytes\" FROM \"short\".\"signet_flow\" "
            "WHERE \"direction\" = 'egress' AND \"peer_kind\" = 'pod' AND time > now() - 1h "
            "GROUP BY \"local_namespace\", \"peer_namespace\"");
        std::map<std::pair<std::string, std::string>, int64_t> want, got;
        for (const auto& p : flows)
            if (tag(p, "direction") == "egress" && tag(p, "peer_kind") == "pod")
                want[{tag(p, "local_namespace"), tag(p, "peer_namespace")}] += ifield(p, "bytes_out") + ifield(p, "bytes_in");
        for (const auto& g : r) {
            const Cell& c = g.rows[0][1];
            got[{g.tags.at("local_namespace"), g.tags.at("peer_namespace")}] =
                std::holds_alternative<int64_t>(c) ? std::get<int64_t>(c) : static_cast<int64_t>(std::get<double>(c));
        }
        CHECK(want.size() >= 4);
        CHECK(got == want);
    }
    {   // Pods started in the last day.
        auto r = g_influxd->query("signet_write",
            "SELECT \"uid\", \"ips\", \"labels\" FROM \"short\".\"signet_pod_event\" "
            "WHERE \"event\" = 'start' AND time > now() - 1d GROUP BY \"namespace\", \"pod\"");
        std::set<std::string> want, got;
        for (const auto& p : events)
            if (tag(p, "event") == "start") want.insert(tag(p, "namespace") + "/" + tag(p, "pod"));
        for (const auto& g : r) got.insert(g.tags.at("namespace") + "/" + g.tags.at("pod"));
        CHECK(want.size() == 8);
        CHECK(got == want);
    }
    ex.stop();
}

TEST_CASE("influxd stopped and restarted mid-run: nothing within the bound is lost") {
    ensure_running();
    g_influxd->exec("CREATE DATABASE signet_outage");
    auto cfg = v1_config("signet_outage");
    cfg.batch_points = 50;
    cfg.timeout = 1s;
    InfluxExporter ex(cfg);
    ex.start();
    int64_t base = now_ns() - int64_t{600} * 1000000000;
    int next = 0;
    auto submit = [&](int n) {
        std::vector<Point> v;
        for (int k = 0; k < n; ++k, ++next) v.push_back(flow_point(next, base + int64_t{next} * 1000));
        ex.submit(std::move(v));
    };
    submit(200);
    REQUIRE(ex.flush(10s));
    CHECK(g_influxd->count("signet_outage", "SELECT count(connections) FROM signet_flow") == 200);

    g_influxd->stop();   // SIGTERM
    for (int round = 0; round < 3; ++round) {
        submit(100);
        std::this_thread::sleep_for(200ms);
    }
    wait_for([&] { return ex.stats().batches_failed >= 2; }, 5s);
    auto st = ex.stats();
    CHECK(st.batches_failed >= 2);
    CHECK(st.buffered == 300);
    CHECK(st.dropped == 0);
    CHECK(st.written == 200);
    CHECK(!st.last_error.empty());
    CHECK(!ex.flush(100ms));   // InfluxDB is down

    g_influxd->start();   // same data dirs, same ports
    submit(50);
    REQUIRE(ex.flush(20s));
    st = ex.stats();
    CHECK(st.written == 550);
    CHECK(st.dropped == 0);
    CHECK(st.buffered == 0);
    CHECK(st.submitted == 550);
    CHECK(g_influxd->count("signet_outage", "SELECT count(connections) FROM signet_flow") == 550);
    CHECK(g_influxd->count("signet_outage", "SELECT count(connections) FROM signet_flow WHERE peer_kind = 'pod'") ==
          550 / 15 * 5 + 5);
    ex.stop();
}

TEST_CASE("small buffer while influxd is down: the drop counter is what went beyond the bound") {
    ensure_running();
    g_influxd->exec("CREATE DATABASE signet_bound");
    auto cfg = v1_config("signet_bound");
    cfg.buffer_points = 50;
    cfg.batch_points = 10;
    cfg.timeout = 1s;
    g_influxd->stop();
    InfluxExporter ex(cfg);
    ex.start();
    int64_t base = now_ns() - int64_t{600} * 1000000000;
    std::vector<Point> all;
    for (int i = 0; i < 200; ++i) all.push_back(flow_point(i, base + int64_t{i} * 1000));
    for (int i = 0; i < 200; i += 40) {
        ex.submit(std::vector<Point>(all.begin() + i, all.begin() + i + 40));
        std::this_thread::sleep_for(50ms);
    }
    auto st = ex.stats();
    CHECK(st.submitted == 200);
    CHECK(st.dropped == 150);
    CHECK(st.buffered == 50);
    CHECK(st.written == 0);

    g_influxd->start();
    CHECK(!ex.flush(20s));   // drained, but 150 points were dropped
    st = ex.stats();
    CHECK(st.buffered == 0);
    CHECK(st.written == 50);
    CHECK(st.dropped == 150);
    CHECK(g_influxd->count("signet_bound", "SELECT count(connections) FROM signet_flow") == 50);
    // The oldest were dropped: the newest 40 (beyond one batch that may have
    // been in flight while points were dropped) are all there.
    CHECK(g_influxd->count("signet_bound", "SELECT count(packets_out) FROM signet_flow WHERE packets_out >= 160") == 40);
    ex.submit({flow_point(1000, base + 1000000)});
    CHECK(ex.flush(10s));   // nothing lost since the previous flush
    ex.stop();
}

TEST_CASE("missing database (404) is kept and retried; a bad batch (400) is dropped, counted, logged") {
    ensure_running();
    auto cfg = v1_config("signet_errors");
    InfluxExporter ex(cfg);
    ex.start();
    int64_t base = now_ns() - int64_t{600} * 1000000000;
    std::vector<Point> v;
    for (int i = 0; i < 20; ++i) v.push_back(flow_point(i, base + i));
    ex.submit(v);
    wait_for([&] { return ex.stats().batches_failed >= 1; }, 5s);
    auto st = ex.stats();
    CHECK(st.batches_failed >= 1);
    CHECK(st.buffered == 20);
    CHECK(st.rejected == 0);
    CHECK_MESSAGE(st.last_error.find("HTTP 404: database not found") != std::string::npos, st.last_error);
    g_influxd->exec("CREATE DATABASE signet_errors");
    REQUIRE(ex.flush(15s));
    CHECK(g_influxd->count("signet_errors", "SELECT count(connections) FROM signet_flow") == 20);

    // bytes_out is an integer field: a string is a field type conflict (400).
    Point conflict = flow_point(100, base + 100);
    conflict.fields[2].second = std::string("lots");
    ex.submit({conflict});
    CHECK(!ex.flush(10s));
    st = ex.stats();
    CHECK(st.rejected == 1);
    CHECK(st.buffered == 0);
    CHECK_MESSAGE(st.last_error.find("HTTP 400: partial write: field type conflict") != std::string::npos, st.last_error);
    // The exporter is not stuck on it.
    ex.submit({flow_point(101, base + 101)});
    CHECK(ex.flush(10s));
    CHECK(g_influxd->count("signet_errors", "SELECT count(connections) FROM signet_flow") == 21);
    st = ex.stats();
    CHECK(st.submitted == st.written + st.dropped + st.rejected + st.invalid + st.buffered);
    ex.stop();
}

}  // TEST_SUITE
