//! The encoder's device buffers, sized for a number of tokens and sequences and reused by every
//! batch that fits.

use crate::format::ModelConfig;
use crate::runtime::cuda::device::RawPtr;
use crate::runtime::cuda::{CudaError, CudaRuntime, CudaSlice, Scratch};

use super::graph::Graphs;
use super::weights::DevWeights;

/// A quiet NaN in f16.
const NAN_F16: u16 = 0x7e00;
/// A quiet NaN in f32.
const NAN_F32: u32 = 0x7fc0_0000;

/// Activations (f16 unless stated) and the batch's index arrays.
pub(crate) struct Buffers {
    /// Tokens the buffers hold.
    pub tokens: usize,
    /// Sequences the buffers hold.
    pub seqs: usize,
    hidden: usize,
    /// Layer input and output `[tokens, hidden]`.
    pub x: CudaSlice<u16>,
    /// After the attention block's LayerNorm `[tokens, hidden]`.
    pub attn: CudaSlice<u16>,
    /// Q, K and V `[tokens, max_width]` each.
    pub q: CudaSlice<u16>,
    pub k: CudaSlice<u16>,
    pub v: CudaSlice<u16>,
    /// Attention context `[tokens, max_width]`.
    pub ctx: CudaSlice<u16>,
    /// A projection's output before its epilogue `[tokens, hidden]`.
    pub proj: CudaSlice<u16>,
    /// FFN intermediate `[tokens, max_intermediate]`.
    pub inter: CudaSlice<u16>,
    /// The batch's index arrays in one allocation, copied in one transfer: token ids, token
    /// types and positions (`tokens` u32 each), then the cumulative sequence offsets (`seqs + 1`
    /// i32).
    index: CudaSlice<u32>,
    /// The host side of `index`, reused by every batch.
    staging: Vec<u32>,
    /// `[CLS]` rows and pooler output `[seqs, hidden]`.
    pub cls16: CudaSlice<u16>,
    pub pooled16: CudaSlice<u16>,
    /// Classifier logits before their bias `[seqs, labels]`.
    pub logits16: CudaSlice<u16>,
    /// f32 outputs: pooled vectors or logits `[seqs, max(hidden, labels)]`.
    pub out32: CudaSlice<f32>,
    /// The linear layer's scratch (kept-rows and kept-columns weights).
    pub scratch: Scratch,
    /// Forward passes captured on these buffers, per batch shape.
    pub graphs: Graphs,
    /// Per layer, the device pointer arrays of its batched Q/K/V GEMM: `[Wq, Wk, Wv]`,
    /// `[x, x, x]`, `[q, k, v]` (9 addresses; zeros for layers without one yet).
    pub qkv_ptrs: CudaSlice<u64>,
    /// Per layer, whether its array in `qkv_ptrs` is written (from the start for dense Q/K/V;
    /// for tile weights once their dense copies exist, see [`Buffers::set_qkv_weights`]).
    qkv_ready: Vec<bool>,
}

impl Buffers {
    /// Buffers for up to `tokens` tokens in up to `seqs` sequences.
    pub fn new(
        rt: &CudaRuntime,
        c: &ModelConfig,
        w: &DevWeights,
        tokens: usize,
        seqs: usize,
    ) -> Result<Buffers, CudaError> {
        let h = c.hidden_size as usize;
        let labels = w.classifier.as_ref().map_or(0, |l| l.n);
        let f16s = |n: usize| rt.alloc::<u16>(n);
        let (x, q, k, v) = (
            f16s(tokens * h)?,
            f16s(tokens * w.max_width)?,
            f16s(tokens * w.max_width)?,
            f16s(tokens * w.max_width)?,
        );
        let mut ptrs = Vec::with_capacity(w.layers.len() * 9);
        let qkv_ready = w.layers.iter().map(|l| l.qkv_dense.is_some()).collect();
        for l in &w.layers {
            match l.qkv_dense {
                Some(ws) => {
                    ptrs.extend(ws);
                    ptrs.extend([x.ptr(); 3]);
                    ptrs.extend([q.ptr(), k.ptr(), v.ptr()]);
                }
                None => ptrs.extend([0u64; 9]),
            }
        }
        let qkv_ptrs = rt.upload(&ptrs)?;
        Ok(Buffers {
            tokens,
            seqs,
            hidden: h,
            x,
            attn: f16s(tokens * h)?,
            q,
            k,
            v,
            ctx: f16s(tokens * w.max_width)?,
            proj: f16s(tokens * h)?,
            inter: f16s(tokens * w.max_intermediate)?,
            index: rt.alloc(3 * tokens + seqs + 1)?,
            staging: vec![0; 3 * tokens + seqs + 1],
            cls16: f16s(seqs * h)?,
            pooled16: f16s(seqs * h)?,
            logits16: f16s(seqs * labels)?,
            out32: rt.alloc(seqs * h.max(labels))?,
            scratch: Scratch::default(),
            graphs: Graphs::default(),
            qkv_ptrs,
            qkv_ready,
        })
    }

    /// Device address of layer `li`'s pointer array for the batched Q/K/V GEMM, when written.
    pub fn qkv_array(&self, li: usize) -> Option<u64> {
        self.qkv_ready
            .get(li)
            .copied()
            .unwrap_or(false)
            .then(|| self.qkv_ptrs.ptr() + (li * 9 * 8) as u64)
    }

    /// Writes layer `li`'s pointer array for the batched Q/K/V GEMM with the dense f16 weights
    /// `ws` (each `[width, hidden]`, alive as long as these buffers) and this buffer set's x, q, k
    /// and v. The copy comes from host memory, so it is made outside a graph capture.
    pub fn set_qkv_weights(
        &mut self,
        rt: &CudaRuntime,
        li: usize,
        ws: [u64; 3],
    ) -> Result<u64, CudaError> {
        let slot = li * 9;
        if slot + 9 > self.qkv_ptrs.len() || li >= self.qkv_ready.len() {
            return Err(CudaError::Invalid(format!(
                "no batched Q/K/V slot for layer {li}"
            )));
        }
        let x = self.x.ptr();
        let ptrs = [
            ws[0],
            ws[1],
            ws[2],
            x,
            x,
            x,
            self.q.ptr(),
            self.k.ptr(),
            self.v.ptr(),
        ];
        rt.copy_to_device(&ptrs, &mut self.qkv_ptrs.slice_mut(slot..slot + 9))?;
        self.qkv_ready[li] = true;
        Ok(self.qkv_ptrs.ptr() + (slot * 8) as u64)
    }

    /// Whether a batch of `tokens` tokens in `seqs` sequences fits.
    pub fn fits(&self, tokens: usize, seqs: usize) -> bool {
        tokens <= self.tokens && seqs <= self.seqs
    }

    /// Fills every activation and output buffer with NaN.
    pub fn poison(&mut self, rt: &CudaRuntime) -> Result<(), CudaError> {
        for b in [
            &mut self.x,
            &mut self.attn,
            &mut self.q,
            &mut self.k,
            &mut self.v,
            &mut self.ctx,
            &mut self.proj,
            &mut self.inter,
            &mut self.cls16,
            &mut self.pooled16,
            &mut self.logits16,
        ] {
            rt.fill_u16(b, NAN_F16)?;
        }
        // SAFETY: f32 and u32 have the same size; the buffer is filled with NaN's bit pattern.
        let mut out = unsafe { self.out32.transmute_mut::<u32>(self.out32.len()) }
            .ok_or_else(|| CudaError::Invalid("f32 output buffer as u32".into()))?;
        rt.fill_u32(&mut out, NAN_F32)?;
        debug_assert!(self.x.len() >= self.tokens * self.hidden);
        Ok(())
    }

    /// Device address of the token ids (`tokens` u32).
    pub fn ids(&self) -> u64 {
        self.index.ptr()
    }
    /// Device address of the token types (`tokens` u32).
    pub fn types(&self) -> u64 {
        self.index.ptr() + 4 * self.tokens as u64
    }
    /// Device address of the positions (`tokens` u32).
    pub fn positions(&self) -> u64 {
        self.index.ptr() + 8 * self.tokens as u64
    }
    /// Device address of the cumulative sequence offsets (`seqs + 1` i32).
    pub fn cu(&self) -> u64 {
        self.index.ptr() + 12 * self.tokens as u64
    }

    /// Copies the batch's index arrays to the device in one transfer (each no longer than the
    /// buffers hold).
    pub fn upload_batch(
        &mut self,
        rt: &CudaRuntime,
        ids: &[u32],
        types: &[u32],
        positions: &[u32],
        cu: &[i32],
    ) -> Result<(), CudaError> {
        let t = self.tokens;
        if ids.len() > t || types.len() > t || positions.len() > t || cu.len() > self.seqs + 1 {
            return Err(CudaError::Invalid(format!(
                "a batch of {} tokens in {} sequences does not fit buffers of {t} tokens in {}",
                ids.len(),
                cu.len().saturating_sub(1),
                self.seqs
            )));
        }
        let st = &mut self.staging;
        st[..ids.len()].copy_from_slice(ids);
        st[t..t + types.len()].copy_from_slice(types);
        st[2 * t..2 * t + positions.len()].copy_from_slice(positions);
        for (d, &c) in st[3 * t..].iter_mut().zip(cu) {
            // The kernels read the offsets as i32; non-negative by construction.
            *d = c as u32;
        }
        let used = 3 * t + cu.len();
        rt.copy_to_device(&st[..used], &mut self.index)
    }
}
