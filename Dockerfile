# signet's image: signetd, signetctl, the `signet` CNI plugin and
# signet-install-cni. Build from the repository root (a fresh clone is
# enough: nothing needs to be built or fetched beforehand):
#   docker build -t signet:0.1.0 .
# or with podman/buildah:
#   podman build -t signet:0.1.0 .
# The build needs the network only for Debian's archive and the npm registry.
# docs/install.md ("Building the image") explains the stages and how to pin
# the base image by digest; test/image/build-and-run.sh builds this file on a
# Debian 12 base made locally with mmdebstrap and runs the result.
#
# Three stages, one base:
#   web      the graph page's library (cytoscape), exactly as pinned in
#            web/package-lock.json (npm ci, integrity-checked); signetd
#            embeds it at build time (controller/metrics/meson.build)
#   build    the compiler and -dev packages (scripts/install-deps.sh's build
#            list, minus what only the tests and fuzzing need), then meson
#   runtime  the base with only the shared libraries the binaries load

# The base of every stage. Pinned to Debian 12 by tag; for a reproducible
# build pin the digest too, e.g.
#   --build-arg BASE_IMAGE=debian:12-slim@sha256:<digest>
# (docs/install.md says how to find the digest).
ARG BASE_IMAGE=debian:12-slim

FROM ${BASE_IMAGE} AS web
# Debian's npm (Node.js 18): only to fetch and verify the lockfile's packages.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends npm ca-certificates \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
WORKDIR /web
COPY web/package.json web/package-lock.json ./
# Behind a TLS-intercepting proxy, npm needs the proxy's CA: pass its PEM
# certificate(s) as text, e.g.
#   --build-arg EXTRA_CA_CERTS="$(cat /usr/local/share/ca-certificates/*.crt)"
# (used in this stage only: not in the image). The package's integrity is
# checked against the lockfile's sha512 either way.
ARG EXTRA_CA_CERTS=
# --ignore-scripts: no install script of a package runs at build time.
RUN if [ -n "$EXTRA_CA_CERTS" ]; then \
      printf '%s\n' "$EXTRA_CA_CERTS" >/tmp/extra-ca.pem && export NODE_EXTRA_CA_CERTS=/tmp/extra-ca.pem; \
    fi \
 && npm ci --no-audit --no-fund --ignore-scripts \
 && test -f node_modules/cytoscape/dist/cytoscape.min.js \
 && rm -f /tmp/extra-ca.pem

FROM ${BASE_IMAGE} AS build
# g++, meson, ninja, pkg-config; python3 runs web/embed.py; the libraries
# dependency() asks for in meson.build and controller/*/meson.build:
# libcurl (kube, export), RapidJSON, OpenSSL >= 3 (identity), libnftnl and
# libmnl (nft), Boost (Asio, Beast: headers only), yaml-cpp, zlib (export:
# gzip for InfluxDB). binutils' strip comes with g++.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      g++ meson ninja-build pkg-config python3 \
      libcurl4-openssl-dev rapidjson-dev libssl-dev libnftnl-dev libmnl-dev \
      libboost-dev libyaml-cpp-dev zlib1g-dev \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
COPY --from=web /web/node_modules /src/web/node_modules
# Out of tree, so a build/ folder in the context cannot interfere (and
# .dockerignore keeps it out anyway). No tests in the image build: CI runs
# them (scripts/test.sh).
# NINJA_JOBS: parallel compile jobs (default: ninja's, from the CPU count).
ARG NINJA_JOBS=
RUN meson setup /tmp/build /src -Dtests=false \
 && ninja -C /tmp/build ${NINJA_JOBS:+-j "$NINJA_JOBS"} \
 && mkdir -p /out \
 && cp /tmp/build/controller/signetd /tmp/build/controller/signetctl \
       /tmp/build/cni-plugin/signet /tmp/build/installer/signet-install-cni /out/ \
 && strip /out/* \
 && /out/signetd --version

FROM ${BASE_IMAGE}
# libcurl4 and libssl3: the Kubernetes API client and the InfluxDB exporter;
# ca-certificates: https to InfluxDB; libnftnl11 and libmnl0: the nftables
# programmer; libyaml-cpp0.7: manifests and kubeconfig; zlib1g: gzip of
# InfluxDB writes; libstdc++6: every C++ binary (the plugin is static and
# needs none of them). No shell tools for the probes: they are httpGet on
# signetd's metrics listener (manifests/30-daemonset.yaml).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libcurl4 libssl3 ca-certificates libnftnl11 libmnl0 libyaml-cpp0.7 zlib1g libstdc++6 \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/signetd /out/signetctl /out/signet /out/signet-install-cni /usr/local/bin/
LABEL org.opencontainers.image.title="signet" \
      org.opencontainers.image.description="Zero-trust Kubernetes NetworkPolicy enforcer chained into any CNI" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["/usr/local/bin/signetd"]
