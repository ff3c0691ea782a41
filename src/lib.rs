//! ets: tile-sparse transformer encoders.
//!
//! - [`files`]: capped reads, confined inputs, output and temporary-file rules shared by the tools.
//! - [`format`]: the `.ets` container (spec in `spec/`): reader, writer, tile helpers.
//! - [`ingest`]: source models (safetensors, ONNX) read as canonical BERT tensors.
//! - [`prune`]: pruning methods that turn dense weights into tile, row, column or element encodings.
//! - [`sentences`]: sentences from text files and TSVs with a header.
//! - [`runtime`]: the CPU reference runtime and the CUDA runtime.
#![deny(missing_docs)]

pub mod convert;
pub mod files;
pub mod format;
pub mod ingest;
pub mod prune;
pub mod runtime;
pub mod sentences;
