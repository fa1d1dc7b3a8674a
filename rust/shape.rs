//! Shapes of rank 0, 1 or 2 whose dimensions are fixed or the batch size `N`, known only per call.
use crate::error::{Error, Result};
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dim {
    /// The batch size, chosen by each call.
    Batch,
    Fixed(usize),
}

impl Dim {
    #[inline]
    pub fn resolve(self, batch: usize) -> usize {
        match self {
            Dim::Batch => batch,
            Dim::Fixed(n) => n,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    rank: u8,
    dims: [Dim; 2],
}

impl Shape {
    pub const SCALAR: Shape = Shape {
        rank: 0,
        dims: [Dim::Fixed(1); 2],
    };

    pub fn scalar() -> Shape {
        Shape::SCALAR
    }
    pub fn vector(n: usize) -> Shape {
        Shape::from_dims(&[Dim::Fixed(n)])
    }
    pub fn matrix(rows: usize, cols: usize) -> Shape {
        Shape::from_dims(&[Dim::Fixed(rows), Dim::Fixed(cols)])
    }
    /// `(N, cols)`: a batch of row vectors.
    pub fn batch_of(cols: usize) -> Shape {
        Shape::from_dims(&[Dim::Batch, Dim::Fixed(cols)])
    }

    /// Panics on rank > 2: callers check ranks of user input with `try_from_dims`.
    pub fn from_dims(dims: &[Dim]) -> Shape {
        Shape::try_from_dims(dims).expect("rank at most 2")
    }

    pub fn try_from_dims(dims: &[Dim]) -> Result<Shape> {
        if dims.len() > 2 {
            return Err(Error::Shape(format!(
                "fastad arrays have rank 0, 1 or 2; got a shape of rank {}",
                dims.len()
            )));
        }
        // Bytes of float64 elements must fit NumPy's (and the allocator's) isize: larger
        // shapes are refused here, so element counts (with a batch factor up to that size)
        // never wrap.
        let fixed = dims.iter().try_fold(8usize, |n, d| match d {
            Dim::Fixed(k) => n.checked_mul(*k),
            Dim::Batch => Some(n),
        });
        if fixed.is_none_or(|bytes| bytes > isize::MAX as usize) {
            let shape: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
            return Err(Error::Shape(format!(
                "shape ({}) has more elements than any array can hold",
                shape.join(", ")
            )));
        }
        let mut d = [Dim::Fixed(1); 2];
        d[..dims.len()].copy_from_slice(dims);
        Ok(Shape {
            rank: dims.len() as u8,
            dims: d,
        })
    }

    pub fn rank(&self) -> usize {
        self.rank as usize
    }
    pub fn dims(&self) -> &[Dim] {
        &self.dims[..self.rank as usize]
    }
    pub fn is_batched(&self) -> bool {
        self.dims().contains(&Dim::Batch)
    }

    /// The concrete shape for a batch size.
    pub fn resolve(&self, batch: usize) -> Concrete {
        let mut dims = [1usize; 2];
        for (d, s) in dims.iter_mut().zip(self.dims()) {
            *d = s.resolve(batch);
        }
        Concrete {
            rank: self.rank,
            dims,
        }
    }

    /// Number of elements for a batch size. Hot (the sweeps slice their buffers with it), so
    /// unchecked: buffers are sized with `alloc_len`, and once they exist every length fits.
    #[inline]
    pub fn len(&self, batch: usize) -> usize {
        self.dims().iter().map(|d| d.resolve(batch)).product()
    }

    /// `len` for sizing a buffer: `usize::MAX` when the count overflows, a size no allocation
    /// can meet (so it surfaces as `Error::OutOfMemory`, never as a wrapped count).
    pub fn alloc_len(&self, batch: usize) -> usize {
        self.dims()
            .iter()
            .try_fold(1usize, |n, d| n.checked_mul(d.resolve(batch)))
            .unwrap_or(usize::MAX)
    }

    /// The shape as a 2-D `(rows, cols)` view, right-aligned as NumPy broadcasts:
    /// a scalar is (1, 1) and a vector of n is (1, n).
    pub fn as_2d(&self) -> [Dim; 2] {
        match self.rank {
            0 => [Dim::Fixed(1), Dim::Fixed(1)],
            1 => [Dim::Fixed(1), self.dims[0]],
            _ => self.dims,
        }
    }

    /// NumPy broadcasting of two shapes.
    pub fn broadcast(a: Shape, b: Shape) -> Result<Shape> {
        let rank = a.rank.max(b.rank) as usize;
        let (a2, b2) = (a.as_2d(), b.as_2d());
        let mut out = [Dim::Fixed(1); 2];
        for i in 0..2 {
            out[i] = match (a2[i], b2[i]) {
                (x, y) if x == y => x,
                (Dim::Fixed(1), y) => y,
                (x, Dim::Fixed(1)) => x,
                _ => {
                    return Err(Error::Shape(format!(
                        "shapes {a} and {b} cannot be broadcast together"
                    )))
                }
            };
        }
        Ok(Shape::from_dims(&out[2 - rank..]))
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(")?;
        for (i, d) in self.dims().iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str(if self.rank == 1 { ",)" } else { ")" })
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Batch => f.write_str("None"),
            Dim::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// `(2, 3)`, `(3,)` or `()`: dimensions as NumPy prints a shape tuple.
pub fn fmt_dims(dims: &[usize]) -> String {
    match dims {
        [] => "()".into(),
        [n] => format!("({n},)"),
        _ => {
            let inner: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
            format!("({})", inner.join(", "))
        }
    }
}

/// The batch size of one call, taken from its arguments' shapes: the first batched argument
/// sets it, and every later one must agree. One rule for every entry point (NumPy arrays in the
/// bindings, `ndarray` views in the core).
#[derive(Clone, Copy, Debug, Default)]
pub struct BatchSize {
    /// (rows, the argument that set them)
    first: Option<(usize, usize)>,
}

impl BatchSize {
    /// The batch size; 0 when no argument is batched.
    pub fn get(&self) -> usize {
        self.first.map_or(0, |(n, _)| n)
    }

    /// Checks argument `k`'s dimensions `actual` against `expected`, and its batch size against
    /// the earlier arguments'. `name(k)` names an argument in messages (built only for them).
    pub fn check(
        &mut self,
        k: usize,
        actual: &[usize],
        expected: Shape,
        name: &dyn Fn(usize) -> String,
    ) -> Result<()> {
        let bad = || {
            Error::Shape(format!(
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
                Dim::Batch => match self.first {
                    Some((m, first)) if m != n => {
                        return Err(Error::Shape(format!(
                            "batch sizes differ: {} has {m} rows, {} has {n}",
                            name(first),
                            name(k)
                        )))
                    }
                    None => self.first = Some((n, k)),
                    _ => {}
                },
                _ => {}
            }
        }
        Ok(())
    }
}

/// A shape with the batch size filled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Concrete {
    pub rank: u8,
    pub dims: [usize; 2],
}

impl Concrete {
    pub fn len(&self) -> usize {
        self.dims[..self.rank as usize].iter().product()
    }
    pub fn dims(&self) -> &[usize] {
        &self.dims[..self.rank as usize]
    }
    /// `(rows, cols)` as in `Shape::as_2d`.
    pub fn as_2d(&self) -> (usize, usize) {
        match self.rank {
            0 => (1, 1),
            1 => (1, self.dims[0]),
            _ => (self.dims[0], self.dims[1]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_follows_numpy() {
        let nb = Shape::batch_of(3);
        assert_eq!(Shape::broadcast(nb, Shape::vector(3)).unwrap(), nb);
        assert_eq!(Shape::broadcast(Shape::scalar(), nb).unwrap(), nb);
        assert_eq!(
            Shape::broadcast(Shape::matrix(4, 1), Shape::vector(5)).unwrap(),
            Shape::matrix(4, 5)
        );
        assert!(Shape::broadcast(nb, Shape::vector(4)).is_err());
        assert!(Shape::broadcast(Shape::from_dims(&[Dim::Batch]), Shape::vector(4)).is_err());
    }

    #[test]
    fn display_matches_numpy_tuples() {
        assert_eq!(Shape::scalar().to_string(), "()");
        assert_eq!(Shape::vector(3).to_string(), "(3,)");
        assert_eq!(Shape::batch_of(2).to_string(), "(None, 2)");
    }

    #[test]
    fn sizes_never_wrap() {
        // (2³² + 1) · 18446744060824649731 wraps to 3 in 64 bits: refused, as is anything
        // whose float64 bytes exceed isize::MAX.
        let wraps = [Dim::Fixed((1 << 32) + 1), Dim::Fixed(18446744060824649731)];
        assert!(matches!(Shape::try_from_dims(&wraps), Err(Error::Shape(_))));
        assert!(Shape::try_from_dims(&[Dim::Fixed(1 << 60)]).is_err());
        assert!(Shape::try_from_dims(&[Dim::Fixed(1 << 59), Dim::Batch]).is_ok());
        // A batch factor that overflows sizes no buffer.
        let s = Shape::batch_of(1 << 40);
        assert_eq!(s.alloc_len(1 << 30), usize::MAX);
        assert_eq!(s.alloc_len(3), 3 << 40);
    }
}
