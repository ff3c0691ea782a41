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
# report the rest as not run; default: no limit); ETS_GUARD_ORDER (the runs of each row, default
# "OLD NEW NEW OLD"); ETS_GUARD_RECHECK (a ratio: after the pass, rows whose NEW/OLD is above it
# run once more in the reverse order, time limit permitting); ETS_GUARD_LOG (the run log, appended
# to, so that runs split over several calls are summarised together; default: a temporary file). Masks are random per process, so rows with
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
log="${ETS_GUARD_LOG:-$(mktemp)}"
order="${ETS_GUARD_ORDER:-OLD NEW NEW OLD}"
start=$(date +%s)
# run_rows ORDER: every row of stdin, each binary in ORDER; rows past the time limit are logged
# as not run.
run_rows() {
    local args who bin line
    while IFS= read -r args; do
        [ -z "$args" ] && continue
        if [ "$limit" -gt 0 ] && [ $(( $(date +%s) - start )) -ge "$limit" ]; then
            echo "SKIP|$args|" | tee -a "$log"
            continue
        fi
        for who in $1; do
            bin="$OLD"; [ "$who" = NEW ] && bin="$NEW"
            line="$(timeout 60 "$bin" one $args 2>&1 | grep -E '^M +[0-9]' | head -1)"
            echo "$who|$args|$line" | tee -a "$log"
        done
    done
}
run_rows "$order" <<< "$rows"
if [ -n "${ETS_GUARD_RECHECK:-}" ]; then
    again="$(python3 - "$log" "$ETS_GUARD_RECHECK" <<'PY'
import re, sys
best = {}
for l in open(sys.argv[1]):
    who, args, line = l.rstrip("\n").split("|", 2)
    m = re.search(r"tile ([0-9.]+) ms", line)
    if m and who in ("OLD", "NEW"):
        b = best.setdefault(args, {})
        b[who] = min(b.get(who, 1e9), float(m.group(1)))
for args, b in best.items():
    if "OLD" in b and "NEW" in b and b["NEW"] / b["OLD"] > float(sys.argv[2]):
        print(args)
PY
)"
    echo "guard: rechecking $(printf '%s' "$again" | grep -c .) rows"
    run_rows "NEW OLD" <<< "$again"
fi
echo "guard: $(( $(date +%s) - start )) s"
python3 - "$log" <<'PY'
import re, sys
rows = {}
for l in open(sys.argv[1]):
    who, args, line = l.rstrip("\n").split("|", 2)
    r = rows.setdefault(args, {})
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
for args, r in rows.items():
    if "SKIP" in r and "OLD" not in r:
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
