//! Shared by the Rust tests and benches (`#[path]`-included): seed 003's EAM function as a graph,
//! and its hand-written gradient.
#![allow(dead_code)]
use fastad::{Axis, BinaryOp, Graph, ReduceOp, Shape, UnaryOp};

/// f(x) = ρ² + ρ³ + ρ⁴/4 with ρ = Σ exp(−3(xᵢ+1)), as in seed 003.
pub fn eam_graph(n: usize) -> (Graph, usize) {
    let mut g = Graph::new();
    let x = g.input(Shape::vector(n));
    let one = g.constant(1.0);
    let m3 = g.constant(-3.0);
    let t = g.binary(BinaryOp::Add, x, one).unwrap();
    let t = g.binary(BinaryOp::Mul, m3, t).unwrap();
    let e = g.unary(UnaryOp::Exp, t).unwrap();
    let rho = g.reduce(ReduceOp::Sum, e, Axis::All, false).unwrap();
    let r2 = g.unary(UnaryOp::Square, rho).unwrap();
    let r3 = g.unary(UnaryOp::Powf(3.0), rho).unwrap();
    let r4 = g.unary(UnaryOp::Powf(4.0), rho).unwrap();
    let q = g.constant(0.25);
    let r4 = g.binary(BinaryOp::Mul, q, r4).unwrap();
    let s = g.binary(BinaryOp::Add, r2, r3).unwrap();
    let out = g.binary(BinaryOp::Add, s, r4).unwrap();
    (g, out)
}

/// The physicist's hand-written gradient (seed 003's `deam!`), into preallocated storage.
pub fn eam_by_hand(x: &[f64], grad: &mut [f64]) -> f64 {
    let rho: f64 = x.iter().map(|&v| (-3.0 * (v + 1.0)).exp()).sum();
    let df = 2.0 * rho + 3.0 * rho * rho + rho * rho * rho;
    for (g, &v) in grad.iter_mut().zip(x) {
        *g = -3.0 * (-3.0 * (v + 1.0)).exp() * df;
    }
    rho * rho + rho.powi(3) + 0.25 * rho.powi(4)
}
