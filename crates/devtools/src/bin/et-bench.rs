//! et-bench: device checks and benchmarks of the CUDA runtime.
//!
//! - `et-bench all [--ets FILE]...`: correctness checks, then benchmarks, then a short table last.
//! - `et-bench check [--ets FILE]...`: correctness only (exit code 1 on any failure).
//! - `et-bench bench [--quick]`: benchmarks only.
//! - `et-bench small [--tokens 128,512]`: the small-batch sweep (BERT-base shapes, every tile
//!   kernel and cuBLAS), with the split kernel set beside the others and the seed's times last.
//! - `et-bench upload`: the model upload sweep only (every method and staging config, a few
//!   seconds).
//! - `et-bench resources [--arch sm_90]`: NVRTC compile + `ptxas -v` report (no GPU needed).
//! - `et-bench prepare-minilm --safetensors F --out F`: tile-prune a model's layer-0/1 weights with a
//!   top-norm mask into a small `.ets` for the checks (no GPU needed).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ets::format::{Dtype, EncodedTensor, EtsFile, EtsWriter, WriteOptions};
use ets::runtime::cuda::{self, format_table, nvrtc, upload, CudaError, CudaRuntime, Dispatcher};
use ets_dev::cuda::bench::{self, GemmResult, Inputs, MaskMode};
use ets_dev::cuda::checks::{self, CheckResult};
use ets_dev::cuda::small;
use ets_testkit::linear::top_norm_mask;
use ets_testkit::rng::{test_seed, Rng};

#[derive(Parser)]
#[command(about = "Device checks and benchmarks of the ets CUDA runtime")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Checks, then benchmarks.
    All {
        /// Extra .ets files whose 2-D weights are checked.
        #[arg(long)]
        ets: Vec<PathBuf>,
        /// Smaller benchmark sweep.
        #[arg(long)]
        quick: bool,
    },
    /// Correctness checks.
    Check {
        /// Extra .ets files whose 2-D weights are checked.
        #[arg(long)]
        ets: Vec<PathBuf>,
    },
    /// Benchmarks.
    Bench {
        /// Smaller sweep.
        #[arg(long)]
        quick: bool,
    },
    /// The small-batch sweep: BERT-base shapes at few tokens, a table of the split kernel
    /// against the other tile kernels, cuBLAS and the seed's recorded times last.
    Small {
        /// Token counts (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "128")]
        tokens: Vec<usize>,
    },
    /// The model upload sweep only (methods and staging configs, each upload verified).
    Upload,
    /// One benchmark configuration (for profilers).
    One {
        /// Tokens.
        #[arg(long, default_value_t = 16384)]
        tokens: usize,
        /// In features.
        #[arg(long, default_value_t = 768)]
        k: usize,
        /// Out features.
        #[arg(long, default_value_t = 3072)]
        n: usize,
        /// Tile density.
        #[arg(long, default_value_t = 1.0)]
        density: f64,
        /// Tile height.
        #[arg(long, default_value_t = 16)]
        tile: usize,
        /// Tile width (default: the height).
        #[arg(long)]
        tw: Option<usize>,
        /// Grouped masks (each 128-feature group keeps the same tile columns).
        #[arg(long)]
        grouped: bool,
        /// Time only this tile kernel (e.g. rs, walk; default: the automatic choice and every
        /// other usable kernel).
        #[arg(long)]
        kernel: Option<String>,
    },
    /// NVRTC compile and ptxas resource report.
    Resources {
        /// Target architecture.
        #[arg(long, default_value = "sm_90")]
        arch: String,
    },
    /// Tile-prune layer 0 and 1 of a safetensors BERT into a small .ets (CPU only).
    PrepareMinilm {
        /// Input model.safetensors.
        #[arg(long)]
        safetensors: PathBuf,
        /// Output .ets.
        #[arg(long)]
        out: PathBuf,
        /// Tile density to keep.
        #[arg(long, default_value_t = 0.5)]
        density: f64,
        /// Tile edge.
        #[arg(long, default_value_t = 16)]
        tile: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::All { ets, quick } => open().and_then(|rt| {
            let ok = run_checks(&rt, &ets)?;
            run_bench(&rt, quick)?;
            Ok(ok)
        }),
        Cmd::Check { ets } => open().and_then(|rt| run_checks(&rt, &ets)),
        Cmd::Bench { quick } => open().and_then(|rt| run_bench(&rt, quick).map(|_| true)),
        Cmd::Small { tokens } => open().and_then(|rt| {
            let mut rng = Rng::new(test_seed("et-bench small"));
            let results = small::run(&rt, &mut rng, &tokens, &|r| print_result(r, 4000.0))?;
            print!("{}", small::table(&results));
            Ok(true)
        }),
        Cmd::Upload => open().and_then(|rt| {
            let summary = upload_bench(&rt, &mut Rng::new(test_seed("et-bench upload")))?;
            println!("{summary}");
            Ok(true)
        }),
        Cmd::One {
            tokens,
            k,
            n,
            density,
            tile,
            tw,
            grouped,
            kernel,
        } => open().and_then(|rt| {
            let mut rng = Rng::new(test_seed("et-bench one"));
            let mut inp = Inputs::new(&rt, &mut rng, tokens, n, k)?;
            let mode = if grouped {
                MaskMode::Grouped
            } else {
                MaskMode::Random
            };
            let shape = (tile, tw.unwrap_or(tile));
            let r = bench::bench_one(
                &rt,
                &mut rng,
                &mut inp,
                tokens,
                shape,
                density,
                mode,
                kernel.as_deref(),
            )?;
            print_result(&r, 4000.0);
            print_kernel_loads(&rt);
            Ok(true)
        }),
        Cmd::Resources { arch } => resources(&arch).map(|_| true),
        Cmd::PrepareMinilm {
            safetensors,
            out,
            density,
            tile,
        } => prepare(&safetensors, &out, density, tile).map(|_| true),
    };
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("et-bench: {e}");
            ExitCode::from(2)
        }
    }
}

fn open() -> Result<CudaRuntime, CudaError> {
    let rt = CudaRuntime::new(0)?;
    println!(
        "device: {} ({}, {} SMs), NVRTC {:?}",
        rt.name(),
        rt.arch(),
        rt.sm_count(),
        nvrtc::nvrtc_version()?
    );
    Ok(rt)
}

/// How each kernel file this process used got to the device: compiled or from the disk cache,
/// and how long the driver took to load it (the CUBIN, or the PTX if the CUBIN was refused).
fn print_kernel_loads(rt: &CudaRuntime) {
    for r in rt.kernel_reports() {
        println!(
            "M kernel file {} ({}): {} {:.0} ms, loaded from {} in {:.0} ms",
            r.file,
            r.arch,
            if r.from_cache { "cache" } else { "compiled" },
            r.millis,
            if r.loaded_from_ptx { "PTX" } else { "CUBIN" },
            r.load_millis
        );
    }
}

fn resources(arch: &str) -> Result<(), CudaError> {
    for r in cuda::compile_all_kernels(arch)? {
        println!(
            "{} for {arch}: {} entries, {} bytes PTX, {} bytes CUBIN, {:.0} ms{}",
            r.file,
            r.entry_points.len(),
            r.ptx_bytes,
            r.cubin.len(),
            r.millis,
            if r.from_cache { " (cache)" } else { "" }
        );
        match nvrtc::ptxas_resources(&r) {
            Ok(s) => print!("{s}"),
            Err(e) => println!("  (no ptxas report: {e})"),
        }
    }
    print_smem_table();
    Ok(())
}

/// Dynamic shared memory per CTA of each tile kernel, from the host's layout functions (what the
/// launches request; ptxas reports no dynamic shared memory).
fn print_smem_table() {
    use cuda::tile::{mma, rs, tma, walk, wgmma};
    use cuda::{ElemType, TileShape};
    // Hopper's opt-in limit per CTA (227 KiB); the row walk takes the largest token block that fits.
    const LIMIT: usize = 232_448;
    let walk_at = |k: usize, th: usize, tw: usize| {
        let v = TileShape::new(768, k, th, tw, 0, ElemType::F16);
        [128, 64, 32]
            .into_iter()
            .map(|bm| (bm, walk::walk_smem_bytes(bm, &v)))
            .find(|&(_, b)| b <= LIMIT)
            .map_or("-".to_string(), |(bm, b)| format!("{b} (bm{bm})"))
    };
    println!("== dynamic shared memory per CTA, bytes (host layout; Hopper limit {LIMIT})");
    println!(
        "{:<7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>17} {:>17}",
        "tile", "mma", "wg64", "wg128", "tma128", "tma256", "rs", "walk K=768", "walk K=3072"
    );
    for (th, tw) in [(16, 16), (32, 32), (64, 64), (64, 16), (128, 16)] {
        let wg64 = if th <= 64 {
            wgmma::wg_smem_bytes(64, th).to_string()
        } else {
            "-".into()
        };
        println!(
            "{:<7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>17} {:>17}",
            format!("{th}x{tw}"),
            mma::mma_smem_bytes(th),
            wg64,
            wgmma::wg_smem_bytes(128, th),
            tma::tma_smem_bytes(128, th),
            tma::tma_smem_bytes(256, th),
            rs::rs_smem_bytes(),
            walk_at(768, th, tw),
            walk_at(3072, th, tw)
        );
    }
}

fn print_checks(results: &[CheckResult]) -> usize {
    let mut fails = 0;
    for c in results {
        let ok = c.pass();
        fails += usize::from(!ok);
        println!(
            "{} max_rel {:.2e} l2_rel {:.2e} nonfinite {}  {}",
            if ok { "PASS" } else { "FAIL" },
            c.err.max_rel,
            c.err.l2_rel,
            c.err.non_finite,
            c.name
        );
    }
    fails
}

fn run_checks(rt: &CudaRuntime, extra: &[PathBuf]) -> Result<bool, CudaError> {
    let mut rng = Rng::new(test_seed("et-bench"));
    println!(
        "== correctness (tolerance max_rel < {:.0e}, NaN never passes)",
        checks::TOLERANCE
    );
    let mut all = checks::synthetic_suite(rt, &mut rng)?;
    let dir = std::env::temp_dir().join(format!("et-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| CudaError::Invalid(format!("{}: {e}", dir.display())))?;
    let path = dir.join("check.ets");
    checks::write_check_file(&path, &mut rng)?;
    let file = EtsFile::open(&path).map_err(|e| CudaError::Invalid(e.to_string()))?;
    all.extend(checks::file_suite(rt, &mut rng, &file, 257)?);
    for p in extra {
        match EtsFile::open(p) {
            Ok(f) => all.extend(checks::file_suite(rt, &mut rng, &f, 384)?),
            Err(e) => println!("SKIP {}: {e}", p.display()),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let fails = print_checks(&all);
    let worst = all.iter().map(|c| c.err.max_rel).fold(0.0, f64::max);
    println!(
        "checks: {} run, {fails} failed, worst max_rel {worst:.2e}",
        all.len()
    );
    print_kernel_loads(rt);
    Ok(fails == 0)
}

/// Upload sweep on a BERT-base-sized synthetic model (tile 16x16, density 0.5, about 85 MB):
/// every method and staging config, warm mapping, fresh mapping and fresh runtime, each upload
/// checked byte for byte against the file. Prints one line per variant; returns a summary line.
fn upload_bench(rt: &CudaRuntime, rng: &mut Rng) -> Result<String, CudaError> {
    let dir = std::env::temp_dir().join(format!("et-bench-up-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| CudaError::Invalid(e.to_string()))?;
    let path = dir.join("upload.ets");
    let r = write_upload_model(&path, rng)
        .and_then(|_| ets_dev::cuda::upload_sweep::run(rt, rng, &path));
    let _ = std::fs::remove_dir_all(&dir);
    r
}

fn write_upload_model(path: &std::path::Path, rng: &mut Rng) -> Result<(), CudaError> {
    let fe = |e: ets::format::FormatError| CudaError::Invalid(e.to_string());
    let mut w = EtsWriter::create(path, WriteOptions { overwrite: true }).map_err(fe)?;
    let base = rng.symmetric_vec(3072 * 768, 0.05);
    for layer in 0..12 {
        for (i, (n, k)) in [(2304usize, 768usize), (768, 768), (3072, 768), (768, 3072)]
            .iter()
            .enumerate()
        {
            let keep = rng.mask(n.div_ceil(16) * k.div_ceil(16), 0.5);
            let enc = EncodedTensor::tile(*n, *k, &base[..n * k], 16, 16, &keep, Dtype::F16)
                .map_err(fe)?;
            w.add_tensor(&format!("up.{layer}.{i}.weight"), &enc)
                .map_err(fe)?;
        }
    }
    w.finish(checks_config(), serde_json::json!({}), Default::default())
        .map_err(fe)
}

fn checks_config() -> ets::format::ModelConfig {
    ets::format::ModelConfig {
        architecture: "bert".into(),
        num_layers: 12,
        hidden_size: 768,
        num_heads: 12,
        head_dim: 64,
        heads_per_layer: vec![12; 12],
        intermediate_size: 3072,
        vocab_size: 1,
        max_position_embeddings: 1,
        type_vocab_size: 1,
        layer_norm_eps: 1e-12,
        activation: ets::format::Activation::Gelu,
        num_labels: None,
    }
}

fn run_bench(rt: &CudaRuntime, quick: bool) -> Result<(), CudaError> {
    let mut rng = Rng::new(test_seed("et-bench"));
    println!("== ceilings");
    for th in [16usize, 32, 64] {
        let name = format!("tile_gemm_f16_{th}x{th}");
        let smem = cuda::tile::mma::mma_smem_bytes(th);
        let occ = rt.occupancy(&name, 256, smem as u32)?;
        println!("{name}: {occ} CTAs of 256 threads per SM with {smem} B shared memory");
        if rt.arch() == "sm_90" {
            for bn in [64usize, 128] {
                let name = format!("tile_wg_f16_{th}x{th}_bn{bn}");
                let smem = cuda::tile::wgmma::wg_smem_bytes(bn, th);
                let occ = rt.occupancy(&name, 256, smem as u32)?;
                println!("{name}: {occ} CTAs of 256 threads per SM with {smem} B shared memory");
            }
        }
    }
    let d2d = bench::d2d_gbps(rt, 1 << 30)?;
    let tflops = bench::cublas_tflops(rt, &mut rng, 8192)?;
    println!(
        "device-to-device copy: {d2d:.0} GB/s (read+write); cuBLAS f16 8192^3: {tflops:.0} TFLOP/s"
    );
    let up = upload_bench(rt, &mut rng)?;
    println!("{up}");
    let tokens: &[usize] = if quick {
        &[128, 4096]
    } else {
        &[128, 4096, 16384]
    };
    let shapes = [(2304usize, 768usize), (768, 768), (3072, 768), (768, 3072)];
    let mut results: Vec<GemmResult> = Vec::new();
    println!("== gemm sweep (f16, tile ms vs cuBLAS dense ms, ratio = cuBLAS/tile; auto kernel first, then the others)");
    for &(n, k) in &shapes {
        let mut inp = Inputs::new(rt, &mut rng, *tokens.last().unwrap_or(&4096), n, k)?;
        for &t in tokens {
            for set in SETS {
                if t < 4096 && !set.small_m {
                    continue;
                }
                for &d in set.densities {
                    let r =
                        bench::bench_one(rt, &mut rng, &mut inp, t, set.shape, d, set.mode, None)?;
                    print_result(&r, d2d);
                    results.push(r);
                }
            }
        }
    }
    dispatch_demo(rt, &mut rng)?;
    summary(&results, d2d, &up);
    print!("{}", small::table(&results));
    Ok(())
}

/// One family of benchmark masks.
struct Set {
    label: &'static str,
    shape: (usize, usize),
    mode: MaskMode,
    densities: &'static [f64],
    small_m: bool,
}

const SETS: &[Set] = &[
    Set {
        label: "16x16 random",
        shape: (16, 16),
        mode: MaskMode::Random,
        densities: &[1.0, 0.5, 0.3, 0.2, 0.1],
        small_m: true,
    },
    Set {
        label: "16x16 balanced",
        shape: (16, 16),
        mode: MaskMode::Balanced,
        densities: &[0.5, 0.2, 0.1],
        small_m: false,
    },
    Set {
        label: "16x16 grouped",
        shape: (16, 16),
        mode: MaskMode::Grouped,
        densities: &[0.5, 0.2, 0.1],
        small_m: false,
    },
    Set {
        label: "64x64 random",
        shape: (64, 64),
        mode: MaskMode::Random,
        densities: &[1.0, 0.5, 0.2, 0.1],
        small_m: true,
    },
    Set {
        label: "64x64 grouped",
        shape: (64, 64),
        mode: MaskMode::Grouped,
        densities: &[0.5, 0.2, 0.1],
        small_m: false,
    },
    Set {
        label: "32x32 random",
        shape: (32, 32),
        mode: MaskMode::Random,
        densities: &[0.5, 0.2, 0.1],
        small_m: false,
    },
    Set {
        label: "128x16 random",
        shape: (128, 16),
        mode: MaskMode::Random,
        densities: &[0.5, 0.2, 0.1],
        small_m: false,
    },
    Set {
        label: "64x16 random",
        shape: (64, 16),
        mode: MaskMode::Random,
        densities: &[0.5, 0.2, 0.1],
        small_m: false,
    },
];

fn print_result(r: &GemmResult, d2d: f64) {
    let others: Vec<String> = r
        .per_kernel
        .iter()
        .map(|(k, ms)| format!("{k:?} {ms:.4}"))
        .collect();
    println!(
        "M{:>6} {:>4}->{:<4} tile{}x{} {:?} d{:.2}: tile {:.4} ms ({:?}), cublas {:.4} ms, ratio {:.2}x, tile {:.0} GB/s ({:.0}% of copy) [{}]",
        r.tokens, r.k, r.n, r.tile, r.tw, r.mode, r.density, r.tile_ms, r.kernel, r.cublas_ms, r.ratio(), r.tile_gbps(),
        100.0 * r.tile_gbps() / d2d, others.join(", ")
    );
}

fn dispatch_demo(rt: &CudaRuntime, rng: &mut Rng) -> Result<(), CudaError> {
    println!("== dispatch table (one layer, tiles 16x16, random masks, 4096 tokens)");
    let d = Dispatcher::new();
    let mut keep_alive = Vec::new();
    for (name, n, k, dens) in [
        ("q.weight", 768usize, 768usize, 0.5),
        ("ffn_in.weight", 3072, 768, 0.2),
        ("ffn_out.weight", 768, 3072, 0.1),
        ("qkv.weight", 2304, 768, 1.0),
    ] {
        let w = rng.symmetric_vec(n * k, 0.05);
        let keep = top_norm_mask(&w, n, k, 16, 16, dens);
        let h = ets::runtime::cuda::host::HostTiles::from_dense(
            &w,
            n,
            k,
            16,
            16,
            &keep,
            cuda::ElemType::F16,
        )
        .map_err(CudaError::Invalid)?;
        let tiles = upload::DeviceTiles::upload(rt, &h)?;
        // SAFETY: tiles, the upload the view points into, is alive (kept below).
        unsafe { d.decide(rt, name, &cuda::LinearWeight::Tile(tiles.view()), 4096)? };
        keep_alive.push(tiles);
    }
    print!("{}", format_table(&d.table()));
    Ok(())
}

fn summary(results: &[GemmResult], d2d: f64, up: &str) {
    println!("== SUMMARY (speed vs cuBLAS dense f16 = cuBLAS ms / tile ms of the fastest tile kernel, which the dispatcher runs when above 1x; 'tma' / 'rs' / 'walk' / 'wgmma' / 'mma' = each kernel family at the largest M; 'auto' = the kernel auto_kernel picks without measuring, at the largest M)");
    println!("{up}");
    println!(
        "{:<10} {:<15} {:>5} {:>7} {:>7} {:>7} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>5} {:>6} {:>6}",
        "shape",
        "mask",
        "dens",
        "M=128",
        "M=4096",
        "M=16384",
        "tma",
        "rs",
        "walk",
        "wgmma",
        "mma",
        "auto",
        "goal",
        "fl4096",
        "floor"
    );
    let shapes = [(768usize, 2304usize), (768, 768), (768, 3072), (3072, 768)];
    let big = results.iter().map(|r| r.tokens).max().unwrap_or(0);
    for &(k, n) in &shapes {
        for set in SETS {
            for &d in set.densities {
                let find = |t: usize| {
                    results.iter().find(|r| {
                        r.k == k
                            && r.n == n
                            && r.tokens == t
                            && (r.tile, r.tw) == set.shape
                            && r.mode == set.mode
                            && (r.density - d).abs() < 0.05
                    })
                };
                let fmt =
                    |v: Option<f64>| v.map(|x| format!("{x:.2}x")).unwrap_or_else(|| "-".into());
                let big_r = find(big);
                let best = |r: &GemmResult| {
                    r.per_kernel
                        .iter()
                        .map(|p| p.1)
                        .fold(None, |a: Option<f64>, b| Some(a.map_or(b, |a| a.min(b))))
                        .map(|ms| r.cublas_ms / ms)
                };
                let family = |pick: &dyn Fn(cuda::TileKernel) -> bool| {
                    big_r.and_then(|r| {
                        r.per_kernel
                            .iter()
                            .filter(|p| pick(p.0))
                            .map(|p| p.1)
                            .fold(None, |a: Option<f64>, b| Some(a.map_or(b, |a| a.min(b))))
                            .map(|ms| r.cublas_ms / ms)
                    })
                };
                use cuda::TileKernel as K;
                // The density the masks reached (a group keeps whole tile columns: at K = 768 in
                // 64-column tiles 0.2 becomes 2 of 12 columns, 0.17), and the goal of that density.
                let dens = big_r.or_else(|| find(4096)).map_or(d, |r| r.density);
                let g = bench::goal(dens)
                    .map(|g| format!("{g:.1}x"))
                    .unwrap_or_else(|| "-".into());
                println!(
                    "{:<10} {:<15} {:>5.2} {:>7} {:>7} {:>7} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>5} {:>6} {:>6}",
                    format!("{k}->{n}"),
                    set.label,
                    dens,
                    fmt(find(128).and_then(best)),
                    fmt(find(4096).and_then(best)),
                    fmt(big_r.and_then(best)),
                    fmt(family(&|k| matches!(k, K::Tma128 | K::Tma256))),
                    fmt(family(&|k| k == K::Rs)),
                    fmt(family(&|k| k == K::Walk)),
                    fmt(family(&|k| matches!(k, K::Wg64 | K::Wg128))),
                    fmt(family(&|k| k == K::Mma)),
                    fmt(big_r.map(|r| r.ratio())),
                    g,
                    fmt(find(4096).map(|r| r.floor_ratio(d2d))),
                    fmt(big_r.map(|r| r.floor_ratio(d2d)))
                );
            }
        }
    }
    let bw: Vec<String> = results
        .iter()
        .filter(|r| {
            r.tokens == 128
                && r.tile == 16
                && r.mode == MaskMode::Random
                && (r.density - 0.5).abs() < 0.02
        })
        .map(|r| format!("{}->{}: {:.0}%", r.k, r.n, 100.0 * r.tile_gbps() / d2d))
        .collect();
    println!(
        "M=128 tile-kernel bandwidth vs copy ceiling {d2d:.0} GB/s at d0.5: {}",
        bw.join(", ")
    );
    println!(
        "floor, fl4096 = the memory floor at M={big} and M=4096: cuBLAS ms over the time to read the kept tiles and the \
         columns of X some kept tile multiplies, and write Y, once each at the copy rate {d2d:.0} GB/s: \
         the best ratio any kernel of that weight could reach (fusion with the neighbouring layers aside)"
    );
}

fn prepare(src: &PathBuf, out: &PathBuf, density: f64, tile: usize) -> Result<(), CudaError> {
    let bytes =
        std::fs::read(src).map_err(|e| CudaError::Invalid(format!("{}: {e}", src.display())))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| CudaError::Invalid(format!("{}: {e}", src.display())))?;
    let fe = |e: ets::format::FormatError| CudaError::Invalid(e.to_string());
    let mut w = EtsWriter::create(out, WriteOptions { overwrite: true }).map_err(fe)?;
    let mut names: Vec<String> = st
        .names()
        .into_iter()
        .filter(|n| n.contains("layer.0.") || n.contains("layer.1."))
        .cloned()
        .collect();
    names.sort();
    let mut count = 0;
    for name in names {
        let t = st
            .tensor(&name)
            .map_err(|e| CudaError::Invalid(format!("{name}: {e}")))?;
        if t.dtype() != safetensors::Dtype::F32 {
            continue;
        }
        let data: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let shape = t.shape().to_vec();
        let enc = match shape.as_slice() {
            [n, k] if name.ends_with(".weight") => {
                let keep = top_norm_mask(&data, *n, *k, tile, tile, density);
                count += 1;
                EncodedTensor::tile(*n, *k, &data, tile, tile, &keep, Dtype::F16)
            }
            [n] if name.ends_with(".bias") => {
                EncodedTensor::dense(vec![*n as u64], Dtype::F32, &data)
            }
            _ => continue,
        }
        .map_err(fe)?;
        w.add_tensor(&name, &enc).map_err(fe)?;
    }
    w.finish(
        checks_config(),
        serde_json::json!({"prune": "top-norm tiles", "density": density}),
        Default::default(),
    )
    .map_err(fe)?;
    println!("wrote {} ({count} tile-pruned weights)", out.display());
    Ok(())
}
