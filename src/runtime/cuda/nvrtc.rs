//! Compiling the embedded kernels with NVRTC, with an on-disk cache.
//!
//! Kernels are compiled for the device's real architecture (`sm_XX`): NVRTC returns the machine
//! code (CUBIN), which the runtime loads as it is, and the PTX it came from (for entry points and
//! the resource report). Both are cached, so a later start neither compiles nor leaves the driver
//! to translate PTX (6-20 s per kernel file on a GPU machine whose driver cache is empty). The
//! cache key covers the source, the options, the architecture and the NVRTC version, so a changed
//! kernel or toolkit never reuses a stale entry.

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::time::Instant;

use cudarc::nvrtc::{result, sys};
use sha2::{Digest, Sha256};

use super::error::CudaError;

/// The kernel sources built into the library: (file name, source). The tile kernels share
/// `kernels/common.cuh`, the union kernels `kernels/union.cuh`, the warpgroup-MMA ones
/// `kernels/wgmma.cuh` and the TMA-fed ones `kernels/tma.cuh`, prepended here because embedded
/// sources have no include path at run time.
pub const KERNELS: &[(&str, &str)] = &[
    (
        "tile_gemm.cu",
        concat!(
            include_str!("../../../kernels/common.cuh"),
            include_str!("../../../kernels/union.cuh"),
            include_str!("../../../kernels/tile_gemm.cu")
        ),
    ),
    ("gemm_aux.cu", include_str!("../../../kernels/gemm_aux.cu")),
    ("encoder.cu", include_str!("../../../kernels/encoder.cu")),
    ("calib.cu", include_str!("../../../kernels/calib.cu")),
    (
        "attention.cu",
        include_str!("../../../kernels/attention.cu"),
    ),
    (
        "tile_wgmma.cu",
        concat!(
            include_str!("../../../kernels/common.cuh"),
            include_str!("../../../kernels/union.cuh"),
            include_str!("../../../kernels/wgmma.cuh"),
            include_str!("../../../kernels/tile_wgmma.cu")
        ),
    ),
    (
        "tile_walk.cu",
        concat!(
            include_str!("../../../kernels/common.cuh"),
            include_str!("../../../kernels/tile_walk.cu")
        ),
    ),
    (
        "tile_sk.cu",
        concat!(
            include_str!("../../../kernels/common.cuh"),
            include_str!("../../../kernels/tile_sk.cu")
        ),
    ),
    (
        "tile_tma.cu",
        concat!(
            include_str!("../../../kernels/common.cuh"),
            include_str!("../../../kernels/union.cuh"),
            include_str!("../../../kernels/wgmma.cuh"),
            include_str!("../../../kernels/tma.cuh"),
            include_str!("../../../kernels/tile_tma.cu")
        ),
    ),
    (
        "tile_rs.cu",
        concat!(
            include_str!("../../../kernels/common.cuh"),
            include_str!("../../../kernels/union.cuh"),
            include_str!("../../../kernels/wgmma.cuh"),
            include_str!("../../../kernels/tma.cuh"),
            include_str!("../../../kernels/tile_rs.cu")
        ),
    ),
];

/// The architecture a kernel file is compiled for on a device of `arch`: the warpgroup-MMA files
/// need the architecture-specific target (`sm_90a`) on Hopper; everything else uses `arch`.
pub fn arch_for(file: &str, arch: &str) -> String {
    let wgmma = matches!(file, "tile_wgmma.cu" | "tile_tma.cu" | "tile_rs.cu");
    if wgmma && arch == "sm_90" {
        "sm_90a".to_string()
    } else {
        arch.to_string()
    }
}

/// What compiling one kernel file produced.
#[derive(Debug, Clone)]
pub struct KernelReport {
    /// Kernel file name (under `kernels/`).
    pub file: String,
    /// Target architecture, such as `sm_90`.
    pub arch: String,
    /// NVRTC version as (major, minor).
    pub nvrtc_version: (i32, i32),
    /// Options passed to NVRTC.
    pub options: Vec<String>,
    /// Entry points found in the PTX.
    pub entry_points: Vec<String>,
    /// Size of the PTX text.
    pub ptx_bytes: usize,
    /// Whether the PTX and CUBIN came from the disk cache.
    pub from_cache: bool,
    /// Milliseconds spent (compiling or reading the cache).
    pub millis: f64,
    /// The PTX itself.
    pub ptx: String,
    /// The machine code for `arch` (an ELF image; the runtime hands it to the driver, so its
    /// own reports keep it empty).
    pub cubin: Vec<u8>,
    /// Milliseconds the driver took to load the module (set by the runtime; 0 before).
    pub load_millis: f64,
    /// Whether the module was loaded from the PTX because the driver refused the CUBIN.
    pub loaded_from_ptx: bool,
}

fn catch<T>(library: &'static str, f: impl FnOnce() -> T) -> Result<T, CudaError> {
    // The dynamic loader panics when a library or symbol is missing; turn that into an error.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let detail = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the dynamic loader panicked".to_string());
        CudaError::LibraryMissing { library, detail }
    })
}

/// Checks that NVRTC can be loaded and answers; returns its version.
pub fn probe_nvrtc() -> Result<(i32, i32), CudaError> {
    // SAFETY: probing tries to open the library by name; no other state is touched.
    let present = catch("nvrtc", || unsafe { sys::is_culib_present() })?;
    if !present {
        return Err(CudaError::LibraryMissing {
            library: "nvrtc",
            detail: "libnvrtc not found on the library search path (LD_LIBRARY_PATH); \
                     scripts/install_nvrtc.sh installs it"
                .into(),
        });
    }
    nvrtc_version()
}

/// NVRTC's version as (major, minor).
pub fn nvrtc_version() -> Result<(i32, i32), CudaError> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two valid out-pointers.
    let status = catch("nvrtc", || unsafe {
        sys::nvrtcVersion(&mut major, &mut minor)
    })?;
    if status != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(CudaError::LibraryMissing {
            library: "nvrtc",
            detail: format!("nvrtcVersion returned {status:?}"),
        });
    }
    Ok((major, minor))
}

fn has_fp16_header(dir: &Path) -> bool {
    dir.join("cuda_fp16.h").is_file()
}

/// Directories holding the CUDA headers the kernels include (`cuda_fp16.h`, `cuda_bf16.h`).
///
/// Looks at `ETS_CUDA_INCLUDE` (a `:`-separated list), `CUDA_HOME`, `CUDA_PATH`, the usual toolkit
/// location, and the wheels installed by `scripts/install_nvrtc.sh` under `.cuda/` of the
/// working directory or of the crate.
pub fn cuda_include_dirs() -> Result<Vec<PathBuf>, CudaError> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(list) = std::env::var("ETS_CUDA_INCLUDE") {
        candidates.extend(list.split(':').filter(|s| !s.is_empty()).map(PathBuf::from));
    }
    for var in ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"] {
        if let Ok(root) = std::env::var(var) {
            candidates.push(Path::new(&root).join("include"));
        }
    }
    candidates.push(PathBuf::from("/usr/local/cuda/include"));
    let wheel_roots = [
        std::env::current_dir().unwrap_or_default(),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")),
    ];
    for root in wheel_roots {
        let nv = root.join(".cuda/site/nvidia");
        candidates.push(nv.join("cuda_runtime/include"));
        candidates.push(nv.join("cuda_nvcc/include"));
    }
    let mut found: Vec<PathBuf> = Vec::new();
    let mut primary = false;
    for dir in &candidates {
        if !dir.is_dir() || found.contains(dir) {
            continue;
        }
        if has_fp16_header(dir) {
            if primary {
                continue; // one toolkit's headers are enough
            }
            primary = true;
            found.push(dir.clone());
        } else if dir.join("crt").is_dir() {
            found.push(dir.clone()); // the nvcc wheel's crt headers complement the runtime wheel
        }
    }
    if !primary {
        return Err(CudaError::NoIncludeDir {
            searched: candidates.iter().map(|p| p.display().to_string()).collect(),
        });
    }
    Ok(found)
}

/// The directory for cached kernels: `ETS_KERNEL_CACHE`, else `$XDG_CACHE_HOME/ets`, else
/// `~/.cache/ets`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("ETS_KERNEL_CACHE") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("ets"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("ets"))
}

fn nvrtc_options(arch: &str, includes: &[PathBuf]) -> Vec<String> {
    // A real architecture: NVRTC then returns machine code as well as the PTX.
    let mut opts = vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        "-lineinfo".to_string(),
        "--fmad=true".to_string(),
    ];
    opts.extend(
        includes
            .iter()
            .map(|d| format!("--include-path={}", d.display())),
    );
    opts
}

fn cache_key(src: &str, opts: &[String], arch: &str, ver: (i32, i32)) -> String {
    let mut h = Sha256::new();
    h.update(src.as_bytes());
    // Include paths differ between machines but not the meaning; leave them out of the key.
    for o in opts.iter().filter(|o| !o.starts_with("--include-path")) {
        h.update(o.as_bytes());
        h.update([0u8]);
    }
    let d = h.finalize();
    let hex = crate::format::hex(&d[..8]);
    format!("{arch}-nvrtc{}.{}-{hex}", ver.0, ver.1)
}

fn c_text(bytes: Vec<std::os::raw::c_char>) -> String {
    let bytes: Vec<u8> = bytes
        .into_iter()
        .map(|c| c as u8)
        .take_while(|&c| c != 0)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Whether `bytes` look like a CUBIN (an ELF image).
fn is_elf(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x7fELF")
}

/// The program's CUBIN.
///
/// # Safety
/// `prog` must be a successfully compiled program.
unsafe fn program_cubin(prog: sys::nvrtcProgram) -> Result<Vec<u8>, sys::nvrtcResult> {
    let mut n = 0usize;
    // SAFETY: valid program and out-pointer.
    let status = unsafe { sys::nvrtcGetCUBINSize(prog, &mut n) };
    if status != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(status);
    }
    let mut buf = vec![0u8; n];
    // SAFETY: the buffer holds the n bytes NVRTC reported.
    let status = unsafe { sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr().cast()) };
    if status != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(status);
    }
    Ok(buf)
}

/// Compiles `src`, returning its PTX and CUBIN.
fn nvrtc_compile(file: &str, src: &str, opts: &[String]) -> Result<(String, Vec<u8>), CudaError> {
    let invalid = |what: &str| CudaError::Invalid(format!("{file}: {what} contains a NUL byte"));
    let c_src = CString::new(src).map_err(|_| invalid("source"))?;
    let c_name = CString::new(file).map_err(|_| invalid("name"))?;
    for o in opts {
        if o.contains('\0') {
            return Err(invalid("an option"));
        }
    }
    let prog = catch("nvrtc", || {
        result::create_program(&c_src, Some(c_name.as_c_str()))
    })?
    .map_err(|e| CudaError::Compile {
        file: file.into(),
        options: opts.to_vec(),
        status: format!("{e:?}"),
        log: String::new(),
    })?;
    // SAFETY: prog was just created and is destroyed once below.
    let compiled = unsafe { result::compile_program(prog, opts) };
    let read_failed = |status: String, what: &str| CudaError::Compile {
        file: file.into(),
        options: opts.to_vec(),
        status,
        log: format!("reading the {what} failed"),
    };
    let out = match compiled {
        Ok(()) => unsafe { result::get_ptx(prog) }
            .map(c_text)
            .map_err(|e| read_failed(format!("{e:?}"), "PTX"))
            .and_then(|ptx| {
                // SAFETY: compiled successfully above.
                match unsafe { program_cubin(prog) } {
                    Ok(cubin) if is_elf(&cubin) => Ok((ptx, cubin)),
                    Ok(_) => Err(read_failed("not an ELF image".into(), "CUBIN")),
                    Err(status) => Err(read_failed(status_name(status), "CUBIN")),
                }
            }),
        Err(e) => {
            let log = unsafe { result::get_program_log(prog) }
                .map(c_text)
                .unwrap_or_default();
            Err(CudaError::Compile {
                file: file.into(),
                options: opts.to_vec(),
                status: format!("{e:?}"),
                log,
            })
        }
    };
    // SAFETY: created above, not destroyed before.
    let _ = unsafe { result::destroy_program(prog) };
    out
}

fn entry_points(ptx: &str) -> Vec<String> {
    ptx.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let rest = l
                .strip_prefix(".visible .entry ")
                .or_else(|| l.strip_prefix(".entry "))?;
            Some(rest.split('(').next().unwrap_or(rest).trim().to_string())
        })
        .collect()
}

/// Compiles one embedded kernel file for `arch` (such as `sm_90`), using the disk cache.
pub fn compile_kernel(file: &str, src: &str, arch: &str) -> Result<KernelReport, CudaError> {
    if !arch.starts_with("sm_")
        || arch.len() < 5
        || !arch[3..].chars().all(|c| c.is_ascii_alphanumeric())
    {
        return Err(CudaError::Invalid(format!(
            "unsupported architecture name {arch:?} (expected sm_XX)"
        )));
    }
    let ver = probe_nvrtc()?;
    let includes = cuda_include_dirs()?;
    let opts = nvrtc_options(arch, &includes);
    let stem = file.trim_end_matches(".cu");
    // The PTX and the CUBIN of one compile, under one key.
    let cache_files = cache_dir().map(|d| {
        let base = format!("{stem}-{}", cache_key(src, &opts, arch, ver));
        (
            d.join(format!("{base}.ptx")),
            d.join(format!("{base}.cubin")),
        )
    });
    let t0 = Instant::now();
    if let Some((ptx_path, cubin_path)) = &cache_files {
        if let (Ok(ptx), Ok(cubin)) = (std::fs::read_to_string(ptx_path), std::fs::read(cubin_path))
        {
            if !entry_points(&ptx).is_empty() && is_elf(&cubin) {
                return Ok(report(file, arch, ver, opts, (ptx, cubin), true, t0));
            }
        }
    }
    let (ptx, cubin) = nvrtc_compile(file, src, &opts)?;
    if let Some((ptx_path, cubin_path)) = &cache_files {
        // The CUBIN last: an entry counts once both are there.
        store(ptx_path, ptx.as_bytes())?;
        store(cubin_path, &cubin)?;
    }
    Ok(report(file, arch, ver, opts, (ptx, cubin), false, t0))
}

fn store(path: &Path, bytes: &[u8]) -> Result<(), CudaError> {
    let err = |source| CudaError::Cache {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    // Write then rename, so that a concurrent reader never sees half a file.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

fn report(
    file: &str,
    arch: &str,
    ver: (i32, i32),
    options: Vec<String>,
    (ptx, cubin): (String, Vec<u8>),
    from_cache: bool,
    t0: Instant,
) -> KernelReport {
    KernelReport {
        file: file.into(),
        arch: arch.into(),
        nvrtc_version: ver,
        options,
        entry_points: entry_points(&ptx),
        ptx_bytes: ptx.len(),
        from_cache,
        millis: t0.elapsed().as_secs_f64() * 1e3,
        ptx,
        cubin,
        load_millis: 0.0,
        loaded_from_ptx: false,
    }
}

/// Compiles every kernel file for `arch` with NVRTC alone (no GPU needed).
pub fn compile_all_kernels(arch: &str) -> Result<Vec<KernelReport>, CudaError> {
    KERNELS
        .iter()
        .map(|(file, src)| compile_kernel(file, src, &arch_for(file, arch)))
        .collect()
}

/// Runs `ptxas -v` on a kernel's PTX and returns its resource report (registers, shared memory,
/// spills), one line per entry point. `ptxas` comes from `ETS_PTXAS`, `CUDA_HOME/bin` or `PATH`.
pub fn ptxas_resources(report: &KernelReport) -> Result<String, CudaError> {
    let ptxas = std::env::var_os("ETS_PTXAS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CUDA_HOME").map(|h| PathBuf::from(h).join("bin/ptxas")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("ptxas"));
    let dir = std::env::temp_dir().join(format!("ets-ptxas-{}", std::process::id()));
    let io = |source| CudaError::Cache {
        path: dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(io)?;
    let ptx_path = dir.join(format!("{}.ptx", report.file.trim_end_matches(".cu")));
    std::fs::write(&ptx_path, &report.ptx).map_err(io)?;
    let out = std::process::Command::new(&ptxas)
        .arg(format!("-arch={}", report.arch))
        .arg("-v")
        .arg(&ptx_path)
        .arg("-o")
        .arg(dir.join("out.cubin"))
        .output()
        .map_err(|e| CudaError::Invalid(format!("running {}: {e}", ptxas.display())))?;
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(CudaError::Invalid(format!(
            "ptxas failed on {}:\n{text}",
            report.file
        )));
    }
    Ok(summarize_ptxas(&text))
}

/// Condenses `ptxas -v` output to one line per function, keeping its warnings (such as wgmma
/// serialised for lack of registers) on lines of their own.
pub fn summarize_ptxas(text: &str) -> String {
    let mut out = String::new();
    let mut current = String::new();
    for line in text.lines() {
        if line.contains("warning") || line.contains("Potential Performance Loss") {
            out.push_str(&format!("{}\n", line.trim()));
        } else if let Some(i) = line.find("Compiling entry function '") {
            let rest = &line[i + 26..];
            current = rest.split('\'').next().unwrap_or(rest).to_string();
        } else if line.contains("bytes stack frame") && !current.is_empty() {
            let t = line.split("info    : ").nth(1).unwrap_or(line).trim();
            out.push_str(&format!("{current}: {t}"));
        } else if line.contains("Used ") && !current.is_empty() {
            let t = line.split("info    : ").nth(1).unwrap_or(line).trim();
            out.push_str(&format!("; {t}\n"));
            current.clear();
        }
    }
    out
}

/// The name of NVRTC's error code, for messages.
pub fn status_name(code: sys::nvrtcResult) -> String {
    // SAFETY: nvrtcGetErrorString returns a static string.
    let p = unsafe { sys::nvrtcGetErrorString(code) };
    if p.is_null() {
        return format!("{code:?}");
    }
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_points_are_parsed() {
        let ptx = ".version 8.0\n.visible .entry foo(\n.param .u64 a\n)\n.entry bar()\n";
        assert_eq!(
            entry_points(ptx),
            vec!["foo".to_string(), "bar".to_string()]
        );
    }

    #[test]
    fn cache_key_depends_on_source_arch_and_version() {
        let o = vec!["--gpu-architecture=compute_90".to_string()];
        let a = cache_key("x", &o, "sm_90", (12, 8));
        assert_ne!(a, cache_key("y", &o, "sm_90", (12, 8)));
        assert_ne!(a, cache_key("x", &o, "sm_80", (12, 8)));
        assert_ne!(a, cache_key("x", &o, "sm_90", (13, 0)));
        let with_inc = vec![o[0].clone(), "--include-path=/somewhere".to_string()];
        assert_eq!(a, cache_key("x", &with_inc, "sm_90", (12, 8)));
    }

    #[test]
    fn ptxas_summary_one_line_per_function() {
        let text = "ptxas info    : Compiling entry function 'k1' for 'sm_90'\n\
                    ptxas info    : Function properties for k1\n\
                    ptxas info    : 0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
                    ptxas info    : Used 96 registers, used 1 barriers, 404 bytes cmem[0]\n";
        let s = summarize_ptxas(text);
        assert!(s.starts_with("k1: 0 bytes stack frame"), "{s}");
        assert!(s.contains("Used 96 registers"), "{s}");
    }
}
