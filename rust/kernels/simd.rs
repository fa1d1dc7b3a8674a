//! Runtime choice of instruction set. The crate is compiled for the x86-64 baseline (so one wheel
//! runs everywhere); hot loops are wrapped in `dispatch`, which runs them inside a function
//! compiled for AVX-512 or AVX2+FMA when this CPU has it. Everything the loop calls must be
//! `#[inline(always)]` (or inlined anyway) to be compiled for the wider instruction set.

/// The vector instruction sets `dispatch` can choose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Avx512,
    Avx2,
    Baseline,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Avx512 => "avx512",
            Level::Avx2 => "avx2",
            Level::Baseline => "baseline",
        }
    }
}

/// The widest instruction set this CPU has (std caches the detection, so this is cheap).
#[inline]
pub fn level() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512dq") && has!("avx512vl") {
            return Level::Avx512;
        }
        if has!("avx2") && has!("fma") {
            return Level::Avx2;
        }
    }
    Level::Baseline
}

/// Runs `body`, compiled for the widest vector instructions this CPU supports.
#[inline(always)]
pub fn dispatch<R>(body: impl FnOnce() -> R) -> R {
    match level() {
        // SAFETY: `level` detected the features on this CPU.
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => unsafe { with_avx512(body) },
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { with_avx2(body) },
        _ => body(),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
unsafe fn with_avx512<R>(body: impl FnOnce() -> R) -> R {
    body()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn with_avx2<R>(body: impl FnOnce() -> R) -> R {
    body()
}
