//! GPU correctness checks of the CUDA runtime (tile kernel, cuBLAS paths, one-allocation upload).
//!
//! Skips with a notice when no CUDA driver/GPU/NVRTC is usable, unless ETS_REQUIRE_GPU=1, where it
//! fails. `et-bench check` (run by scripts/device_check.sh) runs the full suite; this test runs a
//! reduced one so that `cargo test` on a GPU machine exercises the device paths too.

use ets::format::EtsFile;
use ets::runtime::cuda::checks::{self, CheckPath};
use ets::runtime::cuda::host::Rng;
use ets::runtime::cuda::{CudaRuntime, ElemType};

fn runtime_or_skip() -> Option<CudaRuntime> {
    match CudaRuntime::new(0) {
        Ok(rt) => Some(rt),
        Err(e) => {
            if std::env::var("ETS_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("ETS_REQUIRE_GPU=1 but the CUDA runtime is unusable: {e}");
            }
            eprintln!("skipping: no usable GPU ({e})");
            None
        }
    }
}

#[test]
fn tile_kernel_and_dense_paths_match_the_cpu_reference() {
    let Some(rt) = runtime_or_skip() else { return };
    let mut rng = Rng::fresh();
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
