//! Building, walking and densifying tensors in the format's encodings.
//!
//! [`EncodedTensor`] is what a writer stores: an encoding plus its parts as bytes, built from a dense
//! f32 matrix and a keep mask. [`TileView`] is the zero-copy reading side of a `tile` tensor.

use half::{bf16, f16};

use super::error::FormatError;
use super::header::{Dtype, Encoding, PartRole, TileLayout};

/// A tensor ready to be written: dtype, logical shape, encoding and the bytes of each part.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedTensor {
    /// Element type of the values.
    pub dtype: Dtype,
    /// Logical dense shape.
    pub shape: Vec<u64>,
    /// Encoding.
    pub encoding: Encoding,
    /// Parts in the order `encoding.part_roles()` gives.
    pub parts: Vec<(PartRole, Vec<u8>)>,
}

/// Converts f32 values to the little-endian bytes of `dtype` (round to nearest even).
pub fn encode_f32(dtype: Dtype, values: &[f32]) -> Vec<u8> {
    // Bulk paths on little-endian hosts: a plain copy for f32, and half's slice conversion
    // (F16C instructions when the CPU has them) for f16; both far faster than per-value bytes.
    #[cfg(target_endian = "little")]
    match dtype {
        Dtype::F32 => return bytemuck::cast_slice(values).to_vec(),
        Dtype::F16 => {
            use half::slice::HalfFloatSliceExt;
            // Through a small buffer, so a large tensor is not held twice.
            let mut out = Vec::with_capacity(values.len() * 2);
            let mut buf = [f16::ZERO; 4096];
            for chunk in values.chunks(buf.len()) {
                let halves = &mut buf[..chunk.len()];
                halves.convert_from_f32_slice(chunk);
                out.extend_from_slice(bytemuck::cast_slice(halves));
            }
            return out;
        }
        Dtype::Bf16 => {}
    }
    match dtype {
        Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::F16 => values
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect(),
        Dtype::Bf16 => values
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect(),
    }
}

/// Decodes little-endian values of `dtype` into `out` (which must hold `bytes.len() / size` values).
pub fn decode_into(dtype: Dtype, bytes: &[u8], out: &mut [f32]) {
    let size = dtype.size() as usize;
    for (o, chunk) in out.iter_mut().zip(bytes.chunks_exact(size)) {
        *o = match dtype {
            Dtype::F32 => f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]),
            Dtype::F16 => f16::from_le_bytes([chunk[0], chunk[1]]).to_f32(),
            Dtype::Bf16 => bf16::from_le_bytes([chunk[0], chunk[1]]).to_f32(),
        };
    }
}

/// Decodes little-endian values of `dtype` into a new vector.
pub fn decode_f32(dtype: Dtype, bytes: &[u8]) -> Vec<f32> {
    let mut out = vec![0.0; bytes.len() / dtype.size() as usize];
    decode_into(dtype, bytes, &mut out);
    out
}

fn u32_bytes(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn u64_bytes(values: &[u64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn invalid(detail: impl Into<String>) -> FormatError {
    FormatError::InvalidInput {
        detail: detail.into(),
    }
}

fn check_matrix(rows: usize, cols: usize, data: &[f32]) -> Result<(), FormatError> {
    if rows == 0 || cols == 0 || rows.checked_mul(cols) != Some(data.len()) {
        return Err(invalid(format!(
            "matrix {rows}x{cols} needs {} values, got {}",
            rows.saturating_mul(cols),
            data.len()
        )));
    }
    Ok(())
}

fn check_tile(tile_rows: usize, tile_cols: usize) -> Result<(), FormatError> {
    let ok = |e: usize| super::TILE_EDGES.iter().any(|&t| t as usize == e);
    if !ok(tile_rows) || !ok(tile_cols) {
        return Err(invalid(format!(
            "tile {tile_rows}x{tile_cols}: edges must be 8, 16, 32, 64 or 128"
        )));
    }
    Ok(())
}

/// Number of u64 words for `bits` bits.
pub fn words_for(bits: usize) -> usize {
    bits.div_ceil(64)
}

impl EncodedTensor {
    /// A dense tensor of any rank.
    pub fn dense(shape: Vec<u64>, dtype: Dtype, data: &[f32]) -> Result<Self, FormatError> {
        let count = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| invalid("shape product overflows"))?;
        if shape.is_empty() || shape.contains(&0) || count != data.len() as u64 {
            return Err(invalid(format!(
                "shape {shape:?} does not match {} values",
                data.len()
            )));
        }
        Ok(EncodedTensor {
            dtype,
            shape,
            encoding: Encoding::Dense,
            parts: vec![(PartRole::Values, encode_f32(dtype, data))],
        })
    }

    /// A tile tensor: `keep[br * grid_cols + bc]` says whether tile (br, bc) is stored.
    pub fn tile(
        rows: usize,
        cols: usize,
        data: &[f32],
        tile_rows: usize,
        tile_cols: usize,
        keep: &[bool],
        dtype: Dtype,
    ) -> Result<Self, FormatError> {
        check_matrix(rows, cols, data)?;
        check_tile(tile_rows, tile_cols)?;
        let (gr, gc) = (rows.div_ceil(tile_rows), cols.div_ceil(tile_cols));
        if keep.len() != gr * gc {
            return Err(invalid(format!(
                "tile mask has {} entries, the {gr}x{gc} grid needs {}",
                keep.len(),
                gr * gc
            )));
        }
        let mut bitmap = vec![0u64; words_for(gr * gc)];
        let mut row_offsets = Vec::with_capacity(gr + 1);
        row_offsets.push(0u32);
        let mut values = Vec::new();
        let mut tile = vec![0f32; tile_rows * tile_cols];
        for br in 0..gr {
            for bc in 0..gc {
                let t = br * gc + bc;
                if !keep[t] {
                    continue;
                }
                bitmap[t / 64] |= 1 << (t % 64);
                gather_tile(data, rows, cols, br, bc, tile_rows, tile_cols, &mut tile);
                values.extend_from_slice(&tile);
            }
            row_offsets.push((values.len() / (tile_rows * tile_cols)) as u32);
        }
        Ok(EncodedTensor {
            dtype,
            shape: vec![rows as u64, cols as u64],
            encoding: Encoding::Tile {
                tile_rows: tile_rows as u32,
                tile_cols: tile_cols as u32,
                layout: TileLayout::RowMajor,
                element_bitmaps: false,
            },
            parts: vec![
                (PartRole::TileBitmap, u64_bytes(&bitmap)),
                (PartRole::RowOffsets, u32_bytes(&row_offsets)),
                (PartRole::Values, encode_f32(dtype, &values)),
            ],
        })
    }

    /// A tile tensor with per-tile element bitmaps: `keep` has one entry per matrix element; a tile
    /// is stored when it keeps at least one element, and only its kept elements are stored.
    pub fn tile_elements(
        rows: usize,
        cols: usize,
        data: &[f32],
        tile_rows: usize,
        tile_cols: usize,
        keep: &[bool],
        dtype: Dtype,
    ) -> Result<Self, FormatError> {
        check_matrix(rows, cols, data)?;
        check_tile(tile_rows, tile_cols)?;
        if keep.len() != data.len() {
            return Err(invalid("element mask length differs from the matrix"));
        }
        let (gr, gc) = (rows.div_ceil(tile_rows), cols.div_ceil(tile_cols));
        let tile_words = words_for(tile_rows * tile_cols);
        let mut bitmap = vec![0u64; words_for(gr * gc)];
        let mut row_offsets = vec![0u32];
        let mut elem_bitmaps: Vec<u64> = Vec::new();
        let mut elem_offsets = vec![0u32];
        let mut values = Vec::new();
        let mut kept = 0u32;
        for br in 0..gr {
            for bc in 0..gc {
                let mut words = vec![0u64; tile_words];
                let start = values.len();
                for i in 0..tile_rows {
                    let r = br * tile_rows + i;
                    for j in 0..tile_cols {
                        let c = bc * tile_cols + j;
                        if r < rows && c < cols && keep[r * cols + c] {
                            let e = i * tile_cols + j;
                            words[e / 64] |= 1 << (e % 64);
                            values.push(data[r * cols + c]);
                        }
                    }
                }
                if values.len() > start {
                    let t = br * gc + bc;
                    bitmap[t / 64] |= 1 << (t % 64);
                    elem_bitmaps.extend_from_slice(&words);
                    elem_offsets.push(values.len() as u32);
                    kept += 1;
                }
            }
            row_offsets.push(kept);
        }
        Ok(EncodedTensor {
            dtype,
            shape: vec![rows as u64, cols as u64],
            encoding: Encoding::Tile {
                tile_rows: tile_rows as u32,
                tile_cols: tile_cols as u32,
                layout: TileLayout::RowMajor,
                element_bitmaps: true,
            },
            parts: vec![
                (PartRole::TileBitmap, u64_bytes(&bitmap)),
                (PartRole::RowOffsets, u32_bytes(&row_offsets)),
                (PartRole::ElementBitmaps, u64_bytes(&elem_bitmaps)),
                (PartRole::ElementOffsets, u32_bytes(&elem_offsets)),
                (PartRole::Values, encode_f32(dtype, &values)),
            ],
        })
    }

    /// Kept rows: `kept` strictly increasing row indices.
    pub fn rows(
        rows: usize,
        cols: usize,
        data: &[f32],
        kept: &[u32],
        dtype: Dtype,
    ) -> Result<Self, FormatError> {
        check_matrix(rows, cols, data)?;
        check_indices(kept, rows)?;
        let mut values = Vec::with_capacity(kept.len() * cols);
        for &r in kept {
            let r = r as usize;
            values.extend_from_slice(&data[r * cols..(r + 1) * cols]);
        }
        Ok(EncodedTensor {
            dtype,
            shape: vec![rows as u64, cols as u64],
            encoding: Encoding::Rows,
            parts: vec![
                (PartRole::Indices, u32_bytes(kept)),
                (PartRole::Values, encode_f32(dtype, &values)),
            ],
        })
    }

    /// Kept columns: `kept` strictly increasing column indices.
    pub fn cols(
        rows: usize,
        cols: usize,
        data: &[f32],
        kept: &[u32],
        dtype: Dtype,
    ) -> Result<Self, FormatError> {
        check_matrix(rows, cols, data)?;
        check_indices(kept, cols)?;
        let mut values = Vec::with_capacity(kept.len() * rows);
        for r in 0..rows {
            values.extend(kept.iter().map(|&c| data[r * cols + c as usize]));
        }
        Ok(EncodedTensor {
            dtype,
            shape: vec![rows as u64, cols as u64],
            encoding: Encoding::Cols,
            parts: vec![
                (PartRole::Indices, u32_bytes(kept)),
                (PartRole::Values, encode_f32(dtype, &values)),
            ],
        })
    }

    /// Total bytes of all parts (without alignment padding).
    pub fn payload_len(&self) -> u64 {
        self.parts.iter().map(|(_, b)| b.len() as u64).sum()
    }
}

fn check_indices(kept: &[u32], bound: usize) -> Result<(), FormatError> {
    if kept.is_empty() {
        return Err(invalid("rows/cols encoding must keep at least one index"));
    }
    let increasing = kept.windows(2).all(|w| w[0] < w[1]);
    if !increasing || kept.iter().any(|&k| k as usize >= bound) {
        return Err(invalid(format!(
            "kept indices must be strictly increasing and below {bound}"
        )));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn gather_tile(
    data: &[f32],
    rows: usize,
    cols: usize,
    br: usize,
    bc: usize,
    th: usize,
    tw: usize,
    out: &mut [f32],
) {
    for i in 0..th {
        let r = br * th + i;
        for j in 0..tw {
            let c = bc * tw + j;
            out[i * tw + j] = if r < rows && c < cols {
                data[r * cols + c]
            } else {
                0.0
            };
        }
    }
}

/// A validated, zero-copy view of a `tile` tensor inside a mapped file.
#[derive(Debug, Clone, Copy)]
pub struct TileView<'a> {
    /// Logical rows (output features).
    pub rows: usize,
    /// Logical columns (input features).
    pub cols: usize,
    /// Tile height.
    pub tile_rows: usize,
    /// Tile width.
    pub tile_cols: usize,
    /// Block rows of the grid.
    pub grid_rows: usize,
    /// Block columns of the grid.
    pub grid_cols: usize,
    /// Element type of the values.
    pub dtype: Dtype,
    /// Tile-occupancy bitmap.
    pub bitmap: &'a [u64],
    /// Block-row prefix sums (`grid_rows + 1`).
    pub row_offsets: &'a [u32],
    /// Per-kept-tile element bitmaps, when the encoding has them.
    pub element_bitmaps: Option<&'a [u64]>,
    /// Per-kept-tile element prefix sums, when the encoding has them.
    pub element_offsets: Option<&'a [u32]>,
    /// Value bytes.
    pub values: &'a [u8],
    /// File offset of `values` (for device uploads that address the mapped file).
    pub values_offset: u64,
}

impl<'a> TileView<'a> {
    /// Number of stored tiles.
    pub fn kept_tiles(&self) -> usize {
        self.row_offsets.last().copied().unwrap_or(0) as usize
    }

    /// Fraction of grid tiles that are stored.
    pub fn density(&self) -> f64 {
        self.kept_tiles() as f64 / (self.grid_rows * self.grid_cols).max(1) as f64
    }

    /// The kept tiles of one block row: `(kept index, block column)`, left to right.
    pub fn row_tiles(&self, block_row: usize) -> impl Iterator<Item = (usize, usize)> + 'a {
        let gc = self.grid_cols;
        let bitmap = self.bitmap;
        let first = self.row_offsets.get(block_row).copied().unwrap_or(0) as usize;
        let cols = if block_row < self.grid_rows { gc } else { 0 };
        (0..cols)
            .filter(move |bc| {
                let t = block_row * gc + bc;
                bitmap.get(t / 64).is_some_and(|w| w >> (t % 64) & 1 == 1)
            })
            .enumerate()
            .map(move |(i, bc)| (first + i, bc))
    }

    /// Writes kept tile `k` as a dense row-major `tile_rows x tile_cols` block of f32 into `out`;
    /// elements absent from an element bitmap are zero.
    pub fn tile_f32(&self, k: usize, out: &mut [f32]) {
        let area = self.tile_rows * self.tile_cols;
        let size = self.dtype.size() as usize;
        match (self.element_bitmaps, self.element_offsets) {
            (Some(bits), Some(offs)) => {
                out[..area].fill(0.0);
                let words = words_for(area);
                let mut v = offs[k] as usize;
                for e in 0..area {
                    if bits[k * words + e / 64] >> (e % 64) & 1 == 1 {
                        decode_into(
                            self.dtype,
                            &self.values[v * size..(v + 1) * size],
                            &mut out[e..e + 1],
                        );
                        v += 1;
                    }
                }
            }
            _ => decode_into(
                self.dtype,
                &self.values[k * area * size..(k + 1) * area * size],
                &mut out[..area],
            ),
        }
    }

    /// The whole matrix as dense row-major f32 (tests and reference code).
    pub fn to_dense_f32(&self) -> Vec<f32> {
        let (th, tw) = (self.tile_rows, self.tile_cols);
        let mut dense = vec![0f32; self.rows * self.cols];
        let mut tile = vec![0f32; th * tw];
        for br in 0..self.grid_rows {
            for (k, bc) in self.row_tiles(br) {
                self.tile_f32(k, &mut tile);
                for i in 0..th {
                    let r = br * th + i;
                    if r >= self.rows {
                        break;
                    }
                    for j in 0..tw {
                        let c = bc * tw + j;
                        if c < self.cols {
                            dense[r * self.cols + c] = tile[i * tw + j];
                        }
                    }
                }
            }
        }
        dense
    }
}
