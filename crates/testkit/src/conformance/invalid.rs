//! The invalid fixtures: each takes a valid base file and breaks one rule, re-deriving every
//! checksum, digest and length that the mutation would otherwise also break. Where breaking the
//! rule unavoidably breaks a later-checked rule too, the entry's note says so.

use serde_json::{json, Value};

use super::raw::{self, bad, HeaderForm, Raw};
use super::{Entry, Stage};
use ets::format::FormatError;

use super::model::{TINY_DENSE as B, TINY_TILE as T};

pub(crate) type Res<T> = Result<T, FormatError>;

/// Collects invalid fixtures built from the two base files.
pub(crate) struct Catalog {
    pub entries: Vec<(Entry, Vec<u8>)>,
    /// The tiny example (a tile tensor `T` then a dense tensor `B`).
    pub tiny: Vec<u8>,
    /// One tensor per encoding: `dense`, `tile`, `elements`, `rows`, `cols`, then `tokenizer`.
    pub small: Vec<u8>,
}

/// Parses `base`, applies `f`, refreshes section checksums, lays the file out again.
pub(crate) fn edit(base: &[u8], f: impl FnOnce(&mut Raw) -> Res<()>) -> Res<Vec<u8>> {
    let mut r = Raw::parse(base)?;
    f(&mut r)?;
    r.fix_checksums()?;
    r.assemble()
}

/// Like [`edit`] but keeps the recorded checksums as they were.
pub(crate) fn edit_keep_sums(base: &[u8], f: impl FnOnce(&mut Raw) -> Res<()>) -> Res<Vec<u8>> {
    let mut r = Raw::parse(base)?;
    f(&mut r)?;
    r.assemble()
}

/// Sets `key` of section `name` (or of its part `role`).
pub(crate) fn set(r: &mut Raw, name: &str, role: Option<&str>, key: &str, v: Value) -> Res<()> {
    let obj = match role {
        Some(role) => r.part(name, role)?,
        None => r.section(name)?,
    };
    obj.insert(key.into(), v);
    Ok(())
}

fn set_top(r: &mut Raw, path: &[&str], v: Value) -> Res<()> {
    let mut cur = r.json()?;
    for k in &path[..path.len() - 1] {
        cur = cur.get_mut(*k).ok_or_else(|| bad(format!("no key {k}")))?;
    }
    let last = path[path.len() - 1];
    cur.as_object_mut()
        .ok_or_else(|| bad("not an object"))?
        .insert(last.into(), v);
    Ok(())
}

pub(crate) fn extent(r: &mut Raw, name: &str, role: Option<&str>) -> Res<(usize, usize)> {
    match role {
        Some(role) => Raw::extent(r.part(name, role)?),
        None => Raw::extent(r.section(name)?),
    }
}

/// The header text of `base` after `f` edits it as a string (offsets re-derived so the data
/// start does not move).
pub(crate) fn text_edit(base: &[u8], f: impl Fn(&str) -> Vec<u8>) -> Res<Vec<u8>> {
    let r = Raw::parse(base)?;
    let HeaderForm::Json(v) = &r.header else {
        return Err(bad("text header"));
    };
    let mut start = 256u64;
    let text = loop {
        let mut h = v.clone();
        raw::shift_offsets(&mut h, i128::from(start));
        let t = f(&serde_json::to_string(&h).map_err(|e| bad(e.to_string()))?);
        let need = (64 + t.len() as u64).div_ceil(256) * 256;
        if need == start {
            break t;
        }
        start = need;
    };
    Raw {
        header: HeaderForm::Text(text),
        ..r
    }
    .assemble()
}

impl Catalog {
    pub(crate) fn add(
        &mut self,
        file: &str,
        code: &str,
        stage: Stage,
        what: &str,
        note: Option<&str>,
        bytes: Vec<u8>,
    ) -> Res<()> {
        let rule =
            super::rules::rule_for_code(code).ok_or_else(|| bad(format!("no rule {code}")))?;
        let entry = Entry::invalid(format!("invalid/{file}.ets"), rule, stage, what, note);
        self.entries.push((entry, bytes));
        Ok(())
    }

    pub(crate) fn open(&mut self, file: &str, code: &str, what: &str, bytes: Vec<u8>) -> Res<()> {
        self.add(file, code, Stage::Open, what, None, bytes)
    }

    pub(crate) fn open_note(
        &mut self,
        file: &str,
        code: &str,
        what: &str,
        note: &str,
        bytes: Vec<u8>,
    ) -> Res<()> {
        self.add(file, code, Stage::Open, what, Some(note), bytes)
    }

    /// All invalid fixtures.
    pub fn build(&mut self) -> Res<()> {
        self.preamble()?;
        self.header()?;
        self.model_and_names()?;
        self.embedding()?;
        self.tensor_meta()?;
        self.layout()?;
        self.parts()?;
        self.index_arrays()?;
        self.padding_and_checksums()?;
        Ok(())
    }

    /// R1-R8.
    fn preamble(&mut self) -> Res<()> {
        let tiny = self.tiny.clone();
        let base = edit(&tiny, |_| Ok(()))?;
        if base != tiny {
            return Err(bad("the raw editor does not reproduce the writer's layout"));
        }
        self.open("r01-empty", "too_short", "an empty file", Vec::new())?;
        self.open(
            "r01-63-bytes",
            "too_short",
            "the first 63 bytes of a valid file",
            tiny[..63].to_vec(),
        )?;
        let mut b = tiny.clone();
        b[0] = 0x88;
        raw::refresh_digest(&mut b);
        self.open(
            "r02-magic-first-byte",
            "bad_magic",
            "first magic byte 0x88 instead of 0x89",
            b,
        )?;
        let mut b = tiny.clone();
        b[4] = b'\n';
        raw::refresh_digest(&mut b);
        self.open(
            "r02-magic-crlf-to-lf",
            "bad_magic",
            "magic with its CR turned into LF (text-mode transfer)",
            b,
        )?;
        for (major, name) in [(2u16, "r03-major-2"), (0, "r03-major-0")] {
            let mut r = Raw::parse(&tiny)?;
            r.major = major;
            self.open(
                name,
                "unsupported_major",
                &format!("major version {major}"),
                r.assemble()?,
            )?;
        }
        let mut b = tiny.clone();
        b[12..16].copy_from_slice(&[1, 2, 3, 4]);
        raw::refresh_digest(&mut b);
        self.open(
            "r04-big-endian-marker",
            "bad_endian_marker",
            "endianness marker stored big-endian (01 02 03 04)",
            b,
        )?;
        let mut b = tiny.clone();
        raw::set_u64(&mut b, 16, (16 << 20) + 1);
        self.open_note(
            "r05-header-too-large",
            "header_too_large",
            "header length 16 MiB + 1",
            "the header then also runs past the end of the file (R7), which is checked after R5",
            b,
        )?;
        let n = tiny.len() as u64;
        let mut b = tiny.clone();
        raw::set_u64(&mut b, 24, n + 1);
        self.open(
            "r06-length-plus-one",
            "file_length_mismatch",
            "preamble file length one more than the file",
            b,
        )?;
        let b = tiny[..tiny.len() - 100].to_vec();
        self.open(
            "r06-truncated-data",
            "file_length_mismatch",
            "a valid file with its last 100 bytes cut off",
            b,
        )?;
        let mut b = tiny.clone();
        b.push(0);
        self.open(
            "r06-appended-byte",
            "file_length_mismatch",
            "a zero byte appended, preamble length unchanged",
            b,
        )?;
        let mut b = tiny[..164].to_vec();
        raw::set_u64(&mut b, 24, 164);
        self.open(
            "r07-truncated-header",
            "header_out_of_bounds",
            "file cut 100 bytes into the header, preamble file length updated",
            b,
        )?;
        let mut b = tiny.clone();
        raw::set_u64(&mut b, 16, n - 63);
        self.open(
            "r07-header-one-past-eof",
            "header_out_of_bounds",
            "header length one byte past the end of the file",
            b,
        )?;
        let mut b = tiny.clone();
        let at = find(&b, b"example").ok_or_else(|| bad("no recipe text"))?;
        b[at] = b'E';
        self.open(
            "r08-header-byte-changed",
            "header_digest_mismatch",
            "one header byte changed, digest not updated",
            b,
        )?;
        let mut b = tiny.clone();
        b[40] ^= 0x01;
        self.open(
            "r08-digest-byte-changed",
            "header_digest_mismatch",
            "one digest byte changed",
            b,
        )?;
        let mut b = tiny.clone();
        b[10] = 1;
        self.open("r08-minor-changed", "header_digest_mismatch",
            "minor version changed to 1 without updating the digest (the digest covers the preamble)", b)?;
        Ok(())
    }

    /// R9-R11.
    fn header(&mut self) -> Res<()> {
        let tiny = self.tiny.clone();
        let text = |t: &[u8]| -> Res<Vec<u8>> {
            let mut r = Raw::parse(&tiny)?;
            r.header = HeaderForm::Text(t.to_vec());
            r.data.clear();
            r.assemble()
        };
        self.open(
            "r09-not-json",
            "invalid_header",
            "header is not JSON",
            text(b"this is not json")?,
        )?;
        self.open(
            "r09-invalid-utf8",
            "invalid_header",
            "header JSON string with an invalid UTF-8 byte",
            text(b"{\"alignment\":256,\"recipe\":\"\xff\"}")?,
        )?;
        self.open(
            "r09-header-is-array",
            "invalid_header",
            "header is a JSON array",
            text(b"[]")?,
        )?;
        let b = text_edit(&tiny, |s| format!("{s}x").into_bytes())?;
        self.open(
            "r09-trailing-garbage",
            "invalid_header",
            "a byte after the header's closing brace",
            b,
        )?;
        let b = text_edit(&tiny, |s| {
            s.replacen(
                "{\"alignment\":256,",
                "{\"alignment\":256,\"alignment\":256,",
                1,
            )
            .into_bytes()
        })?;
        self.open(
            "r09-duplicate-key",
            "invalid_header",
            "the alignment key appears twice",
            b,
        )?;
        let b = edit(&tiny, |r| {
            r.json()?
                .as_object_mut()
                .and_then(|o| o.remove("alignment"));
            Ok(())
        })?;
        self.open(
            "r09-missing-alignment",
            "invalid_header",
            "header without alignment",
            b,
        )?;
        let b = edit(&tiny, |r| set_top(r, &["alignment"], json!("256")))?;
        self.open(
            "r09-alignment-string",
            "invalid_header",
            "alignment given as a string",
            b,
        )?;
        let b = edit(&tiny, |r| {
            let h = r.json()?;
            let s = h["sections"][1].as_object().cloned().unwrap_or_default();
            h["sections"][1] = Value::Array(s.into_iter().map(|(_, v)| v).collect());
            Ok(())
        })?;
        self.open(
            "r09-section-as-array",
            "invalid_header",
            "a section entry written as an array of its field values",
            b,
        )?;
        let b = edit(&tiny, |r| {
            let h = r.json()?;
            let m = h["model"].as_object().cloned().unwrap_or_default();
            h["model"] = Value::Array(m.into_iter().map(|(_, v)| v).collect());
            Ok(())
        })?;
        self.open(
            "r09-model-as-array",
            "invalid_header",
            "the model configuration written as an array of its field values",
            b,
        )?;
        let b = edit(&tiny, |r| {
            r.section(T)?.remove("dtype");
            Ok(())
        })?;
        self.open(
            "r09-tensor-without-dtype",
            "invalid_header",
            "a tensor section without dtype",
            b,
        )?;
        let b = edit(&tiny, |r| set(r, T, None, "offset", json!(-256)))?;
        self.open(
            "r09-negative-offset",
            "invalid_header",
            "a negative section offset",
            b,
        )?;
        let mut deep = json!(0);
        for _ in 0..16 {
            deep = json!([deep]);
        }
        let b = edit(&tiny, |r| set_top(r, &["recipe"], deep))?;
        self.open(
            "r10-nesting-17",
            "header_too_deep",
            "recipe nested in 16 arrays: 17 levels with the header object",
            b,
        )?;
        let b = text_edit(&tiny, |_| vec![b'['; 1000])?;
        self.open(
            "r10-1000-open-brackets",
            "header_too_deep",
            "a header of 1000 open brackets",
            b,
        )?;
        for (v, name) in [
            (json!(0), "r11-alignment-0"),
            (json!(3), "r11-alignment-3"),
            (json!(128), "r11-alignment-128"),
            (json!(131072), "r11-alignment-131072"),
            (json!(1u64 << 63), "r11-alignment-2pow63"),
        ] {
            let b = edit(&tiny, |r| set_top(r, &["alignment"], v.clone()))?;
            self.open(name, "bad_alignment", &format!("alignment {v}"), b)?;
        }
        Ok(())
    }

    /// The `embedding` object of minor version 1: R9 for a wrong shape or type, R12 for a maximum
    /// length outside the position table.
    fn embedding(&mut self) -> Res<()> {
        let tiny = self.tiny.clone();
        let cases: [(&str, &str, Value, &str); 4] = [
            (
                "r09-embedding-not-object",
                "invalid_header",
                json!(["mean", true, 8]),
                "embedding written as an array of its values",
            ),
            (
                "r09-embedding-normalize-not-bool",
                "invalid_header",
                json!({"pooling": "mean", "normalize": 1}),
                "embedding.normalize is the number 1, not a boolean",
            ),
            (
                "r12-embedding-max-length-0",
                "invalid_model_config",
                json!({"max_length": 0}),
                "embedding.max_length 0",
            ),
            (
                "r12-embedding-max-length-beyond-positions",
                "invalid_model_config",
                json!({"pooling": "cls", "max_length": 9}),
                "embedding.max_length 9 with max_position_embeddings 8",
            ),
        ];
        for (name, code, v, what) in cases {
            let b = edit(&tiny, |r| {
                r.minor = 1;
                set_top(r, &["embedding"], v)
            })?;
            self.open(name, code, what, b)?;
        }
        Ok(())
    }

    /// R12-R16.
    fn model_and_names(&mut self) -> Res<()> {
        let tiny = self.tiny.clone();
        let cases: [(&str, &[&str], Value, &str); 7] = [
            (
                "r12-architecture-gpt2",
                &["model", "architecture"],
                json!("gpt2"),
                "architecture gpt2",
            ),
            (
                "r12-hidden-size-0",
                &["model", "hidden_size"],
                json!(0),
                "hidden size 0",
            ),
            (
                "r12-heads-per-layer-length",
                &["model", "heads_per_layer"],
                json!([2, 2]),
                "two heads_per_layer entries for one layer",
            ),
            (
                "r12-heads-exceed",
                &["model", "heads_per_layer"],
                json!([3]),
                "a layer keeps 3 of 2 heads",
            ),
            (
                "r12-layer-norm-eps-negative",
                &["model", "layer_norm_eps"],
                json!(-1e-12),
                "negative layer_norm_eps",
            ),
            (
                "r12-heads-times-head-dim",
                &["model", "head_dim"],
                json!(8),
                "2 heads of 8 for hidden size 32",
            ),
            (
                "r12-num-labels-zero",
                &["model", "num_labels"],
                json!(0),
                "num_labels 0",
            ),
        ];
        for (name, path, v, what) in cases {
            let b = edit(&tiny, |r| set_top(r, path, v))?;
            self.open(name, "invalid_model_config", what, b)?;
        }
        let b = edit_keep_sums(&tiny, |r| {
            let h = r.json()?;
            let empty = json!({"name": "", "kind": "", "required": false, "offset": 0, "length": 0, "sha256": ""});
            h["sections"] = Value::Array(vec![empty; ets::format::MAX_SECTIONS + 1]);
            r.data.clear();
            Ok(())
        })?;
        self.add(
            "r13-65537-sections",
            "too_many_sections",
            Stage::Open,
            "65537 minimal section entries",
            Some("about 5 MB, so et-fixtures writes it but it is not committed"),
            b,
        )?;
        if let Some((e, _)) = self.entries.last_mut() {
            e.committed = false;
        }
        let long = "n".repeat(257);
        for (name, v, what) in [
            ("r14-empty-name", "", "an empty section name"),
            (
                "r14-name-with-space",
                "layers.0 query",
                "a section name with a space",
            ),
            (
                "r14-name-non-ascii",
                "layers.0.attention.qu\u{e9}ry.weight",
                "a section name with a non-ASCII letter",
            ),
            (
                "r14-name-control-char",
                "layers.0.\u{7}",
                "a section name with a control character",
            ),
            (
                "r14-name-257-chars",
                long.as_str(),
                "a 257-character section name",
            ),
        ] {
            let b = edit(&tiny, |r| set(r, B, None, "name", json!(v)))?;
            self.open(name, "bad_name", what, b)?;
        }
        let b = edit(&tiny, |r| set(r, B, None, "name", json!(T)))?;
        self.open(
            "r15-duplicate-name",
            "duplicate_name",
            "two sections with the same name",
            b,
        )?;
        let b = edit(&tiny, |r| {
            append_section(r, "adapter", "x-lora", true, b"low-rank adapter")
        })?;
        self.open(
            "r16-unknown-required-section",
            "unknown_required_section",
            "a section of unknown kind x-lora marked required",
            b,
        )?;
        Ok(())
    }

    /// R17-R21.
    fn tensor_meta(&mut self) -> Res<()> {
        let tiny = self.tiny.clone();
        for (name, v) in [
            ("r17-dtype-f64", "f64"),
            ("r17-dtype-uppercase", "F16"),
            ("r17-dtype-int8", "i8"),
        ] {
            let b = edit(&tiny, |r| set(r, B, None, "dtype", json!(v)))?;
            self.open(name, "unknown_dtype", &format!("dtype {v}"), b)?;
        }
        let tile = |layout: &str| json!({"kind": "tile", "tile_rows": 16, "tile_cols": 16, "layout": layout, "element_bitmaps": false});
        let mut extra = tile("row-major");
        extra["compression"] = json!("zstd");
        let mut missing = tile("row-major");
        missing
            .as_object_mut()
            .and_then(|o| o.remove("element_bitmaps"));
        for (name, v, what) in [
            (
                "r18-encoding-csr",
                json!({"kind": "csr"}),
                "encoding kind csr",
            ),
            (
                "r18-encoding-string",
                json!("tile"),
                "encoding given as a string",
            ),
            (
                "r18-tile-col-major",
                tile("col-major"),
                "tile layout col-major",
            ),
            (
                "r18-tile-extra-field",
                extra,
                "a tile encoding with an unknown field",
            ),
            (
                "r18-tile-missing-field",
                missing,
                "a tile encoding without element_bitmaps",
            ),
            (
                "r18-tile-size-negative",
                json!({"kind": "tile", "tile_rows": -16, "tile_cols": 16, "layout": "row-major", "element_bitmaps": false}),
                "a negative tile edge",
            ),
        ] {
            let b = edit(&tiny, |r| set(r, T, None, "encoding", v))?;
            self.open(name, "unknown_encoding", what, b)?;
        }
        let b = edit(&tiny, |r| {
            set(
                r,
                B,
                None,
                "encoding",
                json!({"kind": "dense", "order": "C"}),
            )
        })?;
        self.open(
            "r18-dense-extra-field",
            "unknown_encoding",
            "a dense encoding with an unknown field",
            b,
        )?;
        let dim_max = ets::format::MAX_DIM;
        for (name, sec, v, what) in [
            ("r19-rank-0", B, json!([]), "an empty shape"),
            ("r19-rank-5", B, json!([1, 1, 1, 1, 32]), "rank 5"),
            ("r19-dim-zero", B, json!([0]), "a zero dimension"),
            (
                "r19-dim-too-large",
                B,
                json!([dim_max + 1]),
                "a dimension of 2^31 + 1",
            ),
            (
                "r19-tile-1d",
                T,
                json!([1024]),
                "a tile tensor with a 1-D shape",
            ),
        ] {
            let b = edit(&tiny, |r| set(r, sec, None, "shape", v))?;
            self.open(name, "bad_shape", what, b)?;
        }
        let b = edit(&tiny, |r| {
            set(
                r,
                B,
                None,
                "shape",
                json!([dim_max, dim_max, dim_max, dim_max]),
            )
        })?;
        self.open(
            "r20-shape-product-overflow",
            "size_overflow",
            "a dense shape whose element count overflows 64 bits",
            b,
        )?;
        let b = edit(&tiny, |r| {
            set(r, B, None, "shape", json!([dim_max, dim_max]))
        })?;
        self.open(
            "r20-byte-size-over-2pow53",
            "size_overflow",
            "a dense shape whose byte size exceeds 2^53",
            b,
        )?;
        let b = edit(&tiny, |r| set(r, B, None, "offset", json!(1u64 << 60)))?;
        self.open(
            "r20-offset-over-2pow53",
            "size_overflow",
            "a section offset of 2^60",
            b,
        )?;
        let b = edit(&tiny, |r| set(r, B, None, "length", json!(1u64 << 60)))?;
        self.open(
            "r20-length-over-2pow53",
            "size_overflow",
            "a section length of 2^60",
            b,
        )?;
        let note = "a different tile shape also changes the grid, so the part lengths (R28) would fail next";
        for (name, h, w) in [
            ("r21-tile-16x12", 16, 12),
            ("r21-tile-4x4", 4, 4),
            ("r21-tile-256x256", 256, 256),
            ("r21-tile-0x16", 0, 16),
        ] {
            let v = json!({"kind": "tile", "tile_rows": h, "tile_cols": w, "layout": "row-major", "element_bitmaps": false});
            let b = edit(&tiny, |r| set(r, T, None, "encoding", v))?;
            self.open_note(name, "bad_tile_shape", &format!("tile {h}x{w}"), note, b)?;
        }
        Ok(())
    }
}

/// Appends a blob section at the next aligned offset after the data.
pub(crate) fn append_section(
    r: &mut Raw,
    name: &str,
    kind: &str,
    required: bool,
    bytes: &[u8],
) -> Res<()> {
    let at = r.data.len().div_ceil(256) * 256;
    r.data.resize(at, 0);
    r.data.extend_from_slice(bytes);
    let entry = json!({"name": name, "kind": kind, "required": required, "offset": at,
        "length": bytes.len(), "sha256": "", "format": "bin"});
    r.json()?
        .get_mut("sections")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| bad("no sections"))?
        .push(entry);
    Ok(())
}

pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
