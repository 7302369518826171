#!/usr/bin/env bash
# Runs a binary built by cross/build.sh under qemu-user, with Debian 11's libraries as
# its root: `cross/verify.sh aarch64` or `cross/verify.sh armv7` (after build.sh).
# Checks --version, `check` on the reference config, and a 10 s demo.
set -euo pipefail
cd "$(dirname "$0")/.."

arch="${1:-}"
profile="${2:-dist}"
case "$arch" in
  aarch64) target=aarch64-unknown-linux-gnu; triple=aarch64-linux-gnu; deb=arm64; qemu=qemu-aarch64-static ;;
  armv7)   target=armv7-unknown-linux-gnueabihf; triple=arm-linux-gnueabihf; deb=armhf; qemu=qemu-arm-static ;;
  *) echo "usage: cross/verify.sh aarch64|armv7 [profile]" >&2; exit 2 ;;
esac
if ! command -v "$qemu" >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends qemu-user-static >/dev/null
fi
binary="target/$target/$profile/tidegate"
root="target/cross-sysroot/bullseye-$deb/usr/$triple"
[ -x "$binary" ] || { echo "no $binary: run cross/build.sh $arch first" >&2; exit 1; }
run() { "$qemu" -L "$root" "$binary" "$@"; }

echo "== $binary under $qemu with bullseye's glibc ($(ls "$root"/lib/libc-*.so | sed 's/.*libc-//; s/.so//'))"
run --version

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The reference config, with its state in a scratch directory; its secrets are comments.
sed "s|^state_dir = .*|state_dir = \"$work/state\"|" config/tidegate.toml > "$work/tidegate.toml"
run check --skip-models -c "$work/tidegate.toml" > "$work/check.txt"
echo "check: $(wc -l < "$work/check.txt") plan lines, exit 0"

started=$(date +%s)
run demo --duration 10s --interval 200ms --out "$work/demo.ndjson" > "$work/demo.out" 2> "$work/demo.err"
records=$(wc -l < "$work/demo.ndjson")
scored=$(grep -c '"anomaly"' "$work/demo.ndjson" || true)
echo "demo: $records records in 10 s, $scored scored by the model, $(( $(date +%s) - started )) s wall"
if grep -q "ERROR" "$work/demo.err"; then
  grep "ERROR" "$work/demo.err" >&2
  exit 1
fi
[ "$records" -gt 0 ] && [ "$scored" -gt 0 ]
echo "ok"
