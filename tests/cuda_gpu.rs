//! GPU correctness checks of the CUDA runtime (tile kernel, cuBLAS paths, one-allocation upload).
//!
//! Every test is ignored by default (`#[ignore = "needs an NVIDIA GPU"]`); scripts/device_check.sh
//! runs them with `--include-ignored`, and without a usable GPU they fail. `et-bench check` runs
//! the full suite; these run a reduced one. Random inputs print their seed; `ETS_TEST_SEED`
//! replays one.

use ets::format::EtsFile;
use ets::runtime::cuda::host::HostTiles;
use ets::runtime::cuda::tuning::{CudaOptions, TUNING_FILE};
use ets::runtime::cuda::upload::DeviceTiles;
use ets::runtime::cuda::{Choice, CudaRuntime, Dispatcher, ElemType, LinearWeight, TileKernel};
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
