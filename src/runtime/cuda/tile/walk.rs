//! `walk`: the row walk (`kernels/tile_walk.cu`, any architecture with tensor cores).
//!
//! Built for scattered masks, where a group's union is nearly every column: a CTA keeps all K
//! columns of its tokens resident in shared memory and its warps walk single block rows' kept
//! tiles, so nothing absent is multiplied. Here: how a weight is split over CTAs (tokens per CTA,
//! feature parts to fill one wave) and the launch.

use cudarc::driver::{CudaView, CudaViewMut};

use super::super::device::CudaRuntime;
use super::super::epilogue::Epilogue;
use super::super::error::CudaError;
use super::common::{check_io, TileDeviceView, TileInts, TileShape};
use super::{DeviceLimits, TileFamily, TileKernel};

/// Threads per CTA of the row-walk kernel.
const WALK_THREADS: u32 = 512;

/// How the row-walk kernel runs one weight: tokens per CTA, feature parts, shared memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkPlan {
    /// Tokens per CTA (128, 64 or 32): all of their K columns stay in shared memory.
    pub bm: usize,
    /// CTAs per token block, each taking a contiguous share of the block rows.
    pub parts: usize,
    /// Dynamic shared memory per CTA in bytes.
    pub smem: usize,
}

/// Shared memory of the row-walk kernel: `bm` token rows of the padded K, one 8-byte barrier per
/// 64-column load phase, the unit counter.
pub fn walk_smem_bytes(bm: usize, v: &TileShape) -> usize {
    let kt = v.grid_cols * v.tw;
    bm * 2 * kt + 8 * kt.div_ceil(64) + 16
}

/// The row-walk plan for `m` tokens, or None when not even 32 tokens of X fit in shared memory.
/// The CTA count is kept to one wave (one CTA per multiprocessor: 16 warps of up to 128
/// registers): token blocks first, then the block rows are split into parts to fill the device.
pub fn walk_plan(max_smem: usize, sm_count: usize, m: usize, v: &TileShape) -> Option<WalkPlan> {
    let want = m.max(1).next_power_of_two().clamp(32, 128);
    let bm = [128usize, 64, 32]
        .into_iter()
        .find(|&bm| bm <= want && walk_smem_bytes(bm, v) <= max_smem)?;
    let blocks = m.div_ceil(bm).max(1);
    let parts = (sm_count.max(1) / blocks).clamp(1, v.grid_rows.max(1));
    Some(WalkPlan {
        bm,
        parts,
        smem: walk_smem_bytes(bm, v),
    })
}

/// The row-walk kernel family.
pub struct Walk;

impl TileFamily for Walk {
    fn file(&self) -> &'static str {
        "tile_walk.cu"
    }

    fn unsupported(
        &self,
        dev: &DeviceLimits,
        _: TileKernel,
        w: &TileShape,
        m: usize,
    ) -> Option<String> {
        walk_plan(dev.max_smem, dev.sm_count, m, w)
            .is_none()
            .then(|| {
                format!(
                    "K = {} needs {} bytes of shared memory for 32 tokens, the device allows {}",
                    w.cols,
                    walk_smem_bytes(32, w),
                    dev.max_smem
                )
            })
    }

    /// Runs the row walk (no K split: every output is written once, epilogue fused).
    unsafe fn launch(
        &self,
        rt: &CudaRuntime,
        kern: TileKernel,
        x: &CudaView<'_, u16>,
        m: usize,
        w: &TileDeviceView,
        ep: &Epilogue<'_>,
        y: &mut CudaViewMut<'_, u16>,
        _splits: usize,
    ) -> Result<(), CudaError> {
        let dev = rt.limits();
        let plan = walk_plan(dev.max_smem, dev.sm_count, m, w).ok_or_else(|| {
            CudaError::Invalid(format!(
                "row-walk kernel: {}",
                self.unsupported(&dev, kern, w, m).unwrap_or_default()
            ))
        })?;
        check_io(x, m, w, ep, y)?;
        let ints = TileInts::new(m, w, ep)?;
        let name = format!("{}_bm{}", kern.entry_name(w), plan.bm);
        let grid = (plan.parts as u32, m.div_ceil(plan.bm) as u32, 1);
        let f = rt.kernel(&name, plan.smem as u32)?;
        let mut b = rt.stream().launch_builder(&f);
        ints.push_all(&mut b, x, w, ep, y);
        // SAFETY: X, Y and the epilogue were checked for m tokens of w, w's addresses are the
        // caller's, the plan's shared memory fits the device; the arguments follow the kernel.
        unsafe { rt.launch(&mut b, &name, grid, (WALK_THREADS, 1, 1), plan.smem as u32) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::cuda::device::ElemType;

    fn view(n: usize, k: usize, th: usize, tw: usize) -> TileShape {
        TileShape::new(n, k, th, tw, 0, ElemType::F16)
    }

    /// Shared memory of an H200 / H100 block (227 KiB) and of an A100 block (163 KiB).
    const HOPPER_SMEM: usize = 232_448;
    const AMPERE_SMEM: usize = 166_912;

    #[test]
    fn walk_plan_keeps_x_resident_and_fills_one_wave() {
        let sms = 132;
        // K = 768: 128 tokens of X fit; one CTA per token block at 16384 tokens.
        let p = walk_plan(HOPPER_SMEM, sms, 16384, &view(3072, 768, 16, 16)).unwrap();
        assert_eq!((p.bm, p.parts), (128, 1));
        assert_eq!(p.smem, 128 * 768 * 2 + 8 * 12 + 16);
        // 4096 tokens: 32 token blocks, the block rows split four ways (128 CTAs <= 132).
        let p = walk_plan(HOPPER_SMEM, sms, 4096, &view(3072, 768, 16, 16)).unwrap();
        assert_eq!((p.bm, p.parts), (128, 4));
        // K = 3072: only 32 tokens fit.
        let p = walk_plan(HOPPER_SMEM, sms, 16384, &view(768, 3072, 16, 16)).unwrap();
        assert_eq!(p.bm, 32);
        assert!(p.smem <= HOPPER_SMEM);
        // Few tokens: the block is no taller than needed, parts never exceed the block rows.
        let p = walk_plan(HOPPER_SMEM, sms, 20, &view(300, 200, 16, 16)).unwrap();
        assert_eq!((p.bm, p.parts), (32, 19));
        // A smaller device limit picks a smaller block; an impossible K gives None.
        let p = walk_plan(AMPERE_SMEM, 108, 16384, &view(3072, 768, 16, 16)).unwrap();
        assert_eq!(p.bm, 64);
        assert!(walk_plan(AMPERE_SMEM, 108, 128, &view(768, 4096, 16, 16)).is_none());
        // Padded K: tiles that overhang K still have resident (zero-filled) columns.
        let v = view(300, 200, 32, 32);
        assert_eq!(walk_smem_bytes(32, &v), 32 * 224 * 2 + 8 * 4 + 16);
    }
}
