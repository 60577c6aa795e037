#!/usr/bin/env bash
# Installs everything signet needs to build, test and run its demo, from
# Debian 12's archive. Idempotent, and quiet when everything is there.
set -euo pipefail

# Build: compiler, meson/ninja and the libraries signet links.
BUILD_PKGS=(g++ clang libclang-rt-14-dev meson ninja-build pkg-config
  libcurl4-openssl-dev rapidjson-dev libssl-dev libnftnl-dev libmnl-dev libboost-dev
  doctest-dev libyaml-cpp-dev zlib1g-dev)
# Tests and demo: real network namespaces, real CNI plugins and runtimes;
# iptables (iptables-nft) for kube-proxy's iptables-mode rules on the test nodes.
RUN_PKGS=(iproute2 nftables iptables conntrack curl python3 containernetworking-plugins
  podman runc busybox-static golang-go golang-github-appc-cni-dev
  containerd python3-grpcio python3-yaml iperf3
  influxdb influxdb-client prometheus chromium python3-scapy python3-prometheus-client)
# kubectl: `kubectl kustomize` and a client-side dry run of install.yaml
# (test/manifests/test_install_yaml.py, validate.py). Debian 12's
# kubernetes-client, unless a kubectl is on PATH already (Kubernetes' own
# kubectl package installs /usr/bin/kubectl too: the two conflict).
command -v kubectl >/dev/null 2>&1 || RUN_PKGS+=(kubernetes-client)

install_packages() {
  local missing=()
  for p in "${BUILD_PKGS[@]}" "${RUN_PKGS[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [[ "$status" == "install ok installed" ]] || missing+=("$p")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0

  if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: missing packages: ${missing[*]}" >&2
    echo "install-deps: run as root (or: sudo apt-get install ${missing[*]})" >&2
    return 1
  fi
  echo "install-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  # Install only: no package may start its service (influxd and prometheus
  # would listen on every interface). Tests start their own, on loopback.
  policy_rc=/usr/sbin/policy-rc.d
  own_policy=0
  if [[ ! -e $policy_rc ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy_rc" && chmod 755 "$policy_rc" && own_policy=1
  fi
  local rc=0
  apt-get install -y -qq "${missing[@]}" >/dev/null || rc=$?
  [[ $own_policy -eq 1 ]] && rm -f "$policy_rc"
  return $rc
}

install_packages

# The graph page's library (cytoscape, pinned in web/package-lock.json),
# embedded into signetd at build time (controller/metrics/meson.build). npm is
# needed only to fetch it: once, and again when the lockfile changes.
install_web_deps() {
  local web
  web="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/web"
  if [[ -f "$web/node_modules/cytoscape/dist/cytoscape.min.js" &&
        ! "$web/package-lock.json" -nt "$web/node_modules/.package-lock.json" ]]; then
    return 0
  fi
  if ! command -v npm >/dev/null 2>&1; then
    echo "install-deps: npm is missing; it fetches the graph page's library (web/package-lock.json)." >&2
    echo "install-deps: install it (apt-get install npm) and run this script again." >&2
    return 1
  fi
  echo "install-deps: npm ci --prefix web (the graph page's library)" >&2
  local out
  if ! out=$(npm ci --prefix "$web" --no-audit --no-fund --ignore-scripts 2>&1); then
    echo "$out" >&2
    echo "install-deps: npm ci failed in $web (is the npm registry reachable?)" >&2
    return 1
  fi
}
install_web_deps
