//! An independent f64 BERT forward pass written from the formulas, the oracle of the runtimes'
//! tests: embeddings, LayerNorm, multi-head attention with the kept heads of each layer (a layer
//! with no heads adds only the output bias), the feed-forward block with GELU (erf or tanh) or
//! ReLU. It shares no code with the runtimes.

use ets::format::names::{self, LayerTensor};
use ets::format::{Activation, ModelConfig};

/// Plain f64 BERT over one sequence from dense canonical weights: last hidden state `[len, h]`.
/// `w(name)` returns the canonical tensor `name` (row-major, linear weights `[out, in]`).
pub fn reference_forward(
    cfg: &ModelConfig,
    w: &dyn Fn(&str) -> Vec<f64>,
    ids: &[u32],
    types: &[u32],
) -> Vec<f64> {
    let h = cfg.hidden_size as usize;
    let n = ids.len();
    let eps = cfg.layer_norm_eps;
    let (we, pe, te) = (
        w(names::WORD_EMBEDDINGS),
        w(names::POSITION_EMBEDDINGS),
        w(names::TOKEN_TYPE_EMBEDDINGS),
    );
    let mut x = vec![0f64; n * h];
    for t in 0..n {
        for j in 0..h {
            x[t * h + j] =
                we[ids[t] as usize * h + j] + pe[t * h + j] + te[types[t] as usize * h + j];
        }
    }
    ln(
        &mut x,
        &w(names::EMBEDDINGS_LN_WEIGHT),
        &w(names::EMBEDDINGS_LN_BIAS),
        eps,
    );
    for (l, &heads) in cfg.heads_per_layer.iter().enumerate() {
        let name = |t: LayerTensor| t.name(l);
        let d = cfg.head_dim as usize;
        let width = heads as usize * d;
        let mut attn = vec![0f64; n * h];
        if width > 0 {
            let q = lin(
                &x,
                n,
                h,
                &w(&name(LayerTensor::QueryWeight)),
                &w(&name(LayerTensor::QueryBias)),
            );
            let k = lin(
                &x,
                n,
                h,
                &w(&name(LayerTensor::KeyWeight)),
                &w(&name(LayerTensor::KeyBias)),
            );
            let v = lin(
                &x,
                n,
                h,
                &w(&name(LayerTensor::ValueWeight)),
                &w(&name(LayerTensor::ValueBias)),
            );
            let mut ctx = vec![0f64; n * width];
            for hd in 0..heads as usize {
                for i in 0..n {
                    let s: Vec<f64> = (0..n)
                        .map(|j| {
                            (0..d)
                                .map(|e| q[i * width + hd * d + e] * k[j * width + hd * d + e])
                                .sum::<f64>()
                                / (d as f64).sqrt()
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
                    for j in 0..n {
                        let p = (s[j] - m).exp() / z;
                        for e in 0..d {
                            ctx[i * width + hd * d + e] += p * v[j * width + hd * d + e];
                        }
                    }
                }
            }
            attn = lin(
                &ctx,
                n,
                width,
                &w(&name(LayerTensor::OutputWeight)),
                &w(&name(LayerTensor::OutputBias)),
            );
        } else {
            let b = w(&name(LayerTensor::OutputBias));
            for t in 0..n {
                attn[t * h..(t + 1) * h].copy_from_slice(&b);
            }
        }
        for (a, xv) in attn.iter_mut().zip(&x) {
            *a += xv;
        }
        ln(
            &mut attn,
            &w(&name(LayerTensor::AttentionLnWeight)),
            &w(&name(LayerTensor::AttentionLnBias)),
            eps,
        );
        let iw = w(&name(LayerTensor::IntermediateWeight));
        let f = iw.len() / h;
        let mut inter = lin(&attn, n, h, &iw, &w(&name(LayerTensor::IntermediateBias)));
        for v in inter.iter_mut() {
            *v = match cfg.activation {
                Activation::Gelu => 0.5 * *v * (1.0 + erf(*v / std::f64::consts::SQRT_2)),
                Activation::GeluTanh => {
                    0.5 * *v
                        * (1.0
                            + ((2.0 / std::f64::consts::PI).sqrt() * (*v + 0.044715 * v.powi(3)))
                                .tanh())
                }
                Activation::Relu => v.max(0.0),
            };
        }
        let mut out = lin(
            &inter,
            n,
            f,
            &w(&name(LayerTensor::FfnOutputWeight)),
            &w(&name(LayerTensor::FfnOutputBias)),
        );
        for (a, xv) in out.iter_mut().zip(&attn) {
            *a += xv;
        }
        ln(
            &mut out,
            &w(&name(LayerTensor::FfnLnWeight)),
            &w(&name(LayerTensor::FfnLnBias)),
            eps,
        );
        x = out;
    }
    x
}

fn lin(x: &[f64], n: usize, k: usize, w: &[f64], b: &[f64]) -> Vec<f64> {
    let o = b.len();
    let mut y = vec![0f64; n * o];
    for t in 0..n {
        for r in 0..o {
            y[t * o + r] = b[r] + (0..k).map(|j| x[t * k + j] * w[r * k + j]).sum::<f64>();
        }
    }
    y
}

fn ln(x: &mut [f64], g: &[f64], b: &[f64], eps: f64) {
    let h = g.len();
    for row in x.chunks_exact_mut(h) {
        let m = row.iter().sum::<f64>() / h as f64;
        let v = row.iter().map(|a| (a - m).powi(2)).sum::<f64>() / h as f64;
        for j in 0..h {
            row[j] = (row[j] - m) / (v + eps).sqrt() * g[j] + b[j];
        }
    }
}

/// erf by its Maclaurin series (|x| < 3) or continued fraction of erfc, to ~1e-13.
pub fn erf(x: f64) -> f64 {
    if x.abs() < 3.0 {
        let (mut term, mut sum, x2) = (x, x, x * x);
        for n in 1..200 {
            term *= -x2 / n as f64;
            let add = term / (2 * n + 1) as f64;
            sum += add;
            if add.abs() < 1e-17 {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc(z) = exp(-z^2)/sqrt(pi) * 1/(z + 1/2/(z + 1/(z + 3/2/(z + ...)))).
        let z = x.abs();
        let mut f = z;
        for k in (1..60).rev() {
            f = z + (k as f64 / 2.0) / f;
        }
        let erfc = (-z * z).exp() / std::f64::consts::PI.sqrt() / f;
        (1.0 - erfc) * x.signum()
    }
}

#[cfg(test)]
mod tests {
    use super::erf;

    #[test]
    fn erf_matches_tabulated_values() {
        for (x, want) in [
            (0.0, 0.0),
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (2.0, 0.995_322_265_018_952_7),
            (3.5, 0.999_999_256_901_627_7),
            (-1.0, -0.842_700_792_949_714_9),
        ] {
            assert!((erf(x) - want).abs() < 1e-12, "erf({x}) = {}", erf(x));
        }
    }
}
