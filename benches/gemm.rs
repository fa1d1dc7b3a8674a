//! fastad's GEMM against the Rust GEMM crates we could have used instead (`gemm`, the kernel
//! of faer, and `matrixmultiply`), on large square products and on the seed workloads' shapes.
//! Throughput is in FLOP/s (2·m·n·k per product). The findings are written up in GEMM.md.
//!
//! `cargo bench --bench gemm` (all threads) or `FASTAD_NUM_THREADS=1 cargo bench --bench gemm`.
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fastad::kernels::gemm::{gemm, workspace_len, Operand};
use std::hint::black_box;

trait Elem: fastad::Float {
    fn matrixmultiply(m: usize, k: usize, n: usize, a: &[Self], b: &[Self], c: &mut [Self]);
}

impl Elem for f32 {
    fn matrixmultiply(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
        let (k_, n_) = (k as isize, n as isize);
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                a.as_ptr(),
                k_,
                1,
                b.as_ptr(),
                n_,
                1,
                0.0,
                c.as_mut_ptr(),
                n_,
                1,
            )
        }
    }
}

impl Elem for f64 {
    fn matrixmultiply(m: usize, k: usize, n: usize, a: &[f64], b: &[f64], c: &mut [f64]) {
        let (k_, n_) = (k as isize, n as isize);
        unsafe {
            matrixmultiply::dgemm(
                m,
                k,
                n,
                1.0,
                a.as_ptr(),
                k_,
                1,
                b.as_ptr(),
                n_,
                1,
                0.0,
                c.as_mut_ptr(),
                n_,
                1,
            )
        }
    }
}

fn shapes<T: Elem>(c: &mut Criterion, shapes: &[(usize, usize, usize)]) {
    let threads = fastad::parallel::num_threads();
    // matrixmultiply reads its thread count once, from the environment.
    std::env::set_var("MATMUL_NUM_THREADS", threads.to_string());
    let mut group = c.benchmark_group(format!("gemm_{}_{}threads", T::NAME, threads));
    group.sample_size(20);
    for &(m, k, n) in shapes {
        let a: Vec<T> = (0..m * k)
            .map(|i| T::from_f64((i % 13) as f64 * 0.1))
            .collect();
        let b: Vec<T> = (0..k * n)
            .map(|i| T::from_f64((i % 11) as f64 * 0.1))
            .collect();
        let mut out = vec![T::zero(); m * n];
        let mut ws = vec![T::zero(); workspace_len(m, n, k, threads)];
        let id = format!("{m}x{k}x{n}");
        group.throughput(Throughput::Elements(2 * (m * k * n) as u64));
        group.bench_function(BenchmarkId::new("fastad", &id), |bench| {
            bench.iter(|| {
                let op = |data| Operand {
                    data,
                    transposed: false,
                };
                gemm(
                    (m, n, k),
                    op(black_box(&a)),
                    op(&b),
                    &mut out,
                    false,
                    &mut ws,
                )
            })
        });
        group.bench_function(BenchmarkId::new("gemm-crate", &id), |bench| {
            let par = if threads > 1 {
                gemm::Parallelism::Rayon(threads)
            } else {
                gemm::Parallelism::None
            };
            bench.iter(|| unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    out.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    black_box(&a).as_ptr(),
                    1,
                    k as isize,
                    b.as_ptr(),
                    1,
                    n as isize,
                    T::zero(),
                    T::one(),
                    false,
                    false,
                    false,
                    par,
                )
            })
        });
        group.bench_function(BenchmarkId::new("matrixmultiply", &id), |bench| {
            bench.iter(|| T::matrixmultiply(m, k, n, black_box(&a), &b, &mut out))
        });
    }
    group.finish();
}

fn bench(c: &mut Criterion) {
    // (m, k, n): square; the wide tanh layer of issue 3 (N = 4096, 512 → 512); the seed 000
    // network's 1000 → 20 layer on 10,000 rows, forward and both backward products.
    shapes::<f32>(c, &[(1024, 1024, 1024), (4096, 512, 512)]);
    shapes::<f64>(
        c,
        &[
            (1024, 1024, 1024),
            (10_000, 1000, 20),
            (10_000, 20, 1000),
            (20, 10_000, 1000),
        ],
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
