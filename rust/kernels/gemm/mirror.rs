//! Completing a symmetric matrix from its upper triangle: C's strict lower triangle = the
//! transpose of its strict upper one. Element by element, one side is read or written with a
//! stride of a whole row, two to three cycles an element (5 µs of seed 002's 97 × 97, 7 ms of a
//! 2,025² sum on AVX2); square tiles transposed in vector registers read and write whole rows
//! of each tile (≈ 4× faster on AVX2).
use crate::kernels::simd::Level;

/// The per-type tile transposes (a supertrait of `Float`, so they need nothing of it).
pub trait MirrorTile: Copy {
    /// `mirror_upper` with `level`'s vector tiles.
    ///
    /// # Safety
    /// `c.len() ≥ p²`, and `level`'s instructions must run on this CPU (it is `simd::level()`
    /// or below).
    unsafe fn mirror_upper_at(level: Level, c: &mut [Self], p: usize);
}

/// Copies C's upper triangle (p × p, row-major) onto its lower one, making C symmetric.
pub fn mirror_upper<T: MirrorTile>(c: &mut [T], p: usize) {
    assert!(
        c.len() >= p * p,
        "mirror_upper: {} elements for {p}²",
        c.len()
    );
    // SAFETY: the length is checked; `simd::level()` runs on this CPU.
    unsafe { T::mirror_upper_at(crate::kernels::simd::level(), c, p) }
}

/// Elements per side of the blocks the tiles are taken in (rounded down to whole tiles), so a
/// block's source and destination (64 × 64 elements at most, each) stay in L1.
const BLOCK: usize = 64;

/// The tile loop: every W × W tile below the diagonal is `tile(src, dst, p)`, the transpose of
/// its mirror image above it, in blocks of `BLOCK`; the diagonal's tiles and the rows past
/// the last whole tile are copied element by element. Inlined into each instruction set's
/// function, with its `tile`.
///
/// # Safety
/// `c` must address p² elements.
#[inline(always)]
unsafe fn mirror_tiles<T: Copy, const W: usize>(
    c: *mut T,
    p: usize,
    tile: impl Fn(*const T, *mut T, usize),
) {
    let whole = p / W * W;
    let block = BLOCK / W * W;
    for bi in (0..whole).step_by(block) {
        for bj in (0..bi + 1).step_by(block) {
            for i0 in (bi..(bi + block).min(whole)).step_by(W) {
                for j0 in (bj..(bj + block).min(i0)).step_by(W) {
                    tile(c.add(j0 * p + i0), c.add(i0 * p + j0), p);
                }
            }
        }
    }
    let copy = |i: usize, j: usize| *c.add(i * p + j) = *c.add(j * p + i);
    for i0 in (0..whole).step_by(W) {
        for i in i0..i0 + W {
            (i0..i).for_each(|j| copy(i, j));
        }
    }
    for i in whole..p {
        (0..i).for_each(|j| copy(i, j));
    }
}

/// The portable tile: W × W elements through a local array, read and written row by row.
#[inline(always)]
unsafe fn tile_scalar<T: Copy, const W: usize>(src: *const T, dst: *mut T, p: usize) {
    let rows: [[T; W]; W] = std::array::from_fn(|r| *(src.add(r * p) as *const [T; W]));
    for (i, out) in (0..W).map(|i| (i, dst.add(i * p))) {
        for (j, row) in rows.iter().enumerate() {
            *out.add(j) = row[i];
        }
    }
}

/// An 8 × 8 f32 tile in AVX registers: pairs of rows interleaved, then pairs of pairs, then
/// 128-bit halves exchanged.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tile_f32_avx(src: *const f32, dst: *mut f32, p: usize) {
    use std::arch::x86_64::*;
    let r: [__m256; 8] = std::array::from_fn(|k| _mm256_loadu_ps(src.add(k * p)));
    let lo = |a, b| _mm256_unpacklo_ps(a, b);
    let hi = |a, b| _mm256_unpackhi_ps(a, b);
    let (t0, t1, t2, t3) = (
        lo(r[0], r[1]),
        hi(r[0], r[1]),
        lo(r[2], r[3]),
        hi(r[2], r[3]),
    );
    let (t4, t5, t6, t7) = (
        lo(r[4], r[5]),
        hi(r[4], r[5]),
        lo(r[6], r[7]),
        hi(r[6], r[7]),
    );
    let even = |a, b| _mm256_shuffle_ps::<0x44>(a, b);
    let odd = |a, b| _mm256_shuffle_ps::<0xEE>(a, b);
    let s = [
        even(t0, t2),
        odd(t0, t2),
        even(t1, t3),
        odd(t1, t3),
        even(t4, t6),
        odd(t4, t6),
        even(t5, t7),
        odd(t5, t7),
    ];
    for k in 0..4 {
        let (first, second) = (s[k], s[k + 4]);
        _mm256_storeu_ps(
            dst.add(k * p),
            _mm256_permute2f128_ps::<0x20>(first, second),
        );
        _mm256_storeu_ps(
            dst.add((k + 4) * p),
            _mm256_permute2f128_ps::<0x31>(first, second),
        );
    }
}

/// A 4 × 4 f64 tile in AVX registers.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tile_f64_avx(src: *const f64, dst: *mut f64, p: usize) {
    use std::arch::x86_64::*;
    let r: [__m256d; 4] = std::array::from_fn(|k| _mm256_loadu_pd(src.add(k * p)));
    let (t0, t1) = (
        _mm256_unpacklo_pd(r[0], r[1]),
        _mm256_unpackhi_pd(r[0], r[1]),
    );
    let (t2, t3) = (
        _mm256_unpacklo_pd(r[2], r[3]),
        _mm256_unpackhi_pd(r[2], r[3]),
    );
    _mm256_storeu_pd(dst, _mm256_permute2f128_pd::<0x20>(t0, t2));
    _mm256_storeu_pd(dst.add(p), _mm256_permute2f128_pd::<0x20>(t1, t3));
    _mm256_storeu_pd(dst.add(2 * p), _mm256_permute2f128_pd::<0x31>(t0, t2));
    _mm256_storeu_pd(dst.add(3 * p), _mm256_permute2f128_pd::<0x31>(t1, t3));
}

/// `mirror_tiles` compiled for AVX, so that the `tile` it inlines may use AVX.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn mirror_tiles_avx<T: Copy, const W: usize>(
    c: *mut T,
    p: usize,
    tile: impl Fn(*const T, *mut T, usize),
) {
    mirror_tiles::<T, W>(c, p, tile)
}

/// A 4 × 4 f32 tile in NEON registers: rows transposed in pairs of lanes, then in pairs of
/// 64-bit halves.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
unsafe fn tile_f32_neon(src: *const f32, dst: *mut f32, p: usize) {
    use std::arch::aarch64::*;
    let r: [float32x4_t; 4] = std::array::from_fn(|k| vld1q_f32(src.add(k * p)));
    let (t0, t1) = (vtrn1q_f32(r[0], r[1]), vtrn2q_f32(r[0], r[1]));
    let (t2, t3) = (vtrn1q_f32(r[2], r[3]), vtrn2q_f32(r[2], r[3]));
    let halves = |a: float32x4_t, b: float32x4_t| {
        let (a, b) = (vreinterpretq_f64_f32(a), vreinterpretq_f64_f32(b));
        (
            vreinterpretq_f32_f64(vtrn1q_f64(a, b)),
            vreinterpretq_f32_f64(vtrn2q_f64(a, b)),
        )
    };
    let ((o0, o2), (o1, o3)) = (halves(t0, t2), halves(t1, t3));
    for (k, o) in [o0, o1, o2, o3].into_iter().enumerate() {
        vst1q_f32(dst.add(k * p), o);
    }
}

/// A 2 × 2 f64 tile in NEON registers.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
unsafe fn tile_f64_neon(src: *const f64, dst: *mut f64, p: usize) {
    use std::arch::aarch64::*;
    let (r0, r1) = (vld1q_f64(src), vld1q_f64(src.add(p)));
    vst1q_f64(dst, vtrn1q_f64(r0, r1));
    vst1q_f64(dst.add(p), vtrn2q_f64(r0, r1));
}

impl MirrorTile for f32 {
    unsafe fn mirror_upper_at(level: Level, c: &mut [f32], p: usize) {
        debug_assert!(c.len() >= p * p);
        let c = c.as_mut_ptr();
        match level {
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 | Level::Avx2 => {
                mirror_tiles_avx::<f32, 8>(c, p, |s, d, p| tile_f32_avx(s, d, p))
            }
            #[cfg(target_arch = "aarch64")]
            Level::Neon => mirror_tiles::<f32, 4>(c, p, |s, d, p| tile_f32_neon(s, d, p)),
            _ => mirror_tiles::<f32, 8>(c, p, |s, d, p| tile_scalar::<f32, 8>(s, d, p)),
        }
    }
}

impl MirrorTile for f64 {
    unsafe fn mirror_upper_at(level: Level, c: &mut [f64], p: usize) {
        debug_assert!(c.len() >= p * p);
        let c = c.as_mut_ptr();
        match level {
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 | Level::Avx2 => {
                mirror_tiles_avx::<f64, 4>(c, p, |s, d, p| tile_f64_avx(s, d, p))
            }
            #[cfg(target_arch = "aarch64")]
            Level::Neon => mirror_tiles::<f64, 2>(c, p, |s, d, p| tile_f64_neon(s, d, p)),
            _ => mirror_tiles::<f64, 8>(c, p, |s, d, p| tile_scalar::<f64, 8>(s, d, p)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every lower entry becomes its mirror image, and the upper triangle (with the diagonal)
    /// is untouched, at every level this CPU has, for sizes around every tile width and block.
    fn check<T: MirrorTile + num_traits::Float + std::fmt::Debug>() {
        let sizes = (0..=40).chain([63, 64, 65, 97, 127, 128, 129, 200, 257]);
        for p in sizes {
            let start: Vec<T> = (0..p * p)
                .map(|i| T::from(i as f64 + 0.5).unwrap())
                .collect();
            for level in super::super::tests::levels() {
                let mut c = start.clone();
                // SAFETY: `levels` lists this CPU's; c holds p² elements.
                unsafe { T::mirror_upper_at(level, &mut c, p) };
                for i in 0..p {
                    for j in 0..p {
                        let want = start[i.min(j) * p + i.max(j)];
                        assert!(
                            c[i * p + j] == want,
                            "{} {level:?} p={p}: C[{i},{j}] = {:?}, want {want:?}",
                            std::any::type_name::<T>(),
                            c[i * p + j]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn mirror_copies_the_upper_triangle_at_every_level() {
        check::<f32>();
        check::<f64>();
    }
}
