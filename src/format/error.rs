//! The one error type of the format layer. Each reject rule of the spec maps to one variant, and
//! each variant has a stable code (`FormatError::code`) that the conformance manifest names.

use std::path::PathBuf;

/// Why a `.ets` file was rejected or could not be written.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// I/O failure on a path.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// R1: the file is shorter than the 64-byte preamble.
    #[error("file is {len} bytes, shorter than the 64-byte preamble")]
    TooShort {
        /// Actual length.
        len: u64,
    },
    /// R2: the first eight bytes are not the magic.
    #[error("not an .ets file: magic bytes are {found:02x?}")]
    BadMagic {
        /// The bytes found.
        found: [u8; 8],
    },
    /// R3: a major version this reader does not know.
    #[error("unsupported major version {found} (this reader supports 1)")]
    UnsupportedMajor {
        /// Major version found.
        found: u16,
    },
    /// R4: the endianness marker is not `04 03 02 01`.
    #[error("endianness marker is {found:#010x}, expected 0x01020304 stored little-endian")]
    BadEndianMarker {
        /// Marker read as little-endian.
        found: u32,
    },
    /// R5: the header is larger than the cap.
    #[error("header length {len} exceeds the limit of {max} bytes")]
    HeaderTooLarge {
        /// Declared length.
        len: u64,
        /// The cap.
        max: u64,
    },
    /// R6: the preamble's file length disagrees with the actual file length.
    #[error("preamble says the file is {declared} bytes, it is {actual}")]
    FileLengthMismatch {
        /// Declared in the preamble.
        declared: u64,
        /// Actual length.
        actual: u64,
    },
    /// R7: the header extends past the end of the file.
    #[error("header of {len} bytes at offset 64 runs past the end of the {file_len}-byte file")]
    HeaderOutOfBounds {
        /// Declared header length.
        len: u64,
        /// File length.
        file_len: u64,
    },
    /// R8: the SHA-256 of the preamble's first 32 bytes followed by the header differs from the
    /// preamble's digest.
    #[error("header digest mismatch: preamble {expected}, header hashes to {actual}")]
    HeaderDigestMismatch {
        /// Digest stored in the preamble.
        expected: String,
        /// Digest of the header bytes.
        actual: String,
    },
    /// R9: the header is not valid UTF-8 JSON of the required shape.
    #[error("invalid header JSON: {detail}")]
    InvalidHeader {
        /// What the parser said.
        detail: String,
    },
    /// R10: the header's JSON nests deeper than allowed.
    #[error("header JSON nests {depth} levels deep, the limit is {max}")]
    HeaderTooDeep {
        /// Depth reached.
        depth: usize,
        /// The cap.
        max: usize,
    },
    /// R11: alignment is not a power of two in range.
    #[error("alignment {value} is not a power of two between 256 and 65536")]
    BadAlignment {
        /// Declared alignment.
        value: u64,
    },
    /// R12: the model configuration is inconsistent.
    #[error("invalid model configuration: {detail}")]
    InvalidModelConfig {
        /// What is wrong.
        detail: String,
    },
    /// R13: more sections than allowed.
    #[error("{count} sections, the limit is {max}")]
    TooManySections {
        /// Declared count.
        count: usize,
        /// The cap.
        max: usize,
    },
    /// R14: a section name is empty, too long, or has characters outside printable ASCII.
    #[error("invalid section name {name:?}: names are 1 to 256 printable ASCII characters")]
    BadName {
        /// The name.
        name: String,
    },
    /// R15: two sections share a name.
    #[error("duplicate section name {name:?}")]
    DuplicateName {
        /// The name.
        name: String,
    },
    /// R16: a section of unknown kind is marked required.
    #[error("section {name:?} has kind {kind:?}, unknown to this reader, and is marked required")]
    UnknownRequiredSection {
        /// Section name.
        name: String,
        /// Its kind.
        kind: String,
    },
    /// R17: unknown dtype.
    #[error("tensor {name:?}: unknown dtype {dtype:?}")]
    UnknownDtype {
        /// Tensor name.
        name: String,
        /// The dtype string.
        dtype: String,
    },
    /// R18: unknown or malformed encoding.
    #[error("tensor {name:?}: unsupported encoding {detail}")]
    UnknownEncoding {
        /// Tensor name.
        name: String,
        /// The encoding as found.
        detail: String,
    },
    /// R19: a tensor's shape breaks the rank or dimension limits, or does not fit its encoding.
    #[error("tensor {name:?}: invalid shape {shape:?}: {detail}")]
    BadShape {
        /// Tensor name.
        name: String,
        /// The shape.
        shape: Vec<u64>,
        /// Which rule.
        detail: String,
    },
    /// R20: a size computation overflows 64 bits or the file-size cap.
    #[error("tensor {name:?}: size of {what} overflows")]
    SizeOverflow {
        /// Tensor name.
        name: String,
        /// The quantity.
        what: String,
    },
    /// R21: tile edges outside the allowed set.
    #[error(
        "tensor {name:?}: tile {rows}x{cols} not allowed (edges must be 8, 16, 32, 64 or 128)"
    )]
    BadTileShape {
        /// Tensor name.
        name: String,
        /// Tile rows.
        rows: u32,
        /// Tile cols.
        cols: u32,
    },
    /// R22: a section or part offset is not a multiple of the alignment.
    #[error("{name:?}: offset {offset} is not a multiple of the alignment {alignment}")]
    Misaligned {
        /// Section (and part) name.
        name: String,
        /// Offset.
        offset: u64,
        /// Alignment.
        alignment: u64,
    },
    /// R23: a section or part starts before the previous one ends.
    #[error(
        "{name:?}: offset {offset} overlaps the previous region, which ends at {previous_end}"
    )]
    Overlap {
        /// Section (and part) name.
        name: String,
        /// Its offset.
        offset: u64,
        /// End of the previous region.
        previous_end: u64,
    },
    /// R24: a section or part starts later than the next aligned offset (hidden bytes).
    #[error("{name:?}: offset {offset} leaves a gap; the next region must start at {expected}")]
    Gap {
        /// Section (and part) name.
        name: String,
        /// Its offset.
        offset: u64,
        /// Expected offset.
        expected: u64,
    },
    /// R25: a section runs past the end of the file.
    #[error("{name:?}: bytes {offset}..{end} run past the end of the {file_len}-byte file")]
    OutOfBounds {
        /// Section name.
        name: String,
        /// Start.
        offset: u64,
        /// End.
        end: u64,
        /// File length.
        file_len: u64,
    },
    /// R26: bytes after the last section.
    #[error("{extra} bytes follow the last section (the file must end at offset {expected_end})")]
    TrailingBytes {
        /// How many extra bytes.
        extra: u64,
        /// Where the file should end.
        expected_end: u64,
    },
    /// R27: the parts of a tensor do not match its encoding.
    #[error("tensor {name:?}: parts {found:?} do not match the encoding, expected {expected:?}")]
    WrongParts {
        /// Tensor name.
        name: String,
        /// Roles expected.
        expected: Vec<String>,
        /// Roles found.
        found: Vec<String>,
    },
    /// R28: a part's length disagrees with the shape and encoding.
    #[error("tensor {name:?}: part {role} is {actual} bytes, expected {expected}")]
    PartLength {
        /// Tensor name.
        name: String,
        /// Part role.
        role: String,
        /// Expected bytes.
        expected: u64,
        /// Declared bytes.
        actual: u64,
    },
    /// R29: a tensor's parts do not exactly fill its section.
    #[error("tensor {name:?}: parts end at {parts_end}, the section ends at {section_end}")]
    SectionExtent {
        /// Tensor name.
        name: String,
        /// Where the parts end.
        parts_end: u64,
        /// Where the section ends.
        section_end: u64,
    },
    /// R30: a bitmap sets bits outside its grid (or a tile's elements outside the matrix).
    #[error("tensor {name:?}: {what} sets bits outside the grid")]
    BitmapPadding {
        /// Tensor name.
        name: String,
        /// Which bitmap.
        what: String,
    },
    /// R31: the bitmap popcount differs from the kept-tile count implied by the values.
    #[error(
        "tensor {name:?}: bitmap keeps {bitmap} tiles, row offsets and values hold {declared}"
    )]
    PopcountMismatch {
        /// Tensor name.
        name: String,
        /// Popcount of the bitmap.
        bitmap: u64,
        /// Count from the offsets.
        declared: u64,
    },
    /// R32: prefix-sum offsets disagree with their bitmap.
    #[error("tensor {name:?}: {what}[{index}] is {found}, the bitmap gives {expected}")]
    OffsetsMismatch {
        /// Tensor name.
        name: String,
        /// `row_offsets` or `element_offsets`.
        what: String,
        /// Entry index.
        index: usize,
        /// Stored value.
        found: u64,
        /// Value implied by the bitmap.
        expected: u64,
    },
    /// R33: row/column indices not strictly increasing or out of range.
    #[error("tensor {name:?}: index {value} at position {position} is out of range or not increasing (bound {bound})")]
    BadIndices {
        /// Tensor name.
        name: String,
        /// Position in the index array.
        position: usize,
        /// The index.
        value: u64,
        /// Exclusive upper bound.
        bound: u64,
    },
    /// R34: a padding byte (between header and sections, or between parts) is not zero.
    #[error("non-zero padding byte at offset {offset}")]
    NonZeroPadding {
        /// File offset of the first non-zero byte.
        offset: u64,
    },
    /// R35: a section's bytes do not hash to its recorded SHA-256.
    #[error("section {name:?}: checksum mismatch (header {expected}, data {actual})")]
    ChecksumMismatch {
        /// Section name.
        name: String,
        /// Digest in the header.
        expected: String,
        /// Digest of the bytes.
        actual: String,
    },
    /// R36: a checksum string is not 64 lowercase hex digits.
    #[error("section {name:?}: sha256 {value:?} is not 64 lowercase hex digits")]
    BadChecksumString {
        /// Section name.
        name: String,
        /// The string.
        value: String,
    },
    /// A tensor asked for by name is absent.
    #[error("tensor {name:?} is not in the file")]
    MissingTensor {
        /// Tensor name.
        name: String,
    },
    /// The caller passed inconsistent data to a builder or the writer.
    #[error("invalid tensor data for writing: {detail}")]
    InvalidInput {
        /// What is wrong.
        detail: String,
    },
    /// The output exists and overwriting was not requested.
    #[error("{path} already exists (pass --force to overwrite)")]
    OutputExists {
        /// The target.
        path: PathBuf,
    },
    /// The output path names a device, pipe, folder or dangling link: a writer that renames a
    /// finished file into place would replace it, so it refuses.
    #[error("{path} exists and is not a regular file; choose a file name")]
    OutputNotRegular {
        /// The target.
        path: PathBuf,
    },
}

impl FormatError {
    /// A stable machine-readable code, used by the conformance manifest and `et-verify --json`.
    pub fn code(&self) -> &'static str {
        use FormatError::*;
        match self {
            Io { .. } => "io",
            TooShort { .. } => "too_short",
            BadMagic { .. } => "bad_magic",
            UnsupportedMajor { .. } => "unsupported_major",
            BadEndianMarker { .. } => "bad_endian_marker",
            HeaderTooLarge { .. } => "header_too_large",
            FileLengthMismatch { .. } => "file_length_mismatch",
            HeaderOutOfBounds { .. } => "header_out_of_bounds",
            HeaderDigestMismatch { .. } => "header_digest_mismatch",
            InvalidHeader { .. } => "invalid_header",
            HeaderTooDeep { .. } => "header_too_deep",
            BadAlignment { .. } => "bad_alignment",
            InvalidModelConfig { .. } => "invalid_model_config",
            TooManySections { .. } => "too_many_sections",
            BadName { .. } => "bad_name",
            DuplicateName { .. } => "duplicate_name",
            UnknownRequiredSection { .. } => "unknown_required_section",
            UnknownDtype { .. } => "unknown_dtype",
            UnknownEncoding { .. } => "unknown_encoding",
            BadShape { .. } => "bad_shape",
            SizeOverflow { .. } => "size_overflow",
            BadTileShape { .. } => "bad_tile_shape",
            Misaligned { .. } => "misaligned",
            Overlap { .. } => "overlap",
            Gap { .. } => "gap",
            OutOfBounds { .. } => "out_of_bounds",
            TrailingBytes { .. } => "trailing_bytes",
            WrongParts { .. } => "wrong_parts",
            PartLength { .. } => "part_length",
            SectionExtent { .. } => "section_extent",
            BitmapPadding { .. } => "bitmap_padding",
            PopcountMismatch { .. } => "popcount_mismatch",
            OffsetsMismatch { .. } => "offsets_mismatch",
            BadIndices { .. } => "bad_indices",
            NonZeroPadding { .. } => "nonzero_padding",
            ChecksumMismatch { .. } => "checksum_mismatch",
            BadChecksumString { .. } => "bad_checksum_string",
            MissingTensor { .. } => "missing_tensor",
            InvalidInput { .. } => "invalid_input",
            OutputExists { .. } => "output_exists",
            OutputNotRegular { .. } => "output_not_regular",
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FormatError::Io {
            path: path.into(),
            source,
        }
    }
}
