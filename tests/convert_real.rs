//! The converter on real models from `scripts/fetch_models.sh` (ignored tests: a run that includes
//! them fails when a model is missing). References are the
//! source readers (`ingest::open_source(..).load`), compared bit for bit.

use std::path::{Path, PathBuf};

use ets::convert::{convert, ConvertOptions};
use ets::format::{Dtype, EtsFile, TensorData, TensorView};
use ets::ingest::{open_source, IngestOptions, ModelSource, SourceTensor};
use ets::prune::{Method, Recipe, Role};

mod common;

fn model(rel: &str) -> PathBuf {
    common::real_model(rel)
}

fn options(method: Method, sparsity: f64, dtype: Dtype) -> ConvertOptions {
    let recipe = Recipe {
        method,
        sparsity,
        ..Recipe::default()
    };
    ConvertOptions::new(recipe, dtype)
}

fn load(src: &dyn ModelSource, name: &str) -> SourceTensor {
    src.load(name).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn convert_and_open(input: &Path, out: &Path, opts: &ConvertOptions) -> EtsFile {
    convert(input, out, opts).unwrap_or_else(|e| panic!("{}: {e}", input.display()));
    let f = EtsFile::open(out).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    f.verify_checksums()
        .unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    f
}

/// `--method none --dtype f32` stored `want` bit for bit.
fn check_dense_exact(t: &TensorView<'_>, want: &SourceTensor) {
    let name = t.name;
    let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
    assert_eq!(shape, want.shape, "{name}");
    assert_eq!(t.dtype, Dtype::F32, "{name}");
    assert!(
        matches!(t.data, TensorData::Dense { .. }),
        "{name} not dense"
    );
    let got = t.to_dense_f32();
    let same = got.len() == want.data.len()
        && got
            .iter()
            .zip(&want.data)
            .all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(same, "{name} differs from the source");
}

fn sq(v: f32) -> f64 {
    f64::from(v) * f64::from(v)
}

/// One tile-pruned weight: density within one tile of the target, kept tiles are the
/// highest-norm ones, and (when `values`) kept tiles hold the f16-rounded source values.
fn check_tile_weight(t: &TensorView<'_>, src: &SourceTensor, sparsity: f64, values: bool) {
    let name = t.name;
    let TensorData::Tile(tv) = t.data else {
        panic!("{name}: expected tiles, got {:?}", t.encoding)
    };
    let (cols, th, tw, gc) = (src.shape[1], tv.tile_rows, tv.tile_cols, tv.grid_cols);
    let n = tv.grid_rows * gc;
    let keep: Vec<bool> = (0..n)
        .map(|i| tv.bitmap[i / 64] >> (i % 64) & 1 == 1)
        .collect();
    let kept = keep.iter().filter(|&&k| k).count();
    let target = n as f64 * (1.0 - sparsity);
    assert!(
        kept >= 1 && (kept as f64 - target).abs() <= 1.0,
        "{name}: {kept} of {n} tiles, target {target}"
    );
    let mut norms = vec![0f64; n];
    for (i, &v) in src.data.iter().enumerate() {
        norms[(i / cols / th) * gc + (i % cols) / tw] += sq(v);
    }
    let lo = (0..n)
        .filter(|&i| keep[i])
        .map(|i| norms[i])
        .fold(f64::INFINITY, f64::min);
    let hi = (0..n)
        .filter(|&i| !keep[i])
        .map(|i| norms[i])
        .fold(0.0, f64::max);
    assert!(
        lo >= hi * (1.0 - 1e-12),
        "{name}: kept tile norm {lo} < dropped {hi}"
    );
    if values {
        for (i, (&g, &w)) in t.to_dense_f32().iter().zip(&src.data).enumerate() {
            let want = if keep[(i / cols / th) * gc + (i % cols) / tw] {
                half::f16::from_f32(w).to_f32()
            } else {
                0.0
            };
            assert_eq!(g.to_bits(), want.to_bits(), "{name}[{i}]");
        }
    }
}

/// Converts twice (`--method none --dtype f32`, and `--sparsity 0.8` with the default tiles in f16),
/// then walks the source once: the dense file holds every tensor bit for bit; in the pruned file
/// every linear weight obeys the density and ranking rules (values compared element by element
/// for layer 0) and everything else stays dense.
fn check_model(rel: &str) {
    let input = model(rel);
    let src =
        open_source(&input, &IngestOptions::default()).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let dir = tempfile::tempdir().expect("dir");
    let (dense_path, pruned_path) = (dir.path().join("dense.ets"), dir.path().join("pruned.ets"));
    let dense = convert_and_open(&input, &dense_path, &options(Method::None, 0.0, Dtype::F32));
    let pruned = convert_and_open(
        &input,
        &pruned_path,
        &options(Method::Tile, 0.8, Dtype::F16),
    );
    let names = src.tensor_names();
    let stored: Vec<&str> = dense.tensors().map(|t| t.name).collect();
    assert_eq!(stored, names, "{rel}: tensor set");
    assert_eq!(dense.model(), src.config(), "{rel}");
    assert_eq!(pruned.model(), src.config(), "{rel}");
    let mut linear = 0;
    for name in &names {
        let want = load(&*src, name);
        check_dense_exact(&dense.tensor(name).expect("tensor"), &want);
        let t = pruned.tensor(name).expect("tensor");
        match Role::of_name(name) {
            Some((layer, _)) => {
                check_tile_weight(&t, &want, 0.8, layer == 0);
                linear += 1;
            }
            None => assert!(
                matches!(t.data, TensorData::Dense { .. }),
                "{name} not dense"
            ),
        }
    }
    assert_eq!(linear, 6 * src.config().num_layers as usize, "{rel}");
    let (d, p) = (dense.bytes().len(), pruned.bytes().len());
    assert!(p < d / 2, "{rel}: pruned f16 file {p} bytes, dense f32 {d}");
}

#[test]
#[ignore = "needs the real models (scripts/fetch_models.sh)"]
fn minilm_l6_safetensors() {
    check_model("all-minilm-l6-v2/model.safetensors");
}

#[test]
#[ignore = "needs the real models (scripts/fetch_models.sh)"]
fn paraphrase_minilm_l3_onnx() {
    check_model("paraphrase-minilm-l3-v2/model.onnx");
}

#[test]
#[ignore = "needs the real models (scripts/fetch_models.sh)"]
fn minilm_int8_onnx() {
    check_model("minilm-int8/model.onnx");
}

/// SST-2 (`text<TAB>label` tsv files) from `ETS_SST2_DIR`, else `data/sst2` in the repository.
fn sst2_dir() -> PathBuf {
    std::env::var_os("ETS_SST2_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sst2"))
}

#[test]
#[ignore = "needs the real models (scripts/fetch_models.sh)"]
fn calibrated_tile_pruning_beats_weight_norm() {
    use ets::convert::calibrate::{compare, read_sentences};
    let dir = model("all-minilm-l6-v2");
    let data = sst2_dir();
    let train = data.join("train.tsv");
    assert!(
        train.exists(),
        "{} is missing (set ETS_SST2_DIR)",
        train.display()
    );
    // Held-out sentences: the cosine is measured on dev, calibration comes from train.
    let dev = read_sentences(&data.join("dev.tsv"), 200).expect("dev sentences");
    let input = dir.join("model.safetensors");
    let tmp = tempfile::tempdir().expect("dir");
    let dense = tmp.path().join("dense.ets");
    convert_and_open(&input, &dense, &options(Method::None, 0.0, Dtype::F32));
    let plain = tmp.path().join("plain.ets");
    convert_and_open(&input, &plain, &options(Method::Tile, 0.5, Dtype::F16));
    let calibrated = tmp.path().join("calibrated.ets");
    let mut opts = options(Method::Tile, 0.5, Dtype::F16);
    opts.calibrate = Some(train);
    opts.calibrate_limit = 512;
    convert_and_open(&input, &calibrated, &opts);
    let c_plain = compare(&dense, &plain, "dev", &dev).expect("compare");
    let c_cal = compare(&dense, &calibrated, "dev", &dev).expect("compare");
    eprintln!(
        "dev cosine at 50% 16x16 tiles: weight norm {:.4}, calibrated {:.4}",
        c_plain.output_cosine, c_cal.output_cosine
    );
    assert!(
        c_cal.output_cosine > c_plain.output_cosine + 0.2,
        "calibrated {:.4} vs weight norm {:.4}",
        c_cal.output_cosine,
        c_plain.output_cosine
    );
}
