# signet's image: signetd, signetctl, the `signet` CNI plugin and
# signet-install-cni. Build from the repository root:
#   docker build -t signet:0.1.0 .
# Two stages: Debian 12 with the build dependencies (the same packages as
# scripts/install-deps.sh's build list), then Debian 12 slim with only the
# shared libraries the binaries load, curl for the probes, and the binaries.

FROM debian:12 AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      g++ meson ninja-build pkg-config \
      libcurl4-openssl-dev rapidjson-dev libssl-dev libnftnl-dev libmnl-dev \
      libboost-dev libyaml-cpp-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Out of tree, so a build/ folder in the context cannot interfere. No tests
# in the image build: CI runs them (scripts/test.sh).
RUN meson setup /tmp/build /src -Dtests=false \
 && ninja -C /tmp/build \
 && mkdir -p /out \
 && cp /tmp/build/controller/signetd /tmp/build/controller/signetctl \
       /tmp/build/cni-plugin/signet /tmp/build/installer/signet-install-cni /out/ \
 && strip /out/*

FROM debian:12-slim
# libcurl4 and libssl3: the Kubernetes API client; libnftnl11 and libmnl0:
# the nftables programmer; libyaml-cpp0.7: manifests and kubeconfig;
# libstdc++6: every C++ binary (the plugin is static and needs none of them);
# curl: the DaemonSet's probes reach /readyz over the unix socket.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libcurl4 libssl3 ca-certificates libnftnl11 libmnl0 libyaml-cpp0.7 libstdc++6 curl \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/signetd /out/signetctl /out/signet /out/signet-install-cni /usr/local/bin/
LABEL org.opencontainers.image.title="signet" \
      org.opencontainers.image.description="Zero-trust Kubernetes NetworkPolicy enforcer chained into any CNI" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["/usr/local/bin/signetd"]
