#!/usr/bin/env bash
# Side-by-side benchmark of cairn against turbo, git status, b3sum and tar+zstd on the shared
# benchmark trees (50 packages x 400 files, and a 30,000-file ~300 MB Elixir-like deps folder).
#
# Usage: benches/run.sh [run-anchors.sh options...]     e.g. benches/run.sh -n 3
# Needs: npm (turbo is installed by the harness), git, b3sum (Debian package `b3sum`), zstd.
# Results: a table on stdout (ratios cairn/turbo pair by pair), raw samples in /tmp/cairn-bench.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
shared=${CAIRN_SHARED:-$repo/../shared}
cargo build --release --manifest-path "$repo/Cargo.toml" >&2
cairn="$repo/target/release/cairn"
exec "$shared/bench/run-anchors.sh" \
  --setup-b "$here/write-pipeline.sh {tree} > {tree}/cairn.ron" \
  "$@" \
  '' "$cairn build -q -p {tree}/cairn.ron --cache-dir {cache}"
