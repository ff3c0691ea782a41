//! Bad inputs: each must fail with its own `IngestError` variant, naming what is wrong.

use std::path::{Path, PathBuf};

use ets::ingest::{open_source, IngestError, IngestOptions};
use ets_testkit::sources::{self, OnnxStyle};

fn open_err(p: &Path) -> IngestError {
    match open_source(p, &IngestOptions::default()) {
        Ok(_) => panic!("{} opened but should have failed", p.display()),
        Err(e) => e,
    }
}

fn truncate(p: &Path, keep: usize) {
    let bytes = std::fs::read(p).unwrap();
    std::fs::write(p, &bytes[..keep.min(bytes.len())]).unwrap();
}

fn replace_bytes(p: &Path, from: &str, to: &str) {
    assert_eq!(from.len(), to.len(), "same length keeps the protobuf valid");
    let mut bytes = std::fs::read(p).unwrap();
    let n = from.len();
    let mut hits = 0;
    for i in 0..bytes.len().saturating_sub(n) {
        if &bytes[i..i + n] == from.as_bytes() {
            bytes[i..i + n].copy_from_slice(to.as_bytes());
            hits += 1;
        }
    }
    assert!(hits > 0, "{from} not found");
    std::fs::write(p, bytes).unwrap();
}

fn safetensors_fixture() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = sources::write_safetensors(dir.path()).unwrap();
    (dir, p)
}

fn edit_config(dir: &Path, key: &str, value: serde_json::Value) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    match value {
        serde_json::Value::Null => {
            v.as_object_mut().unwrap().remove(key);
        }
        x => v[key] = x,
    }
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn truncated_safetensors() {
    let (_d, p) = safetensors_fixture();
    let len = std::fs::metadata(&p).unwrap().len() as usize;
    truncate(&p, len - 100);
    assert!(matches!(open_err(&p), IngestError::Safetensors { .. }));
    truncate(&p, 4);
    assert!(matches!(open_err(&p), IngestError::Safetensors { .. }));
}

#[test]
fn truncated_onnx() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.onnx");
    sources::write_onnx(&p, OnnxStyle::Inline).unwrap();
    let len = std::fs::metadata(&p).unwrap().len() as usize;
    truncate(&p, len / 2 + 3);
    let e = open_err(&p);
    assert!(matches!(e, IngestError::OnnxDecode { .. }), "{e}");
}

#[test]
fn wrong_config_lists_every_problem() {
    let (d, p) = safetensors_fixture();
    edit_config(d.path(), "intermediate_size", 48.into());
    let IngestError::Shapes { problems, .. } = open_err(&p) else {
        panic!("expected Shapes")
    };
    // Per layer: intermediate weight, intermediate bias, FFN output weight.
    assert_eq!(problems.len(), 6, "{problems:#?}");
    assert!(problems
        .iter()
        .any(|l| l.contains("layers.1.ffn.output.weight") && l.contains("[32, 48]")));

    let (d, p) = safetensors_fixture();
    edit_config(d.path(), "num_hidden_layers", 1.into());
    let IngestError::Config { reason, .. } = open_err(&p) else {
        panic!("expected Config")
    };
    assert!(
        reason.contains("num_hidden_layers is 1 but the weights hold 2"),
        "{reason}"
    );

    let (d, p) = safetensors_fixture();
    edit_config(d.path(), "hidden_size", serde_json::Value::Null);
    edit_config(d.path(), "vocab_size", (-3).into());
    let IngestError::Config { reason, .. } = open_err(&p) else {
        panic!("expected Config")
    };
    assert!(
        reason.contains("hidden_size") && reason.contains("vocab_size"),
        "{reason}"
    );

    let (d, p) = safetensors_fixture();
    std::fs::remove_file(d.path().join("config.json")).unwrap();
    assert!(matches!(open_err(&p), IngestError::MissingConfig { .. }));
}

#[test]
fn missing_and_misshapen_tensors_reported_together() {
    let dir = tempfile::tempdir().unwrap();
    let mut w: Vec<(String, ets::ingest::SourceTensor)> = sources::tiny_weights()
        .into_iter()
        .filter(|(n, _)| n != "layers.0.attention.key.bias")
        .map(|(n, t)| (sources::hf_name(&n, "bert.", false), t))
        .collect();
    let wrong = w
        .iter_mut()
        .find(|(n, _)| n.ends_with("layer.1.attention.self.value.weight"))
        .unwrap();
    wrong.1.shape = vec![16, 64];
    let p = dir.path().join("model.safetensors");
    sources::write_safetensors_tensors(&p, &w, safetensors::Dtype::F32).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        sources::hf_config_json(&sources::tiny_config()),
    )
    .unwrap();
    let IngestError::Shapes { problems, .. } = open_err(&p) else {
        panic!("expected Shapes")
    };
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(problems
        .iter()
        .any(|l| l.contains("layers.0.attention.key.bias") && l.contains("missing")));
    assert!(problems
        .iter()
        .any(|l| l.contains("layers.1.attention.value.weight") && l.contains("[16, 64]")));
}

#[test]
fn non_bert_and_unsupported_onnx() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("toy.onnx");
    sources::write_toy_onnx(&p, &["Relu", "Softmax"], 17).unwrap();
    let e = open_err(&p);
    assert!(matches!(e, IngestError::NotBert { .. }), "{e}");

    sources::write_toy_onnx(&p, &["Conv", "LSTM", "Conv", "Relu"], 17).unwrap();
    let IngestError::UnsupportedOps { ops, .. } = open_err(&p) else {
        panic!("expected UnsupportedOps")
    };
    assert_eq!(ops.len(), 2, "{ops:?}");
    assert!(
        ops[0].starts_with("Conv x 2") && ops[1].starts_with("LSTM x 1"),
        "{ops:?}"
    );

    for opset in [9, 22] {
        sources::write_toy_onnx(&p, &["Relu"], opset).unwrap();
        let e = open_err(&p);
        assert!(
            matches!(e, IngestError::UnsupportedOpset { opset: o, .. } if o == opset),
            "{e}"
        );
    }
}

#[test]
fn external_data_missing_or_escaping() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("model.onnx");
    sources::write_onnx(&p, OnnxStyle::External).unwrap();
    // Same length as "model.data", so the protobuf stays valid.
    for (loc, why) in [
        ("../el.data", "leaves"),
        ("/tmp/a.dat", "absolute"),
        ("other.data", "not found"),
    ] {
        let q = dir.path().join("edited.onnx");
        std::fs::copy(&p, &q).unwrap();
        replace_bytes(&q, "model.data", loc);
        match open_err(&q) {
            IngestError::ExternalData {
                location,
                reason,
                tensor,
                ..
            } => {
                assert_eq!(location, loc);
                assert!(reason.contains(why), "{reason}");
                assert!(!tensor.is_empty());
            }
            e => panic!("expected ExternalData for {loc}, got {e}"),
        }
    }
    std::fs::remove_file(dir.path().join("model.data")).unwrap();
    assert!(matches!(open_err(&p), IngestError::ExternalData { .. }));
}

#[test]
fn unknown_format() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("weights.bin");
    std::fs::write(&p, [0xffu8; 64]).unwrap();
    assert!(matches!(open_err(&p), IngestError::UnknownFormat { .. }));
    let e = open_err(&dir.path().join("absent.onnx"));
    assert!(matches!(e, IngestError::Io { .. }), "{e}");
}
