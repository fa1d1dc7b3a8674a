"""Every op's value against NumPy and its gradient against central finite differences (float64)."""
import numpy as np
import pytest

import fastad as fa
from conftest import assert_close_rel, numeric_vjp

RNG = np.random.default_rng(0)


def sample(shape, n, lo=-2.0, hi=2.0, avoid_zero=False):
    concrete = tuple(n if d is None else d for d in shape)
    x = RNG.uniform(lo, hi, size=concrete)
    if avoid_zero:
        x = np.where(np.abs(x) < 0.1, 0.5, x)
    return x


def check(fn, ref, specs, arrays, wrt, rel=1e-6):
    """Compiles `fn`, checks its value against `ref` (NumPy), its vjp against finite differences,
    and, for a scalar output, value_and_grad against the same."""
    f = fa.compile(fn, *specs, wrt=tuple(wrt))
    value = f(*arrays)
    want = ref(*arrays)
    assert_close_rel(value, want, 1e-12, "value")
    cot = RNG.normal(size=np.shape(want)) if np.ndim(want) else np.array(1.0)
    got = f.vjp(*arrays, cot)
    fd = numeric_vjp(f, arrays, wrt, cot)
    for k, (g, e) in enumerate(zip(got, fd)):
        assert_close_rel(g, e, rel, f"vjp wrt argument {wrt[k]}")
    if np.ndim(want) == 0:
        v, grads = f.value_and_grad(*arrays)
        assert_close_rel(v, want, 1e-12, "value_and_grad value")
        for g, e in zip(grads, fd):
            assert_close_rel(g, e, rel, "value_and_grad gradient")


UNARY = [
    ("neg", lambda x: -x, lambda x: -x, {}),
    ("exp", fa.exp, np.exp, {}),
    ("log", fa.log, np.log, {"lo": 0.2, "hi": 3.0}),
    ("log1p", fa.log1p, np.log1p, {"lo": -0.5, "hi": 3.0}),
    ("expm1", fa.expm1, np.expm1, {}),
    ("sqrt", fa.sqrt, np.sqrt, {"lo": 0.2, "hi": 3.0}),
    ("abs", fa.abs, np.abs, {"avoid_zero": True}),
    ("tanh", fa.tanh, np.tanh, {}),
    ("sigmoid", fa.sigmoid, lambda x: 1 / (1 + np.exp(-x)), {}),
    ("relu", fa.relu, lambda x: np.maximum(x, 0), {"avoid_zero": True}),
    ("softplus", fa.softplus, lambda x: np.log(1 + np.exp(x)), {}),
    ("sin", fa.sin, np.sin, {}),
    ("cos", fa.cos, np.cos, {}),
    ("square", fa.square, np.square, {}),
    ("pow2", lambda x: x**2, lambda x: x**2, {}),
    ("pow3", lambda x: x**3, lambda x: x**3, {}),
    ("pow-1.5", lambda x: x**-1.5, lambda x: x**-1.5, {"lo": 0.3, "hi": 3.0}),
]
SHAPES = [((), 0), ((5,), 0), ((3, 4), 0), ((None, 3), 0), ((None, 3), 1), ((None, 3), 4), ((None,), 6)]


@pytest.mark.parametrize("name,fn,ref,dom", UNARY, ids=[u[0] for u in UNARY])
@pytest.mark.parametrize("shape,n", SHAPES)
def test_unary(name, fn, ref, dom, shape, n):
    x = sample(shape, n, **dom)
    check(fn, ref, [fa.spec(shape)], [x], [0])


@pytest.mark.parametrize("name,fn,ref,dom", UNARY, ids=[u[0] for u in UNARY])
def test_unary_of_an_intermediate_replayed_with_new_data(name, fn, ref, dom):
    """A function whose operand nothing else reads overwrites the operand's adjoint without
    zeroing it first: replays with new data and cotangents must keep nothing of earlier ones."""
    f = fa.compile(lambda x: fn(x * 1.5 + 0.1), fa.spec((None, 3)))
    for n in (4, 6, 4):
        x = sample((None, 3), n, **dom)
        x = np.where(np.abs(x * 1.5 + 0.1) < 0.1, 0.5, x) if dom.get("avoid_zero") else x
        assert_close_rel(f(x), ref(x * 1.5 + 0.1), 1e-12, "value")
        cot = RNG.normal(size=(n, 3))
        assert_close_rel(f.vjp(x, cot), numeric_vjp(f, [x], [0], cot)[0], 1e-6, "vjp")


def test_chained_functions_replayed_with_new_data():
    """Chains mixing operands read once (adjoint overwritten) and twice (accumulated), and a
    zeroth power (derivative 0 written, not skipped), replayed with new data."""
    def fn(x, y):
        a = fa.tanh(x * y)
        s = fa.sin(a)
        return fa.exp(fa.sigmoid(s)) * (x + y) ** 0.0 + fa.square(a * 2.0)

    def ref(x, y):
        a = np.tanh(x * y)
        return np.exp(1 / (1 + np.exp(-np.sin(a)))) + np.square(a * 2.0)

    f = fa.compile(fn, fa.spec((None, 3)), fa.spec((None, 3)), wrt=(0, 1))
    for n in (5, 3, 7):
        x, y = sample((None, 3), n), sample((None, 3), n)
        assert_close_rel(f(x, y), ref(x, y), 1e-12, "value")
        cot = RNG.normal(size=(n, 3))
        for got, fd in zip(f.vjp(x, y, cot), numeric_vjp(f, [x, y], [0, 1], cot)):
            assert_close_rel(got, fd, 1e-6, "vjp")


BINARY = [
    ("add", lambda a, b: a + b, np.add, {}),
    ("sub", lambda a, b: a - b, np.subtract, {}),
    ("mul", lambda a, b: a * b, np.multiply, {}),
    ("div", lambda a, b: a / b, np.divide, {"avoid_zero": True}),
    ("pow", lambda a, b: a**b, np.power, {"lo": 0.3, "hi": 2.0}),
    ("maximum", fa.maximum, np.maximum, {}),
    ("minimum", fa.minimum, np.minimum, {}),
]
PAIRS = [
    ((5,), (5,), 0), ((3, 4), (4,), 0), ((3, 4), (3, 1), 0), ((), (3, 4), 0), ((1, 4), (3, 1), 0),
    ((None, 3), (3,), 4), ((None, 3), (None, 1), 5), ((None, 3), (), 1), ((None, 3), (None, 3), 0),
]


@pytest.mark.parametrize("name,fn,ref,dom", BINARY, ids=[b[0] for b in BINARY])
@pytest.mark.parametrize("sa,sb,n", PAIRS)
def test_binary(name, fn, ref, dom, sa, sb, n):
    a, b = sample(sa, n, **dom), sample(sb, n, **dom)
    check(fn, ref, [fa.spec(sa), fa.spec(sb)], [a, b], [0, 1])


def test_binary_with_python_and_numpy_constants():
    c = RNG.normal(size=3)
    fn = lambda x: 2.0 * x - x / 3.0 + c * x + 1.5**x + x**2.5 + (1 - x) + 4 / (x + 3)
    ref = lambda x: 2.0 * x - x / 3.0 + c * x + 1.5**x + x**2.5 + (1 - x) + 4 / (x + 3)
    check(fn, ref, [fa.spec((None, 3))], [sample((None, 3), 4, lo=0.2, hi=2.0)], [0])


MATMUL = [
    ("MK@KN", (3, 4), (4, 2), lambda a, b: a @ b, 0),
    ("K@KN", (4,), (4, 2), lambda a, b: a @ b, 0),
    ("MK@K", (3, 4), (4,), lambda a, b: a @ b, 0),
    ("K@K", (4,), (4,), lambda a, b: a @ b, 0),
    ("X@WT", (None, 4), (2, 4), lambda a, b: a @ b.T, 5),
    ("XT@X", (None, 3), (None, 3), lambda a, b: a.T @ b, 6),
    ("AT@BT", (4, 3), (2, 4), lambda a, b: a.T @ b.T, 0),
    ("A@BT_batch1", (None, 4), (3, 4), lambda a, b: a @ b.T, 1),
    ("batch0", (None, 4), (3, 4), lambda a, b: a @ b.T, 0),
]


@pytest.mark.parametrize("name,sa,sb,fn,n", MATMUL, ids=[m[0] for m in MATMUL])
def test_matmul(name, sa, sb, fn, n):
    a, b = sample(sa, n), sample(sb, n)
    check(fn, fn, [fa.spec(sa), fa.spec(sb)], [a, b], [0, 1])


def test_large_matmul_uses_threads_and_matches_numpy():
    fa.set_num_threads(2)
    a, w = RNG.normal(size=(300, 200)), RNG.normal(size=(150, 200))
    f = fa.compile(lambda a, w: a @ w.T, a, w)
    assert_close_rel(f(a, w), a @ w.T, 1e-12)


REDUCE = [(fa.sum, np.sum), (fa.mean, np.mean)]


def np_logsumexp(x, axis=None, keepdims=False):
    m = np.max(x, axis=axis, keepdims=True)
    r = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return r if keepdims else np.squeeze(r, axis=axis) if axis is not None else r.reshape(())


@pytest.mark.parametrize("kind", ["sum", "mean", "logsumexp"])
@pytest.mark.parametrize("shape,n,axis,keepdims", [
    ((5,), 0, None, False), ((5,), 0, 0, True), ((3, 4), 0, None, False), ((3, 4), 0, 0, False),
    ((3, 4), 0, 1, True), ((3, 4), 0, -1, False), ((None, 3), 4, 0, False), ((None, 3), 4, 1, False),
    ((None, 3), 1, None, True), ((None, 3), 4, 0, True),
])
def test_reductions(kind, shape, n, axis, keepdims):
    fa_fn = {"sum": fa.sum, "mean": fa.mean, "logsumexp": fa.logsumexp}[kind]
    np_fn = {"sum": np.sum, "mean": np.mean, "logsumexp": np_logsumexp}[kind]
    x = sample(shape, n)
    check(lambda x: fa_fn(x, axis=axis, keepdims=keepdims), lambda x: np_fn(x, axis=axis, keepdims=keepdims),
          [fa.spec(shape)], [x], [0])


def np_softmax(x, axis):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("shape,n,axis", [((5,), 0, -1), ((3, 4), 0, -1), ((3, 4), 0, 0), ((None, 4), 3, 1),
                                          ((3, 4), 0, None)])
def test_softmax(log, shape, n, axis):
    fn = (lambda x: fa.log_softmax(x, axis)) if log else (lambda x: fa.softmax(x, axis))
    ref = (lambda x: np.log(np_softmax(x, axis))) if log else (lambda x: np_softmax(x, axis))
    check(fn, ref, [fa.spec(shape)], [sample(shape, n)], [0])


@pytest.mark.parametrize("shape,n", [((3, 4), 0), ((None, 2), 3)])
def test_transpose(shape, n):
    check(lambda x: x.T * 1.0, lambda x: x.T * 1.0, [fa.spec(shape)], [sample(shape, n)], [0])


@pytest.mark.parametrize("shape,n,new", [((3, 4), 0, (12,)), ((3, 4), 0, (2, 6)), ((None, 1), 4, (None,))])
def test_reshape(shape, n, new):
    concrete = tuple(n if d is None else d for d in new)
    check(lambda x: x.reshape(new) * 2.0, lambda x: x.reshape(concrete) * 2.0, [fa.spec(shape)], [sample(shape, n)], [0])


def test_losses():
    n, k = 6, 4
    logits = sample((None, k), n)
    labels = RNG.integers(0, k, size=n)
    probs = np_softmax(RNG.normal(size=(n, k)), 1)
    targets = RNG.uniform(size=(n, k))
    logp = np.log(np_softmax(logits, 1))
    check(fa.cross_entropy, lambda z, y: -np.mean(logp[np.arange(n), y.astype(int)]),
          [fa.spec((None, k)), fa.spec((None,))], [logits, labels.astype(float)], [0])
    check(fa.cross_entropy, lambda z, p: -np.mean(np.sum(p * logp, axis=1)),
          [fa.spec((None, k)), fa.spec((None, k))], [logits, probs], [0, 1])
    check(fa.bce_logits, lambda z, t: np.mean(np.log1p(np.exp(z)) - z * t),
          [fa.spec((None, k)), fa.spec((None, k))], [logits, targets], [0, 1])
    check(fa.mse, lambda a, b: np.mean((a - b) ** 2), [fa.spec((None, k))] * 2, [logits, targets], [0, 1])
    check(fa.sse, lambda a, b: np.sum((a - b) ** 2), [fa.spec((None, k))] * 2, [logits, targets], [0, 1])


def test_cross_entropy_accepts_integer_labels_and_rejects_bad_ones():
    f = fa.compile(fa.cross_entropy, fa.spec((None, 3)), fa.spec((None,)))
    z = RNG.normal(size=(4, 3))
    logp = np.log(np_softmax(z, 1))
    assert np.isclose(f(z, np.array([0, 2, 1, 2])), -np.mean(logp[np.arange(4), [0, 2, 1, 2]]))
    with pytest.raises(ValueError, match="label 3"):
        f(z, np.array([0, 3, 1, 2]))
    assert np.isfinite(f(z, np.array([0, 2, 1, 2])))  # still works afterwards


# A step whose only reader writes its whole adjoint (x·x, x·y, x·c, a sum or mean, a reshape,
# a transpose) is assigned there, not zeroed first and added to: a gradient that picked up the
# previous call's adjoints would be wrong from the second call on. Each function differentiates
# a small weight through such a step, over a batch that tiles (3000 rows) where the program does
# (a transposed batch does not tile).
ASSIGNED_ADJOINTS = [
    ("x*x", lambda X, w: ((X @ w) * (X @ w)).sum() + (lambda h: (h * h).sum())(X @ w)),
    ("x*y", lambda X, w: (fa.tanh(X @ w) * (X @ (w * 2.0))).sum()),
    ("x*c", lambda X, w: ((X @ w) * 3.0 - 1.5).sum()),
    ("mean", lambda X, w: fa.tanh(X @ w).mean()),
    ("reshape", lambda X, w: fa.tanh(X @ fa.tanh(w).reshape(12).reshape(3, 4)).T.sum()),
    ("transpose", lambda X, w: fa.tanh((X @ w).T).sum()),
]


@pytest.mark.parametrize("name,fn", ASSIGNED_ADJOINTS, ids=[a[0] for a in ASSIGNED_ADJOINTS])
def test_gradients_stay_right_on_repeated_calls(name, fn, threads):
    f = fa.compile(fn, fa.spec((None, 3)), fa.spec((3, 4)), wrt=1)
    rng = np.random.default_rng(7)
    for call in range(3):
        X, w = rng.normal(size=(3000, 3)) * 0.3, rng.normal(size=(3, 4))
        value, grad = f.value_and_grad(X, w)
        (fd,) = numeric_vjp(f, [X, w], [1], np.array(1.0))
        assert_close_rel(grad, fd, 1e-6, f"{name}, call {call + 1}, {threads} threads")
