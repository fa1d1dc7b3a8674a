//! After one warm-up call, replays of value, gradient and vjp, training epochs and per-sample
//! gradients, through slices and through `ndarray` views, make zero heap allocations on any
//! thread (the counting allocator counts process-wide), including with two worker threads.
//!
//! Its own `main`, without libtest's harness (`harness = false`), because the counter counts every
//! thread of the process: libtest's monitor thread prints "... has been running for over 60
//! seconds" after a minute, and that message makes two allocations (measured), which is what
//! emulated runs (aarch64 under qemu, over a second a replay) counted.
//! `FASTAD_ZERO_ALLOC_REPLAYS` sets the number of replays (1000 by default; fewer under qemu).
use fastad::alloc_count::{allocation_count, CountingAllocator};
mod common;
use common::eam_graph;
use fastad::{
    Axis, BinaryOp, Dataset, Graph, Optimizer, Program, ReduceOp, Rule, Schedule, Shape, Trainer,
    UnaryOp,
};
use ndarray::{ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// A batched layer: y = tanh(X Wᵀ + b); its replays are tiled and run on the worker threads.
fn layer_graph() -> (Graph, usize, usize) {
    let mut g = Graph::new();
    let w = g.input(Shape::matrix(64, 32));
    let b = g.input(Shape::vector(64));
    let x = g.input(Shape::batch_of(32));
    let wt = g.transpose(w).unwrap();
    let h = g.matmul(x, wt).unwrap();
    let h = g.binary(BinaryOp::Add, h, b).unwrap();
    let y = g.unary(UnaryOp::Tanh, h).unwrap();
    let loss = g.reduce(ReduceOp::Mean, y, Axis::All, false).unwrap();
    (g, y, loss)
}

/// Seed 002's network as a loss of (params (97,), X (N, 1), Y (N, 1)): mean squared error of
/// Dense(1→32, sigmoid) → Dense(32→1), its weights and biases slices of the flat params.
fn seed002_loss_graph() -> (Graph, usize) {
    let mut g = Graph::new();
    let p = g.input(Shape::vector(97));
    let x = g.input(Shape::batch_of(1));
    let y = g.input(Shape::batch_of(1));
    let w1 = g.slice(p, 0, Shape::matrix(32, 1)).unwrap();
    let b1 = g.slice(p, 32, Shape::vector(32)).unwrap();
    let w2 = g.slice(p, 64, Shape::matrix(1, 32)).unwrap();
    let b2 = g.slice(p, 96, Shape::vector(1)).unwrap();
    let w1t = g.transpose(w1).unwrap();
    let h = g.matmul(x, w1t).unwrap();
    let h = g.binary(BinaryOp::Add, h, b1).unwrap();
    let h = g.unary(UnaryOp::Sigmoid, h).unwrap();
    let w2t = g.transpose(w2).unwrap();
    let z = g.matmul(h, w2t).unwrap();
    let z = g.binary(BinaryOp::Add, z, b2).unwrap();
    let r = g.binary(BinaryOp::Sub, z, y).unwrap();
    let r2 = g.unary(UnaryOp::Square, r).unwrap();
    let loss = g.reduce(ReduceOp::Mean, r2, Axis::All, false).unwrap();
    (g, loss)
}

fn main() {
    let replays: usize = match std::env::var("FASTAD_ZERO_ALLOC_REPLAYS") {
        Ok(n) => n
            .parse()
            .expect("FASTAD_ZERO_ALLOC_REPLAYS: a number of replays"),
        Err(_) => 1000,
    };
    replays_allocate_nothing(replays);
    println!("zero_alloc: {replays} replays after the warm-up, no allocation");
}

fn replays_allocate_nothing(replays: usize) {
    // fastad's own pool (the default; with the `rayon` feature it must be chosen), which
    // dispatches without allocating.
    fastad::parallel::set_executor(fastad::parallel::ExecutorKind::Pool);
    fastad::parallel::set_num_threads(2);
    let (g, out) = eam_graph(100);
    let mut eam = Program::<f64>::compile(&g, out, &[0]).unwrap();
    let x: Vec<f64> = (0..100).map(|i| i as f64 / 100.0).collect();
    let mut gx = vec![0.0; 100];
    let mut value = [0.0];

    let (lg, y, loss) = layer_graph();
    let mut layer_loss = Program::<f32>::compile(&lg, loss, &[0, 1]).unwrap();
    let mut layer = Program::<f32>::compile(&lg, y, &[0, 2]).unwrap();
    // Large enough to replay tile by tile (two tiles or more, the last one ragged).
    let n = 4100;
    for p in [&layer_loss, &layer] {
        assert!(p
            .tile_rows()
            .is_some_and(|rows| n >= 2 * rows && n % rows != 0));
    }
    let w: Vec<f32> = (0..64 * 32).map(|i| (i as f32 * 0.01).sin()).collect();
    let b: Vec<f32> = vec![0.1; 64];
    let xs: Vec<f32> = (0..n * 32).map(|i| (i as f32 * 0.003).cos()).collect();
    let cot: Vec<f32> = vec![0.5; n * 64];
    let (mut gw, mut gb, mut gxs) = (
        vec![0.0f32; 64 * 32],
        vec![0.0f32; 64],
        vec![0.0f32; n * 32],
    );
    let mut yv = vec![0.0f32; n * 64];

    // Training epochs (shuffled, batches of 8 with a ragged last one) and per-sample gradients.
    let (sg, sloss) = seed002_loss_graph();
    let mut seed002 = Program::<f32>::compile(&sg, sloss, &[0]).unwrap();
    let rows = 100;
    let sx: Vec<f32> = (0..rows).map(|i| i as f32 * 0.08).collect();
    let sy: Vec<f32> = sx.iter().map(|v| v.sin()).collect();
    let mut params: Vec<f32> = (0..97).map(|i| (i as f32 * 0.7).sin() * 0.5).collect();
    let data = Dataset {
        x: &sx,
        y: Some(&sy),
        rows,
    };
    let schedule = Schedule {
        batch_size: 8,
        shuffle: true,
        seed: 7,
    };
    let mut trainer = Trainer::new(&seed002, &data, &schedule).unwrap();
    let adam = Rule::Adam {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        decoupled: false,
    };
    let mut optimizer = Optimizer::new(adam, 1e-3, 97).unwrap();
    let mut per_sample = vec![0.0f32; rows * 97];
    let mut epoch = 0;

    let mut replay = || {
        trainer
            .epoch(
                &mut seed002,
                &mut params,
                &data,
                &schedule,
                epoch,
                &mut optimizer,
            )
            .unwrap();
        epoch += 1;
        seed002
            .per_sample_grad(&[&params, &sx, &sy], &mut per_sample)
            .unwrap();
        eam.eval(&[&x], &mut value).unwrap();
        // The ndarray entry points: views made per call, checked, replayed in place.
        let xv = ArrayView1::from(&x[..]).into_dyn();
        let gv = ArrayViewMut1::from(&mut gx[..]).into_dyn();
        eam.value_and_grad_view(&[xv], &mut [gv]).unwrap();
        let per_sample_view = ArrayViewMut2::from_shape((rows, 97), &mut per_sample[..]).unwrap();
        let (sxv, syv) = (
            ArrayView2::from_shape((rows, 1), &sx[..]).unwrap(),
            ArrayView2::from_shape((rows, 1), &sy[..]).unwrap(),
        );
        let pv = ArrayView1::from(&params[..]).into_dyn();
        seed002
            .per_sample_grad_view(
                &[pv, sxv.into_dyn(), syv.into_dyn()],
                per_sample_view.into_dyn(),
            )
            .unwrap();
        eam.value_and_grad(&[&x], &mut [&mut gx]).unwrap();
        eam.vjp(&[&x], &[2.0], &mut [&mut gx], None).unwrap();
        layer_loss
            .value_and_grad(&[&w, &b, &xs], &mut [&mut gw, &mut gb])
            .unwrap();
        layer
            .vjp(
                &[&w, &b, &xs],
                &cot,
                &mut [&mut gw, &mut gxs],
                Some(&mut yv),
            )
            .unwrap();
    };
    replay(); // warm-up: buffers for this batch size, worker threads
    let before = allocation_count();
    for _ in 0..replays {
        replay();
    }
    let allocations = allocation_count() - before;
    assert_eq!(
        allocations, 0,
        "{replays} replays made {allocations} allocations"
    );
}
