//! The upper triangle of a narrow Gram matrix C = GᵀG (G: n × p row-major, p from one kernel
//! height MR to `DIRECT_MAX_P`), the Kronecker factors' shape: many samples, few columns. Here
//! the packing the general product does costs as much as the arithmetic, and its MR × NR tiles
//! fit p poorly, so the micro-kernel reads G where it lies, in blocks of rows that stay in L2:
//! a sliver of A is MR columns of G (a_row = 1, a_depth = p), a panel of B is NR columns.
//! Slivers and panels that would run past column p are shifted back inside it and computed
//! into a small buffer, of which only the entries not already covered are added. A G narrower
//! than one panel (p < NR) is read past each row's end into the next row, whose columns are
//! dropped; the last rows, where that would read past G, are added one by one.
use super::microkernel::{Dest, Init, Src};
use crate::float::Float;
use crate::kernels::simd::Level;

/// The widest G read in place; wider ones are packed by the general product.
pub(super) const DIRECT_MAX_P: usize = 128;
/// Bytes of G's rows per depth block: a quarter of a 256 kB L2 cache. Each block costs a pass
/// of C's tiles (loaded, added to, stored; the edge ones through a buffer), while the kernel's
/// strided reads of G stream from L2 about as fast as from L1: blocks of half an L1 (16 kB)
/// measured 14–25% slower at n = 100,000, p = 97 or 128, and seed 002's 128 × 97 took 4
/// blocks (2 rows in the last) where it now takes 1.
const BLOCK_BYTES: usize = 64 << 10;
/// The largest MR × NR of any kernel (AVX-512 f32: 12 × 32).
const MAX_TILE: usize = 12 * 32;

/// Whether `gram_direct` takes a G of p columns with the kernels of (mr, nr). Its tiles on
/// the diagonal assume panels at least as wide as slivers (not so for NEON's 12 × 8 and
/// 12 × 4, whose Gram matrices the general product computes).
pub(super) fn direct_fits((mr, nr): (usize, usize), p: usize) -> bool {
    mr <= nr && (mr..=DIRECT_MAX_P).contains(&p)
}

/// The starts of the slivers (or panels) of `width` covering 0..p, and from which index each
/// one's results are new: all tiles start at multiples of `width`, except a last one shifted
/// back to end at p, whose first indices the previous tile covered — or, when p < width, one
/// tile at 0 running past p.
fn starts(p: usize, width: usize) -> impl Iterator<Item = (usize, usize)> {
    let whole = p / width;
    let last = match (whole, p % width) {
        (_, 0) => None,
        (0, _) => Some((0, 0)),
        _ => Some((p - width, whole * width)),
    };
    (0..whole).map(move |t| (t * width, t * width)).chain(last)
}

/// The rows of G (p columns) in one depth block.
pub(super) fn block_rows<T: Float>(p: usize) -> usize {
    (BLOCK_BYTES / (p * std::mem::size_of::<T>())).max(1)
}

/// C's upper triangle (p × p, with the diagonal; tiles crossing it also write some entries
/// below it) = GᵀG, or += when `accumulate`, on the calling thread. `direct_fits` must hold.
///
/// # Safety
/// `level`'s kernels must run on this CPU (it is `simd::level()` or below).
pub(super) unsafe fn gram_direct<T: Float>(
    level: Level,
    g: &[T],
    n: usize,
    p: usize,
    c: &mut [T],
    accumulate: bool,
) {
    let (mr, nr) = T::tile_shape(level);
    assert!(direct_fits((mr, nr), p) && mr * nr <= MAX_TILE);
    assert!(g.len() >= n * p && c.len() >= p * p);
    // Rows whose panel (nr elements from the row's start) stays inside G.
    let safe = match p < nr {
        true => n.saturating_sub((nr - p).div_ceil(p)),
        false => n,
    };
    let block = block_rows::<T>(p);
    let mut buf = [T::zero(); MAX_TILE];
    for r0 in (0..safe).step_by(block) {
        let kc = block.min(safe - r0);
        let rows = g[r0 * p..].as_ptr();
        let add = accumulate || r0 > 0;
        for (j0, new_cols) in starts(p, nr) {
            for (i0, new_rows) in starts(p, mr) {
                if new_rows >= j0 + nr {
                    break; // this sliver and the next are below the diagonal
                }
                // The tile runs the narrowest kernel that covers the columns it adds: those
                // right of both its first new row's diagonal and the previous panel (a
                // sliver crossing the diagonal; the last panel, shifted back to end at p).
                let need = j0 + nr - new_cols.max(new_rows);
                let cols = T::edge_cols(level, need);
                let jt = j0 + nr - cols;
                let src = Src {
                    a: rows.add(i0),
                    a_row: 1,
                    a_depth: p,
                    b: rows.add(jt),
                    b_depth: p,
                };
                if new_rows == i0 && new_cols <= jt && jt + cols <= p {
                    let dest = Dest {
                        ptr: c.as_mut_ptr().add(i0 * p + jt),
                        row_stride: p,
                        col_stride: 1,
                        rows: mr,
                        cols,
                        init: Init::from(add),
                    };
                    T::tile(level, kc, src, dest);
                    continue;
                }
                let dest = Dest {
                    ptr: buf.as_mut_ptr(),
                    row_stride: nr,
                    col_stride: 1,
                    rows: mr,
                    cols,
                    init: Init::Zero,
                };
                T::tile(level, kc, src, dest);
                for i in new_rows..i0 + mr {
                    let (row, part) = (&mut c[i * p..], &buf[(i - i0) * nr..]);
                    for j in new_cols.max(jt)..(j0 + nr).min(p) {
                        let v = part[j - jt];
                        row[j] = if add { row[j] + v } else { v };
                    }
                }
            }
        }
    }
    // The rows left out above, one rank-one update each.
    for (r, x) in g[..n * p].chunks_exact(p).enumerate().skip(safe) {
        for (i, &xi) in x.iter().enumerate() {
            for (cij, &xj) in c[i * p + i..(i + 1) * p].iter_mut().zip(&x[i..]) {
                *cij = if accumulate || r > 0 {
                    *cij + xi * xj
                } else {
                    xi * xj
                };
            }
        }
    }
}
