//! The small-batch sweep behind `et-bench small`: BERT-base shapes at a few hundred tokens or
//! fewer, every usable tile kernel (the split kernel among them) and cuBLAS timed in the same
//! run, with a table that sets the split kernel beside the other families, cuBLAS and the seed
//! project's recorded times.

use ets::runtime::cuda::tile::TileKernel;
use ets::runtime::cuda::{CudaError, CudaRuntime};
use ets_testkit::rng::Rng;

use super::bench::{self, GemmResult, Inputs, MaskMode};

/// The seed project's tile GEMM at 128 tokens, as recorded on an H200 (issue 21): (K, N,
/// density, ms) for 16x16 tiles with random masks. These are not measured here, so a ratio to
/// them compares runs on different days, possibly on another card.
pub const SEED_128: [(usize, usize, f64, f64); 8] = [
    (768, 2304, 0.2, 0.0063),
    (768, 768, 0.2, 0.0048),
    (768, 3072, 0.2, 0.0069),
    (3072, 768, 0.2, 0.0087),
    (768, 2304, 0.1, 0.0050),
    (768, 768, 0.1, 0.0043),
    (768, 3072, 0.1, 0.0053),
    (3072, 768, 0.1, 0.0056),
];

/// The seed's recorded time for a result's configuration, if there is one.
pub fn seed_ms(r: &GemmResult) -> Option<f64> {
    if r.tokens != 128 || (r.tile, r.tw) != (16, 16) || r.mode != MaskMode::Random {
        return None;
    }
    SEED_128
        .iter()
        .find(|s| s.0 == r.k && s.1 == r.n && (s.2 - r.density).abs() < 0.02)
        .map(|s| s.3)
}

/// The shapes of BERT-base's projections, (N, K).
pub const SHAPES: [(usize, usize); 4] = [(2304, 768), (768, 768), (3072, 768), (768, 3072)];

/// Tile shapes and densities of the sweep (random masks).
const CASES: [((usize, usize), &[f64]); 3] = [
    ((16, 16), &[1.0, 0.5, 0.2, 0.1]),
    ((32, 32), &[0.2, 0.1]),
    ((64, 64), &[0.2, 0.1]),
];

/// Runs the sweep at each token count, calling `print` on each result as it comes.
pub fn run(
    rt: &CudaRuntime,
    rng: &mut Rng,
    tokens: &[usize],
    print: &dyn Fn(&GemmResult),
) -> Result<Vec<GemmResult>, CudaError> {
    let mut out = Vec::new();
    let most = tokens.iter().copied().max().unwrap_or(128);
    for &(n, k) in &SHAPES {
        let mut inp = Inputs::new(rt, rng, most, n, k)?;
        for &t in tokens {
            for &(shape, densities) in &CASES {
                for &d in densities {
                    let r =
                        bench::bench_one(rt, rng, &mut inp, t, shape, d, MaskMode::Random, None)?;
                    print(&r);
                    out.push(r);
                }
            }
        }
    }
    Ok(out)
}

/// Fastest time of the kernels `pick` accepts in a result, with that kernel.
fn fastest(r: &GemmResult, pick: impl Fn(TileKernel) -> bool) -> Option<(TileKernel, f64)> {
    r.per_kernel
        .iter()
        .filter(|p| pick(p.0))
        .copied()
        .min_by(|a, b| a.1.total_cmp(&b.1))
}

/// The table of the results at up to 1024 tokens: the split kernel, the fastest other tile
/// kernel, cuBLAS and (at 128 tokens, 16x16 random masks) the seed's recorded time, with the
/// ratios of each to the split kernel (above 1: the split kernel is faster).
pub fn table(results: &[GemmResult]) -> String {
    let mut s = String::from(
        "== small batches (ms; x = that time over the split kernel's, above 1: sk is faster; \
         seed = recorded, not measured in this run)\n",
    );
    s += &format!(
        "{:<10} {:<6} {:>5} {:>5} {:>8} {:>8} {:>7} {:>6} {:>8} {:>6} {:>7} {:>6}\n",
        "shape", "tile", "dens", "M", "sk", "other", "kernel", "x", "cublas", "x", "seed", "x"
    );
    for r in results.iter().filter(|r| r.tokens <= 1024) {
        let sk = fastest(r, |k| k == TileKernel::Sk).map(|p| p.1);
        let other = fastest(r, |k| k != TileKernel::Sk);
        let ratio = |t: Option<f64>| match (t, sk) {
            (Some(t), Some(sk)) => format!("{:.2}", t / sk),
            _ => "-".into(),
        };
        let ms = |t: Option<f64>| t.map_or("-".into(), |t| format!("{t:.4}"));
        let seed = seed_ms(r);
        s += &format!(
            "{:<10} {:<6} {:>5.2} {:>5} {:>8} {:>8} {:>7} {:>6} {:>8} {:>6} {:>7} {:>6}\n",
            format!("{}->{}", r.k, r.n),
            format!("{}x{}", r.tile, r.tw),
            r.density,
            r.tokens,
            ms(sk),
            ms(other.map(|p| p.1)),
            other.map_or("-", |p| p.0.label()),
            ratio(other.map(|p| p.1)),
            ms(Some(r.cublas_ms)),
            ratio(Some(r.cublas_ms)),
            ms(seed),
            ratio(seed)
        );
    }
    s
}
