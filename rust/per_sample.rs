//! Per-sample gradients in one batched pass, by the closed form of a dense layer: for a
//! product Z = A Wᵀ (+ b) with A's row a_b and Z's adjoint row δ_b, sample b's gradient is
//! δ_b a_bᵀ for W and δ_b for b. The adjoints come from one ordinary reverse sweep over the
//! batch: no loop over samples, no second forward pass.
//!
//! It applies when the output is a sum or mean over the batch of per-row terms, or the vector of
//! those terms, one loss per sample (so the batch's reverse sweep, seeded with ones, gives each
//! row its own sample's adjoint, scaled by 1/N for a mean), and the differentiated argument is
//! read only as layers' weights and biases, directly or through slices of a flat parameter
//! vector. Other programs get an error naming the operation.
use crate::error::{Error, Result};
use crate::float::Float;
use crate::ir::{Op, ReduceOp};
use crate::kernels::simd::dispatch;
use crate::kernels::{outer_rows, scaled_into, SharedMut};
use crate::program::{Phase, Program};
use crate::shape::Dim;
use smallvec::SmallVec;

/// One place the parameters enter a batched product.
#[derive(Clone, Copy, Debug)]
enum Use {
    /// The weight of product step `step` (reading rows of step `a`), at `offset`; stored
    /// (n, k) when `transposed` (the product reads it as Wᵀ), else (k, n).
    Weight {
        step: usize,
        a: usize,
        offset: usize,
        transposed: bool,
    },
    /// The bias of Affine step `step`, at `offset`.
    Bias { step: usize, offset: usize },
}

/// How a program's per-sample gradients are written, worked out at its first such call and kept
/// (so later calls allocate nothing, whatever the number of layers).
#[derive(Clone, Debug)]
pub(crate) struct PerSamplePlan {
    uses: Vec<Use>,
    /// Per use: whether it is the first to write its range of a row (it assigns; later ones add).
    first: Vec<bool>,
    /// Elements of a row the first writes cover; when fewer than P, the rest must be zeroed.
    covered: usize,
    /// The loss is a mean over the batch, so each row's adjoint is 1/N of its sample's gradient.
    mean: bool,
}

/// The error for a program without per-sample gradients, saying why.
fn refused<R>(why: String) -> Result<R> {
    Err(Error::value(format!("per-sample gradients: {why}")))
}

impl<T: Float> Program<T> {
    /// Where the differentiated argument enters, or why per-sample gradients are not possible.
    fn per_sample_plan(&self) -> Result<PerSamplePlan> {
        if self.wrt.len() != 1 || self.arg_shapes[self.wrt[0]].is_batched() {
            return refused(
                "they need exactly one differentiated argument, without a batch axis".into(),
            );
        }
        let out = self.output_shape();
        if out.dims().first() == Some(&Dim::Batch) && out.len(1) == 1 {
            // One loss per sample: each must depend on its own sample alone. A tiling plan
            // exists only when every batched step is row-local, and a batched output that reads
            // a sum over the batch has none.
            if self.tiling.is_none() {
                return refused(
                    "each per-sample loss must depend on its own sample alone (no operation \
                     mixing rows, such as a sum over the batch)"
                        .into(),
                );
            }
            return self.per_sample_uses(false);
        }
        if out.rank() != 0 {
            return refused(format!(
                "the output must be a scalar loss (a sum or mean over the batch) or one loss \
                 per sample, (N,); not of shape {out}"
            ));
        }
        let reduces: SmallVec<[usize; 2]> = (0..self.steps.len())
            .filter(|&i| self.steps[i].phase == Phase::Reduce)
            .collect();
        let one_pass = self.tiling.as_ref().is_some_and(|p| p.grad_in_one_pass);
        if !one_pass || reduces.len() != 1 {
            return refused(
                "the output must be a sum or mean over the batch of per-sample terms \
                         (a loss of the whole batch, such as (Σ y)², has no per-sample split)"
                    .into(),
            );
        }
        let mean = matches!(self.steps[reduces[0]].op, Op::Reduce(ReduceOp::Mean, ..));
        self.per_sample_uses(mean)
    }

    /// Where the differentiated argument is read: only as dense layers' weights and biases.
    fn per_sample_uses(&self, mean: bool) -> Result<PerSamplePlan> {
        let Some(param) = self.arg_steps[self.wrt[0]] else {
            // The output does not read it: every row is zero.
            return Ok(PerSamplePlan {
                uses: Vec::new(),
                first: Vec::new(),
                covered: 0,
                mean,
            });
        };
        let mut uses = Vec::new();
        for (i, s) in self.steps.iter().enumerate() {
            let (ins, n) = s.op.inputs();
            for &j in &ins[..n] {
                // The parameter itself, or a slice of it.
                let offset = match self.steps[j].op {
                    _ if j == param => 0,
                    Op::Slice { x, start } if x == param => start,
                    _ => continue,
                };
                if j != param && matches!(s.op, Op::Slice { .. }) {
                    return refused(format!(
                        "a slice of the parameters is sliced again ({:?})",
                        s.op
                    ));
                }
                match s.op {
                    Op::Slice { x, .. } if x == param && j == param => {}
                    Op::MatMul {
                        a,
                        b,
                        ta: false,
                        tb,
                    }
                    | Op::Affine {
                        a,
                        b,
                        ta: false,
                        tb,
                        ..
                    } if b == j && a != j && self.steps[a].phase == Phase::Tile => {
                        uses.push(Use::Weight {
                            step: i,
                            a,
                            offset,
                            transposed: tb,
                        })
                    }
                    Op::Affine { bias, a, b, .. } if bias == j && a != j && b != j => {
                        uses.push(Use::Bias { step: i, offset })
                    }
                    _ => {
                        return refused(format!(
                            "the parameters are read by {:?}, which is not a dense layer's \
                             weight or bias",
                            s.op
                        ))
                    }
                }
            }
        }
        // A product of width 0 reads no parameters (and its rows of length 0 cannot be chunked).
        uses.retain(|u| self.use_len(u) > 0);
        let (first, covered) = first_writes(&uses, |u| self.use_len(u));
        Ok(PerSamplePlan {
            uses,
            first,
            covered,
            mean,
        })
    }

    /// Elements of the parameters a use reads.
    fn use_len(&self, u: &Use) -> usize {
        match *u {
            Use::Weight { step, a, .. } => {
                self.steps[step].shape.len(1) * self.steps[a].shape.len(1)
            }
            Use::Bias { step, .. } => self.steps[step].shape.len(1),
        }
    }

    /// Writes row b of `out` (batch × P) = the gradient of sample b's term of the loss (or of
    /// its own loss, for a program with one loss per sample) with respect to the differentiated
    /// argument (P elements). Returns the loss (the sum of the per-sample losses).
    pub fn per_sample_grad(&mut self, args: &[&[T]], out: &mut [T]) -> Result<T> {
        let batch = self.batch_size(args)?;
        // Taken out while the sweeps borrow the program mutably, and put back.
        let plan = match self.per_sample.take() {
            Some(plan) => plan,
            None => self.per_sample_plan()?,
        };
        let result = self.per_sample_rows(&plan, args, batch, out);
        self.per_sample = Some(plan);
        result
    }

    fn per_sample_rows(
        &mut self,
        plan: &PerSamplePlan,
        args: &[&[T]],
        batch: usize,
        out: &mut [T],
    ) -> Result<T> {
        let p = self.arg_shapes[self.wrt[0]].len(0);
        if out.len() != batch * p {
            return Err(Error::value(format!(
                "out has {} elements; expected ({batch}, {p})",
                out.len()
            )));
        }
        // The batch's reverse sweep, untiled: each product's adjoint rows are needed whole.
        self.forward(args, batch)?;
        self.backward(args, batch, None);
        // The loss, or the sum of the per-sample losses.
        let value = self
            .output_value(args, batch)
            .iter()
            .fold(T::zero(), |s, &v| s + v);
        // Each use writes its own range of every row; where uses share parameters (one weight
        // read twice) the later ones add to it, and ranges no use writes stay zero.
        if plan.covered < p {
            out.fill(T::zero());
        }
        let frame = crate::exec::Frame::new(&self.steps, args, batch);
        let (steps, values, adjoints) = (&self.steps, &self.values, &self.adjoints);
        let scale = T::from_f64(if plan.mean { batch as f64 } else { 1.0 });
        let shared = SharedMut::new(out);
        let rows = |r: std::ops::Range<usize>| {
            // SAFETY: this task alone writes rows r.
            let g = unsafe { shared.range(r.start * p..r.end * p) };
            for (u, &assign) in plan.uses.iter().zip(&plan.first) {
                match *u {
                    Use::Weight {
                        step,
                        a,
                        offset,
                        transposed,
                    } => {
                        let (n, k) = (steps[step].shape.len(1), steps[a].shape.len(1));
                        let (d, x) = (&adjoints[step][..], crate::exec::value(&frame, values, a));
                        // W (n, k) gets δ_b x_bᵀ; stored (k, n), x_b δ_bᵀ.
                        let (u, lu, v, lv) = if transposed {
                            (d, n, x, k)
                        } else {
                            (x, k, d, n)
                        };
                        let (u, v) = (&u[r.start * lu..r.end * lu], &v[r.start * lv..r.end * lv]);
                        dispatch(
                            #[inline(always)]
                            || {
                                let samples = g.chunks_exact_mut(p).zip(u.chunks_exact(lu));
                                for ((g, u), v) in samples.zip(v.chunks_exact(lv)) {
                                    let g = &mut g[offset..offset + lu * lv];
                                    outer_rows(g, scale, u, v, !assign);
                                }
                            },
                        )
                    }
                    Use::Bias { step, offset } => {
                        let n = steps[step].shape.len(1);
                        let d = &adjoints[step][r.start * n..r.end * n];
                        dispatch(
                            #[inline(always)]
                            || {
                                for (g, d) in g.chunks_exact_mut(p).zip(d.chunks_exact(n)) {
                                    scaled_into(&mut g[offset..offset + n], scale, d, !assign);
                                }
                            },
                        )
                    }
                }
            }
        };
        crate::parallel::for_chunks(batch, (1 << 15) / p.max(1), &rows);
        Ok(value)
    }
}

/// For each use, whether it is the first to write its range of a row (so it may assign rather
/// than add), and how many elements of the row the first writes cover.
fn first_writes(uses: &[Use], len: impl Fn(&Use) -> usize) -> (Vec<bool>, usize) {
    let range = |u: &Use| {
        let offset = match *u {
            Use::Weight { offset, .. } | Use::Bias { offset, .. } => offset,
        };
        offset..offset + len(u)
    };
    let mut covered = 0;
    let first = (0..uses.len())
        .map(|i| {
            let r = range(&uses[i]);
            let first = uses[..i]
                .iter()
                .map(range)
                .all(|o| o.end <= r.start || r.end <= o.start);
            covered += if first { r.len() } else { 0 };
            first
        })
        .collect();
    (first, covered)
}
