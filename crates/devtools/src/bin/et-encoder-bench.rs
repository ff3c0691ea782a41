//! `et-encoder-bench`: times the CUDA encoder and its attention kernel (CUDA events, warm-up
//! first), one JSON line per measurement, for `scripts/encoder_bench.sh`.
//!
//! ```text
//! et-encoder-bench encoder MODEL.ets 1x128,8x128,1x512 [ITERS]
//! et-encoder-bench attention 1x128,1x4096 HEADS HEAD_DIM [ITERS]
//! ```
//!
//! `BxL` is B sequences of L tokens each, `BxL1-L2` B sequences of mixed lengths from L1 to L2
//! (sequence i has `L1 + (37 i) mod (L2 - L1 + 1)` tokens, the rule `encoder_bench.py` uses too);
//! token ids are random from a fixed seed.

use std::process::ExitCode;
use std::sync::Arc;

use ets::format::EtsFile;
use ets::runtime::cuda::encoder::launch;
use ets::runtime::cuda::{device_addr, CudaEncoder, CudaRuntime};
use ets::runtime::TokenBatch;
use ets_testkit::rng::Rng;

/// Sequence lengths of one size (`BxL` or `BxL1-L2`).
fn lengths(p: &str) -> Result<Vec<usize>, String> {
    let (b, l) = p.split_once('x').ok_or(format!("size {p}: expected BxL"))?;
    let b: usize = b.parse().map_err(|_| format!("size {p}: bad batch"))?;
    let num = |v: &str| {
        v.parse::<usize>()
            .map_err(|_| format!("size {p}: bad length"))
    };
    Ok(match l.split_once('-') {
        Some((lo, hi)) => {
            let (lo, hi) = (num(lo)?, num(hi)?);
            if hi < lo {
                return Err(format!("size {p}: empty length range"));
            }
            (0..b).map(|i| lo + (37 * i) % (hi - lo + 1)).collect()
        }
        None => vec![num(l)?; b],
    })
}

fn sizes(s: &str) -> Result<Vec<(String, Vec<usize>)>, String> {
    s.split(',')
        .map(|p| Ok((p.to_string(), lengths(p)?)))
        .collect()
}

fn encoder(args: &[String]) -> Result<(), String> {
    let [model, list, rest @ ..] = args else {
        return Err("encoder MODEL.ets SIZES [ITERS]".into());
    };
    let iters = rest.first().and_then(|v| v.parse().ok()).unwrap_or(50);
    let file = EtsFile::open(model).map_err(|e| format!("{model}: {e}"))?;
    let enc = CudaEncoder::new(&file).map_err(|e| e.to_string())?;
    let vocab = u64::from(file.model().vocab_size);
    let mut rng = Rng::new(7);
    for (size, lens) in sizes(list)? {
        let ids = lens
            .iter()
            .map(|&l| (0..l).map(|_| rng.below(vocab) as u32).collect())
            .collect();
        let batch = TokenBatch::from_ids(ids);
        let ms = enc
            .time_forward(&batch, 5, iters)
            .map_err(|e| e.to_string())?;
        println!(
            "{{\"kind\":\"encoder\",\"model\":\"{model}\",\"size\":\"{size}\",\"ms\":{ms:.5}}}"
        );
        if std::env::var_os("ETS_BENCH_REPORT").is_some() {
            let rows = enc.report(&batch).map_err(|e| e.to_string())?;
            eprintln!("{model} {size}");
            eprint!("{}", ets::runtime::cuda::encoder::format_report(&rows));
        }
    }
    Ok(())
}

fn attention(args: &[String]) -> Result<(), String> {
    let [list, heads, d, rest @ ..] = args else {
        return Err("attention SIZES HEADS HEAD_DIM [ITERS]".into());
    };
    let heads: usize = heads.parse().map_err(|_| "bad HEADS")?;
    let d: usize = d.parse().map_err(|_| "bad HEAD_DIM")?;
    let iters: usize = rest.first().and_then(|v| v.parse().ok()).unwrap_or(100);
    let rt = Arc::new(CudaRuntime::new(0).map_err(|e| e.to_string())?);
    let e = |e: ets::runtime::cuda::CudaError| e.to_string();
    let mut rng = Rng::new(11);
    for (size, lens) in sizes(list)? {
        let (b, l) = (lens.len(), lens.iter().copied().max().unwrap_or(0));
        let w = heads * d;
        let total: usize = lens.iter().sum();
        let bits: Vec<u16> = (0..total * 3 * w)
            .map(|_| half::f16::from_f32(rng.symmetric(1.0)).to_bits())
            .collect();
        let bias: Vec<f32> = (0..3 * w).map(|_| rng.symmetric(0.1)).collect();
        let mut cu = vec![0i32];
        for &len in &lens {
            cu.push(cu.last().copied().unwrap_or(0) + len as i32);
        }
        let qkv = rt.upload(&bits).map_err(e)?;
        let bb = rt.upload(&bias).map_err(e)?;
        let cub = rt.upload(&cu).map_err(e)?;
        let ctx = rt.alloc::<u16>(total * w).map_err(e)?;
        let (qa, ba) = (device_addr(&qkv), device_addr(&bb));
        let input = launch::AttentionInput {
            q: qa,
            k: qa + (w * 2) as u64,
            v: qa + (2 * w * 2) as u64,
            ld: 3 * w,
            bias: [ba, ba + (w * 4) as u64, ba + (2 * w * 4) as u64],
        };
        let (cua, ctxa) = (device_addr(&cub), device_addr(&ctx));
        // SAFETY: Q, K and V are the thirds of qkv's total rows of 3W f16 (stride 3W), the biases
        // the thirds of bb's 3W f32, cub holds b + 1 offsets ending at total (each sequence l
        // long), ctx total x W f16; all alive for the runs.
        let run = || unsafe { launch::attention(&rt, &input, cua, b, l, heads, d, ctxa) };
        for _ in 0..5 {
            run().map_err(e)?;
        }
        rt.synchronize().map_err(e)?;
        let timer = rt.timer().map_err(e)?;
        for _ in 0..iters {
            run().map_err(e)?;
        }
        let ms = f64::from(timer.stop_ms().map_err(e)?) / iters as f64;
        println!("{{\"kind\":\"attention\",\"size\":\"{size}\",\"heads\":{heads},\"d\":{d},\"ms\":{ms:.5}}}");
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("encoder") => encoder(&args[1..]),
        Some("attention") => attention(&args[1..]),
        _ => Err("usage: et-encoder-bench encoder MODEL.ets SIZES [ITERS] | attention SIZES HEADS HEAD_DIM [ITERS]".into()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(m) => {
            eprintln!("et-encoder-bench: error: {m}");
            ExitCode::from(1)
        }
    }
}
