//! The register-blocked inner kernels: C[MR×NR] (+)= Ã·B̃ over one packed sliver of A (kc columns
//! of MR rows) and one packed panel of B (kc rows of NR columns). One kernel per element type and
//! instruction set; the tile shape is chosen so the accumulators fill most of the vector
//! registers (AVX-512: 24 of 32 zmm; AVX2: 12 of 16 ymm; NEON: 24 of 32 q registers).
use crate::kernels::simd::Level;

/// How a kernel writes its tile: a C-contiguous full tile is loaded, added to and stored in
/// vector registers; edge tiles and strided C go through a small buffer.
#[derive(Clone, Copy)]
pub struct Dest<T> {
    pub ptr: *mut T,
    pub row_stride: usize,
    pub col_stride: usize,
    /// The valid part of the tile (≤ MR × NR).
    pub rows: usize,
    pub cols: usize,
    pub init: Init<T>,
}

/// What a tile's product is added to.
#[derive(Clone, Copy)]
pub enum Init<T> {
    /// Nothing: C = product, without reading C.
    Zero,
    /// C: C += product.
    C,
    /// A row (the tile's `cols` elements from here) on each of the tile's rows: C = product +
    /// row, without reading C. A dense layer's bias so costs no pass of its own over C.
    Row(*const T),
}

// SAFETY: a row is only read.
unsafe impl<T: Sync> Send for Init<T> {}
unsafe impl<T: Sync> Sync for Init<T> {}

/// `true` accumulates onto C, `false` overwrites it.
impl<T> From<bool> for Init<T> {
    fn from(accumulate: bool) -> Self {
        if accumulate {
            Init::C
        } else {
            Init::Zero
        }
    }
}

impl<T> Init<T> {
    /// This start for the tile whose first column is `j` columns further right.
    pub fn right(self, j: usize) -> Init<T> {
        match self {
            Init::Row(row) => Init::Row(row.wrapping_add(j)),
            other => other,
        }
    }
}

/// Where a kernel reads its operands. A: element (i, p) at `a + i·a_row + p·a_depth` (packed:
/// a_row = 1, a_depth = MR); B: row p of the panel is `b + p·b_depth`, NR contiguous elements.
#[derive(Clone, Copy)]
pub struct Src<T> {
    pub a: *const T,
    pub a_row: usize,
    pub a_depth: usize,
    pub b: *const T,
    pub b_depth: usize,
}

/// The element types with GEMM kernels (f32 and f64).
pub trait GemmKernel:
    Copy + Default + std::ops::Add<Output = Self> + std::ops::Mul<Output = Self>
{
    /// (MR, NR) of the kernel `tile` runs at this level.
    fn tile_shape(level: Level) -> (usize, usize);
    /// The columns `tile` computes for a tile of `cols` ≤ NR live ones: NR, or the width of
    /// the narrower edge kernel it runs (NR/2, or NR/4 on AVX2).
    fn edge_cols(level: Level, cols: usize) -> usize;
    /// # Safety
    /// `src` must address MR×kc elements of A and kc×NR of B; `dest` must be valid for its
    /// rows × cols.
    unsafe fn tile(level: Level, kc: usize, src: Src<Self>, dest: Dest<Self>);
}

/// Writes a finished MR×NR tile `buf` (row-major, row length `nr`) into `dest`.
#[inline(always)]
unsafe fn write_buffered<T: GemmKernel>(buf: &[T], nr: usize, d: Dest<T>) {
    for i in 0..d.rows {
        for j in 0..d.cols {
            let c = d.ptr.add(i * d.row_stride + j * d.col_stride);
            let v = buf[i * nr + j];
            *c = match d.init {
                Init::Zero => v,
                Init::C => *c + v,
                Init::Row(row) => v + *row.add(j),
            };
        }
    }
}

/// The portable kernel, for CPUs without AVX2: plain loops LLVM vectorises with SSE2.
#[inline(always)]
unsafe fn tile_portable<T: GemmKernel, const MR: usize, const NR: usize>(
    kc: usize,
    s: Src<T>,
    d: Dest<T>,
) {
    let mut acc = [[T::default(); NR]; MR];
    for p in 0..kc {
        let bp = &*(s.b.add(p * s.b_depth) as *const [T; NR]);
        for (i, row) in acc.iter_mut().enumerate() {
            let ai = *s.a.add(i * s.a_row + p * s.a_depth);
            for j in 0..NR {
                row[j] = row[j] + ai * bp[j];
            }
        }
    }
    write_buffered(acc.as_flattened(), NR, d);
}

/// The portable kernel's tiles (MR, NR). At 4 × 8, f32's accumulators take 8 of SSE2's 16
/// registers, but f64's (two lanes each) all 16, none left for A and B: f64 runs 4 × 4. With
/// every library held to SSE4 (benches/as_cpu.sh sse4, Xeon, 2 threads), fastad ÷ OpenBLAS
/// went from 4 × 8 to 4 × 4: 1024³ 1.25 → 1.14, 4096×784×512 1.28 → 1.11, 4096×512×512 1.29 →
/// 1.11, 10000×20×1000 1.06 → 0.95. 6 × 4 measured the same on the large products, 1.01 on
/// the shallow one.
const PORTABLE_F32: (usize, usize) = (4, 8);
const PORTABLE_F64: (usize, usize) = (4, 4);

/// A SIMD kernel (x86 or NEON) with MR rows and `V` vectors of `lanes` per row: V = 2 for
/// full tiles (NR = 2·lanes), V = 1 for an edge panel with at most `lanes` live columns, which
/// then costs half as much (a 20-column C pads to 24 columns, not 32; and on AVX2 a quarter
/// kernel of 128-bit vectors takes edges of NR/4 columns).
/// `$arch`: the module whose intrinsics the other names are.
macro_rules! simd_kernel {
    ($arch:path, $name:ident, $t:ty, $features:literal, $mr:literal, $lanes:literal, $vec:ty,
     $zero:ident, $load:ident, $store:ident, $set1:ident, $fmadd:ident, $add:ident) => {
        /// `PACKED_A`: A's rows are adjacent (a_row = 1), so row offsets are constants.
        #[target_feature(enable = $features)]
        unsafe fn $name<const PACKED_A: bool, const V: usize>(kc: usize, s: Src<$t>, d: Dest<$t>) {
            use $arch::*;
            const MR: usize = $mr;
            const L: usize = $lanes;
            // Steps of the depth per loop iteration. Unrolled, the AVX2 f64 kernel ran 5%
            // faster (Xeon, 1024³ and 4096×512×512 on 1 and 2 threads; others level).
            const UNROLL: usize = 4;
            // A packed sliver streams from L2 while B's panel stays in L1. Where a step reads
            // more than a line of it (AVX-512 f64: 12 × 8 bytes), the hardware prefetcher
            // falls behind: ask for the lines PREFETCH_STEPS ahead (Xeon, 2 threads: 1024³
            // 14.30 → 14.03 ms, 4096×512×512 13.00 → 12.11). Where a step reads less, the
            // requests only cost (AVX2 f64: 4096×512×512 19.44 → 19.97 ms).
            const PREFETCH_A: bool = MR * size_of::<$t>() > 64;
            const PREFETCH_STEPS: usize = 32;
            // Ask for C's lines now, so a shallow product (few multiply-adds per tile) does
            // not stall on them at the stores: its C streams from and to memory. A row of the
            // tile is V·L elements; where C is not aligned to lines (NumPy aligns to 16 bytes)
            // it touches one line more.
            if d.col_stride == 1 {
                let row_bytes = V * L * size_of::<$t>();
                for i in 0..d.rows {
                    let out = d.ptr.add(i * d.row_stride) as *const i8;
                    for at in (0..row_bytes).step_by(64) {
                        prefetch_line(out.add(at));
                    }
                    if out as usize % 64 != 0 {
                        prefetch_line(out.add(row_bytes - 1));
                    }
                }
            }
            let mut c: [[$vec; V]; MR] = [[$zero(); V]; MR];
            let row = if PACKED_A { 1 } else { s.a_row };
            // One step of the depth: C += (column of A) × (row of B).
            let step = |c: &mut [[$vec; V]; MR], a: *const $t, b: *const $t| {
                let bv: [$vec; V] = std::array::from_fn(|v| $load(b.add(v * L)));
                for i in 0..MR {
                    let ai = $set1(*a.add(i * row));
                    for v in 0..V {
                        c[i][v] = $fmadd(ai, bv[v], c[i][v]);
                    }
                }
            };
            let (mut a, mut b) = (s.a, s.b);
            for _ in 0..kc / UNROLL {
                if PACKED_A && PREFETCH_A {
                    // (Past the buffer's end, a prefetch is dropped: wrapping, not `add`.)
                    let ahead = a.wrapping_add(PREFETCH_STEPS * s.a_depth) as *const i8;
                    for at in (0..UNROLL * MR * size_of::<$t>()).step_by(64) {
                        prefetch_line(ahead.wrapping_add(at));
                    }
                }
                for u in 0..UNROLL {
                    step(&mut c, a.add(u * s.a_depth), b.add(u * s.b_depth));
                }
                a = a.add(UNROLL * s.a_depth);
                b = b.add(UNROLL * s.b_depth);
            }
            for _ in 0..kc % UNROLL {
                step(&mut c, a, b);
                a = a.add(s.a_depth);
                b = b.add(s.b_depth);
            }
            if d.col_stride == 1 && d.rows == MR && d.cols == V * L {
                for i in 0..MR {
                    let out = d.ptr.add(i * d.row_stride);
                    for v in 0..V {
                        let x = match d.init {
                            Init::Zero => c[i][v],
                            Init::C => $add(c[i][v], $load(out.add(v * L))),
                            Init::Row(row) => $add(c[i][v], $load(row.add(v * L))),
                        };
                        $store(out.add(v * L), x);
                    }
                }
            } else {
                let mut buf = [<$t>::default(); MR * 2 * L];
                for i in 0..MR {
                    for v in 0..V {
                        $store(buf.as_mut_ptr().add(i * V * L + v * L), c[i][v]);
                    }
                }
                write_buffered(&buf, V * L, d);
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
simd_kernel!(
    std::arch::x86_64,
    f32_avx512,
    f32,
    "avx512f",
    12,
    16,
    __m512,
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    _mm512_storeu_ps,
    _mm512_set1_ps,
    _mm512_fmadd_ps,
    _mm512_add_ps
);
#[cfg(target_arch = "x86_64")]
simd_kernel!(
    std::arch::x86_64,
    f64_avx512,
    f64,
    "avx512f",
    12,
    8,
    __m512d,
    _mm512_setzero_pd,
    _mm512_loadu_pd,
    _mm512_storeu_pd,
    _mm512_set1_pd,
    _mm512_fmadd_pd,
    _mm512_add_pd
);
#[cfg(target_arch = "x86_64")]
simd_kernel!(
    std::arch::x86_64,
    f32_avx2,
    f32,
    "avx2,fma",
    6,
    8,
    __m256,
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_storeu_ps,
    _mm256_set1_ps,
    _mm256_fmadd_ps,
    _mm256_add_ps
);
#[cfg(target_arch = "x86_64")]
simd_kernel!(
    std::arch::x86_64,
    f64_avx2,
    f64,
    "avx2,fma",
    6,
    4,
    __m256d,
    _mm256_setzero_pd,
    _mm256_loadu_pd,
    _mm256_storeu_pd,
    _mm256_set1_pd,
    _mm256_fmadd_pd,
    _mm256_add_pd
);

// AVX2's kernels for an edge panel of at most a quarter of NR columns: 128-bit vectors, which
// a CPU that splits 256-bit instructions in two (AMD's first Zen) runs at twice the rate of the
// half-width kernel's, and others at the same rate: a 20-column f32 C costs 20 columns, not 24.
#[cfg(target_arch = "x86_64")]
simd_kernel!(
    std::arch::x86_64,
    f32_avx2_quarter,
    f32,
    "avx2,fma",
    6,
    4,
    __m128,
    _mm_setzero_ps,
    _mm_loadu_ps,
    _mm_storeu_ps,
    _mm_set1_ps,
    _mm_fmadd_ps,
    _mm_add_ps
);
#[cfg(target_arch = "x86_64")]
simd_kernel!(
    std::arch::x86_64,
    f64_avx2_quarter,
    f64,
    "avx2,fma",
    6,
    2,
    __m128d,
    _mm_setzero_pd,
    _mm_loadu_pd,
    _mm_storeu_pd,
    _mm_set1_pd,
    _mm_fmadd_pd,
    _mm_add_pd
);

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn prefetch_line(p: *const i8) {
    use std::arch::x86_64::*;
    _mm_prefetch::<_MM_HINT_T0>(p)
}

/// NEON's intrinsics under the names `simd_kernel!` calls (zero, fused multiply-add a·b + c).
#[cfg(target_arch = "aarch64")]
mod neon {
    pub use std::arch::aarch64::*;
    #[inline(always)]
    pub unsafe fn zero_f32() -> float32x4_t {
        vdupq_n_f32(0.0)
    }
    #[inline(always)]
    pub unsafe fn zero_f64() -> float64x2_t {
        vdupq_n_f64(0.0)
    }
    #[inline(always)]
    pub unsafe fn fmadd_f32(a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
        vfmaq_f32(c, a, b)
    }
    #[inline(always)]
    pub unsafe fn fmadd_f64(a: float64x2_t, b: float64x2_t, c: float64x2_t) -> float64x2_t {
        vfmaq_f64(c, a, b)
    }
}

/// Rust's prefetch intrinsic for aarch64 is not stable yet: the hardware prefetcher alone.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
unsafe fn prefetch_line(_: *const i8) {}

// NEON has 32 vector registers of 4 f32 / 2 f64: 12 rows × 2 vectors take 24 for accumulators.
#[cfg(target_arch = "aarch64")]
simd_kernel!(
    neon,
    f32_neon,
    f32,
    "neon",
    12,
    4,
    float32x4_t,
    zero_f32,
    vld1q_f32,
    vst1q_f32,
    vdupq_n_f32,
    fmadd_f32,
    vaddq_f32
);
#[cfg(target_arch = "aarch64")]
simd_kernel!(
    neon,
    f64_neon,
    f64,
    "neon",
    12,
    2,
    float64x2_t,
    zero_f64,
    vld1q_f64,
    vst1q_f64,
    vdupq_n_f64,
    fmadd_f64,
    vaddq_f64
);

macro_rules! impl_kernel {
    ($t:ty, $avx512:ident, $avx512_shape:expr, $avx2:ident, $avx2_quarter:ident,
     $avx2_shape:expr, $neon:ident, $neon_shape:expr, $portable:ident) => {
        impl GemmKernel for $t {
            fn tile_shape(level: Level) -> (usize, usize) {
                match level {
                    Level::Avx512 => $avx512_shape,
                    Level::Avx2 => $avx2_shape,
                    Level::Neon => $neon_shape,
                    Level::Baseline => $portable,
                }
            }
            fn edge_cols(level: Level, cols: usize) -> usize {
                let nr = Self::tile_shape(level).1;
                match level {
                    Level::Baseline => nr,
                    Level::Avx2 if cols <= nr / 4 => nr / 4,
                    _ if cols <= nr / 2 => nr / 2,
                    _ => nr,
                }
            }
            #[inline]
            unsafe fn tile(level: Level, kc: usize, s: Src<Self>, d: Dest<Self>) {
                let nr = Self::tile_shape(level).1;
                let width = Self::edge_cols(level, d.cols);
                #[cfg(target_arch = "x86_64")]
                if level == Level::Avx2 && width == nr / 4 {
                    return match s.a_row == 1 {
                        true => $avx2_quarter::<true, 1>(kc, s, d),
                        false => $avx2_quarter::<false, 1>(kc, s, d),
                    };
                }
                let half = width == nr / 2;
                match (level, s.a_row == 1, half) {
                    #[cfg(target_arch = "x86_64")]
                    (Level::Avx512, true, false) => $avx512::<true, 2>(kc, s, d),
                    #[cfg(target_arch = "x86_64")]
                    (Level::Avx512, false, false) => $avx512::<false, 2>(kc, s, d),
                    #[cfg(target_arch = "x86_64")]
                    (Level::Avx512, true, true) => $avx512::<true, 1>(kc, s, d),
                    #[cfg(target_arch = "x86_64")]
                    (Level::Avx512, false, true) => $avx512::<false, 1>(kc, s, d),
                    #[cfg(target_arch = "x86_64")]
                    (Level::Avx2, true, false) => $avx2::<true, 2>(kc, s, d),
                    #[cfg(target_arch = "x86_64")]
                    (Level::Avx2, false, false) => $avx2::<false, 2>(kc, s, d),
                    #[cfg(target_arch = "x86_64")]
                    (Level::Avx2, true, true) => $avx2::<true, 1>(kc, s, d),
                    #[cfg(target_arch = "x86_64")]
                    (Level::Avx2, false, true) => $avx2::<false, 1>(kc, s, d),
                    #[cfg(target_arch = "aarch64")]
                    (Level::Neon, true, false) => $neon::<true, 2>(kc, s, d),
                    #[cfg(target_arch = "aarch64")]
                    (Level::Neon, false, false) => $neon::<false, 2>(kc, s, d),
                    #[cfg(target_arch = "aarch64")]
                    (Level::Neon, true, true) => $neon::<true, 1>(kc, s, d),
                    #[cfg(target_arch = "aarch64")]
                    (Level::Neon, false, true) => $neon::<false, 1>(kc, s, d),
                    _ => tile_portable::<Self, { $portable.0 }, { $portable.1 }>(kc, s, d),
                }
            }
        }
    };
}

impl_kernel!(
    f32,
    f32_avx512,
    (12, 32),
    f32_avx2,
    f32_avx2_quarter,
    (6, 16),
    f32_neon,
    (12, 8),
    PORTABLE_F32
);
impl_kernel!(
    f64,
    f64_avx512,
    (12, 16),
    f64_avx2,
    f64_avx2_quarter,
    (6, 8),
    f64_neon,
    (12, 4),
    PORTABLE_F64
);
