#!/usr/bin/env bash
# The CUDA encoder against PyTorch's BertModel (fp16, SDPA; eager and CUDA graph) on a
# BERT-base-shaped random model, and the attention kernel against scaled_dot_product_attention.
# Needs a GPU, PyTorch and transformers; prints a table of ratios last.
#
# Usage: scripts/encoder_bench.sh [BIN_DIR] [WORK_DIR]
#   BIN_DIR holds et-convert and et-encoder-bench (default target/release).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="${1:-target/release}"
work="${2:-/tmp/ets-encoder-bench}"
sizes="1x128,8x128,32x128,1x384,8x384,1x512"
mkdir -p "$work"

python3 "$here/encoder_bench.py" make "$work/bert-base"
"$bin/et-convert" "$work/bert-base/model.safetensors" "$work/dense.ets" --quiet --force
"$bin/et-convert" "$work/bert-base/model.safetensors" "$work/tile80.ets" --sparsity 0.8 --quiet --force
{
    "$bin/et-encoder-bench" encoder "$work/dense.ets" "$sizes"
    "$bin/et-encoder-bench" encoder "$work/tile80.ets" "$sizes"
    "$bin/et-encoder-bench" attention "$sizes,1x4096" 12 64
    python3 "$here/encoder_bench.py" torch "$work/bert-base" "$sizes" "$sizes,1x4096"
} | tee "$work/results.jsonl"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 "$here/encoder_bench.py" table "$work/results.jsonl"
