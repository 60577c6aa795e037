#!/usr/bin/env bash
# Installs everything signet needs to build, test and run its demo, from
# Debian 12's archive. Idempotent, and quiet when everything is there.
set -euo pipefail

# Build: compiler, meson/ninja and the libraries signet links.
BUILD_PKGS=(g++ clang libclang-rt-14-dev meson ninja-build pkg-config
  libcurl4-openssl-dev rapidjson-dev libssl-dev libnftnl-dev libmnl-dev libboost-dev
  doctest-dev libyaml-cpp-dev)
# Tests and demo: real network namespaces, real CNI plugins and runtimes.
RUN_PKGS=(iproute2 nftables conntrack curl python3 containernetworking-plugins
  podman runc busybox-static golang-go golang-github-appc-cni-dev
  containerd python3-grpcio python3-yaml iperf3)

missing=()
for p in "${BUILD_PKGS[@]}" "${RUN_PKGS[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if [[ $(id -u) -ne 0 ]]; then
  echo "install-deps: missing packages: ${missing[*]}" >&2
  echo "install-deps: run as root (or: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq "${missing[@]}" >/dev/null
