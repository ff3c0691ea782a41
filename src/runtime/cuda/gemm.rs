//! The linear layer on the device: `Y[M,N] = act(X[M,K] W^T + b) + residual`.
//!
//! Weights come in four forms ([`LinearWeight`]): tile-encoded (the tile kernel reads the file's
//! bitmap, row offsets and values directly), dense (cuBLAS), kept rows (cuBLAS on the compacted
//! matrix, then a scatter that also applies the epilogue) and kept columns (a gather of X's kept
//! columns, then cuBLAS). Activations are f16 or bf16, row-major; accumulation is fp32.

use cudarc::cublas::{result as blas, sys as blas_sys};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, PushKernelArg};

use super::device::{addr, CudaRuntime, ElemType};
pub use super::epilogue::Epilogue;
use super::error::CudaError;
use super::tile::common::{arg_opt, int, NULL_PTR};
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
    buf: Option<CudaSlice<u16>>,
}

impl Scratch {
    fn get(&mut self, rt: &CudaRuntime, n: usize) -> Result<&mut CudaSlice<u16>, CudaError> {
        match &mut self.buf {
            Some(b) if b.len() >= n => {}
            slot => {
                *slot = None;
                *slot = Some(rt.alloc(n)?);
            }
        }
        self.buf
            .as_mut()
            .ok_or_else(|| CudaError::Invalid("scratch buffer missing".into()))
    }
}

fn data_type(elem: ElemType) -> blas_sys::cudaDataType {
    match elem {
        ElemType::F16 => blas_sys::cudaDataType::CUDA_R_16F,
        ElemType::Bf16 => blas_sys::cudaDataType::CUDA_R_16BF,
    }
}

fn too_short(what: &str, have: usize, need: usize) -> CudaError {
    CudaError::Invalid(format!("linear: {what} holds {have} values, needs {need}"))
}

/// cuBLAS: `Y[M,N] = X[M,K] W[N,K]^T` (row-major; X's pitch `ldx` in elements), fp32 compute.
/// X and Y are checked against the shape.
///
/// # Safety
/// `w` is the address of `n x k` values of `elem` on this runtime's device, alive until the
/// stream's work is done.
#[allow(clippy::too_many_arguments)]
pub unsafe fn dense_gemm(
    rt: &CudaRuntime,
    elem: ElemType,
    x: &CudaView<'_, u16>,
    ldx: usize,
    m: usize,
    k: usize,
    w: u64,
    n: usize,
    y: &mut CudaViewMut<'_, u16>,
) -> Result<(), CudaError> {
    let x_need = if m == 0 { 0 } else { (m - 1) * ldx + k };
    if x.len() < x_need || ldx < k {
        return Err(too_short("X", x.len(), x_need));
    }
    if y.len() < m * n {
        return Err(too_short("Y", y.len(), m * n));
    }
    let handle = *rt.blas()?.handle();
    rt.bind()?;
    let (alpha, beta) = (1.0f32, 0.0f32);
    let t = data_type(elem);
    let (xa, ya) = (addr(x), addr(y));
    let (mi, ni, ki, ldxi) = (int(m)?, int(n)?, int(k)?, int(ldx)?);
    // Column-major view: Y^T[N,M] = W[N,K] (W^T stored) * X^T[K,M].
    // SAFETY: X and Y were checked above, W is the caller's; alpha/beta live across the call.
    unsafe {
        blas::gemm_ex(
            handle,
            blas_sys::cublasOperation_t::CUBLAS_OP_T,
            blas_sys::cublasOperation_t::CUBLAS_OP_N,
            ni,
            mi,
            ki,
            &alpha as *const f32 as *const _,
            w as *const _,
            t,
            ki,
            xa as *const _,
            t,
            ldxi,
            &beta as *const f32 as *const _,
            ya as *mut _,
            t,
            ni,
            blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(CudaError::cublas(format!("gemm {m}x{n}x{k}")))
}

/// `Y = X W^T` followed by the epilogue: one cuBLASLt kernel when the epilogue is a bias and/or a
/// residual (no GELU) and cuBLASLt has an algorithm for the shape, else cuBLAS then the epilogue
/// kernel.
///
/// # Safety
/// As [`dense_gemm`].
#[allow(clippy::too_many_arguments)]
unsafe fn dense_then(
    rt: &CudaRuntime,
    elem: ElemType,
    x: &CudaView<'_, u16>,
    ldx: usize,
    m: usize,
    k: usize,
    w: u64,
    n: usize,
    ep: &Epilogue<'_>,
    y: &mut CudaViewMut<'_, u16>,
) -> Result<(), CudaError> {
    let x_need = if m == 0 { 0 } else { (m - 1) * ldx + k };
    if !ep.gelu && m > 0 && n > 0 && k > 0 && x.len() >= x_need && ldx >= k && y.len() >= m * n {
        ep.check(m, n)?;
        if let Ok(lt) = rt.lt() {
            rt.bind()?;
            let shape = (m, n, k, ldx);
            let (b, r) = (ep.bias.as_ref(), ep.residual.as_ref());
            // SAFETY: X, Y, the bias and the residual were checked above; W is the caller's.
            if unsafe { lt.matmul(rt.stream(), elem, shape, x, w, b, r, y)? } {
                return Ok(());
            }
        }
    }
    // SAFETY: the caller's contract.
    unsafe { dense_gemm(rt, elem, x, ldx, m, k, w, n, y)? };
    // SAFETY: no compacted rows.
    unsafe { epilogue(rt, elem, y, m, n, None, ep) }
}

/// Compacted rows of Y to scatter: `yc` holds `m` rows of pitch `ldc`; `inv` is the device address
/// of `N` i32 (the compact row of each feature, or -1).
pub struct Compacted<'a, 'b> {
    /// The compacted product.
    pub yc: &'a CudaView<'b, u16>,
    /// Its pitch in elements.
    pub ldc: usize,
    /// Device address of the inverse map.
    pub inv: u64,
}

/// Applies the epilogue in place on Y (after cuBLAS), or, with `compact`, scatters compacted rows
/// into Y while applying it. Y and the epilogue are checked against `m x n`.
///
/// # Safety
/// With `compact`, `inv` is the address of `n` i32 values in `-1..ldc`, on this runtime's device.
pub unsafe fn epilogue(
    rt: &CudaRuntime,
    elem: ElemType,
    y: &mut CudaViewMut<'_, u16>,
    m: usize,
    n: usize,
    compact: Option<Compacted<'_, '_>>,
    ep: &Epilogue<'_>,
) -> Result<(), CudaError> {
    if compact.is_none() && ep.is_empty() {
        return Ok(()); // nothing to apply
    }
    if y.len() < m * n {
        return Err(too_short("Y", y.len(), m * n));
    }
    ep.check(m, n)?;
    let (mi, ni, gelu) = (int(m)?, int(n)?, i32::from(ep.gelu));
    let ldc = int(compact.as_ref().map_or(0, |c| c.ldc))?;
    if let Some(c) = &compact {
        if c.yc.len() < m * c.ldc {
            return Err(too_short("the compacted Y", c.yc.len(), m * c.ldc));
        }
    }
    let aligned = |a: u64| a % 16 == 0;
    if compact.is_none()
        && n % 8 == 0
        && aligned(addr(y))
        && ep.residual.as_ref().map_or(true, |r| aligned(addr(r)))
    {
        let name = format!("epilogue_vec8_{}", elem.suffix());
        let f = rt.kernel(&name, 0)?;
        let mut b = rt.stream().launch_builder(&f);
        b.arg(&mut *y).arg(&mi).arg(&ni);
        arg_opt(&mut b, &ep.bias);
        arg_opt(&mut b, &ep.residual);
        b.arg(&gelu);
        // SAFETY: Y and the epilogue were checked for m x n; N is a multiple of 8 and Y and the
        // residual are 16-byte aligned, as the vector kernel requires; the arguments follow its
        // order.
        return unsafe { rt.launch(&mut b, &name, grid_1d(m * n / 8), (256, 1, 1), 0) };
    }
    let name = format!("epilogue_{}", elem.suffix());
    let f = rt.kernel(&name, 0)?;
    let mut b = rt.stream().launch_builder(&f);
    b.arg(&mut *y).arg(&mi).arg(&ni);
    match &compact {
        Some(c) => b.arg(c.yc).arg(&ldc).arg(&c.inv),
        None => b.arg(&NULL_PTR).arg(&ldc).arg(&NULL_PTR),
    };
    arg_opt(&mut b, &ep.bias);
    arg_opt(&mut b, &ep.residual);
    b.arg(&gelu);
    // SAFETY: Y, the compacted rows and the epilogue were checked for m x n; inv is the
    // caller's; the arguments follow the kernel's order.
    unsafe { rt.launch(&mut b, &name, grid_1d(m * n), (256, 1, 1), 0) }
}

/// Expands a tile-encoded weight into a dense `N x K` device matrix (for cuBLAS).
///
/// # Safety
/// `v`'s addresses are those of a live upload on this runtime's device.
pub unsafe fn densify(rt: &CudaRuntime, v: &TileDeviceView) -> Result<CudaSlice<u16>, CudaError> {
    if v.has_element_bitmaps {
        return Err(CudaError::Invalid(
            "densify on the device needs a tile encoding without element bitmaps".into(),
        ));
    }
    let mut buf = rt.alloc::<u16>(v.rows * v.cols)?;
    let (rows, cols, th, tw, gc) = (
        int(v.rows)?,
        int(v.cols)?,
        int(v.th)?,
        int(v.tw)?,
        int(v.grid_cols)?,
    );
    let name = format!("densify_tiles_{}", v.elem.suffix());
    let f = rt.kernel(&name, 0)?;
    let mut b = rt.stream().launch_builder(&f);
    b.arg(&v.bitmap).arg(&v.row_offsets).arg(&v.values);
    b.arg(&rows)
        .arg(&cols)
        .arg(&th)
        .arg(&tw)
        .arg(&gc)
        .arg(&mut buf);
    // SAFETY: buf holds N x K zeroed values; v's addresses are the caller's; the arguments
    // follow the kernel's order.
    unsafe { rt.launch(&mut b, &name, (v.grid_rows as u32, 1, 1), (256, 1, 1), 0)? };
    Ok(buf)
}

/// `Y = act(X W^T + b) + residual` for any weight form. `dense_fallback`, when given, is a dense
/// `N x K` copy of a tile weight to run through cuBLAS instead of the tile kernel. X, Y, the
/// fallback and the epilogue are checked against the weight's shape.
///
/// # Safety
/// The weight's addresses are those of the live upload that made it, on this runtime's device.
#[allow(clippy::too_many_arguments)]
pub unsafe fn linear(
    rt: &CudaRuntime,
    x: &CudaView<'_, u16>,
    m: usize,
    w: &LinearWeight,
    dense_fallback: Option<&CudaView<'_, u16>>,
    ep: &Epilogue<'_>,
    y: &mut CudaViewMut<'_, u16>,
    scratch: &mut Scratch,
) -> Result<(), CudaError> {
    let elem = w.elem();
    let (n, k) = w.dims();
    if x.len() < m * k {
        return Err(too_short("X", x.len(), m * k));
    }
    if y.len() < m * n {
        return Err(too_short("Y", y.len(), m * n));
    }
    // SAFETY (every call below): the weight's addresses are the caller's; every device buffer is
    // typed and checked by the callee; the compacted activations and outputs are scratch
    // buffers sized here.
    match (*w, dense_fallback) {
        (LinearWeight::Tile(v), None) => tile_gemm(rt, x, m, &v, ep, y),
        (LinearWeight::Tile(v), Some(d)) => {
            if d.len() < n * k {
                return Err(too_short("the dense copy", d.len(), n * k));
            }
            dense_then(rt, elem, x, v.cols, m, v.cols, addr(d), v.rows, ep, y)
        }
        (LinearWeight::Dense { w, n, k, .. }, _) => dense_then(rt, elem, x, k, m, k, w, n, ep, y),
        (
            LinearWeight::Rows {
                w, inv, n, nr, k, ..
            },
            _,
        ) => {
            let yc = scratch.get(rt, m * nr.max(1))?;
            if nr > 0 {
                dense_gemm(rt, elem, x, k, m, k, w, nr, &mut yc.as_view_mut())?;
            }
            let yc = yc.as_view();
            let compact = Compacted {
                yc: &yc,
                ldc: nr.max(1),
                inv,
            };
            epilogue(rt, elem, y, m, n, Some(compact), ep)
        }
        (
            LinearWeight::Cols {
                w, idx, n, kc, k, ..
            },
            _,
        ) => {
            if kc == 0 {
                rt.fill_u16(&mut y.slice_mut(..m * n), 0)?;
                return epilogue(rt, elem, y, m, n, None, ep);
            }
            let xc = scratch.get(rt, m * kc)?;
            let (mi, ki, kci) = (int(m)?, int(k)?, int(kc)?);
            let name = format!("gather_cols_{}", elem.suffix());
            let f = rt.kernel(&name, 0)?;
            {
                let mut b = rt.stream().launch_builder(&f);
                b.arg(x).arg(&mi).arg(&ki).arg(&idx).arg(&kci).arg(&mut *xc);
                // SAFETY: X holds m x K values (checked above), xc m x kc (sized above), idx kc
                // column indices below K (the caller's weight); the arguments follow the kernel.
                rt.launch(&mut b, &name, grid_1d(m * kc), (256, 1, 1), 0)?;
            }
            dense_then(rt, elem, &xc.as_view(), kc, m, kc, w, n, ep, y)
        }
    }
}
