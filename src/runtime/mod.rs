//! Runtimes that execute a `.ets` encoder: the CPU reference and the CUDA backend.
//!
//! Both backends implement [`Encoder`]: a [`TokenBatch`] of token-id sequences (of any lengths)
//! goes in, an [`EncoderOutput`] with the final hidden states (and, on request, the hidden states
//! after the embeddings and after every layer) comes out. Hidden states are *packed*: the tokens of
//! sequence 0, then those of sequence 1, and so on, with no padding rows, so masked pooling is just
//! pooling over a sequence's own rows.
//!
//! ```no_run
//! use ets::format::EtsFile;
//! use ets::runtime::{cpu::CpuEncoder, Encoder, Pooling, TokenBatch};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let file = EtsFile::open(std::path::Path::new("model.ets"))?;
//! let encoder = CpuEncoder::new(&file)?;
//! let batch = TokenBatch::from_ids(vec![vec![101, 7592, 102], vec![101, 102]]);
//! let out = encoder.forward(&batch)?;
//! let embeddings = out.pool(Pooling::Mean); // [2 * hidden_size]
//! # let _ = embeddings; Ok(()) }
//! ```

pub mod cpu;
pub mod cuda;
pub mod embed;
pub mod shared;

use crate::format::{FormatError, ModelConfig};

/// Errors of the runtimes and of text tokenization.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The file could not be read or is structurally invalid.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// A tensor the forward pass needs is missing from the file.
    #[error("tensor `{name}` is missing from the file")]
    MissingTensor {
        /// Canonical tensor name.
        name: String,
    },
    /// A tensor has a shape other than the model configuration implies.
    #[error("tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    BadShape {
        /// Canonical tensor name.
        name: String,
        /// Shape implied by the model configuration.
        expected: Vec<u64>,
        /// Shape stored in the file.
        actual: Vec<u64>,
    },
    /// The model configuration cannot be run (e.g. `heads_per_layer` has the wrong length).
    #[error("unsupported model configuration: {0}")]
    BadConfig(String),
    /// A token id is outside the vocabulary.
    #[error("sequence {sequence}, position {position}: token id {id} is outside the vocabulary of {vocab_size}")]
    TokenOutOfRange {
        /// Index of the sequence in the batch.
        sequence: usize,
        /// Position in the sequence.
        position: usize,
        /// The offending id.
        id: u32,
        /// Rows of the word embedding table.
        vocab_size: u32,
    },
    /// A token-type id is outside the token-type table.
    #[error("sequence {sequence}, position {position}: token type {id} is outside the {type_vocab_size} token types")]
    TokenTypeOutOfRange {
        /// Index of the sequence in the batch.
        sequence: usize,
        /// Position in the sequence.
        position: usize,
        /// The offending token type.
        id: u32,
        /// Rows of the token-type table.
        type_vocab_size: u32,
    },
    /// A sequence is longer than the position table (tokenize with truncation first).
    #[error("sequence {sequence} has {len} tokens, more than max_position_embeddings = {max}")]
    SequenceTooLong {
        /// Index of the sequence in the batch.
        sequence: usize,
        /// Its length.
        len: usize,
        /// `max_position_embeddings` of the model.
        max: usize,
    },
    /// A sequence has no tokens, or its token-type ids do not match its ids in length.
    #[error("sequence {sequence}: {reason}")]
    BadSequence {
        /// Index of the sequence in the batch.
        sequence: usize,
        /// What is wrong.
        reason: String,
    },
    /// The file embeds no tokenizer but text input was given.
    #[error("the model file has no embedded tokenizer (section `tokenizer`); give token ids instead of text, or convert the model with its tokenizer.json or vocab.txt")]
    NoTokenizer,
    /// The embedded tokenizer could not be built or failed on an input.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The requested backend cannot run here.
    #[error("{0}")]
    Unavailable(String),
    /// The CUDA runtime failed (no usable GPU, a library missing, a kernel or cuBLAS error).
    #[error(transparent)]
    Cuda(#[from] cuda::CudaError),
}

/// One input sequence: token ids (with the special tokens already added) and their token types.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenSequence {
    /// Token ids, e.g. `[CLS] ... [SEP]`.
    pub ids: Vec<u32>,
    /// Token-type (segment) ids, same length as `ids`.
    pub type_ids: Vec<u32>,
}

impl TokenSequence {
    /// A sequence whose token types are all 0.
    pub fn new(ids: Vec<u32>) -> TokenSequence {
        let type_ids = vec![0; ids.len()];
        TokenSequence { ids, type_ids }
    }
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    /// Whether the sequence has no tokens.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// A batch of sequences of possibly different lengths.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenBatch {
    /// The sequences, in order.
    pub sequences: Vec<TokenSequence>,
}

impl TokenBatch {
    /// A batch from token ids only (token types 0).
    pub fn from_ids(ids: Vec<Vec<u32>>) -> TokenBatch {
        TokenBatch {
            sequences: ids.into_iter().map(TokenSequence::new).collect(),
        }
    }
    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.sequences.len()
    }
    /// Whether the batch has no sequences.
    pub fn is_empty(&self) -> bool {
        self.sequences.is_empty()
    }
    /// Length of the longest sequence.
    pub fn max_len(&self) -> usize {
        self.sequences.iter().map(|s| s.len()).max().unwrap_or(0)
    }
    /// Total tokens over all sequences.
    pub fn total_tokens(&self) -> usize {
        self.sequences.iter().map(|s| s.len()).sum()
    }
    /// The batch padded to `[len, max_len]`: ids (padding id 0), token types and attention mask
    /// (1 for real tokens), row-major. For backends that compute on padded tensors.
    pub fn padded(&self) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
        let (n, l) = (self.len(), self.max_len());
        let mut ids = vec![0; n * l];
        let mut types = vec![0; n * l];
        let mut mask = vec![0; n * l];
        for (i, s) in self.sequences.iter().enumerate() {
            for (j, (&id, &t)) in s.ids.iter().zip(&s.type_ids).enumerate() {
                ids[i * l + j] = id;
                types[i * l + j] = t;
                mask[i * l + j] = 1;
            }
        }
        (ids, types, mask)
    }
}

/// Checks a batch against the model: every sequence non-empty, no longer than the position
/// table, with as many token types as tokens, and every id inside its table.
pub(crate) fn check_batch(c: &ModelConfig, batch: &TokenBatch) -> Result<(), RuntimeError> {
    for (si, s) in batch.sequences.iter().enumerate() {
        if s.ids.is_empty() {
            return Err(RuntimeError::BadSequence {
                sequence: si,
                reason: "no tokens".to_string(),
            });
        }
        if s.type_ids.len() != s.ids.len() {
            return Err(RuntimeError::BadSequence {
                sequence: si,
                reason: format!(
                    "{} token-type ids for {} tokens",
                    s.type_ids.len(),
                    s.ids.len()
                ),
            });
        }
        if s.ids.len() > c.max_position_embeddings as usize {
            return Err(RuntimeError::SequenceTooLong {
                sequence: si,
                len: s.ids.len(),
                max: c.max_position_embeddings as usize,
            });
        }
        for (position, (&id, &t)) in s.ids.iter().zip(&s.type_ids).enumerate() {
            if id >= c.vocab_size {
                return Err(RuntimeError::TokenOutOfRange {
                    sequence: si,
                    position,
                    id,
                    vocab_size: c.vocab_size,
                });
            }
            if t >= c.type_vocab_size {
                return Err(RuntimeError::TokenTypeOutOfRange {
                    sequence: si,
                    position,
                    id: t,
                    type_vocab_size: c.type_vocab_size,
                });
            }
        }
    }
    Ok(())
}

/// How token states become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooling {
    /// Mean over the sequence's real tokens (padding never counts).
    #[default]
    Mean,
    /// The first token's (`[CLS]`) state.
    Cls,
}

/// What a forward pass returns beyond the final hidden states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ForwardOptions {
    /// Keep the hidden states after the embeddings and after every layer.
    pub output_hidden_states: bool,
}

/// The result of a forward pass over a [`TokenBatch`].
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderOutput {
    /// Width of a hidden state.
    pub hidden_size: usize,
    /// Tokens of each sequence, in batch order.
    pub lengths: Vec<usize>,
    /// Final hidden states, packed `[total_tokens, hidden_size]`.
    pub last_hidden: Vec<f32>,
    /// With [`ForwardOptions::output_hidden_states`]: `num_layers + 1` packed arrays, the embedding
    /// output first, then the output of each layer (the last equals `last_hidden`).
    pub hidden_states: Option<Vec<Vec<f32>>>,
    /// `tanh(W h_cls + b)` per sequence, `[batch, hidden_size]`, when the file has a pooler.
    pub pooler_output: Option<Vec<f32>>,
    /// Classifier logits `[batch, num_labels]`, when the file has a classifier head (applied to
    /// the pooler output, or to the `[CLS]` state when there is no pooler).
    pub logits: Option<Vec<f32>>,
}

impl EncoderOutput {
    /// Row offset of sequence `i`'s first token in the packed arrays.
    pub fn offset(&self, i: usize) -> usize {
        self.lengths.iter().take(i).sum()
    }
    /// Final hidden states of sequence `i`, `[len_i, hidden_size]`, or `None` past the batch.
    pub fn sequence(&self, i: usize) -> Option<&[f32]> {
        let len = *self.lengths.get(i)?;
        let start = self.offset(i) * self.hidden_size;
        self.last_hidden.get(start..start + len * self.hidden_size)
    }
    /// One vector per sequence, `[batch, hidden_size]` row-major.
    pub fn pool(&self, pooling: Pooling) -> Vec<f32> {
        pool_packed(&self.last_hidden, &self.lengths, self.hidden_size, pooling)
    }
}

/// Pools packed hidden states `[sum(lengths), hidden]` into `[lengths.len(), hidden]`.
///
/// Mean pooling averages each sequence's own rows (so it is masked by construction); an empty
/// sequence gives zeros.
pub fn pool_packed(packed: &[f32], lengths: &[usize], hidden: usize, pooling: Pooling) -> Vec<f32> {
    let mut out = vec![0f32; lengths.len() * hidden];
    let mut start = 0usize;
    for (dst, &len) in out.chunks_exact_mut(hidden.max(1)).zip(lengths) {
        let rows = packed
            .get(start * hidden..(start + len) * hidden)
            .unwrap_or(&[]);
        match pooling {
            Pooling::Cls => {
                if let Some(first) = rows.get(..hidden) {
                    dst.copy_from_slice(first);
                }
            }
            Pooling::Mean => {
                // Sum in f64 so long sequences do not lose low bits.
                let mut acc = vec![0f64; hidden];
                for row in rows.chunks_exact(hidden.max(1)) {
                    for (a, &v) in acc.iter_mut().zip(row) {
                        *a += f64::from(v);
                    }
                }
                let n = (rows.len() / hidden.max(1)).max(1) as f64;
                for (d, a) in dst.iter_mut().zip(&acc) {
                    *d = (*a / n) as f32;
                }
            }
        }
        start += len;
    }
    out
}

/// A backend that runs the encoder stored in a `.ets` file.
///
/// Encoders are `Send + Sync`: one encoder may serve several threads (each call takes what it
/// needs; the CUDA encoder serialises passes on its buffers).
pub trait Encoder: Send + Sync {
    /// The model's configuration.
    fn config(&self) -> &ModelConfig;
    /// Runs the encoder with options.
    fn forward_with(
        &self,
        batch: &TokenBatch,
        options: &ForwardOptions,
    ) -> Result<EncoderOutput, RuntimeError>;
    /// Runs the encoder, returning the final hidden states (and pooler/classifier outputs).
    fn forward(&self, batch: &TokenBatch) -> Result<EncoderOutput, RuntimeError> {
        self.forward_with(batch, &ForwardOptions::default())
    }
    /// Pooled sentence vectors `[batch, hidden_size]`.
    fn embed(&self, batch: &TokenBatch, pooling: Pooling) -> Result<Vec<f32>, RuntimeError> {
        Ok(self.forward(batch)?.pool(pooling))
    }
    /// A table of what ran for each projection on `batch`, with its time and cuBLAS's, for
    /// runtimes that choose a kernel per weight (`et-run --report`); `None` where every weight
    /// runs one way.
    fn dispatch_report(&self, _batch: &TokenBatch) -> Result<Option<String>, RuntimeError> {
        Ok(None)
    }
    /// Pooled sentence vectors `[batch, hidden_size]`, each scaled to unit length when
    /// `normalize` is set (a zero vector stays zero).
    fn embed_normalized(
        &self,
        batch: &TokenBatch,
        pooling: Pooling,
        normalize: bool,
    ) -> Result<Vec<f32>, RuntimeError> {
        let mut v = self.embed(batch, pooling)?;
        if normalize {
            embed::normalize_rows(&mut v, self.config().hidden_size as usize);
        }
        Ok(v)
    }
    /// Gets ready for batches of up to `max_tokens` tokens in up to `max_seqs` sequences
    /// (buffers sized once, kernels loaded, one pass run), where the runtime has such work to do
    /// before a first batch; the default does nothing.
    fn warm_up(&self, _max_tokens: usize, _max_seqs: usize) -> Result<(), RuntimeError> {
        Ok(())
    }
    /// Host time of the passes since [`Encoder::warm_up`] (or the start) by phase, for runtimes
    /// that keep it (`et-run --report`); `None` elsewhere.
    fn pass_report(&self) -> Option<String> {
        None
    }
}

/// A tensor of the model by name; a missing one is [`RuntimeError::MissingTensor`].
pub(crate) fn model_tensor<'f>(
    file: &'f crate::format::EtsFile,
    name: &str,
) -> Result<crate::format::TensorView<'f>, RuntimeError> {
    file.tensor(name).map_err(|e| match e {
        crate::format::FormatError::MissingTensor { .. } => RuntimeError::MissingTensor {
            name: name.to_string(),
        },
        other => RuntimeError::Format(other),
    })
}

/// The FFN width of one layer, read from its intermediate weight (`[n, hidden]`, `n > 0`).
pub(crate) fn ffn_width(
    file: &crate::format::EtsFile,
    c: &crate::format::ModelConfig,
    layer: usize,
) -> Result<usize, RuntimeError> {
    let name = crate::format::names::LayerTensor::IntermediateWeight.name(layer);
    let h = c.hidden_size as u64;
    match model_tensor(file, &name)?.shape {
        [n, k] if *k == h && *n > 0 => Ok(*n as usize),
        other => Err(RuntimeError::BadShape {
            expected: vec![c.intermediate_size as u64, h],
            actual: other.to_vec(),
            name,
        }),
    }
}
