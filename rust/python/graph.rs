//! `Graph`: the tracer's handle on the core IR. Each method adds one node and returns its id;
//! shape errors surface here, at the traced line.
use super::to_py_err;
use crate::error::Error;
use crate::ir::{Axis, BinaryOp, ReduceOp, UnaryOp};
use crate::shape::{Dim, Shape};
use numpy::{PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;

#[pyclass(module = "fastad._fastad")]
pub struct Graph {
    pub(crate) inner: crate::Graph,
}

pub(crate) fn shape_from_py(dims: &[Option<usize>]) -> PyResult<Shape> {
    let dims: Vec<Dim> = dims
        .iter()
        .map(|d| d.map_or(Dim::Batch, Dim::Fixed))
        .collect();
    Shape::try_from_dims(&dims).map_err(to_py_err)
}

pub(crate) fn shape_to_py(s: Shape) -> Vec<Option<usize>> {
    s.dims()
        .iter()
        .map(|d| {
            if let Dim::Fixed(n) = d {
                Some(*n)
            } else {
                None
            }
        })
        .collect()
}

fn unary_op(name: &str, p: f64) -> PyResult<UnaryOp> {
    Ok(match name {
        "neg" => UnaryOp::Neg,
        "exp" => UnaryOp::Exp,
        "log" => UnaryOp::Log,
        "log1p" => UnaryOp::Log1p,
        "expm1" => UnaryOp::Expm1,
        "sqrt" => UnaryOp::Sqrt,
        "abs" => UnaryOp::Abs,
        "tanh" => UnaryOp::Tanh,
        "sigmoid" => UnaryOp::Sigmoid,
        "relu" => UnaryOp::Relu,
        "softplus" => UnaryOp::Softplus,
        "sin" => UnaryOp::Sin,
        "cos" => UnaryOp::Cos,
        "square" => UnaryOp::Square,
        "pow" => UnaryOp::Powf(p),
        _ => {
            return Err(to_py_err(Error::Invalid(format!(
                "unknown unary operation {name:?}"
            ))))
        }
    })
}

fn binary_op(name: &str) -> PyResult<BinaryOp> {
    Ok(match name {
        "add" => BinaryOp::Add,
        "sub" => BinaryOp::Sub,
        "mul" => BinaryOp::Mul,
        "div" => BinaryOp::Div,
        "pow" => BinaryOp::Pow,
        "maximum" => BinaryOp::Maximum,
        "minimum" => BinaryOp::Minimum,
        _ => {
            return Err(to_py_err(Error::Invalid(format!(
                "unknown binary operation {name:?}"
            ))))
        }
    })
}

fn reduce_op(name: &str) -> PyResult<ReduceOp> {
    Ok(match name {
        "sum" => ReduceOp::Sum,
        "mean" => ReduceOp::Mean,
        "logsumexp" => ReduceOp::LogSumExp,
        _ => {
            return Err(to_py_err(Error::Invalid(format!(
                "unknown reduction {name:?}"
            ))))
        }
    })
}

#[pymethods]
impl Graph {
    #[new]
    fn new() -> Self {
        Graph {
            inner: crate::Graph::new(),
        }
    }

    /// Declares the next argument; `None` in `shape` is the batch axis.
    fn input(&mut self, shape: Vec<Option<usize>>) -> PyResult<usize> {
        Ok(self.inner.input(shape_from_py(&shape)?))
    }

    fn constant(&mut self, value: f64) -> usize {
        self.inner.constant(value)
    }

    fn constant_array(&mut self, array: PyReadonlyArrayDyn<'_, f64>) -> PyResult<usize> {
        let dims: Vec<Option<usize>> = array.shape().iter().map(|&n| Some(n)).collect();
        let shape = shape_from_py(&dims)?;
        let data = array.as_array().iter().copied().collect();
        self.inner.constant_array(data, shape).map_err(to_py_err)
    }

    #[pyo3(signature = (name, x, p=0.0))]
    fn unary(&mut self, name: &str, x: usize, p: f64) -> PyResult<usize> {
        self.inner.unary(unary_op(name, p)?, x).map_err(to_py_err)
    }

    fn binary(&mut self, name: &str, a: usize, b: usize) -> PyResult<usize> {
        self.inner.binary(binary_op(name)?, a, b).map_err(to_py_err)
    }

    fn matmul(&mut self, a: usize, b: usize) -> PyResult<usize> {
        self.inner.matmul(a, b).map_err(to_py_err)
    }

    fn transpose(&mut self, x: usize) -> PyResult<usize> {
        self.inner.transpose(x).map_err(to_py_err)
    }

    fn reshape(&mut self, x: usize, shape: Vec<Option<usize>>) -> PyResult<usize> {
        self.inner
            .reshape(x, shape_from_py(&shape)?)
            .map_err(to_py_err)
    }

    fn slice(&mut self, x: usize, start: usize, shape: Vec<Option<usize>>) -> PyResult<usize> {
        self.inner
            .slice(x, start, shape_from_py(&shape)?)
            .map_err(to_py_err)
    }

    #[pyo3(signature = (name, x, axis=None, keepdims=false))]
    fn reduce(
        &mut self,
        name: &str,
        x: usize,
        axis: Option<i64>,
        keepdims: bool,
    ) -> PyResult<usize> {
        let axis = Axis::from_numpy(axis, self.rank(x)?).map_err(to_py_err)?;
        self.inner
            .reduce(reduce_op(name)?, x, axis, keepdims)
            .map_err(to_py_err)
    }

    #[pyo3(signature = (x, axis=-1, log=false))]
    fn softmax(&mut self, x: usize, axis: Option<i64>, log: bool) -> PyResult<usize> {
        let axis = Axis::from_numpy(axis, self.rank(x)?).map_err(to_py_err)?;
        self.inner.softmax(x, axis, log).map_err(to_py_err)
    }

    fn take_along_rows(&mut self, x: usize, index: usize) -> PyResult<usize> {
        self.inner.take_along_rows(x, index).map_err(to_py_err)
    }

    /// The node's shape as a tuple, `None` for the batch axis.
    fn shape(&self, x: usize) -> PyResult<Vec<Option<usize>>> {
        self.check(x)?;
        Ok(shape_to_py(self.inner.shape(x)))
    }

    fn __len__(&self) -> usize {
        self.inner.nodes().len()
    }
}

impl Graph {
    fn check(&self, x: usize) -> PyResult<()> {
        if x >= self.inner.nodes().len() {
            return Err(to_py_err(Error::Invalid(format!(
                "node {x} does not exist in this graph"
            ))));
        }
        Ok(())
    }
    fn rank(&self, x: usize) -> PyResult<usize> {
        self.check(x)?;
        Ok(self.inner.shape(x).rank())
    }
}
