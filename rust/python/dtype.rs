//! The one way the bindings name an element type: `Dtype`, read from a name or an array, and
//! `Typed`, one value per element type, with `typed!` to run generic code on whichever it holds.
use crate::error::Error;
use numpy::{PyArrayDescr, PyArrayDescrMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;

/// The element types fastad computes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dtype {
    F32,
    F64,
}

impl Dtype {
    /// From NumPy's name: "float32" or "float64".
    pub fn from_name(name: &str) -> Result<Dtype, Error> {
        match name {
            "float32" => Ok(Dtype::F32),
            "float64" => Ok(Dtype::F64),
            _ => Err(Error::Dtype(format!(
                "dtype must be float32 or float64, got {name}"
            ))),
        }
    }

    /// The dtype of a float32 or float64 array; `None` for any other dtype.
    pub fn of_array(a: &Bound<'_, PyUntypedArray>) -> Option<Dtype> {
        Dtype::of_descr(&a.dtype())
    }

    /// A NumPy dtype, if float32 or float64.
    pub fn of_descr(d: &Bound<'_, PyArrayDescr>) -> Option<Dtype> {
        let py = d.py();
        if d.is_equiv_to(&numpy::dtype::<f32>(py)) {
            Some(Dtype::F32)
        } else if d.is_equiv_to(&numpy::dtype::<f64>(py)) {
            Some(Dtype::F64)
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::F64 => "float64",
        }
    }
}

/// One value for each element type, e.g. a program compiled for float32 or for float64.
pub(crate) enum Typed<A, B> {
    F32(A),
    F64(B),
}

impl<A, B> Typed<A, B> {
    pub fn dtype(&self) -> Dtype {
        match self {
            Typed::F32(_) => Dtype::F32,
            Typed::F64(_) => Dtype::F64,
        }
    }
}

/// `typed!(value, x => expr)`: evaluates `expr` with `x` bound to the `Typed` value's content,
/// whichever element type it is (the expression is compiled once per type).
macro_rules! typed {
    ($value:expr, $x:ident => $body:expr) => {
        match $value {
            $crate::python::dtype::Typed::F32($x) => $body,
            $crate::python::dtype::Typed::F64($x) => $body,
        }
    };
}
pub(crate) use typed;

/// `by_dtype!(dtype, T => expr)`: evaluates `expr` with the type `T` set to the element type.
macro_rules! by_dtype {
    ($dtype:expr, $t:ident => $body:expr) => {
        match $dtype {
            $crate::python::dtype::Dtype::F32 => {
                type $t = f32;
                $body
            }
            $crate::python::dtype::Dtype::F64 => {
                type $t = f64;
                $body
            }
        }
    };
}
pub(crate) use by_dtype;
