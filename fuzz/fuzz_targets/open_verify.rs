//! Arbitrary bytes through the whole reader: structural validation, checksum verification, and
//! every view a caller can take of a file that opened. Nothing may panic.
#![no_main]

use ets::format::{EtsFile, TensorData};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(f) = EtsFile::from_bytes(data) else {
        return;
    };
    let _ = f.verify_checksums();
    let _ = f.section("tokenizer");
    for t in f.tensors() {
        let _ = t.density();
        // Densifying allocates the logical shape, which a tiny file can declare huge.
        if t.numel() <= 1 << 20 {
            let dense = t.to_dense_f32();
            assert_eq!(dense.len(), t.numel());
        }
        if let TensorData::Tile(v) = t.data {
            let mut tile = vec![0f32; v.tile_rows * v.tile_cols];
            let mut seen = 0;
            for br in 0..v.grid_rows.min(1 << 12) {
                for (k, _) in v.row_tiles(br) {
                    v.tile_f32(k, &mut tile);
                    seen += 1;
                }
            }
            assert!(seen <= v.kept_tiles());
        }
    }
});
