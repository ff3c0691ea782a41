//! The linear layer on the device: `Y[M,N] = act(X[M,K] W^T + b) + residual`.
//!
//! Weights come in four forms ([`LinearWeight`]): tile-encoded (the tile kernel reads the file's
//! bitmap, row offsets and values directly), dense (cuBLAS), kept rows (cuBLAS on the compacted
//! matrix, then a scatter that also applies the epilogue) and kept columns (a gather of X's kept
//! columns, then cuBLAS). Activations are f16 or bf16, row-major; accumulation is fp32.

use cudarc::cublas::{result as blas, sys as blas_sys};

use super::device::{CudaRuntime, DevBuf, ElemType, KArg};
use super::error::CudaError;
use super::tma::{
    rs_smem_bytes, rs_unsupported, tile_rs, tile_tma, tma_smem_bytes, tma_unsupported, RS_BM,
};
use super::upload::TileDeviceView;
use super::walk::{tile_walk, tile_walk_wg, walk_plan, walkwg_plan};

/// Largest tile grid width the tile kernel handles (its shared-memory union list).
pub const TILE_MAX_GRID_COLS: usize = 512;
/// Tokens per CTA of the tile kernel.
pub const TILE_BM: usize = 128;
/// Output features per CTA of the tile kernel.
pub const TILE_BN: usize = 128;
const TILE_THREADS: u32 = 256;
const TILE_STAGE_BYTES: usize = TILE_BM * 64 * 2;

/// What follows the product: bias (f32 on the device), erf-GELU, residual add (same type as Y).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Epilogue {
    /// Device address of `N` f32 bias values, or 0.
    pub bias: u64,
    /// Apply erf-GELU after the bias.
    pub gelu: bool,
    /// Device address of an `M x N` residual (row-major, Y's type) added last, or 0.
    pub residual: u64,
}

/// A linear weight resident on the device, `N` (out) x `K` (in).
#[derive(Debug, Clone, Copy)]
pub enum LinearWeight {
    /// Tile encoding, read in place by the tile kernel.
    Tile(TileDeviceView),
    /// Dense row-major `N x K` at `w`.
    Dense {
        /// Device address.
        w: u64,
        /// Out features.
        n: usize,
        /// In features.
        k: usize,
        /// Element type.
        elem: ElemType,
    },
    /// Kept output rows: compacted `[nr, K]` at `w`; `inv` holds `N` i32 (compact index or -1).
    Rows {
        /// Compacted values.
        w: u64,
        /// i32 inverse map, one per output feature.
        inv: u64,
        /// Out features.
        n: usize,
        /// Kept rows.
        nr: usize,
        /// In features.
        k: usize,
        /// Element type.
        elem: ElemType,
    },
    /// Kept input columns: compacted `[N, kc]` at `w`; `idx` holds `kc` u32 column indices.
    Cols {
        /// Compacted values.
        w: u64,
        /// u32 kept column indices.
        idx: u64,
        /// Out features.
        n: usize,
        /// Kept columns.
        kc: usize,
        /// In features.
        k: usize,
        /// Element type.
        elem: ElemType,
    },
}

impl LinearWeight {
    /// (out features, in features).
    pub fn dims(&self) -> (usize, usize) {
        match *self {
            LinearWeight::Tile(v) => (v.rows, v.cols),
            LinearWeight::Dense { n, k, .. }
            | LinearWeight::Rows { n, k, .. }
            | LinearWeight::Cols { n, k, .. } => (n, k),
        }
    }
    /// Element type.
    pub fn elem(&self) -> ElemType {
        match *self {
            LinearWeight::Tile(v) => v.elem,
            LinearWeight::Dense { elem, .. }
            | LinearWeight::Rows { elem, .. }
            | LinearWeight::Cols { elem, .. } => elem,
        }
    }
}

/// Scratch memory reused across calls (compacted activations and outputs).
#[derive(Debug, Default)]
pub struct Scratch {
    buf: Option<DevBuf>,
}

impl Scratch {
    fn get(&mut self, rt: &CudaRuntime, bytes: usize) -> Result<u64, CudaError> {
        if !self.buf.as_ref().is_some_and(|b| b.len() >= bytes) {
            self.buf = None;
            self.buf = Some(rt.alloc(bytes)?);
        }
        Ok(self.buf.as_ref().map(|b| b.ptr()).unwrap_or(0))
    }
}

/// Which tile kernel runs a tile weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TileKernel {
    /// `mma.sync` kernel (any architecture with tensor cores), 128-feature groups.
    Mma,
    /// Warpgroup-MMA kernel (sm_90), 64-feature groups.
    Wg64,
    /// Warpgroup-MMA kernel (sm_90), 128-feature groups.
    Wg128,
    /// Row-walk kernel (`mma.sync`, any architecture with tensor cores): X resident in shared
    /// memory, each warp walks one block row's kept tiles; no work on absent tiles.
    Walk,
    /// Row-walk kernel with warpgroup MMA (sm_90, 64x64 tiles): X resident in shared memory,
    /// the CTA streams its block rows' kept tiles through a ring of tile buffers.
    WalkWg,
    /// Union kernel fed by TMA (sm_90), 128 tokens x 128 features per CTA: a producer warp
    /// copies X and the kept tiles, two warpgroups multiply with warpgroup MMA.
    Tma128,
    /// The TMA union kernel with 256 tokens per CTA (each weight stage read once for twice the
    /// tokens; one CTA per multiprocessor).
    Tma256,
    /// Union kernel with the weights as register operands of the warpgroup MMA (sm_90; 16x16,
    /// 64x16, 128x16, 32x32 and 64x64 tiles), 128 features x 192 tokens per output tile, persistent
    /// CTAs: tiles loaded as they lie in the file, X copied by TMA, the output transposed through
    /// shared memory and stored by TMA while the next tile's products run.
    Rs,
}

impl TileKernel {
    /// Output features per CTA (the group whose tile columns are walked together).
    pub fn bn(self) -> usize {
        match self {
            TileKernel::Wg64 | TileKernel::WalkWg => 64,
            TileKernel::Mma
            | TileKernel::Wg128
            | TileKernel::Walk
            | TileKernel::Tma128
            | TileKernel::Tma256
            | TileKernel::Rs => 128,
        }
    }
    /// Tokens per CTA of the union kernels.
    pub fn bm(self) -> usize {
        match self {
            TileKernel::Tma256 => 256,
            TileKernel::Rs => RS_BM,
            _ => TILE_BM,
        }
    }
    /// Whether the kernel is persistent: a grid of at most one CTA per multiprocessor whose CTAs
    /// each take a run of output tiles, instead of one CTA per output tile.
    pub fn persistent(self) -> bool {
        self == TileKernel::Rs
    }
    pub(crate) fn name(self, v: &TileDeviceView) -> String {
        let e = v.elem.suffix();
        match self {
            TileKernel::Mma => format!("tile_gemm_{e}_{}x{}", v.th, v.tw),
            TileKernel::Walk => format!("tile_walk_{e}_{}x{}", v.th, v.tw),
            TileKernel::WalkWg => format!("tile_walkwg_{e}_{}x{}", v.th, v.tw),
            TileKernel::Tma128 | TileKernel::Tma256 => {
                format!("tile_tma_{e}_{}x{}_bm{}", v.th, v.tw, self.bm())
            }
            TileKernel::Rs => {
                format!("tile_rs_{e}_{}x{}_bm{}", v.th, v.tw, self.bm())
            }
            TileKernel::Wg64 | TileKernel::Wg128 => {
                format!("tile_wg_{e}_{}x{}_bn{}", v.th, v.tw, self.bn())
            }
        }
    }
    fn smem(self, th: usize) -> usize {
        match self {
            TileKernel::Mma | TileKernel::Walk | TileKernel::WalkWg => tile_smem_bytes(th),
            TileKernel::Tma128 | TileKernel::Tma256 => tma_smem_bytes(self.bm(), th),
            TileKernel::Rs => rs_smem_bytes(),
            _ => wg_smem_bytes(self.bn(), th),
        }
    }
}

/// Why the tile kernel cannot run this weight, or None when it can.
pub fn tile_kernel_unsupported(v: &TileDeviceView) -> Option<String> {
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

/// Dynamic shared memory of the tile kernel for tile height `th`.
pub fn tile_smem_bytes(th: usize) -> usize {
    let r = TILE_BN / th;
    let meta = TILE_MAX_GRID_COLS * (1 + 2 + 2 + 1 + 2 * r) + 4 * r + 4;
    2 * 3 * TILE_STAGE_BYTES + meta.div_ceil(16) * 16
}

/// Dynamic shared memory of the wgmma kernel: the stage ring (96 KiB for both group sizes), 1 KiB
/// for aligning it to the swizzle period, and the union list.
pub fn wg_smem_bytes(bn: usize, th: usize) -> usize {
    let r = (bn / th).max(1);
    let meta = TILE_MAX_GRID_COLS * (1 + 2 + 2 + 1 + 2 * r) + 4 * r + 4;
    let stages = if bn == 128 { 3 } else { 4 };
    stages * (TILE_BM + bn) * 128 + 1024 + meta.div_ceil(16) * 16
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

/// Every tile kernel this device can run for `v` at `m` tokens.
pub fn usable_kernels(rt: &CudaRuntime, v: &TileDeviceView, m: usize) -> Vec<TileKernel> {
    let mut out = vec![TileKernel::Mma];
    if rt.arch() == "sm_90" {
        out.extend(
            [TileKernel::Wg64, TileKernel::Wg128]
                .into_iter()
                .filter(|k| v.th <= k.bn()),
        );
    }
    if walk_plan(rt.max_smem_per_block(), rt.sm_count() as usize, m, v).is_some() {
        out.push(TileKernel::Walk);
    }
    if walkwg_plan(rt, m, v).is_some() {
        out.push(TileKernel::WalkWg);
    }
    for k in [TileKernel::Tma128, TileKernel::Tma256] {
        if tma_unsupported(rt, v, k.bm()).is_none() {
            out.push(k);
        }
    }
    if rs_unsupported(rt, v).is_none() {
        out.push(TileKernel::Rs);
    }
    out
}

/// Densities up to which the row-walk kernel is the default on sm_90 for tiles under 64 rows
/// (above it the wgmma union kernels multiply few absent tiles and issue faster).
pub const WALK_MAX_DENSITY: f64 = 0.6;
/// The same bound for tiles of 64 rows and more, whose union kernels waste less.
pub const WALK_MAX_DENSITY_TALL: f64 = 0.2;

/// Tokens from which the register-operand kernel (or, for 64-column tiles it does not take, the
/// TMA kernel) is the default (measured faster than the other union kernels at 4096 and 16384
/// tokens, level or slower at 128; 2048 lies between the measured points).
pub const TMA_MIN_TOKENS: usize = 2048;

/// In features from which the TMA kernel runs 256 tokens per CTA when it is the default (64x64
/// tiles: 15-28% faster than 128 tokens at 3072 -> 768, level at K = 768; 2026-11-29 18:15Z).
pub const TMA_256_MIN_K: usize = 2048;

/// The register-operand kernel multiplies every block row of a 128-feature group over the union
/// of their tile columns; for 16x16 tiles it is the default only while that union is at most this
/// multiple of the density (density 1, grouped masks), since scattered 16x16 masks make the union
/// nearly dense. Tiles of 32 rows and more (four, two or one block rows per group) always go to
/// it (measured ahead of the row walk at every density: 64x16 and 128x16 at 16:40Z, 32x32 and
/// 64x64 at 21:30Z).
pub const RS_MAX_UNION_WASTE: f64 = 1.5;

/// The kernel [`tile_gemm`] uses on this device for `m` tokens without measuring (the dispatcher
/// measures every kernel instead). The rule follows the H200 sweep in bench/RESULTS.md:
/// - from [`TMA_MIN_TOKENS`] tokens on sm_90: the register-operand kernel (16x16 at density 1
///   0.73-0.81x of cuBLAS at 16384 tokens; 64x64 0.90x at density 1 with the weights from shared
///   memory, where the 256-token TMA kernel ran 0.86-0.90x on 3072->768 and 0.58-0.61x on the
///   other shapes; ahead of every other kernel at densities 0.5-0.1), unless the tiles are 16x16
///   and the group union exceeds [`RS_MAX_UNION_WASTE`] x the density;
/// - 64-column tiles the register-operand kernel cannot run (K over 8192), from the same token
///   count: the TMA kernel, with 256-token CTAs from [`TMA_256_MIN_K`] in features;
/// - the row-walk kernel when 128 tokens of X fit in shared memory (K up to ~900) and the density
///   is at most [`WALK_MAX_DENSITY`] ([`WALK_MAX_DENSITY_TALL`] for 64-row tiles); with fewer
///   tokens per CTA it re-reads the weights too often;
/// - otherwise the wgmma union kernel on sm_90 (the `mma.sync` union kernel elsewhere), whose
///   group size follows the share of (group, tile column) pairs holding a kept tile (from the
///   bitmap when known, else the expectation for uniformly random masks): 64-feature groups
///   re-read X twice as often and ran ~0.6-0.7x as fast per product, so they pay only when their
///   union is well under the 128-feature one, or when the 128-feature grid would leave
///   multiprocessors idle.
///
/// The wgmma row-walk kernel ([`TileKernel::WalkWg`]) is never the unmeasured choice: it has not
/// beaten the others yet.
pub fn auto_kernel(rt: &CudaRuntime, v: &TileDeviceView, m: usize) -> TileKernel {
    let walk = walk_plan(rt.max_smem_per_block(), rt.sm_count() as usize, m, v);
    let bound = if v.th >= 64 {
        WALK_MAX_DENSITY_TALL
    } else {
        WALK_MAX_DENSITY
    };
    let walk_pays = walk.is_some_and(|p| p.bm == 128 || m < 128) && v.density() <= bound;
    if rt.arch() != "sm_90" {
        return if walk_pays {
            TileKernel::Walk
        } else {
            TileKernel::Mma
        };
    }
    let [u64_, u128_] = v
        .unions
        .map(|u| [f64::from(u[0]), f64::from(u[1])])
        .unwrap_or_else(|| {
            let d = v.density().clamp(0.0, 1.0);
            let union = |rows: usize| 1.0 - (1.0 - d).powi(rows.max(1) as i32);
            [union(64 / v.th), union(128 / v.th)]
        });
    // The register-operand kernel copies a 128-feature group's weights over the union of its tile
    // columns (and multiplies each 64-feature half over its own): it leads where that union stays
    // near the density (density 1, grouped masks, tiles of 32 rows and more). On scattered 16x16
    // masks below density 1 the row walk (when X fits) or the wgmma union kernel ran faster in
    // every measured row (e.g. 3072->768 at density 0.5: 0.53x vs 0.36x of cuBLAS, 2026-11-29
    // 18:15Z).
    if m >= TMA_MIN_TOKENS
        && rs_unsupported(rt, v).is_none()
        && (v.th >= 32 || u128_ <= RS_MAX_UNION_WASTE * v.density())
    {
        return TileKernel::Rs;
    }
    // 64-column tiles the register-operand kernel cannot run go to the TMA kernel; with long rows
    // (K from TMA_256_MIN_K) its 256-token CTAs lead: each weight stage serves twice the tokens.
    if v.tw == 64 && m >= TMA_MIN_TOKENS && tma_unsupported(rt, v, 128).is_none() {
        return if v.cols >= TMA_256_MIN_K && tma_unsupported(rt, v, 256).is_none() {
            TileKernel::Tma256
        } else {
            TileKernel::Tma128
        };
    }
    if walk_pays {
        return TileKernel::Walk;
    }
    if v.th > 64 {
        return TileKernel::Wg128;
    }
    let ctas128 = v.rows.div_ceil(128) * m.div_ceil(TILE_BM);
    if ctas128 < rt.sm_count().max(1) as usize || u64_ < 0.6 * u128_ {
        TileKernel::Wg64
    } else {
        TileKernel::Wg128
    }
}

/// K splits for the tile kernel: when the output tiles fill less than half a wave of the device
/// (two CTAs per multiprocessor), the tile columns are shared among up to 16 CTAs per output tile.
pub fn tile_splits(sm_count: usize, m: usize, w: &TileDeviceView) -> usize {
    tile_splits_bn(sm_count, m, w, TILE_BN)
}

/// [`tile_splits`] for a group size of `bn` features.
pub fn tile_splits_bn(sm_count: usize, m: usize, w: &TileDeviceView, bn: usize) -> usize {
    let ctas = w.rows.div_ceil(bn) * m.div_ceil(TILE_BM);
    let wave = 2 * sm_count.max(1);
    // Only split when the grid fills less than half a wave: the workspace and the finishing
    // kernel cost more than a partly idle device otherwise (measured: 192 CTAs split in two ran
    // slower than unsplit at 4096 tokens, 768->768).
    if 2 * ctas > wave {
        return 1;
    }
    let stages = (w.grid_cols * w.tw).div_ceil(64); // dense upper bound of stages per CTA
    wave.div_ceil(ctas).min(16).min((stages / 2).max(1))
}

/// Runs the tile kernel: `Y = act(X W^T + b) + residual` with W tile-encoded.
pub fn tile_gemm(
    rt: &CudaRuntime,
    x: u64,
    m: usize,
    w: &TileDeviceView,
    ep: &Epilogue,
    y: u64,
) -> Result<(), CudaError> {
    let kern = auto_kernel(rt, w, m);
    let splits = tile_splits_bn(rt.sm_count() as usize, m, w, kern.bn());
    tile_gemm_with(rt, x, m, w, ep, y, splits, kern)
}

/// [`tile_gemm`] with an explicit number of K splits (1: no split, fused epilogue).
pub fn tile_gemm_split(
    rt: &CudaRuntime,
    x: u64,
    m: usize,
    w: &TileDeviceView,
    ep: &Epilogue,
    y: u64,
    splits: usize,
) -> Result<(), CudaError> {
    tile_gemm_with(rt, x, m, w, ep, y, splits, auto_kernel(rt, w, m))
}

/// The tile kernel `kern` with `splits` K splits (1: no split, fused epilogue).
#[allow(clippy::too_many_arguments)]
pub fn tile_gemm_with(
    rt: &CudaRuntime,
    x: u64,
    m: usize,
    w: &TileDeviceView,
    ep: &Epilogue,
    y: u64,
    splits: usize,
    kern: TileKernel,
) -> Result<(), CudaError> {
    if let Some(why) = tile_kernel_unsupported(w) {
        return Err(CudaError::Invalid(format!("tile kernel: {why}")));
    }
    match kern {
        TileKernel::Walk => return tile_walk(rt, x, m, w, ep, y),
        TileKernel::WalkWg => return tile_walk_wg(rt, x, m, w, ep, y),
        TileKernel::Tma128 | TileKernel::Tma256 => {
            return tile_tma(rt, x, m, w, ep, y, splits, kern)
        }
        TileKernel::Rs => return tile_rs(rt, x, m, w, ep, y, splits),
        TileKernel::Mma | TileKernel::Wg64 | TileKernel::Wg128 => {}
    }
    // The wgmma union kernels (the other kernels check their own needs above).
    if kern != TileKernel::Mma && (rt.arch() != "sm_90" || w.th > kern.bn()) {
        return Err(CudaError::Invalid(format!(
            "tile kernel {kern:?} needs sm_90 and tiles no taller than {} (device {}, tile {}x{})",
            kern.bn(),
            rt.arch(),
            w.th,
            w.tw
        )));
    }
    // The union kernels take the split-K workspace after the common arguments.
    let args = tile_args(x, m, w, ep, y).to_vec();
    launch_union(
        rt,
        kern,
        TILE_THREADS,
        kern.smem(w.th),
        w,
        m,
        ep,
        y,
        splits,
        args,
    )
}

/// Launches the union kernel `kern` over `kern.bn()`-feature groups x `kern.bm()`-token blocks x
/// `splits` K splits with `args`, appending the split-K workspace (0 without splits), then sums
/// the splits into Y.
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_union(
    rt: &CudaRuntime,
    kern: TileKernel,
    threads: u32,
    smem: usize,
    w: &TileDeviceView,
    m: usize,
    ep: &Epilogue,
    y: u64,
    splits: usize,
    mut args: Vec<KArg>,
) -> Result<(), CudaError> {
    let splits = splits.clamp(1, 64);
    let (groups, token_blocks) = (w.rows.div_ceil(kern.bn()), m.div_ceil(kern.bm()));
    let grid = if kern.persistent() {
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
    rt.launch(&kern.name(w), grid, (threads, 1, 1), smem as u32, &args)?;
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

fn data_type(elem: ElemType) -> blas_sys::cudaDataType {
    match elem {
        ElemType::F16 => blas_sys::cudaDataType::CUDA_R_16F,
        ElemType::Bf16 => blas_sys::cudaDataType::CUDA_R_16BF,
    }
}

/// cuBLAS: `Y[M,N] = X[M,K] W[N,K]^T` (row-major; ldx/ldw/ldy in elements), fp32 compute.
#[allow(clippy::too_many_arguments)]
pub fn dense_gemm(
    rt: &CudaRuntime,
    elem: ElemType,
    x: u64,
    ldx: usize,
    m: usize,
    k: usize,
    w: u64,
    n: usize,
    y: u64,
) -> Result<(), CudaError> {
    let handle = *rt.blas()?.handle();
    rt.bind()?;
    let (alpha, beta) = (1.0f32, 0.0f32);
    let t = data_type(elem);
    // Column-major view: Y^T[N,M] = W[N,K] (W^T stored) * X^T[K,M].
    // SAFETY: pointers reference device buffers of the stated sizes; alpha/beta live across the call.
    unsafe {
        blas::gemm_ex(
            handle,
            blas_sys::cublasOperation_t::CUBLAS_OP_T,
            blas_sys::cublasOperation_t::CUBLAS_OP_N,
            n as i32,
            m as i32,
            k as i32,
            &alpha as *const f32 as *const _,
            w as *const _,
            t,
            k as i32,
            x as *const _,
            t,
            ldx as i32,
            &beta as *const f32 as *const _,
            y as *mut _,
            t,
            n as i32,
            blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(CudaError::cublas(format!("gemm {m}x{n}x{k}")))
}

fn grid_1d(total: usize) -> (u32, u32, u32) {
    ((total.div_ceil(256)).clamp(1, 65_535 * 8) as u32, 1, 1)
}

/// Applies the epilogue in place on Y (after cuBLAS), or, with `inv`, scatters compacted rows.
#[allow(clippy::too_many_arguments)]
pub fn epilogue(
    rt: &CudaRuntime,
    elem: ElemType,
    y: u64,
    m: usize,
    n: usize,
    yc: u64,
    ldc: usize,
    inv: u64,
    ep: &Epilogue,
) -> Result<(), CudaError> {
    if inv == 0 && *ep == Epilogue::default() {
        return Ok(()); // nothing to apply
    }
    let i = |v: usize| KArg::I32(v as i32);
    let args = [
        KArg::Ptr(y),
        i(m),
        i(n),
        KArg::Ptr(yc),
        i(ldc),
        KArg::Ptr(inv),
        KArg::Ptr(ep.bias),
        KArg::Ptr(ep.residual),
        KArg::I32(ep.gelu as i32),
    ];
    rt.launch(
        &format!("epilogue_{}", elem.suffix()),
        grid_1d(m * n),
        (256, 1, 1),
        0,
        &args,
    )
}

/// Expands a tile-encoded weight into a dense `N x K` device matrix (for cuBLAS).
pub fn densify(rt: &CudaRuntime, v: &TileDeviceView) -> Result<DevBuf, CudaError> {
    if v.has_element_bitmaps {
        return Err(CudaError::Invalid(
            "densify on the device needs a tile encoding without element bitmaps".into(),
        ));
    }
    let buf = rt.alloc(v.rows * v.cols * 2)?;
    rt.fill_u16(buf.ptr(), 0, v.rows * v.cols)?;
    let i = |x: usize| KArg::I32(x as i32);
    let args = [
        KArg::Ptr(v.bitmap),
        KArg::Ptr(v.row_offsets),
        KArg::Ptr(v.values),
        i(v.rows),
        i(v.cols),
        i(v.th),
        i(v.tw),
        i(v.grid_cols),
        KArg::Ptr(buf.ptr()),
    ];
    rt.launch(
        &format!("densify_tiles_{}", v.elem.suffix()),
        (v.grid_rows as u32, 1, 1),
        (256, 1, 1),
        0,
        &args,
    )?;
    Ok(buf)
}

/// `Y = act(X W^T + b) + residual` for any weight form. `dense_fallback`, when given, is a dense
/// copy of a tile weight to run through cuBLAS instead of the tile kernel.
#[allow(clippy::too_many_arguments)]
pub fn linear(
    rt: &CudaRuntime,
    x: u64,
    m: usize,
    w: &LinearWeight,
    dense_fallback: Option<u64>,
    ep: &Epilogue,
    y: u64,
    scratch: &mut Scratch,
) -> Result<(), CudaError> {
    let elem = w.elem();
    match (*w, dense_fallback) {
        (LinearWeight::Tile(v), None) => tile_gemm(rt, x, m, &v, ep, y),
        (LinearWeight::Tile(v), Some(d)) => {
            dense_gemm(rt, elem, x, v.cols, m, v.cols, d, v.rows, y)?;
            epilogue(rt, elem, y, m, v.rows, 0, 0, 0, ep)
        }
        (LinearWeight::Dense { w, n, k, .. }, _) => {
            dense_gemm(rt, elem, x, k, m, k, w, n, y)?;
            epilogue(rt, elem, y, m, n, 0, 0, 0, ep)
        }
        (
            LinearWeight::Rows {
                w, inv, n, nr, k, ..
            },
            _,
        ) => {
            let yc = scratch.get(rt, m * nr.max(1) * 2)?;
            if nr > 0 {
                dense_gemm(rt, elem, x, k, m, k, w, nr, yc)?;
            }
            epilogue(rt, elem, y, m, n, yc, nr.max(1), inv, ep)
        }
        (
            LinearWeight::Cols {
                w, idx, n, kc, k, ..
            },
            _,
        ) => {
            if kc == 0 {
                rt.fill_u16(y, 0, m * n)?;
                return epilogue(rt, elem, y, m, n, 0, 0, 0, ep);
            }
            let xc = scratch.get(rt, m * kc * 2)?;
            let i = |v: usize| KArg::I32(v as i32);
            let args = [
                KArg::Ptr(x),
                i(m),
                i(k),
                KArg::Ptr(idx),
                i(kc),
                KArg::Ptr(xc),
            ];
            rt.launch(
                &format!("gather_cols_{}", elem.suffix()),
                grid_1d(m * kc),
                (256, 1, 1),
                0,
                &args,
            )?;
            dense_gemm(rt, elem, xc, kc, m, kc, w, n, y)?;
            epilogue(rt, elem, y, m, n, 0, 0, 0, ep)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_memory_fits_two_ctas_per_sm() {
        for th in [16, 32, 64, 128] {
            let b = tile_smem_bytes(th);
            assert!(b <= 113 * 1024, "th={th}: {b} bytes");
            for bn in [64, 128] {
                if th <= bn {
                    let b = wg_smem_bytes(bn, th);
                    assert!(b <= 113 * 1024, "wg bn={bn} th={th}: {b} bytes");
                }
            }
        }
    }
}
