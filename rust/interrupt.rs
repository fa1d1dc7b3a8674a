//! Stopping long calls early (Ctrl-C). The core knows nothing of signals: a front end runs a call
//! `while_checking` a function of its own (Python's: "has a signal handler raised?"), and the
//! loops of long calls — training steps, tiles, the steps of a replay — `poll` between units of
//! work. A poll reads the clock and calls the check at most every `INTERVAL`, and allocates
//! nothing; loops of many small steps count their work in a local `Pacer` and poll only once it
//! adds up, so they pay neither the clock nor the thread-local lookup per step. Only the thread that installed the check polls it; on other threads (pool workers)
//! `poll` is free and never stops, and the work they share stops when the caller's part does.
use crate::error::{Error, Result};
use std::cell::Cell;
use std::time::{Duration, Instant};

/// How often a long call asks its front end whether to stop.
pub const INTERVAL: Duration = Duration::from_millis(100);

/// Work (in elements written) between two polls of a `Pacer`: tens of microseconds at the
/// least, so tiny steps do not pay for the poll.
const WORK_PER_POLL: usize = 1 << 16;

/// The check of this thread's current call, and when it last ran.
struct Installed {
    check: *const (dyn Fn() -> bool + 'static),
    last: Instant,
}

thread_local! {
    static CURRENT: Cell<Option<Installed>> = const { Cell::new(None) };
}

/// Runs `f` with `check` installed for this thread: `poll` inside `f` fails with
/// `Error::Interrupted` once `check` returns true.
pub fn while_checking<R>(check: &dyn Fn() -> bool, f: impl FnOnce() -> R) -> R {
    // SAFETY: the pointer is removed (restored to the previous one) before `check` goes out of
    // scope, by the guard below, even if `f` panics.
    let check: *const (dyn Fn() -> bool + '_) = check;
    let check: *const (dyn Fn() -> bool + 'static) = unsafe { std::mem::transmute(check) };
    let previous = CURRENT.with(|c| {
        c.replace(Some(Installed {
            check,
            last: Instant::now(),
        }))
    });
    struct Restore(Option<Installed>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with(|c| c.set(self.0.take()));
        }
    }
    let _restore = Restore(previous);
    f()
}

/// `Err(Error::Interrupted)` when this thread's call was asked to stop; checks at most every
/// `INTERVAL`. For loops whose every iteration is long (a tile); others use a `Pacer`.
pub fn poll() -> Result<()> {
    CURRENT.with(|c| {
        let Some(mut installed) = c.take() else {
            return Ok(());
        };
        let now = Instant::now();
        let mut stop = false;
        if now.duration_since(installed.last) >= INTERVAL {
            installed.last = now;
            // SAFETY: installed by `while_checking`, whose frame is still live.
            stop = unsafe { (*installed.check)() };
        }
        c.set(Some(installed));
        if stop {
            Err(Error::Interrupted)
        } else {
            Ok(())
        }
    })
}

/// Polls a loop of steps of any size: each step reports the elements it wrote, and `poll` runs
/// once they add up to `WORK_PER_POLL` (so a step of tens of microseconds or more polls every
/// time, a loop of tiny ones seldom).
#[derive(Default)]
pub struct Pacer {
    work: usize,
}

impl Pacer {
    #[inline]
    pub fn after(&mut self, elements: usize) -> Result<()> {
        self.work = self.work.saturating_add(elements);
        if self.work < WORK_PER_POLL {
            return Ok(());
        }
        self.work = 0;
        poll()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell as Counter;

    #[test]
    fn polls_call_the_check_at_most_once_an_interval_and_only_where_installed() {
        assert_eq!(poll(), Ok(()));
        let calls = Counter::new(0);
        let check = || {
            calls.set(calls.get() + 1);
            calls.get() >= 2
        };
        let start = Instant::now();
        let result = while_checking(&check, || loop {
            poll()?;
            if start.elapsed() > 10 * INTERVAL {
                return Ok(());
            }
        });
        assert_eq!(result, Err(Error::Interrupted));
        assert_eq!(calls.get(), 2);
        assert!(start.elapsed() >= 2 * INTERVAL);
        // Tiny steps poll only once their work adds up.
        let small = Counter::new(0);
        let count = || {
            small.set(small.get() + 1);
            false
        };
        while_checking(&count, || {
            std::thread::sleep(2 * INTERVAL);
            let mut pacer = Pacer::default();
            for _ in 0..WORK_PER_POLL / 16 - 1 {
                pacer.after(16).unwrap();
            }
            assert_eq!(small.get(), 0);
            pacer.after(16).unwrap();
            assert_eq!(small.get(), 1);
        });
        // Uninstalled after the call.
        assert_eq!(poll(), Ok(()));
        let other =
            std::thread::spawn(|| while_checking(&|| true, || std::thread::spawn(poll).join()));
        assert_eq!(other.join().unwrap().unwrap(), Ok(()));
    }
}
