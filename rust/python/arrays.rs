//! NumPy argument checks: inputs are read in place when they already have the program's dtype
//! and layout (converted otherwise); `out=` arrays must match exactly. Messages name the
//! argument, the expected and the actual shape or dtype.
use crate::float::Float;
use crate::shape::{Dim, Shape};
use numpy::{Element, PyArrayDescrMethods, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

pub(crate) fn fmt_dims(dims: &[usize]) -> String {
    match dims {
        [] => "()".into(),
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            dims.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A read-only view of an argument's data, kept alive by `_owner` (the argument or its copy).
pub(crate) struct InView<'py> {
    pub ptr: *const u8,
    pub len: usize,
    pub bytes: usize,
    _owner: Bound<'py, PyAny>,
}

impl InView<'_> {
    /// SAFETY: `T` must be the element type the view was made for.
    pub unsafe fn slice<T>(&self) -> &[T] {
        if self.len == 0 {
            return &[];
        }
        std::slice::from_raw_parts(self.ptr as *const T, self.len)
    }
}

/// A writable view of an `out=` array (or of a new array that will be returned).
pub(crate) struct OutView<'py> {
    pub ptr: *mut u8,
    pub len: usize,
    pub bytes: usize,
    pub array: Bound<'py, PyAny>,
}

impl OutView<'_> {
    /// SAFETY: `T` must be the element type the view was checked for, and views must not overlap.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice<T>(&self) -> &mut [T] {
        if self.len == 0 {
            return &mut [];
        }
        std::slice::from_raw_parts_mut(self.ptr as *mut T, self.len)
    }
}

fn data_ptr(a: &Bound<'_, PyUntypedArray>) -> *mut u8 {
    // SAFETY: a live ndarray object.
    unsafe { (*a.as_array_ptr()).fields.data as *mut u8 }
}

fn is_writeable(a: &Bound<'_, PyUntypedArray>) -> bool {
    // SAFETY: a live ndarray object.
    unsafe { (*a.as_array_ptr()).fields.flags & numpy::npyffi::NPY_ARRAY_WRITEABLE != 0 }
}

/// Tracks the batch size across arguments: the first batched argument (by index) sets it.
#[derive(Default, Clone, Copy)]
pub(crate) struct BatchSize {
    pub value: Option<(usize, usize)>,
}

impl BatchSize {
    pub fn get(&self) -> usize {
        self.value.map_or(0, |(n, _)| n)
    }
}

/// Names argument `k` in messages; called only when a message is needed.
pub(crate) type Namer<'a> = &'a dyn Fn(usize) -> String;

fn check_shape(
    name: Namer,
    k: usize,
    actual: &[usize],
    expected: Shape,
    batch: &mut BatchSize,
) -> PyResult<()> {
    let bad = || {
        PyValueError::new_err(format!(
            "{} has shape {}; expected {expected}",
            name(k),
            fmt_dims(actual)
        ))
    };
    if actual.len() != expected.rank() {
        return Err(bad());
    }
    for (&n, d) in actual.iter().zip(expected.dims()) {
        match *d {
            Dim::Fixed(m) if m != n => return Err(bad()),
            Dim::Batch => match batch.value {
                Some((m, first)) if m != n => {
                    return Err(PyValueError::new_err(format!(
                        "batch sizes differ: {} has {m} rows, {} has {n}",
                        name(first),
                        name(k)
                    )))
                }
                None => batch.value = Some((n, k)),
                _ => {}
            },
            _ => {}
        }
    }
    Ok(())
}

/// Reads `obj` as a C-contiguous array of `T` of shape `expected`, in place when it already is
/// one, else through `numpy.ascontiguousarray` (a copy). Non-real dtypes are a `TypeError`.
pub(crate) fn input_view<'py, T: Float + Element>(
    obj: &Bound<'py, PyAny>,
    name: Namer,
    k: usize,
    expected: Shape,
    batch: &mut BatchSize,
) -> PyResult<InView<'py>> {
    let py = obj.py();
    if let Ok(a) = obj.cast::<PyUntypedArray>() {
        if a.is_c_contiguous() && a.is_aligned() && a.dtype().is_equiv_to(&numpy::dtype::<T>(py)) {
            check_shape(name, k, a.shape(), expected, batch)?;
            return Ok(InView {
                ptr: data_ptr(a),
                len: a.len(),
                bytes: a.len() * size_of::<T>(),
                _owner: obj.clone(),
            });
        }
    }
    let np = py.import("numpy")?;
    let arr = np.call_method1("asarray", (obj,))?;
    let kind: char = arr.getattr("dtype")?.getattr("kind")?.extract()?;
    if !"biuf".contains(kind) {
        return Err(PyTypeError::new_err(format!(
            "{} has dtype {}, which does not convert to {}",
            name(k),
            arr.getattr("dtype")?.str()?,
            T::NAME
        )));
    }
    let kwargs = PyDict::new(py);
    kwargs.set_item("dtype", T::NAME)?;
    let arr = np.call_method("ascontiguousarray", (arr,), Some(&kwargs))?;
    let a = arr.cast::<PyUntypedArray>()?;
    check_shape(name, k, a.shape(), expected, batch)?;
    Ok(InView {
        ptr: data_ptr(a),
        len: a.len(),
        bytes: a.len() * size_of::<T>(),
        _owner: arr.clone(),
    })
}

/// Checks a caller's `out=` array: exactly this dtype and shape, C-contiguous, aligned, writable.
pub(crate) fn out_view<'py, T: Float + Element>(
    obj: &Bound<'py, PyAny>,
    what: &str,
    dims: &[usize],
) -> PyResult<OutView<'py>> {
    let a = obj.cast::<PyUntypedArray>().map_err(|_| {
        PyTypeError::new_err(format!(
            "{what} must be a NumPy array of dtype {} and shape {}, got {}",
            T::NAME,
            fmt_dims(dims),
            obj.get_type().name().map_or("?".into(), |n| n.to_string())
        ))
    })?;
    let dtype = a.dtype();
    if !dtype.is_equiv_to(&numpy::dtype::<T>(obj.py())) {
        return Err(PyTypeError::new_err(format!(
            "{what} has dtype {}; expected {}",
            dtype.str()?,
            T::NAME
        )));
    }
    if a.shape() != dims {
        return Err(PyValueError::new_err(format!(
            "{what} has shape {}; expected {}",
            fmt_dims(a.shape()),
            fmt_dims(dims)
        )));
    }
    if !a.is_c_contiguous() || !a.is_aligned() {
        return Err(PyValueError::new_err(format!(
            "{what} must be C-contiguous and aligned"
        )));
    }
    if !is_writeable(a) {
        return Err(PyValueError::new_err(format!("{what} is read-only")));
    }
    Ok(OutView {
        ptr: data_ptr(a),
        len: a.len(),
        bytes: a.len() * size_of::<T>(),
        array: obj.clone(),
    })
}

/// A new zeroed array of `T`, for results the caller did not give an `out=` for.
pub(crate) fn new_out<'py, T: Float + Element>(py: Python<'py>, dims: &[usize]) -> OutView<'py> {
    let a = numpy::PyArray::<T, numpy::IxDyn>::zeros(py, dims, false);
    let u = a.as_untyped();
    OutView {
        ptr: data_ptr(u),
        len: u.len(),
        bytes: u.len() * size_of::<T>(),
        array: a.into_any(),
    }
}

fn overlap(p: *const u8, n: usize, q: *const u8, m: usize) -> bool {
    let (p, q) = (p as usize, q as usize);
    n > 0 && m > 0 && p < q + m && q < p + n
}

/// Outputs must not share memory with inputs or with each other. Names are built only for errors.
pub(crate) fn check_no_aliasing(
    inputs: &[InView],
    input_name: &dyn Fn(usize) -> String,
    outs: &[&OutView],
    out_name: &dyn Fn(usize) -> String,
) -> PyResult<()> {
    for (i, o) in outs.iter().enumerate() {
        if let Some(k) = inputs
            .iter()
            .position(|inp| overlap(o.ptr, o.bytes, inp.ptr, inp.bytes))
        {
            return Err(PyValueError::new_err(format!(
                "{} shares memory with {}; pass a separate array",
                out_name(i),
                input_name(k)
            )));
        }
        if let Some(j) = outs[..i]
            .iter()
            .position(|o2| overlap(o.ptr, o.bytes, o2.ptr, o2.bytes))
        {
            return Err(PyValueError::new_err(format!(
                "{} shares memory with {}; pass separate arrays",
                out_name(i),
                out_name(j)
            )));
        }
    }
    Ok(())
}
