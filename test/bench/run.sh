#!/usr/bin/env bash
# Runs signet's benchmarks against a build folder and prints their figures.
# bash test/bench/run.sh [BUILD_DIR]
set -euo pipefail
B=${1:-build}
bridge_args=()
[[ $(id -u) -eq 0 && -x /usr/lib/cni/bridge ]] && bridge_args=(--bridge /usr/lib/cni/bridge)
"$B/test/bench/bench_cni_add" --plugin "$B/cni-plugin/signet" --signetd "$B/controller/signetd" \
  --iterations "${BENCH_ITERATIONS:-300}" "${bridge_args[@]}"
echo
"$B/test/bench/bench_policy"
echo
# Identity handshake building blocks: per-operation crypto costs, packet
# rewriting, and the NFQUEUE round trip (the whole handshake in signetd:
# bench_handshake.py below).
"$B/test/identity/bench_identity"
echo
"$B/test/datapath/bench_packet"
echo
if [[ $(id -u) -eq 0 ]]; then
  "$B/test/datapath/bench_nfqueue"
  echo
  /usr/bin/python3 test/bench/bench_datapath.py "$(cd "$B" && pwd)"
  echo
  /usr/bin/python3 test/bench/bench_handshake.py "$(cd "$B" && pwd)"
else
  echo "bench_nfqueue, bench_datapath: NOT ROOT: the datapath benchmarks (netns, nftables, NFQUEUE, iperf3) are SKIPPED"
fi
