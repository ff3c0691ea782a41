#!/usr/bin/env python3
"""Warp stall samples of one Nsight Compute report per SASS instruction, summed over the code
between landmark instructions (barrier waits, MMA waits, shared-memory matrix stores, tensor
copies), with the top stall reasons of each stretch and the hottest instructions.

Usage: ncu --import REPORT --page source --csv --print-source sass > src.csv
       python3 scripts/ncu_source_summary.py src.csv
"""
import csv
import sys

LANDMARKS = ("SYNCS.PHASECHK", "WARPGROUP.DEPBAR", "BAR.SYNC", "STSM", "FENCE.VIEW.ASYNC",
             "UTMASTG", "UTMALDG", "UBLKCP", "EXIT")


def main(path):
    rows = list(csv.reader(open(path, newline="")))
    head = next((i for i, r in enumerate(rows) if "Source" in r), None)
    if head is None:
        sys.exit(f"{path}: no per-instruction table")
    h = rows[head]
    data = [r for r in rows[head + 1:] if len(r) == len(h)]
    col = h.index("Warp Stall Sampling (All Samples)")
    src = h.index("Source")
    reasons = [(c, h.index(c)) for c in h if c.startswith("stall_") and "Not Issued" not in c]
    num = lambda x: float(x or 0)
    total = sum(num(r[col]) for r in data) or 1.0
    # Stretches of code: each ends at a landmark instruction (included).
    start = 0
    print(f"{total:.0f} samples, {len(data)} instructions")
    for i, r in enumerate(data):
        if any(k in r[src] for k in LANDMARKS) or i == len(data) - 1:
            part = data[start:i + 1]
            share = sum(num(x[col]) for x in part) / total * 100
            if share >= 1.0:
                top = sorted(((sum(num(x[j]) for x in part), c[6:]) for c, j in reasons), reverse=True)[:3]
                why = ", ".join(f"{n} {v / total * 100:.1f}%" for v, n in top if v > 0)
                print(f"{share:5.1f}%  [{start:5d}-{i:5d}] ends at {r[src].strip()[:48]:48s} {why}")
            start = i + 1
    print("hottest instructions:")
    for r in sorted(data, key=lambda x: -num(x[col]))[:12]:
        print(f"{num(r[col]) / total * 100:5.1f}%  {r[src].strip()[:100]}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "src.csv")
