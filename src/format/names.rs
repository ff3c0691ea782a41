//! Canonical tensor names of a BERT encoder in a `.ets` file.
//!
//! Linear weights are stored `[out_features, in_features]` (so `y = x W^T + b`), LayerNorm and bias
//! vectors as 1-D tensors, embedding tables as `[rows, hidden]`.

use super::header::ModelConfig;

/// Word embedding table `[vocab_size, hidden]`.
pub const WORD_EMBEDDINGS: &str = "embeddings.word_embeddings.weight";
/// Position embedding table `[max_position_embeddings, hidden]`.
pub const POSITION_EMBEDDINGS: &str = "embeddings.position_embeddings.weight";
/// Token-type embedding table `[type_vocab_size, hidden]`.
pub const TOKEN_TYPE_EMBEDDINGS: &str = "embeddings.token_type_embeddings.weight";
/// Embedding LayerNorm scale `[hidden]`.
pub const EMBEDDINGS_LN_WEIGHT: &str = "embeddings.layer_norm.weight";
/// Embedding LayerNorm shift `[hidden]`.
pub const EMBEDDINGS_LN_BIAS: &str = "embeddings.layer_norm.bias";
/// Pooler dense weight `[hidden, hidden]` (optional).
pub const POOLER_WEIGHT: &str = "pooler.dense.weight";
/// Pooler dense bias `[hidden]` (optional).
pub const POOLER_BIAS: &str = "pooler.dense.bias";
/// Classifier weight `[num_labels, hidden]` (optional).
pub const CLASSIFIER_WEIGHT: &str = "classifier.weight";
/// Classifier bias `[num_labels]` (optional).
pub const CLASSIFIER_BIAS: &str = "classifier.bias";
/// Name of the embedded tokenizer section (format `tokenizer.json` or `vocab.txt`).
pub const TOKENIZER_SECTION: &str = "tokenizer";

/// The parameterised tensors of one encoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LayerTensor {
    /// Query projection weight `[heads*head_dim, hidden]`.
    QueryWeight,
    /// Query projection bias.
    QueryBias,
    /// Key projection weight `[heads*head_dim, hidden]`.
    KeyWeight,
    /// Key projection bias.
    KeyBias,
    /// Value projection weight `[heads*head_dim, hidden]`.
    ValueWeight,
    /// Value projection bias.
    ValueBias,
    /// Attention output weight `[hidden, heads*head_dim]`.
    OutputWeight,
    /// Attention output bias.
    OutputBias,
    /// LayerNorm after attention, scale.
    AttentionLnWeight,
    /// LayerNorm after attention, shift.
    AttentionLnBias,
    /// FFN input weight `[intermediate, hidden]`.
    IntermediateWeight,
    /// FFN input bias.
    IntermediateBias,
    /// FFN output weight `[hidden, intermediate]`.
    FfnOutputWeight,
    /// FFN output bias.
    FfnOutputBias,
    /// LayerNorm after the FFN, scale.
    FfnLnWeight,
    /// LayerNorm after the FFN, shift.
    FfnLnBias,
}

impl LayerTensor {
    /// Every layer tensor, in the order a writer stores them.
    pub const ALL: [LayerTensor; 16] = [
        LayerTensor::QueryWeight,
        LayerTensor::QueryBias,
        LayerTensor::KeyWeight,
        LayerTensor::KeyBias,
        LayerTensor::ValueWeight,
        LayerTensor::ValueBias,
        LayerTensor::OutputWeight,
        LayerTensor::OutputBias,
        LayerTensor::AttentionLnWeight,
        LayerTensor::AttentionLnBias,
        LayerTensor::IntermediateWeight,
        LayerTensor::IntermediateBias,
        LayerTensor::FfnOutputWeight,
        LayerTensor::FfnOutputBias,
        LayerTensor::FfnLnWeight,
        LayerTensor::FfnLnBias,
    ];

    /// The name suffix after `layers.{i}.`.
    pub fn suffix(self) -> &'static str {
        match self {
            LayerTensor::QueryWeight => "attention.query.weight",
            LayerTensor::QueryBias => "attention.query.bias",
            LayerTensor::KeyWeight => "attention.key.weight",
            LayerTensor::KeyBias => "attention.key.bias",
            LayerTensor::ValueWeight => "attention.value.weight",
            LayerTensor::ValueBias => "attention.value.bias",
            LayerTensor::OutputWeight => "attention.output.weight",
            LayerTensor::OutputBias => "attention.output.bias",
            LayerTensor::AttentionLnWeight => "attention.layer_norm.weight",
            LayerTensor::AttentionLnBias => "attention.layer_norm.bias",
            LayerTensor::IntermediateWeight => "ffn.intermediate.weight",
            LayerTensor::IntermediateBias => "ffn.intermediate.bias",
            LayerTensor::FfnOutputWeight => "ffn.output.weight",
            LayerTensor::FfnOutputBias => "ffn.output.bias",
            LayerTensor::FfnLnWeight => "ffn.layer_norm.weight",
            LayerTensor::FfnLnBias => "ffn.layer_norm.bias",
        }
    }

    /// Whether this is a 2-D linear weight (the tensors that pruning applies to).
    pub fn is_linear_weight(self) -> bool {
        matches!(
            self,
            LayerTensor::QueryWeight
                | LayerTensor::KeyWeight
                | LayerTensor::ValueWeight
                | LayerTensor::OutputWeight
                | LayerTensor::IntermediateWeight
                | LayerTensor::FfnOutputWeight
        )
    }

    /// The full canonical name for layer `layer`.
    pub fn name(self, layer: usize) -> String {
        format!("layers.{layer}.{}", self.suffix())
    }
}

impl LayerTensor {
    /// The shape this tensor has in layer `layer` of a model with configuration `cfg`: Q, K and V
    /// keep `heads_per_layer[layer] * head_dim` rows and O as many columns (head pruning).
    pub fn shape(self, cfg: &ModelConfig, layer: usize) -> Vec<u64> {
        let h = u64::from(cfg.hidden_size);
        let ffn = u64::from(cfg.intermediate_size);
        let heads = cfg
            .heads_per_layer
            .get(layer)
            .copied()
            .unwrap_or(cfg.num_heads);
        let attn = u64::from(heads) * u64::from(cfg.head_dim);
        match self {
            LayerTensor::QueryWeight | LayerTensor::KeyWeight | LayerTensor::ValueWeight => {
                vec![attn, h]
            }
            LayerTensor::QueryBias | LayerTensor::KeyBias | LayerTensor::ValueBias => vec![attn],
            LayerTensor::OutputWeight => vec![h, attn],
            LayerTensor::IntermediateWeight => vec![ffn, h],
            LayerTensor::IntermediateBias => vec![ffn],
            LayerTensor::FfnOutputWeight => vec![h, ffn],
            LayerTensor::OutputBias
            | LayerTensor::AttentionLnWeight
            | LayerTensor::AttentionLnBias
            | LayerTensor::FfnOutputBias
            | LayerTensor::FfnLnWeight
            | LayerTensor::FfnLnBias => vec![h],
        }
    }

    /// Parses a canonical name `layers.{i}.{suffix}` into layer index and tensor.
    pub fn parse(name: &str) -> Option<(usize, LayerTensor)> {
        let rest = name.strip_prefix("layers.")?;
        let (idx, suffix) = rest.split_once('.')?;
        let layer = idx.parse().ok()?;
        let t = LayerTensor::ALL
            .into_iter()
            .find(|t| t.suffix() == suffix)?;
        Some((layer, t))
    }
}

/// The shape the canonical tensor `name` has under `cfg`, or `None` for a name that is not a
/// tensor of this model (unknown name, layer out of range, classifier without `num_labels`).
pub fn canonical_shape(cfg: &ModelConfig, name: &str) -> Option<Vec<u64>> {
    let h = u64::from(cfg.hidden_size);
    match name {
        WORD_EMBEDDINGS => Some(vec![cfg.vocab_size.into(), h]),
        POSITION_EMBEDDINGS => Some(vec![cfg.max_position_embeddings.into(), h]),
        TOKEN_TYPE_EMBEDDINGS => Some(vec![cfg.type_vocab_size.into(), h]),
        EMBEDDINGS_LN_WEIGHT | EMBEDDINGS_LN_BIAS | POOLER_BIAS => Some(vec![h]),
        POOLER_WEIGHT => Some(vec![h, h]),
        CLASSIFIER_WEIGHT => cfg.num_labels.map(|n| vec![n.into(), h]),
        CLASSIFIER_BIAS => cfg.num_labels.map(|n| vec![n.into()]),
        _ => {
            let (layer, t) = LayerTensor::parse(name)?;
            (layer < cfg.num_layers as usize).then(|| t.shape(cfg, layer))
        }
    }
}
