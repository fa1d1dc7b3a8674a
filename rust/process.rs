//! This process's id, for the objects that must notice they are in a forked child (the pool,
//! the bindings' locks). `getpid` is a system call (about 0.3 µs on a virtual machine, a tenth of
//! a small replay), so the id is cached and renewed in the child by an atfork handler, which is
//! registered before anyone records an id.
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;

/// 0 until the first call.
static PID: AtomicU32 = AtomicU32::new(0);

/// The id of the process this runs in.
#[inline]
pub fn id() -> u32 {
    match PID.load(Ordering::Acquire) {
        0 => first_id(),
        pid => pid,
    }
}

#[cold]
fn first_id() -> u32 {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        #[cfg(unix)]
        // SAFETY: `renew` only calls getpid and stores an integer, both async-signal-safe.
        unsafe {
            libc::pthread_atfork(None, None, Some(renew));
        }
    });
    let pid = std::process::id();
    PID.store(pid, Ordering::Release);
    pid
}

#[cfg(unix)]
extern "C" fn renew() {
    PID.store(std::process::id(), Ordering::Release);
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_cached_id_is_the_process_id() {
        assert_eq!(super::id(), std::process::id());
        assert_eq!(super::id(), std::process::id());
    }
}
