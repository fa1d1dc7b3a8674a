"""Curvature of a Chain's loss: Jacobians, empirical Fisher and generalised Gauss-Newton matrices,
their diagonals and per-sample gradient norms, streamed over batch tiles so the per-sample
gradients (N, P) or the Jacobian (N, K, P) are never held whole."""
from __future__ import annotations

from typing import Any, Iterator, Optional, Tuple

import numpy as np

from . import _ops
from ._compile import compile, spec
from ._fastad import check_out, outer_diag, outer_sum
from ._losses import LOSSES, resolve, unit_rows

# Elements of one tile of per-sample rows: with P ≈ 2,000 a tile has ~500 rows, enough for the
# GEMM to run at full speed and small enough to stay in the last-level cache. A model may set
# its own `_TILE_ELEMENTS`.
TILE_ELEMENTS = 1 << 20

Rows = Iterator[Tuple[int, int, np.ndarray]]


def jacobian(model: Any, X: Any, out: Optional[np.ndarray] = None) -> np.ndarray:
    """`Chain.jacobian`: (N, K, P), one batched reverse pass per output."""
    X = model._x(X)
    n, k, p = X.shape[0], model.out_features, model.n_params
    J = _out(model, out, (n, k, p), X)
    if k == 1:  # J[:, 0, :] is contiguous: write into it directly
        _seeded_rows(model, X, unit_rows(n, k, 0, dtype=model.dtype), J.reshape(n, p))
        return J
    for r0, r1, buf in _tiles(model, n, 1):
        for c in range(k):
            _seeded_rows(model, X[r0:r1], unit_rows(r1 - r0, k, c, dtype=model.dtype), buf)
            J[r0:r1, c] = buf
    return J


def fisher(model: Any, X: Any, Y: Any, loss: Any, kind: str,
           out: Optional[np.ndarray]) -> np.ndarray:
    """`Chain.fisher`: Σ over batch tiles of RᵀR, (P, P)."""
    X, Y, rows = _curvature_rows(model, X, Y, loss, kind)
    p = model.n_params
    F = _out(model, out, (p, p), X, Y)
    F[...] = 0.0
    for _, _, block in rows():
        outer_sum(block, out=F, accumulate=True)
    return F


def fisher_diag(model: Any, X: Any, Y: Any, loss: Any, kind: str,
                out: Optional[np.ndarray]) -> np.ndarray:
    """`Chain.fisher_diag`: the diagonal of `fisher`, (P,)."""
    X, Y, rows = _curvature_rows(model, X, Y, loss, kind)
    d = _out(model, out, (model.n_params,), X, Y)
    d[...] = 0.0
    for _, _, block in rows():
        outer_diag(block, out=d, accumulate=True)
    return d


def per_sample_grad_norms(model: Any, X: Any, Y: Any, loss: Any,
                          out: Optional[np.ndarray]) -> np.ndarray:
    """`Chain.per_sample_grad_norms`: ‖g_b‖, (N,)."""
    X, Y, rows = _curvature_rows(model, X, Y, loss, "empirical")
    norms = _out(model, out, (X.shape[0],), X, Y)
    for r0, r1, G in rows():
        np.einsum("ij,ij->i", G, G, out=norms[r0:r1])
    np.sqrt(norms, out=norms)
    return norms


def _check_labels(Y: np.ndarray, K: int) -> None:
    labels = np.asarray(Y, np.float64)
    bad = ~((labels >= 0) & (labels < K) & (labels == np.floor(labels)))
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(f"label {labels[row]:g} in row {row} is not a class index in 0..{K}")


def _out(model: Any, out: Optional[np.ndarray], shape: Tuple[int, ...], *inputs: Any) -> np.ndarray:
    """`out` checked by the same rule as every `out=` (nothing written on error), or a new
    array."""
    if out is None:
        return np.empty(shape, model.dtype)
    check_out(out, shape, model.dtype, (model.params, *inputs))
    return out


def _tiles(model: Any, n: int, rows_per_sample: int) -> Rows:
    """(start, stop, buffer) for each batch tile; the buffer (stop − start, P) is reused."""
    p = model.n_params
    elements = getattr(model, "_TILE_ELEMENTS", TILE_ELEMENTS)
    t = max(1, min(n, elements // max(1, rows_per_sample * p)))
    tiles = model._scratch.__dict__  # this thread's own buffers
    key = ("tile", t * rows_per_sample)
    buf = tiles.get(key)
    if buf is None:
        buf = tiles[key] = np.empty((t * rows_per_sample, p), model.dtype)
    for r0 in range(0, n, t):
        r1 = min(n, r0 + t)
        yield r0, r1, buf[:(r1 - r0) * rows_per_sample]


def _seeded_rows(model: Any, X: np.ndarray, C: np.ndarray, out: np.ndarray) -> None:
    """out[b] = J_bᵀ C[b]: each sample's vector-Jacobian product with its own cotangent row,
    as the per-sample gradients of Σ_b f(x_b)·C[b]."""
    prog = model._program("seeded", lambda: compile(
        lambda p, X, C: _ops.sum(model.apply(p, X) * C),
        spec((model.n_params,), model.dtype), model._x_spec(),
        spec((None, model.out_features), model.dtype), wrt=0, dtype=model.dtype))
    prog.per_sample_grad(model.params, X, C, out=out)


def _curvature_rows(model: Any, X: Any, Y: Any, loss: Any, kind: str):
    """Checked X and Y, and a generator of (start, stop, R) per batch tile: R (rows, P) are the
    tile's rows, whose Σ RᵀR over the tiles is the curvature matrix of `kind` (for "empirical",
    R holds samples start..stop's gradients)."""
    if kind not in ("empirical", "ggn"):
        raise ValueError(f'kind must be "empirical" or "ggn", got {kind!r}')
    factor = resolve(loss).hessian_factor if kind == "ggn" else None
    if kind == "ggn" and factor is None:
        raise ValueError(
            f"kind='ggn' needs the Hessian of the loss with respect to the outputs, known for "
            f"the built-in losses {sorted(LOSSES)}; got {loss!r}. kind='empirical' takes any "
            f"loss that is a sum or mean of per-sample terms"
        )
    args, Y = model._loss_args(X, Y, loss)
    X = args[1]
    if Y is not None and Y.ndim == 1 and resolve(loss).targets == "labels":
        _check_labels(Y, model.out_features)  # here, so errors name rows of Y, not of a tile
    prog = model._loss_program(loss, Y, 0.0)  # checks the loss and targets up front
    n, K = X.shape[0], model.out_features

    def empirical() -> Rows:
        for r0, r1, buf in _tiles(model, n, 1):
            args = (X[r0:r1],) if Y is None else (X[r0:r1], Y[r0:r1])
            prog.per_sample_grad(model.params, *args, out=buf)
            yield r0, r1, buf

    def ggn() -> Rows:
        for r0, r1, buf in _tiles(model, n, K):
            t = r1 - r0
            Xt, Yt = X[r0:r1], None if Y is None else Y[r0:r1]
            outputs = lambda: model(Xt).astype(np.float64)  # noqa: E731 - computed on demand
            for c, C in enumerate(factor(outputs, Yt, t, K)):
                _seeded_rows(model, Xt, C.astype(model.dtype), buf[c * t:(c + 1) * t])
            yield r0, r1, buf

    return X, Y, (empirical if kind == "empirical" else ggn)
