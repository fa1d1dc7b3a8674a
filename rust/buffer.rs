//! Growing buffers whose size comes from the caller (a batch size, a parameter count): the
//! allocation is fallible, so a size larger than memory is an `Error::OutOfMemory` naming it,
//! never an abort, and the buffer keeps its old contents.
use crate::error::{Error, Result};

/// Resizes `buf` to `len` elements, new ones `fill`, reporting a failed allocation.
pub(crate) fn resize<T: Copy>(buf: &mut Vec<T>, len: usize, fill: T, what: &str) -> Result<()> {
    if len > buf.len() {
        let more = len - buf.len();
        buf.try_reserve_exact(more)
            .map_err(|_| Error::OutOfMemory {
                what: what.to_string(),
                bytes: len as u128 * std::mem::size_of::<T>() as u128,
            })?;
    }
    buf.resize(len, fill);
    Ok(())
}

/// A new buffer of `len` elements, all `fill`.
pub(crate) fn filled<T: Copy>(len: usize, fill: T, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    resize(&mut v, len, fill, what)?;
    Ok(v)
}
