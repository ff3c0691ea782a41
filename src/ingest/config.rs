//! Hugging Face `config.json` to [`ModelConfig`].

use std::path::Path;

use serde_json::Value;

use super::IngestError;
use crate::format::{Activation, ModelConfig};

/// What a Hugging Face config says, plus the label count it declares (if any).
pub(crate) struct HfConfig {
    /// The architecture, `num_labels` unset.
    pub model: ModelConfig,
    /// Labels from `id2label` or `num_labels`, when present.
    pub declared_labels: Option<u32>,
}

/// The model types this reader converts (Hugging Face `model_type`).
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["bert"];

/// Parses a `config.json`; every missing or invalid field is reported in one error.
///
/// `weight_layers` is the number of encoder layers the weights hold: a `num_hidden_layers` that
/// differs is refused before anything is sized by it. A `model_type` other than BERT is refused
/// first, in one line, before any other check.
pub(crate) fn read_hf_config(path: &Path, weight_layers: u32) -> Result<HfConfig, IngestError> {
    let text = crate::files::read_capped(path, crate::files::MAX_CONFIG_BYTES)
        .map_err(|e| IngestError::io(path, e))?;
    let v: Value = serde_json::from_slice(&text).map_err(|e| IngestError::Config {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if let Some(mt) = v.get("model_type").and_then(Value::as_str) {
        if !SUPPORTED_MODEL_TYPES.contains(&mt) {
            return Err(IngestError::UnsupportedModel {
                path: path.to_path_buf(),
                found: format!("model_type {mt:?}"),
            });
        }
    }
    let mut problems = Vec::new();
    let mut int = |key: &str, default: Option<u32>| -> u32 {
        match v.get(key) {
            Some(x) => match x.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) if n > 0 => n,
                _ => {
                    problems.push(format!("{key} must be a positive integer, got {x}"));
                    0
                }
            },
            None => default.unwrap_or_else(|| {
                problems.push(format!("{key} is missing"));
                0
            }),
        }
    };
    let hidden = int("hidden_size", None);
    let layers = int("num_hidden_layers", None);
    let heads = int("num_attention_heads", None);
    let ffn = int("intermediate_size", None);
    let vocab = int("vocab_size", None);
    let max_pos = int("max_position_embeddings", None);
    let type_vocab = int("type_vocab_size", Some(2));
    let eps = match v.get("layer_norm_eps") {
        None => 1e-12,
        Some(x) => match x.as_f64() {
            Some(e) if e > 0.0 && e < 1.0 => e,
            _ => {
                problems.push(format!("layer_norm_eps must be in (0, 1), got {x}"));
                1e-12
            }
        },
    };
    let act = match v
        .get("hidden_act")
        .and_then(Value::as_str)
        .unwrap_or("gelu")
    {
        "gelu" => Activation::Gelu,
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
        "relu" => Activation::Relu,
        other => {
            problems.push(format!(
                "hidden_act {other:?} is not supported (gelu, gelu_new, gelu_pytorch_tanh, relu)"
            ));
            Activation::Gelu
        }
    };
    if layers != weight_layers {
        problems.push(format!(
            "num_hidden_layers is {layers} but the weights hold {weight_layers} encoder layers"
        ));
    }
    if heads > 0 && hidden % heads != 0 {
        problems.push(format!(
            "hidden_size {hidden} is not a multiple of num_attention_heads {heads}"
        ));
    }
    if !problems.is_empty() {
        return Err(IngestError::Config {
            path: path.to_path_buf(),
            reason: problems.join("; "),
        });
    }
    let declared_labels = v
        .get("id2label")
        .and_then(Value::as_object)
        .map(|m| m.len() as u32)
        .or_else(|| {
            v.get("num_labels")
                .and_then(Value::as_u64)
                .map(|n| n as u32)
        });
    Ok(HfConfig {
        model: ModelConfig {
            architecture: "bert".to_string(),
            num_layers: layers,
            hidden_size: hidden,
            num_heads: heads,
            head_dim: hidden / heads,
            heads_per_layer: vec![heads; layers as usize],
            intermediate_size: ffn,
            vocab_size: vocab,
            max_position_embeddings: max_pos,
            type_vocab_size: type_vocab,
            layer_norm_eps: eps,
            activation: act,
            num_labels: None,
        },
        declared_labels,
    })
}
