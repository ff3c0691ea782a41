//! The structural rules of the spec, checked in a fixed order. Each failure maps to one
//! [`FormatError`] variant (the spec's rule number is in the variant's doc comment).

use sha2::{Digest, Sha256};

use super::error::FormatError;
use super::header::{Dtype, Encoding, Header, PartEntry, PartRole, SectionEntry};
use super::reader::hex;
use super::*;

/// Where the parts of a validated tensor lie.
#[derive(Debug, Clone)]
pub(crate) struct TensorLayout {
    pub section: usize,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    pub encoding: Encoding,
    pub parts: Vec<PartEntry>,
}

pub(crate) struct Checked {
    pub header: Header,
    pub minor: u16,
    pub tensors: Vec<TensorLayout>,
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Rounds `v` up to a multiple of the power of two `align`.
pub(crate) fn align_up(v: u64, align: u64) -> Option<u64> {
    v.checked_add(align - 1).map(|x| x & !(align - 1))
}

/// Validates a whole file held in `bytes`.
pub(crate) fn validate(bytes: &[u8]) -> Result<Checked, FormatError> {
    let (header_len, minor) = check_preamble(bytes)?;
    let header_bytes = &bytes[PREAMBLE_LEN as usize..(PREAMBLE_LEN + header_len) as usize];
    check_depth(header_bytes)?;
    let invalid = |detail: String| FormatError::InvalidHeader { detail };
    super::strict_json::check(header_bytes).map_err(|e| invalid(e.to_string()))?;
    let header: Header =
        serde_json::from_slice(header_bytes).map_err(|e| invalid(e.to_string()))?;
    let a = header.alignment;
    if !a.is_power_of_two() || !(MIN_ALIGNMENT..=MAX_ALIGNMENT).contains(&a) {
        return Err(FormatError::BadAlignment { value: a });
    }
    check_model(&header)?;
    if header.sections.len() > MAX_SECTIONS {
        return Err(FormatError::TooManySections {
            count: header.sections.len(),
            max: MAX_SECTIONS,
        });
    }
    check_names(&header.sections)?;
    let file_len = bytes.len() as u64;
    let mut cursor = Cursor {
        previous_end: PREAMBLE_LEN + header_len,
        alignment: a,
    };
    let mut tensors = Vec::new();
    for (i, s) in header.sections.iter().enumerate() {
        cursor.place(bytes, &s.name, s.offset, s.length)?;
        if s.offset + s.length > file_len {
            return Err(FormatError::OutOfBounds {
                name: s.name.clone(),
                offset: s.offset,
                end: s.offset + s.length,
                file_len,
            });
        }
        check_sha_string(s)?;
        match s.kind.as_str() {
            "tensor" => tensors.push(check_tensor(bytes, i, s, a)?),
            "tokenizer" => {}
            _ if s.required => {
                return Err(FormatError::UnknownRequiredSection {
                    name: s.name.clone(),
                    kind: s.kind.clone(),
                })
            }
            _ => {}
        }
    }
    if file_len > cursor.previous_end {
        return Err(FormatError::TrailingBytes {
            extra: file_len - cursor.previous_end,
            expected_end: cursor.previous_end,
        });
    }
    Ok(Checked {
        header,
        minor,
        tensors,
    })
}

/// Checks R1-R8 and returns the header length and minor version.
fn check_preamble(bytes: &[u8]) -> Result<(u64, u16), FormatError> {
    let file_len = bytes.len() as u64;
    if file_len < PREAMBLE_LEN {
        return Err(FormatError::TooShort { len: file_len });
    }
    let mut magic = [0u8; 8];
    magic.copy_from_slice(&bytes[..8]);
    if magic != MAGIC {
        return Err(FormatError::BadMagic { found: magic });
    }
    let major = le_u16(bytes, 8);
    if major != VERSION_MAJOR {
        return Err(FormatError::UnsupportedMajor { found: major });
    }
    let minor = le_u16(bytes, 10);
    let marker = le_u32(bytes, 12);
    if marker != ENDIAN_MARKER {
        return Err(FormatError::BadEndianMarker { found: marker });
    }
    let header_len = le_u64(bytes, 16);
    if header_len > MAX_HEADER_LEN {
        return Err(FormatError::HeaderTooLarge {
            len: header_len,
            max: MAX_HEADER_LEN,
        });
    }
    let declared = le_u64(bytes, 24);
    if declared != file_len {
        return Err(FormatError::FileLengthMismatch {
            declared,
            actual: file_len,
        });
    }
    if PREAMBLE_LEN + header_len > file_len {
        return Err(FormatError::HeaderOutOfBounds {
            len: header_len,
            file_len,
        });
    }
    let header = &bytes[PREAMBLE_LEN as usize..(PREAMBLE_LEN + header_len) as usize];
    let actual = header_digest(&bytes[..32], header);
    if actual.as_slice() != &bytes[32..64] {
        return Err(FormatError::HeaderDigestMismatch {
            expected: hex(&bytes[32..64]),
            actual: hex(&actual),
        });
    }
    Ok((header_len, minor))
}

/// The preamble's digest: SHA-256 over the first 32 preamble bytes followed by the header, so
/// that a changed minor version (which a reader otherwise accepts) is caught like any other byte.
pub(crate) fn header_digest(preamble: &[u8], header: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(preamble);
    h.update(header);
    h.finalize().into()
}

/// R10: bounds JSON nesting before the parser sees it, so no input can exhaust the stack.
fn check_depth(json: &[u8]) -> Result<(), FormatError> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in json {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(FormatError::HeaderTooDeep {
                        depth,
                        max: MAX_JSON_DEPTH,
                    });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// R18: an encoding object has exactly the keys of its kind.
fn check_encoding_keys(name: &str, v: &serde_json::Value) -> Result<(), FormatError> {
    let allowed: &[&str] = match v.get("kind").and_then(|k| k.as_str()) {
        Some("tile") => &[
            "kind",
            "tile_rows",
            "tile_cols",
            "layout",
            "element_bitmaps",
        ],
        _ => &["kind"],
    };
    let ok = v
        .as_object()
        .is_some_and(|o| o.keys().all(|k| allowed.contains(&k.as_str())));
    if !ok {
        return Err(FormatError::UnknownEncoding {
            name: name.to_string(),
            detail: v.to_string(),
        });
    }
    Ok(())
}

/// R12: the model configuration is self-consistent.
fn check_model(header: &Header) -> Result<(), FormatError> {
    let m = &header.model;
    let bad = |detail: String| Err(FormatError::InvalidModelConfig { detail });
    if m.architecture != "bert" {
        return bad(format!(
            "architecture {:?} (v1 knows \"bert\")",
            m.architecture
        ));
    }
    let dims = [
        ("num_layers", m.num_layers),
        ("hidden_size", m.hidden_size),
        ("num_heads", m.num_heads),
        ("head_dim", m.head_dim),
        ("intermediate_size", m.intermediate_size),
        ("vocab_size", m.vocab_size),
        ("max_position_embeddings", m.max_position_embeddings),
        ("type_vocab_size", m.type_vocab_size),
    ];
    for (name, v) in dims {
        if v == 0 || u64::from(v) > MAX_DIM {
            return bad(format!("{name} is {v}"));
        }
    }
    if u64::from(m.num_heads) * u64::from(m.head_dim) != u64::from(m.hidden_size) {
        return bad(format!(
            "num_heads {} x head_dim {} differs from hidden_size {}",
            m.num_heads, m.head_dim, m.hidden_size
        ));
    }
    if m.num_labels == Some(0) {
        return bad("num_labels is 0".into());
    }
    if m.heads_per_layer.len() != m.num_layers as usize {
        return bad(format!(
            "heads_per_layer has {} entries for {} layers",
            m.heads_per_layer.len(),
            m.num_layers
        ));
    }
    if let Some(h) = m.heads_per_layer.iter().find(|&&h| h > m.num_heads) {
        return bad(format!("a layer keeps {h} heads of {}", m.num_heads));
    }
    if !(m.layer_norm_eps.is_finite() && m.layer_norm_eps > 0.0) {
        return bad(format!("layer_norm_eps is {}", m.layer_norm_eps));
    }
    let max_length = header.embedding.as_ref().and_then(|e| e.max_length);
    if let Some(n) = max_length.filter(|&n| n == 0 || n > m.max_position_embeddings) {
        return bad(format!(
            "embedding.max_length is {n} (1 to max_position_embeddings {})",
            m.max_position_embeddings
        ));
    }
    Ok(())
}

/// R14-R15: names are printable ASCII, bounded, unique.
fn check_names(sections: &[SectionEntry]) -> Result<(), FormatError> {
    let mut seen = std::collections::HashSet::new();
    for s in sections {
        let n = &s.name;
        if n.is_empty() || n.len() > MAX_NAME_LEN || !n.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Err(FormatError::BadName { name: n.clone() });
        }
        if !seen.insert(n.as_str()) {
            return Err(FormatError::DuplicateName { name: n.clone() });
        }
    }
    Ok(())
}

fn check_sha_string(s: &SectionEntry) -> Result<(), FormatError> {
    let ok = s.sha256.len() == 64
        && s.sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !ok {
        return Err(FormatError::BadChecksumString {
            name: s.name.clone(),
            value: s.sha256.clone(),
        });
    }
    Ok(())
}

/// Walks regions in file order: each must start at the next aligned offset after the previous
/// one (R22-R24), and the padding between them must be zero (R34).
struct Cursor {
    previous_end: u64,
    alignment: u64,
}

impl Cursor {
    fn place(
        &mut self,
        bytes: &[u8],
        name: &str,
        offset: u64,
        length: u64,
    ) -> Result<(), FormatError> {
        let file_len = bytes.len() as u64;
        if offset > MAX_FILE_LEN || length > MAX_FILE_LEN {
            return Err(FormatError::SizeOverflow {
                name: name.to_string(),
                what: "offset or length".into(),
            });
        }
        if offset % self.alignment != 0 {
            return Err(FormatError::Misaligned {
                name: name.to_string(),
                offset,
                alignment: self.alignment,
            });
        }
        if offset < self.previous_end {
            return Err(FormatError::Overlap {
                name: name.to_string(),
                offset,
                previous_end: self.previous_end,
            });
        }
        // align_up cannot overflow: previous_end <= 2^54.
        let expected = align_up(self.previous_end, self.alignment).unwrap_or(u64::MAX);
        if offset > expected {
            return Err(FormatError::Gap {
                name: name.to_string(),
                offset,
                expected,
            });
        }
        if offset + length > file_len {
            return Err(FormatError::OutOfBounds {
                name: name.to_string(),
                offset,
                end: offset + length,
                file_len,
            });
        }
        let pad = &bytes[self.previous_end as usize..offset as usize];
        if let Some(i) = pad.iter().position(|&b| b != 0) {
            return Err(FormatError::NonZeroPadding {
                offset: self.previous_end + i as u64,
            });
        }
        self.previous_end = offset + length;
        Ok(())
    }
}

fn overflow(name: &str, what: &str) -> FormatError {
    FormatError::SizeOverflow {
        name: name.to_string(),
        what: what.to_string(),
    }
}

/// R17-R33 for one tensor section.
fn check_tensor(
    bytes: &[u8],
    index: usize,
    s: &SectionEntry,
    alignment: u64,
) -> Result<TensorLayout, FormatError> {
    let name = s.name.as_str();
    let missing = |field: &str| FormatError::InvalidHeader {
        detail: format!("tensor {name:?} has no {field}"),
    };
    let dtype_name = s.dtype.as_deref().ok_or_else(|| missing("dtype"))?;
    let dtype = Dtype::from_name(dtype_name).ok_or_else(|| FormatError::UnknownDtype {
        name: name.to_string(),
        dtype: dtype_name.to_string(),
    })?;
    let shape = s.shape.clone().ok_or_else(|| missing("shape"))?;
    let enc_value = s.encoding.as_ref().ok_or_else(|| missing("encoding"))?;
    check_encoding_keys(name, enc_value)?;
    let encoding: Encoding =
        serde_json::from_value(enc_value.clone()).map_err(|_| FormatError::UnknownEncoding {
            name: name.to_string(),
            detail: enc_value.to_string(),
        })?;
    let parts = s.parts.clone().ok_or_else(|| missing("parts"))?;
    let bad_shape = |detail: &str| FormatError::BadShape {
        name: name.to_string(),
        shape: shape.clone(),
        detail: detail.to_string(),
    };
    if shape.is_empty() || shape.len() > MAX_RANK {
        return Err(bad_shape("rank must be 1 to 4"));
    }
    if shape.iter().any(|&d| d == 0 || d > MAX_DIM) {
        return Err(bad_shape("dimensions must be 1 to 2^31"));
    }
    if !matches!(encoding, Encoding::Dense) && shape.len() != 2 {
        return Err(bad_shape("tile, rows and cols encodings need a 2-D shape"));
    }
    if let Encoding::Tile {
        tile_rows,
        tile_cols,
        ..
    } = encoding
    {
        if !TILE_EDGES.contains(&tile_rows) || !TILE_EDGES.contains(&tile_cols) {
            return Err(FormatError::BadTileShape {
                name: name.to_string(),
                rows: tile_rows,
                cols: tile_cols,
            });
        }
    }
    let expected: Vec<&str> = encoding.part_roles().iter().map(|r| r.name()).collect();
    let found: Vec<&str> = parts.iter().map(|p| p.role.name()).collect();
    if expected != found {
        return Err(FormatError::WrongParts {
            name: name.to_string(),
            expected: expected.iter().map(|s| s.to_string()).collect(),
            found: found.iter().map(|s| s.to_string()).collect(),
        });
    }
    let first = parts.first().map(|p| p.offset).unwrap_or(s.offset);
    if first != s.offset {
        return Err(FormatError::Gap {
            name: format!("{name}/{}", found[0]),
            offset: first,
            expected: s.offset,
        });
    }
    let mut cursor = Cursor {
        previous_end: s.offset,
        alignment,
    };
    let section_bytes = &bytes[..(s.offset + s.length) as usize];
    for p in &parts {
        cursor.place(
            section_bytes,
            &format!("{name}/{}", p.role.name()),
            p.offset,
            p.length,
        )?;
    }
    if cursor.previous_end != s.offset + s.length {
        return Err(FormatError::SectionExtent {
            name: name.to_string(),
            parts_end: cursor.previous_end,
            section_end: s.offset + s.length,
        });
    }
    let layout = TensorLayout {
        section: index,
        dtype,
        shape,
        encoding,
        parts,
    };
    super::validate_data::check_parts(bytes, name, &layout)?;
    Ok(layout)
}

/// The bytes of one part of a validated layout.
pub(crate) fn part_bytes<'a>(
    bytes: &'a [u8],
    layout: &TensorLayout,
    role: PartRole,
) -> (&'a [u8], u64) {
    let p = layout.parts.iter().find(|p| p.role == role);
    match p {
        Some(p) => (
            &bytes[p.offset as usize..(p.offset + p.length) as usize],
            p.length,
        ),
        None => (&[], 0),
    }
}

/// Expected byte length of `count` elements of `size` bytes.
pub(crate) fn bytes_for(name: &str, what: &str, count: u64, size: u64) -> Result<u64, FormatError> {
    count
        .checked_mul(size)
        .filter(|&n| n <= MAX_FILE_LEN)
        .ok_or_else(|| overflow(name, what))
}
