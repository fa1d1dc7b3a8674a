//! The executor interface: what runs fastad's parallel work. fastad's own pool (`pool.rs`) is the
//! default; with the `rayon` cargo feature the same work can run on a rayon pool
//! (`rayon_pool.rs`). Callers fix the number of tasks, so results never depend on the executor
//! or on which thread ran what.
pub trait Executor: Sync {
    /// Runs `task(i)` for every `i` in `0..count` on up to `threads` threads (the caller's
    /// included) and returns when all are done. A task that panics makes `run` panic.
    fn run(&self, threads: usize, count: usize, task: &(dyn Fn(usize) + Sync));
    /// The thread count when the user sets none.
    fn default_threads(&self) -> usize;
}
