//! The forward and the reverse sweep of one step: one `match` over the op enum each, calling
//! the kernels. Every runner (`runner/`) replays a plan through these two functions; they read
//! and write the tables a `Frame` and the runner hand them, and allocate nothing.
use crate::error::{Error, Result};
use crate::float::Float;
use crate::ir::{Axis, Op};
use crate::kernels::add_row_combination;
use crate::kernels::elementwise::{
    binary_backward, binary_forward, unary_backward, unary_forward, Broadcast, Side,
};
use crate::kernels::gemm::{gemm, gemm_prepacked, Onto, Operand};
use crate::kernels::reduce::{
    reduce_backward, reduce_forward, softmax_backward, softmax_forward, Lanes,
};
use crate::plan::step::{matmul_dims, Phase, Step};

/// What a sweep reads: the schedule, the arguments (the rows of one tile, in a tiled replay),
/// the batch size they have, and, in a tiled replay, the whole-batch table that holds the values
/// of the steps computed before the tiles (`Phase::Pre`).
#[derive(Clone, Copy)]
pub(crate) struct Frame<'a, T> {
    pub steps: &'a [Step],
    pub args: &'a [&'a [T]],
    pub batch: usize,
    pub shared: Option<&'a [Vec<T>]>,
    /// In a tiled replay: for a product step i, its weight operand op(B) packed once before the
    /// tiles (empty when not), and op(B)ᵀ for the reverse sweep, so tiles do not pack it again.
    pub b_packed: Option<&'a [Vec<T>]>,
    pub bt_packed: Option<&'a [Vec<T>]>,
    /// The reverse sweep adds to the adjoints of `Phase::Pre` steps (the parameters' gradients
    /// in a tiled replay); false when the caller wants only the tiles' own adjoints.
    pub pre_adjoints: bool,
}

impl<'a, T> Frame<'a, T> {
    pub fn new(steps: &'a [Step], args: &'a [&'a [T]], batch: usize) -> Self {
        Frame {
            steps,
            args,
            batch,
            shared: None,
            b_packed: None,
            bt_packed: None,
            pre_adjoints: true,
        }
    }
}

/// The forward value of step `j`: the caller's argument, or the step's buffer in `values` (or
/// in the frame's shared table).
#[inline]
pub(crate) fn value<'v, T>(f: &Frame<'v, T>, values: &'v [Vec<T>], j: usize) -> &'v [T] {
    let s = &f.steps[j];
    let table = match f.shared {
        Some(shared) if s.phase == Phase::Pre => shared,
        _ => values,
    };
    match s.op {
        Op::Input(k) => f.args[k],
        Op::Constant(_) => &table[j][..1],
        Op::Reshape(x) if s.view => &value(f, values, x)[..s.shape.len(f.batch)],
        Op::Slice { x, start } if s.view => &value(f, values, x)[start..][..s.shape.len(f.batch)],
        _ => &table[j][..s.shape.len(f.batch)],
    }
}

/// Step i's packed weight in a tiled replay's table, if there is one.
fn prepacked<T>(table: Option<&[Vec<T>]>, i: usize) -> Option<&[T]> {
    table.map(|t| &t[i][..]).filter(|p| !p.is_empty())
}

fn dims2(steps: &[Step], batch: usize, j: usize) -> (usize, usize) {
    steps[j].shape.resolve(batch).as_2d()
}

fn lanes((rows, cols): (usize, usize), axis: Axis) -> Lanes {
    match axis {
        Axis::All => Lanes::of(1, rows * cols, true),
        Axis::WithinRows => Lanes::of(rows, cols, true),
        Axis::WithinCols => Lanes::of(rows, cols, false),
    }
}

fn label(v: f64, classes: usize, row: usize) -> Result<usize> {
    if v >= 0.0 && v < classes as f64 && v.fract() == 0.0 {
        Ok(v as usize)
    } else {
        Err(Error::Label {
            value: v.to_string(),
            row,
            classes,
        })
    }
}

pub(crate) fn forward_step<T: Float>(
    f: &Frame<T>,
    values: &mut [Vec<T>],
    i: usize,
    ws: &mut [T],
) -> Result<()> {
    if f.steps[i].op.is_given() || f.steps[i].view {
        return Ok(());
    }
    let (before, rest) = values.split_at_mut(i);
    let out = &mut rest[0][..f.steps[i].shape.len(f.batch)];
    compute_step(f, before, i, out, ws)
}

/// Whether step i's value is computed (not an argument or a constant) by arithmetic that
/// cannot fail midway, so it may be written straight into a caller's array.
pub(crate) fn computed_infallibly(steps: &[Step], i: usize) -> bool {
    let op = &steps[i].op;
    !op.is_given() && !matches!(op, Op::TakeAlongRows { .. })
}

/// Step i's value into `out` (of its length at this batch), from the values `before` it.
pub(crate) fn compute_step<T: Float>(
    f: &Frame<T>,
    before: &[Vec<T>],
    i: usize,
    out: &mut [T],
    ws: &mut [T],
) -> Result<()> {
    let (steps, batch) = (f.steps, f.batch);
    let shape = steps[i].shape.resolve(batch);
    let val = |j: usize| value(f, before, j);
    let dims = |j: usize| dims2(steps, batch, j);
    match steps[i].op {
        Op::Input(_) | Op::Constant(_) | Op::ConstantArray(_) => {}
        Op::Unary(u, x) => unary_forward(u, val(x), out),
        Op::Binary(op, a, b) => {
            let od = shape.as_2d();
            let (ba, bb) = (Broadcast::new(dims(a), od), Broadcast::new(dims(b), od));
            binary_forward(op, (val(a), ba), (val(b), bb), out, od);
        }
        Op::MatMul { a, b, ta, tb } | Op::Affine { a, b, ta, tb, .. } => {
            let (m, k, n) = matmul_dims(steps, batch, (a, b), (ta, tb));
            let op = |data, transposed| Operand { data, transposed };
            // The bias is added as the kernels write the product.
            let onto = match steps[i].op {
                Op::Affine { bias, .. } => Onto::Rows(&val(bias)[..n]),
                _ => Onto::Zero,
            };
            match prepacked(f.b_packed, i) {
                Some(p) => gemm_prepacked((m, n, k), op(val(a), ta), p, out, onto, ws),
                None => gemm((m, n, k), op(val(a), ta), op(val(b), tb), out, onto, ws),
            }
        }
        Op::Transpose(x) => {
            let ((r, c), x) = (dims(x), val(x));
            for row in 0..r {
                for col in 0..c {
                    out[col * r + row] = x[row * c + col];
                }
            }
        }
        Op::Reshape(x) => out.copy_from_slice(val(x)),
        Op::Slice { x, start } => out.copy_from_slice(&val(x)[start..start + out.len()]),
        Op::Reduce(op, axis, x) => reduce_forward(op, val(x), out, lanes(dims(x), axis)),
        Op::Softmax { x, axis, log } => softmax_forward(val(x), out, lanes(dims(x), axis), log),
        Op::TakeAlongRows { x, index } => {
            let ((r, c), xv, idx) = (dims(x), val(x), val(index));
            for row in 0..r {
                out[row] = xv[row * c + label(idx[row].to_f64(), c, row)?];
            }
        }
    }
    Ok(())
}

pub(crate) fn backward_step<T: Float>(
    f: &Frame<T>,
    values: &[Vec<T>],
    adjoints: &mut [Vec<T>],
    i: usize,
    ws: &mut [T],
) {
    let (steps, batch) = (f.steps, f.batch);
    let (before, rest) = adjoints.split_at_mut(i);
    let g = &rest[0][..steps[i].shape.len(batch)];
    let val = |j: usize| value(f, values, j);
    let dims = |j: usize| dims2(steps, batch, j);
    let needs = |j: usize| steps[j].needs_grad && (f.pre_adjoints || steps[j].phase != Phase::Pre);
    // The adjoint buffer of an operand, at this batch size.
    macro_rules! adj {
        ($j:expr) => {
            &mut before[$j][..steps[$j].shape.len(batch)]
        };
    }
    match steps[i].op {
        Op::Input(_) | Op::Constant(_) | Op::ConstantArray(_) => {}
        Op::Unary(u, x) => unary_backward(u, val(x), val(i), g, adj!(x), steps[x].first_write),
        Op::Binary(op, a, b) => {
            let od = steps[i].shape.resolve(batch).as_2d();
            let (ba, bb) = (Broadcast::new(dims(a), od), Broadcast::new(dims(b), od));
            for (side, t) in [(Side::Left, a), (Side::Right, b)] {
                if needs(t) {
                    // In x·x the left side's contribution comes first.
                    let assign = steps[t].first_write && !(side == Side::Right && a == b);
                    binary_backward(
                        op,
                        side,
                        (val(a), ba),
                        (val(b), bb),
                        (val(i), g),
                        adj!(t),
                        od,
                        assign,
                    );
                }
            }
        }
        Op::MatMul { a, b, ta, tb } | Op::Affine { a, b, ta, tb, .. } => {
            let (m, k, n) = matmul_dims(steps, batch, (a, b), (ta, tb));
            let op = |data, transposed| Operand { data, transposed };
            if let Op::Affine { bias, .. } = steps[i].op {
                if needs(bias) && n > 0 {
                    // The bias was added to every row: its gradient sums G's rows.
                    let d = &mut adj!(bias)[..n];
                    crate::kernels::simd::dispatch(
                        #[inline(always)]
                        || {
                            if n == 1 {
                                d[0] += crate::kernels::reduce::sum(g);
                            } else {
                                let rows = g.len() / n;
                                add_row_combination(d, rows, |_| T::one(), |r| &g[r * n..]);
                            }
                        },
                    );
                }
            }
            if needs(a) {
                // d op(A) = G op(B)ᵀ; stored transposed when `ta`. Assigned when this is A's
                // only reader (its adjoint was not zeroed).
                let acc = !steps[a].first_write;
                if ta {
                    gemm((k, m, n), op(val(b), tb), op(g, true), adj!(a), acc, ws);
                } else if let Some(p) = prepacked(f.bt_packed, i) {
                    gemm_prepacked((m, k, n), op(g, false), p, adj!(a), acc, ws);
                } else {
                    gemm((m, k, n), op(g, false), op(val(b), !tb), adj!(a), acc, ws);
                }
            }
            if needs(b) {
                // d op(B) = op(A)ᵀ G; stored transposed when `tb`.
                if tb {
                    gemm((n, k, m), op(g, true), op(val(a), ta), adj!(b), true, ws);
                } else {
                    gemm((k, n, m), op(val(a), !ta), op(g, false), adj!(b), true, ws);
                }
            }
        }
        Op::Transpose(x) => {
            let ((r, c), dx) = (dims(x), adj!(x));
            let assign = steps[x].first_write;
            for row in 0..r {
                for col in 0..c {
                    let d = &mut dx[row * c + col];
                    *d = if assign {
                        g[col * r + row]
                    } else {
                        *d + g[col * r + row]
                    };
                }
            }
        }
        Op::Reshape(x) if steps[x].first_write => adj!(x).copy_from_slice(g),
        Op::Reshape(x) => adj!(x).iter_mut().zip(g).for_each(|(d, &g)| *d += g),
        Op::Slice { x, start } => adj!(x)[start..start + g.len()]
            .iter_mut()
            .zip(g)
            .for_each(|(d, &g)| *d += g),
        Op::Reduce(op, axis, x) => {
            let assign = steps[x].first_write;
            reduce_backward(op, val(x), val(i), g, adj!(x), lanes(dims(x), axis), assign)
        }
        Op::Softmax { x, axis, log } => {
            softmax_backward(val(i), g, adj!(x), lanes(dims(x), axis), log)
        }
        Op::TakeAlongRows { x, index } => {
            let ((r, c), idx, dx) = (dims(x), val(index), adj!(x));
            for row in 0..r {
                // Labels were validated by the forward sweep.
                dx[row * c + idx[row].to_f64() as usize] += g[row];
            }
        }
    }
}
