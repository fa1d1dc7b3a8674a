//! The layer-rows runner: one whole-batch forward and reverse sweep (seeded with ones, as for
//! per-sample gradients), then each dense layer's two factors of every sample's gradient
//! δ_b ā_bᵀ copied out: the inputs ā_b (with the bias's 1 appended) and the adjoints δ_b of the
//! layer's product, scaled so they belong to sample b's own term of a mean loss. Their sums
//! Σ ā āᵀ and Σ δ δᵀ are the Kronecker factors of the layer's curvature, and the Laplace
//! predictive reads them per sample; the (N, P) gradient rows are never formed.
use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::simd::dispatch;
use crate::kernels::{scaled_into, SharedMut};
use crate::plan::dense_layers::DenseLayer;
use crate::plan::Plan;
use crate::runner::per_sample::seeded_sweeps;
use crate::runner::whole::Whole;
use crate::sweep::{value, Frame};

/// For each dense layer l of `plan.dense_layers()`: writes `inputs[l]` (batch × input_width)
/// when given and `adjoints[l]` (batch × outputs), replaying on `whole`'s buffers. `args` were
/// checked for this `batch`. Returns the loss (the sum of the per-sample losses).
pub fn layer_rows<T: Float>(
    plan: &Plan<T>,
    whole: &mut Whole<T>,
    args: &[&[T]],
    batch: usize,
    mut inputs: Option<&mut [&mut [T]]>,
    adjoints: &mut [&mut [T]],
) -> Result<T> {
    let ps = plan.per_sample()?;
    let layers = plan.dense_layers()?;
    check_layer_buffers("adjoints", adjoints, layers, |l| (batch, l.outputs))?;
    if let Some(inputs) = inputs.as_deref() {
        check_layer_buffers("inputs", inputs, layers, |l| (batch, l.input_width()))?;
    }
    let loss = seeded_sweeps(plan, whole, args, batch)?;
    let frame = Frame::new(&plan.steps, args, batch);
    // A mean loss seeds each row with 1/N: scale it back to the sample's own term.
    let scale = T::from_f64(if ps.mean { batch as f64 } else { 1.0 });
    for (l, layer) in layers.iter().enumerate() {
        let n = layer.outputs;
        let d = &whole.adjoints[layer.step][..batch * n];
        let rows = SharedMut::new(&mut *adjoints[l]);
        crate::parallel::for_chunks(batch, (1 << 15) / n.max(1), &|r| {
            // SAFETY: this task alone writes rows r.
            let out = unsafe { rows.range(r.start * n..r.end * n) };
            let src = &d[r.start * n..r.end * n];
            dispatch(
                #[inline(always)]
                || scaled_into(out, scale, src, false),
            )
        });
        if let Some(inputs) = inputs.as_deref_mut() {
            let (k, w) = (layer.inputs, layer.input_width());
            let a = &value(&frame, &whole.values, layer.input)[..batch * k];
            for (dst, src) in inputs[l].chunks_exact_mut(w).zip(a.chunks_exact(k.max(1))) {
                dst[..k].copy_from_slice(src);
                if w > k {
                    dst[k] = T::one();
                }
            }
        }
    }
    Ok(loss)
}

/// Checks that `bufs` has one buffer per layer, of `shape(layer)`'s elements.
pub(crate) fn check_layer_buffers<T>(
    what: &str,
    bufs: &[&mut [T]],
    layers: &[DenseLayer],
    shape: impl Fn(&DenseLayer) -> (usize, usize),
) -> Result<()> {
    if bufs.len() != layers.len() {
        return Err(Error::Arity(format!(
            "{} {what} arrays for {} dense layers",
            bufs.len(),
            layers.len()
        )));
    }
    for (l, (b, layer)) in bufs.iter().zip(layers).enumerate() {
        let (rows, cols) = shape(layer);
        if b.len() != rows * cols {
            return Err(Error::Shape(format!(
                "{what}[{l}] has {} elements; expected ({rows}, {cols})",
                b.len()
            )));
        }
    }
    Ok(())
}
