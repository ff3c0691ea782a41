"""Accuracy against GPU speed, one point per tile shape and sparsity, as a plain SVG.

    tradeoff_chart.py ACCURACY_CELLS.tsv ENCODER_SPEED.tsv OUT.svg DENSE_ACCURACY [SIZE ...]

Accuracy: the share of the dense model's SST-2 dev accuracy (all-MiniLM-L6-v2) of the plain
command's method (`sensitivity`), of `recovered` (the best step count measured) and of `grouped`
(the plain command with `--method tile-grouped`), from bench/accuracy_cells.tsv, over
DENSE_ACCURACY (the table's dense row). Speed: BERT-base shapes, our file's time against
PyTorch's best, from bench/encoder_speed.tsv: `tile` files pair with the sensitivity and recovered
cells, `tile-grouped` files with the grouped cells, of the same tile shape and global sparsity
(the speed files' masks are uniform, not the calibrated allocation). One panel per SIZE (default
1x128 32x128).
"""
import csv
import sys

COLORS = {"16x16": "#1f77b4", "32x32": "#d62728", "64x64": "#2ca02c"}
# Speed file method -> the accuracy methods whose masks it stands for.
PAIRS = {"none": (), "tile": ("sensitivity", "recovered"), "tile-grouped": ("grouped",)}


def rows(path):
    with open(path) as f:
        return list(csv.DictReader((l for l in f if not l.startswith("#")), delimiter="\t"))


def accuracy(cells_path, dense):
    """(method, tile, sparsity) -> share of `dense`; recovered keeps its best step count."""
    cells = rows(cells_path)
    out = {}
    for c in cells:
        m = "recovered" if c["method"].startswith("recovered") else c["method"]
        key = (m, c["tile"], round(float(c["sparsity"]), 2))
        out[key] = max(out.get(key, 0.0), float(c["accuracy"]) / dense)
    return out


def points(acc, speed, size):
    """(label, tile, x = PyTorch best / ours, y share, method) for every pair measured."""
    pts = []
    for s in speed:
        if s["size"] != size or s["method"] not in PAIRS:
            continue
        x = float(s["pytorch_best_ms"]) / float(s["ms"])
        if s["method"] == "none":
            pts.append(("dense", "dense", x, 1.0, "dense"))
            continue
        sp = round(float(s["sparsity"]), 2)
        for m in PAIRS[s["method"]]:
            y = acc.get((m, s["tile"], sp))
            if y is not None:
                label = f"{sp:.0%} {s['tile']}" + (" grouped" if m == "grouped" else "")
                pts.append((label, s["tile"], x, y, m))
    return pts


def panel(out, pts, size, ox, w, h):
    left, top, pw, ph = ox + 50, 30, w - 70, h - 80
    xs = [p[2] for p in pts] + [1.0]
    x0, x1 = 0.5, max(2.2, max(xs) + 0.1)
    y0 = min([0.85] + [int((p[3] - 0.02) * 20) / 20 for p in pts])
    y1 = 1.02
    x = lambda v: left + pw * (v - x0) / (x1 - x0)
    y = lambda v: top + ph * (1 - (v - y0) / (y1 - y0))
    out.append(f'<text x="{left + pw / 2}" y="18" text-anchor="middle" font-weight="bold">{size} tokens</text>')
    for v in (0.5, 1.0, 1.5, 2.0):
        out.append(f'<line x1="{x(v):.1f}" y1="{top}" x2="{x(v):.1f}" y2="{top + ph}" stroke="#ddd"/>')
        out.append(f'<text x="{x(v):.1f}" y="{top + ph + 16}" text-anchor="middle">{v:.1f}x</text>')
    for v in [y0 + 0.05 * i for i in range(round((1.0 - y0) / 0.05) + 1)]:
        out.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{left + pw}" y2="{y(v):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 4}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.0%}</text>')
    out.append(f'<line x1="{x(1):.1f}" y1="{top}" x2="{x(1):.1f}" y2="{top + ph}" stroke="black" stroke-dasharray="4 3"/>')
    out.append(f'<text x="{left + pw / 2}" y="{top + ph + 34}" text-anchor="middle">speed vs PyTorch best (BERT-base shapes)</text>')
    for label, tile, px, py, m in pts:
        col = COLORS.get(tile, "black")
        if m == "recovered":
            out.append(f'<rect x="{x(px) - 4:.1f}" y="{y(py) - 4:.1f}" width="8" height="8" fill="none" stroke="{col}" stroke-width="2"/>')
        elif m == "grouped":
            tri = f"{x(px):.1f},{y(py) - 5:.1f} {x(px) - 5:.1f},{y(py) + 4:.1f} {x(px) + 5:.1f},{y(py) + 4:.1f}"
            out.append(f'<polygon points="{tri}" fill="{col}"/>')
            out.append(f'<text x="{x(px) + 6:.1f}" y="{y(py) + 4:.1f}" font-size="10">{label}</text>')
        else:
            out.append(f'<circle cx="{x(px):.1f}" cy="{y(py):.1f}" r="4" fill="{col}"/>')
            out.append(f'<text x="{x(px) + 6:.1f}" y="{y(py) + 4:.1f}" font-size="10">{label}</text>')


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    acc = accuracy(sys.argv[1], float(sys.argv[4]))
    speed = rows(sys.argv[2])
    sizes = sys.argv[5:] or ["1x128", "32x128"]
    w, h = 420, 380
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w * len(sizes)}" height="{h + 40}" '
           'font-family="sans-serif" font-size="12">',
           f'<rect width="{w * len(sizes)}" height="{h + 40}" fill="white"/>',
           f'<text x="14" y="{h / 2}" transform="rotate(-90 14 {h / 2})" text-anchor="middle">'
           'SST-2 dev accuracy, share of dense (MiniLM)</text>']
    for i, size in enumerate(sizes):
        pts = points(acc, speed, size)
        panel(out, pts, size, i * w, w, h)
        for label, _, px, py, m in pts:
            print(f"{size}\t{m}\t{label}\t{px:.2f}x\t{py:.1%}")
    legend = " ".join(f'<tspan fill="{c}">&#9679; {t}</tspan>' for t, c in COLORS.items())
    out.append(f'<text x="60" y="{h + 30}">{legend} &#160; circle: one shot (sensitivity); '
               'triangle: grouped masks; square: recovered; dashed: PyTorch</text>')
    out.append("</svg>")
    with open(sys.argv[3], "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
