//! Writer guarantees: the same input gives the same bytes; an error at any point leaves neither
//! the target nor a temporary file behind; an existing target survives unless overwriting.

use std::path::Path;

use ets::format::{Dtype, EncodedTensor, EtsFile, EtsWriter, Provenance, WriteOptions};
use ets_testkit::conformance::model::{tiny_example_config, write_tiny_example};

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn tensor(seed: u32) -> EncodedTensor {
    let data: Vec<f32> = (0..40 * 24)
        .map(|i| ((i * 37 + seed as usize) % 101) as f32 / 7.0)
        .collect();
    let keep: Vec<bool> = (0..3 * 2).map(|i| (i + seed as usize) % 3 != 0).collect();
    EncodedTensor::tile(40, 24, &data, 16, 16, &keep, Dtype::F16).unwrap()
}

fn write(path: &Path, options: WriteOptions) -> Result<(), ets::format::FormatError> {
    let mut w = EtsWriter::create(path, options)?;
    w.add_tensor("a", &tensor(1))?;
    w.add_blob("tokenizer", "tokenizer", "vocab.txt", b"[PAD]\n", true)?;
    w.add_tensor("b", &tensor(2))?;
    w.finish(
        tiny_example_config(),
        serde_json::json!({"k": [1, 2]}),
        Provenance::default(),
    )
}

#[test]
fn same_input_gives_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (p1, p2) = (dir.path().join("one.ets"), dir.path().join("two.ets"));
    write(&p1, WriteOptions::default()).unwrap();
    write(&p2, WriteOptions::default()).unwrap();
    let first = std::fs::read(&p1).unwrap();
    assert_eq!(first, std::fs::read(&p2).unwrap());
    write(&p1, WriteOptions { overwrite: true }).unwrap();
    assert_eq!(first, std::fs::read(&p1).unwrap());
    // A different tensor gives different bytes (the comparison can fail).
    let mut w = EtsWriter::create(&p2, WriteOptions { overwrite: true }).unwrap();
    w.add_tensor("a", &tensor(3)).unwrap();
    w.finish(
        tiny_example_config(),
        serde_json::json!({}),
        Provenance::default(),
    )
    .unwrap();
    assert_ne!(first, std::fs::read(&p2).unwrap());
    let (t1, t2) = (dir.path().join("t1.ets"), dir.path().join("t2.ets"));
    write_tiny_example(&t1).unwrap();
    write_tiny_example(&t2).unwrap();
    assert_eq!(std::fs::read(&t1).unwrap(), std::fs::read(&t2).unwrap());
}

#[test]
fn an_error_while_adding_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out.ets");
    let mut w = EtsWriter::create(&target, WriteOptions::default()).unwrap();
    w.add_tensor("a", &tensor(1)).unwrap();
    let err = w.add_tensor("a", &tensor(2)).unwrap_err();
    assert_eq!(err.code(), "duplicate_name");
    let err = w.add_tensor("bad name", &tensor(2)).unwrap_err();
    assert_eq!(err.code(), "bad_name");
    assert!(
        !listing(dir.path()).is_empty(),
        "the writer streams into a temporary file"
    );
    drop(w);
    assert_eq!(listing(dir.path()), Vec::<String>::new());
}

#[test]
fn an_error_in_finish_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out.ets");
    let mut w = EtsWriter::create(&target, WriteOptions::default()).unwrap();
    w.add_tensor("a", &tensor(1)).unwrap();
    let mut bad = tiny_example_config();
    bad.num_layers = 0;
    let err = w
        .finish(bad, serde_json::json!({}), Provenance::default())
        .unwrap_err();
    assert_eq!(err.code(), "invalid_model_config");
    assert_eq!(listing(dir.path()), Vec::<String>::new());
}

#[test]
fn existing_target_is_kept_unless_overwriting() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out.ets");
    std::fs::write(&target, b"keep me").unwrap();
    let err = EtsWriter::create(&target, WriteOptions::default())
        .err()
        .unwrap();
    assert_eq!(err.code(), "output_exists");
    assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
    // The target appears while a writer is working: finish must not replace it.
    std::fs::remove_file(&target).unwrap();
    let mut w = EtsWriter::create(&target, WriteOptions::default()).unwrap();
    w.add_tensor("a", &tensor(1)).unwrap();
    std::fs::write(&target, b"keep me").unwrap();
    let err = w
        .finish(
            tiny_example_config(),
            serde_json::json!({}),
            Provenance::default(),
        )
        .unwrap_err();
    assert_eq!(err.code(), "output_exists");
    assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
    assert_eq!(listing(dir.path()), vec!["out.ets".to_string()]);
    write(&target, WriteOptions { overwrite: true }).unwrap();
    EtsFile::open(&target).unwrap().verify_checksums().unwrap();
    assert_eq!(listing(dir.path()), vec!["out.ets".to_string()]);
}

#[test]
fn an_unwritable_target_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("missing-dir").join("out.ets");
    let err = EtsWriter::create(&target, WriteOptions::default())
        .err()
        .unwrap();
    assert_eq!(err.code(), "io");
    assert_eq!(listing(dir.path()), Vec::<String>::new());
}

#[test]
fn embedding_settings_are_minor_version_1_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let with = dir.path().join("with.ets");
    let mut w = EtsWriter::create(&with, WriteOptions::default()).unwrap();
    w.add_tensor("a", &tensor(1)).unwrap();
    let settings = ets::format::EmbeddingConfig {
        pooling: Some("cls".into()),
        normalize: Some(true),
        max_length: Some(4),
    };
    w.set_embedding(settings.clone());
    w.finish(
        tiny_example_config(),
        serde_json::json!({}),
        Provenance::default(),
    )
    .unwrap();
    let f = EtsFile::open(&with).unwrap();
    assert_eq!(f.minor_version(), 1);
    assert_eq!(f.header().embedding.as_ref(), Some(&settings));
    f.verify_checksums().unwrap();

    // Without settings (or with an empty set) the file is a 1.0 file without the key.
    let without = dir.path().join("without.ets");
    let mut w = EtsWriter::create(&without, WriteOptions::default()).unwrap();
    w.add_tensor("a", &tensor(1)).unwrap();
    w.set_embedding(ets::format::EmbeddingConfig::default());
    w.finish(
        tiny_example_config(),
        serde_json::json!({}),
        Provenance::default(),
    )
    .unwrap();
    let f = EtsFile::open(&without).unwrap();
    assert_eq!(f.minor_version(), 0);
    assert_eq!(f.header().embedding, None);
    let header = String::from_utf8_lossy(&std::fs::read(&without).unwrap()).into_owned();
    assert!(!header.contains("\"embedding\""));
}
