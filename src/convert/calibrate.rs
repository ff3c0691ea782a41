//! `--calibrate`: run the dense source and the pruned result on real sentences and measure, per
//! layer and at the output, how far apart they are, so the cost of a sparsity choice is seen
//! before the file is deployed.

use std::path::Path;

use serde::Serialize;

use super::backend::{CalibrationBackend, LayerStages};
use super::ConvertError;
use crate::format::EtsFile;
use crate::prune::calibrated::{Refit, Selection, Stages};
use crate::prune::Method;
use crate::runtime::cpu::{CpuEncoder, TextTokenizer};
use crate::runtime::{pool_packed, Encoder, ForwardOptions, Pooling, TokenBatch};

/// Distance between dense and pruned hidden states after one layer (0 = embeddings).
#[derive(Debug, Clone, Serialize)]
pub struct LayerFidelity {
    /// 0 for the embedding output, `i + 1` for the output of layer `i`.
    pub layer: usize,
    /// Mean cosine similarity over all tokens.
    pub cosine: f64,
    /// Largest absolute difference over all tokens and features.
    pub max_abs_diff: f64,
}

/// The calibration result, stored in the file's recipe.
#[derive(Debug, Clone, Serialize)]
pub struct Calibration {
    /// Name of the sentence file.
    pub source: String,
    /// Sentences used.
    pub sentences: usize,
    /// Per-layer distances.
    pub layers: Vec<LayerFidelity>,
    /// Mean cosine of the mean-pooled sentence embeddings (what `--min-cosine` checks).
    pub output_cosine: f64,
    /// Lowest per-sentence cosine of the mean-pooled embeddings.
    pub output_min_cosine: f64,
    /// Calibrated pruning, when the recipe keeps tiles.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pruning: Option<CalibratedPruning>,
}

/// What calibrated pruning did, for the recipe.
#[derive(Debug, Clone, Serialize)]
pub struct CalibratedPruning {
    /// The procedure, in words ([`crate::prune::calibrated::Stages::describe`]).
    pub method: String,
    /// How tiles were chosen (`greedy`, or `score` for ablation).
    pub selection: crate::prune::calibrated::Selection,
    /// What happened to the kept weights (`dense`: refitted toward the dense outputs; `none`).
    pub refit: crate::prune::calibrated::Refit,
    /// Weights pruned with calibration.
    pub weights: usize,
    /// Per-weight sparsities from a sensitivity profile, when allocated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocation: Option<super::allocate::Allocation>,
}

/// The procedure applied to weights that keep whole output rows, before the refit.
const ROWS_SELECTION: &str = "rows ranked by the dense output energy lost when dropped (beyond \
its mean, which the bias keeps)";

/// The procedures applied under `methods` and `stages`, one per kind of unit kept, joined by
/// `"; "`: tiles as [`Stages::describe`] says, whole rows, columns and heads in their own words.
pub fn calibrated_description(methods: impl IntoIterator<Item = Method>, stages: Stages) -> String {
    let greedy = stages.selection == Selection::Greedy;
    let refit = match stages.refit {
        Refit::None => "kept weights and bias unchanged",
        Refit::Dense => {
            "least-squares refit of kept weights and bias toward the dense outputs, inputs from \
             the already-pruned layers"
        }
    };
    let mut parts: Vec<String> = Vec::new();
    for m in methods {
        let p = match (m, greedy) {
            (Method::Rows, _) => format!("{ROWS_SELECTION}, {refit}"),
            (Method::Cols, true) => {
                format!("greedy column removal with inverse-Hessian updates, {refit}")
            }
            (Method::Cols, false) => format!("columns by activation-aware score, {refit}"),
            (Method::Heads, true) => format!(
                "greedy head removal by the attention output projection's reconstruction error \
                 with inverse-Hessian updates, {refit}"
            ),
            (Method::Heads, false) => format!(
                "heads by the activation-aware score of the output projection's columns, {refit}"
            ),
            _ => stages.describe(),
        };
        if !parts.contains(&p) {
            parts.push(p);
        }
    }
    parts.join("; ")
}

/// Reads sentences: one per line, or the text column of a `text<TAB>label` file with a header.
pub fn read_sentences(path: &Path, limit: usize) -> Result<Vec<String>, ConvertError> {
    let err = |e: String| ConvertError::Calibration(format!("{}: {e}", path.display()));
    let bytes = crate::files::read_capped(path, crate::files::MAX_TEXT_BYTES)
        .map_err(|e| err(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|e| err(format!("not UTF-8 text: {e}")))?;
    let mut sentences = crate::sentences::parse(&text, None).map_err(err)?;
    sentences.truncate(limit);
    if sentences.is_empty() {
        return Err(ConvertError::Calibration(format!(
            "{} has no sentences",
            path.display()
        )));
    }
    Ok(sentences)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        ab += f64::from(x) * f64::from(y);
        aa += f64::from(x) * f64::from(x);
        bb += f64::from(y) * f64::from(y);
    }
    if aa == 0.0 && bb == 0.0 {
        return 1.0;
    }
    ab / (aa.sqrt() * bb.sqrt()).max(f64::MIN_POSITIVE)
}

/// Per-layer and output distances summed over batches.
struct Tally {
    hidden: usize,
    cos_sum: Vec<f64>,
    max_diff: Vec<f64>,
    tokens: usize,
    out_sum: f64,
    out_min: f64,
}

impl Tally {
    fn new(hidden: usize, layers: usize) -> Tally {
        Tally {
            hidden,
            cos_sum: vec![0.0; layers],
            max_diff: vec![0.0; layers],
            tokens: 0,
            out_sum: 0.0,
            out_min: f64::INFINITY,
        }
    }

    /// Adds a batch: the hidden states of both models after every layer (0 = embeddings) and
    /// their last hidden states, packed, for sequences of `lengths` tokens.
    fn add(&mut self, ha: &[Vec<f32>], hb: &[Vec<f32>], last: (&[f32], &[f32]), lengths: &[usize]) {
        let hidden = self.hidden;
        let layers = self.cos_sum.len();
        for (l, (xa, xb)) in ha.iter().zip(hb).enumerate().take(layers) {
            for (ra, rb) in xa.chunks_exact(hidden).zip(xb.chunks_exact(hidden)) {
                self.cos_sum[l] += cosine(ra, rb);
                let d = ra
                    .iter()
                    .zip(rb)
                    .map(|(x, y)| f64::from((x - y).abs()))
                    .fold(0.0, f64::max);
                self.max_diff[l] = self.max_diff[l].max(d);
            }
        }
        self.tokens += lengths.iter().sum::<usize>();
        let pa = pool_packed(last.0, lengths, hidden, Pooling::Mean);
        let pb = pool_packed(last.1, lengths, hidden, Pooling::Mean);
        for (ea, eb) in pa.chunks_exact(hidden).zip(pb.chunks_exact(hidden)) {
            let c = cosine(ea, eb);
            self.out_sum += c;
            self.out_min = self.out_min.min(c);
        }
    }

    fn finish(self, source: &str, sentences: usize) -> Calibration {
        let tokens = self.tokens.max(1) as f64;
        let layers = self
            .cos_sum
            .iter()
            .zip(&self.max_diff)
            .enumerate()
            .map(|(l, (c, d))| LayerFidelity {
                layer: l,
                cosine: c / tokens,
                max_abs_diff: *d,
            })
            .collect();
        Calibration {
            source: source.to_string(),
            sentences,
            layers,
            output_cosine: self.out_sum / sentences.max(1) as f64,
            output_min_cosine: self.out_min,
            pruning: None,
        }
    }
}

/// The last of a list of hidden states (empty when there is none).
fn last(h: &[Vec<f32>]) -> &[f32] {
    h.last().map(Vec::as_slice).unwrap_or_default()
}

/// Sentences per batch of the comparison.
const COMPARE_BATCH: usize = 16;

fn tokenizer_of(file: &EtsFile) -> Result<TextTokenizer, ConvertError> {
    TextTokenizer::from_file(file).map_err(|e| {
        ConvertError::Calibration(format!(
            "{e}; calibration needs a tokenizer (put tokenizer.json or vocab.txt beside the model or pass --tokenizer)"
        ))
    })
}

/// Compares the dense reference file and the pruned file on `sentences`.
pub fn compare(
    dense: &Path,
    pruned: &Path,
    source: &str,
    sentences: &[String],
) -> Result<Calibration, ConvertError> {
    let err = |e: &dyn std::fmt::Display| ConvertError::Calibration(e.to_string());
    let dense_file = EtsFile::open(dense)?;
    let pruned_file = EtsFile::open(pruned)?;
    let tokenizer = tokenizer_of(&pruned_file)?;
    let dense_enc = CpuEncoder::new(&dense_file).map_err(|e| err(&e))?;
    let pruned_enc = CpuEncoder::new(&pruned_file).map_err(|e| err(&e))?;
    let hidden = dense_enc.config().hidden_size as usize;
    let options = ForwardOptions {
        output_hidden_states: true,
    };
    let mut tally = Tally::new(hidden, dense_enc.config().num_layers as usize + 1);
    for chunk in sentences.chunks(COMPARE_BATCH) {
        let texts: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let batch: TokenBatch = tokenizer.encode(&texts).map_err(|e| err(&e))?.batch;
        let a = dense_enc
            .forward_with(&batch, &options)
            .map_err(|e| err(&e))?;
        let b = pruned_enc
            .forward_with(&batch, &options)
            .map_err(|e| err(&e))?;
        let (Some(ha), Some(hb)) = (&a.hidden_states, &b.hidden_states) else {
            return Err(ConvertError::Calibration(
                "runtime returned no hidden states".into(),
            ));
        };
        tally.add(ha, hb, (&a.last_hidden, &b.last_hidden), &a.lengths);
    }
    Ok(tally.finish(source, sentences.len()))
}

/// [`compare`] with the forward passes on `backend`: the CPU backend runs [`compare`] itself; the
/// GPU runs every layer's stages (the pruned file's tensors expanded to f32), and falls back to
/// [`compare`] for a file with a layer of no heads, which its stages do not run.
pub fn compare_on(
    backend: &CalibrationBackend,
    dense: &Path,
    pruned: &Path,
    source: &str,
    sentences: &[String],
) -> Result<Calibration, ConvertError> {
    let err = |e: &dyn std::fmt::Display| ConvertError::Calibration(e.to_string());
    let dense_file = EtsFile::open(dense)?;
    let pruned_file = EtsFile::open(pruned)?;
    let headless = pruned_file.model().heads_per_layer.contains(&0);
    if !backend.is_cuda() || headless {
        return compare(dense, pruned, source, sentences);
    }
    let tokenizer = tokenizer_of(&pruned_file)?;
    let dense_enc = CpuEncoder::new(&dense_file).map_err(|e| err(&e))?;
    let pruned_enc = CpuEncoder::new(&pruned_file).map_err(|e| err(&e))?;
    let layers = dense_enc.config().num_layers as usize;
    let stages = |enc, file| -> Result<Vec<LayerStages<'_>>, ConvertError> {
        (0..layers)
            .map(|l| backend.dense_layer(enc, file, l))
            .collect()
    };
    let (da, pa) = (
        stages(&dense_enc, &dense_file)?,
        stages(&pruned_enc, &pruned_file)?,
    );
    let hidden = dense_enc.config().hidden_size as usize;
    let mut tally = Tally::new(hidden, layers + 1);
    let run = |enc: &CpuEncoder<'_>, ls: &[LayerStages<'_>], batch: &TokenBatch| {
        let (x, lengths) = enc.embed_batch(batch).map_err(|e| err(&e))?;
        let mut states = vec![x];
        for l in ls {
            let x = states.last().map(Vec::as_slice).unwrap_or_default();
            let ctx = l.context(x, &lengths)?;
            let attn = l.attention_out(&ctx, x)?;
            let inter = l.intermediate(&attn)?;
            let out = l.output(&inter, &attn)?;
            states.push(out);
        }
        Ok::<_, ConvertError>((states, lengths))
    };
    for chunk in sentences.chunks(COMPARE_BATCH) {
        let texts: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let batch: TokenBatch = tokenizer.encode(&texts).map_err(|e| err(&e))?.batch;
        let (ha, lengths) = run(&dense_enc, &da, &batch)?;
        let (hb, _) = run(&pruned_enc, &pa, &batch)?;
        tally.add(&ha, &hb, (last(&ha), last(&hb)), &lengths);
    }
    Ok(tally.finish(source, sentences.len()))
}
