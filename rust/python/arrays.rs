//! NumPy argument checks: inputs are read in place when they already have the program's dtype
//! and layout (converted otherwise); `out=` arrays must match exactly. Messages name the
//! argument, the expected and the actual shape or dtype.
use super::errors::to_py_err;
use crate::error::Error;
use crate::float::Float;
use crate::shape::{fmt_dims, BatchSize, Shape};
use numpy::{Element, PyArrayDescr, PyArrayDescrMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use smallvec::SmallVec;

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

pub(crate) fn data_ptr(a: &Bound<'_, PyUntypedArray>) -> *mut u8 {
    // SAFETY: a live ndarray object.
    unsafe { (*a.as_array_ptr()).fields.data as *mut u8 }
}

fn is_writeable(a: &Bound<'_, PyUntypedArray>) -> bool {
    // SAFETY: a live ndarray object.
    unsafe { (*a.as_array_ptr()).fields.flags & numpy::npyffi::NPY_ARRAY_WRITEABLE != 0 }
}

/// Names argument `k` in messages; called only when a message is needed.
pub(crate) type Namer<'a> = &'a dyn Fn(usize) -> String;

/// How an output is named in messages: "out", or "out[1]" for one of a tuple.
#[derive(Clone, Copy)]
pub(crate) enum OutName<'a> {
    Plain(&'a str),
    Indexed(&'a str, usize),
}

impl std::fmt::Display for OutName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutName::Plain(s) => f.write_str(s),
            OutName::Indexed(s, i) => write!(f, "{s}[{i}]"),
        }
    }
}

/// Reads `obj` as a C-contiguous array of `T` of shape `expected`, in place when it already is
/// one, else through `numpy.asarray(dtype=T, order="C")` (a copy). Non-real dtypes are a `TypeError`.
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
            batch
                .check(k, a.shape(), expected, name)
                .map_err(to_py_err)?;
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
        return Err(to_py_err(Error::Dtype(format!(
            "{} has dtype {}, which does not convert to {}",
            name(k),
            arr.getattr("dtype")?.str()?,
            T::NAME
        ))));
    }
    // `asarray(order="C")`, not `ascontiguousarray`, which makes 0-d arrays (and so Python and
    // NumPy scalars) 1-d.
    let kwargs = PyDict::new(py);
    kwargs.set_item("dtype", T::NAME)?;
    kwargs.set_item("order", "C")?;
    let arr = np.call_method("asarray", (arr,), Some(&kwargs))?;
    let a = arr.cast::<PyUntypedArray>()?;
    batch
        .check(k, a.shape(), expected, name)
        .map_err(to_py_err)?;
    Ok(InView {
        ptr: data_ptr(a),
        len: a.len(),
        bytes: a.len() * size_of::<T>(),
        _owner: arr.clone(),
    })
}

/// Checks a caller's `out=` array: exactly this dtype and shape, C-contiguous, aligned, writable.
/// The one `out=` rule: the compiled programs, the outer products, the optimisers and (through
/// `check_out`) the Python layer all use it.
pub(crate) fn out_view<'py, T: Float + Element>(
    obj: &Bound<'py, PyAny>,
    what: OutName,
    dims: &[usize],
) -> PyResult<OutView<'py>> {
    let fail = |e: Error| Err(to_py_err(e));
    let Ok(a) = obj.cast::<PyUntypedArray>() else {
        let type_name = obj.get_type().name().map_or("?".into(), |n| n.to_string());
        return fail(Error::Dtype(format!(
            "{what} must be a NumPy array of dtype {} and shape {}, got {type_name}",
            T::NAME,
            fmt_dims(dims),
        )));
    };
    let dtype = a.dtype();
    if !dtype.is_equiv_to(&numpy::dtype::<T>(obj.py())) {
        return fail(Error::Dtype(format!(
            "{what} has dtype {}; expected {}",
            dtype.str()?,
            T::NAME
        )));
    }
    if a.shape() != dims {
        return fail(Error::Shape(format!(
            "{what} has shape {}; expected {}",
            fmt_dims(a.shape()),
            fmt_dims(dims)
        )));
    }
    if !a.is_c_contiguous() || !a.is_aligned() {
        return fail(Error::Shape(format!(
            "{what} must be C-contiguous and aligned"
        )));
    }
    if !is_writeable(a) {
        return fail(Error::Invalid(format!("{what} is read-only")));
    }
    Ok(OutView {
        ptr: data_ptr(a),
        len: a.len(),
        bytes: a.len() * size_of::<T>(),
        array: obj.clone(),
    })
}

/// A new zeroed C-ordered array of `E`. An array NumPy cannot make, too large for memory or
/// for its size type, is a `MemoryError` naming its shape and bytes, never a panic.
pub(crate) fn zeros<'py, E: Element>(
    py: Python<'py>,
    dims: &[usize],
) -> PyResult<Bound<'py, PyUntypedArray>> {
    let item = size_of::<E>() as u128;
    let bytes = dims.iter().fold(item, |b, &d| b.saturating_mul(d as u128));
    // NumPy refuses shapes whose nonzero dimensions overflow its size type, even when empty.
    let span = dims
        .iter()
        .fold(item, |b, &d| b.saturating_mul(d.max(1) as u128));
    let too_large = || {
        to_py_err(Error::OutOfMemory {
            what: format!("an array of shape {}", fmt_dims(dims)),
            bytes,
        })
    };
    if span > isize::MAX as u128 {
        return Err(too_large());
    }
    let mut shape: SmallVec<[numpy::npyffi::npy_intp; 4]> =
        dims.iter().map(|&d| d as numpy::npyffi::npy_intp).collect();
    // SAFETY: `shape` holds `dims.len()` valid dimensions; the descriptor reference is stolen
    // by PyArray_Zeros, which returns a new reference or null with a Python error set.
    let ptr = unsafe {
        numpy::npyffi::PY_ARRAY_API.PyArray_Zeros(
            py,
            shape.len() as std::os::raw::c_int,
            shape.as_mut_ptr(),
            E::get_dtype(py).into_dtype_ptr(),
            0,
        )
    };
    if ptr.is_null() {
        let err = PyErr::take(py).unwrap_or_else(too_large);
        return Err(
            if err.is_instance_of::<pyo3::exceptions::PyMemoryError>(py) {
                too_large()
            } else {
                err
            },
        );
    }
    // SAFETY: a new reference to an ndarray.
    Ok(unsafe { Bound::from_owned_ptr(py, ptr).cast_into_unchecked() })
}

/// A new zeroed array of `T`, for results the caller did not give an `out=` for.
pub(crate) fn new_out<'py, T: Float + Element>(
    py: Python<'py>,
    dims: &[usize],
) -> PyResult<OutView<'py>> {
    let a = zeros::<T>(py, dims)?;
    Ok(OutView {
        ptr: data_ptr(&a),
        len: a.len(),
        bytes: a.len() * size_of::<T>(),
        array: a.into_any(),
    })
}

fn overlap(p: *const u8, n: usize, q: *const u8, m: usize) -> bool {
    let (p, q) = (p as usize, q as usize);
    n > 0 && m > 0 && p < q + m && q < p + n
}

/// Outputs must not share memory with inputs or with each other. Names are built only for errors.
pub(crate) fn check_no_aliasing(
    inputs: &[InView],
    input_name: Namer,
    outs: &[&OutView],
    out_name: &dyn Fn(usize) -> OutName<'static>,
) -> PyResult<()> {
    for (i, o) in outs.iter().enumerate() {
        if let Some(k) = inputs
            .iter()
            .position(|inp| overlap(o.ptr, o.bytes, inp.ptr, inp.bytes))
        {
            return Err(to_py_err(Error::Invalid(format!(
                "{} shares memory with {}; pass a separate array",
                out_name(i),
                input_name(k)
            ))));
        }
        if let Some(j) = outs[..i]
            .iter()
            .position(|o2| overlap(o.ptr, o.bytes, o2.ptr, o2.bytes))
        {
            return Err(to_py_err(Error::Invalid(format!(
                "{} shares memory with {}; pass separate arrays",
                out_name(i),
                out_name(j)
            ))));
        }
    }
    Ok(())
}

/// The bytes an array's elements span (as `numpy.byte_bounds`), as a view for the overlap test.
fn span<'py>(obj: &Bound<'py, PyAny>) -> Option<InView<'py>> {
    let a = obj.cast::<PyUntypedArray>().ok()?;
    let item = a.dtype().itemsize() as isize;
    if a.len() == 0 {
        return None;
    }
    let (mut lo, mut hi) = (0isize, item);
    for (&n, &stride) in a.shape().iter().zip(a.strides()) {
        let reach = (n as isize - 1) * stride;
        if reach < 0 {
            lo += reach;
        } else {
            hi += reach;
        }
    }
    Some(InView {
        // SAFETY: `lo` stays within the array's allocation (its lowest element).
        ptr: unsafe { data_ptr(a).offset(lo) },
        len: 0,
        bytes: (hi - lo) as usize,
        _owner: obj.clone(),
    })
}

/// Checks `out` as every `out=` of fastad is checked (`out_view`: dtype, exact shape,
/// C-contiguous, aligned, writable) and that it shares no memory with `inputs`; for the Python
/// layer's own methods, which check their `out=` before streaming into it.
/// (Tuples and the NumPy dtype are read in place: a checked call allocates nothing.)
#[pyfunction]
#[pyo3(signature = (out, shape, dtype, inputs))]
pub fn check_out(
    out: &Bound<'_, PyAny>,
    shape: &Bound<'_, PyTuple>,
    dtype: &Bound<'_, PyArrayDescr>,
    inputs: &Bound<'_, PyTuple>,
) -> PyResult<()> {
    let dtype = super::dtype::Dtype::of_descr(dtype).ok_or_else(|| {
        to_py_err(Error::Dtype(
            "check_out: dtype must be float32 or float64".into(),
        ))
    })?;
    let dims = shape
        .iter()
        .map(|d| d.extract::<usize>())
        .collect::<PyResult<SmallVec<[usize; 4]>>>()?;
    let view =
        super::dtype::by_dtype!(dtype, T => out_view::<T>(out, OutName::Plain("out"), &dims)?);
    let spans: SmallVec<[InView; 4]> = inputs.iter().filter_map(|a| span(&a)).collect();
    check_no_aliasing(
        &spans,
        &|_| "an input (X, Y or the parameters)".into(),
        &[&view],
        &|_| OutName::Plain("out"),
    )
}
