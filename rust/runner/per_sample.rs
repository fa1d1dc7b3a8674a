//! The per-sample runner: one whole-batch forward and reverse sweep (seeded with ones), then
//! each sample's gradient row written by the closed form the plan found (`plan/per_sample.rs`):
//! δ_b a_bᵀ for a weight, δ_b for a bias. No loop over samples, no second forward pass.
use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::simd::dispatch;
use crate::kernels::{outer_rows, scaled_into, SharedMut};
use crate::plan::per_sample::Use;
use crate::plan::Plan;
use crate::runner::mode::Seed;
use crate::runner::whole::Whole;
use crate::sweep::{value, Frame};

/// Writes row b of `out` (batch × P) = the gradient of sample b's term of the loss (or of its
/// own loss, for a program with one loss per sample) with respect to the one wrt argument (P
/// elements), replaying on `whole`'s buffers. `args` were checked for this `batch`. Returns the
/// loss (the sum of the per-sample losses).
pub fn per_sample_grad<T: Float>(
    plan: &Plan<T>,
    whole: &mut Whole<T>,
    args: &[&[T]],
    batch: usize,
    out: &mut [T],
) -> Result<T> {
    let ps = plan.per_sample()?;
    let p = plan.arg_shapes[plan.wrt[0]].len(0);
    if out.len() != batch * p {
        return Err(Error::Shape(format!(
            "out has {} elements; expected ({batch}, {p})",
            out.len()
        )));
    }
    let loss = seeded_sweeps(plan, whole, args, batch)?;
    // Each use writes its own range of every row; where uses share parameters (one weight read
    // twice) the later ones add to it, and ranges no use writes stay zero.
    if ps.covered < p {
        out.fill(T::zero());
    }
    let frame = Frame::new(&plan.steps, args, batch);
    let (steps, values, adjoints) = (&plan.steps, &whole.values, &whole.adjoints);
    let scale = T::from_f64(if ps.mean { batch as f64 } else { 1.0 });
    let shared = SharedMut::new(out);
    let rows = |r: std::ops::Range<usize>| {
        // SAFETY: this task alone writes rows r.
        let g = unsafe { shared.range(r.start * p..r.end * p) };
        for (u, &assign) in ps.uses.iter().zip(&ps.first) {
            match *u {
                Use::Weight {
                    step,
                    a,
                    offset,
                    transposed,
                } => {
                    let (n, k) = (steps[step].shape.len(1), steps[a].shape.len(1));
                    let (d, x) = (&adjoints[step][..], value(&frame, values, a));
                    // W (n, k) gets δ_b x_bᵀ; stored (k, n), x_b δ_bᵀ.
                    let (u, lu, v, lv) = if transposed {
                        (d, n, x, k)
                    } else {
                        (x, k, d, n)
                    };
                    let (u, v) = (&u[r.start * lu..r.end * lu], &v[r.start * lv..r.end * lv]);
                    dispatch(
                        #[inline(always)]
                        || match assign {
                            true => {
                                outer_into_rows::<T, false>(g, p, offset, scale, (u, lu), (v, lv))
                            }
                            false => {
                                outer_into_rows::<T, true>(g, p, offset, scale, (u, lu), (v, lv))
                            }
                        },
                    )
                }
                Use::Bias { step, offset } => {
                    let n = steps[step].shape.len(1);
                    let d = &adjoints[step][r.start * n..r.end * n];
                    dispatch(
                        #[inline(always)]
                        || match assign {
                            true => scaled_into_rows::<T, false>(g, p, offset, scale, (d, n)),
                            false => scaled_into_rows::<T, true>(g, p, offset, scale, (d, n)),
                        },
                    )
                }
            }
        }
    };
    crate::parallel::for_chunks(batch, (1 << 15) / p.max(1), &rows);
    Ok(loss)
}

/// For each row b of `g` (rows of `p`): its elements `offset..` + lu·lv = scale·u_b v_bᵀ, with u_b
/// and v_b row b of `u` (rows of lu) and of `v`; added with `ACC`. `ACC` is a constant so the
/// loop carries no test per row: rows are short (a layer's 32 units), and per-row bookkeeping,
/// not arithmetic, is what these loops cost. Inline it into a `simd::dispatch` closure.
#[inline(always)]
fn outer_into_rows<T: Float, const ACC: bool>(
    g: &mut [T],
    p: usize,
    offset: usize,
    scale: T,
    (u, lu): (&[T], usize),
    (v, lv): (&[T], usize),
) {
    let samples = g.chunks_exact_mut(p).zip(u.chunks_exact(lu));
    let samples = samples.zip(v.chunks_exact(lv));
    // The shape is matched once, not per row: a layer with one input or one output (seed 002's
    // both) writes each row as one scaled copy.
    match (lu, lv) {
        (_, 1) => {
            for ((g, u), v) in samples {
                scaled_into(&mut g[offset..offset + lu], scale * v[0], u, ACC);
            }
        }
        (1, _) => {
            for ((g, u), v) in samples {
                scaled_into(&mut g[offset..offset + lv], scale * u[0], v, ACC);
            }
        }
        _ => {
            for ((g, u), v) in samples {
                outer_rows(&mut g[offset..offset + lu * lv], scale, u, v, ACC);
            }
        }
    }
}

/// As `outer_into_rows` for a bias: elements `offset..` + n of row b = scale·d_b.
#[inline(always)]
fn scaled_into_rows<T: Float, const ACC: bool>(
    g: &mut [T],
    p: usize,
    offset: usize,
    scale: T,
    (d, n): (&[T], usize),
) {
    for (g, d) in g.chunks_exact_mut(p).zip(d.chunks_exact(n)) {
        scaled_into(&mut g[offset..offset + n], scale, d, ACC);
    }
}

/// The batch's forward and reverse sweep, untiled (each product's adjoint rows are needed whole),
/// seeded with ones: every row's adjoints belong to its own sample's loss term (times 1/N for a
/// mean). The parameters' summed gradient is not computed: the callers read only the batched
/// steps' values and adjoints (a per-sample plan reads the parameters only as layers' weights
/// and biases, which are steps before the batch). Returns the loss, or the sum of the
/// per-sample losses.
pub(crate) fn seeded_sweeps<T: Float>(
    plan: &Plan<T>,
    whole: &mut Whole<T>,
    args: &[&[T]],
    batch: usize,
) -> Result<T> {
    whole.forward(plan, args, batch)?;
    whole.backward_batched_only(plan, args, batch, Seed::Ones)?;
    Ok(whole.output_sum(plan, args, batch))
}
