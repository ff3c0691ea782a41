//! The GPU side of [`super::backend`]: a layer's weights uploaded as f32, its stages as cuBLAS
//! SGEMMs and the f32 kernels of `kernels/calib.cu`, and the input statistics as per-batch SGEMM
//! products summed in f64 on the device.
//!
//! Every GEMM runs with `CUBLAS_COMPUTE_32F_PEDANTIC`: full f32 arithmetic whatever the handle's
//! math mode or the environment says, so TF32 never enters calibration.

use cudarc::cublas::{result as blas, sys as blas_sys};
use std::sync::atomic::{AtomicBool, Ordering};

use cudarc::driver::PushKernelArg;

use super::ConvertError;
use crate::format::names::LayerTensor;
use crate::format::{Activation, ModelConfig, TensorView};
use crate::prune::calibrated::{column_sums, LinearStats};
use crate::runtime::cuda::{device_addr, CudaError, CudaRuntime, CudaSlice};
use crate::runtime::RuntimeError;

/// Threads per block of the row and attention kernels (a multiple of 32).
const THREADS: u32 = 256;
/// Threads per block of the attention kernel.
const ATTN_THREADS: u32 = 128;

fn cuda(e: CudaError) -> ConvertError {
    ConvertError::Cuda(e)
}

fn unavailable(e: CudaError) -> ConvertError {
    ConvertError::DeviceUnavailable {
        reason: e.to_string(),
    }
}

fn int(v: usize, what: &str) -> Result<i32, ConvertError> {
    i32::try_from(v).map_err(|_| {
        ConvertError::Calibration(format!("{what} {v} is too large for the GPU backend"))
    })
}

fn grid_1d(total: usize) -> (u32, u32, u32) {
    (
        total.div_ceil(THREADS as usize).clamp(1, 65_535) as u32,
        1,
        1,
    )
}

/// A GPU, its cuBLAS handle and the calibration kernels.
pub(crate) struct CudaCalibration {
    rt: CudaRuntime,
    poison: AtomicBool,
}

/// Allocates `n` f32 values for an output; with `poison`, filled with NaN first, so that a value
/// the computation fails to write shows.
fn output(rt: &CudaRuntime, n: usize, poison: bool) -> Result<CudaSlice<f32>, ConvertError> {
    let mut y = rt.alloc::<f32>(n).map_err(cuda)?;
    if poison {
        let name = "calib_fill_f32";
        let f = rt.kernel(name, 0).map_err(cuda)?;
        let (len, nan) = (y.len(), f32::NAN);
        let total = len as i64;
        let mut b = rt.stream().launch_builder(&f);
        b.arg(&mut y).arg(&total).arg(&nan);
        // SAFETY: y holds `total` values; the arguments follow the kernel's parameters
        // (float*, long long, float).
        unsafe { rt.launch(&mut b, name, grid_1d(len), (THREADS, 1, 1), 0) }.map_err(cuda)?;
    }
    Ok(y)
}

impl CudaCalibration {
    /// Opens GPU `ordinal` and loads cuBLAS and the kernels, so that whatever is missing fails
    /// here, before any work.
    pub(crate) fn new(ordinal: usize) -> Result<CudaCalibration, ConvertError> {
        let rt = CudaRuntime::new(ordinal).map_err(unavailable)?;
        rt.blas().map_err(unavailable)?;
        rt.function("calib_add_f64").map_err(unavailable)?;
        Ok(CudaCalibration {
            rt,
            poison: AtomicBool::new(false),
        })
    }

    /// Whether outputs are filled with NaN before they are computed.
    pub(crate) fn set_poison(&self, on: bool) {
        self.poison.store(on, Ordering::Relaxed);
    }

    /// The GPU's name and architecture.
    pub(crate) fn device_name(&self) -> String {
        format!("{}, {}", self.rt.name(), self.rt.arch())
    }

    /// Layer `layer` of a model of `config` with its (dense f32) tensors from `get`, uploaded.
    pub(crate) fn layer<'a>(
        &'a self,
        config: &ModelConfig,
        layer: usize,
        get: &dyn Fn(&str) -> Result<TensorView<'a>, RuntimeError>,
    ) -> Result<CudaLayer<'a>, ConvertError> {
        CudaLayer::load(self, config, layer, get)
    }

    /// Empty statistics of a linear with `inputs` input features.
    pub(crate) fn statistics(&self, inputs: usize) -> Result<CudaStats<'_>, ConvertError> {
        let nn = inputs * inputs;
        Ok(CudaStats {
            rt: &self.rt,
            n: inputs,
            g: self.rt.alloc(nn).map_err(cuda)?,
            c: self.rt.alloc(nn).map_err(cuda)?,
            prod: output(&self.rt, nn, self.poison.load(Ordering::Relaxed))?,
            sp: vec![0.0; inputs],
            sd: vec![0.0; inputs],
            tokens: 0,
        })
    }
}

/// `C = op(A) op(B)` in column-major terms, f32 in and out, full f32 arithmetic: `C` is
/// `rows x cols`, the shared dimension `k`. `ta`/`tb` transpose A (`lda`) and B (`ldb`).
#[allow(clippy::too_many_arguments)]
fn sgemm(
    rt: &CudaRuntime,
    (ta, tb): (bool, bool),
    (rows, cols, k): (usize, usize, usize),
    a: &CudaSlice<f32>,
    lda: usize,
    b: &CudaSlice<f32>,
    ldb: usize,
    c: &mut CudaSlice<f32>,
) -> Result<(), ConvertError> {
    let op = |t: bool| {
        if t {
            blas_sys::cublasOperation_t::CUBLAS_OP_T
        } else {
            blas_sys::cublasOperation_t::CUBLAS_OP_N
        }
    };
    // Column-major extents each operand must hold.
    let need_a = if ta { lda * rows } else { lda * k };
    let need_b = if tb { ldb * k } else { ldb * cols };
    if a.len() < need_a || b.len() < need_b || c.len() < rows * cols {
        return Err(ConvertError::Calibration(format!(
            "GEMM {rows}x{cols}x{k}: operands of {}, {} and {} values",
            a.len(),
            b.len(),
            c.len()
        )));
    }
    let handle = *rt.blas().map_err(cuda)?.handle();
    rt.bind().map_err(cuda)?;
    let (alpha, beta) = (1.0f32, 0.0f32);
    let t = blas_sys::cudaDataType::CUDA_R_32F;
    let (ri, ci, ki) = (
        int(rows, "GEMM size")?,
        int(cols, "GEMM size")?,
        int(k, "GEMM size")?,
    );
    let (la, lb, lc) = (
        int(lda, "stride")?,
        int(ldb, "stride")?,
        int(rows, "stride")?,
    );
    // SAFETY: A, B and C hold the column-major extents checked above and stay borrowed for the
    // call; alpha and beta outlive it; cuBLAS runs on the runtime's one stream.
    unsafe {
        blas::gemm_ex(
            handle,
            op(ta),
            op(tb),
            ri,
            ci,
            ki,
            &alpha as *const f32 as *const _,
            device_addr(a) as *const _,
            t,
            la,
            device_addr(b) as *const _,
            t,
            lb,
            &beta as *const f32 as *const _,
            device_addr(c) as *mut _,
            t,
            lc,
            blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_PEDANTIC,
            blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(|e| cuda(CudaError::cublas(format!("SGEMM {rows}x{cols}x{k}"))(e)))
}

/// `Y[m, n] = X[m, k] W[n, k]^T`, row-major (poisoned first with `poison`).
fn linear(
    rt: &CudaRuntime,
    x: &CudaSlice<f32>,
    (m, k): (usize, usize),
    w: &CudaSlice<f32>,
    n: usize,
    poison: bool,
) -> Result<CudaSlice<f32>, ConvertError> {
    let mut y = output(rt, m * n, poison)?;
    // Column-major: Y^T[n, m] = W (stored as W^T, k x n) transposed times X^T[k, m].
    sgemm(rt, (true, false), (n, m, k), w, k, x, k, &mut y)?;
    Ok(y)
}

/// `y = act(y + bias)` over `m` rows of `n`.
fn bias_act(
    rt: &CudaRuntime,
    y: &mut CudaSlice<f32>,
    bias: &CudaSlice<f32>,
    (m, n): (usize, usize),
    act: i32,
) -> Result<(), ConvertError> {
    let total = m * n;
    if y.len() < total || bias.len() < n {
        return Err(ConvertError::Calibration(format!(
            "bias of {} values for {m} rows of {n} in {} values",
            bias.len(),
            y.len()
        )));
    }
    let name = "calib_bias_act_f32";
    let f = rt.kernel(name, 0).map_err(cuda)?;
    let (total_arg, n_arg) = (total as i64, int(n, "width")?);
    let mut b = rt.stream().launch_builder(&f);
    b.arg(&mut *y)
        .arg(bias)
        .arg(&total_arg)
        .arg(&n_arg)
        .arg(&act);
    // SAFETY: y holds m * n values and bias n (checked above); the arguments follow the
    // kernel's parameters (float*, const float*, long long, int, int).
    unsafe { rt.launch(&mut b, name, grid_1d(total), (THREADS, 1, 1), 0) }.map_err(cuda)
}

/// `y[r] = LayerNorm(y[r] + bias + residual[r]) * gamma + beta` over `m` rows of `n`.
#[allow(clippy::too_many_arguments)]
fn bias_residual_ln(
    rt: &CudaRuntime,
    y: &mut CudaSlice<f32>,
    bias: &CudaSlice<f32>,
    residual: &CudaSlice<f32>,
    (gamma, beta): (&CudaSlice<f32>, &CudaSlice<f32>),
    (m, n): (usize, usize),
    eps: f32,
) -> Result<(), ConvertError> {
    if m == 0 {
        return Ok(());
    }
    let short = [bias.len(), gamma.len(), beta.len()].iter().any(|&l| l < n);
    if y.len() < m * n || residual.len() < m * n || short {
        return Err(ConvertError::Calibration(format!(
            "LayerNorm of {m} rows of {n}: buffers of {}, {} values",
            y.len(),
            residual.len()
        )));
    }
    let rows = u32::try_from(m)
        .map_err(|_| ConvertError::Calibration(format!("{m} rows are too many")))?;
    let name = "calib_bias_residual_ln_f32";
    let f = rt.kernel(name, 0).map_err(cuda)?;
    let n_arg = int(n, "width")?;
    let mut b = rt.stream().launch_builder(&f);
    b.arg(&mut *y)
        .arg(bias)
        .arg(residual)
        .arg(gamma)
        .arg(beta)
        .arg(&n_arg)
        .arg(&eps);
    // SAFETY: y and the residual hold m rows of n, the vectors n values (checked above); one
    // block per row; the arguments follow the kernel's parameters.
    unsafe { rt.launch(&mut b, name, (rows, 1, 1), (THREADS, 1, 1), 0) }.map_err(cuda)
}

/// One layer of one model on the GPU: weights `[out, in]` row-major f32, Q, K and V stacked.
pub(crate) struct CudaLayer<'a> {
    rt: &'a CudaRuntime,
    poison: bool,
    hidden: usize,
    heads: usize,
    head_dim: usize,
    inter: usize,
    act: i32,
    eps: f32,
    qkv_w: CudaSlice<f32>,
    qkv_b: CudaSlice<f32>,
    out_w: CudaSlice<f32>,
    out_b: CudaSlice<f32>,
    ln1: (CudaSlice<f32>, CudaSlice<f32>),
    inter_w: CudaSlice<f32>,
    inter_b: CudaSlice<f32>,
    ffn_w: CudaSlice<f32>,
    ffn_b: CudaSlice<f32>,
    ln2: (CudaSlice<f32>, CudaSlice<f32>),
}

impl<'a> CudaLayer<'a> {
    fn load(
        owner: &'a CudaCalibration,
        config: &ModelConfig,
        layer: usize,
        get: &dyn Fn(&str) -> Result<TensorView<'a>, RuntimeError>,
    ) -> Result<CudaLayer<'a>, ConvertError> {
        let rt = &owner.rt;
        let hidden = config.hidden_size as usize;
        let heads = config.heads_per_layer.get(layer).copied().unwrap_or(0) as usize;
        let head_dim = config.head_dim as usize;
        if heads == 0 {
            return Err(ConvertError::Calibration(format!(
                "layer {layer} has no attention heads to calibrate"
            )));
        }
        let width = heads * head_dim;
        let inter = match get(&LayerTensor::IntermediateWeight.name(layer))
            .map_err(|e| ConvertError::Calibration(e.to_string()))?
            .shape
        {
            [n, k] if *k == hidden as u64 && *n > 0 => *n as usize,
            other => {
                return Err(ConvertError::Tensor {
                    name: LayerTensor::IntermediateWeight.name(layer),
                    reason: format!("shape {other:?} is not [intermediate, {hidden}]"),
                })
            }
        };
        let shape_of = |t: LayerTensor| -> Vec<u64> {
            use LayerTensor as T;
            let (w, h, i) = (width as u64, hidden as u64, inter as u64);
            match t {
                T::QueryWeight | T::KeyWeight | T::ValueWeight => vec![w, h],
                T::QueryBias | T::KeyBias | T::ValueBias => vec![w],
                T::OutputWeight => vec![h, w],
                T::IntermediateWeight => vec![i, h],
                T::IntermediateBias => vec![i],
                T::FfnOutputWeight => vec![h, i],
                _ => vec![h],
            }
        };
        let mut host: Vec<Vec<f32>> = Vec::with_capacity(LayerTensor::ALL.len());
        for t in LayerTensor::ALL {
            let name = t.name(layer);
            let v = get(&name).map_err(|e| ConvertError::Calibration(e.to_string()))?;
            let want = shape_of(t);
            if v.shape != want.as_slice() {
                return Err(ConvertError::Tensor {
                    name,
                    reason: format!("shape {:?}, expected {want:?}", v.shape),
                });
            }
            host.push(v.to_dense_f32());
        }
        let up = |v: &[f32]| rt.upload(v).map_err(cuda);
        let cat = |a: usize, b: usize, c: usize| -> Vec<f32> {
            [&host[a], &host[b], &host[c]]
                .iter()
                .flat_map(|v| v.iter().copied())
                .collect()
        };
        let act = match config.activation {
            Activation::Gelu => 1,
            Activation::GeluTanh => 2,
            Activation::Relu => 3,
        };
        Ok(CudaLayer {
            rt,
            poison: owner.poison.load(Ordering::Relaxed),
            hidden,
            heads,
            head_dim,
            inter,
            act,
            eps: config.layer_norm_eps as f32,
            qkv_w: up(&cat(0, 2, 4))?,
            qkv_b: up(&cat(1, 3, 5))?,
            out_w: up(&host[6])?,
            out_b: up(&host[7])?,
            ln1: (up(&host[8])?, up(&host[9])?),
            inter_w: up(&host[10])?,
            inter_b: up(&host[11])?,
            ffn_w: up(&host[12])?,
            ffn_b: up(&host[13])?,
            ln2: (up(&host[14])?, up(&host[15])?),
        })
    }

    /// Rows of `x` of width `width`, or an error naming `what`.
    fn rows(x: &[f32], width: usize, what: &str) -> Result<usize, ConvertError> {
        if width == 0 || x.len() % width != 0 {
            return Err(ConvertError::Calibration(format!(
                "{what} of {} values is not rows of width {width}",
                x.len()
            )));
        }
        Ok(x.len() / width)
    }

    fn download(&self, y: &CudaSlice<f32>, n: usize) -> Result<Vec<f32>, ConvertError> {
        self.rt.download(y, n).map_err(cuda)
    }

    /// Q, K, V and attention on the layer input `x`: the attention context.
    pub(crate) fn context(&self, x: &[f32], lengths: &[usize]) -> Result<Vec<f32>, ConvertError> {
        let (h, width) = (self.hidden, self.heads * self.head_dim);
        let m: usize = lengths.iter().sum();
        if x.len() != m * h {
            return Err(ConvertError::Calibration(format!(
                "layer input of {} values for {m} tokens of width {h}",
                x.len()
            )));
        }
        if m == 0 {
            return Ok(Vec::new());
        }
        let rt = self.rt;
        let xd = rt.upload(x).map_err(cuda)?;
        let mut qkv = linear(rt, &xd, (m, h), &self.qkv_w, 3 * width, self.poison)?;
        bias_act(rt, &mut qkv, &self.qkv_b, (m, 3 * width), 0)?;
        let (mut start, mut len) = (Vec::with_capacity(m), Vec::with_capacity(m));
        let mut s = 0usize;
        for &l in lengths {
            for _ in 0..l {
                start.push(int(s, "token offset")?);
                len.push(int(l, "sequence length")?);
            }
            s += l;
        }
        let longest = lengths.iter().copied().max().unwrap_or(0);
        let smem = (self.head_dim + longest) * std::mem::size_of::<f32>();
        // The default 48 KiB of shared memory per block, less the kernel's static reduction array.
        if smem + 32 * std::mem::size_of::<f32>() > 48 * 1024 {
            return Err(ConvertError::Calibration(format!(
                "a sequence of {longest} tokens is too long for the GPU calibration attention"
            )));
        }
        let (start_d, len_d) = (
            rt.upload(&start).map_err(cuda)?,
            rt.upload(&len).map_err(cuda)?,
        );
        let mut ctx = output(rt, m * width, self.poison)?;
        let name = "calib_attention_f32";
        let f = rt.kernel(name, smem as u32).map_err(cuda)?;
        let (ld, w, hd) = (
            int(3 * width, "width")?,
            int(width, "width")?,
            int(self.head_dim, "head size")?,
        );
        let scale = 1.0f32 / (self.head_dim as f32).sqrt();
        let tokens = u32::try_from(m)
            .map_err(|_| ConvertError::Calibration(format!("{m} tokens are too many")))?;
        let mut b = rt.stream().launch_builder(&f);
        b.arg(&qkv)
            .arg(&mut ctx)
            .arg(&start_d)
            .arg(&len_d)
            .arg(&ld)
            .arg(&w)
            .arg(&hd)
            .arg(&scale);
        // SAFETY: qkv holds m rows of 3 * width, ctx m rows of width; start and len hold m
        // values, each token's sequence lies within the m rows (built from `lengths`, which sum
        // to m); shared memory covers head_dim + the longest sequence; one block per (token,
        // head); the arguments follow the kernel's parameters.
        unsafe {
            rt.launch(
                &mut b,
                name,
                (tokens, self.heads as u32, 1),
                (ATTN_THREADS, 1, 1),
                smem as u32,
            )
        }
        .map_err(cuda)?;
        self.download(&ctx, m * width)
    }

    /// Output projection of the context, residual `x`, first LayerNorm.
    pub(crate) fn attention_out(
        &self,
        context: &[f32],
        x: &[f32],
    ) -> Result<Vec<f32>, ConvertError> {
        let (h, width) = (self.hidden, self.heads * self.head_dim);
        let m = Self::rows(x, h, "layer input")?;
        if context.len() != m * width {
            return Err(ConvertError::Calibration(format!(
                "attention context of {} values for {m} tokens",
                context.len()
            )));
        }
        if m == 0 {
            return Ok(Vec::new());
        }
        let rt = self.rt;
        let (cd, xd) = (
            rt.upload(context).map_err(cuda)?,
            rt.upload(x).map_err(cuda)?,
        );
        let mut y = linear(rt, &cd, (m, width), &self.out_w, h, self.poison)?;
        let ln = (&self.ln1.0, &self.ln1.1);
        bias_residual_ln(rt, &mut y, &self.out_b, &xd, ln, (m, h), self.eps)?;
        self.download(&y, m * h)
    }

    /// First FFN linear and its activation.
    pub(crate) fn intermediate(&self, attention_out: &[f32]) -> Result<Vec<f32>, ConvertError> {
        let h = self.hidden;
        let m = Self::rows(attention_out, h, "attention output")?;
        if m == 0 {
            return Ok(Vec::new());
        }
        let rt = self.rt;
        let ad = rt.upload(attention_out).map_err(cuda)?;
        let mut y = linear(rt, &ad, (m, h), &self.inter_w, self.inter, self.poison)?;
        bias_act(rt, &mut y, &self.inter_b, (m, self.inter), self.act)?;
        self.download(&y, m * self.inter)
    }

    /// Second FFN linear, residual `attention_out`, second LayerNorm: the layer output.
    pub(crate) fn output(
        &self,
        intermediate: &[f32],
        attention_out: &[f32],
    ) -> Result<Vec<f32>, ConvertError> {
        let h = self.hidden;
        let m = Self::rows(attention_out, h, "attention output")?;
        if intermediate.len() != m * self.inter {
            return Err(ConvertError::Calibration(format!(
                "FFN activations of {} values for {m} tokens",
                intermediate.len()
            )));
        }
        if m == 0 {
            return Ok(Vec::new());
        }
        let rt = self.rt;
        let (id, ad) = (
            rt.upload(intermediate).map_err(cuda)?,
            rt.upload(attention_out).map_err(cuda)?,
        );
        let mut y = linear(rt, &id, (m, self.inter), &self.ffn_w, h, self.poison)?;
        let ln = (&self.ln2.0, &self.ln2.1);
        bias_residual_ln(rt, &mut y, &self.ffn_b, &ad, ln, (m, h), self.eps)?;
        self.download(&y, m * h)
    }
}

/// The statistics of one linear's inputs on the GPU: `X_p'X_p` and `X_p'X_d` (`n x n`, f64) on the
/// device, the column sums and the token count (the ones column) on the host.
pub(crate) struct CudaStats<'a> {
    rt: &'a CudaRuntime,
    n: usize,
    g: CudaSlice<f64>,
    c: CudaSlice<f64>,
    prod: CudaSlice<f32>,
    sp: Vec<f64>,
    sd: Vec<f64>,
    tokens: usize,
}

impl CudaStats<'_> {
    /// `acc += prod` in f64 over `n * n` values.
    fn add(
        rt: &CudaRuntime,
        acc: &mut CudaSlice<f64>,
        prod: &CudaSlice<f32>,
        nn: usize,
    ) -> Result<(), ConvertError> {
        if acc.len() < nn || prod.len() < nn {
            return Err(ConvertError::Calibration(format!(
                "statistics of {} values for a product of {nn}",
                acc.len()
            )));
        }
        let name = "calib_add_f64";
        let f = rt.kernel(name, 0).map_err(cuda)?;
        let total = nn as i64;
        let mut b = rt.stream().launch_builder(&f);
        b.arg(&mut *acc).arg(prod).arg(&total);
        // SAFETY: acc and prod hold n * n values (checked above); the arguments follow the
        // kernel's parameters (double*, const float*, long long).
        unsafe { rt.launch(&mut b, name, grid_1d(nn), (THREADS, 1, 1), 0) }.map_err(cuda)
    }

    /// Adds a batch: `[tokens, n]` inputs of the pruned and of the dense model. The products are
    /// taken in f32 over the batch and summed into f64, as [`LinearStats::accumulate`] does.
    pub(crate) fn accumulate(
        &mut self,
        x_pruned: &[f32],
        x_dense: &[f32],
    ) -> Result<(), ConvertError> {
        let n = self.n;
        if n == 0 || x_pruned.len() % n != 0 || x_pruned.len() != x_dense.len() {
            return Err(ConvertError::Calibration(format!(
                "calibration inputs: expected a multiple of {n} values, got {}",
                x_pruned.len().max(x_dense.len())
            )));
        }
        let m = x_pruned.len() / n;
        if m == 0 {
            return Ok(());
        }
        let rt = self.rt;
        let (xp, xd) = (
            rt.upload(x_pruned).map_err(cuda)?,
            rt.upload(x_dense).map_err(cuda)?,
        );
        // Row-major [m, n] is column-major X^T (n x m, stride n). G = Xp' Xp; C = Xp' Xd, whose
        // row-major layout is the column-major Xd' Xp.
        sgemm(rt, (false, true), (n, n, m), &xp, n, &xp, n, &mut self.prod)?;
        Self::add(rt, &mut self.g, &self.prod, n * n)?;
        sgemm(rt, (false, true), (n, n, m), &xd, n, &xp, n, &mut self.prod)?;
        Self::add(rt, &mut self.c, &self.prod, n * n)?;
        for (a, s) in self.sp.iter_mut().zip(column_sums(x_pruned, n)) {
            *a += s;
        }
        for (a, s) in self.sd.iter_mut().zip(column_sums(x_dense, n)) {
            *a += s;
        }
        self.tokens += m;
        Ok(())
    }

    /// The statistics accumulated, on the host.
    pub(crate) fn finish(self) -> Result<LinearStats, ConvertError> {
        let nn = self.n * self.n;
        let g = self.rt.download(&self.g, nn).map_err(cuda)?;
        let c = self.rt.download(&self.c, nn).map_err(cuda)?;
        LinearStats::from_products(self.n, &g, &c, &self.sp, &self.sd, self.tokens)
            .map_err(|e| ConvertError::Calibration(e.to_string()))
    }
}
