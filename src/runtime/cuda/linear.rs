//! The safe entry point of the linear layer: a weight of an uploaded model run on activations in
//! device buffers, every size checked before the launch.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use ets::format::EtsFile;
//! use ets::runtime::cuda::{CudaRuntime, DeviceModel, Dispatcher, ElemType};
//! use ets::runtime::cuda::linear::{run_linear, LinearCall};
//! let rt = CudaRuntime::new(0)?;
//! let file = EtsFile::open("model.ets")?;
//! let model = DeviceModel::upload(&rt, &file)?; // one allocation, weights read in place
//! let dispatcher = Dispatcher::new();
//! let (m, k, n) = (128, 384, 1536);
//! let x = rt.upload(&vec![0u16; m * k])?; // f16 activations
//! let mut y = rt.alloc(m * n * 2)?;
//! let call = LinearCall {
//!     weight: "encoder.layer.0.intermediate.dense.weight",
//!     bias: Some("encoder.layer.0.intermediate.dense.bias"),
//!     gelu: true,
//!     residual: None,
//! };
//! run_linear(&rt, &dispatcher, &model, &call, &x, m, &mut y)?;
//! # Ok(()) }
//! ```

use super::device::{CudaRuntime, DevBuf};
use super::dispatch::{Choice, Dispatcher};
use super::epilogue::Epilogue;
use super::error::CudaError;
use super::gemm::Scratch;
use super::upload::DeviceModel;

/// What to run: a 2-D weight of the model, optionally its 1-D bias, GELU and a residual.
#[derive(Debug, Clone, Copy)]
pub struct LinearCall<'a> {
    /// Name of the 2-D weight tensor (`N x K`).
    pub weight: &'a str,
    /// Name of a 1-D tensor of `N` values added to every row, if any.
    pub bias: Option<&'a str>,
    /// Apply erf-GELU after the bias.
    pub gelu: bool,
    /// An `M x N` buffer of Y's element type added last, if any.
    pub residual: Option<&'a DevBuf>,
}

fn too_small(what: &str, need: usize, have: usize) -> CudaError {
    CudaError::Invalid(format!("linear: {what} holds {have} bytes, needs {need}"))
}

/// `Y = act(X W^T + b) + residual` for `m` tokens: X (`m x K`) and Y (`m x N`) hold 16-bit values
/// of the weight's element type, row-major. The dispatcher picks the implementation (timed once
/// per weight, mask and token bucket). The model is borrowed, so its weights stay alive; every
/// buffer's size is checked here.
pub fn run_linear(
    rt: &CudaRuntime,
    dispatcher: &Dispatcher,
    model: &DeviceModel,
    call: &LinearCall<'_>,
    x: &DevBuf,
    m: usize,
    y: &mut DevBuf,
) -> Result<Choice, CudaError> {
    let w = model.linear(call.weight)?;
    let (n, k) = w.dims();
    if x.len() < m * k * 2 {
        return Err(too_small("X", m * k * 2, x.len()));
    }
    if y.len() < m * n * 2 {
        return Err(too_small("Y", m * n * 2, y.len()));
    }
    let bias = match call.bias {
        Some(name) => {
            let t = model.tensor(name)?;
            if t.shape.iter().product::<u64>() != n as u64 {
                return Err(CudaError::Tensor {
                    name: name.into(),
                    detail: format!("bias of shape {:?} for {n} out features", t.shape),
                });
            }
            model.f32_values(name)?
        }
        None => 0,
    };
    let residual = match call.residual {
        Some(r) if r.len() < m * n * 2 => {
            return Err(too_small("the residual", m * n * 2, r.len()))
        }
        Some(r) => r.ptr(),
        None => 0,
    };
    let ep = Epilogue {
        bias,
        gelu: call.gelu,
        residual,
    };
    let mut scratch = Scratch::default();
    // SAFETY: X and Y were checked to hold m x K and m x N 16-bit values, the residual m x N, the
    // bias is an N-value f32 tensor of the model, and the model (which owns the weight's
    // allocation) is borrowed for the whole call; all are allocations of this runtime.
    unsafe { dispatcher.run_linear(rt, call.weight, x.ptr(), m, &w, &ep, y.ptr(), &mut scratch) }
}
