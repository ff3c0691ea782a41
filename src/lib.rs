//! ets: tile-sparse transformer encoders.
//!
//! - [`format`]: the `.ets` container (spec in `spec/`): reader, writer, tile helpers.
//! - [`ingest`]: source models (safetensors, ONNX) read as canonical BERT tensors.
//! - [`prune`]: pruning methods that turn dense weights into tile, row, column or element encodings.
//! - [`runtime`]: the CPU reference runtime and the CUDA runtime.
#![deny(missing_docs)]

pub mod convert;
pub mod format;
pub mod ingest;
pub mod prune;
pub mod runtime;
