//! Finds the BERT structure in an ONNX graph whose weights have anonymous names.
//!
//! Exporters name weights `onnx::MatMul_481` or `val_49`, so names are not used at all: the
//! embedding tables are the constant tables of `Gather` nodes, a layer starts at the three linear
//! layers reading the hidden state (two of them meet in the attention-score `MatMul`: query and
//! key; the third feeds the context `MatMul`: value), and so on, walking the graph in order.

use std::collections::{HashMap, HashSet, VecDeque};

use super::expr::Expr;
use super::graph::{Graph, LayerNorm, Linear};
use crate::format::names::{self, LayerTensor};
use crate::format::{Activation, ModelConfig};
use crate::ingest::IngestError;

/// How a stored value becomes the canonical tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Post {
    /// As stored.
    Keep,
    /// 2-D transpose (`[in, out]` to `[out, in]`).
    Transpose,
    /// All leading size-1 axes dropped (`[1, S, H]` to `[S, H]`, `[1, H]` to `[H]`).
    DropLeading,
    /// The first row of the last two axes, as `[1, H]`.
    FirstRow,
}

/// One canonical tensor: a constant expression (or zeros) and the step to canonical layout.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub expr: Option<Expr>,
    pub post: Post,
    pub shape: Vec<usize>,
}

/// The result of the analysis.
pub(crate) struct Plan {
    pub config: ModelConfig,
    pub entries: Vec<(String, Entry)>,
}

struct Walker<'g, 'a> {
    gr: &'g Graph<'a>,
    linears: Vec<Linear>,
    lns: Vec<LayerNorm>,
    ln_at: HashMap<String, usize>,
    linear_nodes: HashSet<usize>,
}

impl Walker<'_, '_> {
    fn not_bert(&self, at: &str, reason: impl Into<String>) -> IngestError {
        IngestError::NotBert {
            path: self.gr.ctx.path.clone(),
            at: at.to_string(),
            reason: reason.into(),
        }
    }

    fn node_name(&self, i: usize) -> String {
        let n = self.gr.node(i);
        format!("node {} ({})", n.name, n.op_type)
    }

    fn from(&self, h: &str) -> Vec<&Linear> {
        let c = self.gr.canon(h);
        self.linears
            .iter()
            .filter(|l| self.gr.canon(&l.input) == c)
            .collect()
    }

    /// Breadth-first over consumers of `start`, passing only through ops in `through`.
    fn forward(&self, start: &str, through: &[&str], mut visit: impl FnMut(usize, &str) -> bool) {
        let mut queue = VecDeque::from([start.to_string()]);
        let mut seen = HashSet::new();
        while let Some(t) = queue.pop_front() {
            if !seen.insert(t.clone()) || seen.len() > 64 {
                continue;
            }
            for &c in self.gr.consumers_of(&t) {
                if visit(c, &t) {
                    return;
                }
                let n = self.gr.node(c);
                if through.contains(&n.op_type.as_str()) && !self.linear_nodes.contains(&c) {
                    queue.extend(n.output.iter().cloned());
                }
            }
        }
    }

    /// The non-constant `MatMul` that `out` reaches through reshapes and scalings, with the slot.
    fn attention_matmul(&self, out: &str) -> Option<(usize, usize)> {
        let mut found = None;
        let through = [
            "Reshape",
            "Transpose",
            "Unsqueeze",
            "Squeeze",
            "Identity",
            "Cast",
            "Mul",
            "Div",
        ];
        self.forward(out, &through, |c, t| {
            let n = self.gr.node(c);
            if n.op_type == "MatMul" && !self.linear_nodes.contains(&c) {
                found = n.input.iter().position(|x| x == t).map(|k| (c, k));
                return true;
            }
            false
        });
        found
    }

    /// Heads from the `[batch, seq, heads, head_dim]` reshape after a projection.
    fn heads_of(&self, out: &str, width: usize) -> Option<usize> {
        let mut heads = None;
        // Reshapes that are not 4-D (2-D Gemm outputs back to 3-D) are passed through.
        let through = ["Add", "Identity", "Cast", "Reshape"];
        self.forward(out, &through, |c, _| {
            let n = self.gr.node(c);
            if n.op_type != "Reshape" {
                return false;
            }
            let tail = n.input.get(1).and_then(|s| self.shape_values(s));
            if let Some([.., a, b]) = tail.as_deref() {
                let h = match (a, b) {
                    (Some(h), _) if *h > 0 => Some(*h as usize),
                    (_, Some(d)) if *d > 0 && width % (*d as usize) == 0 => {
                        Some(width / *d as usize)
                    }
                    _ => None,
                };
                if tail.as_ref().is_some_and(|t| t.len() == 4) {
                    heads = h;
                    return true;
                }
            }
            false
        });
        heads
    }

    /// A shape vector: constant, or a `Concat` of constant and computed pieces (`None`).
    fn shape_values(&self, t: &str) -> Option<Vec<Option<i64>>> {
        if let Some(v) = self.gr.const_value(t) {
            return Some(v.data.iter().map(|&x| Some(x as i64)).collect());
        }
        let n = self.gr.producer_of(t)?;
        if n.op_type != "Concat" {
            return None;
        }
        let mut out = Vec::new();
        for x in &n.input {
            match self.gr.const_value(x) {
                Some(v) => out.extend(v.data.iter().map(|&x| Some(x as i64))),
                None => out.push(None),
            }
        }
        Some(out)
    }

    /// Tells query, key and value apart among the three projections reading `h`: query and key
    /// meet in the score `MatMul` (slots 0 and 1), value feeds the context `MatMul` (slot 1).
    fn qkv_roles<'l>(
        &self,
        qkv: &[&'l Linear],
        h: &str,
        layer: usize,
    ) -> Result<(&'l Linear, &'l Linear, &'l Linear, usize), IngestError> {
        let reach: Vec<Option<(usize, usize)>> = qkv
            .iter()
            .map(|l| self.attention_matmul(&l.output))
            .collect();
        let pick = |m: Option<usize>, slot: usize| -> Option<usize> {
            (0..3).find(|&k| reach[k].is_some_and(|(n, s)| s == slot && m.map_or(true, |m| m == n)))
        };
        let k_idx = pick(None, 1)
            .filter(|&k| reach[k].is_some_and(|(n, _)| (0..3).any(|j| reach[j] == Some((n, 0)))));
        let Some(k_idx) = k_idx else {
            return Err(self.not_bert(
                &self.node_name(qkv[0].node),
                format!("layer {layer}: no attention-score MatMul joining query and key"),
            ));
        };
        let scores = reach[k_idx].map(|(n, _)| n);
        let q_idx = pick(scores, 0).ok_or_else(|| self.not_bert(h, "no query projection"))?;
        let v_idx = (0..3)
            .find(|&k| k != q_idx && k != k_idx)
            .ok_or_else(|| self.not_bert(h, "no value projection"))?;
        let v = qkv[v_idx];
        let Some((ctx_mm, 1)) = reach[v_idx] else {
            return Err(self.not_bert(
                &self.node_name(v.node),
                "the value projection does not feed the context MatMul",
            ));
        };
        Ok((qkv[q_idx], qkv[k_idx], v, ctx_mm))
    }

    /// The LayerNorm that `out` reaches through the residual `Add`; checks the residual source.
    fn ln_after(&self, out: &str, residual: &str) -> Result<&LayerNorm, IngestError> {
        if let Some(&k) = self.ln_at.get(out) {
            return self
                .lns
                .get(k)
                .ok_or_else(|| self.not_bert(out, "LayerNorm index"));
        }
        let res = self.gr.canon(residual);
        let mut found = None;
        let mut has_residual = false;
        let through = ["Add", "Reshape", "Identity", "Cast", "Squeeze", "Unsqueeze"];
        self.forward(out, &through, |c, t| {
            let n = self.gr.node(c);
            if n.op_type == "Add" && n.input.iter().any(|x| x != t && self.gr.canon(x) == res) {
                has_residual = true;
            }
            if let Some(o) = n.output.first() {
                if let Some(&k) = self.ln_at.get(o) {
                    found = Some(k);
                    return true;
                }
            }
            false
        });
        match found.and_then(|k| self.lns.get(k)) {
            Some(ln) if has_residual => Ok(ln),
            Some(ln) => Err(self.not_bert(
                &self.node_name(ln.node),
                "no residual Add from the layer input before this LayerNorm",
            )),
            None => Err(self.not_bert(out, "no LayerNorm after this projection")),
        }
    }
}

fn linear_entries(l: &Linear, w: String, b: String, out: &mut Vec<(String, Entry)>) {
    out.push((
        w,
        Entry {
            expr: Some(l.weight.clone()),
            post: if l.in_out {
                Post::Transpose
            } else {
                Post::Keep
            },
            shape: vec![l.out_features, l.in_features],
        },
    ));
    out.push((
        b,
        Entry {
            expr: l.bias.clone(),
            post: Post::DropLeading,
            shape: vec![l.out_features],
        },
    ));
}

fn ln_entries(ln: &LayerNorm, h: usize, w: String, b: String, out: &mut Vec<(String, Entry)>) {
    out.push((
        w,
        Entry {
            expr: Some(ln.gamma.clone()),
            post: Post::DropLeading,
            shape: vec![h],
        },
    ));
    out.push((
        b,
        Entry {
            expr: ln.beta.clone(),
            post: Post::DropLeading,
            shape: vec![h],
        },
    ));
}

/// Finds embeddings, layers, pooler and classifier; returns the configuration and tensor plan.
pub(crate) fn analyse(gr: &Graph) -> Result<Plan, IngestError> {
    let linears = gr.linears()?;
    let lns = gr.layer_norms()?;
    let w = Walker {
        gr,
        ln_at: lns
            .iter()
            .enumerate()
            .map(|(k, l)| (l.input.clone(), k))
            .collect(),
        linear_nodes: linears.iter().map(|l| l.node).collect(),
        linears,
        lns,
    };
    let mut entries = Vec::new();
    let emb = super::embed::embeddings(gr, &w.ln_at)?;
    let hidden = emb.hidden;
    let emb_ln = w
        .lns
        .get(emb.ln)
        .ok_or_else(|| w.not_bert("embeddings", "no LayerNorm"))?;
    entries.extend(emb.entries);
    ln_entries(
        emb_ln,
        hidden,
        names::EMBEDDINGS_LN_WEIGHT.into(),
        names::EMBEDDINGS_LN_BIAS.into(),
        &mut entries,
    );

    let mut h = emb_ln.output.clone();
    let mut heads_all: Vec<u32> = Vec::new();
    let (mut ffn, mut activation) = (0usize, None);
    loop {
        let layer = heads_all.len();
        let qkv = w.from(&h);
        if qkv.is_empty() && layer > 0 {
            break;
        }
        if qkv.len() != 3 {
            return Err(w.not_bert(&h, format!("expected the 3 attention projections of layer {layer} to read this tensor, found {}", qkv.len())));
        }
        let (q, k, v, ctx_mm) = w.qkv_roles(&qkv, &h, layer)?;
        let ctx_out = gr.node(ctx_mm).output.first().cloned().unwrap_or_default();
        let attn_width = q.out_features;
        let heads = w
            .heads_of(&q.output, attn_width)
            .or_else(|| w.heads_of(&k.output, attn_width))
            .or_else(|| w.heads_of(&v.output, attn_width))
            .ok_or_else(|| {
                w.not_bert(
                    &w.node_name(q.node),
                    "cannot find the reshape to attention heads",
                )
            })?;
        let o = w
            .linears
            .iter()
            .find(|l| gr.canon(&l.input) == ctx_out)
            .ok_or_else(|| {
                w.not_bert(
                    &w.node_name(ctx_mm),
                    "no attention output projection after the context MatMul",
                )
            })?;
        let ln1 = w.ln_after(&o.output, &h)?;
        let inter = w.from(&ln1.output);
        let [i] = inter[..] else {
            return Err(w.not_bert(
                &ln1.output,
                format!(
                    "layer {layer}: expected one FFN input projection, found {}",
                    inter.len()
                ),
            ));
        };
        let (f, act) = ffn_output(&w, i)?;
        let ln2 = w.ln_after(&f.output, &ln1.output)?;
        if activation.is_some_and(|a| a != act) {
            return Err(w.not_bert(&w.node_name(i.node), "layers use different activations"));
        }
        activation = Some(act);
        ffn = i.out_features;
        let name = |t: LayerTensor| t.name(layer);
        use LayerTensor as T;
        linear_entries(q, name(T::QueryWeight), name(T::QueryBias), &mut entries);
        linear_entries(k, name(T::KeyWeight), name(T::KeyBias), &mut entries);
        linear_entries(v, name(T::ValueWeight), name(T::ValueBias), &mut entries);
        linear_entries(o, name(T::OutputWeight), name(T::OutputBias), &mut entries);
        ln_entries(
            ln1,
            hidden,
            name(T::AttentionLnWeight),
            name(T::AttentionLnBias),
            &mut entries,
        );
        linear_entries(
            i,
            name(T::IntermediateWeight),
            name(T::IntermediateBias),
            &mut entries,
        );
        linear_entries(
            f,
            name(T::FfnOutputWeight),
            name(T::FfnOutputBias),
            &mut entries,
        );
        ln_entries(
            ln2,
            hidden,
            name(T::FfnLnWeight),
            name(T::FfnLnBias),
            &mut entries,
        );
        heads_all.push(heads as u32);
        h = ln2.output.clone();
    }
    let num_labels = head_entries(&w, &h, hidden, &mut entries);
    let heads = heads_all.first().copied().unwrap_or(1);
    if heads_all.iter().any(|&x| x != heads) {
        return Err(w.not_bert(
            "attention",
            format!("layers have different head counts {heads_all:?}"),
        ));
    }
    let config = ModelConfig {
        architecture: "bert".into(),
        num_layers: heads_all.len() as u32,
        hidden_size: hidden as u32,
        num_heads: heads,
        head_dim: (hidden as u32) / heads.max(1),
        heads_per_layer: heads_all,
        intermediate_size: ffn as u32,
        vocab_size: emb.vocab as u32,
        max_position_embeddings: emb.max_pos as u32,
        type_vocab_size: emb.type_vocab as u32,
        layer_norm_eps: emb_ln.eps,
        activation: activation.unwrap_or(Activation::Gelu),
        num_labels,
    };
    Ok(Plan { config, entries })
}

/// From the FFN input projection, the FFN output projection and the activation between them.
fn ffn_output<'w>(w: &'w Walker, i: &Linear) -> Result<(&'w Linear, Activation), IngestError> {
    let mut ops = HashSet::new();
    let mut found = None;
    let mut multiple = false;
    let through = [
        "Mul", "Div", "Add", "Sub", "Pow", "Erf", "Tanh", "Relu", "Cast", "Identity", "Reshape",
        "Sqrt",
    ];
    w.forward(&i.output, &through, |c, _| {
        ops.insert(w.gr.node(c).op_type.clone());
        // Keep walking after the output projection: the activation's ops may come later in
        // breadth-first order (e.g. `0.5 * x` reaches the final Mul before Tanh does).
        if let Some(l) = w.linears.iter().find(|l| l.node == c) {
            if found.is_some_and(|f: &Linear| f.node != c) {
                multiple = true;
            }
            found = Some(l);
        }
        false
    });
    if multiple {
        return Err(w.not_bert(
            &i.output,
            "the FFN input projection feeds more than one projection",
        ));
    }
    let f = found
        .ok_or_else(|| w.not_bert(&i.output, "no FFN output projection after the activation"))?;
    let act = if ops.contains("Erf") {
        Activation::Gelu
    } else if ops.contains("Tanh") {
        Activation::GeluTanh
    } else if ops.contains("Relu") {
        Activation::Relu
    } else {
        return Err(w.not_bert(
            &i.output,
            "unrecognised FFN activation (expected Erf or tanh GELU, or Relu)",
        ));
    };
    Ok((f, act))
}

/// Pooler (`[H, H]` linear on the first token, then Tanh) and classifier after it, if present.
fn head_entries(
    w: &Walker,
    h: &str,
    hidden: usize,
    entries: &mut Vec<(String, Entry)>,
) -> Option<u32> {
    let mut pooler = None;
    let through = [
        "Gather", "Slice", "Squeeze", "Reshape", "Flatten", "Identity", "Cast",
    ];
    w.forward(h, &through, |c, _| {
        if let Some(l) = w.linears.iter().find(|l| l.node == c) {
            let tanh =
                w.gr.consumers_of(&l.output)
                    .iter()
                    .any(|&t| w.gr.node(t).op_type == "Tanh");
            if l.in_features == hidden && l.out_features == hidden && tanh {
                pooler = Some(l);
                return true;
            }
        }
        false
    });
    let p = pooler?;
    linear_entries(
        p,
        names::POOLER_WEIGHT.into(),
        names::POOLER_BIAS.into(),
        entries,
    );
    let tanh_out =
        w.gr.consumers_of(&p.output)
            .iter()
            .map(|&t| w.gr.node(t))
            .find(|n| n.op_type == "Tanh")
            .and_then(|n| n.output.first().cloned())?;
    let cls = w
        .from(&tanh_out)
        .into_iter()
        .find(|l| l.in_features == hidden)?;
    linear_entries(
        cls,
        names::CLASSIFIER_WEIGHT.into(),
        names::CLASSIFIER_BIAS.into(),
        entries,
    );
    Some(cls.out_features as u32)
}
