#!/usr/bin/env bash
# What one changed source file costs, against a no-op, on a make-tree.sh tree: cairn's wall
# time for a no-op and for a build after appending to one source file of one package (that
# package's step runs and is stored), N times each (default 7), medians. The goal: a change
# costs at most the no-op + the step's own run and store + 50 ms, whatever the tree's size.
#
# Usage: benches/change.sh [PACKAGES] [N] [--deps-files D]
#   e.g. benches/change.sh 200        (80,000 files)     benches/change.sh 50 (20,000 files)
#        benches/change.sh 50 7 --deps-files 30000       (a change in the Elixir-like app)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
shared=${CAIRN_SHARED:-$repo/../shared}
packages=${1:-200}
runs=${2:-7}
shift $(( $# > 2 ? 2 : $# ))
cargo build --release --manifest-path "$repo/Cargo.toml" >&2
cairn="$repo/target/release/cairn"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tree="$work/tree"
bash "$shared/bench/make-tree.sh" --packages "$packages" "$@" "$tree" >/dev/null 2>&1
sh "$here/write-pipeline.sh" "$tree" > "$tree/cairn.ron"
if [ -d "$tree/packages/app" ]; then pkg=app; else pkg=p001; fi
if [ "$pkg" = app ]; then
  src="$tree/packages/app/mix.lock" # a dependency change: the app's step restores deps/ and _build/
else
  src=$(find "$tree/packages/$pkg/src" -type f | sort | head -1)
fi
build() { (cd "$tree" && "$cairn" build -q -p cairn.ron --cache-dir "$work/cache" "$@"); }
build --summary none >/dev/null 2>&1 || true
build --summary none >/dev/null 2>&1
ms() { python3 -c "import sys,json; d=json.load(sys.stdin); print(d['totals']['wall_ms'], *[s['duration_ms'] for s in d['steps'] if s['status']=='ran'])"; }
noop=(); change=(); step=(); store=()
for i in $(seq 1 "$runs"); do
  noop+=("$(build --summary json 2>/dev/null | ms | cut -d' ' -f1)")
  echo "change $i" >> "$src"
  out=$(CAIRN_TIMINGS=1 build --summary json 2>"$work/t")
  read -r wall dur <<<"$(echo "$out" | ms)"
  change+=("$wall"); step+=("$dur")
  store+=("$(awk '/timing: (pack|commit|re-check inputs) / {s += $(NF-1)} END {printf "%d", s}' "$work/t")")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
n=$(median "${noop[@]}"); c=$(median "${change[@]}"); s=$(median "${step[@]}"); st=$(median "${store[@]}")
files=$(cd "$tree" && find packages -type f | wc -l)
echo "tree: $packages packages, $files files; changed: ${src#"$tree"/}; runs: $runs (medians, ms)"
echo "  no-op:                       $n"
echo "  one file changed:            $c"
echo "  the step's run:              $s"
echo "  its re-check, pack, commit:  $st"
echo "  goal (no-op + step + store + 50): $((n + s + st + 50))  → $([ "$c" -le $((n + s + st + 50)) ] && echo met || echo MISSED)"
