//! The CPU runtime on models read by the ingest readers (ONNX and the synthetic fixtures),
//! against onnxruntime goldens in fixtures/golden/. The real ONNX models are an ignored test (they
//! need models/); the committed synthetic fixtures are checked on every run.

mod common;

use std::path::Path;

use common::*;
use ets::format::{Dtype, EncodedTensor, EtsFile};
use ets::ingest::{open_source, IngestOptions};
use ets::runtime::cpu::CpuEncoder;
use ets::runtime::{Encoder, Pooling, TokenBatch, TokenSequence};
use ets_testkit::models;

/// Converts `model` to a dense f32 `.ets` and returns the smallest mean and CLS cosines.
fn check(model: &Path, golden_name: &str) -> (f64, f64) {
    let src = open_source(model, &IngestOptions::default()).unwrap();
    let cfg = src.config().clone();
    let tensors: Vec<(String, EncodedTensor)> = src
        .tensor_names()
        .into_iter()
        .map(|n| {
            let t = src.load(&n).unwrap();
            let shape = t.shape.iter().map(|&d| d as u64).collect();
            (n, EncodedTensor::dense(shape, Dtype::F32, &t.data).unwrap())
        })
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("m.ets");
    models::write_ets(&p, &cfg, &tensors, None).unwrap();
    let f = EtsFile::open(&p).unwrap();
    let enc = CpuEncoder::new(&f).unwrap();
    let g = golden(golden_name);
    let batch = TokenBatch {
        sequences: g
            .ids
            .iter()
            .zip(&g.type_ids)
            .map(|(i, t)| TokenSequence {
                ids: i.clone(),
                type_ids: t.clone(),
            })
            .collect(),
    };
    let out = enc.forward(&batch).unwrap();
    assert!(out.last_hidden.iter().all(|v| v.is_finite()));
    let cm = min_row_cosine(&out.pool(Pooling::Mean), &g.mean, g.hidden);
    let cc = min_row_cosine(&out.pool(Pooling::Cls), &g.cls, g.hidden);
    eprintln!(
        "{golden_name}: min cosine mean {cm:.9}, cls {cc:.9} over {} sequences",
        g.ids.len()
    );
    (cm, cc)
}

#[test]
#[ignore = "needs the real models (scripts/fetch_models.sh)"]
fn onnx_models_match_onnxruntime() {
    for (rel, name) in [
        (
            "paraphrase-minilm-l3-v2/model.onnx",
            "paraphrase-minilm-l3-v2",
        ),
        ("minilm-int8/model.onnx", "minilm-int8"),
        ("maskseq/maskseq.onnx", "maskseq"),
    ] {
        let path = real_model(rel);
        let (cm, cc) = check(&path, name);
        assert!(cm >= 0.99999 && cc >= 0.99999, "{name}: cosines {cm} {cc}");
    }
}

#[test]
fn synthetic_fixtures_match_their_references() {
    let dir = root().join("fixtures/sources");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut checked = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let golden_dir = root().join("fixtures/golden").join(format!("synth-{name}"));
        assert!(
            golden_dir.exists(),
            "{name}: no golden in {} (run scripts/golden.py)",
            golden_dir.display()
        );
        let model = ["model.onnx", "model.safetensors"]
            .iter()
            .map(|m| e.path().join(m))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{name}: neither model.onnx nor model.safetensors"));
        let (cm, cc) = check(&model, &format!("synth-{name}"));
        assert!(cm >= 0.99999 && cc >= 0.99999, "{name}: cosines {cm} {cc}");
        checked += 1;
    }
    assert_eq!(checked, 5, "the five synthetic source fixtures");
}
