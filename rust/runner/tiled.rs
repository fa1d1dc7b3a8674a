//! The batch-tiled runner (DESIGN.md, performance principle 1; the phases are decided in
//! `plan/tiling.rs`).
//!
//! Each thread runs the forward and the reverse sweep over its tiles of rows with private,
//! cache-sized buffers, so a 10,000 × 1,000 hidden activation never exists whole. The steps
//! before the tiles (`Pre`) and after them (`Post`) run once, on the whole-batch runner's
//! tables, which is also where the results end up. Each thread accumulates its own gradient of
//! the `Pre` steps and its own partial sums; they are combined in thread order, so results are
//! deterministic for a given thread count.
use crate::error::{Error, Result};
use crate::float::Float;
use crate::ir::{Op, ReduceOp};
use crate::kernels::gemm::{pack_whole_b, packed_b_len, Operand};
use crate::kernels::SharedMut;
use crate::plan::step::{matmul_dims, product, Phase, Step};
use crate::plan::Plan;
use crate::runner::mode::{OutputRows, Seed, Sweeps};
use crate::runner::whole::Whole;
use crate::runner::workspace::largest;
use crate::sweep::{backward_step, compute_step, forward_step, value, Frame};
use smallvec::SmallVec;
use std::sync::atomic::{AtomicBool, Ordering};

/// The private buffers of one thread's tiles.
#[derive(Debug)]
struct TileTask<T> {
    /// Tile steps' values (tile rows); Reduce steps' per-tile results.
    values: Vec<Vec<T>>,
    /// Tile steps' adjoints (tile rows); Pre and Reduce steps' adjoints (whole).
    adjoints: Vec<Vec<T>>,
    /// Reduce steps' sums over this thread's tiles.
    partials: Vec<Vec<T>>,
    gemm: Vec<T>,
    error: Option<Error>,
}

/// The tiled runner's own buffers: one task's per thread, and the weights packed for the tiles.
#[derive(Debug)]
pub struct Tiled<T> {
    tasks: Vec<TileTask<T>>,
    /// Per step: its weight operand packed for the tiles' products, forward (op(B)) and
    /// reverse (op(B)ᵀ); empty for most steps.
    b_packed: Vec<Vec<T>>,
    bt_packed: Vec<Vec<T>>,
    /// The largest batch whose whole-batch rows (output, batched input adjoints) are reserved.
    capacity: usize,
}

/// What a tile shows a `TileVisit` after its reverse sweep: the tile's rows of every step.
pub(crate) struct TileView<'a, T> {
    /// The tile's frame (its arguments' rows, the shared whole-batch values).
    pub frame: &'a Frame<'a, T>,
    /// Tile steps' values and adjoints, `rows` rows each (read them through `value`).
    pub values: &'a [Vec<T>],
    pub adjoints: &'a [Vec<T>],
    pub rows: usize,
}

/// Called by task t (below the replay's task count) with each of its tiles once the tile's
/// reverse sweep is done, to take what it needs from the rows before the next tile overwrites
/// them.
pub(crate) type TileVisit<'a, T> = dyn Fn(usize, &TileView<T>) + Sync + 'a;

/// What every tile of one replay shares.
struct TileJob<'a, T> {
    plan: &'a Plan<T>,
    /// The whole-batch values (Pre steps read there) and adjoints (Reduce steps' seeds).
    whole: &'a Whole<T>,
    args: &'a [&'a [T]],
    batch: usize,
    rows: usize,
    sweeps: Sweeps<'a, T>,
    b_packed: &'a [Vec<T>],
    bt_packed: &'a [Vec<T>],
    /// The output's rows, when the output is batched.
    out_rows: SharedMut<T>,
    /// Batched wrt arguments' adjoints: (step, whole-batch rows).
    input_adjoints: &'a [(usize, SharedMut<T>)],
    visit: Option<&'a TileVisit<'a, T>>,
}

/// A reduce step's weight when combining tiles: a mean over a tile counts n/N of the batch's.
fn reduce_weight(op: &Op, rows: usize, batch: usize) -> f64 {
    match op {
        Op::Reduce(ReduceOp::Mean, ..) => rows as f64 / batch as f64,
        _ => 1.0,
    }
}

impl<T: Float> Tiled<T> {
    pub fn new(plan: &Plan<T>) -> Self {
        Tiled {
            tasks: Vec::new(),
            b_packed: vec![Vec::new(); plan.steps.len()],
            bt_packed: vec![Vec::new(); plan.steps.len()],
            capacity: 0,
        }
    }

    /// A tiled replay of `plan` over `args` (checked for this `batch`): the forward sweep, and
    /// the reverse one when `sweeps` asks. Results are left in `whole`'s tables for
    /// `Whole::output`/`write_grads` — except a batched output's rows, which go to the caller
    /// when `rows` is `OutputRows::Caller` (allowed when `TilePlan::output_direct`).
    pub fn run(
        &mut self,
        plan: &Plan<T>,
        whole: &mut Whole<T>,
        args: &[&[T]],
        batch: usize,
        sweeps: Sweeps<T>,
        rows: OutputRows<T>,
    ) -> Result<()> {
        self.replay(plan, whole, (args, batch), sweeps, rows, None)
    }

    /// A tiled replay with both sweeps, seeded with ones (a batched output's rows too), that
    /// shows every tile to `visit` after its reverse sweep, on at most `tasks` tasks (the
    /// visitor's own per-task state); see `TileVisit`. The reverse sweep stops at the tiles:
    /// the gradients of the steps before them (the parameters) are not computed.
    pub(crate) fn visit_tiles(
        &mut self,
        plan: &Plan<T>,
        whole: &mut Whole<T>,
        args: &[&[T]],
        batch: usize,
        (visit, tasks): (&TileVisit<T>, usize),
    ) -> Result<()> {
        let (sweeps, rows) = (Sweeps::Both(Seed::Ones), OutputRows::Table);
        self.replay(
            plan,
            whole,
            (args, batch),
            sweeps,
            rows,
            Some((visit, tasks)),
        )
    }

    fn replay(
        &mut self,
        plan: &Plan<T>,
        whole: &mut Whole<T>,
        (args, batch): (&[&[T]], usize),
        sweeps: Sweeps<T>,
        rows: OutputRows<T>,
        visit: Option<(&TileVisit<T>, usize)>,
    ) -> Result<()> {
        let Some(tiling) = plan.tiling.as_ref() else {
            return Err(Error::Unsupported(
                "this program is not row-local in its batch, so it does not tile".into(),
            ));
        };
        if sweeps.reverse() && !tiling.grad_in_one_pass {
            return Err(Error::Unsupported(
                "this program's gradient does not tile (its loss is not a sum or mean over the \
                 batch)"
                    .into(),
            ));
        }
        let tile_rows = tiling.rows;
        let n_tiles = batch.div_ceil(tile_rows);
        let most = visit.map_or(usize::MAX, |(_, tasks)| tasks);
        let tasks = crate::parallel::num_threads().min(n_tiles).min(most).max(1);
        self.reserve(plan, whole, batch, tasks)?;
        whole.reserve_gemm(plan, batch)?; // for the Pre and Post products
        let out = plan.output;

        // Before the tiles: everything that does not depend on the batch.
        sweep_phase(plan, whole, args, batch, Phase::Pre, false)?;
        self.pack_weights(plan, whole, args);
        if let Sweeps::Both(seed) = sweeps {
            for (i, (s, adj)) in plan.steps.iter().zip(whole.adjoints.iter_mut()).enumerate() {
                // A first writer assigns the adjoint, unless the tiles add theirs to it.
                let assigned = s.first_write && !tiling.read_by_tiles[i];
                if s.needs_grad && s.phase != Phase::Tile && !assigned {
                    adj.fill(T::zero());
                }
            }
            if plan.steps[out].phase != Phase::Tile && plan.steps[out].needs_grad {
                match seed {
                    Seed::Cotangent(c) => whole.adjoints[out][..c.len()].copy_from_slice(c),
                    Seed::Ones => whole.adjoints[out][0] = T::one(),
                }
                // The loss's reverse sweep, down to the Reduce steps (it reads no Post value).
                sweep_phase(plan, whole, args, batch, Phase::Post, true)?;
            }
        }

        // The tiles. Whole-batch buffers the tasks write rows of: the output's values (when
        // batched) and batched wrt arguments' adjoints; taken out so the tasks share the rest.
        let mut out_values = std::mem::take(&mut whole.values[out]);
        let mut input_adjoints: SmallVec<[(usize, Vec<T>); 4]> = SmallVec::new();
        for (i, s) in plan.steps.iter().enumerate() {
            if s.phase == Phase::Tile && s.needs_grad && matches!(s.op, Op::Input(_)) {
                input_adjoints.push((i, std::mem::take(&mut whole.adjoints[i])));
            }
        }
        {
            let shared_inputs: SmallVec<[(usize, SharedMut<T>); 4]> = input_adjoints
                .iter_mut()
                .map(|(i, v)| (*i, SharedMut::new(v)))
                .collect();
            let job = TileJob {
                plan,
                whole,
                args,
                batch,
                rows: tile_rows,
                sweeps,
                b_packed: &self.b_packed,
                bt_packed: &self.bt_packed,
                out_rows: SharedMut::new(match rows {
                    OutputRows::Caller(o) => o,
                    OutputRows::Table => &mut out_values,
                }),
                input_adjoints: &shared_inputs,
                visit: visit.map(|(v, _)| v),
            };
            let tasks_ptr = SharedMut::new(&mut self.tasks[..tasks]);
            let stop = AtomicBool::new(false);
            let run_task = |t: usize| {
                // SAFETY: task t alone uses tasks[t].
                let task = unsafe { &mut tasks_ptr.range(t..t + 1)[0] };
                task.error = None;
                for p in task.partials.iter_mut() {
                    p.fill(T::zero());
                }
                if sweeps.reverse() {
                    for (s, a) in plan.steps.iter().zip(task.adjoints.iter_mut()) {
                        if s.phase == Phase::Pre {
                            a.fill(T::zero()); // (empty unless the tiles read the step)
                        }
                    }
                }
                // Each task takes an equal share of the rows, tiled from its start: 4096 rows
                // in 43 tiles of 96 left one thread a tile more than the other.
                let mine = crate::parallel::split(batch, tasks, t);
                for r0 in mine.clone().step_by(tile_rows) {
                    // The caller's thread polls for Ctrl-C; the others see its stop here.
                    if crate::interrupt::poll().is_err() {
                        stop.store(true, Ordering::Relaxed);
                    }
                    if stop.load(Ordering::Relaxed) {
                        task.error = Some(Error::Interrupted);
                        return;
                    }
                    let rows = r0..(r0 + tile_rows).min(mine.end);
                    if let Err(e) = job.sweep_tile(t, task, rows) {
                        task.error = Some(e);
                        return;
                    }
                }
            };
            crate::parallel::run(tasks, &run_task);
        }
        whole.values[out] = out_values;
        for (i, v) in input_adjoints {
            whole.adjoints[i] = v;
        }
        for task in &mut self.tasks[..tasks] {
            if let Some(e) = task.error.take() {
                return Err(e);
            }
        }

        // Combine the tasks' partial sums and parameter gradients, in task order.
        let done = &self.tasks[..tasks];
        for (i, s) in plan.steps.iter().enumerate() {
            if s.phase == Phase::Reduce {
                whole.values[i].fill(T::zero());
                add_task_sums(&mut whole.values[i], done, |task| &task.partials[i]);
            }
            if s.phase == Phase::Pre && s.needs_grad && sweeps.reverse() && tiling.read_by_tiles[i]
            {
                add_task_sums(&mut whole.adjoints[i], done, |task| &task.adjoints[i]);
            }
        }
        // After the tiles: the loss; then the reverse sweep of the Pre steps.
        sweep_phase(plan, whole, args, batch, Phase::Post, false)?;
        if sweeps.reverse() {
            sweep_phase(plan, whole, args, batch, Phase::Pre, true)?;
        }
        Ok(())
    }

    /// Sizes the per-thread tile buffers and the whole-batch rows a tiled replay writes (the
    /// output, the adjoints of batched wrt arguments). Allocates only when something grew.
    fn reserve(
        &mut self,
        plan: &Plan<T>,
        whole: &mut Whole<T>,
        batch: usize,
        tasks: usize,
    ) -> Result<()> {
        let rows = plan.tile_rows().unwrap_or(0);
        while self.tasks.len() < tasks {
            self.tasks.push(TileTask::new(plan, rows)?);
        }
        if batch > self.capacity {
            for (i, s) in plan.steps.iter().enumerate() {
                if s.phase != Phase::Tile {
                    continue;
                }
                let n = s.shape.alloc_len(batch);
                if i == plan.output && !matches!(s.op, Op::Input(_)) {
                    whole.reserve_step(i, false, n)?;
                }
                if s.needs_grad && matches!(s.op, Op::Input(_)) {
                    whole.reserve_step(i, true, n)?;
                }
            }
            self.capacity = batch;
        }
        Ok(())
    }

    /// Packs the weight operand of every product in the tiles once per replay, for the forward
    /// product (op(B)) and, when the tile's input needs a gradient, the reverse one (op(B)ᵀ),
    /// so the tiles' products read it packed instead of each packing it again.
    fn pack_weights(&mut self, plan: &Plan<T>, whole: &Whole<T>, args: &[&[T]]) {
        let steps = &plan.steps;
        for (i, s) in steps.iter().enumerate() {
            let Some(((a, b), (ta, tb))) = product(&s.op) else {
                continue;
            };
            if s.phase != Phase::Tile || steps[b].phase != Phase::Pre {
                continue;
            }
            let (_, k, n) = matmul_dims(steps, 0, (a, b), (ta, tb));
            let data = value(&Frame::new(steps, args, 0), &whole.values, b);
            let fill = |dst: &mut Vec<T>, k, n, transposed| {
                let len = packed_b_len::<T>(k, n);
                if dst.len() != len {
                    dst.resize(len, T::zero()); // first replay only
                }
                pack_whole_b(k, n, Operand { data, transposed }, dst);
            };
            fill(&mut self.b_packed[i], k, n, tb);
            if steps[a].needs_grad {
                fill(&mut self.bt_packed[i], n, k, !tb);
            }
        }
    }
}

/// `dst` += each task's `part`, in task order, each element's sum on one thread (the threads
/// take ranges of elements). On the calling thread alone, with baseline instructions, summing
/// two tasks' gradients of a 512-wide network's weights took 1.1% of its value_and_grad while
/// the other thread waited.
fn add_task_sums<T: Float>(
    dst: &mut [T],
    tasks: &[TileTask<T>],
    part: impl Fn(&TileTask<T>) -> &[T] + Sync,
) {
    crate::kernels::for_chunks_mut(dst, |range, out| {
        crate::kernels::simd::dispatch(
            #[inline(always)]
            || {
                for task in tasks {
                    let p = &part(task)[range.clone()];
                    out.iter_mut().zip(p).for_each(|(o, &p)| *o += p);
                }
            },
        )
    });
}

impl<T: Float> TileTask<T> {
    /// Buffers for tiles of `rows` rows of `plan`.
    fn new(plan: &Plan<T>, rows: usize) -> Result<Self> {
        let zeros = |n: usize| crate::buffer::filled(n, T::zero(), "a tile's buffers");
        let mut task = TileTask {
            values: Vec::new(),
            adjoints: Vec::new(),
            partials: Vec::new(),
            gemm: Vec::new(),
            error: None,
        };
        let mut gemm = 0;
        for (i, s) in plan.steps.iter().enumerate() {
            let (value, adjoint) = match s.phase {
                Phase::Tile if matches!(s.op, Op::Input(_)) || s.view => {
                    (0, s.shape.alloc_len(rows))
                }
                Phase::Tile => (s.shape.alloc_len(rows), s.shape.alloc_len(rows)),
                Phase::Reduce => (s.shape.alloc_len(0), s.shape.alloc_len(0)),
                // Only the weights and biases the tiles read get a gradient from them.
                Phase::Pre if plan.tiling.as_ref().is_some_and(|t| t.read_by_tiles[i]) => {
                    (0, s.shape.alloc_len(0))
                }
                Phase::Pre => (0, 0),
                Phase::Post => (0, 0),
            };
            task.values.push(zeros(value)?);
            task.adjoints
                .push(zeros(if s.needs_grad { adjoint } else { 0 })?);
            task.partials
                .push(zeros(if s.phase == Phase::Reduce { value } else { 0 })?);
            if let (Phase::Tile, Some((ab, t))) = (s.phase, product(&s.op)) {
                gemm = gemm.max(largest(matmul_dims(&plan.steps, rows, ab, t), 1));
            }
        }
        task.gemm = zeros(gemm)?;
        Ok(task)
    }
}

impl<T: Float> TileJob<'_, T> {
    /// One tile of `rows` (at most `self.rows` of them): forward over the Tile and Reduce steps
    /// (adding the Reduce results to the task's partials and copying output rows out), then,
    /// when asked, the reverse sweep over them, and the visit. `t` is the task's number.
    fn sweep_tile(
        &self,
        t: usize,
        task: &mut TileTask<T>,
        rows: std::ops::Range<usize>,
    ) -> Result<()> {
        let steps = &self.plan.steps;
        let (r0, n) = (rows.start, rows.len());
        debug_assert!(n <= self.rows && rows.end <= self.batch);
        let tile_args: SmallVec<[&[T]; 8]> = self
            .args
            .iter()
            .zip(&self.plan.arg_shapes)
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
            shared: Some(&self.whole.values),
            b_packed: Some(self.b_packed),
            bt_packed: Some(self.bt_packed),
            // A visited replay gives the tiles' adjoints, not the parameters' gradients.
            pre_adjoints: self.visit.is_none(),
        };
        let in_tile = |s: &Step| matches!(s.phase, Phase::Tile | Phase::Reduce);
        let out = self.plan.output;
        let per_row = steps[out].shape.len(1);
        let out_is_rows = steps[out].phase == Phase::Tile && !matches!(steps[out].op, Op::Input(_));
        // Without a reverse sweep, nothing reads the last step's tile value: its rows go
        // straight to the output, not through the tile's buffer (a copy was 2.5% of a 512-wide
        // network's forward pass).
        let direct = out_is_rows && !self.sweeps.reverse();
        for (i, s) in steps.iter().enumerate() {
            if !in_tile(s) {
                continue;
            }
            let done = if direct && i == out {
                // SAFETY: tiles own disjoint rows of the output.
                let dst = unsafe { self.out_rows.range(r0 * per_row..(r0 + n) * per_row) };
                compute_step(&f, &task.values[..i], i, dst, &mut task.gemm)
            } else {
                forward_step(&f, &mut task.values, i, &mut task.gemm)
            };
            done.map_err(|e| e.in_rows(|row| r0 + row))?;
            if s.phase == Phase::Reduce {
                let w = T::from_f64(reduce_weight(&s.op, n, self.batch));
                let (v, p) = (&task.values[i], &mut task.partials[i]);
                p.iter_mut().zip(v).for_each(|(p, &v)| *p += w * v);
            }
        }
        if out_is_rows && !direct {
            // SAFETY: tiles own disjoint rows of the output.
            let dst = unsafe { self.out_rows.range(r0 * per_row..(r0 + n) * per_row) };
            dst.copy_from_slice(&task.values[out][..n * per_row]);
        }
        let Sweeps::Both(seed) = self.sweeps else {
            return Ok(());
        };
        for (s, a) in steps.iter().zip(task.adjoints.iter_mut()) {
            if s.needs_grad && s.phase == Phase::Tile && !s.first_write {
                a[..s.shape.len(n)].fill(T::zero());
            }
        }
        for (i, s) in steps.iter().enumerate() {
            if s.needs_grad && s.phase == Phase::Reduce {
                let w = T::from_f64(reduce_weight(&s.op, n, self.batch));
                task.adjoints[i]
                    .iter_mut()
                    .zip(&self.whole.adjoints[i])
                    .for_each(|(a, &g)| *a = w * g);
            }
        }
        if steps[out].phase == Phase::Tile && steps[out].needs_grad {
            let rows = &mut task.adjoints[out][..n * per_row];
            match seed {
                Seed::Cotangent(c) => rows.copy_from_slice(&c[r0 * per_row..(r0 + n) * per_row]),
                Seed::Ones => rows.fill(T::one()),
            }
        }
        for i in (0..steps.len()).rev() {
            if steps[i].needs_grad && in_tile(&steps[i]) {
                backward_step(&f, &task.values, &mut task.adjoints, i, &mut task.gemm);
            }
        }
        for (i, shared) in self.input_adjoints {
            let w = steps[*i].shape.len(1);
            // SAFETY: tiles own disjoint rows.
            let dst = unsafe { shared.range(r0 * w..(r0 + n) * w) };
            dst.copy_from_slice(&task.adjoints[*i][..n * w]);
        }
        if let Some(visit) = self.visit {
            let view = TileView {
                frame: &f,
                values: &task.values,
                adjoints: &task.adjoints,
                rows: n,
            };
            visit(t, &view);
        }
        Ok(())
    }
}

/// The forward (or, with `reverse`, the reverse) sweep over the steps of one whole-batch phase
/// (Pre or Post), on the whole-batch runner's tables.
fn sweep_phase<T: Float>(
    plan: &Plan<T>,
    whole: &mut Whole<T>,
    args: &[&[T]],
    batch: usize,
    phase: Phase,
    reverse: bool,
) -> Result<()> {
    let f = Frame::new(&plan.steps, args, batch);
    let in_phase = |i: usize| f.steps[i].phase == phase;
    let ws = &mut whole.gemm.buf;
    if reverse {
        for i in (0..f.steps.len()).rev() {
            if in_phase(i) && f.steps[i].needs_grad {
                backward_step(&f, &whole.values, &mut whole.adjoints, i, ws);
            }
        }
    } else {
        for i in 0..f.steps.len() {
            if in_phase(i) {
                forward_step(&f, &mut whole.values, i, ws)?;
            }
        }
    }
    Ok(())
}
