//! fastad — a compiled, allocation-free reverse-mode tape for dense networks and array programs.
//!
//! Data flows one way: `Graph` (the IR, built op by op with shape inference, `ir.rs`) →
//! `Plan::compile` (schedule, gradient analysis, tiling and per-sample plans, `plan/`) → runners
//! (`runner/`: whole-batch, tiled, per-sample) that replay the plan over buffers of their own
//! through the sweeps of `sweep.rs` and the kernels of `kernels/`. `Program` (`program/`) is the
//! front: a plan, its runners' buffers, and entry points for slices and `ndarray` views that
//! check a call and pick the runner. Replays allocate nothing in steady state.
//!
//! ```
//! use fastad::{Graph, Program, Shape, UnaryOp, BinaryOp, ReduceOp, Axis};
//! let mut g = Graph::new();
//! let x = g.input(Shape::vector(3));
//! let y = g.unary(UnaryOp::Exp, x).unwrap();
//! let s = g.reduce(ReduceOp::Sum, y, Axis::All, false).unwrap();
//! let mut p = Program::<f64>::compile(&g, s, &[0]).unwrap();
//! let mut grad = [0.0; 3];
//! let v = p.value_and_grad(&[&[0.0, 1.0, 2.0]], &mut [&mut grad]).unwrap();
//! assert!((v - (1.0 + 1f64.exp() + 2f64.exp())).abs() < 1e-12);
//! assert!((grad[2] - 2f64.exp()).abs() < 1e-12);
//! ```
pub mod alloc_count;
mod buffer;
mod error;
mod float;
pub mod interrupt;
mod ir;
pub mod kernels;
pub mod optim;
pub mod outer;
pub mod parallel;
pub mod plan;
pub mod process;
mod program;
pub mod runner;
mod shape;
mod sweep;
pub mod train;

pub use error::{Error, Result};
pub use float::Float;
pub use ir::{Axis, BinaryOp, Graph, Node, NodeId, Op, ReduceOp, UnaryOp};
pub use optim::{Optimizer, Rule};
pub use plan::dense_layers::DenseLayer;
pub use plan::Plan;
pub use program::Program;
pub use shape::{fmt_dims, BatchSize, Dim, Shape};
pub use train::{Dataset, Schedule, Trainer};

#[cfg(feature = "python")]
mod python;
