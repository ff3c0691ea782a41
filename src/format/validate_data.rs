//! Rules on the index arrays of a tensor (R28, R30-R33): part lengths agree with the shape and the
//! encoding, bitmaps agree with their prefix sums, indices are in range and increasing. These read
//! only index arrays, never values.

use super::error::FormatError;
use super::header::{Encoding, PartRole};
use super::tiles::words_for as tile_words;
use super::validate::{bytes_for, part_bytes, TensorLayout};

fn le_u32s(b: &[u8]) -> impl Iterator<Item = u32> + '_ {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

fn le_u64s(b: &[u8]) -> impl Iterator<Item = u64> + '_ {
    b.chunks_exact(8).map(|c| {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        u64::from_le_bytes(w)
    })
}

fn expect_len(name: &str, role: PartRole, actual: u64, expected: u64) -> Result<(), FormatError> {
    if actual != expected {
        return Err(FormatError::PartLength {
            name: name.to_string(),
            role: role.name().to_string(),
            expected,
            actual,
        });
    }
    Ok(())
}

/// Checks the parts of a tensor whose section layout is already valid.
pub(crate) fn check_parts(bytes: &[u8], name: &str, t: &TensorLayout) -> Result<(), FormatError> {
    let size = t.dtype.size();
    let numel = t
        .shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .ok_or_else(|| FormatError::SizeOverflow {
            name: name.to_string(),
            what: "shape product".into(),
        })?;
    let (values, values_len) = part_bytes(bytes, t, PartRole::Values);
    let _ = values;
    match t.encoding {
        Encoding::Dense => expect_len(
            name,
            PartRole::Values,
            values_len,
            bytes_for(name, "values", numel, size)?,
        ),
        Encoding::Rows | Encoding::Cols => {
            let (rows, cols) = (t.shape[0], t.shape[1]);
            let (bound, other) = if t.encoding == Encoding::Rows {
                (rows, cols)
            } else {
                (cols, rows)
            };
            let (idx, idx_len) = part_bytes(bytes, t, PartRole::Indices);
            if idx_len == 0 || idx_len % 4 != 0 || idx_len / 4 > bound {
                return Err(FormatError::PartLength {
                    name: name.to_string(),
                    role: "indices".into(),
                    expected: bound * 4,
                    actual: idx_len,
                });
            }
            let mut previous: Option<u32> = None;
            for (position, v) in le_u32s(idx).enumerate() {
                if u64::from(v) >= bound || previous.is_some_and(|p| v <= p) {
                    return Err(FormatError::BadIndices {
                        name: name.to_string(),
                        position,
                        value: v.into(),
                        bound,
                    });
                }
                previous = Some(v);
            }
            let count = bytes_for(name, "compacted matrix", idx_len / 4, other)?;
            expect_len(
                name,
                PartRole::Values,
                values_len,
                bytes_for(name, "values", count, size)?,
            )
        }
        Encoding::Tile {
            tile_rows,
            tile_cols,
            element_bitmaps,
            ..
        } => check_tile(
            bytes,
            name,
            t,
            (u64::from(tile_rows), u64::from(tile_cols)),
            element_bitmaps,
            values_len,
        ),
    }
}

fn check_tile(
    bytes: &[u8],
    name: &str,
    t: &TensorLayout,
    (th, tw): (u64, u64),
    element_bitmaps: bool,
    values_len: u64,
) -> Result<(), FormatError> {
    let size = t.dtype.size();
    let (rows, cols) = (t.shape[0], t.shape[1]);
    let (gr, gc) = (rows.div_ceil(th), cols.div_ceil(tw));
    let tiles = gr * gc; // both below 2^31, so no overflow
    let (bitmap, bitmap_len) = part_bytes(bytes, t, PartRole::TileBitmap);
    expect_len(
        name,
        PartRole::TileBitmap,
        bitmap_len,
        tile_words(tiles as usize) as u64 * 8,
    )?;
    let (offsets, offsets_len) = part_bytes(bytes, t, PartRole::RowOffsets);
    expect_len(name, PartRole::RowOffsets, offsets_len, (gr + 1) * 4)?;
    let words: Vec<u64> = le_u64s(bitmap).collect();
    let bit = |i: u64| words[(i / 64) as usize] >> (i % 64) & 1 == 1;
    if (tiles..words.len() as u64 * 64).any(bit) {
        return Err(FormatError::BitmapPadding {
            name: name.to_string(),
            what: "tile_bitmap".into(),
        });
    }
    let popcount: u64 = words.iter().map(|w| u64::from(w.count_ones())).sum();
    let row_offsets: Vec<u32> = le_u32s(offsets).collect();
    let declared = u64::from(row_offsets[gr as usize]);
    if popcount != declared {
        return Err(FormatError::PopcountMismatch {
            name: name.to_string(),
            bitmap: popcount,
            declared,
        });
    }
    let mut running = 0u64;
    for br in 0..=gr {
        if u64::from(row_offsets[br as usize]) != running {
            return Err(FormatError::OffsetsMismatch {
                name: name.to_string(),
                what: "row_offsets".into(),
                index: br as usize,
                found: row_offsets[br as usize].into(),
                expected: running,
            });
        }
        if br < gr {
            running += (br * gc..(br + 1) * gc).filter(|&i| bit(i)).count() as u64;
        }
    }
    let area = th * tw;
    if !element_bitmaps {
        let count = bytes_for(name, "values", popcount, area)?;
        return expect_len(
            name,
            PartRole::Values,
            values_len,
            bytes_for(name, "values", count, size)?,
        );
    }
    let per_tile = tile_words(area as usize) as u64;
    let (ebits, ebits_len) = part_bytes(bytes, t, PartRole::ElementBitmaps);
    expect_len(
        name,
        PartRole::ElementBitmaps,
        ebits_len,
        bytes_for(name, "element bitmaps", popcount, per_tile * 8)?,
    )?;
    let (eoffs, eoffs_len) = part_bytes(bytes, t, PartRole::ElementOffsets);
    expect_len(
        name,
        PartRole::ElementOffsets,
        eoffs_len,
        bytes_for(name, "element offsets", popcount + 1, 4)?,
    )?;
    let ewords: Vec<u64> = le_u64s(ebits).collect();
    let elem_offsets: Vec<u32> = le_u32s(eoffs).collect();
    // The grid position of each kept tile, to know which of its elements lie inside the matrix.
    let kept_positions = (0..tiles).filter(|&i| bit(i));
    let mut running = 0u64;
    for (k, tile) in kept_positions.enumerate() {
        if u64::from(elem_offsets[k]) != running {
            return Err(FormatError::OffsetsMismatch {
                name: name.to_string(),
                what: "element_offsets".into(),
                index: k,
                found: elem_offsets[k].into(),
                expected: running,
            });
        }
        let (br, bc) = (tile / gc, tile % gc);
        let tile_words = &ewords[k * per_tile as usize..(k + 1) * per_tile as usize];
        let valid_rows = (rows - br * th).min(th);
        let valid_cols = (cols - bc * tw).min(tw);
        for (w, &word) in tile_words.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let e = w as u64 * 64 + u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                if e >= area || e / tw >= valid_rows || e % tw >= valid_cols {
                    return Err(FormatError::BitmapPadding {
                        name: name.to_string(),
                        what: format!("element bitmap of kept tile {k}"),
                    });
                }
            }
            running += u64::from(word.count_ones());
        }
    }
    let last = u64::from(elem_offsets[popcount as usize]);
    if last != running {
        return Err(FormatError::OffsetsMismatch {
            name: name.to_string(),
            what: "element_offsets".into(),
            index: popcount as usize,
            found: last,
            expected: running,
        });
    }
    expect_len(
        name,
        PartRole::Values,
        values_len,
        bytes_for(name, "values", running, size)?,
    )
}
