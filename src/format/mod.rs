//! The `.ets` container format, version 1 (see `spec/`).
//!
//! A file is a 64-byte preamble, a JSON header, then sections aligned to the header's alignment.
//! [`EtsFile`] maps and validates a file; [`EtsWriter`] writes one atomically; [`tiles`] builds and
//! walks tile-encoded tensors.

mod error;
mod header;
pub mod names;
mod reader;
mod strict_json;
pub mod tiles;
mod validate;
mod validate_data;
mod writer;

pub use error::FormatError;
pub use header::{
    Activation, Dtype, EmbeddingConfig, Encoding, Header, ModelConfig, PartEntry, PartRole,
    Provenance, SectionEntry, TileLayout, POOLING_NAMES,
};
pub use reader::{hex, EtsFile, SectionView, TensorData, TensorView};
pub use tiles::{EncodedTensor, TileView};
pub use writer::{EtsWriter, WriteOptions};

/// The eight magic bytes that open every `.ets` file.
pub const MAGIC: [u8; 8] = *b"\x89ETS\r\n\x1a\n";
/// Major version this library reads and writes.
pub const VERSION_MAJOR: u16 = 1;
/// Minor version this library writes for files that use only version 1.0 features.
pub const VERSION_MINOR: u16 = 0;
/// Minor version written for files with `embedding` metadata (the lowest that defines it).
pub const VERSION_MINOR_EMBEDDING: u16 = 1;
/// The endianness marker as a u32; stored little-endian it reads `04 03 02 01`.
pub const ENDIAN_MARKER: u32 = 0x0102_0304;
/// Size of the fixed preamble.
pub const PREAMBLE_LEN: u64 = 64;
/// Largest header accepted, in bytes.
pub const MAX_HEADER_LEN: u64 = 16 << 20;
/// Most sections a file may have.
pub const MAX_SECTIONS: usize = 65_536;
/// Deepest JSON nesting accepted in the header.
pub const MAX_JSON_DEPTH: usize = 16;
/// Highest rank of a tensor.
pub const MAX_RANK: usize = 4;
/// Largest single dimension.
pub const MAX_DIM: u64 = 1 << 31;
/// Largest offset or length (so every value is exact as an IEEE double in other languages' JSON).
pub const MAX_FILE_LEN: u64 = 1 << 53;
/// Smallest and largest alignment.
pub const MIN_ALIGNMENT: u64 = 256;
/// Largest alignment.
pub const MAX_ALIGNMENT: u64 = 65_536;
/// Allowed tile edge lengths.
pub const TILE_EDGES: [u32; 5] = [8, 16, 32, 64, 128];
/// Longest section name in bytes.
pub const MAX_NAME_LEN: usize = 256;
