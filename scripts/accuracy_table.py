"""Table (and optional SVG chart) of SST-2 dev accuracy after pruning, from scripts/accuracy.sh.

    accuracy_table.py WORK_DIR DEV_TSV HEAD_TSV [CHART.svg] [--cells CELLS.tsv]

Every `dev_METHOD-TILE-SPARSITY.npy` in WORK_DIR is one cell: the same logistic-regression head,
trained on the dense model's embeddings of HEAD_TSV, predicts the dev labels from it. A recovered
cell's method names its steps (`recovered-1000`). `--cells` adds the cells recorded in CELLS.tsv
(measured earlier, in other work folders; columns method, tile, sparsity, accuracy, agreement,
cosine, seconds) to the table and the chart; a cell measured in WORK_DIR replaces the recorded
one, and the file is then rewritten with every cell, so it keeps the standing across runs.
"""
import argparse
import glob
import os
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression


# Methods in the order of the table's rows and the chart's legend.
ORDER = {"weight-norm": 0, "activation-aware": 1, "reconstruction": 2, "calibrated": 3,
         "sensitivity": 4, "grouped": 5, "recovered": 6}
CELL_COLUMNS = ("method", "tile", "sparsity", "accuracy", "agreement", "cosine", "seconds")


def rank(method):
    """Sort key of a method: its row group, then (recovered) the number of steps."""
    base, _, steps = method.partition("-")
    if base == "recovered" and steps.isdigit():
        return (ORDER[base], int(steps))
    return (ORDER.get(method, 9), 0)


def read_cells(path):
    """The cells recorded in a TSV file (none when it does not exist yet)."""
    if not os.path.exists(path):
        return []
    rows = [l.rstrip("\n").split("\t") for l in open(path) if l.strip()]
    if not rows or tuple(rows[0]) != CELL_COLUMNS:
        sys.exit(f"{path}: the first line must name the columns {', '.join(CELL_COLUMNS)}")
    cells = []
    for r in rows[1:]:
        if len(r) != len(CELL_COLUMNS):
            sys.exit(f"{path}: {len(r)} columns in {r}, expected {len(CELL_COLUMNS)}")
        cells.append(dict(method=r[0], tile=r[1], sparsity=float(r[2]), acc=float(r[3]),
                          agree=float(r[4]), cos=float(r[5]), secs=r[6], text=r[3:6]))
    return cells


def figures(c):
    """Accuracy, agreement and cosine as written: a recorded cell keeps its own digits."""
    return c.get("text") or [f"{c['acc']:.4f}", f"{c['agree']:.4f}", f"{c['cos']:.4f}"]


def write_cells(path, cells):
    with open(path, "w") as f:
        f.write("\t".join(CELL_COLUMNS) + "\n")
        for c in cells:
            row = [c["method"], c["tile"], f"{c['sparsity']:g}", *figures(c), c["secs"]]
            f.write("\t".join(row) + "\n")


def unit_length(x):
    """Whether every row of an embedding matrix has unit length (a normalized embedding)."""
    return bool(np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-3))


def check_normalization(path, x, dense_unit):
    """Refuses a cell whose normalization differs from the dense embeddings': the head and the
    cosine would compare embeddings from different builds or settings."""
    if unit_length(x) != dense_unit:
        state = lambda u: "unit length" if u else "not normalized"
        sys.exit(f"{path}: embeddings {state(unit_length(x))}, but the dense ones are "
                 f"{state(dense_unit)}: the work folder mixes embeddings from different builds or "
                 "settings; remove its .npy files (or use another work folder) and measure again")


def labels(path):
    return np.array([int(l.rstrip("\n").split("\t")[1]) for l in open(path).readlines()[1:]])


def chart(path, cells, dense_acc):
    """Accuracy against sparsity, one line per method and tile, as a plain SVG."""
    w, h, left, right, top, bottom = 680, 400, 60, 210, 20, 50
    pw, ph = w - left - right, h - top - bottom
    x = lambda s: left + pw * (s - 0.2) / 0.8
    y = lambda a: top + ph * (1 - (a - 0.45) / 0.4)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           'font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>']
    for s in (0.3, 0.5, 0.7, 0.9):
        out.append(f'<line x1="{x(s):.1f}" y1="{top}" x2="{x(s):.1f}" y2="{top + ph}" stroke="#ddd"/>')
        out.append(f'<text x="{x(s):.1f}" y="{top + ph + 16}" text-anchor="middle">{s:.0%}</text>')
    for a in (0.5, 0.6, 0.7, 0.8):
        out.append(f'<line x1="{left}" y1="{y(a):.1f}" x2="{left + pw}" y2="{y(a):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y(a) + 4:.1f}" text-anchor="end">{a:.2f}</text>')
    out.append(f'<line x1="{left}" y1="{y(dense_acc):.1f}" x2="{left + pw}" y2="{y(dense_acc):.1f}" '
               'stroke="black" stroke-dasharray="4 3"/>')
    out.append(f'<text x="{left + 6}" y="{y(dense_acc) - 5:.1f}">dense {dense_acc:.3f}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{h - 10}" text-anchor="middle">tile sparsity</text>')
    out.append(f'<text x="14" y="{top + ph / 2}" transform="rotate(-90 14 {top + ph / 2})" '
               'text-anchor="middle">SST-2 dev accuracy</text>')
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
              "#17becf", "#7f7f7f", "#bcbd22"]
    # One color per method, one dash pattern per tile shape.
    dashes = {"16x16": "", "32x32": ' stroke-dasharray="7 3"', "64x64": ' stroke-dasharray="2 2"'}
    series = sorted({(c["method"], c["tile"]) for c in cells},
                    key=lambda mt: (rank(mt[0]), mt[1]))
    methods = sorted({m for m, _ in series}, key=rank)
    for i, (m, t) in enumerate(series):
        pts = sorted((c["sparsity"], c["acc"]) for c in cells if (c["method"], c["tile"]) == (m, t))
        col = colors[methods.index(m) % len(colors)]
        dash = dashes.get(t, ' stroke-dasharray="1 3"')
        path_d = " ".join(f"{x(s):.1f},{y(a):.1f}" for s, a in pts)
        out.append(f'<polyline points="{path_d}" fill="none" stroke="{col}" stroke-width="2"{dash}/>')
        for s, a in pts:
            out.append(f'<circle cx="{x(s):.1f}" cy="{y(a):.1f}" r="3" fill="{col}"/>')
        ly = top + 14 + 18 * i
        out.append(f'<line x1="{left + pw + 10}" y1="{ly - 4}" x2="{left + pw + 30}" y2="{ly - 4}" '
                   f'stroke="{col}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{left + pw + 34}" y="{ly}">{m} {t}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    p = argparse.ArgumentParser(description="SST-2 accuracy table of scripts/accuracy.sh")
    p.add_argument("work")
    p.add_argument("dev_tsv")
    p.add_argument("head_tsv")
    p.add_argument("chart", nargs="?", default="")
    p.add_argument("--cells", default="", help="TSV of recorded cells, merged and rewritten")
    a = p.parse_args()
    work, dev_tsv, head_tsv, chart_path = a.work, a.dev_tsv, a.head_tsv, a.chart
    xh, yh = np.load(f"{work}/head_dense.npy"), labels(head_tsv)
    dense = np.load(f"{work}/dev_dense.npy")
    dense_unit = unit_length(dense)
    check_normalization(f"{work}/head_dense.npy", xh, dense_unit)
    yd = labels(dev_tsv)
    clf = LogisticRegression(max_iter=2000, C=1.0).fit(xh, yh)
    pd = clf.predict(dense)
    acc_d = (pd == yd).mean()
    print(f"dense dev accuracy {acc_d:.4f} ({len(yd)} sentences; head on {len(yh)} train sentences)")
    print("| method | tile | sparsity | accuracy (share of dense) | agreement | mean cosine | convert s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    cells = []
    for f in glob.glob(f"{work}/dev_*.npy"):
        name = os.path.basename(f)[4:-4]
        if name == "dense":
            continue
        m, tile, s = name.rsplit("-", 2)
        x = np.load(f)
        check_normalization(f, x, dense_unit)
        p = clf.predict(x)
        cos = (x * dense).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(dense, axis=1) + 1e-30)
        secs_file = f"{work}/{name}.secs"
        secs = open(secs_file).read().strip() if os.path.exists(secs_file) else "?"
        cells.append(dict(method=m, tile=tile, sparsity=float(s), acc=(p == yd).mean(),
                          agree=(p == pd).mean(), cos=cos.mean(), secs=secs))
    if a.cells:
        here = {(c["method"], c["tile"], c["sparsity"]) for c in cells}
        for c in read_cells(a.cells):
            if (c["method"], c["tile"], c["sparsity"]) not in here:
                # A recorded accuracy is a count of dev sentences, rounded to 4 digits.
                c["acc"] = round(c["acc"] * len(yd)) / len(yd)
                cells.append(c)
    cells.sort(key=lambda c: (c["tile"], rank(c["method"]), c["sparsity"]))
    if a.cells:
        write_cells(a.cells, cells)
    for c in cells:
        acc, agree, cos = figures(c)
        print(f"| {c['method']} | {c['tile']} | {c['sparsity']:.0%} | {acc} "
              f"({c['acc'] / acc_d:.1%}) | {agree} | {cos} | {c['secs']} |")
    if chart_path:
        chart(chart_path, cells, acc_d)
        print(f"chart: {chart_path}")


if __name__ == "__main__":
    main()
