//! all-MiniLM-L6-v2 as a sentence-transformers folder: the conversion records mean pooling,
//! normalization and the 256-token maximum, and `et-run`'s pipeline then gives the embeddings
//! sentence-transformers gives (the reference: PyTorch + transformers' last hidden state, mean over
//! the real tokens, divided by its norm, which is what the model's Pooling and Normalize modules
//! compute), per sentence.

mod common;

use ets::convert::{convert, ConvertOptions};
use ets::format::{Dtype, EmbeddingConfig, EtsFile};
use ets::prune::Recipe;
use ets::runtime::cpu::{CpuEncoder, TextTokenizer};
use ets::runtime::embed::{normalize_rows, EmbedSettings, Embedder, Overrides};

#[test]
#[ignore = "needs the real models (scripts/fetch_models.sh)"]
fn dense_conversion_matches_sentence_transformers() {
    let folder = common::real_model("all-minilm-l6-v2");
    let golden = common::golden("all-minilm-l6-v2-torch");
    let h = golden.hidden;
    let mut reference = golden.mean.clone();
    normalize_rows(&mut reference, h);
    let tmp = tempfile::tempdir().unwrap();
    for (dtype, min_cos) in [(Dtype::F32, 0.99999), (Dtype::F16, 0.9999)] {
        let out = tmp.path().join(format!("st-{}.ets", dtype.name()));
        let report = convert(
            &folder,
            &out,
            &ConvertOptions::new(Recipe::default(), dtype),
        )
        .unwrap();
        let expected = EmbeddingConfig {
            pooling: Some("mean".into()),
            normalize: Some(true),
            max_length: Some(256),
        };
        assert_eq!(report.embedding.as_ref(), Some(&expected));
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
        let file = EtsFile::open(&out).unwrap();
        let settings = EmbedSettings::resolve(&file, &Overrides::default()).unwrap();
        assert_eq!(settings.max_length, 256);
        let tokenizer = TextTokenizer::from_file_with_max_len(&file, settings.max_length).unwrap();
        let embedder = Embedder::new(
            Box::new(CpuEncoder::new(&file).unwrap()),
            tokenizer,
            settings,
        );
        let texts: Vec<&str> = golden.sentences.iter().map(String::as_str).collect();
        let tokenized = embedder.tokenize(&texts).unwrap();
        for (i, seq) in tokenized.batch.sequences.iter().enumerate() {
            assert_eq!(seq.ids, golden.ids[i], "token ids of sentence {i}");
        }
        let ours = embedder.embed(&texts, 16).unwrap();
        let mut worst = 1.0f64;
        for (i, (a, b)) in ours
            .chunks_exact(h)
            .zip(reference.chunks_exact(h))
            .enumerate()
        {
            let c = common::cosine(a, b);
            worst = worst.min(c);
            assert!(c >= min_cos, "{}: sentence {i}: cosine {c}", dtype.name());
            let norm = a.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "sentence {i}: norm {norm}");
        }
        eprintln!(
            "{}: lowest cosine {worst:.7} over {} sentences",
            dtype.name(),
            texts.len()
        );

        // A long review is cut at the model's 256 tokens, not at the 512 positions.
        let long = "a remarkably moving film . ".repeat(120);
        let t = embedder.tokenize(&[long.as_str()]).unwrap();
        assert_eq!(t.batch.sequences[0].ids.len(), 256);
        assert_eq!(t.truncated[0].kept_len, 256);
        assert_eq!(
            t.batch.sequences[0].ids.last(),
            Some(&102),
            "ends with [SEP]"
        );
    }
}

#[test]
#[ignore = "needs the real models (scripts/fetch_models.sh)"]
fn int8_onnx_growth_and_missing_tokenizer_are_explained() {
    let model = common::real_model("minilm-int8/model.onnx");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("int8.ets");
    let report = convert(
        &model,
        &out,
        &ConvertOptions::new(Recipe::default(), Dtype::F16),
    )
    .unwrap();
    assert!(report.output_bytes > report.source_bytes);
    let all = report.warnings.join("\n");
    assert!(
        all.contains("8-bit integers") && all.contains("as f16 (2 bytes a value)"),
        "{all}"
    );
    assert!(all.contains("no tokenizer found"), "{all}");
}
