//! `Program`'s entry points for `ndarray` views: shapes are checked from the views' dimensions
//! (with the rule the Python bindings use, `BatchSize::check`), the data must be in standard
//! (C-contiguous) layout, and the replay runs on the same flat buffers as the slice entry points.
//! Nothing is copied and, after the first call at a batch size, nothing is allocated (up to
//! eight arguments and four gradients).
//!
//! ```
//! use fastad::{Axis, Graph, Program, ReduceOp, Shape, UnaryOp};
//! use ndarray::{array, Array2};
//! let mut g = Graph::new();
//! let x = g.input(Shape::batch_of(2));
//! let y = g.unary(UnaryOp::Square, x).unwrap();
//! let s = g.reduce(ReduceOp::Sum, y, Axis::All, false).unwrap();
//! let mut p = Program::<f64>::compile(&g, s, &[0]).unwrap();
//! let x = array![[1.0, 2.0], [3.0, 4.0]];
//! let mut gx = Array2::<f64>::zeros((2, 2));
//! let v = p
//!     .value_and_grad_view(&[x.view().into_dyn()], &mut [gx.view_mut().into_dyn()])
//!     .unwrap();
//! assert_eq!(v, 30.0);
//! assert_eq!(gx, array![[2.0, 4.0], [6.0, 8.0]]);
//! ```
use super::Program;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::shape::{fmt_dims, BatchSize, Shape};
use ndarray::{ArrayViewD, ArrayViewMutD};
use smallvec::SmallVec;

type Slices<'a, T> = SmallVec<[&'a [T]; 8]>;
type SlicesMut<'a, T> = SmallVec<[&'a mut [T]; 4]>;

impl<T: Float> Program<T> {
    /// `eval` on views: the output, of the output's shape for this batch, into `out`.
    pub fn eval_view(&mut self, args: &[ArrayViewD<T>], mut out: ArrayViewMutD<T>) -> Result<()> {
        let (args, batch) = self.arg_slices(args, None)?;
        let out = out_slice("out", &mut out, self.output_shape(), batch)?;
        self.eval(&args, out)
    }

    /// `value_and_grad` on views: the scalar value; one gradient view per wrt argument.
    pub fn value_and_grad_view(
        &mut self,
        args: &[ArrayViewD<T>],
        grads: &mut [ArrayViewMutD<T>],
    ) -> Result<T> {
        self.plan.check_scalar_output()?;
        let (args, batch) = self.arg_slices(args, None)?;
        let mut grads = self.grad_slices(grads, batch)?;
        self.value_and_grad(&args, &mut grads)
    }

    /// `vjp` on views: the cotangent has the output's shape; `value_out`, when given, receives
    /// the output.
    pub fn vjp_view(
        &mut self,
        args: &[ArrayViewD<T>],
        cotangent: ArrayViewD<T>,
        grads: &mut [ArrayViewMutD<T>],
        mut value_out: Option<ArrayViewMutD<T>>,
    ) -> Result<()> {
        let (args, batch) = self.arg_slices(args, Some(&cotangent))?;
        let cotangent = in_slice(&cotangent, &|| "the cotangent".into())?;
        let mut grads = self.grad_slices(grads, batch)?;
        let value = match value_out.as_mut() {
            Some(v) => Some(out_slice("value_out", v, self.output_shape(), batch)?),
            None => None,
        };
        self.vjp(&args, cotangent, &mut grads, value)
    }

    /// `per_sample_grad` on views: `out` is (N, P); returns the loss.
    pub fn per_sample_grad_view(
        &mut self,
        args: &[ArrayViewD<T>],
        mut out: ArrayViewMutD<T>,
    ) -> Result<T> {
        let (args, batch) = self.arg_slices(args, None)?;
        // Refused programs (and those without exactly one wrt argument) stop here.
        self.plan.per_sample()?;
        let params = self.arg_shapes()[self.wrt()[0]].len(0);
        let out = out_slice("out", &mut out, Shape::matrix(batch, params), batch)?;
        self.per_sample_grad(&args, out)
    }

    /// The arguments (and a vjp's cotangent, checked against the output's shape) as slices,
    /// with the batch size their shapes imply.
    fn arg_slices<'a>(
        &self,
        args: &'a [ArrayViewD<'a, T>],
        cotangent: Option<&ArrayViewD<T>>,
    ) -> Result<(Slices<'a, T>, usize)> {
        self.plan.check_arity("the program", args.len(), None)?;
        let mut batch = BatchSize::default();
        let name = |k: usize| self.plan.arg_label(k);
        let mut slices = Slices::new();
        for (k, (a, &s)) in args.iter().zip(self.arg_shapes()).enumerate() {
            batch.check(k, a.shape(), s, &name)?;
            slices.push(in_slice(a, &|| name(k))?);
        }
        if let Some(c) = cotangent {
            batch.check(args.len(), c.shape(), self.output_shape(), &name)?;
        }
        Ok((slices, batch.get()))
    }

    /// One gradient view per wrt argument, each of its argument's shape, as slices.
    fn grad_slices<'a>(
        &self,
        grads: &'a mut [ArrayViewMutD<T>],
        batch: usize,
    ) -> Result<SlicesMut<'a, T>> {
        if grads.len() != self.wrt().len() {
            return Err(Error::Arity(format!(
                "expected {} gradient views (one per wrt argument), got {}",
                self.wrt().len(),
                grads.len()
            )));
        }
        let shapes = self.arg_shapes();
        grads
            .iter_mut()
            .zip(self.wrt())
            .map(|(g, &w)| out_slice("a gradient view", g, shapes[w], batch))
            .collect()
    }
}

/// A view's data as a slice, if it is in standard layout.
fn in_slice<'a, T>(v: &'a ArrayViewD<T>, name: &dyn Fn() -> String) -> Result<&'a [T]> {
    v.as_slice()
        .ok_or_else(|| Error::Shape(format!("{} must be C-contiguous (standard layout)", name())))
}

/// An output view's data as a slice: exactly `shape` at this batch size, standard layout.
fn out_slice<'a, T>(
    what: &str,
    v: &'a mut ArrayViewMutD<T>,
    shape: Shape,
    batch: usize,
) -> Result<&'a mut [T]> {
    let expected = shape.resolve(batch);
    if v.shape() != expected.dims() {
        return Err(Error::Shape(format!(
            "{what} has shape {}; expected {}",
            fmt_dims(v.shape()),
            fmt_dims(expected.dims())
        )));
    }
    v.as_slice_mut()
        .ok_or_else(|| Error::Shape(format!("{what} must be C-contiguous (standard layout)")))
}
