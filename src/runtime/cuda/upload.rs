//! Uploading an `.ets` file's tensor data to the device as ONE allocation.
//!
//! The byte extent covering every tensor is copied as is (no per-tensor repacking): the mapped file
//! is streamed through a ring of pinned staging buffers filled by all cores (default), the file is
//! read with positioned reads into that ring (`Pread`), or the mapping is registered as pinned
//! memory (`cuMemHostRegister`) and copied with one asynchronous copy. Device views of each
//! tensor are offsets into that allocation; the tile kernel reads bitmap, row offsets and values in
//! place. Only weights the kernels cannot read as stored (f32 values, element bitmaps) and f16/bf16
//! biases (the kernels take f32 bias) get small converted side buffers.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;

use crate::format::{Dtype, EtsFile, TensorData, TensorView};

mod host_tiles;
mod pipeline;

pub use host_tiles::DeviceTiles;

use pipeline::{DeviceSink, NullSink, Plan, Sink, Source};
pub use pipeline::{Schedule, StagingConfig};

use cudarc::driver::{CudaSlice, CudaView};

use super::device::{addr, CudaRuntime, ElemType};
use super::error::CudaError;
use super::gemm::LinearWeight;
use super::host::{to_bits, HostTiles};
use super::tile::rs_plan::TileGeometry;
pub use super::tile::TileDeviceView;
use super::tile::TilePrep;

/// The device addresses of a tile weight's bitmap, row offsets and values.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TileAddrs {
    pub bitmap: u64,
    pub row_offsets: u64,
    pub values: u64,
}

/// The geometry of tiles built on the host.
pub(crate) fn host_geometry(h: &HostTiles) -> TileGeometry {
    TileGeometry {
        th: h.th,
        tw: h.tw,
        grid_rows: h.grid_rows,
        grid_cols: h.grid_cols,
        cols: h.cols,
    }
}

/// Makes a tile weight's plan ([`TilePrep`]) from its bitmap and row offsets on the host, puts
/// the kernels' plans (the register-operand kernel's stage plans, the split kernel's units) on the
/// device in one buffer, and returns the weight's view with that buffer (which must outlive the
/// view).
pub(crate) fn tile_view(
    rt: &CudaRuntime,
    bitmap: &[u64],
    row_offsets: &[u32],
    g: TileGeometry,
    rows: usize,
    elem: ElemType,
    at: TileAddrs,
) -> Result<(TileDeviceView, Option<CudaSlice<u8>>), CudaError> {
    let kept = row_offsets.last().copied().unwrap_or(0) as usize;
    let prep = TilePrep::new(bitmap, row_offsets, g);
    let plans = prep.plan_bytes();
    let buf = if plans.bytes.is_empty() {
        None
    } else {
        Some(rt.upload(&plans.bytes)?)
    };
    let base = buf.as_ref().map_or(0, addr);
    let view = TileDeviceView {
        shape: prep.shape(g, rows, kept, elem),
        bitmap: at.bitmap,
        row_offsets: at.row_offsets,
        values: at.values,
        rs_plans: plans.rs.map_or(0, |(off, _)| base + off as u64),
        rs_plan_stride: plans.rs.map_or(0, |(_, s)| s),
        sk_plan: plans.sk.map_or(0, |(off, _)| base + off as u64),
        sk_units: plans.sk.map_or(0, |(_, u)| u),
    };
    Ok((view, buf))
}

/// One tensor on the device.
#[derive(Debug, Clone)]
pub struct DeviceTensor {
    /// Canonical name.
    pub name: String,
    /// Logical shape.
    pub shape: Vec<u64>,
    /// Stored dtype.
    pub dtype: Dtype,
    /// Address of the tensor's section inside the model allocation.
    pub ptr: u64,
    /// Section length in bytes.
    pub length: u64,
    /// Density as stored (1 for dense).
    pub density: f64,
    /// The tensor as a linear weight (2-D tensors).
    pub linear: Option<LinearWeight>,
    /// Where the tensor's values lie as f32 on the device (1-D tensors: biases, norms):
    /// [`DeviceModel::f32_values`] hands them out as a view.
    f32_at: Option<F32At>,
}

/// Where a 1-D tensor's f32 values lie: in the model allocation at a byte offset, or in a side
/// buffer of converted values.
#[derive(Debug, Clone, Copy)]
enum F32At {
    /// Byte offset into the model allocation (4-byte aligned).
    Data(usize),
    /// Index of a side buffer.
    Extra(usize),
}

/// How the upload went, and the plain pinned-copy rate measured beside it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UploadStats {
    /// Bytes copied in the one allocation.
    pub bytes: usize,
    /// Wall milliseconds of the model upload (registration and copy).
    pub millis: f64,
    /// How the bytes were copied.
    pub method: UploadMethod,
    /// The staging config asked for (used by `Staged` and `Pread`).
    pub staging: StagingConfig,
}

impl UploadStats {
    /// GB/s of the model upload.
    pub fn gbps(&self) -> f64 {
        self.bytes as f64 / (self.millis.max(1e-9) * 1e6)
    }
}

/// A model's tensors on the device.
pub struct DeviceModel {
    data: CudaSlice<u8>,
    extra: Vec<CudaSlice<u8>>,
    tensors: HashMap<String, DeviceTensor>,
    stats: UploadStats,
}

fn elem_of(d: Dtype) -> Option<ElemType> {
    match d {
        Dtype::F16 => Some(ElemType::F16),
        Dtype::Bf16 => Some(ElemType::Bf16),
        Dtype::F32 => None,
    }
}

/// How the file's bytes reach the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum UploadMethod {
    /// Copy from the mapping through a ring of pinned staging buffers, host copies overlapping
    /// the transfers ([`StagingConfig`] sets the chunking).
    #[default]
    Staged,
    /// Register the mapped file range as pinned memory, then one asynchronous copy.
    Register,
    /// One synchronous copy straight from the (pageable) mapping; the driver stages internally.
    Pageable,
    /// Positioned reads of the file straight into the pinned staging ring (no page faults on the
    /// mapping; the kernel copies from the page cache), pipelined like [`UploadMethod::Staged`].
    /// Needs the open file ([`DeviceModel::upload_file`]); without it, falls back to `Staged`.
    Pread,
}

/// Byte range of `file` holding every tensor (empty when there are none).
pub fn tensor_extent(file: &EtsFile) -> Result<Range<usize>, CudaError> {
    let (mut start, mut end) = (u64::MAX, 0u64);
    for v in file.tensors() {
        start = start.min(v.offset);
        end = end.max(v.offset.saturating_add(v.length));
    }
    if end == 0 {
        return Ok(0..0);
    }
    let len = file.bytes().len() as u64;
    if start > end || end > len {
        return Err(CudaError::Invalid(format!(
            "tensor extent {start}..{end} outside the {len}-byte file"
        )));
    }
    Ok(start as usize..end as usize)
}

// The host-side copy, not the link, limits a staged upload, and it needs all cores: every chunk
// is filled by the whole thread pool rather than one thread per chunk (bench/RESULTS.md, "Upload").
fn staged(
    rt: &CudaRuntime,
    dst: u64,
    source: Source<'_>,
    config: &StagingConfig,
) -> Result<(), CudaError> {
    let plan = Plan::new(source.len(), config, rayon::current_num_threads())?;
    rt.with_staging(plan.buffers, plan.chunk, config.write_combined, |bufs| {
        let mut slices: Vec<&mut [u8]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
        let sink = DeviceSink::new(rt, dst, plan.buffers)?;
        let r = pipeline::run(&plan, source, &mut slices, &sink, config.schedule);
        // Wait even after an error: queued copies still read the staging buffers.
        let synced = rt.synchronize();
        drop(sink);
        r.and(synced)
    })
}

/// The region's bytes in an open file, for [`UploadMethod::Pread`].
#[derive(Debug, Clone, Copy)]
pub struct FileRegion<'a> {
    /// The open file.
    pub file: &'a File,
    /// Offset of the region's first byte in the file.
    pub offset: u64,
}

/// Copies the host region `src` to the start of `dst` (which must hold `src.len()` bytes) with
/// `method` and `config`. `file` is where [`UploadMethod::Pread`] reads the same bytes; without
/// it, or when registration is refused, the staged copy from `src` is used. Returns the method
/// actually used.
pub fn copy_region(
    rt: &CudaRuntime,
    dst: &mut CudaSlice<u8>,
    src: &[u8],
    file: Option<FileRegion<'_>>,
    method: UploadMethod,
    config: &StagingConfig,
) -> Result<UploadMethod, CudaError> {
    rt.bind()?;
    if src.is_empty() {
        return Ok(method);
    }
    if dst.len() < src.len() {
        return Err(CudaError::Invalid(format!(
            "copy of {} bytes into a {}-byte device buffer",
            src.len(),
            dst.len()
        )));
    }
    // dst stays borrowed mutably until every copy below has finished (each path synchronizes).
    let dst = addr(dst);
    match (method, file) {
        (UploadMethod::Register, _) => {
            // SAFETY: src stays borrowed (mapped) until the copy has finished and it is unregistered.
            if unsafe { rt.register_host(src.as_ptr(), src.len()) }.is_ok() {
                // SAFETY: registered above; synchronized before unregistering.
                let copied = unsafe { rt.copy_h2d_async(dst, src.as_ptr(), src.len()) }
                    .and_then(|_| rt.synchronize());
                // SAFETY: registered above.
                let unreg = unsafe { rt.unregister_host(src.as_ptr()) };
                copied?;
                unreg?;
                return Ok(UploadMethod::Register);
            }
            staged(rt, dst, Source::Map(src), config).map(|_| UploadMethod::Staged)
        }
        (UploadMethod::Pageable, _) => {
            // The synchronous copy runs outside the runtime's stream: the allocation (stream
            // ordered) must be complete first.
            rt.synchronize()?;
            // SAFETY: dst holds src.len() bytes.
            unsafe { cudarc::driver::result::memcpy_htod_sync(dst, src) }
                .map_err(CudaError::driver("host-to-device copy"))
                .map(|_| UploadMethod::Pageable)
        }
        (UploadMethod::Pread, Some(f)) => {
            let source = Source::File {
                file: f.file,
                offset: f.offset,
                len: src.len(),
            };
            staged(rt, dst, source, config).map(|_| UploadMethod::Pread)
        }
        (UploadMethod::Staged | UploadMethod::Pread, _) => {
            staged(rt, dst, Source::Map(src), config).map(|_| UploadMethod::Staged)
        }
    }
}

/// Copies host bytes `src` to the start of `dst` with `method` and the default staging config
/// (falls back to staging when registration is refused). Returns the method actually used.
pub fn copy_host_range(
    rt: &CudaRuntime,
    dst: &mut CudaSlice<u8>,
    src: &[u8],
    method: UploadMethod,
) -> Result<UploadMethod, CudaError> {
    copy_region(rt, dst, src, None, method, &StagingConfig::default())
}

/// Milliseconds of the host side of a staged upload alone: `config`'s pipeline filling the
/// runtime's staging ring from the mapping (`file` None) or by positioned reads, no device copy.
pub fn host_fill_ms(
    rt: &CudaRuntime,
    src: &[u8],
    file: Option<FileRegion<'_>>,
    config: &StagingConfig,
) -> Result<f64, CudaError> {
    let source = source_of(src, file);
    let plan = Plan::new(source.len(), config, rayon::current_num_threads())?;
    rt.with_staging(plan.buffers, plan.chunk, config.write_combined, |bufs| {
        let mut slices: Vec<&mut [u8]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
        let t = Instant::now();
        pipeline::run(&plan, source, &mut slices, &NullSink, config.schedule)?;
        Ok(t.elapsed().as_secs_f64() * 1e3)
    })
}

/// Milliseconds of filling one pinned buffer of the region's size (no ring, no device copy),
/// `piece` bytes per thread task: the best the host side can do. Allocates the buffer first.
pub fn host_fill_whole_ms(
    rt: &CudaRuntime,
    src: &[u8],
    file: Option<FileRegion<'_>>,
    piece: usize,
) -> Result<f64, CudaError> {
    let source = source_of(src, file);
    let len = source.len();
    let mut host = rt.alloc_pinned(len)?;
    let config = StagingConfig::new(len.max(1), 1, piece, Schedule::PerChunk);
    let plan = Plan::new(len, &config, rayon::current_num_threads())?;
    let mut slices = [host.as_mut_slice()];
    let t = Instant::now();
    pipeline::run(&plan, source, &mut slices, &NullSink, Schedule::PerChunk)?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

fn source_of<'a>(src: &'a [u8], file: Option<FileRegion<'a>>) -> Source<'a> {
    match file {
        Some(f) => Source::File {
            file: f.file,
            offset: f.offset,
            len: src.len(),
        },
        None => Source::Map(src),
    }
}

/// Milliseconds of one plain asynchronous copy of `bytes` from a pinned buffer (the reference rate).
pub fn pinned_copy_ms(rt: &CudaRuntime, bytes: usize) -> Result<f64, CudaError> {
    pinned_copy_chunked_ms(rt, bytes, bytes.max(1))
}

/// Milliseconds of copying `bytes` from one pinned buffer in `chunk`-byte asynchronous copies,
/// each followed by an event record like the staged pipeline (the device side of its cost).
pub fn pinned_copy_chunked_ms(
    rt: &CudaRuntime,
    bytes: usize,
    chunk: usize,
) -> Result<f64, CudaError> {
    let mut host = rt.alloc_pinned(bytes)?;
    host.as_mut_slice()
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = i as u8);
    let dev = rt.alloc::<u8>(bytes)?;
    let sink = DeviceSink::new(rt, addr(&dev), 1)?;
    let t = Instant::now();
    let mut at = 0;
    while at < bytes {
        let len = chunk.max(1).min(bytes - at);
        // SAFETY: at + len <= bytes, held by both buffers; the host buffer is not written and
        // both outlive the synchronize below.
        unsafe { sink.submit(0, host.as_ptr().add(at), at, len) }?;
        at += len;
    }
    rt.synchronize()?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

/// First index where `a` and `b` differ (a length difference counts at the shorter length).
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    const BLOCK: usize = 1 << 20;
    let n = a.len().min(b.len());
    let (a0, b0) = (&a[..n], &b[..n]);
    a0.par_chunks(BLOCK)
        .zip(b0.par_chunks(BLOCK))
        .enumerate()
        .find_first(|(_, (x, y))| x != y)
        .and_then(|(k, (x, y))| {
            x.iter()
                .zip(y)
                .position(|(p, q)| p != q)
                .map(|i| k * BLOCK + i)
        })
        .or((a.len() != b.len()).then_some(n))
}

/// Downloads the first `expected.len()` bytes of `src` and fails, naming `what` and the
/// first differing byte, unless they equal `expected`.
pub fn verify_device_bytes(
    rt: &CudaRuntime,
    src: &CudaSlice<u8>,
    expected: &[u8],
    what: &str,
) -> Result<(), CudaError> {
    let mut got = vec![0u8; expected.len()];
    if !got.is_empty() {
        rt.download_into(src, &mut got)?;
    }
    match first_difference(&got, expected) {
        None => Ok(()),
        Some(i) => Err(CudaError::Invalid(format!(
            "{what}: device bytes differ from the file's at region byte {i} of {} (device {:#04x}, file {:#04x})",
            expected.len(),
            got.get(i).copied().unwrap_or(0),
            expected.get(i).copied().unwrap_or(0)
        ))),
    }
}

/// Checks that `source` is the file `file` was opened from (same length, same first page).
fn check_same_file(source: &File, file: &EtsFile, path: &Path) -> Result<(), CudaError> {
    let io = |e: std::io::Error| CudaError::Invalid(format!("{}: {e}", path.display()));
    let len = source.metadata().map_err(io)?.len();
    let bytes = file.bytes();
    let head = bytes.get(..bytes.len().min(4096)).unwrap_or(&[]);
    let mut buf = vec![0u8; head.len()];
    if len == bytes.len() as u64 {
        source.read_exact_at(&mut buf, 0).map_err(io)?;
    }
    if len != bytes.len() as u64 || buf != head {
        return Err(CudaError::Invalid(format!(
            "{} is not the file that was opened ({len} bytes on disk, {} mapped, or other contents)",
            path.display(),
            bytes.len()
        )));
    }
    Ok(())
}

impl DeviceModel {
    /// Uploads every tensor of `file` to the device in one allocation (staged copy).
    pub fn upload(rt: &CudaRuntime, file: &EtsFile) -> Result<Self, CudaError> {
        Self::upload_with(rt, file, UploadMethod::default())
    }

    /// [`DeviceModel::upload`] with a chosen copy method.
    pub fn upload_with(
        rt: &CudaRuntime,
        file: &EtsFile,
        method: UploadMethod,
    ) -> Result<Self, CudaError> {
        Self::upload_inner(rt, file, None, method, &StagingConfig::default())
    }

    /// [`DeviceModel::upload`] with a chosen copy method and staging config.
    pub fn upload_with_config(
        rt: &CudaRuntime,
        file: &EtsFile,
        method: UploadMethod,
        config: &StagingConfig,
    ) -> Result<Self, CudaError> {
        Self::upload_inner(rt, file, None, method, config)
    }

    /// [`DeviceModel::upload_with_config`] that may read the tensor bytes from `path`, the file
    /// `file` was opened from ([`UploadMethod::Pread`]); fails when `path` is another file.
    pub fn upload_file(
        rt: &CudaRuntime,
        file: &EtsFile,
        path: &Path,
        method: UploadMethod,
        config: &StagingConfig,
    ) -> Result<Self, CudaError> {
        let source =
            File::open(path).map_err(|e| CudaError::Invalid(format!("{}: {e}", path.display())))?;
        check_same_file(&source, file, path)?;
        Self::upload_inner(rt, file, Some(&source), method, config)
    }

    fn upload_inner(
        rt: &CudaRuntime,
        file: &EtsFile,
        source: Option<&File>,
        method: UploadMethod,
        config: &StagingConfig,
    ) -> Result<Self, CudaError> {
        let all = file.bytes();
        let extent = tensor_extent(file)?;
        let start = extent.start;
        let region = all.get(extent.clone()).ok_or_else(|| {
            CudaError::Invalid(format!("tensor extent {extent:?} outside the file"))
        })?;
        // SAFETY: copy_region writes every byte of the allocation before anything reads it.
        let mut data = unsafe { rt.alloc_uninit::<u8>(region.len())? };
        let file_region = source.map(|f| FileRegion {
            file: f,
            offset: start as u64,
        });
        let t = Instant::now();
        let method = copy_region(rt, &mut data, region, file_region, method, config)?;
        let stats = UploadStats {
            bytes: region.len(),
            millis: t.elapsed().as_secs_f64() * 1e3,
            method,
            staging: *config,
        };
        let mut model = DeviceModel {
            data,
            extra: Vec::new(),
            tensors: HashMap::new(),
            stats,
        };
        let base = all.as_ptr() as usize;
        for v in file.tensors() {
            let dt = model.describe(rt, &v, base, start)?;
            model.tensors.insert(dt.name.clone(), dt);
        }
        Ok(model)
    }

    /// Downloads the one data allocation and checks it equals the tensor bytes of `file`.
    pub fn verify_data(&self, rt: &CudaRuntime, file: &EtsFile) -> Result<(), CudaError> {
        let extent = tensor_extent(file)?;
        let expected = file.bytes().get(extent.clone()).ok_or_else(|| {
            CudaError::Invalid(format!("tensor extent {extent:?} outside the file"))
        })?;
        if expected.len() != self.stats.bytes || self.data.len() < expected.len() {
            return Err(CudaError::Invalid(format!(
                "device allocation of {} bytes for a {}-byte tensor extent",
                self.stats.bytes,
                expected.len()
            )));
        }
        verify_device_bytes(rt, &self.data, expected, "uploaded model")
    }

    /// Keeps a side buffer for the model's lifetime; returns its address.
    fn keep<T: bytemuck::Pod>(&mut self, rt: &CudaRuntime, values: &[T]) -> Result<u64, CudaError> {
        // Side buffers are kept as bytes: one list for every element type.
        let buf = rt.upload::<u8>(bytemuck::cast_slice(values))?;
        let p = addr(&buf);
        self.extra.push(buf);
        Ok(p)
    }

    fn describe(
        &mut self,
        rt: &CudaRuntime,
        v: &TensorView<'_>,
        base: usize,
        start: usize,
    ) -> Result<DeviceTensor, CudaError> {
        let ptr = addr(&self.data) + (v.offset as usize - start) as u64;
        let (rows, cols) = v.matrix_dims();
        let mut f32_at = None;
        let mut linear = None;
        if v.shape.len() == 1 {
            f32_at = Some(match (v.dtype, v.data) {
                (Dtype::F32, TensorData::Dense { values })
                    if (values.as_ptr() as usize - base - start) % 4 == 0 =>
                {
                    F32At::Data(values.as_ptr() as usize - base - start)
                }
                _ => {
                    self.keep(rt, &v.to_dense_f32())?;
                    F32At::Extra(self.extra.len() - 1)
                }
            });
        } else if v.shape.len() == 2 {
            linear = Some(self.linear_of(rt, v, rows, cols, base, start)?);
        }
        Ok(DeviceTensor {
            name: v.name.to_string(),
            shape: v.shape.to_vec(),
            dtype: v.dtype,
            ptr,
            length: v.length,
            density: v.density(),
            linear,
            f32_at,
        })
    }

    fn linear_of(
        &mut self,
        rt: &CudaRuntime,
        v: &TensorView<'_>,
        n: usize,
        k: usize,
        base: usize,
        start: usize,
    ) -> Result<LinearWeight, CudaError> {
        let data_ptr = addr(&self.data);
        let addr = move |p: usize| data_ptr + (p - base - start) as u64;
        let aligned = |p: usize| (p - base) % 16 == 0;
        let elem = elem_of(v.dtype);
        match (elem, v.data) {
            (Some(elem), TensorData::Tile(t))
                if t.element_bitmaps.is_none() && aligned(t.values.as_ptr() as usize) =>
            {
                let g = TileGeometry {
                    th: t.tile_rows,
                    tw: t.tile_cols,
                    grid_rows: t.grid_rows,
                    grid_cols: t.grid_cols,
                    cols: t.cols,
                };
                let at = TileAddrs {
                    bitmap: addr(t.bitmap.as_ptr() as usize),
                    row_offsets: addr(t.row_offsets.as_ptr() as usize),
                    values: addr(t.values.as_ptr() as usize),
                };
                let (view, plans) = tile_view(rt, t.bitmap, t.row_offsets, g, t.rows, elem, at)?;
                if let Some(p) = plans {
                    self.extra.push(p);
                }
                Ok(LinearWeight::Tile(view))
            }
            (None, TensorData::Tile(t)) if t.element_bitmaps.is_none() => {
                // f32 tiles: re-encode as f16 tiles (the kernels read 16-bit values).
                let keep: Vec<bool> = (0..t.grid_rows * t.grid_cols)
                    .map(|i| t.bitmap.get(i / 64).is_some_and(|w| w >> (i % 64) & 1 == 1))
                    .collect();
                let h = HostTiles::from_dense(
                    &t.to_dense_f32(),
                    n,
                    k,
                    t.tile_rows,
                    t.tile_cols,
                    &keep,
                    ElemType::F16,
                )
                .map_err(|d| CudaError::Tensor {
                    name: v.name.into(),
                    detail: d,
                })?;
                let bitmap = self.keep(rt, &h.bitmap)?;
                let row_offsets = self.keep(rt, &h.row_offsets)?;
                let values = self.keep(rt, &h.values)?;
                let at = TileAddrs {
                    bitmap,
                    row_offsets,
                    values,
                };
                let (view, plans) = tile_view(
                    rt,
                    &h.bitmap,
                    &h.row_offsets,
                    host_geometry(&h),
                    n,
                    ElemType::F16,
                    at,
                )?;
                if let Some(p) = plans {
                    self.extra.push(p);
                }
                Ok(LinearWeight::Tile(view))
            }
            (Some(elem), TensorData::Dense { values }) => Ok(LinearWeight::Dense {
                w: addr(values.as_ptr() as usize),
                n,
                k,
                elem,
            }),
            (Some(elem), TensorData::Rows { indices, values }) => {
                let mut inv = vec![-1i32; n];
                for (i, &r) in indices.iter().enumerate() {
                    if let Some(slot) = inv.get_mut(r as usize) {
                        *slot = i as i32;
                    }
                }
                let inv = self.keep(rt, &inv)?;
                Ok(LinearWeight::Rows {
                    w: addr(values.as_ptr() as usize),
                    inv,
                    n,
                    nr: indices.len(),
                    k,
                    elem,
                })
            }
            (Some(elem), TensorData::Cols { indices, values }) => Ok(LinearWeight::Cols {
                w: addr(values.as_ptr() as usize),
                idx: addr(indices.as_ptr() as usize),
                n,
                kc: indices.len(),
                k,
                elem,
            }),
            _ => {
                // Anything else (f32 values, element bitmaps, misaligned parts): dense f16 copy.
                let dense: Vec<u16> = v
                    .to_dense_f32()
                    .iter()
                    .map(|&x| to_bits(ElemType::F16, x))
                    .collect();
                let w = self.keep(rt, &dense)?;
                Ok(LinearWeight::Dense {
                    w,
                    n,
                    k,
                    elem: ElemType::F16,
                })
            }
        }
    }

    /// A tensor by canonical name.
    pub fn tensor(&self, name: &str) -> Result<&DeviceTensor, CudaError> {
        self.tensors.get(name).ok_or_else(|| CudaError::Tensor {
            name: name.into(),
            detail: "not in the uploaded model".into(),
        })
    }

    /// All tensors.
    pub fn tensors(&self) -> impl Iterator<Item = &DeviceTensor> {
        self.tensors.values()
    }

    /// A 2-D tensor as a linear weight.
    pub fn linear(&self, name: &str) -> Result<LinearWeight, CudaError> {
        self.tensor(name)?.linear.ok_or_else(|| CudaError::Tensor {
            name: name.into(),
            detail: "not a 2-D tensor".into(),
        })
    }

    /// A 1-D tensor's values as f32 on the device (biases, layer norms).
    pub fn f32_values(&self, name: &str) -> Result<CudaView<'_, f32>, CudaError> {
        let t = self.tensor(name)?;
        let bad = |detail: &str| CudaError::Tensor {
            name: name.into(),
            detail: detail.into(),
        };
        let n = t.shape.iter().product::<u64>() as usize;
        let (buf, at) = match t.f32_at.ok_or_else(|| bad("not a 1-D tensor"))? {
            F32At::Data(at) => (&self.data, at),
            F32At::Extra(i) => (
                self.extra
                    .get(i)
                    .ok_or_else(|| bad("side buffer missing"))?,
                0,
            ),
        };
        let bytes = buf
            .try_slice(at..at + 4 * n)
            .ok_or_else(|| bad("f32 values outside their buffer"))?;
        // SAFETY: the bytes are n f32 values written at upload, at a 4-byte aligned offset (the
        // allocation itself is aligned), and the view borrows the model.
        unsafe { bytes.transmute::<f32>(n) }.ok_or_else(|| bad("f32 values outside their buffer"))
    }

    /// How the upload went.
    pub fn stats(&self) -> UploadStats {
        self.stats
    }

    /// Bytes held on the device (the one data allocation plus converted side buffers).
    pub fn device_bytes(&self) -> usize {
        self.stats.bytes + self.extra.iter().map(|b| b.len()).sum::<usize>()
    }
}

#[cfg(test)]
mod tests;
