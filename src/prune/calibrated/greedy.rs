//! Greedy group-OBS removal of column units from one band, left-looking.
//!
//! Removing unit `Q` from the inverse Hessian `H` is the rank-`|Q|` downdate
//! `H <- H - H[:,Q] H_QQ^-1 H[Q,:] = H - V V'` with `V = H[:,Q] L^-T` (`L` the Cholesky factor of
//! `H_QQ`). Instead of applying each downdate to all of `H`, the factors `V` are kept: a column
//! block of the current `H` is `H0[:,Q] - sum V V[Q,:]'`, one product, and the diagonal blocks
//! that price every candidate are downdated directly. This is the same arithmetic as updating
//! `H` in full, with a fraction of the work.

use super::linalg::{cholesky, cholesky_solve, matmul, Threads, View};
use super::CalibratedError;

/// `z = A^-1 b` for the `q x q` block `a` and `q x k` right-hand sides `b`.
fn small_solve(a: &[f64], q: usize, b: &[f64], k: usize) -> Result<Vec<f64>, CalibratedError> {
    let l = cholesky(a, q)?;
    let mut z = b.to_vec();
    cholesky_solve(&l, q, &mut z, k);
    Ok(z)
}

/// The kept mask over `units` (column ranges of `d - 1` inputs) with `keep_units` left, removing
/// greedily the unit that adds the least reconstruction error (ties to the lower index).
///
/// `gram_inv` is `H0` (`d x d`), `targets` the band's right-hand sides (`d x rows`).
pub(super) fn greedy_units(
    gram_inv: &[f64],
    targets: &[f64],
    d: usize,
    rows: usize,
    units: &[std::ops::Range<usize>],
    keep_units: usize,
) -> Result<Vec<bool>, CalibratedError> {
    // Optimum over all columns: W = H0 T.
    let mut w = vec![0f64; d * rows];
    matmul(
        &mut w,
        View::rows(gram_inv, d, d),
        View::rows(targets, d, rows),
        false,
        false,
        Threads::One,
    );
    // Diagonal blocks H[u,u] of the current inverse Hessian.
    let mut diag: Vec<Vec<f64>> = units
        .iter()
        .map(|u| {
            u.clone()
                .flat_map(|i| u.clone().map(move |j| gram_inv[i * d + j]))
                .collect()
        })
        .collect();
    // Downdate factors, transposed: row r of `vt` is column r of V (length d).
    // Reserved once: growing it by doubling would hold up to three times its final size.
    let removals = units.len() - keep_units.min(units.len());
    let widest = units.iter().map(|u| u.len()).max().unwrap_or(0);
    let mut vt: Vec<f64> = Vec::with_capacity(removals * widest * d);
    let mut removed_rows = vec![false; d];
    let mut keep = vec![true; units.len()];
    for _ in keep_units.min(units.len())..units.len() {
        let mut best: Option<(f64, usize, Vec<f64>)> = None;
        for (u, range) in units.iter().enumerate() {
            if !keep[u] {
                continue;
            }
            let q = range.len();
            let wq = &w[range.start * rows..range.end * rows];
            let z = small_solve(&diag[u], q, wq, rows)?;
            let cost: f64 = wq.iter().zip(&z).map(|(a, b)| a * b).sum();
            if best.as_ref().map_or(true, |(b, _, _)| cost < *b) {
                best = Some((cost, u, z));
            }
        }
        let Some((_, u, z)) = best else { break };
        let range = units[u].clone();
        let q = range.len();
        // A = H[:,Q] = H0[:,Q] - V V[Q,:]'.
        let mut a: Vec<f64> = (0..d)
            .flat_map(|i| range.clone().map(move |j| gram_inv[i * d + j]))
            .collect();
        let r = vt.len() / d;
        if r > 0 {
            let vq: Vec<f64> = (0..r)
                .flat_map(|k| vt[k * d + range.start..k * d + range.end].iter().copied())
                .collect();
            let v = View::rows(&vt, r, d).t();
            matmul(&mut a, v, View::rows(&vq, r, q), true, true, Threads::One);
        }
        for (i, row) in a.chunks_mut(q).enumerate() {
            if removed_rows[i] {
                row.fill(0.0);
            }
        }
        // W -= A Z.
        matmul(
            &mut w,
            View::rows(&a, d, q),
            View::rows(&z, q, rows),
            true,
            true,
            Threads::One,
        );
        // V = A L^-T with L L' = A[Q,:]: solve v L' = a for every row a.
        let aqq: Vec<f64> = a[range.start * q..range.end * q].to_vec();
        let l = cholesky(&aqq, q)?;
        let mut v = a;
        for row in v.chunks_mut(q) {
            for j in 0..q {
                let s: f64 = (0..j).map(|p| row[p] * l[j * q + p]).sum();
                row[j] = (row[j] - s) / l[j * q + j];
            }
        }
        for (other, ru) in units.iter().enumerate() {
            if !keep[other] || other == u {
                continue;
            }
            let qu = ru.len();
            let blk = &mut diag[other];
            for (bi, i) in ru.clone().enumerate() {
                for (bj, j) in ru.clone().enumerate() {
                    let s: f64 = (0..q).map(|p| v[i * q + p] * v[j * q + p]).sum();
                    blk[bi * qu + bj] -= s;
                }
            }
        }
        for p in 0..q {
            vt.extend((0..d).map(|i| v[i * q + p]));
        }
        for i in range.clone() {
            removed_rows[i] = true;
        }
        w[range.start * rows..range.end * rows].fill(0.0);
        keep[u] = false;
    }
    Ok(keep)
}
