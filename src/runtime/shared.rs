//! An embedder that shares ownership of its file, for front ends that keep encoders behind
//! handles (the C ABI, the Python module): the file lives as long as the last encoder built on it,
//! whatever order the handles are closed in.
//!
//! ```no_run
//! use std::sync::Arc;
//! use ets::format::EtsFile;
//! use ets::runtime::embed::Overrides;
//! use ets::runtime::shared::{Device, SharedEmbedder};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let file = Arc::new(EtsFile::open("model.ets")?);
//! let embedder = SharedEmbedder::new(file, Device::Auto, &Overrides::default())?;
//! let vectors = embedder.embed(&["a sentence"], 32)?; // [hidden_size], on the GPU when there is one
//! # let _ = vectors; Ok(()) }
//! ```

use std::sync::Arc;

use crate::format::EtsFile;
use crate::runtime::cpu::{CpuEncoder, TextTokenizer};
use crate::runtime::cuda::{cuda_available, CudaEncoder};
use crate::runtime::embed::{embed_sequences, EmbedSettings, Overrides};
use crate::runtime::{Encoder, RuntimeError, TokenBatch};

/// Where an encoder runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// The CPU reference runtime.
    Cpu,
    /// The CUDA runtime; an error when no usable GPU is present.
    Cuda,
    /// CUDA when usable, else the CPU.
    Auto,
}

impl Device {
    /// The device a name means (`cpu`, `cuda`, `auto`).
    pub fn from_name(name: &str) -> Result<Device, RuntimeError> {
        match name {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda),
            "auto" => Ok(Device::Auto),
            other => Err(RuntimeError::BadConfig(format!(
                "unknown device {other:?} (known: cpu, cuda, auto)"
            ))),
        }
    }
}

/// The encoder for `device` and the name of the runtime chosen (`cpu` or `cuda`); with
/// [`Device::Auto`], also the reason CUDA was not used when it was not.
#[allow(clippy::type_complexity)]
pub fn open_encoder(
    device: Device,
    file: &EtsFile,
) -> Result<(Box<dyn Encoder + '_>, &'static str, Option<String>), RuntimeError> {
    let cuda = || -> Result<CudaEncoder, String> {
        cuda_available()?;
        CudaEncoder::new(file).map_err(|e| e.to_string())
    };
    match device {
        Device::Cpu => Ok((Box::new(CpuEncoder::new(file)?), "cpu", None)),
        Device::Cuda => match cuda() {
            Ok(e) => Ok((Box::new(e), "cuda", None)),
            Err(e) => Err(RuntimeError::Unavailable(format!(
                "CUDA runtime not available: {e}"
            ))),
        },
        Device::Auto => match cuda() {
            Ok(e) => Ok((Box::new(e), "cuda", None)),
            Err(e) => Ok((
                Box::new(CpuEncoder::new(file)?),
                "cpu",
                Some(format!("CUDA runtime not available ({e}); using the CPU")),
            )),
        },
    }
}

/// An encoder, the file's tokenizer when it has one, and the embedding settings, owning a share
/// of the file the encoder reads.
pub struct SharedEmbedder {
    // Declared before `file` so that it drops first: it borrows the file's mapping.
    encoder: Box<dyn Encoder + 'static>,
    tokenizer: Result<TextTokenizer, RuntimeError>,
    settings: EmbedSettings,
    device: &'static str,
    fallback: Option<String>,
    file: Arc<EtsFile>,
}

impl std::fmt::Debug for SharedEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedEmbedder")
            .field("device", &self.device)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl SharedEmbedder {
    /// Builds the encoder on `device` with the file's embedding settings and `overrides`. A file
    /// without a tokenizer still embeds token ids; [`SharedEmbedder::embed`] then fails.
    pub fn new(
        file: Arc<EtsFile>,
        device: Device,
        overrides: &Overrides,
    ) -> Result<SharedEmbedder, RuntimeError> {
        // SAFETY: the reference points into the `Arc`'s allocation, which never moves and lives
        // until the last clone drops. `self.file` is such a clone, and `self.encoder`, the only
        // holder of the extended reference, is declared before it and so dropped before it.
        // The `'static` never escapes: every accessor returns borrows of `self`.
        let borrowed: &'static EtsFile = unsafe { &*Arc::as_ptr(&file) };
        let settings = EmbedSettings::resolve(borrowed, overrides)?;
        let tokenizer = TextTokenizer::from_file_with_max_len(borrowed, settings.max_length);
        let (encoder, name, fallback) = open_encoder(device, borrowed)?;
        Ok(SharedEmbedder {
            encoder,
            tokenizer,
            settings,
            device: name,
            fallback,
            file,
        })
    }

    /// The file.
    pub fn file(&self) -> &EtsFile {
        &self.file
    }

    /// The runtime in use: `cpu` or `cuda`.
    pub fn device(&self) -> &'static str {
        self.device
    }

    /// Why CUDA was not used when [`Device::Auto`] fell back to the CPU.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback.as_deref()
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

    /// The tokenizer, or why the file has none usable.
    pub fn tokenizer(&self) -> Result<&TextTokenizer, RuntimeError> {
        self.tokenizer.as_ref().map_err(|e| match e {
            RuntimeError::NoTokenizer => RuntimeError::NoTokenizer,
            RuntimeError::Tokenizer(reason) => RuntimeError::Tokenizer(reason.clone()),
            other => RuntimeError::Unavailable(other.to_string()),
        })
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

    /// Sentence vectors of texts, `[texts * hidden_size]` (longer texts truncated to the
    /// maximum length, as `et-run` does).
    pub fn embed(&self, texts: &[&str], batch_size: usize) -> Result<Vec<f32>, RuntimeError> {
        let tokenized = self.tokenizer()?.encode(texts)?;
        self.embed_tokens(&tokenized.batch, batch_size)
    }
}
