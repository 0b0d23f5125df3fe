#!/usr/bin/env bash
# Sandbox overhead per step, by level. Part 1: the same 40 trivial cacheable steps (each reads
# 3 inputs, writes one output) forced to run with `--sandbox off`, `enforce` (Landlock),
# `report` (seccomp tracing) and `strict` (both), interleaved, N times each (default 9).
# Part 2 (when mix is installed): one `mix compile --force` of a generated 60-module project
# as a step, off vs enforce vs report. Prints medians, ratios against `off`, and the
# overhead per step.
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
for m in off enforce report strict; do run $m >/dev/null; done # warm up
declare -A t
for _ in $(seq 1 "$runs"); do
  for m in off enforce report strict; do t[$m]="${t[$m]:-} $(run $m)"; done
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# shellcheck disable=SC2086
m_off=$(median ${t[off]})
echo "part 1: $steps trivial steps (run one at a time), runs: $runs"
echo "  off:     $m_off s"
for m in enforce report strict; do
  # shellcheck disable=SC2086
  mm=$(median ${t[$m]})
  echo "  $m: $mm s  ratio $(echo "scale=3; $mm / $m_off" | bc)  overhead per step $(echo "scale=2; ($mm - $m_off) * 1000 / $steps" | bc) ms"
done

command -v mix >/dev/null || { echo "part 2: SKIPPED (mix is not installed)"; exit 0; }
mixp="$work/mixp"
mkdir -p "$mixp/pipelines" "$mixp/lib"
cat > "$mixp/mix.exs" <<'MIX'
defmodule Bench.MixProject do
  use Mix.Project
  def project, do: [app: :bench, version: "0.1.0", deps: []]
end
MIX
for i in $(seq 1 60); do
  printf 'defmodule Bench.M%d do\n  def f(x), do: x + %d\n  def g(x), do: Enum.map(1..x, &(&1 * %d))\nend\n' "$i" "$i" "$i" > "$mixp/lib/m$i.ex"
done
cat > "$mixp/pipelines/m.ron" <<'RON'
Pipeline(name: "mixbench", steps: {
  "compile": (run: "mix compile --force", inputs: ["mix.exs", "lib/**"], outputs: ["_build/"], env: {"MIX_ENV": "dev"}),
})
RON
mrun() {
  local t0 t1
  t0=$(date +%s%N)
  (cd "$mixp" && "$cairn" build -q -p pipelines/m.ron --summary none --sandbox "$1" --force compile) >/dev/null 2>&1
  t1=$(date +%s%N)
  echo "scale=4; ($t1 - $t0) / 1000000000" | bc
}
for m in off enforce report; do mrun $m >/dev/null; done
declare -A u
mruns=$(( (runs + 1) / 2 ))
for _ in $(seq 1 "$mruns"); do
  for m in off enforce report; do u[$m]="${u[$m]:-} $(mrun $m)"; done
done
# shellcheck disable=SC2086
mo=$(median ${u[off]})
echo "part 2: mix compile --force, 60 modules, runs: $mruns"
echo "  off:     $mo s"
for m in enforce report; do
  # shellcheck disable=SC2086
  mm=$(median ${u[$m]})
  echo "  $m: $mm s  ratio $(echo "scale=3; $mm / $mo" | bc)"
done
