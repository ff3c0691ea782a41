//! Unit tests of the calibrated pruning solver.

use super::*;
use ets_testkit::rng::{test_rng, Rng};

/// Correlated inputs: a random mix of `n` features.
fn inputs(rng: &mut Rng, m: usize, n: usize) -> Vec<f32> {
    let mix = rng.symmetric_vec(n * n, 1.0);
    let z = rng.symmetric_vec(m * n, 1.0);
    let mut x = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            x[i * n + j] =
                (0..n).map(|k| z[i * n + k] * mix[k * n + j]).sum::<f32>() + 0.5 * z[i * n + j];
        }
    }
    x
}

/// Every combination of selection and refit.
fn every_stages() -> [Stages; 4] {
    let s = |selection, refit| Stages { selection, refit };
    [
        s(Selection::Score, Refit::None),
        s(Selection::Score, Refit::Dense),
        s(Selection::Greedy, Refit::None),
        s(Selection::Greedy, Refit::Dense),
    ]
}

/// Objective of `v` (`d x rows`) up to a constant: `v'Gv - 2 v'T`, summed over rows.
fn objective(g: &[f64], t: &[f64], v: &[f64], d: usize, rows: usize) -> f64 {
    let mut total = 0.0;
    for r in 0..rows {
        for i in 0..d {
            let vi = v[i * rows + r];
            let gv: f64 = (0..d).map(|j| g[i * d + j] * v[j * rows + r]).sum();
            total += vi * gv - 2.0 * vi * t[i * rows + r];
        }
    }
    total
}

#[test]
fn inverse_of_spd_matrix() {
    let mut rng = test_rng("calibrated::inverse_of_spd_matrix");
    // One block, and several blocks with a ragged last one.
    for n in [37, 150] {
        check_inverse(&mut rng, n);
    }
}

fn check_inverse(rng: &mut Rng, n: usize) {
    let m = rng.symmetric_vec(n * n, 1.0);
    let mut a = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            a[i * n + j] = (0..n)
                .map(|k| f64::from(m[i * n + k]) * f64::from(m[j * n + k]))
                .sum::<f64>()
                + if i == j { 1.0 } else { 0.0 };
        }
    }
    let l = cholesky(&a, n).expect("spd");
    for i in 0..n {
        for j in 0..n {
            let p: f64 = (0..n).map(|k| l[i * n + k] * l[j * n + k]).sum();
            assert!(
                (p - a[i * n + j]).abs() < 1e-9 * a[i * n + i],
                "LL' ({i},{j})"
            );
            if j > i {
                assert_eq!(l[i * n + j], 0.0);
            }
        }
    }
    // Solves by blocks (n above the block size) agree with the matrix.
    let k = 3;
    let rhs: Vec<f64> = rng
        .symmetric_vec(n * k, 1.0)
        .iter()
        .map(|&v| f64::from(v))
        .collect();
    let mut x = rhs.clone();
    cholesky_solve(&l, n, &mut x, k);
    for i in 0..n {
        for c in 0..k {
            let p: f64 = (0..n).map(|j| a[i * n + j] * x[j * k + c]).sum();
            assert!((p - rhs[i * k + c]).abs() < 1e-8, "solve ({i},{c}) {p}");
        }
    }
    let inv = spd_inverse(&a, n).expect("spd");
    for i in 0..n {
        for j in 0..n {
            let p: f64 = (0..n).map(|k| a[i * n + k] * inv[k * n + j]).sum();
            let want = if i == j { 1.0 } else { 0.0 };
            assert!((p - want).abs() < 1e-9, "({i},{j}) {p}");
        }
    }
    let mut bad = a.clone();
    bad[0] = f64::NAN;
    assert!(matches!(
        cholesky(&bad, n),
        Err(CalibratedError::NotPositiveDefinite { pivot: 0, .. })
    ));
}

#[test]
fn refit_toward_dense_output_beats_masking() {
    let mut rng = test_rng("calibrated::refit_toward_dense_output_beats_masking");
    let (m, n, rows) = (400, 24, 8);
    let xd = inputs(&mut rng, m, n);
    // The pruned model's inputs drift from the dense ones.
    let xp: Vec<f32> = xd.iter().map(|&v| v + 0.3 * rng.symmetric(1.0)).collect();
    let w = rng.symmetric_vec(rows * n, 1.0);
    let b = rng.symmetric_vec(rows, 1.0);
    let mut stats = LinearStats::new(n);
    stats
        .accumulate(&xp[..200 * n], &xd[..200 * n])
        .expect("acc");
    stats
        .accumulate(&xp[200 * n..], &xd[200 * n..])
        .expect("acc");
    assert_eq!(stats.tokens(), m);
    let units: Vec<_> = (0..n / 4).map(|u| u * 4..u * 4 + 4).collect();
    let keep = [true, false, true, false, true, false];
    let d = n + 1;
    let gram = stats.damped_gram();
    let t = stats.targets(&w, &b).expect("targets");
    let fit = prune_band(&gram, &[], &t, rows, &units, 3, Some(&keep)).expect("fit");
    assert_eq!(fit.keep, keep);
    // Squared error against the dense outputs on the data itself.
    let err = |wv: &[f32], bv: &[f32]| -> f64 {
        let mut e = 0f64;
        for i in 0..m {
            for r in 0..rows {
                let dense: f32 = (0..n).map(|j| xd[i * n + j] * w[r * n + j]).sum::<f32>() + b[r];
                let got: f32 = (0..n).map(|j| xp[i * n + j] * wv[r * n + j]).sum::<f32>() + bv[r];
                e += f64::from(dense - got).powi(2);
            }
        }
        e
    };
    let masked: Vec<f32> = w
        .iter()
        .enumerate()
        .map(|(i, &v)| if keep[(i % n) / 4] { v } else { 0.0 })
        .collect();
    for (i, &v) in fit.weight.iter().enumerate() {
        if !keep[(i % n) / 4] {
            assert_eq!(v, 0.0, "removed weight {i} not zero");
        }
    }
    let (e_mask, e_fit) = (err(&masked, &b), err(&fit.weight, &fit.bias));
    assert!(e_fit < 0.9 * e_mask, "refit {e_fit} vs masked {e_mask}");
    let _ = d;
}

/// Best kept set by exhaustive search, for comparison with the greedy search.
fn brute_force(
    g: &[f64],
    t: &[f64],
    d: usize,
    rows: usize,
    units: &[std::ops::Range<usize>],
    keep: usize,
) -> (Vec<bool>, f64) {
    let mut best = (Vec::new(), f64::INFINITY);
    for mask in 0u32..(1 << units.len()) {
        if mask.count_ones() as usize != keep {
            continue;
        }
        let k: Vec<bool> = (0..units.len()).map(|u| mask >> u & 1 == 1).collect();
        let cols: Vec<usize> = units
            .iter()
            .zip(&k)
            .filter(|(_, &k)| k)
            .flat_map(|(u, _)| u.clone())
            .chain([d - 1])
            .collect();
        let v = refit(g, d, t, rows, &cols).expect("refit");
        let obj = objective(g, t, &v, d, rows);
        if obj < best.1 - 1e-9 {
            best = (k, obj);
        }
    }
    best
}

#[test]
fn greedy_removal_finds_known_optima() {
    let mut rng = test_rng("calibrated::greedy_removal_finds_known_optima");
    let (m, n, rows) = (320, 12, 3);
    let units: Vec<_> = (0..n / 2).map(|u| u * 2..u * 2 + 2).collect();
    // Correlated inputs: one removal is exactly optimal for the greedy step.
    let x = inputs(&mut rng, m, n);
    // Uncorrelated, zero-mean features: removals do not interact, so greedy is optimal at
    // every count.
    // Walsh functions (columns 1..=n of the 16-point Hadamard matrix) at different scales:
    // orthogonal to each other and to the bias column.
    let mut ortho = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let sign = if ((i % 16) & (j + 1)).count_ones() % 2 == 0 {
                1.0
            } else {
                -1.0
            };
            ortho[i * n + j] = sign * (1.0 + 0.3 * j as f32);
        }
    }
    for (data, keeps) in [(&x, vec![5]), (&ortho, vec![5, 4, 3, 2, 1])] {
        let w = rng.symmetric_vec(rows * n, 1.0);
        let b = rng.symmetric_vec(rows, 1.0);
        let mut stats = LinearStats::new(n);
        stats.accumulate(data, data).expect("acc");
        let (d, g) = (n + 1, stats.damped_gram());
        let gi = spd_inverse(&g, d).expect("inv");
        let t = stats.targets(&w, &b).expect("targets");
        for keep in keeps {
            let fit = prune_band(&g, &gi, &t, rows, &units, keep, None).expect("greedy");
            let (best, best_obj) = brute_force(&g, &t, d, rows, &units, keep);
            let cols: Vec<usize> = units
                .iter()
                .zip(&fit.keep)
                .filter(|(_, &k)| k)
                .flat_map(|(u, _)| u.clone())
                .chain([n])
                .collect();
            let obj = objective(
                &g,
                &t,
                &refit(&g, d, &t, rows, &cols).expect("refit"),
                d,
                rows,
            );
            assert_eq!(fit.keep.iter().filter(|&&k| k).count(), keep);
            assert_eq!(
                fit.keep, best,
                "keep {keep}: greedy {obj} vs optimum {best_obj}"
            );
        }
    }
}

#[test]
fn tile_fit_keeps_budget_and_is_deterministic() {
    let mut rng = test_rng("calibrated::tile_fit_keeps_budget_and_is_deterministic");
    let (m, n, rows, th, tw) = (200, 32, 16, 8, 8);
    let x = inputs(&mut rng, m, n);
    let w = rng.symmetric_vec(rows * n, 1.0);
    let b = rng.symmetric_vec(rows, 1.0);
    let mut stats = LinearStats::new(n);
    stats.accumulate(&x, &x).expect("acc");
    let scores = activation_tile_scores(&w, rows, n, &stats.input_energy(), th, tw);
    let budget = budget_from_scores(&scores, n / tw, 4);
    assert_eq!(budget.iter().sum::<usize>(), 4);
    for stages in every_stages() {
        let a = fit_tiles(&w, &b, &stats, (th, tw), th, &budget, stages).expect("fit");
        let again = fit_tiles(&w, &b, &stats, (th, tw), th, &budget, stages).expect("fit");
        assert_eq!(a, again);
        assert_eq!(a.keep.iter().filter(|&&k| k).count(), 4);
        for (i, &v) in a.weight.iter().enumerate() {
            let (r, c) = (i / n, i % n);
            if !a.keep[(r / th) * (n / tw) + c / tw] {
                assert_eq!(v, 0.0);
            }
        }
    }
    assert!(matches!(
        fit_tiles(
            &w,
            &b,
            &LinearStats::new(n),
            (th, tw),
            th,
            &budget,
            Stages::default()
        ),
        Err(CalibratedError::NoSamples)
    ));
}

#[test]
fn statistics_match_direct_sums() {
    let mut rng = test_rng("calibrated::statistics_match_direct_sums");
    let (m, n) = (70, 9);
    let xd = inputs(&mut rng, m, n);
    let xp: Vec<f32> = xd.iter().map(|&v| v + 0.2 * rng.symmetric(1.0)).collect();
    let mut stats = LinearStats::new(n);
    // Two batches: statistics add up across calls.
    stats.accumulate(&xp[..30 * n], &xd[..30 * n]).expect("acc");
    stats.accumulate(&xp[30 * n..], &xd[30 * n..]).expect("acc");
    assert_eq!(stats.tokens(), m);
    let d = n + 1;
    let aug = |x: &[f32], t: usize, j: usize| if j == n { 1.0 } else { f64::from(x[t * n + j]) };
    for i in 0..d {
        for j in 0..d {
            let g: f64 = (0..m).map(|t| aug(&xp, t, i) * aug(&xp, t, j)).sum();
            let c: f64 = (0..m).map(|t| aug(&xp, t, i) * aug(&xd, t, j)).sum();
            if j >= i {
                assert!(
                    (stats.g[i * d + j] - g).abs() < 1e-4 * (1.0 + g.abs()),
                    "G({i},{j})"
                );
            }
            assert!(
                (stats.c[i * d + j] - c).abs() < 1e-4 * (1.0 + c.abs()),
                "C({i},{j})"
            );
        }
    }
    assert!(matches!(
        stats.accumulate(&xp[..n + 1], &xd[..n + 1]),
        Err(CalibratedError::InputShape { .. })
    ));
}

/// Greedy removal with the whole inverse Hessian downdated after every removal.
fn greedy_full_downdate(
    h0: &[f64],
    t: &[f64],
    d: usize,
    rows: usize,
    units: &[std::ops::Range<usize>],
    keep_units: usize,
) -> Vec<bool> {
    let mut h = h0.to_vec();
    let mut w: Vec<f64> = (0..d * rows)
        .map(|e| {
            (0..d)
                .map(|k| h[(e / rows) * d + k] * t[k * rows + e % rows])
                .sum()
        })
        .collect();
    let mut keep = vec![true; units.len()];
    for _ in keep_units..units.len() {
        let mut best: Option<(f64, usize)> = None;
        for (u, r) in units.iter().enumerate().filter(|(u, _)| keep[*u]) {
            let q: Vec<usize> = r.clone().collect();
            let hqq: Vec<f64> = q
                .iter()
                .flat_map(|&i| q.iter().map(move |&j| (i, j)))
                .map(|(i, j)| h[i * d + j])
                .collect();
            let l = cholesky(&hqq, q.len()).expect("spd");
            let mut z: Vec<f64> = q
                .iter()
                .flat_map(|&i| w[i * rows..(i + 1) * rows].to_vec())
                .collect();
            let wq = z.clone();
            cholesky_solve(&l, q.len(), &mut z, rows);
            let cost: f64 = wq.iter().zip(&z).map(|(a, b)| a * b).sum();
            if best.map_or(true, |(b, _)| cost < b) {
                best = Some((cost, u));
            }
        }
        let (_, u) = best.expect("a unit left");
        let q: Vec<usize> = units[u].clone().collect();
        let nq = q.len();
        let hqq: Vec<f64> = q
            .iter()
            .flat_map(|&i| q.iter().map(move |&j| (i, j)))
            .map(|(i, j)| h[i * d + j])
            .collect();
        let l = cholesky(&hqq, nq).expect("spd");
        // M = H_QQ^-1 [H[Q,:] | W[Q,:]].
        let mut mh: Vec<f64> = q
            .iter()
            .flat_map(|&i| h[i * d..(i + 1) * d].to_vec())
            .collect();
        cholesky_solve(&l, nq, &mut mh, d);
        let mut mw: Vec<f64> = q
            .iter()
            .flat_map(|&i| w[i * rows..(i + 1) * rows].to_vec())
            .collect();
        cholesky_solve(&l, nq, &mut mw, rows);
        let hq: Vec<f64> = (0..d)
            .flat_map(|i| q.iter().map(move |&j| (i, j)))
            .map(|(i, j)| h[i * d + j])
            .collect();
        for i in 0..d {
            for p in 0..nq {
                let c = hq[i * nq + p];
                (0..d).for_each(|j| h[i * d + j] -= c * mh[p * d + j]);
                (0..rows).for_each(|j| w[i * rows + j] -= c * mw[p * rows + j]);
            }
        }
        for &i in &q {
            h[i * d..(i + 1) * d].fill(0.0);
            (0..d).for_each(|j| h[j * d + i] = 0.0);
            w[i * rows..(i + 1) * rows].fill(0.0);
        }
        keep[u] = false;
    }
    keep
}

/// Statistics of correlated dense inputs against noisy "pruned" ones (`m` tokens, `n` features):
/// the stats, `d = n + 1`, the damped Gram matrix and its inverse.
fn pruned_vs_dense_stats(
    rng: &mut Rng,
    m: usize,
    n: usize,
) -> (LinearStats, usize, Vec<f64>, Vec<f64>) {
    let xd = inputs(rng, m, n);
    let xp: Vec<f32> = xd.iter().map(|&v| v + 0.2 * rng.symmetric(1.0)).collect();
    let mut stats = LinearStats::new(n);
    stats.accumulate(&xp, &xd).expect("acc");
    let (d, g) = (n + 1, stats.damped_gram());
    let gi = spd_inverse(&g, d).expect("inv");
    (stats, d, g, gi)
}

#[test]
fn left_looking_greedy_matches_full_downdates() {
    let mut rng = test_rng("calibrated::left_looking_greedy_matches_full_downdates");
    let (m, n, rows) = (300, 30, 5);
    // Units of unequal width, as at a ragged matrix edge.
    let units: Vec<_> = (0..n).step_by(4).map(|c| c..(c + 4).min(n)).collect();
    let (stats, d, _, gi) = pruned_vs_dense_stats(&mut rng, m, n);
    let t = stats
        .targets(
            &rng.symmetric_vec(rows * n, 1.0),
            &rng.symmetric_vec(rows, 1.0),
        )
        .expect("targets");
    for keep in [7, 4, 1, 0] {
        let fast = greedy_units(&gi, &t, d, rows, &units, keep)
            .expect("greedy")
            .keep;
        assert_eq!(
            fast,
            greedy_full_downdate(&gi, &t, d, rows, &units, keep),
            "keep {keep}"
        );
    }
    // Columns in no unit (always kept) between and after the units.
    let gappy: Vec<_> = (0..n - 4).step_by(5).map(|c| c..c + 3).collect();
    for keep in [4, 2, 0] {
        let fast = greedy_units(&gi, &t, d, rows, &gappy, keep)
            .expect("greedy")
            .keep;
        assert_eq!(
            fast,
            greedy_full_downdate(&gi, &t, d, rows, &gappy, keep),
            "gappy, keep {keep}"
        );
    }
}

#[test]
fn greedy_weights_are_the_refit_over_kept_columns() {
    let mut rng = test_rng("calibrated::greedy_weights_are_the_refit_over_kept_columns");
    let (m, n, rows) = (400, 40, 6);
    // Units of unequal width, as at a ragged matrix edge.
    let units: Vec<_> = (0..n).step_by(6).map(|c| c..(c + 6).min(n)).collect();
    let (stats, d, g, gi) = pruned_vs_dense_stats(&mut rng, m, n);
    let w = rng.symmetric_vec(rows * n, 1.0);
    let b = rng.symmetric_vec(rows, 1.0);
    let t = stats.targets(&w, &b).expect("targets");
    for keep in [6, 3, 1, 0] {
        let fit = prune_band(&g, &gi, &t, rows, &units, keep, None).expect("greedy");
        let cols: Vec<usize> = units
            .iter()
            .zip(&fit.keep)
            .filter(|(_, &k)| k)
            .flat_map(|(u, _)| u.clone())
            .chain([n])
            .collect();
        let v = refit(&g, d, &t, rows, &cols).expect("refit");
        let scale = v.iter().fold(0f64, |a, x| a.max(x.abs()));
        for r in 0..rows {
            for c in 0..n {
                let want = v[c * rows + r];
                let got = f64::from(fit.weight[r * n + c]);
                assert!(
                    (got - want).abs() <= 1e-6 * scale,
                    "keep {keep}: weight ({r},{c}) {got} vs refit {want}"
                );
            }
            let (got, want) = (f64::from(fit.bias[r]), v[n * rows + r]);
            assert!((got - want).abs() <= 1e-6 * scale, "keep {keep}: bias {r}");
        }
    }
}

/// Squared error of a pruned weight's outputs on `xp` against the dense outputs on `xd`, summed
/// over tokens and rows.
fn output_error(
    xp: &[f32],
    xd: &[f32],
    n: usize,
    (w, b): (&[f32], &[f32]),
    (wv, bv): (&[f32], &[f32]),
) -> f64 {
    let rows = b.len();
    let mut e = 0f64;
    for (tp, td) in xp.chunks_exact(n).zip(xd.chunks_exact(n)) {
        for r in 0..rows {
            let row = |m: &[f32], x: &[f32]| -> f64 {
                (0..n)
                    .map(|j| f64::from(x[j]) * f64::from(m[r * n + j]))
                    .sum()
            };
            let dense = row(w, td) + f64::from(b[r]);
            let got = row(wv, tp) + f64::from(bv[r]);
            e += (dense - got).powi(2);
        }
    }
    e
}

#[test]
fn row_costs_are_the_objective_of_dropping_each_row() {
    let mut rng = test_rng("calibrated::row_costs_are_the_objective_of_dropping_each_row");
    let (m, n, rows) = (300, 16, 12);
    let (stats, d, g, _) = pruned_vs_dense_stats(&mut rng, m, n);
    let w = rng.symmetric_vec(rows * n, 1.0);
    let b = rng.symmetric_vec(rows, 1.0);
    let t = stats.targets(&w, &b).expect("targets");
    let prepared = stats.clone().prepare(false).expect("prepare");
    let fit = fit_rows(&prepared, &t, rows, 3, 2).expect("rows");
    let all: Vec<usize> = (0..d).collect();
    let full = refit(&g, d, &t, rows, &all).expect("full");
    let bias_only = refit(&g, d, &t, rows, &[n]).expect("bias only");
    for r in 0..rows {
        let one = |v: &[f64]| -> Vec<f64> { (0..d).map(|i| v[i * rows + r]).collect() };
        let tr = one(&t);
        let cost =
            objective(&g, &tr, &one(&bias_only), d, 1) - objective(&g, &tr, &one(&full), d, 1);
        assert!(
            (fit.cost[r] - cost).abs() <= 1e-8 * cost.abs().max(1.0),
            "row {r}: {} vs {cost}",
            fit.cost[r]
        );
    }
    // Two rows kept in each group of four: the costliest ones.
    for grp in 0..3 {
        let range = grp * 4..grp * 4 + 4;
        let kept: Vec<usize> = range.clone().filter(|&r| fit.keep[r]).collect();
        assert_eq!(kept.len(), 2, "group {grp}");
        for r in range.filter(|&r| !fit.keep[r]) {
            assert!(kept.iter().all(|&k| fit.cost[k] >= fit.cost[r]));
            assert!(fit.weight[r * n..(r + 1) * n].iter().all(|&v| v == 0.0));
        }
    }
    assert_eq!(fit_rows(&prepared, &t, rows, 3, 2).expect("again"), fit);
    assert!(matches!(
        fit_rows(&prepared, &t, rows, 5, 2),
        Err(CalibratedError::WeightShape { .. })
    ));
}

#[test]
fn calibrated_rows_beat_weight_norm_rows_on_uneven_inputs() {
    let mut rng = test_rng("calibrated::calibrated_rows_beat_weight_norm_rows_on_uneven_inputs");
    let (m, n, rows) = (400, 16, 16);
    // A few loud input features: odd rows read only them, with small weights; even rows read
    // only the quiet ones, with large weights. The weight norm keeps the even rows.
    let loud = |j: usize| if j < 3 { 8.0 } else { 0.3 };
    let xd: Vec<f32> = inputs(&mut rng, m, n)
        .iter()
        .enumerate()
        .map(|(i, &v)| v * loud(i % n))
        .collect();
    let xp: Vec<f32> = xd.iter().map(|&v| v + 0.05 * rng.symmetric(1.0)).collect();
    let w: Vec<f32> = rng
        .symmetric_vec(rows * n, 1.0)
        .iter()
        .enumerate()
        .map(|(i, &v)| match ((i / n) % 2, i % n < 3) {
            (1, true) => 0.3 * v,
            (0, false) => v,
            _ => 0.0,
        })
        .collect();
    let b = rng.symmetric_vec(rows, 1.0);
    let mut stats = LinearStats::new(n);
    stats.accumulate(&xp, &xd).expect("acc");
    let t = stats.targets(&w, &b).expect("targets");
    let fit = fit_rows(&stats.clone().prepare(false).expect("p"), &t, rows, 1, 8).expect("rows");
    // Dropped rows output the mean of their dense output.
    for r in (0..rows).filter(|&r| !fit.keep[r]) {
        let mean: f64 = xd
            .chunks_exact(n)
            .map(|x| (0..n).map(|j| f64::from(x[j] * w[r * n + j])).sum::<f64>() + f64::from(b[r]))
            .sum::<f64>()
            / m as f64;
        assert!(
            (f64::from(fit.bias[r]) - mean).abs() < 1e-4 * (1.0 + mean.abs()),
            "row {r}"
        );
    }
    let by_norm = crate::prune::select::top_rows(
        crate::prune::Matrix {
            rows,
            cols: n,
            data: &w,
        },
        0.5,
    );
    let mut norm_w = vec![0f32; rows * n];
    for &r in &by_norm {
        let r = r as usize;
        norm_w[r * n..(r + 1) * n].copy_from_slice(&w[r * n..(r + 1) * n]);
    }
    let e_norm = output_error(&xp, &xd, n, (&w, &b), (&norm_w, &b));
    let e_fit = output_error(&xp, &xd, n, (&w, &b), (&fit.weight, &fit.bias));
    assert!(
        e_fit < 0.2 * e_norm,
        "calibrated {e_fit} vs weight norm {e_norm}"
    );
    // Nearly all kept rows are the loud ones (a loud row whose few weights are all small may
    // lose to a quiet one).
    let loud_kept = (0..rows).filter(|&r| fit.keep[r] && r % 2 == 1).count();
    assert!(loud_kept >= 6, "{:?}", fit.keep);
}

/// Each stage of calibrated pruning lowers the reconstruction error against the dense output on
/// seeded synthetic layers: the refit on every layer, greedy selection (a heuristic, which can
/// lose on one layer) over the eight layers' sum. Without the refit, kept weights and the bias
/// are the source's.
#[test]
fn each_stage_lowers_the_reconstruction_error() {
    let mut rng = test_rng("calibrated::each_stage_lowers_the_reconstruction_error");
    let (mut refit_sum, mut greedy_sum) = (0f64, 0f64);
    for layer in 0..8 {
        let (m, n, rows, th, tw) = (600, 48, 16, 8, 8);
        let xd = inputs(&mut rng, m, n);
        let xp: Vec<f32> = xd.iter().map(|&v| v + 0.2 * rng.symmetric(1.0)).collect();
        let w = rng.symmetric_vec(rows * n, 1.0);
        let b = rng.symmetric_vec(rows, 1.0);
        let mut stats = LinearStats::new(n);
        stats.accumulate(&xp, &xd).expect("acc");
        let gc = n / tw;
        let scores = activation_tile_scores(&w, rows, n, &stats.input_energy(), th, tw);
        let budget = budget_from_scores(&scores, gc, scores.len() / 2);
        let error = |fit: &TileFit| -> f64 {
            let mut e = 0f64;
            for i in 0..m {
                for r in 0..rows {
                    let dot = |x: &[f32], wv: &[f32]| -> f64 {
                        (0..n)
                            .map(|j| f64::from(x[i * n + j]) * f64::from(wv[r * n + j]))
                            .sum()
                    };
                    let dense = dot(&xd, &w) + f64::from(b[r]);
                    let got = dot(&xp, &fit.weight) + f64::from(fit.bias[r]);
                    e += (dense - got).powi(2);
                }
            }
            e
        };
        let fit = |selection, refit| {
            let stages = Stages { selection, refit };
            fit_tiles(&w, &b, &stats, (th, tw), th, &budget, stages).expect("fit")
        };
        let score_only = fit(Selection::Score, Refit::None);
        let refitted = fit(Selection::Score, Refit::Dense);
        let greedy = fit(Selection::Greedy, Refit::Dense);
        // Without the refit: the source values on kept tiles, zero elsewhere, the source bias.
        assert_eq!(score_only.bias, b);
        for (i, (&got, &src)) in score_only.weight.iter().zip(&w).enumerate() {
            let kept = score_only.keep[(i / n / th) * gc + (i % n) / tw];
            assert_eq!(got, if kept { src } else { 0.0 }, "weight {i}");
        }
        // The refit keeps the score's tiles; greedy selection may choose others.
        assert_eq!(refitted.keep, score_only.keep);
        let (e0, e1, e2) = (error(&score_only), error(&refitted), error(&greedy));
        assert!(
            e0 > e1,
            "layer {layer}: score only {e0:.1}, + refit {e1:.1}"
        );
        refit_sum += e1;
        greedy_sum += e2;
        // Greedy selection without the refit keeps greedy's tiles and the source values.
        let greedy_masked = fit(Selection::Greedy, Refit::None);
        assert_eq!(greedy_masked.keep, greedy.keep);
        assert_eq!(greedy_masked.bias, b);
    }
    assert!(
        greedy_sum < refit_sum,
        "errors over 8 layers: + refit {refit_sum:.1}, + greedy {greedy_sum:.1}"
    );
}

/// Statistics assembled from products summed elsewhere equal those accumulated batch by batch
/// (integer-valued inputs, so every f32 product and sum is exact in either order).
#[test]
fn statistics_from_products_equal_accumulated_ones() {
    let mut rng = test_rng("statistics_from_products_equal_accumulated_ones");
    let n = 5;
    let mut want = LinearStats::new(n);
    let (mut g, mut c) = (vec![0f64; n * n], vec![0f64; n * n]);
    let (mut sp, mut sd) = (vec![0f64; n], vec![0f64; n]);
    let mut tokens = 0;
    for m in [3, 1, 4] {
        let int = |rng: &mut Rng| -> Vec<f32> {
            rng.symmetric_vec(m * n, 8.0)
                .iter()
                .map(|v| v.round())
                .collect()
        };
        let (xp, xd) = (int(&mut rng), int(&mut rng));
        want.accumulate(&xp, &xd).expect("accumulate");
        for t in 0..m {
            for i in 0..n {
                sp[i] += f64::from(xp[t * n + i]);
                sd[i] += f64::from(xd[t * n + i]);
                for j in 0..n {
                    g[i * n + j] += f64::from(xp[t * n + i] * xp[t * n + j]);
                    c[i * n + j] += f64::from(xp[t * n + i] * xd[t * n + j]);
                }
            }
        }
        tokens += m;
    }
    let got = LinearStats::from_products(n, &g, &c, &sp, &sd, tokens).expect("parts");
    assert_eq!(got, want);
    assert_eq!(got.gram().len(), (n + 1) * (n + 1));
    assert!(LinearStats::from_products(n, &g[1..], &c, &sp, &sd, tokens).is_err());
}
