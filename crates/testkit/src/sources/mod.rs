//! Deterministic tiny BERT fixtures for tests: the same weights written as a Hugging Face
//! safetensors checkpoint and as runnable ONNX graphs of several export styles.
//!
//! Values come from the seeded generator ([`Rng::for_name`]) keyed by the canonical tensor name, so every
//! run and every writer produce bit-identical weights, and [`tiny_weights`] is the reference.

use std::io;
use std::path::{Path, PathBuf};

use ets::format::names::{self, LayerTensor};
use ets::format::{Activation, ModelConfig};
use ets::ingest::SourceTensor;

use crate::rng::Rng;

mod onnx;
mod proto;

pub use onnx::{write_onnx, write_toy_onnx, OnnxStyle};

/// The tiny model: 2 layers, hidden 32, 4 heads, FFN 64, vocab 100, 32 positions, 2 token types.
pub fn tiny_config() -> ModelConfig {
    ModelConfig {
        architecture: "bert".into(),
        num_layers: 2,
        hidden_size: 32,
        num_heads: 4,
        head_dim: 8,
        heads_per_layer: vec![4, 4],
        intermediate_size: 64,
        vocab_size: 100,
        max_position_embeddings: 32,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
        activation: Activation::Gelu,
        num_labels: None,
    }
}

fn shape_of(cfg: &ModelConfig, name: &str) -> Vec<usize> {
    names::canonical_shape(cfg, name)
        .map(|s| s.into_iter().map(|d| d as usize).collect())
        .unwrap_or_default()
}

/// Canonical names in canonical order: the embeddings, then each layer's tensors (no pooler).
fn canonical_names(layers: usize) -> Vec<String> {
    let mut out: Vec<String> = [
        names::WORD_EMBEDDINGS,
        names::POSITION_EMBEDDINGS,
        names::TOKEN_TYPE_EMBEDDINGS,
        names::EMBEDDINGS_LN_WEIGHT,
        names::EMBEDDINGS_LN_BIAS,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for layer in 0..layers {
        out.extend(LayerTensor::ALL.iter().map(|t| t.name(layer)));
    }
    out
}

/// Splits `layers.{i}.{suffix}` into the layer index and tensor kind.
fn parse_layer_name(name: &str) -> Option<(usize, LayerTensor)> {
    let rest = name.strip_prefix("layers.")?;
    let (idx, suffix) = rest.split_once('.')?;
    let layer = idx.parse().ok()?;
    let t = LayerTensor::ALL.iter().find(|t| t.suffix() == suffix)?;
    Some((layer, *t))
}

/// The weights of [`tiny_config`], canonical names in canonical order, canonical layout.
pub fn tiny_weights() -> Vec<(String, SourceTensor)> {
    let cfg = tiny_config();
    canonical_names(cfg.num_layers as usize)
        .into_iter()
        .map(|name| {
            let shape = shape_of(&cfg, &name);
            let n: usize = shape.iter().product();
            let mut rng = Rng::for_name(&name);
            let is_ln_weight = name.ends_with("layer_norm.weight");
            let is_bias = name.ends_with(".bias");
            let data = (0..n)
                .map(|_| {
                    let u = rng.symmetric(1.0);
                    if is_ln_weight {
                        1.0 + 0.1 * u
                    } else if is_bias {
                        0.05 * u
                    } else {
                        0.2 * u
                    }
                })
                .collect();
            (name, SourceTensor { shape, data })
        })
        .collect()
}

/// One weight of [`tiny_weights`] by canonical name.
pub fn tiny_weight(name: &str) -> Option<SourceTensor> {
    tiny_weights()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t)
}

/// The Hugging Face name of a canonical tensor: `prefix` (`"bert."` or `""`) and, with
/// `old_ln_names`, LayerNorm `gamma`/`beta` instead of `weight`/`bias`.
pub fn hf_name(canonical: &str, prefix: &str, old_ln_names: bool) -> String {
    let ln = |base: &str, weight: bool| match (weight, old_ln_names) {
        (true, false) => format!("{base}.weight"),
        (true, true) => format!("{base}.gamma"),
        (false, false) => format!("{base}.bias"),
        (false, true) => format!("{base}.beta"),
    };
    let body = match canonical {
        names::EMBEDDINGS_LN_WEIGHT => ln("embeddings.LayerNorm", true),
        names::EMBEDDINGS_LN_BIAS => ln("embeddings.LayerNorm", false),
        names::POOLER_WEIGHT | names::POOLER_BIAS => canonical.to_string(),
        names::CLASSIFIER_WEIGHT | names::CLASSIFIER_BIAS => return canonical.to_string(),
        n if n.starts_with("embeddings.") => n.to_string(),
        n => {
            let Some((layer, t)) = parse_layer_name(n) else {
                return n.to_string();
            };
            let b = format!("encoder.layer.{layer}.");
            match t {
                LayerTensor::QueryWeight => format!("{b}attention.self.query.weight"),
                LayerTensor::QueryBias => format!("{b}attention.self.query.bias"),
                LayerTensor::KeyWeight => format!("{b}attention.self.key.weight"),
                LayerTensor::KeyBias => format!("{b}attention.self.key.bias"),
                LayerTensor::ValueWeight => format!("{b}attention.self.value.weight"),
                LayerTensor::ValueBias => format!("{b}attention.self.value.bias"),
                LayerTensor::OutputWeight => format!("{b}attention.output.dense.weight"),
                LayerTensor::OutputBias => format!("{b}attention.output.dense.bias"),
                LayerTensor::AttentionLnWeight => {
                    ln(&format!("{b}attention.output.LayerNorm"), true)
                }
                LayerTensor::AttentionLnBias => {
                    ln(&format!("{b}attention.output.LayerNorm"), false)
                }
                LayerTensor::IntermediateWeight => format!("{b}intermediate.dense.weight"),
                LayerTensor::IntermediateBias => format!("{b}intermediate.dense.bias"),
                LayerTensor::FfnOutputWeight => format!("{b}output.dense.weight"),
                LayerTensor::FfnOutputBias => format!("{b}output.dense.bias"),
                LayerTensor::FfnLnWeight => ln(&format!("{b}output.LayerNorm"), true),
                LayerTensor::FfnLnBias => ln(&format!("{b}output.LayerNorm"), false),
            }
        }
    };
    format!("{prefix}{body}")
}

/// The Hugging Face `config.json` text of a config.
pub fn hf_config_json(cfg: &ModelConfig) -> String {
    let act = match cfg.activation {
        Activation::Gelu => "gelu",
        Activation::GeluTanh => "gelu_new",
        Activation::Relu => "relu",
    };
    let v = serde_json::json!({
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.intermediate_size,
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "type_vocab_size": cfg.type_vocab_size,
        "layer_norm_eps": cfg.layer_norm_eps,
        "hidden_act": act,
    });
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

/// A WordPiece vocabulary of `n` entries (special tokens first).
pub fn vocab_txt(n: usize) -> String {
    let special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
    let letters = "abcdefghijklmnopqrstuvwxyz";
    let mut out: Vec<String> = special.iter().map(|s| s.to_string()).collect();
    out.extend(letters.chars().map(String::from));
    out.extend(letters.chars().map(|c| format!("##{c}")));
    let mut k = 0;
    while out.len() < n {
        out.push(format!("w{k}"));
        k += 1;
    }
    out.truncate(n);
    out.join("\n") + "\n"
}

/// Writes tensors as a safetensors file with the given element type (`F32`, `F16` or `BF16`).
pub fn write_safetensors_tensors(
    path: &Path,
    tensors: &[(String, SourceTensor)],
    dtype: safetensors::Dtype,
) -> io::Result<()> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, t)| match dtype {
            safetensors::Dtype::F16 => t
                .data
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect(),
            safetensors::Dtype::BF16 => t
                .data
                .iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                .collect(),
            _ => t.data.iter().flat_map(|&x| x.to_le_bytes()).collect(),
        })
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, t), b)| {
            safetensors::tensor::TensorView::new(dtype, t.shape.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{e:?}")))
        })
        .collect::<io::Result<Vec<_>>>()?;
    safetensors::serialize_to_file(views, &None, path)
        .map_err(|e| io::Error::other(format!("{e:?}")))
}

/// Writes `model.safetensors` (f32, `bert.` prefix), `config.json` and `vocab.txt` into `dir`;
/// returns the model path.
pub fn write_safetensors(dir: &Path) -> io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let cfg = tiny_config();
    let tensors: Vec<(String, SourceTensor)> = tiny_weights()
        .into_iter()
        .map(|(n, t)| (hf_name(&n, "bert.", false), t))
        .collect();
    let path = dir.join("model.safetensors");
    write_safetensors_tensors(&path, &tensors, safetensors::Dtype::F32)?;
    std::fs::write(dir.join("config.json"), hf_config_json(&cfg))?;
    std::fs::write(dir.join("vocab.txt"), vocab_txt(cfg.vocab_size as usize))?;
    Ok(path)
}
