//! The reject rules of the format, one line each, with the stable error code of each.

/// One reject rule: its number, the [`ets::format::FormatError::code`] it produces, and a
/// one-line statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// `R1` .. `R36`.
    pub id: &'static str,
    /// The error code a reader reports when a file breaks this rule.
    pub code: &'static str,
    /// What the rule requires.
    pub text: &'static str,
}

const fn r(id: &'static str, code: &'static str, text: &'static str) -> Rule {
    Rule { id, code, text }
}

/// Every reject rule, in the order a reader checks them.
pub const RULES: [Rule; 36] = [
    r(
        "R1",
        "too_short",
        "the file is at least 64 bytes long (the preamble)",
    ),
    r(
        "R2",
        "bad_magic",
        "the file starts with the 8 magic bytes 89 45 54 53 0d 0a 1a 0a",
    ),
    r("R3", "unsupported_major", "the major version is 1"),
    r(
        "R4",
        "bad_endian_marker",
        "the endianness marker reads 04 03 02 01",
    ),
    r(
        "R5",
        "header_too_large",
        "the header length is at most 16 MiB",
    ),
    r(
        "R6",
        "file_length_mismatch",
        "the preamble's file length equals the actual file length",
    ),
    r(
        "R7",
        "header_out_of_bounds",
        "the header lies inside the file",
    ),
    r(
        "R8",
        "header_digest_mismatch",
        "the preamble digest is the SHA-256 of preamble bytes 0..32 followed by the header",
    ),
    r(
        "R9",
        "invalid_header",
        "the header is UTF-8 JSON with objects where objects are defined, no repeated keys, and every required field of the right type",
    ),
    r(
        "R10",
        "header_too_deep",
        "the header's JSON nests at most 16 levels",
    ),
    r(
        "R11",
        "bad_alignment",
        "the alignment is a power of two from 256 to 65536",
    ),
    r(
        "R12",
        "invalid_model_config",
        "the model configuration is consistent (bert, non-zero dimensions, heads per layer, an embedding max_length within the position table)",
    ),
    r(
        "R13",
        "too_many_sections",
        "there are at most 65536 sections",
    ),
    r(
        "R14",
        "bad_name",
        "section names are 1 to 256 printable ASCII characters without spaces",
    ),
    r("R15", "duplicate_name", "section names are unique"),
    r(
        "R16",
        "unknown_required_section",
        "no section of an unknown kind is marked required",
    ),
    r(
        "R17",
        "unknown_dtype",
        "a tensor's dtype is f32, f16 or bf16",
    ),
    r(
        "R18",
        "unknown_encoding",
        "a tensor's encoding is dense, tile, rows or cols with exactly the defined fields",
    ),
    r(
        "R19",
        "bad_shape",
        "a shape has rank 1 to 4, dimensions 1 to 2^31, and rank 2 for tile, rows and cols",
    ),
    r(
        "R20",
        "size_overflow",
        "offsets, lengths and size computations stay below 2^53",
    ),
    r(
        "R21",
        "bad_tile_shape",
        "tile edges are 8, 16, 32, 64 or 128",
    ),
    r(
        "R22",
        "misaligned",
        "every section and part offset is a multiple of the alignment",
    ),
    r(
        "R23",
        "overlap",
        "no section or part starts before the previous one ends",
    ),
    r(
        "R24",
        "gap",
        "every section and part starts at the first aligned offset after the previous one",
    ),
    r(
        "R25",
        "out_of_bounds",
        "every section lies inside the file and every part inside its section",
    ),
    r(
        "R26",
        "trailing_bytes",
        "the file ends where the last section ends",
    ),
    r(
        "R27",
        "wrong_parts",
        "a tensor's parts are exactly its encoding's roles, in order",
    ),
    r(
        "R28",
        "part_length",
        "each part's length follows from the shape, dtype and index arrays",
    ),
    r(
        "R29",
        "section_extent",
        "a tensor section ends where its last part ends",
    ),
    r(
        "R30",
        "bitmap_padding",
        "no bitmap bit is set outside the tile grid or outside the matrix",
    ),
    r(
        "R31",
        "popcount_mismatch",
        "the tile bitmap's popcount equals the last row offset",
    ),
    r(
        "R32",
        "offsets_mismatch",
        "row and element offsets are the prefix sums of their bitmaps",
    ),
    r(
        "R33",
        "bad_indices",
        "row and column indices are strictly increasing and in range",
    ),
    r("R34", "nonzero_padding", "every padding byte is zero"),
    r(
        "R35",
        "checksum_mismatch",
        "each section's bytes hash to its recorded SHA-256",
    ),
    r(
        "R36",
        "bad_checksum_string",
        "each recorded SHA-256 is 64 lowercase hex digits",
    ),
];

/// The rule whose code is `code`.
pub fn rule_for_code(code: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.code == code)
}
