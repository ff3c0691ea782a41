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
//! group form of Optimal Brain Surgeon does, whose weight updates keep the band at the least-squares
//! optimum over the columns still kept (the refit). Fixed selections are refitted directly.
//! The bias column is never removed.
//!
//! [`Stages`] turns the parts off one at a time for ablation: [`Selection::Score`] keeps the
//! tiles of highest activation-aware score instead of the greedy search, and [`Refit::None`]
//! keeps the source values of the kept weights and the bias instead of the refit.

use rayon::prelude::*;

mod greedy;
mod linalg;
mod rows;

use greedy::greedy_units;
pub use linalg::{cholesky, cholesky_solve, spd_inverse};
use linalg::{matmul, Threads, View};
pub use rows::{fit_rows, RowFit};

/// Damping added to the diagonal of `G`: this fraction of its mean diagonal.
pub const DAMPING: f64 = 0.01;

/// How calibrated pruning chooses the tiles a weight keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Selection {
    /// The highest activation-aware tile scores ([`activation_tile_scores`]), in one pass.
    Score,
    /// Greedy removal: the tile whose removal adds the least reconstruction error, one at a time.
    #[default]
    Greedy,
}

/// What calibrated pruning does to the weights a tile selection keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Refit {
    /// Kept weights and the bias keep their source values.
    None,
    /// Least-squares refit of the kept weights and the bias toward the dense layer's output.
    #[default]
    Dense,
}

/// The stages of calibrated pruning: how tiles are chosen and whether the kept weights are
/// refitted. The default (greedy selection, refit toward the dense outputs) is the full method;
/// the others exist to measure what each stage contributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Stages {
    /// Tile selection.
    pub selection: Selection,
    /// Treatment of the kept weights.
    pub refit: Refit,
}

impl Stages {
    /// Whether the statistics must be prepared with their inverse (greedy selection).
    pub fn needs_inverse(self) -> bool {
        self.selection == Selection::Greedy
    }

    /// The procedure in words, for reports and the recipe.
    pub fn describe(self) -> String {
        let select = match self.selection {
            Selection::Score => "activation-aware tile budgets and selection by score",
            Selection::Greedy => {
                "activation-aware tile budgets, greedy tile removal with inverse-Hessian updates"
            }
        };
        let refit = match self.refit {
            Refit::None => "kept weights and bias unchanged",
            Refit::Dense => {
                "least-squares refit of kept weights and bias toward the dense outputs, inputs \
                 from the already-pruned layers"
            }
        };
        format!("{select}, {refit}")
    }
}

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

/// `dst[..n, ..n] += prod` for `dst` `d` wide and `prod` `n x n`.
fn add_block(dst: &mut [f64], d: usize, prod: &[f32], n: usize) {
    dst.par_chunks_mut(d)
        .zip(prod.par_chunks(n))
        .for_each(|(row, p)| {
            row.iter_mut().zip(p).for_each(|(v, &x)| *v += f64::from(x));
        });
}

/// Column sums of a row-major `[m, n]` matrix, in f64.
pub(crate) fn column_sums(x: &[f32], n: usize) -> Vec<f64> {
    let mut s = vec![0f64; n];
    for row in x.chunks_exact(n) {
        s.iter_mut().zip(row).for_each(|(a, &v)| *a += f64::from(v));
    }
    s
}

/// Second-moment statistics of one linear layer's inputs, bias column included.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearStats {
    n: usize,
    g: Vec<f64>,
    c: Vec<f64>,
    tokens: usize,
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

    /// Statistics from their parts summed elsewhere (on a GPU): the `n x n` products
    /// `X_p'X_p` and `X_p'X_d` row-major, the column sums of `X_p` and `X_d`, and the tokens.
    pub(crate) fn from_products(
        n: usize,
        gram: &[f64],
        cross: &[f64],
        sum_pruned: &[f64],
        sum_dense: &[f64],
        tokens: usize,
    ) -> Result<LinearStats, CalibratedError> {
        let nn = n * n;
        for (len, want) in [
            (gram.len(), nn),
            (cross.len(), nn),
            (sum_pruned.len(), n),
            (sum_dense.len(), n),
        ] {
            if len != want {
                return Err(CalibratedError::InputShape {
                    expected: want,
                    actual: len,
                });
            }
        }
        let mut s = LinearStats::new(n);
        let d = n + 1;
        for i in 0..n {
            s.g[i * d..i * d + n].copy_from_slice(&gram[i * n..(i + 1) * n]);
            s.c[i * d..i * d + n].copy_from_slice(&cross[i * n..(i + 1) * n]);
            s.g[i * d + n] = sum_pruned[i];
            s.c[i * d + n] = sum_pruned[i];
            s.c[n * d + i] = sum_dense[i];
        }
        s.g[n * d + n] = tokens as f64;
        s.c[n * d + n] = tokens as f64;
        s.tokens = tokens;
        Ok(s)
    }

    /// The accumulated `X_p'X_p` with the ones column, `(inputs + 1)^2` row-major; its lower
    /// triangle's bias row is left zero (the fit fills the lower triangle from the upper one).
    pub fn gram(&self) -> &[f64] {
        &self.g
    }

    /// The accumulated `X_p'X_d` with the ones column, `(inputs + 1)^2` row-major.
    pub fn cross(&self) -> &[f64] {
        &self.c
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
        let d = n + 1;
        // Products in f32 over one batch, summed into the f64 statistics.
        let mut prod = vec![0f32; n * n];
        let xp = View::rows(x_pruned, m, n);
        let xd = View::rows(x_dense, m, n);
        matmul(&mut prod, xp.t(), xp, false, false, Threads::Pool);
        add_block(&mut self.g, d, &prod, n);
        matmul(&mut prod, xp.t(), xd, false, false, Threads::Pool);
        add_block(&mut self.c, d, &prod, n);
        // The ones column: column sums in the last row and column, the token count in the corner.
        let (sp, sd) = (column_sums(x_pruned, n), column_sums(x_dense, n));
        for i in 0..n {
            self.g[i * d + n] += sp[i];
            self.c[i * d + n] += sp[i];
            self.c[n * d + i] += sd[i];
        }
        self.g[n * d + n] += m as f64;
        self.c[n * d + n] += m as f64;
        self.tokens += m;
        Ok(())
    }

    /// `G` with its lower triangle filled and the damping added, `(inputs + 1)^2` row-major.
    pub fn damped_gram(&self) -> Vec<f64> {
        let mut g = self.g.clone();
        damp(&mut g, self.n + 1);
        g
    }

    /// What fitting needs once every weight's [`LinearStats::targets`] are taken: the damped Gram
    /// matrix, made in place, and its inverse when `inverse` (greedy removal). The cross products
    /// are dropped first, so at most three `(inputs + 1)^2` matrices live at once.
    pub fn prepare(self, inverse: bool) -> Result<Prepared, CalibratedError> {
        let energy = self.input_energy();
        let LinearStats {
            n,
            mut g,
            c,
            tokens,
        } = self;
        drop(c);
        damp(&mut g, n + 1);
        let gram_inv = if inverse && tokens > 0 {
            spd_inverse(&g, n + 1)?
        } else {
            Vec::new()
        };
        Ok(Prepared {
            n,
            tokens,
            energy,
            gram: g,
            gram_inv,
        })
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
        // [W | b]' as d x rows, then C [W | b]'.
        let mut wt = vec![0f64; d * rows];
        for (r, row) in weight.chunks_exact(n.max(1)).enumerate().take(rows) {
            for (c, &v) in row.iter().enumerate() {
                wt[c * rows + r] = f64::from(v);
            }
        }
        for (r, &b) in bias.iter().enumerate() {
            wt[n * rows + r] = f64::from(b);
        }
        let mut out = vec![0f64; d * rows];
        matmul(
            &mut out,
            View::rows(&self.c, d, d),
            View::rows(&wt, d, rows),
            false,
            false,
            Threads::Pool,
        );
        Ok(out)
    }
}

/// Fills the lower triangle of the `d x d` Gram matrix `g` from its upper one and adds
/// [`DAMPING`] of its mean diagonal to the diagonal.
fn damp(g: &mut [f64], d: usize) {
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
}

/// Statistics made ready for fitting ([`LinearStats::prepare`]).
#[derive(Debug, Clone)]
pub struct Prepared {
    n: usize,
    tokens: usize,
    energy: Vec<f64>,
    gram: Vec<f64>,
    gram_inv: Vec<f64>,
}

impl Prepared {
    /// Input features.
    pub fn inputs(&self) -> usize {
        self.n
    }

    /// Mean squared input of every feature ([`LinearStats::input_energy`]).
    pub fn input_energy(&self) -> &[f64] {
        &self.energy
    }
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
/// right-hand sides (`d x rows`). With `fixed`, those units are kept and the band is refitted
/// over them from `gram`; otherwise units are removed greedily, cheapest first (ties to the lower
/// index), until `keep_units` remain, and the search's own updates give the refit (`gram` is then
/// not read).
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
    let (keep, v) = match fixed {
        Some(k) => {
            let kept_cols: Vec<usize> = units
                .iter()
                .zip(k)
                .filter(|(_, &k)| k)
                .flat_map(|(u, _)| u.clone())
                .chain(std::iter::once(n))
                .collect();
            (k.to_vec(), refit(gram, d, targets, rows, &kept_cols)?)
        }
        None => {
            let g = greedy_units(gram_inv, targets, d, rows, units, keep_units)?;
            (g.keep, g.weights)
        }
    };
    let mut weight = vec![0f32; rows * n];
    for r in 0..rows {
        for c in 0..n {
            weight[r * n + c] = v[c * rows + r] as f32;
        }
    }
    let bias = (0..rows).map(|r| v[n * rows + r] as f32).collect();
    Ok(BandFit { keep, weight, bias })
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
/// chosen and refitted as `stages` says.
pub fn fit_tiles(
    weight: &[f32],
    bias: &[f32],
    stats: &LinearStats,
    tile: (usize, usize),
    band_rows: usize,
    budget: &[usize],
    stages: Stages,
) -> Result<TileFit, CalibratedError> {
    let targets = stats.targets(weight, bias)?;
    let prepared = stats.clone().prepare(stages.needs_inverse())?;
    fit_tiles_prepared(
        weight, bias, &prepared, &targets, tile, band_rows, budget, stages,
    )
}

/// The band of rows `r0..r1` of `weight` with the removed units zeroed and its bias unchanged.
fn masked_band(
    weight: &[f32],
    bias: &[f32],
    n: usize,
    (r0, r1): (usize, usize),
    units: &[std::ops::Range<usize>],
    keep: Vec<bool>,
) -> BandFit {
    let mut w = weight[r0 * n..r1 * n].to_vec();
    for row in w.chunks_exact_mut(n.max(1)) {
        for (u, _) in units.iter().zip(&keep).filter(|(_, &k)| !k) {
            row[u.clone()].fill(0.0);
        }
    }
    BandFit {
        keep,
        weight: w,
        bias: bias[r0..r1].to_vec(),
    }
}

/// [`fit_tiles`] from prepared statistics and the weight's `targets` (taken before preparing).
/// Greedy selection needs statistics prepared with their inverse ([`Stages::needs_inverse`]).
#[allow(clippy::too_many_arguments)]
pub fn fit_tiles_prepared(
    weight: &[f32],
    bias: &[f32],
    prepared: &Prepared,
    targets: &[f64],
    (th, tw): (usize, usize),
    band_rows: usize,
    budget: &[usize],
    stages: Stages,
) -> Result<TileFit, CalibratedError> {
    let greedy = stages.selection == Selection::Greedy;
    if prepared.tokens == 0 {
        return Err(CalibratedError::NoSamples);
    }
    let (rows, n, d) = (bias.len(), prepared.n, prepared.n + 1);
    let (gram, gram_inv) = (&prepared.gram, &prepared.gram_inv);
    if targets.len() != d * rows || weight.len() != rows * n {
        return Err(CalibratedError::WeightShape {
            expected: d * rows,
            actual: targets.len(),
        });
    }
    if greedy && gram_inv.len() != d * d {
        return Err(CalibratedError::WeightShape {
            expected: d * d,
            actual: gram_inv.len(),
        });
    }
    let gc = n.div_ceil(tw);
    let units: Vec<std::ops::Range<usize>> =
        (0..gc).map(|c| c * tw..((c + 1) * tw).min(n)).collect();
    let scores = activation_tile_scores(weight, rows, n, &prepared.energy, th, tw);
    let bands = rows.div_ceil(band_rows);
    let fit_band = |b: usize| {
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
        match (stages.refit, fixed) {
            (Refit::None, Some(keep)) => Ok(masked_band(weight, bias, n, (r0, r1), &units, keep)),
            (Refit::None, None) => {
                let fit = prune_band(gram, gram_inv, &t, r1 - r0, &units, k, None)?;
                Ok(masked_band(weight, bias, n, (r0, r1), &units, fit.keep))
            }
            (Refit::Dense, fixed) => {
                prune_band(gram, gram_inv, &t, r1 - r0, &units, k, fixed.as_deref())
            }
        }
    };
    // Bands run a pool's width at a time: their solvers fork work of their own, and a thread
    // waiting on that work would otherwise start further bands and hold their matrices too.
    let order: Vec<usize> = (0..bands).collect();
    let mut fits: Vec<BandFit> = Vec::with_capacity(bands);
    for chunk in order.chunks(rayon::current_num_threads().max(1)) {
        let part: Vec<BandFit> = chunk
            .par_iter()
            .map(|&b| fit_band(b))
            .collect::<Result<_, _>>()?;
        fits.extend(part);
    }
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
