//! `sk`: the split kernel for small token counts (`kernels/tile_sk.cu`, any architecture with
//! tensor cores).
//!
//! At a few hundred tokens the other families have few output tiles, so most multiprocessors
//! idle while a handful of CTAs walk whole block rows. Here a warp takes one unit of the plan
//! made at upload ([`super::sk_plan`]: at most eight 16-column steps of one block row's kept
//! tiles for 16 features) for 32 tokens, so the kept tiles spread over every multiprocessor.
//! Units sharing a slice add their fp32 partials through the workspace; the slice's last unit
//! sums them in unit order (the result is deterministic) and applies the epilogue once.

use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

use super::super::device::{addr, CudaRuntime};
use super::super::epilogue::Epilogue;
use super::super::error::CudaError;
use super::common::{arg_opt, check_io, int, TileDeviceView, TileShape};
use super::sk_plan::{
    sk_tile_shape, SK_MAX_TOKENS, SK_MAX_TOKEN_BLOCKS, SK_TOKENS_PER_ITEM, SK_UNIT_BYTES,
};
use super::{DeviceLimits, TileFamily, TileKernel};

/// Warps (work items) per CTA (the kernel's `ESK_WARPS`).
const SK_WARPS: usize = 4;
/// f32 values of one work item's partial sums (16 features x 32 tokens).
const SK_PARTIAL: usize = 16 * SK_TOKENS_PER_ITEM;

/// Work items (warps) of a launch over `m` tokens with `units` plan units.
pub fn sk_items(units: usize, m: usize) -> usize {
    units * m.div_ceil(SK_TOKENS_PER_ITEM)
}

/// The split kernel family.
pub struct Sk;

impl TileFamily for Sk {
    fn file(&self) -> &'static str {
        "tile_sk.cu"
    }

    fn unsupported(
        &self,
        _: &DeviceLimits,
        _: TileKernel,
        w: &TileShape,
        m: usize,
    ) -> Option<String> {
        if !sk_tile_shape(w.th, w.tw) {
            return Some(format!("tile {}x{} has no split kernel", w.th, w.tw));
        }
        (m > SK_MAX_TOKENS).then(|| {
            format!("{m} tokens exceed the split kernel's {SK_MAX_TOKENS} (a small-batch kernel)")
        })
    }

    /// Runs the split kernel (its own reduction: `splits` does not apply).
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
        check_io(x, m, w, ep, y)?;
        if let Some(why) = self.unsupported(&rt.limits(), kern, w, m) {
            return Err(CudaError::Invalid(format!("split tile kernel: {why}")));
        }
        if w.sk_plan == 0 || w.sk_units == 0 {
            return Err(CudaError::Invalid(
                "split tile kernel: the weight was uploaded without its plan".into(),
            ));
        }
        // Operands are read in 8-byte pieces.
        let xa = addr(x);
        if xa % 8 != 0 || w.values % 8 != 0 {
            return Err(CudaError::Invalid(format!(
                "split tile kernel: X and the tile values must be 8-byte aligned (X {xa:#x}, \
                 values {:#x})",
                w.values
            )));
        }
        if m == 0 {
            return Ok(());
        }
        let items = sk_items(w.sk_units, m);
        let tbs = int(m.div_ceil(SK_TOKENS_PER_ITEM))?;
        let (mi, k, n, units) = (int(m)?, int(w.cols)?, int(w.rows)?, int(w.sk_units)?);
        let gelu = i32::from(ep.gelu);
        let counters = w.sk_plan + (w.sk_units * SK_UNIT_BYTES) as u64;
        let ctas = u32::try_from(items.div_ceil(SK_WARPS))
            .map_err(|_| CudaError::Invalid(format!("split tile kernel: {items} work items")))?;
        // Every work item owns one partial of the workspace (written only by units that share
        // their slice). It is sized for the weight's largest launch at once, so that the weight's
        // later launches at other token counts never reallocate it under a captured graph.
        let most = w.sk_units * SK_MAX_TOKEN_BLOCKS * SK_PARTIAL;
        let guard = rt.workspace(most.max(items * SK_PARTIAL))?;
        let ws = guard
            .as_ref()
            .ok_or_else(|| CudaError::Invalid("split tile kernel: no workspace".into()))?;
        let name = kern.entry_name(w);
        let f = rt.kernel(&name, 0)?;
        let mut b = rt.stream().launch_builder(&f);
        b.arg(x).arg(&mi).arg(&k).arg(&w.values).arg(&n);
        b.arg(&w.sk_plan)
            .arg(&units)
            .arg(&tbs)
            .arg(ws)
            .arg(&counters);
        arg_opt(&mut b, &ep.bias);
        arg_opt(&mut b, &ep.residual);
        b.arg(&gelu).arg(y);
        // SAFETY: X, Y and the epilogue were checked for m tokens of w, X and the values are
        // 8-byte aligned; the plan holds sk_units units followed by the counters of every slice
        // for up to SK_MAX_TOKENS tokens (m is within it), made at w's upload, which the caller
        // keeps alive; the workspace holds a partial per work item; the arguments follow the
        // kernel's order.
        unsafe {
            rt.launch(
                &mut b,
                &name,
                (ctas, 1, 1),
                ((SK_WARPS * 32) as u32, 1, 1),
                0,
            )
        }
    }
}
