#!/usr/bin/env bash
# All device checks and benchmarks of the CUDA runtime, for a machine with an NVIDIA GPU.
# Run from the repository root after `cargo build --release -p ets-dev --bin et-bench` (or with the binary
# copied to target/release/). Runs the GPU tests (ETS_GPU_TESTS: test executables built with
# `cargo test --release --test cuda_gpu --no-run`, run with --include-ignored), then the
# correctness checks, the benchmark sweep and, last, a short summary table. Logs go to $OUT/ when
# OUT is set.
#
# Env: CUDA_HOME (default /usr/local/cuda), ETS_BENCH_BIN, ETS_BENCH_ARGS (e.g. --quick),
#      ETS_BENCH_CMD (all | check), ETS_TIMEOUT (seconds, default 480), ETS_SKIP_RESOURCES=1,
#      ETS_NCU=1 (Nsight Compute on one launch; ETS_NCU_ARGS: et-bench `one` arguments;
#      ETS_NCU_KERNEL: a regular expression for the kernel name, default tile_),
#      ETS_NCU_SOURCE=1 (Nsight Compute's source counters on one launch of ETS_NCU_KERNEL with
#      ETS_NCU_ARGS: warp stall samples per stretch of machine code),
#      ETS_CHECK_ETS (extra .ets files to check, space separated; unset: .cuda/minilm.ets if present;
#      set but empty: none),
#      ETS_SANITIZE (`et-bench one` arguments to run once under compute-sanitizer),
#      ETS_CHECK_ONLY (read by et-bench: only the synthetic checks whose names contain one of its
#      comma-separated parts, e.g. "Forced(Rs)"),
#      ETS_TORCH=1 (with ETS_BENCH_CMD=all the default: PyTorch's block-sparse linear against its
#      dense linear on the sweep's shapes, scripts/torch_bsr_bench.py, where PyTorch is installed;
#      ETS_TORCH_TIMEOUT seconds, default 240).
set -uo pipefail

bin="${ETS_BENCH_BIN:-target/release/et-bench}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
out="${OUT:-$(mktemp -d)}"

# cudarc opens libnvrtc.so / libcublas.so by generic names (or .so.12 and older); a newer toolkit
# ships only newer sonames, so link the generic names in a private folder.
links="$(mktemp -d)"
for lib in nvrtc cublas cublasLt; do
    for d in "$CUDA_HOME/lib64" "$CUDA_HOME/lib" "$CUDA_HOME/targets/x86_64-linux/lib"; do
        so="$(ls "$d"/lib$lib.so.[0-9]* 2>/dev/null | grep -v builtins | sort -V | tail -n1)"
        if [ -n "$so" ]; then ln -sf "$so" "$links/lib$lib.so"; break; fi
    done
done
export LD_LIBRARY_PATH="$links:$CUDA_HOME/lib64:${LD_LIBRARY_PATH:-}"
export ETS_KERNEL_CACHE="${ETS_KERNEL_CACHE:-$(mktemp -d)}"
export ETS_PTXAS="${ETS_PTXAS:-$CUDA_HOME/bin/ptxas}"

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv 2>&1 | tee "$out/nvidia-smi.txt"

if [ "${ETS_SKIP_RESOURCES:-0}" != 1 ]; then
    echo "== kernel resources (NVRTC + ptxas -v)"
    "$bin" resources --arch sm_90 2>&1 | tee "$out/resources.txt"
fi

gpu_rc=0
for t in ${ETS_GPU_TESTS:-}; do
    echo "== GPU tests: $t --include-ignored"
    timeout 300 "$t" --include-ignored --test-threads 1 2>&1 | tee -a "$out/gpu-tests.log"
    [ "${PIPESTATUS[0]}" = 0 ] || gpu_rc=1
done

extra=()
for f in ${ETS_CHECK_ETS-.cuda/minilm.ets}; do
    [ -f "$f" ] && extra+=(--ets "$f")
done
# The peer a PyTorch user has: its block-sparse (BSR) linear, timed against its dense linear.
torch_default=0
[ "${ETS_BENCH_CMD:-all}" = all ] && torch_default=1
if [ "${ETS_TORCH:-$torch_default}" = 1 ] && python3 -c "import torch" 2>/dev/null; then
    timeout "${ETS_TORCH_TIMEOUT:-240}" python3 scripts/torch_bsr_bench.py 2>&1 | tee "$out/torch.log"
fi
# A hung kernel must not eat the whole session: the run is bounded (ETS_TIMEOUT seconds).
rc=0
if [ "${ETS_BENCH_CMD:-all}" != none ]; then
    timeout "${ETS_TIMEOUT:-480}" "$bin" "${ETS_BENCH_CMD:-all}" "${extra[@]}" ${ETS_BENCH_ARGS:-} 2>&1 | tee "$out/et-bench.log"
    rc=${PIPESTATUS[0]}
fi
if [ -n "${ETS_SANITIZE:-}" ] && command -v compute-sanitizer >/dev/null; then
    # One `et-bench one` run (these arguments) under compute-sanitizer's memcheck: the faulting
    # instruction and address of a kernel that fails.
    echo "== compute-sanitizer one $ETS_SANITIZE"
    timeout 300 compute-sanitizer --tool memcheck --show-backtrace device --print-limit 20 "$bin" one $ETS_SANITIZE 2>&1 | tee "$out/sanitize.txt" | head -80
fi
if [ "${ETS_NCU:-0}" = 1 ] && command -v ncu >/dev/null; then
    ncu_args="${ETS_NCU_ARGS:---tokens 16384 --k 768 --n 3072 --density 0.5}"
    # One report per regular expression (space separated), e.g. a tile kernel and cuBLAS's.
    i=0
    for ncu_kernel in ${ETS_NCU_KERNEL:-tile_}; do
        i=$((i + 1))
        echo "== ncu on one launch of $ncu_kernel ($ncu_args)"
        ncu --clock-control none -k "regex:$ncu_kernel" -s 5 -c 1 --section SpeedOfLight --section Occupancy \
            --section WarpStateStats --section LaunchStats --section MemoryWorkloadAnalysis \
            --section ComputeWorkloadAnalysis \
            --metrics lts__t_bytes.sum.per_second,dram__bytes_read.sum,dram__bytes_write.sum,lts__t_bytes.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum \
            "$bin" one $ncu_args > "$out/ncu$i.txt" 2>&1
        grep -E "tile_|gemm|l1tex__|Duration|Throughput|Hit Rate|Occupancy|Stall|Warp Cycles|Registers|Shared Memory|Block Limit|Bank|Issued|pipeline|lts__|dram__|ERROR" "$out/ncu$i.txt" | head -60
    done
fi
if [ "${ETS_NCU_SOURCE:-0}" = 1 ] && command -v ncu >/dev/null; then
    # Where one launch's warps stall, per stretch of SASS (scripts/ncu_source_summary.py).
    ncu_args="${ETS_NCU_ARGS:---tokens 16384 --k 768 --n 3072 --density 0.5}"
    echo "== ncu source counters on one launch of ${ETS_NCU_KERNEL:-tile_} ($ncu_args)"
    ncu --clock-control none -k "regex:${ETS_NCU_KERNEL:-tile_}" -s 3 -c 1 --section SourceCounters \
        --section WarpStateStats --import-source no -o "$out/source" "$bin" one $ncu_args > "$out/ncu_source.txt" 2>&1
    ncu --import "$out/source.ncu-rep" --page source --csv --print-source sass > "$out/source.csv" 2>>"$out/ncu_source.txt"
    python3 scripts/ncu_source_summary.py "$out/source.csv" | head -60
fi
echo "GPU tests: $([ "$gpu_rc" = 0 ] && echo pass || echo FAIL); et-bench exit code $rc"
[ "$gpu_rc" = 0 ] || exit 1
exit "$rc"
