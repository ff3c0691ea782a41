//! Conformance fixtures: deterministic valid files in every encoding and dtype, invalid files that
//! each break one reject rule, and the manifest (`conformance.json`) that names the rule and the
//! expected error code of each. `et-fixtures` writes them; the tests regenerate and compare.

use std::fs;
use std::path::Path;

use serde_json::{json, Value};

use ets::format::{Dtype, EtsWriter, FormatError, WriteOptions};

mod invalid;
mod layout;
pub mod model;
pub mod raw;
pub mod rules;

pub use rules::{rule_for_code, Rule, RULES};

/// When a reader finds the error of an invalid fixture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// While opening (structural validation).
    Open,
    /// Only when verifying checksums.
    Verify,
}

impl Stage {
    /// `open` or `verify`.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Open => "open",
            Stage::Verify => "verify",
        }
    }
}

/// One manifest entry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Path relative to the fixtures folder, with `/` separators.
    pub file: String,
    /// The rule an invalid file breaks; `None` for a valid file.
    pub rule: Option<&'static Rule>,
    /// Where the error is found (invalid files).
    pub stage: Stage,
    /// What the file is.
    pub description: String,
    /// Other rules the file also breaks, that a reader checks later.
    pub note: Option<String>,
    /// Whether the file is committed (false: too large, only written by the generator).
    pub committed: bool,
}

impl Entry {
    fn valid(file: String, description: &str) -> Entry {
        Entry {
            file,
            rule: None,
            stage: Stage::Open,
            description: description.to_string(),
            note: None,
            committed: true,
        }
    }

    pub(crate) fn invalid(
        file: String,
        rule: &'static Rule,
        stage: Stage,
        what: &str,
        note: Option<&str>,
    ) -> Entry {
        Entry {
            file,
            rule: Some(rule),
            stage,
            description: what.to_string(),
            note: note.map(str::to_string),
            committed: true,
        }
    }

    /// The entry as manifest JSON.
    pub fn to_json(&self) -> Value {
        let mut v = match self.rule {
            None => json!({"file": self.file, "expect": "valid", "description": self.description}),
            Some(r) => json!({
                "file": self.file,
                "expect": "invalid",
                "rule": r.id,
                "rule_text": r.text,
                "code": r.code,
                "stage": self.stage.name(),
                "description": self.description,
            }),
        };
        if let Some(n) = &self.note {
            v["note"] = json!(n);
        }
        if !self.committed {
            v["committed"] = json!(false);
        }
        v
    }
}

/// Writes every fixture and `conformance.json` under `dir`; returns the manifest entries.
pub fn generate(dir: &Path) -> Result<Vec<Entry>, FormatError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e| FormatError::Io { path: p, source: e }
    };
    let (valid_dir, invalid_dir) = (dir.join("valid"), dir.join("invalid"));
    fs::create_dir_all(&valid_dir).map_err(io(&valid_dir))?;
    fs::create_dir_all(&invalid_dir).map_err(io(&invalid_dir))?;
    let mut entries = valid_models(&valid_dir)?;
    let tiny = fs::read(valid_dir.join("tiny-example.ets")).map_err(io(&valid_dir))?;
    let small = fs::read(valid_dir.join("encodings-small.ets")).map_err(io(&valid_dir))?;
    let mut extra = valid_variants(&tiny)?;
    let mut catalog = invalid::Catalog {
        entries: Vec::new(),
        tiny,
        small,
    };
    catalog.build()?;
    for (entry, bytes) in extra.iter().chain(catalog.entries.iter()) {
        let path = dir.join(&entry.file);
        fs::write(&path, bytes).map_err(io(&path))?;
    }
    entries.extend(extra.drain(..).map(|(e, _)| e));
    entries.extend(catalog.entries.into_iter().map(|(e, _)| e));
    let manifest = manifest_json(&entries);
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| raw::bad(e.to_string()))? + "\n";
    let path = dir.join("conformance.json");
    fs::write(&path, text).map_err(io(&path))?;
    Ok(entries)
}

/// The manifest document.
pub fn manifest_json(entries: &[Entry]) -> Value {
    json!({
        "format": "ets",
        "version": "1.1",
        "about": "Each invalid file breaks the rule named; a conforming reader rejects it with the given code, \
                  at open or only when verifying checksums (stage). Each valid file opens and verifies. \
                  Files with committed=false are written by et-fixtures.",
        "rules": RULES.iter().map(|r| json!({"id": r.id, "code": r.code, "text": r.text})).collect::<Vec<_>>(),
        "fixtures": entries.iter().map(Entry::to_json).collect::<Vec<_>>(),
    })
}

fn valid_models(dir: &Path) -> Result<Vec<Entry>, FormatError> {
    let mut entries = Vec::new();
    let rel = |name: &str| format!("valid/{name}");
    model::write_tiny_example(&dir.join("tiny-example.ets"))?;
    entries.push(Entry::valid(
        rel("tiny-example.ets"),
        "a 32x32 f16 matrix in 16x16 tiles keeping the two diagonal tiles, and a dense f16 vector",
    ));
    model::write_tiny_example_embedding(&dir.join("minor-1-embedding.ets"))?;
    entries.push(Entry::valid(
        rel("minor-1-embedding.ets"),
        "the tiny example with minor version 1 and its embedding settings: mean pooling, normalized, at most 8 tokens",
    ));
    model::write_encodings_small(&dir.join("encodings-small.ets"))?;
    entries.push(Entry::valid(rel("encodings-small.ets"),
        "one small tensor per encoding (dense, tile, tile with element bitmaps, rows, cols), shapes not multiples of the tile, and a vocab.txt tokenizer"));
    for enc in model::FIXTURE_ENCODINGS {
        for dtype in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
            let name = format!("tiny-bert-{}-{}.ets", enc.label(), dtype.name());
            model::write_tiny_bert(&dir.join(&name), enc, dtype)?;
            let what = format!(
                "2-layer BERT (hidden 32, 2 heads, FFN 64, vocab 50) with linear weights in {} and every tensor in {}",
                enc.label(),
                dtype.name()
            );
            entries.push(Entry::valid(rel(&name), &what));
        }
    }
    let path = dir.join("header-only.ets");
    let w = EtsWriter::create(&path, WriteOptions { overwrite: true })?;
    w.finish(
        model::tiny_example_config(),
        json!({}),
        model::fixture_provenance("header-only"),
    )?;
    entries.push(Entry::valid(
        rel("header-only.ets"),
        "a header with no sections (the file ends with the header)",
    ));
    Ok(entries)
}

/// Valid files that the writer never produces but a reader must accept.
fn valid_variants(tiny: &[u8]) -> Result<Vec<(Entry, Vec<u8>)>, FormatError> {
    let mut out = Vec::new();
    let mut r = raw::Raw::parse(tiny)?;
    r.minor = 7;
    invalid::append_section(
        &mut r,
        "notes",
        "x-notes",
        false,
        b"sections of unknown kinds are skipped when optional",
    )?;
    let h = r.json()?;
    h["x_future_field"] = json!({"added_in": "1.7"});
    if let Some(s) = h["sections"].get_mut(0) {
        s["x_quantization"] = json!(null);
    }
    r.fix_checksums()?;
    out.push((
        Entry::valid("valid/minor-7-unknown-optional-section.ets".into(),
            "minor version 7, an optional section of unknown kind x-notes, unknown header and section fields"),
        r.assemble()?,
    ));
    let mut r = raw::Raw::parse(tiny)?;
    r.relayout(4096)?;
    r.fix_checksums()?;
    out.push((
        Entry::valid(
            "valid/alignment-4096.ets".into(),
            "the tiny example laid out with alignment 4096",
        ),
        r.assemble()?,
    ));
    let mut r = raw::Raw::parse(tiny)?;
    let mut nested = json!("deepest");
    for _ in 0..14 {
        nested = json!([nested]);
    }
    r.json()?["recipe"] = json!({"note": "[[[[[[[[[[[[[[[[[[[[{{{{{{{{{{ \"]]", "nested": nested});
    out.push((
        Entry::valid("valid/nesting-16-levels.ets".into(),
            "a recipe nested exactly 16 levels deep, with brackets and an escaped quote inside a string"),
        r.assemble()?,
    ));
    Ok(out)
}
