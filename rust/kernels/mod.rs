//! Numeric kernels on flat row-major buffers. Every kernel writes into memory it is given and
//! allocates nothing. Forward kernels overwrite their output; backward kernels accumulate (`+=`)
//! into the adjoint they are given, so an operand used twice simply receives two contributions
//! (or, told that they are its only writer, assign it: see `plan::step::Step::first_write`).
pub mod cache;
pub mod elementwise;
pub mod gemm;
pub mod reduce;
pub mod simd;
pub mod vmath;

/// Below this many elements a kernel runs on the calling thread: waking workers costs more.
pub const PARALLEL_MIN_ELEMENTS: usize = 1 << 15;

/// A mutable slice shared by tasks that write disjoint ranges of it.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut<T> {
    ptr: *mut T,
    len: usize,
}

unsafe impl<T: Send> Send for SharedMut<T> {}
unsafe impl<T: Send> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    pub(crate) fn new(s: &mut [T]) -> Self {
        SharedMut {
            ptr: s.as_mut_ptr(),
            len: s.len(),
        }
    }
    /// SAFETY: concurrent callers must ask for disjoint ranges.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn range(&self, r: std::ops::Range<usize>) -> &mut [T] {
        assert!(r.start <= r.end && r.end <= self.len);
        std::slice::from_raw_parts_mut(self.ptr.add(r.start), r.end - r.start)
    }
}

/// Runs `f(range, out[range])` over chunks of `out`, in parallel for long buffers.
pub(crate) fn for_chunks_mut<T: Send>(
    out: &mut [T],
    f: impl Fn(std::ops::Range<usize>, &mut [T]) + Sync,
) {
    let shared = SharedMut::new(out);
    crate::parallel::for_chunks(shared.len, PARALLEL_MIN_ELEMENTS, &|r| {
        // SAFETY: `for_chunks` hands out disjoint ranges.
        f(r.clone(), unsafe { shared.range(r) })
    });
}

/// y += a·x over y's length (x at least as long). Written in blocks of 16 so that short vectors
/// (a layer of 32 units) run as whole vector instructions: a plain loop is unrolled by the
/// compiler to 64 elements per iteration and would leave a 32-element vector to its scalar tail.
/// Inline it into a `simd::dispatch` closure to get the wide instructions.
#[inline(always)]
pub(crate) fn axpy<T: crate::float::Float>(y: &mut [T], a: T, x: &[T]) {
    blocks_of_16(y, x, |y, x| *y += a * x)
}

/// c += Σ_p coef(p)·row(p) for p in 0..count (each row at least c.len() long): repeated axpys,
/// with c's columns in blocks of 16 summed in registers down all the rows. An axpy per row would
/// chain every row's additions through a store and a reload of c, which for short c (a layer of
/// 32 units) costs more than the arithmetic. Inline it into a `simd::dispatch` closure.
#[inline(always)]
pub(crate) fn add_row_combination<'a, T: crate::float::Float + 'a>(
    c: &mut [T],
    count: usize,
    coef: impl Fn(usize) -> T,
    row: impl Fn(usize) -> &'a [T],
) {
    const BLOCK: usize = 16;
    let n = c.len();
    for start in (0..n).step_by(BLOCK) {
        let width = BLOCK.min(n - start);
        let mut acc = [T::zero(); BLOCK];
        for p in 0..count {
            let (a, r) = (coef(p), &row(p)[start..start + width]);
            if width == BLOCK {
                for i in 0..BLOCK {
                    acc[i] += a * r[i];
                }
            } else {
                for i in 0..width {
                    acc[i] += a * r[i];
                }
            }
        }
        for i in 0..width {
            c[start + i] += acc[i];
        }
    }
}

/// y = a·x over y's length (x at least as long), in blocks of 16 like `axpy`.
#[inline(always)]
pub(crate) fn scaled<T: crate::float::Float>(y: &mut [T], a: T, x: &[T]) {
    blocks_of_16(y, x, |y, x| *y = a * x)
}

/// y = a·x, or y += a·x with `accumulate` (`scaled` or `axpy`).
#[inline(always)]
pub(crate) fn scaled_into<T: crate::float::Float>(y: &mut [T], a: T, x: &[T], accumulate: bool) {
    if accumulate {
        axpy(y, a, x)
    } else {
        scaled(y, a, x)
    }
}

/// c (a.len() × b.len(), row-major) = scale·a bᵀ, or += with `accumulate`: along c's rows, or
/// for one column down it, so the inner loop is long and vectorises. Inline it into a
/// `simd::dispatch` closure.
#[inline(always)]
pub(crate) fn outer_rows<T: crate::float::Float>(
    c: &mut [T],
    scale: T,
    a: &[T],
    b: &[T],
    accumulate: bool,
) {
    match b.len() {
        0 => {}
        1 => scaled_into(&mut c[..a.len()], scale * b[0], a, accumulate),
        n => {
            for (row, &ai) in c.chunks_exact_mut(n).zip(a) {
                scaled_into(row, scale * ai, b, accumulate);
            }
        }
    }
}

/// Every row of `out` (rows × row.len()) = `row`: a bias broadcast over a batch. Short rows are
/// copied with vector moves; `copy_from_slice` would call memcpy once per row.
pub(crate) fn fill_rows<T: crate::float::Float>(out: &mut [T], row: &[T]) {
    match row.len() {
        0 => {}
        1 => out.fill(row[0]),
        n => simd::dispatch(
            #[inline(always)]
            || {
                for o in out.chunks_exact_mut(n) {
                    blocks_of_16(o, row, |o, x| *o = x);
                }
            },
        ),
    }
}

#[inline(always)]
fn blocks_of_16<T: Copy>(y: &mut [T], x: &[T], f: impl Fn(&mut T, T)) {
    const BLOCK: usize = 16;
    let n = y.len();
    let x = &x[..n];
    let whole = n - n % BLOCK;
    // A plain count of blocks: a stepped range's bookkeeping costs more than the arithmetic
    // when y is a layer's row of 32.
    for b in 0..n / BLOCK {
        let c = b * BLOCK;
        let (y, x) = (&mut y[c..c + BLOCK], &x[c..c + BLOCK]);
        for i in 0..BLOCK {
            f(&mut y[i], x[i]);
        }
    }
    for i in whole..n {
        f(&mut y[i], x[i]);
    }
}
