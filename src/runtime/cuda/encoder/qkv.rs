//! A layer's Q, K and V: three projections through the dispatcher, or one batched cuBLAS GEMM on
//! dense f16 matrices with the biases left to the attention kernel (one launch instead of three
//! products and their epilogues).
//!
//! A layer batches when its Q, K and V are one shape in f16 ([`super::weights::qkv_batchable`])
//! and either every tile weight among them runs on cuBLAS at the token count (then on the
//! dispatcher's dense copies, exactly as a dense file), or, when the dispatcher chose tile kernels,
//! the batched GEMM on dense copies was measured faster than the three projections' measured
//! times together. That measurement is made once per layer and token bucket, outside a graph
//! capture; the dense copies are kept only when the batched GEMM wins.

use std::time::Instant;

use crate::runtime::cuda::device::addr;
use crate::runtime::cuda::dispatch::{FULL_BATCHES, FULL_CALLS};
use crate::runtime::cuda::gemm::densify;
use crate::runtime::cuda::{median_ms, Choice, DispatchEntry, LinearWeight};
use crate::runtime::RuntimeError;

use super::buffers::Buffers;
use super::forward::{project, Fuse};
use super::weights::Proj;
use super::{launch, CudaEncoder};

/// The three projections' time as the dispatcher measured it: each tile weight's chosen
/// implementation (tile kernel or cuBLAS with its epilogue). None when a time is unknown (a
/// decision forced by the options, or a weight stored dense).
pub(crate) fn separate_ms(entries: &[DispatchEntry]) -> Option<f64> {
    entries
        .iter()
        .map(|e| match e.choice {
            Choice::Tile => e.tile_ms,
            Choice::Cublas => e.dense_ms,
        })
        .sum()
}

impl CudaEncoder {
    /// Q, K and V of layer `li` (which has heads) from `bufs.x` into `bufs.q`, `bufs.k` and
    /// `bufs.v` for `t` rows; returns the biases the attention kernel adds (zeros when the
    /// projections added them).
    pub(super) fn qkv(
        &self,
        bufs: &mut Buffers,
        li: usize,
        t: usize,
    ) -> Result<[u64; 3], RuntimeError> {
        let rt = &*self.rt;
        let model = &self.weights.model;
        let Some([q, k, v]) = &self.weights.layers[li].qkv else {
            return Ok([0; 3]);
        };
        if let Some(ptrs) = self.qkv_array(bufs, li, t)? {
            // SAFETY: the array holds layer li's dense f16 Q/K/V weights ([width, hidden], alive
            // as long as the model and the dispatcher), bufs.x and bufs.q/k/v, which hold at
            // least t rows (the buffers fit the batch).
            unsafe { launch::gemm3(rt, ptrs, t, q.n, q.k)? };
            let b = |p: &Proj| model.f32_values(&p.bias).map(|v| addr(&v));
            return Ok([b(q)?, b(k)?, b(v)?]);
        }
        let bias = Fuse {
            bias: true,
            ..Fuse::default()
        };
        let (d, sc) = (&self.dispatcher, &mut bufs.scratch);
        project(rt, d, model, q, &bufs.x, t, &mut bufs.q, bias, sc)?;
        project(rt, d, model, k, &bufs.x, t, &mut bufs.k, bias, sc)?;
        project(rt, d, model, v, &bufs.x, t, &mut bufs.v, bias, sc)?;
        Ok([0; 3])
    }

    /// Layer `li`'s pointer array for one batched Q/K/V GEMM at `t` rows, or None when it runs
    /// three projections ([`Self::qkv_batched_weights`] decides). The array is written in the
    /// first pass that batches it, which is eager: a shape is captured only after an eager pass
    /// of the same shape on the same buffers (see `graph`). Should a capture meet an unwritten
    /// array all the same, the layer runs three projections in that graph, which is correct too.
    fn qkv_array(
        &self,
        bufs: &mut Buffers,
        li: usize,
        t: usize,
    ) -> Result<Option<u64>, RuntimeError> {
        let Some(ws) = self.qkv_batched_weights(li, t)? else {
            return Ok(None);
        };
        if let Some(at) = bufs.qkv_array(li) {
            return Ok(Some(at));
        }
        if self.rt.capturing()? {
            return Ok(None);
        }
        Ok(Some(bufs.set_qkv_weights(&self.rt, li, ws)?))
    }

    /// The dense f16 matrices of layer `li`'s Q, K and V when the layer runs them as one batched
    /// GEMM at `t` rows (see the module's rule), else None. A tile weight's matrix is the
    /// dispatcher's dense copy, made here when missing. Every tile weight is decided before any
    /// copy is made, so a layer that keeps its tile kernels costs no dense copy.
    pub(super) fn qkv_batched_weights(
        &self,
        li: usize,
        t: usize,
    ) -> Result<Option<[u64; 3]>, RuntimeError> {
        let layer = &self.weights.layers[li];
        if let Some(ws) = layer.qkv_dense {
            return Ok(Some(ws));
        }
        let (true, Some(ps)) = (layer.qkv_batchable, &layer.qkv) else {
            return Ok(None);
        };
        let (rt, d) = (&*self.rt, &self.dispatcher);
        let mut entries = Vec::with_capacity(3);
        for p in ps {
            if let LinearWeight::Tile(_) = p.weight {
                // SAFETY: the weight points into the model's upload, alive while the encoder is.
                entries.push(unsafe { d.decide(rt, &p.name, &p.weight, t)? });
            }
        }
        if entries.iter().any(|e| e.choice != Choice::Cublas) {
            return self.qkv_measured(li, t, &entries);
        }
        let mut ws = [0u64; 3];
        for (w, p) in ws.iter_mut().zip(ps) {
            *w = match p.weight {
                LinearWeight::Dense { w, .. } => w,
                // SAFETY: as above; `v` is the weight called `p.name`.
                LinearWeight::Tile(v) => unsafe { d.dense_copy(rt, &p.name, &v)? },
                LinearWeight::Rows { .. } | LinearWeight::Cols { .. } => return Ok(None),
            };
        }
        Ok(Some(ws))
    }

    /// For layer `li` whose tile weights (`entries`, their decisions at `t` rows) include a tile
    /// kernel: the dense matrices when the batched GEMM was measured faster than the three
    /// projections, else None. Measures on first sight of the layer and token bucket, never
    /// during a graph capture (then None).
    fn qkv_measured(
        &self,
        li: usize,
        t: usize,
        entries: &[DispatchEntry],
    ) -> Result<Option<[u64; 3]>, RuntimeError> {
        let Some(ps) = &self.weights.layers[li].qkv else {
            return Ok(None);
        };
        let all_tile = ps.iter().all(|p| matches!(p.weight, LinearWeight::Tile(_)));
        let Some(separate) = separate_ms(entries).filter(|_| all_tile && entries.len() == 3) else {
            return Ok(None);
        };
        let bucket = t.max(1).next_power_of_two();
        let poisoned = || crate::runtime::cuda::CudaError::Invalid("Q/K/V lock poisoned".into());
        let known = self
            .qkv_batch
            .lock()
            .map_err(|_| poisoned())?
            .get(&(li, bucket))
            .copied();
        let (rt, d) = (&*self.rt, &self.dispatcher);
        match known {
            Some(false) => return Ok(None),
            Some(true) => {
                let mut ws = [0u64; 3];
                for (w, p) in ws.iter_mut().zip(ps) {
                    if let LinearWeight::Tile(v) = p.weight {
                        // SAFETY: the weight points into the model's upload, alive while the
                        // encoder is; `v` is the weight called `p.name`.
                        *w = unsafe { d.dense_copy(rt, &p.name, &v)? };
                    }
                }
                return Ok(Some(ws));
            }
            None if rt.capturing()? => return Ok(None),
            None => {}
        }
        let t0 = Instant::now();
        // The dense copies the dispatcher holds, else temporary ones.
        let mut ws = [0u64; 3];
        let mut made = Vec::new();
        for (i, p) in ps.iter().enumerate() {
            let LinearWeight::Tile(v) = p.weight else {
                return Ok(None);
            };
            ws[i] = match d.held_dense(&p.name)? {
                Some(a) => a,
                None => {
                    // SAFETY: the weight points into the model's upload, alive while the encoder is.
                    let copy = unsafe { densify(rt, &v)? };
                    let a = addr(&copy);
                    made.push((i, copy));
                    a
                }
            };
        }
        let (n, k) = (ps[0].n, ps[0].k);
        let batched = d.with_timing_buffers(rt, bucket * k, 3 * bucket * n, |xa, ya| {
            let step = (2 * bucket * n) as u64;
            let arr = rt.upload(&[
                ws[0],
                ws[1],
                ws[2],
                xa,
                xa,
                xa,
                ya,
                ya + step,
                ya + 2 * step,
            ])?;
            // SAFETY: arr holds three dense n x k f16 matrices (held by the dispatcher or
            // `made`, alive past the timing's last synchronisation), X of bucket x k and three
            // Y of bucket x n f16 values (the timing buffers, held for this closure).
            median_ms(rt, FULL_BATCHES, FULL_CALLS, || unsafe {
                launch::gemm3(rt, addr(&arr), bucket, n, k)
            })
        })?;
        let batch = batched < separate;
        if batch {
            for (i, copy) in made {
                ws[i] = d.keep_dense(&ps[i].name, copy)?;
            }
        }
        self.qkv_batch
            .lock()
            .map_err(|_| poisoned())?
            .insert((li, bucket), batch);
        d.count_measurement(t0.elapsed());
        Ok(batch.then_some(ws))
    }
}

#[cfg(test)]
mod tests {
    use super::separate_ms;
    use crate::runtime::cuda::{Choice, DispatchEntry, TileKernel};

    fn entry(choice: Choice, tile_ms: Option<f64>, dense_ms: Option<f64>) -> DispatchEntry {
        DispatchEntry {
            name: "w".into(),
            n: 768,
            k: 768,
            tokens: 128,
            density: 0.5,
            choice,
            reason: "measured".into(),
            tile_ms,
            dense_ms,
            kernel: Some(TileKernel::Sk),
        }
    }

    #[test]
    fn three_projections_cost_each_chosen_implementation() {
        let tile = entry(Choice::Tile, Some(0.010), Some(0.012));
        let cublas = entry(Choice::Cublas, Some(0.015), Some(0.011));
        let t = separate_ms(&[tile.clone(), cublas.clone(), tile.clone()]).unwrap();
        assert!((t - 0.031).abs() < 1e-12, "{t}");
        // A forced decision has no time: nothing to compare with.
        let forced = entry(Choice::Tile, None, None);
        assert_eq!(separate_ms(&[tile, forced, cublas]), None);
    }
}
