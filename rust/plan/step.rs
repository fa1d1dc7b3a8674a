//! One scheduled node of a plan, and the phase of a batch-tiled replay that computes it.
use crate::ir::Op;
use crate::shape::Shape;

/// One scheduled node: its op (reading earlier steps) and its shape.
#[derive(Clone, Debug)]
pub struct Step {
    pub op: Op,
    pub shape: Shape,
    /// The step reads a wrt argument, directly or not, so the reverse sweep visits it.
    pub needs_grad: bool,
    /// When a batch-tiled replay computes it (see `plan/tiling.rs`).
    pub phase: Phase,
    /// Its adjoint is written whole by its one reader (`mark_first_writes` says which readers
    /// do): that reader assigns instead of adding, and the adjoint is never zeroed first.
    pub first_write: bool,
    /// A reshape or a slice (not the output): its value is its operand's elements, read where
    /// they are (`sweep::value`), not copied into a buffer of its own.
    pub view: bool,
}

/// When a batch-tiled replay computes a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Once, before the tiles: does not depend on the batch (parameters, weight slices).
    Pre,
    /// Tile by tile: batched, and row i depends only on row i of its batched operands.
    Tile,
    /// A sum or mean over the batch: accumulated from the tiles' partial results.
    Reduce,
    /// Once, after the tiles: unbatched, computed from `Reduce` results (the loss).
    Post,
}

/// (m, k, n) of `op(a) @ op(b)` at this batch size, reading rank-1 operands as a row (a) or a
/// column (b).
pub(crate) fn matmul_dims(
    steps: &[Step],
    batch: usize,
    (a, b): (usize, usize),
    (ta, tb): (bool, bool),
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

/// The operands and transposes of a product step, if it is one.
pub(crate) fn product(op: &Op) -> Option<((usize, usize), (bool, bool))> {
    match *op {
        Op::MatMul { a, b, ta, tb } | Op::Affine { a, b, ta, tb, .. } => Some(((a, b), (ta, tb))),
        _ => None,
    }
}
