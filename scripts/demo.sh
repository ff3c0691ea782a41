#!/usr/bin/env bash
# The main job on the tiny BERT that ships in fixtures/: convert with 50% tile sparsity, inspect,
# verify, and embed two sentences on the CPU.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release --quiet --bins
out="${1:-target/demo/tiny.ets}"
mkdir -p "$(dirname "$out")"
bin=target/release
"$bin/et-convert" fixtures/sources/tiny-onnx-inline/model.onnx "$out" --sparsity 0.5 --force
"$bin/et-inspect" "$out"
"$bin/et-verify" "$out"
"$bin/et-run" "$out" --text "the movie was wonderful" --text "a dull and tedious film"
