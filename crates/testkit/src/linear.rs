//! The oracle of the linear layer's device checks: the layer in f64 from f32 inputs, the error
//! measures a check passes or fails on, and the norm-ranked tile mask benchmarks prune with.

use crate::reference::erf;

/// Keeps the `round(density * tiles)` tiles of largest Frobenius norm (at least one).
pub fn top_norm_mask(
    data: &[f32],
    rows: usize,
    cols: usize,
    th: usize,
    tw: usize,
    density: f64,
) -> Vec<bool> {
    let (gr, gc) = (rows.div_ceil(th), cols.div_ceil(tw));
    let mut norms = vec![0f64; gr * gc];
    for r in 0..rows {
        for c in 0..cols {
            let v = data.get(r * cols + c).copied().unwrap_or(0.0) as f64;
            norms[(r / th) * gc + c / tw] += v * v;
        }
    }
    let keep_n = ((density.clamp(0.0, 1.0) * (gr * gc) as f64).round() as usize).clamp(1, gr * gc);
    let mut order: Vec<usize> = (0..gr * gc).collect();
    order.sort_by(|&a, &b| norms[b].total_cmp(&norms[a]).then(a.cmp(&b)));
    let mut keep = vec![false; gr * gc];
    for &t in order.iter().take(keep_n) {
        keep[t] = true;
    }
    keep
}

/// erf-based GELU in f64 (erf from [`crate::reference::erf`]).
pub fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

/// The linear layer in f64 from f32 inputs: `act(x w^T + b) + residual`, x `[m, k]`, w `[n, k]`.
#[allow(clippy::too_many_arguments)]
pub fn reference_linear(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    gelu_on: bool,
    residual: Option<&[f32]>,
) -> Vec<f32> {
    use rayon::prelude::*;
    let mut y = vec![0f32; m * n];
    y.par_chunks_mut(n.max(1)).enumerate().for_each(|(i, row)| {
        let xr = &x[i * k..(i + 1) * k];
        for (j, out) in row.iter_mut().enumerate() {
            let wr = &w[j * k..(j + 1) * k];
            let mut acc = 0f64;
            for (a, b) in xr.iter().zip(wr) {
                acc += *a as f64 * *b as f64;
            }
            if let Some(b) = bias {
                acc += b[j] as f64;
            }
            if gelu_on {
                acc = gelu(acc);
            }
            if let Some(r) = residual {
                acc += r[i * n + j] as f64;
            }
            *out = acc as f32;
        }
    });
    y
}

/// Error of `out` against `reference`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ErrorStats {
    /// `max |out - ref| / max |ref|`.
    pub max_rel: f64,
    /// `||out - ref||_2 / ||ref||_2`.
    pub l2_rel: f64,
    /// Non-finite values in `out` (NaN or infinity), which always fail a check.
    pub non_finite: usize,
}

impl ErrorStats {
    /// Passes when every value is finite and `max_rel < tol`.
    pub fn passes(&self, tol: f64) -> bool {
        self.non_finite == 0 && self.max_rel < tol && self.max_rel.is_finite()
    }
}

/// Compares `out` with `reference` (same length).
pub fn compare(out: &[f32], reference: &[f32]) -> ErrorStats {
    let mut non_finite = 0usize;
    let (mut max_d, mut max_r, mut d2, mut r2) = (0f64, 0f64, 0f64, 0f64);
    for (&o, &r) in out.iter().zip(reference) {
        if !o.is_finite() {
            non_finite += 1;
            continue;
        }
        let d = (o as f64 - r as f64).abs();
        max_d = max_d.max(d);
        max_r = max_r.max((r as f64).abs());
        d2 += d * d;
        r2 += (r as f64) * (r as f64);
    }
    if out.len() != reference.len() {
        non_finite += out.len().abs_diff(reference.len());
    }
    ErrorStats {
        max_rel: if max_r > 0.0 { max_d / max_r } else { max_d },
        l2_rel: if r2 > 0.0 {
            (d2 / r2).sqrt()
        } else {
            d2.sqrt()
        },
        non_finite,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::test_rng;

    #[test]
    fn top_norm_keeps_the_largest_tiles() {
        let (rows, cols) = (32, 32);
        let mut data = vec![0.01f32; rows * cols];
        // Tile (1, 0) is the largest.
        for r in 16..32 {
            for c in 0..16 {
                data[r * cols + c] = 5.0;
            }
        }
        let m = top_norm_mask(&data, rows, cols, 16, 16, 0.25);
        assert_eq!(m, vec![false, false, true, false]);
    }

    #[test]
    fn reference_matches_a_naive_loop_and_gelu_is_sane() {
        let mut rng = test_rng("reference_matches_a_naive_loop_and_gelu_is_sane");
        let (m, k, n) = (5, 7, 3);
        let x = rng.symmetric_vec(m * k, 1.0);
        let w = rng.symmetric_vec(n * k, 1.0);
        let b = rng.symmetric_vec(n, 1.0);
        let res = rng.symmetric_vec(m * n, 1.0);
        let y = reference_linear(&x, m, k, &w, n, Some(&b), true, Some(&res));
        for i in 0..m {
            for j in 0..n {
                let mut s = b[j] as f64;
                for t in 0..k {
                    s += x[i * k + t] as f64 * w[j * k + t] as f64;
                }
                let want = gelu(s) + res[i * n + j] as f64;
                assert!((y[i * n + j] as f64 - want).abs() < 1e-5);
            }
        }
        // Zero and signed inputs (zero once hung a hand-summed series).
        assert_eq!(gelu(0.0), 0.0);
        assert!((gelu(-10.0)).abs() < 1e-12);
        assert!((gelu(1.0) - 0.841_344_746_068_542_9).abs() < 1e-12);
    }

    #[test]
    fn compare_flags_nan() {
        let r = [1.0f32, 2.0, 3.0];
        assert!(compare(&[1.0, 2.0, 3.0], &r).passes(1e-6));
        assert!(!compare(&[1.0, f32::NAN, 3.0], &r).passes(1.0));
        let s = compare(&[1.0, 2.0, 3.3], &r);
        assert!((s.max_rel - 0.1).abs() < 1e-6);
    }
}
