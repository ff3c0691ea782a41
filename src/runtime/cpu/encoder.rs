//! The BERT forward pass on the CPU, straight from a mapped `.ets` file.

use rayon::prelude::*;

use crate::format::names::{self, LayerTensor};
use crate::format::{EtsFile, ModelConfig, TensorView};
use crate::runtime::{
    check_batch, Encoder, EncoderOutput, ForwardOptions, RuntimeError, TokenBatch,
};

use super::gemm::PackedX;
use super::linear::{tensor_row, Linear};
use super::ops::{add_into, attention, LayerNorm};

/// Looks up a model tensor by canonical name.
pub(crate) type Lookup<'a, 'f> = &'a dyn Fn(&str) -> Result<TensorView<'f>, RuntimeError>;

/// One encoder layer's weights.
pub(crate) struct Layer<'f> {
    heads: usize,
    /// Q, K, V projections; absent when every head of the layer was pruned.
    qkv: Option<[Linear<'f>; 3]>,
    /// Attention output projection (absent with zero heads: then only its bias remains).
    out: Option<Linear<'f>>,
    out_bias: Vec<f32>,
    ln1: LayerNorm,
    intermediate: Linear<'f>,
    ffn_out: Linear<'f>,
    ln2: LayerNorm,
}

/// The inputs of one layer's linear stages after Q/K/V, and its output, packed
/// `[tokens, features]`.
#[derive(Debug, Clone)]
pub struct LayerTrace {
    /// Input of the attention output projection (the attention context).
    pub context: Vec<f32>,
    /// Input of the first FFN linear (after the first LayerNorm).
    pub attention_out: Vec<f32>,
    /// Input of the second FFN linear (after the activation).
    pub intermediate: Vec<f32>,
    /// The layer's output (the next layer's input).
    pub output: Vec<f32>,
}

/// The CPU reference runtime over a borrowed `.ets` file.
///
/// Weights stay in the mapped file in their stored encoding and dtype; only biases and LayerNorm
/// parameters are copied out as f32.
pub struct CpuEncoder<'f> {
    config: ModelConfig,
    hidden: usize,
    word: TensorView<'f>,
    position: TensorView<'f>,
    token_type: TensorView<'f>,
    embeddings_ln: LayerNorm,
    layers: Vec<Layer<'f>>,
    pooler: Option<Linear<'f>>,
    classifier: Option<Linear<'f>>,
}

impl std::fmt::Debug for CpuEncoder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuEncoder")
            .field("layers", &self.layers.len())
            .field("hidden", &self.hidden)
            .finish_non_exhaustive()
    }
}

fn get<'f>(file: &'f EtsFile, name: &str) -> Result<TensorView<'f>, RuntimeError> {
    crate::runtime::model_tensor(file, name)
}

fn vector(get: Lookup<'_, '_>, name: &str, len: usize) -> Result<Vec<f32>, RuntimeError> {
    let v = get(name)?;
    if v.shape != [len as u64] {
        return Err(RuntimeError::BadShape {
            name: name.to_string(),
            expected: vec![len as u64],
            actual: v.shape.to_vec(),
        });
    }
    Ok(v.to_dense_f32())
}

fn table<'f>(
    file: &'f EtsFile,
    name: &str,
    rows: usize,
    hidden: usize,
) -> Result<TensorView<'f>, RuntimeError> {
    let v = get(file, name)?;
    let expected = vec![rows as u64, hidden as u64];
    if v.shape != expected.as_slice() {
        return Err(RuntimeError::BadShape {
            name: name.to_string(),
            expected,
            actual: v.shape.to_vec(),
        });
    }
    Ok(v)
}

fn layer_norm(
    get: Lookup<'_, '_>,
    w: &str,
    b: &str,
    hidden: usize,
    eps: f64,
) -> Result<LayerNorm, RuntimeError> {
    Ok(LayerNorm {
        weight: vector(get, w, hidden)?,
        bias: vector(get, b, hidden)?,
        eps: eps as f32,
    })
}

fn linear<'f>(
    get: Lookup<'_, 'f>,
    weight: &str,
    bias: Option<&str>,
    n: usize,
    k: usize,
) -> Result<Linear<'f>, RuntimeError> {
    let b = match bias {
        Some(b) => Some(vector(get, b, n)?),
        None => None,
    };
    Linear::new(get(weight)?, n, k, b)
}

impl<'f> CpuEncoder<'f> {
    /// Checks the file's tensors against its model configuration and prepares the layers.
    pub fn new(file: &'f EtsFile) -> Result<CpuEncoder<'f>, RuntimeError> {
        let c = file.model().clone();
        let h = c.hidden_size as usize;
        if c.heads_per_layer.len() != c.num_layers as usize {
            return Err(RuntimeError::BadConfig(format!(
                "heads_per_layer has {} entries for {} layers",
                c.heads_per_layer.len(),
                c.num_layers
            )));
        }
        if h == 0 || c.head_dim == 0 {
            return Err(RuntimeError::BadConfig(
                "hidden_size and head_dim must be positive".to_string(),
            ));
        }
        let lookup = |name: &str| get(file, name);
        let lookup: Lookup<'_, 'f> = &lookup;
        let word = table(file, names::WORD_EMBEDDINGS, c.vocab_size as usize, h)?;
        let position = table(
            file,
            names::POSITION_EMBEDDINGS,
            c.max_position_embeddings as usize,
            h,
        )?;
        let token_type = table(
            file,
            names::TOKEN_TYPE_EMBEDDINGS,
            c.type_vocab_size as usize,
            h,
        )?;
        let embeddings_ln = layer_norm(
            lookup,
            names::EMBEDDINGS_LN_WEIGHT,
            names::EMBEDDINGS_LN_BIAS,
            h,
            c.layer_norm_eps,
        )?;
        let layers = (0..c.num_layers as usize)
            .map(|i| load_layer(lookup, &c, i, crate::runtime::ffn_width(file, &c, i)?))
            .collect::<Result<Vec<_>, _>>()?;
        let pooler = if file.has_tensor(names::POOLER_WEIGHT) {
            Some(linear(
                lookup,
                names::POOLER_WEIGHT,
                Some(names::POOLER_BIAS),
                h,
                h,
            )?)
        } else {
            None
        };
        let classifier = match (file.has_tensor(names::CLASSIFIER_WEIGHT), c.num_labels) {
            (true, Some(labels)) => Some(linear(
                lookup,
                names::CLASSIFIER_WEIGHT,
                Some(names::CLASSIFIER_BIAS),
                labels as usize,
                h,
            )?),
            (true, None) => {
                let v = get(file, names::CLASSIFIER_WEIGHT)?;
                let labels = v.shape.first().copied().unwrap_or(0) as usize;
                Some(linear(
                    lookup,
                    names::CLASSIFIER_WEIGHT,
                    Some(names::CLASSIFIER_BIAS),
                    labels,
                    h,
                )?)
            }
            (false, _) => None,
        };
        Ok(CpuEncoder {
            config: c,
            hidden: h,
            word,
            position,
            token_type,
            embeddings_ln,
            layers,
            pooler,
            classifier,
        })
    }

    /// Word + position + token-type embeddings, then LayerNorm: packed `[tokens, hidden]`.
    fn embed_tokens(&self, batch: &TokenBatch) -> Vec<f32> {
        let h = self.hidden;
        let tokens: Vec<(u32, usize, u32)> = batch
            .sequences
            .iter()
            .flat_map(|s| {
                s.ids
                    .iter()
                    .zip(&s.type_ids)
                    .enumerate()
                    .map(|(p, (&id, &t))| (id, p, t))
            })
            .collect();
        let mut x = vec![0f32; tokens.len() * h];
        x.par_chunks_mut(h).zip(tokens.par_iter()).for_each_init(
            || vec![0f32; h],
            |tmp, (row, &(id, pos, t))| {
                tensor_row(&self.word, id as usize, row);
                tensor_row(&self.position, pos, tmp);
                add_into_serial(row, tmp);
                tensor_row(&self.token_type, t as usize, tmp);
                add_into_serial(row, tmp);
            },
        );
        self.embeddings_ln.apply(&mut x);
        x
    }

    fn run_layer(&self, layer: &Layer<'_>, x: &mut [f32], lengths: &[usize]) {
        let m: usize = lengths.iter().sum();
        let h = self.hidden;
        let mut attn = match (&layer.qkv, &layer.out) {
            (Some([q, k, v]), Some(o)) => {
                // One packing of the layer input serves Q, K and V.
                let xp = PackedX::new(x, m, h);
                let proj = |l: &Linear<'_>| l.forward_with(x, Some(&xp), m, None, None);
                let (qo, (ko, vo)) =
                    rayon::join(|| proj(q), || rayon::join(|| proj(k), || proj(v)));
                let ctx = attention(
                    &qo,
                    &ko,
                    &vo,
                    lengths,
                    layer.heads,
                    self.config.head_dim as usize,
                );
                // The residual add is folded into the output copy.
                o.forward_with(&ctx, None, m, None, Some(x))
            }
            // Every head pruned: the attention block contributes only its output bias.
            _ => {
                let mut a = layer.out_bias.repeat(m);
                add_into(&mut a, x);
                a
            }
        };
        layer.ln1.apply(&mut attn);
        let inter = layer
            .intermediate
            .forward_act(&attn, m, Some(self.config.activation));
        let mut out = layer
            .ffn_out
            .forward_with(&inter, None, m, None, Some(&attn));
        layer.ln2.apply(&mut out);
        debug_assert_eq!(out.len(), m * h);
        x.copy_from_slice(&out);
    }

    /// The embedding output of a batch (packed `[tokens, hidden]`) and the sequence lengths.
    pub fn embed_batch(&self, batch: &TokenBatch) -> Result<(Vec<f32>, Vec<usize>), RuntimeError> {
        check_batch(&self.config, batch)?;
        let lengths = batch.sequences.iter().map(|s| s.len()).collect();
        Ok((self.embed_tokens(batch), lengths))
    }

    /// Runs layer `layer` on its input `x` and returns the inputs of its four linear stages and
    /// its output (for calibrated pruning). The normal forward path does not use this.
    pub fn trace_layer(
        &self,
        layer: usize,
        x: &[f32],
        lengths: &[usize],
    ) -> Result<LayerTrace, RuntimeError> {
        let l = self.layer(layer)?;
        let context = self.stage_context(l, x, lengths)?;
        let attention_out = self.stage_attention_out(l, &context, x)?;
        let intermediate = self.stage_intermediate(l, &attention_out)?;
        let output = self.stage_output(l, &intermediate, &attention_out)?;
        Ok(LayerTrace {
            context,
            attention_out,
            intermediate,
            output,
        })
    }

    /// This encoder's layer `index`.
    pub(crate) fn layer(&self, index: usize) -> Result<&Layer<'f>, RuntimeError> {
        self.layers.get(index).ok_or_else(|| {
            RuntimeError::BadConfig(format!(
                "layer {index} of a {}-layer model",
                self.layers.len()
            ))
        })
    }

    /// Layer `index` of this encoder's configuration with its tensors from `get`: how calibrated
    /// pruning runs a layer whose weights are replaced in memory.
    pub(crate) fn layer_from<'g>(
        &self,
        index: usize,
        get: Lookup<'_, 'g>,
    ) -> Result<Layer<'g>, RuntimeError> {
        let name = LayerTensor::IntermediateWeight.name(index);
        let h = self.hidden as u64;
        let inter = match get(&name)?.shape {
            [n, k] if *k == h && *n > 0 => *n as usize,
            other => {
                return Err(RuntimeError::BadShape {
                    expected: vec![self.config.intermediate_size as u64, h],
                    actual: other.to_vec(),
                    name,
                })
            }
        };
        load_layer(get, &self.config, index, inter)
    }

    /// Checks that `x` holds `tokens` rows of width `width`.
    fn check_rows(x: &[f32], width: usize, what: &str) -> Result<usize, RuntimeError> {
        if width == 0 || x.len() % width != 0 {
            return Err(RuntimeError::BadConfig(format!(
                "{what} of {} values is not rows of width {width}",
                x.len()
            )));
        }
        Ok(x.len() / width)
    }

    /// Q, K, V and attention on the layer input `x`: the attention context.
    pub(crate) fn stage_context(
        &self,
        l: &Layer<'_>,
        x: &[f32],
        lengths: &[usize],
    ) -> Result<Vec<f32>, RuntimeError> {
        let m: usize = lengths.iter().sum();
        if x.len() != m * self.hidden {
            return Err(RuntimeError::BadConfig(format!(
                "layer input of {} values for {m} tokens of width {}",
                x.len(),
                self.hidden
            )));
        }
        let Some([q, k, v]) = &l.qkv else {
            return Err(RuntimeError::BadConfig(
                "tracing a layer without attention heads".into(),
            ));
        };
        let (qo, ko, vo) = (q.forward(x, m), k.forward(x, m), v.forward(x, m));
        Ok(attention(
            &qo,
            &ko,
            &vo,
            lengths,
            l.heads,
            self.config.head_dim as usize,
        ))
    }

    /// Output projection of the context, residual `x`, first LayerNorm.
    pub(crate) fn stage_attention_out(
        &self,
        l: &Layer<'_>,
        context: &[f32],
        x: &[f32],
    ) -> Result<Vec<f32>, RuntimeError> {
        let m = Self::check_rows(x, self.hidden, "layer input")?;
        let width = l.heads * self.config.head_dim as usize;
        let (Some(o), true) = (&l.out, context.len() == m * width) else {
            return Err(RuntimeError::BadConfig(format!(
                "attention context of {} values for {m} tokens",
                context.len()
            )));
        };
        let mut attn = o.forward_with(context, None, m, None, Some(x));
        l.ln1.apply(&mut attn);
        Ok(attn)
    }

    /// First FFN linear and its activation.
    pub(crate) fn stage_intermediate(
        &self,
        l: &Layer<'_>,
        attention_out: &[f32],
    ) -> Result<Vec<f32>, RuntimeError> {
        let m = Self::check_rows(attention_out, self.hidden, "attention output")?;
        Ok(l.intermediate
            .forward_act(attention_out, m, Some(self.config.activation)))
    }

    /// Second FFN linear, residual `attention_out`, second LayerNorm: the layer output.
    pub(crate) fn stage_output(
        &self,
        l: &Layer<'_>,
        intermediate: &[f32],
        attention_out: &[f32],
    ) -> Result<Vec<f32>, RuntimeError> {
        let m = Self::check_rows(attention_out, self.hidden, "attention output")?;
        if intermediate.len() != m * l.intermediate.n() {
            return Err(RuntimeError::BadConfig(format!(
                "FFN activations of {} values for {m} tokens",
                intermediate.len()
            )));
        }
        let mut out = l
            .ffn_out
            .forward_with(intermediate, None, m, None, Some(attention_out));
        l.ln2.apply(&mut out);
        Ok(out)
    }

    /// Pooler (`tanh`) and classifier outputs on the `[CLS]` rows.
    fn heads(&self, x: &[f32], lengths: &[usize]) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
        let h = self.hidden;
        let mut cls = Vec::with_capacity(lengths.len() * h);
        let mut start = 0;
        for &l in lengths {
            cls.extend_from_slice(&x[start * h..start * h + h]);
            start += l;
        }
        let n = lengths.len();
        let pooled = self.pooler.as_ref().map(|p| {
            let mut y = p.forward(&cls, n);
            y.iter_mut().for_each(|v| *v = v.tanh());
            y
        });
        let logits = self
            .classifier
            .as_ref()
            .map(|c| c.forward(pooled.as_deref().unwrap_or(&cls), n));
        (pooled, logits)
    }
}

fn add_into_serial(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

fn load_layer<'f>(
    get: Lookup<'_, 'f>,
    c: &ModelConfig,
    i: usize,
    inter_size: usize,
) -> Result<Layer<'f>, RuntimeError> {
    let h = c.hidden_size as usize;
    let heads = c.heads_per_layer.get(i).copied().unwrap_or(0) as usize;
    let width = heads * c.head_dim as usize;
    let name = |t: LayerTensor| t.name(i);
    let out_bias = vector(get, &name(LayerTensor::OutputBias), h)?;
    let (qkv, out) = if heads == 0 {
        (None, None)
    } else {
        let proj = |w: LayerTensor, b: LayerTensor| linear(get, &name(w), Some(&name(b)), width, h);
        let qkv = [
            proj(LayerTensor::QueryWeight, LayerTensor::QueryBias)?,
            proj(LayerTensor::KeyWeight, LayerTensor::KeyBias)?,
            proj(LayerTensor::ValueWeight, LayerTensor::ValueBias)?,
        ];
        let out = linear(
            get,
            &name(LayerTensor::OutputWeight),
            Some(&name(LayerTensor::OutputBias)),
            h,
            width,
        )?;
        (Some(qkv), Some(out))
    };
    let intermediate = linear(
        get,
        &name(LayerTensor::IntermediateWeight),
        Some(&name(LayerTensor::IntermediateBias)),
        inter_size,
        h,
    )?;
    let ffn_out = linear(
        get,
        &name(LayerTensor::FfnOutputWeight),
        Some(&name(LayerTensor::FfnOutputBias)),
        h,
        inter_size,
    )?;
    let eps = c.layer_norm_eps;
    Ok(Layer {
        heads,
        qkv,
        out,
        out_bias,
        ln1: layer_norm(
            get,
            &name(LayerTensor::AttentionLnWeight),
            &name(LayerTensor::AttentionLnBias),
            h,
            eps,
        )?,
        intermediate,
        ffn_out,
        ln2: layer_norm(
            get,
            &name(LayerTensor::FfnLnWeight),
            &name(LayerTensor::FfnLnBias),
            h,
            eps,
        )?,
    })
}

impl Encoder for CpuEncoder<'_> {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn forward_with(
        &self,
        batch: &TokenBatch,
        options: &ForwardOptions,
    ) -> Result<EncoderOutput, RuntimeError> {
        check_batch(&self.config, batch)?;
        let lengths: Vec<usize> = batch.sequences.iter().map(|s| s.len()).collect();
        let mut x = self.embed_tokens(batch);
        let mut states = options.output_hidden_states.then(|| vec![x.clone()]);
        for layer in &self.layers {
            self.run_layer(layer, &mut x, &lengths);
            if let Some(s) = states.as_mut() {
                s.push(x.clone());
            }
        }
        let (pooler_output, logits) = self.heads(&x, &lengths);
        Ok(EncoderOutput {
            hidden_size: self.hidden,
            lengths,
            last_hidden: x,
            hidden_states: states,
            pooler_output,
            logits,
        })
    }
}
