//! The test kit of ets: what tests, fixtures and benchmarks share, kept out of the library's
//! public API. Used as a dev-dependency of `ets` and as a dependency of `ets-dev`.
//!
//! - [`rng`]: the one seeded random generator, and the seed of each randomized test.
//! - [`conformance`]: the `.ets` conformance fixtures (valid files, one invalid file per reject
//!   rule) and their manifest.
//! - [`linear`]: the f64 oracle of the linear layer, error measures and the norm-ranked tile mask.
//! - [`models`]: random BERT weights of any shape, written as `.ets` files.
//! - [`sources`]: the tiny synthetic source models (safetensors, ONNX in several export styles).
//! - [`reference`](mod@reference): an independent f64 BERT forward pass, the oracle of the runtimes' tests.
#![deny(missing_docs)]

pub mod conformance;
pub mod linear;
pub mod models;
pub mod reference;
pub mod rng;
pub mod sources;
