//! Sentence embeddings: tokenize, encode, pool, normalize — the pipeline behind `et-run`, for
//! every front end (command line, bindings) to share.
//!
//! The settings come from the file's `embedding` object (format 1.1, written when the model was
//! converted from a sentence-transformers folder), with the defaults of a plain BERT file (mean
//! pooling, no normalization, the whole position table), and each may be overridden.
//!
//! ```no_run
//! use ets::format::EtsFile;
//! use ets::runtime::cpu::{CpuEncoder, TextTokenizer};
//! use ets::runtime::embed::{EmbedSettings, Embedder, Overrides};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let file = EtsFile::open(std::path::Path::new("model.ets"))?;
//! let settings = EmbedSettings::resolve(&file, &Overrides::default())?;
//! let tokenizer = TextTokenizer::from_file_with_max_len(&file, settings.max_length)?;
//! let embedder = Embedder::new(Box::new(CpuEncoder::new(&file)?), tokenizer, settings);
//! let vectors = embedder.embed(&["a sentence", "another one"], 32)?; // [2 * hidden_size]
//! # let _ = vectors; Ok(()) }
//! ```

use crate::format::EtsFile;
use crate::runtime::cpu::{TextTokenizer, Tokenized};
use crate::runtime::{Encoder, Pooling, RuntimeError, TokenBatch};

/// How token states become sentence vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbedSettings {
    /// Pooling over each sequence's tokens.
    pub pooling: Pooling,
    /// Scale each vector to unit L2 norm.
    pub normalize: bool,
    /// Longest sequence in tokens (special tokens included); longer inputs are truncated.
    pub max_length: usize,
}

/// Settings that replace the file's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Pooling to use instead of the file's.
    pub pooling: Option<Pooling>,
    /// Normalization to use instead of the file's.
    pub normalize: Option<bool>,
    /// Maximum length to use instead of the file's (capped by the position table).
    pub max_length: Option<usize>,
}

/// The pooling a registry name means (`mean`, `cls`).
pub fn pooling_from_name(name: &str) -> Option<Pooling> {
    match name {
        "mean" => Some(Pooling::Mean),
        "cls" => Some(Pooling::Cls),
        _ => None,
    }
}

/// The registry name of a pooling.
pub fn pooling_name(p: Pooling) -> &'static str {
    match p {
        Pooling::Mean => "mean",
        Pooling::Cls => "cls",
    }
}

impl EmbedSettings {
    /// The file's settings with `overrides` applied. A pooling name the file records but this
    /// library does not know is an error unless the pooling is overridden; a maximum length above
    /// the position table is an error.
    pub fn resolve(file: &EtsFile, overrides: &Overrides) -> Result<EmbedSettings, RuntimeError> {
        let positions = file.model().max_position_embeddings as usize;
        let recorded = file.header().embedding.clone().unwrap_or_default();
        let pooling = match (overrides.pooling, recorded.pooling.as_deref()) {
            (Some(p), _) => p,
            (None, None) => Pooling::Mean,
            (None, Some(name)) => pooling_from_name(name).ok_or_else(|| {
                RuntimeError::BadConfig(format!(
                    "the file asks for {name:?} pooling, which this version does not know \
                     (known: mean, cls); choose one with --pooling"
                ))
            })?,
        };
        let normalize = overrides.normalize.or(recorded.normalize).unwrap_or(false);
        let max_length = overrides
            .max_length
            .or(recorded.max_length.map(|n| n as usize))
            .unwrap_or(positions);
        if max_length == 0 || max_length > positions {
            return Err(RuntimeError::BadConfig(format!(
                "maximum length {max_length} must be 1 to {positions} (max_position_embeddings)"
            )));
        }
        Ok(EmbedSettings {
            pooling,
            normalize,
            max_length,
        })
    }
}

/// Divides each `hidden`-wide row by its L2 norm (a zero row stays zero).
pub fn normalize_rows(values: &mut [f32], hidden: usize) {
    for row in values.chunks_exact_mut(hidden.max(1)) {
        let norm = row
            .iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt();
        if norm > 0.0 {
            for x in row.iter_mut() {
                *x = (f64::from(*x) / norm) as f32;
            }
        }
    }
}

/// Pooled (and, when `settings` say so, normalized) vectors of token sequences,
/// `[sequences * hidden_size]`, computed `batch_size` sequences at a time.
pub(crate) fn embed_sequences(
    encoder: &dyn Encoder,
    settings: &EmbedSettings,
    batch: &TokenBatch,
    batch_size: usize,
) -> Result<Vec<f32>, RuntimeError> {
    let hidden = encoder.config().hidden_size as usize;
    let mut out = Vec::with_capacity(batch.sequences.len().saturating_mul(hidden));
    for chunk in batch.sequences.chunks(batch_size.max(1)) {
        let part = TokenBatch {
            sequences: chunk.to_vec(),
        };
        out.extend(encoder.embed_normalized(&part, settings.pooling, settings.normalize)?);
    }
    Ok(out)
}

/// An encoder with its tokenizer and settings.
pub struct Embedder<'f> {
    encoder: Box<dyn Encoder + 'f>,
    tokenizer: TextTokenizer,
    settings: EmbedSettings,
}

impl std::fmt::Debug for Embedder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl<'f> Embedder<'f> {
    /// Puts the parts together; the tokenizer should truncate to `settings.max_length`.
    pub fn new(
        encoder: Box<dyn Encoder + 'f>,
        tokenizer: TextTokenizer,
        settings: EmbedSettings,
    ) -> Embedder<'f> {
        Embedder {
            encoder,
            tokenizer,
            settings,
        }
    }

    /// The settings in use.
    pub fn settings(&self) -> &EmbedSettings {
        &self.settings
    }

    /// Width of one vector.
    pub fn hidden_size(&self) -> usize {
        self.encoder.config().hidden_size as usize
    }

    /// The encoder.
    pub fn encoder(&self) -> &dyn Encoder {
        &*self.encoder
    }

    /// Tokenizes texts (truncated to the maximum length; the caller decides how to warn).
    pub fn tokenize(&self, texts: &[&str]) -> Result<Tokenized, RuntimeError> {
        self.tokenizer.encode(texts)
    }

    /// Pooled (and, when the settings say so, normalized) vectors of token sequences,
    /// `[sequences * hidden_size]`, computed `batch_size` sequences at a time.
    pub fn embed_tokens(
        &self,
        batch: &TokenBatch,
        batch_size: usize,
    ) -> Result<Vec<f32>, RuntimeError> {
        embed_sequences(&*self.encoder, &self.settings, batch, batch_size)
    }

    /// Sentence vectors of texts, `[texts * hidden_size]`.
    pub fn embed(&self, texts: &[&str], batch_size: usize) -> Result<Vec<f32>, RuntimeError> {
        let tokenized = self.tokenize(texts)?;
        self.embed_tokens(&tokenized.batch, batch_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_get_unit_norm() {
        let mut v = vec![3.0, 4.0, 0.0, 0.0];
        normalize_rows(&mut v, 2);
        assert_eq!(v, vec![0.6, 0.8, 0.0, 0.0]);
    }

    #[test]
    fn pooling_names_round_trip() {
        for p in [Pooling::Mean, Pooling::Cls] {
            assert_eq!(pooling_from_name(pooling_name(p)), Some(p));
        }
        assert_eq!(pooling_from_name("max"), None);
    }
}
