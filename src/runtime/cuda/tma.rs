//! The TMA-fed tile kernel (`kernels/tile_tma.cu`, sm_90): tensor maps and launch.
//!
//! The kernel copies 16-column slices of X and of the kept tiles with the Tensor Memory
//! Accelerator, so it needs two tensor maps per launch: X as a 2-D (K, M) array and the weight's
//! kept tiles as a 3-D (TW, TH, kept) array, both with the 32-byte swizzle the warpgroup MMA reads.
//! Encoding a map is a host-only driver call (no device work), done at each launch.

use cudarc::driver::sys;

use super::device::{CudaRuntime, ElemType, KArg};
use super::error::CudaError;
use super::gemm::{
    launch_union, tile_args, tile_kernel_unsupported, Epilogue, TileKernel, TILE_MAX_GRID_COLS,
};
use super::rs_plan::{rs_tile_shape, uniform_row_tiles, RS_PLAN_BYTES};
use super::upload::TileDeviceView;

/// Output features per CTA.
pub const TMA_BN: usize = 128;
const TMA_THREADS: u32 = 288;
const SW32: sys::CUtensorMapSwizzle = sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_32B;
const SW128: sys::CUtensorMapSwizzle = sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B;
/// Columns per TMA copy (one 32-byte swizzle row of 16-bit values).
const SLICE: u32 = 16;

/// Stages of the kernel's ring for `bm` tokens per CTA (3 at 128: two CTAs per multiprocessor;
/// 4 at 256: one).
fn tma_stages(bm: usize) -> usize {
    if bm == 128 {
        3
    } else {
        4
    }
}

/// Dynamic shared memory of the TMA kernel for `bm` tokens per CTA and tile height `th`: the stage
/// ring (64 columns of `bm` tokens and 128 features per stage), 1 KiB to align it, the ring's
/// barriers and the union list of `128 / th` block rows.
pub fn tma_smem_bytes(bm: usize, th: usize) -> usize {
    let r = (TMA_BN / th).max(1);
    let meta = TILE_MAX_GRID_COLS * (1 + 2 + 2 + 1 + 2 * r) + 4 * r + 4;
    let stages = tma_stages(bm);
    stages * (bm + TMA_BN) * 64 * 2 + 1024 + 16 * stages + meta.div_ceil(16) * 16
}

/// Why the TMA kernel with `bm` tokens per CTA cannot run `w` on this device, or None when it can.
pub fn tma_unsupported(rt: &CudaRuntime, w: &TileDeviceView, bm: usize) -> Option<String> {
    if let Some(why) = tile_kernel_unsupported(w) {
        return Some(why);
    }
    if rt.arch() != "sm_90" {
        return Some(format!("needs sm_90 (device {})", rt.arch()));
    }
    if w.th > TMA_BN || w.tw > 64 {
        return Some(format!("tile {}x{} is larger than 128x64", w.th, w.tw));
    }
    if w.kept >= i32::MAX as usize {
        return Some(format!("{} kept tiles (at most 2^31 - 2)", w.kept));
    }
    if w.values % 16 != 0 && w.values != 0 {
        return Some("tile values are not 16-byte aligned".into());
    }
    if tma_smem_bytes(bm, w.th) > rt.max_smem_per_block() {
        return Some(format!(
            "needs {} bytes of shared memory (device {})",
            tma_smem_bytes(bm, w.th),
            rt.max_smem_per_block()
        ));
    }
    None
}

fn map_type(elem: ElemType) -> sys::CUtensorMapDataType {
    match elem {
        ElemType::F16 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
        ElemType::Bf16 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
    }
}

/// Encodes a tiled tensor map over 16-bit values at `addr`: `dims[0]` is the contiguous dimension,
/// `strides` the byte strides of dimensions 1.. . Elements outside `dims` read as zero.
fn encode(
    addr: u64,
    elem: ElemType,
    dims: &[u64],
    strides: &[u64],
    boxes: &[u32],
    swizzle: sys::CUtensorMapSwizzle,
) -> Result<[u64; 16], CudaError> {
    debug_assert!(dims.len() == boxes.len() && strides.len() + 1 == dims.len());
    let mut map = sys::CUtensorMap { opaque: [0; 16] };
    let ones = [1u32; 5];
    // SAFETY: the arrays hold `dims.len()` (resp. one fewer) entries as the call requires, and the
    // map is written in place; the call only encodes, it does not touch device memory.
    unsafe {
        sys::cuTensorMapEncodeTiled(
            &mut map,
            map_type(elem),
            dims.len() as u32,
            addr as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            ones.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            swizzle,
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    }
    .result()
    .map_err(CudaError::driver(format!(
        "encoding a tensor map (dims {dims:?}, box {boxes:?})"
    )))?;
    Ok(map.opaque)
}

/// The two maps of X every TMA-fed kernel takes: 16-column boxes with the 32-byte swizzle (for
/// stages whose union columns are scattered) and 64-column boxes with the 128-byte swizzle (for
/// stages whose union columns are contiguous), `bm` rows each.
fn x_maps(x: u64, m: usize, w: &TileDeviceView, bm: usize) -> Result<[KArg; 2], CudaError> {
    let dims = [w.cols as u64, m as u64];
    let pitch = [w.cols as u64 * 2];
    let narrow = encode(x, w.elem, &dims, &pitch, &[SLICE, bm as u32], SW32)?;
    let wide = encode(x, w.elem, &dims, &pitch, &[64, bm as u32], SW128)?;
    Ok([KArg::TensorMap(narrow), KArg::TensorMap(wide)])
}

/// Runs the TMA tile kernel `kern` ([`TileKernel::Tma128`] or [`TileKernel::Tma256`]) with
/// `splits` K splits (1: no split, fused epilogue).
#[allow(clippy::too_many_arguments)]
pub fn tile_tma(
    rt: &CudaRuntime,
    x: u64,
    m: usize,
    w: &TileDeviceView,
    ep: &Epilogue,
    y: u64,
    splits: usize,
    kern: TileKernel,
) -> Result<(), CudaError> {
    let bm = kern.bm();
    if let Some(why) = tma_unsupported(rt, w, bm) {
        return Err(CudaError::Invalid(format!("TMA tile kernel: {why}")));
    }
    if x % 16 != 0 || y % 16 != 0 || m == 0 {
        return Err(CudaError::Invalid(format!(
            "TMA tile kernel: X and Y must be 16-byte aligned and M > 0 (X {x:#x}, Y {y:#x}, M {m})"
        )));
    }
    let (th, tw) = (w.th as u64, w.tw as u64);
    let [map_x, map_x_wide] = x_maps(x, m, w, bm)?;
    // 64-column tiles are copied in whole 128-byte rows with the 128-byte swizzle; narrower tiles
    // in 16-column slices with the 32-byte swizzle (the kernel's WIDE switch).
    let (slice, swizzle) = if w.tw == 64 {
        (64, SW128)
    } else {
        (SLICE, SW32)
    };
    // With no kept tile every copy falls outside the map (tile index `kept`); the map then needs
    // one (never read) tile of extent, at any aligned address.
    let (values, kept) = if w.kept == 0 {
        (x, 1)
    } else {
        (w.values, w.kept)
    };
    let map_w = encode(
        values,
        w.elem,
        &[tw, th, kept as u64],
        &[tw * 2, th * tw * 2],
        &[slice, th as u32, 1],
        swizzle,
    )?;
    let (map_rows, wcnt) = tma_stage_map(w).unwrap_or((map_w, 0));
    // The common tile arguments, with X replaced by its maps and the values by the weight's maps
    // and kept count: (maps of X, maps of W, tiles per block row or 0, M, K, bitmap, row offsets,
    // kept, N, grid, epilogue, Y, ldy; the workspace follows).
    let c = tile_args(x, m, w, ep, y);
    let args = vec![
        map_x,
        map_x_wide,
        KArg::TensorMap(map_w),
        KArg::TensorMap(map_rows),
        KArg::I32(wcnt as i32),
        c[1],
        c[2],
        c[4],
        c[5],
        KArg::I32(kept as i32),
        c[7],
        c[8],
        c[9],
        c[10],
        c[11],
        c[12],
        c[13],
        c[14],
    ];
    let smem = tma_smem_bytes(bm, w.th);
    launch_union(rt, kern, TMA_THREADS, smem, w, m, ep, y, splits, args)
}

/// Tokens per CTA of the register-operand kernel.
pub const RS_BM: usize = 192;

/// Threads of the register-operand kernel: two consumer warpgroups and a producer warp.
const RS_THREADS: u32 = 288;
/// Stages in the register-operand kernel's ring.
const RS_STAGES: usize = 4;
/// 64-column stages of a group the register-operand kernel plans (K up to 8192).
const RS_MAX_STAGES: usize = TILE_MAX_GRID_COLS / 4;
/// Feature groups whose work the register-operand kernel's balanced schedule counts
/// (`ETR_MAX_GROUPS`).
const RS_MAX_GROUPS: usize = 512;
/// An output tile's epilogue in the register-operand kernel's stages of work (`ETR_TILE_COST`).
pub const RS_TILE_COST: usize = 3;
/// Output tiles per CTA from which the register-operand kernel balances its runs by work: the
/// cuts leave up to a tile of slack per run, and runs that no longer line up on token blocks
/// across groups cost X's reuse in L2 (runs of four tiles: 0.073 -> 0.099 ms, 3072->768).
const RS_BALANCE_MIN_RUN: usize = 8;
/// Spread of the groups' work (largest over mean, [`TileDeviceView::work_spread`]) from which
/// the runs are balanced: equal work already gives equal runs, and the balance costs a few
/// microseconds (grouped masks: 0.085 -> 0.090 ms with the balance computed and not used).
const RS_BALANCE_MIN_SPREAD: f32 = 1.05;

/// Whether the register-operand kernel runs `m` tokens of `w` in runs of equal work (rather than
/// equal tile counts): at 16384 tokens, 768->3072 with random masks, 64x64 at density 0.5 went
/// from 0.119-0.125 to 0.110 ms, 32x32 at 0.2 from 0.127 to 0.113 ms.
/// `sm_count`: the device's multiprocessors (one CTA each).
pub fn rs_balanced(sm_count: usize, w: &TileDeviceView, m: usize) -> bool {
    w.kept < w.grid_rows * w.grid_cols
        && rs_output_tiles(w, m) >= RS_BALANCE_MIN_RUN * sm_count.max(1)
        && w.work_spread.is_some_and(|s| s >= RS_BALANCE_MIN_SPREAD)
}

/// Output tiles (128 features x 192 tokens) of the register-operand kernel for `m` tokens of `w`.
fn rs_output_tiles(w: &TileDeviceView, m: usize) -> usize {
    w.rows.div_ceil(TMA_BN) * m.div_ceil(RS_BM)
}

/// The register-operand kernel's schedule flags (its `SCHED_*`): runs of equal work.
const RS_SCHED_BALANCE: i32 = 1;
/// The register-operand kernel's schedule flags: output tiles numbered token block first.
const RS_SCHED_TOKEN_MAJOR: i32 = 2;
/// The register-operand kernel's schedule flags: X's copies marked evict-first in L2.
const RS_SCHED_X_STREAM: i32 = 4;

/// Feature groups (128 features each) up to which the register-operand kernel's runs mark X's
/// copies evict-first in L2, where every stage copies X as one 64-column box (64-column tiles, or
/// every tile kept) and the groups' work is equal (runs line up on token blocks). At 16384 tokens
/// (RESULTS, 06:36Z and 06:50Z): with six groups (N = 768) 2-10% faster (768->768 grouped 0.5
/// 0.0241 -> 0.0225 ms, 3072->768 grouped 0.1 0.0256 -> 0.0231, density 1 64x64 768->768
/// 0.0343 -> 0.0332, 16x16 0.0383 -> 0.0366): X passes through L2 once per group close together
/// in time, and streaming it keeps the weights, which every token block reads again, in L2. With
/// 18 and 24 groups 6-16% slower (X's later readers miss), with one tile per CTA no change, with
/// 16x16 grouped masks (16-column copies) 5-7% slower; random 64x64 masks (unequal groups) vary
/// by up to 40% from run to run either way (06:57Z) and keep the plain copies.
const RS_X_STREAM_MAX_GROUPS: usize = 8;

/// Whether the register-operand kernel's runs over `w` stream X through L2
/// ([`RS_X_STREAM_MAX_GROUPS`]); `ETS_RS_X_STREAM=0|1` overrides (timing experiments).
fn rs_x_stream(w: &TileDeviceView) -> bool {
    static OVERRIDE: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    let forced = *OVERRIDE.get_or_init(|| match std::env::var("ETS_RS_X_STREAM").as_deref() {
        Ok("1") => Some(true),
        Ok("0") => Some(false),
        _ => None,
    });
    let all_kept = w.kept == w.grid_rows * w.grid_cols;
    let equal_groups = all_kept || w.work_spread.is_some_and(|s| s < RS_BALANCE_MIN_SPREAD);
    forced.unwrap_or(
        w.rows.div_ceil(TMA_BN) <= RS_X_STREAM_MAX_GROUPS
            && equal_groups
            && (w.tw == 64 || all_kept),
    )
}

/// How the register-operand kernel hands out its output tiles, and how its copies of X use L2.
/// Where every CTA gets one tile at most, numbered token block first: the numbering then only
/// decides which CTA takes which tile, and token block first was 5-13% faster at 4096 tokens with
/// N = 768 (runs of several tiles so numbered, every tile another feature group, were 9-27%
/// slower at 16384 tokens, and still slower with the next group's stage plans fetched ahead).
/// Otherwise feature group first, in runs balanced by work where [`rs_balanced`] says so, with X
/// streamed through L2 where [`rs_x_stream`] says so.
pub fn rs_schedule_flags(sm_count: usize, w: &TileDeviceView, m: usize) -> i32 {
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

/// Dynamic shared memory of the register-operand kernel, the same for every tile shape: four
/// stages (X: 64 columns of 192 tokens; W: 64 columns per feature), the output staging buffer (192
/// tokens x 128 features), 1 KiB to align them, the barriers (ring and residual), the per-stage
/// information, the producer's stage plans of a group and the groups' work.
pub fn rs_smem_bytes() -> usize {
    // The per-stage information (8 bytes a stage) rounded up to the plans' 16-byte alignment,
    // the plan of every 64-column stage of a group, and the groups' work for the balanced
    // schedule.
    let meta = (8 * RS_STAGES).div_ceil(16) * 16;
    let plans = RS_MAX_STAGES * RS_PLAN_BYTES + ((RS_MAX_GROUPS + 1) * 4).div_ceil(16) * 16;
    RS_STAGES * (RS_BM + TMA_BN) * 64 * 2
        + RS_BM * TMA_BN * 2
        + 1024
        + 8 * (2 * RS_STAGES + 2)
        + meta
        + plans
}

/// Why the register-operand kernel cannot run `w` on this device, or None when it can.
pub fn rs_unsupported(rt: &CudaRuntime, w: &TileDeviceView) -> Option<String> {
    if let Some(why) = tile_kernel_unsupported(w) {
        return Some(why);
    }
    if rt.arch() != "sm_90" {
        return Some(format!("needs sm_90 (device {})", rt.arch()));
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
    if w.values % 16 != 0 {
        return Some("tile values are not 16-byte aligned".into());
    }
    if w.rows % 8 != 0 {
        return Some(format!(
            "N = {} is not a multiple of 8 (Y is stored by TMA in 16-byte rows)",
            w.rows
        ));
    }
    if rs_smem_bytes() > rt.max_smem_per_block() {
        return Some(format!(
            "needs {} bytes of shared memory (device {})",
            rs_smem_bytes(),
            rt.max_smem_per_block()
        ));
    }
    None
}

/// Runs the register-operand tile kernel ([`TileKernel::Rs`]) with `splits` K splits (1: no
/// split, fused epilogue).
pub fn tile_rs(
    rt: &CudaRuntime,
    x: u64,
    m: usize,
    w: &TileDeviceView,
    ep: &Epilogue,
    y: u64,
    splits: usize,
) -> Result<(), CudaError> {
    let bm = RS_BM;
    if let Some(why) = rs_unsupported(rt, w) {
        return Err(CudaError::Invalid(format!(
            "register-operand tile kernel: {why}"
        )));
    }
    // The output is written in 16-byte chunks and the residual read the same way.
    if x % 16 != 0 || y % 16 != 0 || ep.residual % 16 != 0 || m == 0 {
        return Err(CudaError::Invalid(format!(
            "register-operand tile kernel: X, Y and the residual must be 16-byte aligned and M > 0 \
             (X {x:#x}, Y {y:#x}, residual {:#x}, M {m})",
            ep.residual
        )));
    }
    // Y and the residual as (N, M) maps of 64-feature x 192-token boxes with the 128-byte swizzle
    // (the staging buffer's layout); without a residual its map is never read and repeats Y's.
    let dims = [w.rows as u64, m as u64];
    let pitch = [w.rows as u64 * 2];
    let out_box = [64, bm as u32];
    let map_y = encode(y, w.elem, &dims, &pitch, &out_box, SW128)?;
    let map_res = if ep.residual != 0 {
        encode(ep.residual, w.elem, &dims, &pitch, &out_box, SW128)?
    } else {
        map_y
    };
    // The stage plans (computed at upload) say which stages are boxed: those need the map.
    if w.rs_plans == 0 {
        return Err(CudaError::Invalid(
            "register-operand tile kernel: the weight was uploaded without its stage plans".into(),
        ));
    }
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
    // The common tile arguments with X replaced by its two maps and Y by the output maps: (maps
    // of X, Y and residual, the weights' stage map and tile map, plans per group, schedule
    // flags, ...; the workspace follows).
    let c = tile_args(x, m, w, ep, y);
    let mut args = x_maps(x, m, w, bm)?.to_vec();
    args.extend([
        KArg::TensorMap(map_y),
        KArg::TensorMap(map_res),
        KArg::TensorMap(map_w),
        KArg::TensorMap(map_w_tile),
        KArg::I32(w.rs_plan_stride as i32),
        KArg::I32(rs_schedule_flags(rt.sm_count() as usize, w, m)),
    ]);
    // M, K, the bitmap (the balanced schedule's work), the plans in place of the row offsets,
    // then values, N, grid, bias, residual, GELU.
    args.extend_from_slice(&c[1..3]);
    args.push(c[4]);
    args.push(KArg::Ptr(w.rs_plans));
    args.extend_from_slice(&c[6..13]);
    let smem = rs_smem_bytes();
    launch_union(
        rt,
        TileKernel::Rs,
        RS_THREADS,
        smem,
        w,
        m,
        ep,
        y,
        splits,
        args,
    )
}

/// Tiles a stage copies per block row (the kernels' four 16-column slots).
const STAGE_TILES: usize = 4;

/// One copy per weight stage. When the kept count is a multiple of the block rows, every block row
/// may keep the same number of tiles `cnt`, block row r then starting at tile r x cnt: a tensor map
/// with that row pitch copies a stage of a whole group's rows in one box. The kernels copy a stage
/// so where its group's rows do start there (density 1, balanced and grouped masks) and keep the
/// same tiles (the register-operand kernel's plans say so, [`super::rs_plan::RsPlans`]; the TMA kernel checks),
/// and row by row (or tile by tile) otherwise; one copy per stage instead of one per block row or
/// tile is what makes 16-column tiles cheap to stream. Returns `cnt`, or None when the rows cannot
/// be uniform.
fn tiles_per_block_row(w: &TileDeviceView) -> Option<usize> {
    uniform_row_tiles(w.kept, w.grid_rows)
}

/// 128-byte lines of one tile as it lies in the file.
fn tile_lines(w: &TileDeviceView) -> usize {
    w.th * w.tw * 2 / 128
}

/// The register-operand kernel's stage map: the values as (128-byte lines, lines of a block row,
/// block rows), boxes of a 64-column stage (four 16-column tiles, two of 32 or one of 64, always
/// `th` lines) of each of a group's block rows, in the file's layout with the 128-byte swizzle
/// (which spreads a tile's rows over all banks for ldmatrix; the kernel reads such stages with the
/// same XOR). None when the rows cannot be uniform or the map cannot be encoded.
fn rs_stage_map(w: &TileDeviceView) -> Option<[u64; 16]> {
    let cnt = tiles_per_block_row(w)?;
    let row_lines = (cnt * tile_lines(w)) as u64;
    let dims = [64, row_lines, w.grid_rows as u64];
    let pitch = [128, row_lines * 128];
    let boxes = [64, w.th as u32, (TMA_BN / w.th).max(1) as u32];
    encode(w.values, w.elem, &dims, &pitch, &boxes, SW128).ok()
}

/// The register-operand kernel's map of single tiles 32 or 64 columns wide, for the stages that
/// are not one box: the values as (128-byte lines, all lines), boxes of one tile with the 128-byte
/// swizzle. None for 16-column tiles (copied without a map) and weights without tiles.
fn rs_tile_map(w: &TileDeviceView) -> Result<Option<[u64; 16]>, CudaError> {
    if w.tw == 16 || w.kept == 0 {
        return Ok(None);
    }
    let lines = (w.kept * tile_lines(w)) as u64;
    let boxes = [64, tile_lines(w) as u32];
    encode(w.values, w.elem, &[64, lines], &[128], &boxes, SW128).map(Some)
}

/// The TMA union kernel's stage map for 16-column tiles: the values as (16 columns, the tile's
/// rows, block rows, tiles of a row), boxes of the stage's four tiles of a group's block rows laid
/// out as the per-tile copies place them (slot by slot, 32-byte swizzle). None for other tiles,
/// when the rows cannot be uniform or the map cannot be encoded.
fn tma_stage_map(w: &TileDeviceView) -> Option<([u64; 16], usize)> {
    if w.tw != 16 {
        return None;
    }
    let cnt = tiles_per_block_row(w)?;
    let (th, tw) = (w.th as u64, w.tw as u64);
    let tile_bytes = th * tw * 2;
    let map = encode(
        w.values,
        w.elem,
        &[tw, th, w.grid_rows as u64, cnt as u64],
        &[tw * 2, cnt as u64 * tile_bytes, tile_bytes],
        &[SLICE, th as u32, (TMA_BN / w.th) as u32, STAGE_TILES as u32],
        SW32,
    )
    .ok()?;
    Some((map, cnt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_block_first_only_with_one_tile_per_cta() {
        // 3072->768 at 4096 tokens: 6 groups x 22 token blocks = 132 tiles on 132 CTAs.
        let w = TileDeviceView::for_planning(768, 3072, 16, 16, ElemType::F16);
        assert_eq!(rs_schedule_flags(132, &w, 4096), RS_SCHED_TOKEN_MAJOR);
        // 4300 tokens: 6 x 23 = 138 tiles, some CTAs take two: feature group first.
        assert_eq!(rs_schedule_flags(132, &w, 4300), 0);
        // 768->3072 at 16384 tokens, unequal groups: balanced runs.
        let mut w = TileDeviceView::for_planning(3072, 768, 64, 64, ElemType::F16);
        w.kept = w.grid_rows * w.grid_cols / 2;
        w.work_spread = Some(1.2);
        assert_eq!(rs_schedule_flags(132, &w, 16384), RS_SCHED_BALANCE);
        // The same weight at 128 tokens (24 tiles): token block first, never balanced.
        assert_eq!(rs_schedule_flags(132, &w, 128), RS_SCHED_TOKEN_MAJOR);
    }

    #[test]
    fn x_streamed_only_in_runs_of_few_wide_groups() {
        if std::env::var_os("ETS_RS_X_STREAM").is_some() {
            return; // the override decides
        }
        // 768->768 with 64x64 tiles: 6 groups; runs at 16384 tokens, one tile per CTA at 4096.
        let mut w = TileDeviceView::for_planning(768, 768, 64, 64, ElemType::F16);
        w.kept = w.grid_rows * w.grid_cols;
        assert_eq!(rs_schedule_flags(132, &w, 16384), RS_SCHED_X_STREAM);
        assert_eq!(rs_schedule_flags(132, &w, 4096), RS_SCHED_TOKEN_MAJOR);
        // Grouped masks (equal groups) stream; random ones (unequal groups) do not.
        let mut w = TileDeviceView::for_planning(768, 3072, 64, 64, ElemType::F16);
        w.kept = w.grid_rows * w.grid_cols / 2;
        w.work_spread = Some(1.0);
        assert_eq!(rs_schedule_flags(132, &w, 16384), RS_SCHED_X_STREAM);
        w.work_spread = Some(1.2);
        assert_eq!(rs_schedule_flags(132, &w, 16384) & RS_SCHED_X_STREAM, 0);
        w.work_spread = None;
        assert_eq!(rs_schedule_flags(132, &w, 16384) & RS_SCHED_X_STREAM, 0);
        // 768->3072: 24 groups read each X block.
        let w = TileDeviceView::for_planning(3072, 768, 64, 64, ElemType::F16);
        assert_eq!(rs_schedule_flags(132, &w, 16384) & RS_SCHED_X_STREAM, 0);
        // 16x16 tiles: every tile kept, one 64-column box a stage, streamed; grouped masks copy X
        // in 16-column boxes, not streamed.
        let mut w = TileDeviceView::for_planning(768, 3072, 16, 16, ElemType::F16);
        w.kept = w.grid_rows * w.grid_cols;
        assert_eq!(rs_schedule_flags(132, &w, 16384), RS_SCHED_X_STREAM);
        w.kept = w.grid_rows * w.grid_cols / 2;
        w.work_spread = Some(1.0);
        assert_eq!(rs_schedule_flags(132, &w, 16384) & RS_SCHED_X_STREAM, 0);
    }

    #[test]
    fn balanced_runs_only_for_long_runs_of_unequal_groups() {
        // 768->3072 with 64x64 tiles: 24 feature groups; 132 multiprocessors.
        let mut w = TileDeviceView::for_planning(3072, 768, 64, 64, ElemType::F16);
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
    fn ctas_fit_on_a_hopper_multiprocessor() {
        // 228 KiB per multiprocessor, 1 KiB reserved per CTA; 227 KiB at most per CTA.
        for th in [16, 32, 64, 128] {
            let per_cta = tma_smem_bytes(128, th) + 1024;
            assert!(
                2 * per_cta <= 228 * 1024,
                "th {th}: {per_cta} bytes per CTA"
            );
            assert!(tma_smem_bytes(256, th) <= 227 * 1024, "th {th}, 256 tokens");
        }
        assert!(rs_smem_bytes() <= 227 * 1024, "register-operand kernel");
    }
}
