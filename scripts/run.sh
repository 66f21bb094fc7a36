#!/usr/bin/env bash
# Installs what is missing (Debian packages), builds the staple binary, and starts the gateway in
# the embedded default mode: SQLite at ./instance/chat_history.db and in-process rate limits.
# Extra arguments go to `staple serve` (see `build/staple serve --help`).
#
# With no upstream configured (no OPENAI_API_KEY, OPENAI_BASE_URL or STAPLE_UPSTREAMS in the
# environment, ./.env or the arguments) it serves with the built-in demo upstream (--demo), an
# echo, and says so: everything can be tried before a key is at hand.
set -euo pipefail
cd "$(dirname "$0")/.."
STAPLE_BUILD_TARGET=staple scripts/setup.sh build

configured() {
  local name
  for name in OPENAI_API_KEY OPENAI_BASE_URL STAPLE_UPSTREAMS STAPLE_DEMO; do
    [ -n "${!name:-}" ] && return 0
    [ -f .env ] && grep -Eq "^[[:space:]]*(export[[:space:]]+)?$name=." .env && return 0
  done
  local arg
  for arg in "$@"; do
    case "$arg" in
      --api-key* | --base-url* | --upstreams* | --demo* | --env-file*) return 0 ;;
    esac
  done
  return 1
}

if ! configured "$@"; then
  echo "run: no OPENAI_API_KEY configured: serving with the built-in demo upstream (echoes)"
  exec build/staple serve --demo "$@"
fi
exec build/staple serve "$@"
