#!/usr/bin/env bash
# Build a static cairn release binary and its archive with a SHA-256 checksum.
#
# Usage: scripts/release-build.sh [TARGET] [OUT_DIR]
#   TARGET   x86_64-unknown-linux-musl, aarch64-unknown-linux-musl (static: musl), or
#            x86_64-unknown-linux-gnu / aarch64-unknown-linux-gnu (static: glibc with
#            +crt-static, for machines without the musl target), or *-apple-darwin
#            (macOS links libSystem dynamically, as every macOS binary must).
#            Default: the musl target of this machine when installed, else its gnu target.
#   OUT_DIR  where the archive goes (default: dist/).
#
# Writes OUT_DIR/cairn-VERSION-TARGET.tar.gz and OUT_DIR/cairn-VERSION-TARGET.tar.gz.sha256,
# and checks that a Linux binary is static (ldd) and runs (`cairn --version`).
set -euo pipefail
cd "$(dirname "$0")/.."
arch=$(uname -m)
case "$(uname -s)" in
  Linux) os=linux ;;
  Darwin) os=darwin ;;
  *) echo "error: unsupported OS $(uname -s)" >&2; exit 2 ;;
esac
if [ $# -ge 1 ] && [ -n "$1" ]; then
  target=$1
elif [ "$os" = darwin ]; then
  target="$arch-apple-darwin"; [ "$arch" = arm64 ] && target=aarch64-apple-darwin
elif rustup target list --installed 2>/dev/null | grep -qx "$arch-unknown-linux-musl"; then
  target="$arch-unknown-linux-musl"
else
  target="$arch-unknown-linux-gnu"
fi
out=${2:-dist}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/release-static}
case "$target" in
  *-linux-musl)
    rustup target list --installed | grep -qx "$target" || rustup target add "$target"
    # rusqlite and zstd compile C: musl's compiler wrapper (Debian: musl-tools).
    command -v musl-gcc >/dev/null || { echo "error: musl-gcc not found (apt-get install musl-tools)" >&2; exit 2; }
    export CC_x86_64_unknown_linux_musl=musl-gcc CC_aarch64_unknown_linux_musl=musl-gcc
    export RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static"
    ;;
  *-linux-gnu)
    export RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static"
    ;;
esac
echo "== cargo build --release --locked --target $target" >&2
cargo build --release --locked --target "$target" >&2
bin="$CARGO_TARGET_DIR/$target/release/cairn"
if [ "$os" = linux ]; then
  if ldd "$bin" 2>&1 | grep -q '=>'; then
    echo "error: $bin is not static:" >&2; ldd "$bin" >&2; exit 1
  fi
fi
"$bin" --version >&2
name="cairn-$version-$target"
mkdir -p "$out"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir "$stage/$name"
cp "$bin" README.md "$stage/$name/"
tar -C "$stage" -czf "$out/$name.tar.gz" "$name"
(cd "$out" && { sha256sum "$name.tar.gz" 2>/dev/null || shasum -a 256 "$name.tar.gz"; } > "$name.tar.gz.sha256")
echo "$out/$name.tar.gz"
