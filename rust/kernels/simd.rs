//! Runtime choice of instruction set. The crate is compiled for the x86-64 baseline (so one wheel
//! runs everywhere); hot loops are wrapped in `dispatch`, which runs them inside a function
//! compiled for AVX-512 or AVX2+FMA when this CPU has it. Everything the loop calls must be
//! `#[inline(always)]` (or inlined anyway) to be compiled for the wider instruction set. On
//! aarch64 every loop is compiled for NEON already; its level only picks the GEMM micro-kernel.
use std::sync::atomic::{AtomicU8, Ordering};

/// The vector instruction sets `dispatch` can choose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Avx512,
    Avx2,
    /// aarch64's Advanced SIMD (every aarch64 CPU has it, fused multiply-add included): the
    /// GEMM's NEON micro-kernel. Other loops are compiled for it anyway.
    Neon,
    Baseline,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Avx512 => "avx512",
            Level::Avx2 => "avx2",
            Level::Neon => "neon",
            Level::Baseline => "baseline",
        }
    }
}

/// The levels this architecture's kernels have, widest first.
pub const LEVELS: &[Level] = if cfg!(target_arch = "x86_64") {
    &[Level::Avx512, Level::Avx2, Level::Baseline]
} else if cfg!(target_arch = "aarch64") {
    &[Level::Neon, Level::Baseline]
} else {
    &[Level::Baseline]
};

/// The instruction set the kernels use: the widest this CPU has, capped by the environment
/// variable `FASTAD_SIMD` (a name of `LEVELS`, read once, at the first call) so
/// the narrower paths can be tested and measured on a wider CPU. Decided once for the process:
/// packed buffers are laid out for it.
#[inline]
pub fn level() -> Level {
    match LEVEL.load(Ordering::Relaxed) {
        0 => decide(),
        code => LEVELS[code as usize - 1],
    }
}

/// `level()`'s choice once made: 0 before, else 1 + its index in `LEVELS`.
static LEVEL: AtomicU8 = AtomicU8::new(0);

#[cold]
fn decide() -> Level {
    let cap = std::env::var("FASTAD_SIMD").ok().and_then(|v| parse(&v));
    let level = match cap {
        Some(cap) if rank(cap) > rank(detected()) => cap,
        _ => detected(),
    };
    LEVEL.store(rank(level) + 1, Ordering::Relaxed);
    level
}

/// The level's index in `LEVELS` (0 for the widest); levels of another architecture rank
/// as the widest, so a cap naming one is ignored.
fn rank(level: Level) -> u8 {
    LEVELS.iter().position(|&l| l == level).unwrap_or(0) as u8
}

/// A level of this architecture by its `name`, or None.
pub fn parse(name: &str) -> Option<Level> {
    LEVELS
        .iter()
        .copied()
        .find(|l| l.name().eq_ignore_ascii_case(name.trim()))
}

/// The widest instruction set this CPU has (std caches the detection).
fn detected() -> Level {
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
    #[cfg(target_arch = "aarch64")]
    return Level::Neon;
    #[allow(unreachable_code)]
    Level::Baseline
}

/// Evaluates `$body` twice over, with `$fma` a `const bool`: true where `level()` has fused
/// multiply-add (AVX2, AVX-512 and NEON), for `vmath::madd` inside the body's `dispatch`.
macro_rules! with_fma {
    ($fma:ident => $body:expr) => {
        if $crate::kernels::simd::level() == $crate::kernels::simd::Level::Baseline {
            const $fma: bool = false;
            $body
        } else {
            const $fma: bool = true;
            $body
        }
    };
}
pub(crate) use with_fma;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_by_name_and_the_cap_only_narrows() {
        assert_eq!(parse("baseline"), Some(Level::Baseline));
        assert_eq!(parse("sse4"), None);
        if cfg!(target_arch = "x86_64") {
            assert_eq!(parse(" AVX2 "), Some(Level::Avx2));
            assert_eq!(parse("neon"), None); // another architecture's
        }
        if cfg!(target_arch = "aarch64") {
            assert_eq!((parse("NEON"), parse("avx2")), (Some(Level::Neon), None));
            assert_eq!(detected(), Level::Neon);
        }
        // Whatever FASTAD_SIMD says, the level is one this CPU has.
        assert!(rank(level()) >= rank(detected()));
        if let Some(cap) = std::env::var("FASTAD_SIMD").ok().and_then(|v| parse(&v)) {
            assert!(rank(level()) >= rank(cap));
        }
    }
}
