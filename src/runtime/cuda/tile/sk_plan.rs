//! The split kernel's plan (kernels/tile_sk.cu), computed once on the host from the bitmap when a
//! weight is uploaded.
//!
//! The kernel's unit of work is a run of at most [`SK_MAX_STEPS`] 16-column steps (at most eight
//! kept tiles) of one block row, for one 16-feature slice of that row (a block row of `th` rows
//! has `th / 16` slices, each reading its own rows of the same tiles). A slice's kept tiles are
//! cut into the fewest units that respect that bound, of sizes differing by at most one tile, so
//! every unit of the weight carries about the same work and no warp walks a long row alone. A
//! slice that keeps no tile still gets one (empty) unit: its outputs are the epilogue of zero.
//!
//! Layout (little-endian), [`SK_UNIT_BYTES`] per unit, units ordered by slice then by position in
//! the row: slice (u32), first kept tile (u32, its index in the values), tiles (u16), index of the
//! unit within its slice (u16), units of the slice (u32), then the tile column of each of up to
//! eight tiles (u16 x 8, zero past the unit's tiles). After the units come the reduction counters:
//! [`SK_MAX_TOKEN_BLOCKS`] zeroed u32 per slice, which the kernel leaves at zero after every launch.

/// Bytes of one unit in the plan (the kernel reads two `uint4`).
pub const SK_UNIT_BYTES: usize = 32;
/// Most 16-column steps (tiles x `tw / 16`) of one unit (the kernel's `ESK_STEPS`).
pub const SK_MAX_STEPS: usize = 8;
/// Most tiles of one unit (the plan holds eight columns).
pub const SK_MAX_TILES: usize = 8;
/// Tokens of one warp's work item (the kernel's `ESK_TB`).
pub const SK_TOKENS_PER_ITEM: usize = 32;
/// Token blocks a launch may have: the counters held per slice (the kernel's `ESK_MAX_TB`).
pub const SK_MAX_TOKEN_BLOCKS: usize = 16;
/// Most tokens one launch takes.
pub const SK_MAX_TOKENS: usize = SK_TOKENS_PER_ITEM * SK_MAX_TOKEN_BLOCKS;

use super::rs_plan::TileGeometry;

/// One unit of work (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkUnit {
    /// The 16-feature slice of the output (`br * th / 16 + sub`).
    pub slice: u32,
    /// Index of the unit's first kept tile in the values.
    pub t0: u32,
    /// Kept tiles of the unit (consecutive in the values).
    pub tiles: u16,
    /// Position of the unit among its slice's units.
    pub index: u16,
    /// Units of the slice.
    pub parts: u32,
    /// Tile column of each tile.
    pub cols: [u16; SK_MAX_TILES],
}

/// The split kernel's plan of one weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkPlan {
    /// Every unit, by slice.
    pub units: Vec<SkUnit>,
    /// 16-feature slices of the output (`grid_rows * th / 16`).
    pub slices: usize,
}

/// Whether the split kernel takes `th x tw` tiles: 16-row slices and 16-column steps, and at
/// least one whole tile in a unit.
pub fn sk_tile_shape(th: usize, tw: usize) -> bool {
    th > 0 && tw > 0 && th % 16 == 0 && tw % 16 == 0 && tw / 16 <= SK_MAX_STEPS
}

/// Most tiles of one unit of `tw`-column tiles.
pub fn sk_tiles_per_unit(tw: usize) -> usize {
    (SK_MAX_STEPS / (tw / 16).max(1)).clamp(1, SK_MAX_TILES)
}

/// Tile columns of block row `br`'s kept tiles, in bitmap order; None when the bitmap is too short.
fn row_cols(bitmap: &[u64], br: usize, grid_cols: usize) -> Option<Vec<u16>> {
    let mut cols = Vec::new();
    for bc in 0..grid_cols {
        let t = br.checked_mul(grid_cols)?.checked_add(bc)?;
        if (bitmap.get(t / 64)? >> (t % 64)) & 1 == 1 {
            cols.push(u16::try_from(bc).ok()?);
        }
    }
    Some(cols)
}

impl SkPlan {
    /// Plans a weight with this bitmap (bit `br * grid_cols + bc`) and row offsets
    /// (`grid_rows + 1` prefix counts of kept tiles). None for tile shapes the kernel has no
    /// instance for ([`sk_tile_shape`]), more than 65,536 tile columns, or row offsets that
    /// disagree with the bitmap.
    pub fn new(bitmap: &[u64], row_offsets: &[u32], g: TileGeometry) -> Option<Self> {
        if !sk_tile_shape(g.th, g.tw) || g.grid_cols > usize::from(u16::MAX) + 1 {
            return None;
        }
        if row_offsets.len() != g.grid_rows + 1 {
            return None;
        }
        let subs = g.th / 16;
        let cap = sk_tiles_per_unit(g.tw);
        let mut units = Vec::new();
        for br in 0..g.grid_rows {
            let cols = row_cols(bitmap, br, g.grid_cols)?;
            let first = row_offsets[br];
            if row_offsets[br + 1].checked_sub(first)? as usize != cols.len() {
                return None;
            }
            let parts = cols.len().div_ceil(cap).max(1);
            let (base, extra) = (cols.len() / parts, cols.len() % parts);
            for sub in 0..subs {
                let slice = u32::try_from(br * subs + sub).ok()?;
                let mut at = 0usize;
                for p in 0..parts {
                    let n = base + usize::from(p < extra);
                    let mut c = [0u16; SK_MAX_TILES];
                    c[..n].copy_from_slice(&cols[at..at + n]);
                    units.push(SkUnit {
                        slice,
                        t0: first.checked_add(u32::try_from(at).ok()?)?,
                        tiles: u16::try_from(n).ok()?,
                        index: u16::try_from(p).ok()?,
                        parts: u32::try_from(parts).ok()?,
                        cols: c,
                    });
                    at += n;
                }
            }
        }
        Some(SkPlan {
            units,
            slices: g.grid_rows * subs,
        })
    }

    /// Bytes of the reduction counters after the units.
    pub fn counter_bytes(&self) -> usize {
        self.slices * SK_MAX_TOKEN_BLOCKS * 4
    }

    /// The units as the kernel reads them, followed by the zeroed counters.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.units.len() * SK_UNIT_BYTES + self.counter_bytes()];
        for (u, b) in self.units.iter().zip(out.chunks_exact_mut(SK_UNIT_BYTES)) {
            b[0..4].copy_from_slice(&u.slice.to_le_bytes());
            b[4..8].copy_from_slice(&u.t0.to_le_bytes());
            b[8..10].copy_from_slice(&u.tiles.to_le_bytes());
            b[10..12].copy_from_slice(&u.index.to_le_bytes());
            b[12..16].copy_from_slice(&u.parts.to_le_bytes());
            for (i, c) in u.cols.iter().enumerate() {
                b[16 + 2 * i..18 + 2 * i].copy_from_slice(&c.to_le_bytes());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::cuda::host::HostTiles;
    use crate::runtime::cuda::upload::host_geometry;
    use crate::runtime::cuda::ElemType;

    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *seed >> 33
    }

    fn tiles(n: usize, k: usize, th: usize, tw: usize, density: f64, seed: u64) -> HostTiles {
        let (gr, gc) = (n.div_ceil(th), k.div_ceil(tw));
        let mut s = seed;
        let keep: Vec<bool> = (0..gr * gc)
            .map(|_| (lcg(&mut s) % 1000) as f64 / 1000.0 < density)
            .collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i % 7) as f32 - 3.0).collect();
        HostTiles::from_dense(&w, n, k, th, tw, &keep, ElemType::F16).unwrap()
    }

    /// Every kept tile is covered exactly once per slice, with its own column; units stay within
    /// the bounds and are balanced within a slice; every slice has units.
    fn check(h: &HostTiles) {
        let g = host_geometry(h);
        let p = SkPlan::new(&h.bitmap, &h.row_offsets, g).unwrap();
        let subs = h.th / 16;
        assert_eq!(p.slices, h.grid_rows * subs);
        let cap = sk_tiles_per_unit(h.tw);
        let mut seen = vec![0usize; p.slices * h.kept()];
        let mut by_slice = vec![Vec::new(); p.slices];
        for (i, u) in p.units.iter().enumerate() {
            assert!(usize::from(u.tiles) <= cap);
            assert!(usize::from(u.tiles) * (h.tw / 16) <= SK_MAX_STEPS);
            assert!(u.index < u.parts as u16);
            by_slice[u.slice as usize].push((i, *u));
            let br = u.slice as usize / subs;
            for j in 0..usize::from(u.tiles) {
                let t = u.t0 as usize + j;
                assert!(t >= h.row_offsets[br] as usize && t < h.row_offsets[br + 1] as usize);
                seen[u.slice as usize * h.kept() + t] += 1;
                // The column is the t-th kept tile's column in bitmap order.
                let bc = usize::from(u.cols[j]);
                let bit = br * h.grid_cols + bc;
                assert_eq!((h.bitmap[bit / 64] >> (bit % 64)) & 1, 1);
                let rank = (0..bit)
                    .filter(|&b| (h.bitmap[b / 64] >> (b % 64)) & 1 == 1)
                    .count();
                assert_eq!(rank, t, "slice {} tile {j}", u.slice);
            }
            assert!(u.cols[usize::from(u.tiles)..].iter().all(|&c| c == 0));
        }
        for (s, units) in by_slice.iter().enumerate() {
            let br = s / subs;
            let row = (h.row_offsets[br + 1] - h.row_offsets[br]) as usize;
            assert!(!units.is_empty(), "slice {s} has no unit");
            // Consecutive indices, consecutive plan positions, the slice's count everywhere.
            for (j, (i, u)) in units.iter().enumerate() {
                assert_eq!(usize::from(u.index), j);
                assert_eq!(u.parts as usize, units.len());
                assert_eq!(*i, units[0].0 + j);
            }
            // The fewest units the bound allows, sizes within one tile of each other.
            assert_eq!(units.len(), row.div_ceil(cap).max(1));
            let sizes: Vec<u16> = units.iter().map(|(_, u)| u.tiles).collect();
            let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(hi - lo <= 1, "slice {s}: {sizes:?}");
            for t in h.row_offsets[br] as usize..h.row_offsets[br + 1] as usize {
                assert_eq!(seen[s * h.kept() + t], 1, "slice {s} tile {t}");
            }
        }
        assert_eq!(seen.iter().sum::<usize>(), h.kept() * subs);
        // Bytes: the units then zeroed counters.
        let b = p.to_bytes();
        assert_eq!(b.len(), p.units.len() * SK_UNIT_BYTES + p.counter_bytes());
        assert!(b[p.units.len() * SK_UNIT_BYTES..].iter().all(|&x| x == 0));
        let u = p.units.last().unwrap();
        let at = (p.units.len() - 1) * SK_UNIT_BYTES;
        assert_eq!(b[at..at + 4], u.slice.to_le_bytes());
        assert_eq!(b[at + 4..at + 8], u.t0.to_le_bytes());
        assert_eq!(b[at + 8..at + 10], u.tiles.to_le_bytes());
        assert_eq!(b[at + 10..at + 12], u.index.to_le_bytes());
        assert_eq!(b[at + 12..at + 16], u.parts.to_le_bytes());
        assert_eq!(b[at + 16..at + 18], u.cols[0].to_le_bytes());
    }

    #[test]
    fn every_kept_tile_is_covered_once_in_balanced_units() {
        for (n, k, th, tw, d) in [
            (2304, 768, 16, 16, 0.2),
            (768, 3072, 16, 16, 0.2),
            (768, 3072, 16, 16, 1.0),
            (768, 768, 16, 16, 0.1),
            (300, 200, 32, 32, 0.5),
            (2000, 3072, 64, 64, 0.3),
            (2000, 768, 128, 16, 0.02),
            (1000, 768, 64, 16, 0.7),
            (40, 48, 16, 16, 0.0),
        ] {
            check(&tiles(n, k, th, tw, d, (n * k) as u64));
        }
    }

    #[test]
    fn a_long_row_is_cut_into_equal_units() {
        // 3072 -> 768 dense in 16x16 tiles: 192 tiles per row, 24 units of 8.
        let h = tiles(768, 3072, 16, 16, 1.0, 1);
        let p = SkPlan::new(&h.bitmap, &h.row_offsets, host_geometry(&h)).unwrap();
        assert_eq!(p.units.len(), 48 * 24);
        assert!(p.units.iter().all(|u| u.tiles == 8 && u.parts == 24));
        // 64x64 tiles: four steps each, two tiles per unit; four slices per block row.
        let h = tiles(256, 640, 64, 64, 1.0, 2);
        let p = SkPlan::new(&h.bitmap, &h.row_offsets, host_geometry(&h)).unwrap();
        assert_eq!(p.slices, 16);
        assert_eq!(p.units.len(), 16 * 5);
        assert!(p.units.iter().all(|u| u.tiles == 2));
        // 9 tiles of 16 columns: two units of 5 and 4.
        let h = tiles(16, 144, 16, 16, 1.0, 3);
        let p = SkPlan::new(&h.bitmap, &h.row_offsets, host_geometry(&h)).unwrap();
        let sizes: Vec<u16> = p.units.iter().map(|u| u.tiles).collect();
        assert_eq!(sizes, [5, 4]);
        assert_eq!(p.units[1].t0, 5);
    }

    /// The kernel's arithmetic on the host, lane by lane: each lane's 8-byte operand loads (the
    /// permuted columns), the `m16n8k16` fragments they form, the partials summed in unit order
    /// and the outputs each lane stores. Returns Y (`m x N`, no epilogue). Indexed loops, as in
    /// the kernel, keep the two side by side.
    #[allow(clippy::needless_range_loop)]
    fn emulate(h: &HostTiles, p: &SkPlan, x: &[f32], m: usize) -> Vec<f32> {
        let (n, k, th, tw) = (h.rows, h.cols, h.th, h.tw);
        let (ks, subs) = (tw / 16, th / 16);
        let w = |i: usize| crate::runtime::cuda::host::from_bits(h.elem, h.values[i]);
        let mut y = vec![f32::NAN; m * n];
        type Lanes = [[[[f32; 4]; 2]; 2]; 32];
        let tbs = m.div_ceil(SK_TOKENS_PER_ITEM);
        let mut partial = vec![[[[[0f32; 4]; 2]; 2]; 32]; p.units.len() * tbs];
        for tb in 0..tbs {
            let tok0 = tb * SK_TOKENS_PER_ITEM;
            for (ui, u) in p.units.iter().enumerate() {
                let mut acc: Lanes = [[[[0.0; 4]; 2]; 2]; 32];
                let sub = u.slice as usize % subs;
                for s in 0..SK_MAX_STEPS {
                    let (ti, kk) = (s / ks, s % ks);
                    if ti >= usize::from(u.tiles) {
                        continue;
                    }
                    // a[i][row][col], b[j][k][col] as the lanes' loads fill them.
                    let mut a = [[[0f32; 16]; 16]; 2];
                    let mut b = [[[0f32; 8]; 16]; 2];
                    for lane in 0..32 {
                        let (g, q) = (lane / 4, lane % 4);
                        let tile = (u.t0 as usize + ti) * th * tw;
                        let kc = usize::from(u.cols[ti]) * tw + kk * 16 + 4 * q;
                        for e in 0..4 {
                            // Loaded column 4q + e is the fragment's column 2q + e (e < 2) or
                            // 2q + 8 + e - 2.
                            let fc = if e < 2 { 2 * q + e } else { 2 * q + 6 + e };
                            for j in 0..2 {
                                let row = sub * 16 + j * 8 + g;
                                b[j][fc][g] = w(tile + row * tw + kk * 16 + 4 * q + e);
                            }
                            for i in 0..2 {
                                for hh in 0..2 {
                                    let tok = tok0 + i * 16 + hh * 8 + g;
                                    if tok < m && kc < k {
                                        a[i][hh * 8 + g][fc] = x[tok * k + kc + e];
                                    }
                                }
                            }
                        }
                    }
                    for (lane, acc) in acc.iter_mut().enumerate() {
                        let (g, q) = (lane / 4, lane % 4);
                        for i in 0..2 {
                            for j in 0..2 {
                                for r in 0..4 {
                                    let (row, col) = (g + 8 * (r / 2), 2 * q + r % 2);
                                    let dot: f32 =
                                        (0..16).map(|c| a[i][row][c] * b[j][c][col]).sum();
                                    acc[i][j][r] += dot;
                                }
                            }
                        }
                    }
                }
                partial[ui * tbs + tb] = acc;
            }
            for (ui, u) in p.units.iter().enumerate().filter(|(_, u)| u.index == 0) {
                let mut sum: Lanes = [[[[0.0; 4]; 2]; 2]; 32];
                for part in 0..u.parts as usize {
                    let other = &partial[(ui + part) * tbs + tb];
                    for (s, o) in sum.iter_mut().zip(other) {
                        for (s, o) in s.iter_mut().flatten().zip(o.iter().flatten()) {
                            for (s, o) in s.iter_mut().zip(o) {
                                *s += o;
                            }
                        }
                    }
                }
                for (lane, acc) in sum.iter().enumerate() {
                    let (g, q) = (lane / 4, lane % 4);
                    let n0 = u.slice as usize * 16 + 2 * q;
                    for i in 0..2 {
                        for hh in 0..2 {
                            for j in 0..2 {
                                for e in 0..2 {
                                    let (row, col) = (tok0 + i * 16 + hh * 8 + g, n0 + j * 8 + e);
                                    if row < m && col < n {
                                        y[row * n + col] = acc[i][j][2 * hh + e];
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        y
    }

    #[test]
    fn the_kernels_lane_arithmetic_on_this_plan_computes_x_w_t() {
        for (m, n, k, th, tw, d) in [
            (33, 300, 200, 16, 16, 0.5),
            (1, 64, 512, 16, 16, 1.0),
            (40, 96, 160, 32, 32, 0.6),
            (20, 128, 256, 64, 64, 0.7),
            (9, 256, 48, 128, 16, 0.5),
            (64, 128, 96, 64, 16, 0.0),
        ] {
            let h = tiles(n, k, th, tw, d, (m * n + k) as u64);
            let p = SkPlan::new(&h.bitmap, &h.row_offsets, host_geometry(&h)).unwrap();
            let mut s = 99u64;
            let x: Vec<f32> = (0..m * k)
                .map(|_| (lcg(&mut s) % 17) as f32 / 8.0 - 1.0)
                .collect();
            let y = emulate(&h, &p, &x, m);
            let dense = h.to_dense_f32();
            for r in 0..m {
                for c in 0..n {
                    let want: f32 = (0..k).map(|i| x[r * k + i] * dense[c * k + i]).sum();
                    let got = y[r * n + c];
                    assert!(
                        (got - want).abs() <= 1e-3 * want.abs().max(1.0),
                        "{n}x{k} {th}x{tw} M{m}: y[{r},{c}] = {got}, want {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn inconsistent_row_offsets_or_shapes_give_no_plan() {
        let h = tiles(64, 64, 16, 16, 0.5, 4);
        let g = host_geometry(&h);
        let mut bad = h.row_offsets.clone();
        bad[1] += 1;
        assert!(SkPlan::new(&h.bitmap, &bad, g).is_none());
        assert!(SkPlan::new(&h.bitmap, &h.row_offsets[..2], g).is_none());
        assert!(SkPlan::new(&[], &h.row_offsets, g).is_none());
        assert!(SkPlan::new(&h.bitmap, &h.row_offsets, TileGeometry { th: 8, ..g }).is_none());
        assert!(sk_tile_shape(128, 16) && sk_tile_shape(64, 64) && !sk_tile_shape(16, 8));
    }
}
