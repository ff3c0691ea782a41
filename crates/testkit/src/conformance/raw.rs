//! A laid-out `.ets` file taken apart for surgery: the header as editable JSON whose offsets are
//! relative to the start of the data, and the data bytes. [`Raw::assemble`] lays it out again
//! (preamble, header, zero padding, data) with a correct header length, file length and digest,
//! so that a mutation breaks only the rule it aims at.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use ets::format::{hex, FormatError, ENDIAN_MARKER, MAGIC, PREAMBLE_LEN, VERSION_MAJOR};

/// Layout alignment of the data start (the writer's alignment).
const LAYOUT_ALIGN: u64 = 256;

/// The header of a [`Raw`] file.
#[derive(Debug, Clone)]
pub enum HeaderForm {
    /// JSON whose section and part offsets are relative to the data start.
    Json(Value),
    /// Exact bytes, written as they are.
    Text(Vec<u8>),
}

/// A file being edited.
#[derive(Debug, Clone)]
pub struct Raw {
    /// Major version written into the preamble.
    pub major: u16,
    /// Minor version written into the preamble.
    pub minor: u16,
    /// The header.
    pub header: HeaderForm,
    /// Everything from the data start to the end of the file.
    pub data: Vec<u8>,
}

/// `v` rounded up to a multiple of `align` (a power of two); `None` on overflow.
fn align_up(v: u64, align: u64) -> Option<u64> {
    v.checked_add(align - 1).map(|x| x & !(align - 1))
}

/// The header digest of the spec: SHA-256 over the preamble bytes before the digest field,
/// then the header.
fn header_digest(preamble: &[u8], header: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(preamble);
    h.update(header);
    h.finalize().into()
}

pub(crate) fn bad(detail: impl Into<String>) -> FormatError {
    FormatError::InvalidInput {
        detail: detail.into(),
    }
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, FormatError> {
    let w: [u8; 8] = b
        .get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| bad("short preamble"))?;
    Ok(u64::from_le_bytes(w))
}

/// Adds `delta` to every section and part offset that is a plain number.
pub(crate) fn shift_offsets(header: &mut Value, delta: i128) {
    let Some(sections) = header.get_mut("sections").and_then(Value::as_array_mut) else {
        return;
    };
    for s in sections {
        shift_one(s, delta);
        if let Some(parts) = s.get_mut("parts").and_then(Value::as_array_mut) {
            parts.iter_mut().for_each(|p| shift_one(p, delta));
        }
    }
}

fn shift_one(obj: &mut Value, delta: i128) {
    if let Some(o) = obj.get_mut("offset") {
        if let Some(v) = o.as_u64() {
            let shifted = (i128::from(v) + delta).clamp(0, i128::from(u64::MAX));
            *o = Value::from(shifted as u64);
        }
    }
}

/// The header's alignment when it is a valid one, else the writer's.
fn layout_align(header: &Value) -> u64 {
    header
        .get("alignment")
        .and_then(Value::as_u64)
        .filter(|a| a.is_power_of_two() && (LAYOUT_ALIGN..=65_536).contains(a))
        .unwrap_or(LAYOUT_ALIGN)
}

impl Raw {
    /// Takes a valid file apart.
    pub fn parse(bytes: &[u8]) -> Result<Raw, FormatError> {
        let header_len = u64_at(bytes, 16)? as usize;
        let text = bytes
            .get(PREAMBLE_LEN as usize..PREAMBLE_LEN as usize + header_len)
            .ok_or_else(|| bad("header past the end"))?;
        let mut header: Value =
            serde_json::from_slice(text).map_err(|e| bad(format!("header: {e}")))?;
        let start = align_up(PREAMBLE_LEN + header_len as u64, layout_align(&header)).unwrap_or(0);
        shift_offsets(&mut header, -i128::from(start));
        let data = bytes.get(start as usize..).unwrap_or(&[]).to_vec();
        Ok(Raw {
            major: VERSION_MAJOR,
            minor: bytes
                .get(10..12)
                .map_or(0, |m| u16::from_le_bytes([m[0], m[1]])),
            header: HeaderForm::Json(header),
            data,
        })
    }

    /// The JSON header (an error for a text header).
    pub fn json(&mut self) -> Result<&mut Value, FormatError> {
        match &mut self.header {
            HeaderForm::Json(v) => Ok(v),
            HeaderForm::Text(_) => Err(bad("header is raw text")),
        }
    }

    /// The section table entry named `name`.
    pub fn section(&mut self, name: &str) -> Result<&mut Map<String, Value>, FormatError> {
        self.json()?
            .get_mut("sections")
            .and_then(Value::as_array_mut)
            .and_then(|s| {
                s.iter_mut()
                    .find(|e| e.get("name") == Some(&Value::from(name)))
            })
            .and_then(Value::as_object_mut)
            .ok_or_else(|| bad(format!("no section {name}")))
    }

    /// The part entry `role` of section `name`.
    pub fn part(&mut self, name: &str, role: &str) -> Result<&mut Map<String, Value>, FormatError> {
        self.section(name)?
            .get_mut("parts")
            .and_then(Value::as_array_mut)
            .and_then(|p| {
                p.iter_mut()
                    .find(|e| e.get("role") == Some(&Value::from(role)))
            })
            .and_then(Value::as_object_mut)
            .ok_or_else(|| bad(format!("no part {name}/{role}")))
    }

    /// `(offset, length)` of a section or part entry (relative offset).
    pub fn extent(entry: &Map<String, Value>) -> Result<(usize, usize), FormatError> {
        let get = |k: &str| {
            entry
                .get(k)
                .and_then(Value::as_u64)
                .ok_or_else(|| bad(k.to_string()))
        };
        Ok((get("offset")? as usize, get("length")? as usize))
    }

    /// The bytes of part `role` of tensor `name`.
    pub fn part_bytes(&mut self, name: &str, role: &str) -> Result<&mut [u8], FormatError> {
        let (off, len) = Self::extent(self.part(name, role)?)?;
        self.data
            .get_mut(off..off + len)
            .ok_or_else(|| bad(format!("part {name}/{role} out of range")))
    }

    /// Inserts `bytes` at relative offset `at`: regions starting at or after `at` move, regions
    /// strictly containing `at` grow.
    pub fn insert(&mut self, at: usize, bytes: &[u8]) -> Result<(), FormatError> {
        let (at64, n) = (at as u64, bytes.len() as u64);
        self.for_each_region(|e| {
            let (Some(off), Some(len)) = (
                e.get("offset").and_then(Value::as_u64),
                e.get("length").and_then(Value::as_u64),
            ) else {
                return;
            };
            if off >= at64 {
                e["offset"] = Value::from(off + n);
            } else if at64 < off + len {
                e["length"] = Value::from(len + n);
            }
        })?;
        if at > self.data.len() {
            return Err(bad("insert past the end"));
        }
        self.data.splice(at..at, bytes.iter().copied());
        Ok(())
    }

    fn for_each_region(&mut self, mut f: impl FnMut(&mut Value)) -> Result<(), FormatError> {
        let sections = self
            .json()?
            .get_mut("sections")
            .and_then(Value::as_array_mut)
            .ok_or_else(|| bad("no sections"))?;
        for s in sections {
            f(s);
            if let Some(parts) = s.get_mut("parts").and_then(Value::as_array_mut) {
                parts.iter_mut().for_each(&mut f);
            }
        }
        Ok(())
    }

    /// Removes `n` bytes at relative offset `at`: later regions move back and regions that
    /// contain the removed range shrink.
    pub fn remove(&mut self, at: usize, n: usize) -> Result<(), FormatError> {
        let (at64, n64) = (at as u64, n as u64);
        self.for_each_region(|e| {
            let (Some(off), Some(len)) = (
                e.get("offset").and_then(Value::as_u64),
                e.get("length").and_then(Value::as_u64),
            ) else {
                return;
            };
            if off >= at64 + n64 {
                e["offset"] = Value::from(off - n64);
            } else if off <= at64 && at64 + n64 <= off + len {
                e["length"] = Value::from(len - n64);
            }
        })?;
        if at + n > self.data.len() {
            return Err(bad("remove past the end"));
        }
        self.data.drain(at..at + n);
        Ok(())
    }

    /// Lays every section and part out again with `alignment` (and records it in the header).
    pub fn relayout(&mut self, alignment: u64) -> Result<(), FormatError> {
        let old = std::mem::take(&mut self.data);
        let mut data: Vec<u8> = Vec::new();
        let copy = |data: &mut Vec<u8>, e: &mut Value, first: bool| -> Result<(), FormatError> {
            let obj = e
                .as_object_mut()
                .ok_or_else(|| bad("entry is not an object"))?;
            let (off, len) = Self::extent(obj)?;
            if !first {
                data.resize(
                    data.len().div_ceil(alignment as usize) * alignment as usize,
                    0,
                );
            }
            obj.insert("offset".into(), Value::from(data.len()));
            data.extend_from_slice(
                old.get(off..off + len)
                    .ok_or_else(|| bad("region out of range"))?,
            );
            Ok(())
        };
        let h = self.json()?;
        h["alignment"] = Value::from(alignment);
        let sections = h
            .get_mut("sections")
            .and_then(Value::as_array_mut)
            .ok_or_else(|| bad("no sections"))?;
        for s in sections {
            data.resize(
                data.len().div_ceil(alignment as usize) * alignment as usize,
                0,
            );
            let start = data.len();
            match s.get_mut("parts").and_then(Value::as_array_mut) {
                Some(parts) => {
                    for (i, p) in parts.iter_mut().enumerate() {
                        copy(&mut data, p, i == 0)?;
                    }
                }
                None => copy(&mut data, s, true)?,
            }
            s["offset"] = Value::from(start);
            s["length"] = Value::from(data.len() - start);
        }
        self.data = data;
        Ok(())
    }

    /// Recomputes every section's `sha256` from the data (sections out of range are left alone).
    pub fn fix_checksums(&mut self) -> Result<(), FormatError> {
        let data = std::mem::take(&mut self.data);
        if let Some(sections) = self
            .json()?
            .get_mut("sections")
            .and_then(Value::as_array_mut)
        {
            for s in sections.iter_mut() {
                let Some(obj) = s.as_object_mut() else {
                    continue;
                };
                let Ok((off, len)) = Self::extent(obj) else {
                    continue;
                };
                if let Some(bytes) = data.get(off..off + len) {
                    obj.insert("sha256".into(), Value::from(hex(&Sha256::digest(bytes))));
                }
            }
        }
        self.data = data;
        Ok(())
    }

    /// Lays the file out: preamble, header, zero padding to the aligned data start, data.
    pub fn assemble(&self) -> Result<Vec<u8>, FormatError> {
        let (text, start) = match &self.header {
            HeaderForm::Text(t) => {
                let start = align_up(PREAMBLE_LEN + t.len() as u64, LAYOUT_ALIGN).unwrap_or(0);
                (t.clone(), start)
            }
            HeaderForm::Json(v) => {
                // Offsets are absolute in the file, and their digits change the header's length.
                let align = layout_align(v);
                let mut start = align_up(PREAMBLE_LEN, align).unwrap_or(0);
                loop {
                    let mut h = v.clone();
                    shift_offsets(&mut h, i128::from(start));
                    let text = serde_json::to_vec(&h).map_err(|e| bad(e.to_string()))?;
                    let needed = align_up(PREAMBLE_LEN + text.len() as u64, align).unwrap_or(0);
                    if needed == start {
                        break (text, start);
                    }
                    start = needed;
                }
            }
        };
        let file_len = if self.data.is_empty() {
            PREAMBLE_LEN + text.len() as u64
        } else {
            start + self.data.len() as u64
        };
        let mut out = Vec::with_capacity(file_len as usize);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.major.to_le_bytes());
        out.extend_from_slice(&self.minor.to_le_bytes());
        out.extend_from_slice(&ENDIAN_MARKER.to_le_bytes());
        out.extend_from_slice(&(text.len() as u64).to_le_bytes());
        out.extend_from_slice(&file_len.to_le_bytes());
        let digest = header_digest(&out, &text);
        out.extend_from_slice(&digest);
        out.extend_from_slice(&text);
        if !self.data.is_empty() {
            out.resize(start as usize, 0);
            out.extend_from_slice(&self.data);
        }
        Ok(out)
    }
}

/// Rewrites preamble field bytes `at..at+8` with `value` and refreshes the digest.
pub fn set_u64(bytes: &mut [u8], at: usize, value: u64) {
    if let Some(field) = bytes.get_mut(at..at.saturating_add(8)) {
        field.copy_from_slice(&value.to_le_bytes());
    }
    refresh_digest(bytes);
}

fn header_len(bytes: &[u8]) -> u64 {
    bytes
        .get(16..24)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// Recomputes the preamble digest from the current preamble and header (when the header lies
/// inside the file).
pub fn refresh_digest(bytes: &mut [u8]) {
    let len = header_len(bytes) as usize;
    let Some(header) = bytes.get(64..64usize.saturating_add(len)) else {
        return;
    };
    let digest = header_digest(&bytes[..32], header);
    bytes[32..64].copy_from_slice(&digest);
}

/// The offset where the data starts in an assembled file.
pub fn data_start(bytes: &[u8]) -> u64 {
    align_up(PREAMBLE_LEN.saturating_add(header_len(bytes)), LAYOUT_ALIGN).unwrap_or(0)
}
