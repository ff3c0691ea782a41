//! Where calibrated pruning computes: the stage forward passes of the dense and the pruned model
//! (Q/K/V with attention, the attention output, the FFN's two linears) and the statistics of a
//! linear's inputs ([`LinearStats`]).
//!
//! Two backends give the same numbers up to rounding: the CPU runtime's stage functions and
//! [`LinearStats::accumulate`] ([`CalibrationBackend::cpu`]), or the GPU
//! ([`CalibrationBackend::cuda`]): the linears as cuBLAS SGEMMs in f32 (no TF32), attention,
//! LayerNorm and the activation as f32 kernels, the per-batch input products as SGEMMs summed in
//! f64 on the device. Each is deterministic on its own device; the two may differ in the last
//! bits, and so may the files they calibrate. The layer-by-layer algorithm and the activation
//! file stay on the host either way.
//!
//! ```no_run
//! use ets::convert::backend::CalibrationBackend;
//! use ets::runtime::shared::Device;
//! let (backend, note) = CalibrationBackend::select(Device::Auto)?;
//! if let Some(n) = note {
//!     eprintln!("{n}");
//! }
//! println!("calibrating on {}", backend.describe());
//! # Ok::<(), ets::convert::ConvertError>(())
//! ```

use super::backend_cuda::{CudaCalibration, CudaLayer, CudaStats};
use super::ConvertError;
use crate::format::{EtsFile, TensorView};
use crate::prune::calibrated::LinearStats;
use crate::runtime::cpu::{CpuEncoder, Layer};
use crate::runtime::shared::Device;
use crate::runtime::{Encoder, RuntimeError};

fn rt_err(e: RuntimeError) -> ConvertError {
    ConvertError::Calibration(e.to_string())
}

/// The device calibration computes on.
pub struct CalibrationBackend {
    kind: Kind,
}

enum Kind {
    Cpu,
    Cuda(Box<CudaCalibration>),
}

impl std::fmt::Debug for CalibrationBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl CalibrationBackend {
    /// The CPU runtime.
    pub fn cpu() -> CalibrationBackend {
        CalibrationBackend { kind: Kind::Cpu }
    }

    /// GPU `ordinal`: [`ConvertError::DeviceUnavailable`] when the driver, a GPU, NVRTC or
    /// cuBLAS is missing.
    pub fn cuda(ordinal: usize) -> Result<CalibrationBackend, ConvertError> {
        let c = CudaCalibration::new(ordinal)?;
        Ok(CalibrationBackend {
            kind: Kind::Cuda(Box::new(c)),
        })
    }

    /// The backend for `device`, and for `auto` without a usable GPU the note that says why the
    /// CPU is used. `cuda` without a usable GPU is [`ConvertError::DeviceUnavailable`].
    pub fn select(device: Device) -> Result<(CalibrationBackend, Option<String>), ConvertError> {
        match device {
            Device::Cpu => Ok((Self::cpu(), None)),
            Device::Cuda => Ok((Self::cuda(0)?, None)),
            Device::Auto => match Self::cuda(0) {
                Ok(b) => Ok((b, None)),
                Err(e) => {
                    let reason = match e {
                        ConvertError::DeviceUnavailable { reason } => reason,
                        other => other.to_string(),
                    };
                    Ok((Self::cpu(), Some(format!("auto: no usable GPU: {reason}"))))
                }
            },
        }
    }

    /// Test aid: on the GPU, fill every output buffer with NaN before it is computed, so that a
    /// value the GPU fails to write shows as NaN. No effect on the CPU.
    pub fn set_poison(&self, on: bool) {
        if let Kind::Cuda(c) = &self.kind {
            c.set_poison(on);
        }
    }

    /// Whether this is the GPU backend.
    pub fn is_cuda(&self) -> bool {
        matches!(self.kind, Kind::Cuda(_))
    }

    /// The device in words: `CPU`, or `CUDA` with the GPU's name and architecture.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Cpu => "CPU".to_string(),
            Kind::Cuda(c) => format!("CUDA ({})", c.device_name()),
        }
    }

    /// Layer `layer` of `enc`'s model with the tensors of the f32 file `enc` reads.
    pub fn dense_layer<'a>(
        &'a self,
        enc: &'a CpuEncoder<'a>,
        file: &'a EtsFile,
        layer: usize,
    ) -> Result<LayerStages<'a>, ConvertError> {
        let kind = match &self.kind {
            Kind::Cpu => LayerKind::CpuBorrowed(enc.layer(layer).map_err(rt_err)?),
            Kind::Cuda(c) => {
                let get = |name: &str| file.tensor(name).map_err(RuntimeError::from);
                LayerKind::Cuda(Box::new(c.layer(enc.config(), layer, &get)?))
            }
        };
        Ok(LayerStages { enc, kind })
    }

    /// Layer `layer` of `enc`'s configuration with its tensors from `get` (dense f32 views):
    /// the pruned model, whose fitted tensors live in memory.
    pub(crate) fn layer_from<'a>(
        &'a self,
        enc: &'a CpuEncoder<'a>,
        layer: usize,
        get: &dyn Fn(&str) -> Result<TensorView<'a>, RuntimeError>,
    ) -> Result<LayerStages<'a>, ConvertError> {
        let kind = match &self.kind {
            Kind::Cpu => LayerKind::CpuOwned(Box::new(enc.layer_from(layer, get).map_err(rt_err)?)),
            Kind::Cuda(c) => LayerKind::Cuda(Box::new(c.layer(enc.config(), layer, get)?)),
        };
        Ok(LayerStages { enc, kind })
    }

    /// Empty statistics of a linear with `inputs` input features.
    pub fn statistics(&self, inputs: usize) -> Result<Statistics<'_>, ConvertError> {
        Ok(Statistics {
            kind: match &self.kind {
                Kind::Cpu => StatsKind::Cpu(LinearStats::new(inputs)),
                Kind::Cuda(c) => StatsKind::Cuda(Box::new(c.statistics(inputs)?)),
            },
        })
    }
}

/// One layer of one model, ready to run its stages on packed activations (`[tokens, width]`).
pub struct LayerStages<'a> {
    enc: &'a CpuEncoder<'a>,
    kind: LayerKind<'a>,
}

enum LayerKind<'a> {
    CpuBorrowed(&'a Layer<'a>),
    CpuOwned(Box<Layer<'a>>),
    Cuda(Box<CudaLayer<'a>>),
}

enum Target<'s> {
    Cpu(&'s Layer<'s>),
    Cuda(&'s CudaLayer<'s>),
}

impl LayerStages<'_> {
    fn target(&self) -> Target<'_> {
        match &self.kind {
            LayerKind::CpuBorrowed(l) => Target::Cpu(l),
            LayerKind::CpuOwned(l) => Target::Cpu(l),
            LayerKind::Cuda(c) => Target::Cuda(c),
        }
    }

    /// Q, K, V and attention on the layer input `x` of sequences of `lengths` tokens: the
    /// attention context.
    pub fn context(&self, x: &[f32], lengths: &[usize]) -> Result<Vec<f32>, ConvertError> {
        match self.target() {
            Target::Cpu(l) => self.enc.stage_context(l, x, lengths).map_err(rt_err),
            Target::Cuda(c) => c.context(x, lengths),
        }
    }

    /// Output projection of `context`, residual `x`, first LayerNorm.
    pub fn attention_out(&self, context: &[f32], x: &[f32]) -> Result<Vec<f32>, ConvertError> {
        match self.target() {
            Target::Cpu(l) => self.enc.stage_attention_out(l, context, x).map_err(rt_err),
            Target::Cuda(c) => c.attention_out(context, x),
        }
    }

    /// First FFN linear and its activation.
    pub fn intermediate(&self, attention_out: &[f32]) -> Result<Vec<f32>, ConvertError> {
        match self.target() {
            Target::Cpu(l) => self
                .enc
                .stage_intermediate(l, attention_out)
                .map_err(rt_err),
            Target::Cuda(c) => c.intermediate(attention_out),
        }
    }

    /// Second FFN linear, residual `attention_out`, second LayerNorm: the layer output.
    pub fn output(
        &self,
        intermediate: &[f32],
        attention_out: &[f32],
    ) -> Result<Vec<f32>, ConvertError> {
        match self.target() {
            Target::Cpu(l) => self
                .enc
                .stage_output(l, intermediate, attention_out)
                .map_err(rt_err),
            Target::Cuda(c) => c.output(intermediate, attention_out),
        }
    }
}

/// Statistics of one linear's inputs being accumulated batch by batch.
pub struct Statistics<'a> {
    kind: StatsKind<'a>,
}

enum StatsKind<'a> {
    Cpu(LinearStats),
    Cuda(Box<CudaStats<'a>>),
}

impl Statistics<'_> {
    /// Adds a batch: the inputs of the pruned and of the dense model, row-major
    /// `[tokens, inputs]` ([`LinearStats::accumulate`]).
    pub fn accumulate(&mut self, x_pruned: &[f32], x_dense: &[f32]) -> Result<(), ConvertError> {
        match &mut self.kind {
            StatsKind::Cpu(s) => s
                .accumulate(x_pruned, x_dense)
                .map_err(|e| ConvertError::Calibration(e.to_string())),
            StatsKind::Cuda(s) => s.accumulate(x_pruned, x_dense),
        }
    }

    /// The statistics accumulated.
    pub fn finish(self) -> Result<LinearStats, ConvertError> {
        match self.kind {
            StatsKind::Cpu(s) => Ok(s),
            StatsKind::Cuda(s) => s.finish(),
        }
    }
}
