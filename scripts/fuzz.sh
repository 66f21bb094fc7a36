#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz with clang (in build-fuzz) and runs each one, one after
# the other, for a while over its seed corpus (tests/fuzz/corpus/<target>). Fails when any target
# crashes, leaks, hangs or breaks one of its invariants.
#
# Usage: scripts/fuzz.sh [seconds-per-target] [target ...]
#   seconds-per-target  default 20 (CI); run it with 3600 for an hour each
#   target              e.g. sse limits (default: every tests/fuzz/*_fuzz.cpp)
# Environment:
#   STAPLE_FUZZ_CORPUS_OUT  directory that keeps the inputs the runs add (default: a temporary
#                           directory, removed at the end); the committed corpus is never written
#
# A failing input is saved as build-fuzz/crashes/<target>-crash-<sha1> (or leak-, timeout-,
# oom-); replay it with build-fuzz/fuzz/<target>_fuzz <file>. Turn it into a regression seed
# (tests/fuzz/corpus/<target>/) and a unit test once fixed.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-20}"
[ $# -gt 0 ] && shift
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for source in tests/fuzz/*_fuzz.cpp; do
    name=$(basename "$source" .cpp)
    targets+=("${name%_fuzz}")
  done
fi

# clang and libFuzzer's runtime come with the test packages of scripts/setup.sh.
if ! command -v clang++ > /dev/null 2>&1 ||
  [ -z "$(clang++ -print-file-name=libclang_rt.fuzzer-x86_64.a 2> /dev/null | grep /)" ] ||
  ! echo 'extern "C" int LLVMFuzzerTestOneInput(const char*, unsigned long) { return 0; }' |
  clang++ -x c++ -fsanitize=fuzzer - -o /dev/null > /dev/null 2>&1; then
  echo "fuzz: clang or libFuzzer is missing; installing the test packages (scripts/setup.sh)"
  STAPLE_SETUP_TEST=1 scripts/setup.sh build
fi

launcher=()
command -v ccache > /dev/null 2>&1 && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
echo "fuzz: building the fuzz targets (build-fuzz)"
CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DSTAPLE_FUZZ=ON -DSTAPLE_BUILD_TESTS=OFF -DSTAPLE_BUILD_BENCH=OFF "${launcher[@]}" > /dev/null
cmake --build build-fuzz -j "$(nproc)" --target staple_fuzz

work="${STAPLE_FUZZ_CORPUS_OUT:-}"
if [ -z "$work" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
fi
mkdir -p build-fuzz/crashes build-fuzz/fuzz-logs

failed=()
for target in "${targets[@]}"; do
  binary="build-fuzz/fuzz/${target}_fuzz"
  seeds="tests/fuzz/corpus/$target"
  [ -x "$binary" ] || { echo "fuzz: no target $target"; exit 2; }
  mkdir -p "$work/$target"
  log="build-fuzz/fuzz-logs/$target.log"
  echo "fuzz: $target for ${seconds}s"
  # New inputs go to the first corpus directory (the temporary one); -jobs=1: one process.
  if ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
    "$binary" "$work/$target" "$seeds" -max_total_time="$seconds" -timeout=10 \
    -rss_limit_mb=2048 -max_len=16384 -print_final_stats=1 \
    -artifact_prefix="build-fuzz/crashes/$target-" > "$log" 2>&1; then
    grep -E '^stat::number_of_executed_units|^#[0-9]+.*DONE' "$log" | tail -1 | sed "s/^/fuzz: $target: /"
  else
    echo "fuzz: $target FAILED (log: $log)"
    grep -E 'ERROR|invariant failed|SUMMARY|Test unit written' "$log" | head -n 8 | sed 's/^/  /'
    failed+=("$target")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: failures in ${failed[*]}; inputs in build-fuzz/crashes/"
  exit 1
fi
echo "fuzz: all ${#targets[@]} targets ran ${seconds}s without a failure"
