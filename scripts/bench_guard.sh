#!/usr/bin/env bash
# Speed guard for a change to the CUDA runtime: `et-bench one` rows timed with the binary from
# before the change (OLD) and after it (NEW) in one run on one GPU, alternating OLD, NEW, NEW, OLD
# per row; the best of each binary's two runs is compared. Prints a table last and flags rows
# where NEW's fastest tile kernel is more than 5% slower. cuBLAS, timed in the same processes on
# the same shapes, shows how much the machine itself moved between the runs.
#
#   OLD=path/et-bench-old NEW=path/et-bench bash scripts/bench_guard.sh
#
# The default rows are the benchmark sweep's at 16384 tokens (`et-bench bench`) that `et-bench
# one` can draw: four weight shapes x (16x16 random at five densities, 16x16 grouped, 64x64
# random at four, 64x64 grouped, 32x32, 128x16 and 64x16 random at three each) = 96 rows.
# Env: CUDA_HOME (default /usr/local/cuda); ETS_GUARD_ROWS (one `et-bench one` argument set per
# line, replacing the default); ETS_GUARD_SECONDS (stop starting rows after this many seconds and
# report the rest as not run; default: no limit). Masks are random per process, so rows with
# random masks at low density vary with the mask; density-1 and grouped rows do not.
set -uo pipefail
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
links="$(mktemp -d)"
for lib in nvrtc cublas cublasLt; do
    for d in "$CUDA_HOME/lib64" "$CUDA_HOME/lib" "$CUDA_HOME/targets/x86_64-linux/lib"; do
        so="$(ls "$d"/lib$lib.so.[0-9]* 2>/dev/null | grep -v builtins | sort -V | tail -n1)"
        if [ -n "$so" ]; then ln -sf "$so" "$links/lib$lib.so"; break; fi
    done
done
export LD_LIBRARY_PATH="$links:$CUDA_HOME/lib64:${LD_LIBRARY_PATH:-}"
export ETS_KERNEL_CACHE="${ETS_KERNEL_CACHE:-$(mktemp -d)}"

sweep_rows() {
    local fam d nk
    for fam in "1 0.5 0.3 0.2 0.1|--tile 16" "0.5 0.2 0.1|--tile 16 --grouped" \
        "1 0.5 0.2 0.1|--tile 64" "0.5 0.2 0.1|--tile 64 --grouped" "0.5 0.2 0.1|--tile 32" \
        "0.5 0.2 0.1|--tile 128 --tw 16" "0.5 0.2 0.1|--tile 64 --tw 16"; do
        for d in ${fam%%|*}; do
            for nk in "2304 768" "768 768" "3072 768" "768 3072"; do
                set -- $nk
                echo "--tokens 16384 --n $1 --k $2 --density $d ${fam#*|}"
            done
        done
    done
}
# The rows in a stride-37 order (37 is prime to 96), so a run stopped by the time limit has
# sampled every family and shape rather than finished some and skipped the others.
spread() { awk '{ r[NR - 1] = $0 } END { for (i = 0; i < NR; i++) print r[(i * 37) % NR] }'; }
rows="${ETS_GUARD_ROWS:-$(sweep_rows | spread)}"
limit="${ETS_GUARD_SECONDS:-0}"
log="$(mktemp)"
start=$(date +%s)
i=0
while IFS= read -r args; do
    [ -z "$args" ] && continue
    i=$((i + 1))
    if [ "$limit" -gt 0 ] && [ $(( $(date +%s) - start )) -ge "$limit" ]; then
        echo "$i|SKIP|$args|" | tee -a "$log"
        continue
    fi
    for who in OLD NEW NEW OLD; do
        bin="$OLD"; [ "$who" = NEW ] && bin="$NEW"
        line="$(timeout 60 "$bin" one $args 2>&1 | grep -E '^M +[0-9]' | head -1)"
        echo "$i|$who|$args|$line" | tee -a "$log"
    done
done <<< "$rows"
echo "guard: $(( $(date +%s) - start )) s for $i rows"
python3 - "$log" <<'PY'
import re, sys
rows = {}
for l in open(sys.argv[1]):
    i, who, args, line = l.rstrip("\n").split("|", 3)
    r = rows.setdefault((int(i), args), {})
    m = re.search(r"tile ([0-9.]+) ms \((\w+)\), cublas ([0-9.]+) ms", line)
    if not m:
        r.setdefault(who, []).append(None)
        continue
    others = [float(x) for x in re.findall(r"\w+ ([0-9.]+)(?:,|\])", line.split("[", 1)[-1])] if "[" in line else []
    best = min([float(m.group(1))] + others)
    r.setdefault(who, []).append((best, m.group(2), float(m.group(3))))
print("== guard: best tile kernel ms, OLD vs NEW (best of two runs each); ratio NEW/OLD; cuBLAS ratio NEW/OLD as the machine's own drift")
print(f"{'row':<66} {'old ms':>8} {'new ms':>8} {'ratio':>6} {'cublas':>6} {'old auto':>9} {'new auto':>9}  flag")
slow = bad = skipped = 0
ratios = []
for (i, args), r in sorted(rows.items()):
    if "SKIP" in r:
        skipped += 1
        print(f"{args:<66} {'-':>8} {'-':>8} {'-':>6} {'-':>6}  NOT RUN (time limit)")
        continue
    o = [x for x in r.get("OLD", []) if x]; n = [x for x in r.get("NEW", []) if x]
    if not o or not n:
        bad += 1
        print(f"{args:<66} {'-':>8} {'-':>8} {'-':>6} {'-':>6}  MISSING OUTPUT")
        continue
    ob, nb = min(o), min(n)
    ratio = nb[0] / ob[0]
    cub = min(x[2] for x in n) / min(x[2] for x in o)
    ratios.append(ratio)
    flag = "SLOWER >5%" if ratio > 1.05 else ""
    slow += ratio > 1.05
    print(f"{args:<66} {ob[0]:8.4f} {nb[0]:8.4f} {ratio:6.3f} {cub:6.3f} {ob[1]:>9} {nb[1]:>9}  {flag}")
if ratios:
    ratios.sort()
    med = ratios[len(ratios) // 2]
    print(f"guard: ratio NEW/OLD median {med:.3f}, range {ratios[0]:.3f}-{ratios[-1]:.3f}")
print(f"guard: {len(rows)} rows, {len(ratios)} compared, {slow} more than 5% slower, {bad} without output, {skipped} not run")
PY
