//! Runtime CPU-feature dispatch shared by the kernels.
//!
//! Hot loops are written once as `#[inline(always)]` generic bodies over [`Madd`]; a thin wrapper
//! compiled with `#[target_feature(enable = "avx2,fma")]` lets LLVM vectorize them 8 lanes wide
//! with fused multiply-adds, and a plain instantiation is the fallback on other CPUs.

/// Multiply-add, either fused (with hardware FMA) or plain.
pub(crate) trait Madd {
    /// `a * b + c`.
    fn madd(a: f32, b: f32, c: f32) -> f32;
}

/// Fused multiply-add (one rounding); only used where the CPU has FMA.
pub(crate) struct Fused;
impl Madd for Fused {
    #[inline(always)]
    fn madd(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

/// Separate multiply and add (the portable fallback).
pub(crate) struct Plain;
impl Madd for Plain {
    #[inline(always)]
    fn madd(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// Whether the AVX2 + FMA code paths may run on this CPU (detected once, then cached by std).
#[inline]
pub(crate) fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
