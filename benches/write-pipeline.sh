#!/bin/sh
# Write a cairn pipeline for a tree from ../shared/bench/make-tree.sh: one step per package,
# the same work turbo's `build` task does (`sh build.sh` in the package, outputs dist/, or
# deps/ and _build/ for the Elixir-like "app" package).
# Usage: benches/write-pipeline.sh TREE > TREE/cairn.ron
set -eu
tree=$1
echo 'Pipeline('
echo '  name: "bench",'
echo '  // The trees'"'"' build.sh deletes dist/ itself (`rm -rf dist`), which the Landlock sandbox'
echo '  // forbids (its rule is on that directory); turbo has no sandbox either.'
echo '  sandbox: Off,'
echo '  steps: {'
for dir in "$tree"/packages/*/; do
  name=$(basename "$dir")
  if [ "$name" = app ]; then
    outputs='"packages/app/deps/", "packages/app/_build/"'
  else
    outputs="\"packages/$name/dist/\""
  fi
  printf '    "%s": (run: "sh build.sh", workdir: "packages/%s", inputs: ["packages/%s/**"], outputs: [%s], env: {"npm_package_name": "%s"}),\n' \
    "$name" "$name" "$name" "$outputs" "$name"
done
echo '  },'
echo ')'
