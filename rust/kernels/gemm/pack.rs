//! Packing: copying a block of a strided matrix into the order a micro-kernel reads it, so the
//! kernel's loads are contiguous whatever the operand's layout (transposed operands included).

/// A strided read-only matrix: element (i, j) is at `ptr + i·row_stride + j·col_stride`.
#[derive(Clone, Copy)]
pub struct View<T> {
    pub ptr: *const T,
    pub row_stride: usize,
    pub col_stride: usize,
}

unsafe impl<T: Sync> Send for View<T> {}
unsafe impl<T: Sync> Sync for View<T> {}

impl<T> View<T> {
    pub fn transposed(self) -> View<T> {
        View {
            ptr: self.ptr,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }
    /// The view starting at element (i, j).
    pub unsafe fn at(self, i: usize, j: usize) -> View<T> {
        View {
            ptr: self.ptr.add(i * self.row_stride + j * self.col_stride),
            ..self
        }
    }
}

/// Packs `rows × depth` of `src` into slivers of `width` rows: sliver s holds, for each column
/// p, rows s·width .. s·width+width of that column, contiguously; rows past `rows` are zero.
/// `dst` must hold ⌈rows/width⌉·width·depth elements.
///
/// A's blocks are packed as they are; B's as Bᵀ (slivers of `width` columns).
pub unsafe fn pack<T: Copy + Default>(
    src: View<T>,
    rows: usize,
    depth: usize,
    width: usize,
    dst: &mut [T],
) {
    let slivers = rows.div_ceil(width);
    debug_assert!(dst.len() >= slivers * width * depth);
    if src.row_stride == 1 && pack_by_columns(src, rows, depth, width, dst) {
        return;
    }
    for s in 0..slivers {
        let r0 = s * width;
        let live = width.min(rows - r0);
        let out = &mut dst[s * width * depth..(s + 1) * width * depth];
        let at = |i: usize, p: usize| *src.ptr.add((r0 + i) * src.row_stride + p * src.col_stride);
        let rows_contiguous = src.col_stride == 1 && live == width;
        if rows_contiguous && interleave_rows(src.at(r0, 0), width, depth, out) {
            // Done, all the rows read at once.
        } else {
            // Walk each source row contiguously (when col_stride is 1), writing with stride.
            for i in 0..live {
                for p in 0..depth {
                    out[p * width + i] = at(i, p);
                }
            }
            for i in live..width {
                for p in 0..depth {
                    out[p * width + i] = T::default();
                }
            }
        }
    }
}

/// `$f::<T, W>(args)` with `width` as the constant W, for the widths the kernels use (every MR
/// and NR), then true; false for any other width, whose caller falls back to a general loop.
macro_rules! with_constant_width {
    ($width:expr, $f:ident::<$t:ty>($($arg:expr),*)) => {{
        match $width {
            4 => $f::<$t, 4>($($arg),*),
            6 => $f::<$t, 6>($($arg),*),
            8 => $f::<$t, 8>($($arg),*),
            12 => $f::<$t, 12>($($arg),*),
            16 => $f::<$t, 16>($($arg),*),
            32 => $f::<$t, 32>($($arg),*),
            _ => return false,
        }
        true
    }};
}

/// `pack` where columns are contiguous (row_stride 1: B stored row by row, packed as Bᵀ): the
/// columns are read from end to end, COLUMNS_AT_ONCE at a time, their runs of `width` going
/// to every sliver in turn. (A sliver at a time read `width` elements of each column, a whole
/// column's stride apart: the hardware prefetcher, which follows accesses within a page,
/// missed them all, and packing took 6.7% of a 1024³ f32 product on two threads of a Xeon.)
/// Several columns at once write each sliver a contiguous run of COLUMNS_AT_ONCE·width
/// elements, where one column's runs went each to a different sliver, slivers a power of two
/// apart: every write of a column fell in one L1 set. Xeon, 1024³ f64, one thread: packing
/// 0.92 → 0.72 ms per product. The kernels' widths are constants, so a run is a few vector
/// moves, not a call to `memcpy`. False for a width without a specialised loop, as
/// `interleave_rows`.
unsafe fn pack_by_columns<T: Copy + Default>(
    src: View<T>,
    rows: usize,
    depth: usize,
    width: usize,
    dst: &mut [T],
) -> bool {
    with_constant_width!(width, by_columns::<T>(src, rows, depth, dst))
}

/// Columns `by_columns` copies together.
const COLUMNS_AT_ONCE: usize = 8;

#[inline(always)]
unsafe fn by_columns<T: Copy + Default, const W: usize>(
    src: View<T>,
    rows: usize,
    depth: usize,
    dst: &mut [T],
) {
    let (runs, tail) = (rows / W, rows % W);
    let column = |p: usize| src.ptr.add(p * src.col_stride);
    for p0 in (0..depth).step_by(COLUMNS_AT_ONCE) {
        let columns = p0..(p0 + COLUMNS_AT_ONCE).min(depth);
        for s in 0..runs {
            for p in columns.clone() {
                let run = &*(column(p).add(s * W) as *const [T; W]);
                let out: &mut [T; W] = (&mut dst[(s * depth + p) * W..][..W]).try_into().unwrap();
                *out = *run;
            }
        }
        if tail > 0 {
            for p in columns {
                let run = std::slice::from_raw_parts(column(p).add(runs * W), tail);
                let out = &mut dst[(runs * depth + p) * W..][..W];
                out[..tail].copy_from_slice(run);
                out[tail..].fill(T::default());
            }
        }
    }
}

/// Packs one full sliver whose rows are contiguous (col_stride 1): for each column p, the
/// `width` rows' elements p side by side. Reading all the rows at once writes `out`
/// in order, and a constant width lets the compiler transpose in registers. (The general loop
/// walks one row at a time, writing with a stride: packing so took 5.7% of a 1024³ f32
/// product's time on AVX2, against 3.5% here.) False for a width without a specialised loop.
#[inline]
unsafe fn interleave_rows<T: Copy>(
    src: View<T>,
    width: usize,
    depth: usize,
    out: &mut [T],
) -> bool {
    with_constant_width!(width, interleave::<T>(src, depth, out))
}

#[inline(always)]
unsafe fn interleave<T: Copy, const W: usize>(src: View<T>, depth: usize, out: &mut [T]) {
    let rows: [*const T; W] = std::array::from_fn(|i| src.ptr.add(i * src.row_stride));
    debug_assert!(out.len() >= W * depth);
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    let done = transpose_in_registers::<T, W>(&rows, depth, out.as_mut_ptr());
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let done = 0;
    for (p, column) in out.chunks_exact_mut(W).take(depth).enumerate().skip(done) {
        for i in 0..W {
            column[i] = *rows[i].add(p);
        }
    }
}

/// `interleave`'s columns 0..done (returned) by transposes in 128-bit registers, which every
/// x86-64 (SSE2) and aarch64 (NEON) CPU has: 4×4 blocks of 4-byte elements (with two rows
/// left over, W = 6 in AVX2's f32 slivers, as 2×4), 2×2 of 8-byte ones; the rest is left to
/// the caller's loop. The moves and shuffles copy bits, so any element type of that size is
/// copied exactly. (Element by element, the compiler emitted one scalar load and store each:
/// packing A took 6% of a 512-wide network's forward pass.)
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[inline(always)]
unsafe fn transpose_in_registers<T, const W: usize>(
    rows: &[*const T; W],
    depth: usize,
    out: *mut T,
) -> usize {
    match std::mem::size_of::<T>() {
        4 if W.is_multiple_of(2) => {
            let (rows, out) = (rows.map(|r| r as *const f32), out as *mut f32);
            let full = depth / 4 * 4;
            for p in (0..full).step_by(4) {
                for g in (0..W - W % 4).step_by(4) {
                    let block = std::array::from_fn(|i| rows[g + i].add(p));
                    registers::transpose_4x4(block, out.add(p * W + g), W);
                }
                if W % 4 == 2 {
                    let g = W - 2;
                    let pair = [rows[g].add(p), rows[g + 1].add(p)];
                    registers::transpose_2x4(pair, out.add(p * W + g), W);
                }
            }
            full
        }
        8 if W.is_multiple_of(2) => {
            let (rows, out) = (rows.map(|r| r as *const f64), out as *mut f64);
            let full = depth / 2 * 2;
            for p in (0..full).step_by(2) {
                for g in (0..W).step_by(2) {
                    let pair = [rows[g].add(p), rows[g + 1].add(p)];
                    registers::transpose_2x2(pair, out.add(p * W + g), W);
                }
            }
            full
        }
        _ => 0,
    }
}

/// The transposes of `transpose_in_registers`, in SSE2. Each reads its rows' first elements
/// and writes column c of the block at `out + c·stride`.
#[cfg(target_arch = "x86_64")]
mod registers {
    use std::arch::x86_64::*;

    #[inline(always)]
    pub unsafe fn transpose_4x4(rows: [*const f32; 4], out: *mut f32, stride: usize) {
        let row = |i: usize| _mm_loadu_ps(rows[i]);
        let (t0, t1) = (
            _mm_unpacklo_ps(row(0), row(1)),
            _mm_unpackhi_ps(row(0), row(1)),
        );
        let (t2, t3) = (
            _mm_unpacklo_ps(row(2), row(3)),
            _mm_unpackhi_ps(row(2), row(3)),
        );
        _mm_storeu_ps(out, _mm_movelh_ps(t0, t2));
        _mm_storeu_ps(out.add(stride), _mm_movehl_ps(t2, t0));
        _mm_storeu_ps(out.add(2 * stride), _mm_movelh_ps(t1, t3));
        _mm_storeu_ps(out.add(3 * stride), _mm_movehl_ps(t3, t1));
    }

    /// Two rows of 4: four columns of 2, as 8-byte stores that need no alignment (movq).
    #[inline(always)]
    pub unsafe fn transpose_2x4(rows: [*const f32; 2], out: *mut f32, stride: usize) {
        let (r0, r1) = (_mm_loadu_ps(rows[0]), _mm_loadu_ps(rows[1]));
        let (t0, t1) = (_mm_unpacklo_ps(r0, r1), _mm_unpackhi_ps(r0, r1));
        let (t0, t1) = (_mm_castps_si128(t0), _mm_castps_si128(t1));
        let column = |c: usize| out.add(c * stride) as *mut __m128i;
        _mm_storel_epi64(column(0), t0);
        _mm_storel_epi64(column(1), _mm_unpackhi_epi64(t0, t0));
        _mm_storel_epi64(column(2), t1);
        _mm_storel_epi64(column(3), _mm_unpackhi_epi64(t1, t1));
    }

    #[inline(always)]
    pub unsafe fn transpose_2x2(rows: [*const f64; 2], out: *mut f64, stride: usize) {
        let (a, b) = (_mm_loadu_pd(rows[0]), _mm_loadu_pd(rows[1]));
        _mm_storeu_pd(out, _mm_unpacklo_pd(a, b));
        _mm_storeu_pd(out.add(stride), _mm_unpackhi_pd(a, b));
    }
}

/// The transposes of `transpose_in_registers`, in NEON (`trn` and `zip` copy bits, as the
/// loads and stores do). Each reads its rows' first elements and writes column c of the block
/// at `out + c·stride`.
#[cfg(target_arch = "aarch64")]
mod registers {
    use std::arch::aarch64::*;

    #[inline(always)]
    pub unsafe fn transpose_4x4(rows: [*const f32; 4], out: *mut f32, stride: usize) {
        let row = |i: usize| vld1q_f32(rows[i]);
        // Pairs of rows interleaved, then their 8-byte halves.
        let (t0, t1) = (vtrn1q_f32(row(0), row(1)), vtrn2q_f32(row(0), row(1)));
        let (t2, t3) = (vtrn1q_f32(row(2), row(3)), vtrn2q_f32(row(2), row(3)));
        let halves = |lo: float32x4_t, hi: float32x4_t, first: bool| {
            let (lo, hi) = (vreinterpretq_f64_f32(lo), vreinterpretq_f64_f32(hi));
            let both = match first {
                true => vzip1q_f64(lo, hi),
                false => vzip2q_f64(lo, hi),
            };
            vreinterpretq_f32_f64(both)
        };
        vst1q_f32(out, halves(t0, t2, true));
        vst1q_f32(out.add(stride), halves(t1, t3, true));
        vst1q_f32(out.add(2 * stride), halves(t0, t2, false));
        vst1q_f32(out.add(3 * stride), halves(t1, t3, false));
    }

    /// Two rows of 4: four columns of 2 (8-byte stores).
    #[inline(always)]
    pub unsafe fn transpose_2x4(rows: [*const f32; 2], out: *mut f32, stride: usize) {
        let (r0, r1) = (vld1q_f32(rows[0]), vld1q_f32(rows[1]));
        let (lo, hi) = (vzip1q_f32(r0, r1), vzip2q_f32(r0, r1));
        vst1_f32(out, vget_low_f32(lo));
        vst1_f32(out.add(stride), vget_high_f32(lo));
        vst1_f32(out.add(2 * stride), vget_low_f32(hi));
        vst1_f32(out.add(3 * stride), vget_high_f32(hi));
    }

    #[inline(always)]
    pub unsafe fn transpose_2x2(rows: [*const f64; 2], out: *mut f64, stride: usize) {
        let (a, b) = (vld1q_f64(rows[0]), vld1q_f64(rows[1]));
        vst1q_f64(out, vzip1q_f64(a, b));
        vst1q_f64(out.add(stride), vzip2q_f64(a, b));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pack` of a sliver whose rows are contiguous, at every width the kernels use (in
    /// registers where the width allows, W = 6's pairs included, on x86-64 and aarch64), against
    /// the definition, bit for bit: depths that leave a remainder for the element loop, and
    /// values whose bits a float move could alter (a signalling NaN's payload, −0.0).
    fn check<T: Copy + Default + PartialEq + std::fmt::Debug>(value: impl Fn(usize) -> T) {
        for width in [4, 6, 8, 12, 16, 32] {
            for depth in [1, 2, 3, 4, 5, 7, 8, 9, 13] {
                let stride = depth + 3;
                let src: Vec<T> = (0..width * stride).map(&value).collect();
                let view = View {
                    ptr: src.as_ptr(),
                    row_stride: stride,
                    col_stride: 1,
                };
                let mut out = vec![T::default(); width * depth];
                // SAFETY: the view addresses width rows of `depth` ≤ stride elements.
                unsafe { pack(view, width, depth, width, &mut out) };
                for p in 0..depth {
                    for i in 0..width {
                        assert_eq!(out[p * width + i], src[i * stride + p], "{width}×{depth}");
                    }
                }
            }
        }
    }

    #[test]
    fn contiguous_rows_are_packed_exactly_at_every_width() {
        let bits32 = |i: usize| match i % 5 {
            0 => 0x7fa0_0001 + i as u32, // signalling NaNs
            1 => 0x8000_0000,            // −0.0
            _ => (i as u32).wrapping_mul(0x9e37_79b9),
        };
        let bits64 = |i: usize| match i % 5 {
            0 => 0x7ff4_0000_0000_0001 + i as u64,
            1 => 0x8000_0000_0000_0000,
            _ => (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        };
        check(bits32);
        check(bits64);
    }
}
