//! Reading source models (safetensors + config.json, ONNX) into canonical BERT tensors.
//!
//! [`open_source`] picks a reader by file extension (or content) and returns a [`ModelSource`]:
//! the model's configuration, the canonical tensor names it has (see [`crate::format::names`]),
//! and one tensor at a time as f32 in canonical layout (linear weights `[out, in]`). Readers map
//! the file and decode a tensor only when asked, so a converter never holds the whole model.

mod config;
mod error;
pub mod folder;
mod onnx;
mod safetensors_src;

use std::fs::File;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::files;
use crate::format::names::{self, LayerTensor};
use crate::format::{ModelConfig, Provenance};

pub use error::{IngestError, MAX_PROBLEMS};
pub use onnx::OnnxSource;
pub use safetensors_src::SafetensorsSource;

/// Options for [`open_source`].
#[derive(Debug, Clone, Default)]
pub struct IngestOptions {
    /// A Hugging Face `config.json` to use instead of the one beside the model.
    pub config: Option<PathBuf>,
    /// A `tokenizer.json` or `vocab.txt` to use instead of the one beside the model.
    pub tokenizer: Option<PathBuf>,
}

/// One tensor in canonical layout, as f32.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceTensor {
    /// Canonical shape, e.g. `[out, in]` for a linear weight.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

/// The tokenizer files found for a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizerBlob {
    /// `tokenizer.json` or `vocab.txt`.
    pub format: String,
    /// The file's bytes.
    pub bytes: Vec<u8>,
}

/// A source model read as canonical BERT tensors.
pub trait ModelSource {
    /// The architecture (`heads_per_layer` is `[num_heads; num_layers]`).
    fn config(&self) -> &ModelConfig;
    /// Canonical names present, in canonical order: embeddings, layers 0.. in
    /// [`LayerTensor::ALL`] order, pooler, classifier.
    fn tensor_names(&self) -> Vec<String>;
    /// Decodes one tensor as f32 in canonical layout.
    fn load(&self, name: &str) -> Result<SourceTensor, IngestError>;
    /// Source file name, its SHA-256, and this converter's name and version.
    fn provenance(&self) -> Provenance;
    /// The tokenizer found beside the model or given in the options.
    fn tokenizer(&self) -> Option<TokenizerBlob>;
    /// Whether the source stores its weights as 8-bit integers (the output, in f16, bf16 or
    /// f32, is then larger than the source).
    fn quantized_int8(&self) -> bool {
        false
    }
}

/// Opens a `.safetensors` (with its `config.json`), a shard index, an `.onnx` model, or a model
/// folder (see [`folder`]).
pub fn open_source(
    path: &Path,
    opts: &IngestOptions,
) -> Result<Box<dyn ModelSource + Send + Sync>, IngestError> {
    if path.is_dir() {
        let (model, opts) = resolve_folder(path, opts)?;
        return open_file(&model, &opts);
    }
    open_file(path, opts)
}

/// The model file of a folder (inside the Transformer module's folder for sentence-transformers),
/// and the options with the folder's tokenizer when the model file sits in a subfolder without one.
pub fn resolve_folder(
    dir: &Path,
    opts: &IngestOptions,
) -> Result<(PathBuf, IngestOptions), IngestError> {
    let transformer = match folder::sentence_transformers(dir)? {
        Some(st) => st.transformer_dir,
        None => dir.to_path_buf(),
    };
    let model = folder::model_file(&transformer)?;
    let mut opts = opts.clone();
    let beside = model_dir(&model);
    let has_own = ["tokenizer.json", "vocab.txt"]
        .iter()
        .any(|n| std::fs::symlink_metadata(beside.join(n)).is_ok());
    if opts.tokenizer.is_none() && !has_own {
        for root in [&transformer, &dir.to_path_buf()] {
            let found = ["tokenizer.json", "vocab.txt"]
                .iter()
                .map(|n| root.join(n))
                .find(|p| std::fs::symlink_metadata(p).is_ok());
            if let Some(p) = found {
                files::confined_file(root, &p).map_err(|reason| IngestError::UnsafeFile {
                    path: p.clone(),
                    reason,
                })?;
                opts.tokenizer = Some(p);
                break;
            }
        }
    }
    if opts.config.is_none() && !beside.join("config.json").is_file() {
        let p = transformer.join("config.json");
        if p.is_file() {
            opts.config = Some(p);
        }
    }
    Ok((model, opts))
}

fn open_file(
    path: &Path,
    opts: &IngestOptions,
) -> Result<Box<dyn ModelSource + Send + Sync>, IngestError> {
    if safetensors_src::is_index(path) {
        return Ok(Box::new(SafetensorsSource::open(path, opts)?));
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("safetensors") => Ok(Box::new(SafetensorsSource::open(path, opts)?)),
        Some("onnx") => Ok(Box::new(OnnxSource::open(path, opts)?)),
        _ => {
            // No telling extension: a safetensors file starts with a little-endian header length
            // followed by `{`; anything else is tried as ONNX protobuf.
            let mut head = [0u8; 9];
            let n = read_prefix(path, &mut head)?;
            if n == 9 && head[8] == b'{' {
                Ok(Box::new(SafetensorsSource::open(path, opts)?))
            } else if n > 0 && matches!(head[0], 0x08 | 0x12 | 0x1a | 0x22 | 0x3a | 0x42) {
                Ok(Box::new(OnnxSource::open(path, opts)?))
            } else {
                Err(IngestError::UnknownFormat {
                    path: path.to_path_buf(),
                })
            }
        }
    }
}

fn read_prefix(path: &Path, buf: &mut [u8]) -> Result<usize, IngestError> {
    use std::io::Read;
    let mut f = File::open(path).map_err(|e| IngestError::io(path, e))?;
    let mut n = 0;
    while n < buf.len() {
        let got = f
            .read(&mut buf[n..])
            .map_err(|e| IngestError::io(path, e))?;
        if got == 0 {
            break;
        }
        n += got;
    }
    Ok(n)
}

/// Maps a file read-only.
pub(crate) fn map_file(path: &Path) -> Result<memmap2::Mmap, IngestError> {
    let file = File::open(path).map_err(|e| IngestError::io(path, e))?;
    // SAFETY: the map is read-only; a concurrent writer could change the bytes under us, which
    // can give wrong values but not memory unsafety in the byte-slice readers used here.
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| IngestError::io(path, e))
}

/// Provenance of a source file. The SHA-256 of the whole file is computed on a background thread
/// with plain reads (not through the mapping, so hashing does not add the file to the resident set)
/// while the conversion runs; [`SourceProvenance::get`] waits for it.
pub(crate) struct SourceProvenance {
    source_name: String,
    digest: std::sync::Mutex<DigestState>,
}

enum DigestState {
    Running(std::thread::JoinHandle<std::io::Result<String>>),
    Done(String),
}

impl SourceProvenance {
    /// Starts hashing `path`.
    pub(crate) fn start(path: &Path) -> SourceProvenance {
        SourceProvenance::start_files(path, vec![path.to_path_buf()])
    }

    /// Starts hashing the bytes of `files` one after the other (the shards of a model), under the
    /// name of `path`.
    pub(crate) fn start_files(path: &Path, files: Vec<PathBuf>) -> SourceProvenance {
        let handle = std::thread::spawn(move || {
            use std::io::Read;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            for owned in &files {
                let mut file = File::open(owned)?;
                loop {
                    let n = file.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                }
            }
            Ok(crate::format::hex(&hasher.finalize()))
        });
        SourceProvenance {
            source_name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            digest: std::sync::Mutex::new(DigestState::Running(handle)),
        }
    }

    /// The provenance, waiting for the digest if it is still running. A file that could not be
    /// re-read leaves the digest empty (it was readable when opened; the conversion itself does
    /// not depend on it).
    pub(crate) fn get(&self) -> Provenance {
        let mut state = match self.digest.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let DigestState::Running(_) = &*state {
            let placeholder = DigestState::Done(String::new());
            if let DigestState::Running(h) = std::mem::replace(&mut *state, placeholder) {
                let hex = h.join().ok().and_then(Result::ok).unwrap_or_default();
                *state = DigestState::Done(hex);
            }
        }
        let hex = match &*state {
            DigestState::Done(h) => h.clone(),
            DigestState::Running(_) => String::new(),
        };
        Provenance {
            source_name: self.source_name.clone(),
            source_sha256: hex,
            converter: format!("ets {}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// Finds the tokenizer: the given file, else `tokenizer.json`, else `vocab.txt` beside the model.
///
/// A file found beside the model is embedded in the output, so it must be a regular file inside the
/// model's folder once symbolic links are resolved (the rule of ONNX external data); a link that
/// leads elsewhere is refused, never followed. Every tokenizer is read up to
/// [`files::MAX_TOKENIZER_BYTES`] and parsed here, so that a broken one fails the conversion
/// rather than the first run.
pub(crate) fn find_tokenizer(
    model: &Path,
    opts: &IngestOptions,
) -> Result<Option<TokenizerBlob>, IngestError> {
    let read = |p: &Path, format: &str| -> Result<TokenizerBlob, IngestError> {
        let bytes =
            files::read_capped(p, files::MAX_TOKENIZER_BYTES).map_err(|e| IngestError::io(p, e))?;
        crate::runtime::cpu::TextTokenizer::from_bytes(format, &bytes, 512).map_err(|e| {
            IngestError::Tokenizer {
                path: p.to_path_buf(),
                reason: e.to_string(),
            }
        })?;
        Ok(TokenizerBlob {
            format: format.to_string(),
            bytes,
        })
    };
    if let Some(p) = &opts.tokenizer {
        return read(p, tokenizer_format(p)).map(Some);
    }
    let dir = model_dir(model);
    for format in ["tokenizer.json", "vocab.txt"] {
        let p = dir.join(format);
        if std::fs::symlink_metadata(&p).is_err() {
            continue;
        }
        files::confined_file(&dir, &p).map_err(|reason| IngestError::UnsafeFile {
            path: p.clone(),
            reason,
        })?;
        return read(&p, format).map(Some);
    }
    Ok(None)
}

/// The tokenizer format a file's name implies: `vocab.txt` for `.txt`, else `tokenizer.json`.
pub fn tokenizer_format(path: &Path) -> &'static str {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("txt"))
    {
        "vocab.txt"
    } else {
        "tokenizer.json"
    }
}

/// The folder of a model file (`.` for a bare file name).
pub(crate) fn model_dir(model: &Path) -> PathBuf {
    match model.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Canonical names in canonical order for a model with `layers` layers.
pub(crate) fn canonical_names(layers: usize, pooler: bool, classifier: bool) -> Vec<String> {
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
    if pooler {
        out.push(names::POOLER_WEIGHT.to_string());
        out.push(names::POOLER_BIAS.to_string());
    }
    if classifier {
        out.push(names::CLASSIFIER_WEIGHT.to_string());
        out.push(names::CLASSIFIER_BIAS.to_string());
    }
    out
}

/// The shape a canonical tensor must have under `cfg`, or `None` for an unknown name.
pub(crate) fn expected_shape(cfg: &ModelConfig, name: &str) -> Option<Vec<usize>> {
    names::canonical_shape(cfg, name).map(|s| s.into_iter().map(|d| d as usize).collect())
}

/// Checks that every name in `wanted` is present with the shape `cfg` implies; lists all problems.
pub(crate) fn check_shapes(
    path: &Path,
    cfg: &ModelConfig,
    wanted: &[String],
    shape_of: impl Fn(&str) -> Option<(String, Vec<usize>)>,
) -> Result<(), IngestError> {
    let mut problems = Vec::new();
    for name in wanted {
        let Some(expected) = expected_shape(cfg, name) else {
            problems.push(format!("{name}: not a tensor of this configuration"));
            continue;
        };
        match shape_of(name) {
            None => problems.push(format!("{name}: missing (expected shape {expected:?})")),
            Some((source, shape)) if shape != expected => problems.push(format!(
                "{name} (source {source}): shape {shape:?}, expected {expected:?}"
            )),
            Some(_) => {}
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(IngestError::Shapes {
            path: path.to_path_buf(),
            problems: error::cap_problems(problems),
        })
    }
}
