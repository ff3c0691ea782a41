//! `et-run`: sentence embeddings (or token hidden states) from a `.ets` model.
//!
//! ```text
//! et-run model.ets --text "a sentence" --text "another"      # JSON lines
//! et-run model.ets --input sentences.txt --pooling cls --npy out.npy
//! et-run model.ets --input sentences.txt --device cuda --report  # time by phase, per weight
//! cat dev.tsv | et-run model.ets --input - --column sentence --npy out.npy
//! ```
//!
//! Pooling, normalization and the maximum length come from the file (recorded from a
//! sentence-transformers folder at conversion), else mean pooling, no normalization and the whole
//! position table; the flags override them.
//!
//! Exit status: 0 success, 1 bad input (unreadable model or text file, failed run), 2 usage.

use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use ets::format::EtsFile;
use ets::runtime::cpu::{npy, TextTokenizer};
use ets::runtime::embed::{EmbedSettings, Embedder, Overrides};
use ets::runtime::shared::Device;
use ets::runtime::{Encoder, EncoderOutput, ForwardOptions, Pooling, TokenBatch};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PoolingArg {
    Mean,
    Cls,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DeviceArg {
    Cpu,
    Cuda,
    Auto,
}

/// Run a `.ets` encoder on text and print embeddings.
#[derive(Debug, Parser)]
#[command(name = "et-run", version, about)]
struct Args {
    /// The `.ets` model file.
    model: PathBuf,
    /// A sentence to embed (repeatable).
    #[arg(long = "text", value_name = "TEXT")]
    texts: Vec<String>,
    /// A file with one sentence per line, or a TSV whose header names the text column (text,
    /// sentence, sentence1, question, ...; see --column). `-` reads standard input.
    #[arg(long, value_name = "FILE")]
    input: Option<PathBuf>,
    /// The TSV column to read from --input (its header must name it).
    #[arg(long, value_name = "NAME", requires = "input")]
    column: Option<String>,
    /// How token states become one vector per sentence (default: the file's setting, else mean).
    #[arg(long, value_enum)]
    pooling: Option<PoolingArg>,
    /// Scale each embedding to unit length (default: the file's setting, else off).
    #[arg(long, overrides_with = "no_normalize")]
    normalize: bool,
    /// Do not scale embeddings to unit length.
    #[arg(long)]
    no_normalize: bool,
    /// Longest input in tokens, special tokens included; longer inputs are truncated (default:
    /// the file's setting, else max_position_embeddings).
    #[arg(long, value_name = "TOKENS", value_parser = clap::value_parser!(u32).range(1..))]
    max_length: Option<u32>,
    /// A tokenizer.json or vocab.txt to use instead of the one in the file (required when the
    /// file has none).
    #[arg(long, value_name = "FILE")]
    tokenizer: Option<PathBuf>,
    /// Write a `.npy` array instead of JSON lines: `[sentences, hidden]`, or with `--hidden`
    /// `[sentences, max_tokens, hidden]` zero-padded. A device or pipe is written through.
    #[arg(long, value_name = "FILE")]
    npy: Option<PathBuf>,
    /// Output token-level hidden states instead of pooled embeddings.
    #[arg(long)]
    hidden: bool,
    /// Where to run; `auto` uses CUDA when available, else the CPU.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
    /// Sentences per forward pass.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
    /// Print to stderr the time of each phase (opening, warm-up, tokenization, encoding,
    /// writing); on CUDA also the passes by phase and, per weight, what ran at the first
    /// batch's token count, its time and cuBLAS's time on a dense matrix of the same shape.
    #[arg(long)]
    report: bool,
}

/// The opened backend.
struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure(e.to_string())
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(msg)) => {
            eprintln!("et-run: error: {msg}");
            ExitCode::from(1)
        }
    }
}

/// Sentences from `--text` and `--input`, in that order.
fn read_texts(args: &Args) -> Result<Vec<String>, Failure> {
    let mut texts = args.texts.clone();
    if let Some(path) = &args.input {
        texts.extend(read_input(path, args.column.as_deref())?);
    }
    if texts.is_empty() {
        return Err(Failure(
            "no input: give --text TEXT (repeatable) or --input FILE".to_string(),
        ));
    }
    Ok(texts)
}

/// Reads `--input` (a file, or standard input for `-`) up to the text limit.
fn read_input(path: &Path, column: Option<&str>) -> Result<Vec<String>, Failure> {
    let limit = ets::files::MAX_TEXT_BYTES;
    let raw = if path == Path::new("-") {
        ets::files::read_capped_from(std::io::stdin().lock(), limit)
    } else {
        ets::files::read_capped(path, limit)
    }
    .map_err(|e| Failure(format!("{}: {e}", path.display())))?;
    let text = String::from_utf8(raw)
        .map_err(|e| Failure(format!("{}: not UTF-8 text: {e}", path.display())))?;
    ets::sentences::parse(&text, column).map_err(|e| Failure(format!("{}: {e}", path.display())))
}

/// The encoder for `--device`: `cuda` fails (exit 1) without a usable GPU; `auto` falls back to
/// the CPU with a note on stderr.
fn open_encoder(device: DeviceArg, file: &EtsFile) -> Result<Box<dyn Encoder + '_>, Failure> {
    let device = match device {
        DeviceArg::Cpu => Device::Cpu,
        DeviceArg::Cuda => Device::Cuda,
        DeviceArg::Auto => Device::Auto,
    };
    let (encoder, _, fallback) = ets::runtime::shared::open_encoder(device, file)?;
    if let Some(reason) = fallback {
        eprintln!("et-run: {reason}");
    }
    Ok(encoder)
}

fn run(args: &Args) -> Result<(), Failure> {
    let texts = read_texts(args)?;
    // An I/O error already names its path; every other format error is about the model file.
    let file = EtsFile::open(&args.model).map_err(|e| match e {
        ets::format::FormatError::Io { .. } => Failure(e.to_string()),
        e => Failure(format!("{}: {e}", args.model.display())),
    })?;
    let overrides = Overrides {
        pooling: args.pooling.map(|p| match p {
            PoolingArg::Mean => Pooling::Mean,
            PoolingArg::Cls => Pooling::Cls,
        }),
        normalize: match (args.normalize, args.no_normalize) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
        max_length: args.max_length.map(|n| n as usize),
    };
    let settings = EmbedSettings::resolve(&file, &overrides)?;
    let tokenizer = match &args.tokenizer {
        Some(p) => TextTokenizer::from_path(p, settings.max_length)?,
        None => TextTokenizer::from_file_with_max_len(&file, settings.max_length).map_err(|e| {
            Failure(format!(
                "{}: {e}; give one with --tokenizer FILE (tokenizer.json or vocab.txt)",
                args.model.display()
            ))
        })?,
    };
    let t_open = Instant::now();
    let embedder = Embedder::new(open_encoder(args.device, &file)?, tokenizer, settings);
    let mut phases = Phases {
        open: t_open.elapsed(),
        ..Phases::default()
    };
    // The reported rate covers tokenization, every forward pass and writing the results, as a
    // user's call does; opening the device and the warm-up pass are reported on their own.
    let started = Instant::now();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let tokenized = embedder.tokenize(&refs)?;
    phases.tokenize = started.elapsed();
    for t in &tokenized.truncated {
        eprintln!(
            "et-run: warning: input {} has {} tokens; truncated to {} (maximum length)",
            t.index + 1,
            t.original_len,
            t.kept_len
        );
    }
    let batch_size = args.batch_size as usize;
    let t_warm = Instant::now();
    let (max_tokens, max_seqs) = largest_batch(&tokenized.batch, batch_size);
    embedder.encoder().warm_up(max_tokens, max_seqs)?;
    phases.warm_up = t_warm.elapsed();
    let hidden = file.model().hidden_size as usize;
    let rows = tokenized.batch.sequences.len();
    let mut sink = Sink::new(args, hidden, rows, tokenized.batch.max_len())?;
    let progress = progress_bar(rows, batch_size);
    let opts = ForwardOptions::default();
    for chunk in tokenized.batch.sequences.chunks(batch_size) {
        let batch = TokenBatch {
            sequences: chunk.to_vec(),
        };
        let t0 = Instant::now();
        if args.hidden {
            let out = embedder.encoder().forward_with(&batch, &opts)?;
            let t1 = Instant::now();
            sink.push_hidden(&out)?;
            phases.encode += t1 - t0;
            phases.write += t1.elapsed();
        } else {
            let pooled = embedder.embed_tokens(&batch, chunk.len())?;
            let t1 = Instant::now();
            sink.push_pooled(&pooled)?;
            phases.encode += t1 - t0;
            phases.write += t1.elapsed();
        }
        phases.batches += 1;
        progress.inc(chunk.len() as u64);
    }
    progress.finish_and_clear();
    let t_finish = Instant::now();
    sink.finish()?;
    phases.write += t_finish.elapsed();
    let secs = started
        .elapsed()
        .saturating_sub(phases.warm_up)
        .as_secs_f64();
    eprintln!(
        "et-run: {} sentences in {:.3} s ({:.1} sentences/s)",
        texts.len(),
        secs,
        texts.len() as f64 / secs.max(1e-9)
    );
    eprintln!(
        "et-run: start-up not in that time: device and model upload {:.3} s, warm-up {:.3} s",
        phases.open.as_secs_f64(),
        phases.warm_up.as_secs_f64()
    );
    if args.report {
        eprint!("{}", phases.table(texts.len()));
        if let Some(passes) = embedder.encoder().pass_report() {
            eprint!("et-run: encode by phase (host clock)\n{passes}");
        }
        report(embedder.encoder(), &tokenized.batch, batch_size)?;
    }
    Ok(())
}

/// Tokens and sequences of the largest batch of `batch_size` sequences.
fn largest_batch(all: &TokenBatch, batch_size: usize) -> (usize, usize) {
    all.sequences
        .chunks(batch_size.max(1))
        .map(|c| (c.iter().map(|s| s.len()).sum::<usize>(), c.len()))
        .fold((0, 0), |(t, s), (ct, cs)| (t.max(ct), s.max(cs)))
}

/// Host time of each part of a run.
#[derive(Debug, Default)]
struct Phases {
    open: Duration,
    tokenize: Duration,
    warm_up: Duration,
    encode: Duration,
    write: Duration,
    batches: usize,
}

impl Phases {
    /// The `--report` lines.
    fn table(&self, sentences: usize) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let per = |d: Duration| ms(d) / self.batches.max(1) as f64;
        let mut s = format!(
            "et-run: time by phase (host clock), {sentences} sentences in {} batches\n",
            self.batches
        );
        let rows = [
            ("open", self.open, "device, model upload (not in the rate)"),
            (
                "warm-up",
                self.warm_up,
                "kernels, libraries, buffers, one pass (not in the rate)",
            ),
            (
                "tokenize",
                self.tokenize,
                "every text, before the first batch",
            ),
            (
                "encode",
                self.encode,
                "passes to pooled vectors (or hidden states)",
            ),
            ("write", self.write, "output"),
        ];
        for (name, d, what) in rows {
            s.push_str(&format!(
                "  {name:<9} {:>9.2} ms {:>8.3} ms/batch  {what}\n",
                ms(d),
                per(d)
            ));
        }
        s
    }
}

/// `--report`: the per-weight table of the runtime at the first batch.
fn report(encoder: &dyn Encoder, all: &TokenBatch, batch_size: usize) -> Result<(), Failure> {
    let first = TokenBatch {
        sequences: all.sequences.iter().take(batch_size).cloned().collect(),
    };
    match encoder.dispatch_report(&first)? {
        Some(table) => eprint!("{table}"),
        None => {
            eprintln!("et-run: --report describes the CUDA runtime; the CPU ran every weight dense")
        }
    }
    Ok(())
}

/// A bar over the sentences on a terminal's stderr, for inputs of more than a few batches.
fn progress_bar(rows: usize, batch: usize) -> indicatif::ProgressBar {
    if rows <= 4 * batch || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(rows as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} sentences {elapsed} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// Streams results to a `.npy` array or as JSON lines to stdout; holds at most one batch.
struct Sink {
    hidden: usize,
    max_len: usize,
    rows: usize,
    npy: Option<(PathBuf, npy::NpyStream, Vec<usize>)>,
    out: BufWriter<std::io::Stdout>,
}

impl Sink {
    fn new(args: &Args, hidden: usize, rows: usize, max_len: usize) -> Result<Sink, Failure> {
        let npy = match &args.npy {
            Some(path) => {
                let shape = if args.hidden {
                    vec![rows, max_len, hidden]
                } else {
                    vec![rows, hidden]
                };
                Some((path.clone(), npy::NpyStream::create(path, &shape)?, shape))
            }
            None => None,
        };
        Ok(Sink {
            hidden,
            max_len,
            rows: 0,
            npy,
            out: BufWriter::new(std::io::stdout()),
        })
    }

    fn push_hidden(&mut self, out: &EncoderOutput) -> Result<(), Failure> {
        let h = self.hidden;
        for i in 0..out.lengths.len() {
            let seq = out.sequence(i).unwrap_or(&[]);
            if let Some((_, stream, _)) = &mut self.npy {
                stream.push(seq)?;
                stream.push_zeros(self.max_len * h - seq.len())?;
            } else {
                let rows: Vec<&[f32]> = seq.chunks_exact(h).collect();
                let line =
                    serde_json::json!({"index": self.rows, "tokens": rows.len(), "hidden": rows});
                writeln!(self.out, "{line}")?;
            }
            self.rows += 1;
        }
        Ok(())
    }

    fn push_pooled(&mut self, pooled: &[f32]) -> Result<(), Failure> {
        for v in pooled.chunks_exact(self.hidden) {
            if let Some((_, stream, _)) = &mut self.npy {
                stream.push(v)?;
            } else {
                let line = serde_json::json!({"index": self.rows, "embedding": v});
                writeln!(self.out, "{line}")?;
            }
            self.rows += 1;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(), Failure> {
        if let Some((path, stream, shape)) = self.npy.take() {
            stream.finish()?;
            eprintln!("et-run: wrote {} {shape:?}", path.display());
        }
        self.out.flush()?;
        Ok(())
    }
}
