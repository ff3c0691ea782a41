//! Choosing, per weight and token count, between the tile kernel and cuBLAS on a dense copy.
//!
//! The first call for a (weight shape, tile shape, mask, token bucket) measures on the device: a
//! short screen of every usable tile kernel, then a full timing of the fastest two and of cuBLAS
//! (see `measure`) and keeps the answer for the process and, with the tuning cache
//! on ([`CudaOptions::tuning_cache`]), on disk for the next process ([`TuningCache`]). A bucket
//! within a factor of two of one already decided (in this process or the tuning file) takes that
//! decision without measuring, so a run whose batches spread over neighbouring buckets measures
//! each weight once.
//! [`Dispatcher::table`] lists every decision with its reason and the measured speedup.

mod measure;

pub(crate) use measure::timing_activations;
pub use measure::{median_ms, FINALISTS, FULL_BATCHES, FULL_CALLS, SCREEN_CALLS};

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut};

use measure::TimingBuffers;

use super::device::{addr, CudaRuntime};
use super::error::CudaError;
use super::gemm::{self, Epilogue, LinearWeight, Scratch};
use super::tile::{self, TileDeviceView, TileKernel};
use super::tuning::{CudaOptions, TuneEntry, TuneKey, TuningCache};

/// Which implementation runs a weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// The tile-sparse kernel on the stored tiles.
    Tile,
    /// cuBLAS on a dense (or compacted) matrix.
    Cublas,
}

/// One dispatch decision.
#[derive(Debug, Clone, PartialEq)]
pub struct DispatchEntry {
    /// Weight name.
    pub name: String,
    /// Out features.
    pub n: usize,
    /// In features.
    pub k: usize,
    /// Token count the decision was measured at (rounded up to a power of two).
    pub tokens: usize,
    /// Stored density.
    pub density: f64,
    /// The choice.
    pub choice: Choice,
    /// Why.
    pub reason: String,
    /// Tile kernel milliseconds (when measured).
    pub tile_ms: Option<f64>,
    /// cuBLAS milliseconds (when measured).
    pub dense_ms: Option<f64>,
    /// The fastest tile kernel measured (what runs when the choice is [`Choice::Tile`]).
    pub kernel: Option<TileKernel>,
}

impl DispatchEntry {
    /// cuBLAS time over tile time (above 1: the tile kernel is faster).
    pub fn speedup(&self) -> Option<f64> {
        Some(self.dense_ms? / self.tile_ms?)
    }
}

type Key = (usize, usize, usize, usize, usize, Option<[u8; 32]>, usize);
/// (choice, fastest tile kernel ms, cuBLAS ms, reason, that tile kernel)
type Decision = (Choice, Option<f64>, Option<f64>, String, Option<TileKernel>);

/// Measures once, caches, and runs linear layers with the chosen implementation.
#[derive(Default)]
pub struct Dispatcher {
    options: CudaOptions,
    tuning: OnceLock<Option<TuningCache>>,
    cache: Mutex<HashMap<Key, Decision>>,
    entries: Mutex<Vec<DispatchEntry>>,
    /// Dense copies of the tile weights that run on cuBLAS, by weight name. A copy is never
    /// replaced or dropped before the dispatcher, so its address stays valid that long (a
    /// captured graph or a batched GEMM's pointer array may hold it).
    dense: Mutex<HashMap<String, CudaSlice<u16>>>,
    /// The measurements' activations and outputs, reused across weights.
    timing: Mutex<TimingBuffers>,
    /// Per weight (its key without the bucket), the buckets decided by a measurement or the
    /// tuning file: the sources a nearby bucket's decision is taken from.
    measured: Mutex<HashMap<WeightKey, Vec<usize>>>,
    /// Measurements made, and the time they took.
    measuring: Mutex<(usize, std::time::Duration)>,
}

type WeightKey = (usize, usize, usize, usize, usize, Option<[u8; 32]>);

/// A measured bucket whose decision a bucket of `tokens` takes instead of measuring: the
/// nearest within a factor of two (the larger on a tie), or None. Decisions change with the
/// token count (the tile kernels win at some counts and lose at others), so a bucket further
/// away is measured.
pub(crate) fn nearby_bucket(measured: &[usize], tokens: usize) -> Option<usize> {
    let distance = |b: usize| {
        if b >= tokens {
            b as f64 / tokens.max(1) as f64
        } else {
            tokens as f64 / b.max(1) as f64
        }
    };
    measured
        .iter()
        .copied()
        .filter(|&b| b != tokens && distance(b) <= 2.0)
        .min_by(|&a, &b| distance(a).total_cmp(&distance(b)).then(b.cmp(&a)))
}

fn bucket(tokens: usize) -> usize {
    tokens.max(1).next_power_of_two()
}

impl Dispatcher {
    /// An empty dispatcher with the default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty dispatcher with `options`.
    pub fn with_options(options: CudaOptions) -> Self {
        Dispatcher {
            options,
            ..Self::default()
        }
    }

    /// The options this dispatcher follows.
    pub fn options(&self) -> &CudaOptions {
        &self.options
    }

    /// The on-disk tuning cache, opened on first use; None when the options turn it off or no
    /// cache directory is known.
    fn tuning(&self) -> Option<&TuningCache> {
        self.tuning
            .get_or_init(|| {
                if !self.options.tuning_cache {
                    return None;
                }
                let dir = self
                    .options
                    .cache_dir
                    .clone()
                    .or_else(super::nvrtc::cache_dir)?;
                Some(TuningCache::open(&dir))
            })
            .as_ref()
    }

    /// How the options decide `v` at `tokens` (a bucket), or None when they leave it to
    /// measurement.
    fn decided_by_options(
        &self,
        rt: &CudaRuntime,
        v: &TileDeviceView,
        tokens: usize,
    ) -> Option<Decision> {
        if self.options.force_cublas {
            return Some((
                Choice::Cublas,
                None,
                None,
                "forced by the options".into(),
                None,
            ));
        }
        if let Some(why) = tile::tile_kernel_unsupported(v) {
            return Some((Choice::Cublas, None, None, why, None));
        }
        if let Some(k) = self.options.force_kernel {
            if tile::kernel_unsupported(&rt.limits(), k, v, tokens).is_none() {
                let why = format!("forced by the options (tile kernel {k:?})");
                return Some((Choice::Tile, None, None, why, Some(k)));
            }
        }
        None
    }

    /// The tuning file's decision for `v` at `tokens` (a bucket).
    fn decided_by_tuning(
        &self,
        rt: &CudaRuntime,
        v: &TileDeviceView,
        tokens: usize,
    ) -> Option<Decision> {
        let e = self.tuning()?.get(&tune_key(rt, v, tokens)?)?;
        let choice = if e.kernel.is_some() {
            Choice::Tile
        } else {
            Choice::Cublas
        };
        let why = match e.kernel {
            Some(k) => format!("tuning cache (tile kernel {k:?})"),
            None => "tuning cache".into(),
        };
        Some((choice, e.tile_ms, e.dense_ms, why, e.kernel))
    }

    /// Measures weight `name` (`v`) at `tokens` (a bucket) and stores the decision in the tuning
    /// cache. When cuBLAS wins, the dense copy made for the measurement is kept for the runs.
    ///
    /// # Safety
    /// As [`Dispatcher::measure`].
    unsafe fn measure_and_store(
        &self,
        rt: &CudaRuntime,
        name: &str,
        v: &TileDeviceView,
        tokens: usize,
    ) -> Result<Decision, CudaError> {
        // SAFETY: the caller's upload.
        let m = unsafe { self.measure(rt, name, v, tokens)? };
        let (kern, t, c) = (m.kernel, m.tile_ms, m.dense_ms);
        let choice = if t <= c { Choice::Tile } else { Choice::Cublas };
        if let (Choice::Cublas, Some(copy)) = (choice, m.dense) {
            self.dense
                .lock()
                .map_err(|_| CudaError::Invalid("dense cache lock poisoned".into()))?
                .entry(name.to_string())
                .or_insert(copy);
        }
        if let (Some(cache), Some(key)) = (self.tuning(), tune_key(rt, v, tokens)) {
            let entry = TuneEntry {
                kernel: (choice == Choice::Tile).then_some(kern),
                tile_ms: Some(t),
                dense_ms: Some(c),
            };
            if let Err(e) = cache.put(&key, entry) {
                eprintln!("warning: tuning cache not written: {e}");
            }
        }
        let why = format!("measured (tile kernel {kern:?})");
        Ok((choice, Some(t), Some(c), why, Some(kern)))
    }

    /// Decides a bucket not decided in this process yet: from the options or the tuning file;
    /// else from a nearby bucket decided by a measurement or the tuning file
    /// ([`nearby_bucket`]); else by measuring.
    ///
    /// # Safety
    /// As [`Dispatcher::measure`].
    unsafe fn decide_bucket(
        &self,
        rt: &CudaRuntime,
        name: &str,
        v: &TileDeviceView,
        tokens: usize,
    ) -> Result<Decision, CudaError> {
        let poisoned = || CudaError::Invalid("dispatch cache lock poisoned".into());
        let wkey = (v.rows, v.cols, v.th, v.tw, v.kept, v.mask_sha256);
        let measured = |b: usize| -> Result<(), CudaError> {
            let mut m = self.measured.lock().map_err(|_| poisoned())?;
            m.entry(wkey).or_default().push(b);
            Ok(())
        };
        if let Some(d) = self.decided_by_options(rt, v, tokens) {
            return Ok(d);
        }
        if let Some(d) = self.decided_by_tuning(rt, v, tokens) {
            measured(tokens)?;
            return Ok(d);
        }
        let known = self
            .measured
            .lock()
            .map_err(|_| poisoned())?
            .get(&wkey)
            .cloned()
            .unwrap_or_default();
        // A tile kernel taken from another bucket must run at this one.
        let usable = |d: &Decision| match d.4 {
            Some(k) if d.0 == Choice::Tile => {
                tile::kernel_unsupported(&rt.limits(), k, v, tokens).is_none()
            }
            _ => true,
        };
        let relabel = |(choice, t, c, why, kern): Decision, b: usize| {
            (choice, t, c, format!("from bucket {b}: {why}"), kern)
        };
        if let Some(b) = nearby_bucket(&known, tokens) {
            let key = (v.rows, v.cols, v.th, v.tw, v.kept, v.mask_sha256, b);
            let near = self
                .cache
                .lock()
                .map_err(|_| poisoned())?
                .get(&key)
                .cloned();
            if let Some(d) = near.filter(usable) {
                return Ok(relabel(d, b));
            }
        }
        // A nearby bucket in the tuning file (a decision of an earlier process).
        for b in [tokens * 2, tokens / 2] {
            if b == 0 {
                continue;
            }
            if let Some(d) = self.decided_by_tuning(rt, v, b).filter(usable) {
                measured(b)?;
                return Ok(relabel(d, b));
            }
        }
        let t0 = std::time::Instant::now();
        // SAFETY: the caller's upload.
        let d = unsafe { self.measure_and_store(rt, name, v, tokens)? };
        if let Ok(mut m) = self.measuring.lock() {
            m.0 += 1;
            m.1 += t0.elapsed();
        }
        measured(tokens)?;
        Ok(d)
    }

    /// Measurements made so far, and the host time they took.
    pub fn measuring(&self) -> (usize, std::time::Duration) {
        self.measuring.lock().map(|m| *m).unwrap_or_default()
    }

    /// Counts one measurement made outside the dispatcher (a layer's batched Q/K/V against its
    /// three projections) and the host time it took.
    pub(crate) fn count_measurement(&self, took: std::time::Duration) {
        if let Ok(mut m) = self.measuring.lock() {
            m.0 += 1;
            m.1 += took;
        }
    }

    /// The address of weight `name`'s dense copy, when the dispatcher holds one.
    pub(crate) fn held_dense(&self, name: &str) -> Result<Option<u64>, CudaError> {
        Ok(self
            .dense
            .lock()
            .map_err(|_| CudaError::Invalid("dense cache lock poisoned".into()))?
            .get(name)
            .map(addr))
    }

    /// Keeps `copy` as weight `name`'s dense copy (unless one is held already) and returns the
    /// address of the copy held. `copy` must be the dense expansion of that weight.
    pub(crate) fn keep_dense(&self, name: &str, copy: CudaSlice<u16>) -> Result<u64, CudaError> {
        let mut dense = self
            .dense
            .lock()
            .map_err(|_| CudaError::Invalid("dense cache lock poisoned".into()))?;
        Ok(addr(dense.entry(name.to_string()).or_insert(copy)))
    }

    /// Decides (measuring on first sight) how weight `name` runs at `tokens` tokens.
    ///
    /// # Safety
    /// The weight's addresses are those of a live upload on this runtime's device (measuring
    /// launches on them).
    pub unsafe fn decide(
        &self,
        rt: &CudaRuntime,
        name: &str,
        w: &LinearWeight,
        tokens: usize,
    ) -> Result<DispatchEntry, CudaError> {
        let (n, k) = w.dims();
        let tokens_b = bucket(tokens);
        let poisoned = || CudaError::Invalid("dispatch cache lock poisoned".into());
        let (density, decision) = match w {
            LinearWeight::Tile(v) => {
                let key = (n, k, v.th, v.tw, v.kept, v.mask_sha256, tokens_b);
                let cached = self
                    .cache
                    .lock()
                    .map_err(|_| poisoned())?
                    .get(&key)
                    .cloned();
                let d = match cached {
                    Some(d) => d,
                    None => {
                        // SAFETY: the caller's upload.
                        let d = unsafe { self.decide_bucket(rt, name, v, tokens_b)? };
                        self.cache
                            .lock()
                            .map_err(|_| poisoned())?
                            .insert(key, d.clone());
                        d
                    }
                };
                (v.density(), d)
            }
            LinearWeight::Dense { .. } => (
                1.0,
                (Choice::Cublas, None, None, "dense encoding".into(), None),
            ),
            LinearWeight::Rows { nr, n, .. } => (
                *nr as f64 / (*n).max(1) as f64,
                (
                    Choice::Cublas,
                    None,
                    None,
                    "rows encoding: compacted GEMM + scatter".into(),
                    None,
                ),
            ),
            LinearWeight::Cols { kc, k, .. } => (
                *kc as f64 / (*k).max(1) as f64,
                (
                    Choice::Cublas,
                    None,
                    None,
                    "cols encoding: gather + compacted GEMM".into(),
                    None,
                ),
            ),
        };
        let entry = DispatchEntry {
            name: name.into(),
            n,
            k,
            tokens: tokens_b,
            density,
            choice: decision.0,
            reason: decision.3,
            tile_ms: decision.1,
            dense_ms: decision.2,
            kernel: decision.4,
        };
        let mut entries = self.entries.lock().map_err(|_| poisoned())?;
        if !entries
            .iter()
            .any(|e| e.name == entry.name && e.tokens == entry.tokens)
        {
            entries.push(entry.clone());
        }
        Ok(entry)
    }

    /// Runs `Y = act(X W^T + b) + residual` with the implementation chosen for this weight. X
    /// (`m x K`), Y (`m x N`) and the epilogue are checked against the weight's shape.
    ///
    /// # Safety
    /// As [`gemm::linear`]: the weight's upload is alive, on this runtime's device.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn run_linear(
        &self,
        rt: &CudaRuntime,
        name: &str,
        x: &CudaView<'_, u16>,
        m: usize,
        w: &LinearWeight,
        ep: &Epilogue<'_>,
        y: &mut CudaViewMut<'_, u16>,
        scratch: &mut Scratch,
    ) -> Result<Choice, CudaError> {
        // SAFETY: the caller's upload.
        let d = unsafe { self.decide(rt, name, w, m)? };
        if let (Choice::Tile, LinearWeight::Tile(v), Some(kern)) = (d.choice, w, d.kernel) {
            // SAFETY: the caller's bounds, passed on.
            unsafe { tile::tile_gemm_with(rt, x, m, v, ep, y, None, kern)? };
            return Ok(d.choice);
        }
        let guard;
        let view = match (d.choice, w) {
            (Choice::Cublas, LinearWeight::Tile(v)) => {
                // SAFETY: the caller's upload.
                unsafe { self.dense_copy(rt, name, v)? };
                guard = self
                    .dense
                    .lock()
                    .map_err(|_| CudaError::Invalid("dense cache lock poisoned".into()))?;
                let copy = guard.get(name).map(|b| b.as_view());
                Some(copy.ok_or_else(|| {
                    CudaError::Invalid(format!("the dense copy of {name} is missing"))
                })?)
            }
            _ => None,
        };
        // SAFETY: the caller's upload; a dense copy holds N x K values and lives in self.
        unsafe { gemm::linear(rt, x, m, w, view.as_ref(), ep, y, scratch)? };
        Ok(d.choice)
    }

    /// The device address of weight `name`'s dense f16 copy (`v` expanded), made on first use
    /// and kept, unchanged, until the dispatcher drops.
    ///
    /// # Safety
    /// `v`'s addresses are those of a live upload on this runtime's device, and `v` is the weight
    /// called `name` (the copy is found by name).
    pub unsafe fn dense_copy(
        &self,
        rt: &CudaRuntime,
        name: &str,
        v: &TileDeviceView,
    ) -> Result<u64, CudaError> {
        let mut dense = self
            .dense
            .lock()
            .map_err(|_| CudaError::Invalid("dense cache lock poisoned".into()))?;
        if let Some(b) = dense.get(name) {
            return Ok(addr(b));
        }
        // SAFETY: the caller's upload.
        let copy = unsafe { gemm::densify(rt, v)? };
        let at = addr(&copy);
        dense.insert(name.to_string(), copy);
        Ok(at)
    }

    /// Every decision so far.
    pub fn table(&self) -> Vec<DispatchEntry> {
        self.entries.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

/// The tuning cache's key of `v` at `tokens`; None when the mask's signature is not known.
fn tune_key(rt: &CudaRuntime, v: &TileDeviceView, tokens: usize) -> Option<TuneKey> {
    Some(TuneKey {
        gpu: rt.name().to_string(),
        arch: rt.arch().to_string(),
        dtype: v.elem.suffix().to_string(),
        n: v.rows,
        k: v.cols,
        th: v.th,
        tw: v.tw,
        mask_sha256: v.mask_sha256?,
        tokens,
    })
}

/// Formats decisions as a text table.
pub fn format_table(entries: &[DispatchEntry]) -> String {
    let mut s = format!(
        "{:<44} {:>6} {:>6} {:>7} {:>7} {:>7} {:>9} {:>9} {:>8}  reason\n",
        "weight", "N", "K", "tokens", "density", "kernel", "tile ms", "cublas ms", "speedup"
    );
    for e in entries {
        let f = |v: Option<f64>| v.map(|x| format!("{x:.4}")).unwrap_or_else(|| "-".into());
        s.push_str(&format!(
            "{:<44} {:>6} {:>6} {:>7} {:>7.3} {:>7} {:>9} {:>9} {:>8}  {}\n",
            e.name,
            e.n,
            e.k,
            e.tokens,
            e.density,
            match e.choice {
                Choice::Tile => "tile",
                Choice::Cublas => "cublas",
            },
            f(e.tile_ms),
            f(e.dense_ms),
            e.speedup()
                .map(|x| format!("{x:.2}x"))
                .unwrap_or_else(|| "-".into()),
            e.reason
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::nearby_bucket;

    #[test]
    fn a_bucket_takes_the_nearest_decided_bucket_within_a_factor_of_two() {
        assert_eq!(nearby_bucket(&[], 1024), None);
        assert_eq!(nearby_bucket(&[2048], 1024), Some(2048));
        assert_eq!(nearby_bucket(&[512], 1024), Some(512));
        // A tie goes to the larger bucket; the nearer one wins otherwise.
        assert_eq!(nearby_bucket(&[512, 2048], 1024), Some(2048));
        assert_eq!(nearby_bucket(&[2048, 512], 1024), Some(2048));
        assert_eq!(nearby_bucket(&[4096, 2048], 2048 + 1), Some(2048));
        // Further than a factor of two is measured again.
        assert_eq!(nearby_bucket(&[4096], 1024), None);
        assert_eq!(nearby_bucket(&[128, 256], 1024), None);
        // The bucket itself is not a neighbour.
        assert_eq!(nearby_bucket(&[1024], 1024), None);
    }
}
