//! Batched outer products of per-sample vectors, as Laplace approximations need them: for G
//! (N × P) with rows g_b, every g_b g_bᵀ (whole or its upper triangle), their sum GᵀG (the
//! empirical Fisher) and its diagonal Σ_b g_b². Work is split over the thread pool by samples
//! (or, for the sums, by output rows, or for a narrow G by a fixed number of sample parts);
//! every sum is taken in an order fixed by the sizes alone, so results do not depend on the
//! thread count. Nothing here allocates in steady state.
use crate::float::Float;
pub use crate::kernels::gemm::mirror_upper;
use crate::kernels::gemm::{gram_upper, workspace_len};
use crate::kernels::simd::dispatch;
use crate::kernels::{outer_rows, scaled, SharedMut};
use std::cell::RefCell;

/// Output elements below which a product runs on the calling thread.
const PARALLEL_MIN: usize = 1 << 15;
/// `outer_sum` splits the samples of a G at most this wide into `SAMPLE_PARTS` parts of at
/// least `MIN_PART_ROWS` rows (8 parts keep up to 8 threads busy; their partial sums take
/// 8·P² elements of workspace).
const NARROW_P: usize = 128;
const SAMPLE_PARTS: usize = 8;
const MIN_PART_ROWS: usize = 64;
/// Bytes of G's rows `outer_diag` sums at once, column run by column run (in L1).
const DIAG_BLOCK_BYTES: usize = 16 << 10;

/// Elements per sample of the packed form: the upper triangle, P(P+1)/2.
pub fn packed_len(p: usize) -> usize {
    p * (p + 1) / 2
}

/// out[b] = g_b g_bᵀ for each row g_b of G (n × p); out is (n, p, p), or (n, P(P+1)/2) holding
/// each upper triangle row by row (i ≤ j) when `packed`.
pub fn outer<T: Float>(g: &[T], n: usize, p: usize, out: &mut [T], packed: bool) {
    let per = if packed { packed_len(p) } else { p * p };
    assert!(g.len() == n * p && out.len() == n * per);
    let shared = SharedMut::new(out);
    crate::parallel::for_chunks(n, (PARALLEL_MIN / per.max(1)).max(1), &|samples| {
        for b in samples {
            let gb = &g[b * p..(b + 1) * p];
            // SAFETY: sample b alone writes this range.
            let ob = unsafe { shared.range(b * per..(b + 1) * per) };
            dispatch(
                #[inline(always)]
                || {
                    if packed {
                        let mut at = 0;
                        for i in 0..p {
                            scaled(&mut ob[at..at + p - i], gb[i], &gb[i..]);
                            at += p - i;
                        }
                    } else {
                        outer_rows(ob, T::one(), gb, gb, false);
                    }
                },
            );
        }
    });
}

thread_local! {
    static WORKSPACE_F32: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static WORKSPACE_F64: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
}

/// out (p × p) = Σ_b g_b g_bᵀ = GᵀG, by the GEMM, its upper triangle computed and mirrored
/// (the sum is symmetric: half the work); with `accumulate`, out += GᵀG (so a sum over a large
/// batch can stream through it tile by tile; out is taken as symmetric, its upper triangle
/// being what is added to). Its packing space is kept per calling thread and grown only for a
/// larger product than before.
pub fn outer_sum<T: Float>(g: &[T], n: usize, p: usize, out: &mut [T], accumulate: bool) {
    outer_sum_upper(g, n, p, out, accumulate);
    mirror_upper(out, p);
}

/// `outer_sum`'s upper triangle (i ≤ j) only; the strict lower triangle of out is left
/// incomplete (`gram_upper`). A sum streamed through many calls mirrors once, at the end
/// (`mirror_upper`): mirroring a 2,025² f32 sum takes 3 ms on AVX2, beside 38–44 ms for the
/// product of a 516-row tile.
pub fn outer_sum_upper<T: Float>(g: &[T], n: usize, p: usize, out: &mut [T], accumulate: bool) {
    assert!(g.len() == n * p && out.len() == p * p);
    // A narrow G (small P, many samples) gives the GEMM too few output tiles to share among
    // threads: split the samples instead, into a fixed number of parts (so the sums' order,
    // and the result, do not depend on the thread count), each summed on its own, then added
    // in order.
    let parts = if p <= NARROW_P && n >= SAMPLE_PARTS * MIN_PART_ROWS {
        SAMPLE_PARTS
    } else {
        1
    };
    let part_ws = workspace_len(p, p, n.div_ceil(parts), 1);
    // Part t's range of the workspace: its partial sum (p × p), then its packing space.
    let part = |t: usize| t * (part_ws + p * p)..(t + 1) * (part_ws + p * p);
    let need = if parts > 1 {
        part(parts).start
    } else {
        workspace_len(p, p, n, crate::parallel::num_threads())
    };
    let mut run = |ws: &mut [T]| {
        if parts == 1 {
            gram_upper(g, n, p, out, accumulate, ws);
        } else {
            let shared = SharedMut::new(ws);
            crate::parallel::run(parts, &|t| {
                // SAFETY: part t alone uses its range of the workspace.
                let (partial, ws) = unsafe { shared.range(part(t)) }.split_at_mut(p * p);
                let rows = crate::parallel::split(n, parts, t);
                gram_upper(
                    &g[rows.start * p..rows.end * p],
                    rows.len(),
                    p,
                    partial,
                    false,
                    ws,
                );
            });
            if !accumulate {
                out.fill(T::zero());
            }
            for t in 0..parts {
                let partial = &ws[part(t)][..p * p];
                for i in 0..p {
                    let (o, q) = (
                        &mut out[i * p + i..(i + 1) * p],
                        &partial[i * p + i..(i + 1) * p],
                    );
                    o.iter_mut().zip(q).for_each(|(o, &q)| *o += q);
                }
            }
        }
    };
    // The thread-local buffer of T's own type (f32 or f64).
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() {
        WORKSPACE_F32.with(|ws| with_len(&mut ws.borrow_mut(), need, |w| run(cast(w))))
    } else {
        WORKSPACE_F64.with(|ws| with_len(&mut ws.borrow_mut(), need, |w| run(cast(w))))
    }
}

fn with_len<U: Default + Clone>(v: &mut Vec<U>, len: usize, f: impl FnOnce(&mut [U])) {
    if v.len() < len {
        v.resize(len, U::default());
    }
    f(&mut v[..len])
}

/// Reinterprets a slice of the thread-local workspace as `T`; the caller checked the type.
fn cast<U: 'static, T: 'static>(s: &mut [U]) -> &mut [T] {
    assert_eq!(std::any::TypeId::of::<U>(), std::any::TypeId::of::<T>());
    // SAFETY: U and T are the same type (checked above).
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr() as *mut T, s.len()) }
}

/// out (p) = Σ_b g_b², the diagonal of `outer_sum` (out += Σ_b g_b² with `accumulate`). Columns
/// are split over threads; each sums its samples in order.
pub fn outer_diag<T: Float>(g: &[T], n: usize, p: usize, out: &mut [T], accumulate: bool) {
    assert!(g.len() == n * p && out.len() == p);
    if !accumulate {
        out.fill(T::zero());
    }
    let parts = if n * p >= PARALLEL_MIN {
        crate::parallel::num_threads().min(p.div_ceil(64)).max(1)
    } else {
        1
    };
    let shared = SharedMut::new(out);
    let part = |t: usize| {
        let cols = crate::parallel::split(p, parts, t);
        // SAFETY: the parts' column ranges are disjoint.
        let d = unsafe { shared.range(cols.clone()) };
        dispatch(
            #[inline(always)]
            || {
                // Down a block of samples a run of columns at a time, its sums in registers:
                // sample by sample, `d` went through memory for every one, and the widest
                // vectors left most of a 97-column row to a scalar tail (seed 002's 128 × 97
                // in f32: AVX-512 3.9 → 1.1 µs, AVX2 1.3 → 1.1). Blocks of DIAG_BLOCK_BYTES
                // keep a wide G's reads streaming, block after block.
                let rows = (DIAG_BLOCK_BYTES / (p * std::mem::size_of::<T>()).max(1)).max(1);
                for b0 in (0..n).step_by(rows) {
                    let block = &g[b0 * p..(b0 + rows).min(n) * p];
                    let mut j = cols.start;
                    while j + 64 <= cols.end {
                        column_squares::<T, 64>(block, p, j, &mut d[j - cols.start..]);
                        j += 64;
                    }
                    while j + 8 <= cols.end {
                        column_squares::<T, 8>(block, p, j, &mut d[j - cols.start..]);
                        j += 8;
                    }
                    for j in j..cols.end {
                        column_squares::<T, 1>(block, p, j, &mut d[j - cols.start..]);
                    }
                }
            },
        );
    };
    crate::parallel::run(parts, &part);
}

/// d[..W] += Σ_b G[b, j..j + W]² over the rows of G (a whole number of rows of p elements).
#[inline(always)]
fn column_squares<T: Float, const W: usize>(g: &[T], p: usize, j: usize, d: &mut [T]) {
    let mut sums: [T; W] = d[..W].try_into().unwrap();
    for row in g.chunks_exact(p) {
        let run: &[T; W] = row[j..j + W].try_into().unwrap();
        for (s, &x) in sums.iter_mut().zip(run) {
            *s += x * x;
        }
    }
    d[..W].copy_from_slice(&sums);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize, p: usize) -> Vec<f64> {
        (0..n * p)
            .map(|i| ((i * 7 % 19) as f64 - 9.0) * 0.13)
            .collect()
    }

    #[test]
    fn outer_products_match_the_definition() {
        for threads in [1, 2] {
            crate::parallel::set_num_threads(threads);
            for &(n, p) in &[
                (0, 3),
                (3, 0),
                (1, 1),
                (5, 4),
                (300, 17),
                (3, 200),
                (257, 300),
                (777, 65),
            ] {
                let g = sample(n, p);
                let mut full = vec![f64::NAN; n * p * p];
                let mut packed = vec![f64::NAN; n * packed_len(p)];
                outer(&g, n, p, &mut full, false);
                outer(&g, n, p, &mut packed, true);
                let mut sum = vec![f64::NAN; p * p];
                let mut diag = vec![f64::NAN; p];
                outer_sum(&g, n, p, &mut sum, false);
                outer_diag(&g, n, p, &mut diag, false);
                // Accumulating the two halves of the batch gives the same sums.
                let (mut sum2, mut diag2) = (vec![0.0; p * p], vec![0.0; p]);
                let h = n / 2;
                // And so do the upper triangles alone, mirrored once at the end.
                let mut upper = vec![0.0; p * p];
                for (rows, at) in [(h, 0), (n - h, h * p)] {
                    let part = &g[at..at + rows * p];
                    outer_sum(part, rows, p, &mut sum2, true);
                    outer_diag(part, rows, p, &mut diag2, true);
                    outer_sum_upper(part, rows, p, &mut upper, true);
                }
                mirror_upper(&mut upper, p);
                for i in 0..p {
                    for j in 0..p {
                        let mut s = 0.0;
                        for b in 0..n {
                            let want = g[b * p + i] * g[b * p + j];
                            assert_eq!(full[b * p * p + i * p + j], want);
                            s += want;
                        }
                        let close = |x: f64| (x - s).abs() <= 1e-12 * (1.0 + s.abs());
                        assert!(close(sum[i * p + j]) && close(sum2[i * p + j]));
                        assert!(close(upper[i * p + j]));
                        if i == j {
                            assert!(close(diag[i]) && close(diag2[i]));
                        }
                    }
                }
                for b in 0..n {
                    let mut k = b * packed_len(p);
                    for i in 0..p {
                        for j in i..p {
                            assert_eq!(packed[k], full[b * p * p + i * p + j]);
                            k += 1;
                        }
                    }
                }
            }
        }
    }
}
