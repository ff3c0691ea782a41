//! Invalid fixtures for the layout and data rules (R22-R36).
//!
//! Tiny example layout, relative to the data start: `T` at 0 (tile_bitmap 0..8, row_offsets
//! 256..268, values 512..1536), `B` at 1536 (values, 64 bytes).

use serde_json::{json, Value};

use super::invalid::{edit, edit_keep_sums, extent, set, Catalog, Res};
use super::model::{TINY_DENSE as B, TINY_TILE as T};
use super::raw::{self, bad, Raw};
use super::Stage;

fn parts_mut<'a>(r: &'a mut Raw, name: &str) -> Res<&'a mut Vec<Value>> {
    r.section(name)?
        .get_mut("parts")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| bad("no parts"))
}

fn u32s(bytes: &mut [u8], values: &[u32]) {
    for (c, v) in bytes.chunks_exact_mut(4).zip(values) {
        c.copy_from_slice(&v.to_le_bytes());
    }
}

fn bump_len(r: &mut Raw, name: &str, role: Option<&str>, delta: i64) -> Res<()> {
    let (_, len) = extent(r, name, role)?;
    set(r, name, role, "length", json!((len as i64 + delta) as u64))
}

impl Catalog {
    /// R22-R26.
    pub(crate) fn layout(&mut self) -> Res<()> {
        let (tiny, small) = (self.tiny.clone(), self.small.clone());
        let b = edit(&small, |r| {
            let (off, len) = extent(r, "tile", None)?;
            r.remove(off - 8, 8)?;
            r.insert(off - 8 + len, &[0; 8])
        })?;
        self.open(
            "r22-section-misaligned",
            "misaligned",
            "a section moved 8 bytes earlier into the padding before it",
            b,
        )?;
        let b = edit(&tiny, |r| {
            r.remove(504, 8)?;
            r.insert(1528, &[0; 8])
        })?;
        self.open(
            "r22-part-misaligned",
            "misaligned",
            "a values part moved 8 bytes earlier into the padding before it",
            b,
        )?;
        let b = edit(&tiny, |r| {
            r.data.truncate(1536);
            set(r, B, None, "offset", json!(512))?;
            set(r, B, Some("values"), "offset", json!(512))
        })?;
        self.open(
            "r23-section-overlap",
            "overlap",
            "a section whose bytes lie inside the previous section",
            b,
        )?;
        let b = edit(&tiny, |r| {
            set(r, T, Some("row_offsets"), "offset", json!(0))
        })?;
        self.open_note(
            "r23-part-overlap",
            "overlap",
            "row_offsets at the same offset as tile_bitmap",
            "the values part then also leaves a gap (R24)",
            b,
        )?;
        let hidden: Vec<u8> = b"HIDDEN!!".iter().copied().cycle().take(256).collect();
        let b = edit(&tiny, |r| r.insert(1536, &hidden))?;
        self.open(
            "r24-gap-hidden-bytes",
            "gap",
            "256 non-zero bytes hidden between two sections",
            b,
        )?;
        let b = edit(&tiny, |r| r.insert(512, &[0; 256]))?;
        self.open(
            "r24-part-gap",
            "gap",
            "256 zero bytes between two parts of a tensor",
            b,
        )?;
        let b = edit(&tiny, |r| {
            r.insert(0, &[0; 256])?;
            set(r, T, None, "offset", json!(0))?;
            bump_len(r, T, None, 256)
        })?;
        self.open(
            "r24-first-part-after-section-start",
            "gap",
            "a tensor's first part starts 256 bytes into its section",
            b,
        )?;
        let b = edit(&tiny, |r| r.insert(0, &[0; 256]))?;
        self.open(
            "r24-gap-after-header",
            "gap",
            "the first section starts 256 bytes after the aligned end of the header",
            b,
        )?;
        let b = edit(&tiny, |r| bump_len(r, B, None, 256))?;
        self.open_note(
            "r25-section-past-eof",
            "out_of_bounds",
            "the last section's length runs 256 bytes past the end",
            "its parts then also end before the section (R29)",
            b,
        )?;
        let b = edit(&tiny, |r| bump_len(r, T, Some("values"), 256))?;
        self.open_note(
            "r25-part-past-section",
            "out_of_bounds",
            "a part runs 256 bytes past the end of its section",
            "its length then also disagrees with the shape (R28)",
            b,
        )?;
        let b = edit(&tiny, |r| {
            r.data.push(0);
            Ok(())
        })?;
        self.open(
            "r26-trailing-zero-byte",
            "trailing_bytes",
            "one zero byte after the last section (file length updated)",
            b,
        )?;
        let b = edit(&tiny, |r| {
            r.data.extend_from_slice(&[0xab; 256]);
            Ok(())
        })?;
        self.open(
            "r26-trailing-256-bytes",
            "trailing_bytes",
            "256 bytes after the last section (file length updated)",
            b,
        )?;
        Ok(())
    }

    /// R27-R29.
    pub(crate) fn parts(&mut self) -> Res<()> {
        let (tiny, small) = (self.tiny.clone(), self.small.clone());
        let b = edit(&tiny, |r| {
            parts_mut(r, T)?.remove(1);
            Ok(())
        })?;
        self.open(
            "r27-tile-missing-row-offsets",
            "wrong_parts",
            "a tile tensor without its row_offsets part",
            b,
        )?;
        let b = edit(&tiny, |r| {
            parts_mut(r, T)?.swap(0, 1);
            Ok(())
        })?;
        self.open(
            "r27-parts-reordered",
            "wrong_parts",
            "tile_bitmap and row_offsets listed in swapped order",
            b,
        )?;
        let b = edit(&tiny, |r| {
            parts_mut(r, B)?.push(json!({"role": "indices", "offset": 1600, "length": 0}));
            Ok(())
        })?;
        self.open(
            "r27-dense-extra-part",
            "wrong_parts",
            "a dense tensor with an extra indices part",
            b,
        )?;
        let b = edit(&small, |r| {
            parts_mut(r, "rows")?.reverse();
            Ok(())
        })?;
        self.open(
            "r27-rows-parts-reversed",
            "wrong_parts",
            "a rows tensor listing values before indices",
            b,
        )?;
        let b = edit(&tiny, |r| {
            parts_mut(r, B)?.clear();
            Ok(())
        })?;
        self.open(
            "r27-no-parts",
            "wrong_parts",
            "a dense tensor with an empty parts list",
            b,
        )?;
        let b = edit(&tiny, |r| r.remove(1598, 2))?;
        self.open(
            "r28-dense-values-short",
            "part_length",
            "dense values one f16 element short (section shortened too)",
            b,
        )?;
        let b = edit(&tiny, |r| {
            set(r, T, Some("tile_bitmap"), "length", json!(16))
        })?;
        self.open(
            "r28-tile-bitmap-16-bytes",
            "part_length",
            "a one-word tile bitmap declared as 16 bytes",
            b,
        )?;
        let b = edit(&tiny, |r| {
            set(r, T, Some("row_offsets"), "length", json!(16))
        })?;
        self.open(
            "r28-row-offsets-16-bytes",
            "part_length",
            "row_offsets declared with 4 entries for a 2-row grid",
            b,
        )?;
        let b = edit(&small, |r| {
            set(r, "rows", Some("indices"), "length", json!(6))
        })?;
        self.open(
            "r28-indices-6-bytes",
            "part_length",
            "an indices part that is not a whole number of u32",
            b,
        )?;
        let b = edit(&small, |r| {
            let (off, len) = extent(r, "elements", None)?;
            r.remove(off + len - 2, 2)?;
            r.insert(off + len - 2, &[0; 2])
        })?;
        self.open(
            "r28-elements-values-short",
            "part_length",
            "element-bitmap values one element short",
            b,
        )?;
        let b = edit(&small, |r| {
            bump_len(r, "cols", Some("values"), 4)?;
            bump_len(r, "cols", None, 4)
        })?;
        self.open(
            "r28-cols-values-long",
            "part_length",
            "cols values 4 bytes longer than the compacted matrix",
            b,
        )?;
        let b = edit(&tiny, |r| {
            r.data.extend_from_slice(&[0; 2]);
            bump_len(r, B, None, 2)
        })?;
        self.open(
            "r29-section-longer-than-parts",
            "section_extent",
            "the last section 2 bytes longer than its parts",
            b,
        )?;
        let b = edit(&tiny, |r| {
            r.insert(1536, &[0; 256])?;
            bump_len(r, T, None, 256)
        })?;
        self.open(
            "r29-tile-section-longer",
            "section_extent",
            "a tile section 256 bytes longer than its parts",
            b,
        )?;
        Ok(())
    }

    /// R30-R33.
    pub(crate) fn index_arrays(&mut self) -> Res<()> {
        let (tiny, small) = (self.tiny.clone(), self.small.clone());
        let bitmap = |word: u64| {
            move |r: &mut Raw| -> Res<()> {
                r.part_bytes(T, "tile_bitmap")?
                    .copy_from_slice(&word.to_le_bytes());
                Ok(())
            }
        };
        let b = edit(&tiny, bitmap(0b1001 | 1 << 63))?;
        self.open_note(
            "r30-tile-bitmap-padding-bit",
            "bitmap_padding",
            "bit 63 set in the bitmap of a 4-tile grid",
            "the bit also counts in the popcount (R31)",
            b,
        )?;
        let b = edit(&small, |r| {
            set(r, "elements", None, "shape", json!([17, 17]))
        })?;
        self.open(
            "r30-element-outside-matrix",
            "bitmap_padding",
            "a 20x20 element-bitmap tensor relabelled 17x17: kept elements lie outside the matrix",
            b,
        )?;
        let b = edit(&tiny, bitmap(0b0001))?;
        self.open_note(
            "r31-bitmap-bit-cleared",
            "popcount_mismatch",
            "a kept tile's bit cleared, row offsets unchanged",
            "the row offsets (R32) and values length (R28) then disagree too",
            b,
        )?;
        let b = edit(&tiny, bitmap(0b1011))?;
        self.open_note(
            "r31-bitmap-extra-bit",
            "popcount_mismatch",
            "an extra tile bit set, row offsets unchanged",
            "the row offsets (R32) and values length (R28) then disagree too",
            b,
        )?;
        let offsets = |v: [u32; 3]| {
            move |r: &mut Raw| -> Res<()> {
                u32s(r.part_bytes(T, "row_offsets")?, &v);
                Ok(())
            }
        };
        let b = edit(&tiny, offsets([0, 2, 2]))?;
        self.open(
            "r32-row-offsets-middle",
            "offsets_mismatch",
            "row_offsets [0, 2, 2] for kept tiles in rows 0 and 1",
            b,
        )?;
        let b = edit(&tiny, offsets([1, 1, 2]))?;
        self.open(
            "r32-row-offsets-first-nonzero",
            "offsets_mismatch",
            "row_offsets starting at 1",
            b,
        )?;
        let b = edit(&small, |r| {
            let bytes = r.part_bytes("elements", "element_offsets")?;
            let v = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) + 1;
            bytes[4..8].copy_from_slice(&v.to_le_bytes());
            Ok(())
        })?;
        self.open(
            "r32-element-offsets-middle",
            "offsets_mismatch",
            "element_offsets[1] one too large",
            b,
        )?;
        let b = edit(&small, |r| {
            let bytes = r.part_bytes("elements", "element_offsets")?;
            let n = bytes.len();
            let v =
                u32::from_le_bytes([bytes[n - 4], bytes[n - 3], bytes[n - 2], bytes[n - 1]]) + 1;
            bytes[n - 4..].copy_from_slice(&v.to_le_bytes());
            Ok(())
        })?;
        self.open(
            "r32-element-offsets-last",
            "offsets_mismatch",
            "the last element offset one too large",
            b,
        )?;
        for (name, sec, v, what) in [
            (
                "r33-rows-not-increasing",
                "rows",
                vec![4u32, 1],
                "row indices [4, 1]",
            ),
            (
                "r33-rows-duplicate",
                "rows",
                vec![4, 4],
                "row indices [4, 4]",
            ),
            (
                "r33-cols-out-of-range",
                "cols",
                vec![0, 2, 6],
                "column index 6 of 6 columns",
            ),
        ] {
            let b = edit(&small, |r| {
                u32s(r.part_bytes(sec, "indices")?, &v);
                Ok(())
            })?;
            self.open(name, "bad_indices", what, b)?;
        }
        Ok(())
    }

    /// R34-R36.
    pub(crate) fn padding_and_checksums(&mut self) -> Res<()> {
        let (tiny, small) = (self.tiny.clone(), self.small.clone());
        let mut b = tiny.clone();
        let header_end = 64 + u64::from_le_bytes(b[16..24].try_into().unwrap_or([0; 8])) as usize;
        if header_end >= raw::data_start(&b) as usize {
            return Err(bad("no padding after the tiny example's header"));
        }
        b[header_end] = 0x01;
        self.open(
            "r34-padding-after-header",
            "nonzero_padding",
            "the first padding byte after the header is 0x01",
            b,
        )?;
        let b = edit(&small, |r| {
            r.data[100] = 0x01;
            Ok(())
        })?;
        self.open(
            "r34-padding-between-sections",
            "nonzero_padding",
            "a padding byte between two sections is 0x01",
            b,
        )?;
        let b = edit(&tiny, |r| {
            r.data[8] = 0xff;
            Ok(())
        })?;
        self.open(
            "r34-padding-between-parts",
            "nonzero_padding",
            "a padding byte between two parts is 0xff (the section checksum is updated)",
            b,
        )?;
        let verify = |c: &mut Catalog, name: &str, what: &str, b: Vec<u8>| {
            c.add(name, "checksum_mismatch", Stage::Verify, what, None, b)
        };
        let b = edit_keep_sums(&tiny, |r| {
            r.data[512] ^= 0x01;
            Ok(())
        })?;
        verify(
            self,
            "r35-tile-value-flipped",
            "the low bit of the first tile value flipped",
            b,
        )?;
        let b = edit_keep_sums(&tiny, |r| {
            r.data[1599] ^= 0x80;
            Ok(())
        })?;
        verify(
            self,
            "r35-dense-sign-flipped",
            "the sign of the last dense value flipped",
            b,
        )?;
        let b = edit_keep_sums(&small, |r| {
            let (off, _) = extent(r, "tokenizer", None)?;
            r.data[off] = b'{';
            Ok(())
        })?;
        verify(
            self,
            "r35-tokenizer-byte-changed",
            "the first tokenizer byte changed",
            b,
        )?;
        let b = edit_keep_sums(&tiny, |r| set(r, B, None, "sha256", json!("0".repeat(64))))?;
        verify(
            self,
            "r35-recorded-digest-zero",
            "a recorded digest of 64 zeros",
            b,
        )?;
        for (name, f, what) in [
            (
                "r36-uppercase-hex",
                0usize,
                "a recorded digest in uppercase hex",
            ),
            ("r36-63-digits", 1, "a recorded digest of 63 hex digits"),
            ("r36-non-hex-digit", 2, "a recorded digest with a g"),
            ("r36-empty", 3, "an empty recorded digest"),
        ] {
            let b = edit_keep_sums(&tiny, |r| {
                let s = r.section(B)?;
                let sum = s
                    .get("sha256")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let new = match f {
                    0 => sum.to_uppercase(),
                    1 => sum[..63].to_string(),
                    2 => format!("g{}", &sum[1..]),
                    _ => String::new(),
                };
                s.insert("sha256".into(), json!(new));
                Ok(())
            })?;
            self.open(name, "bad_checksum_string", what, b)?;
        }
        Ok(())
    }
}
