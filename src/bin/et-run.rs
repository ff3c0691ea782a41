//! `et-run`: sentence embeddings (or token hidden states) from a `.ets` model.
//!
//! ```text
//! et-run model.ets --text "a sentence" --text "another"      # JSON lines, mean pooling
//! et-run model.ets --input sentences.txt --pooling cls --npy out.npy
//! et-run model.ets --input sentences.txt --device cuda --report  # per-weight table on stderr
//! ```
//!
//! Exit status: 0 success, 1 bad input (unreadable model or text file, failed run), 2 usage.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use ets::format::EtsFile;
use ets::runtime::cpu::{npy, CpuEncoder, TextTokenizer};
use ets::runtime::cuda::encoder::format_report;
use ets::runtime::cuda::CudaEncoder;
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
    /// A file with one sentence per line, or a TSV with a `text<TAB>label` header (SST-2 style).
    #[arg(long, value_name = "FILE")]
    input: Option<PathBuf>,
    /// How token states become one vector per sentence.
    #[arg(long, value_enum, default_value_t = PoolingArg::Mean)]
    pooling: PoolingArg,
    /// Write a `.npy` array instead of JSON lines: `[sentences, hidden]`, or with `--hidden`
    /// `[sentences, max_tokens, hidden]` zero-padded.
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
    /// L2-normalise the pooled embeddings.
    #[arg(long)]
    normalize: bool,
    /// On CUDA: print to stderr, per weight, what ran at the first batch's token count, its
    /// time and cuBLAS's time on a dense matrix of the same shape.
    #[arg(long)]
    report: bool,
}

/// The opened backend.
enum Backend<'f> {
    Cpu(Box<CpuEncoder<'f>>),
    Cuda(Box<CudaEncoder>),
}

impl Backend<'_> {
    fn encoder(&self) -> &dyn Encoder {
        match self {
            Backend::Cpu(e) => e.as_ref(),
            Backend::Cuda(e) => e.as_ref(),
        }
    }

    /// Pooled vectors of `batch` (on CUDA, pooled and normalised on the device).
    fn embed(
        &self,
        batch: &TokenBatch,
        pooling: Pooling,
        normalize: bool,
    ) -> Result<Vec<f32>, Failure> {
        Ok(match self {
            Backend::Cuda(e) => e.embed_with(batch, pooling, normalize)?,
            Backend::Cpu(e) => {
                let mut v = e.embed(batch, pooling)?;
                if normalize {
                    let h = e.config().hidden_size as usize;
                    for row in v.chunks_mut(h.max(1)) {
                        let n = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                        row.iter_mut().for_each(|x| *x /= n);
                    }
                }
                v
            }
        })
    }
}

/// A failure that maps to exit status 1.
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
        texts.extend(read_input(path)?);
    }
    if texts.is_empty() {
        return Err(Failure(
            "no input: give --text TEXT (repeatable) or --input FILE".to_string(),
        ));
    }
    Ok(texts)
}

fn read_input(path: &Path) -> Result<Vec<String>, Failure> {
    let raw = std::fs::read(path).map_err(|e| Failure(format!("{}: {e}", path.display())))?;
    let text = String::from_utf8(raw)
        .map_err(|e| Failure(format!("{}: not UTF-8 text: {e}", path.display())))?;
    let mut lines = text.lines().peekable();
    // SST-2 style TSV: header `text<TAB>label`, sentence in the first column.
    let tsv = lines
        .peek()
        .is_some_and(|h| h.trim_end().split('\t').next() == Some("text") && h.contains('\t'));
    if tsv {
        lines.next();
    }
    Ok(lines
        .map(|l| {
            let l = l.trim_end_matches('\r');
            let l = if tsv {
                l.split('\t').next().unwrap_or("")
            } else {
                l
            };
            l.trim().to_string()
        })
        .filter(|l| !l.is_empty())
        .collect())
}

/// The encoder for `--device`: `cuda` fails (exit 1) without a usable GPU; `auto` falls back to
/// the CPU with a note on stderr.
fn open_encoder(device: DeviceArg, file: &EtsFile) -> Result<Backend<'_>, Failure> {
    let cuda = || -> Result<CudaEncoder, String> {
        ets::runtime::cuda::cuda_available()?;
        CudaEncoder::new(file).map_err(|e| e.to_string())
    };
    match device {
        DeviceArg::Cpu => Ok(Backend::Cpu(Box::new(CpuEncoder::new(file)?))),
        DeviceArg::Cuda => match cuda() {
            Ok(e) => Ok(Backend::Cuda(Box::new(e))),
            Err(e) => Err(Failure(format!("CUDA runtime not available: {e}"))),
        },
        DeviceArg::Auto => match cuda() {
            Ok(e) => Ok(Backend::Cuda(Box::new(e))),
            Err(e) => {
                eprintln!("et-run: CUDA runtime not available ({e}); using the CPU");
                Ok(Backend::Cpu(Box::new(CpuEncoder::new(file)?)))
            }
        },
    }
}

fn run(args: &Args) -> Result<(), Failure> {
    let texts = read_texts(args)?;
    let file = EtsFile::open(&args.model)
        .map_err(|e| Failure(format!("{}: {e}", args.model.display())))?;
    let tokenizer = TextTokenizer::from_file(&file)?;
    let backend = open_encoder(args.device, &file)?;
    let encoder = backend.encoder();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let tokenized = tokenizer.encode(&refs)?;
    for t in &tokenized.truncated {
        eprintln!(
            "et-run: warning: input {} has {} tokens; truncated to {} (max_position_embeddings)",
            t.index + 1,
            t.original_len,
            t.kept_len
        );
    }
    let pooling = match args.pooling {
        PoolingArg::Mean => Pooling::Mean,
        PoolingArg::Cls => Pooling::Cls,
    };
    let hidden = file.model().hidden_size as usize;
    let mut sink = Sink::new(args, hidden, tokenized.batch.max_len());
    let opts = ForwardOptions::default();
    let started = std::time::Instant::now();
    for chunk in tokenized.batch.sequences.chunks(args.batch_size as usize) {
        let batch = TokenBatch {
            sequences: chunk.to_vec(),
        };
        if args.hidden {
            let out = encoder.forward_with(&batch, &opts)?;
            sink.push_hidden(&out)?;
        } else {
            // Pooled on the backend (the CUDA encoder copies back only the pooled vectors).
            sink.push_pooled(&backend.embed(&batch, pooling, args.normalize)?)?;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "et-run: {} sentences in {:.3} s ({:.1} sentences/s)",
        texts.len(),
        secs,
        texts.len() as f64 / secs.max(1e-9)
    );
    if args.report {
        report(&backend, &tokenized.batch, args.batch_size as usize)?;
    }
    sink.finish()
}

/// `--report`: the per-weight table of the CUDA encoder at the first batch.
fn report(backend: &Backend<'_>, all: &TokenBatch, batch_size: usize) -> Result<(), Failure> {
    let Backend::Cuda(enc) = backend else {
        eprintln!("et-run: --report describes the CUDA runtime; the CPU ran every weight dense");
        return Ok(());
    };
    let first = TokenBatch {
        sequences: all.sequences.iter().take(batch_size).cloned().collect(),
    };
    eprint!("{}", format_report(&enc.report(&first)?));
    Ok(())
}

/// Collects results for `.npy` or streams JSON lines to stdout.
struct Sink<'a> {
    args: &'a Args,
    hidden: usize,
    max_len: usize,
    rows: usize,
    data: Vec<f32>,
    out: BufWriter<std::io::Stdout>,
}

impl<'a> Sink<'a> {
    fn new(args: &'a Args, hidden: usize, max_len: usize) -> Sink<'a> {
        Sink {
            args,
            hidden,
            max_len,
            rows: 0,
            data: Vec::new(),
            out: BufWriter::new(std::io::stdout()),
        }
    }

    fn push_hidden(&mut self, out: &EncoderOutput) -> Result<(), Failure> {
        let h = self.hidden;
        for i in 0..out.lengths.len() {
            let seq = out.sequence(i).unwrap_or(&[]);
            if self.args.npy.is_some() {
                let mut padded = vec![0f32; self.max_len * h];
                padded[..seq.len()].copy_from_slice(seq);
                self.data.extend_from_slice(&padded);
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
            if self.args.npy.is_some() {
                self.data.extend_from_slice(v);
            } else {
                let line = serde_json::json!({"index": self.rows, "embedding": v});
                writeln!(self.out, "{line}")?;
            }
            self.rows += 1;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(), Failure> {
        if let Some(path) = &self.args.npy {
            let shape = if self.args.hidden {
                vec![self.rows, self.max_len, self.hidden]
            } else {
                vec![self.rows, self.hidden]
            };
            npy::write(path, &shape, &self.data)?;
            eprintln!("et-run: wrote {} {shape:?}", path.display());
        }
        self.out.flush()?;
        Ok(())
    }
}
