//! One error type for the whole crate: what went wrong, as a variant, with a message that names
//! the shapes, dtypes and values involved. The core knows nothing of Python; the bindings map
//! each variant to a Python exception in one place (`python/errors.rs`).
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// An array's shape, length or batch size does not match what the program expects.
    Shape(String),
    /// An array's element type is not the one expected.
    Dtype(String),
    /// The wrong number of arguments, gradient buffers or outputs.
    Arity(String),
    /// A class label that is not an integer in `0..classes`, in row `row` of the batch the
    /// failing step saw (`in_rows` maps it to the caller's row).
    Label {
        value: String,
        row: usize,
        classes: usize,
    },
    /// A question this program cannot answer: a gradient of a non-scalar output.
    NotScalar(String),
    /// A question this program cannot answer: per-sample gradients of a loss without a
    /// per-sample split, training on a program that is not a loss of (params, X[, Y]).
    Unsupported(String),
    /// A setting out of range: a learning rate, an axis, a batch size, a node or argument index.
    Invalid(String),
    /// A buffer of `bytes` bytes (for `what`) could not be allocated.
    OutOfMemory { what: String, bytes: u128 },
    /// The front end asked a long call to stop (Ctrl-C), between two units of its work.
    Interrupted,
    /// An object that cannot be used any more in this process (a front end's lock held by a
    /// thread lost to a fork).
    Unavailable(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A label error's row as the caller numbers it, for work done on a slice of its batch
    /// (a tile, a shuffled training batch); other errors unchanged.
    pub fn in_rows(self, caller_row: impl FnOnce(usize) -> usize) -> Error {
        match self {
            Error::Label {
                value,
                row,
                classes,
            } => Error::Label {
                value,
                row: caller_row(row),
                classes,
            },
            e => e,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Shape(m)
            | Error::Dtype(m)
            | Error::Arity(m)
            | Error::NotScalar(m)
            | Error::Unsupported(m)
            | Error::Invalid(m)
            | Error::Unavailable(m) => f.write_str(m),
            Error::OutOfMemory { what, bytes } => {
                write!(f, "cannot allocate {bytes} bytes for {what}")
            }
            Error::Interrupted => f.write_str("interrupted"),
            Error::Label {
                value,
                row,
                classes,
            } => write!(
                f,
                "label {value} in row {row} is not a class index in 0..{classes}"
            ),
        }
    }
}

impl std::error::Error for Error {}
