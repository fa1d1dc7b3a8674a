//! How a batched program is tiled (DESIGN.md, performance principle 1), decided at compile time.
//!
//! A batched program whose batched steps are row-local (row i of a step depends only on row i of
//! its batched operands) can be replayed tile by tile (`runner/tiled.rs`). The schedule splits
//! into phases (`Phase`): steps that do not depend on the batch run once before the tiles
//! (`Pre`: weights, slices of a parameter vector), sums and means over the batch (`Reduce`) are
//! accumulated from the tiles' partial results, and what follows them (`Post`: the loss) runs
//! once after.
//!
//! The reverse sweep over a tile needs the adjoints of the `Reduce` steps before the tiles are
//! done, so the gradient is tiled only when the `Post` steps' reverse sweep reads no `Post` value
//! (the loss is a sum or mean over the batch, plus terms of the parameters, scaled by constants:
//! every loss fastad ships). Other programs replay their gradient untiled.
use crate::ir::{Axis, BinaryOp, Op, ReduceOp, UnaryOp};
use crate::plan::step::{matmul_dims, product, Phase, Step};
use crate::shape::{Dim, Shape};

/// Bytes of tile-sized values and adjoints per thread: the tile stays in L2/L3 (but see
/// WIDE_PRODUCT_ROWS).
const TILE_BYTES: usize = 2 << 20;
/// Tile rows are a multiple of this (every GEMM micro-kernel's MR divides it) and at least it.
const ROW_QUANTUM: usize = 24;
const MAX_ROWS: usize = 1024;
/// Rows a tile has at least when it runs a wide product (depth and width both WIDE or more):
/// sixteen of the micro-kernels' 12-row slivers, though the tile then outgrows L2. A 512-wide
/// network's products ran 5–8% slower on 96-row tiles than on whole batches (one thread). With
/// 192 rows (Xeon, 2 threads, old and new alternated in one process) value_and_grad took 6.9%
/// less time for that network in f32, 17% less in f64, 2.4% less for a 784 → 512 → 512 → 10
/// classifier (AVX2 kernels: 6.4%, 16%, 3.3%). Seed 000's narrow products keep their L2-sized
/// tiles: its gradient ran 20% slower on tiles twice as large.
const WIDE_PRODUCT_ROWS: usize = 192;
const WIDE: usize = 256;

/// How a program is tiled, decided at compile time.
#[derive(Clone, Debug)]
pub struct TilePlan {
    /// Rows per tile.
    pub rows: usize,
    /// The gradient can be tiled too (see the module comment).
    pub grad_in_one_pass: bool,
    /// A batched output's rows can go straight to the caller (`writes_output_directly`).
    pub output_direct: bool,
    /// Per step: whether the tiles (a Tile or Reduce step) read it. A Pre step they read is a
    /// weight or bias of their products, whose adjoint each task's reverse sweep adds to. (The
    /// parameter vector it was sliced from, say, gets its gradient after the tiles, from the
    /// Pre steps' reverse sweep.)
    pub read_by_tiles: Vec<bool>,
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
    let wide_products = steps.iter().filter(|s| s.phase == Phase::Tile).any(|s| {
        product(&s.op).is_some_and(|(ab, t)| {
            let (_, k, n) = matmul_dims(steps, 1, ab, t);
            k >= WIDE && n >= WIDE
        })
    });
    let least = if wide_products {
        WIDE_PRODUCT_ROWS
    } else {
        ROW_QUANTUM
    };
    let rows = (TILE_BYTES / (row_elems * elem_bytes)).clamp(least, MAX_ROWS);
    let grad_in_one_pass = (0..steps.len()).all(|i| post_backward_reads_no_post_value(steps, i));
    let out = &steps[steps.len() - 1];
    let output_direct = out.phase == Phase::Tile
        && !matches!(out.op, Op::Input(_))
        && !steps
            .iter()
            .any(|s| matches!(s.op, Op::TakeAlongRows { .. }));
    let mut read_by_tiles = vec![false; steps.len()];
    for s in steps
        .iter()
        .filter(|s| matches!(s.phase, Phase::Tile | Phase::Reduce))
    {
        let (ins, n) = s.op.inputs();
        for &i in &ins[..n] {
            read_by_tiles[i] = true;
        }
    }
    Some(TilePlan {
        rows: rows / ROW_QUANTUM * ROW_QUANTUM,
        grad_in_one_pass,
        output_direct,
        read_by_tiles,
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
