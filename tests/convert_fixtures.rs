//! The converter end to end on the five synthetic source fixtures (`fixtures/sources`, written by
//! `et-gen-sources`): exact weights, dtype rounding, the density rule, head pruning, determinism.
//! References are the generator's weights (`ets_testkit::sources::tiny_weight`), not the converter's reader.

use std::path::{Path, PathBuf};

use ets::convert::{convert, ConvertOptions, ConvertReport};
use ets::format::{names, Dtype, EtsFile, TensorData};
use ets::ingest::SourceTensor;
use ets::prune::{Method, Recipe, Role};
use ets_testkit::sources::{tiny_config, tiny_weight};
use sha2::{Digest, Sha256};

const SOURCES: [&str; 5] = [
    "tiny-safetensors/model.safetensors",
    "tiny-onnx-inline/model.onnx",
    "tiny-onnx-external/model.onnx",
    "tiny-onnx-decomposed-ln/model.onnx",
    "tiny-onnx-gemm-tanh/model.onnx",
];

fn source(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/sources")
        .join(rel)
}

fn options(method: Method, sparsity: f64, tile: [usize; 2], dtype: Dtype) -> ConvertOptions {
    let recipe = Recipe {
        method,
        sparsity,
        tile,
        ..Recipe::default()
    };
    ConvertOptions::new(recipe, dtype)
}

fn run(rel: &str, out: &Path, opts: &ConvertOptions) -> (ConvertReport, EtsFile) {
    let report = convert(&source(rel), out, opts).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let f = EtsFile::open(out).unwrap_or_else(|e| panic!("{rel}: open: {e}"));
    f.verify_checksums()
        .unwrap_or_else(|e| panic!("{rel}: checksums: {e}"));
    (report, f)
}

fn reference(name: &str) -> SourceTensor {
    tiny_weight(name).unwrap_or_else(|| panic!("{name} is not a generator weight"))
}

fn round(dtype: Dtype, v: f32) -> f32 {
    match dtype {
        Dtype::F32 => v,
        Dtype::F16 => half::f16::from_f32(v).to_f32(),
        Dtype::Bf16 => half::bf16::from_f32(v).to_f32(),
    }
}

/// Every tensor equals the generator's weight, rounded to `dtype` for matrices (vectors stay
/// f32); the file has exactly the generator's tensors.
fn assert_exact(rel: &str, f: &EtsFile, dtype: Dtype) {
    let cfg = tiny_config();
    let mut count = 0;
    for t in f.tensors() {
        let want = reference(t.name);
        let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
        assert_eq!(shape, want.shape, "{rel}: {} shape", t.name);
        assert!(
            matches!(t.data, TensorData::Dense { .. }),
            "{rel}: {} not dense",
            t.name
        );
        let d = if want.shape.len() == 1 {
            Dtype::F32
        } else {
            dtype
        };
        assert_eq!(t.dtype, d, "{rel}: {} dtype", t.name);
        let got = t.to_dense_f32();
        for (i, (g, w)) in got.iter().zip(&want.data).enumerate() {
            assert_eq!(
                g.to_bits(),
                round(d, *w).to_bits(),
                "{rel}: {}[{i}]: {g} vs {w}",
                t.name
            );
        }
        count += 1;
    }
    assert_eq!(
        count,
        5 + 16 * cfg.num_layers as usize,
        "{rel}: tensor count"
    );
    assert_eq!(f.model(), &expected_model(rel), "{rel}: model config");
}

fn expected_model(rel: &str) -> ets::format::ModelConfig {
    let mut cfg = tiny_config();
    if rel.contains("gemm-tanh") {
        cfg.activation = ets::format::Activation::GeluTanh;
    }
    cfg
}

#[test]
fn dense_f32_reproduces_every_generator_weight() {
    let dir = tempfile::tempdir().expect("dir");
    for (i, rel) in SOURCES.iter().enumerate() {
        let out = dir.path().join(format!("{i}.ets"));
        let (report, f) = run(rel, &out, &options(Method::None, 0.0, [16, 16], Dtype::F32));
        assert_exact(rel, &f, Dtype::F32);
        assert!(report.tensors.iter().all(|t| t.density == 1.0));
        assert_eq!(
            report.output_bytes,
            std::fs::metadata(&out).expect("meta").len()
        );
        // Provenance names the source and its digest.
        let bytes = std::fs::read(source(rel)).expect("read source");
        let digest: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let p = &f.header().provenance;
        assert_eq!(p.source_sha256, digest, "{rel}");
        assert_eq!(
            Some(p.source_name.as_str()),
            Path::new(rel).file_name().and_then(|n| n.to_str())
        );
        // The tokenizer beside the model is embedded byte for byte.
        let vocab = std::fs::read(source(rel).with_file_name("vocab.txt")).expect("vocab");
        let s = f
            .section(names::TOKENIZER_SECTION)
            .expect("tokenizer section");
        assert_eq!(s.entry.format.as_deref(), Some("vocab.txt"), "{rel}");
        assert_eq!(s.bytes, &vocab[..], "{rel}");
        assert!(report.tokenizer);
    }
}

#[test]
fn half_dtypes_equal_the_rounded_weights() {
    let dir = tempfile::tempdir().expect("dir");
    for dtype in [Dtype::F16, Dtype::Bf16] {
        for (i, rel) in SOURCES.iter().enumerate() {
            let out = dir.path().join(format!("{}-{i}.ets", dtype.name()));
            let (_, f) = run(rel, &out, &options(Method::None, 0.0, [16, 16], dtype));
            assert_exact(rel, &f, dtype);
        }
    }
}

fn sq(v: f32) -> f64 {
    f64::from(v) * f64::from(v)
}

/// Checks one tile-encoded weight against its reference: kept tiles hold the (rounded) source
/// values, dropped ones are zero, the count is within one tile of the target, and every kept
/// tile's norm is at least every dropped tile's norm (of its block row when `balanced`).
/// Returns kept tiles per block row.
fn check_tile_weight(
    what: &str,
    t: &ets::format::TensorView<'_>,
    src: &SourceTensor,
    sparsity: f64,
    balanced: bool,
) -> Vec<usize> {
    let TensorData::Tile(tv) = t.data else {
        panic!("{what}: expected tiles, got {:?}", t.encoding)
    };
    let (rows, cols) = (src.shape[0], src.shape[1]);
    let (th, tw, gc) = (tv.tile_rows, tv.tile_cols, tv.grid_cols);
    let n = tv.grid_rows * gc;
    let kept_mask: Vec<bool> = (0..n)
        .map(|i| tv.bitmap[i / 64] >> (i % 64) & 1 == 1)
        .collect();
    let kept = kept_mask.iter().filter(|&&k| k).count();
    // The unit is one tile of the grid, or for tile-balanced one tile of each block row.
    let per_row: Vec<usize> = kept_mask
        .chunks(gc)
        .map(|r| r.iter().filter(|&&k| k).count())
        .collect();
    let (got, units) = if balanced {
        (per_row[0], gc)
    } else {
        (kept, n)
    };
    let target = units as f64 * (1.0 - sparsity);
    assert!(
        got >= 1 && (got as f64 - target).abs() <= 1.0,
        "{what}: kept {got} of {units}, target {target}"
    );
    let mut norms = vec![0f64; n];
    for (i, &v) in src.data.iter().enumerate() {
        norms[(i / cols / th) * gc + (i % cols) / tw] += sq(v);
    }
    // Tile-balanced ranks inside each block row, tile ranks over the whole grid.
    let groups: Vec<std::ops::Range<usize>> = if balanced {
        (0..tv.grid_rows).map(|br| br * gc..(br + 1) * gc).collect()
    } else {
        std::iter::once(0..n).collect()
    };
    for g in groups {
        let lo = g
            .clone()
            .filter(|&i| kept_mask[i])
            .map(|i| norms[i])
            .fold(f64::INFINITY, f64::min);
        let hi = g
            .clone()
            .filter(|&i| !kept_mask[i])
            .map(|i| norms[i])
            .fold(0.0, f64::max);
        assert!(
            lo >= hi * (1.0 - 1e-12),
            "{what}: tiles {g:?}: kept norm {lo} < dropped norm {hi}"
        );
    }
    let dense = t.to_dense_f32();
    for (i, (&g, &w)) in dense.iter().zip(&src.data).enumerate() {
        let (r, c) = (i / cols, i % cols);
        let want = if kept_mask[(r / th) * gc + c / tw] {
            round(t.dtype, w)
        } else {
            0.0
        };
        assert_eq!(g.to_bits(), want.to_bits(), "{what}: ({r}, {c})");
    }
    assert_eq!(dense.len(), rows * cols);
    per_row
}

#[test]
fn tile_pruning_keeps_the_density_rule_on_every_source() {
    let dir = tempfile::tempdir().expect("dir");
    for (i, rel) in SOURCES.iter().enumerate() {
        for (j, (method, dtype)) in [
            (Method::Tile, Dtype::F32),
            (Method::TileBalanced, Dtype::F16),
        ]
        .into_iter()
        .enumerate()
        {
            let out = dir.path().join(format!("{i}-{j}.ets"));
            let (report, f) = run(rel, &out, &options(method, 0.8, [8, 8], dtype));
            let mut linear = 0;
            for t in f.tensors() {
                let src = reference(t.name);
                let what = format!("{rel} {}: {}", method.name(), t.name);
                if Role::of_name(t.name).is_some() {
                    let per_row =
                        check_tile_weight(&what, &t, &src, 0.8, method == Method::TileBalanced);
                    if method == Method::TileBalanced {
                        assert!(
                            per_row.iter().all(|&c| c == per_row[0]),
                            "{what}: {per_row:?}"
                        );
                    }
                    linear += 1;
                } else {
                    // Embeddings, LayerNorms and biases stay dense and exact (rounded).
                    let d = if src.shape.len() == 1 {
                        Dtype::F32
                    } else {
                        dtype
                    };
                    let want: Vec<u32> = src.data.iter().map(|&v| round(d, v).to_bits()).collect();
                    let got: Vec<u32> = t.to_dense_f32().iter().map(|v| v.to_bits()).collect();
                    assert_eq!(got, want, "{what}");
                }
            }
            assert_eq!(linear, 6 * 2, "{rel}");
            assert_eq!(report.tensors.len(), linear);
            // The recipe recorded in the file says what was asked and what each weight got.
            let recipe = &f.header().recipe;
            assert_eq!(recipe["method"], method.name(), "{rel}");
            assert_eq!(recipe["dtype"], dtype.name(), "{rel}");
            let results = recipe["results"].as_object().expect("results");
            assert_eq!(results.len(), linear);
            for r in &report.tensors {
                let d = f.tensor(&r.name).expect("tensor").density();
                assert!(
                    (r.density - d).abs() < 1e-12,
                    "{}: report {} file {d}",
                    r.name,
                    r.density
                );
                assert_eq!(results[&r.name]["density"].as_f64(), Some(r.density));
            }
        }
    }
}

#[test]
fn every_method_writes_a_valid_file_with_the_expected_encodings() {
    let dir = tempfile::tempdir().expect("dir");
    let rel = SOURCES[0];
    for method in Method::ALL {
        let out = dir.path().join(format!("{}.ets", method.name()));
        let (_, f) = run(rel, &out, &options(method, 0.5, [8, 8], Dtype::F16));
        for t in f.tensors() {
            let Some((_, role)) = Role::of_name(t.name) else {
                assert_eq!(
                    t.encoding.short_name(),
                    "dense",
                    "{}: {}",
                    method.name(),
                    t.name
                );
                continue;
            };
            let want = match (method, role) {
                (Method::None | Method::Heads | Method::Existing, _) => "dense",
                (Method::Tile | Method::TileBalanced | Method::TileGrouped, _) => "tile",
                (Method::AttentionAware, Role::Value) => "rows",
                (Method::AttentionAware, _) => "tile",
                (Method::Rows, _) => "rows",
                (Method::Cols, _) => "cols",
                (Method::Irregular, _) => "tile+elements",
            };
            assert_eq!(
                t.encoding.short_name(),
                want,
                "{}: {}",
                method.name(),
                t.name
            );
            let density = t.density();
            let expect = if want == "dense" { 1.0 } else { 0.5 };
            let (rows, cols) = t.matrix_dims();
            let unit = match want {
                "rows" => 1.0 / rows as f64,
                "cols" => 1.0 / cols as f64,
                "tile+elements" => 1.0 / (rows * cols) as f64,
                "tile" => 64.0 / (rows * cols) as f64,
                _ => 0.0,
            };
            if want == "tile+elements" {
                let TensorData::Tile(tv) = t.data else {
                    panic!("tiles")
                };
                let stored = tv.values.len() as f64 / 2.0 / (rows * cols) as f64;
                assert!(
                    (stored - expect).abs() <= unit + 1e-12,
                    "{}: {stored}",
                    t.name
                );
            } else {
                assert!(
                    (density - expect).abs() <= unit + 1e-12,
                    "{}: {}: {density}",
                    method.name(),
                    t.name
                );
            }
        }
    }
}

/// Head pruning keeps whole heads (the independently ranked best ones), slices Q, K, V rows,
/// their biases and O columns, and records the kept count per layer.
#[test]
fn heads_keeps_whole_heads_and_updates_the_config() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = tiny_config();
    let (h, hd, hidden) = (
        cfg.num_heads as usize,
        cfg.head_dim as usize,
        cfg.hidden_size as usize,
    );
    for (i, rel) in [SOURCES[0], SOURCES[1]].iter().enumerate() {
        let out = dir.path().join(format!("{i}.ets"));
        let (report, f) = run(
            rel,
            &out,
            &options(Method::Heads, 0.5, [16, 16], Dtype::F32),
        );
        assert_eq!(
            f.model().heads_per_layer,
            vec![2; cfg.num_layers as usize],
            "{rel}"
        );
        assert_eq!(report.model.heads_per_layer, f.model().heads_per_layer);
        for layer in 0..cfg.num_layers as usize {
            let w = |t: names::LayerTensor| reference(&t.name(layer));
            use names::LayerTensor as L;
            let (q, k, v, o) = (
                w(L::QueryWeight),
                w(L::KeyWeight),
                w(L::ValueWeight),
                w(L::OutputWeight),
            );
            let score = |head: usize| -> f64 {
                let rows: f64 = [&q, &k, &v]
                    .iter()
                    .map(|m| {
                        m.data[head * hd * hidden..(head + 1) * hd * hidden]
                            .iter()
                            .map(|&x| sq(x))
                            .sum::<f64>()
                    })
                    .sum();
                let ocols: f64 = o
                    .data
                    .chunks(h * hd)
                    .map(|r| {
                        r[head * hd..(head + 1) * hd]
                            .iter()
                            .map(|&x| sq(x))
                            .sum::<f64>()
                    })
                    .sum();
                rows + ocols
            };
            let mut order: Vec<usize> = (0..h).collect();
            order.sort_by(|&a, &b| score(b).total_cmp(&score(a)));
            let mut kept = order[..2].to_vec();
            kept.sort_unstable();
            for (t, src) in [
                (L::QueryWeight, &q),
                (L::KeyWeight, &k),
                (L::ValueWeight, &v),
            ] {
                let got = f.tensor(&t.name(layer)).expect("tensor");
                assert_eq!(got.shape, &[(2 * hd) as u64, hidden as u64]);
                let want: Vec<f32> = kept
                    .iter()
                    .flat_map(|&x| src.data[x * hd * hidden..(x + 1) * hd * hidden].to_vec())
                    .collect();
                assert_eq!(got.to_dense_f32(), want, "{rel}: {}", t.name(layer));
            }
            for t in [L::QueryBias, L::KeyBias, L::ValueBias] {
                let src = w(t);
                let want: Vec<f32> = kept
                    .iter()
                    .flat_map(|&x| src.data[x * hd..(x + 1) * hd].to_vec())
                    .collect();
                assert_eq!(
                    f.tensor(&t.name(layer)).expect("bias").to_dense_f32(),
                    want,
                    "{rel}"
                );
            }
            let got = f.tensor(&L::OutputWeight.name(layer)).expect("o");
            assert_eq!(got.shape, &[hidden as u64, (2 * hd) as u64]);
            let want: Vec<f32> = o
                .data
                .chunks(h * hd)
                .flat_map(|r| {
                    kept.iter()
                        .flat_map(move |&x| r[x * hd..(x + 1) * hd].to_vec())
                })
                .collect();
            assert_eq!(got.to_dense_f32(), want, "{rel}: output weight");
            // Everything else of the layer is untouched.
            for t in [
                L::OutputBias,
                L::IntermediateWeight,
                L::FfnOutputWeight,
                L::FfnLnWeight,
            ] {
                assert_eq!(
                    f.tensor(&t.name(layer)).expect("t").to_dense_f32(),
                    w(t).data
                );
            }
        }
    }
}

#[test]
fn converting_twice_gives_identical_bytes() {
    let dir = tempfile::tempdir().expect("dir");
    for (i, rel) in SOURCES.iter().enumerate() {
        let opts = options(Method::TileBalanced, 0.7, [8, 16], Dtype::F16);
        let a = dir.path().join(format!("{i}-a.ets"));
        let b = dir.path().join(format!("{i}-b.ets"));
        run(rel, &a, &opts);
        run(rel, &b, &opts);
        let (x, y) = (std::fs::read(&a).expect("a"), std::fs::read(&b).expect("b"));
        assert!(x == y, "{rel}: two conversions differ");
    }
}

#[test]
fn existing_output_is_refused_without_overwrite() {
    let dir = tempfile::tempdir().expect("dir");
    let out = dir.path().join("x.ets");
    std::fs::write(&out, b"keep me").expect("write");
    let opts = options(Method::None, 0.0, [16, 16], Dtype::F32);
    assert!(convert(&source(SOURCES[0]), &out, &opts).is_err());
    assert_eq!(std::fs::read(&out).expect("read"), b"keep me");
    let opts = ConvertOptions {
        overwrite: true,
        ..opts
    };
    run(SOURCES[0], &out, &opts);
}
