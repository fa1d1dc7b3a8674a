"""Batch-tiled replays (large batches run tile by tile on private buffers) against NumPy
references, with batch sizes that leave a ragged last tile, on 1 and 2 threads."""
import numpy as np
import pytest

import fastad as fa
from conftest import assert_close_rel
from test_layers import backward_np, forward_np, layers_np, loss_value_and_grad_np, targets


def wide_model(dtype=np.float64):
    return fa.Chain(fa.Dense(3, 200, "tanh"), fa.Dense(200, 30, "softplus"), fa.Dense(30, 4),
                    dtype=dtype, seed=2)


def tile_rows_of(model, *args, **kw):
    """The tile rows of the program `model.value_and_grad` compiled (after one call)."""
    model.value_and_grad(*args, **kw)
    (prog,) = [p for k, p in model._programs.items() if k[0] == "loss"]
    return prog


@pytest.mark.parametrize("loss,kind", [("sse", None), ("mse", "regression"),
                                       ("cross_entropy", "labels"),
                                       ("cross_entropy", "probabilities"),
                                       ("bce_logits", "binary")])
def test_tiled_gradients_match_numpy(loss, kind, threads):
    model = wide_model()
    rng = np.random.default_rng(0)
    prog = tile_rows_of(model, rng.normal(size=(4, 3)), targets(kind, 4, 4, rng), loss=loss)
    assert prog.tiles_gradient
    n = 5 * prog.tile_rows + 7  # several tiles and a ragged last one
    X = rng.normal(size=(n, 3))
    T = targets(kind, n, 4, rng)
    want_value, want_grad = loss_value_and_grad_np(model, X, T, loss)
    value, grad = model.value_and_grad(X, T, loss=loss, l2=0.1)
    p = model.params
    assert value == pytest.approx(want_value + 0.005 * np.sum(p * p), rel=1e-12)
    assert_close_rel(grad, want_grad + 0.01 * p, 1e-12, f"{loss} tiled, {threads} threads")


def test_tiled_forward_and_vjp_to_input_match_numpy(threads):
    model = wide_model()
    rng = np.random.default_rng(1)
    n = 3001
    X = rng.normal(size=(n, 3))
    dY = rng.normal(size=(n, 4))
    layers = layers_np(model)
    hs, zs = forward_np(layers, X)
    gp, gx = backward_np(layers, hs, zs, dY)
    assert_close_rel(model(X), hs[-1], 1e-12, "forward")
    assert_close_rel(model.vjp(X, dY), gp, 1e-12, "vjp params")
    assert_close_rel(model.vjp(X, dY, wrt="input"), gx, 1e-12, "vjp input")
    prog = model._programs[("vjp", 1)]
    assert prog.tile_rows is not None and n >= 2 * prog.tile_rows


def test_one_and_two_threads_agree_to_rounding():
    model = wide_model()
    X = np.random.default_rng(2).normal(size=(4000, 3))
    results = []
    old = fa.get_num_threads()
    try:
        for t in (1, 2):
            fa.set_num_threads(t)
            results.append(model.value_and_grad(X, loss="sse"))
    finally:
        fa.set_num_threads(old)
    (v1, g1), (v2, g2) = results
    assert v1 == pytest.approx(v2, rel=1e-13)
    assert_close_rel(g1, g2, 1e-13)


def test_a_loss_that_is_not_a_sum_over_rows_still_differentiates(threads):
    """(Σ y)² needs every tile's sum before any reverse sweep: the value is tiled, the gradient
    replays untiled, and both are right."""
    model = wide_model()
    f = fa.compile(lambda p, X: fa.sum(model.apply(p, X)) ** 2, model.params, fa.spec((None, 3)))
    assert f.tile_rows is not None and not f.tiles_gradient
    X = np.random.default_rng(3).normal(size=(3 * f.tile_rows + 1, 3))
    layers = layers_np(model)
    hs, zs = forward_np(layers, X)
    s = hs[-1].sum()
    assert f(model.params, X) == pytest.approx(s * s, rel=1e-12)
    want, _ = backward_np(layers, hs, zs, np.full_like(hs[-1], 2 * s))
    assert_close_rel(f.grad(model.params, X), want, 1e-12)


def test_programs_that_are_not_row_local_are_not_tiled():
    f = fa.compile(lambda X: fa.sum(X.T @ X), fa.spec((None, 3)))
    assert f.tile_rows is None
    X = np.random.default_rng(4).normal(size=(5000, 3))
    assert f(X) == pytest.approx(np.sum(X.T @ X), rel=1e-12)


def test_tiled_replays_allocate_nothing_in_steady_state():
    model = wide_model()
    X = np.random.default_rng(5).normal(size=(5000, 3))
    g, Y = np.empty(model.n_params), np.empty((5000, 4))
    for _ in range(3):
        model.value_and_grad(X, out=g)
        model(X, out=Y)
    before = fa.allocation_count()
    for _ in range(50):
        model.value_and_grad(X, out=g)
        model(X, out=Y)
    assert fa.allocation_count() == before


def test_wide_products_get_tiles_of_at_least_192_rows_and_narrow_ones_l2_sized_tiles():
    # A tile of a 512-wide float32 network would hold 96 rows in its 2 MB; its 512 × 512
    # products run 16 slivers of 12 rows instead. Seed 000's 1 → 1000 → 20 → 1 keeps fewer.
    rng = np.random.default_rng(3)
    wide = fa.Chain(fa.Dense(512, 512, "tanh"), fa.Dense(512, 512, "tanh"), dtype=np.float32, seed=0)
    prog = tile_rows_of(wide, rng.normal(size=(4, 512)).astype(np.float32), loss="sse")
    assert prog.tile_rows == 192
    narrow = fa.Chain(fa.Dense(1, 1000), fa.Dense(1000, 20), fa.Dense(20, 1), seed=0)
    prog = tile_rows_of(narrow, rng.normal(size=(4, 1)), loss="sse")
    assert prog.tile_rows is not None and prog.tile_rows < 192
