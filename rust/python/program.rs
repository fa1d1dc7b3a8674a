//! `Program`: a compiled program callable from Python. One FFI call per user call: arguments are
//! checked and viewed in place, the GIL is released, and the core replays into the views.
use super::arrays::{check_no_aliasing, input_view, new_out, out_view, InView, OutName, OutView};
use super::dtype::{typed, Dtype, Typed};
use super::errors::{run_detached, to_py_err};
use super::graph::{shape_to_py, Graph};
use super::locked::Locked;
use crate::float::Float;
use crate::plan::{arg_label, check_arity, check_scalar, Plan};
use crate::shape::{BatchSize, Shape};
use numpy::Element;
use pyo3::prelude::*;
use pyo3::types::{PyFloat, PyTuple};
use smallvec::SmallVec;

/// The core program of one element type, one call at a time.
pub(super) type LockedProgram<T> = Locked<crate::Program<T>>;

/// What a call computes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Value,
    Grad,
    ValueAndGrad,
    Vjp,
    PerSampleGrad,
}

impl Mode {
    fn method(self) -> &'static str {
        match self {
            Mode::Value => "__call__()",
            Mode::Grad => "grad()",
            Mode::ValueAndGrad => "value_and_grad()",
            Mode::Vjp => "vjp()",
            Mode::PerSampleGrad => "per_sample_grad()",
        }
    }
}

/// A traced function compiled for replay: forward and reverse sweeps over preallocated buffers.
///
/// `f(*args, out=None)` is the program's value: a float for a scalar output, else an array
/// (written into `out` when given, which is then returned). `grad`, `value_and_grad`, `vjp` and
/// `per_sample_grad` differentiate it. Calls from several threads are safe (they take turns,
/// with the GIL released); a result that cannot be allocated is a MemoryError; Ctrl-C stops a
/// long call with KeyboardInterrupt. See the README's "Calling a program".
#[pyclass(module = "fastad._fastad", frozen)]
pub struct Program {
    pub(super) typed: Typed<LockedProgram<f32>, LockedProgram<f64>>,
    // Copies of the plan's signature, read without taking the program's lock.
    pub(super) arg_shapes: Vec<Shape>,
    arg_names: Vec<String>,
    output_shape: Shape,
    wrt: Vec<usize>,
    /// `wrt` was given as a tuple: gradients come back as a tuple even if there is one.
    wrt_tuple: bool,
    tile_rows: Option<usize>,
    tiles_gradient: bool,
    num_ops: usize,
}

// Raw views cross into the GIL-free section; the owning arrays stay alive in the caller.
pub(super) struct SendPtr<T>(pub T);
unsafe impl<T> Send for SendPtr<T> {}

/// The checked views of one call.
struct Views<'py> {
    /// The arguments, then a vjp's cotangent.
    inputs: SmallVec<[InView<'py>; 8]>,
    /// The gradients (or per-sample gradients), one per wrt argument.
    grads: SmallVec<[OutView<'py>; 4]>,
    /// The program's output, for `__call__` with an array output or `vjp(value_out=)`.
    value: Option<OutView<'py>>,
}

#[pymethods]
impl Program {
    #[new]
    #[pyo3(signature = (graph, output, wrt, dtype, arg_names, wrt_tuple=false))]
    fn new(
        graph: &Graph,
        output: usize,
        wrt: Vec<usize>,
        dtype: &str,
        arg_names: Vec<String>,
        wrt_tuple: bool,
    ) -> PyResult<Self> {
        fn compile<T: Float>(
            g: &crate::Graph,
            output: usize,
            wrt: &[usize],
            names: &[String],
        ) -> crate::Result<crate::Program<T>> {
            let plan = Plan::compile(g, output, wrt)?.with_arg_names(names.to_vec())?;
            crate::Program::from_plan(plan)
        }
        let g = &graph.inner;
        let compiled = |dtype| -> crate::Result<Typed<LockedProgram<f32>, LockedProgram<f64>>> {
            Ok(match dtype {
                Dtype::F32 => Typed::F32(Locked::new(compile(g, output, &wrt, &arg_names)?)),
                Dtype::F64 => Typed::F64(Locked::new(compile(g, output, &wrt, &arg_names)?)),
            })
        };
        let typed = Dtype::from_name(dtype)
            .and_then(compiled)
            .map_err(to_py_err)?;
        let (arg_shapes, output_shape, tile_rows, tiles_gradient, num_ops) = typed!(&typed, p => {
            let p = p.lock().map_err(to_py_err)?;
            (p.arg_shapes().to_vec(), p.output_shape(), p.tile_rows(), p.tiles_gradient(), p.len())
        });
        Ok(Program {
            typed,
            arg_shapes,
            arg_names,
            output_shape,
            wrt,
            wrt_tuple,
            tile_rows,
            tiles_gradient,
            num_ops,
        })
    }

    /// `f(*args, out=None)`: the program's value, a float for a scalar output, else an array
    /// (written into `out` when given, which is then returned).
    #[pyo3(signature = (*args, out=None))]
    fn __call__<'py>(
        &self,
        args: &Bound<'py, PyTuple>,
        out: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.dispatch(args, out, None, Mode::Value)
    }

    /// Gradient(s) of the scalar output with respect to the `wrt` arguments.
    #[pyo3(signature = (*args, out=None))]
    fn grad<'py>(
        &self,
        args: &Bound<'py, PyTuple>,
        out: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.dispatch(args, out, None, Mode::Grad)
    }

    /// The scalar value, with the gradient(s) written into `out`; `(value, grads)` without `out`.
    #[pyo3(signature = (*args, out=None))]
    fn value_and_grad<'py>(
        &self,
        args: &Bound<'py, PyTuple>,
        out: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.dispatch(args, out, None, Mode::ValueAndGrad)
    }

    /// Per-sample gradients (N, P): row b is the gradient of sample b's term of the loss with
    /// respect to the one `wrt` argument (P elements), from one batched pass. The output must be
    /// a sum or mean over the batch, or one loss per sample (N,), and the argument read only as
    /// dense layers' weights and biases (directly or through slices); other programs raise a
    /// ValueError naming the op.
    #[pyo3(signature = (*args, out=None))]
    fn per_sample_grad<'py>(
        &self,
        args: &Bound<'py, PyTuple>,
        out: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.dispatch(args, out, None, Mode::PerSampleGrad)
    }

    /// `vjp(*args, cotangent, out=None, value_out=None)`: the output cotangent pulled back to the
    /// `wrt` arguments (Jᵀ·cotangent). `value_out` receives the program's output when given.
    #[pyo3(signature = (*args, out=None, value_out=None))]
    fn vjp<'py>(
        &self,
        args: &Bound<'py, PyTuple>,
        out: Option<&Bound<'py, PyAny>>,
        value_out: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.dispatch(args, out, value_out, Mode::Vjp)
    }

    /// The argument shapes, `None` for the batch axis.
    #[getter]
    fn arg_shapes(&self) -> Vec<Vec<Option<usize>>> {
        self.arg_shapes.iter().map(|s| shape_to_py(*s)).collect()
    }
    #[getter]
    fn output_shape(&self) -> Vec<Option<usize>> {
        shape_to_py(self.output_shape)
    }
    #[getter]
    fn wrt(&self) -> Vec<usize> {
        self.wrt.clone()
    }
    #[getter]
    fn dtype(&self) -> &'static str {
        self.typed.dtype().name()
    }
    /// Number of scheduled operations (the nodes the output depends on).
    #[getter]
    fn num_ops(&self) -> usize {
        self.num_ops
    }
    /// Rows per tile when a large batch is replayed tile by tile, else None (see the README).
    #[getter]
    fn tile_rows(&self) -> Option<usize> {
        self.tile_rows
    }
    /// Whether the gradient is tiled too (the loss is a sum/mean over the batch).
    #[getter]
    fn tiles_gradient(&self) -> bool {
        self.tiles_gradient
    }

    fn __repr__(&self) -> String {
        let args: Vec<String> = self
            .arg_names
            .iter()
            .zip(&self.arg_shapes)
            .map(|(n, s)| format!("{n}: {s}"))
            .collect();
        format!(
            "<fastad.Program ({}) -> {}, {}, wrt={:?}>",
            args.join(", "),
            self.output_shape,
            self.dtype(),
            self.wrt
        )
    }
}

impl Program {
    fn dispatch<'py>(
        &self,
        args: &Bound<'py, PyTuple>,
        out: Option<&Bound<'py, PyAny>>,
        value_out: Option<&Bound<'py, PyAny>>,
        mode: Mode,
    ) -> PyResult<Bound<'py, PyAny>> {
        typed!(&self.typed, p => self.call(p, args, out, value_out, mode))
    }

    /// The program's arguments, the first items of `args`, viewed in place where possible and
    /// checked against their shapes; `batch` learns the batch size they imply.
    pub(super) fn arg_views<'py, T: Float + Element>(
        &self,
        args: &Bound<'py, PyTuple>,
        batch: &mut BatchSize,
    ) -> PyResult<SmallVec<[InView<'py>; 8]>> {
        let name = |k: usize| self.arg_name(k);
        let mut views = SmallVec::new();
        for (k, &shape) in self.arg_shapes.iter().enumerate() {
            views.push(input_view::<T>(&args.get_item(k)?, &name, k, shape, batch)?);
        }
        Ok(views)
    }

    /// Argument `k` in messages: "argument 1 (X)", or the cotangent.
    pub(super) fn arg_name(&self, k: usize) -> String {
        arg_label(k, &self.arg_names, self.arg_shapes.len(), self.output_shape)
    }

    fn call<'py, T: Float + Element>(
        &self,
        program: &LockedProgram<T>,
        args: &Bound<'py, PyTuple>,
        out: Option<&Bound<'py, PyAny>>,
        value_out: Option<&Bound<'py, PyAny>>,
        mode: Mode,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = args.py();
        let n_args = self.arg_shapes.len();
        let cotangent = (mode == Mode::Vjp).then_some("a cotangent");
        check_arity(mode.method(), n_args, args.len(), cotangent).map_err(to_py_err)?;
        let views = self.views::<T>(args, out, value_out, mode)?;

        // SAFETY: views were checked for dtype `T`, length and (for outputs) no overlap.
        let in_slices: SmallVec<[&[T]; 8]> = views
            .inputs
            .iter()
            .map(|v| unsafe { v.slice::<T>() })
            .collect();
        let mut grads: SmallVec<[&mut [T]; 4]> = views
            .grads
            .iter()
            .map(|v| unsafe { v.slice::<T>() })
            .collect();
        let value_slice: Option<&mut [T]> = views.value.as_ref().map(|v| unsafe { v.slice::<T>() });
        let work = SendPtr((&in_slices, &mut grads, value_slice));
        let value = run_detached(py, move || {
            let SendPtr((in_slices, grads, value_slice)) = work;
            let mut p = program.lock()?;
            let args = &in_slices[..n_args];
            match mode {
                Mode::Value => match value_slice {
                    Some(v) => p.eval(args, v).map(|_| T::zero()),
                    None => {
                        let mut v = [T::zero()];
                        p.eval(args, &mut v).map(|_| v[0])
                    }
                },
                Mode::Grad | Mode::ValueAndGrad => p.value_and_grad(args, grads),
                Mode::Vjp => p
                    .vjp(args, in_slices[n_args], grads, value_slice)
                    .map(|_| T::zero()),
                Mode::PerSampleGrad => p.per_sample_grad(args, grads[0]),
            }
        });
        drop((in_slices, grads));
        let value = value?;
        self.result(py, mode, value, views, out)
    }

    /// Checks the call's arrays: the arguments (and a vjp's cotangent) viewed in place where
    /// possible, and the outputs, the caller's `out=` arrays or new ones.
    fn views<'py, T: Float + Element>(
        &self,
        args: &Bound<'py, PyTuple>,
        out: Option<&Bound<'py, PyAny>>,
        value_out: Option<&Bound<'py, PyAny>>,
        mode: Mode,
    ) -> PyResult<Views<'py>> {
        let py = args.py();
        let n_args = self.arg_shapes.len();
        if matches!(mode, Mode::Grad | Mode::ValueAndGrad) {
            // (Per-sample gradients also take one loss per sample; the core checks their output.)
            check_scalar(self.output_shape).map_err(to_py_err)?;
        }
        let mut batch = BatchSize::default();
        let name = |k: usize| self.arg_name(k);
        let mut inputs = self.arg_views::<T>(args, &mut batch)?;
        if mode == Mode::Vjp {
            let c = args.get_item(n_args)?;
            let view = input_view::<T>(&c, &name, n_args, self.output_shape, &mut batch)?;
            inputs.push(view);
        }
        let n = batch.get();
        let dims =
            |s: Shape| -> SmallVec<[usize; 2]> { s.resolve(n).dims().iter().copied().collect() };
        let grads = match mode {
            Mode::Value => SmallVec::new(),
            Mode::PerSampleGrad => {
                if self.wrt.len() != 1 || self.wrt_tuple {
                    return Err(to_py_err(crate::Error::Unsupported(
                        "per_sample_grad needs a program compiled with one wrt argument (wrt=k)"
                            .into(),
                    )));
                }
                let shape = [n, self.arg_shapes[self.wrt[0]].len(0)];
                let mut v = SmallVec::new();
                v.push(match out {
                    Some(o) => out_view::<T>(o, OutName::Plain("out"), &shape)?,
                    None => new_out::<T>(py, &shape)?,
                });
                v
            }
            _ => self.grad_views::<T>(py, out, &dims)?,
        };
        let output = dims(self.output_shape);
        let value = match (mode, out, value_out) {
            (Mode::Value, Some(o), _) => Some(out_view::<T>(o, OutName::Plain("out"), &output)?),
            (Mode::Value, None, _) if self.output_shape.rank() != 0 => {
                Some(new_out::<T>(py, &output)?)
            }
            (Mode::Vjp, _, Some(v)) => {
                Some(out_view::<T>(v, OutName::Plain("value_out"), &output)?)
            }
            _ => None,
        };
        {
            let mut all: SmallVec<[&OutView; 5]> = grads.iter().collect();
            all.extend(value.iter());
            let grad_count = grads.len();
            let out_name = |i: usize| match i {
                i if i < grad_count && self.wrt_tuple => OutName::Indexed("out", i),
                i if i >= grad_count && mode == Mode::Vjp => OutName::Plain("value_out"),
                _ => OutName::Plain("out"),
            };
            check_no_aliasing(&inputs, &name, &all, &out_name)?;
        }
        Ok(Views {
            inputs,
            grads,
            value,
        })
    }

    /// The gradient outputs: one per wrt argument, the caller's (`out`, or a tuple of them for a
    /// tuple `wrt`) or new arrays.
    fn grad_views<'py, T: Float + Element>(
        &self,
        py: Python<'py>,
        out: Option<&Bound<'py, PyAny>>,
        dims: &dyn Fn(Shape) -> SmallVec<[usize; 2]>,
    ) -> PyResult<SmallVec<[OutView<'py>; 4]>> {
        let shape_of = |w: usize| dims(self.arg_shapes[w]);
        let mut views = SmallVec::new();
        match out {
            None => {
                for &w in &self.wrt {
                    views.push(new_out::<T>(py, &shape_of(w))?);
                }
            }
            Some(o) if !self.wrt_tuple => views.push(out_view::<T>(
                o,
                OutName::Plain("out"),
                &shape_of(self.wrt[0]),
            )?),
            Some(o) => {
                let k = self.wrt.len();
                let t = o.cast::<PyTuple>().map_err(|_| {
                    to_py_err(crate::Error::Dtype(format!(
                        "out must be a tuple of {k} arrays, one per wrt argument"
                    )))
                })?;
                if t.len() != k {
                    return Err(to_py_err(crate::Error::Shape(format!(
                        "out has {} arrays; expected {k}, one per wrt argument",
                        t.len()
                    ))));
                }
                for (j, &w) in self.wrt.iter().enumerate() {
                    let name = OutName::Indexed("out", j);
                    views.push(out_view::<T>(&t.get_item(j)?, name, &shape_of(w))?);
                }
            }
        }
        Ok(views)
    }

    /// What a call returns, after the core wrote into the views.
    fn result<'py>(
        &self,
        py: Python<'py>,
        mode: Mode,
        value: impl Float,
        views: Views<'py>,
        out: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let grads = || -> PyResult<Bound<'py, PyAny>> {
            match out {
                Some(o) => Ok(o.clone()),
                None if !self.wrt_tuple || mode == Mode::PerSampleGrad => {
                    Ok(views.grads[0].array.clone())
                }
                None => {
                    Ok(PyTuple::new(py, views.grads.iter().map(|o| o.array.clone()))?.into_any())
                }
            }
        };
        let number = || PyFloat::new(py, value.to_f64()).into_any();
        match mode {
            Mode::Value => Ok(views
                .value
                .as_ref()
                .map_or_else(number, |v| v.array.clone())),
            Mode::Grad | Mode::Vjp | Mode::PerSampleGrad => grads(),
            Mode::ValueAndGrad if out.is_some() => Ok(number()),
            Mode::ValueAndGrad => Ok(PyTuple::new(py, [number(), grads()?])?.into_any()),
        }
    }
}
