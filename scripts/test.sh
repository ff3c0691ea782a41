#!/usr/bin/env bash
# The whole test suite, as CI runs it: fetch the real models, install NVRTC from PyPI wheels so
# every kernel is compiled for sm_80 and sm_90 (no GPU needed), then run every test of the
# workspace in release mode, the ignored ones included (tests that need the models or NVRTC are
# `#[ignore]`d, so here a missing model or NVRTC fails the run). GPU tests (named `gpu_*`) run on
# a machine with an NVIDIA GPU through scripts/device_check.sh.
#
#   bash scripts/test.sh                 # online: models and NVRTC fetched, ignored tests run
#   ETS_OFFLINE=1 bash scripts/test.sh   # no downloads: tests that need them are reported ignored
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "${ETS_OFFLINE:-0}" = "1" ]; then
    cargo test --release --workspace --all-targets
else
    bash scripts/fetch_models.sh
    eval "$(bash scripts/install_nvrtc.sh)"
    # SST-2 (calibration sentences for the real-model pruning test) sits beside the project in CI.
    export ETS_SST2_DIR="${ETS_SST2_DIR:-$PWD/../shared/data/sst2}"
    cargo test --release --workspace --all-targets -- --include-ignored --skip gpu_
fi
