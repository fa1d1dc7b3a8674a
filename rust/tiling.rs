//! Batch-tiled replays (DESIGN.md, performance principle 1).
//!
//! A batched program whose batched steps are row-local (row i of a step depends only on row i of
//! its batched operands) is replayed tile by tile: each thread runs the forward and the reverse
//! sweep over its tiles of rows with private, cache-sized buffers, so a 10,000 × 1,000 hidden
//! activation never exists whole. The schedule splits into phases (`Phase`): steps that do not
//! depend on the batch run once before the tiles (`Pre`: weights, slices of a parameter vector),
//! sums and means over the batch (`Reduce`) are accumulated from the tiles' partial results, and
//! what follows them (`Post`: the loss) runs once after.
//!
//! The reverse sweep over a tile needs the adjoints of the `Reduce` steps before the tiles are
//! done, so the gradient is tiled only when the `Post` steps' reverse sweep reads no `Post` value
//! (the loss is a sum or mean over the batch, plus terms of the parameters, scaled by constants:
//! every loss fastad ships). Other programs replay untiled.
//!
//! Each thread accumulates its own gradient of the `Pre` steps and its own partial sums; they
//! are combined in thread order, so results are deterministic for a given thread count.
use crate::error::{Error, Result};
use crate::exec::{backward_step, forward_step, Frame};
use crate::float::Float;
use crate::ir::{Axis, BinaryOp, Op, ReduceOp, UnaryOp};
use crate::kernels::gemm::{pack_whole_b, packed_b_len, workspace_len, Operand};
use crate::kernels::SharedMut;
use crate::program::{Phase, Program, Step};
use crate::shape::{Dim, Shape};
use smallvec::SmallVec;

/// Bytes of tile-sized values and adjoints per thread: the tile stays in L2/L3.
const TILE_BYTES: usize = 2 << 20;
/// Tile rows are a multiple of this (every GEMM micro-kernel's MR divides it) and at least it.
const ROW_QUANTUM: usize = 24;
const MAX_ROWS: usize = 1024;

/// How a program is tiled, decided at compile time.
#[derive(Clone, Debug)]
pub(crate) struct TilePlan {
    /// Rows per tile.
    pub rows: usize,
    /// The gradient can be tiled too (see the module comment).
    pub grad_in_one_pass: bool,
    /// A batched output's rows can go straight to the caller (`writes_output_directly`).
    pub output_direct: bool,
}

/// The private buffers of one thread's tiles.
pub(crate) struct TileTask<T> {
    /// Tile steps' values (tile rows); Reduce steps' per-tile results.
    values: Vec<Vec<T>>,
    /// Tile steps' adjoints (tile rows); Pre and Reduce steps' adjoints (whole).
    adjoints: Vec<Vec<T>>,
    /// Reduce steps' sums over this thread's tiles.
    partials: Vec<Vec<T>>,
    gemm: Vec<T>,
    error: Option<Error>,
}

fn batched_first(s: &Shape) -> bool {
    s.dims().first() == Some(&Dim::Batch)
}

/// Sets every step's phase; `None` when some batched step is not row-local.
pub(crate) fn plan(steps: &mut [Step], elem_bytes: usize) -> Option<TilePlan> {
    for i in 0..steps.len() {
        let phase = phase_of(steps, i)?;
        steps[i].phase = phase;
    }
    let row_elems: usize = steps
        .iter()
        .filter(|s| s.phase == Phase::Tile)
        .map(|s| s.shape.len(1) * (1 + usize::from(s.needs_grad)))
        .sum();
    if row_elems == 0 {
        return None;
    }
    let rows = (TILE_BYTES / (row_elems * elem_bytes)).clamp(ROW_QUANTUM, MAX_ROWS);
    let grad_in_one_pass = (0..steps.len()).all(|i| post_backward_reads_no_post_value(steps, i));
    let out = &steps[steps.len() - 1];
    let output_direct = out.phase == Phase::Tile
        && !matches!(out.op, Op::Input(_))
        && !steps
            .iter()
            .any(|s| matches!(s.op, Op::TakeAlongRows { .. }));
    Some(TilePlan {
        rows: rows / ROW_QUANTUM * ROW_QUANTUM,
        grad_in_one_pass,
        output_direct,
    })
}

fn phase_of(steps: &[Step], i: usize) -> Option<Phase> {
    let s = &steps[i];
    let (ins, n) = s.op.inputs();
    let ins = &ins[..n];
    let has = |p: Phase| ins.iter().any(|&j| steps[j].phase == p);
    if let Op::Input(_) = s.op {
        return match (s.shape.is_batched(), batched_first(&s.shape)) {
            (false, _) => Some(Phase::Pre),
            (true, true) => Some(Phase::Tile),
            (true, false) => None,
        };
    }
    if !has(Phase::Tile) {
        return if has(Phase::Post) || has(Phase::Reduce) {
            (!s.shape.is_batched()).then_some(Phase::Post)
        } else {
            Some(Phase::Pre)
        };
    }
    if has(Phase::Post) || has(Phase::Reduce) {
        return None;
    }
    // A Pre operand must be the same for every row (a row vector or a scalar).
    let broadcasts_over_rows =
        |j: usize| steps[j].phase == Phase::Tile || steps[j].shape.as_2d()[0] == Dim::Fixed(1);
    let tile = batched_first(&s.shape);
    let row_local = match s.op {
        Op::Unary(..) => tile,
        Op::Binary(_, a, b) => tile && broadcasts_over_rows(a) && broadcasts_over_rows(b),
        Op::MatMul { a, b, ta, .. } => {
            tile && !ta
                && steps[a].phase == Phase::Tile
                && steps[a].shape.rank() == 2
                && steps[b].phase == Phase::Pre
        }
        Op::Affine { a, b, ta, bias, .. } => {
            tile && !ta
                && steps[a].phase == Phase::Tile
                && steps[a].shape.rank() == 2
                && steps[b].phase == Phase::Pre
                && steps[bias].phase == Phase::Pre
        }
        Op::Reshape(x) => tile && batched_first(&steps[x].shape),
        Op::Reduce(op, axis, x) => {
            if steps[x].shape.rank() == 2 && axis == Axis::WithinRows {
                tile
            } else {
                let sums = matches!(op, ReduceOp::Sum | ReduceOp::Mean);
                return (sums && !s.shape.is_batched()).then_some(Phase::Reduce);
            }
        }
        Op::Softmax { x, axis, .. } => {
            tile && steps[x].shape.rank() == 2 && axis == Axis::WithinRows
        }
        Op::TakeAlongRows { x, index } => {
            tile && steps[x].phase == Phase::Tile && steps[index].phase == Phase::Tile
        }
        _ => false,
    };
    row_local.then_some(Phase::Tile)
}

/// Whether step i's reverse sweep, if it is a `Post` step, can run before any `Post` value
/// exists: its partials may read only values known before the tiles (`Pre`).
fn post_backward_reads_no_post_value(steps: &[Step], i: usize) -> bool {
    let s = &steps[i];
    if s.phase != Phase::Post || !s.needs_grad {
        return true;
    }
    let known = |j: usize| steps[j].phase == Phase::Pre;
    let needs = |j: usize| steps[j].needs_grad;
    match s.op {
        Op::Binary(BinaryOp::Add | BinaryOp::Sub, ..) => true,
        Op::Binary(BinaryOp::Mul, a, b) => (!needs(a) || known(b)) && (!needs(b) || known(a)),
        Op::Binary(BinaryOp::Div, _, b) => known(b),
        Op::MatMul { a, b, .. } | Op::Affine { a, b, .. } => {
            (!needs(a) || known(b)) && (!needs(b) || known(a))
        }
        Op::Unary(UnaryOp::Neg, _) => true,
        Op::Reduce(ReduceOp::Sum | ReduceOp::Mean, ..) => true,
        Op::Reshape(_) | Op::Transpose(_) | Op::Slice { .. } => true,
        _ => false,
    }
}

impl<T> TileTask<T> {
    fn new() -> Self {
        TileTask {
            values: Vec::new(),
            adjoints: Vec::new(),
            partials: Vec::new(),
            gemm: Vec::new(),
            error: None,
        }
    }
}

/// A reduce step's weight when combining tiles: a mean over a tile counts n/N of the batch's.
fn reduce_weight(op: &Op, rows: usize, batch: usize) -> f64 {
    match op {
        Op::Reduce(ReduceOp::Mean, ..) => rows as f64 / batch as f64,
        _ => 1.0,
    }
}

impl<T: Float> Program<T> {
    /// Whether a tiled replay can write a batched output straight into the caller's array:
    /// only when no step can fail midway (class labels are checked as the tiles go), so an
    /// error never leaves the caller's array half-written.
    pub(crate) fn writes_output_directly(&self) -> bool {
        self.tiling.as_ref().is_some_and(|p| p.output_direct)
    }

    /// Whether a replay at this batch size runs tiled (the gradient: `with_grad`).
    pub(crate) fn runs_tiled(&self, batch: usize, with_grad: bool) -> bool {
        self.tiling
            .as_ref()
            .is_some_and(|p| batch >= 2 * p.rows && (!with_grad || p.grad_in_one_pass))
    }

    /// Sizes the per-thread tile buffers and the whole-batch buffers a tiled replay writes (the
    /// output, the adjoints of batched wrt arguments). Allocates only when something grew.
    fn reserve_tiles(&mut self, batch: usize, tasks: usize) {
        let rows = self.tiling.as_ref().map_or(0, |p| p.rows);
        while self.tile_tasks.len() < tasks {
            let mut task = TileTask::new();
            let mut gemm = 0;
            for (i, s) in self.steps.iter().enumerate() {
                let (value, adjoint) = match s.phase {
                    Phase::Tile => (
                        if matches!(s.op, Op::Input(_)) {
                            0
                        } else {
                            s.shape.len(rows)
                        },
                        s.shape.len(rows),
                    ),
                    Phase::Reduce => (s.shape.len(0), s.shape.len(0)),
                    Phase::Pre => (0, s.shape.len(0)),
                    Phase::Post => (0, 0),
                };
                let zeros = |n: usize| vec![T::zero(); n];
                task.values.push(zeros(value));
                task.adjoints
                    .push(zeros(if s.needs_grad { adjoint } else { 0 }));
                task.partials
                    .push(zeros(if s.phase == Phase::Reduce { value } else { 0 }));
                if let (
                    Phase::Tile,
                    &Op::MatMul { a, b, ta, tb } | &Op::Affine { a, b, ta, tb, .. },
                ) = (s.phase, &s.op)
                {
                    let (m, k, n) = crate::exec::matmul_dims(&self.steps, rows, a, b, ta, tb);
                    for (m, n, k) in [(m, n, k), (m, k, n), (k, n, m)] {
                        gemm = gemm.max(workspace_len(m, n, k, 1));
                    }
                }
                debug_assert_eq!(task.values.len(), i + 1);
            }
            task.gemm = vec![T::zero(); gemm];
            self.tile_tasks.push(task);
        }
        if batch > self.tiled_capacity {
            for (i, s) in self.steps.iter().enumerate() {
                if s.phase != Phase::Tile {
                    continue;
                }
                let n = s.shape.len(batch);
                if i == self.output && !matches!(s.op, Op::Input(_)) {
                    self.values[i].resize(n, T::zero());
                }
                if s.needs_grad && matches!(s.op, Op::Input(_)) {
                    self.adjoints[i].resize(n, T::zero());
                }
            }
            self.tiled_capacity = batch;
        }
    }

    /// Packs the weight operand of every product in the tiles once per replay, for the forward
    /// product (op(B)) and, when the tile's input needs a gradient, the reverse one (op(B)ᵀ),
    /// so the tiles' products read it packed instead of each packing it again.
    fn pack_weights(&mut self, args: &[&[T]]) {
        for (i, s) in self.steps.iter().enumerate() {
            let (Phase::Tile, &Op::MatMul { a, b, ta, tb } | &Op::Affine { a, b, ta, tb, .. }) =
                (s.phase, &s.op)
            else {
                continue;
            };
            if self.steps[b].phase != Phase::Pre {
                continue;
            }
            let (_, k, n) = crate::exec::matmul_dims(&self.steps, 0, a, b, ta, tb);
            let data = crate::exec::value(&Frame::new(&self.steps, args, 0), &self.values, b);
            let fill = |dst: &mut Vec<T>, k, n, transposed| {
                let len = packed_b_len::<T>(k, n);
                if dst.len() != len {
                    dst.resize(len, T::zero()); // first replay only
                }
                pack_whole_b(k, n, Operand { data, transposed }, dst);
            };
            fill(&mut self.b_packed[i], k, n, tb);
            if self.steps[a].needs_grad {
                fill(&mut self.bt_packed[i], n, k, !tb);
            }
        }
    }

    /// A tiled replay: the forward sweep, and the reverse one when `reverse` is given (seeded
    /// with 1 for a scalar output, or with the cotangent). Values end up where the untiled
    /// replay leaves them for `output_value`/`write_grads` to read — except a batched output's
    /// rows, which go straight to `direct_out` when given (see `writes_output_directly`).
    pub(crate) fn run_tiled(
        &mut self,
        args: &[&[T]],
        batch: usize,
        reverse: Option<Option<&[T]>>,
        direct_out: Option<&mut [T]>,
    ) -> Result<()> {
        let rows = self.tiling.as_ref().expect("a tiled program").rows;
        let n_tiles = batch.div_ceil(rows);
        let tasks = crate::parallel::num_threads().min(n_tiles).max(1);
        self.reserve_tiles(batch, tasks);
        self.reserve_gemm_workspace(batch); // for Pre and Post products
        let out = self.output;

        // Before the tiles: everything that does not depend on the batch.
        self.sweep_whole(args, batch, Phase::Pre, false)?;
        self.pack_weights(args);
        if reverse.is_some() {
            for (s, adj) in self.steps.iter().zip(self.adjoints.iter_mut()) {
                if s.needs_grad && s.phase != Phase::Tile {
                    adj.fill(T::zero());
                }
            }
            if self.steps[out].phase != Phase::Tile && self.steps[out].needs_grad {
                match reverse {
                    Some(Some(c)) => self.adjoints[out][..c.len()].copy_from_slice(c),
                    _ => self.adjoints[out][0] = T::one(),
                }
                // The loss's reverse sweep, down to the Reduce steps (it reads no Post value).
                self.sweep_whole(args, batch, Phase::Post, true)?;
            }
        }

        // The tiles. Whole-batch buffers the tasks write rows of: the output's values (when
        // batched) and batched wrt arguments' adjoints; taken out so the tasks can share the rest.
        let mut out_values = std::mem::take(&mut self.values[out]);
        let mut input_adjoints: SmallVec<[(usize, Vec<T>); 4]> = SmallVec::new();
        for (i, s) in self.steps.iter().enumerate() {
            if s.phase == Phase::Tile && s.needs_grad && matches!(s.op, Op::Input(_)) {
                input_adjoints.push((i, std::mem::take(&mut self.adjoints[i])));
            }
        }
        {
            let shared_out = SharedMut::new(direct_out.unwrap_or(&mut out_values));
            let shared_inputs: SmallVec<[(usize, SharedMut<T>); 4]> = input_adjoints
                .iter_mut()
                .map(|(i, v)| (*i, SharedMut::new(v)))
                .collect();
            let tasks_ptr = SharedMut::new(&mut self.tile_tasks[..tasks]);
            let (steps, values, adjoints) = (&self.steps, &self.values, &self.adjoints);
            let (b_packed, bt_packed) = (&self.b_packed, &self.bt_packed);
            let arg_shapes = &self.arg_shapes;
            let run_task = |t: usize| {
                // SAFETY: task t alone uses tile_tasks[t].
                let task = unsafe { &mut tasks_ptr.range(t..t + 1)[0] };
                task.error = None;
                for p in task.partials.iter_mut() {
                    p.fill(T::zero());
                }
                if reverse.is_some() {
                    for (s, a) in steps.iter().zip(task.adjoints.iter_mut()) {
                        if s.phase == Phase::Pre {
                            a.fill(T::zero());
                        }
                    }
                }
                for tile in crate::parallel::split(n_tiles, tasks, t) {
                    let r0 = tile * rows;
                    let n = rows.min(batch - r0);
                    let tile_args: SmallVec<[&[T]; 8]> = args
                        .iter()
                        .zip(arg_shapes)
                        .map(|(a, s)| {
                            if s.is_batched() {
                                let w = s.len(1);
                                &a[r0 * w..(r0 + n) * w]
                            } else {
                                *a
                            }
                        })
                        .collect();
                    let f = Frame {
                        steps,
                        args: &tile_args,
                        batch: n,
                        shared: Some(values),
                        b_packed: Some(b_packed),
                        bt_packed: Some(bt_packed),
                    };
                    if let Err(e) = tile_sweeps(
                        &f,
                        task,
                        adjoints,
                        out,
                        r0,
                        batch,
                        reverse,
                        &shared_out,
                        &shared_inputs,
                    ) {
                        task.error = Some(e);
                        return;
                    }
                }
            };
            crate::parallel::run(tasks, &run_task);
        }
        self.values[out] = out_values;
        for (i, v) in input_adjoints {
            self.adjoints[i] = v;
        }
        for task in &mut self.tile_tasks[..tasks] {
            if let Some(e) = task.error.take() {
                return Err(e);
            }
        }

        // Combine the tasks' partial sums and parameter gradients, in task order.
        for i in 0..self.steps.len() {
            let s = &self.steps[i];
            if s.phase == Phase::Reduce {
                let v = &mut self.values[i];
                v.fill(T::zero());
                for task in &self.tile_tasks[..tasks] {
                    v.iter_mut()
                        .zip(&task.partials[i])
                        .for_each(|(v, &p)| *v += p);
                }
            }
            if s.phase == Phase::Pre && s.needs_grad && reverse.is_some() {
                let a = &mut self.adjoints[i];
                for task in &self.tile_tasks[..tasks] {
                    a.iter_mut()
                        .zip(&task.adjoints[i])
                        .for_each(|(a, &p)| *a += p);
                }
            }
        }
        // After the tiles: the loss; then the reverse sweep of the Pre steps.
        self.sweep_whole(args, batch, Phase::Post, false)?;
        if reverse.is_some() {
            self.sweep_whole(args, batch, Phase::Pre, true)?;
        }
        Ok(())
    }

    /// The forward (or, with `reverse`, the reverse) sweep over the steps of one whole-batch
    /// phase (Pre or Post), on the program's own buffers.
    fn sweep_whole(
        &mut self,
        args: &[&[T]],
        batch: usize,
        phase: Phase,
        reverse: bool,
    ) -> Result<()> {
        let f = Frame::new(&self.steps, args, batch);
        let ws = &mut self.gemm_workspace;
        if reverse {
            for i in (0..f.steps.len()).rev() {
                if f.steps[i].phase == phase && f.steps[i].needs_grad {
                    backward_step(&f, &self.values, &mut self.adjoints, i, ws);
                }
            }
        } else {
            for i in 0..f.steps.len() {
                if f.steps[i].phase == phase {
                    forward_step(&f, &mut self.values, i, ws)?;
                }
            }
        }
        Ok(())
    }
}

/// One tile: forward over the Tile and Reduce steps (adding the Reduce results to the task's
/// partials and copying output rows out), then, when asked, the reverse sweep over them.
#[allow(clippy::too_many_arguments)]
fn tile_sweeps<T: Float>(
    f: &Frame<T>,
    task: &mut TileTask<T>,
    adjoints: &[Vec<T>],
    out: usize,
    r0: usize,
    batch: usize,
    reverse: Option<Option<&[T]>>,
    out_rows: &SharedMut<T>,
    input_adjoints: &[(usize, SharedMut<T>)],
) -> Result<()> {
    let (steps, n) = (f.steps, f.batch);
    let in_tile = |s: &Step| matches!(s.phase, Phase::Tile | Phase::Reduce);
    for (i, s) in steps.iter().enumerate() {
        if !in_tile(s) {
            continue;
        }
        forward_step(f, &mut task.values, i, &mut task.gemm)?;
        if s.phase == Phase::Reduce {
            let w = T::from_f64(reduce_weight(&s.op, n, batch));
            let (v, p) = (&task.values[i], &mut task.partials[i]);
            p.iter_mut().zip(v).for_each(|(p, &v)| *p += w * v);
        }
    }
    let per_row = steps[out].shape.len(1);
    if steps[out].phase == Phase::Tile && !matches!(steps[out].op, Op::Input(_)) {
        // SAFETY: tiles own disjoint rows of the output.
        let dst = unsafe { out_rows.range(r0 * per_row..(r0 + n) * per_row) };
        dst.copy_from_slice(&task.values[out][..n * per_row]);
    }
    let Some(seed) = reverse else {
        return Ok(());
    };
    for (s, a) in steps.iter().zip(task.adjoints.iter_mut()) {
        if s.needs_grad && s.phase == Phase::Tile && !s.first_write {
            a[..s.shape.len(n)].fill(T::zero());
        }
    }
    for (i, s) in steps.iter().enumerate() {
        if s.needs_grad && s.phase == Phase::Reduce {
            let w = T::from_f64(reduce_weight(&s.op, n, batch));
            task.adjoints[i]
                .iter_mut()
                .zip(&adjoints[i])
                .for_each(|(a, &g)| *a = w * g);
        }
    }
    if steps[out].phase == Phase::Tile && steps[out].needs_grad {
        let c = seed.expect("a batched output is seeded with a cotangent");
        task.adjoints[out][..n * per_row].copy_from_slice(&c[r0 * per_row..(r0 + n) * per_row]);
    }
    for i in (0..steps.len()).rev() {
        if steps[i].needs_grad && in_tile(&steps[i]) {
            backward_step(f, &task.values, &mut task.adjoints, i, &mut task.gemm);
        }
    }
    for (i, shared) in input_adjoints {
        let w = steps[*i].shape.len(1);
        // SAFETY: tiles own disjoint rows.
        let dst = unsafe { shared.range(r0 * w..(r0 + n) * w) };
        dst.copy_from_slice(&task.adjoints[*i][..n * w]);
    }
    Ok(())
}
