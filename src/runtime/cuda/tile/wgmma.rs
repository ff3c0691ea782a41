//! `wgmma`: the union kernel with warpgroup MMA fed by cp.async (`kernels/tile_wgmma.cu`, sm_90).
//!
//! The `mma` design with Hopper's `wgmma`: two warpgroups of 64 tokens each read both operands
//! from shared memory through descriptors. The group size is 64 or 128 features
//! ([`TileKernel::Wg64`], [`TileKernel::Wg128`]).

use cudarc::driver::{CudaView, CudaViewMut};

use super::super::device::CudaRuntime;
use super::super::epilogue::Epilogue;
use super::super::error::CudaError;
use super::common::{launch_union, union_meta_bytes, TileDeviceView, TileShape, TILE_BM};
use super::{smem_over_limit, DeviceLimits, TileFamily, TileKernel};

/// Dynamic shared memory of the wgmma kernel with `bn`-feature groups: the stage ring (96 KiB for
/// both group sizes), 1 KiB for aligning it to the swizzle period, and the union list.
pub fn wg_smem_bytes(bn: usize, th: usize) -> usize {
    let stages = if bn == 128 { 3 } else { 4 };
    stages * (TILE_BM + bn) * 128 + 1024 + union_meta_bytes((bn / th).max(1))
}

/// The cp.async warpgroup-MMA union kernel family.
pub struct Wgmma;

impl TileFamily for Wgmma {
    fn file(&self) -> &'static str {
        "tile_wgmma.cu"
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
        if w.th > kern.bn() {
            return Some(format!(
                "tiles of {} rows are taller than its {}-feature groups",
                w.th,
                kern.bn()
            ));
        }
        let smem = wg_smem_bytes(kern.bn(), w.th);
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
        // SAFETY: w's upload is the caller's; X, Y and the epilogue are checked by the launch.
        unsafe {
            launch_union(
                rt,
                kern,
                wg_smem_bytes(kern.bn(), w.th),
                x,
                m,
                w,
                ep,
                y,
                splits,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_memory_fits_two_ctas_per_sm() {
        for th in [16, 32, 64, 128] {
            for bn in [64, 128] {
                if th <= bn {
                    let b = wg_smem_bytes(bn, th);
                    assert!(b <= 113 * 1024, "wg bn={bn} th={th}: {b} bytes");
                }
            }
        }
    }
}
