//! fastad's own thread pool, the default executor: a small fork–join pool of persistent
//! workers. Why not rayon by default: entering a rayon pool from a thread outside it (every
//! Python call) pushes a job onto its injector queue, which allocates a new queue block every few
//! dozen calls, and a replay must allocate nothing. Here a job is a borrowed closure handed to
//! the workers through a mutex, so dispatch allocates nothing.
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};

use crate::parallel::executor::Executor;

/// fastad's own pool (there is one per process; this is its handle).
#[derive(Clone, Copy, Debug, Default)]
pub struct Pool;

impl Executor for Pool {
    fn run(&self, threads: usize, count: usize, task: &(dyn Fn(usize) + Sync)) {
        run(threads, count, task)
    }
    fn default_threads(&self) -> usize {
        static DEFAULT: OnceLock<usize> = OnceLock::new();
        *DEFAULT.get_or_init(|| {
            std::env::var("FASTAD_NUM_THREADS")
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .filter(|&n| n > 0)
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        })
    }
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

struct State {
    job: Mutex<Job>,
    work_ready: Condvar,
    work_done: Condvar,
    workers: AtomicUsize,
    /// Workers that have started running: their thread start-up allocations are behind them.
    started: AtomicUsize,
    busy: AtomicBool,
    /// The generation of the latest job, readable without the lock by spinning workers.
    posted: AtomicU64,
    /// The generation of the latest job whose tasks are all done, for the polling caller.
    finished: AtomicU64,
    /// The process the workers run in: a child forked from it has none of them (and maybe a
    /// lock a vanished worker held), so it runs everything inline.
    pid: u32,
}

/// How long a worker polls for the next job before it sleeps. Waking a sleeping worker goes
/// through the OS and can take tens of microseconds (on a virtual machine, more than a small
/// kernel's whole run), so the calling thread would do most tasks alone; polling keeps
/// back-to-back kernels (the steps of one program, successive calls in a loop) on all threads,
/// at the cost of a core busy for this long after the last one.
const SPIN: std::time::Duration = std::time::Duration::from_micros(50);

fn pool() -> &'static State {
    static POOL: OnceLock<State> = OnceLock::new();
    POOL.get_or_init(|| State {
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
        finished: AtomicU64::new(0),
        pid: crate::process::id(),
    })
}

/// Runs `task(i)` for every `i` in `0..count`, on up to `threads` threads including the
/// caller, and returns when all are done. Runs inline when the pool is already in use (a nested
/// call, or another program running concurrently), so it never waits on itself, and in a forked
/// child process.
fn run(threads: usize, count: usize, task: &(dyn Fn(usize) + Sync)) {
    let threads = threads.min(count);
    let p = pool();
    if threads <= 1 || p.pid != crate::process::id() || p.busy.swap(true, Ordering::Acquire) {
        (0..count).for_each(task);
        return;
    }
    p.ensure_workers(threads - 1);
    // SAFETY: the erased borrow is only used by workers between here and `remaining == 0`,
    // which this function waits for before returning.
    let task: Task<'static> = unsafe { std::mem::transmute::<Task<'_>, Task<'static>>(task) };
    let generation = {
        let mut job = p.job.lock().unwrap();
        job.task = Some(task);
        job.count = count;
        job.next = 0;
        job.remaining = count;
        job.generation += 1;
        job.panicked = false;
        p.posted.store(job.generation, Ordering::Release);
        job.generation
    };
    p.work_ready.notify_all();
    p.work_loop_until_done();
    // The last tasks are the workers': poll for them before sleeping, as a worker polls for
    // work, since waking this thread would go through the OS.
    poll_until(|| p.finished.load(Ordering::Acquire) == generation);
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

/// Spins until `done()` or for `SPIN`, whichever comes first.
fn poll_until(done: impl Fn() -> bool) {
    let since = std::time::Instant::now();
    while !done() && since.elapsed() < SPIN {
        for _ in 0..64 {
            std::hint::spin_loop();
        }
    }
}

impl State {
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
            poll_until(|| self.posted.load(Ordering::Acquire) != seen);
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
                self.finished.store(job.generation, Ordering::Release);
                self.work_done.notify_all();
            }
        }
    }
}
