//! The encoder's device buffers, sized for a number of tokens and sequences and reused by every
//! batch that fits.

use crate::format::ModelConfig;
use crate::runtime::cuda::{CudaError, CudaRuntime, DevBuf, Scratch};

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
    pub x: DevBuf,
    /// After the attention block's LayerNorm `[tokens, hidden]`.
    pub attn: DevBuf,
    /// Q, K and V `[tokens, max_width]` each.
    pub q: DevBuf,
    pub k: DevBuf,
    pub v: DevBuf,
    /// Attention context `[tokens, max_width]`.
    pub ctx: DevBuf,
    /// A projection's output before its epilogue `[tokens, hidden]`.
    pub proj: DevBuf,
    /// FFN intermediate `[tokens, max_intermediate]`.
    pub inter: DevBuf,
    /// Token ids, token types and positions (u32 per token).
    pub ids: DevBuf,
    pub types: DevBuf,
    pub positions: DevBuf,
    /// Cumulative sequence offsets (i32, seqs + 1).
    pub cu: DevBuf,
    /// `[CLS]` rows and pooler output `[seqs, hidden]`.
    pub cls16: DevBuf,
    pub pooled16: DevBuf,
    /// Classifier logits before their bias `[seqs, labels]`.
    pub logits16: DevBuf,
    /// f32 outputs: pooled vectors or logits `[seqs, max(hidden, labels)]`.
    pub out32: DevBuf,
    /// The linear layer's scratch (kept-rows and kept-columns weights).
    pub scratch: Scratch,
    /// Forward passes captured on these buffers, per batch shape.
    pub graphs: Graphs,
    /// Per layer, the device pointer arrays of its batched Q/K/V GEMM: `[Wq, Wk, Wv]`,
    /// `[x, x, x]`, `[q, k, v]` (9 addresses; zeros for layers without one).
    pub qkv_ptrs: DevBuf,
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
        let f16s = |n: usize| rt.alloc(n * 2);
        let (x, q, k, v) = (
            f16s(tokens * h)?,
            f16s(tokens * w.max_width)?,
            f16s(tokens * w.max_width)?,
            f16s(tokens * w.max_width)?,
        );
        let mut ptrs = Vec::with_capacity(w.layers.len() * 9);
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
            ids: rt.alloc(tokens * 4)?,
            types: rt.alloc(tokens * 4)?,
            positions: rt.alloc(tokens * 4)?,
            cu: rt.alloc((seqs + 1) * 4)?,
            cls16: f16s(seqs * h)?,
            pooled16: f16s(seqs * h)?,
            logits16: f16s(seqs * labels)?,
            out32: rt.alloc(seqs * h.max(labels) * 4)?,
            scratch: Scratch::default(),
            graphs: Graphs::default(),
            qkv_ptrs,
        })
    }

    /// Whether a batch of `tokens` tokens in `seqs` sequences fits.
    pub fn fits(&self, tokens: usize, seqs: usize) -> bool {
        tokens <= self.tokens && seqs <= self.seqs
    }

    /// Fills every activation and output buffer with NaN.
    pub fn poison(&self, rt: &CudaRuntime) -> Result<(), CudaError> {
        for b in [
            &self.x,
            &self.attn,
            &self.q,
            &self.k,
            &self.v,
            &self.ctx,
            &self.proj,
            &self.inter,
            &self.cls16,
            &self.pooled16,
            &self.logits16,
        ] {
            rt.fill_u16(b.ptr(), NAN_F16, b.len() / 2)?;
        }
        rt.fill_u32(self.out32.ptr(), NAN_F32, self.out32.len() / 4)?;
        debug_assert!(self.x.len() >= self.tokens * self.hidden * 2);
        Ok(())
    }

    /// Copies the batch's index arrays to the device (each no longer than the buffers hold).
    pub fn upload_batch(
        &self,
        rt: &CudaRuntime,
        ids: &[u32],
        types: &[u32],
        positions: &[u32],
        cu: &[i32],
    ) -> Result<(), CudaError> {
        let copy = |dst: &DevBuf, bytes: &[u8]| -> Result<(), CudaError> {
            if bytes.len() > dst.len() {
                return Err(CudaError::Invalid(format!(
                    "{} bytes of batch indices for a {}-byte buffer",
                    bytes.len(),
                    dst.len()
                )));
            }
            if bytes.is_empty() {
                return Ok(());
            }
            // SAFETY: dst holds bytes.len() bytes (checked above); the source outlives the copy
            // because the stream is synchronized below before this function returns.
            unsafe { rt.copy_h2d_async(dst.ptr(), bytes.as_ptr(), bytes.len()) }
        };
        rt.bind()?;
        let r = copy(&self.ids, bytemuck::cast_slice(ids))
            .and_then(|_| copy(&self.types, bytemuck::cast_slice(types)))
            .and_then(|_| copy(&self.positions, bytemuck::cast_slice(positions)))
            .and_then(|_| copy(&self.cu, bytemuck::cast_slice(cu)));
        let synced = rt.synchronize();
        r.and(synced)
    }
}
