#!/usr/bin/env bash
# Accuracy after pruning: SST-2 dev accuracy of one logistic-regression head trained on the DENSE
# model's mean-pooled embeddings, evaluated on embeddings from each pruned file.
#
#   scripts/accuracy.sh [MODEL_DIR] [SST2_DIR] [WORK_DIR]
#
# Defaults: models/all-minilm-l6-v2, data/sst2 (train.tsv, dev.tsv), target/accuracy.
# Calibration uses train.tsv (its first 2048 sentences, the default); the head is trained on
# train sentences 2048..7048 (disjoint from calibration); dev is only evaluated.
# Set SPARSITIES, TILES, METHODS to narrow the grid. Needs python3 (numpy and scikit-learn are
# installed into WORK_DIR/venv).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
model=${1:-$root/models/all-minilm-l6-v2}
data=${2:-$root/data/sst2}
work=${3:-$root/target/accuracy}
sparsities=${SPARSITIES:-"0.3 0.5 0.7"}
tiles=${TILES:-"16x16 32x32 64x64"}
methods=${METHODS:-"weight-norm calibrated"}
bin=$root/target/release
mkdir -p "$work"
if [ ! -x "$work/venv/bin/python" ]; then
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" install -q numpy scikit-learn
fi
py=$work/venv/bin/python
# Head training sentences: train rows 2049..7048 (after the header and the calibration rows).
{ echo -e "text\tlabel"; sed -n '2050,7049p' "$data/train.tsv"; } > "$work/head.tsv"
"$bin/et-convert" "$model/model.safetensors" "$work/dense.ets" --force --quiet
"$bin/et-run" "$work/dense.ets" --input "$work/head.tsv" --npy "$work/head_dense.npy"
"$bin/et-run" "$work/dense.ets" --input "$data/dev.tsv" --npy "$work/dev_dense.npy"
rows=()
for tile in $tiles; do
  for s in $sparsities; do
    for m in $methods; do
      name="$m-$tile-$s"
      args=(--method tile --tile "$tile" --sparsity "$s" --force --quiet)
      [ "$m" = calibrated ] && args+=(--calibrate "$data/train.tsv")
      start=$(date +%s)
      "$bin/et-convert" "$model/model.safetensors" "$work/$name.ets" "${args[@]}"
      secs=$(( $(date +%s) - start ))
      "$bin/et-run" "$work/$name.ets" --input "$data/dev.tsv" --npy "$work/dev_$name.npy"
      rows+=("$name:$secs")
    done
  done
done
"$py" - "$work" "$data/dev.tsv" "$work/head.tsv" "${rows[@]}" <<'PY'
import sys
import numpy as np
from sklearn.linear_model import LogisticRegression

work, dev_tsv, head_tsv, rows = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
labels = lambda p: np.array([int(l.rstrip("\n").split("\t")[1]) for l in open(p).readlines()[1:]])
xh, yh = np.load(f"{work}/head_dense.npy"), labels(head_tsv)
yd = labels(dev_tsv)
clf = LogisticRegression(max_iter=2000, C=1.0).fit(xh, yh)
dense = np.load(f"{work}/dev_dense.npy")
pd = clf.predict(dense)
acc_d = (pd == yd).mean()
print(f"dense dev accuracy {acc_d:.4f} ({len(yd)} sentences; head on {len(yh)} train sentences)")
print("| method | tile | sparsity | accuracy (share of dense) | agreement | mean cosine | convert s |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for r in rows:
    name, secs = r.rsplit(":", 1)
    m, tile, s = name.rsplit("-", 2)
    x = np.load(f"{work}/dev_{name}.npy")
    p = clf.predict(x)
    cos = (x * dense).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(dense, axis=1) + 1e-30)
    acc = (p == yd).mean()
    print(f"| {m} | {tile} | {float(s):.0%} | {acc:.4f} ({acc / acc_d:.1%}) | {(p == pd).mean():.4f} | {cos.mean():.4f} | {secs} |")
PY
