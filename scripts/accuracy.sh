#!/usr/bin/env bash
# Accuracy after pruning: SST-2 dev accuracy of one logistic-regression head trained on the DENSE
# model's mean-pooled embeddings, evaluated on embeddings from each pruned file.
#
#   scripts/accuracy.sh [MODEL_DIR] [SST2_DIR] [WORK_DIR]
#
# Defaults: models/all-minilm-l6-v2, data/sst2 (train.tsv, dev.tsv), target/accuracy.
# Calibration uses train.tsv (its first 2048 sentences, the default); the head is trained on
# train sentences 2049..7048 (disjoint from calibration); dev is only evaluated.
# Methods: weight-norm (no calibration), calibrated (--calibrate, uniform sparsity),
# sensitivity (--calibrate --allocate sensitivity). Set SPARSITIES, TILES, METHODS to narrow the
# grid: cells already measured in WORK_DIR are kept, so the grid can be filled one cell at a time;
# the table and the chart cover every cell measured so far. CHART=FILE.svg draws accuracy
# against sparsity. Needs python3 (numpy and scikit-learn are installed into WORK_DIR/venv).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
model=${1:-$root/models/all-minilm-l6-v2}
data=${2:-$root/data/sst2}
work=${3:-$root/target/accuracy}
sparsities=${SPARSITIES:-"0.3 0.5 0.7 0.9"}
tiles=${TILES:-"16x16"}
methods=${METHODS:-"weight-norm calibrated sensitivity"}
bin=$root/target/release
mkdir -p "$work"
if [ ! -x "$work/venv/bin/python" ]; then
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" install -q numpy scikit-learn
fi
py=$work/venv/bin/python
# Head training sentences: train rows 2049..7048 (after the header and the calibration rows).
{ echo -e "text\tlabel"; sed -n '2050,7049p' "$data/train.tsv"; } > "$work/head.tsv"
if [ ! -s "$work/dev_dense.npy" ] || [ ! -s "$work/head_dense.npy" ]; then
  "$bin/et-convert" "$model/model.safetensors" "$work/dense.ets" --force --quiet
  "$bin/et-run" "$work/dense.ets" --input "$work/head.tsv" --npy "$work/head_dense.npy"
  "$bin/et-run" "$work/dense.ets" --input "$data/dev.tsv" --npy "$work/dev_dense.npy"
  rm -f "$work/dense.ets"
fi
for tile in $tiles; do
  for s in $sparsities; do
    for m in $methods; do
      name="$m-$tile-$s"
      [ -s "$work/dev_$name.npy" ] && continue
      args=(--method tile --tile "$tile" --sparsity "$s" --force --quiet)
      case $m in
        weight-norm) ;;
        calibrated) args+=(--calibrate "$data/train.tsv" --allocate uniform) ;;
        sensitivity) args+=(--calibrate "$data/train.tsv" --allocate sensitivity) ;;
        *) echo "unknown method $m" >&2; exit 2 ;;
      esac
      start=$(date +%s)
      "$bin/et-convert" "$model/model.safetensors" "$work/$name.ets" "${args[@]}"
      echo $(( $(date +%s) - start )) > "$work/$name.secs"
      "$bin/et-run" "$work/$name.ets" --input "$data/dev.tsv" --npy "$work/dev_$name.npy"
      rm -f "$work/$name.ets"
    done
  done
done
"$py" "$root/scripts/accuracy_table.py" "$work" "$data/dev.tsv" "$work/head.tsv" "${CHART:-}"
