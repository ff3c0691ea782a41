#!/usr/bin/env python3
"""The peer a user of PyTorch would reach for: block-sparse (BSR) weights in torch.nn.functional.linear,
timed against PyTorch's dense f16 linear (cuBLAS) on the shapes and masks of `et-bench all`.

Prints one line per case and, last, a table of ratios (dense ms / BSR ms: above 1x the sparse
weight is faster). Needs a CUDA GPU and PyTorch; BSR products of f16 on the GPU run PyTorch's
Triton kernels where Triton is installed. Usage: python3 scripts/torch_bsr_bench.py [--quick]
"""
import statistics
import sys

import torch
import torch.nn.functional as F

SHAPES = [(768, 2304), (768, 768), (768, 3072), (3072, 768)]  # (K, N) as in et-bench
TOKENS = [4096, 16384]
# (tile edge, mask kind, densities): the families whose rows et-bench's goal table prints.
FAMILIES = [
    (16, "random", [1.0, 0.5, 0.2, 0.1]),
    (64, "random", [0.5, 0.1]),
    (64, "grouped", [0.5, 0.2, 0.1]),
]


def tile_mask(gen, rows, cols, density, kind):
    """A rows x cols tile mask; `grouped`: block rows in pairs (128 features) keep the same columns."""
    if kind == "random":
        return torch.rand(rows, cols, generator=gen) < density
    keep = torch.zeros(rows, cols, dtype=torch.bool)
    for r0 in range(0, rows, 2):
        keep[r0 : r0 + 2] = torch.rand(cols, generator=gen) < density
    return keep


def time_ms(fn, reps=9):
    """Median ms per call over `reps` batches of back-to-back calls sized to about 2 ms."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(3):
        fn()
    end.record()
    torch.cuda.synchronize()
    per = max(3, min(200, int(2.0 / max(start.elapsed_time(end) / 3, 1e-4))))
    times = []
    for _ in range(reps):
        start.record()
        for _ in range(per):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / per)
    return statistics.median(times)


def main():
    quick = "--quick" in sys.argv
    if not torch.cuda.is_available():
        print("torch_bsr_bench: no CUDA device visible to PyTorch")
        return 1
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(1)
    print(f"== PyTorch {torch.__version__} BSR linear vs dense linear, f16, {torch.cuda.get_device_name()}")
    rows = []
    for k, n in SHAPES[:1] if quick else SHAPES:
        w_full = (torch.rand(n, k, generator=gen) * 2 - 1).to(dev, torch.float16) / k**0.5
        for tokens in TOKENS[:1] if quick else TOKENS:
            x = (torch.rand(tokens, k, generator=gen) * 2 - 1).to(dev, torch.float16)
            dense_ms = time_ms(lambda: F.linear(x, w_full))
            for tile, kind, densities in FAMILIES:
                for density in densities:
                    keep = tile_mask(gen, -(-n // tile), -(-k // tile), density, kind)
                    mask = keep.repeat_interleave(tile, 0)[:n].repeat_interleave(tile, 1)[:, :k]
                    w = (w_full * mask.to(dev)).contiguous()
                    try:
                        w_bsr = w.to_sparse_bsr((tile, tile))
                        ref = F.linear(x, w).float()
                        err = (F.linear(x, w_bsr).float() - ref).abs().max().item()
                        scale = ref.abs().max().item() or 1.0
                        if not err <= 1e-2 * scale:
                            raise RuntimeError(f"wrong result: max error {err:.3g} of {scale:.3g}")
                        bsr_ms = time_ms(lambda: F.linear(x, w_bsr))
                        note = ""
                    except Exception as e:  # an unsupported case is reported, not fatal
                        bsr_ms, note = float("nan"), f" ({type(e).__name__}: {str(e).splitlines()[0][:80]})"
                    real = keep.float().mean().item()
                    rows.append((k, n, tokens, tile, kind, density, dense_ms, bsr_ms, real))
                    print(
                        f"torch M{tokens:>6} {k:>4}->{n:<4} {tile}x{tile} {kind:<7} d{real:.2f}: "
                        f"dense {dense_ms:.4f} ms, bsr {bsr_ms:.4f} ms, ratio {dense_ms / bsr_ms:.2f}x{note}"
                    )
    print("== SUMMARY PyTorch BSR linear (ratio = dense linear ms / BSR linear ms)")
    heads = " ".join(f"{f'M={t}':>7}" for t in TOKENS)
    print(f"{'shape':<10} {'mask':<15} {'dens':>5} {heads}  (dens: the density asked)")
    keys = sorted({(r[0], r[1], r[3], r[4], r[5]) for r in rows}, key=lambda t: (SHAPES.index((t[0], t[1])), t[2], t[3], -t[4]))
    for k, n, tile, kind, dens in keys:
        cells = []
        for tokens in TOKENS:
            hit = [r for r in rows if r[:6] == (k, n, tokens, tile, kind, dens)]
            ok = hit and hit[0][7] == hit[0][7]  # NaN: the case failed
            cells.append(f"{hit[0][6] / hit[0][7]:.2f}x" if ok else "-")
        print(f"{f'{k}->{n}':<10} {f'{tile}x{tile} {kind}':<15} {dens:>5.2f} " + " ".join(f"{c:>7}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
