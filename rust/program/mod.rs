//! `Program`: a compiled plan with the buffers of its runners, behind one front that checks a
//! call's arguments and picks the runner: tiled for large batches of a row-local program, whole
//! otherwise, per-sample for per-sample gradients. Entry points take flat slices here, and
//! `ndarray` views in `views.rs`.
mod views;

use crate::error::Result;
use crate::float::Float;
use crate::ir::{Graph, NodeId};
use crate::plan::dense_layers::DenseLayer;
use crate::plan::{check_len, Plan};
use crate::runner::{kron_factors, layer_rows, per_sample_grad};
use crate::runner::{KronSums, OutputRows, Seed, Sweeps, Tiled, Whole};
use crate::shape::Shape;

/// A compiled program: replay it with `eval`, `value_and_grad`, `vjp` and `per_sample_grad`.
/// Replays allocate nothing unless a batch larger than any before arrives.
#[derive(Debug)]
pub struct Program<T: Float> {
    plan: Plan<T>,
    whole: Whole<T>,
    tiled: Tiled<T>,
    kron: KronSums<T>,
}

impl<T: Float> Program<T> {
    /// Compiles the part of `graph` that `output` depends on, differentiating with respect to
    /// the arguments numbered in `wrt`.
    pub fn compile(graph: &Graph, output: NodeId, wrt: &[usize]) -> Result<Program<T>> {
        Program::from_plan(Plan::compile(graph, output, wrt)?)
    }

    /// A program replaying `plan`, with its runners' buffers allocated.
    pub fn from_plan(plan: Plan<T>) -> Result<Program<T>> {
        Ok(Program {
            whole: Whole::new(&plan)?,
            tiled: Tiled::new(&plan),
            kron: KronSums::default(),
            plan,
        })
    }

    pub fn plan(&self) -> &Plan<T> {
        &self.plan
    }
    /// The shapes the arguments must have (`Dim::Batch` is the caller's batch size).
    pub fn arg_shapes(&self) -> &[Shape] {
        self.plan.arg_shapes()
    }
    pub fn output_shape(&self) -> Shape {
        self.plan.output_shape()
    }
    /// The arguments gradients are taken with respect to, in the order gradients are returned.
    pub fn wrt(&self) -> &[usize] {
        self.plan.wrt()
    }
    /// Rows per tile when batches of at least twice this many rows are replayed tile by tile;
    /// `None` when the program is not row-local in its batch.
    pub fn tile_rows(&self) -> Option<usize> {
        self.plan.tile_rows()
    }
    /// Whether gradients are tiled too (else only values are).
    pub fn tiles_gradient(&self) -> bool {
        self.plan.tiles_gradient()
    }
    /// Number of steps in the schedule (live nodes).
    pub fn len(&self) -> usize {
        self.plan.len()
    }
    pub fn is_empty(&self) -> bool {
        self.plan.is_empty()
    }
    /// Checks the arguments against the program's shapes; returns the batch size.
    pub fn batch_size(&self, args: &[&[T]]) -> Result<usize> {
        self.plan.batch_size(args)
    }

    /// Computes the output into `out` (of the output's shape for this batch).
    pub fn eval(&mut self, args: &[&[T]], out: &mut [T]) -> Result<()> {
        let batch = self.plan.batch_size(args)?;
        check_len("out", out.len(), self.output_shape(), batch)?;
        let (plan, whole) = (&self.plan, &mut self.whole);
        if plan.runs_tiled(batch, false) {
            // Straight into `out` when no step can fail midway, so an error never leaves it
            // half-written.
            if plan.tiling.as_ref().is_some_and(|t| t.output_direct) {
                let rows = OutputRows::Caller(out);
                return self
                    .tiled
                    .run(plan, whole, args, batch, Sweeps::Forward, rows);
            }
            let rows = OutputRows::Table;
            self.tiled
                .run(plan, whole, args, batch, Sweeps::Forward, rows)?;
        } else if whole.forward_into(plan, args, batch, out)? {
            return Ok(());
        }
        out.copy_from_slice(whole.output(plan, args, batch));
        Ok(())
    }

    /// Computes the scalar output and writes its gradient with respect to each `wrt` argument
    /// into `grads` (in `wrt` order).
    pub fn value_and_grad(&mut self, args: &[&[T]], grads: &mut [&mut [T]]) -> Result<T> {
        self.plan.check_scalar_output()?;
        let batch = self.plan.batch_size(args)?;
        self.plan.check_grads(grads, batch)?;
        self.forward_and_backward(args, batch, Seed::Ones)?;
        self.whole.write_grads(&self.plan, grads);
        Ok(self.whole.output(&self.plan, args, batch)[0])
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
        let batch = self.plan.batch_size(args)?;
        check_len("cotangent", cotangent.len(), self.output_shape(), batch)?;
        if let Some(v) = &value_out {
            check_len("value_out", v.len(), self.output_shape(), batch)?;
        }
        self.plan.check_grads(grads, batch)?;
        self.forward_and_backward(args, batch, Seed::Cotangent(cotangent))?;
        self.whole.write_grads(&self.plan, grads);
        if let Some(v) = value_out {
            v.copy_from_slice(self.whole.output(&self.plan, args, batch));
        }
        Ok(())
    }

    /// Writes row b of `out` (batch × P) = the gradient of sample b's term of the loss (or of
    /// its own loss, for a program with one loss per sample) with respect to the one
    /// differentiated argument (P elements). Returns the loss (the sum of the per-sample
    /// losses). See `plan/per_sample.rs` for the programs that have them.
    pub fn per_sample_grad(&mut self, args: &[&[T]], out: &mut [T]) -> Result<T> {
        let batch = self.plan.batch_size(args)?;
        per_sample_grad(&self.plan, &mut self.whole, args, batch, out)
    }

    /// The dense layers the differentiated parameters are read as, or why they are not (see
    /// `plan/dense_layers.rs`).
    pub fn dense_layers(&self) -> Result<&[DenseLayer]> {
        self.plan.dense_layers()
    }

    /// For each dense layer, writes every sample's inputs ā_b (a 1 appended for the bias) into
    /// `inputs[l]` (N × input_width) when given, and the adjoints δ_b of its product into
    /// `adjoints[l]` (N × outputs): the factors of sample b's gradient δ_b ā_bᵀ. Returns the
    /// loss (the sum of the per-sample losses).
    pub fn layer_rows(
        &mut self,
        args: &[&[T]],
        inputs: Option<&mut [&mut [T]]>,
        adjoints: &mut [&mut [T]],
    ) -> Result<T> {
        let batch = self.plan.batch_size(args)?;
        layer_rows(&self.plan, &mut self.whole, args, batch, inputs, adjoints)
    }

    /// Adds each dense layer's Kronecker factors of this batch: Σ_b ā_b ā_bᵀ into `a[l]`
    /// (input_width × input_width) when given, and Σ_b δ_b δ_bᵀ into `g[l]` (outputs ×
    /// outputs), from one tiled replay whose rows are never written out. Nothing is added
    /// when it fails. Returns the loss (the sum of the per-sample losses).
    pub fn kron_factors(
        &mut self,
        args: &[&[T]],
        a: Option<&mut [&mut [T]]>,
        g: &mut [&mut [T]],
    ) -> Result<T> {
        let batch = self.plan.batch_size(args)?;
        let buffers = (&mut self.whole, &mut self.tiled, &mut self.kron);
        kron_factors(&self.plan, buffers, (args, batch), a, g)
    }

    /// Both sweeps, tiled when the program and the batch allow it.
    fn forward_and_backward(&mut self, args: &[&[T]], batch: usize, seed: Seed<T>) -> Result<()> {
        let (plan, whole) = (&self.plan, &mut self.whole);
        if plan.runs_tiled(batch, true) {
            let sweeps = Sweeps::Both(seed);
            return self
                .tiled
                .run(plan, whole, args, batch, sweeps, OutputRows::Table);
        }
        whole.forward(plan, args, batch)?;
        whole.backward(plan, args, batch, seed)
    }
}
