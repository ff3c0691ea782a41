//! `et-cpu-bench`: CPU runtime speed on a dense file versus the same model at 50% tile sparsity.
//!
//! Builds two `.ets` files in a temporary folder from one random model (BERT-base shapes by
//! default): all weights dense f32, and every linear weight tile-encoded keeping a random half of
//! its tiles. Runs both on the same token batch, interleaved, and prints the median times and the
//! speedup. Run it with `cargo run --release -p ets-dev --bin et-cpu-bench`.

use std::time::Instant;

use clap::Parser;
use ets::format::{Dtype, EncodedTensor, EtsFile};
use ets::runtime::cpu::CpuEncoder;
use ets::runtime::{Encoder, TokenBatch};
use ets_testkit::models;
use ets_testkit::rng::Rng;

/// Dense vs 50% tile-sparse CPU forward-pass timing.
#[derive(Debug, Parser)]
#[command(name = "et-cpu-bench", about)]
struct Args {
    /// Encoder layers.
    #[arg(long, default_value_t = 12)]
    layers: u32,
    /// Hidden size.
    #[arg(long, default_value_t = 768)]
    hidden: u32,
    /// Attention heads.
    #[arg(long, default_value_t = 12)]
    heads: u32,
    /// Feed-forward width.
    #[arg(long, default_value_t = 3072)]
    intermediate: u32,
    /// Tile edge (square tiles).
    #[arg(long, default_value_t = 32)]
    tile: usize,
    /// Fraction of tiles kept in the sparse file.
    #[arg(long, default_value_t = 0.5)]
    density: f64,
    /// Sentences per batch.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Tokens per sentence.
    #[arg(long, default_value_t = 64)]
    seq: usize,
    /// Timed repetitions of each file.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Stored dtype (f32, f16, bf16).
    #[arg(long, default_value = "f32")]
    dtype: String,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = Args::parse();
    let dtype = Dtype::from_name(&a.dtype).ok_or("dtype must be f32, f16 or bf16")?;
    if a.heads == 0 || a.hidden % a.heads != 0 {
        return Err("hidden must be a multiple of heads".into());
    }
    let cfg = models::config(
        a.layers,
        a.hidden,
        vec![a.heads; a.layers as usize],
        a.hidden / a.heads,
        a.intermediate,
        30522,
        512,
    );
    let weights = models::random_weights(&cfg, 42);
    let dir = std::env::temp_dir().join(format!("et-cpu-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (dense_path, sparse_path) = (dir.join("dense.ets"), dir.join("sparse.ets"));
    let mut rng = Rng::new(7);
    let mut dense = Vec::new();
    let mut sparse = Vec::new();
    for (name, shape, data) in &weights {
        dense.push((
            name.clone(),
            EncodedTensor::dense(shape.iter().map(|&d| d as u64).collect(), dtype, data)?,
        ));
        let t = if shape.len() == 2 && name.starts_with("layers.") {
            let keep =
                models::random_tile_keep(shape[0], shape[1], a.tile, a.tile, a.density, &mut rng);
            EncodedTensor::tile(shape[0], shape[1], data, a.tile, a.tile, &keep, dtype)?
        } else {
            EncodedTensor::dense(shape.iter().map(|&d| d as u64).collect(), dtype, data)?
        };
        sparse.push((name.clone(), t));
    }
    models::write_ets(&dense_path, &cfg, &dense, None)?;
    models::write_ets(&sparse_path, &cfg, &sparse, None)?;
    drop((dense, sparse, weights));
    let (df, sf) = (EtsFile::open(&dense_path)?, EtsFile::open(&sparse_path)?);
    let (de, se) = (CpuEncoder::new(&df)?, CpuEncoder::new(&sf)?);
    let ids: Vec<Vec<u32>> = (0..a.batch)
        .map(|_| (0..a.seq).map(|_| 1000 + rng.below(20000) as u32).collect())
        .collect();
    let batch = TokenBatch::from_ids(ids);
    // Warm up both (page in the mapped weights, spin up the thread pool).
    de.forward(&batch)?;
    se.forward(&batch)?;
    let (mut td, mut ts) = (Vec::new(), Vec::new());
    for _ in 0..a.reps {
        let t = Instant::now();
        de.forward(&batch)?;
        td.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        se.forward(&batch)?;
        ts.push(t.elapsed().as_secs_f64());
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (md, ms) = (median(&mut td), median(&mut ts));
    println!(
        "model: {} layers, hidden {}, ffn {}, {} dtype; batch {} x {} tokens; {} threads",
        a.layers,
        a.hidden,
        a.intermediate,
        dtype.name(),
        a.batch,
        a.seq,
        rayon::current_num_threads()
    );
    println!("dense          : {:8.1} ms", md * 1e3);
    println!(
        "tile {}x{} d={:.2}: {:8.1} ms",
        a.tile,
        a.tile,
        a.density,
        ms * 1e3
    );
    println!("speedup        : {:.2}x", md / ms);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
