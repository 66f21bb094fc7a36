#!/usr/bin/env bash
# `cmake --install` puts a working staple and a valid systemd unit in place.
# Usage: install_test.sh BUILD_DIR EXPECTED_VERSION
set -euo pipefail
build_dir="$1"
version="$2"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

prefix=/opt/staple-test
DESTDIR="$work/root" cmake --install "$build_dir" --prefix "$prefix" > "$work/install.log"
binary="$work/root$prefix/bin/staple"
unit="$work/root$prefix/lib/systemd/system/staple.service"
fail() { echo "install_test: $*" >&2; cat "$work/install.log" >&2; exit 1; }

[ -x "$binary" ] || fail "no executable $binary"
[ -f "$unit" ] || fail "no unit $unit"
shown=$("$binary" --version)
[ "$shown" = "staple $version" ] || fail "--version printed '$shown', expected 'staple $version'"
grep -qx "ExecStart=$prefix/bin/staple serve" "$unit" || fail "ExecStart does not run $prefix/bin/staple"
for option in DynamicUser=yes StateDirectory=staple WorkingDirectory=/var/lib/staple \
  NoNewPrivileges=yes ProtectSystem=strict; do
  grep -qx "$option" "$unit" || fail "the unit lacks $option"
done

# systemd's own check of the unit, with ExecStart pointing at the binary as installed.
sed "s|^ExecStart=.*|ExecStart=$binary serve|" "$unit" > "$work/staple.service"
systemd-analyze verify "$work/staple.service" > "$work/verify.log" 2>&1 ||
  { cat "$work/verify.log" >&2; fail "systemd-analyze verify failed"; }
if [ -s "$work/verify.log" ]; then
  cat "$work/verify.log" >&2
  fail "systemd-analyze verify complained"
fi
echo "install_test: ok ($shown, $(wc -l < "$unit") unit lines)"
