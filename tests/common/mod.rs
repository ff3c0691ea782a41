//! Shared helpers of the integration tests: model paths, building `.ets` files from
//! the all-MiniLM-L6-v2 safetensors with the format writer, goldens, and an independent f64
//! reference forward pass written from the BERT formulas.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use ets::format::names::{self, LayerTensor};
use ets::format::{Activation, EncodedTensor, ModelConfig};
use ets::runtime::cpu::npy;
use ets_testkit::models;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `models/<rel>`. Tests that call this are `#[ignore = "needs the real models ..."]`, so a run
/// that includes them fails here when the model is missing.
pub fn real_model(rel: &str) -> PathBuf {
    let p = root().join("models").join(rel);
    assert!(
        p.exists(),
        "models/{rel} is missing (run scripts/fetch_models.sh)"
    );
    p
}

/// Canonical name for a Hugging Face BertModel tensor name.
pub fn canonical(hf: &str) -> Option<String> {
    let hf = hf.strip_prefix("bert.").unwrap_or(hf);
    let fixed = match hf {
        "embeddings.word_embeddings.weight" => names::WORD_EMBEDDINGS,
        "embeddings.position_embeddings.weight" => names::POSITION_EMBEDDINGS,
        "embeddings.token_type_embeddings.weight" => names::TOKEN_TYPE_EMBEDDINGS,
        "embeddings.LayerNorm.weight" => names::EMBEDDINGS_LN_WEIGHT,
        "embeddings.LayerNorm.bias" => names::EMBEDDINGS_LN_BIAS,
        "pooler.dense.weight" => names::POOLER_WEIGHT,
        "pooler.dense.bias" => names::POOLER_BIAS,
        _ => "",
    };
    if !fixed.is_empty() {
        return Some(fixed.to_string());
    }
    let rest = hf.strip_prefix("encoder.layer.")?;
    let (layer, suffix) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let t = match suffix {
        "attention.self.query.weight" => LayerTensor::QueryWeight,
        "attention.self.query.bias" => LayerTensor::QueryBias,
        "attention.self.key.weight" => LayerTensor::KeyWeight,
        "attention.self.key.bias" => LayerTensor::KeyBias,
        "attention.self.value.weight" => LayerTensor::ValueWeight,
        "attention.self.value.bias" => LayerTensor::ValueBias,
        "attention.output.dense.weight" => LayerTensor::OutputWeight,
        "attention.output.dense.bias" => LayerTensor::OutputBias,
        "attention.output.LayerNorm.weight" => LayerTensor::AttentionLnWeight,
        "attention.output.LayerNorm.bias" => LayerTensor::AttentionLnBias,
        "intermediate.dense.weight" => LayerTensor::IntermediateWeight,
        "intermediate.dense.bias" => LayerTensor::IntermediateBias,
        "output.dense.weight" => LayerTensor::FfnOutputWeight,
        "output.dense.bias" => LayerTensor::FfnOutputBias,
        "output.LayerNorm.weight" => LayerTensor::FfnLnWeight,
        "output.LayerNorm.bias" => LayerTensor::FfnLnBias,
        _ => return None,
    };
    Some(t.name(layer))
}

/// all-MiniLM-L6-v2 weights as canonical f32 tensors plus its configuration.
/// `(canonical name, shape, values)` of every tensor.
pub type Weights = Vec<(String, Vec<usize>, Vec<f32>)>;

pub fn minilm_weights(dir: &Path) -> (ModelConfig, Weights) {
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let g = |k: &str| cfg[k].as_u64().unwrap() as u32;
    let heads = g("num_attention_heads");
    let mut config = models::config(
        g("num_hidden_layers"),
        g("hidden_size"),
        vec![heads; g("num_hidden_layers") as usize],
        g("hidden_size") / heads,
        g("intermediate_size"),
        g("vocab_size"),
        g("max_position_embeddings"),
    );
    config.type_vocab_size = g("type_vocab_size");
    config.layer_norm_eps = cfg["layer_norm_eps"].as_f64().unwrap();
    config.activation = Activation::Gelu;
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let Some(c) = canonical(&name) else { continue };
        assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        out.push((c, view.shape().to_vec(), data));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    (config, out)
}

/// Encodes every tensor densely with `dtype`.
pub fn dense_all(
    weights: &[(String, Vec<usize>, Vec<f32>)],
    dtype: ets::format::Dtype,
) -> Vec<(String, EncodedTensor)> {
    weights
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                EncodedTensor::dense(s.iter().map(|&x| x as u64).collect(), dtype, d).unwrap(),
            )
        })
        .collect()
}

/// A golden set: token ids, type ids, mean and CLS embeddings `[count, hidden]`.
pub struct Golden {
    pub sentences: Vec<String>,
    pub ids: Vec<Vec<u32>>,
    pub type_ids: Vec<Vec<u32>>,
    pub hidden: usize,
    pub mean: Vec<f32>,
    pub cls: Vec<f32>,
}

pub fn golden(name: &str) -> Golden {
    let d = root().join("fixtures/golden").join(name);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("tokens.json")).unwrap()).unwrap();
    let ids = |k: &str| -> Vec<Vec<u32>> {
        meta[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                s.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as u32)
                    .collect()
            })
            .collect()
    };
    let (ms, mean) = npy::read(&d.join("mean.npy")).unwrap();
    let (_, cls) = npy::read(&d.join("cls.npy")).unwrap();
    Golden {
        sentences: meta["sentences"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect(),
        ids: ids("ids"),
        type_ids: ids("type_ids"),
        hidden: ms[1],
        mean,
        cls,
    }
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Smallest per-row cosine between two `[rows, hidden]` arrays.
pub fn min_row_cosine(a: &[f32], b: &[f32], hidden: usize) -> f64 {
    assert_eq!(a.len(), b.len());
    a.chunks_exact(hidden)
        .zip(b.chunks_exact(hidden))
        .map(|(x, y)| cosine(x, y))
        .fold(f64::INFINITY, f64::min)
}

/// Largest |a - b| relative to max |b|.
pub fn max_rel_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().map(|v| f64::from(v.abs())).fold(1e-30, f64::max);
    a.iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).abs())
        .fold(0.0, f64::max)
        / scale
}

// ------------------------------------------------------------------ f64 reference forward pass

/// Plain f64 BERT over one sequence from dense canonical weights: last hidden state `[len, h]`.
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
