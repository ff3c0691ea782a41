//! Hostile inputs: each ends in a typed error with a clear message, or a safe result.
//!
//! Links out of the model's folder, device nodes as outputs, absurd configuration values, weights
//! beyond the f16 range, interrupted conversions, broken tokenizers, endless inputs, huge graphs,
//! repeated ONNX initializers, a NaN threshold and output names near the file-name limit.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ets::convert::{convert, ConvertError, ConvertOptions};
use ets::format::{Dtype, EtsFile};
use ets::ingest::{open_source, IngestError, IngestOptions, SourceTensor};
use ets::prune::Recipe;
use ets_testkit::{models, sources};

fn et_convert(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_et-convert"));
    for a in args {
        cmd.arg(a);
    }
    cmd.output().expect("run et-convert")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn open_err(p: &Path, opts: &IngestOptions) -> IngestError {
    match open_source(p, opts) {
        Ok(_) => panic!("{} opened but should have failed", p.display()),
        Err(e) => e,
    }
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn dense_opts() -> ConvertOptions {
    ConvertOptions::new(Recipe::default(), Dtype::F16)
}

#[cfg(unix)]
#[test]
fn tokenizer_link_out_of_the_model_folder_is_refused() {
    for name in ["tokenizer.json", "vocab.txt"] {
        let dir = tempfile::tempdir().unwrap();
        let p = sources::write_safetensors(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join("vocab.txt")).unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let secret = elsewhere.path().join("secret.txt");
        std::fs::write(&secret, "[CLS]\n[SEP]\n[UNK]\nprivate\n").unwrap();
        std::os::unix::fs::symlink(&secret, dir.path().join(name)).unwrap();
        let e = open_err(&p, &IngestOptions::default());
        assert!(matches!(e, IngestError::UnsafeFile { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("outside the model's folder") && msg.contains("--tokenizer"),
            "{msg}"
        );
        // A link inside the folder is a regular file inside the folder: accepted.
        std::fs::remove_file(dir.path().join(name)).unwrap();
        std::fs::write(dir.path().join("real.txt"), sources::vocab_txt(40)).unwrap();
        std::os::unix::fs::symlink("real.txt", dir.path().join("vocab.txt")).unwrap();
        let s = open_source(&p, &IngestOptions::default()).unwrap();
        assert_eq!(s.tokenizer().unwrap().format, "vocab.txt");
    }
}

#[cfg(unix)]
#[test]
fn device_node_outputs_are_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let p = sources::write_safetensors(dir.path()).unwrap();
    let before = listing(dir.path());
    let o = et_convert(&[&p, &"/dev/null", &"--force"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("not a regular file"), "{}", stderr(&o));
    let meta = std::fs::metadata("/dev/null").unwrap();
    assert!(!meta.is_file(), "/dev/null was replaced");
    assert_eq!(listing(dir.path()), before);
    // A folder as the output: the same refusal through the library.
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let mut opts = dense_opts();
    opts.overwrite = true;
    let e = convert(&p, &sub, &opts).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
    assert!(sub.is_dir());
}

#[test]
fn absurd_layer_counts_fail_fast_with_a_short_message() {
    for layers in [1_000_000_000u64, 100_000] {
        let dir = tempfile::tempdir().unwrap();
        let p = sources::write_safetensors(dir.path()).unwrap();
        let cfg = dir.path().join("config.json");
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
        v["num_hidden_layers"] = layers.into();
        std::fs::write(&cfg, v.to_string()).unwrap();
        let e = open_err(&p, &IngestOptions::default());
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("num_hidden_layers is {layers}"))
                && msg.contains("the weights hold 2"),
            "{msg}"
        );
        assert!(msg.len() < 400, "{} bytes: {msg}", msg.len());
    }
}

#[test]
fn long_problem_lists_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let p = sources::write_safetensors(dir.path()).unwrap();
    let cfg = dir.path().join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    // Every layer tensor of both layers now has the wrong shape: far more than the cap.
    v["intermediate_size"] = 48.into();
    v["hidden_size"] = 64.into();
    std::fs::write(&cfg, v.to_string()).unwrap();
    let IngestError::Shapes { problems, .. } = open_err(&p, &IngestOptions::default()) else {
        panic!("expected Shapes")
    };
    assert_eq!(
        problems.len(),
        ets::ingest::MAX_PROBLEMS + 1,
        "{problems:#?}"
    );
    assert!(
        problems.last().unwrap().starts_with("... and "),
        "{problems:#?}"
    );
}

#[test]
fn weights_beyond_f16_are_refused_by_name_and_bf16_works() {
    let dir = tempfile::tempdir().unwrap();
    let tensors: Vec<(String, SourceTensor)> = sources::tiny_weights()
        .into_iter()
        .map(|(n, mut t)| {
            if n == "layers.1.ffn.intermediate.weight" {
                t.data[5] = 70_000.0;
            }
            (sources::hf_name(&n, "bert.", false), t)
        })
        .collect();
    let p = dir.path().join("model.safetensors");
    sources::write_safetensors_tensors(&p, &tensors, safetensors::Dtype::F32).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        sources::hf_config_json(&sources::tiny_config()),
    )
    .unwrap();
    let out = dir.path().join("out.ets");
    let e = convert(&p, &out, &dense_opts()).unwrap_err();
    assert!(matches!(e, ConvertError::F16Overflow { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("layers.1.ffn.intermediate.weight") && msg.contains("--dtype bf16"),
        "{msg}"
    );
    assert!(!out.exists());
    convert(
        &p,
        &out,
        &ConvertOptions::new(Recipe::default(), Dtype::Bf16),
    )
    .unwrap();
    let f = EtsFile::open(&out).unwrap();
    let w = f.tensor("layers.1.ffn.intermediate.weight").unwrap();
    assert!(w.to_dense_f32().iter().all(|v| v.is_finite()));
}

/// A source big enough that calibrated pruning runs for a while (its temporaries exist meanwhile).
fn mid_size_safetensors(dir: &Path) -> PathBuf {
    let cfg = models::config(4, 256, vec![8; 4], 32, 1024, 2000, 128);
    let tensors: Vec<(String, SourceTensor)> = models::random_weights(&cfg, 5)
        .into_iter()
        .map(|(n, shape, data)| {
            (
                sources::hf_name(&n, "bert.", false),
                SourceTensor { shape, data },
            )
        })
        .collect();
    let p = dir.join("model.safetensors");
    sources::write_safetensors_tensors(&p, &tensors, safetensors::Dtype::F32).unwrap();
    std::fs::write(dir.join("config.json"), sources::hf_config_json(&cfg)).unwrap();
    std::fs::write(dir.join("vocab.txt"), sources::vocab_txt(2000)).unwrap();
    p
}

#[cfg(unix)]
#[test]
fn interrupted_conversion_leaves_no_temporary_files() {
    let dir = tempfile::tempdir().unwrap();
    let p = mid_size_safetensors(dir.path());
    let out_dir = tempfile::tempdir().unwrap();
    let sentences = out_dir.path().join("s.txt");
    let text: String = (0..400)
        .map(|i| format!("a b c w{} w{}\n", i % 50, i % 7))
        .collect();
    std::fs::write(&sentences, text).unwrap();
    let out = out_dir.path().join("out.ets");
    let mut child = Command::new(env!("CARGO_BIN_EXE_et-convert"))
        .arg(&p)
        .arg(&out)
        .args(["--sparsity", "0.5", "--calibrate"])
        .arg(&sentences)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let temporaries = |d: &Path| {
        listing(d)
            .into_iter()
            .filter(|n| n.starts_with('.'))
            .count()
    };
    while temporaries(out_dir.path()) == 0 {
        assert!(
            start.elapsed().as_secs() < 60,
            "no temporary file appeared within 60 s"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the conversion ended before a temporary file was seen"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert_eq!(listing(out_dir.path()), vec!["s.txt".to_string()]);
}

#[test]
fn broken_tokenizer_fails_at_conversion() {
    let dir = tempfile::tempdir().unwrap();
    let p = sources::write_safetensors(dir.path()).unwrap();
    let bad = dir.path().join("bad-tokenizer.json");
    std::fs::write(&bad, b"{\"model\": {\"type\": \"Nonsense\"}}").unwrap();
    let opts = IngestOptions {
        tokenizer: Some(bad.clone()),
        ..IngestOptions::default()
    };
    let e = open_err(&p, &opts);
    assert!(matches!(e, IngestError::Tokenizer { .. }), "{e}");
    assert!(e.to_string().contains("bad-tokenizer.json"), "{e}");
    // A vocabulary without [CLS] found beside the model: the same.
    std::fs::write(dir.path().join("vocab.txt"), "a\nb\n").unwrap();
    let e = open_err(&p, &IngestOptions::default());
    assert!(matches!(e, IngestError::Tokenizer { .. }), "{e}");
}

#[cfg(unix)]
#[test]
fn endless_inputs_stop_at_their_limits() {
    let dir = tempfile::tempdir().unwrap();
    let p = sources::write_safetensors(dir.path()).unwrap();
    let out = dir.path().join("out.ets");
    // A recipe is part of the command (exit 2 for a bad one); the others are inputs (exit 1).
    for (flag, status) in [("--tokenizer", 1), ("--recipe", 2), ("--calibrate", 1)] {
        let o = et_convert(&[&p, &out, &flag, &"/dev/zero"]);
        assert_eq!(o.status.code(), Some(status), "{flag}: {}", stderr(&o));
        assert!(stderr(&o).contains("limit of"), "{flag}: {}", stderr(&o));
        assert!(!out.exists());
    }
}

/// Protobuf bytes: a length-delimited field.
fn field(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let mut n = body.len();
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    }
    out.extend_from_slice(body);
    out
}

/// A model with opset 17 around `graph`.
fn onnx_model(graph: &[u8]) -> Vec<u8> {
    let mut m = field(0x3a, graph);
    m.extend(field(0x42, &[0x10, 17]));
    m
}

#[test]
fn huge_graphs_are_refused_before_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("huge.onnx");
    let nodes: Vec<u8> = std::iter::repeat([0x0a, 0x00])
        .take(100_001)
        .flatten()
        .collect();
    std::fs::write(&p, onnx_model(&nodes)).unwrap();
    let e = open_err(&p, &IngestOptions::default());
    assert!(
        matches!(e, IngestError::OnnxDecode { .. }) && e.to_string().contains("100001 nodes"),
        "{e}"
    );
}

#[test]
fn repeated_initializer_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("dup.onnx");
    let init = field(0x2a, &field(0x42, b"weight"));
    let graph = [init.clone(), init].concat();
    std::fs::write(&p, onnx_model(&graph)).unwrap();
    let e = open_err(&p, &IngestOptions::default());
    assert!(
        matches!(e, IngestError::OnnxDecode { .. })
            && e.to_string().contains("\"weight\" appears more than once"),
        "{e}"
    );
}

#[test]
fn nan_min_cosine_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = sources::write_safetensors(dir.path()).unwrap();
    let out = dir.path().join("out.ets");
    for v in ["NaN", "inf", "1.5"] {
        let o = et_convert(&[&p, &out, &"--calibrate", &p, &"--min-cosine", &v]);
        assert_eq!(o.status.code(), Some(2), "{v}: {}", stderr(&o));
        assert!(stderr(&o).contains("not a cosine"), "{v}: {}", stderr(&o));
    }
}

#[test]
fn output_names_near_the_limit_convert() {
    let dir = tempfile::tempdir().unwrap();
    let p = sources::write_safetensors(dir.path()).unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("m".repeat(251) + ".ets");
    convert(&p, &out, &dense_opts()).unwrap();
    EtsFile::open(&out).unwrap();
    assert_eq!(listing(out_dir.path()).len(), 1);
}
