//! Calibrated pruning inside the converter.
//!
//! Layer by layer, in the order Q/K/V, O, FFN1, FFN2, the inputs of each linear are taken twice
//! on the calibration sentences (by the CPU runtime or the GPU, [`super::backend`]): from the
//! model pruned so far and from the dense model. Their statistics drive
//! [`crate::prune::calibrated`]: the kept units are chosen on them and the kept weights and the
//! bias refitted toward the dense layer's output. Tiles
//! (`tile`, `tile-balanced`, `tile-grouped`, the tiles of `attention-aware`): activation-aware
//! budgets and greedy tile removal. Columns (`cols`): greedy column removal, a column being a
//! tile as tall as the weight. Rows (`rows`, the value rows of `attention-aware`): the rows whose
//! removal costs the dense output least go ([`crate::prune::calibrated::fit_rows`]). Heads
//! (`heads`): greedy removal of the output projection's head column groups, which measures each
//! head's share of the attention output, and the output projection refitted over the kept heads.
//! `--selection score` and `--refit none` ([`Stages`]) turn a stage off for ablation.

use super::ConvertError;
use crate::format::names::LayerTensor;
use crate::format::{Dtype, Encoding, EtsFile, ModelConfig, Provenance, TensorData, TensorView};
use crate::ingest::{IngestError, ModelSource, SourceTensor, TokenizerBlob};
use crate::prune::calibrated::{
    activation_tile_scores, budget_from_scores, fit_rows, fit_tiles_prepared, LinearStats,
    Prepared, Refit, Stages,
};
use crate::prune::select::{keep_count, GROUP_FEATURES};
use crate::prune::{Method, Recipe, Role, TensorPlan};
use crate::runtime::cpu::{CpuEncoder, TextTokenizer};
use crate::runtime::RuntimeError;
use std::collections::BTreeMap;
use std::path::Path;

use super::backend::{CalibrationBackend, Statistics};
use super::phases::{Phases, ACTIVATIONS, FITTING, STATISTICS};
use super::spill::{Slot, Spill};

/// Refitted weights and biases, and the units chosen for the weights.
#[derive(Debug, Default)]
pub(crate) struct Fitted {
    /// Replacement tensors by canonical name. A weight under head pruning keeps its full width
    /// here, zero in the columns of removed heads.
    pub tensors: BTreeMap<String, SourceTensor>,
    /// Kept units of each refitted weight under its method: tiles (row-major over the grid),
    /// output rows, or input columns. Head pruning records [`Fitted::heads`] instead.
    pub masks: BTreeMap<String, Vec<bool>>,
    /// Kept heads, ascending, of each layer whose heads were chosen by calibration.
    pub heads: BTreeMap<usize, Vec<usize>>,
    /// The method each calibrated weight was pruned with (`rows` for the value rows of
    /// `attention-aware`).
    pub methods: BTreeMap<String, Method>,
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

/// The plan of weight `w` (role `role`) of `layer` when calibration prunes it. Under head
/// pruning the query's plan decides the layer (as when writing), and only the output projection
/// is fitted: its column groups are the heads.
pub(crate) fn calibrated_plan(
    recipe: &Recipe,
    layer: usize,
    w: LayerTensor,
    role: Role,
) -> Option<TensorPlan> {
    let query = recipe.plan(&LayerTensor::QueryWeight.name(layer), layer, Role::Query);
    let plan = if query.method == Method::Heads {
        query
    } else {
        recipe.plan(&w.name(layer), layer, role)
    };
    let calibrated = match plan.method {
        Method::Tile | Method::TileBalanced | Method::TileGrouped => true,
        Method::AttentionAware | Method::Rows | Method::Cols => true,
        Method::Heads => role == Role::Output,
        Method::Irregular | Method::Existing | Method::None => false,
    };
    (calibrated && plan.sparsity > 0.0).then_some(plan)
}

/// Whether `recipe` calibrates any weight of a model with `layers` layers.
pub(crate) fn applies(recipe: &Recipe, layers: usize) -> bool {
    (0..layers).any(|l| {
        STAGES
            .iter()
            .flat_map(|(w, _)| w.iter())
            .any(|&(w, _, role)| calibrated_plan(recipe, l, w, role).is_some())
    })
}

/// Whether `recipe` prunes heads in any of `layers` layers.
pub(crate) fn prunes_heads(recipe: &Recipe, layers: usize) -> bool {
    (0..layers).any(|l| {
        let q = recipe.plan(&LayerTensor::QueryWeight.name(l), l, Role::Query);
        q.method == Method::Heads && q.sparsity > 0.0
    })
}

fn err(e: &dyn std::fmt::Display) -> ConvertError {
    ConvertError::Calibration(e.to_string())
}

/// Calibration sentences per batch: the unit of every forward pass and of the statistics
/// accumulation (the order of the sums, and so the result, depends on it).
pub(crate) const BATCH_SENTENCES: usize = 32;

/// The weights of `layer` that `recipe` calibrates in `stage`.
pub(crate) fn stage_todo(recipe: &Recipe, layer: usize, weights: &'static [Linear]) -> Vec<Linear> {
    weights
        .iter()
        .filter(|&&(w, _, role)| calibrated_plan(recipe, layer, w, role).is_some())
        .copied()
        .collect()
}

/// Prunes every calibrated weight of `source` layer by layer. The dense model runs from the
/// f32 reference file at `dense`; the pruned model runs from the same file with the weights fitted
/// so far replaced in memory. The per-token activations of both live in a temporary file at
/// `spill`, one batch in memory at a time, and the reference is mapped anew for every layer, so
/// the pages of finished layers leave memory. The stage forward passes and the statistics run on
/// `backend`. `stages` chooses the tile selection and the refit; the time of each part is added
/// to `phases`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fit_model(
    backend: &CalibrationBackend,
    source: &dyn ModelSource,
    dense: &Path,
    recipe: &Recipe,
    stages: Stages,
    texts: &[String],
    spill: &Path,
    phases: &mut Phases,
) -> Result<Fitted, ConvertError> {
    let t0 = std::time::Instant::now();
    let config = source.config();
    let width =
        (config.hidden_size as usize).max(config.num_heads as usize * config.head_dim as usize);
    let mut states = Spill::create(spill, width)?;
    {
        let file = EtsFile::open(dense)?;
        let tokenizer = TextTokenizer::from_file(&file).map_err(|e| {
            ConvertError::Calibration(format!(
                "{e}; calibration needs a tokenizer (put tokenizer.json or vocab.txt beside the model or pass --tokenizer)"
            ))
        })?;
        let enc = CpuEncoder::new(&file).map_err(|e| err(&e))?;
        for c in texts.chunks(BATCH_SENTENCES) {
            let t: Vec<&str> = c.iter().map(String::as_str).collect();
            let batch = tokenizer.encode(&t).map_err(|e| err(&e))?.batch;
            let (x, lengths) = enc.embed_batch(&batch).map_err(|e| err(&e))?;
            states.push(lengths, &x)?;
        }
    }
    phases.add(ACTIVATIONS, t0.elapsed());
    let layers = source.config().num_layers as usize;
    let mut fitted = Fitted::default();
    for layer in 0..layers {
        let file = EtsFile::open(dense)?;
        let dense_enc = CpuEncoder::new(&file).map_err(|e| err(&e))?;
        for (weights, stage) in STAGES {
            let todo = stage_todo(recipe, layer, weights);
            let stats = advance(
                backend,
                &dense_enc,
                &file,
                &fitted,
                &mut states,
                layer,
                stage,
                !todo.is_empty(),
                phases,
            )?;
            if let Some(stats) = stats {
                let t0 = std::time::Instant::now();
                let inverse = stages.needs_inverse();
                let (prepared, jobs) = prepare_stage(source, stats, layer, &todo, inverse)?;
                for job in jobs {
                    fit_one(recipe, &prepared, job, &mut fitted, layer, stages)?;
                }
                phases.add(FITTING, t0.elapsed());
            }
            release_free_memory();
        }
        if layer + 1 < layers {
            advance(
                backend,
                &dense_enc,
                &file,
                &fitted,
                &mut states,
                layer,
                Stage::Next,
                false,
                phases,
            )?;
        }
    }
    Ok(fitted)
}

/// Returns the allocator's free memory to the system. glibc keeps freed blocks of up to 32 MB in
/// its heaps (the size it maps on its own rises with every large block freed), so without this
/// the statistics of earlier stages stay resident through the widest one.
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: `malloc_trim` only hands free pages of glibc's heaps back to the system; it has
        // no preconditions and touches no live allocation.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// The tensors of the pruned model by name: fitted tensors from `fitted` (dense f32 views), the
/// rest from `dense`.
pub(crate) fn pruned_lookup<'g>(
    dense: &'g EtsFile,
    fitted: &'g Fitted,
    shapes: &'g BTreeMap<&'g str, Vec<u64>>,
) -> impl Fn(&str) -> Result<TensorView<'g>, RuntimeError> + 'g {
    move |name: &str| match (fitted.tensors.get_key_value(name), shapes.get(name)) {
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
}

/// Moves every batch to the input of `stage` of `layer` (from the previous stage's
/// activations) in both models on `backend`, and returns that input's statistics when `collect`.
#[allow(clippy::too_many_arguments)]
fn advance(
    backend: &CalibrationBackend,
    dense_enc: &CpuEncoder<'_>,
    dense: &EtsFile,
    fitted: &Fitted,
    states: &mut Spill,
    layer: usize,
    stage: Stage,
    collect: bool,
    phases: &mut Phases,
) -> Result<Option<LinearStats>, ConvertError> {
    let mut t0 = std::time::Instant::now();
    let shapes = fitted.shapes();
    let get = pruned_lookup(dense, fitted, &shapes);
    let pl = backend.layer_from(dense_enc, layer, &get)?;
    let dl = backend.dense_layer(dense_enc, dense, layer)?;
    let mut stats: Option<Statistics<'_>> = None;
    for b in 0..states.len() {
        let lengths = states.lengths(b).to_vec();
        // The stage inputs (dense, pruned); stored back when they are the next stage's too.
        let (d, p) = match stage {
            Stage::Hidden if collect => (
                states.read(b, Slot::DenseInput)?,
                states.read(b, Slot::PrunedInput)?,
            ),
            Stage::Hidden => continue,
            Stage::Context => {
                let (xd, xp) = (
                    states.read(b, Slot::DenseInput)?,
                    states.read(b, Slot::PrunedInput)?,
                );
                let ad = dl.context(&xd, &lengths)?;
                let ap = pl.context(&xp, &lengths)?;
                states.write(b, Slot::DenseStage, &ad)?;
                states.write(b, Slot::PrunedStage, &ap)?;
                (ad, ap)
            }
            Stage::AttentionOut => {
                let (xd, xp) = (
                    states.read(b, Slot::DenseInput)?,
                    states.read(b, Slot::PrunedInput)?,
                );
                let (cd, cp) = (
                    states.read(b, Slot::DenseStage)?,
                    states.read(b, Slot::PrunedStage)?,
                );
                let ad = dl.attention_out(&cd, &xd)?;
                let ap = pl.attention_out(&cp, &xp)?;
                states.write(b, Slot::DenseStage, &ad)?;
                states.write(b, Slot::PrunedStage, &ap)?;
                (ad, ap)
            }
            Stage::Intermediate if collect => {
                let (ad, ap) = (
                    states.read(b, Slot::DenseStage)?,
                    states.read(b, Slot::PrunedStage)?,
                );
                (dl.intermediate(&ad)?, pl.intermediate(&ap)?)
            }
            Stage::Intermediate => continue,
            Stage::Next => {
                let (ad, ap) = (
                    states.read(b, Slot::DenseStage)?,
                    states.read(b, Slot::PrunedStage)?,
                );
                let id = dl.intermediate(&ad)?;
                let xd = dl.output(&id, &ad)?;
                drop(id);
                let ip = pl.intermediate(&ap)?;
                let xp = pl.output(&ip, &ap)?;
                states.write(b, Slot::DenseInput, &xd)?;
                states.write(b, Slot::PrunedInput, &xp)?;
                continue;
            }
        };
        if !collect {
            continue;
        }
        phases.add(ACTIVATIONS, t0.elapsed());
        t0 = std::time::Instant::now();
        let tokens: usize = lengths.iter().sum();
        let st = match &mut stats {
            Some(s) => s,
            None => stats.insert(backend.statistics(d.len() / tokens.max(1))?),
        };
        st.accumulate(&p, &d)?;
        phases.add(STATISTICS, t0.elapsed());
        t0 = std::time::Instant::now();
    }
    phases.add(ACTIVATIONS, t0.elapsed());
    if !collect {
        return Ok(None);
    }
    let Some(stats) = stats else {
        return Err(ConvertError::Calibration("no calibration sentences".into()));
    };
    let t0 = std::time::Instant::now();
    let stats = stats.finish()?;
    phases.add(STATISTICS, t0.elapsed());
    Ok(Some(stats))
}

/// One weight of a stage, loaded, with its least-squares targets.
pub(crate) struct Job {
    linear: Linear,
    weight: SourceTensor,
    bias: SourceTensor,
    targets: Vec<f64>,
    /// Heads of the unpruned model and their width.
    heads: (usize, usize),
}

impl Job {
    /// The weight's canonical name at `layer`.
    pub(crate) fn name(&self, layer: usize) -> String {
        self.linear.0.name(layer)
    }
}

/// Loads the weights `todo` of one stage and takes their targets from `stats`, then prepares the
/// statistics (with the inverse when `inverse`, for greedy selection): the cross products are gone
/// before the inverse is made, which bounds the peak memory of the widest stage.
pub(crate) fn prepare_stage(
    source: &dyn ModelSource,
    stats: LinearStats,
    layer: usize,
    todo: &[Linear],
    inverse: bool,
) -> Result<(Prepared, Vec<Job>), ConvertError> {
    let mut jobs = Vec::with_capacity(todo.len());
    for &linear in todo {
        let (w, b, _) = linear;
        let wname = w.name(layer);
        let weight = source.load(&wname)?;
        let bias = source.load(&b.name(layer))?;
        if !matches!(weight.shape[..], [r, c] if r == bias.data.len() && c == stats.inputs()) {
            return Err(ConvertError::Tensor {
                name: wname,
                reason: format!("shape {:?} does not match its bias or inputs", weight.shape),
            });
        }
        let targets =
            stats
                .targets(&weight.data, &bias.data)
                .map_err(|e| ConvertError::Tensor {
                    name: wname,
                    reason: e.to_string(),
                })?;
        let c = source.config();
        jobs.push(Job {
            linear,
            weight,
            bias,
            targets,
            heads: (c.num_heads as usize, c.head_dim as usize),
        });
    }
    let prepared = stats.prepare(inverse).map_err(|e| err(&e))?;
    Ok((prepared, jobs))
}

/// Fits one weight and its bias under its plan and records them, its units chosen and refitted
/// as `stages` says (greedy selection needs the statistics prepared with their inverse).
pub(crate) fn fit_one(
    recipe: &Recipe,
    prepared: &Prepared,
    job: Job,
    fitted: &mut Fitted,
    layer: usize,
    stages: Stages,
) -> Result<(), ConvertError> {
    let Job {
        linear: (w, b, role),
        weight,
        bias,
        targets,
        heads: (num_heads, head_dim),
    } = job;
    let (wname, bname) = (w.name(layer), b.name(layer));
    let Some(plan) = calibrated_plan(recipe, layer, w, role) else {
        return Ok(());
    };
    let (rows, n) = (bias.data.len(), prepared.inputs());
    let keep_fraction = 1.0 - plan.sparsity;
    let tensor_err = |e: crate::prune::calibrated::CalibratedError| ConvertError::Tensor {
        name: wname.clone(),
        reason: e.to_string(),
    };
    let rows_of = |groups: usize| -> Result<_, ConvertError> {
        let per = keep_count(rows / groups.max(1), keep_fraction);
        let f = fit_rows(prepared, &targets, rows, groups, per).map_err(tensor_err)?;
        if stages.refit == Refit::None {
            // Ablation: the chosen rows keep their source values, every bias its own.
            let mut w = weight.data.clone();
            for (row, _) in w
                .chunks_exact_mut(n.max(1))
                .zip(&f.keep)
                .filter(|(_, &k)| !k)
            {
                row.fill(0.0);
            }
            return Ok((f.keep, w, bias.data.clone()));
        }
        Ok((f.keep, f.weight, f.bias))
    };
    let (keep, fit_w, fit_b) = match plan.method {
        Method::Rows => rows_of(1)?,
        Method::AttentionAware if role == Role::Value => rows_of(num_heads)?,
        Method::Heads if head_dim > 0 && n == num_heads * head_dim => {
            // Heads are the output projection's column groups: greedy removal prices each by
            // the attention output it carries, and its updates refit the kept heads' columns.
            // Under `--selection score` they are ranked by activation-aware scores instead.
            let keep = keep_count(num_heads, keep_fraction);
            let f = fit_tiles_prepared(
                &weight.data,
                &bias.data,
                prepared,
                &targets,
                (rows, head_dim),
                rows,
                &[keep],
                stages,
            )
            .map_err(tensor_err)?;
            let kept = (0..num_heads).filter(|&h| f.keep[h]).collect();
            fitted.heads.insert(layer, kept);
            fitted.methods.insert(wname.clone(), plan.method);
            insert(fitted, wname, bname, rows, n, f.weight, f.bias);
            return Ok(());
        }
        Method::Heads => {
            return Err(ConvertError::Tensor {
                name: wname,
                reason: format!("{n} inputs are not {num_heads} heads of {head_dim}"),
            })
        }
        Method::Cols => {
            // A column is a tile as tall as the weight: one band, greedy column removal.
            let budget = [keep_count(n, keep_fraction)];
            let f = fit_tiles_prepared(
                &weight.data,
                &bias.data,
                prepared,
                &targets,
                (rows, 1),
                rows,
                &budget,
                stages,
            )
            .map_err(tensor_err)?;
            (f.keep, f.weight, f.bias)
        }
        _ => {
            let f = fit_tile_plan(&plan, &weight.data, &bias.data, prepared, &targets, stages)
                .map_err(tensor_err)?;
            (f.keep, f.weight, f.bias)
        }
    };
    drop(targets);
    fitted.masks.insert(wname.clone(), keep);
    // The value rows of `attention-aware` are chosen the `rows` way, and described so.
    let unit = match plan.method {
        Method::AttentionAware if role == Role::Value => Method::Rows,
        m => m,
    };
    fitted.methods.insert(wname.clone(), unit);
    insert(fitted, wname, bname, rows, n, fit_w, fit_b);
    Ok(())
}

/// Calibrated tile pruning of one weight under a tile-keeping plan.
fn fit_tile_plan(
    plan: &TensorPlan,
    weight: &[f32],
    bias: &[f32],
    prepared: &Prepared,
    targets: &[f64],
    stages: Stages,
) -> Result<crate::prune::calibrated::TileFit, crate::prune::calibrated::CalibratedError> {
    let (rows, n) = (bias.len(), prepared.inputs());
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
            let scores = activation_tile_scores(weight, rows, n, prepared.input_energy(), th, tw);
            let keep = keep_count(scores.len(), keep_fraction);
            (th, budget_from_scores(&scores, gc, keep))
        }
    };
    fit_tiles_prepared(
        weight,
        bias,
        prepared,
        targets,
        (th, tw),
        band_rows,
        &budget,
        stages,
    )
}

/// Records a refitted weight (`[rows, n]`) and its bias.
fn insert(
    fitted: &mut Fitted,
    wname: String,
    bname: String,
    rows: usize,
    n: usize,
    weight: Vec<f32>,
    bias: Vec<f32>,
) {
    fitted.tensors.insert(
        wname,
        SourceTensor {
            shape: vec![rows, n],
            data: weight,
        },
    );
    fitted.tensors.insert(
        bname,
        SourceTensor {
            shape: vec![rows],
            data: bias,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::{open_source, IngestOptions};
    use crate::runtime::cpu::LayerTrace;

    /// The statistics gathered batch by batch through the activation file are bit for bit those
    /// of one pass over activations all held in memory (the layer traces of the dense model).
    #[test]
    fn spilled_statistics_equal_in_memory_ones() {
        let dir = tempfile::tempdir().expect("dir");
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/sources/tiny-safetensors/model.safetensors");
        let source = open_source(&src, &IngestOptions::default()).expect("source");
        let dense_path = dir.path().join("dense.ets");
        super::super::write_model(
            &*source,
            &dense_path,
            &Recipe::default(),
            Dtype::F32,
            true,
            false,
            None,
            None,
        )
        .expect("dense");
        let dense = EtsFile::open(&dense_path).expect("open");
        let enc = CpuEncoder::new(&dense).expect("encoder");
        let tokenizer = TextTokenizer::from_file(&dense).expect("tokenizer");
        let words = [
            "the", "film", "was", "a", "dull", "great", "piece", "of", "work",
        ];
        // Three batches, the last one short.
        let texts: Vec<String> = (0..2 * BATCH_SENTENCES + 5)
            .map(|i| {
                (0..3 + i % 7)
                    .map(|j| words[(i * 5 + j * 3) % words.len()])
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        let config = source.config();
        let mut spill =
            Spill::create(&dir.path().join("act.tmp"), config.hidden_size as usize).expect("spill");
        let mut batches = Vec::new();
        for c in texts.chunks(BATCH_SENTENCES) {
            let t: Vec<&str> = c.iter().map(String::as_str).collect();
            let batch = tokenizer.encode(&t).expect("encode").batch;
            let (x, lengths) = enc.embed_batch(&batch).expect("embed");
            spill.push(lengths.clone(), &x).expect("push");
            batches.push((lengths, x));
        }
        let fitted = Fitted::default();
        let mut phases = Phases::default();
        let cpu = CalibrationBackend::cpu();
        for layer in 0..config.num_layers as usize {
            let traces: Vec<LayerTrace> = batches
                .iter()
                .map(|(l, x)| enc.trace_layer(layer, x, l).expect("trace"))
                .collect();
            for (i, &(_, stage)) in STAGES.iter().enumerate() {
                let got = advance(
                    &cpu,
                    &enc,
                    &dense,
                    &fitted,
                    &mut spill,
                    layer,
                    stage,
                    true,
                    &mut phases,
                )
                .expect("advance")
                .expect("stats");
                let mut want: Option<LinearStats> = None;
                for ((lengths, x), t) in batches.iter().zip(&traces) {
                    let input: &[f32] = match i {
                        0 => x,
                        1 => &t.context,
                        2 => &t.attention_out,
                        _ => &t.intermediate,
                    };
                    let tokens: usize = lengths.iter().sum();
                    want.get_or_insert_with(|| LinearStats::new(input.len() / tokens))
                        .accumulate(input, input)
                        .expect("accumulate");
                }
                let want = want.expect("batches");
                assert!(want.tokens() > 0);
                assert_eq!(got, want, "layer {layer}, stage {i}");
            }
            advance(
                &cpu,
                &enc,
                &dense,
                &fitted,
                &mut spill,
                layer,
                Stage::Next,
                false,
                &mut phases,
            )
            .expect("next");
            for ((_, x), t) in batches.iter_mut().zip(traces) {
                *x = t.output;
            }
        }
        // The activation file holds the last layer's output, as the in-memory pass does.
        for (b, (_, x)) in batches.iter().enumerate() {
            assert_eq!(&spill.read(b, Slot::DenseInput).expect("read"), x);
        }
    }
}
