//! The device context: libraries probed without panics, kernels loaded on first use, raw buffers,
//! launches and event timers.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use cudarc::cublas::CudaBlas;

use super::lt::CublasLt;
use cudarc::driver::{
    result, sys, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr,
    DevicePtrMut, DeviceRepr, LaunchArgs, LaunchConfig, ValidAsZeroBits,
};

use super::error::CudaError;
use super::nvrtc::{self, KernelReport, KERNELS};
use super::tile::{DeviceLimits, TileKernel};

fn catch<T>(library: &'static str, f: impl FnOnce() -> T) -> Result<T, CudaError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let detail = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the dynamic loader panicked".to_string());
        CudaError::LibraryMissing { library, detail }
    })
}

/// Checks that the driver library loads and initializes; returns the number of devices.
pub(crate) fn probe_driver() -> Result<usize, CudaError> {
    // SAFETY: only tries to open the library by name.
    if !catch("cuda driver", || unsafe { sys::is_culib_present() })? {
        return Err(CudaError::LibraryMissing {
            library: "cuda driver",
            detail: "libcuda not found (no NVIDIA driver on this machine?)".into(),
        });
    }
    catch("cuda driver", result::init)?.map_err(CudaError::driver("cuInit"))?;
    let n = catch("cuda driver", result::device::get_count)?
        .map_err(CudaError::driver("cuDeviceGetCount"))?;
    if n <= 0 {
        return Err(CudaError::NoDevice {
            ordinal: 0,
            count: 0,
        });
    }
    Ok(n as usize)
}

/// Element type of activations and weights on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElemType {
    /// IEEE binary16.
    F16,
    /// bfloat16.
    Bf16,
}

impl ElemType {
    /// Kernel-name suffix.
    pub fn suffix(self) -> &'static str {
        match self {
            ElemType::F16 => "f16",
            ElemType::Bf16 => "bf16",
        }
    }
}

/// The device address of typed device memory, for kernel parameters that are not a whole buffer
/// (tensor maps) and for the alignment checks of the TMA kernels. Reading an address is safe;
/// every use of one on the device is inside an `unsafe` launch.
pub fn addr<T>(buf: &impl DevicePtr<T>) -> u64 {
    // The runtime turns cudarc's event tracking off (one stream), so the guard records nothing.
    let (ptr, _guard) = buf.device_ptr(buf.stream());
    ptr
}

/// The device address of an owned buffer, for the encoder's launches, which take raw addresses.
pub(crate) trait RawPtr {
    /// The buffer's device address.
    fn ptr(&self) -> u64;
}

impl<T> RawPtr for CudaSlice<T> {
    fn ptr(&self) -> u64 {
        addr(self)
    }
}

/// A CUDA device with a stream, the embedded kernels (compiled on first use) and cuBLAS.
pub struct CudaRuntime {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    arch: String,
    name: String,
    sm_count: i32,
    max_smem_optin: i32,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<String, CudaFunction>>,
    blas: OnceLock<Result<CudaBlas, String>>,
    lt: OnceLock<Result<CublasLt, String>>,
    smem_set: Mutex<HashMap<String, u32>>,
    workspace: Mutex<Option<CudaSlice<f32>>>,
    /// Workspaces replaced by bigger ones, kept for the graphs captured on them.
    retired_workspaces: Mutex<Vec<CudaSlice<f32>>>,
    staging: Mutex<Vec<PinnedBuf>>,
    reports: Mutex<Vec<KernelReport>>,
}

impl CudaRuntime {
    /// Opens device `ordinal`. Fails with a typed error when the driver, a GPU or NVRTC is missing.
    pub fn new(ordinal: usize) -> Result<Self, CudaError> {
        let count = probe_driver()?;
        if ordinal >= count {
            return Err(CudaError::NoDevice { ordinal, count });
        }
        nvrtc::probe_nvrtc()?;
        let ctx = catch("cuda driver", || CudaContext::new(ordinal))?
            .map_err(CudaError::driver("creating the context"))?;
        // SAFETY: every allocation, copy and launch of this runtime goes to its one stream (cuBLAS
        // included), so stream order alone orders all uses of a buffer and its free; cudarc's
        // per-buffer events would only add two event calls per kernel argument.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(CudaError::driver("creating a stream"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(CudaError::driver("compute capability"))?;
        let name = ctx.name().map_err(CudaError::driver("device name"))?;
        let sm_count = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(CudaError::driver("multiprocessor count"))?;
        let max_smem_optin = ctx
            .attribute(
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )
            .map_err(CudaError::driver("shared memory per block"))?;
        Ok(Self {
            ctx,
            stream,
            arch: format!("sm_{major}{minor}"),
            name,
            sm_count,
            max_smem_optin,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            blas: OnceLock::new(),
            lt: OnceLock::new(),
            smem_set: Mutex::new(HashMap::new()),
            workspace: Mutex::new(None),
            retired_workspaces: Mutex::new(Vec::new()),
            staging: Mutex::new(Vec::new()),
            reports: Mutex::new(Vec::new()),
        })
    }

    /// Architecture name, such as `sm_90`.
    pub fn arch(&self) -> &str {
        &self.arch
    }
    /// Device name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Number of multiprocessors.
    pub fn sm_count(&self) -> i32 {
        self.sm_count
    }
    /// Most dynamic shared memory one block may opt into (bytes).
    pub fn max_smem_per_block(&self) -> usize {
        self.max_smem_optin.max(0) as usize
    }
    /// What kernel planning needs to know about this device.
    pub fn limits(&self) -> DeviceLimits {
        DeviceLimits {
            arch: self.arch.clone(),
            sm_count: self.sm_count.max(0) as usize,
            max_smem: self.max_smem_per_block(),
        }
    }
    /// The stream all work goes to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    /// Compile reports of the kernel files loaded so far.
    pub fn kernel_reports(&self) -> Vec<KernelReport> {
        self.reports.lock().map(|r| r.clone()).unwrap_or_default()
    }

    pub(crate) fn bind(&self) -> Result<(), CudaError> {
        self.ctx
            .bind_to_thread()
            .map_err(CudaError::driver("binding the context"))
    }

    /// Looks up a kernel by name, compiling and loading its file on first use.
    pub fn function(&self, name: &str) -> Result<CudaFunction, CudaError> {
        let poisoned = || CudaError::Invalid("kernel table lock poisoned".into());
        if let Some(f) = self.functions.lock().map_err(|_| poisoned())?.get(name) {
            return Ok(f.clone());
        }
        let file = kernel_file_for(name)?;
        let module = {
            let mut mods = self.modules.lock().map_err(|_| poisoned())?;
            match mods.get(file) {
                Some(m) => m.clone(),
                None => {
                    let src = KERNELS
                        .iter()
                        .find(|(f, _)| *f == file)
                        .map(|(_, s)| *s)
                        .unwrap_or("");
                    let mut report =
                        nvrtc::compile_kernel(file, src, &nvrtc::arch_for(file, &self.arch))?;
                    // The machine code as it is; the PTX (which the driver translates, seconds
                    // for a large file) only if the driver refuses the CUBIN. The CUBIN (up to
                    // several MB) goes to the driver, not into the kept report.
                    let t0 = std::time::Instant::now();
                    let cubin = std::mem::take(&mut report.cubin);
                    let m = match self.ctx.load_module(cudarc::nvrtc::Ptx::from_binary(cubin)) {
                        Ok(m) => m,
                        Err(_) => {
                            report.loaded_from_ptx = true;
                            self.ctx
                                .load_module(cudarc::nvrtc::Ptx::from_src(report.ptx.clone()))
                                .map_err(CudaError::driver(format!("loading {file}")))?
                        }
                    };
                    report.load_millis = t0.elapsed().as_secs_f64() * 1e3;
                    if let Ok(mut r) = self.reports.lock() {
                        r.push(report);
                    }
                    mods.insert(file, m.clone());
                    m
                }
            }
        };
        let f = module
            .load_function(name)
            .map_err(CudaError::driver(format!("kernel {name} in {file}")))?;
        self.functions
            .lock()
            .map_err(|_| poisoned())?
            .insert(name.to_string(), f.clone());
        Ok(f)
    }

    /// Allocates `n` values of `T` on the device, zeroed. The driver refuses empty allocations, so
    /// an empty buffer holds one unused value (`len()` is then 1).
    pub fn alloc<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        n: usize,
    ) -> Result<CudaSlice<T>, CudaError> {
        self.stream
            .alloc_zeros(n.max(1))
            .map_err(CudaError::driver(format!("allocating {n} values")))
    }

    /// Allocates `n` values of `T` on the device (at least one, as [`CudaRuntime::alloc`])
    /// without initializing them.
    ///
    /// # Safety
    /// The caller writes every value before any is read.
    pub(crate) unsafe fn alloc_uninit<T: DeviceRepr>(
        &self,
        n: usize,
    ) -> Result<CudaSlice<T>, CudaError> {
        // SAFETY: the caller's contract.
        unsafe { self.stream.alloc(n.max(1)) }
            .map_err(CudaError::driver(format!("allocating {n} values")))
    }

    /// Allocates and fills from host values (the copy is ordered before later work on the
    /// stream). Empty data gives a one-value zeroed buffer, as [`CudaRuntime::alloc`].
    pub fn upload<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        data: &[T],
    ) -> Result<CudaSlice<T>, CudaError> {
        if data.is_empty() {
            return self.alloc(0);
        }
        self.stream
            .clone_htod(data)
            .map_err(CudaError::driver("host-to-device copy"))
    }

    /// Copies host values `src` to the start of `dst` (ordered before later work on the stream;
    /// `src` may be dropped when this returns).
    pub fn copy_to_device<T: DeviceRepr>(
        &self,
        src: &[T],
        dst: &mut impl DevicePtrMut<T>,
    ) -> Result<(), CudaError> {
        if src.len() > dst.len() {
            return Err(CudaError::Invalid(format!(
                "copy of {} values into a buffer of {}",
                src.len(),
                dst.len()
            )));
        }
        if src.is_empty() {
            return Ok(());
        }
        self.stream
            .memcpy_htod(src, dst)
            .map_err(CudaError::driver("host-to-device copy"))
    }

    /// Copies `out.len()` values from the start of `src` (after the stream's work finishes).
    pub fn download_into<T: DeviceRepr>(
        &self,
        src: &impl DevicePtr<T>,
        out: &mut [T],
    ) -> Result<(), CudaError> {
        if out.len() > src.len() {
            return Err(CudaError::Invalid(format!(
                "download of {} values from a buffer of {}",
                out.len(),
                src.len()
            )));
        }
        let (ptr, _guard) = src.device_ptr(&self.stream);
        self.synchronize()?;
        // SAFETY: src holds at least out.len() values of T (checked above) and is borrowed for
        // the whole copy; the stream was synchronized, so its writes are done.
        unsafe { result::memcpy_dtoh_sync(out, ptr) }
            .map_err(CudaError::driver("device-to-host copy"))
    }

    /// Downloads the first `n` values of `src`.
    pub fn download<T: DeviceRepr + Default + Clone>(
        &self,
        src: &impl DevicePtr<T>,
        n: usize,
    ) -> Result<Vec<T>, CudaError> {
        let mut out = vec![T::default(); n];
        self.download_into(src, &mut out)?;
        Ok(out)
    }

    /// Fills every value of `dst` with the 16-bit pattern `value` on the stream.
    pub fn fill_u16(&self, dst: &mut impl DevicePtrMut<u16>, value: u16) -> Result<(), CudaError> {
        self.bind()?;
        let n = dst.len();
        let (ptr, _guard) = dst.device_ptr_mut(&self.stream);
        // SAFETY: dst holds n u16 values and is borrowed mutably until the memset is queued;
        // later uses of it are ordered after it on the stream.
        unsafe { sys::cuMemsetD16Async(ptr, value, n, self.stream.cu_stream()) }
            .result()
            .map_err(CudaError::driver("memset"))
    }

    /// Fills every value of `dst` with the 32-bit pattern `value` on the stream.
    pub fn fill_u32(&self, dst: &mut impl DevicePtrMut<u32>, value: u32) -> Result<(), CudaError> {
        self.bind()?;
        let n = dst.len();
        let (ptr, _guard) = dst.device_ptr_mut(&self.stream);
        // SAFETY: as fill_u16, with n u32 values.
        unsafe { sys::cuMemsetD32Async(ptr, value, n, self.stream.cu_stream()) }
            .result()
            .map_err(CudaError::driver("memset"))
    }

    /// Copies all of `src` to the start of `dst` on the stream.
    pub fn copy_d2d<T>(
        &self,
        dst: &mut impl DevicePtrMut<T>,
        src: &impl DevicePtr<T>,
    ) -> Result<(), CudaError> {
        if src.len() > dst.len() {
            return Err(CudaError::Invalid(format!(
                "copy of {} values into a buffer of {}",
                src.len(),
                dst.len()
            )));
        }
        self.stream
            .memcpy_dtod(src, dst)
            .map_err(CudaError::driver("device-to-device copy"))
    }

    /// A device workspace of at least `n` f32 values, reused across calls (all work is on one
    /// stream, so consecutive users are ordered); held until the guard drops.
    ///
    /// A smaller buffer that gets replaced is kept, not freed, until the runtime drops: a CUDA
    /// graph captured earlier still holds its address and may be replayed (sizes double, so the
    /// kept buffers add up to less than the current one).
    pub(crate) fn workspace(
        &self,
        n: usize,
    ) -> Result<MutexGuard<'_, Option<CudaSlice<f32>>>, CudaError> {
        let mut ws = self
            .workspace
            .lock()
            .map_err(|_| CudaError::Invalid("workspace lock poisoned".into()))?;
        if !ws.as_ref().is_some_and(|b| b.len() >= n) {
            let bigger = self.alloc(n.next_power_of_two())?;
            if let Some(old) = ws.replace(bigger) {
                self.retired_workspaces
                    .lock()
                    .map_err(|_| CudaError::Invalid("workspace lock poisoned".into()))?
                    .push(old);
            }
        }
        Ok(ws)
    }

    /// CTAs of kernel `name` that fit on one multiprocessor with this block size and shared memory.
    pub fn occupancy(&self, name: &str, block: u32, smem: u32) -> Result<i32, CudaError> {
        let f = self.function(name)?;
        self.bind()?;
        if smem > 48 * 1024 {
            f.set_attribute(
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem as i32,
            )
            .map_err(CudaError::driver("shared memory limit"))?;
            f.set_attribute(
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT,
                100,
            )
            .map_err(CudaError::driver("carveout"))?;
        }
        // SAFETY: f is a loaded function.
        unsafe {
            result::occupancy::max_active_block_per_multiprocessor(
                f.cu_function(),
                block as i32,
                smem as usize,
            )
        }
        .map_err(CudaError::driver(format!("occupancy of {name}")))
    }

    /// Waits for the stream.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.stream
            .synchronize()
            .map_err(CudaError::driver("stream synchronize"))
    }

    /// Whether the runtime's stream is capturing a graph (work enqueued now is recorded, not run).
    pub(crate) fn capturing(&self) -> Result<bool, CudaError> {
        let status = self
            .stream
            .capture_status()
            .map_err(CudaError::driver("stream capture status"))?;
        Ok(status != sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
    }

    /// Kernel `name`, allowed `smem` bytes of dynamic shared memory (raised once per kernel above
    /// the 48 KiB default, with the largest carveout so that two CTAs fit on a multiprocessor).
    pub(crate) fn kernel(&self, name: &str, smem: u32) -> Result<CudaFunction, CudaError> {
        let f = self.function(name)?;
        let needs_raise = smem > 48 * 1024
            && self
                .smem_set
                .lock()
                .map(|m| !m.get(name).is_some_and(|&v| v >= smem))
                .unwrap_or(true);
        if needs_raise {
            self.bind()?;
            f.set_attribute(
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem as i32,
            )
            .map_err(CudaError::driver(format!("shared memory limit of {name}")))?;
            f.set_attribute(
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT,
                100,
            )
            .map_err(CudaError::driver(format!(
                "shared memory carveout of {name}"
            )))?;
            if let Ok(mut m) = self.smem_set.lock() {
                m.insert(name.to_string(), smem);
            }
        }
        Ok(f)
    }

    /// Launches the arguments pushed on `args` (a builder of [`CudaRuntime::kernel`]`(name, smem)`
    /// on this runtime's stream) over `grid` x `block`.
    ///
    /// # Safety
    /// The arguments match the kernel's parameters in order and type, and every buffer they name
    /// holds what the kernel reads and writes for this grid.
    pub(crate) unsafe fn launch(
        &self,
        args: &mut LaunchArgs<'_>,
        name: &str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        smem: u32,
    ) -> Result<(), CudaError> {
        let cfg = LaunchConfig {
            grid_dim: grid,
            block_dim: block,
            shared_mem_bytes: smem,
        };
        // SAFETY: the caller's contract.
        unsafe { args.launch(cfg) }
            .map(|_| ())
            .map_err(CudaError::driver(format!("launching {name}")))
    }

    /// The cuBLAS handle bound to this runtime's stream (created on first use).
    pub fn blas(&self) -> Result<&CudaBlas, CudaError> {
        let r = self.blas.get_or_init(|| {
            // SAFETY: probing only opens the library by name.
            match catch("cublas", || unsafe {
                cudarc::cublas::sys::is_culib_present()
            }) {
                Ok(true) => {}
                Ok(false) => {
                    return Err("libcublas not found on the library search path".to_string())
                }
                Err(e) => return Err(e.to_string()),
            }
            match catch("cublas", || CudaBlas::new(self.stream.clone())) {
                Ok(Ok(b)) => Ok(b),
                Ok(Err(e)) => Err(format!("cublasCreate: {e}")),
                Err(e) => Err(e.to_string()),
            }
        });
        r.as_ref().map_err(|d| CudaError::LibraryMissing {
            library: "cublas",
            detail: d.clone(),
        })
    }

    /// The cuBLASLt handle of this runtime (created on first use).
    pub(crate) fn lt(&self) -> Result<&CublasLt, CudaError> {
        let r = self.lt.get_or_init(|| {
            // SAFETY: probing only opens the library by name.
            match catch("cublasLt", || unsafe {
                cudarc::cublaslt::sys::is_culib_present()
            }) {
                Ok(true) => {}
                Ok(false) => return Err("libcublasLt not found on the library search path".into()),
                Err(e) => return Err(e.to_string()),
            }
            self.bind().map_err(|e| e.to_string())?;
            match catch("cublasLt", || CublasLt::new(&self.stream)) {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        });
        r.as_ref().map_err(|d| CudaError::LibraryMissing {
            library: "cublasLt",
            detail: d.clone(),
        })
    }

    /// Starts an event timer on the stream.
    pub fn timer(&self) -> Result<GpuTimer, CudaError> {
        self.bind()?;
        let mk = || {
            result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT)
                .map_err(CudaError::driver("event"))
        };
        let t = GpuTimer {
            start: mk()?,
            end: mk()?,
            stream: self.stream.cu_stream(),
            ctx: self.ctx.clone(),
        };
        // SAFETY: events and stream belong to this context.
        unsafe { result::event::record(t.start, t.stream) }
            .map_err(CudaError::driver("event record"))?;
        Ok(t)
    }

    /// Registers host memory as pinned (page-locked) for fast asynchronous copies.
    ///
    /// # Safety
    /// `ptr..ptr+bytes` must stay valid and mapped until [`CudaRuntime::unregister_host`].
    pub unsafe fn register_host(&self, ptr: *const u8, bytes: usize) -> Result<(), CudaError> {
        self.bind()?;
        sys::cuMemHostRegister_v2(ptr as *mut c_void, bytes, sys::CU_MEMHOSTREGISTER_READ_ONLY)
            .result()
            .map_err(CudaError::driver("cuMemHostRegister"))
    }

    /// Undoes [`CudaRuntime::register_host`].
    ///
    /// # Safety
    /// `ptr` must have been registered.
    pub unsafe fn unregister_host(&self, ptr: *const u8) -> Result<(), CudaError> {
        self.bind()?;
        sys::cuMemHostUnregister(ptr as *mut c_void)
            .result()
            .map_err(CudaError::driver("cuMemHostUnregister"))
    }

    /// Asynchronous host-to-device copy on the stream.
    ///
    /// # Safety
    /// `src` must hold `bytes` and stay valid until the stream finishes the copy; `dst` must hold them.
    pub unsafe fn copy_h2d_async(
        &self,
        dst: u64,
        src: *const u8,
        bytes: usize,
    ) -> Result<(), CudaError> {
        sys::cuMemcpyHtoDAsync_v2(dst, src as *const c_void, bytes, self.stream.cu_stream())
            .result()
            .map_err(CudaError::driver("asynchronous host-to-device copy"))
    }

    /// Runs `f` with `count` pinned staging buffers of `bytes` each (write-combined when asked),
    /// kept for later uploads.
    pub fn with_staging<R>(
        &self,
        count: usize,
        bytes: usize,
        write_combined: bool,
        f: impl FnOnce(&mut [PinnedBuf]) -> Result<R, CudaError>,
    ) -> Result<R, CudaError> {
        let mut st = self
            .staging
            .lock()
            .map_err(|_| CudaError::Invalid("staging lock poisoned".into()))?;
        if st.len() < count
            || st
                .iter()
                .any(|b| b.bytes < bytes || b.write_combined != write_combined)
        {
            st.clear();
            for _ in 0..count {
                st.push(self.alloc_pinned_with(bytes, write_combined)?);
            }
        }
        f(&mut st[..count])
    }

    /// Allocates pinned host memory.
    pub fn alloc_pinned(&self, bytes: usize) -> Result<PinnedBuf, CudaError> {
        self.alloc_pinned_with(bytes, false)
    }

    /// Allocates pinned host memory, write-combined when asked (for buffers the host only writes).
    pub fn alloc_pinned_with(
        &self,
        bytes: usize,
        write_combined: bool,
    ) -> Result<PinnedBuf, CudaError> {
        self.bind()?;
        let flags = if write_combined {
            sys::CU_MEMHOSTALLOC_WRITECOMBINED
        } else {
            0
        };
        // SAFETY: plain allocation.
        let ptr = unsafe { result::malloc_host(bytes.max(1), flags) }
            .map_err(CudaError::driver("pinned allocation"))?;
        Ok(PinnedBuf {
            ptr: ptr as *mut u8,
            bytes,
            write_combined,
            ctx: self.ctx.clone(),
        })
    }
}

/// Pinned host memory, freed on drop.
pub struct PinnedBuf {
    ptr: *mut u8,
    bytes: usize,
    write_combined: bool,
    ctx: Arc<CudaContext>,
}

// SAFETY: the buffer is plain host memory owned by this value; the context handle is shareable.
unsafe impl Send for PinnedBuf {}

impl PinnedBuf {
    /// The memory as a mutable slice.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr holds bytes, owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.bytes) }
    }
    /// Host address.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr
    }
}

impl Drop for PinnedBuf {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: allocated by malloc_host, freed once.
            let _ = unsafe { result::free_host(self.ptr as *mut c_void) };
        }
    }
}

/// Two events around a region of stream work.
pub struct GpuTimer {
    start: sys::CUevent,
    end: sys::CUevent,
    stream: sys::CUstream,
    ctx: Arc<CudaContext>,
}

impl GpuTimer {
    /// Records the end event, waits for it and returns the elapsed milliseconds.
    pub fn stop_ms(self) -> Result<f32, CudaError> {
        // SAFETY: events created in this context, alive until drop.
        unsafe {
            result::event::record(self.end, self.stream)
                .map_err(CudaError::driver("event record"))?;
            result::event::synchronize(self.end).map_err(CudaError::driver("event synchronize"))?;
            result::event::elapsed(self.start, self.end).map_err(CudaError::driver("event elapsed"))
        }
    }
}

impl Drop for GpuTimer {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: created by event::create, destroyed once.
            unsafe {
                let _ = result::event::destroy(self.start);
                let _ = result::event::destroy(self.end);
            }
        }
    }
}

fn kernel_file_for(name: &str) -> Result<&'static str, CudaError> {
    let tile = [
        ("tile_gemm_", TileKernel::Mma),
        ("tile_wg_", TileKernel::Wg128),
        ("tile_walk_", TileKernel::Walk),
        ("tile_tma_", TileKernel::Tma128),
        ("tile_rs_", TileKernel::Rs),
        ("tile_sk_", TileKernel::Sk),
    ];
    if let Some((_, k)) = tile.iter().find(|(p, _)| name.starts_with(p)) {
        return Ok(k.family().file());
    }
    if name.starts_with("enc_") {
        return Ok("encoder.cu");
    }
    if name.starts_with("attn_") {
        return Ok("attention.cu");
    }
    if name.starts_with("calib_") {
        return Ok("calib.cu");
    }
    if [
        "epilogue_",
        "gather_cols_",
        "densify_tiles_",
        "splitk_finish_",
    ]
    .iter()
    .any(|p| name.starts_with(p))
    {
        Ok("gemm_aux.cu")
    } else {
        Err(CudaError::Invalid(format!("no kernel file defines {name}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::cuda::tile::TileShape;

    #[test]
    fn every_tile_kernel_name_maps_to_an_embedded_file() {
        for k in TileKernel::ALL {
            for elem in [ElemType::F16, ElemType::Bf16] {
                let name = k.entry_name(&TileShape::new(256, 256, 16, 16, 0, elem));
                let file = kernel_file_for(&name).unwrap_or_else(|e| panic!("{k:?}: {e}"));
                assert_eq!(file, k.family().file(), "{name}");
                let (_, src) = nvrtc::KERNELS
                    .iter()
                    .find(|(f, _)| *f == file)
                    .unwrap_or_else(|| panic!("{name}: {file} is not embedded"));
                // The entry points are generated by macros: the name's stem (before the element
                // type) is in the source.
                let stem = name.split(elem.suffix()).next().unwrap_or(&name);
                assert!(src.contains(stem), "{name}: {stem} not in {file}");
            }
        }
        assert!(kernel_file_for("no_such_kernel").is_err());
    }
}
