#!/usr/bin/env bash
# Sets everything up and runs signet's whole test suite: unit tests, fuzz
# corpora as regression tests, the same under ASan+UBSan, short libFuzzer
# runs, the integration tests with real netns/CNI runtimes (as root), and the
# benchmarks. Exit status is non-zero if anything failed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
FUZZ_SECONDS=${FUZZ_SECONDS:-4}  # per libFuzzer target; 18 targets

bash scripts/install-deps.sh || { echo "test: dependency installation failed" >&2; exit 1; }

total_pass=0
total_fail=0
total_skip=0
failed_steps=()
failed_tests_log=$(mktemp)
trap 'rm -f "$failed_tests_log"' EXIT

count_meson() {  # $1 = build dir: adds its last testlog to the totals
  local log="$1/meson-logs/testlog.json"
  [[ -f "$log" ]] || return 0
  read -r p f s < <(python3 - "$log" "$failed_tests_log" <<'PY'
import json, sys
p = f = s = 0
with open(sys.argv[2], "a") as out:
    for line in open(sys.argv[1]):
        r = json.loads(line)
        res = r.get("result")
        if res == "OK" or res == "EXPECTEDFAIL": p += 1
        elif res == "SKIP": s += 1
        else:
            f += 1
            # What the summary repeats (CI shows the end of the output): the
            # test, its result, and its own FAIL lines (else its last lines).
            text = (r.get("stdout") or "") + (r.get("stderr") or "")
            lines = [l for l in text.splitlines() if l.startswith("FAIL")] or text.splitlines()[-12:]
            out.write(f"failed test: {r.get('name')} ({res}, {r.get('duration', 0):.0f} s)\n")
            out.writelines(f"    {l[:400]}\n" for l in lines[:12])
print(p, f, s)
PY
)
  total_pass=$((total_pass + p)); total_fail=$((total_fail + f)); total_skip=$((total_skip + s))
}

step() {  # $1 = name, rest = command
  local name=$1; shift
  local t0=$SECONDS
  echo
  echo "=== $name"
  if "$@"; then echo "=== $name: ok ($((SECONDS - t0)) s)"; else echo "=== $name: FAILED ($((SECONDS - t0)) s)"; failed_steps+=("$name"); fi
}

build() {  # $1 = dir, $2 = ninja targets ("" = all), rest = meson options
  local dir=$1 targets=$2; shift 2
  if [[ ! -f "$dir/build.ninja" ]]; then
    meson setup "$dir" "$@" >"$dir.setup.log" 2>&1 || { cat "$dir.setup.log"; return 1; }
  fi
  # shellcheck disable=SC2086
  ninja -C "$dir" $targets >"$dir.ninja.log" 2>&1 || { grep -A30 -m3 FAILED "$dir.ninja.log" || tail -n 80 "$dir.ninja.log"; return 1; }
}

# The targets the sanitizer and fuzzing builds need (not the whole tree: CI has 2 cores).
targets_matching() {  # $1 = build dir, $2 = regex on target paths
  ninja -C "$1" -t targets all 2>/dev/null | sed -n 's/^\([^:]*\): \(cpp_LINKER\|CPP_LINKER\|cpp_linker\).*/\1/p' \
    | grep -E "$2" | tr '\n' ' '
}

mtest() {  # $1 = dir, rest = meson test options
  local dir=$1; shift
  meson test -C "$dir" --print-errorlogs "$@"
  local rc=$?
  count_meson "$dir"
  return $rc
}

# -O2 without debug info: what the benchmarks measure, and a third
# less to compile and link on CI's 2 cores (the demo's build keeps -g).
step "build" build build "" -Doptimization=2 -Ddebug=false
step "unit tests" mtest build --suite unit --suite fuzz-regression

# The executables the tests of these suites run (from meson's introspection).
suite_targets() {  # $1 = build dir, rest = suites
  /usr/bin/python3 - "$@" <<'PY'
import json, os, subprocess, sys
bdir, suites = sys.argv[1], set(sys.argv[2:])
root = os.path.realpath(bdir)
out = set()
for t in json.loads(subprocess.check_output(["meson", "introspect", "--tests", bdir])):
    if not suites & {s.split(":")[-1] for s in t["suite"]}:
        continue
    for c in t["cmd"]:
        p = os.path.realpath(c)
        if p.startswith(root + "/") and os.path.basename(p) != "meson-private":
            out.add(os.path.relpath(p, root))
print(" ".join(sorted(out)))
PY
}

# One clang build with ASan+UBSan serves both the libFuzzer targets and the
# unit tests under the sanitizers (the libraries are compiled once).
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:suppressions=$ROOT/test/ubsan.supp
export ASAN_OPTIONS=detect_leaks=1
sanitizer_build() {
  if [[ ! -f build-fuzz/build.ninja ]]; then
    # Line tables only (-gline-tables-only, no full debug info): the sanitizers'
    # reports keep file:line, the build is faster.
    CXX=clang++ meson setup build-fuzz -Dfuzzing=true -Db_sanitize=address,undefined -Db_lundef=false \
      -Ddebug=false -Dcpp_args=-gline-tables-only \
      >build-fuzz.setup.log 2>&1 || { cat build-fuzz.setup.log; return 1; }
  fi
  local fuzz units
  fuzz=$(targets_matching build-fuzz '^test/fuzz/fuzz_')
  [[ -n "$fuzz" ]] || { echo "no fuzz targets found"; return 1; }
  units=$(suite_targets build-fuzz unit) || return 1
  [[ -n "$units" ]] || { echo "no unit test executables found"; return 1; }
  # signetd and its tools too: the handshake's integration tests run against them below.
  build build-fuzz "$fuzz $units controller/signetd controller/signetctl cni-plugin/signet test/datapath/handshake_mint"
}
step "sanitizer build (clang: ASan+UBSan, libFuzzer)" sanitizer_build
step "unit tests under ASan+UBSan" mtest build-fuzz --no-rebuild --suite unit

fuzz_run() {
  local rc=0 n=0
  for t in $(find build-fuzz/test/fuzz -maxdepth 1 -type f -executable -name 'fuzz_*' | sort); do
    local name; name=$(basename "$t")
    local corpus="test/fuzz/corpus/${name#fuzz_}"
    local work; work=$(mktemp -d)
    cp -r "$corpus"/. "$work"/
    n=$((n + 1))
    echo "--- $name: ${FUZZ_SECONDS}s"
    if "$t" -max_total_time="$FUZZ_SECONDS" -print_final_stats=0 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="build-fuzz/$name-" "$work" >"build-fuzz/$name.log" 2>&1; then
      total_pass=$((total_pass + 1)); tail -n 1 "build-fuzz/$name.log"
    else
      total_fail=$((total_fail + 1)); rc=1; tail -n 40 "build-fuzz/$name.log"
    fi
    rm -rf "$work"
  done
  if [[ $n -eq 0 ]]; then echo "no libFuzzer targets were built: nothing was fuzzed"; total_fail=$((total_fail + 1)); return 1; fi
  return $rc
}
# The identity handshake end to end (real packets, forged and replayed tokens)
# with signetd, the plugin and the tools from the sanitizer build; any report
# of ASan, LeakSanitizer or UBSan (written to files, whoever printed it) fails.
handshake_sanitized() {
  local logs rc=0 t
  logs=$(mktemp -d)
  for t in test_handshake test_handshake_attacks test_handshake_enforce; do
    if SIGNET_BUILD_DIR=$ROOT/build-fuzz ASAN_OPTIONS=detect_leaks=1:log_path=$logs/asan \
        UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:suppressions=$ROOT/test/ubsan.supp:log_path=$logs/ubsan \
        python3 "test/integration/$t.py" >"build-fuzz/$t.log" 2>&1; then
      total_pass=$((total_pass + 1)); tail -n 1 "build-fuzz/$t.log"
    else
      total_fail=$((total_fail + 1)); rc=1; grep -E '^(FAIL|===)' "build-fuzz/$t.log"; tail -n 60 "build-fuzz/$t.log"
    fi
  done
  if compgen -G "$logs/*" >/dev/null; then
    echo "sanitizer reports:"; head -n 80 "$logs"/*; total_fail=$((total_fail + 1)); rc=1
  fi
  rm -rf "$logs"
  return $rc
}

# Each target first runs its whole corpus (the regression), then fuzzes.
step "libFuzzer runs" fuzz_run

if [[ $(id -u) -eq 0 ]]; then
  step "integration tests (real netns, CNI chain, runtimes)" mtest build --suite integration
  step "NetworkPolicy conformance (manifest folder and Kubernetes API sources)" mtest build --suite conformance
  step "NetworkPolicy conformance through ClusterIP Services (kube-proxy iptables and nftables modes)" \
    mtest build --suite conformance-services
  step "identity handshake tests against signetd under ASan+UBSan" handshake_sanitized
else
  echo
  echo "!!! NOT ROOT: the integration tests (real netns, CNI runtimes) are SKIPPED. Run as root to test them. !!!"
fi

step "benchmarks" bash test/bench/run.sh build

echo
echo "=== summary"
if [[ ${#failed_steps[@]} -gt 0 ]]; then
  printf 'failed step: %s\n' "${failed_steps[@]}"
fi
cat "$failed_tests_log"
echo "$total_pass passed, $total_fail failed, $total_skip skipped (${SECONDS} s)"
[[ ${#failed_steps[@]} -eq 0 && $total_fail -eq 0 ]]
