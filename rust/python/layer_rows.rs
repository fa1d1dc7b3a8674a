//! A program's dense layers and their per-sample rows (`runner/layer_rows.rs`), for the Python
//! layer's Kronecker factors and Laplace predictive: module functions over a `Program`, checked
//! like every call (dtype, exact shapes, no aliasing) and run without the GIL.
use super::arrays::{check_no_aliasing, out_view, OutName, OutView};
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
    let py = args.py();
    let n_args = program.arg_shapes.len();
    crate::plan::check_arity("layer_rows()", n_args, args.len(), None).map_err(to_py_err)?;
    // (input width, outputs) of each layer; inline, so a call allocates nothing.
    let layers: SmallVec<[(usize, usize); 8]> = {
        let p = locked.lock().map_err(to_py_err)?;
        let layers = p.dense_layers().map_err(to_py_err)?;
        layers
            .iter()
            .map(|l| (l.input_width(), l.outputs))
            .collect()
    };
    let name = |k: usize| program.arg_name(k);
    let mut batch = BatchSize::default();
    let ins = program.arg_views::<T>(args, &mut batch)?;
    let n = batch.get();
    let views = |list: &Bound<'py, PyList>, what: &'static str, width: &dyn Fn(usize) -> usize| {
        if list.len() != layers.len() {
            return Err(to_py_err(crate::Error::Arity(format!(
                "{what} has {} arrays; the program has {} dense layers",
                list.len(),
                layers.len()
            ))));
        }
        (0..list.len())
            .map(|l| {
                out_view::<T>(
                    &list.get_item(l)?,
                    OutName::Indexed(what, l),
                    &[n, width(l)],
                )
            })
            .collect::<PyResult<SmallVec<[OutView; 8]>>>()
    };
    let d_views = views(adjoints, "adjoints", &|l| layers[l].1)?;
    let a_views = match inputs {
        Some(list) => Some(views(list, "inputs", &|l| layers[l].0)?),
        None => None,
    };
    let all: SmallVec<[&OutView; 16]> = d_views.iter().chain(a_views.iter().flatten()).collect();
    let count = d_views.len();
    let out_name = |i: usize| {
        if i < count {
            OutName::Indexed("adjoints", i)
        } else {
            OutName::Indexed("inputs", i - count)
        }
    };
    check_no_aliasing(&ins, &name, &all, &out_name)?;

    // SAFETY: views were checked for dtype `T`, length and no overlap.
    let in_slices: SmallVec<[&[T]; 8]> = ins.iter().map(|v| unsafe { v.slice::<T>() }).collect();
    let mut d: SmallVec<[&mut [T]; 8]> =
        d_views.iter().map(|v| unsafe { v.slice::<T>() }).collect();
    let mut a: Option<SmallVec<[&mut [T]; 8]>> = a_views
        .as_ref()
        .map(|vs| vs.iter().map(|v| unsafe { v.slice::<T>() }).collect());
    let work = SendPtr((&in_slices, &mut d, &mut a));
    let loss = run_detached(py, move || {
        let SendPtr((in_slices, d, a)) = work;
        let mut p = locked.lock()?;
        p.layer_rows(in_slices, a.as_deref_mut(), d)
    })?;
    Ok(loss.to_f64())
}
