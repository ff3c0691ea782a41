//! Uploading an `.ets` file's tensor data to the device as ONE allocation.
//!
//! The byte extent covering every tensor is copied as is (no per-tensor repacking): the mapped file
//! is streamed through pinned staging buffers filled by all cores (default), or registered as
//! pinned memory (`cuMemHostRegister`) and copied with one asynchronous copy. Device views of each
//! tensor are offsets into that allocation; the tile kernel reads bitmap, row offsets and values in
//! place. Only weights the kernels cannot read as stored (f32 values, element bitmaps) and f16/bf16
//! biases (the kernels take f32 bias) get small converted side buffers.

use std::collections::HashMap;
use std::time::Instant;

use crate::format::{Dtype, EtsFile, TensorData, TensorView};

use super::device::{CudaRuntime, DevBuf, ElemType};
use super::error::CudaError;
use super::gemm::LinearWeight;
use super::host::{to_bits, union_fractions, HostTiles};

/// Device addresses and geometry of a tile-encoded weight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TileDeviceView {
    /// Bitmap words (u64).
    pub bitmap: u64,
    /// Row offsets (u32, `grid_rows + 1`).
    pub row_offsets: u64,
    /// Kept tile values.
    pub values: u64,
    /// Rows (out features).
    pub rows: usize,
    /// Columns (in features).
    pub cols: usize,
    /// Tile height.
    pub th: usize,
    /// Tile width.
    pub tw: usize,
    /// Block rows.
    pub grid_rows: usize,
    /// Block columns.
    pub grid_cols: usize,
    /// Kept tiles.
    pub kept: usize,
    /// Element type of the values.
    pub elem: ElemType,
    /// Whether per-tile element bitmaps are present (the tile kernel does not read them).
    pub has_element_bitmaps: bool,
    /// Fractions of (64-feature group, tile column) and (128-feature group, tile column) pairs
    /// holding a kept tile ([`super::host::union_fractions`]), when the host knew the bitmap.
    pub unions: Option<[f32; 2]>,
}

impl TileDeviceView {
    /// Fraction of tiles kept.
    pub fn density(&self) -> f64 {
        self.kept as f64 / (self.grid_rows * self.grid_cols).max(1) as f64
    }
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
    /// The tensor's values as f32 on the device (1-D tensors: biases, norms).
    pub f32_values: Option<u64>,
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
}

impl UploadStats {
    /// GB/s of the model upload.
    pub fn gbps(&self) -> f64 {
        self.bytes as f64 / (self.millis.max(1e-9) * 1e6)
    }
}

/// A model's tensors on the device.
pub struct DeviceModel {
    data: DevBuf,
    extra: Vec<DevBuf>,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UploadMethod {
    /// Copy through four pinned 16 MiB staging buffers, host copies overlapping the transfers.
    #[default]
    Staged,
    /// Register the mapped file range as pinned memory, then one asynchronous copy.
    Register,
    /// One synchronous copy straight from the (pageable) mapping; the driver stages internally.
    Pageable,
}

const STAGE: usize = 16 << 20;
const NSTAGE: usize = 4;

// Measured (85 MB file, H200): one thread per chunk with several workers and streams (8 workers,
// 4 MiB chunks) reached 0.38x of a pinned copy, below this version's 0.44-0.58x: the host-side
// copy, not the link, is the limit, and it needs all cores on each chunk.
fn staged_copy(rt: &CudaRuntime, dst: u64, src: &[u8]) -> Result<(), CudaError> {
    use cudarc::driver::{result as dr, sys as ds};
    use rayon::prelude::*;
    let n = NSTAGE.min(src.len().div_ceil(STAGE)).max(1);
    rt.with_staging(n, STAGE, |bufs| {
        let mut events = Vec::with_capacity(n);
        for _ in 0..n {
            events.push(
                dr::event::create(ds::CUevent_flags::CU_EVENT_DISABLE_TIMING)
                    .map_err(CudaError::driver("event"))?,
            );
        }
        let stream = rt.stream().cu_stream();
        let mut res = Ok(());
        for (i, chunk) in src.chunks(STAGE).enumerate() {
            let b = i % n;
            if i >= n {
                // SAFETY: the event was recorded after the copy that last used this buffer.
                if let Err(e) = unsafe { dr::event::synchronize(events[b]) } {
                    res = Err(CudaError::driver("event synchronize")(e));
                    break;
                }
            }
            // Several threads fill the staging buffer (one thread's memcpy is far below the link).
            bufs[b].as_mut_slice()[..chunk.len()]
                .par_chunks_mut(1 << 20)
                .zip(chunk.par_chunks(1 << 20))
                .for_each(|(d, s)| d.copy_from_slice(s));
            // SAFETY: the buffer is pinned and not rewritten before its event completes.
            let r = unsafe {
                rt.copy_h2d_async(dst + (i * STAGE) as u64, bufs[b].as_ptr(), chunk.len())
            }
            .and_then(|_| {
                unsafe { dr::event::record(events[b], stream) }
                    .map_err(CudaError::driver("event record"))
            });
            if let Err(e) = r {
                res = Err(e);
                break;
            }
        }
        let synced = rt.synchronize();
        for ev in events {
            // SAFETY: created above, destroyed once, after the stream finished.
            let _ = unsafe { dr::event::destroy(ev) };
        }
        res.and(synced)
    })
}

/// Copies host bytes `src` to device address `dst` with `method` (falls back to staging when
/// registration is refused). Returns the method actually used.
pub fn copy_host_range(
    rt: &CudaRuntime,
    dst: u64,
    src: &[u8],
    method: UploadMethod,
) -> Result<UploadMethod, CudaError> {
    rt.bind()?;
    if src.is_empty() {
        return Ok(method);
    }
    match method {
        UploadMethod::Register => {
            // SAFETY: src stays borrowed (mapped) until the copy has finished and it is unregistered.
            if unsafe { rt.register_host(src.as_ptr(), src.len()) }.is_ok() {
                let copied = unsafe { rt.copy_h2d_async(dst, src.as_ptr(), src.len()) }
                    .and_then(|_| rt.synchronize());
                let unreg = unsafe { rt.unregister_host(src.as_ptr()) };
                copied?;
                unreg?;
                return Ok(UploadMethod::Register);
            }
            staged_copy(rt, dst, src).map(|_| UploadMethod::Staged)
        }
        UploadMethod::Pageable => {
            // SAFETY: dst holds src.len() bytes.
            unsafe { cudarc::driver::result::memcpy_htod_sync(dst, src) }
                .map_err(CudaError::driver("host-to-device copy"))
                .map(|_| UploadMethod::Pageable)
        }
        UploadMethod::Staged => staged_copy(rt, dst, src).map(|_| UploadMethod::Staged),
    }
}

/// Milliseconds of one plain asynchronous copy of `bytes` from a pinned buffer (the reference rate).
pub fn pinned_copy_ms(rt: &CudaRuntime, bytes: usize) -> Result<f64, CudaError> {
    let mut host = rt.alloc_pinned(bytes)?;
    host.as_mut_slice()
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = i as u8);
    let dev = rt.alloc(bytes)?;
    let t = Instant::now();
    // SAFETY: both buffers hold `bytes`; synchronized before they drop.
    unsafe { rt.copy_h2d_async(dev.ptr(), host.as_ptr(), bytes) }?;
    rt.synchronize()?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
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
        let all = file.bytes();
        let views: Vec<TensorView<'_>> = file.tensors().collect();
        let start = views.iter().map(|v| v.offset).min().unwrap_or(0) as usize;
        let end = views.iter().map(|v| v.offset + v.length).max().unwrap_or(0) as usize;
        let region = all.get(start..end.max(start)).ok_or_else(|| {
            CudaError::Invalid(format!("tensor extent {start}..{end} outside the file"))
        })?;
        let data = rt.alloc(region.len())?;
        let t = Instant::now();
        let method = copy_host_range(rt, data.ptr(), region, method)?;
        let stats = UploadStats {
            bytes: region.len(),
            millis: t.elapsed().as_secs_f64() * 1e3,
            method,
        };
        let mut model = DeviceModel {
            data,
            extra: Vec::new(),
            tensors: HashMap::new(),
            stats,
        };
        let base = all.as_ptr() as usize;
        for v in &views {
            let dt = model.describe(rt, v, base, start)?;
            model.tensors.insert(dt.name.clone(), dt);
        }
        Ok(model)
    }

    fn dev_addr(&self, host_ptr: usize, base: usize, start: usize) -> u64 {
        self.data.ptr() + (host_ptr - base - start) as u64
    }

    fn keep(&mut self, buf: DevBuf) -> u64 {
        let p = buf.ptr();
        self.extra.push(buf);
        p
    }

    fn describe(
        &mut self,
        rt: &CudaRuntime,
        v: &TensorView<'_>,
        base: usize,
        start: usize,
    ) -> Result<DeviceTensor, CudaError> {
        let ptr = self.data.ptr() + (v.offset as usize - start) as u64;
        let (rows, cols) = v.matrix_dims();
        let mut f32_values = None;
        let mut linear = None;
        if v.shape.len() == 1 {
            f32_values = Some(match (v.dtype, v.data) {
                (Dtype::F32, TensorData::Dense { values }) => {
                    self.dev_addr(values.as_ptr() as usize, base, start)
                }
                _ => {
                    let buf = rt.upload(&v.to_dense_f32())?;
                    self.keep(buf)
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
            f32_values,
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
        let data_ptr = self.data.ptr();
        let addr = move |p: usize| data_ptr + (p - base - start) as u64;
        let aligned = |p: usize| (p - base) % 16 == 0;
        let elem = elem_of(v.dtype);
        match (elem, v.data) {
            (Some(elem), TensorData::Tile(t))
                if t.element_bitmaps.is_none() && aligned(t.values.as_ptr() as usize) =>
            {
                Ok(LinearWeight::Tile(TileDeviceView {
                    bitmap: addr(t.bitmap.as_ptr() as usize),
                    row_offsets: addr(t.row_offsets.as_ptr() as usize),
                    values: addr(t.values.as_ptr() as usize),
                    rows: t.rows,
                    cols: t.cols,
                    th: t.tile_rows,
                    tw: t.tile_cols,
                    grid_rows: t.grid_rows,
                    grid_cols: t.grid_cols,
                    kept: t.kept_tiles(),
                    elem,
                    has_element_bitmaps: false,
                    unions: Some(union_fractions(
                        t.bitmap,
                        t.grid_rows,
                        t.grid_cols,
                        t.tile_rows,
                    )),
                }))
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
                let bitmap = {
                    let b = rt.upload(&h.bitmap)?;
                    self.keep(b)
                };
                let row_offsets = {
                    let b = rt.upload(&h.row_offsets)?;
                    self.keep(b)
                };
                let values = {
                    let b = rt.upload(&h.values)?;
                    self.keep(b)
                };
                Ok(LinearWeight::Tile(TileDeviceView {
                    bitmap,
                    row_offsets,
                    values,
                    rows: n,
                    cols: k,
                    th: h.th,
                    tw: h.tw,
                    grid_rows: h.grid_rows,
                    grid_cols: h.grid_cols,
                    kept: h.kept(),
                    elem: ElemType::F16,
                    has_element_bitmaps: false,
                    unions: Some(union_fractions(&h.bitmap, h.grid_rows, h.grid_cols, h.th)),
                }))
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
                let inv = {
                    let b = rt.upload(&inv)?;
                    self.keep(b)
                };
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
                let w = {
                    let b = rt.upload(&dense)?;
                    self.keep(b)
                };
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
    pub fn f32_values(&self, name: &str) -> Result<u64, CudaError> {
        self.tensor(name)?
            .f32_values
            .ok_or_else(|| CudaError::Tensor {
                name: name.into(),
                detail: "not a 1-D tensor".into(),
            })
    }

    /// How the upload went.
    pub fn stats(&self) -> UploadStats {
        self.stats
    }

    /// Bytes held on the device (the one data allocation plus converted side buffers).
    pub fn device_bytes(&self) -> usize {
        self.data.len() + self.extra.iter().map(|b| b.len()).sum::<usize>()
    }
}
