//! Matrix multiply: the one module the rest of the crate calls for `C (+)= op(A) op(B)`.
//!
//! The BLIS design: C is computed in blocks of B up to NC columns (fewer in f64) × KC depth
//! (deeper where A is read in place: `Blocking`); each B block is packed into panels of NR
//! columns (kept in L1 by the micro-kernel), each A block of MC rows into slivers of MR rows
//! (kept in L2), and a register-blocked micro-kernel (microkernel.rs, chosen at run time for
//! AVX-512, AVX2+FMA, NEON on aarch64, or none) does the MR×NR tiles. Packing buffers come
//! from a caller-owned workspace (`workspace_len`), so a product allocates nothing. Large
//! products split over the thread pool: each thread a share of C's rows or columns
//! (`split_in_shares`), or (C's upper triangle, a prepacked B) row blocks that the threads
//! share; each tile is computed by one thread in a fixed order, so results do not depend on
//! the thread count.
mod gram;
pub(crate) mod microkernel;
pub(crate) mod mirror;
mod pack;

pub use microkernel::GemmKernel;
use microkernel::{Dest, Init, Src};
pub use mirror::mirror_upper;
use pack::{pack, View};

use crate::float::Float;
use crate::kernels::simd;

/// Depth of a packed block (rows of B's panels, columns of A's slivers), at most.
const KC: usize = 256;
/// When A is read in place, its blocks go deeper (`Blocking`): up to DEEP_KC, while B's block
/// stays within DEEP_B elements (in L2).
const DEEP_KC: usize = 1024;
const DEEP_B: usize = 1 << 15;
// A ragged sliver (at most 12 rows) of a DEEP_KC block fits in an A buffer (`workspace_len`).
const _: () = assert!(12 * DEEP_KC <= MC * KC);
/// Rows of A packed at once: a multiple of every MR (12, 6 and 4).
const MC: usize = 120;
/// Columns of B packed at once: a multiple of every NR (32, 16, 8 and 4).
const NC: usize = 1024;
/// Bytes of B's packed block at most, where C is wide enough for the depth to be KC (`Blocking`):
/// 1024 columns in f32 and 512 in f64, 256 deep. On the Xeon the block stays in half of one
/// core's L2 (2 MB), beside A's block; where L2 is smaller (512 kB on AMD's Zen 2 and 3), it is
/// read from L3, as f32's blocks always were.
const B_BLOCK_BYTES: usize = 1 << 20;
/// A packed block must be read by more than this many slivers (or panels) to be worth packing.
const REUSE_TO_PACK: usize = 4;
/// Rows of C below which a B within a quarter of L2 is read in place, not packed.
const SHORT_ROWS: usize = 256;
/// Elements of a B block below which one thread packs it.
const PARALLEL_PACK_MIN: usize = 1 << 16;
/// Depth of the blocks up to which `sweeps_rows` may sweep a block's tiles row by row.
const SHALLOW_KC: usize = 128;
/// Multiply-adds below which a product runs on the calling thread: waking the pool costs about
/// as much as 10 µs of one thread's work (Xeon, 2 threads, 2^18 → 2^22 alternated in one
/// process, fastad ÷ NumPy time: 64³ f32 2.69 → 1.42, 100³ 2.07 → 1.47, 128³ 1.02 → 0.78, 160³
/// 1.26 → 1.12, f64 128³ 1.33 → 1.14; 200³ level; 2^23 lost at 200³). Networks level or a few
/// percent faster (seed 000 −3.6%, the 512-wide f64 net −4.4%).
const PARALLEL_MIN_WORK: usize = 1 << 22;

/// A row-major matrix operand: `data` holds `op(M)` of shape (rows, cols) as stored, read
/// transposed when `transposed` (then `data` is stored as (cols, rows)).
#[derive(Clone, Copy)]
pub struct Operand<'a, T> {
    pub data: &'a [T],
    pub transposed: bool,
}

impl<T> Operand<'_, T> {
    /// The strided view of op(M), of shape (rows, cols).
    fn view(&self, rows: usize, cols: usize) -> View<T> {
        let (row_stride, col_stride) = if self.transposed {
            (1, rows)
        } else {
            (cols, 1)
        };
        View {
            ptr: self.data.as_ptr(),
            row_stride,
            col_stride,
        }
    }
}

/// Elements of workspace a product of these sizes needs with `threads` threads: also enough
/// for any smaller product (a ragged tile's), as it must be, although `Blocking`'s depth is not
/// monotone.
pub fn workspace_len(m: usize, n: usize, k: usize, threads: usize) -> usize {
    let threads = threads.max(1);
    // A B block `cols` wide: at most KC deep, or DEEP_B elements.
    let b_block = |cols: usize| {
        let cols = cols.min(NC).next_multiple_of(32);
        (k.min(KC) * cols).max((k * cols).min(DEEP_B))
    };
    // One B block that the threads share, of C's width or of Cᵀ's (`gemm_at`), and A's blocks,
    // one per thread: MC × KC, or in place one ragged sliver of mr ≤ 12 rows, which DEEP_KC ≤
    // MC · KC / 12 keeps within that.
    let shared = b_block(m.max(n)) + threads * a_block_len(k);
    // Or each thread its own B block, for its share of the columns (`split_in_shares`).
    let shares = threads * (b_block(m.max(n).div_ceil(threads)) + a_block_len(k));
    shared.max(shares)
}

/// How B is cut into the blocks packed at once: `depth` rows of op(B) by `width` columns (the
/// last block of each may be shorter).
#[derive(Clone, Copy)]
struct Blocking {
    depth: usize,
    width: usize,
}

impl Blocking {
    /// The blocking of a product whose C has `n` columns, with the kernel's panels of `nr`.
    ///
    /// The depth is at most KC. Where A's slivers meet too few panels to be worth packing, A is
    /// read in place, its rows streaming from memory, and rows cut into pieces of KC elements
    /// (16 cache lines in f32) stream slower than longer ones: 10000×1000×20 on 2 threads, 9.8
    /// → 7.6 ms in f32 and 14.8 → 12.1 in f64 with a depth of 1000 against 256 (AVX2;
    /// benches/GEMM.md). The depth is then evened out over the blocks k needs: 784 = 4 × 196,
    /// not 3 × 256 + 16, whose last block would read and write all of C for 16 multiply-adds per
    /// element (Xeon, 2 threads, in-process alternation: 4096×784×512 f32 at AVX2 15.16 → 14.34
    /// ms, 1024×784×1024 8.18 → 7.51; f64 at AVX-512 11.02 → 10.69).
    ///
    /// The width is at most NC, and as wide as keeps the block within B_BLOCK_BYTES. Before,
    /// AVX-512's f64 blocks went 128 deep, not 256, so that an A sliver (12 rows) and a B panel
    /// stayed in L1 together, and 1024 wide. But each block reads and writes all of C, and
    /// since the threads each compute a share of C (`split_in_shares`), twice the blocks cost
    /// more than L1 saved. Xeon, f64 at AVX-512, 2 threads, 128 deep and 1024 wide → 256 and
    /// 512, alternated in one process (5 rounds): 1024³ 17.18 → 15.37 ms, 1024×784×1024 12.80 →
    /// 11.94, 4096×784×512 24.22 → 23.15, 4096×512×512 15.99 → 15.20, 512×512×4096 16.86 →
    /// 16.11; the 512-wide f64 network's value_and_grad 94.5 → 86.6. It lost on 2000×256×3000
    /// (19.80 → 20.83) and 2048³ (117.8 → 120.2), which read A more often in narrower blocks.
    /// At AVX2 (256 deep already), 512×512×4096 went from 1.11× to 1.00× NumPy's time. 256
    /// deep and 1024 wide (a block as large as L2) lost more.
    fn of<T>(n: usize, k: usize, nr: usize) -> Blocking {
        let nc = n.min(NC);
        let wide = nc.div_ceil(nr) > REUSE_TO_PACK;
        let most = match wide {
            true => KC,
            false => (DEEP_B / nc.max(1).next_multiple_of(nr)).clamp(KC, DEEP_KC),
        };
        let depth = k.div_ceil(k.div_ceil(most).max(1));
        // A narrow C is one block wide (its depth keeps the block within DEEP_B).
        let width = match wide {
            true => {
                let fits = B_BLOCK_BYTES / std::mem::size_of::<T>();
                (fits / depth.max(1) / 32 * 32).clamp(32, NC)
            }
            false => NC,
        };
        Blocking { depth, width }
    }

    /// Elements of the largest packed block, for C of `n` columns in panels of `nr`.
    fn block_len(self, n: usize, nr: usize) -> usize {
        self.depth * n.min(self.width).next_multiple_of(nr)
    }
}

/// Elements of B's packed block for a product whose C has `n` columns (`Blocking`).
fn b_block_len<T>(n: usize, k: usize, nr: usize) -> usize {
    Blocking::of::<T>(n, k, nr).block_len(n, nr)
}

/// Elements of one task's A buffer: MC × KC, or in place one ragged sliver (`workspace_len`).
fn a_block_len(k: usize) -> usize {
    MC * k.min(KC)
}

/// What a product is added to: C = op(A)·op(B) + this.
#[derive(Clone, Copy)]
pub enum Onto<'a, T> {
    /// Nothing (C is not read).
    Zero,
    /// C itself: C += op(A)·op(B).
    C,
    /// A row (n elements, or more) on every row of C, as a dense layer adds its bias; C is not
    /// read. The kernels add it as they write C, which saves a pass over C.
    Rows(&'a [T]),
}

/// `true` accumulates onto C, `false` overwrites it.
impl<T> From<bool> for Onto<'_, T> {
    fn from(accumulate: bool) -> Self {
        if accumulate {
            Onto::C
        } else {
            Onto::Zero
        }
    }
}

impl<T: Float> Onto<'_, T> {
    /// What the kernels start from for a C of n columns. Where they do not add a row
    /// themselves (`in_kernel` false: C transposed, or a product that takes no micro-kernel),
    /// the rows are written into C first, and the product accumulates onto them.
    fn init(self, c: &mut [T], (m, n): (usize, usize), in_kernel: bool) -> Init<T> {
        match self {
            Onto::Zero => Init::Zero,
            Onto::C => Init::C,
            Onto::Rows(row) => {
                assert!(
                    row.len() >= n,
                    "gemm: a row of {} for {n} columns",
                    row.len()
                );
                if in_kernel {
                    Init::Row(row.as_ptr())
                } else {
                    crate::kernels::fill_rows(&mut c[..m * n], &row[..n]);
                    Init::C
                }
            }
        }
    }
}

/// C (m×n, row-major) = op(A) (m×k) · op(B) (k×n) + `onto`: nothing (`false`), C (`true`:
/// C += …) or a row on every row (`Onto::Rows`).
/// `workspace` must hold `workspace_len(m, n, k, 1)` elements; more lets more threads work.
pub fn gemm<'r, T: Float>(
    (m, n, k): (usize, usize, usize),
    a: Operand<T>,
    b: Operand<T>,
    c: &mut [T],
    onto: impl Into<Onto<'r, T>>,
    workspace: &mut [T],
) {
    gemm_at(simd::level(), (m, n, k), a, b, c, onto.into(), workspace)
}

/// `gemm` with the micro-kernel of `level` (tests run every level this CPU has).
fn gemm_at<T: Float>(
    level: simd::Level,
    (m, n, k): (usize, usize, usize),
    a: Operand<T>,
    b: Operand<T>,
    c: &mut [T],
    onto: Onto<T>,
    workspace: &mut [T],
) {
    assert!(a.data.len() >= m * k && b.data.len() >= k * n && c.len() >= m * n);
    let (mr, nr) = T::tile_shape(level);
    // Vectors run along C's columns, a ragged last panel in whole vectors (NR/2); when C is
    // narrow and tall, computing Cᵀ = Bᵀ Aᵀ instead can pad fewer lanes (n = 4 with NR = 16
    // pads to 8). It must save an eighth of the work: Cᵀ's tiles are written element by
    // element down C's columns (a 10000×1000 C written so measured 1.7× slower than by rows).
    // And Aᵀ, the new B, must not need packing (transposed) for the few slivers that read it.
    let padded =
        |rows: usize, cols: usize| rows.next_multiple_of(mr) * cols.next_multiple_of(nr / 2);
    let new_b_in_place = a.view(m, k).row_stride == 1 || n.div_ceil(mr) > REUSE_TO_PACK;
    let transposed = 8 * padded(n, m) < 7 * padded(m, n) && new_b_in_place;
    // The micro-kernels take k > 1, m > 1 and n > 1 (below).
    let in_kernel = !transposed && k > 1 && m > 1 && n > 1;
    let init = onto.init(c, (m, n), in_kernel);
    let accumulate = matches!(init, Init::C);
    if empty_product(m, n, k, c, accumulate) {
        return;
    }
    if k == 1 {
        // An outer product: nothing to block over the depth, each row of C is one axpy.
        let (a, b, c) = (&a.data[..m], &b.data[..n], &mut c[..m * n]);
        return outer_product(a, b, c, accumulate);
    }
    let (a, b) = (a.view(m, k), b.view(k, n));
    if m == 1 || n == 1 {
        // A matrix–vector product: the register-blocked kernel would pad 11 of its 12 rows.
        // SAFETY: the views cover the slices checked above.
        unsafe { gemv(m, n, k, a, b, &mut c[..m * n], accumulate) };
        return;
    }
    let c = Out {
        ptr: c.as_mut_ptr(),
        row_stride: n,
        col_stride: 1,
    };
    let problem = if transposed {
        Problem {
            m: n,
            n: m,
            k,
            a: b.transposed(),
            b: a.transposed(),
            c: c.transposed(),
            prepacked_b: std::ptr::null(),
            upper: false,
        }
    } else {
        Problem {
            m,
            n,
            k,
            a,
            b,
            c,
            prepacked_b: std::ptr::null(),
            upper: false,
        }
    };
    // SAFETY: the views cover the slices checked above (and `init`'s row, C's columns).
    unsafe { problem.run(level, mr, nr, init, workspace) }
}

/// The upper triangle (with the diagonal) of C (p×p) = GᵀG for G (n×p, row-major), or C += GᵀG
/// when `accumulate`, at about half a product's work; the strictly lower triangle is left as
/// it was except where a micro-tile crosses the diagonal. `mirror_upper` completes C. The
/// workspace is `gemm`'s for (p, p, n). A narrow G (up to 128 columns) is read in place, on
/// the calling thread (`gram.rs`).
pub fn gram_upper<T: Float>(
    g: &[T],
    n: usize,
    p: usize,
    c: &mut [T],
    accumulate: bool,
    workspace: &mut [T],
) {
    assert!(g.len() >= n * p && c.len() >= p * p);
    if empty_product(p, p, n, c, accumulate) {
        return;
    }
    if n == 1 || p == 1 {
        let op = |transposed| Operand {
            data: g,
            transposed,
        };
        return gemm((p, p, n), op(true), op(false), c, accumulate, workspace);
    }
    let level = simd::level();
    if gram::direct_fits(T::tile_shape(level), p) {
        // SAFETY: `level` is this CPU's.
        return unsafe { gram::gram_direct(level, g, n, p, c, accumulate) };
    }
    let (mr, nr) = T::tile_shape(level);
    let g = Operand {
        data: g,
        transposed: false,
    };
    let problem = Problem {
        m: p,
        n: p,
        k: n,
        a: g.view(n, p).transposed(),
        b: g.view(n, p),
        c: Out {
            ptr: c.as_mut_ptr(),
            row_stride: p,
            col_stride: 1,
        },
        prepacked_b: std::ptr::null(),
        upper: true,
    };
    // SAFETY: the views cover the slices checked above.
    unsafe { problem.run(level, mr, nr, Init::from(accumulate), workspace) }
}

/// C (m×n) (+)= A B when m or n is 1. As a row, c (1×n') = a (1×k) B' with B' = B, or = Aᵀ and
/// a = bᵀ when n = 1; then axpys along B's contiguous rows or dot products down its contiguous
/// columns. (The register-blocked kernel would pad 11 of its 12 rows.)
unsafe fn gemv<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    a: View<T>,
    b: View<T>,
    c: &mut [T],
    accumulate: bool,
) {
    let (a, b, len) = if m == 1 {
        (a, b, n)
    } else {
        (b.transposed(), a.transposed(), m)
    };
    let c = &mut c[..len];
    if !accumulate {
        c.fill(T::zero());
    }
    let at = |v: View<T>, i: usize, j: usize| *v.ptr.add(i * v.row_stride + j * v.col_stride);
    simd::dispatch(
        #[inline(always)]
        || {
            if b.col_stride == 1 {
                let row = |p: usize| std::slice::from_raw_parts(b.ptr.add(p * b.row_stride), len);
                crate::kernels::add_row_combination(c, k, |p| at(a, 0, p), row);
            } else if b.row_stride == 1 && a.col_stride == 1 {
                let x = std::slice::from_raw_parts(a.ptr, k);
                for (j, c) in c.iter_mut().enumerate() {
                    let col = std::slice::from_raw_parts(b.ptr.add(j * b.col_stride), k);
                    *c += crate::kernels::reduce::dot(x, col);
                }
            } else {
                for (j, c) in c.iter_mut().enumerate() {
                    *c += (0..k).fold(T::zero(), |s, p| s + at(a, 0, p) * at(b, p, j));
                }
            }
        },
    )
}

/// C (m×n) (+)= a bᵀ for vectors a (m) and b (n): a product of depth 1, where op(A) and op(B)
/// are read in their stored order whether transposed or not. Rows split over the threads.
fn outer_product<T: Float>(a: &[T], b: &[T], c: &mut [T], accumulate: bool) {
    use crate::kernels::{outer_rows, SharedMut, PARALLEL_MIN_ELEMENTS};
    let n = b.len();
    let shared = SharedMut::new(c);
    crate::parallel::for_chunks(a.len(), PARALLEL_MIN_ELEMENTS / n, &|rows| {
        // SAFETY: `for_chunks` hands out disjoint ranges of rows.
        let c = unsafe { shared.range(rows.start * n..rows.end * n) };
        let a = &a[rows];
        simd::dispatch(
            #[inline(always)]
            || outer_rows(c, T::one(), a, b, accumulate),
        )
    });
}

/// A product with no multiply-adds (m, n or k zero): C = 0 (k = 0, not accumulating) or left
/// as it is. True when there is nothing more to do.
fn empty_product<T: Float>(m: usize, n: usize, k: usize, c: &mut [T], accumulate: bool) -> bool {
    if k == 0 && !accumulate {
        c[..m * n].fill(T::zero());
    }
    m == 0 || n == 0 || k == 0
}

/// Elements `pack_whole_b` writes for a (k × n) B.
pub fn packed_b_len<T: Float>(k: usize, n: usize) -> usize {
    k * n.next_multiple_of(T::tile_shape(simd::level()).1)
}

/// Packs all of op(B) (k × n) in the order `gemm_prepacked` reads it, so products that share
/// one B (every tile of a batch times a weight matrix) pack it once, not once each. The
/// threads share each block's panels, as `Problem::run_on` packs a block.
pub fn pack_whole_b<T: Float>(k: usize, n: usize, b: Operand<T>, dst: &mut [T]) {
    let nr = T::tile_shape(simd::level()).1;
    assert!(b.data.len() >= k * n && dst.len() >= packed_b_len::<T>(k, n));
    let view = b.view(k, n);
    let threads = crate::parallel::num_threads();
    // As `Problem::run` reads it; k = 0 packs nothing.
    let blocking = Blocking::of::<T>(n, k, nr);
    let kc_max = blocking.depth.max(1);
    for jc in (0..n).step_by(blocking.width) {
        let nc = blocking.width.min(n - jc);
        for pc in (0..k).step_by(kc_max) {
            let kc = kc_max.min(k - pc);
            let at = jc * k + pc * nc.next_multiple_of(nr);
            // SAFETY: the view covers b.data, checked above.
            unsafe { pack_b_block(view.at(pc, jc), (kc, nc), nr, threads, &mut dst[at..]) };
        }
    }
}

/// Packs the block of `b` (kc × nc, from its first element) into `dst` as panels of nr columns,
/// slivers of Bᵀ. A large block is packed by up to `threads` threads sharing its panels; by one,
/// the others would wait (1024³ f32 on 2 threads: 62.7 → 63.9 GFLOP/s, medians of 4 alternating
/// runs). A small one is not worth a second dispatch.
///
/// # Safety
/// `b` must address kc × nc elements.
unsafe fn pack_b_block<T: Copy + Default + Send + Sync>(
    b: View<T>,
    (kc, nc): (usize, usize),
    nr: usize,
    threads: usize,
    dst: &mut [T],
) {
    let panels = nc.div_ceil(nr);
    let parts = match threads > 1 && kc * nc >= PARALLEL_PACK_MIN {
        true => threads.min(panels),
        false => 1,
    };
    let shared = crate::kernels::SharedMut::new(dst);
    crate::parallel::run(parts, &|t| {
        let mine = crate::parallel::split(panels, parts, t);
        let (j0, j1) = (mine.start * nr, (mine.end * nr).min(nc));
        // SAFETY: the parts' panel ranges are disjoint.
        let dst = unsafe { shared.range(j0 * kc..mine.end * nr * kc) };
        unsafe { pack(b.at(0, j0).transposed(), j1 - j0, kc, nr, dst) };
    });
}

/// `gemm` with op(B) packed beforehand by `pack_whole_b` (on this CPU, for these k and n).
pub fn gemm_prepacked<'r, T: Float>(
    (m, n, k): (usize, usize, usize),
    a: Operand<T>,
    packed_b: &[T],
    c: &mut [T],
    onto: impl Into<Onto<'r, T>>,
    workspace: &mut [T],
) {
    assert!(a.data.len() >= m * k && packed_b.len() >= packed_b_len::<T>(k, n));
    assert!(c.len() >= m * n);
    let init = onto.into().init(c, (m, n), k > 0);
    if empty_product(m, n, k, c, matches!(init, Init::C)) {
        return;
    }
    let level = simd::level();
    let (mr, nr) = T::tile_shape(level);
    let problem = Problem {
        m,
        n,
        k,
        a: a.view(m, k),
        b: View {
            ptr: packed_b.as_ptr(),
            row_stride: 0,
            col_stride: 0,
        },
        c: Out {
            ptr: c.as_mut_ptr(),
            row_stride: n,
            col_stride: 1,
        },
        prepacked_b: packed_b.as_ptr(),
        upper: false,
    };
    // SAFETY: the operands cover the slices checked above (and `init`'s row, C's columns).
    unsafe { problem.run(level, mr, nr, init, workspace) }
}

/// A strided mutable matrix (C).
#[derive(Clone, Copy)]
struct Out<T> {
    ptr: *mut T,
    row_stride: usize,
    col_stride: usize,
}

unsafe impl<T: Send> Send for Out<T> {}
unsafe impl<T: Send> Sync for Out<T> {}

impl<T> Out<T> {
    fn transposed(self) -> Out<T> {
        Out {
            ptr: self.ptr,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }
}

#[derive(Clone, Copy)]
struct Problem<T> {
    m: usize,
    n: usize,
    k: usize,
    a: View<T>,
    b: View<T>,
    c: Out<T>,
    /// B already packed whole by `pack_whole_b` (null: pack or read B as the product goes).
    prepacked_b: *const T,
    /// Only C's upper triangle is wanted (C = AᵀA is symmetric): micro-tiles wholly below the
    /// diagonal are skipped. (The triangle's row blocks carry unequal work; the threads take
    /// them one at a time, the largest first.)
    upper: bool,
}

// SAFETY: a Problem only reads A and B (and the prepacked B) and writes disjoint tiles of C.
unsafe impl<T: Sync> Sync for Problem<T> {}

impl<T: Float> Problem<T> {
    unsafe fn run(&self, level: simd::Level, mr: usize, nr: usize, init: Init<T>, ws: &mut [T]) {
        let (m, n, k) = (self.m, self.n, self.k);
        let (b_len, a_len) = (b_block_len::<T>(n, k, nr), a_block_len(k));
        assert!(ws.len() >= b_len + a_len, "gemm workspace too small");
        let threads = if m * n * k >= PARALLEL_MIN_WORK {
            crate::parallel::num_threads().min((ws.len() - b_len) / a_len)
        } else {
            1
        };
        // Inside a parallel task (a tile of a batch-tiled replay) the shares would run one after
        // the other, each packing all of A: 512-wide net 43.25 → 42.26 ms, classifier 50.26 →
        // 48.73 without that (Xeon, alternated in one process, 7 rounds).
        let split = threads > 1 && !crate::parallel::in_task();
        if split && self.split_in_shares(threads, nr, ws.len()) {
            let (parts, per) = (threads, ws.len() / threads);
            let shared = crate::kernels::SharedMut::new(ws);
            crate::parallel::run(parts, &|t| {
                let (part, init) = self.share(parts, t, (mr, nr), init);
                // SAFETY: the parts' workspaces and shares of C are disjoint.
                let ws = shared.range(t * per..(t + 1) * per);
                part.run_on(1, level, (mr, nr), init, ws)
            });
            return;
        }
        self.run_on(threads, level, (mr, nr), init, ws)
    }

    /// The product on `threads` threads sharing its row blocks (one: on the calling thread).
    unsafe fn run_on(
        &self,
        threads: usize,
        level: simd::Level,
        (mr, nr): (usize, usize),
        init: Init<T>,
        ws: &mut [T],
    ) {
        let (m, n, k) = (self.m, self.n, self.k);
        let blocking = Blocking::of::<T>(n, k, nr);
        let kc_max = blocking.depth;
        let (b_len, a_len) = (blocking.block_len(n, nr), a_block_len(k));
        let (b_pack, a_packs) = ws.split_at_mut(b_len);
        let slots = Slots::new(threads.min(64));
        let a_packs = crate::kernels::SharedMut::new(a_packs);
        // Packing a block pays when the block is reused: B's by every sliver of A, A's by
        // every panel of B. Otherwise the kernel reads the operand in place (B only when its
        // rows are contiguous); only a ragged edge sliver or panel is packed, to pad it.
        // A B that stays in L2 (a quarter of it), read by a short C's few slivers, is read in
        // place too: packing it cost more than it saved. Xeon, 2 threads, in one process,
        // fastad ÷ NumPy: 200³ f32 1.12 → 0.81 (its packing was split over the threads), 128³
        // 0.84 → 0.80, 64³ 1.32 → 1.22, 120×512×512 0.88 → 0.81; f64 64³ 1.26 → 1.19, 128³
        // 1.18 → 1.10; 250×512×256 f64 and 200×1000×1000 level. Every B in place for C under
        // 256 rows lost badly (64×4096×4096 f32 1.02 → 1.52).
        let prepacked = self.prepacked_b;
        let short_b_in_l2 = m < SHORT_ROWS
            && k * n * std::mem::size_of::<T>() <= crate::kernels::cache::l2_bytes() / 4;
        let pack_b = !prepacked.is_null()
            || self.b.col_stride != 1
            || (m.div_ceil(mr) > REUSE_TO_PACK && !short_b_in_l2);
        // Row blocks: at most MC rows, in a number of blocks the threads share evenly, each a
        // near-equal run of whole slivers. (Blocks of a fixed size, the last one short, left
        // a thread idle: 1024 rows on 2 threads ran as 5 × 108 rows against 4 × 108 + 52.)
        let slivers = m.div_ceil(mr);
        let blocks = slivers
            .div_ceil(MC / mr)
            .next_multiple_of(threads)
            .min(slivers);
        let block_rows = |b: usize| {
            let s = crate::parallel::split(slivers, blocks, b);
            s.start * mr..(s.end * mr).min(m)
        };
        for jc in (0..n).step_by(blocking.width) {
            let nc = blocking.width.min(n - jc);
            let panels = nc.div_ceil(nr);
            let pack_a = panels > REUSE_TO_PACK;
            for pc in (0..k).step_by(kc_max.max(1)) {
                let kc = kc_max.min(k - pc);
                let b_block = &mut b_pack[..kc * nc.next_multiple_of(nr)];
                let b_block: &[T] = if !prepacked.is_null() {
                    // SAFETY: `pack_whole_b` laid out every block, at this offset.
                    let at = prepacked.add(jc * k + pc * nc.next_multiple_of(nr));
                    std::slice::from_raw_parts(at, kc * nc.next_multiple_of(nr))
                } else if pack_b {
                    pack_b_block(self.b.at(pc, jc), (kc, nc), nr, threads, b_block);
                    b_block
                } else {
                    if nc % nr != 0 {
                        let j0 = (panels - 1) * nr;
                        let edge = self.b.at(pc, jc + j0).transposed();
                        pack(edge, nc - j0, kc, nr, b_block);
                    }
                    b_block
                };
                let block = Block {
                    jc,
                    nc,
                    pc,
                    kc,
                    pack_a,
                    pack_b,
                    b_block,
                    // C holds the blocks before this one.
                    init: if pc > 0 { Init::C } else { init },
                };
                // Tasks: one per block of rows, taken by whichever thread is free (on a
                // shared machine a thread may run slower for a while; one fixed share per
                // thread measured up to 1.15× slower). When there are fewer blocks than
                // threads, each block's panels split further.
                let per_block = (threads / blocks).clamp(1, panels);
                let tasks = blocks * per_block;
                let task = |t: usize| {
                    let slot = slots.claim();
                    // SAFETY: the claimed slot's A buffer is this task's alone.
                    let a_block = unsafe { a_packs.range(slot.0 * a_len..(slot.0 + 1) * a_len) };
                    let (blk, part) = (t / per_block, t % per_block);
                    let rows = block_rows(blk);
                    let panel_range = crate::parallel::split(panels, per_block, part);
                    // SAFETY: tasks write disjoint tiles of C.
                    unsafe {
                        self.tiles(
                            level,
                            (mr, nr),
                            &block,
                            (rows.start, rows.len()),
                            &panel_range,
                            a_block,
                        )
                    };
                };
                if threads == 1 {
                    // A small product, or one thread's share of C's columns: with one A
                    // buffer, a helper thread could only wait for it.
                    (0..tasks).for_each(task);
                } else {
                    crate::parallel::run(tasks, &task);
                }
            }
        }
    }

    /// Whether the threads should each compute a share of C on their own (`share`), rather
    /// than share its row blocks. Each then packs its own B block, which stays in its own L2,
    /// and runs through every block without waiting for the others at the end of each.
    ///
    /// Where C is no taller than wide (m ≤ n, A no larger than B), the threads take shares of
    /// C's columns: each packs its part of B, but all of A. Each share must be wide enough to
    /// be as deep as the whole product's blocks (`Blocking`: a narrow C gets deeper ones), so
    /// that results do not depend on the thread count. Xeon, 2 threads, old and new alternated
    /// in one Rust loop: f64 1024³ 22.49 → 20.55 ms (AVX2), 15.25 → 14.42 (AVX-512);
    /// 128×1024×1024 f32 1.31 → 1.03 and 20×10000×1000 f32 4.32 → 3.22 (AVX-512); square f32
    /// 1–3%.
    ///
    /// Where C is taller than wide, the same column split lost (4096×512×512 f32, AVX-512: 6.54
    /// → 7.25 ms): there the threads take shares of C's rows, each packing all of B, no larger
    /// than A, and its own rows of A; the blocking does not depend on C's height. Xeon, 2
    /// threads, row blocks → row shares alternated in one process, 5–7 rounds: 4096×784×512
    /// f64 34.03 → 33.56 ms (AVX2), 25.88 → 24.95 (AVX-512), f32 11.20 → 10.68; 4096×512×512
    /// f64 15.11 → 14.73 (AVX-512); 300×1000×100 f64 0.65 → 0.55; the rest level or 1–3% faster.
    /// Each share is at least a block of rows (MC), or packing all of B would outweigh it.
    ///
    /// The workspace has room for a B block per thread (`workspace_len`). Before it had, a
    /// short C wider than two blocks (f32) ran in row blocks: 256×1024×4096 f32 at AVX-512 went
    /// from 1.22× to 1.03× NumPy's time, 512×512×4096 from 1.11× to 1.03× (5 alternated
    /// processes each).
    fn split_in_shares(&self, threads: usize, nr: usize, ws_len: usize) -> bool {
        let (m, n, k) = (self.m, self.n, self.k);
        if self.upper || !self.prepacked_b.is_null() {
            return false;
        }
        let fits = |width| b_block_len::<T>(width, k, nr) + a_block_len(k) <= ws_len / threads;
        if m > n {
            // Each thread packs all of B: for at least a block of rows.
            return m / threads >= MC && fits(n);
        }
        let panels = n.div_ceil(nr);
        (0..threads).all(|t| {
            let width = crate::parallel::split(panels, threads, t).len() * nr;
            width > REUSE_TO_PACK * nr && fits(width)
        })
    }

    /// Share `t` of `parts` (`split_in_shares`): a run of whole slivers of C's rows where C is
    /// taller than wide, else of whole panels of its columns; with what it is added to.
    unsafe fn share(
        &self,
        parts: usize,
        t: usize,
        (mr, nr): (usize, usize),
        init: Init<T>,
    ) -> (Problem<T>, Init<T>) {
        let (m, n) = (self.m, self.n);
        if m > n {
            let slivers = crate::parallel::split(m.div_ceil(mr), parts, t);
            let (i0, i1) = (slivers.start * mr, (slivers.end * mr).min(m));
            let rows = Problem {
                m: i1 - i0,
                a: self.a.at(i0, 0),
                c: Out {
                    ptr: self.c.ptr.add(i0 * self.c.row_stride),
                    ..self.c
                },
                ..*self
            };
            return (rows, init);
        }
        let panels = crate::parallel::split(n.div_ceil(nr), parts, t);
        let (j0, j1) = (panels.start * nr, (panels.end * nr).min(n));
        let columns = Problem {
            n: j1 - j0,
            b: self.b.at(0, j0),
            c: Out {
                ptr: self.c.ptr.add(j0 * self.c.col_stride),
                ..self.c
            },
            ..*self
        };
        (columns, init.right(j0))
    }

    /// The micro-kernel over `panels` of B's block and every sliver of A's rows ic..ic+mc.
    #[inline]
    unsafe fn tiles(
        &self,
        level: simd::Level,
        (mr, nr): (usize, usize),
        blk: &Block<T>,
        (ic, mc): (usize, usize),
        panels: &std::ops::Range<usize>,
        a_block: &mut [T],
    ) {
        let kc = blk.kc;
        let ragged = mc % mr != 0;
        let last = (mc.div_ceil(mr) - 1) * mr;
        if blk.pack_a {
            pack(self.a.at(ic, blk.pc), mc, kc, mr, a_block);
        } else if ragged {
            pack(self.a.at(ic + last, blk.pc), mc - last, kc, mr, a_block);
        }
        let a_block = &*a_block;
        let panel_src = |j0: usize| {
            if blk.pack_b {
                (blk.b_block.as_ptr().add(j0 * kc), nr)
            } else if j0 + nr <= blk.nc {
                (self.b.at(blk.pc, blk.jc + j0).ptr, self.b.row_stride)
            } else {
                (blk.b_block.as_ptr(), nr)
            }
        };
        let sliver_src = |i0: usize| {
            if blk.pack_a {
                (a_block.as_ptr().add(i0 * kc), 1, mr)
            } else if i0 == last && ragged {
                (a_block.as_ptr(), 1, mr)
            } else {
                let v = self.a.at(ic + i0, blk.pc);
                (v.ptr, v.row_stride, v.col_stride)
            }
        };
        let tile = |i0: usize, j0: usize| {
            if self.upper && ic + i0 >= blk.jc + j0 + nr {
                return; // wholly below the diagonal
            }
            let ((a, a_row, a_depth), (b, b_depth)) = (sliver_src(i0), panel_src(j0));
            let c = self
                .c
                .ptr
                .add((ic + i0) * self.c.row_stride + (blk.jc + j0) * self.c.col_stride);
            let dest = Dest {
                ptr: c,
                row_stride: self.c.row_stride,
                col_stride: self.c.col_stride,
                rows: mr.min(mc - i0),
                cols: nr.min(blk.nc - j0),
                init: blk.init.right(blk.jc + j0),
            };
            T::tile(
                level,
                kc,
                Src {
                    a,
                    a_row,
                    a_depth,
                    b,
                    b_depth,
                },
                dest,
            );
        };
        if self.sweeps_rows(blk, nr) {
            for i0 in (0..mc).step_by(mr) {
                for j0 in panels.clone().map(|p| p * nr) {
                    tile(i0, j0);
                }
            }
        } else {
            for j0 in panels.clone().map(|p| p * nr) {
                for i0 in (0..mc).step_by(mr) {
                    tile(i0, j0);
                }
            }
        }
    }

    /// The order of a block's tiles. Panel-outer keeps a panel in L1 while A's slivers stream
    /// from L2, and writes C in columns of tiles, MC rows at a time. Sliver-outer keeps a
    /// sliver in L1 while B's panels stream from L2, so B's block must fit there (in half of
    /// it), and writes C row strip by row strip, along its memory, where the hardware
    /// prefetcher follows it: that pays in a shallow block (SHALLOW_KC), where C's traffic
    /// bounds the product. Xeon (AVX-512), panel- → sliver-outer, one thread: 10000×20×1000
    /// f64 17.4 → 6.0 ms, f32 3.5 → 2.9; 10000×128×1000 f64 40.0 → 27.1. Deeper, it lost on two
    /// threads: 4096×256×1024 f32 5.9 → 6.6 ms.
    fn sweeps_rows(&self, blk: &Block<T>, nr: usize) -> bool {
        let b_bytes = blk.kc * blk.nc.next_multiple_of(nr) * std::mem::size_of::<T>();
        self.c.col_stride == 1
            && blk.kc <= SHALLOW_KC
            && b_bytes <= crate::kernels::cache::l2_bytes() / 2
    }
}

/// Up to 64 buffers that concurrent tasks claim one each (a task does not know its thread).
struct Slots {
    free: std::sync::atomic::AtomicU64,
}

/// A claimed buffer: its index; released when dropped.
struct Slot<'a>(usize, &'a Slots);

impl Slots {
    fn new(count: usize) -> Slots {
        assert!(count >= 1);
        let mask = if count == 64 {
            u64::MAX
        } else {
            (1u64 << count) - 1
        };
        Slots {
            free: std::sync::atomic::AtomicU64::new(mask),
        }
    }
    /// The lowest free buffer; waits when an executor runs more tasks at once than there are
    /// buffers (a rayon pool larger than the thread count fastad was given).
    fn claim(&self) -> Slot<'_> {
        use std::sync::atomic::Ordering::*;
        loop {
            let free = self.free.load(Relaxed);
            if free == 0 {
                std::thread::yield_now();
                continue;
            }
            let i = free.trailing_zeros() as usize;
            if self
                .free
                .compare_exchange_weak(free, free & !(1 << i), Acquire, Relaxed)
                .is_ok()
            {
                return Slot(i, self);
            }
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.1
            .free
            .fetch_or(1 << self.0, std::sync::atomic::Ordering::Release);
    }
}

/// One (jc, pc) block of the product, as the tasks see it.
struct Block<'a, T> {
    jc: usize,
    nc: usize,
    pc: usize,
    kc: usize,
    pack_a: bool,
    pack_b: bool,
    /// B's packed block (or its one packed ragged panel when `!pack_b`).
    b_block: &'a [T],
    init: Init<T>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(
        m: usize,
        n: usize,
        k: usize,
        a: &[f64],
        ta: bool,
        b: &[f64],
        tb: bool,
    ) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    let x = if ta { a[p * m + i] } else { a[i * k + p] };
                    let y = if tb { b[j * k + p] } else { b[p * n + j] };
                    c[i * n + j] += x * y;
                }
            }
        }
        c
    }

    /// The kernels this CPU can run.
    pub(super) fn levels() -> Vec<simd::Level> {
        use simd::Level::*;
        match simd::level() {
            Avx512 => vec![Avx512, Avx2, Baseline],
            Avx2 => vec![Avx2, Baseline],
            Neon => vec![Neon, Baseline],
            Baseline => vec![Baseline],
        }
    }

    /// A (m×k) and B (k×n) of smooth, distinct values.
    fn operands(m: usize, n: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
        let a = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
        let b = (0..k * n).map(|i| (i as f64 * 0.11).cos()).collect();
        (a, b)
    }

    /// A row of distinct values to add to every row of C (`Onto::Rows`).
    fn bias_row(n: usize) -> Vec<f64> {
        (0..n).map(|j| 1.5 + (j as f64).sin()).collect()
    }

    fn check<T: Float>(m: usize, n: usize, k: usize, threads: usize, tol: f64) {
        crate::parallel::set_num_threads(threads);
        let (a, b) = operands(m, n, k);
        let (at, bt): (Vec<T>, Vec<T>) = (
            a.iter().map(|&v| T::from_f64(v)).collect(),
            b.iter().map(|&v| T::from_f64(v)).collect(),
        );
        let mut ws = vec![T::zero(); workspace_len(m, n, k, threads)];
        let row: Vec<T> = bias_row(n).iter().map(|&v| T::from_f64(v)).collect();
        for ta in [false, true] {
            for tb in [false, true] {
                let want = reference(m, n, k, &a, ta, &b, tb);
                for (level, onto) in levels()
                    .into_iter()
                    .flat_map(|l| [(l, Onto::Zero), (l, Onto::C), (l, Onto::Rows(&row))])
                {
                    // Only accumulating may read C: else it starts as NaN.
                    let start = if let Onto::C = onto { 1.0 } else { f64::NAN };
                    let mut c = vec![T::from_f64(start); m * n];
                    let op = |data, transposed| Operand { data, transposed };
                    gemm_at(
                        level,
                        (m, n, k),
                        op(&at, ta),
                        op(&bt, tb),
                        &mut c,
                        onto,
                        &mut ws,
                    );
                    for (i, (x, y)) in c.iter().zip(&want).enumerate() {
                        let offset = match onto {
                            Onto::Zero => 0.0,
                            Onto::C => 1.0,
                            Onto::Rows(row) => Float::to_f64(row[i % n]),
                        };
                        let err = (Float::to_f64(*x) - offset - y).abs();
                        assert!(
                            err <= tol * (1.0 + y.abs() + offset.abs()) * (k as f64).sqrt(),
                            "{} {level:?} {m}x{n}x{k} ta={ta} tb={tb} onto={} \
                             threads={threads}: element {i} is {x:?}, want {}",
                            T::NAME,
                            ["zero", "C", "rows"][onto_index(onto)],
                            y + offset
                        );
                    }
                }
            }
        }
    }

    fn onto_index<T>(onto: Onto<T>) -> usize {
        match onto {
            Onto::Zero => 0,
            Onto::C => 1,
            Onto::Rows(_) => 2,
        }
    }

    const SHAPES: &[(usize, usize, usize)] = &[
        (1, 1, 1),
        (3, 5, 7),
        (9, 1, 17),
        (1, 40, 3),
        (13, 33, 1),
        (70, 80, 90),
        (0, 3, 2),
        (3, 0, 2),
        (4, 3, 0),
        (121, 37, 300),
        (250, 20, 260),
        (20, 1030, 40),
        (130, 1100, 9),
        // Depth 1 over more rows than one thread takes; thin products with long depth.
        (300, 130, 1),
        (1, 37, 300),
        (300, 1, 37),
        // A B block large enough for the threads to pack it together (ragged last panel).
        (30, 700, 300),
        // B wider than one block (`Blocking::width`), the last one ragged.
        (30, 1100, 300),
        // Narrow C, A read in place: blocks deeper than KC, the last one ragged.
        (45, 20, 2100),
        (31, 9, 1300),
    ];

    #[test]
    fn f64_matches_the_definition_on_one_and_two_threads() {
        for &(m, n, k) in SHAPES {
            for threads in [1, 2, 3] {
                check::<f64>(m, n, k, threads, 1e-13);
            }
        }
    }

    #[test]
    fn f32_matches_the_definition_with_ragged_panels() {
        // Last panels of 1 to NR columns at every level (the half-width edge kernel included),
        // and tall narrow products on either side of the transposition rule.
        for &(m, n, k) in &[
            (13, 20, 30),
            (7, 24, 5),
            (30, 41, 17),
            (200, 4, 50),
            (50, 47, 260),
        ] {
            for threads in [1, 2] {
                check::<f32>(m, n, k, threads, 1e-5);
            }
        }
    }

    #[test]
    fn products_split_in_shares_match_one_thread_bit_for_bit() {
        // Each thread computes a share of C alone (`split_in_shares`): its columns where C is
        // no taller than wide, C wider than one block of NC columns included, else its rows.
        // Each must give one thread's result.
        let shapes = [
            (30, 700, 300),
            (700, 30, 300),
            (64, 1100, 260),
            (1100, 64, 260),
            (100, 300, 150),
            (300, 100, 150),
            (13, 2100, 9),
            (2100, 13, 9),
        ];
        for level in levels() {
            for &(m, n, k) in &shapes {
                let (a, b) = operands(m, n, k);
                let op = |data, transposed| Operand { data, transposed };
                let start = |i: usize| (i as f64 * 0.05).cos();
                let row = bias_row(n);
                let product = |threads: usize, ta: bool, tb: bool, onto: Onto<f64>| {
                    crate::parallel::set_num_threads(threads);
                    let mut c: Vec<f64> = (0..m * n).map(start).collect();
                    let mut ws = vec![0.0; workspace_len(m, n, k, threads)];
                    gemm_at(
                        level,
                        (m, n, k),
                        op(&a, ta),
                        op(&b, tb),
                        &mut c,
                        onto,
                        &mut ws,
                    );
                    c
                };
                let cases = [
                    (false, false, Onto::Zero),
                    (true, true, Onto::C),
                    (false, true, Onto::Rows(&row)),
                ];
                for (ta, tb, onto) in cases {
                    let one = product(1, ta, tb, onto);
                    let want = reference(m, n, k, &a, ta, &b, tb);
                    let base = |i: usize| match onto {
                        Onto::Zero => 0.0,
                        Onto::C => start(i),
                        Onto::Rows(row) => row[i % n],
                    };
                    for (i, (x, y)) in one.iter().zip(&want).enumerate() {
                        assert!(
                            (x - base(i) - y).abs() <= 1e-12 * (1.0 + y.abs() + base(i).abs()),
                            "{m}x{n}x{k} {ta} {tb} {i}: {x} {} {y}",
                            base(i)
                        );
                    }
                    for threads in [2, 3] {
                        let got = product(threads, ta, tb, onto);
                        assert!(got
                            .iter()
                            .zip(&one)
                            .all(|(x, y)| x.to_bits() == y.to_bits()));
                    }
                }
            }
            // The first two shapes do take the split, by columns and by rows, on 2 threads;
            // a short C as wide as four blocks does too, with `workspace_len`'s room for a B
            // block per thread; C's rows are not split into shares of less than a block.
            for &shape in &shapes[..2] {
                assert!(takes_shares::<f64>(level, shape, 2), "{shape:?}");
            }
            assert!(takes_shares::<f32>(level, (40, 4100, 300), 2));
            assert!(!takes_shares::<f64>(level, (200, 30, 300), 2));
        }
    }

    /// Whether a product of this shape, with `workspace_len`'s workspace, is split in shares.
    fn takes_shares<T: Float>(
        level: simd::Level,
        (m, n, k): (usize, usize, usize),
        threads: usize,
    ) -> bool {
        let (a, b, mut c) = (
            vec![T::zero(); m * k],
            vec![T::zero(); k * n],
            vec![T::zero(); m * n],
        );
        let op = |data, rows, cols| {
            Operand {
                data,
                transposed: false,
            }
            .view(rows, cols)
        };
        let problem = Problem {
            m,
            n,
            k,
            a: op(&a, m, k),
            b: op(&b, k, n),
            c: Out {
                ptr: c.as_mut_ptr(),
                row_stride: n,
                col_stride: 1,
            },
            prepacked_b: std::ptr::null(),
            upper: false,
        };
        let nr = T::tile_shape(level).1;
        problem.split_in_shares(threads, nr, workspace_len(m, n, k, threads))
    }

    #[test]
    fn a_workspace_holds_every_product_no_larger() {
        // `Blocking` goes deeper for narrow C, so a smaller product (a ragged tile's) may use a
        // deeper B block: the bound must still hold it, whichever way round C is computed and
        // whatever the panels' width.
        let dims = [1, 4, 8, 9, 16, 20, 31, 32, 33, 64, 65, 128, 129, 300, 1100];
        let depths = [1, 100, 256, 257, 1000, 1024, 1025, 3000];
        let mut grid = vec![];
        for m in dims {
            for n in dims {
                grid.extend(depths.map(|k| (m, n, k)));
            }
        }
        for &(m, n, k) in &grid {
            let room = workspace_len(m, n, k, 1);
            for &(m2, n2, k2) in grid.iter().filter(|&&(a, b, c)| a <= m && b <= n && c <= k) {
                for tile in [
                    (4, 4),
                    (4, 8),
                    (6, 8),
                    (6, 16),
                    (12, 4),
                    (12, 8),
                    (12, 16),
                    (12, 32),
                ] {
                    let nr = tile.1;
                    for cols in [n2, m2] {
                        let b_block =
                            b_block_len::<f32>(cols, k2, nr).max(b_block_len::<f64>(cols, k2, nr));
                        let need = b_block + MC * k2.min(KC);
                        assert!(
                            need <= room,
                            "{m2}x{n2}x{k2} (nr {nr}, {cols} columns) needs {need} > {room} of {m}x{n}x{k}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_buffer_slot_has_one_holder_at_a_time() {
        // Eight threads share three slots: each holder marks its slot busy, and finds it free.
        let slots = Slots::new(3);
        let busy: Vec<std::sync::atomic::AtomicBool> = (0..3).map(|_| false.into()).collect();
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..2000 {
                        let slot = slots.claim();
                        assert!(!busy[slot.0].swap(true, std::sync::atomic::Ordering::AcqRel));
                        std::hint::spin_loop();
                        busy[slot.0].store(false, std::sync::atomic::Ordering::Release);
                    }
                });
            }
        });
    }

    #[test]
    fn prepacked_b_gives_the_same_product() {
        crate::parallel::set_num_threads(2);
        for &(m, n, k) in SHAPES {
            let (a, b) = operands(m, n, k);
            let mut ws = vec![0.0; workspace_len(m, n, k, 2)];
            for tb in [false, true] {
                let want = reference(m, n, k, &a, false, &b, tb);
                let mut packed = vec![f64::NAN; packed_b_len::<f64>(k, n)];
                let op = |data, transposed| Operand { data, transposed };
                pack_whole_b(k, n, op(&b, tb), &mut packed);
                let row = bias_row(n);
                for onto in [Onto::Zero, Onto::Rows(&row)] {
                    let mut c = vec![f64::NAN; m * n];
                    gemm_prepacked((m, n, k), op(&a, false), &packed, &mut c, onto, &mut ws);
                    for (i, (x, y)) in c.iter().zip(&want).enumerate() {
                        let y = y + if let Onto::Rows(row) = onto {
                            row[i % n]
                        } else {
                            0.0
                        };
                        assert!((x - y).abs() <= 1e-13 * (1.0 + y.abs()) * (k as f64).sqrt());
                    }
                }
            }
        }
    }

    fn check_gram<T: Float>(tol: f64) {
        crate::parallel::set_num_threads(2);
        // Widths around every kernel's MR and NR (AVX-512 12 × 16 or 32, AVX2 6 × 8 or 16,
        // portable 4 × 8 or, f64, 4 × 4), below one panel (read past each row), past the direct
        // path's 128; depths of one row, a few rows, part of a depth block and more than two
        // blocks.
        let widths = [
            1, 3, 4, 5, 6, 7, 8, 10, 12, 13, 16, 17, 20, 33, 64, 100, 128, 129, 200,
        ];
        for p in widths {
            for n in [1, 2, 7, 300, 2 * gram::block_rows::<T>(p) + 5] {
                let g64: Vec<f64> = (0..n * p).map(|i| (i as f64 * 0.37).sin()).collect();
                let g: Vec<T> = g64.iter().map(|&v| T::from_f64(v)).collect();
                let want = reference(p, p, n, &g64, true, &g64, false);
                let close = |c: &[T], offset: f64, what: &str| {
                    for i in 0..p {
                        for j in i..p {
                            let (x, y) = (Float::to_f64(c[i * p + j]) - offset, want[i * p + j]);
                            assert!(
                                (x - y).abs() <= tol * (1.0 + y.abs()) * (n as f64).sqrt(),
                                "{what} {} p={p} n={n}: C[{i},{j}] = {x}, want {y}",
                                T::NAME
                            );
                        }
                    }
                };
                for accumulate in [false, true] {
                    let start = T::from_f64(if accumulate { 1.0 } else { f64::NAN });
                    let offset = if accumulate { 1.0 } else { 0.0 };
                    let mut c = vec![start; p * p];
                    let mut ws = vec![T::zero(); workspace_len(p, p, n, 2)];
                    gram_upper(&g, n, p, &mut c, accumulate, &mut ws);
                    close(&c, offset, "gram_upper");
                    for level in levels() {
                        if gram::direct_fits(T::tile_shape(level), p) {
                            let mut c = vec![start; p * p];
                            // SAFETY: `levels` lists this CPU's.
                            unsafe { gram::gram_direct(level, &g, n, p, &mut c, accumulate) };
                            close(&c, offset, &format!("gram_direct {level:?}"));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn gram_upper_matches_the_definition_at_every_level() {
        check_gram::<f64>(1e-13);
        check_gram::<f32>(1e-6);
    }

    #[test]
    fn f32_matches_the_definition() {
        for &(m, n, k) in SHAPES {
            check::<f32>(m, n, k, 2, 1e-6);
        }
    }
}
