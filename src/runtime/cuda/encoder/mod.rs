//! The whole BERT encoder on the GPU: [`CudaEncoder`], behind the same [`Encoder`] interface as
//! the CPU runtime and computing the same function.
//!
//! The file's tensor bytes are checked and uploaded once (see `weights`). A forward pass over a
//! [`TokenBatch`] keeps its tokens packed (sequence after sequence, no padding rows, with
//! cumulative offsets `cu`), and runs per layer:
//!
//! 1. the Q, K and V projections, bias in their epilogue; or one batched GEMM on dense f16
//!    matrices, the biases added by the attention kernel, where all three run on cuBLAS or that
//!    was measured faster (see `qkv`);
//! 2. the fused attention kernel (online softmax in fp32, scores never leave registers);
//! 3. the output projection with bias and residual in its epilogue, then LayerNorm;
//! 4. the FFN up-projection with bias and GELU in its epilogue, the down-projection with bias and
//!    residual, then LayerNorm.
//!
//! Each projection runs through the [`Dispatcher`]: the tile kernel on the file's tiles or cuBLAS,
//! whichever it measured faster at the batch's token count. Activations are f16 between kernels,
//! every reduction is fp32. Device buffers are sized for the largest batch seen so far (or once,
//! by [`CudaEncoder::warm_up`]) and reused.
//!
//! With graphs on (the default), a batch is rounded up to a coarser shape (a few extra rows at
//! the end, see `packed`), so that batches of nearby sizes replay one captured graph; the
//! results of the batch's own sequences do not change. [`CudaEncoder::stats`] tells where the
//! host's time went, by phase.
//!
//! ```no_run
//! use ets::format::EtsFile;
//! use ets::runtime::cuda::CudaEncoder;
//! use ets::runtime::{Encoder, Pooling, TokenBatch};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let file = EtsFile::open(std::path::Path::new("model.ets"))?;
//! let encoder = CudaEncoder::new(&file)?;
//! let batch = TokenBatch::from_ids(vec![vec![101, 7592, 102], vec![101, 102]]);
//! let embeddings = encoder.embed(&batch, Pooling::Mean)?; // [2 * hidden_size]
//! # let _ = embeddings; Ok(()) }
//! ```

mod buffers;
mod forward;
mod graph;
pub mod launch;
mod packed;
mod qkv;
mod report;
mod stats;
mod weights;

pub use report::{format_report, ProjectionReport};
pub use stats::{format_stats, PassStats};

use std::sync::{Arc, Mutex};
use std::time::Instant;

use half::f16;

use crate::format::{EtsFile, ModelConfig};
use crate::runtime::cuda::device::RawPtr;
use crate::runtime::cuda::{CudaError, CudaRuntime, Dispatcher};
use crate::runtime::{
    check_batch, Encoder, EncoderOutput, ForwardOptions, Pooling, RuntimeError, TokenBatch,
};

use buffers::Buffers;
use packed::Packed;
use stats::PassKind;
use weights::DevWeights;

/// The encoder of a `.ets` file on a CUDA device.
pub struct CudaEncoder {
    rt: Arc<CudaRuntime>,
    config: ModelConfig,
    weights: DevWeights,
    dispatcher: Dispatcher,
    buffers: Mutex<Option<Buffers>>,
    poison: std::sync::atomic::AtomicBool,
    graphs: std::sync::atomic::AtomicBool,
    stats: Mutex<PassStats>,
    /// Per (layer, token bucket) whose Q, K and V chose tile kernels: whether one batched GEMM
    /// on dense copies was measured faster (see `qkv`).
    qkv_batch: Mutex<std::collections::HashMap<(usize, usize), bool>>,
}

impl std::fmt::Debug for CudaEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaEncoder")
            .field("device", &self.rt.name())
            .field("layers", &self.weights.layers.len())
            .finish_non_exhaustive()
    }
}

fn f16_to_f32(bits: &[u16]) -> Vec<f32> {
    bits.iter().map(|&b| f16::from_bits(b).to_f32()).collect()
}

impl CudaEncoder {
    /// Opens GPU 0 and uploads the file's encoder.
    pub fn new(file: &EtsFile) -> Result<CudaEncoder, RuntimeError> {
        let rt = CudaRuntime::new(0)?;
        CudaEncoder::with_runtime(Arc::new(rt), file)
    }

    /// Uploads the file's encoder to the device of `rt`.
    pub fn with_runtime(rt: Arc<CudaRuntime>, file: &EtsFile) -> Result<CudaEncoder, RuntimeError> {
        CudaEncoder::with_dispatcher(rt, file, Dispatcher::new())
    }

    /// Uploads the file's encoder to the device of `rt`; `dispatcher` chooses how each
    /// projection runs (its options can force cuBLAS or one tile kernel).
    pub fn with_dispatcher(
        rt: Arc<CudaRuntime>,
        file: &EtsFile,
        dispatcher: Dispatcher,
    ) -> Result<CudaEncoder, RuntimeError> {
        let weights = weights::upload(&rt, file)?;
        Ok(CudaEncoder {
            rt,
            config: file.model().clone(),
            weights,
            dispatcher,
            buffers: Mutex::new(None),
            poison: std::sync::atomic::AtomicBool::new(false),
            graphs: std::sync::atomic::AtomicBool::new(true),
            stats: Mutex::new(PassStats::default()),
            qkv_batch: Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// Layers set up to run Q, K and V as one batched GEMM on the current device buffers, in
    /// order: dense f16 Q/K/V from the start, tile weights once a pass ran them batched.
    pub fn batched_qkv_layers(&self) -> Vec<usize> {
        let Ok(guard) = self.buffers.lock() else {
            return Vec::new();
        };
        let Some(b) = guard.as_ref() else {
            return Vec::new();
        };
        (0..self.weights.layers.len())
            .filter(|&li| b.qkv_array(li).is_some())
            .collect()
    }

    /// The device runtime.
    pub fn runtime(&self) -> &Arc<CudaRuntime> {
        &self.rt
    }

    /// The dispatcher's decisions so far (one per projection and token bucket).
    pub fn dispatcher(&self) -> &Dispatcher {
        &self.dispatcher
    }

    /// Bytes on the device for the model: the file's tensor bytes, the tile plans and converted
    /// side buffers, and the f16 copies of bf16 weights (activation buffers not included).
    pub fn model_device_bytes(&self) -> usize {
        self.weights.model.device_bytes() + self.weights.converted_bytes
    }

    /// When on, every activation and output buffer is filled with NaN before each pass, so that
    /// a value a kernel fails to write shows up as NaN instead of a stale result (for tests).
    pub fn set_poison(&self, on: bool) {
        self.poison.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// When on (the default), a batch shape seen before replays a captured CUDA graph of the
    /// forward pass instead of launching each kernel.
    pub fn set_graphs(&self, on: bool) {
        self.graphs.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    fn graphs_on(&self) -> bool {
        self.graphs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Pooled sentence vectors `[batch, hidden_size]`, computed (and, with `normalize`,
    /// L2-normalised) on the device; only the pooled vectors are copied back.
    pub fn embed_with(
        &self,
        batch: &TokenBatch,
        pooling: Pooling,
        normalize: bool,
    ) -> Result<Vec<f32>, RuntimeError> {
        let t0 = Instant::now();
        let (mut guard, p) = self.prepare(batch, self.graphs_on())?;
        let bufs = guard
            .as_mut()
            .ok_or_else(|| CudaError::Invalid("buffers missing after allocation".into()))?;
        let t1 = Instant::now();
        bufs.upload_batch(&self.rt, &p.ids, &p.types, &p.positions, &p.cu)?;
        let t2 = Instant::now();
        let kind = self.run_uploaded(bufs, &p)?;
        let h = self.config.hidden_size as usize;
        let s = p.lengths.len();
        // SAFETY: the buffers are this encoder's, sized for the packed batch by `prepare`; the
        // pool reads the batch's own sequences only.
        unsafe {
            launch::pool(
                &self.rt,
                bufs.x.ptr(),
                bufs.cu(),
                s,
                h,
                pooling == Pooling::Cls,
                normalize,
                bufs.out32.ptr(),
                0,
            )
        }?;
        let t3 = Instant::now();
        self.rt.synchronize()?;
        let t4 = Instant::now();
        let out = self.rt.download::<f32>(&bufs.out32, s * h)?;
        self.record(&p, kind, [t0, t1, t2, t3, t4, Instant::now()]);
        Ok(out)
    }

    /// Adds one pass to the statistics; `t` holds the instants at the start and after prepare,
    /// upload, enqueue, wait and download.
    fn record(&self, p: &Packed, kind: PassKind, t: [Instant; 6]) {
        if let Ok(mut st) = self.stats.lock() {
            st.passes += 1;
            st.count(kind);
            st.prepare += t[1] - t[0];
            st.upload += t[2] - t[1];
            st.enqueue += t[3] - t[2];
            st.wait += t[4] - t[3];
            st.download += t[5] - t[4];
            st.rows += p.tokens() as u64;
            st.real_rows += p.real_tokens as u64;
        }
    }

    /// Host time of the passes so far, by phase.
    pub fn stats(&self) -> PassStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Starts the statistics over.
    pub fn reset_stats(&self) {
        if let Ok(mut s) = self.stats.lock() {
            *s = PassStats::default();
        }
    }

    /// Sizes the device buffers once for batches of up to `max_tokens` tokens in up to
    /// `max_seqs` sequences, then runs one pass on a batch of that size (token id 0), so that
    /// loading the kernels, starting cuBLAS and the dispatcher's decisions for that size happen
    /// before the first real batch. The statistics start over afterwards.
    pub fn warm_up(&self, max_tokens: usize, max_seqs: usize) -> Result<(), RuntimeError> {
        let seqs = max_seqs.clamp(1, max_tokens.max(1));
        let longest = (self.config.max_position_embeddings as usize).max(1);
        let each = max_tokens.max(1).div_ceil(seqs).min(longest);
        let batch = TokenBatch::from_ids(vec![vec![0; each]; seqs]);
        {
            let mut guard = self.lock_buffers()?;
            let (t, s) = packed::padded_capacity(max_tokens.max(each * seqs), seqs);
            if !guard.as_ref().is_some_and(|b| b.fits(t, s)) {
                *guard = None;
                self.rt.synchronize()?;
                *guard = Some(Buffers::new(&self.rt, &self.config, &self.weights, t, s)?);
            }
        }
        self.embed_with(&batch, Pooling::Mean, false)?;
        self.reset_stats();
        Ok(())
    }

    /// Milliseconds per forward pass over `batch` to its pooled (mean) vectors on the device,
    /// measured with CUDA events over `iters` passes after `warmup` untimed ones. The batch's
    /// token arrays are copied to the device once, before the passes; nothing is copied back.
    /// The batch runs at its own shape (not rounded).
    pub fn time_forward(
        &self,
        batch: &TokenBatch,
        warmup: usize,
        iters: usize,
    ) -> Result<f64, RuntimeError> {
        let (mut guard, p) = self.prepare(batch, false)?;
        let bufs = guard
            .as_mut()
            .ok_or_else(|| CudaError::Invalid("buffers missing after allocation".into()))?;
        let h = self.config.hidden_size as usize;
        let s = p.lengths.len();
        bufs.upload_batch(&self.rt, &p.ids, &p.types, &p.positions, &p.cu)?;
        let pass = |bufs: &mut Buffers| -> Result<(), RuntimeError> {
            self.run_uploaded(bufs, &p)?;
            let (x, cu, out) = (bufs.x.ptr(), bufs.cu(), bufs.out32.ptr());
            // SAFETY: the buffers are this encoder's, sized for the packed batch by `prepare`.
            unsafe { launch::pool(&self.rt, x, cu, s, h, false, false, out, 0) }?;
            Ok(())
        };
        for _ in 0..warmup {
            pass(bufs)?;
        }
        self.rt.synchronize()?;
        let timer = self.rt.timer()?;
        for _ in 0..iters.max(1) {
            pass(bufs)?;
        }
        Ok(f64::from(timer.stop_ms()?) / iters.max(1) as f64)
    }

    fn lock_buffers(&self) -> Result<std::sync::MutexGuard<'_, Option<Buffers>>, RuntimeError> {
        Ok(self
            .buffers
            .lock()
            .map_err(|_| CudaError::Invalid("encoder buffer lock poisoned".into()))?)
    }

    /// Checks the batch, packs it (rounded with `round`, see `packed`) and makes the buffers fit
    /// it (poisoned when asked). Bigger buffers take the larger of each dimension seen so far.
    fn prepare(
        &self,
        batch: &TokenBatch,
        round: bool,
    ) -> Result<(std::sync::MutexGuard<'_, Option<Buffers>>, Packed), RuntimeError> {
        check_batch(&self.config, batch)?;
        let p = Packed::new(batch, round)?;
        let mut guard = self.lock_buffers()?;
        let need = (p.tokens(), p.seqs());
        if !guard.as_ref().is_some_and(|b| b.fits(need.0, need.1)) {
            let (t, s) = match guard.as_ref() {
                Some(b) => (b.tokens.max(need.0), b.seqs.max(need.1)),
                None => need,
            };
            *guard = None;
            self.rt.synchronize()?;
            *guard = Some(Buffers::new(&self.rt, &self.config, &self.weights, t, s)?);
            if let Ok(mut st) = self.stats.lock() {
                st.buffer_growths += 1;
            }
        }
        if self.poison.load(std::sync::atomic::Ordering::Relaxed) {
            if let Some(b) = guard.as_mut() {
                b.poison(&self.rt)?;
            }
        }
        Ok((guard, p))
    }
}

impl Encoder for CudaEncoder {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn forward_with(
        &self,
        batch: &TokenBatch,
        options: &ForwardOptions,
    ) -> Result<EncoderOutput, RuntimeError> {
        let t0 = Instant::now();
        let round = self.graphs_on() && !options.output_hidden_states;
        let (mut guard, p) = self.prepare(batch, round)?;
        let bufs = guard
            .as_mut()
            .ok_or_else(|| CudaError::Invalid("buffers missing after allocation".into()))?;
        let t1 = Instant::now();
        bufs.upload_batch(&self.rt, &p.ids, &p.types, &p.positions, &p.cu)?;
        let t2 = Instant::now();
        let mut states = options.output_hidden_states.then(Vec::new);
        let kind = match states.as_mut() {
            Some(st) => {
                self.pass(bufs, &p, Some(st))?;
                PassKind::Eager
            }
            None => self.run_uploaded(bufs, &p)?,
        };
        let (pooler_output, logits) = self.heads(bufs, &p)?;
        let t3 = Instant::now();
        self.rt.synchronize()?;
        let t4 = Instant::now();
        let last_hidden = match states.as_ref().and_then(|s| s.last()) {
            Some(last) => last.clone(),
            None => self.download_hidden(bufs, p.real_tokens)?,
        };
        self.record(&p, kind, [t0, t1, t2, t3, t4, Instant::now()]);
        Ok(EncoderOutput {
            hidden_size: self.config.hidden_size as usize,
            lengths: p.lengths,
            last_hidden,
            hidden_states: states,
            pooler_output,
            logits,
        })
    }

    fn embed(&self, batch: &TokenBatch, pooling: Pooling) -> Result<Vec<f32>, RuntimeError> {
        self.embed_with(batch, pooling, false)
    }

    fn embed_normalized(
        &self,
        batch: &TokenBatch,
        pooling: Pooling,
        normalize: bool,
    ) -> Result<Vec<f32>, RuntimeError> {
        self.embed_with(batch, pooling, normalize)
    }

    fn warm_up(&self, max_tokens: usize, max_seqs: usize) -> Result<(), RuntimeError> {
        CudaEncoder::warm_up(self, max_tokens, max_seqs)
    }

    fn pass_report(&self) -> Option<String> {
        let (measured, time) = self.dispatcher.measuring();
        Some(format_stats(&self.stats(), measured, time))
    }

    fn dispatch_report(&self, batch: &TokenBatch) -> Result<Option<String>, RuntimeError> {
        Ok(Some(report::format_report(&self.report(batch)?)))
    }
}
