//! Calibrated pruning of one linear weight: which column groups a band of output rows keeps, and
//! the kept weights refitted so the pruned layer reproduces the dense layer's output.
//!
//! For a weight `W` (`[rows, n]`) with bias `b`, calibration gives the layer's inputs twice: `X_p`
//! from the model pruned so far and `X_d` from the dense model, each with a ones column appended
//! for the bias. [`LinearStats`] accumulates `G = X_p'X_p` and `C = X_p'X_d`. The target of every
//! output row `r` is the dense output `X_d w_r`, so the least-squares problem over a kept column
//! set `S` is `G[S,S] v = (C w_r)[S]`, with `G` damped by [`DAMPING`] of its mean diagonal.
//!
//! A *band* is a set of output rows that must keep the same input columns (a block row of tiles,
//! a group of block rows, or the whole matrix for column pruning); a *unit* is a group of input
//! columns removed together (the columns of one tile column, or one column). [`prune_band`]
//! starts from the least-squares optimum over all columns and removes units greedily, each time
//! the one whose removal adds the least reconstruction error, updating the inverse Hessian as the
//! group form of Optimal Brain Surgeon does; it ends with an exact refit over the kept columns.
//! The bias column is never removed.

use rayon::prelude::*;

/// Damping added to the diagonal of `G`: this fraction of its mean diagonal.
pub const DAMPING: f64 = 0.01;

/// Calibrated pruning that cannot proceed.
#[derive(Debug, thiserror::Error)]
pub enum CalibratedError {
    /// Input activations of the wrong length for the statistics.
    #[error("calibration inputs: expected a multiple of {expected} values, got {actual}")]
    InputShape {
        /// Features per token.
        expected: usize,
        /// Values given.
        actual: usize,
    },
    /// A weight whose shape does not match the statistics or the band.
    #[error("weight shape: expected {expected} values, got {actual}")]
    WeightShape {
        /// Values expected.
        expected: usize,
        /// Values given.
        actual: usize,
    },
    /// The damped Gram matrix is not positive definite (e.g. NaN activations).
    #[error("Gram matrix not positive definite at pivot {pivot} (value {value})")]
    NotPositiveDefinite {
        /// Index of the failing pivot.
        pivot: usize,
        /// Its value.
        value: f64,
    },
    /// No calibration tokens were accumulated.
    #[error("no calibration tokens")]
    NoSamples,
}

/// Second-moment statistics of one linear layer's inputs, bias column included.
#[derive(Debug, Clone)]
pub struct LinearStats {
    n: usize,
    g: Vec<f64>,
    c: Vec<f64>,
    tokens: usize,
}

/// Transposes `[m, n]` rows into `[n + 1, m]` columns with a trailing ones column.
fn columns_with_ones(x: &[f32], m: usize, n: usize) -> Vec<f32> {
    let mut t = vec![0f32; (n + 1) * m];
    for (i, row) in x.chunks_exact(n).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            t[j * m + i] = v;
        }
    }
    t[n * m..].fill(1.0);
    t
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    // f32 lanes of 8 for speed, summed in f64 per chunk of 256 to keep precision.
    let mut total = 0f64;
    for (ca, cb) in a.chunks(256).zip(b.chunks(256)) {
        let mut acc = [0f32; 8];
        let mut ia = ca.chunks_exact(8);
        let mut ib = cb.chunks_exact(8);
        for (x, y) in (&mut ia).zip(&mut ib) {
            for l in 0..8 {
                acc[l] += x[l] * y[l];
            }
        }
        let tail: f32 = ia
            .remainder()
            .iter()
            .zip(ib.remainder())
            .map(|(x, y)| x * y)
            .sum();
        total += acc.iter().map(|&v| f64::from(v)).sum::<f64>() + f64::from(tail);
    }
    total
}

impl LinearStats {
    /// Empty statistics for a layer with `inputs` input features.
    pub fn new(inputs: usize) -> LinearStats {
        let d = inputs + 1;
        LinearStats {
            n: inputs,
            g: vec![0.0; d * d],
            c: vec![0.0; d * d],
            tokens: 0,
        }
    }

    /// Input features.
    pub fn inputs(&self) -> usize {
        self.n
    }

    /// Tokens accumulated.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Adds a batch of tokens: `x_pruned` and `x_dense` are row-major `[tokens, inputs]`.
    pub fn accumulate(&mut self, x_pruned: &[f32], x_dense: &[f32]) -> Result<(), CalibratedError> {
        let n = self.n;
        if x_pruned.len() % n.max(1) != 0 || x_pruned.len() != x_dense.len() {
            return Err(CalibratedError::InputShape {
                expected: n,
                actual: x_pruned.len().max(x_dense.len()),
            });
        }
        let m = x_pruned.len() / n.max(1);
        if m == 0 {
            return Ok(());
        }
        let p = columns_with_ones(x_pruned, m, n);
        let q = columns_with_ones(x_dense, m, n);
        let d = n + 1;
        self.g
            .par_chunks_mut(d)
            .zip(self.c.par_chunks_mut(d))
            .enumerate()
            .for_each(|(i, (g_row, c_row))| {
                let pi = &p[i * m..(i + 1) * m];
                for j in 0..d {
                    // G is symmetric: fill the upper triangle here, mirror once when used.
                    if j >= i {
                        g_row[j] += dot(pi, &p[j * m..(j + 1) * m]);
                    }
                    c_row[j] += dot(pi, &q[j * m..(j + 1) * m]);
                }
            });
        self.tokens += m;
        Ok(())
    }

    /// `G` with its lower triangle filled and the damping added, `(inputs + 1)^2` row-major.
    pub fn damped_gram(&self) -> Vec<f64> {
        let d = self.n + 1;
        let mut g = self.g.clone();
        for i in 0..d {
            for j in 0..i {
                g[i * d + j] = g[j * d + i];
            }
        }
        let mean_diag = (0..d).map(|i| g[i * d + i]).sum::<f64>() / d as f64;
        let damp = (DAMPING * mean_diag).max(1e-12);
        for i in 0..d {
            g[i * d + i] += damp;
        }
        g
    }

    /// Mean squared input of every feature (the diagonal of `G` over the tokens), for
    /// activation-aware scores.
    pub fn input_energy(&self) -> Vec<f64> {
        let d = self.n + 1;
        let t = self.tokens.max(1) as f64;
        (0..self.n).map(|i| self.g[i * d + i] / t).collect()
    }

    /// Right-hand sides `C w~_r` (bias last) for the rows of `weight` (`[rows, inputs]`):
    /// `[inputs + 1, rows]` row-major.
    pub fn targets(&self, weight: &[f32], bias: &[f32]) -> Result<Vec<f64>, CalibratedError> {
        let (n, d) = (self.n, self.n + 1);
        let rows = bias.len();
        if weight.len() != rows * n {
            return Err(CalibratedError::WeightShape {
                expected: rows * n,
                actual: weight.len(),
            });
        }
        let mut out = vec![0f64; d * rows];
        out.par_chunks_mut(rows)
            .zip(self.c.par_chunks(d))
            .for_each(|(o, c_row)| {
                for (r, v) in o.iter_mut().enumerate() {
                    let w = &weight[r * n..(r + 1) * n];
                    let s: f64 = w.iter().zip(c_row).map(|(&a, &b)| f64::from(a) * b).sum();
                    *v = s + f64::from(bias[r]) * c_row[n];
                }
            });
        Ok(out)
    }
}

/// Cholesky factor `L` (lower, row-major) of the symmetric positive definite `a` (`n x n`).
pub fn cholesky(a: &[f64], n: usize) -> Result<Vec<f64>, CalibratedError> {
    let mut l = vec![0f64; n * n];
    for j in 0..n {
        let row_j = &l[j * n..j * n + j];
        let diag = a[j * n + j] - row_j.iter().map(|v| v * v).sum::<f64>();
        if diag.is_nan() || diag <= 0.0 {
            return Err(CalibratedError::NotPositiveDefinite {
                pivot: j,
                value: diag,
            });
        }
        let ljj = diag.sqrt();
        l[j * n + j] = ljj;
        let (done, rest) = l.split_at_mut((j + 1) * n);
        let row_j = &done[j * n..j * n + j];
        rest.par_chunks_mut(n).enumerate().for_each(|(k, row_i)| {
            let i = j + 1 + k;
            let s: f64 = row_i[..j].iter().zip(row_j).map(|(x, y)| x * y).sum();
            row_i[j] = (a[i * n + j] - s) / ljj;
        });
    }
    Ok(l)
}

/// Solves `L L' x = b` in place for the columns of `b` (`n x k`, row-major).
pub fn cholesky_solve(l: &[f64], n: usize, b: &mut [f64], k: usize) {
    for i in 0..n {
        for p in 0..i {
            let f = l[i * n + p];
            if f != 0.0 {
                for c in 0..k {
                    b[i * k + c] -= f * b[p * k + c];
                }
            }
        }
        let d = l[i * n + i];
        b[i * k..(i + 1) * k].iter_mut().for_each(|v| *v /= d);
    }
    for i in (0..n).rev() {
        for p in i + 1..n {
            let f = l[p * n + i];
            if f != 0.0 {
                for c in 0..k {
                    b[i * k + c] -= f * b[p * k + c];
                }
            }
        }
        let d = l[i * n + i];
        b[i * k..(i + 1) * k].iter_mut().for_each(|v| *v /= d);
    }
}

/// Inverse of a symmetric positive definite matrix.
pub fn spd_inverse(a: &[f64], n: usize) -> Result<Vec<f64>, CalibratedError> {
    let l = cholesky(a, n)?;
    let mut inv = vec![0f64; n * n];
    // Column blocks of the identity solved in parallel, then transposed back (the inverse is
    // symmetric, so the blocks are its rows).
    inv.par_chunks_mut(n * 32)
        .enumerate()
        .for_each(|(blk, out)| {
            let cols = out.len() / n;
            let mut b = vec![0f64; n * cols];
            for c in 0..cols {
                b[(blk * 32 + c) * cols + c] = 1.0;
            }
            cholesky_solve(&l, n, &mut b, cols);
            for c in 0..cols {
                for i in 0..n {
                    out[c * n + i] = b[i * cols + c];
                }
            }
        });
    Ok(inv)
}

/// What [`prune_band`] kept and refitted for one band of output rows.
#[derive(Debug, Clone, PartialEq)]
pub struct BandFit {
    /// Per unit: kept.
    pub keep: Vec<bool>,
    /// Refitted weights of the band's rows, `[rows, inputs]`, zero in removed units.
    pub weight: Vec<f32>,
    /// Refitted bias of the band's rows.
    pub bias: Vec<f32>,
}

/// `Z = A^-1 B` for the `q x q` block `a` and `q x k` right-hand sides `b`.
fn small_solve(a: &[f64], q: usize, b: &[f64], k: usize) -> Result<Vec<f64>, CalibratedError> {
    let l = cholesky(a, q)?;
    let mut z = b.to_vec();
    cholesky_solve(&l, q, &mut z, k);
    Ok(z)
}

/// The block `H[Q, Q]` as `|Q| x |Q|` row-major.
fn square_block(h: &[f64], d: usize, q: &[usize]) -> Vec<f64> {
    q.iter()
        .flat_map(|&i| q.iter().map(move |&j| h[i * d + j]))
        .collect()
}

/// The block `H[Q, cols]` of a `d`-wide matrix as `|Q| x cols` row-major.
fn gather_rows(h: &[f64], d: usize, q: &[usize], k: usize) -> Vec<f64> {
    q.iter()
        .flat_map(|&i| h[i * d..i * d + k].iter().copied())
        .collect()
}

/// Reconstruction error added by removing unit columns `q`, and `H_QQ^-1 W_Q`.
fn removal_cost(
    h: &[f64],
    w: &[f64],
    d: usize,
    rows: usize,
    q: &[usize],
) -> Result<(f64, Vec<f64>), CalibratedError> {
    let hqq = square_block(h, d, q);
    let wq = gather_rows(w, rows, q, rows);
    let z = small_solve(&hqq, q.len(), &wq, rows)?;
    let cost = wq.iter().zip(&z).map(|(a, b)| a * b).sum();
    Ok((cost, z))
}

/// Removes columns `q` from the optimum `w` (`d x rows`) and the inverse Hessian `h` (`d x d`).
fn remove_columns(
    h: &mut [f64],
    w: &mut [f64],
    d: usize,
    rows: usize,
    q: &[usize],
    z: &[f64],
) -> Result<(), CalibratedError> {
    let hqq = square_block(h, d, q);
    // M = H_QQ^-1 H_Q,: (|Q| x d); H -= H_:,Q M and W -= H_:,Q Z.
    let m = small_solve(&hqq, q.len(), &gather_rows(h, d, q, d), d)?;
    let hq: Vec<f64> = (0..d)
        .flat_map(|i| q.iter().map(move |&j| (i, j)))
        .map(|(i, j)| h[i * d + j])
        .collect();
    let nq = q.len();
    h.par_chunks_mut(d).enumerate().for_each(|(i, row)| {
        let coef = &hq[i * nq..(i + 1) * nq];
        for (p, &c) in coef.iter().enumerate() {
            if c != 0.0 {
                for (v, &mv) in row.iter_mut().zip(&m[p * d..(p + 1) * d]) {
                    *v -= c * mv;
                }
            }
        }
    });
    w.par_chunks_mut(rows).enumerate().for_each(|(i, row)| {
        let coef = &hq[i * nq..(i + 1) * nq];
        for (p, &c) in coef.iter().enumerate() {
            for (v, &zv) in row.iter_mut().zip(&z[p * rows..(p + 1) * rows]) {
                *v -= c * zv;
            }
        }
    });
    for &i in q {
        h[i * d..(i + 1) * d].fill(0.0);
        (0..d).for_each(|j| h[j * d + i] = 0.0);
        w[i * rows..(i + 1) * rows].fill(0.0);
    }
    Ok(())
}

/// Least squares over the kept columns (bias always kept): `G[S,S] v = T[S]` for every row.
/// Returns `d x rows`, zero outside `S`.
pub fn refit(
    gram: &[f64],
    d: usize,
    targets: &[f64],
    rows: usize,
    kept_cols: &[usize],
) -> Result<Vec<f64>, CalibratedError> {
    let s = kept_cols.len();
    let gss = square_block(gram, d, kept_cols);
    let l = cholesky(&gss, s)?;
    let mut b = gather_rows(targets, rows, kept_cols, rows);
    cholesky_solve(&l, s, &mut b, rows);
    let mut out = vec![0f64; d * rows];
    for (k, &i) in kept_cols.iter().enumerate() {
        out[i * rows..(i + 1) * rows].copy_from_slice(&b[k * rows..(k + 1) * rows]);
    }
    Ok(out)
}

/// Chooses which `units` (column ranges of the `d - 1` inputs) a band keeps and refits it.
///
/// `gram` is the damped Gram matrix (`d x d`), `gram_inv` its inverse, `targets` the band's
/// right-hand sides (`d x rows`). With `fixed`, those units are kept; otherwise units are removed
/// greedily, cheapest first (ties to the lower index), until `keep_units` remain.
pub fn prune_band(
    gram: &[f64],
    gram_inv: &[f64],
    targets: &[f64],
    rows: usize,
    units: &[std::ops::Range<usize>],
    keep_units: usize,
    fixed: Option<&[bool]>,
) -> Result<BandFit, CalibratedError> {
    let d = (gram.len() as f64).sqrt() as usize;
    let n = d - 1;
    let keep = match fixed {
        Some(k) => k.to_vec(),
        None => greedy_units(gram_inv, targets, d, rows, units, keep_units)?,
    };
    let kept_cols: Vec<usize> = units
        .iter()
        .zip(&keep)
        .filter(|(_, &k)| k)
        .flat_map(|(u, _)| u.clone())
        .chain(std::iter::once(n))
        .collect();
    let v = refit(gram, d, targets, rows, &kept_cols)?;
    let mut weight = vec![0f32; rows * n];
    for r in 0..rows {
        for c in 0..n {
            weight[r * n + c] = v[c * rows + r] as f32;
        }
    }
    let bias = (0..rows).map(|r| v[n * rows + r] as f32).collect();
    Ok(BandFit { keep, weight, bias })
}

/// Greedy group-OBS removal: the kept mask over `units` with `keep_units` left.
fn greedy_units(
    gram_inv: &[f64],
    targets: &[f64],
    d: usize,
    rows: usize,
    units: &[std::ops::Range<usize>],
    keep_units: usize,
) -> Result<Vec<bool>, CalibratedError> {
    let mut h = gram_inv.to_vec();
    // Optimum over all columns: W = H T.
    let mut w = vec![0f64; d * rows];
    w.par_chunks_mut(rows).enumerate().for_each(|(i, out)| {
        for (k, &hv) in h[i * d..(i + 1) * d].iter().enumerate() {
            for (o, &t) in out.iter_mut().zip(&targets[k * rows..(k + 1) * rows]) {
                *o += hv * t;
            }
        }
    });
    let mut keep = vec![true; units.len()];
    let cols: Vec<Vec<usize>> = units.iter().map(|u| u.clone().collect()).collect();
    for _ in keep_units.min(units.len())..units.len() {
        let mut best: Option<(f64, usize, Vec<f64>)> = None;
        for (u, q) in cols.iter().enumerate() {
            if !keep[u] {
                continue;
            }
            let (cost, z) = removal_cost(&h, &w, d, rows, q)?;
            if best.as_ref().map_or(true, |(b, _, _)| cost < *b) {
                best = Some((cost, u, z));
            }
        }
        let Some((_, u, z)) = best else { break };
        remove_columns(&mut h, &mut w, d, rows, &cols[u], &z)?;
        keep[u] = false;
    }
    Ok(keep)
}

/// Activation-aware tile scores: the sum over each tile of `(|W_ij| * ||x_j||)^2`, row-major over
/// the grid, from the per-feature input energy.
pub fn activation_tile_scores(
    weight: &[f32],
    rows: usize,
    n: usize,
    energy: &[f64],
    th: usize,
    tw: usize,
) -> Vec<f64> {
    let gc = n.div_ceil(tw);
    let mut scores = vec![0f64; rows.div_ceil(th) * gc];
    scores.par_chunks_mut(gc).enumerate().for_each(|(br, out)| {
        for r in br * th..((br + 1) * th).min(rows) {
            for (c, (&v, &e)) in weight[r * n..(r + 1) * n].iter().zip(energy).enumerate() {
                out[c / tw] += f64::from(v) * f64::from(v) * e;
            }
        }
    });
    scores
}

/// A whole weight after calibrated tile pruning.
#[derive(Debug, Clone, PartialEq)]
pub struct TileFit {
    /// Kept tiles, row-major over the grid.
    pub keep: Vec<bool>,
    /// Refitted weight `[rows, inputs]`, zero outside kept tiles.
    pub weight: Vec<f32>,
    /// Refitted bias.
    pub bias: Vec<f32>,
}

/// Calibrated tile pruning of `weight` (`[bias.len(), inputs]`): bands of `band_rows` output rows
/// (a multiple of `th`) share their kept tile columns; band `i` keeps `budget[i]` tile columns,
/// chosen greedily when `greedy`, else the highest activation-aware scores.
pub fn fit_tiles(
    weight: &[f32],
    bias: &[f32],
    stats: &LinearStats,
    (th, tw): (usize, usize),
    band_rows: usize,
    budget: &[usize],
    greedy: bool,
) -> Result<TileFit, CalibratedError> {
    if stats.tokens == 0 {
        return Err(CalibratedError::NoSamples);
    }
    let (rows, n, d) = (bias.len(), stats.n, stats.n + 1);
    let gram = stats.damped_gram();
    let gram_inv = if greedy {
        spd_inverse(&gram, d)?
    } else {
        Vec::new()
    };
    let targets = stats.targets(weight, bias)?;
    let gc = n.div_ceil(tw);
    let units: Vec<std::ops::Range<usize>> =
        (0..gc).map(|c| c * tw..((c + 1) * tw).min(n)).collect();
    let energy = stats.input_energy();
    let scores = activation_tile_scores(weight, rows, n, &energy, th, tw);
    let bands = rows.div_ceil(band_rows);
    let fits: Vec<BandFit> = (0..bands)
        .into_par_iter()
        .map(|b| {
            let r0 = b * band_rows;
            let r1 = (r0 + band_rows).min(rows);
            let k = budget.get(b).copied().unwrap_or(gc).min(gc);
            let t: Vec<f64> = (0..d)
                .flat_map(|i| targets[i * rows + r0..i * rows + r1].iter().copied())
                .collect();
            let fixed = (!greedy).then(|| {
                let mut band_scores = vec![0f64; gc];
                for br in r0 / th..r1.div_ceil(th) {
                    for (s, v) in band_scores.iter_mut().zip(&scores[br * gc..(br + 1) * gc]) {
                        *s += v;
                    }
                }
                let mut order: Vec<usize> = (0..gc).collect();
                order.sort_by(|&a, &b| band_scores[b].total_cmp(&band_scores[a]).then(a.cmp(&b)));
                let mut keep = vec![false; gc];
                order.into_iter().take(k).for_each(|c| keep[c] = true);
                keep
            });
            prune_band(&gram, &gram_inv, &t, r1 - r0, &units, k, fixed.as_deref())
        })
        .collect::<Result<_, _>>()?;
    let mut out = TileFit {
        keep: vec![false; rows.div_ceil(th) * gc],
        weight: Vec::with_capacity(rows * n),
        bias: Vec::with_capacity(rows),
    };
    for (b, f) in fits.into_iter().enumerate() {
        let r0 = b * band_rows;
        for br in r0 / th..(r0 + band_rows).min(rows).div_ceil(th) {
            out.keep[br * gc..(br + 1) * gc].copy_from_slice(&f.keep);
        }
        out.weight.extend(f.weight);
        out.bias.extend(f.bias);
    }
    Ok(out)
}

/// Per-band budgets for unstructured-across-rows tile pruning: the number of tiles each block
/// row holds among the `keep` highest activation-aware scores of the whole matrix.
pub fn budget_from_scores(scores: &[f64], gc: usize, keep: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut budget = vec![0usize; scores.len().div_ceil(gc.max(1))];
    for i in order.into_iter().take(keep) {
        budget[i / gc] += 1;
    }
    budget
}

#[cfg(test)]
mod tests;
