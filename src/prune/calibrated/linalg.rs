//! Dense linear algebra for calibrated pruning: matrix products through the `gemm` crate, and a
//! blocked Cholesky factorisation, solve and inverse whose bulk work is those products.

use rayon::prelude::*;

use super::CalibratedError;

/// A strided view of a `rows x cols` matrix: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct View<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> View<'a, T> {
    /// A row-major `rows x cols` matrix.
    pub fn rows(data: &'a [T], rows: usize, cols: usize) -> Self {
        View {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of this view (no copy).
    pub fn t(self) -> Self {
        View {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// Whether every element lies inside `data`.
    fn in_bounds(&self) -> bool {
        if self.rows == 0 || self.cols == 0 {
            return true;
        }
        let last = (self.rows - 1)
            .checked_mul(self.rs)
            .zip((self.cols - 1).checked_mul(self.cs))
            .and_then(|(a, b)| a.checked_add(b));
        last.is_some_and(|l| l < self.data.len())
    }
}

/// Whether products run on the rayon pool or on the calling thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Threads {
    /// The caller is already parallel: one thread.
    One,
    /// Spread over the rayon pool.
    Pool,
}

/// `dst = a b` (`accumulate`: `dst += a b`; `subtract`: the product is negated), `dst` row-major
/// `a.rows x b.cols`. Shapes that do not agree are a programming error and panic in debug builds;
/// release builds leave `dst` untouched.
pub(crate) fn matmul<T: Copy + 'static + From<i8>>(
    dst: &mut [T],
    a: View<'_, T>,
    b: View<'_, T>,
    accumulate: bool,
    subtract: bool,
    threads: Threads,
) {
    matmul_strided(dst, b.cols, a, b, accumulate, subtract, threads);
}

/// [`matmul`] into a `dst` whose rows are `dst_rs` elements apart.
pub(crate) fn matmul_strided<T: Copy + 'static + From<i8>>(
    dst: &mut [T],
    dst_rs: usize,
    a: View<'_, T>,
    b: View<'_, T>,
    accumulate: bool,
    subtract: bool,
    threads: Threads,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let dst_ok = m == 0
        || n == 0
        || (dst_rs >= n
            && (m - 1)
                .checked_mul(dst_rs)
                .and_then(|v| v.checked_add(n))
                .is_some_and(|end| end <= dst.len()));
    let ok = b.rows == k && a.in_bounds() && b.in_bounds() && dst_ok;
    debug_assert!(ok, "matmul shapes {m}x{k} * {}x{n}", b.rows);
    if !ok || m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.chunks_mut(dst_rs)
                .take(m)
                .for_each(|r| r[..n].fill(T::from(0)));
        }
        return;
    }
    let beta = T::from(if subtract { -1 } else { 1 });
    let par = match threads {
        Threads::One => gemm::Parallelism::None,
        Threads::Pool => gemm::Parallelism::Rayon(0),
    };
    // SAFETY: `in_bounds` checked that every (i, j) of `a` and `b` addresses an element of its
    // slice, `dst_ok` that every (i, j) of `dst` (row stride `dst_rs`, rows at least `n` apart)
    // lies inside `dst`, and `dst` is a unique borrow distinct from the shared borrows of `a`
    // and `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            T::from(1),
            beta,
            false,
            false,
            false,
            par,
        );
    }
}

/// Block size of the blocked factorisation and inverse.
const BLOCK: usize = 64;

/// Unblocked Cholesky of the `nb x nb` diagonal block at `(j0, j0)` of `l` (`n` wide), in place
/// on its lower triangle.
fn factor_diagonal(l: &mut [f64], n: usize, j0: usize, nb: usize) -> Result<(), CalibratedError> {
    for j in j0..j0 + nb {
        let row_j = &l[j * n + j0..j * n + j];
        let diag = l[j * n + j] - row_j.iter().map(|v| v * v).sum::<f64>();
        if diag.is_nan() || diag <= 0.0 {
            return Err(CalibratedError::NotPositiveDefinite {
                pivot: j,
                value: diag,
            });
        }
        let ljj = diag.sqrt();
        l[j * n + j] = ljj;
        for i in j + 1..j0 + nb {
            let s: f64 = (j0..j).map(|p| l[i * n + p] * l[j * n + p]).sum();
            l[i * n + j] = (l[i * n + j] - s) / ljj;
        }
    }
    Ok(())
}

/// Cholesky factor `L` (lower, row-major, zero above the diagonal) of the symmetric positive
/// definite `a` (`n x n`; only its lower triangle is read).
pub fn cholesky(a: &[f64], n: usize) -> Result<Vec<f64>, CalibratedError> {
    let mut l = a[..n * n].to_vec();
    for j0 in (0..n).step_by(BLOCK) {
        let nb = BLOCK.min(n - j0);
        factor_diagonal(&mut l, n, j0, nb)?;
        let below = n - j0 - nb;
        if below == 0 {
            break;
        }
        // Panel: L21 = A21 L11^-T, row by row (forward substitution against L11).
        let (head, tail) = l.split_at_mut((j0 + nb) * n);
        let l11 = &head[j0 * n..];
        tail.par_chunks_mut(n).for_each(|row| {
            for j in 0..nb {
                let s: f64 = (0..j).map(|p| row[j0 + p] * l11[j * n + j0 + p]).sum();
                row[j0 + j] = (row[j0 + j] - s) / l11[j * n + j0 + j];
            }
        });
        // Trailing update in place: A22 -= L21 L21^T over the whole block (only its lower
        // triangle is read later; the upper one is cleared at the end).
        let panel: Vec<f64> = tail
            .chunks(n)
            .flat_map(|r| r[j0..j0 + nb].iter().copied())
            .collect();
        let p = View::rows(&panel, below, nb);
        matmul_strided(&mut tail[j0 + nb..], n, p, p.t(), true, true, Threads::Pool);
    }
    for i in 0..n {
        l[i * n + i + 1..(i + 1) * n].fill(0.0);
    }
    Ok(l)
}

/// Solves `L y = b` in place (forward substitution) for the columns of `b` (`n x k`, row-major),
/// by blocks of [`BLOCK`] rows: the rows solved so far enter each block as one product.
pub fn forward_solve(l: &[f64], n: usize, b: &mut [f64], k: usize) {
    for j0 in (0..n).step_by(BLOCK) {
        let nb = BLOCK.min(n - j0);
        let (done, rest) = b.split_at_mut(j0 * k);
        let blk = &mut rest[..nb * k];
        if j0 > 0 {
            let lv = View {
                data: &l[j0 * n..],
                rows: nb,
                cols: j0,
                rs: n,
                cs: 1,
            };
            matmul(blk, lv, View::rows(done, j0, k), true, true, Threads::One);
        }
        for i in 0..nb {
            let (solved, tail) = blk.split_at_mut(i * k);
            let row = &mut tail[..k];
            for p in 0..i {
                let f = l[(j0 + i) * n + j0 + p];
                if f != 0.0 {
                    row.iter_mut()
                        .zip(&solved[p * k..(p + 1) * k])
                        .for_each(|(v, &x)| *v -= f * x);
                }
            }
            let d = l[(j0 + i) * n + j0 + i];
            row.iter_mut().for_each(|v| *v /= d);
        }
    }
}

/// Solves `L' x = y` in place (backward substitution) for the columns of `y` (`n x k`), by
/// blocks of [`BLOCK`] rows from the last.
pub fn backward_solve(l: &[f64], n: usize, y: &mut [f64], k: usize) {
    let starts: Vec<usize> = (0..n).step_by(BLOCK).collect();
    for &j0 in starts.iter().rev() {
        let nb = BLOCK.min(n - j0);
        let below = n - j0 - nb;
        let (head, done) = y.split_at_mut((j0 + nb) * k);
        let blk = &mut head[j0 * k..];
        if below > 0 {
            // L[j0 + nb.., j0..j0 + nb]' as an `nb x below` view.
            let lv = View {
                data: &l[(j0 + nb) * n + j0..],
                rows: nb,
                cols: below,
                rs: 1,
                cs: n,
            };
            matmul(
                blk,
                lv,
                View::rows(done, below, k),
                true,
                true,
                Threads::One,
            );
        }
        for i in (0..nb).rev() {
            let (front, solved) = blk.split_at_mut((i + 1) * k);
            let row = &mut front[i * k..];
            for p in i + 1..nb {
                let f = l[(j0 + p) * n + j0 + i];
                if f != 0.0 {
                    let off = (p - i - 1) * k;
                    row.iter_mut()
                        .zip(&solved[off..off + k])
                        .for_each(|(v, &x)| *v -= f * x);
                }
            }
            let d = l[(j0 + i) * n + j0 + i];
            row.iter_mut().for_each(|v| *v /= d);
        }
    }
}

/// Solves `L L' x = b` in place for the columns of `b` (`n x k`, row-major).
pub fn cholesky_solve(l: &[f64], n: usize, b: &mut [f64], k: usize) {
    forward_solve(l, n, b, k);
    backward_solve(l, n, b, k);
}

/// The transpose of the inverse of the lower triangular `l` (`n x n`, row-major): `L^-T`,
/// blocked by block columns of `L^-1` (block rows of the result), each computed independently.
pub(crate) fn lower_inverse_t(l: &[f64], n: usize) -> Vec<f64> {
    let mut xt = vec![0f64; n * n];
    // Block column j of X = L^-1: X_jj = L_jj^-1 and, below it,
    // X_ij = -L_ii^-1 (sum_{j<=p<i} L_ip X_pj).
    xt.par_chunks_mut(n * BLOCK)
        .enumerate()
        .for_each(|(jb, out)| {
            let j0 = jb * BLOCK;
            let nb = BLOCK.min(n - j0);
            // Block column j, rows j0..n, `nb` wide.
            let h = n - j0;
            let mut c = vec![0f64; h * nb];
            for bi in (j0..n).step_by(BLOCK) {
                let mb = BLOCK.min(n - bi);
                // rhs = -(L[bi.., j0..bi] X[j0..bi, :]) or the identity on the diagonal block.
                let mut rhs = vec![0f64; mb * nb];
                if bi == j0 {
                    (0..nb).for_each(|t| rhs[t * nb + t] = 1.0);
                } else {
                    let lv = View {
                        data: &l[bi * n + j0..],
                        rows: mb,
                        cols: bi - j0,
                        rs: n,
                        cs: 1,
                    };
                    let xv = View::rows(&c, bi - j0, nb);
                    matmul(&mut rhs, lv, xv, false, true, Threads::One);
                }
                // Forward substitution with the diagonal block L[bi..bi+mb, bi..bi+mb].
                for r in 0..mb {
                    for p in 0..r {
                        let f = l[(bi + r) * n + bi + p];
                        for t in 0..nb {
                            rhs[r * nb + t] -= f * rhs[p * nb + t];
                        }
                    }
                    let d = l[(bi + r) * n + bi + r];
                    rhs[r * nb..(r + 1) * nb].iter_mut().for_each(|v| *v /= d);
                }
                let off = (bi - j0) * nb;
                c[off..off + mb * nb].copy_from_slice(&rhs);
            }
            for (r, row) in c.chunks(nb).enumerate() {
                for (t, &v) in row.iter().enumerate() {
                    out[t * n + j0 + r] = v;
                }
            }
        });
    xt
}

/// Inverse of a symmetric positive definite matrix: `L^-T L^-1` from its Cholesky factor.
pub fn spd_inverse(a: &[f64], n: usize) -> Result<Vec<f64>, CalibratedError> {
    let l = cholesky(a, n)?;
    let xt = lower_inverse_t(&l, n);
    drop(l);
    let mut inv = vec![0f64; n * n];
    let xv = View::rows(&xt, n, n);
    matmul(&mut inv, xv, xv.t(), false, false, Threads::Pool);
    Ok(inv)
}
