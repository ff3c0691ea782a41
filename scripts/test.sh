#!/usr/bin/env bash
# The whole test suite, as CI runs it: fetch the real models, install NVRTC from PyPI wheels so
# every kernel is compiled for sm_80 and sm_90 (no GPU needed), then run all tests in release mode.
#
#   bash scripts/test.sh            # strict: missing models or NVRTC fail the run
#   ETS_OFFLINE=1 bash scripts/test.sh   # no downloads: tests that need them skip with a notice
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "${ETS_OFFLINE:-0}" != "1" ]; then
    bash scripts/fetch_models.sh
    eval "$(bash scripts/install_nvrtc.sh)"
    export ETS_REQUIRE_MODELS=1 ETS_REQUIRE_NVRTC=1
fi
cargo test --release --all-targets
if [ "${ETS_OFFLINE:-0}" != "1" ]; then
    # The NVRTC compile test is ignored by default (it fails without NVRTC).
    cargo test --release --test cuda_kernels_compile -- --include-ignored
fi
