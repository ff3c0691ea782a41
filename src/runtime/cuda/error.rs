//! Errors of the CUDA runtime.

use thiserror::Error;

/// An error of the CUDA runtime.
#[derive(Debug, Error)]
pub enum CudaError {
    /// A shared library (driver, NVRTC, cuBLAS) could not be loaded.
    #[error("CUDA library {library} could not be loaded: {detail}")]
    LibraryMissing {
        /// Which library.
        library: &'static str,
        /// What the loader said.
        detail: String,
    },
    /// No GPU with the asked ordinal.
    #[error("no CUDA device with ordinal {ordinal} ({count} found)")]
    NoDevice {
        /// Asked ordinal.
        ordinal: usize,
        /// Devices present.
        count: usize,
    },
    /// A driver call failed.
    #[error("CUDA driver error in {context}: {source}")]
    Driver {
        /// What was being done.
        context: String,
        /// The driver's error.
        #[source]
        source: cudarc::driver::DriverError,
    },
    /// A cuBLAS call failed.
    #[error("cuBLAS error in {context}: {source}")]
    Cublas {
        /// What was being done.
        context: String,
        /// cuBLAS's error.
        #[source]
        source: cudarc::cublas::result::CublasError,
    },
    /// NVRTC failed to compile a kernel file.
    #[error("NVRTC failed to compile {file} with options {options:?} ({status}):\n{log}")]
    Compile {
        /// Kernel file name.
        file: String,
        /// Options passed to NVRTC.
        options: Vec<String>,
        /// NVRTC status.
        status: String,
        /// The compile log.
        log: String,
    },
    /// The CUDA headers (cuda_fp16.h) were not found.
    #[error("CUDA include directory not found (set CUDA_HOME, CUDA_PATH or ETS_CUDA_INCLUDE); looked in: {searched:?}")]
    NoIncludeDir {
        /// Directories searched.
        searched: Vec<String>,
    },
    /// An unsupported or malformed weight, shape or option.
    #[error("{0}")]
    Invalid(String),
    /// A tensor of the model could not be used.
    #[error("tensor {name}: {detail}")]
    Tensor {
        /// Tensor name.
        name: String,
        /// What is wrong.
        detail: String,
    },
    /// Reading or writing the kernel cache.
    #[error("kernel cache {path}: {source}")]
    Cache {
        /// Path involved.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl CudaError {
    pub(crate) fn driver(
        context: impl Into<String>,
    ) -> impl FnOnce(cudarc::driver::DriverError) -> Self {
        let context = context.into();
        move |source| CudaError::Driver { context, source }
    }

    pub(crate) fn cublas(
        context: impl Into<String>,
    ) -> impl FnOnce(cudarc::cublas::result::CublasError) -> Self {
        let context = context.into();
        move |source| CudaError::Cublas { context, source }
    }
}
