"""Per-sample gradients from one batched pass, against a loop of single-sample gradients."""
import copy

import numpy as np
import pytest

import fastad as fa
from conftest import assert_close_rel, numeric_vjp
from test_layers import backward_np, forward_np, layers_np, targets

CASES = [("sse", None), ("sse", "regression"), ("mse", "regression"),
         ("cross_entropy", "labels"), ("bce_logits", "binary")]


@pytest.mark.parametrize("loss,kind", CASES)
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_per_sample_grads_match_single_sample_gradients(loss, kind, dtype, tol):
    rng = np.random.default_rng(0)
    model = fa.Chain(fa.Dense(2, 16, "sigmoid"), fa.Dense(16, 3, "tanh"), fa.Dense(3, 3),
                     dtype=dtype, seed=1)
    n = 37
    X = rng.normal(size=(n, 2))
    Y = targets(kind, n, 3, rng)
    G = model.per_sample_grads(X, Y, loss=loss)
    assert G.shape == (n, model.n_params) and G.dtype == dtype
    for b in range(n):
        yb = None if Y is None else Y[b:b + 1]
        _, want = model.value_and_grad(X[b:b + 1], yb, loss=loss)
        assert_close_rel(G[b], want, tol, f"{loss}, sample {b}")
    out = np.empty_like(G)
    assert model.per_sample_grads(X, Y, loss=loss, out=out) is out
    assert_close_rel(out, G, 0)


def test_seed_002_model_and_no_allocation():
    rng = np.random.default_rng(1)
    model = fa.Chain(fa.Dense(1, 32, "sigmoid"), fa.Dense(32, 1), dtype=np.float32, seed=0)
    X = rng.normal(size=(128, 1)).astype(np.float32)
    Y = rng.normal(size=(128, 1)).astype(np.float32)
    G = np.empty((128, 97), np.float32)
    for _ in range(3):
        model.per_sample_grads(X, Y, loss="mse", out=G)
    before = fa.allocation_count()
    for _ in range(100):
        model.per_sample_grads(X, Y, loss="mse", out=G)
    assert fa.allocation_count() == before
    # The mean of per-sample gradients is the batch gradient of the mean loss.
    _, g = model.value_and_grad(X, Y, loss="mse")
    assert_close_rel(G.mean(axis=0), g, 1e-5)


@pytest.mark.parametrize("n", [5, 3000])
def test_gradient_on_the_same_program_after_per_sample_gradients(n):
    # Per-sample replays leave the parameters' summed gradient out of the reverse sweep: the
    # next gradient on the same compiled program (untiled at 5 rows, tiled at 3000) must not
    # read anything they left behind.
    rng = np.random.default_rng(4)
    model = fa.Chain(fa.Dense(3, 8, "tanh"), fa.Dense(8, 2), seed=2)
    X, Y = rng.normal(size=(n, 3)), rng.normal(size=(n, 2))
    _, want = copy.deepcopy(model).value_and_grad(X, Y, loss="mse")
    for _ in range(2):
        G = model.per_sample_grads(X, Y, loss="mse")
        _, got = model.value_and_grad(X, Y, loss="mse")
        assert_close_rel(got, want, 1e-12)
        assert_close_rel(G.mean(axis=0), want, 1e-10)


def test_deep_model_allocates_nothing_after_the_first_call():
    # Six layers: more parameter uses than the first call's plan would hold inline.
    model = fa.Chain(*[fa.Dense(3, 3, "tanh") for _ in range(5)], fa.Dense(3, 1), seed=0)
    rng = np.random.default_rng(3)
    X, Y = rng.normal(size=(10, 3)), rng.normal(size=(10, 1))
    G = np.empty((10, model.n_params))
    model.per_sample_grads(X, Y, loss="mse", out=G)
    before = fa.allocation_count()
    for _ in range(20):
        model.per_sample_grads(X, Y, loss="mse", out=G)
    assert fa.allocation_count() == before
    for b in range(10):
        _, want = model.value_and_grad(X[b:b + 1], Y[b:b + 1], loss="mse")
        assert_close_rel(G[b], want, 1e-12, f"sample {b}")


@pytest.mark.parametrize("shape", ["(N,)", "(N, 1)"])
def test_a_program_returning_one_loss_per_sample(shape):
    # ℓ_b = ½‖f(x_b) − y_b‖², returned per sample: row b of G is ∇θ ℓ_b, checked against NumPy
    # backpropagation of that one sample and against central finite differences of ℓ_b.
    model = fa.Chain(fa.Dense(3, 6, "tanh"), fa.Dense(6, 2), seed=4)
    rng = np.random.default_rng(5)
    n = 11
    X, Y = rng.normal(size=(n, 3)), rng.normal(size=(n, 2))

    def losses(p, X, Y):
        r = model.apply(p, X) - Y
        return 0.5 * fa.sum(r * r, axis=1, keepdims=shape == "(N, 1)")

    prog = fa.compile(losses, model.params, fa.spec((None, 3)), fa.spec((None, 2)))
    G = prog.per_sample_grad(model.params, X, Y)
    assert G.shape == (n, model.n_params)
    layers = layers_np(model)
    for b in range(n):
        hs, zs = forward_np(layers, X[b:b + 1])
        want, _ = backward_np(layers, hs, zs, hs[-1] - Y[b:b + 1])
        assert_close_rel(G[b], want, 1e-12, f"sample {b} vs NumPy")
    for b in (0, n - 1):
        one = np.zeros((n,) if shape == "(N,)" else (n, 1))
        one[b] = 1.0
        (fd,) = numeric_vjp(lambda p: prog(p, X, Y), [model.params], [0], one)
        assert_close_rel(G[b], fd, 1e-6, f"sample {b} vs finite differences")


def test_parameters_and_products_of_size_zero():
    f = fa.compile(lambda p, X: fa.sum(X @ p.flat_slice(0, (0, 2)).T), fa.spec((0,)),
                   fa.spec((None, 2)))
    G = f.per_sample_grad(np.zeros(0), np.ones((3, 2)))
    assert G.shape == (3, 0)
    # A product of width 0 beside one of width 1: only the second has gradient rows (X's rows).
    C = np.zeros((0, 1))
    g = fa.compile(lambda p, X: fa.sum((X @ p.flat_slice(0, (0, 2)).T) @ C
                                       + X @ p.flat_slice(0, (1, 2)).T),
                   fa.spec((2,)), fa.spec((None, 2)))
    X = np.arange(6.0).reshape(3, 2)
    np.testing.assert_array_equal(g.per_sample_grad(np.ones(2), X), X)


def test_programs_without_a_per_sample_split_are_refused():
    model = fa.Chain(fa.Dense(2, 4, "tanh"), fa.Dense(4, 1), seed=0)
    X = np.ones((5, 2))
    f = fa.compile(lambda p, X: fa.sum(model.apply(p, X)) ** 2, model.params, fa.spec((None, 2)))
    with pytest.raises(ValueError, match="sum or mean over the batch"):
        f.per_sample_grad(model.params, X)
    g = fa.compile(lambda p, X: fa.sum(model.apply(p, X)) + fa.sum(p * p), model.params,
                   fa.spec((None, 2)))
    with pytest.raises(ValueError, match=r"read by a multiplication \(\*\) \(giving shape \(17,\)\)"):
        g.per_sample_grad(model.params, X)
    with pytest.raises(ValueError, match="one wrt argument"):
        fa.compile(lambda p, X: fa.sum(model.apply(p, X)), model.params, fa.spec((None, 2)),
                   wrt=(0, 1)).per_sample_grad(model.params, X)
    # One loss per sample that reads the whole batch (centred by the batch mean), and an output
    # with several values per sample.
    mixed = fa.compile(lambda p, X: fa.sum(model.apply(p, X) - fa.mean(model.apply(p, X)), axis=1),
                       model.params, fa.spec((None, 2)))
    with pytest.raises(ValueError, match="must depend on its own sample alone"):
        mixed.per_sample_grad(model.params, X)
    wide = fa.compile(lambda p, X: model.apply(p, X) * X, model.params, fa.spec((None, 2)))
    with pytest.raises(ValueError, match=r"one loss per sample, \(N,\); not of shape \(None, 2\)"):
        wide.per_sample_grad(model.params, X)
    with pytest.raises(ValueError, match=r"out has shape \(5, 3\); expected \(5, 17\)"):
        model.per_sample_grads(X, out=np.empty((5, 3)))


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_tied_weights_and_unread_parameters(dtype, tol):
    # W is read by two products (its rows get both contributions), p[12:16] by none (zero rows).
    def f(p, X):
        W, b = p.flat_slice(0, (3, 3)), p.flat_slice(9, (3,))
        h = fa.tanh(X @ W.T + b)
        return fa.sum((h @ W) ** 2)

    rng = np.random.default_rng(2)
    p = rng.normal(size=16).astype(dtype)
    X = rng.normal(size=(9, 3)).astype(dtype)
    prog = fa.compile(f, fa.spec((16,), dtype), fa.spec((None, 3), dtype), dtype=dtype)
    G = np.full((9, 16), np.nan, dtype)
    prog.per_sample_grad(p, X, out=G)
    for b in range(9):
        _, want = prog.value_and_grad(p, X[b:b + 1])
        assert_close_rel(G[b], want, tol, f"sample {b}")
    assert np.all(G[:, 12:] == 0)
