//! Property tests of the pruning methods on fresh random matrices (shapes not multiples of the
//! tile too). Every pruned matrix is written to a real `.ets` file and read back, so the checks
//! see what a runtime would see. Norms are recomputed here, independently of `prune::select`.

use ets::format::{
    Activation, Dtype, EncodedTensor, EtsFile, EtsWriter, ModelConfig, Provenance, TensorData,
    WriteOptions,
};
use ets::prune::{prune_matrix, select, Matrix, Method, PruneReport, TensorPlan};
use proptest::prelude::*;

use ets_testkit::rng::{test_seed, Rng};

/// Random values with per-row scales (so norms differ); every third seed quantizes the values
/// to quarters, which makes many exactly tied norms.
fn random_matrix(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let quantize = seed % 3 == 0;
    let scale: Vec<f32> = (0..rows)
        .map(|_| 0.1 + 2.0 * rng.symmetric(1.0).abs())
        .collect();
    (0..rows * cols)
        .map(|i| {
            let v = rng.symmetric(1.0) * scale[i / cols];
            if quantize {
                (v * 4.0).round() / 4.0
            } else {
                v
            }
        })
        .collect()
}

fn cfg() -> ModelConfig {
    ModelConfig {
        architecture: "bert".into(),
        num_layers: 1,
        hidden_size: 8,
        num_heads: 1,
        head_dim: 8,
        heads_per_layer: vec![1],
        intermediate_size: 8,
        vocab_size: 8,
        max_position_embeddings: 8,
        type_vocab_size: 1,
        layer_norm_eps: 1e-12,
        activation: Activation::Gelu,
        num_labels: None,
    }
}

/// Writes `t` as tensor "w" of a fresh file and opens it (structure and checksums verified).
fn round_trip(t: &EncodedTensor) -> (tempfile::TempDir, EtsFile) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("w.ets");
    let mut w = EtsWriter::create(&path, WriteOptions::default()).expect("create");
    w.add_tensor("w", t).expect("add");
    w.finish(cfg(), serde_json::json!({}), Provenance::default())
        .expect("finish");
    let f = EtsFile::open(&path).expect("open");
    f.verify_checksums().expect("checksums");
    (dir, f)
}

fn prune(
    m: Matrix<'_>,
    method: Method,
    sparsity: f64,
    tile: (usize, usize),
    value_heads: Option<(usize, usize)>,
) -> (EncodedTensor, PruneReport) {
    let plan = TensorPlan {
        method,
        sparsity,
        tile,
    };
    prune_matrix("w", m, &plan, Dtype::F32, value_heads).expect("prune")
}

fn sq(v: f32) -> f64 {
    f64::from(v) * f64::from(v)
}

/// Squared norm of tile (br, bc), summed in column-major order (unlike the library).
fn tile_norm(data: &[f32], cols: usize, rows: usize, t: (usize, usize), b: (usize, usize)) -> f64 {
    let mut s = 0.0;
    for c in b.1 * t.1..((b.1 + 1) * t.1).min(cols) {
        for r in b.0 * t.0..((b.0 + 1) * t.0).min(rows) {
            s += sq(data[r * cols + c]);
        }
    }
    s
}

fn bit(words: &[u64], i: usize) -> bool {
    words[i / 64] >> (i % 64) & 1 == 1
}

/// Every kept score is at least every dropped score (up to summation-order rounding).
fn assert_ranked(kept: &[f64], dropped: &[f64], what: &str) {
    let lo = kept.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = dropped.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    assert!(
        lo >= hi - 1e-9 * hi.abs(),
        "{what}: a kept score {lo} is below a dropped score {hi}"
    );
}

/// `kept` is within one unit of `target` and at least one.
fn assert_count(kept: usize, total: usize, keep_fraction: f64, what: &str) {
    let target = total as f64 * keep_fraction;
    assert!(kept >= 1, "{what}: nothing kept");
    assert!(
        (kept as f64 - target).abs() <= 1.0,
        "{what}: kept {kept} of {total}, target {target:.2}"
    );
}

/// Checks a tile tensor read back: kept tiles hold the source values, dropped tiles are zero;
/// returns the kept mask over the grid.
fn check_tiles(
    f: &EtsFile,
    data: &[f32],
    rows: usize,
    cols: usize,
    t: (usize, usize),
) -> Vec<bool> {
    let view = f.tensor("w").expect("tensor");
    let TensorData::Tile(tv) = view.data else {
        panic!("expected a tile encoding, got {:?}", view.encoding)
    };
    assert_eq!((tv.tile_rows, tv.tile_cols), t);
    let (gr, gc) = (rows.div_ceil(t.0), cols.div_ceil(t.1));
    assert_eq!((tv.grid_rows, tv.grid_cols), (gr, gc));
    let keep: Vec<bool> = (0..gr * gc).map(|i| bit(tv.bitmap, i)).collect();
    assert_eq!(keep.iter().filter(|&&k| k).count(), tv.kept_tiles());
    let dense = view.to_dense_f32();
    for (i, (&got, &src)) in dense.iter().zip(data).enumerate() {
        let (r, c) = (i / cols, i % cols);
        let want = if keep[(r / t.0) * gc + c / t.1] {
            src
        } else {
            0.0
        };
        assert_eq!(got.to_bits(), want.to_bits(), "element ({r}, {c})");
    }
    keep
}

fn tile_edge() -> impl Strategy<Value = usize> {
    prop::sample::select(vec![8usize, 16, 32])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn tile_keeps_the_highest_norm_tiles(
        rows in 1usize..90, cols in 1usize..90, th in tile_edge(), tw in tile_edge(),
        sparsity in 0.0f64..0.97, seed in any::<u64>(),
    ) {
        let data = random_matrix(rows, cols, seed);
        let m = Matrix { rows, cols, data: &data };
        let (enc, report) = prune(m, Method::Tile, sparsity, (th, tw), None);
        let (_d, f) = round_trip(&enc);
        let keep = check_tiles(&f, &data, rows, cols, (th, tw));
        let gc = cols.div_ceil(tw);
        let kept = keep.iter().filter(|&&k| k).count();
        assert_count(kept, keep.len(), 1.0 - sparsity, "tiles");
        let (mut k, mut d) = (Vec::new(), Vec::new());
        for (i, &kp) in keep.iter().enumerate() {
            let n = tile_norm(&data, cols, rows, (th, tw), (i / gc, i % gc));
            if kp { k.push(n) } else { d.push(n) }
        }
        assert_ranked(&k, &d, "tiles");
        prop_assert!((report.density - kept as f64 / keep.len() as f64).abs() < 1e-12);
        prop_assert_eq!(report.encoding.as_str(), "tile");
    }

    #[test]
    fn tile_balanced_keeps_the_same_count_per_block_row(
        rows in 1usize..90, cols in 1usize..90, th in tile_edge(), tw in tile_edge(),
        sparsity in 0.0f64..0.97, seed in any::<u64>(),
    ) {
        let data = random_matrix(rows, cols, seed);
        let m = Matrix { rows, cols, data: &data };
        let (enc, _) = prune(m, Method::TileBalanced, sparsity, (th, tw), None);
        let (_d, f) = round_trip(&enc);
        let keep = check_tiles(&f, &data, rows, cols, (th, tw));
        let gc = cols.div_ceil(tw);
        let counts: Vec<usize> = keep.chunks(gc).map(|r| r.iter().filter(|&&k| k).count()).collect();
        prop_assert!(counts.iter().all(|&c| c == counts[0]), "per block row: {:?}", counts);
        assert_count(counts[0], gc, 1.0 - sparsity, "tiles per block row");
        for (br, row) in keep.chunks(gc).enumerate() {
            let (mut k, mut d) = (Vec::new(), Vec::new());
            for (bc, &kp) in row.iter().enumerate() {
                let n = tile_norm(&data, cols, rows, (th, tw), (br, bc));
                if kp { k.push(n) } else { d.push(n) }
            }
            assert_ranked(&k, &d, &format!("block row {br}"));
        }
    }

    #[test]
    fn tile_grouped_shares_columns_within_each_feature_group(
        rows in 1usize..300, cols in 1usize..90, th in tile_edge(), tw in tile_edge(),
        sparsity in 0.0f64..0.97, seed in any::<u64>(),
    ) {
        let data = random_matrix(rows, cols, seed);
        let m = Matrix { rows, cols, data: &data };
        let (enc, report) = prune(m, Method::TileGrouped, sparsity, (th, tw), None);
        let (_d, f) = round_trip(&enc);
        let keep = check_tiles(&f, &data, rows, cols, (th, tw));
        let gc = cols.div_ceil(tw);
        let per_group = (select::GROUP_FEATURES / th).max(1);
        for (g, group) in keep.chunks(gc * per_group).enumerate() {
            // Every block row of the group keeps the same columns, as many as the target says.
            let first = &group[..gc];
            for (i, row) in group.chunks(gc).enumerate() {
                prop_assert_eq!(row, first, "group {} block row {}", g, i);
            }
            assert_count(first.iter().filter(|&&k| k).count(), gc, 1.0 - sparsity, "columns per group");
            // The kept columns are the highest by the group's summed tile norms.
            let (mut k, mut d) = (Vec::new(), Vec::new());
            for (bc, &kp) in first.iter().enumerate() {
                let score: f64 = (0..group.len() / gc)
                    .map(|i| tile_norm(&data, cols, rows, (th, tw), (g * per_group + i, bc)))
                    .sum();
                if kp { k.push(score) } else { d.push(score) }
            }
            assert_ranked(&k, &d, &format!("group {g}"));
        }
        prop_assert_eq!(report.encoding.as_str(), "tile");
    }

    #[test]
    fn rows_and_cols_keep_the_highest_norm_lines(
        rows in 1usize..90, cols in 1usize..90, sparsity in 0.0f64..0.97, seed in any::<u64>(),
    ) {
        let data = random_matrix(rows, cols, seed);
        let m = Matrix { rows, cols, data: &data };
        for method in [Method::Rows, Method::Cols] {
            let (enc, report) = prune(m, method, sparsity, (16, 16), None);
            let (_d, f) = round_trip(&enc);
            let view = f.tensor("w").expect("tensor");
            let (indices, along_rows) = match view.data {
                TensorData::Rows { indices, .. } => (indices.to_vec(), true),
                TensorData::Cols { indices, .. } => (indices.to_vec(), false),
                _ => panic!("{method:?}: unexpected encoding {:?}", view.encoding),
            };
            prop_assert_eq!(along_rows, method == Method::Rows);
            let lines = if along_rows { rows } else { cols };
            let mut keep = vec![false; lines];
            for &i in &indices { keep[i as usize] = true; }
            assert_count(indices.len(), lines, 1.0 - sparsity, method.name());
            let norm = |l: usize| -> f64 {
                if along_rows { (0..cols).map(|c| sq(data[l * cols + c])).sum() }
                else { (0..rows).map(|r| sq(data[r * cols + l])).sum() }
            };
            let (mut k, mut d) = (Vec::new(), Vec::new());
            for (l, &kp) in keep.iter().enumerate() {
                if kp { k.push(norm(l)) } else { d.push(norm(l)) }
            }
            assert_ranked(&k, &d, method.name());
            let dense = view.to_dense_f32();
            for (i, (&got, &src)) in dense.iter().zip(&data).enumerate() {
                let line = if along_rows { i / cols } else { i % cols };
                let want = if keep[line] { src } else { 0.0 };
                prop_assert_eq!(got.to_bits(), want.to_bits());
            }
            prop_assert!((report.density - indices.len() as f64 / lines as f64).abs() < 1e-12);
        }
    }

    #[test]
    fn irregular_keeps_the_largest_elements(
        rows in 1usize..90, cols in 1usize..90, th in tile_edge(), tw in tile_edge(),
        sparsity in 0.0f64..0.97, seed in any::<u64>(),
    ) {
        let data = random_matrix(rows, cols, seed);
        let m = Matrix { rows, cols, data: &data };
        let (enc, report) = prune(m, Method::Irregular, sparsity, (th, tw), None);
        let (_d, f) = round_trip(&enc);
        let view = f.tensor("w").expect("tensor");
        let TensorData::Tile(tv) = view.data else { panic!("expected tiles") };
        let (Some(bits), Some(_)) = (tv.element_bitmaps, tv.element_offsets) else {
            panic!("expected element bitmaps")
        };
        // Kept mask over elements, from the stored bitmaps.
        let gc = cols.div_ceil(tw);
        let words = (th * tw).div_ceil(64);
        let mut keep = vec![false; rows * cols];
        for br in 0..tv.grid_rows {
            for (k, bc) in tv.row_tiles(br) {
                for e in 0..th * tw {
                    if bit(&bits[k * words..(k + 1) * words], e) {
                        let (r, c) = (br * th + e / tw, bc * tw + e % tw);
                        prop_assert!(r < rows && c < cols, "bit set outside the matrix");
                        keep[r * cols + c] = true;
                    }
                }
            }
        }
        let kept = keep.iter().filter(|&&k| k).count();
        prop_assert_eq!(kept * 4, tv.values.len());
        assert_count(kept, rows * cols, 1.0 - sparsity, "elements");
        prop_assert!(tv.grid_cols == gc);
        let (mut k, mut d) = (Vec::new(), Vec::new());
        for (&kp, &v) in keep.iter().zip(&data) {
            if kp { k.push(f64::from(v.abs())) } else { d.push(f64::from(v.abs())) }
        }
        assert_ranked(&k, &d, "elements");
        for (i, (&got, &src)) in view.to_dense_f32().iter().zip(&data).enumerate() {
            let want = if keep[i] { src } else { 0.0 };
            prop_assert_eq!(got.to_bits(), want.to_bits());
        }
        prop_assert!((report.density - kept as f64 / (rows * cols) as f64).abs() < 1e-12);
    }

    #[test]
    fn attention_aware_keeps_whole_v_rows_equally_per_head(
        heads in 1usize..7, head_dim in prop::sample::select(vec![4usize, 8, 12, 32]),
        cols in 1usize..70, sparsity in 0.0f64..0.97, seed in any::<u64>(),
    ) {
        let rows = heads * head_dim;
        let data = random_matrix(rows, cols, seed);
        let m = Matrix { rows, cols, data: &data };
        let (enc, _) = prune(m, Method::AttentionAware, sparsity, (16, 16), Some((heads, head_dim)));
        let (_d, f) = round_trip(&enc);
        let view = f.tensor("w").expect("tensor");
        let TensorData::Rows { indices, .. } = view.data else {
            panic!("V under attention-aware must be rows, got {:?}", view.encoding)
        };
        let mut keep = vec![false; rows];
        for &i in indices { keep[i as usize] = true; }
        let per_head: Vec<usize> = keep.chunks(head_dim).map(|h| h.iter().filter(|&&k| k).count()).collect();
        prop_assert!(per_head.iter().all(|&c| c == per_head[0]), "per head: {:?}", per_head);
        assert_count(per_head[0], head_dim, 1.0 - sparsity, "rows per head");
        for h in 0..heads {
            let (mut k, mut d) = (Vec::new(), Vec::new());
            for r in h * head_dim..(h + 1) * head_dim {
                let n: f64 = data[r * cols..(r + 1) * cols].iter().map(|&v| sq(v)).sum();
                if keep[r] { k.push(n) } else { d.push(n) }
            }
            assert_ranked(&k, &d, &format!("head {h}"));
        }
        for (i, (&got, &src)) in view.to_dense_f32().iter().zip(&data).enumerate() {
            let want = if keep[i / cols] { src } else { 0.0 };
            prop_assert_eq!(got.to_bits(), want.to_bits());
        }
        // Any other weight under attention-aware gets plain tiles.
        let (enc, _) = prune(m, Method::AttentionAware, sparsity, (16, 16), None);
        let (_d2, f2) = round_trip(&enc);
        let keep = check_tiles(&f2, &data, rows, cols, (16, 16));
        assert_count(keep.iter().filter(|&&k| k).count(), keep.len(), 1.0 - sparsity, "tiles");
    }

    #[test]
    fn top_heads_ranks_by_q_k_v_rows_and_o_columns(
        heads in 1usize..9, head_dim in prop::sample::select(vec![2usize, 4, 8]),
        hidden in 1usize..40, sparsity in 0.0f64..0.97, seed in any::<u64>(),
    ) {
        let a = heads * head_dim;
        let q = random_matrix(a, hidden, seed);
        let k = random_matrix(a, hidden, seed ^ 1);
        let v = random_matrix(a, hidden, seed ^ 2);
        let o = random_matrix(hidden, a, seed ^ 3);
        let qkv = [mat(a, hidden, &q), mat(a, hidden, &k), mat(a, hidden, &v)];
        let kept = select::top_heads(qkv, mat(hidden, a, &o), heads, head_dim, 1.0 - sparsity);
        prop_assert!(kept.windows(2).all(|w| w[0] < w[1]), "not ascending: {:?}", kept);
        assert_count(kept.len(), heads, 1.0 - sparsity, "heads");
        let score = |h: usize| -> f64 {
            let rows: f64 = [&q, &k, &v].iter()
                .map(|m| m[h * head_dim * hidden..(h + 1) * head_dim * hidden].iter().map(|&x| sq(x)).sum::<f64>())
                .sum();
            let cols: f64 = (0..hidden)
                .map(|r| o[r * a + h * head_dim..r * a + (h + 1) * head_dim].iter().map(|&x| sq(x)).sum::<f64>())
                .sum();
            rows + cols
        };
        let (mut ks, mut ds) = (Vec::new(), Vec::new());
        for h in 0..heads {
            if kept.contains(&h) { ks.push(score(h)) } else { ds.push(score(h)) }
        }
        assert_ranked(&ks, &ds, "heads");
    }
}

fn mat(rows: usize, cols: usize, data: &[f32]) -> Matrix<'_> {
    Matrix { rows, cols, data }
}

/// A matrix with whole zero tiles (one at the ragged edge) and scattered zeros: `existing`
/// stores exactly the non-zeros, reads back bit-exactly, and stores fewer bytes than dense.
#[test]
fn existing_keeps_exactly_the_zeros() {
    let seed = test_seed("existing_keeps_exactly_the_zeros");
    let (rows, cols, t) = (50, 70, (16usize, 16usize));
    let mut data = random_matrix(rows, cols, seed);
    let mut rng = Rng::new(seed ^ 0x55);
    let gc = cols.div_ceil(t.1);
    let zero_tiles = [(0usize, 1usize), (2, 3), (3, 4)];
    for (i, v) in data.iter_mut().enumerate() {
        let (r, c) = (i / cols, i % cols);
        if zero_tiles.contains(&(r / t.0, c / t.1)) || rng.next_u64() % 10 == 0 {
            *v = 0.0;
        } else if *v == 0.0 {
            *v = 0.5; // no accidental zeros: the count below must be exact
        }
    }
    let m = Matrix {
        rows,
        cols,
        data: &data,
    };
    let (enc, report) = prune(m, Method::Existing, 0.0, t, None);
    let (_d, f) = round_trip(&enc);
    let view = f.tensor("w").expect("tensor");
    let TensorData::Tile(tv) = view.data else {
        panic!("expected tiles, got {:?}", view.encoding)
    };
    assert!(
        tv.element_bitmaps.is_some(),
        "scattered zeros need element bitmaps"
    );
    for &(br, bc) in &zero_tiles {
        assert!(
            !bit(tv.bitmap, br * gc + bc),
            "zero tile ({br}, {bc}) stored"
        );
    }
    let nonzeros = data.iter().filter(|&&v| v != 0.0).count();
    assert_eq!(
        tv.values.len(),
        nonzeros * 4,
        "stored values != non-zeros (seed {seed})"
    );
    let back = view.to_dense_f32();
    for (i, (a, b)) in back.iter().zip(&data).enumerate() {
        assert_eq!(a.to_bits(), b.to_bits(), "element {i} (seed {seed})");
    }
    assert!(
        view.length < (rows * cols * 4) as u64,
        "section {} bytes",
        view.length
    );
    assert!(report.stored_bytes < report.dense_bytes);
}

/// Only whole zero tiles: plain tiles, no element bitmaps; no zeros at all: dense.
#[test]
fn existing_without_scattered_zeros() {
    let seed = test_seed("existing_without_scattered_zeros");
    let (rows, cols, t) = (40, 33, (8usize, 16usize));
    let mut data: Vec<f32> = random_matrix(rows, cols, seed)
        .into_iter()
        .map(|v| if v == 0.0 { 1.0 } else { v })
        .collect();
    let m = Matrix {
        rows,
        cols,
        data: &data,
    };
    let (enc, _) = prune(m, Method::Existing, 0.0, t, None);
    let (_d, f) = round_trip(&enc);
    assert!(matches!(
        f.tensor("w").expect("w").data,
        TensorData::Dense { .. }
    ));
    let gc = cols.div_ceil(t.1);
    for (i, v) in data.iter_mut().enumerate() {
        let tile = (i / cols / t.0) * gc + (i % cols) / t.1;
        if tile % 3 == 1 {
            *v = 0.0;
        }
    }
    let m = Matrix {
        rows,
        cols,
        data: &data,
    };
    let (enc, _) = prune(m, Method::Existing, 0.0, t, None);
    let (_d, f) = round_trip(&enc);
    let keep = check_tiles(&f, &data, rows, cols, t);
    for (i, k) in keep.iter().enumerate() {
        assert_eq!(*k, i % 3 != 1, "tile {i}");
    }
    let view = f.tensor("w").expect("w");
    let TensorData::Tile(tv) = view.data else {
        panic!("tiles")
    };
    assert!(tv.element_bitmaps.is_none());
}

/// `keep_count` rounds and never drops everything.
#[test]
fn keep_count_rounds_and_keeps_one() {
    assert_eq!(select::keep_count(10, 0.0), 1);
    assert_eq!(select::keep_count(10, 0.2), 2);
    assert_eq!(select::keep_count(10, 0.26), 3);
    assert_eq!(select::keep_count(10, 1.0), 10);
    assert_eq!(select::keep_count(1, 0.01), 1);
}

/// Methods `none` and `heads` leave a single matrix dense and exact.
#[test]
fn none_and_heads_are_dense_pass_through() {
    let data = random_matrix(20, 30, test_seed("none_and_heads_are_dense_pass_through"));
    let m = Matrix {
        rows: 20,
        cols: 30,
        data: &data,
    };
    for method in [Method::None, Method::Heads] {
        let (enc, report) = prune(m, method, 0.5, (16, 16), None);
        let (_d, f) = round_trip(&enc);
        let v = f.tensor("w").expect("w");
        assert!(matches!(v.data, TensorData::Dense { .. }));
        assert_eq!(v.to_dense_f32(), data);
        assert_eq!(report.density, 1.0);
    }
}
