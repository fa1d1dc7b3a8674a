//! Where per-sample gradients come from, decided at compile time: the closed form of a dense
//! layer. For a product Z = A Wᵀ (+ b) with A's row a_b and Z's adjoint row δ_b, sample b's
//! gradient is δ_b a_bᵀ for W and δ_b for b; the adjoints come from one ordinary reverse sweep
//! over the batch (`runner/per_sample.rs` writes the rows).
//!
//! It applies when the output is a sum or mean over the batch of per-row terms, or the vector of
//! those terms, one loss per sample (so the batch's reverse sweep, seeded with ones, gives each
//! row its own sample's adjoint, scaled by 1/N for a mean), and the differentiated argument is
//! read only as layers' weights and biases, directly or through slices of a flat parameter
//! vector. Other programs get the reason, kept in the plan and returned when asked.
use crate::error::{Error, Result};
use crate::ir::{Op, ReduceOp};
use crate::plan::step::{Phase, Step};
use crate::plan::tiling::TilePlan;
use crate::shape::{Dim, Shape};

/// One place the parameters enter a batched product.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Use {
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

/// How a program's per-sample gradients are written.
#[derive(Clone, Debug)]
pub struct PerSamplePlan {
    pub(crate) uses: Vec<Use>,
    /// Per use: whether it is the first to write its range of a row (it assigns; later ones add).
    pub(crate) first: Vec<bool>,
    /// Elements of a row the first writes cover; when fewer than P, the rest must be zeroed.
    pub(crate) covered: usize,
    /// The loss is a mean over the batch, so each row's adjoint is 1/N of its sample's gradient.
    pub(crate) mean: bool,
}

/// What the analysis reads of a plan being compiled.
pub(crate) struct Program<'a> {
    pub steps: &'a [Step],
    pub wrt: &'a [usize],
    pub arg_shapes: &'a [Shape],
    pub arg_steps: &'a [Option<usize>],
    pub tiling: Option<&'a TilePlan>,
}

/// The error for a program without per-sample gradients, saying why.
fn refused<R>(why: String) -> Result<R> {
    Err(Error::Unsupported(format!("per-sample gradients: {why}")))
}

/// Where the differentiated argument enters, or why per-sample gradients are not possible.
pub(crate) fn plan(p: &Program) -> Result<PerSamplePlan> {
    if p.wrt.len() != 1 || p.arg_shapes[p.wrt[0]].is_batched() {
        return refused(
            "they need exactly one differentiated argument, without a batch axis".into(),
        );
    }
    let out = p.steps[p.steps.len() - 1].shape;
    if out.dims().first() == Some(&Dim::Batch) && out.len(1) == 1 {
        // One loss per sample: each must depend on its own sample alone. A tiling plan exists
        // only when every batched step is row-local, and a batched output that reads a sum over
        // the batch has none.
        if p.tiling.is_none() {
            return refused(
                "each per-sample loss must depend on its own sample alone (no operation mixing \
                 rows, such as a sum over the batch)"
                    .into(),
            );
        }
        return uses(p, false);
    }
    if out.rank() != 0 {
        return refused(format!(
            "the output must be a scalar loss (a sum or mean over the batch) or one loss per \
             sample, (N,); not of shape {out}"
        ));
    }
    let mut reduces = p.steps.iter().filter(|s| s.phase == Phase::Reduce);
    let (first, second) = (reduces.next(), reduces.next());
    let one_pass = p.tiling.is_some_and(|t| t.grad_in_one_pass);
    match (first, second) {
        (Some(reduce), None) if one_pass => {
            uses(p, matches!(reduce.op, Op::Reduce(ReduceOp::Mean, ..)))
        }
        _ => refused(
            "the output must be a sum or mean over the batch of per-sample terms (a loss of the \
             whole batch, such as (Σ y)², has no per-sample split)"
                .into(),
        ),
    }
}

/// Where the differentiated argument is read: only as dense layers' weights and biases.
fn uses(p: &Program, mean: bool) -> Result<PerSamplePlan> {
    let steps = p.steps;
    let Some(param) = p.arg_steps[p.wrt[0]] else {
        // The output does not read it: every row is zero.
        return Ok(PerSamplePlan {
            uses: Vec::new(),
            first: Vec::new(),
            covered: 0,
            mean,
        });
    };
    let mut uses = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        let (ins, n) = s.op.inputs();
        for &j in &ins[..n] {
            // The parameter itself, or a slice of it.
            let offset = match steps[j].op {
                _ if j == param => 0,
                Op::Slice { x, start } if x == param => start,
                _ => continue,
            };
            if j != param && matches!(s.op, Op::Slice { .. }) {
                return refused(format!(
                    "a slice of the parameters is sliced again (to shape {})",
                    s.shape
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
                } if b == j && a != j && steps[a].phase == Phase::Tile => uses.push(Use::Weight {
                    step: i,
                    a,
                    offset,
                    transposed: tb,
                }),
                Op::Affine { bias, a, b, .. } if bias == j && a != j && b != j => {
                    uses.push(Use::Bias { step: i, offset })
                }
                _ => {
                    return refused(format!(
                        "the parameters are read by {} (giving shape {}), which is not a dense \
                         layer's weight or bias: per-sample gradients need the parameters used \
                         only as W in X @ W or X @ W.T (the batch X on the left), or as a bias \
                         added to such a product",
                        s.op.describe(),
                        s.shape
                    ))
                }
            }
        }
    }
    // A product of width 0 reads no parameters (and its rows of length 0 cannot be chunked).
    let len = |u: &Use| use_len(steps, u);
    uses.retain(|u| len(u) > 0);
    let (first, covered) = first_writes(&uses, len);
    Ok(PerSamplePlan {
        uses,
        first,
        covered,
        mean,
    })
}

/// Elements of the parameters a use reads.
fn use_len(steps: &[Step], u: &Use) -> usize {
    match *u {
        Use::Weight { step, a, .. } => steps[step].shape.len(1) * steps[a].shape.len(1),
        Use::Bias { step, .. } => steps[step].shape.len(1),
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
