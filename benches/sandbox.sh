#!/usr/bin/env bash
# Sandbox overhead per step: the same 40 trivial cacheable steps (each reads 3 inputs, writes
# one output) forced to run, under Landlock (`--sandbox enforce`) and without (`--sandbox
# off`), alternating, N times each (default 9). Prints medians and the overhead per step.
#
# Usage: benches/sandbox.sh [N]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
runs=${1:-9}
cargo build --release --manifest-path "$repo/Cargo.toml" >&2
cairn="$repo/target/release/cairn"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/pipelines" "$work/src"
steps=40
{
  echo 'Pipeline(name: "bench", steps: {'
  for i in $(seq 1 $steps); do
    printf 'src/%d/a.txt\n' "$i" >/dev/null
    mkdir -p "$work/src/$i"
    for f in a b c; do echo "$i$f" > "$work/src/$i/$f.txt"; done
    echo "  \"s$i\": (run: \"cat src/$i/a.txt src/$i/b.txt src/$i/c.txt > out/$i.txt\", inputs: [\"src/$i/**\"], outputs: [\"out/$i.txt\"]),"
  done
  echo '})'
} > "$work/pipelines/b.ron"
mkdir -p "$work/out"
force=()
for i in $(seq 1 $steps); do force+=(--force "s$i"); done
run() { # mode -> seconds
  local t0 t1
  t0=$(date +%s%N)
  (cd "$work" && "$cairn" build -q -j 1 -p pipelines/b.ron --summary none --sandbox "$1" "${force[@]}") >/dev/null 2>&1
  t1=$(date +%s%N)
  echo "scale=4; ($t1 - $t0) / 1000000000" | bc
}
run enforce >/dev/null; run off >/dev/null # warm up
on=(); off=()
for _ in $(seq 1 "$runs"); do on+=("$(run enforce)"); off+=("$(run off)"); done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
m_on=$(median "${on[@]}"); m_off=$(median "${off[@]}")
echo "steps: $steps (run one at a time), runs: $runs"
echo "sandboxed:   $m_on s"
echo "unsandboxed: $m_off s"
echo "ratio:       $(echo "scale=3; $m_on / $m_off" | bc)"
echo "overhead per step: $(echo "scale=2; ($m_on - $m_off) * 1000 / $steps" | bc) ms"
