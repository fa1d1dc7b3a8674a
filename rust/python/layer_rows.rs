//! A program's dense layers, their per-sample rows (`runner/layer_rows.rs`) and their Kronecker
//! factors (`runner/kron_factors.rs`), for the Python layer's curvature and Laplace predictive:
//! module functions over a `Program`, checked like every call (dtype, exact shapes, no
//! aliasing) and run without the GIL.
use super::arrays::{check_no_aliasing, out_view, InView, OutName, OutView};
use super::dtype::typed;
use super::errors::{run_detached, to_py_err};
use super::program::{LockedProgram, Program, SendPtr};
use crate::float::Float;
use crate::shape::BatchSize;
use numpy::Element;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};
use smallvec::SmallVec;

/// A layer as Python sees it: (weight offset, bias offset or None, inputs, outputs).
type LayerTuple = (usize, Option<usize>, usize, usize);

/// The dense layers `program`'s differentiated argument is read as, in order: tuples
/// (weight offset, bias offset or None, inputs, outputs). Raises a ValueError saying why for a
/// program whose parameters are not read as layers X @ W.T (+ b).
#[pyfunction]
pub fn dense_layers(program: &Program) -> PyResult<Vec<LayerTuple>> {
    typed!(&program.typed, p => {
        let p = p.lock().map_err(to_py_err)?;
        let layers = p.dense_layers().map_err(to_py_err)?;
        Ok(layers.iter().map(|l| (l.weight, l.bias, l.inputs, l.outputs)).collect())
    })
}

/// `layer_rows(program, *args, adjoints, inputs=None)`: one batched forward and reverse sweep
/// of `program` (a loss with per-sample gradients), writing for each dense layer l the adjoints
/// δ_b of its product into `adjoints[l]` (N, outputs) and, when given, its inputs with a 1
/// appended for the bias into `inputs[l]` (N, inputs + 1): the two factors of each sample's
/// gradient δ_b ā_bᵀ (scaled to the sample's own term of a mean loss). Returns the loss.
#[pyfunction]
#[pyo3(signature = (program, *args, adjoints, inputs=None))]
pub fn layer_rows<'py>(
    program: &Program,
    args: &Bound<'py, PyTuple>,
    adjoints: &Bound<'py, PyList>,
    inputs: Option<&Bound<'py, PyList>>,
) -> PyResult<f64> {
    typed!(&program.typed, p => rows(program, p, args, adjoints, inputs))
}

fn rows<'py, T: Float + Element>(
    program: &Program,
    locked: &LockedProgram<T>,
    args: &Bound<'py, PyTuple>,
    adjoints: &Bound<'py, PyList>,
    inputs: Option<&Bound<'py, PyList>>,
) -> PyResult<f64> {
    let call = LayerCall::<T>::new(program, locked, "layer_rows()", args)?;
    let n = call.batch;
    call.run(
        program,
        ("adjoints", adjoints, &|l| [n, l.1]),
        ("inputs", inputs, &|l| [n, l.0]),
        &|p, ins, d, a| p.layer_rows(ins, a, d),
    )
}

/// `kron_factors(program, *args, G, A=None)`: one tiled forward and reverse sweep of `program`
/// (a loss with per-sample gradients) that adds for each dense layer l the Kronecker factors of
/// the batch: Σ_b δ_b δ_bᵀ into `G[l]` (outputs, outputs) and, when given, Σ_b ā_b ā_bᵀ into
/// `A[l]` (inputs + 1, inputs + 1) — δ_b, ā_b as `layer_rows` writes them, never written out.
/// Nothing is added when the call fails. Returns the loss.
#[pyfunction]
#[pyo3(signature = (program, *args, G, A=None))]
#[allow(non_snake_case)] // the factors' names
pub fn kron_factors<'py>(
    program: &Program,
    args: &Bound<'py, PyTuple>,
    G: &Bound<'py, PyList>,
    A: Option<&Bound<'py, PyList>>,
) -> PyResult<f64> {
    typed!(&program.typed, p => factors(program, p, args, G, A))
}

fn factors<'py, T: Float + Element>(
    program: &Program,
    locked: &LockedProgram<T>,
    args: &Bound<'py, PyTuple>,
    g: &Bound<'py, PyList>,
    a: Option<&Bound<'py, PyList>>,
) -> PyResult<f64> {
    let call = LayerCall::<T>::new(program, locked, "kron_factors()", args)?;
    call.run(
        program,
        ("G", g, &|l| [l.1, l.1]),
        ("A", a, &|l| [l.0, l.0]),
        &|p, ins, g, a| p.kron_factors(ins, a, g),
    )
}

/// Per-layer arrays a call writes: one list's checked views.
type LayerViews<'py> = SmallVec<[OutView<'py>; 8]>;

/// A layer's array shape from its (input width, outputs).
type LayerShape<'f> = dyn Fn((usize, usize)) -> [usize; 2] + 'f;

/// What runs without the GIL: (program, arguments, the first list's arrays, the second's).
type LayerWork<'f, T> = dyn Fn(
        &mut crate::Program<T>,
        &[&[T]],
        &mut [&mut [T]],
        Option<&mut [&mut [T]]>,
    ) -> crate::Result<T>
    + Sync
    + 'f;

/// A call over a program's dense layers: its arguments' views, checked, and each layer's
/// (input width, outputs).
struct LayerCall<'a, 'py, T: Float> {
    locked: &'a LockedProgram<T>,
    ins: SmallVec<[InView<'py>; 8]>,
    batch: usize,
    layers: SmallVec<[(usize, usize); 8]>,
    py: Python<'py>,
}

impl<'a, 'py, T: Float + Element> LayerCall<'a, 'py, T> {
    fn new(
        program: &Program,
        locked: &'a LockedProgram<T>,
        method: &str,
        args: &Bound<'py, PyTuple>,
    ) -> PyResult<Self> {
        let n_args = program.arg_shapes.len();
        crate::plan::check_arity(method, n_args, args.len(), None).map_err(to_py_err)?;
        // Inline, so a call allocates nothing.
        let layers = {
            let p = locked.lock().map_err(to_py_err)?;
            let layers = p.dense_layers().map_err(to_py_err)?;
            layers
                .iter()
                .map(|l| (l.input_width(), l.outputs))
                .collect()
        };
        let mut batch = BatchSize::default();
        let ins = program.arg_views::<T>(args, &mut batch)?;
        Ok(LayerCall {
            locked,
            ins,
            batch: batch.get(),
            layers,
            py: args.py(),
        })
    }

    /// `list`'s arrays checked: one per layer, of `shape((input width, outputs))`.
    fn views(
        &self,
        list: &Bound<'py, PyList>,
        what: &'static str,
        shape: &LayerShape<'_>,
    ) -> PyResult<LayerViews<'py>> {
        if list.len() != self.layers.len() {
            return Err(to_py_err(crate::Error::Arity(format!(
                "{what} has {} arrays; the program has {} dense layers",
                list.len(),
                self.layers.len()
            ))));
        }
        (0..list.len())
            .map(|l| {
                let item = list.get_item(l)?;
                out_view::<T>(&item, OutName::Indexed(what, l), &shape(self.layers[l]))
            })
            .collect()
    }

    /// Checks the two lists of arrays (named, with each layer's shape from its (input width,
    /// outputs); the second optional), and that no array overlaps an argument or another,
    /// then runs `f` (program, arguments, first list, second list) without the GIL.
    fn run(
        &self,
        program: &Program,
        (first_name, first, first_shape): (&'static str, &Bound<'py, PyList>, &LayerShape<'_>),
        (second_name, second, second_shape): (
            &'static str,
            Option<&Bound<'py, PyList>>,
            &LayerShape<'_>,
        ),
        f: &LayerWork<T>,
    ) -> PyResult<f64> {
        let first = self.views(first, first_name, first_shape)?;
        let second = match second {
            Some(list) => Some(self.views(list, second_name, second_shape)?),
            None => None,
        };
        let second = second.as_ref();
        let all: SmallVec<[&OutView; 16]> =
            first.iter().chain(second.into_iter().flatten()).collect();
        let count = first.len();
        let out_name = |i: usize| match i < count {
            true => OutName::Indexed(first_name, i),
            false => OutName::Indexed(second_name, i - count),
        };
        check_no_aliasing(&self.ins, &|k| program.arg_name(k), &all, &out_name)?;
        // SAFETY: views were checked for dtype `T`, length and no overlap.
        let ins: SmallVec<[&[T]; 8]> = self.ins.iter().map(|v| unsafe { v.slice::<T>() }).collect();
        let mut x: SmallVec<[&mut [T]; 8]> =
            first.iter().map(|v| unsafe { v.slice::<T>() }).collect();
        let mut y: Option<SmallVec<[&mut [T]; 8]>> =
            second.map(|vs| vs.iter().map(|v| unsafe { v.slice::<T>() }).collect());
        let locked = self.locked;
        let work = SendPtr((&ins, &mut x, &mut y));
        let value = run_detached(self.py, move || {
            let SendPtr((ins, x, y)) = work;
            let mut p = locked.lock()?;
            f(&mut p, ins, x, y.as_deref_mut())
        })?;
        Ok(value.to_f64())
    }
}
