//! Deterministic synthetic models for the valid fixtures: a tiny BERT in every encoding and
//! dtype, a minimal two-tensor example, and a small file with one tensor per encoding.

use std::path::Path;

use sha2::{Digest, Sha256};

use ets::format::hex;
use ets::format::names::{self, LayerTensor};
use ets::format::{
    Activation, Dtype, EmbeddingConfig, EncodedTensor, EtsWriter, FormatError, ModelConfig,
    Provenance, WriteOptions,
};

use crate::rng::Rng;

/// How the linear weights of a fixture model are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FixtureEncoding {
    /// Every tensor dense.
    Dense,
    /// Tile encoding with this tile shape.
    Tile(usize, usize),
    /// Tile encoding with per-tile element bitmaps.
    TileElements(usize, usize),
    /// Kept rows.
    Rows,
    /// Kept columns.
    Cols,
}

/// The encodings the model fixtures are written in.
pub const FIXTURE_ENCODINGS: [FixtureEncoding; 7] = [
    FixtureEncoding::Dense,
    FixtureEncoding::Tile(16, 16),
    FixtureEncoding::Tile(32, 32),
    FixtureEncoding::Tile(16, 32),
    FixtureEncoding::TileElements(16, 16),
    FixtureEncoding::Rows,
    FixtureEncoding::Cols,
];

impl FixtureEncoding {
    /// A file-name friendly label.
    pub fn label(self) -> String {
        match self {
            FixtureEncoding::Dense => "dense".into(),
            FixtureEncoding::Tile(h, w) => format!("tile{h}x{w}"),
            FixtureEncoding::TileElements(h, w) => format!("tile{h}x{w}-elements"),
            FixtureEncoding::Rows => "rows".into(),
            FixtureEncoding::Cols => "cols".into(),
        }
    }
}

/// A dense tensor of the synthetic model.
#[derive(Debug, Clone)]
pub struct DenseTensor {
    /// Canonical name.
    pub name: String,
    /// Shape.
    pub shape: Vec<u64>,
    /// Row-major values.
    pub data: Vec<f32>,
    /// Whether pruning applies (2-D linear weight of a layer).
    pub linear: bool,
}

/// The configuration of the tiny BERT fixtures.
pub fn tiny_bert_config() -> ModelConfig {
    ModelConfig {
        architecture: "bert".into(),
        num_layers: 2,
        hidden_size: 32,
        num_heads: 2,
        head_dim: 16,
        heads_per_layer: vec![2, 2],
        intermediate_size: 64,
        vocab_size: 50,
        max_position_embeddings: 16,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
        activation: Activation::Gelu,
        num_labels: Some(2),
    }
}

/// A 50-token WordPiece vocabulary matching [`tiny_bert_config`].
pub fn tiny_vocab() -> String {
    let mut words = vec!["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
    words.extend([
        "the", "a", "movie", "film", "is", "was", "good", "bad", "great", "not", "very", "and",
        "but", "it", "this", "that", "fun", "dull", "story", "acting", "!", ".", ",", "i", "love",
        "hate", "plot", "##s", "##ly", "##ing", "##ed", "best", "worst", "ever", "so", "too", "of",
        "to", "in", "with", "boring", "funny", "sad", "happy", "long",
    ]);
    words.iter().map(|w| format!("{w}\n")).collect()
}

fn vector(rng: &mut Rng, n: usize, center: f32, spread: f32) -> Vec<f32> {
    (0..n)
        .map(|_| center + rng.range_f32(-spread, spread))
        .collect()
}

/// All tensors of the tiny BERT (with pooler and classifier), canonical names, writer order.
pub fn tiny_bert_tensors(cfg: &ModelConfig, seed: u64) -> Vec<DenseTensor> {
    let mut rng = Rng::new(seed);
    let h = cfg.hidden_size as u64;
    let labels = u64::from(cfg.num_labels.unwrap_or(2));
    let mut out = Vec::new();
    let mut push = |name: String, shape: Vec<u64>, linear: bool, rng: &mut Rng| {
        let n = shape.iter().product::<u64>() as usize;
        let data = if name.ends_with("layer_norm.weight") {
            vector(rng, n, 1.0, 0.1)
        } else if name.ends_with(".bias") {
            vector(rng, n, 0.0, 0.02)
        } else {
            vector(rng, n, 0.0, 0.1)
        };
        out.push(DenseTensor {
            name,
            shape,
            data,
            linear,
        });
    };
    push(
        names::WORD_EMBEDDINGS.into(),
        vec![cfg.vocab_size.into(), h],
        false,
        &mut rng,
    );
    let pos = cfg.max_position_embeddings.into();
    push(
        names::POSITION_EMBEDDINGS.into(),
        vec![pos, h],
        false,
        &mut rng,
    );
    let types = cfg.type_vocab_size.into();
    push(
        names::TOKEN_TYPE_EMBEDDINGS.into(),
        vec![types, h],
        false,
        &mut rng,
    );
    push(names::EMBEDDINGS_LN_WEIGHT.into(), vec![h], false, &mut rng);
    push(names::EMBEDDINGS_LN_BIAS.into(), vec![h], false, &mut rng);
    for layer in 0..cfg.num_layers as usize {
        for t in LayerTensor::ALL {
            let shape = t.shape(cfg, layer);
            push(t.name(layer), shape, t.is_linear_weight(), &mut rng);
        }
    }
    push(names::POOLER_WEIGHT.into(), vec![h, h], false, &mut rng);
    push(names::POOLER_BIAS.into(), vec![h], false, &mut rng);
    push(
        names::CLASSIFIER_WEIGHT.into(),
        vec![labels, h],
        false,
        &mut rng,
    );
    push(names::CLASSIFIER_BIAS.into(), vec![labels], false, &mut rng);
    out
}

/// Encodes one tensor; masks come from `rng` (at least one row, column or tile is kept).
pub fn encode(
    t: &DenseTensor,
    enc: FixtureEncoding,
    dtype: Dtype,
    rng: &mut Rng,
) -> Result<EncodedTensor, FormatError> {
    let (rows, cols) = match t.shape[..] {
        [r, c] if t.linear => (r as usize, c as usize),
        _ => return EncodedTensor::dense(t.shape.clone(), dtype, &t.data),
    };
    let data = &t.data;
    match enc {
        FixtureEncoding::Dense => EncodedTensor::dense(t.shape.clone(), dtype, data),
        FixtureEncoding::Tile(th, tw) => {
            let n = rows.div_ceil(th) * cols.div_ceil(tw);
            let mut keep: Vec<bool> = (0..n).map(|_| rng.chance(0.6)).collect();
            keep[rng.next_u64() as usize % n] = true;
            EncodedTensor::tile(rows, cols, data, th, tw, &keep, dtype)
        }
        FixtureEncoding::TileElements(th, tw) => {
            let keep: Vec<bool> = (0..rows * cols).map(|_| rng.chance(0.5)).collect();
            EncodedTensor::tile_elements(rows, cols, data, th, tw, &keep, dtype)
        }
        FixtureEncoding::Rows | FixtureEncoding::Cols => {
            let bound = if enc == FixtureEncoding::Rows {
                rows
            } else {
                cols
            };
            let first = (rng.next_u64() as usize % bound) as u32;
            let kept: Vec<u32> = (0..bound as u32)
                .filter(|&i| i == first || rng.chance(0.75))
                .collect();
            if enc == FixtureEncoding::Rows {
                EncodedTensor::rows(rows, cols, data, &kept, dtype)
            } else {
                EncodedTensor::cols(rows, cols, data, &kept, dtype)
            }
        }
    }
}

/// The provenance recorded in every fixture.
pub fn fixture_provenance(source: &str) -> Provenance {
    Provenance {
        source_name: source.to_string(),
        source_sha256: hex(&Sha256::digest(source.as_bytes())),
        converter: "et-fixtures (format v1)".into(),
    }
}

/// Seed of the tiny BERT weights (shared by every encoding and dtype, so the files hold the same
/// model and differ only in how it is stored).
pub const TINY_BERT_SEED: u64 = 0x0e75_0001;

/// Writes the tiny BERT in one encoding and dtype.
pub fn write_tiny_bert(path: &Path, enc: FixtureEncoding, dtype: Dtype) -> Result<(), FormatError> {
    let cfg = tiny_bert_config();
    let tensors = tiny_bert_tensors(&cfg, TINY_BERT_SEED);
    // Masks depend on the encoding only, so the f32, f16 and bf16 files keep the same elements.
    let mut rng = Rng::new(
        TINY_BERT_SEED
            ^ enc
                .label()
                .bytes()
                .fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(u64::from(b))),
    );
    let mut w = EtsWriter::create(path, WriteOptions { overwrite: true })?;
    for t in &tensors {
        w.add_tensor(&t.name, &encode(t, enc, dtype, &mut rng)?)?;
    }
    w.add_blob(
        names::TOKENIZER_SECTION,
        "tokenizer",
        "vocab.txt",
        tiny_vocab().as_bytes(),
        true,
    )?;
    let recipe = serde_json::json!({
        "method": "synthetic",
        "encoding": enc.label(),
        "dtype": dtype.name(),
        "seed": TINY_BERT_SEED,
    });
    w.finish(cfg, recipe, fixture_provenance("tiny-bert-synthetic"))
}

/// Tensor names of the tiny example.
pub const TINY_TILE: &str = "layers.0.attention.query.weight";
/// The dense tensor of the tiny example.
pub const TINY_DENSE: &str = "layers.0.attention.query.bias";

/// The tiny example's configuration (one layer of hidden size 32).
pub fn tiny_example_config() -> ModelConfig {
    ModelConfig {
        num_layers: 1,
        heads_per_layer: vec![2],
        vocab_size: 8,
        max_position_embeddings: 8,
        num_labels: None,
        ..tiny_bert_config()
    }
}

/// The 32x32 matrix of the tiny example: element (r, c) is `(32 r + c) / 64 - 8`, exact in f16.
pub fn tiny_example_matrix() -> Vec<f32> {
    (0..32 * 32).map(|i| i as f32 / 64.0 - 8.0).collect()
}

/// Writes the tiny example: a 32x32 f16 matrix in 16x16 tiles keeping the two diagonal tiles,
/// and a dense f16 vector of 32 elements `i / 4`.
pub fn write_tiny_example(path: &Path) -> Result<(), FormatError> {
    let keep = [true, false, false, true];
    let tile = EncodedTensor::tile(32, 32, &tiny_example_matrix(), 16, 16, &keep, Dtype::F16)?;
    let bias: Vec<f32> = (0..32).map(|i| i as f32 / 4.0).collect();
    let mut w = EtsWriter::create(path, WriteOptions { overwrite: true })?;
    w.add_tensor(TINY_TILE, &tile)?;
    w.add_tensor(
        TINY_DENSE,
        &EncodedTensor::dense(vec![32], Dtype::F16, &bias)?,
    )?;
    let recipe = serde_json::json!({"method": "example", "kept_tiles": 2});
    w.finish(
        tiny_example_config(),
        recipe,
        fixture_provenance("tiny-example"),
    )
}

/// Writes the tiny example's tensors with embedding settings (format 1.1): mean pooling,
/// normalized, at most 8 tokens.
pub fn write_tiny_example_embedding(path: &Path) -> Result<(), FormatError> {
    let keep = [true, false, false, true];
    let tile = EncodedTensor::tile(32, 32, &tiny_example_matrix(), 16, 16, &keep, Dtype::F16)?;
    let bias: Vec<f32> = (0..32).map(|i| i as f32 / 4.0).collect();
    let mut w = EtsWriter::create(path, WriteOptions { overwrite: true })?;
    w.add_tensor(TINY_TILE, &tile)?;
    w.add_tensor(
        TINY_DENSE,
        &EncodedTensor::dense(vec![32], Dtype::F16, &bias)?,
    )?;
    w.set_embedding(EmbeddingConfig {
        pooling: Some("mean".into()),
        normalize: Some(true),
        max_length: Some(8),
    });
    let recipe = serde_json::json!({"method": "example", "kept_tiles": 2});
    w.finish(
        tiny_example_config(),
        recipe,
        fixture_provenance("minor-1-embedding"),
    )
}

/// Writes one small tensor per encoding, shapes not multiples of the tile, plus a tokenizer.
pub fn write_encodings_small(path: &Path) -> Result<(), FormatError> {
    let mut rng = Rng::new(0x0e75_0002);
    let mut matrix =
        |r: usize, c: usize| -> Vec<f32> { (0..r * c).map(|_| rng.range_f32(-1.0, 1.0)).collect() };
    let dense = EncodedTensor::dense(vec![3, 5], Dtype::F32, &matrix(3, 5))?;
    let keep = [true, false, true, true];
    let tile = EncodedTensor::tile(20, 24, &matrix(20, 24), 16, 16, &keep, Dtype::F32)?;
    // Keep every third element: edge tiles keep elements in their last rows and columns.
    let ekeep: Vec<bool> = (0..400).map(|i| i % 3 == 0).collect();
    let elements =
        EncodedTensor::tile_elements(20, 20, &matrix(20, 20), 16, 16, &ekeep, Dtype::F16)?;
    let rows = EncodedTensor::rows(6, 4, &matrix(6, 4), &[1, 4], Dtype::Bf16)?;
    let cols = EncodedTensor::cols(4, 6, &matrix(4, 6), &[0, 2, 5], Dtype::F32)?;
    let mut w = EtsWriter::create(path, WriteOptions { overwrite: true })?;
    w.add_tensor("dense", &dense)?;
    w.add_tensor("tile", &tile)?;
    w.add_tensor("elements", &elements)?;
    w.add_tensor("rows", &rows)?;
    w.add_tensor("cols", &cols)?;
    w.add_blob(
        names::TOKENIZER_SECTION,
        "tokenizer",
        "vocab.txt",
        b"[PAD]\n[UNK]\n",
        true,
    )?;
    let recipe = serde_json::json!({"method": "encodings"});
    w.finish(
        tiny_example_config(),
        recipe,
        fixture_provenance("encodings-small"),
    )
}
