#!/usr/bin/env bash
# The CPU-side benchmarks in one run, for a quiet many-core machine (such as the GPU host):
# reader open/verify vs sha256sum, conversion vs cat (time and peak RSS), and the CPU runtime on a
# dense vs a 50%-tile BERT-base file at several thread counts. Works from prebuilt binaries:
#
#   ETS_BENCH_BIN_DIR=DIR bash bench/host_bench.sh     # DIR holds et-fixtures, et-bench-format,
#                                                      # et-convert, et-gen-bert-base, et-cpu-bench
#
# (`cargo build --release -p ets -p ets-dev` builds them all into target/release.)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bins="${ETS_BENCH_BIN_DIR:-target/release}"
export ETS_BENCH_PREBUILT=1 ETS_BENCH_BIN_DIR="$bins"
work="$(mktemp -d)"
echo "host: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores; date $(date -u +%Y-%m-%dT%H:%MZ)"

echo "== reader: open and verify"
bash bench/format_bench.sh "$work/format" 2>&1 | tee "$work/format.log"

echo "== conversion"
RUNS=3 bash bench/convert_bench.sh --keep "$work/convert" 2>&1 | tee "$work/convert.log"
rm -rf "$work/convert"

echo "== CPU runtime, dense vs 50% tiles (32x32), BERT-base shapes, batch 16x64"
for t in $(nproc) 4 2; do
    echo "-- RAYON_NUM_THREADS=$t"
    RAYON_NUM_THREADS=$t "$bins/et-cpu-bench" --reps 5 2>&1 | tee -a "$work/cpu.log" | tail -3
done

echo "== SUMMARY (host)"
grep -E "open .*bert-base|open .*tiny" "$work/format.log" | sed 's/^/format: /' | cut -c1-160
grep -iE "ratio|verify" "$work/format.log" | tail -3 | sed 's/^/format: /'
grep -E "^(cat|et-convert|time ratio|peak RSS)" "$work/convert.log" | sed 's/^/convert: /'
grep -iE "ratio|speedup" "$work/cpu.log" | sed 's/^/cpu: /'
rm -rf "$work"
