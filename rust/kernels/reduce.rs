//! Reductions (sum, mean, logsumexp) and softmax along an axis of a 2-D view.
//!
//! Callers express `Axis::All` as `WithinRows` over the view (1, len), so only two layouts remain:
//! along contiguous rows, or down strided columns.
use crate::float::Float;
use crate::ir::ReduceOp;
use crate::kernels::simd::{dispatch, with_fma};

/// A lane of a strided 2-D view: `count` lanes of `len` elements; lane `l`, element `e` is at
/// `l * lane_stride + e * elem_stride`.
#[derive(Clone, Copy, Debug)]
pub struct Lanes {
    pub count: usize,
    pub len: usize,
    pub lane_stride: usize,
    pub elem_stride: usize,
}

impl Lanes {
    /// Lanes along the rows of (rows, cols) when `within_rows`, else down its columns.
    pub fn of(rows: usize, cols: usize, within_rows: bool) -> Lanes {
        if within_rows {
            Lanes {
                count: rows,
                len: cols,
                lane_stride: cols,
                elem_stride: 1,
            }
        } else {
            Lanes {
                count: cols,
                len: rows,
                lane_stride: 1,
                elem_stride: cols,
            }
        }
    }
    #[inline(always)]
    fn at(&self, lane: usize, e: usize) -> usize {
        lane * self.lane_stride + e * self.elem_stride
    }
}

/// Sum of a contiguous slice with eight independent accumulators: vectorises, and the order
/// of additions is fixed, so results are reproducible.
#[inline(always)]
pub fn sum<T: Float>(x: &[T]) -> T {
    sum_of(x.len(), |i| x[i])
}

/// Σ x[i]·y[i], in the fixed order of `sum`.
#[inline(always)]
pub fn dot<T: Float>(x: &[T], y: &[T]) -> T {
    let (len, y) = (x.len(), &y[..x.len()]);
    let whole = len - len % 8;
    // Whole blocks as chunks, whose indexing the compiler sees is in bounds, so they vectorise.
    let blocks = x[..whole].chunks_exact(8).zip(y[..whole].chunks_exact(8));
    let acc = blocks.fold([T::zero(); 8], |mut acc, (x, y)| {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
        acc
    });
    let mut s = combined(acc);
    for i in whole..len {
        s += x[i] * y[i];
    }
    s
}

/// Σ f(i) for i in 0..len, in the fixed order of `sum` (so a loop computing f vectorises too).
#[inline(always)]
fn sum_of<T: Float>(len: usize, f: impl Fn(usize) -> T) -> T {
    let mut acc = [T::zero(); 8];
    let whole = len - len % 8;
    for c in (0..whole).step_by(8) {
        for (k, a) in acc.iter_mut().enumerate() {
            *a += f(c + k);
        }
    }
    let mut s = combined(acc);
    for i in whole..len {
        s += f(i);
    }
    s
}

/// The eight accumulators of `sum_of`, added in its fixed order.
#[inline(always)]
fn combined<T: Float>(acc: [T; 8]) -> T {
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

#[inline(always)]
fn lane_max<T: Float>(x: &[T], l: Lanes, lane: usize) -> T {
    let mut m = T::neg_infinity();
    for e in 0..l.len {
        let v = x[l.at(lane, e)];
        if v > m || v.is_nan() {
            m = v;
        }
    }
    // Shift by a finite amount only: rows of ±inf keep their infinite result.
    if m.is_finite() || m.is_nan() {
        m
    } else {
        T::zero()
    }
}

/// y[lane] = op(x along lane).
pub fn reduce_forward<T: Float>(op: ReduceOp, x: &[T], y: &mut [T], l: Lanes) {
    with_fma!(F => dispatch(
        #[inline(always)]
        || {
            match op {
                ReduceOp::Sum | ReduceOp::Mean => {
                    let scale = if op == ReduceOp::Mean {
                        T::one() / T::from_f64(l.len as f64)
                    } else {
                        T::one()
                    };
                    if l.elem_stride == 1 {
                        for (lane, y) in y.iter_mut().enumerate() {
                            *y = sum(&x[lane * l.len..(lane + 1) * l.len]) * scale;
                        }
                    } else {
                        // Down columns: add whole rows, which are contiguous.
                        y.iter_mut().for_each(|v| *v = T::zero());
                        for row in x.chunks_exact(l.count.max(1)).take(l.len) {
                            y.iter_mut().zip(row).for_each(|(y, &v)| *y += v);
                        }
                        y.iter_mut().for_each(|v| *v = *v * scale);
                    }
                }
                ReduceOp::LogSumExp => {
                    for (lane, y) in y.iter_mut().enumerate() {
                        let m = lane_max(x, l, lane);
                        *y = m + sum_of(l.len, |e| (x[l.at(lane, e)] - m).vexp::<F>()).ln();
                    }
                }
            }
        },
    ))
}

/// dx += ∂y/∂x ᵀ g, given y = op(x).
/// A sum's or mean's `dx` is assigned instead when `assign` (its first writer: the lanes cover
/// x).
pub fn reduce_backward<T: Float>(
    op: ReduceOp,
    x: &[T],
    y: &[T],
    g: &[T],
    dx: &mut [T],
    l: Lanes,
    assign: bool,
) {
    if assign && op == ReduceOp::LogSumExp {
        dx.fill(T::zero()); // (the plan marks sums and means only)
    }
    with_fma!(F => dispatch(
        #[inline(always)]
        || {
            for lane in 0..l.count {
                match op {
                    ReduceOp::Sum | ReduceOp::Mean => {
                        let gl = if op == ReduceOp::Mean {
                            g[lane] / T::from_f64(l.len as f64)
                        } else {
                            g[lane]
                        };
                        if l.elem_stride == 1 {
                            // A contiguous lane: a plain slice loop, which vectorises.
                            let start = lane * l.lane_stride;
                            let dx = &mut dx[start..start + l.len];
                            if assign {
                                dx.fill(gl);
                            } else {
                                dx.iter_mut().for_each(|d| *d += gl);
                            }
                        } else {
                            for e in 0..l.len {
                                let d = &mut dx[l.at(lane, e)];
                                *d = if assign { gl } else { *d + gl };
                            }
                        }
                    }
                    ReduceOp::LogSumExp if l.elem_stride == 1 => {
                        let r = lane * l.lane_stride..lane * l.lane_stride + l.len;
                        let (x, dx) = (&x[r.clone()], &mut dx[r]);
                        let (gl, yl) = (g[lane], y[lane]);
                        for e in 0..dx.len() {
                            dx[e] += gl * (x[e] - yl).vexp::<F>();
                        }
                    }
                    ReduceOp::LogSumExp => {
                        for e in 0..l.len {
                            let i = l.at(lane, e);
                            dx[i] += g[lane] * (x[i] - y[lane]).vexp::<F>();
                        }
                    }
                }
            }
        },
    ))
}

/// y = softmax(x) (or log-softmax) along each lane.
pub fn softmax_forward<T: Float>(x: &[T], y: &mut [T], l: Lanes, log: bool) {
    with_fma!(F => dispatch(
        #[inline(always)]
        || {
            for lane in 0..l.count {
                let m = lane_max(x, l, lane);
                for e in 0..l.len {
                    let i = l.at(lane, e);
                    y[i] = (x[i] - m).vexp::<F>();
                }
                let s = sum_of(l.len, |e| y[l.at(lane, e)]);
                if log {
                    let shift = m + s.ln();
                    for e in 0..l.len {
                        let i = l.at(lane, e);
                        y[i] = x[i] - shift;
                    }
                } else {
                    let inv = T::one() / s;
                    for e in 0..l.len {
                        y[l.at(lane, e)] = y[l.at(lane, e)] * inv;
                    }
                }
            }
        },
    ))
}

/// dx += J ᵀ g for y = softmax(x) (dx = y (g - Σ g y)) or log-softmax (dx = g - e^y Σ g).
pub fn softmax_backward<T: Float>(y: &[T], g: &[T], dx: &mut [T], l: Lanes, log: bool) {
    with_fma!(F => dispatch(
        #[inline(always)]
        || {
            for lane in 0..l.count {
                let mut s = T::zero();
                for e in 0..l.len {
                    let i = l.at(lane, e);
                    s += if log { g[i] } else { g[i] * y[i] };
                }
                for e in 0..l.len {
                    let i = l.at(lane, e);
                    dx[i] += if log {
                        g[i] - y[i].vexp::<F>() * s
                    } else {
                        y[i] * (g[i] - s)
                    };
                }
            }
        },
    ))
}
