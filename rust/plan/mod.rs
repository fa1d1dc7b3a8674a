//! Compiling a graph into a `Plan`: everything about a program that does not change from call
//! to call, decided once. The live schedule (`Step`s), which nodes need adjoints, where products
//! take a bias, how a batch is tiled (`tiling.rs`) and how per-sample gradients are written
//! (`per_sample.rs`). A plan is immutable; the runners (`runner/`) replay it over buffers of
//! their own.
pub mod dense_layers;
pub mod per_sample;
pub mod step;
pub mod tiling;

use crate::error::{Error, Result};
use crate::float::Float;
use crate::ir::{BinaryOp, Graph, NodeId, Op, ReduceOp};
use crate::shape::{Dim, Shape};
use dense_layers::DenseLayer;
use per_sample::PerSamplePlan;
pub use step::{Phase, Step};
use tiling::TilePlan;

/// A compiled program's schedule and its decisions, for element type `T` (tile sizes depend on
/// it).
#[derive(Clone, Debug)]
pub struct Plan<T> {
    pub(crate) steps: Vec<Step>,
    /// The output is always the last step.
    pub(crate) output: usize,
    pub(crate) arg_shapes: Vec<Shape>,
    /// Names of the arguments for messages; empty names them by number only.
    arg_names: Vec<String>,
    /// The step of each argument, if the output depends on it.
    pub(crate) arg_steps: Vec<Option<usize>>,
    pub(crate) wrt: Vec<usize>,
    /// The values of constant steps, by step.
    pub(crate) constants: Vec<(usize, Vec<f64>)>,
    pub(crate) tiling: Option<TilePlan>,
    /// How per-sample gradients are written, or why they cannot be.
    pub(crate) per_sample: Result<PerSamplePlan>,
    /// The dense layers the parameters are read as, or why they are not.
    dense_layers: Result<Vec<DenseLayer>>,
    _elem: std::marker::PhantomData<fn() -> T>,
}

impl<T: Float> Plan<T> {
    /// Compiles the part of `graph` that `output` depends on, differentiating with respect to
    /// the arguments numbered in `wrt`.
    pub fn compile(graph: &Graph, output: NodeId, wrt: &[usize]) -> Result<Plan<T>> {
        if output >= graph.nodes().len() {
            return Err(Error::Invalid(format!(
                "output node {output} does not exist"
            )));
        }
        for (i, &w) in wrt.iter().enumerate() {
            if w >= graph.n_inputs() {
                return Err(Error::Invalid(format!(
                    "wrt argument {w} does not exist: the program has {} arguments",
                    graph.n_inputs()
                )));
            }
            if wrt[..i].contains(&w) {
                return Err(Error::Invalid(format!("wrt lists argument {w} twice")));
            }
        }

        let ops = fuse_bias_adds(graph, output);
        // Live nodes: those the output depends on. Node order is already topological.
        let mut live = vec![false; output + 1];
        live[output] = true;
        for id in (0..=output).rev() {
            if live[id] {
                let (ins, n) = ops[id].inputs();
                ins[..n].iter().for_each(|&j| live[j] = true);
            }
        }
        let mut step_of = vec![usize::MAX; output + 1];
        let mut steps: Vec<Step> = Vec::new();
        let mut arg_steps = vec![None; graph.n_inputs()];
        let mut constants = Vec::new();
        for id in (0..=output).filter(|&id| live[id]) {
            let op = remap(&ops[id], &step_of);
            let needs_grad = match op {
                Op::Input(k) => wrt.contains(&k),
                // Indices are not differentiable.
                Op::TakeAlongRows { x, .. } => steps[x].needs_grad,
                _ => {
                    let (ins, n) = op.inputs();
                    ins[..n].iter().any(|&j| steps[j].needs_grad)
                }
            };
            match op {
                Op::Input(k) => arg_steps[k] = Some(steps.len()),
                Op::Constant(c) => constants.push((steps.len(), vec![c])),
                Op::ConstantArray(a) => constants.push((steps.len(), graph.array(a).to_vec())),
                _ => {}
            }
            step_of[id] = steps.len();
            steps.push(Step {
                op,
                shape: graph.node(id).shape,
                needs_grad,
                phase: Phase::Pre, // set by `tiling::plan`
                first_write: false,
                view: false,
            });
        }
        mark_first_writes(&mut steps);
        // Weights sliced from a parameter vector are so read in place (a copy of a 512-wide
        // network's weights was 0.8% of its value_and_grad).
        let last = steps.len() - 1;
        for (i, s) in steps.iter_mut().enumerate() {
            s.view = matches!(s.op, Op::Reshape(_) | Op::Slice { .. }) && i != last;
        }
        let tiling = tiling::plan(&mut steps, std::mem::size_of::<T>());
        // Input shapes come from the graph, including arguments the output does not read.
        let arg_shapes: Vec<Shape> = graph
            .nodes()
            .iter()
            .filter(|n| matches!(n.op, Op::Input(_)))
            .map(|n| n.shape)
            .collect();
        let per_sample = per_sample::plan(&per_sample::Program {
            steps: &steps,
            wrt,
            arg_shapes: &arg_shapes,
            arg_steps: &arg_steps,
            tiling: tiling.as_ref(),
        });
        let dense_layers = per_sample
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|ps| dense_layers::dense_layers(&steps, ps));
        Ok(Plan {
            output: steps.len() - 1,
            steps,
            arg_shapes,
            arg_names: Vec::new(),
            arg_steps,
            wrt: wrt.to_vec(),
            constants,
            tiling,
            per_sample,
            dense_layers,
            _elem: std::marker::PhantomData,
        })
    }

    /// Names the arguments in error messages ("argument 1 (X)"), one name per argument.
    pub fn with_arg_names(mut self, names: Vec<String>) -> Result<Self> {
        if names.len() != self.arg_shapes.len() {
            return Err(Error::Arity(format!(
                "{} argument names for {} arguments",
                names.len(),
                self.arg_shapes.len()
            )));
        }
        self.arg_names = names;
        Ok(self)
    }

    /// The shapes the arguments must have (`Dim::Batch` is the caller's batch size).
    pub fn arg_shapes(&self) -> &[Shape] {
        &self.arg_shapes
    }
    pub fn output_shape(&self) -> Shape {
        self.steps[self.output].shape
    }
    /// The arguments gradients are taken with respect to, in the order gradients are returned.
    pub fn wrt(&self) -> &[usize] {
        &self.wrt
    }
    /// Rows per tile when batches of at least twice this many rows are replayed tile by tile;
    /// `None` when the program is not row-local in its batch.
    pub fn tile_rows(&self) -> Option<usize> {
        self.tiling.as_ref().map(|p| p.rows)
    }
    /// Whether gradients are tiled too (else only values are).
    pub fn tiles_gradient(&self) -> bool {
        self.tiling.as_ref().is_some_and(|p| p.grad_in_one_pass)
    }
    /// Number of steps in the schedule (live nodes).
    pub fn len(&self) -> usize {
        self.steps.len()
    }
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
    /// How per-sample gradients are written, or why this program has none.
    pub fn per_sample(&self) -> Result<&PerSamplePlan> {
        self.per_sample.as_ref().map_err(Clone::clone)
    }
    /// The dense layers the differentiated parameters are read as (see `dense_layers.rs`), or
    /// why they are not.
    pub fn dense_layers(&self) -> Result<&[DenseLayer]> {
        self.dense_layers.as_deref().map_err(Clone::clone)
    }

    /// Whether a replay at this batch size runs tiled (the gradient too: `with_grad`).
    pub fn runs_tiled(&self, batch: usize, with_grad: bool) -> bool {
        self.tiling
            .as_ref()
            .is_some_and(|p| batch >= 2 * p.rows && (!with_grad || p.grad_in_one_pass))
    }

    /// "argument 1 (X)", or "the cotangent (...)" for the argument after the last.
    pub fn arg_label(&self, k: usize) -> String {
        arg_label(
            k,
            &self.arg_names,
            self.arg_shapes.len(),
            self.output_shape(),
        )
    }

    /// Checks the number of arguments a call gave; see `check_arity`.
    pub fn check_arity(&self, method: &str, given: usize, extra: Option<&str>) -> Result<()> {
        check_arity(method, self.arg_shapes.len(), given, extra)
    }

    /// Checks the arguments' lengths against their shapes and returns the batch size they imply
    /// (0 when no argument is batched). For flat slices; `BatchSize::check` does the same for
    /// arrays with dimensions.
    pub fn batch_size(&self, args: &[&[T]]) -> Result<usize> {
        self.check_arity("the program", args.len(), None)?;
        let mut batch: Option<(usize, usize)> = None;
        for (k, (a, s)) in args.iter().zip(&self.arg_shapes).enumerate() {
            let per_row = s.len(1);
            if !s.is_batched() || per_row == 0 {
                if a.len() != s.len(0) {
                    return Err(Error::Shape(format!(
                        "{} has {} elements; its shape {s} has {}",
                        self.arg_label(k),
                        a.len(),
                        s.len(0)
                    )));
                }
                continue;
            }
            if a.len() % per_row != 0 {
                return Err(Error::Shape(format!(
                    "{} has {} elements, not a whole number of rows of shape {s}",
                    self.arg_label(k),
                    a.len()
                )));
            }
            let n = a.len() / per_row;
            match batch {
                Some((first, m)) if m != n => {
                    return Err(Error::Shape(format!(
                        "batch sizes differ: {} has {m} rows, {} has {n}",
                        self.arg_label(first),
                        self.arg_label(k)
                    )))
                }
                None => batch = Some((k, n)),
                _ => {}
            }
        }
        Ok(batch.map_or(0, |(_, n)| n))
    }

    /// Checks that gradient buffers come one per wrt argument, each of its argument's length.
    pub fn check_grads(&self, grads: &[&mut [T]], batch: usize) -> Result<()> {
        if grads.len() != self.wrt.len() {
            return Err(Error::Arity(format!(
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

    /// Gradients need a scalar output (a vjp takes an output cotangent instead).
    pub fn check_scalar_output(&self) -> Result<()> {
        check_scalar(self.output_shape())
    }
}

/// Argument `k` of `n_args` named in messages: "argument 1 (X)" (or "argument 1" without
/// names), and "the cotangent (...)" for the one after the last.
pub fn arg_label(k: usize, names: &[String], n_args: usize, output: Shape) -> String {
    match names.get(k) {
        Some(name) => format!("argument {k} ({name})"),
        None if k < n_args => format!("argument {k}"),
        None => format!("the cotangent (for the output of shape {output})"),
    }
}

/// Checks the number of arguments a call gave: `n_args`, and one more when `extra` names it
/// (the cotangent of a vjp); `method` names the call ("grad()").
pub fn check_arity(method: &str, n_args: usize, given: usize, extra: Option<&str>) -> Result<()> {
    if given != n_args + usize::from(extra.is_some()) {
        return Err(Error::Arity(format!(
            "{method} takes {n_args} arguments{}, got {given}",
            extra.map_or(String::new(), |e| format!(" and {e}"))
        )));
    }
    Ok(())
}

/// Gradients need a scalar output (a vjp takes an output cotangent instead).
pub fn check_scalar(output: Shape) -> Result<()> {
    if output.rank() != 0 {
        return Err(Error::NotScalar(format!(
            "gradients need a scalar output, but this program's output has shape {output}; use \
             vjp with an output cotangent"
        )));
    }
    Ok(())
}

/// A buffer's length against a shape at a batch size.
pub fn check_len(what: &str, len: usize, shape: Shape, batch: usize) -> Result<()> {
    if len != shape.alloc_len(batch) {
        return Err(Error::Shape(format!(
            "{what} has {len} elements; expected shape {} ({} elements at batch size {batch})",
            shape,
            shape.len(batch)
        )));
    }
    Ok(())
}

/// Sets `first_write` on the steps whose only reader overwrites their whole adjoint in its
/// reverse sweep: a matrix product reading them as its left operand, an elementwise function,
/// a reshape or transpose, a sum or mean, or an elementwise binary op that does not broadcast
/// into them (x·x included, whose two contributions the left side's assigns and the right's
/// adds to). Their adjoints are then not zeroed first (a 1000-wide tanh layer's, and a
/// squared error's, in every tile).
fn mark_first_writes(steps: &mut [Step]) {
    let mut readers = vec![0usize; steps.len()];
    readers[steps.len() - 1] += 1; // the output's adjoint is seeded
    for s in steps.iter() {
        let (ins, n) = s.op.inputs();
        ins[..n].iter().for_each(|&j| readers[j] += 1);
    }
    for i in 0..steps.len() {
        let sole = |x: usize, reads: usize| readers[x] == reads && !steps[x].op.is_given();
        let only = |x: usize| sole(x, 1).then_some(x);
        let marked = match steps[i].op {
            Op::MatMul { a, .. } | Op::Affine { a, .. } | Op::Unary(_, a) => [only(a), None],
            Op::Reshape(x) | Op::Transpose(x) => [only(x), None],
            Op::Reduce(ReduceOp::Sum | ReduceOp::Mean, _, x) => [only(x), None],
            Op::Binary(_, a, b) => {
                // `binary_backward` writes a whole adjoint element by element where neither
                // operand broadcasts, or one is a single element.
                let full = |x: usize| steps[x].shape == steps[i].shape;
                let single = |x: usize| !steps[x].shape.is_batched() && steps[x].shape.len(0) == 1;
                let flat = (full(a) || single(a)) && (full(b) || single(b));
                let mark = |x: usize| only(x).filter(|&x| flat && full(x));
                match a == b {
                    true => [(flat && full(a) && sole(a, 2)).then_some(a), None],
                    false => [mark(a), mark(b)],
                }
            }
            _ => [None, None],
        };
        for x in marked.into_iter().flatten() {
            steps[x].first_write = true;
        }
    }
}

/// The graph's ops up to `output`, with each `matmul + row bias` whose product has no other
/// reader turned into one `Op::Affine` (the product node is then dead).
fn fuse_bias_adds(graph: &Graph, output: NodeId) -> Vec<Op> {
    let mut ops: Vec<Op> = (0..=output).map(|id| graph.node(id).op.clone()).collect();
    let mut readers = vec![0usize; output + 1];
    readers[output] += 1;
    for op in &ops {
        let (ins, n) = op.inputs();
        ins[..n].iter().for_each(|&j| readers[j] += 1);
    }
    for id in 0..=output {
        let Op::Binary(BinaryOp::Add, x, y) = ops[id] else {
            continue;
        };
        for (mm, bias) in [(x, y), (y, x)] {
            let Op::MatMul { a, b, ta, tb } = ops[mm] else {
                continue;
            };
            let (ms, bs) = (graph.node(mm).shape, graph.node(bias).shape);
            let row = bs.as_2d() == [Dim::Fixed(1), ms.as_2d()[1]];
            if readers[mm] == 1 && ms.rank() == 2 && ms == graph.node(id).shape && row {
                ops[id] = Op::Affine { a, b, ta, tb, bias };
                break;
            }
        }
    }
    ops
}

fn remap(op: &Op, step_of: &[usize]) -> Op {
    let m = |id: NodeId| step_of[id];
    match *op {
        Op::Input(_) | Op::Constant(_) | Op::ConstantArray(_) => op.clone(),
        Op::Unary(u, x) => Op::Unary(u, m(x)),
        Op::Binary(b, x, y) => Op::Binary(b, m(x), m(y)),
        Op::MatMul { a, b, ta, tb } => Op::MatMul {
            a: m(a),
            b: m(b),
            ta,
            tb,
        },
        Op::Affine { a, b, ta, tb, bias } => Op::Affine {
            a: m(a),
            b: m(b),
            ta,
            tb,
            bias: m(bias),
        },
        Op::Transpose(x) => Op::Transpose(m(x)),
        Op::Reshape(x) => Op::Reshape(m(x)),
        Op::Slice { x, start } => Op::Slice { x: m(x), start },
        Op::Reduce(r, axis, x) => Op::Reduce(r, axis, m(x)),
        Op::Softmax { x, axis, log } => Op::Softmax { x: m(x), axis, log },
        Op::TakeAlongRows { x, index } => Op::TakeAlongRows {
            x: m(x),
            index: m(index),
        },
    }
}
