//! The one place that decides how work is split across threads, and where it runs.
//!
//! Kernels and runners call `run` (or `for_chunks`) with a number of tasks they chose from
//! `num_threads()`, so results never depend on which thread ran what. The tasks run on an
//! `Executor`: fastad's own pool by default (`pool.rs`: no allocation per dispatch), or, with
//! the `rayon` cargo feature, the caller's rayon pool (`rayon_pool.rs`).
//!
//! The thread count is all cores by default (`FASTAD_NUM_THREADS` at start-up; under the rayon
//! executor, the rayon pool's size), or `set_num_threads` at any time.
mod executor;
mod pool;
#[cfg(feature = "rayon")]
mod rayon_pool;

pub use executor::Executor;
pub use pool::Pool;
#[cfg(feature = "rayon")]
pub use rayon_pool::Rayon;

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

/// Which executor runs fastad's parallel work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecutorKind {
    /// fastad's own pool (the default without the `rayon` feature).
    Pool,
    /// The current rayon pool (the default with the `rayon` feature).
    #[cfg(feature = "rayon")]
    Rayon,
}

/// 0: not set (the feature's default); else `ExecutorKind` + 1.
static EXECUTOR: AtomicU8 = AtomicU8::new(0);
/// 0: not set (the executor's default).
static THREADS: AtomicUsize = AtomicUsize::new(0);

/// Chooses the executor for all later parallel work.
pub fn set_executor(kind: ExecutorKind) {
    let code = match kind {
        ExecutorKind::Pool => 1,
        #[cfg(feature = "rayon")]
        ExecutorKind::Rayon => 2,
    };
    EXECUTOR.store(code, Ordering::Relaxed);
}

/// The executor parallel work runs on.
pub fn executor_kind() -> ExecutorKind {
    match EXECUTOR.load(Ordering::Relaxed) {
        1 => ExecutorKind::Pool,
        #[cfg(feature = "rayon")]
        _ => ExecutorKind::Rayon,
        #[cfg(not(feature = "rayon"))]
        _ => ExecutorKind::Pool,
    }
}

fn executor() -> &'static dyn Executor {
    match executor_kind() {
        ExecutorKind::Pool => &Pool,
        #[cfg(feature = "rayon")]
        ExecutorKind::Rayon => &Rayon,
    }
}

/// The number of threads parallel kernels split their work for.
pub fn num_threads() -> usize {
    match THREADS.load(Ordering::Relaxed) {
        0 => executor().default_threads(),
        n => n,
    }
}

/// Sets the number of threads (at least 1). Pool workers are started lazily when first needed.
pub fn set_num_threads(n: usize) {
    THREADS.store(n.max(1), Ordering::Relaxed);
}

thread_local! {
    /// Set while this thread runs a task of a parallel `run`.
    static IN_TASK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the calling thread is running a task of a parallel `run`: the other threads are then
/// busy with their own tasks, and work split further runs on this thread, one part after
/// another (a product split so that each thread packs its own operands would pack them all).
pub fn in_task() -> bool {
    IN_TASK.with(|t| t.get())
}

/// Runs `task(i)` for every `i` in `0..count` on up to `num_threads()` threads including the
/// caller, and returns when all are done; inline when one thread is enough.
pub fn run(count: usize, task: &(dyn Fn(usize) + Sync)) {
    let threads = num_threads().min(count);
    if threads <= 1 {
        (0..count).for_each(task);
    } else {
        dispatch(threads, count, task);
    }
}

/// `executor().run`, each task marked as one while it runs (`in_task`).
fn dispatch(threads: usize, count: usize, task: &(dyn Fn(usize) + Sync)) {
    executor().run(threads, count, &|i| {
        // Restored when the task ends, even by a panic (the pool's threads carry on).
        struct Restore(bool);
        impl Drop for Restore {
            fn drop(&mut self) {
                IN_TASK.with(|t| t.set(self.0));
            }
        }
        let _restore = Restore(IN_TASK.with(|t| t.replace(true)));
        task(i)
    });
}

/// Splits `0..len` into `parts` contiguous ranges of nearly equal size; returns range `i`.
pub fn split(len: usize, parts: usize, i: usize) -> std::ops::Range<usize> {
    let base = len / parts;
    let extra = len % parts;
    let start = i * base + i.min(extra);
    start..start + base + usize::from(i < extra)
}

/// Runs `f` over chunks of `0..len`, in parallel when `len` is at least `min_parallel`. There
/// are a few chunks per thread, so a worker that wakes late finds some left to share.
pub fn for_chunks(len: usize, min_parallel: usize, f: &(dyn Fn(std::ops::Range<usize>) + Sync)) {
    const CHUNKS_PER_THREAD: usize = 4;
    let parts = if len >= min_parallel {
        let threads = num_threads();
        let most = if threads > 1 {
            CHUNKS_PER_THREAD * threads
        } else {
            1
        };
        most.min(len / (min_parallel / 2).max(1)).max(1)
    } else {
        1
    };
    if parts == 1 {
        f(0..len);
    } else {
        run(parts, &|i| f(split(len, parts, i)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_task_runs_once() {
        set_num_threads(2);
        for count in [0, 1, 2, 3, 17] {
            let hits: Vec<AtomicU64> = (0..count).map(|_| AtomicU64::new(0)).collect();
            run(count, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn tasks_know_they_run_in_a_parallel_run() {
        // `dispatch` directly: other tests change the thread count `run` reads.
        assert!(!in_task());
        let inside: Vec<AtomicU64> = (0..4).map(|_| AtomicU64::new(0)).collect();
        dispatch(2, 4, &|i| {
            inside[i].store(u64::from(in_task()), Ordering::Relaxed)
        });
        assert!(inside.iter().all(|t| t.load(Ordering::Relaxed) == 1));
        assert!(!in_task());
        // A task that panics leaves its thread outside a task again.
        let caught = std::panic::catch_unwind(|| dispatch(2, 4, &|i| assert!(i != 1)));
        assert!(caught.is_err());
        assert!(!in_task());
        dispatch(2, 4, &|_| ());
        let single = AtomicU64::new(1);
        run(1, &|_| {
            single.store(u64::from(in_task()), Ordering::Relaxed)
        });
        assert_eq!(
            single.load(Ordering::Relaxed),
            0,
            "a single task runs inline"
        );
    }

    #[test]
    fn split_covers_the_range() {
        for len in 0..20 {
            for parts in 1..5 {
                let total: usize = (0..parts).map(|i| split(len, parts, i).len()).sum();
                assert_eq!(total, len);
                assert_eq!(split(len, parts, parts - 1).end, len);
            }
        }
    }
}
