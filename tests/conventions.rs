//! Hugging Face and sentence-transformers conventions: model folders (single file, shards, ONNX,
//! pickles only), unsupported model types, sentence-transformers settings recorded at conversion
//! and used by `et-run`, files without a tokenizer, and `et-run`'s text inputs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use ets::convert::{convert, ConvertOptions};
use ets::format::{Dtype, EmbeddingConfig, EtsFile};
use ets::ingest::{open_source, IngestError, IngestOptions, SourceTensor};
use ets::prune::Recipe;
use ets_testkit::sources::{self, OnnxStyle};

fn run(bin: &str, args: &[&dyn AsRef<std::ffi::OsStr>], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(bin);
    for a in args {
        cmd.arg(a);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("wait")
}

fn et_convert(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    run(env!("CARGO_BIN_EXE_et-convert"), args, None)
}

fn et_run(args: &[&dyn AsRef<std::ffi::OsStr>], stdin: Option<&str>) -> Output {
    run(env!("CARGO_BIN_EXE_et-run"), args, stdin)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn opts() -> ConvertOptions {
    ConvertOptions::new(Recipe::default(), Dtype::F32)
}

/// Every tensor of two files, densified, is equal.
fn same_tensors(a: &Path, b: &Path) {
    let (a, b) = (EtsFile::open(a).unwrap(), EtsFile::open(b).unwrap());
    let names: Vec<String> = a.tensors().map(|t| t.name.to_string()).collect();
    assert!(!names.is_empty());
    for n in names {
        let x = a.tensor(&n).unwrap().to_dense_f32();
        let y = b.tensor(&n).unwrap().to_dense_f32();
        assert!(x == y, "{n} differs");
    }
}

/// Embeddings from et-run's JSON lines.
fn embeddings(out: &Output) -> Vec<Vec<f32>> {
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

fn norm(v: &[f32]) -> f64 {
    v.iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt()
}

#[test]
fn hugging_face_folder_converts_like_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = sources::write_safetensors(dir.path()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let (a, b) = (out.path().join("a.ets"), out.path().join("b.ets"));
    convert(&file, &a, &opts()).unwrap();
    let o = et_convert(&[&dir.path(), &b, &"--dtype", &"f32"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    same_tensors(&a, &b);
    assert!(EtsFile::open(&b).unwrap().section("tokenizer").is_some());
}

#[test]
fn sharded_safetensors_folder_converts_like_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let single = tempfile::tempdir().unwrap();
    let file = sources::write_safetensors(single.path()).unwrap();
    let tensors: Vec<(String, SourceTensor)> = sources::tiny_weights()
        .into_iter()
        .map(|(n, t)| (sources::hf_name(&n, "bert.", false), t))
        .collect();
    let (first, second) = tensors.split_at(tensors.len() / 2);
    let mut map = serde_json::Map::new();
    for (i, part) in [first, second].iter().enumerate() {
        let name = format!("model-0000{}-of-00002.safetensors", i + 1);
        let p = dir.path().join(&name);
        sources::write_safetensors_tensors(&p, part, safetensors::Dtype::F32).unwrap();
        for (n, _) in part.iter() {
            map.insert(n.clone(), name.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    for f in ["config.json", "vocab.txt"] {
        std::fs::copy(single.path().join(f), dir.path().join(f)).unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let (a, b) = (out.path().join("a.ets"), out.path().join("b.ets"));
    convert(&file, &a, &opts()).unwrap();
    convert(dir.path(), &b, &opts()).unwrap();
    same_tensors(&a, &b);

    // A shard named with a path is refused.
    map.insert(
        "bert.pooler.dense.bias".into(),
        "../elsewhere.safetensors".into(),
    );
    let index = serde_json::json!({"weight_map": map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let e = convert(dir.path(), &out.path().join("c.ets"), &opts()).unwrap_err();
    assert!(e.to_string().contains("not a file name"), "{e}");
}

#[test]
fn pickle_only_folder_says_convert_to_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pytorch_model.bin"), b"PK\x03\x04").unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        sources::hf_config_json(&sources::tiny_config()),
    )
    .unwrap();
    let e = open_source(dir.path(), &IngestOptions::default())
        .err()
        .expect("a pickle-only folder fails");
    assert!(matches!(e, IngestError::PickleOnly { .. }), "{e}");
    assert!(
        e.to_string().contains("Convert to safetensors first"),
        "{e}"
    );
    let empty = tempfile::tempdir().unwrap();
    let e = open_source(empty.path(), &IngestOptions::default())
        .err()
        .expect("an empty folder fails");
    assert!(matches!(e, IngestError::NoModelInFolder { .. }), "{e}");
}

#[test]
fn onnx_folder_takes_the_tokenizer_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("onnx")).unwrap();
    sources::write_onnx(&dir.path().join("onnx/model.onnx"), OnnxStyle::Inline).unwrap();
    std::fs::write(dir.path().join("vocab.txt"), sources::vocab_txt(100)).unwrap();
    let s = open_source(dir.path(), &IngestOptions::default()).unwrap();
    assert_eq!(s.tokenizer().unwrap().format, "vocab.txt");
}

#[test]
fn unsupported_model_type_is_one_line_before_missing_keys() {
    let dir = tempfile::tempdir().unwrap();
    let p = sources::write_safetensors(dir.path()).unwrap();
    let cfg = serde_json::json!({"model_type": "gpt2", "n_layer": 12, "n_embd": 768});
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let out = dir.path().join("out.ets");
    let o = et_convert(&[&p, &out, &"--quiet"]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("model_type \"gpt2\"") && err.contains("supported: BERT"),
        "{err}"
    );
}

/// A sentence-transformers folder around the tiny safetensors model.
fn sentence_transformers_folder(dir: &Path, pooling: &str, max_len: u32) -> PathBuf {
    sources::write_safetensors(dir).unwrap();
    let modules = serde_json::json!([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
    ]);
    std::fs::write(dir.join("modules.json"), modules.to_string()).unwrap();
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    let pool = serde_json::json!({
        "word_embedding_dimension": 32,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": false,
        "pooling_mode_mean_sqrt_len_tokens": false
    });
    std::fs::write(dir.join("1_Pooling/config.json"), pool.to_string()).unwrap();
    let sb = serde_json::json!({"max_seq_length": max_len, "do_lower_case": false});
    std::fs::write(dir.join("sentence_bert_config.json"), sb.to_string()).unwrap();
    dir.to_path_buf()
}

#[test]
fn sentence_transformers_settings_are_recorded_and_used() {
    let dir = tempfile::tempdir().unwrap();
    let folder = sentence_transformers_folder(dir.path(), "cls", 6);
    let out = tempfile::tempdir().unwrap();
    let m = out.path().join("st.ets");
    let report = convert(&folder, &m, &opts()).unwrap();
    let expected = EmbeddingConfig {
        pooling: Some("cls".into()),
        normalize: Some(true),
        max_length: Some(6),
    };
    assert_eq!(report.embedding.as_ref(), Some(&expected));
    let f = EtsFile::open(&m).unwrap();
    assert_eq!(f.minor_version(), 1);
    assert_eq!(f.header().embedding.as_ref(), Some(&expected));

    let long = "a b c d e f g h i j";
    let by_default = et_run(&[&m, &"--text", &long, &"--text", &"a"], None);
    assert!(
        text(&by_default.stderr).contains("truncated to 6"),
        "{}",
        text(&by_default.stderr)
    );
    let e = embeddings(&by_default);
    for v in &e {
        assert!((norm(v) - 1.0).abs() < 1e-5, "{}", norm(v));
    }
    // The recorded settings are the same as the flags spelled out.
    let spelled = embeddings(&et_run(
        &[
            &m,
            &"--text",
            &long,
            &"--text",
            &"a",
            &"--pooling",
            &"cls",
            &"--normalize",
            &"--max-length",
            &"6",
        ],
        None,
    ));
    assert_eq!(e, spelled);
    // Overrides: no normalization, another length, another pooling.
    let raw = embeddings(&et_run(&[&m, &"--text", &"a", &"--no-normalize"], None));
    assert!((norm(&raw[0]) - 1.0).abs() > 1e-3);
    let scaled: Vec<f32> = raw[0]
        .iter()
        .map(|&x| (f64::from(x) / norm(&raw[0])) as f32)
        .collect();
    let diff = scaled
        .iter()
        .zip(&e[1])
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-5, "{diff}");
    let longer = embeddings(&et_run(
        &[&m, &"--text", &long, &"--max-length", &"32"],
        None,
    ));
    assert_ne!(longer[0], e[0]);
    let mean = embeddings(&et_run(&[&m, &"--text", &"a", &"--pooling", &"mean"], None));
    assert_ne!(mean[0], e[1]);
    let o = et_run(&[&m, &"--text", &"a", &"--max-length", &"33"], None);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("1 to 32"), "{}", text(&o.stderr));
}

#[test]
fn unsupported_pooling_is_not_recorded_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let folder = sentence_transformers_folder(dir.path(), "max", 300);
    let pool = serde_json::json!({"pooling_mode_max_tokens": true});
    std::fs::write(folder.join("1_Pooling/config.json"), pool.to_string()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let report = convert(&folder, &out.path().join("m.ets"), &opts()).unwrap();
    let e = report.embedding.unwrap();
    assert_eq!(e.pooling, None);
    assert_eq!(e.max_length, Some(32), "capped by the position table");
    let all = report.warnings.join("\n");
    assert!(all.contains("pooling [\"max\"] is not supported"), "{all}");
    assert!(all.contains("max_seq_length 300"), "{all}");
}

#[test]
fn a_file_without_tokenizer_warns_and_et_run_takes_one() {
    let dir = tempfile::tempdir().unwrap();
    let p = sources::write_safetensors(dir.path()).unwrap();
    let vocab = dir.path().join("kept-vocab.txt");
    std::fs::rename(dir.path().join("vocab.txt"), &vocab).unwrap();
    let out = tempfile::tempdir().unwrap();
    let m = out.path().join("m.ets");
    let o = et_convert(&[&p, &m]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("warning: no tokenizer found"),
        "{}",
        text(&o.stderr)
    );
    let o = et_run(&[&m, &"--text", &"a b"], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("--tokenizer FILE"),
        "{}",
        text(&o.stderr)
    );
    let e = embeddings(&et_run(
        &[&m, &"--text", &"a b", &"--tokenizer", &vocab],
        None,
    ));
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].len(), 32);
}

#[test]
fn et_run_reads_common_tsv_headers_columns_and_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let p = sources::write_safetensors(dir.path()).unwrap();
    let m = dir.path().join("m.ets");
    convert(&p, &m, &opts()).unwrap();
    let plain = embeddings(&et_run(&[&m, &"--text", &"a b", &"--text", &"c"], None));

    let glue = dir.path().join("glue.tsv");
    std::fs::write(&glue, "sentence\tlabel\na b\t1\nc\t0\n").unwrap();
    assert_eq!(embeddings(&et_run(&[&m, &"--input", &glue], None)), plain);

    let pairs = dir.path().join("pairs.tsv");
    std::fs::write(&pairs, "id\tsentence1\tsentence2\n1\tx\ta b\n2\ty\tc\n").unwrap();
    let picked = et_run(&[&m, &"--input", &pairs, &"--column", &"sentence2"], None);
    assert_eq!(embeddings(&picked), plain);
    let o = et_run(&[&m, &"--input", &pairs, &"--column", &"label"], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("no column \"label\""),
        "{}",
        text(&o.stderr)
    );

    let piped = et_run(&[&m, &"--input", &"-"], Some("text\tlabel\na b\t1\nc\t0\n"));
    assert_eq!(embeddings(&piped), plain);
}

#[cfg(unix)]
#[test]
fn et_run_caps_inputs_and_writes_through_devices() {
    let dir = tempfile::tempdir().unwrap();
    let p = sources::write_safetensors(dir.path()).unwrap();
    let m = dir.path().join("m.ets");
    convert(&p, &m, &opts()).unwrap();
    let o = et_run(&[&m, &"--input", &"/dev/zero"], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("limit of"), "{}", text(&o.stderr));
    let o = et_run(
        &[&m, &"--text", &"a", &"--hidden", &"--npy", &"/dev/null"],
        None,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(!std::fs::metadata("/dev/null").unwrap().is_file());
    let before: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(before.len(), 4, "no temporary file left beside the model");
}

#[test]
fn older_sentence_transformers_layout_with_a_transformer_subfolder() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("0_Transformer");
    sources::write_safetensors(&sub).unwrap();
    let modules = serde_json::json!([
        {"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}
    ]);
    std::fs::write(dir.path().join("modules.json"), modules.to_string()).unwrap();
    std::fs::create_dir_all(dir.path().join("1_Pooling")).unwrap();
    let pool = serde_json::json!({"pooling_mode_mean_tokens": true});
    std::fs::write(dir.path().join("1_Pooling/config.json"), pool.to_string()).unwrap();
    let sb = serde_json::json!({"max_seq_length": 16});
    std::fs::write(sub.join("sentence_bert_config.json"), sb.to_string()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let report = convert(dir.path(), &out.path().join("m.ets"), &opts()).unwrap();
    assert!(report.tokenizer);
    let expected = EmbeddingConfig {
        pooling: Some("mean".into()),
        normalize: Some(false),
        max_length: Some(16),
    };
    assert_eq!(report.embedding, Some(expected));

    // A module path that leaves the folder is refused.
    let modules = serde_json::json!([
        {"idx": 0, "name": "0", "path": "../elsewhere", "type": "sentence_transformers.models.Transformer"}
    ]);
    std::fs::write(dir.path().join("modules.json"), modules.to_string()).unwrap();
    let e = convert(dir.path(), &out.path().join("n.ets"), &opts()).unwrap_err();
    assert!(e.to_string().contains("leaves the model's folder"), "{e}");
}
