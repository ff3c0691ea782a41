//! Offline tests of the upload: extents, the same-file check, byte comparison.

use super::*;
use ets_testkit::rng::{test_rng, Rng};

#[test]
fn first_difference_finds_the_first_changed_byte() {
    let mut rng = test_rng("first_difference_finds_the_first_changed_byte");
    let n = (3 << 20) + (rng.next_u64() % 5000) as usize;
    let a: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
    assert_eq!(first_difference(&a, &a.clone()), None);
    let mut b = a.clone();
    let i = (rng.next_u64() % n as u64) as usize;
    let j = i + (n - i) / 2;
    b[j] ^= 0x10;
    b[i] ^= 0x01;
    assert_eq!(first_difference(&a, &b), Some(i));
    assert_eq!(first_difference(&a, &a[..n - 1]), Some(n - 1));
    assert_eq!(first_difference(&[], &[]), None);
}

/// A small `.ets` with two tile weights and a dense f32 bias.
fn write_small_file(path: &Path, rng: &mut Rng) {
    use crate::format::{EncodedTensor, EtsWriter, ModelConfig, WriteOptions};
    let mut w = EtsWriter::create(path, WriteOptions { overwrite: true }).expect("create");
    for (name, n, k, t) in [("a", 300, 264, 16), ("b", 256, 128, 32)] {
        let data = rng.symmetric_vec(n * k, 0.1);
        let keep = rng.mask(n.div_ceil(t) * k.div_ceil(t), 0.4);
        let enc = EncodedTensor::tile(n, k, &data, t, t, &keep, Dtype::F16).expect("tile");
        w.add_tensor(&format!("check.{name}.weight"), &enc)
            .expect("add");
        let bias = EncodedTensor::dense(vec![n as u64], Dtype::F32, &rng.symmetric_vec(n, 0.5))
            .expect("bias");
        w.add_tensor(&format!("check.{name}.bias"), &bias)
            .expect("add");
    }
    let config = ModelConfig {
        architecture: "bert".into(),
        num_layers: 1,
        hidden_size: 384,
        num_heads: 6,
        head_dim: 64,
        heads_per_layer: vec![6],
        intermediate_size: 1536,
        vocab_size: 1,
        max_position_embeddings: 1,
        type_vocab_size: 1,
        layer_norm_eps: 1e-12,
        activation: crate::format::Activation::Gelu,
        num_labels: None,
    };
    w.finish(config, serde_json::json!({}), Default::default())
        .expect("finish");
}

#[test]
fn extent_covers_every_tensor_and_the_file_check_refuses_other_files() {
    let mut rng = test_rng("extent_covers_every_tensor_and_the_file_check_refuses_other_files");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("m.ets");
    write_small_file(&path, &mut rng);
    let file = EtsFile::open(&path).expect("open");
    let ext = tensor_extent(&file).expect("extent");
    let tensors: Vec<(u64, u64)> = file.tensors().map(|v| (v.offset, v.length)).collect();
    assert!(!tensors.is_empty());
    for &(o, l) in &tensors {
        assert!(ext.start as u64 <= o && o + l <= ext.end as u64);
    }
    assert!(tensors.iter().any(|&(o, _)| o == ext.start as u64));
    assert!(tensors.iter().any(|&(o, l)| o + l == ext.end as u64));

    let same = File::open(&path).expect("reopen");
    assert!(check_same_file(&same, &file, &path).is_ok());
    let mut bytes = std::fs::read(&path).expect("read");
    let other = dir.path().join("other.ets");
    bytes[100] ^= 0xFF;
    std::fs::write(&other, &bytes).expect("write other");
    let f = File::open(&other).expect("open other");
    assert!(check_same_file(&f, &file, &other).is_err());
    bytes[100] ^= 0xFF;
    bytes.pop();
    std::fs::write(&other, &bytes).expect("write other");
    let f = File::open(&other).expect("open other");
    assert!(check_same_file(&f, &file, &other).is_err());
}
