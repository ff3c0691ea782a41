//! The test kit of ets: what tests, fixtures and benchmarks share, kept out of the library's
//! public API. Used as a dev-dependency of `ets` and as a dependency of `ets-dev`.
#![deny(missing_docs)]

pub mod rng;
