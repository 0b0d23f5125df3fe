#!/usr/bin/env bash
# Storing and restoring the deps folder (30,000 files, ~300 MB) by cairn alone, against the tar
# pipelines the issue names, measured side by side in one run (alternating, median of N):
#   store:   a step whose command does nothing and whose outputs are deps/ and _build/, run cold
#            (so the time is cairn's own work: walk, archive, compress, publish), vs
#            `tar -I 'zstd -T0 -3' -cf`
#   restore: the same outputs deleted and restored from the store, vs `tar -I zstd -xf`
# Usage: benches/store.sh [N]   (the deps tree comes from ../shared/bench/make-tree.sh)
# ASIDE=1 moves the old outputs aside before each restore instead of deleting them: on ext4
# without a journal, files created right after many were deleted wait on a scan of the
# recently deleted inodes, which then dominates both restores.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
shared=${CAIRN_SHARED:-$repo/../shared}
n=${1:-3}
work=${WORK:-/tmp/cairn-store-bench}
cargo build --release --manifest-path "$repo/Cargo.toml" >&2
cairn="$repo/target/release/cairn"
tree="$work/tree"
if [ ! -f "$tree/.tree-info" ]; then
  "$shared/bench/make-tree.sh" --force -n 0 --deps-files 30000 --deps-mb 300 --seed 1 "$tree" >&2
  (cd "$tree/packages/app" && sh build.sh >/dev/null)
fi
app="$tree/packages/app"
cat > "$tree/store.ron" <<'RON'
Pipeline(name: "store-bench", steps: {
  "app": (run: "true", workdir: "packages/app", inputs: ["packages/app/mix.lock"],
          outputs: ["packages/app/deps/", "packages/app/_build/"]),
})
RON
[ -f "$app/mix.lock" ] || echo lock > "$app/mix.lock"
t() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); echo "$e - $s" | bc; }
k=0
clear_outputs() {
  if [ "${ASIDE:-0}" = 1 ]; then
    k=$((k + 1)); mkdir -p "$work/aside/$k"; mv "$app/deps" "$app/_build" "$work/aside/$k/"
  else
    rm -rf "$app/deps" "$app/_build"
  fi
  sync
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
declare -A R
for i in $(seq "$n"); do
  sync
  R[cs]+="$(t "$cairn" build -q -p "$tree/store.ron" --cache-dir "$work/cache" --force app) "
  sync
  R[ts]+="$(t tar -C "$app" -I 'zstd -T0 -3' -cf "$work/deps.tar.zst" deps _build) "
  clear_outputs
  R[cr]+="$(t "$cairn" build -q -p "$tree/store.ron" --cache-dir "$work/cache") "
  clear_outputs
  R[tr]+="$(t tar -C "$app" -I zstd -xf "$work/deps.tar.zst") "
done
m() { echo "${R[$1]}" | tr ' ' '\n' | grep . | median; }
printf '%-8s %-10s %-10s %s\n' what cairn_s tar_s cairn/tar
for k in s r; do
  c=$(m c$k); x=$(m t$k)
  printf '%-8s %-10.3f %-10.3f %.2f\n' "$([ $k = s ] && echo store || echo restore)" "$c" "$x" "$(echo "$c / $x" | bc -l)"
done
rm -rf "$work/aside"
