#!/usr/bin/env bash
# Install the Python packages that the golden-output scripts need (numpy, onnxruntime, tokenizers).
# CI runs this before scripts/golden.py; it is idempotent (pip skips what is installed).
set -euo pipefail
PY="${PYTHON:-python3}"
"$PY" -m pip install --quiet --disable-pip-version-check \
    "numpy>=1.24" "onnxruntime>=1.17" "tokenizers>=0.15" "safetensors>=0.4"
"$PY" -c "import numpy, onnxruntime, tokenizers, safetensors; print('python deps ok: numpy', numpy.__version__, 'onnxruntime', onnxruntime.__version__, 'tokenizers', tokenizers.__version__)"
