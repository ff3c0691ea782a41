//! Errors of the source readers.

use std::path::PathBuf;

/// Why a source model could not be read.
///
/// Every variant names the file, tensor or node at fault so that a user can find it.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Reading a file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The file is neither `.safetensors` nor `.onnx`.
    #[error("{path}: unknown model format (expected a .safetensors or .onnx file)")]
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },
    /// A model folder holds only PyTorch pickles, which ets does not read.
    #[error("{dir}: only a PyTorch pickle ({file}) found; ets reads safetensors and ONNX, not pickles. Convert to safetensors first, e.g. in Python: `from transformers import AutoModel; AutoModel.from_pretrained(DIR).save_pretrained(DIR, safe_serialization=True)`")]
    PickleOnly {
        /// The folder.
        dir: PathBuf,
        /// The pickle found.
        file: PathBuf,
    },
    /// A folder without a model file.
    #[error("{dir}: no model found (expected model.safetensors, model.safetensors.index.json with its shards, model.onnx or onnx/model.onnx)")]
    NoModelInFolder {
        /// The folder.
        dir: PathBuf,
    },
    /// The safetensors container itself is malformed (truncated, bad header, bad offsets).
    #[error("{path}: invalid safetensors file: {reason}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What the parser reported.
        reason: String,
    },
    /// No config.json was found or given for a safetensors model.
    #[error("no config.json beside {model}; pass one with --config")]
    MissingConfig {
        /// The model file.
        model: PathBuf,
    },
    /// The model is not an architecture this converter supports (found before any other check).
    #[error("{path}: {found} is not supported; supported: BERT encoders (model_type \"bert\": BERT, MiniLM, sentence-transformers BERT models)")]
    UnsupportedModel {
        /// The file that says what the model is.
        path: PathBuf,
        /// What was found, e.g. `model_type "gpt2"`.
        found: String,
    },
    /// config.json is not valid JSON or lacks a required field.
    #[error("{path}: invalid config: {reason}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Tensors are missing or have shapes that disagree with the configuration (all listed).
    #[error("{path}: {} problem(s) with the weights:\n  {}", problems.len(), problems.join("\n  "))]
    Shapes {
        /// The model file.
        path: PathBuf,
        /// One line per missing tensor or wrong shape.
        problems: Vec<String>,
    },
    /// A tensor uses an element type this reader cannot convert to f32.
    #[error("{path}: tensor {tensor} has unsupported element type {dtype}")]
    UnsupportedDtype {
        /// The model file.
        path: PathBuf,
        /// The source tensor's name.
        tensor: String,
        /// The element type, as the source names it.
        dtype: String,
    },
    /// A tensor's stored data is inconsistent (wrong byte length, bad dims).
    #[error("{path}: tensor {tensor}: {reason}")]
    BadTensor {
        /// The model file.
        path: PathBuf,
        /// The source tensor's name.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// A canonical tensor name that this source does not have.
    #[error("{path}: no tensor {name} in this model")]
    NoSuchTensor {
        /// The model file.
        path: PathBuf,
        /// The canonical name asked for.
        name: String,
    },
    /// The ONNX protobuf could not be decoded (truncated or not ONNX).
    #[error("{path}: not a valid ONNX model: {reason}")]
    OnnxDecode {
        /// The model file.
        path: PathBuf,
        /// The decoder's message.
        reason: String,
    },
    /// The ONNX default-domain opset is outside the supported range.
    #[error("{path}: ONNX opset {opset} is not supported (supported: 11 to 21)")]
    UnsupportedOpset {
        /// The model file.
        path: PathBuf,
        /// The opset the model imports.
        opset: i64,
    },
    /// The graph uses operators this reader does not understand (all listed, with counts).
    #[error("{path}: unsupported ONNX operators:\n  {}", ops.join("\n  "))]
    UnsupportedOps {
        /// The model file.
        path: PathBuf,
        /// One line per operator type: `Op x count (nodes: a, b, ...)`.
        ops: Vec<String>,
    },
    /// An initializer's external data cannot be used.
    #[error("{path}: tensor {tensor}: external data {location:?}: {reason}")]
    ExternalData {
        /// The model file.
        path: PathBuf,
        /// The initializer's name.
        tensor: String,
        /// The `location` entry as written in the model.
        location: String,
        /// What is wrong (absolute path, leaves the model's folder, missing, out of range).
        reason: String,
    },
    /// A file beside the model that would be embedded is a link out of the model's folder, or not a
    /// regular file.
    #[error("{path}: not used: {reason}; only regular files inside the model's folder are embedded (name one with --tokenizer FILE)")]
    UnsafeFile {
        /// The file found beside the model.
        path: PathBuf,
        /// Where it leads, or what it is.
        reason: String,
    },
    /// A tokenizer file does not parse.
    #[error("{path}: not a usable tokenizer: {reason}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// The graph is not a BERT encoder this reader recognises.
    #[error("{path}: not a BERT encoder graph: {reason} (at {at})")]
    NotBert {
        /// The model file.
        path: PathBuf,
        /// The node or tensor where recognition failed.
        at: String,
        /// What was expected there.
        reason: String,
    },
    /// A node's attributes or inputs are outside what this reader supports.
    #[error("{path}: node {node} ({op}): {reason}")]
    BadNode {
        /// The model file.
        path: PathBuf,
        /// The node's name.
        node: String,
        /// The node's operator type.
        op: String,
        /// What is wrong.
        reason: String,
    },
}

/// Most lines kept in a list of problems; the rest are counted in one last line.
pub const MAX_PROBLEMS: usize = 20;

/// Keeps the first [`MAX_PROBLEMS`] lines and replaces the rest with `... and N more`.
pub(crate) fn cap_problems(mut problems: Vec<String>) -> Vec<String> {
    if problems.len() > MAX_PROBLEMS {
        let more = problems.len() - MAX_PROBLEMS;
        problems.truncate(MAX_PROBLEMS);
        problems.push(format!("... and {more} more"));
    }
    problems
}

impl IngestError {
    /// Wraps an I/O error with the file it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        IngestError::Io {
            path: path.into(),
            source,
        }
    }
}
