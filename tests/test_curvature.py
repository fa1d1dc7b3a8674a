"""Jacobians, Fisher and Gauss-Newton matrices of a Chain: against central finite differences and
NumPy references built from materialised Jacobians and per-sample gradients."""
import tracemalloc

import numpy as np
import pytest

import fastad as fa
from conftest import assert_close_rel
from test_layers import loss_np, targets

# (loss, target kind, outputs K)
GGN_CASES = [("sse", None, 3), ("sse", "regression", 1), ("mse", "regression", 3),
             ("cross_entropy", "labels", 4), ("cross_entropy", "probabilities", 3),
             ("bce_logits", "binary", 2)]


def model_with(k, dtype=np.float64, seed=1):
    return fa.Chain(fa.Dense(2, 6, "tanh"), fa.Dense(6, 5, "sigmoid"), fa.Dense(5, k),
                    dtype=dtype, seed=seed)


def jacobian_fd(model, X, h=1e-6):
    """(N, K, P) by central differences of the model's outputs in float64."""
    p0 = model.params.copy()
    J = np.zeros((X.shape[0], model.out_features, p0.size))
    for i in range(p0.size):
        outs = []
        for step in (h, -h):
            model.params[:] = p0
            model.params[i] += step
            outs.append(model(X))
        J[:, :, i] = (outs[0] - outs[1]) / (2 * h)
    model.params[:] = p0
    return J


def output_hessian_fd(loss, f, y, h=1e-5):
    """Hessian of one sample's loss term with respect to its outputs f (K,), by central
    differences of the NumPy reference gradient (the loss of a one-row batch)."""
    yb = None if y is None else y[None]
    grad = lambda v: loss_np(loss, v[None], yb)[1][0]
    H = np.zeros((f.size, f.size))
    for j in range(f.size):
        e = np.zeros(f.size)
        e[j] = h
        H[:, j] = (grad(f + e) - grad(f - e)) / (2 * h)
    return H


def small_tiles(model, elements):
    """Makes the curvature methods stream in tiles of about `elements` numbers (several, ragged)."""
    model._TILE_ELEMENTS = elements


@pytest.mark.parametrize("k", [1, 3])
def test_jacobian_matches_finite_differences(k, threads):
    rng = np.random.default_rng(0)
    model = model_with(k)
    X = rng.normal(size=(23, 2))
    want = jacobian_fd(model, X)
    J = model.jacobian(X)
    assert J.shape == (23, k, model.n_params) and J.dtype == np.float64
    assert_close_rel(J, want, 1e-8, "jacobian")
    small_tiles(model, 5 * model.n_params)  # tiles of 5 rows, the last one of 3
    out = np.full_like(J, np.nan)
    assert model.jacobian(X, out=out) is out
    assert_close_rel(out, J, 1e-14, "tiled jacobian")
    # float32 agrees with float64.
    m32 = model_with(k, np.float32)
    m32.params[:] = model.params
    assert_close_rel(m32.jacobian(X.astype(np.float32)), J, 1e-5, "float32 jacobian")


@pytest.mark.parametrize("loss,kind,k", GGN_CASES)
def test_ggn_is_jt_lambda_j(loss, kind, k, threads):
    rng = np.random.default_rng(2)
    model = model_with(k)
    n = 17
    X = rng.normal(size=(n, 2))
    Y = targets(kind, n, k, rng)
    J = jacobian_fd(model, X)
    f = model(X)
    want = sum(J[b].T @ output_hessian_fd(loss, f[b], None if Y is None else Y[b]) @ J[b]
               for b in range(n))
    F = model.fisher(X, Y, loss=loss, kind="ggn")
    assert F.shape == (model.n_params,) * 2
    assert_close_rel(F, want, 1e-6, f"ggn {loss}")
    assert_close_rel(model.fisher_diag(X, Y, loss=loss, kind="ggn"), np.diag(want), 1e-6,
                     f"ggn diagonal {loss}")
    # Streamed through several ragged tiles: the same sums.
    small_tiles(model, 4 * k * model.n_params)
    assert_close_rel(model.fisher(X, Y, loss=loss, kind="ggn"), F, 1e-13, "tiled ggn")


@pytest.mark.parametrize("loss,kind,k", GGN_CASES)
def test_empirical_fisher_diag_and_norms_match_materialised_per_sample_gradients(loss, kind, k,
                                                                                  threads):
    rng = np.random.default_rng(3)
    model = model_with(k)
    n = 41
    X = rng.normal(size=(n, 2))
    Y = targets(kind, n, k, rng)
    G = model.per_sample_grads(X, Y, loss=loss)
    want = np.einsum("bi,bj->ij", G, G)
    small_tiles(model, 6 * model.n_params)  # 7 tiles, the last of 5 rows
    assert_close_rel(model.fisher(X, Y, loss=loss), want, 1e-13, "empirical fisher")
    assert_close_rel(model.fisher_diag(X, Y, loss=loss), np.diag(want), 1e-13, "its diagonal")
    assert_close_rel(model.per_sample_grad_norms(X, Y, loss=loss), np.linalg.norm(G, axis=1),
                     1e-13, "norms")


def test_ggn_of_squared_error_is_the_empirical_fisher_at_zero_residual_scale():
    # For sse with one output, g_b = 2 r_b J_b, so Σ g gᵀ = Σ 4 r_b² J_bᵀ J_b, while the GGN is
    # Σ 2 J_bᵀ J_b: with residuals r_b = ±1/√2 the two coincide — an independent cross-check.
    rng = np.random.default_rng(4)
    model = model_with(1)
    X = rng.normal(size=(30, 2))
    Y = model(X) + rng.choice([-1.0, 1.0], size=(30, 1)) / np.sqrt(2.0)
    assert_close_rel(model.fisher(X, Y, loss="sse"), model.fisher(X, Y, loss="sse", kind="ggn"),
                     1e-12)


def test_float32_curvature_agrees_with_float64():
    rng = np.random.default_rng(5)
    m64, m32 = model_with(3), model_with(3, np.float32)
    m32.params[:] = m64.params
    X = rng.normal(size=(50, 2))
    Y = rng.integers(0, 3, size=50)
    for kind in ("empirical", "ggn"):
        F32 = m32.fisher(X.astype(np.float32), Y, loss="cross_entropy", kind=kind)
        assert F32.dtype == np.float32
        assert_close_rel(F32, m64.fisher(X, Y, loss="cross_entropy", kind=kind), 1e-5, kind)


def test_fisher_memory_does_not_grow_with_the_batch():
    """The fused forms never hold (N, P): after a call with N = 20,000, one with N = 200,000
    allocates nothing more in the Rust core and about the same at its NumPy peak."""
    rng = np.random.default_rng(6)
    model = fa.Chain(fa.Dense(10, 16, "tanh"), fa.Dense(16, 1), dtype=np.float32, seed=0)
    p = model.n_params
    F = np.empty((p, p), np.float32)
    X = rng.normal(size=(200_000, 10)).astype(np.float32)
    Y = rng.normal(size=(200_000, 1)).astype(np.float32)
    for kind in ("empirical", "ggn"):  # warm-up: programs and tile buffers
        model.fisher(X[:20_000], Y[:20_000], loss="mse", kind=kind, out=F)
    peaks = {}
    for n in (20_000, 200_000):
        before = fa.allocation_count()
        tracemalloc.start()
        for kind in ("empirical", "ggn"):
            model.fisher(X[:n], Y[:n], loss="mse", kind=kind, out=F)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert fa.allocation_count() == before, f"N = {n}: the core allocated"
    # Holding G would take 200,000 × P × 4 bytes = 154 MB; the peaks stay a few kB apart.
    assert peaks[200_000] < peaks[20_000] + 64 * 1024, peaks
    assert peaks[200_000] < 1_000_000, peaks


def test_curvature_errors_name_the_problem_and_write_nothing():
    model = model_with(2)
    X = np.ones((5, 2))
    Y = np.zeros((5, 2))
    p = model.n_params
    with pytest.raises(ValueError, match='kind must be "empirical" or "ggn"'):
        model.fisher(X, Y, loss="mse", kind="hessian")
    with pytest.raises(ValueError, match="kind='ggn' needs the Hessian"):
        model.fisher(X, Y, loss=lambda f, y: fa.sum(f * y), kind="ggn")
    sentinel = np.full((p, p), 7.0)
    with pytest.raises(ValueError, match=rf"out has shape \({p}, {p}\); expected \({p}, {p - 1}\)|"
                                         rf"out has shape \({p}, {p}\)"):
        model.fisher_diag(X, Y, loss="mse", out=sentinel)
    with pytest.raises(TypeError, match="out has dtype float32; expected float64"):
        model.fisher(X, Y, loss="mse", out=sentinel.astype(np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        model.jacobian(X, out=np.empty((5, 2, 2 * p))[:, :, ::2])
    with pytest.raises(ValueError, match=r"targets Y must have 5 rows"):
        model.fisher(X, Y[:3], loss="mse", out=sentinel)
    with pytest.raises(ValueError, match="shares memory with an input"):
        model.fisher_diag(X, Y, loss="mse", out=model.params)
    assert np.all(sentinel == 7.0)
    with pytest.raises(ValueError, match="accumulate=True adds to out="):
        fa.outer_sum(np.ones((3, 2)), accumulate=True)


def test_outer_sum_accumulates():
    rng = np.random.default_rng(7)
    G = rng.normal(size=(30, 9))
    F = np.eye(9)
    fa.outer_sum(G, out=F, accumulate=True)
    assert_close_rel(F, np.eye(9) + G.T @ G, 1e-14)
    d = np.ones(9)
    fa.outer_diag(G, out=d, accumulate=True)
    assert_close_rel(d, 1 + (G * G).sum(0), 1e-14)
