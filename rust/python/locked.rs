//! `Locked<T>`: the mutex behind every Python object whose methods may run on several threads at
//! once (a compiled program, an optimiser's state).
//! - Waiting releases the GIL: a holder may need it for a moment (to check for Ctrl-C).
//! - A lock poisoned by a panic recovers: every holder leaves the value usable (buffers are
//!   rewritten by the next call).
//! - In a process forked while another thread held it, the lock can never be released; taking it
//!   there is an error naming the cause instead of a hang.
use crate::error::{Error, Result};
use pyo3::prelude::*;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};

pub(crate) struct Locked<T> {
    mutex: Mutex<T>,
    /// The process whose thread took the lock last (never cleared, so a child forked while the
    /// lock was held sees its parent here).
    holder: AtomicU32,
}

impl<T: Send> Locked<T> {
    pub fn new(value: T) -> Self {
        Locked {
            mutex: Mutex::new(value),
            holder: AtomicU32::new(crate::process::id()),
        }
    }

    fn try_take(&self) -> Result<Option<MutexGuard<'_, T>>> {
        let me = crate::process::id();
        let guard = match self.mutex.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) if self.holder.load(Ordering::Acquire) != me => {
                return Err(Error::Unavailable(
                    "this object was in use by another thread when the process forked, so its \
                     lock can never be released in this child process; create it again here \
                     (or start processes with the 'spawn' or 'forkserver' method)"
                        .into(),
                ));
            }
            Err(TryLockError::WouldBlock) => return Ok(None),
        };
        self.holder.store(me, Ordering::Release);
        Ok(Some(guard))
    }

    /// The lock, for code running without the GIL: waits for another thread of this process.
    pub fn lock(&self) -> Result<MutexGuard<'_, T>> {
        if let Some(g) = self.try_take()? {
            return Ok(g);
        }
        let g = self.mutex.lock().unwrap_or_else(|e| e.into_inner());
        self.holder.store(crate::process::id(), Ordering::Release);
        Ok(g)
    }

    /// The lock, for code holding the GIL: waits with the GIL released.
    pub fn lock_py(&self, py: Python<'_>) -> Result<MutexGuard<'_, T>> {
        loop {
            if let Some(g) = self.try_take()? {
                return Ok(g);
            }
            // Wait until the holder is done (the guard cannot cross back: it is not Send).
            py.detach(|| drop(self.mutex.lock()));
        }
    }
}
