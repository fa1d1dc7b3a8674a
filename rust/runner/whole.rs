//! The whole-batch runner: the forward sweep over every step, then the reverse sweep, on one
//! table of values and one of adjoints that hold the whole batch. Its tables are also where the
//! other runners leave what they compute outside their tiles (the parameters' gradients, the
//! loss), so `output` and `write_grads` read every runner's results.
use crate::error::Result;
use crate::float::Float;
use crate::interrupt::Pacer;
use crate::ir::Op;
use crate::plan::step::Phase;
use crate::plan::Plan;
use crate::runner::mode::Seed;
use crate::runner::workspace::GemmWorkspace;
use crate::sweep::{backward_step, forward_step, value, Frame};

/// The buffers of a whole-batch replay, allocated at creation for the unbatched steps and grown
/// only when a larger batch than ever before arrives.
#[derive(Debug)]
pub struct Whole<T> {
    /// Forward values; empty for arguments, which are read in place from the caller.
    pub(crate) values: Vec<Vec<T>>,
    /// Adjoints of the steps that need them; empty otherwise.
    pub(crate) adjoints: Vec<Vec<T>>,
    /// The largest batch the batched buffers hold.
    capacity: usize,
    pub(crate) gemm: GemmWorkspace<T>,
}

impl<T: Float> Whole<T> {
    /// Buffers for `plan`'s unbatched steps, constants filled in.
    pub fn new(plan: &Plan<T>) -> Result<Self> {
        let mut values = Vec::with_capacity(plan.steps.len());
        let mut adjoints = Vec::with_capacity(plan.steps.len());
        for s in &plan.steps {
            let n = s.shape.alloc_len(0);
            let value = match s.op.is_given() || s.view {
                true => Vec::new(),
                false => crate::buffer::filled(n, T::zero(), "a step's values")?,
            };
            values.push(value);
            adjoints.push(if s.needs_grad {
                crate::buffer::filled(n, T::zero(), "a step's adjoints")?
            } else {
                Vec::new()
            });
        }
        for (step, c) in &plan.constants {
            values[*step] = c.iter().map(|&v| T::from_f64(v)).collect();
        }
        Ok(Whole {
            values,
            adjoints,
            capacity: 0,
            gemm: GemmWorkspace::new(),
        })
    }

    /// Grows the products' workspace for `batch` rows on the current thread count.
    pub(crate) fn reserve_gemm(&mut self, plan: &Plan<T>, batch: usize) -> Result<()> {
        self.gemm
            .reserve(&plan.steps, batch, crate::parallel::num_threads())
    }

    /// Grows every batched buffer to hold `batch` rows, and the products' workspace.
    fn reserve(&mut self, plan: &Plan<T>, batch: usize) -> Result<()> {
        self.reserve_gemm(plan, batch)?;
        if batch <= self.capacity {
            return Ok(());
        }
        let mut pacer = Pacer::default();
        for (i, s) in plan.steps.iter().enumerate() {
            if !s.shape.is_batched() {
                continue;
            }
            let n = s.shape.alloc_len(batch);
            if !matches!(s.op, Op::Input(_)) && !s.view {
                crate::buffer::resize(&mut self.values[i], n, T::zero(), "a step's values")?;
            }
            if s.needs_grad {
                crate::buffer::resize(&mut self.adjoints[i], n, T::zero(), "a step's adjoints")?;
            }
            // Growing for a large batch writes every page: long enough to check for Ctrl-C.
            pacer.after(n)?;
        }
        self.capacity = batch;
        Ok(())
    }

    /// Grows one step's value or adjoint buffer to `len` (for a tiled replay's whole-batch rows).
    pub(crate) fn reserve_step(&mut self, step: usize, adjoint: bool, len: usize) -> Result<()> {
        let (table, what) = if adjoint {
            (&mut self.adjoints, "a step's adjoints")
        } else {
            (&mut self.values, "a step's values")
        };
        crate::buffer::resize(&mut table[step], len, T::zero(), what)
    }

    /// The forward sweep over every step. `args` were checked against `plan` for this `batch`.
    pub fn forward(&mut self, plan: &Plan<T>, args: &[&[T]], batch: usize) -> Result<()> {
        self.forward_through(plan, args, batch, plan.steps.len())
    }

    /// The forward sweep over steps 0..end (buffers reserved for all of them).
    fn forward_through(
        &mut self,
        plan: &Plan<T>,
        args: &[&[T]],
        batch: usize,
        end: usize,
    ) -> Result<()> {
        self.reserve(plan, batch)?;
        let frame = Frame::new(&plan.steps, args, batch);
        let mut pacer = Pacer::default();
        for i in 0..end {
            forward_step(&frame, &mut self.values, i, &mut self.gemm.buf)?;
            pacer.after(plan.steps[i].shape.len(batch))?;
        }
        Ok(())
    }

    /// `forward`, with the output written straight into `out` (its length at this batch) when
    /// it is the last step and cannot fail midway: a product's result is then stored once, not
    /// stored and copied (for a 10000 × 1000 result, 80 MB of memory traffic less). Returns
    /// false, with `out` untouched, when the output went to its own buffer instead.
    pub fn forward_into(
        &mut self,
        plan: &Plan<T>,
        args: &[&[T]],
        batch: usize,
        out: &mut [T],
    ) -> Result<bool> {
        let last = plan.steps.len().wrapping_sub(1);
        if plan.output != last || !crate::sweep::computed_infallibly(&plan.steps, last) {
            self.forward(plan, args, batch)?;
            return Ok(false);
        }
        self.forward_through(plan, args, batch, last)?;
        // Nothing can stop the run from here on, so `out` is written whole or not at all.
        let frame = Frame::new(&plan.steps, args, batch);
        crate::sweep::compute_step(&frame, &self.values, last, out, &mut self.gemm.buf)?;
        Ok(true)
    }

    /// The reverse sweep from the output, after `forward` with the same arguments.
    pub fn backward(
        &mut self,
        plan: &Plan<T>,
        args: &[&[T]],
        batch: usize,
        seed: Seed<T>,
    ) -> Result<()> {
        self.reverse(plan, args, batch, seed, true)
    }

    /// `backward` without the adjoints of the steps before the batch (`Phase::Pre`: the
    /// parameters and their slices), which the per-sample runners never read: the layers'
    /// summed weight and bias gradients are not computed at all.
    pub(crate) fn backward_batched_only(
        &mut self,
        plan: &Plan<T>,
        args: &[&[T]],
        batch: usize,
        seed: Seed<T>,
    ) -> Result<()> {
        self.reverse(plan, args, batch, seed, false)
    }

    fn reverse(
        &mut self,
        plan: &Plan<T>,
        args: &[&[T]],
        batch: usize,
        seed: Seed<T>,
        pre_adjoints: bool,
    ) -> Result<()> {
        for (s, adj) in plan.steps.iter().zip(self.adjoints.iter_mut()) {
            let wanted = pre_adjoints || s.phase != Phase::Pre;
            if s.needs_grad && !s.first_write && wanted {
                adj[..s.shape.len(batch)].fill(T::zero());
            }
        }
        let out = plan.output;
        if !plan.steps[out].needs_grad {
            return Ok(());
        }
        let seeded = &mut self.adjoints[out][..plan.steps[out].shape.len(batch)];
        match seed {
            Seed::Cotangent(c) => seeded.copy_from_slice(c),
            Seed::Ones => seeded.fill(T::one()),
        }
        let frame = Frame {
            pre_adjoints,
            ..Frame::new(&plan.steps, args, batch)
        };
        let mut pacer = Pacer::default();
        for i in (0..plan.steps.len()).rev() {
            if plan.steps[i].needs_grad {
                backward_step(
                    &frame,
                    &self.values,
                    &mut self.adjoints,
                    i,
                    &mut self.gemm.buf,
                );
                pacer.after(plan.steps[i].shape.len(batch))?;
            }
        }
        Ok(())
    }

    /// The output's value after a replay with these arguments.
    pub fn output<'a>(&'a self, plan: &'a Plan<T>, args: &'a [&'a [T]], batch: usize) -> &'a [T] {
        value(
            &Frame::new(&plan.steps, args, batch),
            &self.values,
            plan.output,
        )
    }

    /// The sum of the output's elements after a replay: the loss, or the sum of the
    /// per-sample losses of a program with one loss per sample.
    pub fn output_sum(&self, plan: &Plan<T>, args: &[&[T]], batch: usize) -> T {
        self.output(plan, args, batch)
            .iter()
            .fold(T::zero(), |s, &v| s + v)
    }

    /// Copies the gradient of each wrt argument into `grads` (checked by `Plan::check_grads`).
    pub fn write_grads(&self, plan: &Plan<T>, grads: &mut [&mut [T]]) {
        for (g, &w) in grads.iter_mut().zip(&plan.wrt) {
            match plan.arg_steps[w] {
                Some(s) if plan.steps[s].needs_grad => {
                    g.copy_from_slice(&self.adjoints[s][..g.len()])
                }
                _ => g.fill(T::zero()), // the output does not depend on this argument
            }
        }
    }
}
