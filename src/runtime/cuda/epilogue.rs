//! What follows a linear layer's product on the device.

use cudarc::driver::CudaView;

/// What follows the product: bias (`N` f32 values), erf-GELU, residual add (`M x N` values of Y's
/// 16-bit type, row-major). Launches check both lengths against the product's shape.
#[derive(Debug, Default)]
pub struct Epilogue<'a> {
    /// `N` f32 bias values added to every row.
    pub bias: Option<CudaView<'a, f32>>,
    /// Apply erf-GELU after the bias.
    pub gelu: bool,
    /// An `M x N` residual added last.
    pub residual: Option<CudaView<'a, u16>>,
}

impl Epilogue<'_> {
    /// Whether the epilogue does nothing.
    pub fn is_empty(&self) -> bool {
        self.bias.is_none() && !self.gelu && self.residual.is_none()
    }

    /// Checks the bias against `n` features and the residual against `m x n` values.
    pub fn check(&self, m: usize, n: usize) -> Result<(), super::CudaError> {
        if let Some(b) = &self.bias {
            if b.len() < n {
                return Err(super::CudaError::Invalid(format!(
                    "epilogue: the bias holds {} values, needs {n}",
                    b.len()
                )));
            }
        }
        if let Some(r) = &self.residual {
            if r.len() < m * n {
                return Err(super::CudaError::Invalid(format!(
                    "epilogue: the residual holds {} values, needs {}",
                    r.len(),
                    m * n
                )));
            }
        }
        Ok(())
    }
}
