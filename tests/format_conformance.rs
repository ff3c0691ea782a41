//! The conformance manifest: every invalid fixture fails with exactly its expected code at the
//! expected stage, every valid fixture opens and verifies, the rules cover every reject code of
//! the reader, and the committed fixtures are exactly what the generator writes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ets::format::EtsFile;
use ets_testkit::conformance::{self, RULES};
use serde_json::Value;

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// One generator run shared by the tests of this file.
fn generated() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        conformance::generate(dir.path()).unwrap();
        dir
    })
    .path()
}

fn manifest(dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join("conformance.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["fixtures"].as_array().unwrap().clone()
}

/// Where a manifest entry's file lies: committed files in `fixtures/`, others in the generated set.
fn locate(entry: &Value) -> PathBuf {
    let file = entry["file"].as_str().unwrap();
    if entry.get("committed") == Some(&Value::Bool(false)) {
        generated().join(file)
    } else {
        fixtures_dir().join(file)
    }
}

/// What a reader says about a file: `Ok(())` or the code and the stage it failed at.
fn outcome(f: Result<EtsFile, ets::format::FormatError>) -> Result<(), (String, &'static str)> {
    let f = f.map_err(|e| (e.code().to_string(), "open"))?;
    f.verify_checksums()
        .map_err(|e| (e.code().to_string(), "verify"))?;
    // A valid file's tensors must also be readable in full.
    for t in f.tensors() {
        let dense = t.to_dense_f32();
        assert_eq!(dense.len(), t.numel(), "{}", t.name);
    }
    Ok(())
}

#[test]
fn every_fixture_gives_its_expected_result() {
    let entries = manifest(&fixtures_dir());
    assert!(entries.len() >= 60, "only {} fixtures", entries.len());
    for e in &entries {
        let path = locate(e);
        let from_path = outcome(EtsFile::open(&path));
        let bytes = std::fs::read(&path).unwrap();
        let from_bytes = outcome(EtsFile::from_bytes(&bytes));
        assert_eq!(
            from_path,
            from_bytes,
            "{}: open and from_bytes disagree",
            path.display()
        );
        match e["expect"].as_str().unwrap() {
            "valid" => assert_eq!(from_path, Ok(()), "{}", path.display()),
            "invalid" => {
                let want = (
                    e["code"].as_str().unwrap().to_string(),
                    if e["stage"] == "verify" {
                        "verify"
                    } else {
                        "open"
                    },
                );
                assert_eq!(from_path, Err(want), "{}", path.display());
            }
            other => panic!("unknown expectation {other}"),
        }
    }
}

#[test]
fn manifest_names_rule_text_and_code_consistently() {
    let entries = manifest(&fixtures_dir());
    for e in entries.iter().filter(|e| e["expect"] == "invalid") {
        let rule = RULES.iter().find(|r| r.id == e["rule"]).expect("rule id");
        assert_eq!(e["code"], rule.code, "{}", e["file"]);
        assert_eq!(e["rule_text"], rule.text, "{}", e["file"]);
        let stem = e["file"].as_str().unwrap().trim_start_matches("invalid/");
        let number: u32 = rule.id[1..].parse().unwrap();
        assert!(
            stem.starts_with(&format!("r{number:02}-")),
            "{stem} named after the wrong rule"
        );
    }
}

/// The reject codes as the reader's source defines them: the variants whose doc comment starts
/// with a rule number, mapped through `code()`.
fn reject_codes_from_source() -> BTreeSet<(String, String)> {
    let src =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/format/error.rs"))
            .unwrap();
    let lines: Vec<&str> = src.lines().map(str::trim).collect();
    let mut variant_rule = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let Some(rest) = l.strip_prefix("/// R") else {
            continue;
        };
        let Some((num, _)) = rest.split_once(':') else {
            continue;
        };
        // The variant name is the first line after the doc comment that starts with a capital
        // (attributes may span several lines).
        let variant = lines[i + 1..]
            .iter()
            .find(|l| l.starts_with(|c: char| c.is_ascii_uppercase()))
            .unwrap();
        let name = variant
            .split(|c: char| !c.is_alphanumeric())
            .next()
            .unwrap()
            .to_string();
        variant_rule.push((format!("R{num}"), name));
    }
    let mut out = BTreeSet::new();
    for (rule, variant) in variant_rule {
        let arm = lines
            .iter()
            .find(|l| l.starts_with(&format!("{variant} {{ .. }} =>")))
            .unwrap_or_else(|| panic!("no code() arm for {variant}"));
        let code = arm.split('"').nth(1).unwrap().to_string();
        out.insert((rule, code));
    }
    out
}

#[test]
fn fixtures_cover_every_reject_rule_of_the_reader() {
    let source = reject_codes_from_source();
    assert_eq!(
        source.len(),
        36,
        "error.rs documents {} rules",
        source.len()
    );
    let table: BTreeSet<(String, String)> = RULES
        .iter()
        .map(|r| (r.id.to_string(), r.code.to_string()))
        .collect();
    assert_eq!(
        table, source,
        "the conformance rule table disagrees with error.rs"
    );
    let covered: BTreeSet<(String, String)> = manifest(&fixtures_dir())
        .iter()
        .filter(|e| e["expect"] == "invalid")
        .map(|e| {
            (
                e["rule"].as_str().unwrap().to_string(),
                e["code"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(covered, source, "rules without an invalid fixture");
}

fn files_under(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for sub in ["valid", "invalid"] {
        for e in std::fs::read_dir(dir.join(sub)).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".ets") {
                out.insert(format!("{sub}/{name}"));
            }
        }
    }
    out
}

#[test]
fn committed_fixtures_are_exactly_what_the_generator_writes() {
    let gen = generated();
    let committed = fixtures_dir();
    let entries = manifest(gen);
    let expected: BTreeSet<String> = entries
        .iter()
        .filter(|e| e.get("committed") != Some(&Value::Bool(false)))
        .map(|e| e["file"].as_str().unwrap().to_string())
        .collect();
    let all: BTreeSet<String> = entries
        .iter()
        .map(|e| e["file"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(files_under(gen), all, "generated files and manifest differ");
    let present: BTreeSet<String> = files_under(&committed)
        .into_iter()
        .filter(|f| expected.contains(f) || !all.contains(f))
        .collect();
    assert_eq!(
        present, expected,
        "fixtures/ is stale: run `cargo run --release -p ets-dev --bin et-fixtures -- fixtures`"
    );
    for file in expected
        .iter()
        .map(String::as_str)
        .chain(["conformance.json"])
    {
        let a = std::fs::read(gen.join(file)).unwrap();
        let b = std::fs::read(committed.join(file)).unwrap();
        assert!(a == b, "{file} differs from the generator's output");
    }
    let size: u64 = expected
        .iter()
        .map(|f| std::fs::metadata(committed.join(f)).unwrap().len())
        .sum();
    assert!(size < 2 << 20, "committed fixtures take {size} bytes");
}

#[test]
fn generator_is_deterministic() {
    let again = tempfile::tempdir().unwrap();
    conformance::generate(again.path()).unwrap();
    for file in files_under(generated())
        .iter()
        .map(String::as_str)
        .chain(["conformance.json"])
    {
        let a = std::fs::read(generated().join(file)).unwrap();
        let b = std::fs::read(again.path().join(file)).unwrap();
        assert!(a == b, "{file} differs between two runs");
    }
}
