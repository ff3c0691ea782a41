//! The CUDA runtime: kernels compiled with NVRTC, the tile-sparse GEMM, cuBLAS and cuBLASLt for dense.
//!
//! Everything here loads the CUDA libraries (driver, NVRTC, cuBLAS, cuBLASLt) at run time, so the crate builds
//! and runs on machines without them; [`cuda_available`] and [`CudaRuntime::new`] report their absence
//! as an error instead of a panic.
//!
//! - [`host`]: the CPU half (tile layout building, masks, f32 reference GEMM); no GPU needed.
//! - [`nvrtc`]: compiling `kernels/*.cu` for an architecture, with an on-disk cache.
//! - [`CudaRuntime`]: a device context, stream, loaded kernels, cuBLAS and cuBLASLt handles.
//! - [`DeviceModel`]: an `.ets` file's data uploaded as one allocation, with per-tensor views.
//! - [`linear`]: the safe entry point: a weight of an uploaded model on activations in device
//!   buffers ([`linear::run_linear`]).
//! - [`gemm`]: the linear layer on the device (tile kernels, cuBLAS dense, rows/cols encodings).
//! - [`tile`]: the tile kernel families behind one interface ([`tile::TileFamily`]).
//! - [`dispatch`]: per-weight choice between the tile kernels and cuBLAS, measured once.
//! - [`tuning`]: the runtime's options ([`CudaOptions`]) and the on-disk cache of decisions.
//! - [`encoder`]: the whole BERT encoder on the device ([`CudaEncoder`]).

mod device;
pub mod dispatch;
pub mod encoder;
mod epilogue;
mod error;
pub mod gemm;
pub mod host;
pub mod linear;
mod lt;
pub mod nvrtc;
pub mod tile;
pub mod tuning;
pub mod upload;

pub use cudarc::driver::{CudaSlice, CudaView, CudaViewMut};
pub use device::{addr as device_addr, CudaRuntime, ElemType, GpuTimer, PinnedBuf};
pub use dispatch::{format_table, median_ms, Choice, DispatchEntry, Dispatcher};
pub use encoder::CudaEncoder;
pub use error::CudaError;
pub use gemm::{Epilogue, LinearWeight, Scratch};
pub use nvrtc::{compile_all_kernels, KernelReport};
pub use tile::{TileDeviceView, TileKernel, TileShape};
pub use tuning::{CudaOptions, TuningCache};
pub use upload::{DeviceModel, DeviceTensor, UploadMethod, UploadStats};

/// Checks that the CUDA driver library, NVRTC and at least one GPU are usable.
///
/// Returns a message naming what is missing; never panics.
pub fn cuda_available() -> Result<(), String> {
    device::probe_driver().map_err(|e| e.to_string())?;
    nvrtc::probe_nvrtc().map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn runtime_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<super::CudaRuntime>();
        check::<super::DeviceModel>();
        check::<super::Dispatcher>();
    }

    #[test]
    fn missing_gpu_is_an_error_not_a_panic() {
        // On a machine without a driver this returns Err; with one it may succeed. Never panics.
        let r = std::panic::catch_unwind(|| {
            super::CudaRuntime::new(usize::MAX)
                .err()
                .map(|e| e.to_string())
        });
        let msg = r.expect("CudaRuntime::new must not panic");
        assert!(msg.is_some(), "ordinal usize::MAX cannot exist");
    }
}
