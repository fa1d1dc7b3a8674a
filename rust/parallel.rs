//! The one place that decides how work is split across threads.
//!
//! A small fork–join pool of persistent workers. Why not rayon: entering a rayon pool from a
//! thread outside it (every Python call) pushes a job onto its injector queue, which allocates a
//! new queue block every few dozen calls, and a replay must allocate nothing. Here a job is a
//! borrowed closure handed to sleeping workers through a mutex, so dispatch allocates nothing.
//!
//! The thread count is all cores by default, `FASTAD_NUM_THREADS` at start-up, or
//! `set_num_threads` at any time. A job runs its tasks with `task_count` fixed by the caller,
//! so results never depend on which thread ran what.
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};

static THREADS: AtomicUsize = AtomicUsize::new(0);

/// The number of threads parallel kernels use.
pub fn num_threads() -> usize {
    match THREADS.load(Ordering::Relaxed) {
        0 => {
            let n = default_threads();
            THREADS.store(n, Ordering::Relaxed);
            n
        }
        n => n,
    }
}

fn default_threads() -> usize {
    std::env::var("FASTAD_NUM_THREADS")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Sets the number of threads (at least 1). Workers are started lazily when first needed.
pub fn set_num_threads(n: usize) {
    THREADS.store(n.max(1), Ordering::Relaxed);
}

type Task<'a> = &'a (dyn Fn(usize) + Sync);

struct Job {
    /// A lifetime-erased `Task`; valid until `remaining` drops to 0, which `run` waits for.
    task: Option<Task<'static>>,
    count: usize,
    next: usize,
    remaining: usize,
    generation: u64,
    panicked: bool,
}

struct Pool {
    job: Mutex<Job>,
    work_ready: Condvar,
    work_done: Condvar,
    workers: AtomicUsize,
    /// Workers that have started running: their thread start-up allocations are behind them.
    started: AtomicUsize,
    busy: AtomicBool,
    /// The generation of the latest job, readable without the lock by spinning workers.
    posted: AtomicU64,
}

/// How long a worker polls for the next job before it sleeps. Waking a sleeping worker goes
/// through the OS and can take tens of microseconds (on a virtual machine, more than a small
/// kernel's whole run), so the calling thread would do most tasks alone; polling keeps
/// back-to-back kernels (the steps of one program, successive calls in a loop) on all threads,
/// at the cost of a core busy for this long after the last one.
const SPIN: std::time::Duration = std::time::Duration::from_micros(50);

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        job: Mutex::new(Job {
            task: None,
            count: 0,
            next: 0,
            remaining: 0,
            generation: 0,
            panicked: false,
        }),
        work_ready: Condvar::new(),
        work_done: Condvar::new(),
        workers: AtomicUsize::new(0),
        started: AtomicUsize::new(0),
        busy: AtomicBool::new(false),
        posted: AtomicU64::new(0),
    })
}

/// Runs `task(i)` for every `i` in `0..count`, on up to `num_threads()` threads including the
/// caller, and returns when all are done. Runs inline when the pool is already in use (a nested
/// call, or another program running concurrently), so it never waits on itself.
pub fn run(count: usize, task: &(dyn Fn(usize) + Sync)) {
    let threads = num_threads().min(count);
    let p = pool();
    if threads <= 1 || p.busy.swap(true, Ordering::Acquire) {
        (0..count).for_each(task);
        return;
    }
    p.ensure_workers(threads - 1);
    // SAFETY: the erased borrow is only used by workers between here and `remaining == 0`,
    // which this function waits for before returning.
    let task: Task<'static> = unsafe { std::mem::transmute::<Task<'_>, Task<'static>>(task) };
    {
        let mut job = p.job.lock().unwrap();
        job.task = Some(task);
        job.count = count;
        job.next = 0;
        job.remaining = count;
        job.generation += 1;
        job.panicked = false;
        p.posted.store(job.generation, Ordering::Release);
    }
    p.work_ready.notify_all();
    p.work_loop_until_done();
    let mut job = p.job.lock().unwrap();
    while job.remaining > 0 {
        job = p.work_done.wait(job).unwrap();
    }
    job.task = None;
    let panicked = job.panicked;
    drop(job);
    p.busy.store(false, Ordering::Release);
    assert!(!panicked, "a fastad worker thread panicked");
}

impl Pool {
    fn ensure_workers(&'static self, wanted: usize) {
        while self.workers.load(Ordering::Acquire) < wanted {
            self.workers.fetch_add(1, Ordering::AcqRel);
            std::thread::Builder::new()
                .name("fastad-worker".into())
                .spawn(move || self.worker())
                .expect("spawning a fastad worker thread");
        }
        // Wait until new workers run, so no thread start-up work spills into later calls.
        while self.started.load(Ordering::Acquire) < self.workers.load(Ordering::Acquire) {
            std::thread::yield_now();
        }
    }

    fn worker(&'static self) {
        self.started.fetch_add(1, Ordering::AcqRel);
        let mut seen = 0u64;
        loop {
            let since = std::time::Instant::now();
            while self.posted.load(Ordering::Acquire) == seen && since.elapsed() < SPIN {
                for _ in 0..64 {
                    std::hint::spin_loop();
                }
            }
            {
                let mut job = self.job.lock().unwrap();
                while job.generation == seen || job.next >= job.count {
                    seen = job.generation;
                    job = self.work_ready.wait(job).unwrap();
                }
                seen = job.generation;
            }
            self.work_loop_until_done();
        }
    }

    /// Takes tasks until none are left to start.
    fn work_loop_until_done(&self) {
        loop {
            let (task, i) = {
                let mut job = self.job.lock().unwrap();
                if job.next >= job.count {
                    return;
                }
                job.next += 1;
                (job.task.expect("a job is running"), job.next - 1)
            };
            let ok = catch_unwind(AssertUnwindSafe(|| task(i))).is_ok();
            let mut job = self.job.lock().unwrap();
            job.panicked |= !ok;
            job.remaining -= 1;
            if job.remaining == 0 {
                self.work_done.notify_all();
            }
        }
    }
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
