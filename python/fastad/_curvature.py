"""Curvature of a Chain's loss: Jacobians, empirical Fisher and generalised Gauss-Newton matrices,
their diagonals and per-sample gradient norms, streamed over batch tiles so the per-sample
gradients (N, P) or the Jacobian (N, K, P) are never held whole."""
from __future__ import annotations

from typing import Any, Iterator, List, Optional, Tuple

import numpy as np

from . import _ops
from ._compile import compile, spec
from ._fastad import _mirror_upper, _outer_sum_upper, check_out, dense_layers, outer_diag, outer_sum
from ._fastad import kron_factors as _kron_factors
from ._losses import LOSSES, resolve, unit_rows

# Elements of one tile of per-sample rows: small enough to stay in the last-level cache. A
# model may set its own `_TILE_ELEMENTS`.
TILE_ELEMENTS = 1 << 20
# The most elements of a tile of the full Fisher's rows (32 MB in float64), and the most
# multiply-adds of its product (rows·P², a tenth of a second or so: Ctrl-C is looked for
# between tiles).
FISHER_TILE_ELEMENTS = 1 << 22
FISHER_TILE_WORK = 1 << 33

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


def fisher(model: Any, X: Any, Y: Any, loss: Any, kind: str, structure: str,
           out: Any, accumulate: bool) -> Any:
    """`Chain.fisher`: Σ over batch tiles of RᵀR, (P, P); its diagonal (P,); or per dense layer
    the Kronecker factors ([A_l], [G_l])."""
    if structure == "kron":
        return kron_factors(model, X, Y, loss, kind, out, accumulate)
    if structure not in ("full", "diag"):
        raise ValueError(f'structure must be "full", "diag" or "kron", got {structure!r}')
    X, Y, rows = _curvature_rows(model, X, Y, loss, kind)
    p = model.n_params
    shape = (p, p) if structure == "full" else (p,)
    F = _accumulator(model, out, shape, accumulate, X, Y)
    if structure == "diag":
        for _, _, block in rows():
            outer_diag(block, out=F, accumulate=True)
        return F
    # Tiles of as many elements as F, within [TILE_ELEMENTS, FISHER_TILE_ELEMENTS] and
    # FISHER_TILE_WORK: each tile's product is long beside its fixed costs. For 10→64→20→1 at
    # N = 100k (P = 2,025), 2,000-row tiles ran 10-15% faster than 500-row ones (AVX2, 2
    # threads, 4 runs). Tiles add to the upper triangle only; it is mirrored once, after the
    # last one (or after the tile a Ctrl-C or an error stopped at: F stays symmetric).
    elements = max(TILE_ELEMENTS, min(p * p, FISHER_TILE_ELEMENTS, FISHER_TILE_WORK // p))
    try:
        for _, _, block in rows(elements):
            _outer_sum_upper(block, F, True)
    finally:
        _mirror_upper(F)
    return F


def kron_factors(model: Any, X: Any, Y: Any, loss: Any, kind: str, out: Any,
                 accumulate: bool) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """`Chain.fisher(structure="kron")`: per dense layer l, A_l = Σ_b ā_b ā_bᵀ (inputs, with a
    1 appended for the bias) and G_l = Σ_b Σ_c δ_bc δ_bcᵀ (the adjoints of the layer's product:
    of sample b's loss term for "empirical", of the rows c of its output-Hessian factor for
    "ggn"), summed in Rust inside the batched sweeps that give gradients, tile by tile."""
    X, Y, loss_prog, factor = _checked(model, X, Y, loss, kind)
    prog = loss_prog if kind == "empirical" else seeded_program(model)
    A, G = _factor_outs(model, out, kron_shapes(dense_layers(prog)), accumulate, X, Y)
    if kind == "empirical":
        args = (X,) if Y is None else (X, Y)
        _kron_factors(prog, model.params, *args, G=G, A=A)
        return A, G
    K = model.out_features
    rows = max(1, getattr(model, "_KRON_CHUNK_ELEMENTS", KRON_CHUNK_ELEMENTS) // (K * K))
    # One linear layer (a last-layer Laplace): its δ is the cotangent itself, so only the
    # first row of the factor needs a sweep (for A).
    linear = len(model.layers) == 1 and model.layers[0].activation is None
    for r0, r1, cotangents in _factor_rows(model, X, Y, factor, rows):
        for c, C in enumerate(cotangents):
            if c and linear:
                outer_sum(C, out=G[0], accumulate=True)
            else:
                _kron_factors(prog, model.params, X[r0:r1], C, G=G, A=A if c == 0 else None)
    return A, G


def per_sample_grad_norms(model: Any, X: Any, Y: Any, loss: Any,
                          out: Optional[np.ndarray]) -> np.ndarray:
    """`Chain.per_sample_grad_norms`: ‖g_b‖, (N,)."""
    X, Y, rows = _curvature_rows(model, X, Y, loss, "empirical")
    norms = _out(model, out, (X.shape[0],), X, Y)
    for r0, r1, G in rows():
        np.einsum("ij,ij->i", G, G, out=norms[r0:r1])
    np.sqrt(norms, out=norms)
    return norms


def _check_labels(Y: np.ndarray, K: int, rows: int = 1 << 13, first_row: int = 0) -> None:
    """Raises a ValueError naming the first row whose label is not a class index (counting
    Y's rows from `first_row`: Y may be a chunk of a larger array); in chunks of `rows`, so
    checking a large dataset needs no memory of its size."""
    for r0 in range(0, Y.shape[0], rows):
        labels = np.asarray(Y[r0:r0 + rows], np.float64)
        bad = ~((labels >= 0) & (labels < K) & (labels == np.floor(labels)))
        if bad.any():
            row = int(np.argmax(bad))
            raise ValueError(f"label {labels[row]:g} in row {first_row + r0 + row} is not a "
                             f"class index in 0..{K}")


def _out(model: Any, out: Optional[np.ndarray], shape: Tuple[int, ...], *inputs: Any) -> np.ndarray:
    """`out` checked by the same rule as every `out=` (nothing written on error), or a new
    array."""
    if out is None:
        return np.empty(shape, model.dtype)
    check_out(out, shape, model.dtype, (model.params, *inputs))
    return out


def _tiles(model: Any, n: int, rows_per_sample: int, elements: int = TILE_ELEMENTS) -> Rows:
    """(start, stop, buffer) for each batch tile of about `elements`; the buffer
    (stop − start, P) is reused."""
    p = model.n_params
    t = _tile_rows(model, n, rows_per_sample, elements)
    tiles = model._scratch.__dict__  # this thread's own buffers
    key = ("tile", t * rows_per_sample)
    buf = tiles.get(key)
    if buf is None:
        buf = tiles[key] = np.empty((t * rows_per_sample, p), model.dtype)
    for r0 in range(0, n, t):
        r1 = min(n, r0 + t)
        yield r0, r1, buf[:(r1 - r0) * rows_per_sample]


def seeded_program(model: Any) -> Any:
    """The program Σ_b f(x_b)·C[b] of (params, X, C): its per-sample gradients are J_bᵀ C[b],
    and its dense layers' adjoint rows are C[b] pulled back to each layer's product."""
    return model._program("seeded", lambda: compile(
        lambda p, X, C: _ops.sum(model.apply(p, X) * C),
        spec((model.n_params,), model.dtype), model._x_spec(),
        spec((None, model.out_features), model.dtype), wrt=0, dtype=model.dtype))


def _seeded_rows(model: Any, X: np.ndarray, C: np.ndarray, out: np.ndarray) -> None:
    """out[b] = J_bᵀ C[b]: each sample's vector-Jacobian product with its own cotangent row,
    as the per-sample gradients of Σ_b f(x_b)·C[b]."""
    seeded_program(model).per_sample_grad(model.params, X, C, out=out)


def _checked(model: Any, X: Any, Y: Any, loss: Any, kind: str):
    """X and Y checked for `loss`, its compiled program, and (for "ggn") its output-Hessian
    factor."""
    if kind not in ("empirical", "ggn"):
        raise ValueError(f'kind must be "empirical" or "ggn", got {kind!r}')
    factor = resolve(loss).hessian_factor if kind == "ggn" else None
    if kind == "ggn" and factor is None:
        raise ValueError(
            f"kind='ggn' needs the Hessian of the loss with respect to the outputs, known for "
            f"the built-in losses {sorted(LOSSES)}; got {loss!r}. kind='empirical' takes any "
            f"loss that is a sum or mean of per-sample terms"
        )
    X, Y, prog = checked_data(model, X, Y, loss)
    return X, Y, prog, factor


def checked_data(model: Any, X: Any, Y: Any, loss: Any):
    """X and Y checked for `loss` (class labels' values too), Y as the loss takes it, and the
    loss program: every check up front, before any work."""
    prog, args = model._loss_call(X, Y, loss, 0.0)
    X, Y = args[1], (args[2] if len(args) == 3 else None)
    if Y is not None and Y.ndim == 1 and resolve(loss).targets == "labels":
        _check_labels(Y, model.out_features)  # here, so errors name rows of Y, not of a tile
    return X, Y, prog


def _factor_rows(model: Any, X: np.ndarray, Y: Any, factor: Any, n: int):
    """(start, stop, [C_c]) per batch tile of n rows: the rows c of each sample's output-Hessian
    factor as cotangents (rows, K) in the model's dtype."""
    K = model.out_features
    for r0 in range(0, X.shape[0], n):
        r1 = min(X.shape[0], r0 + n)
        Xt, Yt = X[r0:r1], None if Y is None else Y[r0:r1]
        outputs = lambda: model(Xt).astype(np.float64)  # noqa: E731 - computed on demand
        yield r0, r1, [C.astype(model.dtype) for C in factor(outputs, Yt, r1 - r0, K)]


def _curvature_rows(model: Any, X: Any, Y: Any, loss: Any, kind: str):
    """Checked X and Y, and a generator of (start, stop, R) per batch tile (of about the
    elements it is given): R (rows, P) are the tile's rows, whose Σ RᵀR over the tiles is the
    curvature matrix of `kind` (for "empirical", R holds samples start..stop's gradients)."""
    X, Y, prog, factor = _checked(model, X, Y, loss, kind)
    n, K = X.shape[0], model.out_features

    def empirical(elements: int = TILE_ELEMENTS) -> Rows:
        for r0, r1, buf in _tiles(model, n, 1, elements):
            args = (X[r0:r1],) if Y is None else (X[r0:r1], Y[r0:r1])
            prog.per_sample_grad(model.params, *args, out=buf)
            yield r0, r1, buf

    def ggn(elements: int = TILE_ELEMENTS) -> Rows:
        tiles = _tiles(model, n, K, elements)
        for (r0, r1, buf), (_, _, cotangents) in zip(tiles, _factor_rows(
                model, X, Y, factor, _tile_rows(model, n, K, elements))):
            t = r1 - r0
            for c, C in enumerate(cotangents):
                _seeded_rows(model, X[r0:r1], C, buf[c * t:(c + 1) * t])
            yield r0, r1, buf

    return X, Y, (empirical if kind == "empirical" else ggn)


# Elements of the output-Hessian factor's cotangents computed at once for "ggn" Kronecker
# factors (chunks of rows): their memory does not grow with N.
KRON_CHUNK_ELEMENTS = 1 << 20


def _accumulator(model: Any, out: Optional[np.ndarray], shape: Tuple[int, ...],
                 accumulate: bool, *inputs: Any) -> np.ndarray:
    """The array a curvature sum is added into: `out` (checked; zeroed unless `accumulate`) or a
    new zeroed array."""
    if accumulate and out is None:
        raise ValueError("accumulate=True adds to out=: pass the array to add to")
    F = _out(model, out, shape, *inputs)
    if not accumulate:
        F[...] = 0.0
    return F


def kron_shapes(layers: List[Tuple[int, Optional[int], int, int]]
                ) -> Tuple[List[Tuple[int, int]], ...]:
    """The Kronecker factors' shapes for `dense_layers`' layers: ([A_l], [G_l]), A_l over the
    inputs and the bias's 1, G_l over the outputs."""
    return ([(k + (b is not None),) * 2 for _, b, k, _ in layers],
            [(n, n) for _, _, _, n in layers])


def _factor_outs(model: Any, out: Any, shapes: Tuple[List[Tuple[int, int]], ...],
                 accumulate: bool, *inputs: Any) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """The Kronecker factors' arrays: `out` = (A list, G list) checked (zeroed unless
    `accumulate`), or new zeroed ones."""
    if out is None:
        if accumulate:
            raise ValueError("accumulate=True adds to out=: pass the (A, G) lists to add to")
        return tuple([np.zeros(s, model.dtype) for s in group] for group in shapes)
    if (not isinstance(out, (tuple, list)) or len(out) != 2
            or any(not isinstance(o, (tuple, list)) or len(o) != len(s)
                   for o, s in zip(out, shapes))):
        raise TypeError(f"out must be a pair (A, G) of lists of {len(shapes[0])} arrays, one "
                        f"per dense layer, of shapes {shapes[0]} and {shapes[1]}")
    for group, group_shapes in zip(out, shapes):
        for o, s in zip(group, group_shapes):
            check_out(o, s, model.dtype, (model.params, *inputs))
    if not accumulate:
        for group in out:
            for o in group:
                o[...] = 0.0
    return list(out[0]), list(out[1])


def _tile_rows(model: Any, n: int, rows_per_sample: int, elements: int = TILE_ELEMENTS) -> int:
    """Samples per tile of `_tiles`: of about `elements`, or the model's `_TILE_ELEMENTS`."""
    elements = getattr(model, "_TILE_ELEMENTS", elements)
    return max(1, min(n, elements // max(1, rows_per_sample * model.n_params)))
