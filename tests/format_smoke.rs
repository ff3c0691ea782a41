use ets::format::*;

fn cfg() -> ModelConfig {
    ModelConfig {
        architecture: "bert".into(),
        num_layers: 1,
        hidden_size: 32,
        num_heads: 2,
        head_dim: 16,
        heads_per_layer: vec![2],
        intermediate_size: 64,
        vocab_size: 10,
        max_position_embeddings: 8,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
        activation: Activation::Gelu,
        num_labels: None,
    }
}

#[test]
fn every_encoding_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.ets");
    let (r, c) = (40, 50);
    let data: Vec<f32> = (0..r * c)
        .map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 5.0)
        .collect();
    let tile_keep: Vec<bool> = (0..3 * 4).map(|i| i % 3 != 1).collect();
    let elem_keep: Vec<bool> = (0..r * c).map(|i| i % 5 == 0).collect();
    let mut w = EtsWriter::create(&path, WriteOptions::default()).unwrap();
    w.add_tensor(
        "d",
        &EncodedTensor::dense(vec![r as u64, c as u64], Dtype::F32, &data).unwrap(),
    )
    .unwrap();
    w.add_tensor(
        "t",
        &EncodedTensor::tile(r, c, &data, 16, 16, &tile_keep, Dtype::F32).unwrap(),
    )
    .unwrap();
    w.add_tensor(
        "e",
        &EncodedTensor::tile_elements(r, c, &data, 16, 16, &elem_keep, Dtype::F16).unwrap(),
    )
    .unwrap();
    w.add_tensor(
        "r",
        &EncodedTensor::rows(r, c, &data, &[1, 5, 39], Dtype::Bf16).unwrap(),
    )
    .unwrap();
    w.add_tensor(
        "c",
        &EncodedTensor::cols(r, c, &data, &[0, 49], Dtype::F32).unwrap(),
    )
    .unwrap();
    w.add_blob("tokenizer", "tokenizer", "vocab.txt", b"[PAD]\n", false)
        .unwrap();
    w.finish(
        cfg(),
        serde_json::json!({"method": "test"}),
        Provenance::default(),
    )
    .unwrap();
    let f = EtsFile::open(&path).unwrap();
    f.verify_checksums().unwrap();
    assert_eq!(f.tensor("d").unwrap().to_dense_f32(), data);
    let t = f.tensor("t").unwrap().to_dense_f32();
    for i in 0..r {
        for j in 0..c {
            let keep = tile_keep[(i / 16) * 4 + j / 16];
            assert_eq!(t[i * c + j], if keep { data[i * c + j] } else { 0.0 });
        }
    }
    let e = f.tensor("e").unwrap().to_dense_f32();
    for i in 0..r * c {
        let want = if elem_keep[i] {
            half::f16::from_f32(data[i]).to_f32()
        } else {
            0.0
        };
        assert_eq!(e[i], want);
    }
    assert!(f.section("tokenizer").is_some());
    assert!(EtsWriter::create(&path, WriteOptions::default()).is_err());
}
