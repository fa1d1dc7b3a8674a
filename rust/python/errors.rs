//! The one place core errors become Python exceptions.
use crate::error::Error;
use pyo3::exceptions::{PyMemoryError, PyTypeError, PyValueError};
use pyo3::PyErr;

pub(crate) fn to_py_err(e: Error) -> PyErr {
    let message = e.to_string();
    match e {
        Error::Shape(_) | Error::Label(_) | Error::Unsupported(_) | Error::Invalid(_) => {
            PyValueError::new_err(message)
        }
        Error::Dtype(_) | Error::Arity(_) | Error::NotScalar(_) => PyTypeError::new_err(message),
        Error::OutOfMemory { .. } => PyMemoryError::new_err(message),
    }
}
