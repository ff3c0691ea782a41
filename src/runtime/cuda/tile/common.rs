//! What every tile kernel family shares: the weight's shape as planning reads it, its device view,
//! the limits common to all families, the leading kernel arguments and the launch of a union
//! kernel with its split-K finish.
//!
//! This module imports no kernel family; the families import it.

use std::ops::Deref;
use std::sync::MutexGuard;

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, LaunchArgs, PushKernelArg};

use super::super::device::{CudaRuntime, ElemType};
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
/// [`super::super::upload::DeviceTiles`]), so the addresses always describe the weight its shape
/// says; they stay valid while the value that owns the allocation lives, which is why every
/// launch that takes a view is `unsafe`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TileDeviceView {
    /// What planning reads.
    pub shape: TileShape,
    /// Bitmap words (u64).
    pub(crate) bitmap: u64,
    /// Row offsets (u32, `grid_rows + 1`).
    pub(crate) row_offsets: u64,
    /// Kept tile values.
    pub(crate) values: u64,
    /// The register-operand kernel's stage plans on the device, 0 when the weight's tile shape
    /// has none (the kernel then cannot run it).
    pub(crate) rs_plans: u64,
    /// Plans per feature group in `rs_plans`.
    pub(crate) rs_plan_stride: usize,
    /// The split kernel's units on the device, followed by its reduction counters; 0 when the
    /// weight has no such plan (the kernel then cannot run it). The kernel writes the counters
    /// and leaves them at zero, so launches on one weight must not overlap (they go to the
    /// runtime's one stream).
    pub(crate) sk_plan: u64,
    /// Units in `sk_plan`.
    pub(crate) sk_units: usize,
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

/// A null device pointer, for optional buffers a kernel tests against null.
pub(crate) static NULL_PTR: u64 = 0;

/// Pushes `v`, or a null pointer when there is none.
pub(crate) fn arg_opt<'a, 'c: 'a, T>(b: &mut LaunchArgs<'a>, v: &'a Option<CudaView<'c, T>>) {
    match v {
        Some(v) => b.arg(v),
        None => b.arg(&NULL_PTR),
    };
}

/// Checks that X holds `m x K` values, Y `m x N` and the epilogue its bounds, for a tile weight.
pub(crate) fn check_io(
    x: &CudaView<'_, u16>,
    m: usize,
    w: &TileShape,
    ep: &Epilogue<'_>,
    y: &CudaViewMut<'_, u16>,
) -> Result<(), CudaError> {
    let short = |what: &str, have: usize, need: usize| {
        CudaError::Invalid(format!(
            "tile kernel: {what} holds {have} values, needs {need}"
        ))
    };
    if x.len() < m * w.cols {
        return Err(short("X", x.len(), m * w.cols));
    }
    if y.len() < m * w.rows {
        return Err(short("Y", y.len(), m * w.rows));
    }
    ep.check(m, w.rows)
}

/// A size as the kernels' 32-bit `int` parameter.
pub(crate) fn int(v: usize) -> Result<i32, CudaError> {
    i32::try_from(v)
        .map_err(|_| CudaError::Invalid(format!("size {v} does not fit a 32-bit kernel argument")))
}

/// The integer arguments every tile kernel takes: M, K (also X's pitch), N (also Y's pitch), the
/// tile grid and the GELU switch.
pub(crate) struct TileInts {
    pub m: i32,
    pub k: i32,
    pub n: i32,
    pub grid_rows: i32,
    pub grid_cols: i32,
    pub gelu: i32,
}

impl TileInts {
    /// The integers of `m` tokens of `w` with `ep`.
    pub fn new(m: usize, w: &TileShape, ep: &Epilogue<'_>) -> Result<Self, CudaError> {
        Ok(TileInts {
            m: int(m)?,
            k: int(w.cols)?,
            n: int(w.rows)?,
            grid_rows: int(w.grid_rows)?,
            grid_cols: int(w.grid_cols)?,
            gelu: i32::from(ep.gelu),
        })
    }

    /// Pushes the arguments every tile kernel starts with: X, M, K, ldx, the weight's bitmap, row
    /// offsets and values, N, the tile grid, the epilogue, Y and ldy (X and Y packed, so ldx = K
    /// and ldy = N).
    pub fn push_all<'a, 'x: 'a, 'e: 'a, 'y: 'a>(
        &'a self,
        b: &mut LaunchArgs<'a>,
        x: &'a CudaView<'x, u16>,
        w: &'a TileDeviceView,
        ep: &'a Epilogue<'e>,
        y: &'a mut CudaViewMut<'y, u16>,
    ) {
        b.arg(x).arg(&self.m).arg(&self.k).arg(&self.k);
        b.arg(&w.bitmap).arg(&w.row_offsets).arg(&w.values);
        self.push_grid(b);
        self.push_epilogue(b, ep);
        b.arg(y).arg(&self.n);
    }

    /// Pushes N and the tile grid.
    pub fn push_grid<'a>(&'a self, b: &mut LaunchArgs<'a>) {
        b.arg(&self.n).arg(&self.grid_rows).arg(&self.grid_cols);
    }

    /// Pushes the bias, the residual and the GELU switch.
    pub fn push_epilogue<'a, 'c: 'a>(&'a self, b: &mut LaunchArgs<'a>, ep: &'a Epilogue<'c>) {
        arg_opt(b, &ep.bias);
        arg_opt(b, &ep.residual);
        b.arg(&self.gelu);
    }
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

/// A union kernel's launch over its feature groups x token blocks x K splits, with the split-K
/// workspace held from before its arguments are pushed until the splits are summed.
pub(crate) struct UnionLaunch<'r> {
    g: UnionGrid<'r>,
    grid: (u32, u32, u32),
    splits: usize,
    ws: Option<MutexGuard<'r, Option<CudaSlice<f32>>>>,
}

impl<'r> UnionLaunch<'r> {
    /// Plans `g` for `m` tokens of `w` with `splits` K splits (clamped to 1..=64).
    pub fn new(
        rt: &'r CudaRuntime,
        g: UnionGrid<'r>,
        w: &TileShape,
        m: usize,
        splits: usize,
    ) -> Result<Self, CudaError> {
        let splits = splits.clamp(1, 64);
        let (groups, token_blocks) = (w.rows.div_ceil(g.bn), m.div_ceil(g.bm));
        let grid = if g.persistent {
            // CTAs share the output tiles in contiguous runs (grid x only): one per
            // multiprocessor, or one per tile when the K range is split (then the splits already
            // fill the device).
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
        // Each split writes its own f32 slice of the workspace (no zeroing needed: every element
        // of a slice is written by exactly one CTA).
        let ws = if splits > 1 {
            Some(rt.workspace(splits * m * w.rows)?)
        } else {
            None
        };
        Ok(UnionLaunch {
            g,
            grid,
            splits,
            ws,
        })
    }

    /// The kernel with its shared memory raised, to build the arguments on.
    pub fn kernel(&self, rt: &CudaRuntime) -> Result<cudarc::driver::CudaFunction, CudaError> {
        rt.kernel(self.g.name, self.g.smem as u32)
    }

    /// Pushes the split-K workspace (null without splits), the union kernels' last argument.
    pub fn push_workspace<'a>(&'a self, b: &mut LaunchArgs<'a>) {
        match self.ws.as_ref().and_then(|g| g.as_ref()) {
            Some(ws) => b.arg(ws),
            None => b.arg(&NULL_PTR),
        };
    }

    /// Launches the kernel with the arguments on `b`.
    ///
    /// # Safety
    /// `b` holds the kernel's arguments (workspace last), every buffer sized for `m` tokens of
    /// the weight this launch was planned for.
    pub unsafe fn launch(&self, rt: &CudaRuntime, b: &mut LaunchArgs<'_>) -> Result<(), CudaError> {
        let (threads, smem) = (self.g.threads, self.g.smem as u32);
        // SAFETY: the caller's contract.
        unsafe { rt.launch(b, self.g.name, self.grid, (threads, 1, 1), smem) }
    }

    /// Sums the splits' f32 partial products into Y, applying the epilogue (nothing to do
    /// without splits: the kernel applied it).
    pub fn finish(
        &self,
        rt: &CudaRuntime,
        m: usize,
        w: &TileShape,
        ep: &Epilogue<'_>,
        y: &mut CudaViewMut<'_, u16>,
    ) -> Result<(), CudaError> {
        let Some(ws) = self.ws.as_ref().and_then(|g| g.as_ref()) else {
            return Ok(());
        };
        check_io_out(m, w, ep, y)?;
        let name = format!("splitk_finish_{}", w.elem.suffix());
        let (splits, mi, n, gelu) = (int(self.splits)?, int(m)?, int(w.rows)?, i32::from(ep.gelu));
        let f = rt.kernel(&name, 0)?;
        let mut b = rt.stream().launch_builder(&f);
        b.arg(ws).arg(&splits).arg(&mi).arg(&n);
        arg_opt(&mut b, &ep.bias);
        arg_opt(&mut b, &ep.residual);
        b.arg(&gelu).arg(y);
        // SAFETY: the workspace holds splits x m x N f32 values (sized in new), Y m x N values
        // and the epilogue its bounds (checked above); the arguments follow the kernel's order.
        unsafe { rt.launch(&mut b, &name, grid_1d(m * w.rows), (256, 1, 1), 0) }
    }
}

/// Checks Y and the epilogue for `m` tokens of `w`.
fn check_io_out(
    m: usize,
    w: &TileShape,
    ep: &Epilogue<'_>,
    y: &CudaViewMut<'_, u16>,
) -> Result<(), CudaError> {
    if y.len() < m * w.rows {
        return Err(CudaError::Invalid(format!(
            "split-K finish: Y holds {} values, needs {}",
            y.len(),
            m * w.rows
        )));
    }
    ep.check(m, w.rows)
}

/// A one-dimensional grid of 256-thread blocks over `total` elements (grid-stride loops cover
/// what the cap leaves).
pub(crate) fn grid_1d(total: usize) -> (u32, u32, u32) {
    ((total.div_ceil(256)).clamp(1, 65_535 * 8) as u32, 1, 1)
}

/// Runs a union kernel of 256 threads with one CTA per `kern.bn()` features x `kern.bm()` tokens
/// that takes the common tile arguments then the split-K workspace (`mma`, `wgmma`).
///
/// # Safety
/// `w`'s addresses are those of a live upload on this runtime's device.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn launch_union(
    rt: &CudaRuntime,
    kern: super::TileKernel,
    smem: usize,
    x: &CudaView<'_, u16>,
    m: usize,
    w: &TileDeviceView,
    ep: &Epilogue<'_>,
    y: &mut CudaViewMut<'_, u16>,
    splits: usize,
) -> Result<(), CudaError> {
    check_io(x, m, w, ep, y)?;
    let ints = TileInts::new(m, w, ep)?;
    let name = kern.entry_name(w);
    let g = UnionGrid {
        name: &name,
        bn: kern.bn(),
        bm: kern.bm(),
        persistent: false,
        threads: 256,
        smem,
    };
    let launch = UnionLaunch::new(rt, g, w, m, splits)?;
    let f = launch.kernel(rt)?;
    {
        let mut b = rt.stream().launch_builder(&f);
        ints.push_all(&mut b, x, w, ep, y);
        launch.push_workspace(&mut b);
        // SAFETY: X, Y and the epilogue were checked for m tokens of w; w's addresses are the
        // caller's; the arguments follow the union kernels' order.
        unsafe { launch.launch(rt, &mut b)? };
    }
    launch.finish(rt, m, w, ep, y)
}
