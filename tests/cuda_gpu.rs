//! GPU correctness checks of the CUDA runtime (tile kernel, cuBLAS paths, one-allocation upload).
//!
//! Every test is ignored by default (`#[ignore = "needs an NVIDIA GPU"]`); scripts/device_check.sh
//! runs them with `--include-ignored`, and without a usable GPU they fail. `et-bench check` runs
//! the full suite; these run a reduced one. Random inputs print their seed; `ETS_TEST_SEED`
//! replays one.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use ets::convert::backend::{CalibrationBackend, LayerStages};
use ets::convert::calibrate::{compare, compare_on, read_sentences};
use ets::convert::{convert, Allocate, ConvertOptions};
use ets::format::{Dtype, EtsFile, TensorData};
use ets::prune::{Method, Recipe};
use ets::runtime::cpu::{CpuEncoder, TextTokenizer};
use ets::runtime::cuda::host::HostTiles;
use ets::runtime::cuda::tuning::{CudaOptions, TUNING_FILE};
use ets::runtime::cuda::upload::DeviceTiles;
use ets::runtime::cuda::{Choice, CudaRuntime, Dispatcher, ElemType, LinearWeight, TileKernel};
use ets::runtime::shared::Device;
use ets_dev::cuda::checks::{self, CheckPath};
use ets_testkit::linear::top_norm_mask;
use ets_testkit::rng::{test_rng, Rng};

fn runtime() -> CudaRuntime {
    CudaRuntime::new(0).unwrap_or_else(|e| panic!("the CUDA runtime is unusable: {e}"))
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn gpu_tile_kernel_and_dense_paths_match_the_cpu_reference() {
    let rt = runtime();
    let mut rng: Rng = test_rng("gpu_tile_kernel_and_dense_paths_match_the_cpu_reference");
    let mut results = Vec::new();
    for elem in [ElemType::F16, ElemType::Bf16] {
        for (tile, shape, density) in [
            (16, (333, 300, 200), 0.3),
            (32, (256, 768, 768), 1.0),
            (64, (130, 2304, 768), 0.2),
        ] {
            for path in [CheckPath::Tile, CheckPath::TileNoSplit] {
                results.extend(
                    checks::check_case(
                        &rt,
                        &mut rng,
                        elem,
                        path,
                        shape,
                        (tile, tile),
                        density,
                        true,
                        true,
                    )
                    .unwrap(),
                );
            }
        }
        for path in [CheckPath::TileViaCublas, CheckPath::Rows, CheckPath::Cols] {
            results.extend(
                checks::check_case(
                    &rt,
                    &mut rng,
                    elem,
                    path,
                    (200, 384, 256),
                    (16, 16),
                    0.4,
                    false,
                    true,
                )
                .unwrap(),
            );
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("check.ets");
    checks::write_check_file(&path, &mut rng).unwrap();
    let file = EtsFile::open(&path).unwrap();
    results.extend(checks::file_suite(&rt, &mut rng, &file, 200).unwrap());
    for r in &results {
        eprintln!(
            "{} max_rel {:.2e} nonfinite {} {}",
            if r.pass() { "PASS" } else { "FAIL" },
            r.err.max_rel,
            r.err.non_finite,
            r.name
        );
    }
    let failed: Vec<_> = results
        .iter()
        .filter(|r| !r.pass())
        .map(|r| r.name.clone())
        .collect();
    assert!(failed.is_empty(), "failed: {failed:?}");
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn gpu_dispatch_decisions_persist_and_options_force() {
    let rt = runtime();
    let mut rng: Rng = test_rng("gpu_dispatch_decisions_persist_and_options_force");
    let (n, k) = (768, 768);
    let w = rng.symmetric_vec(n * k, 0.05);
    let keep = top_norm_mask(&w, n, k, 16, 16, 0.5);
    let h = HostTiles::from_dense(&w, n, k, 16, 16, &keep, ElemType::F16).unwrap();
    let tiles = DeviceTiles::upload(&rt, &h).unwrap();
    let lw = LinearWeight::Tile(tiles.view());
    // SAFETY: tiles, the upload lw points into, lives to the end of the test.
    let decide = |d: Dispatcher| unsafe { d.decide(&rt, "w", &lw, 1000) }.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = CudaOptions {
        cache_dir: Some(dir.path().to_path_buf()),
        ..CudaOptions::default()
    };
    let first = decide(Dispatcher::with_options(opts.clone()));
    assert!(first.reason.starts_with("measured"), "{}", first.reason);
    assert!(dir.path().join(TUNING_FILE).exists());
    // A second dispatcher (as a second process would) reads the decision instead of timing.
    let second = decide(Dispatcher::with_options(opts.clone()));
    assert!(
        second.reason.starts_with("tuning cache"),
        "{}",
        second.reason
    );
    assert_eq!(
        (second.choice, second.tile_ms),
        (first.choice, first.tile_ms)
    );
    let cublas = decide(Dispatcher::with_options(CudaOptions {
        force_cublas: true,
        ..opts.clone()
    }));
    assert_eq!(cublas.choice, Choice::Cublas);
    let forced = decide(Dispatcher::with_options(CudaOptions {
        force_kernel: Some(TileKernel::Mma),
        tuning_cache: false,
        ..opts
    }));
    assert_eq!(
        (forced.choice, forced.kernel),
        (Choice::Tile, Some(TileKernel::Mma))
    );
}

/// SST-2 (`text<TAB>label` tsv files) from `ETS_SST2_DIR`, else `data/sst2` in the repository;
/// missing data fails the test.
fn sst2(file: &str) -> PathBuf {
    let dir = std::env::var_os("ETS_SST2_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sst2"));
    let p = dir.join(file);
    assert!(p.exists(), "{} is missing (set ETS_SST2_DIR)", p.display());
    p
}

/// The largest error of `gpu` against `cpu`, each value's relative to the larger of its own size
/// and the array's root mean square (so values near zero are judged on the array's scale). A
/// NaN or infinity in either fails at once, naming where.
fn worst_error(what: &str, gpu: &[f32], cpu: &[f32]) -> f64 {
    assert_eq!(gpu.len(), cpu.len(), "{what}: lengths differ");
    let rms = (cpu
        .iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        / cpu.len().max(1) as f64)
        .sqrt();
    let mut worst = 0f64;
    for (i, (&g, &c)) in gpu.iter().zip(cpu).enumerate() {
        assert!(
            g.is_finite() && c.is_finite(),
            "{what}: value {i} is {g} on the GPU, {c} on the CPU"
        );
        let e = (f64::from(g) - f64::from(c)).abs() / f64::from(c.abs()).max(rms);
        worst = worst.max(e);
    }
    worst
}

/// The largest difference of two f64 statistics relative to the largest magnitude in `cpu`.
fn stats_error(what: &str, gpu: &[f64], cpu: &[f64]) -> f64 {
    assert_eq!(gpu.len(), cpu.len(), "{what}: lengths differ");
    let scale = cpu.iter().fold(0f64, |m, v| m.max(v.abs()));
    assert!(scale > 0.0, "{what}: all zero on the CPU");
    let mut worst = 0f64;
    for (i, (&g, &c)) in gpu.iter().zip(cpu).enumerate() {
        assert!(
            g.is_finite(),
            "{what}: value {i} is {g} on the GPU ({c} on the CPU)"
        );
        worst = worst.max((g - c).abs() / scale);
    }
    worst
}

/// all-MiniLM-L6-v2 converted dense in f32 (the reference calibration runs from).
fn minilm_dense(dir: &Path) -> PathBuf {
    let src = common::real_model("all-minilm-l6-v2");
    let out = dir.join("dense.ets");
    convert(
        &src,
        &out,
        &ConvertOptions::new(Recipe::default(), Dtype::F32),
    )
    .unwrap_or_else(|e| panic!("dense conversion: {e}"));
    out
}

/// Per stage, on real all-MiniLM-L6-v2 activations of 320 SST-2 train sentences, the GPU
/// backend's activations and statistics against the CPU backend's, from the same inputs (the
/// CPU's), with every GPU output filled with NaN before it is computed; then the comparison of the
/// dense model with a 50% tile file on the GPU against the CPU's.
///
/// Bounds: both sides compute in f32 and differ only in the order of sums. A GEMM output's
/// rounding error is about sqrt(k) * 2^-24 of its terms' size, under 3e-6 for k <= 1536; the
/// LayerNorm (mean subtraction) and the softmax can amplify that tenfold, so 1e-4 of the value
/// (or of the array's root mean square) on activations leaves a margin. The statistics are
/// per-batch f32 products (a few hundred tokens: relative error about 2e-6 of their largest
/// entries) summed in f64, so 1e-5 of the largest entry.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn gpu_calibration_stages_match_the_cpu_backend() {
    const ACTIVATION_BOUND: f64 = 1e-4;
    const STATS_BOUND: f64 = 1e-5;
    let tmp = tempfile::tempdir().expect("dir");
    let dense = minilm_dense(tmp.path());
    let file = EtsFile::open(&dense).expect("open");
    let enc = CpuEncoder::new(&file).expect("encoder");
    let tokenizer = TextTokenizer::from_file(&file).expect("tokenizer");
    let texts = read_sentences(&sst2("train.tsv"), 320).expect("sentences");
    let cpu = CalibrationBackend::cpu();
    let gpu = CalibrationBackend::cuda(0).unwrap_or_else(|e| panic!("{e}"));
    gpu.set_poison(true);
    eprintln!("GPU backend: {}", gpu.describe());
    let mut batches: Vec<(Vec<usize>, Vec<f32>)> = texts
        .chunks(32)
        .map(|c| {
            let t: Vec<&str> = c.iter().map(String::as_str).collect();
            let batch = tokenizer.encode(&t).expect("tokenize").batch;
            let (x, lengths) = enc.embed_batch(&batch).expect("embed");
            (lengths, x)
        })
        .collect();
    let layers = file.model().num_layers as usize;
    let stage_names = [
        "Q/K/V input",
        "context",
        "attention output",
        "FFN activation",
    ];
    for layer in 0..layers {
        let c_layer = cpu.dense_layer(&enc, &file, layer).expect("cpu layer");
        let g_layer = gpu.dense_layer(&enc, &file, layer).expect("gpu layer");
        let mut c_stats: Vec<_> = Vec::new();
        let mut g_stats: Vec<_> = Vec::new();
        let mut worst = [0f64; 4];
        for (b, (lengths, x)) in batches.iter_mut().enumerate() {
            let context = |l: &LayerStages<'_>, x: &[f32]| l.context(x, lengths).expect("context");
            let (c_ctx, g_ctx) = (context(&c_layer, x), context(&g_layer, x));
            let c_att = c_layer.attention_out(&c_ctx, x).expect("attention out");
            let g_att = g_layer.attention_out(&c_ctx, x).expect("attention out");
            let c_int = c_layer.intermediate(&c_att).expect("intermediate");
            let g_int = g_layer.intermediate(&c_att).expect("intermediate");
            let c_out = c_layer.output(&c_int, &c_att).expect("output");
            let g_out = g_layer.output(&c_int, &c_att).expect("output");
            let at = |s: &str| format!("layer {layer}, batch {b}: {s}");
            for (i, (g, c)) in [
                (&g_ctx, &c_ctx),
                (&g_att, &c_att),
                (&g_int, &c_int),
                (&g_out, &c_out),
            ]
            .into_iter()
            .enumerate()
            {
                let what = at([
                    "context",
                    "attention output",
                    "FFN activation",
                    "layer output",
                ][i]);
                let e = worst_error(&what, g, c);
                assert!(
                    e <= ACTIVATION_BOUND,
                    "{what}: relative error {e:e} > {ACTIVATION_BOUND:e}"
                );
                worst[i] = worst[i].max(e);
            }
            // Statistics of every stage input; the "pruned" input is the dense one with its tokens
            // rotated by one, so that X_p'X_d is not symmetric and a transposed product shows.
            let inputs: [&[f32]; 4] = [x, &c_ctx, &c_att, &c_int];
            let m: usize = lengths.iter().sum();
            for (s, d) in inputs.iter().enumerate() {
                let n = d.len() / m;
                let mut p = d[n..].to_vec();
                p.extend_from_slice(&d[..n]);
                if c_stats.len() <= s {
                    c_stats.push(cpu.statistics(n).expect("cpu stats"));
                    g_stats.push(gpu.statistics(n).expect("gpu stats"));
                }
                c_stats[s].accumulate(&p, d).expect("cpu accumulate");
                g_stats[s].accumulate(&p, d).expect("gpu accumulate");
            }
            *x = c_out;
        }
        for (s, (c, g)) in c_stats.into_iter().zip(g_stats).enumerate() {
            let (c, g) = (c.finish().expect("cpu"), g.finish().expect("gpu"));
            assert_eq!(c.tokens(), g.tokens());
            let what = format!("layer {layer}, statistics of the {}", stage_names[s]);
            let eg = stats_error(&format!("{what}: X_p'X_p"), g.gram(), c.gram());
            let ec = stats_error(&format!("{what}: X_p'X_d"), g.cross(), c.cross());
            eprintln!("{what}: error {eg:.2e} (X_p'X_p), {ec:.2e} (X_p'X_d)");
            assert!(
                eg <= STATS_BOUND && ec <= STATS_BOUND,
                "{what}: {eg:e}, {ec:e} > {STATS_BOUND:e}"
            );
        }
        eprintln!(
            "layer {layer}: largest relative error context {:.2e}, attention output {:.2e}, \
             FFN activation {:.2e}, output {:.2e}",
            worst[0], worst[1], worst[2], worst[3]
        );
    }
    // The comparison of the dense model with a pruned file (tiles at 50%, f16) on the GPU against
    // the CPU's: every distance within 1e-5 (the cosines are means of thousands of tokens).
    let pruned = tmp.path().join("tile-50.ets");
    let recipe = Recipe {
        method: Method::Tile,
        sparsity: 0.5,
        ..Recipe::default()
    };
    let src = common::real_model("all-minilm-l6-v2");
    convert(&src, &pruned, &ConvertOptions::new(recipe, Dtype::F16))
        .unwrap_or_else(|e| panic!("tile conversion: {e}"));
    let c = compare(&dense, &pruned, "train", &texts).expect("cpu comparison");
    let g = compare_on(&gpu, &dense, &pruned, "train", &texts).expect("gpu comparison");
    let pairs = c.layers.iter().zip(&g.layers);
    for (lc, lg) in pairs {
        let d = (lc.cosine - lg.cosine).abs();
        eprintln!(
            "comparison, layer {}: cosine CPU {:.6}, GPU {:.6}",
            lc.layer, lc.cosine, lg.cosine
        );
        assert!(
            d <= 1e-5,
            "comparison, layer {}: cosines differ by {d:e}",
            lc.layer
        );
    }
    let d = (c.output_cosine - g.output_cosine).abs();
    assert!(
        d <= 1e-5 && g.output_min_cosine.is_finite(),
        "comparison output cosine: CPU {}, GPU {}",
        c.output_cosine,
        g.output_cosine
    );
}

/// Kept tiles of every tile-encoded weight of `a` and `b`: (tiles that agree, tiles).
fn tile_agreement(a: &EtsFile, b: &EtsFile) -> (usize, usize) {
    let (mut agree, mut total) = (0usize, 0usize);
    for ta in a.tensors() {
        let TensorData::Tile(va) = ta.data else {
            continue;
        };
        let tb = b
            .tensor(ta.name)
            .unwrap_or_else(|e| panic!("{}: {e}", ta.name));
        let TensorData::Tile(vb) = tb.data else {
            panic!("{} is tiles in one file only", ta.name)
        };
        assert_eq!(
            (va.grid_rows, va.grid_cols),
            (vb.grid_rows, vb.grid_cols),
            "{}",
            ta.name
        );
        let tiles = va.grid_rows * va.grid_cols;
        let differ: usize = va
            .bitmap
            .iter()
            .zip(vb.bitmap)
            .map(|(x, y)| (x ^ y).count_ones() as usize)
            .sum();
        eprintln!("{}: {differ} of {tiles} tiles differ", ta.name);
        agree += tiles - differ;
        total += tiles;
    }
    (agree, total)
}

/// A whole calibrated conversion (`--sparsity 0.5 --calibrate train.tsv`, the command's default
/// sample and allocation) on the GPU against the CPU one: the GPU repeats its bytes, the kept
/// tiles agree on at least 99% of tiles, and on the 872 SST-2 dev sentences the two files' mean
/// embedding cosines to the dense model are within 0.005. Prints both conversion times.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn gpu_calibrated_conversion_matches_the_cpu_one() {
    let tmp = tempfile::tempdir().expect("dir");
    let src = common::real_model("all-minilm-l6-v2");
    let dense = minilm_dense(tmp.path());
    let recipe = Recipe {
        method: Method::Tile,
        sparsity: 0.5,
        ..Recipe::default()
    };
    let mut opts = ConvertOptions::new(recipe, Dtype::F16);
    opts.calibrate = Some(sst2("train.tsv"));
    opts.calibrate_limit = 2048;
    opts.allocate = Allocate::Sensitivity;
    let run = |name: &str, device: Device| -> (PathBuf, f64) {
        let out = tmp.path().join(name);
        let mut o = opts.clone();
        o.device = device;
        let t0 = Instant::now();
        let report = convert(&src, &out, &o).unwrap_or_else(|e| panic!("{name}: {e}"));
        let s = t0.elapsed().as_secs_f64();
        let d = report.calibration_device.expect("device recorded");
        let phases: Vec<String> = report
            .phases
            .iter()
            .map(|p| format!("{} {:.1} s", p.phase, p.seconds))
            .collect();
        eprintln!("{name}: {s:.1} s on {} ({})", d.name, phases.join(", "));
        (out, s)
    };
    let (gpu_a, gpu_s) = run("gpu-a.ets", Device::Cuda);
    let (gpu_b, _) = run("gpu-b.ets", Device::Cuda);
    let (cpu_file, cpu_s) = run("cpu.ets", Device::Cpu);
    eprintln!(
        "calibrated conversion: CPU {cpu_s:.1} s, GPU {gpu_s:.1} s ({:.1}x)",
        cpu_s / gpu_s
    );
    assert!(
        std::fs::read(&gpu_a).expect("a") == std::fs::read(&gpu_b).expect("b"),
        "two GPU-calibrated conversions gave different bytes"
    );
    let (fa, fc) = (
        EtsFile::open(&gpu_a).expect("gpu"),
        EtsFile::open(&cpu_file).expect("cpu"),
    );
    let (agree, total) = tile_agreement(&fa, &fc);
    let share = agree as f64 / total.max(1) as f64;
    eprintln!(
        "kept tiles agree on {agree} of {total} ({:.3}%)",
        100.0 * share
    );
    assert!(total > 0, "no tile-encoded weights");
    assert!(
        share >= 0.99,
        "kept tiles agree on only {:.3}% of {total}",
        100.0 * share
    );
    let dev = read_sentences(&sst2("dev.tsv"), usize::MAX).expect("dev");
    let c_cpu = compare(&dense, &cpu_file, "dev", &dev).expect("compare cpu");
    let c_gpu = compare(&dense, &gpu_a, "dev", &dev).expect("compare gpu");
    eprintln!(
        "dev ({} sentences): mean cosine to dense, CPU-calibrated {:.5}, GPU-calibrated {:.5}",
        dev.len(),
        c_cpu.output_cosine,
        c_gpu.output_cosine
    );
    assert!(c_cpu.output_cosine.is_finite() && c_gpu.output_cosine.is_finite());
    assert!(
        (c_cpu.output_cosine - c_gpu.output_cosine).abs() <= 0.005,
        "dev mean cosine to dense: CPU-calibrated {:.5}, GPU-calibrated {:.5}",
        c_cpu.output_cosine,
        c_gpu.output_cosine
    );
}
