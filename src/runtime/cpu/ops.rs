//! Element-wise pieces of the forward pass: LayerNorm, activations, attention.

use rayon::prelude::*;

use crate::format::Activation;

use super::simd::{avx2_fma, Fused, Madd, Plain};

/// Rows per parallel chunk for the cheap row-wise operations.
const ROW_CHUNK: usize = 16;

/// A LayerNorm's parameters.
pub(crate) struct LayerNorm {
    pub(crate) weight: Vec<f32>,
    pub(crate) bias: Vec<f32>,
    pub(crate) eps: f32,
}

impl LayerNorm {
    /// Normalizes every row of `x` (`[rows, weight.len()]`) in place.
    pub(crate) fn apply(&self, x: &mut [f32]) {
        let h = self.weight.len().max(1);
        x.par_chunks_mut(h * ROW_CHUNK).for_each(|chunk| {
            for row in chunk.chunks_exact_mut(h) {
                let n = row.len() as f32;
                let mean = row.iter().sum::<f32>() / n;
                let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
                let inv = 1.0 / (var + self.eps).sqrt();
                for ((v, &g), &b) in row.iter_mut().zip(&self.weight).zip(&self.bias) {
                    *v = (*v - mean) * inv * g + b;
                }
            }
        });
    }
}

/// `x += y`, element-wise.
pub(crate) fn add_into(x: &mut [f32], y: &[f32]) {
    x.par_chunks_mut(4096)
        .zip(y.par_chunks(4096))
        .for_each(|(a, b)| {
            for (p, q) in a.iter_mut().zip(b) {
                *p += q;
            }
        });
}

/// Applies the FFN activation in place.
pub(crate) fn activate(x: &mut [f32], act: Activation) {
    let fast = avx2_fma();
    x.par_chunks_mut(4096).for_each(|c| {
        #[cfg(target_arch = "x86_64")]
        if fast {
            // SAFETY: `avx2_fma()` confirmed the CPU features `activate_avx2` is compiled for;
            // its body is safe Rust.
            unsafe { activate_avx2(c, act) };
            return;
        }
        let _ = fast;
        activate_body(c, act);
    });
}

/// Applies the activation to one slice on the calling thread (the GEMM output epilogue).
pub(crate) fn activate_serial(c: &mut [f32], act: Activation) {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: `avx2_fma()` confirmed the CPU features `activate_avx2` is compiled for;
        // its body is safe Rust.
        unsafe { activate_avx2(c, act) };
        return;
    }
    activate_body(c, act);
}

/// The activation loop compiled for AVX2 (8 lanes); same arithmetic as the scalar body.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn activate_avx2(c: &mut [f32], act: Activation) {
    activate_body(c, act);
}

#[inline(always)]
fn activate_body(c: &mut [f32], act: Activation) {
    match act {
        Activation::Gelu => c.iter_mut().for_each(|v| *v = gelu_erf(*v)),
        Activation::GeluTanh => c.iter_mut().for_each(|v| *v = gelu_tanh_fast(*v)),
        Activation::Relu => c.iter_mut().for_each(|v| *v = v.max(0.0)),
    }
}

/// [`gelu_tanh`] with `the logistic form` through the branch-free [`exp`], so the
/// loop vectorizes (relative error about 1e-7).
#[inline(always)]
fn gelu_tanh_fast(x: f32) -> f32 {
    const C: f32 = 0.797_884_6; // sqrt(2 / pi)
    let u = C * (x + 0.044_715 * x * x * x);
    // 0.5 x (1 + tanh u) = x / (1 + e^(-2u)): no cancellation for negative x.
    x / (1.0 + exp(-2.0 * u))
}

/// `0.5 x (1 + erf(x / sqrt 2))`, written with erfc so large negative inputs keep their
/// relative precision.
#[inline(always)]
pub(crate) fn gelu_erf(x: f32) -> f32 {
    0.5 * x * erfc(-x * std::f32::consts::FRAC_1_SQRT_2)
}

/// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))` with the library tanh (test reference).
#[cfg(test)]
pub(crate) fn gelu_tanh(x: f32) -> f32 {
    const C: f32 = 0.797_884_6; // sqrt(2 / pi)
    0.5 * x * (1.0 + (C * (x + 0.044_715 * x * x * x)).tanh())
}

/// Complementary error function, Chebyshev fit with fractional error below 1.2e-7 everywhere
/// (Numerical Recipes, `erfcc`).
#[inline(always)]
pub(crate) fn erfc(x: f32) -> f32 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_204
                                + t * (1.488_515_9 + t * (-0.822_152_2 + t * 0.170_872_8))))))));
    let r = t * exp(poly);
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// `e^x` for the activations, branch-free so loops over it vectorize: range reduction to
/// `|r| <= ln2/2` and a degree-6 Taylor polynomial (relative error about 1e-7).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer without a libm call.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    // The low mantissa bits of `t` hold n as an integer: no float-to-int conversion needed.
    let n_int = t.to_bits().wrapping_sub(ROUND.to_bits());
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(n_int.wrapping_add(127) << 23)
}

/// Scaled dot-product attention over packed sequences.
///
/// `q`, `k`, `v` are `[total_tokens, heads * head_dim]`; each sequence attends only to its own
/// tokens (the padding mask of a padded batch, by construction). Returns the context in the same
/// layout.
pub(crate) fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    lengths: &[usize],
    heads: usize,
    head_dim: usize,
) -> Vec<f32> {
    let width = heads * head_dim;
    let total: usize = lengths.iter().sum();
    let mut ctx = vec![0f32; total * width];
    if width == 0 {
        return ctx;
    }
    let mut starts = Vec::with_capacity(lengths.len());
    let mut s = 0;
    for &l in lengths {
        starts.push(s);
        s += l;
    }
    let fast = avx2_fma();
    let jobs: Vec<(usize, usize)> = (0..lengths.len())
        .flat_map(|seq| (0..heads).map(move |h| (seq, h)))
        .collect();
    let parts: Vec<(usize, usize, Vec<f32>)> = jobs
        .into_par_iter()
        .map_init(Vec::new, |scratch, (seq, h)| {
            let job = Head {
                q,
                k,
                v,
                start: starts[seq],
                len: lengths[seq],
                col: h * head_dim,
                width,
                head_dim,
            };
            let mut out = vec![0f32; job.len * head_dim];
            #[cfg(target_arch = "x86_64")]
            if fast {
                // SAFETY: `avx2_fma()` confirmed the CPU features `head_avx2` is compiled for;
                // its body is safe Rust.
                unsafe { head_avx2(&job, scratch, &mut out) };
                return (seq, h, out);
            }
            let _ = fast;
            head_body::<Plain>(&job, scratch, &mut out);
            (seq, h, out)
        })
        .collect();
    for (seq, h, out) in parts {
        for (t, src) in out.chunks_exact(head_dim).enumerate() {
            let dst = (starts[seq] + t) * width + h * head_dim;
            ctx[dst..dst + head_dim].copy_from_slice(src);
        }
    }
    ctx
}

/// One (sequence, head) attention job over the packed projections.
struct Head<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    start: usize,
    len: usize,
    col: usize,
    width: usize,
    head_dim: usize,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn head_avx2(job: &Head<'_>, scratch: &mut Vec<f32>, out: &mut [f32]) {
    head_body::<Fused>(job, scratch, out);
}

/// Context rows `out[len][head_dim]` of one head. Keys are transposed once to `[head_dim][len]`
/// so the scores of a query are an axpy over contiguous rows (vectorized over keys, no
/// horizontal sums); the softmax uses the branch-free [`exp`].
#[inline(always)]
fn head_body<F: Madd>(job: &Head<'_>, scratch: &mut Vec<f32>, out: &mut [f32]) {
    let (len, d, width) = (job.len, job.head_dim, job.width);
    let first = job.start * width + job.col;
    // Row `t` of this head in Q, K or V starts at `t * width` of these slices.
    let span = (len.max(1) - 1) * width + d;
    let (Some(q), Some(k), Some(v)) = (
        job.q.get(first..first + span),
        job.k.get(first..first + span),
        job.v.get(first..first + span),
    ) else {
        return;
    };
    scratch.clear();
    scratch.resize(d * len + len, 0.0);
    let (kt, scores) = scratch.split_at_mut(d * len);
    for t in 0..len {
        for (j, &x) in k[t * width..t * width + d].iter().enumerate() {
            kt[j * len + t] = x;
        }
    }
    let scale = 1.0 / (d as f32).sqrt();
    for i in 0..len {
        let qi = &q[i * width..i * width + d];
        // scores[t] = sum_j qi[j] * kt[j][t]
        combine::<F>(qi, kt, len, scores);
        // Separate passes with eight partial max/sum lanes, so each one vectorizes.
        let mut lanes = [f32::NEG_INFINITY; 8];
        for c in scores.chunks_mut(8) {
            for (s, m) in c.iter_mut().zip(lanes.iter_mut()) {
                *s *= scale;
                *m = m.max(*s);
            }
        }
        let max = lanes.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        scores.iter_mut().for_each(|s| *s = exp(*s - max));
        let mut sums = [0f32; 8];
        for c in scores.chunks(8) {
            for (s, a) in c.iter().zip(sums.iter_mut()) {
                *a += *s;
            }
        }
        let inv = 1.0 / sums.iter().sum::<f32>();
        scores.iter_mut().for_each(|p| *p *= inv);
        // out[i][j] = sum_t p[t] * v[t][j]
        combine::<F>(scores, v, width, &mut out[i * d..(i + 1) * d]);
    }
}

/// `out[l] = sum_t coef[t] * rows[t * stride + l]` for `l < out.len()`, in register-sized column
/// chunks so the partial sums stay in registers across the whole sum.
#[inline(always)]
fn combine<F: Madd>(coef: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
    let mut c0 = 0;
    while c0 + 32 <= out.len() {
        combine_chunk::<F, 32>(coef, rows, stride, c0, &mut out[c0..c0 + 32]);
        c0 += 32;
    }
    while c0 + 8 <= out.len() {
        combine_chunk::<F, 8>(coef, rows, stride, c0, &mut out[c0..c0 + 8]);
        c0 += 8;
    }
    while c0 < out.len() {
        combine_chunk::<F, 1>(coef, rows, stride, c0, &mut out[c0..c0 + 1]);
        c0 += 1;
    }
}

#[inline(always)]
fn combine_chunk<F: Madd, const W: usize>(
    coef: &[f32],
    rows: &[f32],
    stride: usize,
    c0: usize,
    out: &mut [f32],
) {
    let mut acc = [0f32; W];
    for (t, &c) in coef.iter().enumerate() {
        let r = &rows[t * stride + c0..t * stride + c0 + W];
        for l in 0..W {
            acc[l] = F::madd(c, r[l], acc[l]);
        }
    }
    out.copy_from_slice(&acc);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erfc_matches_known_values() {
        // erf values from tables (Abramowitz and Stegun, table 7.1) and erfc(3).
        for &(x, erf) in &[
            (0.0f32, 0.0f64),
            (0.5, 0.520_499_877_8),
            (1.0, 0.842_700_792_9),
            (2.0, 0.995_322_265_0),
            (-1.0, -0.842_700_792_9),
        ] {
            assert!((f64::from(1.0 - erfc(x)) - erf).abs() < 3e-7, "erf({x})");
        }
        let e3 = f64::from(erfc(3.0));
        assert!((e3 - 2.209_049_699_858_544e-5).abs() / 2.2e-5 < 1e-6);
    }

    #[test]
    fn exp_is_accurate() {
        let mut x = -80.0f32;
        while x < 80.0 {
            let (a, b) = (f64::from(exp(x)), f64::from(x).exp());
            assert!(((a - b) / b).abs() < 3e-7, "exp({x}): {a} vs {b}");
            x += 0.37;
        }
    }

    #[test]
    fn vector_paths_match_scalar_references() {
        let mut x: Vec<f32> = (0..20_000)
            .map(|i| (i as f32 - 10_000.0) * 1.3e-3)
            .collect();
        let want_tanh: Vec<f32> = x.iter().map(|&v| gelu_tanh(v)).collect();
        activate(&mut x, Activation::GeluTanh);
        for (i, (&a, &b)) in x.iter().zip(&want_tanh).enumerate() {
            assert!(
                !a.is_nan() && (a - b).abs() <= 2e-6 * b.abs() + 1e-6,
                "x#{i}: {a} vs {b}"
            );
        }
        // Attention against a direct f64 evaluation on random inputs, two ragged sequences.
        let (heads, d, lengths) = (2usize, 8usize, [5usize, 3]);
        let width = heads * d;
        let mut rng = ets_testkit::rng::test_rng("vector_paths_match_scalar_references");
        let q = rng.symmetric_vec(8 * width, 2.0);
        let k = rng.symmetric_vec(8 * width, 2.0);
        let v = rng.symmetric_vec(8 * width, 2.0);
        let ctx = attention(&q, &k, &v, &lengths, heads, d);
        let mut start = 0;
        for &len in &lengths {
            for h in 0..heads {
                for i in 0..len {
                    let at = |m: &[f32], t: usize, j: usize| {
                        f64::from(m[(start + t) * width + h * d + j])
                    };
                    let s: Vec<f64> = (0..len)
                        .map(|t| {
                            (0..d).map(|j| at(&q, i, j) * at(&k, t, j)).sum::<f64>()
                                / (d as f64).sqrt()
                        })
                        .collect();
                    let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for j in 0..d {
                        let want: f64 = (0..len).map(|t| e[t] / z * at(&v, t, j)).sum();
                        let got = f64::from(ctx[(start + i) * width + h * d + j]);
                        assert!((want - got).abs() < 1e-5, "{want} vs {got}");
                    }
                }
            }
            start += len;
        }
    }

    #[test]
    fn gelu_limits() {
        assert_eq!(gelu_erf(0.0), 0.0);
        assert!((gelu_erf(10.0) - 10.0).abs() < 1e-5);
        assert!(gelu_erf(-10.0).abs() < 1e-6);
        assert!((gelu_erf(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((gelu_tanh(1.0) - 0.841_192).abs() < 1e-5);
    }
}
