//! The tile-sparse GEMM kernels: one module per kernel family behind one interface.
//!
//! Every family computes `Y = act(X W^T + b) + residual` from the same inputs (X, the weight's
//! bitmap, row offsets and values read in place, the epilogue, Y). [`TileFamily`] is what each
//! says about itself: which weights and devices it takes, and its launch. [`TileKernel`] names a
//! kernel; [`auto_kernel`] picks one without measuring, and the dispatcher
//! ([`super::Dispatcher`]) times the [`usable_kernels`] once per weight and token bucket.
//!
//! - [`mma`]: union kernel with `mma.sync` (any architecture with tensor cores: the sm_80 path).
//! - [`wgmma`]: union kernel with warpgroup MMA fed by cp.async (sm_90).
//! - [`walk`]: row walk with X resident in shared memory (any architecture with tensor cores).
//! - [`tma`]: union kernel fed by TMA from a producer warp (sm_90).
//! - [`rs`]: weights as register operands of the warpgroup MMA, persistent CTAs, stage plans made
//!   at upload (sm_90).
//! - [`sk`]: short runs of kept tiles spread over every multiprocessor, partial sums reduced by
//!   the last unit of each slice, plan made at upload (small token counts, any architecture with
//!   tensor cores).
//!
//! The plan a weight needs is made once at upload ([`TilePrep`]), not at each launch.

pub(crate) mod common;
pub mod mma;
pub mod rs;
pub mod rs_plan;
pub mod sk;
pub mod sk_plan;
mod tensor_map;
pub mod tma;
pub mod walk;
pub mod wgmma;

pub(crate) use common::grid_1d;
pub use common::{
    tile_kernel_unsupported, union_meta_bytes, TileDeviceView, TileShape, TILE_BM, TILE_BN,
    TILE_MAX_GRID_COLS,
};

use cudarc::driver::{CudaView, CudaViewMut};
use sha2::{Digest, Sha256};

use super::device::{CudaRuntime, ElemType};
use super::epilogue::Epilogue;
use super::error::CudaError;
use super::host::union_fractions;
use rs_plan::{RsPlans, TileGeometry};
use sk_plan::SkPlan;

/// What kernel planning needs to know about the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceLimits {
    /// Architecture name, such as `sm_90`.
    pub arch: String,
    /// Multiprocessors.
    pub sm_count: usize,
    /// Most dynamic shared memory one CTA may opt into (bytes).
    pub max_smem: usize,
}

/// Why a kernel needing `smem` bytes of shared memory per CTA cannot run on `dev`, if it cannot.
pub(crate) fn smem_over_limit(smem: usize, dev: &DeviceLimits) -> Option<String> {
    (smem > dev.max_smem).then(|| {
        format!(
            "needs {smem} bytes of shared memory (device {})",
            dev.max_smem
        )
    })
}

impl DeviceLimits {
    /// Whether the device runs the Hopper-only (sm_90a) kernels.
    pub fn hopper(&self) -> bool {
        self.arch == "sm_90"
    }
}

/// Which tile kernel runs a tile weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum TileKernel {
    /// `mma.sync` union kernel (any architecture with tensor cores), 128-feature groups.
    Mma,
    /// Warpgroup-MMA union kernel (sm_90), 64-feature groups.
    Wg64,
    /// Warpgroup-MMA union kernel (sm_90), 128-feature groups.
    Wg128,
    /// Row walk (`mma.sync`, any architecture with tensor cores): X resident in shared memory,
    /// each warp walks one block row's kept tiles; no work on absent tiles.
    Walk,
    /// Union kernel fed by TMA (sm_90), 128 tokens x 128 features per CTA.
    Tma128,
    /// The TMA union kernel with 256 tokens per CTA (one CTA per multiprocessor).
    Tma256,
    /// Register-operand warpgroup MMA (sm_90), 128 features x 192 tokens per output tile,
    /// persistent CTAs.
    Rs,
    /// Split kernel for small token counts (`mma.sync`, any architecture with tensor cores):
    /// short runs of a block row's kept tiles per warp, reduced per 16-feature slice.
    Sk,
}

impl TileKernel {
    /// Every kernel.
    pub const ALL: [TileKernel; 8] = [
        TileKernel::Mma,
        TileKernel::Wg64,
        TileKernel::Wg128,
        TileKernel::Walk,
        TileKernel::Tma128,
        TileKernel::Tma256,
        TileKernel::Rs,
        TileKernel::Sk,
    ];

    /// Output features per CTA (the group whose tile columns are walked together).
    pub fn bn(self) -> usize {
        match self {
            TileKernel::Wg64 => 64,
            TileKernel::Sk => 16,
            _ => TILE_BN,
        }
    }

    /// Tokens per CTA (or per output tile of the persistent kernel).
    pub fn bm(self) -> usize {
        match self {
            TileKernel::Tma256 => 256,
            TileKernel::Rs => rs::RS_BM,
            TileKernel::Sk => sk_plan::SK_TOKENS_PER_ITEM,
            _ => TILE_BM,
        }
    }

    /// The family that runs this kernel.
    pub fn family(self) -> &'static dyn TileFamily {
        match self {
            TileKernel::Mma => &mma::Mma,
            TileKernel::Wg64 | TileKernel::Wg128 => &wgmma::Wgmma,
            TileKernel::Walk => &walk::Walk,
            TileKernel::Tma128 | TileKernel::Tma256 => &tma::Tma,
            TileKernel::Rs => &rs::Rs,
            TileKernel::Sk => &sk::Sk,
        }
    }

    /// Short lower-case name (`mma`, `wg64`, `wg128`, `walk`, `tma128`, `tma256`, `rs`, `sk`).
    pub fn label(self) -> &'static str {
        match self {
            TileKernel::Mma => "mma",
            TileKernel::Wg64 => "wg64",
            TileKernel::Wg128 => "wg128",
            TileKernel::Walk => "walk",
            TileKernel::Tma128 => "tma128",
            TileKernel::Tma256 => "tma256",
            TileKernel::Rs => "rs",
            TileKernel::Sk => "sk",
        }
    }

    /// The kernel a [`TileKernel::label`] names.
    pub fn from_label(s: &str) -> Option<TileKernel> {
        TileKernel::ALL.into_iter().find(|k| k.label() == s)
    }

    /// The entry point of this kernel for `v`'s tile shape and element type (the row walk adds
    /// its token block size at launch).
    pub fn entry_name(self, v: &TileShape) -> String {
        let e = v.elem.suffix();
        let (th, tw) = (v.th, v.tw);
        match self {
            TileKernel::Mma => format!("tile_gemm_{e}_{th}x{tw}"),
            TileKernel::Walk => format!("tile_walk_{e}_{th}x{tw}"),
            TileKernel::Tma128 | TileKernel::Tma256 => {
                format!("tile_tma_{e}_{th}x{tw}_bm{}", self.bm())
            }
            TileKernel::Rs => format!("tile_rs_{e}_{th}x{tw}_bm{}", self.bm()),
            TileKernel::Sk => format!("tile_sk_{e}_{th}x{tw}"),
            TileKernel::Wg64 | TileKernel::Wg128 => {
                format!("tile_wg_{e}_{th}x{tw}_bn{}", self.bn())
            }
        }
    }
}

/// One family of tile kernels: which weights it takes on a device, and its launch.
pub trait TileFamily: Sync {
    /// The kernel file (under `kernels/`).
    fn file(&self) -> &'static str;

    /// Why `kern` (of this family) cannot run `w` at `m` tokens on `dev`, or None when it can.
    fn unsupported(
        &self,
        dev: &DeviceLimits,
        kern: TileKernel,
        w: &TileShape,
        m: usize,
    ) -> Option<String>;

    /// Runs `kern` on `m` tokens of X into Y with `splits` K splits (1: no split, fused epilogue;
    /// families without a split ignore it). X, Y and the epilogue are checked against `m` and
    /// `w` before the launch.
    ///
    /// # Safety
    /// `w`'s addresses are those of the upload that made it, still alive, on this runtime's
    /// device.
    #[allow(clippy::too_many_arguments)]
    unsafe fn launch(
        &self,
        rt: &CudaRuntime,
        kern: TileKernel,
        x: &CudaView<'_, u16>,
        m: usize,
        w: &TileDeviceView,
        ep: &Epilogue<'_>,
        y: &mut CudaViewMut<'_, u16>,
        splits: usize,
    ) -> Result<(), CudaError>;
}

/// Why `kern` cannot run `w` at `m` tokens on `dev`, or None when it can.
pub fn kernel_unsupported(
    dev: &DeviceLimits,
    kern: TileKernel,
    w: &TileShape,
    m: usize,
) -> Option<String> {
    tile_kernel_unsupported(w).or_else(|| kern.family().unsupported(dev, kern, w, m))
}

/// Every tile kernel `dev` can run for `w` at `m` tokens.
pub fn usable_kernels(dev: &DeviceLimits, w: &TileShape, m: usize) -> Vec<TileKernel> {
    TileKernel::ALL
        .into_iter()
        .filter(|&k| kernel_unsupported(dev, k, w, m).is_none())
        .collect()
}

/// Densities up to which the row-walk kernel is the default on sm_90 for tiles under 64 rows
/// (above it the wgmma union kernels multiply few absent tiles and issue faster).
pub const WALK_MAX_DENSITY: f64 = 0.6;
/// The same bound for tiles of 64 rows and more, whose union kernels waste less.
pub const WALK_MAX_DENSITY_TALL: f64 = 0.2;
/// Tokens from which the register-operand kernel (or, for 64-column tiles it does not take, the
/// TMA kernel) is the default: below it the union kernels' shorter launches win.
pub const TMA_MIN_TOKENS: usize = 2048;
/// In features from which the TMA kernel runs 256 tokens per CTA when it is the default: long
/// rows let each weight stage serve twice the tokens.
pub const TMA_256_MIN_K: usize = 2048;
/// For 16x16 tiles the register-operand kernel is the default only while the 128-feature group
/// union is at most this multiple of the density: it multiplies every block row of a group over
/// that union, and scattered 16x16 masks make the union nearly dense. Taller tiles always go to it.
pub const RS_MAX_UNION_WASTE: f64 = 1.5;

/// The kernel to run `w` at `m` tokens without measuring (the dispatcher measures instead, where
/// it may). The rule follows the sweep in bench/RESULTS.md:
/// - from [`TMA_MIN_TOKENS`] tokens on sm_90: the register-operand kernel, unless the tiles are
///   16x16 and the group union exceeds [`RS_MAX_UNION_WASTE`] x the density;
/// - 64-column tiles the register-operand kernel cannot run, from the same token count: the TMA
///   kernel, with 256-token CTAs from [`TMA_256_MIN_K`] in features;
/// - the row walk when 128 tokens of X fit in shared memory and the density is at most
///   [`WALK_MAX_DENSITY`] ([`WALK_MAX_DENSITY_TALL`] for 64-row tiles);
/// - otherwise the wgmma union kernel on sm_90 (`mma` elsewhere), with 64-feature groups only
///   when their union is well under the 128-feature one or 128-feature groups leave
///   multiprocessors idle.
pub fn auto_kernel(dev: &DeviceLimits, v: &TileShape, m: usize) -> TileKernel {
    let walk = walk::walk_plan(dev.max_smem, dev.sm_count, m, v);
    let bound = if v.th >= 64 {
        WALK_MAX_DENSITY_TALL
    } else {
        WALK_MAX_DENSITY
    };
    let walk_pays = walk.is_some_and(|p| p.bm == 128 || m < 128) && v.density() <= bound;
    if !dev.hopper() {
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
    let ok = |k: TileKernel| kernel_unsupported(dev, k, v, m).is_none();
    if m >= TMA_MIN_TOKENS
        && ok(TileKernel::Rs)
        && (v.th >= 32 || u128_ <= RS_MAX_UNION_WASTE * v.density())
    {
        return TileKernel::Rs;
    }
    if v.tw == 64 && m >= TMA_MIN_TOKENS && ok(TileKernel::Tma128) {
        return if v.cols >= TMA_256_MIN_K && ok(TileKernel::Tma256) {
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
    if ctas128 < dev.sm_count.max(1) || u64_ < 0.6 * u128_ {
        TileKernel::Wg64
    } else {
        TileKernel::Wg128
    }
}

/// K splits for a union kernel with `bn`-feature groups: when the output tiles fill less than
/// half a wave of the device (two CTAs per multiprocessor), the tile columns are shared among up
/// to 16 CTAs per output tile. Above half a wave the workspace and the finishing kernel cost more
/// than a partly idle device.
pub fn tile_splits(sm_count: usize, m: usize, w: &TileShape, bn: usize) -> usize {
    let ctas = w.rows.div_ceil(bn) * m.div_ceil(TILE_BM);
    let wave = 2 * sm_count.max(1);
    if 2 * ctas > wave {
        return 1;
    }
    let stages = (w.grid_cols * w.tw).div_ceil(64); // dense upper bound of stages per CTA
    wave.div_ceil(ctas).min(16).min((stages / 2).max(1))
}

/// Runs tile kernel `kern` on `m` tokens of X (`m x K` values) into Y (`m x N`) with `splits` K
/// splits (None: the kernel's default for this launch). Sizes are checked before the launch.
///
/// # Safety
/// As [`TileFamily::launch`]: `w`'s upload is alive, on this runtime's device.
#[allow(clippy::too_many_arguments)]
pub unsafe fn tile_gemm_with(
    rt: &CudaRuntime,
    x: &CudaView<'_, u16>,
    m: usize,
    w: &TileDeviceView,
    ep: &Epilogue<'_>,
    y: &mut CudaViewMut<'_, u16>,
    splits: Option<usize>,
    kern: TileKernel,
) -> Result<(), CudaError> {
    let dev = rt.limits();
    if let Some(why) = kernel_unsupported(&dev, kern, w, m) {
        return Err(CudaError::Invalid(format!("tile kernel {kern:?}: {why}")));
    }
    common::check_io(x, m, w, ep, y)?;
    let splits = splits.unwrap_or_else(|| tile_splits(dev.sm_count, m, w, kern.bn()));
    // SAFETY: the caller's bounds, passed on.
    unsafe { kern.family().launch(rt, kern, x, m, w, ep, y, splits) }
}

/// Runs `w` on `m` tokens with the kernel [`auto_kernel`] picks.
///
/// # Safety
/// As [`tile_gemm_with`].
pub unsafe fn tile_gemm(
    rt: &CudaRuntime,
    x: &CudaView<'_, u16>,
    m: usize,
    w: &TileDeviceView,
    ep: &Epilogue<'_>,
    y: &mut CudaViewMut<'_, u16>,
) -> Result<(), CudaError> {
    let kern = auto_kernel(&rt.limits(), w, m);
    // SAFETY: the caller's bounds, passed on.
    unsafe { tile_gemm_with(rt, x, m, w, ep, y, None, kern) }
}

/// What the host derives from a tile weight's bitmap once, at upload: the union fractions and
/// work spread kernel choice reads, the mask's signature (the tuning cache's key), the
/// register-operand kernel's stage plans and the split kernel's units.
#[derive(Debug, Clone)]
pub struct TilePrep {
    /// [`TileShape::unions`].
    pub unions: [f32; 2],
    /// [`TileShape::work_spread`].
    pub work_spread: f32,
    /// [`TileShape::mask_sha256`].
    pub mask_sha256: [u8; 32],
    /// The stage plans' bytes and plans per group, for tile shapes the register-operand kernel
    /// runs.
    pub rs_plans: Option<(Vec<u8>, usize)>,
    /// The split kernel's plan, for tile shapes it runs.
    pub sk_plan: Option<SkPlan>,
}

/// The plans of one weight as one device buffer: the register-operand kernel's stage plans and
/// the split kernel's units with their counters, each at a 256-byte aligned offset.
#[derive(Debug, Clone, Default)]
pub struct PlanBytes {
    /// The buffer (empty when the weight has no plan).
    pub bytes: Vec<u8>,
    /// Offset of the stage plans and plans per group.
    pub rs: Option<(usize, usize)>,
    /// Offset of the split kernel's units and their count.
    pub sk: Option<(usize, usize)>,
}

impl TilePrep {
    /// Plans a weight of geometry `g` from its bitmap and row offsets.
    pub fn new(bitmap: &[u64], row_offsets: &[u32], g: TileGeometry) -> Self {
        let mut h = Sha256::new();
        for w in bitmap {
            h.update(w.to_le_bytes());
        }
        TilePrep {
            unions: union_fractions(bitmap, g.grid_rows, g.grid_cols, g.th),
            work_spread: rs::work_spread(bitmap, g),
            mask_sha256: h.finalize().into(),
            rs_plans: RsPlans::new(bitmap, row_offsets, g).map(|p| (p.to_bytes(), p.stride)),
            sk_plan: SkPlan::new(bitmap, row_offsets, g),
        }
    }

    /// Every plan in one buffer, to upload once.
    pub fn plan_bytes(&self) -> PlanBytes {
        let mut out = PlanBytes::default();
        if let Some((b, stride)) = &self.rs_plans {
            out.rs = Some((0, *stride));
            out.bytes.extend_from_slice(b);
        }
        if let Some(p) = self.sk_plan.as_ref().filter(|p| !p.units.is_empty()) {
            let at = out.bytes.len().div_ceil(256) * 256;
            out.bytes.resize(at, 0);
            out.bytes.extend_from_slice(&p.to_bytes());
            out.sk = Some((at, p.units.len()));
        }
        out
    }

    /// The shape of a weight with this plan.
    pub fn shape(&self, g: TileGeometry, rows: usize, kept: usize, elem: ElemType) -> TileShape {
        TileShape {
            unions: Some(self.unions),
            work_spread: Some(self.work_spread),
            mask_sha256: Some(self.mask_sha256),
            grid_rows: g.grid_rows,
            grid_cols: g.grid_cols,
            ..TileShape::new(rows, g.cols, g.th, g.tw, kept, elem)
        }
    }
}
