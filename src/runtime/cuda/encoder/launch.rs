//! Launches of the encoder's kernels (`kernels/encoder.cu`, `kernels/attention.cu`). Every
//! function takes raw device addresses and is therefore `unsafe`; the callers own the buffers and size them for the shapes
//! passed (the bound each launch relies on is stated per function). The projections run through
//! the linear layer (`project` in the encoder's `forward` module).

use cudarc::cublas::sys as blas_sys;
use cudarc::driver::{LaunchArgs, PushKernelArg};

use crate::runtime::cuda::{CudaError, CudaRuntime};

/// Threads per block of the row kernels (LayerNorm, pooling).
const ROW_THREADS: u32 = 256;

fn grid_1d(total: usize) -> (u32, u32, u32) {
    (total.div_ceil(256).clamp(1, 65_535 * 8) as u32, 1, 1)
}

fn i32_arg(v: usize) -> Result<i32, CudaError> {
    i32::try_from(v)
        .map_err(|_| CudaError::Invalid(format!("size {v} does not fit a 32-bit kernel argument")))
}

/// Dynamic shared memory of a row kernel over `h` features (one f32 per feature).
fn row_smem(h: usize) -> Result<u32, CudaError> {
    u32::try_from(h * 4).map_err(|_| CudaError::Invalid(format!("hidden size {h} too large")))
}

/// Launches kernel `name` with the arguments on `b` over `grid` x `block`.
///
/// # Safety
/// As [`CudaRuntime::launch`]: the arguments match the kernel's parameters and the buffers they
/// name hold what the kernel reads and writes.
unsafe fn launch(
    rt: &CudaRuntime,
    b: &mut LaunchArgs<'_>,
    name: &str,
    grid: (u32, u32, u32),
    block: u32,
    smem: u32,
) -> Result<(), CudaError> {
    // SAFETY: the caller's contract.
    unsafe { rt.launch(b, name, grid, (block, 1, 1), smem) }
}

/// Three GEMMs of one shape in one cuBLAS call: `Y_i[m, n] = X_i[m, k] W_i[n, k]^T` for
/// i = 0, 1, 2, f16 row-major, fp32 accumulation. `ptrs` is a device array of 9 addresses:
/// `W_0..W_2`, `X_0..X_2`, `Y_0..Y_2`.
///
/// # Safety
/// `ptrs` must hold 9 device addresses of this runtime, the `W_i` holding `n * k`, the `X_i`
/// `m * k` and the `Y_i` `m * n` f16 values.
pub(crate) unsafe fn gemm3(
    rt: &CudaRuntime,
    ptrs: u64,
    m: usize,
    n: usize,
    k: usize,
) -> Result<(), CudaError> {
    let handle = *rt.blas()?.handle();
    rt.bind()?;
    let (alpha, beta) = (1.0f32, 0.0f32);
    let t = blas_sys::cudaDataType::CUDA_R_16F;
    let dim = |v: usize| {
        i32::try_from(v).map_err(|_| CudaError::Invalid(format!("GEMM size {v} too large")))
    };
    let (mi, ni, ki) = (dim(m)?, dim(n)?, dim(k)?);
    let arr = |i: u64| (ptrs + i * 3 * 8) as *const *const std::ffi::c_void;
    // Column-major view: Y^T[n, m] = W[n, k] (stored as W^T) * X^T[k, m].
    // SAFETY: the caller's bounds; alpha and beta outlive the call.
    let status = unsafe {
        blas_sys::cublasGemmBatchedEx(
            handle,
            blas_sys::cublasOperation_t::CUBLAS_OP_T,
            blas_sys::cublasOperation_t::CUBLAS_OP_N,
            ni,
            mi,
            ki,
            &alpha as *const f32 as *const _,
            arr(0),
            t,
            ki,
            arr(1),
            t,
            ki,
            &beta as *const f32 as *const _,
            arr(2) as *const *mut std::ffi::c_void,
            t,
            ni,
            3,
            blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    };
    status
        .result()
        .map_err(CudaError::cublas(format!("batched Q/K/V gemm {m}x{n}x{k}")))
}

/// Embeddings and their LayerNorm for `tokens` tokens: `ids`, `types`, `positions` hold `tokens`
/// u32 values already checked against the tables' rows; `x` holds `tokens * h` f16.
///
/// # Safety
/// Every address is a live device allocation of this runtime (or 0 where allowed) holding at
/// least the values stated above, and no other work reads or writes them during the launch.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn embed_ln(
    rt: &CudaRuntime,
    tokens: usize,
    ids: u64,
    types: u64,
    positions: u64,
    tables: [u64; 3],
    ln: (u64, u64),
    eps: f32,
    h: usize,
    x: u64,
) -> Result<(), CudaError> {
    let hi = i32_arg(h)?;
    let grid = (u32::try_from(tokens).unwrap_or(u32::MAX), 1, 1);
    let (name, smem) = ("enc_embed_ln_f16", row_smem(h)?);
    let f = rt.kernel(name, smem)?;
    let mut b = rt.stream().launch_builder(&f);
    b.arg(&ids).arg(&types).arg(&positions);
    b.arg(&tables[0]).arg(&tables[1]).arg(&tables[2]);
    b.arg(&ln.0).arg(&ln.1).arg(&eps).arg(&hi).arg(&x);
    // SAFETY: the buffers hold what this function's contract states; the arguments follow
    // the kernel's parameters.
    unsafe { launch(rt, &mut b, name, grid, ROW_THREADS, smem) }
}

/// `out = LN(input + bias + residual)` over `tokens` rows of `h` f16 values (`input` may be 0).
///
/// # Safety
/// Every address is a live device allocation of this runtime (or 0 where allowed) holding at
/// least the values stated above, and no other work reads or writes them during the launch.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn bias_residual_ln(
    rt: &CudaRuntime,
    tokens: usize,
    input: u64,
    bias: u64,
    residual: u64,
    ln: (u64, u64),
    eps: f32,
    h: usize,
    out: u64,
) -> Result<(), CudaError> {
    let hi = i32_arg(h)?;
    let grid = (u32::try_from(tokens).unwrap_or(u32::MAX), 1, 1);
    let (name, smem) = ("enc_bias_residual_ln_f16", row_smem(h)?);
    let f = rt.kernel(name, smem)?;
    let mut b = rt.stream().launch_builder(&f);
    b.arg(&input).arg(&bias).arg(&residual);
    b.arg(&ln.0).arg(&ln.1).arg(&eps).arg(&hi).arg(&out);
    // SAFETY: the buffers hold what this function's contract states; the arguments follow
    // the kernel's parameters.
    unsafe { launch(rt, &mut b, name, grid, ROW_THREADS, smem) }
}

/// `y = act(y + bias)` in place over `m * n` f16 values (`bias`: `n` f32, or 0).
///
/// # Safety
/// Every address is a live device allocation of this runtime (or 0 where allowed) holding at
/// least the values stated above, and no other work reads or writes them during the launch.
pub(crate) unsafe fn bias_act(
    rt: &CudaRuntime,
    y: u64,
    bias: u64,
    m: usize,
    n: usize,
    act: i32,
) -> Result<(), CudaError> {
    let (mi, ni) = (i32_arg(m)?, i32_arg(n)?);
    let name = "enc_bias_act_f16";
    let f = rt.kernel(name, 0)?;
    let mut b = rt.stream().launch_builder(&f);
    b.arg(&y).arg(&bias).arg(&mi).arg(&ni).arg(&act);
    // SAFETY: the buffers hold what this function's contract states; the arguments follow
    // the kernel's parameters.
    unsafe { launch(rt, &mut b, name, grid_1d(m * n), 256, 0) }
}

/// `y (f32) = x (f16) + bias` over `m * n` values.
///
/// # Safety
/// Every address is a live device allocation of this runtime (or 0 where allowed) holding at
/// least the values stated above, and no other work reads or writes them during the launch.
pub(crate) unsafe fn bias_to_f32(
    rt: &CudaRuntime,
    x: u64,
    bias: u64,
    m: usize,
    n: usize,
    y: u64,
) -> Result<(), CudaError> {
    let (mi, ni) = (i32_arg(m)?, i32_arg(n)?);
    let name = "enc_bias_to_f32_f16";
    let f = rt.kernel(name, 0)?;
    let mut b = rt.stream().launch_builder(&f);
    b.arg(&x).arg(&bias).arg(&mi).arg(&ni).arg(&y);
    // SAFETY: the buffers hold what this function's contract states; the arguments follow
    // the kernel's parameters.
    unsafe { launch(rt, &mut b, name, grid_1d(m * n), 256, 0) }
}

/// Pools each of `seqs` sequences (rows `cu[s]..cu[s + 1]` of `x`, `cu` holding `seqs + 1` i32):
/// `cls` takes the first row, else the mean; `normalize` divides by the L2 norm. Writes `seqs * h`
/// f32 to `out32` and/or f16 to `out16` (either may be 0).
///
/// # Safety
/// Every address is a live device allocation of this runtime (or 0 where allowed) holding at
/// least the values stated above, and no other work reads or writes them during the launch.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn pool(
    rt: &CudaRuntime,
    x: u64,
    cu: u64,
    seqs: usize,
    h: usize,
    cls: bool,
    normalize: bool,
    out32: u64,
    out16: u64,
) -> Result<(), CudaError> {
    let (hi, cls, normalize) = (i32_arg(h)?, i32::from(cls), i32::from(normalize));
    let grid = (u32::try_from(seqs).unwrap_or(u32::MAX), 1, 1);
    let (name, smem) = ("enc_pool_f16", row_smem(h)?);
    let f = rt.kernel(name, smem)?;
    let mut b = rt.stream().launch_builder(&f);
    b.arg(&x).arg(&cu).arg(&hi).arg(&cls).arg(&normalize);
    b.arg(&out32).arg(&out16);
    // SAFETY: the buffers hold what this function's contract states; the arguments follow
    // the kernel's parameters.
    unsafe { launch(rt, &mut b, name, grid, ROW_THREADS, smem) }
}

/// Head sizes the attention kernel is built for.
pub const ATTENTION_HEAD_DIMS: [usize; 3] = [32, 64, 128];

/// Q, K and V as the attention kernel reads them: three f16 matrices of row stride `ld`
/// elements (head `h` at columns `h * head_dim ..`), each with an optional f32 bias (0 when the
/// projection already added it).
///
/// K's bias shifts every score of a query row by the same amount, which the softmax cancels:
/// the result does not depend on it and the kernel does not read it.
#[derive(Debug, Clone, Copy)]
pub struct AttentionInput {
    /// Device address of Q.
    pub q: u64,
    /// Device address of K.
    pub k: u64,
    /// Device address of V.
    pub v: u64,
    /// Row stride of Q, K and V in elements.
    pub ld: usize,
    /// Biases of Q, K and V (`heads * head_dim` f32 each, or 0).
    pub bias: [u64; 3],
}

/// Queries per block of the attention kernel (4 warps of 16 rows).
const ATTENTION_QUERIES: usize = 64;

/// Fused attention over packed sequences.
///
/// Q, K and V (see [`AttentionInput`]) each hold `tokens` rows of at least `heads * head_dim`
/// values with stride `ld` (a multiple of 8, addresses 16-byte aligned); `cu` holds the `seqs + 1`
/// cumulative i32 offsets ending at `tokens`; `ctx` holds `tokens * heads * head_dim` f16;
/// `max_len` is the longest sequence.
///
/// # Safety
/// The addresses are device allocations of this runtime holding the sizes above, and `cu` is
/// non-decreasing from 0 with no sequence longer than `max_len` (the kernel reads and writes the
/// rows `cu` names without bounds).
#[allow(clippy::too_many_arguments)]
pub unsafe fn attention(
    rt: &CudaRuntime,
    input: &AttentionInput,
    cu: u64,
    seqs: usize,
    max_len: usize,
    heads: usize,
    head_dim: usize,
    ctx: u64,
) -> Result<(), CudaError> {
    if !ATTENTION_HEAD_DIMS.contains(&head_dim) {
        return Err(CudaError::Invalid(format!(
            "attention kernel: head_dim {head_dim} is not one of {ATTENTION_HEAD_DIMS:?}"
        )));
    }
    if seqs == 0 || max_len == 0 || heads == 0 {
        return Ok(());
    }
    if input.ld % 8 != 0
        || input.ld < heads * head_dim
        || [input.q, input.k, input.v].iter().any(|p| p % 16 != 0)
    {
        return Err(CudaError::Invalid(format!(
            "attention kernel: row stride {} (a multiple of 8, at least {}) and 16-byte aligned Q, K, V needed",
            input.ld,
            heads * head_dim
        )));
    }
    let dim = |v: usize| {
        u32::try_from(v)
            .map_err(|_| CudaError::Invalid(format!("attention grid size {v} too large")))
    };
    let grid = (
        dim(max_len.div_ceil(ATTENTION_QUERIES))?,
        dim(heads)?,
        dim(seqs)?,
    );
    if grid.1 > 65_535 || grid.2 > 65_535 {
        return Err(CudaError::Invalid(format!(
            "attention: {heads} heads x {seqs} sequences exceed the grid limit of 65535"
        )));
    }
    // A Q tile and two K and two V tiles of 64 rows, each row padded by 8 halves.
    let smem = ((ATTENTION_QUERIES + 4 * 64) * (head_dim + 8) * 2) as u32;
    let scale_log2 = std::f32::consts::LOG2_E / (head_dim as f32).sqrt();
    let (ld, heads_i) = (i32_arg(input.ld)?, i32_arg(heads)?);
    let name = format!("attn_fwd_d{head_dim}_w4m1_f16");
    let f = rt.kernel(&name, smem)?;
    let mut b = rt.stream().launch_builder(&f);
    b.arg(&input.q).arg(&input.k).arg(&input.v).arg(&ld);
    b.arg(&input.bias[0]).arg(&input.bias[2]);
    b.arg(&cu).arg(&heads_i).arg(&scale_log2).arg(&ctx);
    // SAFETY: the caller's contract; the arguments follow the kernel's parameters.
    unsafe { launch(rt, &mut b, &name, grid, 128, smem) }
}
