// Main of export_integration_tests. The first argument picks the suite:
//   influxdb1   the real InfluxDB 1.6 (influxd; SIGNET_INFLUXD overrides /usr/bin/influxd)
//   influxdb2   the InfluxDB 2.x request shape against fake_influxdb2.py
// Exits 77 (meson: SKIP) with a loud message when what the suite needs is
// missing; the rest of the arguments go to doctest.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#include <curl/curl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "testutil.h"

bool influxdb1_setup(const std::string& binary);
void influxdb1_teardown();

namespace {
int skip(const std::string& why) {
    std::fprintf(stderr,
                 "\n########################################################################\n"
                 "SKIP: %s\n"
                 "This is NOT a pass: the exporter was not tested against it.\n"
                 "########################################################################\n\n",
                 why.c_str());
    return 77;
}
}  // namespace

int main(int argc, char** argv) {
    if (argc < 2 || (std::string(argv[1]) != "influxdb1" && std::string(argv[1]) != "influxdb2")) {
        std::fprintf(stderr, "usage: %s influxdb1|influxdb2 [doctest options]\n", argv[0]);
        return 2;
    }
    std::string suite = argv[1];
    // The tests talk to 127.0.0.1 only: no proxy from the environment.
    for (const char* v : {"http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"}) unsetenv(v);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    signet::testutil::install_cleanup_handlers();

    doctest::Context ctx;
    ctx.applyCommandLine(argc - 1, argv + 1);
    ctx.setOption("test-suite", suite.c_str());
    int rc;
    if (suite == "influxdb1") {
        const char* env = std::getenv("SIGNET_INFLUXD");
        std::string influxd = env && *env ? env : "/usr/bin/influxd";
        if (access(influxd.c_str(), X_OK) != 0)
            return skip(influxd + " not found: install Debian's influxdb package (scripts/install-deps.sh does)");
        influxdb1_setup(influxd);
        rc = ctx.run();
        influxdb1_teardown();
    } else {
        const char* python = std::getenv("SIGNET_PYTHON");
        if (!python || access(python, X_OK) != 0) return skip("python3 not found (needed by fake_influxdb2.py)");
        rc = ctx.run();
    }
    curl_global_cleanup();
    return rc;
}
