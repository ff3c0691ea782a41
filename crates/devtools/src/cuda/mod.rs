//! Device checks and benchmarks of the CUDA runtime, used by `et-bench` and the GPU tests.

pub mod bench;
pub mod checks;
pub mod small;
pub mod upload_sweep;
