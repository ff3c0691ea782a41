//! Random BERT weights and small `.ets` writing helpers, for tests and the CPU benchmark.
//!
//! Nothing here is used by the forward pass; it lets a test or a benchmark build a model of any
//! shape (including pruned head counts) without a downloaded checkpoint.

use std::path::Path;

use ets::format::names::{self, LayerTensor};
use ets::format::{
    Activation, EncodedTensor, EtsWriter, FormatError, ModelConfig, Provenance, WriteOptions,
};

use crate::rng::Rng;

/// A BERT configuration with the given sizes (GELU, eps 1e-12, 2 token types); `num_heads` is
/// `hidden / head_dim` (the unpruned count) and `heads_per_layer` the kept heads.
pub fn config(
    layers: u32,
    hidden: u32,
    heads_per_layer: Vec<u32>,
    head_dim: u32,
    intermediate: u32,
    vocab: u32,
    max_positions: u32,
) -> ModelConfig {
    ModelConfig {
        architecture: "bert".to_string(),
        num_layers: layers,
        hidden_size: hidden,
        num_heads: hidden / head_dim.max(1),
        head_dim,
        heads_per_layer,
        intermediate_size: intermediate,
        vocab_size: vocab,
        max_position_embeddings: max_positions,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
        activation: Activation::Gelu,
        num_labels: None,
    }
}

/// Random weights for `config`: `(canonical name, shape, row-major values)` in writer order.
/// Linear weights are scaled by `1/sqrt(fan_in)` so activations stay in a realistic range.
pub fn random_weights(config: &ModelConfig, seed: u64) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut rng = Rng::new(seed);
    let h = config.hidden_size as usize;
    let mut out = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, scale: f32, offset: f32, rng: &mut Rng| {
        let n: usize = shape.iter().product();
        let data = (0..n).map(|_| offset + rng.symmetric(scale)).collect();
        out.push((name, shape, data));
    };
    push(
        names::WORD_EMBEDDINGS.into(),
        vec![config.vocab_size as usize, h],
        0.5,
        0.0,
        &mut rng,
    );
    push(
        names::POSITION_EMBEDDINGS.into(),
        vec![config.max_position_embeddings as usize, h],
        0.2,
        0.0,
        &mut rng,
    );
    push(
        names::TOKEN_TYPE_EMBEDDINGS.into(),
        vec![config.type_vocab_size as usize, h],
        0.2,
        0.0,
        &mut rng,
    );
    push(
        names::EMBEDDINGS_LN_WEIGHT.into(),
        vec![h],
        0.1,
        1.0,
        &mut rng,
    );
    push(
        names::EMBEDDINGS_LN_BIAS.into(),
        vec![h],
        0.1,
        0.0,
        &mut rng,
    );
    for (i, &heads) in config.heads_per_layer.iter().enumerate() {
        let w = heads as usize * config.head_dim as usize;
        let f = config.intermediate_size as usize;
        for t in LayerTensor::ALL {
            let (shape, scale, offset) = match t {
                LayerTensor::QueryWeight | LayerTensor::KeyWeight | LayerTensor::ValueWeight => {
                    (vec![w, h], 1.0 / (h as f32).sqrt(), 0.0)
                }
                LayerTensor::QueryBias | LayerTensor::KeyBias | LayerTensor::ValueBias => {
                    (vec![w], 0.1, 0.0)
                }
                LayerTensor::OutputWeight => (vec![h, w], 1.0 / (w.max(1) as f32).sqrt(), 0.0),
                LayerTensor::IntermediateWeight => (vec![f, h], 1.0 / (h as f32).sqrt(), 0.0),
                LayerTensor::IntermediateBias => (vec![f], 0.1, 0.0),
                LayerTensor::FfnOutputWeight => (vec![h, f], 1.0 / (f as f32).sqrt(), 0.0),
                LayerTensor::AttentionLnWeight | LayerTensor::FfnLnWeight => (vec![h], 0.1, 1.0),
                _ => (vec![h], 0.1, 0.0),
            };
            if shape.contains(&0) {
                continue;
            }
            push(t.name(i), shape, scale, offset, &mut rng);
        }
    }
    out
}

/// Writes `tensors` (already encoded) and an optional tokenizer `(format, bytes)` to `path`.
pub fn write_ets(
    path: &Path,
    config: &ModelConfig,
    tensors: &[(String, EncodedTensor)],
    tokenizer: Option<(&str, &[u8])>,
) -> Result<(), FormatError> {
    let mut w = EtsWriter::create(path, WriteOptions { overwrite: true })?;
    for (name, t) in tensors {
        w.add_tensor(name, t)?;
    }
    if let Some((format, bytes)) = tokenizer {
        w.add_blob(names::TOKENIZER_SECTION, "tokenizer", format, bytes, false)?;
    }
    w.finish(
        config.clone(),
        serde_json::json!({}),
        Provenance {
            source_name: "synthetic".to_string(),
            source_sha256: String::new(),
            converter: format!("ets {}", env!("CARGO_PKG_VERSION")),
        },
    )
}

/// A random tile mask over the `th x tw` grid of a `rows x cols` matrix keeping about `density`
/// of the tiles (at least one per matrix).
pub fn random_tile_keep(
    rows: usize,
    cols: usize,
    th: usize,
    tw: usize,
    density: f64,
    rng: &mut Rng,
) -> Vec<bool> {
    let n = rows.div_ceil(th) * cols.div_ceil(tw);
    let mut keep: Vec<bool> = (0..n)
        .map(|_| f64::from(rng.next_f32()) < density)
        .collect();
    if !keep.iter().any(|&k| k) {
        if let Some(first) = keep.first_mut() {
            *first = true;
        }
    }
    keep
}
