//! Running fastad's parallel work on rayon (the `rayon` cargo feature): on the pool of the
//! calling thread when it is inside one (`ThreadPool::install`), else on rayon's global pool, so
//! a program that already uses rayon has one pool, not two fighting for the cores.
//!
//! rayon allocates now and then when work enters a pool from outside it (its injector queue
//! grows in blocks), so with this executor replays are no longer strictly allocation-free.
use crate::parallel::executor::Executor;
use rayon::prelude::*;

/// The current rayon pool (the caller's, or the global one).
#[derive(Clone, Copy, Debug, Default)]
pub struct Rayon;

impl Executor for Rayon {
    fn run(&self, _threads: usize, count: usize, task: &(dyn Fn(usize) + Sync)) {
        // One task per index: callers already split the work into `threads`-sized pieces.
        (0..count).into_par_iter().with_max_len(1).for_each(task);
    }
    fn default_threads(&self) -> usize {
        rayon::current_num_threads()
    }
}
