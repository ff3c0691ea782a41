#!/usr/bin/env bash
# The CUDA encoder against PyTorch's BertModel (fp16, SDPA; eager and CUDA graph) on a
# BERT-base-shaped random model (dense and tile-pruned files), the attention kernel against
# scaled_dot_product_attention, and, given all-MiniLM-L6-v2 and the SST-2 dev set, et-run
# against sentence-transformers and the time to the first embedding from a cold process.
# Needs a GPU, PyTorch and transformers (sentence-transformers for its row); prints a table of
# ratios last.
#
# Usage: [EXTRA_FILES="NAME:SPARSITY:TILE[:METHOD] ..."] [COLD=0] scripts/encoder_bench.sh [BIN_DIR] [WORK_DIR] [MINILM_DIR SST2_TSV]
#   BIN_DIR holds et-convert, et-run and et-encoder-bench (default target/release).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="${1:-target/release}"
work="${2:-/tmp/ets-encoder-bench}"
minilm="${3:-}"
tsv="${4:-}"
sizes="1x128,8x128,32x128,1x384,8x384,1x512,32x16-256"
mkdir -p "$work"

python3 "$here/encoder_bench.py" make "$work/bert-base"
src="$work/bert-base/model.safetensors"
"$bin/et-convert" "$src" "$work/dense.ets" --quiet --force
"$bin/et-convert" "$src" "$work/tile80.ets" --sparsity 0.8 --quiet --force
# e.g. EXTRA_FILES="tile90:0.9:16x16 tile80-64x64:0.8:64x64 grouped80:0.8:16x16:tile-grouped"
for extra in ${EXTRA_FILES:-}; do
    IFS=: read -r name sp tile method <<< "$extra"
    "$bin/et-convert" "$src" "$work/$name.ets" --sparsity "$sp" --tile "$tile" \
        --method "${method:-tile}" --quiet --force
done
{
    "$bin/et-encoder-bench" encoder "$work/dense.ets" "$sizes"
    ETS_BENCH_REPORT=1 "$bin/et-encoder-bench" encoder "$work/tile80.ets" "1x128,32x128" 2> "$work/report-tile80.txt"
    "$bin/et-encoder-bench" encoder "$work/tile80.ets" "$sizes"
    for extra in ${EXTRA_FILES:-}; do
        "$bin/et-encoder-bench" encoder "$work/${extra%%:*}.ets" "$sizes"
    done
    "$bin/et-encoder-bench" attention "$sizes,1x4096" 12 64
    python3 "$here/encoder_bench.py" torch "$work/bert-base" "$sizes" "$sizes,1x4096"
    if [ -n "$minilm" ] && [ -n "$tsv" ]; then
        "$bin/et-convert" "$minilm/model.safetensors" "$work/minilm-dense.ets" --quiet --force
        "$bin/et-convert" "$minilm/model.safetensors" "$work/minilm-tile50.ets" --sparsity 0.5 --quiet --force
        for m in minilm-dense minilm-tile50; do
            "$bin/et-run" "$work/$m.ets" --input "$tsv" --device cuda --npy "$work/$m.npy" 2>&1 |
                sed -n 's/.*sentences in .* (\(.*\) sentences\/s).*/{"kind":"et-run","model":"'$m'","per_s":\1}/p'
        done
        python3 "$here/encoder_bench.py" st "$minilm" "$tsv" || echo "sentence-transformers row failed" >&2
    fi
} | tee "$work/results.jsonl"
if [ -n "$minilm" ] && [ "${COLD:-1}" = 1 ]; then
    cold="$work/cold-cache"
    rm -rf "$cold"
    for run in cold warm; do
        t0=$(date +%s%N)
        ETS_KERNEL_CACHE="$cold" "$bin/et-run" "$work/minilm-dense.ets" --text "a first sentence" --device cuda > /dev/null 2>&1
        echo "first embedding, $run kernel cache: $(( ($(date +%s%N) - t0) / 1000000 )) ms (process start to exit)"
    done
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 "$here/encoder_bench.py" table "$work/results.jsonl"
