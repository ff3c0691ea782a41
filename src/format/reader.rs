//! Opening a `.ets` file: map it, check every structural rule of the spec, then hand out zero-copy
//! views. Opening reads the preamble, the header and the index arrays (bitmaps, offsets,
//! indices) but never the values, so its cost follows the header, not the file size. Checksums
//! of the data are verified on demand with [`EtsFile::verify_checksums`].

use std::fs::File;
use std::path::Path;

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::error::FormatError;
use super::header::{Dtype, Encoding, Header, ModelConfig, PartRole, SectionEntry};
use super::tiles::{decode_f32, TileView};
use super::validate::{self, TensorLayout};

/// The bytes behind a file: a read-only mapping, or an owned 8-byte-aligned buffer.
enum Backing {
    Map(memmap2::Mmap),
    Owned { words: Vec<u64>, len: usize },
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Map(m) => m,
            Backing::Owned { words, len } => &bytemuck::cast_slice(words)[..*len],
        }
    }
}

/// A validated `.ets` file.
pub struct EtsFile {
    backing: Backing,
    header: Header,
    minor: u16,
    tensors: Vec<TensorLayout>,
}

/// A non-tensor section (such as the tokenizer) and its bytes.
#[derive(Debug, Clone, Copy)]
pub struct SectionView<'a> {
    /// The header entry.
    pub entry: &'a SectionEntry,
    /// The section's bytes.
    pub bytes: &'a [u8],
}

/// The stored data of one tensor.
#[derive(Debug, Clone, Copy)]
pub enum TensorData<'a> {
    /// Row-major values.
    Dense {
        /// Value bytes.
        values: &'a [u8],
    },
    /// Tile encoding, with or without element bitmaps.
    Tile(TileView<'a>),
    /// Kept rows and the compacted `[indices.len(), cols]` matrix.
    Rows {
        /// Kept row indices.
        indices: &'a [u32],
        /// Value bytes.
        values: &'a [u8],
    },
    /// Kept columns and the compacted `[rows, indices.len()]` matrix.
    Cols {
        /// Kept column indices.
        indices: &'a [u32],
        /// Value bytes.
        values: &'a [u8],
    },
}

/// A zero-copy view of one tensor.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    /// Canonical name.
    pub name: &'a str,
    /// Element type.
    pub dtype: Dtype,
    /// Logical dense shape.
    pub shape: &'a [u64],
    /// Encoding.
    pub encoding: Encoding,
    /// File offset of the section.
    pub offset: u64,
    /// Section length in bytes.
    pub length: u64,
    /// The parts.
    pub data: TensorData<'a>,
}

impl TensorView<'_> {
    /// Number of logical elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product::<u64>() as usize
    }

    /// Rows and columns of a 2-D tensor (a 1-D tensor is one row).
    pub fn matrix_dims(&self) -> (usize, usize) {
        match self.shape {
            [c] => (1, *c as usize),
            [r, c] => (*r as usize, *c as usize),
            _ => (1, self.numel()),
        }
    }

    /// Fraction of the logical elements that are stored (tiles count whole for `tile`).
    pub fn density(&self) -> f64 {
        let (rows, cols) = self.matrix_dims();
        match self.data {
            TensorData::Dense { .. } => 1.0,
            TensorData::Tile(t) => t.density(),
            TensorData::Rows { indices, .. } => indices.len() as f64 / rows.max(1) as f64,
            TensorData::Cols { indices, .. } => indices.len() as f64 / cols.max(1) as f64,
        }
    }

    /// The tensor as dense row-major f32 (tests and reference code; allocates the full matrix).
    pub fn to_dense_f32(&self) -> Vec<f32> {
        let (rows, cols) = self.matrix_dims();
        match self.data {
            TensorData::Dense { values } => decode_f32(self.dtype, values),
            TensorData::Tile(t) => t.to_dense_f32(),
            TensorData::Rows { indices, values } => {
                let compact = decode_f32(self.dtype, values);
                let mut dense = vec![0f32; rows * cols];
                for (i, &r) in indices.iter().enumerate() {
                    let r = r as usize;
                    dense[r * cols..(r + 1) * cols]
                        .copy_from_slice(&compact[i * cols..(i + 1) * cols]);
                }
                dense
            }
            TensorData::Cols { indices, values } => {
                let compact = decode_f32(self.dtype, values);
                let kept = indices.len();
                let mut dense = vec![0f32; rows * cols];
                for r in 0..rows {
                    for (j, &c) in indices.iter().enumerate() {
                        dense[r * cols + c as usize] = compact[r * kept + j];
                    }
                }
                dense
            }
        }
    }
}

impl EtsFile {
    /// Maps `path` and validates its structure (not the data checksums).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, FormatError> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| FormatError::io(path, e))?;
        let len = file.metadata().map_err(|e| FormatError::io(path, e))?.len();
        if len < super::PREAMBLE_LEN {
            return Err(FormatError::TooShort { len });
        }
        // SAFETY: the mapping is read-only; the format's contract is that a file is not modified
        // while it is open (as with every mapped-file format). All reads go through bounds checks.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| FormatError::io(path, e))?;
        Self::from_backing(Backing::Map(map))
    }

    /// Validates an in-memory file (copied into an aligned buffer).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        Self::from_backing(Backing::Owned {
            words,
            len: bytes.len(),
        })
    }

    fn from_backing(backing: Backing) -> Result<Self, FormatError> {
        let checked = validate::validate(backing.bytes())?;
        Ok(EtsFile {
            backing,
            header: checked.header,
            minor: checked.minor,
            tensors: checked.tensors,
        })
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        self.backing.bytes()
    }

    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The minor version of the file.
    pub fn minor_version(&self) -> u16 {
        self.minor
    }

    /// The model configuration.
    pub fn model(&self) -> &ModelConfig {
        &self.header.model
    }

    /// All tensors in file order.
    pub fn tensors(&self) -> impl Iterator<Item = TensorView<'_>> {
        self.tensors.iter().map(move |t| self.view(t))
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>, FormatError> {
        self.tensors
            .iter()
            .find(|t| self.header.sections[t.section].name == name)
            .map(|t| self.view(t))
            .ok_or_else(|| FormatError::MissingTensor {
                name: name.to_string(),
            })
    }

    /// Whether a tensor named `name` exists.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.tensor(name).is_ok()
    }

    /// A section of any kind by name.
    pub fn section(&self, name: &str) -> Option<SectionView<'_>> {
        let entry = self.header.sections.iter().find(|s| s.name == name)?;
        Some(SectionView {
            entry,
            bytes: self.range(entry.offset, entry.length),
        })
    }

    fn range(&self, offset: u64, length: u64) -> &[u8] {
        // Validation proved every section and part lies inside the file.
        &self.bytes()[offset as usize..(offset + length) as usize]
    }

    fn part(&self, t: &TensorLayout, role: PartRole) -> (&[u8], u64) {
        let p = t
            .parts
            .iter()
            .find(|p| p.role == role)
            .expect("validated tensors have every part of their encoding");
        (self.range(p.offset, p.length), p.offset)
    }

    fn words<T: bytemuck::Pod>(&self, t: &TensorLayout, role: PartRole) -> &[T] {
        // Parts start on 256-byte boundaries of an 8-byte-aligned buffer and have whole-word
        // lengths (checked by validation), so the cast cannot fail.
        bytemuck::cast_slice(self.part(t, role).0)
    }

    fn view<'a>(&'a self, t: &'a TensorLayout) -> TensorView<'a> {
        let entry = &self.header.sections[t.section];
        let values = self.part(t, PartRole::Values);
        let data = match t.encoding {
            Encoding::Dense => TensorData::Dense { values: values.0 },
            Encoding::Rows => TensorData::Rows {
                indices: self.words(t, PartRole::Indices),
                values: values.0,
            },
            Encoding::Cols => TensorData::Cols {
                indices: self.words(t, PartRole::Indices),
                values: values.0,
            },
            Encoding::Tile {
                tile_rows,
                tile_cols,
                element_bitmaps,
                ..
            } => {
                let (rows, cols) = (t.shape[0] as usize, t.shape[1] as usize);
                let (th, tw) = (tile_rows as usize, tile_cols as usize);
                TensorData::Tile(TileView {
                    rows,
                    cols,
                    tile_rows: th,
                    tile_cols: tw,
                    grid_rows: rows.div_ceil(th),
                    grid_cols: cols.div_ceil(tw),
                    dtype: t.dtype,
                    bitmap: self.words(t, PartRole::TileBitmap),
                    row_offsets: self.words(t, PartRole::RowOffsets),
                    element_bitmaps: element_bitmaps
                        .then(|| self.words(t, PartRole::ElementBitmaps)),
                    element_offsets: element_bitmaps
                        .then(|| self.words(t, PartRole::ElementOffsets)),
                    values: values.0,
                    values_offset: values.1,
                })
            }
        };
        TensorView {
            name: &entry.name,
            dtype: t.dtype,
            shape: &t.shape,
            encoding: t.encoding,
            offset: entry.offset,
            length: entry.length,
            data,
        }
    }

    /// Checks one section's SHA-256.
    pub fn verify_section(&self, name: &str) -> Result<(), FormatError> {
        let entry = self
            .header
            .sections
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| FormatError::MissingTensor {
                name: name.to_string(),
            })?;
        self.verify_entry(entry)
    }

    fn verify_entry(&self, entry: &SectionEntry) -> Result<(), FormatError> {
        let actual = hex(&Sha256::digest(self.range(entry.offset, entry.length)));
        if actual != entry.sha256 {
            return Err(FormatError::ChecksumMismatch {
                name: entry.name.clone(),
                expected: entry.sha256.clone(),
                actual,
            });
        }
        Ok(())
    }

    /// Checks every section's SHA-256, sections in parallel. The first mismatch in file order is
    /// reported. Together with the structural checks of `open` and the header digest, this covers
    /// every byte of the file.
    pub fn verify_checksums(&self) -> Result<(), FormatError> {
        let results: Vec<Result<(), FormatError>> = self
            .header
            .sections
            .par_iter()
            .map(|e| self.verify_entry(e))
            .collect();
        results.into_iter().collect()
    }
}

/// Lowercase hex of a digest, as the header stores SHA-256 values.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
