#!/usr/bin/env bash
# Builds tidegate for an ARM gateway: `cross/build.sh aarch64` or `cross/build.sh armv7`.
#
# The binary is linked against the glibc of Debian 11 "bullseye" (2.31), so it runs on
# gateways still on bullseye / Raspberry Pi OS 11 and on everything newer. Debian's cross
# compilers (bookworm's gcc) do the compiling; bullseye's cross libc, fetched once from
# deb.debian.org and checked against the sums below, is what the binary is linked with.
#
# Options: --profile NAME (default: dist, the size-optimised release profile).
# Output: target/<rust target>/<profile>/tidegate, and a line with its size and the
# newest glibc symbol version it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

arch="${1:-}"
shift || true
profile=dist
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

case "$arch" in
  aarch64) target=aarch64-unknown-linux-gnu; triple=aarch64-linux-gnu; deb=arm64 ;;
  armv7)   target=armv7-unknown-linux-gnueabihf; triple=arm-linux-gnueabihf; deb=armhf ;;
  *) echo "usage: cross/build.sh aarch64|armv7 [--profile NAME]" >&2; exit 2 ;;
esac

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if ! command -v "$triple-gcc" >/dev/null 2>&1; then
  echo "installing the $triple cross compiler"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "gcc-$triple" "libc6-dev-$deb-cross" >/dev/null
fi
rustup target list --installed | grep -qx "$target" || rustup target add "$target"

# bullseye's cross libc: version, pool path and SHA-256 of each package.
mirror="https://deb.debian.org/debian"
packages_arm64="
libc6-arm64-cross 2.31-9cross4 pool/main/c/cross-toolchain-base/libc6-arm64-cross_2.31-9cross4_all.deb ccd237814281910e72422a6e86a6ef7570105fc69119ff8fc82f6a4827a8a015
libc6-dev-arm64-cross 2.31-9cross4 pool/main/c/cross-toolchain-base/libc6-dev-arm64-cross_2.31-9cross4_all.deb 4b88456f6913474587be547a865c6b42756b2031ca11ddf6285ea6ff4275a48d
linux-libc-dev-arm64-cross 5.10.13-1cross4 pool/main/c/cross-toolchain-base/linux-libc-dev-arm64-cross_5.10.13-1cross4_all.deb 3a5c7920a299c88f69b7d64eb60fb6e65631cd57721a30ed60a2f6b7adf931d3
libgcc-s1-arm64-cross 10.2.1-6cross1 pool/main/g/gcc-10-cross/libgcc-s1-arm64-cross_10.2.1-6cross1_all.deb 2966823a38c100f77786a49f734d240c892fc86c473dbf1c862c23424900fd83
"
packages_armhf="
libc6-armhf-cross 2.31-9cross4 pool/main/c/cross-toolchain-base/libc6-armhf-cross_2.31-9cross4_all.deb 4895ed1617de67ba831836f2f9ecab7878075267b34472328442ebd45268ecb2
libc6-dev-armhf-cross 2.31-9cross4 pool/main/c/cross-toolchain-base/libc6-dev-armhf-cross_2.31-9cross4_all.deb d4131c12320cea918d4c16860cfb5d227182189bfed0faf8ff1bf07f3dda17fe
linux-libc-dev-armhf-cross 5.10.13-1cross4 pool/main/c/cross-toolchain-base/linux-libc-dev-armhf-cross_5.10.13-1cross4_all.deb 3b042ac678796b1446b19da7991859c0cf3035335186ddae3929805864c95b58
libgcc-s1-armhf-cross 10.2.1-6cross1 pool/main/g/gcc-10-cross/libgcc-s1-armhf-cross_10.2.1-6cross1_all.deb 7e1e5dd4576de94c06915af491dc829853a7e37bec5e1c3353b1e29e294916db
"
sysroot="$PWD/target/cross-sysroot/bullseye-$deb"
if [ ! -e "$sysroot/.complete" ]; then
  echo "fetching bullseye's $deb cross libc into $sysroot"
  rm -rf "$sysroot"
  mkdir -p "$sysroot/debs"
  list="packages_$deb"
  while read -r name version path sum; do
    [ -n "$name" ] || continue
    file="$sysroot/debs/$(basename "$path")"
    curl -fsS --retry 3 -o "$file" "$mirror/$path"
    echo "$sum  $file" | sha256sum -c --quiet
    dpkg-deb -x "$file" "$sysroot"
  done <<< "${!list}"
  touch "$sysroot/.complete"
fi
lib="$sysroot/usr/$triple/lib"

# Link against bullseye's libc: its start files first (-B), its libraries first (-L),
# and its linker scripts resolved inside the sysroot.
env_target=$(echo "$target" | tr '[:lower:]-' '[:upper:]_')
export "CARGO_TARGET_${env_target}_LINKER=$triple-gcc"
export "CARGO_TARGET_${env_target}_RUSTFLAGS=-C link-arg=--sysroot=$sysroot -C link-arg=-B$lib -C link-arg=-L$lib -C link-arg=-Wl,-rpath-link,$lib"
export "CC_${target//-/_}=$triple-gcc"
export "CFLAGS_${target//-/_}=-isystem $sysroot/usr/$triple/include"

started=$(date +%s)
cargo build --locked --profile "$profile" --target "$target"
took=$(( $(date +%s) - started ))

binary="target/$target/$profile/tidegate"
size=$(stat -c %s "$binary")
glibc=$("$triple-objdump" -T "$binary" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
echo "built $binary: $((size / 1024 / 1024)).$(( (size % (1024 * 1024)) * 10 / 1024 / 1024 )) MiB, needs ${glibc#GLIBC_} or newer, in ${took}s"
echo "run it here: qemu-$( [ "$arch" = armv7 ] && echo arm || echo aarch64 )-static -L $sysroot/usr/$triple $binary --version"
