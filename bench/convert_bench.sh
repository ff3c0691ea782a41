#!/usr/bin/env bash
# Conversion speed and memory on a BERT-base-sized f32 safetensors checkpoint (~440 MB, random
# deterministic weights from et-gen-bert-base).
#
# Measures, in one run on a warm page cache:
#   - `cat FILE > /dev/null` (after one warm-up read): the floor of reading the input;
#   - `et-convert FILE OUT --sparsity 0.8` wall time and peak RSS (via /usr/bin/time -v).
# Goals: conversion <= 3x the cat time; peak RSS < input size + 100 MB.
# Each timing is the median of RUNS runs (default 3). With --write, appends a dated entry to
# the "Conversion" section of bench/RESULTS.md.
#
# usage: bench/convert_bench.sh [--write] [--keep DIR]
set -euo pipefail
# Arithmetic through bc, or python3 where bc is not installed.
if ! command -v bc >/dev/null 2>&1; then
    bc() { python3 -c 'import sys; v = eval(sys.stdin.read()); print(int(v) if isinstance(v, bool) else v)'; }
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."

write=0
keep=""
while [ $# -gt 0 ]; do
    case "$1" in
        --write) write=1 ;;
        --keep) keep="$2"; shift ;;
        *) echo "usage: $0 [--write] [--keep DIR]" >&2; exit 2 ;;
    esac
    shift
done
runs="${RUNS:-3}"

if [ ! -x /usr/bin/time ]; then
    if command -v apt-get >/dev/null 2>&1; then
        echo "installing GNU time for peak-RSS measurement" >&2
        (apt-get install -y time >/dev/null 2>&1 || sudo apt-get install -y time >/dev/null 2>&1) || true
    fi
fi
have_time=0
[ -x /usr/bin/time ] && have_time=1
[ "$have_time" = 1 ] || echo "warning: /usr/bin/time not found (apt-get install time): peak RSS not measured" >&2

if [ -z "${ETS_BENCH_PREBUILT:-}" ]; then
    cargo build --release --quiet -p ets --bin et-convert
    cargo build --release --quiet -p ets-dev --bin et-gen-bert-base
fi
bin="${ETS_BENCH_BIN_DIR:-target/release}"

if [ -n "$keep" ]; then
    work="$keep"
    mkdir -p "$work"
else
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
fi
src="$work/bert-base/model.safetensors"
out="$work/out.ets"
[ -f "$src" ] || "$bin/et-gen-bert-base" "$work/bert-base" >/dev/null
in_bytes=$(stat -c %s "$src")

now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

cat "$src" >/dev/null # warm-up
cat_times=()
for _ in $(seq "$runs"); do
    t0=$(now); cat "$src" >/dev/null; t1=$(now)
    cat_times+=("$(echo "$t1 - $t0" | bc -l)")
done
cat_s=$(printf '%s\n' "${cat_times[@]}" | median)

conv_times=()
rss_kb=()
cpu_s=()
for _ in $(seq "$runs"); do
    rm -f "$out"
    if [ "$have_time" = 1 ]; then
        t0=$(now)
        /usr/bin/time -v -o "$work/time.txt" "$bin/et-convert" "$src" "$out" --sparsity 0.8 --quiet
        t1=$(now)
        rss_kb+=("$(awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}' "$work/time.txt")")
        cpu_s+=("$(awk -F: '/User time|System time/ {s += $2} END {print s}' "$work/time.txt")")
    else
        t0=$(now)
        "$bin/et-convert" "$src" "$out" --sparsity 0.8 --quiet
        t1=$(now)
    fi
    conv_times+=("$(echo "$t1 - $t0" | bc -l)")
done
conv_s=$(printf '%s\n' "${conv_times[@]}" | median)
out_bytes=$(stat -c %s "$out")

time_ratio=$(echo "$conv_s / $cat_s" | bc -l)
in_mb=$(echo "$in_bytes / 1000000" | bc -l)
printf 'input      %.1f MB (%s)\n' "$in_mb" "$src"
printf 'output     %.1f MB\n' "$(echo "$out_bytes / 1000000" | bc -l)"
printf 'cat        %.3f s (median of %s: %s)\n' "$cat_s" "$runs" "${cat_times[*]}"
printf 'et-convert %.3f s (median of %s: %s)\n' "$conv_s" "$runs" "${conv_times[*]}"
printf 'time ratio %.1fx cat (goal <= 3x): %s\n' "$time_ratio" \
    "$( [ "$(echo "$time_ratio <= 3" | bc -l)" = 1 ] && echo met || echo MISSED)"
rss_line="not measured (no /usr/bin/time)"
cpu_line="not measured"
if [ "$have_time" = 1 ]; then
    cpu_line="$(printf '%s\n' "${cpu_s[@]}" | median) s user+sys (median)"
    printf 'et-convert CPU %s\n' "$cpu_line"
    rss_mb=$(printf '%s\n' "${rss_kb[@]}" | sort -g | tail -1 | awk '{print $1 * 1024 / 1000000}')
    over=$(echo "$rss_mb - $in_mb" | bc -l)
    verdict=$( [ "$(echo "$over < 100" | bc -l)" = 1 ] && echo met || echo MISSED)
    rss_line=$(printf '%.1f MB = input + %.1f MB (goal < input + 100 MB): %s' "$rss_mb" "$over" "$verdict")
    printf 'peak RSS   %s\n' "$rss_line"
fi

if [ "$write" = 1 ]; then
    cpu=$(awk -F: '/model name/ {sub(/^ /, "", $2); print $2; exit}' /proc/cpuinfo)
    cores=$(nproc)
    results=bench/RESULTS.md
    [ -f "$results" ] || printf '# Benchmark results\n' >"$results"
    grep -q '^## Conversion' "$results" || printf '\n## Conversion\n\nWritten by `bench/convert_bench.sh --write`; newest entry last.\n' >>"$results"
    entry=$(cat <<EOF

### $(date -u +%Y-%m-%dT%H:%MZ)

- Command: \`bench/convert_bench.sh --write\` (\`et-convert model.safetensors out.ets --sparsity 0.8\`, release build, f16 output, 16x16 tiles)
- Machine: ${cpu}, ${cores} cores, load average $(cut -d' ' -f1-3 /proc/loadavg)
- Input: BERT-base-sized f32 safetensors, $(printf '%.1f' "$in_mb") MB; output $(printf '%.1f' "$(echo "$out_bytes / 1000000" | bc -l)") MB
- \`cat\` (warm): $(printf '%.3f' "$cat_s") s; et-convert: $(printf '%.3f' "$conv_s") s (medians of ${runs})
- Time ratio: $(printf '%.1f' "$time_ratio")x cat (goal <= 3x)
- et-convert CPU time: ${cpu_line}
- Peak RSS: ${rss_line}
EOF
)
    # Insert the entry at the end of the Conversion section (before the next "## " heading).
    python3 - "$results" "$entry" <<'PY'
import sys
path, entry = sys.argv[1], sys.argv[2]
lines = open(path).read().split("\n")
start = next(i for i, l in enumerate(lines) if l.startswith("## Conversion"))
end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
while end > start + 1 and lines[end - 1] == "":
    end -= 1
lines[end:end] = entry.split("\n")
open(path, "w").write("\n".join(lines).rstrip("\n") + "\n")
PY
    echo "appended to $results"
fi
