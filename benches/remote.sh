#!/usr/bin/env bash
# Remote cache benchmark, side by side in one run: CLIENTS concurrent clients storing and
# fetching 1 MiB artifacts against `cairn serve` and against `turborepo-remote-cache` (npm,
# ducktors), alternating A B A B. Reports throughput, p50/p99 latency and each server's peak
# memory (VmHWM).
# Usage: benches/remote.sh [CLIENTS] [ROUNDS] [PAIRS]      (defaults 32 20 3)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
clients=${1:-32} rounds=${2:-20} pairs=${3:-3}
work=${WORK:-/tmp/cairn-remote-bench}
rm -rf "$work" && mkdir -p "$work"
token=bench-token-0123456789
cargo build --release --manifest-path "$repo/Cargo.toml" >&2
cargo bench --manifest-path "$repo/Cargo.toml" --bench remote_load --no-run >&2 2>/dev/null || true
load=$(ls -t "$repo"/target/release/deps/remote_load-* | grep -v '\.d$' | head -1)
if [ ! -f "${TRC_DIR:-$work/../trc}/node_modules/turborepo-remote-cache/dist/cli.js" ]; then
  mkdir -p "${TRC_DIR:-$work/../trc}" && npm install --silent --no-audit --no-fund --prefix "${TRC_DIR:-$work/../trc}" turborepo-remote-cache@2.12.0 >&2
fi
trc="${TRC_DIR:-$work/../trc}/node_modules/turborepo-remote-cache/dist/cli.js"

echo "write bench $token" > "$work/tokens"
"$repo/target/release/cairn" serve --listen 127.0.0.1:18181 --store "$work/cairn" --tokens "$work/tokens" --quota 100GiB 2>"$work/cairn.log" &
cairn_pid=$!
TURBO_TOKEN=$token STORAGE_PROVIDER=local STORAGE_PATH="$work/trc-store" PORT=18182 LOG_LEVEL=warn \
  BODY_LIMIT=104857600 node "$trc" >"$work/trc.log" 2>&1 &
trc_pid=$!
trap 'kill $cairn_pid $trc_pid 2>/dev/null || true' EXIT
sleep 3
for _ in $(seq "$pairs"); do
  "$load" http://127.0.0.1:18182 "$token" "$clients" "$rounds" turborepo-remote-cache
  "$load" http://127.0.0.1:18181 "$token" "$clients" "$rounds" cairn-serve
done | tee "$work/results.jsonl"
echo "peak memory: cairn serve $(grep VmHWM /proc/$cairn_pid/status | awk '{print $2/1024 " MiB"}'), turborepo-remote-cache (node) $(grep VmHWM /proc/$trc_pid/status | awk '{print $2/1024 " MiB"}')"
