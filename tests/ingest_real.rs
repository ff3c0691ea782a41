//! Real models from `scripts/fetch_models.sh`. Every test here is ignored unless the run includes
//! ignored tests (`scripts/test.sh` does after fetching the models); a missing model then fails.

use std::path::{Path, PathBuf};

use ets::format::names;
use ets::format::Activation;
use ets::ingest::{open_source, IngestOptions, ModelSource, SourceTensor};
use ets_testkit::sources::hf_name;

mod common;

fn model(rel: &str) -> PathBuf {
    common::real_model(rel)
}

fn open(p: &Path) -> Box<dyn ModelSource + Send + Sync> {
    open_source(p, &IngestOptions::default()).unwrap_or_else(|e| panic!("{e}"))
}

fn load(s: &dyn ModelSource, n: &str) -> SourceTensor {
    let t = s.load(n).unwrap_or_else(|e| panic!("{n}: {e}"));
    assert!(
        t.data.iter().all(|x| x.is_finite()),
        "{n}: non-finite values"
    );
    assert_eq!(t.data.len(), t.shape.iter().product::<usize>(), "{n}");
    t
}

/// Checks the MiniLM family's architecture and every tensor's shape.
fn check_minilm(s: &dyn ModelSource, layers: u32, act: Activation) {
    let c = s.config();
    assert_eq!(
        (c.num_layers, c.hidden_size, c.num_heads, c.head_dim),
        (layers, 384, 12, 32)
    );
    assert_eq!((c.intermediate_size, c.vocab_size), (1536, 30522));
    assert_eq!(c.heads_per_layer, vec![12; layers as usize]);
    assert_eq!(c.activation, act);
    assert!(
        (c.layer_norm_eps - 1e-12).abs() < 1e-18,
        "{}",
        c.layer_norm_eps
    );
    let names = s.tensor_names();
    assert!(names.len() >= 5 + 16 * layers as usize);
    for n in &names {
        let t = load(s, n);
        let q = n.contains("attention.query.weight") || n.contains("attention.key.weight");
        if q || n.contains("attention.value.weight") || n.contains("attention.output.weight") {
            assert_eq!(t.shape, vec![384, 384], "{n}");
        } else if n.contains("ffn.intermediate.weight") {
            assert_eq!(t.shape, vec![1536, 384], "{n}");
        } else if n.contains("ffn.output.weight") {
            assert_eq!(t.shape, vec![384, 1536], "{n}");
        }
    }
}

#[test]
#[ignore = "needs the real models (scripts/fetch_models.sh)"]
fn minilm_safetensors_equals_the_file() {
    let p = model("all-minilm-l6-v2/model.safetensors");
    let s = open(&p);
    check_minilm(s.as_ref(), 6, Activation::Gelu);
    assert_eq!(s.config().max_position_embeddings, 512);
    assert_eq!(
        s.tokenizer().map(|t| t.format),
        Some("tokenizer.json".to_string())
    );
    // Independent read of the same file with the safetensors crate.
    let bytes = std::fs::read(&p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let unused: Vec<String> = st
        .names()
        .into_iter()
        .filter(|k| {
            !s.tensor_names()
                .iter()
                .any(|n| hf_name(n, "", false) == **k)
        })
        .cloned()
        .collect();
    // Only the position-id buffer is not a weight.
    assert_eq!(unused, vec!["embeddings.position_ids".to_string()]);
    for n in s.tensor_names() {
        let view = st.tensor(&hf_name(&n, "", false)).unwrap();
        let want: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let got = s.load(&n).unwrap();
        assert_eq!(got.shape, view.shape(), "{n}");
        assert!(
            got.data
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{n} differs"
        );
    }
}

#[test]
#[ignore = "needs the real models (scripts/fetch_models.sh)"]
fn paraphrase_l3_onnx_structure() {
    let p = model("paraphrase-minilm-l3-v2/model.onnx");
    let s = open(&p);
    check_minilm(s.as_ref(), 3, Activation::Gelu);
    assert_eq!(
        (
            s.config().max_position_embeddings,
            s.config().type_vocab_size
        ),
        (512, 2)
    );
    assert!(s
        .tensor_names()
        .iter()
        .all(|n| !n.starts_with("pooler") && !n.starts_with("classifier")));
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
#[ignore = "needs the real models (scripts/fetch_models.sh)"]
fn int8_minilm_dequantizes_close_to_fp32() {
    let (q, f) = (
        model("minilm-int8/model.onnx"),
        model("all-minilm-l6-v2/model.safetensors"),
    );
    let (q, f) = (open(&q), open(&f));
    check_minilm(q.as_ref(), 6, Activation::Gelu);
    let fp_names = f.tensor_names();
    let names = q.tensor_names();
    assert_eq!(names.len(), 5 + 16 * 6);
    for n in &names {
        assert!(fp_names.contains(n), "{n}");
        let (a, b) = (load(q.as_ref(), n), load(f.as_ref(), n));
        assert_eq!(a.shape, b.shape, "{n}");
        let c = cosine(&a.data, &b.data);
        assert!(c > 0.99, "{n}: cosine {c}");
    }
}

#[test]
#[ignore = "needs the real models (scripts/fetch_models.sh)"]
fn maskseq_matches_the_l3_onnx_export() {
    let (m, l3) = (
        model("maskseq/maskseq.onnx"),
        model("paraphrase-minilm-l3-v2/model.onnx"),
    );
    let (m, l3) = (open(&m), open(&l3));
    check_minilm(m.as_ref(), 3, Activation::GeluTanh);
    // Fixed [1, 64] input: positions and token type were folded into constants by the exporter.
    assert_eq!(
        (
            m.config().max_position_embeddings,
            m.config().type_vocab_size
        ),
        (64, 1)
    );
    assert_eq!(m.tensor_names().len(), l3.tensor_names().len());
    for n in m.tensor_names() {
        let (a, b) = (load(m.as_ref(), &n), load(l3.as_ref(), &n));
        let want: &[f32] = match n.as_str() {
            names::POSITION_EMBEDDINGS => &b.data[..64 * 384],
            names::TOKEN_TYPE_EMBEDDINGS => &b.data[..384],
            _ => {
                assert_eq!(a.shape, b.shape, "{n}");
                &b.data
            }
        };
        // Two exporters of one model (MatMul [in,out] vs Gemm): the same numbers.
        assert!(
            a.data
                .iter()
                .zip(want)
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "{n} differs"
        );
        assert_eq!(a.data.len(), want.len(), "{n}");
    }
    assert_eq!(
        m.tokenizer().map(|t| t.format),
        Some("tokenizer.json".to_string())
    );
}
