//! Compiling a graph into a `Program`: the live schedule, which nodes need adjoints, and every
//! buffer the replays will use, allocated here (and grown only when a larger batch arrives).
use crate::error::{Error, Result};
use crate::float::Float;
use crate::ir::{BinaryOp, Graph, NodeId, Op};
use crate::shape::{Dim, Shape};
use crate::tiling::{TilePlan, TileTask};

/// One scheduled node: its op (reading earlier steps) and its shape.
#[derive(Clone, Debug)]
pub(crate) struct Step {
    pub op: Op,
    pub shape: Shape,
    /// The step reads a wrt argument, directly or not, so the reverse sweep visits it.
    pub needs_grad: bool,
    /// When a batch-tiled replay computes it (see `tiling.rs`).
    pub phase: Phase,
    /// Its adjoint is written whole by its one reader, a matrix product reading it as `a`:
    /// that reader assigns instead of adding, and the adjoint is never zeroed first.
    pub first_write: bool,
}

/// When a batch-tiled replay computes a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Once, before the tiles: does not depend on the batch (parameters, weight slices).
    Pre,
    /// Tile by tile: batched, and row i depends only on row i of its batched operands.
    Tile,
    /// A sum or mean over the batch: accumulated from the tiles' partial results.
    Reduce,
    /// Once, after the tiles: unbatched, computed from `Reduce` results (the loss).
    Post,
}

/// A compiled program: replay it with `eval`, `value_and_grad` and `vjp` (see `exec.rs`).
pub struct Program<T: Float> {
    pub(crate) steps: Vec<Step>,
    pub(crate) output: usize,
    pub(crate) arg_shapes: Vec<Shape>,
    /// The step of each argument, if the output depends on it.
    pub(crate) arg_steps: Vec<Option<usize>>,
    pub(crate) wrt: Vec<usize>,
    /// Forward values; empty for arguments, which are read in place from the caller.
    pub(crate) values: Vec<Vec<T>>,
    /// Adjoints of the steps that need them; empty otherwise.
    pub(crate) adjoints: Vec<Vec<T>>,
    /// The largest batch the buffers hold.
    pub(crate) capacity: usize,
    /// Packing space for the matrix products, sized for `workspace_batch` and
    /// `workspace_threads` (see `exec::reserve_gemm_workspace`).
    pub(crate) gemm_workspace: Vec<T>,
    pub(crate) workspace_batch: usize,
    pub(crate) workspace_threads: usize,
    /// How batches are tiled, if the program allows it (`tiling.rs`).
    pub(crate) tiling: Option<TilePlan>,
    pub(crate) tile_tasks: Vec<TileTask<T>>,
    /// Per step: its weight operand packed for the tiles' products, forward and reverse (see
    /// `tiling.rs`); empty for most steps.
    pub(crate) b_packed: Vec<Vec<T>>,
    pub(crate) bt_packed: Vec<Vec<T>>,
    /// The largest batch the tiled replays' whole-batch buffers hold.
    pub(crate) tiled_capacity: usize,
    /// How per-sample gradients are written, from the first call (`per_sample.rs`).
    pub(crate) per_sample: Option<crate::per_sample::PerSamplePlan>,
}

impl<T: Float> Program<T> {
    /// Compiles the part of `graph` that `output` depends on, differentiating with respect to
    /// the arguments numbered in `wrt`.
    pub fn compile(graph: &Graph, output: NodeId, wrt: &[usize]) -> Result<Program<T>> {
        if output >= graph.nodes().len() {
            return Err(Error::value(format!("output node {output} does not exist")));
        }
        for (i, &w) in wrt.iter().enumerate() {
            if w >= graph.n_inputs() {
                return Err(Error::value(format!(
                    "wrt argument {w} does not exist: the program has {} arguments",
                    graph.n_inputs()
                )));
            }
            if wrt[..i].contains(&w) {
                return Err(Error::value(format!("wrt lists argument {w} twice")));
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
        for id in (0..=output).filter(|&id| live[id]) {
            let node = graph.node(id);
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
            if let Op::Input(k) = op {
                arg_steps[k] = Some(steps.len());
            }
            step_of[id] = steps.len();
            steps.push(Step {
                op,
                shape: node.shape,
                needs_grad,
                phase: Phase::Pre, // set by `tiling::plan`
                first_write: false,
            });
        }
        mark_first_writes(&mut steps);
        let tiling = crate::tiling::plan(&mut steps, std::mem::size_of::<T>());
        // Input shapes come from the graph, including arguments the output does not read.
        let arg_shapes = graph
            .nodes()
            .iter()
            .filter_map(|n| {
                if let Op::Input(_) = n.op {
                    Some(n.shape)
                } else {
                    None
                }
            })
            .collect();

        let values = steps
            .iter()
            .map(|s| match s.op {
                Op::Input(_) => Vec::new(),
                Op::Constant(c) => vec![T::from_f64(c)],
                Op::ConstantArray(a) => graph.array(a).iter().map(|&v| T::from_f64(v)).collect(),
                _ => vec![T::zero(); s.shape.len(0)],
            })
            .collect();
        let adjoints = steps
            .iter()
            .map(|s| {
                if s.needs_grad {
                    vec![T::zero(); s.shape.len(0)]
                } else {
                    Vec::new()
                }
            })
            .collect();
        let steps_len = steps.len();
        Ok(Program {
            output: steps.len() - 1,
            steps,
            arg_shapes,
            arg_steps,
            wrt: wrt.to_vec(),
            values,
            adjoints,
            capacity: 0,
            gemm_workspace: Vec::new(),
            workspace_batch: 0,
            workspace_threads: 0,
            tiling,
            tile_tasks: Vec::new(),
            b_packed: vec![Vec::new(); steps_len],
            bt_packed: vec![Vec::new(); steps_len],
            tiled_capacity: 0,
            per_sample: None,
        })
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
    /// Rows per tile when batches of at least twice this many rows are replayed tile by tile
    /// (`tiling.rs`); `None` when the program is not row-local in its batch.
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

    /// Grows every batched buffer to hold `batch` rows. Allocates only for a batch larger than
    /// any before.
    pub(crate) fn reserve_batch(&mut self, batch: usize) {
        if batch <= self.capacity {
            return;
        }
        for (i, s) in self.steps.iter().enumerate() {
            if !s.shape.is_batched() {
                continue;
            }
            let n = s.shape.len(batch);
            if !matches!(s.op, Op::Input(_)) {
                self.values[i].resize(n, T::zero());
            }
            if s.needs_grad {
                self.adjoints[i].resize(n, T::zero());
            }
        }
        self.capacity = batch;
    }
}

/// Sets `first_write` on the steps whose only reader is a matrix product reading them as its
/// left operand (the product's reverse sweep then overwrites their whole adjoint).
fn mark_first_writes(steps: &mut [Step]) {
    let mut readers = vec![0usize; steps.len()];
    readers[steps.len() - 1] += 1; // the output's adjoint is seeded
    for s in steps.iter() {
        let (ins, n) = s.op.inputs();
        ins[..n].iter().for_each(|&j| readers[j] += 1);
    }
    for i in 0..steps.len() {
        if let Op::MatMul { a, .. } | Op::Affine { a, .. } = steps[i].op {
            if readers[a] == 1 && !matches!(steps[a].op, Op::Input(_)) {
                steps[a].first_write = true;
            }
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
