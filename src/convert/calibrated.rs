//! Calibrated tile pruning inside the converter.
//!
//! Layer by layer, in the order Q/K/V, O, FFN1, FFN2, the inputs of each linear are taken twice
//! from the CPU runtime on the calibration sentences: from the model pruned so far and from the
//! dense model. Their statistics drive [`crate::prune::calibrated`]: activation-aware budgets,
//! greedy tile removal and a least-squares refit of the kept weights and the bias toward the
//! dense layer's output. Methods that keep tiles (`tile`, `tile-balanced`, `tile-grouped`, and
//! the tiles of `attention-aware`) are calibrated; the others prune as without calibration.

use super::ConvertError;
use crate::format::names::LayerTensor;
use crate::format::{Dtype, Encoding, EtsFile, ModelConfig, Provenance, TensorData, TensorView};
use crate::ingest::{IngestError, ModelSource, SourceTensor, TokenizerBlob};
use crate::prune::calibrated::{
    activation_tile_scores, budget_from_scores, fit_tiles, LinearStats,
};
use crate::prune::select::{keep_count, GROUP_FEATURES};
use crate::prune::{Method, Recipe, Role};
use crate::runtime::cpu::{CpuEncoder, Layer, TextTokenizer};
use crate::runtime::RuntimeError;
use std::collections::BTreeMap;

/// Refitted weights and biases, and the tile masks chosen for the weights.
#[derive(Debug, Default)]
pub(crate) struct Fitted {
    /// Replacement tensors by canonical name.
    pub tensors: BTreeMap<String, SourceTensor>,
    /// Kept tiles of each refitted weight, row-major over its grid.
    pub masks: BTreeMap<String, Vec<bool>>,
}

impl Fitted {
    /// The shapes of the replacement tensors, as a tensor view states them.
    pub(crate) fn shapes(&self) -> BTreeMap<&str, Vec<u64>> {
        self.tensors
            .iter()
            .map(|(k, t)| (k.as_str(), t.shape.iter().map(|&d| d as u64).collect()))
            .collect()
    }
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
pub(crate) type Linear = (LayerTensor, LayerTensor, Role);

/// The linear stages of a layer, in calibration order, and which trace feeds each.
pub(crate) const STAGES: [(&[Linear], Stage); 4] = [
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

/// Where a stage's input comes from; `Next` is the next layer's input.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stage {
    Hidden,
    Context,
    AttentionOut,
    Intermediate,
    Next,
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

/// One calibration batch at the current layer: sequence lengths, the layer inputs of the dense
/// model and of the model pruned so far, and the latest stage activations of each (the attention
/// context, then the attention output).
struct BatchState {
    lengths: Vec<usize>,
    xd: Vec<f32>,
    xp: Vec<f32>,
    ad: Vec<f32>,
    ap: Vec<f32>,
}

/// The weights of `layer` that `recipe` calibrates in `stage`.
pub(crate) fn stage_todo(recipe: &Recipe, layer: usize, weights: &'static [Linear]) -> Vec<Linear> {
    weights
        .iter()
        .filter(|&&(w, _, role)| {
            let p = recipe.plan(&w.name(layer), layer, role);
            p.sparsity > 0.0 && calibrated_method(p.method, role)
        })
        .copied()
        .collect()
}

/// Prunes every calibrated weight of `source` layer by layer. The dense model runs from `dense`;
/// the pruned model runs from the same file with the weights fitted so far replaced in memory.
pub(crate) fn fit_model(
    source: &dyn ModelSource,
    dense: &EtsFile,
    recipe: &Recipe,
    texts: &[String],
) -> Result<Fitted, ConvertError> {
    let tokenizer = TextTokenizer::from_file(dense).map_err(|e| {
        ConvertError::Calibration(format!(
            "{e}; calibration needs a tokenizer (put tokenizer.json or vocab.txt beside the model or pass --tokenizer)"
        ))
    })?;
    let dense_enc = CpuEncoder::new(dense).map_err(|e| err(&e))?;
    let mut states: Vec<BatchState> = texts
        .chunks(32)
        .map(|c| {
            let t: Vec<&str> = c.iter().map(String::as_str).collect();
            let batch = tokenizer.encode(&t).map_err(|e| err(&e))?.batch;
            let (x, lengths) = dense_enc.embed_batch(&batch).map_err(|e| err(&e))?;
            Ok(BatchState {
                lengths,
                xd: x.clone(),
                xp: x,
                ad: Vec::new(),
                ap: Vec::new(),
            })
        })
        .collect::<Result<_, ConvertError>>()?;
    let layers = source.config().num_layers as usize;
    let mut fitted = Fitted::default();
    for layer in 0..layers {
        for (weights, stage) in STAGES {
            let todo = stage_todo(recipe, layer, weights);
            let stats = advance(
                &dense_enc,
                dense,
                &fitted,
                &mut states,
                layer,
                stage,
                !todo.is_empty(),
            )?;
            if let Some(stats) = stats {
                for &(w, b, role) in &todo {
                    fit_one(source, recipe, &stats, &mut fitted, layer, w, b, role, true)?;
                }
            }
        }
        if layer + 1 < layers {
            advance(
                &dense_enc,
                dense,
                &fitted,
                &mut states,
                layer,
                Stage::Next,
                false,
            )?;
        }
    }
    Ok(fitted)
}

/// Layer `layer` of the pruned model: fitted tensors from `fitted`, the rest from `dense`.
pub(crate) fn pruned_layer<'g>(
    dense_enc: &CpuEncoder<'_>,
    dense: &'g EtsFile,
    fitted: &'g Fitted,
    shapes: &'g BTreeMap<&'g str, Vec<u64>>,
    layer: usize,
) -> Result<Layer<'g>, ConvertError> {
    let get = |name: &str| -> Result<TensorView<'g>, RuntimeError> {
        match (fitted.tensors.get_key_value(name), shapes.get(name)) {
            (Some((key, t)), Some(shape)) => {
                let values: &[u8] = bytemuck::cast_slice(&t.data);
                Ok(TensorView {
                    name: key,
                    dtype: Dtype::F32,
                    shape,
                    encoding: Encoding::Dense,
                    offset: 0,
                    length: values.len() as u64,
                    data: TensorData::Dense { values },
                })
            }
            _ => dense.tensor(name).map_err(RuntimeError::from),
        }
    };
    dense_enc.layer_from(layer, &get).map_err(|e| err(&e))
}

/// Moves every batch to the input of `stage` of `layer` (from the previous stage's
/// activations) in both models, and returns that input's statistics when `collect`.
fn advance(
    dense_enc: &CpuEncoder<'_>,
    dense: &EtsFile,
    fitted: &Fitted,
    states: &mut [BatchState],
    layer: usize,
    stage: Stage,
    collect: bool,
) -> Result<Option<LinearStats>, ConvertError> {
    let shapes = fitted.shapes();
    let pl = pruned_layer(dense_enc, dense, fitted, &shapes, layer)?;
    let dl = dense_enc.layer(layer).map_err(|e| err(&e))?;
    let e = |e: RuntimeError| err(&e);
    let mut stats: Option<LinearStats> = None;
    for s in states.iter_mut() {
        // The stage inputs (dense, pruned) for statistics, when they are not kept in `s`.
        let inputs: Option<(Vec<f32>, Vec<f32>)> = match stage {
            Stage::Hidden => None,
            Stage::Context => {
                s.ad = dense_enc.stage_context(dl, &s.xd, &s.lengths).map_err(e)?;
                s.ap = dense_enc.stage_context(&pl, &s.xp, &s.lengths).map_err(e)?;
                None
            }
            Stage::AttentionOut => {
                s.ad = dense_enc.stage_attention_out(dl, &s.ad, &s.xd).map_err(e)?;
                s.ap = dense_enc
                    .stage_attention_out(&pl, &s.ap, &s.xp)
                    .map_err(e)?;
                None
            }
            Stage::Intermediate => {
                if !collect {
                    continue;
                }
                Some((
                    dense_enc.stage_intermediate(dl, &s.ad).map_err(e)?,
                    dense_enc.stage_intermediate(&pl, &s.ap).map_err(e)?,
                ))
            }
            Stage::Next => {
                let id = dense_enc.stage_intermediate(dl, &s.ad).map_err(e)?;
                s.xd = dense_enc.stage_output(dl, &id, &s.ad).map_err(e)?;
                let ip = dense_enc.stage_intermediate(&pl, &s.ap).map_err(e)?;
                s.xp = dense_enc.stage_output(&pl, &ip, &s.ap).map_err(e)?;
                None
            }
        };
        if !collect {
            continue;
        }
        let (d, p) = match (&inputs, stage) {
            (Some((d, p)), _) => (d.as_slice(), p.as_slice()),
            (None, Stage::Hidden | Stage::Next) => (s.xd.as_slice(), s.xp.as_slice()),
            (None, _) => (s.ad.as_slice(), s.ap.as_slice()),
        };
        let tokens: usize = s.lengths.iter().sum();
        let st = stats.get_or_insert_with(|| LinearStats::new(d.len() / tokens.max(1)));
        st.accumulate(p, d).map_err(|e| err(&e))?;
    }
    if collect && stats.is_none() {
        return Err(ConvertError::Calibration("no calibration sentences".into()));
    }
    Ok(stats)
}

/// Fits one weight and its bias under its plan and records them; `greedy` chooses tiles by
/// greedy removal, otherwise by activation-aware scores.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fit_one(
    source: &dyn ModelSource,
    recipe: &Recipe,
    stats: &LinearStats,
    fitted: &mut Fitted,
    layer: usize,
    w: LayerTensor,
    b: LayerTensor,
    role: Role,
    greedy: bool,
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
        greedy,
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
