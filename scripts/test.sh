#!/usr/bin/env bash
# The whole test suite, as CI runs it: fetch the real models, install NVRTC from PyPI wheels so
# every kernel is compiled for sm_80 and sm_90 (no GPU needed), then run every test of the
# workspace in release mode, the ignored ones included (tests that need the models or NVRTC are
# `#[ignore]`d, so here a missing model or NVRTC fails the run). GPU tests (named `gpu_*`) run on
# a machine with an NVIDIA GPU through scripts/device_check.sh.
#
#   bash scripts/test.sh                 # online: models and NVRTC fetched, ignored tests run
#   ETS_OFFLINE=1 bash scripts/test.sh   # no downloads: tests that need them are reported ignored
#
# Online, the Python module is then built and tested too: a virtual environment in
# target/pyvenv, maturin, numpy and pytest from PyPI, `pip install ./python`, pytest on
# python/tests (which compares with the et-run just built). Offline it is reported skipped.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python_tests() {
    local python="${PYTHON:-python3}" venv="$PWD/target/pyvenv"
    command -v "$python" >/dev/null || { echo "test.sh: $python not found (needed for the Python module tests)" >&2; exit 1; }
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    # The build backend runs the venv's `maturin`.
    local PATH="$venv/bin:$PATH"
    "$venv/bin/python" -m pip install --quiet --upgrade pip "maturin>=1.5,<2" numpy pytest
    "$venv/bin/python" -m pip install --quiet --force-reinstall --no-deps --no-build-isolation ./python
    # Run from outside python/ so that `import ets` is the installed module.
    (cd target && ETS_RUN="$PWD/release/et-run" "$venv/bin/python" -m pytest -q ../python/tests)
}

if [ "${ETS_OFFLINE:-0}" = "1" ]; then
    cargo test --release --workspace --all-targets
    echo "test.sh: SKIPPED the Python module tests (ETS_OFFLINE=1: they need maturin, numpy and pytest from PyPI)"
else
    bash scripts/fetch_models.sh
    eval "$(bash scripts/install_nvrtc.sh)"
    # SST-2 (calibration sentences for the real-model pruning test) sits beside the project in CI.
    export ETS_SST2_DIR="${ETS_SST2_DIR:-$PWD/../shared/data/sst2}"
    cargo test --release --workspace --all-targets -- --include-ignored --skip gpu_
    cargo build --release --bin et-run
    python_tests
fi
