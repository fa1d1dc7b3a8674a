//! Seed 003's EAM function: the compiled tape's value and gradient against a hand-written
//! gradient of the same function, at n = 100 and n = 10,000. Goal: tape gradient ≤ 1.5× by hand.
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
#[path = "../tests/common/mod.rs"]
mod common;
use common::{eam_by_hand, eam_graph};
use fastad::Program;
use std::hint::black_box;

fn eam_program(n: usize) -> Program<f64> {
    let (g, out) = eam_graph(n);
    Program::compile(&g, out, &[0]).unwrap()
}

fn eam_value(x: &[f64]) -> f64 {
    let rho: f64 = x.iter().map(|&v| (-3.0 * (v + 1.0)).exp()).sum();
    rho * rho + rho.powi(3) + 0.25 * rho.powi(4)
}

fn bench(c: &mut Criterion) {
    fastad::parallel::set_num_threads(1);
    for n in [100usize, 10_000] {
        let x: Vec<f64> = (0..n).map(|i| (i as f64 * 0.618).fract()).collect();
        let mut g = vec![0.0; n];
        let mut p = eam_program(n);
        let mut out = [0.0];
        let mut group = c.benchmark_group("eam");
        group.bench_with_input(BenchmarkId::new("value/hand", n), &n, |b, _| {
            b.iter(|| eam_value(black_box(&x)))
        });
        group.bench_with_input(BenchmarkId::new("value/tape", n), &n, |b, _| {
            b.iter(|| p.eval(&[black_box(&x)], &mut out).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("grad/hand", n), &n, |b, _| {
            b.iter(|| eam_by_hand(black_box(&x), &mut g))
        });
        group.bench_with_input(BenchmarkId::new("grad/tape", n), &n, |b, _| {
            b.iter(|| p.value_and_grad(&[black_box(&x)], &mut [&mut g]).unwrap())
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
