#!/usr/bin/env bash
# Installs what is missing (Debian packages), builds Staple, and starts the gateway in the
# embedded default mode: SQLite at ./instance/chat_history.db and in-process rate limits.
# Extra arguments go to `staple serve` (see `build/staple serve --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh build
exec build/staple serve "$@"
