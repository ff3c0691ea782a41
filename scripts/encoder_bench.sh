#!/usr/bin/env bash
# The CUDA encoder against PyTorch's BertModel (fp16, SDPA; eager and CUDA graph) on a
# BERT-base-shaped random model (dense and tile-pruned files), the attention kernel against
# scaled_dot_product_attention, and, given all-MiniLM-L6-v2 and the SST-2 dev set, et-run
# against sentence-transformers and the time to the first embedding from a cold process.
# Needs a GPU, PyTorch and transformers (sentence-transformers for its row); prints a table of
# ratios last.
#
# Usage: [FILES="NAME:SPARSITY:TILE[:METHOD] ..."] [COMPILE_BUDGET=S] [COLD=0] scripts/encoder_bench.sh [BIN_DIR] [WORK_DIR] [MINILM_DIR SST2_TSV]
#   BIN_DIR holds et-convert, et-run and et-encoder-bench (default target/release). FILES
#   replaces the default set: dense, 50/80/90% tiles at 16x16, 32x32 and 64x64, attention-aware
#   80% and grouped 80%. et-run runs each MiniLM file twice on the dev set: the first run pays
#   the dispatcher's measurements (no tuning cache yet), the second is the steady state.
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
default_files="dense:0:32x32"
for sp in 50 80 90; do
    for tile in 16x16 32x32 64x64; do default_files+=" tile$sp-$tile:0.$sp:$tile"; done
done
default_files+=" attention-aware80:0.8:32x32:attention-aware grouped80:0.8:16x16:tile-grouped"
files=${FILES:-$default_files}
for spec in $files; do
    IFS=: read -r name sp tile method <<< "$spec"
    if [ "$name" = dense ]; then
        "$bin/et-convert" "$src" "$work/$name.ets" --quiet --force
    else
        "$bin/et-convert" "$src" "$work/$name.ets" --sparsity "$sp" --tile "$tile" \
            --method "${method:-tile}" --quiet --force
    fi
done
{
    for spec in $files; do
        "$bin/et-encoder-bench" encoder "$work/${spec%%:*}.ets" "$sizes"
    done
    ETS_BENCH_REPORT=1 "$bin/et-encoder-bench" encoder "$work/tile80-32x32.ets" "1x128,32x128" \
        2> "$work/report-tile80.txt" > /dev/null || true
    "$bin/et-encoder-bench" attention "$sizes,1x4096" 12 64
    python3 "$here/encoder_bench.py" torch "$work/bert-base" "$sizes" "$sizes,1x4096"
    if [ -n "$minilm" ] && [ -n "$tsv" ]; then
        "$bin/et-convert" "$minilm/model.safetensors" "$work/minilm-dense.ets" --quiet --force
        "$bin/et-convert" "$minilm/model.safetensors" "$work/minilm-tile50.ets" --sparsity 0.5 --quiet --force
        for m in minilm-dense minilm-tile50; do
            for run in first warm; do
                "$bin/et-run" "$work/$m.ets" --input "$tsv" --device cuda --npy "$work/$m.npy" 2>&1 |
                    sed -n 's/.*sentences in .* (\(.*\) sentences\/s).*/{"kind":"et-run","model":"'$m-$run'","per_s":\1}/p'
            done
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
