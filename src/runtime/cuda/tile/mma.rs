//! `mma`: the union kernel with `mma.sync` (`kernels/tile_gemm.cu`), the sm_80 path.
//!
//! A CTA of 256 threads owns 128 tokens x 128 features: it builds its group's union of tile
//! columns in shared memory and walks it in 64-column stages through a 3-stage cp.async ring.

use cudarc::driver::{CudaView, CudaViewMut};

use super::super::device::CudaRuntime;
use super::super::epilogue::Epilogue;
use super::super::error::CudaError;
use super::common::{launch_union, union_meta_bytes, TileDeviceView, TileShape, TILE_BM, TILE_BN};
use super::{smem_over_limit, DeviceLimits, TileFamily, TileKernel};

const STAGE_BYTES: usize = TILE_BM * 64 * 2;

/// Dynamic shared memory of the `mma` kernel for tile height `th`: two operands of a 3-stage
/// ring and the union list.
pub fn mma_smem_bytes(th: usize) -> usize {
    2 * 3 * STAGE_BYTES + union_meta_bytes(TILE_BN / th)
}

/// The `mma.sync` union kernel family.
pub struct Mma;

impl TileFamily for Mma {
    fn file(&self) -> &'static str {
        "tile_gemm.cu"
    }

    fn unsupported(
        &self,
        dev: &DeviceLimits,
        _: TileKernel,
        w: &TileShape,
        _: usize,
    ) -> Option<String> {
        let smem = mma_smem_bytes(w.th);
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
        unsafe { launch_union(rt, kern, mma_smem_bytes(w.th), x, m, w, ep, y, splits) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_memory_fits_two_ctas_per_sm() {
        for th in [16, 32, 64, 128] {
            let b = mma_smem_bytes(th);
            assert!(b <= 113 * 1024, "th={th}: {b} bytes");
        }
    }
}
