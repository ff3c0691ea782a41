//! Benchmarks of the `.ets` reader (used by `bench/format_bench.sh`).
//!
//! - `et-bench-format gen OUT [--encoding tile|dense] [--density D]`: a BERT-base-sized f16 file
//!   (12 layers, hidden 768, FFN 3072, vocab 30522) with deterministic synthetic weights.
//! - `et-bench-format open FILE [--iters N]`: time `EtsFile::open` (structural validation).
//! - `et-bench-format verify FILE [--iters N]`: time open + `verify_checksums` (every byte).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};
use ets::format::names::{self, LayerTensor};
use ets::format::{Activation, Dtype, EtsFile, EtsWriter, FormatError, ModelConfig, WriteOptions};
use ets_testkit::conformance::model::{
    encode, fixture_provenance, tiny_vocab, DenseTensor, FixtureEncoding,
};
use ets_testkit::rng::Rng;

#[derive(Parser)]
#[command(about = "Benchmarks of the .ets reader")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Enc {
    Dense,
    Tile,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a BERT-base-sized f16 file with synthetic weights.
    Gen {
        /// Output file (overwritten).
        out: PathBuf,
        /// Encoding of the linear weights (32x32 tiles for `tile`).
        #[arg(long, value_enum, default_value = "tile")]
        encoding: Enc,
        /// Fraction of tiles kept with `--encoding tile`.
        #[arg(long, default_value_t = 0.7)]
        density: f64,
    },
    /// Time EtsFile::open.
    Open {
        /// The file.
        file: PathBuf,
        /// Repetitions.
        #[arg(long, default_value_t = 201)]
        iters: usize,
    },
    /// Time open plus verify_checksums.
    Verify {
        /// The file.
        file: PathBuf,
        /// Repetitions.
        #[arg(long, default_value_t = 5)]
        iters: usize,
    },
}

fn bert_base() -> ModelConfig {
    ModelConfig {
        architecture: "bert".into(),
        num_layers: 12,
        hidden_size: 768,
        num_heads: 12,
        head_dim: 64,
        heads_per_layer: vec![12; 12],
        intermediate_size: 3072,
        vocab_size: 30522,
        max_position_embeddings: 512,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
        activation: Activation::Gelu,
        num_labels: None,
    }
}

fn tensor_list(cfg: &ModelConfig) -> Vec<(String, Vec<u64>, bool)> {
    let h = u64::from(cfg.hidden_size);
    let mut out = vec![
        (
            names::WORD_EMBEDDINGS.to_string(),
            vec![u64::from(cfg.vocab_size), h],
            false,
        ),
        (
            names::POSITION_EMBEDDINGS.to_string(),
            vec![u64::from(cfg.max_position_embeddings), h],
            false,
        ),
        (
            names::TOKEN_TYPE_EMBEDDINGS.to_string(),
            vec![u64::from(cfg.type_vocab_size), h],
            false,
        ),
        (names::EMBEDDINGS_LN_WEIGHT.to_string(), vec![h], false),
        (names::EMBEDDINGS_LN_BIAS.to_string(), vec![h], false),
    ];
    for layer in 0..cfg.num_layers as usize {
        for t in LayerTensor::ALL {
            let shape = t.shape(cfg, layer);
            out.push((t.name(layer), shape, t.is_linear_weight()));
        }
    }
    out
}

fn generate(out: &Path, enc: Enc, density: f64) -> Result<(), FormatError> {
    let cfg = bert_base();
    let mut rng = Rng::new(0x0e75_bb01);
    let mut w = EtsWriter::create(out, WriteOptions { overwrite: true })?;
    for (name, shape, linear) in tensor_list(&cfg) {
        let n = shape.iter().product::<u64>() as usize;
        let data: Vec<f32> = (0..n).map(|_| rng.range_f32(-0.05, 0.05)).collect();
        let t = DenseTensor {
            name,
            shape,
            data,
            linear,
        };
        let encoded = match enc {
            Enc::Dense => encode(&t, FixtureEncoding::Dense, Dtype::F16, &mut rng)?,
            Enc::Tile if linear => {
                let [rows, cols] = [t.shape[0] as usize, t.shape[1] as usize];
                let keep: Vec<bool> = (0..(rows / 32) * (cols / 32))
                    .map(|_| rng.chance(density))
                    .collect();
                ets::format::EncodedTensor::tile(rows, cols, &t.data, 32, 32, &keep, Dtype::F16)?
            }
            Enc::Tile => encode(&t, FixtureEncoding::Dense, Dtype::F16, &mut rng)?,
        };
        w.add_tensor(&t.name, &encoded)?;
    }
    w.add_blob(
        names::TOKENIZER_SECTION,
        "tokenizer",
        "vocab.txt",
        tiny_vocab().as_bytes(),
        true,
    )?;
    let recipe = serde_json::json!({"method": "synthetic-benchmark", "density": density});
    w.finish(cfg, recipe, fixture_provenance("bert-base-synthetic"))
}

/// Median, minimum and 90th percentile of `samples` (seconds).
fn stats(mut samples: Vec<f64>) -> (f64, f64, f64) {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.0), at(0.9))
}

/// User plus system CPU time of this process so far, in seconds (from /proc; 0 when unavailable).
/// Wall-clock medians on a loaded machine include time spent waiting for a core; CPU time does not.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn time<T>(
    iters: usize,
    mut f: impl FnMut() -> Result<T, FormatError>,
) -> Result<Vec<f64>, FormatError> {
    // One untimed run warms the page cache and the allocator.
    f()?;
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        let t = Instant::now();
        std::hint::black_box(f()?);
        samples.push(t.elapsed().as_secs_f64());
    }
    Ok(samples)
}

fn run(cli: Cli) -> Result<(), FormatError> {
    match cli.cmd {
        Cmd::Gen {
            out,
            encoding,
            density,
        } => {
            generate(&out, encoding, density)?;
            let f = EtsFile::open(&out)?;
            println!(
                "wrote {} ({} bytes, {} sections)",
                out.display(),
                f.bytes().len(),
                f.header().sections.len()
            );
        }
        Cmd::Open { file, iters } => {
            let f = EtsFile::open(&file)?;
            let (bytes, sections) = (f.bytes().len(), f.header().sections.len());
            let header_len = u64::from_le_bytes(f.bytes()[16..24].try_into().unwrap_or([0; 8]));
            drop(f);
            let cpu = cpu_seconds();
            let samples = time(iters, || EtsFile::open(&file))?;
            let cpu_total = cpu_seconds() - cpu;
            // /proc counts CPU time in 10 ms ticks: report it only when the total is well above that.
            let cpu_text = if cpu_total >= 0.2 {
                format!("{:.1} us/open", cpu_total / (iters + 1) as f64 * 1e6)
            } else {
                "below resolution".to_string()
            };
            let (median, min, p90) = stats(samples);
            println!(
                "open {}: {bytes} bytes, {sections} sections, header {header_len} bytes: median {:.1} us, min {:.1} us, p90 {:.1} us, cpu {cpu_text} ({iters} runs)",
                file.display(), median * 1e6, min * 1e6, p90 * 1e6
            );
        }
        Cmd::Verify { file, iters } => {
            let bytes = std::fs::metadata(&file)
                .map_err(|e| FormatError::Io {
                    path: file.clone(),
                    source: e,
                })?
                .len();
            let samples = time(iters, || EtsFile::open(&file)?.verify_checksums())?;
            let (median, min, _) = stats(samples);
            println!(
                "verify {}: {bytes} bytes: median {:.1} ms ({:.0} MB/s), min {:.1} ms, threads {} ({iters} runs)",
                file.display(), median * 1e3, bytes as f64 / median / 1e6, min * 1e3, rayon::current_num_threads()
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("et-bench-format: {}: {e}", e.code());
            ExitCode::FAILURE
        }
    }
}
