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
//! let mut y = rt.alloc::<u16>(m * n)?;
//! let call = LinearCall {
//!     weight: "encoder.layer.0.intermediate.dense.weight",
//!     bias: Some("encoder.layer.0.intermediate.dense.bias"),
//!     gelu: true,
//!     residual: None,
//! };
//! run_linear(&rt, &dispatcher, &model, &call, &x.as_view(), m, &mut y.as_view_mut())?;
//! # Ok(()) }
//! ```

use cudarc::driver::{CudaView, CudaViewMut};

use super::device::CudaRuntime;
use super::dispatch::{Choice, Dispatcher};
use super::epilogue::Epilogue;
use super::error::CudaError;
use super::gemm::Scratch;
use super::upload::DeviceModel;

/// What to run: a 2-D weight of the model, optionally its 1-D bias, GELU and a residual.
#[derive(Debug)]
pub struct LinearCall<'a> {
    /// Name of the 2-D weight tensor (`N x K`).
    pub weight: &'a str,
    /// Name of a 1-D tensor of `N` values added to every row, if any.
    pub bias: Option<&'a str>,
    /// Apply erf-GELU after the bias.
    pub gelu: bool,
    /// `M x N` values of Y's element type added last, if any.
    pub residual: Option<CudaView<'a, u16>>,
}

fn too_small(what: &str, need: usize, have: usize) -> CudaError {
    CudaError::Invalid(format!("linear: {what} holds {have} values, needs {need}"))
}

/// `Y = act(X W^T + b) + residual` for `m` tokens: X (`m x K`) and Y (`m x N`) hold 16-bit values
/// of the weight's element type, row-major. The dispatcher picks the implementation (timed once
/// per weight, mask and token bucket). The model is borrowed, so its weights stay alive; every
/// buffer's size is checked.
pub fn run_linear(
    rt: &CudaRuntime,
    dispatcher: &Dispatcher,
    model: &DeviceModel,
    call: &LinearCall<'_>,
    x: &CudaView<'_, u16>,
    m: usize,
    y: &mut CudaViewMut<'_, u16>,
) -> Result<Choice, CudaError> {
    let w = model.linear(call.weight)?;
    let (n, k) = w.dims();
    if x.len() < m * k {
        return Err(too_small("X", m * k, x.len()));
    }
    if y.len() < m * n {
        return Err(too_small("Y", m * n, y.len()));
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
            Some(model.f32_values(name)?)
        }
        None => None,
    };
    let residual = match &call.residual {
        Some(r) if r.len() < m * n => return Err(too_small("the residual", m * n, r.len())),
        Some(r) => Some(r.slice(..)),
        None => None,
    };
    let ep = Epilogue {
        bias,
        gelu: call.gelu,
        residual,
    };
    let mut scratch = Scratch::default();
    // SAFETY: the weight is the model's, which is borrowed (so its allocation is alive) for the
    // whole call; X, Y and the epilogue are typed buffers checked above and by the launch.
    unsafe { dispatcher.run_linear(rt, call.weight, x, m, &w, &ep, y, &mut scratch) }
}
