//! The element types a program can run in: `f32` and `f64`.
use num_traits::Float as NumFloat;

/// A floating-point element type. Everything numeric in the crate is generic over it.
pub trait Float:
    NumFloat
    + Default
    + Send
    + Sync
    + std::iter::Sum
    + std::ops::AddAssign
    + std::fmt::Debug
    // The per-type micro-kernels (a layer below the GEMM, which is generic over `Float`).
    + crate::kernels::gemm::microkernel::GemmKernel
    + crate::kernels::gemm::mirror::MirrorTile
    + 'static
{
    /// The NumPy name of the type, for error messages.
    const NAME: &'static str;
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    /// e^x by `kernels::vmath`: vectorises in a loop, unlike `exp` (a libm call). `FMA` as in
    /// `vmath::madd` (`with_fma!` chooses it).
    fn vexp<const FMA: bool>(self) -> Self;
    /// e^−|x| by `kernels::vmath`, likewise: cheaper than `vexp` (sigmoid's and softplus's).
    fn vexp_neg_abs<const FMA: bool>(self) -> Self;
    /// tanh by `kernels::vmath`, likewise.
    fn vtanh<const FMA: bool>(self) -> Self;
}

impl Float for f32 {
    const NAME: &'static str = "float32";
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn vexp<const FMA: bool>(self) -> Self {
        crate::kernels::vmath::exp_f32::<FMA>(self)
    }
    #[inline(always)]
    fn vexp_neg_abs<const FMA: bool>(self) -> Self {
        crate::kernels::vmath::exp_neg_abs_f32::<FMA>(self)
    }
    #[inline(always)]
    fn vtanh<const FMA: bool>(self) -> Self {
        crate::kernels::vmath::tanh_f32::<FMA>(self)
    }
}

impl Float for f64 {
    const NAME: &'static str = "float64";
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn vexp<const FMA: bool>(self) -> Self {
        crate::kernels::vmath::exp_f64::<FMA>(self)
    }
    #[inline(always)]
    fn vexp_neg_abs<const FMA: bool>(self) -> Self {
        crate::kernels::vmath::exp_neg_abs_f64::<FMA>(self)
    }
    #[inline(always)]
    fn vtanh<const FMA: bool>(self) -> Self {
        crate::kernels::vmath::tanh_f64::<FMA>(self)
    }
}
