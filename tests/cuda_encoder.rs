//! The CUDA encoder against the CPU runtime, and its attention kernel against an f64 reference.
//!
//! The `gpu_*` tests need an NVIDIA GPU (`cargo test --test cuda_encoder -- --include-ignored`).
//! Random inputs print their seed; `ETS_TEST_SEED=N` replays one. Every GPU pass runs on buffers
//! filled with NaN beforehand, and a NaN anywhere fails.

use std::path::Path;
use std::sync::Arc;

use ets::convert::{convert, ConvertOptions};
use ets::format::names;
use ets::format::{Dtype, EncodedTensor, EtsFile, ModelConfig};
use ets::prune::{Method, Recipe};
use ets::runtime::cpu::CpuEncoder;
use ets::runtime::cuda::encoder::launch;
use ets::runtime::cuda::{device_addr, nvrtc, CudaEncoder, CudaOptions, CudaRuntime, Dispatcher};
use ets::runtime::{Encoder, ForwardOptions, Pooling, TokenBatch, TokenSequence};
use ets_testkit::models as synth;
use ets_testkit::rng::{test_seed, Rng};
use half::f16;

mod common;

/// Per-sentence cosine every f16 file must reach against the CPU runtime.
const MIN_COSINE: f64 = 0.9999;

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        assert!(
            x.is_finite() && y.is_finite(),
            "non-finite value: {x} vs {y}"
        );
        ab += f64::from(x) * f64::from(y);
        aa += f64::from(x) * f64::from(x);
        bb += f64::from(y) * f64::from(y);
    }
    if aa == 0.0 && bb == 0.0 {
        return 1.0;
    }
    ab / (aa.sqrt() * bb.sqrt()).max(f64::MIN_POSITIVE)
}

/// The smallest cosine over rows of `width` values.
fn min_row_cosine(a: &[f32], b: &[f32], width: usize) -> f64 {
    a.chunks(width)
        .zip(b.chunks(width))
        .map(|(x, y)| cosine(x, y))
        .fold(1.0, f64::min)
}

fn random_batch(rng: &mut Rng, cfg: &ModelConfig, lengths: &[usize]) -> TokenBatch {
    let sequences = lengths
        .iter()
        .map(|&len| TokenSequence {
            ids: (0..len)
                .map(|_| rng.below(u64::from(cfg.vocab_size)) as u32)
                .collect(),
            type_ids: (0..len)
                .map(|_| rng.below(u64::from(cfg.type_vocab_size)) as u32)
                .collect(),
        })
        .collect();
    TokenBatch { sequences }
}

/// Compares the GPU with the CPU on `batch`: per sentence the hidden states (flattened), mean and
/// CLS pooling, normalised pooling, the hidden states after every layer, pooler and logits.
fn compare(label: &str, cpu: &CpuEncoder<'_>, gpu: &CudaEncoder, batch: &TokenBatch) {
    let opts = ForwardOptions {
        output_hidden_states: true,
    };
    let want = cpu.forward_with(batch, &opts).expect("cpu forward");
    let got = gpu.forward_with(batch, &opts).expect("gpu forward");
    assert_eq!(want.lengths, got.lengths);
    let h = want.hidden_size;
    let mut worst = 1.0f64;
    for i in 0..batch.len() {
        let (a, b) = (want.sequence(i).unwrap(), got.sequence(i).unwrap());
        let c = cosine(a, b);
        worst = worst.min(c);
        assert!(
            c >= MIN_COSINE,
            "{label}: sentence {i} ({} tokens): hidden-state cosine {c}",
            batch.sequences[i].len()
        );
    }
    let (ws, gs) = (
        want.hidden_states.as_ref().unwrap(),
        got.hidden_states.as_ref().unwrap(),
    );
    assert_eq!(ws.len(), gs.len());
    for (l, (a, b)) in ws.iter().zip(gs).enumerate() {
        let c = min_row_cosine(a, b, h);
        assert!(
            c >= 0.999,
            "{label}: hidden states {l}: worst token cosine {c}"
        );
    }
    for pooling in [Pooling::Mean, Pooling::Cls] {
        let a = want.pool(pooling);
        let b = gpu.embed(batch, pooling).expect("gpu embed");
        let c = min_row_cosine(&a, &b, h);
        worst = worst.min(c);
        assert!(c >= MIN_COSINE, "{label}: {pooling:?} pooling: cosine {c}");
        let n = gpu
            .embed_with(batch, pooling, true)
            .expect("gpu embed normalized");
        for (row, raw) in n.chunks(h).zip(a.chunks(h)) {
            let norm: f64 = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
            assert!(
                (norm.sqrt() - 1.0).abs() < 1e-3,
                "{label}: norm {}",
                norm.sqrt()
            );
            assert!(
                cosine(row, raw) >= MIN_COSINE,
                "{label}: normalised {pooling:?}"
            );
        }
    }
    match (&want.pooler_output, &got.pooler_output) {
        (Some(a), Some(b)) => {
            let c = min_row_cosine(a, b, h);
            assert!(c >= MIN_COSINE, "{label}: pooler cosine {c}");
        }
        (None, None) => {}
        _ => panic!("{label}: pooler output present on one backend only"),
    }
    match (&want.logits, &got.logits) {
        (Some(a), Some(b)) => {
            for (x, y) in a.iter().zip(b) {
                assert!(
                    (x - y).abs() <= 2e-2 * (1.0 + x.abs()),
                    "{label}: logits {a:?} vs {b:?}"
                );
            }
        }
        (None, None) => {}
        _ => panic!("{label}: logits present on one backend only"),
    }
    eprintln!(
        "{label}: {} sentences, worst cosine {worst:.7}",
        batch.len()
    );
}

fn gpu() -> Arc<CudaRuntime> {
    Arc::new(CudaRuntime::new(0).expect("a usable CUDA GPU (this test is ignored without one)"))
}

/// A random BERT in f16 with `heads` per layer, a pooler and a 3-label classifier.
fn random_model(
    dir: &Path,
    name: &str,
    heads: Vec<u32>,
    head_dim: u32,
    hidden: u32,
    seed: u64,
) -> std::path::PathBuf {
    random_model_encoded(dir, name, heads, head_dim, hidden, seed, |_, _, _| None)
}

/// As [`random_model`], with each matrix encoded by `encode(name, shape, values)` where it
/// returns a tensor, dense f16 elsewhere.
fn random_model_encoded(
    dir: &Path,
    name: &str,
    heads: Vec<u32>,
    head_dim: u32,
    hidden: u32,
    seed: u64,
    mut encode: impl FnMut(&str, &[usize], &[f32]) -> Option<EncodedTensor>,
) -> std::path::PathBuf {
    let layers = heads.len() as u32;
    let mut cfg = synth::config(layers, hidden, heads, head_dim, 4 * hidden, 1000, 512);
    cfg.num_labels = Some(3);
    let mut weights = synth::random_weights(&cfg, seed);
    let mut rng = Rng::new(seed ^ 0x5eed);
    let h = hidden as usize;
    let mut extra = |name: &str, shape: Vec<usize>, scale: f32| {
        let n = shape.iter().product();
        let data = (0..n).map(|_| rng.symmetric(scale)).collect();
        weights.push((name.to_string(), shape, data));
    };
    extra(names::POOLER_WEIGHT, vec![h, h], 1.0 / (h as f32).sqrt());
    extra(names::POOLER_BIAS, vec![h], 0.1);
    extra(
        names::CLASSIFIER_WEIGHT,
        vec![3, h],
        1.0 / (h as f32).sqrt(),
    );
    extra(names::CLASSIFIER_BIAS, vec![3], 0.1);
    let tensors: Vec<(String, EncodedTensor)> = weights
        .iter()
        .map(|(n, shape, data)| {
            if let Some(t) = encode(n, shape, data) {
                return (n.clone(), t);
            }
            let dtype = if shape.len() == 2 {
                Dtype::F16
            } else {
                Dtype::F32
            };
            let shape = shape.iter().map(|&d| d as u64).collect();
            (n.clone(), EncodedTensor::dense(shape, dtype, data).unwrap())
        })
        .collect();
    let path = dir.join(format!("{name}.ets"));
    synth::write_ets(&path, &cfg, &tensors, None).unwrap();
    path
}

#[test]
#[ignore = "needs NVRTC (scripts/install_nvrtc.sh)"]
fn encoder_kernels_compile() {
    if let Err(e) = nvrtc::probe_nvrtc() {
        panic!("NVRTC is unusable (run scripts/install_nvrtc.sh): {e}");
    }
    for (file, names) in [
        (
            "encoder.cu",
            &[
                "enc_embed_ln_f16",
                "enc_bias_residual_ln_f16",
                "enc_bias_act_f16",
                "enc_bias_to_f32_f16",
                "enc_pool_f16",
            ][..],
        ),
        (
            "attention.cu",
            &[
                "attn_fwd_d32_w4m1_f16",
                "attn_fwd_d64_w4m1_f16",
                "attn_fwd_d128_w4m1_f16",
            ][..],
        ),
    ] {
        let src = nvrtc::KERNELS
            .iter()
            .find(|(f, _)| *f == file)
            .map(|(_, s)| *s)
            .unwrap_or_else(|| panic!("{file} is not embedded"));
        for arch in ["sm_80", "sm_90"] {
            let r = nvrtc::compile_kernel(file, src, arch).unwrap_or_else(|e| panic!("{e}"));
            for n in names {
                assert!(
                    r.entry_points.iter().any(|e| e == n),
                    "{file} {arch}: {n} missing from {:?}",
                    r.entry_points
                );
            }
            // Where ptxas is installed: no entry point spills registers.
            if std::env::var_os("ETS_PTXAS").is_some() {
                let res = nvrtc::ptxas_resources(&r).unwrap_or_else(|e| panic!("ptxas: {e}"));
                eprintln!("{res}");
                for line in res.lines().filter(|l| l.contains("spill stores")) {
                    assert!(
                        line.contains(" 0 bytes spill stores"),
                        "{file} {arch}: {line}"
                    );
                }
            }
        }
    }
}

/// Softmax attention in f64 of `qkv` (rows of Q, K and V, each `heads * d` wide, biases added).
fn attention_reference(qkv: &[f32], lengths: &[usize], heads: usize, d: usize) -> Vec<f32> {
    let w = heads * d;
    let total: usize = lengths.iter().sum();
    let mut ctx = vec![0f32; total * w];
    let mut start = 0;
    for &len in lengths {
        for h in 0..heads {
            for i in 0..len {
                let q = &qkv[(start + i) * 3 * w + h * d..][..d];
                let scores: Vec<f64> = (0..len)
                    .map(|j| {
                        let k = &qkv[(start + j) * 3 * w + w + h * d..][..d];
                        q.iter()
                            .zip(k)
                            .map(|(&a, &b)| f64::from(a) * f64::from(b))
                            .sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let sum: f64 = e.iter().sum();
                for c in 0..d {
                    let v: f64 = (0..len)
                        .map(|j| e[j] * f64::from(qkv[(start + j) * 3 * w + 2 * w + h * d + c]))
                        .sum();
                    ctx[(start + i) * w + h * d + c] = (v / sum) as f32;
                }
            }
        }
        start += len;
    }
    ctx
}

/// One attention case on the GPU: Q, K and V as the thirds of one [tokens, 3W] f16 matrix with
/// biases (or none), on an output poisoned with NaN, against the f64 reference.
fn check_attention(
    rt: &Arc<CudaRuntime>,
    rng: &mut Rng,
    d: usize,
    heads: usize,
    lengths: &[usize],
    with_bias: bool,
) {
    let w = heads * d;
    let total: usize = lengths.iter().sum();
    // Scores of a realistic spread (|q.k| / sqrt(d) up to a few units).
    let raw: Vec<f32> = (0..total * 3 * w).map(|_| rng.symmetric(1.5)).collect();
    let bias: Vec<f32> = (0..3 * w)
        .map(|_| if with_bias { rng.symmetric(0.5) } else { 0.0 })
        .collect();
    let bits: Vec<u16> = raw.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
    // The attention of the f16 inputs with their biases added.
    let seen: Vec<f32> = raw
        .iter()
        .enumerate()
        .map(|(i, &v)| f16::from_f32(v).to_f32() + bias[i % (3 * w)])
        .collect();
    let want = attention_reference(&seen, lengths, heads, d);
    let mut cu = vec![0i32];
    for &l in lengths {
        cu.push(cu.last().unwrap() + l as i32);
    }
    let qkv = rt.upload(&bits).unwrap();
    let b = rt.upload(&bias).unwrap();
    let cub = rt.upload(&cu).unwrap();
    let mut ctx = rt.alloc::<u16>(total * w).unwrap();
    let max_len = *lengths.iter().max().unwrap();
    let (qa, ba) = (device_addr(&qkv), device_addr(&b));
    let input = launch::AttentionInput {
        q: qa,
        k: qa + (w * 2) as u64,
        v: qa + (2 * w * 2) as u64,
        ld: 3 * w,
        bias: if with_bias {
            [ba, ba + (w * 4) as u64, ba + (2 * w * 4) as u64]
        } else {
            [0; 3]
        },
    };
    rt.fill_u16(&mut ctx, 0x7e00).unwrap();
    let (cua, ctxa) = (device_addr(&cub), device_addr(&ctx));
    // SAFETY: Q, K and V are the thirds of qkv's total rows of 3W f16 (stride 3W), the
    // biases the thirds of b's 3W f32 (or none), cub the offsets of `lengths` ending at
    // total (longest max_len), ctx total x W f16; all alive for the call.
    unsafe { launch::attention(rt, &input, cua, lengths.len(), max_len, heads, d, ctxa) }.unwrap();
    let got: Vec<f32> = rt
        .download::<u16>(&ctx, total * w)
        .unwrap()
        .iter()
        .map(|&v| f16::from_bits(v).to_f32())
        .collect();
    let label = format!("d={d} heads={heads} bias={with_bias} lengths={lengths:?}");
    let mut max_err = 0f32;
    for (i, (&g, &r)) in got.iter().zip(&want).enumerate() {
        assert!(g.is_finite(), "{label}: value {i} is {g}");
        max_err = max_err.max((g - r).abs());
    }
    let cos = min_row_cosine(&got, &want, d);
    eprintln!("attention {label}: max |err| {max_err:.2e}, worst cosine {cos:.7}");
    assert!(max_err < 1e-2, "{label}: max error {max_err}");
    assert!(cos >= MIN_COSINE, "{label}: worst row cosine {cos}");
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn gpu_attention_matches_reference() {
    let rt = gpu();
    let mut rng = Rng::new(test_seed("gpu_attention_matches_reference"));
    // Lengths around every tile edge (64 keys, 64 queries) in one packed batch.
    let mixed = [1, 63, 64, 65, 127, 128, 129, 384, 512, 1000];
    for (d, heads) in [(64, 3), (32, 2), (128, 2)] {
        check_attention(&rt, &mut rng, d, heads, &mixed, true);
    }
    check_attention(&rt, &mut rng, 64, 12, &[1, 2, 7, 130], false);
    check_attention(&rt, &mut rng, 64, 2, &[512], true);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn gpu_random_bert_base_shapes_match_cpu() {
    let rt = gpu();
    let s = test_seed("gpu_random_bert_base_shapes_match_cpu");
    let mut rng = Rng::new(s);
    let tmp = tempfile::tempdir().unwrap();
    for (name, heads, d, hidden) in [
        ("bert-base-3l", vec![12, 12, 12], 64, 768),
        ("pruned-heads", vec![12, 5, 0], 64, 768),
        ("head32", vec![8, 8], 32, 256),
        ("head128", vec![4, 4], 128, 512),
    ] {
        let path = random_model(
            tmp.path(),
            name,
            heads,
            d,
            hidden,
            s.wrapping_add(hidden as u64),
        );
        let file = EtsFile::open(&path).unwrap();
        let cpu = CpuEncoder::new(&file).unwrap();
        let gpu = CudaEncoder::with_runtime(rt.clone(), &file).unwrap();
        gpu.set_poison(true);
        let cfg = file.model().clone();
        for lengths in [
            vec![1],
            vec![512],
            vec![1, 17, 64, 65, 128, 200, 384, 512],
            (0..24)
                .map(|_| 1 + rng.below(256) as usize)
                .collect::<Vec<_>>(),
        ] {
            let batch = random_batch(&mut rng, &cfg, &lengths);
            compare(&format!("{name} {lengths:?}"), &cpu, &gpu, &batch);
        }
    }
}

/// all-MiniLM-L6-v2 converted in f16 with `method` at `sparsity`; the source is
/// `models/all-minilm-l6-v2/model.safetensors`, or the file `ETS_TEST_MINILM` names.
fn minilm(dir: &Path, method: Method, sparsity: f64) -> Option<std::path::PathBuf> {
    let src = match std::env::var_os("ETS_TEST_MINILM") {
        Some(p) => std::path::PathBuf::from(p),
        None => common::real_model("all-minilm-l6-v2/model.safetensors"),
    };
    let recipe = Recipe {
        method,
        sparsity,
        ..Recipe::default()
    };
    let out = dir.join(format!("minilm-{}-{sparsity}.ets", method.name()));
    convert(&src, &out, &ConvertOptions::new(recipe, Dtype::F16)).unwrap_or_else(|e| panic!("{e}"));
    Some(out)
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn gpu_minilm_every_method_matches_cpu() {
    let rt = gpu();
    let s = test_seed("gpu_minilm_every_method_matches_cpu");
    let mut rng = Rng::new(s);
    let tmp = tempfile::tempdir().unwrap();
    for (method, sparsity) in [
        (Method::None, 0.0),
        (Method::Tile, 0.5),
        (Method::Tile, 0.8),
        (Method::Rows, 0.5),
        (Method::AttentionAware, 0.8),
        (Method::Irregular, 0.5),
        (Method::Heads, 0.5),
    ] {
        let Some(path) = minilm(tmp.path(), method, sparsity) else {
            return;
        };
        let file = EtsFile::open(&path).unwrap();
        let cpu = CpuEncoder::new(&file).unwrap();
        let gpu = CudaEncoder::with_runtime(rt.clone(), &file).unwrap();
        gpu.set_poison(true);
        let cfg = file.model().clone();
        let mut lengths: Vec<usize> = (0..12).map(|_| 1 + rng.below(200) as usize).collect();
        lengths.extend([1, 512, 257]);
        let batch = random_batch(&mut rng, &cfg, &lengths);
        compare(
            &format!("minilm {} {sparsity}", method.name()),
            &cpu,
            &gpu,
            &batch,
        );
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn gpu_bad_input_is_a_typed_error() {
    let rt = gpu();
    let tmp = tempfile::tempdir().unwrap();
    let path = random_model(tmp.path(), "small", vec![2], 32, 64, 7);
    let file = EtsFile::open(&path).unwrap();
    let gpu = CudaEncoder::with_runtime(rt, &file).unwrap();
    let too_long = TokenBatch::from_ids(vec![vec![1; 513]]);
    assert!(gpu.forward(&too_long).is_err());
    let bad_id = TokenBatch::from_ids(vec![vec![1, 5000]]);
    assert!(gpu.forward(&bad_id).is_err());
    let empty = TokenBatch::from_ids(vec![vec![]]);
    assert!(gpu.forward(&empty).is_err());
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn gpu_nearby_batch_sizes_replay_one_graph_and_match_cpu() {
    let rt = gpu();
    let s = test_seed("gpu_nearby_batch_sizes_replay_one_graph_and_match_cpu");
    let mut rng = Rng::new(s);
    let tmp = tempfile::tempdir().unwrap();
    let path = random_model(tmp.path(), "nearby", vec![4, 4], 64, 256, s);
    let file = EtsFile::open(&path).unwrap();
    let cpu = CpuEncoder::new(&file).unwrap();
    let gpu = CudaEncoder::with_runtime(rt, &file).unwrap();
    gpu.set_poison(true);
    let cfg = file.model().clone();
    let h = cfg.hidden_size as usize;
    // Eight sequences of 57-64 tokens (456-512 in all): every batch rounds to 512 rows with
    // the longest in one attention block, the shape of the warm-up pass.
    <CudaEncoder as Encoder>::warm_up(&gpu, 512, 8).expect("warm-up");
    assert_eq!(gpu.stats().passes, 0, "the warm-up is not counted");
    let mut totals = std::collections::BTreeSet::new();
    for i in 0..5 {
        let lengths: Vec<usize> = (0..8).map(|_| 57 + rng.below(8) as usize).collect();
        totals.insert(lengths.iter().sum::<usize>());
        let batch = random_batch(&mut rng, &cfg, &lengths);
        let mut want = cpu.embed(&batch, Pooling::Mean).expect("cpu embed");
        ets::runtime::embed::normalize_rows(&mut want, h);
        let got = gpu
            .embed_normalized(&batch, Pooling::Mean, true)
            .expect("gpu embed");
        let c = min_row_cosine(&want, &got, h);
        assert!(c >= MIN_COSINE, "batch {i} {lengths:?}: cosine {c}");
    }
    assert!(
        totals.len() > 1,
        "the batches must differ in size: {totals:?}"
    );
    let st = gpu.stats();
    assert_eq!(
        (
            st.passes,
            st.eager,
            st.captured,
            st.replayed,
            st.buffer_growths
        ),
        (5, 0, 1, 4, 0),
        "{st:?}"
    );
    assert!(st.rows > st.real_rows, "{st:?}");
    let text =
        <CudaEncoder as Encoder>::pass_report(&gpu).expect("the CUDA encoder reports its passes");
    assert!(text.contains("0 eager, 1 captured, 4 replayed"), "{text}");
}

/// A random 4-head model whose layers 0-2 hold Q, K and V as tiles: layer 0 every matrix in
/// 32x32 tiles, layer 1 Q and K in 32x32 tiles with V dense, layer 2 Q, K and V in 16x16 tiles;
/// about half the tiles kept, the rest dense f16.
fn tile_qkv_model(dir: &Path, seed: u64) -> std::path::PathBuf {
    let mut masks = Rng::new(seed ^ 0x7111e);
    random_model_encoded(
        dir,
        "tile-qkv",
        vec![4, 4, 4],
        64,
        256,
        seed,
        |name, shape, data| {
            let [r, c] = *shape else {
                return None;
            };
            let qkv = ["query", "key", "value"]
                .iter()
                .any(|p| name.contains(&format!("attention.{p}.weight")));
            let layer0 = name.starts_with("layers.0.") && name.ends_with(".weight");
            let layer1 = name.starts_with("layers.1.") && qkv && !name.contains("value");
            let tile = if layer0 || layer1 {
                32
            } else if name.starts_with("layers.2.") && qkv {
                16
            } else {
                return None;
            };
            let keep = synth::random_tile_keep(r, c, tile, tile, 0.5, &mut masks);
            Some(EncodedTensor::tile(r, c, data, tile, tile, &keep, Dtype::F16).unwrap())
        },
    )
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn gpu_tile_qkv_on_cublas_run_batched_and_match_cpu() {
    let rt = gpu();
    let s = test_seed("gpu_tile_qkv_on_cublas_run_batched_and_match_cpu");
    let mut rng = Rng::new(s);
    let tmp = tempfile::tempdir().unwrap();
    let path = tile_qkv_model(tmp.path(), s);
    let file = EtsFile::open(&path).unwrap();
    let cpu = CpuEncoder::new(&file).unwrap();
    let cfg = file.model().clone();
    let forced = CudaOptions {
        force_cublas: true,
        tuning_cache: false,
        ..CudaOptions::default()
    };
    let gpu =
        CudaEncoder::with_dispatcher(rt.clone(), &file, Dispatcher::with_options(forced)).unwrap();
    gpu.set_poison(true);
    assert!(gpu.batched_qkv_layers().is_empty(), "no pass ran yet");
    let mut lengths: Vec<usize> = (0..12).map(|_| 1 + rng.below(200) as usize).collect();
    lengths.extend([1, 64, 65, 512]);
    let batch = random_batch(&mut rng, &cfg, &lengths);
    // Hidden states run eagerly; the pooled passes after them are captured and replayed.
    compare("tile Q/K/V forced to cuBLAS", &cpu, &gpu, &batch);
    assert_eq!(gpu.batched_qkv_layers(), vec![0, 1, 2]);
    let st = gpu.stats();
    assert!(st.captured >= 1 && st.replayed >= 1, "{st:?}");
    let report = gpu.report(&batch).unwrap();
    let ran = |name: &str| {
        report
            .iter()
            .find(|r| r.name == name)
            .map(|r| r.ran.clone())
            .unwrap_or_else(|| panic!("{name} missing from the report"))
    };
    assert_eq!(
        ran("layers.0.attention.key.weight"),
        "cublas (tile, batched Q/K/V)"
    );
    assert_eq!(
        ran("layers.1.attention.value.weight"),
        "cublas (dense, batched Q/K/V)"
    );
    assert_eq!(
        ran("layers.2.attention.query.weight"),
        "cublas (tile, batched Q/K/V)"
    );
    assert_eq!(ran("layers.0.ffn.output.weight"), "cublas (tile)");

    // Measured decisions (screened tile kernels against cuBLAS) on the same file also match.
    let measured = CudaOptions {
        tuning_cache: false,
        ..CudaOptions::default()
    };
    let gpu = CudaEncoder::with_dispatcher(rt, &file, Dispatcher::with_options(measured)).unwrap();
    gpu.set_poison(true);
    compare("tile Q/K/V measured", &cpu, &gpu, &batch);
    let (measurements, _) = gpu.dispatcher().measuring();
    assert!(measurements > 0, "the tile weights were measured");
    eprintln!(
        "{}",
        ets::runtime::cuda::format_table(&gpu.dispatcher().table())
    );
}
