//! `et-convert` as a user runs it: exit 1 and no output (nor temp files) for bad models, exit 2
//! for usage errors, `--force` semantics, and `--json`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ets::format::EtsFile;
use ets_testkit::sources;

fn et_convert(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_et-convert"));
    for a in args {
        cmd.arg(a);
    }
    cmd.output().expect("run et-convert")
}

fn listing(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

/// Runs et-convert on `input` into `dir/out.ets` and expects exit 1, a message on stderr, no
/// output file, and nothing new in `dir`.
fn expect_failure(dir: &Path, input: &Path, extra: &[&str], what: &str) -> String {
    let before = listing(dir);
    let out = dir.join("out.ets");
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&input, &out];
    for a in extra {
        args.push(a);
    }
    let o = et_convert(&args);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{what}: status {:?}, stderr {stderr}",
        o.status
    );
    assert!(
        stderr.starts_with("et-convert: "),
        "{what}: stderr {stderr:?}"
    );
    assert!(!out.exists(), "{what}: output written");
    assert_eq!(listing(dir), before, "{what}: files left behind");
    stderr
}

fn copy_dir(from: &Path, to: &Path, skip: &[&str]) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        let name = e.file_name();
        if !skip.iter().any(|s| name == std::ffi::OsStr::new(s)) {
            std::fs::copy(e.path(), to.join(&name)).expect("copy");
        }
    }
}

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/sources")
        .join(rel)
}

#[test]
fn truncated_safetensors_fails_cleanly() {
    let dir = tempfile::tempdir().expect("dir");
    copy_dir(&fixture("tiny-safetensors"), dir.path(), &[]);
    let p = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&p).expect("read");
    for keep in [bytes.len() - 100, bytes.len() / 2, 4] {
        std::fs::write(&p, &bytes[..keep]).expect("write");
        let msg = expect_failure(
            dir.path(),
            &p,
            &["--sparsity", "0.5"],
            "truncated safetensors",
        );
        assert!(msg.contains("model.safetensors"), "{msg}");
    }
}

#[test]
fn wrong_config_fails_cleanly() {
    let dir = tempfile::tempdir().expect("dir");
    copy_dir(&fixture("tiny-safetensors"), dir.path(), &[]);
    let cfg_path = dir.path().join("other-config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).expect("read"))
            .expect("json");
    cfg["hidden_size"] = serde_json::json!(48);
    std::fs::write(&cfg_path, cfg.to_string()).expect("write");
    let input = dir.path().join("model.safetensors");
    let c = cfg_path.to_string_lossy().into_owned();
    expect_failure(dir.path(), &input, &["--config", &c], "wrong hidden size");
    // The same model with its own config converts.
    let out = dir.path().join("ok.ets");
    let o = et_convert(&[&input, &out, &"--quiet"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn non_bert_onnx_fails_cleanly() {
    let dir = tempfile::tempdir().expect("dir");
    let p = dir.path().join("toy.onnx");
    sources::write_toy_onnx(&p, &["Relu", "Softmax"], 17).expect("toy");
    expect_failure(dir.path(), &p, &[], "non-BERT graph");
    expect_failure(
        dir.path(),
        &p,
        &["--sparsity", "0.5"],
        "non-BERT graph, pruned",
    );
}

#[test]
fn missing_external_data_fails_cleanly() {
    let dir = tempfile::tempdir().expect("dir");
    copy_dir(&fixture("tiny-onnx-external"), dir.path(), &["model.data"]);
    let p = dir.path().join("model.onnx");
    let msg = expect_failure(dir.path(), &p, &[], "missing external data");
    assert!(msg.contains("model.data"), "{msg}");
    // Present but cut short: the tensors at its end cannot be read.
    let data = std::fs::read(fixture("tiny-onnx-external/model.data")).expect("data");
    std::fs::write(dir.path().join("model.data"), &data[..data.len() - 64]).expect("write");
    let msg = expect_failure(
        dir.path(),
        &p,
        &["--sparsity", "0.5"],
        "short external data",
    );
    assert!(msg.contains("model.data"), "{msg}");
}

/// An external-data location of `../el.data` must be refused even though the file exists there.
#[test]
fn external_data_escaping_the_model_folder_fails_cleanly() {
    let dir = tempfile::tempdir().expect("dir");
    let sub = dir.path().join("model");
    copy_dir(&fixture("tiny-onnx-external"), &sub, &[]);
    std::fs::copy(sub.join("model.data"), dir.path().join("el.data")).expect("copy");
    let p = sub.join("model.onnx");
    let mut bytes = std::fs::read(&p).expect("read");
    // Same length as "model.data", so the protobuf stays valid.
    let (from, to) = (b"model.data", b"../el.data");
    let mut hits = 0;
    for i in 0..bytes.len() - from.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
            hits += 1;
        }
    }
    assert!(hits > 0);
    std::fs::write(&p, bytes).expect("write");
    let before = listing(dir.path());
    expect_failure(&sub, &p, &[], "escaping external data");
    assert_eq!(listing(dir.path()), before);
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().expect("dir");
    let input = fixture("tiny-safetensors/model.safetensors");
    let out = dir.path().join("out.ets");
    let cases: Vec<Vec<&dyn AsRef<std::ffi::OsStr>>> = vec![
        vec![&input, &out, &"--sparsity", &"1.5"],
        vec![&input, &out, &"--sparsity", &"-0.1"],
        vec![&input, &out, &"--sparsity", &"lots"],
        vec![&input, &out, &"--method", &"magic"],
        vec![&input, &out, &"--method", &"tile"], // a method that prunes needs a sparsity
        vec![&input, &out, &"--tile", &"12x16"],
        vec![&input, &out, &"--dtype", &"f64"],
        vec![&input, &out, &"--role-sparsity", &"values=0.5"],
        vec![&input, &out, &"--no-such-flag"],
        vec![&input],
    ];
    for args in cases {
        let o = et_convert(&args);
        let shown: Vec<String> = args
            .iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            o.status.code(),
            Some(2),
            "{shown:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!o.stderr.is_empty(), "{shown:?}: no message");
        assert!(!out.exists(), "{shown:?}: output written");
    }
    assert!(listing(dir.path()).is_empty());
}

#[test]
fn existing_output_needs_force() {
    let dir = tempfile::tempdir().expect("dir");
    let input = fixture("tiny-safetensors/model.safetensors");
    let out = dir.path().join("out.ets");
    std::fs::write(&out, b"not an ets file, keep me").expect("write");
    let o = et_convert(&[&input, &out, &"--sparsity", &"0.5"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        std::fs::read(&out).expect("read"),
        b"not an ets file, keep me"
    );
    assert_eq!(listing(dir.path()).len(), 1, "temp files left");
    let o = et_convert(&[&input, &out, &"--sparsity", &"0.5", &"--force", &"--quiet"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        o.stdout.is_empty(),
        "--quiet printed {:?}",
        String::from_utf8_lossy(&o.stdout)
    );
    let f = EtsFile::open(&out).expect("replaced by a valid file");
    f.verify_checksums().expect("checksums");
    assert_eq!(listing(dir.path()).len(), 1, "temp files left");
}

#[test]
fn json_report_parses() {
    let dir = tempfile::tempdir().expect("dir");
    let input = fixture("tiny-onnx-inline/model.onnx");
    let out = dir.path().join("out.ets");
    let o = et_convert(&[
        &input,
        &out,
        &"--sparsity",
        &"0.75",
        &"--tile",
        &"8x8",
        &"--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("stdout is JSON");
    let tensors = v["tensors"].as_array().expect("tensors array");
    assert_eq!(tensors.len(), 12);
    for t in tensors {
        assert_eq!(t["method"], "tile");
        assert_eq!(t["encoding"], "tile");
        assert_eq!(t["target_sparsity"], 0.75);
        let d = t["density"].as_f64().expect("density");
        assert!(d > 0.0 && d < 0.5, "{t}");
    }
    let len = std::fs::metadata(&out).expect("meta").len();
    assert_eq!(v["output_bytes"].as_u64(), Some(len));
    assert_eq!(v["model"]["num_layers"], 2);
    // Without --json the table is human text, not JSON.
    let out2 = dir.path().join("out2.ets");
    let o = et_convert(&[&input, &out2, &"--sparsity", &"0.75"]);
    assert!(o.status.success());
    assert!(serde_json::from_slice::<serde_json::Value>(&o.stdout).is_err());
    assert!(String::from_utf8_lossy(&o.stdout).contains("layer"));
}

/// et-inspect prints the recipe's per-weight results as a count; `--json` keeps them whole.
#[test]
fn inspect_summarises_per_weight_results() {
    let dir = tempfile::tempdir().expect("dir");
    let out = dir.path().join("out.ets");
    let input = fixture("tiny-onnx-inline/model.onnx");
    let o = et_convert(&[&input, &out, &"--sparsity", &"0.5", &"--quiet"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let inspect = |json: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_et-inspect"));
        cmd.arg(&out);
        if json {
            cmd.arg("--json");
        }
        let o = cmd.output().expect("run et-inspect");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let text = inspect(false);
    let line = text
        .lines()
        .find(|l| l.starts_with("recipe: "))
        .expect("recipe line");
    assert!(line.contains("\"results\":\"<12 entries"), "{line}");
    assert!(line.contains("\"sparsity\":0.5"), "{line}");
    let v: serde_json::Value = serde_json::from_str(&inspect(true)).expect("JSON");
    let results = v["recipe"]["results"].as_object().expect("results object");
    assert_eq!(results.len(), 12);
}

#[test]
fn uncalibrated_structured_pruning_warns() {
    let dir = tempfile::tempdir().expect("dir");
    let input = fixture("tiny-safetensors/model.safetensors");
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&input, &out];
        for a in extra {
            args.push(a);
        }
        let o = et_convert(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let warned = run("a.ets", &["--sparsity", "0.5"]);
    assert!(
        warned.contains("warning") && warned.contains("--calibrate FILE"),
        "{warned}"
    );
    let rows = run("b.ets", &["--method", "rows", "--sparsity", "0.3"]);
    assert!(rows.contains("warning"), "{rows}");
    let override_only = run(
        "c.ets",
        &["--method", "tile", "--role-sparsity", "query=0.4"],
    );
    assert!(override_only.contains("warning"), "{override_only}");
    for (name, extra) in [
        ("d.ets", &["--sparsity", "0.1"][..]),
        ("e.ets", &["--method", "irregular", "--sparsity", "0.5"][..]),
        ("f.ets", &["--sparsity", "0.5", "--quiet"][..]),
    ] {
        let quiet = run(name, extra);
        assert!(!quiet.contains("warning"), "{extra:?}: {quiet}");
    }
}

#[test]
fn calibrated_pruning_is_recorded_and_deterministic() {
    let dir = tempfile::tempdir().expect("dir");
    let input = fixture("tiny-safetensors/model.safetensors");
    let sentences = dir.path().join("calib.tsv");
    std::fs::write(
        &sentences,
        "text\tlabel\nthe movie was great\t1\na dull and lifeless film\t0\n\
         it is a fine piece of work\t1\nnothing happens here\t0\nbrilliant acting all round\t1\n\
         a waste of two hours\t0\n",
    )
    .expect("write");
    let run = |name: &str, extra: &[&str]| -> (PathBuf, String) {
        let out = dir.path().join(name);
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&input, &out];
        for a in extra {
            args.push(a);
        }
        let o = et_convert(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (out, String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let args = [
        "--sparsity",
        "0.5",
        "--tile",
        "8x8",
        "--allocate",
        "uniform",
        "--calibrate",
        sentences.to_str().expect("utf-8 path"),
    ];
    let (a, stderr) = run("a.ets", &args);
    assert!(!stderr.contains("warning"), "{stderr}");
    let (b, _) = run("b.ets", &args);
    assert_eq!(
        std::fs::read(&a).expect("a"),
        std::fs::read(&b).expect("b"),
        "two calibrated runs differ"
    );
    let (plain, _) = run("plain.ets", &["--sparsity", "0.5", "--tile", "8x8"]);
    assert_ne!(
        std::fs::read(&a).expect("a"),
        std::fs::read(&plain).expect("plain"),
        "calibration changed nothing"
    );
    let f = EtsFile::open(&a).expect("open");
    f.verify_checksums().expect("checksums");
    let c = &f.header().recipe["calibration"];
    assert_eq!(c["sentences"], 6, "{c}");
    assert_eq!(c["pruning"]["weights"], 12, "{c}");
    assert_eq!(c["layers"].as_array().map(Vec::len), Some(3), "{c}");
    let cos = c["output_cosine"].as_f64().expect("cosine");
    assert!(cos.is_finite() && cos > 0.0 && cos <= 1.0 + 1e-9, "{c}");
    // Half of the tiles of every weight remain.
    for t in f.header().recipe["tensors"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let d = t["density"].as_f64().unwrap_or(f64::NAN);
        assert!((d - 0.5).abs() < 0.1, "{t}");
    }
}

#[test]
fn sensitivity_allocation_is_the_default_with_calibration() {
    let dir = tempfile::tempdir().expect("dir");
    let input = fixture("tiny-safetensors/model.safetensors");
    let sentences = dir.path().join("calib.txt");
    std::fs::write(
        &sentences,
        "the movie was great\na dull and lifeless film\nit is a fine piece of work\n\
         nothing happens here\nbrilliant acting all round\na waste of two hours\n",
    )
    .expect("write");
    let calib = sentences.to_str().expect("utf-8 path");
    let out = dir.path().join("a.ets");
    let run = |extra: &[&str]| {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&input, &out];
        let base = [
            "--sparsity",
            "0.5",
            "--tile",
            "8x8",
            "--force",
            "--calibrate",
            calib,
        ];
        for a in &base {
            args.push(a);
        }
        for a in extra {
            args.push(a);
        }
        et_convert(&args)
    };
    let o = run(&[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("sensitivity allocation"));
    let f = EtsFile::open(&out).expect("open");
    let recipe = &f.header().recipe;
    let weights = recipe["calibration"]["pruning"]["allocation"]["weights"]
        .as_array()
        .expect("allocation")
        .clone();
    assert_eq!(weights.len(), 12);
    let (mut removed, mut total) = (0.0, 0.0);
    for w in &weights {
        let (p, s) = (
            w["params"].as_f64().expect("params"),
            w["sparsity"].as_f64().expect("s"),
        );
        assert!(w["drop"].as_f64().is_some_and(f64::is_finite), "{w}");
        // The schedule is the recipe's per-tensor sparsities.
        let name = w["name"].as_str().expect("name");
        assert_eq!(
            recipe["tensors"][name]["sparsity"].as_f64(),
            Some(s),
            "{name}"
        );
        removed += p * s;
        total += p;
    }
    assert!((removed / total - 0.5).abs() < 1e-6, "{}", removed / total);
    // Explicit role sparsities: no allocation by default, and an error when asked for.
    let o = run(&["--role-sparsity", "query=0.3"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let f = EtsFile::open(&out).expect("open");
    assert!(f.header().recipe["calibration"]["pruning"]
        .get("allocation")
        .is_none());
    let o = run(&["--role-sparsity", "query=0.3", "--allocate", "sensitivity"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--allocate sensitivity"));
}

/// `--selection` and `--refit` are recorded, each changes the file, each stage brings the output
/// closer to the dense model, and the defaults are the full method.
#[test]
fn calibration_stages_are_chosen_and_recorded() {
    let dir = tempfile::tempdir().expect("dir");
    let input = fixture("tiny-safetensors/model.safetensors");
    let sentences = dir.path().join("calib.txt");
    std::fs::write(
        &sentences,
        "the movie was great\na dull and lifeless film\nit is a fine piece of work\n\
         nothing happens here\nbrilliant acting all round\na waste of two hours\n",
    )
    .expect("write");
    let calib = sentences.to_str().expect("utf-8 path");
    let run = |name: &str, extra: &[&str]| -> (Output, PathBuf) {
        let out = dir.path().join(name);
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&input, &out];
        let base = [
            "--sparsity",
            "0.5",
            "--tile",
            "8x8",
            "--allocate",
            "uniform",
        ];
        for a in base.iter().chain(extra) {
            args.push(a);
        }
        (et_convert(&args), out)
    };
    let (mut files, mut cosines) = (Vec::new(), Vec::new());
    for (selection, refit) in [
        ("greedy", "dense"),
        ("score", "dense"),
        ("score", "none"),
        ("greedy", "none"),
    ] {
        let name = format!("{selection}-{refit}.ets");
        let extra = [
            "--calibrate",
            calib,
            "--selection",
            selection,
            "--refit",
            refit,
        ];
        let (o, out) = run(&name, &extra);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let f = EtsFile::open(&out).expect("open");
        let p = &f.header().recipe["calibration"]["pruning"];
        assert_eq!(p["selection"], selection, "{p}");
        assert_eq!(p["refit"], refit, "{p}");
        let c = &f.header().recipe["calibration"]["output_cosine"];
        cosines.push(c.as_f64().expect("output cosine"));
        files.push(std::fs::read(&out).expect("read"));
    }
    // Each stage brings the output closer to the dense model's: score only, + refit, + greedy.
    let [greedy, refitted, score_only, _] = cosines[..] else {
        panic!("{cosines:?}")
    };
    assert!(
        score_only < refitted && refitted < greedy,
        "output cosines: score only {score_only}, + refit {refitted}, + greedy {greedy}"
    );
    // Every stage changes the file; the defaults are greedy selection and the refit.
    for i in 0..files.len() {
        for j in i + 1..files.len() {
            assert_ne!(
                files[i], files[j],
                "stage combinations {i} and {j} give one file"
            );
        }
    }
    let (o, out) = run("default.ets", &["--calibrate", calib]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(&out).expect("read"), files[0]);
    // Usage errors: an unknown stage, and a stage without calibration data.
    for extra in [
        &["--calibrate", calib, "--selection", "random"][..],
        &["--calibrate", calib, "--refit", "pruned"][..],
        &["--selection", "score"][..],
        &["--refit", "none"][..],
    ] {
        let (o, _) = run("bad.ets", extra);
        assert_eq!(o.status.code(), Some(2), "{extra:?}");
    }
}

/// `--device`: `cpu` says so in the output; where no GPU is usable, `cuda` exits 1 naming what is
/// missing and writes nothing, and `auto` calibrates on the CPU, says why, and gives the `cpu`
/// bytes. Where a GPU is usable, `cuda` and `auto` say they ran on it.
#[test]
fn calibration_device_is_chosen_reported_and_refused_without_a_gpu() {
    let dir = tempfile::tempdir().expect("dir");
    let input = fixture("tiny-safetensors/model.safetensors");
    let sentences = dir.path().join("calib.txt");
    std::fs::write(
        &sentences,
        "the movie was great\na dull and lifeless film\nit is a fine piece of work\n",
    )
    .expect("write");
    let calib = sentences.to_str().expect("utf-8 path");
    let base = [
        "--sparsity",
        "0.5",
        "--tile",
        "8x8",
        "--allocate",
        "uniform",
        "--calibrate",
        calib,
    ];
    let run = |name: &str, device: &str| -> (PathBuf, String) {
        let out = dir.path().join(name);
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&input, &out];
        let dev = ["--device", device];
        for a in base.iter().chain(&dev) {
            args.push(a);
        }
        let o = et_convert(&args);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "--device {device}: {stderr}");
        (out, String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let (cpu, stdout) = run("cpu.ets", "cpu");
    assert!(stdout.contains("calibrated on CPU\n"), "{stdout}");
    assert!(stdout.contains("time by phase: "), "{stdout}");
    let gpu = ets::convert::backend::CalibrationBackend::cuda(0);
    match gpu {
        Err(e) => {
            assert!(
                matches!(e, ets::convert::ConvertError::DeviceUnavailable { .. }),
                "{e:?}"
            );
            let work = dir.path().join("work");
            std::fs::create_dir(&work).expect("dir");
            let mut extra = base.to_vec();
            extra.extend(["--device", "cuda"]);
            let stderr = expect_failure(&work, &input, &extra, "--device cuda without a GPU");
            assert!(
                stderr.contains("--device cuda: no usable GPU for calibration: "),
                "{stderr}"
            );
            let (auto, stdout) = run("auto.ets", "auto");
            assert!(
                stdout.contains("calibrated on CPU (auto: no usable GPU: "),
                "{stdout}"
            );
            assert_eq!(
                std::fs::read(&cpu).expect("cpu"),
                std::fs::read(&auto).expect("auto"),
                "auto on the CPU differs from --device cpu"
            );
        }
        Ok(_) => {
            for device in ["cuda", "auto"] {
                let (_, stdout) = run(&format!("{device}.ets"), device);
                assert!(stdout.contains("calibrated on CUDA ("), "{stdout}");
            }
        }
    }
    let out = dir.path().join("bad.ets");
    let o = et_convert(&[&input, &out, &"--calibrate", &calib, &"--device", &"tpu"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "an unknown device is a usage error"
    );
}
