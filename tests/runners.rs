//! The runners replayed directly (whole-batch, tiled, per-sample, layer rows), and `Program`'s ndarray entry
//! points, against central finite differences of an independent plain-Rust model, in float64.
//!
//! The model is seed 002's shape, small: X (N, 3) → Dense(3→5, tanh) → Dense(5→1), mean squared
//! error against Y, its weights and biases slices of one flat parameter vector (P = 26).
use fastad::runner::{layer_rows, per_sample_grad, OutputRows, Seed, Sweeps, Tiled, Whole};
use fastad::{Axis, BinaryOp, Error, Graph, Plan, Program, ReduceOp, Shape, UnaryOp};
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut1};

const D: usize = 3;
const H: usize = 5;
const P: usize = H * D + H + H + 1;

/// The network's outputs for X (N, D): one per row.
fn forward_graph(g: &mut Graph, p: usize, x: usize) -> usize {
    let w1 = g.slice(p, 0, Shape::matrix(H, D)).unwrap();
    let b1 = g.slice(p, H * D, Shape::vector(H)).unwrap();
    let w2 = g.slice(p, H * D + H, Shape::matrix(1, H)).unwrap();
    let b2 = g.slice(p, H * D + 2 * H, Shape::vector(1)).unwrap();
    let w1t = g.transpose(w1).unwrap();
    let h = g.matmul(x, w1t).unwrap();
    let h = g.binary(BinaryOp::Add, h, b1).unwrap();
    let h = g.unary(UnaryOp::Tanh, h).unwrap();
    let w2t = g.transpose(w2).unwrap();
    let z = g.matmul(h, w2t).unwrap();
    g.binary(BinaryOp::Add, z, b2).unwrap()
}

/// mean((f(X) − Y)²) as a program of (params, X, Y).
fn loss_plan() -> Plan<f64> {
    let mut g = Graph::new();
    let p = g.input(Shape::vector(P));
    let x = g.input(Shape::batch_of(D));
    let y = g.input(Shape::batch_of(1));
    let f = forward_graph(&mut g, p, x);
    let r = g.binary(BinaryOp::Sub, f, y).unwrap();
    let r2 = g.unary(UnaryOp::Square, r).unwrap();
    let loss = g.reduce(ReduceOp::Mean, r2, Axis::All, false).unwrap();
    Plan::compile(&g, loss, &[0]).unwrap()
}

/// The outputs f(X) (N, 1) as a program of (params, X), differentiated in `wrt`.
fn output_plan(wrt: usize) -> Plan<f64> {
    let mut g = Graph::new();
    let p = g.input(Shape::vector(P));
    let x = g.input(Shape::batch_of(D));
    let f = forward_graph(&mut g, p, x);
    Plan::compile(&g, f, &[wrt]).unwrap()
}

/// The reference: the same network in plain Rust, one sample at a time.
fn output_by_hand(p: &[f64], x: &[f64]) -> f64 {
    let (w1, rest) = p.split_at(H * D);
    let (b1, rest) = rest.split_at(H);
    let (w2, b2) = rest.split_at(H);
    let mut f = b2[0];
    for j in 0..H {
        let z: f64 = (0..D).map(|i| w1[j * D + i] * x[i]).sum::<f64>() + b1[j];
        f += w2[j] * z.tanh();
    }
    f
}

fn loss_by_hand(p: &[f64], x: &[f64], y: &[f64]) -> f64 {
    let n = y.len();
    (0..n)
        .map(|b| (output_by_hand(p, &x[b * D..(b + 1) * D]) - y[b]).powi(2))
        .sum::<f64>()
        / n as f64
}

/// Central differences of `f` at `p`, one coordinate at a time.
fn finite_differences(p: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let h = 1e-6;
    let mut q = p.to_vec();
    (0..p.len())
        .map(|i| {
            q[i] = p[i] + h;
            let up = f(&q);
            q[i] = p[i] - h;
            let down = f(&q);
            q[i] = p[i];
            (up - down) / (2.0 * h)
        })
        .collect()
}

fn assert_close(got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * scale, "element {i}: {g} vs {w}");
    }
}

/// Deterministic data: params, X (n, D), Y (n, 1).
fn data(n: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let p = (0..P).map(|i| (i as f64 * 0.71).sin() * 0.6).collect();
    let x = (0..n * D).map(|i| (i as f64 * 0.37).cos()).collect();
    let y = (0..n).map(|i| (i as f64 * 0.13).sin()).collect();
    (p, x, y)
}

#[test]
fn whole_runner_gradient_matches_finite_differences() {
    let plan = loss_plan();
    let (p, x, y) = data(40);
    let mut whole = Whole::new(&plan).unwrap();
    let args: [&[f64]; 3] = [&p, &x, &y];
    let batch = plan.batch_size(&args).unwrap();
    assert!(!plan.runs_tiled(batch, true));
    whole.forward(&plan, &args, batch).unwrap();
    whole.backward(&plan, &args, batch, Seed::Ones).unwrap();
    loss_and_gradient_match_by_hand(&plan, &whole, &args);
}

/// The loss and the parameters' gradient left in `whole` after a replay of the loss program
/// over `args` (params, X, Y), against the plain-Rust loss and its finite differences.
fn loss_and_gradient_match_by_hand(
    plan: &Plan<f64>,
    whole: &Whole<f64>,
    args: &[&[f64]; 3],
) -> Vec<f64> {
    let [p, x, y] = *args;
    let batch = y.len();
    let loss = whole.output(plan, args, batch)[0];
    assert!((loss - loss_by_hand(p, x, y)).abs() < 1e-12);
    let mut grad = vec![f64::NAN; P];
    whole.write_grads(plan, &mut [&mut grad]);
    let want = finite_differences(p, |q| loss_by_hand(q, x, y));
    assert_close(&grad, &want, 1e-7);
    grad
}

#[test]
fn tiled_runner_matches_finite_differences_and_the_whole_runner() {
    let plan = loss_plan();
    let rows = plan.tile_rows().expect("a row-local program tiles");
    let n = 2 * rows + rows / 3; // three tiles, the last one ragged
    let (p, x, y) = data(n);
    let args: [&[f64]; 3] = [&p, &x, &y];
    assert!(plan.runs_tiled(n, true));
    let (mut whole, mut tiled) = (Whole::new(&plan).unwrap(), Tiled::new(&plan));
    let sweeps = Sweeps::Both(Seed::Ones);
    for threads in [1, 2] {
        fastad::parallel::set_num_threads(threads);
        tiled
            .run(&plan, &mut whole, &args, n, sweeps, OutputRows::Table)
            .unwrap();
        let grad = loss_and_gradient_match_by_hand(&plan, &whole, &args);

        // The same replay untiled, on fresh buffers.
        let mut untiled = Whole::new(&plan).unwrap();
        untiled.forward(&plan, &args, n).unwrap();
        untiled.backward(&plan, &args, n, Seed::Ones).unwrap();
        let mut grad_untiled = vec![0.0; P];
        untiled.write_grads(&plan, &mut [&mut grad_untiled]);
        assert_close(&grad, &grad_untiled, 1e-12);
    }
}

#[test]
fn tiled_vjp_of_a_batched_output_to_the_inputs() {
    // J(X)ᵀ c for f(X) (N, 1) with respect to X: row b is c_b ∂f(x_b)/∂x_b.
    let plan = output_plan(1);
    let rows = plan.tile_rows().unwrap();
    let n = 2 * rows + 7;
    let (p, x, _) = data(n);
    let c: Vec<f64> = (0..n).map(|b| 1.0 + (b % 3) as f64).collect();
    let args: [&[f64]; 2] = [&p, &x];
    let (mut whole, mut tiled) = (Whole::new(&plan).unwrap(), Tiled::new(&plan));
    let mut out = vec![0.0; n];
    let sweeps = Sweeps::Both(Seed::Cotangent(&c));
    tiled
        .run(
            &plan,
            &mut whole,
            &args,
            n,
            sweeps,
            OutputRows::Caller(&mut out),
        )
        .unwrap();
    let mut dx = vec![f64::NAN; n * D];
    whole.write_grads(&plan, &mut [&mut dx]);
    for b in [0, 1, rows - 1, rows, n - 1] {
        let xb = &x[b * D..(b + 1) * D];
        assert!((out[b] - output_by_hand(&p, xb)).abs() < 1e-12);
        let want: Vec<f64> = finite_differences(xb, |q| c[b] * output_by_hand(&p, q));
        assert_close(&dx[b * D..(b + 1) * D], &want, 1e-7);
    }
}

#[test]
fn per_sample_runner_rows_match_each_samples_own_gradient() {
    let plan = loss_plan();
    let n = 9;
    let (p, x, y) = data(n);
    let args: [&[f64]; 3] = [&p, &x, &y];
    let mut whole = Whole::new(&plan).unwrap();
    let mut rows = vec![f64::NAN; n * P];
    let loss = per_sample_grad(&plan, &mut whole, &args, n, &mut rows).unwrap();
    // A scalar loss comes back as it is (the mean); rows are each sample's own loss's gradient.
    assert!((loss - loss_by_hand(&p, &x, &y)).abs() < 1e-12);
    for b in 0..n {
        let (xb, yb) = (&x[b * D..(b + 1) * D], &y[b..b + 1]);
        let want = finite_differences(&p, |q| loss_by_hand(q, xb, yb));
        assert_close(&rows[b * P..(b + 1) * P], &want, 1e-7);
    }
    // Refused where there is no per-sample split: a gradient with respect to X.
    let plan = output_plan(1);
    let mut whole = Whole::new(&plan).unwrap();
    let err = per_sample_grad(&plan, &mut whole, &[&p, &x], n, &mut rows).unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err}");
}

/// Each dense layer's ā and δ rows from `layer_rows` (starting from NaN, so every element must
/// be written), and the loss.
fn rows_of_layers(
    plan: &Plan<f64>,
    whole: &mut Whole<f64>,
    args: &[&[f64]],
    n: usize,
) -> (Vec<Vec<f64>>, Vec<Vec<f64>>, f64) {
    let layers = plan.dense_layers().unwrap();
    let mut a: Vec<Vec<f64>> = layers
        .iter()
        .map(|l| vec![f64::NAN; n * l.input_width()])
        .collect();
    let mut d: Vec<Vec<f64>> = layers
        .iter()
        .map(|l| vec![f64::NAN; n * l.outputs])
        .collect();
    let mut a_views: Vec<&mut [f64]> = a.iter_mut().map(|v| &mut v[..]).collect();
    let mut d_views: Vec<&mut [f64]> = d.iter_mut().map(|v| &mut v[..]).collect();
    let loss = layer_rows(plan, whole, args, n, Some(&mut a_views), &mut d_views).unwrap();
    (a, d, loss)
}

#[test]
fn layer_rows_are_the_factors_of_each_samples_gradient() {
    let plan = loss_plan();
    let layers = plan.dense_layers().unwrap().to_vec();
    let shape: Vec<_> = layers
        .iter()
        .map(|l| (l.weight, l.bias, l.inputs, l.outputs))
        .collect();
    assert_eq!(
        shape,
        [
            (0, Some(H * D), D, H),
            (H * D + H, Some(H * D + 2 * H), H, 1)
        ]
    );
    let n = 7;
    let (p, x, y) = data(n);
    let args: [&[f64]; 3] = [&p, &x, &y];
    let mut whole = Whole::new(&plan).unwrap();
    let mut rows = vec![f64::NAN; n * P];
    per_sample_grad(&plan, &mut whole, &args, n, &mut rows).unwrap();
    let (a, mut d, loss) = rows_of_layers(&plan, &mut whole, &args, n);
    assert!((loss - loss_by_hand(&p, &x, &y)).abs() < 1e-12);
    // Sample b's gradient, rebuilt as δ_b ā_bᵀ (the bias's column is the 1 appended to ā).
    for b in 0..n {
        for (l, layer) in layers.iter().enumerate() {
            let w = layer.input_width();
            let (ab, db) = (&a[l][b * w..(b + 1) * w], &d[l][b * layer.outputs..]);
            assert_eq!(ab[layer.inputs], 1.0);
            for (o, &delta) in db[..layer.outputs].iter().enumerate() {
                for (j, &input) in ab.iter().enumerate() {
                    let at = match j < layer.inputs {
                        true => layer.weight + o * layer.inputs + j,
                        false => layer.bias.unwrap() + o,
                    };
                    assert!((delta * input - rows[b * P + at]).abs() < 1e-12);
                }
            }
        }
    }
    // The inputs may be left out; the arrays must match the layers.
    let mut d_views: Vec<&mut [f64]> = d.iter_mut().map(|v| &mut v[..]).collect();
    layer_rows(&plan, &mut whole, &args, n, None, &mut d_views).unwrap();
    let err = layer_rows(&plan, &mut whole, &args, n, None, &mut d_views[..1]).unwrap_err();
    assert!(matches!(err, Error::Arity(_)), "{err}");
}

#[test]
fn kron_factors_sum_the_layer_rows_over_ragged_tiles() {
    let plan = loss_plan();
    let layers = plan.dense_layers().unwrap().to_vec();
    let rows = plan.tile_rows().unwrap();
    let n = 2 * rows + 7; // three tiles, the last one ragged
    let (p, x, y) = data(n);
    let args: [&[f64]; 3] = [&p, &x, &y];
    // The reference: Σ_b ā_b ā_bᵀ and Σ_b δ_b δ_bᵀ from the rows layer_rows writes.
    let mut whole = Whole::new(&plan).unwrap();
    let (a, d, _) = rows_of_layers(&plan, &mut whole, &args, n);
    let gram = |rows: &[f64], w: usize| {
        let m = ArrayView2::from_shape((n, w), rows).unwrap();
        m.t().dot(&m)
    };
    // Added to what the arrays hold (ones), twice: the second call reuses every buffer.
    let mut program = Program::from_plan(plan).unwrap();
    let mut fa: Vec<Vec<f64>> = layers
        .iter()
        .map(|l| vec![1.0; l.input_width().pow(2)])
        .collect();
    let mut fg: Vec<Vec<f64>> = layers.iter().map(|l| vec![1.0; l.outputs.pow(2)]).collect();
    for _ in 0..2 {
        let mut a_views: Vec<&mut [f64]> = fa.iter_mut().map(|v| &mut v[..]).collect();
        let mut g_views: Vec<&mut [f64]> = fg.iter_mut().map(|v| &mut v[..]).collect();
        let loss = program
            .kron_factors(&args, Some(&mut a_views), &mut g_views)
            .unwrap();
        assert!((loss - loss_by_hand(&p, &x, &y)).abs() < 1e-9 * loss.abs());
    }
    for (l, layer) in layers.iter().enumerate() {
        let (w, o) = (layer.input_width(), layer.outputs);
        let close = |got: &[f64], want: Array2<f64>| {
            for (g, e) in got.iter().zip(want.iter()) {
                assert!(
                    (g - 1.0 - 2.0 * e).abs() < 1e-10 * (1.0 + e.abs()),
                    "{g} vs {e}"
                );
            }
        };
        close(&fa[l], gram(&a[l], w));
        close(&fg[l], gram(&d[l], o));
    }
    // G alone; the arrays must match the layers, and nothing is added on error.
    let mut g_views: Vec<&mut [f64]> = fg.iter_mut().map(|v| &mut v[..]).collect();
    program.kron_factors(&args, None, &mut g_views).unwrap();
    let before = fg[1][0];
    let mut g_views: Vec<&mut [f64]> = fg.iter_mut().map(|v| &mut v[..]).collect();
    let err = program
        .kron_factors(&args, None, &mut g_views[1..])
        .unwrap_err();
    assert!(matches!(err, Error::Arity(_)), "{err}");
    assert_eq!(fg[1][0], before);
}

#[test]
fn dense_layers_refuse_shared_and_untransposed_weights() {
    // f = sum(X @ W) with W (D, 1) read as X @ W, not X @ W.T.
    let mut g = Graph::new();
    let p = g.input(Shape::vector(D));
    let x = g.input(Shape::batch_of(D));
    let w = g.reshape(p, Shape::matrix(D, 1)).unwrap();
    let z = g.matmul(x, w).unwrap();
    let s = g.reduce(ReduceOp::Sum, z, Axis::All, false).unwrap();
    let plan = Plan::<f64>::compile(&g, s, &[0]).unwrap();
    match plan.dense_layers() {
        Err(Error::Unsupported(why)) => assert!(why.contains("X @ W.T"), "{why}"),
        other => panic!("{other:?}"),
    }
    // One weight read by two products.
    let mut g = Graph::new();
    let p = g.input(Shape::vector(D));
    let x = g.input(Shape::batch_of(D));
    let w = g.slice(p, 0, Shape::matrix(1, D)).unwrap();
    let wt = g.transpose(w).unwrap();
    let z1 = g.matmul(x, wt).unwrap();
    let z2 = g.matmul(x, wt).unwrap();
    let z = g.binary(BinaryOp::Mul, z1, z2).unwrap();
    let s = g.reduce(ReduceOp::Sum, z, Axis::All, false).unwrap();
    let plan = Plan::<f64>::compile(&g, s, &[0]).unwrap();
    match plan.dense_layers() {
        Err(Error::Unsupported(why)) => assert!(why.contains("shared"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_tiled_runner_refuses_what_it_cannot_tile() {
    // A sum over the batch squared: its gradient does not tile.
    let mut g = Graph::new();
    let x = g.input(Shape::batch_of(2));
    let s = g.reduce(ReduceOp::Sum, x, Axis::All, false).unwrap();
    let s2 = g.unary(UnaryOp::Square, s).unwrap();
    let plan = Plan::<f64>::compile(&g, s2, &[0]).unwrap();
    assert!(!plan.tiles_gradient());
    let (mut whole, mut tiled) = (Whole::new(&plan).unwrap(), Tiled::new(&plan));
    let x = vec![1.0; 2 * 4096];
    let sweeps = Sweeps::Both(Seed::Ones);
    let err = tiled
        .run(&plan, &mut whole, &[&x], 4096, sweeps, OutputRows::Table)
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err}");
}

#[test]
fn view_entry_points_check_shapes_from_the_views() {
    let mut program = Program::from_plan(loss_plan()).unwrap();
    let n = 12;
    let (p, x, y) = data(n);
    let pv = ArrayView1::from(&p[..]).into_dyn();
    let xv = ArrayView2::from_shape((n, D), &x[..]).unwrap().into_dyn();
    let yv = ArrayView2::from_shape((n, 1), &y[..]).unwrap().into_dyn();
    let mut grad = Array1::<f64>::zeros(P);
    let loss = program
        .value_and_grad_view(
            &[pv.clone(), xv.clone(), yv.clone()],
            &mut [grad.view_mut().into_dyn()],
        )
        .unwrap();
    assert!((loss - loss_by_hand(&p, &x, &y)).abs() < 1e-12);
    let want = finite_differences(&p, |q| loss_by_hand(q, &x, &y));
    assert_close(grad.as_slice().unwrap(), &want, 1e-7);

    let mut rows = Array2::<f64>::zeros((n, P));
    program
        .per_sample_grad_view(
            &[pv.clone(), xv.clone(), yv.clone()],
            rows.view_mut().into_dyn(),
        )
        .unwrap();
    let summed: Vec<f64> = (0..P).map(|j| rows.column(j).sum() / n as f64).collect();
    assert_close(&summed, &want, 1e-7);

    // Shapes come from the views: X of (n, 2) is refused by name, Y's batch must agree.
    let x2 = ArrayView2::from_shape((n * D / 2, 2), &x[..])
        .unwrap()
        .into_dyn();
    let err = program
        .value_and_grad_view(
            &[pv.clone(), x2, yv.clone()],
            &mut [grad.view_mut().into_dyn()],
        )
        .unwrap_err();
    assert!(matches!(err, Error::Shape(_)), "{err}");
    assert!(
        err.to_string()
            .contains("argument 1 has shape (18, 2); expected (None, 3)"),
        "{err}"
    );
    let y_short = ArrayView2::from_shape((n - 1, 1), &y[..n - 1])
        .unwrap()
        .into_dyn();
    let err = program
        .value_and_grad_view(
            &[pv.clone(), xv.clone(), y_short],
            &mut [grad.view_mut().into_dyn()],
        )
        .unwrap_err();
    assert!(err.to_string().contains("batch sizes differ"), "{err}");
    // A gradient view of the wrong shape, and one that is not contiguous: nothing written.
    let mut wide = Array1::<f64>::from_elem(2 * P, 7.0);
    let strided = wide.slice_mut(ndarray::s![..;2]).into_dyn();
    let err = program
        .value_and_grad_view(&[pv.clone(), xv.clone(), yv.clone()], &mut [strided])
        .unwrap_err();
    assert!(err.to_string().contains("C-contiguous"), "{err}");
    assert!(wide.iter().all(|&v| v == 7.0));
    let short = ArrayViewMut1::from(&mut wide.as_slice_mut().unwrap()[..P - 1]).into_dyn();
    let err = program
        .value_and_grad_view(&[pv, xv, yv], &mut [short])
        .unwrap_err();
    assert!(err.to_string().contains("expected (26,)"), "{err}");
}

#[test]
fn vjp_view_writes_the_value_and_pulls_back_the_cotangent() {
    let mut program = Program::from_plan(output_plan(0)).unwrap();
    let n = 6;
    let (p, x, _) = data(n);
    let c = Array2::<f64>::from_shape_fn((n, 1), |(b, _)| 0.5 + b as f64);
    let pv = ArrayView1::from(&p[..]).into_dyn();
    let xv = ArrayView2::from_shape((n, D), &x[..]).unwrap().into_dyn();
    let mut grad = Array1::<f64>::zeros(P);
    let mut value = Array2::<f64>::zeros((n, 1));
    program
        .vjp_view(
            &[pv, xv],
            c.view().into_dyn(),
            &mut [grad.view_mut().into_dyn()],
            Some(value.view_mut().into_dyn()),
        )
        .unwrap();
    let weighted = |q: &[f64]| -> f64 {
        (0..n)
            .map(|b| c[[b, 0]] * output_by_hand(q, &x[b * D..(b + 1) * D]))
            .sum()
    };
    assert_close(
        grad.as_slice().unwrap(),
        &finite_differences(&p, weighted),
        1e-7,
    );
    for b in 0..n {
        assert!((value[[b, 0]] - output_by_hand(&p, &x[b * D..(b + 1) * D])).abs() < 1e-12);
    }
}

#[test]
fn a_batch_too_large_for_memory_is_an_out_of_memory_error_and_the_program_survives() {
    // X (200,000, 2) is 3.2 MB, but X Xᵀ would be 320 GB: its buffer is refused, not aborted on.
    let mut g = Graph::new();
    let x = g.input(Shape::batch_of(2));
    let xt = g.transpose(x).unwrap();
    let gram = g.matmul(x, xt).unwrap();
    let s = g.reduce(ReduceOp::Sum, gram, Axis::All, false).unwrap();
    let mut program = Program::<f64>::compile(&g, s, &[0]).unwrap();
    let big = Array2::<f64>::ones((200_000, 2));
    let mut grad = Array2::<f64>::zeros((200_000, 2));
    let err = program
        .value_and_grad_view(&[big.view().into_dyn()], &mut [grad.view_mut().into_dyn()])
        .unwrap_err();
    match err {
        Error::OutOfMemory { bytes, .. } => assert_eq!(bytes, 200_000u128 * 200_000 * 8),
        other => panic!("expected OutOfMemory, got {other}"),
    }
    let small = Array2::<f64>::ones((3, 2));
    let mut g3 = Array2::<f64>::zeros((3, 2));
    let v = program
        .value_and_grad_view(&[small.view().into_dyn()], &mut [g3.view_mut().into_dyn()])
        .unwrap();
    assert_eq!(v, 18.0);
    assert!(g3.iter().all(|&d| d == 6.0)); // ∂/∂x_ij Σ (x xᵀ) = 2 Σ_k x_kj
}
