//! The sizes of this CPU's caches that the kernels' blocking depends on, read once.
use std::sync::atomic::{AtomicUsize, Ordering};

/// Assumed where the CPU does not tell: the smallest per-core L2 of the CPUs measured (Zen 1).
const DEFAULT_L2: usize = 512 << 10;

/// Bytes of one core's L2 cache: CPUID leaf 0x8000_0006 (which Intel and AMD both fill in) on
/// x86-64, else `DEFAULT_L2`.
pub fn l2_bytes() -> usize {
    static L2: AtomicUsize = AtomicUsize::new(0);
    match L2.load(Ordering::Relaxed) {
        0 => {
            let bytes = detected_l2().unwrap_or(DEFAULT_L2);
            L2.store(bytes, Ordering::Relaxed);
            bytes
        }
        bytes => bytes,
    }
}

#[cfg(target_arch = "x86_64")]
fn detected_l2() -> Option<usize> {
    use std::arch::x86_64::__cpuid;
    #[allow(unused_unsafe)] // `__cpuid` is safe in Rust 1.95, unsafe in 1.93 and before
    // SAFETY: every x86-64 CPU has CPUID; the leaf is read only when the CPU reports it.
    let kib = unsafe {
        if __cpuid(0x8000_0000).eax < 0x8000_0006 {
            return None;
        }
        __cpuid(0x8000_0006).ecx >> 16
    };
    (kib > 0).then_some(kib as usize * 1024)
}

#[cfg(not(target_arch = "x86_64"))]
fn detected_l2() -> Option<usize> {
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn l2_is_a_plausible_size() {
        let l2 = super::l2_bytes();
        assert!((64 << 10..=64 << 20).contains(&l2), "L2 of {l2} bytes");
        assert_eq!(super::l2_bytes(), l2);
    }
}
