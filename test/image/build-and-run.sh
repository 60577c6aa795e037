#!/usr/bin/env bash
# Builds signet's image (the repository's Dockerfile) the way an operator
# would, and runs it. Not part of scripts/test.sh: it compiles signet inside
# the build container and takes far longer than CI's budget (docs/install.md,
# "Building the image", has the measured times).
#
# No container registry is reachable here, so the Dockerfile's base image
# (debian:12-slim) is made locally from Debian's archive: mmdebstrap
# --variant=minbase bookworm (the mirror of /etc/apt/sources.list*), imported
# with podman and tagged docker.io/library/debian:12-slim in a private
# container storage under a temporary folder (so the host's images and the
# other tests' podman state are untouched, and cleanup is rm -rf). Then:
#
#   1. podman build --pull=never of the Dockerfile, on a copy of the
#      committed tree (git archive HEAD: what a fresh clone holds; with
#      --worktree, the working tree as it is, filtered by .dockerignore).
#      RUN steps use the host's network (--network=host) for Debian's archive
#      and the npm registry: podman's own build network needs a CNI config.
#   2. in the image: every binary's shared libraries resolve (ldd), no curl,
#      signetd --version, signetctl --help, the plugin's CNI VERSION,
#      signet-install-cni install --dry-run on a bridge conflist (prints the
#      chained config, writes nothing);
#   3. a short signetd start (--network=none, so its own netns; the
#      DaemonSet's two capabilities): --source dir: with a NetworkPolicy,
#      --health-address 127.0.0.1:9468 and --metrics-address 127.0.0.1:9464
#      (as the DaemonSet runs it); waits until /readyz on the probe address
#      (what kubelet's httpGet probe asks) answers 200, checks /healthz,
#      /readyz and /metrics there and on the metrics address, and
#      `signetctl status`, then SIGTERM: it must exit 0 and log "stopped".
#
# Prints PASS/FAIL per check and the time of each phase; exits 1 on any
# failure. Needs root, podman, runc, mmdebstrap (installed with apt-get when
# missing). Usage: test/image/build-and-run.sh [--worktree] [--keep]
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
self="${BASH_SOURCE[0]}"

# All in one function: bash reads it whole before running it, so the file
# can change while a build runs.
main() {

use_worktree=0
keep=0
for a in "$@"; do
  case $a in
    --worktree) use_worktree=1 ;;
    --keep) keep=1 ;;
    -h|--help) sed -n '2,33p' "$self"; exit 0 ;;
    *) echo "usage: $0 [--worktree] [--keep]" >&2; exit 2 ;;
  esac
done

failures=0
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
die() { echo "FAIL: $*"; echo "RESULT: FAIL"; exit 1; }
now() { date +%s; }
t_start=$(now)
phase_start=$t_start
phase() {  # phase NAME: prints how long the phase that just ended took
  local t; t=$(now)
  echo "TIME: $1: $((t - phase_start)) s"
  phase_start=$t
}

[[ $(id -u) -eq 0 ]] || die "needs root (mmdebstrap, podman's storage)"

missing=()
for p in podman runc mmdebstrap; do
  command -v "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "installing ${missing[*]} (apt-get)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
fi

T=$(mktemp -d /var/tmp/signet-image.XXXXXX)
id=$(basename "$T" | cut -d. -f2 | tr 'A-Z' 'a-z')
image="localhost/signet-image-test-$id:latest"
ctr="signet-image-test-$id"

# Private podman configuration and storage (graphroot under $T). Explicit
# RLIMIT_NOFILE and RLIMIT_NPROC for every container (RUN steps included):
# podman's defaults are above what runc may set on machines without
# CAP_SYS_RESOURCE (these CI machines: nofile 20000; nproc 32768 works,
# 65536 is refused although the shell's hard limit is higher).
mkdir -p "$T/storage" "$T/run" "$T/tmp"
local nofile nproc
nofile=$(ulimit -Hn); nproc=$(ulimit -Hu)
[[ $nofile == unlimited || $nofile -gt 1048576 ]] && nofile=1048576
[[ $nproc == unlimited || $nproc -gt 32768 ]] && nproc=32768
cat >"$T/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$T/events.log"
runtime = "runc"
tmp_dir = "$T/tmp"
EOF
cat >"$T/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$T/storage"
runroot = "$T/run"
EOF
export CONTAINERS_CONF="$T/containers.conf"
export CONTAINERS_STORAGE_CONF="$T/storage.conf"
export TMPDIR="$T/tmp"

cleanup() {
  podman rm -f -t 0 "$ctr" >/dev/null 2>&1
  if [[ $keep -eq 1 ]]; then
    echo "kept: $T (CONTAINERS_CONF=$T/containers.conf CONTAINERS_STORAGE_CONF=$T/storage.conf podman images)"
    return
  fi
  podman rmi -a -f >/dev/null 2>&1
  podman system reset -f >/dev/null 2>&1
  # Anything podman left mounted under $T (overlay layers) goes before rm.
  grep -o " $T[^ ]*" /proc/self/mounts 2>/dev/null | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
  rm -rf "$T"
}
trap cleanup EXIT

echo "work folder: $T"

# --- 1. The base image, from Debian's archive ------------------------------
sources=()
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
  [[ -f $f ]] && grep -q 'debian.org\|/debian' "$f" && sources+=("$f")
done
[[ ${#sources[@]} -gt 0 ]] || die "no Debian mirror in /etc/apt/sources.list*"
echo "base image: mmdebstrap --variant=minbase bookworm, mirror from ${sources[*]}"
# Without apt's package lists and caches, as Debian's own images are.
if ! nice -n 10 mmdebstrap --quiet --variant=minbase --mode=root \
     --customize-hook='find "$1"/var/cache/apt "$1"/var/lib/apt/lists -type f -delete' \
     bookworm "$T/base.tar" "${sources[@]}" \
     >"$T/mmdebstrap.log" 2>&1; then
  tail -20 "$T/mmdebstrap.log"
  die "mmdebstrap bookworm"
fi
podman import --quiet --change 'CMD ["bash"]' "$T/base.tar" localhost/signet-base-$id:12-slim >/dev/null \
  || die "podman import of the base"
rm -f "$T/base.tar"
# The Dockerfile's default base, resolved locally (--pull=never below).
podman tag localhost/signet-base-$id:12-slim docker.io/library/debian:12-slim || die "podman tag"
pass "base image debian:12-slim made from Debian's archive ($(podman image inspect --format '{{.Size}}' docker.io/library/debian:12-slim) bytes)"
phase "base image (mmdebstrap + import)"

# --- 2. podman build ---------------------------------------------------------
ctx="$T/context"
mkdir -p "$ctx"
if [[ $use_worktree -eq 1 ]]; then
  ctx="$repo"
  echo "context: the working tree $repo (filtered by .dockerignore)"
else
  git -C "$repo" archive --format=tar HEAD | tar -x -C "$ctx" || die "git archive HEAD"
  echo "context: git archive HEAD ($(git -C "$repo" rev-parse --short HEAD)), as a fresh clone"
  [[ -e $ctx/web/node_modules ]] && die "web/node_modules is committed?"
fi
echo "podman build (log: $T/build.log; compiling signet takes several minutes)"
# SIGNET_IMAGE_JOBS: compile jobs in the build (default 2: a shared machine).
build_args=(--build-arg NINJA_JOBS="${SIGNET_IMAGE_JOBS:-2}")
# CA certificates added to this host's trust store (/usr/local/share/
# ca-certificates: e.g. a TLS-intercepting egress proxy's, as on the CI
# machines) go to the npm stage, as an operator behind such a proxy passes them.
extra_ca=""
for f in /usr/local/share/ca-certificates/*.crt /usr/local/share/ca-certificates/*/*.crt; do
  [[ -f $f ]] && extra_ca+="$(cat "$f")"$'\n'
done
if [[ -n $extra_ca ]]; then
  echo "passing this host's added CA certificates to the npm stage (--build-arg EXTRA_CA_CERTS)"
  build_args+=(--build-arg EXTRA_CA_CERTS="$extra_ca")
fi
if nice -n 10 podman build --pull=never --network=host --layers=false \
     "${build_args[@]}" -t "$image" -f "$ctx/Dockerfile" "$ctx" \
     >"$T/build.log" 2>&1; then
  pass "podman build of the Dockerfile"
else
  tail -40 "$T/build.log"
  die "podman build of the Dockerfile (full log above, last 40 lines)"
fi
phase "podman build"
echo "image size: $(podman image inspect --format '{{.Size}}' "$image") bytes"

run() { podman run --rm --network=none "$@"; }

# --- 3. The binaries in the image --------------------------------------------
out=$(run --entrypoint /bin/sh "$image" -c 'for b in /usr/local/bin/*; do echo "== $b"; ldd "$b" 2>&1; done' 2>&1)
rc=$?
nbin=$(grep -c '^== ' <<<"$out")
if [[ $rc -ne 0 || $nbin -ne 4 ]]; then
  fail "ldd of the binaries in /usr/local/bin (exit $rc, $nbin binaries, 4 expected): $out"
elif grep -q "not found" <<<"$out"; then
  fail "shared libraries missing in the runtime stage:"; grep -B20 "not found" <<<"$out"
else
  pass "every binary's shared libraries resolve ($nbin binaries: $(grep '^== ' <<<"$out" | sed 's|== /usr/local/bin/||' | tr '\n' ' '))"
fi
out=$(run --entrypoint /bin/sh "$image" -c 'if command -v curl >/dev/null; then echo HAS-CURL; else echo NO-CURL; fi' 2>&1)
if [[ $out == NO-CURL ]]; then
  pass "no curl in the runtime image"
else
  fail "curl in the runtime image? ($out)"
fi

out=$(run "$image" --version 2>&1)
if [[ $? -eq 0 && $out == *0.* ]]; then pass "signetd --version: $out"; else fail "signetd --version: $out"; fi
out=$(run --entrypoint /usr/local/bin/signetctl "$image" --help 2>&1)
if [[ $? -eq 0 && $out == Usage:* ]]; then pass "signetctl --help: ${out%%$'\n'*}"; else fail "signetctl --help: $out"; fi
out=$(run --entrypoint /usr/local/bin/signet -e CNI_COMMAND=VERSION "$image" 2>&1)
if [[ $out == *supportedVersions* ]]; then pass "signet (CNI VERSION): $out"; else fail "signet (CNI VERSION): $out"; fi

# signet-install-cni install --dry-run on a bridge conflist: prints the new
# content with signet last, and the file stays as it was.
out=$(run --entrypoint /bin/sh "$image" -c '
  set -e
  mkdir -p /tmp/net.d /tmp/bin
  cat >/tmp/net.d/10-bridge.conflist <<EOF
{"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.0.0/24"}]]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
EOF
  sum=$(md5sum </tmp/net.d/10-bridge.conflist)
  /usr/local/bin/signet-install-cni install --dry-run --cni-conf-dir=/tmp/net.d --cni-bin-dir=/tmp/bin \
      --plugin=/usr/local/bin/signet --socket=/run/signet/signetd.sock
  [ "$(md5sum </tmp/net.d/10-bridge.conflist)" = "$sum" ] || { echo "DRY RUN WROTE THE CONFIG"; exit 1; }
  [ ! -e /tmp/bin/signet ] || { echo "DRY RUN COPIED THE PLUGIN"; exit 1; }' 2>&1)
rc=$?
if [[ $rc -eq 0 && $out == *'"type": "signet"'* || $rc -eq 0 && $out == *'"type":"signet"'* ]]; then
  pass "signet-install-cni install --dry-run (chains signet, writes nothing)"
  sed 's/^/    /' <<<"$out" | head -30
else
  fail "signet-install-cni install --dry-run (exit $rc): $out"
fi
phase "binaries"

# --- 4. A short signetd start ------------------------------------------------
mkdir -p "$T/manifests"
cat >"$T/manifests/shop.yaml" <<'EOF'
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: shop}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Ingress]
EOF
# As the DaemonSet runs it: root, NET_ADMIN and SYS_ADMIN only, read-only
# root file system; its own netns (--network=none: loopback only).
if ! podman run -d --name "$ctr" --network=none --read-only \
     --cap-drop=ALL --cap-add=NET_ADMIN --cap-add=SYS_ADMIN \
     --tmpfs /run/signet --tmpfs /var/lib/signet --tmpfs /tmp \
     -v "$T/manifests:/etc/signet/manifests:ro" -e NODE_NAME=image-test \
     "$image" --source=dir:/etc/signet/manifests --socket=/run/signet/signetd.sock \
     --state-dir=/var/lib/signet --metrics-address=127.0.0.1:9464 --health-address=127.0.0.1:9468 >/dev/null; then
  fail "podman run signetd"
else
  # GET PATH on the metrics address from inside the container, with bash's
  # /dev/tcp (the image has no curl, as kubelet's httpGet needs none).
  http_get() {  # http_get PATH [PORT]: the metrics port unless PORT
    podman exec "$ctr" bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$2" || exit 1
      printf "GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" "$1" >&3
      cat <&3' _ "$1" "${2:-9464}" 2>/dev/null
  }
  t0=$(date +%s%N)
  ready=""
  for _ in $(seq 1 100); do
    state=$(podman inspect --format '{{.State.Status}}' "$ctr" 2>/dev/null)
    [[ $state == running ]] || break
    r=$(http_get /readyz 9468)
    if [[ $r == "HTTP/1.1 200"* ]]; then ready=1; break; fi
    sleep 0.1
  done
  ms=$((($(date +%s%N) - t0) / 1000000))
  if [[ -n $ready ]]; then
    pass "signetd ready: GET /readyz on the probe address 127.0.0.1:9468 answered 200 within ${ms} ms of podman run returning"
  else
    fail "signetd not ready after ${ms} ms (state: $state); log:"; podman logs "$ctr" 2>&1 | tail -20
  fi
  r=$(http_get /healthz 9468)
  [[ $r == "HTTP/1.1 200"* ]] && pass "GET /healthz on 127.0.0.1:9468: 200" || fail "GET /healthz on 9468: ${r:0:80}"
  r=$(http_get /metrics 9468)
  [[ $r == "HTTP/1.1 404"* ]] && pass "GET /metrics on the probe address: 404 (probes only)" || fail "GET /metrics on 9468: ${r:0:80}"
  r=$(http_get /readyz)
  [[ $r == "HTTP/1.1 200"* ]] && pass "GET /readyz on the metrics address 127.0.0.1:9464: 200" || fail "GET /readyz on 9464: ${r:0:80}"
  r=$(http_get /metrics)
  if [[ $r == "HTTP/1.1 200"* && $r == *"# TYPE "* ]]; then
    pass "GET /metrics: 200, $(grep -c '^# TYPE ' <<<"$r") metric families"
  else
    fail "GET /metrics: ${r:0:80}"
  fi
  out=$(podman exec -e SIGNET_SOCKET=/run/signet/signetd.sock "$ctr" signetctl status 2>&1)
  if [[ $? -eq 0 ]]; then
    pass "signetctl status over the API socket"; sed 's/^/    /' <<<"$out" | head -12
  else
    fail "signetctl status: $out"
  fi
  podman stop -t 10 "$ctr" >/dev/null 2>&1
  code=$(podman inspect --format '{{.State.ExitCode}}' "$ctr" 2>/dev/null)
  logs=$(podman logs "$ctr" 2>&1)
  if [[ $code == 0 && $logs == *stopped* ]]; then
    pass "signetd stopped cleanly on SIGTERM (exit 0)"
  else
    fail "signetd exit code '$code' after SIGTERM; log:"; tail -20 <<<"$logs"
  fi
  echo "signetd's log:"; sed 's/^/    /' <<<"$logs" | head -20
fi
phase "signetd start"

echo "TIME: total: $(($(now) - t_start)) s"
if [[ $failures -eq 0 ]]; then
  echo "RESULT: PASS"
  exit 0
fi
echo "RESULT: FAIL ($failures failed)"
exit 1
}

main "$@"
