#!/usr/bin/env bash
# Toolchain probes on a warm run: the Elixir example's verify pipeline (deps, compile,
# format: all hits) with its two toolchains (`elixir --version`, `erl ...`), against the same
# pipeline with the toolchains removed, N runs each (default 9), interleaved; medians. The
# probes' cache is in the store: the first run probes (traced), the next ones reuse.
#
# Usage: benches/probes.sh [N]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
runs=${1:-9}
command -v elixir >/dev/null || { echo "SKIPPED: elixir is not installed"; exit 0; }
cargo build --release --manifest-path "$repo/Cargo.toml" >&2
cairn="$repo/target/release/cairn"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$repo/examples/automata-signal" "$work/with"
rm -rf "$work/with/deps" "$work/with/_build" "$work/with/cache"
# The same pipeline without toolchains: every `toolchains: [...]` on a step, and the block.
cp -r "$work/with" "$work/without"
python3 - "$work/without/pipelines/verify.ron" <<'PY'
import re, sys
p = sys.argv[1]
s = open(p).read()
s = re.sub(r'\n    toolchains: \{.*?\n    \},', '', s, flags=re.S)
s = re.sub(r'toolchains: \[[^\]]*\],?', '', s)
open(p, 'w').write(s)
PY
steps=(deps compile format)
for d in with without; do
  (cd "$work/$d" && "$cairn" build -q -p pipelines/verify.ron --summary none "${steps[@]}") >/dev/null 2>&1
done
run() { # dir -> seconds
  local t0 t1
  t0=$(date +%s%N)
  (cd "$work/$1" && "$cairn" build -q -p pipelines/verify.ron --summary none "${steps[@]}") >/dev/null 2>&1
  t1=$(date +%s%N)
  echo "scale=4; ($t1 - $t0) / 1000000000" | bc
}
a=(); b=()
for _ in $(seq 1 "$runs"); do a+=("$(run with)"); b+=("$(run without)"); done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
m_a=$(median "${a[@]}"); m_b=$(median "${b[@]}")
# What a probe costs when it runs: the two commands themselves.
t0=$(date +%s%N); elixir --version >/dev/null 2>&1; erl -noshell -eval 'io:put_chars(erlang:system_info(otp_release)), halt().' >/dev/null 2>&1; t1=$(date +%s%N)
echo "warm run, 3 hits, runs: $runs"
echo "  with toolchains (probes cached): $m_a s"
echo "  without toolchains:              $m_b s"
echo "  ratio:                           $(echo "scale=2; $m_a / $m_b" | bc)"
echo "  the two probes run uncached:     $(echo "scale=3; ($t1 - $t0) / 1000000000" | bc) s"
