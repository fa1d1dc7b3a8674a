//! The IR: a graph of nodes, each an operation on earlier nodes with an inferred shape.
//!
//! Nodes are appended in the order they are traced, so the node list is already a topological
//! order. Shape errors are raised here, while tracing, with the offending shapes in the message.
use crate::error::{Error, Result};
use crate::shape::{Dim, Shape};

pub type NodeId = usize;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Log1p,
    Expm1,
    Sqrt,
    Abs,
    Tanh,
    Sigmoid,
    Relu,
    Softplus,
    Sin,
    Cos,
    Square,
    /// `x ** p` for a constant exponent `p`.
    Powf(f64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    /// `a ** b` with both operands traced (a constant exponent becomes `UnaryOp::Powf`).
    Pow,
    Maximum,
    Minimum,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Mean,
    LogSumExp,
}

impl Op {
    /// The operation as the user wrote it, for messages: "a multiplication (*)", "fa.exp".
    pub fn describe(&self) -> String {
        let fa = |name: &str| format!("fa.{name}");
        match *self {
            Op::Input(k) => format!("argument {k}"),
            Op::Constant(_) | Op::ConstantArray(_) => "a constant".into(),
            Op::Unary(UnaryOp::Neg, _) => "a negation (-x)".into(),
            Op::Unary(UnaryOp::Abs, _) => "abs()".into(),
            Op::Unary(UnaryOp::Powf(p), _) => format!("a power (x ** {p})"),
            Op::Unary(op, _) => fa(&format!("{op:?}").to_lowercase()),
            Op::Binary(op, ..) => match op {
                BinaryOp::Add => "an addition (+)".into(),
                BinaryOp::Sub => "a subtraction (-)".into(),
                BinaryOp::Mul => "a multiplication (*)".into(),
                BinaryOp::Div => "a division (/)".into(),
                BinaryOp::Pow => "a power (**)".into(),
                BinaryOp::Maximum => fa("maximum"),
                BinaryOp::Minimum => fa("minimum"),
            },
            Op::MatMul { .. } | Op::Affine { .. } => "a matrix product (@)".into(),
            Op::Transpose(_) => "a transpose (.T)".into(),
            Op::Reshape(_) => "a reshape".into(),
            Op::Slice { .. } => "a slice".into(),
            Op::Reduce(op, ..) => fa(&format!("{op:?}").to_lowercase()),
            Op::Softmax { log, .. } => fa(if log { "log_softmax" } else { "softmax" }),
            Op::TakeAlongRows { .. } => fa("take_along_rows"),
        }
    }
}

/// The axis of a reduction or softmax, on the operand's 2-D view (`Shape::as_2d`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Axis {
    /// Over every element.
    All,
    /// Over the columns of each row (NumPy's last axis); one result per row.
    WithinRows,
    /// Over the rows of each column (NumPy's axis 0 of a matrix); one result per column.
    WithinCols,
}

impl Axis {
    /// Translates a NumPy `axis` argument (`None`, or an int, negative counting from the end).
    pub fn from_numpy(axis: Option<i64>, rank: usize) -> Result<Axis> {
        let Some(a) = axis else { return Ok(Axis::All) };
        let r = rank as i64;
        if a < -r || a >= r {
            return Err(Error::Invalid(format!(
                "axis {a} is out of bounds for an array of rank {rank}"
            )));
        }
        let a = if a < 0 { a + r } else { a };
        Ok(if a == r - 1 {
            Axis::WithinRows
        } else {
            Axis::WithinCols
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// The program's argument with this index.
    Input(usize),
    Constant(f64),
    /// An array captured at trace time, stored in `Graph::arrays`.
    ConstantArray(usize),
    Unary(UnaryOp, NodeId),
    Binary(BinaryOp, NodeId, NodeId),
    /// `op(a) @ op(b)` with NumPy's rank-1 rules; `ta`/`tb` read a stored matrix as its transpose.
    MatMul {
        a: NodeId,
        b: NodeId,
        ta: bool,
        tb: bool,
    },
    /// `op(a) @ op(b) + bias`, with `bias` a row (1, n) added to every row: made by
    /// `Program::compile` from a matrix product whose only reader adds a bias, so the product is
    /// computed into a buffer that starts as the bias and the sum is never a separate pass.
    Affine {
        a: NodeId,
        b: NodeId,
        ta: bool,
        tb: bool,
        bias: NodeId,
    },
    Transpose(NodeId),
    /// Same elements, new shape.
    Reshape(NodeId),
    /// A contiguous run of an unbatched array's elements, from `start`, in the node's shape
    /// (how a model's layers read their weights out of one flat parameter vector).
    Slice {
        x: NodeId,
        start: usize,
    },
    Reduce(ReduceOp, Axis, NodeId),
    Softmax {
        x: NodeId,
        axis: Axis,
        log: bool,
    },
    /// `out[i] = x[i, index[i]]`, with `index` holding integers stored as floats.
    TakeAlongRows {
        x: NodeId,
        index: NodeId,
    },
}

impl Op {
    /// Whether the value is given (an argument or a constant) rather than computed by a step:
    /// such values are read where they are, never stored in a step's buffer.
    pub fn is_given(&self) -> bool {
        matches!(self, Op::Input(_) | Op::Constant(_) | Op::ConstantArray(_))
    }

    /// The nodes this op reads (at most three).
    pub fn inputs(&self) -> ([NodeId; 3], usize) {
        match *self {
            Op::Input(_) | Op::Constant(_) | Op::ConstantArray(_) => ([0, 0, 0], 0),
            Op::Unary(_, x) | Op::Transpose(x) | Op::Reshape(x) | Op::Reduce(_, _, x) => {
                ([x, 0, 0], 1)
            }
            Op::Softmax { x, .. } | Op::Slice { x, .. } => ([x, 0, 0], 1),
            Op::Binary(_, a, b) | Op::MatMul { a, b, .. } => ([a, b, 0], 2),
            Op::TakeAlongRows { x, index } => ([x, index, 0], 2),
            Op::Affine { a, b, bias, .. } => ([a, b, bias], 3),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub op: Op,
    pub shape: Shape,
}

/// A traced program: nodes in topological order, plus constant arrays.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    nodes: Vec<Node>,
    arrays: Vec<Vec<f64>>,
    n_inputs: usize,
}

impl Graph {
    pub fn new() -> Graph {
        Graph::default()
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id]
    }
    pub fn shape(&self, id: NodeId) -> Shape {
        self.nodes[id].shape
    }
    pub fn n_inputs(&self) -> usize {
        self.n_inputs
    }
    pub fn array(&self, index: usize) -> &[f64] {
        &self.arrays[index]
    }

    fn push(&mut self, op: Op, shape: Shape) -> NodeId {
        self.nodes.push(Node { op, shape });
        self.nodes.len() - 1
    }

    fn check(&self, id: NodeId) -> Result<Shape> {
        self.nodes
            .get(id)
            .map(|n| n.shape)
            .ok_or_else(|| Error::Invalid(format!("node {id} does not exist in this graph")))
    }

    /// A new argument; arguments are numbered in the order they are declared.
    pub fn input(&mut self, shape: Shape) -> NodeId {
        let k = self.n_inputs;
        self.n_inputs += 1;
        self.push(Op::Input(k), shape)
    }

    pub fn constant(&mut self, value: f64) -> NodeId {
        self.push(Op::Constant(value), Shape::scalar())
    }

    pub fn constant_array(&mut self, data: Vec<f64>, shape: Shape) -> Result<NodeId> {
        if shape.is_batched() || data.len() != shape.len(0) {
            return Err(Error::Shape(format!(
                "a constant array of {} elements cannot have shape {shape}",
                data.len()
            )));
        }
        self.arrays.push(data);
        Ok(self.push(Op::ConstantArray(self.arrays.len() - 1), shape))
    }

    pub fn unary(&mut self, op: UnaryOp, x: NodeId) -> Result<NodeId> {
        let s = self.check(x)?;
        Ok(self.push(Op::Unary(op, x), s))
    }

    pub fn binary(&mut self, op: BinaryOp, a: NodeId, b: NodeId) -> Result<NodeId> {
        let s = Shape::broadcast(self.check(a)?, self.check(b)?)
            .map_err(|e| Error::Shape(format!("{op:?}: {e}")))?;
        Ok(self.push(Op::Binary(op, a, b), s))
    }

    pub fn transpose(&mut self, x: NodeId) -> Result<NodeId> {
        let s = self.check(x)?;
        if s.rank() < 2 {
            return Ok(x); // NumPy: .T of a vector or scalar is itself
        }
        let d = s.dims();
        Ok(self.push(Op::Transpose(x), Shape::from_dims(&[d[1], d[0]])))
    }

    /// `a @ b` with NumPy's rules for ranks 1 and 2. A transposed operand is read in place.
    pub fn matmul(&mut self, a: NodeId, b: NodeId) -> Result<NodeId> {
        let (sa, sb) = (self.check(a)?, self.check(b)?);
        if sa.rank() == 0 || sb.rank() == 0 {
            return Err(Error::Shape(format!(
                "matmul: operands must have rank 1 or 2, got shapes {sa} and {sb}; use * for scalars"
            )));
        }
        let k_a = *sa.dims().last().unwrap();
        let k_b = sb.dims()[0];
        if k_a != k_b {
            return Err(Error::Shape(format!(
                "matmul: shapes {sa} and {sb} do not align (contracted dimensions {k_a} and {k_b} differ)"
            )));
        }
        let mut out: Vec<Dim> = Vec::new();
        if sa.rank() == 2 {
            out.push(sa.dims()[0]);
        }
        if sb.rank() == 2 {
            out.push(sb.dims()[1]);
        }
        let shape = Shape::from_dims(&out);
        let (a, ta) = self.untransposed(a);
        let (b, tb) = self.untransposed(b);
        Ok(self.push(Op::MatMul { a, b, ta, tb }, shape))
    }

    /// The stored matrix behind a `Transpose` node, so matmul can read it transposed in place.
    fn untransposed(&self, x: NodeId) -> (NodeId, bool) {
        match self.nodes[x].op {
            Op::Transpose(src) => (src, true),
            _ => (x, false),
        }
    }

    pub fn reshape(&mut self, x: NodeId, shape: Shape) -> Result<NodeId> {
        let s = self.check(x)?;
        let batches = |s: &Shape| s.dims().iter().filter(|d| **d == Dim::Batch).count();
        if batches(&s) != batches(&shape) || s.len(1) != shape.len(1) || s.len(2) != shape.len(2) {
            return Err(Error::Shape(format!(
                "cannot reshape an array of shape {s} into shape {shape}"
            )));
        }
        Ok(self.push(Op::Reshape(x), shape))
    }

    /// Elements `start .. start + shape.len()` of the unbatched array `x`, in `shape`.
    pub fn slice(&mut self, x: NodeId, start: usize, shape: Shape) -> Result<NodeId> {
        let s = self.check(x)?;
        if s.is_batched() || shape.is_batched() {
            return Err(Error::Shape(format!(
                "slice reads a fixed-shape array into a fixed shape; got {s} into {shape}"
            )));
        }
        let (len, n) = (s.len(0), shape.len(0));
        if start.checked_add(n).is_none_or(|end| end > len) {
            return Err(Error::Shape(format!(
                "slice of {n} elements from {start} runs past the end of an array of shape {s} \
                 ({len} elements)"
            )));
        }
        Ok(self.push(Op::Slice { x, start }, shape))
    }

    pub fn reduce(
        &mut self,
        op: ReduceOp,
        x: NodeId,
        axis: Axis,
        keepdims: bool,
    ) -> Result<NodeId> {
        let s = self.check(x)?;
        let shape = reduced_shape(s, axis, keepdims)?;
        Ok(self.push(Op::Reduce(op, axis, x), shape))
    }

    pub fn softmax(&mut self, x: NodeId, axis: Axis, log: bool) -> Result<NodeId> {
        let s = self.check(x)?;
        if s.rank() == 0 {
            return Err(Error::Shape(
                "softmax needs an array of rank 1 or 2, got a scalar".into(),
            ));
        }
        reduced_shape(s, axis, false)?;
        Ok(self.push(Op::Softmax { x, axis, log }, s))
    }

    /// `x[i, index[i]]` for a matrix `x` of shape (R, C) and a vector `index` of shape (R,).
    pub fn take_along_rows(&mut self, x: NodeId, index: NodeId) -> Result<NodeId> {
        let (sx, si) = (self.check(x)?, self.check(index)?);
        if sx.rank() != 2 || si.rank() != 1 || sx.dims()[0] != si.dims()[0] {
            return Err(Error::Shape(format!(
                "take_along_rows needs a matrix (R, C) and indices (R,), got {sx} and {si}"
            )));
        }
        Ok(self.push(Op::TakeAlongRows { x, index }, si))
    }
}

fn reduced_shape(s: Shape, axis: Axis, keepdims: bool) -> Result<Shape> {
    let d = s.dims();
    let one = Dim::Fixed(1);
    // (dims kept, dims with keepdims) for each case.
    let (kept, with_ones): (Vec<Dim>, Vec<Dim>) = match (axis, s.rank()) {
        (Axis::All, r) => (vec![], vec![one; r]),
        (_, 0) => {
            return Err(Error::Shape(
                "an axis was given for a scalar (rank 0) operand".into(),
            ))
        }
        (Axis::WithinRows, 1) => (vec![], vec![one]),
        (Axis::WithinRows, _) => (vec![d[0]], vec![d[0], one]),
        (Axis::WithinCols, 1) => {
            return Err(Error::Shape(format!(
                "axis 0 of a vector {s} is its only axis; use axis=-1"
            )))
        }
        (Axis::WithinCols, _) => (vec![d[1]], vec![one, d[1]]),
    };
    Ok(Shape::from_dims(if keepdims { &with_ones } else { &kept }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_shapes_follow_numpy() {
        let mut g = Graph::new();
        let x = g.input(Shape::batch_of(3));
        let w = g.input(Shape::matrix(4, 3));
        let wt = g.transpose(w).unwrap();
        let y = g.matmul(x, wt).unwrap();
        assert_eq!(g.shape(y), Shape::from_dims(&[Dim::Batch, Dim::Fixed(4)]));
        assert_eq!(
            g.node(y).op,
            Op::MatMul {
                a: x,
                b: w,
                ta: false,
                tb: true
            }
        );
        let v = g.input(Shape::vector(4));
        let z = g.matmul(y, v).unwrap();
        assert_eq!(g.shape(z), Shape::from_dims(&[Dim::Batch]));
        let err = g.matmul(x, w).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, crate::Error::Shape(_)), "{err:?}");
        assert!(
            message.contains("(None, 3)") && message.contains("(4, 3)"),
            "{message}"
        );
    }

    #[test]
    fn reductions_follow_numpy() {
        let mut g = Graph::new();
        let x = g.input(Shape::batch_of(3));
        let r = g
            .reduce(
                ReduceOp::Sum,
                x,
                Axis::from_numpy(Some(0), 2).unwrap(),
                false,
            )
            .unwrap();
        assert_eq!(g.shape(r), Shape::vector(3));
        let r = g
            .reduce(
                ReduceOp::Mean,
                x,
                Axis::from_numpy(Some(-1), 2).unwrap(),
                true,
            )
            .unwrap();
        assert_eq!(g.shape(r), Shape::from_dims(&[Dim::Batch, Dim::Fixed(1)]));
        assert!(Axis::from_numpy(Some(2), 2).is_err());
    }
}
