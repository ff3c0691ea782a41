//! The `et-run` command line: outputs, exit codes and messages, on a tiny random model.

mod common;

use std::process::Command;

use ets::format::{Dtype, EncodedTensor};
use ets::runtime::cpu::npy;
use ets_testkit::models;

fn tiny_model(dir: &std::path::Path, with_tokenizer: bool) -> std::path::PathBuf {
    let cfg = models::config(2, 32, vec![4, 2], 8, 64, 40, 16);
    let weights = models::random_weights(&cfg, 11);
    let tensors: Vec<_> = weights
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                EncodedTensor::dense(s.iter().map(|&x| x as u64).collect(), Dtype::F32, d).unwrap(),
            )
        })
        .collect();
    let vocab: String = [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "movie",
    ]
    .iter()
    .map(|t| format!("{t}\n"))
    .collect();
    let p = dir.join(if with_tokenizer {
        "tiny.ets"
    } else {
        "notok.ets"
    });
    let tok = with_tokenizer.then_some(("vocab.txt", vocab.as_bytes()));
    models::write_ets(&p, &cfg, &tensors, tok).unwrap();
    p
}

fn et_run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_et-run"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn json_lines_npy_and_hidden() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tiny_model(tmp.path(), true);
    let m = m.to_str().unwrap();
    let (code, out, err) = et_run(&[m, "--text", "good movie", "--text", "bad"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["index"], 1);
    assert_eq!(lines[0]["embedding"].as_array().unwrap().len(), 32);

    // TSV input with the SST-2 header, CLS pooling, .npy output, batch size 1.
    let tsv = tmp.path().join("in.tsv");
    std::fs::write(&tsv, "text\tlabel\ngood movie \t1\nbad\t0\n").unwrap();
    let npy_path = tmp.path().join("out.npy");
    let (code, _, err) = et_run(&[
        m,
        "--input",
        tsv.to_str().unwrap(),
        "--pooling",
        "cls",
        "--batch-size",
        "1",
        "--npy",
        npy_path.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let (shape, data) = npy::read(&npy_path).unwrap();
    assert_eq!(shape, vec![2, 32]);
    assert!(data.iter().all(|v| v.is_finite()));
    // The same sentences as --text with CLS pooling give the same numbers.
    let (_, out, _) = et_run(&[
        m,
        "--text",
        "good movie",
        "--text",
        "bad",
        "--pooling",
        "cls",
    ]);
    let first: Vec<f32> = serde_json::from_str::<serde_json::Value>(out.lines().next().unwrap())
        .unwrap()["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert!(common::max_rel_diff(&first, &data[..32]) < 1e-6);

    // Token-level hidden states: [CLS] good movie [SEP] = 4 rows.
    let (code, out, _) = et_run(&[m, "--text", "good movie", "--hidden"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(v["tokens"], 4);
    assert_eq!(v["hidden"].as_array().unwrap().len(), 4);
}

#[test]
fn exit_codes_and_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tiny_model(tmp.path(), true);
    let m = m.to_str().unwrap();
    // Usage errors: 2.
    assert_eq!(et_run(&[]).0, 2);
    assert_eq!(et_run(&[m, "--pooling", "max", "--text", "a"]).0, 2);
    assert_eq!(et_run(&[m, "--batch-size", "0", "--text", "a"]).0, 2);
    // Bad input: 1, with a message.
    let (code, _, err) = et_run(&[m]);
    assert_eq!(code, 1);
    assert!(err.contains("no input"), "{err}");
    let (code, _, err) = et_run(&["/nonexistent/model.ets", "--text", "a"]);
    assert_eq!(code, 1);
    assert_eq!(err.matches("model.ets").count(), 1, "the path once: {err}");
    let notok = tiny_model(tmp.path(), false);
    let (code, _, err) = et_run(&[notok.to_str().unwrap(), "--text", "a"]);
    assert_eq!(code, 1);
    assert!(err.contains("no embedded tokenizer"), "{err}");
    let (code, _, err) = et_run(&[m, "--text", "a", "--device", "cuda"]);
    if code != 0 {
        assert_eq!(code, 1);
        assert!(err.contains("CUDA runtime not available"), "{err}");
    }
    let (code, _, err) = et_run(&[m, "--text", "a", "--device", "auto"]);
    assert_eq!(code, 0, "{err}");
    // Too long for 16 positions: truncated with a warning, still exit 0.
    let long = vec!["good"; 40].join(" ");
    let (code, out, err) = et_run(&[m, "--text", &long]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning") && err.contains("truncated"),
        "{err}"
    );
    assert_eq!(out.lines().count(), 1);
}

#[test]
fn normalize_gives_unit_vectors_in_the_same_direction() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tiny_model(tmp.path(), true);
    let m = m.to_str().unwrap();
    let vector = |out: &str| -> Vec<f64> {
        serde_json::from_str::<serde_json::Value>(out.lines().next().unwrap()).unwrap()["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    let (code, raw, err) = et_run(&[m, "--text", "good movie"]);
    assert_eq!(code, 0, "{err}");
    let (code, unit, err) = et_run(&[m, "--text", "good movie", "--normalize", "--report"]);
    assert_eq!(code, 0, "{err}");
    // On the CPU, --report gives the time by phase and says that the per-weight table
    // describes the CUDA runtime.
    assert!(err.contains("--report describes the CUDA runtime"), "{err}");
    for phase in ["time by phase", "tokenize", "encode", "write"] {
        assert!(err.contains(phase), "{phase}: {err}");
    }
    assert!(err.contains("start-up not in that time"), "{err}");
    assert!(
        !err.contains("encode by phase"),
        "the CPU keeps no pass times: {err}"
    );
    let (raw, unit) = (vector(&raw), vector(&unit));
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!((norm(&unit) - 1.0).abs() < 1e-5, "norm {}", norm(&unit));
    assert!(norm(&raw) > 0.0);
    for (a, b) in raw.iter().zip(&unit) {
        assert!((a / norm(&raw) - b).abs() < 1e-5, "{a} vs {b}");
    }
}
