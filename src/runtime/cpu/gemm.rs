//! Blocked `Y = X W^T` over panels: the one GEMM core that every stored encoding feeds.
//!
//! A weight is seen as a grid of blocks `th` output features high; each *kept* block of a block row
//! is packed (decoded to f32 and transposed to `[width][th]`) into a small panel that stays in cache
//! while every token row of a task streams past it. Dense weights are cut into virtual blocks and
//! tile weights use their own tiles, so a tile file at density d does about d of the dense work
//! through exactly the same inner loop.

use rayon::prelude::*;

use crate::format::Activation;

use super::ops::activate_serial;
use super::simd::{avx2_fma, Fused, Madd, Plain};

/// Token rows per parallel task (each task re-packs its panels, so not too small).
const ROWS_PER_TASK: usize = 256;

/// A weight matrix `[n, k]` visited block by block.
pub(crate) trait PanelSource: Sync {
    /// Output features.
    fn n(&self) -> usize;
    /// Input features.
    fn k(&self) -> usize;
    /// Block height (output features per block row).
    fn block_height(&self) -> usize;
    /// Packs every kept block of block row `br`, in input-column order, back to back onto
    /// `packed` (cleared first) and records `(first_input_col, width, offset)` for each in
    /// `segs`: the block at `offset` is `[width][block_height]` (row `j` holds input feature
    /// `first_input_col + j` for every output feature of the block row; rows past `n` are zero).
    fn pack_block_row(
        &self,
        br: usize,
        scratch: &mut Vec<f32>,
        packed: &mut Vec<f32>,
        segs: &mut Vec<(usize, usize, usize)>,
    );
}

/// What the copy-out pass does to each output element besides placing it.
#[derive(Clone, Copy, Default)]
pub(crate) struct Epilogue<'a> {
    /// Added per output feature (length `n`).
    pub(crate) bias: Option<&'a [f32]>,
    /// Applied to each finished output row while it is in cache.
    pub(crate) act: Option<Activation>,
    /// `[m, n]`, added last (after the bias and the activation): the residual connection.
    pub(crate) residual: Option<&'a [f32]>,
}

/// `X` (`[m, k]`) interleaved once by groups of [`MR`] rows, so several GEMMs over the same
/// input (Q, K and V) share one packing pass.
pub(crate) struct PackedX {
    data: Vec<f32>,
    m: usize,
    k: usize,
}

impl PackedX {
    /// Interleaves `x` (`[m, k]` row-major; shorter inputs are treated as empty).
    pub(crate) fn new(x: &[f32], m: usize, k: usize) -> PackedX {
        if x.len() < m * k {
            return PackedX {
                data: Vec::new(),
                m: 0,
                k,
            };
        }
        PackedX {
            data: pack_rows(x, m, k),
            m,
            k,
        }
    }

    /// Token rows.
    pub(crate) fn rows(&self) -> usize {
        self.m
    }
}

/// `Y[m, n] = X[m, k] W^T` for the weight behind `src`, multithreaded over groups of block rows
/// and token rows.
/// With `bias` (length `n`), it is added as the blocks are copied out (no extra pass over `Y`).
/// With `act`, the activation is applied to each finished output row while it is in cache.
pub(crate) fn gemm(
    src: &dyn PanelSource,
    x: &[f32],
    m: usize,
    bias: Option<&[f32]>,
    act: Option<Activation>,
) -> Vec<f32> {
    let k = src.k();
    if x.len() < m * k {
        return vec![0f32; m * src.n()];
    }
    let epi = Epilogue {
        bias,
        act,
        residual: None,
    };
    gemm_packed(src, &PackedX::new(x, m, k), epi)
}

/// [`gemm`] on an input packed beforehand; `xp.k` must equal `src.k()` (else `Y` is zero).
pub(crate) fn gemm_packed(src: &dyn PanelSource, xp: &PackedX, epi: Epilogue<'_>) -> Vec<f32> {
    let (n, k, th, m) = (src.n(), src.k(), src.block_height(), xp.m);
    let mut y = vec![0f32; m * n];
    if m == 0 || n == 0 || th == 0 || xp.k != k {
        return y;
    }
    let block_rows = n.div_ceil(th);
    // About 128 output features per task, but enough tasks to keep every thread busy.
    let row_tasks = m.div_ceil(ROWS_PER_TASK);
    let want_tasks = 4 * rayon::current_num_threads();
    let mut group = (128 / th).max(1);
    while group > 1 && block_rows.div_ceil(group) * row_tasks < want_tasks {
        group /= 2;
    }
    let groups = block_rows.div_ceil(group);
    // Task row starts are multiples of MR, so each task reads its own slice of the shared `X`.
    let xp_all = &xp.data;
    let parts: Vec<(usize, usize, usize, Vec<f32>)> = (0..groups * row_tasks)
        .into_par_iter()
        .map(|task| {
            let (g, rt) = (task / row_tasks, task % row_tasks);
            let r0 = rt * ROWS_PER_TASK;
            let rows = ROWS_PER_TASK.min(m - r0);
            let padded = rows.div_ceil(MR) * MR;
            let xp = &xp_all[r0 * k..(r0 + padded) * k];
            let brs = g * group..((g + 1) * group).min(block_rows);
            let mut out = vec![0f32; brs.len() * padded * th];
            let mut scratch = Vec::new();
            // All kept blocks of a block row packed back to back, so the kernel keeps its
            // accumulators in registers across the whole row instead of flushing per block.
            let mut packed: Vec<f32> = Vec::new();
            let mut segs: Vec<(usize, usize, usize)> = Vec::new();
            for (bi, br) in brs.clone().enumerate() {
                src.pack_block_row(br, &mut scratch, &mut packed, &mut segs);
                let o = &mut out[bi * padded * th..(bi + 1) * padded * th];
                kernel(xp, k, padded / MR, &segs, &packed, th, o);
            }
            (brs.start, r0, rows, out)
        })
        .collect();
    let residual = epi.residual.filter(|r| r.len() == m * n);
    // Copy out (bias, activation, residual) in parallel over token-row chunks: `parts` is in
    // task order, so the parts of row chunk `rt` are `parts[g * row_tasks + rt]`.
    y.par_chunks_mut(ROWS_PER_TASK * n)
        .enumerate()
        .for_each(|(rt, ychunk)| {
            for (i, yrow) in ychunk.chunks_exact_mut(n).enumerate() {
                let r = (rt * ROWS_PER_TASK + i) * n;
                // Fold the residual into the copy when nothing has to come between them.
                let res_row = residual.map(|res| &res[r..r + n]);
                let fused_res = if epi.act.is_none() { res_row } else { None };
                for (br0, _, rows, out) in parts.iter().skip(rt).step_by(row_tasks) {
                    let padded = rows.div_ceil(MR) * MR;
                    for (bi, block) in out.chunks_exact(padded * th).enumerate() {
                        let c0 = (br0 + bi) * th;
                        let width = th.min(n - c0);
                        let row = &block[i * th..i * th + width];
                        let d = &mut yrow[c0..c0 + width];
                        let b = epi.bias.and_then(|b| b.get(c0..c0 + width));
                        let res = fused_res.map(|res| &res[c0..c0 + width]);
                        copy_block(d, row, b, res);
                    }
                }
                if let Some(act) = epi.act {
                    activate_serial(yrow, act);
                    if let Some(res) = res_row {
                        for (o, &v) in yrow.iter_mut().zip(res) {
                            *o += v;
                        }
                    }
                }
            }
        });
    y
}

/// `d = row (+ b) (+ res)`, summed in that order.
#[inline]
fn copy_block(d: &mut [f32], row: &[f32], b: Option<&[f32]>, res: Option<&[f32]>) {
    match (b, res) {
        (Some(b), Some(res)) => {
            for (((o, &v), &bb), &rr) in d.iter_mut().zip(row).zip(b).zip(res) {
                *o = v + bb + rr;
            }
        }
        (Some(b), None) => {
            for ((o, &v), &bb) in d.iter_mut().zip(row).zip(b) {
                *o = v + bb;
            }
        }
        (None, Some(res)) => {
            for ((o, &v), &rr) in d.iter_mut().zip(row).zip(res) {
                *o = v + rr;
            }
        }
        (None, None) => d.copy_from_slice(row),
    }
}

/// Token rows per register block.
const MR: usize = 4;

/// Interleaves `rows` rows of `x` (`[rows, k]`) by groups of [`MR`]: `[group][k][MR]`, zero rows
/// padding the last group, so the kernel reads each group's inputs as one contiguous stream.
fn pack_rows(x: &[f32], rows: usize, k: usize) -> Vec<f32> {
    let groups = rows.div_ceil(MR);
    let mut xp = vec![0f32; groups * k * MR];
    xp.par_chunks_mut(k * MR).enumerate().for_each(|(g, dst)| {
        let src: [&[f32]; MR] = std::array::from_fn(|lane| {
            let r = g * MR + lane;
            if r < rows {
                &x[r * k..(r + 1) * k]
            } else {
                &[]
            }
        });
        if src.iter().all(|r| r.len() == k) {
            // Full group: one contiguous write stream fed by the MR row streams.
            for (j, d) in dst.chunks_exact_mut(MR).enumerate() {
                for (lane, o) in d.iter_mut().enumerate() {
                    *o = src[lane][j];
                }
            }
            return;
        }
        for (lane, row) in src.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                dst[j * MR + lane] = v;
            }
        }
    });
    xp
}

/// `out[groups*MR][th] += Xp[.., c0..c0+w] * panel[w][th]`, dispatched on CPU features.
#[allow(clippy::too_many_arguments)]
fn kernel(
    xp: &[f32],
    k: usize,
    groups: usize,
    segs: &[(usize, usize, usize)],
    packed: &[f32],
    th: usize,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        if avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above), which is all that
            // `kernel_avx2` is compiled to assume; its body is safe Rust.
            unsafe { kernel_avx2(xp, k, groups, segs, packed, th, out) };
            return;
        }
    }
    kernel_body::<Plain>(xp, k, groups, segs, packed, th, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
fn kernel_avx2(
    xp: &[f32],
    k: usize,
    groups: usize,
    segs: &[(usize, usize, usize)],
    packed: &[f32],
    th: usize,
    out: &mut [f32],
) {
    kernel_body::<Fused>(xp, k, groups, segs, packed, th, out);
}

/// Input features per cache block: the kept `X` columns of a task's rows within one block
/// (`ROWS_PER_TASK x KC` floats at most) stay in L2 while every row group streams past them.
const KC: usize = 256;

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn kernel_body<F: Madd>(
    xp: &[f32],
    k: usize,
    groups: usize,
    segs: &[(usize, usize, usize)],
    packed: &[f32],
    th: usize,
    out: &mut [f32],
) {
    // Segments are in input-column order; cut them into runs of one cache block each.
    let mut rest = segs;
    while let Some(&(first, _, _)) = rest.first() {
        let block = first / KC;
        let run = rest.iter().take_while(|s| s.0 / KC == block).count();
        let (segs, tail) = rest.split_at(run);
        rest = tail;
        for g in 0..groups {
            let xg = &xp[g * k * MR..(g + 1) * k * MR];
            let o = &mut out[g * MR * th..(g + 1) * MR * th];
            let mut ic = 0;
            while ic + 16 <= th {
                micro::<F, 16>(xg, segs, packed, th, ic, o);
                ic += 16;
            }
            while ic + 8 <= th {
                micro::<F, 8>(xg, segs, packed, th, ic, o);
                ic += 8;
            }
            while ic < th {
                micro::<F, 1>(xg, segs, packed, th, ic, o);
                ic += 1;
            }
        }
    }
}

/// The register block: `MR` token rows by `NR` output features, accumulated over the panel.
#[inline(always)]
fn micro<F: Madd, const NR: usize>(
    xg: &[f32],
    segs: &[(usize, usize, usize)],
    packed: &[f32],
    th: usize,
    ic: usize,
    out: &mut [f32],
) {
    let mut acc = [[0f32; NR]; MR];
    for &(c0, w, off) in segs {
        let xs = &xg[c0 * MR..(c0 + w) * MR];
        let panel = &packed[off..off + w * th];
        for (xv, prow) in xs.chunks_exact(MR).zip(panel.chunks_exact(th)) {
            let p = &prow[ic..ic + NR];
            for r in 0..MR {
                for l in 0..NR {
                    acc[r][l] = F::madd(xv[r], p[l], acc[r][l]);
                }
            }
        }
    }
    for r in 0..MR {
        let o = &mut out[r * th + ic..r * th + ic + NR];
        for l in 0..NR {
            o[l] += acc[r][l];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain row-major f32 matrix cut into blocks of `th x tw`, for testing the driver.
    struct Plainly {
        w: Vec<f32>,
        n: usize,
        k: usize,
        th: usize,
        tw: usize,
    }

    impl PanelSource for Plainly {
        fn n(&self) -> usize {
            self.n
        }
        fn k(&self) -> usize {
            self.k
        }
        fn block_height(&self) -> usize {
            self.th
        }
        fn pack_block_row(
            &self,
            br: usize,
            _scratch: &mut Vec<f32>,
            packed: &mut Vec<f32>,
            segs: &mut Vec<(usize, usize, usize)>,
        ) {
            packed.clear();
            segs.clear();
            let mut c0 = 0;
            while c0 < self.k {
                let w = self.tw.min(self.k - c0);
                let off = packed.len();
                packed.resize(off + w * self.th, 0.0);
                for i in 0..self.th {
                    let r = br * self.th + i;
                    if r < self.n {
                        for j in 0..w {
                            packed[off + j * self.th + i] = self.w[r * self.k + c0 + j];
                        }
                    }
                }
                segs.push((c0, w, off));
                c0 += w;
            }
        }
    }

    #[test]
    fn matches_naive_on_ragged_shapes() {
        let mut rng = ets_testkit::rng::test_rng("matches_naive_on_ragged_shapes");
        for &(m, n, k, th, tw) in &[
            (1, 8, 8, 8, 8),
            (7, 40, 33, 16, 8),
            (70, 100, 130, 32, 64),
            (5, 24, 17, 8, 128),
            (131, 17, 5, 128, 16),
        ] {
            let w = rng.symmetric_vec(n * k, 0.5);
            let x = rng.symmetric_vec(m * k, 0.5);
            let src = Plainly {
                w: w.clone(),
                n,
                k,
                th,
                tw,
            };
            let y = gemm(&src, &x, m, None, None);
            for r in 0..m {
                for c in 0..n {
                    let want: f64 = (0..k)
                        .map(|j| f64::from(x[r * k + j]) * f64::from(w[c * k + j]))
                        .sum();
                    let got = f64::from(y[r * n + c]);
                    assert!((want - got).abs() < 1e-4, "m{m} n{n} k{k}: {want} vs {got}");
                }
            }
        }
    }
}
