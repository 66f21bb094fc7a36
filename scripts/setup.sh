#!/usr/bin/env bash
# Installs every Debian package Staple needs to build, run and test, then configures and builds.
# Safe to run again: apt-get only installs what is missing, and the build is incremental.
# Usage: scripts/setup.sh [build-dir]   (default: build)
set -euo pipefail
cd "$(dirname "$0")/.."

# libFuzzer's runtime is packaged per clang version (clang -> clang-14 -> libclang-rt-14-dev).
# Empty before the first `apt-get update` of a fresh machine; scripts/fuzz.sh then runs this again.
fuzzer_runtime_package() {
  local version
  version=$(apt-cache depends clang 2> /dev/null |
    sed -n 's/.*Depends: clang-\([0-9][0-9]*\)$/\1/p' | head -n 1)
  if [ -n "$version" ]; then echo "libclang-rt-$version-dev"; fi
}

packages=(
  build-essential cmake ninja-build pkg-config git ca-certificates curl
  libboost-dev libcurl4-openssl-dev libsqlite3-dev sqlite3 nlohmann-json3-dev
  libspdlog-dev libfmt-dev libcli11-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libhiredis-dev libpq-dev libssl-dev libjemalloc-dev libtomlplusplus-dev
)
if [ "${STAPLE_SETUP_TEST:-0}" = 1 ]; then
  packages+=(redis-server postgresql nginx-light libnginx-mod-http-echo wrk procps)
  # tests/packaging: systemd-analyze verifies packaging/staple.service.
  packages+=(systemd)
  # tests/sdk/playground_browser.test.js: the playground in a real browser.
  packages+=(chromium)
  # scripts/fuzz.sh: clang and libFuzzer's runtime (Debian ships it in libclang-rt-<version>-dev).
  packages+=(clang $(fuzzer_runtime_package))
  # Node 20 may already come from another source; Debian's nodejs/npm only when there is none.
  command -v node >/dev/null 2>&1 || packages+=(nodejs)
  command -v npm >/dev/null 2>&1 || packages+=(npm)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  echo "setup: installing ${missing[*]}"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

build_dir="${1:-build}"
build_type="${STAPLE_BUILD_TYPE:-Release}"
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE="$build_type" ${STAPLE_CMAKE_ARGS:-}
# STAPLE_BUILD_TARGET: build only that target (scripts/run.sh builds just the binary it runs).
cmake --build "$build_dir" -j "$(nproc)" ${STAPLE_BUILD_TARGET:+--target "$STAPLE_BUILD_TARGET"}
