//! What follows a linear layer's product on the device.

/// What follows the product: bias (f32 on the device), erf-GELU, residual add (same type as Y).
///
/// The addresses are raw: every launch that takes an `Epilogue` is `unsafe` and relies on `bias`
/// holding `N` f32 values and `residual` `M x N` values of Y's type (or being 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Epilogue {
    /// Device address of `N` f32 bias values, or 0.
    pub bias: u64,
    /// Apply erf-GELU after the bias.
    pub gelu: bool,
    /// Device address of an `M x N` residual (row-major, Y's type) added last, or 0.
    pub residual: u64,
}
