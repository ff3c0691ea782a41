//! Every single-byte change of a valid file is rejected, by opening or by checksum verification,
//! and never with a panic: preamble, header, padding and data alike.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use ets::format::EtsFile;

fn accepted(bytes: &[u8]) -> bool {
    match EtsFile::from_bytes(bytes) {
        Ok(f) => f.verify_checksums().is_ok(),
        Err(_) => false,
    }
}

fn flip_every_byte(name: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/valid")
        .join(name);
    let original = std::fs::read(&path).unwrap();
    assert!(accepted(&original), "{name} must be valid to start with");
    let mut failures = Vec::new();
    for i in 0..original.len() {
        for mask in [0x01u8, 0xff] {
            let mut b = original.clone();
            b[i] ^= mask;
            match catch_unwind(AssertUnwindSafe(|| accepted(&b))) {
                Ok(false) => {}
                Ok(true) => failures.push(format!("byte {i} ^ {mask:#04x} accepted")),
                Err(_) => failures.push(format!("byte {i} ^ {mask:#04x} panicked")),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{name}: {} of {} changes not rejected: {:?}",
        failures.len(),
        2 * original.len(),
        &failures[..failures.len().min(20)]
    );
}

#[test]
fn every_byte_of_the_tiny_example_matters() {
    flip_every_byte("tiny-example.ets");
}

#[test]
fn every_byte_of_the_all_encodings_file_matters() {
    flip_every_byte("encodings-small.ets");
}

#[test]
fn every_byte_of_a_realigned_file_matters() {
    flip_every_byte("alignment-4096.ets");
}
