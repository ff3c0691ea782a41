//! What every tile kernel family shares: the weight's shape as planning reads it, its device view,
//! the limits common to all families, the leading kernel arguments and the launch of a union
//! kernel with its split-K finish.
//!
//! This module imports no kernel family; the families import it.

use std::ops::Deref;

use super::super::device::{CudaRuntime, ElemType, KArg};
use super::super::epilogue::Epilogue;
use super::super::error::CudaError;

/// Largest tile grid width the tile kernels handle (their shared-memory union lists and stage
/// plans are sized for it).
pub const TILE_MAX_GRID_COLS: usize = 512;
/// Tokens per CTA of the `mma.sync` and cp.async wgmma union kernels.
pub const TILE_BM: usize = 128;
/// Output features per CTA of the 128-feature union kernels.
pub const TILE_BN: usize = 128;

/// The shape of a tile weight as kernel planning reads it (which kernels fit, how a launch is
/// split): dimensions, tile grid, kept count and what the host derived from the bitmap at upload.
/// It holds no device address, so planning can run before or without an upload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TileShape {
    /// Rows (out features).
    pub rows: usize,
    /// Columns (in features).
    pub cols: usize,
    /// Tile height.
    pub th: usize,
    /// Tile width.
    pub tw: usize,
    /// Block rows.
    pub grid_rows: usize,
    /// Block columns.
    pub grid_cols: usize,
    /// Kept tiles.
    pub kept: usize,
    /// Element type of the values.
    pub elem: ElemType,
    /// Whether per-tile element bitmaps are present (the tile kernels do not read them).
    pub has_element_bitmaps: bool,
    /// Fractions of (64-feature group, tile column) and (128-feature group, tile column) pairs
    /// holding a kept tile ([`super::super::host::union_fractions`]), when the host knew the
    /// bitmap.
    pub unions: Option<[f32; 2]>,
    /// Largest over mean work of the register-operand kernel's feature groups, when the host knew
    /// the bitmap.
    pub work_spread: Option<f32>,
    /// SHA-256 of the bitmap's little-endian bytes, when the host knew the bitmap (the mask part
    /// of the tuning cache's key).
    pub mask_sha256: Option<[u8; 32]>,
}

impl TileShape {
    /// An `rows x cols` weight in `th x tw` tiles with `kept` tiles and nothing known about the
    /// bitmap.
    pub fn new(
        rows: usize,
        cols: usize,
        th: usize,
        tw: usize,
        kept: usize,
        elem: ElemType,
    ) -> Self {
        TileShape {
            rows,
            cols,
            th,
            tw,
            grid_rows: rows.div_ceil(th.max(1)),
            grid_cols: cols.div_ceil(tw.max(1)),
            kept,
            elem,
            has_element_bitmaps: false,
            unions: None,
            work_spread: None,
            mask_sha256: None,
        }
    }

    /// Fraction of tiles kept.
    pub fn density(&self) -> f64 {
        self.kept as f64 / (self.grid_rows * self.grid_cols).max(1) as f64
    }

    /// Whether every tile is kept.
    pub fn all_kept(&self) -> bool {
        self.kept == self.grid_rows * self.grid_cols
    }
}

/// A tile-encoded weight on the device: its [`TileShape`] and the device addresses the kernels
/// read (the file's bitmap, row offsets and values in place, and the register-operand kernel's
/// stage plans). Only an upload builds one ([`super::super::DeviceModel`],
/// [`super::super::upload::DeviceTiles`]); the addresses stay valid while the value that owns
/// the allocation lives.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TileDeviceView {
    /// What planning reads.
    pub shape: TileShape,
    /// Bitmap words (u64).
    pub bitmap: u64,
    /// Row offsets (u32, `grid_rows + 1`).
    pub row_offsets: u64,
    /// Kept tile values.
    pub values: u64,
    /// The register-operand kernel's stage plans on the device, 0 when the weight's tile shape
    /// has none (the kernel then cannot run it).
    pub rs_plans: u64,
    /// Plans per feature group in `rs_plans`.
    pub rs_plan_stride: usize,
}

impl Deref for TileDeviceView {
    type Target = TileShape;
    fn deref(&self) -> &TileShape {
        &self.shape
    }
}

/// Why no tile kernel can run this weight, or None when some can.
pub fn tile_kernel_unsupported(v: &TileShape) -> Option<String> {
    if !matches!(
        (v.th, v.tw),
        (16, 16) | (32, 32) | (64, 64) | (64, 16) | (128, 16)
    ) {
        return Some(format!(
            "tile shape {}x{} has no kernel (16x16, 32x32, 64x64, 64x16, 128x16)",
            v.th, v.tw
        ));
    }
    if v.cols % 8 != 0 {
        return Some(format!("K = {} is not a multiple of 8", v.cols));
    }
    if v.grid_cols > TILE_MAX_GRID_COLS {
        return Some(format!(
            "{} tile columns exceed the kernel's {TILE_MAX_GRID_COLS}",
            v.grid_cols
        ));
    }
    if v.has_element_bitmaps {
        return Some("element bitmaps are not read by the tile kernel".into());
    }
    None
}

/// Shared memory of a union list over [`TILE_MAX_GRID_COLS`] columns for `r` block rows per group.
pub fn union_meta_bytes(r: usize) -> usize {
    let meta = TILE_MAX_GRID_COLS * (1 + 2 + 2 + 1 + 2 * r) + 4 * r + 4;
    meta.div_ceil(16) * 16
}

/// The arguments every tile kernel starts with: X, M, K, ldx, the weight's bitmap, row offsets and
/// values, N, the tile grid, the epilogue, Y and ldy (X and Y packed, so ldx = K and ldy = N).
pub(crate) fn tile_args(x: u64, m: usize, w: &TileDeviceView, ep: &Epilogue, y: u64) -> [KArg; 15] {
    let i = |v: usize| KArg::I32(v as i32);
    [
        KArg::Ptr(x),
        i(m),
        i(w.cols),
        i(w.cols),
        KArg::Ptr(w.bitmap),
        KArg::Ptr(w.row_offsets),
        KArg::Ptr(w.values),
        i(w.rows),
        i(w.grid_rows),
        i(w.grid_cols),
        KArg::Ptr(ep.bias),
        KArg::Ptr(ep.residual),
        KArg::I32(ep.gelu as i32),
        KArg::Ptr(y),
        i(w.rows),
    ]
}

/// How a union kernel's grid covers the output.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UnionGrid<'a> {
    /// Entry point name.
    pub name: &'a str,
    /// Output features per CTA.
    pub bn: usize,
    /// Tokens per CTA.
    pub bm: usize,
    /// A grid of at most one CTA per multiprocessor whose CTAs each take a run of output tiles.
    pub persistent: bool,
    /// Threads per CTA.
    pub threads: u32,
    /// Dynamic shared memory per CTA.
    pub smem: usize,
}

/// Launches a union kernel over its feature groups x token blocks x `splits` K splits with `args`,
/// appending the split-K workspace (0 without splits), then sums the splits into Y.
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_union(
    rt: &CudaRuntime,
    g: UnionGrid<'_>,
    w: &TileDeviceView,
    m: usize,
    ep: &Epilogue,
    y: u64,
    splits: usize,
    mut args: Vec<KArg>,
) -> Result<(), CudaError> {
    let splits = splits.clamp(1, 64);
    let (groups, token_blocks) = (w.rows.div_ceil(g.bn), m.div_ceil(g.bm));
    let grid = if g.persistent {
        // CTAs share the output tiles in contiguous runs (grid x only): one per multiprocessor,
        // or one per tile when the K range is split (then the splits already fill the device).
        let tiles = groups * token_blocks;
        let ctas = if splits == 1 {
            tiles.min(rt.sm_count().max(1) as usize)
        } else {
            tiles
        };
        (ctas as u32, 1, splits as u32)
    } else {
        (groups as u32, token_blocks as u32, splits as u32)
    };
    // Each split writes its own f32 slice of the workspace (no zeroing needed: every element of a
    // slice is written by exactly one CTA).
    let ws = if splits > 1 {
        rt.workspace(splits * m * w.rows * 4)?
    } else {
        0
    };
    args.push(KArg::Ptr(ws));
    rt.launch(g.name, grid, (g.threads, 1, 1), g.smem as u32, &args)?;
    if splits > 1 {
        splitk_finish(rt, ws, splits, m, w, ep, y)?;
    }
    Ok(())
}

/// Sums the `splits` f32 partial products in `ws` into Y, applying the epilogue.
fn splitk_finish(
    rt: &CudaRuntime,
    ws: u64,
    splits: usize,
    m: usize,
    w: &TileDeviceView,
    ep: &Epilogue,
    y: u64,
) -> Result<(), CudaError> {
    let i = |v: usize| KArg::I32(v as i32);
    let args = [
        KArg::Ptr(ws),
        i(splits),
        i(m),
        i(w.rows),
        KArg::Ptr(ep.bias),
        KArg::Ptr(ep.residual),
        KArg::I32(ep.gelu as i32),
        KArg::Ptr(y),
    ];
    rt.launch(
        &format!("splitk_finish_{}", w.elem.suffix()),
        grid_1d(m * w.rows),
        (256, 1, 1),
        0,
        &args,
    )
}

/// A one-dimensional grid of 256-thread blocks over `total` elements (grid-stride loops cover
/// what the cap leaves).
pub(crate) fn grid_1d(total: usize) -> (u32, u32, u32) {
    ((total.div_ceil(256)).clamp(1, 65_535 * 8) as u32, 1, 1)
}
