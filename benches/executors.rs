//! fastad's own pool against rayon's (the `rayon` cargo feature) on the seed workloads, same
//! binary, same thread count: `cargo bench --features rayon --bench executors`.
//!
//! - seed 000: the gradient of Σ f(x)² for 1 → 1000 → 20 → 1 (identity), N = 10,000, float64
//!   (tiled, many tasks per call);
//! - seed 002: per-sample gradients of 1 → 32 (sigmoid) → 1 under mse, N = 128, float32 (small
//!   kernels, where dispatch cost shows);
//! - seed 002: every g_b g_bᵀ of its (128, 97) per-sample gradients.
use criterion::{criterion_group, criterion_main, Criterion};
use fastad::outer::outer;
use fastad::parallel::{set_executor, ExecutorKind};
use fastad::{Axis, BinaryOp, Graph, Program, ReduceOp, Shape, UnaryOp};
use std::hint::black_box;

/// A chain of dense layers on X (N, sizes[0]) with parameters sliced from one flat vector;
/// returns (graph, params input, X input, output node, P).
fn dense_chain(sizes: &[usize], hidden: Option<UnaryOp>) -> (Graph, usize, usize, usize, usize) {
    let p_len: usize = sizes.windows(2).map(|w| w[1] * (w[0] + 1)).sum();
    let mut g = Graph::new();
    let p = g.input(Shape::vector(p_len));
    let x = g.input(Shape::batch_of(sizes[0]));
    let (mut h, mut offset) = (x, 0);
    for (l, w) in sizes.windows(2).enumerate() {
        let (i, o) = (w[0], w[1]);
        let weight = g.slice(p, offset, Shape::matrix(o, i)).unwrap();
        let bias = g.slice(p, offset + o * i, Shape::vector(o)).unwrap();
        offset += o * (i + 1);
        let wt = g.transpose(weight).unwrap();
        h = g.matmul(h, wt).unwrap();
        h = g.binary(BinaryOp::Add, h, bias).unwrap();
        if let (Some(act), true) = (hidden, l + 2 < sizes.len()) {
            h = g.unary(act, h).unwrap();
        }
    }
    (g, p, x, h, p_len)
}

fn executors() -> [(ExecutorKind, &'static str); 2] {
    [
        (ExecutorKind::Pool, "fastad pool"),
        (ExecutorKind::Rayon, "rayon"),
    ]
}

fn seed000_gradient(c: &mut Criterion) {
    let (mut g, _, _, out, p_len) = dense_chain(&[1, 1000, 20, 1], None);
    let sq = g.unary(UnaryOp::Square, out).unwrap();
    let loss = g.reduce(ReduceOp::Sum, sq, Axis::All, false).unwrap();
    let mut prog = Program::<f64>::compile(&g, loss, &[0]).unwrap();
    let n = 10_000;
    let params: Vec<f64> = (0..p_len).map(|i| (i as f64 * 0.37).sin() * 0.05).collect();
    let x: Vec<f64> = (0..n)
        .map(|i| -1.0 + 2.0 * i as f64 / (n - 1) as f64)
        .collect();
    let mut grad = vec![0.0; p_len];
    let mut group = c.benchmark_group("seed000_gradient_n10000_f64");
    group.sample_size(20);
    for (kind, name) in executors() {
        set_executor(kind);
        group.bench_function(name, |b| {
            b.iter(|| prog.value_and_grad(&[&params, black_box(&x)], &mut [&mut grad]))
        });
    }
    group.finish();
}

fn seed002(c: &mut Criterion) {
    let (mut g, _, _, out, p_len) = dense_chain(&[1, 32, 1], Some(UnaryOp::Sigmoid));
    let y = g.input(Shape::batch_of(1));
    let r = g.binary(BinaryOp::Sub, out, y).unwrap();
    let r2 = g.unary(UnaryOp::Square, r).unwrap();
    let loss = g.reduce(ReduceOp::Mean, r2, Axis::All, false).unwrap();
    let mut prog = Program::<f32>::compile(&g, loss, &[0]).unwrap();
    let n = 128;
    let params: Vec<f32> = (0..p_len).map(|i| (i as f32 * 0.7).sin() * 0.5).collect();
    let x: Vec<f32> = (0..n).map(|i| i as f32 * 8.0 / n as f32).collect();
    let y: Vec<f32> = x.iter().map(|v| v.sin()).collect();
    let mut rows = vec![0f32; n * p_len];
    let mut h = vec![0f32; n * p_len * p_len];
    let mut group = c.benchmark_group("seed002_n128_p97_f32");
    for (kind, name) in executors() {
        set_executor(kind);
        group.bench_function(format!("per_sample_grad/{name}"), |b| {
            b.iter(|| prog.per_sample_grad(&[&params, black_box(&x), &y], &mut rows))
        });
        group.bench_function(format!("outer/{name}"), |b| {
            b.iter(|| outer(black_box(&rows), n, p_len, &mut h, false))
        });
    }
    group.finish();
}

criterion_group!(benches, seed000_gradient, seed002);
criterion_main!(benches);
