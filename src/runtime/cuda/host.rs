//! The CPU half of the CUDA path: building the tile layout a kernel reads and what kernel choice
//! reads from a bitmap. Nothing here needs a GPU.

use half::{bf16, f16};

use super::device::ElemType;

/// A tile-encoded N x K weight in host memory, in exactly the layout of the `.ets` tile encoding
/// (without element bitmaps): bitmap words, block-row prefix sums, kept tiles row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTiles {
    /// Rows (output features).
    pub rows: usize,
    /// Columns (input features).
    pub cols: usize,
    /// Tile height.
    pub th: usize,
    /// Tile width.
    pub tw: usize,
    /// Block rows.
    pub grid_rows: usize,
    /// Block columns.
    pub grid_cols: usize,
    /// Occupancy bitmap, bit t of the grid (row-major) in word t / 64.
    pub bitmap: Vec<u64>,
    /// `grid_rows + 1` prefix sums of kept tiles per block row.
    pub row_offsets: Vec<u32>,
    /// Kept tiles, `th * tw` 16-bit values each (f16 or bf16 bits), zero-padded at the edges.
    pub values: Vec<u16>,
    /// Element type of `values`.
    pub elem: ElemType,
}

/// Fraction of (feature group, tile column) pairs with at least one kept tile, for groups of 64
/// and of 128 output features (`64 / th` and `128 / th` block rows, at least one): the share of the
/// dense work the tile kernel does with each group size.
pub fn union_fractions(bitmap: &[u64], grid_rows: usize, grid_cols: usize, th: usize) -> [f32; 2] {
    [64usize, 128].map(|bn| {
        let unions = group_unions(bitmap, grid_rows, grid_cols, th, bn);
        let pairs = (unions.len() * grid_cols).max(1);
        unions.iter().sum::<usize>() as f32 / pairs as f32
    })
}

/// The tile columns in which each group of `bn` output features (`bn / th` block rows, at least
/// one) keeps at least one tile.
fn group_unions(
    bitmap: &[u64],
    grid_rows: usize,
    grid_cols: usize,
    th: usize,
    bn: usize,
) -> Vec<usize> {
    let bit = |t: usize| bitmap.get(t / 64).is_some_and(|w| (w >> (t % 64)) & 1 == 1);
    let rows = (bn / th.max(1)).max(1);
    (0..grid_rows.div_ceil(rows))
        .map(|g| {
            let (lo, hi) = (g * rows, ((g + 1) * rows).min(grid_rows));
            (0..grid_cols)
                .filter(|&bc| (lo..hi).any(|br| bit(br * grid_cols + bc)))
                .count()
        })
        .collect()
}

/// Largest over mean work of the register-operand kernel's 128-feature groups (1 where all are
/// equal): a group's output tile costs its 64-column stages, over the union of its block rows'
/// tile columns, plus `tile_cost` stages for the epilogue. The kernel balances its persistent runs
/// by this work only where it differs.
pub fn group_work_spread(
    bitmap: &[u64],
    grid_rows: usize,
    grid_cols: usize,
    th: usize,
    tw: usize,
    tile_cost: usize,
) -> f32 {
    let per_stage = (64 / tw.max(1)).max(1);
    let work: Vec<usize> = group_unions(bitmap, grid_rows, grid_cols, th, 128)
        .into_iter()
        .map(|union| union.div_ceil(per_stage) + tile_cost)
        .collect();
    let max = work.iter().copied().max().unwrap_or(0) as f32;
    let mean = work.iter().sum::<usize>() as f32 / work.len().max(1) as f32;
    if mean > 0.0 {
        max / mean
    } else {
        1.0
    }
}

/// Rounds an f32 to the 16-bit type and returns its bits.
pub fn to_bits(elem: ElemType, v: f32) -> u16 {
    match elem {
        ElemType::F16 => f16::from_f32(v).to_bits(),
        ElemType::Bf16 => bf16::from_f32(v).to_bits(),
    }
}

/// Widens 16-bit bits of the type to f32.
pub fn from_bits(elem: ElemType, b: u16) -> f32 {
    match elem {
        ElemType::F16 => f16::from_bits(b).to_f32(),
        ElemType::Bf16 => bf16::from_bits(b).to_f32(),
    }
}

/// Rounds every value through the 16-bit type (what the device sees).
pub fn round_trip(elem: ElemType, v: &[f32]) -> Vec<f32> {
    v.iter()
        .map(|&x| from_bits(elem, to_bits(elem, x)))
        .collect()
}

impl HostTiles {
    /// Encodes a row-major `rows x cols` matrix keeping the tiles where `keep` (grid, row-major) is true.
    pub fn from_dense(
        data: &[f32],
        rows: usize,
        cols: usize,
        th: usize,
        tw: usize,
        keep: &[bool],
        elem: ElemType,
    ) -> Result<Self, String> {
        if th == 0 || tw == 0 {
            return Err("tile edges must be positive".into());
        }
        let (gr, gc) = (rows.div_ceil(th), cols.div_ceil(tw));
        if data.len() != rows * cols || keep.len() != gr * gc {
            return Err(format!(
                "shape mismatch: {} values for {rows}x{cols}, {} mask entries for a {gr}x{gc} grid",
                data.len(),
                keep.len()
            ));
        }
        let mut bitmap = vec![0u64; (gr * gc).div_ceil(64)];
        let mut row_offsets = Vec::with_capacity(gr + 1);
        let mut values = Vec::new();
        row_offsets.push(0u32);
        for br in 0..gr {
            for bc in 0..gc {
                let t = br * gc + bc;
                if !keep[t] {
                    continue;
                }
                bitmap[t / 64] |= 1u64 << (t % 64);
                for i in 0..th {
                    for j in 0..tw {
                        let (r, c) = (br * th + i, bc * tw + j);
                        let v = if r < rows && c < cols {
                            data[r * cols + c]
                        } else {
                            0.0
                        };
                        values.push(to_bits(elem, v));
                    }
                }
            }
            row_offsets.push((values.len() / (th * tw)) as u32);
        }
        Ok(Self {
            rows,
            cols,
            th,
            tw,
            grid_rows: gr,
            grid_cols: gc,
            bitmap,
            row_offsets,
            values,
            elem,
        })
    }

    /// Kept tiles.
    pub fn kept(&self) -> usize {
        self.row_offsets.last().copied().unwrap_or(0) as usize
    }

    /// Fraction of grid tiles kept.
    pub fn density(&self) -> f64 {
        self.kept() as f64 / (self.grid_rows * self.grid_cols).max(1) as f64
    }

    /// The matrix as dense row-major f32 (pruned tiles zero).
    pub fn to_dense_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        let area = self.th * self.tw;
        let mut k = 0usize;
        for br in 0..self.grid_rows {
            for bc in 0..self.grid_cols {
                let t = br * self.grid_cols + bc;
                if self.bitmap[t / 64] >> (t % 64) & 1 == 0 {
                    continue;
                }
                for i in 0..self.th {
                    for j in 0..self.tw {
                        let (r, c) = (br * self.th + i, bc * self.tw + j);
                        if r < self.rows && c < self.cols {
                            out[r * self.cols + c] =
                                from_bits(self.elem, self.values[k * area + i * self.tw + j]);
                        }
                    }
                }
                k += 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Dtype, EncodedTensor, PartRole};
    use ets_testkit::rng::{test_rng, Rng};

    #[test]
    fn layout_matches_the_format_writer() {
        let mut rng = test_rng("layout_matches_the_format_writer");
        for &(rows, cols, th, tw) in &[
            (40usize, 72usize, 16usize, 16usize),
            (64, 64, 32, 32),
            (70, 130, 64, 64),
        ] {
            let data = rng.symmetric_vec(rows * cols, 1.0);
            let keep = rng.mask(rows.div_ceil(th) * cols.div_ceil(tw), 0.4);
            let ours =
                HostTiles::from_dense(&data, rows, cols, th, tw, &keep, ElemType::F16).unwrap();
            let enc = EncodedTensor::tile(rows, cols, &data, th, tw, &keep, Dtype::F16).unwrap();
            let part = |role: PartRole| {
                enc.parts
                    .iter()
                    .find(|(r, _)| *r == role)
                    .map(|(_, b)| b.clone())
                    .unwrap()
            };
            let bitmap: Vec<u8> = ours.bitmap.iter().flat_map(|w| w.to_le_bytes()).collect();
            let offs: Vec<u8> = ours
                .row_offsets
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .collect();
            let vals: Vec<u8> = ours.values.iter().flat_map(|w| w.to_le_bytes()).collect();
            assert_eq!(part(PartRole::TileBitmap), bitmap);
            assert_eq!(part(PartRole::RowOffsets), offs);
            assert_eq!(part(PartRole::Values), vals);
        }
    }

    #[test]
    fn dense_round_trip_zeroes_pruned_tiles_only() {
        let mut rng = test_rng("dense_round_trip_zeroes_pruned_tiles_only");
        let (rows, cols, th, tw) = (33, 50, 16, 16);
        let data = round_trip(ElemType::F16, &rng.symmetric_vec(rows * cols, 2.0));
        let keep = rng.mask(3 * 4, 0.5);
        let t = HostTiles::from_dense(&data, rows, cols, th, tw, &keep, ElemType::F16).unwrap();
        let back = t.to_dense_f32();
        for r in 0..rows {
            for c in 0..cols {
                let kept = keep[(r / th) * 4 + c / tw];
                let want = if kept { data[r * cols + c] } else { 0.0 };
                assert_eq!(back[r * cols + c], want, "({r},{c})");
            }
        }
    }

    #[test]
    fn group_work_spread_is_one_for_equal_groups_and_max_over_mean_otherwise() {
        // 64x64 tiles: two block rows per 128-feature group, 8 tile columns (one per stage).
        let (gr, gc) = (4usize, 8usize);
        let mut keep = vec![false; gr * gc];
        // Group 0: rows keep columns {0, 1} and {1, 2}: union 3. Group 1: column 5 in both: 1.
        for (br, bc) in [(0, 0), (0, 1), (1, 1), (1, 2), (2, 5), (3, 5)] {
            keep[br * gc + bc] = true;
        }
        let h = HostTiles::from_dense(
            &vec![1.0; gr * 64 * gc * 64],
            gr * 64,
            gc * 64,
            64,
            64,
            &keep,
            ElemType::F16,
        )
        .unwrap();
        // Work 3 + 3 and 1 + 3: max 6 over mean 5.
        assert!((group_work_spread(&h.bitmap, gr, gc, 64, 64, 3) - 1.2).abs() < 1e-6);
        // 16x16 tiles, grouped: every group keeps the same number of columns.
        let (gr, gc) = (16usize, 12usize);
        let mut rng = Rng::new(3);
        let mut keep = vec![false; gr * gc];
        for g in 0..gr / 8 {
            let cols = rng.mask(gc, 0.5);
            for br in g * 8..(g + 1) * 8 {
                keep[br * gc..(br + 1) * gc].copy_from_slice(&cols);
            }
        }
        assert_eq!(
            group_work_spread(
                &HostTiles::from_dense(
                    &vec![1.0; gr * 16 * gc * 16],
                    gr * 16,
                    gc * 16,
                    16,
                    16,
                    &keep,
                    ElemType::F16
                )
                .unwrap()
                .bitmap,
                gr,
                gc,
                16,
                16,
                3
            ),
            1.0
        );
        // No kept tile at all: equal (zero-stage) groups.
        assert_eq!(group_work_spread(&[0; 4], gr, gc, 16, 16, 0), 1.0);
    }

    #[test]
    fn union_fractions_match_grouped_and_single_rows() {
        let mut rng = Rng::new(7);
        let (gr, gc) = (24usize, 40usize);
        // Every 8 block rows (128 features of 16-row tiles) share one column pattern: the union
        // over both group sizes is exactly that pattern's density.
        let mut keep = vec![false; gr * gc];
        for g in 0..gr / 8 {
            let cols = rng.mask(gc, 0.25);
            for br in g * 8..g * 8 + 8 {
                keep[br * gc..(br + 1) * gc].copy_from_slice(&cols);
            }
        }
        let w = rng.symmetric_vec(gr * 16 * gc * 16, 1.0);
        let h = HostTiles::from_dense(&w, gr * 16, gc * 16, 16, 16, &keep, ElemType::F16).unwrap();
        let u = union_fractions(&h.bitmap, gr, gc, 16);
        let d = h.density() as f32;
        assert!(
            (u[0] - d).abs() < 1e-6 && (u[1] - d).abs() < 1e-6,
            "{u:?} vs {d}"
        );
        // 64-row tiles with 64-feature groups: the union is the tile density itself.
        let keep = rng.mask(6 * 12, 0.3);
        let w = rng.symmetric_vec(6 * 64 * 12 * 64, 1.0);
        let h = HostTiles::from_dense(&w, 6 * 64, 12 * 64, 64, 64, &keep, ElemType::F16).unwrap();
        let u = union_fractions(&h.bitmap, 6, 12, 64);
        assert!((u[0] - h.density() as f32).abs() < 1e-6);
        assert!(u[1] >= u[0] && u[1] <= (2.0 * u[0]).min(1.0) + 1e-6);
    }
}
