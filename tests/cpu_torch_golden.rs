//! The converter plus the CPU runtime against PyTorch: `et-convert --method none` of
//! all-MiniLM-L6-v2 (f32 and f16) must reproduce the sentence embeddings that transformers'
//! BertModel computed (fixtures/golden/all-minilm-l6-v2-torch, written by scripts/golden_torch.py).

mod common;

use common::{golden, min_row_cosine, real_model};
use ets::convert::{convert, ConvertOptions};
use ets::format::{Dtype, EtsFile};
use ets::prune::Recipe;
use ets::runtime::cpu::{CpuEncoder, TextTokenizer};
use ets::runtime::{Encoder, Pooling};

fn check(dtype: Dtype, threshold: f64) {
    let model = real_model("all-minilm-l6-v2/model.safetensors");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("minilm.ets");
    let opts = ConvertOptions::new(Recipe::default(), dtype);
    convert(&model, &out, &opts).unwrap();
    let g = golden("all-minilm-l6-v2-torch");
    assert!(g.sentences.len() >= 50, "need at least 50 sentences");
    let file = EtsFile::open(&out).unwrap();
    let tok = TextTokenizer::from_file(&file).unwrap();
    let texts: Vec<&str> = g.sentences.iter().map(String::as_str).collect();
    let batch = tok.encode(&texts).unwrap().batch;
    for (i, s) in batch.sequences.iter().enumerate() {
        assert_eq!(s.ids, g.ids[i], "token ids of sentence {i}");
    }
    let lengths: Vec<usize> = batch.sequences.iter().map(|s| s.len()).collect();
    assert!(
        lengths.iter().max() > lengths.iter().min(),
        "sentences of varied length"
    );
    let enc = CpuEncoder::new(&file).unwrap();
    let mean = enc.embed(&batch, Pooling::Mean).unwrap();
    assert!(
        mean.iter().all(|v| v.is_finite()),
        "NaN or inf in the embeddings"
    );
    let c = min_row_cosine(&mean, &g.mean, g.hidden);
    eprintln!(
        "{}: min cosine vs PyTorch {c:.9} over {} sentences",
        dtype.name(),
        g.sentences.len()
    );
    assert!(
        c >= threshold,
        "{} cosine {c} below {threshold}",
        dtype.name()
    );
}

#[test]
#[ignore = "needs the real models (scripts/fetch_models.sh)"]
fn converted_f32_matches_pytorch() {
    check(Dtype::F32, 0.99999);
}

#[test]
#[ignore = "needs the real models (scripts/fetch_models.sh)"]
fn converted_f16_matches_pytorch() {
    check(Dtype::F16, 0.9999);
}
