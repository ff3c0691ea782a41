//! The conversion pipeline behind `et-convert`: read a source model one tensor at a time, prune
//! each linear weight as the recipe says, and stream the result into a `.ets` writer. At most the
//! four attention weights of one layer are in memory at once (for head pruning).

pub mod allocate;
pub mod backend;
mod backend_cuda;
pub mod calibrate;
mod calibrated;
mod heads;
mod phases;
mod spill;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::files::TempPath;
use crate::format::{
    names, Dtype, EmbeddingConfig, EncodedTensor, EtsWriter, FormatError, ModelConfig, WriteOptions,
};
use crate::ingest::{open_source, IngestError, IngestOptions, ModelSource, SourceTensor};
pub use crate::prune::calibrated::{Refit, Selection, Stages};
use crate::prune::{prune_matrix, Matrix, Method, PruneReport, Recipe, RecipeError, Role};
pub use phases::PhaseTime;
use phases::Phases;

/// Everything that can stop a conversion.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The source model could not be read or is not a supported BERT.
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// Writing or re-reading the output failed.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The recipe is invalid.
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    /// A source tensor has a shape the converter cannot prune.
    #[error("tensor {name}: {reason}")]
    Tensor {
        /// Canonical name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A value is beyond the range of f16 (largest finite 65504), the chosen storage type.
    #[error("tensor {name}: the value {value} is beyond the f16 range (largest 65504) and would be stored as infinity; convert with --dtype bf16 (or f32)")]
    F16Overflow {
        /// Canonical name.
        name: String,
        /// The first value out of range.
        value: f32,
    },
    /// Calibration could not run or the pruned model fell below `--min-cosine`.
    #[error("calibration: {0}")]
    Calibration(String),
    /// `--device cuda` was asked for and no usable GPU is present.
    #[error("--device cuda: no usable GPU for calibration: {reason}")]
    DeviceUnavailable {
        /// What is missing (driver, GPU, NVRTC, cuBLAS), as the CUDA runtime says.
        reason: String,
    },
    /// The GPU failed during calibration.
    #[error("calibration on the GPU: {0}")]
    Cuda(#[from] crate::runtime::cuda::CudaError),
}

/// Options of one conversion.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// Pruning recipe.
    pub recipe: Recipe,
    /// Element type of the stored weights (1-D vectors are always stored as f32).
    pub dtype: Dtype,
    /// Replace an existing output.
    pub overwrite: bool,
    /// Where to find config and tokenizer.
    pub ingest: IngestOptions,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Sentences (text file or SST-2 tsv) to compare dense and pruned outputs on.
    pub calibrate: Option<PathBuf>,
    /// How many calibration sentences to use at most.
    pub calibrate_limit: usize,
    /// Fail (and write nothing) when the calibrated output cosine falls below this.
    pub min_cosine: Option<f64>,
    /// How per-weight sparsities are chosen under the global target when calibrating.
    pub allocate: Allocate,
    /// How calibrated pruning chooses and refits the kept tiles (default: the full method).
    pub stages: Stages,
    /// Where calibration computes its activations and statistics: `Cpu`, `Cuda` (an error
    /// without a usable GPU) or `Auto` (the GPU when usable, else the CPU).
    pub device: crate::runtime::shared::Device,
}

/// The device a calibrated conversion computed on.
#[derive(Debug, Clone, Serialize)]
pub struct CalibrationDevice {
    /// `CPU`, or `CUDA` with the GPU's name and architecture.
    pub name: String,
    /// Why `auto` fell back to the CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

/// How calibrated pruning spreads the global sparsity target over the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Allocate {
    /// Every weight takes the recipe's sparsity.
    #[default]
    Uniform,
    /// Per-weight sparsities from a measured sensitivity profile ([`allocate`]).
    Sensitivity,
}

impl ConvertOptions {
    /// `recipe` stored as `dtype`, with everything else off: keep an existing output, no progress
    /// bar, no calibration, config and tokenizer found beside the source.
    pub fn new(recipe: Recipe, dtype: Dtype) -> Self {
        ConvertOptions {
            recipe,
            dtype,
            overwrite: false,
            ingest: IngestOptions::default(),
            progress: false,
            calibrate: None,
            calibrate_limit: 0,
            min_cosine: None,
            allocate: Allocate::Uniform,
            stages: Stages::default(),
            device: crate::runtime::shared::Device::Cpu,
        }
    }
}

/// What a conversion did.
#[derive(Debug, Clone, Serialize)]
pub struct ConvertReport {
    /// Source file.
    pub input: PathBuf,
    /// Output file.
    pub output: PathBuf,
    /// The architecture written (heads per layer after head pruning).
    pub model: ModelConfig,
    /// One entry per linear weight.
    pub tensors: Vec<PruneReport>,
    /// Bytes of the source file.
    pub source_bytes: u64,
    /// Bytes of the output file.
    pub output_bytes: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Whether a tokenizer was embedded.
    pub tokenizer: bool,
    /// Dense-vs-pruned fidelity, with `--calibrate`.
    pub calibration: Option<calibrate::Calibration>,
    /// Sentence-embedding settings recorded (from a sentence-transformers folder).
    pub embedding: Option<EmbeddingConfig>,
    /// What the user should know: no tokenizer, parts of a sentence-transformers pipeline not
    /// applied, an output larger than an 8-bit source.
    pub warnings: Vec<String>,
    /// The device calibration computed on, with `--calibrate`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibration_device: Option<CalibrationDevice>,
    /// Wall-clock time by phase, with `--calibrate` (empty without).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<PhaseTime>,
}

fn as_matrix<'a>(name: &str, t: &'a SourceTensor) -> Result<Matrix<'a>, ConvertError> {
    match t.shape[..] {
        [rows, cols] if rows * cols == t.data.len() => Ok(Matrix {
            rows,
            cols,
            data: &t.data,
        }),
        _ => Err(ConvertError::Tensor {
            name: name.to_string(),
            reason: format!("expected a 2-D weight, found shape {:?}", t.shape),
        }),
    }
}

/// Converts `input` into a `.ets` file at `output` (written atomically).
pub fn convert(
    input: &Path,
    output: &Path,
    opts: &ConvertOptions,
) -> Result<ConvertReport, ConvertError> {
    let start = Instant::now();
    if !opts.overwrite && output.exists() {
        return Err(FormatError::OutputExists {
            path: output.to_path_buf(),
        }
        .into());
    }
    let source = open_source(input, &opts.ingest)?;
    opts.recipe.validate(source.config().num_layers as usize)?;
    let mut warnings = Vec::new();
    let embedding = embedding_settings(input, source.config(), &mut warnings)?;
    let mut phases = Phases::default();
    let mut calibration_device = None;
    let (calibration, fitted, recipe) = match &opts.calibrate {
        Some(sentences) => {
            let (backend, fallback) = backend::CalibrationBackend::select(opts.device)?;
            calibration_device = Some(CalibrationDevice {
                name: backend.describe(),
                fallback,
            });
            let (c, f, r) =
                run_calibration(&backend, &*source, output, sentences, opts, &mut phases)?;
            (Some(c), f, r)
        }
        None => (None, None, opts.recipe.clone()),
    };
    let t_write = Instant::now();
    let extra = calibration
        .as_ref()
        .and_then(|c| serde_json::to_value(c).ok());
    let empty = BTreeMap::new();
    let overridden = calibrated::Overridden {
        inner: &*source,
        map: fitted.as_ref().map_or(&empty, |f| &f.tensors),
    };
    let written = write_model_with(
        &overridden,
        output,
        &recipe,
        opts.dtype,
        opts.overwrite,
        opts.progress,
        extra,
        fitted.as_ref(),
        embedding.as_ref(),
    )?;
    if opts.calibrate.is_some() {
        phases.add("write", t_write.elapsed());
    }
    let size = |p: &Path| source_size(p);
    if !written.tokenizer {
        warnings.push(
            "no tokenizer found beside the model or given with --tokenizer: the file holds none, \
             so et-run needs --tokenizer FILE (tokenizer.json or vocab.txt) to embed text"
                .to_string(),
        );
    }
    let (source_bytes, output_bytes) = (size(input), size(output));
    if source.quantized_int8() && output_bytes > source_bytes {
        warnings.push(format!(
            "the output ({:.1} MB) is larger than the source ({:.1} MB): the source stores its \
             weights as 8-bit integers, and .ets stores them dequantized as {} ({} bytes a value) \
             so that every runtime reads them directly; prune with --sparsity to shrink it",
            output_bytes as f64 / 1e6,
            source_bytes as f64 / 1e6,
            opts.dtype.name(),
            opts.dtype.size()
        ));
    }
    Ok(ConvertReport {
        input: input.to_path_buf(),
        output: output.to_path_buf(),
        model: written.config,
        tensors: written.reports,
        source_bytes,
        output_bytes,
        seconds: start.elapsed().as_secs_f64(),
        tokenizer: written.tokenizer,
        calibration,
        embedding,
        warnings,
        calibration_device,
        phases: phases.into_vec(),
    })
}

/// Bytes of a model: its file, or the files of its folder.
fn source_size(p: &Path) -> u64 {
    if p.is_dir() {
        return std::fs::read_dir(p)
            .map(|d| {
                d.filter_map(|e| e.ok()?.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
    }
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// The sentence-transformers settings of a folder input, with the maximum length capped by the
/// position table; their warnings join `warnings`.
fn embedding_settings(
    input: &Path,
    config: &ModelConfig,
    warnings: &mut Vec<String>,
) -> Result<Option<EmbeddingConfig>, ConvertError> {
    if !input.is_dir() {
        return Ok(None);
    }
    let Some(st) = crate::ingest::folder::sentence_transformers(input)? else {
        return Ok(None);
    };
    warnings.extend(st.warnings);
    let mut e = st.embedding;
    let positions = config.max_position_embeddings;
    if let Some(n) = e.max_length.filter(|&n| n > positions) {
        warnings.push(format!(
            "max_seq_length {n} is above the model's {positions} positions; recording {positions}"
        ));
        e.max_length = Some(positions);
    }
    Ok((!e.is_empty()).then_some(e))
}

/// Writes a dense f32 reference and the pruned model to temporary files beside the output,
/// compares them on the sentences, and enforces `--min-cosine`. When the recipe keeps tiles,
/// rows, columns or heads, the pruned model is calibrated first: the refitted tensors and kept
/// units are returned for the output, with the recipe applied (per-weight sparsities when
/// allocated).
fn run_calibration(
    backend: &backend::CalibrationBackend,
    source: &dyn ModelSource,
    output: &Path,
    sentences: &Path,
    opts: &ConvertOptions,
    phases: &mut Phases,
) -> Result<(calibrate::Calibration, Option<calibrated::Fitted>, Recipe), ConvertError> {
    let texts = calibrate::read_sentences(sentences, opts.calibrate_limit)?;
    let temps = ["dense", "pruned", "activations"].map(|s| TempPath::beside(output, s));
    let [dense, pruned, activations] = temps.each_ref().map(|t| t.path());
    let t0 = Instant::now();
    write_model(
        source,
        dense,
        &Recipe::default(),
        Dtype::F32,
        true,
        false,
        None,
        None,
    )?;
    phases.add("dense reference", t0.elapsed());
    let layers = source.config().num_layers as usize;
    let mut recipe = opts.recipe.clone();
    let mut allocation = None;
    let fitted = if calibrated::applies(&recipe, layers) {
        if opts.allocate == Allocate::Sensitivity && calibrated::prunes_heads(&recipe, layers) {
            return Err(ConvertError::Calibration(
                "--allocate sensitivity gives single weights their own sparsity, and head \
                 pruning removes heads from four weights of a layer at once: use --allocate \
                 uniform"
                    .into(),
            ));
        }
        if opts.allocate == Allocate::Sensitivity {
            let dense_file = crate::format::EtsFile::open(dense)?;
            let (r, a) = phases.time("sensitivity profile", || {
                allocate::sensitivity(backend, source, &dense_file, &recipe, &texts)
            })?;
            recipe = r;
            allocation = Some(a);
        }
        Some(calibrated::fit_model(
            backend,
            source,
            dense,
            &recipe,
            opts.stages,
            &texts,
            activations,
            phases,
        )?)
    } else {
        None
    };
    calibrated::release_free_memory();
    let empty = BTreeMap::new();
    let overridden = calibrated::Overridden {
        inner: source,
        map: fitted.as_ref().map_or(&empty, |f| &f.tensors),
    };
    let t0 = Instant::now();
    write_model(
        &overridden,
        pruned,
        &recipe,
        opts.dtype,
        true,
        opts.progress,
        None,
        fitted.as_ref(),
    )?;
    phases.add("write", t0.elapsed());
    let label = sentences
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    calibrated::release_free_memory();
    let mut result = phases.time("comparison", || {
        calibrate::compare(dense, pruned, &label, &texts)
    })?;
    if let Some(f) = &fitted {
        result.pruning = Some(calibrate::CalibratedPruning {
            method: calibrate::calibrated_description(f.methods.values().copied(), opts.stages),
            selection: opts.stages.selection,
            refit: opts.stages.refit,
            weights: f.methods.len(),
            allocation,
        });
    }
    if let Some(min) = opts.min_cosine {
        if result.output_cosine < min {
            return Err(ConvertError::Calibration(format!(
                "output cosine {:.5} on {} sentences is below --min-cosine {min}; nothing written",
                result.output_cosine, result.sentences
            )));
        }
    }
    Ok((result, fitted, recipe))
}

struct Written {
    config: ModelConfig,
    reports: Vec<PruneReport>,
    tokenizer: bool,
}

/// Streams every tensor of `source` through pruning into a new file at `output`; the weights
/// and layers that calibration fitted keep exactly the tiles, rows, columns or heads it chose.
#[allow(clippy::too_many_arguments)]
fn write_model(
    source: &dyn ModelSource,
    output: &Path,
    recipe: &Recipe,
    dtype: Dtype,
    overwrite: bool,
    show_progress: bool,
    calibration: Option<serde_json::Value>,
    fitted: Option<&calibrated::Fitted>,
) -> Result<Written, ConvertError> {
    write_model_with(
        source,
        output,
        recipe,
        dtype,
        overwrite,
        show_progress,
        calibration,
        fitted,
        None,
    )
}

/// [`write_model`] that also records sentence-embedding settings.
#[allow(clippy::too_many_arguments)]
fn write_model_with(
    source: &dyn ModelSource,
    output: &Path,
    recipe: &Recipe,
    dtype: Dtype,
    overwrite: bool,
    show_progress: bool,
    calibration: Option<serde_json::Value>,
    fitted: Option<&calibrated::Fitted>,
    embedding: Option<&EmbeddingConfig>,
) -> Result<Written, ConvertError> {
    let mut config = source.config().clone();
    let names = source.tensor_names();
    let progress = progress_bar(show_progress, names.len() as u64);
    let writer = EtsWriter::create(output, WriteOptions { overwrite })?;
    let mut heads = heads::HeadPlan::chosen(fitted.map(|f| f.heads.clone()).unwrap_or_default());
    let masks = fitted.map(|f| &f.masks);
    let mut reports = Vec::new();
    // Pruning and encoding run here while a second thread hashes and writes the previous
    // tensor; the bounded channel keeps at most one encoded tensor waiting.
    let (tx, rx) = std::sync::mpsc::sync_channel::<(String, EncodedTensor)>(1);
    let (written, produced) = std::thread::scope(|s| {
        let handle = s.spawn(move || -> Result<EtsWriter, FormatError> {
            let mut writer = writer;
            for (name, encoded) in rx {
                writer.add_tensor(&name, &encoded)?;
            }
            Ok(writer)
        });
        let produced = (|| -> Result<(), ConvertError> {
            for name in &names {
                progress.set_message(name.clone());
                let encoded = encode_tensor(
                    source,
                    &config,
                    recipe,
                    dtype,
                    &mut heads,
                    &mut reports,
                    name,
                    masks,
                )?;
                if tx.send((name.clone(), encoded)).is_err() {
                    break; // the writer failed; its error is reported below
                }
                progress.inc(1);
            }
            Ok(())
        })();
        drop(tx);
        let written = handle
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        (written, produced)
    });
    let mut writer = written?;
    produced?;
    progress.finish_and_clear();
    heads.apply(&mut config);
    let tokenizer = source.tokenizer();
    if let Some(t) = &tokenizer {
        writer.add_blob(
            names::TOKENIZER_SECTION,
            "tokenizer",
            &t.format,
            &t.bytes,
            false,
        )?;
    }
    let mut record = recipe_record(recipe, dtype, &reports);
    if let (Some(obj), Some(c)) = (record.as_object_mut(), calibration) {
        obj.insert("calibration".into(), c);
    }
    if let Some(e) = embedding {
        writer.set_embedding(e.clone());
    }
    writer.finish(config.clone(), record, source.provenance())?;
    Ok(Written {
        config,
        reports,
        tokenizer: tokenizer.is_some(),
    })
}

/// Loads one tensor and prunes (linear weights) or encodes it (everything else).
#[allow(clippy::too_many_arguments)]
fn encode_tensor(
    source: &dyn ModelSource,
    config: &ModelConfig,
    recipe: &Recipe,
    dtype: Dtype,
    heads: &mut heads::HeadPlan,
    reports: &mut Vec<PruneReport>,
    name: &str,
    masks: Option<&BTreeMap<String, Vec<bool>>>,
) -> Result<EncodedTensor, ConvertError> {
    let tensor = source.load(name)?;
    check_values(name, &tensor, dtype)?;
    Ok(match Role::of_name(name) {
        Some((layer, role)) => {
            let plan = recipe.plan(name, layer, role);
            let query_plan = recipe.plan(
                &names::LayerTensor::QueryWeight.name(layer),
                layer,
                Role::Query,
            );
            let (tensor, plan) = if query_plan.method == Method::Heads {
                let kept = heads.kept(source, config, layer, query_plan.sparsity)?;
                (heads::slice_weight(config, role, &tensor, kept), query_plan)
            } else {
                (tensor, plan)
            };
            let m = as_matrix(name, &tensor)?;
            let value_heads = (role == Role::Value)
                .then_some((config.num_heads as usize, config.head_dim as usize));
            let (encoded, report) = match masks.and_then(|k| k.get(name)) {
                Some(keep) => {
                    let t = encode_kept(m, &plan, role, keep, dtype)?;
                    let r = crate::prune::report_for(name, m, &plan, &t);
                    (t, r)
                }
                None => prune_matrix(name, m, &plan, dtype, value_heads)?,
            };
            reports.push(report);
            encoded
        }
        None => {
            let tensor = match heads::bias_role(name) {
                Some((layer, role)) if heads.is_pruned(layer) => {
                    let kept = heads.kept(source, config, layer, 0.0)?;
                    heads::slice_weight(config, role, &tensor, kept)
                }
                _ => tensor,
            };
            // Vectors are tiny and feed LayerNorm and bias adds directly: keep them exact.
            let dtype = if tensor.shape.len() == 1 {
                Dtype::F32
            } else {
                dtype
            };
            let shape = tensor.shape.iter().map(|&d| d as u64).collect();
            EncodedTensor::dense(shape, dtype, &tensor.data)?
        }
    })
}

/// Encodes a weight keeping the units calibration chose: output rows (`rows`, the value rows of
/// `attention-aware`), input columns (`cols`), or tiles of the plan's grid.
fn encode_kept(
    m: Matrix<'_>,
    plan: &crate::prune::TensorPlan,
    role: Role,
    keep: &[bool],
    dtype: Dtype,
) -> Result<EncodedTensor, FormatError> {
    let kept = || -> Vec<u32> {
        keep.iter()
            .enumerate()
            .filter(|(_, &k)| k)
            .map(|(i, _)| i as u32)
            .collect()
    };
    match plan.method {
        Method::Rows => EncodedTensor::rows(m.rows, m.cols, m.data, &kept(), dtype),
        Method::AttentionAware if role == Role::Value => {
            EncodedTensor::rows(m.rows, m.cols, m.data, &kept(), dtype)
        }
        Method::Cols => EncodedTensor::cols(m.rows, m.cols, m.data, &kept(), dtype),
        _ => {
            let (th, tw) = plan.tile;
            EncodedTensor::tile(m.rows, m.cols, m.data, th, tw, keep, dtype)
        }
    }
}

/// Refuses a tensor with a value that is not finite, and a matrix stored as f16 with a value beyond
/// the f16 range (it would become infinity and every output NaN). Vectors are stored as f32.
fn check_values(name: &str, t: &SourceTensor, dtype: Dtype) -> Result<(), ConvertError> {
    if let Some(v) = t.data.iter().find(|v| !v.is_finite()) {
        return Err(ConvertError::Tensor {
            name: name.to_string(),
            reason: format!("the source holds the value {v}"),
        });
    }
    if dtype == Dtype::F16 && t.shape.len() > 1 {
        let too_big = t
            .data
            .iter()
            .find(|v| half::f16::from_f32(**v).is_infinite());
        if let Some(v) = too_big {
            return Err(ConvertError::F16Overflow {
                name: name.to_string(),
                value: *v,
            });
        }
    }
    Ok(())
}

/// The recipe as stored in the file: what was asked, and what each weight got.
pub fn recipe_record(recipe: &Recipe, dtype: Dtype, reports: &[PruneReport]) -> serde_json::Value {
    let results: BTreeMap<&str, serde_json::Value> = reports
        .iter()
        .map(|r| {
            (
                r.name.as_str(),
                serde_json::json!({
                    "method": r.method.name(),
                    "encoding": r.encoding,
                    "target_sparsity": r.target_sparsity,
                    "density": r.density,
                }),
            )
        })
        .collect();
    let mut value = serde_json::to_value(recipe).unwrap_or(serde_json::Value::Null);
    if let Some(obj) = value.as_object_mut() {
        obj.insert("dtype".into(), dtype.name().into());
        obj.insert(
            "results".into(),
            serde_json::to_value(results).unwrap_or_default(),
        );
    }
    value
}

fn progress_bar(show: bool, len: u64) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} tensors {elapsed} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}
