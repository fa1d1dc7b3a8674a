//! The Python extension module `fastad._fastad`: argument checks and zero-copy views over the
//! core crate, nothing more. One file per concern: `graph` (tracing), `program` (replays),
//! `outer` (batched outer products), `layer_rows` (dense layers' per-sample factors and their
//! Kronecker sums), `train` (optimisers, training loops), `arrays` (the NumPy argument and
//! `out=` checks), `dtype` (element types), `errors` (core errors → exceptions, the GIL-free
//! guard), `locked` (the lock of objects used from several threads).
use pyo3::prelude::*;

mod arrays;
mod dtype;
mod errors;
mod graph;
mod layer_rows;
mod locked;
mod outer;
mod program;
mod train;

use errors::to_py_err;

/// Counting allocations lets users and tests check that a replay allocates nothing.
#[global_allocator]
static ALLOCATOR: crate::alloc_count::CountingAllocator = crate::alloc_count::CountingAllocator;

/// Heap allocations made by the native extension since it was loaded, on all threads.
#[pyfunction]
fn allocation_count() -> u64 {
    crate::alloc_count::allocation_count()
}

/// (live, peak): bytes the native extension has allocated and not freed, and the most at once
/// since the last call with `reset_peak=True` (which then starts a new peak). For tests of
/// memory that must not grow with a problem's size.
#[pyfunction]
#[pyo3(signature = (reset_peak=false))]
fn _allocated_bytes(reset_peak: bool) -> (u64, u64) {
    let bytes = crate::alloc_count::allocated_bytes();
    if reset_peak {
        crate::alloc_count::reset_peak_bytes();
    }
    bytes
}

/// Sets the number of threads fastad's parallel kernels use (at least 1).
#[pyfunction]
fn set_num_threads(n: usize) -> PyResult<()> {
    if n == 0 {
        return Err(to_py_err(crate::Error::Invalid(
            "the number of threads must be at least 1".into(),
        )));
    }
    crate::parallel::set_num_threads(n);
    Ok(())
}

/// The number of threads fastad's parallel kernels use.
#[pyfunction]
fn get_num_threads() -> usize {
    crate::parallel::num_threads()
}

/// The vector instruction set fastad's kernels run with on this CPU: "avx512", "avx2" (with
/// FMA) or "baseline" on x86-64, chosen at run time (one wheel runs on every x86-64 CPU);
/// "neon" or "baseline" on aarch64. The environment variable FASTAD_SIMD, read at start-up,
/// can cap it at a narrower one.
#[pyfunction]
fn instruction_set() -> &'static str {
    crate::kernels::simd::level().name()
}

/// The instruction sets this architecture's kernels have, widest first.
#[pyfunction]
fn _instruction_sets() -> Vec<&'static str> {
    crate::kernels::simd::LEVELS
        .iter()
        .map(|l| l.name())
        .collect()
}

/// Panics inside the guard every GIL-free call runs in, holding `program`'s lock when given:
/// for the tests that a Rust panic reaches Python as a RuntimeError, never as pyo3's
/// PanicException, and that a lock poisoned by it recovers.
#[pyfunction]
#[pyo3(signature = (program=None))]
fn _panic_in_guard(py: Python<'_>, program: Option<&program::Program>) -> PyResult<()> {
    errors::run_detached(py, || -> crate::Result<()> {
        if let Some(p) = program {
            dtype::typed!(&p.typed, p => {
                let _held = p.lock()?;
                panic!("a test of the panic guard, holding the program's lock")
            })
        }
        panic!("a test of the panic guard")
    })
}

#[pymodule]
fn _fastad(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<graph::Graph>()?;
    m.add_class::<program::Program>()?;
    m.add_function(wrap_pyfunction!(allocation_count, m)?)?;
    m.add_function(wrap_pyfunction!(_allocated_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(instruction_set, m)?)?;
    m.add_function(wrap_pyfunction!(_instruction_sets, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_in_guard, m)?)?;
    m.add_function(wrap_pyfunction!(arrays::check_out, m)?)?;
    m.add_function(wrap_pyfunction!(outer::outer, m)?)?;
    m.add_function(wrap_pyfunction!(outer::outer_sum, m)?)?;
    m.add_function(wrap_pyfunction!(outer::_outer_sum_upper, m)?)?;
    m.add_function(wrap_pyfunction!(outer::_mirror_upper, m)?)?;
    m.add_function(wrap_pyfunction!(outer::outer_diag, m)?)?;
    m.add_function(wrap_pyfunction!(layer_rows::dense_layers, m)?)?;
    m.add_function(wrap_pyfunction!(layer_rows::layer_rows, m)?)?;
    m.add_function(wrap_pyfunction!(layer_rows::kron_factors, m)?)?;
    m.add_class::<train::Optimizer>()?;
    m.add_function(wrap_pyfunction!(train::fit_epochs, m)?)?;
    m.add_function(wrap_pyfunction!(train::epoch_order, m)?)?;
    Ok(())
}
