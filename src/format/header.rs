//! The JSON header of a `.ets` file: model configuration, recipe, provenance and the section table.
//!
//! The header is JSON because it is small next to the weights, every language can read it, and a
//! person can inspect it with `et-inspect --json`. Writers emit it canonically (keys in the order of
//! these structs, no whitespace) so the same model gives the same bytes.

use serde::{Deserialize, Serialize};

/// Element type of a tensor's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// IEEE 754 binary32.
    F32,
    /// IEEE 754 binary16.
    F16,
    /// bfloat16 (the upper half of a binary32).
    Bf16,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
        }
    }
    /// The name used in the header.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        }
    }
    /// Parses a header name (`f32`, `f16`, `bf16`).
    pub fn from_name(s: &str) -> Option<Dtype> {
        match s {
            "f32" => Some(Dtype::F32),
            "f16" => Some(Dtype::F16),
            "bf16" => Some(Dtype::Bf16),
            _ => None,
        }
    }
}

/// How the elements of a tile are ordered inside the tile's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TileLayout {
    /// Row-major: element (i, j) of a `th x tw` tile is value `i * tw + j`.
    #[serde(rename = "row-major")]
    RowMajor,
}

/// How a tensor's bytes encode its logical (dense) shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Encoding {
    /// All elements, row-major.
    Dense,
    /// Kept tiles of a tile grid, with a tile bitmap and block-row offsets.
    Tile {
        /// Tile height in elements.
        tile_rows: u32,
        /// Tile width in elements.
        tile_cols: u32,
        /// Order of elements inside a tile.
        layout: TileLayout,
        /// Whether each kept tile carries a bitmap of its kept elements (irregular sparsity).
        element_bitmaps: bool,
    },
    /// Kept rows: sorted row indices plus the compacted `[kept_rows, cols]` matrix.
    Rows,
    /// Kept columns: sorted column indices plus the compacted `[rows, kept_cols]` matrix.
    Cols,
}

impl Encoding {
    /// The part roles this encoding stores, in file order.
    pub fn part_roles(&self) -> &'static [PartRole] {
        match self {
            Encoding::Dense => &[PartRole::Values],
            Encoding::Tile {
                element_bitmaps: false,
                ..
            } => &[PartRole::TileBitmap, PartRole::RowOffsets, PartRole::Values],
            Encoding::Tile {
                element_bitmaps: true,
                ..
            } => &[
                PartRole::TileBitmap,
                PartRole::RowOffsets,
                PartRole::ElementBitmaps,
                PartRole::ElementOffsets,
                PartRole::Values,
            ],
            Encoding::Rows | Encoding::Cols => &[PartRole::Indices, PartRole::Values],
        }
    }
    /// A short human name (`dense`, `tile`, `tile+elements`, `rows`, `cols`).
    pub fn short_name(&self) -> &'static str {
        match self {
            Encoding::Dense => "dense",
            Encoding::Tile {
                element_bitmaps: false,
                ..
            } => "tile",
            Encoding::Tile {
                element_bitmaps: true,
                ..
            } => "tile+elements",
            Encoding::Rows => "rows",
            Encoding::Cols => "cols",
        }
    }
}

/// The role of one array inside a tensor section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartRole {
    /// Element values in the encoding's order.
    Values,
    /// One bit per tile of the grid (u64 words, little-endian, LSB first).
    TileBitmap,
    /// u32 prefix sums of kept tiles per block row (`grid_rows + 1` entries).
    RowOffsets,
    /// One bitmap per kept tile over its elements (u64 words).
    ElementBitmaps,
    /// u32 prefix sums of kept elements per kept tile (`kept_tiles + 1` entries).
    ElementOffsets,
    /// u32 kept row or column indices, strictly increasing.
    Indices,
}

impl PartRole {
    /// The name used in the header.
    pub fn name(self) -> &'static str {
        match self {
            PartRole::Values => "values",
            PartRole::TileBitmap => "tile_bitmap",
            PartRole::RowOffsets => "row_offsets",
            PartRole::ElementBitmaps => "element_bitmaps",
            PartRole::ElementOffsets => "element_offsets",
            PartRole::Indices => "indices",
        }
    }
}

/// Hidden activation of the feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// GELU with the exact erf form.
    Gelu,
    /// GELU with the tanh approximation.
    GeluTanh,
    /// ReLU.
    Relu,
}

/// Architecture configuration of the encoder stored in the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Always `bert` in v1.
    pub architecture: String,
    /// Number of encoder layers.
    pub num_layers: u32,
    /// Width of the hidden states.
    pub hidden_size: u32,
    /// Attention heads of the unpruned model.
    pub num_heads: u32,
    /// Width of one attention head (`hidden_size / num_heads` in the source model).
    pub head_dim: u32,
    /// Kept heads per layer; differs from `num_heads` after head pruning.
    pub heads_per_layer: Vec<u32>,
    /// Width of the feed-forward block.
    pub intermediate_size: u32,
    /// Rows of the word embedding table.
    pub vocab_size: u32,
    /// Rows of the position embedding table.
    pub max_position_embeddings: u32,
    /// Rows of the token-type embedding table.
    pub type_vocab_size: u32,
    /// Epsilon of every LayerNorm.
    pub layer_norm_eps: f64,
    /// Feed-forward activation.
    pub activation: Activation,
    /// Output classes of the classifier head, when the file has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_labels: Option<u32>,
}

/// Where the weights came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Provenance {
    /// File name (no directories) of the source model.
    pub source_name: String,
    /// Lowercase hex SHA-256 of the source file.
    pub source_sha256: String,
    /// Name and version of the program that wrote the file.
    pub converter: String,
}

/// One array inside a tensor section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartEntry {
    /// What the array holds.
    pub role: PartRole,
    /// Absolute byte offset in the file.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
}

/// One entry of the section table, as stored in the header.
///
/// Fields not used by a section's kind are absent. Unknown keys are ignored so that a newer minor
/// version may add optional fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SectionEntry {
    /// Unique name (canonical tensor name, or e.g. `tokenizer`).
    pub name: String,
    /// `tensor`, `tokenizer`, or a kind defined by a later minor version.
    pub kind: String,
    /// A reader that does not know `kind` must reject the file when this is true.
    pub required: bool,
    /// Absolute byte offset of the section.
    pub offset: u64,
    /// Length of the section in bytes.
    pub length: u64,
    /// Lowercase hex SHA-256 of the section's bytes.
    pub sha256: String,
    /// Tensor element type (tensors only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    /// Logical dense shape (tensors only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<Vec<u64>>,
    /// Encoding (tensors only), kept as raw JSON until validated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<serde_json::Value>,
    /// Arrays of the tensor (tensors only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<Vec<PartEntry>>,
    /// Blob format for non-tensor sections (`tokenizer.json`, `vocab.txt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

/// Pooling names of the `embedding` object's registry (format 1.1).
pub const POOLING_NAMES: [&str; 2] = ["mean", "cls"];

/// How the model's token states become one sentence embedding (format 1.1, optional): the settings
/// of the sentence-transformers model it came from. Every key is optional; a runtime uses its own
/// default for an absent one (mean pooling, no normalization, the position table's length).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbeddingConfig {
    /// `mean` (over the sequence's tokens) or `cls` (the first token's state). The container
    /// accepts any string; a runtime refuses to default to a name it does not know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooling: Option<String>,
    /// Whether the pooled vector is scaled to unit L2 norm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalize: Option<bool>,
    /// Longest input in tokens (special tokens included); longer inputs are truncated. At most
    /// `model.max_position_embeddings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<u32>,
}

impl EmbeddingConfig {
    /// Whether no key is set.
    pub fn is_empty(&self) -> bool {
        self.pooling.is_none() && self.normalize.is_none() && self.max_length.is_none()
    }
}

/// The whole header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Byte alignment of every section and part (a power of two, 256 to 65536).
    pub alignment: u64,
    /// The encoder's architecture.
    pub model: ModelConfig,
    /// The pruning recipe that produced the file (free-form object).
    pub recipe: serde_json::Value,
    /// Source and converter.
    pub provenance: Provenance,
    /// Sentence-embedding settings (format 1.1; absent in 1.0 files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<EmbeddingConfig>,
    /// Sections in file order.
    pub sections: Vec<SectionEntry>,
}
