"""fa.Dense / fa.Chain against a plain NumPy implementation of forward and backward, and against
central finite differences (float64)."""
import numpy as np
import pytest

import fastad as fa
from conftest import assert_close_rel

ACTIVATIONS = [None, "relu", "tanh", "sigmoid", "softplus", "gelu"]


# An independent NumPy reference: forward keeping pre-activations, backward by hand. -------------

def act_np(name, z):
    if name is None:
        return z
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "tanh":
        return np.tanh(z)
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if name == "softplus":
        return np.logaddexp(0.0, z)
    if name == "gelu":
        c = np.sqrt(2.0 / np.pi)
        return 0.5 * z * (1.0 + np.tanh(c * (z + 0.044715 * z**3)))
    raise ValueError(name)


def dact_np(name, z):
    if name is None:
        return np.ones_like(z)
    if name == "relu":
        return (z > 0).astype(z.dtype)
    if name == "tanh":
        return 1.0 - np.tanh(z) ** 2
    if name == "sigmoid":
        s = 1.0 / (1.0 + np.exp(-z))
        return s * (1.0 - s)
    if name == "softplus":
        return 1.0 / (1.0 + np.exp(-z))
    if name == "gelu":
        c = np.sqrt(2.0 / np.pi)
        u = c * (z + 0.044715 * z**3)
        t = np.tanh(u)
        return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t**2) * c * (1.0 + 3 * 0.044715 * z**2)
    raise ValueError(name)


def layers_np(model):
    return [(l.weight.astype(np.float64), l.bias.astype(np.float64), l.activation) for l in model.layers]


def forward_np(layers, X):
    hs, zs = [X], []
    for W, b, act in layers:
        z = hs[-1] @ W.T + b
        zs.append(z)
        hs.append(act_np(act, z))
    return hs, zs


def backward_np(layers, hs, zs, dY):
    """dY → (flat parameter gradient, input gradient)."""
    grads, d = [], dY
    for (W, b, act), h, z in reversed(list(zip(layers, hs[:-1], zs))):
        dz = d * dact_np(act, z)
        grads.append((dz.T @ h, dz.sum(axis=0)))
        d = dz @ W
    flat = np.concatenate([np.concatenate([gW.ravel(), gb]) for gW, gb in reversed(grads)])
    return flat, d


def loss_np(name, Y, T):
    """(loss, dloss/dY)."""
    if name == "sse":
        R = Y if T is None else Y - T
        return np.sum(R * R), 2 * R
    if name == "mse":
        R = Y - T
        return np.mean(R * R), 2 * R / R.size
    if name == "cross_entropy":
        m = Y.max(axis=1, keepdims=True)
        logp = Y - m - np.log(np.exp(Y - m).sum(axis=1, keepdims=True))
        P = np.exp(logp)
        onehot = np.zeros_like(Y)
        if T.ndim == 1:
            onehot[np.arange(len(T)), T.astype(int)] = 1.0
        else:
            onehot = T
        n = Y.shape[0]
        return -np.sum(onehot * logp) / n, (P * onehot.sum(axis=1, keepdims=True) - onehot) / n
    if name == "bce_logits":
        n = Y.size
        return np.mean(np.logaddexp(0.0, Y) - Y * T), (1.0 / (1.0 + np.exp(-Y)) - T) / n
    raise ValueError(name)


def loss_value_and_grad_np(model, X, T, loss):
    """The loss of the network on X against T and its parameter gradient, by the NumPy reference."""
    layers = layers_np(model)
    hs, zs = forward_np(layers, X)
    value, dY = loss_np(loss, hs[-1], T)
    return value, backward_np(layers, hs, zs, dY)[0]


def make_model(acts=(None, None), sizes=(3, 5, 4, 2), dtype=np.float64, seed=0):
    layers = [fa.Dense(sizes[i], sizes[i + 1], acts[i] if i < len(acts) else None)
              for i in range(len(sizes) - 1)]
    return fa.Chain(*layers, dtype=dtype, seed=seed)


def finite_difference_grad(model, f, h=1e-6):
    p0 = model.params.copy()
    g = np.zeros_like(p0)
    for i in range(p0.size):
        vals = []
        for step in (h, -h):
            model.params[:] = p0
            model.params[i] += step
            vals.append(f())
        g[i] = (vals[0] - vals[1]) / (2 * h)
    model.params[:] = p0
    return g


# Tests ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("n", [0, 1, 7, 300])
def test_forward_matches_numpy(act, n):
    rng = np.random.default_rng(n)
    model = make_model((act, act))
    X = rng.normal(size=(n, 3))
    hs, _ = forward_np(layers_np(model), X)
    assert_close_rel(model(X), hs[-1], 1e-12, f"{act} n={n}")
    out = np.full((n, 2), np.nan)
    assert model(X, out=out) is out
    assert_close_rel(out, hs[-1], 1e-12)


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_vjp_to_params_and_input_matches_numpy_backprop(act):
    rng = np.random.default_rng(1)
    model = make_model((act, act, act), sizes=(3, 6, 5, 2))
    X = rng.normal(size=(11, 3))
    dY = rng.normal(size=(11, 2))
    layers = layers_np(model)
    hs, zs = forward_np(layers, X)
    gp, gx = backward_np(layers, hs, zs, dY)
    assert_close_rel(model.vjp(X, dY), gp, 1e-12, "params")
    assert_close_rel(model.vjp(X, dY, wrt="input"), gx, 1e-12, "input")
    g = np.empty(model.n_params)
    model.vjp(X, dY, out=g)
    assert_close_rel(g, gp, 1e-12)


LOSS_CASES = [
    ("sse", None),
    ("sse", "regression"),
    ("mse", "regression"),
    ("cross_entropy", "labels"),
    ("cross_entropy", "probabilities"),
    ("bce_logits", "binary"),
]


def targets(kind, n, k, rng):
    if kind is None:
        return None
    if kind == "regression":
        return rng.normal(size=(n, k))
    if kind == "labels":
        return rng.integers(0, k, size=n)
    if kind == "probabilities":
        p = rng.random((n, k))
        return p / p.sum(axis=1, keepdims=True)
    return (rng.random((n, k)) < 0.5).astype(np.float64)


@pytest.mark.parametrize("loss,kind", LOSS_CASES)
@pytest.mark.parametrize("act", ["tanh", "softplus"])
@pytest.mark.parametrize("n", [1, 9])
def test_value_and_grad_matches_numpy_and_finite_differences(loss, kind, act, n):
    rng = np.random.default_rng(7)
    model = make_model((act, None), sizes=(3, 4, 3))
    X = rng.normal(size=(n, 3))
    T = targets(kind, n, 3, rng)
    want_value, want_grad = loss_value_and_grad_np(model, X, T, loss)

    value, grad = model.value_and_grad(X, T, loss=loss)
    assert value == pytest.approx(want_value, rel=1e-12)
    assert_close_rel(grad, want_grad, 1e-12, f"{loss} vs NumPy backprop")
    fd = finite_difference_grad(model, lambda: model.loss(X, T, loss=loss))
    assert_close_rel(grad, fd, 1e-6, f"{loss} vs finite differences")
    g = np.empty(model.n_params)
    assert model.value_and_grad(X, T, loss=loss, out=g) == pytest.approx(want_value, rel=1e-12)
    assert_close_rel(g, want_grad, 1e-12)
    assert_close_rel(model.grad(X, T, loss=loss), want_grad, 1e-12)


def test_l2_penalty_is_half_lambda_squared_times_the_squared_norm():
    rng = np.random.default_rng(3)
    model = make_model(("sigmoid", None), sizes=(1, 8, 1))
    X, T = rng.normal(size=(5, 1)), rng.normal(size=(5, 1))
    lam = 0.3
    v0, g0 = model.value_and_grad(X, T, loss="mse")
    v, g = model.value_and_grad(X, T, loss="mse", l2=lam)
    p = model.params
    assert v == pytest.approx(v0 + 0.5 * lam**2 * np.sum(p * p), rel=1e-12)
    assert_close_rel(g, g0 + lam**2 * p, 1e-12)


def test_custom_loss_function_and_composition_inside_compile():
    rng = np.random.default_rng(4)
    model = make_model(("tanh", None))
    X, T = rng.normal(size=(6, 3)), rng.normal(size=(6, 2))
    v, g = model.value_and_grad(X, T, loss=lambda y, t: fa.sum(fa.abs(y - t) * 2.0))
    layers = layers_np(model)
    hs, zs = forward_np(layers, X)
    assert v == pytest.approx(np.sum(np.abs(hs[-1] - T) * 2.0), rel=1e-12)
    want, _ = backward_np(layers, hs, zs, 2.0 * np.sign(hs[-1] - T))
    assert_close_rel(g, want, 1e-12)

    # The model as graph nodes inside the user's own function.
    f = fa.compile(lambda p, X: fa.sum(fa.sin(model.apply(p, X))), model.params, fa.spec((None, 3)))
    v, g = f.value_and_grad(model.params, X)
    assert v == pytest.approx(np.sum(np.sin(hs[-1])), rel=1e-12)
    want, _ = backward_np(layers, hs, zs, np.cos(hs[-1]))
    assert_close_rel(g, want, 1e-12)
    # apply also evaluates with NumPy arrays.
    assert_close_rel(model.apply(model.params, X), hs[-1], 1e-12)


def test_float32_agrees_with_float64():
    rng = np.random.default_rng(5)
    m64 = make_model(("tanh", "relu"), dtype=np.float64)
    m32 = make_model(("tanh", "relu"), dtype=np.float32)
    m32.params = m64.params.astype(np.float32)
    X, T = rng.normal(size=(50, 3)), rng.normal(size=(50, 2))
    assert m32(X).dtype == np.float32
    assert_close_rel(m32(X), m64(X), 1e-5)
    v32, g32 = m32.value_and_grad(X, T, loss="mse")
    v64, g64 = m64.value_and_grad(X, T, loss="mse")
    assert g32.dtype == np.float32
    assert v32 == pytest.approx(v64, rel=1e-5)
    assert_close_rel(g32, g64, 1e-4)


def test_one_and_two_threads_agree_on_a_wide_layer():
    rng = np.random.default_rng(6)
    model = fa.Chain(fa.Dense(16, 256, "tanh"), fa.Dense(256, 256, "relu"), fa.Dense(256, 3), seed=1)
    X, T = rng.normal(size=(999, 16)), rng.normal(size=(999, 3))
    old = fa.get_num_threads()
    try:
        fa.set_num_threads(1)
        v1, g1 = model.value_and_grad(X, T, loss="mse")
        fa.set_num_threads(2)
        v2, g2 = model.value_and_grad(X, T, loss="mse")
    finally:
        fa.set_num_threads(old)
    assert v1 == pytest.approx(v2, rel=1e-13)
    assert_close_rel(g1, g2, 1e-13)
    assert_close_rel(g2, loss_value_and_grad_np(model, X, T, "mse")[1], 1e-12)


def test_given_weights_are_used_and_layer_views_write_through():
    W1, b1 = np.arange(6.0).reshape(3, 2), np.array([1.0, -1.0, 0.5])
    model = fa.Chain(fa.Dense(2, 3, weight=W1, bias=b1), fa.Dense(3, 1), seed=0)
    np.testing.assert_array_equal(model.layers[0].weight, W1)
    np.testing.assert_array_equal(model.params[:9], np.concatenate([W1.ravel(), b1]))
    model.layers[0].weight[0, 0] = 42.0
    assert model.params[0] == 42.0
    model.params[6] = -7.0
    assert model.layers[0].bias[0] == -7.0
    assert model.n_params == 9 + 4
    # Seeded initialisation is reproducible; PyTorch's bounds ±1/√fan_in.
    a = fa.Chain(fa.Dense(4, 50), seed=3).params
    b = fa.Chain(fa.Dense(4, 50), seed=3).params
    np.testing.assert_array_equal(a, b)
    assert np.abs(a).max() <= 0.5 and np.abs(a).max() > 0.45
    g = fa.Chain(fa.Dense(4, 50), seed=3, init="glorot")
    assert np.all(g.layers[0].bias == 0.0)
    assert np.abs(g.params).max() <= np.sqrt(6 / 54)


def test_steady_state_calls_allocate_nothing():
    rng = np.random.default_rng(8)
    model = fa.Chain(fa.Dense(4, 64, "tanh"), fa.Dense(64, 1), seed=0)
    X = rng.normal(size=(200, 4))
    g, Y = np.empty(model.n_params), np.empty((200, 1))
    dY = np.ones((200, 1))
    for _ in range(3):
        model.value_and_grad(X, out=g)
        model(X, out=Y)
        model.vjp(X, dY, out=g)
    before = fa.allocation_count()
    for _ in range(300):
        model.value_and_grad(X, out=g)
        model(X, out=Y)
        model.vjp(X, dY, out=g)
    assert fa.allocation_count() == before


def test_bad_input_gives_clear_errors():
    with pytest.raises(ValueError, match="layer 1 .* takes 4 inputs but layer 0 .* gives 5"):
        fa.Chain(fa.Dense(3, 5), fa.Dense(4, 2))
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        fa.Dense(3, 5, "swish")
    with pytest.raises(ValueError, match=r"weight must have shape \(5, 3\), got \(3, 5\)"):
        fa.Dense(3, 5, weight=np.zeros((3, 5)))
    with pytest.raises(ValueError, match="positive integer"):
        fa.Dense(0, 5)
    with pytest.raises(TypeError, match="float32 or float64"):
        fa.Chain(fa.Dense(1, 1), dtype=np.int32)
    layer = fa.Dense(2, 2)
    fa.Chain(layer)
    with pytest.raises(ValueError, match="already belongs to a Chain"):
        fa.Chain(layer)
    fresh = fa.Dense(2, 2)
    with pytest.raises(ValueError, match="layer 1 .* already belongs to a Chain"):
        fa.Chain(fresh, fresh)
    fa.Chain(fresh)  # the refused Chain did not take it

    model = make_model()
    with pytest.raises(ValueError, match=r"X must have shape \(N, 3\).*got \(4, 2\)"):
        model(np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"X must have shape \(N, 3\).*got \(3,\)"):
        model(np.zeros(3))
    with pytest.raises(ValueError, match="targets Y must have 4 rows"):
        model.value_and_grad(np.zeros((4, 3)), np.zeros((5, 2)), loss="mse")
    with pytest.raises(ValueError, match=r"'mse' needs targets Y of shape \(N, 2\).*got shape \(4,\)"):
        model.value_and_grad(np.zeros((4, 3)), np.zeros(4), loss="mse")
    # A target width that does not match the outputs would broadcast: refused for every loss
    # that knows its targets' shape.
    for loss in ("sse", "mse", "bce_logits", "cross_entropy"):
        with pytest.raises(ValueError, match=r"needs targets Y of shape \(N, 2\).*\(4, 3\)"):
            model.value_and_grad(np.zeros((4, 3)), np.zeros((4, 3)), loss=loss)
    with pytest.raises(ValueError, match=r"'mse' needs targets Y.*call with \(X, Y\)"):
        model.fit(np.zeros((4, 3)), loss="mse")
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        model.value_and_grad(np.zeros((4, 3)), np.zeros((4, 2)), loss="hinge")
    with pytest.raises(ValueError, match='wrt must be "params" or "input"'):
        model.vjp(np.zeros((4, 3)), np.zeros((4, 2)), wrt="weights")
    # out= of the wrong dtype or shape: clear error, nothing written.
    g = np.full(model.n_params, 7.0, dtype=np.float32)
    with pytest.raises(TypeError, match="float64"):
        model.value_and_grad(np.zeros((4, 3)), out=g)
    assert np.all(g == 7.0)
    g = np.full(model.n_params + 1, 7.0)
    with pytest.raises(ValueError, match=str(model.n_params)):
        model.value_and_grad(np.zeros((4, 3)), out=g)
    assert np.all(g == 7.0)
    with pytest.raises(ValueError, match="shape"):
        model.vjp(np.zeros((4, 3)), np.zeros((4, 3)))


def test_target_checks_hold_after_a_successful_call():
    """The loss methods keep what checking the targets decided per (loss, l2, Y's columns): a
    later call with other targets is still checked, and (N,) targets of a one-output model
    are still read as (N, 1)."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((6, 3))
    model = fa.Chain(fa.Dense(3, 4, "tanh"), fa.Dense(4, 1), seed=0)
    y = rng.standard_normal(6)
    for loss in ("mse", "sse"):
        column = model.value_and_grad(X, y[:, None], loss=loss)
        for targets in (y, list(y), y[:, None]):  # the second call of each kind hits the cache
            for _ in range(2):
                value, grad = model.value_and_grad(X, targets, loss=loss)
                assert value == column[0] and np.array_equal(grad, column[1])
        with pytest.raises(ValueError, match=r"needs targets Y of shape \(N, 1\).*\(6, 2\)"):
            model.value_and_grad(X, np.zeros((6, 2)), loss=loss)
        with pytest.raises(ValueError, match=r"targets Y must have 6 rows like X; got shape \(5,\)"):
            model.value_and_grad(X, y[:5], loss=loss)
        with pytest.raises(ValueError, match=r"targets Y must have 6 rows like X; got shape \(6, 1, 1\)"):
            model.value_and_grad(X, y[:, None, None], loss=loss)
    wide = fa.Chain(fa.Dense(3, 2), seed=0)
    wide.per_sample_grads(X, np.zeros((6, 2)), loss="mse")
    with pytest.raises(ValueError, match=r"'mse' needs targets Y of shape \(N, 2\).*got shape \(6,\)"):
        wide.per_sample_grads(X, np.zeros(6), loss="mse")
    with pytest.raises(ValueError, match=r"'mse' needs targets Y.*call with \(X, Y\)"):
        wide.per_sample_grads(X, loss="mse")
    # A different l2 is another program, not the cached one.
    base = wide.loss(X, np.ones((6, 2)), loss="mse")
    assert wide.loss(X, np.ones((6, 2)), loss="mse", l2=0.5) == pytest.approx(
        base + 0.5 * 0.25 * np.sum(wide.params.astype(np.float64) ** 2))


def test_l2_must_be_a_finite_real_number():
    """A string, None or a list is a TypeError naming l2, NaN or ±inf a ValueError, before
    anything is compiled (a NaN key would miss the program caches on every call and grow them);
    ints and NumPy scalars are the same penalty as the float."""
    rng = np.random.default_rng(4)
    X, Y = rng.standard_normal((5, 3)), rng.standard_normal((5, 1))
    model = fa.Chain(fa.Dense(3, 4, "tanh"), fa.Dense(4, 1), seed=0)
    for bad in ("0.5", None, [1.0], np.ones(2)):
        with pytest.raises(TypeError, match=r"l2 must be a real number, got"):
            model.value_and_grad(X, Y, l2=bad)
    for bad in (float("nan"), float("inf"), -np.inf, np.float32("nan")):
        with pytest.raises(ValueError, match=r"l2 must be finite, got"):
            model.loss(X, Y, l2=bad)
        with pytest.raises(ValueError, match=r"l2 must be finite"):
            model.fit(X, Y, epochs=1, l2=bad)
    assert not model._programs and not model._loss_calls
    penalty = 0.5 * 4.0 * np.sum(model.params ** 2)
    for l2 in (2, 2.0, np.float32(2), np.int64(2)):
        assert model.loss(X, Y, l2=l2) == pytest.approx(model.loss(X, Y) + penalty, rel=1e-12)


def test_traced_slices_of_a_flat_vector():
    f = fa.compile(lambda p: fa.sum(p[1:4] * p[2:5]), fa.spec((6,)))
    p = np.arange(1.0, 7.0)
    v, g = f.value_and_grad(p)
    assert v == pytest.approx(np.sum(p[1:4] * p[2:5]))
    want = np.zeros(6)
    want[1:4] += p[2:5]
    want[2:5] += p[1:4]
    assert_close_rel(g, want, 1e-15)
    with pytest.raises(TypeError, match="step 1"):
        fa.compile(lambda p: fa.sum(p[::2]), fa.spec((6,)))
    with pytest.raises(TypeError, match="fixed-length 1-D"):
        fa.compile(lambda p: fa.sum(p[1:2]), fa.spec((None, 3)))
