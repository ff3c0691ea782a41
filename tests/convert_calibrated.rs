//! Calibrated pruning of whole rows, columns and heads on a small synthetic model whose hidden
//! states are deliberately uneven (a few loud features, read by small weights): calibration must
//! bring the pruned model closer to the dense one than weight-norm pruning at the same sparsity,
//! on sentences it was not calibrated on, give the same bytes twice, and be recorded in the recipe.

use std::path::{Path, PathBuf};

use ets::convert::calibrate::compare;
use ets::convert::{convert, ConvertOptions};
use ets::format::{Dtype, EtsFile};
use ets::ingest::SourceTensor;
use ets::prune::{Method, Recipe};
use ets_testkit::rng::Rng;
use ets_testkit::sources::{hf_config_json, hf_name, tiny_config, tiny_weights, vocab_txt};

/// Hidden features made loud by every LayerNorm's gain.
const LOUD: usize = 3;

/// The tiny model with its LayerNorm gains raised on the first [`LOUD`] features and the weights
/// that read the hidden state (Q, K, V, FFN input) scaled down on them: the layer outputs stay in
/// range while the weight norms misjudge what matters.
fn write_uneven_model(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).expect("dir");
    let cfg = tiny_config();
    let hidden = cfg.hidden_size as usize;
    let tensors: Vec<(String, SourceTensor)> = tiny_weights()
        .into_iter()
        .map(|(name, mut t)| {
            if name.ends_with("layer_norm.weight") {
                t.data.iter_mut().take(LOUD).for_each(|v| *v *= 6.0);
            }
            let reads_hidden = [
                "query.weight",
                "key.weight",
                "value.weight",
                "intermediate.weight",
            ]
            .iter()
            .any(|s| name.ends_with(s));
            if reads_hidden {
                for row in t.data.chunks_mut(hidden) {
                    row.iter_mut().take(LOUD).for_each(|v| *v *= 0.15);
                }
            }
            (hf_name(&name, "bert.", false), t)
        })
        .collect();
    let path = dir.join("model.safetensors");
    ets_testkit::sources::write_safetensors_tensors(&path, &tensors, safetensors::Dtype::F32)
        .expect("safetensors");
    std::fs::write(dir.join("config.json"), hf_config_json(&cfg)).expect("config");
    std::fs::write(dir.join("vocab.txt"), vocab_txt(cfg.vocab_size as usize)).expect("vocab");
    path
}

/// `count` seeded sentences of the model's vocabulary words.
fn sentences(seed: &str, count: usize) -> Vec<String> {
    let mut rng = Rng::for_name(seed);
    (0..count)
        .map(|_| {
            let len = 4 + (rng.symmetric(1.0).abs() * 12.0) as usize;
            (0..len)
                .map(|_| format!("w{}", (rng.symmetric(1.0).abs() * 40.0) as usize))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn options(method: Method, sparsity: f64) -> ConvertOptions {
    let recipe = Recipe {
        method,
        sparsity,
        ..Recipe::default()
    };
    ConvertOptions::new(recipe, Dtype::F32)
}

#[test]
fn calibrated_rows_cols_and_heads_beat_weight_norm() {
    let dir = tempfile::tempdir().expect("dir");
    let input = write_uneven_model(&dir.path().join("model"));
    let calib = dir.path().join("calib.txt");
    std::fs::write(&calib, sentences("calibration", 96).join("\n") + "\n").expect("write");
    let held_out = sentences("held out", 40);
    let dense = dir.path().join("dense.ets");
    convert(&input, &dense, &options(Method::None, 0.0)).expect("dense");
    for method in [Method::Rows, Method::Cols, Method::Heads] {
        let name = method.name();
        let plain = dir.path().join(format!("{name}-plain.ets"));
        convert(&input, &plain, &options(method, 0.5)).expect("plain");
        let mut opts = options(method, 0.5);
        opts.calibrate = Some(calib.clone());
        opts.calibrate_limit = 1000;
        let cal = dir.path().join(format!("{name}-cal.ets"));
        let report = convert(&input, &cal, &opts).expect("calibrated");
        let again = dir.path().join(format!("{name}-again.ets"));
        convert(&input, &again, &opts).expect("calibrated again");
        assert_eq!(
            std::fs::read(&cal).expect("cal"),
            std::fs::read(&again).expect("again"),
            "{name}: two calibrated runs differ"
        );
        let c_plain = compare(&dense, &plain, "held out", &held_out).expect("compare");
        let c_cal = compare(&dense, &cal, "held out", &held_out).expect("compare");
        eprintln!(
            "{name} at 50%: held-out cosine weight norm {:.4}, calibrated {:.4}",
            c_plain.output_cosine, c_cal.output_cosine
        );
        assert!(
            1.0 - c_cal.output_cosine < 0.8 * (1.0 - c_plain.output_cosine),
            "{name}: calibrated {:.5} vs weight norm {:.5}",
            c_cal.output_cosine,
            c_plain.output_cosine
        );
        // The recipe records the calibrated procedure and how many weights it fitted.
        let f = EtsFile::open(&cal).expect("open");
        f.verify_checksums().expect("checksums");
        let pruning = &f.header().recipe["calibration"]["pruning"];
        let fitted = match method {
            Method::Heads => 2,
            _ => 12,
        };
        assert_eq!(pruning["weights"], fitted, "{name}: {pruning}");
        let described = pruning["method"].as_str().unwrap_or_default();
        let unit = match method {
            Method::Rows => "rows ranked",
            Method::Cols => "greedy column removal",
            _ => "greedy head removal",
        };
        assert!(described.starts_with(unit), "{name}: {described}");
        let cal_report = report.calibration.expect("calibration report");
        assert!(cal_report.output_cosine.is_finite());
        // Half of each weight's rows or columns, or half the heads, remain.
        for t in &report.tensors {
            let want = if method == Method::Heads { 1.0 } else { 0.5 };
            assert!((t.density - want).abs() < 1e-9, "{}: {}", t.name, t.density);
        }
        if method == Method::Heads {
            assert_eq!(report.model.heads_per_layer, vec![2, 2]);
        }
    }
}

#[test]
fn min_cosine_and_allocation_rules_hold_for_rows_and_heads() {
    let dir = tempfile::tempdir().expect("dir");
    let input = write_uneven_model(&dir.path().join("model"));
    let calib = dir.path().join("calib.txt");
    std::fs::write(&calib, sentences("calibration", 8).join("\n") + "\n").expect("write");
    let mut opts = options(Method::Heads, 0.5);
    opts.calibrate = Some(calib);
    opts.calibrate_limit = 8;
    opts.allocate = ets::convert::Allocate::Sensitivity;
    let out = dir.path().join("heads.ets");
    let e = convert(&input, &out, &opts).expect_err("heads with sensitivity allocation");
    assert!(e.to_string().contains("--allocate uniform"), "{e}");
    assert!(!out.exists());
    // Calibrated rows: a cosine bar above what half the rows keep refuses the result.
    let mut opts = options(Method::Rows, 0.5);
    opts.calibrate = Some(dir.path().join("calib.txt"));
    opts.calibrate_limit = 8;
    opts.min_cosine = Some(0.999_999);
    let out = dir.path().join("rows.ets");
    let e = convert(&input, &out, &opts).expect_err("rows below --min-cosine");
    assert!(e.to_string().contains("--min-cosine"), "{e}");
    assert!(!out.exists());
}

#[test]
fn plain_command_calibrates_heads_without_allocation() {
    let dir = tempfile::tempdir().expect("dir");
    let input = write_uneven_model(&dir.path().join("model"));
    let calib = dir.path().join("calib.txt");
    std::fs::write(&calib, sentences("calibration", 8).join("\n") + "\n").expect("write");
    let out = dir.path().join("heads.ets");
    // With calibration data the default allocation is sensitivity, except for head pruning.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_et-convert"))
        .arg(&input)
        .arg(&out)
        .args(["--method", "heads", "--sparsity", "0.5", "--calibrate"])
        .arg(&calib)
        .output()
        .expect("run et-convert");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        stdout.contains("calibrated pruning of 2 weights: greedy head removal"),
        "{stdout}"
    );
    assert!(!stdout.contains("sensitivity allocation"), "{stdout}");
    let f = EtsFile::open(&out).expect("open");
    assert_eq!(f.header().model.heads_per_layer, vec![2, 2]);
}

#[test]
fn attention_aware_calibrates_value_rows_per_head() {
    let dir = tempfile::tempdir().expect("dir");
    let input = write_uneven_model(&dir.path().join("model"));
    let calib = dir.path().join("calib.txt");
    std::fs::write(&calib, sentences("calibration", 16).join("\n") + "\n").expect("write");
    let mut opts = options(Method::AttentionAware, 0.5);
    opts.calibrate = Some(calib);
    opts.calibrate_limit = 16;
    opts.recipe.tile = [8, 8];
    let out = dir.path().join("aa.ets");
    let report = convert(&input, &out, &opts).expect("attention-aware");
    let pruning = report
        .calibration
        .and_then(|c| c.pruning)
        .expect("calibrated pruning");
    // Every weight is fitted: tiles for Q, K, O and the FFN, rows for V.
    assert_eq!(pruning.weights, 12);
    assert!(pruning.method.contains("tile"), "{}", pruning.method);
    assert!(pruning.method.contains("rows ranked"), "{}", pruning.method);
    let f = EtsFile::open(&out).expect("open");
    for layer in 0..2 {
        let v = f
            .tensor(&format!("layers.{layer}.attention.value.weight"))
            .expect("value");
        let ets::format::TensorData::Rows { indices, .. } = v.data else {
            panic!("value of layer {layer} is not rows: {:?}", v.encoding);
        };
        // Half of each head's 8 rows.
        for h in 0..4u32 {
            let n = indices.iter().filter(|&&r| r / 8 == h).count();
            assert_eq!(n, 4, "layer {layer} head {h}");
        }
    }
}
