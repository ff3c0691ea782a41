//! The linear layer on the device: `Y[M,N] = act(X[M,K] W^T + b) + residual`.
//!
//! Weights come in four forms ([`LinearWeight`]): tile-encoded (the tile kernel reads the file's
//! bitmap, row offsets and values directly), dense (cuBLAS), kept rows (cuBLAS on the compacted
//! matrix, then a scatter that also applies the epilogue) and kept columns (a gather of X's kept
//! columns, then cuBLAS). Activations are f16 or bf16, row-major; accumulation is fp32.

use cudarc::cublas::{result as blas, sys as blas_sys};

use super::device::{CudaRuntime, DevBuf, ElemType, KArg};
pub use super::epilogue::Epilogue;
use super::error::CudaError;
use super::tile::{grid_1d, tile_gemm, TileDeviceView};

/// A linear weight resident on the device, `N` (out) x `K` (in).
#[derive(Debug, Clone, Copy)]
pub enum LinearWeight {
    /// Tile encoding, read in place by the tile kernel.
    Tile(TileDeviceView),
    /// Dense row-major `N x K` at `w`.
    Dense {
        /// Device address.
        w: u64,
        /// Out features.
        n: usize,
        /// In features.
        k: usize,
        /// Element type.
        elem: ElemType,
    },
    /// Kept output rows: compacted `[nr, K]` at `w`; `inv` holds `N` i32 (compact index or -1).
    Rows {
        /// Compacted values.
        w: u64,
        /// i32 inverse map, one per output feature.
        inv: u64,
        /// Out features.
        n: usize,
        /// Kept rows.
        nr: usize,
        /// In features.
        k: usize,
        /// Element type.
        elem: ElemType,
    },
    /// Kept input columns: compacted `[N, kc]` at `w`; `idx` holds `kc` u32 column indices.
    Cols {
        /// Compacted values.
        w: u64,
        /// u32 kept column indices.
        idx: u64,
        /// Out features.
        n: usize,
        /// Kept columns.
        kc: usize,
        /// In features.
        k: usize,
        /// Element type.
        elem: ElemType,
    },
}

impl LinearWeight {
    /// (out features, in features).
    pub fn dims(&self) -> (usize, usize) {
        match *self {
            LinearWeight::Tile(v) => (v.rows, v.cols),
            LinearWeight::Dense { n, k, .. }
            | LinearWeight::Rows { n, k, .. }
            | LinearWeight::Cols { n, k, .. } => (n, k),
        }
    }
    /// Element type.
    pub fn elem(&self) -> ElemType {
        match *self {
            LinearWeight::Tile(v) => v.elem,
            LinearWeight::Dense { elem, .. }
            | LinearWeight::Rows { elem, .. }
            | LinearWeight::Cols { elem, .. } => elem,
        }
    }
}

/// Scratch memory reused across calls (compacted activations and outputs).
#[derive(Debug, Default)]
pub struct Scratch {
    buf: Option<DevBuf>,
}

impl Scratch {
    fn get(&mut self, rt: &CudaRuntime, bytes: usize) -> Result<u64, CudaError> {
        if !self.buf.as_ref().is_some_and(|b| b.len() >= bytes) {
            self.buf = None;
            self.buf = Some(rt.alloc(bytes)?);
        }
        Ok(self.buf.as_ref().map(|b| b.ptr()).unwrap_or(0))
    }
}

fn data_type(elem: ElemType) -> blas_sys::cudaDataType {
    match elem {
        ElemType::F16 => blas_sys::cudaDataType::CUDA_R_16F,
        ElemType::Bf16 => blas_sys::cudaDataType::CUDA_R_16BF,
    }
}

/// cuBLAS: `Y[M,N] = X[M,K] W[N,K]^T` (row-major; ldx/ldw/ldy in elements), fp32 compute.
///
/// # Safety
/// `x` must hold `m` rows of pitch `ldx`, `w` `n x k` and `y` `m x n` values of `elem`, on this
/// runtime's device.
#[allow(clippy::too_many_arguments)]
pub unsafe fn dense_gemm(
    rt: &CudaRuntime,
    elem: ElemType,
    x: u64,
    ldx: usize,
    m: usize,
    k: usize,
    w: u64,
    n: usize,
    y: u64,
) -> Result<(), CudaError> {
    let handle = *rt.blas()?.handle();
    rt.bind()?;
    let (alpha, beta) = (1.0f32, 0.0f32);
    let t = data_type(elem);
    // Column-major view: Y^T[N,M] = W[N,K] (W^T stored) * X^T[K,M].
    // SAFETY: the caller's bounds cover the operands; alpha/beta live across the call.
    unsafe {
        blas::gemm_ex(
            handle,
            blas_sys::cublasOperation_t::CUBLAS_OP_T,
            blas_sys::cublasOperation_t::CUBLAS_OP_N,
            n as i32,
            m as i32,
            k as i32,
            &alpha as *const f32 as *const _,
            w as *const _,
            t,
            k as i32,
            x as *const _,
            t,
            ldx as i32,
            &beta as *const f32 as *const _,
            y as *mut _,
            t,
            n as i32,
            blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(CudaError::cublas(format!("gemm {m}x{n}x{k}")))
}

/// Applies the epilogue in place on Y (after cuBLAS), or, with `inv`, scatters compacted rows.
///
/// # Safety
/// `y` must hold `m x n` values of `elem`; with `inv` (N i32, else 0) `yc` must hold `m` rows of
/// pitch `ldc`; the epilogue's addresses their [`Epilogue`] bounds; all on this runtime's device.
#[allow(clippy::too_many_arguments)]
pub unsafe fn epilogue(
    rt: &CudaRuntime,
    elem: ElemType,
    y: u64,
    m: usize,
    n: usize,
    yc: u64,
    ldc: usize,
    inv: u64,
    ep: &Epilogue,
) -> Result<(), CudaError> {
    if inv == 0 && *ep == Epilogue::default() {
        return Ok(()); // nothing to apply
    }
    let i = |v: usize| KArg::I32(v as i32);
    let args = [
        KArg::Ptr(y),
        i(m),
        i(n),
        KArg::Ptr(yc),
        i(ldc),
        KArg::Ptr(inv),
        KArg::Ptr(ep.bias),
        KArg::Ptr(ep.residual),
        KArg::I32(ep.gelu as i32),
    ];
    rt.launch(
        &format!("epilogue_{}", elem.suffix()),
        grid_1d(m * n),
        (256, 1, 1),
        0,
        &args,
    )
}

/// Expands a tile-encoded weight into a dense `N x K` device matrix (for cuBLAS).
pub fn densify(rt: &CudaRuntime, v: &TileDeviceView) -> Result<DevBuf, CudaError> {
    if v.has_element_bitmaps {
        return Err(CudaError::Invalid(
            "densify on the device needs a tile encoding without element bitmaps".into(),
        ));
    }
    let buf = rt.alloc(v.rows * v.cols * 2)?;
    rt.fill_u16(buf.ptr(), 0, v.rows * v.cols)?;
    let i = |x: usize| KArg::I32(x as i32);
    let args = [
        KArg::Ptr(v.bitmap),
        KArg::Ptr(v.row_offsets),
        KArg::Ptr(v.values),
        i(v.rows),
        i(v.cols),
        i(v.th),
        i(v.tw),
        i(v.grid_cols),
        KArg::Ptr(buf.ptr()),
    ];
    rt.launch(
        &format!("densify_tiles_{}", v.elem.suffix()),
        (v.grid_rows as u32, 1, 1),
        (256, 1, 1),
        0,
        &args,
    )?;
    Ok(buf)
}

/// `Y = act(X W^T + b) + residual` for any weight form. `dense_fallback`, when given, is a dense
/// copy of a tile weight to run through cuBLAS instead of the tile kernel.
///
/// # Safety
/// `x` must hold `m x K` and `y` `m x N` values of the weight's element type, `dense_fallback`
/// `N x K` of them, the epilogue's addresses their [`Epilogue`] bounds, and the weight's
/// addresses the live upload that made it; all on this runtime's device.
#[allow(clippy::too_many_arguments)]
pub unsafe fn linear(
    rt: &CudaRuntime,
    x: u64,
    m: usize,
    w: &LinearWeight,
    dense_fallback: Option<u64>,
    ep: &Epilogue,
    y: u64,
    scratch: &mut Scratch,
) -> Result<(), CudaError> {
    let elem = w.elem();
    // SAFETY (every call below): the caller's bounds cover X, Y, the weight and the epilogue; the
    // compacted activations and outputs are scratch buffers sized here.
    match (*w, dense_fallback) {
        (LinearWeight::Tile(v), None) => tile_gemm(rt, x, m, &v, ep, y),
        (LinearWeight::Tile(v), Some(d)) => {
            dense_gemm(rt, elem, x, v.cols, m, v.cols, d, v.rows, y)?;
            epilogue(rt, elem, y, m, v.rows, 0, 0, 0, ep)
        }
        (LinearWeight::Dense { w, n, k, .. }, _) => {
            dense_gemm(rt, elem, x, k, m, k, w, n, y)?;
            epilogue(rt, elem, y, m, n, 0, 0, 0, ep)
        }
        (
            LinearWeight::Rows {
                w, inv, n, nr, k, ..
            },
            _,
        ) => {
            let yc = scratch.get(rt, m * nr.max(1) * 2)?;
            if nr > 0 {
                dense_gemm(rt, elem, x, k, m, k, w, nr, yc)?;
            }
            epilogue(rt, elem, y, m, n, yc, nr.max(1), inv, ep)
        }
        (
            LinearWeight::Cols {
                w, idx, n, kc, k, ..
            },
            _,
        ) => {
            if kc == 0 {
                rt.fill_u16(y, 0, m * n)?;
                return epilogue(rt, elem, y, m, n, 0, 0, 0, ep);
            }
            let xc = scratch.get(rt, m * kc * 2)?;
            let i = |v: usize| KArg::I32(v as i32);
            let args = [
                KArg::Ptr(x),
                i(m),
                i(k),
                KArg::Ptr(idx),
                i(kc),
                KArg::Ptr(xc),
            ];
            rt.launch(
                &format!("gather_cols_{}", elem.suffix()),
                grid_1d(m * kc),
                (256, 1, 1),
                0,
                &args,
            )?;
            dense_gemm(rt, elem, xc, kc, m, kc, w, n, y)?;
            epilogue(rt, elem, y, m, n, 0, 0, 0, ep)
        }
    }
}
