//! `tma`: the union kernel fed by TMA from a producer warp (`kernels/tile_tma.cu`, sm_90).
//!
//! Warp 8 of a 288-thread CTA copies X and the kept tiles with the Tensor Memory Accelerator into
//! a ring whose barriers count bytes; two consumer warpgroups multiply with warpgroup MMA. A CTA
//! owns 128 tokens ([`TileKernel::Tma128`], 3 stages, two CTAs per multiprocessor) or 256
//! ([`TileKernel::Tma256`], 4 stages, one CTA). Copies are 16-column slices with the 32-byte
//! swizzle; 64-column tiles copy whole 128-byte rows with the 128-byte swizzle.

use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

use super::super::device::{addr, CudaRuntime};
use super::super::epilogue::Epilogue;
use super::super::error::CudaError;
use super::common::{
    check_io, int, union_meta_bytes, TileDeviceView, TileInts, TileShape, UnionGrid, UnionLaunch,
};
use super::tensor_map::{encode, tiles_per_block_row, x_maps, TensorMap, SLICE, SW128, SW32};
use super::{smem_over_limit, DeviceLimits, TileFamily, TileKernel};

/// Output features per CTA.
pub const TMA_BN: usize = 128;
const TMA_THREADS: u32 = 288;
/// Tiles a stage copies per block row (the kernel's four 16-column slots).
const STAGE_TILES: usize = 4;

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
    let stages = tma_stages(bm);
    stages * (bm + TMA_BN) * 64 * 2 + 1024 + 16 * stages + union_meta_bytes((TMA_BN / th).max(1))
}

/// The TMA-fed union kernel family.
pub struct Tma;

impl TileFamily for Tma {
    fn file(&self) -> &'static str {
        "tile_tma.cu"
    }

    fn unsupported(
        &self,
        dev: &DeviceLimits,
        kern: TileKernel,
        w: &TileShape,
        _: usize,
    ) -> Option<String> {
        if !dev.hopper() {
            return Some(format!("needs sm_90 (device {})", dev.arch));
        }
        if w.th > TMA_BN || w.tw > 64 {
            return Some(format!("tile {}x{} is larger than 128x64", w.th, w.tw));
        }
        if w.kept >= i32::MAX as usize {
            return Some(format!("{} kept tiles (at most 2^31 - 2)", w.kept));
        }
        let smem = tma_smem_bytes(kern.bm(), w.th);
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
        let bm = kern.bm();
        let (xa, ya) = (addr(x), addr(y));
        if xa % 16 != 0 || ya % 16 != 0 || w.values % 16 != 0 || m == 0 {
            return Err(CudaError::Invalid(format!(
                "TMA tile kernel: X, Y and the tile values must be 16-byte aligned and M > 0 \
                 (X {xa:#x}, Y {ya:#x}, values {:#x}, M {m})",
                w.values
            )));
        }
        let (th, tw) = (w.th as u64, w.tw as u64);
        let [map_x, map_x_wide] = x_maps(xa, m, w, bm)?;
        // 64-column tiles are copied in whole 128-byte rows with the 128-byte swizzle; narrower
        // tiles in 16-column slices with the 32-byte swizzle (the kernel's WIDE switch).
        let (slice, swizzle) = if w.tw == 64 {
            (64, SW128)
        } else {
            (SLICE, SW32)
        };
        // With no kept tile every copy falls outside the map (tile index `kept`); the map then
        // needs one (never read) tile of extent, at any aligned address.
        let (values, kept) = if w.kept == 0 {
            (xa, 1)
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
        let (wcnt, kept) = (int(wcnt)?, int(kept)?);
        let ints = TileInts::new(m, w, ep)?;
        let name = kern.entry_name(w);
        let grid = UnionGrid {
            name: &name,
            bn: kern.bn(),
            bm,
            persistent: false,
            threads: TMA_THREADS,
            smem: tma_smem_bytes(bm, w.th),
        };
        let launch = UnionLaunch::new(rt, grid, w, m, splits)?;
        let f = launch.kernel(rt)?;
        {
            // The common tile arguments with X replaced by its maps and the values by the
            // weight's maps and kept count: maps of X, maps of W, tiles per block row or 0, M, K,
            // bitmap, row offsets, kept, N, grid, epilogue, Y, ldy, workspace.
            let mut b = rt.stream().launch_builder(&f);
            b.arg(&map_x).arg(&map_x_wide).arg(&map_w).arg(&map_rows);
            b.arg(&wcnt).arg(&ints.m).arg(&ints.k);
            b.arg(&w.bitmap).arg(&w.row_offsets).arg(&kept);
            ints.push_grid(&mut b);
            ints.push_epilogue(&mut b, ep);
            b.arg(&mut *y).arg(&ints.n);
            launch.push_workspace(&mut b);
            // SAFETY: X, Y and the epilogue were checked for m tokens of w and are 16-byte
            // aligned; the maps cover X (m x K) and the weight's values as uploaded; w's
            // addresses are the caller's; the arguments follow the kernel's order.
            unsafe { launch.launch(rt, &mut b)? };
        }
        launch.finish(rt, m, w, ep, y)
    }
}

/// The TMA union kernel's stage map for 16-column tiles: the values as (16 columns, the tile's
/// rows, block rows, tiles of a row), boxes of the stage's four tiles of a group's block rows laid
/// out as the per-tile copies place them (slot by slot, 32-byte swizzle). None for other tiles,
/// when the rows cannot be uniform or the map cannot be encoded.
fn tma_stage_map(w: &TileDeviceView) -> Option<(TensorMap, usize)> {
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
    }
}
