//! Training loops that run entirely in the core: shuffling, batching, the forward and reverse
//! sweeps of a loss program, and the optimiser's update, with every buffer allocated before the
//! first step.
use crate::buffer::filled;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::interrupt::Pacer;
use crate::optim::Optimizer;
use crate::program::Program;

/// Training data: `rows` samples, row-major; `y` is absent for losses without targets.
#[derive(Clone, Copy)]
pub struct Dataset<'a, T> {
    pub x: &'a [T],
    pub y: Option<&'a [T]>,
    pub rows: usize,
}

/// How an epoch walks through the data.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub batch_size: usize,
    pub shuffle: bool,
    pub seed: u64,
}

/// The buffers of a training run: the epoch's sample order, one gathered batch, the gradient.
pub struct Trainer<T> {
    /// Elements per sample of X and of Y (0 without targets).
    widths: (usize, usize),
    order: Vec<usize>,
    xb: Vec<T>,
    yb: Vec<T>,
    grad: Vec<T>,
    /// Paces the checks for Ctrl-C across steps and epochs.
    pacer: Pacer,
}

impl<T: Float> Trainer<T> {
    /// Checks that `program` is a loss of (params, X[, Y]) differentiated in params, and sizes the
    /// buffers for `data` and `schedule`.
    pub fn new(program: &Program<T>, data: &Dataset<T>, schedule: &Schedule) -> Result<Self> {
        let shapes = program.arg_shapes();
        let has_y = data.y.is_some();
        let arity_ok = shapes.len() == 2 + usize::from(has_y);
        if !arity_ok || program.wrt() != [0] || program.output_shape().rank() != 0 {
            return Err(Error::Unsupported(
                "training needs a scalar loss program of (params, X[, Y]) with wrt=0".into(),
            ));
        }
        if shapes[0].is_batched() || !shapes[1].is_batched() {
            return Err(Error::Unsupported(
                "training needs unbatched parameters and a batched X".into(),
            ));
        }
        if schedule.batch_size == 0 {
            return Err(Error::Invalid("batch_size must be at least 1".into()));
        }
        if data.rows == 0 {
            return Err(Error::Invalid(
                "training needs at least one sample; X has 0 rows".into(),
            ));
        }
        let width = |k: usize, data_len: usize| {
            let w = shapes[k].len(1);
            if data_len != data.rows * w {
                return Err(Error::Shape(format!(
                    "argument {k} has {data_len} elements; expected {} rows of {w}",
                    data.rows
                )));
            }
            Ok(w)
        };
        let xw = width(1, data.x.len())?;
        let yw = match data.y {
            Some(y) => width(2, y.len())?,
            None => 0,
        };
        let b = schedule.batch_size.min(data.rows);
        let mut order = filled(data.rows, 0, "the epoch's sample order")?;
        order.iter_mut().enumerate().for_each(|(i, o)| *o = i);
        Ok(Trainer {
            widths: (xw, yw),
            order,
            xb: filled(b * xw, T::zero(), "a batch of X")?,
            yb: filled(b * yw, T::zero(), "a batch of Y")?,
            grad: filled(shapes[0].len(1), T::zero(), "the gradient")?,
            pacer: Pacer::default(),
        })
    }

    /// Runs epoch number `epoch` (it picks the shuffle): one update per batch. Returns the mean
    /// of the batch losses weighted by their sizes (for a mean loss, the epoch's mean loss at the
    /// parameters each batch saw). Stops with `Error::Interrupted` when asked (see `interrupt`),
    /// always after a whole update: the parameters and the optimiser's state are those of the
    /// last completed step.
    pub fn epoch(
        &mut self,
        program: &mut Program<T>,
        params: &mut [T],
        data: &Dataset<T>,
        schedule: &Schedule,
        epoch: u64,
        optimizer: &mut Optimizer<T>,
    ) -> Result<f64> {
        let n = data.rows;
        if schedule.shuffle {
            epoch_order(&mut self.order, schedule.seed, epoch);
        }
        let (xw, yw) = self.widths;
        let mut total = 0.0;
        for start in (0..n).step_by(schedule.batch_size) {
            let end = (start + schedule.batch_size).min(n);
            let b = end - start;
            // Asked to stop before a step, never between an epoch's last step and its loss:
            // an epoch whose steps all ran is reported whole. The update writes every
            // parameter, the batch's gather its rows.
            self.pacer.after(params.len() + b * (xw + yw))?;
            // Batches in data order are already contiguous: no copy.
            let (x, y) = if schedule.shuffle {
                for (i, &row) in self.order[start..end].iter().enumerate() {
                    self.xb[i * xw..(i + 1) * xw]
                        .copy_from_slice(&data.x[row * xw..(row + 1) * xw]);
                    if let Some(y) = data.y {
                        self.yb[i * yw..(i + 1) * yw].copy_from_slice(&y[row * yw..(row + 1) * yw]);
                    }
                }
                (&self.xb[..b * xw], &self.yb[..b * yw])
            } else {
                let y = data.y.map_or(&[][..], |y| &y[start * yw..end * yw]);
                (&data.x[start * xw..end * xw], y)
            };
            let loss = {
                let args: [&[T]; 3] = [params, x, y];
                let args = &args[..2 + usize::from(data.y.is_some())];
                let order = &self.order;
                program
                    .value_and_grad(args, &mut [&mut self.grad])
                    .map_err(|e| {
                        e.in_rows(|row| {
                            if schedule.shuffle {
                                order[start + row]
                            } else {
                                start + row
                            }
                        })
                    })?
            };
            optimizer.step(params, &self.grad)?;
            total += loss.to_f64() * b as f64;
        }
        Ok(total / n as f64)
    }
}

/// The sample order of epoch `epoch` when shuffling with `seed`: a Fisher-Yates shuffle of
/// 0..n driven by SplitMix64 seeded with (seed, epoch). Reproducible across platforms; the same
/// for every thread count.
pub fn epoch_order(order: &mut [usize], seed: u64, epoch: u64) {
    for (i, o) in order.iter_mut().enumerate() {
        *o = i;
    }
    let mut state = seed ^ epoch.wrapping_add(1).wrapping_mul(0xD1B5_4A32_D192_ED03);
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for i in (1..order.len()).rev() {
        // j uniform in 0..=i by multiply-shift (bias below 2⁻³² for any realistic n).
        let j = ((next() as u128 * (i as u128 + 1)) >> 64) as usize;
        order.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_orders_are_permutations_that_differ_by_epoch_and_seed() {
        let mut a = vec![0; 100];
        let mut b = vec![0; 100];
        epoch_order(&mut a, 0, 0);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        epoch_order(&mut b, 0, 1);
        assert_ne!(a, b);
        epoch_order(&mut b, 1, 0);
        assert_ne!(a, b);
        epoch_order(&mut b, 0, 0);
        assert_eq!(a, b);
    }
}
