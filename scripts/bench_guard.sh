#!/usr/bin/env bash
# Speed guard for a change to the CUDA runtime: the same `et-bench one` rows timed with the
# binary from before the change (OLD) and after it (NEW) in one run on one GPU, alternating
# OLD, NEW, NEW, OLD per row; the best of each binary's two runs is compared. Prints a table last
# and flags rows where NEW's fastest tile kernel is more than 5% slower.
#
#   OLD=path/et-bench-old NEW=path/et-bench bash scripts/bench_guard.sh
#
# Env: CUDA_HOME (default /usr/local/cuda), ETS_GUARD_ROWS (one `et-bench one` argument set per
# line; default below). Masks are random per process, so rows with random masks at low density
# vary with the mask; density-1 and grouped rows do not.
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
rows="${ETS_GUARD_ROWS:-"--tokens 16384 --k 768 --n 768 --density 1 --tile 16
--tokens 16384 --k 3072 --n 768 --density 1 --tile 16
--tokens 16384 --k 3072 --n 768 --density 1 --tile 64
--tokens 16384 --k 768 --n 2304 --density 0.5 --tile 64 --grouped
--tokens 16384 --k 3072 --n 768 --density 0.5 --tile 64 --grouped
--tokens 4096 --k 768 --n 3072 --density 0.5 --tile 64 --grouped
--tokens 16384 --k 768 --n 3072 --density 0.5 --tile 16 --grouped
--tokens 16384 --k 768 --n 3072 --density 0.5 --tile 16
--tokens 16384 --k 3072 --n 768 --density 0.3 --tile 16
--tokens 16384 --k 768 --n 3072 --density 0.2 --tile 64 --tw 16
--tokens 16384 --k 768 --n 2304 --density 0.5 --tile 128 --tw 16
--tokens 128 --k 768 --n 3072 --density 0.5 --tile 16"}"
log="$(mktemp)"
i=0
while IFS= read -r args; do
    [ -z "$args" ] && continue
    i=$((i + 1))
    for who in OLD NEW NEW OLD; do
        bin="$OLD"; [ "$who" = NEW ] && bin="$NEW"
        line="$(timeout 60 "$bin" one $args 2>&1 | grep -E '^M ' | head -1)"
        echo "$i|$who|$args|$line" | tee -a "$log"
    done
done <<< "$rows"
python3 - "$log" <<'PY'
import re, sys
rows = {}
for l in open(sys.argv[1]):
    i, who, args, line = l.rstrip("\n").split("|", 3)
    m = re.search(r"tile ([0-9.]+) ms \((\w+)\), cublas ([0-9.]+) ms", line)
    others = [float(x) for x in re.findall(r"\w+ ([0-9.]+)(?:,|\])", line.split("[", 1)[-1])] if "[" in line else []
    if not m:
        rows.setdefault((int(i), args), {}).setdefault(who, []).append(None)
        continue
    best = min([float(m.group(1))] + others)
    rows.setdefault((int(i), args), {}).setdefault(who, []).append((best, m.group(2), float(m.group(3))))
print("== guard: best tile kernel ms, OLD vs NEW (best of two runs each); ratio NEW/OLD")
print(f"{'row':<62} {'old ms':>8} {'new ms':>8} {'ratio':>6} {'old auto':>10} {'new auto':>10}  flag")
slow = bad = 0
for (i, args), r in sorted(rows.items()):
    o = [x for x in r.get("OLD", []) if x]; n = [x for x in r.get("NEW", []) if x]
    if not o or not n:
        bad += 1
        print(f"{args:<62} {'-':>8} {'-':>8} {'-':>6}  MISSING OUTPUT")
        continue
    ob, nb = min(o), min(n)
    ratio = nb[0] / ob[0]
    flag = "SLOWER >5%" if ratio > 1.05 else ""
    slow += ratio > 1.05
    print(f"{args:<62} {ob[0]:8.4f} {nb[0]:8.4f} {ratio:6.3f} {ob[1]:>10} {nb[1]:>10}  {flag}")
print(f"guard: {len(rows)} rows, {slow} more than 5% slower, {bad} without output")
PY
