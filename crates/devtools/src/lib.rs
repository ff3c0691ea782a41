//! Developer tools of ets (benchmarks, generators, the GPU check runner); not installed by
//! `cargo install --path .`.

pub mod cuda;
