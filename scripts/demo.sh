#!/usr/bin/env bash
# signet on one machine: starts signetd on a manifest folder, creates pods as
# network namespaces through a real CNI chain (bridge + host-local + signet,
# driven by libcni as container runtimes drive it), shows them registered
# with the labels their Pod objects give them, then enforces a NetworkPolicy
# (nftables in each pod's netns) on proven identities (a token from the node
# in each new connection's SYN and SYN-ACK) and explains the verdicts. The pods' flows go
# to signetctl flows, to a private InfluxDB (loopback only), to /metrics and
# to the graph page (rendered by headless Chromium into build/demo-graph.png).
# Everything it creates is removed at the end (Ctrl-C too). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [[ $(id -u) -ne 0 ]]; then
  echo "demo: run as root (it creates network namespaces and a bridge)" >&2
  exit 1
fi
bash scripts/install-deps.sh
if [[ ! -f build/build.ninja ]]; then meson setup build >/dev/null; fi
ninja -C build >/dev/null

B=$ROOT/build
T=$(mktemp -d /tmp/signet-demo-XXXXXX)
TAG=d$$
BR=sgt${TAG}
PODS=(frontend backend db)
SIGNETD_PID=
INFLUXD_PID=
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

cleanup() {
  set +e
  for p in "${PODS[@]}"; do
    if [[ -e /var/run/netns/${TAG}-$p ]]; then
      CNI_PATH=$T/bin "$T/cnitool" -cache-dir "$T/cache" del "$T/net.d" demonet "${TAG}-$p" \
        "/var/run/netns/${TAG}-$p" eth0 >/dev/null 2>&1
      ip netns delete "${TAG}-$p" 2>/dev/null
    fi
  done
  ip link delete "$BR" 2>/dev/null
  [[ -n "$SIGNETD_PID" ]] && kill "$SIGNETD_PID" 2>/dev/null && wait "$SIGNETD_PID" 2>/dev/null
  [[ -n "$INFLUXD_PID" ]] && kill "$INFLUXD_PID" 2>/dev/null && wait "$INFLUXD_PID" 2>/dev/null
  rm -rf "$T"
}
trap cleanup EXIT

say "building a libcni runtime (Debian's libcni source, offline)"
mkdir -p "$T/gopath" "$T/bin" "$T/net.d" "$T/cache" "$T/manifests" "$T/state" "$T/ipam"
(cd test/runtimes/cnitool && GO111MODULE=off GOPATH=$T/gopath:/usr/share/gocode GOCACHE=$T/gocache \
  go build -o "$T/cnitool" .)
ln -s /usr/lib/cni/bridge /usr/lib/cni/host-local /usr/lib/cni/loopback "$T/bin/"
ln -s "$B/cni-plugin/signet" "$T/bin/signet"

say "manifests: a namespace and three Pod objects"
cat > "$T/manifests/shop.yaml" <<YAML
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: retail}}
---
apiVersion: v1
kind: Pod
metadata: {name: frontend, namespace: shop, labels: {app: frontend, tier: web}}
spec: {containers: [{name: web, image: nginx, ports: [{name: http, containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: backend, namespace: shop, labels: {app: backend, tier: api}}
spec: {containers: [{name: api, image: api, ports: [{name: grpc, containerPort: 9000}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db, tier: data}}
spec: {containers: [{name: pg, image: postgres, ports: [{name: pg, containerPort: 5432}]}]}
YAML
sed 's/^/    /' "$T/manifests/shop.yaml"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
say "a private InfluxDB for the flow records (loopback only, data in $T)"
INFLUX_PORT=$(free_port); INFLUX_RPC=$(free_port); METRICS_PORT=$(free_port)
cat > "$T/influxdb.conf" <<CONF
reporting-disabled = true
bind-address = "127.0.0.1:$INFLUX_RPC"
[meta]
  dir = "$T/influx/meta"
[data]
  dir = "$T/influx/data"
  wal-dir = "$T/influx/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:$INFLUX_PORT"
  log-enabled = false
[monitor]
  store-enabled = false
CONF
/usr/bin/influxd -config "$T/influxdb.conf" >"$T/influxd.log" 2>&1 &
INFLUXD_PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$INFLUX_PORT/ping" >/dev/null && break; sleep 0.1; done
influx -host 127.0.0.1 -port "$INFLUX_PORT" -execute 'CREATE DATABASE signet'
echo "    influxd on 127.0.0.1:$INFLUX_PORT, database signet"

say "a cluster authority for the pods' identities (signetctl authority init; one machine, so signetd may use its folder: --allow-ca-key)"
"$B/controller/signetctl" authority init "$T/ca" --trust-domain demo.local | sed 's/^/    /'

say "starting signetd (identity handshake enforced; flows to InfluxDB every second; /metrics and the graph on 127.0.0.1:$METRICS_PORT)"
"$B/controller/signetd" --node-name "$(hostname)" --source "dir:$T/manifests" \
  --socket "$T/signetd.sock" --state-dir "$T/state" \
  --authority "dir:$T/ca" --allow-ca-key --handshake enforce \
  --influxdb "http://127.0.0.1:$INFLUX_PORT/?db=signet&flush=250ms" --flow-export-interval 1s \
  --metrics-address "127.0.0.1:$METRICS_PORT" --graph 2>"$T/signetd.log" &
SIGNETD_PID=$!
for _ in $(seq 100); do
  curl -sf --unix-socket "$T/signetd.sock" http://signetd/readyz >/dev/null 2>&1 && break
  sleep 0.05
done
CTL=("$B/controller/signetctl" --socket "$T/signetd.sock")
"${CTL[@]}" status

say "the CNI chain: bridge + host-local + signet"
cat > "$T/net.d/10-demonet.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "demonet",
  "plugins": [
    {"type": "bridge", "bridge": "$BR", "isGateway": true, "ipMasq": false,
     "ipam": {"type": "host-local", "dataDir": "$T/ipam", "ranges": [[{"subnet": "10.250.77.0/24"}]]}},
    {"type": "signet", "socket": "$T/signetd.sock"}
  ]
}
JSON
sed 's/^/    /' "$T/net.d/10-demonet.conflist"

say "creating pods (netns + CNI ADD through libcni, as kubelet's runtimes do)"
for p in "${PODS[@]}"; do
  ip netns add "${TAG}-$p"
  CNI_PATH=$T/bin CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=$p;K8S_POD_UID=uid-$p" \
    "$T/cnitool" -cache-dir "$T/cache" add "$T/net.d" demonet "${TAG}-$p" "/var/run/netns/${TAG}-$p" eth0 >"$T/$p.result"
  echo "  $p: $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ips"][0]["address"])' "$T/$p.result")"
done

say "signetctl pods: registered, with the labels of their Pod objects"
"${CTL[@]}" pods

BACKEND_IP=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ips"][0]["address"].split("/")[0])' "$T/backend.result")
say "backend serves on 9000; with no policy every pod reaches it"
ip netns exec "${TAG}-backend" /usr/bin/python3 -m http.server 9000 --bind 0.0.0.0 >/dev/null 2>&1 &
SERVER_PID=$!
connects() {  # $1 = client pod: can it open a TCP connection to backend:9000?
  ip netns exec "${TAG}-$1" /usr/bin/python3 -c \
    'import socket,sys; socket.create_connection((sys.argv[1], 9000), timeout=1).close()' "$BACKEND_IP" 2>/dev/null
}
probe() { if connects "$1"; then echo "    $1 -> backend:9000  allowed"; else echo "    $1 -> backend:9000  DENIED"; fi; }
for _ in $(seq 50); do connects frontend && break; sleep 0.1; done  # the server starting up
probe frontend; probe db

say "a NetworkPolicy: backend accepts only frontend, on its grpc port"
cat > "$T/manifests/backend-policy.yaml" <<YAML
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: backend-from-frontend, namespace: shop}
spec:
  podSelector: {matchLabels: {app: backend}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: frontend}}}]
    ports: [{port: grpc}]
YAML
sed 's/^/    /' "$T/manifests/backend-policy.yaml"
"${CTL[@]}" sync
probe frontend; probe db

say "signetctl explain: why"
explain() {  # exit status 0: allowed, 3: denied (anything else is an error)
  local rc=0
  "${CTL[@]}" explain "$@" | sed 's/^/    /' || rc=$?
  [[ $rc -eq 0 || $rc -eq 3 ]] || { echo "demo: signetctl explain failed ($rc)" >&2; exit 1; }
  echo "    (exit status $rc: $([[ $rc -eq 0 ]] && echo allowed || echo denied))"
}
explain --from shop/frontend --to shop/backend --port 9000/TCP
explain --from shop/db --to shop/backend --port 9000/TCP

say "the identity handshake: each new TCP connection carried a token from its node in the SYN and SYN-ACK"
"${CTL[@]}" status -o json | python3 -c '
import json, sys
h = json.load(sys.stdin)["handshake"]
c = h["counters"]
print("    mode %s: tokens added %d (signed on first contact %d, MAC under the node-pair key %d), verified %d"
      % (h["mode"], c["tokens_added"], c["tokens_added_signed"], c["tokens_added_mac"], c["verified"]))
print("    admitted on a proven identity %d, denied by policy %d, refused tokens: %s"
      % (c["accepted_authenticated"], c["denied"], h["refused"] or "none"))'

say "signetctl policies shop/backend: what is in force, with counters"
"${CTL[@]}" policies shop/backend | sed 's/^/    /'

say "signetctl flows: the pods' connections, allowed and denied, and the rule that decided each"
"${CTL[@]}" flows | sed 's/^/    /'

say "the same flows in InfluxDB (measurement signet_flow; docs/influxdb.md)"
Q='SELECT sum(connections) AS connections FROM signet_flow WHERE time > now() - 1h GROUP BY local_pod, peer_pod, direction, verdict, "policy"'
for _ in $(seq 50); do
  influx -host 127.0.0.1 -port "$INFLUX_PORT" -database signet -execute "$Q" | grep -q 'verdict=denied' && break
  sleep 0.2
done
echo "    > $Q"
influx -host 127.0.0.1 -port "$INFLUX_PORT" -database signet -format column -execute "$Q" | sed 's/^/    /'
echo "    > SELECT pod, event, ips FROM signet_pod_event"
influx -host 127.0.0.1 -port "$INFLUX_PORT" -database signet -execute 'SELECT pod, event, ips FROM signet_pod_event' | sed 's/^/    /'

say "Prometheus /metrics (read-only, on --metrics-address): flows by policy"
curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | grep '^signet_flow_connections_total' | sed 's/^/    /'

say "the graph of who talks to whom: http://127.0.0.1:$METRICS_PORT/graph (headless Chromium screenshot)"
if [[ -x /usr/bin/chromium ]]; then
  mkdir -p "$T/chrome/home"
  HOME=$T/chrome/home timeout 60 /usr/bin/chromium --headless --no-sandbox --disable-gpu --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync --hide-scrollbars \
    --user-data-dir="$T/chrome/profile" --virtual-time-budget=5000 --window-size=1280,800 \
    --screenshot="$B/demo-graph.png" "http://127.0.0.1:$METRICS_PORT/graph" >/dev/null 2>&1 \
    && echo "    saved $B/demo-graph.png (green: allowed, red: denied, dashed: both in the window)" \
    || echo "    chromium could not render the page (see http://127.0.0.1:$METRICS_PORT/graph while the demo runs)"
fi
kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null || true

say "relabel backend in its manifest, then 'signetctl sync' (no sleeping)"
sed -i 's/app: backend, tier: api/app: backend, tier: api, version: v2/' "$T/manifests/shop.yaml"
"${CTL[@]}" sync
"${CTL[@]}" pods

say "CNI CHECK through libcni"
CNI_PATH=$T/bin CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=backend" \
  "$T/cnitool" -cache-dir "$T/cache" check "$T/net.d" demonet "${TAG}-backend" "/var/run/netns/${TAG}-backend" eth0 \
  && echo "    CHECK ok"

say "deleting pods (CNI DEL), then the registry is empty"
for p in "${PODS[@]}"; do
  CNI_PATH=$T/bin "$T/cnitool" -cache-dir "$T/cache" del "$T/net.d" demonet "${TAG}-$p" "/var/run/netns/${TAG}-$p" eth0 >/dev/null
  ip netns delete "${TAG}-$p"
done
"${CTL[@]}" pods
"${CTL[@]}" status

say "signetd's log"
sed 's/^/    /' "$T/signetd.log"
echo
echo "demo finished; everything it created is being removed."
