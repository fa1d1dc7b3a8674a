//! One error type for the whole crate: a kind (what Python exception it becomes) and a message
//! that names the shapes and dtypes involved.
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Wrong shape, wrong batch size, bad axis, label out of range: Python `ValueError`.
    Value,
    /// Wrong dtype or a use the program does not support: Python `TypeError`.
    Type,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn value(message: impl Into<String>) -> Self {
        Error {
            kind: ErrorKind::Value,
            message: message.into(),
        }
    }
    pub fn type_error(message: impl Into<String>) -> Self {
        Error {
            kind: ErrorKind::Type,
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}
