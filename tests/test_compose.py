"""Random compositions of ops: values against the same function run on NumPy, gradients against
finite differences; float32 against float64; several arguments, wrt choices, batch sizes."""
import warnings

import numpy as np
import pytest

import fastad as fa
from conftest import assert_close_rel, numeric_vjp

UNARY = [fa.tanh, fa.sin, fa.cos, fa.sigmoid, fa.softplus, lambda t: t * t, lambda t: 0.5 * t,
         lambda t: fa.exp(fa.tanh(t)), lambda t: fa.sqrt(1.0 + t * t), lambda t: -t]
BINARY = [lambda a, b: a + b, lambda a, b: a * b, lambda a, b: a - b,
          lambda a, b: a / (1.5 + fa.sigmoid(b)), fa.maximum]


def random_program(seed, depth=6):
    rng = np.random.default_rng(seed)
    plan = [(rng.integers(2), rng.integers(len(UNARY)), rng.integers(len(BINARY))) for _ in range(depth)]
    reduce_kind = rng.integers(3)

    def fn(x, w):
        vals = [x, x * w]
        for use_binary, u, b in plan:
            if use_binary:
                vals.append(BINARY[b](vals[-1], vals[-2]))
            else:
                vals.append(UNARY[u](vals[-1]))
        out = vals[-1]
        if reduce_kind == 0:
            return fa.sum(out)
        if reduce_kind == 1:
            return fa.mean(fa.sum(out, axis=1) ** 2)
        return fa.sum(fa.mean(out, axis=0) * w)

    return fn


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("n", [0, 1, 7])
def test_random_compositions(seed, n):
    fn = random_program(seed)
    rng = np.random.default_rng(100 + seed)
    x, w = rng.normal(size=(n, 3)), rng.normal(size=3)
    f = fa.compile(fn, fa.spec((None, 3)), fa.spec((3,)), wrt=(0, 1))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the mean of an empty batch
        want = fn(x, w)  # the same function on NumPy arrays
    v, (gx, gw) = f.value_and_grad(x, w)
    if n == 0 and not np.isfinite(want):
        assert not np.isfinite(v)  # mean of nothing is NaN, as in NumPy
        return
    assert_close_rel(v, want, 1e-12, "value")
    fd = numeric_vjp(f, [x, w], [0, 1], np.array(1.0))
    assert_close_rel(gx, fd[0], 1e-6, "gradient wrt x")
    assert_close_rel(gw, fd[1], 1e-6, "gradient wrt w")

    f32 = fa.compile(fn, fa.spec((None, 3)), fa.spec((3,)), wrt=(0, 1), dtype=np.float32)
    v32, (gx32, gw32) = f32.value_and_grad(x.astype(np.float32), w.astype(np.float32))
    assert_close_rel(v32, v, 1e-4, "float32 value")
    assert_close_rel(gx32, gx, 1e-4, "float32 gradient")
    assert_close_rel(gw32, gw, 1e-4, "float32 gradient")


def test_issue_example_with_two_wrt_arguments():
    def loss(W, b, X, y):
        return fa.mean((fa.tanh(X @ W.T + b) - y) ** 2)

    rng = np.random.default_rng(0)
    W, b = rng.normal(size=(1, 3)), rng.normal(size=1)
    f = fa.compile(loss, W, b, fa.spec((None, 3)), fa.spec((None, 1)), wrt=(0, 1))
    X, y = rng.normal(size=(10, 3)), rng.normal(size=(10, 1))
    gW, gb = np.empty_like(W), np.empty_like(b)
    val = f.value_and_grad(W, b, X, y, out=(gW, gb))
    assert np.isclose(val, np.mean((np.tanh(X @ W.T + b) - y) ** 2), rtol=1e-13)
    fd = numeric_vjp(f, [W, b, X, y], [0, 1], np.array(1.0))
    assert_close_rel(gW, fd[0], 1e-6)
    assert_close_rel(gb, fd[1], 1e-6)
    # Every batch size, including ones larger than any before, and back.
    for n in [3, 50, 1, 200, 0, 10]:
        Xn, yn = rng.normal(size=(n, 3)), rng.normal(size=(n, 1))
        v, (a, c) = f.value_and_grad(W, b, Xn, yn)
        if n:
            assert np.isclose(v, np.mean((np.tanh(Xn @ W.T + b) - yn) ** 2), rtol=1e-13)
            fd = numeric_vjp(f, [W, b, Xn, yn], [0, 1], np.array(1.0))
            assert_close_rel(a, fd[0], 1e-6)
    # Input gradient by vjp on a non-scalar program.
    g = fa.compile(lambda W, X: fa.tanh(X @ W.T), W, fa.spec((None, 3)), wrt=1)
    cot = rng.normal(size=(10, 1))
    dx = g.vjp(W, X, cot)
    assert_close_rel(dx, (cot * (1 - np.tanh(X @ W.T) ** 2)) @ W, 1e-12)
    out_val = np.empty((10, 1))
    g.vjp(W, X, cot, value_out=out_val)
    assert_close_rel(out_val, np.tanh(X @ W.T), 1e-14)


def test_gradient_of_an_unused_argument_is_zero_and_identity_programs_work():
    f = fa.compile(lambda x, y: fa.sum(x * 2.0), fa.spec((3,)), fa.spec((2,)), wrt=(0, 1))
    v, (gx, gy) = f.value_and_grad(np.ones(3), np.ones(2))
    assert v == 6.0 and np.array_equal(gx, [2, 2, 2]) and np.array_equal(gy, [0, 0])
    ident = fa.compile(lambda x: x, fa.spec((None, 2)))
    assert np.array_equal(ident(np.arange(4.0).reshape(2, 2)), np.arange(4.0).reshape(2, 2))
    c = np.arange(4.0).reshape(2, 2) + 1
    assert np.array_equal(ident.vjp(np.zeros((2, 2)), c), c)


def test_numpy_ufuncs_on_tracers_are_traced():
    c = np.array([1.0, 2.0, 3.0])
    f = fa.compile(lambda x: fa.sum(np.exp(c * x) - c / (x + 4) + np.maximum(x, c) ** 2), fa.spec((3,)))
    x = np.array([0.1, -0.2, 3.5])
    assert np.isclose(f(x), np.sum(np.exp(c * x) - c / (x + 4) + np.maximum(x, c) ** 2), rtol=1e-14)
    fd = numeric_vjp(f, [x], [0], np.array(1.0))
    assert_close_rel(f.grad(x), fd[0], 1e-6)


def test_nan_and_inf_propagate():
    f = fa.compile(lambda x: fa.sum(fa.log(x) * x), fa.spec((3,)))
    with np.errstate(all="ignore"):
        v, g = f.value_and_grad(np.array([1.0, np.nan, 0.0]))
    assert np.isnan(v) and np.isnan(g[1]) and g[0] == 1.0
    f = fa.compile(lambda x: fa.logsumexp(x), fa.spec((3,)))
    assert f(np.array([-np.inf, -np.inf, -np.inf])) == -np.inf
    assert f(np.array([np.inf, 0.0, 1.0])) == np.inf
