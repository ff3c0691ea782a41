//! How the dispatcher times a tile weight: every usable tile kernel briefly (a screen), then the
//! best few and cuBLAS fully, on activations, outputs and a bias reused across weights.
//!
//! A screen is one warm-up call and one batch of [`SCREEN_CALLS`] calls: enough to drop the kernels
//! far behind, not to rank close ones. The [`FINALISTS`] fastest of the screen and cuBLAS then get
//! the full timing ([`FULL_BATCHES`] batches of [`FULL_CALLS`] calls after a warm-up batch), and the
//! decision compares only full timings.

use cudarc::driver::CudaSlice;

use super::Dispatcher;
use crate::runtime::cuda::device::{addr, CudaRuntime};
use crate::runtime::cuda::error::CudaError;
use crate::runtime::cuda::gemm::{self, Epilogue};
use crate::runtime::cuda::tile::{self, TileDeviceView, TileKernel};

/// Calls in a screening batch (after one warm-up call).
pub const SCREEN_CALLS: usize = 3;
/// Tile kernels that go from the screen to the full timing.
pub const FINALISTS: usize = 2;
/// Batches of a full timing.
pub const FULL_BATCHES: usize = 5;
/// Calls per batch of a full timing.
pub const FULL_CALLS: usize = 10;

/// Median milliseconds per call of `f`, timed with device events over batches of `per_batch`
/// back-to-back calls (after a warm-up batch).
pub fn median_ms(
    rt: &CudaRuntime,
    batches: usize,
    per_batch: usize,
    f: impl FnMut() -> Result<(), CudaError>,
) -> Result<f64, CudaError> {
    timed_ms(rt, per_batch, batches, per_batch, f)
}

/// Median milliseconds per call of `f` over `batches` batches of `per_batch` calls, after
/// `warmup` untimed calls.
pub(crate) fn timed_ms(
    rt: &CudaRuntime,
    warmup: usize,
    batches: usize,
    per_batch: usize,
    mut f: impl FnMut() -> Result<(), CudaError>,
) -> Result<f64, CudaError> {
    for _ in 0..warmup.max(1) {
        f()?;
    }
    rt.synchronize()?;
    let mut times = Vec::with_capacity(batches);
    for _ in 0..batches.max(1) {
        let t = rt.timer()?;
        for _ in 0..per_batch.max(1) {
            f()?;
        }
        times.push(t.stop_ms()? as f64 / per_batch.max(1) as f64);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times[times.len() / 2])
}

/// The kernels of a screen that get the full timing: the `keep` fastest, in screen order on a
/// tie (the unmeasured default is screened first, so it wins ties). A kernel whose screen time is
/// not a number is dropped.
pub(crate) fn finalists(screened: &[(TileKernel, f64)], keep: usize) -> Vec<TileKernel> {
    let mut order: Vec<(usize, TileKernel, f64)> = screened
        .iter()
        .enumerate()
        .filter(|(_, (_, ms))| !ms.is_nan())
        .map(|(i, &(k, ms))| (i, k, ms))
        .collect();
    order.sort_by(|a, b| a.2.total_cmp(&b.2).then(a.0.cmp(&b.0)));
    order.into_iter().take(keep).map(|(_, k, _)| k).collect()
}

/// `n` f16 values spread over [-1, 1) on the device, a fixed pattern of 1 Mi values repeated:
/// each value's bits come from a multiplicative hash of its index, so the data is the same in
/// every process and varied enough that the tensor cores do not see constant operands. A prefix
/// of the pattern is the pattern of the shorter length.
pub(crate) fn timing_activations(rt: &CudaRuntime, n: usize) -> Result<CudaSlice<u16>, CudaError> {
    let block: Vec<u16> = (0..(1usize << 20).min(n.max(1)) as u64)
        .map(|i| {
            let h = (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let u = (h >> 40) as f32 / (1u64 << 24) as f32;
            half::f16::from_f32(2.0 * u - 1.0).to_bits()
        })
        .collect();
    let values: Vec<u16> = block.iter().copied().cycle().take(n).collect();
    rt.upload(&values)
}

/// The measurements' activations (the timing pattern), outputs and zero bias, grown to the
/// largest weight and token count measured so far and reused by every later measurement.
#[derive(Default)]
pub(crate) struct TimingBuffers {
    x: Option<CudaSlice<u16>>,
    y: Option<CudaSlice<u16>>,
    bias: Option<CudaSlice<f32>>,
}

impl TimingBuffers {
    /// Grows the buffers to hold `x` activations, `y` outputs and `bias` bias values.
    fn fit(&mut self, rt: &CudaRuntime, x: usize, y: usize, bias: usize) -> Result<(), CudaError> {
        if self.x.as_ref().map_or(true, |b| b.len() < x) {
            self.x = None;
            self.x = Some(timing_activations(rt, x)?);
        }
        if self.y.as_ref().map_or(true, |b| b.len() < y) {
            self.y = None;
            self.y = Some(rt.alloc(y)?);
        }
        if self.bias.as_ref().map_or(true, |b| b.len() < bias) {
            self.bias = Some(rt.alloc(bias)?);
        }
        Ok(())
    }
}

/// What a measurement found.
pub(super) struct Measured {
    /// The fastest tile kernel.
    pub kernel: TileKernel,
    /// Its time (infinite when no tile kernel ran).
    pub tile_ms: f64,
    /// cuBLAS on the dense copy, bias epilogue included.
    pub dense_ms: f64,
    /// The dense copy made for the measurement (None when the dispatcher held one already).
    pub dense: Option<CudaSlice<u16>>,
}

impl Dispatcher {
    /// Calls `f` with the device addresses of the timing activations (at least `x` values of
    /// the timing pattern) and of an output buffer (at least `y` f16 values), the buffers the
    /// dispatcher's own measurements reuse; they stay alive and unused by others while `f` runs.
    pub(crate) fn with_timing_buffers<R>(
        &self,
        rt: &CudaRuntime,
        x: usize,
        y: usize,
        f: impl FnOnce(u64, u64) -> Result<R, CudaError>,
    ) -> Result<R, CudaError> {
        let mut timing = self
            .timing
            .lock()
            .map_err(|_| CudaError::Invalid("dispatch timing lock poisoned".into()))?;
        timing.fit(rt, x, y, 0)?;
        let missing = || CudaError::Invalid("dispatch timing buffers missing".into());
        let xa = timing.x.as_ref().map(addr).ok_or_else(missing)?;
        let ya = timing.y.as_ref().map(addr).ok_or_else(missing)?;
        f(xa, ya)
    }

    /// Times the tile kernels this device runs for `v` (a screen, then the finalists fully) and
    /// cuBLAS on a dense copy of weight `name`. Both are timed as a projection runs in the
    /// forward pass, with a bias epilogue (every encoder projection has one): fused into the tile
    /// kernel, after (or inside) cuBLAS.
    ///
    /// # Safety
    /// `v`'s addresses are those of a live upload on this runtime's device.
    pub(super) unsafe fn measure(
        &self,
        rt: &CudaRuntime,
        name: &str,
        v: &TileDeviceView,
        tokens: usize,
    ) -> Result<Measured, CudaError> {
        let poisoned = || CudaError::Invalid("dispatch timing lock poisoned".into());
        let mut timing = self.timing.lock().map_err(|_| poisoned())?;
        timing.fit(rt, tokens * v.cols, tokens * v.rows, v.rows)?;
        let missing = || CudaError::Invalid("dispatch timing buffers missing".into());
        let TimingBuffers { x, y, bias } = &mut *timing;
        let (x, y, bias) = (
            x.as_ref().ok_or_else(missing)?,
            y.as_mut().ok_or_else(missing)?,
            bias.as_ref().ok_or_else(missing)?,
        );
        let x = x.slice(..tokens * v.cols);
        let mut y = y.slice_mut(..tokens * v.rows);
        let ep = Epilogue {
            bias: Some(bias.slice(..v.rows)),
            ..Epilogue::default()
        };
        let dev = rt.limits();
        let mut kernels = vec![tile::auto_kernel(&dev, v, tokens)];
        for k in tile::usable_kernels(&dev, v, tokens) {
            if !kernels.contains(&k) {
                kernels.push(k);
            }
        }
        let mut time = |kern: TileKernel, (warmup, batches, calls): (usize, usize, usize)| {
            // SAFETY: v's upload is the caller's; X, Y and the epilogue are checked by the launch.
            timed_ms(rt, warmup, batches, calls, || unsafe {
                tile::tile_gemm_with(rt, &x, tokens, v, &ep, &mut y, None, kern)
            })
        };
        let full = (FULL_CALLS, FULL_BATCHES, FULL_CALLS);
        if kernels.len() > FINALISTS {
            let mut screened = Vec::with_capacity(kernels.len());
            for &kern in &kernels {
                screened.push((kern, time(kern, (1, 1, SCREEN_CALLS))?));
            }
            kernels = finalists(&screened, FINALISTS);
        }
        let mut best: Option<(TileKernel, f64)> = None;
        for kern in kernels {
            let ms = time(kern, full)?;
            if best.map_or(true, |(_, b)| ms < b) {
                best = Some((kern, ms));
            }
        }
        let (kernel, tile_ms) = best.unwrap_or((TileKernel::Mma, f64::INFINITY));
        let held = self
            .dense
            .lock()
            .map_err(|_| CudaError::Invalid("dense cache lock poisoned".into()))?
            .get(name)
            .map(addr);
        let (dense_at, dense) = match held {
            Some(a) => (a, None),
            None => {
                // SAFETY: v's upload is the caller's.
                let d = unsafe { gemm::densify(rt, v)? };
                (addr(&d), Some(d))
            }
        };
        // SAFETY: dense_at holds N x K values (the dispatcher's copy, never dropped before the
        // dispatcher, or the one made above, alive until this returns); X, Y and the epilogue
        // are checked by the callees.
        let dense_ms = median_ms(rt, FULL_BATCHES, FULL_CALLS, || unsafe {
            gemm::dense_gemm(
                rt, v.elem, &x, v.cols, tokens, v.cols, dense_at, v.rows, &mut y,
            )?;
            gemm::epilogue(rt, v.elem, &mut y, tokens, v.rows, None, &ep)
        })?;
        Ok(Measured {
            kernel,
            tile_ms,
            dense_ms,
            dense,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::finalists;
    use crate::runtime::cuda::tile::TileKernel;

    #[test]
    fn the_fastest_screened_kernels_go_to_the_full_timing() {
        use TileKernel::*;
        let screened = [(Wg128, 0.020), (Sk, 0.011), (Walk, 0.015), (Rs, 0.012)];
        assert_eq!(finalists(&screened, 2), vec![Sk, Rs]);
        assert_eq!(finalists(&screened, 1), vec![Sk]);
        assert_eq!(finalists(&screened, 9), vec![Sk, Rs, Walk, Wg128]);
        assert_eq!(finalists(&screened, 0), Vec::<TileKernel>::new());
        // A tie keeps the screen's order (the unmeasured default is screened first).
        assert_eq!(
            finalists(&[(Rs, 0.01), (Sk, 0.01), (Mma, 0.01)], 2),
            vec![Rs, Sk]
        );
        // Not a number never passes; infinity ranks last.
        let odd = [(Mma, f64::NAN), (Walk, f64::INFINITY), (Sk, 0.5)];
        assert_eq!(finalists(&odd, 2), vec![Sk, Walk]);
        assert_eq!(finalists(&[], 2), Vec::<TileKernel>::new());
    }
}
