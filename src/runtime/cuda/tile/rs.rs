//! `rs`: the weights as register operands of the warpgroup MMA (`kernels/tile_rs.cu`, sm_90).
//!
//! The kernel computes `Y^T = W X^T`: a group's 128 features sit on the MMA's M side, so each
//! warp loads its features' rows of a tile straight from the file's layout with `ldmatrix`. CTAs
//! are persistent (one per multiprocessor, each taking a run of 128-feature x 192-token output
//! tiles); a producer warp copies X by TMA and the weights as the stage plans made at upload
//! ([`super::rs_plan`]) say; the output is transposed through shared memory and stored by TMA.

use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

use super::super::device::{addr, CudaRuntime};
use super::super::epilogue::Epilogue;
use super::super::error::CudaError;
use super::super::host::group_work_spread;
use super::common::{
    check_io, int, TileDeviceView, TileInts, TileShape, UnionGrid, UnionLaunch, TILE_MAX_GRID_COLS,
};
use super::rs_plan::{rs_tile_shape, uniform_row_tiles, TileGeometry, RS_PLAN_BYTES};
use super::tensor_map::{encode, tile_lines, tiles_per_block_row, x_maps, TensorMap, SW128};
use super::{smem_over_limit, DeviceLimits, TileFamily, TileKernel};

/// Tokens per output tile.
pub const RS_BM: usize = 192;
/// Output features per output tile.
const RS_BN: usize = 128;
/// Threads: two consumer warpgroups and a producer warp.
const RS_THREADS: u32 = 288;
/// Stages in the ring (the kernel's `ETR_STAGES`).
const RS_STAGES: usize = 4;
/// 64-column stages of a group the kernel plans (K up to 8192).
const RS_MAX_STAGES: usize = TILE_MAX_GRID_COLS / 4;
/// Feature groups whose work the balanced schedule counts (the kernel's `ETR_MAX_GROUPS`).
const RS_MAX_GROUPS: usize = 512;
/// An output tile's epilogue in stages of work (the kernel's `ETR_TILE_COST`).
const RS_TILE_COST: usize = 3;
/// Output tiles per CTA from which the runs are balanced by work: the cuts leave up to a tile of
/// slack per run, and runs that no longer line up on token blocks across groups cost X's reuse
/// in L2, so short runs stay equal in tile count.
const RS_BALANCE_MIN_RUN: usize = 8;
/// Spread of the groups' work (largest over mean, [`TileShape::work_spread`]) from which the runs
/// are balanced: equal work already gives equal runs, and the balance itself costs a few
/// microseconds.
const RS_BALANCE_MIN_SPREAD: f32 = 1.05;
/// Feature groups up to which runs mark X's copies evict-first in L2, where every stage copies X
/// as one 64-column box and the groups' work is equal: X then passes through L2 once per group
/// close together in time, and streaming it keeps the weights, which every token block reads
/// again, in L2. With more groups X's later readers miss.
const RS_X_STREAM_MAX_GROUPS: usize = 8;

/// Schedule flag (the kernel's `SCHED_BALANCE`): runs of equal work.
const RS_SCHED_BALANCE: i32 = 1;
/// Schedule flag (`SCHED_TOKEN_MAJOR`): output tiles numbered token block first.
const RS_SCHED_TOKEN_MAJOR: i32 = 2;
/// Schedule flag (`SCHED_X_STREAM`): X's copies marked evict-first in L2.
const RS_SCHED_X_STREAM: i32 = 4;

/// Largest over mean work of the kernel's feature groups for a weight of geometry `g` (its
/// output tiles' stages plus the epilogue's cost), which decides whether runs are balanced.
pub fn work_spread(bitmap: &[u64], g: TileGeometry) -> f32 {
    group_work_spread(bitmap, g.grid_rows, g.grid_cols, g.th, g.tw, RS_TILE_COST)
}

/// Output tiles (128 features x 192 tokens) for `m` tokens of `w`.
fn rs_output_tiles(w: &TileShape, m: usize) -> usize {
    w.rows.div_ceil(RS_BN) * m.div_ceil(RS_BM)
}

/// Whether `m` tokens of `w` run in runs of equal work rather than equal tile counts: long runs
/// (at least [`RS_BALANCE_MIN_RUN`] tiles a CTA) over groups of unequal work.
pub fn rs_balanced(sm_count: usize, w: &TileShape, m: usize) -> bool {
    !w.all_kept()
        && rs_output_tiles(w, m) >= RS_BALANCE_MIN_RUN * sm_count.max(1)
        && w.work_spread.is_some_and(|s| s >= RS_BALANCE_MIN_SPREAD)
}

/// Whether runs over `w` stream X through L2 ([`RS_X_STREAM_MAX_GROUPS`]): few groups of equal
/// work whose stages copy X as one box (64-column tiles, or every tile kept).
fn rs_x_stream(w: &TileShape) -> bool {
    let equal_groups = w.all_kept() || w.work_spread.is_some_and(|s| s < RS_BALANCE_MIN_SPREAD);
    w.rows.div_ceil(RS_BN) <= RS_X_STREAM_MAX_GROUPS && equal_groups && (w.tw == 64 || w.all_kept())
}

/// How the kernel hands out its output tiles and how its copies of X use L2. Where every CTA
/// gets one tile at most, numbered token block first (the numbering then only decides which CTA
/// takes which tile, and neighbouring CTAs share X in L2). Otherwise feature group first, in runs
/// balanced by work where [`rs_balanced`] says so, with X streamed where [`rs_x_stream`] says so.
pub fn rs_schedule_flags(sm_count: usize, w: &TileShape, m: usize) -> i32 {
    if rs_output_tiles(w, m) <= sm_count.max(1) {
        return RS_SCHED_TOKEN_MAJOR;
    }
    let balance = if rs_balanced(sm_count, w, m) {
        RS_SCHED_BALANCE
    } else {
        0
    };
    balance | if rs_x_stream(w) { RS_SCHED_X_STREAM } else { 0 }
}

/// Dynamic shared memory of the kernel, the same for every tile shape: four stages (X: 64 columns
/// of 192 tokens; W: 64 columns per feature), the output staging buffer (192 tokens x 128
/// features), 1 KiB to align them, the barriers (ring and residual), the per-stage information,
/// the producer's stage plans of a group and the groups' work.
pub fn rs_smem_bytes() -> usize {
    let meta = (8 * RS_STAGES).div_ceil(16) * 16;
    let plans = RS_MAX_STAGES * RS_PLAN_BYTES + ((RS_MAX_GROUPS + 1) * 4).div_ceil(16) * 16;
    RS_STAGES * (RS_BM + RS_BN) * 64 * 2
        + RS_BM * RS_BN * 2
        + 1024
        + 8 * (2 * RS_STAGES + 2)
        + meta
        + plans
}

/// The register-operand kernel family.
pub struct Rs;

impl TileFamily for Rs {
    fn file(&self) -> &'static str {
        "tile_rs.cu"
    }

    fn unsupported(
        &self,
        dev: &DeviceLimits,
        _: TileKernel,
        w: &TileShape,
        _: usize,
    ) -> Option<String> {
        if !dev.hopper() {
            return Some(format!("needs sm_90 (device {})", dev.arch));
        }
        if !rs_tile_shape(w.th, w.tw) {
            return Some(format!(
                "tile {}x{} (needs 16x16, 64x16, 128x16, 32x32 or 64x64)",
                w.th, w.tw
            ));
        }
        // The producer keeps a plan of each 64-column stage of a group.
        if w.cols.div_ceil(64) > RS_MAX_STAGES {
            return Some(format!(
                "K = {} exceeds the kernel's {} columns",
                w.cols,
                RS_MAX_STAGES * 64
            ));
        }
        if w.rows % 8 != 0 {
            return Some(format!(
                "N = {} is not a multiple of 8 (Y is stored by TMA in 16-byte rows)",
                w.rows
            ));
        }
        let smem = rs_smem_bytes();
        smem_over_limit(smem, dev)
    }

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
    ) -> Result<(), CudaError> {
        check_io(x, m, w, ep, y)?;
        let (xa, ya) = (addr(x), addr(y));
        let ra = ep.residual.as_ref().map_or(0, addr);
        // The output is written in 16-byte chunks and the residual read the same way.
        if xa % 16 != 0 || ya % 16 != 0 || ra % 16 != 0 || w.values % 16 != 0 || m == 0 {
            return Err(CudaError::Invalid(format!(
                "register-operand tile kernel: X, Y, the residual and the tile values must be 16-byte \
                 aligned and M > 0 (X {xa:#x}, Y {ya:#x}, residual {ra:#x}, values {:#x}, M {m})",
                w.values
            )));
        }
        if w.rs_plans == 0 {
            return Err(CudaError::Invalid(
                "register-operand tile kernel: the weight was uploaded without its stage plans"
                    .into(),
            ));
        }
        let maps = rs_maps(xa, m, w, ra, ya)?;
        let stride = int(w.rs_plan_stride)?;
        let flags = rs_schedule_flags(rt.sm_count() as usize, w, m);
        let ints = TileInts::new(m, w, ep)?;
        let name = kern.entry_name(w);
        let grid = UnionGrid {
            name: &name,
            bn: RS_BN,
            bm: RS_BM,
            persistent: true,
            threads: RS_THREADS,
            smem: rs_smem_bytes(),
        };
        let launch = UnionLaunch::new(rt, grid, w, m, splits)?;
        let f = launch.kernel(rt)?;
        {
            // The maps of X, Y and the residual, the weights' stage map and tile map, plans per
            // group, schedule flags, M, K, the bitmap (the balanced schedule's work), the plans
            // in place of the row offsets, values, N, grid, bias, residual, GELU, workspace.
            let mut b = rt.stream().launch_builder(&f);
            for map in &maps {
                b.arg(map);
            }
            b.arg(&stride).arg(&flags).arg(&ints.m).arg(&ints.k);
            b.arg(&w.bitmap).arg(&w.rs_plans).arg(&w.values);
            ints.push_grid(&mut b);
            ints.push_epilogue(&mut b, ep);
            launch.push_workspace(&mut b);
            // SAFETY: X, Y and the epilogue were checked for m tokens of w and are 16-byte
            // aligned; the maps cover X (m x K), Y and the residual (m x N) and the weight's
            // values as uploaded; w's addresses (plans included) are the caller's; the
            // arguments follow the kernel's order.
            unsafe { launch.launch(rt, &mut b)? };
        }
        launch.finish(rt, m, w, ep, y)
    }
}

/// The kernel's six tensor maps: X (narrow and wide), Y and the residual as (N, M) maps of
/// 64-feature x 192-token boxes with the 128-byte swizzle (the staging buffer's layout; without a
/// residual its map is never read and repeats Y's), the weights' stage map and tile map.
fn rs_maps(
    x: u64,
    m: usize,
    w: &TileDeviceView,
    residual: u64,
    y: u64,
) -> Result<[TensorMap; 6], CudaError> {
    let dims = [w.rows as u64, m as u64];
    let pitch = [w.rows as u64 * 2];
    let out_box = [64, RS_BM as u32];
    let map_y = encode(y, w.elem, &dims, &pitch, &out_box, SW128)?;
    let map_res = if residual != 0 {
        encode(residual, w.elem, &dims, &pitch, &out_box, SW128)?
    } else {
        map_y
    };
    // The stage plans say which stages are boxed: those need the stage map.
    let map_w = match (uniform_row_tiles(w.kept, w.grid_rows), rs_stage_map(w)) {
        (Some(_), Some(map)) => map,
        (Some(_), None) => {
            return Err(CudaError::Invalid(format!(
                "register-operand tile kernel: the weights' stage map of {}x{} tiles could not be encoded",
                w.th, w.tw
            )))
        }
        (None, _) => map_y,
    };
    let map_w_tile = rs_tile_map(w)?.unwrap_or(map_y);
    let [map_x, map_x_wide] = x_maps(x, m, w, RS_BM)?;
    Ok([map_x, map_x_wide, map_y, map_res, map_w, map_w_tile])
}

/// The stage map: the values as (128-byte lines, lines of a block row, block rows), boxes of a
/// 64-column stage (four 16-column tiles, two of 32 or one of 64, always `th` lines) of each of a
/// group's block rows, in the file's layout with the 128-byte swizzle (which spreads a tile's rows
/// over all banks for ldmatrix; the kernel reads such stages with the same XOR). None when the
/// rows cannot be uniform or the map cannot be encoded.
fn rs_stage_map(w: &TileDeviceView) -> Option<TensorMap> {
    let cnt = tiles_per_block_row(w)?;
    let row_lines = (cnt * tile_lines(w)) as u64;
    let dims = [64, row_lines, w.grid_rows as u64];
    let pitch = [128, row_lines * 128];
    let boxes = [64, w.th as u32, (RS_BN / w.th).max(1) as u32];
    encode(w.values, w.elem, &dims, &pitch, &boxes, SW128).ok()
}

/// The map of single tiles 32 or 64 columns wide, for the stages that are not one box: the values
/// as (128-byte lines, all lines), boxes of one tile with the 128-byte swizzle. None for 16-column
/// tiles (copied without a map) and weights without tiles.
fn rs_tile_map(w: &TileDeviceView) -> Result<Option<TensorMap>, CudaError> {
    if w.tw == 16 || w.kept == 0 {
        return Ok(None);
    }
    let lines = (w.kept * tile_lines(w)) as u64;
    let boxes = [64, tile_lines(w) as u32];
    encode(w.values, w.elem, &[64, lines], &[128], &boxes, SW128).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::cuda::device::ElemType;

    fn shape(n: usize, k: usize, t: usize) -> TileShape {
        TileShape::new(n, k, t, t, 0, ElemType::F16)
    }

    #[test]
    fn token_block_first_only_with_one_tile_per_cta() {
        // 3072->768 at 4096 tokens: 6 groups x 22 token blocks = 132 tiles on 132 CTAs.
        let w = shape(768, 3072, 16);
        assert_eq!(rs_schedule_flags(132, &w, 4096), RS_SCHED_TOKEN_MAJOR);
        // 4300 tokens: 6 x 23 = 138 tiles, some CTAs take two: feature group first.
        assert_eq!(rs_schedule_flags(132, &w, 4300), 0);
        // 768->3072 at 16384 tokens, unequal groups: balanced runs.
        let mut w = shape(3072, 768, 64);
        w.kept = w.grid_rows * w.grid_cols / 2;
        w.work_spread = Some(1.2);
        assert_eq!(rs_schedule_flags(132, &w, 16384), RS_SCHED_BALANCE);
        // The same weight at 128 tokens (24 tiles): token block first, never balanced.
        assert_eq!(rs_schedule_flags(132, &w, 128), RS_SCHED_TOKEN_MAJOR);
    }

    #[test]
    fn x_streamed_only_in_runs_of_few_wide_groups() {
        // 768->768 with 64x64 tiles: 6 groups; runs at 16384 tokens, one tile per CTA at 4096.
        let mut w = shape(768, 768, 64);
        w.kept = w.grid_rows * w.grid_cols;
        assert_eq!(rs_schedule_flags(132, &w, 16384), RS_SCHED_X_STREAM);
        assert_eq!(rs_schedule_flags(132, &w, 4096), RS_SCHED_TOKEN_MAJOR);
        // Grouped masks (equal groups) stream; random ones (unequal groups) do not.
        let mut w = shape(768, 3072, 64);
        w.kept = w.grid_rows * w.grid_cols / 2;
        w.work_spread = Some(1.0);
        assert_eq!(rs_schedule_flags(132, &w, 16384), RS_SCHED_X_STREAM);
        w.work_spread = Some(1.2);
        assert_eq!(rs_schedule_flags(132, &w, 16384) & RS_SCHED_X_STREAM, 0);
        w.work_spread = None;
        assert_eq!(rs_schedule_flags(132, &w, 16384) & RS_SCHED_X_STREAM, 0);
        // 768->3072: 24 groups read each X block.
        let w = shape(3072, 768, 64);
        assert_eq!(rs_schedule_flags(132, &w, 16384) & RS_SCHED_X_STREAM, 0);
        // 16x16 tiles: every tile kept, one 64-column box a stage, streamed; grouped masks copy X
        // in 16-column boxes, not streamed.
        let mut w = shape(768, 3072, 16);
        w.kept = w.grid_rows * w.grid_cols;
        assert_eq!(rs_schedule_flags(132, &w, 16384), RS_SCHED_X_STREAM);
        w.kept = w.grid_rows * w.grid_cols / 2;
        w.work_spread = Some(1.0);
        assert_eq!(rs_schedule_flags(132, &w, 16384) & RS_SCHED_X_STREAM, 0);
    }

    #[test]
    fn balanced_runs_only_for_long_runs_of_unequal_groups() {
        // 768->3072 with 64x64 tiles: 24 feature groups; 132 multiprocessors.
        let mut w = shape(3072, 768, 64);
        w.kept = w.grid_rows * w.grid_cols / 2;
        w.work_spread = Some(1.2);
        // 16384 tokens: 24 x 86 = 2064 tiles, 15.6 per CTA.
        assert!(rs_balanced(132, &w, 16384));
        // 4096 tokens: 24 x 22 = 528 tiles, 4 per CTA: equal runs keep the groups on one token block.
        assert!(!rs_balanced(132, &w, 4096));
        // Groups of equal work (grouped masks), or work not known: equal runs.
        w.work_spread = Some(1.0);
        assert!(!rs_balanced(132, &w, 16384));
        w.work_spread = None;
        assert!(!rs_balanced(132, &w, 16384));
        // Every tile kept.
        w.work_spread = Some(1.2);
        w.kept = w.grid_rows * w.grid_cols;
        assert!(!rs_balanced(132, &w, 16384));
    }

    #[test]
    fn fits_a_hopper_cta() {
        assert!(rs_smem_bytes() <= 227 * 1024);
    }
}
