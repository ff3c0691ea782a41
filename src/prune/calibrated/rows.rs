//! Calibrated row pruning: which output rows of a weight survive, chosen by what dropping each one
//! costs the layer's output on the calibration tokens.
//!
//! A dropped row's output is its bias alone, so its best value is the mean of the dense output
//! over the calibration tokens, and dropping it costs the part of the dense output's energy that
//! the least-squares fit over all inputs explains beyond that mean: rows are ranked by that cost
//! (`T_r' G^-1 T_r - T_r[bias]^2 / G[bias, bias]` from the statistics) and the cheapest go. Kept
//! rows are refitted over all their inputs toward the dense output; the consumer of the dropped
//! features is refitted in its own stage, whose inputs come from this already-pruned layer.

use super::{refit, CalibratedError, Prepared};

/// A whole weight after calibrated row pruning.
#[derive(Debug, Clone, PartialEq)]
pub struct RowFit {
    /// Per output row: kept.
    pub keep: Vec<bool>,
    /// Refitted weight `[rows, inputs]`, zero in dropped rows.
    pub weight: Vec<f32>,
    /// Refitted bias; a dropped row's is the mean of its dense output.
    pub bias: Vec<f32>,
    /// Per row: the increase of the squared reconstruction error, summed over the calibration
    /// tokens, when the row is dropped.
    pub cost: Vec<f64>,
}

/// Calibrated row pruning of a weight with `rows` output rows (`targets` is `[inputs + 1, rows]`
/// from [`super::LinearStats::targets`]): the rows fall into `groups` equal consecutive groups
/// (1 for the whole matrix, the heads for a value projection) and each group keeps its
/// `keep_per_group` costliest rows (ties to the lower index).
pub fn fit_rows(
    prepared: &Prepared,
    targets: &[f64],
    rows: usize,
    groups: usize,
    keep_per_group: usize,
) -> Result<RowFit, CalibratedError> {
    if prepared.tokens == 0 {
        return Err(CalibratedError::NoSamples);
    }
    let (n, d) = (prepared.n, prepared.n + 1);
    let groups = groups.max(1);
    if targets.len() != d * rows || rows % groups != 0 {
        return Err(CalibratedError::WeightShape {
            expected: d * rows,
            actual: targets.len(),
        });
    }
    let all: Vec<usize> = (0..d).collect();
    let v = refit(&prepared.gram, d, targets, rows, &all)?;
    let g_bias = prepared.gram[n * d + n];
    let cost: Vec<f64> = (0..rows)
        .map(|r| {
            let explained: f64 = (0..d)
                .map(|i| v[i * rows + r] * targets[i * rows + r])
                .sum();
            let t_bias = targets[n * rows + r];
            (explained - t_bias * t_bias / g_bias).max(0.0)
        })
        .collect();
    let per_group = rows / groups;
    let mut keep = vec![false; rows];
    for g in 0..groups {
        let mut order: Vec<usize> = (g * per_group..(g + 1) * per_group).collect();
        order.sort_by(|&a, &b| cost[b].total_cmp(&cost[a]).then(a.cmp(&b)));
        for r in order
            .into_iter()
            .take(keep_per_group.clamp(1, per_group.max(1)))
        {
            keep[r] = true;
        }
    }
    let tokens = prepared.tokens as f64;
    let mut weight = vec![0f32; rows * n];
    let mut bias = vec![0f32; rows];
    for r in 0..rows {
        if keep[r] {
            for c in 0..n {
                weight[r * n + c] = v[c * rows + r] as f32;
            }
            bias[r] = v[n * rows + r] as f32;
        } else {
            bias[r] = (targets[n * rows + r] / tokens) as f32;
        }
    }
    Ok(RowFit {
        keep,
        weight,
        bias,
        cost,
    })
}
