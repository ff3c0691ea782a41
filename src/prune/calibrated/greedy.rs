//! Greedy group-OBS removal of column units from one band, left-looking.
//!
//! Removing unit `Q` from the inverse Hessian `H` is the rank-`|Q|` downdate
//! `H <- H - H[:,Q] H_QQ^-1 H[Q,:] = H - V V'` with `V = H[:,Q] L^-T` (`L` the Cholesky factor of
//! `H_QQ`). Instead of applying each downdate to all of `H`, the factors `V` are kept: a column
//! block of the current `H` is `H0[:,Q] - sum V V[Q,:]'`, one product, and the diagonal blocks
//! that price every candidate are downdated directly. This is the same arithmetic as updating
//! `H` in full, with a fraction of the work. Rows of removed units are zero in every later `H`
//! and `V`, so the products run over the kept rows only.
//!
//! The band's weights follow each removal with the Optimal Brain Surgeon update
//! `W <- W - H[:,Q] H_QQ^-1 W[Q,:]`, which is exactly the least-squares optimum over the columns
//! still kept: the weights the search ends with are the refit, and no separate solve is needed.

use std::ops::Range;

use super::linalg::{
    backward_solve, cholesky, forward_solve, lower_inverse_t, matmul, matmul_strided, Threads, View,
};
use super::CalibratedError;

/// The greedy search's result: the kept mask and the band's refitted weights.
pub(super) struct Greedy {
    /// Per unit: kept.
    pub keep: Vec<bool>,
    /// Least-squares weights over the kept columns (bias last), `d x rows`, zero in removed units.
    pub weights: Vec<f64>,
}

/// The cheapest unit to remove: its cost `W_Q' H_QQ^-1 W_Q` (as `|L^-1 W_Q|^2`), its index and
/// the Cholesky factor of `H_QQ` with `L^-1 W_Q`.
struct Candidate {
    cost: f64,
    unit: usize,
    factor: Vec<f64>,
    half: Vec<f64>,
}

/// Prices every kept unit and returns the cheapest (ties to the lower index).
fn cheapest(
    diag: &[Vec<f64>],
    w: &[f64],
    rows: usize,
    units: &[Range<usize>],
    keep: &[bool],
) -> Result<Option<Candidate>, CalibratedError> {
    let mut best: Option<Candidate> = None;
    for (u, range) in units.iter().enumerate() {
        if !keep[u] {
            continue;
        }
        let q = range.len();
        let l = cholesky(&diag[u], q)?;
        let mut y = w[range.start * rows..range.end * rows].to_vec();
        forward_solve(&l, q, &mut y, rows);
        let cost: f64 = y.iter().map(|v| v * v).sum();
        if best.as_ref().map_or(true, |b| cost < b.cost) {
            best = Some(Candidate {
                cost,
                unit: u,
                factor: l,
                half: y,
            });
        }
    }
    Ok(best)
}

/// Maximal runs of rows `0..d` outside the removed units (the kept units, any column in no
/// unit, and the bias row).
fn kept_segments(units: &[Range<usize>], keep: &[bool], d: usize) -> Vec<Range<usize>> {
    let mut removed: Vec<Range<usize>> = units
        .iter()
        .zip(keep)
        .filter(|(_, &k)| !k)
        .map(|(r, _)| r.clone())
        .collect();
    removed.sort_by_key(|r| r.start);
    let mut segs = Vec::with_capacity(removed.len() + 1);
    let mut at = 0;
    for r in removed {
        if r.start > at {
            segs.push(at..r.start);
        }
        at = at.max(r.end);
    }
    if at < d {
        segs.push(at..d);
    }
    segs
}

/// The kept mask over `units` (column ranges of `d - 1` inputs) with `keep_units` left, removing
/// greedily the unit that adds the least reconstruction error (ties to the lower index), and the
/// band's least-squares weights over the kept columns.
///
/// `gram_inv` is `H0` (`d x d`), `targets` the band's right-hand sides (`d x rows`).
pub(super) fn greedy_units(
    gram_inv: &[f64],
    targets: &[f64],
    d: usize,
    rows: usize,
    units: &[Range<usize>],
    keep_units: usize,
) -> Result<Greedy, CalibratedError> {
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
    let mut keep = vec![true; units.len()];
    for _ in keep_units.min(units.len())..units.len() {
        let Some(best) = cheapest(&diag, &w, rows, units, &keep)? else {
            break;
        };
        let u = best.unit;
        let range = units[u].clone();
        let q = range.len();
        // Z = H_QQ^-1 W_Q.
        let mut z = best.half;
        backward_solve(&best.factor, q, &mut z, rows);
        // A = H[:,Q] = H0[:,Q] - V V[Q,:]' on the kept rows; zero on removed ones.
        let segments = kept_segments(units, &keep, d);
        let mut a = vec![0f64; d * q];
        for s in &segments {
            for i in s.clone() {
                a[i * q..(i + 1) * q]
                    .copy_from_slice(&gram_inv[i * d + range.start..i * d + range.end]);
            }
        }
        let r = vt.len() / d;
        if r > 0 {
            let vq: Vec<f64> = (0..r)
                .flat_map(|k| vt[k * d + range.start..k * d + range.end].iter().copied())
                .collect();
            for s in &segments {
                let v = View {
                    data: &vt[s.start..],
                    rows: s.len(),
                    cols: r,
                    rs: 1,
                    cs: d,
                };
                matmul(
                    &mut a[s.start * q..s.end * q],
                    v,
                    View::rows(&vq, r, q),
                    true,
                    true,
                    Threads::One,
                );
            }
        }
        // W -= A Z.
        for s in &segments {
            matmul_strided(
                &mut w[s.start * rows..s.end * rows],
                rows,
                View::rows(&a[s.start * q..s.end * q], s.len(), q),
                View::rows(&z, q, rows),
                true,
                true,
                Threads::One,
            );
        }
        // V = A L^-T with L L' = A[Q,:].
        let l = cholesky(&a[range.start * q..range.end * q], q)?;
        let linv_t = lower_inverse_t(&l, q);
        let mut v = vec![0f64; d * q];
        for s in &segments {
            matmul(
                &mut v[s.start * q..s.end * q],
                View::rows(&a[s.start * q..s.end * q], s.len(), q),
                View::rows(&linv_t, q, q),
                false,
                false,
                Threads::One,
            );
        }
        drop(a);
        // Every other kept unit's diagonal block: H[o,o] -= V[o,:] V[o,:]'.
        for (other, ru) in units.iter().enumerate() {
            if !keep[other] || other == u {
                continue;
            }
            let vo = View::rows(&v[ru.start * q..ru.end * q], ru.len(), q);
            matmul(&mut diag[other], vo, vo.t(), true, true, Threads::One);
        }
        for p in 0..q {
            vt.extend((0..d).map(|i| v[i * q + p]));
        }
        w[range.start * rows..range.end * rows].fill(0.0);
        keep[u] = false;
    }
    Ok(Greedy { keep, weights: w })
}
