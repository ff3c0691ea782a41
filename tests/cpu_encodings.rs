//! Every stored encoding gives the dense result when it stores the same weights, and the dense
//! result matches an independent f64 reference forward pass. Random tiny models, fresh seeds (printed; `ETS_TEST_SEED` replays one).

mod common;

use common::*;
use ets::format::{Activation, Dtype, EncodedTensor, EtsFile, ModelConfig};
use ets::runtime::cpu::{CpuEncoder, TextTokenizer};
use ets::runtime::{Encoder, Pooling, RuntimeError, TokenBatch, TokenSequence};
use ets_testkit::models;
use ets_testkit::reference::reference_forward;
use ets_testkit::rng::{test_rng, Rng};

fn tiny(heads: Vec<u32>, act: Activation) -> ModelConfig {
    let mut c = models::config(heads.len() as u32, 48, heads, 8, 80, 60, 40);
    c.activation = act;
    c
}

/// Zeroes whole 16x16 tiles (about half) in every linear weight, plus some rows and columns.
fn sparsify(weights: &mut Weights, rng: &mut Rng) {
    for (name, shape, data) in weights.iter_mut() {
        if shape.len() != 2 || !name.starts_with("layers.") {
            continue;
        }
        let (r, c) = (shape[0], shape[1]);
        let keep = models::random_tile_keep(r, c, 16, 16, 0.5, rng);
        let gc = c.div_ceil(16);
        for i in 0..r {
            for j in 0..c {
                if !keep[(i / 16) * gc + j / 16] {
                    data[i * c + j] = 0.0;
                }
            }
        }
        // Plus a few scattered zeros inside kept tiles (for the element-bitmap encoding).
        for v in data.iter_mut() {
            if rng.next_f32() < 0.2 {
                *v = 0.0;
            }
        }
    }
}

fn zero_rows_cols(weights: &mut Weights, rng: &mut Rng) {
    for (name, shape, data) in weights.iter_mut() {
        if shape.len() != 2 || !name.starts_with("layers.") {
            continue;
        }
        let (r, c) = (shape[0], shape[1]);
        let dead_rows: Vec<bool> = (0..r).map(|_| rng.next_f32() < 0.3).collect();
        let dead_cols: Vec<bool> = (0..c).map(|_| rng.next_f32() < 0.3).collect();
        for i in 0..r {
            for j in 0..c {
                if dead_rows[i] || dead_cols[j] {
                    data[i * c + j] = 0.0;
                }
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Enc {
    Dense,
    Tile,
    Elements,
    Rows,
    Cols,
}

fn encode(weights: &Weights, how: Enc, dtype: Dtype) -> Vec<(String, EncodedTensor)> {
    weights
        .iter()
        .map(|(name, shape, data)| {
            let dense = || {
                EncodedTensor::dense(shape.iter().map(|&d| d as u64).collect(), dtype, data)
                    .unwrap()
            };
            if shape.len() != 2 || !name.starts_with("layers.") {
                return (name.clone(), dense());
            }
            let (r, c) = (shape[0], shape[1]);
            let nz = |i: usize, j: usize| data[i * c + j] != 0.0;
            let t = match how {
                Enc::Dense => dense(),
                Enc::Tile => {
                    let (gr, gc) = (r.div_ceil(16), c.div_ceil(16));
                    let keep: Vec<bool> = (0..gr * gc)
                        .map(|t| {
                            let (br, bc) = (t / gc, t % gc);
                            (br * 16..(br * 16 + 16).min(r))
                                .any(|i| (bc * 16..(bc * 16 + 16).min(c)).any(|j| nz(i, j)))
                        })
                        .collect();
                    EncodedTensor::tile(r, c, data, 16, 16, &keep, dtype).unwrap()
                }
                Enc::Elements => {
                    let keep: Vec<bool> = data.iter().map(|&v| v != 0.0).collect();
                    EncodedTensor::tile_elements(r, c, data, 8, 32, &keep, dtype).unwrap()
                }
                Enc::Rows => {
                    let kept: Vec<u32> = (0..r)
                        .filter(|&i| (0..c).any(|j| nz(i, j)))
                        .map(|i| i as u32)
                        .collect();
                    EncodedTensor::rows(r, c, data, &kept, dtype).unwrap()
                }
                Enc::Cols => {
                    let kept: Vec<u32> = (0..c)
                        .filter(|&j| (0..r).any(|i| nz(i, j)))
                        .map(|j| j as u32)
                        .collect();
                    EncodedTensor::cols(r, c, data, &kept, dtype).unwrap()
                }
            };
            (name.clone(), t)
        })
        .collect()
}

fn batch(rng: &mut Rng, cfg: &ModelConfig, n: usize) -> TokenBatch {
    TokenBatch {
        sequences: (0..n)
            .map(|_| {
                let len = 1 + rng.below(20) as usize;
                TokenSequence {
                    ids: (0..len)
                        .map(|_| rng.below(cfg.vocab_size as u64) as u32)
                        .collect(),
                    type_ids: (0..len).map(|_| rng.below(2) as u32).collect(),
                }
            })
            .collect(),
    }
}

fn run(cfg: &ModelConfig, tensors: &[(String, EncodedTensor)], b: &TokenBatch) -> Vec<f32> {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("m.ets");
    models::write_ets(&p, cfg, tensors, None).unwrap();
    let f = EtsFile::open(&p).unwrap();
    let out = CpuEncoder::new(&f).unwrap().forward(b).unwrap();
    assert!(out.last_hidden.iter().all(|v| v.is_finite()), "NaN or inf");
    out.last_hidden
}

fn reference(cfg: &ModelConfig, weights: &Weights, b: &TokenBatch) -> Vec<f32> {
    let w = |name: &str| -> Vec<f64> {
        weights
            .iter()
            .find(|t| t.0 == name)
            .map(|t| t.2.iter().map(|&v| f64::from(v)).collect())
            .unwrap_or_else(|| panic!("{name}"))
    };
    b.sequences
        .iter()
        .flat_map(|s| reference_forward(cfg, &w, &s.ids, &s.type_ids))
        .map(|v| v as f32)
        .collect()
}

fn check_all_encodings(test: &str, cfg: ModelConfig, rows_cols: bool) {
    let mut rng = test_rng(test);
    let mut weights = models::random_weights(&cfg, rng.next_u64());
    if rows_cols {
        zero_rows_cols(&mut weights, &mut rng);
    } else {
        sparsify(&mut weights, &mut rng);
    }
    let b = batch(&mut rng, &cfg, 5);
    let want = reference(&cfg, &weights, &b);
    let dense = run(&cfg, &encode(&weights, Enc::Dense, Dtype::F32), &b);
    let d = max_rel_diff(&dense, &want);
    assert!(d < 1e-4, "dense vs f64 reference: {d}");
    let encs: &[Enc] = if rows_cols {
        &[Enc::Rows, Enc::Cols, Enc::Tile, Enc::Elements]
    } else {
        &[Enc::Tile, Enc::Elements]
    };
    for &e in encs {
        let got = run(&cfg, &encode(&weights, e, Dtype::F32), &b);
        let d = max_rel_diff(&got, &dense);
        assert!(d < 2e-5, "{e:?} vs dense: {d}");
    }
}

#[test]
fn tile_encodings_equal_dense_and_reference() {
    check_all_encodings(
        "tile_encodings_equal_dense_and_reference",
        tiny(vec![6, 6], Activation::Gelu),
        false,
    );
}

#[test]
fn rows_and_cols_equal_dense_and_reference() {
    check_all_encodings(
        "rows_and_cols_equal_dense_and_reference",
        tiny(vec![6, 6], Activation::Gelu),
        true,
    );
}

#[test]
fn pruned_heads_and_other_activations() {
    // Layers with different kept head counts (one with none at all), tanh-GELU and ReLU.
    check_all_encodings(
        "pruned_heads_and_other_activations",
        tiny(vec![6, 3, 0], Activation::GeluTanh),
        false,
    );
    check_all_encodings(
        "pruned_heads_and_other_activations",
        tiny(vec![2, 5], Activation::Relu),
        true,
    );
}

#[test]
fn half_precision_matches_reference_on_rounded_weights() {
    for dtype in [Dtype::F16, Dtype::Bf16] {
        let cfg = tiny(vec![6, 6], Activation::Gelu);
        let mut rng = test_rng("half_precision_matches_reference_on_rounded_weights");
        let mut weights = models::random_weights(&cfg, rng.next_u64());
        sparsify(&mut weights, &mut rng);
        // The reference sees exactly the stored (rounded) values.
        let rounded: Weights = weights
            .iter()
            .map(|(n, s, d)| {
                (
                    n.clone(),
                    s.clone(),
                    ets::format::tiles::decode_f32(
                        dtype,
                        &ets::format::tiles::encode_f32(dtype, d),
                    ),
                )
            })
            .collect();
        let b = batch(&mut rng, &cfg, 4);
        let want = reference(&cfg, &rounded, &b);
        for e in [Enc::Dense, Enc::Tile, Enc::Elements] {
            let got = run(&cfg, &encode(&weights, e, dtype), &b);
            let d = max_rel_diff(&got, &want);
            assert!(d < 1e-4, "{dtype:?} {e:?} vs reference: {d}");
        }
    }
}

#[test]
fn pooling_is_masked_and_batches_mix_lengths() {
    let cfg = tiny(vec![6, 6], Activation::Gelu);
    let mut rng = test_rng("pooling_is_masked_and_batches_mix_lengths");
    let weights = models::random_weights(&cfg, rng.next_u64());
    let tensors = encode(&weights, Enc::Dense, Dtype::F32);
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("m.ets");
    models::write_ets(&p, &cfg, &tensors, None).unwrap();
    let f = EtsFile::open(&p).unwrap();
    let enc = CpuEncoder::new(&f).unwrap();
    let b = batch(&mut rng, &cfg, 9);
    let all = enc.forward(&b).unwrap();
    let mean = all.pool(Pooling::Mean);
    let h = cfg.hidden_size as usize;
    for (i, s) in b.sequences.iter().enumerate() {
        let one = enc
            .forward(&TokenBatch {
                sequences: vec![s.clone()],
            })
            .unwrap();
        let m1 = one.pool(Pooling::Mean);
        assert!(
            max_rel_diff(&m1, &mean[i * h..(i + 1) * h]) < 1e-6,
            "sequence {i}"
        );
        let c1 = one.pool(Pooling::Cls);
        assert_eq!(&c1[..], &one.last_hidden[..h]);
        // The mean is over this sequence's rows only.
        let rows = all.sequence(i).unwrap();
        for j in 0..h {
            let m: f64 =
                rows.chunks_exact(h).map(|r| f64::from(r[j])).sum::<f64>() / s.len() as f64;
            assert!((m - f64::from(mean[i * h + j])).abs() < 1e-5);
        }
    }
}

#[test]
fn bad_inputs_are_typed_errors() {
    let cfg = tiny(vec![6], Activation::Gelu);
    let weights = models::random_weights(&cfg, 3);
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("m.ets");
    models::write_ets(&p, &cfg, &encode(&weights, Enc::Dense, Dtype::F32), None).unwrap();
    let f = EtsFile::open(&p).unwrap();
    let enc = CpuEncoder::new(&f).unwrap();
    let e = enc
        .forward(&TokenBatch::from_ids(vec![vec![1, 2, 60]]))
        .unwrap_err();
    assert!(
        matches!(
            e,
            RuntimeError::TokenOutOfRange {
                id: 60,
                position: 2,
                ..
            }
        ),
        "{e}"
    );
    let e = enc
        .forward(&TokenBatch::from_ids(vec![vec![1; 41]]))
        .unwrap_err();
    assert!(
        matches!(
            e,
            RuntimeError::SequenceTooLong {
                len: 41,
                max: 40,
                ..
            }
        ),
        "{e}"
    );
    let e = enc
        .forward(&TokenBatch::from_ids(vec![vec![]]))
        .unwrap_err();
    assert!(matches!(e, RuntimeError::BadSequence { .. }), "{e}");
    // No tokenizer section: a clear error, not a panic.
    let e = TextTokenizer::from_file(&f).unwrap_err();
    assert!(matches!(e, RuntimeError::NoTokenizer));
    assert!(e.to_string().contains("no embedded tokenizer"), "{e}");
    // A missing tensor is named.
    let partial: Vec<_> = encode(&weights, Enc::Dense, Dtype::F32)
        .into_iter()
        .filter(|t| t.0 != "layers.0.ffn.output.weight")
        .collect();
    let p2 = tmp.path().join("partial.ets");
    models::write_ets(&p2, &cfg, &partial, None).unwrap();
    let f2 = EtsFile::open(&p2).unwrap();
    let e = CpuEncoder::new(&f2).unwrap_err();
    assert!(e.to_string().contains("layers.0.ffn.output.weight"), "{e}");
}

#[test]
fn truncation_is_reported() {
    let cfg = tiny(vec![6], Activation::Gelu);
    let weights = models::random_weights(&cfg, 4);
    let vocab: String = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]
        .iter()
        .map(|t| format!("{t}\n"))
        .chain((7..60).map(|i| format!("w{i}\n")))
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("m.ets");
    models::write_ets(
        &p,
        &cfg,
        &encode(&weights, Enc::Dense, Dtype::F32),
        Some(("vocab.txt", vocab.as_bytes())),
    )
    .unwrap();
    let f = EtsFile::open(&p).unwrap();
    let tok = TextTokenizer::from_file(&f).unwrap();
    let long = vec!["a b"; 30].join(" ");
    let out = tok.encode(&["a b", &long]).unwrap();
    assert_eq!(out.truncated.len(), 1);
    assert_eq!(out.truncated[0].index, 1);
    assert_eq!(out.truncated[0].original_len, 62);
    let s = &out.batch.sequences[1];
    assert_eq!(s.len(), 40);
    assert_eq!((s.ids[0], s.ids[39]), (2, 3), "[CLS] first and [SEP] last");
    // And the truncated batch runs.
    let enc = CpuEncoder::new(&f).unwrap();
    assert!(enc.forward(&out.batch).is_ok());
}
