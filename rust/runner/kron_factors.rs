//! The Kronecker-factor runner: each dense layer's factors A = Σ_b ā_b ā_bᵀ (inputs with the
//! bias's 1 appended) and G = Σ_b δ_b δ_bᵀ (adjoints of the layer's product, each sample's own
//! term) summed tile by tile inside the tiled replay that computes the gradient. Each thread adds
//! its tiles' rows into its own sums while they are still in cache — the (N, width) rows are
//! never written out — and the sums are combined in thread order at the end. Only the upper
//! triangles are computed (`gram_upper`), then mirrored.
use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::gemm::{gram_upper, mirror_upper, workspace_len};
use crate::kernels::simd::dispatch;
use crate::kernels::{add_row_combination, axpy, SharedMut};
use crate::plan::dense_layers::DenseLayer;
use crate::plan::Plan;
use crate::runner::layer_rows::check_layer_buffers;
use crate::runner::tiled::{TileView, Tiled};
use crate::runner::whole::Whole;
use crate::sweep::value;

/// One task's sums over its tiles, per dense layer.
#[derive(Debug, Default)]
struct TaskSums<T> {
    /// Σ a aᵀ (inputs × inputs, upper triangle; without the bias's row and column).
    inputs: Vec<Vec<T>>,
    /// Σ a: the bias's row and column of A.
    input_sums: Vec<Vec<T>>,
    /// Σ δ δᵀ (outputs × outputs, upper triangle).
    adjoints: Vec<Vec<T>>,
    /// The Gram products' packing buffers, for one thread.
    gemm: Vec<T>,
}

/// The runner's buffers: each task's sums, kept from call to call.
#[derive(Debug, Default)]
pub struct KronSums<T> {
    tasks: Vec<TaskSums<T>>,
}

/// Adds each dense layer l's factors of this batch into `a[l]` (input_width²) when given, and
/// `g[l]` (outputs²), replaying `plan` tiled on `whole`'s and `tiled`'s buffers; `args` were
/// checked for `batch`. δ_b is sample b's own term's adjoint (for a mean loss, N times the
/// row's). Nothing is added when the replay fails. Returns the loss (the sum of the per-sample
/// losses).
pub fn kron_factors<T: Float>(
    plan: &Plan<T>,
    (whole, tiled, sums): (&mut Whole<T>, &mut Tiled<T>, &mut KronSums<T>),
    (args, batch): (&[&[T]], usize),
    mut a: Option<&mut [&mut [T]]>,
    g: &mut [&mut [T]],
) -> Result<T> {
    let ps = plan.per_sample()?;
    let layers = plan.dense_layers()?;
    let Some(rows) = plan.tile_rows() else {
        return Err(Error::Unsupported(
            "Kronecker factors: the program is not row-local in its batch".into(),
        ));
    };
    check_layer_buffers("G", g, layers, |l| (l.outputs, l.outputs))?;
    if let Some(a) = a.as_deref() {
        check_layer_buffers("A", a, layers, |l| (l.input_width(), l.input_width()))?;
    }
    let tasks = crate::parallel::num_threads();
    sums.reserve(layers, tasks, rows)?;
    let with_inputs = a.is_some();
    let shared = SharedMut::new(&mut sums.tasks[..tasks]);
    let visit = |t: usize, tile: &TileView<T>| {
        // SAFETY: task t alone uses tasks[t].
        let s = unsafe { &mut shared.range(t..t + 1)[0] };
        for (l, layer) in layers.iter().enumerate() {
            let (k, n, r) = (layer.inputs, layer.outputs, tile.rows);
            if with_inputs {
                let x = &value(tile.frame, tile.values, layer.input)[..r * k];
                gram_upper(x, r, k, &mut s.inputs[l], true, &mut s.gemm);
                if layer.bias.is_some() {
                    let sums = &mut s.input_sums[l];
                    dispatch(
                        #[inline(always)]
                        || add_row_combination(sums, r, |_| T::one(), |i| &x[i * k..]),
                    );
                }
            }
            let d = &tile.adjoints[layer.step][..r * n];
            gram_upper(d, r, n, &mut s.adjoints[l], true, &mut s.gemm);
        }
    };
    tiled.visit_tiles(plan, whole, args, batch, (&visit, tasks))?;

    // A mean loss seeds each row with 1/N: scale back to the samples' own terms.
    let scale = T::from_f64(if ps.mean { batch as f64 } else { 1.0 });
    let (first, rest) = sums.tasks[..tasks].split_at_mut(1);
    let total = &mut first[0];
    for (l, layer) in layers.iter().enumerate() {
        let one = T::one();
        for t in rest.iter() {
            axpy(&mut total.adjoints[l], one, &t.adjoints[l]);
            if with_inputs {
                axpy(&mut total.inputs[l], one, &t.inputs[l]);
                axpy(&mut total.input_sums[l], one, &t.input_sums[l]);
            }
        }
        mirror_upper(&mut total.adjoints[l], layer.outputs);
        axpy(&mut *g[l], scale * scale, &total.adjoints[l]);
        if let Some(a) = a.as_deref_mut() {
            let (k, w) = (layer.inputs, layer.input_width());
            mirror_upper(&mut total.inputs[l], k);
            let a = &mut *a[l];
            for (row, src) in a.chunks_exact_mut(w).zip(total.inputs[l].chunks_exact(k)) {
                axpy(&mut row[..k], one, src);
            }
            if w > k {
                for (i, &s) in total.input_sums[l].iter().enumerate() {
                    a[i * w + k] += s;
                    a[k * w + i] += s;
                }
                a[k * w + k] += T::from_f64(batch as f64);
            }
        }
    }
    Ok(whole.output_sum(plan, args, batch))
}

impl<T: Float> KronSums<T> {
    /// Zeroed sums for `tasks` tasks over `layers`, with Gram workspaces for tiles of `rows`
    /// rows; allocates only on the first call or when more threads or another program arrive.
    fn reserve(&mut self, layers: &[DenseLayer], tasks: usize, rows: usize) -> Result<()> {
        let what = "the Kronecker factors' sums";
        let widest = layers
            .iter()
            .map(|l| l.inputs.max(l.outputs))
            .max()
            .unwrap_or(0);
        let gemm = workspace_len(widest, widest, rows, 1);
        while self.tasks.len() < tasks {
            self.tasks.push(TaskSums::default());
        }
        for s in &mut self.tasks[..tasks] {
            let sized = |bufs: &mut Vec<Vec<T>>, len: &dyn Fn(&DenseLayer) -> usize| {
                bufs.resize_with(layers.len(), Vec::new);
                for (b, l) in bufs.iter_mut().zip(layers) {
                    b.clear(); // zeroed below, keeping the capacity
                    crate::buffer::resize(b, len(l), T::zero(), what)?;
                }
                Ok::<(), Error>(())
            };
            sized(&mut s.inputs, &|l| l.inputs * l.inputs)?;
            sized(&mut s.input_sums, &|l| l.inputs)?;
            sized(&mut s.adjoints, &|l| l.outputs * l.outputs)?;
            crate::buffer::resize(&mut s.gemm, gemm, T::zero(), what)?;
        }
        Ok(())
    }
}
