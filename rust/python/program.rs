//! `Program`: a compiled program callable from Python. One FFI call per user call: arguments are
//! checked and viewed in place, the GIL is released, and the core replays into the views.
use super::arrays::{check_no_aliasing, input_view, new_out, out_view, BatchSize, InView, OutView};
use super::graph::{shape_to_py, Graph};
use super::to_py_err;
use crate::float::Float;
use crate::shape::Shape;
use numpy::Element;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyFloat, PyTuple};
use smallvec::SmallVec;
use std::sync::Mutex;

pub(super) enum Typed {
    F32(Mutex<crate::Program<f32>>),
    F64(Mutex<crate::Program<f64>>),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Value,
    Grad,
    ValueAndGrad,
    Vjp,
    PerSampleGrad,
}

/// A traced function compiled for replay: forward and reverse sweeps over preallocated buffers.
///
/// Calls on one program from several threads are safe; they run one at a time.
#[pyclass(module = "fastad._fastad", frozen)]
pub struct Program {
    pub(super) typed: Typed,
    pub(super) arg_shapes: Vec<Shape>,
    arg_names: Vec<String>,
    output_shape: Shape,
    wrt: Vec<usize>,
    /// `wrt` was given as a tuple: gradients come back as a tuple even if there is one.
    wrt_tuple: bool,
}

// Raw views cross into the GIL-free section; the owning arrays stay alive in the caller.
struct SendPtr<T>(T);
unsafe impl<T> Send for SendPtr<T> {}

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
        let g = &graph.inner;
        if output >= g.nodes().len() {
            return Err(PyValueError::new_err(format!(
                "output node {output} does not exist"
            )));
        }
        let typed = match dtype {
            "float32" => Typed::F32(Mutex::new(
                crate::Program::compile(g, output, &wrt).map_err(to_py_err)?,
            )),
            "float64" => Typed::F64(Mutex::new(
                crate::Program::compile(g, output, &wrt).map_err(to_py_err)?,
            )),
            _ => {
                return Err(PyTypeError::new_err(format!(
                    "dtype must be float32 or float64, got {dtype}"
                )))
            }
        };
        let arg_shapes = match &typed {
            Typed::F32(p) => p.lock().unwrap().arg_shapes().to_vec(),
            Typed::F64(p) => p.lock().unwrap().arg_shapes().to_vec(),
        };
        if arg_names.len() != arg_shapes.len() {
            return Err(PyValueError::new_err("one name per argument is needed"));
        }
        Ok(Program {
            typed,
            arg_shapes,
            arg_names,
            output_shape: g.shape(output),
            wrt,
            wrt_tuple,
        })
    }

    /// The program's value: a float for a scalar output, else an array (written into `out`).
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
        match self.typed {
            Typed::F32(_) => "float32",
            Typed::F64(_) => "float64",
        }
    }
    /// Number of scheduled operations (the nodes the output depends on).
    #[getter]
    fn num_ops(&self) -> usize {
        match &self.typed {
            Typed::F32(p) => p.lock().unwrap().len(),
            Typed::F64(p) => p.lock().unwrap().len(),
        }
    }

    /// Rows per tile when a large batch is replayed tile by tile, else None (see the README).
    #[getter]
    fn tile_rows(&self) -> Option<usize> {
        match &self.typed {
            Typed::F32(p) => p.lock().unwrap().tile_rows(),
            Typed::F64(p) => p.lock().unwrap().tile_rows(),
        }
    }
    /// Whether the gradient is tiled too (the loss is a sum/mean over the batch).
    #[getter]
    fn tiles_gradient(&self) -> bool {
        match &self.typed {
            Typed::F32(p) => p.lock().unwrap().tiles_gradient(),
            Typed::F64(p) => p.lock().unwrap().tiles_gradient(),
        }
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
        match &self.typed {
            Typed::F32(p) => self.call(p, args, out, value_out, mode),
            Typed::F64(p) => self.call(p, args, out, value_out, mode),
        }
    }

    pub(super) fn arg_name(&self, k: usize) -> String {
        if k < self.arg_names.len() {
            format!("argument {k} ({})", self.arg_names[k])
        } else {
            format!(
                "the cotangent (for the output of shape {})",
                self.output_shape
            )
        }
    }

    fn call<'py, T: Float + Element>(
        &self,
        program: &Mutex<crate::Program<T>>,
        args: &Bound<'py, PyTuple>,
        out: Option<&Bound<'py, PyAny>>,
        value_out: Option<&Bound<'py, PyAny>>,
        mode: Mode,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = args.py();
        let n_args = self.arg_shapes.len();
        let given = args.len();
        let expected_given = n_args + usize::from(mode == Mode::Vjp);
        if given != expected_given {
            return Err(PyTypeError::new_err(format!(
                "{}() takes {n_args} arguments{}, got {given}",
                match mode {
                    Mode::Value => "__call__",
                    Mode::Grad => "grad",
                    Mode::ValueAndGrad => "value_and_grad",
                    Mode::Vjp => "vjp",
                    Mode::PerSampleGrad => "per_sample_grad",
                },
                if mode == Mode::Vjp {
                    " and a cotangent"
                } else {
                    ""
                }
            )));
        }
        let scalar_out = self.output_shape.rank() == 0;
        // (Per-sample gradients also take one loss per sample; the core checks their output.)
        if matches!(mode, Mode::Grad | Mode::ValueAndGrad) && !scalar_out {
            return Err(PyTypeError::new_err(format!(
                "gradients need a scalar output, but this program's output has shape {}; use vjp with an output cotangent",
                self.output_shape
            )));
        }

        // Inputs (and the cotangent), viewed in place where possible.
        let mut batch = BatchSize::default();
        let name = |k: usize| self.arg_name(k);
        let mut inputs: SmallVec<[InView<'py>; 8]> = SmallVec::new();
        for k in 0..n_args {
            inputs.push(input_view::<T>(
                &args.get_item(k)?,
                &name,
                k,
                self.arg_shapes[k],
                &mut batch,
            )?);
        }
        let n = batch.get();
        if mode == Mode::Vjp {
            inputs.push(input_view::<T>(
                &args.get_item(n_args)?,
                &name,
                n_args,
                self.output_shape,
                &mut batch,
            )?);
        }

        // Outputs: the caller's `out=` arrays, checked, or new arrays.
        let out_dims =
            |s: Shape| -> SmallVec<[usize; 2]> { s.resolve(n).dims().iter().copied().collect() };
        let mut outs: SmallVec<[OutView<'py>; 4]> = SmallVec::new();
        let wants_grads = mode != Mode::Value;
        if mode == Mode::PerSampleGrad {
            if self.wrt.len() != 1 || self.wrt_tuple {
                return Err(PyValueError::new_err(
                    "per_sample_grad needs a program compiled with one wrt argument (wrt=k)",
                ));
            }
            let dims = [n, self.arg_shapes[self.wrt[0]].len(0)];
            outs.push(match out {
                Some(o) => out_view::<T>(o, "out", &dims)?,
                None => new_out::<T>(py, &dims),
            });
        } else if wants_grads {
            let k = self.wrt.len();
            match out {
                None => self
                    .wrt
                    .iter()
                    .for_each(|&w| outs.push(new_out::<T>(py, &out_dims(self.arg_shapes[w])))),
                Some(o) if !self.wrt_tuple => outs.push(out_view::<T>(
                    o,
                    "out",
                    &out_dims(self.arg_shapes[self.wrt[0]]),
                )?),
                Some(o) => {
                    let t = o.cast::<PyTuple>().map_err(|_| {
                        PyTypeError::new_err(format!(
                            "out must be a tuple of {k} arrays, one per wrt argument"
                        ))
                    })?;
                    if t.len() != k {
                        return Err(PyValueError::new_err(format!(
                            "out has {} arrays; expected {k}, one per wrt argument",
                            t.len()
                        )));
                    }
                    for (j, &w) in self.wrt.iter().enumerate() {
                        let name = if j < 8 {
                            [
                                "out[0]", "out[1]", "out[2]", "out[3]", "out[4]", "out[5]",
                                "out[6]", "out[7]",
                            ][j]
                        } else {
                            "out[...]"
                        };
                        outs.push(out_view::<T>(
                            &t.get_item(j)?,
                            name,
                            &out_dims(self.arg_shapes[w]),
                        )?);
                    }
                }
            }
        }
        // The program's output, for `__call__` with a non-scalar output or `vjp(value_out=)`.
        let value_target = match (mode, out, value_out) {
            (Mode::Value, Some(o), _) => {
                Some(out_view::<T>(o, "out", &out_dims(self.output_shape))?)
            }
            (Mode::Value, None, _) if !scalar_out => {
                Some(new_out::<T>(py, &out_dims(self.output_shape)))
            }
            (Mode::Vjp, _, Some(v)) => {
                Some(out_view::<T>(v, "value_out", &out_dims(self.output_shape))?)
            }
            _ => None,
        };
        {
            let mut all: SmallVec<[&OutView; 5]> = outs.iter().collect();
            all.extend(value_target.iter());
            let out_name = |i: usize| {
                if i < outs.len() {
                    if self.wrt_tuple {
                        format!("out[{i}]")
                    } else {
                        "out".into()
                    }
                } else if mode == Mode::Vjp {
                    "value_out".into()
                } else {
                    "out".into()
                }
            };
            check_no_aliasing(&inputs, &|k| self.arg_name(k), &all, &out_name)?;
        }

        // SAFETY: views were checked for dtype `T`, length and (for outputs) no overlap.
        let in_slices: SmallVec<[&[T]; 8]> =
            inputs.iter().map(|v| unsafe { v.slice::<T>() }).collect();
        let mut grads: SmallVec<[&mut [T]; 4]> =
            outs.iter().map(|v| unsafe { v.slice::<T>() }).collect();
        let value_slice: Option<&mut [T]> =
            value_target.as_ref().map(|v| unsafe { v.slice::<T>() });
        let work = SendPtr((&in_slices, &mut grads, value_slice));
        let result: crate::Result<T> = py.detach(move || {
            let SendPtr((in_slices, grads, value_slice)) = work;
            let mut p = program.lock().unwrap_or_else(|e| e.into_inner());
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
        let value = result.map_err(to_py_err)?;

        let grads_obj = || -> PyResult<Bound<'py, PyAny>> {
            match out {
                Some(o) => Ok(o.clone()),
                None if !self.wrt_tuple => Ok(outs[0].array.clone()),
                None => Ok(PyTuple::new(py, outs.iter().map(|o| o.array.clone()))?.into_any()),
            }
        };
        match mode {
            Mode::Value => match value_target {
                Some(v) => Ok(v.array),
                None => Ok(PyFloat::new(py, value.to_f64()).into_any()),
            },
            Mode::Grad | Mode::Vjp | Mode::PerSampleGrad => grads_obj(),
            Mode::ValueAndGrad => {
                let v = PyFloat::new(py, value.to_f64()).into_any();
                if out.is_some() {
                    Ok(v)
                } else {
                    Ok(PyTuple::new(py, [v, grads_obj()?])?.into_any())
                }
            }
        }
    }
}
