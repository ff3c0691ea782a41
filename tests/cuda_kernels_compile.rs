//! Compiles every embedded kernel with NVRTC for sm_80 and sm_90 (no GPU needed).
//!
//! An ignored test: it needs NVRTC, which `scripts/install_nvrtc.sh` installs with the CUDA headers
//! from wheels; a run that includes ignored tests fails here when NVRTC cannot be loaded.

use ets::runtime::cuda::{compile_all_kernels, nvrtc};

#[test]
#[ignore = "needs NVRTC (scripts/install_nvrtc.sh)"]
fn every_kernel_compiles_for_sm80_and_sm90() {
    if let Err(e) = nvrtc::probe_nvrtc() {
        panic!("NVRTC is unusable (run scripts/install_nvrtc.sh): {e}");
    }
    // A private cache so the test really compiles (and checks that a second call hits the cache).
    let dir = tempfile::tempdir().expect("temp dir");
    std::env::set_var("ETS_KERNEL_CACHE", dir.path());
    for arch in ["sm_80", "sm_90"] {
        let reports = compile_all_kernels(arch).unwrap_or_else(|e| panic!("{arch}: {e}"));
        assert_eq!(reports.len(), nvrtc::KERNELS.len());
        for r in &reports {
            assert!(
                !r.from_cache,
                "{}: first compile came from the cache",
                r.file
            );
            assert!(!r.entry_points.is_empty(), "{}: no entry points", r.file);
            let target = format!(".target {}", arch);
            assert!(r.ptx.contains(&target), "{}: PTX lacks {target}", r.file);
            // Machine code for the real architecture, loaded as it is (no PTX translation).
            assert!(
                r.cubin.starts_with(b"\x7fELF"),
                "{}: the CUBIN is not an ELF image",
                r.file
            );
            eprintln!(
                "{arch} {}: {} entry points, {} bytes PTX, {:.0} ms",
                r.file,
                r.entry_points.len(),
                r.ptx_bytes,
                r.millis
            );
        }
        // Calibration on the GPU: every kernel its backend launches.
        let calib = reports
            .iter()
            .find(|r| r.file == "calib.cu")
            .expect("calib.cu compiled");
        for name in [
            "calib_bias_act_f32",
            "calib_bias_residual_ln_f32",
            "calib_attention_f32",
            "calib_add_f64",
            "calib_fill_f32",
        ] {
            assert!(
                calib.entry_points.iter().any(|e| e == name),
                "missing entry {name}"
            );
        }
        let tile = reports
            .iter()
            .find(|r| r.file == "tile_gemm.cu")
            .expect("tile_gemm.cu compiled");
        for name in [
            "tile_gemm_f16_16x16",
            "tile_gemm_f16_32x32",
            "tile_gemm_f16_64x64",
            "tile_gemm_bf16_16x16",
        ] {
            assert!(
                tile.entry_points.iter().any(|e| e == name),
                "missing entry {name}"
            );
        }
        assert!(
            tile.ptx.contains("mma.sync.aligned.m16n8k16"),
            "tile kernel does not use mma.sync"
        );
        // The row-walk kernels: every tile shape and token block of the mma.sync one, and the
        // wgmma one (real wgmma on sm_90a; built for another target it compiles to a trap).
        let walk = reports
            .iter()
            .find(|r| r.file == "tile_walk.cu")
            .expect("tile_walk.cu compiled");
        for e in ["f16", "bf16"] {
            for shape in ["16x16", "32x32", "64x64", "64x16", "128x16"] {
                for bm in [128, 64, 32] {
                    let name = format!("tile_walk_{e}_{shape}_bm{bm}");
                    assert!(walk.entry_points.contains(&name), "missing entry {name}");
                }
            }
        }
        assert!(walk.ptx.contains("ldmatrix") && walk.ptx.contains("mbarrier"));
        // The TMA-fed union kernel: every tile shape; on sm_90a it copies with TMA and multiplies
        // with wgmma.
        let tma = reports
            .iter()
            .find(|r| r.file == "tile_tma.cu")
            .expect("tile_tma.cu compiled");
        for e in ["f16", "bf16"] {
            for shape in ["16x16", "32x32", "64x64", "64x16", "128x16"] {
                for bm in [128, 256] {
                    let name = format!("tile_tma_{e}_{shape}_bm{bm}");
                    assert!(tma.entry_points.contains(&name), "missing entry {name}");
                }
            }
        }
        if tma.arch == "sm_90a" {
            assert!(
                tma.ptx.contains("cp.async.bulk.tensor.3d") && tma.ptx.contains("wgmma.mma_async"),
                "the sm_90a TMA kernel does not copy with TMA or multiply with wgmma"
            );
            // A stage of a group's 16-column tiles in one 4-D box (weights with uniform rows).
            assert!(
                tma.ptx.contains("cp.async.bulk.tensor.4d"),
                "the sm_90a TMA kernel lacks the one-box weight stage"
            );
            no_serialised_mma_or_spills(tma, "tile_tma_");
        }
        // The register-operand kernel: bulk copies, tensor copies of weight stages, stmatrix and
        // wgmma on sm_90a.
        let rs = reports
            .iter()
            .find(|r| r.file == "tile_rs.cu")
            .expect("tile_rs.cu compiled");
        for e in ["f16", "bf16"] {
            for shape in ["16x16", "64x16", "128x16"] {
                let name = format!("tile_rs_{e}_{shape}_bm192");
                assert!(rs.entry_points.contains(&name), "missing entry {name}");
            }
        }
        if rs.arch == "sm_90a" {
            assert!(
                rs.ptx.contains("cp.async.bulk.shared")
                    && rs.ptx.contains("cp.async.bulk.tensor.3d")
                    && rs.ptx.contains("stmatrix"),
                "the sm_90a register-operand kernel lacks bulk copies, the one-box weight stage \
                 or stmatrix"
            );
            // Its tile size is chosen so the accumulators and two sets of A fragments fit in the
            // registers.
            no_serialised_mma_or_spills(rs, "tile_rs_");
        }
        // The split kernel for small token counts: every tile shape, mma.sync from registers
        // loaded straight from global memory, its reduction's atomics; no spills.
        let sk = reports
            .iter()
            .find(|r| r.file == "tile_sk.cu")
            .expect("tile_sk.cu compiled");
        for e in ["f16", "bf16"] {
            for shape in ["16x16", "32x32", "64x64", "64x16", "128x16"] {
                let name = format!("tile_sk_{e}_{shape}");
                assert!(sk.entry_points.contains(&name), "missing entry {name}");
            }
        }
        assert!(
            sk.ptx.contains("mma.sync.aligned.m16n8k16") && sk.ptx.contains("atom.global.add"),
            "the split kernel lacks mma.sync or its counter atomics"
        );
        no_serialised_mma_or_spills(sk, "tile_sk_");
        let again = compile_all_kernels(arch).unwrap_or_else(|e| panic!("{arch}: {e}"));
        assert!(
            again.iter().all(|r| r.from_cache),
            "second compile missed the cache"
        );
        for (a, b) in reports.iter().zip(&again) {
            assert!(a.cubin == b.cubin, "{}: cached CUBIN differs", a.file);
        }
    }
    // A damaged cache entry is compiled again, not loaded.
    let aux = nvrtc::KERNELS
        .iter()
        .find(|(f, _)| *f == "gemm_aux.cu")
        .expect("gemm_aux.cu embedded");
    let mut damaged = 0;
    for entry in std::fs::read_dir(dir.path()).expect("cache dir").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("gemm_aux-sm_80") && name.ends_with(".cubin") {
            std::fs::write(entry.path(), b"not an ELF image").expect("damage the entry");
            damaged += 1;
        }
    }
    assert_eq!(damaged, 1, "one cached CUBIN of gemm_aux.cu for sm_80");
    let redone = nvrtc::compile_kernel(aux.0, aux.1, "sm_80").expect("recompile");
    assert!(!redone.from_cache && redone.cubin.starts_with(b"\x7fELF"));
    compile_errors_name_the_file_and_carry_the_log();
}

/// ptxas must neither serialise a file's wgmma for lack of registers nor spill in the entries
/// named `prefix*` (checked where ptxas is installed, as CI does).
fn no_serialised_mma_or_spills(report: &nvrtc::KernelReport, prefix: &str) {
    if std::env::var_os("ETS_PTXAS").is_none() {
        return;
    }
    let res =
        nvrtc::ptxas_resources(report).unwrap_or_else(|e| panic!("ptxas on {}: {e}", report.file));
    eprintln!("{res}");
    assert!(
        !res.contains("serialized"),
        "{}: wgmma serialised:\n{res}",
        report.file
    );
    for line in res.lines().filter(|l| l.starts_with(prefix)) {
        assert!(line.contains(" 0 bytes spill stores"), "spills: {line}");
    }
}

/// Called from the test above: the kernel cache directory is set through the environment, so the
/// NVRTC tests share one test function (no concurrent environment changes).
fn compile_errors_name_the_file_and_carry_the_log() {
    let err = nvrtc::compile_kernel(
        "broken.cu",
        "extern \"C\" __global__ void k() { this is not C++; }",
        "sm_80",
    )
    .expect_err("broken source must fail");
    let msg = err.to_string();
    assert!(msg.contains("broken.cu"), "{msg}");
    assert!(msg.contains("--gpu-architecture=sm_80"), "{msg}");
    assert!(msg.to_lowercase().contains("error"), "{msg}");
}
