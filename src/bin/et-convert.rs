//! et-convert: read a BERT model (ONNX, or safetensors + config.json), prune it into tiles, write
//! a `.ets` file. Exit codes: 0 success, 1 bad input or unsupported model, 2 usage.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use ets::convert::{convert, Allocate, ConvertOptions, ConvertReport, Refit, Selection, Stages};
use ets::format::Dtype;
use ets::ingest::IngestOptions;
use ets::prune::{Method, Recipe, Role};
use ets::runtime::shared::Device;

#[derive(Parser, Debug)]
#[command(
    name = "et-convert",
    version,
    about = "Convert a BERT model (a Hugging Face or sentence-transformers folder, .onnx, or .safetensors + config.json) into a tile-sparse .ets file"
)]
struct Args {
    /// Source model: a model folder (config.json with model.safetensors or its shards, or an ONNX
    /// export; a sentence-transformers folder also records its pooling, normalization and maximum
    /// length), a .safetensors file or shard index, or an .onnx file.
    input: PathBuf,
    /// Output .ets file.
    output: PathBuf,
    /// Pruning method: tile, tile-balanced, tile-grouped, rows, cols, irregular, attention-aware,
    /// heads, existing, none. Default: tile when a sparsity is given, otherwise none.
    #[arg(long, value_parser = parse_method)]
    method: Option<Method>,
    /// Global sparsity target: the fraction of each weight removed (0 to below 1).
    #[arg(long)]
    sparsity: Option<f64>,
    /// Sparsity for one role, e.g. `value=0.5` (roles: query, key, value, output,
    /// intermediate, ffn_output). Repeatable.
    #[arg(long = "role-sparsity", value_parser = parse_role_override)]
    role_sparsity: Vec<(Role, f64)>,
    /// Sparsity for one layer, e.g. `0=0.3`. Repeatable.
    #[arg(long = "layer-sparsity", value_parser = parse_layer_override)]
    layer_sparsity: Vec<(usize, f64)>,
    /// Tile shape ROWSxCOLS (edges 8, 16, 32, 64 or 128). Default 32x32: it keeps the accuracy of
    /// 16x16 with calibration and its kernels run faster.
    #[arg(long, value_parser = parse_tile)]
    tile: Option<[usize; 2]>,
    /// A JSON recipe with method, sparsity, tile, roles, layers and per-tensor overrides.
    /// Command-line options override it.
    #[arg(long)]
    recipe: Option<PathBuf>,
    /// Stored weight type: f16, bf16 or f32.
    #[arg(long, default_value = "f16", value_parser = parse_dtype)]
    dtype: Dtype,
    /// config.json to use instead of the one beside a safetensors model.
    #[arg(long)]
    config: Option<PathBuf>,
    /// tokenizer.json or vocab.txt to embed instead of the one beside the model.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Replace the output if it exists.
    #[arg(long)]
    force: bool,
    /// Print a machine-readable JSON report on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Print nothing but errors.
    #[arg(long)]
    quiet: bool,
    /// Calibration sentences (one per line, or a tsv with a `text` or `sentence` column such as
    /// SST-2). Methods that keep tiles, rows, columns or heads choose and refit them layer by
    /// layer on these sentences; every method then compares the dense source and the result
    /// (per-layer cosine and largest difference), recorded in the file's recipe.
    #[arg(long)]
    calibrate: Option<PathBuf>,
    /// Calibration sentences used: the first N of the file. With a calibrated method, each
    /// layer's kept tiles, rows, columns or heads are chosen and refitted on them.
    #[arg(long, alias = "calibrate-limit", default_value_t = 2048)]
    calibrate_samples: usize,
    /// With --calibrate: fail (exit 1, nothing written) when the output cosine is below this.
    #[arg(long, requires = "calibrate", value_parser = parse_cosine)]
    min_cosine: Option<f64>,
    /// With --calibrate: `uniform` gives every weight the global sparsity; `sensitivity` measures
    /// how much each weight alone moves the embeddings and spreads the same global target
    /// unevenly (sensitive weights keep more tiles). Default with --calibrate: `sensitivity` (it
    /// kept more accuracy than `uniform` on SST-2 at 50% and 70%, see bench/RESULTS.md), or
    /// `uniform` when the recipe sets role, layer or tensor sparsities or prunes heads.
    #[arg(long, value_parser = parse_allocate, requires = "calibrate")]
    allocate: Option<Allocate>,
    /// Ablation (advanced), with --calibrate: how tiles are chosen. `greedy` (default) removes
    /// tiles one at a time, each the one whose removal adds the least reconstruction error;
    /// `score` keeps the highest activation-aware scores in one pass. Recorded in the recipe.
    #[arg(long, value_parser = parse_selection, requires = "calibrate")]
    selection: Option<Selection>,
    /// Ablation (advanced), with --calibrate: `dense` (default) refits the kept weights and the
    /// bias by least squares toward the dense model's layer outputs; `none` keeps their source
    /// values. Recorded in the recipe.
    #[arg(long, value_parser = parse_refit, requires = "calibrate")]
    refit: Option<Refit>,
    /// With --calibrate: where the calibration activations and statistics are computed. `auto`
    /// uses the GPU when a usable one is present (NVIDIA driver, NVRTC and cuBLAS of CUDA 12),
    /// else the CPU; `cuda` fails (exit 1) without one. The output says which ran. Files
    /// calibrated on the CPU and on the GPU may differ in the last bits; each device repeats its
    /// own bytes.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DeviceArg {
    Auto,
    Cpu,
    Cuda,
}

fn parse_selection(s: &str) -> Result<Selection, String> {
    match s {
        "score" => Ok(Selection::Score),
        "greedy" => Ok(Selection::Greedy),
        _ => Err(format!("unknown selection {s:?}: score or greedy")),
    }
}

fn parse_refit(s: &str) -> Result<Refit, String> {
    match s {
        "none" => Ok(Refit::None),
        "dense" => Ok(Refit::Dense),
        _ => Err(format!("unknown refit {s:?}: none or dense")),
    }
}

fn parse_allocate(s: &str) -> Result<Allocate, String> {
    match s {
        "uniform" => Ok(Allocate::Uniform),
        "sensitivity" => Ok(Allocate::Sensitivity),
        _ => Err(format!("unknown allocation {s:?}: uniform or sensitivity")),
    }
}

fn parse_method(s: &str) -> Result<Method, String> {
    Method::parse(s).ok_or_else(|| {
        let all: Vec<_> = Method::ALL.iter().map(|m| m.name()).collect();
        format!("unknown method {s:?} (one of {})", all.join(", "))
    })
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("sparsity {v} must be at least 0 and below 1"))
    }
}

fn parse_cosine(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (-1.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a cosine (a number from -1 to 1)")),
    }
}

fn parse_role_override(s: &str) -> Result<(Role, f64), String> {
    let (role, value) = s.split_once('=').ok_or("expected ROLE=SPARSITY")?;
    let role = Role::parse(role).ok_or_else(|| format!("unknown role {role:?}"))?;
    Ok((role, parse_fraction(value)?))
}

fn parse_layer_override(s: &str) -> Result<(usize, f64), String> {
    let (layer, value) = s.split_once('=').ok_or("expected LAYER=SPARSITY")?;
    let layer = layer
        .parse()
        .map_err(|_| format!("{layer:?} is not a layer index"))?;
    Ok((layer, parse_fraction(value)?))
}

fn parse_tile(s: &str) -> Result<[usize; 2], String> {
    let (r, c) = s
        .split_once(['x', 'X'])
        .ok_or("expected ROWSxCOLS, e.g. 16x16")?;
    let edge = |e: &str| -> Result<usize, String> {
        let v: usize = e.parse().map_err(|_| format!("{e:?} is not a number"))?;
        if [8, 16, 32, 64, 128].contains(&v) {
            Ok(v)
        } else {
            Err(format!("tile edge {v} must be 8, 16, 32, 64 or 128"))
        }
    };
    Ok([edge(r)?, edge(c)?])
}

fn parse_dtype(s: &str) -> Result<Dtype, String> {
    Dtype::from_name(s).ok_or_else(|| format!("unknown dtype {s:?} (f16, bf16 or f32)"))
}

fn build_recipe(args: &Args) -> Result<Recipe, String> {
    let mut recipe = match &args.recipe {
        Some(path) => Recipe::from_file(path).map_err(|e| e.to_string())?,
        None => Recipe::default(),
    };
    if let Some(s) = args.sparsity {
        recipe.sparsity = parse_fraction(&s.to_string())?;
        if args.recipe.is_none() && args.method.is_none() {
            recipe.method = Method::Tile;
        }
    }
    if let Some(m) = args.method {
        recipe.method = m;
    }
    if let Some(t) = args.tile {
        recipe.tile = t;
    }
    recipe.roles.extend(args.role_sparsity.iter().copied());
    recipe.layers.extend(args.layer_sparsity.iter().copied());
    if recipe.method != Method::None
        && recipe.method != Method::Existing
        && recipe.sparsity == 0.0
        && recipe.roles.is_empty()
        && recipe.layers.is_empty()
        && recipe.tensors.is_empty()
    {
        return Err(format!(
            "method {} needs a sparsity (--sparsity, --role-sparsity, --layer-sparsity or a recipe)",
            recipe.method.name()
        ));
    }
    Ok(recipe)
}

fn print_table(r: &ConvertReport, recipe: &Recipe) {
    let m = &r.model;
    println!(
        "{} -> {}: BERT {} layers, hidden {}, heads {:?}, FFN {}",
        r.input.display(),
        r.output.display(),
        m.num_layers,
        m.hidden_size,
        m.heads_per_layer,
        m.intermediate_size
    );
    println!(
        "method {}, tile {}x{}, global sparsity {}",
        recipe.method.name(),
        recipe.tile[0],
        recipe.tile[1],
        recipe.sparsity
    );
    println!(
        "{:>5}  {:<22} {:<22} {:<22} {:<22} {:<22} {:<22}",
        "layer", "query", "key", "value", "output", "intermediate", "ffn_output"
    );
    for layer in 0..m.num_layers as usize {
        let cells: Vec<String> = Role::ALL
            .iter()
            .map(|role| {
                r.tensors
                    .iter()
                    .find(|t| Role::of_name(&t.name) == Some((layer, *role)))
                    .map(|t| {
                        let tile = t.tile.map(|[a, b]| format!(" {a}x{b}")).unwrap_or_default();
                        format!("{}{} {:.3}", t.encoding, tile, t.density)
                    })
                    .unwrap_or_else(|| "-".into())
            })
            .collect();
        println!(
            "{:>5}  {:<22} {:<22} {:<22} {:<22} {:<22} {:<22}",
            layer, cells[0], cells[1], cells[2], cells[3], cells[4], cells[5]
        );
    }
    if let Some(c) = &r.calibration {
        println!(
            "calibration on {} sentences of {}: per layer cosine / max |diff| (0 = embeddings)",
            c.sentences, c.source
        );
        for l in &c.layers {
            println!(
                "{:>5}  cosine {:.6}  max|diff| {:.4}",
                l.layer, l.cosine, l.max_abs_diff
            );
        }
        if let Some(p) = &c.pruning {
            println!("calibrated pruning of {} weights: {}", p.weights, p.method);
            if let Some(a) = &p.allocation {
                print_allocation(a);
            }
        }
        println!(
            "output (mean-pooled) cosine {:.6}, lowest sentence {:.6}",
            c.output_cosine, c.output_min_cosine
        );
    }
    if let Some(e) = &r.embedding {
        println!(
            "embedding settings recorded: pooling {}, normalize {}, max length {}",
            e.pooling.as_deref().unwrap_or("-"),
            e.normalize.map_or("-".to_string(), |b| b.to_string()),
            e.max_length.map_or("-".to_string(), |n| n.to_string())
        );
    }
    if let Some(d) = &r.calibration_device {
        match &d.fallback {
            Some(why) => println!("calibrated on {} ({why})", d.name),
            None => println!("calibrated on {}", d.name),
        }
    }
    if !r.phases.is_empty() {
        let parts: Vec<String> = r
            .phases
            .iter()
            .map(|p| format!("{} {:.1} s", p.phase, p.seconds))
            .collect();
        println!("time by phase: {}", parts.join(", "));
    }
    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "size {:.2} MB -> {:.2} MB ({:.1}%), tokenizer {}, {:.2} s",
        mb(r.source_bytes),
        mb(r.output_bytes),
        100.0 * r.output_bytes as f64 / r.source_bytes.max(1) as f64,
        if r.tokenizer { "embedded" } else { "none" },
        r.seconds
    );
}

fn print_allocation(a: &ets::convert::allocate::Allocation) {
    println!(
        "sensitivity allocation (profile on {} sentences): per weight sparsity / embedding drop when pruned alone",
        a.profile_sentences
    );
    let mut layer = None;
    for w in &a.weights {
        let Some((l, role)) = Role::of_name(&w.name) else {
            continue;
        };
        if layer != Some(l) {
            if layer.is_some() {
                println!();
            }
            print!("{l:>5} ");
            layer = Some(l);
        }
        print!(" {} {:.3}/{:.4}", role.name(), w.sparsity, w.drop);
    }
    println!();
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = ets::files::exit_cleanly_on_signals() {
        eprintln!("et-convert: warning: cannot remove temporary files on Ctrl-C: {e}");
    }
    let recipe = match build_recipe(&args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("et-convert: {e}");
            return ExitCode::from(2);
        }
    };
    if recipe.method == Method::None && args.sparsity.is_none() && !args.quiet && !args.json {
        eprintln!("et-convert: no sparsity given: writing dense weights (use --sparsity to prune)");
    }
    let structured = recipe.structured_max_sparsity();
    if args.calibrate.is_none() && structured > Recipe::UNCALIBRATED_LIMIT && !args.quiet {
        eprintln!(
            "et-convert: warning: {} pruning at {:.0}% sparsity without calibration data keeps \
             what has the largest weight norm, and accuracy will collapse (on all-MiniLM-L6-v2 at 50%, \
             SST-2 falls to chance). Pass --calibrate FILE (sentences of the task, one per line, \
             or a tsv with a text or sentence column) to choose what is kept on real activations and \
             refit it toward the dense outputs.",
            recipe.method.name(),
            100.0 * structured
        );
    }
    let opts = ConvertOptions {
        recipe: recipe.clone(),
        dtype: args.dtype,
        overwrite: args.force,
        ingest: IngestOptions {
            config: args.config.clone(),
            tokenizer: args.tokenizer.clone(),
        },
        progress: !args.quiet && !args.json && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        calibrate: args.calibrate.clone(),
        calibrate_limit: args.calibrate_samples.max(1),
        min_cosine: args.min_cosine,
        allocate: args.allocate.unwrap_or(
            if recipe.roles.is_empty()
                && recipe.layers.is_empty()
                && recipe.tensors.is_empty()
                && recipe.method != Method::Heads
            {
                Allocate::Sensitivity
            } else {
                Allocate::Uniform
            },
        ),
        stages: Stages {
            selection: args.selection.unwrap_or_default(),
            refit: args.refit.unwrap_or_default(),
        },
        device: match args.device {
            DeviceArg::Auto => Device::Auto,
            DeviceArg::Cpu => Device::Cpu,
            DeviceArg::Cuda => Device::Cuda,
        },
    };
    match convert(&args.input, &args.output, &opts) {
        Ok(report) => {
            if !args.quiet {
                for w in &report.warnings {
                    eprintln!("et-convert: warning: {w}");
                }
            }
            if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => eprintln!("et-convert: {e}"),
                }
            } else if !args.quiet {
                print_table(&report, &recipe);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("et-convert: {e}");
            ExitCode::from(1)
        }
    }
}
