//! `fa.outer`, `fa.outer_sum`, `fa.outer_diag`: argument checks around `crate::outer`.
use super::arrays::{check_no_aliasing, input_view, new_out, out_view, OutName};
use super::dtype::{by_dtype, Dtype};
use super::errors::{run_detached, to_py_err};
use crate::error::Error;
use crate::float::Float;
use crate::shape::{fmt_dims, BatchSize, Shape};
use numpy::{Element, PyArrayDescrMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use smallvec::{smallvec, SmallVec};

/// Which outer product a call wants (a `Sum` without `mirror` writes its upper triangle only).
#[derive(Clone, Copy)]
enum Kind {
    Each { packed: bool },
    Sum { accumulate: bool, mirror: bool },
    Diag { accumulate: bool },
}

impl Kind {
    fn out_dims(self, n: usize, p: usize) -> SmallVec<[usize; 3]> {
        match self {
            Kind::Each { packed: false } => smallvec![n, p, p],
            Kind::Each { packed: true } => smallvec![n, crate::outer::packed_len(p)],
            Kind::Sum { .. } => smallvec![p, p],
            Kind::Diag { .. } => smallvec![p],
        }
    }
}

/// G's shape (N, P) and the dtype it computes in: float32 for float32, else float64.
fn shape_and_dtype(g: &Bound<'_, PyAny>) -> PyResult<((usize, usize), Dtype)> {
    let a = match g.cast::<PyUntypedArray>() {
        Ok(a) => a.clone(),
        Err(_) => {
            let np = g.py().import("numpy")?;
            np.call_method1("asarray", (g,))?
                .cast_into::<PyUntypedArray>()?
        }
    };
    // The dtype's kind character, read from the descriptor (extracting a Python str would
    // allocate under the stable ABI).
    if !b"biuf".contains(&a.dtype().kind()) {
        return Err(to_py_err(Error::Dtype(format!(
            "G must be a real array, got dtype {}",
            a.dtype().str()?
        ))));
    }
    let dtype = match Dtype::of_array(&a) {
        Some(Dtype::F32) => Dtype::F32,
        _ => Dtype::F64,
    };
    match a.shape() {
        &[n, p] => Ok(((n, p), dtype)),
        s => Err(to_py_err(Error::Shape(format!(
            "G must have shape (N, P), one vector per row; got shape {}",
            fmt_dims(s)
        )))),
    }
}

fn run<'py, T: Float + Element>(
    g: &Bound<'py, PyAny>,
    (n, p): (usize, usize),
    out: Option<&Bound<'py, PyAny>>,
    kind: Kind,
) -> PyResult<Bound<'py, PyAny>> {
    let py = g.py();
    let name = |_: usize| "G".to_string();
    let gv = input_view::<T>(g, &name, 0, Shape::matrix(n, p), &mut BatchSize::default())?;
    let dims = kind.out_dims(n, p);
    let accumulate = matches!(
        kind,
        Kind::Sum {
            accumulate: true,
            ..
        } | Kind::Diag { accumulate: true }
    );
    let ov = match out {
        Some(o) => out_view::<T>(o, OutName::Plain("out"), &dims)?,
        None if accumulate => {
            return Err(to_py_err(Error::Invalid(
                "accumulate=True adds to out=, so it needs out".into(),
            )))
        }
        None => new_out::<T>(py, &dims)?,
    };
    check_no_aliasing(std::slice::from_ref(&gv), &|_| "G".into(), &[&ov], &|_| {
        OutName::Plain("out")
    })?;
    // SAFETY: both views were checked for T, and do not overlap.
    let (gs, os) = unsafe { (gv.slice::<T>(), ov.slice::<T>()) };
    run_detached(py, || {
        match kind {
            Kind::Each { packed } => crate::outer::outer(gs, n, p, os, packed),
            Kind::Sum {
                accumulate,
                mirror: true,
            } => crate::outer::outer_sum(gs, n, p, os, accumulate),
            Kind::Sum {
                accumulate,
                mirror: false,
            } => crate::outer::outer_sum_upper(gs, n, p, os, accumulate),
            Kind::Diag { accumulate } => crate::outer::outer_diag(gs, n, p, os, accumulate),
        };
        Ok(())
    })?;
    Ok(ov.array)
}

fn dispatch<'py>(
    g: &Bound<'py, PyAny>,
    out: Option<&Bound<'py, PyAny>>,
    kind: Kind,
) -> PyResult<Bound<'py, PyAny>> {
    let (shape, dtype) = shape_and_dtype(g)?;
    by_dtype!(dtype, T => run::<T>(g, shape, out, kind))
}

/// H[b] = g_b g_bᵀ for each row g_b of G (N, P): H (N, P, P), or with `packed=True` (N,
/// P(P+1)/2), each upper triangle row by row. float32 G computes in float32, else float64.
/// `out=` must have exactly that shape and dtype, C-contiguous and writable.
#[pyfunction]
#[pyo3(signature = (G, out=None, packed=false))]
#[allow(non_snake_case)]
pub fn outer<'py>(
    G: &Bound<'py, PyAny>,
    out: Option<&Bound<'py, PyAny>>,
    packed: bool,
) -> PyResult<Bound<'py, PyAny>> {
    dispatch(G, out, Kind::Each { packed })
}

/// F = Σ_b g_b g_bᵀ = GᵀG (P, P): the empirical Fisher of per-sample gradients G (N, P),
/// computed as one triangle and mirrored. With `accumulate=True`, out += GᵀG (to stream a
/// large batch through it in pieces; out is taken as symmetric: its upper triangle is added to).
#[pyfunction]
#[pyo3(signature = (G, out=None, accumulate=false))]
#[allow(non_snake_case)]
pub fn outer_sum<'py>(
    G: &Bound<'py, PyAny>,
    out: Option<&Bound<'py, PyAny>>,
    accumulate: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let mirror = true;
    dispatch(G, out, Kind::Sum { accumulate, mirror })
}

/// `outer_sum`'s upper triangle only (the lower one left incomplete), for a sum streamed
/// through many calls: `_mirror_upper(out)` once at the end completes it.
#[pyfunction]
#[pyo3(signature = (G, out, accumulate))]
#[allow(non_snake_case)]
pub fn _outer_sum_upper<'py>(
    G: &Bound<'py, PyAny>,
    out: &Bound<'py, PyAny>,
    accumulate: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let mirror = false;
    dispatch(G, Some(out), Kind::Sum { accumulate, mirror })
}

/// Copies the upper triangle of F (P, P), float32 or float64, onto its lower one.
#[pyfunction]
#[allow(non_snake_case)]
pub fn _mirror_upper(F: &Bound<'_, PyAny>) -> PyResult<()> {
    let a = F.cast::<PyUntypedArray>()?;
    let (p, dtype) = match (a.shape(), Dtype::of_array(a)) {
        (&[p, q], Some(dtype)) if p == q => (p, dtype),
        (s, _) => {
            return Err(to_py_err(Error::Shape(format!(
                "F must be a square float32 or float64 matrix; got shape {} and dtype {}",
                fmt_dims(s),
                a.dtype().str()?
            ))))
        }
    };
    fn mirror<T: Float + Element>(f: &Bound<'_, PyAny>, p: usize) -> PyResult<()> {
        let view = out_view::<T>(f, OutName::Plain("F"), &[p, p])?;
        // SAFETY: the view was checked for T and (p, p).
        let fs = unsafe { view.slice::<T>() };
        run_detached(f.py(), || {
            crate::outer::mirror_upper(fs, p);
            Ok(())
        })
    }
    by_dtype!(dtype, T => mirror::<T>(F, p))
}

/// d = Σ_b g_b² (P,): the diagonal of `outer_sum`; with `accumulate=True`, out += Σ_b g_b².
#[pyfunction]
#[pyo3(signature = (G, out=None, accumulate=false))]
#[allow(non_snake_case)]
pub fn outer_diag<'py>(
    G: &Bound<'py, PyAny>,
    out: Option<&Bound<'py, PyAny>>,
    accumulate: bool,
) -> PyResult<Bound<'py, PyAny>> {
    dispatch(G, out, Kind::Diag { accumulate })
}
