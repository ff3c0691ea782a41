//! Synthetic fixtures read back through `open_source`: every canonical tensor must equal the
//! generator's weights bit for bit, for safetensors and for every ONNX export style.

use std::path::Path;

use ets::format::Activation;
use ets::ingest::{open_source, IngestOptions, ModelSource, SourceTensor};
use ets_testkit::sources::{self, OnnxStyle};
use sha2::{Digest, Sha256};

fn open(p: &Path) -> Box<dyn ModelSource + Send + Sync> {
    match open_source(p, &IngestOptions::default()) {
        Ok(s) => s,
        Err(e) => panic!("{}: {e}", p.display()),
    }
}

fn assert_bit_exact(src: &dyn ModelSource, reference: &[(String, SourceTensor)], what: &str) {
    let names: Vec<String> = reference.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(
        src.tensor_names(),
        names,
        "{what}: canonical names and order"
    );
    for (name, want) in reference {
        let got = src
            .load(name)
            .unwrap_or_else(|e| panic!("{what}: {name}: {e}"));
        assert_eq!(got.shape, want.shape, "{what}: {name} shape");
        assert!(
            got.data.iter().all(|x| x.is_finite()),
            "{what}: {name} has non-finite values"
        );
        let same = got
            .data
            .iter()
            .zip(&want.data)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(
            same && got.data.len() == want.data.len(),
            "{what}: {name} differs from the generator"
        );
    }
}

fn sha_hex(p: &Path) -> String {
    let bytes = std::fs::read(p).unwrap();
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn dump(dir: &Path) {
    // Lets a person (or a golden-output script) run the fixtures with onnxruntime.
    if let Ok(out) = std::env::var("ETS_SYNTH_DUMP") {
        let out = Path::new(&out);
        std::fs::create_dir_all(out).unwrap();
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), out.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn safetensors_fixture_round_trips_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let path = sources::write_safetensors(dir.path()).unwrap();
    let src = open(&path);
    assert_eq!(src.config(), &sources::tiny_config());
    assert_bit_exact(src.as_ref(), &sources::tiny_weights(), "safetensors");
    let prov = src.provenance();
    assert_eq!(prov.source_name, "model.safetensors");
    assert_eq!(prov.source_sha256, sha_hex(&path));
    assert!(prov.converter.starts_with("ets "));
    let tok = src.tokenizer().expect("vocab.txt beside the model");
    assert_eq!(tok.format, "vocab.txt");
    assert_eq!(
        tok.bytes,
        std::fs::read(dir.path().join("vocab.txt")).unwrap()
    );
    dump(dir.path());
}

#[test]
fn safetensors_old_names_no_prefix_and_half_precision() {
    let cfg = sources::tiny_config();
    for (dtype, prefix, old) in [
        (safetensors::Dtype::F32, "", true),
        (safetensors::Dtype::F16, "bert.", true),
        (safetensors::Dtype::BF16, "", false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let w = sources::tiny_weights();
        let renamed: Vec<(String, SourceTensor)> = w
            .iter()
            .map(|(n, t)| (sources::hf_name(n, prefix, old), t.clone()))
            .collect();
        let path = dir.path().join("weights.safetensors");
        sources::write_safetensors_tensors(&path, &renamed, dtype).unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            sources::hf_config_json(&cfg),
        )
        .unwrap();
        // The reference: the generator's values rounded to the stored type by `half`.
        let rounded: Vec<(String, SourceTensor)> = w
            .into_iter()
            .map(|(n, mut t)| {
                for x in &mut t.data {
                    *x = match dtype {
                        safetensors::Dtype::F16 => half::f16::from_f32(*x).to_f32(),
                        safetensors::Dtype::BF16 => half::bf16::from_f32(*x).to_f32(),
                        _ => *x,
                    };
                }
                (n, t)
            })
            .collect();
        let src = open(&path);
        assert_bit_exact(
            src.as_ref(),
            &rounded,
            &format!("{dtype:?} prefix={prefix:?} old={old}"),
        );
        assert!(src.tokenizer().is_none());
    }
}

#[test]
fn classifier_head_sets_num_labels() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = sources::tiny_config();
    let mut w: Vec<(String, SourceTensor)> = sources::tiny_weights()
        .into_iter()
        .map(|(n, t)| (sources::hf_name(&n, "bert.", false), t))
        .collect();
    let h = cfg.hidden_size as usize;
    let pooler_w = SourceTensor {
        shape: vec![h, h],
        data: (0..h * h).map(|i| (i % 7) as f32 * 0.01).collect(),
    };
    let pooler_b = SourceTensor {
        shape: vec![h],
        data: vec![0.1; h],
    };
    let cls_w = SourceTensor {
        shape: vec![3, h],
        data: (0..3 * h).map(|i| i as f32 * 0.001).collect(),
    };
    let cls_b = SourceTensor {
        shape: vec![3],
        data: vec![0.5, -0.5, 0.25],
    };
    w.push(("bert.pooler.dense.weight".into(), pooler_w.clone()));
    w.push(("bert.pooler.dense.bias".into(), pooler_b));
    w.push(("classifier.weight".into(), cls_w.clone()));
    w.push(("classifier.bias".into(), cls_b.clone()));
    let path = dir.path().join("model.safetensors");
    sources::write_safetensors_tensors(&path, &w, safetensors::Dtype::F32).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        sources::hf_config_json(&cfg),
    )
    .unwrap();
    let src = open(&path);
    assert_eq!(src.config().num_labels, Some(3));
    let names = src.tensor_names();
    let tail: Vec<&str> = names
        .iter()
        .rev()
        .take(4)
        .rev()
        .map(String::as_str)
        .collect();
    assert_eq!(
        tail,
        [
            "pooler.dense.weight",
            "pooler.dense.bias",
            "classifier.weight",
            "classifier.bias"
        ]
    );
    assert_eq!(src.load("classifier.weight").unwrap(), cls_w);
    assert_eq!(src.load("classifier.bias").unwrap(), cls_b);
    assert_eq!(src.load("pooler.dense.weight").unwrap(), pooler_w);
}

#[test]
fn every_onnx_style_round_trips_bit_exact() {
    let reference = sources::tiny_weights();
    for style in OnnxStyle::ALL {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.onnx");
        sources::write_onnx(&path, style).unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size < 400_000, "{style:?}: fixture is {size} bytes");
        if style == OnnxStyle::External {
            assert!(dir.path().join("model.data").is_file());
            assert!(
                size < 20_000,
                "external style keeps weights out of the .onnx"
            );
        }
        let src = open(&path);
        let mut want = sources::tiny_config();
        if style == OnnxStyle::GemmTanh {
            want.activation = Activation::GeluTanh;
        }
        assert_eq!(src.config(), &want, "{style:?}");
        assert_bit_exact(src.as_ref(), &reference, &format!("{style:?}"));
        assert_eq!(src.provenance().source_sha256, sha_hex(&path));
        std::fs::rename(
            &path,
            dir.path()
                .join(format!("tiny_{style:?}.onnx").to_lowercase()),
        )
        .unwrap();
        dump(dir.path());
    }
}

#[test]
fn onnx_tokenizer_from_options() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.onnx");
    sources::write_onnx(&path, OnnxStyle::Inline).unwrap();
    assert!(open(&path).tokenizer().is_none());
    let vocab = dir.path().join("other_vocab.txt");
    std::fs::write(&vocab, sources::vocab_txt(100)).unwrap();
    let opts = IngestOptions {
        config: None,
        tokenizer: Some(vocab.clone()),
    };
    let src = open_source(&path, &opts).unwrap();
    let tok = src.tokenizer().unwrap();
    assert_eq!(
        (tok.format.as_str(), tok.bytes),
        ("vocab.txt", std::fs::read(&vocab).unwrap())
    );
}
