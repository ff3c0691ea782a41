//! Shared helpers of the integration tests: model paths, building `.ets` files from the
//! all-MiniLM-L6-v2 safetensors with the format writer, goldens, comparisons. The f64 reference
//! forward pass is `ets_testkit::reference`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use ets::format::names::{self, LayerTensor};
use ets::format::{Activation, EncodedTensor, ModelConfig};
use ets::runtime::cpu::npy;
use ets_testkit::models;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `models/<rel>`. Tests that call this are `#[ignore = "needs the real models ..."]`, so a run
/// that includes them fails here when the model is missing.
pub fn real_model(rel: &str) -> PathBuf {
    let p = root().join("models").join(rel);
    assert!(
        p.exists(),
        "models/{rel} is missing (run scripts/fetch_models.sh)"
    );
    p
}

/// Canonical name for a Hugging Face BertModel tensor name.
pub fn canonical(hf: &str) -> Option<String> {
    let hf = hf.strip_prefix("bert.").unwrap_or(hf);
    let fixed = match hf {
        "embeddings.word_embeddings.weight" => names::WORD_EMBEDDINGS,
        "embeddings.position_embeddings.weight" => names::POSITION_EMBEDDINGS,
        "embeddings.token_type_embeddings.weight" => names::TOKEN_TYPE_EMBEDDINGS,
        "embeddings.LayerNorm.weight" => names::EMBEDDINGS_LN_WEIGHT,
        "embeddings.LayerNorm.bias" => names::EMBEDDINGS_LN_BIAS,
        "pooler.dense.weight" => names::POOLER_WEIGHT,
        "pooler.dense.bias" => names::POOLER_BIAS,
        _ => "",
    };
    if !fixed.is_empty() {
        return Some(fixed.to_string());
    }
    let rest = hf.strip_prefix("encoder.layer.")?;
    let (layer, suffix) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let t = match suffix {
        "attention.self.query.weight" => LayerTensor::QueryWeight,
        "attention.self.query.bias" => LayerTensor::QueryBias,
        "attention.self.key.weight" => LayerTensor::KeyWeight,
        "attention.self.key.bias" => LayerTensor::KeyBias,
        "attention.self.value.weight" => LayerTensor::ValueWeight,
        "attention.self.value.bias" => LayerTensor::ValueBias,
        "attention.output.dense.weight" => LayerTensor::OutputWeight,
        "attention.output.dense.bias" => LayerTensor::OutputBias,
        "attention.output.LayerNorm.weight" => LayerTensor::AttentionLnWeight,
        "attention.output.LayerNorm.bias" => LayerTensor::AttentionLnBias,
        "intermediate.dense.weight" => LayerTensor::IntermediateWeight,
        "intermediate.dense.bias" => LayerTensor::IntermediateBias,
        "output.dense.weight" => LayerTensor::FfnOutputWeight,
        "output.dense.bias" => LayerTensor::FfnOutputBias,
        "output.LayerNorm.weight" => LayerTensor::FfnLnWeight,
        "output.LayerNorm.bias" => LayerTensor::FfnLnBias,
        _ => return None,
    };
    Some(t.name(layer))
}

/// all-MiniLM-L6-v2 weights as canonical f32 tensors plus its configuration.
/// `(canonical name, shape, values)` of every tensor.
pub type Weights = Vec<(String, Vec<usize>, Vec<f32>)>;

pub fn minilm_weights(dir: &Path) -> (ModelConfig, Weights) {
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let g = |k: &str| cfg[k].as_u64().unwrap() as u32;
    let heads = g("num_attention_heads");
    let mut config = models::config(
        g("num_hidden_layers"),
        g("hidden_size"),
        vec![heads; g("num_hidden_layers") as usize],
        g("hidden_size") / heads,
        g("intermediate_size"),
        g("vocab_size"),
        g("max_position_embeddings"),
    );
    config.type_vocab_size = g("type_vocab_size");
    config.layer_norm_eps = cfg["layer_norm_eps"].as_f64().unwrap();
    config.activation = Activation::Gelu;
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let Some(c) = canonical(&name) else { continue };
        assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        out.push((c, view.shape().to_vec(), data));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    (config, out)
}

/// Encodes every tensor densely with `dtype`.
pub fn dense_all(
    weights: &[(String, Vec<usize>, Vec<f32>)],
    dtype: ets::format::Dtype,
) -> Vec<(String, EncodedTensor)> {
    weights
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                EncodedTensor::dense(s.iter().map(|&x| x as u64).collect(), dtype, d).unwrap(),
            )
        })
        .collect()
}

/// A golden set: token ids, type ids, mean and CLS embeddings `[count, hidden]`.
pub struct Golden {
    pub sentences: Vec<String>,
    pub ids: Vec<Vec<u32>>,
    pub type_ids: Vec<Vec<u32>>,
    pub hidden: usize,
    pub mean: Vec<f32>,
    pub cls: Vec<f32>,
}

pub fn golden(name: &str) -> Golden {
    let d = root().join("fixtures/golden").join(name);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("tokens.json")).unwrap()).unwrap();
    let ids = |k: &str| -> Vec<Vec<u32>> {
        meta[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                s.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as u32)
                    .collect()
            })
            .collect()
    };
    let (ms, mean) = npy::read(&d.join("mean.npy")).unwrap();
    let (_, cls) = npy::read(&d.join("cls.npy")).unwrap();
    Golden {
        sentences: meta["sentences"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect(),
        ids: ids("ids"),
        type_ids: ids("type_ids"),
        hidden: ms[1],
        mean,
        cls,
    }
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Smallest per-row cosine between two `[rows, hidden]` arrays.
pub fn min_row_cosine(a: &[f32], b: &[f32], hidden: usize) -> f64 {
    assert_eq!(a.len(), b.len());
    a.chunks_exact(hidden)
        .zip(b.chunks_exact(hidden))
        .map(|(x, y)| cosine(x, y))
        .fold(f64::INFINITY, f64::min)
}

/// Largest |a - b| relative to max |b|.
pub fn max_rel_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().map(|v| f64::from(v.abs())).fold(1e-30, f64::max);
    a.iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).abs())
        .fold(0.0, f64::max)
        / scale
}
