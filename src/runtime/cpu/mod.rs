//! The CPU reference runtime: a BERT forward pass straight from the stored encodings.
//!
//! [`CpuEncoder`] borrows an [`EtsFile`](crate::format::EtsFile) and computes on its mapped
//! weights in whatever encoding (dense, tile, tile with element bitmaps, rows, cols) and dtype
//! (f32, f16, bf16) they are stored, converting block by block to f32. Work is spread over the
//! rayon thread pool by output blocks and token rows. [`TextTokenizer`] turns text into token ids
//! with the tokenizer embedded in the file; [`npy`] reads and writes `.npy` arrays.

mod encoder;
mod gemm;
mod linear;
pub mod npy;
mod ops;
mod simd;
pub mod tokenize;

pub(crate) use encoder::Layer;
pub use encoder::{CpuEncoder, LayerTrace};
pub use tokenize::{TextTokenizer, Tokenized, Truncation};
