//! The et-verify and et-inspect binaries: exit status 0 for a valid file, 1 with one line
//! `FILE: CODE: MESSAGE` for an invalid one, 2 for a usage error.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin).args(args).output().unwrap()
}

fn verify(args: &[&str]) -> Output {
    run(env!("CARGO_BIN_EXE_et-verify"), args)
}

fn inspect(args: &[&str]) -> Output {
    run(env!("CARGO_BIN_EXE_et-inspect"), args)
}

/// The section count read straight from the header JSON (not through the reader).
fn section_count(path: &Path) -> usize {
    let b = std::fs::read(path).unwrap();
    let len = u64::from_le_bytes(b[16..24].try_into().unwrap()) as usize;
    let h: Value = serde_json::from_slice(&b[64..64 + len]).unwrap();
    h["sections"].as_array().unwrap().len()
}

#[test]
fn verify_accepts_valid_files() {
    for name in [
        "tiny-example.ets",
        "encodings-small.ets",
        "header-only.ets",
        "minor-7-unknown-optional-section.ets",
    ] {
        let path = fixture(&format!("valid/{name}"));
        let out = verify(&[path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{name}");
        let len = std::fs::metadata(&path).unwrap().len();
        let want = format!("ok: {} sections, {len} bytes\n", section_count(&path));
        assert_eq!(String::from_utf8_lossy(&out.stdout), want);
        assert!(out.stderr.is_empty());
    }
}

#[test]
fn verify_reports_each_invalid_fixture_with_its_code() {
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("conformance.json")).unwrap())
            .unwrap();
    for e in manifest["fixtures"].as_array().unwrap() {
        if e["expect"] != "invalid" || e.get("committed") == Some(&Value::Bool(false)) {
            continue;
        }
        let path = fixture(e["file"].as_str().unwrap());
        let p = path.to_str().unwrap();
        let out = verify(&[p]);
        assert_eq!(out.status.code(), Some(1), "{p}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{p}: {err}");
        let prefix = format!("{p}: {}: ", e["code"].as_str().unwrap());
        assert!(
            err.starts_with(&prefix),
            "{err} does not start with {prefix}"
        );
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn verify_structure_only_skips_checksums() {
    let p = fixture("invalid/r35-tile-value-flipped.ets");
    let p = p.to_str().unwrap();
    assert_eq!(verify(&[p]).status.code(), Some(1));
    let out = verify(&["--no-checksums", p]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("structure only"));
}

#[test]
fn verify_json_output() {
    let good = fixture("valid/tiny-example.ets");
    let out = verify(&["--json", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["sections"], 2);
    let bad = fixture("invalid/r02-magic-first-byte.ets");
    let out = verify(&["--json", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["code"], "bad_magic");
}

#[test]
fn verify_usage_and_io_errors() {
    assert_eq!(verify(&[]).status.code(), Some(2));
    assert_eq!(verify(&["--no-such-flag", "x.ets"]).status.code(), Some(2));
    assert_eq!(verify(&["a.ets", "b.ets"]).status.code(), Some(2));
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.ets");
    let out = verify(&[missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(": io: "));
    let out = verify(&[dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "a directory is not a file");
}

#[test]
fn inspect_lists_every_tensor() {
    let path = fixture("valid/tiny-bert-tile16x32-f16.ets");
    let out = inspect(&[path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    let b = std::fs::read(&path).unwrap();
    let len = u64::from_le_bytes(b[16..24].try_into().unwrap()) as usize;
    let h: Value = serde_json::from_slice(&b[64..64 + len]).unwrap();
    for s in h["sections"].as_array().unwrap() {
        assert!(
            text.contains(s["name"].as_str().unwrap()),
            "{} missing",
            s["name"]
        );
    }
    assert!(text.contains("16x32"));
    assert!(text.contains("hidden 32"));
    assert!(text.contains("totals:"));
}

#[test]
fn inspect_json_matches_the_header() {
    let path = fixture("valid/encodings-small.ets");
    let out = inspect(&["--json", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let tensors = v["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 5);
    let tile = tensors.iter().find(|t| t["name"] == "tile").unwrap();
    assert_eq!(tile["tile"], serde_json::json!([16, 16]));
    assert_eq!(tile["kept_tiles"], 3);
    // Kept tiles (0,0), (1,0), (1,1) of a 20x24 matrix cover 256 + 64 + 32 elements.
    assert_eq!(tile["kept_elements"], 352);
    let rows = tensors.iter().find(|t| t["name"] == "rows").unwrap();
    assert_eq!(rows["density"], 2.0 / 6.0);
    assert_eq!(v["other_sections"][0]["format"], "vocab.txt");
    assert_eq!(v["model"]["hidden_size"], 32);
}

#[test]
fn inspect_rejects_invalid_files() {
    let p = fixture("invalid/r19-rank-5.ets");
    let out = inspect(&[p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(": bad_shape: "));
    assert_eq!(inspect(&[]).status.code(), Some(2));
}

/// Sum of `data-tiles` over the kept rectangles of each panel of a tile map, by weight name.
fn map_counts(svg: &str) -> Vec<(String, usize)> {
    svg.split("<g class=\"panel\" data-name=\"")
        .skip(1)
        .map(|panel| {
            let name = panel.split('"').next().unwrap().to_string();
            let body = panel.split("</g>").next().unwrap();
            let tiles = body
                .split("data-tiles=\"")
                .skip(1)
                .map(|s| s.split('"').next().unwrap().parse::<usize>().unwrap())
                .sum();
            (name, tiles)
        })
        .collect()
}

#[test]
fn inspect_tile_map_draws_every_kept_tile() {
    let dir = tempfile::tempdir().unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/sources/tiny-safetensors");
    let ets = dir.path().join("pruned.ets");
    let convert = Command::new(env!("CARGO_BIN_EXE_et-convert"))
        .args([
            model.join("model.safetensors").to_str().unwrap(),
            ets.to_str().unwrap(),
            "--sparsity",
            "0.5",
            "--tile",
            "8x8",
            "--quiet",
        ])
        .output()
        .unwrap();
    assert!(convert.status.success(), "{convert:?}");
    let svg_path = dir.path().join("map.svg");
    let out = inspect(&[
        "--json",
        "--tile-map",
        svg_path.to_str().unwrap(),
        ets.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
    let layers = v["model"]["num_layers"].as_u64().unwrap() as usize;
    let counts = map_counts(&svg);
    // One panel per linear weight: six per layer.
    assert_eq!(counts.len(), 6 * layers);
    for (name, drawn) in counts {
        let t = v["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name.as_str())
            .unwrap();
        let kept = t["kept_tiles"].as_u64().unwrap() as usize;
        assert!(kept > 0 && kept < t["grid_tiles"].as_u64().unwrap() as usize);
        assert_eq!(drawn, kept, "{name}");
    }
    // A map that cannot be written is an error.
    let bad = dir.path().join("missing").join("map.svg");
    let out = inspect(&["--tile-map", bad.to_str().unwrap(), ets.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
}
