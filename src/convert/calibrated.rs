//! Calibrated tile pruning inside the converter.
//!
//! Layer by layer, in the order Q/K/V, O, FFN1, FFN2, the inputs of each linear are taken twice
//! from the CPU runtime on the calibration sentences: from the model pruned so far and from the
//! dense model. Their statistics drive [`crate::prune::calibrated`]: activation-aware budgets,
//! greedy tile removal and a least-squares refit of the kept weights and the bias toward the
//! dense layer's output. Methods that keep tiles (`tile`, `tile-balanced`, `tile-grouped`, and
//! the tiles of `attention-aware`) are calibrated; the others prune as without calibration.

use std::collections::BTreeMap;
use std::path::Path;

use super::{write_model, ConvertError};
use crate::format::names::LayerTensor;
use crate::format::{Dtype, EtsFile, ModelConfig, Provenance};
use crate::ingest::{IngestError, ModelSource, SourceTensor, TokenizerBlob};
use crate::prune::calibrated::{
    activation_tile_scores, budget_from_scores, fit_tiles, LinearStats,
};
use crate::prune::select::{keep_count, GROUP_FEATURES};
use crate::prune::{Method, Recipe, Role};
use crate::runtime::cpu::{CpuEncoder, LayerTrace, TextTokenizer};
use crate::runtime::TokenBatch;

/// Refitted weights and biases, and the tile masks chosen for the weights.
#[derive(Debug, Default)]
pub(crate) struct Fitted {
    /// Replacement tensors by canonical name.
    pub tensors: BTreeMap<String, SourceTensor>,
    /// Kept tiles of each refitted weight, row-major over its grid.
    pub masks: BTreeMap<String, Vec<bool>>,
}

/// A source whose tensors are replaced where `map` has them.
pub(crate) struct Overridden<'a> {
    pub inner: &'a dyn ModelSource,
    pub map: &'a BTreeMap<String, SourceTensor>,
}

impl ModelSource for Overridden<'_> {
    fn config(&self) -> &ModelConfig {
        self.inner.config()
    }
    fn tensor_names(&self) -> Vec<String> {
        self.inner.tensor_names()
    }
    fn load(&self, name: &str) -> Result<SourceTensor, IngestError> {
        match self.map.get(name) {
            Some(t) => Ok(t.clone()),
            None => self.inner.load(name),
        }
    }
    fn provenance(&self) -> Provenance {
        self.inner.provenance()
    }
    fn tokenizer(&self) -> Option<TokenizerBlob> {
        self.inner.tokenizer()
    }
}

/// A linear weight, its bias and its role.
type Linear = (LayerTensor, LayerTensor, Role);

/// The linear stages of a layer, in calibration order, and which trace feeds each.
const STAGES: [(&[Linear], Stage); 4] = [
    (
        &[
            (
                LayerTensor::QueryWeight,
                LayerTensor::QueryBias,
                Role::Query,
            ),
            (LayerTensor::KeyWeight, LayerTensor::KeyBias, Role::Key),
            (
                LayerTensor::ValueWeight,
                LayerTensor::ValueBias,
                Role::Value,
            ),
        ],
        Stage::Hidden,
    ),
    (
        &[(
            LayerTensor::OutputWeight,
            LayerTensor::OutputBias,
            Role::Output,
        )],
        Stage::Context,
    ),
    (
        &[(
            LayerTensor::IntermediateWeight,
            LayerTensor::IntermediateBias,
            Role::Intermediate,
        )],
        Stage::AttentionOut,
    ),
    (
        &[(
            LayerTensor::FfnOutputWeight,
            LayerTensor::FfnOutputBias,
            Role::FfnOutput,
        )],
        Stage::Intermediate,
    ),
];

#[derive(Debug, Clone, Copy)]
enum Stage {
    Hidden,
    Context,
    AttentionOut,
    Intermediate,
}

impl Stage {
    fn pick(self, t: &LayerTrace) -> &[f32] {
        match self {
            // The layer input is kept by the caller; a trace starts after it.
            Stage::Hidden => &t.output,
            Stage::Context => &t.context,
            Stage::AttentionOut => &t.attention_out,
            Stage::Intermediate => &t.intermediate,
        }
    }
}

/// Whether calibration applies to weight `role` under `method`.
fn calibrated_method(method: Method, role: Role) -> bool {
    match method {
        Method::Tile | Method::TileBalanced | Method::TileGrouped => true,
        Method::AttentionAware => role != Role::Value,
        _ => false,
    }
}

/// Whether `recipe` calibrates any weight of a model with `layers` layers.
pub(crate) fn applies(recipe: &Recipe, layers: usize) -> bool {
    (0..layers).any(|l| {
        STAGES
            .iter()
            .flat_map(|(w, _)| w.iter())
            .any(|&(w, _, role)| {
                let p = recipe.plan(&w.name(l), l, role);
                p.sparsity > 0.0 && calibrated_method(p.method, role)
            })
    })
}

fn err(e: &dyn std::fmt::Display) -> ConvertError {
    ConvertError::Calibration(e.to_string())
}

/// Prunes every calibrated weight of `source` layer by layer; `work` is a scratch path.
pub(crate) fn fit_model(
    source: &dyn ModelSource,
    dense: &EtsFile,
    work: &Path,
    recipe: &Recipe,
    texts: &[String],
) -> Result<Fitted, ConvertError> {
    let tokenizer = TextTokenizer::from_file(dense).map_err(|e| {
        ConvertError::Calibration(format!(
            "{e}; calibration needs a tokenizer (put tokenizer.json or vocab.txt beside the model or pass --tokenizer)"
        ))
    })?;
    let batches: Vec<TokenBatch> = texts
        .chunks(32)
        .map(|c| {
            let t: Vec<&str> = c.iter().map(String::as_str).collect();
            tokenizer.encode(&t).map(|t| t.batch).map_err(|e| err(&e))
        })
        .collect::<Result<_, _>>()?;
    let dense_enc = CpuEncoder::new(dense).map_err(|e| err(&e))?;
    // Each batch's input of the current layer: lengths, dense and pruned-so-far hidden states.
    let mut states: Vec<(Vec<usize>, Vec<f32>, Vec<f32>)> = batches
        .iter()
        .map(|b| {
            let (x, lengths) = dense_enc.embed_batch(b).map_err(|e| err(&e))?;
            Ok((lengths, x.clone(), x))
        })
        .collect::<Result<_, ConvertError>>()?;
    let layers = source.config().num_layers as usize;
    let mut fitted = Fitted::default();
    for layer in 0..layers {
        for (weights, stage) in STAGES {
            let todo: Vec<_> = weights
                .iter()
                .filter(|&&(w, _, role)| {
                    let p = recipe.plan(&w.name(layer), layer, role);
                    p.sparsity > 0.0 && calibrated_method(p.method, role)
                })
                .collect();
            if todo.is_empty() {
                continue;
            }
            let stats = stage_stats(source, &fitted, &dense_enc, work, &states, layer, stage)?;
            for &&(w, b, role) in &todo {
                fit_one(source, recipe, &stats, &mut fitted, layer, w, b, role)?;
            }
        }
        if layer + 1 < layers {
            let pruned_file = write_current(source, &fitted, work)?;
            let pruned_enc = CpuEncoder::new(&pruned_file).map_err(|e| err(&e))?;
            for (lengths, xd, xp) in &mut states {
                *xd = dense_enc
                    .trace_layer(layer, xd, lengths)
                    .map_err(|e| err(&e))?
                    .output;
                *xp = pruned_enc
                    .trace_layer(layer, xp, lengths)
                    .map_err(|e| err(&e))?
                    .output;
            }
        }
    }
    Ok(fitted)
}

/// Writes the source with the tensors fitted so far (dense f32) to `work` and opens it.
fn write_current(
    source: &dyn ModelSource,
    fitted: &Fitted,
    work: &Path,
) -> Result<EtsFile, ConvertError> {
    let current = Overridden {
        inner: source,
        map: &fitted.tensors,
    };
    write_model(
        &current,
        work,
        &Recipe::default(),
        Dtype::F32,
        true,
        false,
        None,
        None,
    )?;
    Ok(EtsFile::open(work)?)
}

/// Statistics of one stage's input: the model pruned so far against the dense model.
fn stage_stats(
    source: &dyn ModelSource,
    fitted: &Fitted,
    dense_enc: &CpuEncoder<'_>,
    work: &Path,
    states: &[(Vec<usize>, Vec<f32>, Vec<f32>)],
    layer: usize,
    stage: Stage,
) -> Result<LinearStats, ConvertError> {
    let hidden = source.config().hidden_size as usize;
    if let Stage::Hidden = stage {
        let mut stats = LinearStats::new(hidden);
        for (_, xd, xp) in states {
            stats.accumulate(xp, xd).map_err(|e| err(&e))?;
        }
        return Ok(stats);
    }
    let pruned_file = write_current(source, fitted, work)?;
    let pruned_enc = CpuEncoder::new(&pruned_file).map_err(|e| err(&e))?;
    let mut stats: Option<LinearStats> = None;
    for (lengths, xd, xp) in states {
        let td = dense_enc
            .trace_layer(layer, xd, lengths)
            .map_err(|e| err(&e))?;
        let tp = pruned_enc
            .trace_layer(layer, xp, lengths)
            .map_err(|e| err(&e))?;
        let (a, b) = (stage.pick(&tp), stage.pick(&td));
        let tokens: usize = lengths.iter().sum();
        let s = stats.get_or_insert_with(|| LinearStats::new(b.len() / tokens.max(1)));
        s.accumulate(a, b).map_err(|e| err(&e))?;
    }
    stats.ok_or_else(|| ConvertError::Calibration("no calibration sentences".into()))
}

/// Fits one weight and its bias under its plan and records them.
#[allow(clippy::too_many_arguments)]
fn fit_one(
    source: &dyn ModelSource,
    recipe: &Recipe,
    stats: &LinearStats,
    fitted: &mut Fitted,
    layer: usize,
    w: LayerTensor,
    b: LayerTensor,
    role: Role,
) -> Result<(), ConvertError> {
    let (wname, bname) = (w.name(layer), b.name(layer));
    let plan = recipe.plan(&wname, layer, role);
    let weight = source.load(&wname)?;
    let bias = source.load(&bname)?;
    let (rows, n) = match weight.shape[..] {
        [r, c] if r == bias.data.len() && c == stats.inputs() => (r, c),
        _ => {
            return Err(ConvertError::Tensor {
                name: wname,
                reason: format!("shape {:?} does not match its bias or inputs", weight.shape),
            })
        }
    };
    let (th, tw) = plan.tile;
    let gc = n.div_ceil(tw);
    let keep_fraction = 1.0 - plan.sparsity;
    let (band_rows, budget) = match plan.method {
        Method::TileBalanced => (th, vec![keep_count(gc, keep_fraction); rows.div_ceil(th)]),
        Method::TileGrouped => {
            let band = (GROUP_FEATURES / th).max(1) * th;
            (
                band,
                vec![keep_count(gc, keep_fraction); rows.div_ceil(band)],
            )
        }
        _ => {
            let scores =
                activation_tile_scores(&weight.data, rows, n, &stats.input_energy(), th, tw);
            let keep = keep_count(scores.len(), keep_fraction);
            (th, budget_from_scores(&scores, gc, keep))
        }
    };
    let fit = fit_tiles(
        &weight.data,
        &bias.data,
        stats,
        (th, tw),
        band_rows,
        &budget,
        true,
    )
    .map_err(|e| ConvertError::Tensor {
        name: wname.clone(),
        reason: e.to_string(),
    })?;
    fitted.masks.insert(wname.clone(), fit.keep);
    fitted.tensors.insert(
        wname,
        SourceTensor {
            shape: vec![rows, n],
            data: fit.weight,
        },
    );
    fitted.tensors.insert(
        bname,
        SourceTensor {
            shape: vec![rows],
            data: fit.bias,
        },
    );
    Ok(())
}
