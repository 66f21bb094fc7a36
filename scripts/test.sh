#!/usr/bin/env bash
# Installs everything the tests need (Debian packages, the pinned npm packages), builds Staple,
# and runs every test: unit, contract, integration (real binaries over HTTP, real SQLite, Redis and
# PostgreSQL servers the tests start themselves) and the official OpenAI SDK client test.
set -euo pipefail
cd "$(dirname "$0")/.."
STAPLE_SETUP_TEST=1 scripts/setup.sh build

if [ -f tests/sdk/package-lock.json ]; then
  echo "test: installing the pinned npm packages of tests/sdk"
  npm ci --prefix tests/sdk --no-audit --no-fund --loglevel=error
  # The SDK test is registered when node_modules exists: configure again to pick it up.
  cmake -S . -B build > /dev/null
fi

ctest --test-dir build --output-on-failure -j "$(nproc)" --timeout 300

# Optionally (CI does it) everything again under AddressSanitizer and UndefinedBehaviorSanitizer:
# memory errors, leaks and undefined behaviour fail the run, in the unit and integration tests
# (the latter start the sanitized `staple` binary), including those labelled redis or postgres
# because they start a server of their own.
if [ "${STAPLE_TEST_SANITIZERS:-0}" = 1 ]; then
  echo "test: sanitizer build (build-asan)"
  # -O1 -g1: the level the sanitizers' documentation suggests, with line tables for the reports'
  # stack traces. It compiles this tree about twice as fast as -O2 -g (one test file: 98 s -> 44 s),
  # which is most of CI's time. The micro benchmarks are not built: they run from `build`.
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" -DSTAPLE_BUILD_BENCH=OFF \
    -DSTAPLE_SANITIZE=address,undefined -DCMAKE_CXX_FLAGS=-fno-sanitize-recover=undefined
  cmake --build build-asan -j "$(nproc)"
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --test-dir build-asan --output-on-failure -j "$(nproc)" --timeout 600 \
      -L 'unit|integration|redis|postgres'
fi

# Optionally (CI does it) the fuzz targets of tests/fuzz, built with clang in build-fuzz, each for
# a few seconds over its seed corpus: a regression check for the parsers; long runs are for
# scripts/fuzz.sh by hand (README: Fuzzing).
if [ "${STAPLE_TEST_FUZZ:-0}" = 1 ]; then
  echo "test: fuzz targets (build-fuzz)"
  scripts/fuzz.sh "${STAPLE_TEST_FUZZ_SECONDS:-10}"
fi

# The micro benchmarks only have to run (timing belongs in bench/, not in tests).
micro_bench=$(find build -maxdepth 2 -name staple_micro_bench -type f | head -n 1)
if [ -n "$micro_bench" ]; then
  echo "test: micro benchmark smoke run"
  "$micro_bench" --benchmark_min_time=0.001 > /dev/null
fi
