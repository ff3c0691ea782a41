//! `--allocate sensitivity`: per-weight sparsities under one global target, from a sensitivity
//! profile measured on the calibration sentences.
//!
//! The profile prunes each calibrated weight alone, one shot (activation-aware tile budgets and a
//! least-squares refit toward the dense output, no greedy search), to the global target on the
//! first [`PROFILE_SENTENCES`] sentences, and measures how far the model's mean-pooled embeddings
//! move: `drop = 1 - mean cosine` to the dense embeddings. Modelling each weight's drop as growing
//! with the cube of its sparsity, `drop_i(x) = drop_i (x / target)^3`, the sum of drops under
//! the parameter budget `sum n_i x_i = target sum n_i` is smallest at
//! `x_i = sqrt(mu n_i / drop_i)` (clamped to `[0, MAX_SPARSITY]`, `mu` by bisection): sensitive
//! weights keep more tiles.

use serde::Serialize;

use super::backend::{CalibrationBackend, LayerStages, Statistics};
use super::calibrated::{
    fit_one, prepare_stage, pruned_lookup, release_free_memory, stage_todo, Fitted, STAGES,
};
use super::ConvertError;
use crate::format::EtsFile;
use crate::ingest::ModelSource;
use crate::prune::calibrated::{Refit, Selection, Stages};
use crate::prune::recipe::TensorOverride;
use crate::prune::Recipe;
use crate::runtime::cpu::{CpuEncoder, TextTokenizer};
use crate::runtime::{pool_packed, Encoder, Pooling};

/// Sentences (the first of the calibration set) the sensitivity profile runs on.
pub const PROFILE_SENTENCES: usize = 128;

/// The stages of the profile's one-shot pruning: selection by score, refit toward the dense output.
pub const PROFILE_STAGES: Stages = Stages {
    selection: Selection::Score,
    refit: Refit::Dense,
};

/// The highest sparsity the allocation gives one weight.
pub const MAX_SPARSITY: f64 = 0.9;

/// One weight's measured sensitivity and the sparsity it was given.
#[derive(Debug, Clone, Serialize)]
pub struct WeightAllocation {
    /// Canonical weight name.
    pub name: String,
    /// Parameters of the weight.
    pub params: usize,
    /// `1 - mean cosine` of the embeddings with this weight alone pruned to the target.
    pub drop: f64,
    /// Sparsity allocated.
    pub sparsity: f64,
}

/// The allocation, for the report and the recipe.
#[derive(Debug, Clone, Serialize)]
pub struct Allocation {
    /// `sensitivity`.
    pub method: String,
    /// Sentences the profile ran on.
    pub profile_sentences: usize,
    /// Per weight, in model order.
    pub weights: Vec<WeightAllocation>,
}

fn err(e: &dyn std::fmt::Display) -> ConvertError {
    ConvertError::Calibration(e.to_string())
}

/// Cosine of two vectors in f64.
fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        ab += f64::from(x) * f64::from(y);
        aa += f64::from(x) * f64::from(x);
        bb += f64::from(y) * f64::from(y);
    }
    ab / (aa.sqrt() * bb.sqrt()).max(f64::MIN_POSITIVE)
}

/// Runs `layers[from..]` on `x` (the input of layer `from`), with layer `from` replaced by `first`
/// when given, and returns the mean-pooled embeddings.
fn run_from(
    layers: &[LayerStages<'_>],
    first: Option<&LayerStages<'_>>,
    from: usize,
    x: &[f32],
    lengths: &[usize],
    hidden: usize,
) -> Result<Vec<f32>, ConvertError> {
    let mut x = x.to_vec();
    for (i, dense) in layers.iter().enumerate().skip(from) {
        let l = match (i == from, first) {
            (true, Some(f)) => f,
            _ => dense,
        };
        let ctx = l.context(&x, lengths)?;
        let attn = l.attention_out(&ctx, &x)?;
        let inter = l.intermediate(&attn)?;
        x = l.output(&inter, &attn)?;
    }
    Ok(pool_packed(&x, lengths, hidden, Pooling::Mean))
}

/// The inputs of a layer's four linear stages and its output.
struct Trace {
    inputs: [Vec<f32>; 4],
    output: Vec<f32>,
}

fn trace(l: &LayerStages<'_>, x: &[f32], lengths: &[usize]) -> Result<Trace, ConvertError> {
    let context = l.context(x, lengths)?;
    let attention_out = l.attention_out(&context, x)?;
    let intermediate = l.intermediate(&attention_out)?;
    let output = l.output(&intermediate, &attention_out)?;
    Ok(Trace {
        inputs: [x.to_vec(), context, attention_out, intermediate],
        output,
    })
}

/// Measures the profile and returns `recipe` with one sparsity per calibrated weight. The forward
/// passes and the statistics run on `backend`.
pub(crate) fn sensitivity(
    backend: &CalibrationBackend,
    source: &dyn ModelSource,
    dense: &EtsFile,
    recipe: &Recipe,
    texts: &[String],
) -> Result<(Recipe, Allocation), ConvertError> {
    if !recipe.roles.is_empty() || !recipe.layers.is_empty() || !recipe.tensors.is_empty() {
        return Err(ConvertError::Calibration(
            "--allocate sensitivity sets every weight's sparsity: give one global --sparsity, \
             without role, layer or tensor overrides"
                .into(),
        ));
    }
    let tokenizer = TextTokenizer::from_file(dense).map_err(|e| err(&e))?;
    let enc = CpuEncoder::new(dense).map_err(|e| err(&e))?;
    let hidden = enc.config().hidden_size as usize;
    let layers = source.config().num_layers as usize;
    let stages: Vec<LayerStages<'_>> = (0..layers)
        .map(|l| backend.dense_layer(&enc, dense, l))
        .collect::<Result<_, _>>()?;
    let texts = &texts[..texts.len().min(PROFILE_SENTENCES)];
    let mut batches: Vec<(Vec<usize>, Vec<f32>)> = texts
        .chunks(32)
        .map(|c| {
            let t: Vec<&str> = c.iter().map(String::as_str).collect();
            let batch = tokenizer.encode(&t).map_err(|e| err(&e))?.batch;
            let (x, lengths) = enc.embed_batch(&batch).map_err(|e| err(&e))?;
            Ok((lengths, x))
        })
        .collect::<Result<_, ConvertError>>()?;
    let reference: Vec<Vec<f32>> = batches
        .iter()
        .map(|(l, x)| run_from(&stages, None, 0, x, l, hidden))
        .collect::<Result<_, _>>()?;
    let mut weights = Vec::new();
    for layer in 0..layers {
        let traces: Vec<Trace> = batches
            .iter()
            .map(|(l, x)| trace(&stages[layer], x, l))
            .collect::<Result<_, _>>()?;
        for (stage_index, (linears, _)) in STAGES.iter().enumerate() {
            let todo = stage_todo(recipe, layer, linears);
            if todo.is_empty() {
                continue;
            }
            let mut stats: Option<Statistics<'_>> = None;
            for ((lengths, _), t) in batches.iter().zip(&traces) {
                let input = &t.inputs[stage_index];
                let tokens: usize = lengths.iter().sum();
                let s = match &mut stats {
                    Some(s) => s,
                    None => stats.insert(backend.statistics(input.len() / tokens.max(1))?),
                };
                s.accumulate(input, input)?;
            }
            let Some(stats) = stats else { continue };
            let stats = stats.finish()?;
            let inverse = PROFILE_STAGES.needs_inverse();
            let (prepared, jobs) = prepare_stage(source, stats, layer, &todo, inverse)?;
            for job in jobs {
                let name = job.name(layer);
                let mut alone = Fitted::default();
                fit_one(recipe, &prepared, job, &mut alone, layer, PROFILE_STAGES)?;
                let params = alone.tensors.get(&name).map_or(0, |t| t.data.len());
                let drop = profile_drop(
                    backend, &enc, dense, &stages, &alone, layer, &batches, &reference,
                )?;
                release_free_memory();
                weights.push(WeightAllocation {
                    name,
                    params,
                    drop,
                    sparsity: recipe.sparsity,
                });
            }
        }
        for ((_, x), t) in batches.iter_mut().zip(traces) {
            *x = t.output;
        }
    }
    allocate(&mut weights, recipe.sparsity);
    let mut out = recipe.clone();
    for w in &weights {
        out.tensors.insert(
            w.name.clone(),
            TensorOverride {
                method: None,
                sparsity: Some(w.sparsity),
            },
        );
    }
    let allocation = Allocation {
        method: "sensitivity".into(),
        profile_sentences: texts.len(),
        weights,
    };
    Ok((out, allocation))
}

/// `1 - mean cosine` of the embeddings with layer `layer` taken from `alone`.
#[allow(clippy::too_many_arguments)]
fn profile_drop(
    backend: &CalibrationBackend,
    enc: &CpuEncoder<'_>,
    dense: &EtsFile,
    stages: &[LayerStages<'_>],
    alone: &Fitted,
    layer: usize,
    batches: &[(Vec<usize>, Vec<f32>)],
    reference: &[Vec<f32>],
) -> Result<f64, ConvertError> {
    let shapes = alone.shapes();
    let get = pruned_lookup(dense, alone, &shapes);
    let l = backend.layer_from(enc, layer, &get)?;
    let hidden = enc.config().hidden_size as usize;
    let (mut sum, mut count) = (0f64, 0usize);
    for ((lengths, x), want) in batches.iter().zip(reference) {
        let got = run_from(stages, Some(&l), layer, x, lengths, hidden)?;
        for (a, b) in got.chunks_exact(hidden).zip(want.chunks_exact(hidden)) {
            sum += cosine(a, b);
            count += 1;
        }
    }
    Ok(1.0 - sum / count.max(1) as f64)
}

/// Sets each weight's sparsity to `min(MAX_SPARSITY, sqrt(mu params / drop))` with `mu` chosen so
/// the parameter-weighted mean sparsity is `target`.
pub(crate) fn allocate(weights: &mut [WeightAllocation], target: f64) {
    let total: f64 = weights.iter().map(|w| w.params as f64).sum();
    if weights.is_empty() || total == 0.0 || target <= 0.0 {
        return;
    }
    let floor = 1e-9;
    let at = |mu: f64, w: &WeightAllocation| {
        (mu * w.params as f64 / w.drop.max(floor))
            .sqrt()
            .min(MAX_SPARSITY)
    };
    let removed = |mu: f64, ws: &[WeightAllocation]| -> f64 {
        ws.iter().map(|w| w.params as f64 * at(mu, w)).sum::<f64>() / total
    };
    let goal = target.min(MAX_SPARSITY);
    let (mut lo, mut hi) = (0f64, 1f64);
    while removed(hi, weights) < goal && hi < 1e300 {
        hi *= 2.0;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if removed(mid, weights) < goal {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    for w in weights.iter_mut() {
        w.sparsity = at(hi, w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weight(params: usize, drop: f64) -> WeightAllocation {
        WeightAllocation {
            name: String::new(),
            params,
            drop,
            sparsity: 0.0,
        }
    }

    #[test]
    fn allocation_meets_the_target_and_spares_sensitive_weights() {
        for target in [0.3, 0.5, 0.7, 0.9] {
            let mut ws = vec![
                weight(100, 0.01),
                weight(100, 0.04),
                weight(400, 0.02),
                weight(100, 0.0),
            ];
            allocate(&mut ws, target);
            let mean = ws.iter().map(|w| w.params as f64 * w.sparsity).sum::<f64>() / 700.0;
            assert!((mean - target).abs() < 1e-9, "target {target}: mean {mean}");
            assert!(ws
                .iter()
                .all(|w| (0.0..=MAX_SPARSITY).contains(&w.sparsity)));
            // Same size, four times the drop: less sparsity (half, unless capped).
            assert!(ws[1].sparsity < ws[0].sparsity || ws[0].sparsity == MAX_SPARSITY);
            // A weight whose removal changes nothing takes the most.
            assert_eq!(ws[3].sparsity, MAX_SPARSITY);
        }
        let mut ws = vec![weight(10, 0.01), weight(10, 0.04)];
        allocate(&mut ws, 0.4);
        assert!((ws[0].sparsity - 2.0 * ws[1].sparsity).abs() < 1e-9);
    }
}
