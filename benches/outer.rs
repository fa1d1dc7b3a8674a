//! Seed 002's batched outer products (N = 128 per-sample gradients of P = 97, f32): every
//! g_b g_bᵀ into a preallocated H (4.8 MB), the packed upper triangles, and their sum GᵀG, next
//! to the floor for writing H at all: the same bytes stored by the same threads, with nothing
//! computed. The goal for `outer` is 30 µs; the floor says what this machine allows.
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fastad::outer::{outer, outer_sum, packed_len};
use std::hint::black_box;

const N: usize = 128;
const P: usize = 97;

/// Every element of `out` = `v`, split over the pool as `outer` splits H, with the widest
/// vector stores this CPU has (`v` is not a repeated byte, so this is no memset, which for large
/// buffers may bypass the cache).
fn write_floor(out: &mut [f32], v: f32) {
    let per = P * P;
    let ptr = out.as_mut_ptr() as usize;
    fastad::parallel::for_chunks(N, (1 << 15) / per, &|samples| {
        // SAFETY: the chunks are disjoint ranges of samples within `out`.
        let chunk = unsafe {
            std::slice::from_raw_parts_mut(
                (ptr as *mut f32).add(samples.start * per),
                samples.len() * per,
            )
        };
        fastad::kernels::simd::dispatch(
            #[inline(always)]
            || chunk.fill(v),
        )
    });
}

fn bench(c: &mut Criterion) {
    let threads = fastad::parallel::num_threads();
    let g: Vec<f32> = (0..N * P).map(|i| ((i % 17) as f32 - 8.0) * 0.1).collect();
    let mut h = vec![0f32; N * P * P];
    let mut packed = vec![0f32; N * packed_len(P)];
    let mut f = vec![0f32; P * P];
    let mut group = c.benchmark_group(format!("outer_f32_n{N}_p{P}_{threads}threads"));
    group.sample_size(50);
    group.throughput(Throughput::Bytes((h.len() * 4) as u64));
    group.bench_function("write floor (store H, no arithmetic)", |b| {
        b.iter(|| write_floor(&mut h, black_box(1.0)))
    });
    group.bench_function("outer", |b| {
        b.iter(|| outer(black_box(&g), N, P, &mut h, false))
    });
    group.throughput(Throughput::Bytes((packed.len() * 4) as u64));
    group.bench_function("outer packed", |b| {
        b.iter(|| outer(black_box(&g), N, P, &mut packed, true))
    });
    group.throughput(Throughput::Bytes((f.len() * 4) as u64));
    group.bench_function("outer_sum", |b| {
        b.iter(|| outer_sum(black_box(&g), N, P, &mut f, false))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
