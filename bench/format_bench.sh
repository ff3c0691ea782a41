#!/usr/bin/env bash
# Reader benchmark: EtsFile::open on a small and a BERT-base-sized file (should be flat in file
# size), and full verification throughput against sha256sum of the same file (warm page cache).
# Usage: bench/format_bench.sh [WORK_DIR]   (default: a temporary folder, removed afterwards)
set -euo pipefail
# Arithmetic through bc, or python3 where bc is not installed.
if ! command -v bc >/dev/null 2>&1; then
    bc() { python3 -c 'import sys; v = eval(sys.stdin.read()); print(int(v) if isinstance(v, bool) else v)'; }
fi
cd "$(dirname "$0")/.."
work="${1:-}"
if [ -z "$work" ]; then
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work"

# ETS_BENCH_PREBUILT=1 skips the build and uses the binaries in ETS_BENCH_BIN_DIR (default
# target/release).
if [ -z "${ETS_BENCH_PREBUILT:-}" ]; then
    cargo build --release --quiet -p ets-dev --bin et-bench-format --bin et-fixtures
fi
bins="${ETS_BENCH_BIN_DIR:-target/release}"
bin="$bins/et-bench-format"

echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores online"
echo "rustc: $(rustc --version 2>/dev/null || echo 'prebuilt binaries')"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"

"$bins/et-fixtures" "$work/fixtures" > /dev/null
small="$work/fixtures/valid/tiny-example.ets"
mid="$work/fixtures/valid/tiny-bert-tile16x16-f16.ets"
big="$work/bert-base-tile.ets"
dense="$work/bert-base-dense.ets"
"$bin" gen "$big" --encoding tile --density 0.7
"$bin" gen "$dense" --encoding dense

# Open cost follows the header (sections and index arrays), not the data size.
for f in "$small" "$mid" "$big" "$dense"; do
    "$bin" open "$f" --iters 501
done

# Warm the cache, then time sha256sum three times and take the median.
cat "$big" > /dev/null
times=()
for _ in 1 2 3; do
    start=$(date +%s.%N)
    sha256sum "$big" > /dev/null
    end=$(date +%s.%N)
    times+=("$(echo "$end - $start" | bc -l)")
done
sha=$(printf '%s\n' "${times[@]}" | sort -g | sed -n 2p)
bytes=$(stat -c %s "$big")
printf 'sha256sum %s: %d bytes: median %.1f ms (%.0f MB/s)\n' "$big" "$bytes" "$(echo "$sha * 1000" | bc -l)" "$(echo "$bytes / $sha / 1000000" | bc -l)"

median_ms() { sed -E 's/.*median ([0-9.]+) ms.*/\1/'; }
all_line=$("$bin" verify "$big" --iters 5)
echo "$all_line"
one_line=$(RAYON_NUM_THREADS=1 "$bin" verify "$big" --iters 5)
echo "$one_line"
all=$(echo "$all_line" | median_ms)
one=$(echo "$one_line" | median_ms)
sha_ms=$(echo "$sha * 1000" | bc -l)
printf 'verify time / sha256sum time: %.2f with all threads, %.2f with one thread\n' \
    "$(echo "$all / $sha_ms" | bc -l)" "$(echo "$one / $sha_ms" | bc -l)"
