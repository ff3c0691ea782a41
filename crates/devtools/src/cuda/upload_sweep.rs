//! The upload sweep behind `et-bench`: every [`UploadMethod`] and a set of [`StagingConfig`]s on
//! one `.ets` file, each upload checked byte for byte against the file, with the plain pinned
//! copy, the device side alone and the host side alone measured in the same run.

use std::fs::File;
use std::ops::Range;
use std::path::Path;
use std::time::Instant;

use ets::format::{EtsFile, FormatError};
use ets::runtime::cuda::{CudaError, CudaRuntime, CudaSlice, DeviceModel, PinnedBuf, UploadMethod};
use ets_testkit::rng::Rng;

use ets::runtime::cuda::upload::{
    copy_region, first_difference, host_fill_ms, host_fill_whole_ms, pinned_copy_chunked_ms,
    pinned_copy_ms, tensor_extent, FileRegion, Schedule, StagingConfig,
};

/// The sweep: the three original methods, then staged (from the mapping) and pread variants,
/// then chunk ramps (small first chunks so the first copy starts early, large ones later).
pub fn variants() -> Vec<(UploadMethod, StagingConfig)> {
    use StagingConfig as C;
    use UploadMethod as M;
    const MB: usize = 1 << 20;
    let mut v = vec![
        (M::Staged, C::default()),
        (M::Register, C::default()),
        (M::Pageable, C::default()),
        (M::Pread, C::default()),
    ];
    for m in [M::Staged, M::Pread] {
        for (chunk, buffers) in [(16 * MB, 4), (4 * MB, 8)] {
            v.push((m, C::new(chunk, buffers, 0, Schedule::PerChunk)));
        }
        for (chunk, buffers, piece) in [
            (MB, 8, 0),
            (2 * MB, 4, 0),
            (2 * MB, 8, 0),
            (4 * MB, 4, 0),
            (4 * MB, 8, 0),
            (4 * MB, 8, 256 << 10),
            (8 * MB, 4, 0),
            (8 * MB, 8, 0),
            (16 * MB, 4, 0),
        ] {
            v.push((m, C::new(chunk, buffers, piece, Schedule::Stream)));
        }
    }
    // Write-combined staging buffers (stores that skip the caches).
    for m in [M::Staged, M::Pread] {
        for (chunk, buffers) in [(2 * MB, 8), (4 * MB, 8), (8 * MB, 4)] {
            v.push((
                m,
                C::new(chunk, buffers, 0, Schedule::Stream).write_combined(),
            ));
        }
    }
    for m in [M::Staged, M::Pread] {
        for (chunk, buffers, first) in [
            (16 * MB, 6, MB),
            (16 * MB, 4, 2 * MB),
            (8 * MB, 8, MB),
            (4 * MB, 8, MB),
        ] {
            v.push((
                m,
                C::new(chunk, buffers, 0, Schedule::Stream).with_ramp(first),
            ));
        }
    }
    // The per-chunk schedule with a ramp (each chunk's fork-join waits for the previous fill).
    v.push((
        M::Staged,
        C::new(16 * MB, 4, 0, Schedule::PerChunk).with_ramp(MB),
    ));
    v
}

/// Timings of one variant, in milliseconds.
struct UploadRow {
    label: String,
    warm: f64,
    warm_min: f64,
    cold: f64,
    first: f64,
    host: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Runs the sweep on the `.ets` file at `path` (kept in the page cache by the caller having just
/// written it); prints one line per variant and returns a summary line. Fails on any upload whose
/// device bytes differ from the file.
pub fn run(rt: &CudaRuntime, rng: &mut Rng, path: &Path) -> Result<String, CudaError> {
    let started = Instant::now();
    let fe = |e: FormatError| CudaError::Invalid(e.to_string());
    let io = |e: std::io::Error| CudaError::Invalid(format!("{}: {e}", path.display()));
    let file = EtsFile::open(path).map_err(fe)?;
    let extent = tensor_extent(&file)?;
    let bytes = extent.len();
    let handle = File::open(path).map_err(io)?;
    let at = |f| {
        Some(FileRegion {
            file: f,
            offset: extent.start as u64,
        })
    };
    // Grow the runtime's staging ring to the largest config once, so no timed run allocates it.
    rt.with_staging(8, 16 << 20, false, |_| Ok(()))?;
    let mut pinned = Vec::new();
    for _ in 0..3 {
        pinned.push(pinned_copy_ms(rt, bytes)?);
    }
    let rate = |ms: f64| bytes as f64 / (ms * 1e6);
    let mb = bytes as f64 / 1e6;
    println!(
        "== upload of {mb:.1} MB (one allocation, file in page cache); ratio = pinned ms / ms"
    );
    let mut dma = Vec::new();
    for chunk in [1usize << 20, 2 << 20, 4 << 20, 8 << 20, 16 << 20] {
        let ms = pinned_copy_chunked_ms(rt, bytes, chunk)?;
        dma.push(format!("{}M {:.1} GB/s", chunk >> 20, rate(ms)));
    }
    println!(
        "device side only (pinned buffer, copies of one chunk + event each): {}",
        dma.join(", ")
    );
    let whole = |f: &EtsFile, src: Option<FileRegion<'_>>, piece| {
        host_fill_whole_ms(rt, region_of(f, &extent)?, src, piece)
    };
    let fresh = EtsFile::open(path).map_err(fe)?;
    let host_lines = [
        (
            "mmap, warm mapping, 1 MiB pieces",
            whole(&file, None, 1 << 20)?,
        ),
        ("mmap, warm mapping, auto pieces", whole(&file, None, 0)?),
        (
            "mmap, fresh mapping, 1 MiB pieces",
            whole(&fresh, None, 1 << 20)?,
        ),
        ("pread, 1 MiB pieces", whole(&file, at(&handle), 1 << 20)?),
        ("pread, auto pieces", whole(&file, at(&handle), 0)?),
    ];
    drop(fresh);
    let host: Vec<String> = host_lines
        .iter()
        .map(|(what, ms)| format!("{what} {ms:.2} ms = {:.1} GB/s", rate(*ms)))
        .collect();
    println!(
        "host side only (fill ONE pinned buffer of the region's size, {} threads, no device copy): {}",
        rayon::current_num_threads(),
        host.join("; ")
    );
    let mut dev = rt.alloc::<u8>(bytes.next_multiple_of(4).max(4))?;
    let mut scratch = rt.alloc_pinned(bytes)?;
    let mut rows = Vec::new();
    let mut checked = 0usize;
    for (method, cfg) in variants() {
        let mut ctx = VariantCtx {
            rt,
            path,
            dev: &mut dev,
            scratch: &mut scratch,
            extent: extent.clone(),
            rng,
            checked: &mut checked,
        };
        let row = ctx.run(&file, &handle, method, &cfg)?;
        println!(
            "upload {:<40} warm {:>6.2} ms (min {:>5.2}) {:>5.1} GB/s {:.2}x | fresh mapping {:>6.2} ms {:.2}x | fresh runtime {:>6.2} ms {:.2}x | host side {}",
            row.label,
            row.warm,
            row.warm_min,
            rate(row.warm),
            pinned_ms_of(&pinned) / row.warm,
            row.cold,
            pinned_ms_of(&pinned) / row.cold,
            row.first,
            pinned_ms_of(&pinned) / row.first,
            row.host
                .map(|h| format!("{h:.2} ms {:.1} GB/s", rate(h)))
                .unwrap_or_else(|| "-".into())
        );
        rows.push(row);
    }
    for _ in 0..2 {
        pinned.push(pinned_copy_ms(rt, bytes)?);
    }
    let pin = pinned_ms_of(&pinned);
    let lo = pinned.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = pinned.iter().copied().fold(0.0, f64::max);
    let best = |key: fn(&UploadRow) -> f64| {
        rows.iter()
            .min_by(|a, b| key(a).total_cmp(&key(b)))
            .map(|r| format!("{} {:.2}x", r.label, pin / key(r)))
            .unwrap_or_default()
    };
    let default = rows
        .first()
        .map(|r| {
            format!(
                "{:.2}x warm, {:.2}x fresh mapping",
                pin / r.warm,
                pin / r.cold
            )
        })
        .unwrap_or_default();
    Ok(format!(
        "upload of {mb:.1} MB: plain pinned memcpy {pin:.2} ms = {:.1} GB/s (5 runs {lo:.2}..{hi:.2} ms); default Staged {default}; best warm: {}; best fresh mapping: {}; best fresh runtime: {}; {checked} uploads verified byte-identical; sweep {:.1} s",
        rate(pin),
        best(|r| r.warm),
        best(|r| r.cold),
        best(|r| r.first),
        started.elapsed().as_secs_f64(),
    ))
}

fn pinned_ms_of(v: &[f64]) -> f64 {
    median(v.to_vec())
}

/// What one variant's runs share.
struct VariantCtx<'a> {
    rt: &'a CudaRuntime,
    path: &'a Path,
    dev: &'a mut CudaSlice<u8>,
    scratch: &'a mut PinnedBuf,
    extent: Range<usize>,
    rng: &'a mut Rng,
    checked: &'a mut usize,
}

impl VariantCtx<'_> {
    fn run(
        &mut self,
        file: &EtsFile,
        handle: &File,
        method: UploadMethod,
        cfg: &StagingConfig,
    ) -> Result<UploadRow, CudaError> {
        let fe = |e: FormatError| CudaError::Invalid(e.to_string());
        let io = |e: std::io::Error| CudaError::Invalid(format!("{}: {e}", self.path.display()));
        let staged = matches!(method, UploadMethod::Staged | UploadMethod::Pread);
        let name = if staged {
            format!("{method:?} {}", cfg.label())
        } else {
            format!("{method:?}")
        };
        // Warm-up through the public API (also verified), on the same mapping as the timed runs.
        let model = DeviceModel::upload_file(self.rt, file, self.path, method, cfg)?;
        model
            .verify_data(self.rt, file)
            .map_err(|e| with_label(&name, e))?;
        let used = model.stats().method;
        drop(model);
        *self.checked += 1;
        let label = if used == method {
            name
        } else {
            format!("{name} (ran as {used:?})")
        };
        let offset = self.extent.start as u64;
        let extent = self.extent.clone();
        let mut warm = Vec::new();
        for _ in 0..3 {
            let fr = FileRegion {
                file: handle,
                offset,
            };
            warm.push(self.timed(region_of(file, &extent)?, fr, method, cfg, &label)?);
        }
        let mut cold = Vec::new();
        for _ in 0..2 {
            // A fresh mapping (page tables empty) and a fresh descriptor; page cache stays warm.
            let fresh = EtsFile::open(self.path).map_err(fe)?;
            let h = File::open(self.path).map_err(io)?;
            let fr = FileRegion { file: &h, offset };
            cold.push(self.timed(region_of(&fresh, &extent)?, fr, method, cfg, &label)?);
        }
        // A fresh runtime (its staging ring not yet allocated) and a fresh mapping: what the
        // first upload of a process pays.
        let first = {
            let rt2 = CudaRuntime::new(0)?;
            let fresh = EtsFile::open(self.path).map_err(fe)?;
            let m = DeviceModel::upload_file(&rt2, &fresh, self.path, method, cfg)?;
            m.verify_data(&rt2, &fresh)
                .map_err(|e| with_label(&label, e))?;
            *self.checked += 1;
            m.stats().millis
        };
        let host = if staged {
            let src = if method == UploadMethod::Pread {
                Some(FileRegion {
                    file: handle,
                    offset,
                })
            } else {
                None
            };
            let a = host_fill_ms(self.rt, region_of(file, &extent)?, src, cfg)?;
            let b = host_fill_ms(self.rt, region_of(file, &extent)?, src, cfg)?;
            Some(a.min(b))
        } else {
            None
        };
        Ok(UploadRow {
            label,
            warm_min: warm.iter().copied().fold(f64::INFINITY, f64::min),
            warm: median(warm),
            cold: median(cold),
            first,
            host,
        })
    }

    /// One timed copy into the poisoned device buffer, then the byte-for-byte check.
    fn timed(
        &mut self,
        region: &[u8],
        file: FileRegion<'_>,
        method: UploadMethod,
        cfg: &StagingConfig,
        label: &str,
    ) -> Result<f64, CudaError> {
        let rt = self.rt;
        // A fresh poison pattern each run, so bytes left by an earlier run cannot pass the check.
        let poison = self.rng.next_u64() as u32;
        let words = self.dev.len() / 4;
        // SAFETY: u8 and u32 are plain integers; the view covers the buffer's whole words.
        let mut as_words = unsafe { self.dev.transmute_mut::<u32>(words) }
            .ok_or_else(|| CudaError::Invalid("device buffer as u32 words".into()))?;
        rt.fill_u32(&mut as_words, poison)?;
        rt.synchronize()?;
        let t = Instant::now();
        copy_region(rt, self.dev, region, Some(file), method, cfg)?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let got = self
            .scratch
            .as_mut_slice()
            .get_mut(..region.len())
            .ok_or_else(|| CudaError::Invalid("verification buffer too small".into()))?;
        rt.download_into(&*self.dev, got)?;
        if let Some(i) = first_difference(got, region) {
            return Err(CudaError::Invalid(format!(
                "upload {label}: device bytes differ from the file at region byte {i} of {}",
                region.len()
            )));
        }
        *self.checked += 1;
        Ok(ms)
    }
}

fn region_of<'f>(f: &'f EtsFile, extent: &Range<usize>) -> Result<&'f [u8], CudaError> {
    f.bytes()
        .get(extent.clone())
        .ok_or_else(|| CudaError::Invalid("tensor extent outside the file".into()))
}

fn with_label(label: &str, e: CudaError) -> CudaError {
    CudaError::Invalid(format!("upload {label}: {e}"))
}
