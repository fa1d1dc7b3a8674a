//! The one place core errors become Python exceptions, and core work runs without the GIL:
//! a Rust panic becomes a `RuntimeError` (never pyo3's `PanicException`, a `BaseException` that
//! `except Exception` misses), and Ctrl-C stops a long call.
use crate::error::Error;
use pyo3::exceptions::{
    PyKeyboardInterrupt, PyMemoryError, PyRuntimeError, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;

pub(crate) fn to_py_err(e: Error) -> PyErr {
    let message = e.to_string();
    match e {
        Error::Shape(_) | Error::Label { .. } | Error::Unsupported(_) | Error::Invalid(_) => {
            PyValueError::new_err(message)
        }
        Error::Dtype(_) | Error::Arity(_) | Error::NotScalar(_) => PyTypeError::new_err(message),
        Error::OutOfMemory { .. } => PyMemoryError::new_err(message),
        Error::Interrupted => PyKeyboardInterrupt::new_err(()),
        Error::Unavailable(_) => PyRuntimeError::new_err(message),
    }
}

/// Runs core work `f` with the GIL released. Every `crate::interrupt::INTERVAL` its polls take
/// the GIL back for a moment to run Python's signal handlers; when one raises (Ctrl-C:
/// `KeyboardInterrupt`), `f` stops at its next poll and that exception is returned. A panic in
/// `f` is a `RuntimeError` naming it; a lock `f` held recovers (see `locked.rs`), and the
/// buffers it wrote are rewritten by the next call.
pub(crate) fn run_detached<R: Send>(
    py: Python<'_>,
    f: impl FnOnce() -> crate::Result<R> + Send,
) -> PyResult<R> {
    let raised: Mutex<Option<PyErr>> = Mutex::new(None);
    let check = || {
        Python::attach(|py| match py.check_signals() {
            Ok(()) => false,
            Err(e) => {
                *raised.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                true
            }
        })
    };
    let outcome = py.detach(|| {
        catch_unwind(AssertUnwindSafe(|| {
            crate::interrupt::while_checking(&check, f)
        }))
    });
    match outcome {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(Error::Interrupted)) => Err(raised
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .unwrap_or_else(|| to_py_err(Error::Interrupted))),
        Ok(Err(e)) => Err(to_py_err(e)),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            Err(PyRuntimeError::new_err(format!(
                "internal error in fastad (please report it): {what}"
            )))
        }
    }
}
