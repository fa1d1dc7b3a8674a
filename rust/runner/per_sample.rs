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
                        || {
                            let samples = g.chunks_exact_mut(p).zip(u.chunks_exact(lu));
                            for ((g, u), v) in samples.zip(v.chunks_exact(lv)) {
                                let g = &mut g[offset..offset + lu * lv];
                                outer_rows(g, scale, u, v, !assign);
                            }
                        },
                    )
                }
                Use::Bias { step, offset } => {
                    let n = steps[step].shape.len(1);
                    let d = &adjoints[step][r.start * n..r.end * n];
                    dispatch(
                        #[inline(always)]
                        || {
                            for (g, d) in g.chunks_exact_mut(p).zip(d.chunks_exact(n)) {
                                scaled_into(&mut g[offset..offset + n], scale, d, !assign);
                            }
                        },
                    )
                }
            }
        }
    };
    crate::parallel::for_chunks(batch, (1 << 15) / p.max(1), &rows);
    Ok(loss)
}

/// The batch's forward and reverse sweep, untiled (each product's adjoint rows are needed whole),
/// seeded with ones: every row's adjoints belong to its own sample's loss term (times 1/N for a
/// mean). Returns the loss, or the sum of the per-sample losses.
pub(crate) fn seeded_sweeps<T: Float>(
    plan: &Plan<T>,
    whole: &mut Whole<T>,
    args: &[&[T]],
    batch: usize,
) -> Result<T> {
    whole.forward(plan, args, batch)?;
    whole.backward(plan, args, batch, Seed::Ones)?;
    Ok(whole.output_sum(plan, args, batch))
}
