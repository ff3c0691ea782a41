//! The forward pass: embeddings, every layer, and the pooler and classifier heads, on buffers
//! already sized for the batch.

use crate::runtime::cuda::device::RawPtr;
use crate::runtime::cuda::{
    Choice, CudaError, CudaRuntime, CudaSlice, DeviceModel, Dispatcher, Epilogue, Scratch,
};
use crate::runtime::RuntimeError;

use super::buffers::Buffers;
use super::graph::Plan;
use super::launch::{self, AttentionInput};
use super::stats::PassKind;
use super::weights::{activation_code, Proj};
use super::{f16_to_f32, CudaEncoder, Packed};

/// What follows a projection's product, in the linear layer's epilogue.
#[derive(Clone, Copy, Default)]
pub(crate) struct Fuse<'a> {
    /// Add the projection's bias.
    pub bias: bool,
    /// erf-GELU after the bias.
    pub gelu: bool,
    /// Added last (`m x n` f16).
    pub residual: Option<&'a CudaSlice<u16>>,
}

/// `y = fuse(x p^T)` for `m` rows through the dispatcher (tile kernel or cuBLAS, measured); the
/// bias is the model's tensor. X, Y and the residual are checked by the linear layer.
#[allow(clippy::too_many_arguments)]
pub(crate) fn project(
    rt: &CudaRuntime,
    dispatcher: &Dispatcher,
    model: &DeviceModel,
    p: &Proj,
    x: &CudaSlice<u16>,
    m: usize,
    y: &mut CudaSlice<u16>,
    fuse: Fuse<'_>,
    scratch: &mut Scratch,
) -> Result<Choice, CudaError> {
    let ep = Epilogue {
        bias: if fuse.bias {
            Some(model.f32_values(&p.bias)?)
        } else {
            None
        },
        gelu: fuse.gelu,
        residual: fuse.residual.map(|r| r.as_view()),
    };
    let (x, mut y) = (x.as_view(), y.as_view_mut());
    // SAFETY: the weight points into the model's upload (or a copy owned by `p`), both alive
    // while the encoder is, on this runtime's device; X, Y and the epilogue are typed and
    // checked against the weight's shape by the linear layer.
    unsafe { dispatcher.run_linear(rt, &p.name, &x, m, &p.weight, &ep, &mut y, scratch) }
}

impl CudaEncoder {
    /// The forward pass without hidden states, on the batch already on the device; leaves the
    /// final hidden states in `bufs.x`. A repeated batch shape replays a captured graph (see
    /// `graph`).
    pub(super) fn run_uploaded(
        &self,
        bufs: &mut Buffers,
        p: &Packed,
    ) -> Result<PassKind, RuntimeError> {
        let rt = &*self.rt;
        if !self.graphs_on() {
            return self.pass(bufs, p, None).map(|()| PassKind::Eager);
        }
        let shape = p.shape();
        let mut graphs = std::mem::take(&mut bufs.graphs);
        let r = match graphs.plan(shape) {
            Plan::Replay => graphs
                .replay(rt, shape)
                .map(|()| PassKind::Replayed)
                .map_err(RuntimeError::from),
            Plan::Capture => match graphs.capture(rt, shape, || self.pass(bufs, p, None)) {
                Ok(()) => graphs
                    .replay(rt, shape)
                    .map(|()| PassKind::Captured)
                    .map_err(RuntimeError::from),
                // The shape is marked to run eagerly from now on.
                Err(_) => self.pass(bufs, p, None).map(|()| PassKind::Eager),
            },
            Plan::Eager => self.pass(bufs, p, None).map(|()| PassKind::Eager),
        };
        bufs.graphs = graphs;
        r
    }

    /// The kernels of one forward pass on the batch already on the device; with `states`,
    /// pushes the hidden states after the embeddings and after each layer.
    pub(super) fn pass(
        &self,
        bufs: &mut Buffers,
        p: &Packed,
        mut states: Option<&mut Vec<Vec<f32>>>,
    ) -> Result<(), RuntimeError> {
        let rt = &*self.rt;
        let c = &self.config;
        let h = c.hidden_size as usize;
        let t = p.tokens();
        let eps = c.layer_norm_eps as f32;
        let w = &self.weights;
        // SAFETY: the buffers are this encoder's, sized for the packed batch by `prepare`.
        unsafe {
            launch::embed_ln(
                rt,
                t,
                bufs.ids(),
                bufs.types(),
                bufs.positions(),
                w.tables,
                (w.embeddings_ln.gamma, w.embeddings_ln.beta),
                eps,
                h,
                bufs.x.ptr(),
            )
        }?;
        if let Some(s) = states.as_deref_mut() {
            s.push(self.download_hidden(bufs, t)?);
        }
        for li in 0..w.layers.len() {
            self.layer(bufs, p, li)?;
            if let Some(s) = states.as_deref_mut() {
                s.push(self.download_hidden(bufs, t)?);
            }
        }
        Ok(())
    }

    /// One encoder layer from `bufs.x` back into `bufs.x`.
    fn layer(&self, bufs: &mut Buffers, p: &Packed, li: usize) -> Result<(), RuntimeError> {
        let rt = &*self.rt;
        let d = &self.dispatcher;
        let c = &self.config;
        let h = c.hidden_size as usize;
        let t = p.tokens();
        let eps = c.layer_norm_eps as f32;
        let layer = &self.weights.layers[li];
        let model = &self.weights.model;
        let cu = bufs.cu();
        match (&layer.qkv, &layer.out) {
            (Some([q, ..]), Some(out)) => {
                let bias3 = self.qkv(bufs, li, t)?;
                let input = AttentionInput {
                    q: bufs.q.ptr(),
                    k: bufs.k.ptr(),
                    v: bufs.v.ptr(),
                    ld: q.n,
                    bias: bias3,
                };
                let (seqs, dh) = (p.seqs(), c.head_dim as usize);
                let ctx = bufs.ctx.ptr();
                // SAFETY: Q, K, V and ctx were sized for this batch (Buffers::fits) with row
                // stride q.n, and `cu` was built from its checked lengths.
                unsafe {
                    launch::attention(rt, &input, cu, seqs, p.max_len, layer.heads, dh, ctx)?
                };
                let fuse = Fuse {
                    bias: true,
                    gelu: false,
                    residual: Some(&bufs.x),
                };
                project(
                    rt,
                    d,
                    model,
                    out,
                    &bufs.ctx,
                    t,
                    &mut bufs.proj,
                    fuse,
                    &mut bufs.scratch,
                )?;
                // proj = ctx Wo^T + bo + x, so the LayerNorm adds nothing.
                let ln = (layer.ln1.gamma, layer.ln1.beta);
                // SAFETY: the buffers are this encoder's, sized for the packed batch by `prepare`.
                unsafe {
                    launch::bias_residual_ln(
                        rt,
                        t,
                        0,
                        0,
                        bufs.proj.ptr(),
                        ln,
                        eps,
                        h,
                        bufs.attn.ptr(),
                    )
                }?;
            }
            // Every head pruned: the attention block adds only its output bias.
            _ => {
                let ln = (layer.ln1.gamma, layer.ln1.beta);
                let (x, attn) = (bufs.x.ptr(), bufs.attn.ptr());
                // SAFETY: the buffers are this encoder's, sized for the packed batch by `prepare`.
                unsafe { launch::bias_residual_ln(rt, t, 0, layer.out_bias, x, ln, eps, h, attn) }?;
            }
        }
        let act = activation_code(c.activation);
        let ffn = &layer.intermediate;
        let gelu = act == activation_code(crate::format::Activation::Gelu);
        let fuse = Fuse {
            bias: true,
            gelu,
            residual: None,
        };
        project(
            rt,
            d,
            model,
            ffn,
            &bufs.attn,
            t,
            &mut bufs.inter,
            fuse,
            &mut bufs.scratch,
        )?;
        if !gelu {
            // SAFETY: the buffers are this encoder's, sized for the packed batch by `prepare`.
            unsafe { launch::bias_act(rt, bufs.inter.ptr(), 0, t, ffn.n, act) }?;
        }
        let fuse = Fuse {
            bias: true,
            gelu: false,
            residual: Some(&bufs.attn),
        };
        project(
            rt,
            d,
            model,
            &layer.ffn_out,
            &bufs.inter,
            t,
            &mut bufs.proj,
            fuse,
            &mut bufs.scratch,
        )?;
        let ln = (layer.ln2.gamma, layer.ln2.beta);
        // SAFETY: the buffers are this encoder's, sized for the packed batch by `prepare`.
        unsafe {
            launch::bias_residual_ln(rt, t, 0, 0, bufs.proj.ptr(), ln, eps, h, bufs.x.ptr())
        }?;
        Ok(())
    }

    pub(super) fn download_hidden(
        &self,
        bufs: &Buffers,
        tokens: usize,
    ) -> Result<Vec<f32>, RuntimeError> {
        let h = self.config.hidden_size as usize;
        let bits = self.rt.download::<u16>(&bufs.x, tokens * h)?;
        Ok(f16_to_f32(&bits))
    }

    /// Pooler (`tanh`) and classifier on the `[CLS]` rows, as the CPU runtime computes them.
    #[allow(clippy::type_complexity)]
    pub(super) fn heads(
        &self,
        bufs: &mut Buffers,
        p: &Packed,
    ) -> Result<(Option<Vec<f32>>, Option<Vec<f32>>), RuntimeError> {
        let w = &self.weights;
        if w.pooler.is_none() && w.classifier.is_none() {
            return Ok((None, None));
        }
        let rt = &*self.rt;
        let d = &self.dispatcher;
        let h = self.config.hidden_size as usize;
        let s = p.lengths.len();
        let (x, cu, cls) = (bufs.x.ptr(), bufs.cu(), bufs.cls16.ptr());
        // SAFETY: the buffers are this encoder's, sized for the packed batch by `prepare`.
        unsafe { launch::pool(rt, x, cu, s, h, true, false, 0, cls) }?;
        let bias = Fuse {
            bias: true,
            ..Fuse::default()
        };
        let model = &w.model;
        let sc = &mut bufs.scratch;
        let pooled = match &w.pooler {
            Some(pl) => {
                project(
                    rt,
                    d,
                    model,
                    pl,
                    &bufs.cls16,
                    s,
                    &mut bufs.pooled16,
                    bias,
                    sc,
                )?;
                let tanh = 4;
                // SAFETY: the buffers are this encoder's, sized for the packed batch by `prepare`.
                unsafe { launch::bias_act(rt, bufs.pooled16.ptr(), 0, s, h, tanh) }?;
                Some(f16_to_f32(&rt.download::<u16>(&bufs.pooled16, s * h)?))
            }
            None => None,
        };
        let head_in = if w.pooler.is_some() {
            &bufs.pooled16
        } else {
            &bufs.cls16
        };
        let logits = match &w.classifier {
            Some(cl) => {
                project(rt, d, model, cl, head_in, s, &mut bufs.logits16, bias, sc)?;
                let (l16, out) = (bufs.logits16.ptr(), bufs.out32.ptr());
                // SAFETY: the buffers are this encoder's, sized for the packed batch by `prepare`.
                unsafe { launch::bias_to_f32(rt, l16, 0, s, cl.n, out) }?;
                Some(rt.download::<f32>(&bufs.out32, s * cl.n)?)
            }
            None => None,
        };
        Ok((pooled, logits))
    }
}
