//! The CPU runtime on all-MiniLM-L6-v2 against committed golden embeddings (fixtures/golden/),
//! produced by an independent float64 numpy BERT (scripts/golden.py); tokenization against the
//! `tokenizers` Python package's ids. Ignored tests: they need the model in models/.

mod common;

use common::*;
use ets::format::{Dtype, EtsFile};
use ets::runtime::cpu::{CpuEncoder, TextTokenizer};
use ets::runtime::{Encoder, ForwardOptions, Pooling, TokenBatch, TokenSequence};

const MODEL: &str = "all-minilm-l6-v2";

fn build(dtype: Dtype, tokenizer: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = real_model(&format!("{MODEL}/model.safetensors"));
    let dir = dir.parent().unwrap().to_path_buf();
    let (cfg, weights) = minilm_weights(&dir);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(format!("minilm-{}.ets", dtype.name()));
    let tok = std::fs::read(dir.join(tokenizer)).unwrap();
    ets_testkit::models::write_ets(
        &path,
        &cfg,
        &dense_all(&weights, dtype),
        Some((tokenizer, &tok)),
    )
    .unwrap();
    (tmp, path)
}

fn golden_batch(g: &Golden) -> TokenBatch {
    TokenBatch {
        sequences: g
            .ids
            .iter()
            .zip(&g.type_ids)
            .map(|(i, t)| TokenSequence {
                ids: i.clone(),
                type_ids: t.clone(),
            })
            .collect(),
    }
}

#[test]
#[ignore = "needs the real models (scripts/fetch_models.sh)"]
fn f32_reproduces_golden_embeddings_and_tokens() {
    let (_tmp, path) = build(Dtype::F32, "tokenizer.json");
    let g = golden(MODEL);
    assert!(g.ids.len() >= 50);
    let file = EtsFile::open(&path).unwrap();
    // Our tokenizer (embedded tokenizer.json) must give the Python package's ids.
    let tok = TextTokenizer::from_file(&file).unwrap();
    let texts: Vec<&str> = g.sentences.iter().map(String::as_str).collect();
    let ours = tok.encode(&texts).unwrap();
    for (i, s) in ours.batch.sequences.iter().enumerate() {
        assert_eq!(
            s.ids, g.ids[i],
            "token ids of sentence {i}: {:?}",
            g.sentences[i]
        );
    }
    let enc = CpuEncoder::new(&file).unwrap();
    let out = enc.forward(&ours.batch).unwrap();
    assert!(
        out.last_hidden.iter().all(|v| v.is_finite()),
        "NaN or inf in the output"
    );
    let mean = out.pool(Pooling::Mean);
    let cls = out.pool(Pooling::Cls);
    let (cm, cc) = (
        min_row_cosine(&mean, &g.mean, g.hidden),
        min_row_cosine(&cls, &g.cls, g.hidden),
    );
    eprintln!(
        "f32: min cosine mean {cm:.9}, cls {cc:.9} over {} sentences",
        g.ids.len()
    );
    assert!(cm >= 0.99999, "mean pooling cosine {cm}");
    assert!(cc >= 0.99999, "cls cosine {cc}");
    // The pooler exists in this checkpoint: tanh outputs in (-1, 1).
    let pooled = out.pooler_output.as_ref().expect("pooler output");
    assert!(pooled.iter().all(|v| v.abs() <= 1.0));
}

#[test]
#[ignore = "needs the real models (scripts/fetch_models.sh)"]
fn f16_is_close_to_golden() {
    let (_tmp, path) = build(Dtype::F16, "tokenizer.json");
    let g = golden(MODEL);
    let file = EtsFile::open(&path).unwrap();
    let enc = CpuEncoder::new(&file).unwrap();
    let mean = enc.embed(&golden_batch(&g), Pooling::Mean).unwrap();
    let c = min_row_cosine(&mean, &g.mean, g.hidden);
    eprintln!("f16: min cosine mean {c:.9}");
    assert!(c >= 0.9999, "f16 cosine {c}");
}

#[test]
#[ignore = "needs the real models (scripts/fetch_models.sh)"]
fn vocab_txt_tokenizer_matches_tokenizer_json() {
    let (_tmp, path) = build(Dtype::Bf16, "vocab.txt");
    let g = golden(MODEL);
    let file = EtsFile::open(&path).unwrap();
    let tok = TextTokenizer::from_file(&file).unwrap();
    let texts: Vec<&str> = g.sentences.iter().map(String::as_str).collect();
    let ours = tok.encode(&texts).unwrap();
    for (i, s) in ours.batch.sequences.iter().enumerate() {
        assert_eq!(s.ids, g.ids[i], "vocab.txt ids of sentence {i}");
    }
    // bf16 weights still give usable embeddings.
    let enc = CpuEncoder::new(&file).unwrap();
    let mean = enc.embed(&ours.batch, Pooling::Mean).unwrap();
    let c = min_row_cosine(&mean, &g.mean, g.hidden);
    eprintln!("bf16: min cosine mean {c:.6}");
    assert!(c >= 0.99, "bf16 cosine {c}");
}

#[test]
#[ignore = "needs the real models (scripts/fetch_models.sh)"]
fn batch_equals_one_by_one_and_layers_are_reported() {
    let (_tmp, path) = build(Dtype::F32, "tokenizer.json");
    let g = golden(MODEL);
    let file = EtsFile::open(&path).unwrap();
    let enc = CpuEncoder::new(&file).unwrap();
    let batch = golden_batch(&g);
    let opts = ForwardOptions {
        output_hidden_states: true,
    };
    let all = enc.forward_with(&batch, &opts).unwrap();
    let states = all.hidden_states.as_ref().unwrap();
    assert_eq!(states.len(), file.model().num_layers as usize + 1);
    assert_eq!(states.last().unwrap(), &all.last_hidden);
    for (i, s) in batch.sequences.iter().enumerate().step_by(7) {
        let one = enc
            .forward(&TokenBatch {
                sequences: vec![s.clone()],
            })
            .unwrap();
        let d = max_rel_diff(&one.last_hidden, all.sequence(i).unwrap());
        assert!(d < 1e-6, "sentence {i}: batch vs alone differ by {d}");
    }
}
