//! Replaying a `Program`: argument checks, the forward sweep, and the reverse sweep — one `match`
//! over the op enum each. Replays allocate nothing unless a batch larger than any before arrives.
use crate::error::{Error, Result};
use crate::float::Float;
use crate::ir::{Axis, Op};
use crate::kernels::add_row_combination;
use crate::kernels::elementwise::{
    binary_backward, binary_forward, unary_backward, unary_forward, Broadcast, Side,
};
use crate::kernels::gemm::{gemm, gemm_prepacked, workspace_len, Operand};
use crate::kernels::reduce::{
    reduce_backward, reduce_forward, softmax_backward, softmax_forward, Lanes,
};
use crate::program::{Phase, Program, Step};
use crate::shape::Shape;

impl<T: Float> Program<T> {
    /// Checks the arguments' lengths against their shapes and returns the batch size they imply
    /// (0 when no argument is batched).
    pub fn batch_size(&self, args: &[&[T]]) -> Result<usize> {
        if args.len() != self.arg_shapes.len() {
            return Err(Error::type_error(format!(
                "the program takes {} arguments, got {}",
                self.arg_shapes.len(),
                args.len()
            )));
        }
        let mut batch: Option<(usize, usize)> = None;
        for (k, (a, s)) in args.iter().zip(&self.arg_shapes).enumerate() {
            let per_row = s.len(1);
            if !s.is_batched() || per_row == 0 {
                if a.len() != s.len(0) {
                    return Err(Error::value(format!(
                        "argument {k} has {} elements; its shape {s} has {}",
                        a.len(),
                        s.len(0)
                    )));
                }
                continue;
            }
            if a.len() % per_row != 0 {
                return Err(Error::value(format!(
                    "argument {k} has {} elements, not a whole number of rows of shape {s}",
                    a.len()
                )));
            }
            let n = a.len() / per_row;
            match batch {
                Some((first, m)) if m != n => {
                    return Err(Error::value(format!(
                        "batch sizes differ: argument {first} has {m} rows, argument {k} has {n}"
                    )))
                }
                None => batch = Some((k, n)),
                _ => {}
            }
        }
        Ok(batch.map_or(0, |(_, n)| n))
    }

    /// Computes the output into `out` (of the output's shape for this batch).
    pub fn eval(&mut self, args: &[&[T]], out: &mut [T]) -> Result<()> {
        let batch = self.batch_size(args)?;
        check_len("out", out.len(), self.output_shape(), batch)?;
        let tiled = self.runs_tiled(batch, false);
        if tiled && self.writes_output_directly() {
            return self.run_tiled(args, batch, None, Some(out));
        }
        if tiled {
            self.run_tiled(args, batch, None, None)?;
        } else {
            self.forward(args, batch)?;
        }
        out.copy_from_slice(self.output_value(args, batch));
        Ok(())
    }

    /// Computes the scalar output and writes its gradient with respect to each `wrt` argument
    /// into `grads` (in `wrt` order).
    pub fn value_and_grad(&mut self, args: &[&[T]], grads: &mut [&mut [T]]) -> Result<T> {
        if self.output_shape().rank() != 0 {
            return Err(Error::type_error(format!(
                "value_and_grad needs a scalar output, but this program's output has shape {}; \
                 use vjp with an output cotangent",
                self.output_shape()
            )));
        }
        let batch = self.batch_size(args)?;
        self.check_grads(grads, batch)?;
        self.forward_and_backward(args, batch, None)?;
        self.write_grads(grads);
        Ok(self.output_value(args, batch)[0])
    }

    /// Pulls `cotangent` (of the output's shape) back to the `wrt` arguments: grads = Jᵀ·cotangent.
    /// Also writes the output into `value_out` when given.
    pub fn vjp(
        &mut self,
        args: &[&[T]],
        cotangent: &[T],
        grads: &mut [&mut [T]],
        value_out: Option<&mut [T]>,
    ) -> Result<()> {
        let batch = self.batch_size(args)?;
        check_len("cotangent", cotangent.len(), self.output_shape(), batch)?;
        if let Some(v) = &value_out {
            check_len("value_out", v.len(), self.output_shape(), batch)?;
        }
        self.check_grads(grads, batch)?;
        self.forward_and_backward(args, batch, Some(cotangent))?;
        self.write_grads(grads);
        if let Some(v) = value_out {
            v.copy_from_slice(self.output_value(args, batch));
        }
        Ok(())
    }

    /// Both sweeps, the reverse one from `cotangent` (from 1 without), tiled when the program
    /// and the batch allow it.
    fn forward_and_backward(
        &mut self,
        args: &[&[T]],
        batch: usize,
        cotangent: Option<&[T]>,
    ) -> Result<()> {
        if self.runs_tiled(batch, true) {
            return self.run_tiled(args, batch, Some(cotangent), None);
        }
        self.forward(args, batch)?;
        self.backward(args, batch, cotangent);
        Ok(())
    }

    fn check_grads(&self, grads: &[&mut [T]], batch: usize) -> Result<()> {
        if grads.len() != self.wrt.len() {
            return Err(Error::value(format!(
                "expected {} gradient buffers (one per wrt argument), got {}",
                self.wrt.len(),
                grads.len()
            )));
        }
        for (g, &w) in grads.iter().zip(&self.wrt) {
            check_len("gradient buffer", g.len(), self.arg_shapes[w], batch)?;
        }
        Ok(())
    }

    pub(crate) fn output_value<'a>(&'a self, args: &'a [&'a [T]], batch: usize) -> &'a [T] {
        value(
            &Frame::new(&self.steps, args, batch),
            &self.values,
            self.output,
        )
    }

    fn write_grads(&self, grads: &mut [&mut [T]]) {
        for (g, &w) in grads.iter_mut().zip(&self.wrt) {
            match self.arg_steps[w] {
                Some(s) if self.steps[s].needs_grad => {
                    g.copy_from_slice(&self.adjoints[s][..g.len()])
                }
                _ => g.fill(T::zero()), // the output does not depend on this argument
            }
        }
    }

    pub(crate) fn forward(&mut self, args: &[&[T]], batch: usize) -> Result<()> {
        self.reserve_batch(batch);
        self.reserve_gemm_workspace(batch);
        for i in 0..self.steps.len() {
            forward_step(
                &Frame::new(&self.steps, args, batch),
                &mut self.values,
                i,
                &mut self.gemm_workspace,
            )?;
        }
        Ok(())
    }

    /// Grows the matrix products' packing workspace for this batch size and thread count (so
    /// it allocates only when either is larger than ever before).
    pub(crate) fn reserve_gemm_workspace(&mut self, batch: usize) {
        let threads = crate::parallel::num_threads();
        if batch <= self.workspace_batch && threads <= self.workspace_threads {
            return;
        }
        let (batch, threads) = (
            batch.max(self.workspace_batch),
            threads.max(self.workspace_threads),
        );
        let mut need = 0;
        for s in &self.steps {
            if let Op::MatMul { a, b, ta, tb } | Op::Affine { a, b, ta, tb, .. } = s.op {
                let (m, k, n) = matmul_dims(&self.steps, batch, a, b, ta, tb);
                // The forward product and both backward ones.
                for (m, n, k) in [(m, n, k), (m, k, n), (k, n, m)] {
                    need = need.max(workspace_len(m, n, k, threads));
                }
            }
        }
        if need > self.gemm_workspace.len() {
            self.gemm_workspace.resize(need, T::zero());
        }
        self.workspace_batch = batch;
        self.workspace_threads = threads;
    }

    /// Reverse sweep from the output, seeded with the cotangent, or with ones: 1 for a scalar
    /// output, 1 for each element of a vector of per-sample losses (`per_sample.rs`).
    pub(crate) fn backward(&mut self, args: &[&[T]], batch: usize, cotangent: Option<&[T]>) {
        for (s, adj) in self.steps.iter().zip(self.adjoints.iter_mut()) {
            if s.needs_grad && !s.first_write {
                adj[..s.shape.len(batch)].fill(T::zero());
            }
        }
        let out = self.output;
        if !self.steps[out].needs_grad {
            return;
        }
        match cotangent {
            Some(c) => self.adjoints[out][..c.len()].copy_from_slice(c),
            None => self.adjoints[out][..self.steps[out].shape.len(batch)].fill(T::one()),
        }
        for i in (0..self.steps.len()).rev() {
            if self.steps[i].needs_grad {
                backward_step(
                    &Frame::new(&self.steps, args, batch),
                    &self.values,
                    &mut self.adjoints,
                    i,
                    &mut self.gemm_workspace,
                );
            }
        }
    }
}

fn check_len(what: &str, len: usize, shape: Shape, batch: usize) -> Result<()> {
    if len != shape.len(batch) {
        return Err(Error::value(format!(
            "{what} has {len} elements; expected shape {} ({} elements at batch size {batch})",
            shape,
            shape.len(batch)
        )));
    }
    Ok(())
}

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

/// (m, k, n) of `op(a) @ op(b)`, reading rank-1 operands as a row (a) or a column (b).
pub(crate) fn matmul_dims(
    steps: &[Step],
    batch: usize,
    a: usize,
    b: usize,
    ta: bool,
    tb: bool,
) -> (usize, usize, usize) {
    let sa = steps[a].shape.resolve(batch);
    let sb = steps[b].shape.resolve(batch);
    let (m, k) = match (sa.rank, ta) {
        (1, _) => (1, sa.dims[0]),
        (_, false) => (sa.dims[0], sa.dims[1]),
        (_, true) => (sa.dims[1], sa.dims[0]),
    };
    let n = match (sb.rank, tb) {
        (1, _) => 1,
        (_, false) => sb.dims[1],
        (_, true) => sb.dims[0],
    };
    (m, k, n)
}

fn label(v: f64, classes: usize, row: usize) -> Result<usize> {
    if v >= 0.0 && v < classes as f64 && v.fract() == 0.0 {
        Ok(v as usize)
    } else {
        Err(Error::value(format!(
            "label {v} in row {row} is not a class index in 0..{classes}"
        )))
    }
}

pub(crate) fn forward_step<T: Float>(
    f: &Frame<T>,
    values: &mut [Vec<T>],
    i: usize,
    ws: &mut [T],
) -> Result<()> {
    let (steps, batch) = (f.steps, f.batch);
    let (before, rest) = values.split_at_mut(i);
    let shape = steps[i].shape.resolve(batch);
    let val = |j: usize| value(f, before, j);
    let dims = |j: usize| dims2(steps, batch, j);
    let out = match steps[i].op {
        Op::Input(_) | Op::Constant(_) | Op::ConstantArray(_) => return Ok(()),
        _ => &mut rest[0][..shape.len()],
    };
    match steps[i].op {
        Op::Input(_) | Op::Constant(_) | Op::ConstantArray(_) => {}
        Op::Unary(u, x) => unary_forward(u, val(x), out),
        Op::Binary(op, a, b) => {
            let od = shape.as_2d();
            let (ba, bb) = (Broadcast::new(dims(a), od), Broadcast::new(dims(b), od));
            binary_forward(op, (val(a), ba), (val(b), bb), out, od);
        }
        Op::MatMul { a, b, ta, tb } | Op::Affine { a, b, ta, tb, .. } => {
            let (m, k, n) = matmul_dims(steps, batch, a, b, ta, tb);
            let op = |data, transposed| Operand { data, transposed };
            let accumulate = if let Op::Affine { bias, .. } = steps[i].op {
                crate::kernels::fill_rows(&mut out[..m * n], &val(bias)[..n]);
                true
            } else {
                false
            };
            match prepacked(f.b_packed, i) {
                Some(p) => gemm_prepacked(m, n, k, op(val(a), ta), p, out, accumulate, ws),
                None => gemm(m, n, k, op(val(a), ta), op(val(b), tb), out, accumulate, ws),
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
    let needs = |j: usize| steps[j].needs_grad;
    // The adjoint buffer of an operand, at this batch size.
    macro_rules! adj {
        ($j:expr) => {
            &mut before[$j][..steps[$j].shape.len(batch)]
        };
    }
    match steps[i].op {
        Op::Input(_) | Op::Constant(_) | Op::ConstantArray(_) => {}
        Op::Unary(u, x) => unary_backward(u, val(x), val(i), g, adj!(x)),
        Op::Binary(op, a, b) => {
            let od = steps[i].shape.resolve(batch).as_2d();
            let (ba, bb) = (Broadcast::new(dims(a), od), Broadcast::new(dims(b), od));
            for (side, t) in [(Side::Left, a), (Side::Right, b)] {
                if needs(t) {
                    binary_backward(op, side, (val(a), ba), (val(b), bb), val(i), g, adj!(t), od);
                }
            }
        }
        Op::MatMul { a, b, ta, tb } | Op::Affine { a, b, ta, tb, .. } => {
            let (m, k, n) = matmul_dims(steps, batch, a, b, ta, tb);
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
                    gemm(k, m, n, op(val(b), tb), op(g, true), adj!(a), acc, ws);
                } else if let Some(p) = prepacked(f.bt_packed, i) {
                    gemm_prepacked(m, k, n, op(g, false), p, adj!(a), acc, ws);
                } else {
                    gemm(m, k, n, op(g, false), op(val(b), !tb), adj!(a), acc, ws);
                }
            }
            if needs(b) {
                // d op(B) = op(A)ᵀ G; stored transposed when `tb`.
                if tb {
                    gemm(n, k, m, op(g, true), op(val(a), ta), adj!(b), true, ws);
                } else {
                    gemm(k, n, m, op(val(a), !ta), op(g, false), adj!(b), true, ws);
                }
            }
        }
        Op::Transpose(x) => {
            let ((r, c), dx) = (dims(x), adj!(x));
            for row in 0..r {
                for col in 0..c {
                    dx[row * c + col] += g[col * r + row];
                }
            }
        }
        Op::Reshape(x) => adj!(x).iter_mut().zip(g).for_each(|(d, &g)| *d += g),
        Op::Slice { x, start } => adj!(x)[start..start + g.len()]
            .iter_mut()
            .zip(g)
            .for_each(|(d, &g)| *d += g),
        Op::Reduce(op, axis, x) => {
            reduce_backward(op, val(x), val(i), g, adj!(x), lanes(dims(x), axis))
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
