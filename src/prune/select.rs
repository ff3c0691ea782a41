//! Ranking rules: which tiles, rows, columns, elements or heads survive. Every rule keeps the
//! highest L2 norms (magnitude for elements), breaks ties by position so results are
//! deterministic, and keeps at least one unit so no weight vanishes entirely.

use rayon::prelude::*;

use super::Matrix;
use crate::format::{Dtype, EncodedTensor, FormatError};

/// How many of `n` units to keep for `keep_fraction` (rounded, at least one).
pub fn keep_count(n: usize, keep_fraction: f64) -> usize {
    ((n as f64 * keep_fraction).round() as usize).clamp(1, n.max(1))
}

/// Indices of the `k` largest scores, highest first, ties to the lower index.
fn top_k(scores: &[f64], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order.truncate(k);
    order
}

/// Squared L2 norm of every tile of the grid, row-major over the grid.
pub fn tile_norms(m: Matrix<'_>, th: usize, tw: usize) -> Vec<f64> {
    let (gr, gc) = (m.rows.div_ceil(th), m.cols.div_ceil(tw));
    let mut norms = vec![0f64; gr * gc];
    norms
        .par_chunks_mut(gc)
        .enumerate()
        .for_each(|(br, row_norms)| {
            for r in br * th..((br + 1) * th).min(m.rows) {
                let row = &m.data[r * m.cols..(r + 1) * m.cols];
                for (bc, chunk) in row.chunks(tw).enumerate() {
                    row_norms[bc] += chunk
                        .iter()
                        .map(|&v| f64::from(v) * f64::from(v))
                        .sum::<f64>();
                }
            }
        });
    norms
}

/// Keep mask over the grid: the highest-norm tiles of the whole matrix.
pub fn top_tiles(m: Matrix<'_>, th: usize, tw: usize, keep_fraction: f64) -> Vec<bool> {
    let norms = tile_norms(m, th, tw);
    let mut keep = vec![false; norms.len()];
    for i in top_k(&norms, keep_count(norms.len(), keep_fraction)) {
        keep[i] = true;
    }
    keep
}

/// Keep mask over the grid: the same number of highest-norm tiles in every block row, so every
/// thread block of a GEMM gets the same work.
pub fn balanced_tiles(m: Matrix<'_>, th: usize, tw: usize, keep_fraction: f64) -> Vec<bool> {
    let gc = m.cols.div_ceil(tw);
    let norms = tile_norms(m, th, tw);
    let per_row = keep_count(gc, keep_fraction);
    let mut keep = vec![false; norms.len()];
    for (br, row) in norms.chunks(gc).enumerate() {
        for bc in top_k(row, per_row) {
            keep[br * gc + bc] = true;
        }
    }
    keep
}

/// Output features per group of [`grouped_tiles`]: the feature group of the GPU union kernels.
pub const GROUP_FEATURES: usize = 128;

/// Keep mask over the grid: every group of block rows spanning [`GROUP_FEATURES`] output
/// features (one block row when tiles are taller) keeps the same tile columns, the highest by
/// the group's summed tile norms, equally many in every group.
pub fn grouped_tiles(m: Matrix<'_>, th: usize, tw: usize, keep_fraction: f64) -> Vec<bool> {
    let gc = m.cols.div_ceil(tw);
    let norms = tile_norms(m, th, tw);
    let rows_per_group = (GROUP_FEATURES / th).max(1);
    let per_group = keep_count(gc, keep_fraction);
    let mut keep = vec![false; norms.len()];
    for (g, group) in norms.chunks(gc * rows_per_group).enumerate() {
        let mut scores = vec![0f64; gc];
        for row in group.chunks(gc) {
            for (s, &n) in scores.iter_mut().zip(row) {
                *s += n;
            }
        }
        let br0 = g * rows_per_group;
        let rows = group.len() / gc;
        for bc in top_k(&scores, per_group) {
            for br in br0..br0 + rows {
                keep[br * gc + bc] = true;
            }
        }
    }
    keep
}

fn row_norms(m: Matrix<'_>) -> Vec<f64> {
    m.data
        .par_chunks(m.cols)
        .map(|row| row.iter().map(|&v| f64::from(v) * f64::from(v)).sum())
        .collect()
}

fn sorted_u32(mut v: Vec<usize>) -> Vec<u32> {
    v.sort_unstable();
    v.into_iter().map(|i| i as u32).collect()
}

/// The highest-norm rows, ascending.
pub fn top_rows(m: Matrix<'_>, keep_fraction: f64) -> Vec<u32> {
    let norms = row_norms(m);
    sorted_u32(top_k(&norms, keep_count(m.rows, keep_fraction)))
}

/// The highest-norm columns, ascending.
pub fn top_cols(m: Matrix<'_>, keep_fraction: f64) -> Vec<u32> {
    let mut norms = vec![0f64; m.cols];
    for row in m.data.chunks(m.cols) {
        for (n, &v) in norms.iter_mut().zip(row) {
            *n += f64::from(v) * f64::from(v);
        }
    }
    sorted_u32(top_k(&norms, keep_count(m.cols, keep_fraction)))
}

/// The highest-norm rows inside each head of `head_dim` rows, equally many per head, ascending.
pub fn rows_per_head(m: Matrix<'_>, heads: usize, head_dim: usize, keep_fraction: f64) -> Vec<u32> {
    let norms = row_norms(m);
    let per_head = keep_count(head_dim, keep_fraction);
    let mut kept = Vec::with_capacity(heads * per_head);
    for h in 0..heads {
        let range = h * head_dim..((h + 1) * head_dim).min(norms.len());
        let start = range.start;
        kept.extend(
            top_k(&norms[range], per_head)
                .into_iter()
                .map(|i| start + i),
        );
    }
    sorted_u32(kept)
}

/// Keep mask over elements: the largest magnitudes.
pub fn top_elements(data: &[f32], keep_fraction: f64) -> Vec<bool> {
    let k = keep_count(data.len(), keep_fraction);
    // Threshold by selection instead of a full sort: the k-th largest magnitude.
    let mut mags: Vec<f32> = data.iter().map(|v| v.abs()).collect();
    let idx = data.len() - k;
    let (_, kth, _) = mags.select_nth_unstable_by(idx, |a, b| a.total_cmp(b));
    let threshold = *kth;
    let above = data.iter().filter(|v| v.abs() > threshold).count();
    // Ties at the threshold are kept in index order until the count is reached.
    let mut ties_left = k - above;
    data.iter()
        .map(|v| {
            let a = v.abs();
            if a > threshold {
                true
            } else if a == threshold && ties_left > 0 {
                ties_left -= 1;
                true
            } else {
                false
            }
        })
        .collect()
}

/// The heads to keep in one layer, ascending: ranked by the summed squared norms of their Q, K
/// and V rows and O columns.
pub fn top_heads(
    qkv: [Matrix<'_>; 3],
    output: Matrix<'_>,
    heads: usize,
    head_dim: usize,
    keep_fraction: f64,
) -> Vec<usize> {
    let mut scores = vec![0f64; heads];
    for m in qkv {
        for (r, n) in row_norms(m).into_iter().enumerate() {
            if let Some(s) = scores.get_mut(r / head_dim) {
                *s += n;
            }
        }
    }
    for row in output.data.chunks(output.cols) {
        for (c, &v) in row.iter().enumerate() {
            if let Some(s) = scores.get_mut(c / head_dim) {
                *s += f64::from(v) * f64::from(v);
            }
        }
    }
    let mut kept = top_k(&scores, keep_count(heads, keep_fraction));
    kept.sort_unstable();
    kept
}

/// Encodes the zeros already present: all-zero tiles become absent tiles, zeros inside kept tiles
/// become element-bitmap holes; a weight with no zeros stays dense.
pub fn existing_zeros(
    m: Matrix<'_>,
    th: usize,
    tw: usize,
    dtype: Dtype,
) -> Result<EncodedTensor, FormatError> {
    let shape = vec![m.rows as u64, m.cols as u64];
    let zeros = m.data.iter().filter(|&&v| v == 0.0).count();
    if zeros == 0 {
        return EncodedTensor::dense(shape, dtype, m.data);
    }
    let norms = tile_norms(m, th, tw);
    let keep_tiles: Vec<bool> = norms.iter().map(|&n| n > 0.0).collect();
    let gc = m.cols.div_ceil(tw);
    // Zeros inside tiles that stay need element bitmaps; zeros only in whole absent tiles do not.
    let zero_inside_kept = m.data.iter().enumerate().any(|(i, &v)| {
        let (r, c) = (i / m.cols, i % m.cols);
        v == 0.0 && keep_tiles[(r / th) * gc + c / tw]
    });
    if zero_inside_kept {
        let keep: Vec<bool> = m.data.iter().map(|&v| v != 0.0).collect();
        EncodedTensor::tile_elements(m.rows, m.cols, m.data, th, tw, &keep, dtype)
    } else {
        EncodedTensor::tile(m.rows, m.cols, m.data, th, tw, &keep_tiles, dtype)
    }
}
