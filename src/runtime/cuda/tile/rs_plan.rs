//! The register-operand kernel's stage plans (kernels/tile_rs.cu, `StagePlan`), computed once on
//! the host from the bitmap when a weight is uploaded.
//!
//! The kernel's producer walks a feature group (128 output features: `128 / th` block rows, at
//! least one) in stages of 64 input columns over the union of the tile columns its block rows
//! keep. What it copies per stage (which tiles, from where, in one box or tile by tile, which X
//! columns) depends only on the bitmap, so it is planned here: built in the kernel, the union list
//! and the plans delayed every group's first stage by a large share of a launch.
//!
//! Layout (little-endian): `stride` plans of [`RS_PLAN_BYTES`] bytes per group, group g's first at
//! plan `g * stride`; unused plans are zero. A plan: kept (u32, bit `4r + s`: block row r keeps
//! the tile of 16-column slot s), weight bytes (u32), flags (u32, [`STAGE_CONTIG`],
//! [`STAGE_W_SW128`], [`STAGE_W_BOXED`]), the box coordinate of a boxed stage (u32, 128-byte lines
//! into its block rows), the X column of each of the four slots (u16 x 4; K for a slot past the
//! union), the group's stage count (u32, in its first plan only), a reserved u32, and for each of
//! up to eight block rows the index of its first kept tile in the stage (u32 x 8).

/// Bytes of one stage plan (the kernel's `sizeof(StagePlan)`).
pub const RS_PLAN_BYTES: usize = 64;
/// X came as one 64-column box (the stage's union columns are contiguous).
pub const STAGE_CONTIG: u32 = 1;
/// The weights come with the 128-byte swizzle.
pub const STAGE_W_SW128: u32 = 8;
/// The weights of all the group's block rows come as one box.
pub const STAGE_W_BOXED: u32 = 16;

/// Output features of a group (the kernel's `ETR_BN`).
const GROUP_FEATURES: usize = 128;
/// 16-column slots of a stage.
const SLOTS: usize = 4;
/// Bytes of a boxed stage's weights: 64 columns of the group's 128 features.
const STAGE_W_BYTES: u32 = (GROUP_FEATURES * 64 * 2) as u32;

/// One stage's plan (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StagePlan {
    /// Bit `4r + s`: block row r keeps the tile of 16-column slot s.
    pub kept: u32,
    /// Bytes of the stage's weights.
    pub wbytes: u32,
    /// [`STAGE_CONTIG`], [`STAGE_W_SW128`], [`STAGE_W_BOXED`].
    pub flags: u32,
    /// A boxed stage's box coordinate: 128-byte lines into its block rows.
    pub wline: u32,
    /// X column of each slot (K past the union: the copy reads zeros).
    pub xcol: [u16; SLOTS],
    /// Each block row's first kept tile in the stage (its index in the values; 0 if none).
    pub first: [u32; 8],
}

/// The plans of a weight's groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsPlans {
    /// Plans per group (the most stages of any group, at least one).
    pub stride: usize,
    /// Each group's stages.
    pub groups: Vec<Vec<StagePlan>>,
}

/// Whether the register-operand kernel has an instance for `th x tw` tiles (and so plans them).
pub fn rs_tile_shape(th: usize, tw: usize) -> bool {
    matches!((th, tw), (16 | 64 | 128, 16) | (32, 32) | (64, 64))
}

/// Tiles per block row when the kept count allows every block row to keep the same number (then a
/// stage of a whole group may be one box, block row br starting at tile br x cnt), else None.
pub fn uniform_row_tiles(kept: usize, grid_rows: usize) -> Option<usize> {
    (kept > 0 && grid_rows > 0 && kept % grid_rows == 0).then(|| kept / grid_rows)
}

/// The tile geometry the plans depend on.
#[derive(Debug, Clone, Copy)]
pub struct TileGeometry {
    /// Tile height.
    pub th: usize,
    /// Tile width.
    pub tw: usize,
    /// Block rows.
    pub grid_rows: usize,
    /// Block columns.
    pub grid_cols: usize,
    /// Input features (K).
    pub cols: usize,
}

impl RsPlans {
    /// Plans every group of a weight with this bitmap (bit `br * grid_cols + bc`) and row offsets
    /// (`grid_rows + 1` kept-tile counts). Stages are boxed where [`uniform_row_tiles`] allows.
    /// None for tile shapes the kernel has no instance for ([`rs_tile_shape`]) and K past the
    /// plans' 16-bit column numbers.
    pub fn new(bitmap: &[u64], row_offsets: &[u32], g: TileGeometry) -> Option<Self> {
        let kept = row_offsets.last().copied().unwrap_or(0) as usize;
        let boxed_rows = uniform_row_tiles(kept, g.grid_rows);
        if !rs_tile_shape(g.th, g.tw) || g.cols > usize::from(u16::MAX) {
            return None;
        }
        let r_per_group = (GROUP_FEATURES / g.th).max(1);
        let groups: Vec<Vec<StagePlan>> = (0..g.grid_rows.div_ceil(r_per_group))
            .map(|grp| {
                plan_group(
                    bitmap,
                    row_offsets,
                    g,
                    boxed_rows,
                    grp * r_per_group,
                    r_per_group,
                )
            })
            .collect();
        let stride = groups.iter().map(Vec::len).max().unwrap_or(0).max(1);
        Some(RsPlans { stride, groups })
    }

    /// The plans as the kernel reads them.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.groups.len() * self.stride * RS_PLAN_BYTES];
        for (gi, stages) in self.groups.iter().enumerate() {
            for (si, p) in stages.iter().enumerate() {
                let at = (gi * self.stride + si) * RS_PLAN_BYTES;
                let b = &mut out[at..at + RS_PLAN_BYTES];
                b[0..4].copy_from_slice(&p.kept.to_le_bytes());
                b[4..8].copy_from_slice(&p.wbytes.to_le_bytes());
                b[8..12].copy_from_slice(&p.flags.to_le_bytes());
                b[12..16].copy_from_slice(&p.wline.to_le_bytes());
                for (s, x) in p.xcol.iter().enumerate() {
                    b[16 + 2 * s..18 + 2 * s].copy_from_slice(&x.to_le_bytes());
                }
                if si == 0 {
                    b[24..28].copy_from_slice(&(stages.len() as u32).to_le_bytes());
                }
                for (r, f) in p.first.iter().enumerate() {
                    b[32 + 4 * r..36 + 4 * r].copy_from_slice(&f.to_le_bytes());
                }
            }
        }
        out
    }
}

/// The stages of the group of `rows` block rows from `br0`.
fn plan_group(
    bitmap: &[u64],
    row_offsets: &[u32],
    g: TileGeometry,
    boxed_rows: Option<usize>,
    br0: usize,
    rows: usize,
) -> Vec<StagePlan> {
    let bit = |t: usize| bitmap.get(t / 64).is_some_and(|w| (w >> (t % 64)) & 1 == 1);
    let live = rows.min(g.grid_rows.saturating_sub(br0));
    // The union of the rows' kept tile columns, each with the mask of rows keeping it, and each
    // row's kept-tile index (in the values) at each union column it keeps.
    let mut ucol = Vec::new();
    let mut umask = Vec::new();
    let mut tile_at: Vec<Vec<u32>> = vec![Vec::new(); live];
    let mut next: Vec<u32> = (0..live)
        .map(|r| row_offsets.get(br0 + r).copied().unwrap_or(0))
        .collect();
    for bc in 0..g.grid_cols {
        let mut m = 0u32;
        for r in 0..live {
            if bit((br0 + r) * g.grid_cols + bc) {
                m |= 1 << r;
            }
        }
        if m == 0 {
            continue;
        }
        ucol.push(bc);
        umask.push(m);
        for (r, at) in tile_at.iter_mut().enumerate() {
            if (m >> r) & 1 == 1 {
                at.push(next[r]);
                next[r] += 1;
            } else {
                at.push(u32::MAX);
            }
        }
    }
    // Boxed stages need every row to start where the stage map puts it (row br at br x cnt).
    let uniform = boxed_rows.is_some_and(|cnt| {
        cnt > 0
            && (0..live)
                .all(|r| row_offsets.get(br0 + r).copied() == Some(((br0 + r) * cnt) as u32))
    });
    let ups = 64 / g.tw;
    let spt = g.tw / 16;
    let u = ucol.len();
    (0..u.div_ceil(ups))
        .map(|stage| {
            let j0 = stage * ups;
            let mut p = StagePlan::default();
            for s in 0..SLOTS {
                let j = j0 + s / spt;
                if j < u {
                    for r in 0..live {
                        if (umask[j] >> r) & 1 == 1 {
                            p.kept |= 1 << (4 * r + s);
                        }
                    }
                    p.xcol[s] = (ucol[j] * g.tw + (s % spt) * 16) as u16;
                } else {
                    p.xcol[s] = g.cols as u16;
                }
            }
            let contig = if ups == 1 {
                true
            } else {
                j0 + ups - 1 < u && ucol[j0 + ups - 1] == ucol[j0] + ups - 1
            };
            // One box when every live row keeps all the stage's union columns, at the same index
            // in its row.
            let boxed = uniform
                && j0 + ups <= u
                && (0..ups).all(|k| umask[j0 + k] & ((1 << live) - 1) == (1 << live) - 1)
                && (1..live).all(|r| {
                    tile_at[r][j0] - row_offsets[br0 + r] == tile_at[0][j0] - row_offsets[br0]
                });
            p.wbytes = if boxed {
                STAGE_W_BYTES
            } else {
                p.kept.count_ones() * (g.th as u32) * 32
            };
            p.flags = if contig { STAGE_CONTIG } else { 0 }
                | if boxed { STAGE_W_BOXED } else { 0 }
                | if boxed || g.tw > 16 { STAGE_W_SW128 } else { 0 };
            let tile_lines = (g.th * g.tw * 2 / 128) as u32;
            if boxed {
                p.wline = (tile_at[0][j0] - row_offsets[br0]) * tile_lines;
            }
            for (r, at) in tile_at.iter().enumerate().take(8) {
                p.first[r] = (j0..(j0 + ups).min(u))
                    .map(|j| at[j])
                    .find(|&t| t != u32::MAX)
                    .unwrap_or(0);
            }
            p
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::cuda::device::ElemType;
    use crate::runtime::cuda::host::HostTiles;

    /// A host tile weight of `rows x cols` keeping tile t where keep(t).
    fn tiles(
        rows: usize,
        cols: usize,
        th: usize,
        tw: usize,
        keep: impl Fn(usize) -> bool,
    ) -> HostTiles {
        let dense: Vec<f32> = (0..rows * cols)
            .map(|i| (i % 251) as f32 / 251.0 - 0.5)
            .collect();
        let grid = rows.div_ceil(th) * cols.div_ceil(tw);
        let mask: Vec<bool> = (0..grid).map(keep).collect();
        HostTiles::from_dense(&dense, rows, cols, th, tw, &mask, ElemType::F16).unwrap()
    }

    fn plans_of(h: &HostTiles) -> RsPlans {
        let g = TileGeometry {
            th: h.th,
            tw: h.tw,
            grid_rows: h.grid_rows,
            grid_cols: h.grid_cols,
            cols: h.cols,
        };
        RsPlans::new(&h.bitmap, &h.row_offsets, g).unwrap()
    }

    fn is_kept(h: &HostTiles, br: usize, bc: usize) -> bool {
        let t = br * h.grid_cols + bc;
        (h.bitmap[t / 64] >> (t % 64)) & 1 == 1
    }

    /// Replays what the kernel's producer copies for every stage (the weights of each kept slot,
    /// and the X columns it multiplies them with) and checks it against the dense weight: every
    /// kept tile is multiplied exactly once, with its own input columns.
    fn check_replay(h: &HostTiles) {
        let p = plans_of(h);
        let r_per_group = (GROUP_FEATURES / h.th).max(1);
        let (spt, tile_elems) = (h.tw / 16, h.th * h.tw);
        let mut seen = vec![0u32; h.grid_rows * h.grid_cols];
        for (grp, stages) in p.groups.iter().enumerate() {
            for st in stages {
                for r in 0..r_per_group.min(8) {
                    let br = grp * r_per_group + r;
                    // A boxed stage is the box of the rows' tiles from line wline: each live
                    // row's first tile of the stage.
                    if st.flags & STAGE_W_BOXED != 0 && br < h.grid_rows {
                        let lines = (h.th * h.tw * 2 / 128) as u32;
                        assert_eq!(
                            h.row_offsets[br] + st.wline / lines,
                            st.first[r],
                            "box of row {br}"
                        );
                    }
                    for s in 0..SLOTS {
                        if (st.kept >> (4 * r + s)) & 1 == 0 {
                            continue;
                        }
                        // The row's kept tiles of the stage are consecutive from `first`.
                        let before =
                            (st.kept >> (4 * r) & ((1 << s) - 1)).count_ones() as usize / spt;
                        let tile = st.first[r] as usize + before;
                        let bc = st.xcol[s] as usize / h.tw;
                        assert!(bc < h.grid_cols, "slot {s} of row {br} has no column");
                        // That tile index is the one the values hold for (br, bc).
                        let rank = (0..bc).filter(|&c| is_kept(h, br, c)).count();
                        assert!(is_kept(h, br, bc), "({br},{bc}) is not kept");
                        assert_eq!(
                            tile,
                            h.row_offsets[br] as usize + rank,
                            "tile of ({br},{bc})"
                        );
                        assert!(tile * tile_elems < h.values.len());
                        if s % spt == 0 {
                            seen[br * h.grid_cols + bc] += 1;
                        }
                    }
                }
            }
        }
        for br in 0..h.grid_rows {
            for bc in 0..h.grid_cols {
                let want = u32::from(is_kept(h, br, bc));
                assert_eq!(
                    seen[br * h.grid_cols + bc],
                    want,
                    "tile ({br},{bc}) multiplied"
                );
            }
        }
    }

    #[test]
    fn replayed_plans_cover_every_kept_tile_once() {
        for (th, tw) in [(16, 16), (64, 16), (128, 16), (32, 32), (64, 64)] {
            // Random, density 1, and masks keeping the same columns in each group.
            let rnd = |t: usize| (t.wrapping_mul(2654435761) >> 7) % 3 != 0;
            for keep in [&rnd as &dyn Fn(usize) -> bool, &|_| true, &|t: usize| {
                (t % 5) < 2
            }] {
                check_replay(&tiles(384, 448, th, tw, keep));
                check_replay(&tiles(200, 136, th, tw, keep));
            }
        }
    }

    #[test]
    fn only_the_kernel_s_tile_shapes_are_planned() {
        for (th, tw, planned) in [
            (16, 16, true),
            (32, 32, true),
            (8, 8, false),
            (32, 16, false),
            (16, 32, false),
        ] {
            let h = tiles(64, 64, th, tw, |_| true);
            let g = crate::runtime::cuda::upload::host_geometry(&h);
            assert_eq!(
                RsPlans::new(&h.bitmap, &h.row_offsets, g).is_some(),
                planned,
                "{th}x{tw}"
            );
        }
    }

    #[test]
    fn density_one_stages_are_boxed_and_contiguous() {
        let h = tiles(256, 768, 16, 16, |_| true);
        let p = plans_of(&h);
        assert_eq!(p.groups.len(), 2);
        assert_eq!(p.stride, 12);
        for (grp, stages) in p.groups.iter().enumerate() {
            for (s, st) in stages.iter().enumerate() {
                assert_eq!(st.flags, STAGE_CONTIG | STAGE_W_BOXED | STAGE_W_SW128);
                assert_eq!(st.wbytes, STAGE_W_BYTES);
                assert_eq!(st.kept, u32::MAX);
                // Tile 4s of each row: four 128-byte lines per 16x16 tile.
                assert_eq!(st.wline, 16 * s as u32);
                assert_eq!(st.xcol, [0, 16, 32, 48].map(|c| (64 * s + c) as u16));
                assert_eq!(st.first[0], (grp * 8 * 48 + 4 * s) as u32);
            }
        }
        // The byte layout: the first plan carries the stage count.
        let b = p.to_bytes();
        assert_eq!(b.len(), 2 * 12 * RS_PLAN_BYTES);
        assert_eq!(u32::from_le_bytes(b[24..28].try_into().unwrap()), 12);
        assert_eq!(
            u32::from_le_bytes(b[64 + 24..64 + 28].try_into().unwrap()),
            0
        );
    }

    #[test]
    fn scattered_columns_are_not_contiguous_and_empty_groups_have_no_stages() {
        // 16x16, one group keeping every other tile column of the first 8 block rows only.
        let h = tiles(256, 256, 16, 16, |t| t / 16 < 8 && t % 2 == 0);
        let p = plans_of(&h);
        assert_eq!(p.groups[0].len(), 2);
        assert!(p.groups[1].is_empty());
        let st = p.groups[0][0];
        assert_eq!(st.flags & STAGE_CONTIG, 0);
        assert_eq!(st.xcol, [0, 32, 64, 96]);
        // Row offsets differ from br x cnt only through the empty rows: not boxed here since the
        // kept count per row is not uniform.
        assert_eq!(st.flags & STAGE_W_BOXED, 0);
        assert_eq!(st.wbytes, 8 * 4 * 16 * 32);
    }
}
