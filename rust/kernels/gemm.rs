//! Matrix multiply: the one module the rest of the crate calls for `C += op(A) op(B)`.
//!
//! A portable kernel (axpy rows and unrolled dot products that LLVM vectorises), split over rows
//! of C across the thread pool for large products. The dense-network work replaces the inside of
//! this module with a measured, cache-blocked kernel; its signature stays.
use super::SharedMut;
use crate::float::Float;

/// Work (m·n·k multiply-adds) below which a product runs on the calling thread.
const PARALLEL_MIN_FLOPS: usize = 1 << 18;

/// A row-major matrix operand: `data` holds `op(M)` of shape (rows, cols) as stored, read
/// transposed when `transposed` (then `data` is stored as (cols, rows)).
#[derive(Clone, Copy)]
pub struct Operand<'a, T> {
    pub data: &'a [T],
    pub transposed: bool,
}

/// C (m×n) += op(A) (m×k) · op(B) (k×n).
pub fn gemm_acc<T: Float>(m: usize, n: usize, k: usize, a: Operand<T>, b: Operand<T>, c: &mut [T]) {
    debug_assert!(a.data.len() >= m * k && b.data.len() >= k * n && c.len() >= m * n);
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let threads = crate::parallel::num_threads();
    let parts = if m * n * k >= PARALLEL_MIN_FLOPS {
        threads.min(m)
    } else {
        1
    };
    if parts <= 1 {
        rows(0..m, n, k, a, b, &mut c[..m * n], m);
        return;
    }
    let shared = SharedMut::new(&mut c[..m * n]);
    crate::parallel::run(parts, &|p| {
        let r = crate::parallel::split(m, parts, p);
        // SAFETY: row blocks of C are disjoint.
        let c_rows = unsafe { shared.range(r.start * n..r.end * n) };
        rows(r, n, k, a, b, c_rows, m);
    });
}

/// Rows `r` of C (given as `c`, starting at row `r.start`).
fn rows<T: Float>(
    r: std::ops::Range<usize>,
    n: usize,
    k: usize,
    a: Operand<T>,
    b: Operand<T>,
    c: &mut [T],
    m: usize,
) {
    let a_at = |i: usize, p: usize| {
        if a.transposed {
            a.data[p * m + i]
        } else {
            a.data[i * k + p]
        }
    };
    for (ci, i) in r.enumerate() {
        let c_row = &mut c[ci * n..(ci + 1) * n];
        if !b.transposed {
            // C[i, :] += Σ_p A[i, p] · B[p, :]: contiguous axpys.
            for p in 0..k {
                axpy(c_row, a_at(i, p), &b.data[p * n..(p + 1) * n]);
            }
        } else if !a.transposed {
            // C[i, j] += A[i, :] · B_stored[j, :]: contiguous dot products.
            let a_row = &a.data[i * k..(i + 1) * k];
            for (j, cij) in c_row.iter_mut().enumerate() {
                *cij += dot(a_row, &b.data[j * k..(j + 1) * k]);
            }
        } else {
            for (j, cij) in c_row.iter_mut().enumerate() {
                let b_row = &b.data[j * k..(j + 1) * k];
                let mut s = T::zero();
                for (p, &bjp) in b_row.iter().enumerate() {
                    s += a_at(i, p) * bjp;
                }
                *cij += s;
            }
        }
    }
}

#[inline(always)]
fn axpy<T: Float>(y: &mut [T], alpha: T, x: &[T]) {
    y.iter_mut().zip(x).for_each(|(y, &x)| *y += alpha * x);
}

#[inline(always)]
fn dot<T: Float>(x: &[T], y: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (a, b) in xc.zip(yc) {
        for l in 0..8 {
            acc[l] += a[l] * b[l];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (&a, &b) in xr.iter().zip(yr) {
        s += a * b;
    }
    s
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

    #[test]
    fn all_transpose_cases_match_the_definition() {
        crate::parallel::set_num_threads(2);
        for &(m, n, k) in &[(1, 1, 1), (3, 5, 7), (9, 1, 17), (70, 80, 90), (0, 3, 2)] {
            let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
            let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.11).cos()).collect();
            for ta in [false, true] {
                for tb in [false, true] {
                    let mut c = vec![1.0; m * n];
                    gemm_acc(
                        m,
                        n,
                        k,
                        Operand {
                            data: &a,
                            transposed: ta,
                        },
                        Operand {
                            data: &b,
                            transposed: tb,
                        },
                        &mut c,
                    );
                    let want = reference(m, n, k, &a, ta, &b, tb);
                    for (x, y) in c.iter().zip(&want) {
                        assert!((x - 1.0 - y).abs() < 1e-12, "{m}x{n}x{k} ta={ta} tb={tb}");
                    }
                }
            }
        }
    }
}
