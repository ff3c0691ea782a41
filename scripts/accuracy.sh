#!/usr/bin/env bash
# Accuracy after pruning: SST-2 dev accuracy of one logistic-regression head trained on the DENSE
# model's mean-pooled embeddings, evaluated on embeddings from each pruned file.
#
#   scripts/accuracy.sh [MODEL_DIR] [SST2_DIR] [WORK_DIR]
#
# Defaults: models/all-minilm-l6-v2, data/sst2 (train.tsv, dev.tsv), target/accuracy.
# Calibration uses train.tsv (its first 2048 sentences, the default); the head is trained on
# train sentences 2049..7048 (disjoint from calibration); dev is only evaluated.
# Methods: weight-norm (no calibration); the ablation of calibrated pruning at uniform sparsity:
# activation-aware (--calibrate --selection score --refit none: tiles of highest activation-aware
# score, source weights), reconstruction (--selection score --refit dense: the same tiles refitted
# toward the dense outputs), calibrated (--calibrate, uniform sparsity: greedy selection and the
# refit); sensitivity (--calibrate --allocate sensitivity), grouped (the same with --method
# tile-grouped: every 128-feature group of block rows keeps the same tile columns, the masks the
# GPU runs fastest), recovered (the sensitivity file, kept as
# WORK_DIR/pruned-TILE-S.ets, then `python -m ets.recover` on train sentences 7049.. (after the
# calibration and head rows) and `et-convert --method existing`; RECOVER_PYTHON names a python
# with torch, transformers and the ets module; RECOVER_STEPS, RECOVER_LR, RECOVER_BATCH and
# RECOVER_DEVICE set the run; the recovered file must keep the pruned file's tiles, or the
# script fails). Set SPARSITIES, TILES, METHODS to narrow the
# grid. TILES may also name rows, cols or heads: the cell then prunes whole output rows, input
# columns or attention heads (--method rows|cols|heads) with the same method column
# (weight-norm, calibrated, sensitivity; heads take no sensitivity allocation). Cells already
# measured in WORK_DIR are kept, so the grid can be filled one cell at a time;
# the table and the chart cover every cell measured so far. CHART=FILE.svg draws accuracy
# against sparsity. CELLS=FILE.tsv adds the cells recorded there (bench/accuracy_cells.tsv: the
# standing of bench/RESULTS.md) and rewrites it with those measured in WORK_DIR. A recovered
# cell is named by its steps (recovered-STEPS), so runs of other lengths are kept apart. Needs python3 (numpy and scikit-learn are installed into WORK_DIR/venv).
# Embeddings are mean-pooled and not normalized, whatever the file records; WORK_DIR/embedding.key
# names the model file (its SHA-256) and those settings, and the script refuses a work folder made
# under another key (its cells are not comparable). The table also refuses a folder whose cells
# and dense embeddings differ in normalization.
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
# What every embedding depends on besides the pruning: the model and how tokens are pooled.
embed=(--pooling mean --no-normalize)
key="model $(sha256sum < "$model/model.safetensors" | cut -d' ' -f1); et-run ${embed[*]}"
if [ -s "$work/embedding.key" ] && [ "$(cat "$work/embedding.key")" != "$key" ]; then
  echo "$work holds embeddings made with: $(cat "$work/embedding.key")" >&2
  echo "this run makes them with: $key; use another WORK_DIR or empty this one" >&2
  exit 1
fi
echo "$key" > "$work/embedding.key"
# Head training sentences: train rows 2049..7048 (after the header and the calibration rows).
{ echo -e "text\tlabel"; sed -n '2050,7049p' "$data/train.tsv"; } > "$work/head.tsv"
if [ ! -s "$work/dev_dense.npy" ] || [ ! -s "$work/head_dense.npy" ]; then
  "$bin/et-convert" "$model/model.safetensors" "$work/dense.ets" --force --quiet
  "$bin/et-run" "$work/dense.ets" "${embed[@]}" --input "$work/head.tsv" --npy "$work/head_dense.npy"
  "$bin/et-run" "$work/dense.ets" "${embed[@]}" --input "$data/dev.tsv" --npy "$work/dev_dense.npy"
  rm -f "$work/dense.ets"
fi
# A recovered cell: the sensitivity-pruned file (kept for reruns), distillation, repacking with
# the pruned file's zeros, and the check that the tile grid did not change.
recover() {
  local tile=$1 s=$2 name=$3 rpy=${RECOVER_PYTHON:?recovered needs RECOVER_PYTHON}
  shift 3
  local pruned="$work/pruned-$tile-$s.ets"
  [ -s "$pruned" ] || "$bin/et-convert" "$model/model.safetensors" "$pruned" "$@"
  "$rpy" -m ets.recover "$model" "$pruned" "$data/train.tsv" "$work/$name" --skip 7048 \
    --steps "${RECOVER_STEPS:-2000}" --lr "${RECOVER_LR:-3e-4}" \
    --batch-size "${RECOVER_BATCH:-32}" --device "${RECOVER_DEVICE:-auto}" --seed 0
  "$bin/et-convert" "$work/$name/model.safetensors" "$work/$name.ets" --method existing \
    --tile "$tile" --force --quiet
  "$rpy" - "$pruned" "$work/$name.ets" "$tile" <<'PY'
import sys
import ets
from ets.recover import same_tiles
tile = tuple(int(v) for v in sys.argv[3].split("x"))
bad = same_tiles(ets.open(sys.argv[1]), ets.open(sys.argv[2]), tile)
if bad:
    sys.exit(f"the recovered file keeps other tiles than the pruned one in {', '.join(bad)}")
print("recovered: the same tiles as the pruned file", file=sys.stderr)
PY
}
for tile in $tiles; do
  for s in $sparsities; do
    for m in $methods; do
      name="$m-$tile-$s"
      [ "$m" = recovered ] && name="recovered-${RECOVER_STEPS:-2000}-$tile-$s"
      [ -s "$work/dev_$name.npy" ] && continue
      args=(--sparsity "$s" --force --quiet)
      case $tile:$m in
        rows:grouped|cols:grouped|heads:grouped|rows:recovered|cols:recovered|heads:recovered)
          echo "$m needs tiles, not $tile" >&2; exit 2 ;;
        rows:*|cols:*|heads:*) args+=(--method "$tile") ;;
        *:grouped) args+=(--tile "$tile" --method tile-grouped) ;;
        *) args+=(--tile "$tile" --method tile) ;;
      esac
      case $m in
        weight-norm) ;;
        activation-aware) args+=(--calibrate "$data/train.tsv" --allocate uniform --selection score
          --refit none) ;;
        reconstruction) args+=(--calibrate "$data/train.tsv" --allocate uniform --selection score
          --refit dense) ;;
        calibrated) args+=(--calibrate "$data/train.tsv" --allocate uniform) ;;
        sensitivity|grouped|recovered) args+=(--calibrate "$data/train.tsv" --allocate sensitivity) ;;
        *) echo "unknown method $m" >&2; exit 2 ;;
      esac
      start=$(date +%s)
      if [ "$m" = recovered ]; then
        recover "$tile" "$s" "$name" "${args[@]}"
      else
        "$bin/et-convert" "$model/model.safetensors" "$work/$name.ets" "${args[@]}"
      fi
      echo $(( $(date +%s) - start )) > "$work/$name.secs"
      "$bin/et-run" "$work/$name.ets" "${embed[@]}" --input "$data/dev.tsv" --npy "$work/dev_$name.npy"
      rm -f "$work/$name.ets"
    done
  done
done
"$py" "$root/scripts/accuracy_table.py" "$work" "$data/dev.tsv" "$work/head.tsv" "${CHART:-}" \
  ${CELLS:+--cells "$CELLS"}
